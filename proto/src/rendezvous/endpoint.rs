//! The endpoint roles (A and B): start a punch, take introduces, run the
//! keep-alive train, confirm on a valid keep-alive, exchange acks, and resolve
//! every punch to exactly one outcome.
//!
//! Requirements implemented here: **R2** (a keep-alive is validated before it
//! can consume a pending punch), **R3** (the train follows
//! [`KeepaliveTrain`], clamped to the punch deadline measured from the start
//! of the punch, whatever `now` does), **R4** (unsolicited introduces must
//! agree with the peer's own announcement), **R5** (responder budgets per
//! introducer and requester, failing closed, refusals sent back), **R6**
//! (stale rejects ignored), **R7** (an ack is accepted only for a pending
//! punch, bound to its punch id when the coordinator told it), **R8** (token
//! confirmation and peer-reflexive path learning), **R10** (the train stops
//! once both sides are done, and a duplicate introduce changes nothing),
//! **R11** (crossing rendezvous converge), **R12** (solicited introduces are
//! checked against the target's announcement), **R13** (no keep-alive to a
//! bogus destination), **C9** (one address form), **N1** (a coordinator's
//! port prediction widens the train to a window of ports on the
//! introduced IP, see "Port prediction" below).
//!
//! Clock skew: an introduce's `fire_at_ms` is wall-clock time on the
//! coordinator's clock. The train is scheduled (and the fire time bounded, R3)
//! at that instant read on our clock, `fire_at_ms − offset` with the
//! coordinator's offset from the peer directory (0 when unknown); the R8 token
//! is derived from the wire value, which both ends share.
//!
//! # One rendezvous, one outcome
//!
//! A rendezvous is one coordinator's introduce of a pair: (coordinator, peer,
//! `fire_at_ms`). Each runs at most one train here. An introduce of a
//! rendezvous this node already ran (or runs) is a duplicate and changes
//! nothing: no new train, no second event, no budget spent (the one exception
//! is the answer to a request still waiting for its introduce, which is always
//! taken: that is how a crossing request learns the rendezvous it joined).
//!
//! # Crossing rendezvous (R11)
//!
//! When A and B ask for each other at about the same time, two rendezvous
//! exist for one pair, and each side must run the *same* train (same token,
//! acks through the same coordinator). The rules, deterministic and the same
//! on both sides:
//!
//! * **Same coordinator**: the coordinator lets the later request join the
//!   earlier rendezvous (see [`super::coordinator`]); both ends take that
//!   introduce as the answer to their own request. (If the joined rendezvous
//!   already found its path here, the request succeeds at once with it.)
//! * **Different coordinators — the lower node id's rendezvous wins.** An
//!   endpoint whose own request is pending and which receives the peer's
//!   introduce through another coordinator keeps its own rendezvous when its
//!   node id is the lower one (the peer's introduce is dropped), and otherwise
//!   *adopts* the peer's: its punch (same punch id, same deadline, same single
//!   outcome) runs the train of that introduce, confirms on its token, and
//!   exchanges acks through that coordinator. The adopted introduce is held to
//!   R4 and R13 like any unsolicited one (no responder budget is spent: this
//!   node asked for the peer itself).
//! * **The losing rendezvous stays lost, however late it comes.** Each node
//!   remembers its last punch with a peer for a punch deadline after it
//!   started. The lower id, after its own request, drops the peer's
//!   introduces through any other coordinator than the one whose rendezvous
//!   ran; the higher id, having adopted before its own coordinator answered,
//!   drops that answer when it arrives. Neither starts a train nobody runs.
//! * **A new request within that time** goes through the coordinator of the
//!   rendezvous that ran with the peer (when a session to it is up), not the
//!   one asked for, so that the peer cannot take it for a crossing's loser.
//! * **A request meets a train already running for the peer** (the peer's
//!   introduce arrived first): `request_punch` adopts that train instead of
//!   starting a second rendezvous; no request is sent, and the punch's one
//!   outcome is that train's (at once if it already succeeded).
//!
//! Both ends must be natrix for crossings through different coordinators to
//! converge (a Net v0.27 peer never adopts); through one natrix coordinator
//! they converge with any endpoints.
//!
//! # Port prediction (N1)
//!
//! When the peer maps per destination but allocates ports sequentially, the
//! coordinator sends a [`PunchPredict`] right before its introduce: the port
//! the peer's next mapping will most likely get. It is kept like a
//! [`PunchBind`] and taken only by the train of that coordinator's
//! rendezvous (same peer, same fire time). Until the peer's keep-alive
//! arrives, each tick of that train also sends a keep-alive to the
//! predicted port and the next ones in the peer's step —
//! [`Config::prediction_window`] ports, skipping the introduced port and
//! ports outside `1..=65535` — always on the **introduced IP** (the message
//! carries no address: N3). The window opens this side's filter for the
//! port the peer's keep-alive will come from; R8 already accepts the peer's
//! token from any port of that IP.
//!
//! # Refusals (R5)
//!
//! An introduce this node will not run — a responder budget is spent, the
//! reflex fails R4, R12 or R13 — is answered to its coordinator with a natrix
//! *refuse* (only when that coordinator speaks natrix), which the coordinator
//! relays to the other end as *refused*: the requester learns it as
//! [`TraversalError::Rejected`] within about one round trip instead of at its
//! deadline. A requester whose own introduce fails R12 or R13 ends its punch at
//! once with the same typed error.

use core::net::SocketAddr;

use super::punches::{Pending, Punches};

use crate::agent::io::{Channel, Event, Outbox, PathMethod, Role};
use crate::agent::peers::Peers;
use crate::behaviour::{NatProfile, birthday_side};
use crate::classify::NatClass;
use crate::classify::{canonical_addr, canonical_ip, is_bogus_destination};
use crate::config::{Config, UnannouncedPeerPolicy};
use crate::error::{PunchStage, TraversalError};
use crate::rng::mix64;
use crate::schedule::KeepaliveTrain;
use crate::spray::{SprayMachine, SprayOutcome, SpraySide};
use crate::stats::bump;
use crate::table::WindowTable;
use crate::time::{Instant, duration_to_millis, peer_wall_to_local};
use crate::wire::{
    Keepalive, NatrixMessage, NodeId, PunchAck, PunchBind, PunchIntroduce, PunchPredict,
    PunchRefusal, PunchReject, PunchRequest, RejectReason,
};

/// R8: the keep-alive token both ends derive from what their introduces share
/// (the two node ids and `fire_at_ms`). Never 0; 0 marks an older peer.
///
/// The token is not a secret: it ties a keep-alive to one introduce, so that a
/// stray or replayed keep-alive from an earlier punch, or one from a node that
/// was never introduced, cannot confirm this punch.
#[must_use]
pub fn keepalive_token(a: NodeId, b: NodeId, fire_at_ms: u64) -> u32 {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let h = mix64(lo.0 ^ mix64(hi.0 ^ mix64(fire_at_ms)));
    let t = ((h >> 32) as u32) ^ (h as u32);
    if t == 0 { 1 } else { t }
}

/// What the endpoint machines need from the agent for one call.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    pub(crate) id: NodeId,
    pub(crate) bind: SocketAddr,
    /// This node's public address, when known (R13: never a keep-alive to
    /// ourselves).
    pub(crate) local_reflex: Option<SocketAddr>,
    /// This node's class and profile in force (N2: which side of a birthday
    /// punch it plays).
    pub(crate) local_class: NatClass,
    pub(crate) local_profile: Option<NatProfile>,
    pub(crate) config: &'a Config,
    pub(crate) peers: &'a Peers,
    pub(crate) out: &'a mut Outbox,
}

impl Ctx<'_> {
    /// R5: tells the coordinator `to` that this node will not run its
    /// rendezvous with `peer` — only when `to` speaks natrix.
    fn refuse(&mut self, to: NodeId, peer: NodeId, punch_id: u32, reason: RejectReason) {
        if self.config.natrix_extensions() && self.peers.natrix(to) {
            let msg = NatrixMessage::Refuse(PunchRefusal {
                peer,
                punch_id,
                reason,
            });
            let (bytes, len) = msg.to_bytes();
            self.out
                .control(to, Channel::Natrix, bytes.get(..len).unwrap_or(&[]));
            bump(&mut self.out.stats.refusals_sent);
        }
    }

    /// R13: a reflex no keep-alive may go to — a bogus destination, the
    /// introducing coordinator's own (session) address, or our own.
    fn bogus(&self, coordinator: NodeId, reflex: SocketAddr) -> bool {
        is_bogus_destination(reflex)
            || self
                .peers
                .session(coordinator)
                .is_some_and(|a| canonical_addr(a) == reflex)
            || canonical_addr(self.bind) == reflex
            || self
                .local_reflex
                .is_some_and(|a| canonical_addr(a) == reflex)
    }

    /// R4, R12: does `reflex` agree (by IP) with `peer`'s own announcement?
    /// `None` when the peer announced nothing.
    fn agrees(&self, peer: NodeId, reflex: SocketAddr) -> Option<bool> {
        self.peers
            .announced(peer)
            .map(|a| canonical_ip(a.reflex.ip()) == canonical_ip(reflex.ip()))
    }
}

#[derive(Clone, Debug)]
struct Train {
    /// The address the introduce named (canonical).
    introduced: SocketAddr,
    /// Where keep-alives go: the introduced address, then the learned path.
    send_to: SocketAddr,
    token: u32,
    /// The rendezvous this train runs: the coordinator that introduced it
    /// (acks go through it) and its wire fire time.
    coordinator: NodeId,
    fire_at_ms: u64,
    /// The punch id our acks carry and acks to us must carry: our own for the
    /// answer to our request, the bound one for a peer's rendezvous (R7), 0
    /// when unknown.
    ack_id: u32,
    schedule: KeepaliveTrain,
    /// Schedule offsets count from here.
    origin: Instant,
    next_index: u32,
    /// The peer's keep-alive arrived from here (R8 path).
    seen: Option<SocketAddr>,
    /// The peer's ack arrived.
    acked: bool,
    /// Keep-alives this train has sent. The peer can only ack after seeing one,
    /// so an ack arriving before any was sent is a late ack of an earlier punch.
    sent: u32,
    /// N1: the peer's predicted ports, covered until its keep-alive arrives.
    window: Option<Window>,
    /// N2: this train's birthday attempt, when its pair needs one.
    birthday: Option<Birthday>,
    /// N2, hard side: the attempt socket the peer's keep-alive came in on;
    /// keep-alives to the path leave from it.
    via: Option<(u64, u16)>,
}

/// N2: a train's birthday attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Birthday {
    side: SpraySide,
    state: BirthdayState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BirthdayState {
    /// Starts at this time: the opener at the fire time, the prober once
    /// the opener's sockets are all open.
    Pending(Instant),
    /// Running (or ended) under this attempt id.
    Started(u64),
    /// The caps refused it.
    Refused,
}

impl Birthday {
    fn due(&self) -> Option<Instant> {
        match self.state {
            BirthdayState::Pending(at) => Some(at),
            _ => None,
        }
    }
}

/// Sends a keep-alive from wherever the train's path is: the attempt
/// socket it came in on (N2, hard side), else the main socket.
fn send_keepalive(
    out: &mut Outbox,
    bind: SocketAddr,
    via: Option<(u64, u16)>,
    to: SocketAddr,
    ka: &[u8],
) {
    match via {
        Some((attempt, socket)) => out.spray(attempt, socket, to, ka),
        None => out.datagram(bind, to, ka),
    }
}

/// N2: turns the spray machine's ended attempts into events; `keep` is the
/// (attempt, socket) a success came in on.
fn drain_spray(spray: &mut SprayMachine, out: &mut Outbox, keep: Option<(u64, u16)>) {
    while let Some(e) = spray.poll_event() {
        let won = matches!(e.outcome, SprayOutcome::Succeeded { .. });
        if won {
            bump(&mut out.stats.birthday_successes);
        }
        out.events.push_back(Event::SprayEnded {
            peer: e.peer,
            attempt: e.attempt,
            outcome: e.outcome,
            keep: keep
                .filter(|(attempt, _)| won && *attempt == e.attempt)
                .map(|(_, socket)| socket),
            sent: e.sent,
        });
    }
}

/// N1: the ports a train covers besides the introduced one: `len` ports from
/// `port` on, `step` apart, on the introduced IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    port: u16,
    step: i16,
    len: u16,
}

impl Window {
    /// The window's ports in `1..=65535` other than `skip`, in order.
    fn ports(self, skip: u16) -> impl Iterator<Item = u16> {
        (0..i32::from(self.len))
            .map(move |j| i32::from(self.port) + j * i32::from(self.step))
            .filter_map(|p| u16::try_from(p).ok())
            .filter(move |&p| p != 0 && p != skip)
    }
}

impl Train {
    fn next_at(&self) -> Option<Instant> {
        self.schedule
            .offset(self.next_index)
            .map(|o| self.origin.saturating_add(o))
    }

    /// R8: right token from any port of the introduced IP, or token 0 (an older
    /// peer) from exactly the introduced address.
    fn accepts(&self, src: SocketAddr, token: u32) -> bool {
        if token == 0 {
            canonical_addr(src) == canonical_addr(self.introduced)
        } else {
            token == self.token && canonical_ip(src.ip()) == canonical_ip(self.introduced.ip())
        }
    }

    /// R10: both the counterpart's keep-alive and its ack have arrived.
    fn done(&self) -> bool {
        self.seen.is_some() && self.acked
    }
}

// A punch waiting for its introduce is short-lived and there are at most
// `max_pending_punches` of them: boxing the train would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
enum Phase {
    AwaitIntroduce,
    Train(Train),
}

#[derive(Clone, Debug)]
struct Punch {
    /// The id events report: the requester's own, 0 for a responder.
    punch_id: u32,
    /// Requester: the coordinator asked. Responder: the introducer.
    coordinator: NodeId,
    role: Role,
    started: Instant,
    deadline: Instant,
    phase: Phase,
    /// The terminal event went out (success can precede the end of the train).
    reported: bool,
}

impl Punch {
    fn stage(&self) -> PunchStage {
        match self.phase {
            Phase::AwaitIntroduce => PunchStage::Introduce,
            Phase::Train(_) => PunchStage::Keepalive,
        }
    }
}

impl Pending for Punch {
    fn wake(&self) -> Instant {
        let train = match &self.phase {
            Phase::Train(t) => crate::time::earliest(t.next_at(), t.birthday.and_then(|b| b.due())),
            Phase::AwaitIntroduce => None,
        };
        train.map_or(self.deadline, |t| t.min(self.deadline))
    }

    fn responder_for(&self) -> Option<NodeId> {
        (self.role == Role::Responder).then_some(self.coordinator)
    }
}

/// What an introduce is to the punch held with its peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Intro {
    /// Its rendezvous already ran (or runs) here: changes nothing.
    Duplicate,
    /// Another rendezvous for a pair that has a live one: dropped.
    Conflict,
    /// The answer to our request.
    Solicited,
    /// R11: the peer's crossing rendezvous, which wins over ours.
    Adopt,
    /// A peer's rendezvous, perhaps replacing a finished or older punch.
    Unsolicited { replaces: bool },
}

/// Sorts an introduce of `peer` from `from` at `fire` (`seen`: that
/// rendezvous already ran here) against the punch `p` held with `peer`, on
/// node `me` (see the module docs).
fn sort_intro(p: &Punch, me: NodeId, peer: NodeId, from: NodeId, fire: u64, seen: bool) -> Intro {
    let train = match &p.phase {
        Phase::Train(t) => Some(t),
        Phase::AwaitIntroduce => None,
    };
    if train.is_some_and(|t| t.coordinator == from && t.fire_at_ms == fire) {
        return Intro::Duplicate;
    }
    if p.role == Role::Requester && train.is_none() && p.coordinator == from {
        return Intro::Solicited;
    }
    if seen {
        return Intro::Duplicate;
    }
    let replace = Intro::Unsolicited { replaces: true };
    // Our punch runs the peer's rendezvous (R11): our own one is abandoned.
    let adopted = train.is_some_and(|t| t.coordinator != p.coordinator);
    match p.role {
        // A finished punch still waiting for its last ack, or the requester
        // asking again through the same coordinator: the newer one replaces it.
        Role::Responder if p.reported || p.coordinator == from => replace,
        Role::Responder => Intro::Conflict,
        Role::Requester if from == p.coordinator => {
            if p.reported && !adopted {
                replace
            } else {
                Intro::Conflict
            }
        }
        // R11 tie-break: the lower node id's rendezvous wins.
        Role::Requester if me < peer => Intro::Conflict,
        Role::Requester if p.reported => replace,
        Role::Requester if adopted => Intro::Conflict,
        Role::Requester => Intro::Adopt,
    }
}

/// The last punch with a peer, remembered for a punch deadline after it
/// started: the losing side of a crossing (R11) is recognised even when it
/// arrives after the punch ended, and a new request within that time goes
/// through the coordinator of the rendezvous that ran.
#[derive(Clone, Copy, Debug)]
struct Recent {
    /// The coordinator our request went to (`None`: we only responded).
    own: Option<NodeId>,
    /// The coordinator whose rendezvous ran here last, once one ran.
    ran: Option<NodeId>,
}

impl Recent {
    /// R11: is an introduce of the peer from `from`, arriving when no punch
    /// with it is pending, the losing rendezvous of a crossing? For the lower
    /// id, after its own request: one through another coordinator than the
    /// rendezvous that ran. (The higher id's own losing rendezvous is
    /// recognised by [`Endpoint::abandoned`].)
    fn loser(&self, me: NodeId, peer: NodeId, from: NodeId) -> bool {
        match (self.own, self.ran) {
            (Some(_), Some(ran)) => me < peer && from != ran,
            _ => false,
        }
    }
}

/// The endpoint machine: every pending punch, keyed by the peer (one per peer).
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// One pending punch per peer, with its timer (`poll_timeout` in `O(1)`).
    punches: Punches<Punch>,
    /// R5: unsolicited trains per (introducer, requester) per window; fails
    /// closed.
    intro_budget: WindowTable<(NodeId, NodeId), u32>,
    /// Rendezvous (coordinator, peer, fire time) that started a train here
    /// recently, with the path they found: their duplicates change nothing.
    rendezvous: WindowTable<(NodeId, NodeId, u64), Option<SocketAddr>>,
    /// R7: punch ids coordinators bound to the introduce they send next,
    /// keyed by (coordinator, peer): (fire time, punch id).
    bindings: WindowTable<(NodeId, NodeId), (u64, u32)>,
    /// N1: port predictions coordinators sent for the introduce they send
    /// next, keyed by (coordinator, peer): (fire time, port, step).
    predictions: WindowTable<(NodeId, NodeId), (u64, u16, i16)>,
    /// N2: the birthday attempts, under the caps of `Config::spray`.
    spray: SprayMachine,
    /// R11: the last punch with each peer, for a punch deadline after it
    /// started.
    recent: WindowTable<NodeId, Recent>,
    /// R11: (coordinator, peer) whose introduce answers a request of ours
    /// that adopted the peer's rendezvous before that introduce arrived: it
    /// is dropped when it comes.
    abandoned: WindowTable<(NodeId, NodeId), ()>,
}

/// Emits the terminal event for `p` once, with the matching counters.
fn report(
    out: &mut Outbox,
    peer: NodeId,
    p: &mut Punch,
    now: Instant,
    outcome: Result<(SocketAddr, PathMethod), TraversalError>,
) {
    if p.reported {
        return;
    }
    p.reported = true;
    let elapsed = now.saturating_duration_since(p.started);
    let stats = &mut out.stats;
    let requester = p.role == Role::Requester;
    let event = match outcome {
        Ok((path, method)) => {
            bump(if requester {
                &mut stats.punches_succeeded
            } else {
                &mut stats.responder_successes
            });
            Event::PunchSucceeded {
                peer,
                punch_id: p.punch_id,
                role: p.role,
                path,
                method,
                elapsed,
            }
        }
        Err(error) => {
            if requester {
                let (counter, fallback) = match error {
                    TraversalError::DeadlinePassed { .. } => (&mut stats.punch_timeouts, true),
                    TraversalError::Rejected(_) => (&mut stats.punch_rejections, true),
                    TraversalError::NoSessionWithCoordinator(_) => {
                        (&mut stats.punches_cancelled, true)
                    }
                    _ => (&mut stats.punches_cancelled, false),
                };
                bump(counter);
                if fallback {
                    bump(&mut stats.relay_fallbacks);
                }
            }
            Event::PunchFailed {
                peer,
                punch_id: p.punch_id,
                role: p.role,
                error,
                elapsed,
            }
        }
    };
    out.events.push_back(event);
}

fn deadline_error(config: &Config, p: &Punch) -> TraversalError {
    TraversalError::DeadlinePassed {
        stage: p.stage(),
        deadline: config.punch_deadline(),
    }
}

impl Endpoint {
    /// Every table is sized now from `config` (`seed` keys their hashes):
    /// no input allocates afterwards.
    pub(crate) fn new(config: &Config, seed: u64) -> Self {
        let cap = config.budget_table_capacity() as usize;
        let pending = config.max_pending_punches() as usize;
        let seeds = |i: u64| mix64(seed ^ i);
        Endpoint {
            punches: Punches::with_capacity(pending, seeds(1)),
            intro_budget: WindowTable::with_seed(cap, config.budget_window(), seeds(2)),
            // Longer than the staleness horizon below (twice the deadline
            // past the fire time), so that no duplicate falls between the two.
            rendezvous: WindowTable::with_seed(
                cap,
                config.punch_deadline().saturating_mul(3),
                seeds(3),
            ),
            bindings: WindowTable::with_seed(cap, config.punch_deadline(), seeds(4)),
            predictions: WindowTable::with_seed(cap, config.punch_deadline(), seeds(7)),
            spray: SprayMachine::new(config.spray(), seeds(8)),
            recent: WindowTable::with_seed(
                pending.saturating_mul(2),
                config.punch_deadline(),
                seeds(5),
            ),
            abandoned: WindowTable::with_seed(
                pending.saturating_mul(2),
                config.punch_deadline(),
                seeds(6),
            ),
        }
    }

    /// R11: `coordinator`'s rendezvous with `peer` runs here.
    fn note_ran(&mut self, now: Instant, peer: NodeId, coordinator: NodeId) {
        match self.recent.get_mut(now, &peer) {
            Some(r) => r.ran = Some(coordinator),
            None => self.recent.insert(
                now,
                peer,
                Recent {
                    own: None,
                    ran: Some(coordinator),
                },
            ),
        }
    }

    /// Punches pending, both roles.
    pub fn pending(&self) -> usize {
        self.punches.len()
    }

    /// Entries in the per-introducer budget table (bounded by its capacity).
    pub fn budget_entries(&self) -> usize {
        self.intro_budget.len()
    }

    fn unsolicited_active(&self) -> usize {
        self.punches.responders()
    }

    fn introduced_by(&self, coordinator: NodeId) -> usize {
        self.punches.introduced_by(coordinator)
    }

    /// The punch id `coordinator` bound to its introduce of `peer` at `fire`.
    fn binding(&mut self, now: Instant, coordinator: NodeId, peer: NodeId, fire: u64) -> u32 {
        self.bindings
            .get_mut(now, &(coordinator, peer))
            .filter(|(f, _)| *f == fire)
            .map_or(0, |(_, id)| *id)
    }

    /// Starts a requester punch: sends the `PunchRequest`. A pending requester
    /// punch to the same peer is superseded (it ends with
    /// [`TraversalError::Superseded`]); a responder train already running with
    /// the peer is adopted instead (R11: no second rendezvous).
    pub(crate) fn start_request(
        &mut self,
        cx: &mut Ctx<'_>,
        now: Instant,
        target: NodeId,
        coordinator: NodeId,
        punch_id: core::num::NonZeroU32,
        self_reflex: SocketAddr,
    ) -> Result<(), TraversalError> {
        if let Some(p) = self
            .punches
            .get_mut(&target)
            .filter(|p| p.role == Role::Responder)
        {
            p.role = Role::Requester;
            p.punch_id = punch_id.get();
            p.started = now;
            let introducer = p.coordinator;
            // A requester's now: no longer counted as a responder train (R5).
            self.punches.resync(&target);
            self.recent.insert(
                now,
                target,
                Recent {
                    own: Some(introducer),
                    ran: Some(introducer),
                },
            );
            let Some(p) = self.punches.get_mut(&target) else {
                return Ok(());
            };
            bump(&mut cx.out.stats.punches_attempted);
            bump(&mut cx.out.stats.crossings_adopted);
            // Only a success leaves a punch reported and still held.
            let path = match &p.phase {
                Phase::Train(t) if p.reported => t.seen,
                _ => None,
            };
            if let Some(path) = path {
                p.reported = false;
                report(cx.out, target, p, now, Ok((path, PathMethod::Punched)));
            }
            return Ok(());
        }
        if let Some(mut old) = self.punches.remove(&target) {
            report(
                cx.out,
                target,
                &mut old,
                now,
                Err(TraversalError::Superseded),
            );
        }
        if self.punches.len() >= cx.config.max_pending_punches() as usize {
            return Err(TraversalError::TooManyPunches);
        }
        // R11: within a punch deadline of a rendezvous with this peer, a new
        // request goes through that rendezvous' coordinator, so that the peer
        // cannot mistake it for the losing side of a crossing.
        let coordinator = match self.recent.get_mut(now, &target).and_then(|r| r.ran) {
            Some(c) if c != coordinator && cx.peers.session(c).is_some() => c,
            _ => coordinator,
        };
        let req = PunchRequest {
            target,
            punch_id: Some(punch_id),
            self_reflex: canonical_addr(self_reflex),
        };
        let (bytes, len) = req.to_bytes();
        cx.out.control(
            coordinator,
            Channel::Rendezvous,
            bytes.get(..len).unwrap_or(&[]),
        );
        self.recent.insert(
            now,
            target,
            Recent {
                own: Some(coordinator),
                ran: None,
            },
        );
        self.punches.insert(
            target,
            Punch {
                punch_id: punch_id.get(),
                coordinator,
                role: Role::Requester,
                started: now,
                deadline: now.saturating_add(cx.config.punch_deadline()),
                phase: Phase::AwaitIntroduce,
                reported: false,
            },
        );
        bump(&mut cx.out.stats.punches_attempted);
        Ok(())
    }

    /// Ends the punch to `peer` with `error` (cancel, supersede). Returns whether
    /// there was one.
    pub(crate) fn abort(
        &mut self,
        cx: &mut Ctx<'_>,
        now: Instant,
        peer: NodeId,
        error: TraversalError,
    ) -> bool {
        match self.punches.remove(&peer) {
            Some(mut p) => {
                self.spray.cancel(peer, now);
                drain_spray(&mut self.spray, cx.out, None);
                report(cx.out, peer, &mut p, now, Err(error));
                true
            }
            None => false,
        }
    }

    /// The session to `coordinator` went down: punches still waiting for its
    /// introduce can never get one, so they end now.
    pub(crate) fn coordinator_down(&mut self, cx: &mut Ctx<'_>, now: Instant, coordinator: NodeId) {
        let out = &mut *cx.out;
        self.punches.remove_where(
            |p| matches!(p.phase, Phase::AwaitIntroduce) && p.coordinator == coordinator,
            |peer, mut p| {
                let err = TraversalError::NoSessionWithCoordinator(coordinator);
                report(out, peer, &mut p, now, Err(err));
            },
        );
    }

    /// The train for `intro` from `coordinator`; `local_fire_ms` is its fire
    /// time converted to our wall clock (the schedule uses it; the token uses
    /// the wire value).
    ///
    /// R3: the train never outlives the punch deadline measured from the
    /// punch's start, whatever `now` does: a `now` earlier than the start
    /// (time went backwards) counts as the start.
    #[allow(clippy::too_many_arguments)]
    fn begin_train(
        now: Instant,
        wall_ms: u64,
        local_fire_ms: u64,
        started: Instant,
        deadline: Instant,
        me: NodeId,
        coordinator: NodeId,
        intro: &PunchIntroduce,
        ack_id: u32,
    ) -> Train {
        let remaining = deadline.saturating_duration_since(now.max(started));
        Train {
            introduced: intro.peer_reflex,
            send_to: intro.peer_reflex,
            token: keepalive_token(me, intro.peer, intro.fire_at_ms),
            coordinator,
            fire_at_ms: intro.fire_at_ms,
            ack_id,
            schedule: KeepaliveTrain::new(local_fire_ms, wall_ms, remaining),
            origin: now,
            next_index: 0,
            seen: None,
            acked: false,
            sent: 0,
            window: None,
            birthday: None,
            via: None,
        }
    }

    /// A `PunchIntroduce` from the authenticated session peer `from`.
    pub(crate) fn handle_introduce(
        &mut self,
        cx: &mut Ctx<'_>,
        now: Instant,
        wall_ms: u64,
        from: NodeId,
        intro: PunchIntroduce,
    ) {
        let peer = intro.peer;
        self.introduce(cx, now, wall_ms, from, intro);
        // A punch that got its train wakes for its first keep-alive now.
        self.punches.resync(&peer);
    }

    fn introduce(
        &mut self,
        cx: &mut Ctx<'_>,
        now: Instant,
        wall_ms: u64,
        from: NodeId,
        intro: PunchIntroduce,
    ) {
        // C9: one form for the address from here on.
        let intro = PunchIntroduce {
            peer_reflex: canonical_addr(intro.peer_reflex),
            ..intro
        };
        if intro.peer == cx.id || intro.peer == from {
            return bump(&mut cx.out.stats.introduces_dropped_other);
        }
        let key = (from, intro.peer, intro.fire_at_ms);
        let seen = self.rendezvous.contains(now, &key);
        let found = self.rendezvous.get_mut(now, &key).and_then(|p| *p);
        // R11: the losing rendezvous of a crossing, however late it comes.
        // (Our own pending request's answer is never a loser; an abandoned
        // one always is.)
        let answer = self.punches.get(&intro.peer).is_some_and(|p| {
            p.role == Role::Requester
                && matches!(p.phase, Phase::AwaitIntroduce)
                && p.coordinator == from
        });
        let abandoned = self.abandoned.contains(now, &(from, intro.peer));
        self.abandoned.remove(&(from, intro.peer));
        let loser = !answer
            && self
                .recent
                .get_mut(now, &intro.peer)
                .is_some_and(|r| r.loser(cx.id, intro.peer, from));
        let what = match self.punches.get(&intro.peer) {
            _ if abandoned || loser => Intro::Conflict,
            None if seen => Intro::Duplicate,
            None => Intro::Unsolicited { replaces: false },
            Some(p) => sort_intro(p, cx.id, intro.peer, from, intro.fire_at_ms, seen),
        };
        // The fire time on our clock (the coordinator stamped its own).
        let offset = cx.peers.get(from).and_then(|c| c.clock_offset_ms);
        let fire_ms = peer_wall_to_local(intro.fire_at_ms, offset.unwrap_or(0));
        // R10: an introduce that answers no request of ours and whose fire
        // time (on a clock we know the offset of) lies more than twice the
        // punch deadline in the past belongs to a rendezvous that ran and was
        // forgotten: it changes nothing. Without an offset estimate the fire
        // time cannot be trusted this far, and only the memory above applies;
        // the answer to our own pending request is never stale.
        let horizon = duration_to_millis(cx.config.punch_deadline()).saturating_mul(2);
        if !answer && offset.is_some() && fire_ms.saturating_add(horizon) < wall_ms {
            // Counted as what the R4/R13 checks would refuse it for, if
            // anything (an attack stays visible as one), else a duplicate.
            if Self::unsolicited_refusal(cx, from, &intro).is_none() {
                bump(&mut cx.out.stats.introduces_duplicate);
            }
            return;
        }
        let started = match what {
            Intro::Duplicate => return bump(&mut cx.out.stats.introduces_duplicate),
            Intro::Conflict => return bump(&mut cx.out.stats.introduces_dropped_other),
            // The answer to our request is a rendezvous that already found its
            // path here (a crossing request joined it late): that is our outcome.
            Intro::Solicited if found.is_some() => {
                if let (Some(path), Some(mut p)) = (found, self.punches.remove(&intro.peer)) {
                    report(
                        cx.out,
                        intro.peer,
                        &mut p,
                        now,
                        Ok((path, PathMethod::Punched)),
                    );
                }
                return bump(&mut cx.out.stats.introduces_duplicate);
            }
            Intro::Solicited => self.solicited(cx, now, wall_ms, fire_ms, from, &intro),
            Intro::Adopt => self.adopt(cx, now, wall_ms, fire_ms, from, &intro),
            Intro::Unsolicited { replaces } => {
                self.unsolicited(cx, now, wall_ms, fire_ms, from, &intro, replaces)
            }
        };
        if started {
            self.rendezvous.insert(now, key, None);
            let predicted = self
                .predictions
                .get_mut(now, &(from, intro.peer))
                .copied()
                .filter(|(fire, ..)| *fire == intro.fire_at_ms);
            if let Some((_, port, step)) = predicted {
                self.predictions.remove(&(from, intro.peer));
                self.take_prediction(cx, from, intro.peer, intro.fire_at_ms, port, step);
            }
            self.plan_birthday(cx, now, intro.peer);
        }
    }

    /// N2: a new train with `peer` whose pair needs a birthday punch gets
    /// one: the opener starts at the fire time, the prober once the
    /// opener's sockets are open (its own caps' `sockets / rate` later).
    /// An attempt still running with the peer (an earlier train's) ends.
    fn plan_birthday(&mut self, cx: &mut Ctx<'_>, now: Instant, peer: NodeId) {
        if self.spray.cancel(peer, now) {
            drain_spray(&mut self.spray, cx.out, None);
        }
        let remote = cx.peers.announced(peer);
        let side = birthday_side(
            cx.local_class,
            cx.local_profile,
            remote.map_or(NatClass::Unknown, |a| a.class),
            remote.and_then(|a| a.profile),
        );
        let (Some(side), Some(Phase::Train(t))) =
            (side, self.punches.get_mut(&peer).map(|p| &mut p.phase))
        else {
            return;
        };
        let Some(fire) = t.next_at() else {
            return;
        };
        let caps = cx.config.spray();
        let start = match side {
            SpraySide::Opener => fire,
            SpraySide::Prober => {
                let nanos = u64::from(caps.sockets).saturating_mul(1_000_000_000)
                    / u64::from(caps.rate.max(1));
                fire.saturating_add(core::time::Duration::from_nanos(nanos))
            }
        };
        t.birthday = Some(Birthday {
            side,
            state: BirthdayState::Pending(start),
        });
        self.punches.resync(&peer);
    }

    /// N1: the train of `coordinator`'s rendezvous with `peer` at `fire`, if
    /// one runs here and has not found its path, covers the predicted ports.
    fn take_prediction(
        &mut self,
        cx: &mut Ctx<'_>,
        coordinator: NodeId,
        peer: NodeId,
        fire: u64,
        port: u16,
        step: i16,
    ) -> bool {
        let len = cx.config.prediction_window();
        let Some(Phase::Train(t)) = self.punches.get_mut(&peer).map(|p| &mut p.phase) else {
            return false;
        };
        if t.coordinator != coordinator || t.fire_at_ms != fire || len == 0 {
            return false;
        }
        if t.seen.is_none() && t.window.is_none() {
            t.window = Some(Window { port, step, len });
            bump(&mut cx.out.stats.predictions_taken);
        }
        true
    }

    /// N1: coordinator `from` predicts `m.peer`'s next port for its introduce
    /// at `m.fire_at_ms` (sent right before it; taken by a train already
    /// running for that rendezvous, or kept for the introduce).
    pub(crate) fn handle_predict(
        &mut self,
        cx: &mut Ctx<'_>,
        now: Instant,
        from: NodeId,
        m: PunchPredict,
    ) {
        if m.peer == cx.id || m.peer == from {
            return;
        }
        let (port, step) = (m.port.get(), m.step.get());
        if !self.take_prediction(cx, from, m.peer, m.fire_at_ms, port, step) {
            self.predictions
                .insert(now, (from, m.peer), (m.fire_at_ms, port, step));
        }
    }

    /// The answer to our request: R13, then R12 (when we hold the target's own
    /// announcement, the coordinator we chose still cannot aim our train).
    fn solicited(
        &mut self,
        cx: &mut Ctx<'_>,
        now: Instant,
        wall_ms: u64,
        fire_ms: u64,
        from: NodeId,
        intro: &PunchIntroduce,
    ) -> bool {
        // An unannounced target is no reason to refuse our own answer.
        let refusal = Self::introduce_refusal(cx, from, intro, true);
        let Some(p) = self.punches.get_mut(&intro.peer) else {
            return false;
        };
        if let Some(reason) = refusal {
            let punch_id = p.punch_id;
            cx.refuse(from, intro.peer, punch_id, reason);
            self.abort(cx, now, intro.peer, TraversalError::Rejected(reason));
            return false;
        }
        p.phase = Phase::Train(Self::begin_train(
            now, wall_ms, fire_ms, p.started, p.deadline, cx.id, from, intro, p.punch_id,
        ));
        self.note_ran(now, intro.peer, from);
        true
    }

    /// R11: our request crossed the peer's, whose rendezvous wins: our punch
    /// runs its train. Held to R13 and R4 like any introduce we did not ask
    /// this coordinator for; no responder budget is spent.
    fn adopt(
        &mut self,
        cx: &mut Ctx<'_>,
        now: Instant,
        wall_ms: u64,
        fire_ms: u64,
        from: NodeId,
        intro: &PunchIntroduce,
    ) -> bool {
        let bound = self.binding(now, from, intro.peer, intro.fire_at_ms);
        if let Some(reason) = Self::unsolicited_refusal(cx, from, intro) {
            cx.refuse(from, intro.peer, bound, reason);
            return false;
        }
        let Some(p) = self.punches.get_mut(&intro.peer) else {
            return false;
        };
        // Our own coordinator's answer has not come yet: drop it when it does.
        let own = matches!(p.phase, Phase::AwaitIntroduce).then_some(p.coordinator);
        p.phase = Phase::Train(Self::begin_train(
            now, wall_ms, fire_ms, p.started, p.deadline, cx.id, from, intro, bound,
        ));
        if let Some(own) = own {
            self.abandoned.insert(now, (own, intro.peer), ());
        }
        bump(&mut cx.out.stats.crossings_adopted);
        self.note_ran(now, intro.peer, from);
        true
    }

    /// R13, then the introduced reflex against the peer's own announcement
    /// (counted); `unannounced` is what to do when the peer announced nothing
    /// (admit: `true`).
    fn introduce_refusal(
        cx: &mut Ctx<'_>,
        from: NodeId,
        intro: &PunchIntroduce,
        unannounced: bool,
    ) -> Option<RejectReason> {
        if cx.bogus(from, intro.peer_reflex) {
            bump(&mut cx.out.stats.introduces_dropped_bogus);
            return Some(RejectReason::BogusReflex);
        }
        if !cx
            .agrees(intro.peer, intro.peer_reflex)
            .unwrap_or(unannounced)
        {
            bump(&mut cx.out.stats.introduces_dropped_reflection);
            return Some(RejectReason::ReflexMismatch);
        }
        None
    }

    /// R13 and R4 for an introduce this node did not ask its coordinator for
    /// (an unannounced peer as the policy says).
    fn unsolicited_refusal(
        cx: &mut Ctx<'_>,
        from: NodeId,
        intro: &PunchIntroduce,
    ) -> Option<RejectReason> {
        let admit = cx.config.unannounced_peer_policy() == UnannouncedPeerPolicy::Admit;
        Self::introduce_refusal(cx, from, intro, admit)
    }

    /// A peer's rendezvous (we are the target): R13, R4, then the R5
    /// budgets, then a responder train.
    #[allow(clippy::too_many_arguments)]
    fn unsolicited(
        &mut self,
        cx: &mut Ctx<'_>,
        now: Instant,
        wall_ms: u64,
        fire_ms: u64,
        from: NodeId,
        intro: &PunchIntroduce,
        replaces: bool,
    ) -> bool {
        let bound = self.binding(now, from, intro.peer, intro.fire_at_ms);
        if let Some(reason) = Self::unsolicited_refusal(cx, from, intro) {
            cx.refuse(from, intro.peer, bound, reason);
            return false;
        }
        // R5: the global ceiling on concurrent unsolicited trains, the
        // per-introducer concurrency, the pending-punch bound, then the
        // (introducer, requester) budget. A replaced punch frees its slot —
        // in the ceilings only if it was itself an unsolicited train.
        let old = self.punches.get(&intro.peer).filter(|_| replaces);
        let old_responder = old.filter(|p| p.role == Role::Responder);
        let frees = usize::from(old_responder.is_some());
        let frees_here = usize::from(old_responder.is_some_and(|p| p.coordinator == from));
        let config = cx.config;
        let busy = self.unsolicited_active().saturating_sub(frees)
            >= config.responder_concurrent_trains() as usize
            || self.introduced_by(from).saturating_sub(frees_here)
                >= config.responder_concurrent_per_introducer() as usize
            || self
                .punches
                .len()
                .saturating_sub(usize::from(old.is_some()))
                >= config.max_pending_punches() as usize;
        // The budget table fails closed: full of live budgets, it refuses.
        let admitted = !busy
            && match self.intro_budget.try_entry(now, (from, intro.peer), || 0) {
                Some(used) if *used < config.responder_trains_per_introducer() => {
                    *used = used.saturating_add(1);
                    true
                }
                _ => false,
            };
        if !admitted {
            bump(&mut cx.out.stats.introduces_dropped_budget);
            cx.refuse(from, intro.peer, bound, RejectReason::ResponderBusy);
            return false;
        }

        if let Some(mut old) = self.punches.remove(&intro.peer) {
            report(
                cx.out,
                intro.peer,
                &mut old,
                now,
                Err(TraversalError::Superseded),
            );
        }
        let deadline = now.saturating_add(config.punch_deadline());
        self.punches.insert(
            intro.peer,
            Punch {
                punch_id: 0,
                coordinator: from,
                role: Role::Responder,
                started: now,
                deadline,
                phase: Phase::Train(Self::begin_train(
                    now, wall_ms, fire_ms, now, deadline, cx.id, from, intro, bound,
                )),
                reported: false,
            },
        );
        bump(&mut cx.out.stats.responder_trains);
        self.note_ran(now, intro.peer, from);
        true
    }

    /// R7: coordinator `from` binds `b.punch_id` to its introduce of `b.peer`
    /// at `b.fire_at_ms` (sent right before it; taken by a train already
    /// running for that rendezvous, or kept for the introduce).
    pub(crate) fn handle_bind(
        &mut self,
        cx: &mut Ctx<'_>,
        now: Instant,
        from: NodeId,
        b: PunchBind,
    ) {
        if b.peer == cx.id || b.peer == from {
            return;
        }
        if let Some(Phase::Train(t)) = self.punches.get_mut(&b.peer).map(|p| &mut p.phase) {
            if t.coordinator == from && t.fire_at_ms == b.fire_at_ms {
                if t.ack_id == 0 {
                    t.ack_id = b.punch_id.get();
                }
                return;
            }
        }
        self.bindings
            .insert(now, (from, b.peer), (b.fire_at_ms, b.punch_id.get()));
    }

    /// R5: coordinator `from` relays that the other end refused our
    /// rendezvous with `r.peer`. It ends the punch that rendezvous belongs to
    /// (the one waiting for `from`'s introduce, or running `from`'s train)
    /// with [`TraversalError::Rejected`], unless it already ended.
    pub(crate) fn handle_refused(
        &mut self,
        cx: &mut Ctx<'_>,
        now: Instant,
        from: NodeId,
        r: PunchRefusal,
    ) {
        let matches = self.punches.get(&r.peer).is_some_and(|p| {
            !p.reported
                && match &p.phase {
                    Phase::AwaitIntroduce => {
                        p.role == Role::Requester
                            && p.coordinator == from
                            && r.punch_id == p.punch_id
                    }
                    Phase::Train(t) => {
                        t.coordinator == from
                            && (r.punch_id == 0 || t.ack_id == 0 || r.punch_id == t.ack_id)
                    }
                }
        });
        if matches {
            self.abort(cx, now, r.peer, TraversalError::Rejected(r.reason));
        }
    }

    /// R6: a `PunchReject` fails the pending request only when it comes from
    /// that request's coordinator and echoes its target and punch id.
    pub(crate) fn handle_reject(
        &mut self,
        cx: &mut Ctx<'_>,
        now: Instant,
        from: NodeId,
        rej: PunchReject,
    ) {
        let matches = self.punches.get(&rej.target).is_some_and(|p| {
            p.role == Role::Requester
                && p.coordinator == from
                && p.punch_id == rej.punch_id
                && matches!(p.phase, Phase::AwaitIntroduce)
        });
        if matches {
            self.abort(cx, now, rej.target, TraversalError::Rejected(rej.reason));
        } else {
            // An abandoned request (R11) gets no introduce after all.
            self.abandoned.remove(&(from, rej.target));
            bump(&mut cx.out.stats.stale_rejects_ignored);
        }
    }

    /// R7 (final recipient): an ack forwarded by `from` for a punch to
    /// `ack.from_peer`. Accepted only for a pending punch with that peer whose
    /// train runs `from`'s rendezvous, with a matching punch id (0 = unknown),
    /// once this side has sent a keep-alive the peer could have seen.
    pub(crate) fn handle_ack(&mut self, cx: &mut Ctx<'_>, from: NodeId, ack: PunchAck) {
        let Some(p) = self.punches.get_mut(&ack.from_peer) else {
            return bump(&mut cx.out.stats.acks_dropped);
        };
        let Phase::Train(t) = &mut p.phase else {
            return bump(&mut cx.out.stats.acks_dropped);
        };
        let id_ok = ack.punch_id == 0 || t.ack_id == 0 || ack.punch_id == t.ack_id;
        if t.coordinator != from || !id_ok || t.sent == 0 {
            return bump(&mut cx.out.stats.acks_dropped);
        }
        t.acked = true;
        bump(&mut cx.out.stats.acks_accepted);
        if t.done() {
            // R10: both sides are done; the train stops.
            self.punches.remove(&ack.from_peer);
        }
    }

    /// A keep-alive datagram from `src` (R2, R8), on the main socket or —
    /// `via` (N2) — on socket `via.1` of birthday attempt `via.0`: one the
    /// driver has open, for a running attempt or kept for a path. R8 holds
    /// either way; a confirmed path stays on the socket it came in on.
    pub(crate) fn handle_keepalive(
        &mut self,
        cx: &mut Ctx<'_>,
        now: Instant,
        src: SocketAddr,
        k: Keepalive,
        via: Option<(u64, u16)>,
    ) {
        // R2: only the punch expecting this sender can be touched, and only a
        // keep-alive that passes R8 consumes it.
        let Some(p) = self.punches.get_mut(&k.sender) else {
            return bump(&mut cx.out.stats.keepalives_dropped);
        };
        let Phase::Train(t) = &mut p.phase else {
            return bump(&mut cx.out.stats.keepalives_dropped);
        };
        if !t.accepts(src, k.punch_id) {
            return bump(&mut cx.out.stats.keepalives_dropped);
        }
        if t.seen.is_some() {
            // Already confirmed; later keep-alives just keep the path warm.
            return;
        }
        bump(&mut cx.out.stats.keepalives_accepted);
        // R8: the address it really came from is the path (peer-reflexive).
        t.seen = Some(src);
        t.send_to = src;
        if via.is_some() {
            t.via = via;
        }
        // N2: a running birthday attempt with the peer found its path (or
        // the plain train did first): it ends now, before the punch's
        // success, so that a driver pins the kept socket first.
        if self.spray.handle_success(k.sender, src) {
            drain_spray(&mut self.spray, cx.out, via);
        }
        let ack = PunchAck {
            from_peer: cx.id,
            to_peer: k.sender,
            punch_id: t.ack_id,
        };
        cx.out
            .control(t.coordinator, Channel::Rendezvous, &ack.to_bytes());
        if !t.acked {
            // Answer at once on the learned path: the peer may not have seen
            // one of ours yet, and its next scheduled one could be 250 ms away.
            let reply = Keepalive {
                sender: cx.id,
                punch_id: t.token,
            };
            send_keepalive(cx.out, cx.bind, t.via, src, &reply.to_bytes());
            bump(&mut cx.out.stats.keepalives_sent);
            t.sent = t.sent.saturating_add(1);
        }
        let done = t.done();
        if let Some(found) = self
            .rendezvous
            .get_mut(now, &(t.coordinator, k.sender, t.fire_at_ms))
        {
            *found = Some(src);
        }
        report(cx.out, k.sender, p, now, Ok((src, PathMethod::Punched)));
        if done {
            self.punches.remove(&k.sender);
        }
    }

    /// Sends due keep-alives and ends punches whose deadline passed. Harmless to
    /// call early or twice. Visits only the punches that are due (earliest
    /// first, ties by node id), each once.
    pub(crate) fn handle_timeout(&mut self, cx: &mut Ctx<'_>, now: Instant) {
        let (id, bind, config) = (cx.id, cx.bind, cx.config);
        let peers = cx.peers;
        let out = &mut *cx.out;
        while let Some(peer) = self.punches.due(now) {
            let Some(p) = self.punches.get_mut(&peer) else {
                break;
            };
            if now >= p.deadline {
                let err = deadline_error(config, p);
                // N2: the punch gave up; so does its attempt (cool-down).
                if self.spray.fail(peer, now) {
                    drain_spray(&mut self.spray, out, None);
                }
                report(out, peer, p, now, Err(err));
                self.punches.remove(&peer);
                continue;
            }
            if let Phase::Train(t) = &mut p.phase {
                if t.next_at().is_some_and(|at| at <= now) {
                    let ka = Keepalive {
                        sender: id,
                        punch_id: t.token,
                    };
                    send_keepalive(out, bind, t.via, t.send_to, &ka.to_bytes());
                    bump(&mut out.stats.keepalives_sent);
                    t.sent = t.sent.saturating_add(1);
                    // N1: the predicted ports, on the introduced IP only,
                    // until the peer's keep-alive shows where it really is.
                    if let (Some(w), None) = (t.window, t.seen) {
                        let ip = t.introduced.ip();
                        for port in w.ports(t.introduced.port()) {
                            out.datagram(bind, SocketAddr::new(ip, port), &ka.to_bytes());
                            bump(&mut out.stats.keepalives_sent);
                            bump(&mut out.stats.keepalives_predicted);
                        }
                    }
                    // One packet per wakeup: a late wakeup skips the missed slots
                    // rather than bursting them.
                    while t.next_at().is_some_and(|at| at <= now) {
                        t.next_index = t.next_index.saturating_add(1);
                    }
                }
                // N2: the attempt starts when due, under the caps, toward the
                // introduced address — whose IP must be the one the peer
                // announced itself over an authenticated session (N3).
                if let Some(b) = &mut t.birthday {
                    if b.due().is_some_and(|at| at <= now) {
                        let announced = peers.announced(peer).map(|a| canonical_ip(a.reflex.ip()));
                        let started = match (announced, t.seen) {
                            (Some(ip), None) => {
                                self.spray.start(now, peer, b.side, t.introduced, ip).ok()
                            }
                            _ => None,
                        };
                        b.state = match started {
                            Some(attempt) => {
                                bump(&mut out.stats.birthday_attempts);
                                BirthdayState::Started(attempt)
                            }
                            None if t.seen.is_some() => BirthdayState::Refused,
                            None => {
                                bump(&mut out.stats.birthday_refused);
                                BirthdayState::Refused
                            }
                        };
                    }
                }
            }
            // Its next wake-up is now later than `now` (the deadline, or the
            // train's next slot): it is not visited again in this call.
            self.punches.resync(&peer);
        }
        // N2: the attempts' due datagrams, each a keep-alive of its train.
        while let Some(tx) = self.spray.poll_transmit(now) {
            let Some(Phase::Train(t)) = self.punches.get(&tx.peer).map(|p| &p.phase) else {
                continue;
            };
            let ka = Keepalive {
                sender: id,
                punch_id: t.token,
            }
            .to_bytes();
            match t.birthday.map(|b| b.side) {
                Some(SpraySide::Opener) => out.spray(tx.attempt, tx.socket, tx.to, &ka),
                _ => out.datagram(bind, tx.to, &ka),
            }
            bump(&mut out.stats.spray_datagrams);
        }
        self.spray.handle_timeout(now);
        drain_spray(&mut self.spray, out, None);
    }

    /// The earliest time a pending punch (or a birthday attempt) needs
    /// `handle_timeout`.
    pub fn poll_timeout(&self) -> Option<Instant> {
        crate::time::earliest(self.punches.poll_timeout(), self.spray.poll_timeout())
    }

    /// N2: the birthday attempts' counters.
    #[must_use]
    pub fn spray_stats(&self) -> crate::spray::SprayStats {
        self.spray.stats()
    }
}
