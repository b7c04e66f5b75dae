//! S3: the coordinator-side relay — frames, circuits and quotas.

use std::time::Duration;

use natrix_proto::{Instant, NodeId};
use natrix_session::MAX_PAYLOAD;
use natrix_session::relay::{
    CircuitInfo, MAX_RELAYED_PACKET, NOTICE_INTERVAL, Quota, REFUSED_LEN, Refusal, Refused,
    RelayConfig, RelayFrame, RelayServer, RelayStats, encode_forward_into, encode_refused,
};
use proptest::prelude::*;

const A: NodeId = NodeId(0xA);
const B: NodeId = NodeId(0xB);
const M: NodeId = NodeId(0x3333);

fn ms(m: u64) -> Instant {
    Instant::from_millis(m)
}

fn secs(s: u64) -> Instant {
    Instant::from_millis(s * 1000)
}

fn quota_of(r: Result<(), Refused>) -> Option<Quota> {
    r.err().map(|e| e.refusal.quota)
}

#[test]
fn s3_rate_quota_refuses_with_typed_retry_after() {
    let cfg = RelayConfig::default();
    let mut relay = RelayServer::new(cfg);
    let full = MAX_RELAYED_PACKET as u64;
    let t0 = ms(10);
    // A fresh circuit holds one burst: 131072 bytes, 110 full packets.
    let fits = cfg.burst_bytes / full;
    for i in 0..fits {
        let (from, to) = if i % 2 == 0 { (A, B) } else { (B, A) };
        relay
            .forward(t0, from, to, MAX_RELAYED_PACKET, true)
            .unwrap();
    }
    let left = cfg.burst_bytes - fits * full;
    // Both directions share the bucket.
    for (from, to) in [(A, B), (B, A)] {
        let refused = relay
            .forward(t0, from, to, MAX_RELAYED_PACKET, true)
            .unwrap_err();
        let wait_ns = ((full - left) * 1_000_000_000).div_ceil(cfg.rate_bytes_per_sec);
        assert_eq!(
            refused.refusal,
            Refusal {
                quota: Quota::Rate,
                retry_after: Duration::from_nanos(wait_ns),
            }
        );
        assert!(refused.notify, "first refusal of the pair is notified");
        // The typed error reaches the sender as a Refused frame.
        let notice = encode_refused(to, refused.refusal);
        assert_eq!(notice.len(), REFUSED_LEN);
        let decoded = RelayFrame::decode(&notice).unwrap();
        assert_eq!(decoded.peer(), to);
        let got = decoded.refusal().unwrap();
        assert_eq!(got.quota, Quota::Rate);
        assert_eq!(
            got.retry_after,
            Duration::from_millis(wait_ns.div_ceil(1_000_000)),
            "rounded up to whole ms, never early"
        );
        let text = got.to_string();
        assert!(
            text.contains("rate") && text.contains("resets in 9 ms"),
            "{text}"
        );
    }
    // Retrying exactly when told succeeds; a nanosecond earlier does not.
    let wait =
        Duration::from_nanos(((full - left) * 1_000_000_000).div_ceil(cfg.rate_bytes_per_sec));
    let just_before = Instant::from_nanos((t0 + wait).as_nanos() - 1);
    assert_eq!(
        quota_of(relay.forward(just_before, A, B, MAX_RELAYED_PACKET, true)),
        Some(Quota::Rate)
    );
    relay
        .forward(t0 + wait, A, B, MAX_RELAYED_PACKET, true)
        .unwrap();
    let stats = relay.stats();
    assert_eq!(stats.refused(Quota::Rate), 3);
    assert_eq!(stats.frames_forwarded, fits + 1);
    assert_eq!(stats.bytes_forwarded, (fits + 1) * full);
    // Sustained: a second later exactly rate_bytes_per_sec more bytes pass.
    let t1 = t0 + wait + Duration::from_secs(1);
    let mut sent = 0;
    while relay.forward(t1, B, A, 1000, true).is_ok() {
        sent += 1000;
    }
    assert_eq!(sent, cfg.rate_bytes_per_sec / 1000 * 1000);
}

#[test]
fn s3_idle_circuit_closes_after_configured_time() {
    let cfg = RelayConfig {
        idle_close: Duration::from_secs(5),
        ..RelayConfig::default()
    };
    let mut relay = RelayServer::new(cfg);
    assert_eq!(relay.poll_timeout(), None);
    relay.forward(secs(0), A, B, 100, true).unwrap();
    assert_eq!(relay.poll_timeout(), Some(secs(5)));
    relay.forward(secs(3), B, A, 100, true).unwrap();
    assert_eq!(relay.poll_timeout(), Some(secs(8)), "activity either way");
    relay.handle_timeout(ms(7_999));
    assert_eq!(relay.circuits(), 1);
    assert_eq!(relay.circuit(A, B).unwrap().last_active, secs(3));
    relay.handle_timeout(secs(8));
    assert_eq!(relay.circuits(), 0);
    assert_eq!(relay.circuit(A, B), None);
    assert_eq!(relay.poll_timeout(), None);
    assert_eq!(relay.circuits_opened_by(A), 0);
    let stats = relay.stats();
    assert_eq!((stats.circuits_opened, stats.circuits_closed_idle), (1, 1));
    // Harmless twice.
    relay.handle_timeout(secs(8));
    assert_eq!(relay.stats(), stats);
    // Reopening works and B is now the opener.
    relay.forward(secs(9), B, A, 100, true).unwrap();
    assert_eq!(relay.circuit(A, B).unwrap().opener, B);
}

#[test]
fn s3_circuits_per_peer_cap_counts_the_opener_only() {
    let cfg = RelayConfig {
        circuits_per_peer: 3,
        idle_close: Duration::from_secs(60),
        ..RelayConfig::default()
    };
    let mut relay = RelayServer::new(cfg);
    let victim = NodeId(1);
    // Ten sybils each open a circuit toward the victim.
    for s in 100..110 {
        relay.forward(secs(0), NodeId(s), victim, 10, true).unwrap();
    }
    assert_eq!(relay.circuits_opened_by(victim), 0);
    // The victim answers on the sybils' circuits: they are not its own.
    for s in 100..110 {
        relay.forward(secs(1), victim, NodeId(s), 10, true).unwrap();
    }
    // The victim's own allowance is intact.
    for (i, t) in (200..203).enumerate() {
        relay
            .forward(secs(2 + i as u64), victim, NodeId(t), 10, true)
            .unwrap();
    }
    assert_eq!(relay.circuits_opened_by(victim), 3);
    let refused = relay
        .forward(secs(10), victim, NodeId(203), 10, true)
        .unwrap_err();
    assert_eq!(refused.refusal.quota, Quota::CircuitsPerPeer);
    // Its earliest own circuit (opened at 2 s) closes at 62 s if unused.
    assert_eq!(refused.refusal.retry_after, Duration::from_secs(52));
    // A sybil is capped the same way.
    let s = NodeId(100);
    relay.forward(secs(10), s, NodeId(300), 10, true).unwrap();
    relay.forward(secs(10), s, NodeId(301), 10, true).unwrap();
    assert_eq!(
        quota_of(relay.forward(secs(10), s, NodeId(302), 10, true)),
        Some(Quota::CircuitsPerPeer)
    );
    // When one of the victim's circuits closes, it may open another.
    relay.handle_timeout(secs(62));
    assert_eq!(relay.circuits_opened_by(victim), 2);
    relay
        .forward(secs(62), victim, NodeId(203), 10, true)
        .unwrap();
    assert_eq!(relay.stats().refused(Quota::CircuitsPerPeer), 2);
}

#[test]
fn s3_global_cap_bounds_memory_under_a_flood_of_peers() {
    let cfg = RelayConfig::default();
    let mut relay = RelayServer::new(cfg);
    relay.forward(secs(0), A, B, 100, true).unwrap();
    let mut refused_cap = 0u64;
    for i in 0..100_000u64 {
        let now = secs(1) + Duration::from_micros(i);
        let sybil = NodeId(1_000_000 + i);
        let target = NodeId(5_000_000 + i);
        match relay.forward(now, sybil, target, 10, true) {
            Ok(()) => {}
            Err(r) => {
                assert_eq!(r.refusal.quota, Quota::Circuits);
                // The earliest circuit that could close if unused.
                let first = relay.poll_timeout().unwrap();
                assert!(first > now && first <= secs(61) + Duration::from_millis(2));
                assert_eq!(r.refusal.retry_after, first - now);
                refused_cap += 1;
            }
        }
        assert!(relay.circuits() <= cfg.max_circuits);
        if i % 10_000 == 0 {
            // The existing circuit keeps working both ways during the flood.
            relay.forward(now, A, B, 100, true).unwrap();
            relay.forward(now, B, A, 100, true).unwrap();
        }
    }
    assert_eq!(relay.circuits(), cfg.max_circuits);
    assert_eq!(refused_cap, 100_000 - (cfg.max_circuits as u64 - 1));
    let stats = relay.stats();
    assert_eq!(stats.refused(Quota::Circuits), refused_cap);
    assert_eq!(stats.circuits_opened, cfg.max_circuits as u64);
    // Notices are bounded too: at most max_circuits per interval.
    assert!(
        stats.notices_sent <= cfg.max_circuits as u64 * 2,
        "{stats:?}"
    );
    assert_eq!(stats.notices_sent + stats.notices_suppressed, refused_cap);
    let ab = relay.circuit(A, B).unwrap();
    assert_eq!((ab.opener, ab.frames), (A, 21));
    // Once the flood's circuits idle out, the table empties (A↔B last).
    let last = relay.poll_timeout().unwrap();
    assert_eq!(last, secs(61));
    relay.handle_timeout(secs(61) + Duration::from_millis(50));
    assert_eq!(relay.circuits(), 1, "only A↔B, last active at 1.09 s");
    assert_eq!(
        relay.poll_timeout(),
        Some(secs(61) + Duration::from_millis(90))
    );
    relay.handle_timeout(secs(61) + Duration::from_millis(90));
    assert_eq!(relay.circuits(), 0);
}

#[test]
fn s3_total_bytes_and_duration_caps_close_and_cool_down() {
    // Total bytes.
    let cfg = RelayConfig {
        max_bytes: Some(10_000),
        idle_close: Duration::from_secs(10),
        ..RelayConfig::default()
    };
    let mut relay = RelayServer::new(cfg);
    for i in 0..10 {
        let (from, to) = if i % 2 == 0 { (A, B) } else { (B, A) };
        relay.forward(secs(i), from, to, 1000, true).unwrap();
    }
    let r = relay.forward(secs(10), A, B, 1, true).unwrap_err();
    assert_eq!(
        r.refusal,
        Refusal::new(Quota::TotalBytes, Duration::from_secs(10))
    );
    let info = relay.circuit(A, B).unwrap();
    assert_eq!((info.bytes, info.spent), (10_000, Some(Quota::TotalBytes)));
    // Spent: refused both ways, cool-down counting down, still counted.
    let r = relay.forward(secs(14), B, A, 1, true).unwrap_err();
    assert_eq!(
        r.refusal,
        Refusal::new(Quota::TotalBytes, Duration::from_secs(6))
    );
    assert_eq!(relay.circuits(), 1);
    assert_eq!(relay.circuits_opened_by(A), 1);
    assert_eq!(
        relay.poll_timeout(),
        Some(secs(20)),
        "refusals are not activity"
    );
    relay.handle_timeout(secs(20));
    assert_eq!(relay.circuits(), 0);
    assert_eq!(relay.stats().circuits_closed_spent, 1);
    assert_eq!(relay.stats().circuits_closed_idle, 0);
    // A new circuit has a fresh allowance.
    relay.forward(secs(20), B, A, 1000, true).unwrap();
    assert_eq!(relay.circuit(A, B).unwrap().bytes, 1000);

    // Duration.
    let cfg = RelayConfig {
        max_duration: Some(Duration::from_secs(30)),
        idle_close: Duration::from_secs(10),
        ..RelayConfig::default()
    };
    let mut relay = RelayServer::new(cfg);
    for t in (0..30).step_by(5) {
        relay.forward(secs(t), A, B, 100, true).unwrap();
    }
    // At 30 s the circuit is spent as of 30 s; it goes at 40 s.
    let r = relay.forward(secs(32), B, A, 100, true).unwrap_err();
    assert_eq!(
        r.refusal,
        Refusal::new(Quota::Duration, Duration::from_secs(8))
    );
    assert_eq!(relay.circuit(A, B).unwrap().spent, Some(Quota::Duration));
    assert_eq!(relay.poll_timeout(), Some(secs(40)));
    let r = relay.forward(secs(35), A, B, 100, true).unwrap_err();
    assert_eq!(
        r.refusal,
        Refusal::new(Quota::Duration, Duration::from_secs(5))
    );
    // Without a handle_timeout: the next frame at 40 s finds it gone and reopens.
    relay.forward(secs(40), B, A, 100, true).unwrap();
    let info = relay.circuit(A, B).unwrap();
    assert_eq!(
        (info.opener, info.opened_at, info.spent),
        (B, secs(40), None)
    );
    assert_eq!(relay.stats().circuits_closed_spent, 1);
    assert_eq!(relay.stats().refused(Quota::Duration), 2);
}

#[test]
fn s3_self_and_offline_targets_are_refused() {
    let mut relay = RelayServer::new(RelayConfig::default());
    let r = relay.forward(secs(0), A, A, 10, true).unwrap_err();
    assert_eq!(r.refusal, Refusal::new(Quota::SelfTarget, Duration::ZERO));
    assert!(r.notify);
    let r = relay.forward(secs(0), A, B, 10, false).unwrap_err();
    assert_eq!(r.refusal, Refusal::new(Quota::Offline, Duration::ZERO));
    assert!(r.notify);
    assert_eq!(relay.circuits(), 0);
    assert_eq!(relay.poll_timeout(), None);
    // An existing circuit whose target went offline refuses too, untouched.
    relay.forward(secs(1), A, B, 10, true).unwrap();
    let before = relay.circuit(A, B).unwrap();
    assert_eq!(
        quota_of(relay.forward(secs(2), A, B, 10, false)),
        Some(Quota::Offline)
    );
    assert_eq!(relay.circuit(A, B), Some(before));
    let stats = relay.stats();
    assert_eq!(stats.refused(Quota::SelfTarget), 1);
    assert_eq!(stats.refused(Quota::Offline), 2);
    assert_eq!(stats.refused_total(), 3);
    assert!(
        Refusal::new(Quota::Offline, Duration::ZERO)
            .to_string()
            .contains("no session")
    );
}

#[test]
fn s3_refusal_notices_are_rate_limited() {
    let cfg = RelayConfig {
        rate_bytes_per_sec: 1_000,
        burst_bytes: MAX_RELAYED_PACKET as u64,
        ..RelayConfig::default()
    };
    let mut relay = RelayServer::new(cfg);
    let t0 = secs(5);
    let at = |m: u64| t0 + Duration::from_millis(m);
    let mut notices = 0;
    for i in 0..5_000u64 {
        let now = t0 + Duration::from_micros(i * 100); // half a second
        if relay.forward(now, A, B, 10, false).unwrap_err().notify {
            notices += 1;
        }
    }
    assert_eq!(notices, 1, "a flood of refused frames earns one notice");
    // Other pairs are limited separately; the direction matters.
    assert!(
        relay
            .forward(at(500), A, NodeId(9), 10, false)
            .unwrap_err()
            .notify
    );
    assert!(relay.forward(at(500), B, A, 10, false).unwrap_err().notify);
    // Another quota on the same pair shares the pair's limit.
    relay
        .forward(at(600), A, B, MAX_RELAYED_PACKET, true)
        .unwrap();
    let r = relay
        .forward(at(600), A, B, MAX_RELAYED_PACKET, true)
        .unwrap_err();
    assert_eq!((r.refusal.quota, r.notify), (Quota::Rate, false));
    relay.peer_gone(at(600), A);
    // One interval after the first notice, the next refusal is notified.
    let just_before = (t0 + NOTICE_INTERVAL).saturating_sub(Duration::from_nanos(1));
    assert!(
        !relay
            .forward(just_before, A, B, 10, false)
            .unwrap_err()
            .notify
    );
    assert!(
        relay
            .forward(t0 + NOTICE_INTERVAL, A, B, 10, false)
            .unwrap_err()
            .notify
    );
    let stats = relay.stats();
    assert_eq!(stats.notices_sent, 4);
    assert_eq!(
        stats.notices_sent + stats.notices_suppressed,
        stats.refused_total()
    );
}

#[test]
fn s3_flood_from_a_third_party_changes_no_other_circuit() {
    let cfg = RelayConfig {
        circuits_per_peer: 4,
        max_circuits: 64,
        ..RelayConfig::default()
    };
    let mut relay = RelayServer::new(cfg);
    let t = secs(1);
    // A↔B has used 100,000 bytes of its 131,072-byte bucket.
    for _ in 0..100 {
        relay.forward(t, A, B, 1000, true).unwrap();
    }
    let before = relay.circuit(A, B).unwrap();
    // M throws everything it can at the relay at the same instant.
    let others = [A, B, M, NodeId(0), NodeId(u64::MAX), NodeId(77)];
    for round in 0..2_000u64 {
        for &to in &others {
            let len = 1 + (round as usize * 37) % MAX_RELAYED_PACKET;
            let _ = relay.forward(t, M, to, len, round % 3 != 0);
            let _ = relay.forward(t, M, NodeId(round), len, true);
        }
    }
    // Frames naming A↔B can only come from A or B (the session layer
    // authenticates the sender), so nothing M did touched that circuit.
    assert_eq!(relay.circuit(A, B), Some(before));
    relay.peer_gone(t, M);
    assert_eq!(relay.circuit(A, B), Some(before));
    assert!(relay.circuits_opened_by(M) == 0 && relay.circuits() == 1);
    // A↔B still has exactly its 31,072 bytes of bucket left.
    for _ in 0..31 {
        relay.forward(t, B, A, 1000, true).unwrap();
    }
    relay.forward(t, A, B, 72, true).unwrap();
    assert_eq!(quota_of(relay.forward(t, A, B, 1, true)), Some(Quota::Rate));
    let after: CircuitInfo = relay.circuit(A, B).unwrap();
    assert_eq!(after.bytes, 131_072);
    assert_eq!(after.closes_at, before.closes_at);
}

// ---------------------------------------------------------------------------
// Model-based property: the relay against a plain reference model.
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Forward {
        advance_ms: u64,
        from: u8,
        to: u8,
        len: usize,
        online: bool,
    },
    Timeout {
        advance_ms: u64,
    },
    PeerGone {
        advance_ms: u64,
        peer: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let len = prop_oneof![
        1usize..=50,
        Just(MAX_RELAYED_PACKET),
        1usize..=MAX_RELAYED_PACKET
    ];
    let adv = prop_oneof![Just(0u64), 0u64..50, 0u64..3_000];
    prop_oneof![
        8 => (adv.clone(), 0u8..7, 0u8..7, len, prop::bool::weighted(0.9)).prop_map(
            |(advance_ms, from, to, len, online)| Op::Forward { advance_ms, from, to, len, online }
        ),
        1 => adv.clone().prop_map(|advance_ms| Op::Timeout { advance_ms }),
        1 => (adv, 0u8..7).prop_map(|(advance_ms, peer)| Op::PeerGone { advance_ms, peer }),
    ]
}

fn config() -> impl Strategy<Value = RelayConfig> {
    (
        prop_oneof![Just(1_000u64), Just(5_000u64), Just(131_072u64)],
        prop_oneof![Just(MAX_RELAYED_PACKET as u64), Just(3_000u64)],
        prop_oneof![Just(500u64), Just(2_000u64)],
        1usize..=3,
        1usize..=5,
        prop::option::of(prop_oneof![Just(MAX_RELAYED_PACKET as u64), Just(6_000u64)]),
        prop::option::of(prop_oneof![Just(700u64), Just(4_000u64)]),
    )
        .prop_map(|(rate, burst, idle, cpp, max, bytes, dur)| RelayConfig {
            rate_bytes_per_sec: rate,
            burst_bytes: burst,
            idle_close: Duration::from_millis(idle),
            circuits_per_peer: cpp,
            max_circuits: max,
            max_bytes: bytes,
            max_duration: dur.map(Duration::from_millis),
        })
}

/// One circuit, as plainly as possible.
#[derive(Clone, Debug)]
struct MCircuit {
    ends: (NodeId, NodeId),
    opener: NodeId,
    opened_at: Instant,
    last_active: Instant,
    bytes: u64,
    /// Bucket in nano-bytes.
    tokens: u128,
    refilled_at: Instant,
    spent: Option<(Quota, Instant)>,
}

impl MCircuit {
    fn joins(&self, a: NodeId, b: NodeId) -> bool {
        self.ends == (a, b) || self.ends == (b, a)
    }
    fn deadline(&self, idle: Duration) -> Instant {
        match self.spent {
            Some((_, at)) => at + idle,
            None => self.last_active + idle,
        }
    }
}

/// The specification with linear scans and no indexes.
struct Model {
    cfg: RelayConfig,
    circuits: Vec<MCircuit>,
    notices: Vec<(NodeId, NodeId, Instant)>,
}

impl Model {
    fn expire(&mut self, now: Instant) {
        let idle = self.cfg.idle_close;
        self.circuits.retain(|c| c.deadline(idle) > now);
    }

    fn refuse(
        &mut self,
        now: Instant,
        from: NodeId,
        to: NodeId,
        quota: Quota,
        retry: Duration,
    ) -> Refused {
        self.notices
            .retain(|&(_, _, at)| at + NOTICE_INTERVAL > now);
        let known = self.notices.iter().any(|&(f, t, _)| (f, t) == (from, to));
        let notify = !known && self.notices.len() < self.cfg.max_circuits;
        if notify {
            self.notices.push((from, to, now));
        }
        Refused {
            refusal: Refusal::new(quota, retry),
            notify,
        }
    }

    fn forward(
        &mut self,
        now: Instant,
        from: NodeId,
        to: NodeId,
        len: usize,
        online: bool,
    ) -> Result<(), Refused> {
        let cfg = self.cfg;
        self.expire(now);
        if from == to {
            return Err(self.refuse(now, from, to, Quota::SelfTarget, Duration::ZERO));
        }
        if !online {
            return Err(self.refuse(now, from, to, Quota::Offline, Duration::ZERO));
        }
        let len = len as u64;
        let nano = 1_000_000_000u128;
        if let Some(i) = self.circuits.iter().position(|c| c.joins(from, to)) {
            let c = &mut self.circuits[i];
            if let Some((q, at)) = c.spent {
                return Err(self.refuse(now, from, to, q, (at + cfg.idle_close) - now));
            }
            if let Some(d) = cfg.max_duration {
                if now - c.opened_at >= d {
                    let at = c.opened_at + d;
                    c.spent = Some((Quota::Duration, at));
                    return Err(self.refuse(
                        now,
                        from,
                        to,
                        Quota::Duration,
                        (at + cfg.idle_close) - now,
                    ));
                }
            }
            if let Some(m) = cfg.max_bytes {
                if c.bytes + len > m {
                    c.spent = Some((Quota::TotalBytes, now));
                    return Err(self.refuse(now, from, to, Quota::TotalBytes, cfg.idle_close));
                }
            }
            let elapsed = (now - c.refilled_at).as_nanos();
            c.tokens = (c.tokens + elapsed * u128::from(cfg.rate_bytes_per_sec))
                .min(u128::from(cfg.burst_bytes) * nano);
            c.refilled_at = now.max(c.refilled_at);
            let need = u128::from(len) * nano;
            if c.tokens < need {
                let wait = (need - c.tokens).div_ceil(u128::from(cfg.rate_bytes_per_sec));
                return Err(self.refuse(
                    now,
                    from,
                    to,
                    Quota::Rate,
                    Duration::from_nanos(wait as u64),
                ));
            }
            c.tokens -= need;
            c.bytes += len;
            c.last_active = now.max(c.last_active);
            return Ok(());
        }
        let idle = cfg.idle_close;
        let mine: Vec<Instant> = self
            .circuits
            .iter()
            .filter(|c| c.opener == from)
            .map(|c| c.deadline(idle))
            .collect();
        if mine.len() >= cfg.circuits_per_peer {
            let first = mine.into_iter().min().unwrap();
            return Err(self.refuse(now, from, to, Quota::CircuitsPerPeer, first - now));
        }
        if self.circuits.len() >= cfg.max_circuits {
            let first = self
                .circuits
                .iter()
                .map(|c| c.deadline(idle))
                .min()
                .unwrap();
            return Err(self.refuse(now, from, to, Quota::Circuits, first - now));
        }
        self.circuits.push(MCircuit {
            ends: (from, to),
            opener: from,
            opened_at: now,
            last_active: now,
            bytes: len,
            tokens: u128::from(cfg.burst_bytes) * nano - u128::from(len) * nano,
            refilled_at: now,
            spent: None,
        });
        Ok(())
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.circuits
            .iter()
            .map(|c| c.deadline(self.cfg.idle_close))
            .min()
    }
}

/// Everything observable after each step, for the determinism check.
#[derive(Debug, PartialEq)]
struct Step {
    result: Option<Result<(), Refused>>,
    circuits: usize,
    poll: Option<Instant>,
    stats: RelayStats,
}

fn run(cfg: RelayConfig, ops: &[Op]) -> Vec<Step> {
    let mut relay = RelayServer::new(cfg);
    let mut model = Model {
        cfg,
        circuits: Vec::new(),
        notices: Vec::new(),
    };
    let mut now = ms(0);
    let mut out = Vec::new();
    for op in ops {
        let result = match *op {
            Op::Forward {
                advance_ms,
                from,
                to,
                len,
                online,
            } => {
                now += Duration::from_millis(advance_ms);
                let (from, to) = (NodeId(from.into()), NodeId(to.into()));
                let got = relay.forward(now, from, to, len, online);
                let want = model.forward(now, from, to, len, online);
                assert_eq!(got, want, "{op:?} at {now:?}");
                Some(got)
            }
            Op::Timeout { advance_ms } => {
                now += Duration::from_millis(advance_ms);
                relay.handle_timeout(now);
                model.expire(now);
                None
            }
            Op::PeerGone { advance_ms, peer } => {
                now += Duration::from_millis(advance_ms);
                let peer = NodeId(peer.into());
                relay.peer_gone(now, peer);
                model.expire(now);
                model
                    .circuits
                    .retain(|c| c.ends.0 != peer && c.ends.1 != peer);
                None
            }
        };
        // Caps hold, and the relay agrees with the model.
        assert!(relay.circuits() <= cfg.max_circuits);
        for n in 0..7 {
            let opened = relay.circuits_opened_by(NodeId(n));
            assert!(opened <= cfg.circuits_per_peer);
            assert_eq!(
                opened,
                model
                    .circuits
                    .iter()
                    .filter(|c| c.opener == NodeId(n))
                    .count()
            );
        }
        assert_eq!(relay.circuits(), model.circuits.len());
        assert_eq!(relay.poll_timeout(), model.poll_timeout());
        for c in &model.circuits {
            let info = relay
                .circuit(c.ends.1, c.ends.0)
                .expect("circuit in the model");
            assert_eq!(info.opener, c.opener);
            assert_eq!(info.bytes, c.bytes);
            assert_eq!(info.spent, c.spent.map(|s| s.0));
            if let Some(m) = cfg.max_bytes {
                assert!(info.bytes <= m);
            }
        }
        out.push(Step {
            result,
            circuits: relay.circuits(),
            poll: relay.poll_timeout(),
            stats: relay.stats(),
        });
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn s3_relay_matches_model_holds_caps_and_is_deterministic(
        cfg in config(),
        ops in prop::collection::vec(op(), 1..200),
    ) {
        let first = run(cfg, &ops);
        let second = run(cfg, &ops);
        prop_assert_eq!(first, second);
    }

    #[test]
    fn s3_frames_round_trip(
        peer in any::<u64>(),
        packet in prop::collection::vec(any::<u8>(), 1..=MAX_RELAYED_PACKET),
        code in 1u8..=8,
        retry_ms in any::<u32>(),
    ) {
        let mut out = [0u8; MAX_PAYLOAD];
        let n = encode_forward_into(NodeId(peer), &packet, &mut out).unwrap();
        prop_assert_eq!(n, 9 + packet.len());
        prop_assert_eq!(
            RelayFrame::decode(&out[..n]),
            Ok(RelayFrame::Forward { peer: NodeId(peer), packet: &packet })
        );
        let quota = Quota::from_code(code).unwrap();
        let refusal = Refusal::from_wire(quota, retry_ms);
        prop_assert_eq!(refusal.retry_after_ms(), retry_ms);
        let b = encode_refused(NodeId(peer), refusal);
        let f = RelayFrame::decode(&b).unwrap();
        prop_assert_eq!(f, RelayFrame::Refused { peer: NodeId(peer), quota, retry_after_ms: retry_ms });
        prop_assert_eq!(f.refusal(), Some(refusal));
    }

    #[test]
    fn s3_garbage_never_panics_and_decodes_canonically(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..1_300),
            (0u8..4, prop::collection::vec(any::<u8>(), 0..20)).prop_map(|(k, mut v)| { v.insert(0, k); v }),
        ],
    ) {
        if let Ok(frame) = RelayFrame::decode(&bytes) {
            let mut out = [0u8; MAX_PAYLOAD];
            let n = frame.encode_into(&mut out).unwrap();
            prop_assert_eq!(n, frame.encoded_len());
            prop_assert_eq!(&out[..n], &bytes[..]);
        }
    }
}
