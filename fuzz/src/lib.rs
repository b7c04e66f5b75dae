//! Oracles for the natrix fuzz targets. Each target in `fuzz_targets/` is a
//! one-line call into this library, so the checks live in one place.
//!
//! Decoder oracles assert: no panic, and every `Ok` re-encodes to exactly the
//! input (the encoding is canonical). Agent oracles live in [`agent`].

pub mod agent;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::num::NonZeroU32;

use arbitrary::{Arbitrary, Unstructured};
use natrix_proto::wire::{
    Hello, Keepalive, NatrixMessage, NodeId, PunchAck, PunchBind, PunchIntroduce, PunchPredict,
    PunchRefusal, PunchReject, PunchRequest, ReflexRequest, ReflexResponse, RejectReason,
    RendezvousMessage, encode_addr, is_keepalive,
};

/// Decodes `data`; when that succeeds, re-encoding must give back `data`.
fn canonical<T: std::fmt::Debug, E>(
    data: &[u8],
    decode: impl Fn(&[u8]) -> Result<T, E>,
    encode: impl Fn(&T) -> Vec<u8>,
) -> Option<T> {
    let value = decode(data).ok()?;
    assert_eq!(encode(&value), data, "non-canonical decode of {value:?}");
    Some(value)
}

fn rendezvous_bytes(m: &RendezvousMessage) -> Vec<u8> {
    let (b, n) = m.to_bytes();
    b[..n].to_vec()
}

/// Target `decode_addr`.
pub fn decode_addr(data: &[u8]) {
    canonical(data, natrix_proto::wire::decode_addr, |a| {
        encode_addr(a).to_vec()
    });
}

/// Target `decode_reflex_request`: only the empty payload is valid.
pub fn decode_reflex_request(data: &[u8]) {
    let ok = canonical(data, ReflexRequest::decode, |r| r.to_bytes().to_vec()).is_some();
    assert_eq!(ok, data.is_empty());
}

/// Target `decode_reflex_response`.
pub fn decode_reflex_response(data: &[u8]) {
    if let Some(r) = canonical(data, ReflexResponse::decode, |r| r.to_bytes().to_vec()) {
        assert_eq!(decode_addr_ok(data), Some(r.observed));
    }
}

fn decode_addr_ok(data: &[u8]) -> Option<SocketAddr> {
    natrix_proto::wire::decode_addr(data).ok()
}

/// Target `decode_punch_request`.
pub fn decode_punch_request(data: &[u8]) {
    if let Some(r) = canonical(data, PunchRequest::decode, |r| {
        let (b, n) = r.to_bytes();
        b[..n].to_vec()
    }) {
        assert_eq!(r.encoded_len(), data.len());
    }
}

/// Target `decode_punch_introduce`.
pub fn decode_punch_introduce(data: &[u8]) {
    canonical(data, PunchIntroduce::decode, |m| m.to_bytes().to_vec());
}

/// Target `decode_punch_ack`.
pub fn decode_punch_ack(data: &[u8]) {
    canonical(data, PunchAck::decode, |m| m.to_bytes().to_vec());
}

/// Target `decode_punch_reject`: every reason byte decodes.
pub fn decode_punch_reject(data: &[u8]) {
    let ok = canonical(data, PunchReject::decode, |m| m.to_bytes().to_vec()).is_some();
    assert_eq!(ok, data.len() == PunchReject::LEN && data[0] == 0x04);
}

/// Target `decode_rendezvous`: the dispatcher agrees with the per-kind decoder.
pub fn decode_rendezvous(data: &[u8]) {
    let m = canonical(data, RendezvousMessage::decode, rendezvous_bytes);
    let per_kind = match data.first() {
        Some(0x01) => PunchRequest::decode(data)
            .map(RendezvousMessage::Request)
            .ok(),
        Some(0x02) => PunchIntroduce::decode(data)
            .map(RendezvousMessage::Introduce)
            .ok(),
        Some(0x03) => PunchAck::decode(data).map(RendezvousMessage::Ack).ok(),
        Some(0x04) => PunchReject::decode(data)
            .map(RendezvousMessage::Reject)
            .ok(),
        _ => None,
    };
    assert_eq!(m, per_kind);
}

/// Target `decode_natrix`: natrix's own control messages (channel 7). The
/// dispatcher agrees with the per-kind decoders, every `Ok` is canonical, and
/// no natrix payload is also a rendezvous message.
pub fn decode_natrix(data: &[u8]) {
    let m = canonical(data, NatrixMessage::decode, |m| {
        let (b, n) = m.to_bytes();
        b[..n].to_vec()
    });
    let per_kind = match data.first() {
        Some(0x10) => Hello::decode(data).map(NatrixMessage::Hello).ok(),
        Some(0x11) => PunchBind::decode(data).map(NatrixMessage::Bind).ok(),
        Some(0x14) => PunchPredict::decode(data).map(NatrixMessage::Predict).ok(),
        Some(0x12 | 0x13) if data.len() == PunchRefusal::LEN => {
            let r = PunchRefusal {
                peer: NodeId(u64::from_be_bytes(data[1..9].try_into().unwrap())),
                punch_id: u32::from_be_bytes(data[9..13].try_into().unwrap()),
                reason: RejectReason::from_byte(data[13]),
            };
            Some(if data[0] == 0x12 {
                NatrixMessage::Refuse(r)
            } else {
                NatrixMessage::Refused(r)
            })
        }
        _ => None,
    };
    assert_eq!(m, per_kind);
    if m.is_some() {
        assert!(RendezvousMessage::decode(data).is_err());
    }
}

/// Target `decode_keepalive`: the predicate agrees with the decoder.
pub fn decode_keepalive(data: &[u8]) {
    let ok = canonical(data, Keepalive::decode, |k| k.to_bytes().to_vec()).is_some();
    assert_eq!(ok, is_keepalive(data));
}

/// An address built from fuzz input: IPv4, IPv6 or IPv4-mapped IPv6, with the
/// scope id and flow info the wire does not carry left at 0.
#[derive(Debug, Clone, Copy)]
pub struct WireAddr(pub SocketAddr);

impl<'a> Arbitrary<'a> for WireAddr {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let port = u16::arbitrary(u)?;
        let ip: IpAddr = match u.int_in_range(0u8..=2)? {
            0 => Ipv4Addr::from(u32::arbitrary(u)?).into(),
            1 => Ipv6Addr::from(u128::arbitrary(u)?).into(),
            _ => Ipv4Addr::from(u32::arbitrary(u)?).to_ipv6_mapped().into(),
        };
        Ok(WireAddr(match ip {
            IpAddr::V4(_) => SocketAddr::new(ip, port),
            IpAddr::V6(v6) => SocketAddr::V6(SocketAddrV6::new(v6, port, 0, 0)),
        }))
    }
}

/// Any message, for the round-trip target.
#[derive(Debug, Arbitrary)]
pub enum AnyMessage {
    /// An address block.
    Addr(WireAddr),
    /// A reflex response.
    Reflex(WireAddr),
    /// A `PunchRequest` (punch id 0 = v1).
    Request(u64, u32, WireAddr),
    /// A `PunchIntroduce`.
    Introduce(u64, WireAddr, u64),
    /// A `PunchAck`.
    Ack(u64, u64, u32),
    /// A `PunchReject` with any reason byte.
    Reject(u64, u32, u8),
    /// A keep-alive.
    Keepalive(u64, u32),
}

/// Target `roundtrip`: encode then decode gives the same value.
pub fn roundtrip(m: &AnyMessage) {
    match *m {
        AnyMessage::Addr(WireAddr(a)) => assert_eq!(decode_addr_ok(&encode_addr(&a)), Some(a)),
        AnyMessage::Reflex(WireAddr(observed)) => {
            let r = ReflexResponse { observed };
            assert_eq!(ReflexResponse::decode(&r.to_bytes()), Ok(r));
        }
        AnyMessage::Keepalive(sender, punch_id) => {
            let k = Keepalive {
                sender: NodeId(sender),
                punch_id,
            };
            assert_eq!(Keepalive::decode(&k.to_bytes()), Ok(k));
        }
        _ => {
            let msg = match *m {
                AnyMessage::Request(t, id, WireAddr(a)) => {
                    RendezvousMessage::Request(PunchRequest {
                        target: NodeId(t),
                        punch_id: NonZeroU32::new(id),
                        self_reflex: a,
                    })
                }
                AnyMessage::Introduce(p, WireAddr(a), fire) => {
                    RendezvousMessage::Introduce(PunchIntroduce {
                        peer: NodeId(p),
                        peer_reflex: a,
                        fire_at_ms: fire,
                    })
                }
                AnyMessage::Ack(f, t, id) => RendezvousMessage::Ack(PunchAck {
                    from_peer: NodeId(f),
                    to_peer: NodeId(t),
                    punch_id: id,
                }),
                AnyMessage::Reject(t, id, r) => RendezvousMessage::Reject(PunchReject {
                    target: NodeId(t),
                    punch_id: id,
                    reason: RejectReason::from_byte(r),
                }),
                _ => return,
            };
            assert_eq!(RendezvousMessage::decode(&rendezvous_bytes(&msg)), Ok(msg));
        }
    }
}
