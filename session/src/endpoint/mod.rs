//! The [`Endpoint`]: many authenticated sessions on one socket.
//!
//! Sans-IO: the caller feeds datagrams, time (`Instant` plus Unix wall-clock
//! ms) and payloads in, and takes datagrams and events out. Every random
//! byte comes from a ChaCha20 CSPRNG seeded by [`Endpoint::new`], so the same
//! seed and the same inputs give byte-identical outputs.
//!
//! Costs: a transport packet (either direction) does one ordered-map lookup
//! by receiver index, one AEAD operation and one O(log n) update of the
//! per-peer deadline heap; it allocates nothing. [`Endpoint::poll_timeout`] is
//! O(1) (the heap's top); [`Endpoint::handle_timeout`] visits only the peers
//! whose deadline has passed. Reliable messages ([`Endpoint::send_reliable`])
//! keep one timer each in a per-peer heap whose top feeds the peer's
//! deadline; once the endpoint's buffer pool has grown they allocate nothing
//! either.

mod config;
mod noise;
mod peer;
mod reliable;
mod types;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use natrix_proto::table::Timers;
use natrix_proto::time::duration_to_millis;
use natrix_proto::{Instant, NodeId};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use snow::params::NoiseParams;
use tracing::{debug, trace};

use crate::cookie::{self, CookieSecret, IpLimiter, Mac, RateMeter};
use crate::demux::PacketType;
use crate::identity::{Keypair, PublicKey};
use crate::path::RelayRoute;
use crate::replay::ReplayWindow;
use crate::wire::{
    self, MAC_LEN, MAX_PACKET, MAX_PAYLOAD, MAX_RELIABLE_PAYLOAD, RELIABLE_HEADER_LEN, TAG_LEN,
    TRANSPORT_HEADER_LEN,
};

pub use config::{ConfigError, MAX_RELIABLE_WINDOW, SessionConfig};
pub use noise::{NOISE_PATTERN, NOISE_PROLOGUE};
pub use types::{
    DownReason, DropReason, HandshakeError, Received, SendError, SessionError, SessionEvent,
    SessionInfo, SessionStats,
};

use peer::{Handshake, Keys, Peer, Queued};
use reliable::{Arrival, Due, Reliable};

/// A datagram or session message waiting for [`Endpoint::poll_transmit`].
enum Outgoing {
    /// Bytes ready to go (handshake messages, cookie replies, flushed queue).
    Datagram { addr: SocketAddr, bytes: Vec<u8> },
    /// A channel-0 message, sealed when polled (no allocation).
    Control {
        slot: usize,
        key: PublicKey,
        msg: Control,
    },
    /// A (re)transmission of reliable message `seq`, sealed when polled from
    /// its pending buffer (skipped if acknowledged meanwhile).
    Reliable {
        slot: usize,
        key: PublicKey,
        seq: u64,
    },
    /// The acknowledgements waiting for this peer, sealed when polled.
    Ack { slot: usize, key: PublicKey },
}

#[derive(Clone, Copy)]
enum Control {
    Keepalive,
    Ping { wall: u64 },
    Pong { echo: u64, wall: u64 },
}

/// Many authenticated sessions (Noise IK) over one UDP socket, keyed by the
/// peer's public key. See the crate docs for the run loop.
pub struct Endpoint {
    keypair: Keypair,
    public: PublicKey,
    node: NodeId,
    config: SessionConfig,
    params: NoiseParams,
    rng: ChaCha20Rng,
    /// mac1 key of messages to us.
    mac1_key: [u8; 32],
    /// Key sealing the cookie replies we send.
    cookie_key: [u8; 32],
    cookie_secret: Option<CookieSecret>,
    meter: Option<RateMeter>,
    /// S5: validated handshakes under load, per source IP.
    per_ip: IpLimiter,
    peers: Vec<Option<Peer>>,
    free: Vec<usize>,
    by_key: BTreeMap<PublicKey, usize>,
    by_node: BTreeMap<NodeId, PublicKey>,
    by_index: BTreeMap<u32, usize>,
    /// (slot, local index) of half-open responder handshakes, oldest first
    /// (entries go stale when the handshake is confirmed or expires).
    half_open: VecDeque<(usize, u32)>,
    half_open_count: usize,
    /// Latest init timestamp accepted per initiator key (handshake-replay rule).
    init_ts: BTreeMap<PublicKey, u64>,
    init_ts_order: VecDeque<PublicKey>,
    last_ts_sent: u64,
    live: usize,
    /// Each peer slot's next deadline, ties by slot.
    timers: Timers<u32>,
    transmits: VecDeque<Outgoing>,
    events: VecDeque<SessionEvent>,
    /// Receive buffer: `Received::Data` borrows it.
    scratch: Box<[u8]>,
    /// Seal buffer (channel ‖ payload).
    plain: Box<[u8]>,
    /// Spare reliable-message buffers (at most `reliable::POOL_MAX`).
    pool: Vec<Vec<u8>>,
    stats: SessionStats,
    node_id_fn: fn(&PublicKey) -> NodeId,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("public", &self.public)
            .field("node", &self.node)
            .field("peers", &self.by_key.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn clamp_i64(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

/// How long an offset estimate stands against samples with a longer round
/// trip.
const OFFSET_SAMPLE_MAX_AGE: Duration = Duration::from_secs(60);

/// S5: source IPs whose handshake rate under load is tracked at once (a
/// new one beyond forgets the one tracked longest): about 200 KiB at most.
const TRACKED_IPS: usize = 4096;

/// Whether a clock sample over `rtt` taken at `now` should replace the
/// estimate taken from `current` = (its round trip, when).
fn better_sample(current: Option<(Duration, Instant)>, rtt: Duration, now: Instant) -> bool {
    current.is_none_or(|(best, at)| {
        rtt < best || now.saturating_duration_since(at) > OFFSET_SAMPLE_MAX_AGE
    })
}

/// NTP-style offset: the peer's reading `peer_wall` was taken about half a
/// round trip after our reading `our_wall`.
fn clock_offset(our_wall: u64, peer_wall: u64, rtt: Duration) -> i64 {
    let half = i128::from(duration_to_millis(rtt)) / 2;
    clamp_i64(i128::from(peer_wall) - (i128::from(our_wall) + half))
}

/// Seals `plain` with `keys` into `out` as a transport packet.
fn seal_into(keys: &mut Keys, plain: &[u8], out: &mut [u8]) -> Option<usize> {
    let total = TRANSPORT_HEADER_LEN + plain.len() + TAG_LEN;
    if out.len() < total || !keys.usable() {
        return None;
    }
    wire::put_header(out, PacketType::Transport);
    out[4..8].copy_from_slice(&keys.remote.to_be_bytes());
    out[8..16].copy_from_slice(&keys.send_counter.to_be_bytes());
    let n = keys
        .transport
        .write_message(
            keys.send_counter,
            plain,
            &mut out[TRANSPORT_HEADER_LEN..total],
        )
        .ok()?;
    debug_assert_eq!(n, plain.len() + TAG_LEN);
    keys.send_counter += 1;
    Some(total)
}

impl Endpoint {
    /// A new endpoint with identity `keypair`; every random choice (Noise
    /// ephemerals, indices, cookie secrets and nonces) derives from `seed`.
    ///
    /// # Panics
    /// When `config` fails [`SessionConfig::validate`].
    #[must_use]
    pub fn new(keypair: Keypair, config: SessionConfig, seed: [u8; 32]) -> Self {
        if let Err(e) = config.validate() {
            panic!("invalid SessionConfig: {e}");
        }
        let public = keypair.public();
        let per_ip = IpLimiter::new(config.handshakes_per_ip, TRACKED_IPS);
        Endpoint {
            node: public.node_id(),
            mac1_key: cookie::derive_key(cookie::MAC1_DOMAIN, &public),
            cookie_key: cookie::derive_key(cookie::COOKIE_DOMAIN, &public),
            public,
            keypair,
            config,
            params: noise::params(),
            rng: ChaCha20Rng::from_seed(seed),
            cookie_secret: None,
            meter: None,
            per_ip,
            peers: Vec::new(),
            free: Vec::new(),
            by_key: BTreeMap::new(),
            by_node: BTreeMap::new(),
            by_index: BTreeMap::new(),
            half_open: VecDeque::new(),
            half_open_count: 0,
            init_ts: BTreeMap::new(),
            init_ts_order: VecDeque::new(),
            last_ts_sent: 0,
            live: 0,
            timers: Timers::with_capacity(0),
            transmits: VecDeque::with_capacity(16),
            events: VecDeque::with_capacity(16),
            scratch: vec![0u8; MAX_PACKET].into_boxed_slice(),
            plain: vec![0u8; MAX_PAYLOAD + 1].into_boxed_slice(),
            pool: Vec::new(),
            stats: SessionStats::default(),
            node_id_fn: PublicKey::node_id,
        }
    }

    /// Our public key.
    #[must_use]
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// Our node id.
    #[must_use]
    pub fn node_id(&self) -> NodeId {
        self.node
    }

    /// The configuration in force.
    #[must_use]
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Testing only: replaces the key → node id derivation (so tests can
    /// build two keys with one node id, which the real hash makes infeasible).
    #[doc(hidden)]
    pub fn set_node_id_fn_for_testing(&mut self, f: fn(&PublicKey) -> NodeId) {
        self.node = f(&self.public);
        self.node_id_fn = f;
    }

    /// Dial `peer` at `addr` (IK initiator). Idempotent while a handshake or
    /// session to that key exists (a different `addr` for an existing peer
    /// does not move it: S6). Payloads `send` before the session is up are queued.
    ///
    /// # Errors
    /// [`SessionError::OwnKey`], [`SessionError::NodeIdTaken`] (S1: the key's
    /// node id is bound to another key), [`SessionError::TooManySessions`].
    pub fn connect(
        &mut self,
        now: Instant,
        wall_ms: u64,
        peer: PublicKey,
        addr: SocketAddr,
    ) -> Result<(), SessionError> {
        if peer == self.public {
            return Err(SessionError::OwnKey);
        }
        let node = (self.node_id_fn)(&peer);
        if let Some(bound) = self.by_node.get(&node) {
            if *bound != peer {
                self.stats.handshakes_refused += 1;
                debug!(%peer, node = ?node, %bound, "connect refused: node id bound to another key (S1)");
                return Err(SessionError::NodeIdTaken { bound: *bound });
            }
        }
        let slot = match self.by_key.get(&peer) {
            Some(&slot) => {
                let p = self.peer_mut(slot);
                if p.current.is_some() || p.handshake.is_some() {
                    return Ok(());
                }
                // Only a half-open handshake from the peer exists: dial where
                // the caller says (no session yet, so nothing moves: S6).
                p.addr = addr;
                slot
            }
            None => {
                if self.by_key.len() >= self.config.max_sessions {
                    return Err(SessionError::TooManySessions);
                }
                self.insert_peer(Peer::new(peer, node, addr, now))
            }
        };
        self.stats.handshakes_initiated += 1;
        debug!(%peer, %addr, "handshake start (connect)");
        self.send_init(slot, now, wall_ms, now);
        self.reschedule(slot);
        Ok(())
    }

    /// Ends the session (or handshake) with `peer` at once, without telling
    /// the peer; an established session reports `Down { reason: Closed }`.
    pub fn close(&mut self, now: Instant, peer: &PublicKey) {
        let _ = now;
        if let Some(&slot) = self.by_key.get(peer) {
            if self.peer(slot).up {
                self.down(slot, DownReason::Closed);
            } else {
                self.remove_peer(slot);
            }
        }
    }

    /// One datagram that [`crate::demux::classify`] said is `Session(_)`, from `from`.
    /// Any bytes are safe here: whatever is not a valid, authenticated,
    /// fresh packet is `Dropped` (and counted) without any state change.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        wall_ms: u64,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Received<'_> {
        let Some(kind) = wire::header(datagram) else {
            return self.drop_malformed();
        };
        let outcome = match kind {
            PacketType::HandshakeInit => self.on_init(now, wall_ms, from, datagram),
            PacketType::HandshakeResponse => self.on_response(now, wall_ms, from, datagram),
            PacketType::CookieReply => self.on_cookie(now, datagram),
            PacketType::Transport => self.on_transport(now, wall_ms, from, datagram),
        };
        match outcome {
            Outcome::Data {
                slot,
                channel,
                start,
                end,
            } => {
                let p = self.peers[slot].as_ref().expect("slot just used");
                Received::Data {
                    peer: p.key,
                    node: p.node,
                    from,
                    channel,
                    payload: &self.scratch[start..end],
                }
            }
            Outcome::Consumed => Received::Consumed,
            Outcome::Dropped(r) => Received::Dropped(r),
        }
    }

    /// Seal `payload` on `channel` (1..=255) for `peer` into `out` (at least
    /// [`MAX_PACKET`] bytes is always enough). `Ok(Some((addr, len)))`: send
    /// `out[..len]` to `addr` now; `Ok(None)`: queued until the handshake
    /// completes (bounded by `queue_len`; the oldest is dropped and counted).
    ///
    /// # Errors
    /// [`SendError::NoSession`] when there is neither a session nor a
    /// handshake to that key; [`SendError::ReservedChannel`],
    /// [`SendError::PayloadTooLarge`], [`SendError::BufferTooSmall`].
    pub fn send(
        &mut self,
        now: Instant,
        peer: &PublicKey,
        channel: u8,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<Option<(SocketAddr, usize)>, SendError> {
        self.seal_for(now, peer, None, channel, payload, out)
    }

    /// Like [`send`](Self::send), but the packet goes to `addr` whatever the
    /// session's address is (which does not change): a path ping to test a
    /// direct path while the session still uses the relay, or the answer to
    /// a ping on the path it came by. Nothing is queued: without usable keys
    /// this is [`SendError::NoSession`].
    ///
    /// # Errors
    /// As [`send`](Self::send), and [`SendError::NoSession`] while no
    /// session is up.
    pub fn send_to(
        &mut self,
        now: Instant,
        peer: &PublicKey,
        addr: SocketAddr,
        channel: u8,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<(SocketAddr, usize), SendError> {
        match self.seal_for(now, peer, Some(addr), channel, payload, out)? {
            Some(sent) => Ok(sent),
            None => Err(SendError::NoSession),
        }
    }

    /// Moves the session with `peer` to `addr`: everything it sends from now
    /// on goes there. This is how a connection switches between a relay
    /// route and a direct path (`crate::path`); the session itself only
    /// follows authenticated packets within one kind of path (S6). Returns
    /// whether a session or handshake with `peer` exists.
    pub fn set_addr(&mut self, peer: &PublicKey, addr: SocketAddr) -> bool {
        let Some(&slot) = self.by_key.get(peer) else {
            return false;
        };
        let p = self.peers[slot].as_mut().expect("indexed slot");
        if p.addr != addr {
            debug!(peer = %p.key, old = %p.addr, new = %addr, "session address set");
            p.addr = addr;
        }
        true
    }

    fn seal_for(
        &mut self,
        now: Instant,
        peer: &PublicKey,
        to: Option<SocketAddr>,
        channel: u8,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<Option<(SocketAddr, usize)>, SendError> {
        if channel == 0 {
            return Err(SendError::ReservedChannel);
        }
        if payload.len() > MAX_PAYLOAD {
            return Err(SendError::PayloadTooLarge {
                len: payload.len(),
                max: MAX_PAYLOAD,
            });
        }
        let need = TRANSPORT_HEADER_LEN + 1 + payload.len() + TAG_LEN;
        if out.len() < need {
            return Err(SendError::BufferTooSmall {
                len: out.len(),
                need,
            });
        }
        let Some(&slot) = self.by_key.get(peer) else {
            return Err(SendError::NoSession);
        };
        let rekey_packets = self.config.rekey_after_packets;
        let p = self.peers[slot].as_mut().expect("indexed slot");
        if let Some(keys) = p.current.as_mut().filter(|k| k.usable()) {
            self.plain[0] = channel;
            self.plain[1..=payload.len()].copy_from_slice(payload);
            let Some(n) = seal_into(keys, &self.plain[..=payload.len()], out) else {
                return Err(SendError::BufferTooSmall {
                    len: out.len(),
                    need,
                });
            };
            if keys.send_counter >= rekey_packets && p.rekey_at > now {
                p.rekey_at = now;
            }
            p.last_sent = now;
            let addr = to.unwrap_or(p.addr);
            self.stats.packets_sealed += 1;
            self.reschedule(slot);
            return Ok(Some((addr, n)));
        }
        if to.is_some() || (p.handshake.is_none() && p.next.is_none() && p.current.is_none()) {
            return Err(SendError::NoSession);
        }
        if p.queue.len() >= self.config.queue_len {
            p.queue.pop_front();
            self.stats.queued_dropped += 1;
        }
        p.queue.push_back(Queued {
            channel,
            payload: payload.to_vec(),
        });
        if p.current.is_some() && p.handshake.is_none() {
            // Keys worn out: rekey now.
            p.rekey_at = now;
            self.reschedule(slot);
        }
        Ok(None)
    }

    /// Queue `payload` for reliable delivery on `channel` (1..=255) to
    /// `peer`: it is sent through [`poll_transmit`](Self::poll_transmit) —
    /// at once when the session is up, else as soon as the handshake in
    /// progress completes — and retransmitted until the peer acknowledges it
    /// (retransmission timeout `max(2 × RTT, 100 ms)`, 500 ms while no round
    /// trip is known, doubling up to 1 s) or until
    /// [`SessionConfig::reliable_timeout`] has passed since its first
    /// transmission (then it is counted in `reliable_expired`). The peer
    /// receives it as an ordinary [`Received::Data`] on `channel`, at most
    /// once; messages may arrive in any order. Everything unacknowledged is
    /// discarded (counted in `reliable_dropped`) when the session or its
    /// handshake ends.
    ///
    /// # Errors
    /// [`SendError::NoSession`] when there is neither a session nor a
    /// handshake to that key; [`SendError::ReservedChannel`];
    /// [`SendError::PayloadTooLarge`] beyond [`MAX_RELIABLE_PAYLOAD`];
    /// [`SendError::ReliableWindowFull`] when
    /// [`SessionConfig::reliable_window`] messages to that peer are
    /// unacknowledged (nothing is queued then).
    pub fn send_reliable(
        &mut self,
        now: Instant,
        peer: &PublicKey,
        channel: u8,
        payload: &[u8],
    ) -> Result<(), SendError> {
        if channel == 0 {
            return Err(SendError::ReservedChannel);
        }
        if payload.len() > MAX_RELIABLE_PAYLOAD {
            return Err(SendError::PayloadTooLarge {
                len: payload.len(),
                max: MAX_RELIABLE_PAYLOAD,
            });
        }
        let Some(&slot) = self.by_key.get(peer) else {
            return Err(SendError::NoSession);
        };
        let window = self.config.reliable_window;
        let timeout = self.config.reliable_timeout;
        let p = self.peers[slot].as_mut().expect("indexed slot");
        if p.is_empty() {
            return Err(SendError::NoSession);
        }
        let rel = p.rel.get_or_insert_with(|| Box::new(Reliable::new()));
        if !rel.has_room(window) {
            return Err(SendError::ReliableWindowFull {
                pending: rel.in_flight(),
                max: window,
            });
        }
        while rel.stream == 0 {
            rel.stream = self.rng.next_u32();
        }
        // A pooled buffer (grown only when too small), else one of exactly
        // the payload's size: small control messages hold little memory.
        let mut buf = self
            .pool
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(payload.len()));
        buf.clear();
        buf.extend_from_slice(payload);
        rel.push(channel, buf, now);
        self.stats.reliable_sent += 1;
        if p.current.as_ref().is_some_and(Keys::usable) {
            let rto = rel.rto(p.rtt);
            let key = p.key;
            let transmits = &mut self.transmits;
            rel.start_unsent(now, rto, timeout, |seq| {
                transmits.push_back(Outgoing::Reliable { slot, key, seq });
            });
            p.last_sent = now;
        } else if p.current.is_some() && p.handshake.is_none() {
            // Keys worn out: rekey now (the message goes with the new keys).
            p.rekey_at = now;
        }
        self.reschedule(slot);
        Ok(())
    }

    /// Runs every timer that is due at `now`: handshake retries and give-up,
    /// keep-alives, dead-session detection, rekeys, expiry of half-open
    /// handshakes and of previous keys, retransmission and expiry of
    /// reliable messages.
    pub fn handle_timeout(&mut self, now: Instant, wall_ms: u64) {
        // Every visit either removes the peer's due timer or moves it past
        // `now`; the guard only protects against a logic error looping forever.
        let mut guard = 4 * self.peers.len() + 16;
        while let Some((t, _, slot)) = self.timers.peek() {
            if t > now || guard == 0 {
                break;
            }
            guard -= 1;
            self.peer_timers(slot as usize, now, wall_ms);
        }
    }

    /// The earliest instant at which [`Endpoint::handle_timeout`] has work
    /// (exact: the top of a per-peer deadline heap); `None` when idle.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|(t, _, _)| t)
    }

    /// The next datagram to send (handshakes, cookie replies, keep-alives,
    /// clock pings/pongs, payloads queued during a handshake, reliable
    /// messages and their retransmissions, acknowledgements), written into
    /// `out` (give it at least [`MAX_PACKET`] bytes).
    pub fn poll_transmit(&mut self, out: &mut [u8]) -> Option<(SocketAddr, usize)> {
        while let Some(o) = self.transmits.pop_front() {
            match o {
                Outgoing::Datagram { addr, bytes } => {
                    if out.len() < bytes.len() {
                        debug!(
                            len = bytes.len(),
                            out = out.len(),
                            "poll_transmit buffer too small; datagram dropped"
                        );
                        continue;
                    }
                    out[..bytes.len()].copy_from_slice(&bytes);
                    return Some((addr, bytes.len()));
                }
                Outgoing::Control { slot, key, msg } => {
                    let Some(p) = self.peers.get_mut(slot).and_then(Option::as_mut) else {
                        continue;
                    };
                    if p.key != key {
                        continue;
                    }
                    let addr = p.addr;
                    let Some(keys) = p.current.as_mut() else {
                        continue;
                    };
                    let plain = &mut self.plain;
                    plain[0] = 0;
                    let n = match msg {
                        Control::Keepalive => {
                            plain[1] = wire::control::KEEPALIVE;
                            2
                        }
                        Control::Ping { wall } => {
                            plain[1] = wire::control::PING;
                            plain[2..10].copy_from_slice(&wall.to_be_bytes());
                            10
                        }
                        Control::Pong { echo, wall } => {
                            plain[1] = wire::control::PONG;
                            plain[2..10].copy_from_slice(&echo.to_be_bytes());
                            plain[10..18].copy_from_slice(&wall.to_be_bytes());
                            18
                        }
                    };
                    if let Some(len) = seal_into(keys, &plain[..n], out) {
                        self.stats.packets_sealed += 1;
                        return Some((addr, len));
                    }
                }
                Outgoing::Reliable { slot, key, seq } => {
                    let Some(p) = self.peers.get_mut(slot).and_then(Option::as_mut) else {
                        continue;
                    };
                    if p.key != key {
                        continue;
                    }
                    let (Some(keys), Some(rel)) = (p.current.as_mut(), p.rel.as_ref()) else {
                        continue;
                    };
                    let Some(m) = rel.get(seq) else {
                        // Acknowledged (or expired) while queued.
                        continue;
                    };
                    use wire::reliable as r;
                    let plain = &mut self.plain;
                    plain[0] = 0;
                    plain[1] = wire::control::RELIABLE;
                    plain[1 + r::STREAM..1 + r::ID].copy_from_slice(&rel.stream.to_be_bytes());
                    plain[1 + r::ID..1 + r::CHANNEL].copy_from_slice(&m.id().to_be_bytes());
                    plain[1 + r::CHANNEL] = m.channel;
                    let n = 1 + RELIABLE_HEADER_LEN + m.payload.len();
                    plain[1 + r::PAYLOAD..n].copy_from_slice(&m.payload);
                    if let Some(len) = seal_into(keys, &plain[..n], out) {
                        self.stats.packets_sealed += 1;
                        return Some((p.addr, len));
                    }
                }
                Outgoing::Ack { slot, key } => {
                    let Some(p) = self.peers.get_mut(slot).and_then(Option::as_mut) else {
                        continue;
                    };
                    if p.key != key {
                        continue;
                    }
                    let Some(rel) = p.rel.as_mut() else {
                        continue;
                    };
                    let Some(keys) = p.current.as_mut() else {
                        rel.clear_acks();
                        continue;
                    };
                    let plain = &mut self.plain;
                    plain[0] = 0;
                    plain[1] = wire::control::ACK;
                    let Some(body) = rel.take_acks(&mut plain[1 + wire::reliable::STREAM..]) else {
                        rel.ack_queued = false;
                        continue;
                    };
                    if rel.acks_waiting() {
                        self.transmits.push_back(Outgoing::Ack { slot, key });
                    } else {
                        rel.ack_queued = false;
                    }
                    let n = 2 + body;
                    if let Some(len) = seal_into(keys, &plain[..n], out) {
                        self.stats.packets_sealed += 1;
                        return Some((p.addr, len));
                    }
                }
            }
        }
        None
    }

    /// The next session event.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// The established session with `peer`, if any.
    #[must_use]
    pub fn session(&self, peer: &PublicKey) -> Option<SessionInfo> {
        let p = self.peer(*self.by_key.get(peer)?);
        let keys = p.current.as_ref()?;
        if !p.up {
            return None;
        }
        Some(SessionInfo {
            node: p.node,
            addr: p.addr,
            rtt: p.rtt,
            clock_offset_ms: p.clock_offset_ms,
            since: p.up_since,
            initiator: keys.initiator,
            rekeys: p.rekeys,
        })
    }

    /// The key bound to node id `id` (a session, or a handshake in progress).
    #[must_use]
    pub fn peer_by_node_id(&self, id: NodeId) -> Option<PublicKey> {
        self.by_node.get(&id).copied()
    }

    /// The peers with an established session.
    pub fn peers(&self) -> impl Iterator<Item = PublicKey> + '_ {
        self.by_key
            .iter()
            .filter(|&(_, &slot)| self.peer(slot).up && self.peer(slot).current.is_some())
            .map(|(k, _)| *k)
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> SessionStats {
        SessionStats {
            sessions_live: self.live as u64,
            ..self.stats
        }
    }
}

/// The internal result of handling one datagram.
enum Outcome {
    /// A payload for `channel` is in `scratch[start..end]`.
    Data {
        slot: usize,
        channel: u8,
        start: usize,
        end: usize,
    },
    Consumed,
    Dropped(DropReason),
}

impl Endpoint {
    fn peer(&self, slot: usize) -> &Peer {
        self.peers[slot]
            .as_ref()
            .expect("indexed slot holds a peer")
    }

    fn peer_mut(&mut self, slot: usize) -> &mut Peer {
        self.peers[slot]
            .as_mut()
            .expect("indexed slot holds a peer")
    }

    fn random32(&mut self) -> [u8; 32] {
        let mut b = [0u8; 32];
        self.rng.fill_bytes(&mut b);
        b
    }

    /// A fresh, nonzero, unused local index, registered for `slot`.
    fn fresh_index(&mut self, slot: usize) -> u32 {
        loop {
            let i = self.rng.next_u32();
            if i != 0 && !self.by_index.contains_key(&i) {
                self.by_index.insert(i, slot);
                return i;
            }
        }
    }

    fn insert_peer(&mut self, peer: Peer) -> usize {
        let key = peer.key;
        let node = peer.node;
        let slot = if let Some(s) = self.free.pop() {
            self.peers[s] = Some(peer);
            s
        } else {
            self.peers.push(Some(peer));
            self.peers.len() - 1
        };
        self.by_key.insert(key, slot);
        self.by_node.insert(node, key);
        slot
    }

    fn remove_peer(&mut self, slot: usize) {
        let Some(p) = self.peers[slot].take() else {
            return;
        };
        for i in [
            p.handshake.as_ref().map(|h| h.local),
            p.next.as_ref().map(|k| k.local),
            p.current.as_ref().map(|k| k.local),
            p.previous.as_ref().map(|k| k.local),
        ]
        .into_iter()
        .flatten()
        {
            self.by_index.remove(&i);
        }
        if p.next.is_some() {
            self.half_open_count -= 1;
        }
        if p.up && p.current.is_some() {
            self.live -= 1;
        }
        self.stats.queued_dropped += p.queue.len() as u64;
        if let Some(mut rel) = p.rel {
            self.stats.reliable_dropped += rel.clear_pending(|b| recycle(&mut self.pool, b));
        }
        self.by_key.remove(&p.key);
        if self.by_node.get(&p.node) == Some(&p.key) {
            self.by_node.remove(&p.node);
        }
        self.timers.remove(slot_id(slot));
        self.free.push(slot);
    }

    fn down(&mut self, slot: usize, reason: DownReason) {
        let p = self.peer(slot);
        debug!(peer = %p.key, addr = %p.addr, ?reason, "session down");
        self.events.push_back(SessionEvent::Down {
            peer: p.key,
            node: p.node,
            reason,
        });
        self.remove_peer(slot);
    }

    fn reschedule(&mut self, slot: usize) {
        let d = self.peers[slot]
            .as_ref()
            .and_then(|p| p.deadline(&self.config));
        let id = slot_id(slot);
        match d {
            Some(d) => self.timers.set(id, d, id),
            None => self.timers.remove(id),
        }
    }

    fn drop_malformed(&mut self) -> Received<'static> {
        self.stats.malformed += 1;
        Received::Dropped(DropReason::Malformed)
    }

    fn cookie_secret(&mut self, now: Instant) -> &CookieSecret {
        match &self.cookie_secret {
            None => {
                let s = self.random32();
                self.cookie_secret = Some(CookieSecret::new(s, now));
            }
            Some(s) if s.due(now) => {
                let fresh = self.random32();
                if let Some(s) = self.cookie_secret.as_mut() {
                    s.rotate(fresh, now);
                }
            }
            Some(_) => {}
        }
        self.cookie_secret.as_ref().expect("just set")
    }

    /// Builds and queues a handshake init for `slot` (a first attempt or a
    /// retry; `started` is the first attempt's time).
    fn send_init(&mut self, slot: usize, now: Instant, wall_ms: u64, started: Instant) {
        let seed = self.random32();
        let local = self.fresh_index(slot);
        let ts = wall_ms.max(self.last_ts_sent.saturating_add(1));
        self.last_ts_sent = ts;
        let cookie_life = cookie::COOKIE_SECRET_LIFETIME;
        let retry = self.config.handshake_retry;
        let params = &self.params;
        let secret = self.keypair.secret_bytes();
        let p = self.peers[slot].as_mut().expect("indexed slot");
        let interval = match &p.handshake {
            Some(h) if h.started == started => h.interval.saturating_mul(2),
            _ => retry,
        };
        if let Some(old) = p.handshake.take() {
            self.by_index.remove(&old.local);
        }
        let state = noise::builder(params, seed)
            .local_private_key(secret)
            .and_then(|b| b.remote_public_key(p.key.as_bytes()))
            .and_then(|b| b.prologue(NOISE_PROLOGUE))
            .and_then(snow::Builder::build_initiator)
            .expect("snow accepts 32-byte X25519 keys");
        let mut state = Box::new(state);
        let mut init = [0u8; wire::INIT_LEN];
        wire::put_header(&mut init, PacketType::HandshakeInit);
        init[wire::init::SENDER..wire::init::SENDER + 4].copy_from_slice(&local.to_be_bytes());
        let n = state
            .write_message(
                &ts.to_be_bytes(),
                &mut init[wire::init::NOISE..wire::init::MAC1],
            )
            .expect("IK message 1 fits its 104 bytes");
        debug_assert_eq!(n, wire::NOISE_MSG1_LEN);
        let mac1 = cookie::keyed_mac(&p.mac1_key, &[&init[..wire::init::MAC1]]);
        init[wire::init::MAC1..wire::init::MAC2].copy_from_slice(&mac1);
        if let Some((c, at)) = p.cookie {
            if now.saturating_duration_since(at) < cookie_life {
                let mac2 = cookie::keyed_mac(&c, &[&init[..wire::init::MAC2]]);
                init[wire::init::MAC2..].copy_from_slice(&mac2);
            } else {
                p.cookie = None;
            }
        }
        p.handshake = Some(Handshake {
            state,
            local,
            started,
            sent_at: now,
            next_retry: now + interval,
            interval,
            init,
            ts,
            cookie_used: false,
        });
        trace!(peer = %p.key, addr = %p.addr, index = local, "handshake init queued");
        self.transmits.push_back(Outgoing::Datagram {
            addr: p.addr,
            bytes: init.to_vec(),
        });
    }

    fn on_init(&mut self, now: Instant, wall_ms: u64, from: SocketAddr, d: &[u8]) -> Outcome {
        use wire::init::{MAC1, MAC2, NOISE, SENDER};
        if d.len() != wire::INIT_LEN {
            self.stats.malformed += 1;
            return Outcome::Dropped(DropReason::Malformed);
        }
        if !cookie::mac_eq(
            &cookie::keyed_mac(&self.mac1_key, &[&d[..MAC1]]),
            &d[MAC1..MAC2],
        ) {
            self.stats.mac1_failures += 1;
            return Outcome::Dropped(DropReason::Mac1);
        }
        // S5: under load, demand a cookie before doing any DH work.
        let mac2_ok = d[MAC2..] != [0u8; MAC_LEN]
            && self
                .cookie_secret(now)
                .check_mac2(from, &d[..MAC2], &d[MAC2..]);
        let meter = self
            .meter
            .get_or_insert_with(|| RateMeter::new(self.config.cookie_threshold, now));
        let under_load =
            self.half_open_count >= self.config.max_half_open || !meter.has_credit(now);
        if under_load && !mac2_ok {
            self.send_cookie_reply(now, from, d);
            return Outcome::Consumed;
        }
        // S5: a valid cookie proves the address, not a fair rate: under
        // load each source IP gets its own budget of DH work.
        if under_load && !self.per_ip.allow(now, from.ip()) {
            self.stats.handshakes_rate_limited += 1;
            trace!(%from, "handshake init over its source IP's rate under load (S5)");
            return Outcome::Dropped(DropReason::RateLimited);
        }
        meter.charge(now);

        let seed = self.random32();
        let mut state = noise::builder(&self.params, seed)
            .local_private_key(self.keypair.secret_bytes())
            .and_then(|b| b.prologue(NOISE_PROLOGUE))
            .and_then(snow::Builder::build_responder)
            .expect("snow accepts a 32-byte X25519 key");
        let mut payload = [0u8; 64];
        let n = match state.read_message(&d[NOISE..MAC1], &mut payload) {
            Ok(n) => n,
            Err(e) => {
                trace!(%from, error = %e, "handshake init does not decrypt");
                self.stats.decrypt_failures += 1;
                return Outcome::Dropped(DropReason::Decrypt);
            }
        };
        if n != 8 {
            self.stats.malformed += 1;
            return Outcome::Dropped(DropReason::Malformed);
        }
        let ts = wire::get_u64(&payload, 0);
        let Some(rs) = state
            .get_remote_static()
            .and_then(|s| <[u8; 32]>::try_from(s).ok())
        else {
            self.stats.malformed += 1;
            return Outcome::Dropped(DropReason::Malformed);
        };
        let key = PublicKey::from_bytes(rs);
        if key == self.public {
            self.stats.handshakes_refused += 1;
            return Outcome::Dropped(DropReason::OwnKey);
        }
        // S1: a node id belongs to one key.
        let node = (self.node_id_fn)(&key);
        if let Some(&bound) = self.by_node.get(&node) {
            if bound != key {
                self.stats.handshakes_refused += 1;
                debug!(peer = %key, %from, %bound, node = ?node, "handshake refused: node id bound to another key (S1)");
                self.events.push_back(SessionEvent::HandshakeFailed {
                    peer: key,
                    addr: from,
                    error: HandshakeError::NodeIdTaken { bound },
                });
                return Outcome::Dropped(DropReason::NodeIdTaken);
            }
        }
        // Handshake-replay rule: timestamps from one key strictly increase.
        if self.init_ts.get(&key).is_some_and(|&last| ts <= last) {
            self.stats.replays_dropped += 1;
            trace!(peer = %key, %from, ts, "stale handshake init (replay)");
            return Outcome::Dropped(DropReason::StaleHandshake);
        }
        let existing = self.by_key.get(&key).copied();
        if existing.is_none() && self.by_key.len() >= self.config.max_sessions {
            self.stats.handshakes_refused += 1;
            return Outcome::Dropped(DropReason::TooManySessions);
        }
        self.remember_ts(key, ts);
        let slot = match existing {
            Some(slot) => {
                // Both sides initiating at once: the larger key's handshake
                // wins -- unless theirs comes from somewhere other than where
                // ours went (ours may be going nowhere), then theirs is answered.
                if self.peer(slot).handshake.is_some() {
                    if self.public > key && self.peer(slot).addr == from {
                        debug!(peer = %key, "simultaneous handshakes: keeping ours");
                        return Outcome::Consumed;
                    }
                    debug!(peer = %key, "simultaneous handshakes: answering theirs");
                    if let Some(h) = self.peer_mut(slot).handshake.take() {
                        self.by_index.remove(&h.local);
                    }
                }
                slot
            }
            None => self.insert_peer(Peer::new(key, node, from, now)),
        };
        if self.peer(slot).next.is_none() && self.half_open_count >= self.config.max_half_open {
            self.evict_half_open();
        }
        let local = self.fresh_index(slot);
        let mut resp = [0u8; wire::RESPONSE_LEN];
        {
            use wire::response as r;
            wire::put_header(&mut resp, PacketType::HandshakeResponse);
            resp[r::SENDER..r::SENDER + 4].copy_from_slice(&local.to_be_bytes());
            resp[r::RECEIVER..r::RECEIVER + 4].copy_from_slice(&d[SENDER..SENDER + 4]);
            let mut body = [0u8; 16];
            body[..8].copy_from_slice(&ts.to_be_bytes());
            body[8..].copy_from_slice(&wall_ms.to_be_bytes());
            let n = state
                .write_message(&body, &mut resp[r::NOISE..r::MAC1])
                .expect("IK message 2 fits its 64 bytes");
            debug_assert_eq!(n, wire::NOISE_MSG2_LEN);
            let mac1 = cookie::keyed_mac(&self.peer(slot).mac1_key, &[&resp[..r::MAC1]]);
            resp[r::MAC1..r::MAC2].copy_from_slice(&mac1);
        }
        let transport = state
            .into_stateless_transport_mode()
            .expect("IK is finished after message 2");
        let keys = Keys {
            transport,
            local,
            remote: wire::get_u32(d, SENDER),
            send_counter: 0,
            replay: ReplayWindow::new(),
            created: now,
            initiator: false,
            confirmed: false,
        };
        let p = self.peers[slot].as_mut().expect("indexed slot");
        match p.next.replace(keys) {
            Some(old) => {
                self.by_index.remove(&old.local);
            }
            None => self.half_open_count += 1,
        }
        self.half_open.push_back((slot, local));
        if self.half_open.len() > 2 * self.config.max_half_open + 16 {
            let peers = &self.peers;
            self.half_open.retain(|&(s, i)| {
                peers[s]
                    .as_ref()
                    .and_then(|p| p.next.as_ref())
                    .is_some_and(|k| k.local == i)
            });
        }
        self.stats.handshakes_accepted += 1;
        debug!(peer = %key, %from, index = local, "handshake init accepted; response sent");
        self.transmits.push_back(Outcome::datagram(from, &resp));
        self.reschedule(slot);
        Outcome::Consumed
    }

    fn remember_ts(&mut self, key: PublicKey, ts: u64) {
        if self.init_ts.insert(key, ts).is_none() {
            self.init_ts_order.push_back(key);
            // Bounded memory: forget the oldest keys that have no peer state.
            let cap = 2 * self.config.max_sessions;
            while self.init_ts_order.len() > cap {
                let Some(old) = self.init_ts_order.pop_front() else {
                    break;
                };
                if self.by_key.contains_key(&old) {
                    self.init_ts_order.push_back(old);
                    if self.by_key.len() >= cap {
                        break;
                    }
                } else {
                    self.init_ts.remove(&old);
                }
            }
        }
    }

    fn evict_half_open(&mut self) {
        while let Some((slot, index)) = self.half_open.pop_front() {
            let valid = self.peers[slot]
                .as_ref()
                .and_then(|p| p.next.as_ref())
                .is_some_and(|k| k.local == index);
            if !valid {
                continue;
            }
            let p = self.peer_mut(slot);
            debug!(peer = %p.key, "half-open handshake evicted (max_half_open)");
            p.next = None;
            self.by_index.remove(&index);
            self.half_open_count -= 1;
            if self.peer(slot).is_empty() {
                self.remove_peer(slot);
            } else {
                self.reschedule(slot);
            }
            return;
        }
    }

    fn send_cookie_reply(&mut self, now: Instant, from: SocketAddr, init: &[u8]) {
        use wire::cookie_reply as c;
        let cookie = self.cookie_secret(now).cookie(from);
        let mut nonce = [0u8; 24];
        self.rng.fill_bytes(&mut nonce);
        let mut reply = [0u8; wire::COOKIE_REPLY_LEN];
        wire::put_header(&mut reply, PacketType::CookieReply);
        reply[c::RECEIVER..c::RECEIVER + 4]
            .copy_from_slice(&init[wire::init::SENDER..wire::init::SENDER + 4]);
        reply[c::NONCE..c::SEALED].copy_from_slice(&nonce);
        cookie::seal_cookie(
            &self.cookie_key,
            &nonce,
            &init[wire::init::MAC1..wire::init::MAC2],
            &cookie,
            &mut reply[c::SEALED..],
        );
        self.stats.cookies_sent += 1;
        debug!(%from, "under load: cookie reply sent instead of a handshake (S5)");
        self.transmits.push_back(Outcome::datagram(from, &reply));
    }

    /// The handshake of ours that `index` names: (slot).
    fn pending_handshake(&self, index: u32) -> Option<usize> {
        let &slot = self.by_index.get(&index)?;
        let p = self.peers[slot].as_ref()?;
        p.handshake
            .as_ref()
            .filter(|h| h.local == index)
            .map(|_| slot)
    }

    fn on_response(&mut self, now: Instant, wall_ms: u64, from: SocketAddr, d: &[u8]) -> Outcome {
        use wire::response as r;
        if d.len() != wire::RESPONSE_LEN {
            self.stats.malformed += 1;
            return Outcome::Dropped(DropReason::Malformed);
        }
        let Some(slot) = self.pending_handshake(wire::get_u32(d, r::RECEIVER)) else {
            self.stats.unknown_index += 1;
            return Outcome::Dropped(DropReason::UnknownIndex);
        };
        if !cookie::mac_eq(
            &cookie::keyed_mac(&self.mac1_key, &[&d[..r::MAC1]]),
            &d[r::MAC1..r::MAC2],
        ) {
            self.stats.mac1_failures += 1;
            return Outcome::Dropped(DropReason::Mac1);
        }
        let p = self.peers[slot].as_mut().expect("indexed slot");
        let hs = p.handshake.as_mut().expect("pending handshake");
        let mut payload = [0u8; 64];
        // snow restores its state when read_message fails: a forged response
        // leaves the handshake untouched.
        let n = match hs.state.read_message(&d[r::NOISE..r::MAC1], &mut payload) {
            Ok(n) => n,
            Err(e) => {
                trace!(peer = %p.key, %from, error = %e, "handshake response does not decrypt");
                self.stats.decrypt_failures += 1;
                return Outcome::Dropped(DropReason::Decrypt);
            }
        };
        let hs = p.handshake.take().expect("pending handshake");
        let Ok(transport) = hs.state.into_stateless_transport_mode() else {
            self.stats.malformed += 1;
            self.by_index.remove(&hs.local);
            self.reschedule(slot);
            return Outcome::Dropped(DropReason::Malformed);
        };
        let keys = Keys {
            transport,
            local: hs.local,
            remote: wire::get_u32(d, r::SENDER),
            send_counter: 0,
            replay: ReplayWindow::new(),
            created: now,
            initiator: true,
            confirmed: false,
        };
        let rtt = now.saturating_duration_since(hs.sent_at);
        p.rtt = Some(rtt);
        p.last_received = now;
        let offset = (n == 16 && wire::get_u64(&payload, 0) == hs.ts)
            .then(|| clock_offset(hs.ts, wire::get_u64(&payload, 8), rtt));
        self.install_current(slot, keys, now);
        let p = self.peer_mut(slot);
        let (key, node, addr) = (p.key, p.node, p.addr);
        if let Some(offset_ms) = offset {
            p.clock_offset_ms = Some(offset_ms);
            p.offset_sample = Some((rtt, now));
            self.events.push_back(SessionEvent::ClockOffset {
                peer: key,
                node,
                offset_ms,
                rtt,
            });
        }
        // Confirm the keys to the responder (it switches on our first
        // packet) with a clock ping: the handshake's sample includes the
        // responder's Diffie-Hellman time, a ping's does not.
        self.flush_queue(slot, now);
        self.peer_mut(slot).ping = Some((wall_ms, now));
        self.queue_control(slot, now, Control::Ping { wall: wall_ms });
        debug!(peer = %key, %addr, ?rtt, clock_offset_ms = ?offset, "handshake complete (initiator)");
        self.reschedule(slot);
        Outcome::Consumed
    }

    /// Makes `keys` the current keys of `slot` (the old current become
    /// previous) and reports `Up` the first time.
    fn install_current(&mut self, slot: usize, keys: Keys, now: Instant) {
        let config = &self.config;
        let p = self.peers[slot].as_mut().expect("indexed slot");
        p.rekey_at = Peer::rekey_time(config, keys.created, keys.initiator);
        let initiator = keys.initiator;
        if let Some(old_prev) = p.previous.take() {
            self.by_index.remove(&old_prev.local);
        }
        p.previous = p.current.replace(keys);
        if p.up {
            p.rekeys += 1;
            self.stats.rekeys += 1;
            debug!(peer = %p.key, initiator, "rekey complete (S7)");
        } else {
            p.up = true;
            p.up_since = now;
            p.last_sent = now;
            self.live += 1;
            let rtt = if initiator { p.rtt } else { None };
            self.events.push_back(SessionEvent::Up {
                peer: p.key,
                node: p.node,
                addr: p.addr,
                rtt,
                initiator,
            });
        }
    }

    fn queue_control(&mut self, slot: usize, now: Instant, msg: Control) {
        let p = self.peer_mut(slot);
        p.last_sent = now;
        let key = p.key;
        self.transmits
            .push_back(Outgoing::Control { slot, key, msg });
    }

    /// Seals every queued payload of `slot` with its current keys.
    fn flush_queue(&mut self, slot: usize, now: Instant) {
        let p = self.peers[slot].as_mut().expect("indexed slot");
        let Some(keys) = p.current.as_mut() else {
            return;
        };
        let mut sealed = 0u64;
        while let Some(q) = p.queue.pop_front() {
            self.plain[0] = q.channel;
            self.plain[1..=q.payload.len()].copy_from_slice(&q.payload);
            let mut bytes = vec![0u8; TRANSPORT_HEADER_LEN + 1 + q.payload.len() + TAG_LEN];
            if let Some(n) = seal_into(keys, &self.plain[..=q.payload.len()], &mut bytes) {
                bytes.truncate(n);
                sealed += 1;
                self.transmits.push_back(Outgoing::Datagram {
                    addr: p.addr,
                    bytes,
                });
            } else {
                self.stats.queued_dropped += 1;
            }
        }
        if sealed > 0 {
            p.last_sent = now;
            self.stats.packets_sealed += sealed;
        }
        if let Some(rel) = p.rel.as_mut().filter(|r| r.unsent() > 0) {
            let rto = rel.rto(p.rtt);
            let (key, timeout) = (p.key, self.config.reliable_timeout);
            let transmits = &mut self.transmits;
            rel.start_unsent(now, rto, timeout, |seq| {
                transmits.push_back(Outgoing::Reliable { slot, key, seq });
            });
            p.last_sent = now;
        }
    }

    fn on_cookie(&mut self, now: Instant, d: &[u8]) -> Outcome {
        use wire::cookie_reply as c;
        if d.len() != wire::COOKIE_REPLY_LEN {
            self.stats.malformed += 1;
            return Outcome::Dropped(DropReason::Malformed);
        }
        let Some(slot) = self.pending_handshake(wire::get_u32(d, c::RECEIVER)) else {
            self.stats.unknown_index += 1;
            return Outcome::Dropped(DropReason::UnknownIndex);
        };
        let p = self.peers[slot].as_mut().expect("indexed slot");
        let hs = p.handshake.as_mut().expect("pending handshake");
        let Some(cookie) = cookie::open_cookie(
            &p.cookie_key,
            &d[c::NONCE..c::SEALED],
            &hs.init[wire::init::MAC1..wire::init::MAC2],
            &d[c::SEALED..],
        ) else {
            self.stats.decrypt_failures += 1;
            return Outcome::Dropped(DropReason::Decrypt);
        };
        p.cookie = Some((cookie, now));
        self.stats.cookies_received += 1;
        if !hs.cookie_used {
            // Retry at once with mac2 (same Noise message: no new DH here).
            hs.cookie_used = true;
            let mac2: Mac = cookie::keyed_mac(&cookie, &[&hs.init[..wire::init::MAC2]]);
            hs.init[wire::init::MAC2..].copy_from_slice(&mac2);
            hs.sent_at = now;
            debug!(peer = %p.key, addr = %p.addr, "cookie received; init resent with mac2");
            let bytes = hs.init.to_vec();
            self.transmits.push_back(Outgoing::Datagram {
                addr: p.addr,
                bytes,
            });
        }
        Outcome::Consumed
    }

    fn on_transport(&mut self, now: Instant, wall_ms: u64, from: SocketAddr, d: &[u8]) -> Outcome {
        use wire::transport as t;
        if d.len() < wire::TRANSPORT_MIN_LEN || d.len() > MAX_PACKET {
            self.stats.malformed += 1;
            return Outcome::Dropped(DropReason::Malformed);
        }
        let index = wire::get_u32(d, t::RECEIVER);
        let counter = wire::get_u64(d, t::COUNTER);
        let Some(&slot) = self.by_index.get(&index) else {
            self.stats.unknown_index += 1;
            return Outcome::Dropped(DropReason::UnknownIndex);
        };
        let p = self.peers[slot].as_mut().expect("indexed slot");
        let which = if p.current.as_ref().is_some_and(|k| k.local == index) {
            Which::Current
        } else if p.previous.as_ref().is_some_and(|k| k.local == index) {
            Which::Previous
        } else if p.next.as_ref().is_some_and(|k| k.local == index) {
            Which::Next
        } else {
            // A handshake index: no transport keys yet.
            self.stats.unknown_index += 1;
            return Outcome::Dropped(DropReason::UnknownIndex);
        };
        let keys = match which {
            Which::Current => p.current.as_mut(),
            Which::Previous => p.previous.as_mut(),
            Which::Next => p.next.as_mut(),
        }
        .expect("matched above");
        // S2: check the window before decrypting, commit only after.
        if !keys.replay.check(counter) {
            self.stats.replays_dropped += 1;
            return Outcome::Dropped(DropReason::Replay);
        }
        let len = match keys
            .transport
            .read_message(counter, &d[t::CIPHERTEXT..], &mut self.scratch)
        {
            Ok(len) if len >= 1 => len,
            Ok(_) | Err(_) => {
                self.stats.decrypt_failures += 1;
                return Outcome::Dropped(DropReason::Decrypt);
            }
        };
        if !keys.replay.commit(counter) {
            self.stats.replays_dropped += 1;
            return Outcome::Dropped(DropReason::Replay);
        }
        keys.confirmed = true;
        self.stats.packets_opened += 1;
        p.last_received = now;
        let mut came_up = false;
        if matches!(which, Which::Next) {
            // The initiator confirmed the keys: they become current.
            let keys = p.next.take().expect("matched above");
            self.half_open_count -= 1;
            if p.rtt.is_none() && counter == 0 {
                // The initiator's first packet under these keys, and our
                // response went out when they were made: a first round-trip
                // sample for the responder (the clock ping that follows may
                // be lost; reliable delivery needs some estimate). A later
                // counter means earlier packets were lost: no clean sample.
                p.rtt = Some(now.saturating_duration_since(keys.created));
            }
            let first = !p.up;
            if first && RelayRoute::is_relay(&p.addr) == RelayRoute::is_relay(&from) {
                // A new peer's address is where its first authenticated
                // packet came from — within the kind of path its handshake
                // took (a handshake through a relay stays there until the
                // connection moves it, `crate::path`).
                p.addr = from;
            }
            debug!(peer = %p.key, %from, index, "handshake confirmed (responder)");
            self.install_current(slot, keys, now);
            came_up = first;
        }
        let p = self.peers[slot].as_mut().expect("indexed slot");
        // S6: authenticated and fresh; the session follows it, within one
        // kind of path: a packet over a relay route never moves a session
        // off a direct address, nor a direct packet one off a relay route
        // (that move is the connection's decision, `crate::path`).
        if p.addr != from && RelayRoute::is_relay(&p.addr) == RelayRoute::is_relay(&from) {
            let old = p.addr;
            p.addr = from;
            debug!(peer = %p.key, %old, new = %from, "peer address changed (S6)");
            self.events.push_back(SessionEvent::AddrChanged {
                peer: p.key,
                node: p.node,
                old,
                new: from,
            });
        }
        if came_up {
            if p.clock_offset_ms.is_none() {
                p.ping = Some((wall_ms, now));
                self.queue_control(slot, now, Control::Ping { wall: wall_ms });
            }
            self.flush_queue(slot, now);
        } else if matches!(which, Which::Next) {
            // Rekey confirmed: acknowledge on the new keys (the initiator
            // re-sends its confirmation until something arrives on them).
            if self.peer(slot).queue.is_empty() && self.peer(slot).reliable_unsent() == 0 {
                self.queue_control(slot, now, Control::Keepalive);
            } else {
                self.flush_queue(slot, now);
            }
        }
        let channel = self.scratch[0];
        let outcome = if channel != 0 {
            Outcome::Data {
                slot,
                channel,
                start: 1,
                end: len,
            }
        } else {
            self.on_control(slot, now, wall_ms, len)
        };
        self.reschedule(slot);
        outcome
    }

    /// A channel-0 message in `scratch[..len]`: `Data` for a reliable
    /// message to deliver, else `Consumed`.
    fn on_control(&mut self, slot: usize, now: Instant, wall_ms: u64, len: usize) -> Outcome {
        let msg = &self.scratch[1..len];
        match msg.first().copied() {
            Some(wire::control::RELIABLE) if msg.len() >= RELIABLE_HEADER_LEN => {
                use wire::reliable as r;
                let stream = wire::get_u32(msg, r::STREAM);
                let id = wire::get_u32(msg, r::ID);
                let channel = msg[r::CHANNEL];
                if stream == 0 || channel == 0 {
                    trace!("reliable message with stream 0 or on channel 0 ignored");
                    return Outcome::Consumed;
                }
                let p = self.peers[slot].as_mut().expect("indexed slot");
                let rel = p.rel.get_or_insert_with(|| Box::new(Reliable::new()));
                let arrival = rel.arrive(stream, id);
                if arrival == Arrival::Stale {
                    trace!(peer = %p.key, stream, id, "reliable message from a replaced stream ignored");
                    return Outcome::Consumed;
                }
                if rel.want_ack(id) {
                    let key = p.key;
                    p.last_sent = now;
                    self.transmits.push_back(Outgoing::Ack { slot, key });
                }
                if arrival == Arrival::Deliver {
                    self.stats.reliable_delivered += 1;
                    return Outcome::Data {
                        slot,
                        channel,
                        start: 1 + r::PAYLOAD,
                        end: len,
                    };
                }
                self.stats.reliable_duplicates += 1;
            }
            Some(wire::control::ACK)
                if msg.len() >= wire::reliable::ACK_IDS + 4
                    && (msg.len() - wire::reliable::ACK_IDS) % 4 == 0 =>
            {
                let stream = wire::get_u32(msg, wire::reliable::STREAM);
                let p = self.peers[slot].as_mut().expect("indexed slot");
                if let Some(rel) = p.rel.as_mut() {
                    for at in (wire::reliable::ACK_IDS..msg.len()).step_by(4) {
                        if let Some(buf) = rel.ack(stream, wire::get_u32(msg, at), now) {
                            self.stats.reliable_acked += 1;
                            recycle(&mut self.pool, buf);
                        }
                    }
                }
            }
            Some(wire::control::PING) if msg.len() >= 9 => {
                let echo = wire::get_u64(msg, 1);
                self.queue_control(
                    slot,
                    now,
                    Control::Pong {
                        echo,
                        wall: wall_ms,
                    },
                );
            }
            Some(wire::control::PONG) if msg.len() >= 17 => {
                let echo = wire::get_u64(msg, 1);
                let peer_wall = wire::get_u64(msg, 9);
                let p = self.peer_mut(slot);
                if let Some((sent_wall, sent_at)) = p.ping {
                    if sent_wall == echo {
                        p.ping = None;
                        let rtt = now.saturating_duration_since(sent_at);
                        let offset_ms = clock_offset(sent_wall, peer_wall, rtt);
                        p.rtt = Some(rtt);
                        trace!(peer = %p.key, ?rtt, offset_ms, "clock pong");
                        // NTP's clock filter, simply: a sample replaces the
                        // estimate when its round trip is no longer (less
                        // error) or the estimate has grown old.
                        if better_sample(p.offset_sample, rtt, now) {
                            p.clock_offset_ms = Some(offset_ms);
                            p.offset_sample = Some((rtt, now));
                            let ev = SessionEvent::ClockOffset {
                                peer: p.key,
                                node: p.node,
                                offset_ms,
                                rtt,
                            };
                            self.events.push_back(ev);
                        }
                    }
                }
            }
            // Keep-alives, and kinds from newer versions: nothing to do.
            _ => {}
        }
        Outcome::Consumed
    }

    /// Runs the due timers of one peer.
    fn peer_timers(&mut self, slot: usize, now: Instant, wall_ms: u64) {
        let config = self.config.clone();
        let Some(p) = self.peers[slot].as_mut() else {
            self.timers.remove(slot_id(slot));
            return;
        };
        if let Some(c) = &p.current {
            if now >= p.last_received + config.dead_after {
                self.down(slot, DownReason::Dead);
                return;
            }
            if now >= c.created + config.reject_after {
                self.down(slot, DownReason::RekeyFailed);
                return;
            }
        }
        if p.previous
            .as_ref()
            .is_some_and(|k| now >= k.created + config.reject_after)
        {
            let k = p.previous.take().expect("checked");
            self.by_index.remove(&k.local);
        }
        if p.next
            .as_ref()
            .is_some_and(|k| now >= k.created + config.handshake_timeout)
        {
            let k = p.next.take().expect("checked");
            trace!(peer = %p.key, "half-open handshake expired");
            self.by_index.remove(&k.local);
            self.half_open_count -= 1;
        }
        if let Some(hs) = &p.handshake {
            let give_up = hs.started + config.handshake_timeout;
            if now >= give_up {
                let hs = p.handshake.take().expect("checked");
                self.by_index.remove(&hs.local);
                self.stats.handshakes_failed += 1;
                if p.current.is_some() {
                    debug!(peer = %p.key, addr = %p.addr, "rekey handshake timed out; retrying later");
                    p.rekey_at = now + config.handshake_retry;
                } else {
                    debug!(peer = %p.key, addr = %p.addr, "handshake failed: no answer (wrong public key, or unreachable)");
                    self.stats.queued_dropped += p.queue.len() as u64;
                    p.queue.clear();
                    if let Some(rel) = p.rel.as_mut() {
                        let pool = &mut self.pool;
                        self.stats.reliable_dropped += rel.clear_pending(|b| recycle(pool, b));
                    }
                    self.events.push_back(SessionEvent::HandshakeFailed {
                        peer: p.key,
                        addr: p.addr,
                        error: HandshakeError::Timeout,
                    });
                }
            } else if now >= hs.next_retry {
                let started = hs.started;
                trace!(peer = %p.key, "handshake retry");
                self.send_init(slot, now, wall_ms, started);
            }
        }
        let p = self.peers[slot].as_mut().expect("still present");
        let mut confirm = false;
        if let Some(c) = p
            .current
            .as_ref()
            .filter(|c| !c.confirmed && p.handshake.is_none())
        {
            if now >= c.created + config.handshake_timeout {
                debug!(peer = %p.key, "new keys never confirmed by the peer; handshaking again");
                p.rekey_at = now;
            } else if now >= p.last_sent + config.handshake_retry {
                confirm = true;
            }
        }
        if p.current.is_some() && p.handshake.is_none() && now >= p.rekey_at {
            self.stats.handshakes_initiated += 1;
            debug!(peer = %p.key, addr = %p.addr, "rekey: new handshake (S7)");
            self.send_init(slot, now, wall_ms, now);
        }
        let p = self.peers[slot].as_mut().expect("still present");
        if confirm && p.handshake.is_none() {
            trace!(peer = %p.key, "re-sending key confirmation");
            self.queue_control(slot, now, Control::Keepalive);
        }
        self.reliable_timers(slot, now);
        let p = self.peers[slot].as_mut().expect("still present");
        if p.current.is_some() && now >= p.last_sent + config.keepalive_interval {
            // Idle keep-alives are clock pings (one outstanding at a time),
            // so the offset estimate keeps improving and never grows stale.
            if p.ping
                .is_none_or(|(_, at)| now >= at + config.keepalive_interval)
            {
                p.ping = Some((wall_ms, now));
                self.queue_control(slot, now, Control::Ping { wall: wall_ms });
            } else {
                self.queue_control(slot, now, Control::Keepalive);
            }
        }
        if self.peer(slot).is_empty() {
            self.remove_peer(slot);
        } else {
            self.reschedule(slot);
        }
    }
}

impl Endpoint {
    /// Retransmits or expires the reliable messages of `slot` whose timer is due.
    fn reliable_timers(&mut self, slot: usize, now: Instant) {
        let p = self.peers[slot].as_mut().expect("indexed slot");
        let Some(rel) = p.rel.as_mut() else {
            return;
        };
        let can_send = p.current.as_ref().is_some_and(Keys::usable);
        while let Some(due) = rel.pop_due(now, p.rtt) {
            match due {
                Due::Retransmit(seq) => {
                    // Without usable keys (a worn-out session waiting for its
                    // rekey) the attempt is skipped; the timer goes on.
                    if can_send {
                        self.stats.reliable_retransmits += 1;
                        let key = p.key;
                        p.last_sent = now;
                        self.transmits
                            .push_back(Outgoing::Reliable { slot, key, seq });
                    }
                }
                Due::Expired(buf) => {
                    self.stats.reliable_expired += 1;
                    debug!(peer = %p.key, "reliable message expired unacknowledged");
                    recycle(&mut self.pool, buf);
                }
            }
        }
    }
}

/// Returns a reliable-message buffer to the endpoint's bounded pool.
fn recycle(pool: &mut Vec<Vec<u8>>, buf: Vec<u8>) {
    if pool.len() < reliable::POOL_MAX {
        pool.push(buf);
    }
}

#[derive(Clone, Copy)]
enum Which {
    Current,
    Previous,
    Next,
}

impl Outcome {
    fn datagram(addr: SocketAddr, bytes: &[u8]) -> Outgoing {
        Outgoing::Datagram {
            addr,
            bytes: bytes.to_vec(),
        }
    }
}

/// A peer slot as the timer heap numbers it (slots are bounded by
/// `SessionConfig::max_sessions` and `max_half_open`, far below `u32::MAX`).
fn slot_id(slot: usize) -> u32 {
    u32::try_from(slot).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Instant {
        Instant::from_millis(1_000)
    }

    /// Delivers everything `from` wants to send to `to`.
    fn pump(from: &mut Endpoint, from_addr: SocketAddr, to: &mut Endpoint) {
        let mut out = [0u8; MAX_PACKET];
        while let Some((_, n)) = from.poll_transmit(&mut out) {
            let _ = to.handle_datagram(now(), 1_700_000_000_000, from_addr, &out[..n]);
        }
    }

    /// The reliable-message and acknowledgement plaintexts, byte for byte
    /// (the layouts in `docs/protocol.md`).
    #[test]
    fn reliable_and_ack_plaintexts_are_the_documented_layouts() {
        let (aa, ba): (SocketAddr, SocketAddr) = (
            "192.0.2.1:4000".parse().unwrap(),
            "198.51.100.2:5000".parse().unwrap(),
        );
        let mut a = Endpoint::new(
            Keypair::from_secret([1; 32]),
            SessionConfig::default(),
            [1; 32],
        );
        let mut b = Endpoint::new(
            Keypair::from_secret([2; 32]),
            SessionConfig::default(),
            [2; 32],
        );
        a.connect(now(), 1_700_000_000_000, b.public_key(), ba)
            .unwrap();
        for _ in 0..3 {
            pump(&mut a, aa, &mut b);
            pump(&mut b, ba, &mut a);
        }
        assert!(a.session(&b.public_key()).is_some() && b.session(&a.public_key()).is_some());

        a.send_reliable(now(), &b.public_key(), 7, &[0x10, 0x01])
            .unwrap();
        let stream = a
            .peer(a.by_key[&b.public_key()])
            .rel
            .as_ref()
            .unwrap()
            .stream
            .to_be_bytes();
        let mut out = [0u8; MAX_PACKET];
        let (_, n) = a.poll_transmit(&mut out).unwrap();
        assert_eq!(n, 45);
        let mut want = vec![0x00, 0x03];
        want.extend_from_slice(&stream);
        want.extend_from_slice(&[0, 0, 0, 0, 0x07, 0x10, 0x01]);
        assert_eq!(&a.plain[..13], &want[..]);
        match b.handle_datagram(now(), 1_700_000_000_000, aa, &out[..n]) {
            Received::Data {
                channel, payload, ..
            } => assert_eq!((channel, payload), (7, &[0x10, 0x01][..])),
            other => panic!("{other:?}"),
        }
        let (_, n) = b.poll_transmit(&mut out).unwrap();
        assert_eq!(n, 42);
        let mut want = vec![0x00, 0x04];
        want.extend_from_slice(&stream);
        want.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(&b.plain[..10], &want[..]);
        assert_eq!(
            a.handle_datagram(now(), 1_700_000_000_000, ba, &out[..n]),
            Received::Consumed
        );
        assert_eq!(a.stats().reliable_acked, 1);
    }
}
