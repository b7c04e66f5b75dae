//! Reflex discovery and the NAT classification sweep.
//!
//! | requirement | where |
//! |---|---|
//! | C1 single-flight sweep, generation-stamped waiters | `Discovery::reclassify`, [`prober`] |
//! | C2 no flapping, never a class without its reflex | [`decide_sweep`] |
//! | C3 wildcard bind needs an interface address for Open | [`crate::classify::classify`], fed by [`Discovery::set_interfaces`] |
//! | C4 distinct destination IPs | `pick_targets`, [`decide_sweep`] |
//! | C5 echo of the authenticated session address | the agent's reflex responder ([`crate::Agent::handle_control`]) |
//! | C6 override short-circuits sweeps, discards a running one | `Discovery::set_override` ([`crate::Agent::set_reflex_override`]) |
//! | C7 triggers: start, period, request, reflex change — never a handshake failure | `Discovery::handle_timeout`, `Discovery::handle_answer` |
//! | C8 STUN servers as sweep destinations, each a distinct IP (C4) | `Discovery::set_stun_servers`, `Discovery::handle_stun` |

pub mod prober;

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::net::{IpAddr, SocketAddr};

use crate::agent::io::{Channel, Event, Outbox};
use crate::agent::peers::{Announcement, Peers};
use crate::behaviour::NatProfile;
use crate::classify::{
    Classification, NatClass, Observation, canonical_addr, canonical_ip, classify,
};
use crate::config::Config;
use crate::rng::Rng;
use crate::stats::bump;
use crate::time::Instant;
use crate::wire::NodeId;

use prober::{Prober, Subscriber};

/// Most interface addresses kept for C3.
pub const MAX_INTERFACES: usize = 64;

/// Most STUN servers a sweep asks besides its peers (C8).
pub const MAX_STUN_SERVERS: usize = 8;

/// Why a reflex probe did not produce an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// There is no session with that peer.
    #[error("no session with {0}")]
    NoSession(NodeId),
    /// Too many standalone probes are pending.
    #[error("too many pending probes")]
    TooManyProbes,
    /// No answer within the probe timeout.
    #[error("no answer within the probe timeout")]
    Timeout,
    /// The session went down before the answer arrived.
    #[error("session went down")]
    SessionDown,
}

/// One observation made by a sweep, with the destination it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SweepObservation {
    /// The probed peer's (session) IP: the destination the mapping was made for.
    pub destination: IpAddr,
    /// What that peer saw.
    pub observation: Observation,
}

/// How a sweep ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SweepOutcome {
    /// At least two distinct destinations answered in time: the (class,
    /// reflex) pair was published (it may equal the previous one).
    Committed(Classification),
    /// Fewer than two destinations answered: the previous pair stays (C2).
    TooFewObservations {
        /// Distinct destinations that answered.
        observations: usize,
    },
    /// The sweep deadline passed with probes outstanding: the previous pair
    /// stays (C2).
    DeadlineMissed {
        /// Distinct destinations that had answered.
        observations: usize,
    },
    /// Fewer than two peers with distinct IPs to probe: nothing was sent and
    /// the previous pair stays (C4).
    InsufficientDestinations {
        /// Distinct destination IPs available.
        destinations: usize,
    },
    /// A reflex override was installed mid-sweep: the result was dropped (C6).
    Discarded,
}

/// What [`Agent::reclassify`](crate::Agent::reclassify) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReclassifyOutcome {
    /// A sweep started.
    Started {
        /// Its generation.
        generation: u64,
    },
    /// A sweep was already running: this request is a no-op (C1).
    AlreadyRunning {
        /// The running sweep's generation.
        generation: u64,
    },
    /// A reflex override is installed: sweeps are suppressed (C6).
    Suppressed,
    /// Fewer than two distinct destinations to probe (C4): nothing was sent.
    InsufficientDestinations {
        /// Distinct destination IPs available.
        destinations: usize,
    },
}

/// C2 + C4: turns a finished sweep's observations into an outcome. Only one
/// observation per destination IP counts; fewer than two distinct
/// destinations, or a missed deadline, never commit anything.
#[must_use]
pub fn decide_sweep(
    bind: SocketAddr,
    interfaces: &[IpAddr],
    observations: &[SweepObservation],
    deadline_missed: bool,
) -> SweepOutcome {
    let mut per_destination: Vec<Observation> = Vec::with_capacity(observations.len());
    let mut seen: Vec<IpAddr> = Vec::with_capacity(observations.len());
    for o in observations {
        let ip = canonical_ip(o.destination);
        if !seen.contains(&ip) {
            seen.push(ip);
            per_destination.push(o.observation);
        }
    }
    let n = seen.len();
    if deadline_missed {
        return SweepOutcome::DeadlineMissed { observations: n };
    }
    if n < 2 {
        return SweepOutcome::TooFewObservations { observations: n };
    }
    let c = classify(bind, interfaces, &per_destination);
    match c.reflex {
        // A class is never published without its reflex.
        Some(_) if c.class != NatClass::Unknown => SweepOutcome::Committed(c),
        _ => SweepOutcome::TooFewObservations { observations: n },
    }
}

/// C4: up to `k` peers with sessions, at most one per (canonical) IP, chosen at
/// random with the seeded `rng`.
#[must_use]
pub(crate) fn pick_targets(peers: &Peers, rng: &mut Rng, k: usize) -> Vec<(NodeId, IpAddr)> {
    let mut by_ip: BTreeMap<IpAddr, NodeId> = BTreeMap::new();
    // The lowest node id per IP: the directory iterates in no particular
    // order, the choice must not depend on it.
    for (id, addr) in peers.sessions() {
        by_ip
            .entry(canonical_ip(addr.ip()))
            .and_modify(|have| *have = (*have).min(id))
            .or_insert(id);
    }
    let mut list: Vec<(NodeId, IpAddr)> = by_ip.into_iter().map(|(ip, id)| (id, ip)).collect();
    let len = list.len();
    for i in 0..k.min(len) {
        let j = i.saturating_add(rng.below(len.saturating_sub(i)));
        list.swap(i, j);
    }
    list.truncate(k);
    list
}

#[derive(Clone, Debug)]
struct Sweep {
    generation: u64,
    deadline: Instant,
    targets: Vec<(NodeId, IpAddr)>,
    /// STUN servers asked (C8), each until answered or its probe timeout.
    stun: Vec<StunTarget>,
    observations: Vec<SweepObservation>,
    /// An override arrived mid-sweep (C6).
    discarded: bool,
}

/// A STUN server a sweep asked: where, with which transaction id, until when.
#[derive(Clone, Copy, Debug)]
struct StunTarget {
    server: SocketAddr,
    transaction: crate::wire::stun::TransactionId,
    deadline: Instant,
}

/// The node id a STUN server's observation is filed under: the server is no
/// peer, but classification keeps one observation per source, so each
/// server gets a stable id derived from its address (FNV-1a), tagged in the
/// top bit so that it reads as no ordinary node's.
#[must_use]
pub fn stun_source_id(server: SocketAddr) -> NodeId {
    let server = canonical_addr(server);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let ip: [u8; 16] = match server.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    for b in ip.iter().chain(server.port().to_be_bytes().iter()) {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    NodeId(h | (1 << 63))
}

/// What discovery needs from the agent for one call.
#[derive(Debug)]
pub(crate) struct DiscoveryCtx<'a> {
    pub(crate) bind: SocketAddr,
    pub(crate) config: &'a Config,
    pub(crate) peers: &'a Peers,
    pub(crate) rng: &'a mut Rng,
    pub(crate) out: &'a mut Outbox,
}

/// The discovery machine: prober, sweep, override and triggers.
#[derive(Clone, Debug)]
pub struct Discovery {
    prober: Prober,
    sweep: Option<Sweep>,
    generation: u64,
    next_probe_id: u64,
    /// The last committed (class, reflex): from a sweep or the embedder
    /// (its `profile` is unused: [`Self::profile`] goes with it).
    published: Option<Announcement>,
    /// C8: this node's measured mapping and filtering, from the embedder.
    profile: Option<NatProfile>,
    reflex_override: Option<SocketAddr>,
    interfaces: Vec<IpAddr>,
    /// STUN servers sweeps ask besides peers (C8), canonical form.
    stun_servers: Vec<SocketAddr>,
    /// C7: when the next automatic sweep is due (`Instant::ZERO` = at once).
    next_sweep_at: Option<Instant>,
    /// A sweep was wanted but there were not two destinations; retry when a
    /// session comes up.
    waiting_for_destinations: bool,
    last_reflex_trigger: Option<Instant>,
}

impl Discovery {
    pub(crate) fn new(config: &Config) -> Self {
        Discovery {
            prober: Prober::default(),
            sweep: None,
            generation: 0,
            next_probe_id: 0,
            published: None,
            profile: None,
            reflex_override: None,
            interfaces: Vec::new(),
            stun_servers: Vec::new(),
            // C7: classify at start.
            next_sweep_at: config.auto_reclassify().then_some(Instant::ZERO),
            waiting_for_destinations: false,
            last_reflex_trigger: None,
        }
    }

    /// The (class, reflex, profile) in force: the override as Open (C6),
    /// letting anyone in ([`NatProfile::OPEN`]), else the last committed pair
    /// with the measured profile (C8).
    #[must_use]
    pub fn effective(&self) -> Option<Announcement> {
        match self.reflex_override {
            Some(reflex) => Some(Announcement {
                reflex,
                class: NatClass::Open,
                profile: Some(NatProfile::OPEN),
            }),
            None => self.published.map(|a| Announcement {
                profile: self.profile,
                ..a
            }),
        }
    }

    /// The generation of the running sweep, if one runs.
    #[must_use]
    pub fn running_sweep(&self) -> Option<u64> {
        self.sweep.as_ref().map(|s| s.generation)
    }

    /// The installed reflex override.
    #[must_use]
    pub fn reflex_override(&self) -> Option<SocketAddr> {
        self.reflex_override
    }

    fn publish_if_changed(&self, out: &mut Outbox, before: Option<Announcement>) {
        let after = self.effective();
        if after != before {
            if let Some(a) = after {
                out.events.push_back(Event::ClassificationChanged {
                    class: a.class,
                    reflex: a.reflex,
                    profile: a.profile,
                });
            }
        }
    }

    /// Publishes a (class, reflex) found by the embedder's own means.
    pub(crate) fn set_published(&mut self, out: &mut Outbox, a: Announcement) {
        let before = self.effective();
        self.published = Some(a);
        self.publish_if_changed(out, before);
    }

    /// C8: this node's measured mapping and filtering, announced with its
    /// class from now on (`None` withdraws it).
    pub(crate) fn set_profile(&mut self, out: &mut Outbox, profile: Option<NatProfile>) {
        let before = self.effective();
        self.profile = profile;
        self.publish_if_changed(out, before);
    }

    /// The measured profile set by the embedder.
    #[must_use]
    pub fn profile(&self) -> Option<NatProfile> {
        self.profile
    }

    /// C3: the host's interface addresses (at most [`MAX_INTERFACES`] are kept).
    pub fn set_interfaces(&mut self, interfaces: &[IpAddr]) {
        self.interfaces.clear();
        self.interfaces
            .extend(interfaces.iter().take(MAX_INTERFACES).copied());
    }

    /// C8: the STUN servers sweeps ask besides peers (at most
    /// [`MAX_STUN_SERVERS`]; an address no datagram may go to — unspecified,
    /// multicast, broadcast, port 0 — is dropped, as R13 drops such
    /// reflexes). Their answers count as observations, each server's IP a
    /// destination (C4).
    pub fn set_stun_servers(&mut self, servers: &[SocketAddr]) {
        self.stun_servers.clear();
        for s in servers.iter().map(|s| canonical_addr(*s)) {
            let bad = s.port() == 0
                || s.ip().is_unspecified()
                || s.ip().is_multicast()
                || matches!(s.ip(), IpAddr::V4(v4) if v4.is_broadcast());
            if !bad && !self.stun_servers.contains(&s) && self.stun_servers.len() < MAX_STUN_SERVERS
            {
                self.stun_servers.push(s);
            }
        }
    }

    /// The STUN servers sweeps ask.
    #[must_use]
    pub fn stun_servers(&self) -> &[SocketAddr] {
        &self.stun_servers
    }

    /// C6: installs (or with `None` removes) the reflex override. Installing
    /// one discards a running sweep's result; removing it restores the last
    /// committed pair and, with automatic classification, sweeps again.
    pub(crate) fn set_override(&mut self, cx: &mut DiscoveryCtx<'_>, reflex: Option<SocketAddr>) {
        let before = self.effective();
        self.reflex_override = reflex;
        match reflex {
            Some(_) => {
                if let Some(s) = self.sweep.as_mut() {
                    s.discarded = true;
                }
            }
            None => {
                if cx.config.auto_reclassify() {
                    self.next_sweep_at = Some(Instant::ZERO);
                }
            }
        }
        self.publish_if_changed(cx.out, before);
    }

    /// C1, C4, C6: starts a sweep unless one runs or an override is installed.
    pub(crate) fn reclassify(
        &mut self,
        cx: &mut DiscoveryCtx<'_>,
        now: Instant,
    ) -> ReclassifyOutcome {
        if self.reflex_override.is_some() {
            return ReclassifyOutcome::Suppressed;
        }
        if let Some(s) = &self.sweep {
            return ReclassifyOutcome::AlreadyRunning {
                generation: s.generation,
            };
        }
        let targets = pick_targets(cx.peers, cx.rng, cx.config.sweep_targets() as usize);
        // C8 + C4: STUN servers of the bound address's family, at IPs no
        // peer target has and distinct among themselves.
        let mut stun_ips: Vec<IpAddr> = targets.iter().map(|(_, ip)| *ip).collect();
        let mut stun_servers: Vec<SocketAddr> = Vec::new();
        for s in &self.stun_servers {
            if s.is_ipv4() == cx.bind.is_ipv4() && !stun_ips.contains(&s.ip()) {
                stun_ips.push(s.ip());
                stun_servers.push(*s);
            }
        }
        if targets.len() + stun_servers.len() < 2 {
            self.waiting_for_destinations = true;
            let destinations = targets.len() + stun_servers.len();
            cx.out.events.push_back(Event::SweepFinished {
                generation: self.generation,
                outcome: SweepOutcome::InsufficientDestinations { destinations },
            });
            return ReclassifyOutcome::InsufficientDestinations { destinations };
        }
        self.waiting_for_destinations = false;
        self.next_sweep_at = None;
        self.generation = self.generation.saturating_add(1);
        let generation = self.generation;
        let probe_deadline = now.saturating_add(cx.config.reflex_probe_timeout());
        for (peer, _) in &targets {
            if self
                .prober
                .subscribe(*peer, Subscriber::Sweep(generation), probe_deadline)
            {
                cx.out.control(*peer, Channel::ReflexRequest, &[]);
            }
        }
        let mut stun = Vec::with_capacity(stun_servers.len());
        for server in stun_servers {
            let mut transaction = [0u8; 12];
            transaction[..8].copy_from_slice(&cx.rng.next_u64().to_le_bytes());
            transaction[8..].copy_from_slice(&cx.rng.next_u64().to_le_bytes()[..4]);
            let req = crate::wire::stun::BindingRequest {
                transaction,
                fingerprint: true,
                ..Default::default()
            };
            let mut buf = [0u8; 32];
            if let Ok(n) = crate::wire::stun::encode_request(&req, &mut buf) {
                cx.out
                    .datagram(cx.bind, server, buf.get(..n).unwrap_or_default());
                stun.push(StunTarget {
                    server,
                    transaction,
                    deadline: probe_deadline,
                });
            }
        }
        self.sweep = Some(Sweep {
            generation,
            deadline: now.saturating_add(cx.config.sweep_deadline()),
            observations: Vec::with_capacity(targets.len() + stun.len()),
            targets,
            stun,
            discarded: false,
        });
        ReclassifyOutcome::Started { generation }
    }

    /// Starts a standalone probe of `peer`; its answer arrives as
    /// [`Event::ReflexProbed`] with the returned id.
    pub(crate) fn probe(
        &mut self,
        cx: &mut DiscoveryCtx<'_>,
        now: Instant,
        peer: NodeId,
    ) -> Result<u64, ProbeError> {
        if cx.peers.session(peer).is_none() {
            return Err(ProbeError::NoSession(peer));
        }
        if self.prober.standalone_count() >= cx.config.max_pending_probes() as usize {
            return Err(ProbeError::TooManyProbes);
        }
        self.next_probe_id = self.next_probe_id.saturating_add(1);
        let id = self.next_probe_id;
        let deadline = now.saturating_add(cx.config.reflex_probe_timeout());
        if self
            .prober
            .subscribe(peer, Subscriber::Standalone(id), deadline)
        {
            cx.out.control(peer, Channel::ReflexRequest, &[]);
        }
        Ok(id)
    }

    /// Cancels a standalone probe: only its own subscription goes.
    pub(crate) fn cancel_probe(&mut self, id: u64) -> bool {
        let sub = Subscriber::Standalone(id);
        let waiting = self.prober.is_waiting(sub);
        self.prober.unsubscribe(sub);
        waiting
    }

    /// A reflex response from `from` reporting `observed`.
    pub(crate) fn handle_answer(
        &mut self,
        cx: &mut DiscoveryCtx<'_>,
        now: Instant,
        from: NodeId,
        observed: SocketAddr,
    ) {
        let Some(f) = self.prober.answer(from) else {
            return bump(&mut cx.out.stats.reflex_answers_unsolicited);
        };
        for sub in f.subscribers {
            match sub {
                Subscriber::Sweep(g) => {
                    if let Some(s) = self.sweep.as_mut().filter(|s| s.generation == g) {
                        if let Some((_, ip)) = s.targets.iter().find(|(p, _)| *p == from) {
                            s.observations.push(SweepObservation {
                                destination: *ip,
                                observation: Observation {
                                    peer: from,
                                    reflex: observed,
                                },
                            });
                        }
                    }
                }
                Subscriber::Standalone(probe_id) => {
                    cx.out.events.push_back(Event::ReflexProbed {
                        probe_id,
                        peer: from,
                        result: Ok(observed),
                    });
                    self.note_reflex(cx.config, now, observed);
                }
            }
        }
        self.finish_if_resolved(cx, now);
    }

    /// C8: a datagram that may be a STUN server's answer to the running
    /// sweep. It counts only with the transaction id the sweep sent to that
    /// very server and from that server's address (an off-path sender cannot
    /// guess 96 random bits); anything else is not ours (`false`).
    pub(crate) fn handle_stun(
        &mut self,
        cx: &mut DiscoveryCtx<'_>,
        now: Instant,
        src: SocketAddr,
        datagram: &[u8],
    ) -> bool {
        let Ok(crate::wire::stun::Message::Success(resp)) = crate::wire::stun::decode(datagram)
        else {
            return false;
        };
        let src = canonical_addr(src);
        let Some(sweep) = self.sweep.as_mut() else {
            return false;
        };
        let Some(i) = sweep
            .stun
            .iter()
            .position(|t| t.transaction == resp.transaction && t.server == src)
        else {
            return false;
        };
        let target = sweep.stun.swap_remove(i);
        sweep.observations.push(SweepObservation {
            destination: target.server.ip(),
            observation: Observation {
                peer: stun_source_id(target.server),
                reflex: canonical_addr(resp.mapped),
            },
        });
        self.finish_if_resolved(cx, now);
        true
    }

    /// C7: a standalone probe saw a reflex different from the published one →
    /// sweep (at most once per cooldown). For a symmetric NAT only the IP is
    /// compared: its port differs per destination by nature.
    fn note_reflex(&mut self, config: &Config, now: Instant, observed: SocketAddr) {
        if !config.auto_reclassify() || self.reflex_override.is_some() || self.sweep.is_some() {
            return;
        }
        let Some(p) = self.published else {
            return;
        };
        let changed = if p.class == NatClass::Symmetric {
            canonical_ip(p.reflex.ip()) != canonical_ip(observed.ip())
        } else {
            canonical_addr(p.reflex) != canonical_addr(observed)
        };
        let cooled = self
            .last_reflex_trigger
            .is_none_or(|t| now.saturating_duration_since(t) >= config.reflex_change_cooldown());
        if changed && cooled {
            self.last_reflex_trigger = Some(now);
            self.next_sweep_at = Some(now);
        }
    }

    /// The session to `peer` went down: its in-flight probe can never be answered.
    pub(crate) fn session_down(&mut self, cx: &mut DiscoveryCtx<'_>, now: Instant, peer: NodeId) {
        if let Some(f) = self.prober.answer(peer) {
            fail_standalone(cx.out, peer, f, ProbeError::SessionDown);
        }
        self.finish_if_resolved(cx, now);
    }

    /// A session came up: a sweep that lacked destinations may now run.
    pub(crate) fn session_up(&mut self, config: &Config) {
        if self.waiting_for_destinations && config.auto_reclassify() && self.sweep.is_none() {
            self.next_sweep_at = Some(Instant::ZERO);
        }
    }

    fn finish_if_resolved(&mut self, cx: &mut DiscoveryCtx<'_>, now: Instant) {
        let resolved = self.sweep.as_ref().is_some_and(|s| {
            s.stun.is_empty() && !self.prober.is_waiting(Subscriber::Sweep(s.generation))
        });
        if resolved {
            self.finish(cx, now, false);
        }
    }

    fn finish(&mut self, cx: &mut DiscoveryCtx<'_>, now: Instant, deadline_missed: bool) {
        let Some(s) = self.sweep.take() else {
            return;
        };
        self.prober.unsubscribe(Subscriber::Sweep(s.generation));
        let outcome = if s.discarded {
            SweepOutcome::Discarded
        } else {
            decide_sweep(cx.bind, &self.interfaces, &s.observations, deadline_missed)
        };
        if let SweepOutcome::Committed(Classification {
            class,
            reflex: Some(reflex),
            ..
        }) = outcome
        {
            let before = self.effective();
            self.published = Some(Announcement {
                reflex,
                class,
                profile: None,
            });
            self.publish_if_changed(cx.out, before);
        }
        cx.out.events.push_back(Event::SweepFinished {
            generation: s.generation,
            outcome,
        });
        if cx.config.auto_reclassify() {
            self.next_sweep_at = Some(now.saturating_add(cx.config.reclassify_interval()));
        }
    }

    /// Ends a sweep at its deadline, expires probes, and starts due sweeps.
    pub(crate) fn handle_timeout(&mut self, cx: &mut DiscoveryCtx<'_>, now: Instant) {
        // The sweep deadline is checked before probes expire, so a probe that
        // times out at the same instant still counts as missing (C2).
        if let Some(generation) = self
            .sweep
            .as_ref()
            .filter(|s| s.deadline <= now)
            .map(|s| s.generation)
        {
            let missed = self.prober.is_waiting(Subscriber::Sweep(generation));
            self.finish(cx, now, missed);
        }
        for (peer, f) in self.prober.expire(now) {
            fail_standalone(cx.out, peer, f, ProbeError::Timeout);
        }
        // A STUN server that did not answer in time just loses its
        // observation, as a peer's expired probe does.
        if let Some(s) = self.sweep.as_mut() {
            s.stun.retain(|t| t.deadline > now);
        }
        self.finish_if_resolved(cx, now);
        if self.sweep.is_none() && self.next_sweep_at.is_some_and(|t| t <= now) {
            self.next_sweep_at = None;
            if self.reflex_override.is_none() {
                let _ = self.reclassify(cx, now);
            }
        }
    }

    /// The earliest instant discovery needs `handle_timeout`.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.prober.next_deadline(),
            self.sweep.as_ref().map(|s| s.deadline),
            self.sweep
                .as_ref()
                .and_then(|s| s.stun.iter().map(|t| t.deadline).min()),
            self.next_sweep_at.filter(|_| self.sweep.is_none()),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// Ends every standalone probe waiting on `f` with `error`. A sweep waiting on
/// it just loses that observation.
fn fail_standalone(out: &mut Outbox, peer: NodeId, f: prober::InFlight, error: ProbeError) {
    for sub in f.subscribers {
        if let Subscriber::Standalone(probe_id) = sub {
            out.events.push_back(Event::ReflexProbed {
                probe_id,
                peer,
                result: Err(error),
            });
        }
    }
}
