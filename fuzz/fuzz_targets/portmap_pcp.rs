//! Target `portmap_pcp`: the PCP decoders never panic and what they accept
//! re-encodes to the same message; a started PCP client fed arbitrary
//! datagrams (from the gateway, from elsewhere, or answers built from its own
//! request with arbitrary fields) and arbitrary timer advances never panics,
//! and only ever sends valid MAP requests with its nonce to the gateway's
//! port 5351.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use arbitrary::Arbitrary;
use natrix_portmap::pcp::{MapPayload, MapRequest, PcpClient, Response, ResponseBody, ResultCode};
use natrix_portmap::{Client, Instant, MappingRequest, PCP_PORT, Transmit};

#[derive(Debug, Arbitrary)]
enum Action {
    /// A datagram from the gateway.
    FromGateway(Vec<u8>),
    /// A datagram from another host.
    FromElsewhere([u8; 4], u16, Vec<u8>),
    /// An answer to the client's last request.
    Answer {
        result: u8,
        lifetime: u32,
        epoch: u32,
        external_port: u16,
        external_ip: [u8; 16],
        announce: bool,
    },
    Timeout,
    Delete,
    Start,
}

#[derive(Debug, Arbitrary)]
struct Input {
    seed: u64,
    ipv6: bool,
    raw: Vec<u8>,
    steps: Vec<(u16, Action)>,
}

libfuzzer_sys::fuzz_target!(|input: Input| {
    if let Ok(r) = Response::decode(&input.raw) {
        assert_eq!(Response::decode(&r.encode()), Ok(r));
    }
    if let Ok(r) = MapRequest::decode(&input.raw) {
        assert_eq!(MapRequest::decode(&r.encode()), Ok(r));
    }

    let (gateway, internal): (IpAddr, SocketAddr) = if input.ipv6 {
        (
            IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
            "[2001:db8::20]:4000".parse().expect("literal"),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1)),
            "192.168.1.20:4000".parse().expect("literal"),
        )
    };
    let gw = SocketAddr::new(gateway, PCP_PORT);
    let request = MappingRequest::new(internal).expect("valid");
    let mut client =
        PcpClient::new(gateway, request, input.seed, Duration::from_secs(1)).expect("valid");
    let mut now = Instant::ZERO;
    client.start(now);
    let mut last: Option<MapRequest> = None;
    for (advance_ms, action) in input.steps.into_iter().take(256) {
        now = now.saturating_add(Duration::from_millis(u64::from(advance_ms)));
        match action {
            Action::FromGateway(d) => client.handle_udp(now, gw, &d),
            Action::FromElsewhere(ip, port, d) => {
                client.handle_udp(now, SocketAddr::from((ip, port)), &d);
            }
            Action::Answer {
                result,
                lifetime,
                epoch,
                external_port,
                external_ip,
                announce,
            } => {
                let body = match last {
                    Some(req) if !announce => ResponseBody::Map(MapPayload {
                        nonce: req.nonce,
                        protocol: req.protocol,
                        internal_port: req.internal_port,
                        external_port,
                        external_ip: Ipv6Addr::from(external_ip),
                    }),
                    _ => ResponseBody::Announce,
                };
                let r = Response {
                    result: ResultCode::from_u8(result),
                    lifetime,
                    epoch,
                    body,
                };
                client.handle_udp(now, gw, &r.encode());
            }
            Action::Timeout => {
                if let Some(t) = client.poll_timeout() {
                    now = now.max(t);
                }
                client.handle_timeout(now);
            }
            Action::Delete => client.delete(now),
            Action::Start => client.start(now),
        }
        while let Some(t) = client.poll_transmit() {
            let Transmit::Udp { to, payload } = t else {
                panic!("PCP sent HTTP");
            };
            assert_eq!(to, gw, "P1");
            let req = MapRequest::decode(&payload).expect("the client sends valid requests");
            assert_eq!(req.nonce, client.nonce());
            last = Some(req);
        }
        while client.poll_event().is_some() {}
        if let Some(m) = client.mapping() {
            assert_eq!(m.internal, internal);
            assert_ne!(m.external.port(), 0);
        }
    }
});
