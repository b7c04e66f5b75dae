//! D1: which port-mapping services the gateway offers, without installing
//! anything. One PCP ANNOUNCE (opcode 0, creates no mapping), one NAT-PMP
//! external-address request (opcode 0, creates no mapping) and one SSDP
//! M-SEARCH go out; the answers are collected until the timeout. Targets
//! are the gateway's port 5351 and the SSDP group only (P1); an SSDP answer
//! counts only from the gateway with its LOCATION on the gateway.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::upnp::{SEARCH_TARGETS, parse_http_url, parse_ssdp_response};
use crate::{Instant, PCP_PORT, SSDP_GROUP_V4, Transmit, natpmp, pcp};

/// What answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeReport {
    /// PCP: the result code's name and the server's epoch.
    pub pcp: Option<(String, u32)>,
    /// NAT-PMP: the result code's name and the external address it reports.
    pub natpmp: Option<(String, Option<Ipv4Addr>)>,
    /// UPnP-IGD: the device description's URL, and the `SERVER` header.
    pub upnp: Option<(String, Option<String>)>,
}

/// The probe machine (house shape: `handle_*` / `poll_*`, time passed in).
#[derive(Debug)]
pub struct Probe {
    gateway: IpAddr,
    client_ip: IpAddr,
    timeout: Duration,
    until: Option<Instant>,
    transmits: VecDeque<Transmit>,
    report: ProbeReport,
}

impl Probe {
    /// A probe of `gateway` from `client_ip` (the local address toward it).
    #[must_use]
    pub fn new(gateway: IpAddr, client_ip: IpAddr, timeout: Duration) -> Self {
        Probe {
            gateway,
            client_ip,
            timeout,
            until: None,
            transmits: VecDeque::new(),
            report: ProbeReport::default(),
        }
    }

    /// Sends the three questions (NAT-PMP and SSDP only over IPv4).
    pub fn start(&mut self, now: Instant) {
        self.until = Some(now.saturating_add(self.timeout));
        let to = SocketAddr::new(self.gateway, PCP_PORT);
        self.transmits.push_back(Transmit::Udp {
            to,
            payload: pcp_announce_request(self.client_ip).to_vec(),
        });
        if self.gateway.is_ipv4() {
            self.transmits.push_back(Transmit::Udp {
                to,
                payload: natpmp::encode_external_address_request().to_vec(),
            });
            self.transmits.push_back(Transmit::Udp {
                to: SSDP_GROUP_V4,
                payload: crate::upnp::m_search(SEARCH_TARGETS[0]),
            });
        }
    }

    /// A datagram arrived.
    pub fn handle_udp(&mut self, _now: Instant, from: SocketAddr, datagram: &[u8]) {
        if from.ip().to_canonical() != self.gateway.to_canonical() {
            return;
        }
        if from.port() == PCP_PORT {
            match datagram.first() {
                Some(&pcp::VERSION) => {
                    if let Ok(r) = pcp::Response::decode(datagram) {
                        self.report.pcp = Some((r.result.name().to_owned(), r.epoch));
                    }
                }
                Some(&natpmp::VERSION) => {
                    if let Ok(natpmp::Response::ExternalAddress(r)) =
                        natpmp::Response::decode(datagram)
                    {
                        let ip = (r.result == natpmp::ResultCode::Success).then_some(r.external_ip);
                        self.report.natpmp = Some((r.result.name().to_owned(), ip));
                    }
                }
                _ => {}
            }
            return;
        }
        if let Ok(answer) = parse_ssdp_response(datagram) {
            let on_gateway = parse_http_url(&answer.location)
                .is_ok_and(|u| IpAddr::V4(u.host) == self.gateway.to_canonical());
            if on_gateway && answer.is_igd() {
                self.report.upnp = Some((answer.location, answer.server));
            }
        }
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.until.is_some_and(|u| now >= u) {
            self.until = None;
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// When the probe ends.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.until
    }

    /// Whether it is over: every service answered, or the timeout passed.
    #[must_use]
    pub fn is_done(&self) -> bool {
        let all = self.report.pcp.is_some()
            && (self.gateway.is_ipv6()
                || (self.report.natpmp.is_some() && self.report.upnp.is_some()));
        self.until.is_none() || all
    }

    /// What answered so far.
    #[must_use]
    pub fn report(&self) -> &ProbeReport {
        &self.report
    }
}

impl ProbeReport {
    /// P6 from the NAT-PMP answer, the one that names the gateway's external
    /// address: `Some(true)` when that address is private or shared, or the
    /// gateway says it has none ("network failure", what a gateway behind
    /// another NAT answers); `Some(false)` for a public one; `None` without
    /// a NAT-PMP answer that tells.
    #[must_use]
    pub fn double_nat(&self) -> Option<bool> {
        match &self.natpmp {
            Some((_, Some(ip))) => Some(crate::is_double_nat_address(IpAddr::V4(*ip))),
            Some((result, None)) => {
                (result == natpmp::ResultCode::NetworkFailure.name()).then_some(true)
            }
            None => None,
        }
    }
}

/// A PCP ANNOUNCE request (RFC 6887 §14.1): the 24-byte common header with
/// opcode 0 and lifetime 0. It asks for nothing to be installed.
#[must_use]
pub fn pcp_announce_request(client_ip: IpAddr) -> [u8; pcp::HEADER_LEN] {
    let mut b = [0u8; pcp::HEADER_LEN];
    b[0] = pcp::VERSION;
    b[1] = pcp::OPCODE_ANNOUNCE;
    b[8..24].copy_from_slice(&pcp::to_wire_ip(client_ip).octets());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw() -> IpAddr {
        "192.168.1.1".parse().expect("literal")
    }

    fn started() -> Probe {
        let mut p = Probe::new(
            gw(),
            "192.168.1.2".parse().expect("literal"),
            Duration::from_secs(2),
        );
        p.start(Instant::ZERO);
        p
    }

    #[test]
    fn d1_the_probe_asks_three_questions_none_of_which_installs_anything() {
        let mut p = started();
        let mut sent = Vec::new();
        while let Some(t) = p.poll_transmit() {
            sent.push(t);
        }
        assert_eq!(sent.len(), 3);
        let Transmit::Udp { to, payload } = &sent[0] else {
            panic!("udp")
        };
        assert_eq!(*to, SocketAddr::new(gw(), PCP_PORT));
        assert_eq!(payload[1], pcp::OPCODE_ANNOUNCE, "ANNOUNCE, not MAP");
        assert_eq!(&payload[4..8], &[0, 0, 0, 0], "lifetime 0");
        let Transmit::Udp { to, payload } = &sent[1] else {
            panic!("udp")
        };
        assert_eq!(*to, SocketAddr::new(gw(), PCP_PORT));
        assert_eq!(
            payload.as_slice(),
            &[0, 0],
            "NAT-PMP external address request"
        );
        let Transmit::Udp { to, .. } = &sent[2] else {
            panic!("udp")
        };
        assert_eq!(*to, SSDP_GROUP_V4);
    }

    #[test]
    fn answers_are_collected_and_strangers_ignored() {
        let mut p = started();
        let nat = natpmp::Response::ExternalAddress(natpmp::ExternalAddressResponse {
            result: natpmp::ResultCode::Success,
            epoch: 7,
            external_ip: Ipv4Addr::new(203, 0, 113, 9),
        })
        .encode();
        // The same answer from another host changes nothing (P1).
        p.handle_udp(
            Instant::ZERO,
            "192.168.1.66:5351".parse().expect("literal"),
            &nat,
        );
        assert_eq!(p.report().natpmp, None);
        p.handle_udp(Instant::ZERO, SocketAddr::new(gw(), PCP_PORT), &nat);
        assert_eq!(
            p.report().natpmp,
            Some(("success".to_owned(), Some(Ipv4Addr::new(203, 0, 113, 9))))
        );
        let ssdp = b"HTTP/1.1 200 OK\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nLOCATION: http://192.168.1.1:5000/rootDesc.xml\r\nSERVER: test\r\n\r\n";
        p.handle_udp(Instant::ZERO, SocketAddr::new(gw(), 1900), ssdp);
        assert_eq!(
            p.report().upnp.as_ref().map(|u| u.0.as_str()),
            Some("http://192.168.1.1:5000/rootDesc.xml")
        );
        assert!(!p.is_done(), "PCP has not answered");
        p.handle_timeout(Instant::ZERO.saturating_add(Duration::from_secs(2)));
        assert!(p.is_done());
    }

    #[test]
    fn p6_the_probe_tells_double_nat_from_the_nat_pmp_answer() {
        let answer = |result: natpmp::ResultCode, ip: Ipv4Addr| {
            let mut p = started();
            p.handle_udp(
                Instant::from_millis(5),
                SocketAddr::new(gw(), PCP_PORT),
                &natpmp::Response::ExternalAddress(natpmp::ExternalAddressResponse {
                    result,
                    epoch: 1,
                    external_ip: ip,
                })
                .encode(),
            );
            p.report().double_nat()
        };
        let ok = natpmp::ResultCode::Success;
        assert_eq!(answer(ok, Ipv4Addr::new(203, 0, 113, 9)), Some(false));
        assert_eq!(answer(ok, Ipv4Addr::new(10, 9, 0, 2)), Some(true));
        assert_eq!(answer(ok, Ipv4Addr::new(100, 64, 3, 4)), Some(true));
        assert_eq!(
            answer(natpmp::ResultCode::NetworkFailure, Ipv4Addr::UNSPECIFIED),
            Some(true)
        );
        assert_eq!(
            answer(natpmp::ResultCode::NotAuthorized, Ipv4Addr::UNSPECIFIED),
            None
        );
        assert_eq!(started().report().double_nat(), None);
    }

    #[test]
    fn p1_an_ssdp_answer_pointing_elsewhere_is_not_reported() {
        let mut p = started();
        let ssdp = b"HTTP/1.1 200 OK\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nLOCATION: http://198.51.100.7:80/x.xml\r\n\r\n";
        p.handle_udp(Instant::ZERO, SocketAddr::new(gw(), 1900), ssdp);
        assert_eq!(p.report().upnp, None);
    }
}
