//! Named NAT presets, and how to put a host behind one.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use natrix_proto::{Config, NatClass};

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
        }
    }

    /// The class a correct classification must find behind this preset.
    #[must_use]
    pub fn expected_class(self) -> NatClass {
        match self {
            Preset::Open => NatClass::Open,
            Preset::FullCone
            | Preset::RestrictedCone
            | Preset::PortRestrictedCone
            | Preset::DoubleNat => NatClass::Cone,
            Preset::Symmetric | Preset::SymmetricSequential => NatClass::Symmetric,
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
/// network `100.64.(slot).0/24`. The host's key and node id come from the
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
    let addr = match realm {
        Realm::Internet => SocketAddr::new(public, 4000),
        Realm::Behind(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, slot, 0, 2)), 4000),
    };
    let host = world.add_host(name, realm, addr, latency, config, seed);
    Placed { host, nats }
}
