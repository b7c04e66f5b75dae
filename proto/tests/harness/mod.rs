//! A small deterministic in-memory network for driving several agents: per-link
//! latency, a virtual clock, filters, and a transcript of everything sent.
//!
//! No NATs here (that is the simulator's job): every node has one address and
//! a session's source address is the peer's own address.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use natrix_proto::{Agent, Channel, Config, Event, Instant, NatClass, NodeId, Transmit};

/// Wall-clock milliseconds at virtual time zero.
pub const WALL_BASE_MS: u64 = 1_700_000_000_000;
/// A step budget: a runaway scenario fails loudly instead of hanging.
const MAX_STEPS: usize = 200_000;

#[derive(Clone, Debug)]
pub enum Packet {
    Control {
        from: NodeId,
        to: NodeId,
        channel: Channel,
        bytes: Vec<u8>,
    },
    Datagram {
        src: SocketAddr,
        dst: SocketAddr,
        bytes: Vec<u8>,
    },
}

/// A datagram that left some node, whether or not anyone received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    pub at: Instant,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub bytes: Vec<u8>,
}

pub struct Node {
    pub agent: Agent,
    pub addr: SocketAddr,
    pub events: Vec<(Instant, Event)>,
}

type Filter = Box<dyn FnMut(&Packet) -> bool>;

pub struct Net {
    pub now: Instant,
    pub nodes: BTreeMap<NodeId, Node>,
    queue: Vec<(Instant, u64, Packet)>,
    seq: u64,
    pub default_latency: Duration,
    latency: BTreeMap<(NodeId, NodeId), Duration>,
    /// Returns true to drop a packet in flight.
    pub filter: Option<Filter>,
    pub transcript: String,
    pub sent: Vec<Sent>,
    /// Every control message sent: (time, from, to, channel, bytes).
    pub controls: Vec<(Instant, NodeId, NodeId, Channel, Vec<u8>)>,
    /// `(from, to) → addr`: the session source address `to` sees for `from`
    /// (default: `from`'s own address). Stands in for a NAT's mapping.
    pub seen_as: BTreeMap<(NodeId, NodeId), SocketAddr>,
    steps: usize,
}

pub fn addr_of(id: NodeId) -> SocketAddr {
    SocketAddr::new(
        std::net::Ipv4Addr::new(198, 51, 100, id.0 as u8).into(),
        4000 + id.0 as u16,
    )
}

impl Net {
    pub fn new() -> Self {
        Net {
            now: Instant::ZERO,
            nodes: BTreeMap::new(),
            queue: Vec::new(),
            seq: 0,
            default_latency: Duration::from_millis(10),
            latency: BTreeMap::new(),
            filter: None,
            transcript: String::new(),
            sent: Vec::new(),
            controls: Vec::new(),
            seen_as: BTreeMap::new(),
            steps: 0,
        }
    }

    pub fn wall_ms(&self) -> u64 {
        WALL_BASE_MS + self.now.as_nanos() / 1_000_000
    }

    /// Adds node `id` at `addr_of(id)` with `config` and `seed`.
    pub fn add(&mut self, id: u64, config: Config, seed: u64) -> NodeId {
        self.add_at(id, addr_of(NodeId(id)), addr_of(NodeId(id)), config, seed)
    }

    /// Adds node `id` reachable at `addr`, its socket bound at `bind`.
    pub fn add_at(
        &mut self,
        id: u64,
        addr: SocketAddr,
        bind: SocketAddr,
        config: Config,
        seed: u64,
    ) -> NodeId {
        let id = NodeId(id);
        self.nodes.insert(
            id,
            Node {
                agent: Agent::new(id, bind, config, seed),
                addr,
                events: Vec::new(),
            },
        );
        id
    }

    /// The session source address `to` sees for `from`.
    pub fn session_addr(&self, from: NodeId, to: NodeId) -> SocketAddr {
        self.seen_as
            .get(&(from, to))
            .copied()
            .unwrap_or_else(|| self.nodes[&from].addr)
    }

    pub fn agent(&mut self, id: NodeId) -> &mut Agent {
        &mut self.nodes.get_mut(&id).expect("node").agent
    }

    /// `request_punch` on node `a` at the current virtual time.
    pub fn punch(
        &mut self,
        a: NodeId,
        target: NodeId,
        coordinator: NodeId,
    ) -> Result<u32, natrix_proto::TraversalError> {
        let now = self.now;
        self.agent(a).request_punch(now, target, coordinator)
    }

    /// The punch events (success and failure) node `id` emitted.
    pub fn events(&self, id: NodeId) -> Vec<Event> {
        self.nodes[&id]
            .events
            .iter()
            .map(|(_, e)| *e)
            .filter(|e| matches!(e, Event::PunchSucceeded { .. } | Event::PunchFailed { .. }))
            .collect()
    }

    /// When node `id` emitted each of its punch events.
    pub fn punch_event_times(&self, id: NodeId) -> Vec<Instant> {
        self.nodes[&id]
            .events
            .iter()
            .filter(|(_, e)| matches!(e, Event::PunchSucceeded { .. } | Event::PunchFailed { .. }))
            .map(|(t, _)| *t)
            .collect()
    }

    /// Every event node `id` emitted, with its time.
    pub fn all_events(&self, id: NodeId) -> Vec<(Instant, Event)> {
        self.nodes[&id].events.clone()
    }

    /// Sets the one-way latency in both directions between `a` and `b`.
    pub fn set_latency(&mut self, a: NodeId, b: NodeId, d: Duration) {
        self.latency.insert((a, b), d);
        self.latency.insert((b, a), d);
    }

    fn latency(&self, a: NodeId, b: NodeId) -> Duration {
        *self.latency.get(&(a, b)).unwrap_or(&self.default_latency)
    }

    fn node_at(&self, addr: SocketAddr) -> Option<NodeId> {
        self.nodes
            .iter()
            .find(|(_, n)| n.addr == addr)
            .map(|(id, _)| *id)
    }

    /// Sessions between every pair in `ids`, with RTT estimates.
    pub fn connect_all(&mut self, ids: &[NodeId]) {
        for &a in ids {
            for &b in ids {
                if a != b {
                    let addr = self.session_addr(b, a);
                    let rtt = self.latency(a, b) * 2;
                    let ag = self.agent(a);
                    ag.handle_session_up(b, addr).unwrap();
                    ag.handle_rtt(b, rtt).unwrap();
                }
            }
        }
    }

    /// Every node in `ids` publishes (its address, `class`) and announces it to
    /// the others.
    pub fn announce_all(&mut self, ids: &[NodeId], class: NatClass) {
        for &a in ids {
            let addr = self.nodes[&a].addr;
            self.agent(a).set_local_classification(class, addr);
            for &b in ids {
                if a != b {
                    self.agent(b)
                        .handle_peer_announcement(a, addr, class)
                        .unwrap();
                }
            }
        }
    }

    fn push(&mut self, at: Instant, p: Packet) {
        self.seq += 1;
        self.queue.push((at, self.seq, p));
    }

    /// Queues a control message as if `from` sent it on its session to `to`.
    pub fn inject_control(&mut self, from: NodeId, to: NodeId, channel: Channel, bytes: &[u8]) {
        let at = self.now + self.latency(from, to);
        self.push(
            at,
            Packet::Control {
                from,
                to,
                channel,
                bytes: bytes.to_vec(),
            },
        );
    }

    /// Queues a raw datagram from `src` to `dst`, arriving after `delay`.
    pub fn inject_datagram(
        &mut self,
        src: SocketAddr,
        dst: SocketAddr,
        bytes: &[u8],
        delay: Duration,
    ) {
        let at = self.now + delay;
        self.push(
            at,
            Packet::Datagram {
                src,
                dst,
                bytes: bytes.to_vec(),
            },
        );
    }

    /// Drains one node's outputs into the network.
    pub fn drain(&mut self, id: NodeId) {
        let now = self.now;
        loop {
            let node = self.nodes.get_mut(&id).expect("node");
            let Some(t) = node.agent.poll_transmit() else {
                break;
            };
            let _ = writeln!(self.transcript, "{:?} {id} {t:?}", now);
            match t {
                Transmit::Control {
                    to,
                    channel,
                    payload,
                } => {
                    let at = now + self.latency(id, to);
                    self.controls
                        .push((now, id, to, channel, payload.as_bytes().to_vec()));
                    self.push(
                        at,
                        Packet::Control {
                            from: id,
                            to,
                            channel,
                            bytes: payload.as_bytes().to_vec(),
                        },
                    );
                }
                Transmit::Spray { .. } => {
                    panic!("the harness has no NATs and runs no birthday punch: {t:?}")
                }
                Transmit::Datagram { local, to, payload } => {
                    self.sent.push(Sent {
                        at: now,
                        src: local,
                        dst: to,
                        bytes: payload.as_bytes().to_vec(),
                    });
                    let lat = match self.node_at(to) {
                        Some(dst) => self.latency(id, dst),
                        None => self.default_latency,
                    };
                    self.push(
                        now + lat,
                        Packet::Datagram {
                            src: local,
                            dst: to,
                            bytes: payload.as_bytes().to_vec(),
                        },
                    );
                }
            }
        }
        let node = self.nodes.get_mut(&id).expect("node");
        while let Some(e) = node.agent.poll_event() {
            let _ = writeln!(self.transcript, "{:?} {id} {e:?}", now);
            node.events.push((now, e));
        }
    }

    pub fn drain_all(&mut self) {
        let ids: Vec<_> = self.nodes.keys().copied().collect();
        for id in ids {
            self.drain(id);
        }
    }

    fn deliver(&mut self, p: Packet) {
        if let Some(f) = self.filter.as_mut() {
            if f(&p) {
                let _ = writeln!(self.transcript, "{:?} dropped {p:?}", self.now);
                return;
            }
        }
        let now = self.now;
        let wall = self.wall_ms();
        match p {
            Packet::Control {
                from,
                to,
                channel,
                bytes,
            } => {
                let session_addr = self.session_addr(from, to);
                if let Some(node) = self.nodes.get_mut(&to) {
                    let _ =
                        node.agent
                            .handle_control(now, wall, from, session_addr, channel, &bytes);
                    self.drain(to);
                }
            }
            Packet::Datagram { src, dst, bytes } => {
                if let Some(id) = self.node_at(dst) {
                    let node = self.nodes.get_mut(&id).expect("node");
                    let local = node.addr;
                    let _ = node.agent.handle_datagram(now, local, src, &bytes);
                    self.drain(id);
                }
            }
        }
    }

    /// The next instant anything happens.
    fn next_time(&self) -> Option<Instant> {
        let q = self.queue.iter().map(|(t, _, _)| *t).min();
        let timers = self
            .nodes
            .values()
            .filter_map(|n| n.agent.poll_timeout())
            .min();
        natrix_proto::time::earliest(q, timers)
    }

    /// Runs until `until` (inclusive) or until nothing is left to do.
    pub fn run_until(&mut self, until: Instant) {
        self.drain_all();
        while let Some(t) = self.next_time() {
            if t > until {
                break;
            }
            self.steps += 1;
            assert!(self.steps < MAX_STEPS, "runaway scenario");
            self.now = self.now.max(t);
            // Packets due now, in send order.
            self.queue.sort_by_key(|(t, s, _)| (*t, *s));
            while self.queue.first().is_some_and(|(t, _, _)| *t <= self.now) {
                let (_, _, p) = self.queue.remove(0);
                self.deliver(p);
            }
            let now = self.now;
            let due: Vec<_> = self
                .nodes
                .iter()
                .filter(|(_, n)| n.agent.poll_timeout().is_some_and(|t| t <= now))
                .map(|(id, _)| *id)
                .collect();
            for id in due {
                self.agent(id).handle_timeout(now);
                self.drain(id);
            }
        }
        self.now = self.now.max(until);
    }

    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// Datagrams ever addressed to `addr`'s IP.
    pub fn sent_to_ip(&self, ip: std::net::IpAddr) -> usize {
        self.sent.iter().filter(|s| s.dst.ip() == ip).count()
    }
}

/// The default configuration without automatic classification sweeps, for
/// scenarios that set each node's class by hand.
pub fn quiet() -> Config {
    Config::builder()
        .auto_reclassify(false)
        .build()
        .expect("valid")
}

/// Three nodes A=1, B=2, R=3, all connected and announced as `class`.
pub fn trio(config: Config, class: NatClass) -> (Net, NodeId, NodeId, NodeId) {
    let mut net = Net::new();
    let a = net.add(1, config.clone(), 11);
    let b = net.add(2, config.clone(), 22);
    let r = net.add(3, config, 33);
    net.connect_all(&[a, b, r]);
    net.announce_all(&[a, b, r], class);
    (net, a, b, r)
}

pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

// ------------------------------------------------------------ issue #11 helpers

/// The terminal events of punch `punch` among `events`.
pub fn terminal(events: &[Event], punch: u32) -> Vec<Event> {
    events
        .iter()
        .filter(|e| match e {
            Event::PunchSucceeded { punch_id, .. } | Event::PunchFailed { punch_id, .. } => {
                *punch_id == punch
            }
            _ => false,
        })
        .copied()
        .collect()
}

/// The errors of every `PunchFailed` among `events`.
pub fn failed_with(events: &[Event]) -> Vec<natrix_proto::TraversalError> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::PunchFailed { error, .. } => Some(*error),
            _ => None,
        })
        .collect()
}

/// The kind byte of a rendezvous-channel control message.
pub fn rendezvous_kind(p: &Packet) -> Option<u8> {
    match p {
        Packet::Control {
            channel: Channel::Rendezvous,
            bytes,
            ..
        } => bytes.first().copied(),
        _ => None,
    }
}

/// Encodes a rendezvous message.
pub fn encode(m: natrix_proto::wire::RendezvousMessage) -> Vec<u8> {
    let (b, n) = m.to_bytes();
    b[..n].to_vec()
}

/// Nodes `ids` (seeded by id), all connected and announced as `class`, after
/// their sessions' natrix hellos were exchanged (so each knows the others
/// speak natrix).
pub fn mesh(ids: &[u64], config: Config, class: NatClass) -> (Net, Vec<NodeId>) {
    let mut net = Net::new();
    let ids: Vec<NodeId> = ids
        .iter()
        .map(|&i| net.add(i, config.clone(), i * 11))
        .collect();
    net.connect_all(&ids);
    net.announce_all(&ids, class);
    net.run_for(Duration::from_millis(25));
    (net, ids)
}

/// Control messages `from` sent to `to` on `channel` since `since`.
pub fn controls_between(
    net: &Net,
    from: NodeId,
    to: NodeId,
    channel: Channel,
    since: Instant,
) -> Vec<Vec<u8>> {
    net.controls
        .iter()
        .filter(|(at, f, t, c, _)| *at >= since && *f == from && *t == to && *c == channel)
        .map(|(_, _, _, _, b)| b.clone())
        .collect()
}
