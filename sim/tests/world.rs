//! The simulator's own behaviour: routing through nested NATs, hairpinning,
//! filtering at arrival time, real sessions through the NATs (the session
//! address a server sees is the NAT mapping, rebindings move sessions, NAT
//! binding lifetime against the session keep-alive, clock offsets measured by
//! the sessions), the link classes, keys from the world seed, the step budget.
#![allow(missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use natrix_proto::{Config, Event, Instant, NatClass};
use natrix_session::{DownReason, HandshakeError, SessionEvent};
use natrix_sim::LinkConfig;
use natrix_sim::nat::{Filtering, Mapping, NatConfig, PortAllocation};
use natrix_sim::preset::{Preset, place};
use natrix_sim::world::{Drop, HostId, NatId, Realm, World};

fn quiet() -> Config {
    Config::builder().auto_reclassify(false).build().unwrap()
}

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const MS10: Duration = Duration::from_millis(10);

/// A coordinator R and a reflex server S on the Internet.
fn servers(w: &mut World) -> (HostId, HostId) {
    let r = w.add_host(
        "R",
        Realm::Internet,
        a("203.0.113.10:3478"),
        MS10,
        quiet(),
        1,
    );
    let s = w.add_host(
        "S",
        Realm::Internet,
        a("203.0.113.20:3478"),
        MS10,
        quiet(),
        2,
    );
    (r, s)
}

#[test]
fn server_sees_the_outermost_mapping_of_a_double_nat() {
    let mut w = World::new(1);
    let r = w.add_host(
        "R",
        Realm::Internet,
        a("203.0.113.10:3478"),
        MS10,
        quiet(),
        1,
    );
    let p = place(&mut w, Preset::DoubleNat, 1, "A", MS10, quiet(), 2);
    assert_eq!(p.nats.len(), 2);
    w.connect(p.host, r);
    // The handshake crosses both NATs: one round trip of 40 ms for A, one
    // crossing more for R (A's first transport packet confirms the keys).
    w.run_for(Duration::from_millis(30));
    assert!(!w.connected(p.host, r));
    w.run_for(Duration::from_millis(40));
    assert!(w.connected(p.host, r));
    // The carrier NAT (sequential ports from 40000) holds the outer mapping;
    // R's session sees exactly it, never the home router's 100.64 address.
    let r_addr = w.host(r).addr;
    let mapping = w.mapping(p.host, r_addr).expect("live mapping");
    assert_eq!(mapping, a("203.0.113.101:40000"));
    assert_eq!(w.session_addr(r, p.host), Some(mapping));
    let up = w.host(r).session_events.iter().find_map(|(_, e)| match e {
        SessionEvent::Up { node, addr, .. } if *node == w.id(p.host) => Some(*addr),
        _ => None,
    });
    assert_eq!(up, Some(mapping), "R's agent heard the mapping at Up");
    // R answers a reflex probe with what its session sees.
    let now = w.now();
    let r_id = w.id(r);
    w.agent(p.host).probe_reflex(now, r_id).unwrap();
    w.run_for(Duration::from_millis(100));
    let seen = w.host(p.host).events.iter().find_map(|(_, e)| match e {
        natrix_proto::Event::ReflexProbed {
            result: Ok(addr), ..
        } => Some(*addr),
        _ => None,
    });
    assert_eq!(seen, Some(mapping));
    assert_eq!(w.nat(p.nats[0]).mappings(), 1);
    assert_eq!(w.nat(p.nats[1]).mappings(), 1);
}

#[test]
fn node_ids_are_the_keys_and_keys_derive_from_the_world_seed() {
    let build = |seed: u64| {
        let mut w = World::new(seed);
        servers(&mut w);
        w
    };
    let (one, again, other) = (build(1), build(1), build(2));
    for h in &one.hosts {
        assert_eq!(h.id, h.key.node_id(), "S1: the node id is the key's");
        assert_eq!(h.agent.id(), h.id);
        assert_eq!(h.endpoint.public_key(), h.key);
    }
    let keys = |w: &World| w.hosts.iter().map(|h| h.key).collect::<Vec<_>>();
    assert_eq!(keys(&one), keys(&again));
    assert_ne!(keys(&one), keys(&other));
    assert_ne!(one.hosts[0].key, one.hosts[1].key);
}

#[test]
fn inbound_filtering_is_decided_when_the_packet_arrives() {
    let mut w = World::new(1);
    let nat = w.add_nat(
        NatConfig::new(
            Mapping::EndpointIndependent,
            Filtering::AddressAndPortDependent,
        ),
        Realm::Internet,
        "203.0.113.5".parse().unwrap(),
    );
    let inside = w.add_host(
        "A",
        Realm::Behind(nat),
        a("10.0.0.2:4000"),
        MS10,
        quiet(),
        1,
    );
    let outside = w.add_host(
        "B",
        Realm::Internet,
        a("203.0.113.9:5000"),
        MS10,
        quiet(),
        2,
    );
    // Open a mapping toward someone else first, so the external port exists.
    w.send_datagram(inside, a("203.0.113.77:1"), b"x");
    w.run_for(Duration::from_millis(50));
    // B's datagram is in flight (20 ms) when A sends to B: it arrives after
    // A's outbound opened the filter, so it passes.
    w.send_datagram(outside, a("203.0.113.5:4000"), b"early");
    w.run_for(Duration::from_millis(5));
    w.send_datagram(inside, a("203.0.113.9:5000"), b"opens");
    w.run_for(Duration::from_millis(50));
    assert_eq!(w.host(inside).app_inbox.len(), 1);
    // From another port of B: filtered.
    let stranger = w.add_host(
        "C",
        Realm::Internet,
        a("203.0.113.9:5001"),
        MS10,
        quiet(),
        3,
    );
    w.send_datagram(stranger, a("203.0.113.5:4000"), b"no");
    w.run_for(Duration::from_millis(50));
    assert_eq!(w.host(inside).app_inbox.len(), 1);
    assert!(w.drops.values().sum::<u64>() >= 2);
}

#[test]
fn hairpinning_on_and_off() {
    for hairpin in [true, false] {
        let mut w = World::new(1);
        let nat = w.add_nat(
            NatConfig::new(Mapping::EndpointIndependent, Filtering::EndpointIndependent)
                .hairpin(hairpin),
            Realm::Internet,
            "203.0.113.5".parse().unwrap(),
        );
        let x = w.add_host(
            "X",
            Realm::Behind(nat),
            a("10.0.0.2:4000"),
            MS10,
            quiet(),
            1,
        );
        let y = w.add_host(
            "Y",
            Realm::Behind(nat),
            a("10.0.0.3:4001"),
            MS10,
            quiet(),
            2,
        );
        // Y opens its mapping (external port 4001, preserved).
        w.send_datagram(y, a("203.0.113.77:1"), b"out");
        w.send_datagram(x, a("203.0.113.5:4001"), b"hairpin");
        w.run_for(Duration::from_millis(50));
        assert_eq!(
            w.host(y).app_inbox.len(),
            usize::from(hairpin),
            "hairpin {hairpin}"
        );
        if hairpin {
            // Y sees X at X's external address, as RFC 4787 requires.
            assert_eq!(w.host(y).app_inbox[0].1, a("203.0.113.5:4000"));
        }
    }
}

#[test]
fn open_host_classifies_open_and_nat_host_cone_through_a_real_sweep() {
    let mut w = World::new(3);
    let (r, s) = servers(&mut w);
    let open = place(&mut w, Preset::Open, 1, "O", MS10, Config::default(), 3);
    let cone = place(
        &mut w,
        Preset::PortRestrictedCone,
        2,
        "C",
        MS10,
        Config::default(),
        4,
    );
    let sym = place(
        &mut w,
        Preset::Symmetric,
        3,
        "Y",
        MS10,
        Config::default(),
        5,
    );
    for h in [open.host, cone.host, sym.host] {
        w.connect(h, r);
        w.connect(h, s);
    }
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.agent(open.host).nat_class(), NatClass::Open);
    assert_eq!(w.agent(cone.host).nat_class(), NatClass::Cone);
    assert_eq!(w.agent(sym.host).nat_class(), NatClass::Symmetric);
}

#[test]
#[should_panic(expected = "runaway scenario")]
fn a_runaway_scenario_fails_loudly() {
    let mut w = World::new(1);
    let (r, s) = servers(&mut w);
    let p = place(&mut w, Preset::FullCone, 1, "A", MS10, Config::default(), 3);
    w.connect(p.host, r);
    w.connect(p.host, s);
    w.max_steps = 3;
    w.run_for(Duration::from_secs(3600));
}

/// The clock offsets the sessions reported at host `at` for `peer`.
fn offsets(w: &World, at: HostId, peer: HostId) -> Vec<i64> {
    let node = w.id(peer);
    w.host(at)
        .session_events
        .iter()
        .filter_map(|(_, e)| match e {
            SessionEvent::ClockOffset {
                node: n, offset_ms, ..
            } if *n == node => Some(*offset_ms),
            _ => None,
        })
        .collect()
}

#[test]
fn sessions_measure_clock_offsets_ntp_style() {
    for (latency, tolerance) in [(MS10, 0), (Duration::from_micros(10_600), 1)] {
        let mut w = World::new(1);
        let (r, _) = servers(&mut w);
        let inside = place(
            &mut w,
            Preset::PortRestrictedCone,
            1,
            "A",
            latency,
            quiet(),
            3,
        );
        let a = inside.host;
        w.set_clock_skew(r, 30_000);
        w.set_clock_skew(a, -30_000);
        assert_eq!(w.host(a).clock_skew_ms, -30_000);
        w.connect(a, r);
        w.run_for(Duration::from_secs(1));
        // A (the initiator) measures from the handshake, R (the responder)
        // from the clock ping it sends when the session comes up: R's clock is
        // 60 s ahead of A's. Whole-millisecond legs give the exact offset,
        // fractional ones (20.6 ms) are off by the clocks' rounding at most.
        let (of_r, of_a) = (offsets(&w, a, r), offsets(&w, r, a));
        assert_eq!(of_r.len(), 1, "{of_r:?}");
        assert_eq!(of_a.len(), 1, "{of_a:?}");
        assert!((of_r[0] - 60_000).abs() <= tolerance, "{of_r:?}");
        assert!((of_a[0] + 60_000).abs() <= tolerance, "{of_a:?}");
        let r_key = w.host(r).key;
        let info = w.endpoint(a).session(&r_key).expect("up");
        assert_eq!(info.clock_offset_ms, Some(of_r[0]));
        assert_eq!(
            info.rtt,
            Some((latency + MS10) * 2),
            "the handshake round trip"
        );
    }
}

/// A behind a NAT that allocates ports sequentially (so a rebinding gives a
/// new external port), dialled into R and S, classified.
fn rebinding_arena(config: Config) -> (World, HostId, HostId, HostId, NatId) {
    let mut w = World::new(4);
    let (r, s) = servers(&mut w);
    let nat = w.add_nat(
        NatConfig::new(
            Mapping::EndpointIndependent,
            Filtering::AddressAndPortDependent,
        )
        .allocation(PortAllocation::Sequential),
        Realm::Internet,
        "203.0.113.5".parse().unwrap(),
    );
    let h = w.add_host("A", Realm::Behind(nat), a("10.0.0.2:4000"), MS10, config, 3);
    w.connect(h, r);
    w.connect(h, s);
    w.run_for(Duration::from_secs(1));
    (w, r, s, h, nat)
}

fn addr_changes(w: &World, at: HostId, peer: HostId) -> Vec<(SocketAddr, SocketAddr)> {
    let node = w.id(peer);
    w.host(at)
        .session_events
        .iter()
        .filter_map(|(_, e)| match e {
            SessionEvent::AddrChanged {
                node: n, old, new, ..
            } if *n == node => Some((*old, *new)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_nat_rebinding_moves_the_session_and_the_agents_hear_the_new_address() {
    // S6 and C7 through a real NAT: after the NAT drops its mappings, A's
    // next sealed packet leaves from a new external port; R's session
    // follows the authenticated packet (AddrChanged), R's agent hears the
    // new address, answers A's reflex probe with it, and A reclassifies.
    let (mut w, r, _, h, nat) = rebinding_arena(Config::default());
    let old = a("203.0.113.5:40000");
    assert_eq!(w.agent(h).classification().map(|c| c.reflex), Some(old));
    assert_eq!(w.session_addr(r, h), Some(old));
    w.flush_nat(nat);
    let now = w.now();
    let r_id = w.id(r);
    w.agent(h).probe_reflex(now, r_id).unwrap();
    w.run_for(Duration::from_secs(1));
    let r_addr = w.host(r).addr;
    let new = w.mapping(h, r_addr).expect("a new mapping");
    assert_ne!(new, old);
    assert_eq!(addr_changes(&w, r, h), vec![(old, new)]);
    assert_eq!(w.session_addr(r, h), Some(new));
    let probed = w.host(h).events.iter().find_map(|(_, e)| match e {
        Event::ReflexProbed {
            result: Ok(addr), ..
        } => Some(*addr),
        _ => None,
    });
    assert_eq!(probed, Some(new), "R's agent answered with the new address");
    // C7: a reflex change triggers a sweep, which publishes the new reflex.
    assert_eq!(w.agent(h).classification().map(|c| c.reflex), Some(new));
    assert_eq!(w.agent(h).nat_class(), NatClass::Cone);
    // No session went down on the way.
    for host in &w.hosts {
        assert!(
            !host
                .session_events
                .iter()
                .any(|(_, e)| matches!(e, SessionEvent::Down { .. })),
            "{}",
            host.name
        );
    }
}

#[test]
fn an_idle_session_follows_a_rebinding_with_its_own_keepalive() {
    // Nobody sends anything after the flush: the client's session keep-alive
    // (10 s idle) crosses the NAT from a new port and moves both sessions.
    let (mut w, r, s, h, nat) = rebinding_arena(quiet());
    let old = w.session_addr(r, h).expect("up");
    w.flush_nat(nat);
    w.run_for(Duration::from_secs(12));
    let new = w.mapping(h, w.host(r).addr).expect("re-mapped");
    assert_ne!(new, old);
    assert_eq!(addr_changes(&w, r, h), vec![(old, new)]);
    assert_eq!(w.session_addr(r, h), Some(new));
    assert_eq!(
        w.session_addr(s, h),
        Some(new),
        "endpoint-independent mapping"
    );
    assert!(w.connected(h, r) && w.connected(h, s));
}

fn downs(w: &World, at: HostId) -> Vec<(Instant, DownReason)> {
    w.host(at)
        .session_events
        .iter()
        .filter_map(|(t, e)| match e {
            SessionEvent::Down { reason, .. } => Some((*t, *reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_binding_shorter_than_the_session_keepalive_costs_a_rebinding_every_time() {
    // The NAT forgets an idle mapping after 5 s; by default the session
    // sends a keep-alive only after 10 s without sending. So R's traffic
    // toward A hits a dead mapping (filtered), and every keep-alive of A
    // leaves from a new port: R's session follows each one (S6). A
    // keep-alive interval below the binding lifetime keeps the one mapping.
    for (keepalive, stable) in [
        (Duration::from_secs(10), false),
        (Duration::from_secs(4), true),
    ] {
        let mut w = World::new(6);
        w.session_config.keepalive_interval = keepalive;
        let (r, _) = servers(&mut w);
        let nat = w.add_nat(
            NatConfig::new(
                Mapping::EndpointIndependent,
                Filtering::AddressAndPortDependent,
            )
            .allocation(PortAllocation::Sequential)
            .binding_lifetime(Duration::from_secs(5)),
            Realm::Internet,
            "203.0.113.5".parse().unwrap(),
        );
        let h = w.add_host(
            "A",
            Realm::Behind(nat),
            a("10.0.0.2:4000"),
            MS10,
            quiet(),
            3,
        );
        w.connect(h, r);
        w.run_for(Duration::from_secs(60));
        let moves = addr_changes(&w, r, h);
        let filtered = w.drops.get(&Drop::Filtered).copied().unwrap_or(0);
        let case = format!("keep-alive {keepalive:?}");
        if stable {
            assert_eq!((moves.len(), filtered), (0, 0), "{case}");
            assert!(w.connected(h, r) && w.connected(r, h), "{case}");
            assert!(downs(&w, h).is_empty() && downs(&w, r).is_empty(), "{case}");
            assert_eq!(w.session_addr(r, h), Some(a("203.0.113.5:40000")));
        } else {
            assert!(moves.len() >= 3, "{case}: {moves:?}");
            assert!(filtered >= 1, "{case}: nothing filtered");
            // Each move is to the next sequential port: a fresh mapping.
            for (old, new) in &moves {
                assert_eq!(new.port(), old.port() + 1, "{case}: {moves:?}");
            }
        }
    }
}

#[test]
fn session_packets_share_the_impaired_link_unless_told_otherwise() {
    assert!(LinkConfig::default().impair_sessions, "impaired by default");
    for impair in [false, true] {
        let mut w = World::new(8);
        w.link = LinkConfig {
            loss: 1.0,
            impair_sessions: impair,
            ..LinkConfig::default()
        };
        let (r, _) = servers(&mut w);
        let p = place(&mut w, Preset::FullCone, 1, "A", MS10, quiet(), 3);
        w.connect(p.host, r);
        w.run_for(Duration::from_secs(6));
        assert_eq!(w.connected(p.host, r), !impair, "impair_sessions {impair}");
        let failed = w.host(p.host).session_events.iter().any(|(_, e)| {
            matches!(
                e,
                SessionEvent::HandshakeFailed {
                    error: HandshakeError::Timeout,
                    ..
                }
            )
        });
        assert_eq!(failed, impair);
        // Keep-alives and application datagrams are always impaired.
        w.send_datagram(p.host, w.host(r).addr, b"lost");
        w.run_for(MS10 * 3);
        assert!(w.host(r).app_inbox.is_empty());
    }
}

/// Control messages ride the sessions' reliable delivery: at 40 % loss on
/// every datagram (session packets included) both peers still dial, classify
/// and punch; the sessions retransmitted what was lost.
#[test]
fn control_messages_are_retransmitted_over_a_lossy_link() {
    use natrix_sim::scenario::{Outcome, PairScenario};
    let mut s = PairScenario::new(Preset::FullCone, Preset::PortRestrictedCone);
    s.link = LinkConfig {
        loss: 0.4,
        ..LinkConfig::default()
    };
    let (mut sent, mut retransmits, mut expired, mut punched) = (0, 0, 0, 0);
    for seed in 0..10 {
        let r = s.run(seed);
        punched += u32::from(r.outcome == Outcome::Punched);
        for h in &r.world.hosts {
            let st = h.endpoint.stats();
            sent += st.reliable_sent;
            retransmits += st.reliable_retransmits;
            // Given up after 5 s: at 40 % loss a message and its
            // acknowledgement cross with probability 0.36, so about 3 % of
            // the messages (8 attempts) expire — most of them delivered, only
            // their acknowledgements lost.
            expired += st.reliable_expired;
        }
        assert!(r.world.drops.get(&Drop::Loss).copied().unwrap_or(0) > 0);
    }
    assert!(
        retransmits > sent / 2,
        "{retransmits} retransmissions of {sent}"
    );
    assert!(expired * 10 <= sent, "{expired} of {sent} expired");
    assert_eq!(punched, 10);
}
