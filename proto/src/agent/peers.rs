//! What the agent knows about other nodes: sessions, announcements, RTTs,
//! wall-clock offsets.

use alloc::collections::{BTreeMap, BTreeSet};
use core::net::SocketAddr;
use core::time::Duration;

use crate::classify::NatClass;
use crate::wire::NodeId;

/// A peer's announced (class, reflex): what it told the mesh about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Announcement {
    /// Its public address.
    pub reflex: SocketAddr,
    /// Its NAT class.
    pub class: NatClass,
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Peer {
    /// The authenticated session's source address, while a session is up.
    pub(crate) session: Option<SocketAddr>,
    pub(crate) announced: Option<Announcement>,
    pub(crate) rtt: Option<Duration>,
    /// The peer's wall clock minus ours, in ms, while its session is up.
    pub(crate) clock_offset_ms: Option<i64>,
    /// A natrix control message arrived from it on the current session: it
    /// speaks natrix's own channel (cleared when the session goes down).
    pub(crate) natrix: bool,
    /// While the record has no session: its place in the eviction order.
    evict_seq: u64,
}

impl Peer {
    fn is_empty(&self) -> bool {
        self.session.is_none()
            && self.announced.is_none()
            && self.rtt.is_none()
            && self.clock_offset_ms.is_none()
            && !self.natrix
    }
}

/// The peer directory, bounded by `Config::max_known_peers`.
///
/// Peers with a live session always win over records without one
/// (announcement-only entries, typically): when the directory is full, a
/// session coming up evicts the oldest record without a session, so an
/// announcement flood can never lock sessions out. Nothing else evicts.
#[derive(Clone, Debug)]
pub(crate) struct Peers {
    map: BTreeMap<NodeId, Peer>,
    /// Records without a session, oldest first: what a session may evict.
    sessionless: BTreeSet<(u64, NodeId)>,
    next_seq: u64,
    capacity: usize,
}

/// The directory is full: the information was not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DirectoryFull;

impl Peers {
    pub(crate) fn new(capacity: usize) -> Self {
        Peers {
            map: BTreeMap::new(),
            sessionless: BTreeSet::new(),
            next_seq: 0,
            capacity,
        }
    }

    /// Whether `id` has spoken natrix's own channel on its current session.
    pub(crate) fn natrix(&self, id: NodeId) -> bool {
        self.map.get(&id).is_some_and(|p| p.natrix)
    }

    /// Makes room for a session with `id`: when the directory is full and `id`
    /// has no record, the oldest record without a session is evicted. Returns
    /// whether there is room now.
    pub(crate) fn make_room_for_session(&mut self, id: NodeId) -> bool {
        if self.map.contains_key(&id) || self.map.len() < self.capacity {
            return true;
        }
        match self.sessionless.pop_first() {
            Some((_, victim)) => {
                self.map.remove(&victim);
                true
            }
            None => false,
        }
    }

    /// Every peer with a session up, and the session's source address.
    pub(crate) fn sessions(&self) -> impl Iterator<Item = (NodeId, SocketAddr)> + '_ {
        self.map
            .iter()
            .filter_map(|(id, p)| p.session.map(|a| (*id, a)))
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn session(&self, id: NodeId) -> Option<SocketAddr> {
        self.map.get(&id).and_then(|p| p.session)
    }

    pub(crate) fn announced(&self, id: NodeId) -> Option<Announcement> {
        self.map.get(&id).and_then(|p| p.announced)
    }

    pub(crate) fn rtt(&self, id: NodeId) -> Option<Duration> {
        self.map.get(&id).and_then(|p| p.rtt)
    }

    /// The peer's wall clock minus ours, in ms; 0 when unknown.
    /// Whether a clock offset estimate for `id` is known.
    pub(crate) fn knows_clock_offset(&self, id: NodeId) -> bool {
        self.map
            .get(&id)
            .is_some_and(|p| p.clock_offset_ms.is_some())
    }

    pub(crate) fn clock_offset_ms(&self, id: NodeId) -> i64 {
        self.map
            .get(&id)
            .and_then(|p| p.clock_offset_ms)
            .unwrap_or(0)
    }

    /// Applies `f` to the peer's record, creating it if there is room, and drops
    /// the record if it ends up empty.
    pub(crate) fn update(
        &mut self,
        id: NodeId,
        f: impl FnOnce(&mut Peer),
    ) -> Result<(), DirectoryFull> {
        let existed = self.map.contains_key(&id);
        if !existed && self.map.len() >= self.capacity {
            return Err(DirectoryFull);
        }
        let peer = self.map.entry(id).or_default();
        let indexed = existed && peer.session.is_none();
        let old_seq = peer.evict_seq;
        f(peer);
        let sessionless = peer.session.is_none();
        let empty = peer.is_empty();
        if indexed && (empty || !sessionless) {
            self.sessionless.remove(&(old_seq, id));
        }
        if empty {
            self.map.remove(&id);
        } else if sessionless && !indexed {
            let seq = self.next_seq;
            self.next_seq = seq.saturating_add(1);
            peer.evict_seq = seq;
            self.sessionless.insert((seq, id));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::new([198, 51, 100, i].into(), 4000)
    }

    fn consistent(p: &Peers) {
        let sessionless = p.map.values().filter(|r| r.session.is_none()).count();
        assert_eq!(p.sessionless.len(), sessionless);
        for (seq, id) in &p.sessionless {
            assert_eq!(p.map[id].evict_seq, *seq);
        }
    }

    #[test]
    fn sessions_evict_the_oldest_record_without_a_session() {
        let mut p = Peers::new(3);
        let announce = |p: &mut Peers, i: u8| {
            p.update(NodeId(u64::from(i)), |r| {
                r.announced = Some(Announcement {
                    reflex: addr(i),
                    class: NatClass::Cone,
                })
            })
        };
        announce(&mut p, 1).unwrap();
        announce(&mut p, 2).unwrap();
        p.update(NodeId(3), |r| r.session = Some(addr(3))).unwrap();
        consistent(&p);
        assert_eq!(announce(&mut p, 4), Err(DirectoryFull));
        // A session evicts the oldest announcement-only record (1), not 3.
        assert!(p.make_room_for_session(NodeId(5)));
        p.update(NodeId(5), |r| r.session = Some(addr(5))).unwrap();
        assert!(p.announced(NodeId(1)).is_none());
        assert!(p.announced(NodeId(2)).is_some());
        consistent(&p);
        // 2 gets a session, then loses it: it is evictable again, newest.
        p.update(NodeId(2), |r| r.session = Some(addr(2))).unwrap();
        consistent(&p);
        assert!(!p.make_room_for_session(NodeId(6)), "all live sessions");
        p.update(NodeId(2), |r| r.session = None).unwrap();
        consistent(&p);
        assert!(p.make_room_for_session(NodeId(6)));
        assert_eq!(p.len(), 2);
        consistent(&p);
        // Emptied records leave the index too.
        p.update(NodeId(3), |r| r.session = None).unwrap();
        consistent(&p);
        assert_eq!(p.len(), 1);
    }
}
