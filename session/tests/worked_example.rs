//! The worked example in docs/protocol.md ("Sessions") is a real packet:
//! this test rebuilds it and compares the bytes.
#![allow(missing_docs)]

use std::net::SocketAddr;

use natrix_proto::Instant;
use natrix_session::{Endpoint, Keypair, MAX_PACKET, SessionConfig};

const WALL: u64 = 1_700_000_000_000;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The datagrams of: A (secret [1; 32], seed [11; 32]) dials B (secret
/// [2; 32], seed [22; 32]) with "hello" queued on channel 16, at
/// `Instant` 1 s and wall clock 1,700,000,000,000 ms on both sides.
fn transcript() -> Vec<(SocketAddr, Vec<u8>)> {
    let aa: SocketAddr = "192.0.2.1:4000".parse().unwrap();
    let ba: SocketAddr = "198.51.100.2:5000".parse().unwrap();
    let mut a = Endpoint::new(
        Keypair::from_secret([1; 32]),
        SessionConfig::default(),
        [11; 32],
    );
    let mut b = Endpoint::new(
        Keypair::from_secret([2; 32]),
        SessionConfig::default(),
        [22; 32],
    );
    let now = Instant::from_millis(1_000);
    a.connect(now, WALL, b.public_key(), ba).unwrap();
    assert_eq!(
        a.send(now, &b.public_key(), 16, b"hello", &mut [0; MAX_PACKET]),
        Ok(None)
    );
    let mut log = Vec::new();
    let mut out = [0u8; MAX_PACKET];
    loop {
        let mut moved = false;
        while let Some((_, n)) = a.poll_transmit(&mut out) {
            moved = true;
            log.push((aa, out[..n].to_vec()));
            let _ = b.handle_datagram(now, WALL, aa, &out[..n]);
        }
        while let Some((_, n)) = b.poll_transmit(&mut out) {
            moved = true;
            log.push((ba, out[..n].to_vec()));
            let _ = a.handle_datagram(now, WALL, ba, &out[..n]);
        }
        if !moved {
            break;
        }
    }
    log
}

#[test]
fn docs_worked_example_transport_packet() {
    let log = transcript();
    let sizes: Vec<usize> = log.iter().map(|(_, b)| b.len()).collect();
    // init, response, hello, A's clock ping (with the key confirmation),
    // B's clock ping, then the two pongs.
    assert_eq!(sizes, [144, 108, 38, 42, 42, 50, 50]);
    // init, response, then A's first transport packet: "hello" on channel 16.
    let (_, hello) = &log[2];
    assert_eq!(hello.len(), 16 + 1 + 5 + 16);
    assert_eq!(
        hex(hello),
        EXPECTED_HELLO,
        "docs/protocol.md shows this packet; update both together"
    );
}

const EXPECTED_HELLO: &str =
    "a4000000e84acacd0000000000000000b9df991d6825d1ec26995ff0dab919f03c4c6af0828d";
