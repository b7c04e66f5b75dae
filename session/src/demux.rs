//! The one-socket demultiplexer: which protocol a received datagram belongs to.
//!
//! natrix runs keep-alives, STUN, encrypted sessions and raw application
//! datagrams over a single UDP socket. [`classify`] looks at a few header bytes
//! (no decoding, no state) and puts every datagram into exactly one
//! [`DatagramKind`]:
//!
//! | kind | rule |
//! |---|---|
//! | [`Keepalive`](DatagramKind::Keepalive) | [`natrix_proto::wire::is_keepalive`]: 14 bytes starting `"PH"` |
//! | [`Stun`](DatagramKind::Stun) | at least 20 bytes, top two bits of byte 0 zero, bytes 4..8 = `0x2112A442` (magic cookie) |
//! | [`Session`](DatagramKind::Session) | byte 0 in `0xA1..=0xA4`, bytes 1..4 zero, handshake and cookie packets exactly their length, transport at least [`TRANSPORT_MIN_LEN`] |
//! | [`Unknown`](DatagramKind::Unknown) | everything else (the driver passes it to the application raw) |
//!
//! The first three rules are disjoint by construction: a keep-alive starts with
//! `'P'` (0x50, top bits `01`) and is shorter than 20 bytes; a session packet
//! starts with top bits `10`; a STUN message with `00`.

use natrix_proto::wire::is_keepalive;

/// Exact length of a handshake initiation: header (4), sender index (4),
/// ephemeral key (32), encrypted static key (32 + 16), encrypted 8-byte
/// timestamp (8 + 16), mac1 (16), mac2 (16).
///
/// `wire.rs`'s encoder asserts that it produces exactly this many bytes.
pub const HANDSHAKE_INIT_LEN: usize = 4 + 4 + 32 + 48 + (8 + 16) + 16 + 16;

/// Exact length of a handshake response: header (4), sender index (4), receiver
/// index (4), ephemeral key (32), encrypted 16-byte payload (echoed initiator
/// timestamp + responder timestamp, 16 + 16), mac1 (16), mac2 (16).
///
/// `wire.rs`'s encoder asserts that it produces exactly this many bytes.
pub const HANDSHAKE_RESPONSE_LEN: usize = 4 + 4 + 4 + 32 + (16 + 16) + 16 + 16;

/// Exact length of a cookie reply: header (4), receiver index (4), nonce (24),
/// sealed 16-byte cookie (16 + 16).
///
/// `wire.rs`'s encoder asserts that it produces exactly this many bytes.
pub const COOKIE_REPLY_LEN: usize = 4 + 4 + 24 + 32;

/// Minimum length of a transport packet: header (4), receiver index (4),
/// counter (8), channel byte (1), AEAD tag (16) — an empty payload.
///
/// `wire.rs`'s encoder asserts that it never produces less.
pub const TRANSPORT_MIN_LEN: usize = 4 + 4 + 8 + 1 + 16;

/// The STUN magic cookie (RFC 5389), bytes 4..8 of every STUN message.
pub const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

/// Length of a STUN message header; no STUN message is shorter.
pub const STUN_HEADER_LEN: usize = 20;

/// The session packet types: byte 0 of every session datagram.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PacketType {
    /// Noise IK message 1 from the initiator.
    HandshakeInit = 0xA1,
    /// Noise IK message 2 from the responder.
    HandshakeResponse = 0xA2,
    /// A responder under load asks the initiator to retry with a cookie (S5).
    CookieReply = 0xA3,
    /// Encrypted data on an established session.
    Transport = 0xA4,
}

impl PacketType {
    /// All four types, in byte order.
    pub const ALL: [PacketType; 4] = [
        PacketType::HandshakeInit,
        PacketType::HandshakeResponse,
        PacketType::CookieReply,
        PacketType::Transport,
    ];

    /// The type whose tag byte is `byte`, if any.
    #[must_use]
    pub const fn from_byte(byte: u8) -> Option<PacketType> {
        match byte {
            0xA1 => Some(PacketType::HandshakeInit),
            0xA2 => Some(PacketType::HandshakeResponse),
            0xA3 => Some(PacketType::CookieReply),
            0xA4 => Some(PacketType::Transport),
            _ => None,
        }
    }

    /// The tag byte (byte 0 on the wire).
    #[must_use]
    pub const fn to_byte(self) -> u8 {
        self as u8
    }

    /// The shortest datagram of this type that [`classify`] accepts.
    #[must_use]
    pub const fn min_len(self) -> usize {
        match self {
            PacketType::HandshakeInit => HANDSHAKE_INIT_LEN,
            PacketType::HandshakeResponse => HANDSHAKE_RESPONSE_LEN,
            PacketType::CookieReply => COOKIE_REPLY_LEN,
            PacketType::Transport => TRANSPORT_MIN_LEN,
        }
    }

    /// The exact length of a datagram of this type, or `None` for
    /// [`Transport`](PacketType::Transport) (whose length depends on the payload).
    #[must_use]
    pub const fn exact_len(self) -> Option<usize> {
        match self {
            PacketType::Transport => None,
            other => Some(other.min_len()),
        }
    }

    /// Whether a datagram of `len` bytes has a valid length for this type.
    #[must_use]
    pub const fn len_ok(self, len: usize) -> bool {
        match self.exact_len() {
            Some(exact) => len == exact,
            None => len >= self.min_len(),
        }
    }
}

/// Which protocol a datagram belongs to; see the [module docs](self) for the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DatagramKind {
    /// A natrix-proto keep-alive (hand it to the traversal agent).
    Keepalive,
    /// An encrypted-session packet (hand it to the session endpoint).
    Session(PacketType),
    /// A STUN message.
    Stun,
    /// None of the above: a raw application datagram.
    Unknown,
}

/// Is `datagram` a STUN message by the header rule: at least 20 bytes, the top
/// two bits of byte 0 zero, and the magic cookie at bytes 4..8.
#[must_use]
pub fn is_stun(datagram: &[u8]) -> bool {
    datagram.len() >= STUN_HEADER_LEN
        && datagram.first().is_some_and(|b| b & 0xC0 == 0)
        && datagram.get(4..8) == Some(&STUN_MAGIC_COOKIE[..])
}

/// The session packet type of `datagram`, if it is a well-formed session header
/// of a valid length for its type.
#[must_use]
pub fn session_type(datagram: &[u8]) -> Option<PacketType> {
    let ty = PacketType::from_byte(*datagram.first()?)?;
    if datagram.get(1..4) != Some(&[0u8, 0, 0][..]) {
        return None;
    }
    ty.len_ok(datagram.len()).then_some(ty)
}

/// Puts `datagram` into exactly one [`DatagramKind`]. Pure, total, never panics.
#[must_use]
pub fn classify(datagram: &[u8]) -> DatagramKind {
    if is_keepalive(datagram) {
        DatagramKind::Keepalive
    } else if is_stun(datagram) {
        DatagramKind::Stun
    } else if let Some(ty) = session_type(datagram) {
        DatagramKind::Session(ty)
    } else {
        DatagramKind::Unknown
    }
}
