//! Counters maintained by the machines (`behaviour.md`, "Statistics").

use core::net::SocketAddr;

/// Monotonic counters. Every requester punch that started a rendezvous is
/// counted once in `punches_attempted` and, when it ends, in exactly one of
/// `punches_succeeded`, `punch_timeouts`, `punch_rejections` or
/// `punches_cancelled`; the ones not yet ended are in flight.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Stats {
    /// Requester punches started: a `PunchRequest` sent, or (R11) a train
    /// the peer's rendezvous already ran with us adopted.
    pub punches_attempted: u64,
    /// Requester punches confirmed by a keep-alive.
    pub punches_succeeded: u64,
    /// Punches (requester side) that ended without a direct path and fell back
    /// to the relay: timeouts, rejections, skips, no-relay outcomes.
    pub relay_fallbacks: u64,
    /// Requester punches whose deadline passed.
    pub punch_timeouts: u64,
    /// Requester punches the coordinator rejected.
    pub punch_rejections: u64,
    /// Requester punches cancelled or superseded (or whose coordinator session
    /// went down) before they ended.
    pub punches_cancelled: u64,
    /// Requests the pair matrix skipped (no rendezvous started).
    pub punches_skipped: u64,
    /// Coordinator selections that found no candidate.
    pub no_relay_skips: u64,
    /// Requests the pair matrix answered with a direct path (no punch needed).
    pub direct_paths: u64,
    /// Path upgrades attempted (S4; driver-maintained).
    pub upgrades_attempted: u64,
    /// Path upgrades that succeeded (S4; driver-maintained).
    pub upgrades_succeeded: u64,

    /// Port mapping (P7; driver-maintained): a mapping is installed at the
    /// gateway now. Not a counter: it clears when the mapping is lost or
    /// deleted.
    pub port_mapping_active: bool,
    /// Port mapping (P3; driver-maintained): the installed mapping's
    /// external address and port as the gateway granted them, `None`
    /// without one. A double-NAT address (P6) shows here too, but is never
    /// the node's reflex.
    pub port_mapping_external: Option<SocketAddr>,
    /// Port mapping (P4; driver-maintained): renewals since the mapping was
    /// installed (back to 0 at each install, a re-install after a gateway
    /// restart included).
    pub port_mapping_renewals: u64,

    /// Coordinator: requests mediated (two introduces sent).
    pub requests_mediated: u64,
    /// Coordinator: requests rejected, all reasons.
    pub requests_rejected: u64,
    /// Coordinator: acks forwarded.
    pub acks_forwarded: u64,
    /// Coordinator: acks dropped (R7).
    pub acks_dropped: u64,
    /// Coordinator: requests that crossed a rendezvous it was mediating the
    /// other way and joined it instead of starting a second one (R11).
    pub crossings_joined: u64,
    /// Coordinator: endpoint refusals relayed to the other endpoint (R5).
    pub refusals_forwarded: u64,

    /// Responder: trains started for unsolicited introduces.
    pub responder_trains: u64,
    /// Responder: punches confirmed by a keep-alive.
    pub responder_successes: u64,
    /// Introduces dropped by R4 (reflex disagrees with the peer's announcement,
    /// or no announcement under the `Drop` policy).
    pub introduces_dropped_reflection: u64,
    /// Introduces dropped by a responder budget (R5).
    pub introduces_dropped_budget: u64,
    /// Introduces dropped for another reason (self, conflict, unexpected).
    pub introduces_dropped_other: u64,
    /// Introduces ignored because their rendezvous already ran here: a
    /// duplicate changes nothing (exactly one outcome per rendezvous).
    pub introduces_duplicate: u64,
    /// Introduces refused by R13 (port 0, broadcast, multicast, unspecified,
    /// the coordinator's or this node's own address).
    pub introduces_dropped_bogus: u64,
    /// Requester punches that joined the peer's crossing rendezvous (R11).
    pub crossings_adopted: u64,
    /// Refusals this endpoint sent to a rendezvous' coordinator (R5, R12, R13).
    pub refusals_sent: u64,
    /// Announcements refused (R13).
    pub announcements_refused: u64,

    /// Keep-alives sent (predicted-port ones included).
    pub keepalives_sent: u64,
    /// N1: keep-alives sent to a predicted port of the peer (a window around
    /// a coordinator's `PunchPredict`).
    pub keepalives_predicted: u64,
    /// N2: birthday attempts started (by trains whose pair needs one).
    pub birthday_attempts: u64,
    /// N2: birthday attempts that found the path.
    pub birthday_successes: u64,
    /// N2: birthday attempts a train wanted but the caps refused
    /// (`SprayRefusal`: cooling down, too many at once, no announced IP…).
    pub birthday_refused: u64,
    /// N2: datagrams birthday attempts sent (probes and openings).
    pub spray_datagrams: u64,
    /// N1 (coordinator): `PunchPredict`s sent.
    pub predictions_sent: u64,
    /// N1: `PunchPredict`s taken (bound to an introduce of the coordinator
    /// that sent them).
    pub predictions_taken: u64,
    /// Keep-alives that confirmed a punch.
    pub keepalives_accepted: u64,
    /// Keep-alives dropped (no punch for the sender, wrong token or address).
    pub keepalives_dropped: u64,
    /// Acks accepted by their final recipient.
    pub acks_accepted: u64,
    /// Rejects ignored as stale (R6).
    pub stale_rejects_ignored: u64,
    /// Reflex responses nobody was waiting for (dropped).
    pub reflex_answers_unsolicited: u64,
    /// Control payloads that failed to decode.
    pub malformed_messages: u64,
}

impl Stats {
    /// `punches_attempted - punches_succeeded`, saturating. Counts in-flight
    /// punches too, so it may decrease when one of them succeeds.
    #[must_use]
    pub fn punches_failed(&self) -> u64 {
        self.punches_attempted
            .saturating_sub(self.punches_succeeded)
    }
}

/// Adds one, saturating.
pub(crate) fn bump(c: &mut u64) {
    *c = c.saturating_add(1);
}
