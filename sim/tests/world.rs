//! The simulator's own behaviour: routing through nested NATs, hairpinning,
//! filtering at arrival time, the session address a server sees, the step
//! budget.
#![allow(missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use natrix_proto::wire::NodeId;
use natrix_proto::{Config, NatClass};
use natrix_sim::nat::{Filtering, Mapping, NatConfig};
use natrix_sim::preset::{Preset, place};
use natrix_sim::world::{HostId, Realm, World};

fn quiet() -> Config {
    Config::builder().auto_reclassify(false).build().unwrap()
}

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const MS10: Duration = Duration::from_millis(10);

/// A coordinator R and a reflex server S on the Internet.
fn servers(w: &mut World) -> (HostId, HostId) {
    let r = w.add_host(
        "R",
        NodeId(1),
        Realm::Internet,
        a("203.0.113.10:3478"),
        MS10,
        quiet(),
        1,
    );
    let s = w.add_host(
        "S",
        NodeId(2),
        Realm::Internet,
        a("203.0.113.20:3478"),
        MS10,
        quiet(),
        2,
    );
    (r, s)
}

#[test]
fn server_sees_the_outermost_mapping_of_a_double_nat() {
    let mut w = World::new(1);
    let r = w.add_host(
        "R",
        NodeId(1),
        Realm::Internet,
        a("203.0.113.10:3478"),
        MS10,
        quiet(),
        1,
    );
    let p = place(
        &mut w,
        Preset::DoubleNat,
        1,
        "A",
        NodeId(2),
        MS10,
        quiet(),
        2,
    );
    assert_eq!(p.nats.len(), 2);
    w.connect(p.host, r);
    w.run_for(MS10);
    // R answers a reflex probe with what its session sees: the carrier NAT's
    // public address, not the home router's 100.64 one.
    let now = w.now();
    w.agent(p.host).probe_reflex(now, NodeId(1)).unwrap();
    w.run_for(Duration::from_millis(100));
    let seen = w.host(p.host).events.iter().find_map(|(_, e)| match e {
        natrix_proto::Event::ReflexProbed {
            result: Ok(addr), ..
        } => Some(*addr),
        _ => None,
    });
    assert_eq!(seen.map(|s| s.ip()), Some("203.0.113.101".parse().unwrap()));
    assert_eq!(w.nat(p.nats[0]).mappings(), 1);
    assert_eq!(w.nat(p.nats[1]).mappings(), 1);
}

#[test]
fn inbound_filtering_is_decided_when_the_packet_arrives() {
    let mut w = World::new(1);
    let nat = w.add_nat(
        NatConfig::new(
            Mapping::EndpointIndependent,
            Filtering::AddressAndPortDependent,
        ),
        Realm::Internet,
        "203.0.113.5".parse().unwrap(),
    );
    let inside = w.add_host(
        "A",
        NodeId(1),
        Realm::Behind(nat),
        a("10.0.0.2:4000"),
        MS10,
        quiet(),
        1,
    );
    let outside = w.add_host(
        "B",
        NodeId(2),
        Realm::Internet,
        a("203.0.113.9:5000"),
        MS10,
        quiet(),
        2,
    );
    // Open a mapping toward someone else first, so the external port exists.
    w.send_datagram(inside, a("203.0.113.77:1"), b"x");
    w.run_for(Duration::from_millis(50));
    // B's datagram is in flight (20 ms) when A sends to B: it arrives after
    // A's outbound opened the filter, so it passes.
    w.send_datagram(outside, a("203.0.113.5:4000"), b"early");
    w.run_for(Duration::from_millis(5));
    w.send_datagram(inside, a("203.0.113.9:5000"), b"opens");
    w.run_for(Duration::from_millis(50));
    assert_eq!(w.host(inside).app_inbox.len(), 1);
    // From another port of B: filtered.
    let stranger = w.add_host(
        "C",
        NodeId(3),
        Realm::Internet,
        a("203.0.113.9:5001"),
        MS10,
        quiet(),
        3,
    );
    w.send_datagram(stranger, a("203.0.113.5:4000"), b"no");
    w.run_for(Duration::from_millis(50));
    assert_eq!(w.host(inside).app_inbox.len(), 1);
    assert!(w.drops.values().sum::<u64>() >= 2);
}

#[test]
fn hairpinning_on_and_off() {
    for hairpin in [true, false] {
        let mut w = World::new(1);
        let nat = w.add_nat(
            NatConfig::new(Mapping::EndpointIndependent, Filtering::EndpointIndependent)
                .hairpin(hairpin),
            Realm::Internet,
            "203.0.113.5".parse().unwrap(),
        );
        let x = w.add_host(
            "X",
            NodeId(1),
            Realm::Behind(nat),
            a("10.0.0.2:4000"),
            MS10,
            quiet(),
            1,
        );
        let y = w.add_host(
            "Y",
            NodeId(2),
            Realm::Behind(nat),
            a("10.0.0.3:4001"),
            MS10,
            quiet(),
            2,
        );
        // Y opens its mapping (external port 4001, preserved).
        w.send_datagram(y, a("203.0.113.77:1"), b"out");
        w.send_datagram(x, a("203.0.113.5:4001"), b"hairpin");
        w.run_for(Duration::from_millis(50));
        assert_eq!(
            w.host(y).app_inbox.len(),
            usize::from(hairpin),
            "hairpin {hairpin}"
        );
        if hairpin {
            // Y sees X at X's external address, as RFC 4787 requires.
            assert_eq!(w.host(y).app_inbox[0].1, a("203.0.113.5:4000"));
        }
    }
}

#[test]
fn open_host_classifies_open_and_nat_host_cone_through_a_real_sweep() {
    let mut w = World::new(3);
    let (r, s) = servers(&mut w);
    let open = place(
        &mut w,
        Preset::Open,
        1,
        "O",
        NodeId(3),
        MS10,
        Config::default(),
        3,
    );
    let cone = place(
        &mut w,
        Preset::PortRestrictedCone,
        2,
        "C",
        NodeId(4),
        MS10,
        Config::default(),
        4,
    );
    let sym = place(
        &mut w,
        Preset::Symmetric,
        3,
        "Y",
        NodeId(5),
        MS10,
        Config::default(),
        5,
    );
    for h in [open.host, cone.host, sym.host] {
        w.connect(h, r);
        w.connect(h, s);
    }
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.agent(open.host).nat_class(), NatClass::Open);
    assert_eq!(w.agent(cone.host).nat_class(), NatClass::Cone);
    assert_eq!(w.agent(sym.host).nat_class(), NatClass::Symmetric);
}

#[test]
#[should_panic(expected = "runaway scenario")]
fn a_runaway_scenario_fails_loudly() {
    let mut w = World::new(1);
    let (r, s) = servers(&mut w);
    let p = place(
        &mut w,
        Preset::FullCone,
        1,
        "A",
        NodeId(3),
        MS10,
        Config::default(),
        3,
    );
    w.connect(p.host, r);
    w.connect(p.host, s);
    w.max_steps = 3;
    w.run_for(Duration::from_secs(3600));
}

#[test]
fn sessions_estimate_clock_offsets_ntp_style() {
    let mut w = World::new(1);
    let (r, _) = servers(&mut w);
    let inside = place(
        &mut w,
        Preset::PortRestrictedCone,
        1,
        "A",
        NodeId(10),
        Duration::from_micros(10_600),
        quiet(),
        3,
    );
    let a = inside.host;
    w.set_clock_skew(r, 30_000);
    w.set_clock_skew(a, -30_000);
    assert_eq!(w.host(a).clock_skew_ms, -30_000);
    // Symmetric legs: the estimate is the true offset, to within the
    // millisecond rounding of the clocks (legs of 20.6 ms here).
    let of_r = w.estimate_clock_offset(a, r);
    let of_a = w.estimate_clock_offset(r, a);
    assert!((of_r - 60_000).abs() <= 1, "{of_r}");
    assert!((of_a + 60_000).abs() <= 1, "{of_a}");
    // Whole-millisecond legs: exact.
    w.set_clock_skew(a, 0);
    assert_eq!(w.estimate_clock_offset(a, r), 30_000);
    assert_eq!(w.estimate_clock_offset(r, r), 0);
}
