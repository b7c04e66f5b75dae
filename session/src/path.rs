//! Connections and their paths: relay first, direct when proven, back to the
//! relay when the direct path dies (S3 routing, S4 liveness, D2 visibility).
//!
//! A *connection* is a session with a peer's public key that the application
//! asked for ([`Paths::open`]) or accepted. Its session starts on a *relay
//! route* — packets go to a coordinator inside the coordinator's own session
//! (`crate::relay`), which forwards them to the peer — and moves to a direct
//! UDP address once that address has answered a path ping. The two peers'
//! session is the same Noise session on either path: the coordinator only
//! ever forwards ciphertext, and the session's replay window (S2) discards
//! any copy of a packet, whichever path brings it.
//!
//! [`Paths`] is sans-IO like everything else here: it takes events (punch
//! outcomes, pongs, datagrams, session changes, time) and yields
//! [`PathAction`]s for its embedder to carry out against the agent and the
//! [`Endpoint`], and [`PathEvent`]s for the application.
//!
//! # Relay routes as addresses
//!
//! The session layer addresses every peer by a `SocketAddr`. A relay route is
//! written as one too ([`RelayRoute::addr`]): an address in `100::/64`, the
//! IPv6 discard-only prefix of RFC 6666, whose low 64 bits are the peer's node
//! id and whose port is the coordinator's slot in the embedder's list. No
//! datagram from the network can come from such an address (embedders drop
//! any that claims to, [`RelayRoute::is_relay`]), so it never collides with a
//! real peer. The session layer follows an authenticated packet to a new
//! address only within one kind of path (direct to direct: NAT rebinding,
//! S6); moving between the relay and a direct path is always this module's
//! decision ([`PathAction::SetAddr`]).
//!
//! # Liveness (S4)
//!
//! While a connection is on a direct path and *in use* (a datagram went
//! either way within [`PathConfig::idle_after`]) it sends a path ping every
//! [`PathConfig::ping_interval`] to the direct address; a pong proves the
//! path both ways. When no pong has come for [`PathConfig::dead_after`] (from
//! the last pong, or from when pinging resumed), the session moves back to
//! the relay route. An idle connection sends no pings at all.
//!
//! Upgrades (a punch through the coordinator, or the pair matrix's direct
//! verdict, then a ping to the address found) are attempted by both sides:
//! the opening side at once, the accepting side
//! [`ACCEPTOR_FIRST_UPGRADE`] later (a punch both ask for at once is joined
//! into one by the coordinator, R11). A side also tests a direct path as soon
//! as the other side's ping arrives over it. A failed upgrade is retried
//! after [`PathConfig::upgrade_first`], doubling up to
//! [`PathConfig::upgrade_max`]; [`Paths::network_changed`] (a new interface
//! address, a new reflex, a NAT rebinding) resets the backoff and retries at
//! once.
//!
//! # Datagram order and loss across a switch
//!
//! Within one path, datagrams arrive in the order the network delivers them.
//! Across a switch they may be reordered (the direct path is usually faster
//! than the relay), never duplicated. When a direct path dies, what is sent on
//! it between its death and the switch is lost: at most
//! [`PathConfig::dead_after`] of traffic, plus one relay transit.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use natrix_proto::table::Timers;
use natrix_proto::{Instant, NodeId, TraversalError};
use tracing::{debug, trace};

use crate::Endpoint;
use crate::identity::PublicKey;
use crate::wire::{MAX_PAYLOAD, TAG_LEN, TRANSPORT_HEADER_LEN};

/// Session channel of path pings and pongs between the two peers.
pub const CH_PATH: u8 = 10;

/// Bytes a relay adds in front of a relayed session packet (kind byte and
/// the peer's node id; `crate::relay`).
pub const RELAY_HEADER_LEN: usize = 9;

/// The largest application datagram a connection carries: what fits in a
/// session packet that still fits in a relay frame, so that the limit does
/// not change when the path does.
pub const MAX_DATAGRAM: usize =
    MAX_PAYLOAD - RELAY_HEADER_LEN - (TRANSPORT_HEADER_LEN + 1 + TAG_LEN);

/// How long the accepting side of a connection waits before its first
/// upgrade attempt: the opening side's attempt (at once) usually makes it
/// unnecessary, and when the pair matrix lets one side reach the other
/// without a punch, only the side behind the NAT can open the way.
pub const ACCEPTOR_FIRST_UPGRADE: Duration = Duration::from_secs(1);

/// Length of an encoded [`PathMessage`].
pub const PATH_MESSAGE_LEN: usize = 9;

/// The first 64 bits of every relay-route address: `100::/64` (RFC 6666,
/// discard-only).
const RELAY_PREFIX: [u16; 4] = [0x0100, 0, 0, 0];

/// A session's route through a relay: coordinator slot `via` (an index into
/// the embedder's coordinator list) to the peer with node id `peer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayRoute {
    /// The coordinator's slot in the embedder's list.
    pub via: u16,
    /// The peer at the far end.
    pub peer: NodeId,
}

impl RelayRoute {
    /// The address the session layer knows this route by.
    #[must_use]
    pub fn addr(self) -> SocketAddr {
        let id = self.peer.0;
        let ip = Ipv6Addr::new(
            RELAY_PREFIX[0],
            RELAY_PREFIX[1],
            RELAY_PREFIX[2],
            RELAY_PREFIX[3],
            (id >> 48) as u16,
            (id >> 32) as u16,
            (id >> 16) as u16,
            id as u16,
        );
        SocketAddr::V6(SocketAddrV6::new(ip, self.via, 0, 0))
    }

    /// The route `addr` stands for, if it is a relay-route address.
    #[must_use]
    pub fn from_addr(addr: SocketAddr) -> Option<RelayRoute> {
        let SocketAddr::V6(v6) = addr else {
            return None;
        };
        let s = v6.ip().segments();
        if s[..4] != RELAY_PREFIX {
            return None;
        }
        let id = s[4..]
            .iter()
            .fold(0u64, |acc, &seg| (acc << 16) | u64::from(seg));
        Some(RelayRoute {
            via: v6.port(),
            peer: NodeId(id),
        })
    }

    /// Whether `addr` is a relay-route address (never a real network
    /// address: a datagram claiming to come from one is dropped).
    #[must_use]
    pub fn is_relay(addr: &SocketAddr) -> bool {
        matches!(addr, SocketAddr::V6(v6) if v6.ip().segments()[..4] == RELAY_PREFIX)
    }
}

/// A path ping or pong (channel [`CH_PATH`]): kind byte, then the id (u64,
/// big-endian).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathMessage {
    /// "Answer this on the path it came by."
    Ping(u64),
    /// The answer to the ping with this id.
    Pong(u64),
    /// "I closed this connection" (the id is zero): the receiver ends its
    /// side at once instead of waiting for the session to time out.
    Close,
}

impl PathMessage {
    /// The wire form.
    #[must_use]
    pub fn encode(self) -> [u8; PATH_MESSAGE_LEN] {
        let (kind, id) = match self {
            PathMessage::Ping(id) => (1u8, id),
            PathMessage::Pong(id) => (2u8, id),
            PathMessage::Close => (3u8, 0),
        };
        let mut out = [0u8; PATH_MESSAGE_LEN];
        out[0] = kind;
        out[1..].copy_from_slice(&id.to_be_bytes());
        out
    }

    /// Parses a path message; `None` for anything else.
    #[must_use]
    pub fn decode(bytes: &[u8]) -> Option<PathMessage> {
        let id = u64::from_be_bytes(bytes.get(1..)?.try_into().ok()?);
        match bytes[0] {
            1 => Some(PathMessage::Ping(id)),
            2 => Some(PathMessage::Pong(id)),
            3 if id == 0 => Some(PathMessage::Close),
            _ => None,
        }
    }
}

/// Timers and bounds of [`Paths`]; the defaults are the spec's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathConfig {
    /// Ping interval on a direct path in use (3 s).
    pub ping_interval: Duration,
    /// A direct path with no pong for this long is dead (6.5 s); also how
    /// long an upgrade's first ping may go unanswered.
    pub dead_after: Duration,
    /// A connection with no datagram either way for this long is idle and
    /// stops pinging (10 s).
    pub idle_after: Duration,
    /// First upgrade retry after a failure (5 s).
    pub upgrade_first: Duration,
    /// Longest upgrade retry interval (5 min).
    pub upgrade_max: Duration,
    /// Most connections at once (1024).
    pub max_connections: usize,
}

impl Default for PathConfig {
    fn default() -> Self {
        PathConfig {
            ping_interval: Duration::from_secs(3),
            dead_after: Duration::from_millis(6_500),
            idle_after: Duration::from_secs(10),
            upgrade_first: Duration::from_secs(5),
            upgrade_max: Duration::from_secs(300),
            max_connections: 1024,
        }
    }
}

/// Which kind of path a connection uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PathKind {
    /// Straight to the peer's address.
    Direct,
    /// Through a coordinator's relay.
    Relayed,
}

impl fmt::Display for PathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathKind::Direct => "direct",
            PathKind::Relayed => "relayed",
        })
    }
}

/// Why the last upgrade to a direct path failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    /// The punch ended without a direct path (its typed outcome).
    #[error("punch failed: {0}")]
    Punch(TraversalError),
    /// The punch found `addr`, but it did not answer a path ping in time.
    #[error("the punched path to {addr} did not answer a ping")]
    NoAnswer {
        /// The address the punch found.
        addr: SocketAddr,
    },
}

/// Why a connection's path changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeReason {
    /// The connection opened (on the relay).
    Opened,
    /// A direct path answered a ping: upgraded.
    Upgraded,
    /// The direct path stopped answering: back on the relay (S4).
    DirectDead,
    /// The peer's direct address changed under an authenticated packet (S6).
    Rebound,
    /// The session ended; the connection waits on the relay for a new one.
    SessionLost,
}

/// What a connection reports about its path (D2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathInfo {
    /// The peer.
    pub peer: PublicKey,
    /// Direct or relayed.
    pub kind: PathKind,
    /// The address datagrams go to: the peer's own address on a direct path,
    /// the relay route's address (see [`RelayRoute`]) on the relay.
    pub remote: SocketAddr,
    /// The coordinator relaying (its node id) when relayed.
    pub via: Option<NodeId>,
    /// When the connection moved onto this path.
    pub since: Instant,
    /// The latest path round trip (ping to pong) on the direct path, if any.
    pub rtt: Option<Duration>,
    /// Application bytes sent and received, all paths.
    pub bytes_sent: u64,
    /// See `bytes_sent`.
    pub bytes_received: u64,
    /// Application datagrams sent and received, all paths.
    pub datagrams_sent: u64,
    /// See `datagrams_sent`.
    pub datagrams_received: u64,
    /// Why the last upgrade failed (cleared by a successful one).
    pub last_upgrade_error: Option<UpgradeError>,
    /// When the next upgrade attempt is due (dialling side, relayed).
    pub next_upgrade: Option<Instant>,
}

/// Something the application should hear about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathEvent {
    /// The connection's path changed (or it opened).
    Changed {
        /// The path now in use.
        info: PathInfo,
        /// Why.
        reason: ChangeReason,
    },
    /// An upgrade attempt failed; the connection stays relayed.
    UpgradeFailed {
        /// The peer.
        peer: PublicKey,
        /// Why.
        error: UpgradeError,
    },
    /// The peer closed the connection ([`PathMessage::Close`]); it is gone
    /// here too (the embedder closes the session).
    ClosedByPeer {
        /// The peer.
        peer: PublicKey,
    },
}

impl PathEvent {
    /// The peer the event is about.
    #[must_use]
    pub fn peer(&self) -> PublicKey {
        match self {
            PathEvent::Changed { info, .. } => info.peer,
            PathEvent::UpgradeFailed { peer, .. } | PathEvent::ClosedByPeer { peer } => *peer,
        }
    }
}

/// Work for the embedder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathAction {
    /// Ask the agent for a punch to `peer` through coordinator `via`, and
    /// report the outcome with [`Paths::on_punch`].
    Punch {
        /// The peer.
        peer: PublicKey,
        /// The coordinator to mediate.
        via: NodeId,
    },
    /// Seal `PathMessage::Ping(id)` on channel [`CH_PATH`] in the peer's
    /// session and send it to `addr` (which need not be the session's
    /// current address: `Endpoint::send_to`).
    Ping {
        /// The peer.
        peer: PublicKey,
        /// The path to test.
        addr: SocketAddr,
        /// The ping id.
        id: u64,
    },
    /// Move the peer's session to `addr` (`Endpoint::set_addr`).
    SetAddr {
        /// The peer.
        peer: PublicKey,
        /// Its new address: direct, or a relay route's.
        addr: SocketAddr,
    },
}

/// Counters over all connections (monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathStats {
    /// Connections opened or accepted.
    pub opened: u64,
    /// Upgrade attempts started (punches asked for, or direct pings after a
    /// peer's ping).
    pub upgrades_attempted: u64,
    /// Upgrades that moved a connection to a direct path.
    pub upgrades_succeeded: u64,
    /// Direct paths found dead (the connection went back to the relay).
    pub direct_deaths: u64,
    /// Path pings sent.
    pub pings_sent: u64,
    /// Path pongs received that matched a ping.
    pub pongs_received: u64,
    /// Application bytes sent on direct paths / on relay routes.
    pub bytes_sent_direct: u64,
    /// See `bytes_sent_direct`.
    pub bytes_sent_relayed: u64,
    /// Application bytes received on direct paths / on relay routes.
    pub bytes_received_direct: u64,
    /// See `bytes_received_direct`.
    pub bytes_received_relayed: u64,
}

/// What [`Paths::apply`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Nothing more to do.
    Nothing,
    /// Send the sealed bytes (`out[..len]`) to this address.
    Send(SocketAddr, usize),
    /// Ask the agent for a punch to `peer` through `via`, then call
    /// [`Paths::on_punch`] with the outcome.
    Punch {
        /// The peer.
        peer: PublicKey,
        /// The coordinator.
        via: NodeId,
    },
}

/// Why [`Paths::open`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// [`PathConfig::max_connections`] connections exist.
    #[error("too many connections ({max})")]
    TooMany {
        /// The limit.
        max: usize,
    },
}

#[derive(Clone, Copy, Debug)]
struct Probe {
    addr: SocketAddr,
    id: u64,
    sent: Instant,
    /// Whether it went out a second time (at most once).
    resent: bool,
}

#[derive(Debug)]
struct Conn {
    peer: PublicKey,
    relay: RelayRoute,
    via: NodeId,
    /// Whether this side opened the connection (and drives upgrades).
    dialler: bool,
    direct: Option<SocketAddr>,
    since: Instant,
    rtt: Option<Duration>,
    /// The last datagram either way.
    last_use: Option<Instant>,
    /// Direct: the last pong, or when pinging (re)started.
    last_pong: Instant,
    /// Direct: when the next ping is due while in use.
    next_ping: Instant,
    /// The outstanding ping on the direct path (liveness or upgrade).
    probe: Option<Probe>,
    /// Relayed: when to attempt the next upgrade.
    upgrade_at: Option<Instant>,
    /// A punch is in progress.
    punching: bool,
    /// Whether the peer's session is up (pings need its keys).
    session_up: bool,
    /// A direct address to ping once the session is up.
    pending_probe: Option<SocketAddr>,
    backoff: Duration,
    last_error: Option<UpgradeError>,
    bytes_sent: u64,
    bytes_received: u64,
    datagrams_sent: u64,
    datagrams_received: u64,
}

impl Conn {
    fn kind(&self) -> PathKind {
        if self.direct.is_some() {
            PathKind::Direct
        } else {
            PathKind::Relayed
        }
    }

    fn in_use(&self, now: Instant, idle_after: Duration) -> bool {
        self.last_use
            .is_some_and(|t| now.saturating_duration_since(t) < idle_after)
    }

    fn info(&self) -> PathInfo {
        let (remote, via) = match self.direct {
            Some(a) => (a, None),
            None => (self.relay.addr(), Some(self.via)),
        };
        PathInfo {
            peer: self.peer,
            kind: self.kind(),
            remote,
            via,
            since: self.since,
            rtt: self.rtt,
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            datagrams_sent: self.datagrams_sent,
            datagrams_received: self.datagrams_received,
            last_upgrade_error: self.last_error,
            next_upgrade: self.upgrade_at,
        }
    }
}

/// Every connection of one node and their paths (see the [module docs](self)).
pub struct Paths {
    config: PathConfig,
    conns: Vec<Option<Conn>>,
    free: Vec<u32>,
    by_key: BTreeMap<PublicKey, u32>,
    timers: Timers<u32>,
    next_ping_id: u64,
    actions: VecDeque<PathAction>,
    events: VecDeque<PathEvent>,
    stats: PathStats,
}

impl fmt::Debug for Paths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Paths")
            .field("connections", &self.by_key.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Paths {
    /// No connections yet.
    #[must_use]
    pub fn new(config: PathConfig) -> Self {
        Paths {
            config,
            conns: Vec::new(),
            free: Vec::new(),
            by_key: BTreeMap::new(),
            timers: Timers::with_capacity(config.max_connections.min(1024)),
            next_ping_id: 1,
            actions: VecDeque::new(),
            events: VecDeque::new(),
            stats: PathStats::default(),
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &PathConfig {
        &self.config
    }

    /// Opens a connection to `peer` on relay route `relay` through the
    /// coordinator `via` (its node id). `dialler`: this side asked for the
    /// connection (it redials a lost session; its first upgrade attempt is
    /// at once, the accepting side's [`ACCEPTOR_FIRST_UPGRADE`] later).
    /// Opening a connection that exists changes nothing and returns its path.
    ///
    /// # Errors
    /// [`OpenError::TooMany`] at [`PathConfig::max_connections`].
    pub fn open(
        &mut self,
        now: Instant,
        peer: PublicKey,
        relay: RelayRoute,
        via: NodeId,
        dialler: bool,
    ) -> Result<PathInfo, OpenError> {
        if let Some(&slot) = self.by_key.get(&peer) {
            return Ok(self.conn(slot).info());
        }
        if self.by_key.len() >= self.config.max_connections {
            return Err(OpenError::TooMany {
                max: self.config.max_connections,
            });
        }
        let conn = Conn {
            peer,
            relay,
            via,
            dialler,
            direct: None,
            since: now,
            rtt: None,
            last_use: None,
            last_pong: now,
            next_ping: now,
            probe: None,
            upgrade_at: Some(if dialler {
                now
            } else {
                now + ACCEPTOR_FIRST_UPGRADE
            }),
            punching: false,
            session_up: false,
            pending_probe: None,
            backoff: self.config.upgrade_first,
            last_error: None,
            bytes_sent: 0,
            bytes_received: 0,
            datagrams_sent: 0,
            datagrams_received: 0,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.conns[s as usize] = Some(conn);
                s
            }
            None => {
                self.conns.push(Some(conn));
                u32::try_from(self.conns.len() - 1).expect("bounded by max_connections")
            }
        };
        self.by_key.insert(peer, slot);
        self.stats.opened += 1;
        debug!(%peer, route = %relay.addr(), %via, dialler, "connection opened on the relay");
        let info = self.conn(slot).info();
        self.events.push_back(PathEvent::Changed {
            info,
            reason: ChangeReason::Opened,
        });
        self.reschedule(slot);
        Ok(info)
    }

    /// Forgets the connection to `peer` (the session is the embedder's to
    /// close). Returns whether there was one.
    pub fn close(&mut self, peer: &PublicKey) -> bool {
        let Some(slot) = self.by_key.remove(peer) else {
            return false;
        };
        self.conns[slot as usize] = None;
        self.timers.remove(slot);
        self.free.push(slot);
        debug!(%peer, "connection closed");
        true
    }

    /// Whether a connection to `peer` exists.
    #[must_use]
    pub fn contains(&self, peer: &PublicKey) -> bool {
        self.by_key.contains_key(peer)
    }

    /// The connection's path now (D2).
    #[must_use]
    pub fn info(&self, peer: &PublicKey) -> Option<PathInfo> {
        self.by_key.get(peer).map(|&s| self.conn(s).info())
    }

    /// Every connection's path.
    pub fn iter(&self) -> impl Iterator<Item = PathInfo> + '_ {
        self.by_key.values().map(|&s| self.conn(s).info())
    }

    /// The relay route of the connection to `peer`.
    #[must_use]
    pub fn relay_route(&self, peer: &PublicKey) -> Option<RelayRoute> {
        self.by_key.get(peer).map(|&s| self.conn(s).relay)
    }

    /// Whether this side opened the connection to `peer` (and drives its
    /// upgrades and redials).
    #[must_use]
    pub fn is_dialler(&self, peer: &PublicKey) -> bool {
        self.by_key.get(peer).is_some_and(|&s| self.conn(s).dialler)
    }

    /// Number of connections.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> PathStats {
        self.stats
    }

    /// The address the peer's session should use now (its direct address,
    /// or its relay route's).
    #[must_use]
    pub fn current_addr(&self, peer: &PublicKey) -> Option<SocketAddr> {
        self.by_key.get(peer).map(|&s| self.conn(s).info().remote)
    }

    fn conn(&self, slot: u32) -> &Conn {
        self.conns[slot as usize].as_ref().expect("live slot")
    }

    fn conn_mut(&mut self, slot: u32) -> &mut Conn {
        self.conns[slot as usize].as_mut().expect("live slot")
    }

    fn slot_of(&self, peer: &PublicKey) -> Option<u32> {
        self.by_key.get(peer).copied()
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_ping_id;
        self.next_ping_id = self.next_ping_id.wrapping_add(1).max(1);
        id
    }

    /// The earliest instant this connection needs attention at.
    fn deadline(&self, slot: u32) -> Option<Instant> {
        let c = self.conn(slot);
        let mut at: Option<Instant> = None;
        let mut take = |t: Instant| at = Some(at.map_or(t, |a| a.min(t)));
        if let Some(p) = c.probe {
            take(p.sent + self.config.dead_after);
        }
        if c.direct.is_some() {
            if let Some(last) = c.last_use {
                // While in use: the next ping, the dead check; the moment it
                // turns idle needs no wake-up (nothing happens then).
                let idle_at = last + self.config.idle_after;
                if c.next_ping < idle_at {
                    take(c.next_ping);
                }
                // An idle connection is not checked (no pings, no pongs).
                let dead_at = c.last_pong + self.config.dead_after;
                if dead_at < idle_at {
                    take(dead_at);
                }
            }
        } else if !c.punching {
            if let Some(t) = c.upgrade_at {
                take(t);
            }
        }
        at
    }

    fn reschedule(&mut self, slot: u32) {
        match self.deadline(slot) {
            Some(t) => self.timers.set(slot, t, slot),
            None => self.timers.remove(slot),
        }
    }

    /// The earliest instant [`handle_timeout`](Self::handle_timeout) has work at.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|(t, _, _)| t)
    }

    /// Runs what is due: upgrade attempts, pings, dead-path and unanswered
    /// upgrade detection.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut guard = 4 * self.conns.len() + 16;
        while let Some((t, _, slot)) = self.timers.peek() {
            if t > now || guard == 0 {
                break;
            }
            guard -= 1;
            self.visit(now, slot);
            self.reschedule(slot);
        }
    }

    fn visit(&mut self, now: Instant, slot: u32) {
        let cfg = self.config;
        // An unanswered ping.
        if let Some(p) = self.conn(slot).probe {
            if now >= p.sent + cfg.dead_after {
                self.conn_mut(slot).probe = None;
                if self.conn(slot).direct.is_none() {
                    self.upgrade_failed(now, slot, UpgradeError::NoAnswer { addr: p.addr });
                }
            }
        }
        let c = self.conn(slot);
        if let Some(addr) = c.direct {
            if c.last_use.is_none() {
                return;
            }
            if now >= c.last_pong + cfg.dead_after && c.in_use(now, cfg.idle_after) {
                self.direct_dead(now, slot);
                return;
            }
            if c.in_use(now, cfg.idle_after) && now >= c.next_ping && c.probe.is_none() {
                self.send_ping(now, slot, addr);
            }
            let c = self.conn_mut(slot);
            if now >= c.next_ping {
                c.next_ping = now + cfg.ping_interval;
            }
        } else if !c.punching && c.upgrade_at.is_some_and(|t| now >= t) {
            let (peer, via) = (c.peer, c.via);
            let c = self.conn_mut(slot);
            c.upgrade_at = None;
            c.punching = true;
            self.stats.upgrades_attempted += 1;
            debug!(%peer, %via, "upgrade: asking for a punch");
            self.actions.push_back(PathAction::Punch { peer, via });
        }
    }

    fn send_ping(&mut self, now: Instant, slot: u32, addr: SocketAddr) {
        let c = self.conn_mut(slot);
        if !c.session_up {
            // No keys to seal with yet: ping when the session is up.
            c.pending_probe = Some(addr);
            return;
        }
        let id = self.next_id();
        let c = self.conn_mut(slot);
        c.probe = Some(Probe {
            addr,
            id,
            sent: now,
            resent: false,
        });
        let peer = c.peer;
        self.stats.pings_sent += 1;
        trace!(%peer, %addr, id, "path ping");
        self.actions.push_back(PathAction::Ping { peer, addr, id });
    }

    fn upgrade_failed(&mut self, now: Instant, slot: u32, error: UpgradeError) {
        let cfg = self.config;
        let c = self.conn_mut(slot);
        c.last_error = Some(error);
        c.punching = false;
        c.upgrade_at = Some(now + c.backoff);
        c.backoff = (c.backoff * 2).min(cfg.upgrade_max);
        let peer = c.peer;
        debug!(%peer, %error, retry_at = ?c.upgrade_at, "upgrade failed; staying on the relay");
        self.events
            .push_back(PathEvent::UpgradeFailed { peer, error });
    }

    fn direct_dead(&mut self, now: Instant, slot: u32) {
        let cfg = self.config;
        let c = self.conn_mut(slot);
        let Some(old) = c.direct.take() else {
            return;
        };
        c.since = now;
        c.probe = None;
        c.rtt = None;
        c.upgrade_at = Some(now + cfg.upgrade_first);
        c.backoff = (cfg.upgrade_first * 2).min(cfg.upgrade_max);
        let (peer, addr) = (c.peer, c.relay.addr());
        self.stats.direct_deaths += 1;
        debug!(%peer, direct = %old, relay = %addr, "direct path dead; back on the relay (S4)");
        self.actions.push_back(PathAction::SetAddr { peer, addr });
        let info = self.conn(slot).info();
        self.events.push_back(PathEvent::Changed {
            info,
            reason: ChangeReason::DirectDead,
        });
    }

    fn go_direct(&mut self, now: Instant, slot: u32, addr: SocketAddr, rtt: Duration) {
        let cfg = self.config;
        let c = self.conn_mut(slot);
        c.direct = Some(addr);
        c.since = now;
        c.rtt = Some(rtt);
        c.last_pong = now;
        c.next_ping = now + cfg.ping_interval;
        c.upgrade_at = None;
        c.punching = false;
        c.backoff = cfg.upgrade_first;
        c.last_error = None;
        let peer = c.peer;
        self.stats.upgrades_succeeded += 1;
        debug!(%peer, %addr, ?rtt, "upgraded to the direct path");
        self.actions.push_back(PathAction::SetAddr { peer, addr });
        let info = self.conn(slot).info();
        self.events.push_back(PathEvent::Changed {
            info,
            reason: ChangeReason::Upgraded,
        });
    }

    /// The outcome of a [`PathAction::Punch`] (or of any punch to this peer):
    /// the peer's direct address, or why there is none. A success sends a
    /// path ping there; the connection moves when the pong comes back.
    pub fn on_punch(
        &mut self,
        now: Instant,
        peer: &PublicKey,
        outcome: Result<SocketAddr, TraversalError>,
    ) {
        let Some(slot) = self.slot_of(peer) else {
            return;
        };
        match outcome {
            Ok(addr) => {
                let c = self.conn_mut(slot);
                c.punching = false;
                if c.direct.is_none() {
                    self.send_ping(now, slot, addr);
                }
            }
            Err(e) => {
                if self.conn(slot).direct.is_none() {
                    self.upgrade_failed(now, slot, UpgradeError::Punch(e));
                } else {
                    self.conn_mut(slot).punching = false;
                }
            }
        }
        self.reschedule(slot);
    }

    /// A path ping from `peer` arrived from `from`. The embedder answers it
    /// (a pong to `from`, whatever path that is) whatever this returns; on
    /// a relayed connection a ping from a direct address is a sign the path
    /// works one way, and this side tests the other way with its own ping.
    pub fn on_ping(&mut self, now: Instant, peer: &PublicKey, from: SocketAddr) {
        let Some(slot) = self.slot_of(peer) else {
            return;
        };
        let c = self.conn(slot);
        if c.direct.is_some() || RelayRoute::is_relay(&from) {
            return;
        }
        // A ping that came in over a direct address is the best evidence
        // there is: test that address. A probe already in flight to it may
        // have been filtered by the peer's NAT before the peer's own ping
        // opened it: it goes out once more, with the same id (so that a pong
        // to either copy counts, and two sides doing this stop after one
        // round).
        match c.probe {
            Some(p) if p.addr == from => {
                if !p.resent {
                    let peer = c.peer;
                    if let Some(p) = self.conn_mut(slot).probe.as_mut() {
                        p.resent = true;
                    }
                    self.stats.pings_sent += 1;
                    trace!(%peer, addr = %from, id = p.id, "path ping again");
                    self.actions.push_back(PathAction::Ping {
                        peer,
                        addr: from,
                        id: p.id,
                    });
                }
            }
            _ => {
                self.stats.upgrades_attempted += 1;
                self.send_ping(now, slot, from);
                self.reschedule(slot);
            }
        }
    }

    /// A path pong from `peer` arrived from `from`.
    pub fn on_pong(&mut self, now: Instant, peer: &PublicKey, from: SocketAddr, id: u64) {
        let Some(slot) = self.slot_of(peer) else {
            return;
        };
        let Some(p) = self
            .conn(slot)
            .probe
            .filter(|p| p.id == id && p.addr == from)
        else {
            trace!(%peer, %from, id, "pong matches no ping; ignored");
            return;
        };
        self.stats.pongs_received += 1;
        let rtt = now.saturating_duration_since(p.sent);
        let c = self.conn_mut(slot);
        c.probe = None;
        if c.direct.is_some() {
            c.last_pong = now;
            c.rtt = Some(rtt);
        } else {
            self.go_direct(now, slot, from, rtt);
        }
        self.reschedule(slot);
    }

    /// The application sent `len` bytes to `peer`; returns the address the
    /// session sends them to (the connection's path), `None` without a
    /// connection.
    pub fn on_sent(&mut self, now: Instant, peer: &PublicKey, len: usize) -> Option<SocketAddr> {
        let slot = self.slot_of(peer)?;
        let idle_after = self.config.idle_after;
        let c = self.conn_mut(slot);
        let len = len as u64;
        c.bytes_sent += len;
        c.datagrams_sent += 1;
        let direct = c.direct.is_some();
        if direct {
            self.stats.bytes_sent_direct += len;
        } else {
            self.stats.bytes_sent_relayed += len;
        }
        self.mark_use(now, slot, idle_after);
        Some(self.conn(slot).info().remote)
    }

    /// `len` application bytes from `peer` arrived from `from`.
    pub fn on_received(&mut self, now: Instant, peer: &PublicKey, from: SocketAddr, len: usize) {
        let Some(slot) = self.slot_of(peer) else {
            return;
        };
        let idle_after = self.config.idle_after;
        let c = self.conn_mut(slot);
        let len = len as u64;
        c.bytes_received += len;
        c.datagrams_received += 1;
        if RelayRoute::is_relay(&from) {
            self.stats.bytes_received_relayed += len;
        } else {
            self.stats.bytes_received_direct += len;
        }
        self.mark_use(now, slot, idle_after);
    }

    /// A datagram on an idle direct connection restarts pinging: the dead
    /// check counts from now, not from a pong long ago.
    fn mark_use(&mut self, now: Instant, slot: u32, idle_after: Duration) {
        let c = self.conn_mut(slot);
        let was_idle = !c.in_use(now, idle_after);
        c.last_use = Some(now);
        if was_idle && c.direct.is_some() {
            c.last_pong = c.last_pong.max(now);
            c.next_ping = now;
            self.reschedule(slot);
        }
    }

    /// The peer's session moved to `new` on its own (an authenticated packet
    /// from a new direct address: NAT rebinding, S6). The connection follows.
    pub fn on_session_moved(&mut self, now: Instant, peer: &PublicKey, new: SocketAddr) {
        let Some(slot) = self.slot_of(peer) else {
            return;
        };
        let c = self.conn_mut(slot);
        if c.direct.is_none() || RelayRoute::is_relay(&new) || c.direct == Some(new) {
            return;
        }
        c.direct = Some(new);
        c.since = now;
        c.last_pong = now;
        let info = self.conn(slot).info();
        debug!(%peer, %new, "direct path rebound (S6)");
        self.events.push_back(PathEvent::Changed {
            info,
            reason: ChangeReason::Rebound,
        });
        self.reschedule(slot);
    }

    /// The peer's session is up (or came up again): pings can be sealed.
    /// A direct address found meanwhile is pinged now.
    pub fn on_session_up(&mut self, now: Instant, peer: &PublicKey) {
        let Some(slot) = self.slot_of(peer) else {
            return;
        };
        let c = self.conn_mut(slot);
        c.session_up = true;
        if let Some(addr) = c.pending_probe.take() {
            if c.direct.is_none() && c.probe.is_none() {
                self.send_ping(now, slot, addr);
            }
        }
        self.reschedule(slot);
    }

    /// The peer's session ended. The connection stays, on the relay route
    /// (the embedder dials again there, or waits for the peer to).
    pub fn on_session_down(&mut self, now: Instant, peer: &PublicKey) {
        let Some(slot) = self.slot_of(peer) else {
            return;
        };
        let first = self.config.upgrade_first;
        let c = self.conn_mut(slot);
        let was_direct = c.direct.take().is_some();
        c.probe = None;
        c.pending_probe = None;
        c.session_up = false;
        c.punching = false;
        c.backoff = first;
        c.upgrade_at = Some(now + first);
        if was_direct {
            c.since = now;
            let info = self.conn(slot).info();
            self.events.push_back(PathEvent::Changed {
                info,
                reason: ChangeReason::SessionLost,
            });
        }
        self.reschedule(slot);
    }

    /// Something about this node's network changed (a new interface
    /// address, a new reflex, a NAT rebinding): every relayed connection
    /// retries its upgrade now, with the backoff reset.
    pub fn network_changed(&mut self, now: Instant) {
        let first = self.config.upgrade_first;
        let slots: Vec<u32> = self.by_key.values().copied().collect();
        for slot in slots {
            let c = self.conn_mut(slot);
            if c.direct.is_none() {
                c.backoff = first;
                if !c.punching {
                    c.upgrade_at = Some(now);
                }
                self.reschedule(slot);
            }
        }
    }

    /// The next piece of work for the embedder.
    pub fn poll_action(&mut self) -> Option<PathAction> {
        self.actions.pop_front()
    }

    /// Carries out `action` against the session layer: a `SetAddr` moves
    /// the session, a `Ping` is sealed into `out` (`Send`: send `out[..len]`
    /// to that address — through the relay when it is a relay route's), a
    /// `Punch` is handed back for the agent.
    pub fn apply(
        &mut self,
        endpoint: &mut Endpoint,
        now: Instant,
        action: PathAction,
        out: &mut [u8],
    ) -> Applied {
        match action {
            PathAction::SetAddr { peer, addr } => {
                endpoint.set_addr(&peer, addr);
                Applied::Nothing
            }
            PathAction::Ping { peer, addr, id } => {
                let msg = PathMessage::Ping(id).encode();
                match endpoint.send_to(now, &peer, addr, CH_PATH, &msg, out) {
                    Ok((to, len)) => Applied::Send(to, len),
                    Err(e) => {
                        trace!(%peer, %addr, %e, "path ping not sent");
                        Applied::Nothing
                    }
                }
            }
            PathAction::Punch { peer, via } => Applied::Punch { peer, via },
        }
    }

    /// A message on channel [`CH_PATH`] from `peer`, which came from `from`:
    /// a ping is answered with a pong sealed into `out` for `from` (the path
    /// it came by), a pong is matched against the ping it answers.
    pub fn handle_message(
        &mut self,
        endpoint: &mut Endpoint,
        now: Instant,
        peer: &PublicKey,
        from: SocketAddr,
        payload: &[u8],
        out: &mut [u8],
    ) -> Option<(SocketAddr, usize)> {
        match PathMessage::decode(payload)? {
            PathMessage::Ping(id) => {
                self.on_ping(now, peer, from);
                let msg = PathMessage::Pong(id).encode();
                endpoint.send_to(now, peer, from, CH_PATH, &msg, out).ok()
            }
            PathMessage::Pong(id) => {
                self.on_pong(now, peer, from, id);
                None
            }
            PathMessage::Close => {
                if self.close(peer) {
                    debug!(%peer, "the peer closed the connection");
                    self.events
                        .push_back(PathEvent::ClosedByPeer { peer: *peer });
                }
                None
            }
        }
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<PathEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_route_addresses_round_trip_and_are_recognised() {
        let r = RelayRoute {
            via: 3,
            peer: NodeId(0x0123_4567_89ab_cdef),
        };
        let a = r.addr();
        assert_eq!(a.to_string(), "[100::123:4567:89ab:cdef]:3");
        assert_eq!(RelayRoute::from_addr(a), Some(r));
        assert!(RelayRoute::is_relay(&a));
        let real: SocketAddr = "[2001:db8::1]:3".parse().unwrap();
        assert!(!RelayRoute::is_relay(&real));
        assert_eq!(RelayRoute::from_addr(real), None);
        assert!(!RelayRoute::is_relay(&"192.0.2.1:1".parse().unwrap()));
    }

    #[test]
    fn path_messages_round_trip_and_reject_garbage() {
        for m in [
            PathMessage::Ping(7),
            PathMessage::Pong(u64::MAX),
            PathMessage::Close,
        ] {
            assert_eq!(PathMessage::decode(&m.encode()), Some(m));
        }
        assert_eq!(PathMessage::decode(&[]), None);
        assert_eq!(PathMessage::decode(&[1, 2, 3]), None);
        assert_eq!(PathMessage::decode(&[3; 9]), None);
        assert_eq!(PathMessage::decode(&[4, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(PathMessage::decode(&[1; 10]), None);
    }
}
