//! The NAT model: RFC 4787's behaviours, each independently configurable.
//!
//! A [`Nat`] joins an inside realm to an outside realm. Outbound packets get a
//! mapping (created or reused according to [`Mapping`]) from an external port
//! chosen by [`PortAllocation`]; inbound packets to a mapped external port pass
//! only if [`Filtering`] allows the source. Mappings expire after
//! `binding_lifetime` without outbound traffic (inbound traffic does not
//! refresh them, as RFC 4787 REQ-6 allows and most NATs do).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use natrix_proto::{Instant, Rng};

/// How a NAT reuses a mapping (RFC 4787 §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mapping {
    /// One mapping per internal address, whatever the destination ("cone").
    EndpointIndependent,
    /// One mapping per internal address and destination IP.
    AddressDependent,
    /// One mapping per internal address and destination IP and port ("symmetric").
    AddressAndPortDependent,
}

/// Which inbound packets a NAT lets through a mapping (RFC 4787 §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Filtering {
    /// Anyone ("full cone").
    EndpointIndependent,
    /// Only IPs the mapping has sent to ("restricted cone").
    AddressDependent,
    /// Only IP:port pairs the mapping has sent to ("port-restricted").
    AddressAndPortDependent,
}

/// How a NAT picks the external port of a new mapping (RFC 4787 §4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortAllocation {
    /// Keep the internal port when free, else the next free one.
    Preserving,
    /// The next port after the previous allocation.
    Sequential,
    /// A random free port.
    Random,
}

/// A NAT's behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NatConfig {
    /// Mapping behaviour.
    pub mapping: Mapping,
    /// Filtering behaviour.
    pub filtering: Filtering,
    /// Port allocation.
    pub allocation: PortAllocation,
    /// Whether a packet from inside to the NAT's own external address is
    /// looped back inside (RFC 4787 §6).
    pub hairpin: bool,
    /// How long a mapping lives without outbound traffic.
    pub binding_lifetime: Duration,
}

impl NatConfig {
    /// A NAT with the given mapping and filtering, port-preserving, no hairpin,
    /// two-minute bindings.
    #[must_use]
    pub fn new(mapping: Mapping, filtering: Filtering) -> Self {
        NatConfig {
            mapping,
            filtering,
            allocation: PortAllocation::Preserving,
            hairpin: false,
            binding_lifetime: Duration::from_secs(120),
        }
    }

    /// With another port allocation.
    #[must_use]
    pub fn allocation(mut self, a: PortAllocation) -> Self {
        self.allocation = a;
        self
    }

    /// With hairpinning on or off.
    #[must_use]
    pub fn hairpin(mut self, on: bool) -> Self {
        self.hairpin = on;
        self
    }

    /// With another binding lifetime.
    #[must_use]
    pub fn binding_lifetime(mut self, d: Duration) -> Self {
        self.binding_lifetime = d;
        self
    }
}

/// What identifies a mapping, per the mapping behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct MappingKey {
    internal: SocketAddr,
    dst_ip: Option<IpAddr>,
    dst_port: Option<u16>,
}

#[derive(Clone, Debug)]
struct Binding {
    key: MappingKey,
    external_port: u16,
    /// Destinations this mapping has sent to (for filtering).
    contacted: Vec<SocketAddr>,
    expires: Instant,
}

/// A NAT's state: its configuration, its external IP and its mappings.
#[derive(Clone, Debug)]
pub struct Nat {
    /// Behaviour.
    pub config: NatConfig,
    /// The external (public-side) IP.
    pub external_ip: IpAddr,
    by_key: BTreeMap<MappingKey, u16>,
    by_port: BTreeMap<u16, Binding>,
    next_port: u16,
    /// No binding expires before this (a lower bound: refreshes only push
    /// expiries later), so most calls skip the scan for dead bindings.
    next_expiry: Option<Instant>,
}

const FIRST_PORT: u16 = 1024;

impl Nat {
    /// A NAT with no mappings.
    #[must_use]
    pub fn new(config: NatConfig, external_ip: IpAddr) -> Self {
        Nat {
            config,
            external_ip,
            by_key: BTreeMap::new(),
            by_port: BTreeMap::new(),
            next_port: 40_000,
            next_expiry: None,
        }
    }

    fn key(&self, internal: SocketAddr, dst: SocketAddr) -> MappingKey {
        let (dst_ip, dst_port) = match self.config.mapping {
            Mapping::EndpointIndependent => (None, None),
            Mapping::AddressDependent => (Some(dst.ip()), None),
            Mapping::AddressAndPortDependent => (Some(dst.ip()), Some(dst.port())),
        };
        MappingKey {
            internal,
            dst_ip,
            dst_port,
        }
    }

    fn expire(&mut self, now: Instant) {
        if self.next_expiry.is_none_or(|t| now < t) {
            return;
        }
        let dead: Vec<u16> = self
            .by_port
            .iter()
            .filter(|(_, b)| b.expires <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in dead {
            if let Some(b) = self.by_port.remove(&p) {
                self.by_key.remove(&b.key);
            }
        }
        self.next_expiry = self.by_port.values().map(|b| b.expires).min();
    }

    fn allocate(&mut self, internal_port: u16, rng: &mut Rng) -> Option<u16> {
        let free = |p: u16, nat: &Nat| p >= FIRST_PORT && !nat.by_port.contains_key(&p);
        let first = match self.config.allocation {
            PortAllocation::Preserving if free(internal_port, self) => return Some(internal_port),
            PortAllocation::Preserving | PortAllocation::Sequential => self.next_port,
            PortAllocation::Random => {
                FIRST_PORT.saturating_add(rng.below(usize::from(u16::MAX - FIRST_PORT)) as u16)
            }
        };
        let span = u32::from(u16::MAX - FIRST_PORT) + 1;
        (0..span).find_map(|i| {
            let p = u32::from(first).wrapping_add(i) % span;
            let p = (p as u16).max(FIRST_PORT);
            free(p, self).then(|| {
                self.next_port = p.wrapping_add(1).max(FIRST_PORT);
                p
            })
        })
    }

    /// Outbound: `internal` sends to `dst`. Returns the external source address,
    /// creating or refreshing the mapping; `None` when the port space is full.
    pub fn outbound(
        &mut self,
        now: Instant,
        internal: SocketAddr,
        dst: SocketAddr,
        rng: &mut Rng,
    ) -> Option<SocketAddr> {
        self.expire(now);
        let key = self.key(internal, dst);
        let port = match self.by_key.get(&key) {
            Some(p) => *p,
            None => {
                let p = self.allocate(internal.port(), rng)?;
                self.by_key.insert(key, p);
                self.by_port.insert(
                    p,
                    Binding {
                        key,
                        external_port: p,
                        contacted: Vec::new(),
                        expires: now,
                    },
                );
                p
            }
        };
        let b = self.by_port.get_mut(&port)?;
        b.expires = now + self.config.binding_lifetime;
        let expires = b.expires;
        // A new binding may expire before every other one.
        self.next_expiry = Some(self.next_expiry.map_or(expires, |t| t.min(expires)));
        if !b.contacted.contains(&dst) {
            b.contacted.push(dst);
        }
        Some(SocketAddr::new(self.external_ip, b.external_port))
    }

    /// Inbound: `src` sends to our external `port`. Returns the internal
    /// destination when a live mapping exists and filtering lets `src` in.
    pub fn inbound(&mut self, now: Instant, src: SocketAddr, port: u16) -> Option<SocketAddr> {
        self.expire(now);
        let b = self.by_port.get(&port)?;
        let allowed = match self.config.filtering {
            Filtering::EndpointIndependent => true,
            Filtering::AddressDependent => b.contacted.iter().any(|c| c.ip() == src.ip()),
            Filtering::AddressAndPortDependent => b.contacted.contains(&src),
        };
        allowed.then_some(b.key.internal)
    }

    /// The external address of the live mapping `internal → dst` at `now`,
    /// without creating or refreshing anything.
    #[must_use]
    pub fn lookup(
        &self,
        now: Instant,
        internal: SocketAddr,
        dst: SocketAddr,
    ) -> Option<SocketAddr> {
        let port = self.by_key.get(&self.key(internal, dst))?;
        let b = self.by_port.get(port).filter(|b| b.expires > now)?;
        Some(SocketAddr::new(self.external_ip, b.external_port))
    }

    /// The internal address behind external `port`, ignoring filtering and
    /// without changing anything (for latency estimates).
    #[must_use]
    pub fn peek(&self, port: u16) -> Option<SocketAddr> {
        self.by_port.get(&port).map(|b| b.key.internal)
    }

    /// Drops every mapping (a NAT reboot or rebinding).
    pub fn flush(&mut self) {
        self.by_key.clear();
        self.by_port.clear();
        self.next_expiry = None;
    }

    /// Live mappings.
    #[must_use]
    pub fn mappings(&self) -> usize {
        self.by_port.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn nat(m: Mapping, f: Filtering) -> Nat {
        Nat::new(NatConfig::new(m, f), "203.0.113.9".parse().unwrap())
    }

    #[test]
    fn endpoint_independent_mapping_reuses_the_port() {
        let mut rng = Rng::new(1);
        let mut n = nat(
            Mapping::EndpointIndependent,
            Filtering::AddressAndPortDependent,
        );
        let t = Instant::ZERO;
        let x = n.outbound(t, a("10.0.0.2:4000"), a("198.51.100.1:1"), &mut rng);
        let y = n.outbound(t, a("10.0.0.2:4000"), a("198.51.100.2:2"), &mut rng);
        assert_eq!(x, Some(a("203.0.113.9:4000")));
        assert_eq!(x, y);
    }

    #[test]
    fn symmetric_mapping_differs_per_destination() {
        let mut rng = Rng::new(1);
        let mut n = nat(
            Mapping::AddressAndPortDependent,
            Filtering::AddressAndPortDependent,
        );
        n.config.allocation = PortAllocation::Sequential;
        let t = Instant::ZERO;
        let x = n
            .outbound(t, a("10.0.0.2:4000"), a("198.51.100.1:1"), &mut rng)
            .unwrap();
        let y = n
            .outbound(t, a("10.0.0.2:4000"), a("198.51.100.1:2"), &mut rng)
            .unwrap();
        assert_ne!(x.port(), y.port());
        assert_eq!(y.port(), x.port() + 1, "sequential allocation");
    }

    #[test]
    fn filtering_levels() {
        let mut rng = Rng::new(1);
        let t = Instant::ZERO;
        for (f, same_ip_other_port, other_ip) in [
            (Filtering::EndpointIndependent, true, true),
            (Filtering::AddressDependent, true, false),
            (Filtering::AddressAndPortDependent, false, false),
        ] {
            let mut n = nat(Mapping::EndpointIndependent, f);
            let ext = n
                .outbound(t, a("10.0.0.2:4000"), a("198.51.100.1:1000"), &mut rng)
                .unwrap();
            assert_eq!(
                n.inbound(t, a("198.51.100.1:1000"), ext.port()),
                Some(a("10.0.0.2:4000"))
            );
            assert_eq!(
                n.inbound(t, a("198.51.100.1:2000"), ext.port()).is_some(),
                same_ip_other_port
            );
            assert_eq!(
                n.inbound(t, a("198.51.100.7:1000"), ext.port()).is_some(),
                other_ip
            );
            assert_eq!(n.inbound(t, a("198.51.100.1:1000"), ext.port() + 1), None);
        }
    }

    #[test]
    fn bindings_expire_without_outbound_traffic() {
        let mut rng = Rng::new(1);
        let mut n = nat(Mapping::EndpointIndependent, Filtering::EndpointIndependent);
        n.config.binding_lifetime = Duration::from_secs(30);
        let ext = n
            .outbound(
                Instant::ZERO,
                a("10.0.0.2:4000"),
                a("198.51.100.1:1"),
                &mut rng,
            )
            .unwrap();
        let t = Instant::from_millis(29_000);
        assert!(n.inbound(t, a("198.51.100.5:5"), ext.port()).is_some());
        n.outbound(t, a("10.0.0.2:4000"), a("198.51.100.1:1"), &mut rng);
        assert!(
            n.inbound(
                Instant::from_millis(58_000),
                a("198.51.100.5:5"),
                ext.port()
            )
            .is_some()
        );
        assert!(
            n.inbound(
                Instant::from_millis(59_000),
                a("198.51.100.5:5"),
                ext.port()
            )
            .is_none()
        );
        assert_eq!(n.mappings(), 0);
    }
}
