//! Clock skew (issue #10 item 9): punches through a coordinator whose wall
//! clock is off by ±30 s, between peers whose clocks disagree by as much,
//! succeed as if every clock were right once the sessions' offset estimates
//! reach the agents — and fail without them (the control), so the suite
//! proves the feature. The estimates are the real sessions' own: the
//! initiator's from the Noise handshake (the init carries its wall clock, the
//! response echoes it with the responder's), the responder's from the clock
//! ping it sends when the session comes up.
#![allow(missing_docs)]

use std::time::Duration;

use natrix_proto::{PunchStage, TraversalError};
use natrix_session::SessionEvent;
use natrix_sim::World;
use natrix_sim::preset::Preset;
use natrix_sim::scenario::{Clocks, Outcome, PairScenario};
use natrix_tests::expected;

/// Pairs that punch today and need both sides' keep-alives (every NAT
/// filters), so a side that never fires breaks the punch.
const PAIRS: [(Preset, Preset); 6] = [
    (Preset::RestrictedCone, Preset::RestrictedCone),
    (Preset::PortRestrictedCone, Preset::PortRestrictedCone),
    (Preset::RestrictedCone, Preset::Symmetric),
    (Preset::Symmetric, Preset::RestrictedCone),
    (Preset::DoubleNat, Preset::DoubleNat),
    (Preset::PortRestrictedCone, Preset::DoubleNat),
];

const SEEDS: u64 = 8;

/// One-way access latencies of A, B and the servers: whole milliseconds, and
/// fractional ones (the estimates then carry millisecond rounding error).
const LATENCIES: [[Duration; 3]; 2] = [
    [Duration::from_millis(10); 3],
    [
        Duration::from_micros(10_600),
        Duration::from_micros(17_300),
        Duration::from_micros(12_200),
    ],
];

/// (coordinator, A, B) skews in ms. In each, one peer's clock is behind the
/// coordinator's by 30 s or more (unconverted, its fire time lies beyond the
/// punch deadline) and the other's is ahead of it or level.
const SKEWS: [(i64, i64, i64); 4] = [
    (30_000, -30_000, 30_000),
    (30_000, 30_000, -30_000),
    (-30_000, 30_000, -60_000),
    (-30_000, -60_000, 30_000),
];

fn scenario(a: Preset, b: Preset, (r, sa, sb): (i64, i64, i64), estimates: bool) -> PairScenario {
    let mut s = PairScenario::new(a, b);
    s.latency = LATENCIES[0];
    s.clocks = Clocks {
        a_ms: sa,
        b_ms: sb,
        r_ms: r,
        // The reflex server's clock plays no part in punching.
        s_ms: -45_000,
        offset_estimates: estimates,
    };
    s
}

/// The offsets host `at`'s sessions measured, by peer node id.
fn measured(w: &World, at: &str) -> Vec<(natrix_proto::wire::NodeId, i64)> {
    let h = w.hosts.iter().find(|h| h.name == at).expect("host");
    h.session_events
        .iter()
        .filter_map(|(_, e)| match e {
            SessionEvent::ClockOffset {
                node, offset_ms, ..
            } => Some((*node, *offset_ms)),
            _ => None,
        })
        .collect()
}

/// Each peer's sessions measured R's and S's offsets, and R and S each
/// peer's, to within a millisecond of the true skews.
fn offsets_came_from_the_sessions(w: &World, clocks: &Clocks, case: &str) {
    let skew = |name: &str| match name {
        "A" => clocks.a_ms,
        "B" => clocks.b_ms,
        "R" => clocks.r_ms,
        _ => clocks.s_ms,
    };
    let name_of = |id| {
        w.hosts
            .iter()
            .find(|h| h.id == id)
            .expect("host")
            .name
            .clone()
    };
    for (me, peers) in [("A", 2), ("B", 2), ("R", 2), ("S", 2)] {
        let got = measured(w, me);
        assert_eq!(got.len(), peers, "{case}: {me} measured {got:?}");
        for (peer, offset) in got {
            let want = skew(&name_of(peer)) - skew(me);
            assert!(
                (offset - want).abs() <= 1,
                "{case}: {me} measured {} at {offset} ms, true {want} ms",
                name_of(peer)
            );
        }
    }
}

#[test]
fn skewed_clocks_punch_with_offset_estimates() {
    let mut failures = Vec::new();
    for (a, b) in PAIRS {
        assert_eq!(
            expected(a, b).0,
            Outcome::Punched,
            "{a} x {b} punches today"
        );
        for (seed, latency) in (0..SEEDS).flat_map(|s| LATENCIES.map(|l| (s, l))) {
            let mut right = PairScenario::new(a, b);
            right.latency = latency;
            let right = right.run(seed);
            for skew in SKEWS {
                let mut s = scenario(a, b, skew, true);
                s.latency = latency;
                let r = s.run(seed);
                let case = format!("{a} x {b} seed {seed} skew {skew:?} latency {latency:?}");
                offsets_came_from_the_sessions(&r.world, &s.clocks, &case);
                if r.outcome != Outcome::Punched || r.terminal_events != 1 {
                    failures.push(format!(
                        "{case}: {:?} ({} terminal events), error {:?}",
                        r.outcome, r.terminal_events, r.error
                    ));
                    continue;
                }
                // On time: the trains fire when they would with every clock
                // right (the estimates are right to the millisecond here).
                let (ttd, ttd_right) = (r.time_to_direct.unwrap(), right.time_to_direct.unwrap());
                if ttd.abs_diff(ttd_right) > Duration::from_millis(2) {
                    failures.push(format!(
                        "{case}: time to direct {ttd:?}, {ttd_right:?} with right clocks"
                    ));
                }
                if r.keepalives != right.keepalives {
                    failures.push(format!(
                        "{case}: {} keep-alives, {} with right clocks",
                        r.keepalives, right.keepalives
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn without_offset_estimates_the_same_punches_fail() {
    let mut failures = Vec::new();
    for (a, b) in PAIRS {
        for seed in 0..SEEDS {
            for skew in SKEWS {
                let r = scenario(a, b, skew, false).run(seed);
                let timed_out = matches!(
                    r.error,
                    Some(TraversalError::DeadlinePassed {
                        stage: PunchStage::Keepalive,
                        ..
                    })
                );
                if r.outcome != Outcome::FailedThenRelay || !timed_out || r.terminal_events != 1 {
                    failures.push(format!(
                        "{a} x {b} seed {seed} skew {skew:?}: {:?}, error {:?}",
                        r.outcome, r.error
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn estimates_change_nothing_when_clocks_agree() {
    // Every clock off by the same amount: offsets are 0 and the run is the
    // run with right clocks, estimates or not.
    for (a, b) in PAIRS {
        let right = PairScenario::new(a, b).run(3);
        for estimates in [true, false] {
            let mut s = scenario(a, b, (30_000, 30_000, 30_000), estimates);
            s.clocks.s_ms = 30_000;
            let r = s.run(3);
            assert_eq!(r.outcome, Outcome::Punched, "{a} x {b}");
            assert_eq!(r.time_to_direct, right.time_to_direct, "{a} x {b}");
        }
    }
}
