//! The rendezvous sub-protocol: byte 0 is the kind, integers are big-endian.
//!
//! | kind | message | length | direction |
//! |---|---|---|---|
//! | `0x01` | [`PunchRequest`] | 28 (v1) or 32 (v2) | requester → coordinator |
//! | `0x02` | [`PunchIntroduce`] | 36 | coordinator → both ends |
//! | `0x03` | [`PunchAck`] | 21 | end → coordinator → other end |
//! | `0x04` | [`PunchReject`] | 14 (v2) | coordinator → requester |
//!
//! [`RendezvousMessage::decode`] dispatches on the kind byte; each message type
//! also decodes on its own.

use core::net::SocketAddr;
use core::num::NonZeroU32;

use super::{
    ADDR_LEN, DecodeError, EncodeError, MessageKind, NodeId, decode_addr, encode_addr, expect_len,
    field, put, write_prefix,
};

const KIND_REQUEST: u8 = 0x01;
const KIND_INTRODUCE: u8 = 0x02;
const KIND_ACK: u8 = 0x03;
const KIND_REJECT: u8 = 0x04;

fn check_kind(kind: MessageKind, want: u8, bytes: &[u8]) -> Result<(), DecodeError> {
    match bytes.first() {
        Some(&k) if k == want => Ok(()),
        Some(&k) => Err(DecodeError::WrongKind {
            expected: kind,
            got: k,
        }),
        None => Err(DecodeError::Length {
            kind,
            expected: "at least 1",
            got: 0,
        }),
    }
}

fn addr_at(bytes: &[u8], at: usize) -> Result<SocketAddr, DecodeError> {
    decode_addr(bytes.get(at..at.saturating_add(ADDR_LEN)).unwrap_or(&[]))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(field(bytes, at))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(field(bytes, at))
}

/// `PunchRequest` (kind `0x01`): requester A asks coordinator R to mediate a punch
/// to `target`.
///
/// v1 (28 bytes): kind, target (8), self_reflex `ADDR` (19).
/// v2 (32 bytes): kind, target (8), punch_id (4), self_reflex `ADDR` (19).
///
/// `punch_id == None` is the v1 form; `Some(id)` is v2. The v2 punch id 0 is
/// reserved, which the type makes unrepresentable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PunchRequest {
    /// The node A wants a direct path to.
    pub target: NodeId,
    /// The requester-minted correlation id (v2), or `None` for a v1 request.
    pub punch_id: Option<NonZeroU32>,
    /// A's own guess of its public address. Untrusted: see requirement R1.
    pub self_reflex: SocketAddr,
}

impl PunchRequest {
    /// Length of the v1 form.
    pub const LEN_V1: usize = 28;
    /// Length of the v2 form.
    pub const LEN_V2: usize = 32;
    /// The largest encoding.
    pub const MAX_LEN: usize = Self::LEN_V2;

    /// The punch id as carried in replies (`0` for a v1 request).
    #[must_use]
    pub fn punch_id_or_zero(&self) -> u32 {
        self.punch_id.map_or(0, NonZeroU32::get)
    }

    /// The length this request encodes to.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        if self.punch_id.is_some() {
            Self::LEN_V2
        } else {
            Self::LEN_V1
        }
    }

    /// Decodes either form.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        check_kind(MessageKind::PunchRequest, KIND_REQUEST, bytes)?;
        let target = NodeId(u64_at(bytes, 1));
        match bytes.len() {
            Self::LEN_V1 => Ok(PunchRequest {
                target,
                punch_id: None,
                self_reflex: addr_at(bytes, 9)?,
            }),
            Self::LEN_V2 => {
                let id = NonZeroU32::new(u32_at(bytes, 9)).ok_or(DecodeError::ReservedPunchId)?;
                Ok(PunchRequest {
                    target,
                    punch_id: Some(id),
                    self_reflex: addr_at(bytes, 13)?,
                })
            }
            got => Err(DecodeError::Length {
                kind: MessageKind::PunchRequest,
                expected: "28 or 32",
                got,
            }),
        }
    }

    /// Encodes into `buf`, returning the number of bytes written (28 or 32).
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let (bytes, len) = self.to_bytes();
        write_prefix(
            MessageKind::PunchRequest,
            bytes.get(..len).unwrap_or(&[]),
            buf,
        )
    }

    /// The encoding in a 32-byte array, and how many of its bytes are used.
    #[must_use]
    pub fn to_bytes(&self) -> ([u8; Self::MAX_LEN], usize) {
        let mut out = [0u8; Self::MAX_LEN];
        out[0] = KIND_REQUEST;
        put(&mut out, 1, &self.target.0.to_be_bytes());
        match self.punch_id {
            None => {
                put(&mut out, 9, &encode_addr(&self.self_reflex));
                (out, Self::LEN_V1)
            }
            Some(id) => {
                put(&mut out, 9, &id.get().to_be_bytes());
                put(&mut out, 13, &encode_addr(&self.self_reflex));
                (out, Self::LEN_V2)
            }
        }
    }
}

/// `PunchIntroduce` (kind `0x02`, 36 bytes): the coordinator tells one end where
/// the other end is and when to fire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PunchIntroduce {
    /// The other endpoint's node id.
    pub peer: NodeId,
    /// Where to send keep-alives.
    pub peer_reflex: SocketAddr,
    /// Unix epoch milliseconds at which to start the keep-alive train.
    pub fire_at_ms: u64,
}

impl PunchIntroduce {
    /// Encoded length.
    pub const LEN: usize = 36;

    /// Decodes exactly 36 bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        check_kind(MessageKind::PunchIntroduce, KIND_INTRODUCE, bytes)?;
        expect_len(MessageKind::PunchIntroduce, bytes, Self::LEN, "36")?;
        Ok(PunchIntroduce {
            peer: NodeId(u64_at(bytes, 1)),
            peer_reflex: addr_at(bytes, 9)?,
            fire_at_ms: u64_at(bytes, 28),
        })
    }

    /// Encodes into `buf`, returning the number of bytes written.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        write_prefix(MessageKind::PunchIntroduce, &self.to_bytes(), buf)
    }

    /// The encoding as a fixed-size array.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0] = KIND_INTRODUCE;
        put(&mut out, 1, &self.peer.0.to_be_bytes());
        put(&mut out, 9, &encode_addr(&self.peer_reflex));
        put(&mut out, 28, &self.fire_at_ms.to_be_bytes());
        out
    }
}

/// `PunchAck` (kind `0x03`, 21 bytes): `from_peer` saw the counterpart's
/// keep-alive; the coordinator forwards the ack to `to_peer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PunchAck {
    /// The endpoint that observed the counterpart's keep-alive.
    pub from_peer: NodeId,
    /// The endpoint the coordinator forwards the ack to.
    pub to_peer: NodeId,
    /// Echoed from the request (0 when unknown).
    pub punch_id: u32,
}

impl PunchAck {
    /// Encoded length.
    pub const LEN: usize = 21;

    /// Decodes exactly 21 bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        check_kind(MessageKind::PunchAck, KIND_ACK, bytes)?;
        expect_len(MessageKind::PunchAck, bytes, Self::LEN, "21")?;
        Ok(PunchAck {
            from_peer: NodeId(u64_at(bytes, 1)),
            to_peer: NodeId(u64_at(bytes, 9)),
            punch_id: u32_at(bytes, 17),
        })
    }

    /// Encodes into `buf`, returning the number of bytes written.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        write_prefix(MessageKind::PunchAck, &self.to_bytes(), buf)
    }

    /// The encoding as a fixed-size array.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0] = KIND_ACK;
        put(&mut out, 1, &self.from_peer.0.to_be_bytes());
        put(&mut out, 9, &self.to_peer.0.to_be_bytes());
        put(&mut out, 17, &self.punch_id.to_be_bytes());
        out
    }
}

/// Why a coordinator refused to mediate a punch (the `PunchReject` reason byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// `0x01`: the requester exceeded its budget (R5).
    RateLimited,
    /// `0x02`: the coordinator knows no reflex for the target (R5).
    UnknownTargetReflex,
    /// `0x03`: the coordinator has no session with the target (R5).
    NoSessionWithTarget,
    /// `0x04`: `self_reflex` disagrees with the requester's session IP (R1);
    /// relayed by natrix coordinators also when an endpoint found the
    /// introduced reflex disagreeing with the peer's announcement (R4, R12).
    ReflexMismatch,
    /// `0x05` (natrix extension): a reflex in the request, the introduce or
    /// the target's announcement is not a usable destination: port 0, a
    /// broadcast, multicast or unspecified address, or the coordinator's or
    /// the endpoint's own address (R13).
    BogusReflex,
    /// `0x06` (natrix extension): the target refused to run the keep-alive
    /// train (its responder budgets are spent, R5); relayed by the
    /// coordinator on natrix's own channel.
    ResponderBusy,
    /// Any other byte: still a reject, never a dropped packet. The raw byte is
    /// kept so that re-encoding is exact; [`RejectReason::UNSPECIFIED`] is the
    /// value to send when no reason applies.
    Unspecified(u8),
}

impl RejectReason {
    /// The reason to send when none of the named reasons applies (byte `0x00`).
    pub const UNSPECIFIED: RejectReason = RejectReason::Unspecified(0);

    /// Maps a reason byte; bytes outside `0x01..=0x06` are [`Unspecified`](Self::Unspecified).
    ///
    /// `0x05` and `0x06` are natrix extensions: a Net v0.27 peer decodes them
    /// as "unspecified", which is still a reject, so sending them to Net peers
    /// keeps the Net form and meaning.
    #[must_use]
    pub fn from_byte(b: u8) -> Self {
        match b {
            0x01 => RejectReason::RateLimited,
            0x02 => RejectReason::UnknownTargetReflex,
            0x03 => RejectReason::NoSessionWithTarget,
            0x04 => RejectReason::ReflexMismatch,
            0x05 => RejectReason::BogusReflex,
            0x06 => RejectReason::ResponderBusy,
            other => RejectReason::Unspecified(other),
        }
    }

    /// The reason byte.
    #[must_use]
    pub fn to_byte(self) -> u8 {
        match self {
            RejectReason::RateLimited => 0x01,
            RejectReason::UnknownTargetReflex => 0x02,
            RejectReason::NoSessionWithTarget => 0x03,
            RejectReason::ReflexMismatch => 0x04,
            RejectReason::BogusReflex => 0x05,
            RejectReason::ResponderBusy => 0x06,
            RejectReason::Unspecified(b) => b,
        }
    }
}

impl core::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RejectReason::RateLimited => f.write_str("rate limited"),
            RejectReason::UnknownTargetReflex => f.write_str("unknown target reflex"),
            RejectReason::NoSessionWithTarget => f.write_str("no session with target"),
            RejectReason::ReflexMismatch => f.write_str("reflex mismatch"),
            RejectReason::BogusReflex => f.write_str("bogus reflex address"),
            RejectReason::ResponderBusy => f.write_str("responder busy"),
            RejectReason::Unspecified(b) => write!(f, "unspecified ({b:#04x})"),
        }
    }
}

/// `PunchReject` (kind `0x04`, 14 bytes, v2): the coordinator refuses a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PunchReject {
    /// Echoes the request's target.
    pub target: NodeId,
    /// Echoes the request's punch id (0 for a v1 request).
    pub punch_id: u32,
    /// Why.
    pub reason: RejectReason,
}

impl PunchReject {
    /// Encoded length.
    pub const LEN: usize = 14;

    /// Decodes exactly 14 bytes. Every reason byte is accepted.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        check_kind(MessageKind::PunchReject, KIND_REJECT, bytes)?;
        expect_len(MessageKind::PunchReject, bytes, Self::LEN, "14")?;
        let [reason] = field::<1>(bytes, 13);
        Ok(PunchReject {
            target: NodeId(u64_at(bytes, 1)),
            punch_id: u32_at(bytes, 9),
            reason: RejectReason::from_byte(reason),
        })
    }

    /// Encodes into `buf`, returning the number of bytes written.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        write_prefix(MessageKind::PunchReject, &self.to_bytes(), buf)
    }

    /// The encoding as a fixed-size array.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0] = KIND_REJECT;
        put(&mut out, 1, &self.target.0.to_be_bytes());
        put(&mut out, 9, &self.punch_id.to_be_bytes());
        out[13] = self.reason.to_byte();
        out
    }
}

/// Any rendezvous message, decoded by its kind byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RendezvousMessage {
    /// Kind `0x01`.
    Request(PunchRequest),
    /// Kind `0x02`.
    Introduce(PunchIntroduce),
    /// Kind `0x03`.
    Ack(PunchAck),
    /// Kind `0x04`.
    Reject(PunchReject),
}

impl RendezvousMessage {
    /// The largest encoding of any rendezvous message.
    pub const MAX_LEN: usize = PunchIntroduce::LEN;

    /// Decodes a rendezvous payload by its kind byte.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        match bytes.first() {
            None => Err(DecodeError::Length {
                kind: MessageKind::Rendezvous,
                expected: "at least 1",
                got: 0,
            }),
            Some(&KIND_REQUEST) => PunchRequest::decode(bytes).map(Self::Request),
            Some(&KIND_INTRODUCE) => PunchIntroduce::decode(bytes).map(Self::Introduce),
            Some(&KIND_ACK) => PunchAck::decode(bytes).map(Self::Ack),
            Some(&KIND_REJECT) => PunchReject::decode(bytes).map(Self::Reject),
            Some(&other) => Err(DecodeError::UnknownKind(other)),
        }
    }

    /// Encodes into `buf`, returning the number of bytes written.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        match self {
            Self::Request(m) => m.encode(buf),
            Self::Introduce(m) => m.encode(buf),
            Self::Ack(m) => m.encode(buf),
            Self::Reject(m) => m.encode(buf),
        }
    }

    /// The encoding in a [`MAX_LEN`](Self::MAX_LEN)-byte array, and its length.
    #[must_use]
    pub fn to_bytes(&self) -> ([u8; Self::MAX_LEN], usize) {
        let mut out = [0u8; Self::MAX_LEN];
        let len = self.encode(&mut out).unwrap_or(0);
        (out, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> std::vec::Vec<u8> {
        let s: std::string::String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn worked_example_punch_request_v2() {
        let bytes = hex("01 0102030405060708 0A0B0C0D 04 C0000207 000000000000000000000000 2329");
        let req = PunchRequest {
            target: NodeId(0x0102_0304_0506_0708),
            punch_id: NonZeroU32::new(0x0A0B_0C0D),
            self_reflex: "192.0.2.7:9001".parse().unwrap(),
        };
        assert_eq!(PunchRequest::decode(&bytes), Ok(req));
        let (enc, len) = req.to_bytes();
        assert_eq!(&enc[..len], &bytes[..]);
        assert_eq!(len, 32);
    }

    #[test]
    fn punch_request_v1_layout() {
        let req = PunchRequest {
            target: NodeId(0x1122_3344_5566_7788),
            punch_id: None,
            self_reflex: "[2001:db8::9]:443".parse().unwrap(),
        };
        let mut buf = [0u8; 64];
        let n = req.encode(&mut buf).unwrap();
        assert_eq!(n, 28);
        assert_eq!(buf[0], 0x01);
        assert_eq!(&buf[1..9], &0x1122_3344_5566_7788u64.to_be_bytes());
        assert_eq!(buf[9], 6);
        assert_eq!(&buf[26..28], &443u16.to_be_bytes());
        let d = PunchRequest::decode(&buf[..n]).unwrap();
        assert_eq!(d, req);
        assert_eq!(d.punch_id_or_zero(), 0);
        for len in [0, 1, 27, 29, 31, 33] {
            assert!(matches!(
                PunchRequest::decode(&buf[..len.min(buf.len())]),
                Err(DecodeError::Length { .. })
            ));
        }
    }

    #[test]
    fn punch_request_v2_rejects_reserved_id() {
        let mut bytes =
            hex("01 0102030405060708 00000000 04 C0000207 000000000000000000000000 2329");
        assert_eq!(
            PunchRequest::decode(&bytes),
            Err(DecodeError::ReservedPunchId)
        );
        bytes[0] = 0x02;
        assert_eq!(
            PunchRequest::decode(&bytes),
            Err(DecodeError::WrongKind {
                expected: MessageKind::PunchRequest,
                got: 2
            })
        );
    }

    #[test]
    fn punch_introduce_layout() {
        let m = PunchIntroduce {
            peer: NodeId(0xAABB),
            peer_reflex: "198.51.100.4:40000".parse().unwrap(),
            fire_at_ms: 0x0000_0193_0000_1234,
        };
        let b = m.to_bytes();
        assert_eq!(b.len(), 36);
        assert_eq!(b[0], 0x02);
        assert_eq!(&b[1..9], &0xAABBu64.to_be_bytes());
        assert_eq!(&b[9..28], &encode_addr(&m.peer_reflex));
        assert_eq!(&b[28..36], &0x0000_0193_0000_1234u64.to_be_bytes());
        assert_eq!(PunchIntroduce::decode(&b), Ok(m));
        assert!(PunchIntroduce::decode(&b[..35]).is_err());
    }

    #[test]
    fn punch_ack_layout() {
        let m = PunchAck {
            from_peer: NodeId(1),
            to_peer: NodeId(2),
            punch_id: 0xDEAD_BEEF,
        };
        let b = m.to_bytes();
        assert_eq!(
            b,
            [
                3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0xDE, 0xAD, 0xBE, 0xEF
            ]
        );
        assert_eq!(PunchAck::decode(&b), Ok(m));
    }

    #[test]
    fn punch_reject_layout_and_unspecified_fallback() {
        let m = PunchReject {
            target: NodeId(9),
            punch_id: 7,
            reason: RejectReason::ReflexMismatch,
        };
        let mut b = m.to_bytes();
        assert_eq!(b, [4, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 7, 4]);
        assert_eq!(PunchReject::decode(&b), Ok(m));
        for (byte, reason) in [
            (1, RejectReason::RateLimited),
            (2, RejectReason::UnknownTargetReflex),
            (3, RejectReason::NoSessionWithTarget),
            (4, RejectReason::ReflexMismatch),
            (5, RejectReason::BogusReflex),
            (6, RejectReason::ResponderBusy),
            (0, RejectReason::Unspecified(0)),
            (7, RejectReason::Unspecified(7)),
            (0xFF, RejectReason::Unspecified(0xFF)),
        ] {
            b[13] = byte;
            let d = PunchReject::decode(&b).unwrap();
            assert_eq!(d.reason, reason);
            assert_eq!(d.to_bytes(), b);
        }
    }

    #[test]
    fn dispatch_by_kind() {
        assert_eq!(
            RendezvousMessage::decode(&[0x05; 14]),
            Err(DecodeError::UnknownKind(5))
        );
        assert!(matches!(
            RendezvousMessage::decode(&[]),
            Err(DecodeError::Length { got: 0, .. })
        ));
        let ack = PunchAck {
            from_peer: NodeId(3),
            to_peer: NodeId(4),
            punch_id: 0,
        };
        let (b, n) = RendezvousMessage::Ack(ack).to_bytes();
        assert_eq!(
            RendezvousMessage::decode(&b[..n]),
            Ok(RendezvousMessage::Ack(ack))
        );
    }
}
