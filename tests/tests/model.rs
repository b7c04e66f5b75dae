//! Model-based property test: random operation sequences on a simulated
//! network — punches, reclassifications, sessions down and up, time, loss
//! bursts, NAT rebinding — checking the invariants that must hold for any of
//! them:
//!
//! * nothing panics and the simulation never runs away (step budget);
//! * every punch `request_punch` started ends in exactly one terminal event,
//!   no later than its deadline;
//! * the statistics partition holds at every node;
//! * no node ever sends a datagram to an address it was neither introduced to
//!   nor received something from.
#![allow(missing_docs)]

use std::time::Duration;

use natrix_proto::wire::NodeId;
use natrix_proto::{Config, Event, Instant};
use natrix_sim::LinkConfig;
use natrix_sim::preset::{Placed, Preset, place};
use natrix_sim::scenario::topology;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Punch(usize, usize),
    Reclassify(usize),
    SessionDown(usize, bool),
    SessionUp(usize, bool),
    Advance(u64),
    LossBurst(u8, u64),
    Rebind(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4usize, 0..4usize).prop_map(|(a, b)| Op::Punch(a, b)),
        1 => (0..4usize).prop_map(Op::Reclassify),
        1 => (0..4usize, any::<bool>()).prop_map(|(a, r)| Op::SessionDown(a, r)),
        1 => (0..4usize, any::<bool>()).prop_map(|(a, r)| Op::SessionUp(a, r)),
        4 => (0u64..3_000).prop_map(Op::Advance),
        1 => (0u8..80, 0u64..2_000).prop_map(|(p, ms)| Op::LossBurst(p, ms)),
        1 => (0..4usize).prop_map(Op::Rebind),
    ]
}

fn preset() -> impl Strategy<Value = Preset> {
    prop::sample::select(Preset::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn random_operations_keep_every_invariant(
        seed in any::<u64>(),
        presets in proptest::collection::vec(preset(), 4),
        ops in proptest::collection::vec(op(), 1..30),
    ) {
        let config = Config::default();
        let deadline = config.punch_deadline();
        let mut t = topology(seed, presets[0], presets[1], LinkConfig::default(), [Duration::from_millis(15); 3], &config);
        let mut peers: Vec<Placed> = vec![t.a.clone(), t.b.clone()];
        for (i, p) in presets[2..].iter().enumerate() {
            let slot = 3 + i as u8;
            let placed = place(&mut t.world, *p, slot, &format!("P{slot}"), Duration::from_millis(15), config.clone(), seed ^ u64::from(slot));
            t.world.connect(placed.host, t.r);
            t.world.connect(placed.host, t.s);
            peers.push(placed);
        }
        let w = &mut t.world;
        w.run_for(Duration::from_secs(1));
        let ids: Vec<NodeId> = peers.iter().map(|p| w.host(p.host).id).collect();
        let r_id = w.host(t.r).id;
        let mut started: Vec<(usize, u32, Instant)> = Vec::new();
        for op in ops {
            match op {
                Op::Punch(a, b) => {
                    let now = w.now();
                    if let Ok(id) = w.agent(peers[a].host).request_punch(now, ids[b], r_id) {
                        started.push((a, id, now));
                    }
                    w.drain(peers[a].host);
                }
                Op::Reclassify(a) => {
                    let now = w.now();
                    let _ = w.agent(peers[a].host).reclassify(now);
                    w.drain(peers[a].host);
                }
                Op::SessionDown(a, to_r) => w.disconnect(peers[a].host, if to_r { t.r } else { t.s }),
                Op::SessionUp(a, to_r) => {
                    let server = if to_r { t.r } else { t.s };
                    if !w.connected(peers[a].host, server) {
                        w.connect(peers[a].host, server);
                    }
                }
                Op::Advance(ms) => w.run_for(Duration::from_millis(ms)),
                Op::LossBurst(p, ms) => {
                    w.link.loss = f64::from(p) / 100.0;
                    w.run_for(Duration::from_millis(ms));
                    w.link.loss = 0.0;
                }
                Op::Rebind(a) => {
                    for n in peers[a].nats.clone() {
                        w.flush_nat(n);
                    }
                }
            }
        }
        w.run_for(deadline + Duration::from_secs(1));

        for (a, id, at) in &started {
            let ends: Vec<Instant> = w
                .host(peers[*a].host)
                .events
                .iter()
                .filter(|(_, e)| matches!(e, Event::PunchSucceeded { punch_id, .. } | Event::PunchFailed { punch_id, .. } if punch_id == id))
                .map(|(t, _)| *t)
                .collect();
            prop_assert_eq!(ends.len(), 1, "punch {} from peer {}", id, a);
            prop_assert!(ends[0] <= *at + deadline, "punch {} ended late", id);
        }
        for h in &w.hosts {
            let s = h.agent.stats();
            prop_assert_eq!(
                s.punches_attempted,
                s.punches_succeeded + s.punch_timeouts + s.punch_rejections + s.punches_cancelled,
                "{}: every started punch has ended", h.name
            );
            prop_assert!(h.unexplained_sends.is_empty(), "{} sent to {:?}", h.name, h.unexplained_sends);
        }
    }
}
