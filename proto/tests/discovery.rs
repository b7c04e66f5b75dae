//! Reflex discovery and classification: one regression test per requirement
//! C1–C7 (named after its id), on the in-memory harness.
#![allow(missing_docs)]

mod harness;

use std::net::{IpAddr, SocketAddr};

use harness::{Net, Packet, addr_of, ms, quiet};
use natrix_proto::wire::{NodeId, ReflexResponse};
use natrix_proto::{
    Agent, Announcement, Channel, Config, Event, Instant, NatClass, NatProfile, ProbeError,
    ReclassifyOutcome, SweepOutcome,
};

const X: NodeId = NodeId(1);

fn public(port: u16) -> SocketAddr {
    SocketAddr::new("203.0.113.1".parse().unwrap(), port)
}

/// Node X plus `peers` peers (ids 2..), each on its own IP; every peer sees X
/// at `seen(peer_index)`.
fn lab(config: Config, peers: u64, seen: impl Fn(u64) -> SocketAddr) -> Net {
    let mut net = Net::new();
    net.add(1, config, 1);
    let mut ids = vec![X];
    for i in 0..peers {
        let p = net.add(2 + i, quiet(), 100 + i);
        net.seen_as.insert((X, p), seen(i));
        ids.push(p);
    }
    net.connect_all(&ids);
    net
}

fn sweeps(net: &Net, id: NodeId) -> Vec<SweepOutcome> {
    net.all_events(id)
        .into_iter()
        .filter_map(|(_, e)| match e {
            Event::SweepFinished { outcome, .. } => Some(outcome),
            _ => None,
        })
        .collect()
}

fn reflex_requests(net: &Net) -> usize {
    net.controls
        .iter()
        .filter(|(_, from, _, ch, _)| *from == X && *ch == Channel::ReflexRequest)
        .count()
}

fn classification(net: &mut Net) -> Option<Announcement> {
    net.agent(X).classification()
}

fn cone() -> Announcement {
    Announcement {
        reflex: public(7000),
        class: NatClass::Cone,
        profile: None,
    }
}

// ---------------------------------------------------------------- C1

#[test]
fn c1_concurrent_sweep_requests_run_one_sweep() {
    let mut net = lab(quiet(), 3, |_| public(7000));
    let now = net.now;
    let first = net.agent(X).reclassify(now);
    let second = net.agent(X).reclassify(now);
    let ReclassifyOutcome::Started { generation } = first else {
        panic!("{first:?}")
    };
    assert_eq!(second, ReclassifyOutcome::AlreadyRunning { generation });
    net.run_for(ms(1_000));
    assert_eq!(
        reflex_requests(&net),
        3,
        "one probe per destination, not two"
    );
    assert_eq!(sweeps(&net, X).len(), 1);
    assert_eq!(classification(&mut net), Some(cone()));
}

#[test]
fn c1_standalone_probe_racing_sweep_keeps_sweep_observations() {
    let mut net = lab(quiet(), 3, |_| public(7000));
    let now = net.now;
    assert!(matches!(
        net.agent(X).reclassify(now),
        ReclassifyOutcome::Started { .. }
    ));
    // Race the sweep's probe to peer 2 with a standalone probe, and cancel a
    // second standalone probe to peer 3 mid-flight.
    let p2 = net.agent(X).probe_reflex(now, NodeId(2)).unwrap();
    let p3 = net.agent(X).probe_reflex(now, NodeId(3)).unwrap();
    assert!(net.agent(X).cancel_probe(p3));
    assert!(!net.agent(X).cancel_probe(p3));
    net.run_for(ms(1_000));
    assert_eq!(
        reflex_requests(&net),
        3,
        "the racing probes shared the in-flight requests"
    );
    match sweeps(&net, X)[..] {
        [SweepOutcome::Committed(c)] => assert_eq!(c.observations, 3),
        ref other => panic!("{other:?}"),
    }
    let probed: Vec<_> = net
        .all_events(X)
        .into_iter()
        .filter_map(|(_, e)| match e {
            Event::ReflexProbed {
                probe_id, result, ..
            } => Some((probe_id, result)),
            _ => None,
        })
        .collect();
    assert_eq!(
        probed,
        [(p2, Ok(public(7000)))],
        "the cancelled probe lost only its own answer"
    );
}

// ---------------------------------------------------------------- C2

#[test]
fn c2_sweep_with_one_lost_probe_keeps_previous_cone() {
    let mut net = lab(quiet(), 2, |_| public(7000));
    let now = net.now;
    net.agent(X).reclassify(now);
    net.run_for(ms(1_000));
    assert_eq!(classification(&mut net), Some(cone()));
    // Peer 3's answer is lost; peer 2 now reports a different port.
    net.seen_as.insert((X, NodeId(2)), public(9999));
    net.filter = Some(Box::new(
        |p| matches!(p, Packet::Control { from, channel: Channel::ReflexResponse, .. } if *from == NodeId(3)),
    ));
    let now = net.now;
    net.agent(X).reclassify(now);
    net.run_for(ms(6_000));
    assert_eq!(
        sweeps(&net, X).last(),
        Some(&SweepOutcome::TooFewObservations { observations: 1 })
    );
    assert_eq!(
        classification(&mut net),
        Some(cone()),
        "no downgrade, no flap"
    );
}

#[test]
fn c2_missed_deadline_keeps_previous_pair_even_with_two_answers() {
    let cfg = Config::builder()
        .auto_reclassify(false)
        .reflex_probe_timeout(ms(2_000))
        .sweep_deadline(ms(2_000))
        .build()
        .unwrap();
    let mut net = lab(cfg, 3, |i| public(7000 + i as u16));
    net.agent(X)
        .set_local_classification(NatClass::Cone, public(7000));
    net.filter = Some(Box::new(
        |p| matches!(p, Packet::Control { from, channel: Channel::ReflexResponse, .. } if *from == NodeId(4)),
    ));
    let now = net.now;
    net.agent(X).reclassify(now);
    net.run_for(ms(3_000));
    assert_eq!(
        sweeps(&net, X),
        [SweepOutcome::DeadlineMissed { observations: 2 }]
    );
    assert_eq!(classification(&mut net), Some(cone()));
}

#[test]
fn c2_class_is_never_published_without_its_reflex() {
    // A fresh node whose sweep gets a single answer publishes nothing at all.
    let mut net = lab(quiet(), 2, |_| public(7000));
    net.filter = Some(Box::new(
        |p| matches!(p, Packet::Control { from, channel: Channel::ReflexResponse, .. } if *from == NodeId(2)),
    ));
    let now = net.now;
    net.agent(X).reclassify(now);
    net.run_for(ms(6_000));
    assert_eq!(classification(&mut net), None);
    assert!(
        !net.all_events(X)
            .iter()
            .any(|(_, e)| matches!(e, Event::ClassificationChanged { .. }))
    );
}

// ---------------------------------------------------------------- C3

#[test]
fn c3_wildcard_bind_port_preserving_nat_is_cone_and_open_only_on_own_interface() {
    // X is bound to 0.0.0.0:4001; its NAT preserves the port.
    let build = |interfaces: &[IpAddr]| {
        let mut net = Net::new();
        net.add_at(1, addr_of(X), "0.0.0.0:4001".parse().unwrap(), quiet(), 1);
        let peers: Vec<_> = (2..4).map(|i| net.add(i, quiet(), i)).collect();
        for p in &peers {
            net.seen_as.insert((X, *p), public(4001));
        }
        let mut all = peers.clone();
        all.push(X);
        net.connect_all(&all);
        net.agent(X).set_interface_addrs(interfaces);
        let now = net.now;
        net.agent(X).reclassify(now);
        net.run_for(ms(1_000));
        net.agent(X).classification().unwrap()
    };
    let lan: IpAddr = "10.0.0.2".parse().unwrap();
    assert_eq!(build(&[lan]).class, NatClass::Cone);
    assert_eq!(build(&[lan, public(0).ip()]).class, NatClass::Open);
}

// ---------------------------------------------------------------- C4

#[test]
fn c4_two_peers_on_one_ip_are_one_destination() {
    let mut net = Net::new();
    net.add(1, quiet(), 1);
    let shared: IpAddr = "198.51.100.200".parse().unwrap();
    let p = net.add_at(
        2,
        SocketAddr::new(shared, 5000),
        SocketAddr::new(shared, 5000),
        quiet(),
        2,
    );
    let q = net.add_at(
        3,
        SocketAddr::new(shared, 5001),
        SocketAddr::new(shared, 5001),
        quiet(),
        3,
    );
    net.seen_as.insert((X, p), public(7000));
    net.seen_as.insert((X, q), public(7001));
    net.connect_all(&[X, p, q]);
    let now = net.now;
    assert_eq!(
        net.agent(X).reclassify(now),
        ReclassifyOutcome::InsufficientDestinations { destinations: 1 }
    );
    net.run_for(ms(1_000));
    assert_eq!(reflex_requests(&net), 0);
    assert_eq!(classification(&mut net), None);
    assert_eq!(
        sweeps(&net, X),
        [SweepOutcome::InsufficientDestinations { destinations: 1 }]
    );

    // A third peer on another IP makes two destinations: one probe per IP.
    let r = net.add(4, quiet(), 4);
    net.seen_as.insert((X, r), public(7002));
    net.connect_all(&[X, r]);
    let now = net.now;
    assert!(matches!(
        net.agent(X).reclassify(now),
        ReclassifyOutcome::Started { .. }
    ));
    net.run_for(ms(1_000));
    assert_eq!(reflex_requests(&net), 2);
    assert_eq!(
        classification(&mut net).map(|a| a.class),
        Some(NatClass::Symmetric)
    );
}

// ---------------------------------------------------------------- C5

#[test]
fn c5_reflex_response_echoes_authenticated_session_address() {
    let mut ag = Agent::new(X, addr_of(X), quiet(), 1);
    let session: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    ag.handle_control(
        Instant::ZERO,
        0,
        NodeId(7),
        session,
        Channel::ReflexRequest,
        &[],
    )
    .unwrap();
    let Some(natrix_proto::Transmit::Control {
        to,
        channel,
        payload,
    }) = ag.poll_transmit()
    else {
        panic!("no response")
    };
    assert_eq!((to, channel), (NodeId(7), Channel::ReflexResponse));
    assert_eq!(
        ReflexResponse::decode(payload.as_bytes()).unwrap().observed,
        session
    );
    // Malformed or unknown payloads get nothing and change nothing.
    assert!(
        ag.handle_control(
            Instant::ZERO,
            0,
            NodeId(7),
            session,
            Channel::ReflexRequest,
            &[1]
        )
        .is_err()
    );
    assert!(
        ag.handle_control(
            Instant::ZERO,
            0,
            NodeId(7),
            session,
            Channel::ReflexResponse,
            &[4; 3]
        )
        .is_err()
    );
    let unsolicited = ReflexResponse {
        observed: public(1),
    }
    .to_bytes();
    ag.handle_control(
        Instant::ZERO,
        0,
        NodeId(7),
        session,
        Channel::ReflexResponse,
        &unsolicited,
    )
    .unwrap();
    assert!(ag.poll_transmit().is_none());
    assert!(ag.poll_event().is_none());
    assert_eq!(ag.classification(), None);
    assert_eq!(ag.stats().malformed_messages, 2);
    assert_eq!(ag.stats().reflex_answers_unsolicited, 1);
}

// ---------------------------------------------------------------- C6

#[test]
fn c6_override_suppresses_sweeps_and_discards_a_running_one() {
    let mut net = lab(quiet(), 2, |_| public(7000));
    let now = net.now;
    net.agent(X).reclassify(now);
    net.run_for(ms(1_000));
    let committed = classification(&mut net);
    // Installed mid-sweep: that sweep's result is discarded.
    net.seen_as.insert((X, NodeId(2)), public(8000));
    net.seen_as.insert((X, NodeId(3)), public(8001));
    let now = net.now;
    net.agent(X).reclassify(now);
    let mapped = public(5555);
    net.agent(X).set_reflex_override(Some(mapped));
    net.run_for(ms(1_000));
    assert_eq!(sweeps(&net, X).last(), Some(&SweepOutcome::Discarded));
    // A port mapping forwards whatever arrives: the override lets anyone in.
    let forced = Announcement {
        reflex: mapped,
        class: NatClass::Open,
        profile: Some(NatProfile::OPEN),
    };
    assert_eq!(classification(&mut net), Some(forced));
    let now = net.now;
    assert_eq!(net.agent(X).reclassify(now), ReclassifyOutcome::Suppressed);
    assert!(net.all_events(X).iter().any(|(_, e)| *e
        == Event::ClassificationChanged {
            class: NatClass::Open,
            reflex: mapped,
            profile: Some(NatProfile::OPEN),
        }));
    // Removing it restores the last committed pair.
    net.agent(X).set_reflex_override(None);
    assert_eq!(classification(&mut net), committed);
}

// ---------------------------------------------------------------- C7

fn sweep_count(net: &Net) -> usize {
    sweeps(net, X)
        .iter()
        .filter(|o| !matches!(o, SweepOutcome::InsufficientDestinations { .. }))
        .count()
}

#[test]
fn c7_sweeps_at_start_periodically_and_on_reflex_change() {
    let cfg = Config::builder()
        .reclassify_interval(ms(60_000))
        .build()
        .unwrap();
    let mut net = lab(cfg, 3, |_| public(7000));
    // At start.
    net.run_for(ms(1_000));
    assert_eq!(sweep_count(&net), 1);
    assert_eq!(
        classification(&mut net).map(|a| a.class),
        Some(NatClass::Cone)
    );
    // Periodically.
    net.run_for(ms(60_000));
    assert_eq!(sweep_count(&net), 2);
    // A probe that sees a new reflex triggers one at once.
    net.seen_as.insert((X, NodeId(2)), public(7100));
    net.seen_as.insert((X, NodeId(3)), public(7100));
    net.seen_as.insert((X, NodeId(4)), public(7100));
    let now = net.now;
    net.agent(X).probe_reflex(now, NodeId(2)).unwrap();
    net.run_for(ms(1_000));
    assert_eq!(sweep_count(&net), 3);
    assert_eq!(
        classification(&mut net).map(|a| a.reflex),
        Some(public(7100))
    );
}

#[test]
fn c7_start_sweep_waits_for_two_destinations() {
    let mut net = Net::new();
    net.add(1, Config::default(), 1);
    net.run_for(ms(100));
    assert_eq!(sweep_count(&net), 0);
    let p = net.add(2, quiet(), 2);
    let q = net.add(3, quiet(), 3);
    net.connect_all(&[X, p, q]);
    net.run_for(ms(100));
    assert_eq!(sweep_count(&net), 1);
}

#[test]
fn c7_punch_failure_never_triggers_a_sweep() {
    let cfg = Config::builder()
        .reclassify_interval(ms(3_600_000))
        .build()
        .unwrap();
    let mut net = lab(cfg, 3, |_| public(7000));
    net.run_for(ms(1_000));
    let before = sweep_count(&net);
    // Punches to peer 3 through peer 2 fail (keep-alives are lost).
    net.filter = Some(Box::new(|p| matches!(p, Packet::Datagram { .. })));
    for p in 3..5 {
        net.agent(NodeId(p))
            .set_local_classification(NatClass::Cone, addr_of(NodeId(p)));
        net.agent(X)
            .handle_peer_announcement(NodeId(p), addr_of(NodeId(p)), NatClass::Cone)
            .unwrap();
        net.agent(NodeId(2))
            .handle_peer_announcement(NodeId(p), addr_of(NodeId(p)), NatClass::Cone)
            .unwrap();
        net.agent(NodeId(p))
            .handle_peer_announcement(X, public(7000), NatClass::Cone)
            .unwrap();
        net.punch(X, NodeId(p), NodeId(2)).unwrap();
    }
    net.run_for(ms(20_000));
    assert!(net.agent(X).stats().punch_timeouts + net.agent(X).stats().punch_rejections >= 2);
    assert_eq!(sweep_count(&net), before);
}

#[test]
fn probe_errors_are_typed() {
    let cfg = Config::builder()
        .auto_reclassify(false)
        .max_pending_probes(1)
        .build()
        .unwrap();
    let mut net = lab(cfg, 2, |_| public(7000));
    let now = net.now;
    assert_eq!(
        net.agent(X).probe_reflex(now, NodeId(9)),
        Err(ProbeError::NoSession(NodeId(9)))
    );
    let id = net.agent(X).probe_reflex(now, NodeId(2)).unwrap();
    assert_eq!(
        net.agent(X).probe_reflex(now, NodeId(3)),
        Err(ProbeError::TooManyProbes)
    );
    // Lost answer → timeout after the probe timeout.
    net.filter = Some(Box::new(|_| true));
    net.run_for(ms(5_000));
    assert!(
        net.all_events(X)
            .iter()
            .any(|(t, e)| *t == Instant::from_millis(3_000)
                && *e
                    == Event::ReflexProbed {
                        probe_id: id,
                        peer: NodeId(2),
                        result: Err(ProbeError::Timeout)
                    })
    );
}
