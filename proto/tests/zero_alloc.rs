//! Steady state allocates nothing, at realistic sizes (issue #12). Counted with
//! a counting global allocator — a count, unlike a time, is deterministic and
//! can be asserted.
//!
//! Each scenario runs one warm-up round at its full size, then one measured
//! round of the same kind, which must make **0** heap allocations:
//!
//! * a coordinator mediating for 10,000 requesters round-robin toward 1,000
//!   targets, simulated time advancing 3 ms per request so that its 4,096-entry
//!   budget and mediated tables are full and reclaim expired slots (evicting);
//!   every request mediated;
//! * an endpoint running 1,000 concurrent punches (requests, introduces,
//!   trains, stray keep-alives, timer ticks) that end by ack (the peer's valid
//!   keep-alive, then its forwarded `PunchAck`), by deadline, or by cancel;
//! * the small cases: 4 requesters and one target; one punch fed keep-alives,
//!   application datagrams and clock-offset refreshes.
//!
//! Every round also checks that it did what it claims (mediations counted,
//! one terminal event of the right kind per punch), so the test cannot pass
//! by doing nothing; and a probe checks that the counter sees allocations.
//! All counts are printed before anything is asserted.
//!
//! This test is its own process (`harness = false`): the counter is global,
//! and a test harness's other threads allocating while it measures would be
//! counted too.
#![allow(missing_docs)]

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use natrix_proto::rendezvous::keepalive_token;
use natrix_proto::wire::{Keepalive, NodeId, PunchAck, PunchIntroduce, PunchRequest};
use natrix_proto::{
    Agent, Channel, Config, DatagramVerdict, Event, Instant, NatClass, PunchStage, Role, Transmit,
    TraversalError,
};

// dhat's allocator counts every allocation; its heap statistics are exact.
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn allocations() -> u64 {
    dhat::HeapStats::get().total_blocks
}

/// Unix time (ms) at simulated instant zero.
const WALL0: u64 = 1_700_000_000_000;
const ME: NodeId = NodeId(1);
const COORDINATOR: NodeId = NodeId(2);

fn wall_ms(now: Instant) -> u64 {
    WALL0 + now.as_nanos() / 1_000_000
}

/// A distinct IPv4 address per index under `first` (indices below 2^24).
fn ip(first: u8, i: u64) -> SocketAddr {
    SocketAddr::new(
        [first, (i >> 16) as u8, (i >> 8) as u8, i as u8].into(),
        4000,
    )
}

fn me_addr() -> SocketAddr {
    ip(192, 1)
}

fn coordinator_addr() -> SocketAddr {
    ip(192, 2)
}

/// Drains the transmits; (control messages, datagrams).
fn drain_transmits(a: &mut Agent) -> (usize, usize) {
    let (mut control, mut datagrams) = (0, 0);
    while let Some(t) = a.poll_transmit() {
        match t {
            Transmit::Control { .. } => control += 1,
            Transmit::Datagram { .. } | Transmit::Spray { .. } => datagrams += 1,
        }
    }
    (control, datagrams)
}

/// One scenario's measured round.
struct Measured {
    name: &'static str,
    allocations: u64,
}

// ----- coordinator -----

/// A coordinator with sessions and announcements (reflex IP = session IP) for
/// `requesters` requesters (ids from 1,000) and `targets` targets (ids from
/// 1,000,000), RTTs known; budget large enough not to reject. Requester `i`
/// asks target `i % targets`.
struct Coordinator {
    agent: Agent,
    requesters: u64,
    targets: u64,
    now: Instant,
}

impl Coordinator {
    const STEP: Duration = Duration::from_millis(3);

    fn requester(i: u64) -> (NodeId, SocketAddr) {
        (NodeId(1_000 + i), ip(10, i))
    }

    fn target(j: u64) -> (NodeId, SocketAddr) {
        (NodeId(1_000_000 + j), ip(11, j))
    }

    fn new(requesters: u64, targets: u64) -> Coordinator {
        let cfg = Config::builder()
            .auto_reclassify(false)
            .coordinator_requests_per_window(u32::MAX)
            .build()
            .unwrap();
        let mut agent = Agent::new(COORDINATOR, coordinator_addr(), cfg, 1);
        let peers = (0..requesters)
            .map(Self::requester)
            .chain((0..targets).map(Self::target));
        for (id, addr) in peers {
            agent.handle_session_up(id, addr).unwrap();
            agent
                .handle_peer_announcement(id, addr, NatClass::Cone)
                .unwrap();
            agent.handle_rtt(id, Duration::from_millis(20)).unwrap();
        }
        // Set-up: each session coming up queued a natrix Hello (issue #11).
        drain_transmits(&mut agent);
        Coordinator {
            agent,
            requesters,
            targets,
            now: Instant::ZERO,
        }
    }

    /// Requester `i`'s request, mediated: two introduces out.
    fn mediate(&mut self, i: u64) {
        self.now += Self::STEP;
        let (from, session) = Self::requester(i);
        let req = PunchRequest {
            target: Self::target(i % self.targets).0,
            punch_id: NonZeroU32::new(self.now.as_nanos() as u32 | 1),
            self_reflex: session,
        };
        let (bytes, len) = req.to_bytes();
        self.agent
            .handle_control(
                self.now,
                wall_ms(self.now),
                from,
                session,
                Channel::Rendezvous,
                &bytes[..len],
            )
            .unwrap();
        assert_eq!(drain_transmits(&mut self.agent), (2, 0), "two introduces");
    }

    /// One request from every requester, round-robin; checks that all were
    /// mediated.
    fn round(&mut self) {
        let before = self.agent.stats();
        for i in 0..self.requesters {
            self.mediate(i);
        }
        let after = self.agent.stats();
        assert_eq!(
            after.requests_mediated - before.requests_mediated,
            self.requesters,
            "every request mediated"
        );
        assert_eq!(after.requests_rejected, 0, "no request rejected");
    }
}

/// 10,000 requesters, 1,000 targets: the budget table (4,096) is full and
/// reclaims an expired slot on every request.
fn coordinator_at_scale() -> Measured {
    let mut c = Coordinator::new(10_000, 1_000);
    let capacity = c.agent.config().budget_table_capacity() as usize;
    c.round();
    let before = allocations();
    c.round();
    let allocations = allocations() - before;
    assert_eq!(c.agent.budget_entries().0, capacity, "budget table full");
    Measured {
        name: "coordinator: 10,000 mediations, 10,000 requesters (evicting), 1,000 targets",
        allocations,
    }
}

/// The original small case: 4 requesters, one target, 10,000 mediations.
fn coordinator_small() -> Measured {
    let mut c = Coordinator::new(4, 1);
    for _ in 0..25 {
        c.round();
    }
    let before = allocations();
    for _ in 0..2_500 {
        c.round();
    }
    Measured {
        name: "coordinator: 10,000 mediations, 4 requesters, 1 target",
        allocations: allocations() - before,
    }
}

// ----- endpoint -----

/// How the punches of an endpoint round end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// The peer's valid keep-alive, then its `PunchAck` forwarded by the
    /// coordinator (R10: the train stops).
    Ack,
    /// The punch deadline passes with the trains running.
    Deadline,
    /// `cancel_punch`.
    Cancel,
}

/// Terminal events of one round, by kind.
#[derive(Debug, Default, PartialEq, Eq)]
struct Outcomes {
    succeeded: usize,
    timed_out: usize,
    cancelled: usize,
    other: usize,
}

/// An endpoint with a session to its coordinator and a local classification
/// (Cone), punching `punches` targets at once; every round starts a fresh
/// punch to each.
struct Endpoint {
    agent: Agent,
    punches: u64,
    now: Instant,
    /// The punch ids of the round, by target (capacity reserved up front).
    ids: Vec<u32>,
}

impl Endpoint {
    /// Fire lead the test's coordinator gives.
    const LEAD_MS: u64 = 50;
    /// A round starts this long after the previous one started, or when it
    /// ended if that is later.
    const ROUND_GAP: Duration = Duration::from_secs(1);

    fn peer(j: u64) -> (NodeId, SocketAddr) {
        (NodeId(1_000_000 + j), ip(11, j))
    }

    fn new(punches: u64) -> Endpoint {
        let cfg = Config::builder().auto_reclassify(false).build().unwrap();
        assert!(u64::from(cfg.max_pending_punches()) >= punches);
        let mut agent = Agent::new(ME, me_addr(), cfg, 1);
        agent
            .handle_session_up(COORDINATOR, coordinator_addr())
            .unwrap();
        agent.set_local_classification(NatClass::Cone, me_addr());
        drain_transmits(&mut agent);
        while agent.poll_event().is_some() {}
        Endpoint {
            agent,
            punches,
            now: Instant::from_millis(1_000),
            ids: Vec::with_capacity(punches as usize),
        }
    }

    fn control(&mut self, payload: &[u8]) {
        self.agent
            .handle_control(
                self.now,
                wall_ms(self.now),
                COORDINATOR,
                coordinator_addr(),
                Channel::Rendezvous,
                payload,
            )
            .unwrap();
    }

    fn keepalive(&mut self, src: SocketAddr, sender: NodeId, token: u32) {
        let ka = Keepalive {
            sender,
            punch_id: token,
        };
        let verdict = self
            .agent
            .handle_datagram(self.now, me_addr(), src, &ka.to_bytes());
        assert_eq!(verdict, DatagramVerdict::Consumed);
    }

    /// Counts the terminal events (checking each one's punch id).
    fn tally(&mut self, into: &mut Outcomes) {
        while let Some(e) = self.agent.poll_event() {
            let (peer, punch_id) = match e {
                Event::PunchSucceeded {
                    peer,
                    punch_id,
                    role: Role::Requester,
                    ..
                } => {
                    into.succeeded += 1;
                    (peer, punch_id)
                }
                Event::PunchFailed {
                    peer,
                    punch_id,
                    role: Role::Requester,
                    error,
                    ..
                } => {
                    match error {
                        TraversalError::DeadlinePassed {
                            stage: PunchStage::Keepalive,
                            ..
                        } => into.timed_out += 1,
                        TraversalError::Cancelled => into.cancelled += 1,
                        _ => into.other += 1,
                    }
                    (peer, punch_id)
                }
                _ => {
                    into.other += 1;
                    continue;
                }
            };
            let j = peer.0 - Self::peer(0).0.0;
            assert_eq!(self.ids.get(j as usize), Some(&punch_id), "punch id");
        }
    }

    /// Runs the agent's timer like a driver until `end`: sleeps until
    /// `poll_timeout`, calls `handle_timeout`, drains. Returns keep-alives sent.
    fn run_until(&mut self, end: Instant, outcomes: &mut Outcomes) -> usize {
        let mut sent = 0;
        loop {
            let wake = self.agent.poll_timeout().filter(|t| *t <= end);
            self.now = wake.unwrap_or(end).max(self.now);
            self.agent.handle_timeout(self.now);
            sent += drain_transmits(&mut self.agent).1;
            self.tally(outcomes);
            if wake.is_none() {
                return sent;
            }
        }
    }

    /// One round: a punch to each target, introduced, a stray keep-alive each
    /// (wrong token: dropped), the trains' opener sent, then `ending`.
    fn round(&mut self, ending: Ending) {
        let start = self.now;
        let before = self.agent.stats();
        let mut outcomes = Outcomes::default();
        self.ids.clear();
        for j in 0..self.punches {
            let id = self
                .agent
                .request_punch(self.now, Self::peer(j).0, COORDINATOR)
                .unwrap();
            self.ids.push(id);
        }
        let requests = self.punches as usize;
        assert_eq!(drain_transmits(&mut self.agent), (requests, 0), "requests");
        let fire_at_ms = wall_ms(self.now) + Self::LEAD_MS;
        for j in 0..self.punches {
            let (peer, peer_reflex) = Self::peer(j);
            let intro = PunchIntroduce {
                peer,
                peer_reflex,
                fire_at_ms,
            };
            self.control(&intro.to_bytes());
            let token = keepalive_token(ME, peer, fire_at_ms);
            self.keepalive(peer_reflex, peer, if token == 1 { 2 } else { 1 });
        }
        // The opener: at the fire time, +100 ms, +250 ms.
        let opener_end = start + Duration::from_millis(Self::LEAD_MS + 250);
        let opener = self.run_until(opener_end, &mut outcomes);
        assert_eq!(opener, 3 * requests, "three opener keep-alives per punch");
        let expected = match ending {
            Ending::Ack => {
                for j in 0..self.punches {
                    let (peer, peer_reflex) = Self::peer(j);
                    let token = keepalive_token(ME, peer, fire_at_ms);
                    self.keepalive(peer_reflex, peer, token);
                    let ack = PunchAck {
                        from_peer: peer,
                        to_peer: ME,
                        punch_id: self.ids[j as usize],
                    };
                    self.control(&ack.to_bytes());
                }
                // Per punch: our ack to the coordinator, an immediate
                // keep-alive answer on the learned path.
                assert_eq!(drain_transmits(&mut self.agent), (requests, requests));
                self.tally(&mut outcomes);
                Outcomes {
                    succeeded: requests,
                    ..Outcomes::default()
                }
            }
            Ending::Deadline => {
                let deadline = start + self.agent.config().punch_deadline();
                self.run_until(deadline, &mut outcomes);
                Outcomes {
                    timed_out: requests,
                    ..Outcomes::default()
                }
            }
            Ending::Cancel => {
                for j in 0..self.punches {
                    assert!(self.agent.cancel_punch(self.now, Self::peer(j).0));
                }
                self.tally(&mut outcomes);
                Outcomes {
                    cancelled: requests,
                    ..Outcomes::default()
                }
            }
        };
        assert_eq!(outcomes, expected, "{ending:?}: one outcome per punch");
        assert_eq!(self.agent.pending_punches(), 0, "{ending:?}: all ended");
        let after = self.agent.stats();
        assert_eq!(
            after.punches_attempted - before.punches_attempted,
            self.punches
        );
        assert_eq!(
            after.keepalives_dropped - before.keepalives_dropped,
            self.punches,
            "the stray keep-alives dropped"
        );
        if ending == Ending::Ack {
            assert_eq!(after.acks_accepted - before.acks_accepted, self.punches);
        }
        self.now = self.now.max(start + Self::ROUND_GAP);
    }
}

/// 1,000 concurrent punches a round, ending as `ending` says.
fn endpoint_at_scale(ending: Ending, name: &'static str) -> Measured {
    let mut e = Endpoint::new(1_000);
    e.round(ending);
    let before = allocations();
    e.round(ending);
    Measured {
        name,
        allocations: allocations() - before,
    }
}

/// The original small case: one training punch fed a wrong-sender keep-alive,
/// a valid one, an application datagram, a clock-offset refresh and a timeout,
/// 10,000 times.
fn endpoint_small() -> Measured {
    let mut e = Endpoint::new(1);
    let (peer, peer_reflex) = Endpoint::peer(0);
    e.agent
        .request_punch(Instant::ZERO, peer, COORDINATOR)
        .unwrap();
    let fire_at_ms = 1_000;
    let intro = PunchIntroduce {
        peer,
        peer_reflex,
        fire_at_ms,
    };
    e.agent
        .handle_control(
            Instant::ZERO,
            fire_at_ms,
            COORDINATOR,
            coordinator_addr(),
            Channel::Rendezvous,
            &intro.to_bytes(),
        )
        .unwrap();
    let token = keepalive_token(ME, peer, fire_at_ms);
    let step = |e: &mut Endpoint, i: u64| {
        e.now = Instant::from_millis(1 + i / 100);
        e.keepalive(peer_reflex, NodeId(9), 1);
        e.keepalive(peer_reflex, peer, token);
        let app = e
            .agent
            .handle_datagram(e.now, me_addr(), peer_reflex, b"application bytes");
        assert_eq!(app, DatagramVerdict::NotOurs);
        // A session refreshing its clock-offset estimate.
        e.agent
            .handle_clock_offset(COORDINATOR, (i % 7) as i64)
            .unwrap();
        e.agent.handle_timeout(e.now);
        drain_transmits(&mut e.agent);
        while e.agent.poll_event().is_some() {}
    };
    step(&mut e, 0);
    assert_eq!(e.agent.stats().keepalives_accepted, 1, "the path confirmed");
    let before = allocations();
    for i in 1..=10_000 {
        step(&mut e, i);
    }
    Measured {
        name: "endpoint: 10,000 keep-alive rounds, 1 punch",
        allocations: allocations() - before,
    }
}

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let probe = allocations();
    drop(std::hint::black_box(Box::new(1u64)));
    assert_eq!(allocations(), probe + 1, "the counter sees allocations");

    let scenarios: [fn() -> Measured; 6] = [
        coordinator_small,
        endpoint_small,
        coordinator_at_scale,
        || {
            endpoint_at_scale(
                Ending::Ack,
                "endpoint: 1,000 concurrent punches ending by ack",
            )
        },
        || {
            endpoint_at_scale(
                Ending::Deadline,
                "endpoint: 1,000 concurrent punches ending by deadline",
            )
        },
        || {
            endpoint_at_scale(
                Ending::Cancel,
                "endpoint: 1,000 concurrent punches ending by cancel",
            )
        },
    ];
    // Each count is printed as soon as it is known, before anything is
    // asserted about it.
    let mut failed = Vec::new();
    for scenario in scenarios {
        let m = scenario();
        println!("{:>10} allocations  {}", m.allocations, m.name);
        if m.allocations != 0 {
            failed.push(m.name);
        }
    }
    assert!(
        failed.is_empty(),
        "steady state allocated (after warm-up) in: {failed:#?}"
    );
    println!("{} passed, 0 failed", scenarios.len());
}
