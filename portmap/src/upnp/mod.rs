//! UPnP Internet Gateway Device client (UPnP Device Architecture 1.1,
//! WANIPConnection:1/:2, WANPPPConnection:1), sans-IO.
//!
//! The flow: SSDP M-SEARCH to [`SSDP_GROUP_V4`] →
//! `GET` of the device description named by the gateway's answer →
//! `GetExternalIPAddress` (P3) → `AddAnyPortMapping` (WANIPConnection:2),
//! falling back to `AddPortMapping` → [`Event::Installed`]. The mapping is
//! re-added at half its lifetime (P4) and deleted with `DeletePortMapping`
//! on [`Client::delete`].
//!
//! P4, gateway restarts: UPnP has no epoch, so while installed the client
//! asks the gateway with `GetSpecificPortMappingEntry` whether it still
//! holds the mapping — every [`DEFAULT_CHECK_INTERVAL`] (see
//! [`UpnpClient::with_check_interval`]; never more often than half the
//! lease) and right before each renewal. A `714 NoSuchEntryInArray` fault,
//! or an entry that now maps to another internal address, means the gateway
//! lost it: [`Event::GatewayRestarted`], then the same external port is
//! added again (`GetExternalIPAddress`, `AddAnyPortMapping` suggesting it or
//! `AddPortMapping` of it) and [`Event::Installed`] reported. A check that
//! fails (HTTP error, timeout, another fault) proves nothing: the mapping
//! is kept and checked again at the next interval.
//!
//! P1: every [`Transmit`] goes to the SSDP group or to the gateway's own
//! IPv4 address. An SSDP answer from another source is ignored; an answer,
//! `URLBase` or `controlURL` naming another host (or a host name) is
//! refused; HTTP redirects are never followed. Documents are bounded
//! ([`MAX_DESCRIPTION_RESPONSE`], [`MAX_SOAP_RESPONSE`]) and XML with a DTD
//! is refused (no entity expansion, no XML bomb).

mod http;
mod soap;
mod ssdp;
mod url;
mod xml;

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

pub use http::{
    HttpError, HttpResponse, MAX_DESCRIPTION_RESPONSE, MAX_SOAP_RESPONSE, parse_http_response,
};
pub use ssdp::{
    MAX_SSDP_RESPONSE, SEARCH_MX, SEARCH_TARGETS, SsdpError, SsdpResponse, m_search,
    parse_ssdp_response,
};
pub use url::{HttpUrl, UrlError, parse_http_url};
pub use xml::{
    Description, SERVICE_TYPES, Service, SoapResponse, XmlError, parse_description,
    parse_soap_response,
};

use crate::{
    Client, Event, Instant, MapError, Mapping, MappingRequest, Protocol, SSDP_GROUP_V4, Transmit,
    check_internal,
};
use soap::Action;

/// How long one HTTP exchange (description or SOAP action) may take before
/// the machine gives up on it; a late answer is then ignored by its id.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(3);

/// How many M-SEARCH rounds (each one datagram per [`SEARCH_TARGETS`]
/// entry) are sent within the discovery timeout: at 0, T/4 and T/2.
pub const SEARCH_ROUNDS: u8 = 3;

/// How many external ports `AddPortMapping` tries when the gateway answers
/// `718 ConflictInMappingEntry` (the internal port first).
pub const MAX_PORT_ATTEMPTS: usize = 4;

/// The longest lease asked for (IGD:2 caps leases at one week).
pub const MAX_LEASE: Duration = Duration::from_secs(604_800);

/// How often a permanent mapping (lease 0: asked for, or forced by
/// `725 OnlyPermanentLeasesSupported`) is refreshed. It is reported with a
/// lifetime of twice this, so [`Mapping::renew_at`] is one refresh away.
pub const PERMANENT_REFRESH: Duration = Duration::from_secs(3600);

/// After a failed renewal, when the next attempt is made (while the
/// mapping has not expired).
pub const RENEW_RETRY: Duration = Duration::from_secs(30);

/// How often an installed mapping is checked on the gateway by default
/// (`GetSpecificPortMappingEntry`, P4): a gateway restart is noticed within
/// this, one small HTTP exchange each time. The period used is at most half
/// the granted lifetime (so a short lease is checked at its renewals), and
/// the mapping is also checked right before each renewal.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(30);

/// The most SSDP locations kept to try.
const MAX_LOCATIONS: usize = 4;
/// The most WAN services tried from one description.
const MAX_SERVICES: usize = 4;

/// UPnP error codes (IGD WANIPConnection:2 §2.5).
const ERR_NO_SUCH_ENTRY: u16 = 714;
const ERR_CONFLICT: u16 = 718;
const ERR_ONLY_PERMANENT: u16 = 725;

const P: Protocol = Protocol::UpnpIgd;

fn malformed(reason: impl Into<String>) -> MapError {
    MapError::Malformed {
        protocol: P,
        reason: reason.into(),
    }
}

fn http_error(e: HttpError) -> MapError {
    match e {
        HttpError::TooLarge(_) => MapError::Http(e.to_string()),
        other => malformed(format!("HTTP: {other}")),
    }
}

fn url_error(what: &str, e: UrlError) -> MapError {
    malformed(format!("{what}: {e} (P1: only the gateway's own address)"))
}

/// A WAN connection service on the gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ControlPoint {
    service_type: &'static str,
    url: HttpUrl,
}

impl ControlPoint {
    fn has_add_any(&self) -> bool {
        self.service_type == SERVICE_TYPES[0]
    }
}

/// The exchange in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Describe,
    GetExternalIp,
    /// `AddAnyPortMapping` suggesting external `port`.
    AddAny {
        port: u16,
    },
    Add {
        port: u16,
    },
    Delete {
        port: u16,
    },
    /// `GetSpecificPortMappingEntry` of external `port` (P4); the renewal
    /// follows the answer when `renew_at` has come.
    Check {
        port: u16,
        renew_at: Instant,
    },
}

/// What the chain of exchanges in flight (external address, then add) is
/// for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chain {
    /// The first install: a failing service or location gives way to the
    /// next one.
    Install,
    /// The renewal of the installed mapping: on failure it is kept and
    /// retried until it expires.
    Renew,
    /// Adding external `port` again after the gateway lost it (P4): nothing
    /// is held meanwhile, a failure is final.
    Reinstall { port: u16 },
}

/// What `GetSpecificPortMappingEntry` said about the mapping.
#[derive(Debug)]
enum Entry {
    /// The gateway holds it, for us.
    Ours,
    /// The gateway lost it: why we think so.
    Gone(String),
}

#[derive(Clone, Debug)]
enum State {
    Idle,
    Discovering {
        deadline: Instant,
        next_search: Option<Instant>,
        rounds_left: u8,
    },
    Waiting {
        id: u64,
        op: Op,
        deadline: Instant,
    },
    Installed {
        renew_at: Instant,
        /// When the mapping is next checked on the gateway (P4); never
        /// after `renew_at`.
        check_at: Instant,
    },
    Stopped,
}

/// Why a SOAP action did not succeed.
#[derive(Debug)]
enum SoapFailure {
    /// A SOAP fault (UPnP error).
    Fault(Option<u16>, String),
    /// A non-2xx status without a readable fault.
    Status(u16),
    /// Transport, timeout, malformed answer.
    Other(MapError),
}

impl SoapFailure {
    fn into_error(self, action: &str) -> MapError {
        match self {
            SoapFailure::Fault(code, desc) => MapError::Refused {
                protocol: P,
                reason: match code {
                    Some(c) => format!("{action}: UPnP error {c} {desc}"),
                    None => format!("{action}: SOAP fault {desc}"),
                },
            },
            SoapFailure::Status(s) => MapError::Http(format!("{action}: HTTP status {s}")),
            SoapFailure::Other(e) => e,
        }
    }
}

/// Reads an HTTP response; refuses redirects (P1).
fn read_http(bytes: &[u8], max: usize) -> Result<HttpResponse, MapError> {
    let r = parse_http_response(bytes, max).map_err(http_error)?;
    if (300..400).contains(&r.status) {
        return Err(MapError::Http(format!(
            "HTTP {} redirect to {:?} not followed (P1)",
            r.status,
            r.header("location").unwrap_or("")
        )));
    }
    Ok(r)
}

/// Reads the SOAP response to `action`.
fn read_soap(
    response: Result<&[u8], MapError>,
    action: &str,
) -> Result<Vec<(String, String)>, SoapFailure> {
    let bytes = response.map_err(SoapFailure::Other)?;
    let r = read_http(bytes, MAX_SOAP_RESPONSE).map_err(SoapFailure::Other)?;
    let ok = (200..300).contains(&r.status);
    match parse_soap_response(&r.body, action) {
        Ok(SoapResponse::Ok(args)) if ok => Ok(args),
        Ok(SoapResponse::Fault { code, description }) => Err(SoapFailure::Fault(code, description)),
        _ if !ok => Err(SoapFailure::Status(r.status)),
        Ok(SoapResponse::Ok(_)) => Err(SoapFailure::Status(r.status)),
        Err(e) => Err(SoapFailure::Other(malformed(format!("{action}: {e}")))),
    }
}

/// The lease to ask for: whole seconds, at most [`MAX_LEASE`]; a
/// sub-second lifetime is one second; zero asks for a permanent mapping.
fn lease_secs(lifetime: Duration) -> u32 {
    let secs = lifetime.min(MAX_LEASE).as_secs();
    let secs = if secs == 0 && !lifetime.is_zero() {
        1
    } else {
        secs
    };
    u32::try_from(secs).unwrap_or(u32::MAX)
}

fn arg<'a>(args: &'a [(String, String)], name: &str) -> Option<&'a str> {
    args.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The UPnP-IGD client. See the [module documentation](self).
#[derive(Debug)]
pub struct UpnpClient {
    gateway: Ipv4Addr,
    request: MappingRequest,
    internal: (Ipv4Addr, u16),
    timeout: Duration,
    /// How often an installed mapping is checked (P4); zero: only before
    /// each renewal.
    check_interval: Duration,
    state: State,
    next_id: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    mapping: Option<Mapping>,
    /// Until when SSDP answers are accepted.
    discovery_deadline: Option<Instant>,
    /// SSDP locations on the gateway, not yet tried.
    locations: VecDeque<HttpUrl>,
    /// Every location accepted (so a repeated answer is not tried twice).
    seen: Vec<HttpUrl>,
    /// The description being fetched.
    location: Option<HttpUrl>,
    /// The first SSDP answer refused (P1), reported if nothing better
    /// comes by the deadline.
    refusal: Option<MapError>,
    /// The last error from a location or service, reported when no other
    /// one is left.
    last_error: Option<MapError>,
    /// WAN services not yet tried.
    services: VecDeque<ControlPoint>,
    /// The service in use.
    service: Option<ControlPoint>,
    /// The external address read at install (P3).
    external_ip: Option<Ipv4Addr>,
    /// The lease asked for, seconds (0: permanent).
    lease_secs: u32,
    /// External ports tried by `AddPortMapping` for this install.
    port_attempts: usize,
    /// What the exchange chain in flight is for.
    chain: Chain,
    /// Whether [`Client::delete`] was called while an add was in flight.
    delete_requested: bool,
}

impl UpnpClient {
    /// A client mapping `request` through the IGD at `gateway` (the
    /// routing table's default gateway, P1). `timeout` bounds discovery
    /// (the spec's 2 s); each HTTP exchange is bounded by [`HTTP_TIMEOUT`].
    /// The installed mapping is checked every [`DEFAULT_CHECK_INTERVAL`]
    /// ([`UpnpClient::with_check_interval`] changes it).
    ///
    /// # Errors
    /// [`MapError::BadInternalAddress`] for an unspecified, loopback or
    /// non-IPv4 internal address or port 0 (P2); [`MapError::NoGateway`]
    /// for an unspecified, broadcast or multicast gateway.
    pub fn new(
        gateway: Ipv4Addr,
        request: MappingRequest,
        timeout: Duration,
    ) -> Result<Self, MapError> {
        check_internal(request.internal)?;
        let internal = match request.internal {
            SocketAddr::V4(a) => (*a.ip(), a.port()),
            SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
                Some(v4) => {
                    check_internal(SocketAddr::new(IpAddr::V4(v4), a.port()))?;
                    (v4, a.port())
                }
                None => return Err(MapError::BadInternalAddress(request.internal)),
            },
        };
        if gateway.is_unspecified() || gateway.is_broadcast() || gateway.is_multicast() {
            return Err(MapError::NoGateway);
        }
        Ok(UpnpClient {
            gateway,
            request,
            internal,
            timeout,
            check_interval: DEFAULT_CHECK_INTERVAL,
            state: State::Idle,
            next_id: 1,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            mapping: None,
            discovery_deadline: None,
            locations: VecDeque::new(),
            seen: Vec::new(),
            location: None,
            refusal: None,
            last_error: None,
            services: VecDeque::new(),
            service: None,
            external_ip: None,
            lease_secs: lease_secs(request.lifetime),
            port_attempts: 0,
            chain: Chain::Install,
            delete_requested: false,
        })
    }

    /// Checks the installed mapping on the gateway every `interval`
    /// (`GetSpecificPortMappingEntry`, P4) instead of
    /// [`DEFAULT_CHECK_INTERVAL`]. The period used is at most half the
    /// granted lifetime; the mapping is also checked right before each
    /// renewal. [`Duration::ZERO`] keeps only that check before renewal.
    #[must_use]
    pub fn with_check_interval(mut self, interval: Duration) -> Self {
        self.check_interval = interval;
        self
    }

    /// The lease asked for, in seconds, before any `725` downgrade.
    fn requested_lease(&self) -> u32 {
        lease_secs(self.request.lifetime)
    }

    fn send_searches(&mut self, now: Instant) {
        if let State::Discovering {
            next_search,
            rounds_left,
            ..
        } = &mut self.state
        {
            for st in SEARCH_TARGETS {
                self.transmits.push_back(Transmit::Udp {
                    to: SSDP_GROUP_V4,
                    payload: ssdp::m_search(st),
                });
            }
            *rounds_left = rounds_left.saturating_sub(1);
            *next_search = (*rounds_left > 0).then(|| now.saturating_add(self.timeout / 4));
        }
    }

    fn send(&mut self, now: Instant, op: Op, to: SocketAddr, request: Vec<u8>, max: usize) {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        debug_assert_eq!(to.ip(), IpAddr::V4(self.gateway), "P1");
        self.transmits.push_back(Transmit::Http {
            id,
            to,
            request,
            max_response: max,
        });
        self.state = State::Waiting {
            id,
            op,
            deadline: now.saturating_add(HTTP_TIMEOUT),
        };
    }

    fn send_action(&mut self, now: Instant, op: Op) {
        let Some(service) = self.service.clone() else {
            self.fail(now, malformed("no WAN service"));
            return;
        };
        let lease = self.lease_secs;
        let action = match op {
            Op::GetExternalIp => Action::get_external_ip(),
            Op::AddAny { port } => Action::add_any(port, self.internal, lease),
            Op::Add { port } => Action::add(port, self.internal, lease),
            Op::Delete { port } => Action::delete(port),
            Op::Check { port, .. } => Action::get_specific(port),
            Op::Describe => return,
        };
        let body = action.envelope(service.service_type);
        let request = http::soap_request(
            &service.url,
            &action.soap_action(service.service_type),
            &body,
        );
        self.send(
            now,
            op,
            service.url.socket_addr(),
            request,
            MAX_SOAP_RESPONSE,
        );
    }

    /// Fetches the next SSDP location's description, or fails when none is
    /// left (answers arriving while a description is fetched are queued).
    fn next_location(&mut self, now: Instant) {
        if let Some(url) = self.locations.pop_front() {
            let request = http::get_request(&url);
            let to = url.socket_addr();
            self.location = Some(url);
            self.send(now, Op::Describe, to, request, MAX_DESCRIPTION_RESPONSE);
            return;
        }
        self.discovery_deadline = None;
        let err = self
            .last_error
            .take()
            .or_else(|| self.refusal.take())
            .unwrap_or(MapError::Timeout(P));
        self.fail(now, err);
    }

    /// Tries the next WAN service, or the next location.
    fn next_service(&mut self, now: Instant) {
        match self.services.pop_front() {
            Some(cp) => {
                self.service = Some(cp);
                self.send_action(now, Op::GetExternalIp);
            }
            None => self.next_location(now),
        }
    }

    fn on_ssdp(&mut self, now: Instant, datagram: &[u8]) {
        let answer = match parse_ssdp_response(datagram) {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "UPnP: ignored SSDP datagram from the gateway");
                return;
            }
        };
        let url = match parse_http_url(&answer.location) {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(location = %answer.location, error = %e, "UPnP: refused SSDP LOCATION");
                self.refusal
                    .get_or_insert_with(|| url_error("SSDP LOCATION", e));
                return;
            }
        };
        if url.host != self.gateway {
            tracing::debug!(location = %answer.location, "UPnP: refused SSDP LOCATION on another host (P1)");
            self.refusal.get_or_insert(MapError::NotTheGateway {
                protocol: P,
                addr: IpAddr::V4(url.host),
            });
            return;
        }
        if self.seen.contains(&url) || self.seen.len() >= 2 * MAX_LOCATIONS {
            return;
        }
        self.seen.push(url.clone());
        if self.locations.len() < MAX_LOCATIONS {
            if answer.is_igd() {
                self.locations.push_front(url);
            } else {
                self.locations.push_back(url);
            }
        }
        if matches!(self.state, State::Discovering { .. }) {
            self.next_location(now);
        }
    }

    fn on_description(&mut self, now: Instant, response: Result<&[u8], MapError>) {
        match self.read_description(response) {
            Ok(services) => {
                self.services = services.into();
                self.next_service(now);
            }
            Err(e) => {
                tracing::debug!(error = %e, "UPnP: description refused");
                self.last_error = Some(e);
                self.next_location(now);
            }
        }
    }

    fn read_description(
        &self,
        response: Result<&[u8], MapError>,
    ) -> Result<Vec<ControlPoint>, MapError> {
        let location = self
            .location
            .clone()
            .ok_or_else(|| malformed("no location"))?;
        let r = read_http(response?, MAX_DESCRIPTION_RESPONSE)?;
        if !(200..300).contains(&r.status) {
            return Err(MapError::Http(format!(
                "device description: HTTP status {}",
                r.status
            )));
        }
        let d = parse_description(&r.body)
            .map_err(|e| malformed(format!("device description: {e}")))?;
        // URLBase is honoured only on the gateway's own address (P1).
        let base = match d.url_base.as_deref().map(parse_http_url) {
            Some(Ok(u)) if u.host == self.gateway => u,
            Some(_) => {
                tracing::debug!(url_base = ?d.url_base, "UPnP: ignored URLBase not on the gateway");
                location
            }
            None => location,
        };
        let mut points = Vec::new();
        let mut refusal = None;
        for s in d.wan_services() {
            let Some(service_type) = SERVICE_TYPES.iter().find(|t| **t == s.service_type) else {
                continue;
            };
            match base.join(&s.control_url) {
                Ok(url) if url.host == self.gateway => {
                    let cp = ControlPoint { service_type, url };
                    if !points.contains(&cp) && points.len() < MAX_SERVICES {
                        points.push(cp);
                    }
                }
                Ok(url) => {
                    refusal.get_or_insert(MapError::NotTheGateway {
                        protocol: P,
                        addr: IpAddr::V4(url.host),
                    });
                }
                Err(e) => {
                    refusal.get_or_insert(url_error("controlURL", e));
                }
            }
        }
        if points.is_empty() {
            return Err(refusal.unwrap_or_else(|| MapError::Refused {
                protocol: P,
                reason: "the gateway offers no WANIPConnection or WANPPPConnection service".into(),
            }));
        }
        Ok(points)
    }

    fn on_external_ip(&mut self, now: Instant, response: Result<&[u8], MapError>) {
        let result = read_soap(response, "GetExternalIPAddress")
            .map_err(|f| f.into_error("GetExternalIPAddress"))
            .and_then(|args| {
                let text = arg(&args, "NewExternalIPAddress").unwrap_or("");
                match text.parse::<Ipv4Addr>() {
                    Ok(ip) if !ip.is_unspecified() => Ok(ip),
                    // miniupnpd on a private WAN answers with an empty one.
                    _ if text.trim().is_empty() || text.trim() == "0.0.0.0" => {
                        Err(MapError::NoExternalAddress {
                            protocol: P,
                            detail: format!("GetExternalIPAddress gave {text:?}"),
                        })
                    }
                    _ => Err(malformed(format!(
                        "GetExternalIPAddress: no usable external address ({text:?})"
                    ))),
                }
            });
        match result {
            Ok(ip) => {
                self.external_ip = Some(ip);
                self.add(now);
            }
            Err(e) if self.chain == Chain::Install => {
                tracing::debug!(error = %e, "UPnP: GetExternalIPAddress failed");
                self.last_error = Some(e);
                self.next_service(now);
            }
            Err(e) => self.fail(now, e),
        }
    }

    /// Starts adding (or re-adding) the mapping.
    fn add(&mut self, now: Instant) {
        self.port_attempts = 0;
        let add_any = self.service.as_ref().is_some_and(ControlPoint::has_add_any);
        if let (Chain::Renew, Some(m)) = (self.chain, self.mapping) {
            self.port_attempts = 1;
            self.send_action(
                now,
                Op::Add {
                    port: m.external.port(),
                },
            );
        } else if let Chain::Reinstall { port } = self.chain {
            // The port the gateway lost: asked for again, as the install
            // does (another one if it is taken meanwhile, P3).
            if add_any {
                self.send_action(now, Op::AddAny { port });
            } else {
                self.port_attempts = 1;
                self.send_action(now, Op::Add { port });
            }
        } else if add_any {
            self.send_action(
                now,
                Op::AddAny {
                    port: self.internal.1,
                },
            );
        } else {
            self.port_attempts = 1;
            self.send_action(
                now,
                Op::Add {
                    port: self.internal.1,
                },
            );
        }
    }

    fn on_add_any(&mut self, now: Instant, suggested: u16, response: Result<&[u8], MapError>) {
        match read_soap(response, "AddAnyPortMapping") {
            Ok(args) => match arg(&args, "NewReservedPort").and_then(|p| p.parse::<u16>().ok()) {
                Some(port) if port != 0 => self.install(now, port),
                _ => self.fail(
                    now,
                    malformed("AddAnyPortMapping: no valid NewReservedPort"),
                ),
            },
            Err(f @ (SoapFailure::Fault(..) | SoapFailure::Status(_))) => {
                tracing::debug!(failure = ?f, "UPnP: AddAnyPortMapping failed, trying AddPortMapping");
                if let SoapFailure::Fault(Some(ERR_ONLY_PERMANENT), _) = f {
                    self.lease_secs = 0;
                }
                self.port_attempts = 1;
                self.send_action(now, Op::Add { port: suggested });
            }
            Err(f) => self.fail(now, f.into_error("AddAnyPortMapping")),
        }
    }

    fn on_add(&mut self, now: Instant, port: u16, response: Result<&[u8], MapError>) {
        match read_soap(response, "AddPortMapping") {
            Ok(_) => self.install(now, port),
            Err(SoapFailure::Fault(Some(ERR_ONLY_PERMANENT), _)) if self.lease_secs != 0 => {
                self.lease_secs = 0;
                self.send_action(now, Op::Add { port });
            }
            Err(SoapFailure::Fault(Some(ERR_CONFLICT), _))
                if self.port_attempts < MAX_PORT_ATTEMPTS =>
            {
                let next = self.alternative_port(self.port_attempts);
                self.port_attempts += 1;
                self.send_action(now, Op::Add { port: next });
            }
            Err(f) => self.fail(now, f.into_error("AddPortMapping")),
        }
    }

    /// The external port tried after `attempt` conflicts: spread over
    /// 1024..=65535, derived from the internal port.
    fn alternative_port(&self, attempt: usize) -> u16 {
        let mut x = u32::from(self.internal.1) ^ u32::from(self.internal.0).rotate_left(7);
        x = x
            .wrapping_add(
                u32::try_from(attempt)
                    .unwrap_or(0)
                    .wrapping_mul(0x9e37_79b9),
            )
            .wrapping_mul(0x85eb_ca6b);
        x ^= x >> 15;
        let port = 1024 + (x % (65536 - 1024));
        let port = u16::try_from(port).unwrap_or(u16::MAX);
        if port == self.internal.1 {
            port.wrapping_add(1).max(1024)
        } else {
            port
        }
    }

    fn install(&mut self, now: Instant, port: u16) {
        let Some(ip) = self.external_ip else {
            self.fail(now, malformed("no external address"));
            return;
        };
        let lifetime = if self.lease_secs == 0 {
            PERMANENT_REFRESH * 2
        } else {
            Duration::from_secs(u64::from(self.lease_secs))
        };
        let mapping = Mapping {
            protocol: P,
            internal: self.request.internal,
            external: SocketAddr::V4(SocketAddrV4::new(ip, port)),
            lifetime,
            granted_at: now,
        };
        self.mapping = Some(mapping);
        self.chain = Chain::Install;
        if self.delete_requested {
            self.start_delete(now);
            return;
        }
        self.events.push_back(Event::Installed(mapping));
        self.installed(now, mapping.renew_at());
    }

    /// Installed: renew at `renew_at`, check the mapping on the gateway
    /// before that (P4).
    fn installed(&mut self, now: Instant, renew_at: Instant) {
        let period = self.mapping.map_or(self.check_interval, |m| {
            self.check_interval.min(m.lifetime / 2)
        });
        let check_at = if period.is_zero() {
            renew_at
        } else {
            now.saturating_add(period).min(renew_at)
        };
        self.state = State::Installed { renew_at, check_at };
    }

    fn renew(&mut self, now: Instant) {
        self.chain = Chain::Renew;
        self.send_action(now, Op::GetExternalIp);
    }

    /// Asks the gateway whether it still holds the mapping (P4); the
    /// renewal follows when `renew_at` has come.
    fn check(&mut self, now: Instant, renew_at: Instant) {
        match self.mapping {
            Some(m) => self.send_action(
                now,
                Op::Check {
                    port: m.external.port(),
                    renew_at,
                },
            ),
            None => self.fail(now, malformed("no mapping to check")),
        }
    }

    /// Reads the answer to `GetSpecificPortMappingEntry`: `Err` when it
    /// proves nothing either way.
    fn read_entry(&self, response: Result<&[u8], MapError>) -> Result<Entry, MapError> {
        const ACTION: &str = "GetSpecificPortMappingEntry";
        match read_soap(response, ACTION) {
            Ok(args) => {
                let client =
                    arg(&args, "NewInternalClient").and_then(|c| c.trim().parse::<Ipv4Addr>().ok());
                let port = arg(&args, "NewInternalPort").and_then(|p| p.trim().parse::<u16>().ok());
                match (client, port) {
                    (Some(ip), Some(port)) if (ip, port) == self.internal => Ok(Entry::Ours),
                    (Some(ip), Some(port)) => {
                        Ok(Entry::Gone(format!("the entry now maps to {ip}:{port}")))
                    }
                    _ => Err(malformed(format!(
                        "{ACTION}: no valid NewInternalClient and NewInternalPort"
                    ))),
                }
            }
            Err(SoapFailure::Fault(Some(ERR_NO_SUCH_ENTRY), desc)) => Ok(Entry::Gone(format!(
                "UPnP error {ERR_NO_SUCH_ENTRY} {desc}"
            ))),
            Err(f) => Err(f.into_error(ACTION)),
        }
    }

    fn on_check(&mut self, now: Instant, renew_at: Instant, response: Result<&[u8], MapError>) {
        let Some(m) = self.mapping else {
            self.fail(now, malformed("no mapping to check"));
            return;
        };
        match self.read_entry(response) {
            Ok(Entry::Ours) => {}
            Ok(Entry::Gone(why)) => {
                tracing::debug!(gateway = %self.gateway, external = %m.external, %why,
                    "UPnP: the gateway lost the mapping (restarted): adding it again");
                self.mapping = None;
                self.events.push_back(Event::GatewayRestarted(P));
                self.chain = Chain::Reinstall {
                    port: m.external.port(),
                };
                self.send_action(now, Op::GetExternalIp);
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "UPnP: mapping check failed; kept, checked again later");
            }
        }
        if now >= renew_at {
            self.renew(now);
        } else {
            self.installed(now, renew_at);
        }
    }

    fn start_delete(&mut self, now: Instant) {
        match (self.mapping, &self.service) {
            (Some(m), Some(_)) => self.send_action(
                now,
                Op::Delete {
                    port: m.external.port(),
                },
            ),
            _ => self.finish_deleted(),
        }
    }

    fn finish_deleted(&mut self) {
        self.mapping = None;
        self.state = State::Stopped;
        self.events.push_back(Event::Deleted(P));
    }

    fn on_delete(&mut self, now: Instant, response: Result<&[u8], MapError>) {
        match read_soap(response, "DeletePortMapping") {
            Ok(_) | Err(SoapFailure::Fault(Some(ERR_NO_SUCH_ENTRY), _)) => self.finish_deleted(),
            Err(f) => {
                self.mapping = None;
                self.delete_requested = false;
                self.fail(now, f.into_error("DeletePortMapping"));
            }
        }
    }

    /// The install (or renewal) failed with `err`.
    fn fail(&mut self, now: Instant, err: MapError) {
        if self.delete_requested {
            self.start_delete(now);
            return;
        }
        if let (Chain::Renew, Some(m)) = (self.chain, self.mapping) {
            let retry = now.saturating_add(RENEW_RETRY);
            if retry < m.expires_at() {
                tracing::debug!(error = %err, "UPnP: renewal failed, retrying");
                self.installed(now, retry);
                return;
            }
        }
        tracing::debug!(error = %err, "UPnP: failed");
        self.mapping = None;
        self.chain = Chain::Install;
        self.state = State::Stopped;
        self.events.push_back(Event::Failed(err));
    }

    fn on_response(&mut self, now: Instant, op: Op, response: Result<&[u8], MapError>) {
        match op {
            Op::Describe => self.on_description(now, response),
            Op::GetExternalIp => self.on_external_ip(now, response),
            Op::AddAny { port } => self.on_add_any(now, port, response),
            Op::Add { port } => self.on_add(now, port, response),
            Op::Delete { .. } => self.on_delete(now, response),
            Op::Check { renew_at, .. } => self.on_check(now, renew_at, response),
        }
    }
}

impl Client for UpnpClient {
    fn protocol(&self) -> Protocol {
        P
    }

    fn start(&mut self, now: Instant) {
        let deadline = now.saturating_add(self.timeout);
        self.mapping = None;
        self.locations.clear();
        self.seen.clear();
        self.location = None;
        self.refusal = None;
        self.last_error = None;
        self.services.clear();
        self.service = None;
        self.external_ip = None;
        self.lease_secs = self.requested_lease();
        self.port_attempts = 0;
        self.chain = Chain::Install;
        self.delete_requested = false;
        self.discovery_deadline = Some(deadline);
        self.state = State::Discovering {
            deadline,
            next_search: Some(now),
            rounds_left: SEARCH_ROUNDS,
        };
        self.send_searches(now);
    }

    fn handle_udp(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        let source = match from.ip() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(v6) => v6.to_ipv4_mapped(),
        };
        if source != Some(self.gateway) {
            return;
        }
        let listening = self.discovery_deadline.is_some_and(|d| now < d)
            && matches!(
                self.state,
                State::Discovering { .. }
                    | State::Waiting {
                        op: Op::Describe,
                        ..
                    }
            );
        if listening {
            self.on_ssdp(now, datagram);
        }
    }

    fn handle_http(&mut self, now: Instant, id: u64, response: Result<&[u8], String>) {
        let State::Waiting { id: want, op, .. } = self.state else {
            return;
        };
        if id != want {
            return;
        }
        self.on_response(now, op, response.map_err(MapError::Http));
    }

    fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Discovering {
                deadline,
                next_search,
                ..
            } => {
                if now >= deadline {
                    self.discovery_deadline = None;
                    self.next_location(now);
                } else if next_search.is_some_and(|t| now >= t) {
                    self.send_searches(now);
                }
            }
            State::Waiting { op, deadline, .. } if now >= deadline => {
                self.on_response(now, op, Err(MapError::Timeout(P)));
            }
            State::Installed { renew_at, check_at } if now >= check_at.min(renew_at) => {
                self.check(now, renew_at);
            }
            _ => {}
        }
    }

    fn delete(&mut self, now: Instant) {
        match self.state {
            State::Installed { .. } => self.start_delete(now),
            State::Waiting {
                op: Op::Delete { .. },
                ..
            } => {}
            State::Waiting {
                op: Op::AddAny { .. } | Op::Add { .. },
                ..
            } => self.delete_requested = true,
            State::Waiting { .. } if self.mapping.is_some() => {
                // A check or a renewal's GetExternalIPAddress: abandon it.
                self.chain = Chain::Install;
                self.start_delete(now);
            }
            State::Idle | State::Discovering { .. } | State::Waiting { .. } | State::Stopped => {
                self.discovery_deadline = None;
                self.finish_deleted();
            }
        }
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Discovering {
                deadline,
                next_search,
                ..
            } => Some(next_search.map_or(deadline, |t| t.min(deadline))),
            State::Waiting { deadline, .. } => Some(deadline),
            State::Installed { renew_at, check_at } => Some(check_at.min(renew_at)),
            State::Idle | State::Stopped => None,
        }
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn mapping(&self) -> Option<Mapping> {
        self.mapping
    }
}

#[cfg(test)]
mod tests;
