//! The standard two-peer scenario: a coordinator R and a reflex server S on
//! the Internet, peers A and B behind presets, sessions A–R, A–S, B–R, B–S.
//! Both peers classify themselves through their NATs (a real sweep against R
//! and S), announce, and then A asks R for a punch to B.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use natrix_proto::wire::NodeId;
use natrix_proto::{
    Channel, Config, Event, Instant, NatClass, NatProfile, PathMethod, TraversalError,
};
use natrix_session::path::{ChangeReason, PathEvent, PathKind, UpgradeError};
use natrix_session::relay::RelayConfig;

use crate::preset::{Placed, Preset, place};
use crate::world::{HostId, LinkConfig, Realm, World};

/// How a pair ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The pair matrix said Direct and a direct exchange really worked.
    Direct,
    /// A punch confirmed a path, and the path really carries datagrams.
    Punched,
    /// The pair matrix skipped the punch: relay.
    Skipped,
    /// The punch (or the Direct verdict) did not give a working path: relay.
    FailedThenRelay,
}

impl Outcome {
    /// A short name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Direct => "direct",
            Outcome::Punched => "punched",
            Outcome::Skipped => "skipped",
            Outcome::FailedThenRelay => "relay",
        }
    }
}

/// One pair run's parameters.
#[derive(Clone, Debug)]
pub struct PairScenario {
    /// A's NAT.
    pub a: Preset,
    /// B's NAT.
    pub b: Preset,
    /// Datagram impairments.
    pub link: LinkConfig,
    /// One-way access latency of A, B and the servers.
    pub latency: [Duration; 3],
    /// The peers' configuration.
    pub config: Config,
    /// Record a transcript, from the world's creation (dials, handshakes and
    /// classification included).
    pub record: bool,
    /// Drop every `PunchAck` before it is sealed: the trains then run to
    /// the deadline, as the original protocol's did (for comparing R10).
    pub drop_acks: bool,
    /// The hosts' wall clocks.
    pub clocks: Clocks,
    /// C8: the [`NatProfile`]s A and B announce after classifying, which
    /// the pair decision then reads
    /// ([`pair_action_with_profiles`](natrix_proto::pair_action_with_profiles));
    /// `None`, the baseline matrix decides. [`Self::with_profiles`] sets
    /// what a behaviour discovery finds behind the presets.
    pub profiles: Option<(NatProfile, NatProfile)>,
}

/// The wall clocks of the standard topology: each host's skew from true time
/// (see [`World::set_clock_skew`]), and whether the sessions' offset
/// estimates (measured by the real handshake and clock ping) reach the agents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clocks {
    /// Peer A's skew, ms.
    pub a_ms: i64,
    /// Peer B's skew, ms.
    pub b_ms: i64,
    /// The coordinator R's skew, ms.
    pub r_ms: i64,
    /// The reflex server S's skew, ms.
    pub s_ms: i64,
    /// The sessions' estimates of each other's clock offset reach the agents
    /// ([`World::clock_offset_estimates`]).
    pub offset_estimates: bool,
}

impl Default for Clocks {
    /// Every clock right, estimates on.
    fn default() -> Self {
        Clocks {
            a_ms: 0,
            b_ms: 0,
            r_ms: 0,
            s_ms: 0,
            offset_estimates: true,
        }
    }
}

/// What one run produced.
#[derive(Debug)]
pub struct PairResult {
    /// The outcome.
    pub outcome: Outcome,
    /// The classes A and B classified themselves as.
    pub classes: (NatClass, NatClass),
    /// Time from `request_punch` to A's success event.
    pub time_to_direct: Option<Duration>,
    /// Keep-alives A and B sent for this punch: every datagram of their
    /// agents ([`Host::datagrams_sent`](crate::world::Host::datagrams_sent)),
    /// N2's probes and one-per-socket openings included.
    pub keepalives: u64,
    /// A's failure, if any.
    pub error: Option<TraversalError>,
    /// Number of terminal events A emitted for the punch (must be 1 unless skipped).
    pub terminal_events: usize,
    /// The world, for inspection.
    pub world: World,
}

/// The standard topology, built and classified. Every host's node id is
/// its key's, and the keys derive from the world seed: read them with the
/// `*_id` methods (or [`World::id`]).
#[derive(Debug)]
pub struct Topology {
    /// The world.
    pub world: World,
    /// Coordinator.
    pub r: HostId,
    /// Reflex server.
    pub s: HostId,
    /// Peer A.
    pub a: Placed,
    /// Peer B.
    pub b: Placed,
}

impl Topology {
    /// The coordinator's node id.
    #[must_use]
    pub fn r_id(&self) -> NodeId {
        self.world.id(self.r)
    }

    /// The reflex server's node id.
    #[must_use]
    pub fn s_id(&self) -> NodeId {
        self.world.id(self.s)
    }

    /// Peer A's node id.
    #[must_use]
    pub fn a_id(&self) -> NodeId {
        self.world.id(self.a.host)
    }

    /// Peer B's node id.
    #[must_use]
    pub fn b_id(&self) -> NodeId {
        self.world.id(self.b.host)
    }
}

/// The servers run the scenario's configuration (so a coordinator's fire
/// lead follows it), without sweeps of their own and with a generous
/// per-requester budget.
fn server_config(config: &Config) -> Config {
    config
        .to_builder()
        .auto_reclassify(false)
        .coordinator_requests_per_window(1_000)
        .build()
        .expect("valid server config")
}

/// How long the standard topology warms up at least: on a clean link the
/// sessions are up and both peers classified well within it.
pub const WARM_UP: Duration = Duration::from_secs(1);

/// How long the warm-up may go on past [`WARM_UP`] while a lossy link keeps
/// a session or a classification from completing.
pub const WARM_UP_MAX: Duration = Duration::from_secs(30);

/// Builds R (a relay too, with the default quotas), S, A (slot 1) and B (slot 2), has A and B dial R and S (real
/// handshakes through their NATs) and lets both peers classify: see
/// [`warm_up`]. Every clock is right.
#[must_use]
pub fn topology(
    seed: u64,
    a: Preset,
    b: Preset,
    link: LinkConfig,
    latency: [Duration; 3],
    config: &Config,
) -> Topology {
    topology_with_clocks(seed, a, b, link, latency, config, Clocks::default())
}

/// [`topology`] with the hosts' wall clocks set by `clocks` before the
/// sessions come up.
#[must_use]
pub fn topology_with_clocks(
    seed: u64,
    a: Preset,
    b: Preset,
    link: LinkConfig,
    latency: [Duration; 3],
    config: &Config,
    clocks: Clocks,
) -> Topology {
    build(seed, a, b, link, latency, config, clocks, false)
}

/// [`topology_with_clocks`], recording a transcript from the start when
/// `record` is set.
#[allow(clippy::too_many_arguments)]
fn build(
    seed: u64,
    a: Preset,
    b: Preset,
    link: LinkConfig,
    latency: [Duration; 3],
    config: &Config,
    clocks: Clocks,
    record: bool,
) -> Topology {
    let mut world = World::new(seed);
    if record {
        world.record();
    }
    world.link = link;
    world.clock_offset_estimates = clocks.offset_estimates;
    let server = |last: u8| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, last)), 3478);
    let r = world.add_host(
        "R",
        Realm::Internet,
        server(10),
        latency[2],
        server_config(config),
        seed ^ 1,
    );
    let s = world.add_host(
        "S",
        Realm::Internet,
        server(20),
        latency[2],
        server_config(config),
        seed ^ 2,
    );
    world.enable_relay(r, RelayConfig::default());
    for h in [r, s] {
        let addr = world.host(h).addr;
        world
            .agent(h)
            .set_local_classification(NatClass::Open, addr);
    }
    let pa = place(&mut world, a, 1, "A", latency[0], config.clone(), seed ^ 3);
    let pb = place(&mut world, b, 2, "B", latency[1], config.clone(), seed ^ 4);
    for (h, ms) in [
        (r, clocks.r_ms),
        (s, clocks.s_ms),
        (pa.host, clocks.a_ms),
        (pb.host, clocks.b_ms),
    ] {
        if ms != 0 {
            world.set_clock_skew(h, ms);
        }
    }
    for peer in [pa.host, pb.host] {
        world.connect(peer, r);
        world.connect(peer, s);
    }
    warm_up(&mut world, &[pa.host, pb.host], &[r, s]);
    Topology {
        world,
        r,
        s,
        a: pa,
        b: pb,
    }
}

/// Runs `world` for [`WARM_UP`], then — only while some session between a
/// peer in `peers` and a server in `servers` is not up on both ends, or some
/// peer has not classified itself — on in 100 ms steps, at most
/// [`WARM_UP_MAX`] more. A peer whose handshake to a server gave up dials
/// again, as a driver redials its coordinators; a peer whose sweep ended
/// without a classification (its reflex answers came too late) starts a new
/// one once its sessions are up ([`Agent::reclassify`](natrix_proto::Agent::reclassify),
/// as an application would, instead of waiting for the 60 s
/// `reclassify_interval`). On a clean link nothing happens after the first
/// second; on a lossy one (session packets are impaired too) a handshake may
/// need its 1 s and 2 s retries, or a redial, and a sweep's reflex requests
/// and answers their retransmissions.
pub fn warm_up(world: &mut World, peers: &[HostId], servers: &[HostId]) {
    world.run_for(WARM_UP);
    let give_up = world.now() + WARM_UP_MAX;
    loop {
        let mut ready = true;
        for &p in peers {
            let mut sessions = true;
            for &s in servers {
                if world.connected(p, s) && world.connected(s, p) {
                    continue;
                }
                sessions = false;
                let dialling = world.endpoint(p).peer_by_node_id(world.id(s)).is_some();
                if !dialling {
                    world.connect(p, s);
                }
            }
            let agent = world.agent(p);
            let classified = agent.classification().is_some();
            if !classified && sessions && agent.running_sweep().is_none() {
                let now = world.now();
                let _ = world.agent(p).reclassify(now);
                world.drain(p);
            }
            ready &= sessions && classified;
        }
        if ready || world.now() >= give_up {
            return;
        }
        world.run_for(Duration::from_millis(100));
    }
}

impl PairScenario {
    /// A pair with default link (no loss), 10 ms access latencies and the
    /// default configuration.
    #[must_use]
    pub fn new(a: Preset, b: Preset) -> Self {
        PairScenario {
            a,
            b,
            link: LinkConfig::default(),
            latency: [Duration::from_millis(10); 3],
            config: Config::default(),
            record: false,
            drop_acks: false,
            clocks: Clocks::default(),
            profiles: None,
        }
    }

    /// The same pair, both peers announcing their preset's
    /// [`Preset::profile`] (C8).
    #[must_use]
    pub fn with_profiles(mut self) -> Self {
        self.profiles = Some((self.a.profile(), self.b.profile()));
        self
    }

    /// Runs the scenario with `seed`.
    #[must_use]
    pub fn run(&self, seed: u64) -> PairResult {
        let t = build(
            seed,
            self.a,
            self.b,
            self.link,
            self.latency,
            &self.config,
            self.clocks,
            self.record,
        );
        let (r_id, a_id, b_id) = (t.r_id(), t.a_id(), t.b_id());
        let Topology {
            mut world, a, b, ..
        } = t;
        if self.drop_acks {
            world.control_filter = Some(Box::new(|_, _, channel, bytes| {
                channel == Channel::Rendezvous && bytes.first() == Some(&0x03)
            }));
        }
        let (a, b) = (a.host, b.host);
        if let Some((pa, pb)) = self.profiles {
            for (h, p) in [(a, pa), (b, pb)] {
                world.agent(h).set_local_profile(Some(p));
                world.drain(h);
            }
        }
        let classes = (world.agent(a).nat_class(), world.agent(b).nat_class());
        let sent_before = world.host(a).datagrams_sent + world.host(b).datagrams_sent;
        let t0 = world.now();
        let started = world.agent(a).request_punch(t0, b_id, r_id);
        let mut result = PairResult {
            outcome: Outcome::Skipped,
            classes,
            time_to_direct: None,
            keepalives: 0,
            error: None,
            terminal_events: 0,
            world: World::new(0),
        };
        let punch_id = match started {
            Ok(id) => id,
            Err(e) => {
                result.error = Some(e);
                result.outcome = if matches!(e, TraversalError::Skipped { .. }) {
                    Outcome::Skipped
                } else {
                    Outcome::FailedThenRelay
                };
                result.world = world;
                return result;
            }
        };
        world.run_for(self.config.punch_deadline() + Duration::from_millis(500));
        result.keepalives =
            world.host(a).datagrams_sent + world.host(b).datagrams_sent - sent_before;
        let terminal: Vec<Event> = world
            .host(a)
            .events
            .iter()
            .filter(|(t, _)| *t >= t0)
            .map(|(_, e)| *e)
            .filter(|e| {
                matches!(e, Event::PunchSucceeded { punch_id: p, .. } | Event::PunchFailed { punch_id: p, .. } if *p == punch_id)
            })
            .collect();
        result.terminal_events = terminal.len();
        match terminal.first() {
            Some(Event::PunchSucceeded {
                path,
                method,
                elapsed,
                ..
            }) => {
                result.time_to_direct = Some(*elapsed);
                // B's view of the path: its own success event, or (for a
                // Direct verdict) A's announced reflex.
                let b_path = world
                    .host(b)
                    .events
                    .iter()
                    .rev()
                    .find_map(|(_, e)| match e {
                        Event::PunchSucceeded { peer, path, .. } if *peer == a_id => Some(*path),
                        _ => None,
                    })
                    .or_else(|| world.agent(a).classification().map(|c| c.reflex));
                let works = b_path.is_some_and(|bp| verify_path(&mut world, a, *path, b, bp));
                result.outcome = match (works, method) {
                    (true, PathMethod::Direct) => Outcome::Direct,
                    (true, _) => Outcome::Punched,
                    (false, _) => Outcome::FailedThenRelay,
                };
            }
            Some(Event::PunchFailed { error, .. }) => {
                result.error = Some(*error);
                result.outcome = Outcome::FailedThenRelay;
            }
            _ => result.outcome = Outcome::FailedThenRelay,
        }
        result.world = world;
        result
    }
}

/// Whether application datagrams really cross between `a` (sending to
/// `a_to`) and `b` (sending to `b_to`): each side sends eight times, 100 ms
/// apart (later sends pass filters the counterpart's sends opened, and a lossy
/// link gets several chances).
pub fn verify_path(
    world: &mut World,
    a: HostId,
    a_to: SocketAddr,
    b: HostId,
    b_to: SocketAddr,
) -> bool {
    let before = (world.host(a).app_inbox.len(), world.host(b).app_inbox.len());
    for _ in 0..8 {
        world.send_datagram(a, a_to, b"natrix-sim path check");
        world.send_datagram(b, b_to, b"natrix-sim path check");
        world.run_for(Duration::from_millis(100));
    }
    world.host(a).app_inbox.len() > before.0 && world.host(b).app_inbox.len() > before.1
}

// ----------------------------------------------------------- connections

/// Application traffic on one connection: both ends send a numbered
/// datagram every `interval` (an end sends only once its side of the
/// connection exists), and the delivered datagrams are checked against what
/// was sent.
#[derive(Clone, Debug)]
pub struct Traffic {
    /// One end (the dialler).
    pub a: HostId,
    /// The other end.
    pub b: HostId,
    /// Time between two datagrams of one end.
    pub interval: Duration,
    /// Datagram size (at least 8: the sequence number).
    pub size: usize,
    /// What each end sent: (sequence number, time); `[0]` is `a`'s.
    pub sent: [Vec<(u64, Instant)>; 2],
}

/// What a [`Traffic`] run delivered, per direction (`[0]`: `a` → `b`).
#[derive(Clone, Debug, Default)]
pub struct TrafficReport {
    /// Datagrams sent.
    pub sent: [usize; 2],
    /// Distinct datagrams delivered.
    pub delivered: [usize; 2],
    /// Datagrams delivered more than once (must be zero).
    pub duplicates: [usize; 2],
    /// Delivered datagrams by the kind of path that brought them.
    pub by_kind: [BTreeMap<&'static str, usize>; 2],
    /// The longest run of consecutive lost datagrams, as the time between
    /// the first and the last one's sending (zero: nothing lost).
    pub loss_window: [Duration; 2],
    /// Lost datagrams (sent at least a second before the report).
    pub lost: [usize; 2],
    /// When the first datagram arrived.
    pub first_arrival: [Option<Instant>; 2],
    /// Mean one-way latency (sending to delivery) of the datagrams each
    /// kind of path delivered: `[direction][0]` direct, `[direction][1]`
    /// relayed.
    pub mean_latency: [[Option<Duration>; 2]; 2],
}

impl Traffic {
    /// Traffic between `a` and `b`, one 64-byte datagram every `interval`
    /// each way.
    #[must_use]
    pub fn new(a: HostId, b: HostId, interval: Duration) -> Self {
        Traffic {
            a,
            b,
            interval,
            size: 64,
            sent: [Vec::new(), Vec::new()],
        }
    }

    /// Sends from both ends every `interval` while running `world` for `d`.
    pub fn run(&mut self, world: &mut World, d: Duration) {
        let until = world.now() + d;
        while world.now() < until {
            self.send_once(world);
            let step = self
                .interval
                .min(until.saturating_duration_since(world.now()));
            world.run_for(step);
        }
    }

    /// One datagram from each end that has a connection.
    pub fn send_once(&mut self, world: &mut World) {
        for (i, (from, to)) in [(self.a, self.b), (self.b, self.a)].into_iter().enumerate() {
            if world.conn_info(from, to).is_none() {
                continue;
            }
            let seq = self.sent[i].len() as u64;
            let mut bytes = vec![0u8; self.size.max(8)];
            bytes[..8].copy_from_slice(&seq.to_be_bytes());
            let now = world.now();
            if world.conn_send(from, to, &bytes) {
                self.sent[i].push((seq, now));
            }
        }
    }

    /// When datagram `seq` of direction `dir` (`0`: a → b) was sent.
    #[must_use]
    pub fn sent_at(&self, dir: usize, seq: u64) -> Option<Instant> {
        let at = self.sent.get(dir)?.get(usize::try_from(seq).ok()?)?;
        (at.0 == seq).then_some(at.1)
    }

    /// Checks what arrived against what was sent.
    #[must_use]
    pub fn report(&self, world: &World) -> TrafficReport {
        let mut r = TrafficReport::default();
        let now = world.now();
        for (i, (from, to)) in [(self.a, self.b), (self.b, self.a)].into_iter().enumerate() {
            let from_id = world.id(from);
            let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
            let mut latency = [(Duration::ZERO, 0u32); 2];
            for d in world
                .host(to)
                .conns
                .inbox
                .iter()
                .filter(|d| d.from == from_id)
            {
                let Some(seq) = d
                    .bytes
                    .get(..8)
                    .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
                else {
                    continue;
                };
                *seen.entry(seq).or_default() += 1;
                *r.by_kind[i].entry(kind_name(d.kind)).or_default() += 1;
                if let Some(&(_, sent_at)) =
                    usize::try_from(seq).ok().and_then(|s| self.sent[i].get(s))
                {
                    let k = usize::from(d.kind == PathKind::Relayed);
                    latency[k].0 += d.at.saturating_duration_since(sent_at);
                    latency[k].1 += 1;
                }
                if r.first_arrival[i].is_none() {
                    r.first_arrival[i] = Some(d.at);
                }
            }
            for (k, (sum, n)) in latency.into_iter().enumerate() {
                r.mean_latency[i][k] = (n > 0).then(|| sum / n);
            }
            r.sent[i] = self.sent[i].len();
            r.delivered[i] = seen.len();
            r.duplicates[i] = seen.values().filter(|&&n| n > 1).count();
            let mut run: Option<(Instant, Instant)> = None;
            let mut worst = Duration::ZERO;
            for &(seq, at) in &self.sent[i] {
                let settled = now.saturating_duration_since(at) >= Duration::from_secs(1);
                if seen.contains_key(&seq) || !settled {
                    run = None;
                    continue;
                }
                r.lost[i] += 1;
                let (first, _) = *run.get_or_insert((at, at));
                run = Some((first, at));
                worst = worst.max(at.saturating_duration_since(first));
            }
            r.loss_window[i] = worst;
        }
        r
    }
}

fn kind_name(k: PathKind) -> &'static str {
    match k {
        PathKind::Direct => "direct",
        PathKind::Relayed => "relayed",
    }
}

/// One connection's first seconds, as the matrix example reports them.
#[derive(Debug)]
pub struct ConnectionRun {
    /// Time from opening to the first datagram delivered, each way (`[0]`:
    /// A → B).
    pub first_datagram: [Option<Duration>; 2],
    /// Time from opening until A's connection moved to a direct path.
    pub time_to_direct: Option<Duration>,
    /// The path each end is on at the end.
    pub kinds: (Option<PathKind>, Option<PathKind>),
    /// Why A's last upgrade failed, if it did.
    pub upgrade_error: Option<UpgradeError>,
    /// The traffic's delivery report.
    pub report: TrafficReport,
    /// The topology, for inspection.
    pub topology: Topology,
}

impl ConnectionRun {
    /// Whether data crossed both ways, on the path the connection ended on.
    #[must_use]
    pub fn exchanged(&self) -> bool {
        let want = match self.kinds.0 {
            Some(PathKind::Direct) => "direct",
            _ => "relayed",
        };
        self.report
            .by_kind
            .iter()
            .all(|k| k.get(want).copied().unwrap_or(0) > 0)
    }
}

/// Builds the standard topology for `a` × `b` (seed `seed`, no loss, 10 ms
/// latencies), opens a connection from A to B through R and exchanges a
/// datagram each way every 20 ms until A's connection is direct and direct
/// datagrams crossed both ways, or (where no punch works) A's first upgrade
/// failed and relayed datagrams crossed both ways; at most `max`.
#[must_use]
pub fn run_connection(a: Preset, b: Preset, seed: u64, max: Duration) -> ConnectionRun {
    connection_run(a, b, seed, max, false)
}

/// [`run_connection`] with both peers announcing their preset's
/// [`Preset::profile`] before the connection opens (C8), so that the
/// upgrade punch decides with the profiles: N1's prediction and N2's
/// birthday attempt run where the pair needs them.
#[must_use]
pub fn run_connection_with_profiles(
    a: Preset,
    b: Preset,
    seed: u64,
    max: Duration,
) -> ConnectionRun {
    connection_run(a, b, seed, max, true)
}

fn connection_run(a: Preset, b: Preset, seed: u64, max: Duration, profiles: bool) -> ConnectionRun {
    let config = Config::default();
    let mut t = topology(
        seed,
        a,
        b,
        LinkConfig::default(),
        [Duration::from_millis(10); 3],
        &config,
    );
    let (ha, hb, r) = (t.a.host, t.b.host, t.r);
    let w = &mut t.world;
    if profiles {
        for (h, p) in [(ha, a.profile()), (hb, b.profile())] {
            w.agent(h).set_local_profile(Some(p));
            w.drain(h);
        }
    }
    let t0 = w.now();
    w.open_connection(ha, hb, r).expect("connection opens");
    let mut traffic = Traffic::new(ha, hb, Duration::from_millis(20));
    let mut time_to_direct = None;
    let give_up = t0 + max;
    while w.now() < give_up {
        traffic.run(w, Duration::from_millis(20));
        if time_to_direct.is_none() {
            time_to_direct = w.host(ha).conns.events.iter().find_map(|(at, e)| match e {
                PathEvent::Changed {
                    reason: ChangeReason::Upgraded,
                    ..
                } => Some(at.saturating_duration_since(t0)),
                _ => None,
            });
        }
        let info = w.conn_info(ha, hb);
        let rep = traffic.report(w);
        let both = |k: &str| {
            rep.by_kind
                .iter()
                .all(|m| m.get(k).copied().unwrap_or(0) > 0)
        };
        let done = match info {
            Some(i) if i.kind == PathKind::Direct => both("direct"),
            Some(i) => i.last_upgrade_error.is_some() && both("relayed"),
            None => false,
        };
        if done {
            break;
        }
    }
    // Let what is in flight land.
    world_settle(w);
    let report = traffic.report(w);
    let first_datagram = report
        .first_arrival
        .map(|t| t.map(|t| t.saturating_duration_since(t0)));
    let kinds = (
        w.conn_info(ha, hb).map(|i| i.kind),
        w.conn_info(hb, ha).map(|i| i.kind),
    );
    let upgrade_error = w.conn_info(ha, hb).and_then(|i| i.last_upgrade_error);
    ConnectionRun {
        first_datagram,
        time_to_direct,
        kinds,
        upgrade_error,
        report,
        topology: t,
    }
}

fn world_settle(w: &mut World) {
    w.run_for(Duration::from_millis(200));
}
