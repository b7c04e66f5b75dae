//! C8: NAT behaviour discovery (`natrix_stun::behaviour`) against the
//! simulator's RFC 4787 NAT model and an RFC 5780 `StunServer` with two IPs
//! and two ports, in virtual time. Each test checks that the report is
//! exactly what the configured NAT does.
//!
//! The harness is deliberately small: one host with a main socket and extra
//! sockets, its NATs (innermost first, as [`Preset::nats`]), the server on
//! the Internet, a fixed one-way delay, and an event queue. Datagrams cross
//! the NATs with [`Nat::outbound`] on the way up (at send time) and
//! [`Nat::inbound`] on the way down (at arrival time, so filtering sees the
//! state then); a datagram to a NAT's own external IP is hairpinned when the
//! NAT is configured so: it gets the NAT's mapping as its source and comes
//! back in through the same NAT's filter, as in `natrix_sim::World`.
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use natrix_proto::behaviour::{Behaviour, FilteringBehaviour, MappingBehaviour, PortAllocation};
use natrix_proto::{Instant, NatClass, Rng};
use natrix_sim::nat::{Filtering, Mapping, Nat, NatConfig};
use natrix_sim::preset::Preset;
use natrix_stun::behaviour::{
    BehaviourDiscovery, BehaviourReport, DiscoveryConfig, LifetimeConfig, NotMeasured, Transmit,
};
use natrix_stun::codec::MAX_MESSAGE;
use natrix_stun::server::{ServerConfig, StunServer};
use proptest::prelude::*;

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const PRIMARY: &str = "198.51.100.1:3478";
const ALTERNATE: &str = "198.51.100.2:3479";
/// The public IP of the outermost NAT (or of a host that has one).
const PUBLIC: &str = "203.0.113.101";
/// The outside IP of an inner NAT (the carrier network).
const CARRIER: &str = "100.64.1.2";
/// The host's private IP behind a NAT.
const PRIVATE: &str = "10.1.0.2";
const MAIN_PORT: u16 = 4000;
const EXTRA_SOCKETS: u16 = 3;
const ONE_WAY: Duration = Duration::from_millis(10);

enum Flight {
    /// Arrives at the server's local address `local`.
    ToServer {
        local: SocketAddr,
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    /// Arrives at the outside of `nats[below - 1]` (or at the host when
    /// `below == 0`), addressed to `dst`.
    Down {
        below: usize,
        src: SocketAddr,
        dst: SocketAddr,
        bytes: Vec<u8>,
    },
}

struct Net {
    now: Instant,
    nats: Vec<Nat>,
    server: StunServer,
    sockets: Vec<SocketAddr>,
    rng: Rng,
    queue: BTreeMap<(Instant, u64), Flight>,
    seq: u64,
    /// Every transmit the discovery made, in order (for determinism).
    transmits: Vec<Transmit>,
    /// Datagrams a NAT dropped (no mapping, filtered, no hairpin).
    dropped: usize,
}

impl Net {
    /// A host behind `configs` (innermost first). With `public_host` the
    /// host sits at the public IP itself (no NAT, or a firewall whose
    /// external IP is the host's own, like `preset::place`).
    fn new(configs: &[NatConfig], public_host: bool, alternate: bool, seed: u64) -> Self {
        let n = configs.len();
        let nats = configs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let ext = if i + 1 == n { ip(PUBLIC) } else { ip(CARRIER) };
                Nat::new(*c, ext)
            })
            .collect();
        let host_ip = if public_host { ip(PUBLIC) } else { ip(PRIVATE) };
        let sockets = (0..=EXTRA_SOCKETS)
            .map(|i| SocketAddr::new(host_ip, MAIN_PORT + i))
            .collect();
        let mut cfg = ServerConfig::new(a(PRIMARY));
        cfg.alternate = alternate.then(|| a(ALTERNATE));
        cfg.rate_per_source = 1000;
        cfg.burst_per_source = 1000;
        Net {
            now: Instant::ZERO,
            nats,
            server: StunServer::new(cfg),
            sockets,
            rng: Rng::new(seed),
            queue: BTreeMap::new(),
            seq: 0,
            transmits: Vec::new(),
            dropped: 0,
        }
    }

    fn discovery_config(&self, hairpin: bool) -> DiscoveryConfig {
        let mut cfg = DiscoveryConfig::new(a(PRIMARY), self.sockets[0]);
        cfg.extra_sockets = self.sockets[1..].to_vec();
        cfg.hairpin = hairpin;
        cfg
    }

    fn push(&mut self, at: Instant, f: Flight) {
        self.seq += 1;
        self.queue.insert((at, self.seq), f);
    }

    /// A datagram leaves host socket `from` for `to`: up through the NATs.
    fn send(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        assert!(self.sockets.contains(&from), "{from} is not a host socket");
        let at = self.now + ONE_WAY;
        let mut src = from;
        for i in 0..self.nats.len() {
            let nat = &mut self.nats[i];
            if nat.external_ip == to.ip() {
                // To this NAT's own outside: hairpin or nothing.
                if !nat.config.hairpin {
                    self.dropped += 1;
                    return;
                }
                let Some(ext) = nat.outbound(self.now, src, to, &mut self.rng) else {
                    self.dropped += 1;
                    return;
                };
                let f = Flight::Down {
                    below: i + 1,
                    src: ext,
                    dst: to,
                    bytes,
                };
                self.push(at, f);
                return;
            }
            match nat.outbound(self.now, src, to, &mut self.rng) {
                Some(ext) => src = ext,
                None => {
                    self.dropped += 1;
                    return;
                }
            }
        }
        assert!(
            self.server.local_addresses().contains(&to),
            "discovery sent to {to}, not a server address"
        );
        self.push(
            at,
            Flight::ToServer {
                local: to,
                from: src,
                bytes,
            },
        );
    }

    /// Delivers the next flight due; a datagram for the host goes to `d`.
    fn deliver(&mut self, f: Flight, d: &mut BehaviourDiscovery) {
        match f {
            Flight::ToServer { local, from, bytes } => {
                let mut out = [0u8; MAX_MESSAGE];
                if let Some(r) = self.server.handle(self.now, local, from, &bytes, &mut out) {
                    let f = Flight::Down {
                        below: self.nats.len(),
                        src: r.from,
                        dst: r.to,
                        bytes: out[..r.len].to_vec(),
                    };
                    self.push(self.now + ONE_WAY, f);
                }
            }
            Flight::Down {
                below,
                src,
                mut dst,
                bytes,
            } => {
                for nat in self.nats[..below].iter_mut().rev() {
                    assert_eq!(dst.ip(), nat.external_ip, "unroutable {dst}");
                    match nat.inbound(self.now, src, dst.port()) {
                        Some(internal) => dst = internal,
                        None => {
                            self.dropped += 1;
                            return;
                        }
                    }
                }
                assert!(self.sockets.contains(&dst), "{dst} is not a host socket");
                assert!(
                    d.handle_datagram(self.now, dst, src, &bytes),
                    "the host got a datagram that is not the discovery's"
                );
            }
        }
    }

    /// Runs `d` to the end in virtual time; returns the report.
    fn run(&mut self, d: &mut BehaviourDiscovery) -> BehaviourReport {
        d.start(self.now);
        for _ in 0..10_000 {
            while let Some(t) = d.poll_transmit() {
                self.transmits.push(t.clone());
                self.send(t.from, t.to, t.payload);
            }
            if d.is_done() {
                assert_eq!(d.poll_timeout(), None);
                return d.report().clone();
            }
            let flight = self.queue.keys().next().map(|k| k.0);
            let timer = d.poll_timeout();
            match (flight, timer) {
                (Some(f), t) if t.is_none_or(|t| f <= t) => {
                    let (key, f) = self.queue.pop_first().unwrap();
                    self.now = key.0;
                    self.deliver(f, d);
                }
                (_, Some(t)) => {
                    assert!(t >= self.now, "timeout in the past");
                    self.now = t;
                    d.handle_timeout(t);
                }
                (_, None) => panic!("discovery stalled: nothing in flight, no timeout"),
            }
        }
        panic!("discovery did not finish in 10 000 steps");
    }
}

fn mapping_of(m: Mapping) -> MappingBehaviour {
    match m {
        Mapping::EndpointIndependent => MappingBehaviour::EndpointIndependent,
        Mapping::AddressDependent => MappingBehaviour::AddressDependent,
        Mapping::AddressAndPortDependent => MappingBehaviour::AddressAndPortDependent,
    }
}

fn filtering_of(f: Filtering) -> FilteringBehaviour {
    match f {
        Filtering::EndpointIndependent => FilteringBehaviour::EndpointIndependent,
        Filtering::AddressDependent => FilteringBehaviour::AddressDependent,
        Filtering::AddressAndPortDependent => FilteringBehaviour::AddressAndPortDependent,
    }
}

/// What the simulator's allocation looks like from outside: the sim's
/// sequential allocation gives each new mapping the previous port + 1.
fn allocation_of(p: natrix_sim::nat::PortAllocation) -> PortAllocation {
    match p {
        natrix_sim::nat::PortAllocation::Preserving => PortAllocation::Preserving,
        natrix_sim::nat::PortAllocation::Sequential => PortAllocation::Sequential { step: 1 },
        natrix_sim::nat::PortAllocation::Random => PortAllocation::Random,
    }
}

/// Whether a hairpinned request comes back in the simulator's model: the
/// NAT hairpins, and its own filter admits the hairpinned packet. With an
/// endpoint-independent mapping the request leaves through the very mapping
/// it is addressed to (which has thereby "contacted" itself), so every
/// filter admits it; with an address(-and-port)-dependent mapping it leaves
/// through a new mapping, which only an endpoint-independent filter admits.
fn hairpin_of(c: &NatConfig) -> bool {
    c.hairpin
        && (c.mapping == Mapping::EndpointIndependent
            || c.filtering == Filtering::EndpointIndependent)
}

/// What discovery must report behind a single NAT configured as `c`.
fn expected_single(c: &NatConfig) -> Behaviour {
    Behaviour {
        nat: Some(true),
        mapping: Some(mapping_of(c.mapping)),
        filtering: Some(filtering_of(c.filtering)),
        allocation: Some(allocation_of(c.allocation)),
        hairpin: Some(hairpin_of(c)),
        binding_lifetime: None,
    }
}

/// What discovery must report behind `preset`.
///
/// * `Open`: no NAT, nothing filters: the identity translation
///   (endpoint-independent, port-preserving), endpoint-independent
///   filtering, hairpin not applicable.
/// * `Firewall`: no NAT either (the server sees the host's own address), and
///   the firewall's address-and-port-dependent filter.
/// * One NAT: exactly its configuration (hairpin off in every preset).
/// * `DoubleNat` (inner: EIM, APDF, preserving; outer: EIM, EIF,
///   sequential): the combination a host behind both sees. Mapping: both
///   endpoint-independent → endpoint-independent (a chain is as dependent
///   as its most dependent NAT). Filtering: an answer must pass both
///   filters; the inner one's address-and-port-dependent filter is the
///   stricter → APDF. Allocation: the inner NAT keeps every port, the outer
///   one numbers new mappings sequentially → sequential (+1). Hairpin: no.
fn expected(preset: Preset) -> Behaviour {
    let configs = preset.nats();
    let identity = |filtering| Behaviour {
        nat: Some(false),
        mapping: Some(MappingBehaviour::EndpointIndependent),
        filtering: Some(filtering),
        allocation: Some(PortAllocation::Preserving),
        hairpin: None,
        binding_lifetime: None,
    };
    match preset {
        Preset::Open => identity(FilteringBehaviour::EndpointIndependent),
        Preset::Firewall => identity(FilteringBehaviour::AddressAndPortDependent),
        Preset::DoubleNat => Behaviour {
            nat: Some(true),
            mapping: Some(MappingBehaviour::EndpointIndependent),
            filtering: Some(FilteringBehaviour::AddressAndPortDependent),
            allocation: Some(PortAllocation::Sequential { step: 1 }),
            hairpin: Some(false),
            binding_lifetime: None,
        },
        _ => {
            assert_eq!(configs.len(), 1, "{preset}");
            expected_single(&configs[0])
        }
    }
}

fn discover(preset: Preset, seed: u64) -> (BehaviourReport, Net) {
    let mut net = Net::new(&preset.nats(), preset.host_is_public(), true, seed);
    let mut d = BehaviourDiscovery::new(net.discovery_config(true), seed ^ 0x5eed);
    let r = net.run(&mut d);
    (r, net)
}

#[test]
fn c8_every_preset_reports_its_configured_behaviour() {
    for preset in Preset::ALL.into_iter().chain(Preset::LAB_EXTRA) {
        for seed in [1, 2, 3] {
            let (r, net) = discover(preset, seed);
            assert_eq!(r.behaviour, expected(preset), "{preset} seed {seed}: {r:?}");
            assert_eq!(r.nat_class(), preset.expected_class(), "{preset}");
            assert_eq!(r.other_address, Some(a(ALTERNATE)), "{preset}");
            assert!(!r.origin_mismatch, "{preset}");
            assert_eq!(r.lifetime_reason, Some(NotMeasured::TakesTooLong));
            let hairpin_reason = if preset.host_is_public() {
                Some(NotMeasured::NoNat)
            } else {
                None
            };
            assert_eq!(r.hairpin_reason, hairpin_reason, "{preset}");
            assert!(r.mapping_reason.is_none() && r.filtering_reason.is_none());
            assert!(r.allocation_reason.is_none() && r.nat_reason.is_none());
            // X1 is the host's own address without NAT, else the public IP.
            let x1 = r.mapped.unwrap();
            if preset.host_is_public() {
                assert_eq!(x1, net.sockets[0], "{preset}");
            } else {
                assert_eq!(x1.ip(), ip(PUBLIC), "{preset}");
            }
            // A few seconds at most, in virtual time.
            assert!(
                net.now <= Instant::from_millis(3_000),
                "{preset}: {:?}",
                net.now
            );
        }
    }
}

#[test]
fn c8_every_preset_summary_matches_its_class() {
    for preset in Preset::ALL.into_iter().chain(Preset::LAB_EXTRA) {
        let (r, _) = discover(preset, 4);
        let s = r.behaviour.summary();
        let want = match preset.expected_class() {
            NatClass::Open => "no NAT",
            NatClass::Cone if preset == Preset::FullCone => "a full-cone NAT",
            NatClass::Cone => "a cone NAT",
            _ => "a symmetric NAT",
        };
        assert!(s.starts_with(want), "{preset}: {s}");
    }
}

#[test]
fn c8_double_nat_reports_the_combined_behaviour() {
    let (r, net) = discover(Preset::DoubleNat, 9);
    assert_eq!(r.behaviour, expected(Preset::DoubleNat));
    // The outer NAT's sequential ports: X1 then the three extra sockets.
    let x1 = r.mapped.unwrap();
    assert_eq!(x1, SocketAddr::new(ip(PUBLIC), 40_000));
    // Both NATs hold one mapping per host socket (endpoint-independent).
    assert_eq!(net.nats[0].mappings(), 4);
    assert_eq!(net.nats[1].mappings(), 4);
}

#[test]
fn c8_plain_stun_server_gives_typed_reasons() {
    for preset in [
        Preset::PortRestrictedCone,
        Preset::SymmetricSequential,
        Preset::Open,
    ] {
        let mut net = Net::new(&preset.nats(), preset.host_is_public(), false, 5);
        let mut d = BehaviourDiscovery::new(net.discovery_config(true), 5);
        let r = net.run(&mut d);
        assert_eq!(r.other_address, None);
        assert_eq!(r.filtering_reason, Some(NotMeasured::NoRfc5780), "{preset}");
        assert_eq!(r.behaviour.filtering, None);
        match preset {
            Preset::Open => {
                assert_eq!(r.behaviour.nat, Some(false));
                assert_eq!(r.nat_class(), NatClass::Open);
            }
            _ => {
                assert_eq!(r.mapping_reason, Some(NotMeasured::NoRfc5780), "{preset}");
                assert_eq!(r.nat_class(), NatClass::Unknown);
                // Allocation needs only the primary: X1 and the extra sockets.
                assert_eq!(
                    r.behaviour.allocation,
                    expected(preset).allocation,
                    "{preset}"
                );
            }
        }
    }
}

#[test]
fn c8_simulated_discovery_is_deterministic() {
    let run = |seed| {
        let mut net = Net::new(&Preset::Symmetric.nats(), false, true, 77);
        let mut d = BehaviourDiscovery::new(net.discovery_config(true), seed);
        let r = net.run(&mut d);
        (r, net.transmits, net.now)
    };
    let (r1, t1, n1) = run(1);
    let (r2, t2, n2) = run(1);
    assert_eq!((&r1, &t1, n1), (&r2, &t2, n2));
    assert_eq!(r1.behaviour.allocation, Some(PortAllocation::Random));
    let (r3, t3, _) = run(2);
    assert_eq!(r1, r3);
    assert_ne!(t1, t3, "transaction ids come from the seed");
}

#[test]
fn c8_hairpin_follows_the_nat_and_its_filter() {
    for (m, f, want) in [
        (
            Mapping::EndpointIndependent,
            Filtering::AddressAndPortDependent,
            true,
        ),
        (
            Mapping::AddressAndPortDependent,
            Filtering::EndpointIndependent,
            true,
        ),
        (
            Mapping::AddressAndPortDependent,
            Filtering::AddressDependent,
            false,
        ),
    ] {
        let c = NatConfig::new(m, f).hairpin(true);
        let mut net = Net::new(&[c], false, true, 3);
        let mut d = BehaviourDiscovery::new(net.discovery_config(true), 3);
        let r = net.run(&mut d);
        assert_eq!(r.behaviour.hairpin, Some(want), "{m:?} {f:?}");
        // The hairpin test switched off: not measured, typed.
        let mut net = Net::new(&[c], false, true, 3);
        let mut d = BehaviourDiscovery::new(net.discovery_config(false), 3);
        let r = net.run(&mut d);
        assert_eq!(r.behaviour.hairpin, None);
        assert_eq!(r.hairpin_reason, Some(NotMeasured::Disabled));
    }
}

/// Runs discovery with the binding-lifetime test (up to `max`, to within
/// `precision`) behind `configs`; returns the report and the virtual time it
/// took.
fn discover_lifetime(
    configs: &[NatConfig],
    public_host: bool,
    max: Duration,
    precision: Duration,
    seed: u64,
) -> (BehaviourReport, Instant) {
    let mut net = Net::new(configs, public_host, true, seed);
    let mut cfg = net.discovery_config(true);
    let limit = LifetimeConfig { max, precision };
    cfg.lifetime = Some(limit);
    let mut d = BehaviourDiscovery::new(cfg, seed ^ 0x11fe);
    let r = net.run(&mut d);
    // The quick tests are unaffected by the lifetime test that follows them.
    let mut quick = r.behaviour;
    quick.binding_lifetime = None;
    if configs.len() == 1 && !public_host {
        assert_eq!(quick, expected_single(&configs[0]), "{r:?}");
    }
    // Bounded: the quick tests, the idle waits, two tests per round.
    let rounds = limit.search_rounds() + 2;
    let bound = Duration::from_secs(3) + limit.max_idle() + Duration::from_secs(2) * rounds;
    assert!(net.now.since_origin() <= bound, "{:?} > {bound:?}", net.now);
    (r, net.now)
}

fn port_restricted(lifetime: Duration) -> NatConfig {
    NatConfig::new(
        Mapping::EndpointIndependent,
        Filtering::AddressAndPortDependent,
    )
    .binding_lifetime(lifetime)
}

fn symmetric(lifetime: Duration) -> NatConfig {
    NatConfig::new(
        Mapping::AddressAndPortDependent,
        Filtering::AddressAndPortDependent,
    )
    .allocation(natrix_sim::nat::PortAllocation::Random)
    .binding_lifetime(lifetime)
}

#[test]
fn c8_binding_lifetime_lower_bound_within_precision() {
    let max = Duration::from_secs(150);
    let precision = Duration::from_secs(1);
    for secs in [20, 45, 120] {
        let lifetime = Duration::from_secs(secs);
        for (name, c) in [
            ("port-restricted", port_restricted(lifetime)),
            ("symmetric", symmetric(lifetime)),
        ] {
            for seed in [1, 2] {
                let (r, _) = discover_lifetime(&[c], false, max, precision, seed);
                assert_eq!(r.lifetime_reason, None, "{name} {secs}s: {r:?}");
                let found = r.behaviour.binding_lifetime.unwrap();
                assert!(found <= lifetime, "{name} {secs}s: {found:?}");
                assert!(
                    found > lifetime - precision,
                    "{name} {secs}s: {found:?} not within {precision:?}"
                );
                assert!(!r.lifetime_at_least_max, "{name} {secs}s");
            }
        }
    }
}

#[test]
fn c8_binding_lifetime_beyond_max_is_at_least_max() {
    let max = Duration::from_secs(60);
    for c in [
        port_restricted(Duration::from_secs(120)),
        symmetric(Duration::from_secs(120)),
    ] {
        let (r, took) = discover_lifetime(&[c], false, max, Duration::from_secs(1), 3);
        assert_eq!(r.behaviour.binding_lifetime, Some(max), "{r:?}");
        assert!(r.lifetime_at_least_max);
        assert_eq!(r.lifetime_reason, None);
        // The check round and the max round only: one idle wait.
        assert!(
            took.since_origin() < max + Duration::from_secs(5),
            "{took:?}"
        );
    }
}

#[test]
fn c8_binding_lifetime_of_a_double_nat_is_the_shorter_one() {
    let inner = port_restricted(Duration::from_secs(30));
    let outer = NatConfig::new(Mapping::EndpointIndependent, Filtering::EndpointIndependent)
        .binding_lifetime(Duration::from_secs(90));
    let precision = Duration::from_secs(1);
    let (r, _) = discover_lifetime(
        &[inner, outer],
        false,
        Duration::from_secs(150),
        precision,
        4,
    );
    let found = r.behaviour.binding_lifetime.unwrap();
    assert!(
        found <= Duration::from_secs(30) && found > Duration::from_secs(29),
        "{found:?}"
    );
}

#[test]
fn c8_binding_lifetime_not_measured_without_nat_or_extra_socket() {
    let max = Duration::from_secs(60);
    for preset in [Preset::Open, Preset::Firewall] {
        let (r, took) = discover_lifetime(&preset.nats(), true, max, Duration::from_secs(1), 5);
        assert_eq!(r.behaviour.nat, Some(false), "{preset}");
        assert_eq!(r.lifetime_reason, Some(NotMeasured::NoNat), "{preset}");
        assert_eq!(r.behaviour.binding_lifetime, None);
        assert!(
            took <= Instant::from_millis(3_000),
            "{preset}: no idle wait"
        );
    }
    // Behind a NAT, but no extra socket to probe from.
    let mut net = Net::new(&[port_restricted(Duration::from_secs(30))], false, true, 6);
    let mut cfg = net.discovery_config(false);
    cfg.extra_sockets.clear();
    cfg.lifetime = Some(LifetimeConfig::new(max));
    let mut d = BehaviourDiscovery::new(cfg, 6);
    let r = net.run(&mut d);
    assert_eq!(r.lifetime_reason, Some(NotMeasured::NoExtraSocket));
    assert!(net.now <= Instant::from_millis(3_000));
}

#[test]
fn c8_binding_lifetime_is_deterministic() {
    let run = || {
        let mut net = Net::new(&[symmetric(Duration::from_secs(45))], false, true, 8);
        let mut cfg = net.discovery_config(true);
        cfg.lifetime = Some(LifetimeConfig::new(Duration::from_secs(100)));
        let mut d = BehaviourDiscovery::new(cfg, 8);
        let r = net.run(&mut d);
        (r, net.transmits, net.now)
    };
    assert_eq!(run(), run());
}

fn any_mapping() -> impl Strategy<Value = Mapping> {
    prop_oneof![
        Just(Mapping::EndpointIndependent),
        Just(Mapping::AddressDependent),
        Just(Mapping::AddressAndPortDependent),
    ]
}

fn any_filtering() -> impl Strategy<Value = Filtering> {
    prop_oneof![
        Just(Filtering::EndpointIndependent),
        Just(Filtering::AddressDependent),
        Just(Filtering::AddressAndPortDependent),
    ]
}

fn any_allocation() -> impl Strategy<Value = natrix_sim::nat::PortAllocation> {
    use natrix_sim::nat::PortAllocation as P;
    prop_oneof![Just(P::Preserving), Just(P::Sequential), Just(P::Random)]
}

proptest! {
    /// A single NAT with any RFC 4787 behaviour: the report equals the
    /// configuration (hairpin as the model delivers it: [`hairpin_of`]).
    #[test]
    fn c8_random_rfc4787_nat_is_reported_exactly(
        mapping in any_mapping(),
        filtering in any_filtering(),
        allocation in any_allocation(),
        hairpin in any::<bool>(),
        nat_seed in any::<u64>(),
        seed in any::<u64>(),
    ) {
        let c = NatConfig::new(mapping, filtering).allocation(allocation).hairpin(hairpin);
        let mut net = Net::new(&[c], false, true, nat_seed);
        let mut d = BehaviourDiscovery::new(net.discovery_config(true), seed);
        let r = net.run(&mut d);
        prop_assert_eq!(r.behaviour, expected_single(&c), "{:?}", r);
        prop_assert_eq!(r.nat_class(), mapping_of(mapping).nat_class());
        prop_assert!(net.now <= Instant::from_millis(3_000));
    }
}
