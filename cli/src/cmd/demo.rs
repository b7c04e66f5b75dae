//! `natrix demo`: a coordinator and pairs of peers in one process on
//! 127.0.0.1, over real UDP sockets and real sessions (no in-process hub).
//! Each peer sits behind an imitated NAT; every pair connects, starts on the
//! coordinator's relay, sends data both ways, and moves to the direct path
//! when its NATs allow one. Then a summary table and the simulator's matrix.
//!
//! # The imitated NATs
//!
//! On loopback there is no NAT, so each peer's socket layer gets a filter
//! (`NodeConfig::datagram_filter`) that sees every datagram the peer sends,
//! with its destination, and may drop it. A NAT filters *incoming*
//! datagrams; the filter sees *outgoing* ones. Both peers live in this
//! process, so the filter on the sending peer asks the receiving peer's
//! imitated NAT whether it would let the datagram in, and drops it on its
//! behalf. What each kind imitates:
//!
//! * **open**: no NAT, no firewall (a public address). Everything passes.
//! * **cone**: a port-restricted cone NAT, with the address it maps to
//!   equal to the peer's own (endpoint-independent mapping; natrix cannot
//!   tell the difference): a datagram from another peer gets in only after
//!   this peer has sent one to that peer's exact address (IP and port:
//!   address-and-port-dependent filtering). Every datagram a cone peer sends
//!   opens such a hole; in practice the first is a punch keep-alive (14
//!   bytes starting `PH`), and the demo says which one it was.
//! * **blocked**: a firewall that passes UDP to and from the coordinator
//!   only: every direct datagram from or to the peer is dropped. This is
//!   also what a symmetric NAT amounts to against a cone NAT: the port it
//!   maps towards the other peer is not the one the coordinator saw, and the
//!   other peer's NAT filters it out. The relay is all there is.
//!
//! The coordinator is never filtered. A peer with a single coordinator
//! cannot classify itself (that takes two coordinator IPs), so each peer
//! publishes the class its kind stands for, at its own address: open →
//! `Open`, cone → `Cone`, blocked → `Symmetric`. The pair matrix
//! (`natrix_proto::pair_action`) then decides: cone × cone punches (both
//! sides send keep-alives, each opening its own hole); open × cone goes
//! straight to the address without a punch (the cone side's own direct ping
//! opens its hole, the open side's first ping is dropped); blocked (symmetric)
//! × cone punches, the punch fails, the connection stays on the relay.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use natrix_driver_core::DatagramFilter;
use natrix_proto::wire::is_keepalive;
use natrix_proto::{Config, PairAction, pair_action};
use natrix_tokio::{
    ChangeReason, ConnectError, Connection, ConnectionEvent, Coordinator, CoordinatorConfig,
    Keypair, NatClass, Node, PathEvent, PathInfo, PathKind, PublicKey, RelayConfig, Tokio, os_seed,
};
use tokio::sync::mpsc;

use crate::cmd::sim;
use crate::common::{self, PeerOptions, Progress, wait_coordinators};
use crate::error::{CliError, CliResult, Exit};

/// `natrix demo` options.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Each pair: the first peer (alice) connects to the second (bob) through \
the coordinator's relay, both send a datagram every 100 ms, and the connection moves to the \
direct path when the imitated NATs allow one. The NATs are filters on the peers' sockets: \
open (none), cone (port-restricted: a peer's datagrams get in once the other has sent to \
its address), blocked (only the coordinator; the relay is all there is).\n\n\
Example:\n  natrix demo\n  natrix demo --quiet   (the summary table and the matrix only)"
)]
pub(crate) struct Args {
    /// Longest wait for each pair (seconds).
    #[arg(long, default_value_t = 10)]
    pub(crate) patience: u64,
}

/// The NAT a demo peer sits behind (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Open,
    Cone,
    Blocked,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Open => "open",
            Kind::Cone => "cone",
            Kind::Blocked => "blocked",
        }
    }

    /// The class the peer publishes (it cannot measure one).
    fn class(self) -> NatClass {
        match self {
            Kind::Open => NatClass::Open,
            Kind::Cone => NatClass::Cone,
            Kind::Blocked => NatClass::Symmetric,
        }
    }
}

/// The pairs the demo runs: (alice, who connects; bob, who accepts; the
/// path the pair must end on).
const PAIRS: [(Kind, Kind, PathKind); 3] = [
    (Kind::Cone, Kind::Cone, PathKind::Direct),
    (Kind::Open, Kind::Cone, PathKind::Direct),
    (Kind::Blocked, Kind::Cone, PathKind::Relayed),
];

const NAMES: [&str; 2] = ["alice", "bob"];

/// How often each side sends a datagram.
const SEND_EVERY: Duration = Duration::from_millis(100);

/// The punch deadline of the demo's peers (the default is 5 s; on loopback
/// a punch that works takes milliseconds).
const PUNCH_DEADLINE: Duration = Duration::from_secs(2);

/// How long a pair expected to stay relayed keeps running when no upgrade
/// attempt has failed yet.
const RELAYED_WATCH: Duration = Duration::from_secs(3);

/// One peer's imitated NAT.
#[derive(Debug)]
struct Nat {
    kind: Kind,
    /// The peer's address (its NAT maps it to itself); set once bound.
    addr: OnceLock<SocketAddr>,
    /// Addresses the peer has sent to: the only ones a cone NAT lets in.
    holes: Mutex<HashSet<SocketAddr>>,
}

impl Nat {
    fn new(kind: Kind) -> Arc<Self> {
        Arc::new(Nat {
            kind,
            addr: OnceLock::new(),
            holes: Mutex::new(HashSet::new()),
        })
    }
}

/// The two NATs of a pair, the coordinator (never filtered), and where the
/// NATs report what they do.
#[derive(Debug)]
struct Wire {
    coordinator: SocketAddr,
    nats: [Arc<Nat>; 2],
    notes: mpsc::UnboundedSender<(Instant, Note)>,
    /// Direct datagrams dropped, [from alice, from bob].
    dropped: [AtomicU64; 2],
}

impl Wire {
    /// Whether `from`'s datagram to `to` is dropped (true) by `from`'s own
    /// NAT or by the other peer's.
    fn drops(&self, from: usize, to: SocketAddr, bytes: &[u8]) -> bool {
        if to == self.coordinator {
            return false;
        }
        let me = &self.nats[from];
        let peer = &self.nats[1 - from];
        let admitted = if me.kind == Kind::Blocked {
            false
        } else {
            // The datagram leaves this peer's NAT, which from now on lets
            // answers from `to` in.
            let opened = me.holes.lock().is_ok_and(|mut h| h.insert(to));
            if opened && me.kind == Kind::Cone {
                self.note(Note::Hole {
                    side: from,
                    to,
                    keepalive: is_keepalive(bytes),
                });
            }
            match (peer.addr.get(), me.addr.get()) {
                (Some(&there), Some(here)) if there == to => match peer.kind {
                    Kind::Open => true,
                    Kind::Cone => peer.holes.lock().is_ok_and(|h| h.contains(here)),
                    Kind::Blocked => false,
                },
                // Somewhere else: no NAT of this demo's is in the way.
                _ => true,
            }
        };
        if !admitted && self.dropped[from].fetch_add(1, Ordering::Relaxed) == 0 {
            let by = if me.kind == Kind::Blocked {
                from
            } else {
                1 - from
            };
            self.note(Note::FirstDrop {
                side: from,
                by,
                kind: self.nats[by].kind,
                keepalive: is_keepalive(bytes),
            });
        }
        !admitted
    }

    fn note(&self, note: Note) {
        let _ = self.notes.send((Instant::now(), note));
    }
}

/// Something that happened in a pair, in the order it happened.
#[derive(Debug)]
enum Note {
    Path {
        side: usize,
        info: PathInfo,
        reason: ChangeReason,
    },
    UpgradeFailed {
        side: usize,
        error: String,
    },
    Other {
        side: usize,
        text: String,
    },
    Closed {
        side: usize,
    },
    Data {
        /// The receiving side.
        side: usize,
        bytes: Vec<u8>,
    },
    Hole {
        side: usize,
        to: SocketAddr,
        keepalive: bool,
    },
    FirstDrop {
        /// The sender.
        side: usize,
        /// Whose NAT dropped it.
        by: usize,
        /// That NAT's kind.
        kind: Kind,
        keepalive: bool,
    },
}

/// What one pair did.
#[derive(Debug)]
struct Outcome {
    label: String,
    expected: PathKind,
    first_datagram: Option<Duration>,
    direct: Option<Duration>,
    /// Datagrams received, [alice→bob, bob→alice].
    datagrams: [u64; 2],
    relay_frames: u64,
    dropped: u64,
    /// Each side's path at the end.
    final_paths: [Option<PathKind>; 2],
    failure: Option<String>,
}

/// Runs the demo.
///
/// # Errors
/// [`Exit::Failure`] when a socket cannot be bound, or when a pair did not
/// exchange data both ways or did not end on the path it should.
pub(crate) async fn run(args: &Args, quiet: bool) -> CliResult<Exit> {
    let patience = Duration::from_secs(args.patience.max(1));
    let mut out = Out {
        progress: Progress::new(quiet),
        quiet,
    };

    let mut config = CoordinatorConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.relay = Some(RelayConfig::default());
    let coordinator = Coordinator::spawn(Tokio, Keypair::from_secret(os_seed()), config, os_seed())
        .map_err(|e| {
            CliError::failure(format!("cannot start the coordinator on 127.0.0.1: {e}"))
        })?;
    out.line(&format!(
        "coordinator {} (relay on); each peer behind an imitated NAT, all on 127.0.0.1 over UDP",
        coordinator.dial()
    ));

    let mut outcomes = Vec::new();
    for (a, b, expected) in PAIRS {
        let outcome = run_pair(&coordinator, [a, b], expected, patience, &mut out).await;
        outcomes.push(outcome?);
    }
    coordinator.shutdown().await;
    out.line("");

    print_summary(&outcomes);
    outln!();
    print_matrix(&sim::matrix(0.0, 1));

    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.failure.as_ref().map(|f| format!("{}: {f}", o.label)))
        .collect();
    if failures.is_empty() {
        Ok(Exit::Ok)
    } else {
        Err(CliError::failure(format!("the demo did not go as it should: {}", failures.join("; ")))
            .hint("run it again with -v for the library's log; a loaded machine can miss the time bounds (--patience SECS)"))
    }
}

/// The demo's live lines and status line, on stderr (none with `--quiet`).
#[derive(Debug)]
struct Out {
    progress: Progress,
    quiet: bool,
}

impl Out {
    /// A line of its own.
    fn line(&mut self, text: &str) {
        if !self.quiet {
            self.progress.line(text);
        }
    }

    /// The status line.
    fn status(&mut self, text: &str) {
        self.progress.update(text);
    }

    /// Ends the status line with `text`.
    fn finish(&mut self, text: &str) {
        self.progress.finish(text);
    }
}

async fn run_pair(
    coordinator: &Coordinator,
    kinds: [Kind; 2],
    expected: PathKind,
    patience: Duration,
    out: &mut Out,
) -> CliResult<Outcome> {
    let label = format!("{} x {}", kinds[0].name(), kinds[1].name());
    let say = |a: PairAction| match a {
        PairAction::Direct => "go direct, no punch",
        PairAction::SinglePunch => "punch",
        PairAction::SkipPunch => "do not punch",
    };
    let actions = [
        pair_action(kinds[0].class(), kinds[1].class()),
        pair_action(kinds[1].class(), kinds[0].class()),
    ];
    let matrix = if actions[0] == actions[1] {
        say(actions[0]).to_owned()
    } else {
        format!("alice {}, bob {}", say(actions[0]), say(actions[1]))
    };
    out.line("");
    out.line(&format!(
        "[{label}] alice ({}, publishes {:?}) connects to bob ({}, publishes {:?}); pair matrix: {matrix}; expected: {}",
        kinds[0].name(),
        kinds[0].class(),
        kinds[1].name(),
        kinds[1].class(),
        if expected == PathKind::Direct {
            "relay, then direct"
        } else {
            "relayed throughout"
        },
    ));

    let (tx, mut rx) = mpsc::unbounded_channel();
    let wire = Arc::new(Wire {
        coordinator: coordinator.public_addr(),
        nats: [Nat::new(kinds[0]), Nat::new(kinds[1])],
        notes: tx.clone(),
        dropped: [AtomicU64::new(0), AtomicU64::new(0)],
    });
    let coordinators = vec![(coordinator.public_key(), coordinator.public_addr())];
    let mut nodes = Vec::new();
    for (side, kind) in kinds.into_iter().enumerate() {
        let w = wire.clone();
        let filter: DatagramFilter = Arc::new(move |to, bytes| w.drops(side, to, bytes));
        let node = spawn_peer(&coordinators, filter)?;
        let _ = wire.nats[side].addr.set(node.local_addr());
        node.set_local_classification(kind.class(), node.local_addr());
        nodes.push(node);
    }
    let (alice, bob) = (&nodes[0], &nodes[1]);
    for node in &nodes {
        wait_coordinators(node, &coordinators, patience, &mut out.progress).await?;
    }
    out.line(&format!(
        "  alice at {}, bob at {}",
        alice.local_addr(),
        bob.local_addr()
    ));
    let relay_before = relay_frames(coordinator);

    let t0 = Instant::now();
    let bob_key = bob
        .public_key()
        .ok_or_else(|| CliError::failure("bob has no key"))?;
    out.status(&format!("[{label}] connecting"));
    let connected = tokio::time::timeout(patience, async {
        tokio::join!(connect(alice, bob_key, patience), bob.accept())
    })
    .await;
    let mut outcome = Outcome {
        label: label.clone(),
        expected,
        first_datagram: None,
        direct: None,
        datagrams: [0; 2],
        relay_frames: 0,
        dropped: 0,
        final_paths: [None; 2],
        failure: None,
    };
    let conns = match connected {
        Ok((Ok(ca), Ok(cb))) => [ca, cb],
        Ok((Err(e), _)) => {
            outcome.failure = Some(format!("alice could not connect: {e}"));
            return finish(outcome, nodes, None, out).await;
        }
        Ok((_, Err(e))) => {
            outcome.failure = Some(format!("bob could not accept: {e}"));
            return finish(outcome, nodes, None, out).await;
        }
        Err(_) => {
            outcome.failure = Some(format!("no connection within {patience:?}"));
            return finish(outcome, nodes, None, out).await;
        }
    };
    out.line(&format!(
        "  {:>7}  alice connected, bob accepted",
        ms(t0.elapsed())
    ));

    let mut tasks = Vec::new();
    for (side, conn) in conns.iter().enumerate() {
        tasks.push(tokio::spawn(watch_events(side, conn.clone(), tx.clone())));
        tasks.push(tokio::spawn(receive(side, conn.clone(), tx.clone())));
    }
    drop(tx);

    let mut state = State::default();
    let mut tick = tokio::time::interval(SEND_EVERY);
    let deadline = tokio::time::Instant::from_std(t0 + patience);
    let mut sent = [0u64; 2];
    loop {
        tokio::select! {
            note = rx.recv() => {
                let Some((at, note)) = note else { break };
                if let Some(text) = state.apply(&note, at.saturating_duration_since(t0)) {
                    out.line(&format!("  {:>7}  {text}", ms(at.saturating_duration_since(t0))));
                }
            }
            _ = tick.tick() => {
                for side in 0..2 {
                    sent[side] += 1;
                    let msg = format!("{} to {} #{}", NAMES[side], NAMES[1 - side], sent[side]);
                    if let Err(e) = conns[side].send(msg.as_bytes()).await {
                        state.closed = Some(format!("{} cannot send: {e}", NAMES[side]));
                    }
                }
                out.status(&format!(
                    "[{label}] {} ({:.1}s)",
                    state.waiting_for(expected),
                    t0.elapsed().as_secs_f64()
                ));
            }
            () = tokio::time::sleep_until(deadline) => break,
        }
        if state.closed.is_some() || state.done(expected, t0.elapsed()) {
            break;
        }
    }
    for t in &tasks {
        t.abort();
    }

    outcome.first_datagram = state.first_datagram;
    outcome.direct = state.direct_both();
    outcome.datagrams = state.received;
    outcome.dropped = wire.dropped.iter().map(|d| d.load(Ordering::Relaxed)).sum();
    for (path, conn) in outcome.final_paths.iter_mut().zip(&conns) {
        *path = conn.path().await.ok().map(|p| p.kind);
    }
    outcome.relay_frames = relay_frames(coordinator).saturating_sub(relay_before);
    outcome.failure = state.verdict(expected, outcome.final_paths, patience);
    let summary = match (&outcome.failure, outcome.direct) {
        (Some(f), _) => format!("FAILED: {f}"),
        (None, Some(d)) => format!(
            "direct both ways after {}; {} datagrams alice to bob, {} bob to alice",
            ms(d),
            state.received[0],
            state.received[1]
        ),
        (None, None) => format!(
            "stayed on the relay, as it must; {} datagrams alice to bob, {} bob to alice",
            state.received[0], state.received[1]
        ),
    };
    out.finish(&format!("  => {summary}"));
    finish(outcome, nodes, Some(conns), out).await
}

/// Closes what a pair opened.
async fn finish(
    outcome: Outcome,
    nodes: Vec<Node>,
    conns: Option<[Connection; 2]>,
    out: &mut Out,
) -> CliResult<Outcome> {
    // (A pair that got as far as connecting has printed its result.)
    if let (None, Some(f)) = (&conns, &outcome.failure) {
        out.finish(&format!("  => FAILED: {f}"));
    }
    if let Some(conns) = conns {
        for c in conns {
            c.close().await;
        }
    }
    for n in &nodes {
        n.shutdown().await;
    }
    Ok(outcome)
}

/// A peer on 127.0.0.1 with a fresh identity, behind `filter`, whose punch
/// deadline is [`PUNCH_DEADLINE`] (so that the pair that cannot punch
/// reports its failure within the demo's few seconds).
fn spawn_peer(coordinators: &[(PublicKey, SocketAddr)], filter: DatagramFilter) -> CliResult<Node> {
    let agent = Config::builder()
        .punch_deadline(PUNCH_DEADLINE)
        .build()
        .map_err(|e| CliError::failure(format!("the demo's agent configuration: {e}")))?;
    let opts = PeerOptions {
        filter: Some(filter),
        agent,
        ..PeerOptions::new(SocketAddr::from(([127, 0, 0, 1], 0)), coordinators.to_vec())
    };
    common::spawn_peer(Keypair::from_secret(os_seed()), &opts)
}

fn relay_frames(coordinator: &Coordinator) -> u64 {
    coordinator
        .node()
        .relay_stats()
        .unwrap_or_default()
        .frames_forwarded
}

/// `node.connect(peer)`, retried while the coordinator does not know `peer`
/// yet.
async fn connect(
    node: &Node,
    peer: PublicKey,
    patience: Duration,
) -> Result<Connection, ConnectError> {
    let give_up = Instant::now() + patience / 2;
    loop {
        match node.connect(peer).await {
            Err(ConnectError::NoCoordinator | ConnectError::Offline)
                if Instant::now() < give_up =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// Forwards `conn`'s events as notes.
async fn watch_events(side: usize, conn: Connection, tx: mpsc::UnboundedSender<(Instant, Note)>) {
    loop {
        let note = match conn.next_event().await {
            Some(ConnectionEvent::Path(PathEvent::Changed { info, reason })) => {
                Note::Path { side, info, reason }
            }
            Some(ConnectionEvent::Path(PathEvent::UpgradeFailed { error, .. })) => {
                Note::UpgradeFailed {
                    side,
                    error: error.to_string(),
                }
            }
            Some(ConnectionEvent::RelayRefused(r)) => Note::Other {
                side,
                text: format!("the relay refused a datagram: {r}"),
            },
            Some(ConnectionEvent::Closed(_)) | None => {
                let _ = tx.send((Instant::now(), Note::Closed { side }));
                return;
            }
            Some(other) => Note::Other {
                side,
                text: format!("{other:?}"),
            },
        };
        if tx.send((Instant::now(), note)).is_err() {
            return;
        }
    }
}

/// Forwards what `conn` receives as notes.
async fn receive(side: usize, conn: Connection, tx: mpsc::UnboundedSender<(Instant, Note)>) {
    while let Ok(bytes) = conn.recv().await {
        if tx
            .send((Instant::now(), Note::Data { side, bytes }))
            .is_err()
        {
            return;
        }
    }
}

/// A pair's progress, from its notes.
#[derive(Debug, Default)]
struct State {
    /// Each side's path, as its events said.
    path: [Option<PathKind>; 2],
    /// When each side last went direct (since the connect).
    direct_at: [Option<Duration>; 2],
    /// Datagrams received by [bob (alice→bob), alice (bob→alice)].
    received: [u64; 2],
    /// Of those, received while both sides were direct.
    received_direct: [u64; 2],
    first_datagram: Option<Duration>,
    /// The path kind each side's last printed datagram arrived on.
    printed_on: [Option<PathKind>; 2],
    upgrade_failed: bool,
    closed: Option<String>,
}

impl State {
    /// Takes in `note` (at `at`); returns the line to print, if any.
    fn apply(&mut self, note: &Note, elapsed: Duration) -> Option<String> {
        match note {
            Note::Path { side, info, reason } => {
                self.path[*side] = Some(info.kind);
                if info.kind == PathKind::Direct {
                    self.direct_at[*side] = Some(elapsed);
                } else {
                    self.direct_at[*side] = None;
                }
                let what = match info.kind {
                    PathKind::Direct => format!("direct to {}", info.remote),
                    PathKind::Relayed => match info.via {
                        Some(c) => format!("relayed by coordinator {c}"),
                        None => "relayed".to_owned(),
                    },
                };
                Some(format!(
                    "{}: path {what} ({})",
                    NAMES[*side],
                    reason_name(*reason)
                ))
            }
            Note::UpgradeFailed { side, error } => {
                self.upgrade_failed = true;
                Some(format!(
                    "{}: upgrade failed, staying on the relay: {error}",
                    NAMES[*side]
                ))
            }
            Note::Other { side, text } => Some(format!("{}: {text}", NAMES[*side])),
            Note::Closed { side } => {
                self.closed = Some(format!("{}'s connection closed", NAMES[*side]));
                Some(format!("{}: the connection closed", NAMES[*side]))
            }
            Note::Data { side, bytes } => {
                // `side` received: the datagram went from the other side.
                let from = 1 - *side;
                self.received[from] += 1;
                if self.first_datagram.is_none() && from == 0 {
                    self.first_datagram = Some(elapsed);
                }
                let both_direct = self.path.iter().all(|p| *p == Some(PathKind::Direct));
                if both_direct {
                    self.received_direct[from] += 1;
                }
                let on = self.path[*side].unwrap_or(PathKind::Relayed);
                if self.printed_on[*side] == Some(on) {
                    return None;
                }
                self.printed_on[*side] = Some(on);
                Some(format!(
                    "{}: got {:?} (first on its {on} path)",
                    NAMES[*side],
                    String::from_utf8_lossy(bytes)
                ))
            }
            Note::Hole {
                side,
                to,
                keepalive,
            } => Some(format!(
                "{}'s NAT (cone) opened for answers from {to}, by {}",
                NAMES[*side],
                if *keepalive {
                    "a punch keep-alive"
                } else {
                    "a direct datagram"
                }
            )),
            Note::FirstDrop {
                side,
                by,
                kind,
                keepalive,
            } => {
                let what = if *keepalive { "keep-alive" } else { "datagram" };
                let (who, to) = (NAMES[*side], NAMES[1 - *side]);
                let why = match kind {
                    Kind::Cone => format!("{to} has sent nothing to {who}'s address yet"),
                    _ => "it passes nothing but the coordinator's traffic".to_owned(),
                };
                Some(format!(
                    "{}'s NAT ({}) dropped {who}'s first direct {what} to {to}: {why}",
                    NAMES[*by],
                    kind.name()
                ))
            }
        }
    }

    /// When both sides were on the direct path.
    fn direct_both(&self) -> Option<Duration> {
        match self.direct_at {
            [Some(a), Some(b)] => Some(a.max(b)),
            _ => None,
        }
    }

    fn data_both_ways(&self) -> bool {
        self.received.iter().all(|&n| n > 0)
    }

    fn done(&self, expected: PathKind, elapsed: Duration) -> bool {
        match expected {
            PathKind::Direct => {
                self.direct_both().is_some() && self.received_direct.iter().all(|&n| n > 0)
            }
            PathKind::Relayed => {
                self.data_both_ways() && (self.upgrade_failed || elapsed >= RELAYED_WATCH)
            }
        }
    }

    fn waiting_for(&self, expected: PathKind) -> &'static str {
        if !self.data_both_ways() {
            "waiting for data both ways"
        } else if expected == PathKind::Direct {
            "waiting for the direct path"
        } else {
            "waiting for the upgrade attempt to fail"
        }
    }

    /// Why the pair failed, if it did.
    fn verdict(
        &self,
        expected: PathKind,
        final_paths: [Option<PathKind>; 2],
        patience: Duration,
    ) -> Option<String> {
        if let Some(c) = &self.closed {
            return Some(c.clone());
        }
        if !self.data_both_ways() {
            return Some(format!(
                "no data both ways within {patience:?} ({} alice to bob, {} bob to alice)",
                self.received[0], self.received[1]
            ));
        }
        if final_paths.iter().any(|p| *p != Some(expected)) {
            let show =
                |p: Option<PathKind>| p.map_or_else(|| "closed".to_owned(), |k| k.to_string());
            return Some(format!(
                "ended on alice {} / bob {}, expected {expected} (waited up to {patience:?})",
                show(final_paths[0]),
                show(final_paths[1])
            ));
        }
        None
    }
}

fn reason_name(r: ChangeReason) -> &'static str {
    match r {
        ChangeReason::Opened => "opened",
        ChangeReason::Upgraded => "upgraded",
        ChangeReason::DirectDead => "direct path dead",
        ChangeReason::Rebound => "peer rebound",
        ChangeReason::SessionLost => "session lost",
    }
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

fn print_summary(outcomes: &[Outcome]) {
    outln!(
        "{:<16}{:<10}{:>16}{:>13}{:>12}{:>14}{:>11}  result",
        "pair",
        "expected",
        "first datagram",
        "direct path",
        "datagrams",
        "relay frames",
        "nat drops"
    );
    for o in outcomes {
        let first = o.first_datagram.map_or_else(|| "-".to_owned(), ms);
        let direct = o.direct.map_or_else(|| "relayed".to_owned(), ms);
        let result = if o.failure.is_some() { "FAILED" } else { "ok" };
        outln!(
            "{:<16}{:<10}{:>16}{:>13}{:>12}{:>14}{:>11}  {result}",
            o.label,
            o.expected.to_string(),
            first,
            direct,
            format!("{} / {}", o.datagrams[0], o.datagrams[1]),
            o.relay_frames,
            o.dropped,
        );
    }
    outln!(
        "first datagram: from connect() until alice's first datagram reached bob; direct path: \
until both sides were on it;\ndatagrams: received alice to bob / bob to alice (one every \
{} ms each way); relay frames: what the coordinator forwarded for the pair;\nnat drops: \
direct datagrams the imitated NATs dropped.",
        SEND_EVERY.as_millis()
    );
}

/// The simulator's 49 cells, compactly.
fn print_matrix(cells: &[sim::Cell]) {
    let short = |name: &'static str| {
        if name == "port-restricted" {
            "port-restr"
        } else {
            name
        }
    };
    let mut names: Vec<&str> = Vec::new();
    for c in cells {
        if !names.contains(&c.b) {
            names.push(c.b);
        }
    }
    let w = 14;
    outln!(
        "simulator NAT matrix (as `natrix sim`; seed 1, no loss): A \\ B, outcome, time to the direct path"
    );
    let mut line = format!("{:<16}", "A \\ B");
    for n in &names {
        let _ = write!(line, "{:<w$}", short(n));
    }
    outln!("{}", line.trim_end());
    for row in cells.chunks(names.len().max(1)) {
        let mut line = format!("{:<16}", row.first().map_or("", |c| c.a));
        for c in row {
            let cell = match (c.outcome, c.time_to_direct_ms) {
                ("direct", _) => "direct".to_owned(),
                (o, Some(t)) => format!("{o} {t}ms"),
                (o, None) => o.to_owned(),
            };
            let _ = write!(line, "{cell:<w$}");
        }
        outln!("{}", line.trim_end());
    }
}
