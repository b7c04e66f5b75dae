//! `natrix listen` and `natrix connect`: a netcat over natrix connections.
//!
//! `listen` waits for a peer to connect to its public key; `connect` opens a
//! connection to a peer's public key through a coordinator. Once connected,
//! stdin goes to the peer and the peer's datagrams go to stdout; status goes
//! to stderr (`-q` silences it, errors excepted).
//!
//! # Framing
//!
//! A connection carries datagrams of at most [`MAX_DATAGRAM`] (1,158) bytes,
//! unreliably (a datagram can be lost), not a byte stream.
//!
//! - `--framing line` (the default): each line of stdin, without its `\n`,
//!   is one datagram (a line longer than `MAX_DATAGRAM` bytes is split into
//!   several, which arrive as several lines); each datagram received is
//!   written to stdout with a `\n` appended. A last line without `\n` is
//!   sent too. Bytes are not otherwise touched (a `\r` stays).
//! - `--framing datagram`: each read of stdin (at most `MAX_DATAGRAM` bytes)
//!   is one datagram, and each datagram received is written as it is.
//!
//! # When it ends
//!
//! - stdin reaches end of file: the command keeps receiving for `--linger`
//!   seconds (0.5 by default, like `nc -q`: datagrams in flight still reach
//!   stdout), closes the connection and exits 0.
//! - Ctrl-C (or SIGTERM): exits 0 at once.
//! - `listen` (one connection): the peer's connection ends (its session
//!   timed out): exits 0. With `--keep`, `listen` accepts any number of
//!   connections, writes what each sends to the same stdout and sends stdin
//!   to the most recent one; it ends on Ctrl-C or at the end of stdin.
//!   Without `--keep`, a second peer's connection is refused.
//! - `connect`: the connection ends (its session could not be set up
//!   again): exit 5.
//!
//! `listen` reads stdin only once it has a connection, so
//! `echo hi | natrix listen …` sends `hi` to the first peer that connects.
//! `connect` sends stdin once the peer's session is up (the peer has
//! accepted), so nothing is sent into the void.
//!
//! # Classification
//!
//! To move from the relay to a direct path, each peer must announce its NAT
//! class and public address (its reflex). A node measures both itself only
//! when it has coordinators at two or more IP addresses (C4 needs two
//! destination IPs). So:
//!
//! - `--nat-class open|cone|symmetric` and/or `--reflex IP:PORT` publish
//!   what you know (a port forward, no NAT); the class defaults to `cone`,
//!   the reflex to this node's own address.
//! - Neither given and exactly one `--coordinator`: the command publishes
//!   `cone` at this node's own address (the bound one, or when bound to a
//!   wildcard, the local IP the system routes to the coordinator with, and
//!   the bound port), as the examples do. That is right on a LAN or on one
//!   host; behind a NAT, pass `--reflex` and `--nat-class`, or use two
//!   coordinators. `-v` says what was published.
//! - Two or more coordinators, or coordinators plus `--stun-server`s (C8):
//!   the node measures.
//!
//! # Exit codes
//!
//! 0 ok; 1 other failure; 2 bad arguments (dial string, public key);
//! 3 key file; 4 no coordinator answered within `--wait`; 5 the peer is not
//! online at any coordinator (after `--wait`), or its connection ended;
//! 6 `--require-direct` and no direct path within `--direct-timeout`.

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use natrix_proto::spray::SprayConfig;
use natrix_tokio::{
    ChangeReason, ConnectError, Connection, ConnectionEvent, MAX_DATAGRAM, NatClass, Node,
    PathEvent, PathInfo, PathKind, PublicKey,
};
use tokio::sync::mpsc;

use crate::common::{
    PeerOptions, Progress, default_key_path, load_or_create_key, parse_key, resolve_dial,
    resolve_host_port, spawn_peer, wait_coordinators, wait_for_signal,
};
use crate::error::{CliError, CliResult, Exit};
use crate::report::Record;

/// How stdin and stdout map onto datagrams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Framing {
    /// One datagram per line (the newline is not sent; a newline is written
    /// after each datagram received).
    Line,
    /// One datagram per read of stdin; datagrams written as they are.
    Datagram,
}

/// A NAT class to publish (`--nat-class`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ClassArg {
    /// Reachable at the reflex address as it is (no NAT, a port forward).
    Open,
    /// Endpoint-independent mapping: punching works.
    Cone,
    /// The public port depends on the destination.
    Symmetric,
}

impl From<ClassArg> for NatClass {
    fn from(c: ClassArg) -> Self {
        match c {
            ClassArg::Open => NatClass::Open,
            ClassArg::Cone => NatClass::Cone,
            ClassArg::Symmetric => NatClass::Symmetric,
        }
    }
}

/// Options `listen` and `connect` share.
#[derive(Debug, clap::Args)]
pub(crate) struct PeerArgs {
    /// A coordinator's dial string (`natrix1…@host:port`, as `natrix
    /// coordinator` prints it). Repeat for several, in order of preference.
    #[arg(long, short, value_name = "DIAL", required = true)]
    pub(crate) coordinator: Vec<String>,
    /// Key file (created with a new identity if missing). Default:
    /// $NATRIX_KEY, else ~/.config/natrix/key.
    #[arg(long, short, value_name = "FILE")]
    pub(crate) key: Option<PathBuf>,
    /// Local UDP address. Default: 0.0.0.0:0, or `[::]:0` when the first
    /// coordinator is IPv6.
    #[arg(long, short, value_name = "ADDR")]
    pub(crate) bind: Option<SocketAddr>,
    /// How stdin and stdout map onto datagrams: `line` (one datagram per
    /// line, newline added on output) or `datagram` (one per read, raw).
    #[arg(long, value_enum, default_value_t = Framing::Line)]
    pub(crate) framing: Framing,
    /// Publish this NAT class instead of measuring it (needed with one
    /// coordinator; default then: cone).
    #[arg(long, value_enum, value_name = "CLASS")]
    pub(crate) nat_class: Option<ClassArg>,
    /// Publish this public address (IP:PORT) for direct paths. Default:
    /// this node's own address.
    #[arg(long, value_name = "ADDR")]
    pub(crate) reflex: Option<SocketAddr>,
    /// Seconds to wait for the coordinator(s), and (connect) for the peer
    /// to be online.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub(crate) wait: u64,
    /// Seconds to keep receiving after stdin ends, before closing (like
    /// `nc -q`).
    #[arg(long, value_name = "SECS", default_value_t = 0.5)]
    pub(crate) linger: f64,
    /// Ask the gateway for a port mapping (PCP, NAT-PMP, UPnP-IGD): once
    /// installed, its public address is this node's (announced as Open),
    /// and it is deleted on exit.
    #[arg(long)]
    pub(crate) port_mapping: bool,
    /// The lease --port-mapping asks for, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    pub(crate) port_mapping_lifetime: u64,
    /// A STUN server (`host:port`, repeatable) the NAT classification asks
    /// besides the coordinators: each server's IP counts as a destination
    /// (C4, C8), so one coordinator plus one STUN server is enough to
    /// measure the NAT class.
    #[arg(long = "stun-server", value_name = "HOST:PORT")]
    pub(crate) stun_servers: Vec<String>,
    /// Measure the NAT's mapping and filtering at start against this RFC 5780
    /// STUN server (a coordinator run with --stun-alternate, or coturn with
    /// two addresses) and announce them with the class: punches the model
    /// says cannot work are skipped, and ones the class alone would skip are
    /// tried (C8). Default: the first --stun-server, if any.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "no_behaviour")]
    pub(crate) behaviour_server: Option<String>,
    /// Do not measure the NAT's behaviour (the NAT class alone decides).
    #[arg(long)]
    pub(crate) no_behaviour: bool,
    /// Birthday punching (N2), for a pair where one side's NAT gives each
    /// destination a new random port and the other's mapping is stable
    /// (both must have measured their NAT behaviour): the sockets this node
    /// opens per attempt when it is the random-port side, one datagram
    /// each (at most 1024; 0 turns birthday punching off).
    #[arg(long, value_name = "N", default_value_t = SprayConfig::default().sockets)]
    pub(crate) spray_sockets: u16,
    /// Birthday punching: the probes (to random ports of the peer's IP) this
    /// node sends per attempt when it is the stable side (0 turns birthday
    /// punching off).
    #[arg(long, value_name = "N", default_value_t = SprayConfig::default().max_probes)]
    pub(crate) spray_probes: u16,
    /// Birthday punching: datagrams per second per attempt, either side (at
    /// most 4096). An attempt must be done within the punch's deadline (5
    /// s), so more probes want a higher rate.
    #[arg(long, value_name = "N", default_value_t = SprayConfig::default().rate)]
    pub(crate) spray_rate: u32,
    /// Write a JSON record of the run to FILE when the command ends: the
    /// classification, path changes, first datagram, punch counters (see
    /// docs/cli.md).
    #[arg(long, value_name = "FILE")]
    pub(crate) report: Option<PathBuf>,
}

/// `natrix listen` options.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example (three terminals; the dial string is what `natrix coordinator` prints):\n  \
natrix coordinator --listen 0.0.0.0:7000 --public-addr 203.0.113.7:7000\n  \
natrix listen --coordinator natrix1q…@203.0.113.7:7000      (prints its public key on stderr)\n  \
natrix connect --coordinator natrix1q…@203.0.113.7:7000 natrix1x…\n\
Then lines typed on either side appear on the other. stdin's end or Ctrl-C stops it."
)]
pub(crate) struct ListenArgs {
    #[command(flatten)]
    pub(crate) peer: PeerArgs,
    /// Accept more than one connection (stdin goes to the most recent; all
    /// write to stdout).
    #[arg(long)]
    pub(crate) keep: bool,
}

/// `natrix connect` options.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  \
natrix connect --coordinator natrix1q…@203.0.113.7:7000 natrix1x…\n  \
echo hello | natrix connect -c natrix1q…@203.0.113.7:7000 natrix1x…\n  \
natrix connect -c natrix1q…@203.0.113.7:7000 --require-direct --direct-timeout 20 natrix1x…\n\
Exit codes: 0 ok (stdin ended, Ctrl-C), 4 no coordinator, 5 peer not online or connection lost, \
6 no direct path (--require-direct).")]
pub(crate) struct ConnectArgs {
    #[command(flatten)]
    pub(crate) peer: PeerArgs,
    /// The peer's public key (`natrix1…`: `natrix listen` prints it).
    #[arg(value_name = "PEER_PUBLIC_KEY")]
    pub(crate) peer_key: String,
    /// Send nothing until the path is direct; exit 6 if it is not direct
    /// within --direct-timeout.
    #[arg(long)]
    pub(crate) require_direct: bool,
    /// Seconds --require-direct waits for a direct path.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub(crate) direct_timeout: u64,
}

/// Runs `listen`: waits for a connection, then pipes stdin and stdout.
///
/// # Errors
/// Bad arguments, key file, node start, coordinator not answering.
pub(crate) async fn listen(args: &ListenArgs, quiet: bool) -> CliResult<Exit> {
    let mut st = Status::new(quiet);
    let peer = Peer::start(&args.peer, &mut st, |key, addr| {
        format!("listening as {key} on {addr}\n  (the other side runs: natrix connect --coordinator DIAL {key})")
    })
    .await?;
    st.update("waiting for a peer to connect; Ctrl-C stops");
    let mut record = Record::default();
    let mut path = None;
    let exit = tokio::select! {
        r = peer.node.accept() => match r {
            Ok(first) => {
                let mut pipe = Pipe::new(&peer, &args.peer, args.keep, false, &mut record);
                pipe.add(first, &mut st, "accepted");
                let exit = pipe.run(&mut st, None).await;
                path = pipe.final_path().await;
                pipe.close_all().await;
                exit
            }
            Err(e) => Err(CliError::failure(format!("the node stopped: {e}"))),
        },
        () = wait_for_signal() => {
            st.end("interrupted");
            Ok(Exit::Ok)
        }
    };
    finish(&peer, &args.peer, "listen", &record, path, exit).await
}

/// Writes the `--report` (if asked for) and stops the node.
async fn finish(
    peer: &Peer,
    args: &PeerArgs,
    role: &str,
    record: &Record,
    path: Option<PathInfo>,
    exit: CliResult<Exit>,
) -> CliResult<Exit> {
    if let Some(file) = &args.report {
        let code = match &exit {
            Ok(e) => *e as i32,
            Err(e) => e.exit as i32,
        };
        if let Err(e) = record.write(file, role, &peer.node, code, path) {
            peer.node.shutdown().await;
            return exit.and(Err(e));
        }
    }
    peer.node.shutdown().await;
    exit
}

/// Runs `connect`: connects to the peer's key, then pipes stdin and stdout.
///
/// # Errors
/// Bad arguments, key file, node start, coordinator or peer unreachable,
/// no direct path with `--require-direct`.
pub(crate) async fn connect(args: &ConnectArgs, quiet: bool) -> CliResult<Exit> {
    let target = parse_key(&args.peer_key)?;
    let mut st = Status::new(quiet);
    // Resolve the dial strings before touching the key file: a typo is
    // reported as one (exit 2) whatever state the key file is in.
    let peer = Peer::start(&args.peer, &mut st, |key, addr| {
        format!("this node is {key} on {addr}")
    })
    .await?;
    if target == peer.key {
        return Err(CliError::usage("that is this node's own public key")
            .hint("pass the key `natrix listen` printed on the other machine"));
    }
    let mut record = Record::default();
    let mut path = None;
    let result = connect_and_pipe(&peer, args, target, &mut st, &mut record, &mut path).await;
    finish(&peer, &args.peer, "connect", &record, path, result).await
}

async fn connect_and_pipe(
    peer: &Peer,
    args: &ConnectArgs,
    target: PublicKey,
    st: &mut Status,
    record: &mut Record,
    path: &mut Option<PathInfo>,
) -> CliResult<Exit> {
    let patience = Duration::from_secs(args.peer.wait);
    let started = Instant::now();
    let conn = loop {
        st.update(&format!(
            "looking up {} ({:.0?})",
            short(&target),
            started.elapsed()
        ));
        let attempt = tokio::select! {
            r = peer.node.connect(target) => r,
            () = wait_for_signal() => { st.end("interrupted"); return Ok(Exit::Ok); }
        };
        match attempt {
            Ok(conn) => break conn,
            Err(ConnectError::NoCoordinator | ConnectError::Offline)
                if started.elapsed() < patience =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(ConnectError::NoCoordinator) => {
                return Err(CliError::new(
                    Exit::NoCoordinator,
                    "lost the session with every coordinator",
                )
                .hint("is the coordinator still running?"));
            }
            Err(ConnectError::Offline) => {
                return Err(CliError::new(
                    Exit::PeerUnreachable,
                    format!(
                        "peer {target} is not online at any coordinator (waited {patience:?})"
                    ),
                )
                .hint("is `natrix listen` running on the other side, with the same --coordinator? check the key (it prints it on start); --wait SECS waits longer"));
            }
            Err(e) => {
                return Err(CliError::new(
                    Exit::PeerUnreachable,
                    format!("cannot connect to {target}: {e}"),
                )
                .hint("try again; -v shows more"));
            }
        }
    };
    let mut pipe = Pipe::new(peer, &args.peer, false, true, record);
    pipe.record.opened(peer.node_secs());
    // The connection exists on the relay; wait for the peer's session (it has
    // accepted) before sending anything.
    let deadline = started + patience.max(Duration::from_secs(1));
    loop {
        if peer.node.session(target).await.is_some() {
            break;
        }
        if Instant::now() >= deadline {
            conn.close().await;
            return Err(CliError::new(
                Exit::PeerUnreachable,
                format!("the coordinator knows {target}, but its session did not come up within {patience:?}"),
            )
            .hint("the peer may be overloaded or have just left; try again"));
        }
        st.update(&format!(
            "connecting to {} ({:.0?})",
            short(&target),
            started.elapsed()
        ));
        tokio::select! {
            ev = conn.next_event() => match ev {
                Some(ConnectionEvent::Closed(why)) => {
                    return Err(CliError::new(
                        Exit::PeerUnreachable,
                        format!("the connection to {target} failed: {}", closed_reason(why)),
                    ));
                }
                Some(ev) => pipe.show_event(&conn, ev, st).await,
                None => return Err(CliError::new(Exit::PeerUnreachable, "the connection closed")),
            },
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
            () = wait_for_signal() => { st.end("interrupted"); conn.close().await; return Ok(Exit::Ok); }
        }
    }
    let direct_by = args
        .require_direct
        .then(|| Duration::from_secs(args.direct_timeout));
    pipe.add(conn, st, "connected to");
    let exit = pipe.run(st, direct_by).await;
    *path = pipe.final_path().await;
    pipe.close_all().await;
    exit
}

/// A started peer node with a coordinator session.
struct Peer {
    node: Node,
    key: PublicKey,
    coordinators: Vec<(PublicKey, SocketAddr)>,
    /// When the node started (the origin of its clock, near enough).
    started: Instant,
}

impl Peer {
    /// Starts the node and waits for its coordinators; `intro` is the line
    /// that names this node (its key and bound address).
    async fn start(
        args: &PeerArgs,
        st: &mut Status,
        intro: impl FnOnce(&PublicKey, SocketAddr) -> String,
    ) -> CliResult<Peer> {
        let coordinators = args
            .coordinator
            .iter()
            .map(|d| resolve_dial(d))
            .collect::<CliResult<Vec<_>>>()?;
        if !args.linger.is_finite() || args.linger < 0.0 {
            return Err(CliError::usage(format!(
                "--linger {} is not a number of seconds",
                args.linger
            )));
        }
        let path = args.key.clone().unwrap_or_else(default_key_path);
        let (keypair, created) = load_or_create_key(&path)?;
        if created {
            st.line(&format!("created a new identity in {}", path.display()));
        }
        let key = keypair.public();
        let bind = args.bind.unwrap_or_else(|| {
            let v6 = coordinators.first().is_some_and(|(_, a)| a.is_ipv6());
            let ip = if v6 {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            };
            SocketAddr::new(ip, 0)
        });
        // An explicit reflex is known before the node starts; a default one
        // needs the bound port.
        let explicit = args
            .reflex
            .map(|r| (args.nat_class.map_or(NatClass::Cone, NatClass::from), r));
        let stun_servers = args
            .stun_servers
            .iter()
            .map(|s| resolve_host_port("--stun-server", s))
            .collect::<CliResult<Vec<_>>>()?;
        let behaviour_server = match (&args.behaviour_server, args.no_behaviour) {
            (_, true) => None,
            (Some(s), false) => Some(resolve_host_port("--behaviour-server", s)?),
            (None, false) => stun_servers.first().copied(),
        };
        let agent = natrix_proto::Config::builder()
            .spray(SprayConfig {
                sockets: args.spray_sockets,
                max_probes: args.spray_probes,
                rate: args.spray_rate,
                ..SprayConfig::default()
            })
            .build()
            .map_err(|e| {
                CliError::usage(format!("birthday punching: {e}"))
                    .hint("--spray-sockets is at most 1024, --spray-rate at most 4096")
            })?;
        let opts = PeerOptions {
            agent,
            classification: explicit,
            stun_servers: stun_servers.clone(),
            behaviour_server,
            port_mapping: args.port_mapping.then(|| natrix_tokio::PortMapConfig {
                lifetime: Duration::from_secs(args.port_mapping_lifetime.max(1)),
                ..natrix_tokio::PortMapConfig::default()
            }),
            ..PeerOptions::new(bind, coordinators.clone())
        };
        let started = Instant::now();
        let node = spawn_peer(keypair, &opts)?;
        // Destinations a sweep can use: coordinators and STUN servers (C4
        // counts IPs; the agent enforces that, this only picks the mode).
        let destinations = coordinators.len() + stun_servers.len();
        if explicit.is_none() && (args.nat_class.is_some() || destinations == 1) {
            let class = args.nat_class.map_or(NatClass::Cone, NatClass::from);
            let reflex = own_address(node.local_addr(), coordinators[0].1);
            node.set_local_classification(class, reflex);
            if args.nat_class.is_none() {
                tracing::info!(
                    "one coordinator cannot measure the NAT (that needs two IP addresses): \
                     publishing {class:?} at {reflex}, this node's own address; \
                     behind a NAT pass --nat-class and --reflex PUBLIC_IP:PORT, or a second --coordinator"
                );
            } else {
                tracing::info!("publishing {class:?} at {reflex}");
            }
        } else if let Some((class, reflex)) = explicit {
            tracing::info!("publishing {class:?} at {reflex}");
        } else {
            tracing::info!(
                "measuring the NAT class with {} coordinator(s) and {} STUN server(s)",
                coordinators.len(),
                stun_servers.len()
            );
        }
        st.line(&intro(&key, node.local_addr()));
        if let Err(e) = wait_coordinators(
            &node,
            &coordinators,
            Duration::from_secs(args.wait),
            &mut st.progress,
        )
        .await
        {
            st.active = !st.quiet;
            st.clear();
            node.shutdown().await;
            return Err(e);
        }
        st.active = !st.quiet;
        let names: Vec<String> = coordinators.iter().map(|(_, a)| a.to_string()).collect();
        st.end(&format!("coordinator session up ({})", names.join(", ")));
        if args.port_mapping {
            // The probe order's timeouts add up to 4 s.
            let waited = Instant::now();
            loop {
                let Some(state) = node.port_mapping() else {
                    st.line("port mapping: could not start; going on without");
                    break;
                };
                if let Some(m) = state.mapping {
                    st.line(&format!(
                        "port mapping: {} via {}{}",
                        m.external,
                        m.protocol,
                        if state.double_nat {
                            " (double NAT: not used as this node's address)"
                        } else {
                            ""
                        }
                    ));
                    break;
                }
                if !state.errors.is_empty() || waited.elapsed() > Duration::from_secs(5) {
                    st.line("port mapping: no gateway service answered; going on without");
                    break;
                }
                st.update("asking the gateway for a port mapping");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let measuring = explicit.is_none() && args.nat_class.is_none() && destinations > 1;
        if measuring {
            // Announce only a measured class: a peer that punched us before
            // the sweep ended would aim at a guess.
            let patience = Duration::from_secs(args.wait);
            // An installed port mapping is this node's address (C6, P7):
            // its state is visible here a moment before the node's task
            // has taken it in, so wait for the classification to show it.
            let mapped = node.port_mapping().and_then(|m| m.reflex_override());
            let in_force = || {
                node.classification()
                    .filter(|a| mapped.is_none_or(|r| a.class == NatClass::Open && a.reflex == r))
            };
            match wait_for(st, patience, "measuring the NAT class", in_force).await {
                Some(a) => st.line(&format!(
                    "NAT class: {:?}, public address {}",
                    a.class, a.reflex
                )),
                None => st.line(&format!(
                    "NAT class not measured within {patience:?}; going on without it (no direct path until it is)"
                )),
            }
        }
        if let Some(server) = behaviour_server {
            // The discovery gives up each test after its retransmissions
            // (a few seconds); the patience only guards against a stall.
            let patience = Duration::from_secs(args.wait);
            match wait_for(st, patience, "measuring the NAT behaviour", || node.behaviour()).await {
                Some(b) => {
                    let profile = b.profile().map_or_else(
                        || "not announced: mapping or filtering not measured".to_owned(),
                        |p| format!("{p}, announced"),
                    );
                    st.line(&format!("NAT behaviour ({server}): {b}; {profile}"));
                    st.line(&format!("  {}", b.summary()));
                }
                None => st.line(&format!(
                    "NAT behaviour not measured against {server} within {patience:?}; the NAT class alone decides"
                )),
            }
        }
        Ok(Peer {
            node,
            key,
            coordinators,
            started,
        })
    }

    /// A coordinator's node id as its address.
    fn coordinator_name(&self, via: Option<natrix_proto::wire::NodeId>) -> String {
        via.and_then(|id| {
            self.coordinators
                .iter()
                .find(|(k, _)| k.node_id() == id)
                .map(|(_, a)| format!("coordinator {a}"))
        })
        .or_else(|| via.map(|id| format!("coordinator {id}")))
        .unwrap_or_else(|| "a coordinator".to_owned())
    }

    /// The node clock's `now`.
    fn node_now(&self) -> natrix_proto::Instant {
        let nanos = self.started.elapsed().as_nanos();
        natrix_proto::Instant::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The node clock's `now`, in seconds.
    fn node_secs(&self) -> f64 {
        self.node_now().since_origin().as_secs_f64()
    }
}

/// This node's address as a peer on the same network reaches it: the bound
/// address, or with a wildcard IP, the local IP the system would use to
/// reach `towards` (no datagram is sent to find it).
fn own_address(local: SocketAddr, towards: SocketAddr) -> SocketAddr {
    if !local.ip().is_unspecified() {
        return local;
    }
    if local.is_ipv4() != towards.is_ipv4() {
        return local;
    }
    match natrix_driver_core::portmap::local_ip_toward(towards.ip()) {
        Ok(ip) => SocketAddr::new(ip, local.port()),
        Err(_) => local,
    }
}

/// What a connection's task reports to the pipe.
enum Msg {
    Data(Vec<u8>),
    Event(u64, ConnectionEvent),
    Ended(u64, Option<ConnectionEvent>),
}

/// stdin in, stdout out, for one or more connections.
struct Pipe<'a> {
    peer: &'a Peer,
    framing: Framing,
    linger: Duration,
    keep: bool,
    /// This side connected (`connect`): the connection's end is a failure.
    dialer: bool,
    conns: HashMap<u64, Connection>,
    /// The connection stdin goes to (the most recent).
    current: Option<u64>,
    next_id: u64,
    tx: mpsc::Sender<Msg>,
    rx: mpsc::Receiver<Msg>,
    stdin: Option<mpsc::Receiver<Vec<u8>>>,
    /// What `--report` writes.
    record: &'a mut Record,
}

/// Why the pipe ended.
enum End {
    Eof,
    Interrupted,
    /// The peer vanished (its session ended): exit 5 on `connect`.
    PeerGone(String),
    /// The peer closed the connection: a normal end.
    PeerClosed(String),
    StdoutClosed,
}

impl<'a> Pipe<'a> {
    fn new(
        peer: &'a Peer,
        args: &PeerArgs,
        keep: bool,
        dialer: bool,
        record: &'a mut Record,
    ) -> Self {
        let (tx, rx) = mpsc::channel(256);
        Pipe {
            peer,
            framing: args.framing,
            linger: Duration::from_secs_f64(args.linger),
            keep,
            dialer,
            conns: HashMap::new(),
            current: None,
            next_id: 0,
            tx,
            rx,
            stdin: None,
            record,
        }
    }

    fn multi(&self) -> bool {
        self.keep
    }

    /// Takes `conn` on: its data and events go to the pipe, stdin goes to it.
    fn add(&mut self, conn: Connection, st: &mut Status, verb: &str) {
        let id = self.next_id;
        self.next_id += 1;
        self.record.opened(self.peer.node_secs());
        st.end(&format!(
            "{verb} {}; stdin goes to the peer, its datagrams to stdout",
            conn.peer()
        ));
        let tx = self.tx.clone();
        let c = conn.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    r = c.recv() => match r {
                        Ok(bytes) => {
                            if tx.send(Msg::Data(bytes)).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => {
                            // The end's event is queued before the data
                            // stops: say why it ended if it says so.
                            let mut why = None;
                            while let Some(ev) = c.try_event() {
                                if matches!(
                                    ev,
                                    ConnectionEvent::Closed(_) | ConnectionEvent::ClosedByPeer
                                ) {
                                    why = Some(ev);
                                }
                            }
                            let _ = tx.send(Msg::Ended(id, why)).await;
                            return;
                        }
                    },
                    ev = c.next_event() => match ev {
                        Some(ev @ (ConnectionEvent::Closed(_) | ConnectionEvent::ClosedByPeer)) => {
                            // Whatever arrived before the end still goes out.
                            while let Ok(Some(bytes)) =
                                tokio::time::timeout(Duration::ZERO, c.recv()).await.map(Result::ok)
                            {
                                let _ = tx.send(Msg::Data(bytes)).await;
                            }
                            let _ = tx.send(Msg::Ended(id, Some(ev))).await;
                            return;
                        }
                        Some(ev) => {
                            if tx.send(Msg::Event(id, ev)).await.is_err() {
                                return;
                            }
                        }
                        None => {
                            let _ = tx.send(Msg::Ended(id, None)).await;
                            return;
                        }
                    },
                }
            }
        });
        self.conns.insert(id, conn);
        self.current = Some(id);
        if self.stdin.is_none() {
            self.stdin = Some(spawn_stdin(self.framing));
        }
    }

    /// Pipes until stdin ends (and `linger` passes), Ctrl-C, or (one
    /// connection) the connection ends. With `direct_by`, stdin waits for a
    /// direct path, which must come by then.
    async fn run(&mut self, st: &mut Status, direct_within: Option<Duration>) -> CliResult<Exit> {
        let direct_by = direct_within.map(|d| Instant::now() + d);
        let mut direct = false;
        if direct_by.is_some() {
            if let Some(c) = self.current_conn() {
                direct = matches!(c.path().await, Ok(p) if p.kind == PathKind::Direct);
            }
            if !direct {
                st.update("waiting for a direct path (--require-direct)");
            }
        }
        let mut eof_at: Option<tokio::time::Instant> = None;
        let mut stdout = std::io::stdout();
        let end = loop {
            let stdin_open = eof_at.is_none() && (direct_by.is_none() || direct);
            let linger_until = eof_at.map(|t| t + self.linger);
            let direct_deadline = direct_by.filter(|_| !direct);
            tokio::select! {
                msg = self.rx.recv() => {
                    let Some(msg) = msg else { break End::PeerGone("the node stopped".into()) };
                    match msg {
                        Msg::Data(bytes) => {
                            self.record.received(self.peer.node_secs());
                            if write_out(&mut stdout, &bytes, self.framing).is_err() {
                                break End::StdoutClosed;
                            }
                        }
                        Msg::Event(id, ev) => {
                            if let ConnectionEvent::Path(PathEvent::Changed { info, .. }) = ev {
                                if info.kind == PathKind::Direct && Some(id) == self.current && !direct {
                                    direct = true;
                                    if direct_by.is_some() {
                                        st.end("direct path found; stdin goes to the peer");
                                    }
                                }
                            }
                            if let Some(c) = self.conns.get(&id).cloned() {
                                self.show_event(&c, ev, st).await;
                            }
                        }
                        Msg::Ended(id, why) => {
                            let Some(c) = self.conns.remove(&id) else { continue };
                            let closed_by_peer = matches!(why, Some(ConnectionEvent::ClosedByPeer));
                            let why = match why {
                                Some(ConnectionEvent::Closed(e)) => closed_reason(e),
                                Some(ConnectionEvent::ClosedByPeer) => "the peer closed it".to_owned(),
                                _ => "the peer is gone (its session ended)".to_owned(),
                            };
                            let text = format!("connection with {} ended: {why}", c.peer());
                            self.record.note(self.peer.node_secs(), "ended", why.clone());
                            if self.current == Some(id) {
                                self.current = self.conns.keys().max().copied();
                            }
                            if !self.keep {
                                break if closed_by_peer {
                                    End::PeerClosed(text)
                                } else {
                                    End::PeerGone(text)
                                };
                            }
                            st.line(&text);
                        }
                    }
                }
                chunk = recv_stdin(&mut self.stdin), if stdin_open => {
                    match chunk {
                        Some(bytes) => {
                            if let Some(c) = self.current_conn() {
                                if let Err(e) = c.send(&bytes).await {
                                    st.line(&format!("could not send {} bytes: {e}", bytes.len()));
                                } else {
                                    self.record.sent();
                                }
                            } else {
                                st.line(&format!("no connection: {} bytes of stdin dropped", bytes.len()));
                            }
                        }
                        None => {
                            tracing::debug!("stdin ended; lingering {:?}", self.linger);
                            eof_at = Some(tokio::time::Instant::now());
                        }
                    }
                }
                accepted = self.peer.node.accept() => {
                    match accepted {
                        Ok(conn) if self.multi() => self.add(conn, st, "accepted"),
                        Ok(conn) => {
                            st.line(&format!(
                                "refused a second connection, from {} (--keep accepts more)",
                                conn.peer()
                            ));
                            conn.close().await;
                        }
                        Err(e) => return Err(CliError::failure(format!("the node stopped: {e}"))),
                    }
                }
                () = sleep_until(linger_until) => break End::Eof,
                () = sleep_until(direct_deadline.map(tokio::time::Instant::from_std)) => {
                    let why = match self.current_conn() {
                        Some(c) => match c.path().await {
                            Ok(PathInfo { last_upgrade_error: Some(e), .. }) => format!("; the last upgrade failed: {e}"),
                            _ => String::new(),
                        },
                        None => String::new(),
                    };
                    st.end("gave up waiting for a direct path");
                    return Err(CliError::new(
                        Exit::Relayed,
                        format!(
                            "no direct path within {:?}, only the relay{why}",
                            direct_within.unwrap_or_default(),
                        ),
                    )
                    .hint("the NATs may not allow a punch (`natrix netcheck` shows yours); --direct-timeout SECS waits longer; without --require-direct the relay carries the data"));
                }
                () = wait_for_signal() => break End::Interrupted,
            }
        };
        let _ = stdout.flush();
        match end {
            End::Eof => st.end("stdin ended; closing"),
            End::Interrupted => st.end("interrupted; closing"),
            End::StdoutClosed => st.end("stdout closed; closing"),
            End::PeerGone(text) if self.dialer => {
                st.clear();
                return Err(CliError::new(Exit::PeerUnreachable, text)
                    .hint("run `natrix connect` again once the peer is back"));
            }
            End::PeerGone(text) | End::PeerClosed(text) => st.end(&text),
        }
        Ok(Exit::Ok)
    }

    fn current_conn(&self) -> Option<&Connection> {
        self.current.and_then(|id| self.conns.get(&id))
    }

    /// The current connection's path, for the report.
    async fn final_path(&self) -> Option<PathInfo> {
        self.current_conn()?.path().await.ok()
    }

    /// One status line for `ev` (and its entry in the report).
    async fn show_event(&mut self, conn: &Connection, ev: ConnectionEvent, st: &mut Status) {
        let who = if self.multi() {
            format!("[{}] ", short(&conn.peer()))
        } else {
            String::new()
        };
        let text = match ev {
            ConnectionEvent::Path(PathEvent::Changed { info, reason }) => {
                self.record.path(&info, reason);
                let since = info.since.since_origin().as_secs_f64();
                let why = match reason {
                    ChangeReason::Opened => "opened",
                    ChangeReason::Upgraded => "upgraded",
                    ChangeReason::DirectDead => "the direct path stopped answering",
                    ChangeReason::Rebound => "the peer's address changed",
                    ChangeReason::SessionLost => "the session was lost; waiting for a new one",
                };
                match info.kind {
                    PathKind::Direct => format!(
                        "path: direct to {}{}, since t+{since:.2} s: {why}",
                        info.remote,
                        info.rtt
                            .map(|r| format!(" (rtt {})", ms(r)))
                            .unwrap_or_default(),
                    ),
                    PathKind::Relayed => format!(
                        "path: relayed via {}, since t+{since:.2} s: {why}",
                        self.peer.coordinator_name(info.via)
                    ),
                }
            }
            ConnectionEvent::Path(PathEvent::UpgradeFailed { error, .. }) => {
                let next = match conn.path().await {
                    Ok(PathInfo {
                        next_upgrade: Some(at),
                        ..
                    }) => format!(
                        ", next attempt in {:.1} s",
                        at.saturating_duration_since(self.peer.node_now())
                            .as_secs_f64()
                    ),
                    _ => String::new(),
                };
                self.record
                    .note(self.peer.node_secs(), "upgrade_failed", error.to_string());
                format!("path: upgrade to direct failed: {error}; staying on the relay{next}")
            }
            ConnectionEvent::RelayRefused(r) => {
                let retry = if r.retry_after.is_zero() {
                    "no retry time given".to_owned()
                } else {
                    format!("retry in {}", ms(r.retry_after))
                };
                let text = format!("relay: refused a datagram: {} ({retry})", r.quota);
                self.record
                    .note(self.peer.node_secs(), "relay_refused", text.clone());
                text
            }
            ConnectionEvent::Closed(e) => format!("connection closed: {}", closed_reason(e)),
            ConnectionEvent::ClosedByPeer => "connection closed by the peer".to_owned(),
            other => format!("{other:?}"),
        };
        st.line(&format!("{who}{text}"));
    }

    async fn close_all(&mut self) {
        for (_, c) in self.conns.drain() {
            c.close().await;
        }
    }
}

/// Reads stdin on a thread of its own (a blocking read cannot be cancelled,
/// and the runtime must not wait for it at exit) into datagrams.
fn spawn_stdin(framing: Framing) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(64);
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let stdin = std::io::stdin();
            let mut input = stdin.lock();
            match framing {
                Framing::Line => {
                    let mut line = Vec::new();
                    loop {
                        line.clear();
                        match input.read_until(b'\n', &mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if line.last() == Some(&b'\n') {
                            line.pop();
                        }
                        if line.is_empty() {
                            if tx.blocking_send(Vec::new()).is_err() {
                                return;
                            }
                            continue;
                        }
                        for chunk in line.chunks(MAX_DATAGRAM) {
                            if tx.blocking_send(chunk.to_vec()).is_err() {
                                return;
                            }
                        }
                    }
                }
                Framing::Datagram => {
                    let mut buf = vec![0u8; MAX_DATAGRAM];
                    loop {
                        match input.read(&mut buf) {
                            Ok(0) => return,
                            Ok(n) => {
                                if tx.blocking_send(buf[..n].to_vec()).is_err() {
                                    return;
                                }
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(_) => return,
                        }
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot read stdin: {e}");
    }
    rx
}

async fn recv_stdin(rx: &mut Option<mpsc::Receiver<Vec<u8>>>) -> Option<Vec<u8>> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn write_out(out: &mut std::io::Stdout, bytes: &[u8], framing: Framing) -> std::io::Result<()> {
    let mut out = out.lock();
    out.write_all(bytes)?;
    if framing == Framing::Line {
        out.write_all(b"\n")?;
    }
    out.flush()
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn closed_reason(e: Option<natrix_session::HandshakeError>) -> String {
    match e {
        Some(e) => format!("the session could not be set up again ({e})"),
        None => "its session ended".to_owned(),
    }
}

/// `d` in milliseconds, one decimal below 10 ms.
fn ms(d: Duration) -> String {
    let m = d.as_secs_f64() * 1000.0;
    if m < 10.0 {
        format!("{m:.1} ms")
    } else {
        format!("{m:.0} ms")
    }
}

/// The first characters of a key, for status lines.
fn short(k: &PublicKey) -> String {
    let s = k.to_string();
    format!("{}…", &s[..s.len().min(14)])
}

/// Status lines on stderr (nothing with `-q`): a status line for waits,
/// lines of their own for what happened.
struct Status {
    progress: Progress,
    quiet: bool,
    /// A status line is showing (a line of its own redraws it).
    active: bool,
    /// stderr is a terminal.
    terminal: bool,
    /// The last wait shown, without its timer (plain output prints each
    /// wait once).
    last: String,
}

impl Status {
    fn new(quiet: bool) -> Self {
        Status {
            progress: Progress::new(quiet),
            quiet,
            active: false,
            terminal: std::io::stderr().is_terminal(),
            last: String::new(),
        }
    }

    /// Shows `text` as the current wait.
    fn update(&mut self, text: &str) {
        let state = text.rsplit_once(" (").map_or(text, |(s, _)| s);
        if !self.terminal && state == self.last {
            return;
        }
        state.clone_into(&mut self.last);
        self.progress.update(text);
        self.active = !self.quiet;
    }

    /// Reports `text` on a line of its own (the wait, if any, stays).
    fn line(&mut self, text: &str) {
        if self.quiet {
        } else if self.active {
            self.progress.line(text);
        } else {
            self.progress.finish(text);
        }
    }

    /// Removes the status line, if one shows (before an error message).
    fn clear(&mut self) {
        if self.active && self.terminal {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
        self.active = false;
    }

    /// Ends the wait with `text`.
    fn end(&mut self, text: &str) {
        self.progress.finish(text);
        self.active = false;
        self.last.clear();
    }
}

/// Polls `get` every 20 ms, with `what` on the progress line, until it has
/// a value or `patience` has passed.
async fn wait_for<T>(
    st: &mut Status,
    patience: Duration,
    what: &str,
    mut get: impl FnMut() -> Option<T>,
) -> Option<T> {
    let waited = Instant::now();
    loop {
        if let Some(v) = get() {
            return Some(v);
        }
        if waited.elapsed() >= patience {
            return None;
        }
        st.update(what);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
