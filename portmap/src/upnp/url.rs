//! `http://` URLs as UPnP uses them (SSDP `LOCATION`, `URLBase`,
//! `controlURL`), restricted to literal IPv4 hosts: a host name would need a
//! resolver and could name any host, so it is refused (P1).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// The longest URL accepted.
const MAX_URL: usize = 1024;

/// An `http://` URL with a literal IPv4 host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    /// The host.
    pub host: Ipv4Addr,
    /// The port (80 when the URL names none).
    pub port: u16,
    /// The path and query, starting with `/` (the request target).
    pub path: String,
}

/// Why a URL was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Empty, too long, or with characters that have no place in a request
    /// line (spaces, controls, non-ASCII).
    #[error("bad URL characters or length")]
    BadCharacters,
    /// Not `http://` (https, ftp, …).
    #[error("not an http:// URL")]
    NotHttp,
    /// User information (`user@host`) is refused.
    #[error("user information in URL")]
    UserInfo,
    /// The host is a name or an IPv6 literal, not a literal IPv4 address
    /// (P1: no resolver chooses a target).
    #[error("host {0:?} is not a literal IPv4 address")]
    NotIpv4(String),
    /// The port is not a number in 1..=65535.
    #[error("bad port")]
    BadPort,
}

impl HttpUrl {
    /// The address to connect to.
    #[must_use]
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.host, self.port))
    }

    /// Resolves `reference` (absolute, network-path `//host/…`,
    /// absolute-path `/…` or relative `x/y`) against `self`.
    ///
    /// # Errors
    /// A [`UrlError`] when the reference or the URL it makes is refused.
    pub fn join(&self, reference: &str) -> Result<HttpUrl, UrlError> {
        let r = reference.trim();
        check_chars(r)?;
        if has_scheme(r) {
            return parse_http_url(r);
        }
        if let Some(rest) = r.strip_prefix("//") {
            return parse_http_url(&format!("http://{rest}"));
        }
        let path = if r.starts_with('/') {
            r.to_owned()
        } else {
            // Relative to the base path's directory.
            let base = self.path.split(['?', '#']).next().unwrap_or("/");
            let dir = base.rfind('/').map_or("/", |i| &base[..=i]);
            format!("{dir}{r}")
        };
        let path = strip_fragment(&path);
        let path = if path.is_empty() {
            "/".to_owned()
        } else {
            path
        };
        Ok(HttpUrl {
            host: self.host,
            port: self.port,
            path,
        })
    }
}

impl std::fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}:{}{}", self.host, self.port, self.path)
    }
}

fn check_chars(s: &str) -> Result<(), UrlError> {
    if s.is_empty() || s.len() > MAX_URL || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(UrlError::BadCharacters);
    }
    Ok(())
}

fn has_scheme(s: &str) -> bool {
    match s.find(':') {
        Some(i) => {
            let scheme = &s[..i];
            !scheme.is_empty()
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
                && !s[..i].contains('/')
        }
        None => false,
    }
}

fn strip_fragment(s: &str) -> String {
    s.split('#').next().unwrap_or("").to_owned()
}

/// Parses an absolute `http://a.b.c.d[:port][/path]` URL.
///
/// # Errors
/// A [`UrlError`]: not http, a host name or IPv6 literal, user
/// information, a bad port, or bad characters.
pub fn parse_http_url(s: &str) -> Result<HttpUrl, UrlError> {
    let s = s.trim();
    check_chars(s)?;
    let rest = match s.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("http://") => &s[7..],
        _ => return Err(UrlError::NotHttp),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return Err(UrlError::UserInfo);
    }
    if authority.starts_with('[') {
        return Err(UrlError::NotIpv4(authority.to_owned()));
    }
    let (host, port) = match authority.split_once(':') {
        Some((h, p)) => {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(UrlError::BadPort);
            }
            let port: u16 = p.parse().map_err(|_| UrlError::BadPort)?;
            if port == 0 {
                return Err(UrlError::BadPort);
            }
            (h, port)
        }
        None => (authority, 80),
    };
    let host: Ipv4Addr = host
        .parse()
        .map_err(|_| UrlError::NotIpv4(host.to_owned()))?;
    let path = strip_fragment(tail);
    let path = if path.is_empty() {
        "/".to_owned()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path
    };
    Ok(HttpUrl { host, port, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_urls_parse_with_literal_ipv4_hosts_only() {
        let u = parse_http_url("HTTP://192.168.1.1:5000/rootDesc.xml").expect("valid");
        assert_eq!(u.host, Ipv4Addr::new(192, 168, 1, 1));
        assert_eq!(u.port, 5000);
        assert_eq!(u.path, "/rootDesc.xml");
        let u = parse_http_url("http://10.0.0.1").expect("valid");
        assert_eq!((u.port, u.path.as_str()), (80, "/"));
        assert_eq!(
            parse_http_url("http://router.lan/x"),
            Err(UrlError::NotIpv4("router.lan".into()))
        );
        assert!(matches!(
            parse_http_url("http://[fe80::1]/x"),
            Err(UrlError::NotIpv4(_))
        ));
        assert_eq!(parse_http_url("https://10.0.0.1/"), Err(UrlError::NotHttp));
        assert_eq!(
            parse_http_url("http://a@10.0.0.1/"),
            Err(UrlError::UserInfo)
        );
        assert_eq!(parse_http_url("http://10.0.0.1:0/"), Err(UrlError::BadPort));
        assert_eq!(
            parse_http_url("http://10.0.0.1:99999/"),
            Err(UrlError::BadPort)
        );
        assert_eq!(
            parse_http_url("http://10.0.0.1/a b"),
            Err(UrlError::BadCharacters)
        );
        assert_eq!(
            parse_http_url("http://10.0.0.1/a\r\nX: y"),
            Err(UrlError::BadCharacters)
        );
    }

    #[test]
    fn references_resolve_against_the_base() {
        let base = parse_http_url("http://192.168.1.1:5000/dev/rootDesc.xml").expect("valid");
        assert_eq!(base.join("/ctl/IPConn").expect("ok").path, "/ctl/IPConn");
        assert_eq!(base.join("ctl/IPConn").expect("ok").path, "/dev/ctl/IPConn");
        let abs = base
            .join("http://192.168.1.1:49000/upnp/control")
            .expect("ok");
        assert_eq!((abs.port, abs.path.as_str()), (49000, "/upnp/control"));
        let other = base.join("//10.9.9.9:80/x").expect("ok");
        assert_eq!(other.host, Ipv4Addr::new(10, 9, 9, 9));
        assert!(base.join("http://evil.example/x").is_err());
    }
}
