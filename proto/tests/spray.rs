//! N2, N3: the caps of birthday punching (`natrix_proto::spray`). Every
//! datagram the machine asks for is counted, with its destination.
#![allow(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use natrix_proto::Instant;
use natrix_proto::spray::{
    FIRST_PORT, PORT_SPACE, SprayConfig, SprayEvent, SprayMachine, SprayOutcome, SprayRefusal,
    SpraySide, SprayTransmit, birthday_success,
};
use natrix_proto::wire::NodeId;
use proptest::prelude::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn at(ms: u64) -> Instant {
    Instant::ZERO.saturating_add(Duration::from_millis(ms))
}

const PEER: NodeId = NodeId(7);

/// Runs `m` in 1 ms steps from `from` to `to`, collecting every datagram
/// (with the time it was due) and every event.
/// Datagrams and events, each with the millisecond it came at.
type Log = (Vec<(u64, SprayTransmit)>, Vec<(u64, SprayEvent)>);

/// What the property test tracks per attempt: peer, IP, opener?, start ms,
/// deadline ms, datagrams sent, end ms.
type Tracked = BTreeMap<u64, (NodeId, IpAddr, bool, u64, u64, u32, Option<u64>)>;

fn run(m: &mut SprayMachine, from: u64, to: u64) -> Log {
    let (mut sent, mut events) = (Vec::new(), Vec::new());
    for t in from..=to {
        let now = at(t);
        m.handle_timeout(now);
        while let Some(x) = m.poll_transmit(now) {
            sent.push((t, x));
        }
        while let Some(e) = m.poll_event() {
            events.push((t, e));
        }
    }
    (sent, events)
}

#[test]
fn n3_sprays_only_the_peers_session_ip() {
    let mut m = SprayMachine::new(SprayConfig::default(), 1);
    let target = SocketAddr::new(ip("198.51.100.9"), 4000);
    // Another IP than the session's: refused, for either side.
    for side in [SpraySide::Prober, SpraySide::Opener] {
        assert_eq!(
            m.start(at(0), PEER, side, target, ip("198.51.100.10")),
            Err(SprayRefusal::NotThePeersIp {
                asked: ip("198.51.100.9"),
                session: ip("198.51.100.10"),
            })
        );
    }
    // Not a unicast destination: refused even when it is the "session" IP.
    for bogus in [
        "0.0.0.0",
        "255.255.255.255",
        "224.0.0.1",
        "::",
        "ff02::1",
        "0.1.2.3",
    ] {
        let t = SocketAddr::new(ip(bogus), 4000);
        assert_eq!(
            m.start(at(0), PEER, SpraySide::Prober, t, ip(bogus)),
            Err(SprayRefusal::BogusIp(ip(bogus))),
            "{bogus}"
        );
    }
    assert_eq!(m.running(), 0);
    assert_eq!(m.stats().refused, 8);
    // The session IP, v4-mapped or not, is accepted; every probe goes there.
    let mapped: IpAddr = "::ffff:198.51.100.9".parse().unwrap();
    let id = m
        .start(at(0), PEER, SpraySide::Prober, target, mapped)
        .expect("the session IP");
    let (sent, events) = run(&mut m, 0, 6_000);
    assert_eq!(sent.len(), 512);
    assert!(
        sent.iter()
            .all(|(_, x)| x.to.ip() == ip("198.51.100.9") && x.attempt == id)
    );
    // A success from another IP does not end it (N3), only its own IP does.
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].1.outcome, SprayOutcome::Exhausted);
}

#[test]
fn n3_a_success_off_the_attempts_ip_is_ignored() {
    let mut m = SprayMachine::new(SprayConfig::default(), 2);
    let target = SocketAddr::new(ip("203.0.113.5"), 5000);
    m.start(at(0), PEER, SpraySide::Prober, target, target.ip())
        .unwrap();
    assert!(!m.handle_success(PEER, "203.0.113.6:40000".parse().unwrap()));
    assert!(!m.handle_success(NodeId(8), "203.0.113.5:40000".parse().unwrap()));
    assert_eq!(m.running(), 1);
    assert!(m.handle_success(PEER, "203.0.113.5:40000".parse().unwrap()));
    assert_eq!(
        m.poll_event().map(|e| e.outcome),
        Some(SprayOutcome::Succeeded {
            path: "203.0.113.5:40000".parse().unwrap()
        })
    );
    // Once it ended, nothing more is sent.
    assert_eq!(m.poll_transmit(at(5_000)), None);
}

#[test]
fn n2_probes_are_distinct_paced_and_capped() {
    let config = SprayConfig {
        max_probes: 300,
        rate: 100,
        deadline: Duration::from_secs(10),
        ..SprayConfig::default()
    };
    let mut m = SprayMachine::new(config, 3);
    let target = SocketAddr::new(ip("192.0.2.44"), 1);
    m.start(at(0), PEER, SpraySide::Prober, target, target.ip())
        .unwrap();
    let (sent, events) = run(&mut m, 0, 12_000);
    assert_eq!(sent.len(), 300, "the probe cap");
    let ports: BTreeSet<u16> = sent.iter().map(|(_, x)| x.to.port()).collect();
    assert_eq!(ports.len(), 300, "every port once");
    assert!(ports.iter().all(|p| *p >= FIRST_PORT));
    // Paced: probe i no earlier than i × 10 ms, and no second holds more
    // than 100.
    for (i, (t, _)) in sent.iter().enumerate() {
        assert!(*t >= i as u64 * 10, "probe {i} at {t} ms");
    }
    for w in 0..12 {
        let in_window = sent
            .iter()
            .filter(|(t, _)| (w * 1000..(w + 1) * 1000).contains(t))
            .count();
        assert!(in_window <= 100, "{in_window} probes in second {w}");
    }
    // All sent by 3 s; the attempt ends at its deadline, exhausted, and a
    // cool-down follows.
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, 10_000);
    assert_eq!(events[0].1.outcome, SprayOutcome::Exhausted);
    assert_eq!(events[0].1.sent, 300);
    assert!(matches!(
        m.start(at(12_000), PEER, SpraySide::Prober, target, target.ip()),
        Err(SprayRefusal::CoolingDown { until }) if until == at(70_000)
    ));
    assert!(
        m.start(at(70_000), PEER, SpraySide::Prober, target, target.ip())
            .is_ok()
    );
}

#[test]
fn n2_opener_sends_one_datagram_per_socket_to_the_reflex() {
    let config = SprayConfig {
        sockets: 64,
        ..SprayConfig::default()
    };
    let mut m = SprayMachine::new(config, 4);
    let reflex: SocketAddr = "198.51.100.20:4000".parse().unwrap();
    m.start(at(0), PEER, SpraySide::Opener, reflex, reflex.ip())
        .unwrap();
    let (sent, _) = run(&mut m, 0, 1_000);
    assert_eq!(sent.len(), 64);
    let sockets: BTreeSet<u16> = sent.iter().map(|(_, x)| x.socket).collect();
    assert_eq!(sockets, (0..64).collect());
    assert!(sent.iter().all(|(_, x)| x.to == reflex));
}

#[test]
fn n2_one_attempt_per_peer_and_a_global_cap() {
    let mut m = SprayMachine::new(SprayConfig::default(), 5);
    let t = |n: u8| SocketAddr::new(IpAddr::from([198, 51, 100, n]), 4000);
    m.start(at(0), NodeId(1), SpraySide::Prober, t(1), t(1).ip())
        .unwrap();
    assert_eq!(
        m.start(at(0), NodeId(1), SpraySide::Opener, t(1), t(1).ip()),
        Err(SprayRefusal::AlreadyRunning)
    );
    m.start(at(0), NodeId(2), SpraySide::Opener, t(2), t(2).ip())
        .unwrap();
    assert_eq!(
        m.start(at(0), NodeId(3), SpraySide::Prober, t(3), t(3).ip()),
        Err(SprayRefusal::TooManyAttempts)
    );
    // A cancelled attempt frees its slot without a cool-down.
    assert!(m.cancel(NodeId(1), at(0)));
    assert_eq!(
        m.poll_event().map(|e| e.outcome),
        Some(SprayOutcome::Cancelled)
    );
    assert!(
        m.start(at(1), NodeId(1), SpraySide::Prober, t(1), t(1).ip())
            .is_ok()
    );
    // Zero caps switch it off.
    let mut off = SprayMachine::new(
        SprayConfig {
            rate: 0,
            ..SprayConfig::default()
        },
        6,
    );
    assert_eq!(
        off.start(at(0), PEER, SpraySide::Prober, t(9), t(9).ip()),
        Err(SprayRefusal::Disabled)
    );
}

#[test]
fn n2_a_rate_too_low_for_the_count_ends_at_the_deadline() {
    let config = SprayConfig {
        max_probes: 100,
        rate: 10,
        deadline: Duration::from_secs(2),
        ..SprayConfig::default()
    };
    let mut m = SprayMachine::new(config, 7);
    let target = SocketAddr::new(ip("192.0.2.1"), 1);
    m.start(at(0), PEER, SpraySide::Prober, target, target.ip())
        .unwrap();
    let (sent, events) = run(&mut m, 0, 3_000);
    assert_eq!(sent.len(), 20, "10 per second for 2 s");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].1.outcome, SprayOutcome::DeadlinePassed);
}

#[test]
fn birthday_success_matches_the_published_numbers() {
    // 256 mappings, 256 probes: about 1 − e^(−256·256/64512) = 64 %.
    let p = birthday_success(256, 256);
    assert!((0.63..0.65).contains(&p), "{p}");
    let p = birthday_success(256, 512);
    assert!((0.86..0.88).contains(&p), "{p}");
    assert_eq!(birthday_success(0, 1000), 0.0);
    assert_eq!(birthday_success(PORT_SPACE, 1), 1.0);
    // More probes never lower the chance.
    let mut last = 0.0;
    for k in (0..2000).step_by(50) {
        let p = birthday_success(128, k);
        assert!(p >= last);
        last = p;
    }
}

#[derive(Debug, Clone)]
enum Op {
    Start(u8, bool, u8, bool),
    Success(u8, u8),
    Cancel(u8),
    Advance(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..6, any::<bool>(), 0u8..6, any::<bool>())
            .prop_map(|(p, opener, i, honest)| Op::Start(p, opener, i, honest)),
        (0u8..6, 0u8..6).prop_map(|(p, i)| Op::Success(p, i)),
        (0u8..6).prop_map(Op::Cancel),
        (0u16..3000).prop_map(Op::Advance),
    ]
}

fn config() -> impl Strategy<Value = SprayConfig> {
    (
        0u16..400,
        0u16..400,
        0u32..500,
        0u64..6000,
        0u64..10_000,
        0usize..4,
    )
        .prop_map(
            |(sockets, max_probes, rate, deadline, cooldown, max_concurrent)| SprayConfig {
                sockets,
                max_probes,
                rate,
                deadline: Duration::from_millis(deadline),
                cooldown: Duration::from_millis(cooldown),
                max_concurrent,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// For any caps and any sequence of starts (honest or with another IP
    /// than the session's), successes, cancels and time: every datagram
    /// goes to its attempt's IP, which was the peer's session IP; no
    /// attempt sends more than its cap, faster than the rate, or after its
    /// deadline; at most `max_concurrent` run at once; and every started
    /// attempt ends in exactly one event, no later than its deadline.
    #[test]
    fn n2_n3_caps_hold_for_any_configuration(
        cfg in config(),
        seed in any::<u64>(),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let peer_ip = |i: u8| IpAddr::from([198, 51, 100, 10 + i]);
        let mut m = SprayMachine::new(cfg, seed);
        let mut now_ms: u64 = 0;
        // attempt id -> (peer, ip, side, start ms, deadline ms, sent, ended)
        let mut attempts: Tracked = BTreeMap::new();
        let step = |m: &mut SprayMachine,
                        now_ms: u64,
                        attempts: &mut Tracked|
         -> Result<(), TestCaseError> {
            let now = at(now_ms);
            m.handle_timeout(now);
            while let Some(x) = m.poll_transmit(now) {
                let a = attempts.get_mut(&x.attempt).expect("a started attempt");
                prop_assert!(a.6.is_none(), "sent after its end");
                prop_assert_eq!(x.to.ip(), a.1, "N3: only the attempt's IP");
                prop_assert!(now_ms < a.4, "sent at or after the deadline");
                a.5 += 1;
                let cap = if a.2 { u32::from(cfg.sockets) } else { u32::from(cfg.max_probes) };
                prop_assert!(a.5 <= cap, "more than the cap");
                // Paced: datagram n leaves no earlier than n / rate s.
                let earliest = u64::from(a.5 - 1) * 1000 / u64::from(cfg.rate.max(1));
                prop_assert!(now_ms - a.3 >= earliest, "faster than the rate");
            }
            while let Some(e) = m.poll_event() {
                let a = attempts.get_mut(&e.attempt).expect("a started attempt");
                prop_assert!(a.6.is_none(), "two events for one attempt");
                prop_assert!(now_ms <= a.4, "ended after its deadline");
                prop_assert_eq!(u32::from(e.sent), a.5);
                a.6 = Some(now_ms);
            }
            let live = attempts.values().filter(|a| a.6.is_none()).count();
            prop_assert!(live <= cfg.max_concurrent);
            prop_assert_eq!(live, m.running());
            Ok(())
        };
        for o in ops {
            match o {
                Op::Start(p, opener, i, honest) => {
                    let target = SocketAddr::new(peer_ip(i), 4000);
                    let session = if honest { peer_ip(i) } else { peer_ip(i.wrapping_add(1)) };
                    let side = if opener { SpraySide::Opener } else { SpraySide::Prober };
                    if let Ok(id) = m.start(at(now_ms), NodeId(u64::from(p)), side, target, session) {
                        prop_assert!(honest, "N3: started toward another IP than the session's");
                        let deadline = now_ms + cfg.deadline.as_millis() as u64;
                        attempts.insert(id, (NodeId(u64::from(p)), peer_ip(i), opener, now_ms, deadline, 0, None));
                    }
                }
                Op::Success(p, i) => {
                    let _ = m.handle_success(NodeId(u64::from(p)), SocketAddr::new(peer_ip(i), 9));
                }
                Op::Cancel(p) => {
                    let _ = m.cancel(NodeId(u64::from(p)), at(now_ms));
                }
                Op::Advance(ms) => {
                    for _ in 0..ms {
                        step(&mut m, now_ms, &mut attempts)?;
                        now_ms += 1;
                    }
                }
            }
            step(&mut m, now_ms, &mut attempts)?;
        }
        // Run past every deadline: each attempt has ended exactly once.
        let end = now_ms + cfg.deadline.as_millis() as u64 + 1;
        while now_ms <= end {
            step(&mut m, now_ms, &mut attempts)?;
            now_ms += 1;
        }
        for (id, a) in &attempts {
            prop_assert!(a.6.is_some(), "attempt {} never ended", id);
        }
    }
}

#[test]
fn n3_one_attempt_per_ip_and_its_cool_down_whatever_the_peer_id() {
    let mut m = SprayMachine::new(SprayConfig::default(), 8);
    let victim: SocketAddr = "198.51.100.66:4000".parse().unwrap();
    m.start(at(0), NodeId(1), SpraySide::Prober, victim, victim.ip())
        .unwrap();
    // Another "peer" at the same IP (a coordinator inventing ids) waits.
    assert_eq!(
        m.start(at(0), NodeId(2), SpraySide::Prober, victim, victim.ip()),
        Err(SprayRefusal::AlreadyRunning)
    );
    // Cancelling after it sent something is no way around the cool-down.
    assert!(m.poll_transmit(at(0)).is_some());
    assert!(m.cancel(NodeId(1), at(200)));
    assert_eq!(
        m.poll_event().map(|e| e.outcome),
        Some(SprayOutcome::Cancelled)
    );
    for peer in 2..10 {
        assert!(
            matches!(
                m.start(
                    at(1_000),
                    NodeId(peer),
                    SpraySide::Prober,
                    victim,
                    victim.ip()
                ),
                Err(SprayRefusal::CoolingDown { .. })
            ),
            "peer {peer}"
        );
    }
    // The cool-down runs from the cancel (at 0.2 s) for 60 s.
    assert!(matches!(
        m.start(
            at(60_199),
            NodeId(3),
            SpraySide::Prober,
            victim,
            victim.ip()
        ),
        Err(SprayRefusal::CoolingDown { .. })
    ));
    m.handle_timeout(at(60_200));
    assert!(
        m.start(
            at(60_200),
            NodeId(3),
            SpraySide::Prober,
            victim,
            victim.ip()
        )
        .is_ok()
    );
}
