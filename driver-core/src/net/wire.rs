//! The wire form of natrix's control messages inside a session.
//!
//! Every session transport packet carries one channel byte and a payload
//! (`natrix-session` owns channel 0). The networked control plane uses:
//!
//! | channel | name | payload |
//! |---|---|---|
//! | 1, 2, 3 | the agent's channels ([`Channel::wire_byte`]): rendezvous (a Net v0.27 rendezvous message, unchanged), reflex request (empty), reflex response (one `ADDR` block) |
//! | 4 | announcement | `0x00` `ANN` (21, 22 or 25 bytes): the sender's own announcement; `0x01` node-id(8) `ANN` (29, 30 or 33 bytes): a coordinator vouching for one of its peers |
//! | 5 | directory lookup | query-id(4) public-key(32) |
//! | 6 | directory answer | query-id(4) public-key(32) online(1) then, when the peer announced, `ANN` |
//! | 16 | application data | the application's bytes |
//!
//! Integers are big-endian. `ANN` is an [`Announcement`]: the 19-byte `ADDR`
//! block of [`natrix_proto::wire`] (the reflex), the class
//! ([`NatClass::code`]), then — only when the node measured them (C8) — one
//! [`NatProfile::code`] byte (mapping and filtering), and after it — only
//! when the node also measured its port allocation (N1) — the 3 bytes of
//! [`PortAllocation::to_wire`]; 20, 21 or 24 bytes, told apart by the
//! message's length. Decoders are canonical: a length other than the listed
//! ones, an unknown tag, a flag other than 0/1, a class code above 3, a
//! profile byte that is not a valid code or allocation bytes
//! [`PortAllocation::from_wire`] refuses is an error.

#[cfg(doc)]
use natrix_proto::Channel;
use natrix_proto::wire::{ADDR_LEN, NodeId, decode_addr, encode_addr};
use natrix_proto::{Announcement, NatClass, NatProfile, PortAllocation};
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
    /// A profile byte that is not a [`NatProfile::code`].
    #[error("unknown NAT profile byte {0:#04x}")]
    Profile(u8),
    /// Port allocation bytes that [`PortAllocation::from_wire`] refuses.
    #[error("unknown port allocation bytes {0:02x?}")]
    Allocation([u8; 3]),
    /// A bad address block.
    #[error("address block: {0}")]
    Addr(natrix_proto::DecodeError),
}

/// A message on the announcement channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnnouncementMsg {
    /// The sender's own announcement.
    Own(Announcement),
    /// A coordinator vouches for one of its peers' announcement.
    Vouched {
        /// The peer.
        peer: NodeId,
        /// What the peer announced.
        announcement: Announcement,
    },
}

/// `ANN` without the profile byte.
const ANN_LEN: usize = ADDR_LEN + 1;
/// The allocation's length after the profile byte.
const ALLOC_LEN: usize = 3;

/// Whether `n` is a length an `ANN` block may have: bare, with a profile,
/// or with a profile and an allocation.
fn ann_len(n: usize) -> bool {
    n == ANN_LEN || n == ANN_LEN + 1 || n == ANN_LEN + 1 + ALLOC_LEN
}

fn class_from(code: u8) -> Result<NatClass, ControlDecodeError> {
    let c = NatClass::from_code(code);
    if c.code() == code {
        Ok(c)
    } else {
        Err(ControlDecodeError::Class(code))
    }
}

/// Decodes an `ANN` block that is all of `bytes` (the caller checked its
/// length with [`ann_len`]).
fn announcement(bytes: &[u8]) -> Result<Announcement, ControlDecodeError> {
    let reflex =
        decode_addr(bytes.get(..ADDR_LEN).unwrap_or(&[])).map_err(ControlDecodeError::Addr)?;
    let class = class_from(bytes.get(ADDR_LEN).copied().unwrap_or(0xff))?;
    let profile = match bytes.get(ANN_LEN) {
        None => None,
        Some(&b) => Some(NatProfile::from_code(b).ok_or(ControlDecodeError::Profile(b))?),
    };
    let profile = match (profile, bytes.get(ANN_LEN + 1..)) {
        (Some(p), Some(rest)) if rest.len() == ALLOC_LEN => {
            let wire = field::<ALLOC_LEN>(rest, 0);
            let a = PortAllocation::from_wire(wire).ok_or(ControlDecodeError::Allocation(wire))?;
            Some(p.with_allocation(Some(a)))
        }
        (p, _) => p,
    };
    Ok(Announcement {
        reflex,
        class,
        profile,
    })
}

/// The longest payload this module encodes: a directory answer with an
/// announcement, its profile and its allocation (61 bytes).
pub const MAX_ENCODED_LEN: usize = ANSWER_LEN + ANN_LEN + 1 + ALLOC_LEN;

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

    fn put_announcement(&mut self, a: &Announcement) {
        self.put(&encode_addr(&a.reflex));
        self.put(&[a.class.code()]);
        if let Some(p) = a.profile {
            self.put(&[p.code()]);
            if let Some(alloc) = p.allocation {
                self.put(&alloc.to_wire());
            }
        }
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
            AnnouncementMsg::Own(ref a) => {
                out.put(&[0]);
                out.put_announcement(a);
            }
            AnnouncementMsg::Vouched {
                peer,
                ref announcement,
            } => {
                out.put(&[1]);
                out.put(&peer.0.to_be_bytes());
                out.put_announcement(announcement);
            }
        }
        out
    }

    /// Decodes an announcement payload.
    pub fn decode(bytes: &[u8]) -> Result<Self, ControlDecodeError> {
        const WHAT: &str = "announcement";
        match (bytes.first().copied(), bytes.len()) {
            (Some(0), n) if ann_len(n - 1) => Ok(AnnouncementMsg::Own(announcement(&bytes[1..])?)),
            (Some(1), n) if n >= 9 && ann_len(n - 9) => Ok(AnnouncementMsg::Vouched {
                peer: NodeId(u64::from_be_bytes(field(bytes, 1))),
                announcement: announcement(&bytes[9..])?,
            }),
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
    /// Its announcement, when online and announced.
    pub announced: Option<Announcement>,
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
        if let Some(a) = &self.announced {
            out.put_announcement(a);
        }
        out
    }

    /// Decodes an answer payload.
    pub fn decode(bytes: &[u8]) -> Result<Self, ControlDecodeError> {
        const WHAT: &str = "directory answer";
        let announced = match bytes.len() {
            ANSWER_LEN => None,
            n if n > ANSWER_LEN && ann_len(n - ANSWER_LEN) => {
                Some(announcement(&bytes[ANSWER_LEN..])?)
            }
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
    use natrix_proto::{FilteringBehaviour, MappingBehaviour};
    use std::net::SocketAddr;

    fn key(b: u8) -> PublicKey {
        PublicKey::from_bytes([b; 32])
    }

    #[test]
    fn announcements_round_trip_and_reject_junk() {
        let reflex: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let profile = NatProfile::new(
            MappingBehaviour::AddressAndPortDependent,
            FilteringBehaviour::EndpointIndependent,
        );
        for m in [
            AnnouncementMsg::Own(Announcement {
                reflex,
                class: NatClass::Cone,
                profile: None,
            }),
            AnnouncementMsg::Own(Announcement {
                reflex,
                class: NatClass::Symmetric,
                profile: Some(profile),
            }),
            AnnouncementMsg::Vouched {
                peer: NodeId(7),
                announcement: Announcement {
                    reflex: "[::1]:9".parse().unwrap(),
                    class: NatClass::Symmetric,
                    profile: None,
                },
            },
            AnnouncementMsg::Vouched {
                peer: NodeId(7),
                announcement: Announcement {
                    reflex: "[::1]:9".parse().unwrap(),
                    class: NatClass::Open,
                    profile: Some(NatProfile::OPEN),
                },
            },
        ] {
            let mut v = Vec::new();
            m.encode(&mut v);
            assert_eq!(m.to_bytes().as_bytes(), &v[..]);
            assert_eq!(AnnouncementMsg::decode(&v), Ok(m));
            for cut in 0..v.len() {
                // Cutting the profile byte off is the message without one.
                let Ok(short) = AnnouncementMsg::decode(&v[..cut]) else {
                    continue;
                };
                assert_eq!(cut + 1, v.len(), "{m:?} cut at {cut}");
                assert_ne!(short, m);
            }
            let mut longer = v.clone();
            longer.push(0x11);
            let longer_ok = AnnouncementMsg::decode(&longer).is_ok();
            let has_profile = matches!(
                m,
                AnnouncementMsg::Own(Announcement {
                    profile: Some(_),
                    ..
                }) | AnnouncementMsg::Vouched {
                    announcement: Announcement {
                        profile: Some(_),
                        ..
                    },
                    ..
                }
            );
            assert_eq!(longer_ok, !has_profile, "{m:?} + 1 byte");
            let mut bad = v.clone();
            let class_at = if has_profile {
                v.len() - 2
            } else {
                v.len() - 1
            };
            bad[class_at] = 9;
            assert_eq!(
                AnnouncementMsg::decode(&bad),
                Err(ControlDecodeError::Class(9))
            );
            if has_profile {
                for byte in [0x00, 0x10, 0x01, 0x14, 0x41, 0xff] {
                    *bad.last_mut().unwrap() = byte;
                    bad[class_at] = 3;
                    assert_eq!(
                        AnnouncementMsg::decode(&bad),
                        Err(ControlDecodeError::Profile(byte))
                    );
                }
            }
        }
        assert!(matches!(
            AnnouncementMsg::decode(&[2; 1 + ANN_LEN]),
            Err(ControlDecodeError::Tag { got: 2, .. })
        ));
    }

    #[test]
    fn n1_announcements_carry_the_port_allocation_after_the_profile() {
        let profile = NatProfile::new(
            MappingBehaviour::AddressAndPortDependent,
            FilteringBehaviour::AddressAndPortDependent,
        );
        for alloc in [
            PortAllocation::Preserving,
            PortAllocation::Random,
            PortAllocation::Sequential { step: 1 },
            PortAllocation::Sequential { step: -3 },
        ] {
            let m = AnnouncementMsg::Vouched {
                peer: NodeId(9),
                announcement: Announcement {
                    reflex: "127.0.0.1:4000".parse().unwrap(),
                    class: NatClass::Symmetric,
                    profile: Some(profile.with_allocation(Some(alloc))),
                },
            };
            let v = m.to_bytes().as_bytes().to_vec();
            assert_eq!(v.len(), 1 + 8 + ANN_LEN + 1 + ALLOC_LEN);
            assert_eq!(AnnouncementMsg::decode(&v), Ok(m));
            // Without the allocation it is the profile-only form.
            let AnnouncementMsg::Vouched { announcement, .. } =
                AnnouncementMsg::decode(&v[..v.len() - ALLOC_LEN]).unwrap()
            else {
                panic!("vouched");
            };
            assert_eq!(announcement.profile, Some(profile));
            // One or two allocation bytes are no length the message has.
            for cut in 1..ALLOC_LEN {
                assert!(AnnouncementMsg::decode(&v[..v.len() - cut]).is_err());
            }
            let mut bad = v.clone();
            let tag_at = v.len() - ALLOC_LEN;
            bad[tag_at] = 7;
            assert!(matches!(
                AnnouncementMsg::decode(&bad),
                Err(ControlDecodeError::Allocation([7, ..]))
            ));
        }
    }

    #[test]
    fn every_profile_byte_round_trips_and_no_other_decodes() {
        let mut valid = 0;
        for byte in 0..=u8::MAX {
            if let Some(p) = NatProfile::from_code(byte) {
                assert_eq!(p.code(), byte);
                valid += 1;
            }
        }
        assert_eq!(valid, 9, "three mappings by three filterings");
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
                announced: Some(Announcement {
                    reflex: "127.0.0.1:5".parse().unwrap(),
                    class: NatClass::Open,
                    profile: None,
                }),
            },
            LookupAnswer {
                query: 3,
                key: key(6),
                online: true,
                announced: Some(Announcement {
                    reflex: "[2001:db8::1]:5".parse().unwrap(),
                    class: NatClass::Cone,
                    profile: Some(
                        NatProfile::new(
                            MappingBehaviour::AddressAndPortDependent,
                            FilteringBehaviour::AddressDependent,
                        )
                        .with_allocation(Some(PortAllocation::Sequential { step: 2 })),
                    ),
                }),
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
