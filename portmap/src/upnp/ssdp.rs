//! SSDP (UPnP Device Architecture 1.1 §1.3): the M-SEARCH we send to
//! 239.255.255.250:1900 and the unicast `HTTP/1.1 200 OK` answers.

/// The search targets sent, each in its own M-SEARCH: the IGD device type
/// (IGD:2 devices answer searches for `:1` too, UDA 1.1 §1.3.2) and
/// `upnp:rootdevice` for gateways that answer only that.
pub const SEARCH_TARGETS: [&str; 2] = [
    "urn:schemas-upnp-org:device:InternetGatewayDevice:1",
    "upnp:rootdevice",
];

/// The MX (maximum wait, seconds) in our M-SEARCH.
pub const SEARCH_MX: u8 = 1;

/// The largest SSDP answer parsed.
pub const MAX_SSDP_RESPONSE: usize = 4096;

/// The most header lines an SSDP answer may have.
const MAX_HEADERS: usize = 40;

/// A parsed SSDP search answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SsdpResponse {
    /// The `LOCATION` header: the device description URL (not yet
    /// checked).
    pub location: String,
    /// The `ST` header (search target answered), if any.
    pub st: Option<String>,
    /// The `USN` header, if any.
    pub usn: Option<String>,
    /// The `SERVER` header, if any.
    pub server: Option<String>,
}

impl SsdpResponse {
    /// Whether the answer is for an Internet Gateway Device (or one of its
    /// WAN connection services).
    #[must_use]
    pub fn is_igd(&self) -> bool {
        self.st.as_deref().is_some_and(|st| {
            st.contains("InternetGatewayDevice")
                || st.contains("WANIPConnection")
                || st.contains("WANPPPConnection")
        })
    }
}

/// Why an SSDP datagram was not a usable search answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SsdpError {
    /// Larger than [`MAX_SSDP_RESPONSE`].
    #[error("SSDP answer too large ({0} bytes)")]
    TooLarge(usize),
    /// Not an `HTTP/1.x <status>` response (e.g. a `NOTIFY` or junk).
    #[error("not an SSDP response")]
    NotAResponse,
    /// A status other than 200.
    #[error("SSDP status {0}")]
    Status(u16),
    /// A header line without a colon, or too many header lines.
    #[error("malformed SSDP header")]
    BadHeader,
    /// No `LOCATION` header.
    #[error("no LOCATION header")]
    NoLocation,
    /// Two `LOCATION` headers that differ.
    #[error("conflicting LOCATION headers")]
    ConflictingLocation,
}

/// Builds the M-SEARCH request for `st`.
#[must_use]
pub fn m_search(st: &str) -> Vec<u8> {
    format!(
        "M-SEARCH * HTTP/1.1\r\n\
         HOST: 239.255.255.250:1900\r\n\
         MAN: \"ssdp:discover\"\r\n\
         MX: {SEARCH_MX}\r\n\
         ST: {st}\r\n\
         \r\n"
    )
    .into_bytes()
}

/// Splits `text` into lines ending in CRLF or a bare LF.
pub(crate) fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l))
}

/// Parses `HTTP/1.x <code> …` into the code (100..=599).
pub(crate) fn status_code(line: &str) -> Option<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    let v = version.get(..7)?;
    if !v.eq_ignore_ascii_case("HTTP/1.") || version.len() != 8 {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    code.parse().ok().filter(|c| (100..600).contains(c))
}

/// Parses one SSDP datagram as a search answer. Header names are matched
/// case-insensitively; lines may end in CRLF or LF.
///
/// # Errors
/// An [`SsdpError`].
pub fn parse_ssdp_response(datagram: &[u8]) -> Result<SsdpResponse, SsdpError> {
    if datagram.len() > MAX_SSDP_RESPONSE {
        return Err(SsdpError::TooLarge(datagram.len()));
    }
    let text = String::from_utf8_lossy(datagram);
    let mut it = lines(&text);
    let code = it
        .next()
        .and_then(status_code)
        .ok_or(SsdpError::NotAResponse)?;
    if code != 200 {
        return Err(SsdpError::Status(code));
    }
    let mut location: Option<String> = None;
    let (mut st, mut usn, mut server) = (None, None, None);
    let mut count = 0;
    for line in it {
        if line.is_empty() {
            break;
        }
        count += 1;
        if count > MAX_HEADERS {
            return Err(SsdpError::BadHeader);
        }
        let (name, value) = line.split_once(':').ok_or(SsdpError::BadHeader)?;
        let name = name.trim();
        let value = value.trim().to_owned();
        if name.eq_ignore_ascii_case("location") {
            match &location {
                Some(prev) if *prev != value => return Err(SsdpError::ConflictingLocation),
                Some(_) => {}
                None => location = Some(value),
            }
        } else if name.eq_ignore_ascii_case("st") {
            st.get_or_insert(value);
        } else if name.eq_ignore_ascii_case("usn") {
            usn.get_or_insert(value);
        } else if name.eq_ignore_ascii_case("server") {
            server.get_or_insert(value);
        }
    }
    let location = location
        .filter(|l| !l.is_empty())
        .ok_or(SsdpError::NoLocation)?;
    Ok(SsdpResponse {
        location,
        st,
        usn,
        server,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MINIUPNPD: &str = "HTTP/1.1 200 OK\r\n\
        CACHE-CONTROL: max-age=120\r\n\
        ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\
        USN: uuid:12342409-1234-1234-5678-ee1234cc5678::urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\
        EXT:\r\n\
        SERVER: OpenWRT/23.05 UPnP/1.1 MiniUPnPd/2.3.3\r\n\
        LOCATION: http://192.168.1.1:5000/rootDesc.xml\r\n\
        OPT: \"http://schemas.upnp.org/upnp/1/0/\"; ns=01\r\n\
        01-NLS: 1717171717\r\n\
        BOOTID.UPNP.ORG: 1717171717\r\n\
        CONFIGID.UPNP.ORG: 1337\r\n\
        \r\n";

    #[test]
    fn m_search_is_well_formed() {
        let m = String::from_utf8(m_search(SEARCH_TARGETS[0])).expect("ascii");
        assert!(m.starts_with("M-SEARCH * HTTP/1.1\r\n"));
        assert!(m.contains("MAN: \"ssdp:discover\"\r\n"));
        assert!(m.contains("MX: 1\r\n"));
        assert!(m.contains("ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n"));
        assert!(m.ends_with("\r\n\r\n"));
    }

    #[test]
    fn miniupnpd_answer_parses() {
        let r = parse_ssdp_response(MINIUPNPD.as_bytes()).expect("valid");
        assert_eq!(r.location, "http://192.168.1.1:5000/rootDesc.xml");
        assert!(r.is_igd());
        assert_eq!(
            r.server.as_deref(),
            Some("OpenWRT/23.05 UPnP/1.1 MiniUPnPd/2.3.3")
        );
    }

    #[test]
    fn headers_are_case_insensitive_and_bare_lf_is_tolerated() {
        let r = parse_ssdp_response(
            b"http/1.1 200 ok\nLocation:http://10.0.0.1/d.xml \nsT: upnp:rootdevice\n\n",
        )
        .expect("valid");
        assert_eq!(r.location, "http://10.0.0.1/d.xml");
        assert_eq!(r.st.as_deref(), Some("upnp:rootdevice"));
        assert!(!r.is_igd());
    }

    #[test]
    fn junk_and_wrong_messages_are_typed_errors() {
        assert_eq!(parse_ssdp_response(b""), Err(SsdpError::NotAResponse));
        assert_eq!(
            parse_ssdp_response(b"\xff\xfe garbage"),
            Err(SsdpError::NotAResponse)
        );
        assert_eq!(
            parse_ssdp_response(b"NOTIFY * HTTP/1.1\r\nLOCATION: http://10.0.0.1/\r\n\r\n"),
            Err(SsdpError::NotAResponse)
        );
        assert_eq!(
            parse_ssdp_response(b"HTTP/1.1 404 Not Found\r\n\r\n"),
            Err(SsdpError::Status(404))
        );
        assert_eq!(
            parse_ssdp_response(b"HTTP/1.1 200 OK\r\nST: x\r\n\r\n"),
            Err(SsdpError::NoLocation)
        );
        assert_eq!(
            parse_ssdp_response(b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n"),
            Err(SsdpError::BadHeader)
        );
        assert_eq!(
            parse_ssdp_response(
                b"HTTP/1.1 200 OK\r\nLOCATION: http://10.0.0.1/a\r\nlocation: http://6.6.6.6/a\r\n\r\n"
            ),
            Err(SsdpError::ConflictingLocation)
        );
        let big = vec![b'a'; MAX_SSDP_RESPONSE + 1];
        assert_eq!(
            parse_ssdp_response(&big),
            Err(SsdpError::TooLarge(MAX_SSDP_RESPONSE + 1))
        );
        let many = format!("HTTP/1.1 200 OK\r\n{}\r\n", "X: y\r\n".repeat(100));
        assert_eq!(
            parse_ssdp_response(many.as_bytes()),
            Err(SsdpError::BadHeader)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_ssdp_response(&data);
        }

        #[test]
        fn arbitrary_headers_never_panic(lines in proptest::collection::vec("[ -~]{0,40}", 0..20)) {
            let text = format!("HTTP/1.1 200 OK\r\n{}\r\n\r\n", lines.join("\r\n"));
            let _ = parse_ssdp_response(text.as_bytes());
        }
    }
}
