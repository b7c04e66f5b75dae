//! The control plane: how control messages reach authenticated peers.
//!
//! [`ControlPlane`] is what the node's task needs from it. Two
//! implementations come with natrix:
//!
//! * [`SessionControl`](crate::net::SessionControl) — the networked one:
//!   authenticated UDP sessions (`natrix-session`) on the node's own socket,
//!   so a session's source address *is* the NAT mapping a punch uses;
//! * [`InProcessHub`] — an in-process one for tests and examples, with fault
//!   injection.
//!
//! An embedder with authenticated channels of its own can implement the trait
//! over them; the socket hooks ([`ControlPlane::handle_datagram`] and the
//! rest) have defaults that share nothing with the node's socket.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::Stream;
use natrix_proto::TraversalError;
use natrix_proto::wire::NodeId;
use natrix_proto::{Announcement, Channel, Instant};
use natrix_session::path::{PathEvent, PathInfo, PathStats};
use natrix_session::relay::{Refusal, RelayStats};
use natrix_session::{HandshakeError, PublicKey, SessionInfo, SessionStats};

use crate::buf::{PooledBuf, SmallBytes};
use crate::net::wire::LookupAnswer;

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
        /// The payload (inline: control messages are small).
        payload: SmallBytes,
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
    /// A peer announced its (reflex, class, profile).
    Announcement {
        /// The peer.
        peer: NodeId,
        /// What it announced.
        announcement: Announcement,
    },
    /// A session measured its peer's wall-clock offset (peer − ours) and the
    /// round-trip time (both ends get one, whoever dialled).
    ClockOffset {
        /// The peer.
        peer: NodeId,
        /// Milliseconds the peer's wall clock is ahead of ours.
        offset_ms: i64,
        /// The round trip the estimate was measured over.
        rtt: Duration,
    },
    /// A handshake this node started ended without a session.
    SessionFailed {
        /// The peer.
        peer: NodeId,
        /// Why.
        error: HandshakeError,
    },
    /// Application data from a peer's session.
    Data {
        /// The peer.
        peer: PublicKey,
        /// The bytes, in a buffer that returns to its pool once the
        /// application has taken them.
        payload: PooledBuf,
    },
    /// The answer to a directory lookup.
    LookupAnswer {
        /// Who answered.
        from: NodeId,
        /// The answer.
        answer: LookupAnswer,
    },
    /// A connection wants a punch to `peer` through coordinator `via` (an
    /// upgrade attempt, S4): ask the agent, and report the outcome with
    /// [`ControlPlane::punch_outcome`].
    RequestPunch {
        /// The peer.
        peer: PublicKey,
        /// The coordinator.
        via: NodeId,
    },
    /// A peer opened a connection to us (through a relay).
    Accepted {
        /// The peer.
        peer: PublicKey,
    },
    /// A connection's path changed, or an upgrade failed (D2).
    Path(PathEvent),
    /// A relay dropped a frame of ours toward `peer` (S3).
    RelayRefused {
        /// The target of the dropped frame.
        peer: NodeId,
        /// Which quota, and when it resets.
        refusal: Refusal,
    },
    /// A connection ended: its session could not be set up again (the
    /// side that opened it), or its session ended (the accepting side).
    ConnectionClosed {
        /// The peer.
        peer: PublicKey,
        /// The handshake failure that ended it, if one did.
        error: Option<HandshakeError>,
        /// The peer closed it (its close message arrived).
        by_peer: bool,
    },
}

/// Why a control-plane operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// This control plane has no sessions of its own (the in-process hub).
    #[error("this control plane does not support the operation (no sessions of its own)")]
    Unsupported,
    /// No session, nor a handshake in progress, to that peer.
    #[error("no session to {0:?}")]
    NoSession(NodeId),
    /// The payload is larger than one session packet carries.
    #[error("payload of {len} bytes is larger than the {max}-byte maximum")]
    TooLarge {
        /// The payload's length.
        len: usize,
        /// The largest payload.
        max: usize,
    },
    /// The session layer refused (for example: the table of sessions is full).
    #[error("session layer: {0}")]
    Session(&'static str),
}

/// Carries control messages to and from authenticated peers.
///
/// The node's task calls it with the node's monotonic `now` (and wall-clock
/// Unix milliseconds where a protocol needs them). A control plane that shares
/// the node's socket implements the socket hooks: the task offers it every
/// session datagram ([`handle_datagram`](Self::handle_datagram)), sends what
/// [`poll_transmit`](Self::poll_transmit) yields from the same socket, and
/// wakes it at [`poll_timeout`](Self::poll_timeout).
pub trait ControlPlane: Send + 'static {
    /// Sends `payload` on `channel` to `peer`'s session. Never blocks; a message
    /// to a peer without a session is dropped.
    fn send(&mut self, now: Instant, peer: NodeId, channel: Channel, payload: &[u8]);
    /// Announces this node's (reflex, class, profile) to its peers.
    fn announce(&mut self, now: Instant, announcement: Announcement);
    /// The next input, or `None` when the control plane is closed.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<ControlInput>>;

    /// This node's public key, when the control plane has an identity.
    fn public_key(&self) -> Option<PublicKey> {
        None
    }
    /// A session datagram from the node's socket (the demultiplexer said so).
    /// Returns whether it was taken; `false` hands it to the application.
    fn handle_datagram(
        &mut self,
        now: Instant,
        wall_ms: u64,
        from: SocketAddr,
        datagram: &[u8],
    ) -> bool {
        let _ = (now, wall_ms, from, datagram);
        false
    }
    /// The next datagram to send from the node's socket.
    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        None
    }
    /// The next datagram to send from the node's socket, written into `out`:
    /// its destination and length. The node's task calls this one, with a
    /// buffer of 65,536 bytes; the default copies what
    /// [`poll_transmit`](Self::poll_transmit) returns (cut to `out`'s
    /// length), and a control plane that can write into the caller's buffer
    /// overrides it so that sending allocates nothing.
    fn poll_transmit_into(&mut self, out: &mut [u8]) -> Option<(SocketAddr, usize)> {
        let (to, bytes) = self.poll_transmit()?;
        let n = bytes.len().min(out.len());
        out.get_mut(..n)?.copy_from_slice(bytes.get(..n)?);
        Some((to, n))
    }
    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    /// Time passed.
    fn handle_timeout(&mut self, now: Instant, wall_ms: u64) {
        let _ = (now, wall_ms);
    }
    /// Opens a session to `key` at `addr` (idempotent); the outcome arrives
    /// as [`ControlInput::SessionUp`] or [`ControlInput::SessionFailed`].
    fn dial(
        &mut self,
        now: Instant,
        wall_ms: u64,
        key: PublicKey,
        addr: SocketAddr,
    ) -> Result<(), ControlError> {
        let _ = (now, wall_ms, key, addr);
        Err(ControlError::Unsupported)
    }
    /// Sends application data to `key` on its session.
    fn send_data(
        &mut self,
        now: Instant,
        key: &PublicKey,
        data: &[u8],
    ) -> Result<(), ControlError> {
        let _ = (now, key, data);
        Err(ControlError::Unsupported)
    }
    /// Asks session peer `at` whether `key` is online there; the answer
    /// arrives as [`ControlInput::LookupAnswer`] with the returned query id.
    fn lookup(&mut self, now: Instant, at: NodeId, key: PublicKey) -> Result<u32, ControlError> {
        let _ = (now, at, key);
        Err(ControlError::Unsupported)
    }
    /// The session to `key`, if any.
    fn session(&self, key: &PublicKey) -> Option<SessionInfo> {
        let _ = key;
        None
    }
    /// Opens a connection to `peer` on the relay of coordinator `via`
    /// (dialling the peer's session through it); the connection upgrades to
    /// a direct path by itself.
    ///
    /// # Errors
    /// [`ControlError::Unsupported`] without sessions of its own,
    /// [`ControlError::NoSession`] when `via` is not a coordinator with a
    /// live session, [`ControlError::Session`] when the session layer refuses.
    fn open_connection(
        &mut self,
        now: Instant,
        wall_ms: u64,
        peer: PublicKey,
        via: PublicKey,
    ) -> Result<PathInfo, ControlError> {
        let _ = (now, wall_ms, peer, via);
        Err(ControlError::Unsupported)
    }
    /// Ends the connection to `peer` (and its session).
    fn close_connection(&mut self, now: Instant, peer: &PublicKey) {
        let _ = (now, peer);
    }
    /// The connection's path now (D2).
    fn path(&self, peer: &PublicKey) -> Option<PathInfo> {
        let _ = peer;
        None
    }
    /// Counters of the connections' paths.
    fn path_stats(&self) -> Option<PathStats> {
        None
    }
    /// Counters of the relay this node serves.
    fn relay_stats(&self) -> Option<RelayStats> {
        None
    }
    /// The outcome of a punch to `peer` (any role): connections use it.
    fn punch_outcome(
        &mut self,
        now: Instant,
        peer: NodeId,
        outcome: Result<SocketAddr, TraversalError>,
    ) {
        let _ = (now, peer, outcome);
    }
    /// This node's network changed (interfaces, reflex): relayed
    /// connections retry their upgrade now.
    fn network_changed(&mut self, now: Instant) {
        let _ = now;
    }
    /// Coordinators with a live session, in configuration order.
    fn coordinators(&self) -> Vec<PublicKey> {
        Vec::new()
    }
    /// Session counters, when the control plane has sessions of its own.
    fn session_stats(&self) -> Option<SessionStats> {
        None
    }
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
            payload: SmallBytes::new(payload),
        })
        .is_ok()
    }

    fn broadcast(&self, from: NodeId, announcement: Announcement) {
        let s = self.lock();
        for (id, (_, tx)) in &s.members {
            if *id != from {
                let _ = tx.try_send(ControlInput::Announcement {
                    peer: from,
                    announcement,
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
    fn send(&mut self, _now: Instant, peer: NodeId, channel: Channel, payload: &[u8]) {
        self.hub.deliver(self.id, peer, channel, payload);
    }

    fn announce(&mut self, _now: Instant, announcement: Announcement) {
        self.hub.broadcast(self.id, announcement);
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<ControlInput>> {
        self.rx.as_mut().poll_next(cx)
    }
}
