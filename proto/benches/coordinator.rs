//! Coordinator throughput through the agent's public API: decode, budget,
//! directory lookup, two introduces encoded and drained — per `PunchRequest`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use natrix_proto::wire::{NodeId, PunchRequest};
use natrix_proto::{Agent, Channel, Config, Instant, NatClass, Transmit};

fn addr(i: u64) -> SocketAddr {
    SocketAddr::new([10, (i >> 16) as u8, (i >> 8) as u8, i as u8].into(), 4000)
}

fn throughput(c: &mut Criterion) {
    // 1,000 requesters and 1,000 targets; default budget window, a budget large
    // enough that the benchmark measures mediation rather than rejection.
    let peers = 2_000u64;
    let cfg = Config::builder()
        .auto_reclassify(false)
        .coordinator_requests_per_window(u32::MAX)
        .build()
        .unwrap();
    let mut r = Agent::new(NodeId(u64::MAX), addr(0), cfg, 1);
    for i in 1..=peers {
        r.handle_session_up(NodeId(i), addr(i)).unwrap();
        r.handle_peer_announcement(NodeId(i), addr(i), NatClass::Cone)
            .unwrap();
        r.handle_rtt(NodeId(i), Duration::from_millis(40)).unwrap();
    }
    let requests: Vec<(NodeId, SocketAddr, [u8; 32], usize)> = (0..1_000u64)
        .map(|i| {
            let from = 1 + i;
            let req = PunchRequest {
                target: NodeId(1_001 + (i * 7) % 1_000),
                punch_id: NonZeroU32::new(1 + i as u32),
                self_reflex: addr(from),
            };
            let (b, n) = req.to_bytes();
            (NodeId(from), addr(from), b, n)
        })
        .collect();

    let mut g = c.benchmark_group("coordinator");
    g.throughput(Throughput::Elements(1));
    let mut k = 0usize;
    let mut t = 0u64;
    g.bench_function("mediate_punch_request", |b| {
        b.iter(|| {
            let (from, session, bytes, n) = &requests[k % requests.len()];
            k += 1;
            t += 1;
            let now = Instant::from_nanos(t * 1_000);
            r.handle_control(
                now,
                1_700_000_000_000,
                *from,
                *session,
                Channel::Rendezvous,
                &bytes[..*n],
            )
            .unwrap();
            while let Some(tx) = r.poll_transmit() {
                if let Transmit::Control { payload, .. } = tx {
                    black_box(payload);
                }
            }
        })
    });
    g.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
