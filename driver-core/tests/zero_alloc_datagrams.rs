//! The driver's per-datagram path allocates nothing in steady state (issue
//! #12, item 4). Counted with a counting global allocator (dhat): a count,
//! unlike a time, is deterministic and can be asserted.
//!
//! A real [`Node`] with its real task and a real [`SessionControl`] runs on a
//! test runtime: an in-memory socket, virtual time, and the node's task polled
//! by hand on this thread (every timer is a boxed future, as on tokio and
//! smol, so a timer re-armed per datagram would be counted). A
//! `natrix_session::Endpoint` plays the remote peer. After a warm-up of each
//! kind, each measured batch must make **0** heap allocations:
//!
//! * 10,000 keep-alives (a stranger's, which the agent counts and drops);
//! * 10,000 control messages: the peer's reflex request on its session
//!   (opened, acknowledged, handed to the agent), the agent's reflex response
//!   (sealed with reliable delivery, sent), and the peer's acknowledgement of
//!   it;
//! * 10,000 datagrams that are not natrix's, each delivered to the
//!   application with [`Node::recv_from_into`] (the application waits first,
//!   then the datagram arrives);
//! * 10,000 application datagrams on the peer's session (channel 16), each
//!   delivered with [`Node::recv_data_into`];
//! * 10,000 replays of a session packet, each dropped by the replay window
//!   and logged at trace level — with no subscriber, as by default, tracing
//!   allocates nothing either.
//!
//! Every batch also checks that it did what it claims (counters, the bytes
//! and sources the application got, the reflex answers the peer got), and a
//! probe checks that the counter does see an allocation, so 0 is not vacuous.
//!
//! This test is its own process (`harness = false`): the counter is global,
//! and a test harness's other threads allocating while it measures would be
//! counted too. Nothing here touches a real network.
#![allow(missing_docs)]

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant as StdInstant};

use natrix_driver_core::net::wire::CH_DATA;
use natrix_driver_core::{
    BoxFuture, Clock, Node, NodeConfig, Runtime, SessionControl, SessionControlConfig, UdpSocket,
};
use natrix_proto::wire::{Keepalive, NodeId, ReflexResponse};
use natrix_proto::{Channel, Instant};
use natrix_session::{Endpoint, Keypair, MAX_PACKET, Received, SessionConfig};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn allocations() -> u64 {
    dhat::HeapStats::get().total_blocks
}

const ROUNDS: usize = 10_000;
const WARM_UP: usize = 200;
/// Virtual time per round: 50,000 rounds stay well below the session layer's
/// shortest timer (a 100 ms retransmission), so no timer is due.
const TICK: Duration = Duration::from_micros(1);

fn node_addr() -> SocketAddr {
    "192.0.2.1:4000".parse().unwrap()
}
fn peer_addr() -> SocketAddr {
    "198.51.100.2:5000".parse().unwrap()
}
fn stranger_addr() -> SocketAddr {
    "203.0.113.3:6000".parse().unwrap()
}

// ------------------------------------------------------------ test runtime

const SLOT: usize = 1_500;

struct Packet {
    addr: SocketAddr,
    len: usize,
    bytes: [u8; SLOT],
}

struct Net {
    inbound: VecDeque<Packet>,
    outbound: VecDeque<Packet>,
}

fn push(q: &mut VecDeque<Packet>, addr: SocketAddr, bytes: &[u8]) {
    assert!(q.len() < q.capacity(), "test queue would grow");
    let mut p = Packet {
        addr,
        len: bytes.len(),
        bytes: [0; SLOT],
    };
    p.bytes[..bytes.len()].copy_from_slice(bytes);
    q.push_back(p);
}

/// The node task's waker: records that the task asked to be polled again
/// (it yields to the runtime every so many inputs).
struct Woken(AtomicBool);

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
}

struct World {
    origin: StdInstant,
    woken: Arc<Woken>,
    waker: Waker,
    elapsed_ns: AtomicU64,
    net: Mutex<Net>,
    task: Mutex<Option<BoxFuture>>,
    timers_armed: AtomicU64,
}

#[derive(Clone)]
struct TestRt(Arc<World>);

impl TestRt {
    fn new() -> Self {
        let woken = Arc::new(Woken(AtomicBool::new(false)));
        TestRt(Arc::new(World {
            origin: StdInstant::now(),
            waker: Waker::from(woken.clone()),
            woken,
            elapsed_ns: AtomicU64::new(0),
            net: Mutex::new(Net {
                inbound: VecDeque::with_capacity(64),
                outbound: VecDeque::with_capacity(64),
            }),
            task: Mutex::new(None),
            timers_armed: AtomicU64::new(0),
        }))
    }

    fn advance(&self, d: Duration) {
        self.0
            .elapsed_ns
            .fetch_add(u64::try_from(d.as_nanos()).unwrap(), Ordering::Relaxed);
    }

    /// Virtual time as the peer's `Instant`.
    fn instant(&self) -> Instant {
        Instant::from_nanos(self.0.elapsed_ns.load(Ordering::Relaxed))
    }

    /// Polls the node's task until it waits for input.
    fn turn(&self) {
        let mut task = self.0.task.lock().unwrap();
        let task = task.as_mut().expect("node task spawned");
        let mut cx = Context::from_waker(&self.0.waker);
        loop {
            self.0.woken.0.store(false, Ordering::Relaxed);
            assert!(task.as_mut().poll(&mut cx).is_pending(), "node task ended");
            if !self.0.woken.0.load(Ordering::Relaxed) {
                break;
            }
        }
    }

    fn inject(&self, from: SocketAddr, bytes: &[u8]) {
        push(&mut self.0.net.lock().unwrap().inbound, from, bytes);
    }

    fn take_sent(&self) -> Option<Packet> {
        self.0.net.lock().unwrap().outbound.pop_front()
    }
}

struct TestSocket(Arc<World>);

impl UdpSocket for TestSocket {
    fn poll_recv_from(
        &self,
        _cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        // Polled by hand: no waker to keep.
        match self.0.net.lock().unwrap().inbound.pop_front() {
            Some(p) => {
                buf[..p.len].copy_from_slice(&p.bytes[..p.len]);
                Poll::Ready(Ok((p.len, p.addr)))
            }
            None => Poll::Pending,
        }
    }

    fn poll_send_to(
        &self,
        _cx: &mut Context<'_>,
        buf: &[u8],
        target: SocketAddr,
    ) -> Poll<io::Result<usize>> {
        push(&mut self.0.net.lock().unwrap().outbound, target, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(node_addr())
    }
}

struct Sleep {
    world: Arc<World>,
    deadline: StdInstant,
}

impl Future for Sleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        if TestRt(self.world.clone()).now() >= self.deadline {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

struct TestTask;

impl Future for TestTask {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

impl Runtime for TestRt {
    type Socket = TestSocket;
    type Task = TestTask;

    fn bind(&self, _addr: SocketAddr) -> io::Result<TestSocket> {
        Ok(TestSocket(self.0.clone()))
    }

    fn sleep_until(&self, deadline: StdInstant) -> BoxFuture {
        self.0.timers_armed.fetch_add(1, Ordering::Relaxed);
        // A boxed future, as on the real runtimes: re-arming costs an allocation.
        Box::pin(Sleep {
            world: self.0.clone(),
            deadline,
        })
    }

    fn spawn(&self, task: BoxFuture) -> TestTask {
        *self.0.task.lock().unwrap() = Some(task);
        TestTask
    }

    fn now(&self) -> StdInstant {
        self.0.origin + Duration::from_nanos(self.0.elapsed_ns.load(Ordering::Relaxed))
    }
}

/// Polls `fut` once with a waker that does nothing.
fn poll_once<F: Future>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

// ------------------------------------------------------------ the setup

struct Setup {
    rt: TestRt,
    node: Node<TestRt>,
    peer: Endpoint,
    out: Vec<u8>,
    /// Reflex responses the peer received, all checked.
    reflex_answers: u64,
}

impl Setup {
    fn new() -> Self {
        let rt = TestRt::new();
        let node_kp = Keypair::from_secret([1; 32]);
        let node_key = node_kp.public();
        let control = SessionControl::new(node_kp, SessionControlConfig::default(), [3; 32]);
        let node = Node::spawn(
            rt.clone(),
            NodeConfig::for_key(&node_key, node_addr()),
            control,
        )
        .expect("spawn");
        let peer = Endpoint::new(
            Keypair::from_secret([2; 32]),
            SessionConfig::default(),
            [4; 32],
        );
        let mut s = Setup {
            rt,
            node,
            peer,
            out: vec![0; MAX_PACKET],
            reflex_answers: 0,
        };
        s.rt.turn();
        let now = s.rt.instant();
        s.peer
            .connect(now, Clock::wall_ms(), node_key, node_addr())
            .expect("dial");
        s.pump();
        assert!(s.peer.session(&node_key).is_some(), "session up");
        while s.peer.poll_event().is_some() {}
        s
    }

    fn node_key(&self) -> natrix_session::PublicKey {
        self.node.public_key().expect("a key")
    }

    /// Runs the node, carries its datagrams to the peer and the peer's back,
    /// until neither has anything to send.
    fn pump(&mut self) {
        loop {
            self.rt.turn();
            let mut moved = false;
            while let Some(p) = self.rt.take_sent() {
                moved = true;
                assert_eq!(p.addr, peer_addr(), "the node sends only to its peer");
                let now = self.rt.instant();
                if let Received::Data {
                    channel, payload, ..
                } =
                    self.peer
                        .handle_datagram(now, Clock::wall_ms(), node_addr(), &p.bytes[..p.len])
                {
                    if channel == Channel::ReflexResponse.wire_byte() {
                        // C5: the node echoes the session address it sees.
                        let r = ReflexResponse::decode(payload).expect("a reflex response");
                        assert_eq!(r.observed, peer_addr());
                        self.reflex_answers += 1;
                    }
                }
            }
            while let Some((to, n)) = self.peer.poll_transmit(&mut self.out) {
                moved = true;
                assert_eq!(to, node_addr());
                self.rt.inject(peer_addr(), &self.out[..n]);
            }
            if !moved {
                break;
            }
        }
    }

    fn keepalive(&mut self) {
        let k = Keepalive {
            sender: NodeId(77),
            punch_id: 9,
        }
        .to_bytes();
        self.rt.inject(stranger_addr(), &k);
        self.rt.turn();
        self.rt.advance(TICK);
    }

    fn control(&mut self) {
        let now = self.rt.instant();
        let key = self.node_key();
        self.peer
            .send_reliable(now, &key, Channel::ReflexRequest.wire_byte(), &[])
            .expect("sent");
        self.pump();
        self.rt.advance(TICK);
    }

    fn raw(&mut self, i: usize, datagram: &mut [u8], app_buf: &mut [u8]) {
        let len = 1 + i % datagram.len();
        datagram[0] = i as u8;
        let got = {
            let node = &self.node;
            let mut recv = pin!(node.recv_from_into(app_buf));
            // The application waits before the datagram arrives.
            assert!(poll_once(recv.as_mut()).is_pending());
            self.rt.inject(stranger_addr(), &datagram[..len]);
            self.rt.turn();
            poll_once(recv.as_mut())
        };
        let Poll::Ready(Ok((n, from))) = got else {
            panic!("datagram {i} not delivered");
        };
        assert_eq!((n, from), (len, stranger_addr()));
        assert_eq!(app_buf[..n], datagram[..len]);
        self.rt.advance(TICK);
    }

    fn data(&mut self, i: usize, payload: &mut [u8], app_buf: &mut [u8]) {
        let len = 1 + i % payload.len();
        payload[0] = i as u8;
        let now = self.rt.instant();
        let key = self.node_key();
        let (to, n) = self
            .peer
            .send(now, &key, CH_DATA, &payload[..len], &mut self.out)
            .expect("sealed")
            .expect("session up");
        assert_eq!(to, node_addr());
        self.rt.inject(peer_addr(), &self.out[..n]);
        let delivered = {
            let node = &self.node;
            let mut recv = pin!(node.recv_data_into(app_buf));
            assert!(poll_once(recv.as_mut()).is_pending());
            self.rt.turn();
            poll_once(recv.as_mut())
        };
        let Poll::Ready(Ok((from, got))) = delivered else {
            panic!("data {i} not delivered");
        };
        assert_eq!(from, self.peer.public_key());
        assert_eq!(app_buf[..got], payload[..len]);
        self.rt.advance(TICK);
    }

    /// Injects an old session packet again: a replay.
    fn replay(&mut self, old: &[u8]) {
        self.rt.inject(peer_addr(), old);
        self.rt.turn();
        self.rt.advance(TICK);
    }
}

/// Runs `batch` `WARM_UP` times, then `ROUNDS` times counted; returns the
/// allocations and timers armed during the counted rounds.
fn measure(s: &mut Setup, mut batch: impl FnMut(&mut Setup, usize)) -> (u64, u64) {
    for i in 0..WARM_UP {
        batch(s, i);
    }
    let timers = s.rt.0.timers_armed.load(Ordering::Relaxed);
    let before = allocations();
    for i in 0..ROUNDS {
        batch(s, i);
    }
    let allocs = allocations() - before;
    (allocs, s.rt.0.timers_armed.load(Ordering::Relaxed) - timers)
}

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let mut s = Setup::new();
    let mut datagram = vec![0xA5u8; 1_200];
    let mut payload = vec![0x5Au8; natrix_session::MAX_PAYLOAD];
    let mut app_buf = vec![0u8; 65_536];
    let rounds = ROUNDS as u64;
    let total = (WARM_UP + ROUNDS) as u64;

    let d0 = s.node.driver_stats();
    let k0 = s.node.stats().keepalives_dropped;
    let (keepalive_allocs, keepalive_timers) = measure(&mut s, |s, _| s.keepalive());
    let d1 = s.node.driver_stats();
    println!("keep-alives: {keepalive_allocs} allocations, {keepalive_timers} timers armed");

    let (control_allocs, control_timers) = measure(&mut s, |s, _| s.control());
    let d2 = s.node.driver_stats();
    println!(
        "control messages: {control_allocs} allocations, {control_timers} timers armed \
         ({} reflex answers)",
        s.reflex_answers
    );

    let (raw_allocs, raw_timers) = measure(&mut s, |s, i| s.raw(i, &mut datagram, &mut app_buf));
    let d3 = s.node.driver_stats();
    println!(
        "raw datagrams to the application: {raw_allocs} allocations, {raw_timers} timers armed"
    );

    let (data_allocs, data_timers) = measure(&mut s, |s, i| s.data(i, &mut payload, &mut app_buf));
    let d4 = s.node.driver_stats();
    println!(
        "session data to the application: {data_allocs} allocations, {data_timers} timers armed"
    );

    // A packet the node has opened already (the last one sealed).
    let n = s
        .peer
        .send(s.rt.instant(), &s.node_key(), CH_DATA, b"once", &mut s.out)
        .expect("sealed")
        .expect("session up")
        .1;
    let old = s.out[..n].to_vec();
    s.rt.inject(peer_addr(), &old);
    s.rt.turn();
    let replays0 = s.node.session_stats().expect("sessions").replays_dropped;
    let (replay_allocs, replay_timers) = measure(&mut s, |s, _| s.replay(&old));
    let replays = s.node.session_stats().expect("sessions").replays_dropped - replays0;
    println!("replayed session packets: {replay_allocs} allocations, {replay_timers} timers armed");

    // The counter does see allocations (so 0 is not vacuous).
    let probe = allocations();
    let v = std::hint::black_box(vec![1u8; 64]);
    assert_eq!(allocations() - probe, 1);
    drop(v);

    // Each batch did what it claims.
    assert_eq!(d1.keepalives - d0.keepalives, total);
    assert_eq!(s.node.stats().keepalives_dropped - k0, total);
    assert_eq!(s.reflex_answers, total);
    assert_eq!(d2.session_datagrams - d1.session_datagrams, 2 * total);
    assert_eq!(d3.app_datagrams - d2.app_datagrams, total);
    assert_eq!(d4.data_received - d3.data_received, total);
    assert_eq!(d4.app_datagrams_dropped + d4.data_dropped, 0);
    assert_eq!(replays, total);
    assert_eq!(s.node.driver_stats().data_received, d4.data_received + 1);
    let ss = s.node.session_stats().expect("sessions");
    assert_eq!(ss.reliable_retransmits, 0);
    assert!(rounds > 0);

    for (what, allocs, timers) in [
        ("keep-alives", keepalive_allocs, keepalive_timers),
        ("control messages", control_allocs, control_timers),
        ("raw datagrams", raw_allocs, raw_timers),
        ("session data", data_allocs, data_timers),
        ("replays", replay_allocs, replay_timers),
    ] {
        assert_eq!(timers, 0, "{what}: a timer armed in steady state");
        assert_eq!(allocs, 0, "{what}: steady state must not allocate");
    }
    println!("zero_alloc_datagrams: 5 x {ROUNDS} rounds, 0 allocations; 1 passed, 0 failed");
}
