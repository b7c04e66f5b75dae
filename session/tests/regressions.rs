//! Named regression tests for the session spec items S1, S2, S5, S6, S7.
#![allow(missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{Net, addr, pair};
use natrix_session::{
    DatagramKind, DropReason, Endpoint, HandshakeError, MAX_PACKET, PacketType, SessionConfig,
    SessionError, SessionEvent, classify,
};

fn is(p: &[u8], t: PacketType) -> bool {
    classify(p) == DatagramKind::Session(t)
}

#[test]
fn s1_second_key_claiming_bound_node_id_is_refused() {
    let mut net = Net::new();
    let a = net.add(1, "192.0.2.1:4000", SessionConfig::default(), 11);
    let b = net.add(2, "198.51.100.2:5000", SessionConfig::default(), 22);
    let c = net.add(3, "203.0.113.3:6000", SessionConfig::default(), 33);
    // On A every key maps to node id 7: B and C collide.
    net.nodes[a]
        .ep
        .set_node_id_fn_for_testing(common::colliding_node_id);
    let (kb, kc) = (net.nodes[b].key(), net.nodes[c].key());

    net.connect(b, a);
    net.run_for(Duration::from_millis(200));
    assert!(net.up(a, b));
    assert_eq!(
        net.nodes[a].ep.peer_by_node_id(natrix_proto::NodeId(7)),
        Some(kb)
    );
    net.take_events(a);

    // C (a different key, same node id) dials A: refused, not merged.
    net.connect(c, a);
    net.run_for(Duration::from_secs(6));
    assert!(!net.up(a, c) && !net.up(c, a));
    let s = net.nodes[a].ep.stats();
    assert_eq!(
        s.handshakes_refused, 3,
        "three init attempts from C, each refused"
    );
    assert_eq!(s.handshakes_accepted, 1);
    assert_eq!(net.nodes[a].drops, vec![DropReason::NodeIdTaken; 3]);
    let ev = net.take_events(a);
    assert_eq!(ev.len(), 3);
    assert!(ev.iter().all(|e| *e
        == SessionEvent::HandshakeFailed {
            peer: kc,
            addr: net.nodes[c].addr,
            error: HandshakeError::NodeIdTaken { bound: kb },
        }));
    assert!(matches!(
        net.take_events(c)[..],
        [SessionEvent::HandshakeFailed {
            error: HandshakeError::Timeout,
            ..
        }]
    ));
    // A dialling C is refused locally too.
    let (now, c_addr) = (net.now, net.nodes[c].addr);
    assert_eq!(
        net.nodes[a].ep.connect(now, common::WALL0, kc, c_addr),
        Err(SessionError::NodeIdTaken { bound: kb })
    );
    // B's session is untouched and still bound.
    assert_eq!(
        net.nodes[a].ep.peer_by_node_id(natrix_proto::NodeId(7)),
        Some(kb)
    );
    net.send(b, a, 16, b"still here");
    net.run_for(Duration::from_millis(50));
    assert_eq!(net.take_data(a).len(), 1);
}

#[test]
fn s2_replayed_transport_packet_is_dropped() {
    let mut net = pair(SessionConfig::default());
    let (a_src, b_addr) = (net.nodes[0].src, net.nodes[1].addr);
    net.log.clear();
    net.send(0, 1, 16, b"once");
    let original = net.log[0].bytes.clone();

    // A forged copy (one ciphertext bit flipped) first: dropped, and the
    // failure changes nothing, so the original is still accepted after it.
    let mut forged = original.clone();
    forged[20] ^= 0x01;
    net.flight.clear();
    net.inject(a_src, b_addr, forged);
    net.inject(a_src, b_addr, original.clone());
    net.inject(a_src, b_addr, original.clone());
    net.run_for(Duration::from_millis(50));
    assert_eq!(
        net.nodes[1].drops,
        vec![DropReason::Decrypt, DropReason::Replay]
    );
    assert_eq!(net.take_data(1).len(), 1);

    // Replay much later: still dropped.
    net.run_for(Duration::from_secs(20));
    net.inject(a_src, b_addr, original);
    net.run_for(Duration::from_millis(50));
    let s = net.nodes[1].ep.stats();
    assert_eq!((s.replays_dropped, s.decrypt_failures), (2, 1));
    assert!(net.take_data(1).is_empty());

    // Old-but-unseen counters within the window are accepted (reordering),
    // and counters older than the window are not.
    let mut held = Vec::new();
    net.log.clear();
    for i in 0..5000u32 {
        net.send(0, 1, 16, &i.to_be_bytes());
    }
    net.flight.retain(|p| {
        let keep = p.bytes.len() != 16 + 1 + 4 + 16;
        if !keep {
            held.push(p.clone());
        }
        keep
    });
    // Deliver newest first: the 4096-packet window takes the newest 4096.
    held.reverse();
    for p in held {
        net.inject(p.from, p.to, p.bytes);
    }
    net.run_for(Duration::from_millis(50));
    let got = net.take_data(1).len();
    assert!((4000..=4096).contains(&got), "{got}");
}

/// The flood: many source ports, all with a valid mac1 (the attacker knows
/// B's public key), none with a cookie.
#[test]
fn s5_handshake_flood_gets_cookies_and_legit_peer_still_connects() {
    let config = SessionConfig {
        cookie_threshold: 8,
        max_half_open: 4,
        ..SessionConfig::default()
    };
    let mut net = Net::new();
    let b = net.add(2, "198.51.100.2:5000", config.clone(), 22);
    let legit = net.add(1, "192.0.2.1:4000", config.clone(), 11);
    let kb = net.nodes[b].key();
    let b_addr = net.nodes[b].addr;

    // Attackers: 20 real keys make 20 genuine inits to B.
    let mut inits = Vec::new();
    for k in 0..20u8 {
        let mut x = Endpoint::new(common::keypair(100 + k), config.clone(), [k; 32]);
        x.connect(net.now, common::WALL0, kb, b_addr).unwrap();
        let mut out = [0u8; MAX_PACKET];
        let (_, n) = x.poll_transmit(&mut out).unwrap();
        assert!(is(&out[..n], PacketType::HandshakeInit));
        inits.push(out[..n].to_vec());
    }
    let flooder = |i: usize| -> SocketAddr {
        SocketAddr::new(
            [203, 0, 113, (i / 60_000) as u8 + 1].into(),
            1024 + (i % 60_000) as u16,
        )
    };
    // The first inits are processed (DH work) until the half-open bound (4)
    // is reached; after that, cookies.
    for (i, init) in inits.iter().take(8).enumerate() {
        net.inject(flooder(i), b_addr, init.clone());
    }
    net.run_for(Duration::from_millis(20));
    let before = net.nodes[b].ep.stats();
    assert_eq!(before.handshakes_accepted, 4);
    assert_eq!(before.cookies_sent, 4);

    // Then 2,000 inits from 2,000 source ports within 100 ms.
    net.log.clear();
    for i in 0..2000 {
        net.inject(flooder(1000 + i), b_addr, inits[i % inits.len()].clone());
    }
    net.run_for(Duration::from_millis(100));
    let after = net.nodes[b].ep.stats();
    assert_eq!(
        after.handshakes_accepted, before.handshakes_accepted,
        "no DH work during the flood"
    );
    assert_eq!(
        after.decrypt_failures, before.decrypt_failures,
        "no Noise processing at all"
    );
    assert_eq!(after.replays_dropped, before.replays_dropped);
    assert_eq!(after.cookies_sent, before.cookies_sent + 2000);
    assert!(after.sessions_live == 0);
    // No amplification: per source address, bytes out ≤ bytes in.
    let mut balance: BTreeMap<SocketAddr, (usize, usize)> = BTreeMap::new();
    for p in &net.log {
        if p.to == b_addr {
            balance.entry(p.from).or_default().0 += p.bytes.len();
        } else if p.from == b_addr {
            assert!(is(&p.bytes, PacketType::CookieReply));
            balance.entry(p.to).or_default().1 += p.bytes.len();
        }
    }
    assert_eq!(balance.len(), 2000);
    assert!(
        balance
            .values()
            .all(|&(inb, out)| out <= inb && out == 64 && inb == 144)
    );

    // The legitimate peer dials during the flood: cookie, immediate retry
    // with mac2, accepted, and data flows.
    let lk = net.nodes[legit].key();
    net.connect(legit, b);
    net.send(legit, b, 16, b"hello under load");
    for i in 0..200 {
        net.inject(flooder(5000 + i), b_addr, inits[i % inits.len()].clone());
    }
    net.run_for(Duration::from_millis(300));
    assert!(net.up(legit, b) && net.up(b, legit));
    let sl = net.nodes[legit].ep.stats();
    assert_eq!(sl.cookies_received, 1);
    assert_eq!(sl.handshakes_initiated, 1);
    let s = net.nodes[b].ep.stats();
    assert_eq!(s.handshakes_accepted, before.handshakes_accepted + 1);
    assert_eq!(
        net.take_data(b),
        vec![(lk, net.nodes[legit].addr, 16, b"hello under load".to_vec())]
    );
    // Half-open state stayed bounded (max_half_open = 4) throughout.
    assert!(s.cookies_sent >= 2200);
}

#[test]
fn s6_spoofed_source_never_moves_session() {
    let mut net = pair(SessionConfig::default());
    let (a_src, b_addr) = (net.nodes[0].src, net.nodes[1].addr);
    let spoof = addr("203.0.113.66:6666");
    // Material an off-path or on-path attacker may hold: A's real packets.
    let hs: Vec<_> = net.log.iter().map(|p| p.bytes.clone()).collect();
    net.log.clear();
    net.send(0, 1, 16, b"real");
    let real = net.log[0].bytes.clone();
    net.run_for(Duration::from_millis(50));
    assert_eq!(net.take_data(1).len(), 1);

    // Replayed transport, forged transport, replayed init/response/garbage,
    // all from the spoofed address.
    let mut forged = real.clone();
    forged[8..16].copy_from_slice(&1000u64.to_be_bytes());
    let mut inputs = vec![real.clone(), forged];
    inputs.extend(hs.iter().cloned());
    inputs.push(vec![0xA3; 64]);
    for bytes in inputs {
        net.inject(spoof, b_addr, bytes);
    }
    net.run_for(Duration::from_millis(50));
    let info = net.nodes[1].ep.session(&net.nodes[0].key()).unwrap();
    assert_eq!(info.addr, a_src, "session did not move");
    assert!(
        !net.take_events(1)
            .iter()
            .any(|e| matches!(e, SessionEvent::AddrChanged { .. })),
        "no AddrChanged"
    );
    assert!(net.take_data(1).is_empty());
    assert!(net.nodes[1].drops.contains(&DropReason::Replay));
    assert!(net.nodes[1].drops.contains(&DropReason::Decrypt));
    assert!(net.nodes[1].drops.contains(&DropReason::StaleHandshake));
    // B still talks to A's real address.
    assert!(net.send(1, 0, 16, b"to the real a"));
    net.run_for(Duration::from_millis(50));
    assert_eq!(net.take_data(0).len(), 1);
    assert!(
        net.lost.is_empty(),
        "nothing went to the spoofed address: {:?}",
        net.lost
    );
}

#[test]
fn s6_authenticated_packet_from_new_address_moves_session() {
    let mut net = pair(SessionConfig::default());
    let old = net.nodes[0].src;
    let new = addr("192.0.2.1:4999");
    // A's NAT rebinds: its packets now come from (and replies must go to) `new`.
    net.nodes[0].src = new;
    net.nodes[0].addr = new;
    net.send(0, 1, 16, b"after rebinding");
    net.run_for(Duration::from_millis(50));
    let ka = net.nodes[0].key();
    assert_eq!(
        net.take_events(1),
        vec![SessionEvent::AddrChanged {
            peer: ka,
            node: ka.node_id(),
            old,
            new
        }]
    );
    assert_eq!(net.nodes[1].ep.session(&ka).unwrap().addr, new);
    assert_eq!(net.take_data(1)[0].1, new);
    assert!(net.send(1, 0, 16, b"reply"));
    net.run_for(Duration::from_millis(50));
    assert_eq!(net.take_data(0).len(), 1);
    assert!(net.lost.is_empty());
}

/// Steady two-way traffic with 50 ms of latency across four rekeys
/// (time- and packet-count-driven): every packet arrives, none is rejected.
#[test]
fn s7_rekey_before_limit_without_dropping_in_flight_packets() {
    for config in [
        SessionConfig::default(),
        SessionConfig {
            rekey_after_packets: 500,
            ..SessionConfig::default()
        },
    ] {
        let mut net = pair(config.clone());
        net.latency = Duration::from_millis(50);
        let (ka, kb) = (net.nodes[0].key(), net.nodes[1].key());
        let mut sent = 0u32;
        // 520 s at one packet each way every 100 ms.
        for _ in 0..5200 {
            net.send(0, 1, 16, &sent.to_be_bytes());
            net.send(1, 0, 16, &sent.to_be_bytes());
            sent += 1;
            net.run_for(Duration::from_millis(100));
        }
        net.run_for(Duration::from_secs(1));
        let (da, db) = (net.take_data(0), net.take_data(1));
        assert_eq!(db.len(), sent as usize, "A→B: every packet delivered");
        assert_eq!(da.len(), sent as usize, "B→A: every packet delivered");
        for (i, d) in db.iter().enumerate() {
            assert_eq!(
                d.3,
                (i as u32).to_be_bytes(),
                "in order (no loss, fixed latency)"
            );
        }
        let (sa, sb) = (net.nodes[0].ep.stats(), net.nodes[1].ep.stats());
        assert!(sa.rekeys >= 4, "{sa:?}");
        assert_eq!(sa.rekeys, sb.rekeys);
        assert!(net.nodes[0].drops.is_empty() && net.nodes[1].drops.is_empty());
        assert!(
            !net.take_events(0)
                .iter()
                .any(|e| matches!(e, SessionEvent::Down { .. }))
        );
        assert!(
            !net.take_events(1)
                .iter()
                .any(|e| matches!(e, SessionEvent::Down { .. }))
        );
        let ia = net.nodes[0].ep.session(&kb).unwrap();
        let ib = net.nodes[1].ep.session(&ka).unwrap();
        assert_eq!(ia.rekeys, sa.rekeys);
        assert_eq!(ib.rekeys, sb.rekeys);
        if config.rekey_after_packets == 500 {
            assert!(sa.rekeys >= 10, "packet-count rekeys: {}", sa.rekeys);
        }
    }
}

/// S5: under load a valid cookie proves an address, not a fair rate. Many
/// initiators at one source IP that all echo their cookies get that IP's
/// budget of DH work (`handshakes_per_ip`), the rest are dropped before any
/// DH; an initiator at another IP still gets through.
#[test]
fn s5_cookie_holders_at_one_ip_get_that_ips_budget_under_load() {
    let config = SessionConfig {
        cookie_threshold: 4,
        handshakes_per_ip: 3,
        ..SessionConfig::default()
    };
    let mut net = Net::new();
    let b = net.add(2, "198.51.100.2:5000", config.clone(), 22);
    // Twenty real initiators on one IP, one port each.
    let flood: Vec<usize> = (0..20u8)
        .map(|k| {
            net.add(
                100 + k,
                &format!("203.0.113.9:{}", 4000 + u16::from(k)),
                config.clone(),
                k,
            )
        })
        .collect();
    let legit = net.add(1, "192.0.2.1:4000", config.clone(), 11);
    for &x in &flood {
        net.connect(x, b);
    }
    net.connect(legit, b);
    net.run_for(Duration::from_millis(100));
    let s = net.nodes[b].ep.stats();
    // The meter's burst (4) went to the first inits, without cookies; the
    // other 17 got cookies and came back at once with mac2. The flooding
    // IP's 16 then got its budget of 3, the other IP its own.
    assert_eq!(s.cookies_sent, 17);
    assert_eq!(s.handshakes_rate_limited, 13);
    assert_eq!(s.handshakes_accepted, 4 + 3 + 1);
    assert!(net.up(legit, b) && net.up(b, legit));
    let limited = net.nodes[b]
        .drops
        .iter()
        .filter(|d| **d == DropReason::RateLimited)
        .count();
    assert_eq!(limited, 13);
}

#[test]
fn s5_rate_meter_demands_cookies_above_the_threshold_then_recovers() {
    let config = SessionConfig {
        cookie_threshold: 8,
        ..SessionConfig::default()
    };
    let mut net = Net::new();
    let b = net.add(2, "198.51.100.2:5000", config.clone(), 22);
    let (kb, b_addr) = (net.nodes[b].key(), net.nodes[b].addr);
    let mut x = Endpoint::new(common::keypair(100), config, [1; 32]);
    let mut send_inits = |net: &mut Net, n: usize, port0: u16| {
        for i in 0..n {
            // A fresh init each time (new timestamp): dial, take the init, forget.
            let t = net.now;
            x.connect(
                t,
                common::WALL0 + u64::from(port0) * 100 + i as u64,
                kb,
                b_addr,
            )
            .unwrap();
            let mut out = [0u8; MAX_PACKET];
            let (_, len) = x.poll_transmit(&mut out).unwrap();
            x.close(t, &kb);
            net.inject(
                addr(&format!("203.0.113.9:{}", port0 + i as u16)),
                b_addr,
                out[..len].to_vec(),
            );
        }
    };
    send_inits(&mut net, 20, 1000);
    net.run_for(Duration::from_millis(20));
    let s = net.nodes[b].ep.stats();
    assert_eq!(
        (s.handshakes_accepted, s.cookies_sent),
        (8, 12),
        "burst of 8, then cookies"
    );
    // A second later the meter has refilled.
    net.run_for(Duration::from_secs(1));
    send_inits(&mut net, 4, 2000);
    net.run_for(Duration::from_millis(20));
    let s = net.nodes[b].ep.stats();
    assert_eq!((s.handshakes_accepted, s.cookies_sent), (12, 12));
}
