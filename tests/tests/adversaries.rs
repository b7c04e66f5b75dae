//! Adversaries on the simulated network. In every scenario a victim host
//! receives zero datagrams, a legitimate punch running at the same time still
//! succeeds, and the attacked nodes' tables stay within their bounds.
#![allow(missing_docs)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use natrix_proto::wire::{
    Keepalive, NodeId, PunchAck, PunchIntroduce, PunchRequest, RendezvousMessage,
};
use natrix_proto::{Channel, Config, Event, TraversalError};
use natrix_sim::LinkConfig;
use natrix_sim::preset::{Preset, place};
use natrix_sim::scenario::{A_ID, B_ID, R_ID, Topology, topology};
use natrix_sim::world::{HostId, Realm, World};

const M_ID: NodeId = NodeId(66);
const V_ID: NodeId = NodeId(99);

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
/// could reach them), plus a public attacker M and a public victim V.
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
        M_ID,
        Realm::Internet,
        m_addr,
        Duration::from_millis(10),
        quiet(),
        66,
    );
    let v = t.world.add_host(
        "V",
        V_ID,
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
    let w = &mut t.world;
    for id in 1..=3 {
        let req = PunchRequest {
            target: B_ID,
            punch_id: NonZeroU32::new(id),
            self_reflex: victim_addr(),
        };
        w.inject_control(
            m,
            t.r,
            Channel::Rendezvous,
            &encode(RendezvousMessage::Request(req)),
        );
    }
    legit_punch_succeeds(w, t.a.host, B_ID, R_ID);
    victim_untouched(w, v);
    assert_eq!(w.agent(t.r).stats().requests_rejected, 3);
}

#[test]
fn reflection_through_a_direct_introduce_reaches_no_victim() {
    let (mut t, m, v) = arena();
    let w = &mut t.world;
    let fire = natrix_sim::world::WALL_EPOCH_MS + 1_100;
    for peer in [A_ID, NodeId(1234)] {
        let intro = PunchIntroduce {
            peer,
            peer_reflex: victim_addr(),
            fire_at_ms: fire,
        };
        w.inject_control(
            m,
            t.b.host,
            Channel::Rendezvous,
            &encode(RendezvousMessage::Introduce(intro)),
        );
    }
    legit_punch_succeeds(w, t.a.host, B_ID, R_ID);
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
        NodeId(12),
        Duration::from_millis(10),
        Config::default(),
        12,
    );
    let d = place(
        &mut t.world,
        Preset::PortRestrictedCone,
        4,
        "D",
        NodeId(13),
        Duration::from_millis(10),
        Config::default(),
        13,
    );
    for p in [c.host, d.host] {
        t.world.connect(p, t.r);
        t.world.connect(p, t.s);
    }
    t.world.run_for(Duration::from_secs(1));
    let w = &mut t.world;
    let (a, b) = (t.a.host, t.b.host);
    // A asks M to coordinate a punch to B. M answers with a fire time in the
    // far future, an introduce naming a peer A never asked about pointing at
    // the victim, and an ack for a punch that never happened.
    let now = w.now();
    let id = w.agent(a).request_punch(now, B_ID, M_ID).expect("started");
    let b_reflex = w.agent(b).classification().expect("classified").reflex;
    let far = PunchIntroduce {
        peer: B_ID,
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
        peer: NodeId(12),
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
        from_peer: NodeId(13),
        to_peer: A_ID,
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
    legit_punch_succeeds(w, c.host, NodeId(13), R_ID);
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
    let w = &mut t.world;
    let (a, b) = (t.a.host, t.b.host);
    let a_public = w.agent(a).classification().expect("classified").reflex;
    let b_public = w.agent(b).classification().expect("classified").reflex;
    let t0 = w.now();
    let id = w.agent(a).request_punch(t0, B_ID, R_ID).expect("started");
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
                    sender: if n == 1 { B_ID } else { A_ID },
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
    let (mut t, m, v) = arena();
    let w = &mut t.world;
    let m_addr = w.host(m).addr;
    let cap = Config::default().budget_table_capacity() as usize;
    let peers_before = w.agent(t.r).known_peers();
    // 10,000 ids, authenticated on M's sessions, each sending one request:
    // half claim the victim as their reflex, half are well-formed requests
    // for B (which B refuses: nobody announced those ids).
    for chunk in 0..100u64 {
        for i in 0..100u64 {
            let sybil = NodeId(1_000_000 + chunk * 100 + i);
            let reflex = if i % 2 == 0 { victim_addr() } else { m_addr };
            let req = PunchRequest {
                target: B_ID,
                punch_id: NonZeroU32::new(1),
                self_reflex: reflex,
            };
            let now = w.now();
            let wall = natrix_sim::world::WALL_EPOCH_MS + now.as_nanos() / 1_000_000;
            let _ = w.agent(t.r).handle_control(
                now,
                wall,
                sybil,
                m_addr,
                Channel::Rendezvous,
                &encode(RendezvousMessage::Request(req)),
            );
        }
        w.drain(t.r);
        if chunk == 50 {
            // A legitimate punch in the middle of the flood.
            legit_punch_succeeds(w, t.a.host, B_ID, R_ID);
        } else {
            w.run_for(Duration::from_millis(5));
        }
        let r = w.agent(t.r);
        assert!(r.budget_entries().0 <= cap);
    }
    w.run_for(Duration::from_secs(6));
    let r = w.agent(t.r);
    assert_eq!(
        r.known_peers(),
        peers_before,
        "sybils add no directory entries"
    );
    assert!(r.budget_entries().0 <= cap);
    let b = w.agent(t.b.host);
    assert!(b.pending_punches() <= Config::default().responder_concurrent_trains() as usize);
    assert!(b.stats().introduces_dropped_reflection >= 4_000);
    victim_untouched(w, v);
}
