//! N1: port prediction, at the agent's edges. Every test drives one
//! [`Agent`] directly and counts every datagram it sends and where to.
//!
//! - The coordinator predicts only a peer that announced a destination-
//!   dependent mapping with sequential ports, from that peer's session port,
//!   and tells only natrix peers.
//! - An endpoint's train covers exactly [`Config::prediction_window`]
//!   predicted ports, on the introduced IP and nowhere else — whatever a
//!   malicious coordinator sends: a prediction without an introduce, one for
//!   another coordinator's rendezvous, or an introduce aimed at another IP.
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroI16, NonZeroU16, NonZeroU32};
use std::time::Duration;

use natrix_proto::wire::{
    Hello, NatrixMessage, NodeId, PunchIntroduce, PunchPredict, PunchRequest,
};
use natrix_proto::{
    Agent, Announcement, Channel, Config, FilteringBehaviour as F, Instant, MappingBehaviour as M,
    NatClass, NatProfile, PortAllocation, Transmit,
};

const WALL: u64 = 1_700_000_000_000;
const A: NodeId = NodeId(1);
const COORD: NodeId = NodeId(2);
const B: NodeId = NodeId(3);
const OTHER_COORD: NodeId = NodeId(4);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn b_reflex() -> SocketAddr {
    addr("203.0.113.3:40000")
}

fn sequential(step: i32) -> NatProfile {
    NatProfile::new(M::AddressAndPortDependent, F::AddressAndPortDependent)
        .with_allocation(Some(PortAllocation::Sequential { step }))
}

fn predict(peer: NodeId, fire: u64, port: u16, step: i16) -> Vec<u8> {
    let (b, n) = NatrixMessage::Predict(PunchPredict {
        peer,
        fire_at_ms: fire,
        port: NonZeroU16::new(port).unwrap(),
        step: NonZeroI16::new(step).unwrap(),
    })
    .to_bytes();
    b[..n].to_vec()
}

fn introduce(peer: NodeId, reflex: SocketAddr, fire: u64) -> Vec<u8> {
    PunchIntroduce {
        peer,
        peer_reflex: reflex,
        fire_at_ms: fire,
    }
    .to_bytes()
    .to_vec()
}

/// Endpoint A behind a port-restricted cone, with sessions to two
/// coordinators and B's own announcement (sequential symmetric NAT).
fn endpoint(config: Config) -> Agent {
    let mut a = Agent::new(A, addr("10.0.0.1:4001"), config, 7);
    a.set_local_classification(NatClass::Cone, addr("198.51.100.1:4001"));
    a.set_local_profile(Some(NatProfile::new(
        M::EndpointIndependent,
        F::AddressAndPortDependent,
    )));
    a.handle_session_up(COORD, addr("192.0.2.2:7000")).unwrap();
    a.handle_session_up(OTHER_COORD, addr("192.0.2.4:7000"))
        .unwrap();
    a.handle_announcement(
        B,
        Announcement {
            reflex: b_reflex(),
            class: NatClass::Symmetric,
            profile: Some(sequential(1)),
        },
    )
    .unwrap();
    a
}

fn control(a: &mut Agent, now: Instant, from: NodeId, channel: Channel, bytes: &[u8]) {
    let session = if from == COORD {
        addr("192.0.2.2:7000")
    } else {
        addr("192.0.2.4:7000")
    };
    a.handle_control(now, WALL, from, session, channel, bytes)
        .unwrap();
}

/// COORD introduces B at its announced reflex.
fn introduce_b(a: &mut Agent, now: Instant, fire: u64) {
    control(
        a,
        now,
        COORD,
        Channel::Rendezvous,
        &introduce(B, b_reflex(), fire),
    );
}

/// Runs `a` for `span` from `now`, returning every datagram it sent:
/// destination → count.
fn datagrams(a: &mut Agent, now: Instant, span: Duration) -> BTreeMap<SocketAddr, u32> {
    let mut sent = BTreeMap::new();
    let end = now + span;
    let mut t = now;
    loop {
        while let Some(tx) = a.poll_transmit() {
            if let Transmit::Datagram { to, .. } = tx {
                *sent.entry(to).or_insert(0) += 1;
            }
        }
        match a.poll_timeout() {
            Some(next) if next <= end => {
                t = t.max(next);
                a.handle_timeout(t);
            }
            _ => break,
        }
    }
    sent
}

#[test]
fn n1_the_train_covers_the_window_on_the_introduced_ip_only() {
    for window in [0u16, 1, 3, 8, 64] {
        let config = Config::builder().prediction_window(window).build().unwrap();
        let mut a = endpoint(config);
        let now = Instant::ZERO;
        let fire = WALL + 100;
        control(
            &mut a,
            now,
            COORD,
            Channel::Natrix,
            &predict(B, fire, 40_001, 1),
        );
        introduce_b(&mut a, now, fire);
        let sent = datagrams(&mut a, now, Duration::from_secs(6));
        // N3: every datagram went to B's introduced IP.
        for to in sent.keys() {
            assert_eq!(to.ip(), b_reflex().ip(), "window {window}: {sent:?}");
        }
        // The introduced port and exactly `window` predicted ones.
        let want: Vec<u16> = std::iter::once(40_000)
            .chain((0..window).map(|j| 40_001 + j))
            .collect();
        let mut got: Vec<u16> = sent.keys().map(SocketAddr::port).collect();
        got.sort_unstable();
        assert_eq!(got, want, "window {window}");
        let stats = a.stats();
        assert_eq!(stats.predictions_taken, u64::from(window > 0));
        let predicted: u32 = sent
            .iter()
            .filter(|(to, _)| to.port() != 40_000)
            .map(|(_, n)| n)
            .sum();
        assert_eq!(u64::from(predicted), stats.keepalives_predicted);
        // Each predicted port got one keep-alive per tick of the train.
        let ticks = sent[&b_reflex()];
        assert!(sent.values().all(|&n| n == ticks), "{sent:?}");
    }
}

#[test]
fn n1_a_prediction_arriving_after_its_introduce_still_counts_and_steps_both_ways() {
    for step in [2i16, -3] {
        let mut a = endpoint(Config::default());
        let now = Instant::ZERO;
        let fire = WALL + 100;
        introduce_b(&mut a, now, fire);
        control(
            &mut a,
            now,
            COORD,
            Channel::Natrix,
            &predict(B, fire, 40_010, step),
        );
        let sent = datagrams(&mut a, now, Duration::from_secs(6));
        let mut got: Vec<i32> = sent
            .keys()
            .filter(|to| to.port() != 40_000)
            .map(|to| i32::from(to.port()))
            .collect();
        got.sort_unstable();
        let mut want: Vec<i32> = (0..8).map(|j| 40_010 + j * i32::from(step)).collect();
        want.sort_unstable();
        assert_eq!(got, want, "step {step}");
    }
}

#[test]
fn n1_the_window_stays_inside_the_port_range() {
    let mut a = endpoint(Config::default());
    let fire = WALL + 100;
    control(
        &mut a,
        Instant::ZERO,
        COORD,
        Channel::Natrix,
        &predict(B, fire, 65_533, 1),
    );
    introduce_b(&mut a, Instant::ZERO, fire);
    let sent = datagrams(&mut a, Instant::ZERO, Duration::from_secs(6));
    let ports: Vec<u16> = sent.keys().map(SocketAddr::port).collect();
    assert_eq!(ports, [40_000, 65_533, 65_534, 65_535]);
}

#[test]
fn n1_a_malicious_coordinator_cannot_aim_the_window() {
    let fire = WALL + 100;
    // A prediction alone sends nothing.
    let mut a = endpoint(Config::default());
    control(
        &mut a,
        Instant::ZERO,
        COORD,
        Channel::Natrix,
        &predict(B, fire, 53, 1),
    );
    assert!(datagrams(&mut a, Instant::ZERO, Duration::from_secs(6)).is_empty());

    // An introduce aimed at another IP than B announced is refused (R12):
    // neither it nor the prediction bound to it sends anything.
    let mut a = endpoint(Config::default());
    let victim = addr("203.0.113.66:53");
    control(
        &mut a,
        Instant::ZERO,
        COORD,
        Channel::Natrix,
        &predict(B, fire, 53, 1),
    );
    control(
        &mut a,
        Instant::ZERO,
        COORD,
        Channel::Rendezvous,
        &introduce(B, victim, fire),
    );
    assert!(datagrams(&mut a, Instant::ZERO, Duration::from_secs(6)).is_empty());

    // Another coordinator's prediction, or one for another fire time, is not
    // taken by the train of this coordinator's rendezvous.
    let mut a = endpoint(Config::default());
    control(
        &mut a,
        Instant::ZERO,
        OTHER_COORD,
        Channel::Natrix,
        &predict(B, fire, 41_000, 1),
    );
    control(
        &mut a,
        Instant::ZERO,
        COORD,
        Channel::Natrix,
        &predict(B, fire + 1, 42_000, 1),
    );
    introduce_b(&mut a, Instant::ZERO, fire);
    control(
        &mut a,
        Instant::ZERO,
        OTHER_COORD,
        Channel::Natrix,
        &predict(B, fire, 43_000, 1),
    );
    let sent = datagrams(&mut a, Instant::ZERO, Duration::from_secs(6));
    assert_eq!(sent.keys().copied().collect::<Vec<_>>(), [b_reflex()]);
    assert_eq!(a.stats().predictions_taken, 0);
    assert_eq!(a.stats().keepalives_predicted, 0);
}

/// Coordinator R with requester X and target Y; what R tells each.
fn mediate(
    x_profile: Option<NatProfile>,
    y_natrix: bool,
) -> (Vec<PunchPredict>, Vec<PunchPredict>) {
    let (x, y) = (NodeId(10), NodeId(11));
    let (x_session, y_session) = (addr("203.0.113.10:50000"), addr("203.0.113.11:4000"));
    let mut r = Agent::new(NodeId(2), addr("192.0.2.2:7000"), Config::default(), 3);
    let now = Instant::ZERO;
    r.handle_session_up(x, x_session).unwrap();
    r.handle_session_up(y, y_session).unwrap();
    let hello = Hello { version: 1 }.to_bytes();
    r.handle_control(now, WALL, x, x_session, Channel::Natrix, &hello)
        .unwrap();
    if y_natrix {
        r.handle_control(now, WALL, y, y_session, Channel::Natrix, &hello)
            .unwrap();
    }
    r.handle_announcement(
        x,
        Announcement {
            reflex: addr("203.0.113.10:49000"),
            class: NatClass::Symmetric,
            profile: x_profile,
        },
    )
    .unwrap();
    r.handle_announcement(
        y,
        Announcement {
            reflex: y_session,
            class: NatClass::Cone,
            profile: Some(NatProfile::new(
                M::EndpointIndependent,
                F::AddressAndPortDependent,
            )),
        },
    )
    .unwrap();
    while r.poll_transmit().is_some() {}
    let (req, n) = PunchRequest {
        target: y,
        punch_id: NonZeroU32::new(5),
        self_reflex: addr("203.0.113.10:49000"),
    }
    .to_bytes();
    r.handle_control(now, WALL, x, x_session, Channel::Rendezvous, &req[..n])
        .unwrap();
    let (mut to_x, mut to_y) = (Vec::new(), Vec::new());
    while let Some(tx) = r.poll_transmit() {
        if let Transmit::Control {
            to,
            channel: Channel::Natrix,
            payload,
        } = tx
        {
            if let Ok(NatrixMessage::Predict(p)) = NatrixMessage::decode(payload.as_bytes()) {
                if to == x { &mut to_x } else { &mut to_y }.push(p);
            }
        }
        assert!(
            !matches!(tx, Transmit::Datagram { .. }),
            "a coordinator sends no datagram"
        );
    }
    (to_x, to_y)
}

#[test]
fn n1_the_coordinator_predicts_from_the_session_port_and_the_announced_step() {
    // X maps per destination, sequentially by 2: Y learns X's session port + 2.
    let (to_x, to_y) = mediate(Some(sequential(2)), true);
    assert!(to_x.is_empty(), "Y is endpoint-independent: {to_x:?}");
    assert_eq!(to_y.len(), 1);
    assert_eq!(to_y[0].peer, NodeId(10));
    assert_eq!(to_y[0].port.get(), 50_002);
    assert_eq!(to_y[0].step.get(), 2);
    // Nothing to predict: random ports, no profile, or an endpoint-
    // independent mapping.
    let random = NatProfile::new(M::AddressAndPortDependent, F::AddressAndPortDependent)
        .with_allocation(Some(PortAllocation::Random));
    let eim = NatProfile::new(M::EndpointIndependent, F::AddressAndPortDependent)
        .with_allocation(Some(PortAllocation::Sequential { step: 1 }));
    for profile in [Some(random), None, Some(eim)] {
        assert_eq!(mediate(profile, true), (vec![], vec![]), "{profile:?}");
    }
    // A Net peer never gets natrix's messages.
    assert_eq!(mediate(Some(sequential(1)), false), (vec![], vec![]));
}

#[test]
fn n1_a_prediction_is_never_a_destination_by_itself() {
    // A prediction naming the node itself, or its coordinator as the peer,
    // is ignored; the window follows whatever IP the train was introduced
    // with, never the coordinator's session IP.
    let mut a = endpoint(Config::default());
    let fire = WALL + 100;
    control(
        &mut a,
        Instant::ZERO,
        COORD,
        Channel::Natrix,
        &predict(A, fire, 7000, 1),
    );
    control(
        &mut a,
        Instant::ZERO,
        COORD,
        Channel::Natrix,
        &predict(COORD, fire, 7000, 1),
    );
    assert!(datagrams(&mut a, Instant::ZERO, Duration::from_secs(6)).is_empty());
    let ip: IpAddr = b_reflex().ip();
    control(
        &mut a,
        Instant::ZERO,
        COORD,
        Channel::Natrix,
        &predict(B, fire, 7000, 1),
    );
    introduce_b(&mut a, Instant::ZERO, fire);
    let sent = datagrams(&mut a, Instant::ZERO, Duration::from_secs(6));
    assert!(sent.keys().all(|to| to.ip() == ip), "{sent:?}");
    assert_eq!(sent.len(), 9);
}
