//! Target `stun_decode`: the STUN decoder never panics, and what it accepts
//! re-encodes to a message that decodes the same; a STUN server (plain,
//! RFC 5780 over IPv4 and over IPv6) fed the same bytes never panics and
//! never answers with more than the request plus the address attributes it
//! reports (36 bytes over IPv4, 72 over IPv6 with RFC 5780), nor with an
//! error more than 36 bytes larger than the request, and only ever to the
//! source's IP.
#![no_main]

use std::net::SocketAddr;

use natrix_stun::Instant;
use natrix_stun::codec::{
    self, HEADER_LEN, MAX_MESSAGE, Message, address_attribute_len, decode, encode_error,
    encode_request, encode_success,
};
use natrix_stun::server::{ERROR_GROWTH, ServerConfig, StunServer};

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("literal")
}

/// (primary, alternate, the local address a datagram arrives on, its source)
const SETUPS: [(&str, Option<&str>, &str, &str); 4] = [
    (
        "192.0.2.1:3478",
        None,
        "192.0.2.1:3478",
        "198.51.100.7:40000",
    ),
    (
        "192.0.2.1:3478",
        Some("192.0.2.2:3479"),
        "192.0.2.2:3478",
        "198.51.100.7:40000",
    ),
    (
        "192.0.2.1:3478",
        Some("192.0.2.2:3479"),
        "192.0.2.1:3479",
        "[::ffff:198.51.100.7]:1",
    ),
    (
        "[2001:db8::1]:3478",
        Some("[2001:db8::2]:3479"),
        "[2001:db8::1]:3478",
        "[2001:db8::9]:5",
    ),
];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode(data) {
        let mut buf = [0u8; MAX_MESSAGE];
        let n = match msg {
            Message::Request(r) => encode_request(&r, &mut buf),
            Message::Success(r) => encode_success(&r, false, &mut buf),
            Message::Error { transaction, code } => encode_error(&transaction, code, &[], &mut buf),
        }
        .expect("a decoded message re-encodes");
        assert_eq!(decode(&buf[..n]), Ok(msg), "re-decode differs");
    }

    for (primary, alternate, local, from) in SETUPS {
        let mut server = StunServer::new(ServerConfig {
            alternate: alternate.map(sa),
            ..ServerConfig::new(sa(primary))
        });
        let (local, from) = (sa(local), sa(from));
        let mut out = [0u8; 2048];
        let Some(reply) = server.handle(Instant::ZERO, local, from, data, &mut out) else {
            continue;
        };
        let answer = &out[..reply.len];
        assert!(reply.len <= MAX_MESSAGE && reply.len >= HEADER_LEN);
        assert_eq!(reply.to.ip(), from.ip(), "answer sent to another IP");
        let growth = reply.len.saturating_sub(data.len());
        match decode(answer) {
            Ok(Message::Success(resp)) => {
                let reported = address_attribute_len(&resp.mapped)
                    + resp.other_address.as_ref().map_or(0, address_attribute_len)
                    + resp
                        .response_origin
                        .as_ref()
                        .map_or(0, address_attribute_len);
                assert!(growth <= reported, "amplification: {growth} > {reported}");
                if local.is_ipv4() {
                    assert!(growth <= 36, "amplification over IPv4: {growth}");
                }
                assert_eq!(resp.mapped.ip(), from.ip().to_canonical());
            }
            Ok(Message::Error { .. }) => {
                assert!(growth <= ERROR_GROWTH, "error amplification: {growth}");
            }
            other => panic!("the server sent {other:?}"),
        }
        assert_eq!(codec::has_fingerprint(answer), codec::has_fingerprint(data));
    }
});
