//! The STUN Binding server every coordinator runs.
//!
//! A sans-IO machine: the driver listens on [`StunServer::local_addresses`],
//! hands every datagram to [`StunServer::handle`] with the current time, and
//! sends what it writes (`out[..len]`) from [`Reply::from`] to [`Reply::to`].
//! There are no timers and nothing to poll.
//!
//! What it answers:
//!
//! - Binding requests from anyone (a reflex is public knowledge), with
//!   XOR-MAPPED-ADDRESS = the source, an IPv4-mapped IPv6 source given in its
//!   IPv4 form (C9);
//! - with an alternate address configured (RFC 5780): OTHER-ADDRESS (the other
//!   IP and the other port, relative to the address the request arrived on)
//!   and RESPONSE-ORIGIN (the address the answer leaves from) on every answer;
//!   CHANGE-REQUEST changes the IP and/or port the answer leaves from;
//!   RESPONSE-PORT sends it to that port of the source's IP (never another
//!   IP); PADDING is echoed (RFC 5780 §7.6), never larger than in the request;
//! - FINGERPRINT on the answer iff the request carried one.
//!
//! Errors: unknown comprehension-required attributes → 420 with
//! UNKNOWN-ATTRIBUTES; a CHANGE-REQUEST asking for a change without an
//! alternate → 420 listing CHANGE-REQUEST (RFC 5780 §6.1); a malformed
//! CHANGE-REQUEST or RESPONSE-PORT, RESPONSE-PORT 0, or PADDING together with
//! RESPONSE-PORT → 400. Anything else (not STUN, responses, indications,
//! other methods, a wrong FINGERPRINT) gets silence.
//!
//! Abuse limits:
//!
//! - **No amplification.** A success answer is never larger than the request
//!   plus the address attributes it reports (XOR-MAPPED-ADDRESS, and
//!   OTHER-ADDRESS + RESPONSE-ORIGIN when RFC 5780 is served: 12 bytes each
//!   for IPv4, 24 for IPv6, so at most +36 bytes for IPv4); an error answer is
//!   never larger than the request plus 36 bytes. An answer that would be is
//!   dropped, not sent.
//! - **Rate limit.** A token bucket per source IP (in canonical form): up to
//!   `burst_per_source` answers at once, refilled at `rate_per_source` per
//!   second. Over the limit: silence, counted. The table holds at most
//!   `max_sources` sources; a new source evicts the one seen least recently
//!   (and a source that comes back after eviction starts with a full bucket).
//!   Only datagrams that would be answered touch the table.
//!
//! Deterministic: the same inputs give the same answers, byte for byte; the
//! table is a `BTreeMap` (no hashing, no random state).

use core::net::{IpAddr, SocketAddr};
use std::collections::BTreeMap;

use natrix_proto::Instant;
use tracing::debug;

use crate::codec::{
    self, BindingRequest, BindingResponse, DecodeError, HEADER_LEN, MAX_MESSAGE, Message,
    TransactionId,
};

/// How much larger than the request an error answer may be.
pub const ERROR_GROWTH: usize = 36;

/// Token-bucket units per answer: nano-answers, so that refill is exact in
/// nanoseconds (`rate` answers per second = `rate` units per nanosecond).
const UNIT: u64 = 1_000_000_000;

/// A [`StunServer`]'s configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// The primary address (IP1, P1).
    pub primary: SocketAddr,
    /// The alternate address (IP2, P2) for RFC 5780: it must differ from the
    /// primary in both IP and port and be of the same family, or it is
    /// ignored (and the server answers as a plain RFC 8489 server).
    pub alternate: Option<SocketAddr>,
    /// Answers per second each source IP may get in the long run.
    pub rate_per_source: u32,
    /// Answers a source IP may get at once (the bucket's size); 0 answers
    /// nobody.
    pub burst_per_source: u32,
    /// The most sources the rate limiter remembers (at least 1 is used).
    pub max_sources: usize,
}

impl ServerConfig {
    /// A plain server on `primary`: no alternate, 20 answers per second and
    /// a burst of 40 per source IP, 4096 sources remembered.
    #[must_use]
    pub fn new(primary: SocketAddr) -> Self {
        ServerConfig {
            primary,
            alternate: None,
            rate_per_source: 20,
            burst_per_source: 40,
            max_sources: 4096,
        }
    }
}

/// An answer to send: `out[..len]` from local address `from` to `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The local address to send from: one of
    /// [`StunServer::local_addresses`] when the request arrived on one of
    /// them, else the address it arrived on.
    pub from: SocketAddr,
    /// The destination: the request's source (in the form the driver gave
    /// it), or that IP at the RESPONSE-PORT.
    pub to: SocketAddr,
    /// The answer's length in `out`.
    pub len: usize,
}

/// What a [`StunServer`] has done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Success answers sent.
    pub answered: u64,
    /// Answers not sent because the source was over its rate.
    pub rate_limited: u64,
    /// Datagrams dropped as not a well-formed STUN message (not STUN,
    /// truncated, bad lengths, wrong or misplaced FINGERPRINT).
    pub malformed: u64,
    /// Error answers (400, 420) sent.
    pub errors_sent: u64,
    /// Well-formed STUN that is not a Binding request (responses,
    /// indications, other methods): dropped.
    pub ignored: u64,
    /// Answers dropped because they would break the no-amplification bound,
    /// [`MAX_MESSAGE`], or did not fit the caller's buffer.
    pub oversized: u64,
    /// Sources evicted from the rate limiter's table to make room.
    pub evicted: u64,
    /// Sources in the rate limiter's table now.
    pub sources: u64,
}

/// One source's token bucket.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Tokens, in [`UNIT`]s.
    tokens: u64,
    /// When it was last refilled.
    last: Instant,
    /// Its key in the age index.
    touch: u64,
}

/// The rate limiter: a bounded table of buckets, evicting the stalest.
#[derive(Debug)]
struct Limiter {
    rate: u64,
    cap: u64,
    max: usize,
    buckets: BTreeMap<IpAddr, Bucket>,
    /// Touch counter → source; the first entry is the least recently seen.
    by_age: BTreeMap<u64, IpAddr>,
    next_touch: u64,
}

impl Limiter {
    fn new(config: &ServerConfig) -> Self {
        Limiter {
            rate: u64::from(config.rate_per_source),
            cap: u64::from(config.burst_per_source).saturating_mul(UNIT),
            max: config.max_sources.max(1),
            buckets: BTreeMap::new(),
            by_age: BTreeMap::new(),
            next_touch: 0,
        }
    }

    /// Takes a token for `ip` at `now`; false when there is none.
    /// `evicted` counts sources pushed out of the table.
    fn allow(&mut self, now: Instant, ip: IpAddr, evicted: &mut u64) -> bool {
        let touch = self.next_touch;
        self.next_touch += 1;
        let bucket = if let Some(b) = self.buckets.get_mut(&ip) {
            let elapsed =
                u64::try_from(now.saturating_duration_since(b.last).as_nanos()).unwrap_or(u64::MAX);
            b.tokens = b
                .tokens
                .saturating_add(elapsed.saturating_mul(self.rate))
                .min(self.cap);
            b.last = b.last.max(now);
            self.by_age.remove(&b.touch);
            b.touch = touch;
            b
        } else {
            while self.buckets.len() >= self.max {
                let Some((_, stale)) = self.by_age.pop_first() else {
                    break;
                };
                self.buckets.remove(&stale);
                *evicted += 1;
            }
            self.buckets.entry(ip).or_insert(Bucket {
                tokens: self.cap,
                last: now,
                touch,
            })
        };
        self.by_age.insert(touch, ip);
        if bucket.tokens >= UNIT {
            bucket.tokens -= UNIT;
            true
        } else {
            false
        }
    }
}

/// The STUN Binding server (see the module docs).
#[derive(Debug)]
pub struct StunServer {
    primary: SocketAddr,
    /// The validated alternate (same family, other IP, other port).
    alternate: Option<SocketAddr>,
    limiter: Limiter,
    stats: ServerStats,
}

/// What to answer a request with, before rate limiting and encoding.
enum Answer {
    Success {
        resp: BindingResponse,
        from: SocketAddr,
        to: SocketAddr,
        padding: u16,
    },
    Error {
        code: u16,
        unknown: [u16; 4],
        count: u8,
    },
}

/// The IPv4 form of an IPv4-mapped IPv6 address (C9); others unchanged.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The transaction id of a datagram that passed the STUN header rule.
fn transaction_of(datagram: &[u8]) -> TransactionId {
    let mut t = [0u8; 12];
    if let Some(bytes) = datagram.get(8..HEADER_LEN) {
        t.copy_from_slice(bytes);
    }
    t
}

/// `addr` with its IP in canonical form.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(addr.ip()), addr.port())
}

impl StunServer {
    /// A server with `config` (see [`ServerConfig`] for how an unusable
    /// alternate is treated).
    #[must_use]
    pub fn new(config: ServerConfig) -> Self {
        let primary = canonical(config.primary);
        let alternate = config.alternate.map(canonical).filter(|alt| {
            let ok = alt.is_ipv4() == primary.is_ipv4()
                && alt.ip() != primary.ip()
                && alt.port() != primary.port();
            if !ok {
                tracing::warn!(
                    %primary, alternate = %alt,
                    "STUN alternate address ignored: it must differ in IP and port and share the family"
                );
            }
            ok
        });
        StunServer {
            primary,
            alternate,
            limiter: Limiter::new(&config),
            stats: ServerStats::default(),
        }
    }

    /// The local addresses the driver must listen on: the primary alone, or
    /// with an alternate (IP2, P2) the four RFC 5780 combinations (IP1,P1)
    /// (IP1,P2) (IP2,P1) (IP2,P2).
    #[must_use]
    pub fn local_addresses(&self) -> Vec<SocketAddr> {
        match self.alternate {
            None => vec![self.primary],
            Some(alt) => {
                let (ip1, p1, ip2, p2) =
                    (self.primary.ip(), self.primary.port(), alt.ip(), alt.port());
                vec![
                    SocketAddr::new(ip1, p1),
                    SocketAddr::new(ip1, p2),
                    SocketAddr::new(ip2, p1),
                    SocketAddr::new(ip2, p2),
                ]
            }
        }
    }

    /// A datagram arrived on local address `local` from `from`; an answer, if
    /// any, is written into `out` and described by the [`Reply`] (send
    /// `out[..len]` from local address `from` to `to`). Never panics; `out`
    /// of [`MAX_MESSAGE`] bytes always suffices.
    pub fn handle(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
    ) -> Option<Reply> {
        let answer = match codec::decode(datagram) {
            Ok(Message::Request(req)) => self.answer(local, from, &req),
            Ok(Message::Success(_) | Message::Error { .. }) | Err(DecodeError::NotBinding(_)) => {
                self.stats.ignored += 1;
                debug!(%from, "STUN: not a Binding request, ignored");
                return None;
            }
            Err(DecodeError::UnknownRequired {
                attributes, count, ..
            }) if codec::is_request_header(datagram) => Answer::Error {
                code: 420,
                unknown: attributes,
                count,
            },
            Err(DecodeError::UnknownRequired { .. }) => {
                self.stats.ignored += 1;
                debug!(%from, "STUN: response with unknown attributes, ignored");
                return None;
            }
            Err(DecodeError::BadRequest { .. }) => Answer::Error {
                code: 400,
                unknown: [0; 4],
                count: 0,
            },
            Err(e) => {
                self.stats.malformed += 1;
                debug!(%from, error = %e, "STUN: malformed datagram dropped");
                return None;
            }
        };
        let transaction = transaction_of(datagram);
        let fingerprint = codec::has_fingerprint(datagram);
        let source_ip = canonical_ip(from.ip());
        if !self.limiter.allow(now, source_ip, &mut self.stats.evicted) {
            self.stats.sources = self.limiter.buckets.len() as u64;
            self.stats.rate_limited += 1;
            debug!(%from, "STUN: source over its rate, dropped");
            return None;
        }
        self.stats.sources = self.limiter.buckets.len() as u64;
        match answer {
            Answer::Success {
                resp,
                from: send_from,
                to,
                padding,
            } => {
                // The address attributes this answer reports.
                let reported = codec::success_len(&resp, 0, false) - HEADER_LEN;
                let limit = (datagram.len() + reported).min(MAX_MESSAGE).min(out.len());
                // Echo PADDING, cut to what fits the limit (it always fits the
                // no-amplification bound: the request carried it).
                let base = codec::success_len(&resp, 0, fingerprint);
                let room = limit.saturating_sub(base);
                let padding = if padding == 0 || room < 8 {
                    0
                } else {
                    padding.min(u16::try_from((room - 4) / 4 * 4).unwrap_or(u16::MAX))
                };
                match codec::encode_success_padded(&resp, padding, fingerprint, out) {
                    Ok(len) if len <= datagram.len() + reported => {
                        self.stats.answered += 1;
                        Some(Reply {
                            from: send_from,
                            to,
                            len,
                        })
                    }
                    _ => {
                        self.stats.oversized += 1;
                        debug!(%from, "STUN: answer would be too large, dropped");
                        None
                    }
                }
            }
            Answer::Error {
                code,
                unknown,
                count,
            } => {
                let unknown = unknown.get(..usize::from(count)).unwrap_or(&[]);
                let send_from = self.local_form(local);
                match codec::encode_error_fingerprinted(
                    &transaction,
                    code,
                    unknown,
                    fingerprint,
                    out,
                ) {
                    Ok(len) if len <= datagram.len() + ERROR_GROWTH => {
                        self.stats.errors_sent += 1;
                        Some(Reply {
                            from: send_from,
                            to: from,
                            len,
                        })
                    }
                    _ => {
                        self.stats.oversized += 1;
                        debug!(%from, code, "STUN: error answer would be too large, dropped");
                        None
                    }
                }
            }
        }
    }

    /// What the server has done so far.
    #[must_use]
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// For a request that arrived on `local`: the served local address it
    /// matches and the other (IP, port) relative to it, when RFC 5780 is
    /// served there.
    fn served(&self, local: SocketAddr) -> Option<(SocketAddr, SocketAddr)> {
        let alt = self.alternate?;
        let local = canonical(local);
        let (ip1, p1, ip2, p2) = (self.primary.ip(), self.primary.port(), alt.ip(), alt.port());
        let other_ip = if local.ip() == ip1 {
            ip2
        } else if local.ip() == ip2 {
            ip1
        } else {
            return None;
        };
        let other_port = if local.port() == p1 {
            p2
        } else if local.port() == p2 {
            p1
        } else {
            return None;
        };
        Some((local, SocketAddr::new(other_ip, other_port)))
    }

    /// `local` as one of [`Self::local_addresses`] when it is one of them
    /// (in canonical form), else as given.
    fn local_form(&self, local: SocketAddr) -> SocketAddr {
        let c = canonical(local);
        if c == self.primary || self.served(local).is_some() {
            c
        } else {
            local
        }
    }

    /// The answer to a well-formed Binding request.
    fn answer(&self, local: SocketAddr, from: SocketAddr, req: &BindingRequest) -> Answer {
        let bad = Answer::Error {
            code: 400,
            unknown: [0; 4],
            count: 0,
        };
        // RESPONSE-PORT 0 names no port; PADDING with RESPONSE-PORT is
        // refused by RFC 5780 §6.1 (a padded answer to another port).
        if req.response_port == Some(0) || (req.response_port.is_some() && req.padding > 0) {
            return bad;
        }
        let mapped = canonical(from);
        // RESPONSE-PORT: the same IP (in the driver's form), that port.
        let to = SocketAddr::new(from.ip(), req.response_port.unwrap_or(from.port()));
        let change = req.change.change_ip || req.change.change_port;
        match self.served(local) {
            Some((here, other)) => {
                let send_from = SocketAddr::new(
                    if req.change.change_ip {
                        other.ip()
                    } else {
                        here.ip()
                    },
                    if req.change.change_port {
                        other.port()
                    } else {
                        here.port()
                    },
                );
                Answer::Success {
                    resp: BindingResponse {
                        transaction: req.transaction,
                        mapped,
                        other_address: Some(other),
                        response_origin: Some(send_from),
                    },
                    from: send_from,
                    to,
                    padding: req.padding,
                }
            }
            None if change => Answer::Error {
                code: 420,
                unknown: [codec::attr::CHANGE_REQUEST, 0, 0, 0],
                count: 1,
            },
            None => {
                let send_from = self.local_form(local);
                Answer::Success {
                    resp: BindingResponse {
                        transaction: req.transaction,
                        mapped,
                        other_address: None,
                        response_origin: None,
                    },
                    from: send_from,
                    to,
                    padding: req.padding,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{ChangeRequest, attr, encode_request};
    use core::time::Duration;
    use proptest::prelude::*;

    /// The primary address of the IPv4 test servers.
    const PRIMARY: &str = "192.0.2.1:3478";

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("literal")
    }

    /// A server on `primary`, serving RFC 5780 with `alternate` if given.
    fn server(primary: &str, alternate: Option<&str>) -> StunServer {
        StunServer::new(ServerConfig {
            alternate: alternate.map(sa),
            ..ServerConfig::new(sa(primary))
        })
    }

    fn rfc5780_v4() -> StunServer {
        server(PRIMARY, Some("192.0.2.2:3479"))
    }

    fn plain_v4() -> StunServer {
        server(PRIMARY, None)
    }

    fn rfc5780_v6() -> StunServer {
        server("[2001:db8::1]:3478", Some("[2001:db8::2]:3479"))
    }

    /// A plain server that answers each source IP once and never refills.
    fn one_answer_each() -> ServerConfig {
        ServerConfig {
            burst_per_source: 1,
            rate_per_source: 0,
            ..ServerConfig::new(sa(PRIMARY))
        }
    }

    fn request(req: &BindingRequest) -> Vec<u8> {
        let mut buf = [0u8; MAX_MESSAGE];
        let n = encode_request(req, &mut buf).expect("fits");
        buf[..n].to_vec()
    }

    fn req(change_ip: bool, change_port: bool) -> BindingRequest {
        BindingRequest {
            transaction: [7; 12],
            change: ChangeRequest {
                change_ip,
                change_port,
            },
            ..BindingRequest::default()
        }
    }

    /// Hands `datagram` to `server` and decodes the answer.
    fn ask(
        server: &mut StunServer,
        now: Instant,
        local: &str,
        from: &str,
        datagram: &[u8],
    ) -> Option<(Reply, Message, Vec<u8>)> {
        let mut out = [0u8; MAX_MESSAGE];
        let reply = server.handle(now, sa(local), sa(from), datagram, &mut out)?;
        let bytes = out[..reply.len].to_vec();
        let msg = codec::decode(&bytes).expect("the server's answers decode");
        Some((reply, msg, bytes))
    }

    /// [`ask`] at time zero, for a datagram that must be answered.
    fn answer(
        server: &mut StunServer,
        local: &str,
        from: &str,
        datagram: &[u8],
    ) -> (Reply, Message, Vec<u8>) {
        ask(server, Instant::ZERO, local, from, datagram).expect("answered")
    }

    /// How many of 100 copies of `datagram` from `from` to the primary at
    /// `now` are answered.
    fn answered_of_100(
        server: &mut StunServer,
        now: Instant,
        from: &str,
        datagram: &[u8],
    ) -> usize {
        (0..100)
            .filter(|_| ask(server, now, PRIMARY, from, datagram).is_some())
            .count()
    }

    fn success(msg: &Message) -> BindingResponse {
        match msg {
            Message::Success(r) => *r,
            other => panic!("expected a success, got {other:?}"),
        }
    }

    /// The error answer with `code` to a request built by [`req`].
    fn error(code: u16) -> Message {
        Message::Error {
            transaction: [7; 12],
            code,
        }
    }

    /// The UNKNOWN-ATTRIBUTES listed in an error answer.
    fn unknown_attributes(bytes: &[u8]) -> Vec<u16> {
        let mut at = HEADER_LEN;
        while at + 4 <= bytes.len() {
            let ty = u16::from_be_bytes([bytes[at], bytes[at + 1]]);
            let len = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
            if ty == attr::UNKNOWN_ATTRIBUTES {
                return bytes[at + 4..at + 4 + len]
                    .chunks(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect();
            }
            at += 4 + len.div_ceil(4) * 4;
        }
        Vec::new()
    }

    #[test]
    fn local_addresses_are_the_primary_or_the_four_combinations() {
        assert_eq!(plain_v4().local_addresses(), vec![sa(PRIMARY)]);
        assert_eq!(
            rfc5780_v4().local_addresses(),
            vec![
                sa("192.0.2.1:3478"),
                sa("192.0.2.1:3479"),
                sa("192.0.2.2:3478"),
                sa("192.0.2.2:3479"),
            ]
        );
        // An alternate sharing the IP or the port, or of the other family,
        // is ignored.
        for alt in ["192.0.2.1:3479", "192.0.2.2:3478", "[2001:db8::2]:3479"] {
            let s = server(PRIMARY, Some(alt));
            assert_eq!(s.local_addresses(), vec![sa(PRIMARY)], "{alt}");
        }
    }

    #[test]
    fn plain_server_answers_with_the_source_only() {
        let mut s = plain_v4();
        let client = "198.51.100.7:40000";
        let (reply, msg, bytes) = answer(&mut s, PRIMARY, client, &request(&req(false, false)));
        assert_eq!(
            reply,
            Reply {
                from: sa(PRIMARY),
                to: sa(client),
                len: 32
            }
        );
        assert_eq!(
            success(&msg),
            BindingResponse {
                transaction: [7; 12],
                mapped: sa(client),
                other_address: None,
                response_origin: None,
            }
        );
        assert_eq!(bytes.len(), 20 + 12);
        assert_eq!(s.stats().answered, 1);
    }

    #[test]
    fn c8_server_answers_rfc5780_change_requests_from_the_right_address() {
        let mut s = rfc5780_v4();
        let client = "198.51.100.7:40000";
        // The four local addresses, by (IP, port): p primary, a alternate.
        let (pp, pa, ap, aa) = (
            PRIMARY,
            "192.0.2.1:3479",
            "192.0.2.2:3478",
            "192.0.2.2:3479",
        );
        // (arrived on, change ip, change port) → (sent from, other address)
        let cases = [
            (pp, false, false, pp, aa),
            (pp, true, true, aa, aa),
            (pp, true, false, ap, aa),
            (pp, false, true, pa, aa),
            (ap, false, false, ap, pa),
            (ap, true, false, pp, pa),
            (pa, false, true, pp, ap),
            (aa, true, true, pp, pp),
        ];
        for (i, (local, ip, port, want_from, want_other)) in cases.into_iter().enumerate() {
            let t = Instant::from_millis(1000 * i as u64);
            let (reply, msg, _) =
                ask(&mut s, t, local, client, &request(&req(ip, port))).expect("answered");
            let r = success(&msg);
            assert_eq!(reply.from, sa(want_from), "case {i}");
            assert_eq!(reply.to, sa(client), "case {i}");
            assert_eq!(r.mapped, sa(client), "case {i}");
            assert_eq!(r.response_origin, Some(sa(want_from)), "case {i}");
            assert_eq!(r.other_address, Some(sa(want_other)), "case {i}");
            assert!(s.local_addresses().contains(&reply.from));
        }
    }

    #[test]
    fn c8_ipv6_rfc5780_server_reports_ipv6_addresses() {
        let mut s = rfc5780_v6();
        let client = "[2001:db8:ff::9]:5000";
        let d = request(&req(true, false));
        let (reply, msg, bytes) = answer(&mut s, "[2001:db8::1]:3478", client, &d);
        assert_eq!(reply.from, sa("[2001:db8::2]:3478"));
        let r = success(&msg);
        assert_eq!(r.mapped, sa(client));
        assert_eq!(r.other_address, Some(sa("[2001:db8::2]:3479")));
        assert_eq!(r.response_origin, Some(sa("[2001:db8::2]:3478")));
        // Request 28 bytes (CHANGE-REQUEST), answer 20 + 3 × 24.
        assert_eq!(bytes.len(), 92);
    }

    #[test]
    fn c9_ipv4_mapped_source_is_answered_in_ipv4_form() {
        let mut s = plain_v4();
        let d = request(&req(false, false));
        let (reply, msg, bytes) = answer(&mut s, PRIMARY, "[::ffff:198.51.100.7]:40000", &d);
        assert_eq!(success(&msg).mapped, sa("198.51.100.7:40000"));
        // An IPv4 XOR-MAPPED-ADDRESS: 12 bytes, not 24.
        assert_eq!(bytes.len(), 32);
        // Sent back to the source as the driver named it.
        assert_eq!(reply.to, sa("[::ffff:198.51.100.7]:40000"));
        // A mapped local address is the configured one.
        let (reply, ..) = answer(&mut s, "[::ffff:192.0.2.1]:3478", "198.51.100.7:40000", &d);
        assert_eq!(reply.from, sa(PRIMARY));
        // Both forms share one rate-limit bucket.
        let mut s = StunServer::new(one_answer_each());
        let mut go = |from: &str| ask(&mut s, Instant::ZERO, PRIMARY, from, &d).is_some();
        assert!(go("198.51.100.7:1"));
        assert!(!go("[::ffff:198.51.100.7]:2"));
        assert_eq!(s.stats().rate_limited, 1);
        assert_eq!(s.stats().sources, 1);
    }

    #[test]
    fn change_request_without_alternate_gets_420_listing_it() {
        let mut s = plain_v4();
        let client = "198.51.100.7:40000";
        for (ip, port) in [(true, false), (false, true), (true, true)] {
            let (reply, msg, bytes) = answer(&mut s, PRIMARY, client, &request(&req(ip, port)));
            assert_eq!(msg, error(420));
            assert_eq!(unknown_attributes(&bytes), vec![attr::CHANGE_REQUEST]);
            assert_eq!(reply.to, sa(client));
            assert!(reply.len <= 28 + ERROR_GROWTH);
        }
        // A CHANGE-REQUEST asking for nothing is just a request.
        let (_, msg, _) = answer(&mut s, PRIMARY, client, &request(&req(false, false)));
        assert!(matches!(msg, Message::Success(_)));
        assert_eq!(s.stats().errors_sent, 3);
    }

    /// A request with extra attributes `(type, value)` after the encoded ones.
    fn with_attributes(base: &BindingRequest, extra: &[(u16, &[u8])]) -> Vec<u8> {
        let mut m = request(&BindingRequest {
            fingerprint: false,
            ..*base
        });
        for (t, v) in extra {
            m.extend_from_slice(&t.to_be_bytes());
            m.extend_from_slice(&u16::try_from(v.len()).expect("short").to_be_bytes());
            m.extend_from_slice(v);
            m.resize(m.len().div_ceil(4) * 4, 0);
        }
        let len = u16::try_from(m.len() - HEADER_LEN).expect("short");
        m[2..4].copy_from_slice(&len.to_be_bytes());
        m
    }

    #[test]
    fn unknown_comprehension_required_attributes_get_420() {
        let mut s = rfc5780_v4();
        let d = with_attributes(
            &req(false, false),
            &[
                (0x0002, &[0, 1, 0, 80, 1, 2, 3, 4]),
                (0x8fff, &[]),
                (0x0024, &[1; 4]),
            ],
        );
        let (reply, msg, bytes) = answer(&mut s, PRIMARY, "198.51.100.7:4", &d);
        assert_eq!(msg, error(420));
        assert_eq!(unknown_attributes(&bytes), vec![0x0002, 0x0024]);
        // RESPONSE-ADDRESS (0x0002) is not obeyed: the error goes to the source.
        assert_eq!(reply.to, sa("198.51.100.7:4"));
        assert_eq!(reply.from, sa(PRIMARY));
        assert!(reply.len <= d.len() + ERROR_GROWTH);
    }

    #[test]
    fn malformed_known_attributes_get_400() {
        let mut s = rfc5780_v4();
        let bad_change = with_attributes(&req(false, false), &[(attr::CHANGE_REQUEST, &[0, 6])]);
        let port_zero = request(&BindingRequest {
            response_port: Some(0),
            ..req(false, false)
        });
        let padded_elsewhere = request(&BindingRequest {
            response_port: Some(9),
            padding: 16,
            ..req(false, false)
        });
        for d in [bad_change, port_zero, padded_elsewhere] {
            let (reply, msg, _) = answer(&mut s, PRIMARY, "198.51.100.7:4", &d);
            assert_eq!(msg, error(400));
            assert_eq!(reply.to, sa("198.51.100.7:4"));
            assert!(reply.len <= d.len() + ERROR_GROWTH);
        }
        assert_eq!(s.stats().errors_sent, 3);
    }

    #[test]
    fn silence_for_non_stun_responses_indications_and_bad_fingerprints() {
        let mut s = rfc5780_v4();
        let mut out = [0u8; MAX_MESSAGE];
        let local = sa(PRIMARY);
        let from = sa("198.51.100.7:4");
        let mut success = [0u8; MAX_MESSAGE];
        let n = codec::encode_success(
            &BindingResponse {
                transaction: [1; 12],
                mapped: from,
                other_address: None,
                response_origin: None,
            },
            false,
            &mut success,
        )
        .expect("fits");
        let mut error = [0u8; MAX_MESSAGE];
        let e = codec::encode_error(&[1; 12], 420, &[0x0003], &mut error).expect("fits");
        let mut indication = request(&req(false, false));
        indication[1] = 0x11;
        let mut allocate = request(&req(false, false));
        allocate[1] = 0x03;
        let mut bad_fp = request(&BindingRequest {
            fingerprint: true,
            ..req(true, false)
        });
        let last = bad_fp.len() - 1;
        bad_fp[last] ^= 1;
        let mut response_unknown = success[..n].to_vec();
        response_unknown.extend_from_slice(&[0x00, 0x30, 0, 0]);
        response_unknown[3] += 4;
        let cases: [(&[u8], &str); 9] = [
            (&[], "empty"),
            (b"hello, world, not STUN at all", "not STUN"),
            (&[0x80, 0, 0, 0], "keep-alive"),
            (&success[..n], "success response"),
            (&error[..e], "error response"),
            (&indication, "indication"),
            (&allocate, "other method"),
            (&bad_fp, "bad fingerprint"),
            (&response_unknown, "response with unknown attributes"),
        ];
        for (d, what) in cases {
            assert_eq!(
                s.handle(Instant::ZERO, local, from, d, &mut out),
                None,
                "{what}"
            );
        }
        let st = s.stats();
        assert_eq!(st.malformed, 4);
        assert_eq!(st.ignored, 5);
        assert_eq!(st.answered + st.errors_sent + st.rate_limited, 0);
        // Nothing silent touches the rate limiter's table.
        assert_eq!(st.sources, 0);
    }

    #[test]
    fn fingerprint_on_the_answer_iff_the_request_had_one() {
        let mut s = plain_v4();
        for fp in [false, true] {
            for change in [false, true] {
                let d = request(&BindingRequest {
                    fingerprint: fp,
                    ..req(change, false)
                });
                let (.., bytes) = answer(&mut s, PRIMARY, "198.51.100.7:4", &d);
                assert_eq!(
                    codec::has_fingerprint(&bytes),
                    fp,
                    "fp {fp} change {change}"
                );
            }
        }
    }

    #[test]
    fn response_port_sends_to_the_same_ip_at_that_port() {
        let mut s = rfc5780_v4();
        let d = request(&BindingRequest {
            response_port: Some(5555),
            ..req(true, true)
        });
        let (reply, msg, _) = answer(&mut s, PRIMARY, "[::ffff:198.51.100.7]:4", &d);
        assert_eq!(reply.to, sa("[::ffff:198.51.100.7]:5555"));
        assert_eq!(reply.from, sa("192.0.2.2:3479"));
        assert_eq!(success(&msg).mapped, sa("198.51.100.7:4"));
    }

    #[test]
    fn padding_is_echoed_and_never_larger_than_in_the_request() {
        let mut s = rfc5780_v4();
        for padding in [1u16, 4, 100, 480, 500] {
            let d = request(&BindingRequest {
                padding,
                fingerprint: true,
                ..req(false, false)
            });
            let (reply, ..) = answer(&mut s, PRIMARY, "198.51.100.7:4", &d);
            assert!(reply.len <= d.len() + 36, "padding {padding}");
            assert!(reply.len <= MAX_MESSAGE);
            if usize::from(padding) + 20 + 36 + 12 <= MAX_MESSAGE {
                // Echoed whole: as large as the request plus the addresses.
                assert_eq!(reply.len, d.len() + 36, "padding {padding}");
            }
        }
    }

    #[test]
    fn rate_limit_per_source() {
        let mut s = plain_v4();
        let d = request(&req(false, false));
        let t0 = Instant::from_millis(5_000);
        let src = "198.51.100.7:1";
        assert_eq!(answered_of_100(&mut s, t0, src, &d), 40, "the burst");
        assert_eq!(s.stats().rate_limited, 60);
        // Another source is not affected.
        assert!(ask(&mut s, t0, PRIMARY, "198.51.100.8:1", &d).is_some());
        // Nor is another port of the same IP spared: the bucket is per IP.
        assert!(ask(&mut s, t0, PRIMARY, "198.51.100.7:2", &d).is_none());
        // A second later, 20 more.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(answered_of_100(&mut s, t1, src, &d), 20);
        // Time going backwards refills nothing and does not panic.
        assert!(ask(&mut s, t0, PRIMARY, src, &d).is_none());
        // A long pause refills up to the burst only.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!(answered_of_100(&mut s, t2, src, &d), 40);
    }

    #[test]
    fn the_stalest_source_is_evicted() {
        let mut s = StunServer::new(ServerConfig {
            max_sources: 2,
            ..one_answer_each()
        });
        let d = request(&req(false, false));
        let mut go = |from: &str| ask(&mut s, Instant::ZERO, PRIMARY, from, &d).is_some();
        assert!(go("198.51.100.1:1")); // A
        assert!(go("198.51.100.2:1")); // B
        assert!(!go("198.51.100.1:1")); // A again: limited, and now fresher than B
        assert!(go("198.51.100.3:1")); // C evicts B
        assert!(!go("198.51.100.1:1")); // A was kept
        assert!(go("198.51.100.2:1")); // B starts over (evicting C)
        assert_eq!(s.stats().evicted, 2);
        assert_eq!(s.stats().sources, 2);
    }

    #[test]
    fn rate_limit_table_stays_bounded_under_100k_sources() {
        let mut s = plain_v4();
        let d = request(&req(false, false));
        let mut out = [0u8; MAX_MESSAGE];
        let local = sa(PRIMARY);
        for i in 0..100_000u32 {
            let from = SocketAddr::new(IpAddr::V4((0x0a00_0000 + i).into()), 1234);
            let t = Instant::from_nanos(u64::from(i) * 1000);
            assert!(s.handle(t, local, from, &d, &mut out).is_some());
            assert!(s.limiter.buckets.len() <= 4096);
            assert_eq!(s.limiter.buckets.len(), s.limiter.by_age.len());
        }
        let st = s.stats();
        assert_eq!(st.sources, 4096);
        assert_eq!(st.evicted, 100_000 - 4096);
        assert_eq!(st.answered, 100_000);
    }

    #[test]
    fn a_small_buffer_drops_the_answer() {
        let mut s = rfc5780_v4();
        let d = request(&req(false, false));
        let mut out = [0u8; 40];
        let r = s.handle(
            Instant::ZERO,
            sa(PRIMARY),
            sa("198.51.100.7:4"),
            &d,
            &mut out,
        );
        assert_eq!(r, None);
        assert_eq!(s.stats().oversized, 1);
    }

    /// A scripted run: the same inputs give the same replies and bytes.
    fn script(server: &mut StunServer) -> Vec<(Option<Reply>, Vec<u8>)> {
        let mut log = Vec::new();
        let mut out = [0u8; MAX_MESSAGE];
        let locals = server.local_addresses();
        for i in 0..500u32 {
            let ip = i % 7 < 4;
            let port = i % 5 < 2;
            let d = request(&BindingRequest {
                transaction: [(i % 251) as u8; 12],
                change: ChangeRequest {
                    change_ip: ip,
                    change_port: port,
                },
                response_port: (i % 11 == 0).then_some(2000 + (i % 13) as u16),
                padding: if i % 11 == 0 { 0 } else { (i % 17) as u16 },
                fingerprint: i % 3 == 0,
            });
            let from = SocketAddr::new(IpAddr::V4((0xc633_6400 + i % 9).into()), 40000);
            let local = locals[(i as usize) % locals.len()];
            let t = Instant::from_millis(u64::from(i));
            let r = server.handle(t, local, from, &d, &mut out);
            let bytes = r.map(|r| out[..r.len].to_vec()).unwrap_or_default();
            log.push((r, bytes));
        }
        log
    }

    #[test]
    fn determinism() {
        let a = script(&mut rfc5780_v4());
        let b = script(&mut rfc5780_v4());
        assert_eq!(a, b);
        let mut s1 = rfc5780_v4();
        let mut s2 = rfc5780_v4();
        let _ = script(&mut s1);
        let _ = script(&mut s2);
        assert_eq!(s1.stats(), s2.stats());
        assert!(s1.stats().answered > 0 && s1.stats().rate_limited > 0);
    }

    // ---- no amplification ----

    fn servers() -> Vec<(StunServer, &'static str, &'static str)> {
        vec![
            (plain_v4(), PRIMARY, "198.51.100.7:4"),
            (rfc5780_v4(), PRIMARY, "198.51.100.7:4"),
            (rfc5780_v4(), "192.0.2.2:3479", "[::ffff:198.51.100.7]:4"),
            (
                server("[2001:db8::1]:3478", None),
                "[2001:db8::1]:3478",
                "[2001:db8:ff::9]:5000",
            ),
            (rfc5780_v6(), "[2001:db8::1]:3478", "[2001:db8:ff::9]:5000"),
        ]
    }

    /// The most an answer may exceed the request by: the address attributes
    /// it reports (36 bytes over IPv4 with RFC 5780, 72 over IPv6), and never
    /// more than 36 for an error.
    fn check_bound(
        s: &mut StunServer,
        local: &str,
        from: &str,
        d: &[u8],
    ) -> Result<(), TestCaseError> {
        let mut out = [0u8; 2048];
        let before = s.stats();
        if let Some(r) = s.handle(Instant::ZERO, sa(local), sa(from), d, &mut out) {
            let after = s.stats();
            let mapped = canonical(sa(from));
            let per = codec::address_attribute_len(&sa(local));
            let reported = codec::address_attribute_len(&mapped)
                + if s.alternate.is_some() { 2 * per } else { 0 };
            if after.errors_sent > before.errors_sent {
                let error = matches!(codec::decode(&out[..r.len]), Ok(Message::Error { .. }));
                prop_assert!(error);
                prop_assert!(r.len <= d.len() + ERROR_GROWTH);
            } else {
                let ok = matches!(codec::decode(&out[..r.len]), Ok(Message::Success(_)));
                prop_assert!(ok);
                prop_assert!(
                    r.len <= d.len() + reported,
                    "{} > {} + {}",
                    r.len,
                    d.len(),
                    reported
                );
            }
            if mapped.is_ipv4() && sa(local).is_ipv4() {
                prop_assert!(r.len <= d.len() + 36);
            }
            prop_assert!(r.len <= MAX_MESSAGE);
            prop_assert_eq!(r.to.ip(), sa(from).ip());
            prop_assert!(codec::decode(&out[..r.len]).is_ok());
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn no_amplification_for_any_datagram(d in proptest::collection::vec(any::<u8>(), 0..600)) {
            for (mut s, local, from) in servers() {
                check_bound(&mut s, local, from, &d)?;
            }
        }

        #[test]
        fn no_amplification_for_any_request(
            ip: bool,
            port: bool,
            response_port in proptest::option::of(any::<u16>()),
            padding in 0u16..=500,
            fp: bool,
            extra in proptest::collection::vec((any::<u16>(), proptest::collection::vec(any::<u8>(), 0..12)), 0..4),
        ) {
            let base = BindingRequest {
                transaction: [3; 12],
                change: ChangeRequest { change_ip: ip, change_port: port },
                response_port,
                padding,
                fingerprint: fp,
            };
            let plain = request(&base);
            let refs: Vec<(u16, &[u8])> = extra.iter().map(|(t, v)| (*t, &v[..])).collect();
            let mixed = with_attributes(&base, &refs);
            for (mut s, local, from) in servers() {
                check_bound(&mut s, local, from, &plain)?;
                check_bound(&mut s, local, from, &mixed)?;
            }
        }

        #[test]
        fn response_port_never_goes_to_another_ip(
            response_port in 1u16..,
            ip: bool,
            port: bool,
            src in any::<[u8; 4]>(),
            src_port: u16,
        ) {
            let mut s = rfc5780_v4();
            let from = SocketAddr::new(IpAddr::V4(src.into()), src_port);
            let d = request(&BindingRequest { response_port: Some(response_port), ..req(ip, port) });
            let mut out = [0u8; MAX_MESSAGE];
            let r = s.handle(Instant::ZERO, sa(PRIMARY), from, &d, &mut out).expect("answered");
            prop_assert_eq!(r.to, SocketAddr::new(from.ip(), response_port));
        }
    }
}
