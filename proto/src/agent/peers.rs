//! What the agent knows about other nodes: sessions, announcements, RTTs,
//! wall-clock offsets.

use core::net::SocketAddr;
use core::time::Duration;

use crate::behaviour::NatProfile;
use crate::classify::NatClass;
use crate::table::slots::Slots;
use crate::wire::NodeId;

/// A node's announced (class, reflex, profile): what it tells the mesh
/// about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Announcement {
    /// Its public address.
    pub reflex: SocketAddr,
    /// Its NAT class.
    pub class: NatClass,
    /// C8: its measured mapping and filtering, when it measured them; the
    /// pair decision reads it ([`pair_action_with_profiles`]).
    ///
    /// [`pair_action_with_profiles`]: crate::behaviour::pair_action_with_profiles
    pub profile: Option<NatProfile>,
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
///
/// One hash lookup finds everything known about a peer ([`get`](Self::get));
/// records without a session are queued oldest first for eviction. The
/// directory reserves room for [`INITIAL_PEERS`] records and grows (doubling,
/// never shrinking) up to its cap: a node that meets 100,000 peers pays for
/// them once, a node that meets ten does not reserve memory for 131,072.
#[derive(Clone, Debug)]
pub(crate) struct Peers {
    map: Slots<NodeId, Peer>,
    capacity: usize,
}

/// Records the directory has room for before it first grows.
pub(crate) const INITIAL_PEERS: usize = 1024;

/// The directory is full: the information was not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DirectoryFull;

impl Peers {
    pub(crate) fn new(capacity: usize, seed: u64) -> Self {
        Peers {
            map: Slots::with_capacity(capacity.min(INITIAL_PEERS), seed),
            capacity,
        }
    }

    /// Everything known about `id`, in one lookup.
    #[inline]
    pub(crate) fn get(&self, id: NodeId) -> Option<&Peer> {
        self.map.get(&id)
    }

    /// Records that `id`, whose session is up, speaks natrix's own channel
    /// (nothing without a session).
    pub(crate) fn mark_natrix(&mut self, id: NodeId) {
        if let Some(p) = self.map.get_mut(&id).filter(|p| p.session.is_some()) {
            // A record with a session is neither empty nor queued: nothing
            // else to keep up to date.
            p.natrix = true;
        }
    }

    /// Whether `id` has spoken natrix's own channel on its current session.
    pub(crate) fn natrix(&self, id: NodeId) -> bool {
        self.get(id).is_some_and(|p| p.natrix)
    }

    /// Makes room for a session with `id`: when the directory is full and `id`
    /// has no record, the oldest record without a session is evicted. Returns
    /// whether there is room now.
    pub(crate) fn make_room_for_session(&mut self, id: NodeId) -> bool {
        if self.map.len() < self.capacity || self.map.find(&id).is_some() {
            return true;
        }
        match self.map.front() {
            Some(victim) => {
                self.map.remove_at(victim);
                true
            }
            None => false,
        }
    }

    /// Every peer with a session up, and the session's source address (in no
    /// particular order).
    pub(crate) fn sessions(&self) -> impl Iterator<Item = (NodeId, SocketAddr)> + '_ {
        self.map
            .occupied()
            .filter_map(|(_, id, p)| p.session.map(|a| (*id, a)))
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn session(&self, id: NodeId) -> Option<SocketAddr> {
        self.get(id).and_then(|p| p.session)
    }

    pub(crate) fn announced(&self, id: NodeId) -> Option<Announcement> {
        self.get(id).and_then(|p| p.announced)
    }

    #[inline]
    pub(crate) fn rtt(&self, id: NodeId) -> Option<Duration> {
        self.get(id).and_then(|p| p.rtt)
    }

    /// Applies `f` to the peer's record, creating it if there is room, and drops
    /// the record if it ends up empty.
    pub(crate) fn update(
        &mut self,
        id: NodeId,
        f: impl FnOnce(&mut Peer),
    ) -> Result<(), DirectoryFull> {
        let at = match self.map.find(&id) {
            Some(at) => at,
            None if self.map.len() >= self.capacity => return Err(DirectoryFull),
            None => self.map.insert_new(id, Peer::default()),
        };
        let Some(peer) = self.map.value_mut(at) else {
            return Ok(());
        };
        f(peer);
        let (empty, sessionless) = (peer.is_empty(), peer.session.is_none());
        if empty {
            self.map.remove_at(at);
        } else if !sessionless {
            self.map.unqueue(at);
        } else if !self.map.is_queued(at) {
            // Newly without a session: youngest in the eviction order.
            self.map.queue_back(at);
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
        for (at, _, r) in p.map.occupied() {
            assert_eq!(p.map.is_queued(at), r.session.is_none());
        }
    }

    #[test]
    fn sessions_evict_the_oldest_record_without_a_session() {
        let mut p = Peers::new(3, 0);
        let announce = |p: &mut Peers, i: u8| {
            p.update(NodeId(u64::from(i)), |r| {
                r.announced = Some(Announcement {
                    reflex: addr(i),
                    class: NatClass::Cone,
                    profile: None,
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
