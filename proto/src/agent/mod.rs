//! The [`Agent`]: one node that can play every role at once, behind one
//! `handle_*` / `poll_*` surface. Drivers run exactly this.
//!
//! # Run loop
//!
//! After **any** `handle_*` call or command, drain everything before sleeping,
//! in this order:
//!
//! 1. [`poll_transmit`](Agent::poll_transmit) until `None` — send each control
//!    message on its peer's session, each datagram from its `local` socket,
//!    and each birthday datagram from its attempt's socket (N2,
//!    [`Transmit::Spray`]);
//! 2. [`poll_event`](Agent::poll_event) until `None` — deliver to the
//!    application (and act on [`Event::SprayEnded`]: close the attempt's
//!    sockets but the kept one, which carries the path from then on);
//! 3. [`poll_timeout`](Agent::poll_timeout) — sleep until that instant (or until
//!    input arrives), then call [`handle_timeout`](Agent::handle_timeout).
//!
//! `poll_timeout` is exact: no hidden offsets. Calling `handle_timeout` early
//! or twice is harmless.
//!
//! ```
//! use natrix_proto::{Agent, Config, Instant, NodeId, Transmit};
//!
//! let mut agent = Agent::new(NodeId(1), "192.0.2.1:4000".parse().unwrap(), Config::default(), 7);
//! let now = Instant::from_millis(0);
//! agent.handle_timeout(now);
//! while let Some(t) = agent.poll_transmit() {
//!     match t {
//!         Transmit::Control { to, channel, payload } => { /* session send */ }
//!         Transmit::Datagram { local, to, payload } => { /* socket send */ }
//!         Transmit::Spray { attempt, socket, to, payload } => { /* that attempt's socket */ }
//!     }
//! }
//! while let Some(_event) = agent.poll_event() { /* application */ }
//! let _sleep_until = agent.poll_timeout();
//! ```

pub mod io;
pub mod peers;

use core::net::{IpAddr, SocketAddr};
use core::num::NonZeroU32;
use core::time::Duration;

use crate::behaviour::{NatProfile, birthday_side, pair_action_with_profiles};
use crate::classify::{NatClass, PairAction, canonical_addr, is_bogus_destination};
use crate::config::Config;
use crate::discovery::{Discovery, DiscoveryCtx, ProbeError, ReclassifyOutcome};
use crate::error::TraversalError;
use crate::rendezvous::endpoint::Ctx;
use crate::rendezvous::{Coordinator, CoordinatorCandidate, Endpoint, select_coordinator};
use crate::rng::{Rng, mix64};
use crate::stats::{Stats, bump};
use crate::time::Instant;
use crate::wire::{
    DecodeError, Hello, Keepalive, NATRIX_VERSION, NatrixMessage, NodeId, ReflexRequest,
    ReflexResponse, RendezvousMessage, is_keepalive,
};

use io::{Channel, DatagramVerdict, Event, Outbox, PathMethod, Role, Transmit};
use peers::{Announcement, Peers};

/// The peer directory is full (`Config::max_known_peers`); the information was
/// not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("peer directory is full")]
pub struct DirectoryFull;

/// Why [`Agent::handle_peer_announcement`] did not store an announcement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnnouncementError {
    /// The peer directory is full of peers with live sessions or other
    /// announcements (`Config::max_known_peers`).
    #[error("peer directory is full")]
    DirectoryFull,
    /// R13: the announced reflex is not a usable destination (port 0, a
    /// broadcast, multicast or unspecified address, or this node's own
    /// address).
    #[error("announced reflex {0} is not a usable destination")]
    BogusReflex(SocketAddr),
}

impl From<DirectoryFull> for AnnouncementError {
    fn from(_: DirectoryFull) -> Self {
        AnnouncementError::DirectoryFull
    }
}

/// Separates the tables' hash seed from every other use of the agent's seed.
const TABLE_SEED_DOMAIN: u64 = 0x6e61_7472_6978_7462; // "natrixtb"

/// One natrix node: coordinator, requester and responder at once.
#[derive(Debug)]
pub struct Agent {
    id: NodeId,
    bind: SocketAddr,
    config: Config,
    rng: Rng,
    peers: Peers,
    coordinator: Coordinator,
    endpoint: Endpoint,
    discovery: Discovery,
    out: Outbox,
}

impl Agent {
    /// A node with id `id` whose UDP socket is bound at `bind`, seeded with
    /// `seed` (the only source of randomness).
    #[must_use]
    pub fn new(id: NodeId, bind: SocketAddr, config: Config, seed: u64) -> Self {
        // The tables' hash keys derive from the seed without drawing from the
        // RNG, whose stream (punch ids, sweep targets) stays as it was.
        let tables = mix64(seed ^ TABLE_SEED_DOMAIN);
        Agent {
            id,
            bind,
            rng: Rng::new(seed),
            peers: Peers::new(config.max_known_peers() as usize, tables),
            coordinator: Coordinator::new(&config, mix64(tables ^ 1)),
            endpoint: Endpoint::new(&config, mix64(tables ^ 2)),
            discovery: Discovery::new(&config),
            out: Outbox::default(),
            config,
        }
    }

    // ----- getters -----

    /// This node's id.
    #[must_use]
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The local socket address the agent sends from.
    #[must_use]
    pub fn bind_addr(&self) -> SocketAddr {
        self.bind
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.out.stats
    }

    /// This node's (class, reflex) in force, to announce to peers: the reflex
    /// override as Open (C6), else the last committed classification; `None`
    /// before the first one.
    #[must_use]
    pub fn classification(&self) -> Option<Announcement> {
        self.discovery.effective()
    }

    /// This node's class: the classification in force, else `Unknown`.
    #[must_use]
    pub fn nat_class(&self) -> NatClass {
        self.classification().map_or(NatClass::Unknown, |a| a.class)
    }

    /// C8: this node's profile in force: the classification's (the override's
    /// [`NatProfile::OPEN`], or the measured one), else the measured one.
    #[must_use]
    pub fn local_profile(&self) -> Option<NatProfile> {
        self.classification()
            .map_or(self.discovery.profile(), |a| a.profile)
    }

    /// This node's public address: the classification's reflex, else the bind
    /// address when it is a specific IP.
    #[must_use]
    pub fn local_reflex(&self) -> Option<SocketAddr> {
        self.classification()
            .map(|a| a.reflex)
            .or_else(|| (!self.bind.ip().is_unspecified()).then_some(self.bind))
            .map(canonical_addr)
    }

    /// The generation of the running classification sweep, if one runs.
    #[must_use]
    pub fn running_sweep(&self) -> Option<u64> {
        self.discovery.running_sweep()
    }

    /// Punches pending, both roles.
    #[must_use]
    pub fn pending_punches(&self) -> usize {
        self.endpoint.pending()
    }

    /// Entries in the coordinator's and responder's budget tables (R5: bounded
    /// by `Config::budget_table_capacity` each).
    #[must_use]
    pub fn budget_entries(&self) -> (usize, usize) {
        (
            self.coordinator.budget_entries(),
            self.endpoint.budget_entries(),
        )
    }

    /// Peers in the directory (bounded by `Config::max_known_peers`).
    #[must_use]
    pub fn known_peers(&self) -> usize {
        self.peers.len()
    }

    // ----- inputs -----

    fn dctx(&mut self) -> (DiscoveryCtx<'_>, &mut Discovery) {
        (
            DiscoveryCtx {
                bind: self.bind,
                config: &self.config,
                peers: &self.peers,
                rng: &mut self.rng,
                out: &mut self.out,
            },
            &mut self.discovery,
        )
    }

    fn ctx(&mut self) -> (Ctx<'_>, &mut Endpoint) {
        let local_reflex = self.local_reflex();
        let (local_class, local_profile) = (self.nat_class(), self.local_profile());
        (
            Ctx {
                id: self.id,
                bind: self.bind,
                local_reflex,
                local_class,
                local_profile,
                config: &self.config,
                peers: &self.peers,
                out: &mut self.out,
            },
            &mut self.endpoint,
        )
    }

    /// A control message from the authenticated peer `from`, whose session's
    /// source address is `session_addr`. `wall_ms` is the current Unix time in
    /// milliseconds on this node's clock (see
    /// [`handle_clock_offset`](Self::handle_clock_offset) for other clocks). A
    /// payload that does not decode changes nothing and is reported back (and
    /// counted).
    pub fn handle_control(
        &mut self,
        now: Instant,
        wall_ms: u64,
        from: NodeId,
        session_addr: SocketAddr,
        channel: Channel,
        payload: &[u8],
    ) -> Result<(), DecodeError> {
        let result = self.dispatch_control(now, wall_ms, from, session_addr, channel, payload);
        if result.is_err() {
            bump(&mut self.out.stats.malformed_messages);
        }
        result
    }

    fn dispatch_control(
        &mut self,
        now: Instant,
        wall_ms: u64,
        from: NodeId,
        session_addr: SocketAddr,
        channel: Channel,
        payload: &[u8],
    ) -> Result<(), DecodeError> {
        // C9: one address form from here on.
        let session_addr = canonical_addr(session_addr);
        match channel {
            Channel::Rendezvous => {
                let msg = RendezvousMessage::decode(payload)?;
                let id = self.id;
                match msg {
                    RendezvousMessage::Request(req) => {
                        // R13: never introduce our own address.
                        let bind = canonical_addr(self.bind);
                        let own = [bind, self.local_reflex().unwrap_or(bind)];
                        self.coordinator.handle_request(
                            &self.config,
                            now,
                            wall_ms,
                            from,
                            session_addr,
                            req,
                            &self.peers,
                            &own,
                            &mut self.out,
                        );
                    }
                    RendezvousMessage::Ack(ack) if ack.to_peer == id => {
                        let (mut cx, ep) = self.ctx();
                        ep.handle_ack(&mut cx, from, ack);
                    }
                    RendezvousMessage::Ack(ack) => {
                        self.coordinator
                            .handle_ack(now, from, ack, &self.peers, &mut self.out);
                    }
                    RendezvousMessage::Introduce(intro) => {
                        let (mut cx, ep) = self.ctx();
                        ep.handle_introduce(&mut cx, now, wall_ms, from, intro);
                    }
                    RendezvousMessage::Reject(rej) => {
                        let (mut cx, ep) = self.ctx();
                        ep.handle_reject(&mut cx, now, from, rej);
                    }
                }
            }
            Channel::ReflexRequest => {
                ReflexRequest::decode(payload)?;
                // C5: echo the authenticated session address, never a packet source.
                let resp = ReflexResponse {
                    observed: session_addr,
                };
                self.out
                    .control(from, Channel::ReflexResponse, &resp.to_bytes());
            }
            Channel::ReflexResponse => {
                let resp = ReflexResponse::decode(payload)?;
                let (mut cx, d) = self.dctx();
                d.handle_answer(&mut cx, now, from, canonical_addr(resp.observed));
            }
            Channel::Natrix => {
                let msg = NatrixMessage::decode(payload)?;
                // Capability: a peer whose natrix message decoded speaks
                // natrix for the rest of its session.
                self.peers.mark_natrix(from);
                match msg {
                    NatrixMessage::Hello(_) => {}
                    NatrixMessage::Bind(b) => {
                        let (mut cx, ep) = self.ctx();
                        ep.handle_bind(&mut cx, now, from, b);
                    }
                    NatrixMessage::Predict(m) => {
                        let (mut cx, ep) = self.ctx();
                        ep.handle_predict(&mut cx, now, from, m);
                    }
                    NatrixMessage::Refuse(r) => self.coordinator.handle_refuse(
                        &self.config,
                        now,
                        from,
                        r,
                        &self.peers,
                        &mut self.out,
                    ),
                    NatrixMessage::Refused(r) => {
                        let (mut cx, ep) = self.ctx();
                        ep.handle_refused(&mut cx, now, from, r);
                    }
                }
            }
        }
        Ok(())
    }

    /// A datagram that arrived on the socket bound at `local` from `src`.
    /// Keep-alives are consumed, and so is a STUN server's answer to the
    /// running sweep (C8: its transaction id, from that server); anything
    /// else is [`DatagramVerdict::NotOurs`] and belongs to the application,
    /// untouched.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        src: SocketAddr,
        datagram: &[u8],
    ) -> DatagramVerdict {
        let _ = local;
        if !is_keepalive(datagram) {
            // C8: a STUN server's answer to the running sweep.
            let (mut cx, d) = self.dctx();
            return if d.handle_stun(&mut cx, now, src, datagram) {
                DatagramVerdict::Consumed
            } else {
                DatagramVerdict::NotOurs
            };
        }
        let src = canonical_addr(src);
        match Keepalive::decode(datagram) {
            Ok(k) if k.sender != self.id => {
                let (mut cx, ep) = self.ctx();
                ep.handle_keepalive(&mut cx, now, src, k, None);
            }
            _ => bump(&mut self.out.stats.keepalives_dropped),
        }
        DatagramVerdict::Consumed
    }

    /// N2: a datagram that arrived from `src` on socket `socket` of birthday
    /// attempt `attempt` (a [`Transmit::Spray`] opened it). A keep-alive of
    /// the peer whose attempt that is can confirm its punch there (R8 as on
    /// the main socket); the path then stays on that socket
    /// ([`Event::SprayEnded`] names it to keep). Anything else is
    /// [`DatagramVerdict::NotOurs`].
    pub fn handle_spray_datagram(
        &mut self,
        now: Instant,
        attempt: u64,
        socket: u16,
        src: SocketAddr,
        datagram: &[u8],
    ) -> DatagramVerdict {
        if !is_keepalive(datagram) {
            return DatagramVerdict::NotOurs;
        }
        let src = canonical_addr(src);
        match Keepalive::decode(datagram) {
            Ok(k) if k.sender != self.id => {
                let (mut cx, ep) = self.ctx();
                ep.handle_keepalive(&mut cx, now, src, k, Some((attempt, socket)));
            }
            _ => bump(&mut self.out.stats.keepalives_dropped),
        }
        DatagramVerdict::Consumed
    }

    /// Time passed: send due keep-alives, end punches whose deadline passed,
    /// expire probes, finish and start sweeps.
    pub fn handle_timeout(&mut self, now: Instant) {
        let (mut cx, ep) = self.ctx();
        ep.handle_timeout(&mut cx, now);
        let (mut cx, d) = self.dctx();
        d.handle_timeout(&mut cx, now);
    }

    /// An authenticated session to `peer` is up; `addr` is its source address
    /// as seen here (called again when it changes).
    ///
    /// A peer with a live session always finds room in the directory: when it
    /// is full, the oldest entry without a session (an announcement, typically)
    /// is evicted. `DirectoryFull` only when every entry has a live session.
    ///
    /// A new session gets a natrix [`Hello`] (see
    /// [`Config::natrix_extensions`]).
    pub fn handle_session_up(
        &mut self,
        peer: NodeId,
        addr: SocketAddr,
    ) -> Result<(), DirectoryFull> {
        let addr = canonical_addr(addr);
        if !self.peers.make_room_for_session(peer) {
            return Err(DirectoryFull);
        }
        let new = self.peers.session(peer).is_none();
        self.peers
            .update(peer, |p| p.session = Some(addr))
            .map_err(|_| DirectoryFull)?;
        if new && self.config.natrix_extensions() && peer != self.id {
            let hello = Hello {
                version: NATRIX_VERSION,
            };
            self.out.control(peer, Channel::Natrix, &hello.to_bytes());
        }
        self.discovery.session_up(&self.config);
        Ok(())
    }

    /// The session to `peer` is down. Punches waiting for an introduce from it
    /// end at once with [`TraversalError::NoSessionWithCoordinator`]. Its RTT
    /// and clock offset are forgotten.
    pub fn handle_session_down(&mut self, now: Instant, peer: NodeId) {
        let _ = self.peers.update(peer, |p| {
            p.session = None;
            p.rtt = None;
            p.clock_offset_ms = None;
            p.natrix = false;
        });
        let (mut cx, ep) = self.ctx();
        ep.coordinator_down(&mut cx, now, peer);
        let (mut cx, d) = self.dctx();
        d.session_down(&mut cx, now, peer);
    }

    /// `peer` announced its (reflex, class) — through the mesh, authenticated
    /// by the embedder. Stored in canonical form (C9).
    ///
    /// R13: a reflex no keep-alive may go to (port 0, broadcast, multicast,
    /// unspecified, or this node's own address) is refused with
    /// [`AnnouncementError::BogusReflex`] and not stored; a full directory is
    /// [`AnnouncementError::DirectoryFull`] (announcements never evict).
    pub fn handle_peer_announcement(
        &mut self,
        peer: NodeId,
        reflex: SocketAddr,
        class: NatClass,
    ) -> Result<(), AnnouncementError> {
        self.handle_announcement(
            peer,
            Announcement {
                reflex,
                class,
                profile: None,
            },
        )
    }

    /// [`handle_peer_announcement`](Self::handle_peer_announcement) with the
    /// peer's measured [`NatProfile`] (C8), which refines the pair decision
    /// of punches to it. An announcement replaces the previous one whole: one
    /// without a profile withdraws the profile.
    pub fn handle_announcement(
        &mut self,
        peer: NodeId,
        announcement: Announcement,
    ) -> Result<(), AnnouncementError> {
        let Announcement {
            reflex,
            class,
            profile,
        } = announcement;
        let reflex = canonical_addr(reflex);
        let own = |a: Option<SocketAddr>| a.is_some_and(|a| canonical_addr(a) == reflex);
        if is_bogus_destination(reflex) || own(Some(self.bind)) || own(self.local_reflex()) {
            bump(&mut self.out.stats.announcements_refused);
            return Err(AnnouncementError::BogusReflex(reflex));
        }
        self.peers
            .update(peer, |p| {
                p.announced = Some(Announcement {
                    reflex,
                    class,
                    profile,
                });
            })
            .map_err(|_| AnnouncementError::DirectoryFull)
    }

    /// An RTT estimate to `peer` (feeds the adaptive fire lead, R9).
    pub fn handle_rtt(&mut self, peer: NodeId, rtt: Duration) -> Result<(), DirectoryFull> {
        self.peers
            .update(peer, |p| p.rtt = Some(rtt))
            .map_err(|_| DirectoryFull)
    }

    /// An estimate of `peer`'s wall-clock offset: `offset_ms` is the peer's
    /// wall clock minus ours, in milliseconds (the session measures it
    /// NTP-style: `t1 − (t0 + t2) / 2` for a request sent at our `t0`, stamped
    /// `t1` by the peer, answered at our `t2`). A later estimate replaces an
    /// earlier one; it is forgotten when the session goes down.
    ///
    /// The rule: a `PunchIntroduce` from coordinator `C` carries `fire_at_ms`
    /// on `C`'s clock. The agent schedules the keep-alive train at
    /// `fire_at_ms − offset(C)` on its own clock (saturating), and the R3
    /// bounds (a fire time in the past means now, one beyond the punch deadline
    /// is clamped to it) apply to that converted time. The wire value is never
    /// rewritten: the R8 keep-alive token still derives from it, so both ends
    /// agree. Without an estimate the offset is 0 and `fire_at_ms` is read as
    /// local time. Deadlines (`Instant`s) and the coordinator role, which
    /// stamps its own clock, are unaffected.
    pub fn handle_clock_offset(
        &mut self,
        peer: NodeId,
        offset_ms: i64,
    ) -> Result<(), DirectoryFull> {
        self.peers
            .update(peer, |p| p.clock_offset_ms = Some(offset_ms))
            .map_err(|_| DirectoryFull)
    }

    /// Publishes this node's own (class, reflex) found by the embedder's own
    /// means (the agent's sweeps publish theirs the same way). Emits
    /// [`Event::ClassificationChanged`] when it changes what is in force.
    pub fn set_local_classification(&mut self, class: NatClass, reflex: SocketAddr) {
        let reflex = canonical_addr(reflex);
        self.discovery.set_published(
            &mut self.out,
            Announcement {
                reflex,
                class,
                profile: None,
            },
        );
    }

    /// C8: this node's own mapping and filtering, measured by the embedder
    /// (an RFC 5780 behaviour discovery, `natrix_stun::behaviour`): it is
    /// announced with the class from now on (an
    /// [`Event::ClassificationChanged`] when a classification is in force),
    /// and the pair decision of this node's punches reads it
    /// ([`pair_action_with_profiles`]). `None` withdraws it. While a reflex
    /// override is installed the node announces [`NatProfile::OPEN`].
    pub fn set_local_profile(&mut self, profile: Option<NatProfile>) {
        self.discovery.set_profile(&mut self.out, profile);
    }

    /// C3: the host's own interface addresses, from the driver. With a
    /// wildcard bind, a reflex reads as Open only when its IP is one of these.
    pub fn set_interface_addrs(&mut self, addrs: &[IpAddr]) {
        self.discovery.set_interfaces(addrs);
    }

    /// C8: STUN servers (RFC 8489) that classification sweeps ask besides
    /// peers: each answer is an observation, each server's IP a destination
    /// (C4). At most [`MAX_STUN_SERVERS`](crate::discovery::MAX_STUN_SERVERS)
    /// are kept; addresses no datagram may go to are dropped. Their answers
    /// reach the agent through [`handle_datagram`](Self::handle_datagram).
    pub fn set_stun_servers(&mut self, servers: &[SocketAddr]) {
        self.discovery.set_stun_servers(servers);
    }

    // ----- commands -----

    /// Starts a punch to `target` through `coordinator`.
    ///
    /// `Ok(punch_id)` means exactly one terminal event
    /// ([`Event::PunchSucceeded`] or [`Event::PunchFailed`]) with that punch id
    /// follows, no later than the punch deadline. `Err` means nothing was
    /// started and no event follows.
    ///
    /// The pair matrix decides first (local class × the target's announced
    /// class): `SkipPunch` is `Err(Skipped)`; `Direct` with a known announced
    /// reflex succeeds at once with [`PathMethod::Direct`]; otherwise a
    /// rendezvous starts. A pending punch requested to the same target is
    /// superseded; a train the target's own rendezvous already runs with us is
    /// adopted instead, and no request is sent (R11: crossing requests converge
    /// on one rendezvous). Within a punch deadline of a rendezvous with the
    /// target, the request goes through that rendezvous' coordinator when a
    /// session to it is up, whatever `coordinator` says (R11).
    pub fn request_punch(
        &mut self,
        now: Instant,
        target: NodeId,
        coordinator: NodeId,
    ) -> Result<u32, TraversalError> {
        if target == self.id || coordinator == target || coordinator == self.id {
            return Err(TraversalError::InvalidTarget(target));
        }
        let announced = self.peers.announced(target);
        let local = self.nat_class();
        let remote = announced.map_or(NatClass::Unknown, |a| a.class);
        let remote_profile = announced.and_then(|a| a.profile);
        let mut action =
            pair_action_with_profiles(local, self.local_profile(), remote, remote_profile);
        // N2: a pair no rendezvous punch can open may still be opened by a
        // birthday attempt, when the caps allow one.
        let caps = self.config.spray();
        let birthday = birthday_side(local, self.local_profile(), remote, remote_profile);
        if action == PairAction::SkipPunch
            && birthday.is_some()
            && caps.sockets > 0
            && caps.max_probes > 0
        {
            action = PairAction::SinglePunch;
        }
        let punch_id = self.mint_punch_id();
        match (action, announced) {
            (PairAction::SkipPunch, _) => {
                bump(&mut self.out.stats.punches_skipped);
                bump(&mut self.out.stats.relay_fallbacks);
                let profiles = self.local_profile().zip(remote_profile);
                return Err(TraversalError::Skipped {
                    local,
                    remote,
                    profiles,
                });
            }
            (PairAction::Direct, Some(a)) => {
                bump(&mut self.out.stats.direct_paths);
                self.out.events.push_back(Event::PunchSucceeded {
                    peer: target,
                    punch_id: punch_id.get(),
                    role: Role::Requester,
                    path: a.reflex,
                    method: PathMethod::Direct,
                    elapsed: Duration::ZERO,
                });
                return Ok(punch_id.get());
            }
            _ => {}
        }
        if self.peers.session(coordinator).is_none() {
            return Err(TraversalError::NoSessionWithCoordinator(coordinator));
        }
        let self_reflex = self.local_reflex().ok_or(TraversalError::NoLocalReflex)?;
        let (mut cx, ep) = self.ctx();
        ep.start_request(&mut cx, now, target, coordinator, punch_id, self_reflex)?;
        Ok(punch_id.get())
    }

    /// C1: starts a classification sweep, or says why not (one is already
    /// running, an override suppresses sweeps, too few destinations).
    pub fn reclassify(&mut self, now: Instant) -> ReclassifyOutcome {
        let (mut cx, d) = self.dctx();
        d.reclassify(&mut cx, now)
    }

    /// Probes `peer` once for the address it sees us at; the answer arrives as
    /// [`Event::ReflexProbed`] with the returned probe id.
    pub fn probe_reflex(&mut self, now: Instant, peer: NodeId) -> Result<u64, ProbeError> {
        let (mut cx, d) = self.dctx();
        d.probe(&mut cx, now, peer)
    }

    /// Cancels a standalone probe; only its own answer is lost. Returns whether
    /// it was pending.
    pub fn cancel_probe(&mut self, probe_id: u64) -> bool {
        self.discovery.cancel_probe(probe_id)
    }

    /// C6: installs (`Some`) or removes (`None`) a reflex override — the
    /// operator's or an installed port mapping's public address. While it is
    /// installed the node is Open at that address and sweeps are suppressed;
    /// a sweep running when it arrives is discarded.
    pub fn set_reflex_override(&mut self, reflex: Option<SocketAddr>) {
        let reflex = reflex.map(canonical_addr);
        let (mut cx, d) = self.dctx();
        d.set_override(&mut cx, reflex);
    }

    /// Cancels the pending punch to `target` (for example because the future
    /// waiting for it was dropped). Its terminal event is
    /// [`TraversalError::Cancelled`]. Returns whether one was pending.
    pub fn cancel_punch(&mut self, now: Instant, target: NodeId) -> bool {
        let (mut cx, ep) = self.ctx();
        ep.abort(&mut cx, now, target, TraversalError::Cancelled)
    }

    /// Chooses a coordinator for a punch to `target` among `candidates` (peers
    /// with sessions to both ends) with the agent's seeded RNG; see
    /// [`crate::rendezvous::select_coordinator`]. No
    /// candidate is [`TraversalError::NoRelay`] (counted in `no_relay_skips`).
    pub fn select_coordinator(
        &mut self,
        target: NodeId,
        candidates: &[CoordinatorCandidate],
    ) -> Result<NodeId, TraversalError> {
        let result = select_coordinator(candidates, [self.id, target], &mut self.rng);
        if result.is_err() {
            bump(&mut self.out.stats.no_relay_skips);
            bump(&mut self.out.stats.relay_fallbacks);
        }
        result
    }

    fn mint_punch_id(&mut self) -> NonZeroU32 {
        loop {
            if let Some(id) = NonZeroU32::new(self.rng.next_u32()) {
                return id;
            }
        }
    }

    // ----- outputs -----

    /// The next thing to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.transmits.pop_front()
    }

    /// The next event for the application.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.out.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next needed; `None`
    /// when nothing is scheduled.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        crate::time::earliest(self.endpoint.poll_timeout(), self.discovery.poll_timeout())
    }
}
