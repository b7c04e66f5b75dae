//! Reflex probes: one request in flight per peer, shared by everyone who wants
//! that peer's answer, each subscriber stamped with its own generation.
//!
//! The reflex messages carry no id, so a response is matched to its peer's
//! in-flight record. A sweep's probe and a standalone probe to the same peer
//! share that record: both get the answer. A subscriber that goes away (a
//! cancelled probe, a sweep that ended or was discarded) removes only its own
//! stamp, so it can lose only its own answer (C1).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::time::Instant;
use crate::wire::NodeId;

/// Who is waiting for a peer's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Subscriber {
    /// The sweep with this generation.
    Sweep(u64),
    /// A standalone probe with this id.
    Standalone(u64),
}

#[derive(Clone, Debug)]
pub(crate) struct InFlight {
    pub(crate) deadline: Instant,
    pub(crate) subscribers: Vec<Subscriber>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Prober {
    inflight: BTreeMap<NodeId, InFlight>,
}

impl Prober {
    /// Subscribes to `peer`'s answer. Returns true when a new request must be
    /// sent (nothing was in flight to that peer).
    pub(crate) fn subscribe(&mut self, peer: NodeId, sub: Subscriber, deadline: Instant) -> bool {
        match self.inflight.get_mut(&peer) {
            Some(f) => {
                f.subscribers.push(sub);
                false
            }
            None => {
                let mut subscribers = Vec::with_capacity(2);
                subscribers.push(sub);
                self.inflight.insert(
                    peer,
                    InFlight {
                        deadline,
                        subscribers,
                    },
                );
                true
            }
        }
    }

    /// Removes one subscription wherever it is. The request stays in flight
    /// until answered or expired, so a late answer is never credited to a
    /// later request.
    pub(crate) fn unsubscribe(&mut self, sub: Subscriber) {
        for f in self.inflight.values_mut() {
            f.subscribers.retain(|s| *s != sub);
        }
    }

    /// The answer from `peer` arrived: its record, if one was in flight.
    pub(crate) fn answer(&mut self, peer: NodeId) -> Option<InFlight> {
        self.inflight.remove(&peer)
    }

    /// Removes and returns every record whose deadline is at or before `now`.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<(NodeId, InFlight)> {
        let due: Vec<NodeId> = self
            .inflight
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(p, _)| *p)
            .collect();
        due.into_iter()
            .filter_map(|p| self.inflight.remove(&p).map(|f| (p, f)))
            .collect()
    }

    /// Whether `sub` is waiting on any peer.
    pub(crate) fn is_waiting(&self, sub: Subscriber) -> bool {
        self.inflight.values().any(|f| f.subscribers.contains(&sub))
    }

    /// Standalone subscriptions outstanding.
    pub(crate) fn standalone_count(&self) -> usize {
        self.inflight
            .values()
            .flat_map(|f| f.subscribers.iter())
            .filter(|s| matches!(s, Subscriber::Standalone(_)))
            .count()
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.inflight.values().map(|f| f.deadline).min()
    }
}
