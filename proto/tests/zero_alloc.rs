//! Steady state allocates nothing: once warmed up, mediating a `PunchRequest`
//! (coordinator) and handling keep-alives (endpoint, with clock-offset
//! refreshes) make zero heap allocations. Counted with a counting global
//! allocator — a count, unlike a time, is deterministic and can be asserted.
//!
//! This test is its own process (`harness = false`): the counter is global,
//! and a test harness's other threads allocating while it measures would be
//! counted too.
#![allow(missing_docs)]

use std::net::SocketAddr;
use std::num::NonZeroU32;

use natrix_proto::wire::{Keepalive, NodeId, PunchIntroduce, PunchRequest};
use natrix_proto::{Agent, Channel, Config, Instant, NatClass};

// dhat's allocator counts every allocation; its heap statistics are exact.
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn allocations() -> u64 {
    dhat::HeapStats::get().total_blocks
}

fn addr(i: u8) -> SocketAddr {
    SocketAddr::new([198, 51, 100, i].into(), 4000)
}

/// A coordinator with `n` requesters and one target, all with sessions and
/// announcements; budget large enough not to reject.
fn coordinator(n: u64) -> Agent {
    let cfg = Config::builder()
        .auto_reclassify(false)
        .coordinator_requests_per_window(u32::MAX)
        .build()
        .unwrap();
    let mut r = Agent::new(NodeId(1), addr(1), cfg, 1);
    for i in 2..(2 + n + 1) {
        r.handle_session_up(NodeId(i), addr(i as u8)).unwrap();
        r.handle_peer_announcement(NodeId(i), addr(i as u8), NatClass::Cone)
            .unwrap();
        r.handle_rtt(NodeId(i), std::time::Duration::from_millis(20))
            .unwrap();
    }
    // Set-up: each session coming up queued a natrix Hello (issue #11).
    while r.poll_transmit().is_some() {}
    r
}

fn mediate(r: &mut Agent, t: u64, from: u64, target: u64) {
    let req = PunchRequest {
        target: NodeId(target),
        punch_id: NonZeroU32::new(t as u32 | 1),
        self_reflex: addr(from as u8),
    };
    let (bytes, len) = req.to_bytes();
    r.handle_control(
        Instant::from_millis(t),
        1_700_000_000_000 + t,
        NodeId(from),
        addr(from as u8),
        Channel::Rendezvous,
        &bytes[..len],
    )
    .unwrap();
    let mut n = 0;
    while r.poll_transmit().is_some() {
        n += 1;
    }
    assert_eq!(n, 2, "two introduces");
}

fn steady_state_mediation_and_keepalives_allocate_nothing() {
    let _profiler = dhat::Profiler::builder().testing().build();
    // --- coordinator ---
    let mut r = coordinator(4);
    for t in 0..100 {
        mediate(&mut r, t, 2 + t % 4, 6);
    }
    let before = allocations();
    for t in 100..10_100 {
        mediate(&mut r, t, 2 + t % 4, 6);
    }
    let mediation_allocs = allocations() - before;

    // --- endpoint: a training punch fed keep-alives ---
    let (me, peer, coord) = (NodeId(1), NodeId(2), NodeId(3));
    let cfg = Config::builder().auto_reclassify(false).build().unwrap();
    let mut a = Agent::new(me, addr(1), cfg, 1);
    a.handle_session_up(coord, addr(3)).unwrap();
    a.set_local_classification(NatClass::Cone, addr(1));
    a.request_punch(Instant::ZERO, peer, coord).unwrap();
    let intro = PunchIntroduce {
        peer,
        peer_reflex: addr(2),
        fire_at_ms: 1_000,
    };
    a.handle_control(
        Instant::ZERO,
        1_000,
        coord,
        addr(3),
        Channel::Rendezvous,
        &intro.to_bytes(),
    )
    .unwrap();
    while a.poll_transmit().is_some() {}
    while a.poll_event().is_some() {}
    // Wrong-sender and wrong-token keep-alives (dropped), then the valid one.
    let wrong = Keepalive {
        sender: NodeId(9),
        punch_id: 1,
    }
    .to_bytes();
    let token = natrix_proto::rendezvous::keepalive_token(me, peer, 1_000);
    let good = Keepalive {
        sender: peer,
        punch_id: token,
    }
    .to_bytes();
    let now = Instant::from_millis(1);
    let _ = a.handle_datagram(now, addr(1), addr(2), &wrong);
    let _ = a.handle_datagram(now, addr(1), addr(2), &good);
    while a.poll_transmit().is_some() {}
    while a.poll_event().is_some() {}
    let before = allocations();
    for i in 0..10_000u64 {
        let now = Instant::from_millis(2 + i / 100);
        let _ = a.handle_datagram(now, addr(1), addr(2), &wrong);
        let _ = a.handle_datagram(now, addr(1), addr(2), &good);
        let _ = a.handle_datagram(now, addr(1), addr(2), b"application bytes");
        // A session refreshing its clock-offset estimate.
        a.handle_clock_offset(coord, (i % 7) as i64).unwrap();
        a.handle_timeout(now);
        while a.poll_transmit().is_some() {}
        while a.poll_event().is_some() {}
    }
    let keepalive_allocs = allocations() - before;
    let probe = allocations();
    drop(std::hint::black_box(Box::new(1u64)));
    assert_eq!(allocations(), probe + 1, "the counter sees allocations");

    assert_eq!(
        (mediation_allocs, keepalive_allocs),
        (0, 0),
        "allocations in 10,000 mediations / 10,000 keep-alive rounds"
    );
}

fn main() {
    steady_state_mediation_and_keepalives_allocate_nothing();
    println!("1 passed, 0 failed");
}
