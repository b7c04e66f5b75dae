//! Agent oracles: the whole agent driven by arbitrary input.
//!
//! * [`after_setup`] drives a requester into a pending punch (training toward
//!   its peer), then feeds arbitrary control bytes, datagrams and time steps —
//!   "fuzz after setup", so the fuzzer starts where the interesting state is.
//! * [`run_ops`] applies a `Vec<Op>` of the agent's public operations to an
//!   agent with small table limits.
//!
//! Invariants checked: no panic; time never goes backwards through
//! `poll_timeout`'s contract; every punch `request_punch` started ends in
//! exactly one terminal event by its deadline; tables stay within their
//! configured bounds; the training requester only ever sends datagrams to the
//! IP it was introduced to.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use arbitrary::Arbitrary;
use natrix_proto::wire::{Keepalive, NodeId, PunchIntroduce};
use natrix_proto::{
    Agent, Announcement, Channel, Config, Event, Instant, NatClass, NatProfile, PortAllocation,
    Transmit,
};

const WALL_BASE: u64 = 1_700_000_000_000;

fn ip(i: u8) -> IpAddr {
    IpAddr::from([198, 51, 100, i])
}

fn channel(c: u8) -> Channel {
    match c % 4 {
        0 => Channel::Rendezvous,
        1 => Channel::ReflexRequest,
        2 => Channel::ReflexResponse,
        _ => Channel::Natrix,
    }
}

/// Drains the agent, checking every datagram goes where `allowed` says, and
/// collecting terminal punch events.
fn drain(
    a: &mut Agent,
    allowed: &dyn Fn(SocketAddr) -> bool,
    terminal: &mut Vec<(u32, Instant)>,
    now: Instant,
) {
    while let Some(t) = a.poll_transmit() {
        match t {
            Transmit::Datagram { to, payload, .. } | Transmit::Spray { to, payload, .. } => {
                assert!(allowed(to), "datagram to {to} ({payload:?})");
            }
            Transmit::Control { .. } => {}
        }
    }
    while let Some(e) = a.poll_event() {
        match e {
            Event::PunchSucceeded { punch_id, .. } | Event::PunchFailed { punch_id, .. } => {
                terminal.push((punch_id, now));
            }
            _ => {}
        }
    }
}

/// Moves time to `target` the way a driver must: every `poll_timeout` at or
/// before `target` is honoured with a `handle_timeout` at that instant.
fn advance_to(
    a: &mut Agent,
    now: &mut Instant,
    target: Instant,
    allowed: &dyn Fn(SocketAddr) -> bool,
    terminal: &mut Vec<(u32, Instant)>,
) {
    let mut guard = 0u32;
    while let Some(t) = a.poll_timeout().filter(|t| *t <= target) {
        *now = (*now).max(t);
        a.handle_timeout(*now);
        drain(a, allowed, terminal, *now);
        guard += 1;
        assert!(
            guard < 100_000,
            "timer storm: poll_timeout keeps returning {t:?}"
        );
    }
    *now = (*now).max(target);
    a.handle_timeout(*now);
    drain(a, allowed, terminal, *now);
}

/// One fuzz step after setup.
#[derive(Debug, Arbitrary)]
pub enum Step {
    /// A control message from one of a few senders (0 = the coordinator,
    /// 1 = the peer, others unknown), on a channel, with any bytes.
    Control {
        /// Sender selector.
        from: u8,
        /// Channel selector.
        channel: u8,
        /// Payload.
        bytes: Vec<u8>,
    },
    /// A raw datagram from some source.
    Datagram {
        /// Source IP selector.
        src: u8,
        /// Source port.
        port: u16,
        /// Payload.
        bytes: Vec<u8>,
    },
    /// A well-formed keep-alive with fuzzed fields (reaches deeper than random bytes).
    Keepalive {
        /// Sender selector (0 = the real peer).
        sender: u8,
        /// Token; `true` uses the real one.
        real_token: bool,
        /// Token otherwise.
        token: u32,
        /// Source IP selector (0 = the peer's IP).
        src: u8,
        /// Source port.
        port: u16,
    },
    /// Time passes.
    Advance {
        /// Milliseconds.
        ms: u16,
    },
}

/// Input of the after-setup target.
#[derive(Debug, Arbitrary)]
pub struct AfterSetup {
    /// How far in the future (ms) the coordinator schedules the fire time; any
    /// value, including `u64::MAX`-ish ones.
    pub fire_offset: u64,
    /// The steps.
    pub steps: Vec<Step>,
}

/// The after-setup oracle.
pub fn after_setup(input: &AfterSetup) {
    let (me, peer, coord) = (NodeId(1), NodeId(2), NodeId(3));
    let peer_addr = SocketAddr::new(ip(2), 4002);
    let cfg = Config::builder()
        .auto_reclassify(false)
        .build()
        .expect("valid");
    let deadline_len = cfg.punch_deadline();
    let mut a = Agent::new(me, SocketAddr::new(ip(1), 4001), cfg, 7);
    a.handle_session_up(coord, SocketAddr::new(ip(3), 4003))
        .expect("room");
    a.handle_session_up(peer, peer_addr).expect("room");
    a.handle_peer_announcement(peer, peer_addr, NatClass::Cone)
        .expect("room");
    a.set_local_classification(NatClass::Cone, SocketAddr::new(ip(1), 4001));
    let mut now = Instant::ZERO;
    let id = a.request_punch(now, peer, coord).expect("started");
    let fire_at_ms = WALL_BASE.saturating_add(input.fire_offset);
    let intro = PunchIntroduce {
        peer,
        peer_reflex: peer_addr,
        fire_at_ms,
    };
    a.handle_control(
        now,
        WALL_BASE,
        coord,
        SocketAddr::new(ip(3), 4003),
        Channel::Rendezvous,
        &intro.to_bytes(),
    )
    .expect("valid introduce");
    let token = natrix_proto::rendezvous::keepalive_token(me, peer, fire_at_ms);
    // Only the introduced IP may ever receive a datagram from this node.
    let allowed = move |to: SocketAddr| to.ip() == peer_addr.ip();
    let mut terminal = Vec::new();
    drain(&mut a, &allowed, &mut terminal, now);

    for step in input.steps.iter().take(256) {
        let wall = WALL_BASE + now.as_nanos() / 1_000_000;
        match step {
            Step::Control {
                from,
                channel: c,
                bytes,
            } => {
                let from_id = NodeId(u64::from(*from % 6) + 2);
                let from_id = if *from % 6 == 1 { coord } else { from_id };
                let addr = SocketAddr::new(ip(*from), 4000);
                let _ = a.handle_control(now, wall, from_id, addr, channel(*c), bytes);
            }
            Step::Datagram { src, port, bytes } => {
                let _ = a.handle_datagram(
                    now,
                    SocketAddr::new(ip(1), 4001),
                    SocketAddr::new(ip(*src), *port),
                    bytes,
                );
            }
            Step::Keepalive {
                sender,
                real_token,
                token: t,
                src,
                port,
            } => {
                let sender = if *sender == 0 {
                    peer
                } else {
                    NodeId(u64::from(*sender))
                };
                let k = Keepalive {
                    sender,
                    punch_id: if *real_token { token } else { *t },
                };
                let src = if *src == 0 { peer_addr.ip() } else { ip(*src) };
                let _ = a.handle_datagram(
                    now,
                    SocketAddr::new(ip(1), 4001),
                    SocketAddr::new(src, *port),
                    &k.to_bytes(),
                );
            }
            Step::Advance { ms } => {
                let target = now.saturating_add(Duration::from_millis(u64::from(*ms)));
                advance_to(&mut a, &mut now, target, &allowed, &mut terminal);
            }
        }
        drain(&mut a, &allowed, &mut terminal, now);
    }
    // Run the clock to the deadline: the punch must have ended exactly once,
    // no later than its deadline.
    let end = Instant::ZERO + deadline_len;
    advance_to(&mut a, &mut now, end, &allowed, &mut terminal);
    let ours: Vec<_> = terminal.iter().filter(|(p, _)| *p == id).collect();
    assert_eq!(ours.len(), 1, "punch {id}: {terminal:?}");
    assert!(ours[0].1 <= end, "punch ended late: {ours:?}");
}

/// One public operation on the agent.
#[derive(Debug, Arbitrary)]
pub enum Op {
    /// A session comes up.
    SessionUp(u8, u8, u16),
    /// A session goes down.
    SessionDown(u8),
    /// A peer announces (reflex IP selector, port, class code, profile
    /// byte: most bytes are no profile, C8).
    Announce(u8, u8, u16, u8, u8),
    /// `set_local_profile` from a profile byte (C8).
    Profile(u8),
    /// An RTT estimate.
    Rtt(u8, u16),
    /// A control message (from, its session IP selector, channel, bytes).
    Control(u8, u8, u8, Vec<u8>),
    /// A datagram (source IP selector, port, bytes).
    Datagram(u8, u16, Vec<u8>),
    /// A datagram on a birthday attempt's socket (attempt id, socket,
    /// source IP selector, port, bytes): N2.
    SprayDatagram(u8, u16, u8, u16, Vec<u8>),
    /// `request_punch(target, coordinator)`.
    Punch(u8, u8),
    /// `cancel_punch(target)`.
    Cancel(u8),
    /// `reclassify()`.
    Reclassify,
    /// `probe_reflex(peer)`.
    Probe(u8),
    /// `cancel_probe(id)`.
    CancelProbe(u8),
    /// `set_reflex_override`.
    Override(Option<(u8, u16)>),
    /// Publish a local classification.
    Classify(u8, u8, u16),
    /// Time passes (ms).
    Advance(u16),
}

/// The `Vec<Op>` oracle.
pub fn run_ops(ops: &[Op]) {
    let cfg = Config::builder()
        .max_known_peers(8)
        .budget_table_capacity(4)
        .max_pending_punches(4)
        .max_pending_probes(2)
        .coordinator_requests_per_window(2)
        .build()
        .expect("valid");
    let deadline = cfg.punch_deadline();
    let mut a = Agent::new(NodeId(1), SocketAddr::new(ip(1), 4001), cfg.clone(), 9);
    let mut now = Instant::ZERO;
    let mut started: Vec<(u32, Instant)> = Vec::new();
    let mut terminal: Vec<(u32, Instant)> = Vec::new();
    let anywhere = |_: SocketAddr| true;
    let node = |n: u8| NodeId(u64::from(n % 12));
    for op in ops.iter().take(512) {
        let wall = WALL_BASE + now.as_nanos() / 1_000_000;
        match op {
            Op::SessionUp(p, i, port) => {
                let _ = a.handle_session_up(node(*p), SocketAddr::new(ip(*i), *port));
            }
            Op::SessionDown(p) => a.handle_session_down(now, node(*p)),
            Op::Announce(p, i, port, c, profile) => {
                let _ = a.handle_announcement(
                    node(*p),
                    Announcement {
                        reflex: SocketAddr::new(ip(*i), *port),
                        class: NatClass::from_code(*c),
                        // The class byte's high bits pick an allocation
                        // (N1: sequential steps 1 to 3 among them).
                        profile: NatProfile::from_code(*profile).map(|p| {
                            p.with_allocation(PortAllocation::from_wire([
                                *c >> 6,
                                0,
                                (*c >> 4) & 3,
                            ]))
                        }),
                    },
                );
            }
            Op::Profile(profile) => a.set_local_profile(NatProfile::from_code(*profile)),
            Op::Rtt(p, ms) => {
                let _ = a.handle_rtt(node(*p), Duration::from_millis(u64::from(*ms)));
            }
            Op::Control(p, i, c, bytes) => {
                let _ = a.handle_control(
                    now,
                    wall,
                    node(*p),
                    SocketAddr::new(ip(*i), 4000),
                    channel(*c),
                    bytes,
                );
            }
            Op::Datagram(i, port, bytes) => {
                let _ = a.handle_datagram(
                    now,
                    SocketAddr::new(ip(1), 4001),
                    SocketAddr::new(ip(*i), *port),
                    bytes,
                );
            }
            Op::SprayDatagram(attempt, socket, i, port, bytes) => {
                let _ = a.handle_spray_datagram(
                    now,
                    u64::from(*attempt),
                    *socket,
                    SocketAddr::new(ip(*i), *port),
                    bytes,
                );
            }
            Op::Punch(t, c) => {
                if let Ok(id) = a.request_punch(now, node(*t), node(*c)) {
                    started.push((id, now));
                }
            }
            Op::Cancel(t) => {
                a.cancel_punch(now, node(*t));
            }
            Op::Reclassify => {
                let _ = a.reclassify(now);
            }
            Op::Probe(p) => {
                let _ = a.probe_reflex(now, node(*p));
            }
            Op::CancelProbe(id) => {
                a.cancel_probe(u64::from(*id));
            }
            Op::Override(o) => {
                a.set_reflex_override(o.map(|(i, port)| SocketAddr::new(ip(i), port)))
            }
            Op::Classify(c, i, port) => {
                a.set_local_classification(NatClass::from_code(*c), SocketAddr::new(ip(*i), *port))
            }
            Op::Advance(ms) => {
                let target = now.saturating_add(Duration::from_millis(u64::from(*ms)));
                advance_to(&mut a, &mut now, target, &anywhere, &mut terminal);
            }
        }
        drain(&mut a, &anywhere, &mut terminal, now);
        assert!(a.pending_punches() <= cfg.max_pending_punches() as usize);
        assert!(a.known_peers() <= cfg.max_known_peers() as usize);
        let (coord, resp) = a.budget_entries();
        assert!(coord <= cfg.budget_table_capacity() as usize);
        assert!(resp <= cfg.budget_table_capacity() as usize);
    }
    // Let every punch reach its deadline.
    let end = now + deadline;
    advance_to(&mut a, &mut now, end, &anywhere, &mut terminal);
    for (id, at) in started {
        let ends: Vec<_> = terminal.iter().filter(|(p, _)| *p == id).collect();
        assert_eq!(ends.len(), 1, "punch {id} started at {at:?}: {terminal:?}");
        assert!(ends[0].1 <= at + deadline, "punch {id} ended late");
    }
    assert_eq!(a.pending_punches(), 0);
}
