//! Buffers for the per-datagram path, so that receiving a datagram allocates
//! nothing in steady state:
//!
//! * [`SmallBytes`] — a control message held inline (natrix's control
//!   messages are a few dozen bytes); only a longer one, which no valid
//!   message is, goes to the heap;
//! * [`BufPool`] and [`PooledBuf`] — a bounded free list of datagram
//!   buffers: a buffer taken for a datagram goes back to its pool when the
//!   datagram is dropped (the session control plane hands application data
//!   to the node's task in them, [`ControlInput::Data`](crate::ControlInput::Data));
//! * the application's inboxes (crate-private): bounded queues of datagrams
//!   with a free list of buffers of their own, which the application copies
//!   out of into a buffer it passes
//!   ([`Node::recv_from_into`](crate::Node::recv_from_into),
//!   [`Node::recv_data_into`](crate::Node::recv_data_into)); their waiting
//!   receivers are remembered in a list that is reused, not reallocated.

use std::collections::VecDeque;
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// Bytes held inline up to [`SmallBytes::INLINE`] long, on the heap beyond.
#[derive(Clone)]
pub struct SmallBytes {
    repr: Repr,
}

#[derive(Clone)]
enum Repr {
    Inline {
        len: u8,
        bytes: [u8; SmallBytes::INLINE],
    },
    Heap(Box<[u8]>),
}

impl SmallBytes {
    /// The longest payload held inline. Every message natrix's control
    /// planes carry fits (the largest, a directory answer with an
    /// announcement, is 57 bytes).
    pub const INLINE: usize = 64;

    /// A copy of `bytes` (inline when it fits).
    #[must_use]
    pub fn new(bytes: &[u8]) -> Self {
        let repr = match u8::try_from(bytes.len()) {
            Ok(len) if bytes.len() <= Self::INLINE => {
                let mut inline = [0u8; Self::INLINE];
                if let Some(dst) = inline.get_mut(..bytes.len()) {
                    dst.copy_from_slice(bytes);
                }
                Repr::Inline { len, bytes: inline }
            }
            _ => Repr::Heap(bytes.into()),
        };
        SmallBytes { repr }
    }

    /// The bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        match &self.repr {
            Repr::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or(&[]),
            Repr::Heap(b) => b,
        }
    }

    /// Whether the bytes are held inline (no allocation).
    #[must_use]
    pub fn is_inline(&self) -> bool {
        matches!(self.repr, Repr::Inline { .. })
    }
}

impl Default for SmallBytes {
    fn default() -> Self {
        Self::new(&[])
    }
}

impl Deref for SmallBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for SmallBytes {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl From<&[u8]> for SmallBytes {
    fn from(bytes: &[u8]) -> Self {
        Self::new(bytes)
    }
}

impl From<Vec<u8>> for SmallBytes {
    fn from(bytes: Vec<u8>) -> Self {
        if bytes.len() <= Self::INLINE {
            Self::new(&bytes)
        } else {
            SmallBytes {
                repr: Repr::Heap(bytes.into_boxed_slice()),
            }
        }
    }
}

impl PartialEq for SmallBytes {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for SmallBytes {}

impl fmt::Debug for SmallBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_bytes(), f)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct PoolInner {
    free: Mutex<Vec<Vec<u8>>>,
    max_free: usize,
}

/// A bounded free list of datagram buffers (see the [module docs](self)).
///
/// A buffer is allocated with room for [`BufPool::BUF_CAPACITY`] bytes (more
/// for a longer datagram); when its [`PooledBuf`] is dropped it returns to the
/// pool, unless the pool already holds `max_free` buffers or the buffer grew
/// beyond [`BUF_CAPACITY`](Self::BUF_CAPACITY) — so the pool keeps at most
/// `max_free × BUF_CAPACITY` bytes, and only a datagram longer than that
/// (rare: beyond a typical MTU) costs an allocation.
#[derive(Clone)]
pub struct BufPool {
    inner: Arc<PoolInner>,
}

impl fmt::Debug for BufPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufPool")
            .field("free", &self.free_buffers())
            .field("max_free", &self.inner.max_free)
            .finish()
    }
}

impl BufPool {
    /// Room in a fresh buffer; buffers larger than this are not kept.
    pub const BUF_CAPACITY: usize = 2048;

    /// An empty pool that keeps at most `max_free` buffers.
    #[must_use]
    pub fn new(max_free: usize) -> Self {
        BufPool {
            inner: Arc::new(PoolInner {
                free: Mutex::new(Vec::with_capacity(max_free)),
                max_free,
            }),
        }
    }

    /// A pooled copy of `bytes`: a buffer from the free list, or a new one
    /// when the list is empty.
    #[must_use]
    pub fn copy_from(&self, bytes: &[u8]) -> PooledBuf {
        let reused = lock(&self.inner.free).pop();
        let mut buf =
            reused.unwrap_or_else(|| Vec::with_capacity(bytes.len().max(Self::BUF_CAPACITY)));
        buf.clear();
        buf.extend_from_slice(bytes);
        PooledBuf {
            bytes: buf,
            pool: Some(self.inner.clone()),
        }
    }

    /// Buffers waiting in the free list.
    #[must_use]
    pub fn free_buffers(&self) -> usize {
        lock(&self.inner.free).len()
    }
}

/// A datagram in a buffer from a [`BufPool`]; dropping it returns the buffer.
/// Dereferences to the datagram's bytes.
pub struct PooledBuf {
    bytes: Vec<u8>,
    pool: Option<Arc<PoolInner>>,
}

impl PooledBuf {
    /// The datagram as a vector of its own (the buffer leaves the pool).
    #[must_use]
    pub fn into_vec(mut self) -> Vec<u8> {
        self.pool = None;
        std::mem::take(&mut self.bytes)
    }

    /// The bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        let Some(pool) = self.pool.take() else {
            return;
        };
        if self.bytes.capacity() > BufPool::BUF_CAPACITY {
            return;
        }
        let mut free = lock(&pool.free);
        if free.len() < pool.max_free {
            free.push(std::mem::take(&mut self.bytes));
        }
    }
}

impl Deref for PooledBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl From<Vec<u8>> for PooledBuf {
    /// A buffer of its own, not from a pool.
    fn from(bytes: Vec<u8>) -> Self {
        PooledBuf { bytes, pool: None }
    }
}

impl Clone for PooledBuf {
    /// A copy in a buffer of its own, not from a pool.
    fn clone(&self) -> Self {
        PooledBuf {
            bytes: self.bytes.clone(),
            pool: None,
        }
    }
}

impl PartialEq for PooledBuf {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for PooledBuf {}

impl fmt::Debug for PooledBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.bytes[..], f)
    }
}

/// More remembered waiting receivers than this and all of them are woken
/// (spuriously) and forgotten, which bounds the list whatever receivers the
/// application creates and drops.
const MAX_WAITERS: usize = 64;

struct InboxState<M> {
    /// Datagrams (in buffers of the free list) and what goes with each.
    queue: VecDeque<(Vec<u8>, M)>,
    /// Buffers to copy datagrams into.
    free: Vec<Vec<u8>>,
    waiters: Vec<Waker>,
    closed: bool,
}

/// A bounded queue of datagrams from the node's task to the application,
/// with its own free list of buffers ([`BufPool::BUF_CAPACITY`] bytes each,
/// at most `capacity` kept). Pushing never blocks (a full inbox refuses, UDP
/// semantics); receiving waits. Neither allocates once the queue, the free
/// list and the list of waiters have grown to what the application uses.
///
/// Pushing does not wake a waiting receiver at once: the node's task calls
/// [`wake`](Self::wake) when it stops for a while (it waits for input, yields
/// to the runtime, or waits to send), so that a burst of datagrams costs one
/// wake-up, not one each.
pub(crate) struct Inbox<M> {
    state: Mutex<InboxState<M>>,
    capacity: usize,
    /// Items were pushed while a receiver waited; [`wake`](Self::wake) is due.
    wake_due: AtomicBool,
}

impl<M> Inbox<M> {
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Inbox {
            state: Mutex::new(InboxState {
                queue: VecDeque::new(),
                free: Vec::new(),
                waiters: Vec::new(),
                closed: false,
            }),
            capacity,
            wake_due: AtomicBool::new(false),
        })
    }

    /// Queues a copy of `bytes` with `meta` unless the inbox is full or
    /// closed. Returns whether it was queued.
    pub(crate) fn try_push(&self, bytes: &[u8], meta: M) -> bool {
        let mut s = lock(&self.state);
        if s.closed || s.queue.len() >= self.capacity {
            return false;
        }
        let mut buf = s
            .free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(bytes.len().max(BufPool::BUF_CAPACITY)));
        buf.clear();
        buf.extend_from_slice(bytes);
        s.queue.push_back((buf, meta));
        if !s.waiters.is_empty() {
            self.wake_due.store(true, Ordering::Relaxed);
        }
        true
    }

    /// Wakes the receivers waiting for what was pushed since the last call.
    /// Cheap when there is nothing to do.
    pub(crate) fn wake(&self) {
        if self.wake_due.swap(false, Ordering::Relaxed) {
            // Waking only schedules the receivers' tasks; none of the
            // runtimes' wakers re-enters this inbox.
            for w in lock(&self.state).waiters.drain(..) {
                w.wake();
            }
        }
    }

    /// The next datagram copied into `out` (cut to fit): its length and
    /// meta; `None` once the inbox is closed and empty. The buffer stays in
    /// the free list.
    pub(crate) fn poll_pop_into(
        &self,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<Option<(usize, M)>> {
        let mut s = lock(&self.state);
        if let Some((buf, meta)) = s.queue.pop_front() {
            let n = buf.len().min(out.len());
            if let (Some(dst), Some(src)) = (out.get_mut(..n), buf.get(..n)) {
                dst.copy_from_slice(src);
            }
            if buf.capacity() <= BufPool::BUF_CAPACITY && s.free.len() < self.capacity {
                s.free.push(buf);
            }
            return Poll::Ready(Some((n, meta)));
        }
        self.wait(s, cx)
    }

    /// The next datagram in a vector of its own (its buffer leaves the free
    /// list); `None` once the inbox is closed and empty.
    pub(crate) fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Option<(Vec<u8>, M)>> {
        let mut s = lock(&self.state);
        if let Some(item) = s.queue.pop_front() {
            return Poll::Ready(Some(item));
        }
        self.wait(s, cx)
    }

    fn wait<T>(
        &self,
        mut s: MutexGuard<'_, InboxState<M>>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<T>> {
        if s.closed {
            return Poll::Ready(None);
        }
        if !s.waiters.iter().any(|w| w.will_wake(cx.waker())) {
            if s.waiters.len() >= MAX_WAITERS {
                for w in s.waiters.drain(..) {
                    w.wake();
                }
            }
            s.waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// No more items will come; waiting receivers are woken.
    pub(crate) fn close(&self) {
        let mut s = lock(&self.state);
        s.closed = true;
        for w in s.waiters.drain(..) {
            w.wake();
        }
    }
}

/// The node task's end of an [`Inbox`]: closes it when dropped (the task
/// ended or was cancelled).
pub(crate) struct InboxSender<M>(pub(crate) Arc<Inbox<M>>);

impl<M> Drop for InboxSender<M> {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_bytes_inline_up_to_the_limit() {
        for n in [0, 1, 36, SmallBytes::INLINE] {
            let v: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let s = SmallBytes::new(&v);
            assert!(s.is_inline());
            assert_eq!(&s[..], &v[..]);
            assert_eq!(SmallBytes::from(v.clone()), s);
        }
        let long = vec![7u8; SmallBytes::INLINE + 1];
        let s = SmallBytes::new(&long);
        assert!(!s.is_inline());
        assert_eq!(&s[..], &long[..]);
        assert_eq!(SmallBytes::from(long.clone()).as_bytes(), &long[..]);
    }

    #[test]
    fn pooled_buffers_return_to_their_pool_within_bounds() {
        let pool = BufPool::new(2);
        let a = pool.copy_from(b"one");
        let b = pool.copy_from(b"two");
        let c = pool.copy_from(b"three");
        assert_eq!(
            (&a[..], &b[..], &c[..]),
            (&b"one"[..], &b"two"[..], &b"three"[..])
        );
        assert_eq!(pool.free_buffers(), 0);
        drop((a, b, c));
        // At most two are kept.
        assert_eq!(pool.free_buffers(), 2);
        let d = pool.copy_from(b"four");
        assert_eq!(pool.free_buffers(), 1);
        // A buffer taken out of the pool does not come back.
        assert_eq!(d.into_vec(), b"four");
        assert_eq!(pool.free_buffers(), 1);
        // A buffer that had to grow for a long datagram is not kept.
        let big = pool.copy_from(&vec![0u8; BufPool::BUF_CAPACITY + 1]);
        assert_eq!(pool.free_buffers(), 0);
        drop(big);
        assert_eq!(pool.free_buffers(), 0);
        // Copies are not pooled.
        let e = pool.copy_from(b"five");
        let f = e.clone();
        assert_eq!(e, f);
        drop((e, f));
        assert_eq!(pool.free_buffers(), 1);
        let g = PooledBuf::from(vec![1, 2]);
        drop(g);
        assert_eq!(pool.free_buffers(), 1);
    }

    fn pop(inbox: &Inbox<u32>) -> Poll<Option<(Vec<u8>, u32)>> {
        let mut buf = [0u8; 16];
        let mut cx = Context::from_waker(Waker::noop());
        inbox
            .poll_pop_into(&mut cx, &mut buf)
            .map(|o| o.map(|(n, m)| (buf[..n].to_vec(), m)))
    }

    #[test]
    fn inbox_is_bounded_recycles_and_closes() {
        let inbox = Inbox::<u32>::new(2);
        assert!(inbox.try_push(b"one", 1));
        assert!(inbox.try_push(b"two", 2));
        assert!(!inbox.try_push(b"three", 3), "full");
        assert_eq!(pop(&inbox), Poll::Ready(Some((b"one".to_vec(), 1))));
        // The buffer went back to the free list and is used again.
        assert_eq!(lock(&inbox.state).free.len(), 1);
        assert!(inbox.try_push(b"four", 4));
        assert_eq!(lock(&inbox.state).free.len(), 0);
        // A short buffer cuts.
        let mut short = [0u8; 2];
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(
            inbox.poll_pop_into(&mut cx, &mut short),
            Poll::Ready(Some((2, 2)))
        );
        assert_eq!(&short, b"tw");
        let sender = InboxSender(inbox.clone());
        drop(sender);
        assert!(!inbox.try_push(b"five", 5), "closed");
        // What was queued is still delivered, then the end.
        assert_eq!(
            inbox.poll_pop(&mut cx),
            Poll::Ready(Some((b"four".to_vec(), 4)))
        );
        assert_eq!(pop(&inbox), Poll::Ready(None));
    }

    #[test]
    fn inbox_wakes_waiting_receivers_once_per_burst_and_bounds_the_list() {
        use std::sync::atomic::AtomicUsize;
        use std::task::Wake;
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let inbox = Inbox::<u32>::new(8);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut buf = [0u8; 8];
        assert_eq!(inbox.poll_pop_into(&mut cx, &mut buf), Poll::Pending);
        // The same waker is remembered once.
        assert_eq!(inbox.poll_pop_into(&mut cx, &mut buf), Poll::Pending);
        assert!(inbox.try_push(b"a", 1));
        assert!(inbox.try_push(b"b", 2));
        // Not woken until the node's task stops.
        assert_eq!(count.0.load(Ordering::Relaxed), 0);
        inbox.wake();
        inbox.wake();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert_eq!(
            inbox.poll_pop_into(&mut cx, &mut buf),
            Poll::Ready(Some((1, 1)))
        );
        // Nobody waited: nothing to wake.
        assert!(inbox.try_push(b"c", 3));
        inbox.wake();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        // Many distinct waiters: the list stays bounded, and everyone is woken.
        let inbox = Inbox::<u32>::new(8);
        let counts: Vec<Arc<Count>> = (0..MAX_WAITERS + 1)
            .map(|_| Arc::new(Count(AtomicUsize::new(0))))
            .collect();
        for c in &counts {
            let w = Waker::from(c.clone());
            assert_eq!(
                inbox.poll_pop_into(&mut Context::from_waker(&w), &mut buf),
                Poll::Pending
            );
        }
        assert!(lock(&inbox.state).waiters.len() <= MAX_WAITERS);
        assert!(inbox.try_push(b"d", 4));
        inbox.wake();
        assert!(counts.iter().all(|c| c.0.load(Ordering::Relaxed) == 1));
    }
}
