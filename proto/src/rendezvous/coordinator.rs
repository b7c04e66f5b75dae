//! The coordinator role (R): mediates `PunchRequest`s between two peers it has
//! authenticated sessions with, and forwards their acks.
//!
//! Requirements implemented here: **R1** (anti-reflection: `self_reflex` bound
//! to the session IP), **R5** (per-requester budget, typed rejections, bounded
//! budget memory), **R7** (ack forwarding only from the authenticated sender for
//! a pair mediated recently), **R9** (adaptive fire lead).

use core::net::SocketAddr;
use core::time::Duration;

use crate::agent::io::{Channel, Outbox};
use crate::agent::peers::Peers;
use crate::classify::canonical_ip;
use crate::config::Config;
use crate::stats::bump;
use crate::table::WindowTable;
use crate::time::{Instant, duration_to_millis};
use crate::wire::{NodeId, PunchAck, PunchIntroduce, PunchReject, PunchRequest, RejectReason};

/// A pair the coordinator introduced, remembered for R7.
#[derive(Clone, Copy, Debug)]
struct Mediation {
    /// The requester's punch id (0 for a v1 request).
    punch_id: u32,
    /// Acks already forwarded: bit 0 toward the lower id, bit 1 toward the higher.
    forwarded: u8,
}

/// Orders a pair so both directions find the same record.
fn pair_key(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
    if a <= b { (a, b) } else { (b, a) }
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
    pub(crate) fn new(config: &Config) -> Self {
        let cap = config.budget_table_capacity() as usize;
        Coordinator {
            budget: WindowTable::new(cap, config.budget_window()),
            // Acks arrive within a punch deadline of the introduce; twice that
            // is "recently" with room for clock skew and slow paths.
            mediated: WindowTable::new(cap, config.punch_deadline().saturating_mul(2)),
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
    /// `session_addr`.
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
        out: &mut Outbox,
    ) {
        // R5: every request counts against the requester's budget, valid or not.
        let used = self.budget.entry(now, from, || 0);
        if *used >= config.coordinator_requests_per_window() {
            return Self::reject(out, from, &req, RejectReason::RateLimited);
        }
        *used = used.saturating_add(1);

        // R1: bind self_reflex to the session source IP before using it anywhere.
        if !reflex_matches_session(req.self_reflex, session_addr) {
            return Self::reject(out, from, &req, RejectReason::ReflexMismatch);
        }
        if req.target == from {
            return Self::reject(out, from, &req, RejectReason::UNSPECIFIED);
        }
        let Some(target_session) = peers.session(req.target) else {
            return Self::reject(out, from, &req, RejectReason::NoSessionWithTarget);
        };
        // The target's announced reflex, held to the same rule as R1: never
        // point a requester at an IP the target has no session from.
        let Some(target_reflex) = peers
            .announced(req.target)
            .map(|a| a.reflex)
            .filter(|r| reflex_matches_session(*r, target_session))
        else {
            return Self::reject(out, from, &req, RejectReason::UnknownTargetReflex);
        };

        let lead = adaptive_fire_lead(config, peers.rtt(from), peers.rtt(req.target));
        let fire_at_ms = wall_ms.saturating_add(duration_to_millis(lead));
        let to_requester = PunchIntroduce {
            peer: req.target,
            peer_reflex: target_reflex,
            fire_at_ms,
        };
        let to_target = PunchIntroduce {
            peer: from,
            peer_reflex: req.self_reflex,
            fire_at_ms,
        };
        out.control(from, Channel::Rendezvous, &to_requester.to_bytes());
        out.control(req.target, Channel::Rendezvous, &to_target.to_bytes());
        let mediation = Mediation {
            punch_id: req.punch_id_or_zero(),
            forwarded: 0,
        };
        self.mediated
            .insert(now, pair_key(from, req.target), mediation);
        bump(&mut out.stats.requests_mediated);
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
        // A requester's ack carries its punch id: one for an earlier punch of
        // the same pair is stale.
        let stale = ack.punch_id != 0 && ack.punch_id != m.punch_id;
        if m.forwarded & bit != 0 || stale {
            return bump(&mut out.stats.acks_dropped);
        }
        m.forwarded |= bit;
        // The responder never learns the punch id; the coordinator fills in the
        // one it mediated so the requester can match the ack to its punch.
        let fwd = PunchAck {
            punch_id: m.punch_id,
            ..ack
        };
        out.control(ack.to_peer, Channel::Rendezvous, &fwd.to_bytes());
        bump(&mut out.stats.acks_forwarded);
    }
}
