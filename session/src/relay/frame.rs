//! Relay frames: the payload of a session message on channel [`CH_RELAY`].
//!
//! A relay frame rides as the payload of an ordinary, *unreliable* session
//! message on channel [`CH_RELAY`] of the session between a peer and its
//! coordinator. Integers are big-endian. Two kinds exist:
//!
//! **Forward** (`0x01`, [`FORWARD_HEADER_LEN`] + 1 ..= [`MAX_PAYLOAD`] bytes)
//!
//! | offset | len | field |
//! |---|---|---|
//! | 0 | 1 | kind `0x01` |
//! | 1 | 8 | peer ([`NodeId`]) |
//! | 9 | 1..=[`MAX_RELAYED_PACKET`] | packet |
//!
//! Sent by a peer to its coordinator it means "deliver `packet` to node
//! `peer`"; sent by the coordinator to a peer it means "`packet` came from node
//! `peer`". The packet is a datagram of the two peers' own end-to-end session:
//! the coordinator sees ciphertext only and never looks inside.
//!
//! **Refused** (`0x02`, exactly [`REFUSED_LEN`] = 14 bytes, coordinator → peer only)
//!
//! | offset | len | field |
//! |---|---|---|
//! | 0 | 1 | kind `0x02` |
//! | 1 | 8 | peer ([`NodeId`]): the target of the dropped frame |
//! | 9 | 1 | quota ([`Quota::code`]) |
//! | 10 | 4 | retry after, milliseconds (0: unknown, or now) |
//!
//! "Your frame toward `peer` was dropped because of `quota`; retrying before
//! `retry after` has elapsed is pointless."
//!
//! Decoding is zero-copy ([`RelayFrame::decode`] borrows the packet) and
//! canonical: every byte string decodes to at most one frame and that frame
//! encodes back to the same bytes. Encoding never allocates.

use core::fmt;
use core::time::Duration;

use natrix_proto::NodeId;

use crate::wire::MAX_PAYLOAD;

/// The session channel relay frames travel on.
pub const CH_RELAY: u8 = 9;

/// Kind byte of a [`RelayFrame::Forward`].
pub const KIND_FORWARD: u8 = 0x01;

/// Kind byte of a [`RelayFrame::Refused`].
pub const KIND_REFUSED: u8 = 0x02;

/// Bytes in front of the packet of a forward frame: kind (1) and peer (8).
pub const FORWARD_HEADER_LEN: usize = 9;

/// Length of a refused frame: kind (1), peer (8), quota (1), retry after (4).
pub const REFUSED_LEN: usize = 14;

/// Largest relayed packet: what fits in one session payload after the
/// forward header (1200 − 9 = 1191 bytes).
///
/// The two peers' end-to-end session must therefore keep its packets (its
/// 33 bytes of transport overhead included) at or below this size when it
/// runs through a relay.
pub const MAX_RELAYED_PACKET: usize = MAX_PAYLOAD - FORWARD_HEADER_LEN;

/// Number of [`Quota`] codes (codes are `1..=QUOTA_COUNT`).
pub const QUOTA_COUNT: usize = 8;

/// Why a relay dropped a frame. The discriminant is the stable wire code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Quota {
    /// The circuit's byte rate (shared by both directions) is used up for now.
    Rate = 1,
    /// The sender already opened as many circuits as one peer may.
    CircuitsPerPeer = 2,
    /// The coordinator relays as many circuits as it will (global cap).
    Circuits = 3,
    /// The circuit carried its total byte allowance (optional cap).
    TotalBytes = 4,
    /// The circuit reached its maximum lifetime (optional cap).
    Duration = 5,
    /// The target has no session at this coordinator.
    Offline = 6,
    /// The target is the sender itself.
    SelfTarget = 7,
    /// This coordinator does not relay.
    Disabled = 8,
}

impl Quota {
    /// Every quota, in wire-code order.
    pub const ALL: [Quota; QUOTA_COUNT] = [
        Quota::Rate,
        Quota::CircuitsPerPeer,
        Quota::Circuits,
        Quota::TotalBytes,
        Quota::Duration,
        Quota::Offline,
        Quota::SelfTarget,
        Quota::Disabled,
    ];

    /// The stable wire code (`1..=8`).
    #[must_use]
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The quota with wire code `code`, if any.
    #[must_use]
    pub const fn from_code(code: u8) -> Option<Quota> {
        Some(match code {
            1 => Quota::Rate,
            2 => Quota::CircuitsPerPeer,
            3 => Quota::Circuits,
            4 => Quota::TotalBytes,
            5 => Quota::Duration,
            6 => Quota::Offline,
            7 => Quota::SelfTarget,
            8 => Quota::Disabled,
            _ => return None,
        })
    }

    /// `code() - 1`: a dense index for per-quota counters.
    #[must_use]
    pub const fn index(self) -> usize {
        self as usize - 1
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Quota::Rate => "the circuit's byte rate is used up",
            Quota::CircuitsPerPeer => "the sender opened as many relay circuits as one peer may",
            Quota::Circuits => "the relay carries as many circuits as it will",
            Quota::TotalBytes => "the circuit carried all the bytes it may",
            Quota::Duration => "the circuit reached its maximum lifetime",
            Quota::Offline => "the target has no session at this coordinator",
            Quota::SelfTarget => "the target is the sender itself",
            Quota::Disabled => "this coordinator does not relay",
        })
    }
}

/// A relay quota refusal: the typed error S3 delivers to the affected peer.
///
/// `retry_after` is the time until the quota resets (the rate bucket holds
/// enough bytes, the spent circuit is gone, a circuit may close); zero means
/// unknown or "now". It travels in whole milliseconds, rounded up
/// ([`Refusal::retry_after_ms`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[error("relay refused the frame: {quota}; {}", RetryPhrase(*.retry_after))]
pub struct Refusal {
    /// Which quota.
    pub quota: Quota,
    /// When retrying may succeed (zero: unknown, or now).
    pub retry_after: Duration,
}

/// Human text for a retry-after duration.
struct RetryPhrase(Duration);

impl fmt::Display for RetryPhrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            f.write_str("no reset time given")
        } else {
            write!(f, "it resets in {} ms", duration_to_wire_ms(self.0))
        }
    }
}

/// `d` in whole milliseconds, rounded up, saturating at `u32::MAX` (≈ 49 days).
fn duration_to_wire_ms(d: Duration) -> u32 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u32::try_from(ms).unwrap_or(u32::MAX)
}

impl Refusal {
    /// A refusal of `quota`, retry after `retry_after`.
    #[must_use]
    pub const fn new(quota: Quota, retry_after: Duration) -> Self {
        Refusal { quota, retry_after }
    }

    /// The refusal a [`RelayFrame::Refused`] carries.
    #[must_use]
    pub const fn from_wire(quota: Quota, retry_after_ms: u32) -> Self {
        Refusal {
            quota,
            retry_after: Duration::from_millis(retry_after_ms as u64),
        }
    }

    /// `retry_after` as sent on the wire: whole milliseconds rounded up (so
    /// retrying at that time is never early), saturating at `u32::MAX`.
    #[must_use]
    pub fn retry_after_ms(&self) -> u32 {
        duration_to_wire_ms(self.retry_after)
    }
}

/// A decoded relay frame, borrowing the packet from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayFrame<'a> {
    /// A packet to deliver to (peer → coordinator) or that came from
    /// (coordinator → peer) node `peer`.
    Forward {
        /// The other end of the circuit.
        peer: NodeId,
        /// The relayed session packet, `1..=MAX_RELAYED_PACKET` bytes.
        packet: &'a [u8],
    },
    /// The coordinator dropped a frame toward `peer` (coordinator → peer only).
    Refused {
        /// The target of the dropped frame.
        peer: NodeId,
        /// Why.
        quota: Quota,
        /// When retrying may succeed, in milliseconds (0: unknown, or now).
        retry_after_ms: u32,
    },
}

/// Why bytes are not a relay frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum RelayFrameError {
    /// No bytes at all.
    #[error("relay frame: empty")]
    Empty,
    /// The kind byte is neither forward nor refused.
    #[error("relay frame: unknown kind {0:#04x}")]
    UnknownKind(u8),
    /// Shorter than the fixed part of its kind.
    #[error("relay frame: truncated ({len} bytes, at least {need} needed)")]
    Truncated {
        /// Bytes present.
        len: usize,
        /// Bytes the kind needs at least.
        need: usize,
    },
    /// A forward frame without a packet.
    #[error("relay frame: forward carries no packet")]
    EmptyPacket,
    /// A forward frame whose packet exceeds [`MAX_RELAYED_PACKET`].
    #[error("relay frame: packet of {len} bytes exceeds {MAX_RELAYED_PACKET}")]
    TooLong {
        /// The packet's length.
        len: usize,
    },
    /// A refused frame with a quota code outside `1..=8`.
    #[error("relay frame: unknown quota code {0}")]
    UnknownQuota(u8),
    /// A refused frame longer than [`REFUSED_LEN`].
    #[error("relay frame: {extra} trailing bytes after a refusal")]
    TrailingBytes {
        /// Bytes after the refusal.
        extra: usize,
    },
}

/// Why a relay frame could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum RelayEncodeError {
    /// A forward frame needs at least one packet byte.
    #[error("relay frame: cannot forward an empty packet")]
    EmptyPacket,
    /// The packet exceeds [`MAX_RELAYED_PACKET`].
    #[error("relay frame: packet of {len} bytes exceeds {MAX_RELAYED_PACKET}")]
    TooLong {
        /// The packet's length.
        len: usize,
    },
    /// The output buffer is too small.
    #[error("relay frame: output buffer of {have} bytes, {need} needed")]
    BufferTooSmall {
        /// Bytes the frame needs.
        need: usize,
        /// Bytes the buffer has.
        have: usize,
    },
}

fn read_node(b: &[u8]) -> NodeId {
    let mut id = [0u8; 8];
    if let Some(src) = b.get(1..9) {
        id.copy_from_slice(src);
    }
    NodeId(u64::from_be_bytes(id))
}

impl<'a> RelayFrame<'a> {
    /// Decodes a relay frame without copying: a forward frame's packet
    /// borrows from `bytes`.
    ///
    /// # Errors
    ///
    /// A [`RelayFrameError`] naming the first rule `bytes` breaks.
    pub fn decode(bytes: &'a [u8]) -> Result<RelayFrame<'a>, RelayFrameError> {
        let (&kind, _) = bytes.split_first().ok_or(RelayFrameError::Empty)?;
        match kind {
            KIND_FORWARD => {
                let Some(packet) = bytes.get(FORWARD_HEADER_LEN..) else {
                    return Err(RelayFrameError::Truncated {
                        len: bytes.len(),
                        need: FORWARD_HEADER_LEN + 1,
                    });
                };
                if packet.is_empty() {
                    return Err(RelayFrameError::EmptyPacket);
                }
                if packet.len() > MAX_RELAYED_PACKET {
                    return Err(RelayFrameError::TooLong { len: packet.len() });
                }
                Ok(RelayFrame::Forward {
                    peer: read_node(bytes),
                    packet,
                })
            }
            KIND_REFUSED => {
                if bytes.len() < REFUSED_LEN {
                    return Err(RelayFrameError::Truncated {
                        len: bytes.len(),
                        need: REFUSED_LEN,
                    });
                }
                if bytes.len() > REFUSED_LEN {
                    return Err(RelayFrameError::TrailingBytes {
                        extra: bytes.len() - REFUSED_LEN,
                    });
                }
                let code = bytes.get(9).copied().unwrap_or(0);
                let quota = Quota::from_code(code).ok_or(RelayFrameError::UnknownQuota(code))?;
                let mut ms = [0u8; 4];
                if let Some(src) = bytes.get(10..14) {
                    ms.copy_from_slice(src);
                }
                Ok(RelayFrame::Refused {
                    peer: read_node(bytes),
                    quota,
                    retry_after_ms: u32::from_be_bytes(ms),
                })
            }
            other => Err(RelayFrameError::UnknownKind(other)),
        }
    }

    /// The node the frame names.
    #[must_use]
    pub const fn peer(&self) -> NodeId {
        match *self {
            RelayFrame::Forward { peer, .. } | RelayFrame::Refused { peer, .. } => peer,
        }
    }

    /// The refusal a refused frame carries.
    #[must_use]
    pub const fn refusal(&self) -> Option<Refusal> {
        match *self {
            RelayFrame::Refused {
                quota,
                retry_after_ms,
                ..
            } => Some(Refusal::from_wire(quota, retry_after_ms)),
            RelayFrame::Forward { .. } => None,
        }
    }

    /// Bytes [`encode_into`](Self::encode_into) writes.
    #[must_use]
    pub const fn encoded_len(&self) -> usize {
        match self {
            RelayFrame::Forward { packet, .. } => FORWARD_HEADER_LEN + packet.len(),
            RelayFrame::Refused { .. } => REFUSED_LEN,
        }
    }

    /// Writes the frame to the front of `out`; returns its length.
    ///
    /// # Errors
    ///
    /// [`RelayEncodeError`] for a forward frame with an empty or oversized
    /// packet, or when `out` is too small.
    pub fn encode_into(&self, out: &mut [u8]) -> Result<usize, RelayEncodeError> {
        match *self {
            RelayFrame::Forward { peer, packet } => encode_forward_into(peer, packet, out),
            RelayFrame::Refused {
                peer,
                quota,
                retry_after_ms,
            } => {
                let have = out.len();
                let dst = out
                    .get_mut(..REFUSED_LEN)
                    .ok_or(RelayEncodeError::BufferTooSmall {
                        need: REFUSED_LEN,
                        have,
                    })?;
                dst.copy_from_slice(&refused_bytes(peer, quota, retry_after_ms));
                Ok(REFUSED_LEN)
            }
        }
    }
}

/// Writes a forward frame (`peer`, `packet`) to the front of `out`; returns
/// its length, `FORWARD_HEADER_LEN + packet.len()`. Does not allocate.
///
/// # Errors
///
/// [`RelayEncodeError::EmptyPacket`], [`RelayEncodeError::TooLong`] (more than
/// [`MAX_RELAYED_PACKET`] bytes) or [`RelayEncodeError::BufferTooSmall`].
pub fn encode_forward_into(
    peer: NodeId,
    packet: &[u8],
    out: &mut [u8],
) -> Result<usize, RelayEncodeError> {
    if packet.is_empty() {
        return Err(RelayEncodeError::EmptyPacket);
    }
    if packet.len() > MAX_RELAYED_PACKET {
        return Err(RelayEncodeError::TooLong { len: packet.len() });
    }
    let need = FORWARD_HEADER_LEN + packet.len();
    let have = out.len();
    let dst = out
        .get_mut(..need)
        .ok_or(RelayEncodeError::BufferTooSmall { need, have })?;
    let (head, body) = dst.split_at_mut(FORWARD_HEADER_LEN);
    head[0] = KIND_FORWARD;
    head[1..].copy_from_slice(&peer.0.to_be_bytes());
    body.copy_from_slice(packet);
    Ok(need)
}

/// The refused frame for `refusal` of a frame toward `peer`.
#[must_use]
pub fn encode_refused(peer: NodeId, refusal: Refusal) -> [u8; REFUSED_LEN] {
    refused_bytes(peer, refusal.quota, refusal.retry_after_ms())
}

fn refused_bytes(peer: NodeId, quota: Quota, retry_after_ms: u32) -> [u8; REFUSED_LEN] {
    let mut b = [0u8; REFUSED_LEN];
    b[0] = KIND_REFUSED;
    b[1..9].copy_from_slice(&peer.0.to_be_bytes());
    b[9] = quota.code();
    b[10..14].copy_from_slice(&retry_after_ms.to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_match_the_session_payload() {
        assert_eq!(MAX_RELAYED_PACKET, 1191);
        assert_eq!(FORWARD_HEADER_LEN + MAX_RELAYED_PACKET, MAX_PAYLOAD);
    }

    #[test]
    fn forward_layout_is_byte_exact() {
        let mut out = [0u8; 16];
        let n = encode_forward_into(NodeId(0x0102_0304_0506_0708), b"abc", &mut out).unwrap();
        assert_eq!(n, 12);
        assert_eq!(&out[..n], b"\x01\x01\x02\x03\x04\x05\x06\x07\x08abc");
        assert_eq!(
            RelayFrame::decode(&out[..n]),
            Ok(RelayFrame::Forward {
                peer: NodeId(0x0102_0304_0506_0708),
                packet: b"abc",
            })
        );
    }

    #[test]
    fn refused_layout_is_byte_exact() {
        let r = Refusal::new(Quota::Rate, Duration::from_micros(1_500));
        assert_eq!(r.retry_after_ms(), 2, "rounded up");
        let b = encode_refused(NodeId(7), r);
        assert_eq!(b, *b"\x02\0\0\0\0\0\0\0\x07\x01\0\0\0\x02");
        let f = RelayFrame::decode(&b).unwrap();
        assert_eq!(f.peer(), NodeId(7));
        assert_eq!(
            f.refusal(),
            Some(Refusal::new(Quota::Rate, Duration::from_millis(2)))
        );
    }

    #[test]
    fn decode_errors_are_typed() {
        use RelayFrameError as E;
        assert_eq!(RelayFrame::decode(&[]), Err(E::Empty));
        assert_eq!(RelayFrame::decode(&[0]), Err(E::UnknownKind(0)));
        assert_eq!(RelayFrame::decode(&[3; 20]), Err(E::UnknownKind(3)));
        assert_eq!(
            RelayFrame::decode(&[1, 0, 0]),
            Err(E::Truncated { len: 3, need: 10 })
        );
        assert_eq!(RelayFrame::decode(&[1; 9]), Err(E::EmptyPacket));
        let long = [1u8; MAX_PAYLOAD + 1];
        assert_eq!(
            RelayFrame::decode(&long),
            Err(E::TooLong {
                len: MAX_RELAYED_PACKET + 1
            })
        );
        assert!(RelayFrame::decode(&long[..MAX_PAYLOAD]).is_ok());
        assert_eq!(
            RelayFrame::decode(&[2; 13]),
            Err(E::Truncated { len: 13, need: 14 })
        );
        assert_eq!(
            RelayFrame::decode(&[2; 15]),
            Err(E::TrailingBytes { extra: 1 })
        );
        let mut b = encode_refused(NodeId(1), Refusal::new(Quota::Disabled, Duration::ZERO));
        for bad in [0u8, 9, 255] {
            b[9] = bad;
            assert_eq!(RelayFrame::decode(&b), Err(E::UnknownQuota(bad)));
        }
    }

    #[test]
    fn encode_errors_are_typed() {
        let mut out = [0u8; MAX_PAYLOAD];
        assert_eq!(
            encode_forward_into(NodeId(1), &[], &mut out),
            Err(RelayEncodeError::EmptyPacket)
        );
        assert_eq!(
            encode_forward_into(NodeId(1), &[0; MAX_RELAYED_PACKET + 1], &mut out),
            Err(RelayEncodeError::TooLong {
                len: MAX_RELAYED_PACKET + 1
            })
        );
        assert_eq!(
            encode_forward_into(NodeId(1), &[0; 5], &mut out[..13]),
            Err(RelayEncodeError::BufferTooSmall { need: 14, have: 13 })
        );
        let refused = RelayFrame::Refused {
            peer: NodeId(1),
            quota: Quota::Rate,
            retry_after_ms: 0,
        };
        assert_eq!(
            refused.encode_into(&mut out[..3]),
            Err(RelayEncodeError::BufferTooSmall { need: 14, have: 3 })
        );
    }

    #[test]
    fn quota_codes_are_stable_and_dense() {
        for (i, q) in Quota::ALL.iter().enumerate() {
            assert_eq!(usize::from(q.code()), i + 1);
            assert_eq!(q.index(), i);
            assert_eq!(Quota::from_code(q.code()), Some(*q));
        }
        assert_eq!(Quota::from_code(0), None);
        assert_eq!(Quota::from_code(9), None);
    }

    #[test]
    fn refusal_message_names_quota_and_reset() {
        let r = Refusal::new(Quota::Rate, Duration::from_millis(120));
        assert_eq!(
            r.to_string(),
            "relay refused the frame: the circuit's byte rate is used up; it resets in 120 ms"
        );
        let r = Refusal::new(Quota::Offline, Duration::ZERO);
        assert!(r.to_string().ends_with("no reset time given"), "{r}");
        assert_eq!(
            Refusal::new(Quota::Rate, Duration::MAX).retry_after_ms(),
            u32::MAX
        );
    }
}
