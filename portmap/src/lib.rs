//! Port mapping for natrix, sans-IO: clients for PCP (RFC 6887), NAT-PMP
//! (RFC 6886) and UPnP-IGD, and a [`supervisor`] that probes them in order,
//! keeps the best mapping, renews it and deletes it on shutdown.
//!
//! Every machine has the house shape: `handle_*` for what arrives (a UDP
//! datagram, an HTTP response, a timeout), `poll_*` for what to do next (a
//! [`Transmit`], the next timeout, an [`Event`]). Time ([`Instant`]) and
//! randomness (a seed) are passed in; nothing here reads a clock, opens a
//! socket or resolves a name. The driver performs the I/O: UDP to the
//! gateway's port 5351 (PCP, NAT-PMP), SSDP to 239.255.255.250:1900, and
//! HTTP over TCP (UPnP).
//!
//! # Hardening (`docs/security.md`, P1–P7)
//!
//! - P1: targets come only from [`Gateway`] (the OS routing table's default
//!   gateway, given by the driver) and the fixed SSDP group
//!   ([`SSDP_GROUP_V4`]). No datagram or document chooses a target: an SSDP
//!   answer or a device description pointing at any other host is refused.
//! - P2: a mapping for an unspecified or loopback internal address is
//!   [`MapError::BadInternalAddress`], in every build.
//! - P3: the granted external port is the one reported, and the external
//!   address is read at install.
//! - P4: renewal at half the granted lifetime; a gateway restart (the
//!   PCP/NAT-PMP epoch, UPnP-IGD's missing entry) re-installs;
//!   [`supervisor::Supervisor::shutdown`] deletes.
//! - P5: a PCP answer whose nonce does not match is ignored.
//! - P6: a private or shared (100.64/10) external address is double NAT.

pub mod natpmp;
pub mod pcp;
pub mod probe;
pub mod supervisor;
pub mod upnp;

#[cfg(test)]
mod testing;
mod udp_client;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

pub use natrix_proto::Instant;

/// The UDP port PCP and NAT-PMP servers listen on.
pub const PCP_PORT: u16 = 5351;

/// The SSDP multicast group and port (IPv4).
pub const SSDP_GROUP_V4: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(239, 255, 255, 250)), 1900);

/// The mapping lifetime requested by default (the spec's 3600 s).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// The gateways the OS routing table names (the driver reads them; P1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gateway {
    /// The IPv4 default gateway.
    pub v4: Option<Ipv4Addr>,
    /// The IPv6 default gateway.
    pub v6: Option<std::net::Ipv6Addr>,
}

/// Which protocol a mapping came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// Port Control Protocol (RFC 6887).
    Pcp,
    /// NAT Port Mapping Protocol (RFC 6886).
    NatPmp,
    /// UPnP Internet Gateway Device (WANIPConnection / WANPPPConnection).
    UpnpIgd,
}

impl Protocol {
    /// A short name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Pcp => "PCP",
            Protocol::NatPmp => "NAT-PMP",
            Protocol::UpnpIgd => "UPnP-IGD",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What to map: the node's own UDP socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappingRequest {
    /// The internal address: the local IP the node uses toward the gateway
    /// and its bound UDP port. Unspecified or loopback is refused (P2).
    pub internal: SocketAddr,
    /// The lifetime to ask for.
    pub lifetime: Duration,
}

impl MappingRequest {
    /// A request for `internal` with [`DEFAULT_LIFETIME`].
    ///
    /// # Errors
    /// [`MapError::BadInternalAddress`] for an unspecified or loopback
    /// address, or port 0 (P2).
    pub fn new(internal: SocketAddr) -> Result<Self, MapError> {
        check_internal(internal)?;
        Ok(MappingRequest {
            internal,
            lifetime: DEFAULT_LIFETIME,
        })
    }
}

/// P2: the internal address must be a real local address.
///
/// # Errors
/// [`MapError::BadInternalAddress`].
pub fn check_internal(internal: SocketAddr) -> Result<(), MapError> {
    let ip = internal.ip();
    if ip.is_unspecified() || ip.is_loopback() || internal.port() == 0 {
        return Err(MapError::BadInternalAddress(internal));
    }
    Ok(())
}

/// An installed mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Who granted it.
    pub protocol: Protocol,
    /// The internal address it maps to.
    pub internal: SocketAddr,
    /// The external address and port the gateway granted (P3).
    pub external: SocketAddr,
    /// The lifetime the gateway granted.
    pub lifetime: Duration,
    /// When it was granted.
    pub granted_at: Instant,
}

impl Mapping {
    /// When it should be renewed: half its lifetime after it was granted
    /// (P4).
    #[must_use]
    pub fn renew_at(&self) -> Instant {
        self.granted_at.saturating_add(self.lifetime / 2)
    }

    /// When it expires.
    #[must_use]
    pub fn expires_at(&self) -> Instant {
        self.granted_at.saturating_add(self.lifetime)
    }

    /// Whether the external address is private or shared address space:
    /// the gateway is itself behind a NAT (P6).
    #[must_use]
    pub fn is_double_nat(&self) -> bool {
        is_double_nat_address(self.external.ip())
    }
}

/// P6: a private (RFC 1918, fc00::/7), shared (100.64.0.0/10), link-local or
/// loopback address is no public address: a mapping to it is double NAT.
#[must_use]
pub fn is_double_nat_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_link_local()
                || v4.is_loopback()
                || v4.is_unspecified()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || v6.is_loopback()
                || v6.is_unspecified()
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_double_nat_address(IpAddr::V4(v4)))
        }
    }
}

/// What a machine asks the driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transmit {
    /// Send a UDP datagram to `to` (the gateway's port 5351, or the SSDP
    /// group).
    Udp {
        /// Destination.
        to: SocketAddr,
        /// The datagram.
        payload: Vec<u8>,
    },
    /// Perform one HTTP/1.1 exchange over TCP with `to` (UPnP): connect,
    /// write `request`, read the response (at most `max_response` bytes)
    /// until the server closes or the response is complete, and hand it to
    /// the machine's `handle_http` with the same `id`. The driver applies
    /// no timeout of its own beyond the machine's.
    Http {
        /// Matches the answer to the request.
        id: u64,
        /// The gateway's HTTP address (always the gateway's own IP, P1).
        to: SocketAddr,
        /// The whole request, headers and body.
        request: Vec<u8>,
        /// The most the driver may read.
        max_response: usize,
    },
}

/// Why a mapping could not be made or kept.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// P2: the internal address is unspecified, loopback, or port 0.
    #[error("cannot map {0}: the internal address must be a local unicast address and port")]
    BadInternalAddress(SocketAddr),
    /// No gateway in the routing table for this family.
    #[error("no default gateway")]
    NoGateway,
    /// No answer within the protocol's timeout.
    #[error("{0} did not answer in time")]
    Timeout(Protocol),
    /// The gateway answered with an error result code.
    #[error("{protocol} refused: {reason}")]
    Refused {
        /// Which protocol.
        protocol: Protocol,
        /// The result code or fault, in words.
        reason: String,
    },
    /// The gateway's answer could not be parsed (truncated, oversized,
    /// wrong opcode, bad XML, …).
    #[error("{protocol}: malformed answer: {reason}")]
    Malformed {
        /// Which protocol.
        protocol: Protocol,
        /// What was wrong.
        reason: String,
    },
    /// P1: an answer named a host other than the gateway.
    #[error("{protocol}: refused a reference to {addr}, which is not the gateway")]
    NotTheGateway {
        /// Which protocol.
        protocol: Protocol,
        /// The address it pointed at.
        addr: IpAddr,
    },
    /// The HTTP exchange failed (connect, reset, too large).
    #[error("HTTP to the gateway failed: {0}")]
    Http(String),
    /// P6: the gateway answered that it has no usable public address of its
    /// own — what a gateway behind another NAT says (miniupnpd on a private
    /// WAN: NAT-PMP "network failure", an empty UPnP external address). A
    /// mapping there could not be reached from the Internet: double NAT.
    #[error(
        "{protocol}: the gateway has no public address of its own ({detail}); it is probably behind another NAT (double NAT)"
    )]
    NoExternalAddress {
        /// Which protocol.
        protocol: Protocol,
        /// What the gateway said.
        detail: String,
    },
}

impl MapError {
    /// The gateway said it has no public address: double NAT (P6).
    #[must_use]
    pub fn is_double_nat(&self) -> bool {
        matches!(self, MapError::NoExternalAddress { .. })
    }
}

/// What a machine reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A mapping was installed or renewed.
    Installed(Mapping),
    /// The protocol is not available or the mapping failed.
    Failed(MapError),
    /// The gateway restarted (P4): the NAT-PMP/PCP epoch went back, or the
    /// UPnP-IGD gateway no longer holds the mapping's entry. The machine
    /// re-installs on its own and reports `Installed` again.
    GatewayRestarted(Protocol),
    /// The mapping was deleted (on request).
    Deleted(Protocol),
}

/// One protocol's client: probes the gateway, installs the mapping, renews
/// it at half its granted lifetime on its own, notices a gateway restart and
/// re-installs, and deletes on request. The [`supervisor`] drives several.
pub trait Client {
    /// Its protocol.
    fn protocol(&self) -> Protocol;
    /// Starts (or restarts) probing and installing.
    fn start(&mut self, now: Instant);
    /// A UDP datagram from `from` (the driver passes every datagram its
    /// port-mapping socket receives; the client ignores what is not from
    /// the gateway).
    fn handle_udp(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]);
    /// The answer to [`Transmit::Http`] `id`: the bytes read, or why the
    /// exchange failed.
    fn handle_http(&mut self, now: Instant, id: u64, response: Result<&[u8], String>);
    /// Time passed.
    fn handle_timeout(&mut self, now: Instant);
    /// Deletes the mapping (and stops renewing it); `Deleted` follows once
    /// the gateway confirmed, or at once when nothing was installed.
    fn delete(&mut self, now: Instant);
    /// The next thing to send.
    fn poll_transmit(&mut self) -> Option<Transmit>;
    /// When [`Client::handle_timeout`] is due.
    fn poll_timeout(&self) -> Option<Instant>;
    /// The next event.
    fn poll_event(&mut self) -> Option<Event>;
    /// The installed mapping, if any.
    fn mapping(&self) -> Option<Mapping>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p2_unspecified_loopback_and_port_zero_are_refused_in_every_build() {
        for bad in [
            "0.0.0.0:4000",
            "127.0.0.1:4000",
            "[::]:4000",
            "[::1]:4000",
            "192.168.1.2:0",
        ] {
            let a: SocketAddr = bad.parse().expect("literal");
            assert_eq!(
                MappingRequest::new(a),
                Err(MapError::BadInternalAddress(a)),
                "{bad}"
            );
        }
        assert!(MappingRequest::new("192.168.1.2:4000".parse().expect("literal")).is_ok());
    }

    #[test]
    fn p6_private_shared_and_link_local_externals_are_double_nat() {
        for ip in [
            "10.0.0.1",
            "172.16.0.1",
            "192.168.0.1",
            "100.64.0.1",
            "100.127.255.254",
            "169.254.1.1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_double_nat_address(ip.parse().expect("literal")), "{ip}");
        }
        for ip in [
            "100.63.255.255",
            "100.128.0.1",
            "203.0.113.7",
            "198.18.1.2",
            "2001:db8::1",
        ] {
            assert!(!is_double_nat_address(ip.parse().expect("literal")), "{ip}");
        }
    }
}
