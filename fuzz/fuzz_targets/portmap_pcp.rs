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
use natrix_portmap::{MappingRequest, PCP_PORT};

#[path = "common/udp_client.rs"]
mod udp_client;

use udp_client::{Action, Protocol};

/// An answer to the client's last request, with arbitrary fields.
#[derive(Debug, Arbitrary)]
struct Answer {
    result: u8,
    lifetime: u32,
    epoch: u32,
    external_port: u16,
    external_ip: [u8; 16],
    announce: bool,
}

#[derive(Debug, Arbitrary)]
struct Input {
    seed: u64,
    ipv6: bool,
    raw: Vec<u8>,
    steps: Vec<(u16, Action<Answer>)>,
}

struct Pcp {
    client: PcpClient,
    /// The last request the client sent (answers are built from it).
    last: Option<MapRequest>,
}

impl Protocol for Pcp {
    type Client = PcpClient;
    type Answer = Answer;

    fn client(&mut self) -> &mut PcpClient {
        &mut self.client
    }

    fn answer(&mut self, a: Answer) -> Vec<u8> {
        let body = match self.last {
            Some(req) if !a.announce => ResponseBody::Map(MapPayload {
                nonce: req.nonce,
                protocol: req.protocol,
                internal_port: req.internal_port,
                external_port: a.external_port,
                external_ip: Ipv6Addr::from(a.external_ip),
            }),
            _ => ResponseBody::Announce,
        };
        Response {
            result: ResultCode::from_u8(a.result),
            lifetime: a.lifetime,
            epoch: a.epoch,
            body,
        }
        .encode()
    }

    fn sent(&mut self, payload: &[u8]) {
        let req = MapRequest::decode(payload).expect("the client sends valid requests");
        assert_eq!(req.nonce, self.client.nonce());
        self.last = Some(req);
    }
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
    let client =
        PcpClient::new(gateway, request, input.seed, Duration::from_secs(1)).expect("valid");
    let mut p = Pcp { client, last: None };
    udp_client::drive(&mut p, gw, internal, input.steps);
});
