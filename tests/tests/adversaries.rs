//! Adversaries on the simulated network. Every adversary is a host with its
//! own key and real sessions: what it injects is sealed on its session and
//! authenticated as coming from its own node id. In every scenario a victim
//! host receives zero datagrams, a legitimate punch running at the same time
//! still succeeds, and the attacked nodes' tables stay within their bounds.
#![allow(missing_docs)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use natrix_proto::wire::{
    Keepalive, NodeId, PunchAck, PunchIntroduce, PunchRequest, RendezvousMessage,
};
use natrix_proto::{Channel, Config, Event, TraversalError};
use natrix_session::SessionEvent;
use natrix_sim::LinkConfig;
use natrix_sim::preset::{Preset, place};
use natrix_sim::scenario::{Topology, topology};
use natrix_sim::world::{HostId, Realm, World};

fn victim_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 199)), 53)
}

fn quiet() -> Config {
    Config::builder()
        .auto_reclassify(false)
        .build()
        .expect("valid")
}

/// The standard topology (A and B behind full-cone NATs so attack traffic
/// could reach them), plus a public attacker M and a public victim V; M has
/// real sessions with R (M dialled) and with A and B (they dialled M).
fn arena() -> (Topology, HostId, HostId) {
    let mut t = topology(
        7,
        Preset::FullCone,
        Preset::FullCone,
        LinkConfig::default(),
        [Duration::from_millis(10); 3],
        &Config::default(),
    );
    let m_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 66)), 6666);
    let m = t.world.add_host(
        "M",
        Realm::Internet,
        m_addr,
        Duration::from_millis(10),
        quiet(),
        66,
    );
    let v = t.world.add_host(
        "V",
        Realm::Internet,
        victim_addr(),
        Duration::from_millis(10),
        quiet(),
        99,
    );
    // M is an authenticated peer of R and of both A and B.
    t.world.connect(m, t.r);
    t.world.connect(t.a.host, m);
    t.world.connect(t.b.host, m);
    t.world.run_for(Duration::from_millis(200));
    for (x, y) in [(m, t.r), (t.a.host, m), (t.b.host, m)] {
        assert!(t.world.connected(x, y) && t.world.connected(y, x));
    }
    (t, m, v)
}

fn encode(m: RendezvousMessage) -> Vec<u8> {
    let (b, n) = m.to_bytes();
    b[..n].to_vec()
}

fn victim_untouched(w: &World, v: HostId) {
    assert_eq!(
        w.sent_to_ip.get(&victim_addr().ip()).copied().unwrap_or(0),
        0,
        "datagrams addressed to the victim"
    );
    assert!(w.host(v).app_inbox.is_empty());
}

fn legit_punch_succeeds(w: &mut World, a: HostId, b: NodeId, r: NodeId) {
    let t0 = w.now();
    let id = w.agent(a).request_punch(t0, b, r).expect("started");
    w.run_for(Duration::from_secs(6));
    let ends: Vec<_> = w
        .host(a)
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::PunchSucceeded { punch_id, .. } | Event::PunchFailed { punch_id, .. } if *punch_id == id))
        .collect();
    assert!(
        matches!(ends[..], [(_, Event::PunchSucceeded { .. })]),
        "{ends:?}"
    );
}

#[test]
fn reflection_through_the_coordinator_reaches_no_victim() {
    let (mut t, m, v) = arena();
    let (b_id, r_id) = (t.b_id(), t.r_id());
    let w = &mut t.world;
    for id in 1..=3 {
        let req = PunchRequest {
            target: b_id,
            punch_id: NonZeroU32::new(id),
            self_reflex: victim_addr(),
        };
        assert!(w.inject_control(
            m,
            t.r,
            Channel::Rendezvous,
            &encode(RendezvousMessage::Request(req)),
        ));
    }
    legit_punch_succeeds(w, t.a.host, b_id, r_id);
    victim_untouched(w, v);
    assert_eq!(w.agent(t.r).stats().requests_rejected, 3);
}

#[test]
fn reflection_through_a_direct_introduce_reaches_no_victim() {
    let (mut t, m, v) = arena();
    let (a_id, b_id, r_id) = (t.a_id(), t.b_id(), t.r_id());
    let w = &mut t.world;
    let fire = natrix_sim::world::WALL_EPOCH_MS + 1_300;
    for peer in [a_id, NodeId(1234)] {
        let intro = PunchIntroduce {
            peer,
            peer_reflex: victim_addr(),
            fire_at_ms: fire,
        };
        assert!(w.inject_control(
            m,
            t.b.host,
            Channel::Rendezvous,
            &encode(RendezvousMessage::Introduce(intro)),
        ));
    }
    legit_punch_succeeds(w, t.a.host, b_id, r_id);
    victim_untouched(w, v);
    assert_eq!(w.agent(t.b.host).stats().introduces_dropped_reflection, 2);
}

#[test]
fn malicious_coordinator_cannot_park_trains_misdirect_or_fake_acks() {
    let (mut t, m, v) = arena();
    // Two more honest peers for the legitimate punch.
    let c = place(
        &mut t.world,
        Preset::RestrictedCone,
        3,
        "C",
        Duration::from_millis(10),
        Config::default(),
        12,
    );
    let d = place(
        &mut t.world,
        Preset::PortRestrictedCone,
        4,
        "D",
        Duration::from_millis(10),
        Config::default(),
        13,
    );
    for p in [c.host, d.host] {
        t.world.connect(p, t.r);
        t.world.connect(p, t.s);
    }
    t.world.run_for(Duration::from_secs(1));
    let (a_id, b_id, r_id) = (t.a_id(), t.b_id(), t.r_id());
    let w = &mut t.world;
    let (m_id, c_id, d_id) = (w.id(m), w.id(c.host), w.id(d.host));
    let (a, b) = (t.a.host, t.b.host);
    // A asks M to coordinate a punch to B. M answers with a fire time in the
    // far future, an introduce naming a peer A never asked about pointing at
    // the victim, and an ack for a punch that never happened.
    let now = w.now();
    let id = w.agent(a).request_punch(now, b_id, m_id).expect("started");
    let b_reflex = w.agent(b).classification().expect("classified").reflex;
    let far = PunchIntroduce {
        peer: b_id,
        peer_reflex: b_reflex,
        fire_at_ms: u64::MAX,
    };
    w.inject_control(
        m,
        a,
        Channel::Rendezvous,
        &encode(RendezvousMessage::Introduce(far)),
    );
    let wrong = PunchIntroduce {
        peer: c_id,
        peer_reflex: victim_addr(),
        fire_at_ms: 0,
    };
    w.inject_control(
        m,
        a,
        Channel::Rendezvous,
        &encode(RendezvousMessage::Introduce(wrong)),
    );
    let fake = PunchAck {
        from_peer: d_id,
        to_peer: a_id,
        punch_id: 77,
    };
    w.inject_control(
        m,
        a,
        Channel::Rendezvous,
        &encode(RendezvousMessage::Ack(fake)),
    );
    let sent_before = w.host(a).datagrams_sent;
    // Meanwhile C punches D through the honest coordinator.
    legit_punch_succeeds(w, c.host, d_id, r_id);
    w.run_for(Duration::from_secs(1));
    let ends: Vec<_> = w
        .host(a)
        .events
        .iter()
        .filter_map(|(at, e)| match e {
            Event::PunchFailed {
                punch_id, error, ..
            } if *punch_id == id => Some((*at, *error)),
            Event::PunchSucceeded { punch_id, .. } if *punch_id == id => panic!("succeeded?"),
            _ => None,
        })
        .collect();
    assert_eq!(ends.len(), 1);
    assert!(matches!(ends[0].1, TraversalError::DeadlinePassed { .. }));
    assert!(ends[0].0 <= now + Config::default().punch_deadline());
    assert_eq!(
        w.host(a).datagrams_sent,
        sent_before,
        "a far-future fire time sends nothing before the deadline"
    );
    assert_eq!(w.agent(a).pending_punches(), 0);
    assert!(w.agent(a).stats().acks_dropped >= 1);
    assert!(w.agent(a).stats().introduces_dropped_reflection >= 1);
    victim_untouched(w, v);
}

#[test]
fn off_path_keepalive_spray_does_not_break_a_punch() {
    let (mut t, m, v) = arena();
    let (a_id, b_id, r_id) = (t.a_id(), t.b_id(), t.r_id());
    let w = &mut t.world;
    let (a, b) = (t.a.host, t.b.host);
    let a_public = w.agent(a).classification().expect("classified").reflex;
    let b_public = w.agent(b).classification().expect("classified").reflex;
    let t0 = w.now();
    let id = w.agent(a).request_punch(t0, b_id, r_id).expect("started");
    // Spray both ends every millisecond for 200 ms: random senders and
    // tokens, and B's id with wrong tokens.
    for i in 0..200u32 {
        for (to, n) in [(a_public, 1u64), (b_public, 2)] {
            let forged = [
                Keepalive {
                    sender: NodeId(1_000 + u64::from(i) * n),
                    punch_id: i.wrapping_mul(2_654_435_761),
                },
                Keepalive {
                    sender: if n == 1 { b_id } else { a_id },
                    punch_id: i | 0x8000_0000,
                },
            ];
            for k in forged {
                w.send_datagram(m, to, &k.to_bytes());
            }
        }
        w.run_for(Duration::from_millis(1));
    }
    w.run_for(Duration::from_secs(6));
    let ok = w
        .host(a)
        .events
        .iter()
        .any(|(_, e)| matches!(e, Event::PunchSucceeded { punch_id, .. } if *punch_id == id));
    assert!(ok, "the legitimate punch succeeded");
    assert!(w.agent(a).stats().keepalives_dropped >= 200);
    assert!(w.agent(b).stats().keepalives_dropped >= 200);
    victim_untouched(w, v);
}

#[test]
fn ten_thousand_sybils_flooding_the_coordinator() {
    let (mut t, _m, v) = arena();
    let (b_id, r_id, r) = (t.b_id(), t.r_id(), t.r);
    let w = &mut t.world;
    let cap = Config::default().budget_table_capacity() as usize;
    let max_sessions = w.session_config.max_sessions;
    let peers_before = w.agent(r).known_peers();
    // M controls 100 addresses (one IP each: from a single IP, S5's
    // per-IP budget of validated handshakes under load would stop the flood
    // long before the session table fills; `session/tests/regressions.rs`
    // shows that). Each takes a fresh key (a fresh node id)
    // 100 times: 10,000 sybils, each dialling R through a real handshake
    // (R demands cookies above its handshake rate: S5) and sending one
    // request sealed on its own session. Half claim the victim as their
    // reflex, half well-formed requests for B (which B refuses: nobody
    // announced those ids). A sybil abandons its session without a word.
    let pool: Vec<HostId> = (0..100u16)
        .map(|i| {
            let ip = Ipv4Addr::new(198, 18, 66, u8::try_from(i + 1).expect("100 hosts"));
            w.add_host(
                &format!("M{i}"),
                Realm::Internet,
                SocketAddr::new(IpAddr::V4(ip), 7_000 + i),
                Duration::from_millis(10),
                quiet(),
                7_000 + u64::from(i),
            )
        })
        .collect();
    let mut sybils = std::collections::BTreeSet::new();
    for round in 0..100u64 {
        for (i, &h) in pool.iter().enumerate() {
            let id = if round == 0 {
                w.id(h)
            } else {
                w.new_identity(h)
            };
            assert!(sybils.insert(id), "a fresh node id every time");
            w.connect(h, r);
            let reflex = if i % 2 == 0 {
                victim_addr()
            } else {
                w.host(h).addr
            };
            let req = PunchRequest {
                target: b_id,
                punch_id: NonZeroU32::new(1),
                self_reflex: reflex,
            };
            // Queued in the sybil's endpoint until its handshake completes.
            assert!(w.inject_control(
                h,
                r,
                Channel::Rendezvous,
                &encode(RendezvousMessage::Request(req)),
            ));
        }
        if round == 50 {
            // A legitimate punch in the middle of the flood.
            legit_punch_succeeds(w, t.a.host, b_id, r_id);
        } else {
            w.run_for(Duration::from_millis(100));
        }
        assert!(w.agent(r).budget_entries().0 <= cap);
        assert!(w.endpoint(r).stats().sessions_live as usize <= max_sessions);
    }
    // The last sybils leave too; their sessions die of silence.
    for &h in &pool {
        w.new_identity(h);
    }
    let r_stats = w.endpoint(r).stats();
    let agent_stats = w.agent(r).stats();
    println!("R's sessions after the flood: {r_stats:?}");
    println!("R's agent: {agent_stats:?}");
    // The session layer held R at max_sessions and refused the rest (S5
    // cookies kept the handshake rate in check on the way).
    assert!(r_stats.cookies_sent > 0);
    assert!(r_stats.handshakes_refused > 0);
    let accepted = (r_stats.sessions_live as usize).min(max_sessions);
    assert!(accepted >= max_sessions - 10, "{accepted} sessions");
    // Every request that got through was authenticated as its own sybil:
    // the victim claims were rejected, the others mediated.
    let handled = agent_stats.requests_rejected + agent_stats.requests_mediated;
    assert!(
        handled >= (max_sessions - 10) as u64,
        "{handled} requests handled"
    );
    assert!(agent_stats.requests_rejected >= handled / 2 - 50);
    w.run_for(Duration::from_secs(40));
    let r_agent = w.agent(r);
    assert_eq!(
        r_agent.known_peers(),
        peers_before,
        "sybils leave no directory entries once their sessions are gone"
    );
    assert!(r_agent.budget_entries().0 <= cap);
    let b = w.agent(t.b.host);
    assert!(b.pending_punches() <= Config::default().responder_concurrent_trains() as usize);
    assert!(b.stats().introduces_dropped_reflection >= agent_stats.requests_mediated - 50);
    // The honest sessions outlived the flood.
    for p in [t.a.host, t.b.host] {
        assert!(w.connected(p, r) && w.connected(r, p));
    }
    let downs = w
        .host(r)
        .session_events
        .iter()
        .filter(|(_, e)| matches!(e, SessionEvent::Down { .. }))
        .count();
    assert!(downs >= accepted - 10, "{downs} sybil sessions died");
    victim_untouched(w, v);
}
