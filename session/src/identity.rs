//! Node identity: X25519 public keys, their printable form, node ids and dial strings.
//!
//! * [`PublicKey`] — the 32-byte X25519 public key a node is known by. Its
//!   [`node_id`](PublicKey::node_id) is the 64-bit [`NodeId`] that natrix-proto's
//!   rendezvous and keep-alive messages carry (S1).
//! * Printable keys are bech32m with the human-readable prefix `natrix`, e.g.
//!   `natrix1…` (65 characters). The checksum catches any single typo;
//!   [`KeyParseError`] says what is wrong.
//! * [`Keypair`] — a secret key and its public key; the secret is wiped on drop and
//!   never printed.
//! * [`Dial`] — `natrix1…@host:port`: whom to talk to and where to find them.
//!
//! Nothing here reads a clock, draws randomness or does I/O.

use core::fmt;
use core::net::{IpAddr, Ipv6Addr, SocketAddr};
use core::str::FromStr;

use bech32::primitives::decode::UncheckedHrpstring;
use bech32::{Bech32m, Fe32, Hrp};
use blake2::{Blake2s256, Digest};
use natrix_proto::wire::NodeId;
use snow::params::DHChoice;
use snow::resolvers::{CryptoResolver, DefaultResolver};
use zeroize::Zeroize;

/// Length in bytes of a public or secret key.
pub const KEY_LEN: usize = 32;

/// The human-readable prefix of a printed public key (before the `1` separator).
pub const KEY_HRP: &str = "natrix";

/// The domain-separation string hashed in front of the key to make its node id (S1).
pub const NODE_ID_DOMAIN: &[u8] = b"natrix/node-id/v1";

/// Number of characters after `natrix1` in a printed key: 52 data characters
/// (256 bits in 5-bit groups, 4 zero padding bits) plus the 6-character checksum.
pub const KEY_DATA_CHARS: usize = 52 + 6;

/// Total length of a printed public key: `natrix` + `1` + [`KEY_DATA_CHARS`].
pub const KEY_STRING_LEN: usize = KEY_HRP.len() + 1 + KEY_DATA_CHARS;

const HRP: Hrp = Hrp::parse_unchecked(KEY_HRP);

/// `natrix1`, the fixed start of every printed key.
const PREFIX: &str = "natrix1";

/// The bech32 alphabet (lower case), in value order.
const BECH32_CHARS: &[u8; 32] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";

/// An X25519 public key: the identity of a node.
///
/// Printed (via [`Display`](fmt::Display)) as bech32m with prefix `natrix`,
/// always in lower case; [`FromStr`] accepts that form and its all-upper-case
/// variant (as BIP-173 requires), nothing else.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    /// Wraps 32 raw key bytes.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        PublicKey(bytes)
    }

    /// The raw key bytes.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The node id of this key (S1): the first 8 bytes, read big-endian, of
    /// BLAKE2s-256 over [`NODE_ID_DOMAIN`] (`"natrix/node-id/v1"`) followed by the
    /// 32 key bytes.
    ///
    /// Deterministic and stable across versions: other nodes find us by it.
    #[must_use]
    pub fn node_id(&self) -> NodeId {
        let mut hasher = Blake2s256::new();
        hasher.update(NODE_ID_DOMAIN);
        hasher.update(self.0);
        let digest = hasher.finalize();
        let mut first = [0u8; 8];
        for (dst, src) in first.iter_mut().zip(digest.iter()) {
            *dst = *src;
        }
        NodeId(u64::from_be_bytes(first))
    }
}

impl From<[u8; KEY_LEN]> for PublicKey {
    fn from(bytes: [u8; KEY_LEN]) -> Self {
        PublicKey(bytes)
    }
}

impl AsRef<[u8]> for PublicKey {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // 65 characters, far below bech32m's code length: encoding cannot fail
        // except through the formatter itself.
        bech32::encode_lower_to_fmt::<Bech32m, _>(f, HRP, &self.0).map_err(|_| fmt::Error)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// Why a string is not a printed [`PublicKey`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyParseError {
    /// The string is empty.
    #[error("empty public key: expected a natrix1… key ({KEY_STRING_LEN} characters)")]
    Empty,
    /// There is no `1` separator at all, so this is not a bech32 string.
    #[error("not a natrix public key: expected it to start with \"natrix1\"")]
    MissingSeparator,
    /// A bech32-like string whose prefix is not `natrix`: a key or address of
    /// something else, or a typo in the prefix.
    #[error("wrong prefix {found:?}: natrix public keys start with \"natrix1\"")]
    WrongPrefix {
        /// The prefix found (everything before the last `1`).
        found: String,
    },
    /// Upper- and lower-case letters mixed. Keys are printed in lower case; an
    /// all-upper-case key is accepted too, a mixture never.
    #[error("public key mixes upper- and lower-case letters; write it all in lower case")]
    MixedCase,
    /// A character that bech32 never uses (`1` after the separator, `b`, `i`, `o`,
    /// punctuation, spaces, non-ASCII …).
    #[error("bad character {character:?} at position {position} of the public key (typo?)")]
    BadCharacter {
        /// 1-based position in the string, counted in characters.
        position: usize,
        /// The offending character.
        character: char,
    },
    /// The right prefix but the wrong number of characters after `natrix1`:
    /// truncated, or characters lost or added while copying.
    #[error(
        "public key has {found} characters after \"natrix1\", expected {expected}: truncated or mis-copied?"
    )]
    WrongLength {
        /// Characters found after `natrix1`.
        found: usize,
        /// Characters expected ([`KEY_DATA_CHARS`]).
        expected: usize,
    },
    /// All characters are valid but the checksum does not match: a typo.
    #[error("public key checksum mismatch: there is a typo in the key")]
    Checksum,
    /// The checksum is right but the unused padding bits are not zero: not how
    /// natrix prints keys (hand-crafted, not a typo).
    #[error("public key is not canonically encoded (non-zero padding bits)")]
    NonCanonical,
}

impl FromStr for PublicKey {
    type Err = KeyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(KeyParseError::Empty);
        }
        let prefix_ok = s
            .get(..PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(PREFIX));
        if !prefix_ok {
            return Err(match s.rfind('1') {
                Some(at) => KeyParseError::WrongPrefix {
                    found: s.get(..at).unwrap_or_default().to_owned(),
                },
                None => KeyParseError::MissingSeparator,
            });
        }
        let data = s.get(PREFIX.len()..).unwrap_or_default();
        let mut data_chars = 0usize;
        for (i, c) in data.chars().enumerate() {
            let lower = c.to_ascii_lowercase();
            if !c.is_ascii() || !BECH32_CHARS.contains(&(lower as u8)) {
                return Err(KeyParseError::BadCharacter {
                    position: PREFIX.len() + i + 1,
                    character: c,
                });
            }
            data_chars += 1;
        }
        // Everything is ASCII from here on.
        let has_upper = s.bytes().any(|b| b.is_ascii_uppercase());
        let has_lower = s.bytes().any(|b| b.is_ascii_lowercase());
        if has_upper && has_lower {
            return Err(KeyParseError::MixedCase);
        }
        if data_chars != KEY_DATA_CHARS {
            return Err(KeyParseError::WrongLength {
                found: data_chars,
                expected: KEY_DATA_CHARS,
            });
        }
        // The checks above leave only the checksum for the bech32 crate to refuse;
        // map anything it still says to `Checksum`.
        let checked = UncheckedHrpstring::new(s)
            .map_err(|_| KeyParseError::Checksum)?
            .validate_and_remove_checksum::<Bech32m>()
            .map_err(|_| KeyParseError::Checksum)?;

        // 52 × 5 = 260 bits: the last character's low 4 bits are padding, zero.
        let last = checked
            .data_part_ascii_no_checksum()
            .last()
            .and_then(|&b| Fe32::from_char(char::from(b)).ok())
            .ok_or(KeyParseError::Checksum)?;
        if last.to_u8() & 0x0f != 0 {
            return Err(KeyParseError::NonCanonical);
        }
        let mut key = [0u8; KEY_LEN];
        let mut n = 0usize;
        for byte in checked.byte_iter() {
            let slot = key.get_mut(n).ok_or(KeyParseError::WrongLength {
                found: data_chars,
                expected: KEY_DATA_CHARS,
            })?;
            *slot = byte;
            n += 1;
        }
        if n != KEY_LEN {
            return Err(KeyParseError::WrongLength {
                found: data_chars,
                expected: KEY_DATA_CHARS,
            });
        }
        Ok(PublicKey(key))
    }
}

/// A node's X25519 key pair.
///
/// The secret is overwritten with zeros when the value is dropped, and
/// [`Debug`](fmt::Debug) prints only the public key. Drivers make one from 32
/// bytes of OS randomness (or load it with [`crate::keyfile`]); tests from fixed
/// bytes. Any 32 bytes are a valid secret (X25519 clamps them when used).
#[derive(Clone)]
pub struct Keypair {
    secret: [u8; KEY_LEN],
    public: PublicKey,
}

impl Keypair {
    /// Builds the key pair for `secret`, computing its X25519 public key
    /// (`X25519(clamp(secret), 9)`, the same key snow derives from
    /// `local_private_key(secret)`).
    #[must_use]
    pub fn from_secret(secret: [u8; KEY_LEN]) -> Self {
        let public = x25519_public(&secret);
        Keypair { secret, public }
    }

    /// The public key.
    #[must_use]
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The secret key bytes, e.g. for `snow::Builder::local_private_key` or for
    /// writing a key file. Do not log them.
    #[must_use]
    pub fn secret_bytes(&self) -> &[u8; KEY_LEN] {
        &self.secret
    }
}

/// X25519 base-point multiplication through snow's own Curve25519 implementation,
/// so the public key is exactly the one snow's handshake uses.
fn x25519_public(secret: &[u8; KEY_LEN]) -> PublicKey {
    // snow's default resolver (enabled through snow's default features, which
    // this crate uses) always provides Curve25519.
    let mut dh = DefaultResolver
        .resolve_dh(&DHChoice::Curve25519)
        .expect("snow's default resolver provides Curve25519");
    dh.set(secret);
    let mut public = [0u8; KEY_LEN];
    for (dst, src) in public.iter_mut().zip(dh.pubkey()) {
        *dst = *src;
    }
    // snow keeps a copy of the secret and does not wipe it on drop: overwrite it.
    dh.set(&[0u8; KEY_LEN]);
    PublicKey(public)
}

impl Drop for Keypair {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keypair")
            .field("public", &self.public)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Whom to dial and where: `natrix1…@host:port`.
///
/// `host` is a DNS name, an IPv4 literal or an IPv6 literal. IPv6 is written in
/// brackets in the string form (`natrix1…@[::1]:4433`) but stored without them
/// (`host == "::1"`). [`Display`](fmt::Display) and [`FromStr`] round-trip.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Dial {
    /// The peer's public key.
    pub key: PublicKey,
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// UDP port (1..=65535 when parsed).
    pub port: u16,
}

/// Longest host name accepted in a [`Dial`] (DNS limit).
pub const MAX_HOST_LEN: usize = 253;

impl Dial {
    /// A dial target at an IP socket address.
    #[must_use]
    pub fn from_socket_addr(key: PublicKey, addr: SocketAddr) -> Self {
        Dial {
            key,
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }

    /// The socket address when `host` is an IP literal; `None` for a name that
    /// still has to be resolved.
    #[must_use]
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        let ip: IpAddr = self.host.parse().ok()?;
        Some(SocketAddr::new(ip, self.port))
    }
}

impl fmt::Display for Dial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}@[{}]:{}", self.key, self.host, self.port)
        } else {
            write!(f, "{}@{}:{}", self.key, self.host, self.port)
        }
    }
}

/// Why a string is not a [`Dial`] (`natrix1…@host:port`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DialParseError {
    /// No `@` between key and address.
    #[error("expected <public key>@<host>:<port>, e.g. natrix1…@example.org:4433 (no '@' found)")]
    MissingAt,
    /// The part before `@` is not a public key.
    #[error("bad public key before '@': {0}")]
    Key(#[from] KeyParseError),
    /// Nothing between `@` and `:port`.
    #[error("missing host after '@': expected <host>:<port>")]
    EmptyHost,
    /// The host contains characters no host name has, or is too long.
    #[error(
        "bad host {0:?}: expected a DNS name (letters, digits, '-', '.', '_'), an IPv4 address or [IPv6]"
    )]
    BadHost(String),
    /// The bracketed host is not an IPv6 address (or the `]` is missing).
    #[error("bad IPv6 address {0:?}: expected e.g. [2001:db8::1]:4433")]
    BadIpv6(String),
    /// An IPv6 address without brackets: the port would be ambiguous.
    #[error("IPv6 address {0:?} must be written in brackets: [{0}]:<port>")]
    UnbracketedIpv6(String),
    /// No `:port` after the host.
    #[error("missing port: expected <host>:<port>")]
    MissingPort,
    /// The port is not a number in 1..=65535.
    #[error("bad port {0:?}: expected a number from 1 to 65535")]
    BadPort(String),
}

fn parse_port(s: &str) -> Result<u16, DialParseError> {
    if s.is_empty() {
        return Err(DialParseError::MissingPort);
    }
    // Digits only: `u16::from_str` would accept a leading '+'.
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DialParseError::BadPort(s.to_owned()));
    }
    match s.parse::<u16>() {
        Ok(0) | Err(_) => Err(DialParseError::BadPort(s.to_owned())),
        Ok(port) => Ok(port),
    }
}

fn valid_host_name(host: &str) -> bool {
    host.len() <= MAX_HOST_LEN
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

impl FromStr for Dial {
    type Err = DialParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (key, addr) = s.split_once('@').ok_or(DialParseError::MissingAt)?;
        let key: PublicKey = key.parse()?;
        if let Some(rest) = addr.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| DialParseError::BadIpv6(addr.to_owned()))?;
            if inside.parse::<Ipv6Addr>().is_err() {
                return Err(DialParseError::BadIpv6(inside.to_owned()));
            }
            let port = match after.strip_prefix(':') {
                Some(port) => parse_port(port)?,
                None if after.is_empty() => return Err(DialParseError::MissingPort),
                None => return Err(DialParseError::BadPort(after.to_owned())),
            };
            return Ok(Dial {
                key,
                host: inside.to_owned(),
                port,
            });
        }
        let Some((host, port)) = addr.rsplit_once(':') else {
            if addr.is_empty() {
                return Err(DialParseError::EmptyHost);
            }
            return Err(DialParseError::MissingPort);
        };
        if host.contains(':') {
            return Err(if addr.parse::<Ipv6Addr>().is_ok() {
                DialParseError::UnbracketedIpv6(addr.to_owned())
            } else if host.parse::<Ipv6Addr>().is_ok() {
                DialParseError::UnbracketedIpv6(host.to_owned())
            } else {
                DialParseError::BadHost(host.to_owned())
            });
        }
        if host.is_empty() {
            return Err(DialParseError::EmptyHost);
        }
        if !valid_host_name(host) {
            return Err(DialParseError::BadHost(host.to_owned()));
        }
        let port = parse_port(port)?;
        Ok(Dial {
            key,
            host: host.to_owned(),
            port,
        })
    }
}
