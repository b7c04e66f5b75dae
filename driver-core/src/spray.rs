//! N2 in the driver: the sockets of birthday attempts, and the paths pinned
//! to the one socket an attempt kept.
//!
//! A birthday attempt's *opener* (the node behind the NAT that picks a new
//! random port per destination) sends one datagram from each of up to
//! [`SprayConfig::sockets`] local sockets
//! ([`Transmit::Spray`](natrix_proto::Transmit::Spray)), so that its NAT
//! makes one mapping per socket. This module owns those sockets inside the
//! node's task:
//!
//! - **Opening.** A socket is bound the first time the agent names it, on
//!   the main socket's IP with port 0, through the [`Runtime`]. At most
//!   [`SprayConfig::sockets`] per attempt and
//!   [`SprayConfig::max_concurrent`] attempts are open at once; a datagram
//!   beyond them is dropped. A bind that fails (`EMFILE`, say) is traced
//!   and counted, and that socket is skipped: the attempt goes on with the
//!   others.
//! - **Polling.** Every socket has a waker of its own that, when the
//!   runtime wakes it, puts the socket on a ready queue and wakes the node's
//!   task. The task then reads only the sockets on that queue (a few per
//!   turn, one datagram each, taking turns with the main socket), so a
//!   thousand idle sockets cost nothing per input and no task is spawned
//!   per socket. All their I/O happens in the node's task (see
//!   [`UdpSocket::poll_send_to`] on why), except the application's own
//!   [`Node::send_to`](crate::Node::send_to) to a pinned path, which uses
//!   the multi-waiter [`UdpSocket::send_to`] as on the main socket.
//! - **Closing.** The attempt's
//!   [`Event::SprayEnded`](natrix_proto::Event::SprayEnded) closes all its
//!   sockets but the one it names to keep; an attempt id that ended is
//!   remembered, so a late datagram of it opens nothing.
//! - **Pinning.** The kept socket carries the direct path from then on:
//!   every datagram the node sends to the path (the peer's address on it)
//!   leaves from that socket, and what arrives on it is handled exactly like
//!   input on the main socket. One path per peer (a newer one replaces it),
//!   and at most [`MAX_PINNED`] in all: the oldest is evicted and its
//!   socket closed. An evicted path's datagrams leave from the main socket
//!   again, whose mapping behind such a NAT is another port that the peer's
//!   filter drops: the direct path dies, the connection's liveness check
//!   falls back to the relay, and a later upgrade punches again (a new
//!   birthday attempt, under the agent's cool-down).

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant as StdInstant};

use natrix_proto::classify::canonical_addr;
use natrix_proto::spray::{SprayConfig, SprayOutcome};
use natrix_proto::wire::NodeId;
use tracing::debug;

use crate::node::DriverStats;
use crate::runtime::{Runtime, UdpSocket};

/// Most paths pinned to a birthday socket at once; a new one evicts the
/// oldest.
pub const MAX_PINNED: usize = 16;

/// Ended attempt ids remembered (a late datagram of one opens nothing).
const ENDED_KEPT: usize = 64;

/// Ready sockets read per poll of the node's task before it looks at its
/// other inputs again.
const READS_PER_POLL: usize = 16;

/// Receive errors in a row after which a socket is no longer read.
const MAX_RECV_ERRORS: u8 = 8;

/// How long after its first socket an attempt whose end never came is
/// closed anyway, beyond its deadline (a safety net: the agent ends every
/// attempt it started).
const STALE_GRACE: Duration = Duration::from_secs(10);

/// The receive buffer: any UDP datagram fits.
const BUF_LEN: usize = 65_536;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The sockets whose wakers fired, and the node task's waker.
#[derive(Debug, Default)]
struct ReadySet {
    inner: Mutex<ReadyInner>,
}

#[derive(Debug, Default)]
struct ReadyInner {
    queue: VecDeque<u64>,
    task: Option<Waker>,
}

/// One socket's waker: queues the socket, then wakes the node's task.
#[derive(Debug)]
struct SocketWaker {
    id: u64,
    /// Whether the socket is on the ready queue already.
    queued: AtomicBool,
    ready: Arc<ReadySet>,
}

impl SocketWaker {
    /// Puts the socket on the queue unless it is there; returns the task's
    /// waker to wake when it was not.
    fn enqueue(&self) -> Option<Waker> {
        if self.queued.swap(true, Ordering::AcqRel) {
            return None;
        }
        let mut g = lock(&self.ready.inner);
        g.queue.push_back(self.id);
        g.task.clone()
    }
}

impl Wake for SocketWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(task) = self.enqueue() {
            task.wake();
        }
    }
}

/// One open socket.
struct Entry<S> {
    socket: Arc<S>,
    flag: Arc<SocketWaker>,
    waker: Waker,
    attempt: u64,
    index: u16,
    /// Pinned: what arrives is handled like the main socket's input.
    pinned: bool,
    errors: u8,
}

/// One running attempt's sockets.
#[derive(Debug)]
struct AttemptSockets {
    first: StdInstant,
    /// Socket number → socket id.
    ids: BTreeMap<u16, u64>,
}

/// A path pinned to a kept socket.
#[derive(Clone, Copy, Debug)]
struct Pin {
    path: SocketAddr,
    peer: NodeId,
    id: u64,
    attempt: u64,
    index: u16,
}

/// The pinned paths' sockets, for the application's
/// [`Node::send_to`](crate::Node::send_to) (another task): an atomic count
/// keeps the unpinned case free of the lock.
pub(crate) struct PinnedSends<S> {
    count: AtomicUsize,
    paths: Mutex<Vec<(SocketAddr, Arc<S>)>>,
}

impl<S> Default for PinnedSends<S> {
    fn default() -> Self {
        PinnedSends {
            count: AtomicUsize::new(0),
            paths: Mutex::new(Vec::new()),
        }
    }
}

impl<S> PinnedSends<S> {
    /// The socket `to` is pinned to, if any.
    pub(crate) fn socket_for(&self, to: SocketAddr) -> Option<Arc<S>> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let to = canonical_addr(to);
        lock(&self.paths)
            .iter()
            .find(|(p, _)| *p == to)
            .map(|(_, s)| s.clone())
    }
}

/// What a read from a birthday socket brought: the socket's id, and the
/// datagram's length (in [`SprayIo::buf`]) and source, or the error.
pub(crate) type SprayRead = (u64, io::Result<(usize, SocketAddr)>);

/// Where a datagram of a birthday socket goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SprayRole {
    /// To [`Agent::handle_spray_datagram`](natrix_proto::Agent::handle_spray_datagram).
    Attempt { attempt: u64, index: u16 },
    /// Like the main socket's input.
    Pinned,
}

/// The node task's birthday sockets. See the [module docs](self).
pub(crate) struct SprayIo<R: Runtime> {
    rt: R,
    /// The main socket's IP: every birthday socket binds there.
    ip: IpAddr,
    caps: SprayConfig,
    sockets: BTreeMap<u64, Entry<R::Socket>>,
    attempts: BTreeMap<u64, AttemptSockets>,
    ended: VecDeque<u64>,
    /// Oldest first.
    pins: VecDeque<Pin>,
    next_id: u64,
    ready: Arc<ReadySet>,
    shared: Arc<PinnedSends<R::Socket>>,
    /// Where a read lands (allocated with the first socket).
    pub(crate) buf: Vec<u8>,
}

impl<R: Runtime> SprayIo<R> {
    /// For a node whose main socket is on `ip`, under the agent's `caps`.
    pub(crate) fn new(rt: R, ip: IpAddr, caps: SprayConfig) -> Self {
        SprayIo {
            rt,
            ip,
            caps,
            sockets: BTreeMap::new(),
            attempts: BTreeMap::new(),
            ended: VecDeque::new(),
            pins: VecDeque::new(),
            next_id: 1,
            ready: Arc::default(),
            shared: Arc::default(),
            buf: Vec::new(),
        }
    }

    /// What the node's handle reads for the application's sends.
    pub(crate) fn shared(&self) -> Arc<PinnedSends<R::Socket>> {
        self.shared.clone()
    }

    /// No socket open: nothing to poll.
    pub(crate) fn is_idle(&self) -> bool {
        self.sockets.is_empty()
    }

    /// The socket a datagram to `to` leaves from, when `to` is a pinned
    /// path.
    pub(crate) fn pinned_socket(&self, to: SocketAddr) -> Option<&R::Socket> {
        if self.pins.is_empty() {
            return None;
        }
        let to = canonical_addr(to);
        let pin = self.pins.iter().find(|p| p.path == to)?;
        self.sockets.get(&pin.id).map(|e| &*e.socket)
    }

    /// The socket number `index` of `attempt`, opened now if it is the
    /// first time it is named; `None` when it cannot be had (a bind failed,
    /// the caps, an attempt that ended).
    pub(crate) fn socket_for(
        &mut self,
        attempt: u64,
        index: u16,
        stats: &mut DriverStats,
    ) -> Option<Arc<R::Socket>> {
        if let Some(pin) = self
            .pins
            .iter()
            .find(|p| p.attempt == attempt && p.index == index)
        {
            return self.sockets.get(&pin.id).map(|e| e.socket.clone());
        }
        if let Some(id) = self.attempts.get(&attempt).and_then(|a| a.ids.get(&index)) {
            return self.sockets.get(id).map(|e| e.socket.clone());
        }
        if self.ended.contains(&attempt) {
            return None;
        }
        if index >= self.caps.sockets {
            debug!(
                attempt,
                socket = index,
                cap = self.caps.sockets,
                "birthday attempt: socket number beyond the cap; datagram dropped"
            );
            stats.spray_socket_failures += 1;
            return None;
        }
        let now = self.rt.now();
        if !self.attempts.contains_key(&attempt) {
            self.close_stale(now);
            if self.attempts.len() >= self.caps.max_concurrent {
                debug!(
                    attempt,
                    running = self.attempts.len(),
                    "birthday attempt: too many attempts open; datagram dropped"
                );
                stats.spray_socket_failures += 1;
                return None;
            }
            debug!(
                attempt,
                sockets = self.caps.sockets,
                ip = %self.ip,
                "birthday attempt started: opening its sockets"
            );
        }
        let bound = self
            .rt
            .bind(SocketAddr::new(self.ip, 0))
            .and_then(|s| s.local_addr().map(|a| (s, a)));
        let (socket, local) = match bound {
            Ok(s) => s,
            Err(e) => {
                debug!(attempt, socket = index, error = %e, "birthday attempt: a socket could not be opened; skipped");
                stats.spray_socket_failures += 1;
                return None;
            }
        };
        if self.buf.is_empty() {
            self.buf = vec![0; BUF_LEN];
        }
        let id = self.next_id;
        self.next_id += 1;
        let flag = Arc::new(SocketWaker {
            id,
            queued: AtomicBool::new(false),
            ready: self.ready.clone(),
        });
        let socket = Arc::new(socket);
        self.sockets.insert(
            id,
            Entry {
                socket: socket.clone(),
                waker: Waker::from(flag.clone()),
                flag: flag.clone(),
                attempt,
                index,
                pinned: false,
                errors: 0,
            },
        );
        // Read once, which registers its waker.
        let _ = flag.enqueue();
        self.attempts
            .entry(attempt)
            .or_insert_with(|| AttemptSockets {
                first: now,
                ids: BTreeMap::new(),
            })
            .ids
            .insert(index, id);
        stats.spray_sockets_opened += 1;
        tracing::trace!(attempt, socket = index, %local, "birthday socket opened");
        self.gauges(stats);
        Some(socket)
    }

    /// Closes the attempts whose end never came, long past their deadline.
    fn close_stale(&mut self, now: StdInstant) {
        let limit = self.caps.deadline.saturating_add(STALE_GRACE);
        let stale: Vec<u64> = self
            .attempts
            .iter()
            .filter(|(_, a)| now.saturating_duration_since(a.first) > limit)
            .map(|(&id, _)| id)
            .collect();
        for attempt in stale {
            debug!(
                attempt,
                "birthday attempt never ended; its sockets are closed"
            );
            self.forget(attempt, None);
        }
    }

    /// Closes `attempt`'s sockets but `keep`'s, and remembers that it
    /// ended; returns the kept socket's id.
    fn forget(&mut self, attempt: u64, keep: Option<u16>) -> Option<u64> {
        if !self.ended.contains(&attempt) {
            if self.ended.len() == ENDED_KEPT {
                self.ended.pop_front();
            }
            self.ended.push_back(attempt);
        }
        let a = self.attempts.remove(&attempt)?;
        let mut kept = None;
        for (index, id) in a.ids {
            if Some(index) == keep {
                kept = Some(id);
            } else {
                self.sockets.remove(&id);
            }
        }
        kept
    }

    /// An attempt ended ([`natrix_proto::Event::SprayEnded`]): its sockets
    /// close, except the kept one, to which the found path is pinned.
    pub(crate) fn end(
        &mut self,
        peer: NodeId,
        attempt: u64,
        outcome: SprayOutcome,
        keep: Option<u16>,
        sent: u16,
        stats: &mut DriverStats,
    ) {
        let opened = self.attempts.get(&attempt).map_or(0, |a| a.ids.len());
        let path = match outcome {
            SprayOutcome::Succeeded { path } => Some(canonical_addr(path)),
            _ => None,
        };
        let keep = keep.filter(|_| path.is_some());
        let kept = self.forget(attempt, keep);
        debug!(%peer, attempt, ?outcome, sent, sockets = opened, kept = ?keep, "birthday attempt ended");
        match (path, keep, kept) {
            (Some(path), Some(index), Some(id)) => self.pin(peer, path, attempt, index, id, stats),
            (Some(_), Some(index), None) => {
                debug!(%peer, attempt, socket = index, "birthday attempt: the socket to keep is not open; nothing pinned");
            }
            _ => {}
        }
        self.gauges(stats);
    }

    fn pin(
        &mut self,
        peer: NodeId,
        path: SocketAddr,
        attempt: u64,
        index: u16,
        id: u64,
        stats: &mut DriverStats,
    ) {
        // One path per peer, one socket per path: a newer one replaces it.
        while let Some(i) = self
            .pins
            .iter()
            .position(|p| p.path == path || p.peer == peer)
        {
            if let Some(old) = self.pins.remove(i) {
                self.sockets.remove(&old.id);
                debug!(peer = %old.peer, path = %old.path, "pinned path replaced");
            }
        }
        if self.pins.len() >= MAX_PINNED {
            if let Some(old) = self.pins.pop_front() {
                self.sockets.remove(&old.id);
                stats.pinned_evicted += 1;
                debug!(
                    peer = %old.peer,
                    path = %old.path,
                    "pinned path evicted (the oldest of {MAX_PINNED}); its datagrams leave from the main socket again"
                );
            }
        }
        let local = self.sockets.get_mut(&id).map(|e| {
            e.pinned = true;
            e.socket.local_addr()
        });
        self.pins.push_back(Pin {
            path,
            peer,
            id,
            attempt,
            index,
        });
        debug!(%peer, %path, attempt, socket = index, local = ?local.map(|l| l.ok()), "direct path pinned to the birthday socket");
        self.publish();
    }

    /// Hands the pinned paths to the node's handle.
    fn publish(&self) {
        let mut paths = lock(&self.shared.paths);
        paths.clear();
        paths.extend(
            self.pins
                .iter()
                .filter_map(|p| self.sockets.get(&p.id).map(|e| (p.path, e.socket.clone()))),
        );
        self.shared.count.store(paths.len(), Ordering::Release);
    }

    fn gauges(&self, stats: &mut DriverStats) {
        stats.spray_sockets_open = self.sockets.len() as u64;
        stats.pinned_paths = self.pins.len() as u64;
    }

    /// Where a datagram socket `id` read goes; `None` once it is closed.
    pub(crate) fn role(&self, id: u64) -> Option<SprayRole> {
        self.sockets.get(&id).map(|e| {
            if e.pinned {
                SprayRole::Pinned
            } else {
                SprayRole::Attempt {
                    attempt: e.attempt,
                    index: e.index,
                }
            }
        })
    }

    /// Reads one datagram from a socket whose waker fired, into
    /// [`buf`](Self::buf). Only the node's task calls this.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<SprayRead> {
        {
            let mut g = lock(&self.ready.inner);
            if !g.task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                g.task = Some(cx.waker().clone());
            }
        }
        for _ in 0..READS_PER_POLL {
            let Some(id) = lock(&self.ready.inner).queue.pop_front() else {
                return Poll::Pending;
            };
            let Some(e) = self.sockets.get_mut(&id) else {
                continue;
            };
            e.flag.queued.store(false, Ordering::Release);
            let mut scx = Context::from_waker(&e.waker);
            match e.socket.poll_recv_from(&mut scx, &mut self.buf) {
                Poll::Ready(Ok(r)) => {
                    e.errors = 0;
                    // More may be waiting: its turn comes again.
                    let _ = e.flag.enqueue();
                    return Poll::Ready((id, Ok(r)));
                }
                Poll::Ready(Err(err)) => {
                    e.errors = e.errors.saturating_add(1);
                    if e.errors < MAX_RECV_ERRORS {
                        let _ = e.flag.enqueue();
                    }
                    return Poll::Ready((id, Err(err)));
                }
                Poll::Pending => {}
            }
        }
        // Ready sockets left: come back after the other inputs.
        if !lock(&self.ready.inner).queue.is_empty() {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use natrix_proto::spray::SprayConfig;

    use super::*;
    use crate::runtime::BoxFuture;

    /// A socket that never receives and sends into the void.
    struct Quiet(SocketAddr);

    impl UdpSocket for Quiet {
        fn poll_recv_from(
            &self,
            _: &mut Context<'_>,
            _: &mut [u8],
        ) -> Poll<io::Result<(usize, SocketAddr)>> {
            Poll::Pending
        }
        fn poll_send_to(
            &self,
            _: &mut Context<'_>,
            buf: &[u8],
            _: SocketAddr,
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn local_addr(&self) -> io::Result<SocketAddr> {
            Ok(self.0)
        }
    }

    /// Binds [`Quiet`] sockets on fresh ports; after `fail_after` binds,
    /// every bind fails as with `EMFILE`.
    #[derive(Clone)]
    struct FakeRt {
        binds: Arc<AtomicU32>,
        fail_after: u32,
    }

    impl Runtime for FakeRt {
        type Socket = Quiet;
        type Task = std::future::Ready<()>;

        fn bind(&self, addr: SocketAddr) -> io::Result<Quiet> {
            let n = self.binds.fetch_add(1, Ordering::Relaxed);
            if n >= self.fail_after {
                return Err(io::Error::other("too many open files"));
            }
            Ok(Quiet(SocketAddr::new(
                addr.ip(),
                40_000 + u16::try_from(n).unwrap(),
            )))
        }
        fn sleep_until(&self, _: StdInstant) -> BoxFuture {
            Box::pin(std::future::pending())
        }
        fn spawn(&self, _: BoxFuture) -> Self::Task {
            std::future::ready(())
        }
    }

    fn io(fail_after: u32, caps: SprayConfig) -> SprayIo<FakeRt> {
        let rt = FakeRt {
            binds: Arc::default(),
            fail_after,
        };
        SprayIo::new(rt, "192.0.2.1".parse().unwrap(), caps)
    }

    fn path(n: u16) -> SocketAddr {
        SocketAddr::from(([198, 51, 100, 7], 1000 + n))
    }

    fn won(n: u16) -> SprayOutcome {
        SprayOutcome::Succeeded { path: path(n) }
    }

    #[test]
    fn sockets_open_when_named_and_close_at_the_end_but_the_kept_one() {
        let mut s = io(u32::MAX, SprayConfig::default());
        let mut st = DriverStats::default();
        for i in 0..5 {
            assert!(s.socket_for(7, i, &mut st).is_some());
        }
        // Named again: the same socket, nothing new is bound.
        let a = s.socket_for(7, 2, &mut st).unwrap();
        assert_eq!(a.local_addr().unwrap().port(), 40_002);
        assert_eq!((st.spray_sockets_opened, st.spray_sockets_open), (5, 5));
        assert!(matches!(
            s.role(3),
            Some(SprayRole::Attempt {
                attempt: 7,
                index: 2
            })
        ));
        s.end(NodeId(9), 7, won(0), Some(2), 5, &mut st);
        assert_eq!((st.spray_sockets_open, st.pinned_paths), (1, 1));
        // The kept socket carries the path, both for the task and the
        // application's sends, and what it reads is the main socket's.
        assert_eq!(
            s.pinned_socket(path(0))
                .unwrap()
                .local_addr()
                .unwrap()
                .port(),
            40_002
        );
        assert!(s.shared().socket_for(path(0)).is_some());
        assert!(s.pinned_socket(path(1)).is_none());
        assert_eq!(s.role(3), Some(SprayRole::Pinned));
        assert_eq!(s.role(1), None);
        // The train's last keep-alives from the kept socket still go out;
        // another socket of the ended attempt is not opened again.
        assert!(s.socket_for(7, 2, &mut st).is_some());
        assert!(s.socket_for(7, 3, &mut st).is_none());
        assert_eq!(st.spray_sockets_opened, 5);
    }

    #[test]
    fn a_failed_attempt_closes_everything() {
        let mut s = io(u32::MAX, SprayConfig::default());
        let mut st = DriverStats::default();
        for i in 0..3 {
            s.socket_for(1, i, &mut st);
        }
        s.end(NodeId(9), 1, SprayOutcome::Exhausted, None, 3, &mut st);
        // A keep without a success keeps nothing either.
        s.socket_for(2, 0, &mut st);
        s.end(
            NodeId(9),
            2,
            SprayOutcome::DeadlinePassed,
            Some(0),
            1,
            &mut st,
        );
        assert!(s.is_idle());
        assert_eq!((st.spray_sockets_open, st.pinned_paths), (0, 0));
        assert!(s.shared().socket_for(path(0)).is_none());
    }

    #[test]
    fn bind_failures_and_caps_skip_the_socket_and_go_on() {
        let caps = SprayConfig {
            sockets: 4,
            max_concurrent: 1,
            ..SprayConfig::default()
        };
        let mut s = io(3, caps);
        let mut st = DriverStats::default();
        let opened: Vec<bool> = (0..4)
            .map(|i| s.socket_for(1, i, &mut st).is_some())
            .collect();
        // The fourth bind fails (EMFILE): skipped, counted, no panic.
        assert_eq!(opened, [true, true, true, false]);
        // Beyond the attempt's sockets, and a second attempt at once.
        assert!(s.socket_for(1, 4, &mut st).is_none());
        assert!(s.socket_for(2, 0, &mut st).is_none());
        assert_eq!((st.spray_sockets_opened, st.spray_socket_failures), (3, 3));
        assert_eq!(st.spray_sockets_open, 3);
    }

    #[test]
    fn pins_are_one_per_peer_and_the_oldest_is_evicted() {
        let caps = SprayConfig {
            max_concurrent: 64,
            ..SprayConfig::default()
        };
        let mut s = io(u32::MAX, caps);
        let mut st = DriverStats::default();
        let n = u16::try_from(MAX_PINNED).unwrap() + 1;
        for i in 0..n {
            let attempt = u64::from(i) + 1;
            s.socket_for(attempt, 0, &mut st);
            s.end(NodeId(u64::from(i)), attempt, won(i), Some(0), 1, &mut st);
        }
        assert_eq!(st.pinned_paths, MAX_PINNED as u64);
        assert_eq!(st.pinned_evicted, 1);
        assert_eq!(st.spray_sockets_open, MAX_PINNED as u64);
        // The oldest path's socket is closed: its datagrams leave from the
        // main socket again.
        assert!(s.pinned_socket(path(0)).is_none());
        assert!(s.shared().socket_for(path(0)).is_none());
        assert!(s.pinned_socket(path(n - 1)).is_some());
        // A newer path to a peer replaces its old one.
        s.socket_for(100, 0, &mut st);
        s.end(NodeId(5), 100, won(500), Some(0), 1, &mut st);
        assert!(s.pinned_socket(path(5)).is_none());
        assert!(s.pinned_socket(path(500)).is_some());
        assert_eq!(st.pinned_paths, MAX_PINNED as u64);
        assert_eq!(st.pinned_evicted, 1);
    }
}
