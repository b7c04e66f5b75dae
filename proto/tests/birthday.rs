//! N2, N3: birthday punching at the agent's edges. Each test drives one
//! [`Agent`] directly and counts every datagram it sends and where to.
//!
//! - The easy side (endpoint-independent mapping) probes distinct random
//!   ports of the hard side's introduced IP, within the caps, and nowhere
//!   else; the hard side sends one datagram per socket to the easy side's
//!   reflex, and nowhere else.
//! - A malicious coordinator that introduces invented peers at one victim
//!   IP gets one attempt's worth of probes toward it per cool-down, however
//!   many peer ids it makes up.
//! - On the hard side, the peer's keep-alive on one of the attempt's sockets
//!   ends the attempt with that socket kept, before the punch's success; the
//!   train's later keep-alives leave from it. A keep-alive from another IP
//!   changes nothing.
#![allow(missing_docs)]

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use natrix_proto::rendezvous::keepalive_token;
use natrix_proto::spray::{SprayConfig, SprayOutcome};
use natrix_proto::wire::{Keepalive, NodeId, PunchIntroduce};
use natrix_proto::{
    Agent, Announcement, Channel, Config, DatagramVerdict, Event, FilteringBehaviour as F, Instant,
    MappingBehaviour as M, NatClass, NatProfile, PortAllocation, Transmit,
};

const WALL: u64 = 1_700_000_000_000;
const ME: NodeId = NodeId(1);
const COORD: NodeId = NodeId(2);
const PEER: NodeId = NodeId(3);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn coord_addr() -> SocketAddr {
    addr("192.0.2.2:7000")
}

fn hard() -> NatProfile {
    NatProfile::new(M::AddressAndPortDependent, F::AddressAndPortDependent)
        .with_allocation(Some(PortAllocation::Random))
}

fn easy() -> NatProfile {
    NatProfile::new(M::EndpointIndependent, F::AddressAndPortDependent)
        .with_allocation(Some(PortAllocation::Preserving))
}

/// An agent that announced (`class`, `profile`), with a session to COORD.
fn agent(class: NatClass, profile: NatProfile) -> Agent {
    let mut a = Agent::new(ME, addr("10.0.0.1:4001"), Config::default(), 7);
    a.set_local_classification(class, addr("198.51.100.1:4001"));
    a.set_local_profile(Some(profile));
    a.handle_session_up(COORD, coord_addr()).unwrap();
    while a.poll_transmit().is_some() {}
    a
}

fn announce(a: &mut Agent, peer: NodeId, reflex: SocketAddr, class: NatClass, p: NatProfile) {
    a.handle_announcement(
        peer,
        Announcement {
            reflex,
            class,
            profile: Some(p),
        },
    )
    .unwrap();
}

fn introduce(a: &mut Agent, now: Instant, peer: NodeId, reflex: SocketAddr, fire: u64) {
    let m = PunchIntroduce {
        peer,
        peer_reflex: reflex,
        fire_at_ms: fire,
    };
    a.handle_control(
        now,
        WALL,
        COORD,
        coord_addr(),
        Channel::Rendezvous,
        &m.to_bytes(),
    )
    .unwrap();
}

/// What left the agent: (time, transmit), and its events with their time.
#[derive(Default)]
struct Log {
    sent: Vec<(Instant, Transmit)>,
    events: Vec<(Instant, Event)>,
}

impl Log {
    fn datagrams(&self) -> impl Iterator<Item = (Instant, SocketAddr)> + '_ {
        self.sent.iter().filter_map(|(t, x)| match x {
            Transmit::Datagram { to, .. } | Transmit::Spray { to, .. } => Some((*t, *to)),
            Transmit::Control { .. } => None,
        })
    }
}

/// Introduces `peer` at `reflex` to `a` at time zero (fire time `fire`)
/// and runs it for `span`: the log, and the time reached.
fn introduce_and_run(
    a: &mut Agent,
    reflex: SocketAddr,
    fire: u64,
    span: Duration,
) -> (Log, Instant) {
    let mut now = Instant::ZERO;
    introduce(a, now, PEER, reflex, fire);
    let mut log = Log::default();
    run(a, &mut now, Instant::ZERO + span, &mut log);
    (log, now)
}

/// Runs `a` until `end`, logging everything.
fn run(a: &mut Agent, now: &mut Instant, end: Instant, log: &mut Log) {
    loop {
        while let Some(x) = a.poll_transmit() {
            log.sent.push((*now, x));
        }
        while let Some(e) = a.poll_event() {
            log.events.push((*now, e));
        }
        match a.poll_timeout() {
            Some(next) if next <= end => {
                *now = (*now).max(next);
                a.handle_timeout(*now);
            }
            _ => break,
        }
    }
    *now = end;
}

#[test]
fn n2_n3_the_prober_sprays_only_the_introduced_ip_within_its_caps() {
    let mut a = agent(NatClass::Cone, easy());
    let b_reflex = addr("203.0.113.3:40000");
    announce(&mut a, PEER, b_reflex, NatClass::Symmetric, hard());
    let (log, _) = introduce_and_run(&mut a, b_reflex, WALL + 100, Duration::from_secs(8));
    let caps = SprayConfig::default();
    let datagrams: Vec<_> = log.datagrams().collect();
    assert!(
        datagrams.iter().all(|(_, to)| to.ip() == b_reflex.ip()),
        "N3"
    );
    assert!(
        log.sent
            .iter()
            .all(|(_, x)| !matches!(x, Transmit::Spray { .. })),
        "the easy side opens no sockets"
    );
    let probes: Vec<_> = datagrams.iter().filter(|(_, to)| *to != b_reflex).collect();
    let ports: BTreeSet<u16> = probes.iter().map(|(_, to)| to.port()).collect();
    assert_eq!(
        probes.len(),
        usize::from(caps.max_probes),
        "all probes sent"
    );
    assert_eq!(ports.len(), probes.len(), "each port once");
    assert!(ports.iter().all(|&p| p >= 1024));
    // Paced: no second holds more than `rate` probes.
    for w in 0..8u64 {
        let from = Instant::ZERO + Duration::from_secs(w);
        let to = from + Duration::from_secs(1);
        let n = probes.iter().filter(|(t, _)| *t >= from && *t < to).count();
        assert!(n <= caps.rate as usize, "{n} probes in second {w}");
    }
    // The prober waits until the opener's sockets are open: fire + 1 s.
    let first = probes.first().map(|(t, _)| *t).unwrap();
    assert!(
        first >= Instant::ZERO + Duration::from_millis(1_100),
        "{first:?}"
    );
    let stats = a.stats();
    assert_eq!(stats.birthday_attempts, 1);
    assert_eq!(stats.spray_datagrams, probes.len() as u64);
    // One end for the attempt, before the punch's failure.
    let ends: Vec<_> = log
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::SprayEnded { outcome, keep, .. } => Some((*outcome, *keep)),
            _ => None,
        })
        .collect();
    assert_eq!(ends, [(SprayOutcome::Exhausted, None)]);
    let order: Vec<bool> = log
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::SprayEnded { .. } => Some(true),
            Event::PunchFailed { .. } => Some(false),
            _ => None,
        })
        .collect();
    assert_eq!(order, [true, false]);
}

#[test]
fn n3_a_malicious_coordinator_gets_one_attempt_per_ip_per_cool_down() {
    let mut a = agent(NatClass::Cone, easy());
    let victim: IpAddr = "203.0.113.66".parse().unwrap();
    let mut now = Instant::ZERO;
    let mut log = Log::default();
    // Invented peers, all "behind" the victim's IP, introduced one after
    // another for 60 s (the responder budget lets 4 per 10 s through).
    for i in 0..60u64 {
        let peer = NodeId(100 + i);
        let reflex = SocketAddr::new(victim, 40_000 + i as u16);
        announce(&mut a, peer, reflex, NatClass::Symmetric, hard());
        introduce(
            &mut a,
            now,
            peer,
            reflex,
            WALL + now.as_nanos() / 1_000_000 + 100,
        );
        let next = now + Duration::from_secs(1);
        run(&mut a, &mut now, next, &mut log);
    }
    let end = now + Duration::from_secs(10);
    run(&mut a, &mut now, end, &mut log);
    let stats = a.stats();
    assert_eq!(stats.birthday_attempts, 1, "{stats:?}");
    assert!(stats.birthday_refused >= 1, "{stats:?}");
    assert!(stats.spray_datagrams <= u64::from(SprayConfig::default().max_probes));
    assert!(log.datagrams().all(|(_, to)| to.ip() == victim));
}

#[test]
fn n2_the_opener_keeps_the_socket_the_peer_came_in_on() {
    let mut b = agent(NatClass::Symmetric, hard());
    let a_reflex = addr("198.51.100.9:4000");
    announce(&mut b, PEER, a_reflex, NatClass::Cone, easy());
    let fire = WALL + 100;
    let (log, mut now) = introduce_and_run(&mut b, a_reflex, fire, Duration::from_secs(2));
    // One datagram per socket, all to the easy side's reflex.
    let mut attempt = None;
    let mut sockets = BTreeSet::new();
    for (_, x) in &log.sent {
        match *x {
            Transmit::Spray {
                attempt: id,
                socket,
                to,
                ..
            } => {
                assert_eq!(to, a_reflex);
                assert!(attempt.replace(id).is_none_or(|old| old == id));
                assert!(sockets.insert(socket), "socket {socket} twice");
            }
            Transmit::Datagram { to, .. } => assert_eq!(to, a_reflex),
            Transmit::Control { .. } => {}
        }
    }
    let caps = SprayConfig::default();
    assert_eq!(sockets, (0..caps.sockets).collect());
    let attempt = attempt.unwrap();
    let ka = Keepalive {
        sender: PEER,
        punch_id: keepalive_token(ME, PEER, fire),
    }
    .to_bytes();
    // A keep-alive from another IP: nothing happens (R8).
    let stranger = addr("198.51.100.77:4000");
    let _ = b.handle_spray_datagram(now, attempt, 17, stranger, &ka);
    assert!(b.poll_event().is_none());
    // Not a keep-alive: the application's.
    assert_eq!(
        b.handle_spray_datagram(now, attempt, 17, a_reflex, b"hello"),
        DatagramVerdict::NotOurs
    );
    // The probe lands on socket 17.
    let _ = b.handle_spray_datagram(now, attempt, 17, a_reflex, &ka);
    let events: Vec<Event> = std::iter::from_fn(|| b.poll_event()).collect();
    assert!(
        matches!(
            events[..],
            [
                Event::SprayEnded {
                    peer: PEER,
                    outcome: SprayOutcome::Succeeded { path },
                    keep: Some(17),
                    ..
                },
                Event::PunchSucceeded { path: p, .. },
            ] if path == a_reflex && p == a_reflex
        ),
        "{events:?}"
    );
    // The answer and the train's later keep-alives leave from socket 17.
    let mut after = Log::default();
    let end = now + Duration::from_secs(4);
    run(&mut b, &mut now, end, &mut after);
    let keepalives: Vec<_> = after
        .sent
        .iter()
        .filter_map(|(_, x)| match x {
            Transmit::Spray { socket, to, .. } => Some((*socket, *to)),
            Transmit::Datagram { to, .. } => Some((u16::MAX, *to)),
            Transmit::Control { .. } => None,
        })
        .collect();
    assert!(!keepalives.is_empty());
    assert!(
        keepalives.iter().all(|k| *k == (17, a_reflex)),
        "{keepalives:?}"
    );
    assert_eq!(b.stats().birthday_successes, 1);
}

#[test]
fn n2_no_birthday_without_both_profiles_or_with_the_caps_off() {
    // Without the peer's profile: the baseline decides (no attempt).
    let mut a = agent(NatClass::Cone, easy());
    let b_reflex = addr("203.0.113.3:40000");
    a.handle_announcement(
        PEER,
        Announcement {
            reflex: b_reflex,
            class: NatClass::Symmetric,
            profile: None,
        },
    )
    .unwrap();
    let (log, _) = introduce_and_run(&mut a, b_reflex, WALL + 100, Duration::from_secs(8));
    assert_eq!(a.stats().birthday_attempts, 0);
    assert!(log.datagrams().all(|(_, to)| to == b_reflex));

    // Caps off: the request is skipped as before C8's model said.
    let config = Config::builder()
        .spray(SprayConfig {
            sockets: 0,
            ..SprayConfig::default()
        })
        .build()
        .unwrap();
    let mut a = Agent::new(ME, addr("10.0.0.1:4001"), config, 7);
    a.set_local_classification(NatClass::Cone, addr("198.51.100.1:4001"));
    a.set_local_profile(Some(easy()));
    a.handle_session_up(COORD, coord_addr()).unwrap();
    announce(&mut a, PEER, b_reflex, NatClass::Symmetric, hard());
    assert!(a.request_punch(Instant::ZERO, PEER, COORD).is_err());
    // With the caps on, the same request runs.
    let mut a = agent(NatClass::Cone, easy());
    announce(&mut a, PEER, b_reflex, NatClass::Symmetric, hard());
    assert!(a.request_punch(Instant::ZERO, PEER, COORD).is_ok());
}
