//! Measures the agent's heap footprint: what a new agent reserves (every
//! bounded table is sized from its `Config` at construction, so that nothing
//! allocates later), bytes per known peer (the directory grows up to its cap),
//! what filling a budget table and the pending-punch table adds on top of the
//! reservation, and the whole agent with 100,000 known peers.
//!
//! `cargo run --release -p natrix-proto --example memory`
//!
//! Heap bytes are counted exactly by dhat's allocator (not sampled, not timed).

use std::net::SocketAddr;
use std::num::NonZeroU32;

use natrix_proto::wire::{NodeId, PunchRequest};
use natrix_proto::{Agent, Channel, Config, Instant, NatClass};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn heap() -> u64 {
    dhat::HeapStats::get().curr_bytes as u64
}

fn addr(i: u64) -> SocketAddr {
    SocketAddr::new([10, (i >> 16) as u8, (i >> 8) as u8, i as u8].into(), 4000)
}

fn quiet() -> Config {
    Config::builder()
        .auto_reclassify(false)
        .build()
        .expect("valid config")
}

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let cfg = quiet();
    println!("natrix-proto heap footprint (bytes, exact, dhat)");

    // Known peers: session + announcement + RTT each.
    let base = heap();
    let mut agent = Agent::new(NodeId(u64::MAX), addr(0), cfg.clone(), 1);
    let empty = heap() - base;
    let n = 100_000u64;
    for i in 1..=n {
        agent.handle_session_up(NodeId(i), addr(i)).expect("room");
        agent
            .handle_peer_announcement(NodeId(i), addr(i), NatClass::Cone)
            .expect("room");
        agent
            .handle_rtt(NodeId(i), std::time::Duration::from_millis(30))
            .expect("room");
        // Each new session queues a natrix Hello: sent, as a driver would.
        while agent.poll_transmit().is_some() {}
    }
    let with_peers = heap() - base;
    println!("new agent (tables reserved)      {empty:>10}  (default Config)");
    println!("agent with {n} known peers   {with_peers:>10}");
    println!(
        "per known peer                   {:>10.1}  (bound: Config::max_known_peers = {})",
        (with_peers - empty) as f64 / n as f64,
        cfg.max_known_peers()
    );

    // Budget entries: distinct requesters, each rejected (no target session)
    // after being counted; the table is bounded by budget_table_capacity.
    let cap = u64::from(cfg.budget_table_capacity());
    let mut r = Agent::new(NodeId(u64::MAX), addr(0), cfg.clone(), 2);
    let before = heap();
    for i in 0..cap {
        let req = PunchRequest {
            target: NodeId(1),
            punch_id: NonZeroU32::new(1),
            self_reflex: addr(i),
        };
        let (b, len) = req.to_bytes();
        r.handle_control(
            Instant::ZERO,
            0,
            NodeId(10 + i),
            addr(i),
            Channel::Rendezvous,
            &b[..len],
        )
        .expect("valid");
        while r.poll_transmit().is_some() {}
    }
    let queue_slack = heap() - before;
    let per_budget = queue_slack as f64 / cap as f64;
    println!(
        "per budget entry beyond reserve  {per_budget:>10.1}  (bound: {cap} entries per table, coordinator and responder each)"
    );

    // Pending punches (requester side, waiting for the introduce).
    let mut a = Agent::new(NodeId(u64::MAX), addr(0), cfg.clone(), 3);
    a.handle_session_up(NodeId(1), addr(1)).expect("room");
    a.set_local_classification(NatClass::Cone, addr(0));
    let punches = u64::from(cfg.max_pending_punches());
    let before = heap();
    for i in 0..punches {
        a.request_punch(Instant::ZERO, NodeId(100 + i), NodeId(1))
            .expect("started");
    }
    // Drain the requests so only the punch table remains.
    while a.poll_transmit().is_some() {}
    let grown = heap() - before;
    println!(
        "per pending punch beyond reserve {:>10.1}  (bound: Config::max_pending_punches = {punches}; transmit queue capacity included)",
        grown as f64 / punches as f64
    );
}
