//! Costs at realistic sizes, each reported as a ratio measured in the same run
//! (issue #12):
//!
//! * **mediation vs the bare codec work** — one `PunchRequest` through the
//!   agent's public API (`handle_control`, then draining `poll_transmit`)
//!   against decoding the same request bytes and encoding the two
//!   `PunchIntroduce`s, at 10, 1,000, 10,000 and 100,000 requesters asking
//!   1,000 targets. Simulated time advances 3 ms per request, more than
//!   `budget_window / budget_table_capacity` (10 s / 4,096 ≈ 2.44 ms), so that
//!   at 10,000 and 100,000 requesters the 4,096-entry budget and mediated
//!   tables are full and reclaim an expired slot on every request (evicting)
//!   while every request is still mediated. Goals: ≤ 3× and ≥ 1 M/s at every
//!   size.
//! * **the timer path** — one `poll_timeout()` + `handle_timeout(now)` pair, as
//!   the driver runs it after every datagram, with 10 and with 5,000 pending
//!   punches (trains introduced, nothing due). Goal: within 2× of each other.
//!
//! Plain wall-clock timing, no criterion: each number is the median of several
//! rounds, and the two sides of a ratio are measured in alternating rounds.
//! Timing is reported, never asserted; the correctness conditions (requests
//! mediated, none rejected, tables at the size claimed, nothing due during the
//! timer runs) are asserted in every mode.
//!
//! `cargo bench -p natrix-proto --bench scale` for the numbers;
//! `… -- --test` (CI) runs the same code with tiny counts in a few seconds.
#![allow(missing_docs)]
// The benchmark times itself with the host clock; the agent still gets its
// time only as an input (`natrix_proto::Instant`).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant as WallClock};

use natrix_proto::wire::{NodeId, PunchIntroduce, PunchRequest};
use natrix_proto::{Agent, Channel, Config, Instant, NatClass};

/// Unix time (ms) at simulated instant zero.
const WALL0: u64 = 1_700_000_000_000;
/// Simulated time per request: above `budget_window / budget_table_capacity`.
const STEP: Duration = Duration::from_millis(3);
const TARGETS: u64 = 1_000;
const SIZES: [u64; 4] = [10, 1_000, 10_000, 100_000];
const PENDING: [usize; 2] = [10, 5_000];
const COORDINATOR: NodeId = NodeId(u64::MAX);

/// How much to run: full (the numbers) or quick (`--test`: does it still work).
#[derive(Clone, Copy, Debug)]
struct Mode {
    quick: bool,
    /// Timed rounds per measurement (the median is reported).
    rounds: usize,
    /// Mediations (and codec runs) per round.
    ops: usize,
    /// Wall time per timer round.
    timer_round: Duration,
}

impl Mode {
    fn from_args() -> Mode {
        if std::env::args().any(|a| a == "--test") {
            Mode {
                quick: true,
                rounds: 1,
                ops: 2_000,
                timer_round: Duration::from_millis(2),
            }
        } else {
            Mode {
                quick: false,
                rounds: 5,
                ops: 200_000,
                timer_round: Duration::from_millis(200),
            }
        }
    }
}

fn requester(i: u64) -> NodeId {
    NodeId(1 + i)
}

fn target(j: u64) -> NodeId {
    NodeId(1_000_000_000 + j)
}

/// A distinct IPv4 address per index under `first` (indices below 2^24).
fn ip(first: u8, i: u64, port: u16) -> SocketAddr {
    SocketAddr::new(
        [first, (i >> 16) as u8, (i >> 8) as u8, i as u8].into(),
        port,
    )
}

fn requester_addr(i: u64) -> SocketAddr {
    ip(10, i, 4000)
}

fn target_addr(j: u64) -> SocketAddr {
    ip(11, j, 5000)
}

fn coordinator_addr() -> SocketAddr {
    "192.0.2.1:4000".parse().unwrap()
}

fn wall_ms(now: Instant) -> u64 {
    WALL0 + now.as_nanos() / 1_000_000
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

// ----- mediation vs codec -----

/// One requester's request, encoded once.
struct Request {
    from: NodeId,
    session: SocketAddr,
    target_reflex: SocketAddr,
    bytes: [u8; PunchRequest::MAX_LEN],
    len: usize,
}

impl Request {
    fn payload(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// A coordinator knowing `n` requesters and [`TARGETS`] targets (sessions,
/// announcements whose reflex IP is the session IP, RTTs), with each
/// requester's request to target `i % TARGETS` encoded.
struct Coordinator {
    agent: Agent,
    requests: Vec<Request>,
    next: usize,
    now: Instant,
}

impl Coordinator {
    fn new(n: u64) -> Coordinator {
        let cfg = Config::builder()
            .auto_reclassify(false)
            .coordinator_requests_per_window(u32::MAX)
            .build()
            .unwrap();
        assert!(
            u64::from(cfg.max_known_peers()) >= n + TARGETS,
            "directory too small"
        );
        let mut agent = Agent::new(COORDINATOR, coordinator_addr(), cfg, 1);
        let peers = (0..n)
            .map(|i| (requester(i), requester_addr(i)))
            .chain((0..TARGETS).map(|j| (target(j), target_addr(j))));
        for (id, addr) in peers {
            agent.handle_session_up(id, addr).unwrap();
            agent
                .handle_peer_announcement(id, addr, NatClass::Cone)
                .unwrap();
            agent.handle_rtt(id, Duration::from_millis(40)).unwrap();
        }
        // Each session coming up queued a natrix Hello.
        while agent.poll_transmit().is_some() {}
        let requests = (0..n)
            .map(|i| {
                let j = i % TARGETS;
                let req = PunchRequest {
                    target: target(j),
                    punch_id: NonZeroU32::new(1 + i as u32),
                    self_reflex: requester_addr(i),
                };
                let (bytes, len) = req.to_bytes();
                Request {
                    from: requester(i),
                    session: requester_addr(i),
                    target_reflex: target_addr(j),
                    bytes,
                    len,
                }
            })
            .collect();
        Coordinator {
            agent,
            requests,
            next: 0,
            now: Instant::ZERO,
        }
    }

    /// The next requester, round-robin.
    fn turn(&mut self) -> usize {
        let i = self.next;
        self.next = if i + 1 == self.requests.len() {
            0
        } else {
            i + 1
        };
        i
    }

    /// The next requester's request; returns what was sent.
    fn mediate(&mut self) -> usize {
        let i = self.turn();
        let r = &self.requests[i];
        self.now += STEP;
        self.agent
            .handle_control(
                self.now,
                wall_ms(self.now),
                r.from,
                r.session,
                Channel::Rendezvous,
                r.payload(),
            )
            .unwrap();
        let mut sent = 0;
        while let Some(tx) = self.agent.poll_transmit() {
            black_box(tx);
            sent += 1;
        }
        sent
    }

    /// `ops` mediations; ns each. Asserts every one was mediated.
    fn timed(&mut self, ops: usize) -> f64 {
        let before = self.agent.stats();
        let mut sent = 0;
        let start = WallClock::now();
        for _ in 0..ops {
            sent += self.mediate();
        }
        let ns = start.elapsed().as_nanos() as f64 / ops as f64;
        let after = self.agent.stats();
        assert_eq!(sent, 2 * ops, "two introduces per request");
        assert_eq!(
            after.requests_mediated - before.requests_mediated,
            ops as u64,
            "every request mediated"
        );
        assert_eq!(after.requests_rejected, 0, "no request rejected");
        ns
    }

    /// The bare codec work of the next request: decode its bytes, encode the
    /// two introduces. Returns bytes encoded (so nothing is optimised away).
    fn codec(&mut self) -> usize {
        let i = self.turn();
        let r = &self.requests[i];
        let req = PunchRequest::decode(black_box(r.payload())).unwrap();
        let fire_at_ms = wall_ms(self.now) + 30;
        let to_requester = PunchIntroduce {
            peer: req.target,
            peer_reflex: r.target_reflex,
            fire_at_ms,
        }
        .to_bytes();
        let to_target = PunchIntroduce {
            peer: r.from,
            peer_reflex: req.self_reflex,
            fire_at_ms,
        }
        .to_bytes();
        black_box(to_requester).len() + black_box(to_target).len()
    }

    fn timed_codec(&mut self, ops: usize) -> f64 {
        let mut bytes = 0;
        let start = WallClock::now();
        for _ in 0..ops {
            bytes += self.codec();
        }
        let ns = start.elapsed().as_nanos() as f64 / ops as f64;
        assert_eq!(bytes, ops * 2 * PunchIntroduce::LEN);
        ns
    }
}

struct MediationRow {
    requesters: u64,
    budget_entries: usize,
    mediation_ns: f64,
    codec_ns: f64,
}

fn mediation_at(n: u64, mode: Mode) -> MediationRow {
    let mut c = Coordinator::new(n);
    let capacity = c.agent.config().budget_table_capacity() as usize;
    // Warm-up: every requester at least once, and enough requests for the
    // tables to reach their bound.
    let warm = (n as usize).max(2 * capacity);
    c.timed(warm);
    for _ in 0..warm {
        black_box(c.codec());
    }
    let budget_entries = c.agent.budget_entries().0;
    assert_eq!(
        budget_entries,
        (n as usize).min(capacity),
        "budget table at {n} requesters"
    );
    let (mut med, mut codec) = (Vec::new(), Vec::new());
    for _ in 0..mode.rounds {
        med.push(c.timed(mode.ops));
        codec.push(c.timed_codec(mode.ops));
    }
    if n as usize > capacity {
        // Evicting: still full, every request reclaimed an expired slot.
        assert_eq!(c.agent.budget_entries().0, capacity);
    }
    MediationRow {
        requesters: n,
        budget_entries,
        mediation_ns: median(med),
        codec_ns: median(codec),
    }
}

// ----- timer path -----

/// An endpoint with a coordinator session and `pending` requester punches to
/// distinct targets, each introduced (its train scheduled 4 s out, so nothing
/// is due while it is measured).
fn timer_agent(pending: usize) -> (Agent, Instant) {
    let me = "192.0.2.7:4000".parse().unwrap();
    let cfg = Config::builder()
        .auto_reclassify(false)
        .max_pending_punches(8_192)
        .build()
        .unwrap();
    let mut a = Agent::new(NodeId(7), me, cfg, 7);
    a.handle_session_up(COORDINATOR, coordinator_addr())
        .unwrap();
    a.set_local_classification(NatClass::Cone, me);
    let now = Instant::from_millis(1_000);
    for j in 0..pending as u64 {
        a.request_punch(now, target(j), COORDINATOR).unwrap();
        let intro = PunchIntroduce {
            peer: target(j),
            peer_reflex: target_addr(j),
            fire_at_ms: wall_ms(now) + 4_000,
        };
        a.handle_control(
            now,
            wall_ms(now),
            COORDINATOR,
            coordinator_addr(),
            Channel::Rendezvous,
            &intro.to_bytes(),
        )
        .unwrap();
    }
    while a.poll_transmit().is_some() {}
    while a.poll_event().is_some() {}
    assert_eq!(a.pending_punches(), pending);
    (a, now)
}

/// `poll_timeout()` + `handle_timeout(now)` pairs for at least `min` wall
/// time, `now` advancing 10 ns a pair; ns per pair. Asserts nothing was due.
fn timed_timer(a: &mut Agent, now: &mut Instant, min: Duration) -> f64 {
    let pending = a.pending_punches();
    let mut pairs = 0u64;
    let start = WallClock::now();
    let elapsed = loop {
        for _ in 0..64 {
            *now += Duration::from_nanos(10);
            black_box(a.poll_timeout());
            a.handle_timeout(*now);
        }
        pairs += 64;
        let e = start.elapsed();
        if e >= min {
            break e;
        }
    };
    assert!(a.poll_transmit().is_none(), "nothing was due");
    assert_eq!(a.pending_punches(), pending);
    assert!(a.poll_timeout().is_some_and(|t| t > *now));
    elapsed.as_nanos() as f64 / pairs as f64
}

fn timers(mode: Mode) -> Vec<(usize, f64)> {
    let mut agents: Vec<_> = PENDING.iter().map(|&p| timer_agent(p)).collect();
    for (a, now) in &mut agents {
        timed_timer(a, now, mode.timer_round / 4);
    }
    let mut samples = vec![Vec::new(); agents.len()];
    for _ in 0..mode.rounds {
        for ((a, now), s) in agents.iter_mut().zip(&mut samples) {
            s.push(timed_timer(a, now, mode.timer_round));
        }
    }
    PENDING
        .iter()
        .copied()
        .zip(samples.into_iter().map(median))
        .collect()
}

fn main() {
    let mode = Mode::from_args();
    if mode.quick {
        println!("scale: quick mode (--test): tiny counts, the numbers mean nothing");
    }
    println!(
        "mediation vs bare codec work (decode the request + encode two introduces), \
         {TARGETS} targets, {} ms simulated per request, median of {} × {} ops",
        STEP.as_millis(),
        mode.rounds,
        mode.ops
    );
    println!(
        "{:>10} | {:>16} | {:>12} | {:>8} | {:>6} | {:>12} | {:>7} | {:>7}",
        "requesters",
        "budget entries",
        "mediation ns",
        "codec ns",
        "ratio",
        "per second",
        "≤ 3×",
        "≥ 1 M/s"
    );
    for n in SIZES {
        let row = mediation_at(n, mode);
        let ratio = row.mediation_ns / row.codec_ns;
        let rate = 1e9 / row.mediation_ns;
        let evicting = if row.requesters as usize > row.budget_entries {
            " (evicting)"
        } else {
            ""
        };
        println!(
            "{:>10} | {:>16} | {:>12.1} | {:>8.1} | {:>5.1}× | {:>10.2} M | {:>7} | {:>7}",
            row.requesters,
            format!("{}{evicting}", row.budget_entries),
            row.mediation_ns,
            row.codec_ns,
            ratio,
            rate / 1e6,
            verdict(ratio <= 3.0),
            verdict(rate >= 1e6)
        );
    }

    println!();
    println!(
        "timer path: one poll_timeout() + handle_timeout(now), nothing due, median of {} rounds",
        mode.rounds
    );
    let t = timers(mode);
    for (pending, ns) in &t {
        println!("{pending:>6} pending punches: {ns:>10.1} ns per pair");
    }
    let ratio = t[1].1 / t[0].1;
    println!(
        "{} vs {} pending: {ratio:.1}× (goal ≤ 2×: {})",
        t[1].0,
        t[0].0,
        verdict(ratio <= 2.0)
    );
}
