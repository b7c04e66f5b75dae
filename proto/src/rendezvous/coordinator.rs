//! The coordinator role (R): mediates `PunchRequest`s between two peers it has
//! authenticated sessions with, and forwards their acks.
//!
//! Requirements implemented here: **R1** (anti-reflection: `self_reflex` bound
//! to the session IP), **R5** (per-requester budget failing closed, typed
//! rejections, bounded budget memory, relaying a responder's refusal), **R7**
//! (ack forwarding only from the authenticated sender for a pair mediated
//! recently, bound to the punch id of each side), **R9** (adaptive fire lead),
//! **R11** (a crossing request joins the rendezvous already under way),
//! **R13** (no bogus reflex is ever introduced), **C9** (addresses are
//! introduced in their canonical form), **N1** (a [`PunchPredict`] of an
//! endpoint's next port, from its session port and its announced
//! sequential allocation, to the other end).
//!
//! # Crossing requests (R11)
//!
//! When B asks for A while this coordinator's introduce of the pair for A's
//! request is still under way (less than a punch deadline old, neither refused
//! nor acknowledged both ways), a second rendezvous would give the two ends two
//! trains with different tokens. Instead B's request joins A's: the
//! coordinator records B's punch id for B's side and sends B the introduce of
//! A's rendezvous again (same fire time, so the same token). B takes it as the
//! answer to its request (or ignores it as a duplicate if it already runs that
//! train); both acks are forwarded, each stamped with the recipient's own
//! punch id.
//!
//! # Punch ids (R7)
//!
//! Each side of a mediation has the punch id its acks carry: the requester's
//! own, and for the target the same id when the target speaks natrix (it is
//! told with a [`PunchBind`] right before its
//! introduce), its own id when it crossed, or 0 (a Net v0.27 responder, which
//! never learns one). An ack with a non-zero id other than its sender's is
//! stale and dropped. With a Net responder the residual risk stays: its late
//! ack of an earlier punch carries 0 and is forwarded stamped with the current
//! id; the requester's "no ack before my first keep-alive" rule is then the
//! only guard.

use core::net::SocketAddr;
use core::time::Duration;

use core::num::NonZeroU32;

use crate::agent::io::{Channel, Outbox};
use crate::agent::peers::{Peer, Peers};
use crate::classify::{canonical_addr, canonical_ip, is_bogus_destination};
use crate::config::Config;
use crate::rng::mix64;
use crate::stats::bump;
use crate::table::WindowTable;
use crate::time::{Instant, duration_to_millis};
use crate::wire::{
    NatrixMessage, NodeId, PunchAck, PunchBind, PunchIntroduce, PunchPredict, PunchRefusal,
    PunchReject, PunchRequest, RejectReason,
};

/// A pair the coordinator introduced, remembered for R7, R11 and refusals.
#[derive(Clone, Copy, Debug)]
struct Mediation {
    /// Who asked.
    requester: NodeId,
    /// The punch id each side's acks carry, by side (index 0 = the lower
    /// node id): the requester's own id (0 for a v1 request); for the target
    /// the bound id, its own id when its request crossed, or 0.
    ids: [u32; 2],
    /// The requester's reflex as introduced to the target (canonical).
    requester_reflex: SocketAddr,
    /// The introduces' fire time.
    fire_at_ms: u64,
    /// When it was mediated.
    at: Instant,
    /// Acks already forwarded: bit 0 toward the lower id, bit 1 toward the higher.
    forwarded: u8,
    /// An endpoint refused it (relayed once).
    refused: bool,
}

impl Mediation {
    /// The punch id `side` is known by: its own, else the requester's.
    fn id_of(&self, key: (NodeId, NodeId), side: NodeId) -> u32 {
        let [lo, hi] = self.ids;
        let pick = |n: NodeId| if n == key.0 { lo } else { hi };
        match pick(side) {
            0 => pick(self.requester),
            own => own,
        }
    }

    fn set_id(&mut self, key: (NodeId, NodeId), side: NodeId, id: u32) {
        let [lo, hi] = &mut self.ids;
        *(if side == key.0 { lo } else { hi }) = id;
    }
}

/// Orders a pair so both directions find the same record.
fn pair_key(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
    if a <= b { (a, b) } else { (b, a) }
}

/// R13 at the coordinator: a reflex it must never introduce — a bogus
/// destination, or one of its own addresses (`addr` and `own` canonical).
fn bogus_here(addr: SocketAddr, own: &[SocketAddr]) -> bool {
    is_bogus_destination(addr) || own.contains(&addr)
}

/// The coordinator machine. Its tables are bounded by
/// `Config::budget_table_capacity` entries each.
#[derive(Clone, Debug)]
pub struct Coordinator {
    budget: WindowTable<NodeId, u32>,
    mediated: WindowTable<(NodeId, NodeId), Mediation>,
}

/// The R9 fire lead: half the larger RTT to the two ends plus a margin, never
/// more than the configured default; the default when either RTT is unknown.
#[must_use]
pub fn adaptive_fire_lead(
    config: &Config,
    rtt_a: Option<Duration>,
    rtt_b: Option<Duration>,
) -> Duration {
    match (rtt_a, rtt_b) {
        (Some(a), Some(b)) => (a.max(b) / 2)
            .saturating_add(config.fire_lead_margin())
            .min(config.fire_lead()),
        _ => config.fire_lead(),
    }
}

/// R1: does the claimed reflex's IP equal the session's source IP?
/// IPv4-mapped IPv6 compares equal to IPv4; the port may differ.
#[must_use]
pub fn reflex_matches_session(claimed: SocketAddr, session: SocketAddr) -> bool {
    canonical_ip(claimed.ip()) == canonical_ip(session.ip())
}

impl Coordinator {
    /// Both tables are sized now (`seed` keys their hashes): mediating never
    /// allocates.
    pub(crate) fn new(config: &Config, seed: u64) -> Self {
        let cap = config.budget_table_capacity() as usize;
        Coordinator {
            budget: WindowTable::with_seed(cap, config.budget_window(), seed),
            // Acks arrive within a punch deadline of the introduce; twice that
            // is "recently" with room for clock skew and slow paths.
            mediated: WindowTable::with_seed(
                cap,
                config.punch_deadline().saturating_mul(2),
                mix64(seed),
            ),
        }
    }

    /// Entries in the per-requester budget table (bounded by its capacity).
    pub fn budget_entries(&self) -> usize {
        self.budget.len()
    }

    /// Entries in the recently-mediated table (bounded by its capacity).
    pub fn mediated_entries(&self) -> usize {
        self.mediated.len()
    }

    fn reject(out: &mut Outbox, to: NodeId, req: &PunchRequest, reason: RejectReason) {
        bump(&mut out.stats.requests_rejected);
        let msg = PunchReject {
            target: req.target,
            punch_id: req.punch_id_or_zero(),
            reason,
        };
        out.control(to, Channel::Rendezvous, &msg.to_bytes());
    }

    /// A `PunchRequest` from `from`, whose authenticated session arrives from
    /// `session_addr`. `own` are this node's own addresses (bind, reflex,
    /// canonical), which R13 never lets it introduce.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn handle_request(
        &mut self,
        config: &Config,
        now: Instant,
        wall_ms: u64,
        from: NodeId,
        session_addr: SocketAddr,
        req: PunchRequest,
        peers: &Peers,
        own: &[SocketAddr],
        out: &mut Outbox,
    ) {
        // R5: every request counts against the requester's budget, valid or
        // not. The table fails closed: while it is full of live budgets a
        // newcomer is refused, never a live budget forgotten.
        let Some(used) = self.budget.try_entry(now, from, || 0) else {
            return Self::reject(out, from, &req, RejectReason::RateLimited);
        };
        if *used >= config.coordinator_requests_per_window() {
            return Self::reject(out, from, &req, RejectReason::RateLimited);
        }
        *used = used.saturating_add(1);

        // C9: one form for every address from here on.
        let self_reflex = canonical_addr(req.self_reflex);
        // R1: bind self_reflex to the session source IP before using it anywhere.
        if !reflex_matches_session(self_reflex, session_addr) {
            return Self::reject(out, from, &req, RejectReason::ReflexMismatch);
        }
        // R13: never introduce a bogus destination or ourselves.
        if bogus_here(self_reflex, own) {
            return Self::reject(out, from, &req, RejectReason::BogusReflex);
        }
        if req.target == from {
            return Self::reject(out, from, &req, RejectReason::UNSPECIFIED);
        }
        // One directory lookup per peer: everything about the target now, the
        // requester's RTT below.
        let target = peers.get(req.target);
        let Some(target_session) = target.and_then(|t| t.session) else {
            return Self::reject(out, from, &req, RejectReason::NoSessionWithTarget);
        };
        // The target's announced reflex, held to the same rule as R1: never
        // point a requester at an IP the target has no session from.
        // (Announcements are stored canonical, C9.)
        let Some(target_reflex) = target
            .and_then(|t| t.announced)
            .map(|a| a.reflex)
            .filter(|r| reflex_matches_session(*r, target_session))
        else {
            return Self::reject(out, from, &req, RejectReason::UnknownTargetReflex);
        };
        if bogus_here(target_reflex, own) {
            return Self::reject(out, from, &req, RejectReason::BogusReflex);
        }
        let target_rtt = target.and_then(|t| t.rtt);
        let target_natrix = target.is_some_and(|t| t.natrix);

        let key = pair_key(from, req.target);
        // R11: a request crossing the rendezvous under way for the other
        // direction joins it.
        let slot = self.mediated.slot_of(&key);
        if let Some(m) = slot.and_then(|at| self.mediated.live_mut_at(now, at)) {
            let crossing = m.requester == req.target
                && !m.refused
                && m.forwarded != 3
                && now.saturating_duration_since(m.at) < config.punch_deadline();
            if crossing {
                m.set_id(key, from, req.punch_id_or_zero());
                let again = PunchIntroduce {
                    peer: req.target,
                    peer_reflex: m.requester_reflex,
                    fire_at_ms: m.fire_at_ms,
                };
                out.control(from, Channel::Rendezvous, &again.to_bytes());
                bump(&mut out.stats.crossings_joined);
                bump(&mut out.stats.requests_mediated);
                return;
            }
        }

        let lead = adaptive_fire_lead(config, peers.rtt(from), target_rtt);
        let fire_at_ms = wall_ms.saturating_add(duration_to_millis(lead));
        // R7: a natrix target learns the punch id its introduce belongs to.
        let bind = req
            .punch_id
            .filter(|_| config.natrix_extensions() && target_natrix);
        let id = req.punch_id_or_zero();
        let target_id = bind.map_or(0, NonZeroU32::get);
        let mut ids = [id, target_id];
        if from != key.0 {
            ids.swap(0, 1);
        }
        let mediation = Mediation {
            requester: from,
            ids,
            requester_reflex: self_reflex,
            fire_at_ms,
            at: now,
            forwarded: 0,
            refused: false,
        };
        // Its record is what lets acks and refusals through later: without
        // room for it (all live), fail closed.
        if !self.mediated.try_insert_at(now, slot, key, mediation) {
            return Self::reject(out, from, &req, RejectReason::RateLimited);
        }

        let to_requester = PunchIntroduce {
            peer: req.target,
            peer_reflex: target_reflex,
            fire_at_ms,
        };
        let to_target = PunchIntroduce {
            peer: from,
            peer_reflex: self_reflex,
            fire_at_ms,
        };
        let natrix = |id: NodeId| config.natrix_extensions() && peers.natrix(id);
        if natrix(from) {
            Self::predict(out, from, req.target, target, target_session, fire_at_ms);
        }
        out.control(from, Channel::Rendezvous, &to_requester.to_bytes());
        if natrix(req.target) {
            Self::predict(
                out,
                req.target,
                from,
                peers.get(from),
                session_addr,
                fire_at_ms,
            );
        }
        if let Some(punch_id) = bind {
            let msg = NatrixMessage::Bind(PunchBind {
                peer: from,
                fire_at_ms,
                punch_id,
            });
            let (bytes, len) = msg.to_bytes();
            out.control(req.target, Channel::Natrix, bytes.get(..len).unwrap_or(&[]));
        }
        out.control(req.target, Channel::Rendezvous, &to_target.to_bytes());
        bump(&mut out.stats.requests_mediated);
    }

    /// N1: tells `to` where `peer`'s next mapping will be, when `peer`
    /// announced a mapping that depends on the destination with sequential
    /// allocation: its session port (the last mapping this coordinator saw)
    /// plus its step. Only ports travel; `to`'s keep-alives stay on the IP
    /// of the introduce that follows.
    fn predict(
        out: &mut Outbox,
        to: NodeId,
        peer: NodeId,
        record: Option<&Peer>,
        session: SocketAddr,
        fire_at_ms: u64,
    ) {
        let Some(step) = record
            .and_then(|r| r.announced)
            .and_then(|a| a.profile)
            .and_then(|p| p.predictable_step())
            .and_then(|s| i16::try_from(s).ok())
            .and_then(core::num::NonZeroI16::new)
        else {
            return;
        };
        let next = i32::from(session.port()) + i32::from(step.get());
        let Some(port) = u16::try_from(next)
            .ok()
            .and_then(core::num::NonZeroU16::new)
        else {
            return;
        };
        let msg = NatrixMessage::Predict(PunchPredict {
            peer,
            fire_at_ms,
            port,
            step,
        });
        let (bytes, len) = msg.to_bytes();
        out.control(to, Channel::Natrix, bytes.get(..len).unwrap_or(&[]));
        bump(&mut out.stats.predictions_sent);
    }

    /// R5: an endpoint `from` refuses the rendezvous with `r.peer` that this
    /// coordinator mediated. Relayed once, as *refused*, to the other
    /// endpoint when it speaks natrix (a Net v0.27 peer keeps its Net forms
    /// and learns of it only at its deadline).
    pub(crate) fn handle_refuse(
        &mut self,
        config: &Config,
        now: Instant,
        from: NodeId,
        r: PunchRefusal,
        peers: &Peers,
        out: &mut Outbox,
    ) {
        let key = pair_key(from, r.peer);
        let Some(m) = self.mediated.get_mut(now, &key).filter(|_| from != r.peer) else {
            return;
        };
        let fresh = r.punch_id == 0 || r.punch_id == m.id_of(key, from);
        if m.refused || !fresh {
            return;
        }
        m.refused = true;
        let to = r.peer;
        let reachable = peers
            .get(to)
            .is_some_and(|p| p.natrix && p.session.is_some());
        if config.natrix_extensions() && reachable {
            let msg = NatrixMessage::Refused(PunchRefusal {
                peer: from,
                punch_id: m.id_of(key, to),
                reason: r.reason,
            });
            let (bytes, len) = msg.to_bytes();
            out.control(to, Channel::Natrix, bytes.get(..len).unwrap_or(&[]));
            bump(&mut out.stats.refusals_forwarded);
        }
    }

    /// R7: an ack from `from` that is not addressed to us. Forwarded only when
    /// `from` is the ack's `from_peer`, the pair was mediated here recently, the
    /// recipient has a session, this direction was not forwarded already, and
    /// a non-zero punch id matches the mediated one.
    pub(crate) fn handle_ack(
        &mut self,
        now: Instant,
        from: NodeId,
        ack: PunchAck,
        peers: &Peers,
        out: &mut Outbox,
    ) {
        let key = pair_key(ack.from_peer, ack.to_peer);
        let forward = ack.from_peer == from
            && ack.from_peer != ack.to_peer
            && peers.session(ack.to_peer).is_some();
        let mediation = if forward {
            self.mediated.get_mut(now, &key)
        } else {
            None
        };
        let Some(m) = mediation else {
            return bump(&mut out.stats.acks_dropped);
        };
        let bit = if ack.to_peer == key.0 { 1 } else { 2 };
        // An ack carries its sender's punch id (0 from a Net responder): one
        // for an earlier punch of the same pair is stale.
        let stale = ack.punch_id != 0 && ack.punch_id != m.id_of(key, ack.from_peer);
        if m.forwarded & bit != 0 || stale {
            return bump(&mut out.stats.acks_dropped);
        }
        m.forwarded |= bit;
        // Forwarded stamped with the id the recipient knows its punch by (a
        // Net responder never learns one; it gets the requester's).
        let fwd = PunchAck {
            punch_id: m.id_of(key, ack.to_peer),
            ..ack
        };
        out.control(ack.to_peer, Channel::Rendezvous, &fwd.to_bytes());
        bump(&mut out.stats.acks_forwarded);
    }
}
