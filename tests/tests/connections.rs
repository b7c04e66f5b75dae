//! Connections end to end on the simulator (issue #13): relay first, direct
//! when a punch works, back to the relay when the direct path dies (S4), a
//! coordinator that relays under quotas (S3), and what a connection reports
//! (D2). Every suite checks that no datagram reaches the application twice
//! and that the loss window stays within the documented bound
//! (`PathConfig::dead_after` plus one relay transit).
#![allow(missing_docs)]

use std::time::Duration;

use natrix_proto::{Config, Event, Instant};
use natrix_session::path::{ChangeReason, PathEvent, PathKind, RelayRoute};
use natrix_session::relay::{Quota, RelayConfig};
use natrix_sim::nat::PortAllocation;
use natrix_sim::preset::{Preset, place};
use natrix_sim::scenario::{
    Outcome, Topology, Traffic, TrafficReport, run_connection, topology, warm_up,
};
use natrix_sim::{HostId, LinkConfig, World};
use natrix_tests::expected;
use proptest::prelude::*;

const LAT: Duration = Duration::from_millis(10);

/// One relay transit in the standard topology: A → R → B, 10 ms per access
/// link.
const RELAY_TRANSIT: Duration = Duration::from_millis(40);

fn dead_after() -> Duration {
    natrix_session::path::PathConfig::default().dead_after
}

/// The documented loss bound: `dead_after` of traffic plus one relay transit.
fn loss_bound() -> Duration {
    dead_after() + RELAY_TRANSIT
}

fn std_topology(seed: u64, a: Preset, b: Preset, link: LinkConfig) -> Topology {
    topology(seed, a, b, link, [LAT; 3], &Config::default())
}

fn assert_clean(r: &TrafficReport, what: &str) {
    assert_eq!(r.duplicates, [0, 0], "{what}: duplicates {r:?}");
    for d in 0..2 {
        assert!(
            r.loss_window[d] <= loss_bound(),
            "{what}: loss window {:?} > {:?} ({r:?})",
            r.loss_window[d],
            loss_bound()
        );
        assert!(r.delivered[d] > 0, "{what}: nothing delivered ({r:?})");
    }
}

/// Opens A → B through R and runs traffic until A's connection is direct
/// (at most 10 s).
fn open_direct(t: &mut Topology, traffic: &mut Traffic) {
    let (a, b, r) = (t.a.host, t.b.host, t.r);
    t.world.open_connection(a, b, r).expect("opens");
    for _ in 0..100 {
        traffic.run(&mut t.world, Duration::from_millis(100));
        if kind(&t.world, a, b) == Some(PathKind::Direct)
            && kind(&t.world, b, a) == Some(PathKind::Direct)
        {
            return;
        }
    }
    panic!("no direct path within 10 s");
}

fn kind(w: &World, a: HostId, b: HostId) -> Option<PathKind> {
    w.conn_info(a, b).map(|i| i.kind)
}

/// The session's address agrees with the connection's path on both ends
/// (the connection is on exactly one path).
fn assert_one_path(w: &World, a: HostId, b: HostId) {
    for (x, y) in [(a, b), (b, a)] {
        let Some(info) = w.conn_info(x, y) else {
            continue;
        };
        assert_eq!(
            info.kind == PathKind::Relayed,
            RelayRoute::is_relay(&info.remote),
            "{info:?}"
        );
        if let Some(addr) = w.session_addr(x, y) {
            assert_eq!(
                addr, info.remote,
                "session address vs connection path at {x:?}"
            );
        }
    }
}

/// When `h`'s connection last changed for `reason` at or after `since`.
fn changed_at(w: &World, h: HostId, reason: ChangeReason, since: Instant) -> Option<Instant> {
    w.host(h).conns.events.iter().find_map(|(at, e)| match e {
        PathEvent::Changed { reason: r, .. } if *r == reason && *at >= since => Some(*at),
        _ => None,
    })
}

// ------------------------------------------------------------ (a) the matrix

#[test]
fn s3_every_cell_exchanges_data_and_is_direct_where_the_punch_matrix_says() {
    let mut failures = Vec::new();
    for a in Preset::ALL {
        for b in Preset::ALL {
            let c = run_connection(a, b, 42, Duration::from_secs(30));
            let what = format!("{a} x {b}");
            if !c.exchanged() {
                failures.push(format!("{what}: no exchange both ways: {:?}", c.report));
            }
            if c.report.duplicates != [0, 0] {
                failures.push(format!("{what}: duplicates {:?}", c.report.duplicates));
            }
            let (want, _) = expected(a, b);
            let punchable = matches!(want, Outcome::Direct | Outcome::Punched);
            let direct = c.kinds == (Some(PathKind::Direct), Some(PathKind::Direct));
            if punchable != direct {
                failures.push(format!(
                    "{what}: paths {:?}, the matrix says {want:?}; upgrade error {:?}",
                    c.kinds, c.upgrade_error
                ));
            }
            if !direct && c.upgrade_error.is_none() {
                failures.push(format!("{what}: relayed without a typed upgrade error"));
            }
            // The first datagram: handshake over the relay (80 ms), then one
            // relay transit; B answers once it accepted.
            for d in c.first_datagram {
                let d = d.expect("a first datagram");
                if d > Duration::from_millis(250) {
                    failures.push(format!("{what}: first datagram after {d:?}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn d2_path_reports_kind_address_since_rtt_and_bytes() {
    let mut t = std_topology(
        3,
        Preset::FullCone,
        Preset::PortRestrictedCone,
        LinkConfig::default(),
    );
    let (a, b) = (t.a.host, t.b.host);
    let mut traffic = Traffic::new(a, b, Duration::from_millis(50));
    let t0 = t.world.now();
    t.world.open_connection(a, b, t.r).expect("opens");
    let opened = t.world.conn_info(a, b).expect("a connection");
    assert_eq!(opened.kind, PathKind::Relayed);
    assert_eq!(opened.via, Some(t.r_id()));
    assert!(RelayRoute::is_relay(&opened.remote));
    traffic.run(&mut t.world, Duration::from_secs(2));
    let info = t.world.conn_info(a, b).expect("a connection");
    assert_eq!(info.kind, PathKind::Direct);
    assert_eq!(Some(info.remote), t.world.session_addr(a, b));
    assert!(!RelayRoute::is_relay(&info.remote));
    assert_eq!(info.via, None);
    assert!(info.since > t0 && info.since < t0 + Duration::from_millis(500));
    let rtt = info.rtt.expect("a path RTT");
    assert!(
        rtt >= Duration::from_millis(40) && rtt < Duration::from_millis(100),
        "{rtt:?}"
    );
    let r = traffic.report(&t.world);
    assert_eq!(info.datagrams_sent, r.sent[0] as u64);
    assert_eq!(info.bytes_sent, 64 * r.sent[0] as u64);
    let back = t.world.conn_info(b, a).expect("accepted");
    assert_eq!(
        info.datagrams_received,
        back.datagrams_sent.min(r.delivered[1] as u64)
    );
    assert_eq!(back.datagrams_received, r.delivered[0] as u64);
    assert_eq!(info.last_upgrade_error, None);
    // Events: opened on the relay, then upgraded.
    let reasons: Vec<ChangeReason> = t
        .world
        .host(a)
        .conns
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            PathEvent::Changed { reason, .. } => Some(*reason),
            PathEvent::UpgradeFailed { .. } | PathEvent::ClosedByPeer { .. } => None,
        })
        .collect();
    assert_eq!(reasons, [ChangeReason::Opened, ChangeReason::Upgraded]);
    // A relay-only pair reports the typed punch outcome.
    let c = run_connection(
        Preset::Symmetric,
        Preset::Symmetric,
        3,
        Duration::from_secs(10),
    );
    assert_eq!(c.kinds.0, Some(PathKind::Relayed));
    assert!(c.upgrade_error.is_some());
    assert_clean(&c.report, "symmetric x symmetric");
}

// -------------------------------------------------- (b) bindings that expire

#[test]
fn s4_nat_bindings_expiring_mid_connection_lose_at_most_the_bound() {
    // B's NAT forgets a binding after 5 s without outbound traffic: less
    // than the sessions' 10 s idle keep-alive, so every idle period loses
    // the mappings. A symmetric A gets a new port toward B afterwards (a
    // rebinding B's session follows, S6).
    for (pa, pb) in [
        (Preset::FullCone, Preset::PortRestrictedCone),
        (Preset::Symmetric, Preset::FullCone),
    ] {
        let mut t = std_topology(5, pa, pb, LinkConfig::default());
        let (a, b) = (t.a.host, t.b.host);
        for n in t.a.nats.iter().chain(&t.b.nats) {
            t.world.nat_mut(*n).config.binding_lifetime = Duration::from_secs(5);
        }
        let mut traffic = Traffic::new(a, b, Duration::from_millis(50));
        open_direct(&mut t, &mut traffic);
        traffic.run(&mut t.world, Duration::from_secs(3));
        // Idle: the connection stops pinging, the bindings expire.
        t.world.run_for(Duration::from_secs(40));
        traffic.run(&mut t.world, Duration::from_secs(30));
        t.world.run_for(Duration::from_secs(2));
        let r = traffic.report(&t.world);
        assert_clean(&r, &format!("{pa} x {pb}"));
        assert_one_path(&t.world, a, b);
        // Traffic flows at the end.
        let tail = traffic.sent[0].len() - 20;
        let from = t.world.id(a);
        let late = t
            .world
            .host(b)
            .conns
            .inbox
            .iter()
            .filter(|d| d.from == from)
            .filter(|d| u64::from_be_bytes(d.bytes[..8].try_into().unwrap()) >= tail as u64)
            .count();
        assert!(late >= 19, "{pa} x {pb}: {late} of the last 20 arrived");
    }
}

// ------------------------------------------------------ (c) a path goes dark

#[test]
fn s4_dead_direct_path_falls_back_to_relay_within_bound() {
    let mut link = LinkConfig {
        duplicate: 0.05,
        jitter: Duration::from_millis(3),
        ..LinkConfig::default()
    };
    link.impair_sessions = true;
    let mut t = std_topology(7, Preset::RestrictedCone, Preset::PortRestrictedCone, link);
    let (a, b) = (t.a.host, t.b.host);
    let mut traffic = Traffic::new(a, b, Duration::from_millis(50));
    open_direct(&mut t, &mut traffic);
    traffic.run(&mut t.world, Duration::from_secs(4));
    let dark = t.world.now();
    t.world.set_blackhole(a, b, true);
    traffic.run(&mut t.world, Duration::from_secs(20));
    for h in [a, b] {
        let moved = changed_at(&t.world, h, ChangeReason::DirectDead, dark).expect("fell back");
        let took = moved.saturating_duration_since(dark);
        assert!(took <= dead_after().mul_f64(1.5), "{h:?}: {took:?}");
        assert!(took <= dead_after() + RELAY_TRANSIT, "{h:?}: {took:?}");
    }
    assert_eq!(kind(&t.world, a, b), Some(PathKind::Relayed));
    assert_one_path(&t.world, a, b);
    // Heal: the next upgrade attempt finds the direct path again.
    let heal = t.world.now();
    let next = t
        .world
        .conn_info(a, b)
        .and_then(|i| i.next_upgrade)
        .unwrap_or(heal);
    t.world.set_blackhole(a, b, false);
    // A punch in flight ends within its deadline; the retry after it waits
    // at most the backoff then in force (twice the last interval).
    let punch = Config::default().punch_deadline();
    let bound =
        next.max(heal) + punch + next.saturating_duration_since(heal) * 2 + Duration::from_secs(6);
    while t.world.now() < bound && kind(&t.world, a, b) != Some(PathKind::Direct) {
        traffic.run(&mut t.world, Duration::from_millis(100));
    }
    let up = changed_at(&t.world, a, ChangeReason::Upgraded, heal).expect("upgraded again");
    assert!(up <= bound, "upgraded at {up:?}, bound {bound:?}");
    traffic.run(&mut t.world, Duration::from_secs(2));
    assert_eq!(kind(&t.world, b, a), Some(PathKind::Direct));
    assert_one_path(&t.world, a, b);
    t.world.run_for(Duration::from_secs(1));
    let r = traffic.report(&t.world);
    assert_clean(&r, "dark path");
    assert!(r.lost[0] > 0, "the dark period loses something: {r:?}");
}

// ----------------------------------------------- (c') a NAT rebinds a peer

#[test]
fn c7_rebinding_behind_a_filter_recovers_the_direct_path() {
    // A's NAT rebinds A to a new public port while B sits behind a
    // port-restricted NAT: B's filter drops A's new port, the direct path
    // dies, and a re-punch to A's announced (stale) reflex cannot work. The
    // reflex check after the failure (C7) finds the new port, A reclassifies
    // and announces, and the upgrade retried at once punches to the new
    // port: direct again well before the periodic reclassification (60 s).
    let mut t = std_topology(
        17,
        Preset::PortRestrictedCone,
        Preset::PortRestrictedCone,
        LinkConfig::default(),
    );
    let (a, b, r) = (t.a.host, t.b.host, t.r);
    let r_addr = t.world.host(r).addr;
    let mut traffic = Traffic::new(a, b, Duration::from_millis(50));
    open_direct(&mut t, &mut traffic);
    traffic.run(&mut t.world, Duration::from_secs(2));
    let old = t.world.mapping(a, r_addr).expect("A is mapped");
    assert_eq!(
        t.world.agent(a).classification().map(|c| c.reflex),
        Some(old)
    );
    assert_eq!(
        t.world.conn_info(b, a).map(|i| i.remote),
        Some(old),
        "B's direct path points at A's first mapping"
    );

    // The rebinding: every mapping of A's NAT is gone, and the next one gets
    // another port (sequential allocation, not the internal port).
    let rebind = t.world.now();
    let nat = t.a.nats[0];
    t.world.nat_mut(nat).config.allocation = PortAllocation::Sequential;
    t.world.flush_nat(nat);
    let give_up = rebind + Duration::from_secs(30);
    while t.world.now() < give_up
        && changed_at(&t.world, a, ChangeReason::Upgraded, rebind).is_none()
    {
        traffic.run(&mut t.world, Duration::from_millis(100));
        assert_one_path(&t.world, a, b);
    }
    let fell_back =
        changed_at(&t.world, a, ChangeReason::DirectDead, rebind).expect("fell back to the relay");
    let direct = changed_at(&t.world, a, ChangeReason::Upgraded, rebind)
        .expect("upgraded to direct again after the rebinding");
    let new = t.world.mapping(a, r_addr).expect("A is mapped again");
    let reclassified = t.world.host(a).events.iter().find_map(|(at, e)| match e {
        Event::ClassificationChanged { reflex, .. } if *at >= rebind && *reflex == new => Some(*at),
        _ => None,
    });
    let (to_fallback, to_direct) = (
        fell_back.saturating_duration_since(rebind),
        direct.saturating_duration_since(rebind),
    );
    println!(
        "rebinding {old} -> {new}: fallback after {to_fallback:?}, reclassified after {:?}, \
         direct again after {to_direct:?}",
        reclassified.map(|at| at.saturating_duration_since(rebind))
    );
    assert_ne!(new, old, "the NAT gave A another public port");
    assert!(fell_back < direct, "relay first, then direct");
    assert!(
        to_fallback <= dead_after() + RELAY_TRANSIT,
        "{to_fallback:?}"
    );
    let reclassified = reclassified.expect("A reclassified to its new port");
    assert!(
        fell_back <= reclassified && reclassified <= direct,
        "the reflex check after the failure found the new port: {reclassified:?}"
    );
    assert!(
        to_direct < dead_after() + Duration::from_secs(2),
        "direct again after {to_direct:?}"
    );

    // Data crosses both ways on the new direct path, B's pointing at A's
    // new public address.
    traffic.run(&mut t.world, Duration::from_secs(3));
    t.world.run_for(Duration::from_secs(1));
    assert_eq!(kind(&t.world, a, b), Some(PathKind::Direct));
    assert_eq!(kind(&t.world, b, a), Some(PathKind::Direct));
    assert_eq!(t.world.conn_info(b, a).map(|i| i.remote), Some(new));
    assert_eq!(
        t.world.agent(a).classification().map(|c| c.reflex),
        Some(new)
    );
    assert_one_path(&t.world, a, b);
    for (from, to) in [(a, b), (b, a)] {
        let from_id = t.world.id(from);
        let after = t
            .world
            .host(to)
            .conns
            .inbox
            .iter()
            .filter(|d| d.from == from_id && d.at > direct && d.kind == PathKind::Direct)
            .count();
        assert!(
            after >= 40,
            "{from:?} -> {to:?}: {after} direct datagrams after"
        );
    }
    let rep = traffic.report(&t.world);
    assert_clean(&rep, "rebinding");
}

// ------------------------------------------------- (d) coordinator restarts

#[test]
fn s3_coordinator_restart_keeps_a_direct_connection_and_a_relayed_one_recovers() {
    // Direct: nothing is lost.
    let mut t = std_topology(
        11,
        Preset::FullCone,
        Preset::RestrictedCone,
        LinkConfig::default(),
    );
    let (a, b, r) = (t.a.host, t.b.host, t.r);
    let mut traffic = Traffic::new(a, b, Duration::from_millis(50));
    open_direct(&mut t, &mut traffic);
    let before = traffic.report(&t.world);
    t.world.restart_host(r);
    traffic.run(&mut t.world, Duration::from_secs(60));
    t.world.run_for(Duration::from_secs(1));
    let after = traffic.report(&t.world);
    assert_clean(&after, "restart, direct");
    assert_eq!(after.lost, before.lost, "the direct path loses nothing");
    assert_eq!(kind(&t.world, a, b), Some(PathKind::Direct));
    // The peers re-dialled the coordinator.
    assert!(t.world.connected(a, r) && t.world.connected(r, a));

    // Relayed: the connection's session runs through R and dies with it;
    // the peers re-dial R and A re-dials B over the relay.
    let mut t = std_topology(
        11,
        Preset::PortRestrictedCone,
        Preset::Symmetric,
        LinkConfig::default(),
    );
    let (a, b, r) = (t.a.host, t.b.host, t.r);
    let mut traffic = Traffic::new(a, b, Duration::from_millis(100));
    t.world.open_connection(a, b, r).expect("opens");
    traffic.run(&mut t.world, Duration::from_secs(3));
    t.world.restart_host(r);
    let restart = t.world.now();
    traffic.run(&mut t.world, Duration::from_secs(90));
    t.world.run_for(Duration::from_secs(1));
    let rep = traffic.report(&t.world);
    assert_eq!(rep.duplicates, [0, 0]);
    let from = t.world.id(a);
    let recovered = t
        .world
        .host(b)
        .conns
        .inbox
        .iter()
        .filter(|d| d.from == from && d.at > restart + Duration::from_secs(1))
        .map(|d| d.at)
        .next()
        .expect("the relayed connection recovers");
    // Dead-session detection (30 s), a re-dial and a new handshake.
    let took = recovered.saturating_duration_since(restart);
    assert!(took <= Duration::from_secs(45), "{took:?}");
    assert_eq!(kind(&t.world, a, b), Some(PathKind::Relayed));
    assert_one_path(&t.world, a, b);
}

// ---------------------------------------------------- (e) quota exhaustion

#[test]
fn s3_quota_exhaustion_reaches_the_sender_as_a_typed_refusal() {
    let config = Config::default();
    let mut t = std_topology(
        13,
        Preset::PortRestrictedCone,
        Preset::Symmetric,
        LinkConfig::default(),
    );
    let (r, s) = (t.r, t.s);
    let c = place(
        &mut t.world,
        Preset::PortRestrictedCone,
        3,
        "C",
        LAT,
        config.clone(),
        31,
    )
    .host;
    let d = place(&mut t.world, Preset::Symmetric, 4, "D", LAT, config, 32).host;
    for h in [c, d] {
        t.world.connect(h, r);
        t.world.connect(h, s);
    }
    warm_up(&mut t.world, &[c, d], &[r, s]);
    // A tiny rate: 4 KiB/s per circuit.
    t.world.enable_relay(
        r,
        RelayConfig {
            rate_bytes_per_sec: 4096,
            burst_bytes: 4096,
            ..RelayConfig::default()
        },
    );
    let (a, b) = (t.a.host, t.b.host);
    t.world.open_connection(a, b, r).expect("opens");
    t.world.open_connection(c, d, r).expect("opens");
    // A floods (1000 B every 20 ms: 50 kB/s); C and D chat (64 B every 100 ms).
    let mut flood = Traffic::new(a, b, Duration::from_millis(20));
    flood.size = 1000;
    let mut chat = Traffic::new(c, d, Duration::from_millis(100));
    for _ in 0..100 {
        for _ in 0..5 {
            flood.send_once(&mut t.world);
            t.world.run_for(Duration::from_millis(20));
        }
        chat.send_once(&mut t.world);
    }
    t.world.run_for(Duration::from_secs(2));
    let refusals = &t.world.host(a).conns.refusals;
    assert!(!refusals.is_empty(), "the flooder hears a refusal");
    for n in refusals {
        assert_eq!(n.refusal.quota, Quota::Rate, "{n:?}");
        assert_eq!(n.peer, t.world.id(b));
        assert_eq!(n.coordinator, t.world.id(r));
        assert!(
            n.refusal.retry_after > Duration::ZERO
                && n.refusal.retry_after <= Duration::from_secs(1)
        );
    }
    // Notices are rate-limited (at most one a second per pair).
    assert!(refusals.len() <= 12, "{}", refusals.len());
    // The other circuit is unaffected: every chat datagram arrived.
    let rep = chat.report(&t.world);
    assert_eq!(rep.delivered, rep.sent, "{rep:?}");
    assert_eq!(rep.duplicates, [0, 0]);
    assert!(t.world.host(c).conns.refusals.is_empty());
    assert!(t.world.host(d).conns.refusals.is_empty());
    let f = flood.report(&t.world);
    assert_eq!(f.duplicates, [0, 0]);
    assert!(f.delivered[0] < f.sent[0], "the flood is cut: {f:?}");
}

// -------------------------------------------------------------- property

#[derive(Clone, Copy, Debug)]
enum Step {
    /// Blackhole the direct link for this many seconds, then heal it.
    Dark(u8),
    /// A's network changes (`Paths::network_changed`).
    NetworkChange,
    /// Traffic for this many seconds.
    Run(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (8u8..20).prop_map(Step::Dark),
        Just(Step::NetworkChange),
        (1u8..6).prop_map(Step::Run),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn s4_connection_is_on_one_path_falls_back_within_bound_and_upgrades_after_heal(
        seed in 0u64..1_000,
        steps in prop::collection::vec(step(), 1..5),
    ) {
        let mut t = std_topology(seed, Preset::FullCone, Preset::RestrictedCone, LinkConfig::default());
        let (a, b) = (t.a.host, t.b.host);
        let mut traffic = Traffic::new(a, b, Duration::from_millis(100));
        open_direct(&mut t, &mut traffic);
        for s in steps {
            match s {
                Step::Dark(secs) => {
                    let direct = kind(&t.world, a, b) == Some(PathKind::Direct);
                    let dark = t.world.now();
                    t.world.set_blackhole(a, b, true);
                    traffic.run(&mut t.world, Duration::from_secs(u64::from(secs)));
                    assert_one_path(&t.world, a, b);
                    if direct {
                        let moved = changed_at(&t.world, a, ChangeReason::DirectDead, dark);
                        let moved = moved.expect("fell back to the relay");
                        prop_assert!(moved.saturating_duration_since(dark) <= dead_after().mul_f64(1.5));
                    }
                    prop_assert_eq!(kind(&t.world, a, b), Some(PathKind::Relayed));
                    t.world.set_blackhole(a, b, false);
                    let heal = t.world.now();
                    // Within the upgrade backoff (at most 2 × the dark time
                    // plus a punch deadline and the first interval).
                    let bound = heal + Duration::from_secs(2 * u64::from(secs) + 12);
                    while t.world.now() < bound && kind(&t.world, a, b) != Some(PathKind::Direct) {
                        traffic.run(&mut t.world, Duration::from_millis(200));
                        assert_one_path(&t.world, a, b);
                    }
                    prop_assert_eq!(kind(&t.world, a, b), Some(PathKind::Direct), "direct again after the heal");
                }
                Step::NetworkChange => {
                    t.world.network_changed(a);
                    traffic.run(&mut t.world, Duration::from_secs(1));
                }
                Step::Run(secs) => traffic.run(&mut t.world, Duration::from_secs(u64::from(secs))),
            }
            assert_one_path(&t.world, a, b);
        }
        traffic.run(&mut t.world, Duration::from_secs(2));
        t.world.run_for(Duration::from_secs(1));
        let r = traffic.report(&t.world);
        prop_assert_eq!(r.duplicates, [0, 0]);
        for d in 0..2 {
            prop_assert!(r.loss_window[d] <= loss_bound(), "{:?}", r);
        }
    }
}
