//! Property test (C2 + C4): whatever sequence of sweep results arrives, the
//! published (class, reflex) pair only changes on a sweep with at least two
//! observations from distinct destination IPs, and never without a reflex.
#![allow(missing_docs)]

mod harness;

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use harness::{Net, Packet, ms, quiet};
use natrix_proto::classify::Observation;
use natrix_proto::discovery::decide_sweep;
use natrix_proto::wire::NodeId;
use natrix_proto::{Announcement, Channel, Event, SweepObservation, SweepOutcome};
use proptest::prelude::*;

fn ip(i: u8) -> IpAddr {
    IpAddr::from([198, 51, 100, 10 + i])
}

/// One sweep's worth of answers: (peer, destination IP index, observed port).
fn sweep_input() -> impl Strategy<Value = (Vec<(u64, u8, u16)>, bool)> {
    (
        proptest::collection::vec((0u64..6, 0u8..3, 7000u16..7003), 0..6),
        any::<bool>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn c2_published_pair_changes_only_on_two_distinct_destinations(
        sweeps in proptest::collection::vec(sweep_input(), 1..12)
    ) {
        let bind: SocketAddr = "10.0.0.2:4000".parse().unwrap();
        let mut published: Option<Announcement> = None;
        for (answers, missed) in sweeps {
            let obs: Vec<SweepObservation> = answers
                .iter()
                .map(|(peer, dst, port)| SweepObservation {
                    destination: ip(*dst),
                    observation: Observation {
                        peer: NodeId(*peer),
                        reflex: SocketAddr::new("203.0.113.1".parse().unwrap(), *port),
                    },
                })
                .collect();
            let outcome = decide_sweep(bind, &[], &obs, missed);
            let next = match outcome {
                SweepOutcome::Committed(c) => {
                    let reflex = c.reflex;
                    prop_assert!(reflex.is_some(), "a class without its reflex");
                    Some(Announcement { reflex: reflex.unwrap(), class: c.class, profile: None })
                }
                _ => published,
            };
            if next != published {
                let mut dsts: Vec<IpAddr> = obs.iter().map(|o| o.destination).collect();
                dsts.sort();
                dsts.dedup();
                prop_assert!(dsts.len() >= 2 && !missed, "changed on {:?} missed={}", dsts, missed);
            }
            published = next;
        }
    }

    /// The same rule, end to end through the agent: random answers lost, random
    /// reflex ports, peers sharing IPs.
    #[test]
    fn c2_agent_publishes_only_after_two_distinct_answers(
        rounds in proptest::collection::vec(
            (proptest::collection::vec(any::<bool>(), 5), proptest::collection::vec(7000u16..7002, 5)),
            1..6,
        )
    ) {
        let mut net = Net::new();
        let x = net.add(1, quiet(), 1);
        let mut ids = vec![x];
        for i in 0..5u8 {
            // Peers 2..6 on three IPs: two pairs share one.
            let addr = SocketAddr::new(ip(i % 3), 5000 + u16::from(i));
            ids.push(net.add_at(2 + u64::from(i), addr, addr, quiet(), 10 + u64::from(i)));
        }
        net.connect_all(&ids);
        let drops = Rc::new(RefCell::new(vec![false; 5]));
        let d2 = drops.clone();
        net.filter = Some(Box::new(move |p| match p {
            Packet::Control { from, channel: Channel::ReflexResponse, .. } => d2.borrow()[(from.0 - 2) as usize],
            _ => false,
        }));
        for (lost, ports) in rounds {
            *drops.borrow_mut() = lost.clone();
            for i in 0..5u64 {
                net.seen_as.insert((x, NodeId(2 + i)), SocketAddr::new("203.0.113.1".parse().unwrap(), ports[i as usize]));
            }
            let now = net.now;
            net.agent(x).reclassify(now);
            net.run_for(ms(6_000));
        }
        // Every change is followed, at the same instant, by the committing sweep.
        let events = net.all_events(x);
        for (k, (t, e)) in events.iter().enumerate() {
            if let Event::ClassificationChanged { .. } = e {
                let next = events.get(k + 1);
                let ok = matches!(next, Some((t2, Event::SweepFinished { outcome: SweepOutcome::Committed(c), .. }))
                    if t2 == t && c.observations >= 2 && c.reflex.is_some());
                prop_assert!(ok, "{:?} then {:?}", e, next);
            }
        }
    }
}
