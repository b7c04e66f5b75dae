//! Target `portmap_upnp_xml`: the HTTP response parser, the device
//! description parser and the SOAP response parser never panic on any
//! bytes, respect their bounds, and a description served by the gateway
//! can only make the UPnP client talk to the gateway's own address (P1).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use natrix_portmap::upnp::{
    MAX_DESCRIPTION_RESPONSE, MAX_SOAP_RESPONSE, UpnpClient, parse_description,
    parse_http_response, parse_soap_response,
};
use natrix_portmap::{Client, Instant, MappingRequest, SSDP_GROUP_V4, Transmit};

const GW: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);

const ACTIONS: [&str; 4] = [
    "GetExternalIPAddress",
    "AddAnyPortMapping",
    "AddPortMapping",
    "DeletePortMapping",
];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for max in [MAX_DESCRIPTION_RESPONSE, MAX_SOAP_RESPONSE, 64] {
        if let Ok(r) = parse_http_response(data, max) {
            assert!(r.body.len() <= max);
            assert!((100..600).contains(&r.status));
        }
    }
    if let Ok(d) = parse_description(data) {
        assert!(d.services.len() <= 64);
    }
    for action in ACTIONS {
        let _ = parse_soap_response(data, action);
    }

    // The bytes as the description the gateway serves.
    let request =
        MappingRequest::new("192.168.1.20:4000".parse().expect("literal")).expect("valid request");
    let mut client = UpnpClient::new(GW, request, Duration::from_secs(2)).expect("valid client");
    client.start(Instant::ZERO);
    client.handle_udp(
        Instant::from_millis(10),
        SocketAddr::new(IpAddr::V4(GW), 1900),
        b"HTTP/1.1 200 OK\r\nST: upnp:rootdevice\r\nLOCATION: http://192.168.1.1:5000/rootDesc.xml\r\n\r\n",
    );
    let mut response = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
    response.extend_from_slice(data);
    for round in 0..3u64 {
        let mut ids = Vec::new();
        while let Some(t) = client.poll_transmit() {
            match t {
                Transmit::Udp { to, .. } => assert_eq!(to, SSDP_GROUP_V4),
                Transmit::Http { id, to, .. } => {
                    assert_eq!(to.ip(), IpAddr::V4(GW));
                    ids.push(id);
                }
            }
        }
        let body: &[u8] = if round == 0 { &response } else { data };
        for id in ids {
            client.handle_http(Instant::from_millis(20 + round), id, Ok(body));
        }
    }
    while client.poll_event().is_some() {}
});
