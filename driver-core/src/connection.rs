//! Connections: one handle per peer public key that carries datagrams over
//! the best path there is — the coordinator's relay at once, the direct path
//! once a punch found it and it answered a ping, the relay again when the
//! direct path dies (S3, S4, D2; the decisions are
//! `natrix_session::path`'s).
//!
//! ```no_run
//! # async fn demo<R: natrix_driver_core::Runtime>(
//! #     node: natrix_driver_core::Node<R>,
//! #     peer: natrix_session::PublicKey,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! let conn = node.connect(peer).await?; // on the relay now
//! conn.send(b"hello").await?;
//! let reply = conn.recv().await?;
//! let path = conn.path().await?; // direct or relayed, address, RTT, bytes
//! println!("{} via {} for {:?}", path.kind, path.remote, path.since);
//! # let _ = reply; Ok(()) }
//! ```
//!
//! Datagram semantics: unreliable; within one path, in the order the
//! network delivers them; across a path switch possibly reordered (the
//! direct path is usually the faster), never duplicated (the two peers' one
//! session drops any copy, S2). When a direct path dies, what was sent on it
//! between its death and the switch to the relay is lost: at most
//! `PathConfig::dead_after` (6.5 s by default) of traffic. The largest
//! datagram is [`MAX_DATAGRAM`] bytes on every path.

use std::fmt;
use std::sync::Arc;

use futures_lite::future::poll_fn;
use natrix_session::path::{MAX_DATAGRAM, PathEvent, PathInfo};
use natrix_session::relay::Refusal;
use natrix_session::{HandshakeError, PublicKey};

use crate::buf::{Inbox, InboxSender};
use crate::control::ControlError;
use crate::node::{
    AcceptedConn, Command, ConnSinks, ConnectError, Node, NodeError, QUEUE_CAPACITY,
};
use crate::runtime::Runtime;

/// Something a connection reports, besides its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// The path changed (or the connection opened), or an upgrade failed.
    Path(PathEvent),
    /// The relay dropped a datagram of ours: which quota, and when it resets
    /// (S3).
    RelayRefused(Refusal),
    /// The connection ended: its session could not be set up again (the
    /// side that opened it: with the handshake's failure), or its session
    /// ended (the accepting side: `None`; the other side may open a new one).
    Closed(Option<HandshakeError>),
    /// The peer closed the connection ([`Connection::close`] on its side).
    ClosedByPeer,
}

/// Why a connection operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The connection or its node is closed.
    #[error("the connection is closed")]
    Closed,
    /// The datagram is larger than a connection carries on every path.
    #[error("datagram of {len} bytes is larger than the {max}-byte maximum")]
    TooLarge {
        /// Its length.
        len: usize,
        /// [`MAX_DATAGRAM`].
        max: usize,
    },
    /// The control plane refused.
    #[error("control plane: {0}")]
    Control(ControlError),
}

/// A connection to one peer (see the [module docs](self)). Dropping it does
/// not close it; [`close`](Self::close) does. Clones share the connection
/// (a sending task and a receiving task, say): each datagram and each event
/// goes to one of them.
#[derive(Clone)]
pub struct Connection {
    peer: PublicKey,
    commands: async_channel::Sender<Command>,
    data: Arc<Inbox<()>>,
    events: async_channel::Receiver<ConnectionEvent>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// The peer's public key.
    #[must_use]
    pub fn peer(&self) -> PublicKey {
        self.peer
    }

    /// Sends one datagram (at most [`MAX_DATAGRAM`] bytes) on the
    /// connection's current path.
    ///
    /// # Errors
    /// [`ConnectionError::TooLarge`], [`ConnectionError::Closed`], or the
    /// control plane's refusal.
    pub async fn send(&self, bytes: &[u8]) -> Result<(), ConnectionError> {
        if bytes.len() > MAX_DATAGRAM {
            return Err(ConnectionError::TooLarge {
                len: bytes.len(),
                max: MAX_DATAGRAM,
            });
        }
        let (reply, rx) = async_channel::bounded(1);
        self.commands
            .send(Command::SendData {
                key: self.peer,
                bytes: bytes.to_vec(),
                reply,
            })
            .await
            .map_err(|_| ConnectionError::Closed)?;
        match rx.recv().await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ConnectionError::Control(e)),
            Err(_) => Err(ConnectionError::Closed),
        }
    }

    /// The next datagram from the peer.
    ///
    /// # Errors
    /// [`ConnectionError::Closed`] once the connection or node is closed and
    /// everything received was read.
    pub async fn recv(&self) -> Result<Vec<u8>, ConnectionError> {
        poll_fn(|cx| self.data.poll_pop(cx))
            .await
            .map(|(bytes, ())| bytes)
            .ok_or(ConnectionError::Closed)
    }

    /// The next datagram, copied into `buf` (cut to fit; [`MAX_DATAGRAM`]
    /// bytes never cut): its length. Allocates nothing.
    ///
    /// # Errors
    /// As [`recv`](Self::recv).
    pub async fn recv_into(&self, buf: &mut [u8]) -> Result<usize, ConnectionError> {
        poll_fn(|cx| self.data.poll_pop_into(cx, buf))
            .await
            .map(|(n, ())| n)
            .ok_or(ConnectionError::Closed)
    }

    /// The path in use now: direct or relayed, the remote address, since
    /// when, RTT, bytes each way, why the last upgrade failed (D2).
    ///
    /// # Errors
    /// [`ConnectionError::Closed`].
    pub async fn path(&self) -> Result<PathInfo, ConnectionError> {
        let (reply, rx) = async_channel::bounded(1);
        self.commands
            .send(Command::Path {
                key: self.peer,
                reply,
            })
            .await
            .map_err(|_| ConnectionError::Closed)?;
        rx.recv()
            .await
            .ok()
            .flatten()
            .ok_or(ConnectionError::Closed)
    }

    /// The next event (path changes, refusals, the end); `None` once the
    /// connection is closed. Events beyond [`QUEUE_CAPACITY`] unread ones are
    /// dropped.
    pub async fn next_event(&self) -> Option<ConnectionEvent> {
        self.events.recv().await.ok()
    }

    /// An event if one is waiting.
    #[must_use]
    pub fn try_event(&self) -> Option<ConnectionEvent> {
        self.events.try_recv().ok()
    }

    /// Closes the connection and its session, and tells the peer, whose
    /// side reports [`ConnectionEvent::ClosedByPeer`] (unless both copies
    /// of the close message are lost: then its session times out and it
    /// reports [`ConnectionEvent::Closed`]).
    pub async fn close(self) {
        let _ = self
            .commands
            .send(Command::CloseConnection { key: self.peer })
            .await;
    }
}

impl<R: Runtime> Node<R> {
    /// Opens a connection to `peer`: through the first coordinator (in
    /// configuration order) that has `peer` online, on its relay at once;
    /// it upgrades to a direct path in the background.
    ///
    /// # Errors
    /// [`ConnectError::NoCoordinator`] without a live coordinator session,
    /// [`ConnectError::Offline`] when no coordinator knows `peer`, or why the
    /// lookup or the session failed.
    pub async fn connect(&self, peer: PublicKey) -> Result<Connection, ConnectError> {
        let coordinators = self.live_coordinators().await?;
        let mut last = ConnectError::NoCoordinator;
        for c in coordinators {
            match self.lookup(c.node_id(), peer).await {
                Ok(a) if a.online => return self.connect_via(peer, c).await,
                Ok(_) => last = ConnectError::Offline,
                Err(e) => last = ConnectError::Session(e),
            }
        }
        Err(last)
    }

    /// Opens a connection to `peer` on the relay of coordinator `via` (no
    /// lookup: if `peer` is not online there, the session's handshake fails
    /// and the connection reports [`ConnectionEvent::Closed`]).
    ///
    /// # Errors
    /// [`ConnectError::Session`] when the control plane refuses.
    pub async fn connect_via(
        &self,
        peer: PublicKey,
        via: PublicKey,
    ) -> Result<Connection, ConnectError> {
        let data = Inbox::new(QUEUE_CAPACITY);
        let (events_tx, events) = async_channel::bounded(QUEUE_CAPACITY);
        let (reply, rx) = async_channel::bounded(1);
        let sinks = ConnSinks {
            data: InboxSender(data.clone()),
            events: events_tx,
        };
        let closed = || ConnectError::Session(crate::node::SessionRequestError::Closed);
        self.commands
            .send(Command::OpenConnection {
                key: peer,
                via,
                sinks,
                reply,
            })
            .await
            .map_err(|_| closed())?;
        match rx.recv().await {
            Ok(Ok(_)) => Ok(Connection {
                peer,
                commands: self.commands.clone(),
                data,
                events,
            }),
            Ok(Err(e)) => Err(ConnectError::Session(e.into())),
            Err(_) => Err(closed()),
        }
    }

    /// The next connection a peer opened to this node.
    ///
    /// # Errors
    /// [`NodeError::Closed`] once the node is shut down.
    pub async fn accept(&self) -> Result<Connection, NodeError> {
        let AcceptedConn { peer, data, events } =
            self.accepts.recv().await.map_err(|_| NodeError::Closed)?;
        Ok(Connection {
            peer,
            commands: self.commands.clone(),
            data,
            events,
        })
    }

    /// Coordinators with a live session, in configuration order.
    ///
    /// # Errors
    /// [`ConnectError::Session`] when the node is shut down.
    pub async fn live_coordinators(&self) -> Result<Vec<PublicKey>, ConnectError> {
        let (reply, rx) = async_channel::bounded(1);
        let closed = || ConnectError::Session(crate::node::SessionRequestError::Closed);
        self.commands
            .send(Command::Coordinators { reply })
            .await
            .map_err(|_| closed())?;
        rx.recv().await.map_err(|_| closed())
    }
}
