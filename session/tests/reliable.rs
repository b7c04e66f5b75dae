//! Reliable delivery (`Endpoint::send_reliable`): exactly-once delivery under
//! loss, reordering and duplication; retransmission stops once acknowledged;
//! expiry; the in-flight bound; rekeys; determinism.
#![allow(missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Net, pair};
use natrix_proto::Instant;
use natrix_session::{MAX_RELIABLE_PAYLOAD, SendError, SessionConfig, SessionEvent, SessionStats};
use proptest::prelude::*;

/// splitmix64: the network's own deterministic randomness.
fn mix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `loss_pct` % loss, 5..=5+`jitter_ms` ms delay (reorders), `dup_pct` %
/// duplication (the copy with its own random delay).
fn impair(net: &mut Net, seed: u64, loss_pct: u64, jitter_ms: u64, dup_pct: u64) {
    let mut state = seed;
    net.fate = Some(Box::new(move |_| {
        if mix(&mut state) % 100 < loss_pct {
            None
        } else {
            Some(Duration::from_millis(5 + mix(&mut state) % (jitter_ms + 1)))
        }
    }));
    let mut state = seed ^ 0xD0D0;
    net.dup = Some(Box::new(move |_| {
        (mix(&mut state) % 100 < dup_pct)
            .then(|| Duration::from_millis(5 + mix(&mut state) % (jitter_ms + 1)))
    }));
}

fn stats(net: &Net, i: usize) -> SessionStats {
    net.nodes[i].ep.stats()
}

/// Payloads received by `i` on `channel`, with how often each arrived.
fn received(net: &mut Net, i: usize, channel: u8) -> BTreeMap<Vec<u8>, usize> {
    let mut m = BTreeMap::new();
    for (_, _, ch, payload) in net.take_data(i) {
        if ch == channel {
            *m.entry(payload).or_insert(0) += 1;
        }
    }
    m
}

fn message(dir: u8, i: u32) -> Vec<u8> {
    let mut v = vec![dir];
    v.extend_from_slice(&i.to_be_bytes());
    // Sizes vary from 5 bytes up to the maximum.
    v.resize(5 + (i as usize * 37) % (MAX_RELIABLE_PAYLOAD - 4), 0xAB);
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Both directions at once, 30 % loss, up to 60 ms of reordering, 10 %
    /// duplication: every message arrives exactly once, every message is
    /// acknowledged, and then the retransmissions stop.
    #[test]
    fn every_message_is_delivered_exactly_once(
        seed in any::<u64>(),
        n in 1u32..80,
        jitter_ms in 0u64..60,
    ) {
        let config = SessionConfig {
            // Long enough that 30 % loss never exhausts a message.
            reliable_timeout: Duration::from_secs(60),
            reliable_window: 256,
            ..SessionConfig::default()
        };
        let mut net = pair(config);
        impair(&mut net, seed, 30, jitter_ms, 10);
        for i in 0..n {
            net.send_reliable(0, 1, 9, &message(0, i)).unwrap();
            net.send_reliable(1, 0, 9, &message(1, i)).unwrap();
            if i % 4 == 3 {
                net.run_for(Duration::from_millis(50));
            }
        }
        net.run_for(Duration::from_secs(25));
        let (at_b, at_a) = (received(&mut net, 1, 9), received(&mut net, 0, 9));
        for (dir, got) in [(0u8, &at_b), (1, &at_a)] {
            prop_assert_eq!(got.len(), n as usize, "direction {}: every message", dir);
            for i in 0..n {
                prop_assert_eq!(got.get(&message(dir, i)).copied(), Some(1), "message {} once", i);
            }
        }
        for i in 0..2 {
            let s = stats(&net, i);
            prop_assert_eq!(s.reliable_sent, u64::from(n));
            prop_assert_eq!(s.reliable_acked, u64::from(n), "{:?}", s);
            prop_assert_eq!(s.reliable_delivered, u64::from(n));
            prop_assert_eq!(s.reliable_expired + s.reliable_dropped, 0);
            prop_assert_eq!(s.decrypt_failures, 0);
        }
        // Everything acknowledged: nothing is retransmitted any more.
        let before = (stats(&net, 0).reliable_retransmits, stats(&net, 1).reliable_retransmits);
        net.run_for(Duration::from_secs(3));
        prop_assert_eq!(before, (stats(&net, 0).reliable_retransmits, stats(&net, 1).reliable_retransmits));
    }
}

#[test]
fn clean_link_needs_no_retransmission() {
    let mut net = pair(SessionConfig::default());
    let sealed_by_b = stats(&net, 1).packets_sealed;
    for i in 0..64u32 {
        net.send_reliable(0, 1, 1, &i.to_be_bytes()).unwrap();
    }
    net.run_for(Duration::from_secs(9));
    assert_eq!(received(&mut net, 1, 1).len(), 64);
    let (a, b) = (stats(&net, 0), stats(&net, 1));
    assert_eq!((a.reliable_sent, a.reliable_acked), (64, 64));
    assert_eq!(a.reliable_retransmits, 0);
    assert_eq!((b.reliable_delivered, b.reliable_duplicates), (64, 0));
    // All 64 arrived in one burst: B acknowledged them in one packet.
    assert_eq!(b.packets_sealed - sealed_by_b, 1, "{b:?}");
}

#[test]
fn retransmissions_stop_once_acknowledged() {
    let mut net = pair(SessionConfig::default());
    let start = net.now;
    // B's packets are lost for the first 150 ms: its first two acks vanish.
    let b_addr = net.nodes[1].src;
    net.fate = Some(Box::new(move |p| {
        (p.from != b_addr || p.at >= start + Duration::from_millis(150))
            .then_some(Duration::from_millis(10))
    }));
    net.send_reliable(0, 1, 3, b"important").unwrap();
    net.run_for(Duration::from_secs(8));
    let (a, b) = (stats(&net, 0), stats(&net, 1));
    // Sent at 0; RTO 100 ms (twice the 20 ms round trip, at least 100 ms):
    // retransmitted at 100 ms (ack lost) and 300 ms (ack arrives at 320 ms).
    assert_eq!(a.reliable_retransmits, 2, "{a:?}");
    assert_eq!(a.reliable_acked, 1);
    assert_eq!((b.reliable_delivered, b.reliable_duplicates), (1, 2));
    assert_eq!(
        received(&mut net, 1, 3).get(b"important".as_slice()),
        Some(&1)
    );
    // Only keep-alive business is left.
    assert!(net.nodes[0].ep.poll_timeout().unwrap() >= start + Duration::from_secs(10));
}

#[test]
fn a_silent_peer_makes_the_message_expire_at_the_deadline() {
    let mut net = pair(SessionConfig::default());
    net.fate = Some(Box::new(|_| None));
    let t0 = net.now;
    let a_src = net.nodes[0].src;
    let payload = [7u8; 20];
    net.send_reliable(0, 1, 5, &payload).unwrap();
    // Exact timers: poll_timeout names every retransmission, then the expiry.
    let mut wakeups = Vec::new();
    while stats(&net, 0).reliable_expired == 0 {
        let t = net.nodes[0].ep.poll_timeout().unwrap();
        wakeups.push((t - t0).as_millis());
        net.run_until(t);
        assert!(wakeups.len() < 20);
    }
    assert_eq!(wakeups, [100, 300, 700, 1500, 2500, 3500, 4500, 5000]);
    // The first transmission and seven retransmissions, 16 + 1 + 10 + 20 + 16 bytes each.
    let sends: Vec<u128> = net
        .log
        .iter()
        .filter(|p| p.from == a_src && p.bytes.len() == 63)
        .map(|p| (p.at - t0).as_millis())
        .collect();
    assert_eq!(sends, [0, 100, 300, 700, 1500, 2500, 3500, 4500]);
    let a = stats(&net, 0);
    assert_eq!((a.reliable_retransmits, a.reliable_expired), (7, 1));
    assert_eq!(a.reliable_acked, 0);
    // Nothing reliable is scheduled any more.
    assert!(net.nodes[0].ep.poll_timeout().unwrap() >= t0 + Duration::from_secs(9));
}

#[test]
fn in_flight_messages_are_bounded() {
    let config = SessionConfig {
        reliable_window: 4,
        ..SessionConfig::default()
    };
    let mut net = pair(config);
    net.fate = Some(Box::new(|_| None));
    for i in 0..4u8 {
        net.send_reliable(0, 1, 1, &[i]).unwrap();
    }
    assert_eq!(
        net.send_reliable(0, 1, 1, b"one too many"),
        Err(SendError::ReliableWindowFull { pending: 4, max: 4 })
    );
    assert_eq!(
        stats(&net, 0).reliable_sent,
        4,
        "a refused message is not counted"
    );
    // The other direction has its own window.
    net.send_reliable(1, 0, 1, b"b to a").unwrap();
    // Expiry frees the window.
    net.run_for(Duration::from_secs(5));
    assert_eq!(stats(&net, 0).reliable_expired, 4);
    // Acknowledgement frees it too.
    net.fate = None;
    for round in 0..3u8 {
        for i in 0..4u8 {
            net.send_reliable(0, 1, 1, &[round, i]).unwrap();
        }
        net.run_for(Duration::from_millis(100));
    }
    assert_eq!(stats(&net, 0).reliable_acked, 12);
    assert_eq!(received(&mut net, 1, 1).len(), 12);
}

#[test]
fn errors_are_typed() {
    let mut net = pair(SessionConfig::default());
    assert_eq!(
        net.send_reliable(0, 1, 0, b"x"),
        Err(SendError::ReservedChannel)
    );
    assert_eq!(
        net.send_reliable(0, 1, 1, &[0; MAX_RELIABLE_PAYLOAD + 1]),
        Err(SendError::PayloadTooLarge {
            len: MAX_RELIABLE_PAYLOAD + 1,
            max: MAX_RELIABLE_PAYLOAD
        })
    );
    net.send_reliable(0, 1, 255, &[1; MAX_RELIABLE_PAYLOAD])
        .unwrap();
    net.run_for(Duration::from_millis(50));
    // 16 header + 1 channel + 10 reliable header + 1190 + 16 tag = the largest packet.
    assert!(
        net.log
            .iter()
            .any(|p| p.bytes.len() == natrix_session::MAX_PACKET)
    );
    assert_eq!(received(&mut net, 1, 255).len(), 1);
    let stranger = common::keypair(9).public();
    let now = net.now;
    assert_eq!(
        net.nodes[0].ep.send_reliable(now, &stranger, 1, b"x"),
        Err(SendError::NoSession)
    );
}

#[test]
fn messages_sent_during_the_handshake_wait_for_the_session() {
    let mut net = Net::new();
    let a = net.add(1, "192.0.2.1:4000", SessionConfig::default(), 11);
    let b = net.add(2, "198.51.100.2:5000", SessionConfig::default(), 22);
    net.connect(a, b);
    for i in 0..3u8 {
        net.send_reliable(a, b, 2, &[i]).unwrap();
    }
    net.run_for(Duration::from_millis(200));
    assert!(net.up(a, b) && net.up(b, a));
    assert_eq!(received(&mut net, b, 2).len(), 3);
    assert_eq!(stats(&net, a).reliable_acked, 3);
    assert_eq!(stats(&net, a).reliable_retransmits, 0);

    // The responder can queue too, before the initiator's keys are confirmed:
    // C dials D; D sends while holding half-open keys.
    let c = net.add(3, "192.0.2.3:4000", SessionConfig::default(), 33);
    let d = net.add(4, "198.51.100.4:5000", SessionConfig::default(), 44);
    net.connect(c, d);
    net.run_for(Duration::from_millis(15)); // the init has arrived; the response is in flight
    assert!(!net.up(d, c));
    net.send_reliable(d, c, 2, b"from the responder").unwrap();
    net.run_for(Duration::from_millis(200));
    assert_eq!(received(&mut net, c, 2).len(), 1);
}

#[test]
fn pending_messages_are_dropped_and_counted_when_the_session_ends() {
    // A handshake that never completes.
    let mut net = Net::new();
    let a = net.add(1, "192.0.2.1:4000", SessionConfig::default(), 11);
    let b = net.add(2, "198.51.100.2:5000", SessionConfig::default(), 22);
    net.fate = Some(Box::new(|_| None));
    net.connect(a, b);
    net.send_reliable(a, b, 1, b"never").unwrap();
    net.send_reliable(a, b, 1, b"never either").unwrap();
    net.run_for(Duration::from_secs(6));
    assert!(
        net.take_events(a)
            .iter()
            .any(|e| matches!(e, SessionEvent::HandshakeFailed { .. }))
    );
    let s = stats(&net, a);
    assert_eq!(
        (s.reliable_sent, s.reliable_dropped, s.reliable_expired),
        (2, 2, 0)
    );

    // An established session that is closed with messages in flight.
    let mut net = pair(SessionConfig::default());
    net.fate = Some(Box::new(|_| None));
    for _ in 0..3 {
        net.send_reliable(0, 1, 1, b"in flight").unwrap();
    }
    net.run_for(Duration::from_millis(500));
    let kb = net.nodes[1].key();
    let now = net.now;
    net.nodes[0].ep.close(now, &kb);
    let s = stats(&net, 0);
    assert_eq!((s.reliable_dropped, s.reliable_expired), (3, 0));
    assert!(s.reliable_retransmits > 0);
    assert_eq!(net.nodes[0].ep.poll_timeout(), None, "nothing left to do");
}

/// Traffic both ways under 10 % loss across two rekeys, with a blackout
/// around the first one so messages sealed with the old keys are
/// retransmitted with the new: every message arrives exactly once.
#[test]
fn delivery_survives_rekeys() {
    let mut net = pair(SessionConfig::default());
    let t0 = net.now;
    let mut state = 42u64;
    let (from, to) = (
        t0 + Duration::from_millis(119_000),
        t0 + Duration::from_millis(120_400),
    );
    net.fate = Some(Box::new(move |p| {
        let blackout = p.at >= from && p.at < to;
        (!blackout && mix(&mut state) % 100 >= 10)
            .then(|| Duration::from_millis(5 + mix(&mut state) % 20))
    }));
    let mut n = 0u32;
    while net.now < t0 + Duration::from_secs(250) {
        net.send_reliable(0, 1, 4, &message(0, n)).unwrap();
        net.send_reliable(1, 0, 4, &message(1, n)).unwrap();
        n += 1;
        net.run_for(Duration::from_millis(200));
    }
    net.run_for(Duration::from_secs(5));
    let (at_b, at_a) = (received(&mut net, 1, 4), received(&mut net, 0, 4));
    for (dir, got) in [(0u8, &at_b), (1, &at_a)] {
        assert_eq!(got.len(), n as usize, "direction {dir}");
        assert!(got.values().all(|&c| c == 1), "direction {dir}: once each");
    }
    let (a, b) = (stats(&net, 0), stats(&net, 1));
    assert!(a.rekeys >= 2, "{a:?}");
    for s in [a, b] {
        assert_eq!(s.reliable_acked, u64::from(n), "{s:?}");
        assert_eq!(s.reliable_expired + s.reliable_dropped, 0);
        assert!(s.reliable_retransmits > 0);
    }
    for e in net.take_events(0).iter().chain(net.take_events(1).iter()) {
        assert!(!matches!(e, SessionEvent::Down { .. }), "{e:?}");
    }
}

/// A peer that lost its session state (closed on its side only) and dials
/// again starts a new stream: its fresh message ids are not mistaken for
/// duplicates of the old ones.
#[test]
fn a_restarted_peer_starts_a_new_stream() {
    let mut net = pair(SessionConfig::default());
    for i in 0..5u8 {
        net.send_reliable(0, 1, 1, &[0, i]).unwrap();
    }
    net.run_for(Duration::from_millis(100));
    let kb = net.nodes[1].key();
    let now = net.now;
    net.nodes[0].ep.close(now, &kb);
    net.take_events(0);
    // A dials again; B still holds the old session and takes it as a rekey.
    net.run_for(Duration::from_secs(2));
    net.connect(0, 1);
    for i in 0..5u8 {
        net.send_reliable(0, 1, 1, &[1, i]).unwrap();
    }
    net.run_for(Duration::from_millis(300));
    let got = received(&mut net, 1, 1);
    assert_eq!(got.len(), 10, "{got:?}");
    assert!(got.values().all(|&c| c == 1));
    assert_eq!(stats(&net, 1).reliable_duplicates, 0);
}

fn lossy_run(seed: u64) -> (Vec<(Instant, Vec<u8>)>, SessionStats, SessionStats) {
    let mut net = pair(SessionConfig::default());
    impair(&mut net, seed, 25, 40, 5);
    for i in 0..40u32 {
        net.send_reliable(0, 1, 6, &message(0, i)).unwrap();
        net.send_reliable(1, 0, 6, &message(1, i)).unwrap();
        net.run_for(Duration::from_millis(30));
    }
    net.run_for(Duration::from_secs(6));
    let log = net.log.iter().map(|p| (p.at, p.bytes.clone())).collect();
    (log, stats(&net, 0), stats(&net, 1))
}

#[test]
fn same_seed_gives_byte_identical_output() {
    let one = lossy_run(5);
    let two = lossy_run(5);
    assert_eq!(one.0, two.0);
    assert_eq!((one.1, one.2), (two.1, two.2));
    assert!(one.1.reliable_retransmits > 0);
    let other = lossy_run(6);
    assert_ne!(one.0, other.0);
}
