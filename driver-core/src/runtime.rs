//! What a driver needs from an async runtime: a UDP socket it can poll, a
//! timer, and a way to spawn the node's task. `natrix-tokio` and `natrix-smol`
//! each implement this and nothing else.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
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
    /// How many slots the node's [`RecvBatch`] should have for
    /// [`poll_recv_batch`](Self::poll_recv_batch). The default is 1: one
    /// datagram per call, through [`poll_recv_from`](Self::poll_recv_from).
    fn recv_batch_slots(&self) -> usize {
        1
    }
    /// Polls for one or more datagrams at once (`recvmmsg`, say); on ready,
    /// fills the first `n` slots of `batch` (see [`RecvBatch::parts_mut`]) and
    /// returns `n`, at least 1. A slot may hold several datagrams of one
    /// source back to back, each `stride` bytes long but the last (GRO). A
    /// slot is [`RecvBatch::SLOT_LEN`] bytes, which holds any UDP datagram: an
    /// implementation must not cut datagrams.
    ///
    /// The default receives one datagram with
    /// [`poll_recv_from`](Self::poll_recv_from) into the first slot.
    fn poll_recv_batch(
        &self,
        cx: &mut Context<'_>,
        batch: &mut RecvBatch,
    ) -> Poll<io::Result<usize>> {
        batch.poll_recv_one(cx, self)
    }
    /// Polls to send `buf` to `target`. Only the node's own task polls
    /// this: runtimes keep one waker per direction for `poll_*` calls, so a
    /// second task polling the same socket could replace the first one's
    /// waker and leave it waiting for good.
    fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        target: SocketAddr,
    ) -> Poll<io::Result<usize>>;
    /// Sends `buf` to `target` from a task other than the node's own (the
    /// application's `send_to`, a STUN alternate socket's loop): every task
    /// waiting for the socket to become writable is woken. The default
    /// polls [`poll_send_to`](Self::poll_send_to), which is right for a
    /// runtime whose readiness wakes every waiter; tokio and smol override
    /// it with their own multi-waiter sends.
    fn send_to<'a>(
        &'a self,
        buf: &'a [u8],
        target: SocketAddr,
    ) -> impl std::future::Future<Output = io::Result<usize>> + Send + 'a {
        std::future::poll_fn(move |cx| self.poll_send_to(cx, buf, target))
    }
    /// The bound address.
    fn local_addr(&self) -> io::Result<SocketAddr>;
    /// Asks the OS for a receive buffer (`SO_RCVBUF`) of `bytes` and
    /// returns the size it granted (Linux caps the request at
    /// `net.core.rmem_max` and reports double what it keeps). The default
    /// says the runtime cannot.
    ///
    /// # Errors
    /// The runtime's sockets have no such option, or the OS refused.
    fn set_recv_buffer(&self, bytes: usize) -> io::Result<usize> {
        let _ = bytes;
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// [`UdpSocket::set_recv_buffer`] for any socket `socket2` can reach (the
/// drivers' tokio and async-io sockets): sets `SO_RCVBUF` and reads back
/// what the OS granted.
///
/// # Errors
/// The OS refused.
pub fn set_recv_buffer<S>(socket: &S, bytes: usize) -> io::Result<usize>
where
    for<'s> socket2::SockRef<'s>: From<&'s S>,
{
    let s = socket2::SockRef::from(socket);
    s.set_recv_buffer_size(bytes)?;
    s.recv_buffer_size()
}

/// What one slot of a [`RecvBatch`] received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvSlot {
    /// Bytes received into the slot.
    pub len: usize,
    /// The length of each datagram in the slot but the last, which may be
    /// shorter: `len` when the slot holds one datagram (0 counts as `len`).
    pub stride: usize,
    /// Where the datagrams came from.
    pub src: SocketAddr,
}

/// The node task's receive buffers, allocated once: `slots` buffers of
/// [`SLOT_LEN`](Self::SLOT_LEN) bytes and what each received, for
/// [`UdpSocket::poll_recv_batch`]. The node then takes the datagrams out one
/// by one.
#[derive(Debug)]
pub struct RecvBatch {
    buf: Vec<u8>,
    meta: Vec<RecvSlot>,
    /// Slots filled by the last receive, and the next datagram to hand out.
    filled: usize,
    slot: usize,
    seg: usize,
}

impl RecvBatch {
    /// The size of each slot: any UDP datagram fits (and so does a GRO
    /// batch, which the kernel keeps under 64 KiB).
    pub const SLOT_LEN: usize = 65_536;

    /// `slots` slots (at least 1). Zeroed memory: the pages of a slot are
    /// only touched once data lands there.
    pub fn new(slots: usize) -> Self {
        let slots = slots.max(1);
        let empty = RecvSlot {
            len: 0,
            stride: 0,
            src: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        };
        Self {
            buf: vec![0; slots * Self::SLOT_LEN],
            meta: vec![empty; slots],
            filled: 0,
            slot: 0,
            seg: 0,
        }
    }

    /// The number of slots.
    pub fn slots(&self) -> usize {
        self.meta.len()
    }

    /// The slots' buffers, each [`SLOT_LEN`](Self::SLOT_LEN) bytes, and
    /// what each received, for a socket to fill.
    pub fn parts_mut(&mut self) -> (std::slice::ChunksExactMut<'_, u8>, &mut [RecvSlot]) {
        (self.buf.chunks_exact_mut(Self::SLOT_LEN), &mut self.meta)
    }

    /// One datagram into the first slot with
    /// [`UdpSocket::poll_recv_from`]: the default of
    /// [`UdpSocket::poll_recv_batch`].
    pub fn poll_recv_one<S: UdpSocket + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        socket: &S,
    ) -> Poll<io::Result<usize>> {
        let buf = &mut self.buf[..Self::SLOT_LEN];
        match socket.poll_recv_from(cx, buf) {
            Poll::Ready(Ok((len, src))) => {
                self.meta[0] = RecvSlot {
                    len,
                    stride: len,
                    src,
                };
                Poll::Ready(Ok(1))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// After a receive of `n` slots: hand out their datagrams from the first.
    pub(crate) fn filled(&mut self, n: usize) {
        self.filled = n.min(self.meta.len());
        self.slot = 0;
        self.seg = 0;
    }

    /// The next datagram received and not handed out yet: where it starts
    /// in the buffer, its length, its source.
    pub(crate) fn next_datagram(&mut self) -> Option<(usize, usize, SocketAddr)> {
        while self.slot < self.filled {
            let m = self.meta[self.slot];
            let len = m.len.min(Self::SLOT_LEN);
            let stride = if m.stride == 0 || m.stride > len {
                len
            } else {
                m.stride
            };
            // An empty datagram is a datagram too.
            let segs = if len == 0 { 1 } else { len.div_ceil(stride) };
            if self.seg < segs {
                let off = self.seg * stride;
                self.seg += 1;
                return Some((
                    self.slot * Self::SLOT_LEN + off,
                    stride.min(len - off),
                    m.src,
                ));
            }
            self.slot += 1;
            self.seg = 0;
        }
        None
    }

    /// The bytes of a datagram from [`next_datagram`](Self::next_datagram).
    pub(crate) fn bytes(&self, start: usize, len: usize) -> &[u8] {
        self.buf.get(start..start + len).unwrap_or(&[])
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_hands_out_each_datagram_of_each_slot() {
        let a = SocketAddr::from(([10, 0, 0, 1], 1));
        let b = SocketAddr::from(([10, 0, 0, 2], 2));
        let mut batch = RecvBatch::new(3);
        assert_eq!(batch.slots(), 3);
        {
            let (mut bufs, meta) = batch.parts_mut();
            bufs.next().unwrap()[..5].copy_from_slice(b"hello");
            let coalesced = bufs.next().unwrap();
            coalesced[..10].copy_from_slice(b"aaaabbbbcc");
            meta[0] = RecvSlot {
                len: 5,
                stride: 5,
                src: a,
            };
            // GRO: two datagrams of 4 bytes and a shorter last one.
            meta[1] = RecvSlot {
                len: 10,
                stride: 4,
                src: b,
            };
            // An empty datagram, with no stride.
            meta[2] = RecvSlot {
                len: 0,
                stride: 0,
                src: a,
            };
        }
        batch.filled(3);
        let mut got = Vec::new();
        while let Some((at, n, src)) = batch.next_datagram() {
            got.push((batch.bytes(at, n).to_vec(), src));
        }
        let want: Vec<(Vec<u8>, SocketAddr)> = vec![
            (b"hello".to_vec(), a),
            (b"aaaa".to_vec(), b),
            (b"bbbb".to_vec(), b),
            (b"cc".to_vec(), b),
            (Vec::new(), a),
        ];
        assert_eq!(got, want);
        // Only the slots of the last receive count.
        batch.filled(1);
        assert_eq!(batch.next_datagram(), Some((0, 5, a)));
        assert_eq!(batch.next_datagram(), None);
        // A stride of 0 or beyond the length means one datagram.
        batch.parts_mut().1[0] = RecvSlot {
            len: 3,
            stride: 0,
            src: b,
        };
        batch.filled(1);
        assert_eq!(batch.next_datagram(), Some((0, 3, b)));
        assert_eq!(batch.next_datagram(), None);
    }
}
