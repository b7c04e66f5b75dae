//! Endpoint behaviour: handshake, transport, timers, clock offset, determinism.
#![allow(missing_docs)]

mod common;

use std::time::Duration;

use common::{Net, addr, pair};
use natrix_proto::Instant;
use natrix_session::{
    DownReason, DropReason, Endpoint, HandshakeError, MAX_PACKET, MAX_PAYLOAD, PacketType,
    SendError, SessionConfig, SessionError, SessionEvent, classify,
};

fn cfg() -> SessionConfig {
    SessionConfig::default()
}

#[test]
fn handshake_then_data_both_ways() {
    let mut net = Net::new();
    let a = net.add(1, "192.0.2.1:4000", cfg(), 11);
    let b = net.add(2, "198.51.100.2:5000", cfg(), 22);
    net.connect(a, b);
    // Queued before the handshake completes.
    assert!(!net.send(a, b, 16, b"early"));
    net.run_for(Duration::from_millis(200));
    assert!(net.up(a, b) && net.up(b, a));

    let ev_a = net.take_events(a);
    let ev_b = net.take_events(b);
    assert!(
        matches!(ev_a[0], SessionEvent::Up { initiator: true, rtt: Some(r), .. } if r == Duration::from_millis(20))
    );
    assert!(matches!(
        ev_b[0],
        SessionEvent::Up {
            initiator: false,
            rtt: None,
            ..
        }
    ));
    assert!(
        ev_a.iter()
            .any(|e| matches!(e, SessionEvent::ClockOffset { .. }))
    );
    assert!(
        ev_b.iter()
            .any(|e| matches!(e, SessionEvent::ClockOffset { .. }))
    );
    assert_eq!(
        net.take_data(b),
        vec![(net.nodes[a].key(), net.nodes[a].addr, 16, b"early".to_vec())]
    );

    assert!(net.send(a, b, 1, b"to b"));
    assert!(net.send(b, a, 255, b"to a"));
    assert!(net.send(b, a, 200, &[]));
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.take_data(b).len(), 1);
    let da = net.take_data(a);
    assert_eq!(da.len(), 2);
    assert_eq!((da[0].2, da[0].3.as_slice()), (255, &b"to a"[..]));
    assert_eq!((da[1].2, da[1].3.len()), (200, 0));

    let sa = net.nodes[a].ep.stats();
    let sb = net.nodes[b].ep.stats();
    assert_eq!((sa.handshakes_initiated, sb.handshakes_accepted), (1, 1));
    assert_eq!((sa.sessions_live, sb.sessions_live), (1, 1));
    assert_eq!(
        sa.decrypt_failures + sb.decrypt_failures + sa.malformed + sb.malformed,
        0
    );
    let info = net.nodes[a].ep.session(&net.nodes[b].key()).unwrap();
    assert_eq!(info.addr, net.nodes[b].addr);
    assert!(info.initiator);
    assert_eq!(
        net.nodes[a]
            .ep
            .peer_by_node_id(net.nodes[b].key().node_id()),
        Some(net.nodes[b].key())
    );
}

#[test]
fn every_packet_type_has_the_demux_size_and_type() {
    let mut net = Net::new();
    let a = net.add(1, "192.0.2.1:4000", cfg(), 11);
    let b = net.add(2, "198.51.100.2:5000", cfg(), 22);
    net.connect(a, b);
    net.run_for(Duration::from_millis(200));
    net.send(a, b, 16, &[7; MAX_PAYLOAD]);
    let kinds: Vec<_> = net
        .log
        .iter()
        .map(|p| (classify(&p.bytes), p.bytes.len()))
        .collect();
    use natrix_session::DatagramKind::Session;
    assert_eq!(kinds[0], (Session(PacketType::HandshakeInit), 144));
    assert_eq!(kinds[1], (Session(PacketType::HandshakeResponse), 108));
    assert!(
        kinds[2..]
            .iter()
            .all(|(k, _)| *k == Session(PacketType::Transport))
    );
    assert_eq!(kinds.last().unwrap().1, MAX_PACKET);
}

#[test]
fn send_errors_are_typed() {
    let mut net = pair(cfg());
    let kb = net.nodes[1].key();
    let mut out = [0u8; MAX_PACKET];
    let now = net.now;
    let ep = &mut net.nodes[0].ep;
    assert_eq!(
        ep.send(now, &kb, 0, b"x", &mut out),
        Err(SendError::ReservedChannel)
    );
    assert_eq!(
        ep.send(now, &kb, 1, &[0; MAX_PAYLOAD + 1], &mut out),
        Err(SendError::PayloadTooLarge {
            len: MAX_PAYLOAD + 1,
            max: MAX_PAYLOAD
        })
    );
    assert_eq!(
        ep.send(now, &kb, 1, b"abc", &mut out[..20]),
        Err(SendError::BufferTooSmall { len: 20, need: 36 })
    );
    let stranger = common::keypair(9).public();
    assert_eq!(
        ep.send(now, &stranger, 1, b"x", &mut out),
        Err(SendError::NoSession)
    );
    let own = ep.public_key();
    assert_eq!(
        ep.connect(now, 0, own, addr("192.0.2.9:1")),
        Err(SessionError::OwnKey)
    );
}

#[test]
fn wrong_public_key_times_out_after_three_attempts() {
    let mut net = Net::new();
    let a = net.add(1, "192.0.2.1:4000", cfg(), 11);
    let b = net.add(2, "198.51.100.2:5000", cfg(), 22);
    let wrong = common::keypair(3).public();
    let t0 = net.now;
    let b_addr = net.nodes[b].addr;
    net.nodes[a]
        .ep
        .connect(t0, common::WALL0, wrong, b_addr)
        .unwrap();
    net.run_for(Duration::from_secs(10));
    // Inits at 0 s, 1 s and 3 s (1 s doubling); give up at 5 s.
    let inits: Vec<_> = net.log.iter().map(|p| p.at - t0).collect();
    assert_eq!(
        inits,
        [
            Duration::ZERO,
            Duration::from_secs(1),
            Duration::from_secs(3)
        ]
    );
    assert_eq!(net.nodes[b].drops, vec![DropReason::Mac1; 3]);
    assert_eq!(net.nodes[b].ep.stats().mac1_failures, 3);
    assert_eq!(net.nodes[b].ep.stats().handshakes_accepted, 0);
    let ev = net.take_events(a);
    assert_eq!(
        ev,
        vec![SessionEvent::HandshakeFailed {
            peer: wrong,
            addr: net.nodes[b].addr,
            error: HandshakeError::Timeout
        }]
    );
    assert!(
        HandshakeError::Timeout
            .to_string()
            .contains("wrong public key")
    );
    assert_eq!(net.nodes[a].ep.stats().handshakes_failed, 1);
    assert_eq!(net.nodes[a].ep.poll_timeout(), None, "nothing left to do");
}

#[test]
fn unreachable_peer_drops_queued_payloads_and_counts_them() {
    let mut net = Net::new();
    let a = net.add(1, "192.0.2.1:4000", cfg(), 11);
    let b = net.add(2, "198.51.100.2:5000", cfg(), 22);
    net.fate = Some(Box::new(|_| None));
    net.connect(a, b);
    for i in 0..40u8 {
        assert!(!net.send(a, b, 16, &[i]));
    }
    net.run_for(Duration::from_secs(6));
    let s = net.nodes[a].ep.stats();
    assert_eq!(
        s.queued_dropped, 40,
        "8 over the queue bound, then 32 on failure"
    );
    assert!(matches!(
        net.take_events(a)[..],
        [SessionEvent::HandshakeFailed {
            error: HandshakeError::Timeout,
            ..
        }]
    ));
}

#[test]
fn dead_session_is_detected_after_30_s_of_silence() {
    let mut net = pair(cfg());
    let t0 = net.now;
    net.fate = Some(Box::new(|_| None));
    net.run_for(Duration::from_secs(60));
    for (i, j) in [(0, 1), (1, 0)] {
        let ev = net.take_events(i);
        let peer = net.nodes[j].key();
        assert_eq!(
            ev,
            vec![SessionEvent::Down {
                peer,
                node: peer.node_id(),
                reason: DownReason::Dead
            }]
        );
        assert!(!net.up(i, j));
        assert_eq!(net.nodes[i].ep.stats().sessions_live, 0);
    }
    // The last authenticated packet arrived just before t0; dead 30 s after it.
    let _ = t0;
}

#[test]
fn dead_detection_time_is_exact() {
    let mut net = pair(cfg());
    let last_rx = net.now;
    net.fate = Some(Box::new(|_| None));
    let deadline = net.nodes[0].ep.poll_timeout().unwrap();
    assert!(deadline <= last_rx + Duration::from_secs(30));
    // Step timer by timer and note when Down appears.
    let mut when = None;
    for _ in 0..20 {
        let t = net.nodes[0].ep.poll_timeout().unwrap();
        net.run_until(t);
        if !net.take_events(0).is_empty() {
            when = Some(t);
            break;
        }
    }
    let when = when.expect("Down reported");
    assert!(
        when > last_rx + Duration::from_secs(29) && when <= last_rx + Duration::from_secs(30),
        "{when:?}"
    );
}

#[test]
fn idle_session_sends_keepalives_every_10_s_and_stays_up() {
    let mut net = pair(cfg());
    let start = net.now;
    let from_a = net.nodes[0].src;
    net.log.clear();
    net.run_for(Duration::from_secs(95));
    let sends: Vec<Duration> = net
        .log
        .iter()
        .filter(|p| p.from == from_a)
        .map(|p| p.at - start)
        .collect();
    assert!(sends.len() >= 8 && sends.len() <= 10, "{sends:?}");
    for w in sends.windows(2) {
        assert!(
            w[1] - w[0] <= Duration::from_secs(10),
            "gap {:?}",
            w[1] - w[0]
        );
        assert!(
            w[1] - w[0] >= Duration::from_millis(9_900),
            "gap {:?}",
            w[1] - w[0]
        );
    }
    assert!(net.up(0, 1) && net.up(1, 0));
    assert!(net.take_events(0).is_empty());
    assert!(
        net.take_data(1).is_empty(),
        "keep-alives never reach the caller"
    );
}

#[test]
fn traffic_postpones_keepalives() {
    let mut net = pair(cfg());
    net.log.clear();
    let from_a = net.nodes[0].src;
    for _ in 0..30 {
        net.send(0, 1, 16, b"tick");
        net.run_for(Duration::from_secs(1));
    }
    // A sent 30 data packets and no keep-alive of its own (it never idled
    // 10 s); its only other packets answer B's idle keep-alives, which are
    // clock pings (one pong each).
    let from_a_count = net.log.iter().filter(|p| p.from == from_a).count();
    let from_b_count = net.log.iter().filter(|p| p.from != from_a).count();
    assert!(from_b_count >= 2, "B idles: a ping every 10 s");
    assert_eq!(from_a_count, 30 + from_b_count);
}

#[test]
fn clock_offset_is_within_half_the_rtt_on_both_sides() {
    for skew in [-3_600_000_i64, -1234, 0, 777, 86_400_000] {
        let mut net = Net::new();
        let a = net.add(1, "192.0.2.1:4000", cfg(), 11);
        let b = net.add(2, "198.51.100.2:5000", cfg(), 22);
        net.nodes[b].skew_ms = skew;
        // Asymmetric paths: 10 ms A→B, 70 ms B→A.
        let a_src = net.nodes[a].src;
        net.fate = Some(Box::new(move |p| {
            Some(Duration::from_millis(if p.from == a_src { 10 } else { 70 }))
        }));
        net.connect(a, b);
        net.run_for(Duration::from_secs(1));
        for (i, sign) in [(a, 1), (b, -1)] {
            let offsets: Vec<(i64, Duration)> = net
                .take_events(i)
                .into_iter()
                .filter_map(|e| match e {
                    SessionEvent::ClockOffset { offset_ms, rtt, .. } => Some((offset_ms, rtt)),
                    _ => None,
                })
                .collect();
            assert_eq!(offsets.len(), 1, "node {i}");
            let (off, rtt) = offsets[0];
            assert_eq!(rtt, Duration::from_millis(80));
            let err = (off - sign * skew).unsigned_abs();
            assert!(
                err <= 40,
                "skew {skew}: node {i} estimated {off} (error {err} ms > rtt/2)"
            );
        }
        let info = net.nodes[a].ep.session(&net.nodes[b].key()).unwrap();
        assert!(info.clock_offset_ms.is_some());
    }
}

fn scripted_run(seed_a: u8) -> Vec<(std::net::SocketAddr, Vec<u8>)> {
    let mut net = Net::new();
    let a = net.add(1, "192.0.2.1:4000", cfg(), seed_a);
    let b = net.add(2, "198.51.100.2:5000", cfg(), 22);
    net.connect(a, b);
    net.send(a, b, 16, b"queued");
    net.run_for(Duration::from_secs(1));
    for i in 0..20u8 {
        net.send(a, b, 16, &[i; 50]);
        net.send(b, a, 17, &[i; 60]);
        net.run_for(Duration::from_millis(300));
    }
    net.run_for(Duration::from_secs(200)); // keep-alives and a rekey
    net.log.into_iter().map(|p| (p.to, p.bytes)).collect()
}

#[test]
fn same_seed_and_inputs_give_byte_identical_output() {
    let one = scripted_run(11);
    let two = scripted_run(11);
    assert!(one.len() > 40);
    assert_eq!(one, two);
    let other = scripted_run(12);
    assert_ne!(one[0], other[0], "another seed gives another ephemeral key");
}

#[test]
fn connect_is_idempotent_and_does_not_move_the_session() {
    let mut net = pair(cfg());
    let kb = net.nodes[1].key();
    let before = net.nodes[0].ep.stats().handshakes_initiated;
    let now = net.now;
    net.nodes[0]
        .ep
        .connect(now, common::WALL0, kb, addr("203.0.113.66:9"))
        .unwrap();
    assert_eq!(net.nodes[0].ep.stats().handshakes_initiated, before);
    assert_eq!(
        net.nodes[0].ep.session(&kb).unwrap().addr,
        net.nodes[1].addr
    );
    assert!(
        net.nodes[0]
            .ep
            .poll_transmit(&mut [0u8; MAX_PACKET])
            .is_none()
    );
}

#[test]
fn close_reports_down_and_forgets_the_peer() {
    let mut net = pair(cfg());
    let kb = net.nodes[1].key();
    let now = net.now;
    net.nodes[0].ep.close(now, &kb);
    assert_eq!(
        net.nodes[0].ep.poll_event(),
        Some(SessionEvent::Down {
            peer: kb,
            node: kb.node_id(),
            reason: DownReason::Closed
        })
    );
    assert!(net.nodes[0].ep.session(&kb).is_none());
    assert_eq!(net.nodes[0].ep.peer_by_node_id(kb.node_id()), None);
    assert_eq!(net.nodes[0].ep.poll_timeout(), None);
    // B's packets on the old session are now unknown to A.
    net.send(1, 0, 16, b"late");
    net.run_for(Duration::from_millis(50));
    assert_eq!(net.nodes[0].drops, vec![DropReason::UnknownIndex]);
    // And A can dial again.
    net.connect(0, 1);
    net.run_for(Duration::from_millis(100));
    assert!(net.up(0, 1));
}

#[test]
fn simultaneous_dial_converges_on_one_session() {
    let mut net = Net::new();
    let a = net.add(1, "192.0.2.1:4000", cfg(), 11);
    let b = net.add(2, "198.51.100.2:5000", cfg(), 22);
    net.connect(a, b);
    net.connect(b, a);
    net.send(a, b, 16, b"from a");
    net.send(b, a, 16, b"from b");
    net.run_for(Duration::from_secs(1));
    assert!(net.up(a, b) && net.up(b, a));
    assert_eq!(net.take_data(a).len(), 1);
    assert_eq!(net.take_data(b).len(), 1);
    for i in [a, b] {
        let ups = net
            .take_events(i)
            .iter()
            .filter(|e| matches!(e, SessionEvent::Up { .. }))
            .count();
        assert_eq!(ups, 1);
    }
    net.run_for(Duration::from_secs(60));
    assert!(net.up(a, b) && net.up(b, a));
    assert_eq!(
        net.nodes[a].ep.stats().decrypt_failures + net.nodes[b].ep.stats().decrypt_failures,
        0
    );
}

#[test]
fn garbage_is_dropped_and_counted_without_panics() {
    let mut net = pair(cfg());
    let mut ep = Endpoint::new(common::keypair(5), cfg(), [5; 32]);
    let from = addr("203.0.113.1:1");
    let now = Instant::from_millis(5);
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xA1],
        vec![0xA1, 0, 0, 1],
        vec![0xA1, 0, 0, 0],
        vec![0xA2; 108],
        vec![0xA4, 0, 0, 0, 1, 2, 3, 4],
        vec![0xA4; 40],
        vec![0xA3, 0, 0, 0, 0, 0, 0, 1],
        [vec![0xA4, 0, 0, 0], vec![0; 2000]].concat(),
    ];
    for c in &cases {
        assert!(matches!(
            ep.handle_datagram(now, 0, from, c),
            natrix_session::Received::Dropped(_)
        ));
        assert!(matches!(
            net.nodes[0].ep.handle_datagram(now, 0, from, c),
            natrix_session::Received::Dropped(_)
        ));
    }
    let s = ep.stats();
    assert_eq!(
        s.malformed + s.unknown_index + s.mac1_failures,
        cases.len() as u64
    );
    assert!(net.up(0, 1));
}

#[test]
fn endpoint_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Endpoint>();
    check::<SessionEvent>();
}

#[test]
fn failed_rekeys_end_the_session_at_reject_after() {
    let mut net = pair(cfg());
    let start = net.now;
    // Every handshake init is lost from now on; transport still flows.
    net.fate = Some(Box::new(|p| {
        (classify(&p.bytes) != natrix_session::DatagramKind::Session(PacketType::HandshakeInit))
            .then_some(Duration::from_millis(10))
    }));
    net.run_for(Duration::from_secs(179));
    assert!(
        net.up(0, 1) && net.up(1, 0),
        "keys still valid before 180 s"
    );
    assert!(net.nodes[0].ep.stats().handshakes_failed >= 2);
    net.run_for(Duration::from_secs(2));
    let kb = net.nodes[1].key();
    assert_eq!(
        net.take_events(0),
        vec![SessionEvent::Down {
            peer: kb,
            node: kb.node_id(),
            reason: DownReason::RekeyFailed
        }]
    );
    assert!(net.now - start >= Duration::from_secs(180));
}

#[test]
fn lost_key_confirmation_is_resent() {
    let mut net = Net::new();
    let a = net.add(1, "192.0.2.1:4000", cfg(), 11);
    let b = net.add(2, "198.51.100.2:5000", cfg(), 22);
    // Drop A's first transport packet (its key confirmation).
    let a_src = net.nodes[a].src;
    let mut dropped = false;
    net.fate = Some(Box::new(move |p| {
        if !dropped
            && p.from == a_src
            && classify(&p.bytes) == natrix_session::DatagramKind::Session(PacketType::Transport)
        {
            dropped = true;
            return None;
        }
        Some(Duration::from_millis(10))
    }));
    net.connect(a, b);
    net.run_for(Duration::from_millis(500));
    assert!(
        net.up(a, b) && !net.up(b, a),
        "B waits for the confirmation"
    );
    net.run_for(Duration::from_secs(1));
    assert!(net.up(b, a), "confirmation re-sent after handshake_retry");
    assert!(net.send(b, a, 16, b"ok"));
    net.run_for(Duration::from_millis(50));
    assert_eq!(net.take_data(a).len(), 1);
}
