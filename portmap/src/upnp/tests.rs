//! The UPnP-IGD machine against canned miniupnpd-like answers.

use super::xml::samples::{MINIUPNPD_DESC, XML_BOMB, desc_v1, soap_fault, soap_ok};
use super::*;
use proptest::prelude::*;

const GW: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
const EVIL: Ipv4Addr = Ipv4Addr::new(6, 6, 6, 6);
const EXT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
const IP2: &str = "urn:schemas-upnp-org:service:WANIPConnection:2";
const IP1: &str = "urn:schemas-upnp-org:service:WANIPConnection:1";

fn gw_ssdp() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(GW), 1900)
}

fn request() -> MappingRequest {
    MappingRequest::new("192.168.1.20:4000".parse().expect("literal")).expect("valid")
}

fn client() -> UpnpClient {
    UpnpClient::new(GW, request(), Duration::from_secs(2)).expect("valid")
}

fn ms(n: u64) -> Instant {
    Instant::from_millis(n)
}

fn ssdp_answer(location: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nUSN: uuid:1234::urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nEXT:\r\nSERVER: OpenWRT/23.05 UPnP/1.1 MiniUPnPd/2.3.3\r\nLOCATION: {location}\r\n\r\n"
    )
    .into_bytes()
}

fn http(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/xml; charset=\"utf-8\"\r\nConnection: close\r\nContent-Length: {}\r\nServer: OpenWRT/23.05 UPnP/1.1 MiniUPnPd/2.3.3\r\nExt:\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn ok(body: &str) -> Vec<u8> {
    http("200 OK", body)
}

fn fault(code: u16, desc: &str) -> Vec<u8> {
    http("500 Internal Server Error", &soap_fault(code, desc))
}

/// Records every transmit so P1 can be checked at the end.
struct Harness {
    c: UpnpClient,
    sent: Vec<Transmit>,
}

impl Harness {
    fn new(c: UpnpClient) -> Self {
        Harness {
            c,
            sent: Vec::new(),
        }
    }

    fn drain(&mut self) -> Vec<Transmit> {
        let out: Vec<Transmit> = std::iter::from_fn(|| self.c.poll_transmit()).collect();
        self.sent.extend(out.iter().cloned());
        out
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.c.poll_event()).collect()
    }

    /// The one HTTP transmit pending: (id, to, request text).
    fn http(&mut self) -> (u64, SocketAddr, String) {
        let t = self.drain();
        assert_eq!(t.len(), 1, "{t:?}");
        match &t[0] {
            Transmit::Http {
                id, to, request, ..
            } => (*id, *to, String::from_utf8(request.clone()).expect("ascii")),
            other => panic!("expected HTTP, got {other:?}"),
        }
    }

    fn answer(&mut self, now: Instant, bytes: &[u8]) -> (u64, SocketAddr, String) {
        let (id, to, req) = self.http();
        self.c.handle_http(now, id, Ok(bytes));
        (id, to, req)
    }

    /// Start and SSDP up to the description GET (not answered yet).
    fn discover(&mut self) {
        self.c.start(ms(0));
        let t = self.drain();
        assert_eq!(t.len(), SEARCH_TARGETS.len());
        self.c.handle_udp(
            ms(10),
            gw_ssdp(),
            &ssdp_answer("http://192.168.1.1:5000/rootDesc.xml"),
        );
    }

    fn assert_p1(&self) {
        for t in &self.sent {
            match t {
                Transmit::Udp { to, .. } => assert_eq!(*to, SSDP_GROUP_V4),
                Transmit::Http { to, .. } => assert_eq!(to.ip(), IpAddr::V4(GW), "{t:?}"),
            }
        }
    }

    /// Discovery, the description `desc`, and the answer `ip` to
    /// GetExternalIPAddress on `service`; returns that request.
    fn external_ip_from(&mut self, desc: &str, service: &str, ip: &str) -> String {
        self.discover();
        self.answer(ms(20), &ok(desc));
        let (_, _, req) = self.answer(ms(30), &external_ip_ok(service, ip));
        req
    }

    /// Discovery, description, and the answer to GetExternalIPAddress.
    fn external_ip(&mut self, ip: &str) {
        self.external_ip_from(MINIUPNPD_DESC, IP2, ip);
    }

    /// Discovery, description, external IP, AddAnyPortMapping → 4000.
    fn install(&mut self) -> Mapping {
        self.external_ip("203.0.113.7");
        self.answer(ms(40), &add_any_ok("4000"));
        match self.events().as_slice() {
            [Event::Installed(m)] => *m,
            other => panic!("{other:?}"),
        }
    }

    /// The one event pending, which must be `Failed`: its error.
    fn failure(&mut self) -> MapError {
        match self.events().as_slice() {
            [Event::Failed(e)] => e.clone(),
            other => panic!("expected one Failed, got {other:?}"),
        }
    }
}

/// The answer `ip` to GetExternalIPAddress on `service`.
fn external_ip_ok(service: &str, ip: &str) -> Vec<u8> {
    ok(&soap_ok(
        "GetExternalIPAddress",
        service,
        &[("NewExternalIPAddress", ip)],
    ))
}

/// The answer to AddAnyPortMapping: `port` reserved.
fn add_any_ok(port: &str) -> Vec<u8> {
    ok(&soap_ok(
        "AddAnyPortMapping",
        IP2,
        &[("NewReservedPort", port)],
    ))
}

/// The answer to GetSpecificPortMappingEntry on `service`: the entry maps
/// to `client`:`port`.
fn entry(service: &str, client: &str, port: &str) -> Vec<u8> {
    ok(&soap_ok(
        "GetSpecificPortMappingEntry",
        service,
        &[
            ("NewInternalPort", port),
            ("NewInternalClient", client),
            ("NewEnabled", "1"),
            ("NewPortMappingDescription", "natrix"),
            ("NewLeaseDuration", "1800"),
        ],
    ))
}

/// The entry, ours (on WANIPConnection:2).
fn entry_ours() -> Vec<u8> {
    entry(IP2, "192.168.1.20", "4000")
}

/// The exact GetSpecificPortMappingEntry request for external `port`.
fn check_text(service: &str, port: u16) -> String {
    soap_text(
        "GetSpecificPortMappingEntry",
        service,
        &format!(
            "<NewRemoteHost></NewRemoteHost><NewExternalPort>{port}</NewExternalPort><NewProtocol>UDP</NewProtocol>"
        ),
    )
}

/// The miniupnpd description with the WAN service's control URL `url`.
fn desc_with_control_url(url: &str) -> String {
    MINIUPNPD_DESC.replace(
        "<controlURL>/ctl/IPConn</controlURL>",
        &format!("<controlURL>{url}</controlURL>"),
    )
}

fn soap_text(action: &str, service: &str, args: &str) -> String {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><u:{action} xmlns:u=\"{service}\">{args}</u:{action}></s:Body></s:Envelope>\r\n"
    );
    format!(
        "POST /ctl/IPConn HTTP/1.1\r\nHost: 192.168.1.1:5000\r\nContent-Type: text/xml; charset=\"utf-8\"\r\nContent-Length: {}\r\nSOAPAction: \"{service}#{action}\"\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn add_args(port: u16, lease: u32) -> String {
    format!(
        "<NewRemoteHost></NewRemoteHost><NewExternalPort>{port}</NewExternalPort><NewProtocol>UDP</NewProtocol><NewInternalPort>4000</NewInternalPort><NewInternalClient>192.168.1.20</NewInternalClient><NewEnabled>1</NewEnabled><NewPortMappingDescription>natrix</NewPortMappingDescription><NewLeaseDuration>{lease}</NewLeaseDuration>"
    )
}

#[test]
fn new_refuses_bad_internal_addresses_and_gateways() {
    let v6 = MappingRequest {
        internal: "[2001:db8::2]:4000".parse().expect("literal"),
        lifetime: Duration::from_secs(60),
    };
    assert!(matches!(
        UpnpClient::new(GW, v6, Duration::from_secs(2)),
        Err(MapError::BadInternalAddress(_))
    ));
    let lo = MappingRequest {
        internal: "127.0.0.1:4000".parse().expect("literal"),
        lifetime: Duration::from_secs(60),
    };
    assert!(matches!(
        UpnpClient::new(GW, lo, Duration::from_secs(2)),
        Err(MapError::BadInternalAddress(_))
    ));
    assert_eq!(
        UpnpClient::new(Ipv4Addr::UNSPECIFIED, request(), Duration::from_secs(2)).err(),
        Some(MapError::NoGateway)
    );
}

#[test]
fn full_install_against_a_miniupnpd_like_gateway_sends_exact_requests() {
    let mut h = Harness::new(client());
    h.c.start(ms(0));
    assert_eq!(h.c.protocol(), Protocol::UpnpIgd);
    let searches = h.drain();
    assert_eq!(searches.len(), 2);
    let payloads: Vec<String> = searches
        .iter()
        .map(|t| match t {
            Transmit::Udp { to, payload } => {
                assert_eq!(*to, SSDP_GROUP_V4);
                String::from_utf8(payload.clone()).expect("ascii")
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(payloads[0].contains("ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n"));
    assert!(payloads[1].contains("ST: upnp:rootdevice\r\n"));

    h.c.handle_udp(
        ms(10),
        gw_ssdp(),
        &ssdp_answer("http://192.168.1.1:5000/rootDesc.xml"),
    );
    let (_, to, req) = h.answer(ms(20), &ok(MINIUPNPD_DESC));
    assert_eq!(to, "192.168.1.1:5000".parse().expect("literal"));
    assert_eq!(
        req,
        "GET /rootDesc.xml HTTP/1.1\r\nHost: 192.168.1.1:5000\r\nConnection: close\r\nAccept: text/xml, application/xml\r\n\r\n"
    );

    let (_, to, req) = h.answer(ms(30), &external_ip_ok(IP2, "203.0.113.7"));
    assert_eq!(to, "192.168.1.1:5000".parse().expect("literal"));
    assert_eq!(req, soap_text("GetExternalIPAddress", IP2, ""));

    let (_, _, req) = h.answer(ms(40), &add_any_ok("4000"));
    assert_eq!(
        req,
        soap_text("AddAnyPortMapping", IP2, &add_args(4000, 3600))
    );

    let want = Mapping {
        protocol: Protocol::UpnpIgd,
        internal: "192.168.1.20:4000".parse().expect("literal"),
        external: SocketAddr::new(IpAddr::V4(EXT), 4000),
        lifetime: Duration::from_secs(3600),
        granted_at: ms(40),
    };
    assert_eq!(h.events(), vec![Event::Installed(want)]);
    assert_eq!(h.c.mapping(), Some(want));
    assert_eq!(want.renew_at(), ms(40 + 1_800_000));
    // The first thing due: the check that the gateway still holds it (P4).
    assert_eq!(
        h.c.poll_timeout(),
        Some(ms(40).saturating_add(DEFAULT_CHECK_INTERVAL))
    );
    assert!(h.drain().is_empty());
    h.assert_p1();
}

#[test]
fn p3_the_reserved_port_is_the_one_reported() {
    let mut h = Harness::new(client());
    h.external_ip("203.0.113.7");
    h.answer(ms(40), &add_any_ok("40123"));
    let m = h.c.mapping().expect("installed");
    assert_eq!(m.external, SocketAddr::new(IpAddr::V4(EXT), 40123));
}

#[test]
fn add_any_fault_falls_back_to_add_port_mapping() {
    let mut h = Harness::new(client());
    h.external_ip("203.0.113.7");
    let (_, _, req) = h.answer(ms(40), &fault(401, "Invalid Action"));
    assert!(req.contains("#AddAnyPortMapping"));
    let (_, _, req) = h.answer(ms(50), &ok(&soap_ok("AddPortMapping", IP2, &[])));
    assert_eq!(req, soap_text("AddPortMapping", IP2, &add_args(4000, 3600)));
    let m = h.c.mapping().expect("installed");
    assert_eq!(m.external.port(), 4000);
    assert_eq!(h.events(), vec![Event::Installed(m)]);
    h.assert_p1();
}

#[test]
fn v1_service_uses_add_port_mapping_and_tries_other_ports_on_conflict() {
    let mut h = Harness::new(client());
    let req = h.external_ip_from(&desc_v1(), IP1, "203.0.113.7");
    assert_eq!(req, soap_text("GetExternalIPAddress", IP1, ""));
    let (_, _, req) = h.answer(ms(40), &fault(718, "ConflictInMappingEntry"));
    assert_eq!(req, soap_text("AddPortMapping", IP1, &add_args(4000, 3600)));
    let (_, _, req) = h.http();
    let alt = h.c.alternative_port(1);
    assert_ne!(alt, 4000);
    assert!(alt >= 1024);
    assert_eq!(req, soap_text("AddPortMapping", IP1, &add_args(alt, 3600)));
    // Answer that request.
    let id = match h.sent.last() {
        Some(Transmit::Http { id, .. }) => *id,
        other => panic!("{other:?}"),
    };
    h.c.handle_http(ms(50), id, Ok(&ok(&soap_ok("AddPortMapping", IP1, &[]))));
    let m = h.c.mapping().expect("installed");
    assert_eq!(m.external.port(), alt, "P3: the granted port is reported");
    h.assert_p1();
}

#[test]
fn conflicts_are_bounded() {
    let mut h = Harness::new(client());
    h.external_ip_from(&desc_v1(), IP1, "203.0.113.7");
    for i in 0..MAX_PORT_ATTEMPTS {
        let (_, _, req) = h.answer(ms(40 + i as u64), &fault(718, "ConflictInMappingEntry"));
        assert!(req.contains("#AddPortMapping"));
    }
    assert!(h.drain().is_empty());
    let e = h.failure();
    assert!(
        matches!(&e, MapError::Refused { reason, .. } if reason.contains("718")),
        "{e:?}"
    );
    assert_eq!(h.c.mapping(), None);
    assert_eq!(h.c.poll_timeout(), None);
}

#[test]
fn only_permanent_leases_are_retried_with_lease_zero_and_refreshed_hourly() {
    let mut h = Harness::new(client());
    h.external_ip_from(&desc_v1(), IP1, "203.0.113.7");
    h.answer(ms(40), &fault(725, "OnlyPermanentLeasesSupported"));
    let (_, _, req) = h.answer(ms(50), &ok(&soap_ok("AddPortMapping", IP1, &[])));
    assert_eq!(req, soap_text("AddPortMapping", IP1, &add_args(4000, 0)));
    let m = h.c.mapping().expect("installed");
    assert_eq!(m.lifetime, PERMANENT_REFRESH * 2);
    assert_eq!(m.renew_at(), ms(50).saturating_add(PERMANENT_REFRESH));
    // The refresh re-adds with lease 0 (after the check before renewal).
    let t = m.renew_at();
    h.c.handle_timeout(t);
    let (_, _, req) = h.answer(t, &entry(IP1, "192.168.1.20", "4000"));
    assert_eq!(req, check_text(IP1, 4000));
    h.answer(t, &external_ip_ok(IP1, "203.0.113.7"));
    let (_, _, req) = h.http();
    assert_eq!(req, soap_text("AddPortMapping", IP1, &add_args(4000, 0)));
}

#[test]
fn p4_renewal_at_half_the_lifetime_re_adds_the_same_port() {
    // No periodic check: only the one right before the renewal.
    let mut h = Harness::new(client().with_check_interval(Duration::ZERO));
    let m = h.install();
    let t = m.renew_at();
    assert_eq!(h.c.poll_timeout(), Some(t));
    h.c.handle_timeout(t.saturating_sub(Duration::from_millis(1)));
    assert!(h.drain().is_empty());
    h.c.handle_timeout(t);
    let (_, _, req) = h.answer(t, &entry_ours());
    assert_eq!(req, check_text(IP2, 4000));
    let (_, _, req) = h.answer(t, &external_ip_ok(IP2, "198.51.100.9"));
    assert_eq!(req, soap_text("GetExternalIPAddress", IP2, ""));
    let (_, _, req) = h.answer(t, &ok(&soap_ok("AddPortMapping", IP2, &[])));
    assert_eq!(req, soap_text("AddPortMapping", IP2, &add_args(4000, 3600)));
    let renewed = h.c.mapping().expect("renewed");
    assert_eq!(renewed.granted_at, t);
    assert_eq!(
        renewed.external,
        "198.51.100.9:4000".parse().expect("literal"),
        "P3: the external address is re-read"
    );
    assert_eq!(h.events(), vec![Event::Installed(renewed)]);
    h.assert_p1();
}

#[test]
fn a_failed_renewal_keeps_the_mapping_and_retries_until_it_expires() {
    let mut h = Harness::new(client().with_check_interval(Duration::ZERO));
    let m = h.install();
    let mut t = m.renew_at();
    h.c.handle_timeout(t);
    let (_, _, req) = h.http();
    assert!(req.contains("#GetSpecificPortMappingEntry"));
    // Slow gateway: the check times out (proves nothing), the renewal
    // follows and times out too.
    t = t.saturating_add(HTTP_TIMEOUT);
    h.c.handle_timeout(t);
    let (_, _, req) = h.http();
    assert!(req.contains("#GetExternalIPAddress"));
    assert!(h.events().is_empty());
    t = t.saturating_add(HTTP_TIMEOUT);
    h.c.handle_timeout(t);
    assert!(h.events().is_empty());
    assert_eq!(h.c.mapping(), Some(m));
    assert_eq!(h.c.poll_timeout(), Some(t.saturating_add(RENEW_RETRY)));
    // Keep failing: eventually the mapping is lost.
    let mut rounds = 0;
    while let Some(next) = h.c.poll_timeout() {
        h.c.handle_timeout(next);
        // The check, then the renewal: both refused.
        loop {
            let sent = h.drain();
            if sent.is_empty() {
                break;
            }
            for tr in sent {
                if let Transmit::Http { id, .. } = tr {
                    h.c.handle_http(next, id, Err("connection refused".into()));
                }
            }
        }
        rounds += 1;
        assert!(rounds < 1000);
    }
    let e = h.failure();
    assert!(
        matches!(&e, MapError::Http(msg) if msg.contains("refused")),
        "{e:?}"
    );
    assert_eq!(h.c.mapping(), None);
}

#[test]
fn delete_sends_delete_port_mapping_and_reports_deleted() {
    let mut h = Harness::new(client());
    h.install();
    h.c.delete(ms(100));
    let (_, _, req) = h.answer(ms(110), &ok(&soap_ok("DeletePortMapping", IP2, &[])));
    assert_eq!(
        req,
        soap_text(
            "DeletePortMapping",
            IP2,
            "<NewRemoteHost></NewRemoteHost><NewExternalPort>4000</NewExternalPort><NewProtocol>UDP</NewProtocol>"
        )
    );
    assert_eq!(h.events(), vec![Event::Deleted(Protocol::UpnpIgd)]);
    assert_eq!(h.c.mapping(), None);
    assert_eq!(h.c.poll_timeout(), None);
    h.assert_p1();
}

#[test]
fn delete_of_an_unknown_entry_counts_as_deleted() {
    let mut h = Harness::new(client());
    h.install();
    h.c.delete(ms(100));
    h.answer(ms(110), &fault(714, "NoSuchEntryInArray"));
    assert_eq!(h.events(), vec![Event::Deleted(Protocol::UpnpIgd)]);
}

#[test]
fn delete_before_install_reports_deleted_at_once() {
    let mut h = Harness::new(client());
    h.discover();
    h.drain();
    h.c.delete(ms(15));
    assert_eq!(h.events(), vec![Event::Deleted(Protocol::UpnpIgd)]);
    assert!(h.drain().is_empty());
    assert_eq!(h.c.poll_timeout(), None);
}

#[test]
fn delete_during_add_deletes_what_the_add_granted() {
    let mut h = Harness::new(client());
    h.external_ip("203.0.113.7");
    let (id, _, _) = h.http();
    h.c.delete(ms(35));
    h.c.handle_http(ms(40), id, Ok(&add_any_ok("4555")));
    let (_, _, req) = h.answer(ms(50), &ok(&soap_ok("DeletePortMapping", IP2, &[])));
    assert!(req.contains("<NewExternalPort>4555</NewExternalPort>"));
    assert_eq!(h.events(), vec![Event::Deleted(Protocol::UpnpIgd)]);
}

#[test]
fn p1_ssdp_answer_pointing_elsewhere_is_refused() {
    let mut h = Harness::new(client());
    h.c.start(ms(0));
    h.drain();
    // From the gateway, but LOCATION elsewhere: refused.
    h.c.handle_udp(ms(5), gw_ssdp(), &ssdp_answer("http://6.6.6.6:80/desc.xml"));
    // A host name: refused too (no resolver chooses a target).
    h.c.handle_udp(
        ms(6),
        gw_ssdp(),
        &ssdp_answer("http://evil.example:80/desc.xml"),
    );
    // From another source, even naming the gateway: ignored.
    h.c.handle_udp(
        ms(7),
        "192.168.1.66:1900".parse().expect("literal"),
        &ssdp_answer("http://192.168.1.1:5000/rootDesc.xml"),
    );
    h.c.handle_udp(
        ms(8),
        "6.6.6.6:1900".parse().expect("literal"),
        &ssdp_answer("http://6.6.6.6:80/desc.xml"),
    );
    let mut now = ms(8);
    while let Some(t) = h.c.poll_timeout() {
        assert!(t >= now);
        now = t;
        h.c.handle_timeout(now);
        h.drain();
    }
    assert_eq!(
        h.events(),
        vec![Event::Failed(MapError::NotTheGateway {
            protocol: Protocol::UpnpIgd,
            addr: IpAddr::V4(EVIL),
        })]
    );
    assert!(
        h.sent.iter().all(|t| matches!(t, Transmit::Udp { .. })),
        "no HTTP at all: {:?}",
        h.sent
    );
    assert_eq!(
        h.sent.len(),
        usize::from(SEARCH_ROUNDS) * SEARCH_TARGETS.len()
    );
    h.assert_p1();
}

#[test]
fn a_good_answer_after_a_refused_one_is_used() {
    let mut h = Harness::new(client());
    h.c.start(ms(0));
    h.drain();
    h.c.handle_udp(ms(5), gw_ssdp(), &ssdp_answer("http://6.6.6.6:80/desc.xml"));
    assert!(h.drain().is_empty());
    h.c.handle_udp(
        ms(6),
        SocketAddr::new(IpAddr::V6(GW.to_ipv6_mapped()), 1900),
        &ssdp_answer("http://192.168.1.1:5000/rootDesc.xml"),
    );
    let (_, to, _) = h.http();
    assert_eq!(to.ip(), IpAddr::V4(GW));
    h.assert_p1();
}

#[test]
fn ssdp_retransmits_then_times_out() {
    let mut h = Harness::new(client());
    h.c.start(ms(0));
    assert_eq!(h.drain().len(), 2);
    assert_eq!(h.c.poll_timeout(), Some(ms(500)));
    h.c.handle_timeout(ms(500));
    assert_eq!(h.drain().len(), 2);
    assert_eq!(h.c.poll_timeout(), Some(ms(1000)));
    h.c.handle_timeout(ms(1000));
    assert_eq!(h.drain().len(), 2);
    assert_eq!(h.c.poll_timeout(), Some(ms(2000)));
    h.c.handle_timeout(ms(1999));
    assert!(h.events().is_empty());
    h.c.handle_timeout(ms(2000));
    assert_eq!(
        h.events(),
        vec![Event::Failed(MapError::Timeout(Protocol::UpnpIgd))]
    );
    assert!(h.drain().is_empty());
    assert_eq!(h.c.poll_timeout(), None);
    // A late answer changes nothing.
    h.c.handle_udp(
        ms(2100),
        gw_ssdp(),
        &ssdp_answer("http://192.168.1.1:5000/rootDesc.xml"),
    );
    assert!(h.drain().is_empty());
}

#[test]
fn p1_control_url_on_another_host_is_refused() {
    let mut h = Harness::new(client());
    h.discover();
    let desc = desc_with_control_url("http://6.6.6.6:5000/ctl/IPConn");
    h.answer(ms(20), &ok(&desc));
    assert!(h.drain().is_empty());
    assert_eq!(
        h.events(),
        vec![Event::Failed(MapError::NotTheGateway {
            protocol: Protocol::UpnpIgd,
            addr: IpAddr::V4(EVIL),
        })]
    );
    h.assert_p1();
}

#[test]
fn control_url_host_name_is_refused() {
    let mut h = Harness::new(client());
    h.discover();
    let desc = desc_with_control_url("http://router.lan:5000/ctl/IPConn");
    h.answer(ms(20), &ok(&desc));
    assert!(h.drain().is_empty());
    assert!(matches!(h.failure(), MapError::Malformed { .. }));
}

#[test]
fn absolute_control_url_on_the_gateway_any_port_is_used() {
    let mut h = Harness::new(client());
    h.discover();
    let desc = desc_with_control_url("http://192.168.1.1:49000/upnp/control/wanipconn");
    h.answer(ms(20), &ok(&desc));
    let (_, to, req) = h.http();
    assert_eq!(to, "192.168.1.1:49000".parse().expect("literal"));
    assert!(
        req.starts_with("POST /upnp/control/wanipconn HTTP/1.1\r\nHost: 192.168.1.1:49000\r\n")
    );
}

#[test]
fn url_base_elsewhere_is_ignored_and_on_the_gateway_is_honoured() {
    let mut h = Harness::new(client());
    h.discover();
    let desc = MINIUPNPD_DESC.replace(
        "<specVersion>",
        "<URLBase>http://6.6.6.6:80/</URLBase><specVersion>",
    );
    h.answer(ms(20), &ok(&desc));
    let (_, to, _) = h.http();
    assert_eq!(to, "192.168.1.1:5000".parse().expect("literal"));
    h.assert_p1();

    let mut h = Harness::new(client());
    h.discover();
    let desc = MINIUPNPD_DESC.replace(
        "<specVersion>",
        "<URLBase>http://192.168.1.1:8080/</URLBase><specVersion>",
    );
    h.answer(ms(20), &ok(&desc));
    let (_, to, _) = h.http();
    assert_eq!(to, "192.168.1.1:8080".parse().expect("literal"));
}

#[test]
fn p1_redirects_are_not_followed() {
    let mut h = Harness::new(client());
    h.discover();
    h.answer(
        ms(20),
        b"HTTP/1.1 302 Found\r\nLocation: http://6.6.6.6/rootDesc.xml\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(h.drain().is_empty());
    let e = h.failure();
    let MapError::Http(msg) = &e else {
        panic!("{e:?}");
    };
    assert!(msg.contains("302") && msg.contains("not followed"), "{msg}");
    h.assert_p1();

    // A redirect in answer to a SOAP action: the same.
    let mut h = Harness::new(client());
    h.discover();
    h.answer(ms(20), &ok(MINIUPNPD_DESC));
    h.answer(
        ms(30),
        b"HTTP/1.1 301 Moved Permanently\r\nLocation: http://6.6.6.6/ctl\r\n\r\n",
    );
    assert!(h.drain().is_empty());
    assert!(matches!(h.failure(), MapError::Http(_)));
    h.assert_p1();
}

#[test]
fn xml_bomb_description_is_a_malformed_error_quickly() {
    let mut h = Harness::new(client());
    h.discover();
    let start = std::time::Instant::now();
    h.answer(ms(20), &ok(XML_BOMB));
    assert!(start.elapsed() < Duration::from_secs(1));
    let e = h.failure();
    assert!(
        matches!(&e, MapError::Malformed { reason, .. } if reason.contains("DTD")),
        "{e:?}"
    );
}

#[test]
fn description_without_wan_service_is_refused() {
    let mut h = Harness::new(client());
    h.discover();
    let desc = MINIUPNPD_DESC.replace("WANIPConnection:2", "WANIPv6FirewallControl:9");
    h.answer(ms(20), &ok(&desc));
    assert!(matches!(h.failure(), MapError::Refused { .. }));
}

#[test]
fn oversized_and_truncated_descriptions_are_typed_errors() {
    let mut h = Harness::new(client());
    h.discover();
    let mut big = ok(MINIUPNPD_DESC);
    big.resize(MAX_DESCRIPTION_RESPONSE + 10, b' ');
    h.answer(ms(20), &big);
    assert!(matches!(h.failure(), MapError::Http(_)));

    let mut h = Harness::new(client());
    h.discover();
    let full = ok(MINIUPNPD_DESC);
    h.answer(ms(20), &full[..full.len() - 100]);
    let e = h.failure();
    assert!(
        matches!(&e, MapError::Malformed { reason, .. } if reason.contains("truncated")),
        "{e:?}"
    );
}

#[test]
fn chunked_description_is_decoded() {
    let mut h = Harness::new(client());
    h.discover();
    let mut resp =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for chunk in MINIUPNPD_DESC.as_bytes().chunks(700) {
        resp.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        resp.extend_from_slice(chunk);
        resp.extend_from_slice(b"\r\n");
    }
    resp.extend_from_slice(b"0\r\n\r\n");
    h.answer(ms(20), &resp);
    let (_, _, req) = h.http();
    assert!(req.contains("#GetExternalIPAddress"));
}

#[test]
fn slow_drip_times_out_and_the_late_answer_is_ignored() {
    let mut h = Harness::new(client());
    h.discover();
    let (id, _, _) = h.http();
    assert_eq!(
        h.c.poll_timeout(),
        Some(ms(10).saturating_add(HTTP_TIMEOUT))
    );
    h.c.handle_timeout(ms(10).saturating_add(HTTP_TIMEOUT));
    assert_eq!(
        h.events(),
        vec![Event::Failed(MapError::Timeout(Protocol::UpnpIgd))]
    );
    h.c.handle_http(ms(9000), id, Ok(&ok(MINIUPNPD_DESC)));
    assert!(h.events().is_empty());
    assert!(h.drain().is_empty());
    assert_eq!(h.c.mapping(), None);
}

#[test]
fn a_stale_id_is_ignored() {
    let mut h = Harness::new(client());
    h.discover();
    let (id, _, _) = h.http();
    h.c.handle_http(ms(20), id + 1, Ok(&ok(MINIUPNPD_DESC)));
    assert!(h.drain().is_empty());
    assert!(h.events().is_empty());
    h.c.handle_http(ms(21), id, Ok(&ok(MINIUPNPD_DESC)));
    assert_eq!(h.drain().len(), 1);
}

#[test]
fn a_failing_first_location_falls_back_to_the_next() {
    let mut h = Harness::new(client());
    h.c.start(ms(0));
    h.drain();
    h.c.handle_udp(
        ms(5),
        gw_ssdp(),
        &b"HTTP/1.1 200 OK\r\nST: upnp:rootdevice\r\nLOCATION: http://192.168.1.1:8200/rootDesc.xml\r\n\r\n"[..],
    );
    let (id, to, _) = h.http();
    assert_eq!(to.port(), 8200);
    h.c.handle_udp(
        ms(6),
        gw_ssdp(),
        &ssdp_answer("http://192.168.1.1:5000/rootDesc.xml"),
    );
    // A media server's description: no WAN service.
    h.c.handle_http(
        ms(7),
        id,
        Ok(&ok(
            &MINIUPNPD_DESC.replace("WANIPConnection:2", "ContentDirectory:1")
        )),
    );
    let (_, to, _) = h.http();
    assert_eq!(to.port(), 5000);
}

#[test]
fn get_external_ip_fault_is_a_typed_refusal() {
    let mut h = Harness::new(client());
    h.discover();
    h.answer(ms(20), &ok(MINIUPNPD_DESC));
    h.answer(ms(30), &fault(501, "Action Failed"));
    let e = h.failure();
    let MapError::Refused { reason, .. } = &e else {
        panic!("{e:?}");
    };
    assert!(
        reason.contains("501") && reason.contains("Action Failed"),
        "{reason}"
    );
}

#[test]
fn unconnected_wan_ip_falls_back_to_ppp() {
    let mut h = Harness::new(client());
    h.discover();
    let desc = MINIUPNPD_DESC.replace(
        "<service>\n                <serviceType>urn:schemas-upnp-org:service:WANIPv6FirewallControl:1</serviceType>",
        "<service><serviceType>urn:schemas-upnp-org:service:WANPPPConnection:1</serviceType><controlURL>/ctl/PPPConn</controlURL></service>\n<service>\n                <serviceType>urn:schemas-upnp-org:service:WANIPv6FirewallControl:1</serviceType>",
    );
    assert!(desc.contains("WANPPPConnection"));
    h.answer(ms(20), &ok(&desc));
    h.answer(ms(30), &external_ip_ok(IP2, "0.0.0.0"));
    let (_, _, req) = h.http();
    assert!(req.starts_with("POST /ctl/PPPConn HTTP/1.1"));
    assert!(req.contains("WANPPPConnection:1#GetExternalIPAddress"));
}

proptest! {
    #[test]
    fn arbitrary_bytes_at_every_step_never_panic(
        ssdp in proptest::collection::vec(any::<u8>(), 0..600),
        bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..600), 1..6),
        step in 0usize..4,
    ) {
        let mut h = Harness::new(client());
        h.discover();
        h.c.handle_udp(ms(11), gw_ssdp(), &ssdp);
        let canned = [
            ok(MINIUPNPD_DESC),
            external_ip_ok(IP2, "203.0.113.7"),
            add_any_ok("4000"),
        ];
        for c in canned.iter().take(step) {
            let t = h.drain();
            for tr in t {
                if let Transmit::Http { id, .. } = tr {
                    h.c.handle_http(ms(20), id, Ok(c));
                }
            }
        }
        for b in &bodies {
            for tr in h.drain() {
                if let Transmit::Http { id, .. } = tr {
                    h.c.handle_http(ms(30), id, Ok(b));
                }
            }
            if let Some(t) = h.c.poll_timeout() {
                h.c.handle_timeout(t);
            }
        }
        h.drain();
        h.events();
        h.assert_p1();
    }
}

#[test]
fn p6_an_empty_external_address_is_double_nat() {
    // miniupnpd on a private WAN (behind another NAT) answers
    // GetExternalIPAddress with an empty address, and nothing is added.
    for empty in ["", "0.0.0.0"] {
        let mut h = Harness::new(client());
        h.external_ip(empty);
        assert!(h.drain().is_empty(), "no AddPortMapping after {empty:?}");
        match h.events().as_slice() {
            [Event::Failed(e)] => assert!(e.is_double_nat(), "{e:?}"),
            other => panic!("{empty:?}: {other:?}"),
        }
    }
}

/// The one pending GetSpecificPortMappingEntry check: answers it with
/// `bytes` at `now`; asserts it is the exact request to the control URL
/// (P1).
fn answer_check(h: &mut Harness, now: Instant, bytes: &[u8]) {
    let (_, to, req) = h.answer(now, bytes);
    assert_eq!(to, "192.168.1.1:5000".parse().expect("literal"), "P1");
    assert_eq!(req, check_text(IP2, 4000));
}

#[test]
fn p4_upnp_detects_a_gateway_restart_by_the_missing_entry() {
    let mut h = Harness::new(client());
    let m = h.install();
    let t = ms(40).saturating_add(DEFAULT_CHECK_INTERVAL);
    assert_eq!(h.c.poll_timeout(), Some(t));
    h.c.handle_timeout(t.saturating_sub(Duration::from_millis(1)));
    assert!(h.drain().is_empty());
    h.c.handle_timeout(t);
    // miniupnpd restarted and lost its mappings.
    answer_check(&mut h, t, &fault(714, "NoSuchEntryInArray"));
    assert_eq!(h.events(), vec![Event::GatewayRestarted(Protocol::UpnpIgd)]);
    assert_eq!(h.c.mapping(), None, "nothing held until added again");
    // Added again as the install does: the external address re-read, the
    // same external port asked for.
    let (_, _, req) = h.answer(t, &external_ip_ok(IP2, "203.0.113.7"));
    assert_eq!(req, soap_text("GetExternalIPAddress", IP2, ""));
    let (_, _, req) = h.answer(t, &add_any_ok("4000"));
    assert_eq!(
        req,
        soap_text("AddAnyPortMapping", IP2, &add_args(4000, 3600))
    );
    let again = Mapping { granted_at: t, ..m };
    assert_eq!(h.events(), vec![Event::Installed(again)]);
    assert_eq!(h.c.mapping(), Some(again));
    assert_eq!(again.external, m.external, "the same port");
    // Installed again: checked again at the interval.
    assert_eq!(
        h.c.poll_timeout(),
        Some(t.saturating_add(DEFAULT_CHECK_INTERVAL))
    );
    assert!(h.drain().is_empty());
    h.assert_p1();
}

#[test]
fn p4_upnp_restart_on_a_v1_service_adds_the_same_port_again() {
    let mut h = Harness::new(client());
    h.external_ip_from(&desc_v1(), IP1, "203.0.113.7");
    h.answer(ms(40), &ok(&soap_ok("AddPortMapping", IP1, &[])));
    let m = h.c.mapping().expect("installed");
    h.events();
    let t = ms(40).saturating_add(DEFAULT_CHECK_INTERVAL);
    h.c.handle_timeout(t);
    let (_, _, req) = h.answer(t, &fault(714, "NoSuchEntryInArray"));
    assert_eq!(req, check_text(IP1, 4000));
    assert_eq!(h.events(), vec![Event::GatewayRestarted(Protocol::UpnpIgd)]);
    h.answer(t, &external_ip_ok(IP1, "203.0.113.7"));
    let (_, _, req) = h.answer(t, &ok(&soap_ok("AddPortMapping", IP1, &[])));
    assert_eq!(req, soap_text("AddPortMapping", IP1, &add_args(4000, 3600)));
    assert_eq!(
        h.events(),
        vec![Event::Installed(Mapping { granted_at: t, ..m })]
    );
    h.assert_p1();
}

#[test]
fn p4_upnp_checks_at_the_interval_and_right_before_renewal() {
    // A 60 s lease, checked every 10 s: at +10, +20, then at the renewal
    // (+30), right before it.
    let request = MappingRequest {
        lifetime: Duration::from_secs(60),
        ..request()
    };
    let c = UpnpClient::new(GW, request, Duration::from_secs(2))
        .expect("valid")
        .with_check_interval(Duration::from_secs(10));
    let mut h = Harness::new(c);
    h.external_ip("203.0.113.7");
    h.answer(ms(40), &add_any_ok("4000"));
    let m = h.c.mapping().expect("installed");
    h.events();
    assert_eq!(m.renew_at(), ms(30_040));
    for at in [10_040, 20_040] {
        assert_eq!(h.c.poll_timeout(), Some(ms(at)));
        h.c.handle_timeout(ms(at));
        answer_check(&mut h, ms(at), &entry_ours());
        assert!(h.events().is_empty());
        assert!(h.drain().is_empty(), "no renewal yet");
        assert_eq!(h.c.mapping(), Some(m));
    }
    // Due at the renewal, not 10 s after the last check's answer.
    assert_eq!(h.c.poll_timeout(), Some(m.renew_at()));
    h.c.handle_timeout(m.renew_at());
    answer_check(&mut h, m.renew_at(), &entry_ours());
    let (_, _, req) = h.answer(m.renew_at(), &external_ip_ok(IP2, "203.0.113.7"));
    assert_eq!(req, soap_text("GetExternalIPAddress", IP2, ""));
    let (_, _, req) = h.answer(m.renew_at(), &ok(&soap_ok("AddPortMapping", IP2, &[])));
    assert_eq!(req, soap_text("AddPortMapping", IP2, &add_args(4000, 60)));
    assert!(matches!(h.events().as_slice(), [Event::Installed(_)]));
    h.assert_p1();
}

#[test]
fn p4_upnp_a_short_lease_is_checked_only_at_its_renewals() {
    // A 6 s lease (the lab's): min(30 s, 3 s) = 3 s, the renewal itself.
    let request = MappingRequest {
        lifetime: Duration::from_secs(6),
        ..request()
    };
    let mut h = Harness::new(UpnpClient::new(GW, request, Duration::from_secs(2)).expect("valid"));
    h.external_ip("203.0.113.7");
    h.answer(ms(40), &add_any_ok("4000"));
    let m = h.c.mapping().expect("installed");
    h.events();
    assert_eq!(h.c.poll_timeout(), Some(m.renew_at()));
    assert_eq!(m.renew_at(), ms(3_040));
    h.c.handle_timeout(m.renew_at());
    answer_check(&mut h, m.renew_at(), &fault(714, "NoSuchEntryInArray"));
    // Found right before the renewal: one re-add, reported as a restart.
    assert_eq!(h.events(), vec![Event::GatewayRestarted(Protocol::UpnpIgd)]);
    h.answer(m.renew_at(), &external_ip_ok(IP2, "203.0.113.7"));
    let (_, _, req) = h.answer(m.renew_at(), &add_any_ok("4000"));
    assert_eq!(req, soap_text("AddAnyPortMapping", IP2, &add_args(4000, 6)));
    assert_eq!(
        h.events(),
        vec![Event::Installed(Mapping {
            granted_at: m.renew_at(),
            ..m
        })]
    );
    assert!(h.drain().is_empty());
    assert_eq!(h.c.poll_timeout(), Some(ms(6_040)));
    h.assert_p1();
}

#[test]
fn p4_upnp_a_present_entry_changes_nothing() {
    let mut h = Harness::new(client());
    let m = h.install();
    let mut t = ms(40);
    for _ in 0..3 {
        t = t.saturating_add(DEFAULT_CHECK_INTERVAL);
        assert_eq!(h.c.poll_timeout(), Some(t));
        h.c.handle_timeout(t);
        // Answers with spaces around the values are still ours.
        answer_check(&mut h, t, &entry(IP2, " 192.168.1.20 ", "4000"));
        assert!(h.events().is_empty());
        assert!(h.drain().is_empty());
        assert_eq!(h.c.mapping(), Some(m));
    }
    assert_eq!(
        h.c.poll_timeout(),
        Some(t.saturating_add(DEFAULT_CHECK_INTERVAL))
    );
    h.assert_p1();
}

#[test]
fn p4_upnp_a_failed_check_is_no_restart_and_keeps_the_mapping() {
    let failures: Vec<(&str, Option<Vec<u8>>)> = vec![
        ("connection refused", None),
        (
            "500 without a fault",
            Some(http("500 Internal Server Error", "")),
        ),
        ("another fault", Some(fault(501, "Action Failed"))),
        ("401 Invalid Action", Some(fault(401, "Invalid Action"))),
        (
            "no internal client",
            Some(ok(&soap_ok(
                "GetSpecificPortMappingEntry",
                IP2,
                &[("NewInternalPort", "4000")],
            ))),
        ),
        ("a host name", Some(entry(IP2, "peer.lan", "4000"))),
        ("garbage", Some(b"HTTP/1.1 200 OK\r\n\r\n<<<".to_vec())),
        (
            "redirect",
            Some(
                b"HTTP/1.1 302 Found\r\nLocation: http://6.6.6.6/\r\nContent-Length: 0\r\n\r\n"
                    .to_vec(),
            ),
        ),
    ];
    for (what, answer) in failures {
        let mut h = Harness::new(client());
        let m = h.install();
        let t = ms(40).saturating_add(DEFAULT_CHECK_INTERVAL);
        h.c.handle_timeout(t);
        let (id, _, req) = h.http();
        assert_eq!(req, check_text(IP2, 4000));
        match &answer {
            Some(bytes) => h.c.handle_http(t, id, Ok(bytes)),
            None => h.c.handle_http(t, id, Err(what.to_owned())),
        }
        assert!(h.events().is_empty(), "{what}");
        assert!(h.drain().is_empty(), "{what}: nothing re-added");
        assert_eq!(h.c.mapping(), Some(m), "{what}");
        // Checked again at the next interval.
        let next = t.saturating_add(DEFAULT_CHECK_INTERVAL);
        assert_eq!(h.c.poll_timeout(), Some(next), "{what}");
        h.c.handle_timeout(next);
        answer_check(&mut h, next, &entry_ours());
        assert!(h.events().is_empty(), "{what}");
        h.assert_p1();
    }

    // A check that times out: the same.
    let mut h = Harness::new(client());
    let m = h.install();
    let t = ms(40).saturating_add(DEFAULT_CHECK_INTERVAL);
    h.c.handle_timeout(t);
    let (id, _, _) = h.http();
    let late = t.saturating_add(HTTP_TIMEOUT);
    assert_eq!(h.c.poll_timeout(), Some(late));
    h.c.handle_timeout(late);
    assert!(h.events().is_empty());
    assert!(h.drain().is_empty());
    assert_eq!(h.c.mapping(), Some(m));
    assert_eq!(
        h.c.poll_timeout(),
        Some(late.saturating_add(DEFAULT_CHECK_INTERVAL))
    );
    // Its late answer, even a 714, is ignored by its id.
    h.c.handle_http(late, id, Ok(&fault(714, "NoSuchEntryInArray")));
    assert!(h.events().is_empty());
    assert_eq!(h.c.mapping(), Some(m));
}

#[test]
fn p4_upnp_an_entry_for_another_internal_client_is_a_restart() {
    for (client_ip, port) in [("192.168.1.66", "4000"), ("192.168.1.20", "4001")] {
        let mut h = Harness::new(client());
        let m = h.install();
        let t = ms(40).saturating_add(DEFAULT_CHECK_INTERVAL);
        h.c.handle_timeout(t);
        answer_check(&mut h, t, &entry(IP2, client_ip, port));
        assert_eq!(
            h.events(),
            vec![Event::GatewayRestarted(Protocol::UpnpIgd)],
            "{client_ip}:{port}"
        );
        h.answer(t, &external_ip_ok(IP2, "203.0.113.7"));
        // The port is asked for again; taken, the gateway reserves another
        // one, which is the one reported (P3).
        let (_, _, req) = h.answer(t, &add_any_ok("40123"));
        assert_eq!(
            req,
            soap_text("AddAnyPortMapping", IP2, &add_args(4000, 3600))
        );
        let again = h.c.mapping().expect("installed again");
        assert_eq!(again.external, SocketAddr::new(IpAddr::V4(EXT), 40123));
        assert_eq!(again.internal, m.internal);
        assert_eq!(h.events(), vec![Event::Installed(again)]);
        h.assert_p1();
    }
}

#[test]
fn p4_upnp_a_failed_re_add_after_a_restart_is_a_failure() {
    let mut h = Harness::new(client());
    h.install();
    let t = ms(40).saturating_add(DEFAULT_CHECK_INTERVAL);
    h.c.handle_timeout(t);
    answer_check(&mut h, t, &fault(714, "NoSuchEntryInArray"));
    assert_eq!(h.events(), vec![Event::GatewayRestarted(Protocol::UpnpIgd)]);
    h.answer(t, &external_ip_ok(IP2, "203.0.113.7"));
    let (_, _, req) = h.answer(t, &fault(501, "Action Failed"));
    assert!(req.contains("#AddAnyPortMapping"));
    // AddAnyPortMapping refused: AddPortMapping of the same port.
    let (_, _, req) = h.answer(t, &fault(501, "Action Failed"));
    assert_eq!(req, soap_text("AddPortMapping", IP2, &add_args(4000, 3600)));
    let e = h.failure();
    assert!(
        matches!(&e, MapError::Refused { reason, .. } if reason.contains("501")),
        "{e:?}"
    );
    assert_eq!(h.c.mapping(), None);
    assert_eq!(h.c.poll_timeout(), None);
    assert!(h.drain().is_empty());
    h.assert_p1();
}

#[test]
fn delete_during_a_check_or_after_a_restart() {
    // During a check: the mapping is deleted.
    let mut h = Harness::new(client());
    h.install();
    let t = ms(40).saturating_add(DEFAULT_CHECK_INTERVAL);
    h.c.handle_timeout(t);
    let (id, _, _) = h.http();
    h.c.delete(t);
    h.c.handle_http(t, id, Ok(&fault(714, "NoSuchEntryInArray")));
    let (_, _, req) = h.answer(t, &ok(&soap_ok("DeletePortMapping", IP2, &[])));
    assert!(req.contains("#DeletePortMapping"));
    assert_eq!(h.events(), vec![Event::Deleted(Protocol::UpnpIgd)]);

    // After a restart, before the re-add: nothing is held, Deleted at once.
    let mut h = Harness::new(client());
    h.install();
    h.c.handle_timeout(t);
    answer_check(&mut h, t, &fault(714, "NoSuchEntryInArray"));
    h.events();
    h.http();
    h.c.delete(t);
    assert_eq!(h.events(), vec![Event::Deleted(Protocol::UpnpIgd)]);
    assert!(h.drain().is_empty());
    assert_eq!(h.c.poll_timeout(), None);

    // During the re-add: what it grants is deleted.
    let mut h = Harness::new(client());
    h.install();
    h.c.handle_timeout(t);
    answer_check(&mut h, t, &fault(714, "NoSuchEntryInArray"));
    h.events();
    h.answer(t, &external_ip_ok(IP2, "203.0.113.7"));
    let (id, _, _) = h.http();
    h.c.delete(t);
    h.c.handle_http(t, id, Ok(&add_any_ok("4000")));
    let (_, _, req) = h.answer(t, &ok(&soap_ok("DeletePortMapping", IP2, &[])));
    assert!(req.contains("<NewExternalPort>4000</NewExternalPort>"));
    assert_eq!(h.events(), vec![Event::Deleted(Protocol::UpnpIgd)]);
    h.assert_p1();
}

proptest! {
    #[test]
    fn arbitrary_check_answers_never_panic_and_keep_p1(
        answers in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..700), 1..6),
    ) {
        let mut h = Harness::new(client());
        let m = h.install();
        for b in &answers {
            if let Some(t) = h.c.poll_timeout() {
                h.c.handle_timeout(t);
                for tr in h.drain() {
                    if let Transmit::Http { id, .. } = tr {
                        h.c.handle_http(t, id, Ok(b));
                    }
                }
            }
            // Garbage is no 714 and no entry of another client: no restart.
            let events = h.events();
            prop_assert!(
                !events.contains(&Event::GatewayRestarted(Protocol::UpnpIgd)),
                "{events:?}"
            );
            prop_assert_eq!(h.c.mapping(), Some(m));
        }
        h.assert_p1();
    }
}
