//! The simulated world: realms joined by NATs, hosts running natrix agents,
//! lossy links, a reliable control channel, a virtual clock, a transcript.
//!
//! # Model
//!
//! * A **realm** is an address space: the Internet, or the inside of one NAT.
//!   A NAT sits in its outside realm at its external IP; NATs nest (carrier-grade
//!   double NAT is a NAT inside another NAT's realm).
//! * A **host** lives in one realm at one address and runs one [`Agent`] whose
//!   socket is bound at that address. Each host has a one-way access latency to
//!   the core; a datagram from `a` to `b` takes `lat(a) + lat(b)` plus jitter.
//!   A host's NATs sit next to it: outbound translation happens when the
//!   datagram leaves, inbound filtering when it arrives.
//! * **Datagrams** can be lost, duplicated and reordered (by jitter), all drawn
//!   from the world's seeded generator.
//! * **Control messages** travel on sessions between a host and a host on the
//!   Internet (a server). They are reliable (a session retransmits), but each
//!   message from the inside goes through the host's NATs, so the server's view
//!   of the session's source address is the NAT mapping — and changes when the
//!   mapping does.
//! * **Clocks**: virtual time is the one true time. Each host's wall clock
//!   (the `wall_ms` its agent is given) is off from it by the host's
//!   [`clock_skew_ms`](Host::clock_skew_ms). When a session comes up each side
//!   gets an NTP-style estimate of the other's offset, measured over the
//!   control path ([`World::clock_offset_estimates`] turns that off).
//! * **Announcements**: when a host's agent publishes a (class, reflex), every
//!   other host learns it at once, and a host added later learns every
//!   announcement already made (the mesh's gossip is not modelled).
//!
//! The run loop jumps to the earliest of the next packet and the next agent
//! timeout; it is bounded by a step budget and panics (fails loudly) beyond it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use natrix_proto::wire::{NodeId, RendezvousMessage};
use natrix_proto::{Agent, Channel, Config, DatagramVerdict, Event, Instant, Rng, Transmit};

use crate::nat::{Nat, NatConfig};

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

/// Link impairments for datagrams (control messages are reliable).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkConfig {
    /// Probability a datagram is lost.
    pub loss: f64,
    /// Probability a datagram is delivered twice.
    pub duplicate: f64,
    /// Extra random delay, uniform in `0..=jitter` (reorders datagrams).
    pub jitter: Duration,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            loss: 0.0,
            duplicate: 0.0,
            jitter: Duration::ZERO,
        }
    }
}

/// One host.
#[derive(Debug)]
pub struct Host {
    /// A name for transcripts.
    pub name: String,
    /// Its node id.
    pub id: NodeId,
    /// Where it lives.
    pub realm: Realm,
    /// Its address in that realm (the agent's bind address).
    pub addr: SocketAddr,
    /// One-way latency to the core.
    pub latency: Duration,
    /// Its wall clock's offset from true time, in ms (may be negative); see
    /// [`World::set_clock_skew`].
    pub clock_skew_ms: i64,
    /// The agent.
    pub agent: Agent,
    /// Every event, with its time.
    pub events: Vec<(Instant, Event)>,
    /// Non-natrix datagrams received: (time, source, bytes).
    pub app_inbox: Vec<(Instant, SocketAddr, Vec<u8>)>,
    /// Addresses the agent was introduced to (peer reflexes of introduces).
    pub introduced: BTreeSet<SocketAddr>,
    /// Sources of datagrams the host received.
    pub observed: BTreeSet<SocketAddr>,
    /// Datagrams the agent asked to send to an address it was never
    /// introduced to and never received anything from.
    pub unexplained_sends: Vec<SocketAddr>,
    /// Datagrams the agent sent (keep-alives).
    pub datagrams_sent: u64,
}

#[derive(Debug)]
struct NatNode {
    nat: Nat,
    outside: Realm,
}

#[derive(Clone, Debug)]
enum Item {
    /// A datagram arriving in `realm` addressed to `dst`.
    Datagram {
        realm: Realm,
        src: SocketAddr,
        dst: SocketAddr,
        bytes: Vec<u8>,
    },
    /// A control message on the session between two hosts.
    Control {
        from: HostId,
        to: HostId,
        channel: Channel,
        bytes: Vec<u8>,
    },
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
}

/// The simulated world.
pub struct World {
    now: Instant,
    rng: Rng,
    /// Hosts, indexed by [`HostId`].
    pub hosts: Vec<Host>,
    nats: Vec<NatNode>,
    queue: BTreeMap<(Instant, u64), Item>,
    seq: u64,
    /// Datagram impairments.
    pub link: LinkConfig,
    /// Sessions: (client, server) → the address the server sees the client at.
    sessions: BTreeMap<(HostId, HostId), SocketAddr>,
    transcript: Option<String>,
    steps: u64,
    /// The step budget.
    pub max_steps: u64,
    /// Every datagram that was sent, by destination IP (the IP it was addressed
    /// to when it left its sender).
    pub sent_to_ip: BTreeMap<IpAddr, u64>,
    /// Datagrams that did not arrive, by reason.
    pub drops: BTreeMap<Drop, u64>,
    /// Per-datagram loss decisions in order (true = lost), for determinism tests.
    pub loss_pattern: Vec<bool>,
    /// Fault injection on the control channel: return true to drop a control
    /// message (from, to, channel, bytes). The channel itself never loses one.
    pub control_filter: Option<ControlFilter>,
    /// Whether a session coming up gives each side an estimate of the other's
    /// clock offset (`Agent::handle_clock_offset`). On by default; off, the
    /// agents read every peer's wall-clock time as their own.
    pub clock_offset_estimates: bool,
}

/// See [`World::control_filter`].
pub type ControlFilter = Box<dyn FnMut(HostId, HostId, Channel, &[u8]) -> bool>;

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("now", &self.now)
            .field("hosts", &self.hosts.len())
            .field("nats", &self.nats.len())
            .field("queued", &self.queue.len())
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}

impl World {
    /// An empty world whose randomness all comes from `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        World {
            now: Instant::ZERO,
            rng: Rng::new(seed),
            hosts: Vec::new(),
            nats: Vec::new(),
            queue: BTreeMap::new(),
            seq: 0,
            link: LinkConfig::default(),
            sessions: BTreeMap::new(),
            transcript: None,
            steps: 0,
            max_steps: 2_000_000,
            sent_to_ip: BTreeMap::new(),
            drops: BTreeMap::new(),
            loss_pattern: Vec::new(),
            control_filter: None,
            clock_offset_estimates: true,
        }
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

    /// Drops every mapping of a NAT (reboot / rebinding).
    pub fn flush_nat(&mut self, id: NatId) {
        self.nats[id.0].nat.flush();
        log!(self, "nat {} flushed", id.0);
    }

    /// Adds a host running an agent with `config` and `seed`.
    #[allow(clippy::too_many_arguments)]
    pub fn add_host(
        &mut self,
        name: &str,
        id: NodeId,
        realm: Realm,
        addr: SocketAddr,
        latency: Duration,
        config: Config,
        seed: u64,
    ) -> HostId {
        let mut agent = Agent::new(id, addr, config, seed);
        agent.set_interface_addrs(&[addr.ip()]);
        // A newcomer learns what everyone already announced.
        for h in &self.hosts {
            if let Some(a) = h.agent.classification() {
                let _ = agent.handle_peer_announcement(h.id, a.reflex, a.class);
            }
        }
        self.hosts.push(Host {
            name: name.to_owned(),
            id,
            realm,
            addr,
            latency,
            clock_skew_ms: 0,
            agent,
            events: Vec::new(),
            app_inbox: Vec::new(),
            introduced: BTreeSet::new(),
            observed: BTreeSet::new(),
            unexplained_sends: Vec::new(),
            datagrams_sent: 0,
        });
        HostId(self.hosts.len() - 1)
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

    /// A host's agent.
    pub fn agent(&mut self, h: HostId) -> &mut Agent {
        &mut self.hosts[h.0].agent
    }

    /// Sets a host's wall-clock skew: its clock reads true time plus `ms`.
    /// Set it before the host's sessions come up: they estimate offsets then.
    pub fn set_clock_skew(&mut self, h: HostId, ms: i64) {
        self.hosts[h.0].clock_skew_ms = ms;
        log!(self, "{} clock skew {ms} ms", self.hosts[h.0].name);
    }

    fn wall_ms(&self, h: HostId) -> u64 {
        self.wall_ms_at(h, self.now)
    }

    /// What host `h`'s wall clock reads at virtual time `at`.
    fn wall_ms_at(&self, h: HostId, at: Instant) -> u64 {
        let ms = WALL_EPOCH_MS.saturating_add(at.as_nanos() / 1_000_000);
        ms.saturating_add_signed(self.hosts[h.0].clock_skew_ms)
    }

    fn push(&mut self, at: Instant, item: Item) {
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
    fn route_down(
        &mut self,
        mut realm: Realm,
        src: SocketAddr,
        mut dst: SocketAddr,
        filter: bool,
    ) -> Result<HostId, Drop> {
        for _ in 0..16 {
            if let Some(h) = self
                .hosts
                .iter()
                .position(|h| h.realm == realm && h.addr == dst)
            {
                return Ok(HostId(h));
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

    /// Sends a datagram from host `from` (from its bound socket) to `dst`.
    pub fn send_datagram(&mut self, from: HostId, dst: SocketAddr, bytes: &[u8]) {
        *self.sent_to_ip.entry(dst.ip()).or_default() += 1;
        let lost = self.chance(self.link.loss);
        self.loss_pattern.push(lost);
        let (realm, src0) = (self.hosts[from.0].realm, self.hosts[from.0].addr);
        let routed = self.route_up(realm, src0, dst);
        let name = self.hosts[from.0].name.clone();
        let (meet, src) = match routed {
            Ok(x) => x,
            Err(why) => {
                log!(self, "{name} -> {dst} dropped {why:?}");
                return self.count_drop(why);
            }
        };
        if lost {
            log!(self, "{name} ({src}) -> {dst} lost");
            return self.count_drop(Drop::Loss);
        }
        let dst_latency = self
            .route_down(meet, src, dst, false)
            .map_or(Duration::from_millis(10), |h| self.hosts[h.0].latency);
        let copies = if self.chance(self.link.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at = self.now + self.hosts[from.0].latency + dst_latency + self.jitter();
            log!(
                self,
                "{name} ({src}) -> {dst} {} B, arrives {:?}",
                bytes.len(),
                at.since_origin()
            );
            self.push(
                at,
                Item::Datagram {
                    realm: meet,
                    src,
                    dst,
                    bytes: bytes.to_vec(),
                },
            );
        }
    }

    // ------------------------------------------------------------- sessions

    /// Opens an authenticated session between `client` and `server` (which
    /// must be on the Internet). Each side learns the other's session address
    /// (the server sees the client's NAT mapping) and an RTT estimate.
    pub fn connect(&mut self, client: HostId, server: HostId) {
        assert_eq!(
            self.hosts[server.0].realm,
            Realm::Internet,
            "servers live on the Internet"
        );
        let seen = self.client_mapping(client, server);
        self.sessions.insert((client, server), seen);
        let rtt = (self.hosts[client.0].latency + self.hosts[server.0].latency) * 2;
        let (cid, sid, saddr) = (
            self.hosts[client.0].id,
            self.hosts[server.0].id,
            self.hosts[server.0].addr,
        );
        let _ = self.hosts[server.0].agent.handle_session_up(cid, seen);
        let _ = self.hosts[server.0].agent.handle_rtt(cid, rtt);
        let _ = self.hosts[client.0].agent.handle_session_up(sid, saddr);
        let _ = self.hosts[client.0].agent.handle_rtt(sid, rtt);
        log!(
            self,
            "session {} <-> {} seen as {seen}",
            self.hosts[client.0].name,
            self.hosts[server.0].name
        );
        if self.clock_offset_estimates {
            let of_server = self.estimate_clock_offset(client, server);
            let of_client = self.estimate_clock_offset(server, client);
            let _ = self.hosts[client.0]
                .agent
                .handle_clock_offset(sid, of_server);
            let _ = self.hosts[server.0]
                .agent
                .handle_clock_offset(cid, of_client);
            log!(
                self,
                "clock offsets: {} sees {of_server} ms, {} sees {of_client} ms",
                self.hosts[client.0].name,
                self.hosts[server.0].name
            );
        }
    }

    /// Host `me`'s NTP-style estimate of `peer`'s wall clock minus its own,
    /// from one exchange over their control path starting now: `me` sends at
    /// `t0` (its clock), `peer` stamps `t1` on arrival (its clock) and answers
    /// at once, the answer arrives at `t2` (`me`'s clock);
    /// offset = `t1 − (t0 + t2) / 2`. Each leg takes the control path's real
    /// one-way latency, so the estimate is exact only when both legs take the
    /// same time (up to millisecond rounding).
    ///
    /// Stands in for the session's own measurement (real session packets
    /// will replace it).
    #[must_use]
    pub fn estimate_clock_offset(&self, me: HostId, peer: HostId) -> i64 {
        let sent = self.now;
        let arrived = sent + self.control_latency(me, peer);
        let returned = arrived + self.control_latency(peer, me);
        let t0 = i128::from(self.wall_ms_at(me, sent));
        let t1 = i128::from(self.wall_ms_at(peer, arrived));
        let t2 = i128::from(self.wall_ms_at(me, returned));
        let offset = t1 - (t0 + t2).div_euclid(2);
        i64::try_from(offset).unwrap_or(if offset < 0 { i64::MIN } else { i64::MAX })
    }

    /// One-way latency of a control message from `from` to `to`.
    fn control_latency(&self, from: HostId, to: HostId) -> Duration {
        self.hosts[from.0].latency + self.hosts[to.0].latency
    }

    /// Closes a session on both sides.
    pub fn disconnect(&mut self, client: HostId, server: HostId) {
        if self.sessions.remove(&(client, server)).is_some() {
            let now = self.now;
            let (cid, sid) = (self.hosts[client.0].id, self.hosts[server.0].id);
            self.hosts[server.0].agent.handle_session_down(now, cid);
            self.hosts[client.0].agent.handle_session_down(now, sid);
            self.drain(server);
            self.drain(client);
        }
    }

    /// Whether a session is up.
    #[must_use]
    pub fn connected(&self, client: HostId, server: HostId) -> bool {
        self.sessions.contains_key(&(client, server))
    }

    /// The client's current mapping toward the server (refreshing it).
    fn client_mapping(&mut self, client: HostId, server: HostId) -> SocketAddr {
        let (realm, src) = (self.hosts[client.0].realm, self.hosts[client.0].addr);
        let dst = self.hosts[server.0].addr;
        self.route_up(realm, src, dst).map_or(src, |(_, s)| s)
    }

    fn session_of(&self, a: HostId, b: HostId) -> Option<(HostId, HostId)> {
        if self.sessions.contains_key(&(a, b)) {
            Some((a, b))
        } else if self.sessions.contains_key(&(b, a)) {
            Some((b, a))
        } else {
            None
        }
    }

    fn send_control(&mut self, from: HostId, to: NodeId, channel: Channel, bytes: &[u8]) {
        let Some(to) = self.host_by_node(to) else {
            return;
        };
        let Some((client, server)) = self.session_of(from, to) else {
            log!(
                self,
                "{} -> {:?}: no session, control message dropped",
                self.hosts[from.0].name,
                self.hosts[to.0].id
            );
            return;
        };
        if from == client {
            // The message goes through the client's NATs: refresh the mapping,
            // and if it changed the server sees a rebinding.
            let seen = self.client_mapping(client, server);
            if self.sessions.get(&(client, server)) != Some(&seen) {
                self.sessions.insert((client, server), seen);
                let cid = self.hosts[client.0].id;
                let _ = self.hosts[server.0].agent.handle_session_up(cid, seen);
                log!(
                    self,
                    "session {} rebound to {seen}",
                    self.hosts[client.0].name
                );
            }
        }
        if let Some(f) = self.control_filter.as_mut() {
            if f(from, to, channel, bytes) {
                log!(self, "control message dropped by the fault filter");
                return;
            }
        }
        let at = self.now + self.control_latency(from, to);
        self.push(
            at,
            Item::Control {
                from,
                to,
                channel,
                bytes: bytes.to_vec(),
            },
        );
    }

    /// Delivers a control message as if `from` sent it on its session to `to`
    /// (for adversaries: any authenticated peer can send anything).
    pub fn inject_control(&mut self, from: HostId, to: HostId, channel: Channel, bytes: &[u8]) {
        let to_id = self.hosts[to.0].id;
        self.send_control(from, to_id, channel, bytes);
    }

    // ------------------------------------------------------------- the loop

    /// Drains one host's agent: transmits into the network, events into the
    /// host's log (announcements to every other host).
    pub fn drain(&mut self, h: HostId) {
        while let Some(t) = self.hosts[h.0].agent.poll_transmit() {
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
                    if !host.introduced.contains(&to) && !host.observed.contains(&to) {
                        host.unexplained_sends.push(to);
                    }
                    self.send_datagram(h, to, payload.as_bytes());
                }
            }
        }
        while let Some(e) = self.hosts[h.0].agent.poll_event() {
            let now = self.now;
            log!(self, "{} event {e:?}", self.hosts[h.0].name);
            self.hosts[h.0].events.push((now, e));
            if let Event::ClassificationChanged { class, reflex } = e {
                let id = self.hosts[h.0].id;
                for other in 0..self.hosts.len() {
                    if other != h.0 {
                        let _ = self.hosts[other]
                            .agent
                            .handle_peer_announcement(id, reflex, class);
                    }
                }
            }
        }
    }

    fn deliver(&mut self, item: Item) {
        match item {
            Item::Control {
                from,
                to,
                channel,
                bytes,
            } => {
                let Some((client, server)) = self.session_of(from, to) else {
                    return;
                };
                let session_addr = if from == client {
                    self.sessions[&(client, server)]
                } else {
                    self.hosts[server.0].addr
                };
                if channel == Channel::Rendezvous {
                    if let Ok(RendezvousMessage::Introduce(i)) = RendezvousMessage::decode(&bytes) {
                        self.hosts[to.0].introduced.insert(i.peer_reflex);
                    }
                }
                let (now, wall, from_id) = (self.now, self.wall_ms(to), self.hosts[from.0].id);
                let _ = self.hosts[to.0].agent.handle_control(
                    now,
                    wall,
                    from_id,
                    session_addr,
                    channel,
                    &bytes,
                );
                self.drain(to);
            }
            Item::Datagram {
                realm,
                src,
                dst,
                bytes,
            } => match self.route_down(realm, src, dst, true) {
                Ok(h) => {
                    let now = self.now;
                    let host = &mut self.hosts[h.0];
                    host.observed.insert(src);
                    let local = host.addr;
                    let verdict = host.agent.handle_datagram(now, local, src, &bytes);
                    if verdict == DatagramVerdict::NotOurs {
                        host.app_inbox.push((now, src, bytes));
                    }
                    let name = host.name.clone();
                    log!(self, "{name} <- {src} {verdict:?}");
                    self.drain(h);
                }
                Err(why) => {
                    log!(self, "{src} -> {dst} dropped on arrival: {why:?}");
                    self.count_drop(why);
                }
            },
        }
    }

    fn next_time(&self) -> Option<Instant> {
        let q = self.queue.keys().next().map(|(t, _)| *t);
        let timers = self
            .hosts
            .iter()
            .filter_map(|h| h.agent.poll_timeout())
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
                if self.hosts[h].agent.poll_timeout().is_some_and(|t| t <= now) {
                    self.hosts[h].agent.handle_timeout(now);
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
