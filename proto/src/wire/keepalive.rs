//! The raw keep-alive datagram (14 bytes, little-endian, outside any session).
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | magic `0x50 0x48` (ASCII `PH`) |
//! | 2 | 8 | sender node id (u64 LE) |
//! | 10 | 4 | punch id / token (u32 LE) |
//!
//! It shares the UDP socket with whatever else the embedder runs, so
//! [`is_keepalive`] is the demultiplexing predicate: anything it rejects must be
//! passed on untouched.

use super::{DecodeError, EncodeError, MessageKind, NodeId, field, put, write_prefix};

/// Length of a keep-alive datagram.
pub const KEEPALIVE_LEN: usize = 14;

/// The two magic bytes that start every keep-alive (`PH`).
pub const KEEPALIVE_MAGIC: [u8; 2] = *b"PH";

/// True exactly when `datagram` is a keep-alive: 14 bytes starting with `PH`.
///
/// Two comparisons, no decoding; agrees with [`Keepalive::decode`] on every input.
#[inline]
#[must_use]
pub fn is_keepalive(datagram: &[u8]) -> bool {
    datagram.len() == KEEPALIVE_LEN && datagram.starts_with(&KEEPALIVE_MAGIC)
}

/// A keep-alive: opens NAT state towards the counterpart and proves who sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Keepalive {
    /// The sending node.
    pub sender: NodeId,
    /// The punch token (requirement R8); 0 from older peers.
    pub punch_id: u32,
}

impl Keepalive {
    /// Encoded length.
    pub const LEN: usize = KEEPALIVE_LEN;

    /// Decodes a keep-alive datagram.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        super::expect_len(MessageKind::Keepalive, bytes, Self::LEN, "14")?;
        let magic = field::<2>(bytes, 0);
        if magic != KEEPALIVE_MAGIC {
            return Err(DecodeError::Magic(magic));
        }
        Ok(Keepalive {
            sender: NodeId(u64::from_le_bytes(field(bytes, 2))),
            punch_id: u32::from_le_bytes(field(bytes, 10)),
        })
    }

    /// Encodes into `buf`, returning the number of bytes written.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        write_prefix(MessageKind::Keepalive, &self.to_bytes(), buf)
    }

    /// The encoding as a fixed-size array.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        put(&mut out, 0, &KEEPALIVE_MAGIC);
        put(&mut out, 2, &self.sender.0.to_le_bytes());
        put(&mut out, 10, &self.punch_id.to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_example() {
        let bytes = [
            0x50, 0x48, 0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, 0x4D, 0x3C, 0x2B, 0x1A,
        ];
        let k = Keepalive {
            sender: NodeId(0x0102_0304_0506_0708),
            punch_id: 0x1A2B_3C4D,
        };
        assert!(is_keepalive(&bytes));
        assert_eq!(Keepalive::decode(&bytes), Ok(k));
        assert_eq!(k.to_bytes(), bytes);
        // The magic is the u16 0x4850 read little-endian.
        assert_eq!(u16::from_le_bytes([bytes[0], bytes[1]]), 0x4850);
    }

    #[test]
    fn predicate_rejects_everything_else() {
        let k = Keepalive {
            sender: NodeId(5),
            punch_id: 6,
        }
        .to_bytes();
        assert!(!is_keepalive(&k[..13]));
        let mut long = [0u8; 15];
        long[..14].copy_from_slice(&k);
        assert!(!is_keepalive(&long));
        let mut bad = k;
        bad[1] = b'X';
        assert!(!is_keepalive(&bad));
        assert_eq!(
            Keepalive::decode(&bad),
            Err(DecodeError::Magic([b'P', b'X']))
        );
        assert!(!is_keepalive(&[]));
    }
}
