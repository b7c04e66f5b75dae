//! Two endpoints with an established session, then arbitrary datagrams from
//! arbitrary source addresses (and arbitrary timer advances) to both. No
//! input may panic, and afterwards the session still carries a valid packet
//! both ways (with a fresh handshake if the input legitimately ended it).
#![no_main]

use std::net::SocketAddr;

use arbitrary::Arbitrary;
use natrix_proto::Instant;
use natrix_session::{Endpoint, Keypair, MAX_PACKET, Received, SessionConfig};

const WALL: u64 = 1_700_000_000_000;

#[derive(Debug, Arbitrary)]
struct Step {
    /// Which endpoint receives (even: B, odd: A).
    to: u8,
    ip: [u8; 4],
    port: u16,
    /// Use the real peer's address as the source (a spoofed source).
    spoof_peer: bool,
    /// Start from a real packet of the session and flip bytes in it.
    mutate_real: bool,
    datagram: Vec<u8>,
    advance_ms: u16,
}

#[derive(Debug, Arbitrary)]
struct Input {
    steps: Vec<Step>,
}

fn addrs() -> (SocketAddr, SocketAddr) {
    (
        "192.0.2.1:4000".parse().unwrap(),
        "198.51.100.2:5000".parse().unwrap(),
    )
}

fn pump(
    from: &mut Endpoint,
    from_addr: SocketAddr,
    to: &mut Endpoint,
    now: Instant,
    wall: u64,
) -> bool {
    let mut out = [0u8; MAX_PACKET];
    let mut moved = false;
    while let Some((_, n)) = from.poll_transmit(&mut out) {
        moved = true;
        let _ = to.handle_datagram(now, wall, from_addr, &out[..n]);
    }
    while from.poll_event().is_some() {}
    moved
}

fn settle(a: &mut Endpoint, b: &mut Endpoint, now: Instant, wall: u64) {
    let (aa, ba) = addrs();
    for _ in 0..16 {
        if !(pump(a, aa, b, now, wall) | pump(b, ba, a, now, wall)) {
            break;
        }
    }
}

libfuzzer_sys::fuzz_target!(|input: Input| {
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
    let (ka, kb) = (a.public_key(), b.public_key());
    let mut now = Instant::from_millis(1);
    a.connect(now, WALL, kb, ba).unwrap();
    settle(&mut a, &mut b, now, WALL);
    assert!(a.session(&kb).is_some() && b.session(&ka).is_some());
    let mut real = [0u8; MAX_PACKET];
    let (_, real_len) = a
        .send(now, &kb, 16, b"template", &mut real)
        .unwrap()
        .unwrap();

    for step in input.steps.iter().take(64) {
        now += std::time::Duration::from_millis(u64::from(step.advance_ms));
        let wall = WALL + now.since_origin().as_millis() as u64;
        let mut bytes = step.datagram.clone();
        if step.mutate_real {
            let mut m = real[..real_len].to_vec();
            for (i, x) in bytes.iter().enumerate().take(8) {
                let at = usize::from(*x) % m.len();
                m[at] ^= 1 << (i % 8);
            }
            bytes = m;
        }
        bytes.truncate(2048);
        let from = if step.spoof_peer {
            if step.to % 2 == 0 { aa } else { ba }
        } else {
            SocketAddr::from((step.ip, step.port))
        };
        let ep = if step.to % 2 == 0 { &mut b } else { &mut a };
        match ep.handle_datagram(now, wall, from, &bytes) {
            Received::Data {
                payload, channel, ..
            } => {
                // Only a genuine packet can authenticate.
                assert!(channel != 0 && payload.len() <= natrix_session::MAX_PAYLOAD);
            }
            Received::Consumed | Received::Dropped(_) => {}
        }
        a.handle_timeout(now, wall);
        b.handle_timeout(now, wall);
        settle(&mut a, &mut b, now, wall);
    }

    // The session still works (redial if the input's time jumps let it die).
    let wall = WALL + now.since_origin().as_millis() as u64;
    if a.session(&kb).is_none() || b.session(&ka).is_none() {
        a.close(now, &kb);
        b.close(now, &ka);
        a.connect(now, wall, kb, ba).unwrap();
        settle(&mut a, &mut b, now, wall);
    }
    let mut out = [0u8; MAX_PACKET];
    let (to, n) = a
        .send(now, &kb, 16, b"still works", &mut out)
        .unwrap()
        .unwrap();
    let from = a_addr_as_seen(&b, &ka).unwrap_or(aa);
    let _ = to;
    match b.handle_datagram(now, wall, from, &out[..n]) {
        Received::Data { payload, .. } => assert_eq!(payload, b"still works"),
        other => panic!("valid packet after fuzzing not accepted: {other:?}"),
    }
    let (_, n) = b
        .send(now, &ka, 16, b"and back", &mut out)
        .unwrap()
        .unwrap();
    match a.handle_datagram(now, wall, ba, &out[..n]) {
        Received::Data { payload, .. } => assert_eq!(payload, b"and back"),
        other => panic!("valid packet after fuzzing not accepted: {other:?}"),
    }
});

fn a_addr_as_seen(b: &Endpoint, ka: &natrix_session::PublicKey) -> Option<SocketAddr> {
    b.session(ka).map(|s| s.addr)
}
