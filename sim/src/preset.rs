//! Named NAT presets, and how to put a host behind one.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use natrix_proto::{
    Config, FilteringBehaviour, MappingBehaviour, NatClass, NatProfile,
    PortAllocation as Allocation,
};

use crate::nat::{Filtering, Mapping, NatConfig, PortAllocation};
use crate::world::{HostId, NatId, Realm, World};

/// A named NAT setup for one host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Preset {
    /// No NAT: the host has a public address.
    Open,
    /// Endpoint-independent mapping and filtering, port preserving.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering.
    RestrictedCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestrictedCone,
    /// Address-and-port-dependent mapping and filtering, random ports.
    Symmetric,
    /// Address-and-port-dependent mapping and filtering, sequential ports
    /// (predictable — a target for behaviour discovery, C8).
    SymmetricSequential,
    /// A port-restricted home NAT behind a carrier-grade NAT (endpoint-
    /// independent mapping and filtering, sequential ports, 100.64/10 inside).
    DoubleNat,
    /// No NAT, but a stateful firewall that drops unsolicited inbound (the
    /// typical IPv6 home router): the host has a public address, nothing is
    /// translated, and only replies to what the host sent — from the same
    /// remote IP and port — get in (address-and-port-dependent filtering,
    /// two-minute bindings refreshed by outbound traffic). Modelled as an
    /// endpoint-independent, port-preserving [`Nat`](crate::nat::Nat) whose
    /// external IP is the host's own IP, with the host inside it at that very
    /// address ([`place`]), so every mapping is the identity and a server
    /// sees the host's own address: it classifies itself
    /// [`NatClass::Open`]. As with the other presets, the filter state
    /// belongs to the host's one mapping (not to each flow, as a conntrack
    /// entry would): a remote the host sent to stays admitted while the host
    /// sends to anyone at least every two minutes. Not in
    /// [`ALL`](Self::ALL): see [`LAB_EXTRA`](Self::LAB_EXTRA).
    Firewall,
    /// One NAT with this RFC 4787 mapping and filtering: ports preserved
    /// under endpoint-independent mapping, random otherwise (as a NAT that
    /// makes a new mapping per destination usually does). For checking the
    /// C8 pair decision over every mapping × filtering pair; not in
    /// [`ALL`](Self::ALL): see [`RFC4787`](Self::RFC4787).
    Rfc4787(Mapping, Filtering),
}

impl Preset {
    /// Every preset, in table order.
    pub const ALL: [Preset; 7] = [
        Preset::Open,
        Preset::FullCone,
        Preset::RestrictedCone,
        Preset::PortRestrictedCone,
        Preset::Symmetric,
        Preset::SymmetricSequential,
        Preset::DoubleNat,
    ];

    /// The nine single NATs of RFC 4787 (mapping × filtering), in table
    /// order: [`Preset::Rfc4787`].
    pub const RFC4787: [Preset; 9] = {
        use Filtering as F;
        use Mapping as M;
        [
            Preset::Rfc4787(M::EndpointIndependent, F::EndpointIndependent),
            Preset::Rfc4787(M::EndpointIndependent, F::AddressDependent),
            Preset::Rfc4787(M::EndpointIndependent, F::AddressAndPortDependent),
            Preset::Rfc4787(M::AddressDependent, F::EndpointIndependent),
            Preset::Rfc4787(M::AddressDependent, F::AddressDependent),
            Preset::Rfc4787(M::AddressDependent, F::AddressAndPortDependent),
            Preset::Rfc4787(M::AddressAndPortDependent, F::EndpointIndependent),
            Preset::Rfc4787(M::AddressAndPortDependent, F::AddressDependent),
            Preset::Rfc4787(M::AddressAndPortDependent, F::AddressAndPortDependent),
        ]
    };

    /// Presets outside the 7×7 pair matrix ([`ALL`](Self::ALL)), for
    /// comparing a real-NAT lab's peers with the simulator's predictions:
    /// the IPv6-style stateful firewall ([`Preset::Firewall`]).
    pub const LAB_EXTRA: [Preset; 1] = [Preset::Firewall];

    /// A short name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Preset::Open => "open",
            Preset::FullCone => "full-cone",
            Preset::RestrictedCone => "restricted",
            Preset::PortRestrictedCone => "port-restricted",
            Preset::Symmetric => "symmetric",
            Preset::SymmetricSequential => "symmetric-seq",
            Preset::DoubleNat => "double-nat",
            Preset::Firewall => "firewall",
            Preset::Rfc4787(m, f) => {
                use Filtering as F;
                use Mapping as M;
                match (m, f) {
                    (M::EndpointIndependent, F::EndpointIndependent) => "EIM/EIF",
                    (M::EndpointIndependent, F::AddressDependent) => "EIM/ADF",
                    (M::EndpointIndependent, F::AddressAndPortDependent) => "EIM/APDF",
                    (M::AddressDependent, F::EndpointIndependent) => "ADM/EIF",
                    (M::AddressDependent, F::AddressDependent) => "ADM/ADF",
                    (M::AddressDependent, F::AddressAndPortDependent) => "ADM/APDF",
                    (M::AddressAndPortDependent, F::EndpointIndependent) => "APDM/EIF",
                    (M::AddressAndPortDependent, F::AddressDependent) => "APDM/ADF",
                    (M::AddressAndPortDependent, F::AddressAndPortDependent) => "APDM/APDF",
                }
            }
        }
    }

    /// The NATs between the host and the Internet, innermost first.
    #[must_use]
    pub fn nats(self) -> Vec<NatConfig> {
        use Filtering as F;
        use Mapping as M;
        match self {
            Preset::Open => vec![],
            Preset::FullCone => vec![NatConfig::new(
                M::EndpointIndependent,
                F::EndpointIndependent,
            )],
            Preset::RestrictedCone => {
                vec![NatConfig::new(M::EndpointIndependent, F::AddressDependent)]
            }
            Preset::PortRestrictedCone => {
                vec![NatConfig::new(
                    M::EndpointIndependent,
                    F::AddressAndPortDependent,
                )]
            }
            Preset::Symmetric => vec![
                NatConfig::new(M::AddressAndPortDependent, F::AddressAndPortDependent)
                    .allocation(PortAllocation::Random),
            ],
            Preset::SymmetricSequential => vec![
                NatConfig::new(M::AddressAndPortDependent, F::AddressAndPortDependent)
                    .allocation(PortAllocation::Sequential),
            ],
            Preset::DoubleNat => vec![
                NatConfig::new(M::EndpointIndependent, F::AddressAndPortDependent),
                NatConfig::new(M::EndpointIndependent, F::EndpointIndependent)
                    .allocation(PortAllocation::Sequential),
            ],
            // One internal address, endpoint-independent mapping and port
            // preservation: the one mapping always keeps the host's port
            // (4000, free and above the NAT's reserved range), and `place`
            // makes the external IP the host's own.
            Preset::Firewall => vec![NatConfig::new(
                M::EndpointIndependent,
                F::AddressAndPortDependent,
            )],
            Preset::Rfc4787(m, f) => {
                vec![
                    NatConfig::new(m, f).allocation(if m == M::EndpointIndependent {
                        PortAllocation::Preserving
                    } else {
                        PortAllocation::Random
                    }),
                ]
            }
        }
    }

    /// Whether the host keeps its own (public) address behind the preset's
    /// NATs: true for [`Open`](Self::Open) (no NAT) and
    /// [`Firewall`](Self::Firewall) (a filter that translates nothing).
    #[must_use]
    pub fn host_is_public(self) -> bool {
        matches!(self, Preset::Open | Preset::Firewall)
    }

    /// The class a correct classification must find behind this preset.
    #[must_use]
    pub fn expected_class(self) -> NatClass {
        match self {
            Preset::Open | Preset::Firewall => NatClass::Open,
            Preset::FullCone
            | Preset::RestrictedCone
            | Preset::PortRestrictedCone
            | Preset::DoubleNat => NatClass::Cone,
            Preset::Symmetric | Preset::SymmetricSequential => NatClass::Symmetric,
            Preset::Rfc4787(Mapping::EndpointIndependent, _) => NatClass::Cone,
            Preset::Rfc4787(..) => NatClass::Symmetric,
        }
    }

    /// C8: the mapping, filtering and port allocation a behaviour discovery
    /// finds behind this preset (`sim/tests/stun_behaviour.rs` checks that
    /// it does), as the host announces them: through several NATs, the most
    /// dependent mapping, the strictest filtering and the outermost NAT's
    /// allocation; a public host keeps the identity mapping and its ports,
    /// and only the firewall filters it.
    #[must_use]
    pub fn profile(self) -> NatProfile {
        let mapping = |m: Mapping| match m {
            Mapping::EndpointIndependent => MappingBehaviour::EndpointIndependent,
            Mapping::AddressDependent => MappingBehaviour::AddressDependent,
            Mapping::AddressAndPortDependent => MappingBehaviour::AddressAndPortDependent,
        };
        let filtering = |f: Filtering| match f {
            Filtering::EndpointIndependent => FilteringBehaviour::EndpointIndependent,
            Filtering::AddressDependent => FilteringBehaviour::AddressDependent,
            Filtering::AddressAndPortDependent => FilteringBehaviour::AddressAndPortDependent,
        };
        let nats = self.nats();
        // The outermost NAT picks the ports the world sees (inner NATs of
        // the presets preserve them); the simulator's sequential NATs step
        // by one.
        let allocation = match nats.last().map(|n| n.allocation) {
            None | Some(PortAllocation::Preserving) => Allocation::Preserving,
            Some(PortAllocation::Sequential) => Allocation::Sequential { step: 1 },
            Some(PortAllocation::Random) => Allocation::Random,
        };
        NatProfile {
            allocation: Some(allocation),
            mapping: nats
                .iter()
                .map(|n| mapping(n.mapping))
                .max()
                .unwrap_or(MappingBehaviour::EndpointIndependent),
            filtering: nats
                .iter()
                .map(|n| filtering(n.filtering))
                .max()
                .unwrap_or(FilteringBehaviour::EndpointIndependent),
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A host placed behind a preset.
#[derive(Clone, Debug)]
pub struct Placed {
    /// The host.
    pub host: HostId,
    /// Its NATs, innermost first.
    pub nats: Vec<NatId>,
}

/// Puts host number `slot` (1..=200) behind `preset`: public addresses are
/// `203.0.113.(100 + slot)`, the home network `10.(slot).0.0/24`, the carrier
/// network `100.64.(slot).0/24`. A host behind a preset that translates
/// nothing ([`Preset::host_is_public`]) sits at the public address itself,
/// `203.0.113.(100 + slot):4000` — behind [`Preset::Firewall`]'s filter, the
/// filter's external IP is that same address. The host's key and node id come from the
/// world ([`World::add_host`]).
pub fn place(
    world: &mut World,
    preset: Preset,
    slot: u8,
    name: &str,
    latency: Duration,
    config: Config,
    seed: u64,
) -> Placed {
    let public = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 100u8.saturating_add(slot)));
    let configs = preset.nats();
    // Build from the outside in: the outermost NAT gets the public address,
    // a NAT inside another one an address of the carrier network.
    let mut realm = Realm::Internet;
    let mut nats = Vec::new();
    for (i, cfg) in configs.iter().rev().enumerate() {
        let ext = if i == 0 {
            public
        } else {
            IpAddr::V4(Ipv4Addr::new(100, 64, slot, 2))
        };
        let n = world.add_nat(*cfg, realm, ext);
        nats.push(n);
        realm = Realm::Behind(n);
    }
    nats.reverse();
    let addr = if preset.host_is_public() {
        SocketAddr::new(public, 4000)
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, slot, 0, 2)), 4000)
    };
    let host = world.add_host(name, realm, addr, latency, config, seed);
    Placed { host, nats }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::Nat;

    #[test]
    fn the_firewall_is_a_lab_extra() {
        assert_eq!(Preset::ALL.len(), 7);
        assert!(!Preset::ALL.contains(&Preset::Firewall));
        assert_eq!(Preset::LAB_EXTRA, [Preset::Firewall]);
        assert_eq!(Preset::Firewall.name(), "firewall");
        assert_eq!(Preset::Firewall.expected_class(), NatClass::Open);
        assert!(Preset::Firewall.host_is_public() && Preset::Open.host_is_public());
        assert!(
            Preset::ALL[1..]
                .iter()
                .all(|p| !p.host_is_public() && !p.nats().is_empty())
        );
    }

    #[test]
    fn the_firewall_translates_nothing_and_filters_by_address_and_port() {
        let mut w = World::new(1);
        let p = place(
            &mut w,
            Preset::Firewall,
            1,
            "F",
            Duration::from_millis(10),
            Config::default(),
            2,
        );
        let own: SocketAddr = "203.0.113.101:4000".parse().unwrap();
        assert_eq!(w.host(p.host).addr, own);
        assert_eq!(p.nats.len(), 1);
        assert_eq!(w.host(p.host).realm, Realm::Behind(p.nats[0]));
        let cfg = w.nat(p.nats[0]).config;
        assert_eq!(cfg, Preset::Firewall.nats()[0]);
        assert_eq!(cfg.filtering, Filtering::AddressAndPortDependent);

        // The one mapping is the identity, whatever the destination, and it
        // comes back the same after expiring.
        let mut nat = Nat::new(cfg, own.ip());
        let mut rng = natrix_proto::Rng::new(3);
        let t0 = natrix_proto::Instant::ZERO;
        let x: SocketAddr = "198.51.100.7:5000".parse().unwrap();
        let y: SocketAddr = "198.51.100.8:6000".parse().unwrap();
        assert_eq!(nat.outbound(t0, own, x, &mut rng), Some(own));
        assert_eq!(nat.outbound(t0, own, y, &mut rng), Some(own));
        assert_eq!(nat.inbound(t0, x, own.port()), Some(own));
        assert_eq!(
            nat.inbound(t0, "198.51.100.7:5001".parse().unwrap(), own.port()),
            None
        );
        assert_eq!(
            nat.inbound(t0, "198.51.100.9:5000".parse().unwrap(), own.port()),
            None
        );
        let later = t0 + cfg.binding_lifetime + Duration::from_secs(1);
        assert_eq!(nat.inbound(later, x, own.port()), None);
        assert_eq!(nat.outbound(later, own, y, &mut rng), Some(own));
    }
}
