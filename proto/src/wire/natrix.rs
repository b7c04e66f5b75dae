//! natrix's own control messages (agent channel [`Channel::Natrix`], session
//! channel byte 7). Byte 0 is the kind, integers are big-endian.
//!
//! These messages extend the Net v0.27 rendezvous sub-protocol without
//! touching it: the rendezvous channel keeps its byte-identical Net forms, and
//! these travel beside them, **only toward peers known to speak natrix** (see
//! "Capability" below).
//!
//! | kind | message | length | direction | requirement |
//! |---|---|---|---|---|
//! | `0x10` | [`Hello`] | 2 | any node → a session peer, once per session | capability |
//! | `0x11` | [`PunchBind`] | 21 | coordinator → the introduced target, right before its `PunchIntroduce` | R7 |
//! | `0x12` | refuse ([`PunchRefusal`]) | 14 | an endpoint → the coordinator of a rendezvous it will not run | R5, R12, R13 |
//! | `0x13` | refused ([`PunchRefusal`]) | 14 | the coordinator → the other endpoint of that rendezvous | R5 |
//!
//! Kind bytes start at `0x10` so that a rendezvous message delivered on this
//! channel (or one of these on the rendezvous channel) never decodes.
//!
//! ## Layouts
//!
//! `Hello` (2 bytes):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | `0x10` |
//! | 1 | 1 | version ([`NATRIX_VERSION`] today; any byte decodes) |
//!
//! `PunchBind` (21 bytes):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | `0x11` |
//! | 1 | 8 | peer: the `peer` of the introduce it binds (the requester) |
//! | 9 | 8 | fire_at_ms: the introduce's `fire_at_ms` (u64) |
//! | 17 | 4 | punch_id (u32): the requester's punch id; `0` is reserved and rejected |
//!
//! `PunchPredict` (21 bytes):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | `0x14` |
//! | 1 | 8 | peer: the `peer` of the introduce it belongs to (the predictable endpoint) |
//! | 9 | 8 | fire_at_ms: the introduce's `fire_at_ms` (u64) |
//! | 17 | 2 | port (u16): the predicted external port of the peer's next mapping; `0` is rejected |
//! | 19 | 2 | step (i16): the peer's allocation step; `0` is rejected |
//!
//! It carries ports only: the IP stays the introduce's (N3).
//!
//! refuse / refused (14 bytes each):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | `0x12` (refuse) or `0x13` (refused) |
//! | 1 | 8 | peer: the other endpoint of the rendezvous |
//! | 9 | 4 | punch_id (u32): the rendezvous' punch id as the receiver knows it, `0` when unknown |
//! | 13 | 1 | reason: a [`RejectReason`] byte (every byte decodes) |
//!
//! Decoding is canonical like the rest of [`crate::wire`]: exactly one length
//! per kind, no trailing bytes, and every successful decode re-encodes to the
//! input.
//!
//! ## Capability
//!
//! A node sends [`Hello`] to a peer when the session to it comes up
//! ([`Config::natrix_extensions`](crate::Config::natrix_extensions), default
//! on). A peer from which any natrix message decoded is natrix-capable until
//! its session goes down; only toward such peers does a node send
//! [`PunchBind`] or a refusal. The `Hello` itself is the one natrix message
//! sent without knowing: an embedder that cannot carry an unknown channel to
//! a Net peer turns the extensions off, and natrix then speaks only the Net
//! v0.27 forms (R7 and the typed responder refusal degrade as documented in
//! `docs/security.md`).
//!
//! [`Channel::Natrix`]: crate::Channel::Natrix

use core::num::NonZeroU32;

use super::{
    DecodeError, EncodeError, MessageKind, NodeId, RejectReason, expect_len, field, put,
    write_prefix,
};

/// The natrix control protocol version a [`Hello`] carries.
pub const NATRIX_VERSION: u8 = 1;

const KIND_HELLO: u8 = 0x10;
const KIND_BIND: u8 = 0x11;
const KIND_REFUSE: u8 = 0x12;
const KIND_REFUSED: u8 = 0x13;
const KIND_PREDICT: u8 = 0x14;

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(field(bytes, at))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(field(bytes, at))
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(field(bytes, at))
}

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

/// `Hello` (kind `0x10`, 2 bytes): "I speak natrix's own control messages".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Hello {
    /// The sender's natrix control protocol version.
    pub version: u8,
}

impl Hello {
    /// Encoded length.
    pub const LEN: usize = 2;

    /// Decodes exactly 2 bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        check_kind(MessageKind::NatrixHello, KIND_HELLO, bytes)?;
        expect_len(MessageKind::NatrixHello, bytes, Self::LEN, "2")?;
        let [version] = field::<1>(bytes, 1);
        Ok(Hello { version })
    }

    /// Encodes into `buf`, returning the number of bytes written.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        write_prefix(MessageKind::NatrixHello, &self.to_bytes(), buf)
    }

    /// The encoding as a fixed-size array.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        [KIND_HELLO, self.version]
    }
}

/// `PunchBind` (kind `0x11`, 21 bytes): the coordinator tells the target of a
/// rendezvous which punch id the introduce that follows belongs to, so that
/// the target's acks are bound to that punch (R7). A Net v0.27 responder never
/// learns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PunchBind {
    /// The introduce's `peer` (the requester).
    pub peer: NodeId,
    /// The introduce's `fire_at_ms`.
    pub fire_at_ms: u64,
    /// The requester's punch id (never 0).
    pub punch_id: NonZeroU32,
}

impl PunchBind {
    /// Encoded length.
    pub const LEN: usize = 21;

    /// Decodes exactly 21 bytes; punch id 0 is [`DecodeError::ReservedPunchId`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        check_kind(MessageKind::PunchBind, KIND_BIND, bytes)?;
        expect_len(MessageKind::PunchBind, bytes, Self::LEN, "21")?;
        Ok(PunchBind {
            peer: NodeId(u64_at(bytes, 1)),
            fire_at_ms: u64_at(bytes, 9),
            punch_id: NonZeroU32::new(u32_at(bytes, 17)).ok_or(DecodeError::ReservedPunchId)?,
        })
    }

    /// Encodes into `buf`, returning the number of bytes written.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        write_prefix(MessageKind::PunchBind, &self.to_bytes(), buf)
    }

    /// The encoding as a fixed-size array.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0] = KIND_BIND;
        put(&mut out, 1, &self.peer.0.to_be_bytes());
        put(&mut out, 9, &self.fire_at_ms.to_be_bytes());
        put(&mut out, 17, &self.punch_id.get().to_be_bytes());
        out
    }
}

/// `PunchPredict` (kind `0x14`, 21 bytes), N1: the coordinator tells one end
/// of a rendezvous where the other end's next mapping will most likely be —
/// the other end maps per destination but allocates ports sequentially, so
/// its keep-alives will leave from the port after the one the coordinator
/// sees. The receiver's keep-alives then cover a window of ports from
/// `port` on in steps of `step` ([`Config::prediction_window`]), always on
/// the introduce's IP.
///
/// [`Config::prediction_window`]: crate::Config::prediction_window
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PunchPredict {
    /// The introduce's `peer` (the endpoint whose port is predicted).
    pub peer: NodeId,
    /// The introduce's `fire_at_ms`.
    pub fire_at_ms: u64,
    /// The predicted port (never 0).
    pub port: core::num::NonZeroU16,
    /// The allocation step (never 0).
    pub step: core::num::NonZeroI16,
}

impl PunchPredict {
    /// Encoded length.
    pub const LEN: usize = 21;

    /// Decodes exactly 21 bytes; a zero port or step is
    /// [`DecodeError::ZeroPrediction`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        check_kind(MessageKind::PunchPredict, KIND_PREDICT, bytes)?;
        expect_len(MessageKind::PunchPredict, bytes, Self::LEN, "21")?;
        let port = core::num::NonZeroU16::new(u16_at(bytes, 17));
        let step = core::num::NonZeroI16::new(u16_at(bytes, 19) as i16);
        let (Some(port), Some(step)) = (port, step) else {
            return Err(DecodeError::ZeroPrediction);
        };
        Ok(PunchPredict {
            peer: NodeId(u64_at(bytes, 1)),
            fire_at_ms: u64_at(bytes, 9),
            port,
            step,
        })
    }

    /// Encodes into `buf`, returning the number of bytes written.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        write_prefix(MessageKind::PunchPredict, &self.to_bytes(), buf)
    }

    /// The encoding as a fixed-size array.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0] = KIND_PREDICT;
        put(&mut out, 1, &self.peer.0.to_be_bytes());
        put(&mut out, 9, &self.fire_at_ms.to_be_bytes());
        put(&mut out, 17, &self.port.get().to_be_bytes());
        put(&mut out, 19, &self.step.get().to_be_bytes());
        out
    }
}

/// The body of a refusal: which rendezvous, and why it will not run. Sent as
/// *refuse* by an endpoint to the rendezvous' coordinator, and relayed as
/// *refused* by the coordinator to the other endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PunchRefusal {
    /// The other endpoint of the rendezvous.
    pub peer: NodeId,
    /// The rendezvous' punch id as the receiver knows it (0 = unknown).
    pub punch_id: u32,
    /// Why.
    pub reason: RejectReason,
}

impl PunchRefusal {
    /// Encoded length (either kind).
    pub const LEN: usize = 14;

    fn decode_kind(kind: MessageKind, want: u8, bytes: &[u8]) -> Result<Self, DecodeError> {
        check_kind(kind, want, bytes)?;
        expect_len(kind, bytes, Self::LEN, "14")?;
        let [reason] = field::<1>(bytes, 13);
        Ok(PunchRefusal {
            peer: NodeId(u64_at(bytes, 1)),
            punch_id: u32_at(bytes, 9),
            reason: RejectReason::from_byte(reason),
        })
    }

    fn bytes_kind(&self, kind: u8) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0] = kind;
        put(&mut out, 1, &self.peer.0.to_be_bytes());
        put(&mut out, 9, &self.punch_id.to_be_bytes());
        out[13] = self.reason.to_byte();
        out
    }
}

/// Any natrix control message, decoded by its kind byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NatrixMessage {
    /// Kind `0x10`.
    Hello(Hello),
    /// Kind `0x11`.
    Bind(PunchBind),
    /// Kind `0x12`: endpoint → coordinator.
    Refuse(PunchRefusal),
    /// Kind `0x13`: coordinator → the other endpoint.
    Refused(PunchRefusal),
    /// Kind `0x14`.
    Predict(PunchPredict),
}

impl NatrixMessage {
    /// The largest encoding of any natrix message.
    pub const MAX_LEN: usize = if PunchBind::LEN > PunchPredict::LEN {
        PunchBind::LEN
    } else {
        PunchPredict::LEN
    };

    /// Decodes a natrix payload by its kind byte.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        match bytes.first() {
            None => Err(DecodeError::Length {
                kind: MessageKind::Natrix,
                expected: "at least 1",
                got: 0,
            }),
            Some(&KIND_HELLO) => Hello::decode(bytes).map(Self::Hello),
            Some(&KIND_BIND) => PunchBind::decode(bytes).map(Self::Bind),
            Some(&KIND_PREDICT) => PunchPredict::decode(bytes).map(Self::Predict),
            Some(&KIND_REFUSE) => {
                PunchRefusal::decode_kind(MessageKind::PunchRefuse, KIND_REFUSE, bytes)
                    .map(Self::Refuse)
            }
            Some(&KIND_REFUSED) => {
                PunchRefusal::decode_kind(MessageKind::PunchRefused, KIND_REFUSED, bytes)
                    .map(Self::Refused)
            }
            Some(&other) => Err(DecodeError::UnknownNatrixKind(other)),
        }
    }

    /// The encoding in a [`MAX_LEN`](Self::MAX_LEN)-byte array, and its length.
    #[must_use]
    pub fn to_bytes(&self) -> ([u8; Self::MAX_LEN], usize) {
        let mut out = [0u8; Self::MAX_LEN];
        let len = self.encode(&mut out).unwrap_or(0);
        (out, len)
    }

    /// Encodes into `buf`, returning the number of bytes written.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        match self {
            Self::Hello(m) => m.encode(buf),
            Self::Bind(m) => m.encode(buf),
            Self::Predict(m) => m.encode(buf),
            Self::Refuse(m) => {
                write_prefix(MessageKind::PunchRefuse, &m.bytes_kind(KIND_REFUSE), buf)
            }
            Self::Refused(m) => {
                write_prefix(MessageKind::PunchRefused, &m.bytes_kind(KIND_REFUSED), buf)
            }
        }
    }

    /// The encoded length.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::Hello(_) => Hello::LEN,
            Self::Bind(_) => PunchBind::LEN,
            Self::Predict(_) => PunchPredict::LEN,
            Self::Refuse(_) | Self::Refused(_) => PunchRefusal::LEN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn enc(m: NatrixMessage) -> Vec<u8> {
        let (b, n) = m.to_bytes();
        b[..n].to_vec()
    }

    #[test]
    fn hello_layout() {
        let b = enc(NatrixMessage::Hello(Hello {
            version: NATRIX_VERSION,
        }));
        assert_eq!(b, [0x10, 0x01]);
        assert_eq!(
            NatrixMessage::decode(&b),
            Ok(NatrixMessage::Hello(Hello { version: 1 }))
        );
        assert!(matches!(
            NatrixMessage::decode(&[0x10]),
            Err(DecodeError::Length { got: 1, .. })
        ));
        assert!(NatrixMessage::decode(&[0x10, 1, 0]).is_err());
    }

    #[test]
    fn n1_predict_layout_and_zero_fields() {
        let m = PunchPredict {
            peer: NodeId(0x0102_0304_0506_0708),
            fire_at_ms: 0x0000_018B_CFE5_6800,
            port: core::num::NonZeroU16::new(0x9C41).unwrap(),
            step: core::num::NonZeroI16::new(-2).unwrap(),
        };
        let b = enc(NatrixMessage::Predict(m));
        assert_eq!(
            b,
            [
                0x14, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0x01, 0x8B, 0xCF, 0xE5, 0x68, 0, 0x9C, 0x41,
                0xFF, 0xFE
            ]
        );
        assert_eq!(NatrixMessage::decode(&b), Ok(NatrixMessage::Predict(m)));
        let mut zero_port = b.clone();
        zero_port[17..19].copy_from_slice(&[0, 0]);
        assert_eq!(
            NatrixMessage::decode(&zero_port),
            Err(DecodeError::ZeroPrediction)
        );
        let mut zero_step = b.clone();
        zero_step[19..21].copy_from_slice(&[0, 0]);
        assert_eq!(
            NatrixMessage::decode(&zero_step),
            Err(DecodeError::ZeroPrediction)
        );
        assert!(NatrixMessage::decode(&b[..20]).is_err());
        let mut longer = b.clone();
        longer.push(0);
        assert!(NatrixMessage::decode(&longer).is_err());
    }

    #[test]
    fn bind_layout_and_reserved_id() {
        let m = PunchBind {
            peer: NodeId(0x0102_0304_0506_0708),
            fire_at_ms: 0x0000_018B_CFE5_6800,
            punch_id: NonZeroU32::new(0x0A0B_0C0D).unwrap(),
        };
        let b = m.to_bytes();
        assert_eq!(
            b,
            [
                0x11, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0x01, 0x8B, 0xCF, 0xE5, 0x68, 0, 0x0A, 0x0B,
                0x0C, 0x0D
            ]
        );
        assert_eq!(NatrixMessage::decode(&b), Ok(NatrixMessage::Bind(m)));
        let mut zero = b;
        zero[17..21].copy_from_slice(&[0; 4]);
        assert_eq!(
            NatrixMessage::decode(&zero),
            Err(DecodeError::ReservedPunchId)
        );
        assert!(NatrixMessage::decode(&b[..20]).is_err());
    }

    #[test]
    fn refusals_layout_and_every_reason_decodes() {
        let m = PunchRefusal {
            peer: NodeId(9),
            punch_id: 7,
            reason: RejectReason::ResponderBusy,
        };
        let refuse = enc(NatrixMessage::Refuse(m));
        assert_eq!(refuse, [0x12, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 7, 0x06]);
        let refused = enc(NatrixMessage::Refused(m));
        assert_eq!(refused[0], 0x13);
        assert_eq!(refused[1..], refuse[1..]);
        for byte in 0..=255u8 {
            let mut b = refuse.clone();
            b[13] = byte;
            let d = NatrixMessage::decode(&b).unwrap();
            assert_eq!(enc(d), b);
        }
    }

    #[test]
    fn rendezvous_kinds_never_decode_here() {
        for kind in [0x00, 0x01, 0x02, 0x03, 0x04, 0x0F, 0x15, 0xFF] {
            assert_eq!(
                NatrixMessage::decode(&[kind; 14]),
                Err(DecodeError::UnknownNatrixKind(kind))
            );
        }
        assert!(matches!(
            NatrixMessage::decode(&[]),
            Err(DecodeError::Length { got: 0, .. })
        ));
    }
}
