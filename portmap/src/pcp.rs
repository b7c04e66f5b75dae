//! PCP client (RFC 6887): the MAP opcode for one UDP port, sans-IO.
//!
//! The codec ([`MapRequest`], [`Response`]) reads and writes the RFC's byte
//! layout; decoding never panics, never allocates, and skips options with
//! bounds checks. [`PcpClient`] is the [`Client`] machine.
//!
//! # Behaviour
//!
//! - The only destination is the gateway's port 5351 (P1); datagrams from any
//!   other address are ignored.
//! - One 96-bit mapping nonce per client, drawn from the seeded [`Rng`] in
//!   [`PcpClient::new`]: the same nonce for the first request, every
//!   retransmission, every renewal, every re-install and the deletion (a PCP
//!   server refuses a different nonce for an existing mapping).
//! - Retransmission: the first request at once, then 250 ms, doubling, capped
//!   at 64 s ([`INITIAL_RTO`], [`MAX_RTO`]); retransmissions are byte-for-byte
//!   identical. No jitter (the machine stays deterministic). An install or a
//!   deletion gives up after the client's `timeout`; a renewal keeps trying
//!   until the mapping expires.
//! - A MAP answer whose nonce, protocol or internal port does not match is
//!   ignored (P5), as is any answer arriving when no request is outstanding.
//! - Success → [`Event::Installed`] with the assigned address and port (P3);
//!   an error result → [`Event::Failed`] with [`MapError::Refused`];
//!   `UNSUPP_VERSION` from a server that speaks another version (a NAT-PMP
//!   server answers version 0) → `Failed` as well, but only before any
//!   version-2 answer was accepted (afterwards it is ignored: it carries no
//!   nonce).
//! - Renewal at half the granted lifetime (P4), suggesting the previously
//!   assigned address and port.
//! - Epoch (RFC 6887 §8.5, P4): every accepted answer (and an unsolicited
//!   ANNOUNCE from the gateway) is checked against the previous one. The
//!   server lost its state when its epoch went back by more than one second,
//!   or is less than `previous + 7/8 × elapsed − 2 s`. With a mapping held,
//!   that gives [`Event::GatewayRestarted`] and an immediate re-install.
//! - [`Client::delete`] sends MAP with lifetime 0 (same nonce) and reports
//!   [`Event::Deleted`] on a successful answer. A refusal (say
//!   `NOT_AUTHORIZED`) gives [`Event::Failed`] with [`MapError::Refused`], and
//!   no answer within `timeout` gives [`MapError::Timeout`] (P4: the gateway
//!   may hold the mapping until its lifetime runs out; the client holds
//!   nothing either way). With nothing installed and nothing in flight it
//!   reports `Deleted` at once; with an install in flight it deletes anyway
//!   (the server may already hold the mapping).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use natrix_proto::Rng;

use crate::udp_client::{
    Exchange, Lifecycle, Purpose, Requests, State, canonical_internal_ip, check_grant,
    requested_lifetime,
};
pub use crate::udp_client::{INITIAL_RTO, MAX_RTO};
use crate::{Client, Event, Instant, MapError, Mapping, MappingRequest, Protocol, Transmit};

/// The PCP version this client speaks.
pub const VERSION: u8 = 2;
/// The ANNOUNCE opcode.
pub const OPCODE_ANNOUNCE: u8 = 0;
/// The MAP opcode.
pub const OPCODE_MAP: u8 = 1;
/// The R bit of the second byte: set in responses.
pub const RESPONSE_BIT: u8 = 0x80;
/// The common header's length.
pub const HEADER_LEN: usize = 24;
/// The MAP opcode data's length.
pub const MAP_OPCODE_LEN: usize = 36;
/// A MAP message without options: header and MAP opcode data.
pub const MAP_MESSAGE_LEN: usize = HEADER_LEN + MAP_OPCODE_LEN;
/// The longest PCP message (RFC 6887 §7).
pub const MAX_MESSAGE_LEN: usize = 1100;
/// The length of the mapping nonce.
pub const NONCE_LEN: usize = 12;
/// IANA protocol number of UDP, the only protocol this client maps.
pub const PROTOCOL_UDP: u8 = 17;

/// A PCP result code (RFC 6887 §7.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResultCode {
    /// 0: success.
    Success,
    /// 1: the version is not supported.
    UnsuppVersion,
    /// 2: the request is not authorized.
    NotAuthorized,
    /// 3: the request could not be parsed.
    MalformedRequest,
    /// 4: the opcode is not supported.
    UnsuppOpcode,
    /// 5: a mandatory option is not supported.
    UnsuppOption,
    /// 6: an option is malformed.
    MalformedOption,
    /// 7: the server or the device it controls has a network failure.
    NetworkFailure,
    /// 8: out of resources.
    NoResources,
    /// 9: the protocol is not supported.
    UnsuppProtocol,
    /// 10: the user's quota is exceeded.
    UserExQuota,
    /// 11: the suggested external address/port cannot be provided.
    CannotProvideExternal,
    /// 12: the source address differs from the PCP client's IP address.
    AddressMismatch,
    /// 13: too many remote peers.
    ExcessiveRemotePeers,
    /// Any other value.
    Other(u8),
}

impl ResultCode {
    /// The code for a byte.
    #[must_use]
    pub fn from_u8(code: u8) -> Self {
        match code {
            0 => ResultCode::Success,
            1 => ResultCode::UnsuppVersion,
            2 => ResultCode::NotAuthorized,
            3 => ResultCode::MalformedRequest,
            4 => ResultCode::UnsuppOpcode,
            5 => ResultCode::UnsuppOption,
            6 => ResultCode::MalformedOption,
            7 => ResultCode::NetworkFailure,
            8 => ResultCode::NoResources,
            9 => ResultCode::UnsuppProtocol,
            10 => ResultCode::UserExQuota,
            11 => ResultCode::CannotProvideExternal,
            12 => ResultCode::AddressMismatch,
            13 => ResultCode::ExcessiveRemotePeers,
            other => ResultCode::Other(other),
        }
    }

    /// The code's byte.
    #[must_use]
    pub fn to_u8(self) -> u8 {
        match self {
            ResultCode::Success => 0,
            ResultCode::UnsuppVersion => 1,
            ResultCode::NotAuthorized => 2,
            ResultCode::MalformedRequest => 3,
            ResultCode::UnsuppOpcode => 4,
            ResultCode::UnsuppOption => 5,
            ResultCode::MalformedOption => 6,
            ResultCode::NetworkFailure => 7,
            ResultCode::NoResources => 8,
            ResultCode::UnsuppProtocol => 9,
            ResultCode::UserExQuota => 10,
            ResultCode::CannotProvideExternal => 11,
            ResultCode::AddressMismatch => 12,
            ResultCode::ExcessiveRemotePeers => 13,
            ResultCode::Other(code) => code,
        }
    }

    /// The RFC's name (`"UNSUPP_VERSION"`), or `"UNKNOWN"`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ResultCode::Success => "SUCCESS",
            ResultCode::UnsuppVersion => "UNSUPP_VERSION",
            ResultCode::NotAuthorized => "NOT_AUTHORIZED",
            ResultCode::MalformedRequest => "MALFORMED_REQUEST",
            ResultCode::UnsuppOpcode => "UNSUPP_OPCODE",
            ResultCode::UnsuppOption => "UNSUPP_OPTION",
            ResultCode::MalformedOption => "MALFORMED_OPTION",
            ResultCode::NetworkFailure => "NETWORK_FAILURE",
            ResultCode::NoResources => "NO_RESOURCES",
            ResultCode::UnsuppProtocol => "UNSUPP_PROTOCOL",
            ResultCode::UserExQuota => "USER_EX_QUOTA",
            ResultCode::CannotProvideExternal => "CANNOT_PROVIDE_EXTERNAL",
            ResultCode::AddressMismatch => "ADDRESS_MISMATCH",
            ResultCode::ExcessiveRemotePeers => "EXCESSIVE_REMOTE_PEERS",
            ResultCode::Other(_) => "UNKNOWN",
        }
    }
}

impl std::fmt::Display for ResultCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.to_u8())
    }
}

/// Why a PCP message could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than the fixed part needs.
    #[error("truncated: {len} bytes, need {need}")]
    Truncated {
        /// The message's length.
        len: usize,
        /// The length needed.
        need: usize,
    },
    /// Longer than 1100 bytes.
    #[error("{0} bytes is longer than 1100")]
    TooLong(usize),
    /// The length is not a multiple of four.
    #[error("{0} bytes is not a multiple of four")]
    NotMultipleOfFour(usize),
    /// A response was expected but the R bit is clear.
    #[error("not a response (R bit clear)")]
    NotAResponse,
    /// A request was expected but the R bit is set.
    #[error("not a request (R bit set)")]
    NotARequest,
    /// A request of a version other than 2.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    /// A response of a version other than 2 (a NAT-PMP server answers
    /// version 0 with result 1, `UNSUPP_VERSION`).
    #[error("response of version {version}, result {result}")]
    VersionMismatch {
        /// The version the server wrote.
        version: u8,
        /// The result code in byte 3 (where both PCP and NAT-PMP have it).
        result: ResultCode,
    },
    /// An opcode other than ANNOUNCE or MAP.
    #[error("unsupported opcode {0}")]
    UnsupportedOpcode(u8),
    /// An option runs past the end of the message.
    #[error("malformed option at byte {offset}")]
    MalformedOption {
        /// Where the option starts.
        offset: usize,
    },
}

/// The address-family-specific "any" address: `::ffff:0.0.0.0` for IPv4,
/// `::` for IPv6 (RFC 6887 §11.1).
#[must_use]
pub fn any_address(ipv4: bool) -> Ipv6Addr {
    if ipv4 {
        Ipv4Addr::UNSPECIFIED.to_ipv6_mapped()
    } else {
        Ipv6Addr::UNSPECIFIED
    }
}

/// An address as PCP carries it: 16 bytes, IPv4-mapped for IPv4.
#[must_use]
pub fn to_wire_ip(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// An address from the wire: IPv4-mapped addresses become IPv4.
#[must_use]
pub fn from_wire_ip(ip: Ipv6Addr) -> IpAddr {
    ip.to_canonical()
}

/// A MAP request (RFC 6887 §7.1, §11.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapRequest {
    /// Requested lifetime in seconds; 0 deletes.
    pub lifetime: u32,
    /// The PCP client's IP address (IPv4-mapped for IPv4).
    pub client_ip: Ipv6Addr,
    /// The mapping nonce.
    pub nonce: [u8; NONCE_LEN],
    /// The IANA protocol number (17 for UDP).
    pub protocol: u8,
    /// The internal port.
    pub internal_port: u16,
    /// The suggested external port; 0 for no preference.
    pub suggested_external_port: u16,
    /// The suggested external address; [`any_address`] for no preference.
    pub suggested_external_ip: Ipv6Addr,
}

impl MapRequest {
    /// The request's bytes (no options).
    #[must_use]
    pub fn encode(&self) -> [u8; MAP_MESSAGE_LEN] {
        let mut b = [0u8; MAP_MESSAGE_LEN];
        b[0] = VERSION;
        b[1] = OPCODE_MAP;
        b[4..8].copy_from_slice(&self.lifetime.to_be_bytes());
        b[8..24].copy_from_slice(&self.client_ip.octets());
        encode_map_data(
            &mut b,
            &MapPayload {
                nonce: self.nonce,
                protocol: self.protocol,
                internal_port: self.internal_port,
                external_port: self.suggested_external_port,
                external_ip: self.suggested_external_ip,
            },
        );
        b
    }

    /// Parses a MAP request (options are checked and skipped).
    ///
    /// # Errors
    /// A [`DecodeError`] saying what is wrong.
    pub fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        let opcode = check_header(data, Direction::Request)?;
        if opcode != OPCODE_MAP {
            return Err(DecodeError::UnsupportedOpcode(opcode));
        }
        let b = fixed::<MAP_MESSAGE_LEN>(data)?;
        check_options(data, MAP_MESSAGE_LEN)?;
        let m = decode_map_data(&b);
        Ok(MapRequest {
            lifetime: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            client_ip: ipv6_at(&b, 8),
            nonce: m.nonce,
            protocol: m.protocol,
            internal_port: m.internal_port,
            suggested_external_port: m.external_port,
            suggested_external_ip: m.external_ip,
        })
    }
}

/// The MAP opcode data of a response (RFC 6887 §11.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapPayload {
    /// The mapping nonce, copied from the request.
    pub nonce: [u8; NONCE_LEN],
    /// The protocol, copied from the request.
    pub protocol: u8,
    /// The internal port, copied from the request.
    pub internal_port: u16,
    /// The assigned external port.
    pub external_port: u16,
    /// The assigned external address (IPv4-mapped for IPv4).
    pub external_ip: Ipv6Addr,
}

/// What follows a response's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseBody {
    /// ANNOUNCE: no opcode data.
    Announce,
    /// MAP.
    Map(MapPayload),
}

/// A PCP response (RFC 6887 §7.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    /// The result code.
    pub result: ResultCode,
    /// The granted lifetime (success) or how long the error lasts, seconds.
    pub lifetime: u32,
    /// The server's epoch time, seconds.
    pub epoch: u32,
    /// The opcode and its data.
    pub body: ResponseBody,
}

impl Response {
    /// The response's bytes (no options).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut b = [0u8; MAP_MESSAGE_LEN];
        let (opcode, len) = match self.body {
            ResponseBody::Announce => (OPCODE_ANNOUNCE, HEADER_LEN),
            ResponseBody::Map(m) => {
                encode_map_data(&mut b, &m);
                (OPCODE_MAP, MAP_MESSAGE_LEN)
            }
        };
        b[0] = VERSION;
        b[1] = RESPONSE_BIT | opcode;
        b[3] = self.result.to_u8();
        b[4..8].copy_from_slice(&self.lifetime.to_be_bytes());
        b[8..12].copy_from_slice(&self.epoch.to_be_bytes());
        b[..len].to_vec()
    }

    /// Parses a response: ANNOUNCE or MAP, options checked and skipped.
    ///
    /// # Errors
    /// A [`DecodeError`] saying what is wrong; a server of another version
    /// (NAT-PMP's `UNSUPP_VERSION` answer) is
    /// [`DecodeError::VersionMismatch`].
    pub fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        let opcode = check_header(data, Direction::Response)?;
        let h = fixed::<HEADER_LEN>(data)?;
        let result = ResultCode::from_u8(h[3]);
        let lifetime = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let epoch = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        let body = match opcode {
            OPCODE_ANNOUNCE => {
                check_options(data, HEADER_LEN)?;
                ResponseBody::Announce
            }
            OPCODE_MAP => {
                let b = fixed::<MAP_MESSAGE_LEN>(data)?;
                check_options(data, MAP_MESSAGE_LEN)?;
                ResponseBody::Map(decode_map_data(&b))
            }
            other => return Err(DecodeError::UnsupportedOpcode(other)),
        };
        Ok(Response {
            result,
            lifetime,
            epoch,
            body,
        })
    }
}

/// Which way a message goes: the R bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Request,
    Response,
}

/// The checks every message passes first, in this order: at most 1100
/// bytes, at least 4, the R bit as `direction` has it, version 2 (a response
/// of another version is [`DecodeError::VersionMismatch`]), a multiple of
/// four bytes. Returns the opcode.
fn check_header(data: &[u8], direction: Direction) -> Result<u8, DecodeError> {
    let len = data.len();
    if len > MAX_MESSAGE_LEN {
        return Err(DecodeError::TooLong(len));
    }
    let [version, op, _, result] = fixed::<4>(data)?;
    match (direction, op & RESPONSE_BIT != 0) {
        (Direction::Request, true) => return Err(DecodeError::NotARequest),
        (Direction::Response, false) => return Err(DecodeError::NotAResponse),
        _ => {}
    }
    if version != VERSION {
        return Err(match direction {
            Direction::Request => DecodeError::UnsupportedVersion(version),
            Direction::Response => DecodeError::VersionMismatch {
                version,
                result: ResultCode::from_u8(result),
            },
        });
    }
    if len % 4 != 0 {
        return Err(DecodeError::NotMultipleOfFour(len));
    }
    Ok(op & !RESPONSE_BIT)
}

/// Writes the MAP opcode data (RFC 6887 §11.1), laid out alike in a
/// request (suggested external port and address) and a response (assigned).
fn encode_map_data(b: &mut [u8; MAP_MESSAGE_LEN], m: &MapPayload) {
    b[24..36].copy_from_slice(&m.nonce);
    b[36] = m.protocol;
    b[40..42].copy_from_slice(&m.internal_port.to_be_bytes());
    b[42..44].copy_from_slice(&m.external_port.to_be_bytes());
    b[44..60].copy_from_slice(&m.external_ip.octets());
}

/// Reads the MAP opcode data ([`encode_map_data`]'s layout).
fn decode_map_data(b: &[u8; MAP_MESSAGE_LEN]) -> MapPayload {
    MapPayload {
        nonce: nonce_at(b, 24),
        protocol: b[36],
        internal_port: u16::from_be_bytes([b[40], b[41]]),
        external_port: u16::from_be_bytes([b[42], b[43]]),
        external_ip: ipv6_at(b, 44),
    }
}

/// The first `N` bytes of `data` as an array, or `Truncated`.
fn fixed<const N: usize>(data: &[u8]) -> Result<[u8; N], DecodeError> {
    data.get(..N)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or(DecodeError::Truncated {
            len: data.len(),
            need: N,
        })
}

fn ipv6_at<const N: usize>(b: &[u8; N], at: usize) -> Ipv6Addr {
    let mut o = [0u8; 16];
    if let Some(s) = b.get(at..at + 16) {
        o.copy_from_slice(s);
    }
    Ipv6Addr::from(o)
}

fn nonce_at<const N: usize>(b: &[u8; N], at: usize) -> [u8; NONCE_LEN] {
    let mut o = [0u8; NONCE_LEN];
    if let Some(s) = b.get(at..at + NONCE_LEN) {
        o.copy_from_slice(s);
    }
    o
}

/// Walks the options from `at` to the end (RFC 6887 §7.3): a 4-byte option
/// header (code, reserved, length) and the data padded to four bytes. Every
/// option must end inside the message.
fn check_options(data: &[u8], mut at: usize) -> Result<(), DecodeError> {
    while at < data.len() {
        let Some(hdr) = data.get(at..at + 4) else {
            return Err(DecodeError::MalformedOption { offset: at });
        };
        let len = usize::from(u16::from_be_bytes([hdr[2], hdr[3]]));
        let end = at + 4 + len.div_ceil(4) * 4;
        if end > data.len() {
            return Err(DecodeError::MalformedOption { offset: at });
        }
        at = end;
    }
    Ok(())
}

/// The PCP requests: one MAP, the same nonce every time.
#[derive(Debug)]
struct PcpRequests {
    /// The internal address as the MAP request carries it.
    internal_ip: IpAddr,
    internal_port: u16,
    /// The lifetime asked for, seconds.
    lifetime: u32,
    nonce: [u8; NONCE_LEN],
    /// The last assigned external address, suggested on renewal.
    last_external: Option<SocketAddr>,
}

impl PcpRequests {
    fn map_request(&self, lifetime: u32) -> MapRequest {
        let (suggested_external_ip, suggested_external_port) = match self.last_external {
            Some(ext) => (to_wire_ip(ext.ip()), ext.port()),
            None => (any_address(self.internal_ip.is_ipv4()), 0),
        };
        MapRequest {
            lifetime,
            client_ip: to_wire_ip(self.internal_ip),
            nonce: self.nonce,
            protocol: PROTOCOL_UDP,
            internal_port: self.internal_port,
            suggested_external_port,
            suggested_external_ip,
        }
    }
}

impl Requests for PcpRequests {
    /// The MAP request, sent until answered.
    type Pending = [u8; MAP_MESSAGE_LEN];

    const PROTOCOL: Protocol = Protocol::Pcp;

    /// RFC 6887 §8.5: back by more than one second.
    const EPOCH_SLACK: u32 = 1;

    fn pending(&self, purpose: Purpose) -> Self::Pending {
        let lifetime = match purpose {
            Purpose::Install | Purpose::Renew => self.lifetime,
            Purpose::Delete => 0,
        };
        self.map_request(lifetime).encode()
    }

    fn outstanding(pending: &Self::Pending, _purpose: Purpose, mut send: impl FnMut(&[u8])) {
        send(pending);
    }
}

/// The PCP [`Client`]: MAP for one UDP port through one gateway.
#[derive(Debug)]
pub struct PcpClient {
    core: Lifecycle<PcpRequests>,
    /// A version-2 answer with our nonce was accepted.
    spoke_v2: bool,
}

impl PcpClient {
    /// A client mapping `request` through `gateway` (IPv4 or IPv6, the same
    /// family as the internal address). `seed` draws the mapping nonce;
    /// `timeout` bounds an install or a deletion without an answer.
    ///
    /// # Errors
    /// [`MapError::BadInternalAddress`] for an unspecified or loopback
    /// internal address (also IPv4-mapped), port 0, or a family other than
    /// the gateway's (P2); [`MapError::NoGateway`] for an unspecified or
    /// multicast gateway.
    pub fn new(
        gateway: IpAddr,
        request: MappingRequest,
        seed: u64,
        timeout: Duration,
    ) -> Result<Self, MapError> {
        let internal_ip = canonical_internal_ip(request.internal)?;
        let gateway = gateway.to_canonical();
        if gateway.is_unspecified() || gateway.is_multicast() {
            return Err(MapError::NoGateway);
        }
        if gateway.is_ipv4() != internal_ip.is_ipv4() {
            return Err(MapError::BadInternalAddress(request.internal));
        }
        let mut rng = Rng::new(seed);
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..8].copy_from_slice(&rng.next_u64().to_be_bytes());
        nonce[8..].copy_from_slice(&rng.next_u32().to_be_bytes());
        let requests = PcpRequests {
            internal_ip,
            internal_port: request.internal.port(),
            lifetime: requested_lifetime(&request),
            nonce,
            last_external: None,
        };
        Ok(PcpClient {
            core: Lifecycle::new(requests, gateway, request.internal, timeout),
            spoke_v2: false,
        })
    }

    /// The mapping nonce (the same for every request of this client).
    #[must_use]
    pub fn nonce(&self) -> [u8; NONCE_LEN] {
        self.core.requests.nonce
    }

    fn on_response(&mut self, now: Instant, resp: Response) {
        let map = match resp.body {
            ResponseBody::Announce => {
                if resp.result != ResultCode::Success || self.core.state() == State::Idle {
                    return;
                }
                let lost = self.core.observe_epoch(resp.epoch, now);
                if lost && self.core.mapping().is_some() {
                    self.core.restart_detected(now);
                }
                return;
            }
            ResponseBody::Map(map) => map,
        };
        if map.nonce != self.core.requests.nonce
            || map.protocol != PROTOCOL_UDP
            || map.internal_port != self.core.requests.internal_port
        {
            tracing::debug!(gateway = %self.core.gateway(), "ignoring a PCP answer for another mapping (P5)");
            return;
        }
        let State::Requesting(exchange) = self.core.state() else {
            return;
        };
        if exchange.purpose == Purpose::Delete {
            if resp.result == ResultCode::Success && resp.lifetime != 0 {
                // A late answer to the MAP before the deletion.
                return;
            }
            self.spoke_v2 = true;
            let refusal = (resp.result != ResultCode::Success).then_some(resp.result);
            self.core.deletion_answered(now, resp.epoch, refusal);
            return;
        }
        self.spoke_v2 = true;
        let lost = self.core.observe_epoch(resp.epoch, now);
        if lost && exchange.purpose == Purpose::Renew {
            self.core.restart_detected(now);
        } else if resp.result == ResultCode::NetworkFailure {
            self.core.fail(MapError::NoExternalAddress {
                protocol: Protocol::Pcp,
                detail: resp.result.to_string(),
            });
        } else if resp.result != ResultCode::Success {
            self.core.refused(resp.result);
        } else if let Err(e) = check_grant(Protocol::Pcp, resp.lifetime, map.external_port) {
            self.core.fail(e);
        } else {
            let external = SocketAddr::new(from_wire_ip(map.external_ip), map.external_port);
            self.core.requests.last_external = Some(external);
            self.core.install(now, external, resp.lifetime);
        }
    }
}

impl Client for PcpClient {
    fn protocol(&self) -> Protocol {
        Protocol::Pcp
    }

    fn start(&mut self, now: Instant) {
        self.core.start(now);
    }

    fn handle_udp(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        if !self.core.accepts(from) {
            return;
        }
        match Response::decode(datagram) {
            Ok(resp) => self.on_response(now, resp),
            Err(DecodeError::VersionMismatch {
                version,
                result: ResultCode::UnsuppVersion,
            }) => {
                let installing = matches!(
                    self.core.state(),
                    State::Requesting(Exchange {
                        purpose: Purpose::Install,
                        ..
                    })
                );
                if installing && !self.spoke_v2 {
                    self.core.refused(format!(
                        "UNSUPP_VERSION: the server speaks version {version}"
                    ));
                }
            }
            Err(error) => {
                tracing::debug!(%error, gateway = %self.core.gateway(), "ignoring a malformed PCP answer");
            }
        }
    }

    fn handle_http(&mut self, _now: Instant, _id: u64, _response: Result<&[u8], String>) {}

    fn handle_timeout(&mut self, now: Instant) {
        self.core.handle_timeout(now);
    }

    fn delete(&mut self, now: Instant) {
        self.core.delete(now);
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.core.poll_transmit()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.core.poll_timeout()
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.core.poll_event()
    }

    fn mapping(&self) -> Option<Mapping> {
        self.core.mapping()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PCP_PORT;
    use crate::testing::{self, at, events, unchecked_request};
    use proptest::prelude::*;

    const SEED: u64 = 7;

    fn gw() -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1))
    }

    fn gw_addr() -> SocketAddr {
        SocketAddr::new(gw(), PCP_PORT)
    }

    fn internal() -> SocketAddr {
        "192.168.1.20:4000".parse().expect("literal")
    }

    fn ext() -> SocketAddr {
        "203.0.113.7:61000".parse().expect("literal")
    }

    fn client_with(timeout: Duration) -> PcpClient {
        let request = MappingRequest::new(internal()).expect("valid");
        PcpClient::new(gw(), request, SEED, timeout).expect("valid")
    }

    fn client() -> PcpClient {
        client_with(Duration::from_secs(1))
    }

    fn sent(c: &mut PcpClient) -> Vec<Vec<u8>> {
        testing::sent(c, gw_addr())
    }

    fn answer(
        request: &[u8],
        result: ResultCode,
        lifetime: u32,
        epoch: u32,
        ext: SocketAddr,
    ) -> Vec<u8> {
        let r = MapRequest::decode(request).expect("our request decodes");
        Response {
            result,
            lifetime,
            epoch,
            body: ResponseBody::Map(MapPayload {
                nonce: r.nonce,
                protocol: r.protocol,
                internal_port: r.internal_port,
                external_port: ext.port(),
                external_ip: to_wire_ip(ext.ip()),
            }),
        }
        .encode()
    }

    /// Starts at `now` and answers with a 3600 s mapping to `ext()`.
    fn installed(c: &mut PcpClient, now: Instant, epoch: u32) -> Mapping {
        c.start(now);
        let req = sent(c).pop().expect("a request");
        c.handle_udp(
            now,
            gw_addr(),
            &answer(&req, ResultCode::Success, 3600, epoch, ext()),
        );
        match events(c).as_slice() {
            [Event::Installed(m)] => *m,
            other => panic!("expected Installed, got {other:?}"),
        }
    }

    const NONCE: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    #[rustfmt::skip]
    const RFC_MAP_REQUEST: [u8; 60] = [
        0x02, 0x01, 0x00, 0x00,             // version 2, R=0 opcode MAP, reserved
        0x00, 0x00, 0x0e, 0x10,             // requested lifetime 3600
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 168, 1, 20, // client IP
        1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, // nonce
        17, 0, 0, 0,                        // protocol UDP, reserved
        0x0f, 0xa0, 0x00, 0x00,             // internal port 4000, suggested port 0
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0, // ::ffff:0.0.0.0
    ];

    #[rustfmt::skip]
    const RFC_MAP_RESPONSE: [u8; 60] = [
        0x02, 0x81, 0x00, 0x00,             // version 2, R=1 opcode MAP, result SUCCESS
        0x00, 0x00, 0x02, 0x58,             // lifetime 600
        0x00, 0x00, 0x04, 0xd2,             // epoch 1234
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // reserved
        1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, // nonce
        17, 0, 0, 0,                        // protocol, reserved
        0x0f, 0xa0, 0xee, 0x48,             // internal 4000, external 61000
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 203, 0, 113, 7,
    ];

    fn rfc_request() -> MapRequest {
        MapRequest {
            lifetime: 3600,
            client_ip: "::ffff:192.168.1.20".parse().expect("literal"),
            nonce: NONCE,
            protocol: PROTOCOL_UDP,
            internal_port: 4000,
            suggested_external_port: 0,
            suggested_external_ip: any_address(true),
        }
    }

    fn rfc_response() -> Response {
        Response {
            result: ResultCode::Success,
            lifetime: 600,
            epoch: 1234,
            body: ResponseBody::Map(MapPayload {
                nonce: NONCE,
                protocol: PROTOCOL_UDP,
                internal_port: 4000,
                external_port: 61000,
                external_ip: "::ffff:203.0.113.7".parse().expect("literal"),
            }),
        }
    }

    #[test]
    fn map_request_has_the_rfc_layout_and_round_trips() {
        assert_eq!(rfc_request().encode(), RFC_MAP_REQUEST);
        assert_eq!(MapRequest::decode(&RFC_MAP_REQUEST), Ok(rfc_request()));
    }

    #[test]
    fn map_response_has_the_rfc_layout_and_round_trips() {
        assert_eq!(Response::decode(&RFC_MAP_RESPONSE), Ok(rfc_response()));
        assert_eq!(rfc_response().encode(), RFC_MAP_RESPONSE);
    }

    #[test]
    fn announce_response_decodes() {
        let mut b = [0u8; 24];
        b[0] = 2;
        b[1] = 0x80;
        b[8..12].copy_from_slice(&7u32.to_be_bytes());
        let r = Response::decode(&b).expect("announce");
        assert_eq!(r.body, ResponseBody::Announce);
        assert_eq!(r.epoch, 7);
        assert_eq!(r.encode(), b);
    }

    #[test]
    fn options_are_skipped_with_bounds_checks() {
        let mut b = RFC_MAP_RESPONSE.to_vec();
        // PREFER_FAILURE (code 2), length 0; then an option of 5 bytes
        // padded to 8.
        b.extend_from_slice(&[2, 0, 0, 0]);
        b.extend_from_slice(&[0x80, 0, 0, 5, 1, 2, 3, 4, 5, 0, 0, 0]);
        assert_eq!(Response::decode(&b), Ok(rfc_response()));
        let mut req = RFC_MAP_REQUEST.to_vec();
        req.extend_from_slice(&[2, 0, 0, 0]);
        assert_eq!(MapRequest::decode(&req), Ok(rfc_request()));
    }

    #[test]
    fn every_decode_error() {
        let resp = RFC_MAP_RESPONSE;
        assert_eq!(
            Response::decode(&resp[..3]),
            Err(DecodeError::Truncated { len: 3, need: 4 })
        );
        assert_eq!(
            Response::decode(&resp[..20]),
            Err(DecodeError::Truncated { len: 20, need: 24 })
        );
        assert_eq!(
            Response::decode(&resp[..24]),
            Err(DecodeError::Truncated { len: 24, need: 60 })
        );
        let mut long = resp.to_vec();
        long.resize(1104, 0);
        assert_eq!(Response::decode(&long), Err(DecodeError::TooLong(1104)));
        assert_eq!(MapRequest::decode(&long), Err(DecodeError::TooLong(1104)));
        assert_eq!(
            Response::decode(&resp[..26]),
            Err(DecodeError::NotMultipleOfFour(26))
        );
        assert_eq!(
            Response::decode(&RFC_MAP_REQUEST),
            Err(DecodeError::NotAResponse)
        );
        assert_eq!(MapRequest::decode(&resp), Err(DecodeError::NotARequest));
        let mut v1 = RFC_MAP_REQUEST;
        v1[0] = 1;
        assert_eq!(
            MapRequest::decode(&v1),
            Err(DecodeError::UnsupportedVersion(1))
        );
        assert_eq!(
            MapRequest::decode(&RFC_MAP_REQUEST[..58]),
            Err(DecodeError::NotMultipleOfFour(58))
        );
        assert_eq!(
            MapRequest::decode(&RFC_MAP_REQUEST[..56]),
            Err(DecodeError::Truncated { len: 56, need: 60 })
        );
        assert_eq!(
            MapRequest::decode(&RFC_MAP_REQUEST[..2]),
            Err(DecodeError::Truncated { len: 2, need: 4 })
        );
        let mut peer_req = RFC_MAP_REQUEST;
        peer_req[1] = 2;
        assert_eq!(
            MapRequest::decode(&peer_req),
            Err(DecodeError::UnsupportedOpcode(2))
        );
        // A NAT-PMP server's answer to a PCP request: version 0, opcode
        // 128 + 1, result 1, epoch.
        let natpmp = [0, 0x81, 0, 1, 0, 0, 0, 9];
        assert_eq!(
            Response::decode(&natpmp),
            Err(DecodeError::VersionMismatch {
                version: 0,
                result: ResultCode::UnsuppVersion
            })
        );
        let mut peer = resp;
        peer[1] = 0x82;
        assert_eq!(
            Response::decode(&peer),
            Err(DecodeError::UnsupportedOpcode(2))
        );
        let mut opt = resp.to_vec();
        opt.extend_from_slice(&[0x80, 0, 0, 8, 1, 2, 3, 4]);
        assert_eq!(
            Response::decode(&opt),
            Err(DecodeError::MalformedOption { offset: 60 })
        );
        let mut opt = resp.to_vec();
        opt.extend_from_slice(&[2, 0, 0, 0, 0x80, 0, 0xff, 0xff]);
        assert_eq!(
            Response::decode(&opt),
            Err(DecodeError::MalformedOption { offset: 64 })
        );
    }

    #[test]
    fn result_codes_have_the_rfc_names_and_values() {
        let names = [
            "SUCCESS",
            "UNSUPP_VERSION",
            "NOT_AUTHORIZED",
            "MALFORMED_REQUEST",
            "UNSUPP_OPCODE",
            "UNSUPP_OPTION",
            "MALFORMED_OPTION",
            "NETWORK_FAILURE",
            "NO_RESOURCES",
            "UNSUPP_PROTOCOL",
            "USER_EX_QUOTA",
            "CANNOT_PROVIDE_EXTERNAL",
            "ADDRESS_MISMATCH",
            "EXCESSIVE_REMOTE_PEERS",
        ];
        for (code, name) in (0u8..).zip(names) {
            assert_eq!(ResultCode::from_u8(code).name(), name);
        }
        for code in 0..=255u8 {
            assert_eq!(ResultCode::from_u8(code).to_u8(), code);
        }
        assert_eq!(ResultCode::from_u8(14), ResultCode::Other(14));
        assert_eq!(ResultCode::NoResources.to_string(), "NO_RESOURCES (8)");
    }

    #[test]
    fn p3_install_sends_the_exact_map_request_and_reports_the_granted_port() {
        let mut c = client();
        assert_eq!(c.poll_timeout(), None);
        c.start(at(0));
        let reqs = sent(&mut c);
        assert_eq!(reqs.len(), 1);
        let mut expected = RFC_MAP_REQUEST;
        expected[24..36].copy_from_slice(&c.nonce());
        assert_eq!(reqs[0], expected);
        assert_ne!(c.nonce(), [0; 12]);
        // The gateway grants 600 s on port 61000, not the 3600 s asked for
        // nor the internal port.
        c.handle_udp(
            at(40),
            gw_addr(),
            &answer(&reqs[0], ResultCode::Success, 600, 50, ext()),
        );
        let m = Mapping {
            protocol: Protocol::Pcp,
            internal: internal(),
            external: ext(),
            lifetime: Duration::from_secs(600),
            granted_at: at(40),
        };
        assert_eq!(events(&mut c), vec![Event::Installed(m)]);
        assert_eq!(c.mapping(), Some(m));
        assert_eq!(c.poll_timeout(), Some(at(40 + 300_000)));
        assert!(sent(&mut c).is_empty());
    }

    #[test]
    fn the_nonce_comes_from_the_seed() {
        let a = client();
        let b = client();
        assert_eq!(a.nonce(), b.nonce());
        let request = MappingRequest::new(internal()).expect("valid");
        let other = PcpClient::new(gw(), request, SEED + 1, Duration::from_secs(1)).expect("valid");
        assert_ne!(a.nonce(), other.nonce());
    }

    #[test]
    fn ipv6_gateway_installs_with_native_addresses() {
        let gw6: IpAddr = "fe80::1".parse().expect("literal");
        let internal6: SocketAddr = "[2001:db8::20]:4000".parse().expect("literal");
        let ext6: SocketAddr = "[2001:db8:ffff::7]:4000".parse().expect("literal");
        let request = MappingRequest::new(internal6).expect("valid");
        let mut c = PcpClient::new(gw6, request, 1, Duration::from_secs(1)).expect("valid");
        c.start(at(0));
        let Some(Transmit::Udp { to, payload }) = c.poll_transmit() else {
            panic!("a request");
        };
        assert_eq!(to, SocketAddr::new(gw6, PCP_PORT));
        let req = MapRequest::decode(&payload).expect("decodes");
        assert_eq!(
            req.client_ip,
            "2001:db8::20".parse::<Ipv6Addr>().expect("literal")
        );
        assert_eq!(req.suggested_external_ip, Ipv6Addr::UNSPECIFIED);
        c.handle_udp(
            at(10),
            SocketAddr::new(gw6, PCP_PORT),
            &answer(&payload, ResultCode::Success, 3600, 1, ext6),
        );
        assert_eq!(c.mapping().map(|m| m.external), Some(ext6));
    }

    #[test]
    fn p2_bad_internal_addresses_and_a_family_mismatch_are_refused() {
        let timeout = Duration::from_secs(1);
        for bad in [
            "[::ffff:127.0.0.1]:4000",
            "[::ffff:0.0.0.0]:4000",
            "127.0.0.1:4000",
        ] {
            let request = unchecked_request(bad);
            assert_eq!(
                PcpClient::new(gw(), request, 1, timeout).map(|_| ()),
                Err(MapError::BadInternalAddress(request.internal)),
                "{bad}"
            );
        }
        let v6 =
            MappingRequest::new("[2001:db8::2]:4000".parse().expect("literal")).expect("valid");
        assert_eq!(
            PcpClient::new(gw(), v6, 1, timeout).map(|_| ()),
            Err(MapError::BadInternalAddress(v6.internal))
        );
        let ok = MappingRequest::new(internal()).expect("valid");
        assert_eq!(
            PcpClient::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), ok, 1, timeout).map(|_| ()),
            Err(MapError::NoGateway)
        );
    }

    #[test]
    fn retransmission_schedule_starts_at_250ms_and_doubles() {
        let mut c = client_with(Duration::from_secs(10));
        c.start(at(0));
        let first = sent(&mut c);
        let mut times = vec![0];
        let mut now = at(0);
        while let Some(t) = c.poll_timeout() {
            now = t;
            c.handle_timeout(now);
            for payload in sent(&mut c) {
                assert_eq!(payload, first[0], "retransmissions are identical");
                times.push(now.as_nanos() / 1_000_000);
            }
        }
        assert_eq!(times, vec![0, 250, 750, 1750, 3750, 7750]);
        assert_eq!(now, at(10_000));
        assert_eq!(
            events(&mut c),
            vec![Event::Failed(MapError::Timeout(Protocol::Pcp))]
        );
    }

    #[test]
    fn timeout_without_any_answer_fails_after_the_timeout() {
        let mut c = client();
        c.start(at(0));
        assert_eq!(sent(&mut c).len(), 1);
        c.handle_timeout(at(250));
        c.handle_timeout(at(749));
        c.handle_timeout(at(750));
        c.handle_timeout(at(999));
        assert_eq!(sent(&mut c).len(), 2, "250 and 750 ms");
        assert!(events(&mut c).is_empty());
        assert_eq!(c.poll_timeout(), Some(at(1000)));
        c.handle_timeout(at(1000));
        assert_eq!(
            events(&mut c),
            vec![Event::Failed(MapError::Timeout(Protocol::Pcp))]
        );
        assert_eq!(c.poll_timeout(), None);
        assert!(sent(&mut c).is_empty());
    }

    #[test]
    fn p5_pcp_response_with_wrong_nonce_is_ignored() {
        let mut c = client();
        c.start(at(0));
        let req = sent(&mut c).pop().expect("request");
        let good = answer(&req, ResultCode::Success, 3600, 5, ext());
        let before = c.poll_timeout();
        let mut wrong_nonce = good.clone();
        wrong_nonce[24] ^= 1;
        let mut wrong_protocol = good.clone();
        wrong_protocol[36] = 6;
        let mut wrong_port = good.clone();
        wrong_port[41] ^= 1;
        let mut refusal_wrong_nonce = answer(&req, ResultCode::NotAuthorized, 0, 5, ext());
        refusal_wrong_nonce[35] ^= 0xff;
        for bad in [wrong_nonce, wrong_protocol, wrong_port, refusal_wrong_nonce] {
            c.handle_udp(at(10), gw_addr(), &bad);
            assert!(events(&mut c).is_empty());
            assert_eq!(c.mapping(), None);
            assert_eq!(c.poll_timeout(), before, "no state change");
        }
        c.handle_udp(at(20), gw_addr(), &good);
        assert!(matches!(events(&mut c).as_slice(), [Event::Installed(m)] if m.external == ext()));
    }

    #[test]
    fn answers_from_other_hosts_or_ports_are_ignored() {
        let mut c = client();
        c.start(at(0));
        let req = sent(&mut c).pop().expect("request");
        let good = answer(&req, ResultCode::Success, 3600, 5, ext());
        for from in ["192.168.1.2:5351", "192.168.1.1:5350", "203.0.113.9:5351"] {
            c.handle_udp(at(10), from.parse().expect("literal"), &good);
            assert!(events(&mut c).is_empty(), "{from}");
        }
        // A dual-stack socket reports the gateway IPv4-mapped: that is it.
        c.handle_udp(
            at(10),
            "[::ffff:192.168.1.1]:5351".parse().expect("literal"),
            &good,
        );
        assert!(matches!(events(&mut c).as_slice(), [Event::Installed(_)]));
    }

    /// The events after the gateway answers the first MAP with `result`;
    /// the client must then have no timer left.
    fn events_after_result(result: ResultCode) -> Vec<Event> {
        let mut c = client();
        c.start(at(0));
        let req = sent(&mut c).pop().expect("request");
        c.handle_udp(
            at(10),
            gw_addr(),
            &answer(&req, result, 30, 5, SocketAddr::new(gw(), 0)),
        );
        let out = events(&mut c);
        assert_eq!(c.poll_timeout(), None, "a failed probe keeps no timer");
        out
    }

    #[test]
    fn p6_network_failure_is_double_nat() {
        match events_after_result(ResultCode::NetworkFailure).as_slice() {
            [Event::Failed(e)] => assert!(e.is_double_nat(), "{e:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_result_is_refused_with_the_rfc_name() {
        assert_eq!(
            events_after_result(ResultCode::NotAuthorized),
            vec![Event::Failed(MapError::Refused {
                protocol: Protocol::Pcp,
                reason: "NOT_AUTHORIZED (2)".to_owned()
            })]
        );
    }

    #[test]
    fn success_with_zero_lifetime_or_port_is_malformed() {
        for (lifetime, port) in [(0, 61000), (3600, 0)] {
            let mut c = client();
            c.start(at(0));
            let req = sent(&mut c).pop().expect("request");
            let e = SocketAddr::new(ext().ip(), port);
            c.handle_udp(
                at(10),
                gw_addr(),
                &answer(&req, ResultCode::Success, lifetime, 5, e),
            );
            assert!(matches!(
                events(&mut c).as_slice(),
                [Event::Failed(MapError::Malformed {
                    protocol: Protocol::Pcp,
                    ..
                })]
            ));
            assert_eq!(c.mapping(), None);
        }
    }

    #[test]
    fn unsupp_version_from_a_natpmp_server_fails_the_probe() {
        let mut c = client();
        c.start(at(0));
        sent(&mut c);
        c.handle_udp(at(10), gw_addr(), &[0, 0x81, 0, 1, 0, 0, 0, 9]);
        assert!(matches!(
            events(&mut c).as_slice(),
            [Event::Failed(MapError::Refused { protocol: Protocol::Pcp, reason })] if reason.contains("UNSUPP_VERSION")
        ));
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn unsupp_version_after_a_version_2_answer_is_ignored() {
        let mut c = client();
        installed(&mut c, at(0), 5);
        c.handle_timeout(at(1_800_000));
        assert_eq!(sent(&mut c).len(), 1);
        c.handle_udp(at(1_800_010), gw_addr(), &[0, 0x81, 0, 1, 0, 0, 0, 9]);
        assert!(events(&mut c).is_empty());
        assert!(c.mapping().is_some());
    }

    #[test]
    fn late_duplicate_answers_are_ignored() {
        let mut c = client();
        c.start(at(0));
        let req = sent(&mut c).pop().expect("request");
        let a = answer(&req, ResultCode::Success, 3600, 5, ext());
        c.handle_udp(at(10), gw_addr(), &a);
        assert_eq!(events(&mut c).len(), 1);
        let timeout = c.poll_timeout();
        c.handle_udp(at(20), gw_addr(), &a);
        assert!(events(&mut c).is_empty());
        assert_eq!(c.poll_timeout(), timeout);
    }

    #[test]
    fn p4_renews_at_half_the_granted_lifetime_with_the_same_nonce() {
        let mut c = client();
        let m = installed(&mut c, at(0), 100);
        assert_eq!(c.poll_timeout(), Some(at(1_800_000)));
        c.handle_timeout(at(1_799_999));
        assert!(sent(&mut c).is_empty());
        c.handle_timeout(at(1_800_000));
        let renewal = sent(&mut c).pop().expect("renewal");
        let r = MapRequest::decode(&renewal).expect("decodes");
        assert_eq!(r.nonce, c.nonce());
        assert_eq!(r.lifetime, 3600);
        // The previous assignment is suggested (RFC 6887 §11.2.1).
        assert_eq!(r.suggested_external_port, ext().port());
        assert_eq!(from_wire_ip(r.suggested_external_ip), ext().ip());
        // Still installed while renewing.
        assert_eq!(c.mapping(), Some(m));
        let moved: SocketAddr = "203.0.113.7:61002".parse().expect("literal");
        c.handle_udp(
            at(1_800_050),
            gw_addr(),
            &answer(&renewal, ResultCode::Success, 3600, 1900, moved),
        );
        let renewed = Mapping {
            external: moved,
            granted_at: at(1_800_050),
            ..m
        };
        assert_eq!(events(&mut c), vec![Event::Installed(renewed)]);
        assert_eq!(c.poll_timeout(), Some(at(3_600_050)));
    }

    #[test]
    fn renewal_keeps_trying_until_the_mapping_expires() {
        let mut c = client();
        installed(&mut c, at(0), 100);
        let mut now = at(1_800_000);
        c.handle_timeout(now);
        let mut sends = sent(&mut c).len();
        while let Some(t) = c.poll_timeout() {
            now = t;
            c.handle_timeout(now);
            sends += sent(&mut c).len();
        }
        assert_eq!(now, at(3_600_000), "gave up at expiry");
        assert!(sends > 10, "{sends}");
        assert_eq!(
            events(&mut c),
            vec![Event::Failed(MapError::Timeout(Protocol::Pcp))]
        );
        assert_eq!(c.mapping(), None);
    }

    #[test]
    fn p4_an_epoch_that_keeps_pace_is_no_restart() {
        let mut c = client();
        installed(&mut c, at(0), 100);
        c.handle_timeout(at(1_800_000));
        let renewal = sent(&mut c).pop().expect("renewal");
        // 7/8 of 1800 s is 1575 s; minus 2 s of slack.
        c.handle_udp(
            at(1_800_000),
            gw_addr(),
            &answer(&renewal, ResultCode::Success, 3600, 100 + 1573, ext()),
        );
        assert!(matches!(events(&mut c).as_slice(), [Event::Installed(_)]));
    }

    #[test]
    fn p4_gateway_restart_in_a_renewal_answer_reports_it_and_reinstalls() {
        let mut c = client();
        installed(&mut c, at(0), 100);
        c.handle_timeout(at(1_800_000));
        let renewal = sent(&mut c).pop().expect("renewal");
        // The gateway rebooted 20 s ago.
        c.handle_udp(
            at(1_800_020),
            gw_addr(),
            &answer(&renewal, ResultCode::Success, 3600, 20, ext()),
        );
        assert_eq!(events(&mut c), vec![Event::GatewayRestarted(Protocol::Pcp)]);
        assert_eq!(c.mapping(), None);
        let reinstall = sent(&mut c).pop().expect("re-install at once");
        let r = MapRequest::decode(&reinstall).expect("decodes");
        assert_eq!(r.nonce, c.nonce());
        assert_eq!(r.lifetime, 3600);
        assert_eq!(r.suggested_external_port, ext().port());
        c.handle_udp(
            at(1_800_030),
            gw_addr(),
            &answer(&reinstall, ResultCode::Success, 3600, 20, ext()),
        );
        assert!(
            matches!(events(&mut c).as_slice(), [Event::Installed(m)] if m.granted_at == at(1_800_030))
        );
    }

    #[test]
    fn p4_announce_with_a_restarted_epoch_reinstalls() {
        let mut c = client();
        installed(&mut c, at(0), 5000);
        let announce = Response {
            result: ResultCode::Success,
            lifetime: 0,
            epoch: 3,
            body: ResponseBody::Announce,
        }
        .encode();
        // From another host: ignored.
        c.handle_udp(
            at(60_000),
            "192.168.1.9:5351".parse().expect("literal"),
            &announce,
        );
        assert!(events(&mut c).is_empty());
        c.handle_udp(at(60_000), gw_addr(), &announce);
        assert_eq!(events(&mut c), vec![Event::GatewayRestarted(Protocol::Pcp)]);
        assert_eq!(sent(&mut c).len(), 1, "re-install at once");
        // An announce that keeps pace does nothing.
        let mut c = client();
        installed(&mut c, at(0), 5000);
        let fine = Response {
            epoch: 5060,
            ..Response::decode(&announce).expect("decodes")
        };
        c.handle_udp(at(60_000), gw_addr(), &fine.encode());
        assert!(events(&mut c).is_empty());
        assert!(sent(&mut c).is_empty());
    }

    #[test]
    fn p4_delete_sends_lifetime_zero_with_the_same_nonce_and_reports_deleted() {
        let mut c = client();
        installed(&mut c, at(0), 100);
        c.delete(at(5000));
        assert_eq!(c.mapping(), None);
        let del = sent(&mut c).pop().expect("delete");
        let r = MapRequest::decode(&del).expect("decodes");
        assert_eq!(r.lifetime, 0);
        assert_eq!(r.nonce, c.nonce());
        assert_eq!(r.internal_port, internal().port());
        // A late answer to the earlier MAP does not end the deletion.
        let late = answer(&del, ResultCode::Success, 3600, 105, ext());
        c.handle_udp(at(5010), gw_addr(), &late);
        assert!(events(&mut c).is_empty());
        c.handle_udp(
            at(5020),
            gw_addr(),
            &answer(&del, ResultCode::Success, 0, 105, ext()),
        );
        assert_eq!(events(&mut c), vec![Event::Deleted(Protocol::Pcp)]);
        assert_eq!(c.poll_timeout(), None);
        // No more renewals.
        c.handle_timeout(at(10_000_000));
        assert!(sent(&mut c).is_empty());
    }

    #[test]
    fn delete_with_nothing_installed_is_immediate() {
        let mut c = client();
        c.delete(at(0));
        assert_eq!(events(&mut c), vec![Event::Deleted(Protocol::Pcp)]);
        assert!(sent(&mut c).is_empty());
    }

    #[test]
    fn p4_a_deletion_without_an_answer_fails_with_a_timeout() {
        let mut c = client();
        installed(&mut c, at(0), 100);
        c.delete(at(1000));
        c.delete(at(1001));
        assert_eq!(sent(&mut c).len(), 1, "a second delete is no new exchange");
        c.handle_timeout(at(2000));
        assert_eq!(
            events(&mut c),
            vec![Event::Failed(MapError::Timeout(Protocol::Pcp))]
        );
        assert_eq!(c.poll_timeout(), None);
    }

    /// P4: a gateway that refuses the deletion has not deleted the mapping
    /// (miniupnpd 2.3.1 refuses to delete an IPv6 pinhole it renewed, with
    /// `NOT_AUTHORIZED`): that is a failure, not `Deleted`.
    #[test]
    fn p4_a_refused_deletion_is_a_failure_not_deleted() {
        let mut c = client();
        installed(&mut c, at(0), 100);
        c.delete(at(5000));
        let del = sent(&mut c).pop().expect("delete");
        c.handle_udp(
            at(5020),
            gw_addr(),
            &answer(&del, ResultCode::NotAuthorized, 0, 105, ext()),
        );
        assert_eq!(
            events(&mut c),
            vec![Event::Failed(MapError::Refused {
                protocol: Protocol::Pcp,
                reason: "NOT_AUTHORIZED (2)".to_owned()
            })]
        );
        assert_eq!(c.mapping(), None);
        assert_eq!(c.poll_timeout(), None, "nothing held, nothing renewed");
    }

    #[test]
    fn delete_while_installing_deletes_at_the_gateway() {
        let mut c = client();
        c.start(at(0));
        sent(&mut c);
        c.delete(at(100));
        let del = sent(&mut c).pop().expect("delete");
        assert_eq!(MapRequest::decode(&del).map(|r| r.lifetime), Ok(0));
        c.handle_udp(
            at(120),
            gw_addr(),
            &answer(&del, ResultCode::Success, 0, 1, ext()),
        );
        assert_eq!(events(&mut c), vec![Event::Deleted(Protocol::Pcp)]);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..1200)) {
            let _ = Response::decode(&data);
            let _ = MapRequest::decode(&data);
        }

        #[test]
        fn plausible_headers_with_arbitrary_tails_never_panic(
            op in prop_oneof![Just(0x80u8), Just(0x81), Just(0x01), any::<u8>()],
            tail in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut data = vec![VERSION, op, 0, 0];
            data.extend_from_slice(&tail);
            let _ = Response::decode(&data);
            let _ = MapRequest::decode(&data);
            data.truncate(data.len() / 4 * 4);
            let _ = Response::decode(&data);
            let _ = MapRequest::decode(&data);
        }

        #[test]
        fn request_round_trips(
            lifetime: u32, ip: [u8; 16], nonce: [u8; 12], protocol: u8,
            internal_port: u16, port: u16, sip: [u8; 16],
        ) {
            let r = MapRequest {
                lifetime,
                client_ip: Ipv6Addr::from(ip),
                nonce,
                protocol,
                internal_port,
                suggested_external_port: port,
                suggested_external_ip: Ipv6Addr::from(sip),
            };
            prop_assert_eq!(MapRequest::decode(&r.encode()), Ok(r));
        }

        #[test]
        fn response_round_trips(
            result: u8, lifetime: u32, epoch: u32, announce: bool, nonce: [u8; 12],
            protocol: u8, internal_port: u16, external_port: u16, ip: [u8; 16],
        ) {
            let body = if announce {
                ResponseBody::Announce
            } else {
                ResponseBody::Map(MapPayload {
                    nonce,
                    protocol,
                    internal_port,
                    external_port,
                    external_ip: Ipv6Addr::from(ip),
                })
            };
            let r = Response { result: ResultCode::from_u8(result), lifetime, epoch, body };
            prop_assert_eq!(Response::decode(&r.encode()), Ok(r));
        }

        #[test]
        fn p1_every_transmit_goes_to_the_gateway_whatever_arrives(
            steps in proptest::collection::vec(
                (any::<bool>(), any::<[u8; 4]>(), any::<u16>(), proptest::collection::vec(any::<u8>(), 0..80), 0u64..5_000_000, 0u8..4),
                0..40,
            ),
        ) {
            let mut c = client();
            let mut now = at(0);
            c.start(now);
            let mut last_request = c.core.requests.map_request(3600).encode().to_vec();
            for (from_gateway, ip, port, mut bytes, advance_ms, kind) in steps {
                now = now.saturating_add(Duration::from_millis(advance_ms));
                let from = if from_gateway {
                    gw_addr()
                } else {
                    SocketAddr::from((ip, port))
                };
                // Sometimes a well-formed answer, possibly bent.
                if kind == 1 {
                    let mut a = answer(&last_request, ResultCode::Success, 60, (advance_ms / 1000) as u32, ext());
                    if let Some(b) = bytes.first() {
                        let i = usize::from(*b) % a.len();
                        a[i] ^= bytes.get(1).copied().unwrap_or(1);
                    }
                    bytes = a;
                }
                match kind {
                    2 => c.handle_timeout(now),
                    3 => c.delete(now),
                    _ => c.handle_udp(now, from, &bytes),
                }
                if c.poll_timeout().is_none() && kind != 3 {
                    c.start(now);
                }
                while let Some(t) = c.poll_transmit() {
                    let Transmit::Udp { to, payload } = t else {
                        panic!("HTTP from PCP");
                    };
                    prop_assert_eq!(to, gw_addr());
                    let r = MapRequest::decode(&payload).expect("we send valid requests");
                    prop_assert_eq!(r.nonce, c.nonce());
                    last_request = payload;
                }
                while c.poll_event().is_some() {}
            }
        }
    }
}
