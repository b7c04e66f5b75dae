//! Steady state allocates nothing: 10,000 transport packets each way (seal
//! with `send`, open with `handle_datagram`) make zero heap allocations; so
//! do 2,000 reliable messages each way with their acknowledgements, once the
//! endpoint's buffer pool and queues have grown.
//!
//! Own test binary with `harness = false`: a single thread, so no other test
//! can allocate while we count. Counted with dhat's global allocator.
#![allow(missing_docs)]

use std::net::SocketAddr;

use natrix_proto::Instant;
use natrix_session::{Endpoint, Keypair, MAX_PACKET, Received, SessionConfig};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn allocations() -> u64 {
    dhat::HeapStats::get().total_blocks
}

const WALL: u64 = 1_700_000_000_000;

fn pump(from: &mut Endpoint, from_addr: SocketAddr, to: &mut Endpoint, now: Instant) -> bool {
    let mut out = [0u8; MAX_PACKET];
    let mut moved = false;
    while let Some((_, n)) = from.poll_transmit(&mut out) {
        moved = true;
        let _ = to.handle_datagram(now, WALL, from_addr, &out[..n]);
    }
    moved
}

/// One packet each way; returns bytes delivered.
fn exchange(a: &mut Endpoint, b: &mut Endpoint, t: u64, payload: &[u8], out: &mut [u8]) -> usize {
    let (aa, ba): (SocketAddr, SocketAddr) = (
        "192.0.2.1:4000".parse().unwrap(),
        "198.51.100.2:5000".parse().unwrap(),
    );
    let now = Instant::from_millis(t);
    let mut got = 0;
    let kb = b.public_key();
    let ka = a.public_key();
    let (_, n) = a.send(now, &kb, 16, payload, out).unwrap().unwrap();
    if let Received::Data { payload, .. } = b.handle_datagram(now, WALL + t, aa, &out[..n]) {
        got += payload.len();
    }
    let (_, n) = b.send(now, &ka, 16, payload, out).unwrap().unwrap();
    if let Received::Data { payload, .. } = a.handle_datagram(now, WALL + t, ba, &out[..n]) {
        got += payload.len();
    }
    got
}

/// One reliable message from `x` to `y` and its acknowledgement; returns bytes delivered.
fn reliable_one_way(
    x: &mut Endpoint,
    x_addr: SocketAddr,
    y: &mut Endpoint,
    y_addr: SocketAddr,
    t: u64,
    payload: &[u8],
    out: &mut [u8],
) -> usize {
    let now = Instant::from_millis(t);
    let mut got = 0;
    let ky = y.public_key();
    x.send_reliable(now, &ky, 16, payload).unwrap();
    let (_, n) = x.poll_transmit(out).unwrap();
    if let Received::Data { payload, .. } = y.handle_datagram(now, WALL + t, x_addr, &out[..n]) {
        got += payload.len();
    }
    let (_, n) = y.poll_transmit(out).unwrap();
    assert_eq!(
        x.handle_datagram(now, WALL + t, y_addr, &out[..n]),
        Received::Consumed
    );
    assert!(x.poll_transmit(out).is_none() && y.poll_transmit(out).is_none());
    got
}

/// One reliable message each way, with its acknowledgement; returns bytes delivered.
fn reliable_exchange(
    a: &mut Endpoint,
    b: &mut Endpoint,
    t: u64,
    payload: &[u8],
    out: &mut [u8],
) -> usize {
    let (aa, ba): (SocketAddr, SocketAddr) = (
        "192.0.2.1:4000".parse().unwrap(),
        "198.51.100.2:5000".parse().unwrap(),
    );
    reliable_one_way(a, aa, b, ba, t, payload, out)
        + reliable_one_way(b, ba, a, aa, t, payload, out)
}

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let (aa, ba): (SocketAddr, SocketAddr) = (
        "192.0.2.1:4000".parse().unwrap(),
        "198.51.100.2:5000".parse().unwrap(),
    );
    let mut a = Endpoint::new(
        Keypair::from_secret([1; 32]),
        SessionConfig::default(),
        [1; 32],
    );
    let mut b = Endpoint::new(
        Keypair::from_secret([2; 32]),
        SessionConfig::default(),
        [2; 32],
    );
    let t0 = Instant::from_millis(1);
    a.connect(t0, WALL, b.public_key(), ba).unwrap();
    while pump(&mut a, aa, &mut b, t0) | pump(&mut b, ba, &mut a, t0) {}
    while a.poll_event().is_some() {}
    while b.poll_event().is_some() {}
    let mut out = vec![0u8; MAX_PACKET];
    let payload = vec![0x5A; 1200];
    // Warm up.
    for t in 0..100 {
        assert_eq!(exchange(&mut a, &mut b, 2 + t, &payload, &mut out), 2400);
    }
    let before = allocations();
    let mut total = 0;
    for t in 0..10_000u64 {
        // 10,000 packets each way within 5 s of virtual time (no timers due),
        // with payload sizes from 0 to 1200 bytes.
        let len = usize::try_from(t % 1201).unwrap();
        total += exchange(&mut a, &mut b, 200 + t / 2, &payload[..len], &mut out);
        // The driver's loop also asks for the next timer each time.
        assert!(a.poll_timeout().is_some() && b.poll_timeout().is_some());
    }
    let allocs = allocations() - before;
    assert!(total > 0);
    // The counter does see allocations (so 0 above is not vacuous).
    let probe = allocations();
    let v = std::hint::black_box(vec![1u8; 64]);
    assert_eq!(allocations() - probe, 1);
    drop(v);
    // 10,100 data packets each way, plus each side's clock ping (A's is its
    // key confirmation) and pong.
    assert_eq!(a.stats().packets_opened, 10_102);
    assert_eq!(b.stats().packets_opened, 10_102);
    assert_eq!(
        allocs, 0,
        "steady-state send + handle_datagram must not allocate"
    );
    println!("zero_alloc: 20,000 transport packets, {allocs} allocations");

    // Reliable messages: warm up (the pool, the pending queue, the timer
    // heap and the acknowledgement queue grow once), then count.
    let payload = &payload[..1190];
    for t in 0..100 {
        reliable_exchange(&mut a, &mut b, 6_000 + t, payload, &mut out);
    }
    let before = allocations();
    let mut total = 0;
    for t in 0..2_000u64 {
        let len = usize::try_from(t % 1191).unwrap();
        total += reliable_exchange(&mut a, &mut b, 6_100 + t, &payload[..len], &mut out);
        assert!(a.poll_timeout().is_some() && b.poll_timeout().is_some());
    }
    let reliable_allocs = allocations() - before;
    assert!(total > 0);
    assert_eq!(a.stats().reliable_acked, 2_100);
    assert_eq!(b.stats().reliable_delivered, 2_100);
    assert_eq!(a.stats().reliable_retransmits, 0);
    assert_eq!(
        reliable_allocs, 0,
        "steady-state send_reliable + acknowledgement must not allocate"
    );
    println!(
        "zero_alloc: 4,000 reliable messages and acknowledgements, {reliable_allocs} allocations"
    );
    println!("1 passed, 0 failed");
}
