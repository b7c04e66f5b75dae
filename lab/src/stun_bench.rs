//! `natrix-lab stun-bench`: STUN Binding answers per second through a natrix
//! coordinator on one core, against coturn's `turnserver` on the same core,
//! with the same load generator, in the same run (issue #17; the numbers go
//! to `docs/performance.md`).
//!
//! No namespaces and no root: everything is on loopback (127.0.0.1). Each
//! server runs under `taskset -c 0`; the generator pins itself (its one
//! thread, the main thread) to CPU 1 with `taskset -p`.
//!
//! The generator is a closed loop: [`Plan::sockets`] source sockets, each
//! with a window of [`Plan::window`] outstanding Binding requests (20 bytes,
//! no attributes, written by `natrix_stun::codec::encode_request`); every
//! answer is decoded with `natrix_stun::codec::decode` and must be a success
//! whose mapped address is the socket it came to, for a transaction that
//! socket has outstanding; each matched answer is replaced by a new request.
//! Requests go out in one UDP GSO `sendmsg` per socket and refill, answers
//! come in with `recvmmsg` (both through `quinn-udp`), so the generator
//! spends few system calls per answer. A request unanswered after
//! [`LOSS_TIMEOUT`] is counted lost and replaced.
//!
//! The servers are started once and take turns: each turn is a warm-up, then
//! [`Plan::seconds`] of counting, then a short drain; the order of the
//! servers alternates between rounds. For every turn the servers' CPU time
//! (every thread's, from `/proc/PID/task/*/schedstat`) is recorded too, so
//! that a rate per CPU-second can be given next to the wall-clock rate.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use natrix_stun::codec::{self, BindingRequest, HEADER_LEN, Message};
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};

use crate::{LabError, Result};

/// The CPU the servers run on.
pub const SERVER_CPU: usize = 0;
/// The CPU the generator runs on.
pub const GENERATOR_CPU: usize = 1;
/// A request unanswered for this long is lost (and replaced).
pub const LOSS_TIMEOUT: Duration = Duration::from_millis(200);
/// The size of every request (a bare Binding request: the header only).
pub const REQUEST_LEN: usize = HEADER_LEN;
/// Datagrams per `recvmmsg`.
const RECV_SLOTS: usize = 32;
/// Bytes per receive slot.
const SLOT_BYTES: usize = 2048;

/// How long and how hard the benchmark runs.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Seconds counted per turn.
    pub seconds: f64,
    /// Seconds of warm-up before each turn's count.
    pub warmup: f64,
    /// Rounds (each server takes one turn per round).
    pub rounds: usize,
    /// Source sockets.
    pub sockets: usize,
    /// Outstanding requests per socket.
    pub window: usize,
}

impl Plan {
    /// The full plan (`seconds` per turn, 5 by default; 3 rounds), or with
    /// `quick` one short round that only proves it runs.
    #[must_use]
    pub fn new(seconds: Option<f64>, quick: bool) -> Self {
        Plan {
            seconds: seconds.unwrap_or(if quick { 0.5 } else { 5.0 }),
            warmup: if quick { 0.2 } else { 1.0 },
            rounds: if quick { 1 } else { 3 },
            sockets: 16,
            window: 8,
        }
    }
}

/// A server under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `natrix coordinator`.
    Natrix,
    /// `turnserver -S`, as it answers by default.
    Coturn,
    /// `turnserver -S` answering with XOR-MAPPED-ADDRESS only (no SOFTWARE,
    /// no MAPPED-ADDRESS, no RESPONSE-ORIGIN): the same answer size as
    /// natrix's.
    CoturnLean,
}

impl Kind {
    /// Its name in the tables.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Kind::Natrix => "natrix",
            Kind::Coturn => "coturn",
            Kind::CoturnLean => "coturn (lean answer)",
        }
    }
}

/// A running server: killed and reaped when dropped.
#[derive(Debug)]
struct Server {
    kind: Kind,
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    args: Vec<String>,
    /// The first answer's size and attribute types.
    answer: (usize, Vec<u16>),
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One turn of one server.
#[derive(Clone, Debug)]
pub struct Turn {
    /// The server.
    pub kind: Kind,
    /// The round.
    pub round: usize,
    /// Matched, valid answers in the counted window.
    pub answers: u64,
    /// The counted window's length.
    pub seconds: f64,
    /// The server's CPU time (every thread) in the counted window.
    pub server_cpu: f64,
    /// The generator thread's CPU time in the counted window.
    pub generator_cpu: f64,
    /// Requests sent in the counted window.
    pub sent: u64,
    /// Requests counted lost in the whole turn.
    pub lost: u64,
    /// Answers that did not decode as a success with the right mapped
    /// address, in the whole turn.
    pub bad: u64,
    /// Valid answers for no outstanding transaction (late after being
    /// counted lost, or duplicated), in the whole turn.
    pub unmatched: u64,
}

impl Turn {
    /// Answers per second.
    #[must_use]
    pub fn rate(&self) -> f64 {
        self.answers as f64 / self.seconds.max(1e-9)
    }

    /// Answers per second of the server's CPU time.
    #[must_use]
    pub fn rate_per_cpu(&self) -> f64 {
        self.answers as f64 / self.server_cpu.max(1e-9)
    }
}

/// What a benchmark run found.
#[derive(Debug)]
pub struct Report {
    /// Every turn, in order.
    pub turns: Vec<Turn>,
    /// The text report (markdown).
    pub text: String,
    /// Whether every answer was right and every server answered.
    pub ok: bool,
}

/// Runs the benchmark: `natrix` is the natrix binary, `dir` gets the
/// servers' logs and natrix's key.
///
/// # Errors
/// A server cannot be started or does not answer, a socket cannot be bound.
pub fn run(natrix: &Path, dir: &Path, plan: &Plan) -> Result<Report> {
    std::fs::create_dir_all(dir)
        .map_err(|e| LabError::Setup(format!("cannot create {}: {e}", dir.display())))?;
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let pinned = cpus > GENERATOR_CPU;
    if pinned {
        // The main thread is the generator; later threads (none) would
        // inherit this. The servers set their own affinity with taskset.
        let out = Command::new("taskset")
            .args([
                "-c",
                "-p",
                &GENERATOR_CPU.to_string(),
                &std::process::id().to_string(),
            ])
            .stdout(Stdio::null())
            .output()
            .map_err(|e| LabError::Setup(format!("taskset: {e}")))?;
        if !out.status.success() {
            return Err(LabError::Command {
                command: "taskset -c -p".into(),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
    } else {
        eprintln!("stun-bench: only {cpus} CPU(s): the generator is not pinned");
    }
    let kinds = [Kind::Natrix, Kind::Coturn, Kind::CoturnLean];
    let mut servers = Vec::new();
    for kind in kinds {
        servers.push(start(kind, natrix, dir)?);
    }
    for s in &servers {
        eprintln!(
            "{}: {} on {} answers a {REQUEST_LEN}-byte request with {} bytes ({})",
            s.kind.name(),
            s.args.join(" "),
            s.addr,
            s.answer.0,
            attribute_names(&s.answer.1)
        );
    }
    let mut turns = Vec::new();
    let mut tag: u16 = 0;
    for round in 0..plan.rounds {
        let order: Vec<&Server> = if round % 2 == 0 {
            servers.iter().collect()
        } else {
            servers.iter().rev().collect()
        };
        for s in order {
            tag = tag.wrapping_add(1);
            let t = drive(s, round, tag, plan)?;
            eprintln!(
                "round {} {}: {:.0} answers/s ({} in {:.2} s), server CPU {:.2} s ({:.0}/CPU-s), generator CPU {:.2} s, lost {}, bad {}, unmatched {}",
                round + 1,
                s.kind.name(),
                t.rate(),
                t.answers,
                t.seconds,
                t.server_cpu,
                t.rate_per_cpu(),
                t.generator_cpu,
                t.lost,
                t.bad,
                t.unmatched
            );
            turns.push(t);
        }
    }
    let ok = turns.iter().all(|t| t.bad == 0 && t.answers > 0);
    let text = render(&servers, &turns, plan, cpus, pinned);
    Ok(Report { turns, text, ok })
}

/// A free UDP port on 127.0.0.1 (bound and released: a race is possible
/// but unlikely, and the server would then fail to start).
fn free_port() -> Result<u16> {
    let s = UdpSocket::bind("127.0.0.1:0")
        .map_err(|e| LabError::Setup(format!("cannot bind a probe socket: {e}")))?;
    s.local_addr()
        .map(|a| a.port())
        .map_err(|e| LabError::Setup(format!("local_addr: {e}")))
}

/// Starts `kind` on a free port pinned to [`SERVER_CPU`], and waits until it
/// answers.
fn start(kind: Kind, natrix: &Path, dir: &Path) -> Result<Server> {
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (program, args): (String, Vec<String>) = match kind {
        Kind::Natrix => (
            natrix.to_string_lossy().into_owned(),
            vec![
                "coordinator".into(),
                "--listen".into(),
                addr.to_string(),
                "--stun-rate".into(),
                "100000000".into(),
                "--key".into(),
                dir.join("coordinator.key").to_string_lossy().into_owned(),
            ],
        ),
        Kind::Coturn | Kind::CoturnLean => {
            let mut a: Vec<String> = [
                "-n",
                "-S",
                "--listening-ip",
                "127.0.0.1",
                "--listening-port",
                &port.to_string(),
                "--no-cli",
                "--no-tls",
                "--no-dtls",
                "--no-tcp",
                "-m",
                "0",
                "-l",
                "stdout",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            // Its pid file and database in `dir`, not the system's (the
            // lab may run a turnserver of its own at the same time).
            let name = if kind == Kind::Coturn {
                "coturn"
            } else {
                "coturn-lean"
            };
            for (flag, file) in [("--pidfile", "pid"), ("--db", "db")] {
                a.push(flag.into());
                a.push(
                    dir.join(format!("{name}.{file}"))
                        .to_string_lossy()
                        .into_owned(),
                );
            }
            if kind == Kind::CoturnLean {
                a.extend(
                    [
                        "--no-software-attribute",
                        "--no-stun-backward-compatibility",
                        "--response-origin-only-with-rfc5780",
                    ]
                    .iter()
                    .map(|s| (*s).to_owned()),
                );
            }
            ("turnserver".into(), a)
        }
    };
    let file = match kind {
        Kind::Natrix => "natrix",
        Kind::Coturn => "coturn",
        Kind::CoturnLean => "coturn-lean",
    };
    let log = dir.join(format!("{file}.log"));
    let out = std::fs::File::create(&log)
        .map_err(|e| LabError::Setup(format!("cannot create {}: {e}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(|e| LabError::Setup(format!("{}: {e}", log.display())))?;
    let child = Command::new("taskset")
        .args(["-c", &SERVER_CPU.to_string(), &program])
        .args(&args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| LabError::Setup(format!("cannot start {program}: {e}")))?;
    let mut server = Server {
        kind,
        child,
        addr,
        log,
        args,
        answer: (0, Vec::new()),
    };
    server.answer = probe(&mut server)?;
    Ok(server)
}

/// Sends Binding requests to `server` until one is answered (10 s at
/// most); the answer's size and attribute types.
fn probe(server: &mut Server) -> Result<(usize, Vec<u16>)> {
    let fail = |server: &Server, what: String| {
        let log = std::fs::read_to_string(&server.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        LabError::Process {
            name: server.kind.name().into(),
            what,
            log: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        }
    };
    let sock = UdpSocket::bind("127.0.0.1:0")
        .map_err(|e| LabError::Setup(format!("cannot bind a probe socket: {e}")))?;
    let local = sock
        .local_addr()
        .map_err(|e| LabError::Setup(format!("local_addr: {e}")))?;
    let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
    let start = Instant::now();
    let mut buf = [0u8; SLOT_BYTES];
    let mut n: u64 = 0;
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(status)) = server.child.try_wait() {
            return Err(fail(server, format!("exited at start: {status}")));
        }
        n += 1;
        let mut req = [0u8; REQUEST_LEN];
        let tid = transaction(0xffff, 0xffff, n);
        let len = encode(&tid, &mut req);
        let _ = sock.send_to(req.get(..len).unwrap_or_default(), server.addr);
        let Ok((got, _)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let bytes = buf.get(..got).unwrap_or_default();
        return match codec::decode(bytes) {
            Ok(Message::Success(r)) if r.mapped == local && r.transaction == tid => {
                Ok((got, attribute_types(bytes)))
            }
            other => Err(fail(
                server,
                format!("answered {other:?} to a Binding request"),
            )),
        };
    }
    Err(fail(server, "no answer within 10 s".into()))
}

/// The transaction id of request `seq` of socket `index` in turn `tag`.
fn transaction(tag: u16, index: u16, seq: u64) -> [u8; 12] {
    let mut t = [0u8; 12];
    t[..2].copy_from_slice(&tag.to_be_bytes());
    t[2..4].copy_from_slice(&index.to_be_bytes());
    t[4..].copy_from_slice(&seq.to_be_bytes());
    t
}

/// A bare Binding request with `tid`, into `out`; its length.
fn encode(tid: &[u8; 12], out: &mut [u8]) -> usize {
    let req = BindingRequest {
        transaction: *tid,
        ..BindingRequest::default()
    };
    codec::encode_request(&req, out).unwrap_or(0)
}

/// The attribute types of a well-formed STUN message, in order.
fn attribute_types(msg: &[u8]) -> Vec<u16> {
    let mut types = Vec::new();
    let mut at = HEADER_LEN;
    while let Some(h) = msg.get(at..at + 4) {
        types.push(u16::from_be_bytes([h[0], h[1]]));
        let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        at += 4 + len.div_ceil(4) * 4;
    }
    types
}

/// Attribute type names for the report.
fn attribute_names(types: &[u16]) -> String {
    use codec::attr;
    types
        .iter()
        .map(|t| match *t {
            attr::XOR_MAPPED_ADDRESS => "XOR-MAPPED-ADDRESS".to_owned(),
            attr::MAPPED_ADDRESS => "MAPPED-ADDRESS".to_owned(),
            attr::RESPONSE_ORIGIN => "RESPONSE-ORIGIN".to_owned(),
            attr::OTHER_ADDRESS => "OTHER-ADDRESS".to_owned(),
            attr::SOFTWARE => "SOFTWARE".to_owned(),
            attr::FINGERPRINT => "FINGERPRINT".to_owned(),
            other => format!("{other:#06x}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// CPU time of every thread of `pid` (`/proc/PID/task/*/schedstat`), in
/// seconds; 0 when unreadable.
fn process_cpu(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .flatten()
        .map(|t| schedstat(&t.path().join("schedstat")))
        .sum()
}

/// The first field of a schedstat file (ns on CPU), in seconds.
fn schedstat(path: &Path) -> f64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

/// The calling thread's CPU time, in seconds.
fn own_cpu() -> f64 {
    schedstat(Path::new("/proc/thread-self/schedstat"))
}

/// One source socket of the generator.
struct Source {
    sock: UdpSocket,
    local: SocketAddr,
    index: u16,
    next_seq: u64,
    /// Outstanding requests (sequence, sent at), oldest first.
    pending: VecDeque<(u64, Instant)>,
}

/// Counters of a turn.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    answers: u64,
    sent: u64,
    lost: u64,
    bad: u64,
    unmatched: u64,
}

/// One turn of `server`: warm-up, count, drain.
fn drive(server: &Server, round: usize, tag: u16, plan: &Plan) -> Result<Turn> {
    let setup = |e: io::Error| LabError::Setup(format!("generator socket: {e}"));
    let mut sources = Vec::with_capacity(plan.sockets);
    let mut state: Option<UdpSocketState> = None;
    for i in 0..plan.sockets {
        let sock = UdpSocket::bind("127.0.0.1:0").map_err(setup)?;
        sock.set_nonblocking(true).map_err(setup)?;
        let st = UdpSocketState::new((&sock).into()).map_err(setup)?;
        state.get_or_insert(st);
        sources.push(Source {
            local: sock.local_addr().map_err(setup)?,
            sock,
            index: u16::try_from(i).unwrap_or(u16::MAX),
            next_seq: 0,
            pending: VecDeque::with_capacity(plan.window),
        });
    }
    let state = state.ok_or_else(|| LabError::Setup("no generator socket".into()))?;
    let gso = state.max_gso_segments() > 1;
    let mut slots = vec![0u8; RECV_SLOTS * SLOT_BYTES];
    let mut out = vec![0u8; plan.window * REQUEST_LEN];
    let mut counts = Counts::default();
    let began = Instant::now();
    let count_from = began + Duration::from_secs_f64(plan.warmup);
    let count_until = count_from + Duration::from_secs_f64(plan.seconds);
    let drain_until = count_until + Duration::from_millis(100);
    let mut at_start: Option<(Counts, f64, f64, Instant)> = None;
    let mut at_end: Option<(Counts, f64, f64, Instant)> = None;
    let mut last_loss_check = began;
    let pid = server.child.id();
    loop {
        let now = Instant::now();
        if at_start.is_none() && now >= count_from {
            at_start = Some((counts, process_cpu(pid), own_cpu(), Instant::now()));
        }
        if at_end.is_none() && now >= count_until {
            at_end = Some((counts, process_cpu(pid), own_cpu(), Instant::now()));
        }
        if now >= drain_until {
            break;
        }
        let sending = at_end.is_none();
        let check_losses = now.duration_since(last_loss_check) >= Duration::from_millis(5);
        if check_losses {
            last_loss_check = now;
        }
        for src in &mut sources {
            receive(&state, src, tag, &mut slots, &mut counts);
            if check_losses {
                while src
                    .pending
                    .front()
                    .is_some_and(|(_, at)| now.duration_since(*at) >= LOSS_TIMEOUT)
                {
                    src.pending.pop_front();
                    counts.lost += 1;
                }
            }
            if sending {
                counts.sent += refill(&state, gso, src, server.addr, tag, plan.window, &mut out);
            }
        }
    }
    let (Some((c0, s0, g0, t0)), Some((c1, s1, g1, t1))) = (at_start, at_end) else {
        return Err(LabError::Setup("the turn did not run its course".into()));
    };
    Ok(Turn {
        kind: server.kind,
        round,
        answers: c1.answers - c0.answers,
        seconds: t1.duration_since(t0).as_secs_f64(),
        server_cpu: s1 - s0,
        generator_cpu: g1 - g0,
        sent: c1.sent - c0.sent,
        lost: counts.lost,
        bad: counts.bad,
        unmatched: counts.unmatched,
    })
}

/// Reads every answer waiting on `src`, checking and matching each.
fn receive(state: &UdpSocketState, src: &mut Source, tag: u16, slots: &mut [u8], c: &mut Counts) {
    loop {
        let mut meta = [RecvMeta::default(); RECV_SLOTS];
        let n = {
            let mut chunks = slots.chunks_mut(SLOT_BYTES);
            let mut iov: [IoSliceMut<'_>; RECV_SLOTS] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
            match state.recv(UdpSockRef::from(&src.sock), &mut iov, &mut meta) {
                Ok(n) => n,
                Err(_) => return,
            }
        };
        for (slot, m) in slots.chunks(SLOT_BYTES).zip(&meta[..n]) {
            let data = slot.get(..m.len).unwrap_or_default();
            let stride = m.stride.max(1);
            for answer in data.chunks(stride) {
                check(src, tag, answer, c);
            }
        }
        if n < RECV_SLOTS {
            return;
        }
    }
}

/// Checks one answer: a success for `src`'s address; matched against its
/// outstanding requests.
fn check(src: &mut Source, tag: u16, answer: &[u8], c: &mut Counts) {
    let resp = match codec::decode(answer) {
        Ok(Message::Success(r)) if r.mapped == src.local => r,
        _ => {
            c.bad += 1;
            return;
        }
    };
    let t = resp.transaction;
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&t[4..]);
    let seq = u64::from_be_bytes(seq);
    if t[..2] != tag.to_be_bytes() || t[2..4] != src.index.to_be_bytes() {
        c.unmatched += 1;
        return;
    }
    let found = if src.pending.front().is_some_and(|(s, _)| *s == seq) {
        src.pending.pop_front();
        true
    } else if let Some(i) = src.pending.iter().position(|(s, _)| *s == seq) {
        src.pending.remove(i);
        true
    } else {
        false
    };
    if found {
        c.answers += 1;
    } else {
        c.unmatched += 1;
    }
}

/// Tops `src`'s window up: the missing requests in one GSO send (or one
/// `send_to` each); how many left.
fn refill(
    state: &UdpSocketState,
    gso: bool,
    src: &mut Source,
    to: SocketAddr,
    tag: u16,
    window: usize,
    out: &mut [u8],
) -> u64 {
    let need = window.saturating_sub(src.pending.len());
    if need == 0 {
        return 0;
    }
    let first = src.next_seq;
    for (k, chunk) in out.chunks_mut(REQUEST_LEN).take(need).enumerate() {
        encode(&transaction(tag, src.index, first + k as u64), chunk);
    }
    let bytes = out.get(..need * REQUEST_LEN).unwrap_or_default();
    let sent = if gso && need > 1 {
        let t = Transmit {
            destination: to,
            ecn: None,
            contents: bytes,
            segment_size: Some(REQUEST_LEN),
            src_ip: None,
        };
        if state.try_send(UdpSockRef::from(&src.sock), &t).is_ok() {
            need
        } else {
            0
        }
    } else {
        bytes
            .chunks(REQUEST_LEN)
            .take_while(|d| src.sock.send_to(d, to).is_ok())
            .count()
    };
    let now = Instant::now();
    for k in 0..sent {
        src.pending.push_back((first + k as u64, now));
    }
    src.next_seq += sent as u64;
    sent as u64
}

/// The median of `v` (the mean of the middle two for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The markdown report.
fn render(servers: &[Server], turns: &[Turn], plan: &Plan, cpus: usize, pinned: bool) -> String {
    let mut s = String::new();
    let cpu = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_owned())
            })
            .unwrap_or_else(|| "?".into())
    };
    let _ = writeln!(
        s,
        "## STUN Binding answers per second (natrix-lab stun-bench)\n\n\
         {} CPU(s) ({}); servers on CPU {SERVER_CPU} (`taskset -c {SERVER_CPU}`), generator {}; \
         {} sockets x {} outstanding requests of {REQUEST_LEN} bytes on 127.0.0.1; \
         {} s counted per turn after {} s of warm-up, {} round(s).\n",
        cpus,
        cpu("/proc/cpuinfo"),
        if pinned {
            format!("on CPU {GENERATOR_CPU}")
        } else {
            "not pinned".into()
        },
        plan.sockets,
        plan.window,
        plan.seconds,
        plan.warmup,
        plan.rounds
    );
    let _ = writeln!(
        s,
        "| server | command | answer | attributes |\n|---|---|---|---|"
    );
    for sv in servers {
        let _ = writeln!(
            s,
            "| {} | `{}` | {} B | {} |",
            sv.kind.name(),
            sv.args.join(" "),
            sv.answer.0,
            attribute_names(&sv.answer.1)
        );
    }
    let _ = writeln!(
        s,
        "\n| round | server | answers/s | server CPU (s) | answers per CPU-s | generator CPU (s) | lost | bad | unmatched |\n|---|---|---|---|---|---|---|---|---|"
    );
    for t in turns {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.2} | {:.0} | {:.2} | {} | {} | {} |",
            t.round + 1,
            t.kind.name(),
            t.rate(),
            t.server_cpu,
            t.rate_per_cpu(),
            t.generator_cpu,
            t.lost,
            t.bad,
            t.unmatched
        );
    }
    let med = |k: Kind, f: fn(&Turn) -> f64| {
        median(turns.iter().filter(|t| t.kind == k).map(f).collect())
    };
    let n = med(Kind::Natrix, Turn::rate);
    let n_cpu = med(Kind::Natrix, Turn::rate_per_cpu);
    let _ = writeln!(
        s,
        "\n| server | median answers/s | median per CPU-s | natrix / it (wall) | natrix / it (per CPU-s) |\n|---|---|---|---|---|"
    );
    for k in [Kind::Natrix, Kind::Coturn, Kind::CoturnLean] {
        let (r, c) = (med(k, Turn::rate), med(k, Turn::rate_per_cpu));
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.2}x | {:.2}x |",
            k.name(),
            r,
            c,
            n / r.max(1e-9),
            n_cpu / c.max(1e-9)
        );
    }
    let per_round: Vec<String> = (0..plan.rounds)
        .filter_map(|r| {
            let rate = |k: Kind| {
                turns
                    .iter()
                    .find(|t| t.kind == k && t.round == r)
                    .map(Turn::rate)
            };
            Some(format!(
                "{:.2}",
                rate(Kind::Natrix)? / rate(Kind::Coturn)?.max(1e-9)
            ))
        })
        .collect();
    let _ = writeln!(s, "\nnatrix / coturn per round: {}", per_round.join(" / "));
    s
}
