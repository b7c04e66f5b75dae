//! The wire form of natrix's control messages inside a session.
//!
//! Every session transport packet carries one channel byte and a payload
//! (`natrix-session` owns channel 0). The networked control plane uses:
//!
//! | channel | name | payload |
//! |---|---|---|
//! | 1, 2, 3 | the agent's channels ([`Channel::wire_byte`]): rendezvous (a Net v0.27 rendezvous message, unchanged), reflex request (empty), reflex response (one `ADDR` block) |
//! | 4 | announcement | `0x00` `ADDR` class (21 bytes): the sender's own (reflex, class); `0x01` node-id(8) `ADDR` class (29 bytes): a coordinator vouching for one of its peers |
//! | 5 | directory lookup | query-id(4) public-key(32) |
//! | 6 | directory answer | query-id(4) public-key(32) online(1) then, when the peer announced, `ADDR` class |
//! | 16 | application data | the application's bytes |
//!
//! Integers are big-endian; `ADDR` is the 19-byte address block of
//! [`natrix_proto::wire`]; `class` is [`NatClass::code`]. Decoders are
//! canonical: a length other than the listed ones, an unknown tag, a flag
//! other than 0/1 or a class code above 3 is an error.

use std::net::SocketAddr;

#[cfg(doc)]
use natrix_proto::Channel;
use natrix_proto::NatClass;
use natrix_proto::wire::{ADDR_LEN, NodeId, decode_addr, encode_addr};
use natrix_session::PublicKey;

/// Channel of announcements (own and vouched).
pub const CH_ANNOUNCEMENT: u8 = 4;
/// Channel of directory lookups.
pub const CH_DIRECTORY_LOOKUP: u8 = 5;
/// Channel of directory answers.
pub const CH_DIRECTORY_ANSWER: u8 = 6;
/// Channel of application data.
pub const CH_DATA: u8 = 16;

/// Why a control payload is not valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlDecodeError {
    /// The payload has none of the lengths its message allows.
    #[error("{what}: length {got} bytes is not valid")]
    Length {
        /// Which message.
        what: &'static str,
        /// The length received.
        got: usize,
    },
    /// An unknown tag or flag byte.
    #[error("{what}: unknown tag or flag {got:#04x}")]
    Tag {
        /// Which message.
        what: &'static str,
        /// The byte found.
        got: u8,
    },
    /// A class code above 3.
    #[error("unknown NAT class code {0}")]
    Class(u8),
    /// A bad address block.
    #[error("address block: {0}")]
    Addr(natrix_proto::DecodeError),
}

/// A message on the announcement channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnnouncementMsg {
    /// The sender's own (reflex, class).
    Own {
        /// Its public address.
        reflex: SocketAddr,
        /// Its class.
        class: NatClass,
    },
    /// A coordinator vouches for one of its peers' announcement.
    Vouched {
        /// The peer.
        peer: NodeId,
        /// Its public address.
        reflex: SocketAddr,
        /// Its class.
        class: NatClass,
    },
}

const OWN_LEN: usize = 1 + ADDR_LEN + 1;
const VOUCHED_LEN: usize = 1 + 8 + ADDR_LEN + 1;

fn class_from(code: u8) -> Result<NatClass, ControlDecodeError> {
    let c = NatClass::from_code(code);
    if c.code() == code {
        Ok(c)
    } else {
        Err(ControlDecodeError::Class(code))
    }
}

fn addr_class(bytes: &[u8]) -> Result<(SocketAddr, NatClass), ControlDecodeError> {
    let addr =
        decode_addr(bytes.get(..ADDR_LEN).unwrap_or(&[])).map_err(ControlDecodeError::Addr)?;
    let class = class_from(bytes.get(ADDR_LEN).copied().unwrap_or(0xff))?;
    Ok((addr, class))
}

/// The longest payload this module encodes: a directory answer with an
/// announcement (57 bytes).
pub const MAX_ENCODED_LEN: usize = ANSWER_LEN + ADDR_LEN + 1;

/// An encoded control payload, held inline (encoding allocates nothing).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Encoded {
    bytes: [u8; MAX_ENCODED_LEN],
    len: usize,
}

impl Encoded {
    fn new() -> Self {
        Encoded {
            bytes: [0; MAX_ENCODED_LEN],
            len: 0,
        }
    }

    /// Appends `bytes`; every message here fits, so nothing is ever cut.
    fn put(&mut self, bytes: &[u8]) {
        let end = (self.len + bytes.len()).min(MAX_ENCODED_LEN);
        if let (Some(dst), Some(src)) = (
            self.bytes.get_mut(self.len..end),
            bytes.get(..end - self.len),
        ) {
            dst.copy_from_slice(src);
        }
        self.len = end;
    }

    fn put_addr_class(&mut self, reflex: SocketAddr, class: NatClass) {
        self.put(&encode_addr(&reflex));
        self.put(&[class.code()]);
    }

    /// The encoded bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&[])
    }
}

impl std::fmt::Debug for Encoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_bytes(), f)
    }
}

impl AnnouncementMsg {
    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.to_bytes().as_bytes());
    }

    /// The encoding, inline.
    #[must_use]
    pub fn to_bytes(&self) -> Encoded {
        let mut out = Encoded::new();
        match *self {
            AnnouncementMsg::Own { reflex, class } => {
                out.put(&[0]);
                out.put_addr_class(reflex, class);
            }
            AnnouncementMsg::Vouched {
                peer,
                reflex,
                class,
            } => {
                out.put(&[1]);
                out.put(&peer.0.to_be_bytes());
                out.put_addr_class(reflex, class);
            }
        }
        out
    }

    /// Decodes an announcement payload.
    pub fn decode(bytes: &[u8]) -> Result<Self, ControlDecodeError> {
        const WHAT: &str = "announcement";
        match (bytes.first().copied(), bytes.len()) {
            (Some(0), OWN_LEN) => {
                let (reflex, class) = addr_class(&bytes[1..])?;
                Ok(AnnouncementMsg::Own { reflex, class })
            }
            (Some(1), VOUCHED_LEN) => {
                let mut id = [0u8; 8];
                id.copy_from_slice(&bytes[1..9]);
                let (reflex, class) = addr_class(&bytes[9..])?;
                Ok(AnnouncementMsg::Vouched {
                    peer: NodeId(u64::from_be_bytes(id)),
                    reflex,
                    class,
                })
            }
            (Some(t @ (0 | 1)), got) => {
                let _ = t;
                Err(ControlDecodeError::Length { what: WHAT, got })
            }
            (Some(t), _) => Err(ControlDecodeError::Tag { what: WHAT, got: t }),
            (None, got) => Err(ControlDecodeError::Length { what: WHAT, got }),
        }
    }
}

/// A directory lookup: is `key` online at the coordinator?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lookup {
    /// Chosen by the asker; echoed in the answer.
    pub query: u32,
    /// The public key asked about.
    pub key: PublicKey,
}

const LOOKUP_LEN: usize = 4 + 32;

impl Lookup {
    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.to_bytes().as_bytes());
    }

    /// The encoding, inline.
    #[must_use]
    pub fn to_bytes(&self) -> Encoded {
        let mut out = Encoded::new();
        out.put(&self.query.to_be_bytes());
        out.put(self.key.as_bytes());
        out
    }

    /// Decodes a lookup payload.
    pub fn decode(bytes: &[u8]) -> Result<Self, ControlDecodeError> {
        if bytes.len() != LOOKUP_LEN {
            return Err(ControlDecodeError::Length {
                what: "directory lookup",
                got: bytes.len(),
            });
        }
        Ok(Lookup {
            query: u32::from_be_bytes(field(bytes, 0)),
            key: PublicKey::from_bytes(field(bytes, 4)),
        })
    }
}

/// The answer to a [`Lookup`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LookupAnswer {
    /// The lookup's query id.
    pub query: u32,
    /// The public key asked about.
    pub key: PublicKey,
    /// Whether it has a live session to the answering node.
    pub online: bool,
    /// Its announced (reflex, class), when online and announced.
    pub announced: Option<(SocketAddr, NatClass)>,
}

const ANSWER_LEN: usize = 4 + 32 + 1;

impl LookupAnswer {
    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.to_bytes().as_bytes());
    }

    /// The encoding, inline.
    #[must_use]
    pub fn to_bytes(&self) -> Encoded {
        let mut out = Encoded::new();
        out.put(&self.query.to_be_bytes());
        out.put(self.key.as_bytes());
        out.put(&[u8::from(self.online)]);
        if let Some((reflex, class)) = self.announced {
            out.put_addr_class(reflex, class);
        }
        out
    }

    /// Decodes an answer payload.
    pub fn decode(bytes: &[u8]) -> Result<Self, ControlDecodeError> {
        const WHAT: &str = "directory answer";
        let announced = match bytes.len() {
            ANSWER_LEN => None,
            n if n == ANSWER_LEN + ADDR_LEN + 1 => Some(addr_class(&bytes[ANSWER_LEN..])?),
            got => return Err(ControlDecodeError::Length { what: WHAT, got }),
        };
        let online = match bytes[ANSWER_LEN - 1] {
            0 => false,
            1 => true,
            got => return Err(ControlDecodeError::Tag { what: WHAT, got }),
        };
        Ok(LookupAnswer {
            query: u32::from_be_bytes(field(bytes, 0)),
            key: PublicKey::from_bytes(field(bytes, 4)),
            online,
            announced,
        })
    }
}

/// `N` bytes at `at` (zeros where `bytes` is too short; callers check lengths first).
fn field<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = bytes.get(at..at + N) {
        out.copy_from_slice(src);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> PublicKey {
        PublicKey::from_bytes([b; 32])
    }

    #[test]
    fn announcements_round_trip_and_reject_junk() {
        let reflex: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        for m in [
            AnnouncementMsg::Own {
                reflex,
                class: NatClass::Cone,
            },
            AnnouncementMsg::Vouched {
                peer: NodeId(7),
                reflex: "[::1]:9".parse().unwrap(),
                class: NatClass::Symmetric,
            },
        ] {
            let mut v = Vec::new();
            m.encode(&mut v);
            assert_eq!(m.to_bytes().as_bytes(), &v[..]);
            assert_eq!(AnnouncementMsg::decode(&v), Ok(m));
            for cut in 0..v.len() {
                assert!(AnnouncementMsg::decode(&v[..cut]).is_err());
            }
            let mut bad = v.clone();
            *bad.last_mut().unwrap() = 9;
            assert_eq!(
                AnnouncementMsg::decode(&bad),
                Err(ControlDecodeError::Class(9))
            );
        }
        assert!(matches!(
            AnnouncementMsg::decode(&[2; OWN_LEN]),
            Err(ControlDecodeError::Tag { got: 2, .. })
        ));
    }

    #[test]
    fn directory_messages_round_trip() {
        let l = Lookup {
            query: 0xdead_beef,
            key: key(3),
        };
        let mut v = Vec::new();
        l.encode(&mut v);
        assert_eq!(v.len(), 36);
        assert_eq!(l.to_bytes().as_bytes(), &v[..]);
        assert_eq!(Lookup::decode(&v), Ok(l));
        assert!(Lookup::decode(&v[..35]).is_err());
        for a in [
            LookupAnswer {
                query: 1,
                key: key(4),
                online: false,
                announced: None,
            },
            LookupAnswer {
                query: 2,
                key: key(5),
                online: true,
                announced: Some(("127.0.0.1:5".parse().unwrap(), NatClass::Open)),
            },
        ] {
            let mut v = Vec::new();
            a.encode(&mut v);
            assert_eq!(a.to_bytes().as_bytes(), &v[..]);
            assert!(v.len() <= MAX_ENCODED_LEN);
            assert_eq!(LookupAnswer::decode(&v), Ok(a));
            let mut bad = v.clone();
            bad[36] = 2;
            assert!(LookupAnswer::decode(&bad).is_err());
        }
    }
}
