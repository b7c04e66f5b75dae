//! NAT classification primitives: [`NatClass`], the [`pair_action`] matrix and the
//! two-probe [`classify`] function.
//!
//! These are pure functions; the sweep machine that gathers observations and
//! decides when to publish a result (C1, C2, C4) builds on them.

use core::net::{IpAddr, SocketAddr};

use crate::wire::NodeId;

/// The coarse NAT class a node announces to its peers.
///
/// The wire tags (`nat:open`, …) and the `u8` codes are the compatible
/// announcement; an unknown code or tag reads as [`NatClass::Unknown`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum NatClass {
    /// Reachable at the bound address: no NAT, or a mapping installed for us.
    Open,
    /// Endpoint-independent mapping: every peer saw the same public port.
    Cone,
    /// The public port depends on the destination.
    Symmetric,
    /// Not (yet) known.
    #[default]
    Unknown,
}

impl NatClass {
    /// All four classes, in code order.
    pub const ALL: [NatClass; 4] = [
        NatClass::Unknown,
        NatClass::Open,
        NatClass::Cone,
        NatClass::Symmetric,
    ];

    /// The announcement tag, e.g. `"nat:cone"`.
    #[must_use]
    pub const fn tag(self) -> &'static str {
        match self {
            NatClass::Open => "nat:open",
            NatClass::Cone => "nat:cone",
            NatClass::Symmetric => "nat:symmetric",
            NatClass::Unknown => "nat:unknown",
        }
    }

    /// Parses an announcement tag; anything unrecognised is `Unknown`.
    #[must_use]
    pub fn from_tag(tag: &str) -> NatClass {
        match tag {
            "nat:open" => NatClass::Open,
            "nat:cone" => NatClass::Cone,
            "nat:symmetric" => NatClass::Symmetric,
            _ => NatClass::Unknown,
        }
    }

    /// The `u8` code: Unknown = 0, Open = 1, Cone = 2, Symmetric = 3.
    #[must_use]
    pub const fn code(self) -> u8 {
        match self {
            NatClass::Unknown => 0,
            NatClass::Open => 1,
            NatClass::Cone => 2,
            NatClass::Symmetric => 3,
        }
    }

    /// Maps a code back; any code other than 1, 2, 3 is `Unknown`.
    #[must_use]
    pub const fn from_code(code: u8) -> NatClass {
        match code {
            1 => NatClass::Open,
            2 => NatClass::Cone,
            3 => NatClass::Symmetric,
            _ => NatClass::Unknown,
        }
    }
}

impl core::fmt::Display for NatClass {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.tag())
    }
}

/// What to do about a pair of nodes, from their classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PairAction {
    /// Connect directly, no punch needed.
    Direct,
    /// Run one rendezvous punch.
    SinglePunch,
    /// Do not try: stay on the relay.
    SkipPunch,
}

impl PairAction {
    /// A short lower-case name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            PairAction::Direct => "direct",
            PairAction::SinglePunch => "single-punch",
            PairAction::SkipPunch => "skip-punch",
        }
    }
}

/// The pair matrix of `behaviour.md`: local class × remote class → action.
///
/// |  local \ remote | Open | Cone | Symmetric | Unknown |
/// |---|---|---|---|---|
/// | Open | Direct | Direct | SinglePunch | Direct |
/// | Cone | Direct | SinglePunch | SinglePunch | SinglePunch |
/// | Symmetric | SinglePunch | SinglePunch | SkipPunch | SkipPunch |
/// | Unknown | Direct | SinglePunch | SkipPunch | Direct |
#[must_use]
pub const fn pair_action(local: NatClass, remote: NatClass) -> PairAction {
    use NatClass::{Cone, Open, Symmetric, Unknown};
    use PairAction::{Direct, SinglePunch, SkipPunch};
    match (local, remote) {
        (Open, Open | Cone | Unknown) => Direct,
        (Open, Symmetric) => SinglePunch,
        (Cone, Open) => Direct,
        (Cone, Cone | Symmetric | Unknown) => SinglePunch,
        (Symmetric, Open | Cone) => SinglePunch,
        (Symmetric, Symmetric | Unknown) => SkipPunch,
        (Unknown, Open | Unknown) => Direct,
        (Unknown, Cone) => SinglePunch,
        (Unknown, Symmetric) => SkipPunch,
    }
}

/// One reflex observation: `peer` saw us at `reflex`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Observation {
    /// The peer that answered the probe.
    pub peer: NodeId,
    /// The address it saw us at.
    pub reflex: SocketAddr,
}

/// The result of [`classify`]: a class and the reflex that goes with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Classification {
    /// The class.
    pub class: NatClass,
    /// The public address to announce; `None` only when `class` is `Unknown`
    /// for lack of observations.
    pub reflex: Option<SocketAddr>,
    /// How many distinct peers' observations were used.
    pub observations: usize,
}

/// Canonical form for comparisons: an IPv4-mapped IPv6 address compares equal
/// to its IPv4 form.
#[must_use]
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Largest number of distinct peers [`classify`] considers: the
/// `MAX_OBSERVATIONS` smallest peer ids among those observed (each with its
/// latest observation). Which peers those are does not depend on arrival
/// order, so neither does the result; the function allocates nothing and runs
/// in bounded time whatever it is given.
pub const MAX_OBSERVATIONS: usize = 32;

/// Two-probe classification (the baseline of `behaviour.md`, with C3).
///
/// * `bind`: the socket's bound address (its IP may be unspecified).
/// * `interfaces`: the host's own interface addresses (from the driver).
/// * `observations`: in arrival order; a later observation from the same peer
///   replaces the earlier one.
///
/// Rules: fewer than two distinct peers → Unknown. An observation equal to the
/// bound address → Open; with a wildcard bind the reflex IP must also be one of
/// `interfaces` (C3), because a matching port alone only means a
/// port-preserving NAT. All observed ports equal → Cone. Otherwise Symmetric.
/// IPv4-mapped IPv6 addresses compare equal to their IPv4 form (C9). The
/// result does not depend on the order of observations from distinct peers,
/// however many there are: beyond [`MAX_OBSERVATIONS`] distinct peers, the
/// ones with the smallest ids are used.
///
/// The reflex returned is the most frequently observed address, ties broken by
/// the smallest address, so it too is order-independent.
#[must_use]
pub fn classify(
    bind: SocketAddr,
    interfaces: &[IpAddr],
    observations: &[Observation],
) -> Classification {
    // Last observation per peer wins, keeping the MAX_OBSERVATIONS smallest
    // peer ids. Once the set is full its largest id only ever decreases, so a
    // peer pushed out (or never let in) can never come back: the final set is
    // the smallest ids overall, each with its latest observation, whatever the
    // order of arrival.
    let mut latest: [Option<Observation>; MAX_OBSERVATIONS] = [None; MAX_OBSERVATIONS];
    let mut count = 0usize;
    for obs in observations {
        let slot = latest
            .iter()
            .take(count)
            .position(|o| o.is_some_and(|o| o.peer == obs.peer));
        let target = match slot {
            Some(i) => Some(i),
            None if count < MAX_OBSERVATIONS => {
                count = count.saturating_add(1);
                Some(count.saturating_sub(1))
            }
            None => latest
                .iter()
                .enumerate()
                .filter_map(|(i, o)| o.map(|o| (o.peer, i)))
                .max()
                .filter(|(largest, _)| obs.peer < *largest)
                .map(|(_, i)| i),
        };
        if let Some(s) = target.and_then(|i| latest.get_mut(i)) {
            *s = Some(*obs);
        }
    }
    let used = || latest.iter().take(count).flatten();

    let reflex = used().map(|o| canonical_addr(o.reflex)).max_by(|a, b| {
        let ca = used().filter(|o| canonical_addr(o.reflex) == *a).count();
        let cb = used().filter(|o| canonical_addr(o.reflex) == *b).count();
        // Highest count wins; on a tie the smaller address wins (so it is "max").
        ca.cmp(&cb).then_with(|| b.cmp(a))
    });

    if count < 2 {
        return Classification {
            class: NatClass::Unknown,
            reflex,
            observations: count,
        };
    }

    let bind_ip = canonical_ip(bind.ip());
    let is_local = |o: &Observation| {
        let ip = canonical_ip(o.reflex.ip());
        o.reflex.port() == bind.port()
            && if bind_ip.is_unspecified() {
                interfaces.iter().any(|i| canonical_ip(*i) == ip)
            } else {
                ip == bind_ip
            }
    };
    // The smallest matching address, so the choice is order-independent.
    if let Some(local) = used()
        .filter(|o| is_local(o))
        .map(|o| canonical_addr(o.reflex))
        .min()
    {
        return Classification {
            class: NatClass::Open,
            reflex: Some(local),
            observations: count,
        };
    }
    let mut ports = used().map(|o| o.reflex.port());
    let first = ports.next();
    let class = if ports.all(|p| Some(p) == first) {
        NatClass::Cone
    } else {
        NatClass::Symmetric
    };
    Classification {
        class,
        reflex,
        observations: count,
    }
}

/// `addr` with its IP in canonical form (IPv4-mapped IPv6 → IPv4): the one
/// form natrix uses for an address once it has entered (C9). (IPv6 scope id
/// and flow info are dropped, as on the wire.)
#[must_use]
pub fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(addr.ip()), addr.port())
}

/// R13: is `addr` an address no keep-alive may ever be sent to? Port 0, an
/// unspecified address, a multicast address, the IPv4 limited broadcast
/// `255.255.255.255`, or an IPv4 "this network" address (`0.0.0.0/8`); an
/// IPv4-mapped address is judged by its IPv4 form (C9).
///
/// (The other R13 destinations, "the coordinator's own address" and the
/// node's own, depend on who asks and are checked where they are known.)
#[must_use]
pub fn is_bogus_destination(addr: SocketAddr) -> bool {
    let ip = canonical_ip(addr.ip());
    addr.port() == 0
        || ip.is_unspecified()
        || ip.is_multicast()
        || match ip {
            IpAddr::V4(v4) => {
                let [first, ..] = v4.octets();
                v4.is_broadcast() || first == 0
            }
            IpAddr::V6(_) => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use NatClass::*;
    use PairAction::*;

    fn obs(peer: u64, a: &str) -> Observation {
        Observation {
            peer: NodeId(peer),
            reflex: a.parse().unwrap(),
        }
    }

    #[test]
    fn matrix_all_sixteen_cells() {
        let expected = [
            (Open, [Direct, Direct, SinglePunch, Direct]),
            (Cone, [Direct, SinglePunch, SinglePunch, SinglePunch]),
            (Symmetric, [SinglePunch, SinglePunch, SkipPunch, SkipPunch]),
            (Unknown, [Direct, SinglePunch, SkipPunch, Direct]),
        ];
        for (local, row) in expected {
            for (remote, want) in [Open, Cone, Symmetric, Unknown].into_iter().zip(row) {
                assert_eq!(pair_action(local, remote), want, "{local} x {remote}");
            }
        }
    }

    #[test]
    fn tags_and_codes_round_trip() {
        for c in NatClass::ALL {
            assert_eq!(NatClass::from_tag(c.tag()), c);
            assert_eq!(NatClass::from_code(c.code()), c);
        }
        assert_eq!(NatClass::from_code(200), Unknown);
        assert_eq!(NatClass::from_tag("nat:weird"), Unknown);
    }

    #[test]
    fn fewer_than_two_is_unknown() {
        let bind = "10.0.0.2:4000".parse().unwrap();
        let c = classify(bind, &[], &[obs(1, "203.0.113.1:4000")]);
        assert_eq!(c.class, Unknown);
        // Two observations from the same peer are one.
        let c = classify(
            bind,
            &[],
            &[obs(1, "203.0.113.1:4000"), obs(1, "203.0.113.1:5000")],
        );
        assert_eq!(c.class, Unknown);
        assert_eq!(c.observations, 1);
    }

    #[test]
    fn baseline_open_cone_symmetric() {
        let bind = "203.0.113.1:4000".parse().unwrap();
        let o = [obs(1, "203.0.113.1:4000"), obs(2, "203.0.113.1:4000")];
        assert_eq!(classify(bind, &[], &o).class, Open);
        let bind = "10.0.0.2:4000".parse().unwrap();
        let o = [obs(1, "203.0.113.1:7000"), obs(2, "203.0.113.1:7000")];
        let c = classify(bind, &[], &o);
        assert_eq!(c.class, Cone);
        assert_eq!(c.reflex, Some("203.0.113.1:7000".parse().unwrap()));
        let o = [obs(1, "203.0.113.1:7000"), obs(2, "203.0.113.1:7001")];
        assert_eq!(classify(bind, &[], &o).class, Symmetric);
    }

    #[test]
    fn c3_wildcard_bind_port_preserving_nat_is_cone() {
        let bind = "0.0.0.0:4000".parse().unwrap();
        let ifaces: [IpAddr; 2] = ["10.0.0.2".parse().unwrap(), "127.0.0.1".parse().unwrap()];
        let o = [obs(1, "203.0.113.1:4000"), obs(2, "203.0.113.1:4000")];
        assert_eq!(classify(bind, &ifaces, &o).class, Cone);
        // Reflex IP is one of our own interfaces: really Open.
        let ifaces: [IpAddr; 1] = ["203.0.113.1".parse().unwrap()];
        assert_eq!(classify(bind, &ifaces, &o).class, Open);
        // IPv6 wildcard with IPv4-mapped observations.
        let bind = "[::]:4000".parse().unwrap();
        let o = [
            obs(1, "[::ffff:203.0.113.1]:4000"),
            obs(2, "203.0.113.1:4000"),
        ];
        assert_eq!(classify(bind, &ifaces, &o).class, Open);
    }

    #[test]
    fn later_observation_from_same_peer_replaces_earlier() {
        let bind = "10.0.0.2:4000".parse().unwrap();
        let o = [
            obs(1, "203.0.113.1:7000"),
            obs(2, "203.0.113.1:7001"),
            obs(2, "203.0.113.1:7000"),
        ];
        assert_eq!(classify(bind, &[], &o).class, Cone);
    }
}
