//! A minimal HTTP/1.1 client side for UPnP: the requests we send (`GET` of
//! the description, `POST` of SOAP actions, always `Connection: close`) and
//! a strict, bounded parser of the response the driver read.

use super::ssdp::{lines, status_code};
use super::url::HttpUrl;

/// The most bytes read for a device description response (headers and
/// body). Real descriptions are 2–20 KiB.
pub const MAX_DESCRIPTION_RESPONSE: usize = 64 * 1024;

/// The most bytes read for a SOAP response (headers and body).
pub const MAX_SOAP_RESPONSE: usize = 16 * 1024;

/// The longest header section accepted.
const MAX_HEADER_BYTES: usize = 8 * 1024;
/// The most header lines accepted.
const MAX_HEADERS: usize = 64;
/// The most interim (1xx) responses skipped.
const MAX_INTERIM: usize = 4;

/// A parsed HTTP response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The headers, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why an HTTP response could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// More than the limit (or the limit reached without a complete
    /// response).
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    /// The response ended before its header section or body did.
    #[error("response truncated")]
    Truncated,
    /// Not `HTTP/1.x <code>`.
    #[error("bad status line")]
    BadStatusLine,
    /// A header line without a colon, too many headers, or a bad
    /// `Content-Length`.
    #[error("bad header: {0}")]
    BadHeader(&'static str),
    /// Bad chunked framing.
    #[error("bad chunked encoding")]
    BadChunk,
    /// A transfer coding other than `chunked`.
    #[error("unsupported transfer encoding {0:?}")]
    UnsupportedEncoding(String),
}

fn host_header(url: &HttpUrl) -> String {
    if url.port == 80 {
        url.host.to_string()
    } else {
        format!("{}:{}", url.host, url.port)
    }
}

/// Builds `GET <path> HTTP/1.1` for `url`.
#[must_use]
pub(crate) fn get_request(url: &HttpUrl) -> Vec<u8> {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: text/xml, application/xml\r\n\r\n",
        url.path,
        host_header(url)
    )
    .into_bytes()
}

/// Builds a SOAP `POST` for `url` with `soap_action` (the
/// `service#Action` value, quoted here) and `body`.
#[must_use]
pub(crate) fn soap_request(url: &HttpUrl, soap_action: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {} HTTP/1.1\r\n\
         Host: {}\r\n\
         Content-Type: text/xml; charset=\"utf-8\"\r\n\
         Content-Length: {}\r\n\
         SOAPAction: \"{}\"\r\n\
         Connection: close\r\n\
         \r\n\
         {}",
        url.path,
        host_header(url),
        body.len(),
        soap_action,
        body
    )
    .into_bytes()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The end of the header section: (index of the first body byte).
fn header_end(bytes: &[u8]) -> Option<usize> {
    let crlf = find(bytes, b"\r\n\r\n").map(|i| i + 4);
    let lf = find(bytes, b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Parses the response the driver read (at most `max` bytes). Handles
/// `Content-Length`, `Transfer-Encoding: chunked` and read-to-close bodies;
/// skips interim `1xx` responses.
///
/// # Errors
/// An [`HttpError`].
pub fn parse_http_response(bytes: &[u8], max: usize) -> Result<HttpResponse, HttpError> {
    if bytes.len() > max {
        return Err(HttpError::TooLarge(max));
    }
    let full = bytes.len() >= max;
    let mut rest = bytes;
    for _ in 0..=MAX_INTERIM {
        let Some(end) = header_end(rest) else {
            return Err(if full || rest.len() > MAX_HEADER_BYTES {
                HttpError::TooLarge(max.min(MAX_HEADER_BYTES))
            } else {
                HttpError::Truncated
            });
        };
        if end > MAX_HEADER_BYTES {
            return Err(HttpError::TooLarge(MAX_HEADER_BYTES));
        }
        let head = std::str::from_utf8(&rest[..end]).map_err(|_| HttpError::BadStatusLine)?;
        let body = &rest[end..];
        let mut it = lines(head);
        let status = it
            .next()
            .and_then(status_code)
            .ok_or(HttpError::BadStatusLine)?;
        let mut headers = Vec::new();
        for line in it {
            if line.is_empty() {
                break;
            }
            if headers.len() >= MAX_HEADERS {
                return Err(HttpError::BadHeader("too many headers"));
            }
            if line.starts_with([' ', '\t']) {
                return Err(HttpError::BadHeader("folded header"));
            }
            let (n, v) = line
                .split_once(':')
                .ok_or(HttpError::BadHeader("no colon"))?;
            headers.push((n.trim().to_owned(), v.trim().to_owned()));
        }
        if (100..200).contains(&status) {
            rest = body;
            continue;
        }
        let mut response = HttpResponse {
            status,
            headers,
            body: Vec::new(),
        };
        response.body = read_body(&response, body, full, max)?;
        return Ok(response);
    }
    Err(HttpError::BadStatusLine)
}

fn read_body(r: &HttpResponse, body: &[u8], full: bool, max: usize) -> Result<Vec<u8>, HttpError> {
    // 204 and 304 have no body.
    if r.status == 204 || r.status == 304 {
        return Ok(Vec::new());
    }
    if let Some(te) = r.header("transfer-encoding") {
        let last = te.rsplit(',').next().unwrap_or("").trim();
        if last.eq_ignore_ascii_case("chunked") {
            return dechunk(body, full, max);
        }
        if !last.eq_ignore_ascii_case("identity") {
            return Err(HttpError::UnsupportedEncoding(te.to_owned()));
        }
    }
    let mut length: Option<usize> = None;
    for (n, v) in &r.headers {
        if !n.eq_ignore_ascii_case("content-length") {
            continue;
        }
        if v.is_empty() || v.len() > 12 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HttpError::BadHeader("content-length"));
        }
        let l: usize = v
            .parse()
            .map_err(|_| HttpError::BadHeader("content-length"))?;
        if length.is_some_and(|p| p != l) {
            return Err(HttpError::BadHeader("conflicting content-length"));
        }
        length = Some(l);
    }
    match length {
        Some(l) if l > max => Err(HttpError::TooLarge(max)),
        Some(l) if body.len() < l => Err(if full {
            HttpError::TooLarge(max)
        } else {
            HttpError::Truncated
        }),
        Some(l) => Ok(body[..l].to_vec()),
        // Read to close: a response that filled the limit may be cut.
        None if full => Err(HttpError::TooLarge(max)),
        None => Ok(body.to_vec()),
    }
}

fn dechunk(mut data: &[u8], full: bool, max: usize) -> Result<Vec<u8>, HttpError> {
    let cut = || {
        if full {
            HttpError::TooLarge(max)
        } else {
            HttpError::Truncated
        }
    };
    let mut out = Vec::new();
    loop {
        let nl = data.iter().position(|&b| b == b'\n').ok_or_else(cut)?;
        let line = &data[..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let size_part = line.split(|&b| b == b';').next().unwrap_or(&[]);
        let size_str = std::str::from_utf8(size_part)
            .map_err(|_| HttpError::BadChunk)?
            .trim();
        if size_str.is_empty()
            || size_str.len() > 8
            || !size_str.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(HttpError::BadChunk);
        }
        let size = usize::from_str_radix(size_str, 16).map_err(|_| HttpError::BadChunk)?;
        data = &data[nl + 1..];
        if size == 0 {
            // Trailers, if any, are ignored.
            return Ok(out);
        }
        if size > max || out.len() + size > max {
            return Err(HttpError::TooLarge(max));
        }
        if data.len() < size {
            return Err(cut());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size..];
        if let Some(d) = data.strip_prefix(b"\r\n") {
            data = d;
        } else if let Some(d) = data.strip_prefix(b"\n") {
            data = d;
        } else if data.is_empty() || data == b"\r" {
            return Err(cut());
        } else {
            return Err(HttpError::BadChunk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upnp::url::parse_http_url;
    use proptest::prelude::*;

    #[test]
    fn get_request_is_exact() {
        let u = parse_http_url("http://192.168.1.1:5000/rootDesc.xml").expect("valid");
        assert_eq!(
            String::from_utf8(get_request(&u)).expect("ascii"),
            "GET /rootDesc.xml HTTP/1.1\r\nHost: 192.168.1.1:5000\r\nConnection: close\r\nAccept: text/xml, application/xml\r\n\r\n"
        );
    }

    #[test]
    fn content_length_body_is_read() {
        let r = parse_http_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/xml\r\n\r\nhelloEXTRA",
            1000,
        )
        .expect("valid");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello");
        assert_eq!(r.header("CONTENT-TYPE"), Some("text/xml"));
    }

    #[test]
    fn read_to_close_body_is_read() {
        let r = parse_http_response(b"HTTP/1.0 200 OK\n\n<root/>", 1000).expect("valid");
        assert_eq!(r.body, b"<root/>");
    }

    #[test]
    fn chunked_body_is_decoded() {
        let r = parse_http_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n<roo\r\n3;ext=1\r\nt/>\r\n0\r\nX-Trailer: 1\r\n\r\n",
            1000,
        )
        .expect("valid");
        assert_eq!(r.body, b"<root/>");
        assert_eq!(
            parse_http_response(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n<ro",
                1000
            ),
            Err(HttpError::Truncated)
        );
        assert_eq!(
            parse_http_response(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                1000
            ),
            Err(HttpError::BadChunk)
        );
        assert_eq!(
            parse_http_response(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFF\r\nab",
                1000
            ),
            Err(HttpError::TooLarge(1000))
        );
        assert!(matches!(
            parse_http_response(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx",
                1000
            ),
            Err(HttpError::UnsupportedEncoding(_))
        ));
    }

    #[test]
    fn truncated_and_oversized_responses_are_typed_errors() {
        assert_eq!(
            parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 1000),
            Err(HttpError::Truncated)
        );
        assert_eq!(
            parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Le", 1000),
            Err(HttpError::Truncated)
        );
        assert_eq!(parse_http_response(b"", 1000), Err(HttpError::Truncated));
        assert_eq!(
            parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\nabc", 1000),
            Err(HttpError::TooLarge(1000))
        );
        let mut filled = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        filled.resize(1000, b'a');
        assert_eq!(
            parse_http_response(&filled, 1000),
            Err(HttpError::TooLarge(1000))
        );
        assert_eq!(
            parse_http_response(&[b'a'; 1001], 1000),
            Err(HttpError::TooLarge(1000))
        );
        assert_eq!(
            parse_http_response(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                1000
            ),
            Err(HttpError::BadHeader("conflicting content-length"))
        );
        assert_eq!(
            parse_http_response(b"SIP/2.0 200 OK\r\n\r\n", 1000),
            Err(HttpError::BadStatusLine)
        );
        assert_eq!(
            parse_http_response(b"HTTP/1.1 020 OK\r\n\r\n", 1000),
            Err(HttpError::BadStatusLine)
        );
    }

    #[test]
    fn interim_responses_are_skipped() {
        let r = parse_http_response(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\n\r\nab",
            1000,
        )
        .expect("valid");
        assert_eq!((r.status, r.body.as_slice()), (500, &b"ab"[..]));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..4096), max in 0usize..8192) {
            let _ = parse_http_response(&data, max);
        }

        #[test]
        fn arbitrary_chunked_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            data.extend_from_slice(&body);
            let _ = parse_http_response(&data, 4096);
        }
    }
}
