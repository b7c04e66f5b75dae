//! The endpoint's pending punches: one per peer, with a timer each and the
//! responder counts R5 needs, all kept up to date in `O(log n)` per change so
//! that no event scans the table.
//!
//! The table is sized from `Config::max_pending_punches` at construction and
//! never allocates afterwards.
//!
//! Whoever changes a punch through [`Punches::get_mut`] in a way that moves
//! its next wake-up or its role calls [`Punches::resync`] for that peer
//! afterwards (the endpoint does so at the end of every input it handles).
//! Debug builds check the timers against a full scan in
//! [`Punches::poll_timeout`].

use crate::table::Timers;
use crate::table::slots::Slots;
use crate::time::Instant;
use crate::wire::NodeId;

/// What the table needs to know about a punch.
pub(crate) trait Pending {
    /// When it next needs `handle_timeout`.
    fn wake(&self) -> Instant;
    /// `Some(introducer)` while it is an unsolicited responder train (R5
    /// counts those).
    fn responder_for(&self) -> Option<NodeId>;
}

#[derive(Clone, Debug)]
struct Entry<P> {
    punch: P,
    /// The introducer this punch is counted under (see [`Pending::responder_for`]).
    counted: Option<NodeId>,
}

/// Pending punches by peer, with timers and responder counts.
#[derive(Clone, Debug)]
pub(crate) struct Punches<P> {
    table: Slots<NodeId, Entry<P>>,
    timers: Timers<NodeId>,
    /// Unsolicited responder trains: in all, and per introducer.
    responders: usize,
    by_introducer: Slots<NodeId, usize>,
}

impl<P: Pending> Punches<P> {
    pub(crate) fn with_capacity(capacity: usize, seed: u64) -> Self {
        Punches {
            table: Slots::with_capacity(capacity, seed),
            timers: Timers::with_capacity(capacity),
            responders: 0,
            by_introducer: Slots::with_capacity(capacity, crate::rng::mix64(seed)),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn get(&self, peer: &NodeId) -> Option<&P> {
        self.table.get(peer).map(|e| &e.punch)
    }

    /// The punch with `peer`; call [`resync`](Self::resync) after changing
    /// its wake-up or role.
    pub(crate) fn get_mut(&mut self, peer: &NodeId) -> Option<&mut P> {
        self.table.get_mut(peer).map(|e| &mut e.punch)
    }

    /// Unsolicited responder trains pending.
    pub(crate) fn responders(&self) -> usize {
        self.responders
    }

    /// Unsolicited responder trains introduced by `introducer`.
    pub(crate) fn introduced_by(&self, introducer: NodeId) -> usize {
        self.by_introducer.get(&introducer).copied().unwrap_or(0)
    }

    /// Stores `punch` for `peer`, replacing (and returning) any previous one.
    pub(crate) fn insert(&mut self, peer: NodeId, punch: P) -> Option<P> {
        let old = self.remove(&peer);
        let at = self.table.insert_new(
            peer,
            Entry {
                punch,
                counted: None,
            },
        );
        self.sync_at(at);
        old
    }

    pub(crate) fn remove(&mut self, peer: &NodeId) -> Option<P> {
        let at = self.table.find(peer)?;
        self.remove_at(at)
    }

    fn remove_at(&mut self, at: u32) -> Option<P> {
        self.timers.remove(at);
        let (_, entry) = self.table.remove_at(at)?;
        if let Some(introducer) = entry.counted {
            self.uncount(introducer);
        }
        Some(entry.punch)
    }

    /// Brings the timer and the responder counts of `peer`'s punch (if any)
    /// up to date.
    pub(crate) fn resync(&mut self, peer: &NodeId) {
        if let Some(at) = self.table.find(peer) {
            self.sync_at(at);
        }
    }

    fn sync_at(&mut self, at: u32) {
        let Some((peer, e)) = self.table.entry_at(at) else {
            return;
        };
        let (peer, wake, want, counted) =
            (*peer, e.punch.wake(), e.punch.responder_for(), e.counted);
        if self.timers.get(at) != Some(wake) {
            self.timers.set(at, wake, peer);
        }
        if want != counted {
            if let Some(old) = counted {
                self.uncount(old);
            }
            if let Some(new) = want {
                self.count(new);
            }
            if let Some(e) = self.table.value_mut(at) {
                e.counted = want;
            }
        }
    }

    fn count(&mut self, introducer: NodeId) {
        self.responders = self.responders.saturating_add(1);
        match self.by_introducer.get_mut(&introducer) {
            Some(n) => *n = n.saturating_add(1),
            None => {
                self.by_introducer.insert_new(introducer, 1);
            }
        }
    }

    fn uncount(&mut self, introducer: NodeId) {
        self.responders = self.responders.saturating_sub(1);
        if let Some(at) = self.by_introducer.find(&introducer) {
            match self.by_introducer.value_mut(at) {
                Some(n) if *n > 1 => *n -= 1,
                _ => {
                    self.by_introducer.remove_at(at);
                }
            }
        }
    }

    /// The peer whose punch is due first, if it is due at `now`.
    pub(crate) fn due(&self, now: Instant) -> Option<NodeId> {
        self.timers
            .peek()
            .filter(|(at, _, _)| *at <= now)
            .map(|(_, peer, _)| peer)
    }

    /// The earliest wake-up of any punch.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        #[cfg(debug_assertions)]
        self.check();
        self.timers.peek().map(|(at, _, _)| at)
    }

    /// Ends every punch `f` says to end, handing it to `f`'s `then` side.
    /// `O(n)`: for events that concern many punches at once (a coordinator's
    /// session going down), never per datagram.
    pub(crate) fn remove_where(
        &mut self,
        mut which: impl FnMut(&P) -> bool,
        mut then: impl FnMut(NodeId, P),
    ) {
        for at in 0..self.table.slab_len() {
            let hit = self.table.value(at).is_some_and(|e| which(&e.punch));
            if !hit {
                continue;
            }
            let peer = self.table.key(at);
            if let (Some(peer), Some(p)) = (peer, self.remove_at(at)) {
                then(peer, p);
            }
        }
    }

    /// Debug builds: every punch has its timer, at its wake-up, and the
    /// responder counts add up.
    #[cfg(debug_assertions)]
    fn check(&self) {
        let mut responders = 0;
        for (at, _, e) in self.table.occupied() {
            debug_assert_eq!(self.timers.get(at), Some(e.punch.wake()), "stale timer");
            debug_assert_eq!(e.counted, e.punch.responder_for(), "stale count");
            responders += usize::from(e.counted.is_some());
        }
        debug_assert_eq!(self.timers.len(), self.table.len());
        debug_assert_eq!(responders, self.responders);
    }
}
