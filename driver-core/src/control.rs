//! The control plane: how control messages reach authenticated peers.
//!
//! natrix does not own sessions. The embedder implements [`ControlPlane`] over
//! whatever authenticated channel it has (a later issue brings authenticated
//! UDP sessions; they implement this same trait). [`InProcessHub`] is an
//! in-process implementation for tests and examples.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::Stream;
use natrix_proto::wire::NodeId;
use natrix_proto::{Channel, NatClass};

/// Something the control plane tells the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlInput {
    /// A control message from an authenticated peer.
    Message {
        /// The peer.
        peer: NodeId,
        /// The session's source address, as this end sees it.
        session_addr: SocketAddr,
        /// The sub-protocol.
        channel: Channel,
        /// The payload.
        payload: Vec<u8>,
    },
    /// A session came up (or its address changed).
    SessionUp {
        /// The peer.
        peer: NodeId,
        /// The session's source address, as this end sees it.
        addr: SocketAddr,
        /// An RTT estimate, if the session has one.
        rtt: Option<Duration>,
    },
    /// A session went down.
    SessionDown {
        /// The peer.
        peer: NodeId,
    },
    /// A peer announced its (reflex, class).
    Announcement {
        /// The peer.
        peer: NodeId,
        /// Its public address.
        reflex: SocketAddr,
        /// Its class.
        class: NatClass,
    },
}

/// Carries control messages to and from authenticated peers.
pub trait ControlPlane: Send + 'static {
    /// Sends `payload` on `channel` to `peer`'s session. Never blocks; a message
    /// to a peer without a session is dropped.
    fn send(&mut self, peer: NodeId, channel: Channel, payload: &[u8]);
    /// Announces this node's (reflex, class) to its peers.
    fn announce(&mut self, reflex: SocketAddr, class: NatClass);
    /// The next input, or `None` when the control plane is closed.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<ControlInput>>;
}

/// Decides whether the hub drops a control message (from, to, channel, bytes).
pub type HubFilter = Arc<dyn Fn(NodeId, NodeId, Channel, &[u8]) -> bool + Send + Sync>;

#[derive(Default)]
struct HubState {
    members: BTreeMap<NodeId, (SocketAddr, async_channel::Sender<ControlInput>)>,
    sessions: Vec<(NodeId, NodeId)>,
    filter: Option<HubFilter>,
}

/// An in-process control plane: every member's messages are delivered to the
/// others through channels, over "sessions" the test opens with
/// [`connect`](Self::connect). The session address a member sees for a peer is
/// the peer's UDP socket address.
#[derive(Clone, Default)]
pub struct InProcessHub {
    state: Arc<Mutex<HubState>>,
}

impl fmt::Debug for InProcessHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.lock();
        f.debug_struct("InProcessHub")
            .field("members", &s.members.len())
            .field("sessions", &s.sessions.len())
            .finish_non_exhaustive()
    }
}

impl InProcessHub {
    /// An empty hub.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers node `id` and returns its end of the control plane. Give it
    /// its UDP address with [`set_addr`](Self::set_addr) once the node is bound.
    #[must_use]
    pub fn join(&self, id: NodeId) -> InProcessControl {
        let (tx, rx) = async_channel::unbounded();
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        self.lock().members.insert(id, (unspecified, tx));
        InProcessControl {
            id,
            hub: self.clone(),
            rx: Box::pin(rx),
        }
    }

    /// Sets the UDP address member `id`'s peers see its sessions at.
    pub fn set_addr(&self, id: NodeId, addr: SocketAddr) {
        if let Some(m) = self.lock().members.get_mut(&id) {
            m.0 = addr;
        }
    }

    /// Opens a session between `a` and `b` (both must have joined), with an
    /// RTT estimate.
    pub fn connect(&self, a: NodeId, b: NodeId, rtt: Duration) {
        let mut s = self.lock();
        let (Some((addr_a, tx_a)), Some((addr_b, tx_b))) =
            (s.members.get(&a).cloned(), s.members.get(&b).cloned())
        else {
            return;
        };
        s.sessions.push((a, b));
        let _ = tx_a.try_send(ControlInput::SessionUp {
            peer: b,
            addr: addr_b,
            rtt: Some(rtt),
        });
        let _ = tx_b.try_send(ControlInput::SessionUp {
            peer: a,
            addr: addr_a,
            rtt: Some(rtt),
        });
    }

    /// Closes the session between `a` and `b`.
    pub fn disconnect(&self, a: NodeId, b: NodeId) {
        let mut s = self.lock();
        s.sessions
            .retain(|(x, y)| !((*x == a && *y == b) || (*x == b && *y == a)));
        for (me, peer) in [(a, b), (b, a)] {
            if let Some((_, tx)) = s.members.get(&me) {
                let _ = tx.try_send(ControlInput::SessionDown { peer });
            }
        }
    }

    /// Installs a filter that drops matching control messages (fault injection
    /// for tests).
    pub fn set_filter(&self, f: Option<HubFilter>) {
        self.lock().filter = f;
    }

    /// Delivers a message as if `from` sent it on its session to `to` (for
    /// tests that play a malicious peer). Returns whether it was delivered.
    pub fn inject(&self, from: NodeId, to: NodeId, channel: Channel, payload: &[u8]) -> bool {
        self.deliver(from, to, channel, payload)
    }

    fn deliver(&self, from: NodeId, to: NodeId, channel: Channel, payload: &[u8]) -> bool {
        let s = self.lock();
        let connected = s
            .sessions
            .iter()
            .any(|(x, y)| (*x == from && *y == to) || (*x == to && *y == from));
        if !connected {
            return false;
        }
        if s.filter
            .as_ref()
            .is_some_and(|f| f(from, to, channel, payload))
        {
            return false;
        }
        let (Some((from_addr, _)), Some((_, tx))) = (s.members.get(&from), s.members.get(&to))
        else {
            return false;
        };
        tx.try_send(ControlInput::Message {
            peer: from,
            session_addr: *from_addr,
            channel,
            payload: payload.to_vec(),
        })
        .is_ok()
    }

    fn broadcast(&self, from: NodeId, reflex: SocketAddr, class: NatClass) {
        let s = self.lock();
        for (id, (_, tx)) in &s.members {
            if *id != from {
                let _ = tx.try_send(ControlInput::Announcement {
                    peer: from,
                    reflex,
                    class,
                });
            }
        }
    }
}

/// One member's end of an [`InProcessHub`].
pub struct InProcessControl {
    id: NodeId,
    hub: InProcessHub,
    rx: std::pin::Pin<Box<async_channel::Receiver<ControlInput>>>,
}

impl fmt::Debug for InProcessControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcessControl")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ControlPlane for InProcessControl {
    fn send(&mut self, peer: NodeId, channel: Channel, payload: &[u8]) {
        self.hub.deliver(self.id, peer, channel, payload);
    }

    fn announce(&mut self, reflex: SocketAddr, class: NatClass) {
        self.hub.broadcast(self.id, reflex, class);
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<ControlInput>> {
        self.rx.as_mut().poll_next(cx)
    }
}
