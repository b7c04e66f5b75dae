//! Byte-exact codecs for every natrix message.
//!
//! One file per sub-protocol, so the codec of any message is one hop away:
//!
//! | message | file | type |
//! |---|---|---|
//! | address block (`ADDR`, 19 bytes) | [`addr`] | [`encode_addr`], [`decode_addr`] |
//! | reflex request / response | [`reflex`] | [`ReflexRequest`], [`ReflexResponse`] |
//! | `PunchRequest` (v1 28 B, v2 32 B) | [`rendezvous`] | [`PunchRequest`] |
//! | `PunchIntroduce` (36 B) | [`rendezvous`] | [`PunchIntroduce`] |
//! | `PunchAck` (21 B) | [`rendezvous`] | [`PunchAck`] |
//! | `PunchReject` (14 B, v2) | [`rendezvous`] | [`PunchReject`], [`RejectReason`] |
//! | any rendezvous message by kind byte | [`rendezvous`] | [`RendezvousMessage`] |
//! | keep-alive (14 B, raw UDP) | [`keepalive`] | [`Keepalive`], [`is_keepalive`] |
//! | natrix's own control messages (channel 7: hello, bind, refuse, refused) | [`natrix`] | [`NatrixMessage`] |
//!
//! # Contract
//!
//! * Decoders take a byte slice and return `Result<_, DecodeError>`. They never
//!   panic, never read past the slice, and accept exactly one length per form:
//!   trailing bytes are an error.
//! * Every successful decode re-encodes to exactly the input bytes (the encoding is
//!   canonical). That is why the decoder **rejects non-zero `ADDR` padding** and
//!   a v2 `PunchRequest` carrying the reserved punch id 0; honest peers never send
//!   either.
//! * Encoders write into a caller buffer (`encode(&self, &mut [u8])`) or return a
//!   fixed-size array (`to_bytes()`); neither allocates.

pub mod addr;
pub mod keepalive;
pub mod natrix;
pub mod reflex;
pub mod rendezvous;
pub mod stun;

pub use addr::{ADDR_LEN, decode_addr, encode_addr};
pub use keepalive::{KEEPALIVE_LEN, KEEPALIVE_MAGIC, Keepalive, is_keepalive};
pub use natrix::{Hello, NATRIX_VERSION, NatrixMessage, PunchBind, PunchPredict, PunchRefusal};
pub use reflex::{ReflexRequest, ReflexResponse};
pub use rendezvous::{
    PunchAck, PunchIntroduce, PunchReject, PunchRequest, RejectReason, RendezvousMessage,
};

use core::fmt;

/// A node identifier as carried on the wire (a `u64`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub u64);

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({:#018x})", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl From<u64> for NodeId {
    fn from(v: u64) -> Self {
        NodeId(v)
    }
}

/// Which message a [`DecodeError`] or [`EncodeError`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageKind {
    /// The 19-byte address block.
    Addr,
    /// Reflex request (empty payload).
    ReflexRequest,
    /// Reflex response (one `ADDR`).
    ReflexResponse,
    /// `PunchRequest`, kind `0x01`.
    PunchRequest,
    /// `PunchIntroduce`, kind `0x02`.
    PunchIntroduce,
    /// `PunchAck`, kind `0x03`.
    PunchAck,
    /// `PunchReject`, kind `0x04`.
    PunchReject,
    /// A rendezvous message whose kind is not yet known.
    Rendezvous,
    /// The raw keep-alive datagram.
    Keepalive,
    /// A natrix control message whose kind is not yet known.
    Natrix,
    /// natrix `Hello`, kind `0x10`.
    NatrixHello,
    /// natrix `PunchBind`, kind `0x11`.
    PunchBind,
    /// natrix refuse, kind `0x12`.
    PunchRefuse,
    /// natrix refused, kind `0x13`.
    PunchRefused,
    /// natrix `PunchPredict`, kind `0x14`.
    PunchPredict,
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            MessageKind::Addr => "address block",
            MessageKind::ReflexRequest => "reflex request",
            MessageKind::ReflexResponse => "reflex response",
            MessageKind::PunchRequest => "PunchRequest",
            MessageKind::PunchIntroduce => "PunchIntroduce",
            MessageKind::PunchAck => "PunchAck",
            MessageKind::PunchReject => "PunchReject",
            MessageKind::Rendezvous => "rendezvous message",
            MessageKind::Keepalive => "keep-alive",
            MessageKind::Natrix => "natrix control message",
            MessageKind::NatrixHello => "natrix Hello",
            MessageKind::PunchBind => "natrix PunchBind",
            MessageKind::PunchRefuse => "natrix refuse",
            MessageKind::PunchRefused => "natrix refused",
            MessageKind::PunchPredict => "natrix PunchPredict",
        };
        f.write_str(name)
    }
}

/// Why a byte slice is not a valid message. Decoders return no partial value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The slice is not one of the lengths the message allows.
    #[error("{kind}: length {got} bytes, expected {expected}")]
    Length {
        /// The message being decoded.
        kind: MessageKind,
        /// A human-readable list of the allowed lengths (e.g. `"28 or 32"`).
        expected: &'static str,
        /// The length received.
        got: usize,
    },
    /// A rendezvous message whose kind byte is not `0x01..=0x04`.
    #[error("unknown rendezvous kind byte {0:#04x}")]
    UnknownKind(u8),
    /// A natrix control message whose kind byte is not `0x10..=0x13`.
    #[error("unknown natrix control kind byte {0:#04x}")]
    UnknownNatrixKind(u8),
    /// A message decoded as one kind but carrying another kind byte.
    #[error("{expected}: wrong kind byte {got:#04x}")]
    WrongKind {
        /// The message the caller asked for.
        expected: MessageKind,
        /// The kind byte found.
        got: u8,
    },
    /// An address block whose family byte is neither `4` nor `6`.
    #[error("address block: unknown family byte {0}")]
    Family(u8),
    /// An IPv4 address block with non-zero padding bytes.
    #[error("address block: non-zero padding after an IPv4 address")]
    Padding,
    /// A v2 `PunchRequest` (or a natrix `PunchBind`) carrying the reserved
    /// punch id 0.
    #[error("punch id 0 is reserved")]
    ReservedPunchId,
    /// A natrix `PunchPredict` with port 0 or step 0.
    #[error("PunchPredict: port and step must not be 0")]
    ZeroPrediction,
    /// A datagram of keep-alive length that does not start with the `PH` magic.
    #[error("keep-alive: bad magic {0:02x?}")]
    Magic([u8; 2]),
}

/// Why a message could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The output buffer is shorter than the encoding.
    #[error("{kind}: buffer of {got} bytes, need {needed}")]
    BufferTooSmall {
        /// The message being encoded.
        kind: MessageKind,
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
}

/// Copies `bytes` to the front of `buf`, or reports that `buf` is too short.
pub(crate) fn write_prefix(
    kind: MessageKind,
    bytes: &[u8],
    buf: &mut [u8],
) -> Result<usize, EncodeError> {
    match buf.get_mut(..bytes.len()) {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            Ok(bytes.len())
        }
        None => Err(EncodeError::BufferTooSmall {
            kind,
            needed: bytes.len(),
            got: buf.len(),
        }),
    }
}

/// Reads a fixed-size array at `at`; `None` when the slice is too short.
pub(crate) fn array_at<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes
        .get(at..at.checked_add(N)?)
        .and_then(|s| s.try_into().ok())
}

/// Reads `N` bytes at `at` from a buffer whose length the caller has checked.
///
/// The fixed-length decoders check the exact length first, so this never takes
/// the fallback; it exists so that no code path can index out of bounds.
pub(crate) fn field<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    array_at(bytes, at).unwrap_or([0; N])
}

/// Writes `src` at `at` into a fixed-size encode buffer (lengths are constants).
pub(crate) fn put(dst: &mut [u8], at: usize, src: &[u8]) {
    if let Some(d) = at
        .checked_add(src.len())
        .and_then(|end| dst.get_mut(at..end))
    {
        d.copy_from_slice(src);
    }
}

/// Checks an exact length.
pub(crate) fn expect_len(
    kind: MessageKind,
    bytes: &[u8],
    len: usize,
    expected: &'static str,
) -> Result<(), DecodeError> {
    if bytes.len() == len {
        Ok(())
    } else {
        Err(DecodeError::Length {
            kind,
            expected,
            got: bytes.len(),
        })
    }
}
