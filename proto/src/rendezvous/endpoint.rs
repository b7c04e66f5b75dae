//! The endpoint roles (A and B): start a punch, take introduces, run the
//! keep-alive train, confirm on a valid keep-alive, exchange acks, and resolve
//! every punch to exactly one outcome.
//!
//! Requirements implemented here: **R2** (a keep-alive is validated before it
//! can consume a pending punch), **R3** (the train follows
//! [`KeepaliveTrain`], clamped to the punch
//! deadline), **R4** (unsolicited introduces must agree with the peer's own
//! announcement), **R5** (responder budgets), **R6** (stale rejects ignored),
//! **R7** (an ack is accepted only for a pending punch), **R8** (token
//! confirmation and peer-reflexive path learning), **R10** (the train stops once
//! both sides are done).
//!
//! Clock skew: an introduce's `fire_at_ms` is wall-clock time on the
//! coordinator's clock. The train is scheduled (and the fire time bounded, R3)
//! at that instant read on our clock, `fire_at_ms − offset` with the
//! coordinator's offset from the peer directory (0 when unknown); the R8 token
//! is derived from the wire value, which both ends share.

use alloc::collections::BTreeMap;
use core::net::SocketAddr;

use crate::agent::io::{Channel, Event, Outbox, PathMethod, Role};
use crate::agent::peers::Peers;
use crate::classify::{canonical_addr, canonical_ip};
use crate::config::{Config, UnannouncedPeerPolicy};
use crate::error::{PunchStage, TraversalError};
use crate::rng::mix64;
use crate::schedule::KeepaliveTrain;
use crate::stats::bump;
use crate::table::WindowTable;
use crate::time::{Instant, peer_wall_to_local};
use crate::wire::{Keepalive, NodeId, PunchAck, PunchIntroduce, PunchReject, PunchRequest};

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
    pub(crate) config: &'a Config,
    pub(crate) peers: &'a Peers,
    pub(crate) out: &'a mut Outbox,
}

#[derive(Clone, Debug)]
struct Train {
    /// The address the introduce named.
    introduced: SocketAddr,
    /// Where keep-alives go: the introduced address, then the learned path.
    send_to: SocketAddr,
    token: u32,
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

#[derive(Clone, Debug)]
enum Phase {
    AwaitIntroduce,
    Train(Train),
}

#[derive(Clone, Debug)]
struct Punch {
    punch_id: u32,
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

    fn next_wakeup(&self) -> Instant {
        let train = match &self.phase {
            Phase::Train(t) => t.next_at(),
            Phase::AwaitIntroduce => None,
        };
        train.map_or(self.deadline, |t| t.min(self.deadline))
    }
}

/// The endpoint machine: every pending punch, keyed by the peer (one per peer).
#[derive(Clone, Debug)]
pub struct Endpoint {
    punches: BTreeMap<NodeId, Punch>,
    /// R5: unsolicited trains per introducing peer per window.
    intro_budget: WindowTable<NodeId, u32>,
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
    pub(crate) fn new(config: &Config) -> Self {
        Endpoint {
            punches: BTreeMap::new(),
            intro_budget: WindowTable::new(
                config.budget_table_capacity() as usize,
                config.budget_window(),
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
        self.punches
            .values()
            .filter(|p| p.role == Role::Responder)
            .count()
    }

    /// Starts a requester punch: sends the `PunchRequest`. A pending punch to
    /// the same peer is superseded (it ends with [`TraversalError::Superseded`]).
    pub(crate) fn start_request(
        &mut self,
        cx: &mut Ctx<'_>,
        now: Instant,
        target: NodeId,
        coordinator: NodeId,
        punch_id: core::num::NonZeroU32,
        self_reflex: SocketAddr,
    ) -> Result<(), TraversalError> {
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
        let req = PunchRequest {
            target,
            punch_id: Some(punch_id),
            self_reflex,
        };
        let (bytes, len) = req.to_bytes();
        cx.out.control(
            coordinator,
            Channel::Rendezvous,
            bytes.get(..len).unwrap_or(&[]),
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
                report(cx.out, peer, &mut p, now, Err(error));
                true
            }
            None => false,
        }
    }

    /// The session to `coordinator` went down: punches still waiting for its
    /// introduce can never get one, so they end now.
    pub(crate) fn coordinator_down(&mut self, cx: &mut Ctx<'_>, now: Instant, coordinator: NodeId) {
        self.punches.retain(|peer, p| {
            let waiting = matches!(p.phase, Phase::AwaitIntroduce) && p.coordinator == coordinator;
            if waiting {
                let err = TraversalError::NoSessionWithCoordinator(coordinator);
                report(cx.out, *peer, p, now, Err(err));
            }
            !waiting
        });
    }

    /// The train for `intro`; `local_fire_ms` is its fire time converted to our
    /// wall clock (the schedule uses it; the token uses the wire value).
    fn begin_train(
        now: Instant,
        wall_ms: u64,
        local_fire_ms: u64,
        deadline: Instant,
        me: NodeId,
        intro: &PunchIntroduce,
    ) -> Train {
        let remaining = deadline.saturating_duration_since(now);
        Train {
            introduced: intro.peer_reflex,
            send_to: intro.peer_reflex,
            token: keepalive_token(me, intro.peer, intro.fire_at_ms),
            schedule: KeepaliveTrain::new(local_fire_ms, wall_ms, remaining),
            origin: now,
            next_index: 0,
            seen: None,
            acked: false,
            sent: 0,
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
        // The fire time on our clock (the coordinator stamped its own).
        let fire_ms = peer_wall_to_local(intro.fire_at_ms, cx.peers.clock_offset_ms(from));
        let mut replaces = false;
        if let Some(p) = self.punches.get_mut(&intro.peer) {
            // Solicited: we asked `from` to introduce us to this peer.
            if matches!(p.phase, Phase::AwaitIntroduce)
                && p.role == Role::Requester
                && p.coordinator == from
            {
                p.phase = Phase::Train(Self::begin_train(
                    now, wall_ms, fire_ms, p.deadline, cx.id, &intro,
                ));
                return;
            }
            // A newer rendezvous for the same pair replaces a finished punch
            // still waiting for its last ack (R10), or a responder punch the
            // same coordinator introduced (the requester asked again). Anything
            // else is a duplicate or a conflict.
            replaces = p.reported || (p.role == Role::Responder && p.coordinator == from);
            if !replaces {
                return bump(&mut cx.out.stats.introduces_dropped_other);
            }
        }
        if intro.peer == cx.id || intro.peer == from {
            return bump(&mut cx.out.stats.introduces_dropped_other);
        }
        // R4: an unsolicited introduce must agree with the peer's own announcement.
        let vouched = match cx.peers.announced(intro.peer) {
            Some(a) => canonical_ip(a.reflex.ip()) == canonical_ip(intro.peer_reflex.ip()),
            None => cx.config.unannounced_peer_policy() == UnannouncedPeerPolicy::Admit,
        };
        if !vouched {
            return bump(&mut cx.out.stats.introduces_dropped_reflection);
        }
        // R5: global ceiling on concurrent unsolicited trains, then the
        // per-introducer budget.
        let replaced = usize::from(replaces);
        if self.unsolicited_active().saturating_sub(replaced)
            >= cx.config.responder_concurrent_trains() as usize
            || self.punches.len().saturating_sub(replaced)
                >= cx.config.max_pending_punches() as usize
        {
            return bump(&mut cx.out.stats.introduces_dropped_budget);
        }
        let used = self.intro_budget.entry(now, from, || 0);
        if *used >= cx.config.responder_trains_per_introducer() {
            return bump(&mut cx.out.stats.introduces_dropped_budget);
        }
        *used = used.saturating_add(1);

        if let Some(mut old) = self.punches.remove(&intro.peer) {
            report(
                cx.out,
                intro.peer,
                &mut old,
                now,
                Err(TraversalError::Superseded),
            );
        }
        let deadline = now.saturating_add(cx.config.punch_deadline());
        self.punches.insert(
            intro.peer,
            Punch {
                punch_id: 0,
                coordinator: from,
                role: Role::Responder,
                started: now,
                deadline,
                phase: Phase::Train(Self::begin_train(
                    now, wall_ms, fire_ms, deadline, cx.id, &intro,
                )),
                reported: false,
            },
        );
        bump(&mut cx.out.stats.responder_trains);
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
            bump(&mut cx.out.stats.stale_rejects_ignored);
        }
    }

    /// R7 (final recipient): an ack forwarded by `from` for a punch to
    /// `ack.from_peer`. Accepted only for a pending punch with that peer,
    /// through that punch's coordinator, with a matching punch id (0 = unknown),
    /// once this side has sent a keep-alive the peer could have seen.
    pub(crate) fn handle_ack(&mut self, cx: &mut Ctx<'_>, from: NodeId, ack: PunchAck) {
        let Some(p) = self.punches.get_mut(&ack.from_peer) else {
            return bump(&mut cx.out.stats.acks_dropped);
        };
        let id_ok = ack.punch_id == 0 || p.punch_id == 0 || ack.punch_id == p.punch_id;
        let Phase::Train(t) = &mut p.phase else {
            return bump(&mut cx.out.stats.acks_dropped);
        };
        if p.coordinator != from || !id_ok || t.sent == 0 {
            return bump(&mut cx.out.stats.acks_dropped);
        }
        t.acked = true;
        bump(&mut cx.out.stats.acks_accepted);
        if t.done() {
            // R10: both sides are done; the train stops.
            self.punches.remove(&ack.from_peer);
        }
    }

    /// A keep-alive datagram from `src` (R2, R8).
    pub(crate) fn handle_keepalive(
        &mut self,
        cx: &mut Ctx<'_>,
        now: Instant,
        src: SocketAddr,
        k: Keepalive,
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
        let ack = PunchAck {
            from_peer: cx.id,
            to_peer: k.sender,
            punch_id: p.punch_id,
        };
        cx.out
            .control(p.coordinator, Channel::Rendezvous, &ack.to_bytes());
        if !t.acked {
            // Answer at once on the learned path: the peer may not have seen
            // one of ours yet, and its next scheduled one could be 250 ms away.
            let reply = Keepalive {
                sender: cx.id,
                punch_id: t.token,
            };
            cx.out.datagram(cx.bind, src, &reply.to_bytes());
            bump(&mut cx.out.stats.keepalives_sent);
            t.sent = t.sent.saturating_add(1);
        }
        let done = t.done();
        report(cx.out, k.sender, p, now, Ok((src, PathMethod::Punched)));
        if done {
            self.punches.remove(&k.sender);
        }
    }

    /// Sends due keep-alives and ends punches whose deadline passed. Harmless to
    /// call early or twice.
    pub(crate) fn handle_timeout(&mut self, cx: &mut Ctx<'_>, now: Instant) {
        let (id, bind, config) = (cx.id, cx.bind, cx.config);
        let out = &mut *cx.out;
        self.punches.retain(|peer, p| {
            if now >= p.deadline {
                let err = deadline_error(config, p);
                report(out, *peer, p, now, Err(err));
                return false;
            }
            if let Phase::Train(t) = &mut p.phase {
                if t.next_at().is_some_and(|at| at <= now) {
                    let ka = Keepalive {
                        sender: id,
                        punch_id: t.token,
                    };
                    out.datagram(bind, t.send_to, &ka.to_bytes());
                    bump(&mut out.stats.keepalives_sent);
                    t.sent = t.sent.saturating_add(1);
                    // One packet per wakeup: a late wakeup skips the missed slots
                    // rather than bursting them.
                    while t.next_at().is_some_and(|at| at <= now) {
                        t.next_index = t.next_index.saturating_add(1);
                    }
                }
            }
            true
        });
    }

    /// The earliest time a pending punch needs `handle_timeout`.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.punches.values().map(Punch::next_wakeup).min()
    }
}
