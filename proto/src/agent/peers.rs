//! What the agent knows about other nodes: sessions, announcements, RTTs,
//! wall-clock offsets.

use alloc::collections::BTreeMap;
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
}

impl Peer {
    fn is_empty(&self) -> bool {
        self.session.is_none()
            && self.announced.is_none()
            && self.rtt.is_none()
            && self.clock_offset_ms.is_none()
    }
}

/// The peer directory, bounded by `Config::max_known_peers`.
#[derive(Clone, Debug)]
pub(crate) struct Peers {
    map: BTreeMap<NodeId, Peer>,
    capacity: usize,
}

/// The directory is full: the information was not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DirectoryFull;

impl Peers {
    pub(crate) fn new(capacity: usize) -> Self {
        Peers {
            map: BTreeMap::new(),
            capacity,
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
        if !self.map.contains_key(&id) && self.map.len() >= self.capacity {
            return Err(DirectoryFull);
        }
        let peer = self.map.entry(id).or_default();
        f(peer);
        if peer.is_empty() {
            self.map.remove(&id);
        }
        Ok(())
    }
}
