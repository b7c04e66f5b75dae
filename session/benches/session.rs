//! Session costs: responder handshakes, seal+open per packet against a raw
//! ChaCha20-Poly1305 baseline, and the cost of a cookie reply.
//!
//! `cargo bench -p natrix-session --bench session -- --warm-up-time 1 --measurement-time 3`
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::SocketAddr;

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use natrix_proto::Instant;
use natrix_session::{Endpoint, Keypair, MAX_PACKET, Received, SessionConfig};

const WALL: u64 = 1_700_000_000_000;

fn addrs() -> (SocketAddr, SocketAddr) {
    (
        "192.0.2.1:4000".parse().unwrap(),
        "198.51.100.2:5000".parse().unwrap(),
    )
}

fn no_cookies() -> SessionConfig {
    SessionConfig {
        cookie_threshold: u32::MAX,
        ..SessionConfig::default()
    }
}

fn pump(from: &mut Endpoint, from_addr: SocketAddr, to: &mut Endpoint, now: Instant) -> bool {
    let mut out = [0u8; MAX_PACKET];
    let mut moved = false;
    while let Some((_, n)) = from.poll_transmit(&mut out) {
        moved = true;
        let _ = to.handle_datagram(now, WALL, from_addr, &out[..n]);
    }
    moved
}

fn established() -> (Endpoint, Endpoint) {
    let (aa, ba) = addrs();
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
    (a, b)
}

/// A fresh init from `x` to `to` (x dials, the init is taken, x forgets it).
fn fresh_init(x: &mut Endpoint, to: natrix_session::PublicKey, wall: u64) -> Vec<u8> {
    let (_, ba) = addrs();
    let now = Instant::from_millis(1);
    x.connect(now, wall, to, ba).unwrap();
    let mut out = [0u8; MAX_PACKET];
    let (_, n) = x.poll_transmit(&mut out).unwrap();
    x.close(now, &to);
    out[..n].to_vec()
}

fn handshakes(c: &mut Criterion) {
    let (aa, _) = addrs();
    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Elements(1));
    let mut b = Endpoint::new(Keypair::from_secret([2; 32]), no_cookies(), [2; 32]);
    let mut x = Endpoint::new(Keypair::from_secret([3; 32]), no_cookies(), [3; 32]);
    let kb = b.public_key();
    let mut wall = WALL;
    let mut out = [0u8; MAX_PACKET];
    g.bench_function("responder_init_to_response", |bench| {
        bench.iter_batched(
            || {
                wall += 1;
                (fresh_init(&mut x, kb, wall), wall)
            },
            |(init, wall)| {
                let r = b.handle_datagram(Instant::from_millis(2), wall, aa, &init);
                assert_eq!(r, Received::Consumed);
                black_box(b.poll_transmit(&mut out).expect("a response"));
            },
            BatchSize::SmallInput,
        );
    });
    // Under load: an init without mac2 gets a cookie reply, no DH.
    let busy = SessionConfig {
        max_half_open: 1,
        ..SessionConfig::default()
    };
    let mut b = Endpoint::new(Keypair::from_secret([2; 32]), busy, [2; 32]);
    let first = fresh_init(&mut x, kb, wall + 1);
    let _ = b.handle_datagram(Instant::from_millis(2), WALL, aa, &first);
    let _ = b.poll_transmit(&mut out);
    let init = fresh_init(&mut x, kb, wall + 2);
    g.bench_function("cookie_reply", |bench| {
        bench.iter(|| {
            let r = b.handle_datagram(Instant::from_millis(3), WALL, aa, black_box(&init));
            assert_eq!(r, Received::Consumed);
            black_box(b.poll_transmit(&mut out).expect("a cookie reply"));
        });
    });
    g.finish();
}

fn transport(c: &mut Criterion) {
    let (aa, _) = addrs();
    for size in [64usize, 1200] {
        let mut g = c.benchmark_group(format!("transport_{size}B"));
        g.throughput(Throughput::Bytes(size as u64));
        let (mut a, mut b) = established();
        let kb = b.public_key();
        let payload = vec![0xA5u8; size];
        let mut out = vec![0u8; MAX_PACKET];
        let now = Instant::from_millis(5);
        g.bench_function("session_seal_open", |bench| {
            bench.iter(|| {
                let (_, n) = a
                    .send(now, &kb, 16, black_box(&payload), &mut out)
                    .unwrap()
                    .unwrap();
                match b.handle_datagram(now, WALL, aa, &out[..n]) {
                    Received::Data { payload, .. } => {
                        black_box(payload.len());
                    }
                    other => panic!("{other:?}"),
                }
            });
        });
        // The same AEAD work with nothing around it: channel byte + payload.
        let aead = ChaCha20Poly1305::new(&[7u8; 32].into());
        let mut buf = vec![0u8; size + 1];
        let mut nonce = 0u64;
        g.bench_function("raw_chacha20poly1305_seal_open", |bench| {
            bench.iter(|| {
                nonce += 1;
                let mut n12 = [0u8; 12];
                n12[4..].copy_from_slice(&nonce.to_le_bytes());
                buf[0] = 16;
                buf[1..].copy_from_slice(black_box(&payload));
                let tag = aead
                    .encrypt_in_place_detached(&n12.into(), &[], &mut buf)
                    .unwrap();
                aead.decrypt_in_place_detached(&n12.into(), &[], &mut buf, &tag)
                    .unwrap();
                black_box(&buf);
            });
        });
        g.finish();
    }
}

/// The same round trip (A seals → B opens, B seals → A opens, 1200 B) with
/// B holding one session and with B holding 4,096: B's receiver-index map and
/// deadline heap at a realistic size, the initiators taken round-robin.
fn transport_at_scale(c: &mut Criterion) {
    const SIZE: usize = 1200;
    let mut g = c.benchmark_group("transport_1200B_round_trip");
    g.throughput(Throughput::Bytes(2 * SIZE as u64));
    let payload = vec![0xA5u8; SIZE];
    let mut out = vec![0u8; MAX_PACKET];
    let t0 = Instant::from_millis(1);
    let (_, ba) = addrs();
    for n in [1usize, 4096] {
        let mut b = Endpoint::new(Keypair::from_secret([2; 32]), no_cookies(), [2; 32]);
        let kb = b.public_key();
        let mut peers: Vec<(Endpoint, SocketAddr)> = (0..n)
            .map(|i| {
                let mut secret = [0u8; 32];
                secret[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
                secret[31] = 0x55;
                let mut a = Endpoint::new(Keypair::from_secret(secret), no_cookies(), [3; 32]);
                let octets = u32::try_from(i).unwrap().to_be_bytes();
                let aa = SocketAddr::from(([10, octets[1], octets[2], octets[3]], 4000));
                a.connect(t0, WALL, kb, ba).unwrap();
                while pump(&mut a, aa, &mut b, t0) | pump(&mut b, ba, &mut a, t0) {}
                (a, aa)
            })
            .collect();
        assert_eq!(b.stats().sessions_live as usize, n);
        let keys: Vec<_> = peers.iter().map(|(a, _)| a.public_key()).collect();
        let now = Instant::from_millis(5);
        let mut i = 0usize;
        g.bench_function(format!("{n}_sessions"), |bench| {
            bench.iter(|| {
                i = (i + 1) % n;
                let (a, aa) = &mut peers[i];
                let (_, len) = a.send(now, &kb, 16, &payload, &mut out).unwrap().unwrap();
                match b.handle_datagram(now, WALL, *aa, &out[..len]) {
                    Received::Data { payload, .. } => {
                        black_box(payload.len());
                    }
                    other => panic!("{other:?}"),
                }
                let (_, len) = b
                    .send(now, &keys[i], 16, &payload, &mut out)
                    .unwrap()
                    .unwrap();
                match a.handle_datagram(now, WALL, ba, &out[..len]) {
                    Received::Data { payload, .. } => {
                        black_box(payload.len());
                    }
                    other => panic!("{other:?}"),
                }
            });
        });
    }
    g.finish();
}

criterion_group!(benches, handshakes, transport, transport_at_scale);
criterion_main!(benches);
