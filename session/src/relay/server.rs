//! The coordinator's relay: circuits, quotas and refusal notices (S3).
//!
//! [`RelayServer`] decides, frame by frame, whether a forward frame from one
//! authenticated peer to another may pass. It is deterministic: it reads no
//! clock and no randomness; the caller passes the time
//! ([`natrix_proto::Instant`]) in. It moves no bytes either: the caller
//! decodes the frame, asks [`RelayServer::forward`], and sends what it is told
//! to (see the [module overview](super)).
//!
//! # Circuits
//!
//! A circuit is the unordered pair of two node ids. It opens on the first
//! frame forwarded between them (the sender of that frame is its *opener*),
//! carries both directions, and closes when no frame passed for
//! [`RelayConfig::idle_close`]. Refused frames are not activity: a flood of
//! refused frames keeps nothing alive.
//!
//! # Quotas
//!
//! [`RelayServer::forward`] checks, in this order:
//!
//! 1. [`Quota::SelfTarget`]: the target is the sender;
//! 2. [`Quota::Offline`]: the target has no session here;
//! 3. on an existing circuit:
//!    - a *spent* circuit refuses with the quota that spent it
//!      ([`Quota::TotalBytes`] or [`Quota::Duration`]) until
//!      [`RelayConfig::idle_close`] after it was spent, and is then removed
//!      (a new circuit between the two may then open, with fresh allowances);
//!    - [`Quota::Duration`]: the circuit is [`RelayConfig::max_duration`] old
//!      (it becomes spent, as of the moment it reached that age);
//!    - [`Quota::TotalBytes`]: the frame would take the circuit past
//!      [`RelayConfig::max_bytes`] (it becomes spent now; the frame is not
//!      forwarded, so a circuit never carries more than the cap);
//!    - [`Quota::Rate`]: a token bucket per circuit, shared by both
//!      directions, refilled at [`RelayConfig::rate_bytes_per_sec`] up to
//!      [`RelayConfig::burst_bytes`] (a new circuit starts full). A frame of
//!      `len` bytes passes when the bucket holds `len` bytes; the refusal's
//!      `retry_after` is the exact time until it will.
//! 4. for a new circuit:
//!    - [`Quota::CircuitsPerPeer`]: the sender already *opened*
//!      [`RelayConfig::circuits_per_peer`] circuits. Only circuits a peer
//!      opened count toward its allowance, so sybils opening circuits toward a
//!      victim cannot use up the victim's own;
//!    - [`Quota::Circuits`]: the table holds [`RelayConfig::max_circuits`]
//!      circuits (spent ones included).
//!
//! Refusals of a new circuit carry as `retry_after` the time until the
//! earliest circuit that frees the allowance would close if unused (the
//! sender's own for `CircuitsPerPeer`, anyone's for `Circuits`).
//!
//! # Refusal notices
//!
//! [`Refused::notify`] tells the caller whether to send a
//! [`Refused`](super::RelayFrame::Refused) frame back to the sender. At most
//! one notice per [`NOTICE_INTERVAL`] goes out per (sender, target) pair, so
//! a flood of refused frames does not become a flood of notices. The
//! bookkeeping ([`NoticeLimiter`]) holds at most `max_circuits` pairs; an entry
//! lapses after one interval. When it is full of pairs noticed within the
//! last interval, a new pair gets no notice (fail closed): in all, at most
//! `max_circuits` notices leave per interval, whatever the input.
//!
//! # Cost and memory
//!
//! Every table is a `BTreeMap`/`BTreeSet` (ordered, deterministic, no hash
//! seed an attacker could collide against). A forwarded or refused frame costs
//! `O(log n)`; [`RelayServer::handle_timeout`] costs `O(log n)` per circuit it
//! closes; [`RelayServer::peer_gone`] costs `O(k log n)` for the `k` circuits
//! of that peer (an index by end, no full scan). The circuit table never holds
//! more than [`RelayConfig::max_circuits`] entries, and the indexes hold at
//! most two entries per circuit.

use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet};

use natrix_proto::{Instant, NodeId};

use super::frame::{MAX_RELAYED_PACKET, QUOTA_COUNT, Quota, Refusal};

/// Minimum time between two refusal notices for one (sender, target) pair.
pub const NOTICE_INTERVAL: Duration = Duration::from_secs(1);

/// Token-bucket units per byte (the bucket counts nano-bytes, so refilling
/// at any rate after any elapsed time loses nothing to rounding).
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Relay limits (S3). [`Default`] gives the specification's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayConfig {
    /// Sustained byte rate per circuit, both directions together
    /// (default 128 KiB/s). Counts relayed packet bytes, not frame headers.
    pub rate_bytes_per_sec: u64,
    /// Token-bucket depth per circuit: bytes a circuit may send at once after
    /// a quiet period (default 128 KiB, one second at the default rate). At
    /// least [`MAX_RELAYED_PACKET`], or the largest frame could never pass.
    pub burst_bytes: u64,
    /// A circuit closes after this long without a forwarded frame; a spent
    /// circuit is removed this long after it was spent (default 60 s).
    pub idle_close: Duration,
    /// Most circuits one peer may have opened at once (default 8).
    pub circuits_per_peer: usize,
    /// Most circuits in all, spent ones included (default 1024). Also the
    /// capacity of the refusal-notice table.
    pub max_circuits: usize,
    /// Optional cap on the bytes one circuit carries (default none). At
    /// least [`MAX_RELAYED_PACKET`].
    pub max_bytes: Option<u64>,
    /// Optional cap on a circuit's lifetime (default none).
    pub max_duration: Option<Duration>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            rate_bytes_per_sec: 128 * 1024,
            burst_bytes: 128 * 1024,
            idle_close: Duration::from_secs(60),
            circuits_per_peer: 8,
            max_circuits: 1024,
            max_bytes: None,
            max_duration: None,
        }
    }
}

/// Why a [`RelayConfig`] is not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum RelayConfigError {
    /// `rate_bytes_per_sec` is zero.
    #[error("relay config: rate_bytes_per_sec must be greater than zero")]
    ZeroRate,
    /// `burst_bytes` is below [`MAX_RELAYED_PACKET`].
    #[error("relay config: burst_bytes ({0}) must be at least {MAX_RELAYED_PACKET}")]
    BurstTooSmall(u64),
    /// `idle_close` is zero.
    #[error("relay config: idle_close must be greater than zero")]
    ZeroIdleClose,
    /// `circuits_per_peer` is zero.
    #[error("relay config: circuits_per_peer must be greater than zero")]
    ZeroCircuitsPerPeer,
    /// `max_circuits` is zero.
    #[error("relay config: max_circuits must be greater than zero")]
    ZeroMaxCircuits,
    /// `max_bytes` is below [`MAX_RELAYED_PACKET`].
    #[error("relay config: max_bytes ({0}) must be at least {MAX_RELAYED_PACKET}")]
    MaxBytesTooSmall(u64),
    /// `max_duration` is zero.
    #[error("relay config: max_duration must be greater than zero")]
    ZeroMaxDuration,
}

impl RelayConfig {
    /// Checks the limits.
    ///
    /// # Errors
    ///
    /// The first [`RelayConfigError`] that applies.
    pub fn validate(&self) -> Result<(), RelayConfigError> {
        let min = MAX_RELAYED_PACKET as u64;
        if self.rate_bytes_per_sec == 0 {
            return Err(RelayConfigError::ZeroRate);
        }
        if self.burst_bytes < min {
            return Err(RelayConfigError::BurstTooSmall(self.burst_bytes));
        }
        if self.idle_close.is_zero() {
            return Err(RelayConfigError::ZeroIdleClose);
        }
        if self.circuits_per_peer == 0 {
            return Err(RelayConfigError::ZeroCircuitsPerPeer);
        }
        if self.max_circuits == 0 {
            return Err(RelayConfigError::ZeroMaxCircuits);
        }
        if let Some(b) = self.max_bytes {
            if b < min {
                return Err(RelayConfigError::MaxBytesTooSmall(b));
            }
        }
        if self.max_duration.is_some_and(|d| d.is_zero()) {
            return Err(RelayConfigError::ZeroMaxDuration);
        }
        Ok(())
    }
}

/// A refused frame: the typed [`Refusal`], and whether to tell the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[error("{refusal}")]
pub struct Refused {
    /// Which quota, and when it resets.
    pub refusal: Refusal,
    /// Send a [`Refused`](super::RelayFrame::Refused) frame back to the
    /// sender (false: a notice for this pair went out within the last
    /// [`NOTICE_INTERVAL`]; drop silently).
    pub notify: bool,
}

/// A snapshot of one circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitInfo {
    /// The node whose frame opened the circuit.
    pub opener: NodeId,
    /// When it opened.
    pub opened_at: Instant,
    /// Relayed packet bytes, both directions.
    pub bytes: u64,
    /// Forwarded frames, both directions.
    pub frames: u64,
    /// When the last frame was forwarded.
    pub last_active: Instant,
    /// The quota that spent the circuit, if it is spent.
    pub spent: Option<Quota>,
    /// When it closes unless a frame passes first (a spent circuit closes
    /// then regardless).
    pub closes_at: Instant,
}

/// Monotonic relay counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayStats {
    /// Frames forwarded.
    pub frames_forwarded: u64,
    /// Packet bytes forwarded.
    pub bytes_forwarded: u64,
    /// Circuits opened.
    pub circuits_opened: u64,
    /// Circuits closed after [`RelayConfig::idle_close`] without traffic.
    pub circuits_closed_idle: u64,
    /// Spent circuits removed after their cool-down.
    pub circuits_closed_spent: u64,
    /// Circuits closed by [`RelayServer::peer_gone`].
    pub circuits_closed_peer_gone: u64,
    /// Refused frames, indexed by [`Quota::index`]; see [`RelayStats::refused`].
    pub refused_by_quota: [u64; QUOTA_COUNT],
    /// Refusals with [`Refused::notify`] set.
    pub notices_sent: u64,
    /// Refusals without a notice (rate-limited).
    pub notices_suppressed: u64,
}

impl RelayStats {
    /// Frames refused because of `quota`.
    #[must_use]
    pub fn refused(&self, quota: Quota) -> u64 {
        self.refused_by_quota
            .get(quota.index())
            .copied()
            .unwrap_or(0)
    }

    /// Frames refused, all quotas.
    #[must_use]
    pub fn refused_total(&self) -> u64 {
        self.refused_by_quota
            .iter()
            .fold(0u64, |a, b| a.saturating_add(*b))
    }
}

/// Rate limit for refusal notices: at most one per [`NOTICE_INTERVAL`] per
/// (sender, target) pair, with bounded memory.
///
/// [`RelayServer`] uses one; a coordinator that does not relay at all (and
/// answers every forward frame with [`Quota::Disabled`]) can use one alone.
///
/// It remembers at most `capacity` pairs. An entry lapses one interval after
/// its notice. A pair that is not remembered while every entry is still
/// fresh is denied (fail closed), so at most `capacity` notices pass per
/// interval in all. Each call costs `O(log capacity)` amortized.
#[derive(Debug, Clone)]
pub struct NoticeLimiter {
    capacity: usize,
    /// (sender, target) → when its last notice went out.
    last: BTreeMap<(NodeId, NodeId), Instant>,
    /// The same entries by time, oldest first.
    order: BTreeSet<(Instant, NodeId, NodeId)>,
}

impl NoticeLimiter {
    /// A limiter remembering up to `capacity` pairs.
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        NoticeLimiter {
            capacity,
            last: BTreeMap::new(),
            order: BTreeSet::new(),
        }
    }

    /// Pairs remembered.
    #[must_use]
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// True when no pair is remembered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    /// Forgets the pairs whose interval is over.
    pub fn purge(&mut self, now: Instant) {
        while let Some(&(at, from, to)) = self.order.first() {
            if at + NOTICE_INTERVAL > now {
                break;
            }
            self.order.remove(&(at, from, to));
            self.last.remove(&(from, to));
        }
    }

    /// Whether a notice may go from the relay to `from` about its frame toward
    /// `to` at `now`; when it may, the notice is recorded as sent.
    pub fn allow(&mut self, now: Instant, from: NodeId, to: NodeId) -> bool {
        self.purge(now);
        if self.last.contains_key(&(from, to)) {
            // Still remembered: noticed within the interval (or time went
            // backwards, which earns no notice either).
            return false;
        }
        if self.last.len() >= self.capacity {
            return false;
        }
        self.last.insert((from, to), now);
        self.order.insert((now, from, to));
        true
    }
}

/// The table key of a circuit: its two ends, lower id first.
type Key = (NodeId, NodeId);

fn key(a: NodeId, b: NodeId) -> Key {
    if a <= b { (a, b) } else { (b, a) }
}

#[derive(Debug, Clone)]
struct Circuit {
    opener: NodeId,
    opened_at: Instant,
    last_active: Instant,
    bytes: u64,
    frames: u64,
    /// Token bucket, in nano-bytes (`bytes × 10⁹`).
    tokens: u128,
    refilled_at: Instant,
    /// The quota that spent it and when.
    spent: Option<(Quota, Instant)>,
    /// When it closes (idle close, or end of the spent cool-down).
    deadline: Instant,
}

/// Why a circuit closed (for logs and counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloseReason {
    Idle,
    Spent,
    PeerGone,
}

/// The coordinator side of the relay (S3). See the [module docs](self).
#[derive(Debug, Clone)]
pub struct RelayServer {
    config: RelayConfig,
    circuits: BTreeMap<Key, Circuit>,
    /// Every circuit's deadline.
    deadlines: BTreeSet<(Instant, Key)>,
    /// Every circuit's deadline under its opener (earliest of a peer's own).
    by_opener: BTreeSet<(NodeId, Instant, Key)>,
    /// Circuits each peer opened (entries only for non-zero counts).
    opened: BTreeMap<NodeId, usize>,
    /// Both ends of every circuit: (end, other end).
    by_end: BTreeSet<(NodeId, NodeId)>,
    notices: NoticeLimiter,
    stats: RelayStats,
}

impl RelayServer {
    /// A relay with no circuits (like [`Endpoint::new`](crate::Endpoint::new),
    /// a configuration error is a programming error; see
    /// [`try_new`](Self::try_new) for a fallible constructor).
    ///
    /// # Panics
    ///
    /// When `config` fails [`RelayConfig::validate`].
    #[must_use]
    pub fn new(config: RelayConfig) -> Self {
        match Self::try_new(config) {
            Ok(s) => s,
            Err(e) => panic!("invalid RelayConfig: {e}"),
        }
    }

    /// A relay with no circuits.
    ///
    /// # Errors
    ///
    /// [`RelayConfigError`] when `config` does not [validate](RelayConfig::validate).
    pub fn try_new(config: RelayConfig) -> Result<Self, RelayConfigError> {
        config.validate()?;
        Ok(RelayServer {
            config,
            circuits: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            by_opener: BTreeSet::new(),
            opened: BTreeMap::new(),
            by_end: BTreeSet::new(),
            notices: NoticeLimiter::new(config.max_circuits),
            stats: RelayStats::default(),
        })
    }

    /// The limits in force.
    #[must_use]
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// Decides whether a forward frame of `len` packet bytes from `from` to
    /// `to` passes at `now`; `target_online` says whether `to` has a session
    /// at this coordinator. On `Ok` the caller sends the packet on to `to`
    /// (as a forward frame naming `from`); the circuit is opened if needed and
    /// its bytes and activity are accounted.
    ///
    /// Circuits whose time is up are closed first, as
    /// [`handle_timeout`](Self::handle_timeout) would, so the outcome does not
    /// depend on how punctually the caller runs timers.
    ///
    /// `len` is the packet's length, at most [`MAX_RELAYED_PACKET`] for a
    /// decoded frame. A larger `len` than [`RelayConfig::burst_bytes`] (or than
    /// [`RelayConfig::max_bytes`]) could never pass; it is refused with that
    /// quota and a zero `retry_after`, and changes no state.
    ///
    /// # Errors
    ///
    /// [`Refused`]: the quota that refused the frame (see the module docs for
    /// the order of checks), and whether to notify the sender.
    pub fn forward(
        &mut self,
        now: Instant,
        from: NodeId,
        to: NodeId,
        len: usize,
        target_online: bool,
    ) -> Result<(), Refused> {
        self.expire(now);
        if from == to {
            return Err(self.refuse(now, from, to, Quota::SelfTarget, Duration::ZERO));
        }
        if !target_online {
            return Err(self.refuse(now, from, to, Quota::Offline, Duration::ZERO));
        }
        let len64 = u64::try_from(len).unwrap_or(u64::MAX);
        if len64 > self.config.burst_bytes {
            return Err(self.refuse(now, from, to, Quota::Rate, Duration::ZERO));
        }
        if self.config.max_bytes.is_some_and(|m| len64 > m) {
            return Err(self.refuse(now, from, to, Quota::TotalBytes, Duration::ZERO));
        }
        let k = key(from, to);
        if self.circuits.contains_key(&k) {
            self.forward_existing(now, from, to, k, len64)
        } else {
            self.open(now, from, to, k, len64)
        }
    }

    fn forward_existing(
        &mut self,
        now: Instant,
        from: NodeId,
        to: NodeId,
        k: Key,
        len: u64,
    ) -> Result<(), Refused> {
        let cfg = self.config;
        let Some(c) = self.circuits.get_mut(&k) else {
            return Ok(());
        };
        if let Some((quota, at)) = c.spent {
            let retry = (at + cfg.idle_close) - now;
            return Err(self.refuse(now, from, to, quota, retry));
        }
        if let Some(max) = cfg.max_duration {
            let end = c.opened_at + max;
            if now >= end {
                self.spend(k, Quota::Duration, end);
                let retry = (end + cfg.idle_close) - now;
                return Err(self.refuse(now, from, to, Quota::Duration, retry));
            }
        }
        if let Some(max) = cfg.max_bytes {
            if c.bytes.saturating_add(len) > max {
                self.spend(k, Quota::TotalBytes, now);
                return Err(self.refuse(now, from, to, Quota::TotalBytes, cfg.idle_close));
            }
        }
        // Rate: refill, then take `len` bytes or say when they will be there.
        let cap = u128::from(cfg.burst_bytes) * NANOS_PER_SEC;
        let rate = u128::from(cfg.rate_bytes_per_sec);
        let elapsed = (now - c.refilled_at).as_nanos();
        c.tokens = c
            .tokens
            .saturating_add(elapsed.saturating_mul(rate))
            .min(cap);
        c.refilled_at = c.refilled_at.max(now);
        let need = u128::from(len) * NANOS_PER_SEC;
        if c.tokens < need {
            let wait = (need - c.tokens).div_ceil(rate);
            let retry = Duration::from_nanos(u64::try_from(wait).unwrap_or(u64::MAX));
            return Err(self.refuse(now, from, to, Quota::Rate, retry));
        }
        c.tokens -= need;
        self.account(now, k, len);
        Ok(())
    }

    fn open(
        &mut self,
        now: Instant,
        from: NodeId,
        to: NodeId,
        k: Key,
        len: u64,
    ) -> Result<(), Refused> {
        let cfg = self.config;
        let mine = self.opened.get(&from).copied().unwrap_or(0);
        if mine >= cfg.circuits_per_peer {
            let lo = (from, Instant::ZERO, (NodeId(0), NodeId(0)));
            let hi = (from, Instant::MAX, (NodeId(u64::MAX), NodeId(u64::MAX)));
            let retry = self
                .by_opener
                .range(lo..=hi)
                .next()
                .map_or(Duration::ZERO, |&(_, at, _)| at - now);
            return Err(self.refuse(now, from, to, Quota::CircuitsPerPeer, retry));
        }
        if self.circuits.len() >= cfg.max_circuits {
            let retry = self
                .deadlines
                .first()
                .map_or(Duration::ZERO, |&(at, _)| at - now);
            return Err(self.refuse(now, from, to, Quota::Circuits, retry));
        }
        let need = u128::from(len) * NANOS_PER_SEC;
        let cap = u128::from(cfg.burst_bytes) * NANOS_PER_SEC;
        let deadline = now + cfg.idle_close;
        self.circuits.insert(
            k,
            Circuit {
                opener: from,
                opened_at: now,
                last_active: now,
                bytes: 0,
                frames: 0,
                tokens: cap.saturating_sub(need),
                refilled_at: now,
                spent: None,
                deadline,
            },
        );
        self.deadlines.insert((deadline, k));
        self.by_opener.insert((from, deadline, k));
        *self.opened.entry(from).or_insert(0) += 1;
        self.by_end.insert((k.0, k.1));
        self.by_end.insert((k.1, k.0));
        self.stats.circuits_opened += 1;
        tracing::debug!(opener = %from, peer = %to, circuits = self.circuits.len(), "relay circuit opened");
        self.account(now, k, len);
        Ok(())
    }

    /// Counts a forwarded frame and moves the circuit's idle deadline.
    fn account(&mut self, now: Instant, k: Key, len: u64) {
        let idle = self.config.idle_close;
        let Some(c) = self.circuits.get_mut(&k) else {
            return;
        };
        c.bytes = c.bytes.saturating_add(len);
        c.frames = c.frames.saturating_add(1);
        c.last_active = c.last_active.max(now);
        let old = c.deadline;
        c.deadline = c.last_active + idle;
        let (new, opener) = (c.deadline, c.opener);
        if new != old {
            self.deadlines.remove(&(old, k));
            self.deadlines.insert((new, k));
            self.by_opener.remove(&(opener, old, k));
            self.by_opener.insert((opener, new, k));
        }
        self.stats.frames_forwarded += 1;
        self.stats.bytes_forwarded = self.stats.bytes_forwarded.saturating_add(len);
        tracing::trace!(a = %k.0, b = %k.1, len, "relayed");
    }

    /// Marks a circuit spent by `quota` as of `at`; it is removed
    /// `idle_close` later.
    fn spend(&mut self, k: Key, quota: Quota, at: Instant) {
        let idle = self.config.idle_close;
        let Some(c) = self.circuits.get_mut(&k) else {
            return;
        };
        c.spent = Some((quota, at));
        let old = c.deadline;
        c.deadline = at + idle;
        let (new, opener) = (c.deadline, c.opener);
        self.deadlines.remove(&(old, k));
        self.deadlines.insert((new, k));
        self.by_opener.remove(&(opener, old, k));
        self.by_opener.insert((opener, new, k));
        tracing::debug!(a = %k.0, b = %k.1, %quota, "relay circuit spent");
    }

    fn refuse(
        &mut self,
        now: Instant,
        from: NodeId,
        to: NodeId,
        quota: Quota,
        retry_after: Duration,
    ) -> Refused {
        if let Some(n) = self.stats.refused_by_quota.get_mut(quota.index()) {
            *n = n.saturating_add(1);
        }
        let notify = self.notices.allow(now, from, to);
        let refusal = Refusal { quota, retry_after };
        if notify {
            self.stats.notices_sent += 1;
            tracing::debug!(%from, %to, %quota, ?retry_after, "relay refused a frame");
        } else {
            self.stats.notices_suppressed += 1;
            tracing::trace!(%from, %to, %quota, "relay refused a frame (no notice)");
        }
        Refused { refusal, notify }
    }

    fn close(&mut self, k: Key, reason: CloseReason) {
        let Some(c) = self.circuits.remove(&k) else {
            return;
        };
        self.deadlines.remove(&(c.deadline, k));
        self.by_opener.remove(&(c.opener, c.deadline, k));
        self.by_end.remove(&(k.0, k.1));
        self.by_end.remove(&(k.1, k.0));
        if let Some(n) = self.opened.get_mut(&c.opener) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.opened.remove(&c.opener);
            }
        }
        match reason {
            CloseReason::Idle => self.stats.circuits_closed_idle += 1,
            CloseReason::Spent => self.stats.circuits_closed_spent += 1,
            CloseReason::PeerGone => self.stats.circuits_closed_peer_gone += 1,
        }
        tracing::debug!(
            a = %k.0,
            b = %k.1,
            reason = ?reason,
            bytes = c.bytes,
            frames = c.frames,
            "relay circuit closed"
        );
    }

    /// Closes every circuit whose deadline is at or before `now`.
    fn expire(&mut self, now: Instant) {
        while let Some(&(at, k)) = self.deadlines.first() {
            if at > now {
                break;
            }
            let reason = match self.circuits.get(&k).map(|c| c.spent) {
                Some(Some(_)) => CloseReason::Spent,
                _ => CloseReason::Idle,
            };
            // `close` removes the deadline; remove it here too in case the
            // tables disagree, so this loop always makes progress.
            self.deadlines.remove(&(at, k));
            self.close(k, reason);
        }
    }

    /// The earliest instant at which [`handle_timeout`](Self::handle_timeout)
    /// has something to do (a circuit's idle close or the end of a spent
    /// circuit's cool-down); `None` with no circuits. Exact: `O(1)`-ish
    /// (`O(log n)`), never early, never late.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(at, _)| at)
    }

    /// Closes the circuits that are due at `now` and forgets lapsed notice
    /// bookkeeping. Calling it early or twice is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire(now);
        self.notices.purge(now);
    }

    /// Closes every circuit with `peer` at one end: its session went down.
    ///
    /// Costs `O(k log n)` for its `k` circuits, found through an index by end
    /// (no scan of the whole table). Its notice bookkeeping is kept (it lapses
    /// within [`NOTICE_INTERVAL`]).
    pub fn peer_gone(&mut self, now: Instant, peer: NodeId) {
        self.expire(now);
        let others: Vec<NodeId> = self
            .by_end
            .range((peer, NodeId(0))..=(peer, NodeId(u64::MAX)))
            .map(|&(_, other)| other)
            .collect();
        for other in others {
            self.close(key(peer, other), CloseReason::PeerGone);
        }
    }

    /// Circuits in the table (spent ones included); never more than
    /// [`RelayConfig::max_circuits`].
    #[must_use]
    pub fn circuits(&self) -> usize {
        self.circuits.len()
    }

    /// Circuits `peer` opened that are still in the table.
    #[must_use]
    pub fn circuits_opened_by(&self, peer: NodeId) -> usize {
        self.opened.get(&peer).copied().unwrap_or(0)
    }

    /// The circuit between `a` and `b` (either order), if open.
    #[must_use]
    pub fn circuit(&self, a: NodeId, b: NodeId) -> Option<CircuitInfo> {
        self.circuits.get(&key(a, b)).map(|c| CircuitInfo {
            opener: c.opener,
            opened_at: c.opened_at,
            bytes: c.bytes,
            frames: c.frames,
            last_active: c.last_active,
            spent: c.spent.map(|(q, _)| q),
            closes_at: c.deadline,
        })
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> RelayStats {
        self.stats
    }

    /// Checks the indexes against the circuit table (tests; `O(n)`).
    #[cfg(test)]
    fn check_invariants(&self) {
        assert!(self.circuits.len() <= self.config.max_circuits);
        assert_eq!(self.deadlines.len(), self.circuits.len());
        assert_eq!(self.by_opener.len(), self.circuits.len());
        assert_eq!(self.by_end.len(), 2 * self.circuits.len());
        let mut counts = BTreeMap::new();
        for (k, c) in &self.circuits {
            assert!(self.deadlines.contains(&(c.deadline, *k)));
            assert!(self.by_opener.contains(&(c.opener, c.deadline, *k)));
            *counts.entry(c.opener).or_insert(0usize) += 1;
        }
        assert_eq!(counts, self.opened);
        assert!(
            self.opened
                .values()
                .all(|&n| n <= self.config.circuits_per_peer)
        );
        assert!(self.notices.len() <= self.config.max_circuits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(m: u64) -> Instant {
        Instant::from_millis(m)
    }

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);
    const C: NodeId = NodeId(3);

    fn server(cfg: RelayConfig) -> RelayServer {
        RelayServer::new(cfg)
    }

    #[test]
    fn config_validation_is_typed() {
        let ok = RelayConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        let cases = [
            (
                RelayConfig {
                    rate_bytes_per_sec: 0,
                    ..ok
                },
                RelayConfigError::ZeroRate,
            ),
            (
                RelayConfig {
                    burst_bytes: 1190,
                    ..ok
                },
                RelayConfigError::BurstTooSmall(1190),
            ),
            (
                RelayConfig {
                    idle_close: Duration::ZERO,
                    ..ok
                },
                RelayConfigError::ZeroIdleClose,
            ),
            (
                RelayConfig {
                    circuits_per_peer: 0,
                    ..ok
                },
                RelayConfigError::ZeroCircuitsPerPeer,
            ),
            (
                RelayConfig {
                    max_circuits: 0,
                    ..ok
                },
                RelayConfigError::ZeroMaxCircuits,
            ),
            (
                RelayConfig {
                    max_bytes: Some(10),
                    ..ok
                },
                RelayConfigError::MaxBytesTooSmall(10),
            ),
            (
                RelayConfig {
                    max_duration: Some(Duration::ZERO),
                    ..ok
                },
                RelayConfigError::ZeroMaxDuration,
            ),
        ];
        for (cfg, err) in cases {
            assert_eq!(cfg.validate(), Err(err));
            assert_eq!(RelayServer::try_new(cfg).err(), Some(err));
        }
        let d = RelayConfig::default();
        assert_eq!(d.rate_bytes_per_sec, 131_072);
        assert_eq!(d.burst_bytes, 131_072);
        assert_eq!(d.idle_close, Duration::from_secs(60));
        assert_eq!((d.circuits_per_peer, d.max_circuits), (8, 1024));
        assert_eq!((d.max_bytes, d.max_duration), (None, None));
    }

    #[test]
    fn circuit_is_unordered_and_carries_both_directions() {
        let mut s = server(RelayConfig::default());
        s.forward(ms(0), A, B, 100, true).unwrap();
        s.forward(ms(1), B, A, 50, true).unwrap();
        assert_eq!(s.circuits(), 1);
        let c = s.circuit(B, A).unwrap();
        assert_eq!((c.opener, c.bytes, c.frames), (A, 150, 2));
        assert_eq!(c.closes_at, ms(60_001));
        assert_eq!(s.circuits_opened_by(A), 1);
        assert_eq!(s.circuits_opened_by(B), 0);
        s.check_invariants();
    }

    #[test]
    fn token_bucket_is_exact() {
        let cfg = RelayConfig {
            rate_bytes_per_sec: 1000,
            burst_bytes: 2000,
            ..RelayConfig::default()
        };
        let mut s = server(cfg);
        s.forward(ms(0), A, B, 1191, true).unwrap();
        // 809 bytes left: a 1000-byte frame needs 191 more, at 1 byte/ms.
        let e = s.forward(ms(0), B, A, 1000, true).unwrap_err();
        assert_eq!(e.refusal.quota, Quota::Rate);
        assert_eq!(e.refusal.retry_after, Duration::from_millis(191));
        assert!(s.forward(ms(190), B, A, 1000, true).is_err());
        s.forward(ms(191), B, A, 1000, true).unwrap();
        // The bucket never holds more than the burst.
        let e = s.forward(ms(1_000_000), A, B, 1191, true);
        assert!(e.is_ok());
        s.forward(ms(1_000_000), A, B, 809, true).unwrap();
        assert!(s.forward(ms(1_000_000), A, B, 1, true).is_err());
        s.check_invariants();
    }

    #[test]
    fn refused_frames_are_not_activity() {
        let cfg = RelayConfig {
            rate_bytes_per_sec: 1000,
            burst_bytes: 2000,
            ..RelayConfig::default()
        };
        let mut s = server(cfg);
        s.forward(ms(0), A, B, 2000, true).unwrap();
        for t in 0..100 {
            assert!(s.forward(ms(t), A, B, 1191, true).is_err());
        }
        assert_eq!(s.circuit(A, B).unwrap().last_active, ms(0));
        assert_eq!(s.poll_timeout(), Some(ms(60_000)));
    }

    #[test]
    fn expiry_at_the_deadline_precedes_the_frame() {
        let mut s = server(RelayConfig::default());
        s.forward(ms(0), A, B, 10, true).unwrap();
        // Exactly idle_close later, the old circuit is gone and B opens a new one.
        s.forward(ms(60_000), B, A, 10, true).unwrap();
        assert_eq!(s.circuit(A, B).unwrap().opener, B);
        assert_eq!(s.stats().circuits_closed_idle, 1);
        assert_eq!(s.stats().circuits_opened, 2);
        s.check_invariants();
    }

    #[test]
    fn peer_gone_closes_only_that_peers_circuits() {
        let mut s = server(RelayConfig::default());
        s.forward(ms(0), A, B, 10, true).unwrap();
        s.forward(ms(0), C, A, 10, true).unwrap();
        s.forward(ms(0), B, C, 10, true).unwrap();
        s.peer_gone(ms(1), A);
        assert_eq!(s.circuits(), 1);
        assert!(s.circuit(B, C).is_some());
        assert_eq!(s.stats().circuits_closed_peer_gone, 2);
        assert_eq!(s.circuits_opened_by(C), 0);
        s.check_invariants();
    }

    #[test]
    fn oversized_len_is_refused_without_state() {
        let mut s = server(RelayConfig {
            max_bytes: Some(5000),
            ..RelayConfig::default()
        });
        let e = s.forward(ms(0), A, B, 200_000, true).unwrap_err();
        assert_eq!(e.refusal, Refusal::new(Quota::Rate, Duration::ZERO));
        let e = s.forward(ms(0), A, B, 6000, true).unwrap_err();
        assert_eq!(e.refusal, Refusal::new(Quota::TotalBytes, Duration::ZERO));
        assert_eq!(s.circuits(), 0);
    }

    #[test]
    fn notice_limiter_fails_closed_when_full() {
        let mut n = NoticeLimiter::new(2);
        assert!(n.allow(ms(0), A, B));
        assert!(!n.allow(ms(999), A, B));
        assert!(n.allow(ms(0), A, C));
        assert!(!n.allow(ms(0), B, C), "full of fresh entries");
        assert!(n.allow(ms(1000), B, C), "A→B and A→C lapsed");
        assert!(n.allow(ms(1000), A, B));
        assert_eq!(n.len(), 2);
        n.purge(ms(5000));
        assert!(n.is_empty());
    }
}
