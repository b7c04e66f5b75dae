//! What a driver needs from an async runtime: a UDP socket it can poll, a
//! timer, and a way to spawn the node's task. `natrix-tokio` and `natrix-smol`
//! each implement this and nothing else.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant as StdInstant;

/// A boxed future the runtime can drive.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A UDP socket the node's task polls.
pub trait UdpSocket: Send + Sync + 'static {
    /// Polls for a datagram; on ready, fills `buf` and returns its length and source.
    fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>>;
    /// Polls to send `buf` to `target`.
    fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        target: SocketAddr,
    ) -> Poll<io::Result<usize>>;
    /// The bound address.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// An async runtime.
pub trait Runtime: Clone + Send + Sync + 'static {
    /// Its socket type.
    type Socket: UdpSocket;
    /// Its handle on a spawned task: awaiting it waits for the task to end.
    type Task: Future<Output = ()> + Send + 'static;

    /// Binds a UDP socket.
    fn bind(&self, addr: SocketAddr) -> io::Result<Self::Socket>;
    /// A future that completes at `deadline` (or soon after).
    fn sleep_until(&self, deadline: StdInstant) -> BoxFuture;
    /// Spawns the node's task.
    fn spawn(&self, task: BoxFuture) -> Self::Task;
    /// The runtime's monotonic clock, which the node's task reads for its
    /// `now` and its timers. The default is the OS clock
    /// ([`std::time::Instant::now`]); a runtime with a clock of its own (a
    /// test runtime with virtual time, say) overrides it, and then its
    /// [`sleep_until`](Self::sleep_until) follows the same clock.
    fn now(&self) -> StdInstant {
        StdInstant::now()
    }
}
