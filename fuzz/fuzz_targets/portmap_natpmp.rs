//! Target `portmap_natpmp`: the NAT-PMP decoders never panic and what they
//! accept re-encodes to the same message; a started NAT-PMP client fed
//! arbitrary datagrams (from the gateway, from elsewhere, or well-formed
//! answers with arbitrary fields) and arbitrary timer advances never panics
//! and only ever sends valid requests to the gateway's port 5351.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use arbitrary::Arbitrary;
use natrix_portmap::natpmp::{
    ExternalAddressResponse, MapResponse, NatPmpClient, OP_MAP_UDP, Request, Response, ResultCode,
};
use natrix_portmap::{Client, Instant, MappingRequest, PCP_PORT, Transmit};

#[derive(Debug, Arbitrary)]
enum Action {
    /// A datagram from the gateway.
    FromGateway(Vec<u8>),
    /// A datagram from another host.
    FromElsewhere([u8; 4], u16, Vec<u8>),
    /// A well-formed external address answer.
    Address {
        result: u16,
        epoch: u32,
        ip: [u8; 4],
    },
    /// A well-formed UDP mapping answer for the client's port.
    Map {
        result: u16,
        epoch: u32,
        external_port: u16,
        lifetime: u32,
    },
    Timeout,
    Delete,
    Start,
}

#[derive(Debug, Arbitrary)]
struct Input {
    raw: Vec<u8>,
    steps: Vec<(u16, Action)>,
}

libfuzzer_sys::fuzz_target!(|input: Input| {
    if let Ok(r) = Response::decode(&input.raw) {
        assert_eq!(Response::decode(&r.encode()), Ok(r));
    }
    if let Ok(r) = Request::decode(&input.raw) {
        assert_eq!(Request::decode(&r.encode()), Ok(r));
    }

    let gateway = Ipv4Addr::new(192, 168, 1, 1);
    let gw = SocketAddr::new(IpAddr::V4(gateway), PCP_PORT);
    let internal: SocketAddr = "192.168.1.20:4000".parse().expect("literal");
    let request = MappingRequest::new(internal).expect("valid");
    let mut client = NatPmpClient::new(gateway, request, Duration::from_secs(1)).expect("valid");
    let mut now = Instant::ZERO;
    client.start(now);
    for (advance_ms, action) in input.steps.into_iter().take(256) {
        now = now.saturating_add(Duration::from_millis(u64::from(advance_ms)));
        match action {
            Action::FromGateway(d) => client.handle_udp(now, gw, &d),
            Action::FromElsewhere(ip, port, d) => {
                client.handle_udp(now, SocketAddr::from((ip, port)), &d);
            }
            Action::Address { result, epoch, ip } => {
                let r = Response::ExternalAddress(ExternalAddressResponse {
                    result: ResultCode::from_u16(result),
                    epoch,
                    external_ip: Ipv4Addr::from(ip),
                });
                client.handle_udp(now, gw, &r.encode());
            }
            Action::Map {
                result,
                epoch,
                external_port,
                lifetime,
            } => {
                let r = Response::Map(MapResponse {
                    opcode: OP_MAP_UDP,
                    result: ResultCode::from_u16(result),
                    epoch,
                    internal_port: internal.port(),
                    external_port,
                    lifetime,
                });
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
                panic!("NAT-PMP sent HTTP");
            };
            assert_eq!(to, gw, "P1");
            Request::decode(&payload).expect("the client sends valid requests");
        }
        while client.poll_event().is_some() {}
        if let Some(m) = client.mapping() {
            assert_eq!(m.internal, internal);
            assert_ne!(m.external.port(), 0);
            assert!(!m.external.ip().is_unspecified());
        }
    }
});
