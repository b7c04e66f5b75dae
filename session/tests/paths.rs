//! Connections' paths (S4, D2) on the `Paths` machine alone, with a
//! scripted network: the direct path answers pings or not, as the test says.

#![allow(missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use natrix_proto::{Instant, NodeId, TraversalError};
use natrix_session::path::{
    ACCEPTOR_FIRST_UPGRADE, ChangeReason, PathAction, PathConfig, PathEvent, PathKind, Paths,
    RelayRoute, UpgradeError,
};
use natrix_session::{Endpoint, Keypair, MAX_PACKET, PublicKey, Received, SessionConfig};
use proptest::prelude::*;

const VIA: NodeId = NodeId(0xC0);

fn key(n: u8) -> PublicKey {
    Keypair::from_secret([n; 32]).public()
}

fn direct() -> SocketAddr {
    "198.51.100.7:4000".parse().unwrap()
}

fn route(peer: &PublicKey) -> RelayRoute {
    RelayRoute {
        via: 0,
        peer: peer.node_id(),
    }
}

/// Drives one connection: `answers` says whether the direct path answers
/// pings now; punches find `direct()` when `punchable`.
struct Net {
    paths: Paths,
    peer: PublicKey,
    now: Instant,
    answers: bool,
    punchable: bool,
    /// The session's address as the `SetAddr` actions left it.
    session_addr: SocketAddr,
    pings: Vec<(Instant, SocketAddr)>,
    punches: usize,
    events: Vec<PathEvent>,
}

impl Net {
    fn new(config: PathConfig) -> Net {
        let peer = key(9);
        let mut paths = Paths::new(config);
        let now = Instant::from_millis(1_000);
        paths.open(now, peer, route(&peer), VIA, true).unwrap();
        paths.on_session_up(now, &peer);
        Net {
            paths,
            peer,
            now,
            answers: true,
            punchable: true,
            session_addr: route(&peer).addr(),
            pings: Vec::new(),
            punches: 0,
            events: Vec::new(),
        }
    }

    /// Carries out the actions (a ping is answered at once, or never).
    fn settle(&mut self) {
        while let Some(a) = self.paths.poll_action() {
            match a {
                PathAction::Punch { peer, via } => {
                    assert_eq!((peer, via), (self.peer, VIA));
                    self.punches += 1;
                    let outcome = if self.punchable {
                        Ok(direct())
                    } else {
                        Err(TraversalError::NoRelay)
                    };
                    self.paths.on_punch(self.now, &peer, outcome);
                }
                PathAction::Ping { peer, addr, id } => {
                    self.pings.push((self.now, addr));
                    if self.answers && addr == direct() {
                        let at = self.now + Duration::from_millis(20);
                        self.paths.on_pong(at, &peer, addr, id);
                    }
                }
                PathAction::SetAddr { peer, addr } => {
                    assert_eq!(peer, self.peer);
                    self.session_addr = addr;
                }
            }
        }
        while let Some(e) = self.paths.poll_event() {
            self.events.push(e);
        }
    }

    /// Runs the machine until `until`, the application sending a datagram
    /// every `every` (none if `None`).
    fn run(&mut self, until: Instant, every: Option<Duration>) {
        let mut next_send = every.map(|_| self.now);
        loop {
            self.settle();
            let t = [self.paths.poll_timeout(), next_send]
                .into_iter()
                .flatten()
                .min();
            let Some(t) = t.filter(|t| *t <= until) else {
                self.now = until;
                self.settle();
                return;
            };
            self.now = t.max(self.now);
            if next_send.is_some_and(|s| s <= self.now) {
                self.paths.on_sent(self.now, &self.peer, 100);
                next_send = every.map(|e| self.now + e);
            }
            self.paths.handle_timeout(self.now);
        }
    }

    fn kind(&self) -> PathKind {
        self.paths.info(&self.peer).unwrap().kind
    }
}

fn cfg() -> PathConfig {
    PathConfig::default()
}

#[test]
fn s4_connection_upgrades_when_the_punched_path_answers() {
    let mut n = Net::new(cfg());
    n.run(Instant::from_millis(2_000), None);
    assert_eq!(n.punches, 1);
    assert_eq!(n.kind(), PathKind::Direct);
    assert_eq!(n.session_addr, direct());
    let info = n.paths.info(&n.peer).unwrap();
    assert_eq!(info.rtt, Some(Duration::from_millis(20)));
    assert!(n.events.iter().any(|e| matches!(
        e,
        PathEvent::Changed {
            reason: ChangeReason::Upgraded,
            ..
        }
    )));
}

#[test]
fn s4_dead_direct_path_moves_to_relay_within_dead_after() {
    let mut n = Net::new(cfg());
    let every = Some(Duration::from_millis(200));
    n.run(Instant::from_millis(10_000), every);
    assert_eq!(n.kind(), PathKind::Direct);
    n.answers = false;
    let died = n.now;
    // Step until the switch.
    while n.kind() == PathKind::Direct {
        let t = n.now + Duration::from_millis(50);
        n.run(t, every);
    }
    let took = n.now.saturating_duration_since(died);
    assert!(
        took <= cfg().dead_after + Duration::from_millis(100),
        "{took:?}"
    );
    assert_eq!(n.session_addr, route(&n.peer).addr());
    assert_eq!(n.paths.stats().direct_deaths, 1);
}

#[test]
fn s4_idle_connection_sends_no_pings() {
    let mut n = Net::new(cfg());
    n.run(
        Instant::from_millis(5_000),
        Some(Duration::from_millis(500)),
    );
    assert_eq!(n.kind(), PathKind::Direct);
    let before = n.pings.len();
    // Nothing sent for 10 minutes: after `idle_after`, no ping at all.
    let idle_from = n.now + cfg().idle_after + cfg().ping_interval;
    n.run(Instant::from_millis(600_000), None);
    let late = n.pings.iter().filter(|(t, _)| *t > idle_from).count();
    assert_eq!(late, 0, "an idle connection pinged");
    assert!(n.pings.len() - before <= 5);
    // Use resumes: pings resume, and an answering path stays direct.
    n.run(
        Instant::from_millis(620_000),
        Some(Duration::from_millis(500)),
    );
    assert!(
        n.pings
            .iter()
            .any(|(t, _)| *t > Instant::from_millis(600_000))
    );
    assert_eq!(n.kind(), PathKind::Direct);
}

#[test]
fn s4_upgrade_backoff_doubles_and_resets_on_network_change() {
    let mut n = Net::new(cfg());
    n.punchable = false;
    n.run(Instant::from_millis(1_000 + 60_000), None);
    // Attempts at 0, 5, 15, 35 s (5 s doubling).
    assert_eq!(n.punches, 4);
    let info = n.paths.info(&n.peer).unwrap();
    assert_eq!(
        info.last_upgrade_error,
        Some(UpgradeError::Punch(TraversalError::NoRelay))
    );
    assert_eq!(
        info.next_upgrade,
        Some(Instant::from_millis(1_000 + 75_000))
    );
    // A network change: retry now, and the backoff starts again at 5 s.
    n.punchable = true;
    n.paths.network_changed(n.now);
    n.run(n.now + Duration::from_millis(100), None);
    assert_eq!(n.punches, 5);
    assert_eq!(n.kind(), PathKind::Direct);
}

#[test]
fn s4_accepting_side_tries_after_a_second_with_the_same_backoff() {
    let mut n = Net::new(cfg());
    let acceptor = key(10);
    n.paths.close(&n.peer);
    n.peer = acceptor;
    n.session_addr = route(&acceptor).addr();
    let opened = n.now;
    n.paths
        .open(n.now, acceptor, route(&acceptor), VIA, false)
        .unwrap();
    n.paths.on_session_up(n.now, &acceptor);
    n.punchable = false;
    n.run(
        opened + (ACCEPTOR_FIRST_UPGRADE - Duration::from_millis(1)),
        None,
    );
    assert_eq!(n.punches, 0, "the opening side goes first");
    // Then 1 s, 6 s, 16 s, 36 s after opening (5 s doubling).
    n.run(opened + Duration::from_secs(60), None);
    assert_eq!(n.punches, 4);
    // A network change: at once, the backoff reset.
    n.punchable = true;
    n.paths.network_changed(n.now);
    n.run(n.now + Duration::from_millis(100), None);
    assert_eq!(n.punches, 5);
    assert_eq!(n.kind(), PathKind::Direct);
}

#[test]
fn s4_a_punch_that_ends_before_the_session_is_up_pings_when_it_is() {
    let peer = key(11);
    let mut paths = Paths::new(cfg());
    let now = Instant::from_millis(1_000);
    paths.open(now, peer, route(&peer), VIA, true).unwrap();
    paths.handle_timeout(now);
    assert!(matches!(
        paths.poll_action(),
        Some(PathAction::Punch { .. })
    ));
    paths.on_punch(now, &peer, Ok(direct()));
    assert_eq!(paths.poll_action(), None, "no keys yet: no ping");
    let later = now + Duration::from_millis(300);
    paths.on_session_up(later, &peer);
    match paths.poll_action() {
        Some(PathAction::Ping { addr, id, .. }) => {
            assert_eq!(addr, direct());
            paths.on_pong(later, &peer, addr, id);
        }
        other => panic!("expected a ping, got {other:?}"),
    }
    assert_eq!(paths.info(&peer).unwrap().kind, PathKind::Direct);
}

#[test]
fn s4_unanswered_punched_path_is_a_typed_upgrade_failure() {
    let mut n = Net::new(cfg());
    n.answers = false;
    n.run(Instant::from_millis(1_000 + 8_000), None);
    assert_eq!(n.kind(), PathKind::Relayed);
    assert_eq!(
        n.paths.info(&n.peer).unwrap().last_upgrade_error,
        Some(UpgradeError::NoAnswer { addr: direct() })
    );
}

#[test]
fn d2_path_reports_kind_address_since_rtt_and_bytes() {
    let mut n = Net::new(cfg());
    let opened = n.paths.info(&n.peer).unwrap();
    assert_eq!(opened.kind, PathKind::Relayed);
    assert_eq!(opened.via, Some(VIA));
    assert_eq!(opened.remote, route(&n.peer).addr());
    n.run(
        Instant::from_millis(3_000),
        Some(Duration::from_millis(100)),
    );
    n.paths.on_received(n.now, &n.peer, direct(), 40);
    let info = n.paths.info(&n.peer).unwrap();
    assert_eq!(info.kind, PathKind::Direct);
    assert_eq!(info.remote, direct());
    assert_eq!(info.via, None);
    assert!(info.since > opened.since);
    assert_eq!(info.bytes_sent, 100 * info.datagrams_sent);
    assert_eq!((info.bytes_received, info.datagrams_received), (40, 1));
    let s = n.paths.stats();
    assert_eq!(s.bytes_sent_relayed + s.bytes_sent_direct, info.bytes_sent);
    assert_eq!(s.bytes_received_direct, 40);
    assert_eq!((s.upgrades_attempted, s.upgrades_succeeded), (1, 1));
}

/// Two endpoints A and B (secrets `n`, `n + 1`), A's relay-route address as
/// B sees it, and A's direct address.
fn relay_pair(n: u8) -> (Endpoint, Endpoint, SocketAddr, SocketAddr) {
    let (ka, kb) = (
        Keypair::from_secret([n; 32]),
        Keypair::from_secret([n + 1; 32]),
    );
    let a_relay = route(&ka.public()).addr();
    let a = Endpoint::new(ka, SessionConfig::default(), [n; 32]);
    let b = Endpoint::new(kb, SessionConfig::default(), [n + 1; 32]);
    (a, b, a_relay, "192.0.2.1:1000".parse().unwrap())
}

const WALL: u64 = 1_700_000_000_000;

/// S6 with relays: a packet that came through a relay never moves a
/// session off its direct address, nor a direct one off its relay route;
/// only `set_addr` does.
#[test]
fn s6_relay_and_direct_packets_never_move_a_session_across_kinds() {
    let (mut a, mut b, a_relay, a_direct) = relay_pair(1);
    let (pa, pb) = (a.public_key(), b.public_key());
    let (now, wall) = (Instant::from_millis(1_000), WALL);
    let b_relay = route(&pb).addr();
    // A dials B over the relay route; everything crosses "the relay".
    a.connect(now, wall, pb, b_relay).unwrap();
    let mut out = [0u8; MAX_PACKET];
    for _ in 0..4 {
        while let Some((_, n)) = a.poll_transmit(&mut out) {
            let _ = b.handle_datagram(now, wall, a_relay, &out[..n]);
        }
        while let Some((_, n)) = b.poll_transmit(&mut out) {
            let _ = a.handle_datagram(now, wall, b_relay, &out[..n]);
        }
    }
    assert_eq!(b.session(&pa).unwrap().addr, a_relay);
    // A direct packet reaches B while B's session is on the relay: delivered,
    // but the session stays where it is.
    let (_, n) = a.send(now, &pb, 16, b"direct", &mut out).unwrap().unwrap();
    assert!(matches!(
        b.handle_datagram(now, wall, a_direct, &out[..n]),
        Received::Data { .. }
    ));
    assert_eq!(b.session(&pa).unwrap().addr, a_relay);
    // Moved on purpose, a relayed packet does not move it back.
    assert!(b.set_addr(&pa, a_direct));
    let (_, n) = a.send(now, &pb, 16, b"relayed", &mut out).unwrap().unwrap();
    assert!(matches!(
        b.handle_datagram(now, wall, a_relay, &out[..n]),
        Received::Data { .. }
    ));
    assert_eq!(b.session(&pa).unwrap().addr, a_direct);
    // A direct packet from a new direct address still moves it (rebinding).
    let rebound: SocketAddr = "192.0.2.1:2000".parse().unwrap();
    let (_, n) = a.send(now, &pb, 16, b"rebound", &mut out).unwrap().unwrap();
    let _ = b.handle_datagram(now, wall, rebound, &out[..n]);
    assert_eq!(b.session(&pa).unwrap().addr, rebound);
    // `send_to` seals for a chosen address without moving the session.
    let (to, _) = b.send_to(now, &pa, a_relay, 10, b"x", &mut out).unwrap();
    assert_eq!(to, a_relay);
    assert_eq!(b.session(&pa).unwrap().addr, rebound);
}

#[derive(Clone, Debug)]
enum Step {
    /// Time passes, the application sending every 300 ms.
    Busy(u16),
    /// The direct path stops answering.
    Fail,
    /// It answers again.
    Heal,
    /// A network change is reported.
    NetworkChange,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (100u16..20_000).prop_map(Step::Busy),
        1 => Just(Step::Fail),
        1 => Just(Step::Heal),
        1 => Just(Step::NetworkChange),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Over any sequence of failures, heals and network changes: the
    /// connection is on exactly one path (the session's address is that
    /// path's), is on the relay within `dead_after` (+ one step) of the
    /// direct path failing while in use, and is direct again within the
    /// longest backoff after a heal.
    #[test]
    fn s4_always_one_path_fallback_in_bound_upgrade_after_heal(
        steps in proptest::collection::vec(step(), 1..40)
    ) {
        let config = cfg();
        let mut n = Net::new(config);
        let every = Some(Duration::from_millis(300));
        let mut failed_at: Option<Instant> = None;
        let mut healed_at: Option<Instant> = None;
        for s in steps {
            match s {
                Step::Busy(ms) => {
                    let end = n.now + Duration::from_millis(u64::from(ms));
                    while n.now < end {
                        let t = (n.now + Duration::from_millis(100)).min(end);
                        n.run(t, every);
                        let info = n.paths.info(&n.peer).unwrap();
                        // One path, and the session is on it.
                        prop_assert_eq!(n.session_addr, info.remote);
                        prop_assert_eq!(info.kind == PathKind::Direct, info.remote == direct());
                        if let Some(f) = failed_at {
                            if info.kind == PathKind::Direct {
                                let late = n.now.saturating_duration_since(f);
                                prop_assert!(
                                    late <= config.dead_after + Duration::from_millis(400),
                                    "still direct {:?} after the failure", late
                                );
                            }
                        }
                        if let Some(h) = healed_at {
                            let since = n.now.saturating_duration_since(h);
                            if since > config.upgrade_max + config.dead_after + Duration::from_secs(1) {
                                prop_assert_eq!(info.kind, PathKind::Direct, "not direct {:?} after the heal", since);
                            }
                        }
                    }
                }
                Step::Fail => {
                    n.answers = false;
                    n.punchable = false;
                    failed_at.get_or_insert(n.now);
                    healed_at = None;
                }
                Step::Heal => {
                    n.answers = true;
                    n.punchable = true;
                    failed_at = None;
                    healed_at.get_or_insert(n.now);
                }
                Step::NetworkChange => n.paths.network_changed(n.now),
            }
        }
    }
}

/// A handshake through a relay whose first authenticated packet arrives
/// over a direct path (a path ping racing the handshake) leaves the
/// responder's session on the relay route: only the connection moves it.
#[test]
fn s6_first_packet_over_another_kind_of_path_does_not_place_the_session() {
    let (mut a, mut b, a_relay, a_direct) = relay_pair(3);
    let (pa, pb) = (a.public_key(), b.public_key());
    let (now, wall) = (Instant::from_millis(1_000), WALL);
    a.connect(now, wall, pb, route(&pb).addr()).unwrap();
    let mut out = [0u8; MAX_PACKET];
    // Init through the relay, response back.
    let (_, n) = a.poll_transmit(&mut out).unwrap();
    let _ = b.handle_datagram(now, wall, a_relay, &out[..n]);
    let (_, n) = b.poll_transmit(&mut out).unwrap();
    let _ = a.handle_datagram(now, wall, route(&pb).addr(), &out[..n]);
    assert!(a.session(&pb).is_some());
    // A's first transport packet goes the direct way.
    let (_, n) = a
        .send_to(now, &pb, a_direct, 10, b"ping", &mut out)
        .unwrap();
    assert!(matches!(
        b.handle_datagram(now, wall, a_direct, &out[..n]),
        Received::Data { .. }
    ));
    assert_eq!(b.session(&pa).unwrap().addr, a_relay);
}
