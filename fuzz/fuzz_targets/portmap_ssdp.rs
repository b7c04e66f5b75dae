//! Target `portmap_ssdp`: the SSDP answer parser and the URL checks never
//! panic, and an SSDP datagram from the gateway can only make the UPnP
//! client talk to the SSDP group or to the gateway's own address (P1).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use natrix_portmap::upnp::{MAX_SSDP_RESPONSE, UpnpClient, parse_http_url, parse_ssdp_response};
use natrix_portmap::{Client, Instant, MappingRequest, SSDP_GROUP_V4, Transmit};

const GW: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(answer) = parse_ssdp_response(data) {
        assert!(data.len() <= MAX_SSDP_RESPONSE);
        assert!(!answer.location.is_empty());
        if let Ok(url) = parse_http_url(&answer.location) {
            assert!(url.path.starts_with('/'));
            assert!(url.port != 0);
            let _ = url.join(&answer.location);
        }
    }

    let request =
        MappingRequest::new("192.168.1.20:4000".parse().expect("literal")).expect("valid request");
    let mut client = UpnpClient::new(GW, request, Duration::from_secs(2)).expect("valid client");
    client.start(Instant::ZERO);
    client.handle_udp(
        Instant::from_millis(10),
        SocketAddr::new(IpAddr::V4(GW), 1900),
        data,
    );
    while let Some(t) = client.poll_transmit() {
        match t {
            Transmit::Udp { to, .. } => assert_eq!(to, SSDP_GROUP_V4),
            Transmit::Http { to, .. } => assert_eq!(to.ip(), IpAddr::V4(GW)),
        }
    }
});
