//! The simulated world: realms joined by NATs, hosts running natrix agents
//! over real authenticated sessions, lossy links, a virtual clock, a
//! transcript.
//!
//! # Model
//!
//! * A **realm** is an address space: the Internet, or the inside of one NAT.
//!   A NAT sits in its outside realm at its external IP; NATs nest (carrier-grade
//!   double NAT is a NAT inside another NAT's realm).
//! * A **host** lives in one realm at one address and has one main UDP
//!   socket bound there (and, for birthday attempts, extra sockets: below).
//!   Behind that socket run an [`Agent`] and a
//!   [`natrix_session::Endpoint`], exactly as a driver runs them: every
//!   received datagram goes through [`natrix_session::classify`] — keep-alives
//!   to the agent, session packets to the endpoint, anything else to the
//!   host's application inbox. Each host has a one-way access latency to the
//!   core; a datagram from `a` to `b` takes `lat(a) + lat(b)` (plus jitter on
//!   an impaired link). A host's NATs sit next to it: outbound translation
//!   happens when the datagram leaves, inbound filtering when it arrives.
//! * **Extra sockets** (N2, [`crate::sockets`]): a birthday attempt's
//!   `Transmit::Spray` opens socket number `socket` of the attempt the first
//!   time it is named, on the host's IP at a port of its own, so the host's
//!   NAT makes a new mapping for it; what arrives on it goes to
//!   `Agent::handle_spray_datagram`, and what the agent does not consume is
//!   the host's input as on the main socket. `Event::SprayEnded` closes the
//!   attempt's sockets but the one it keeps, which is pinned to the
//!   success's path: every datagram the host sends to that address
//!   (keep-alives, session packets, connection and application datagrams)
//!   leaves from it. A datagram to a closed socket is dropped
//!   ([`Drop::ClosedPort`]). At most [`MAX_PINNED`](crate::sockets::MAX_PINNED)
//!   pinned sockets per host (the oldest closes first); a restart or a new
//!   identity closes them all. A `Transmit::Spray` counts in
//!   [`Host::datagrams_sent`] like a `Transmit::Datagram` (and in
//!   [`Host::spray_datagrams_sent`]).
//! * **Identity**: every host has an X25519 key derived from the world seed
//!   and its host index ([`World::add_host`]); its node id — the agent's id —
//!   is the key's [`node_id`](natrix_session::PublicKey::node_id) (S1).
//!   [`World::new_identity`] gives a host a fresh key (a sybil's trick).
//! * **Sessions** are real Noise IK sessions. [`World::connect`] makes the
//!   client's endpoint dial the server's key at the server's address; the
//!   handshake, the sealed control messages and the session's own
//!   keep-alives and clock pings travel as UDP datagrams through the NATs
//!   like anything else, so mapping, filtering and binding lifetime all
//!   apply: the address a server's session sees is the client's NAT mapping,
//!   a rebinding moves the session (`SessionEvent::AddrChanged`, S6), and a
//!   binding that expires between two session keep-alives (10 s idle by
//!   default, [`World::session_config`]) loses the packets sent to it.
//! * **Control messages**: an agent's `Transmit::Control` goes to
//!   `Endpoint::send_reliable` on the session channel
//!   [`Channel::wire_byte`](natrix_proto::Channel::wire_byte) names — the
//!   numbers driver-core uses: 1 rendezvous, 2 reflex request, 3 reflex
//!   response (and 7 for natrix's own messages). The session retransmits it
//!   until the peer acknowledges it (or gives up after its
//!   `reliable_timeout`, 5 s); the receiver's endpoint opens it, delivers
//!   each message once, and the payload goes to `Agent::handle_control`
//!   with the session's authenticated source address. Other channels (the
//!   driver's announcements, directory and data) are not used here. Session
//!   events drive the agent: `Up` and `AddrChanged` → `handle_session_up`
//!   (and the handshake RTT → `handle_rtt`), `Down` → `handle_session_down`,
//!   `ClockOffset` → `handle_rtt` and `handle_clock_offset`.
//! * **One lossy link**: every datagram — keep-alives, application
//!   datagrams and session datagrams (handshakes, sealed control messages,
//!   acknowledgements, the session's keep-alives and clock pings) — suffers
//!   [`LinkConfig`]'s loss, duplication and jitter. The rendezvous assumes
//!   its control messages arrive (as Net's reliable control channel
//!   guaranteed); the session's reliable delivery provides that, and
//!   handshakes retry on their own. [`LinkConfig::impair_sessions`] off puts
//!   session datagrams on a clean class instead (no loss, duplication or
//!   jitter, and no draws from the world's generator): for tests that study
//!   keep-alive loss alone.
//! * **Clocks**: virtual time is the one true time. Each host's wall clock
//!   (the `wall_ms` its agent and endpoint are given) is off from it by the
//!   host's [`clock_skew_ms`](Host::clock_skew_ms). The session measures each
//!   peer's offset NTP-style (the initiator from the handshake, the responder
//!   from a clock ping right after); [`World::clock_offset_estimates`] off
//!   withholds those estimates from the agents.
//! * **Announcements** stay out of band: when a host's agent publishes a
//!   (class, reflex), every other host learns it at once, and a host added
//!   later learns every announcement already made (the mesh's gossip — a
//!   driver's channel 4 — is not modelled; announcements are assumed
//!   authenticated by the mesh). As in a driver, a new classification is
//!   also a network change for the host's own connections: relayed ones
//!   retry their upgrades at once ([`World::network_changed`]).
//! * **Reflex checks** (C7, as the driver does): when a host's direct path
//!   dies or an upgrade fails, the host sends one standalone reflex probe to
//!   its first coordinator with a live session (answer discarded); a reflex
//!   that moved (a NAT rebinding) makes the agent sweep, and the new
//!   classification is announced and retries the upgrade.
//!
//! Everything random — loss, jitter, NAT ports, keys, Noise ephemerals,
//! session indices, reliable-delivery streams — derives from the world seed,
//! so a seed replays exactly.
//! The run loop jumps to the earliest of the next packet, the next agent
//! timeout and the next session timeout; it is bounded by a step budget and
//! panics (fails loudly) beyond it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use blake2::{Blake2s256, Digest};
use natrix_proto::spray::SprayOutcome;
use natrix_proto::wire::{NodeId, RendezvousMessage};
use natrix_proto::{
    Agent, Announcement, Channel, Config, DatagramVerdict, Event, Instant, Rng, Transmit,
};
use natrix_session::path::{Applied, ChangeReason, PathConfig, PathEvent, PathInfo, RelayRoute};
use natrix_session::relay::{
    RelayConfig, RelayFrame, RelayServer, encode_forward_into, encode_refused,
};
use natrix_session::{
    DatagramKind, Endpoint, Keypair, MAX_PACKET, MAX_PAYLOAD, PublicKey, Received, SendError,
    SessionConfig, SessionEvent,
};

use crate::conn::{CH_DATA, CH_RELAY, ConnDatagram, HostConns, RefusalNotice, kind_of};
use crate::nat::{Nat, NatConfig};
use crate::sockets::{SendFrom, SpraySockets};

/// Appends a line to the transcript, formatting only when one is recorded.
macro_rules! log {
    ($w:expr, $($arg:tt)*) => {
        if $w.transcript.is_some() {
            let line = format!($($arg)*);
            $w.push_log(&line);
        }
    };
}

/// Wall-clock Unix milliseconds at virtual time zero.
pub const WALL_EPOCH_MS: u64 = 1_767_225_600_000;

/// Index of a host in the world.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostId(pub usize);

/// Index of a NAT in the world.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NatId(pub usize);

/// An address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Realm {
    /// The public Internet.
    Internet,
    /// The inside of a NAT.
    Behind(NatId),
}

/// Link impairments. Keep-alives and application datagrams always suffer
/// them; session datagrams too unless [`impair_sessions`](Self::impair_sessions)
/// is turned off.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkConfig {
    /// Probability a datagram is lost.
    pub loss: f64,
    /// Probability a datagram is delivered twice.
    pub duplicate: f64,
    /// Extra random delay, uniform in `0..=jitter` (reorders datagrams).
    pub jitter: Duration,
    /// Whether session datagrams (handshakes, sealed control messages and
    /// their acknowledgements, the session's keep-alives and clock pings)
    /// suffer loss, duplication and jitter too. On by default: control
    /// messages travel with the session's reliable delivery
    /// (`Endpoint::send_reliable`), which retransmits what is lost. Off, they
    /// cross a clean link class (no loss, no duplication, no jitter, no
    /// random draws), so only keep-alives and application datagrams are
    /// impaired.
    pub impair_sessions: bool,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            loss: 0.0,
            duplicate: 0.0,
            jitter: Duration::ZERO,
            impair_sessions: true,
        }
    }
}

/// One host.
#[derive(Debug)]
pub struct Host {
    /// A name for transcripts.
    pub name: String,
    /// Its node id: its key's [`node_id`](PublicKey::node_id).
    pub id: NodeId,
    /// Its public key.
    pub key: PublicKey,
    /// Where it lives.
    pub realm: Realm,
    /// Its address in that realm (the socket the agent and endpoint share).
    pub addr: SocketAddr,
    /// One-way latency to the core.
    pub latency: Duration,
    /// Its wall clock's offset from true time, in ms (may be negative); see
    /// [`World::set_clock_skew`].
    pub clock_skew_ms: i64,
    /// The agent.
    pub agent: Agent,
    /// The session endpoint.
    pub endpoint: Endpoint,
    /// Every agent event, with its time.
    pub events: Vec<(Instant, Event)>,
    /// Every session event, with its time.
    pub session_events: Vec<(Instant, SessionEvent)>,
    /// Datagrams that are neither keep-alives nor session packets:
    /// (time, source, bytes).
    pub app_inbox: Vec<(Instant, SocketAddr, Vec<u8>)>,
    /// Addresses the agent was introduced to (peer reflexes of introduces).
    pub introduced: BTreeSet<SocketAddr>,
    /// Sources of datagrams the host received.
    pub observed: BTreeSet<SocketAddr>,
    /// Datagrams the agent asked to send to an address it was never
    /// introduced to and never received anything from, on an IP no
    /// introduced address has (see [`spread_sends`](Self::spread_sends)).
    pub unexplained_sends: Vec<SocketAddr>,
    /// Datagrams the agent sent to an address it was neither introduced to
    /// nor received anything from, but on the IP of an address it was
    /// introduced to: N1's prediction windows and N2's probes, which N3
    /// confines to the introduced IP (any port). Explained, and counted.
    pub spread_sends: u64,
    /// Datagrams the agent sent (keep-alives), from whichever socket: its
    /// `Transmit::Datagram`s and its `Transmit::Spray`s (N2) alike.
    pub datagrams_sent: u64,
    /// The agent's datagrams ([`datagrams_sent`](Self::datagrams_sent)) by
    /// destination IP.
    pub datagrams_by_ip: BTreeMap<IpAddr, u64>,
    /// Of [`datagrams_sent`](Self::datagrams_sent), the `Transmit::Spray`s
    /// (N2: an opener's one datagram per socket, and keep-alives from the
    /// socket it kept). A prober's probes are `Transmit::Datagram`s.
    pub spray_datagrams_sent: u64,
    /// Its extra sockets (N2): the ones its agent's birthday attempts open,
    /// and those it kept, each pinned to a path. See [`crate::sockets`].
    pub sockets: SpraySockets,
    /// Datagrams the session endpoint sent (handshakes, sealed control
    /// messages, session keep-alives and clock pings).
    pub session_datagrams_sent: u64,
    /// Its connections, relay routes and (when it serves) relay server.
    pub conns: HostConns,
    /// How many times the host took a new identity.
    generation: u32,
    /// How many times the host restarted ([`World::restart_host`]).
    restarts: u32,
    /// The agent's seed as given to [`World::add_host`].
    agent_seed: u64,
}

impl Host {
    /// Records where the agent sends a datagram (by IP in
    /// [`datagrams_by_ip`](Self::datagrams_by_ip)): an address it was
    /// introduced to or heard from is explained; another port of an
    /// introduced IP too, counted in [`spread_sends`](Self::spread_sends);
    /// anything else is an [unexplained send](Self::unexplained_sends).
    fn record_send(&mut self, to: SocketAddr) {
        *self.datagrams_by_ip.entry(to.ip()).or_default() += 1;
        if self.introduced.contains(&to) || self.observed.contains(&to) {
            return;
        }
        if self.introduced.iter().any(|i| i.ip() == to.ip()) {
            self.spread_sends += 1;
        } else {
            self.unexplained_sends.push(to);
        }
    }
}

#[derive(Debug)]
struct NatNode {
    nat: Nat,
    outside: Realm,
}

/// A datagram arriving in `realm` addressed to `dst`.
#[derive(Clone, Debug)]
struct InFlight {
    realm: Realm,
    src: SocketAddr,
    dst: SocketAddr,
    bytes: Vec<u8>,
}

/// Why a datagram did not arrive (counted per reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Drop {
    /// Link loss.
    Loss,
    /// A NAT's filter (or no mapping) refused it.
    Filtered,
    /// Nobody has that address.
    Unroutable,
    /// Hairpinning is off.
    NoHairpin,
    /// A host has the IP but no socket open on the port (an extra socket
    /// that closed, N2: [`Host::sockets`]).
    ClosedPort,
    /// The link between the two hosts is blackholed ([`World::set_blackhole`]).
    Blackhole,
}

/// The simulated world.
pub struct World {
    seed: u64,
    now: Instant,
    rng: Rng,
    /// Hosts, indexed by [`HostId`].
    pub hosts: Vec<Host>,
    nats: Vec<NatNode>,
    queue: BTreeMap<(Instant, u64), InFlight>,
    seq: u64,
    /// Datagram impairments.
    pub link: LinkConfig,
    transcript: Option<String>,
    steps: u64,
    /// The step budget.
    pub max_steps: u64,
    /// Every datagram that was sent, by destination IP (the IP it was addressed
    /// to when it left its sender).
    pub sent_to_ip: BTreeMap<IpAddr, u64>,
    /// Datagrams that did not arrive, by reason.
    pub drops: BTreeMap<Drop, u64>,
    /// Loss decisions of impaired datagrams in order (true = lost), for
    /// determinism tests.
    pub loss_pattern: Vec<bool>,
    /// Fault injection on control messages: return true to drop an agent's
    /// control message (from, to, channel, bytes) before it is sealed.
    pub control_filter: Option<ControlFilter>,
    /// Whether the sessions' clock offset estimates reach the agents
    /// (`Agent::handle_clock_offset`). On by default; off, the agents read
    /// every peer's wall-clock time as their own.
    pub clock_offset_estimates: bool,
    /// The session configuration of hosts added (or re-keyed) from now on.
    pub session_config: SessionConfig,
    /// The connection configuration of hosts added (or re-keyed) from now on.
    pub path_config: PathConfig,
    /// Host pairs whose direct datagrams are dropped (both ways).
    blackholes: BTreeSet<(HostId, HostId)>,
    /// Seal and poll buffer.
    scratch: Box<[u8]>,
    /// Relay frame buffer.
    frame_buf: Box<[u8]>,
    /// Second seal buffer (a relay frame sealed on a coordinator session).
    seal_buf: Box<[u8]>,
}

/// See [`World::control_filter`].
pub type ControlFilter = Box<dyn FnMut(HostId, HostId, Channel, &[u8]) -> bool>;

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("seed", &self.seed)
            .field("now", &self.now)
            .field("hosts", &self.hosts.len())
            .field("nats", &self.nats.len())
            .field("queued", &self.queue.len())
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}

/// 32 bytes for `purpose`, from the world seed, a host index and the host's
/// identity generation.
fn derive(purpose: &[u8], seed: u64, host: usize, generation: u32) -> [u8; 32] {
    let mut h = Blake2s256::new();
    h.update(b"natrix-sim/");
    h.update(purpose);
    h.update(seed.to_be_bytes());
    h.update((host as u64).to_be_bytes());
    h.update(generation.to_be_bytes());
    h.finalize().into()
}

impl World {
    /// An empty world whose randomness all comes from `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        World {
            seed,
            now: Instant::ZERO,
            rng: Rng::new(seed),
            hosts: Vec::new(),
            nats: Vec::new(),
            queue: BTreeMap::new(),
            seq: 0,
            link: LinkConfig::default(),
            transcript: None,
            steps: 0,
            max_steps: 2_000_000,
            sent_to_ip: BTreeMap::new(),
            drops: BTreeMap::new(),
            loss_pattern: Vec::new(),
            control_filter: None,
            clock_offset_estimates: true,
            session_config: SessionConfig::default(),
            path_config: PathConfig::default(),
            blackholes: BTreeSet::new(),
            scratch: vec![0u8; MAX_PACKET].into_boxed_slice(),
            frame_buf: vec![0u8; MAX_PAYLOAD].into_boxed_slice(),
            seal_buf: vec![0u8; MAX_PACKET].into_boxed_slice(),
        }
    }

    /// The seed the world was made with.
    #[must_use]
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Starts recording a transcript of everything that happens.
    pub fn record(&mut self) {
        self.transcript = Some(String::new());
    }

    /// The transcript (empty unless [`record`](Self::record) was called).
    #[must_use]
    pub fn transcript(&self) -> &str {
        self.transcript.as_deref().unwrap_or("")
    }

    fn push_log(&mut self, line: &str) {
        let now = self.now.since_origin();
        if let Some(t) = self.transcript.as_mut() {
            let _ = writeln!(t, "{now:>12?} {line}");
        }
    }

    /// Virtual time now.
    #[must_use]
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Adds a NAT in `outside` at `external_ip`; its inside is `Realm::Behind(id)`.
    pub fn add_nat(&mut self, config: NatConfig, outside: Realm, external_ip: IpAddr) -> NatId {
        self.nats.push(NatNode {
            nat: Nat::new(config, external_ip),
            outside,
        });
        NatId(self.nats.len() - 1)
    }

    /// A NAT, for inspection.
    #[must_use]
    pub fn nat(&self, id: NatId) -> &Nat {
        &self.nats[id.0].nat
    }

    /// A NAT, to change its behaviour (say, its binding lifetime) mid-run.
    pub fn nat_mut(&mut self, id: NatId) -> &mut Nat {
        &mut self.nats[id.0].nat
    }

    /// Drops every mapping of a NAT (reboot / rebinding).
    pub fn flush_nat(&mut self, id: NatId) {
        self.nats[id.0].nat.flush();
        log!(self, "nat {} flushed", id.0);
    }

    /// The key pair and endpoint seed of host number `index`, identity
    /// `generation`: both derived from the world seed.
    fn identity(&self, index: usize, generation: u32) -> (Keypair, [u8; 32]) {
        let secret = derive(b"host-key/v1", self.seed, index, generation);
        let seed = derive(b"endpoint-seed/v1", self.seed, index, generation);
        (Keypair::from_secret(secret), seed)
    }

    /// A fresh agent for a host at `addr` that knows every announcement made
    /// so far.
    fn new_agent(&self, id: NodeId, addr: SocketAddr, config: Config, seed: u64) -> Agent {
        let mut agent = Agent::new(id, addr, config, seed);
        agent.set_interface_addrs(&[addr.ip()]);
        // A newcomer learns what everyone already announced.
        for h in &self.hosts {
            if let Some(a) = h.agent.classification() {
                let _ = agent.handle_announcement(h.id, a);
            }
        }
        agent
    }

    /// Adds a host whose socket is bound at `addr` in `realm`, running an
    /// agent with `config` and `seed` and a session endpoint with
    /// [`session_config`](Self::session_config). Its key pair and the
    /// endpoint's random seed derive from the world seed and the host's
    /// index; its node id is the key's.
    pub fn add_host(
        &mut self,
        name: &str,
        realm: Realm,
        addr: SocketAddr,
        latency: Duration,
        config: Config,
        seed: u64,
    ) -> HostId {
        let index = self.hosts.len();
        let (keypair, endpoint_seed) = self.identity(index, 0);
        let key = keypair.public();
        let id = key.node_id();
        let endpoint = Endpoint::new(keypair, self.session_config.clone(), endpoint_seed);
        let agent = self.new_agent(id, addr, config, seed);
        self.hosts.push(Host {
            name: name.to_owned(),
            id,
            key,
            realm,
            addr,
            latency,
            clock_skew_ms: 0,
            agent,
            endpoint,
            events: Vec::new(),
            session_events: Vec::new(),
            app_inbox: Vec::new(),
            introduced: BTreeSet::new(),
            observed: BTreeSet::new(),
            unexplained_sends: Vec::new(),
            spread_sends: 0,
            datagrams_sent: 0,
            datagrams_by_ip: BTreeMap::new(),
            spray_datagrams_sent: 0,
            sockets: SpraySockets::default(),
            session_datagrams_sent: 0,
            conns: HostConns::new(self.path_config),
            generation: 0,
            restarts: 0,
            agent_seed: seed,
        });
        log!(self, "{name} at {addr} is {key} ({id})");
        HostId(index)
    }

    /// Gives host `h` a new identity: a fresh key (so a fresh node id), a
    /// fresh endpoint and a fresh agent with the same configuration, on the
    /// same socket. Its sessions are abandoned without a word: their peers
    /// notice only when the sessions go silent (a sybil's way). Returns the
    /// new node id.
    pub fn new_identity(&mut self, h: HostId) -> NodeId {
        let generation = self.hosts[h.0].generation + 1;
        let (keypair, endpoint_seed) = self.identity(h.0, generation);
        let key = keypair.public();
        let id = key.node_id();
        let endpoint = Endpoint::new(keypair, self.session_config.clone(), endpoint_seed);
        let (addr, config) = (self.hosts[h.0].addr, self.hosts[h.0].agent.config().clone());
        let seed = self.hosts[h.0].agent_seed ^ u64::from(generation).rotate_left(32);
        let agent = self.new_agent(id, addr, config, seed);
        let host = &mut self.hosts[h.0];
        host.generation = generation;
        host.key = key;
        host.id = id;
        host.endpoint = endpoint;
        host.agent = agent;
        // A new process: the old one's extra sockets are closed.
        host.sockets.clear();
        let relay = host.conns.relay.as_ref().map(|r| *r.config());
        host.conns = HostConns::new(self.path_config);
        host.conns.relay = relay.map(RelayServer::new);
        log!(self, "{} is now {key} ({id})", self.hosts[h.0].name);
        id
    }

    /// Restarts host `h` with the same key: a fresh endpoint, agent,
    /// connection manager and relay server (same configurations); every
    /// session, punch, connection and circuit it had is forgotten without a
    /// word, as when a process restarts. Its peers notice when their
    /// sessions go silent (and re-dial).
    pub fn restart_host(&mut self, h: HostId) {
        let restarts = self.hosts[h.0].restarts + 1;
        let generation = self.hosts[h.0].generation;
        let (keypair, _) = self.identity(h.0, generation);
        let mut seed = derive(b"endpoint-restart/v1", self.seed, h.0, generation);
        seed[..4].copy_from_slice(&restarts.to_be_bytes());
        let endpoint = Endpoint::new(keypair, self.session_config.clone(), seed);
        let host = &self.hosts[h.0];
        let (id, addr, config) = (host.id, host.addr, host.agent.config().clone());
        let class = host.agent.classification();
        let agent_seed = host.agent_seed ^ u64::from(restarts).rotate_left(48);
        let mut agent = self.new_agent(id, addr, config, agent_seed);
        if let Some(c) = class {
            agent.set_local_classification(c.class, c.reflex);
        }
        let host = &mut self.hosts[h.0];
        host.restarts = restarts;
        host.endpoint = endpoint;
        host.agent = agent;
        host.sockets.clear();
        let relay = host.conns.relay.as_ref().map(|r| *r.config());
        host.conns = HostConns::new(self.path_config);
        host.conns.relay = relay.map(RelayServer::new);
        log!(self, "{} restarted", self.hosts[h.0].name);
    }

    /// The host with node id `id`.
    #[must_use]
    pub fn host_by_node(&self, id: NodeId) -> Option<HostId> {
        self.hosts.iter().position(|h| h.id == id).map(HostId)
    }

    /// A host.
    #[must_use]
    pub fn host(&self, h: HostId) -> &Host {
        &self.hosts[h.0]
    }

    /// A host's node id.
    #[must_use]
    pub fn id(&self, h: HostId) -> NodeId {
        self.hosts[h.0].id
    }

    /// A host's agent.
    pub fn agent(&mut self, h: HostId) -> &mut Agent {
        &mut self.hosts[h.0].agent
    }

    /// A host's session endpoint, for inspection.
    #[must_use]
    pub fn endpoint(&self, h: HostId) -> &Endpoint {
        &self.hosts[h.0].endpoint
    }

    /// Sets a host's wall-clock skew: its clock reads true time plus `ms`.
    /// Set it before the host's sessions come up: they estimate offsets then.
    pub fn set_clock_skew(&mut self, h: HostId, ms: i64) {
        self.hosts[h.0].clock_skew_ms = ms;
        log!(self, "{} clock skew {ms} ms", self.hosts[h.0].name);
    }

    /// What host `h`'s wall clock reads now.
    #[must_use]
    pub fn wall_ms(&self, h: HostId) -> u64 {
        self.wall_ms_at(h, self.now)
    }

    /// What host `h`'s wall clock reads at virtual time `at`.
    fn wall_ms_at(&self, h: HostId, at: Instant) -> u64 {
        let ms = WALL_EPOCH_MS.saturating_add(at.as_nanos() / 1_000_000);
        ms.saturating_add_signed(self.hosts[h.0].clock_skew_ms)
    }

    fn push(&mut self, at: Instant, item: InFlight) {
        self.seq += 1;
        self.queue.insert((at, self.seq), item);
    }

    // ------------------------------------------------------------- routing

    /// Translates a datagram upward from `realm` until it reaches the realm
    /// that holds `dst`'s IP. Returns that realm and the translated source,
    /// or why it cannot go on.
    fn route_up(
        &mut self,
        mut realm: Realm,
        mut src: SocketAddr,
        dst: SocketAddr,
    ) -> Result<(Realm, SocketAddr), Drop> {
        for _ in 0..16 {
            if self.holds(realm, dst.ip()) {
                return Ok((realm, src));
            }
            let Realm::Behind(n) = realm else {
                return Err(Drop::Unroutable);
            };
            let now = self.now;
            let node = &mut self.nats[n.0];
            if node.nat.external_ip == dst.ip() {
                // To our own NAT's outside: hairpin or nothing.
                if !node.nat.config.hairpin {
                    return Err(Drop::NoHairpin);
                }
                let ext = node
                    .nat
                    .outbound(now, src, dst, &mut self.rng)
                    .ok_or(Drop::Filtered)?;
                return Ok((node.outside, ext));
            }
            src = node
                .nat
                .outbound(now, src, dst, &mut self.rng)
                .ok_or(Drop::Filtered)?;
            realm = node.outside;
        }
        Err(Drop::Unroutable)
    }

    /// The source address a datagram from `h` to `dst` would carry where it
    /// meets `dst`'s realm, following `h`'s live NAT mappings without
    /// creating or refreshing any; `None` when some NAT on the way has no
    /// live mapping for it (or `dst` is not routable from `h`). The datagram
    /// leaves from the socket [`source_socket`](Self::source_socket) names.
    #[must_use]
    pub fn mapping(&self, h: HostId, dst: SocketAddr) -> Option<SocketAddr> {
        let (mut realm, mut src) = (self.hosts[h.0].realm, self.source_socket(h, dst));
        for _ in 0..16 {
            if self.holds(realm, dst.ip()) {
                return Some(src);
            }
            let Realm::Behind(n) = realm else {
                return None;
            };
            let node = &self.nats[n.0];
            src = node.nat.lookup(self.now, src, dst)?;
            realm = node.outside;
        }
        None
    }

    /// The local address a datagram of `h` to `dst` leaves from: the socket
    /// pinned to `dst` (N2: kept by a birthday attempt), else the main one.
    #[must_use]
    pub fn source_socket(&self, h: HostId, dst: SocketAddr) -> SocketAddr {
        let host = &self.hosts[h.0];
        host.sockets.route(dst).unwrap_or(host.addr)
    }

    /// Whether `ip` is a host's or a NAT's external address in `realm`.
    fn holds(&self, realm: Realm, ip: IpAddr) -> bool {
        self.hosts
            .iter()
            .any(|h| h.realm == realm && h.addr.ip() == ip)
            || self
                .nats
                .iter()
                .any(|n| n.outside == realm && n.nat.external_ip == ip)
    }

    /// Follows `dst` down from `realm` through NAT mappings, filtering at
    /// `self.now`. With `filter == false` only looks (for latency estimates).
    /// Returns the host and the local address reached: its main socket's or
    /// one of its extra sockets' ([`Host::sockets`]); a host's IP with no
    /// socket open on the port is a closed port.
    fn route_down(
        &mut self,
        mut realm: Realm,
        src: SocketAddr,
        mut dst: SocketAddr,
        filter: bool,
    ) -> Result<(HostId, SocketAddr), Drop> {
        for _ in 0..16 {
            let on_ip = |h: &Host| h.realm == realm && h.addr.ip() == dst.ip();
            if let Some(h) = self
                .hosts
                .iter()
                .position(|h| on_ip(h) && (h.addr == dst || h.sockets.get(dst).is_some()))
            {
                return Ok((HostId(h), dst));
            }
            if self.hosts.iter().any(on_ip) {
                return Err(Drop::ClosedPort);
            }
            let Some(n) = self
                .nats
                .iter()
                .position(|n| n.outside == realm && n.nat.external_ip == dst.ip())
            else {
                return Err(Drop::Unroutable);
            };
            let now = self.now;
            let nat = &mut self.nats[n].nat;
            let internal = if filter {
                nat.inbound(now, src, dst.port())
            } else {
                nat.peek(dst.port())
            };
            dst = internal.ok_or(Drop::Filtered)?;
            realm = Realm::Behind(NatId(n));
        }
        Err(Drop::Unroutable)
    }

    fn count_drop(&mut self, why: Drop) {
        *self.drops.entry(why).or_default() += 1;
    }

    fn chance(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        // 53 random bits → [0, 1).
        let x = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        x < p
    }

    fn jitter(&mut self) -> Duration {
        let j = self.link.jitter.as_micros() as u64;
        if j == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(self.rng.next_u64() % (j + 1))
    }

    /// Sends a datagram from host `from` (from its bound socket) to `dst`,
    /// on the impaired link class (as the agent's keep-alives and the
    /// application's datagrams go).
    pub fn send_datagram(&mut self, from: HostId, dst: SocketAddr, bytes: &[u8]) {
        self.transmit(from, dst, bytes, true, "");
    }

    /// A session datagram from `from`'s endpoint: on the impaired link class
    /// unless [`LinkConfig::impair_sessions`] is off.
    fn send_session_datagram(&mut self, from: HostId, dst: SocketAddr, bytes: &[u8]) {
        self.hosts[from.0].session_datagrams_sent += 1;
        let impaired = self.link.impair_sessions;
        self.transmit(from, dst, bytes, impaired, "session ");
    }

    /// Puts a datagram on the wire from the socket of `from` that
    /// [`source_socket`](Self::source_socket) names for `dst`.
    fn transmit(
        &mut self,
        from: HostId,
        dst: SocketAddr,
        bytes: &[u8],
        impaired: bool,
        kind: &str,
    ) {
        let local = self.source_socket(from, dst);
        self.transmit_from(from, local, dst, bytes, impaired, kind);
    }

    /// Puts a datagram on the wire from `from`'s socket at `local`. Only an
    /// impaired datagram draws from the world's generator for loss,
    /// duplication and jitter (in that order).
    fn transmit_from(
        &mut self,
        from: HostId,
        local: SocketAddr,
        dst: SocketAddr,
        bytes: &[u8],
        impaired: bool,
        kind: &str,
    ) {
        *self.sent_to_ip.entry(dst.ip()).or_default() += 1;
        let lost = impaired && self.chance(self.link.loss);
        if impaired {
            self.loss_pattern.push(lost);
        }
        let realm = self.hosts[from.0].realm;
        if local != self.hosts[from.0].addr {
            self.hosts[from.0].sockets.count_sent(local);
        }
        let routed = self.route_up(realm, local, dst);
        let name = self.hosts[from.0].name.clone();
        let (meet, src) = match routed {
            Ok(x) => x,
            Err(why) => {
                log!(self, "{name} -> {dst} {kind}dropped {why:?}");
                return self.count_drop(why);
            }
        };
        if lost {
            log!(self, "{name} ({src}) -> {dst} {kind}lost");
            return self.count_drop(Drop::Loss);
        }
        let dst_host = self.route_down(meet, src, dst, false).ok().map(|(h, _)| h);
        if let Some(to) = dst_host {
            if self.blackholed(from, to) {
                log!(self, "{name} ({src}) -> {dst} {kind}blackholed");
                return self.count_drop(Drop::Blackhole);
            }
        }
        let dst_latency = dst_host.map_or(Duration::from_millis(10), |h| self.hosts[h.0].latency);
        let copies = if impaired && self.chance(self.link.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let jitter = if impaired {
                self.jitter()
            } else {
                Duration::ZERO
            };
            let at = self.now + self.hosts[from.0].latency + dst_latency + jitter;
            log!(
                self,
                "{name} ({src}) -> {dst} {kind}{} B, arrives {:?}",
                bytes.len(),
                at.since_origin()
            );
            self.push(
                at,
                InFlight {
                    realm: meet,
                    src,
                    dst,
                    bytes: bytes.to_vec(),
                },
            );
        }
    }

    /// Drops every datagram between hosts `a` and `b` (both ways) while
    /// `on`: a direct path gone dark. Datagrams through a third host (a
    /// relay) pass; datagrams already in flight arrive.
    pub fn set_blackhole(&mut self, a: HostId, b: HostId, on: bool) {
        let pair = (a.min(b), a.max(b));
        if on {
            self.blackholes.insert(pair);
        } else {
            self.blackholes.remove(&pair);
        }
        log!(
            self,
            "link {} <-> {} blackholed: {on}",
            self.hosts[a.0].name,
            self.hosts[b.0].name
        );
    }

    fn blackholed(&self, a: HostId, b: HostId) -> bool {
        !self.blackholes.is_empty() && self.blackholes.contains(&(a.min(b), a.max(b)))
    }

    // ---------------------------------------------------------- connections

    /// Makes host `h` a relay (S3): forward frames from its peers are
    /// forwarded under `config`'s quotas ([`RelayServer`]).
    pub fn enable_relay(&mut self, h: HostId, config: RelayConfig) {
        self.hosts[h.0].conns.relay = Some(RelayServer::new(config));
    }

    /// Opens a connection from `a` to `b` through coordinator `via` (which
    /// `a` must have dialled, [`connect`](Self::connect)): `a`'s endpoint
    /// dials `b`'s key over the relay route, and `a`'s connection manager
    /// starts on the relay and drives upgrades (the first at once, once the
    /// session is up). `b` accepts when the session comes up there.
    ///
    /// # Errors
    /// When `a` never dialled `via`, or the connection manager is full.
    pub fn open_connection(
        &mut self,
        a: HostId,
        b: HostId,
        via: HostId,
    ) -> Result<PathInfo, String> {
        let slot = self.hosts[a.0].conns.slot_of(via).ok_or_else(|| {
            format!(
                "{} never dialled {}",
                self.hosts[a.0].name, self.hosts[via.0].name
            )
        })?;
        let (key, node, via_id) = (
            self.hosts[b.0].key,
            self.hosts[b.0].id,
            self.hosts[via.0].id,
        );
        let route = RelayRoute {
            via: slot,
            peer: node,
        };
        let (now, wall) = (self.now, self.wall_ms(a));
        let host = &mut self.hosts[a.0];
        let info = host
            .conns
            .paths
            .open(now, key, route, via_id, true)
            .map_err(|e| e.to_string())?;
        host.conns.dialled.insert(key, slot);
        let r = host.endpoint.connect(now, wall, key, route.addr());
        log!(
            self,
            "{} opens a connection to {node} via {via_id}: {r:?}",
            self.hosts[a.0].name
        );
        self.drain(a);
        Ok(info)
    }

    /// `a` sends an application datagram to `b` on their connection (the
    /// session's data channel, over whatever path the connection is on).
    /// Returns whether it was sent or queued behind the session's handshake.
    pub fn conn_send(&mut self, a: HostId, b: HostId, bytes: &[u8]) -> bool {
        let key = self.hosts[b.0].key;
        let now = self.now;
        let host = &mut self.hosts[a.0];
        if host.conns.paths.on_sent(now, &key, bytes.len()).is_none() {
            return false;
        }
        let mut out = std::mem::take(&mut self.scratch);
        let r = host.endpoint.send(now, &key, CH_DATA, bytes, &mut out);
        let ok = match r {
            Ok(Some((to, len))) => {
                self.send_packet(a, to, &out[..len]);
                true
            }
            Ok(None) => true,
            Err(SendError::NoSession) => false,
            Err(e) => {
                log!(self, "{}: data not sent: {e}", self.hosts[a.0].name);
                false
            }
        };
        self.scratch = out;
        self.drain(a);
        ok
    }

    /// `a`'s connection to `b`, now (D2).
    #[must_use]
    pub fn conn_info(&self, a: HostId, b: HostId) -> Option<PathInfo> {
        self.hosts[a.0].conns.paths.info(&self.hosts[b.0].key)
    }

    /// Host `h`'s network changed (a new interface address, a new reflex, a
    /// rebinding): its relayed connections retry their upgrades now.
    pub fn network_changed(&mut self, h: HostId) {
        let now = self.now;
        self.hosts[h.0].conns.paths.network_changed(now);
        self.drain(h);
    }

    // ------------------------------------------------------------- sessions

    /// `client` dials `server` (which must be on the Internet): its endpoint
    /// starts a Noise IK handshake to the server's key at the server's
    /// address. The session comes up when the handshake completes over the
    /// simulated network (one round trip; the server's side one crossing
    /// later, when the client's first transport packet confirms the keys);
    /// each side's agent then hears `handle_session_up` with the address its
    /// session sees — for the server, the client's NAT mapping. A dial the
    /// endpoint refuses (own key, S1 conflict, too many sessions) is logged
    /// and changes nothing; one that gets no answer ends in
    /// `SessionEvent::HandshakeFailed` after the handshake timeout.
    pub fn connect(&mut self, client: HostId, server: HostId) {
        assert_eq!(
            self.hosts[server.0].realm,
            Realm::Internet,
            "servers live on the Internet"
        );
        let (key, addr) = (self.hosts[server.0].key, self.hosts[server.0].addr);
        let conns = &mut self.hosts[client.0].conns;
        if conns.slot_of(server).is_none() {
            conns.coordinators.push(server);
        }
        let (now, wall) = (self.now, self.wall_ms(client));
        let result = self.hosts[client.0].endpoint.connect(now, wall, key, addr);
        log!(
            self,
            "{} dials {} at {addr}: {result:?}",
            self.hosts[client.0].name,
            self.hosts[server.0].name
        );
        self.drain(client);
    }

    /// Closes the session between `client` and `server` on both sides at
    /// once (each agent hears `handle_session_down` if its side was up).
    pub fn disconnect(&mut self, client: HostId, server: HostId) {
        let now = self.now;
        let (ck, sk) = (self.hosts[client.0].key, self.hosts[server.0].key);
        self.hosts[server.0].endpoint.close(now, &ck);
        self.hosts[client.0].endpoint.close(now, &sk);
        self.drain(server);
        self.drain(client);
    }

    /// Whether `client`'s session to `server` is established (on the
    /// client's side).
    #[must_use]
    pub fn connected(&self, client: HostId, server: HostId) -> bool {
        let key = self.hosts[server.0].key;
        self.hosts[client.0].endpoint.session(&key).is_some()
    }

    /// The address `at`'s established session with `peer` sees `peer` at
    /// (for a server: the client's NAT mapping).
    #[must_use]
    pub fn session_addr(&self, at: HostId, peer: HostId) -> Option<SocketAddr> {
        let key = self.hosts[peer.0].key;
        self.hosts[at.0].endpoint.session(&key).map(|s| s.addr)
    }

    /// Hands an agent's control message to `from`'s session to node `to` for
    /// reliable delivery (`Endpoint::send_reliable`: sealed at once when the
    /// session is up, else when its handshake completes; retransmitted until
    /// acknowledged). Returns whether the endpoint took it.
    fn send_control(&mut self, from: HostId, to: NodeId, channel: Channel, bytes: &[u8]) -> bool {
        let Some(key) = self.hosts[from.0].endpoint.peer_by_node_id(to) else {
            log!(
                self,
                "{} -> {to}: no session, control message dropped",
                self.hosts[from.0].name
            );
            return false;
        };
        let ch = channel.wire_byte();
        if let (Some(f), Some(to_host)) = (
            self.control_filter.as_mut(),
            self.hosts.iter().position(|h| h.id == to),
        ) {
            if f(from, HostId(to_host), channel, bytes) {
                log!(self, "control message dropped by the fault filter");
                return false;
            }
        }
        let now = self.now;
        let endpoint = &mut self.hosts[from.0].endpoint;
        let up = endpoint.session(&key).is_some();
        match endpoint.send_reliable(now, &key, ch, bytes) {
            Ok(()) if up => true,
            Ok(()) => {
                log!(
                    self,
                    "{} -> {to}: queued until the handshake completes",
                    self.hosts[from.0].name
                );
                true
            }
            Err(e) => {
                log!(self, "{} -> {to}: not sent: {e}", self.hosts[from.0].name);
                false
            }
        }
    }

    /// Sends a control message from `from`'s agent to `to` as if the agent
    /// had sent it: reliably, on `from`'s real session to `to` (for
    /// adversaries: any authenticated peer can send anything). Returns whether
    /// it was sent (or queued behind a handshake in progress); `false` when
    /// `from` has no session or handshake with `to`.
    pub fn inject_control(
        &mut self,
        from: HostId,
        to: HostId,
        channel: Channel,
        bytes: &[u8],
    ) -> bool {
        let to_id = self.hosts[to.0].id;
        let ok = self.send_control(from, to_id, channel, bytes);
        self.pump_endpoint(from);
        ok
    }

    // ------------------------------------------------------------- the loop

    /// Sends what the endpoint of `h` has queued and turns its events into
    /// agent calls. Returns whether there was anything.
    fn pump_endpoint(&mut self, h: HostId) -> bool {
        let mut any = false;
        loop {
            let mut buf = std::mem::take(&mut self.scratch);
            let next = self.hosts[h.0].endpoint.poll_transmit(&mut buf);
            if let Some((to, len)) = next {
                self.send_packet(h, to, &buf[..len]);
            }
            self.scratch = buf;
            if next.is_none() {
                break;
            }
            any = true;
        }
        while let Some(ev) = self.hosts[h.0].endpoint.poll_event() {
            any = true;
            self.session_event(h, ev);
        }
        any
    }

    /// One session event of host `h`: a connection peer's goes to the
    /// connection manager, any other to the agent (never one on a relay
    /// route: the agent must not see a relay route as a session address).
    fn session_event(&mut self, h: HostId, ev: SessionEvent) {
        let now = self.now;
        log!(self, "{} session {ev:?}", self.hosts[h.0].name);
        let estimates = self.clock_offset_estimates;
        self.hosts[h.0].session_events.push((now, ev.clone()));
        let conn_peer = match &ev {
            SessionEvent::Up { peer, addr, .. } => {
                self.hosts[h.0].conns.paths.contains(peer) || RelayRoute::is_relay(addr)
            }
            SessionEvent::AddrChanged { peer, old, new, .. } => {
                self.hosts[h.0].conns.paths.contains(peer)
                    || RelayRoute::is_relay(old)
                    || RelayRoute::is_relay(new)
            }
            SessionEvent::ClockOffset { peer, .. } | SessionEvent::Down { peer, .. } => {
                self.hosts[h.0].conns.paths.contains(peer)
            }
            SessionEvent::HandshakeFailed { peer, .. } => {
                self.hosts[h.0].conns.dialled.contains_key(peer)
            }
        };
        if conn_peer {
            self.conn_session_event(h, ev);
            return;
        }
        let host = &mut self.hosts[h.0];
        let agent = &mut host.agent;
        match ev {
            SessionEvent::Up {
                node, addr, rtt, ..
            } => {
                let _ = agent.handle_session_up(node, addr);
                if let Some(rtt) = rtt {
                    let _ = agent.handle_rtt(node, rtt);
                }
            }
            SessionEvent::AddrChanged { node, new, .. } => {
                let _ = agent.handle_session_up(node, new);
            }
            SessionEvent::ClockOffset {
                node,
                offset_ms,
                rtt,
                ..
            } => {
                let _ = agent.handle_rtt(node, rtt);
                if estimates {
                    let _ = agent.handle_clock_offset(node, offset_ms);
                }
            }
            SessionEvent::Down { peer, node, .. } => {
                agent.handle_session_down(now, node);
                if let Some(relay) = host.conns.relay.as_mut() {
                    relay.peer_gone(now, node);
                }
                self.redial(h, &peer);
            }
            SessionEvent::HandshakeFailed { peer, .. } => self.redial(h, &peer),
        }
    }

    /// A session of `h` with `peer` went down or its handshake failed: a
    /// connection `h` opened is dialled again over its relay route, and a
    /// coordinator of a host with connections is dialled again at its
    /// address, at once (as a driver does). Without connections nothing is
    /// re-dialled.
    fn redial(&mut self, h: HostId, peer: &PublicKey) {
        let (now, wall) = (self.now, self.wall_ms(h));
        let conns = &self.hosts[h.0].conns;
        let target = if let Some(&slot) = conns.dialled.get(peer) {
            RelayRoute {
                via: slot,
                peer: peer.node_id(),
            }
            .addr()
        } else {
            let coordinator = conns
                .coordinators
                .iter()
                .find(|&&c| self.hosts[c.0].key == *peer && !conns.paths.is_empty());
            match coordinator {
                Some(&c) => self.hosts[c.0].addr,
                None => return,
            }
        };
        let r = self.hosts[h.0].endpoint.connect(now, wall, *peer, target);
        log!(
            self,
            "{} re-dials {} at {target}: {r:?}",
            self.hosts[h.0].name,
            peer.node_id()
        );
    }

    /// A session event about a connection peer (or on a relay route).
    fn conn_session_event(&mut self, h: HostId, ev: SessionEvent) {
        let now = self.now;
        match ev {
            SessionEvent::Up {
                peer, node, addr, ..
            } => {
                let conns = &mut self.hosts[h.0].conns;
                if !conns.paths.contains(&peer) {
                    // Accept: a peer dialled us over a relay route (a
                    // session whose handshake came that way stays there
                    // until the connection moves it).
                    let Some(route) = RelayRoute::from_addr(addr) else {
                        return;
                    };
                    let Some(&coord) = conns.coordinators.get(usize::from(route.via)) else {
                        return;
                    };
                    let via = self.hosts[coord.0].id;
                    let route = RelayRoute {
                        via: route.via,
                        peer: node,
                    };
                    let r = self.hosts[h.0]
                        .conns
                        .paths
                        .open(now, peer, route, via, false);
                    log!(
                        self,
                        "{} accepts a connection from {node}: {r:?}",
                        self.hosts[h.0].name
                    );
                }
                self.hosts[h.0].conns.paths.on_session_up(now, &peer);
            }
            SessionEvent::AddrChanged { peer, new, .. } => {
                self.hosts[h.0]
                    .conns
                    .paths
                    .on_session_moved(now, &peer, new);
            }
            // As the driver does: the side that opened the connection dials
            // again through the relay (the connection waits there), the
            // accepting side's connection ends; a connection whose
            // handshake fails ends.
            SessionEvent::Down { peer, .. } => {
                let conns = &mut self.hosts[h.0].conns;
                if conns.dialled.contains_key(&peer) {
                    conns.paths.on_session_down(now, &peer);
                } else {
                    conns.paths.close(&peer);
                }
                self.redial(h, &peer);
            }
            SessionEvent::HandshakeFailed { peer, .. } => {
                let conns = &mut self.hosts[h.0].conns;
                if conns.dialled.remove(&peer).is_some() {
                    conns.paths.close(&peer);
                }
                self.redial(h, &peer);
            }
            _ => {}
        }
    }

    /// Asks `h`'s agent for an upgrade punch to `peer` through `via` (the
    /// path ping that follows waits for the session's keys: `Paths`).
    fn request_upgrade(&mut self, h: HostId, peer: PublicKey, via: NodeId) {
        let now = self.now;
        let host = &mut self.hosts[h.0];
        let node = peer.node_id();
        let conns = &mut host.conns;
        HostConns::push(&mut conns.punches, &mut conns.log_overflow, (now, node));
        let r = host.agent.request_punch(now, node, via);
        if let Err(e) = r {
            host.conns.paths.on_punch(now, &peer, Err(e));
        }
        log!(
            self,
            "{} upgrade punch to {node} via {via}: {r:?}",
            self.hosts[h.0].name
        );
    }

    /// Drains one host: the endpoint's datagrams and events, the agent's
    /// transmits (control messages sealed on sessions, keep-alives onto the
    /// network) and events (announcements to every other host), until
    /// nothing is left.
    pub fn drain(&mut self, h: HostId) {
        loop {
            let mut any = self.pump_endpoint(h);
            while let Some(t) = self.hosts[h.0].agent.poll_transmit() {
                any = true;
                match t {
                    Transmit::Control {
                        to,
                        channel,
                        payload,
                    } => {
                        log!(
                            self,
                            "{} ctl -> {to} {channel:?} {:02x?}",
                            self.hosts[h.0].name,
                            payload.as_bytes()
                        );
                        self.send_control(h, to, channel, payload.as_bytes());
                    }
                    Transmit::Datagram { to, payload, .. } => {
                        let host = &mut self.hosts[h.0];
                        host.datagrams_sent += 1;
                        host.record_send(to);
                        self.send_datagram(h, to, payload.as_bytes());
                    }
                    Transmit::Spray {
                        attempt,
                        socket,
                        to,
                        payload,
                    } => self.send_spray(h, attempt, socket, to, payload.as_bytes()),
                }
            }
            while let Some(e) = self.hosts[h.0].agent.poll_event() {
                any = true;
                let now = self.now;
                log!(self, "{} event {e:?}", self.hosts[h.0].name);
                self.hosts[h.0].events.push((now, e));
                let outcome = match e {
                    Event::PunchSucceeded { peer, path, .. } => Some((peer, Ok(path))),
                    Event::PunchFailed { peer, error, .. } => Some((peer, Err(error))),
                    _ => None,
                };
                if let Some((node, outcome)) = outcome {
                    let host = &mut self.hosts[h.0];
                    if let Some(key) = host.endpoint.peer_by_node_id(node) {
                        host.conns.paths.on_punch(now, &key, outcome);
                    }
                }
                if let Event::SprayEnded {
                    attempt,
                    outcome,
                    keep,
                    ..
                } = e
                {
                    self.spray_ended(h, attempt, outcome, keep);
                }
                if let Event::ClassificationChanged {
                    class,
                    reflex,
                    profile,
                } = e
                {
                    let id = self.hosts[h.0].id;
                    let announcement = Announcement {
                        reflex,
                        class,
                        profile,
                    };
                    for other in 0..self.hosts.len() {
                        if other != h.0 {
                            let _ = self.hosts[other]
                                .agent
                                .handle_announcement(id, announcement);
                        }
                    }
                    // As the driver does: a new classification is a network
                    // change, so relayed connections retry their upgrades
                    // now (with this reflex in the punch request).
                    self.hosts[h.0].conns.paths.network_changed(now);
                }
            }
            any |= self.pump_paths(h);
            if !any {
                break;
            }
        }
    }

    /// N2: a `Transmit::Spray` of `h`'s agent: from socket `socket` of
    /// birthday attempt `attempt`, opened now if it is new (a fresh port on
    /// the host's IP: its NAT makes a new mapping), or from the socket the
    /// attempt kept. A socket of an ended attempt that was not kept is
    /// closed: nothing is sent ([`SpraySockets::late`]); nor beyond
    /// [`MAX_OPEN`](crate::sockets::MAX_OPEN) open sockets.
    fn send_spray(&mut self, h: HostId, attempt: u64, socket: u16, to: SocketAddr, bytes: &[u8]) {
        let host = &mut self.hosts[h.0];
        let from = host.sockets.send_from(host.addr, attempt, socket);
        let SendFrom::Socket(local, opened) = from else {
            log!(
                self,
                "{} spray socket {attempt}/{socket} -> {to} not sent: {from:?}",
                self.hosts[h.0].name
            );
            return;
        };
        host.datagrams_sent += 1;
        host.spray_datagrams_sent += 1;
        host.record_send(to);
        if opened {
            log!(
                self,
                "{} opens spray socket {attempt}/{socket} at {local}",
                self.hosts[h.0].name
            );
        }
        self.transmit_from(h, local, to, bytes, true, "spray ");
    }

    /// N2: `h`'s birthday attempt `attempt` ended: its sockets close, but
    /// the one it keeps, which is pinned to the success's path.
    fn spray_ended(&mut self, h: HostId, attempt: u64, outcome: SprayOutcome, keep: Option<u16>) {
        let sockets = &mut self.hosts[h.0].sockets;
        let closed = match (keep, outcome) {
            (Some(socket), SprayOutcome::Succeeded { path }) => {
                sockets.end(attempt, Some((socket, path)))
            }
            (Some(_), _) => sockets.end_bad_keep(attempt),
            (None, _) => sockets.end(attempt, None),
        };
        log!(
            self,
            "{} attempt {attempt} ended: {closed} spray sockets closed, {} open, pinned {:?}",
            self.hosts[h.0].name,
            self.hosts[h.0].sockets.open(),
            self.hosts[h.0].sockets.pinned().collect::<Vec<_>>()
        );
    }

    /// Carries out what `h`'s connection manager asks for (path pings and
    /// pongs through the transmit function, session moves, upgrade punches)
    /// and records its events. Returns whether there was anything.
    fn pump_paths(&mut self, h: HostId) -> bool {
        let mut any = false;
        let now = self.now;
        while let Some(action) = self.hosts[h.0].conns.paths.poll_action() {
            any = true;
            let mut buf = std::mem::take(&mut self.scratch);
            let host = &mut self.hosts[h.0];
            let applied = host
                .conns
                .paths
                .apply(&mut host.endpoint, now, action, &mut buf);
            log!(
                self,
                "{} path {action:?}: {applied:?}",
                self.hosts[h.0].name
            );
            match applied {
                Applied::Send(to, len) => self.send_packet(h, to, &buf[..len]),
                Applied::Punch { peer, via } => self.request_upgrade(h, peer, via),
                Applied::Nothing => {}
            }
            self.scratch = buf;
        }
        while let Some(e) = self.hosts[h.0].conns.paths.poll_event() {
            any = true;
            log!(self, "{} path event {e:?}", self.hosts[h.0].name);
            if matches!(
                e,
                PathEvent::Changed {
                    reason: ChangeReason::DirectDead,
                    ..
                } | PathEvent::UpgradeFailed { .. }
            ) {
                self.check_own_reflex(h);
            }
            let conns = &mut self.hosts[h.0].conns;
            HostConns::push(&mut conns.events, &mut conns.log_overflow, (now, e));
        }
        any
    }

    /// C7, as the driver does (`check_own_reflex`): a direct path of `h`
    /// died or an upgrade failed, perhaps because `h`'s NAT mapping changed
    /// (a rebinding: the peer filters the new port, and the reflex `h`
    /// announced is stale). One standalone reflex probe at `h`'s first
    /// coordinator with a live session; its answer is discarded, but the
    /// agent sweeps when it differs from the published reflex, and the new
    /// classification is announced and retries the upgrades ([`drain`](Self::drain)).
    fn check_own_reflex(&mut self, h: HostId) {
        let host = &self.hosts[h.0];
        let Some(coordinator) = host
            .conns
            .coordinators
            .iter()
            .map(|c| &self.hosts[c.0])
            .find(|c| host.endpoint.session(&c.key).is_some())
            .map(|c| c.id)
        else {
            return;
        };
        let now = self.now;
        let r = self.hosts[h.0].agent.probe_reflex(now, coordinator);
        log!(
            self,
            "{} checks its reflex at {coordinator} after a path failure (C7): {r:?}",
            self.hosts[h.0].name
        );
    }

    /// The one transmit function of host `h`'s endpoint: a packet for a
    /// relay route goes to the route's coordinator as a forward frame, sealed
    /// (unreliably) on the coordinator's session on [`CH_RELAY`]; anything
    /// else is a UDP datagram.
    fn send_packet(&mut self, h: HostId, to: SocketAddr, bytes: &[u8]) {
        let Some(route) = RelayRoute::from_addr(to) else {
            self.send_session_datagram(h, to, bytes);
            return;
        };
        let Some(&coord) = self.hosts[h.0]
            .conns
            .coordinators
            .get(usize::from(route.via))
        else {
            log!(
                self,
                "{} -> {to}: no coordinator in slot {}",
                self.hosts[h.0].name,
                route.via
            );
            return;
        };
        let coord_key = self.hosts[coord.0].key;
        let mut frame = std::mem::take(&mut self.frame_buf);
        let mut out = std::mem::take(&mut self.seal_buf);
        match encode_forward_into(route.peer, bytes, &mut frame) {
            Ok(n) => {
                let now = self.now;
                let r =
                    self.hosts[h.0]
                        .endpoint
                        .send(now, &coord_key, CH_RELAY, &frame[..n], &mut out);
                match r {
                    Ok(Some((addr, len))) => self.send_session_datagram(h, addr, &out[..len]),
                    Ok(None) => {}
                    Err(e) => log!(
                        self,
                        "{} -> {to}: relay frame not sent: {e}",
                        self.hosts[h.0].name
                    ),
                }
            }
            Err(e) => log!(self, "{} -> {to}: {e}", self.hosts[h.0].name),
        }
        self.frame_buf = frame;
        self.seal_buf = out;
    }

    /// A relay frame from `from` (node `node`) at host `h`: served when `h`
    /// runs a relay, unwrapped when it comes from one of `h`'s coordinators.
    fn relay_frame(&mut self, h: HostId, node: NodeId, payload: &[u8]) {
        let now = self.now;
        let Ok(frame) = RelayFrame::decode(payload) else {
            log!(
                self,
                "{}: bad relay frame from {node}",
                self.hosts[h.0].name
            );
            return;
        };
        if self.hosts[h.0].conns.relay.is_some() {
            let RelayFrame::Forward { peer: to, packet } = frame else {
                return;
            };
            let host = &mut self.hosts[h.0];
            let to_key = host.endpoint.peer_by_node_id(to);
            let online = to_key.is_some_and(|k| host.endpoint.session(&k).is_some());
            let relay = host.conns.relay.as_mut().expect("serves");
            let mut out = std::mem::take(&mut self.seal_buf);
            let mut buf = std::mem::take(&mut self.frame_buf);
            match relay.forward(now, node, to, packet.len(), online) {
                Ok(()) => {
                    host.conns.relayed += 1;
                    let key = to_key.expect("online");
                    let n = encode_forward_into(node, packet, &mut buf).expect("fits");
                    if let Ok(Some((addr, len))) =
                        host.endpoint.send(now, &key, CH_RELAY, &buf[..n], &mut out)
                    {
                        self.send_session_datagram(h, addr, &out[..len]);
                    }
                }
                Err(refused) => {
                    host.conns.refused += 1;
                    log!(
                        self,
                        "{} relay {node} -> {to} refused: {}",
                        self.hosts[h.0].name,
                        refused.refusal
                    );
                    if refused.notify {
                        let notice = encode_refused(to, refused.refusal);
                        let host = &mut self.hosts[h.0];
                        if let Some(key) = host.endpoint.peer_by_node_id(node) {
                            if let Ok(Some((addr, len))) =
                                host.endpoint.send(now, &key, CH_RELAY, &notice, &mut out)
                            {
                                self.send_session_datagram(h, addr, &out[..len]);
                            }
                        }
                    }
                }
            }
            self.seal_buf = out;
            self.frame_buf = buf;
            return;
        }
        let Some(slot) = self
            .hosts
            .iter()
            .position(|x| x.id == node)
            .and_then(|c| self.hosts[h.0].conns.slot_of(HostId(c)))
        else {
            log!(
                self,
                "{}: relay frame from {node}, not a coordinator",
                self.hosts[h.0].name
            );
            return;
        };
        match frame {
            RelayFrame::Forward { peer, packet } => {
                let from = RelayRoute { via: slot, peer }.addr();
                if let DatagramKind::Session(_) = natrix_session::classify(packet) {
                    self.deliver_session(h, from, packet);
                }
            }
            RelayFrame::Refused { peer, .. } => {
                let refusal = frame.refusal().expect("a refusal");
                log!(
                    self,
                    "{} relay to {peer} refused by {node}: {refusal}",
                    self.hosts[h.0].name
                );
                let conns = &mut self.hosts[h.0].conns;
                let notice = RefusalNotice {
                    at: now,
                    coordinator: node,
                    peer,
                    refusal,
                };
                HostConns::push(&mut conns.refusals, &mut conns.log_overflow, notice);
            }
        }
    }

    /// A session datagram for host `h` from `src`: the endpoint opens it; a
    /// control message goes to the agent after the endpoint's events (so a
    /// session that came up or moved with this very packet is known first).
    fn deliver_session(&mut self, h: HostId, src: SocketAddr, bytes: &[u8]) {
        let (now, wall) = (self.now, self.wall_ms(h));
        let host = &mut self.hosts[h.0];
        let received = host.endpoint.handle_datagram(now, wall, src, bytes);
        let (data, verdict) = match received {
            Received::Data {
                peer,
                node,
                from,
                channel,
                payload,
            } => (Some((peer, node, from, channel, payload.to_vec())), None),
            Received::Consumed => (None, None),
            Received::Dropped(reason) => (None, Some(reason)),
        };
        log!(
            self,
            "{} <- {src} session {}",
            self.hosts[h.0].name,
            match (&data, verdict) {
                (Some((_, _, _, ch, _)), _) => format!("data on channel {ch}"),
                (None, Some(reason)) => format!("dropped: {reason:?}"),
                (None, None) => "consumed".to_owned(),
            }
        );
        self.pump_endpoint(h);
        let Some((peer, node, from, ch, payload)) = data else {
            return;
        };
        match ch {
            CH_RELAY => {
                self.relay_frame(h, node, &payload);
                self.drain(h);
                return;
            }
            natrix_session::path::CH_PATH => {
                let mut out = std::mem::take(&mut self.scratch);
                let host = &mut self.hosts[h.0];
                let reply = host.conns.paths.handle_message(
                    &mut host.endpoint,
                    now,
                    &peer,
                    from,
                    &payload,
                    &mut out,
                );
                if let Some((to, len)) = reply {
                    self.send_packet(h, to, &out[..len]);
                }
                self.scratch = out;
                self.drain(h);
                return;
            }
            CH_DATA if self.hosts[h.0].conns.paths.contains(&peer) => {
                let conns = &mut self.hosts[h.0].conns;
                conns.paths.on_received(now, &peer, from, payload.len());
                let item = ConnDatagram {
                    at: now,
                    from: node,
                    kind: kind_of(from),
                    bytes: payload,
                };
                HostConns::push(&mut conns.inbox, &mut conns.log_overflow, item);
                self.drain(h);
                return;
            }
            _ => {}
        }
        let Some(channel) = Channel::from_wire_byte(ch) else {
            log!(
                self,
                "{}: message on channel {ch} ignored",
                self.hosts[h.0].name
            );
            return;
        };
        let host = &mut self.hosts[h.0];
        if channel == Channel::Rendezvous {
            if let Ok(RendezvousMessage::Introduce(i)) = RendezvousMessage::decode(&payload) {
                host.introduced.insert(i.peer_reflex);
            }
        }
        let _ = host
            .agent
            .handle_control(now, wall, node, from, channel, &payload);
    }

    fn deliver(&mut self, item: InFlight) {
        let InFlight {
            realm,
            src,
            dst,
            bytes,
        } = item;
        if RelayRoute::is_relay(&src) {
            log!(
                self,
                "{src} -> {dst} dropped: a relay-route source from the network"
            );
            return self.count_drop(Drop::Unroutable);
        }
        match self.route_down(realm, src, dst, true) {
            Ok((h, local)) => {
                self.hosts[h.0].observed.insert(src);
                let extra = self.hosts[h.0].sockets.get(local).copied();
                if let Some(sock) = extra {
                    self.hosts[h.0].sockets.count_received(local);
                    // N2: an extra socket's datagrams go to the agent's
                    // attempt first; what it does not consume is the host's
                    // input as on the main socket.
                    let now = self.now;
                    let verdict = self.hosts[h.0].agent.handle_spray_datagram(
                        now,
                        sock.attempt,
                        sock.socket,
                        src,
                        &bytes,
                    );
                    log!(
                        self,
                        "{} <- {src} on spray socket {}/{} ({local}): {verdict:?}",
                        self.hosts[h.0].name,
                        sock.attempt,
                        sock.socket
                    );
                    if verdict == DatagramVerdict::NotOurs {
                        self.host_input(h, local, src, bytes);
                    }
                } else {
                    self.host_input(h, local, src, bytes);
                }
                self.drain(h);
            }
            Err(why) => {
                log!(self, "{src} -> {dst} dropped on arrival: {why:?}");
                self.count_drop(why);
            }
        }
    }

    /// A datagram from `src` reached host `h`'s socket at `local` (its main
    /// socket, or an extra socket's datagram the agent did not consume):
    /// session packets to the endpoint, keep-alives to the agent, anything
    /// else to the application inbox.
    fn host_input(&mut self, h: HostId, local: SocketAddr, src: SocketAddr, bytes: Vec<u8>) {
        if let DatagramKind::Session(_) = natrix_session::classify(&bytes) {
            self.deliver_session(h, src, &bytes);
            return;
        }
        // Keep-alives are the agent's; the agent hands back anything else
        // for the application. (On an extra socket the agent already saw
        // the keep-alives: `handle_spray_datagram` consumes them all.)
        let now = self.now;
        let host = &mut self.hosts[h.0];
        let verdict = if local == host.addr {
            host.agent.handle_datagram(now, local, src, &bytes)
        } else {
            DatagramVerdict::NotOurs
        };
        if verdict == DatagramVerdict::NotOurs {
            host.app_inbox.push((now, src, bytes));
        }
        log!(self, "{} <- {src} {verdict:?}", self.hosts[h.0].name);
    }

    fn next_time(&self) -> Option<Instant> {
        let q = self.queue.keys().next().map(|(t, _)| *t);
        let timers = self
            .hosts
            .iter()
            .filter_map(|h| {
                let conns = natrix_proto::time::earliest(
                    h.conns.paths.poll_timeout(),
                    h.conns.relay.as_ref().and_then(RelayServer::poll_timeout),
                );
                natrix_proto::time::earliest(
                    natrix_proto::time::earliest(h.agent.poll_timeout(), h.endpoint.poll_timeout()),
                    conns,
                )
            })
            .min();
        natrix_proto::time::earliest(q, timers)
    }

    /// Runs until virtual time `until` (inclusive), or until nothing is left.
    ///
    /// # Panics
    ///
    /// When the step budget runs out: a runaway scenario fails loudly.
    pub fn run_until(&mut self, until: Instant) {
        for h in 0..self.hosts.len() {
            self.drain(HostId(h));
        }
        while let Some(t) = self.next_time() {
            if t > until {
                break;
            }
            self.steps += 1;
            assert!(
                self.steps <= self.max_steps,
                "simulation exceeded {} steps: runaway scenario",
                self.max_steps
            );
            self.now = self.now.max(t);
            while let Some(entry) = self.queue.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let item = entry.remove();
                self.deliver(item);
            }
            let now = self.now;
            for h in 0..self.hosts.len() {
                let host = &self.hosts[h];
                let agent_due = host.agent.poll_timeout().is_some_and(|t| t <= now);
                let session_due = host.endpoint.poll_timeout().is_some_and(|t| t <= now);
                let paths_due = host.conns.paths.poll_timeout().is_some_and(|t| t <= now);
                let relay_due = host
                    .conns
                    .relay
                    .as_ref()
                    .and_then(RelayServer::poll_timeout)
                    .is_some_and(|t| t <= now);
                if agent_due {
                    self.hosts[h].agent.handle_timeout(now);
                }
                if session_due {
                    let wall = self.wall_ms(HostId(h));
                    self.hosts[h].endpoint.handle_timeout(now, wall);
                }
                if paths_due {
                    self.hosts[h].conns.paths.handle_timeout(now);
                }
                if relay_due {
                    if let Some(relay) = self.hosts[h].conns.relay.as_mut() {
                        relay.handle_timeout(now);
                    }
                }
                if agent_due || session_due || paths_due {
                    self.drain(HostId(h));
                }
            }
        }
        self.now = self.now.max(until);
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// Steps taken so far.
    #[must_use]
    pub fn steps(&self) -> u64 {
        self.steps
    }
}
