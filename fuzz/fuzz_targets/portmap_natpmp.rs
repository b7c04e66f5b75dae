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
use natrix_portmap::{Mapping, MappingRequest, PCP_PORT};

#[path = "common/udp_client.rs"]
mod udp_client;

use udp_client::{Action, Protocol};

/// A well-formed NAT-PMP answer.
#[derive(Debug, Arbitrary)]
enum Answer {
    /// An external address answer.
    Address {
        result: u16,
        epoch: u32,
        ip: [u8; 4],
    },
    /// A UDP mapping answer for the client's port.
    Map {
        result: u16,
        epoch: u32,
        external_port: u16,
        lifetime: u32,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    raw: Vec<u8>,
    steps: Vec<(u16, Action<Answer>)>,
}

struct NatPmp {
    client: NatPmpClient,
    internal_port: u16,
}

impl Protocol for NatPmp {
    type Client = NatPmpClient;
    type Answer = Answer;

    fn client(&mut self) -> &mut NatPmpClient {
        &mut self.client
    }

    fn answer(&mut self, answer: Answer) -> Vec<u8> {
        match answer {
            Answer::Address { result, epoch, ip } => {
                Response::ExternalAddress(ExternalAddressResponse {
                    result: ResultCode::from_u16(result),
                    epoch,
                    external_ip: Ipv4Addr::from(ip),
                })
            }
            Answer::Map {
                result,
                epoch,
                external_port,
                lifetime,
            } => Response::Map(MapResponse {
                opcode: OP_MAP_UDP,
                result: ResultCode::from_u16(result),
                epoch,
                internal_port: self.internal_port,
                external_port,
                lifetime,
            }),
        }
        .encode()
    }

    fn sent(&mut self, payload: &[u8]) {
        Request::decode(payload).expect("the client sends valid requests");
    }

    fn installed(&self, mapping: &Mapping) {
        assert!(!mapping.external.ip().is_unspecified());
    }
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
    let client = NatPmpClient::new(gateway, request, Duration::from_secs(1)).expect("valid");
    let mut p = NatPmp {
        client,
        internal_port: internal.port(),
    };
    udp_client::drive(&mut p, gw, internal, input.steps);
});
