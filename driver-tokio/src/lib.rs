//! # natrix-tokio — natrix on tokio
//!
//! The tokio half of the driver: a [`Runtime`] that binds a
//! `tokio::net::UdpSocket`, sleeps with `tokio::time`, and spawns with
//! `tokio::spawn`. Everything else — the node's loop, its API, the control
//! plane — is `natrix-driver-core`, shared with `natrix-smol`.
//!
//! Works on the current-thread and the multi-thread runtime. Call
//! [`Node::spawn`](natrix_driver_core::Node::spawn) from inside a tokio runtime.
//!
//! ```no_run
//! use natrix_tokio::{InProcessHub, Node, NodeConfig, Tokio};
//! use natrix_proto::wire::NodeId;
//!
//! # async fn demo() -> Result<(), natrix_driver_core::NodeError> {
//! let hub = InProcessHub::new();
//! let node = Node::spawn(Tokio, NodeConfig::new(NodeId(1), "127.0.0.1:0".parse().unwrap()), hub.join(NodeId(1)))?;
//! hub.set_addr(NodeId(1), node.local_addr());
//! // ... node.request_punch(target, coordinator).await ...
//! node.shutdown().await;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant as StdInstant;

pub use natrix_driver_core::api::*;
#[cfg(any(target_os = "linux", target_os = "android"))]
use natrix_driver_core::batch::BatchReceiver;
pub use natrix_driver_core::stun::{LifetimeConfig, discover_behaviour_with};
use natrix_driver_core::{BoxFuture, Runtime, UdpSocket};

/// A natrix node on tokio.
pub type Node = natrix_driver_core::Node<Tokio>;

/// A natrix coordinator service on tokio.
pub type Coordinator = natrix_driver_core::Coordinator<Tokio>;

/// The tokio runtime, as a natrix [`Runtime`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Tokio;

/// A tokio UDP socket. On Linux and Android the node receives from it up to
/// 32 datagrams per system call (`recvmmsg`, through `quinn-udp`).
#[derive(Debug)]
pub struct TokioSocket {
    sock: tokio::net::UdpSocket,
    #[cfg(any(target_os = "linux", target_os = "android"))]
    state: Option<BatchReceiver>,
}

impl UdpSocket for TokioSocket {
    fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        let mut rb = tokio::io::ReadBuf::new(buf);
        self.sock
            .poll_recv_from(cx, &mut rb)
            .map_ok(|from| (rb.filled().len(), from))
    }

    fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        target: SocketAddr,
    ) -> Poll<io::Result<usize>> {
        self.sock.poll_send_to(cx, buf, target)
    }

    fn send_to<'a>(
        &'a self,
        buf: &'a [u8],
        target: SocketAddr,
    ) -> impl std::future::Future<Output = io::Result<usize>> + Send + 'a {
        // tokio's async send waits in a list of waiters, unlike
        // `poll_send_to`'s single waker slot.
        self.sock.send_to(buf, target)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    fn set_recv_buffer(&self, bytes: usize) -> io::Result<usize> {
        natrix_driver_core::runtime::set_recv_buffer(&self.sock, bytes)
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn recv_batch_slots(&self) -> usize {
        if self.state.is_some() {
            BatchReceiver::SLOTS
        } else {
            1
        }
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn poll_recv_batch(
        &self,
        cx: &mut Context<'_>,
        batch: &mut natrix_driver_core::runtime::RecvBatch,
    ) -> Poll<io::Result<usize>> {
        let Some(state) = &self.state else {
            return batch.poll_recv_one(cx, self);
        };
        loop {
            std::task::ready!(self.sock.poll_recv_ready(cx))?;
            match self.sock.try_io(tokio::io::Interest::READABLE, || {
                state.recv(&self.sock, batch)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }
}

/// The node's task on tokio; awaiting it waits for the task to end.
#[derive(Debug)]
pub struct TokioTask(tokio::task::JoinHandle<()>);

impl Future for TokioTask {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

impl Runtime for Tokio {
    type Socket = TokioSocket;
    type Task = TokioTask;

    fn bind(&self, addr: SocketAddr) -> io::Result<TokioSocket> {
        let std = std::net::UdpSocket::bind(addr)?;
        std.set_nonblocking(true)?;
        Ok(TokioSocket {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            state: BatchReceiver::for_family_of(std.local_addr()?),
            sock: tokio::net::UdpSocket::from_std(std)?,
        })
    }

    fn sleep_until(&self, deadline: StdInstant) -> BoxFuture {
        Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(
            deadline,
        )))
    }

    fn spawn(&self, task: BoxFuture) -> TokioTask {
        TokioTask(tokio::spawn(task))
    }
}
