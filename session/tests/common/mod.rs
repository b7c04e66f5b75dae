//! A small in-memory network of endpoints with virtual time.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use natrix_proto::Instant;
use natrix_session::{
    DropReason, Endpoint, Keypair, MAX_PACKET, PublicKey, Received, SendError, SessionConfig,
    SessionEvent,
};

/// Unix ms at virtual time zero.
pub const WALL0: u64 = 1_700_000_000_000;

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub fn keypair(n: u8) -> Keypair {
    let mut s = [n; 32];
    s[0] = 0x40 | (n & 0x0f);
    Keypair::from_secret(s)
}

#[derive(Debug, Clone)]
pub struct Packet {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
    pub at: Instant,
}

pub struct Node {
    pub ep: Endpoint,
    /// Where the node's socket is (packets to it are delivered here).
    pub addr: SocketAddr,
    /// The source address its packets carry (a NAT may rewrite it).
    pub src: SocketAddr,
    /// Its wall clock is `WALL0 + now + skew_ms`.
    pub skew_ms: i64,
    pub events: Vec<SessionEvent>,
    pub data: Vec<(PublicKey, SocketAddr, u8, Vec<u8>)>,
    pub drops: Vec<DropReason>,
}

impl Node {
    pub fn key(&self) -> PublicKey {
        self.ep.public_key()
    }
}

/// Decides what happens to one packet in flight: `None` drops it, `Some(d)`
/// delivers it after `d`.
pub type Fate = Box<dyn FnMut(&Packet) -> Option<Duration>>;

pub struct Net {
    pub now: Instant,
    pub nodes: Vec<Node>,
    pub flight: Vec<Packet>,
    pub latency: Duration,
    pub fate: Option<Fate>,
    /// Duplication: for a packet that was not dropped, `Some(d)` delivers a
    /// second copy after `d`.
    pub dup: Option<Fate>,
    /// Every datagram sent, in order (for determinism checks).
    pub log: Vec<Packet>,
    /// Datagrams to addresses no node owns.
    pub lost: Vec<Packet>,
}

impl Default for Net {
    fn default() -> Self {
        Self::new()
    }
}

impl Net {
    pub fn new() -> Self {
        Net {
            now: Instant::from_millis(1_000),
            nodes: Vec::new(),
            flight: Vec::new(),
            latency: Duration::from_millis(10),
            fate: None,
            dup: None,
            log: Vec::new(),
            lost: Vec::new(),
        }
    }

    pub fn add(&mut self, key: u8, at: &str, config: SessionConfig, seed: u8) -> usize {
        let a = addr(at);
        self.nodes.push(Node {
            ep: Endpoint::new(keypair(key), config, [seed; 32]),
            addr: a,
            src: a,
            skew_ms: 0,
            events: Vec::new(),
            data: Vec::new(),
            drops: Vec::new(),
        });
        self.nodes.len() - 1
    }

    pub fn wall(&self, i: usize) -> u64 {
        let ms = i128::from(WALL0)
            + i128::from(u64::try_from(self.now.since_origin().as_millis()).unwrap())
            + i128::from(self.nodes[i].skew_ms);
        u64::try_from(ms).unwrap()
    }

    pub fn connect(&mut self, i: usize, j: usize) {
        let (now, wall) = (self.now, self.wall(i));
        let key = self.nodes[j].key();
        let to = self.nodes[j].addr;
        self.nodes[i].ep.connect(now, wall, key, to).unwrap();
    }

    /// Sends from `i` to `j`; a sealed packet goes on the wire at once.
    pub fn send(&mut self, i: usize, j: usize, channel: u8, payload: &[u8]) -> bool {
        let key = self.nodes[j].key();
        let mut out = [0u8; MAX_PACKET];
        let now = self.now;
        match self.nodes[i]
            .ep
            .send(now, &key, channel, payload, &mut out)
            .unwrap()
        {
            Some((to, len)) => {
                self.put(i, to, out[..len].to_vec());
                true
            }
            None => false,
        }
    }

    /// Queues a reliable message from `i` to `j` (sent on the next drain).
    pub fn send_reliable(
        &mut self,
        i: usize,
        j: usize,
        channel: u8,
        payload: &[u8],
    ) -> Result<(), SendError> {
        let key = self.nodes[j].key();
        let now = self.now;
        let r = self.nodes[i].ep.send_reliable(now, &key, channel, payload);
        self.drain();
        r
    }

    /// Puts a datagram from node `i` on the wire.
    pub fn put(&mut self, i: usize, to: SocketAddr, bytes: Vec<u8>) {
        let from = self.nodes[i].src;
        self.inject(from, to, bytes);
    }

    /// Puts an arbitrary datagram on the wire (spoofing allowed).
    pub fn inject(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        let mut p = Packet {
            from,
            to,
            bytes,
            at: self.now,
        };
        self.log.push(p.clone());
        let delay = match self.fate.as_mut() {
            Some(f) => f(&p),
            None => Some(self.latency),
        };
        if let Some(d) = delay {
            let copy = self.dup.as_mut().and_then(|f| f(&p));
            if let Some(d2) = copy {
                let mut q = p.clone();
                q.at = self.now + d2;
                self.flight.push(q);
            }
            p.at = self.now + d;
            self.flight.push(p);
        }
    }

    /// Delivers one datagram to whichever node owns `to` now.
    pub fn deliver(&mut self, p: Packet) -> Option<usize> {
        let Some(j) = self.nodes.iter().position(|n| n.addr == p.to) else {
            self.lost.push(p);
            return None;
        };
        let (now, wall) = (self.now, self.wall(j));
        let node = &mut self.nodes[j];
        match node.ep.handle_datagram(now, wall, p.from, &p.bytes) {
            Received::Data {
                peer,
                from,
                channel,
                payload,
                ..
            } => {
                node.data.push((peer, from, channel, payload.to_vec()));
            }
            Received::Consumed => {}
            Received::Dropped(r) => node.drops.push(r),
        }
        Some(j)
    }

    /// Drains transmits and events of every node.
    pub fn drain(&mut self) {
        let mut out = [0u8; MAX_PACKET];
        for i in 0..self.nodes.len() {
            while let Some((to, len)) = self.nodes[i].ep.poll_transmit(&mut out) {
                self.put(i, to, out[..len].to_vec());
            }
            while let Some(e) = self.nodes[i].ep.poll_event() {
                self.nodes[i].events.push(e);
            }
        }
    }

    fn next_time(&self) -> Option<Instant> {
        let mut t = self.flight.iter().map(|p| p.at).min();
        for n in &self.nodes {
            t = match (t, n.ep.poll_timeout()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        t
    }

    /// Runs the network until `until` (virtual time).
    pub fn run_until(&mut self, until: Instant) {
        self.drain();
        while let Some(t) = self.next_time() {
            if t > until {
                break;
            }
            self.now = self.now.max(t);
            // Deliver due packets in (time, send order) order.
            let mut due: Vec<Packet> = Vec::new();
            let mut rest = Vec::new();
            for p in self.flight.drain(..) {
                if p.at <= self.now {
                    due.push(p)
                } else {
                    rest.push(p)
                }
            }
            self.flight = rest;
            due.sort_by_key(|p| p.at);
            for p in due {
                self.deliver(p);
            }
            for i in 0..self.nodes.len() {
                if self.nodes[i]
                    .ep
                    .poll_timeout()
                    .is_some_and(|d| d <= self.now)
                {
                    let (now, wall) = (self.now, self.wall(i));
                    self.nodes[i].ep.handle_timeout(now, wall);
                }
            }
            self.drain();
        }
        self.now = self.now.max(until);
    }

    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    pub fn up(&self, i: usize, j: usize) -> bool {
        self.nodes[i].ep.session(&self.nodes[j].key()).is_some()
    }

    /// Events of node `i` so far, drained.
    pub fn take_events(&mut self, i: usize) -> Vec<SessionEvent> {
        std::mem::take(&mut self.nodes[i].events)
    }

    pub fn take_data(&mut self, i: usize) -> Vec<(PublicKey, SocketAddr, u8, Vec<u8>)> {
        std::mem::take(&mut self.nodes[i].data)
    }
}

/// Two endpoints with an established session (A dialled B), events drained.
pub fn pair(config: SessionConfig) -> Net {
    let mut net = Net::new();
    net.add(1, "192.0.2.1:4000", config.clone(), 11);
    net.add(2, "198.51.100.2:5000", config, 22);
    net.connect(0, 1);
    net.run_for(Duration::from_millis(500));
    assert!(net.up(0, 1) && net.up(1, 0), "pair did not come up");
    net.take_events(0);
    net.take_events(1);
    net
}

/// Every key gets node id 7: a stand-in for a node-id collision, which the
/// real hash makes infeasible to construct.
pub fn colliding_node_id(_: &PublicKey) -> natrix_proto::NodeId {
    natrix_proto::NodeId(7)
}
