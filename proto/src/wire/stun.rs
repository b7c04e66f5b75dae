//! STUN Binding messages (RFC 8489) and the RFC 5780 attributes.
//!
//! [`decode`] reads a Binding request, success or error response from a
//! borrowed datagram: it never panics, never allocates, and looks at no more
//! than [`MAX_MESSAGE`] bytes. The `encode_*` functions write into the
//! caller's slice.
//!
//! What the decoder accepts:
//!
//! - the header rule (top two bits zero, magic cookie, length a multiple of
//!   four) and a length that covers the datagram exactly;
//! - attributes XOR-MAPPED-ADDRESS, MAPPED-ADDRESS (from old servers),
//!   OTHER-ADDRESS and RESPONSE-ORIGIN (RFC 5780, plain encoding),
//!   CHANGE-REQUEST, RESPONSE-PORT, PADDING, ERROR-CODE; UNKNOWN-ATTRIBUTES,
//!   SOFTWARE, the RFC 3489 SOURCE-ADDRESS and CHANGED-ADDRESS, and
//!   MESSAGE-INTEGRITY(-SHA256) are known and skipped (natrix does not
//!   authenticate STUN; attributes after MESSAGE-INTEGRITY other than
//!   FINGERPRINT are ignored, as RFC 8489 §14.5 says);
//! - FINGERPRINT is verified when present and must be the last attribute;
//! - unknown comprehension-optional attributes (type `0x8000` and up) are
//!   skipped; unknown comprehension-required ones make the message
//!   [`DecodeError::UnknownRequired`] (a request is answered 420, a response
//!   is discarded, RFC 8489 §6.3);
//! - of repeated attributes the first valid one counts.
//!
//! Addresses are reported as they are on the wire: an IPv4-mapped IPv6
//! address stays IPv6 here; comparing code canonicalises (C9).

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The magic cookie (RFC 8489 §5).
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// The STUN header length.
pub const HEADER_LEN: usize = 20;
/// The largest STUN message natrix decodes or builds.
pub const MAX_MESSAGE: usize = 548;
/// FINGERPRINT is the CRC-32 of the message before it XORed with this
/// value (RFC 8489 §14.7).
pub const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// Message types (RFC 8489 §5: method Binding, four classes).
pub mod msg_type {
    /// Binding request.
    pub const BINDING_REQUEST: u16 = 0x0001;
    /// Binding indication (natrix ignores it).
    pub const BINDING_INDICATION: u16 = 0x0011;
    /// Binding success response.
    pub const BINDING_SUCCESS: u16 = 0x0101;
    /// Binding error response.
    pub const BINDING_ERROR: u16 = 0x0111;
}

/// Attribute types natrix reads, writes or knows to skip.
pub mod attr {
    /// MAPPED-ADDRESS (RFC 8489 §14.1).
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// CHANGE-REQUEST (RFC 5780 §7.2).
    pub const CHANGE_REQUEST: u16 = 0x0003;
    /// SOURCE-ADDRESS (RFC 3489, sent by old servers; skipped).
    pub const SOURCE_ADDRESS: u16 = 0x0004;
    /// CHANGED-ADDRESS (RFC 3489, sent by old servers; skipped).
    pub const CHANGED_ADDRESS: u16 = 0x0005;
    /// MESSAGE-INTEGRITY (RFC 8489 §14.5; skipped, not verified).
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// ERROR-CODE (RFC 8489 §14.8).
    pub const ERROR_CODE: u16 = 0x0009;
    /// UNKNOWN-ATTRIBUTES (RFC 8489 §14.9).
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    /// MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6; skipped, not verified).
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    /// XOR-MAPPED-ADDRESS (RFC 8489 §14.2).
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// PADDING (RFC 5780 §7.6).
    pub const PADDING: u16 = 0x0026;
    /// RESPONSE-PORT (RFC 5780 §7.5).
    pub const RESPONSE_PORT: u16 = 0x0027;
    /// SOFTWARE (RFC 8489 §14.14; skipped).
    pub const SOFTWARE: u16 = 0x8022;
    /// FINGERPRINT (RFC 8489 §14.7).
    pub const FINGERPRINT: u16 = 0x8028;
    /// RESPONSE-ORIGIN (RFC 5780 §7.3).
    pub const RESPONSE_ORIGIN: u16 = 0x802B;
    /// OTHER-ADDRESS (RFC 5780 §7.4).
    pub const OTHER_ADDRESS: u16 = 0x802C;
}

/// The CHANGE-REQUEST flag "change IP".
const CHANGE_IP: u32 = 0x4;
/// The CHANGE-REQUEST flag "change port".
const CHANGE_PORT: u32 = 0x2;
/// The encoded size of an address attribute (header included) for `addr`.
#[must_use]
pub const fn address_attribute_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 4 + 8,
        SocketAddr::V6(_) => 4 + 20,
    }
}

/// A transaction id (96 bits).
pub type TransactionId = [u8; 12];

/// CHANGE-REQUEST (RFC 5780 §7.2): answer from the other IP and/or port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ChangeRequest {
    /// Answer from the alternate IP address.
    pub change_ip: bool,
    /// Answer from the alternate port.
    pub change_port: bool,
}

/// A Binding request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BindingRequest {
    /// Its transaction id.
    pub transaction: TransactionId,
    /// CHANGE-REQUEST, when present.
    pub change: ChangeRequest,
    /// RESPONSE-PORT (RFC 5780 §7.5), when present.
    pub response_port: Option<u16>,
    /// The length of a PADDING attribute's value (RFC 5780 §7.6), 0 without.
    pub padding: u16,
    /// Whether it carries (a valid) FINGERPRINT.
    pub fingerprint: bool,
}

/// A Binding success response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BindingResponse {
    /// Its transaction id.
    pub transaction: TransactionId,
    /// XOR-MAPPED-ADDRESS (or, from old servers, MAPPED-ADDRESS).
    pub mapped: SocketAddr,
    /// OTHER-ADDRESS (RFC 5780 §7.4): the server's alternate IP and port.
    pub other_address: Option<SocketAddr>,
    /// RESPONSE-ORIGIN (RFC 5780 §7.3): where the answer was sent from.
    pub response_origin: Option<SocketAddr>,
}

/// A decoded STUN message natrix cares about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    /// A Binding request.
    Request(BindingRequest),
    /// A Binding success response.
    Success(BindingResponse),
    /// A Binding error response.
    Error {
        /// Its transaction id.
        transaction: TransactionId,
        /// The error code (300–699).
        code: u16,
    },
}

/// Why a datagram is not a usable STUN message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not STUN by the header rule (top two bits, magic cookie, length).
    #[error("not a STUN message")]
    NotStun,
    /// Shorter than its header or its declared length.
    #[error("truncated: {len} bytes, {need} needed")]
    Truncated {
        /// Bytes present.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The message or an attribute length is inconsistent, the message is
    /// longer than [`MAX_MESSAGE`], or an error response lacks a valid
    /// ERROR-CODE.
    #[error("bad length")]
    BadLength,
    /// FINGERPRINT does not match.
    #[error("wrong FINGERPRINT")]
    BadFingerprint,
    /// An attribute follows FINGERPRINT.
    #[error("attribute after FINGERPRINT")]
    AfterFingerprint,
    /// A request carries comprehension-required attributes natrix does not
    /// know (a server answers 420 with UNKNOWN-ATTRIBUTES listing them).
    /// A response carrying them is reported the same way and is to be
    /// discarded (RFC 8489 §6.3.3).
    #[error("unknown comprehension-required attributes")]
    UnknownRequired {
        /// The request's transaction id.
        transaction: TransactionId,
        /// The first unknown attribute types (up to four).
        attributes: [u16; 4],
        /// How many of `attributes` are set.
        count: u8,
    },
    /// A request with a malformed known attribute (a server answers 400).
    #[error("malformed request")]
    BadRequest {
        /// The request's transaction id.
        transaction: TransactionId,
    },
    /// A method other than Binding, or an indication.
    #[error("not a Binding request or response (type {0:#06x})")]
    NotBinding(u16),
    /// A success response without a (valid) mapped address.
    #[error("response without a mapped address")]
    NoMappedAddress,
}

/// The output buffer is too small.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("output buffer too small: {need} bytes needed")]
pub struct EncodeError {
    /// Bytes needed.
    pub need: usize,
}

/// Decodes a datagram. Never panics, never allocates.
///
/// # Errors
/// Anything but a well-formed Binding request or response.
pub fn decode(datagram: &[u8]) -> Result<Message, DecodeError> {
    let msg = check_header(datagram)?;
    let ty = be16(msg, 0);
    let class = match ty {
        msg_type::BINDING_REQUEST => Class::Request,
        msg_type::BINDING_SUCCESS => Class::Success,
        msg_type::BINDING_ERROR => Class::Error,
        other => return Err(DecodeError::NotBinding(other)),
    };
    let mut transaction = [0u8; 12];
    if let Some(t) = msg.get(8..HEADER_LEN) {
        transaction.copy_from_slice(t);
    }
    let a = walk(msg, &transaction)?;
    if a.unknown_count > 0 {
        return Err(DecodeError::UnknownRequired {
            transaction,
            attributes: a.unknown,
            count: a.unknown_count,
        });
    }
    match class {
        Class::Request => {
            if a.malformed {
                return Err(DecodeError::BadRequest { transaction });
            }
            Ok(Message::Request(BindingRequest {
                transaction,
                change: a.change.unwrap_or_default(),
                response_port: a.response_port,
                padding: a.padding.unwrap_or(0),
                fingerprint: a.fingerprint,
            }))
        }
        Class::Success => {
            let mapped = a
                .xor_mapped
                .or(a.mapped)
                .ok_or(DecodeError::NoMappedAddress)?;
            Ok(Message::Success(BindingResponse {
                transaction,
                mapped,
                other_address: a.other_address,
                response_origin: a.response_origin,
            }))
        }
        Class::Error => {
            let code = a.error_code.ok_or(DecodeError::BadLength)?;
            Ok(Message::Error { transaction, code })
        }
    }
}

/// Whether `datagram` starts like a STUN request (header rule and class
/// request, any method): what a server may answer with an error.
#[must_use]
pub fn is_request_header(datagram: &[u8]) -> bool {
    check_header(datagram).is_ok_and(|m| be16(m, 0) & 0x0110 == 0)
}

/// Whether `datagram` is a STUN message whose last attribute is a valid
/// FINGERPRINT (structure only otherwise): lets a server that answers a
/// request with an error add FINGERPRINT exactly when the request had one.
#[must_use]
pub fn has_fingerprint(datagram: &[u8]) -> bool {
    let Ok(msg) = check_header(datagram) else {
        return false;
    };
    let end = msg.len();
    let mut at = HEADER_LEN;
    while end - at >= 4 {
        let ty = be16(msg, at);
        let next = at + 4 + usize::from(be16(msg, at + 2)).div_ceil(4) * 4;
        if next > end {
            return false;
        }
        if next == end {
            return ty == attr::FINGERPRINT
                && msg.get(at + 4..end) == Some(&fingerprint_value(msg, at).to_be_bytes()[..]);
        }
        at = next;
    }
    false
}

#[derive(Clone, Copy)]
enum Class {
    Request,
    Success,
    Error,
}

/// What the attribute walk found.
#[derive(Default)]
struct Attributes {
    change: Option<ChangeRequest>,
    response_port: Option<u16>,
    padding: Option<u16>,
    fingerprint: bool,
    xor_mapped: Option<SocketAddr>,
    mapped: Option<SocketAddr>,
    other_address: Option<SocketAddr>,
    response_origin: Option<SocketAddr>,
    error_code: Option<u16>,
    unknown: [u16; 4],
    unknown_count: u8,
    /// A known request attribute is malformed.
    malformed: bool,
}

/// Big-endian u16 at `at`, 0 beyond the end (callers check lengths first).
fn be16(b: &[u8], at: usize) -> u16 {
    match b.get(at..at + 2) {
        Some(&[x, y]) => u16::from_be_bytes([x, y]),
        _ => 0,
    }
}

/// The header rule; returns the message (the whole datagram).
fn check_header(d: &[u8]) -> Result<&[u8], DecodeError> {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let len = d.len();
    let prefix_ok = d.first().is_none_or(|b| b & 0xC0 == 0)
        && d.iter().skip(4).zip(cookie).all(|(a, b)| *a == b)
        && (len < 4 || be16(d, 2) % 4 == 0);
    if !prefix_ok {
        return Err(DecodeError::NotStun);
    }
    if len < HEADER_LEN {
        return Err(DecodeError::Truncated {
            len,
            need: HEADER_LEN,
        });
    }
    let need = HEADER_LEN + usize::from(be16(d, 2));
    if need > MAX_MESSAGE {
        return Err(DecodeError::BadLength);
    }
    if len < need {
        return Err(DecodeError::Truncated { len, need });
    }
    if len > need {
        return Err(DecodeError::BadLength);
    }
    Ok(d)
}

/// The FINGERPRINT value for a message whose FINGERPRINT attribute starts at
/// `at`: the CRC-32 of everything before it, with the header's length field
/// covering the FINGERPRINT attribute, XORed with [`FINGERPRINT_XOR`].
fn fingerprint_value(msg: &[u8], at: usize) -> u32 {
    let mut h = crc32fast::Hasher::new();
    let len = u16::try_from(at + 8 - HEADER_LEN).unwrap_or(u16::MAX);
    let [l0, l1] = len.to_be_bytes();
    h.update(&[
        msg.first().copied().unwrap_or(0),
        msg.get(1).copied().unwrap_or(0),
        l0,
        l1,
    ]);
    h.update(msg.get(4..at).unwrap_or(&[]));
    h.finalize() ^ FINGERPRINT_XOR
}

/// The 16 bytes an IPv6 address is XORed with: cookie and transaction id.
fn xor_key(transaction: &TransactionId) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    key[4..].copy_from_slice(transaction);
    key
}

/// Address bytes XORed with `key` (from [`xor_key`]) when given.
fn xored<const N: usize>(mut b: [u8; N], key: Option<[u8; 16]>) -> [u8; N] {
    if let Some(k) = key {
        b.iter_mut().zip(k).for_each(|(b, k)| *b ^= k);
    }
    b
}

/// An address attribute's value (RFC 8489 §14.1/§14.2); XORed when
/// `xor` carries the transaction id. `None` when malformed.
fn parse_address(v: &[u8], xor: Option<&TransactionId>) -> Option<SocketAddr> {
    let family = *v.get(1)?;
    let mut port = be16(v, 2);
    let key = xor.map(xor_key);
    if key.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    match (family, v.len()) {
        (0x01, 8) => {
            let ip: [u8; 4] = v.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::new(Ipv4Addr::from(xored(ip, key)).into(), port))
        }
        (0x02, 20) => {
            let ip: [u8; 16] = v.get(4..20)?.try_into().ok()?;
            Some(SocketAddr::new(Ipv6Addr::from(xored(ip, key)).into(), port))
        }
        _ => None,
    }
}

/// ERROR-CODE's value (RFC 8489 §14.8): class 3–6, number 0–99.
fn parse_error_code(v: &[u8]) -> Option<u16> {
    let class = u16::from(*v.get(2)? & 0x07);
    let number = u16::from(*v.get(3)?);
    ((3..=6).contains(&class) && number < 100).then_some(class * 100 + number)
}

/// Walks the attributes of a message that passed [`check_header`].
fn walk(msg: &[u8], transaction: &TransactionId) -> Result<Attributes, DecodeError> {
    let mut a = Attributes::default();
    let end = msg.len();
    let mut at = HEADER_LEN;
    // After MESSAGE-INTEGRITY only FINGERPRINT counts (RFC 8489 §14.5).
    let mut after_integrity = false;
    while at < end {
        if a.fingerprint {
            return Err(DecodeError::AfterFingerprint);
        }
        if end - at < 4 {
            return Err(DecodeError::BadLength);
        }
        let ty = be16(msg, at);
        let len = usize::from(be16(msg, at + 2));
        let start = at + 4;
        let next = start + len.div_ceil(4) * 4;
        if next > end {
            return Err(DecodeError::BadLength);
        }
        let v = msg.get(start..start + len).ok_or(DecodeError::BadLength)?;
        if ty == attr::FINGERPRINT {
            if v != fingerprint_value(msg, at).to_be_bytes() {
                return Err(DecodeError::BadFingerprint);
            }
            a.fingerprint = true;
        } else if !after_integrity {
            attribute(&mut a, ty, v, transaction);
            after_integrity = ty == attr::MESSAGE_INTEGRITY || ty == attr::MESSAGE_INTEGRITY_SHA256;
        }
        at = next;
    }
    Ok(a)
}

/// Records one attribute (not FINGERPRINT) in `a`.
fn attribute(a: &mut Attributes, ty: u16, v: &[u8], transaction: &TransactionId) {
    match ty {
        attr::CHANGE_REQUEST => match v {
            &[a0, a1, a2, a3] => {
                let flags = u32::from_be_bytes([a0, a1, a2, a3]);
                a.change.get_or_insert(ChangeRequest {
                    change_ip: flags & CHANGE_IP != 0,
                    change_port: flags & CHANGE_PORT != 0,
                });
            }
            _ => a.malformed = true,
        },
        attr::RESPONSE_PORT => match v {
            &[p0, p1, _, _] => {
                a.response_port.get_or_insert(u16::from_be_bytes([p0, p1]));
            }
            _ => a.malformed = true,
        },
        attr::PADDING => {
            // Lengths are bounded by MAX_MESSAGE, so this never saturates.
            a.padding
                .get_or_insert(u16::try_from(v.len()).unwrap_or(u16::MAX));
        }
        attr::XOR_MAPPED_ADDRESS => {
            a.xor_mapped = a.xor_mapped.or_else(|| parse_address(v, Some(transaction)));
        }
        attr::MAPPED_ADDRESS => {
            a.mapped = a.mapped.or_else(|| parse_address(v, None));
        }
        attr::OTHER_ADDRESS => {
            a.other_address = a.other_address.or_else(|| parse_address(v, None));
        }
        attr::RESPONSE_ORIGIN => {
            a.response_origin = a.response_origin.or_else(|| parse_address(v, None));
        }
        attr::ERROR_CODE => {
            a.error_code = a.error_code.or_else(|| parse_error_code(v));
        }
        attr::SOURCE_ADDRESS
        | attr::CHANGED_ADDRESS
        | attr::MESSAGE_INTEGRITY
        | attr::MESSAGE_INTEGRITY_SHA256
        | attr::UNKNOWN_ATTRIBUTES => {}
        unknown if unknown < 0x8000 => {
            let n = usize::from(a.unknown_count);
            let seen = a.unknown.get(..n).is_some_and(|s| s.contains(&unknown));
            if let (false, Some(slot)) = (seen, a.unknown.get_mut(n)) {
                *slot = unknown;
                a.unknown_count += 1;
            }
        }
        // Comprehension-optional (SOFTWARE and the rest): skipped.
        _ => {}
    }
}

/// Writes a message into the caller's slice; sizes are checked up front.
struct Writer<'a> {
    out: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    /// Starts a message of type `ty` whose final size is `need` bytes.
    fn begin(
        out: &'a mut [u8],
        need: usize,
        ty: u16,
        transaction: &TransactionId,
    ) -> Result<Self, EncodeError> {
        if need > out.len() || need > MAX_MESSAGE {
            return Err(EncodeError { need });
        }
        let mut w = Writer { out, pos: 0 };
        w.put(&ty.to_be_bytes());
        w.put(&[0, 0]);
        w.put(&MAGIC_COOKIE.to_be_bytes());
        w.put(transaction);
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) {
        if let Some(dst) = self.out.get_mut(self.pos..self.pos + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
        self.pos += bytes.len();
    }

    /// An attribute: header, value, zero padding to four bytes.
    fn attribute(&mut self, ty: u16, value: &[u8]) {
        self.attribute_with(ty, value.len(), |w| w.put(value));
    }

    /// An attribute of `len` value bytes written by `f`, then zero padding.
    fn attribute_with(&mut self, ty: u16, len: usize, f: impl FnOnce(&mut Self)) {
        self.put(&ty.to_be_bytes());
        self.put(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
        f(self);
        self.zeros(len.div_ceil(4) * 4 - len);
    }

    fn zeros(&mut self, n: usize) {
        for _ in 0..n {
            self.put(&[0]);
        }
    }

    /// An address attribute, XORed with the cookie and `xor` when given.
    fn address(&mut self, ty: u16, addr: &SocketAddr, xor: Option<&TransactionId>) {
        let key = xor.map(xor_key);
        let mut port = addr.port();
        if key.is_some() {
            port ^= (MAGIC_COOKIE >> 16) as u16;
        }
        match addr.ip() {
            IpAddr::V4(ip) => self.address_value(ty, 0x01, port, ip.octets(), key),
            IpAddr::V6(ip) => self.address_value(ty, 0x02, port, ip.octets(), key),
        }
    }

    /// An address attribute's value: `family`, `port` and the address
    /// bytes, the bytes XORed with `key` when given.
    fn address_value<const N: usize>(
        &mut self,
        ty: u16,
        family: u8,
        port: u16,
        b: [u8; N],
        key: Option<[u8; 16]>,
    ) {
        let b = xored(b, key);
        self.attribute_with(ty, 4 + N, |w| {
            w.put(&[0, family]);
            w.put(&port.to_be_bytes());
            w.put(&b);
        });
    }

    /// Sets the length field, adds FINGERPRINT when asked; returns the size.
    fn finish(mut self, fingerprint: bool) -> usize {
        let body = self.pos - HEADER_LEN + if fingerprint { 8 } else { 0 };
        let len = u16::try_from(body).unwrap_or(u16::MAX).to_be_bytes();
        if let Some(dst) = self.out.get_mut(2..4) {
            dst.copy_from_slice(&len);
        }
        if fingerprint {
            let value = fingerprint_value(self.out, self.pos);
            self.attribute(attr::FINGERPRINT, &value.to_be_bytes());
        }
        self.pos
    }
}

/// The size of an attribute with a `len`-byte value, header and padding
/// included.
const fn attribute_len(len: usize) -> usize {
    4 + len.div_ceil(4) * 4
}

/// Writes a Binding request (with CHANGE-REQUEST when a flag is set,
/// RESPONSE-PORT, PADDING of `req.padding` bytes, and FINGERPRINT when
/// `req.fingerprint`) into `out`; returns its length.
///
/// # Errors
/// `out` is too small, or the request would be longer than [`MAX_MESSAGE`]
/// (too much padding; then `need` exceeds [`MAX_MESSAGE`]).
pub fn encode_request(req: &BindingRequest, out: &mut [u8]) -> Result<usize, EncodeError> {
    let change = req.change.change_ip || req.change.change_port;
    let padding = usize::from(req.padding);
    let need = HEADER_LEN
        + if change { attribute_len(4) } else { 0 }
        + if req.response_port.is_some() {
            attribute_len(4)
        } else {
            0
        }
        + if padding > 0 {
            attribute_len(padding)
        } else {
            0
        }
        + if req.fingerprint { attribute_len(4) } else { 0 };
    let mut w = Writer::begin(out, need, msg_type::BINDING_REQUEST, &req.transaction)?;
    if change {
        let flags = if req.change.change_ip { CHANGE_IP } else { 0 }
            | if req.change.change_port {
                CHANGE_PORT
            } else {
                0
            };
        w.attribute(attr::CHANGE_REQUEST, &flags.to_be_bytes());
    }
    if let Some(port) = req.response_port {
        let [p0, p1] = port.to_be_bytes();
        w.attribute(attr::RESPONSE_PORT, &[p0, p1, 0, 0]);
    }
    if padding > 0 {
        w.attribute_with(attr::PADDING, padding, |w| w.zeros(padding));
    }
    Ok(w.finish(req.fingerprint))
}

/// Writes a Binding success response (XOR-MAPPED-ADDRESS, then OTHER-ADDRESS
/// and RESPONSE-ORIGIN when set, then FINGERPRINT when `fingerprint`) into
/// `out`; returns its length.
///
/// # Errors
/// `out` is too small.
pub fn encode_success(
    resp: &BindingResponse,
    fingerprint: bool,
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    encode_success_padded(resp, 0, fingerprint, out)
}

/// The size of the success response [`encode_success_padded`] writes.
#[must_use]
pub fn success_len(resp: &BindingResponse, padding: u16, fingerprint: bool) -> usize {
    let padding = usize::from(padding);
    HEADER_LEN
        + address_attribute_len(&resp.mapped)
        + resp.other_address.as_ref().map_or(0, address_attribute_len)
        + resp
            .response_origin
            .as_ref()
            .map_or(0, address_attribute_len)
        + if padding > 0 {
            attribute_len(padding)
        } else {
            0
        }
        + if fingerprint { attribute_len(4) } else { 0 }
}

/// As [`encode_success`], with a PADDING attribute of `padding` bytes
/// (none for 0) before FINGERPRINT: a server answers a padded request
/// with a padded response (RFC 5780 §7.6).
///
/// # Errors
/// `out` is too small, or the response would be longer than
/// [`MAX_MESSAGE`] (then `need` exceeds [`MAX_MESSAGE`]).
pub fn encode_success_padded(
    resp: &BindingResponse,
    padding: u16,
    fingerprint: bool,
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    let need = success_len(resp, padding, fingerprint);
    let mut w = Writer::begin(out, need, msg_type::BINDING_SUCCESS, &resp.transaction)?;
    w.address(
        attr::XOR_MAPPED_ADDRESS,
        &resp.mapped,
        Some(&resp.transaction),
    );
    if let Some(other) = &resp.other_address {
        w.address(attr::OTHER_ADDRESS, other, None);
    }
    if let Some(origin) = &resp.response_origin {
        w.address(attr::RESPONSE_ORIGIN, origin, None);
    }
    let padding = usize::from(padding);
    if padding > 0 {
        w.attribute_with(attr::PADDING, padding, |w| w.zeros(padding));
    }
    Ok(w.finish(fingerprint))
}

/// The reason phrase natrix writes for an error code.
fn reason(code: u16) -> &'static str {
    match code {
        300 => "Try Alternate",
        400 => "Bad Request",
        401 => "Unauthenticated",
        420 => "Unknown Attribute",
        438 => "Stale Nonce",
        500 => "Server Error",
        _ => "",
    }
}

/// The size of the error response [`encode_error`] writes (without
/// FINGERPRINT).
#[must_use]
pub fn error_len(code: u16, unknown: &[u16]) -> usize {
    let code = if (300..=699).contains(&code) {
        code
    } else {
        500
    };
    HEADER_LEN
        + attribute_len(4 + reason(code).len())
        + if unknown.is_empty() {
            0
        } else {
            attribute_len(unknown.len().saturating_mul(2))
        }
}

/// Writes a Binding error response with ERROR-CODE `code` (and
/// UNKNOWN-ATTRIBUTES listing `unknown` for 420) into `out`; returns its
/// length. A `code` outside 300–699 is written as 500.
///
/// # Errors
/// `out` is too small, or the response would be longer than
/// [`MAX_MESSAGE`] (a very long `unknown`).
pub fn encode_error(
    transaction: &TransactionId,
    code: u16,
    unknown: &[u16],
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    encode_error_fingerprinted(transaction, code, unknown, false, out)
}

/// As [`encode_error`], with FINGERPRINT when `fingerprint` (a server adds
/// it when the request carried one).
///
/// # Errors
/// As [`encode_error`].
pub fn encode_error_fingerprinted(
    transaction: &TransactionId,
    code: u16,
    unknown: &[u16],
    fingerprint: bool,
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    let code = if (300..=699).contains(&code) {
        code
    } else {
        500
    };
    let need = error_len(code, unknown) + if fingerprint { attribute_len(4) } else { 0 };
    let mut w = Writer::begin(out, need, msg_type::BINDING_ERROR, transaction)?;
    let phrase = reason(code);
    w.attribute_with(attr::ERROR_CODE, 4 + phrase.len(), |w| {
        // Both fit a byte: the class is 3..=6, the number below 100.
        let class = u8::try_from(code / 100).unwrap_or(5);
        let number = u8::try_from(code % 100).unwrap_or(0);
        w.put(&[0, 0, class, number]);
        w.put(phrase.as_bytes());
    });
    if !unknown.is_empty() {
        w.attribute_with(attr::UNKNOWN_ATTRIBUTES, unknown.len() * 2, |w| {
            for t in unknown {
                w.put(&t.to_be_bytes());
            }
        });
    }
    Ok(w.finish(fingerprint))
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::{SocketAddrV4, SocketAddrV6};
    use proptest::prelude::*;
    use std::vec;
    use std::vec::Vec;

    const TXID: TransactionId = [
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ];

    /// RFC 5769 §2.1: sample request (ICE attributes, MESSAGE-INTEGRITY,
    /// FINGERPRINT).
    const RFC5769_REQUEST: [u8; 108] = [
        0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74,
        0x65, 0x73, 0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e,
        0x00, 0x01, 0xff, 0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36,
        0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20,
        0x20, 0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e,
        0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5,
        0x7a, 0x3b, 0xcf,
    ];

    /// RFC 5769 §2.2: sample IPv4 response.
    const RFC5769_IPV4: [u8; 80] = [
        0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1,
        0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3,
        0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00,
        0x04, 0xc0, 0x7d, 0x4c, 0x96,
    ];

    /// RFC 5769 §2.3: sample IPv6 response.
    const RFC5769_IPV6: [u8; 92] = [
        0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01,
        0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
        0x00, 0x08, 0x00, 0x14, 0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1, 0x17, 0x84, 0xc9,
        0x7c, 0x82, 0x92, 0xc2, 0x75, 0xbf, 0xe3, 0xed, 0x41, 0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb,
        0x0b, 0x4c,
    ];

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("literal")
    }

    fn enc_req(req: &BindingRequest) -> Vec<u8> {
        let mut buf = [0u8; MAX_MESSAGE];
        let n = encode_request(req, &mut buf).expect("fits");
        buf[..n].to_vec()
    }

    /// A minimal request with a FINGERPRINT.
    fn enc_fp_req() -> Vec<u8> {
        enc_req(&BindingRequest {
            fingerprint: true,
            ..BindingRequest::default()
        })
    }

    /// A success response to `TXID` with `mapped` only.
    fn resp(mapped: &str) -> BindingResponse {
        BindingResponse {
            transaction: TXID,
            mapped: sa(mapped),
            other_address: None,
            response_origin: None,
        }
    }

    /// An error response to `TXID` as `decode` returns it.
    fn decoded_error(code: u16) -> Result<Message, DecodeError> {
        Ok(Message::Error {
            transaction: TXID,
            code,
        })
    }

    fn enc_ok(resp: &BindingResponse, fp: bool) -> Vec<u8> {
        let mut buf = [0u8; MAX_MESSAGE];
        let n = encode_success(resp, fp, &mut buf).expect("fits");
        buf[..n].to_vec()
    }

    /// A message of type `ty` with the given attributes, optionally
    /// fingerprinted: a way to build what the encoders never write.
    fn raw(ty: u16, attrs: &[(u16, &[u8])], fp: bool) -> Vec<u8> {
        let mut buf = [0u8; MAX_MESSAGE];
        let need = HEADER_LEN
            + attrs
                .iter()
                .map(|(_, v)| attribute_len(v.len()))
                .sum::<usize>()
            + if fp { 8 } else { 0 };
        let mut w = Writer::begin(&mut buf, need, ty, &TXID).expect("fits");
        for (t, v) in attrs {
            w.attribute(*t, v);
        }
        let n = w.finish(fp);
        buf[..n].to_vec()
    }

    #[test]
    fn rfc5769_ipv4_response() {
        assert_eq!(
            decode(&RFC5769_IPV4),
            Ok(Message::Success(resp("192.0.2.1:32853")))
        );
    }

    #[test]
    fn rfc5769_ipv6_response() {
        assert_eq!(
            decode(&RFC5769_IPV6),
            Ok(Message::Success(resp(
                "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            )))
        );
    }

    #[test]
    fn rfc5769_request_fingerprint_checks_and_ice_attributes_are_unknown() {
        // PRIORITY (0x0024) and USERNAME (0x0006) are comprehension-required
        // and unknown to natrix; the FINGERPRINT is valid.
        assert_eq!(
            decode(&RFC5769_REQUEST),
            Err(DecodeError::UnknownRequired {
                transaction: TXID,
                attributes: [0x0024, 0x0006, 0, 0],
                count: 2,
            })
        );
    }

    #[test]
    fn rfc5769_fingerprints_are_verified() {
        for v in [&RFC5769_REQUEST[..], &RFC5769_IPV4[..], &RFC5769_IPV6[..]] {
            let at = v.len() - 8;
            let want = u32::from_be_bytes(v[at + 4..].try_into().expect("4 bytes"));
            assert_eq!(fingerprint_value(v, at), want);
            // (A flip in FINGERPRINT's own type or length turns it into
            // another attribute; that is not what this checks.)
            for i in (0..v.len()).filter(|i| !(at..at + 4).contains(i)) {
                let mut bad = v.to_vec();
                bad[i] ^= 0x01;
                assert_ne!(decode(&bad), decode(v), "flip at {i}");
                if i >= 4 {
                    // Every flip past the type and length is caught by the
                    // header rule, the fingerprint or the attribute structure.
                    assert!(decode(&bad).is_err(), "flip at {i}");
                }
            }
        }
    }

    #[test]
    fn request_with_all_attributes_has_the_expected_bytes() {
        let req = BindingRequest {
            transaction: TXID,
            change: ChangeRequest {
                change_ip: true,
                change_port: true,
            },
            response_port: Some(0x1234),
            padding: 3,
            fingerprint: true,
        };
        let bytes = enc_req(&req);
        assert_eq!(bytes.len(), 20 + 8 + 8 + 8 + 8);
        assert_eq!(&bytes[..4], &[0x00, 0x01, 0x00, 32]);
        assert_eq!(&bytes[20..28], &[0x00, 0x03, 0x00, 0x04, 0, 0, 0, 0x06]);
        assert_eq!(&bytes[28..36], &[0x00, 0x27, 0x00, 0x04, 0x12, 0x34, 0, 0]);
        assert_eq!(&bytes[36..44], &[0x00, 0x26, 0x00, 0x03, 0, 0, 0, 0]);
        assert_eq!(&bytes[44..48], &[0x80, 0x28, 0x00, 0x04]);
        assert_eq!(decode(&bytes), Ok(Message::Request(req)));
    }

    #[test]
    fn minimal_request_is_twenty_bytes() {
        let req = BindingRequest {
            transaction: TXID,
            ..BindingRequest::default()
        };
        let bytes = enc_req(&req);
        assert_eq!(bytes.len(), HEADER_LEN);
        assert_eq!(decode(&bytes), Ok(Message::Request(req)));
    }

    #[test]
    fn mapped_address_from_old_servers_is_accepted_and_xor_wins() {
        let plain = [0, 1, 0x12, 0x34, 10, 0, 0, 1];
        let m = raw(
            msg_type::BINDING_SUCCESS,
            &[(attr::MAPPED_ADDRESS, &plain)],
            false,
        );
        let Ok(Message::Success(r)) = decode(&m) else {
            panic!("decodes")
        };
        assert_eq!(r.mapped, sa("10.0.0.1:4660"));
        // With both, XOR-MAPPED-ADDRESS is the one reported.
        let resp = resp("192.0.2.7:9");
        let mut both = enc_ok(&resp, false);
        both.extend_from_slice(&[0x00, 0x01, 0x00, 0x08]);
        both.extend_from_slice(&plain);
        both[3] += 12;
        assert_eq!(decode(&both), Ok(Message::Success(resp)));
    }

    #[test]
    fn rfc5780_attributes_round_trip() {
        let resp = BindingResponse {
            transaction: TXID,
            mapped: sa("[2001:db8::1]:40000"),
            other_address: Some(sa("[2001:db8::2]:3479")),
            response_origin: Some(sa("[2001:db8::3]:3478")),
        };
        let bytes = enc_ok(&resp, true);
        assert_eq!(bytes.len(), 20 + 3 * 24 + 8);
        assert_eq!(decode(&bytes), Ok(Message::Success(resp)));
        // OTHER-ADDRESS and RESPONSE-ORIGIN are not XORed.
        assert_eq!(&bytes[44..48], &[0x80, 0x2C, 0x00, 20]);
        assert_eq!(&bytes[48..52], &[0, 2, 0x0d, 0x97]);
    }

    #[test]
    fn padded_success_round_trips_and_has_its_size() {
        let resp = resp("192.0.2.7:9");
        let mut buf = [0u8; MAX_MESSAGE];
        let n = encode_success_padded(&resp, 101, true, &mut buf).expect("fits");
        assert_eq!(n, success_len(&resp, 101, true));
        assert_eq!(n, 20 + 12 + 4 + 104 + 8);
        assert_eq!(decode(&buf[..n]), Ok(Message::Success(resp)));
    }

    #[test]
    fn error_response_round_trips() {
        let mut buf = [0u8; MAX_MESSAGE];
        let n = encode_error(&TXID, 420, &[0x0003, 0x7777, 0x0024], &mut buf).expect("fits");
        assert_eq!(n, error_len(420, &[0x0003, 0x7777, 0x0024]));
        assert_eq!(decode(&buf[..n]), decoded_error(420));
        // ERROR-CODE: class 4, number 20, "Unknown Attribute" (17 bytes).
        assert_eq!(&buf[20..28], &[0x00, 0x09, 0x00, 21, 0, 0, 4, 20]);
        assert_eq!(&buf[28..45], b"Unknown Attribute");
        // UNKNOWN-ATTRIBUTES: three types, padded to eight bytes.
        assert_eq!(&buf[48..52], &[0x00, 0x0A, 0x00, 6]);
        assert_eq!(&buf[52..60], &[0x00, 0x03, 0x77, 0x77, 0x00, 0x24, 0, 0]);
        assert_eq!(n, 60);
        let n = encode_error_fingerprinted(&TXID, 400, &[], true, &mut buf).expect("fits");
        assert_eq!(decode(&buf[..n]), decoded_error(400));
        // An invalid code is written as 500.
        let n = encode_error(&TXID, 1234, &[], &mut buf).expect("fits");
        assert_eq!(decode(&buf[..n]), decoded_error(500));
    }

    #[test]
    fn encoders_report_the_size_they_need() {
        let req = BindingRequest {
            transaction: TXID,
            fingerprint: true,
            ..BindingRequest::default()
        };
        let mut small = [0u8; 27];
        assert_eq!(
            encode_request(&req, &mut small),
            Err(EncodeError { need: 28 })
        );
        let big = BindingRequest {
            padding: 600,
            ..req
        };
        let mut buf = [0u8; 2048];
        assert!(encode_request(&big, &mut buf).is_err_and(|e| e.need > MAX_MESSAGE));
        let resp = resp("[::1]:1");
        assert_eq!(
            encode_success(&resp, false, &mut small),
            Err(EncodeError { need: 44 })
        );
        assert_eq!(
            encode_error(&TXID, 400, &[], &mut small),
            Err(EncodeError { need: 40 })
        );
        let many = [0x7000u16; 300];
        assert!(encode_error(&TXID, 420, &many, &mut buf).is_err());
    }

    // ---- every DecodeError variant ----

    #[test]
    fn not_stun() {
        let mut m = enc_req(&BindingRequest::default());
        m[0] = 0x40; // top bits
        assert_eq!(decode(&m), Err(DecodeError::NotStun));
        let mut m = enc_req(&BindingRequest::default());
        m[5] ^= 1; // cookie
        assert_eq!(decode(&m), Err(DecodeError::NotStun));
        let mut m = enc_req(&BindingRequest::default());
        m.extend_from_slice(&[0, 0]);
        m[3] = 2; // length not a multiple of four
        assert_eq!(decode(&m), Err(DecodeError::NotStun));
        // A natrix keep-alive or session packet is not STUN.
        assert_eq!(decode(&[0x80, 0, 0, 0]), Err(DecodeError::NotStun));
        assert_eq!(decode(&[1, 0, 0, 0, 9]), Err(DecodeError::NotStun));
    }

    #[test]
    fn truncated() {
        assert_eq!(
            decode(&[]),
            Err(DecodeError::Truncated {
                len: 0,
                need: HEADER_LEN
            })
        );
        let m = enc_fp_req();
        assert_eq!(
            decode(&m[..24]),
            Err(DecodeError::Truncated { len: 24, need: 28 })
        );
    }

    #[test]
    fn bad_length() {
        // Bytes after the declared length.
        let mut m = enc_req(&BindingRequest::default());
        m.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(decode(&m), Err(DecodeError::BadLength));
        // An attribute running past the end.
        let mut m = raw(msg_type::BINDING_REQUEST, &[(0x8050, &[1, 2, 3, 4])], false);
        m[23] = 8;
        assert_eq!(decode(&m), Err(DecodeError::BadLength));
        // Longer than MAX_MESSAGE.
        let mut m = vec![0u8; 600];
        m[..20].copy_from_slice(&enc_req(&BindingRequest::default()));
        m[2..4].copy_from_slice(&580u16.to_be_bytes());
        assert_eq!(decode(&m), Err(DecodeError::BadLength));
        // An error response without ERROR-CODE, or with an invalid one.
        for code in [None, Some([0, 0, 7, 0]), Some([0, 0, 4, 100])] {
            let attrs: Vec<(u16, &[u8])> =
                code.iter().map(|v| (attr::ERROR_CODE, &v[..])).collect();
            let m = raw(msg_type::BINDING_ERROR, &attrs, false);
            assert_eq!(decode(&m), Err(DecodeError::BadLength), "{code:?}");
        }
    }

    #[test]
    fn bad_fingerprint() {
        let mut m = enc_fp_req();
        let last = m.len() - 1;
        m[last] ^= 0x80;
        assert_eq!(decode(&m), Err(DecodeError::BadFingerprint));
        // A FINGERPRINT of the wrong length.
        let m = raw(
            msg_type::BINDING_REQUEST,
            &[(attr::FINGERPRINT, &[0; 8])],
            false,
        );
        assert_eq!(decode(&m), Err(DecodeError::BadFingerprint));
    }

    #[test]
    fn after_fingerprint() {
        let mut m = enc_fp_req();
        m.extend_from_slice(&[0x80, 0x22, 0x00, 0x00]);
        m[3] += 4;
        assert_eq!(decode(&m), Err(DecodeError::AfterFingerprint));
        // A second FINGERPRINT, valid for its position, is "after" too.
        let mut buf = [0u8; 64];
        let n = {
            let mut w =
                Writer::begin(&mut buf, 36, msg_type::BINDING_REQUEST, &TXID).expect("fits");
            let v = fingerprint_value(w.out, 20);
            w.attribute(attr::FINGERPRINT, &v.to_be_bytes());
            w.finish(true)
        };
        assert_eq!(decode(&buf[..n]), Err(DecodeError::AfterFingerprint));
    }

    #[test]
    fn unknown_required() {
        let m = raw(
            msg_type::BINDING_REQUEST,
            &[
                (0x0002, &[0, 1, 0, 80, 1, 2, 3, 4]), // RESPONSE-ADDRESS (RFC 3489)
                (0x7fff, &[]),
                (0x0002, &[]),
                (0x8fff, &[1]), // optional: skipped
                (0x0006, b"user"),
                (0x0024, &[0; 4]),
                (0x0025, &[]), // fifth distinct: not listed
            ],
            true,
        );
        assert_eq!(
            decode(&m),
            Err(DecodeError::UnknownRequired {
                transaction: TXID,
                attributes: [0x0002, 0x7fff, 0x0006, 0x0024],
                count: 4,
            })
        );
        // In a success response: discarded the same way.
        let m = raw(
            msg_type::BINDING_SUCCESS,
            &[
                (attr::XOR_MAPPED_ADDRESS, &[0, 1, 0, 0, 1, 2, 3, 4]),
                (0x0030, &[]),
            ],
            false,
        );
        assert!(matches!(
            decode(&m),
            Err(DecodeError::UnknownRequired { count: 1, .. })
        ));
        // Known attributes that do not belong in a request are ignored, and
        // nothing after MESSAGE-INTEGRITY but FINGERPRINT counts.
        let m = raw(
            msg_type::BINDING_REQUEST,
            &[
                (attr::XOR_MAPPED_ADDRESS, &[0; 8]),
                (attr::SOFTWARE, b"x"),
                (attr::MESSAGE_INTEGRITY, &[0; 20]),
                (0x0030, &[]),
            ],
            true,
        );
        assert!(matches!(decode(&m), Ok(Message::Request(_))));
    }

    #[test]
    fn bad_request() {
        for (t, v) in [
            (attr::CHANGE_REQUEST, &[0u8, 0, 6][..]),
            (attr::CHANGE_REQUEST, &[0, 0, 0, 6, 0, 0, 0, 0][..]),
            (attr::RESPONSE_PORT, &[0x12][..]),
            (attr::RESPONSE_PORT, &[][..]),
        ] {
            let m = raw(msg_type::BINDING_REQUEST, &[(t, v)], true);
            assert_eq!(
                decode(&m),
                Err(DecodeError::BadRequest { transaction: TXID }),
                "{t:#x} {v:?}"
            );
        }
    }

    #[test]
    fn not_binding() {
        let m = raw(msg_type::BINDING_INDICATION, &[], false);
        assert_eq!(decode(&m), Err(DecodeError::NotBinding(0x0011)));
        let m = raw(0x0003, &[], false); // Allocate request (TURN)
        assert_eq!(decode(&m), Err(DecodeError::NotBinding(0x0003)));
    }

    #[test]
    fn no_mapped_address() {
        let m = raw(msg_type::BINDING_SUCCESS, &[], true);
        assert_eq!(decode(&m), Err(DecodeError::NoMappedAddress));
        // Malformed address attributes do not count.
        let m = raw(
            msg_type::BINDING_SUCCESS,
            &[
                (attr::XOR_MAPPED_ADDRESS, &[0, 3, 0, 0, 1, 2, 3, 4]),
                (attr::MAPPED_ADDRESS, &[0, 1, 0, 0, 1, 2, 3]),
                (attr::XOR_MAPPED_ADDRESS, &[0, 2, 0, 0, 1, 2, 3, 4]),
            ],
            false,
        );
        assert_eq!(decode(&m), Err(DecodeError::NoMappedAddress));
    }

    #[test]
    fn is_request_header_tells_requests() {
        assert!(is_request_header(&enc_req(&BindingRequest::default())));
        assert!(is_request_header(&raw(0x0003, &[], false)));
        assert!(!is_request_header(&RFC5769_IPV4));
        assert!(!is_request_header(&raw(
            msg_type::BINDING_INDICATION,
            &[],
            false
        )));
        assert!(!is_request_header(&[0; 19]));
    }

    #[test]
    fn has_fingerprint_finds_a_valid_last_fingerprint() {
        assert!(has_fingerprint(&RFC5769_REQUEST));
        assert!(has_fingerprint(&RFC5769_IPV6));
        let plain = enc_req(&BindingRequest::default());
        assert!(!has_fingerprint(&plain));
        let mut bad = RFC5769_IPV4;
        bad[79] ^= 1;
        assert!(!has_fingerprint(&bad));
        assert!(!has_fingerprint(&RFC5769_IPV4[..40]));
    }

    // ---- properties ----

    fn arb_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, p)| SocketAddr::V4(SocketAddrV4::new(ip.into(), p))),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, p)| SocketAddr::V6(SocketAddrV6::new(ip.into(), p, 0, 0))),
        ]
    }

    fn arb_request() -> impl Strategy<Value = BindingRequest> {
        (
            any::<TransactionId>(),
            any::<bool>(),
            any::<bool>(),
            proptest::option::of(any::<u16>()),
            0u16..=500,
            any::<bool>(),
        )
            .prop_map(|(transaction, ip, port, response_port, padding, fp)| {
                BindingRequest {
                    transaction,
                    change: ChangeRequest {
                        change_ip: ip,
                        change_port: port,
                    },
                    response_port,
                    padding,
                    fingerprint: fp,
                }
            })
    }

    fn arb_response() -> impl Strategy<Value = BindingResponse> {
        (
            any::<TransactionId>(),
            arb_addr(),
            proptest::option::of(arb_addr()),
            proptest::option::of(arb_addr()),
        )
            .prop_map(|(transaction, mapped, other_address, response_origin)| {
                BindingResponse {
                    transaction,
                    mapped,
                    other_address,
                    response_origin,
                }
            })
    }

    /// Every strict prefix of a message is `Truncated`, never a panic.
    fn assert_prefixes_truncated(m: &[u8]) {
        for cut in 0..m.len() {
            let need = if cut < HEADER_LEN {
                HEADER_LEN
            } else {
                m.len()
            };
            assert_eq!(
                decode(&m[..cut]),
                Err(DecodeError::Truncated { len: cut, need }),
                "cut at {cut}"
            );
        }
    }

    proptest! {
        #[test]
        fn request_round_trip(req in arb_request()) {
            let bytes = enc_req(&req);
            prop_assert_eq!(decode(&bytes), Ok(Message::Request(req)));
            prop_assert!(bytes.len() <= MAX_MESSAGE);
            assert_prefixes_truncated(&bytes);
        }

        #[test]
        fn success_round_trip(resp in arb_response(), fp: bool, padding in 0u16..=400) {
            let mut buf = [0u8; MAX_MESSAGE];
            let n = encode_success_padded(&resp, padding, fp, &mut buf).expect("fits");
            prop_assert_eq!(n, success_len(&resp, padding, fp));
            prop_assert_eq!(decode(&buf[..n]), Ok(Message::Success(resp)));
            assert_prefixes_truncated(&buf[..n]);
            let m = enc_ok(&resp, fp);
            prop_assert_eq!(decode(&m), Ok(Message::Success(resp)));
        }

        #[test]
        fn error_round_trip(
            t in any::<TransactionId>(),
            code in 300u16..=699,
            unknown in proptest::collection::vec(any::<u16>(), 0..8),
            fp: bool,
        ) {
            let mut buf = [0u8; MAX_MESSAGE];
            let n = encode_error_fingerprinted(&t, code, &unknown, fp, &mut buf).expect("fits");
            prop_assert_eq!(decode(&buf[..n]), Ok(Message::Error { transaction: t, code }));
            assert_prefixes_truncated(&buf[..n]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = decode(&bytes);
            let _ = is_request_header(&bytes);
        }

        #[test]
        fn stun_shaped_bytes_never_panic_and_reencode(
            ty in prop_oneof![Just(0x0001u16), Just(0x0101), Just(0x0111), any::<u16>()],
            body in proptest::collection::vec(any::<u8>(), 0..140),
            attrs in proptest::collection::vec(
                (prop_oneof![
                    Just(attr::XOR_MAPPED_ADDRESS), Just(attr::MAPPED_ADDRESS),
                    Just(attr::CHANGE_REQUEST), Just(attr::RESPONSE_PORT),
                    Just(attr::PADDING), Just(attr::ERROR_CODE),
                    Just(attr::OTHER_ADDRESS), Just(attr::RESPONSE_ORIGIN),
                    Just(attr::FINGERPRINT), any::<u16>(),
                ], proptest::collection::vec(any::<u8>(), 0..24)),
                0..6,
            ),
            fp: bool,
            mutate: Option<(usize, u8)>,
        ) {
            let refs: Vec<(u16, &[u8])> = attrs.iter().map(|(t, v)| (*t, &v[..])).collect();
            let mut m = raw(ty & 0x3fff, &refs, fp);
            if let Some((i, x)) = mutate {
                let i = i % m.len();
                m[i] ^= x;
            }
            m.extend_from_slice(&body[..body.len() % 4]);
            if let Ok(msg) = decode(&m) {
                let mut buf = [0u8; MAX_MESSAGE];
                let n = match msg {
                    Message::Request(r) => encode_request(&r, &mut buf),
                    Message::Success(r) => encode_success(&r, false, &mut buf),
                    Message::Error { transaction, code } =>
                        encode_error(&transaction, code, &[], &mut buf),
                }.expect("fits");
                prop_assert_eq!(decode(&buf[..n]), Ok(msg));
            }
        }
    }
}
