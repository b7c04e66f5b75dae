//! The stateful-firewall preset ([`Preset::Firewall`], the typical IPv6
//! home router: a public address, no translation, only replies get in) — a
//! lab-only preset outside the 7×7 pair matrix ([`Preset::LAB_EXTRA`]), so a
//! real-NAT lab can compare an IPv6-firewall peer with what the simulator
//! predicts. Checks its classification (Open, with the host's own address as
//! reflex), its filtering, and the punch and connection outcomes of every
//! ordered pair of {open, firewall}.
#![allow(missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use natrix_proto::{Config, NatClass};
use natrix_session::path::{ACCEPTOR_FIRST_UPGRADE, ChangeReason, PathEvent, PathKind};
use natrix_sim::preset::{Preset, place};
use natrix_sim::scenario::{Outcome, PairScenario, run_connection, topology};
use natrix_sim::world::{Drop, HostId, Realm, World};
use natrix_sim::{LinkConfig, NatId};

const LAT: Duration = Duration::from_millis(10);

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn quiet() -> Config {
    Config::builder().auto_reclassify(false).build().unwrap()
}

fn filtered(w: &World) -> u64 {
    w.drops.get(&Drop::Filtered).copied().unwrap_or(0)
}

/// When host `h`'s connection first moved to a direct path.
fn upgraded_at(w: &World, h: HostId) -> Option<natrix_proto::Instant> {
    w.host(h).conns.events.iter().find_map(|(at, e)| match e {
        PathEvent::Changed {
            reason: ChangeReason::Upgraded,
            ..
        } => Some(*at),
        _ => None,
    })
}

// ------------------------------------------------- (a) classification

#[test]
fn a_firewalled_host_classifies_open_with_its_own_address_as_reflex() {
    for (a_preset, b_preset) in [
        (Preset::Firewall, Preset::Open),
        (Preset::Open, Preset::Firewall),
        (Preset::Firewall, Preset::Firewall),
    ] {
        let mut t = topology(
            5,
            a_preset,
            b_preset,
            LinkConfig::default(),
            [LAT; 3],
            &Config::default(),
        );
        let s = t.s;
        for (placed, own) in [
            (t.a.clone(), a("203.0.113.101:4000")),
            (t.b.clone(), a("203.0.113.102:4000")),
        ] {
            let h = placed.host;
            let what = format!("{a_preset} x {b_preset}, {}", t.world.host(h).name);
            assert_eq!(t.world.host(h).addr, own, "{what}: the host's own address");
            let c = t.world.agent(h).classification().expect("classified");
            assert_eq!(c.class, NatClass::Open, "{what}");
            assert_eq!(c.reflex, own, "{what}: reflex is the host's own address");
            // The reflex server's session sees the host's own address too:
            // nothing is translated.
            assert_eq!(t.world.session_addr(s, h), Some(own), "{what}");
            let dst = t.world.host(s).addr;
            assert_eq!(t.world.mapping(h, dst), Some(own), "{what}");
            // The firewall is one filter in front of the host, at the
            // host's own IP; the open host has none.
            let nats: Vec<NatId> = placed.nats.clone();
            if t.world.host(h).realm == Realm::Internet {
                assert!(nats.is_empty(), "{what}");
            } else {
                assert_eq!(nats.len(), 1, "{what}");
                assert_eq!(t.world.nat(nats[0]).external_ip, own.ip(), "{what}");
            }
        }
    }
}

// ------------------------------------------------------ (b) filtering

#[test]
fn unsolicited_inbound_is_dropped_and_replies_pass() {
    let mut w = World::new(9);
    let fw = place(&mut w, Preset::Firewall, 1, "F", LAT, quiet(), 3);
    let open = place(&mut w, Preset::Open, 2, "O", LAT, quiet(), 4);
    let x = w.add_host(
        "X",
        Realm::Internet,
        a("198.51.100.7:5000"),
        LAT,
        quiet(),
        5,
    );
    let x2 = w.add_host(
        "X2",
        Realm::Internet,
        a("198.51.100.7:6000"),
        LAT,
        quiet(),
        6,
    );
    let y = w.add_host(
        "Y",
        Realm::Internet,
        a("198.51.100.8:5000"),
        LAT,
        quiet(),
        7,
    );
    let (f, o) = (fw.host, open.host);
    let f_addr = a("203.0.113.101:4000");
    let x_addr = w.host(x).addr;

    // Unsolicited: dropped by the firewall, while the open host takes it.
    w.send_datagram(x, f_addr, b"unsolicited");
    w.send_datagram(x, w.host(o).addr, b"unsolicited");
    w.run_for(Duration::from_millis(100));
    assert!(w.host(f).app_inbox.is_empty(), "unsolicited got in");
    assert_eq!(w.host(o).app_inbox.len(), 1);
    assert_eq!(filtered(&w), 1);

    // F sends to X: X sees F's own address (no translation)…
    w.send_datagram(f, x_addr, b"hello");
    w.run_for(Duration::from_millis(100));
    assert_eq!(w.host(x).app_inbox.len(), 1);
    assert_eq!(w.host(x).app_inbox[0].1, f_addr);
    // …and X's reply passes.
    w.send_datagram(x, f_addr, b"reply");
    w.run_for(Duration::from_millis(100));
    assert_eq!(w.host(f).app_inbox.len(), 1, "the reply did not get in");
    assert_eq!(w.host(f).app_inbox[0].1, x_addr);

    // Address-and-port-dependent: the same IP from another port, and
    // another IP, stay out.
    w.send_datagram(x2, f_addr, b"other port");
    w.send_datagram(y, f_addr, b"other ip");
    w.run_for(Duration::from_millis(100));
    assert_eq!(w.host(f).app_inbox.len(), 1);
    assert_eq!(filtered(&w), 3);

    // The pinhole closes after the binding lifetime (two minutes) without
    // outbound traffic.
    w.run_for(Duration::from_secs(121));
    w.send_datagram(x, f_addr, b"too late");
    w.run_for(Duration::from_millis(100));
    assert_eq!(w.host(f).app_inbox.len(), 1);
    assert_eq!(filtered(&w), 4);
}

// -------------------------------------------- (c) the {open, firewall}² cells

const CELLS: [(Preset, Preset); 4] = [
    (Preset::Open, Preset::Open),
    (Preset::Open, Preset::Firewall),
    (Preset::Firewall, Preset::Open),
    (Preset::Firewall, Preset::Firewall),
];

/// Both ends classify themselves Open, so the pair matrix says Direct and
/// the punch "succeeds" at once (no keep-alives, time to direct zero) with
/// the peer's announced reflex as the path. The path check then works in all
/// four cells: both ends send to each other at the same instants, so each
/// side's first datagram opens its own firewall before the other side's
/// arrives (20 ms later).
#[test]
fn punch_between_open_and_firewall_is_direct_in_every_cell() {
    for (a_preset, b_preset) in CELLS {
        let what = format!("{a_preset} x {b_preset}");
        let r = PairScenario::new(a_preset, b_preset).run(1);
        assert_eq!(r.classes, (NatClass::Open, NatClass::Open), "{what}");
        assert_eq!(r.outcome, Outcome::Direct, "{what}: {:?}", r.error);
        assert_eq!(r.time_to_direct, Some(Duration::ZERO), "{what}");
        assert_eq!(r.terminal_events, 1, "{what}");
        assert_eq!(r.keepalives, 0, "{what}");
        assert_eq!(r.error, None, "{what}");
    }
}

/// Connections (A opens, B accepts) end direct in all four cells, but how
/// fast depends on B alone:
///
/// * B open (open × open, firewall × open): A's upgrade is a Direct verdict
///   (both Open) followed by a path ping to B's reflex right away; an open B
///   answers it (and a firewalled A's ping opened A's own firewall for the
///   answer), so A is direct ≈120 ms after opening.
/// * B firewalled (open × firewall, firewall × firewall): A's one path ping
///   reaches B's firewall before B ever sent anything to A's address, so it
///   is filtered (the one `Filtered` drop of the run), and A does not ping
///   again while waiting (`PathConfig::dead_after`, 6.5 s, for an answer).
///   B's own upgrade, [`ACCEPTOR_FIRST_UPGRADE`] (1 s) after it accepted,
///   pings A: that opens B's firewall toward A, and passes A (open, or
///   firewalled but opened by A's earlier ping). A answers; B is direct
///   first, A one crossing later — ≈1.18 s after opening. (A's reported
///   RTT on the new path is then ≈1.1 s: it is measured from its first,
///   filtered ping.)
#[test]
fn connections_between_open_and_firewall_end_direct_in_every_cell() {
    let mut table = String::new();
    for (a_preset, b_preset) in CELLS {
        let what = format!("{a_preset} x {b_preset}");
        let c = run_connection(a_preset, b_preset, 1, Duration::from_secs(20));
        let w = &c.topology.world;
        let (ha, hb) = (c.topology.a.host, c.topology.b.host);
        table.push_str(&format!(
            "{what}: kinds {:?} time to direct {:?} first datagram {:?} filtered {}\n",
            c.kinds,
            c.time_to_direct,
            c.first_datagram,
            filtered(w)
        ));
        assert_eq!(
            c.kinds,
            (Some(PathKind::Direct), Some(PathKind::Direct)),
            "{what}"
        );
        assert!(c.exchanged(), "{what}: {:?}", c.report);
        assert_eq!(c.report.duplicates, [0, 0], "{what}");
        assert_eq!(c.upgrade_error, None, "{what}");
        let ttd = c.time_to_direct.expect("direct");
        let (a_up, b_up) = (upgraded_at(w, ha).unwrap(), upgraded_at(w, hb).unwrap());
        if b_preset == Preset::Firewall {
            // Only B's own upgrade, a second after accepting, opens the way.
            assert!(ttd > ACCEPTOR_FIRST_UPGRADE, "{what}: {ttd:?}");
            assert!(
                ttd <= ACCEPTOR_FIRST_UPGRADE + Duration::from_millis(300),
                "{what}: {ttd:?}"
            );
            assert!(b_up < a_up, "{what}: B is direct first");
            assert_eq!(filtered(w), 1, "{what}: A's first ping is filtered");
        } else {
            // A's first ping is answered.
            assert!(ttd <= Duration::from_millis(200), "{what}: {ttd:?}");
            assert!(a_up <= b_up, "{what}: A is direct first");
            assert_eq!(filtered(w), 0, "{what}");
        }
    }
    println!("{table}");
}
