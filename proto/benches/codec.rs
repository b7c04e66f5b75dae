//! Codec benchmarks: decode and encode per message kind, and the keep-alive
//! predicate on a datagram that is not a keep-alive.
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::num::NonZeroU32;

use criterion::{Criterion, criterion_group, criterion_main};
use natrix_proto::wire::{
    Keepalive, NodeId, PunchAck, PunchIntroduce, PunchReject, PunchRequest, ReflexResponse,
    RejectReason, RendezvousMessage, is_keepalive,
};

fn v4() -> SocketAddr {
    "192.0.2.7:9001".parse().unwrap()
}

fn v6() -> SocketAddr {
    "[2001:db8::7]:9001".parse().unwrap()
}

fn codecs(c: &mut Criterion) {
    let request = RendezvousMessage::Request(PunchRequest {
        target: NodeId(0x0102_0304_0506_0708),
        punch_id: NonZeroU32::new(0x0A0B_0C0D),
        self_reflex: v4(),
    });
    let introduce = RendezvousMessage::Introduce(PunchIntroduce {
        peer: NodeId(7),
        peer_reflex: v6(),
        fire_at_ms: 1_700_000_000_500,
    });
    let ack = RendezvousMessage::Ack(PunchAck {
        from_peer: NodeId(1),
        to_peer: NodeId(2),
        punch_id: 9,
    });
    let reject = RendezvousMessage::Reject(PunchReject {
        target: NodeId(2),
        punch_id: 9,
        reason: RejectReason::RateLimited,
    });
    for (name, msg) in [
        ("punch_request_v2", request),
        ("punch_introduce_v6", introduce),
        ("punch_ack", ack),
        ("punch_reject", reject),
    ] {
        let (bytes, len) = msg.to_bytes();
        let bytes = bytes[..len].to_vec();
        c.bench_function(&format!("decode/{name}"), |b| {
            b.iter(|| RendezvousMessage::decode(black_box(&bytes)))
        });
        let mut buf = [0u8; 64];
        c.bench_function(&format!("encode/{name}"), |b| {
            b.iter(|| black_box(&msg).encode(black_box(&mut buf)))
        });
    }

    let reflex = ReflexResponse { observed: v4() }.to_bytes();
    c.bench_function("decode/reflex_response", |b| {
        b.iter(|| ReflexResponse::decode(black_box(&reflex)))
    });
    let observed = v4();
    c.bench_function("encode/reflex_response", |b| {
        b.iter(|| {
            black_box(ReflexResponse {
                observed: black_box(observed),
            })
            .to_bytes()
        })
    });

    let ka = Keepalive {
        sender: NodeId(0x0102_0304_0506_0708),
        punch_id: 0x1A2B_3C4D,
    };
    let ka_bytes = ka.to_bytes();
    c.bench_function("decode/keepalive", |b| {
        b.iter(|| Keepalive::decode(black_box(&ka_bytes)))
    });
    c.bench_function("encode/keepalive", |b| b.iter(|| black_box(ka).to_bytes()));

    // The predicate on what shares the socket: a typical 1200-byte datagram
    // and a 14-byte one that only misses the magic.
    let app = vec![0x17u8; 1200];
    let mut near_miss = ka_bytes;
    near_miss[0] = b'Q';
    c.bench_function("is_keepalive/not_keepalive_1200B", |b| {
        b.iter(|| is_keepalive(black_box(&app)))
    });
    c.bench_function("is_keepalive/not_keepalive_14B", |b| {
        b.iter(|| is_keepalive(black_box(&near_miss)))
    });
    c.bench_function("is_keepalive/keepalive", |b| {
        b.iter(|| is_keepalive(black_box(&ka_bytes)))
    });
}

criterion_group!(benches, codecs);
criterion_main!(benches);
