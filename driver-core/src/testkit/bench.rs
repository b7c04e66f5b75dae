//! The datagram benchmark behind each driver's `examples/datagrams.rs`
//! (issue #12, item 4): datagrams a node handles per second through a real
//! UDP socket on 127.0.0.1, against a bare receive loop on the same runtime
//! in the same run.
//!
//! A sender thread blasts one kind of datagram from a std socket as fast as
//! it can, in turns at the node and at a bare socket; each turn is measured
//! over a fixed window after a short warm-up, and the turns alternate so that
//! both receivers see the same sender and the same machine. The kernel drops
//! what a receiver does not keep up with (loss on loopback under a blast is
//! expected); what is counted is what the receiver handled:
//!
//! * **keep-alives** — the agent's punch keep-alives (a stranger's, which it
//!   counts and drops): the node's [`DriverStats::keepalives`];
//! * **raw datagrams** — datagrams that are not natrix's, delivered to an
//!   application task that reads them with [`Node::recv_from_into`];
//! * **session data** — application data on a session (the sender runs a
//!   `natrix_session::Endpoint` that dialled the node), delivered with
//!   [`Node::recv_data_into`]; the bare loop receives the same sealed
//!   packets without opening them, so this ratio includes the
//!   ChaCha20-Poly1305 work the bare loop does not do.
//!
//! The bare receive loop is `UdpSocket::poll_recv_from` on the runtime's own
//! socket type ([`Runtime::bind`]), in a task spawned on the same runtime.
//! Only 127.0.0.1 is ever sent to.
//!
//! On loopback the kernel charges the delivery of a datagram to the sending
//! thread, so a sender calling `send_to` per datagram is no faster than the
//! receiver it measures; so the sender hands the kernel up to 64 datagrams
//! per call (UDP GSO through `quinn-udp`, where the kernel offers it) and
//! outpaces both receivers.
//!
//! Each turn reports two rates: datagrams per second of wall time under the
//! blast, and datagrams per second of the receiving side's CPU time (the
//! process's CPU time less the sender thread's, from `/proc` on Linux) —
//! what one core would handle, which depends less on how the scheduler
//! shares the two cores of a small machine between sender and receiver.
//!
//! Environment variables: `NATRIX_BENCH_QUICK=1` (or the argument `--quick`
//! or `--test`) for a short run; `NATRIX_BENCH_ONLY=text` to run only the
//! workloads whose label contains it; `NATRIX_BENCH_TURNS=1` to print every
//! turn; `NATRIX_BENCH_NO_BARE=1` to measure the node alone (for profiling).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant as StdInstant};

use futures_lite::future::poll_fn;
use natrix_proto::Instant;
use natrix_proto::wire::{Keepalive, NodeId};
use natrix_session::{Endpoint, Keypair, PublicKey, SessionConfig};

use super::sleep;
use crate::clock::Clock;
use crate::net::wire::CH_DATA;
use crate::net::{SessionControl, SessionControlConfig};
use crate::node::{DriverStats, Node, NodeConfig};
use crate::runtime::{Runtime, UdpSocket};

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// What the sender blasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Workload {
    /// 14-byte punch keep-alives from a stranger.
    Keepalives,
    /// Datagrams that are not natrix's, of this many bytes.
    Raw(usize),
    /// Application data of this many bytes on a session.
    SessionData(usize),
}

impl Workload {
    /// A short name for tables.
    #[must_use]
    pub fn label(&self) -> String {
        match self {
            Workload::Keepalives => "keep-alives (14 B)".into(),
            Workload::Raw(n) => format!("raw datagrams ({n} B)"),
            Workload::SessionData(n) => format!("session data ({n} B payload)"),
        }
    }
}

/// How long to measure.
#[derive(Clone, Copy, Debug)]
pub struct BenchPlan {
    /// Each measured turn.
    pub window: Duration,
    /// Turns per receiver (alternating bare, natrix, bare, natrix, …).
    pub rounds: usize,
    /// Blasting before each turn's window opens.
    pub warm_up: Duration,
}

impl BenchPlan {
    /// The full run: 2 s windows, 3 turns each.
    #[must_use]
    pub fn full() -> Self {
        BenchPlan {
            window: Duration::from_secs(2),
            rounds: 3,
            warm_up: Duration::from_millis(200),
        }
    }

    /// A quick run for CI: 200 ms windows, one turn each.
    #[must_use]
    pub fn quick() -> Self {
        BenchPlan {
            window: Duration::from_millis(200),
            rounds: 1,
            warm_up: Duration::from_millis(50),
        }
    }
}

/// One measured turn of one receiver.
#[derive(Clone, Copy, Debug, Default)]
pub struct Turn {
    /// Datagrams handled (or delivered) per second of wall time.
    pub per_sec: f64,
    /// Datagrams the sender sent per second meanwhile.
    pub sent_per_sec: f64,
    /// Datagrams handled per second of the receiving side's CPU time (every
    /// thread but the sender's: what one core would handle); `None` without
    /// Linux's `/proc`.
    pub per_cpu_sec: Option<f64>,
}

/// One workload's result.
#[derive(Clone, Debug)]
pub struct DatagramRates {
    /// What was sent.
    pub workload: Workload,
    /// The node's turns.
    pub natrix: Vec<Turn>,
    /// The bare loop's turns.
    pub bare: Vec<Turn>,
    /// The node's counters at the end (queues' drops included).
    pub driver: DriverStats,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

impl DatagramRates {
    /// The node's datagrams per second, median over turns.
    #[must_use]
    pub fn natrix_per_sec(&self) -> f64 {
        median(self.natrix.iter().map(|t| t.per_sec).collect())
    }

    /// The bare loop's datagrams per second, median over turns.
    #[must_use]
    pub fn bare_per_sec(&self) -> f64 {
        median(self.bare.iter().map(|t| t.per_sec).collect())
    }

    /// The node's datagrams per CPU second, median over turns.
    #[must_use]
    pub fn natrix_per_cpu_sec(&self) -> Option<f64> {
        let v: Option<Vec<f64>> = self.natrix.iter().map(|t| t.per_cpu_sec).collect();
        v.map(median)
    }

    /// The bare loop's datagrams per CPU second, median over turns.
    #[must_use]
    pub fn bare_per_cpu_sec(&self) -> Option<f64> {
        let v: Option<Vec<f64>> = self.bare.iter().map(|t| t.per_cpu_sec).collect();
        v.map(median)
    }

    /// natrix ÷ bare, datagrams per second.
    #[must_use]
    pub fn ratio(&self) -> f64 {
        ratio(self.natrix_per_sec(), self.bare_per_sec())
    }

    /// natrix ÷ bare, datagrams per CPU second.
    #[must_use]
    pub fn cpu_ratio(&self) -> Option<f64> {
        Some(ratio(self.natrix_per_cpu_sec()?, self.bare_per_cpu_sec()?))
    }
}

/// User + system CPU seconds in a `/proc/…/stat` file (Linux; `None`
/// elsewhere). Clock ticks are taken as 100 per second (`USER_HZ` on every
/// mainstream Linux configuration).
fn cpu_secs(stat: &str) -> Option<f64> {
    let text = std::fs::read_to_string(stat).ok()?;
    // Fields after the command name's closing parenthesis, from field 3
    // (state) on; utime and stime are fields 14 and 15.
    let rest = text.get(text.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// The blasting thread. `target` is a port on 127.0.0.1, 0 to pause.
struct Sender {
    target: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    ready: Arc<AtomicBool>,
    /// The sender thread's `/proc` stat file, when there is one.
    stat: Arc<std::sync::Mutex<Option<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl Sender {
    fn start(workload: Workload, session: Option<(PublicKey, SocketAddr)>) -> Self {
        let target = Arc::new(AtomicU16::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let (t, s, n, r) = (target.clone(), stop.clone(), sent.clone(), ready.clone());
        let stat = Arc::new(std::sync::Mutex::new(None));
        let my_stat = stat.clone();
        let thread = std::thread::spawn(move || {
            if let Ok(task) = std::fs::read_link("/proc/thread-self") {
                *my_stat
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(format!("/proc/{}/stat", task.display()));
            }
            let socket = StdUdpSocket::bind((LOCALHOST, 0)).expect("bind the sender");
            let mut source = Datagrams::new(workload, &socket, session);
            let mut batch = Batch::new(&socket);
            r.store(true, Ordering::Release);
            while !s.load(Ordering::Relaxed) {
                let port = t.load(Ordering::Relaxed);
                if port == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                let to = SocketAddr::from((LOCALHOST, port));
                let count = batch.fill(&mut source);
                n.fetch_add(batch.send(&socket, to, count), Ordering::Relaxed);
            }
        });
        Sender {
            target,
            stop,
            sent,
            ready,
            stat,
            thread: Some(thread),
        }
    }

    /// CPU seconds of every thread of this process but the sender's.
    fn receiver_cpu(&self) -> Option<f64> {
        let path = self
            .stat
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()?;
        Some(cpu_secs("/proc/self/stat")? - cpu_secs(&path)?)
    }

    /// Waits (on the runtime, which may be the node's only thread) until the
    /// sender is ready to blast: its session with the node is up.
    async fn ready<R: Runtime>(&self, rt: &R) {
        let t0 = StdInstant::now();
        while !self.ready.load(Ordering::Acquire) {
            assert!(
                self.thread.as_ref().is_some_and(|t| !t.is_finished()),
                "the sender failed to start"
            );
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the sender did not start"
            );
            sleep(rt, Duration::from_millis(5)).await;
        }
    }

    fn aim(&self, port: u16) {
        self.target.store(port, Ordering::Relaxed);
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Most datagrams in one batch.
const BATCH: usize = 64;
/// Most bytes in one GSO send (one IP packet's worth).
const GSO_BYTES: usize = 65_000;

/// Datagrams of one length laid end to end, sent in one system call with UDP
/// GSO where the kernel allows, else one
/// `send_to` each.
struct Batch {
    bytes: Vec<u8>,
    len: usize,
    gso: Option<quinn_udp::UdpSocketState>,
}

impl Batch {
    fn new(socket: &StdUdpSocket) -> Self {
        let _ = socket;
        Batch {
            bytes: Vec::with_capacity(BATCH * natrix_session::MAX_PACKET),
            len: 0,
            gso: quinn_udp::UdpSocketState::new(socket.into())
                .ok()
                .filter(|s| s.max_gso_segments() > 1),
        }
    }

    fn max_segments(&self) -> usize {
        if let Some(g) = &self.gso {
            return g.max_gso_segments().min(BATCH);
        }
        BATCH
    }

    /// Fills the batch; returns how many datagrams it holds.
    fn fill(&mut self, source: &mut Datagrams) -> usize {
        self.bytes.clear();
        self.len = 0;
        let mut count = 0;
        let mut max = self.max_segments();
        while count < max {
            let d = source.next();
            if d.is_empty() {
                break;
            }
            if count == 0 {
                self.len = d.len();
                max = max.min((GSO_BYTES / self.len).max(1));
            } else if d.len() != self.len {
                break;
            }
            self.bytes.extend_from_slice(d);
            count += 1;
        }
        count
    }

    /// Sends the batch; returns how many datagrams left.
    fn send(&self, socket: &StdUdpSocket, to: SocketAddr, count: usize) -> u64 {
        if count == 0 {
            return 0;
        }
        if let Some(g) = &self.gso {
            let t = quinn_udp::Transmit {
                destination: to,
                ecn: None,
                contents: &self.bytes,
                segment_size: (count > 1).then_some(self.len),
                src_ip: None,
            };
            return if g.try_send(socket.into(), &t).is_ok() {
                count as u64
            } else {
                0
            };
        }
        self.bytes
            .chunks(self.len)
            .filter(|d| socket.send_to(d, to).is_ok())
            .count() as u64
    }
}

/// What the sender sends: fixed bytes, or fresh session packets.
struct Datagrams {
    fixed: Vec<u8>,
    session: Option<(Endpoint, PublicKey, StdInstant)>,
    payload: Vec<u8>,
    out: Vec<u8>,
    len: usize,
}

impl Datagrams {
    fn new(workload: Workload, socket: &StdUdpSocket, to: Option<(PublicKey, SocketAddr)>) -> Self {
        let fixed = match workload {
            Workload::Keepalives => Keepalive {
                sender: NodeId(0xbe7c),
                punch_id: 1,
            }
            .to_bytes()
            .to_vec(),
            // Not a keep-alive, not a session packet: the application's.
            Workload::Raw(n) => vec![0x42; n],
            Workload::SessionData(_) => Vec::new(),
        };
        let mut d = Datagrams {
            fixed,
            session: None,
            payload: match workload {
                Workload::SessionData(n) => vec![0x5a; n],
                _ => Vec::new(),
            },
            out: vec![0; natrix_session::MAX_PACKET],
            len: 0,
        };
        if let (Workload::SessionData(_), Some((key, addr))) = (workload, to) {
            d.session = Some((dial(socket, key, addr), key, StdInstant::now()));
        }
        d
    }

    fn next(&mut self) -> &[u8] {
        let Some((endpoint, key, t0)) = self.session.as_mut() else {
            return &self.fixed;
        };
        let now = Instant::from_nanos(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(0));
        self.len = match endpoint.send(now, key, CH_DATA, &self.payload, &mut self.out) {
            Ok(Some((_, n))) => n,
            _ => 0,
        };
        self.out.get(..self.len).unwrap_or(&[])
    }
}

/// A session from the sender's socket to the node: a Noise IK handshake over
/// real datagrams.
fn dial(socket: &StdUdpSocket, key: PublicKey, addr: SocketAddr) -> Endpoint {
    let t0 = StdInstant::now();
    let now = || Instant::from_nanos(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(0));
    let mut endpoint = Endpoint::new(
        Keypair::from_secret([0x5e; 32]),
        SessionConfig::default(),
        crate::os_seed(),
    );
    endpoint
        .connect(now(), Clock::wall_ms(), key, addr)
        .expect("dial the node");
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let mut buf = vec![0u8; 65_536];
    while endpoint.session(&key).is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no session with the node"
        );
        while let Some((to, n)) = endpoint.poll_transmit(&mut buf) {
            let _ = socket.send_to(&buf[..n], to);
        }
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = endpoint.handle_datagram(now(), Clock::wall_ms(), from, &buf[..n]);
        }
        endpoint.handle_timeout(now(), Clock::wall_ms());
    }
    while let Some((to, n)) = endpoint.poll_transmit(&mut buf) {
        let _ = socket.send_to(&buf[..n], to);
    }
    endpoint
}

/// One measured turn: the sender aimed at `port`, the receiver's progress
/// read with `count`.
async fn turn<R: Runtime>(
    rt: &R,
    sender: &Sender,
    port: u16,
    plan: BenchPlan,
    count: &dyn Fn() -> u64,
) -> Turn {
    sender.aim(port);
    sleep(rt, plan.warm_up).await;
    let (c0, s0, cpu0) = (
        count(),
        sender.sent.load(Ordering::Relaxed),
        sender.receiver_cpu(),
    );
    let t0 = StdInstant::now();
    sleep(rt, plan.window).await;
    let (c1, s1, cpu1) = (
        count(),
        sender.sent.load(Ordering::Relaxed),
        sender.receiver_cpu(),
    );
    let secs = t0.elapsed().as_secs_f64();
    sender.aim(0);
    // Let the receiver drain its socket before the next turn.
    sleep(rt, Duration::from_millis(50)).await;
    let handled = (c1 - c0) as f64;
    Turn {
        per_sec: handled / secs,
        sent_per_sec: (s1 - s0) as f64 / secs,
        per_cpu_sec: match (cpu0, cpu1) {
            (Some(a), Some(b)) if b > a => Some(handled / (b - a)),
            _ => None,
        },
    }
}

/// Runs one workload: a node and a bare socket on `rt`, the sender aimed at
/// each in turn.
pub async fn datagram_rates<R: Runtime>(
    rt: R,
    workload: Workload,
    plan: BenchPlan,
) -> DatagramRates {
    let kp = Keypair::from_secret([0x4e; 32]);
    let key = kp.public();
    let control = SessionControl::new(kp, SessionControlConfig::default(), crate::os_seed());
    let node = Arc::new(
        Node::spawn(
            rt.clone(),
            NodeConfig::for_key(&key, SocketAddr::from((LOCALHOST, 0))),
            control,
        )
        .expect("bind the node"),
    );
    let node_port = node.local_addr().port();

    // The application: reads what reaches it, as fast as it can.
    let delivered = Arc::new(AtomicU64::new(0));
    let app = {
        let (node, delivered) = (node.clone(), delivered.clone());
        rt.spawn(Box::pin(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let got = match workload {
                    Workload::SessionData(_) => node.recv_data_into(&mut buf).await.map(|_| ()),
                    _ => node.recv_from_into(&mut buf).await.map(|_| ()),
                };
                if got.is_err() {
                    break;
                }
                delivered.fetch_add(1, Ordering::Relaxed);
            }
        }))
    };
    let natrix_count = || match workload {
        Workload::Keepalives => node.driver_stats().keepalives,
        _ => delivered.load(Ordering::Relaxed),
    };

    // The bare loop: the runtime's socket, received from and counted.
    let bare = Arc::new(rt.bind(SocketAddr::from((LOCALHOST, 0))).expect("bind"));
    let bare_port = bare.local_addr().expect("addr").port();
    let bare_count = Arc::new(AtomicU64::new(0));
    let bare_stop = Arc::new(AtomicBool::new(false));
    let bare_task = {
        let (bare, count, stop) = (bare.clone(), bare_count.clone(), bare_stop.clone());
        rt.spawn(Box::pin(async move {
            let mut buf = vec![0u8; 65_536];
            while !stop.load(Ordering::Relaxed) {
                if poll_fn(|cx| bare.poll_recv_from(cx, &mut buf))
                    .await
                    .is_ok()
                {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }))
    };

    let sender = Sender::start(
        workload,
        Some((key, SocketAddr::from((LOCALHOST, node_port)))),
    );
    sender.ready(&rt).await;
    let (mut natrix_turns, mut bare_turns) = (Vec::new(), Vec::new());
    let bare_counter = || bare_count.load(Ordering::Relaxed);
    for _ in 0..plan.rounds {
        // NATRIX_BENCH_NO_BARE=1 (for profiling) measures the node alone.
        let b = if std::env::var("NATRIX_BENCH_NO_BARE").is_ok_and(|v| v == "1") {
            Turn::default()
        } else {
            turn(&rt, &sender, bare_port, plan, &bare_counter).await
        };
        let n = turn(&rt, &sender, node_port, plan, &natrix_count).await;
        if std::env::var("NATRIX_BENCH_TURNS").is_ok_and(|v| v == "1") {
            println!("      turn: natrix {n:?}\n            bare   {b:?}");
        }
        natrix_turns.push(n);
        bare_turns.push(b);
    }
    drop(sender);

    // Stop the loops: the node's shutdown ends the application's reads; a
    // last datagram wakes the bare loop to see its stop flag.
    node.shutdown().await;
    app.await;
    bare_stop.store(true, Ordering::Relaxed);
    let poke = StdUdpSocket::bind((LOCALHOST, 0)).expect("bind");
    let _ = poke.send_to(b"stop", (LOCALHOST, bare_port));
    bare_task.await;

    DatagramRates {
        workload,
        natrix: natrix_turns,
        bare: bare_turns,
        driver: node.driver_stats(),
    }
}

/// The workloads the examples run: all four, or those whose label contains
/// the environment variable `NATRIX_BENCH_ONLY` (`keep`, `raw`, `1200`, …).
#[must_use]
pub fn workloads() -> Vec<Workload> {
    let only = std::env::var("NATRIX_BENCH_ONLY").unwrap_or_default();
    [
        Workload::Keepalives,
        Workload::Raw(64),
        Workload::Raw(1200),
        Workload::SessionData(1200),
    ]
    .into_iter()
    .filter(|w| w.label().contains(only.as_str()))
    .collect()
}

/// Parses the examples' arguments: `--quick` or `--test` (what `cargo bench
/// -- --test` passes) selects [`BenchPlan::quick`], as does the environment
/// variable `NATRIX_BENCH_QUICK=1`.
#[must_use]
pub fn plan_from_args() -> BenchPlan {
    let quick = std::env::args().any(|a| a == "--quick" || a == "--test")
        || std::env::var("NATRIX_BENCH_QUICK").is_ok_and(|v| v == "1");
    if quick {
        BenchPlan::quick()
    } else {
        BenchPlan::full()
    }
}

/// Prints one runtime's table and returns whether every workload reached
/// the node (a run that delivered nothing is broken, whatever its speed).
pub fn print_table(runtime: &str, plan: BenchPlan, rates: &[DatagramRates]) -> bool {
    println!(
        "{runtime}: datagrams through a UDP socket on 127.0.0.1, medians of {} \
         alternating turns of {:?}",
        plan.rounds, plan.window
    );
    println!(
        "  {:<30} {:>10} {:>10} {:>6} | {:>10} {:>10} {:>6} | {:>10}",
        "workload", "natrix/s", "bare/s", "ratio", "natrix/cpu", "bare/cpu", "ratio", "sent/s"
    );
    let fmt = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.0}"));
    let mut ok = true;
    for r in rates {
        let sent = median(r.natrix.iter().map(|t| t.sent_per_sec).collect());
        println!(
            "  {:<30} {:>10.0} {:>10.0} {:>5.2}x | {:>10} {:>10} {:>6} | {:>10.0}",
            r.workload.label(),
            r.natrix_per_sec(),
            r.bare_per_sec(),
            r.ratio(),
            fmt(r.natrix_per_cpu_sec()),
            fmt(r.bare_per_cpu_sec()),
            r.cpu_ratio()
                .map_or_else(|| "n/a".to_string(), |v| format!("{v:.2}x")),
            sent,
        );
        ok &= r.natrix_per_sec() > 0.0 && r.bare_per_sec() > 0.0;
    }
    println!(
        "  (/s: per second of wall time under the blast; /cpu: per second of the \
         receiving side's CPU time, i.e. what one core handles)"
    );
    ok
}
