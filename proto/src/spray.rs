//! Bounded spraying for NATs that allocate ports at random (N2, N3): the
//! caps every birthday-style punch runs under, as a sans-IO machine.
//!
//! A birthday punch has two sides. The *hard* side, behind a NAT that gives
//! each new mapping a random port, opens many local sockets and sends one
//! datagram from each toward the easy side's reflex: each makes a mapping
//! (and opens its filter for exactly that reflex). The *easy* side, whose
//! reflex is stable, sends probes from that reflex to random ports of the
//! hard side's IP. A probe that lands on one of the hard side's mappings
//! gets through; with `n` mappings among `N` possible ports and `k`
//! distinct probes, that happens with probability `1 − C(N−n, k) / C(N, k)`,
//! about `1 − e^(−nk/N)`: 256 sockets and 256 probes over the 64,512 ports
//! above 1023 give 64 %, 512 probes 87 % (`docs/nat-matrix.md`).
//!
//! This module decides nothing about tokens or paths — the keep-alives it
//! paces are the rendezvous' own (R8 validates them); it holds the caps, so
//! that no input can turn a node into a sprayer:
//!
//! - **N3, the target.** An attempt sprays only the IP it was started with,
//!   and only when that is the peer's authenticated session IP (the caller
//!   passes both; they must be equal and a routable unicast address). No
//!   later input changes an attempt's IP; a success from any other IP is
//!   ignored.
//! - **N2, the volume.** Per attempt: at most [`SprayConfig::max_probes`]
//!   probes (easy side) or [`SprayConfig::sockets`] openings (hard side),
//!   each port at most once, paced at [`SprayConfig::rate`] datagrams per
//!   second, for at most [`SprayConfig::deadline`]. Per peer **and per
//!   IP**: one attempt at a time, and [`SprayConfig::cooldown`] after one
//!   that did not succeed (cancelled ones included, once they sent
//!   anything) — keyed by the IP as well, so that a coordinator inventing
//!   peer ids cannot aim attempt after attempt at one address. In all: at
//!   most [`SprayConfig::max_concurrent`] attempts.
//! - **Typed ends.** A refused start is a [`SprayRefusal`]; a started
//!   attempt ends exactly once, by its deadline, in a [`SprayOutcome`]
//!   ([`SprayMachine::poll_event`]).
//!
//! The run loop is the crate's: after any `handle_*` or command, drain
//! [`poll_transmit`](SprayMachine::poll_transmit) (which paces by `now`)
//! and [`poll_event`](SprayMachine::poll_event), then sleep until
//! [`poll_timeout`](SprayMachine::poll_timeout).

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use core::net::{IpAddr, SocketAddr};
use core::time::Duration;

use crate::classify::{canonical_ip, is_bogus_destination};
use crate::rng::Rng;
use crate::time::Instant;
use crate::wire::NodeId;

/// The lowest port probed: ports below 1024 are not where NATs put
/// mappings.
pub const FIRST_PORT: u16 = 1024;
/// How many ports a probe can land on ([`FIRST_PORT`]`..=65535`).
pub const PORT_SPACE: u32 = 65_536 - FIRST_PORT as u32;

/// The caps of birthday punching (N2). Every field is a hard limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SprayConfig {
    /// Sockets the hard side opens per attempt (one datagram each).
    pub sockets: u16,
    /// Probes the easy side sends per attempt, to distinct ports.
    pub max_probes: u16,
    /// Datagrams per second per attempt, either side.
    pub rate: u32,
    /// How long an attempt may run.
    pub deadline: Duration,
    /// How long a peer waits after a failed attempt before the next.
    pub cooldown: Duration,
    /// Attempts running at once, over all peers.
    pub max_concurrent: usize,
}

impl Default for SprayConfig {
    /// 256 sockets, 512 probes (87 % against 256 random mappings), 256 per
    /// second (both sides done in 2 s), a 5 s deadline, a 60 s cool-down,
    /// 2 attempts at once.
    fn default() -> Self {
        SprayConfig {
            sockets: 256,
            max_probes: 512,
            rate: 256,
            deadline: Duration::from_secs(5),
            cooldown: Duration::from_secs(60),
            max_concurrent: 2,
        }
    }
}

/// Why an attempt was not started (nothing was sent, no event follows).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SprayRefusal {
    /// N3: the IP to spray is not the peer's authenticated session IP.
    NotThePeersIp {
        /// The IP asked for.
        asked: IpAddr,
        /// The peer's session IP.
        session: IpAddr,
    },
    /// N3: the IP is no unicast destination (unspecified, multicast,
    /// broadcast, `0.0.0.0/8`).
    BogusIp(IpAddr),
    /// An attempt with this peer, or toward this IP, is running.
    AlreadyRunning,
    /// The last attempt with this peer, or toward this IP, failed; the next
    /// may start then.
    CoolingDown {
        /// When the cool-down ends.
        until: Instant,
    },
    /// [`SprayConfig::max_concurrent`] attempts are running.
    TooManyAttempts,
    /// The configuration allows no datagram at all (zero sockets, probes,
    /// rate or deadline).
    Disabled,
}

impl core::fmt::Display for SprayRefusal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SprayRefusal::NotThePeersIp { asked, session } => write!(
                f,
                "spraying refused: {asked} is not the peer's session IP {session}"
            ),
            SprayRefusal::BogusIp(ip) => write!(f, "spraying refused: {ip} is not a unicast IP"),
            SprayRefusal::AlreadyRunning => {
                f.write_str("spraying refused: an attempt with this peer is running")
            }
            SprayRefusal::CoolingDown { .. } => {
                f.write_str("spraying refused: the last attempt with this peer failed recently")
            }
            SprayRefusal::TooManyAttempts => {
                f.write_str("spraying refused: too many attempts running")
            }
            SprayRefusal::Disabled => f.write_str("spraying is switched off by its caps"),
        }
    }
}

/// How a started attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SprayOutcome {
    /// A datagram got through: the path to the peer.
    Succeeded {
        /// The peer's address on the path.
        path: SocketAddr,
    },
    /// Every probe or opening was sent and the deadline passed without a
    /// success.
    Exhausted,
    /// The deadline passed before every datagram was sent (the rate is too
    /// low for the counts).
    DeadlinePassed,
    /// The caller cancelled it.
    Cancelled,
}

/// Which side of a birthday punch an attempt is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpraySide {
    /// Probes random ports of the peer's IP (its own mapping is stable).
    Prober,
    /// Opens many sockets toward the peer's reflex (its NAT picks random
    /// ports).
    Opener,
}

/// One datagram to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SprayTransmit {
    /// The attempt.
    pub attempt: u64,
    /// The peer.
    pub peer: NodeId,
    /// For a [`SpraySide::Opener`], the index of the local socket to send
    /// from (`0..sockets`); `0` for a prober (its one socket).
    pub socket: u16,
    /// The destination: always the attempt's IP.
    pub to: SocketAddr,
}

/// An attempt's end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SprayEvent {
    /// The attempt.
    pub attempt: u64,
    /// The peer.
    pub peer: NodeId,
    /// How it ended.
    pub outcome: SprayOutcome,
    /// Datagrams it sent.
    pub sent: u16,
}

#[derive(Clone, Debug)]
struct Attempt {
    id: u64,
    side: SpraySide,
    ip: IpAddr,
    /// The opener's one destination port (the peer's reflex port).
    port: u16,
    started: Instant,
    deadline: Instant,
    /// Datagrams this attempt may send in all.
    budget: u16,
    sent: u16,
    /// Ports probed so far (prober; bounded by the budget).
    probed: BTreeSet<u16>,
}

impl Attempt {
    /// When datagram number `n` may leave: `n / rate` seconds after the
    /// start, so any second holds at most `rate` of them.
    fn due(&self, n: u16, rate: u32) -> Instant {
        let nanos = u64::from(n).saturating_mul(1_000_000_000) / u64::from(rate.max(1));
        self.started.saturating_add(Duration::from_nanos(nanos))
    }
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SprayStats {
    /// Attempts started.
    pub started: u64,
    /// Starts refused.
    pub refused: u64,
    /// Attempts that found a path.
    pub succeeded: u64,
    /// Attempts that ended without one (exhausted, deadline, cancelled).
    pub failed: u64,
    /// Datagrams sent by all attempts.
    pub datagrams: u64,
}

/// The birthday-punch attempts of one node, under the caps of a
/// [`SprayConfig`]. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct SprayMachine {
    config: SprayConfig,
    rng: Rng,
    next_id: u64,
    running: BTreeMap<NodeId, Attempt>,
    /// Peers whose last attempt failed, and when they may try again.
    cooling: BTreeMap<NodeId, Instant>,
    /// IPs the last attempt toward which failed, and when they may be
    /// sprayed again.
    cooling_ips: BTreeMap<IpAddr, Instant>,
    events: VecDeque<SprayEvent>,
    stats: SprayStats,
}

impl SprayMachine {
    /// A machine with these caps and this seed (the probes' ports).
    #[must_use]
    pub fn new(config: SprayConfig, seed: u64) -> Self {
        SprayMachine {
            config,
            rng: Rng::new(seed),
            next_id: 1,
            running: BTreeMap::new(),
            cooling: BTreeMap::new(),
            cooling_ips: BTreeMap::new(),
            events: VecDeque::new(),
            stats: SprayStats::default(),
        }
    }

    /// The caps.
    #[must_use]
    pub fn config(&self) -> &SprayConfig {
        &self.config
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> SprayStats {
        self.stats
    }

    /// Attempts running now.
    #[must_use]
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Starts an attempt with `peer` on `side`, toward `target` (the
    /// prober sprays `target`'s IP, any port; the opener sends every socket
    /// to `target` itself). `session_ip` is the peer's authenticated session
    /// IP: N3 wants `target`'s IP to be exactly it.
    ///
    /// # Errors
    /// A [`SprayRefusal`]; nothing is sent and no event follows.
    pub fn start(
        &mut self,
        now: Instant,
        peer: NodeId,
        side: SpraySide,
        target: SocketAddr,
        session_ip: IpAddr,
    ) -> Result<u64, SprayRefusal> {
        if let Err(e) = self.check(now, peer, side, target, session_ip) {
            self.stats.refused = self.stats.refused.saturating_add(1);
            return Err(e);
        }
        let id = self.next_id;
        self.next_id = self.next_id.saturating_add(1);
        let budget = self.budget(side);
        self.running.insert(
            peer,
            Attempt {
                id,
                side,
                ip: canonical_ip(target.ip()),
                port: target.port(),
                started: now,
                deadline: now.saturating_add(self.config.deadline),
                budget,
                sent: 0,
                probed: BTreeSet::new(),
            },
        );
        self.cooling.remove(&peer);
        self.cooling_ips.remove(&canonical_ip(target.ip()));
        self.stats.started = self.stats.started.saturating_add(1);
        Ok(id)
    }

    /// Datagrams an attempt on `side` may send: its cap, and for a prober
    /// never more than there are ports to probe (each at most once).
    fn budget(&self, side: SpraySide) -> u16 {
        match side {
            SpraySide::Prober => self
                .config
                .max_probes
                .min(u16::try_from(PORT_SPACE - 1).unwrap_or(u16::MAX)),
            SpraySide::Opener => self.config.sockets,
        }
    }

    fn check(
        &self,
        now: Instant,
        peer: NodeId,
        side: SpraySide,
        target: SocketAddr,
        session_ip: IpAddr,
    ) -> Result<(), SprayRefusal> {
        let budget = self.budget(side);
        let c = &self.config;
        if budget == 0 || c.rate == 0 || c.deadline.is_zero() || c.max_concurrent == 0 {
            return Err(SprayRefusal::Disabled);
        }
        let asked = canonical_ip(target.ip());
        let session = canonical_ip(session_ip);
        // The prober's port is its own choice: check the IP with any port.
        let probe_addr = SocketAddr::new(asked, FIRST_PORT);
        if is_bogus_destination(probe_addr)
            || (side == SpraySide::Opener && is_bogus_destination(target))
        {
            return Err(SprayRefusal::BogusIp(asked));
        }
        if asked != session {
            return Err(SprayRefusal::NotThePeersIp { asked, session });
        }
        if self.running.contains_key(&peer) || self.running.values().any(|a| a.ip == asked) {
            return Err(SprayRefusal::AlreadyRunning);
        }
        let until = [self.cooling.get(&peer), self.cooling_ips.get(&asked)]
            .into_iter()
            .flatten()
            .copied()
            .filter(|until| now < *until)
            .max();
        if let Some(until) = until {
            return Err(SprayRefusal::CoolingDown { until });
        }
        if self.running.len() >= c.max_concurrent {
            return Err(SprayRefusal::TooManyAttempts);
        }
        Ok(())
    }

    /// The next datagram due by `now`, if any: attempts in peer order, each
    /// paced at [`SprayConfig::rate`] from its start.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<SprayTransmit> {
        let rate = self.config.rate;
        let (&peer, a) = self
            .running
            .iter_mut()
            .find(|(_, a)| a.sent < a.budget && a.due(a.sent, rate) <= now && now < a.deadline)?;
        let (socket, port) = match a.side {
            SpraySide::Opener => (a.sent, a.port),
            SpraySide::Prober => (0, fresh_port(&mut self.rng, &a.probed)),
        };
        if a.side == SpraySide::Prober {
            a.probed.insert(port);
        }
        a.sent = a.sent.saturating_add(1);
        self.stats.datagrams = self.stats.datagrams.saturating_add(1);
        Some(SprayTransmit {
            attempt: a.id,
            peer,
            socket,
            to: SocketAddr::new(a.ip, port),
        })
    }

    /// A datagram of `peer`'s attempt got through: the caller checked it
    /// (the rendezvous' keep-alive token, R8); `path` is where it came from
    /// (opener) or went to (prober). A path off the attempt's IP is ignored
    /// (N3). Returns whether an attempt ended with it.
    pub fn handle_success(&mut self, peer: NodeId, path: SocketAddr) -> bool {
        let matches = self
            .running
            .get(&peer)
            .is_some_and(|a| canonical_ip(path.ip()) == a.ip);
        if matches {
            self.end(peer, SprayOutcome::Succeeded { path }, None);
        }
        matches
    }

    /// Cancels `peer`'s attempt. A cool-down follows when it had sent
    /// anything (a cancel is no way around the cool-down). Returns whether
    /// one was running.
    pub fn cancel(&mut self, peer: NodeId, now: Instant) -> bool {
        let running = self.running.contains_key(&peer);
        if running {
            self.end(peer, SprayOutcome::Cancelled, Some(now));
        }
        running
    }

    /// Ends `peer`'s attempt as failed now (its punch gave up first): like
    /// its deadline passing, with the cool-down. Returns whether one was
    /// running.
    pub fn fail(&mut self, peer: NodeId, now: Instant) -> bool {
        let Some(all_sent) = self.running.get(&peer).map(|a| a.sent >= a.budget) else {
            return false;
        };
        let outcome = if all_sent {
            SprayOutcome::Exhausted
        } else {
            SprayOutcome::DeadlinePassed
        };
        self.end(peer, outcome, Some(now));
        true
    }

    /// Ends attempts whose deadline has come.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: alloc::vec::Vec<NodeId> = self
            .running
            .iter()
            .filter(|(_, a)| a.deadline <= now)
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            self.fail(peer, now);
        }
        self.cooling.retain(|_, until| *until > now);
        self.cooling_ips.retain(|_, until| *until > now);
    }

    /// Ends `peer`'s attempt with `outcome`. A failure, or a cancel that
    /// sent anything, cools the peer and the IP down from `ended` (when it
    /// happened); a success (`ended` is `None`) cools nothing.
    fn end(&mut self, peer: NodeId, outcome: SprayOutcome, ended: Option<Instant>) {
        let Some(a) = self.running.remove(&peer) else {
            return;
        };
        match outcome {
            SprayOutcome::Succeeded { .. } => {
                self.stats.succeeded = self.stats.succeeded.saturating_add(1);
            }
            SprayOutcome::Cancelled | SprayOutcome::Exhausted | SprayOutcome::DeadlinePassed => {
                self.stats.failed = self.stats.failed.saturating_add(1);
                if let Some(ended) =
                    ended.filter(|_| a.sent > 0 || outcome != SprayOutcome::Cancelled)
                {
                    let until = ended.saturating_add(self.config.cooldown);
                    self.cooling.insert(peer, until);
                    self.cooling_ips.insert(a.ip, until);
                }
            }
        }
        self.events.push_back(SprayEvent {
            attempt: a.id,
            peer,
            outcome,
            sent: a.sent,
        });
    }

    /// The next ended attempt.
    pub fn poll_event(&mut self) -> Option<SprayEvent> {
        self.events.pop_front()
    }

    /// When to call [`poll_transmit`](Self::poll_transmit) or
    /// [`handle_timeout`](Self::handle_timeout) next: the next datagram due,
    /// or the next deadline.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let rate = self.config.rate;
        self.running
            .values()
            .map(|a| {
                if a.sent < a.budget {
                    a.due(a.sent, rate).min(a.deadline)
                } else {
                    a.deadline
                }
            })
            .min()
    }
}

/// A random port at or above [`FIRST_PORT`] not in `used` (which holds
/// fewer than [`PORT_SPACE`] ports: a prober's budget is capped below it):
/// a random draw, then the next free port after it.
fn fresh_port(rng: &mut Rng, used: &BTreeSet<u16>) -> u16 {
    let start = u32::try_from(rng.below(PORT_SPACE as usize)).unwrap_or(0);
    (0..PORT_SPACE)
        .map(|i| FIRST_PORT.saturating_add(u16::try_from((start + i) % PORT_SPACE).unwrap_or(0)))
        .find(|p| !used.contains(p))
        .unwrap_or(FIRST_PORT)
}

/// The chance that `probes` distinct random ports hit one of `mappings`
/// random mappings among [`PORT_SPACE`] ports: `1 − Π (1 − m / (N − i))`
/// over the probes (sampling without replacement).
#[must_use]
pub fn birthday_success(mappings: u32, probes: u32) -> f64 {
    let n = f64::from(PORT_SPACE);
    let m = f64::from(mappings.min(PORT_SPACE));
    let mut miss = 1.0;
    for i in 0..probes.min(PORT_SPACE) {
        let left = n - f64::from(i);
        if left <= m {
            return 1.0;
        }
        miss *= 1.0 - m / left;
    }
    1.0 - miss
}
