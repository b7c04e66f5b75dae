//! The node: one UDP socket, one agent, one task that feeds the agent and
//! drains it; and the handle the application holds.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant as StdInstant};

use futures_lite::Stream;
use futures_lite::future::poll_fn;
use natrix_portmap::supervisor::SupervisorEvent;
use natrix_proto::wire::NodeId;
use natrix_proto::{
    Agent, Announcement, Behaviour, Config, CoordinatorCandidate, DatagramVerdict, Event, Instant,
    NatClass, PathMethod, ProbeError, ReclassifyOutcome, Role, Stats, SweepOutcome, Transmit,
    TraversalError,
};
use natrix_session::demux::{DatagramKind, classify};
use natrix_session::path::{ChangeReason, PathEvent, PathInfo, PathStats};
use natrix_session::relay::{Refusal, RelayStats};
use natrix_session::{HandshakeError, PublicKey, SessionInfo, SessionStats};

use tracing::{debug, info, info_span};

use crate::buf::{Inbox, InboxSender};
use crate::clock::Clock;
use crate::connection::ConnectionEvent;
use crate::control::{ControlError, ControlInput, ControlPlane};
use crate::net::wire::LookupAnswer;
use crate::portmap::{PortMapConfig, PortMapEvent, PortMapState, PortMapper};
use crate::runtime::{BoxFuture, RecvBatch, Runtime, UdpSocket};
use crate::spray::{PinnedSends, SprayIo, SprayRead, SprayRole};
use crate::stun::{StunConfig, StunRunning, StunService};
use natrix_proto::wire::stun::msg_type as stun_msg;

/// Decides whether to drop an outgoing datagram (destination, bytes): a test
/// hook standing in for a filtering middlebox in front of the node's main
/// socket. It sees what leaves the main socket only: the sockets of a
/// birthday attempt (N2), and the paths pinned to one, are not filtered.
pub type DatagramFilter = Arc<dyn Fn(SocketAddr, &[u8]) -> bool + Send + Sync>;

/// The node socket's receive buffer asked for by default: 4 MiB.
pub const DEFAULT_RECV_BUFFER: usize = 4 << 20;

/// How to start a node.
#[derive(Clone)]
pub struct NodeConfig {
    /// This node's id.
    pub id: NodeId,
    /// Where to bind the UDP socket (IPv4 or IPv6; port 0 for any).
    pub bind: SocketAddr,
    /// The agent's configuration.
    pub agent: Config,
    /// The agent's seed (its only source of randomness).
    pub seed: u64,
    /// Drops matching outgoing datagrams (tests only).
    pub datagram_filter: Option<DatagramFilter>,
    /// The receive buffer (`SO_RCVBUF`) to ask the OS for on the node's
    /// socket: [`DEFAULT_RECV_BUFFER`] by default, so that a burst (a
    /// coordinator's many peers, a birthday attempt's probes) waits in the
    /// kernel rather than being dropped; the OS may grant less (Linux caps
    /// it at `net.core.rmem_max`). `None` keeps the OS default.
    /// [`Node::recv_buffer`] says what was granted.
    pub recv_buffer: Option<usize>,
    /// Port mapping (PCP, NAT-PMP, UPnP-IGD against the routing table's
    /// default gateway): off (`None`) by default. When on, an installed
    /// mapping that is not double NAT becomes the reflex override (C6, P7).
    pub port_mapping: Option<PortMapConfig>,
    /// Answer STUN Binding requests on the node's socket (and, with an
    /// alternate address, on the RFC 5780 sockets): coordinators do by
    /// default; `None` (the default for other nodes) hands STUN datagrams to
    /// the application like any unknown datagram.
    pub stun: Option<StunConfig>,
    /// STUN servers (RFC 8489) the classification sweeps ask besides
    /// coordinators and peers (C8; each server's IP is a destination, C4).
    /// Empty by default.
    pub stun_servers: Vec<SocketAddr>,
    /// An RFC 5780 STUN server (one with an alternate address: a natrix
    /// coordinator started with `--stun-alternate`, or coturn) to measure
    /// this node's NAT behaviour against when it starts (C8, a few seconds
    /// in the background: the mapping and filtering tests from the node's
    /// own socket, the port-allocation test from three fresh ones). The
    /// measured mapping and filtering are announced with the class and
    /// refine the pair decision
    /// ([`natrix_proto::pair_action_with_profiles`]); the result is a
    /// [`NodeEvent::Behaviour`] and [`Node::behaviour`]. `None` (the
    /// default): nothing is measured and the baseline matrix decides.
    pub behaviour_server: Option<SocketAddr>,
}

impl fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeConfig")
            .field("id", &self.id)
            .field("bind", &self.bind)
            .field("agent", &self.agent)
            .field("seed", &self.seed)
            .field("datagram_filter", &self.datagram_filter.is_some())
            .field("recv_buffer", &self.recv_buffer)
            .field("port_mapping", &self.port_mapping)
            .field("stun", &self.stun)
            .field("stun_servers", &self.stun_servers)
            .field("behaviour_server", &self.behaviour_server)
            .finish()
    }
}

impl NodeConfig {
    /// A node `id` bound at `bind`, default agent configuration, seed from the id.
    #[must_use]
    pub fn new(id: NodeId, bind: SocketAddr) -> Self {
        NodeConfig {
            id,
            bind,
            agent: Config::default(),
            seed: id.0 ^ 0x6e61_7472_6978,
            datagram_filter: None,
            recv_buffer: Some(DEFAULT_RECV_BUFFER),
            port_mapping: None,
            stun: None,
            stun_servers: Vec::new(),
            behaviour_server: None,
        }
    }

    /// A node whose identity is `key` (its id is the key's node id, S1).
    #[must_use]
    pub fn for_key(key: &PublicKey, bind: SocketAddr) -> Self {
        Self::new(key.node_id(), bind)
    }
}

/// A punch that found a direct path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PunchOutcome {
    /// The peer.
    pub peer: NodeId,
    /// The punch id.
    pub punch_id: u32,
    /// The peer's address on the direct path.
    pub path: SocketAddr,
    /// Punched, or direct by the pair matrix.
    pub method: PathMethod,
    /// Time from the request to the path.
    pub elapsed: Duration,
}

/// What `reclassify` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reclassified {
    /// A sweep ran (this request's or one already running) and ended so.
    Swept(SweepOutcome),
    /// A reflex override is installed: sweeps are suppressed (C6).
    Suppressed,
}

/// Something the node reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeEvent {
    /// An event of the agent.
    Agent(Event),
    /// A connection's path changed, or its upgrade failed (D2).
    Path(PathEvent),
    /// A relay refused a frame of ours toward `peer` (S3).
    RelayRefused {
        /// The target of the refused frame.
        peer: NodeId,
        /// Which quota, and when it resets.
        refusal: Refusal,
    },
    /// Port mapping (when on): a mapping installed, renewed, lost, deleted;
    /// every protocol failed; the gateway restarted; it could not start.
    /// [`Node::port_mapping`] has the details.
    PortMapping(PortMapEvent),
    /// The NAT behaviour measured against
    /// [`NodeConfig::behaviour_server`] (or set with
    /// [`Node::set_behaviour`]); its mapping and filtering, when both were
    /// measured, are now announced (C8).
    Behaviour(Behaviour),
    /// A socket operation failed; the node goes on.
    SocketError {
        /// Which operation.
        op: &'static str,
        /// The error kind.
        kind: io::ErrorKind,
    },
}

/// Starts the port mapper (a failure to start is logged and reported as a
/// `NodeEvent::PortMapping` of `Unavailable`, never fatal to the node) and
/// the task that turns its events into the reflex override.
fn start_port_mapping<R: Runtime>(
    rt: &R,
    local: SocketAddr,
    config: &PortMapConfig,
    seed: u64,
    commands: &async_channel::Sender<Command>,
) -> PortMapping<R> {
    match PortMapper::spawn(rt, local, config, seed) {
        Ok((mapper, task)) => {
            let mapper = Arc::new(mapper);
            let m = mapper.clone();
            let commands = commands.clone();
            let glue = rt.spawn(Box::pin(async move {
                while let Some(ev) = m.next_event().await {
                    let state = m.state();
                    let (reflex, stats) = (state.reflex_override(), PortMapStats::of(&state));
                    if commands
                        .send(Command::PortMapping(ev, reflex, stats))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }));
            (mapper, Mutex::new(vec![task, glue]))
        }
        Err(e) => {
            info!(error = %e, "port mapping not started");
            let _ = commands.try_send(Command::PortMappingFailed(e.to_string()));
            let (mapper, task) = PortMapper::stopped(rt);
            (Arc::new(mapper), Mutex::new(vec![task]))
        }
    }
}

/// Where the node's task hands the STUN answers (bytes, source) arriving
/// on its socket to the behaviour discovery running from it.
type DiscoveryInbox = async_channel::Sender<(Vec<u8>, SocketAddr)>;

/// Starts the behaviour discovery against `server` (C8) and the glue that
/// hands its report to the node's task. Its main socket is the node's own
/// (whose NAT mapping and filtering are what punches meet; a static port
/// forward applies to it and not to fresh ports): the node's task sends its
/// requests from there (`Command::SendStun`) and hands it the STUN answers
/// arriving there through the returned channel. A server of the other
/// address family is asked from fresh sockets instead. A discovery that
/// cannot bind its extra sockets is logged and measures nothing.
fn start_behaviour_discovery<R: Runtime>(
    rt: &R,
    server: SocketAddr,
    seed: u64,
    commands: &async_channel::Sender<Command>,
    local: SocketAddr,
) -> (R::Task, Option<DiscoveryInbox>) {
    let commands = commands.clone();
    let inner = rt.clone();
    let (main, inbox) = if local.is_ipv4() == server.is_ipv4() {
        // A few answers per test; more in flight is a flood, dropped.
        let (tx, rx) = async_channel::bounded(32);
        let to_task = commands.clone();
        let send: crate::stun::SendVia = Box::new(move |bytes, to| {
            let _ = to_task.try_send(Command::SendStun(bytes, to));
        });
        (
            Some(crate::stun::MainSocket::Shared {
                local,
                send,
                answers: rx,
            }),
            Some(tx),
        )
    } else {
        (None, None)
    };
    let task = rt.spawn(Box::pin(async move {
        let seed = seed ^ 0x6265_6861_7669_6f75;
        let report = match main {
            Some(main) => crate::stun::run_discovery(&inner, server, main, seed, None).await,
            None => crate::stun::discover_behaviour(&inner, server, 0, seed).await,
        };
        match report {
            Ok(report) => {
                info!(
                    %server,
                    behaviour = %report.behaviour,
                    other_address = ?report.other_address,
                    "NAT behaviour measured"
                );
                if let Some(why) = report.mapping_reason {
                    debug!(%server, reason = ?why, "NAT behaviour: mapping not measured");
                }
                if let Some(why) = report.filtering_reason {
                    debug!(%server, reason = ?why, "NAT behaviour: filtering not measured");
                }
                let _ = commands.send(Command::Behaviour(report.behaviour)).await;
            }
            Err(e) => info!(%server, error = %e, "NAT behaviour discovery could not start"),
        }
    }));
    (task, inbox)
}

/// Errors of the node handle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Binding or using the socket failed.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// The node was shut down.
    #[error("the node is shut down")]
    Closed,
    /// The configured id is not the node id of the control plane's key (S1).
    #[error("node id {configured:?} is not the node id {of_key:?} of the node's public key")]
    IdentityMismatch {
        /// The id in the configuration.
        configured: NodeId,
        /// The node id of the control plane's public key.
        of_key: NodeId,
    },
}

/// Why a session-level request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionRequestError {
    /// The control plane refused.
    #[error("control plane: {0}")]
    Control(#[from] ControlError),
    /// The handshake did not complete.
    #[error("handshake: {0}")]
    Handshake(HandshakeError),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The node was shut down.
    #[error("the node is shut down")]
    Closed,
}

/// Why [`Node::connect_direct`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// No coordinator session is up to look the peer up at or relay through.
    #[error("no coordinator is connected")]
    NoCoordinator,
    /// The coordinator has no session with the target.
    #[error("the target is not online at the coordinator")]
    Offline,
    /// The directory lookup or the session to the peer failed.
    #[error("{0}")]
    Session(#[from] SessionRequestError),
    /// The punch failed (the caller stays on the relay).
    #[error("punch: {0}")]
    Punch(#[from] TraversalError),
}

/// How long [`Node::lookup`] waits for an answer.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

pub(crate) enum Command {
    /// A port-mapping event, the reflex override it leaves and the
    /// mapping's part of the node's `Stats` (P7).
    PortMapping(SupervisorEvent, Option<SocketAddr>, PortMapStats),
    /// Port mapping could not start.
    PortMappingFailed(String),
    /// C8: this node's NAT behaviour, measured.
    Behaviour(Behaviour),
    /// C8: a request of the behaviour discovery, to send from the node's
    /// socket.
    SendStun(Vec<u8>, SocketAddr),
    Punch {
        req: u64,
        target: NodeId,
        coordinator: NodeId,
        reply: async_channel::Sender<Result<PunchOutcome, TraversalError>>,
    },
    CancelPunch {
        req: u64,
        target: NodeId,
    },
    Reclassify {
        reply: async_channel::Sender<Reclassified>,
    },
    Probe {
        peer: NodeId,
        reply: async_channel::Sender<Result<SocketAddr, ProbeError>>,
    },
    SelectCoordinator {
        target: NodeId,
        candidates: Vec<CoordinatorCandidate>,
        reply: async_channel::Sender<Result<NodeId, TraversalError>>,
    },
    Override(Option<SocketAddr>),
    Classify(NatClass, SocketAddr),
    RefreshInterfaces,
    Dial {
        key: PublicKey,
        addr: SocketAddr,
        reply: async_channel::Sender<Result<SocketAddr, SessionRequestError>>,
    },
    SendData {
        key: PublicKey,
        bytes: Vec<u8>,
        reply: async_channel::Sender<Result<(), ControlError>>,
    },
    Lookup {
        at: NodeId,
        key: PublicKey,
        reply: async_channel::Sender<Result<LookupAnswer, SessionRequestError>>,
    },
    Session {
        key: PublicKey,
        reply: async_channel::Sender<Option<SessionInfo>>,
    },
    Coordinators {
        reply: async_channel::Sender<Vec<PublicKey>>,
    },
    OpenConnection {
        key: PublicKey,
        via: PublicKey,
        sinks: ConnSinks,
        reply: async_channel::Sender<Result<PathInfo, ControlError>>,
    },
    CloseConnection {
        key: PublicKey,
    },
    Path {
        key: PublicKey,
        reply: async_channel::Sender<Option<PathInfo>>,
    },
    Shutdown,
}

/// The task's ends of one connection's queues.
pub(crate) struct ConnSinks {
    pub(crate) data: InboxSender<()>,
    pub(crate) events: async_channel::Sender<ConnectionEvent>,
}

/// A connection the task accepted, waiting for [`Node::accept`].
pub(crate) struct AcceptedConn {
    pub(crate) peer: PublicKey,
    pub(crate) data: Arc<Inbox<()>>,
    pub(crate) events: async_channel::Receiver<ConnectionEvent>,
}

/// The driver's own counters: what the node's socket received and where it
/// went. Every queue towards the application is bounded
/// ([`QUEUE_CAPACITY`]); what a full queue refuses is counted here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DriverStats {
    /// Datagrams read from the node's socket.
    pub datagrams_received: u64,
    /// Of those, keep-alives handed to the agent.
    pub keepalives: u64,
    /// Of those, session packets the control plane took.
    pub session_datagrams: u64,
    /// Datagrams that are not natrix's, queued for
    /// [`Node::recv_from`] / [`Node::recv_from_into`].
    pub app_datagrams: u64,
    /// Datagrams that are not natrix's, dropped because the application's
    /// inbox was full.
    pub app_datagrams_dropped: u64,
    /// Application data from session peers, queued for
    /// [`Node::recv_data`] / [`Node::recv_data_into`].
    pub data_received: u64,
    /// Application data from session peers, dropped because the
    /// application's inbox was full.
    pub data_dropped: u64,
    /// STUN answers handed to the behaviour discovery running from the
    /// node's socket (C8).
    pub discovery_answers: u64,
    /// N2: sockets birthday attempts opened (on the main socket's IP, one
    /// per [`Transmit::Spray`] socket number, the first time it is named).
    pub spray_sockets_opened: u64,
    /// N2: birthday sockets that could not be had: a bind that failed
    /// (`EMFILE`, say) or a socket beyond the caps. The attempt goes on
    /// without them.
    pub spray_socket_failures: u64,
    /// N2: birthday sockets open now (running attempts' and pinned paths').
    pub spray_sockets_open: u64,
    /// N2: datagrams the node's task sent from birthday sockets (an
    /// attempt's, or a pinned path's; the application's own
    /// [`Node::send_to`] to a pinned path is not counted).
    pub spray_datagrams_sent: u64,
    /// N2: datagrams read from birthday sockets. A pinned socket's are
    /// also counted in [`datagrams_received`](Self::datagrams_received) and
    /// where they went, like the main socket's.
    pub spray_datagrams_received: u64,
    /// N2: datagrams that arrived on a running attempt's socket and were
    /// not the peer's keep-alive (dropped).
    pub spray_datagrams_dropped: u64,
    /// N2: direct paths pinned now to the birthday socket that found them
    /// (at most [`MAX_PINNED`](crate::spray::MAX_PINNED)).
    pub pinned_paths: u64,
    /// N2: pinned paths evicted for a newer one (their socket closed; their
    /// datagrams leave from the main socket again).
    pub pinned_evicted: u64,
}

#[derive(Default)]
struct Shared {
    classification: Option<Announcement>,
    behaviour: Option<Behaviour>,
    stats: Stats,
    path_stats: Option<PathStats>,
    relay_stats: Option<RelayStats>,
    session_stats: Option<SessionStats>,
    driver: DriverStats,
    port_mapping: PortMapStats,
    subscribers: Vec<async_channel::Sender<NodeEvent>>,
}

/// The port mapper's part of the node's [`Stats`] (P7: the spec's active
/// flag, external address and renewals since install), kept apart because
/// the agent's counters replace `Stats` at every snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PortMapStats {
    external: Option<SocketAddr>,
    renewals: u64,
}

impl PortMapStats {
    fn of(state: &PortMapState) -> Self {
        let external = state.mapping.map(|m| m.external);
        PortMapStats {
            external,
            // No mapping, no install to count renewals since.
            renewals: if external.is_some() {
                state.renewals
            } else {
                0
            },
        }
    }

    fn apply(self, stats: &mut Stats) {
        stats.port_mapping_active = self.external.is_some();
        stats.port_mapping_external = self.external;
        stats.port_mapping_renewals = self.renewals;
    }
}

type SharedRef = Arc<Mutex<Shared>>;

fn lock(s: &SharedRef) -> std::sync::MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Capacity of each event subscription and of the application inboxes; beyond
/// it the oldest consumers lose new items (UDP semantics), the node never blocks.
pub const QUEUE_CAPACITY: usize = 1024;

/// The node task's buffer for the datagrams the control plane writes (the
/// receive side is a [`RecvBatch`] of slots this size).
const DATAGRAM_BUF: usize = 65_536;

/// Inputs the node's task handles before it yields to the runtime.
const YIELD_EVERY: u32 = 64;

/// Datagrams that are not natrix's, with their source.
type AppInbox = Inbox<SocketAddr>;
/// Application data from session peers, with the peer's key.
type DataInbox = Inbox<PublicKey>;

/// A running natrix node. Dropping it stops its task; [`shutdown`](Self::shutdown)
/// does so and waits.
pub struct Node<R: Runtime> {
    rt: R,
    id: NodeId,
    key: Option<PublicKey>,
    local_addr: SocketAddr,
    socket: Arc<R::Socket>,
    pub(crate) commands: async_channel::Sender<Command>,
    shared: SharedRef,
    task: Mutex<Option<R::Task>>,
    app: Arc<AppInbox>,
    data: Arc<DataInbox>,
    next_req: AtomicU64,
    pub(crate) accepts: async_channel::Receiver<AcceptedConn>,
    /// The port mapper and its tasks, when port mapping is on.
    portmap: Option<PortMapping<R>>,
    /// The STUN service and what stops it, when the node serves STUN.
    stun: Option<StunRunning<R>>,
    /// The behaviour discovery running at start (C8), if any.
    discovery: Mutex<Option<R::Task>>,
    /// N2: the paths pinned to a birthday socket, for `send_to`.
    pinned: Arc<PinnedSends<R::Socket>>,
    /// The receive buffer the OS granted the socket, when one was asked for.
    recv_buffer: Option<usize>,
}

/// A node's port mapper and the tasks that run it.
type PortMapping<R> = (Arc<PortMapper>, Mutex<Vec<<R as Runtime>::Task>>);

impl<R: Runtime> fmt::Debug for Node<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// The host's interface addresses (for C3), from the OS.
#[must_use]
pub fn interface_addrs() -> Vec<IpAddr> {
    if_addrs::get_if_addrs()
        .map(|ifs| ifs.into_iter().map(|i| i.ip()).collect())
        .unwrap_or_default()
}

impl<R: Runtime> Node<R> {
    /// Binds the socket and starts the node's task on `rt`.
    pub fn spawn<C: ControlPlane>(
        rt: R,
        config: NodeConfig,
        control: C,
    ) -> Result<Self, NodeError> {
        let key = control.public_key();
        if let Some(k) = key {
            if k.node_id() != config.id {
                return Err(NodeError::IdentityMismatch {
                    configured: config.id,
                    of_key: k.node_id(),
                });
            }
        }
        let socket = Arc::new(rt.bind(config.bind)?);
        let local_addr = socket.local_addr()?;
        let recv_buffer = config
            .recv_buffer
            .and_then(|asked| match socket.set_recv_buffer(asked) {
                Ok(granted) => {
                    debug!(%local_addr, asked, granted, "socket receive buffer");
                    Some(granted)
                }
                Err(e) => {
                    debug!(%local_addr, asked, error = %e, "socket receive buffer left at the OS default");
                    None
                }
            });
        let stun = match &config.stun {
            Some(cfg) => Some(StunService::start(&rt, cfg, local_addr, socket.clone())?),
            None => None,
        };
        let mut agent = Agent::new(config.id, local_addr, config.agent.clone(), config.seed);
        agent.set_interface_addrs(&interface_addrs());
        agent.set_stun_servers(&config.stun_servers);
        let (commands, command_rx) = async_channel::unbounded();
        let (accepts_tx, accepts) = async_channel::bounded(QUEUE_CAPACITY);
        let app = Inbox::new(QUEUE_CAPACITY);
        let data = Inbox::new(QUEUE_CAPACITY);
        let shared: SharedRef = Arc::default();
        let (discovery, discovery_inbox) = match config.behaviour_server {
            Some(server) => {
                let (t, inbox) =
                    start_behaviour_discovery(&rt, server, config.seed, &commands, local_addr);
                (Some(t), inbox)
            }
            None => (None, None),
        };
        let spray = SprayIo::new(rt.clone(), local_addr.ip(), config.agent.spray());
        let pinned = spray.shared();
        let task = Task {
            rt: rt.clone(),
            clock: Clock::at(rt.now()),
            agent,
            socket: socket.clone(),
            control,
            control_open: true,
            commands: Box::pin(command_rx),
            shared: shared.clone(),
            app: InboxSender(app.clone()),
            data: InboxSender(data.clone()),
            counters: DriverStats::default(),
            tx_buf: vec![0; DATAGRAM_BUF],
            filter: config.datagram_filter,
            punches: BTreeMap::new(),
            current: BTreeMap::new(),
            sweeps: Vec::new(),
            probes: BTreeMap::new(),
            dials: Vec::new(),
            lookups: BTreeMap::new(),
            conns: BTreeMap::new(),
            accepts: accepts_tx,
            stun: stun.as_ref().map(|s| s.service.clone()),
            discovery_inbox,
            stun_out: std::collections::VecDeque::new(),
            spray,
        };
        let handle = rt.spawn(Box::pin(task.run()));
        let portmap = match &config.port_mapping {
            Some(cfg) => Some(start_port_mapping(
                &rt,
                local_addr,
                cfg,
                config.seed,
                &commands,
            )),
            None => None,
        };
        Ok(Node {
            recv_buffer,
            rt,
            id: config.id,
            key,
            local_addr,
            socket,
            commands,
            shared,
            task: Mutex::new(Some(handle)),
            app,
            data,
            next_req: AtomicU64::new(1),
            accepts,
            portmap,
            stun,
            discovery: Mutex::new(discovery),
            pinned,
        })
    }

    /// C8: the NAT behaviour measured against
    /// [`NodeConfig::behaviour_server`] or set with
    /// [`set_behaviour`](Self::set_behaviour), once there is one.
    #[must_use]
    pub fn behaviour(&self) -> Option<Behaviour> {
        lock(&self.shared).behaviour
    }

    /// C8: this node's NAT behaviour, measured by the embedder's own means
    /// (say [`crate::stun::discover_behaviour`] against a server of its
    /// choice). Its [`NatProfile`](natrix_proto::NatProfile), when mapping
    /// and filtering are both known, is announced with the class and refines
    /// the pair decision; one without them withdraws the profile.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        let _ = self.commands.try_send(Command::Behaviour(behaviour));
    }

    /// The STUN server's counters, when the node serves STUN.
    #[must_use]
    pub fn stun_stats(&self) -> Option<natrix_stun::server::ServerStats> {
        self.stun.as_ref().map(|s| s.service.stats())
    }

    /// The port mapping's state (active mapping, external address, renewals,
    /// why protocols failed), when port mapping is on.
    #[must_use]
    pub fn port_mapping(&self) -> Option<PortMapState> {
        self.portmap.as_ref().map(|(m, _)| m.state())
    }

    /// The receive buffer (`SO_RCVBUF`) the OS granted the node's socket
    /// ([`NodeConfig::recv_buffer`]; Linux reports double what it keeps
    /// for data), or `None` when none was asked for or the runtime or OS
    /// could not set it.
    #[must_use]
    pub fn recv_buffer(&self) -> Option<usize> {
        self.recv_buffer
    }

    /// This node's id.
    #[must_use]
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// This node's public key, when its control plane has an identity.
    #[must_use]
    pub fn public_key(&self) -> Option<PublicKey> {
        self.key
    }

    /// The socket's bound address.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Asks for a direct path to `target` through `coordinator`. Dropping the
    /// future before it completes cancels the punch.
    pub async fn request_punch(
        &self,
        target: NodeId,
        coordinator: NodeId,
    ) -> Result<PunchOutcome, TraversalError> {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = async_channel::bounded(1);
        if self
            .commands
            .send(Command::Punch {
                req,
                target,
                coordinator,
                reply,
            })
            .await
            .is_err()
        {
            return Err(TraversalError::Cancelled);
        }
        let mut guard = CancelOnDrop {
            commands: &self.commands,
            req,
            target,
            armed: true,
        };
        let result = rx.recv().await.unwrap_or(Err(TraversalError::Cancelled));
        guard.armed = false;
        result
    }

    /// Runs a classification sweep (or waits for the running one) and returns
    /// how it ended.
    pub async fn reclassify(&self) -> Result<Reclassified, NodeError> {
        let (reply, rx) = async_channel::bounded(1);
        self.commands
            .send(Command::Reclassify { reply })
            .await
            .map_err(|_| NodeError::Closed)?;
        rx.recv().await.map_err(|_| NodeError::Closed)
    }

    /// Asks session peer `peer` which address it sees this node at (C5: the
    /// answer is the authenticated session's address).
    pub async fn probe_reflex(&self, peer: NodeId) -> Result<SocketAddr, ProbeError> {
        let (reply, rx) = async_channel::bounded(1);
        if self
            .commands
            .send(Command::Probe { peer, reply })
            .await
            .is_err()
        {
            return Err(ProbeError::SessionDown);
        }
        rx.recv().await.unwrap_or(Err(ProbeError::SessionDown))
    }

    /// Picks a coordinator for a punch to `target` among `candidates`.
    pub async fn select_coordinator(
        &self,
        target: NodeId,
        candidates: Vec<CoordinatorCandidate>,
    ) -> Result<NodeId, TraversalError> {
        let (reply, rx) = async_channel::bounded(1);
        let cmd = Command::SelectCoordinator {
            target,
            candidates,
            reply,
        };
        if self.commands.send(cmd).await.is_err() {
            return Err(TraversalError::Cancelled);
        }
        rx.recv().await.unwrap_or(Err(TraversalError::Cancelled))
    }

    /// This node's (class, reflex) in force.
    #[must_use]
    pub fn classification(&self) -> Option<Announcement> {
        lock(&self.shared).classification
    }

    /// This node's class.
    #[must_use]
    pub fn nat_class(&self) -> NatClass {
        self.classification().map_or(NatClass::Unknown, |a| a.class)
    }

    /// The agent's counters.
    #[must_use]
    pub fn stats(&self) -> Stats {
        lock(&self.shared).stats
    }

    /// Counters of this node's connections and their paths (S4, D2).
    #[must_use]
    pub fn path_stats(&self) -> Option<PathStats> {
        lock(&self.shared).path_stats
    }

    /// Counters of the relay this node serves (coordinators, S3).
    #[must_use]
    pub fn relay_stats(&self) -> Option<RelayStats> {
        lock(&self.shared).relay_stats
    }

    /// The driver's counters: datagrams received and where they went, and
    /// what the application's inboxes dropped.
    #[must_use]
    pub fn driver_stats(&self) -> DriverStats {
        lock(&self.shared).driver
    }

    /// A new subscription to the node's events (each subscriber gets every
    /// event from now on; a subscriber more than [`QUEUE_CAPACITY`] behind
    /// misses events rather than stalling the node).
    #[must_use]
    pub fn events(&self) -> EventStream {
        let (tx, rx) = async_channel::bounded(QUEUE_CAPACITY);
        lock(&self.shared).subscribers.push(tx);
        EventStream { rx: Box::pin(rx) }
    }

    /// Installs or removes the reflex override (C6).
    pub fn set_reflex_override(&self, reflex: Option<SocketAddr>) {
        let _ = self.commands.try_send(Command::Override(reflex));
    }

    /// Publishes a (class, reflex) found by other means.
    pub fn set_local_classification(&self, class: NatClass, reflex: SocketAddr) {
        let _ = self.commands.try_send(Command::Classify(class, reflex));
    }

    /// Re-reads the host's interface addresses.
    pub fn refresh_interfaces(&self) {
        let _ = self.commands.try_send(Command::RefreshInterfaces);
    }

    /// Sends an application datagram from the node's socket — or, to a
    /// direct path a birthday attempt found (N2), from the socket pinned to
    /// it, which the peer's NAT lets through.
    pub async fn send_to(&self, bytes: &[u8], to: SocketAddr) -> Result<usize, NodeError> {
        // Not `poll_send_to`: the node's task polls that (see
        // `UdpSocket::send_to`).
        if let Some(pinned) = self.pinned.socket_for(to) {
            return Ok(pinned.send_to(bytes, to).await?);
        }
        Ok(self.socket.send_to(bytes, to).await?)
    }

    /// The next datagram on the socket that is not natrix's, untouched.
    ///
    /// Each call allocates the returned vector;
    /// [`recv_from_into`](Self::recv_from_into) does not.
    pub async fn recv_from(&self) -> Result<(Vec<u8>, SocketAddr), NodeError> {
        poll_fn(|cx| self.app.poll_pop(cx))
            .await
            .ok_or(NodeError::Closed)
    }

    /// The next datagram on the socket that is not natrix's, copied into
    /// `buf`: its length and source. Like `UdpSocket::recv_from`, a datagram
    /// longer than `buf` is cut to fit (a buffer of 65,536 bytes never cuts).
    /// Allocates nothing: the node's buffer is used again.
    pub async fn recv_from_into(&self, buf: &mut [u8]) -> Result<(usize, SocketAddr), NodeError> {
        poll_fn(|cx| self.app.poll_pop_into(cx, buf))
            .await
            .ok_or(NodeError::Closed)
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(async_channel::Sender<T>) -> Command,
    ) -> Result<T, NodeError> {
        let (reply, rx) = async_channel::bounded(1);
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| NodeError::Closed)?;
        rx.recv().await.map_err(|_| NodeError::Closed)
    }

    /// Opens an authenticated session to `key` at `addr` (Noise IK: this node
    /// must know the peer's public key). Returns the session's address once
    /// the handshake completes; a wrong key or an unreachable peer ends in
    /// [`SessionRequestError::Handshake`] after the session layer's retries.
    pub async fn dial(
        &self,
        key: PublicKey,
        addr: SocketAddr,
    ) -> Result<SocketAddr, SessionRequestError> {
        self.ask(|reply| Command::Dial { key, addr, reply })
            .await
            .unwrap_or(Err(SessionRequestError::Closed))
    }

    /// Sends application data to `key` on its session (sealed end to end;
    /// queued briefly while a handshake is in progress).
    pub async fn send_data(&self, key: PublicKey, bytes: &[u8]) -> Result<(), SessionRequestError> {
        let bytes = bytes.to_vec();
        self.ask(|reply| Command::SendData { key, bytes, reply })
            .await
            .map_err(|_| SessionRequestError::Closed)?
            .map_err(SessionRequestError::from)
    }

    /// The next application datagram from a session peer, with its key.
    ///
    /// Each call allocates the returned vector;
    /// [`recv_data_into`](Self::recv_data_into) does not.
    pub async fn recv_data(&self) -> Result<(PublicKey, Vec<u8>), NodeError> {
        let (bytes, peer) = poll_fn(|cx| self.data.poll_pop(cx))
            .await
            .ok_or(NodeError::Closed)?;
        Ok((peer, bytes))
    }

    /// The next application datagram from a session peer, copied into `buf`:
    /// the peer's key and the length. A datagram longer than `buf` is cut to
    /// fit; a buffer of [`natrix_session::MAX_PAYLOAD`] bytes never cuts.
    /// Allocates nothing: the node's buffer is used again.
    pub async fn recv_data_into(&self, buf: &mut [u8]) -> Result<(PublicKey, usize), NodeError> {
        let (n, peer) = poll_fn(|cx| self.data.poll_pop_into(cx, buf))
            .await
            .ok_or(NodeError::Closed)?;
        Ok((peer, n))
    }

    /// Asks session peer `coordinator` whether `key` is online there (and
    /// learns its announcement, which the pair matrix needs). Waits at most
    /// [`LOOKUP_TIMEOUT`].
    pub async fn lookup(
        &self,
        coordinator: NodeId,
        key: PublicKey,
    ) -> Result<LookupAnswer, SessionRequestError> {
        let ask = async {
            self.ask(|reply| Command::Lookup {
                at: coordinator,
                key,
                reply,
            })
            .await
            .unwrap_or(Err(SessionRequestError::Closed))
        };
        let timeout = async {
            self.rt.sleep_until(self.rt.now() + LOOKUP_TIMEOUT).await;
            Err(SessionRequestError::Timeout(LOOKUP_TIMEOUT))
        };
        futures_lite::future::or(ask, timeout).await
    }

    /// The session to `key`, if one is up.
    pub async fn session(&self, key: PublicKey) -> Option<SessionInfo> {
        self.ask(|reply| Command::Session { key, reply })
            .await
            .ok()
            .flatten()
    }

    /// The session layer's counters (`None` without sessions of its own).
    #[must_use]
    pub fn session_stats(&self) -> Option<SessionStats> {
        lock(&self.shared).session_stats
    }

    /// A direct, authenticated path to `target` through `coordinator`: looks
    /// the target up at the coordinator, punches (the pair matrix deciding),
    /// then runs this node's own session with the target over the punched
    /// path — the coordinator cannot impersonate either end.
    pub async fn connect_direct(
        &self,
        target: PublicKey,
        coordinator: PublicKey,
    ) -> Result<PunchOutcome, ConnectError> {
        let answer = self.lookup(coordinator.node_id(), target).await?;
        if !answer.online {
            return Err(ConnectError::Offline);
        }
        let out = self
            .request_punch(target.node_id(), coordinator.node_id())
            .await?;
        self.dial(target, out.path).await?;
        Ok(out)
    }

    /// Stops the node: pending punches end with `Cancelled`, pending
    /// reclassifications with `Closed`, the task ends and its socket and timer
    /// are dropped. Waits for all of it.
    pub async fn shutdown(&self) {
        if let Some((mapper, tasks)) = &self.portmap {
            // P4: the mapping is deleted before the node goes (the
            // mapper logs how that ended).
            let _ = mapper.shutdown().await;
            let tasks: Vec<R::Task> = std::mem::take(
                &mut *tasks
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            for t in tasks {
                t.await;
            }
        }
        if let Some(stun) = &self.stun {
            stun.stop().await;
        }
        // A discovery still running ends within its retransmission timeouts;
        // nothing waits for it.
        drop(
            self.discovery
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(),
        );
        let _ = self.commands.send(Command::Shutdown).await;
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            task.await;
        }
    }
}

/// Sends a cancel for a punch whose future was dropped before it completed.
struct CancelOnDrop<'a> {
    commands: &'a async_channel::Sender<Command>,
    req: u64,
    target: NodeId,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.commands.try_send(Command::CancelPunch {
                req: self.req,
                target: self.target,
            });
        }
    }
}

/// A stream of [`NodeEvent`]s.
#[derive(Debug)]
pub struct EventStream {
    rx: Pin<Box<async_channel::Receiver<NodeEvent>>>,
}

impl EventStream {
    /// The next event; `None` once the node is gone.
    pub async fn next(&mut self) -> Option<NodeEvent> {
        self.rx.recv().await.ok()
    }
}

impl Stream for EventStream {
    type Item = NodeEvent;
    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<NodeEvent>> {
        self.rx.as_mut().poll_next(cx)
    }
}

// ------------------------------------------------------------------ the task

enum Input {
    Command(Option<Command>),
    Control(Option<ControlInput>),
    /// Where it starts in the receive batch, its length, its source.
    Datagram(usize, usize, SocketAddr),
    SocketError(io::Error),
    /// N2: a birthday socket's datagram (its id, its length in the spray
    /// buffer, its source), or its error.
    Spray(u64, usize, SocketAddr),
    SprayError(u64, io::Error),
    Timer,
}

struct Task<R: Runtime, C> {
    rt: R,
    clock: Clock,
    agent: Agent,
    socket: Arc<R::Socket>,
    control: C,
    control_open: bool,
    commands: Pin<Box<async_channel::Receiver<Command>>>,
    shared: SharedRef,
    /// The application's inboxes (closed when the task ends).
    app: InboxSender<SocketAddr>,
    data: InboxSender<PublicKey>,
    counters: DriverStats,
    /// Where the control plane writes the datagrams it sends.
    tx_buf: Vec<u8>,
    filter: Option<DatagramFilter>,
    /// Pending punch id → (request number, reply).
    punches: BTreeMap<
        u32,
        (
            u64,
            async_channel::Sender<Result<PunchOutcome, TraversalError>>,
        ),
    >,
    /// Target → its current punch id.
    current: BTreeMap<NodeId, u32>,
    /// Reclassify waiters: (sweep generation, reply).
    sweeps: Vec<(u64, async_channel::Sender<Reclassified>)>,
    /// Probe id → reply.
    probes: BTreeMap<u64, async_channel::Sender<Result<SocketAddr, ProbeError>>>,
    /// Dial waiters: (peer, reply).
    dials: Vec<(
        NodeId,
        async_channel::Sender<Result<SocketAddr, SessionRequestError>>,
    )>,
    /// Lookup query id → reply.
    lookups: BTreeMap<u32, async_channel::Sender<Result<LookupAnswer, SessionRequestError>>>,
    /// Open connections' queues.
    conns: BTreeMap<PublicKey, ConnSinks>,
    /// Accepted connections for [`Node::accept`].
    accepts: async_channel::Sender<AcceptedConn>,
    /// The STUN service, when the node serves STUN.
    stun: Option<Arc<StunService<R>>>,
    /// Where STUN answers to the behaviour discovery running from this
    /// socket go, while it runs (C8).
    discovery_inbox: Option<DiscoveryInbox>,
    /// The behaviour discovery's requests, to send from the socket.
    stun_out: std::collections::VecDeque<(Vec<u8>, SocketAddr)>,
    /// N2: the birthday attempts' sockets and the pinned paths.
    spray: SprayIo<R>,
}

impl Input {
    fn from_spray((id, read): SprayRead) -> Input {
        match read {
            Ok((n, src)) => Input::Spray(id, n, src),
            Err(e) => Input::SprayError(id, e),
        }
    }
}

impl<R: Runtime, C: ControlPlane> Task<R, C> {
    /// The agent's `now`, on the runtime's clock.
    /// C7: a direct path died or an upgrade failed, perhaps because this
    /// node's NAT mapping changed (rebinding: the peer filters the new
    /// port, and the reflex this node announced is stale). One reflex probe
    /// at the first live coordinator; the agent sweeps if the answer differs
    /// from the published reflex (at most once per reflex-change cooldown),
    /// and the new classification is announced (to the peer too) and retries
    /// the upgrades. Found by the kernel-NAT lab's rebinding scenario.
    fn check_own_reflex(&mut self) {
        let Some(coordinator) = self.control.coordinators().first().copied() else {
            return;
        };
        let now = self.now();
        match self.agent.probe_reflex(now, coordinator.node_id()) {
            Ok(_) => debug!(%coordinator, "checking this node's reflex after a path failure (C7)"),
            Err(e) => debug!(%coordinator, error = %e, "no reflex check after a path failure"),
        }
    }

    fn now(&self) -> Instant {
        self.clock.to_agent(self.rt.now())
    }

    async fn run(mut self) {
        // Several datagrams per receive where the socket can (recvmmsg),
        // handed to the loop one by one as if read one at a time.
        let mut batch = RecvBatch::new(self.socket.recv_batch_slots());
        let mut timer: Option<(StdInstant, BoxFuture)> = None;
        let mut budget = YIELD_EVERY;
        // Whether the agent and the control plane are drained and the timer
        // is armed for them: a datagram for the application touches neither.
        let mut settled = false;
        // Whether the shared snapshot lags behind (see `drain`), and whether
        // the last input was a datagram.
        let mut stale = false;
        let mut after_datagram = false;
        // N2: after a datagram of the main socket the birthday sockets are
        // read first, and the other way round, so neither starves the other.
        let mut spray_first = false;
        loop {
            if !settled {
                stale = self.drain(after_datagram).await;
                let deadline = earliest(self.agent.poll_timeout(), self.control.poll_timeout())
                    .map(|t| self.clock.to_std(t));
                // A new timer only when the work is due earlier than the
                // armed one: a timer that fires early just calls
                // `handle_timeout` early, which is harmless, and a session
                // packet that pushes a deadline later (most of them) then
                // costs no new timer.
                let armed = timer.as_ref().map(|(d, _)| *d);
                if let Some(d) = deadline {
                    if armed.is_none_or(|a| d < a) {
                        timer = Some((d, self.rt.sleep_until(d)));
                    }
                }
                settled = true;
            }
            // Under a flood the socket is always ready; a runtime without a
            // cooperative budget of its own (smol) would then never run the
            // application's tasks on this thread, and its inbox would only
            // overflow. So the task steps aside now and then, with the
            // snapshot up to date and the application woken.
            budget -= 1;
            if budget == 0 {
                budget = YIELD_EVERY;
                if std::mem::take(&mut stale) {
                    self.snapshot();
                }
                self.wake_application();
                futures_lite::future::yield_now().await;
            }
            let input = {
                let (commands, control, control_open, socket, rt) = (
                    &mut self.commands,
                    &mut self.control,
                    &self.control_open,
                    &self.socket,
                    &self.rt,
                );
                let (shared, agent, counters, app, data) = (
                    &self.shared,
                    &self.agent,
                    &self.counters,
                    &self.app.0,
                    &self.data.0,
                );
                let stale = &mut stale;
                let batch = &mut batch;
                let timer = &mut timer;
                let spray = &mut self.spray;
                poll_fn(move |cx| {
                    // Commands come first: the cheap check here, the waker
                    // registered below, before waiting.
                    match commands.try_recv() {
                        Ok(c) => return Poll::Ready(Input::Command(Some(c))),
                        Err(async_channel::TryRecvError::Closed) => {
                            return Poll::Ready(Input::Command(None));
                        }
                        Err(async_channel::TryRecvError::Empty) => {}
                    }
                    if *control_open {
                        if let Poll::Ready(c) = control.poll_recv(cx) {
                            return Poll::Ready(Input::Control(c));
                        }
                    }
                    // What the last receive brought in goes first; the
                    // socket only once it is all handled.
                    if let Some((at, n, src)) = batch.next_datagram() {
                        return Poll::Ready(Input::Datagram(at, n, src));
                    }
                    if spray_first && !spray.is_idle() {
                        if let Poll::Ready(r) = spray.poll_recv(cx) {
                            return Poll::Ready(Input::from_spray(r));
                        }
                    }
                    match socket.poll_recv_batch(cx, batch) {
                        Poll::Ready(Ok(n)) => {
                            batch.filled(n);
                            if let Some((at, n, src)) = batch.next_datagram() {
                                return Poll::Ready(Input::Datagram(at, n, src));
                            }
                            // Nothing after all: look again on the next poll.
                            cx.waker().wake_by_ref();
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Input::SocketError(e)),
                        Poll::Pending => {}
                    }
                    if !spray_first && !spray.is_idle() {
                        if let Poll::Ready(r) = spray.poll_recv(cx) {
                            return Poll::Ready(Input::from_spray(r));
                        }
                    }
                    if let Some((d, sleep)) = timer.as_mut() {
                        // Read the clock before trusting the timer: a runtime
                        // may leave a timer pending past its deadline.
                        if rt.now() >= *d || sleep.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Input::Timer);
                        }
                    }
                    if let Poll::Ready(c) = commands.as_mut().poll_next(cx) {
                        return Poll::Ready(Input::Command(c));
                    }
                    // Nothing to do: the snapshot catches up and the
                    // application gets what came in.
                    if std::mem::take(stale) {
                        snapshot(shared, agent, &*control, *counters);
                    }
                    app.wake();
                    data.wake();
                    Poll::Pending
                })
                .await
            };
            // Only a datagram for the application leaves the agent and the
            // control plane as they were.
            let was_settled = std::mem::replace(&mut settled, false);
            after_datagram = matches!(input, Input::Datagram(..) | Input::Spray(..));
            spray_first = matches!(input, Input::Datagram(..));
            match input {
                Input::Command(None) | Input::Command(Some(Command::Shutdown)) => break,
                Input::Command(Some(cmd)) => self.command(cmd),
                Input::Control(None) => self.control_open = false,
                Input::Control(Some(c)) => self.control_input(c),
                Input::Datagram(at, n, src) => {
                    stale = true;
                    let kind = self.datagram(src, batch.bytes(at, n), false).await;
                    if matches!(kind, DatagramKind::Stun | DatagramKind::Unknown) {
                        settled = was_settled;
                    }
                }
                Input::Spray(id, n, src) => {
                    stale = true;
                    // The buffer is lent out while its datagram is handled
                    // (nothing reads a birthday socket meanwhile).
                    let buf = std::mem::take(&mut self.spray.buf);
                    self.spray_datagram(id, src, buf.get(..n).unwrap_or(&[]))
                        .await;
                    self.spray.buf = buf;
                }
                Input::SprayError(id, e) => {
                    debug!(socket = id, error = %e, "birthday socket: receive failed");
                }
                Input::SocketError(e) => self.publish(NodeEvent::SocketError {
                    op: "recv",
                    kind: e.kind(),
                }),
                Input::Timer => {
                    timer = None;
                    let now = self.now();
                    self.agent.handle_timeout(now);
                    self.control.handle_timeout(now, Clock::wall_ms());
                }
            }
        }
        // Shutdown: everyone waiting hears about it; the socket, the timer and
        // the agent are dropped with the task.
        for (_, (_, reply)) in std::mem::take(&mut self.punches) {
            let _ = reply.try_send(Err(TraversalError::Cancelled));
        }
        self.sweeps.clear();
        self.probes.clear();
        for (_, reply) in std::mem::take(&mut self.dials) {
            let _ = reply.try_send(Err(SessionRequestError::Closed));
        }
        for (_, reply) in std::mem::take(&mut self.lookups) {
            let _ = reply.try_send(Err(SessionRequestError::Closed));
        }
        lock(&self.shared).subscribers.clear();
    }

    /// One datagram that arrived on the main socket, or on a socket pinned
    /// to a direct path (N2, `pinned`): one demultiplexer for both —
    /// keep-alives to the agent, session packets to the control plane, STUN
    /// to the STUN service when the node serves it (on the main socket
    /// only: it answers from there), the rest to the application. Returns
    /// the datagram's kind.
    async fn datagram(&mut self, src: SocketAddr, bytes: &[u8], pinned: bool) -> DatagramKind {
        let local = self.agent.bind_addr();
        let c = &mut self.counters;
        c.datagrams_received += 1;
        let kind = classify(bytes);
        let ours = match kind {
            DatagramKind::Keepalive => {
                c.keepalives += 1;
                let now = self.clock.to_agent(self.rt.now());
                self.agent.handle_datagram(now, local, src, bytes) == DatagramVerdict::Consumed
            }
            DatagramKind::Session(_) => {
                let now = self.clock.to_agent(self.rt.now());
                let taken = self
                    .control
                    .handle_datagram(now, Clock::wall_ms(), src, bytes);
                c.session_datagrams += u64::from(taken);
                taken
            }
            DatagramKind::Stun => {
                // A success answer may be a STUN server's answer to the
                // agent's sweep (C8); other answers go to the behaviour
                // discovery while it runs; requests are for the STUN
                // service, when it runs.
                let ty = bytes.get(..2);
                let success = ty == Some(&stun_msg::BINDING_SUCCESS.to_be_bytes()[..]);
                let error = ty == Some(&stun_msg::BINDING_ERROR.to_be_bytes()[..]);
                let now = self.clock.to_agent(self.rt.now());
                if success
                    && self.agent.handle_datagram(now, local, src, bytes)
                        == DatagramVerdict::Consumed
                {
                    true
                } else if (success || error)
                    && self.discovery_inbox.as_ref().is_some_and(|tx| {
                        !matches!(
                            tx.try_send((bytes.to_vec(), src)),
                            Err(async_channel::TrySendError::Closed(_))
                        )
                    })
                {
                    c.discovery_answers += 1;
                    true
                } else if let Some(stun) = self.stun.as_ref().filter(|_| !pinned) {
                    let stun = stun.clone();
                    stun.handle(stun.primary(), src, bytes).await;
                    true
                } else {
                    false
                }
            }
            DatagramKind::Unknown => false,
        };
        if !ours {
            // A copy in a buffer of the inbox; a full inbox drops it, as a
            // socket buffer would.
            if self.app.0.try_push(bytes, src) {
                c.app_datagrams += 1;
            } else {
                c.app_datagrams_dropped += 1;
            }
        }
        kind
    }

    /// N2: a datagram that arrived on birthday socket `id`: a running
    /// attempt's goes to the agent (its peer's keep-alive can confirm the
    /// punch there; anything else is dropped), a pinned path's is handled
    /// like the main socket's.
    async fn spray_datagram(&mut self, id: u64, src: SocketAddr, bytes: &[u8]) {
        let Some(role) = self.spray.role(id) else {
            return;
        };
        self.counters.spray_datagrams_received += 1;
        match role {
            SprayRole::Pinned => {
                let _ = self.datagram(src, bytes, true).await;
            }
            SprayRole::Attempt { attempt, index } => {
                let now = self.now();
                let verdict = self
                    .agent
                    .handle_spray_datagram(now, attempt, index, src, bytes);
                // Rare (a probe that landed, or a stray): worth a line.
                debug!(attempt, socket = index, %src, len = bytes.len(), ?verdict, "birthday socket: datagram");
                if verdict == DatagramVerdict::NotOurs {
                    self.counters.spray_datagrams_dropped += 1;
                }
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        let now = self.now();
        match cmd {
            Command::Punch {
                req,
                target,
                coordinator,
                reply,
            } => match self.agent.request_punch(now, target, coordinator) {
                Ok(id) => {
                    self.punches.insert(id, (req, reply));
                    self.current.insert(target, id);
                }
                Err(e) => {
                    let _ = reply.try_send(Err(e));
                }
            },
            Command::CancelPunch { req, target } => {
                let ours = self
                    .current
                    .get(&target)
                    .and_then(|id| self.punches.get(id))
                    .is_some_and(|(r, _)| *r == req);
                if ours {
                    self.agent.cancel_punch(now, target);
                }
            }
            Command::Reclassify { reply } => match self.agent.reclassify(now) {
                ReclassifyOutcome::Started { generation }
                | ReclassifyOutcome::AlreadyRunning { generation } => {
                    self.sweeps.push((generation, reply));
                }
                ReclassifyOutcome::Suppressed => {
                    let _ = reply.try_send(Reclassified::Suppressed);
                }
                ReclassifyOutcome::InsufficientDestinations { destinations } => {
                    let _ = reply.try_send(Reclassified::Swept(
                        SweepOutcome::InsufficientDestinations { destinations },
                    ));
                }
                _ => {}
            },
            Command::Probe { peer, reply } => match self.agent.probe_reflex(now, peer) {
                Ok(id) => {
                    self.probes.insert(id, reply);
                }
                Err(e) => {
                    let _ = reply.try_send(Err(e));
                }
            },
            Command::SelectCoordinator {
                target,
                candidates,
                reply,
            } => {
                let _ = reply.try_send(self.agent.select_coordinator(target, &candidates));
            }
            Command::Override(r) => self.agent.set_reflex_override(r),
            Command::PortMapping(ev, reflex, stats) => {
                // P7: the mapping's state is part of the node's `Stats`.
                {
                    let mut shared = lock(&self.shared);
                    shared.port_mapping = stats;
                    stats.apply(&mut shared.stats);
                }
                if matches!(
                    ev,
                    SupervisorEvent::Installed { .. }
                        | SupervisorEvent::Renewed { .. }
                        | SupervisorEvent::Lost { .. }
                        | SupervisorEvent::Deleted(_)
                        | SupervisorEvent::DeleteFailed { .. }
                ) {
                    // C6/P7: the mapping is the reflex; losing it restores
                    // classification.
                    self.agent.set_reflex_override(reflex);
                }
                self.publish(NodeEvent::PortMapping(PortMapEvent::from(&ev)));
            }
            Command::PortMappingFailed(why) => {
                debug!(%why, "port mapping not started");
                self.publish(NodeEvent::PortMapping(PortMapEvent::NotStarted));
            }
            Command::Classify(class, reflex) => self.agent.set_local_classification(class, reflex),
            Command::SendStun(bytes, to) => {
                // One request outstanding at a time: a few queued at most.
                if self.stun_out.len() < 16 {
                    self.stun_out.push_back((bytes, to));
                }
            }
            Command::Behaviour(behaviour) => {
                let profile = behaviour.profile();
                info!(
                    profile = %profile.map_or_else(|| "none".to_owned(), |p| p.to_string()),
                    "announcing the NAT profile with the class"
                );
                self.agent.set_local_profile(profile);
                lock(&self.shared).behaviour = Some(behaviour);
                self.publish(NodeEvent::Behaviour(behaviour));
            }
            Command::RefreshInterfaces => {
                self.agent.set_interface_addrs(&interface_addrs());
                // A new interface address may open a direct path (S4).
                self.control.network_changed(now);
            }
            Command::Dial { key, addr, reply } => {
                if let Some(s) = self.control.session(&key) {
                    let _ = reply.try_send(Ok(s.addr));
                } else {
                    match self.control.dial(now, Clock::wall_ms(), key, addr) {
                        Ok(()) => self.dials.push((key.node_id(), reply)),
                        Err(e) => {
                            let _ = reply.try_send(Err(e.into()));
                        }
                    }
                }
            }
            Command::SendData { key, bytes, reply } => {
                let _ = reply.try_send(self.control.send_data(now, &key, &bytes));
            }
            Command::Lookup { at, key, reply } => match self.control.lookup(now, at, key) {
                Ok(query) => {
                    self.lookups.insert(query, reply);
                }
                Err(e) => {
                    let _ = reply.try_send(Err(e.into()));
                }
            },
            Command::Session { key, reply } => {
                let _ = reply.try_send(self.control.session(&key));
            }
            Command::Coordinators { reply } => {
                let _ = reply.try_send(self.control.coordinators());
            }
            Command::OpenConnection {
                key,
                via,
                sinks,
                reply,
            } => {
                let r = self
                    .control
                    .open_connection(now, Clock::wall_ms(), key, via);
                if r.is_ok() {
                    self.conns.insert(key, sinks);
                }
                let _ = reply.try_send(r);
            }
            Command::CloseConnection { key } => {
                self.conns.remove(&key);
                self.control.close_connection(now, &key);
            }
            Command::Path { key, reply } => {
                let _ = reply.try_send(self.control.path(&key));
            }
            Command::Shutdown => {}
        }
    }

    fn control_input(&mut self, c: ControlInput) {
        let now = self.now();
        match c {
            ControlInput::Message {
                peer,
                session_addr,
                channel,
                payload,
            } => {
                // A malformed payload changes nothing; the agent counts it.
                let _ = self.agent.handle_control(
                    now,
                    Clock::wall_ms(),
                    peer,
                    session_addr,
                    channel,
                    &payload,
                );
            }
            ControlInput::SessionUp { peer, addr, rtt } => {
                let _ = self.agent.handle_session_up(peer, addr);
                if let Some(rtt) = rtt {
                    let _ = self.agent.handle_rtt(peer, rtt);
                }
                self.dials.retain(|(p, reply)| {
                    if *p == peer {
                        let _ = reply.try_send(Ok(addr));
                    }
                    *p != peer
                });
            }
            ControlInput::SessionFailed { peer, error } => {
                self.dials.retain(|(p, reply)| {
                    if *p == peer {
                        let _ = reply.try_send(Err(SessionRequestError::Handshake(error)));
                    }
                    *p != peer
                });
            }
            ControlInput::ClockOffset {
                peer,
                offset_ms,
                rtt,
            } => {
                let _ = self.agent.handle_clock_offset(peer, offset_ms);
                // The responder side of a handshake learns the RTT here (R9).
                let _ = self.agent.handle_rtt(peer, rtt);
            }
            ControlInput::Data { peer, payload } => {
                // Full inbox: drop, as a socket buffer would. (The control
                // plane's buffer goes back to its pool.) A connection's data
                // goes to the connection.
                if let Some(sinks) = self.conns.get(&peer) {
                    if sinks.data.0.try_push(&payload, ()) {
                        self.counters.data_received += 1;
                        sinks.data.0.wake();
                    } else {
                        self.counters.data_dropped += 1;
                    }
                } else if self.data.0.try_push(&payload, peer) {
                    self.counters.data_received += 1;
                } else {
                    self.counters.data_dropped += 1;
                }
            }
            ControlInput::LookupAnswer { answer, .. } => {
                if let (true, Some(a)) = (answer.online, answer.announced) {
                    let _ = self.agent.handle_announcement(answer.key.node_id(), a);
                }
                if let Some(reply) = self.lookups.remove(&answer.query) {
                    let _ = reply.try_send(Ok(answer));
                }
            }
            ControlInput::SessionDown { peer } => self.agent.handle_session_down(now, peer),
            ControlInput::RequestPunch { peer, via } => {
                let _span = info_span!("connection", %peer).entered();
                debug!(coordinator = %via, "upgrade: punch requested");
                if let Err(e) = self.agent.request_punch(now, peer.node_id(), via) {
                    self.control.punch_outcome(now, peer.node_id(), Err(e));
                }
            }
            ControlInput::Accepted { peer } => {
                let data = Inbox::new(QUEUE_CAPACITY);
                let (events_tx, events) = async_channel::bounded(QUEUE_CAPACITY);
                let accepted = AcceptedConn {
                    peer,
                    data: data.clone(),
                    events,
                };
                if self.accepts.try_send(accepted).is_ok() {
                    self.conns.insert(
                        peer,
                        ConnSinks {
                            data: InboxSender(data),
                            events: events_tx,
                        },
                    );
                } else {
                    // Nobody accepts (or too many wait): refuse.
                    self.control.close_connection(now, &peer);
                }
            }
            ControlInput::Path(ev) => {
                let peer = ev.peer();
                let _span = info_span!("connection", %peer).entered();
                match ev {
                    PathEvent::Changed { info, reason } => {
                        info!(path = %info.kind, remote = %info.remote, ?reason, rtt = ?info.rtt, "path");
                    }
                    PathEvent::UpgradeFailed { error, .. } => {
                        info!(%error, "upgrade failed; staying on the relay");
                    }
                    PathEvent::ClosedByPeer { .. } => info!("closed by the peer"),
                }
                if matches!(
                    ev,
                    PathEvent::Changed {
                        reason: ChangeReason::DirectDead,
                        ..
                    } | PathEvent::UpgradeFailed { .. }
                ) {
                    self.check_own_reflex();
                }
                if let Some(sinks) = self.conns.get(&peer) {
                    let _ = sinks.events.try_send(ConnectionEvent::Path(ev));
                }
                self.publish(NodeEvent::Path(ev));
            }
            ControlInput::RelayRefused { peer, refusal } => {
                info!(%peer, %refusal, "relay refused a frame (S3)");
                if let Some(sinks) = self
                    .conns
                    .iter()
                    .find(|(k, _)| k.node_id() == peer)
                    .map(|(_, s)| s)
                {
                    let _ = sinks
                        .events
                        .try_send(ConnectionEvent::RelayRefused(refusal));
                }
                self.publish(NodeEvent::RelayRefused { peer, refusal });
            }
            ControlInput::ConnectionClosed {
                peer,
                error,
                by_peer,
            } => {
                info!(%peer, ?error, "connection closed");
                if let Some(sinks) = self.conns.remove(&peer) {
                    let _ = sinks.events.try_send(if by_peer {
                        ConnectionEvent::ClosedByPeer
                    } else {
                        ConnectionEvent::Closed(error)
                    });
                }
            }
            ControlInput::Announcement { peer, announcement } => {
                let _ = self.agent.handle_announcement(peer, announcement);
            }
        }
    }

    fn publish(&mut self, e: NodeEvent) {
        lock(&self.shared).subscribers.retain(|s| {
            !s.is_closed() && !matches!(s.try_send(e), Err(async_channel::TrySendError::Closed(_)))
        });
    }

    /// Wakes the application for what its inboxes received.
    fn wake_application(&self) {
        self.app.0.wake();
        self.data.0.wake();
    }

    /// Sends one datagram from the node's socket (through the test filter)
    /// or, to a path pinned to a birthday socket (N2), from that socket.
    async fn send_datagram(&mut self, to: SocketAddr, bytes: &[u8]) {
        let pinned = self.spray.pinned_socket(to);
        if pinned.is_none() && self.filter.as_ref().is_some_and(|f| f(to, bytes)) {
            return;
        }
        if pinned.is_some() {
            self.counters.spray_datagrams_sent += 1;
        }
        // The send may have to wait: the application should not.
        self.wake_application();
        let socket = pinned.unwrap_or(&self.socket);
        if let Err(e) = poll_fn(|cx| socket.poll_send_to(cx, bytes, to)).await {
            self.publish(NodeEvent::SocketError {
                op: "send",
                kind: e.kind(),
            });
        }
    }

    /// N2: sends one datagram from socket `index` of birthday attempt
    /// `attempt`, opening it the first time it is named. A socket that
    /// cannot be had (see [`SprayIo::socket_for`]) drops the datagram.
    async fn send_spray(&mut self, attempt: u64, index: u16, to: SocketAddr, bytes: &[u8]) {
        let Some(socket) = self.spray.socket_for(attempt, index, &mut self.counters) else {
            return;
        };
        self.wake_application();
        match poll_fn(|cx| socket.poll_send_to(cx, bytes, to)).await {
            Ok(_) => self.counters.spray_datagrams_sent += 1,
            Err(e) => {
                debug!(attempt, socket = index, %to, error = %e, "birthday socket: send failed");
            }
        }
    }

    /// Sends what the control plane has queued for the socket.
    async fn flush_control(&mut self) {
        let mut out = std::mem::take(&mut self.tx_buf);
        while let Some((to, n)) = self.control.poll_transmit_into(&mut out) {
            self.send_datagram(to, out.get(..n).unwrap_or(&[])).await;
        }
        self.tx_buf = out;
    }

    /// Publishes the snapshot of classification and counters.
    fn snapshot(&self) {
        snapshot(&self.shared, &self.agent, &self.control, self.counters);
    }

    /// Drains the agent in the documented order: transmits, then events.
    ///
    /// The snapshot of classification and counters is published before the
    /// events, so that whoever a reply wakes sees statistics that include
    /// what it is told; after a datagram that made no event (`datagram`) it
    /// may wait until the task stops for a while (returns whether it is
    /// still to be published), so that a flood of datagrams does not take
    /// the lock for each.
    async fn drain(&mut self, datagram: bool) -> bool {
        // The clock is read once, and only when a control message needs it.
        let mut now = None;
        while let Some(t) = self.agent.poll_transmit() {
            match t {
                Transmit::Control {
                    to,
                    channel,
                    payload,
                } => {
                    let now = *now.get_or_insert_with(|| self.now());
                    self.control.send(now, to, channel, payload.as_bytes());
                }
                Transmit::Datagram { to, payload, .. } => {
                    self.send_datagram(to, payload.as_bytes()).await;
                }
                Transmit::Spray {
                    attempt,
                    socket,
                    to,
                    payload,
                } => {
                    self.send_spray(attempt, socket, to, payload.as_bytes())
                        .await;
                }
            }
        }
        self.flush_control().await;
        while let Some((bytes, to)) = self.stun_out.pop_front() {
            self.send_datagram(to, &bytes).await;
        }
        // The snapshot first, so that whoever a reply below wakes sees
        // statistics and classification that include what it is told.
        let mut next = self.agent.poll_event();
        let stale = if next.is_some() || !datagram {
            self.snapshot();
            false
        } else {
            true
        };
        let mut events = false;
        while let Some(e) = next {
            // Every punch outcome, either role, is news for a connection to
            // that peer (S4 upgrades).
            match e {
                Event::PunchSucceeded {
                    peer,
                    punch_id,
                    role,
                    path,
                    method,
                    elapsed,
                } => {
                    let _span = info_span!("punch", %peer, punch_id, ?role).entered();
                    info!(%path, ?method, ?elapsed, "direct path found");
                    let now = self.now();
                    self.control.punch_outcome(now, peer, Ok(path));
                }
                Event::PunchFailed {
                    peer,
                    punch_id,
                    role,
                    error,
                    elapsed,
                } => {
                    let _span = info_span!("punch", %peer, punch_id, ?role).entered();
                    info!(%error, ?elapsed, "no direct path; the relay stays in use");
                    let now = self.now();
                    self.control.punch_outcome(now, peer, Err(error));
                }
                Event::ClassificationChanged { .. } => {
                    let now = self.now();
                    self.control.network_changed(now);
                }
                _ => {}
            }
            match e {
                Event::PunchSucceeded {
                    peer,
                    punch_id,
                    role: Role::Requester,
                    path,
                    method,
                    elapsed,
                } => {
                    if let Some((_, reply)) = self.punches.remove(&punch_id) {
                        let _ = reply.try_send(Ok(PunchOutcome {
                            peer,
                            punch_id,
                            path,
                            method,
                            elapsed,
                        }));
                    }
                    self.current.retain(|_, id| *id != punch_id);
                }
                Event::PunchFailed {
                    punch_id,
                    role: Role::Requester,
                    error,
                    ..
                } => {
                    if let Some((_, reply)) = self.punches.remove(&punch_id) {
                        let _ = reply.try_send(Err(error));
                    }
                    self.current.retain(|_, id| *id != punch_id);
                }
                Event::SweepFinished {
                    generation,
                    outcome,
                } => {
                    self.sweeps.retain(|(g, reply)| {
                        if *g == generation {
                            let _ = reply.try_send(Reclassified::Swept(outcome));
                        }
                        *g != generation
                    });
                }
                Event::ClassificationChanged {
                    class,
                    reflex,
                    profile,
                } => {
                    let now = self.now();
                    self.control.announce(
                        now,
                        Announcement {
                            reflex,
                            class,
                            profile,
                        },
                    );
                }
                Event::ReflexProbed {
                    probe_id, result, ..
                } => {
                    if let Some(reply) = self.probes.remove(&probe_id) {
                        let _ = reply.try_send(result);
                    }
                }
                Event::SprayEnded {
                    peer,
                    attempt,
                    outcome,
                    keep,
                    sent,
                } => {
                    // Before the punch's success that follows: the path is
                    // pinned by the time anything is sent on it.
                    self.spray
                        .end(peer, attempt, outcome, keep, sent, &mut self.counters);
                    // Whoever the punch's success wakes sees the sockets
                    // closed and the path pinned.
                    self.snapshot();
                }
                _ => {}
            }
            self.publish(NodeEvent::Agent(e));
            events = true;
            next = self.agent.poll_event();
        }
        if events {
            // Announcements the events above made.
            self.flush_control().await;
        }
        stale
    }
}

/// Publishes the agent's and the control plane's classification and counters
/// for the node's handle.
fn snapshot<C: ControlPlane>(shared: &SharedRef, agent: &Agent, control: &C, driver: DriverStats) {
    let mut s = lock(shared);
    s.classification = agent.classification();
    s.session_stats = control.session_stats();
    s.path_stats = control.path_stats();
    s.relay_stats = control.relay_stats();
    s.stats = node_stats(agent.stats(), s.path_stats, s.port_mapping);
    s.driver = driver;
}

/// The node's [`Stats`]: the agent's counters, with the driver-maintained
/// upgrade counters (S4) and port-mapping state (P7) filled in.
fn node_stats(agent: Stats, paths: Option<PathStats>, port_mapping: PortMapStats) -> Stats {
    let mut stats = agent;
    if let Some(p) = paths {
        stats.upgrades_attempted = p.upgrades_attempted;
        stats.upgrades_succeeded = p.upgrades_succeeded;
    }
    port_mapping.apply(&mut stats);
    stats
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natrix_portmap::{Instant, Mapping, Protocol};

    fn state(mapping: Option<SocketAddr>, renewals: u64) -> PortMapState {
        PortMapState {
            mapping: mapping.map(|external| Mapping {
                protocol: Protocol::Pcp,
                internal: "192.168.1.2:4000".parse().unwrap(),
                external,
                lifetime: Duration::from_secs(3600),
                granted_at: Instant::ZERO,
            }),
            renewals,
            ..PortMapState::default()
        }
    }

    /// P7: the port mapper's state shows in the node's `Stats`, and a
    /// snapshot of the agent's counters does not wipe it.
    #[test]
    fn p7_the_mapping_shows_in_stats_and_survives_a_snapshot() {
        let external: SocketAddr = "203.0.113.7:4000".parse().unwrap();
        let mut stats = Stats::default();
        stats.punches_attempted = 3;
        PortMapStats::of(&state(Some(external), 2)).apply(&mut stats);
        assert!(stats.port_mapping_active);
        assert_eq!(stats.port_mapping_external, Some(external));
        assert_eq!(stats.port_mapping_renewals, 2);
        assert_eq!(stats.punches_attempted, 3, "the counters are untouched");

        // Every snapshot starts again from the agent's counters, which know
        // nothing of the mapping: it is applied again.
        let s = node_stats(
            Stats::default(),
            None,
            PortMapStats::of(&state(Some(external), 2)),
        );
        assert_eq!(s.port_mapping_external, Some(external));
        assert!(s.port_mapping_active);
        assert_eq!(s.port_mapping_renewals, 2);

        // Lost: inactive, no address, no renewals since an install.
        PortMapStats::of(&state(None, 2)).apply(&mut stats);
        assert!(!stats.port_mapping_active);
        assert_eq!(stats.port_mapping_external, None);
        assert_eq!(stats.port_mapping_renewals, 0);
    }
}
