//! Property test: whatever the interleaving, every `request_punch` that returned
//! `Ok` ends in exactly one terminal event, no later than its deadline.
#![allow(missing_docs)]

mod harness;

use std::cell::Cell;
use std::rc::Rc;

use harness::{Net, Packet, ms, quiet};
use natrix_proto::{Event, Instant, NatClass, NodeId};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Punch { a: u8, b: u8, r: u8 },
    Cancel { a: u8, b: u8 },
    SessionDown { a: u8, b: u8 },
    SessionUp { a: u8, b: u8 },
    Advance { ms: u16 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..5, 0u8..5, 0u8..5).prop_map(|(a, b, r)| Op::Punch { a, b, r }),
        1 => (0u8..5, 0u8..5).prop_map(|(a, b)| Op::Cancel { a, b }),
        1 => (0u8..5, 0u8..5).prop_map(|(a, b)| Op::SessionDown { a, b }),
        1 => (0u8..5, 0u8..5).prop_map(|(a, b)| Op::SessionUp { a, b }),
        4 => (0u16..3_000).prop_map(|ms| Op::Advance { ms }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_punch_ends_in_exactly_one_terminal_event_by_its_deadline(
        latencies in proptest::collection::vec(1u64..150, 10),
        loss_percent in 0u64..60,
        loss_seed in any::<u64>(),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let config = quiet();
        let deadline = config.punch_deadline();
        let mut net = Net::new();
        let ids: Vec<NodeId> = (1..=5).map(|i| net.add(i, config.clone(), i * 7)).collect();
        let mut k = 0;
        for i in 0..5 {
            for j in (i + 1)..5 {
                net.set_latency(ids[i], ids[j], ms(latencies[k % latencies.len()]));
                k += 1;
            }
        }
        net.connect_all(&ids);
        net.announce_all(&ids, NatClass::Cone);
        // Seeded loss on every packet, control and datagram alike.
        let state = Rc::new(Cell::new(loss_seed | 1));
        let s2 = state.clone();
        net.filter = Some(Box::new(move |_p: &Packet| {
            let mut x = s2.get();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s2.set(x);
            x % 100 < loss_percent
        }));

        let mut started: Vec<(NodeId, u32, Instant)> = Vec::new();
        for op in ops {
            match op {
                Op::Punch { a, b, r } => {
                    let (a, b, r) = (ids[a as usize], ids[b as usize], ids[r as usize]);
                    let now = net.now;
                    if let Ok(id) = net.agent(a).request_punch(now, b, r) {
                        started.push((a, id, now));
                    }
                }
                Op::Cancel { a, b } => {
                    let now = net.now;
                    let b = ids[b as usize];
                    net.agent(ids[a as usize]).cancel_punch(now, b);
                }
                Op::SessionDown { a, b } if a != b => {
                    let now = net.now;
                    let b = ids[b as usize];
                    net.agent(ids[a as usize]).handle_session_down(now, b);
                }
                Op::SessionUp { a, b } if a != b => {
                    let addr = harness::addr_of(ids[b as usize]);
                    let b = ids[b as usize];
                    net.agent(ids[a as usize]).handle_session_up(b, addr).unwrap();
                }
                Op::Advance { ms: d } => net.run_for(ms(u64::from(d))),
                _ => {}
            }
            net.drain_all();
        }
        net.run_for(deadline + ms(1_000));

        for (a, id, at) in started {
            let terminal: Vec<(Instant, Event)> = net.nodes[&a]
                .events
                .iter()
                .filter(|(_, e)| matches!(e,
                    Event::PunchSucceeded { punch_id, .. } | Event::PunchFailed { punch_id, .. }
                        if *punch_id == id))
                .copied()
                .collect();
            prop_assert_eq!(terminal.len(), 1, "punch {} of {:?}: {:?}", id, a, terminal);
            prop_assert!(terminal[0].0 <= at + deadline);
        }
        for n in net.nodes.values() {
            prop_assert_eq!(n.agent.pending_punches(), 0);
            let s = n.agent.stats();
            prop_assert_eq!(
                s.punches_attempted,
                s.punches_succeeded + s.punch_timeouts + s.punch_rejections + s.punches_cancelled
            );
        }
    }
}
