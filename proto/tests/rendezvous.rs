//! Rendezvous scenarios on the in-memory harness, and one regression test per
#![allow(missing_docs)]
//! requirement R1–R10 (named after its id).

mod harness;

use std::net::{IpAddr, SocketAddr};

use harness::{Net, Packet, addr_of, ms, quiet, trio};
use natrix_proto::wire::{
    Keepalive, NodeId, PunchAck, PunchIntroduce, PunchReject, PunchRequest, RejectReason,
    RendezvousMessage,
};
use natrix_proto::{
    Agent, Channel, Config, CoordinatorCandidate, Event, Instant, NatClass, PathMethod, PunchStage,
    Role, TraversalError, UnannouncedPeerPolicy,
};

const CONE: NatClass = NatClass::Cone;

fn victim() -> SocketAddr {
    "203.0.113.66:53".parse().unwrap()
}

fn kind_of(p: &Packet) -> Option<u8> {
    match p {
        Packet::Control {
            channel: Channel::Rendezvous,
            bytes,
            ..
        } => bytes.first().copied(),
        _ => None,
    }
}

fn terminal(events: &[Event], punch: u32) -> Vec<Event> {
    events
        .iter()
        .filter(|e| match e {
            Event::PunchSucceeded { punch_id, .. } | Event::PunchFailed { punch_id, .. } => {
                *punch_id == punch
            }
            _ => false,
        })
        .copied()
        .collect()
}

fn failed_with(events: &[Event]) -> Vec<TraversalError> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::PunchFailed { error, .. } => Some(*error),
            _ => None,
        })
        .collect()
}

fn encode(m: RendezvousMessage) -> Vec<u8> {
    let (b, n) = m.to_bytes();
    b[..n].to_vec()
}

// ---------------------------------------------------------------- happy path

#[test]
fn happy_path_both_ends_confirm_and_trains_stop() {
    let (mut net, a, b, r) = trio(quiet(), CONE);
    let id = net.punch(a, b, r).unwrap();
    net.run_for(ms(6_000));

    let ev_a = net.events(a);
    assert_eq!(ev_a.len(), 1);
    let Event::PunchSucceeded {
        peer,
        punch_id,
        role,
        path,
        method,
        elapsed,
    } = ev_a[0]
    else {
        panic!("{ev_a:?}")
    };
    assert_eq!(
        (peer, punch_id, role, path, method),
        (b, id, Role::Requester, addr_of(b), PathMethod::Punched)
    );
    // Request 10 ms, introduce 10 ms, R9 lead from the introduce's send time
    // (half of the 20 ms RTT + 10 ms margin = 20 ms), keep-alive 10 ms.
    // That is the theoretical minimum (30 ms) plus the 10 ms margin.
    assert_eq!(elapsed, ms(40));
    let ev_b = net.events(b);
    assert!(matches!(
        ev_b[..],
        [Event::PunchSucceeded { peer, role: Role::Responder, punch_id: 0, .. }] if peer == a
    ));

    // R10: once both saw a keep-alive and an ack, nothing is pending and the
    // trains stopped: one scheduled keep-alive and one immediate reply each.
    assert_eq!(net.agent(a).pending_punches(), 0);
    assert_eq!(net.agent(b).pending_punches(), 0);
    assert_eq!(net.agent(a).stats().keepalives_sent, 2);
    assert_eq!(net.agent(b).stats().keepalives_sent, 2);
    assert_eq!(net.agent(a).poll_timeout(), None);
    let s = net.agent(a).stats();
    assert_eq!(
        (s.punches_attempted, s.punches_succeeded, s.punches_failed()),
        (1, 1, 0)
    );
    assert_eq!(net.agent(r).stats().requests_mediated, 1);
    assert_eq!(net.agent(r).stats().acks_forwarded, 2);
}

#[test]
fn direct_pair_needs_no_punch_and_symmetric_pair_is_skipped() {
    let (mut net, a, b, r) = trio(quiet(), NatClass::Open);
    let id = net.punch(a, b, r).unwrap();
    net.drain_all();
    assert!(matches!(
        net.events(a)[..],
        [Event::PunchSucceeded { method: PathMethod::Direct, punch_id, path, .. }] if punch_id == id && path == addr_of(b)
    ));
    assert!(net.sent.is_empty());

    let (mut net, a, b, r) = trio(quiet(), NatClass::Symmetric);
    assert_eq!(
        net.punch(a, b, r),
        Err(TraversalError::Skipped {
            local: NatClass::Symmetric,
            remote: NatClass::Symmetric,
            profiles: None,
        })
    );
    assert_eq!(net.agent(a).stats().punches_skipped, 1);
}

#[test]
fn invalid_requests_are_typed_errors() {
    let (mut net, a, b, _r) = trio(quiet(), CONE);
    let now = net.now;
    assert_eq!(
        net.agent(a).request_punch(now, a, b),
        Err(TraversalError::InvalidTarget(a))
    );
    assert_eq!(
        net.agent(a).request_punch(now, b, b),
        Err(TraversalError::InvalidTarget(b))
    );
    assert_eq!(
        net.agent(a).request_punch(now, b, NodeId(99)),
        Err(TraversalError::NoSessionWithCoordinator(NodeId(99)))
    );
    let mut lonely = Agent::new(NodeId(5), "0.0.0.0:1".parse().unwrap(), quiet(), 1);
    lonely
        .handle_session_up(NodeId(6), addr_of(NodeId(6)))
        .unwrap();
    assert_eq!(
        lonely.request_punch(now, NodeId(7), NodeId(6)),
        Err(TraversalError::NoLocalReflex)
    );
}

#[test]
fn no_relay_when_no_coordinator_candidate() {
    let (mut net, a, b, r) = trio(quiet(), CONE);
    assert_eq!(
        net.agent(a).select_coordinator(b, &[]),
        Err(TraversalError::NoRelay)
    );
    let only_ends = [
        CoordinatorCandidate {
            id: a,
            relay_capable: true,
            load: 0,
        },
        CoordinatorCandidate {
            id: b,
            relay_capable: true,
            load: 0,
        },
    ];
    assert_eq!(
        net.agent(a).select_coordinator(b, &only_ends),
        Err(TraversalError::NoRelay)
    );
    assert_eq!(net.agent(a).stats().no_relay_skips, 2);
    let with_r = [CoordinatorCandidate {
        id: r,
        relay_capable: false,
        load: 3,
    }];
    assert_eq!(net.agent(a).select_coordinator(b, &with_r), Ok(r));
}

// ---------------------------------------------------------------- R1

#[test]
fn r1_reject_self_reflex_ip_mismatch() {
    let (mut net, a, b, r) = trio(quiet(), CONE);
    // A claims a victim's address as its own reflex.
    net.agent(a).set_local_classification(CONE, victim());
    let id = net.punch(a, b, r).unwrap();
    net.run_for(ms(6_000));
    assert_eq!(
        net.sent_to_ip(victim().ip()),
        0,
        "nothing may reach the victim"
    );
    let ev = net.events(a);
    assert_eq!(terminal(&ev, id).len(), 1);
    assert!(
        matches!(
            ev[..],
            [Event::PunchFailed { error: TraversalError::Rejected(RejectReason::ReflexMismatch), elapsed, .. }]
                if elapsed == ms(20)
        ),
        "typed and immediate, not a timeout: {ev:?}"
    );
    assert!(net.events(b).is_empty());
    assert_eq!(net.agent(r).stats().requests_mediated, 0);
}

#[test]
fn r1_ipv4_mapped_reflex_matches_ipv4_session() {
    let (mut net, a, b, r) = trio(quiet(), CONE);
    let a_addr = addr_of(a);
    let IpAddr::V4(v4) = a_addr.ip() else {
        unreachable!()
    };
    let mapped = SocketAddr::new(v4.to_ipv6_mapped().into(), 50_000);
    let req = PunchRequest {
        target: b,
        punch_id: std::num::NonZeroU32::new(9),
        self_reflex: mapped,
    };
    net.inject_control(
        a,
        r,
        Channel::Rendezvous,
        &encode(RendezvousMessage::Request(req)),
    );
    net.run_for(ms(15));
    let s = net.agent(r).stats();
    assert_eq!((s.requests_mediated, s.requests_rejected), (1, 0));
}

// ---------------------------------------------------------------- R2

#[test]
fn r2_wrong_sender_keepalive_does_not_consume_pending_punch() {
    let (mut net, a, b, r) = trio(quiet(), CONE);
    // Drop B's real keep-alives so only the injected ones reach A.
    net.filter = Some(Box::new(
        move |p| matches!(p, Packet::Datagram { dst, .. } if *dst == addr_of(a)),
    ));
    let id = net.punch(a, b, r).unwrap();
    net.run_for(ms(30)); // A is training now.
    let token = natrix_proto::rendezvous::keepalive_token(a, b, harness::WALL_BASE_MS + 30);
    net.filter = None;
    // Right address and token, wrong sender id.
    let forged = Keepalive {
        sender: NodeId(77),
        punch_id: token,
    }
    .to_bytes();
    net.inject_datagram(addr_of(b), addr_of(a), &forged, ms(1));
    net.run_for(ms(2));
    assert!(net.events(a).is_empty());
    assert_eq!(
        net.agent(a).pending_punches(),
        1,
        "the punch was not consumed"
    );
    // A valid one still confirms the punch.
    let valid = Keepalive {
        sender: b,
        punch_id: token,
    }
    .to_bytes();
    net.inject_datagram(addr_of(b), addr_of(a), &valid, ms(1));
    net.run_for(ms(2));
    assert!(
        matches!(net.events(a)[..], [Event::PunchSucceeded { punch_id, .. }] if punch_id == id)
    );
}

// ---------------------------------------------------------------- R3

/// A coordinator whose introduce to A carries `fire_at_ms(wall)` (a malicious
/// or broken R). Returns at virtual time 10 ms, when R has the request.
fn run_with_fire_time(fire_at_ms: impl Fn(u64) -> u64) -> (Net, NodeId, u32) {
    let (mut net, a, b, r) = trio(quiet(), CONE);
    let intro = PunchIntroduce {
        peer: b,
        peer_reflex: addr_of(b),
        fire_at_ms: fire_at_ms(harness::WALL_BASE_MS + 10),
    };
    let ours = encode(RendezvousMessage::Introduce(intro));
    let theirs = ours.clone();
    // R's honest introduces are replaced by ours.
    net.filter = Some(Box::new(move |p| {
        kind_of(p) == Some(0x02) && !matches!(p, Packet::Control { bytes, .. } if *bytes == theirs)
    }));
    let id = net.punch(a, b, r).unwrap();
    net.run_for(ms(10));
    net.inject_control(r, a, Channel::Rendezvous, &ours);
    (net, a, id)
}

#[test]
fn r3_far_future_and_max_fire_time_never_park_beyond_deadline() {
    for fire in [|_| u64::MAX, |w| w + 3_600_000] as [fn(u64) -> u64; 2] {
        let (mut net, a, id) = run_with_fire_time(fire);
        net.run_for(ms(11));
        let deadline = Instant::ZERO + quiet().punch_deadline();
        assert!(net.agent(a).poll_timeout().is_some_and(|t| t <= deadline));
        net.run_for(ms(10_000));
        assert!(net.sent.iter().all(|s| s.at <= deadline + ms(250)));
        let ev = net.events(a);
        assert_eq!(terminal(&ev, id).len(), 1);
        assert_eq!(
            failed_with(&ev),
            [TraversalError::DeadlinePassed {
                stage: PunchStage::Keepalive,
                deadline: ms(5_000)
            }]
        );
        assert_eq!(net.punch_event_times(a)[0], deadline);
        assert_eq!(net.agent(a).pending_punches(), 0);
    }
}

#[test]
fn r3_past_fire_time_fires_at_once() {
    let (mut net, a, _id) = run_with_fire_time(|_| 0);
    net.run_for(ms(11));
    let first = net
        .sent
        .iter()
        .find(|s| s.src == addr_of(a))
        .expect("a keep-alive");
    assert_eq!(
        first.at,
        Instant::from_millis(20),
        "sent on arrival of the introduce"
    );
}

// ---------------------------------------------------------------- R4

#[test]
fn r4_unsolicited_introduce_with_victim_reflex_sends_nothing() {
    let (mut net, a, b, m) = trio(quiet(), CONE);
    // M (an authenticated peer of B) names A but points at a victim.
    let intro = PunchIntroduce {
        peer: a,
        peer_reflex: victim(),
        fire_at_ms: net.wall_ms(),
    };
    net.inject_control(
        m,
        b,
        Channel::Rendezvous,
        &encode(RendezvousMessage::Introduce(intro)),
    );
    // And names a peer nobody announced (default policy: drop).
    let intro = PunchIntroduce {
        peer: NodeId(50),
        peer_reflex: victim(),
        fire_at_ms: net.wall_ms(),
    };
    net.inject_control(
        m,
        b,
        Channel::Rendezvous,
        &encode(RendezvousMessage::Introduce(intro)),
    );
    net.run_for(ms(10_000));
    assert_eq!(net.sent_to_ip(victim().ip()), 0);
    assert_eq!(net.agent(b).stats().introduces_dropped_reflection, 2);
    assert_eq!(net.agent(b).pending_punches(), 0);
}

#[test]
fn r4_unannounced_peer_policy_admit_runs_a_train() {
    let cfg = Config::builder()
        .unannounced_peer_policy(UnannouncedPeerPolicy::Admit)
        .build()
        .unwrap();
    let (mut net, _a, b, m) = trio(cfg, CONE);
    let target: SocketAddr = "198.51.100.50:4050".parse().unwrap();
    let intro = PunchIntroduce {
        peer: NodeId(50),
        peer_reflex: target,
        fire_at_ms: net.wall_ms(),
    };
    net.inject_control(
        m,
        b,
        Channel::Rendezvous,
        &encode(RendezvousMessage::Introduce(intro)),
    );
    net.run_for(ms(100));
    assert_eq!(net.agent(b).stats().responder_trains, 1);
    assert!(net.sent_to_ip(target.ip()) > 0);
}

// ---------------------------------------------------------------- R5

#[test]
fn r5_coordinator_budget_rejects_then_recovers_after_window() {
    let (mut net, a, b, r) = trio(quiet(), CONE);
    let req = |id: u32| {
        encode(RendezvousMessage::Request(PunchRequest {
            target: b,
            punch_id: std::num::NonZeroU32::new(id),
            self_reflex: addr_of(a),
        }))
    };
    for id in 1..=5 {
        net.inject_control(a, r, Channel::Rendezvous, &req(id));
    }
    net.run_for(ms(15));
    let s = net.agent(r).stats();
    assert_eq!((s.requests_mediated, s.requests_rejected), (4, 1));
    net.run_for(ms(10_000));
    net.inject_control(a, r, Channel::Rendezvous, &req(6));
    net.run_for(ms(15));
    assert_eq!(
        net.agent(r).stats().requests_mediated,
        5,
        "budget recovered after the window"
    );
}

#[test]
fn r5_rate_limit_reaches_requester_as_typed_error() {
    let (mut net, a, b, r) = trio(quiet(), CONE);
    for _ in 0..4 {
        net.punch(a, b, r).unwrap();
        net.run_for(ms(100));
    }
    let id = net.punch(a, b, r).unwrap();
    net.run_for(ms(100));
    let ev = terminal(&net.events(a), id);
    assert!(
        matches!(
            ev[..],
            [Event::PunchFailed { error: TraversalError::Rejected(RejectReason::RateLimited), elapsed, .. }] if elapsed == ms(20)
        ),
        "{ev:?}"
    );
    let s = net.agent(a).stats();
    assert_eq!(
        (s.punches_succeeded, s.punch_rejections, s.relay_fallbacks),
        (4, 1, 1)
    );
}

#[test]
fn r5_every_rejection_reason_is_typed_and_immediate() {
    // No session with the target.
    let (mut net, a, b, r) = trio(quiet(), CONE);
    net.agent(r).handle_session_down(Instant::ZERO, b);
    net.punch(a, b, r).unwrap();
    net.run_for(ms(25));
    assert_eq!(
        failed_with(&net.events(a)),
        [TraversalError::Rejected(RejectReason::NoSessionWithTarget)]
    );

    // No reflex known for the target.
    let mut net = Net::new();
    let (a, b, r) = (
        net.add(1, quiet(), 1),
        net.add(2, quiet(), 2),
        net.add(3, quiet(), 3),
    );
    net.connect_all(&[a, b, r]);
    net.agent(a).set_local_classification(CONE, addr_of(a));
    net.agent(a)
        .handle_peer_announcement(b, addr_of(b), CONE)
        .unwrap();
    net.punch(a, b, r).unwrap();
    net.run_for(ms(25));
    assert_eq!(
        failed_with(&net.events(a)),
        [TraversalError::Rejected(RejectReason::UnknownTargetReflex)]
    );

    // An unspecified reason byte is still a reject.
    let (mut net, a, b, r) = trio(quiet(), CONE);
    net.filter = Some(Box::new(|p| kind_of(p) == Some(0x01)));
    let id = net.punch(a, b, r).unwrap();
    let rej = PunchReject {
        target: b,
        punch_id: id,
        reason: RejectReason::from_byte(0x7F),
    };
    net.inject_control(
        r,
        a,
        Channel::Rendezvous,
        &encode(RendezvousMessage::Reject(rej)),
    );
    net.run_for(ms(15));
    assert_eq!(
        failed_with(&net.events(a)),
        [TraversalError::Rejected(RejectReason::Unspecified(0x7F))]
    );
}

#[test]
fn r5_responder_budgets_per_introducer_and_global() {
    let (mut net, _a, b, m) = trio(quiet(), CONE);
    // 20 announced peers, each introduced to B by M.
    for p in 100..120u64 {
        let id = NodeId(p);
        net.agent(b)
            .handle_peer_announcement(id, addr_of(id), CONE)
            .unwrap();
        let intro = PunchIntroduce {
            peer: id,
            peer_reflex: addr_of(id),
            fire_at_ms: net.wall_ms() + 50,
        };
        net.inject_control(
            m,
            b,
            Channel::Rendezvous,
            &encode(RendezvousMessage::Introduce(intro)),
        );
    }
    net.run_for(ms(15));
    let s = net.agent(b).stats();
    assert_eq!((s.responder_trains, s.introduces_dropped_budget), (4, 16));

    // Several introducers: the global ceiling of 8 concurrent trains holds.
    let mut net2 = Net::new();
    let b = net2.add(2, quiet(), 2);
    let introducers: Vec<_> = (10..15).map(|i| net2.add(i, quiet(), i)).collect();
    let mut all = introducers.clone();
    all.push(b);
    net2.connect_all(&all);
    for (k, &m) in introducers.iter().enumerate() {
        for j in 0..3u64 {
            let id = NodeId(200 + 10 * k as u64 + j);
            net2.agent(b)
                .handle_peer_announcement(id, addr_of(id), CONE)
                .unwrap();
            let intro = PunchIntroduce {
                peer: id,
                peer_reflex: addr_of(id),
                fire_at_ms: harness::WALL_BASE_MS,
            };
            net2.inject_control(
                m,
                b,
                Channel::Rendezvous,
                &encode(RendezvousMessage::Introduce(intro)),
            );
        }
    }
    net2.run_for(ms(15));
    assert_eq!(net2.agent(b).pending_punches(), 8);
    assert_eq!(net2.agent(b).stats().introduces_dropped_budget, 7);
    // Budgets recover: after the trains end and the window passes, new ones start.
    net2.run_for(ms(11_000));
    assert_eq!(net2.agent(b).pending_punches(), 0);
}

#[test]
fn r5_budget_memory_is_bounded_for_100k_requesters() {
    let cfg = quiet();
    let cap = cfg.budget_table_capacity() as usize;
    let mut r = Agent::new(NodeId(1), addr_of(NodeId(1)), cfg, 5);
    for i in 0..100_000u64 {
        let from = NodeId(1_000_000 + i);
        let addr = SocketAddr::new([10, (i >> 16) as u8, (i >> 8) as u8, i as u8].into(), 9);
        let req = PunchRequest {
            target: NodeId(2),
            punch_id: None,
            self_reflex: addr,
        };
        let now = Instant::from_millis(i / 10);
        r.handle_control(
            now,
            0,
            from,
            addr,
            Channel::Rendezvous,
            &encode(RendezvousMessage::Request(req)),
        )
        .unwrap();
        while r.poll_transmit().is_some() {}
        assert!(r.budget_entries().0 <= cap);
    }
    assert_eq!(r.budget_entries().0, cap);
    assert_eq!(r.stats().requests_rejected, 100_000);
}

// ---------------------------------------------------------------- R6

#[test]
fn r6_stale_reject_is_ignored() {
    let (mut net, a, b, r) = trio(quiet(), CONE);
    net.filter = Some(Box::new(|p| kind_of(p) == Some(0x01)));
    let old = net.punch(a, b, r).unwrap();
    let new = net.punch(a, b, r).unwrap();
    assert_ne!(old, new);
    net.filter = None;
    // A late reject for the old request, and one from the wrong coordinator.
    let late = PunchReject {
        target: b,
        punch_id: old,
        reason: RejectReason::RateLimited,
    };
    net.inject_control(
        r,
        a,
        Channel::Rendezvous,
        &encode(RendezvousMessage::Reject(late)),
    );
    let wrong = PunchReject {
        target: b,
        punch_id: new,
        reason: RejectReason::RateLimited,
    };
    net.inject_control(
        b,
        a,
        Channel::Rendezvous,
        &encode(RendezvousMessage::Reject(wrong)),
    );
    net.run_for(ms(15));
    assert_eq!(net.agent(a).stats().stale_rejects_ignored, 2);
    assert_eq!(net.agent(a).pending_punches(), 1);
    assert_eq!(terminal(&net.events(a), new), []);
    assert_eq!(
        failed_with(&terminal(&net.events(a), old)),
        [TraversalError::Superseded]
    );
}

// ---------------------------------------------------------------- R7

#[test]
fn r7_ack_forwarded_only_from_authenticated_sender_for_mediated_pair() {
    let (mut net, a, b, r) = trio(quiet(), CONE);
    let ack = |from, to| {
        encode(RendezvousMessage::Ack(PunchAck {
            from_peer: from,
            to_peer: to,
            punch_id: 0,
        }))
    };
    // Never mediated.
    net.inject_control(a, r, Channel::Rendezvous, &ack(a, b));
    net.run_for(ms(15));
    assert_eq!(net.agent(r).stats().acks_dropped, 1);
    // Mediate, then B forges an ack claiming to be from A.
    net.punch(a, b, r).unwrap();
    net.run_for(ms(12));
    net.inject_control(b, r, Channel::Rendezvous, &ack(a, b));
    net.run_for(ms(10));
    assert_eq!(net.agent(r).stats().acks_dropped, 2);
    assert_eq!(net.agent(r).stats().acks_forwarded, 0);
    net.run_for(ms(6_000));
    // The real acks went through once each; a replay is dropped.
    assert_eq!(net.agent(r).stats().acks_forwarded, 2);
    net.inject_control(a, r, Channel::Rendezvous, &ack(a, b));
    net.run_for(ms(15));
    assert_eq!(net.agent(r).stats().acks_forwarded, 2);
    // Final recipient: an ack for a punch it does not have is dropped.
    let before = net.agent(b).stats().acks_dropped;
    net.inject_control(r, b, Channel::Rendezvous, &ack(NodeId(42), b));
    net.run_for(ms(15));
    assert_eq!(net.agent(b).stats().acks_dropped, before + 1);
}

// ---------------------------------------------------------------- R8

/// A alone, training toward B at `addr_of(b)` after a solicited introduce.
fn training_requester() -> (Agent, NodeId, u32, u64) {
    let (a, b, r) = (NodeId(1), NodeId(2), NodeId(3));
    let mut ag = Agent::new(a, addr_of(a), quiet(), 1);
    ag.handle_session_up(r, addr_of(r)).unwrap();
    ag.set_local_classification(CONE, addr_of(a));
    let id = ag.request_punch(Instant::ZERO, b, r).unwrap();
    let fire = 1_000;
    let intro = PunchIntroduce {
        peer: b,
        peer_reflex: addr_of(b),
        fire_at_ms: fire,
    };
    ag.handle_control(
        Instant::ZERO,
        900,
        r,
        addr_of(r),
        Channel::Rendezvous,
        &intro.to_bytes(),
    )
    .unwrap();
    while ag.poll_transmit().is_some() {}
    while ag.poll_event().is_some() {}
    (ag, b, id, fire)
}

#[test]
fn r8_token_keepalive_from_other_port_learns_peer_reflexive_path() {
    let (mut ag, b, _id, fire) = training_requester();
    let token = natrix_proto::rendezvous::keepalive_token(NodeId(1), b, fire);
    let other_port = SocketAddr::new(addr_of(b).ip(), 61_000);
    let now = Instant::from_millis(50);
    // Wrong token from the right IP: dropped, not consumed.
    let _ = ag.handle_datagram(
        now,
        addr_of(NodeId(1)),
        other_port,
        &Keepalive {
            sender: b,
            punch_id: token ^ 1,
        }
        .to_bytes(),
    );
    // Right token from another IP: dropped.
    let elsewhere: SocketAddr = "198.51.100.99:61000".parse().unwrap();
    let _ = ag.handle_datagram(
        now,
        addr_of(NodeId(1)),
        elsewhere,
        &Keepalive {
            sender: b,
            punch_id: token,
        }
        .to_bytes(),
    );
    assert!(ag.poll_event().is_none());
    assert_eq!(ag.stats().keepalives_dropped, 2);
    // Right token from another port of the introduced IP: accepted, path learned.
    let _ = ag.handle_datagram(
        now,
        addr_of(NodeId(1)),
        other_port,
        &Keepalive {
            sender: b,
            punch_id: token,
        }
        .to_bytes(),
    );
    assert!(
        matches!(ag.poll_event(), Some(Event::PunchSucceeded { path, .. }) if path == other_port)
    );
    // The immediate reply and the rest of the train go to the learned path.
    let mut sent_to = Vec::new();
    while let Some(t) = ag.poll_transmit() {
        if let natrix_proto::Transmit::Datagram { to, .. } = t {
            sent_to.push(to);
        }
    }
    assert_eq!(sent_to, [other_port]);
    ag.handle_timeout(Instant::from_millis(400));
    assert!(
        matches!(ag.poll_transmit(), Some(natrix_proto::Transmit::Datagram { to, .. }) if to == other_port)
    );
}

#[test]
fn r8_token_zero_accepted_only_from_exact_introduced_address() {
    let (mut ag, b, id, _) = training_requester();
    let me = addr_of(NodeId(1));
    let now = Instant::from_millis(50);
    let v1 = Keepalive {
        sender: b,
        punch_id: 0,
    }
    .to_bytes();
    let _ = ag.handle_datagram(now, me, SocketAddr::new(addr_of(b).ip(), 61_000), &v1);
    assert!(ag.poll_event().is_none());
    // An older (v1) peer: token 0 from exactly the introduced address works.
    let _ = ag.handle_datagram(now, me, addr_of(b), &v1);
    assert!(
        matches!(ag.poll_event(), Some(Event::PunchSucceeded { punch_id, path, .. }) if punch_id == id && path == addr_of(b))
    );
}

// ---------------------------------------------------------------- R9

/// The lead R chose: the introduce's `fire_at_ms` minus R's wall clock when
/// it sent it.
fn introduced_lead(net: &mut Net, a: NodeId, b: NodeId, r: NodeId) -> u64 {
    net.punch(a, b, r).unwrap();
    net.run_for(ms(10));
    let (at, _, _, _, bytes) = net
        .controls
        .iter()
        .find(|(_, from, _, _, bytes)| *from == r && bytes[0] == 0x02)
        .expect("an introduce");
    let Ok(RendezvousMessage::Introduce(i)) = RendezvousMessage::decode(bytes) else {
        panic!("not an introduce")
    };
    i.fire_at_ms - (harness::WALL_BASE_MS + at.as_nanos() / 1_000_000)
}

#[test]
fn r9_adaptive_fire_lead_from_rtt_estimates() {
    // RTTs 20 ms (A) and 120 ms (B): half the larger plus the 10 ms margin.
    let (mut net, a, b, r) = trio(quiet(), CONE);
    net.agent(r).handle_rtt(b, ms(120)).unwrap();
    assert_eq!(introduced_lead(&mut net, a, b, r), 70);
    // Unknown RTT: the default 500 ms.
    let (mut net, a, b, r) = trio(quiet(), CONE);
    net.agent(r).handle_session_down(Instant::ZERO, b);
    net.agent(r).handle_session_up(b, addr_of(b)).unwrap();
    assert_eq!(introduced_lead(&mut net, a, b, r), 500);
    // Never more than the default, however slow the links.
    let (mut net, a, b, r) = trio(quiet(), CONE);
    net.agent(r).handle_rtt(b, ms(5_000)).unwrap();
    assert_eq!(introduced_lead(&mut net, a, b, r), 500);
}

// ---------------------------------------------------------------- R10

#[test]
fn r10_train_runs_to_deadline_without_ack_and_stops_when_both_done() {
    // Acks lost: both confirm, but neither knows the other did, so the trains
    // run to the deadline (and then end silently: success was already reported).
    let (mut net, a, b, r) = trio(quiet(), CONE);
    net.filter = Some(Box::new(|p| kind_of(p) == Some(0x03)));
    net.punch(a, b, r).unwrap();
    net.run_for(ms(10_000));
    assert_eq!(net.events(a).len(), 1);
    assert!(matches!(net.events(a)[0], Event::PunchSucceeded { .. }));
    let full_train = net.agent(a).stats().keepalives_sent;
    assert_eq!(net.agent(a).pending_punches(), 0);
    // With acks (the happy path) the same punch sends 2.
    assert!(full_train > 10, "{full_train}");
}

// ---------------------------------------------------------------- timeouts

#[test]
fn introduce_timeout_fails_at_the_deadline() {
    let (mut net, a, b, r) = trio(quiet(), CONE);
    net.filter = Some(Box::new(|p| kind_of(p) == Some(0x02)));
    let id = net.punch(a, b, r).unwrap();
    net.run_for(ms(10_000));
    let ev = terminal(&net.events(a), id);
    assert_eq!(
        failed_with(&ev),
        [TraversalError::DeadlinePassed {
            stage: PunchStage::Introduce,
            deadline: ms(5_000)
        }]
    );
    assert_eq!(net.punch_event_times(a)[0], Instant::from_millis(5_000));
    assert_eq!(net.agent(a).stats().punch_timeouts, 1);
}

#[test]
fn keepalive_timeout_when_datagrams_are_lost() {
    let (mut net, a, b, r) = trio(quiet(), CONE);
    net.filter = Some(Box::new(|p| matches!(p, Packet::Datagram { .. })));
    let id = net.punch(a, b, r).unwrap();
    net.run_for(ms(10_000));
    assert_eq!(
        failed_with(&terminal(&net.events(a), id)),
        [TraversalError::DeadlinePassed {
            stage: PunchStage::Keepalive,
            deadline: ms(5_000)
        }]
    );
    assert!(matches!(
        net.events(b)[..],
        [Event::PunchFailed {
            role: Role::Responder,
            ..
        }]
    ));
}

#[test]
fn coordinator_session_down_fails_waiting_punch_at_once() {
    let (mut net, a, b, r) = trio(quiet(), CONE);
    net.filter = Some(Box::new(|_| true));
    let id = net.punch(a, b, r).unwrap();
    net.agent(a).handle_session_down(Instant::ZERO, r);
    net.drain_all();
    assert_eq!(
        failed_with(&terminal(&net.events(a), id)),
        [TraversalError::NoSessionWithCoordinator(r)]
    );
    assert!(!net.agent(a).cancel_punch(Instant::ZERO, b));
}

#[test]
fn cancel_ends_the_punch_with_one_event() {
    let (mut net, a, b, r) = trio(quiet(), CONE);
    let id = net.punch(a, b, r).unwrap();
    net.run_for(ms(25));
    let now = net.now;
    assert!(net.agent(a).cancel_punch(now, b));
    net.run_for(ms(10_000));
    assert_eq!(
        failed_with(&terminal(&net.events(a), id)),
        [TraversalError::Cancelled]
    );
    assert_eq!(net.agent(a).stats().punches_cancelled, 1);
}

// ---------------------------------------------------------------- compatibility

#[test]
fn v1_request_is_mediated_and_v1_keepalives_confirm() {
    let (mut net, a, b, r) = trio(quiet(), CONE);
    let v1 = PunchRequest {
        target: b,
        punch_id: None,
        self_reflex: addr_of(a),
    };
    let bytes = encode(RendezvousMessage::Request(v1));
    assert_eq!(bytes.len(), 28);
    // A plays an older peer: its keep-alives carry token 0 (rewritten in flight).
    net.inject_control(a, r, Channel::Rendezvous, &bytes);
    net.run_for(ms(15));
    assert_eq!(net.agent(r).stats().requests_mediated, 1);
    // B got an unsolicited introduce and trains toward A; an old A answers with
    // token-0 keep-alives from exactly its announced address.
    net.run_for(ms(30));
    let ka = Keepalive {
        sender: a,
        punch_id: 0,
    }
    .to_bytes();
    net.inject_datagram(addr_of(a), addr_of(b), &ka, ms(1));
    net.run_for(ms(5));
    assert!(
        matches!(net.events(b)[..], [Event::PunchSucceeded { peer, role: Role::Responder, .. }] if peer == a)
    );
}

// ---------------------------------------------------------------- determinism

fn transcript(seed_shift: u64) -> String {
    let mut net = Net::new();
    let ids: Vec<_> = (1..=4)
        .map(|i| net.add(i, quiet(), i + seed_shift))
        .collect();
    net.set_latency(ids[0], ids[2], ms(35));
    net.connect_all(&ids);
    net.announce_all(&ids, CONE);
    net.punch(ids[0], ids[1], ids[2]).unwrap();
    net.punch(ids[3], ids[1], ids[2]).unwrap();
    net.run_for(ms(6_000));
    net.transcript
}

#[test]
fn same_seed_gives_identical_transcript() {
    let t = transcript(0);
    assert!(t.contains("PunchSucceeded"));
    assert_eq!(t, transcript(0));
    assert_ne!(t, transcript(1000), "punch ids come from the seed");
}

#[test]
fn back_to_back_punches_with_the_same_peer_all_succeed() {
    // B never gets its acks, so each of its finished punches lingers (R10 is
    // not satisfied) until the deadline; a new introduce for the same peer
    // must still start a new train instead of being dropped as a duplicate.
    let cfg = Config::builder()
        .auto_reclassify(false)
        .coordinator_requests_per_window(100)
        .responder_trains_per_introducer(100)
        .build()
        .unwrap();
    let (mut net, a, b, r) = trio(cfg, CONE);
    net.filter = Some(Box::new(move |p| {
        kind_of(p) == Some(0x03) && matches!(p, Packet::Control { to, .. } if *to == b)
    }));
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(net.punch(a, b, r).unwrap());
        net.run_for(ms(200));
    }
    let ev = net.events(a);
    for id in ids {
        assert!(
            matches!(terminal(&ev, id)[..], [Event::PunchSucceeded { .. }]),
            "{ev:?}"
        );
    }
    assert_eq!(net.agent(b).stats().responder_successes, 3);
}

#[test]
fn r7_late_ack_of_an_earlier_punch_does_not_end_a_new_train() {
    // An ack can only follow a keep-alive this side sent: one that arrives
    // before this train sent anything belongs to an earlier punch.
    let (mut ag, b, id, _) = training_requester();
    let stale = PunchAck {
        from_peer: b,
        to_peer: NodeId(1),
        punch_id: id,
    };
    ag.handle_control(
        Instant::from_millis(10),
        910,
        NodeId(3),
        addr_of(NodeId(3)),
        Channel::Rendezvous,
        &stale.to_bytes(),
    )
    .unwrap();
    assert_eq!(ag.stats().acks_dropped, 1);
    assert_eq!(ag.stats().acks_accepted, 0);
    // After the train's first keep-alive, the same ack is accepted.
    ag.handle_timeout(Instant::from_millis(100));
    ag.handle_control(
        Instant::from_millis(101),
        1_001,
        NodeId(3),
        addr_of(NodeId(3)),
        Channel::Rendezvous,
        &stale.to_bytes(),
    )
    .unwrap();
    assert_eq!(ag.stats().acks_accepted, 1);
}

#[test]
fn r7_coordinator_drops_a_requester_ack_of_an_earlier_punch() {
    let (mut net, a, b, r) = trio(quiet(), CONE);
    net.filter = Some(Box::new(|p| kind_of(p) == Some(0x03)));
    let first = net.punch(a, b, r).unwrap();
    net.run_for(ms(100));
    net.punch(a, b, r).unwrap();
    net.run_for(ms(15));
    net.filter = None;
    // A's ack for its first punch reaches R after R mediated the second one.
    let stale = PunchAck {
        from_peer: a,
        to_peer: b,
        punch_id: first,
    };
    net.inject_control(
        a,
        r,
        Channel::Rendezvous,
        &encode(RendezvousMessage::Ack(stale)),
    );
    net.run_for(ms(12));
    assert_eq!(net.agent(r).stats().acks_forwarded, 0);
}

#[test]
fn a_new_request_from_the_same_pair_replaces_the_responders_unfinished_punch() {
    // B is still training for A's first punch (its keep-alives never arrive)
    // when A asks again: the coordinator's newer introduce replaces it.
    let cfg = Config::builder()
        .auto_reclassify(false)
        .coordinator_requests_per_window(100)
        .build()
        .unwrap();
    let (mut net, a, b, r) = trio(cfg, CONE);
    net.filter = Some(Box::new(|p| matches!(p, Packet::Datagram { .. })));
    net.punch(a, b, r).unwrap();
    net.run_for(ms(100));
    net.filter = None;
    let second = net.punch(a, b, r).unwrap();
    net.run_for(ms(200));
    assert!(matches!(
        terminal(&net.events(a), second)[..],
        [Event::PunchSucceeded { .. }]
    ));
    let b_events = net.events(b);
    assert!(
        matches!(
            b_events[..],
            [
                Event::PunchFailed {
                    error: TraversalError::Superseded,
                    role: Role::Responder,
                    ..
                },
                Event::PunchSucceeded {
                    role: Role::Responder,
                    ..
                }
            ]
        ),
        "{b_events:?}"
    );
}
