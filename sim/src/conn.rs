//! Connections on a simulated host: what a host keeps to carry them (its
//! coordinator slots, its [`Paths`], a relay server when it serves, and the
//! bounded logs tests read), the way a driver keeps them.
//!
//! The plumbing itself is in [`World`](crate::World): every packet a host's
//! endpoint sends goes through one transmit function — a relay-route
//! address ([`RelayRoute`]) means "wrap it in a relay forward frame and seal
//! it on the session with coordinator slot `via`", anything else is a UDP
//! datagram — and relay frames arriving on [`CH_RELAY`] from a coordinator
//! are unwrapped and fed back to the endpoint as coming from the relay
//! route's address. A coordinator host that serves runs a [`RelayServer`].
//! Sessions on relay routes and connection peers' sessions are never shown
//! to the agent.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;

use natrix_proto::Instant;
use natrix_proto::wire::NodeId;
use natrix_session::PublicKey;
use natrix_session::path::{PathConfig, PathEvent, PathKind, Paths, RelayRoute};
use natrix_session::relay::{Refusal, RelayServer};

use crate::world::HostId;

pub use natrix_session::relay::CH_RELAY;

/// Session channel of application datagrams on a connection (driver-core's
/// data channel).
pub const CH_DATA: u8 = 16;

/// Most entries each per-host log keeps; older entries are dropped first
/// (and counted in [`HostConns::log_overflow`]).
pub const LOG_CAP: usize = 1 << 16;

/// An application datagram a connection delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnDatagram {
    /// When it was delivered.
    pub at: Instant,
    /// The sending peer.
    pub from: NodeId,
    /// Which kind of path brought it (by its source: a relay route or not).
    pub kind: PathKind,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// A relay refusal a host received ([`RelayFrame::Refused`](natrix_session::relay::RelayFrame)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefusalNotice {
    /// When it arrived.
    pub at: Instant,
    /// The coordinator that refused.
    pub coordinator: NodeId,
    /// The target of the refused frame.
    pub peer: NodeId,
    /// Which quota, and when it resets.
    pub refusal: Refusal,
}

/// What one host keeps for its connections.
#[derive(Debug)]
pub struct HostConns {
    /// The coordinators this host dialled, in order: a relay route's `via`
    /// is an index into this list.
    pub coordinators: Vec<HostId>,
    /// The connection manager.
    pub paths: Paths,
    /// The relay this host runs, if it serves ([`World::enable_relay`](crate::World::enable_relay)).
    pub relay: Option<RelayServer>,
    /// Connections this host opened (it re-dials them over the relay when
    /// their session goes down), by peer, with the coordinator slot.
    pub dialled: BTreeMap<PublicKey, u16>,
    /// Application datagrams delivered on connections, in order.
    pub inbox: VecDeque<ConnDatagram>,
    /// Every path event, with its time.
    pub events: VecDeque<(Instant, PathEvent)>,
    /// Relay refusals received.
    pub refusals: VecDeque<RefusalNotice>,
    /// When this host asked its agent for an upgrade punch, and to whom.
    pub punches: VecDeque<(Instant, NodeId)>,
    /// Relay frames this host forwarded (serve role) and refused.
    pub relayed: u64,
    /// See `relayed`.
    pub refused: u64,
    /// Log entries dropped because a log was full.
    pub log_overflow: u64,
}

impl HostConns {
    pub(crate) fn new(config: PathConfig) -> Self {
        HostConns {
            coordinators: Vec::new(),
            paths: Paths::new(config),
            relay: None,
            dialled: BTreeMap::new(),
            inbox: VecDeque::new(),
            events: VecDeque::new(),
            refusals: VecDeque::new(),
            punches: VecDeque::new(),
            relayed: 0,
            refused: 0,
            log_overflow: 0,
        }
    }

    /// The slot of coordinator `h` in [`coordinators`](Self::coordinators).
    #[must_use]
    pub fn slot_of(&self, h: HostId) -> Option<u16> {
        self.coordinators
            .iter()
            .position(|&c| c == h)
            .and_then(|i| u16::try_from(i).ok())
    }

    /// Pushes onto a bounded log.
    pub(crate) fn push<T>(log: &mut VecDeque<T>, overflow: &mut u64, item: T) {
        if log.len() >= LOG_CAP {
            log.pop_front();
            *overflow += 1;
        }
        log.push_back(item);
    }
}

/// Which kind of path a packet from `from` came by.
#[must_use]
pub fn kind_of(from: SocketAddr) -> PathKind {
    if RelayRoute::is_relay(&from) {
        PathKind::Relayed
    } else {
        PathKind::Direct
    }
}
