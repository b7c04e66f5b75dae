//! mac1/mac2, stateless cookies and the handshake-rate meter (S5).
//!
//! * `mac1` = keyed BLAKE2s-128, key = BLAKE2s-256(`"natrix/mac1/v1"` ‖ receiver's
//!   public key), over the message bytes before mac1. Anyone who knows the
//!   receiver's public key can compute it; it lets the receiver reject, without
//!   any Diffie-Hellman work, messages that were not meant for it.
//! * `cookie` = keyed BLAKE2s-128, key = a 32-byte secret rotated every two
//!   minutes, over the source address (IP bytes ‖ port, big endian).
//! * `mac2` = keyed BLAKE2s-128 keyed with the cookie, over the bytes before mac2.
//! * cookie reply = XChaCha20-Poly1305 seal of the cookie, key =
//!   BLAKE2s-256(`"natrix/cookie/v1"` ‖ responder's public key), AAD = the
//!   init's mac1, a fresh 24-byte nonce.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use blake2::digest::consts::U16;
use blake2::digest::{FixedOutput, Update};
use blake2::{Blake2s256, Blake2sMac, Digest};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use natrix_proto::Instant;

use crate::identity::PublicKey;
use crate::wire::MAC_LEN;

/// Domain string of the mac1 key.
pub const MAC1_DOMAIN: &[u8] = b"natrix/mac1/v1";
/// Domain string of the cookie-reply sealing key.
pub const COOKIE_DOMAIN: &[u8] = b"natrix/cookie/v1";
/// How often the cookie secret is replaced.
pub const COOKIE_SECRET_LIFETIME: Duration = Duration::from_secs(120);

/// A 16-byte MAC or cookie.
pub type Mac = [u8; MAC_LEN];

/// BLAKE2s-256(`domain` ‖ `key`).
pub(crate) fn derive_key(domain: &[u8], key: &PublicKey) -> [u8; 32] {
    let mut h = Blake2s256::new();
    Digest::update(&mut h, domain);
    Digest::update(&mut h, key.as_bytes());
    h.finalize().into()
}

/// Keyed BLAKE2s-128 of `parts` (concatenated) under `key` (≤ 32 bytes).
pub(crate) fn keyed_mac(key: &[u8], parts: &[&[u8]]) -> Mac {
    // A BLAKE2s key is at most 32 bytes; every caller passes 16 or 32.
    let mut m = <Blake2sMac<U16> as blake2::digest::KeyInit>::new_from_slice(key)
        .expect("BLAKE2s key of at most 32 bytes");
    for p in parts {
        Update::update(&mut m, p);
    }
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&m.finalize_fixed());
    out
}

/// Constant-time equality of two MACs.
pub(crate) fn mac_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    diff == 0
}

/// The bytes of an address that a cookie is bound to.
fn addr_bytes(addr: SocketAddr, out: &mut [u8; 18]) -> usize {
    let n = match addr.ip() {
        IpAddr::V4(ip) => {
            out[..4].copy_from_slice(&ip.octets());
            4
        }
        IpAddr::V6(ip) => {
            out[..16].copy_from_slice(&ip.octets());
            16
        }
    };
    out[n..n + 2].copy_from_slice(&addr.port().to_be_bytes());
    n + 2
}

/// The responder's rotating cookie secret.
pub(crate) struct CookieSecret {
    current: [u8; 32],
    previous: Option<[u8; 32]>,
    born: Instant,
}

impl CookieSecret {
    pub(crate) fn new(secret: [u8; 32], now: Instant) -> Self {
        CookieSecret {
            current: secret,
            previous: None,
            born: now,
        }
    }

    /// Whether the secret is due for rotation at `now`.
    pub(crate) fn due(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.born) >= COOKIE_SECRET_LIFETIME
    }

    /// Replaces the secret (the old one stays valid for one more period).
    pub(crate) fn rotate(&mut self, fresh: [u8; 32], now: Instant) {
        self.previous = Some(self.current);
        self.current = fresh;
        self.born = now;
    }

    /// The current cookie for `addr`.
    pub(crate) fn cookie(&self, addr: SocketAddr) -> Mac {
        let mut b = [0u8; 18];
        let n = addr_bytes(addr, &mut b);
        keyed_mac(&self.current, &[&b[..n]])
    }

    /// Whether `mac2` over `msg` is valid for a cookie of `addr` under the
    /// current or the previous secret.
    pub(crate) fn check_mac2(&self, addr: SocketAddr, msg: &[u8], mac2: &[u8]) -> bool {
        let mut b = [0u8; 18];
        let n = addr_bytes(addr, &mut b);
        let secrets = [Some(self.current), self.previous];
        secrets.iter().flatten().any(|s| {
            let cookie = keyed_mac(s, &[&b[..n]]);
            mac_eq(&keyed_mac(&cookie, &[msg]), mac2)
        })
    }

    #[cfg(test)]
    pub(crate) fn born(&self) -> Instant {
        self.born
    }
}

impl std::fmt::Debug for CookieSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieSecret")
            .field("born", &self.born)
            .finish_non_exhaustive()
    }
}

/// Seals `cookie` into `out` (32 bytes: ciphertext ‖ tag).
pub(crate) fn seal_cookie(
    key: &[u8; 32],
    nonce: &[u8; 24],
    aad: &[u8],
    cookie: &Mac,
    out: &mut [u8],
) {
    let aead = XChaCha20Poly1305::new(key.into());
    let (body, tag_out) = out.split_at_mut(MAC_LEN);
    body.copy_from_slice(cookie);
    // Encryption of 16 bytes cannot fail (the length limit is 256 GiB).
    let tag = aead
        .encrypt_in_place_detached(XNonce::from_slice(nonce), aad, body)
        .expect("XChaCha20Poly1305 seal of 16 bytes");
    tag_out[..MAC_LEN].copy_from_slice(&tag);
}

/// Opens a sealed cookie (32 bytes); `None` when it does not authenticate.
pub(crate) fn open_cookie(key: &[u8; 32], nonce: &[u8], aad: &[u8], sealed: &[u8]) -> Option<Mac> {
    if nonce.len() != 24 || sealed.len() != 2 * MAC_LEN {
        return None;
    }
    let aead = XChaCha20Poly1305::new(key.into());
    let mut body = [0u8; MAC_LEN];
    body.copy_from_slice(&sealed[..MAC_LEN]);
    aead.decrypt_in_place_detached(
        XNonce::from_slice(nonce),
        aad,
        &mut body,
        sealed[MAC_LEN..].into(),
    )
    .ok()?;
    Some(body)
}

/// A token bucket metering handshakes (DH work) per second.
#[derive(Debug, Clone)]
pub(crate) struct RateMeter {
    /// Nanoseconds of credit; one handshake costs `cost`.
    credit: u64,
    cost: u64,
    cap: u64,
    last: Instant,
}

impl RateMeter {
    /// `per_second` handshakes per second, bursts of up to `per_second`.
    pub(crate) fn new(per_second: u32, now: Instant) -> Self {
        let per_second = u64::from(per_second.max(1));
        let cost = 1_000_000_000 / per_second;
        let cap = cost.saturating_mul(per_second);
        RateMeter {
            credit: cap,
            cost,
            cap,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed =
            u64::try_from(now.saturating_duration_since(self.last).as_nanos()).unwrap_or(u64::MAX);
        if now > self.last {
            self.last = now;
        }
        self.credit = self.credit.saturating_add(elapsed).min(self.cap);
    }

    /// Whether a handshake may proceed without a cookie at `now`.
    pub(crate) fn has_credit(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.credit >= self.cost
    }

    /// Charges one handshake (saturating at zero).
    pub(crate) fn charge(&mut self, now: Instant) {
        self.refill(now);
        self.credit = self.credit.saturating_sub(self.cost);
    }
}

/// S5: under load, a handshake init that echoes a valid cookie (mac2) has
/// proved it receives at its source address, but may still come at any
/// rate. Each source IP (an IPv6 source by its /64, the block one host
/// usually holds) gets its own token bucket of `per_second` handshakes per
/// second, bursts of up to `per_second`. At most `capacity` IPs are
/// tracked; a new one beyond that forgets the one tracked longest (its
/// bucket starts full again if it comes back). Memory stays bounded, and
/// nothing here reads a clock.
#[derive(Debug)]
pub(crate) struct IpLimiter {
    per_second: u32,
    capacity: usize,
    buckets: std::collections::BTreeMap<u128, RateMeter>,
    order: std::collections::VecDeque<u128>,
}

impl IpLimiter {
    /// `per_second` validated handshakes per second and source IP; at
    /// most `capacity` IPs tracked.
    pub(crate) fn new(per_second: u32, capacity: usize) -> Self {
        IpLimiter {
            per_second,
            capacity: capacity.max(1),
            buckets: std::collections::BTreeMap::new(),
            order: std::collections::VecDeque::new(),
        }
    }

    /// The IPv4 address, or the IPv6 /64, as one key.
    fn key(ip: IpAddr) -> u128 {
        match ip.to_canonical() {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => (u128::from(v6) & !((1u128 << 64) - 1)) | (1 << 32),
        }
    }

    /// Whether one more handshake from `ip` may proceed at `now`; charges
    /// it if so.
    pub(crate) fn allow(&mut self, now: Instant, ip: IpAddr) -> bool {
        let key = Self::key(ip);
        if !self.buckets.contains_key(&key) {
            if self.buckets.len() >= self.capacity {
                if let Some(oldest) = self.order.pop_front() {
                    self.buckets.remove(&oldest);
                }
            }
            self.buckets
                .insert(key, RateMeter::new(self.per_second, now));
            self.order.push_back(key);
        }
        let Some(bucket) = self.buckets.get_mut(&key) else {
            return false;
        };
        if bucket.has_credit(now) {
            bucket.charge(now);
            true
        } else {
            false
        }
    }

    /// IPs tracked now.
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_the_ip_limiter_keeps_a_bucket_per_ip_and_a_bounded_table() {
        let t0 = Instant::from_millis(1_000);
        let mut l = IpLimiter::new(3, 4);
        let a: IpAddr = "203.0.113.9".parse().unwrap();
        for _ in 0..3 {
            assert!(l.allow(t0, a));
        }
        assert!(!l.allow(t0, a), "the burst is spent");
        // Another IP has its own bucket; an IPv6 host's /64 is one key.
        assert!(l.allow(t0, "203.0.113.10".parse().unwrap()));
        let v6a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:1:2:ffff::7".parse().unwrap();
        for _ in 0..3 {
            assert!(l.allow(t0, v6a));
        }
        assert!(!l.allow(t0, v6b), "same /64, same bucket");
        // An IPv4-mapped source is its IPv4 address.
        assert!(!l.allow(t0, "::ffff:203.0.113.9".parse().unwrap()));
        // A third of a second later, one more.
        let t1 = t0 + Duration::from_millis(334);
        assert!(l.allow(t1, a));
        assert!(!l.allow(t1, a));
        // Bounded: many IPs never grow the table past its capacity; the
        // oldest is forgotten (and starts full when it comes back).
        for i in 0..100u8 {
            let _ = l.allow(t1, IpAddr::from([198, 51, 100, i]));
            assert!(l.tracked() <= 4);
        }
        assert!(l.allow(t1, a), "forgotten, so a fresh bucket");
    }

    #[test]
    fn cookie_seal_open_round_trip_and_aad_binding() {
        let key = [7u8; 32];
        let nonce = [9u8; 24];
        let cookie = [1u8; 16];
        let mut out = [0u8; 32];
        seal_cookie(&key, &nonce, b"mac1-bytes-16...", &cookie, &mut out);
        assert_eq!(
            open_cookie(&key, &nonce, b"mac1-bytes-16...", &out),
            Some(cookie)
        );
        assert_eq!(open_cookie(&key, &nonce, b"other-mac1-bytes", &out), None);
        out[3] ^= 1;
        assert_eq!(open_cookie(&key, &nonce, b"mac1-bytes-16...", &out), None);
    }

    #[test]
    fn mac2_checks_current_and_previous_secret_only() {
        let t0 = Instant::ZERO;
        let addr: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let mut s = CookieSecret::new([1; 32], t0);
        let msg = b"some init bytes";
        let mac2 = keyed_mac(&s.cookie(addr), &[msg]);
        assert!(s.check_mac2(addr, msg, &mac2));
        assert!(!s.check_mac2("192.0.2.1:4001".parse().unwrap(), msg, &mac2));
        s.rotate([2; 32], t0 + COOKIE_SECRET_LIFETIME);
        assert!(s.check_mac2(addr, msg, &mac2));
        s.rotate([3; 32], t0 + 2 * COOKIE_SECRET_LIFETIME);
        assert!(!s.check_mac2(addr, msg, &mac2));
        assert_eq!(s.born(), t0 + 2 * COOKIE_SECRET_LIFETIME);
    }

    #[test]
    fn rate_meter_bursts_then_refills() {
        let t0 = Instant::ZERO;
        let mut m = RateMeter::new(4, t0);
        for _ in 0..4 {
            assert!(m.has_credit(t0));
            m.charge(t0);
        }
        assert!(!m.has_credit(t0));
        assert!(m.has_credit(t0 + Duration::from_millis(250)));
    }
}
