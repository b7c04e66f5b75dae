//! NAT-PMP client (RFC 6886): one UDP mapping through an IPv4 gateway,
//! sans-IO.
//!
//! The codec ([`Request`], [`Response`]) reads and writes the RFC's byte
//! layout and never panics. [`NatPmpClient`] is the [`Client`] machine.
//!
//! # Behaviour
//!
//! - The only destination is the gateway's port 5351 (P1); datagrams from any
//!   other address are ignored.
//! - An install (and a renewal) is two exchanges: the external address
//!   request (opcode 0) and the UDP mapping request (opcode 1). Both go out at
//!   once and are retransmitted together, 250 ms, doubling, capped at 64 s,
//!   until each is answered; `Installed` follows when both are, with the
//!   external address read in this exchange and the mapped port the gateway
//!   reported (P3). An install gives up after `timeout`
//!   ([`MapError::Timeout`]); a renewal keeps trying until the mapping
//!   expires.
//! - The first request suggests the internal port as the external port (RFC
//!   6886 §3.3); renewals and re-installs suggest the port last mapped.
//! - A mapping answer for another internal port or for TCP is ignored.
//! - Error results, a granted lifetime or port of 0, and an external address
//!   of 0.0.0.0 (the gateway has none yet) are [`Event::Failed`].
//! - Epoch (RFC 6886 §3.6, P4): every accepted answer, and an unsolicited
//!   external address announcement from the gateway, is checked: the gateway
//!   restarted when its seconds-since-start-of-epoch went back or is less than
//!   `previous + 7/8 × elapsed − 2 s`. With a mapping held that gives
//!   [`Event::GatewayRestarted`] and an immediate re-install. An announcement
//!   of a different external address re-installs too (without the event).
//! - [`Client::delete`] sends the mapping request with lifetime 0 and
//!   suggested external port 0 (RFC 6886 §3.4); a successful answer gives
//!   [`Event::Deleted`]. A refusal gives [`Event::Failed`] with
//!   [`MapError::Refused`], and no answer within `timeout` gives
//!   [`MapError::Timeout`] (P4: the mapping may stay at the gateway until its
//!   lifetime runs out; the client holds nothing either way). With nothing
//!   installed and nothing in flight `Deleted` comes at once.
//!
//! # Lengths
//!
//! A success answer must hold its whole fixed part (12 bytes for the
//! external address, 16 for a mapping); an error answer needs only version,
//! opcode, result and epoch (8 bytes), since RFC 6886 leaves its other fields
//! undefined (absent fields decode as 0). Bytes after the fixed part are
//! ignored, for forward compatibility: nothing is read from them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::udp_client::{
    Exchange, Lifecycle, Purpose, Requests, State, canonical_internal_ip, check_grant,
    requested_lifetime,
};
use crate::{Client, Event, Instant, MapError, Mapping, MappingRequest, Protocol, Transmit};

/// The NAT-PMP version.
pub const VERSION: u8 = 0;
/// Opcode of the external address request.
pub const OP_EXTERNAL_ADDRESS: u8 = 0;
/// Opcode of the UDP mapping request.
pub const OP_MAP_UDP: u8 = 1;
/// Opcode of the TCP mapping request.
pub const OP_MAP_TCP: u8 = 2;
/// Added to the request's opcode in a response.
pub const RESPONSE_FLAG: u8 = 128;
/// Length of the external address request.
pub const EXTERNAL_ADDRESS_REQUEST_LEN: usize = 2;
/// Length of a mapping request.
pub const MAP_REQUEST_LEN: usize = 12;
/// Length of the external address response.
pub const EXTERNAL_ADDRESS_RESPONSE_LEN: usize = 12;
/// Length of a mapping response.
pub const MAP_RESPONSE_LEN: usize = 16;
/// Length of an error response's defined part: version, opcode, result and
/// epoch.
pub const ERROR_RESPONSE_LEN: usize = 8;

/// A NAT-PMP result code (RFC 6886 §3.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResultCode {
    /// 0: success.
    Success,
    /// 1: unsupported version.
    UnsupportedVersion,
    /// 2: not authorized or refused (the box supports mapping but the user
    /// turned it off).
    NotAuthorized,
    /// 3: network failure (the gateway has no DHCP lease, for example).
    NetworkFailure,
    /// 4: out of resources.
    OutOfResources,
    /// 5: unsupported opcode.
    UnsupportedOpcode,
    /// Any other value.
    Other(u16),
}

impl ResultCode {
    /// The code for a value.
    #[must_use]
    pub fn from_u16(code: u16) -> Self {
        match code {
            0 => ResultCode::Success,
            1 => ResultCode::UnsupportedVersion,
            2 => ResultCode::NotAuthorized,
            3 => ResultCode::NetworkFailure,
            4 => ResultCode::OutOfResources,
            5 => ResultCode::UnsupportedOpcode,
            other => ResultCode::Other(other),
        }
    }

    /// The code's value.
    #[must_use]
    pub fn to_u16(self) -> u16 {
        match self {
            ResultCode::Success => 0,
            ResultCode::UnsupportedVersion => 1,
            ResultCode::NotAuthorized => 2,
            ResultCode::NetworkFailure => 3,
            ResultCode::OutOfResources => 4,
            ResultCode::UnsupportedOpcode => 5,
            ResultCode::Other(code) => code,
        }
    }

    /// A name in words.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ResultCode::Success => "success",
            ResultCode::UnsupportedVersion => "unsupported version",
            ResultCode::NotAuthorized => "not authorized/refused",
            ResultCode::NetworkFailure => "network failure",
            ResultCode::OutOfResources => "out of resources",
            ResultCode::UnsupportedOpcode => "unsupported opcode",
            ResultCode::Other(_) => "unknown result",
        }
    }
}

impl std::fmt::Display for ResultCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.to_u16())
    }
}

/// Why a NAT-PMP message could not be decoded.
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
    /// A version other than 0 (a PCP server answers version 2).
    #[error("wrong version {0}")]
    WrongVersion(u8),
    /// A response was expected but the opcode is below 128.
    #[error("opcode {0} is not a response")]
    NotAResponse(u8),
    /// A request was expected but the opcode is 128 or above.
    #[error("opcode {0} is not a request")]
    NotARequest(u8),
    /// An opcode other than external address, map UDP or map TCP.
    #[error("unknown opcode {0}")]
    UnknownOpcode(u8),
}

/// A mapping request (RFC 6886 §3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapRequest {
    /// [`OP_MAP_UDP`] or [`OP_MAP_TCP`].
    pub opcode: u8,
    /// The internal port.
    pub internal_port: u16,
    /// The suggested external port (0 for none, and for a deletion).
    pub suggested_external_port: u16,
    /// The requested lifetime in seconds; 0 deletes.
    pub lifetime: u32,
}

impl MapRequest {
    /// The request's bytes.
    #[must_use]
    pub fn encode(&self) -> [u8; MAP_REQUEST_LEN] {
        let mut b = [0u8; MAP_REQUEST_LEN];
        b[0] = VERSION;
        b[1] = self.opcode;
        b[4..6].copy_from_slice(&self.internal_port.to_be_bytes());
        b[6..8].copy_from_slice(&self.suggested_external_port.to_be_bytes());
        b[8..12].copy_from_slice(&self.lifetime.to_be_bytes());
        b
    }
}

/// A NAT-PMP request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// The external address request (opcode 0).
    ExternalAddress,
    /// A mapping request (opcode 1 or 2).
    Map(MapRequest),
}

/// The external address request's bytes.
#[must_use]
pub fn encode_external_address_request() -> [u8; EXTERNAL_ADDRESS_REQUEST_LEN] {
    [VERSION, OP_EXTERNAL_ADDRESS]
}

impl Request {
    /// The request's bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::ExternalAddress => encode_external_address_request().to_vec(),
            Request::Map(m) => m.encode().to_vec(),
        }
    }

    /// Parses a request (extra bytes after the fixed part are ignored).
    ///
    /// # Errors
    /// A [`DecodeError`] saying what is wrong.
    pub fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        let [version, opcode] = fixed::<2>(data)?;
        if version != VERSION {
            return Err(DecodeError::WrongVersion(version));
        }
        match opcode {
            OP_EXTERNAL_ADDRESS => Ok(Request::ExternalAddress),
            OP_MAP_UDP | OP_MAP_TCP => {
                let b = fixed::<MAP_REQUEST_LEN>(data)?;
                Ok(Request::Map(MapRequest {
                    opcode,
                    internal_port: u16::from_be_bytes([b[4], b[5]]),
                    suggested_external_port: u16::from_be_bytes([b[6], b[7]]),
                    lifetime: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
                }))
            }
            op if op >= RESPONSE_FLAG => Err(DecodeError::NotARequest(op)),
            op => Err(DecodeError::UnknownOpcode(op)),
        }
    }
}

/// The external address response (opcode 128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExternalAddressResponse {
    /// The result code.
    pub result: ResultCode,
    /// Seconds since the start of the gateway's epoch.
    pub epoch: u32,
    /// The external address (0.0.0.0: none yet).
    pub external_ip: Ipv4Addr,
}

/// A mapping response (opcode 129 or 130).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapResponse {
    /// The request's opcode: [`OP_MAP_UDP`] or [`OP_MAP_TCP`].
    pub opcode: u8,
    /// The result code.
    pub result: ResultCode,
    /// Seconds since the start of the gateway's epoch.
    pub epoch: u32,
    /// The internal port.
    pub internal_port: u16,
    /// The mapped external port.
    pub external_port: u16,
    /// The granted lifetime in seconds.
    pub lifetime: u32,
}

/// A NAT-PMP response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Response {
    /// Opcode 128.
    ExternalAddress(ExternalAddressResponse),
    /// Opcode 129 (UDP) or 130 (TCP).
    Map(MapResponse),
}

impl Response {
    /// The response's bytes (the full fixed part, also for errors).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Response::ExternalAddress(r) => {
                let mut b = vec![0u8; EXTERNAL_ADDRESS_RESPONSE_LEN];
                b[1] = RESPONSE_FLAG | OP_EXTERNAL_ADDRESS;
                b[2..4].copy_from_slice(&r.result.to_u16().to_be_bytes());
                b[4..8].copy_from_slice(&r.epoch.to_be_bytes());
                b[8..12].copy_from_slice(&r.external_ip.octets());
                b
            }
            Response::Map(r) => {
                let mut b = vec![0u8; MAP_RESPONSE_LEN];
                b[1] = RESPONSE_FLAG.wrapping_add(r.opcode);
                b[2..4].copy_from_slice(&r.result.to_u16().to_be_bytes());
                b[4..8].copy_from_slice(&r.epoch.to_be_bytes());
                b[8..10].copy_from_slice(&r.internal_port.to_be_bytes());
                b[10..12].copy_from_slice(&r.external_port.to_be_bytes());
                b[12..16].copy_from_slice(&r.lifetime.to_be_bytes());
                b
            }
        }
    }

    /// Parses a response. A success needs its whole fixed part, an error
    /// only the first 8 bytes (absent fields are 0); extra bytes are
    /// ignored.
    ///
    /// # Errors
    /// A [`DecodeError`] saying what is wrong.
    pub fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        let [version, opcode] = fixed::<2>(data)?;
        if version != VERSION {
            return Err(DecodeError::WrongVersion(version));
        }
        if opcode < RESPONSE_FLAG {
            return Err(DecodeError::NotAResponse(opcode));
        }
        let request_opcode = opcode - RESPONSE_FLAG;
        let full = match request_opcode {
            OP_EXTERNAL_ADDRESS => EXTERNAL_ADDRESS_RESPONSE_LEN,
            OP_MAP_UDP | OP_MAP_TCP => MAP_RESPONSE_LEN,
            _ => return Err(DecodeError::UnknownOpcode(opcode)),
        };
        let head = fixed::<ERROR_RESPONSE_LEN>(data)?;
        let result = ResultCode::from_u16(u16::from_be_bytes([head[2], head[3]]));
        let epoch = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        if result == ResultCode::Success && data.len() < full {
            return Err(DecodeError::Truncated {
                len: data.len(),
                need: full,
            });
        }
        // Zero-padded: an error answer may stop after the epoch.
        let mut b = [0u8; MAP_RESPONSE_LEN];
        let n = data.len().min(MAP_RESPONSE_LEN);
        b[..n].copy_from_slice(&data[..n]);
        Ok(if request_opcode == OP_EXTERNAL_ADDRESS {
            Response::ExternalAddress(ExternalAddressResponse {
                result,
                epoch,
                external_ip: Ipv4Addr::new(b[8], b[9], b[10], b[11]),
            })
        } else {
            Response::Map(MapResponse {
                opcode: request_opcode,
                result,
                epoch,
                internal_port: u16::from_be_bytes([b[8], b[9]]),
                external_port: u16::from_be_bytes([b[10], b[11]]),
                lifetime: u32::from_be_bytes([b[12], b[13], b[14], b[15]]),
            })
        })
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

/// The NAT-PMP requests of one exchange, and which are answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pending {
    map_payload: [u8; MAP_REQUEST_LEN],
    /// The external address, once answered (not asked when deleting).
    address: Option<Ipv4Addr>,
    /// The mapped port and lifetime, once answered.
    map: Option<(u16, u32)>,
}

/// The NAT-PMP requests: the external address request and the UDP mapping
/// request.
#[derive(Debug)]
struct NatPmpRequests {
    internal_port: u16,
    /// The lifetime asked for, seconds.
    lifetime: u32,
    /// The port last mapped, suggested on renewal.
    last_port: Option<u16>,
}

impl Requests for NatPmpRequests {
    type Pending = Pending;

    const PROTOCOL: Protocol = Protocol::NatPmp;

    /// RFC 6886 §3.6: any step back.
    const EPOCH_SLACK: u32 = 0;

    fn pending(&self, purpose: Purpose) -> Pending {
        let (suggested_external_port, lifetime) = match purpose {
            Purpose::Install | Purpose::Renew => {
                (self.last_port.unwrap_or(self.internal_port), self.lifetime)
            }
            Purpose::Delete => (0, 0),
        };
        let map = MapRequest {
            opcode: OP_MAP_UDP,
            internal_port: self.internal_port,
            suggested_external_port,
            lifetime,
        };
        Pending {
            map_payload: map.encode(),
            address: None,
            map: None,
        }
    }

    fn outstanding(pending: &Pending, purpose: Purpose, mut send: impl FnMut(&[u8])) {
        if purpose != Purpose::Delete && pending.address.is_none() {
            send(&encode_external_address_request());
        }
        if pending.map.is_none() {
            send(&pending.map_payload);
        }
    }
}

/// The NAT-PMP [`Client`]: one UDP mapping through one IPv4 gateway.
#[derive(Debug)]
pub struct NatPmpClient {
    core: Lifecycle<NatPmpRequests>,
}

impl NatPmpClient {
    /// A client mapping `request` (an IPv4 internal address) through
    /// `gateway`; `timeout` bounds an install or a deletion without an
    /// answer.
    ///
    /// # Errors
    /// [`MapError::BadInternalAddress`] for an unspecified or loopback
    /// internal address, port 0, or an IPv6 internal address (NAT-PMP maps
    /// IPv4 only) (P2); [`MapError::NoGateway`] for an unspecified,
    /// broadcast or multicast gateway.
    pub fn new(
        gateway: Ipv4Addr,
        request: MappingRequest,
        timeout: Duration,
    ) -> Result<Self, MapError> {
        if !canonical_internal_ip(request.internal)?.is_ipv4() {
            return Err(MapError::BadInternalAddress(request.internal));
        }
        if gateway.is_unspecified() || gateway.is_broadcast() || gateway.is_multicast() {
            return Err(MapError::NoGateway);
        }
        let requests = NatPmpRequests {
            internal_port: request.internal.port(),
            lifetime: requested_lifetime(&request),
            last_port: None,
        };
        Ok(NatPmpClient {
            core: Lifecycle::new(requests, IpAddr::V4(gateway), request.internal, timeout),
        })
    }

    fn on_external_address(&mut self, now: Instant, r: ExternalAddressResponse) {
        match self.core.state() {
            State::Idle => {}
            State::Installed { .. } => {
                // An unsolicited announcement (or a late duplicate).
                if r.result != ResultCode::Success {
                    return;
                }
                let lost = self.core.observe_epoch(r.epoch, now);
                let moved = self
                    .core
                    .mapping()
                    .is_some_and(|m| m.external.ip() != IpAddr::V4(r.external_ip));
                if lost {
                    self.core.restart_detected(now);
                } else if moved {
                    self.core.start(now);
                }
            }
            State::Requesting(mut exchange) => {
                if exchange.purpose == Purpose::Delete || exchange.pending.address.is_some() {
                    return;
                }
                let lost = self.core.observe_epoch(r.epoch, now);
                if lost && exchange.purpose == Purpose::Renew {
                    self.core.restart_detected(now);
                } else if r.result == ResultCode::NetworkFailure {
                    self.core.fail(MapError::NoExternalAddress {
                        protocol: Protocol::NatPmp,
                        detail: r.result.to_string(),
                    });
                } else if r.result != ResultCode::Success {
                    self.core.refused(r.result);
                } else if r.external_ip.is_unspecified() {
                    self.core.fail(MapError::NoExternalAddress {
                        protocol: Protocol::NatPmp,
                        detail: "external address 0.0.0.0".to_owned(),
                    });
                } else {
                    exchange.pending.address = Some(r.external_ip);
                    self.progress(now, exchange);
                }
            }
        }
    }

    fn on_map(&mut self, now: Instant, r: MapResponse) {
        let port = self.core.requests.internal_port;
        let for_us =
            r.internal_port == port || (r.result != ResultCode::Success && r.internal_port == 0);
        if r.opcode != OP_MAP_UDP || !for_us {
            tracing::debug!(gateway = %self.core.gateway(), "ignoring a NAT-PMP answer for another mapping");
            return;
        }
        let State::Requesting(mut exchange) = self.core.state() else {
            return;
        };
        if exchange.pending.map.is_some() {
            return;
        }
        if exchange.purpose == Purpose::Delete {
            if r.result == ResultCode::Success && r.lifetime != 0 {
                // A late answer to the mapping request before the deletion.
                return;
            }
            let refusal = (r.result != ResultCode::Success).then_some(r.result);
            self.core.deletion_answered(now, r.epoch, refusal);
            return;
        }
        let lost = self.core.observe_epoch(r.epoch, now);
        if lost && exchange.purpose == Purpose::Renew {
            self.core.restart_detected(now);
        } else if r.result != ResultCode::Success {
            self.core.refused(r.result);
        } else if let Err(e) = check_grant(Protocol::NatPmp, r.lifetime, r.external_port) {
            self.core.fail(e);
        } else {
            exchange.pending.map = Some((r.external_port, r.lifetime));
            self.progress(now, exchange);
        }
    }

    /// Installs once both answers are in, or waits for the other.
    fn progress(&mut self, now: Instant, exchange: Exchange<Pending>) {
        let (Some(ip), Some((port, lifetime))) = (exchange.pending.address, exchange.pending.map)
        else {
            self.core.keep_waiting(exchange);
            return;
        };
        self.core.requests.last_port = Some(port);
        self.core
            .install(now, SocketAddr::new(IpAddr::V4(ip), port), lifetime);
    }
}

impl Client for NatPmpClient {
    fn protocol(&self) -> Protocol {
        Protocol::NatPmp
    }

    fn start(&mut self, now: Instant) {
        self.core.start(now);
    }

    fn handle_udp(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        if !self.core.accepts(from) {
            return;
        }
        match Response::decode(datagram) {
            Ok(Response::ExternalAddress(r)) => self.on_external_address(now, r),
            Ok(Response::Map(r)) => self.on_map(now, r),
            Err(error) => {
                tracing::debug!(%error, gateway = %self.core.gateway(), "ignoring a malformed NAT-PMP answer");
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

    fn gw() -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 1, 1)
    }

    fn gw_addr() -> SocketAddr {
        SocketAddr::new(IpAddr::V4(gw()), PCP_PORT)
    }

    fn internal() -> SocketAddr {
        "192.168.1.20:4000".parse().expect("literal")
    }

    fn ext_ip() -> Ipv4Addr {
        Ipv4Addr::new(203, 0, 113, 7)
    }

    fn client_with(timeout: Duration) -> NatPmpClient {
        let request = MappingRequest::new(internal()).expect("valid");
        NatPmpClient::new(gw(), request, timeout).expect("valid")
    }

    fn client() -> NatPmpClient {
        client_with(Duration::from_secs(1))
    }

    fn sent(c: &mut NatPmpClient) -> Vec<Vec<u8>> {
        testing::sent(c, gw_addr())
    }

    fn address_answer(epoch: u32, ip: Ipv4Addr) -> Vec<u8> {
        Response::ExternalAddress(ExternalAddressResponse {
            result: ResultCode::Success,
            epoch,
            external_ip: ip,
        })
        .encode()
    }

    fn map_answer(result: ResultCode, epoch: u32, port: u16, lifetime: u32) -> Vec<u8> {
        map_answer_for(OP_MAP_UDP, internal().port(), result, epoch, port, lifetime)
    }

    /// A mapping answer for `opcode` and `internal_port`.
    fn map_answer_for(
        opcode: u8,
        internal_port: u16,
        result: ResultCode,
        epoch: u32,
        port: u16,
        lifetime: u32,
    ) -> Vec<u8> {
        Response::Map(MapResponse {
            opcode,
            result,
            epoch,
            internal_port,
            external_port: port,
            lifetime,
        })
        .encode()
    }

    /// Starts at `now` and answers both requests (port 61000, 3600 s).
    fn installed(c: &mut NatPmpClient, now: Instant, epoch: u32) -> Mapping {
        c.start(now);
        assert_eq!(sent(c).len(), 2);
        c.handle_udp(now, gw_addr(), &address_answer(epoch, ext_ip()));
        c.handle_udp(
            now,
            gw_addr(),
            &map_answer(ResultCode::Success, epoch, 61000, 3600),
        );
        match events(c).as_slice() {
            [Event::Installed(m)] => *m,
            other => panic!("expected Installed, got {other:?}"),
        }
    }

    #[test]
    fn requests_have_the_rfc_layout_and_round_trip() {
        assert_eq!(encode_external_address_request(), [0, 0]);
        assert_eq!(Request::decode(&[0, 0]), Ok(Request::ExternalAddress));
        let m = MapRequest {
            opcode: OP_MAP_UDP,
            internal_port: 4000,
            suggested_external_port: 4001,
            lifetime: 7200,
        };
        let bytes = [0, 1, 0, 0, 0x0f, 0xa0, 0x0f, 0xa1, 0, 0, 0x1c, 0x20];
        assert_eq!(m.encode(), bytes);
        assert_eq!(Request::decode(&bytes), Ok(Request::Map(m)));
        assert_eq!(Request::Map(m).encode(), bytes);
        assert_eq!(Request::ExternalAddress.encode(), vec![0, 0]);
    }

    #[test]
    fn responses_have_the_rfc_layout_and_round_trip() {
        let addr = [0, 128, 0, 0, 0, 0, 0x04, 0xd2, 203, 0, 113, 7];
        let a = Response::ExternalAddress(ExternalAddressResponse {
            result: ResultCode::Success,
            epoch: 1234,
            external_ip: ext_ip(),
        });
        assert_eq!(Response::decode(&addr), Ok(a));
        assert_eq!(a.encode(), addr);
        let map = [
            0, 129, 0, 0, 0, 0, 0x04, 0xd2, 0x0f, 0xa0, 0xee, 0x48, 0, 0, 0x02, 0x58,
        ];
        let m = Response::Map(MapResponse {
            opcode: OP_MAP_UDP,
            result: ResultCode::Success,
            epoch: 1234,
            internal_port: 4000,
            external_port: 61000,
            lifetime: 600,
        });
        assert_eq!(Response::decode(&map), Ok(m));
        assert_eq!(m.encode(), map);
        let tcp = [0, 130, 0, 2, 0, 0, 0, 1, 0, 80, 0, 0, 0, 0, 0, 0];
        assert!(matches!(
            Response::decode(&tcp),
            Ok(Response::Map(MapResponse {
                opcode: OP_MAP_TCP,
                result: ResultCode::NotAuthorized,
                ..
            }))
        ));
    }

    #[test]
    fn extra_bytes_are_ignored_and_short_errors_are_accepted() {
        let mut addr = address_answer(9, ext_ip());
        addr.extend_from_slice(&[0xde, 0xad]);
        assert_eq!(
            Response::decode(&addr),
            Ok(Response::ExternalAddress(ExternalAddressResponse {
                result: ResultCode::Success,
                epoch: 9,
                external_ip: ext_ip()
            }))
        );
        // An error answer may stop after the epoch.
        assert_eq!(
            Response::decode(&[0, 129, 0, 3, 0, 0, 0, 9]),
            Ok(Response::Map(MapResponse {
                opcode: OP_MAP_UDP,
                result: ResultCode::NetworkFailure,
                epoch: 9,
                internal_port: 0,
                external_port: 0,
                lifetime: 0,
            }))
        );
    }

    #[test]
    fn every_decode_error() {
        assert_eq!(
            Response::decode(&[0]),
            Err(DecodeError::Truncated { len: 1, need: 2 })
        );
        assert_eq!(
            Response::decode(&[0, 128, 0, 0, 0, 0]),
            Err(DecodeError::Truncated { len: 6, need: 8 })
        );
        let addr = address_answer(9, ext_ip());
        assert_eq!(
            Response::decode(&addr[..11]),
            Err(DecodeError::Truncated { len: 11, need: 12 })
        );
        let map = map_answer(ResultCode::Success, 9, 61000, 60);
        assert_eq!(
            Response::decode(&map[..15]),
            Err(DecodeError::Truncated { len: 15, need: 16 })
        );
        assert_eq!(
            Response::decode(&[2, 0x81, 0, 0]),
            Err(DecodeError::WrongVersion(2))
        );
        assert_eq!(
            Response::decode(&[0, 1, 0, 0]),
            Err(DecodeError::NotAResponse(1))
        );
        assert_eq!(
            Response::decode(&[0, 131, 0, 0, 0, 0, 0, 0]),
            Err(DecodeError::UnknownOpcode(131))
        );
        assert_eq!(
            Request::decode(&[]),
            Err(DecodeError::Truncated { len: 0, need: 2 })
        );
        assert_eq!(
            Request::decode(&[0, 1, 0, 0]),
            Err(DecodeError::Truncated { len: 4, need: 12 })
        );
        assert_eq!(Request::decode(&[1, 0]), Err(DecodeError::WrongVersion(1)));
        assert_eq!(
            Request::decode(&[0, 128]),
            Err(DecodeError::NotARequest(128))
        );
        assert_eq!(Request::decode(&[0, 3]), Err(DecodeError::UnknownOpcode(3)));
    }

    #[test]
    fn result_codes_are_named() {
        let names = [
            "success",
            "unsupported version",
            "not authorized/refused",
            "network failure",
            "out of resources",
            "unsupported opcode",
        ];
        for (code, name) in (0u16..).zip(names) {
            assert_eq!(ResultCode::from_u16(code).name(), name);
            assert_eq!(ResultCode::from_u16(code).to_u16(), code);
        }
        assert_eq!(ResultCode::from_u16(6), ResultCode::Other(6));
        assert_eq!(ResultCode::Other(300).to_u16(), 300);
        assert_eq!(
            ResultCode::OutOfResources.to_string(),
            "out of resources (4)"
        );
    }

    #[test]
    fn p3_install_sends_both_requests_and_reports_the_granted_port() {
        let mut c = client();
        c.start(at(0));
        let reqs = sent(&mut c);
        assert_eq!(
            reqs,
            vec![
                vec![0, 0],
                // Suggests the internal port (RFC 6886 §3.3), asks 3600 s.
                vec![0, 1, 0, 0, 0x0f, 0xa0, 0x0f, 0xa0, 0, 0, 0x0e, 0x10],
            ]
        );
        // The mapping answer alone installs nothing.
        c.handle_udp(
            at(30),
            gw_addr(),
            &map_answer(ResultCode::Success, 50, 61000, 600),
        );
        assert!(events(&mut c).is_empty());
        assert_eq!(c.mapping(), None);
        c.handle_udp(at(40), gw_addr(), &address_answer(50, ext_ip()));
        let m = Mapping {
            protocol: Protocol::NatPmp,
            internal: internal(),
            external: SocketAddr::new(IpAddr::V4(ext_ip()), 61000),
            lifetime: Duration::from_secs(600),
            granted_at: at(40),
        };
        assert_eq!(events(&mut c), vec![Event::Installed(m)]);
        assert_eq!(c.mapping(), Some(m));
        assert_eq!(c.poll_timeout(), Some(at(40 + 300_000)));
    }

    #[test]
    fn p2_ipv6_and_bad_internal_addresses_are_refused() {
        let timeout = Duration::from_secs(1);
        let v6 =
            MappingRequest::new("[2001:db8::2]:4000".parse().expect("literal")).expect("valid");
        assert_eq!(
            NatPmpClient::new(gw(), v6, timeout).map(|_| ()),
            Err(MapError::BadInternalAddress(v6.internal))
        );
        for bad in ["[::ffff:127.0.0.1]:4000", "192.168.1.20:0"] {
            let request = unchecked_request(bad);
            assert_eq!(
                NatPmpClient::new(gw(), request, timeout).map(|_| ()),
                Err(MapError::BadInternalAddress(request.internal)),
                "{bad}"
            );
        }
        let ok = MappingRequest::new(internal()).expect("valid");
        assert_eq!(
            NatPmpClient::new(Ipv4Addr::UNSPECIFIED, ok, timeout).map(|_| ()),
            Err(MapError::NoGateway)
        );
    }

    #[test]
    fn retransmission_schedule_starts_at_250ms_and_doubles() {
        let mut c = client_with(Duration::from_secs(10));
        c.start(at(0));
        assert_eq!(sent(&mut c).len(), 2);
        let mut times = Vec::new();
        let mut now = at(0);
        while let Some(t) = c.poll_timeout() {
            now = t;
            c.handle_timeout(now);
            let s = sent(&mut c);
            if !s.is_empty() {
                assert_eq!(s.len(), 2, "both requests again");
                times.push(now.as_nanos() / 1_000_000);
            }
        }
        assert_eq!(times, vec![250, 750, 1750, 3750, 7750]);
        assert_eq!(now, at(10_000));
        assert_eq!(
            events(&mut c),
            vec![Event::Failed(MapError::Timeout(Protocol::NatPmp))]
        );
    }

    #[test]
    fn only_the_unanswered_request_is_retransmitted() {
        let mut c = client();
        c.start(at(0));
        sent(&mut c);
        c.handle_udp(at(10), gw_addr(), &address_answer(5, ext_ip()));
        c.handle_timeout(at(250));
        let s = sent(&mut c);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0][1], OP_MAP_UDP);
    }

    #[test]
    fn timeout_without_any_answer_fails_after_the_timeout() {
        let mut c = client();
        c.start(at(0));
        c.handle_timeout(at(999));
        assert!(events(&mut c).is_empty());
        c.handle_timeout(at(1000));
        assert_eq!(
            events(&mut c),
            vec![Event::Failed(MapError::Timeout(Protocol::NatPmp))]
        );
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn answers_for_other_ports_tcp_or_hosts_are_ignored() {
        let mut c = client();
        c.start(at(0));
        sent(&mut c);
        let other_port = map_answer_for(OP_MAP_UDP, 4001, ResultCode::Success, 5, 61000, 60);
        let tcp = map_answer_for(OP_MAP_TCP, 4000, ResultCode::Success, 5, 61000, 60);
        c.handle_udp(at(10), gw_addr(), &other_port);
        c.handle_udp(at(10), gw_addr(), &tcp);
        for from in ["192.168.1.2:5351", "192.168.1.1:5350"] {
            let from = from.parse().expect("literal");
            c.handle_udp(at(10), from, &address_answer(5, ext_ip()));
            c.handle_udp(at(10), from, &map_answer(ResultCode::Success, 5, 1, 60));
        }
        assert!(events(&mut c).is_empty());
        assert_eq!(c.mapping(), None);
        c.handle_udp(at(20), gw_addr(), &address_answer(5, ext_ip()));
        c.handle_udp(
            at(20),
            gw_addr(),
            &map_answer(ResultCode::Success, 5, 61000, 60),
        );
        assert!(matches!(events(&mut c).as_slice(), [Event::Installed(_)]));
    }

    /// The events after the gateway's first answer is `datagram`.
    fn events_after(datagram: &[u8]) -> Vec<Event> {
        let mut c = client();
        c.start(at(0));
        c.handle_udp(at(10), gw_addr(), datagram);
        events(&mut c)
    }

    #[test]
    fn p6_network_failure_on_the_address_request_is_double_nat() {
        // What miniupnpd answers when its WAN address is private.
        let failure = Response::ExternalAddress(ExternalAddressResponse {
            result: ResultCode::NetworkFailure,
            epoch: 5,
            external_ip: Ipv4Addr::UNSPECIFIED,
        })
        .encode();
        match events_after(&failure).as_slice() {
            [Event::Failed(e)] => {
                assert!(e.is_double_nat(), "{e:?}");
                assert!(e.to_string().contains("double NAT"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        // So is an external address of 0.0.0.0.
        assert!(matches!(
            events_after(&address_answer(5, Ipv4Addr::UNSPECIFIED)).as_slice(),
            [Event::Failed(MapError::NoExternalAddress {
                protocol: Protocol::NatPmp,
                ..
            })]
        ));
        // Any other refusal is not taken for double NAT.
        assert!(matches!(
            events_after(&map_answer(ResultCode::OutOfResources, 5, 0, 0)).as_slice(),
            [Event::Failed(MapError::Refused { .. })]
        ));
    }

    #[test]
    fn error_results_fail() {
        assert_eq!(
            events_after(&map_answer(ResultCode::NotAuthorized, 5, 0, 0)),
            vec![Event::Failed(MapError::Refused {
                protocol: Protocol::NatPmp,
                reason: "not authorized/refused (2)".to_owned()
            })]
        );
        assert!(matches!(
            events_after(&map_answer(ResultCode::Success, 5, 0, 60)).as_slice(),
            [Event::Failed(MapError::Malformed {
                protocol: Protocol::NatPmp,
                ..
            })]
        ));
    }

    #[test]
    fn p4_renews_at_half_the_granted_lifetime() {
        let mut c = client();
        let m = installed(&mut c, at(0), 100);
        assert_eq!(c.poll_timeout(), Some(at(1_800_000)));
        c.handle_timeout(at(1_800_000));
        let reqs = sent(&mut c);
        assert_eq!(reqs.len(), 2, "address re-read and mapping renewed");
        assert_eq!(
            Request::decode(&reqs[1]),
            Ok(Request::Map(MapRequest {
                opcode: OP_MAP_UDP,
                internal_port: 4000,
                suggested_external_port: 61000,
                lifetime: 3600,
            }))
        );
        assert_eq!(c.mapping(), Some(m));
        let new_ip = Ipv4Addr::new(198, 51, 100, 1);
        c.handle_udp(at(1_800_010), gw_addr(), &address_answer(1900, new_ip));
        c.handle_udp(
            at(1_800_020),
            gw_addr(),
            &map_answer(ResultCode::Success, 1900, 61000, 3600),
        );
        let renewed = Mapping {
            external: SocketAddr::new(IpAddr::V4(new_ip), 61000),
            granted_at: at(1_800_020),
            ..m
        };
        assert_eq!(events(&mut c), vec![Event::Installed(renewed)]);
    }

    #[test]
    fn p4_gateway_restart_in_a_renewal_answer_reports_it_and_reinstalls() {
        let mut c = client();
        installed(&mut c, at(0), 100);
        c.handle_timeout(at(1_800_000));
        sent(&mut c);
        // Rebooted 30 s ago: 30 < 100 + 1575 - 2.
        c.handle_udp(at(1_800_010), gw_addr(), &address_answer(30, ext_ip()));
        assert_eq!(
            events(&mut c),
            vec![Event::GatewayRestarted(Protocol::NatPmp)]
        );
        assert_eq!(c.mapping(), None);
        assert_eq!(sent(&mut c).len(), 2, "re-install at once");
        c.handle_udp(at(1_800_020), gw_addr(), &address_answer(30, ext_ip()));
        c.handle_udp(
            at(1_800_020),
            gw_addr(),
            &map_answer(ResultCode::Success, 30, 61000, 3600),
        );
        assert!(matches!(events(&mut c).as_slice(), [Event::Installed(_)]));
    }

    #[test]
    fn p4_an_epoch_that_keeps_pace_is_no_restart() {
        let mut c = client();
        installed(&mut c, at(0), 100);
        c.handle_timeout(at(1_800_000));
        sent(&mut c);
        c.handle_udp(
            at(1_800_000),
            gw_addr(),
            &address_answer(100 + 1573, ext_ip()),
        );
        c.handle_udp(
            at(1_800_000),
            gw_addr(),
            &map_answer(ResultCode::Success, 100 + 1573, 61000, 3600),
        );
        assert!(matches!(events(&mut c).as_slice(), [Event::Installed(_)]));
    }

    #[test]
    fn p4_unsolicited_announcement_of_a_restart_reinstalls() {
        let mut c = client();
        installed(&mut c, at(0), 5000);
        c.handle_udp(at(60_000), gw_addr(), &address_answer(2, ext_ip()));
        assert_eq!(
            events(&mut c),
            vec![Event::GatewayRestarted(Protocol::NatPmp)]
        );
        assert_eq!(sent(&mut c).len(), 2);
    }

    #[test]
    fn an_announced_new_external_address_reinstalls() {
        let mut c = client();
        installed(&mut c, at(0), 5000);
        c.handle_udp(at(60_000), gw_addr(), &address_answer(5060, ext_ip()));
        assert!(events(&mut c).is_empty());
        assert!(sent(&mut c).is_empty(), "same address: nothing to do");
        let new_ip = Ipv4Addr::new(198, 51, 100, 1);
        c.handle_udp(at(70_000), gw_addr(), &address_answer(5070, new_ip));
        assert!(events(&mut c).is_empty());
        assert_eq!(sent(&mut c).len(), 2);
        c.handle_udp(at(70_010), gw_addr(), &address_answer(5070, new_ip));
        c.handle_udp(
            at(70_010),
            gw_addr(),
            &map_answer(ResultCode::Success, 5070, 61000, 3600),
        );
        assert!(matches!(
            events(&mut c).as_slice(),
            [Event::Installed(m)] if m.external.ip() == IpAddr::V4(new_ip)
        ));
    }

    #[test]
    fn p4_delete_sends_lifetime_zero_and_port_zero_and_reports_deleted() {
        let mut c = client();
        installed(&mut c, at(0), 100);
        c.delete(at(5000));
        assert_eq!(c.mapping(), None);
        assert_eq!(
            sent(&mut c),
            vec![vec![0, 1, 0, 0, 0x0f, 0xa0, 0, 0, 0, 0, 0, 0]]
        );
        // A late answer to the earlier mapping request does not count.
        c.handle_udp(
            at(5010),
            gw_addr(),
            &map_answer(ResultCode::Success, 105, 61000, 3600),
        );
        assert!(events(&mut c).is_empty());
        c.handle_udp(
            at(5020),
            gw_addr(),
            &map_answer(ResultCode::Success, 105, 0, 0),
        );
        assert_eq!(events(&mut c), vec![Event::Deleted(Protocol::NatPmp)]);
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn delete_with_nothing_installed_is_immediate() {
        let mut c = client();
        c.delete(at(0));
        assert_eq!(events(&mut c), vec![Event::Deleted(Protocol::NatPmp)]);
        assert!(sent(&mut c).is_empty());
    }

    #[test]
    fn p4_a_deletion_without_an_answer_fails_with_a_timeout() {
        let mut c = client();
        installed(&mut c, at(0), 100);
        c.delete(at(1000));
        c.handle_timeout(at(1250));
        assert_eq!(sent(&mut c).len(), 2, "the deletion, retransmitted");
        c.handle_timeout(at(2000));
        assert_eq!(
            events(&mut c),
            vec![Event::Failed(MapError::Timeout(Protocol::NatPmp))]
        );
        assert_eq!(c.mapping(), None);
        assert_eq!(c.poll_timeout(), None);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Response::decode(&data);
            let _ = Request::decode(&data);
        }

        #[test]
        fn responses_round_trip(
            addr: bool, tcp: bool, result: u16, epoch: u32, ip: [u8; 4],
            internal_port: u16, external_port: u16, lifetime: u32,
        ) {
            let r = if addr {
                Response::ExternalAddress(ExternalAddressResponse {
                    result: ResultCode::from_u16(result),
                    epoch,
                    external_ip: Ipv4Addr::from(ip),
                })
            } else {
                Response::Map(MapResponse {
                    opcode: if tcp { OP_MAP_TCP } else { OP_MAP_UDP },
                    result: ResultCode::from_u16(result),
                    epoch,
                    internal_port,
                    external_port,
                    lifetime,
                })
            };
            prop_assert_eq!(Response::decode(&r.encode()), Ok(r));
        }

        #[test]
        fn requests_round_trip(tcp: bool, internal_port: u16, suggested_external_port: u16, lifetime: u32) {
            let r = Request::Map(MapRequest {
                opcode: if tcp { OP_MAP_TCP } else { OP_MAP_UDP },
                internal_port,
                suggested_external_port,
                lifetime,
            });
            prop_assert_eq!(Request::decode(&r.encode()), Ok(r));
        }

        #[test]
        fn p1_every_transmit_goes_to_the_gateway_whatever_arrives(
            steps in proptest::collection::vec(
                (any::<bool>(), any::<[u8; 4]>(), any::<u16>(), proptest::collection::vec(any::<u8>(), 0..24), 0u64..5_000_000, 0u8..5),
                0..40,
            ),
        ) {
            let mut c = client();
            let mut now = at(0);
            c.start(now);
            for (from_gateway, ip, port, bytes, advance_ms, kind) in steps {
                now = now.saturating_add(Duration::from_millis(advance_ms));
                let from = if from_gateway {
                    gw_addr()
                } else {
                    SocketAddr::from((ip, port))
                };
                let epoch = u32::try_from(now.as_nanos() / 1_000_000_000).unwrap_or(u32::MAX);
                let bytes = match kind {
                    1 => address_answer(epoch, Ipv4Addr::from(ip)),
                    2 => map_answer(ResultCode::Success, epoch, port, u32::from(port % 100)),
                    _ => bytes,
                };
                match kind {
                    3 => c.handle_timeout(now),
                    4 => c.delete(now),
                    _ => c.handle_udp(now, from, &bytes),
                }
                if c.poll_timeout().is_none() && kind != 4 {
                    c.start(now);
                }
                while let Some(t) = c.poll_transmit() {
                    let Transmit::Udp { to, payload } = t else {
                        panic!("HTTP from NAT-PMP");
                    };
                    prop_assert_eq!(to, gw_addr());
                    prop_assert!(Request::decode(&payload).is_ok());
                }
                while c.poll_event().is_some() {}
            }
        }
    }
}
