//! NAT behaviour in RFC 4787 terms (C8): what a behaviour discovery measures.
//!
//! The baseline [`NatClass`] (open / cone / symmetric) is what nodes announce;
//! a [`Behaviour`] is the finer picture behind it — how the NAT reuses
//! mappings ([`MappingBehaviour`]), which inbound packets it lets through
//! ([`FilteringBehaviour`]), how it picks external ports ([`PortAllocation`]),
//! whether it hairpins, and how long an idle binding lives. Every aspect is an
//! `Option`: `None` means "not measured" (the measuring side says why).
//!
//! The types are plain data, `no_std` without allocation. The measurement
//! itself (RFC 5780 tests against a STUN server) lives in `natrix-stun`.
//!
//! ```
//! use natrix_proto::NatClass;
//! use natrix_proto::behaviour::{Behaviour, FilteringBehaviour, MappingBehaviour};
//!
//! let b = Behaviour {
//!     nat: Some(true),
//!     mapping: Some(MappingBehaviour::EndpointIndependent),
//!     filtering: Some(FilteringBehaviour::AddressAndPortDependent),
//!     ..Behaviour::UNKNOWN
//! };
//! assert_eq!(b.nat_class(), NatClass::Cone);
//! assert_eq!(b.to_string(), "NAT, EIM, APDF, ports ?, hairpin ?, lifetime ?");
//! assert!(b.summary().starts_with("a cone NAT that only lets in replies"));
//! ```

use core::fmt;
use core::time::Duration;

use crate::classify::{NatClass, PairAction, pair_action};
use crate::spray::SpraySide;

/// How a NAT reuses a mapping for one internal address (RFC 4787 §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MappingBehaviour {
    /// One mapping per internal address, whatever the destination (EIM):
    /// every peer sees the same public address ("cone").
    EndpointIndependent,
    /// One mapping per internal address and destination IP (ADM).
    AddressDependent,
    /// One mapping per internal address and destination IP and port (APDM,
    /// "symmetric").
    AddressAndPortDependent,
}

impl MappingBehaviour {
    /// The RFC 4787 name, e.g. `"endpoint-independent mapping"`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            MappingBehaviour::EndpointIndependent => "endpoint-independent mapping",
            MappingBehaviour::AddressDependent => "address-dependent mapping",
            MappingBehaviour::AddressAndPortDependent => "address and port-dependent mapping",
        }
    }

    /// The short form: `"EIM"`, `"ADM"` or `"APDM"`.
    #[must_use]
    pub const fn short(self) -> &'static str {
        match self {
            MappingBehaviour::EndpointIndependent => "EIM",
            MappingBehaviour::AddressDependent => "ADM",
            MappingBehaviour::AddressAndPortDependent => "APDM",
        }
    }

    /// The baseline class a NAT with this mapping announces: EIM →
    /// [`NatClass::Cone`], ADM and APDM → [`NatClass::Symmetric`] (the public
    /// port a peer sees depends on who the peer is).
    #[must_use]
    pub const fn nat_class(self) -> NatClass {
        match self {
            MappingBehaviour::EndpointIndependent => NatClass::Cone,
            MappingBehaviour::AddressDependent | MappingBehaviour::AddressAndPortDependent => {
                NatClass::Symmetric
            }
        }
    }
}

impl fmt::Display for MappingBehaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which inbound packets a NAT (or firewall) lets through a mapping
/// (RFC 4787 §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FilteringBehaviour {
    /// Anyone may send to the mapping (EIF, "full cone").
    EndpointIndependent,
    /// Only IPs the mapping has sent to, from any port (ADF, "restricted
    /// cone").
    AddressDependent,
    /// Only the IP and port pairs the mapping has sent to (APDF,
    /// "port-restricted").
    AddressAndPortDependent,
}

impl FilteringBehaviour {
    /// The RFC 4787 name, e.g. `"endpoint-independent filtering"`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            FilteringBehaviour::EndpointIndependent => "endpoint-independent filtering",
            FilteringBehaviour::AddressDependent => "address-dependent filtering",
            FilteringBehaviour::AddressAndPortDependent => "address and port-dependent filtering",
        }
    }

    /// The short form: `"EIF"`, `"ADF"` or `"APDF"`.
    #[must_use]
    pub const fn short(self) -> &'static str {
        match self {
            FilteringBehaviour::EndpointIndependent => "EIF",
            FilteringBehaviour::AddressDependent => "ADF",
            FilteringBehaviour::AddressAndPortDependent => "APDF",
        }
    }
}

impl fmt::Display for FilteringBehaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a NAT picks the external port of a new mapping (RFC 4787 §4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortAllocation {
    /// The external port is the internal port (when free): "port
    /// preservation".
    Preserving,
    /// Each new mapping gets the previous one's port plus `step` (small and
    /// non-zero): the next ports are predictable (N1).
    Sequential {
        /// The difference between consecutive allocations.
        step: i32,
    },
    /// No pattern: ports look random (N2's birthday punch is the only
    /// option against a symmetric NAT of this kind).
    Random,
}

impl PortAllocation {
    /// A short name: `"preserving"`, `"sequential"` or `"random"`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            PortAllocation::Preserving => "preserving",
            PortAllocation::Sequential { .. } => "sequential",
            PortAllocation::Random => "random",
        }
    }

    /// The wire form natrix's announcement carries after the profile byte
    /// (N1): a tag (1 preserving, 2 sequential, 3 random) and the step as a
    /// big-endian `i16` (0 unless sequential; a step outside the `i16` range
    /// is sent as random, which it is as good as).
    #[must_use]
    pub const fn to_wire(self) -> [u8; 3] {
        match self {
            PortAllocation::Preserving => [1, 0, 0],
            PortAllocation::Sequential { step } if step != 0 && step as i16 as i32 == step => {
                let [hi, lo] = (step as i16).to_be_bytes();
                [2, hi, lo]
            }
            PortAllocation::Sequential { .. } | PortAllocation::Random => [3, 0, 0],
        }
    }

    /// Reads [`to_wire`](Self::to_wire) bytes; `None` for anything it never
    /// writes (another tag, a step with another tag, a sequential step 0).
    #[must_use]
    pub const fn from_wire(bytes: [u8; 3]) -> Option<PortAllocation> {
        let step = i16::from_be_bytes([bytes[1], bytes[2]]);
        match (bytes[0], step) {
            (1, 0) => Some(PortAllocation::Preserving),
            (2, s) if s != 0 => Some(PortAllocation::Sequential { step: s as i32 }),
            (3, 0) => Some(PortAllocation::Random),
            _ => None,
        }
    }
}

impl fmt::Display for PortAllocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortAllocation::Sequential { step } => write!(f, "sequential ({step:+})"),
            other => f.write_str(other.name()),
        }
    }
}

/// What is known about the NAT (or firewall) between a socket and the
/// Internet. Each `None` is "not measured"; [`Behaviour::UNKNOWN`] (the
/// `Default`) knows nothing.
///
/// `nat` says whether addresses are translated at all: `Some(false)` means
/// the server saw the socket's own bound address — a public address, perhaps
/// behind a stateful firewall that [`filtering`](Self::filtering) then
/// describes; in that case `mapping` (the identity is endpoint-independent)
/// and `allocation` (ports are kept) describe the identity translation. The
/// baseline class follows: see [`nat_class`](Self::nat_class).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Behaviour {
    /// Whether addresses are translated: `Some(false)` = no NAT.
    pub nat: Option<bool>,
    /// Mapping behaviour.
    pub mapping: Option<MappingBehaviour>,
    /// Filtering behaviour.
    pub filtering: Option<FilteringBehaviour>,
    /// Port allocation.
    pub allocation: Option<PortAllocation>,
    /// Whether a packet sent to the socket's own public address comes back
    /// (RFC 4787 §6).
    pub hairpin: Option<bool>,
    /// How long an idle binding lives.
    pub binding_lifetime: Option<Duration>,
}

impl Behaviour {
    /// Nothing measured.
    pub const UNKNOWN: Behaviour = Behaviour {
        nat: None,
        mapping: None,
        filtering: None,
        allocation: None,
        hairpin: None,
        binding_lifetime: None,
    };

    /// The baseline class this behaviour implies: no NAT (`nat ==
    /// Some(false)`) → [`NatClass::Open`] (a firewall does not change it,
    /// like the two-probe classification); otherwise the mapping decides
    /// ([`MappingBehaviour::nat_class`]); no mapping measured →
    /// [`NatClass::Unknown`].
    #[must_use]
    pub const fn nat_class(&self) -> NatClass {
        match (self.nat, self.mapping) {
            (Some(false), _) => NatClass::Open,
            (_, Some(m)) => m.nat_class(),
            (_, None) => NatClass::Unknown,
        }
    }

    /// One line of plain language: what this NAT means for reaching peers.
    #[must_use]
    pub const fn summary(&self) -> &'static str {
        use FilteringBehaviour as F;
        use MappingBehaviour as M;
        match (self.nat, self.mapping, self.filtering) {
            (Some(false), _, Some(F::EndpointIndependent)) => {
                "no NAT and no filtering: anyone can reach you directly"
            }
            (Some(false), _, Some(F::AddressDependent)) => {
                "no NAT, but a firewall that only lets in hosts you sent to: punching works with every peer"
            }
            (Some(false), _, Some(F::AddressAndPortDependent)) => {
                "no NAT, but a firewall that only lets in replies from where you sent: punching works with any peer that is not symmetric"
            }
            (Some(false), _, None) => "no NAT: you have a public address (filtering not measured)",
            (_, Some(M::EndpointIndependent), Some(F::EndpointIndependent)) => {
                "a full-cone NAT: once you have sent anything, anyone can reach your public address"
            }
            (_, Some(M::EndpointIndependent), Some(F::AddressDependent)) => {
                "a cone NAT that lets in any port of the hosts you sent to: punching works with every peer"
            }
            (_, Some(M::EndpointIndependent), Some(F::AddressAndPortDependent)) => {
                "a cone NAT that only lets in replies from where you sent: punching works with any peer that is not symmetric"
            }
            (_, Some(M::EndpointIndependent), None) => {
                "a cone NAT (filtering not measured): punching works with most peers"
            }
            (_, Some(M::AddressDependent | M::AddressAndPortDependent), _) => {
                match self.allocation {
                    Some(PortAllocation::Sequential { .. }) => {
                        "a symmetric NAT with predictable ports: punching needs a peer that lets in any port, or port prediction"
                    }
                    _ => {
                        "a symmetric NAT: your public port changes with each peer, so punching needs a peer that lets in any port"
                    }
                }
            }
            (_, None, _) => "unknown: the NAT's behaviour was not measured",
        }
    }
}

/// What the pair decision reads about a NAT, as nodes announce it to each
/// other (C8): how it maps, how it filters, and — when measured — how it
/// picks ports (N1: a symmetric NAT with sequential ports is predictable).
///
/// Nodes announce it beside their class in natrix's own announcement (one
/// byte, [`code`](Self::code), then optionally the allocation,
/// [`PortAllocation::to_wire`]); a node without a measurement announces none
/// and the pair decision falls back to the baseline matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NatProfile {
    /// Mapping behaviour (for a public address: endpoint-independent).
    pub mapping: MappingBehaviour,
    /// Filtering behaviour (of the NAT or the firewall in front of the host).
    pub filtering: FilteringBehaviour,
    /// Port allocation, when measured.
    pub allocation: Option<PortAllocation>,
}

impl NatProfile {
    /// A public address, or a port mapping, that lets anyone in.
    pub const OPEN: NatProfile = NatProfile::new(
        MappingBehaviour::EndpointIndependent,
        FilteringBehaviour::EndpointIndependent,
    );

    /// A profile without a measured allocation.
    #[must_use]
    pub const fn new(mapping: MappingBehaviour, filtering: FilteringBehaviour) -> NatProfile {
        NatProfile {
            mapping,
            filtering,
            allocation: None,
        }
    }

    /// With this port allocation.
    #[must_use]
    pub const fn with_allocation(mut self, allocation: Option<PortAllocation>) -> NatProfile {
        self.allocation = allocation;
        self
    }

    /// N1: the step between this NAT's consecutive allocations when the
    /// next external port toward a new destination is predictable from the
    /// last one — a mapping that depends on the destination, with
    /// sequential allocation. `None` for endpoint-independent mapping (the
    /// port is already known) and for random or unmeasured allocation.
    #[must_use]
    pub const fn predictable_step(self) -> Option<i32> {
        match (self.mapping, self.allocation) {
            (MappingBehaviour::EndpointIndependent, _) => None,
            (_, Some(PortAllocation::Sequential { step })) => Some(step),
            _ => None,
        }
    }

    /// The wire byte: mapping in the high nibble, filtering in the low one,
    /// each 1 (endpoint-independent), 2 (address-dependent) or 3 (address
    /// and port-dependent).
    #[must_use]
    pub const fn code(self) -> u8 {
        let m = match self.mapping {
            MappingBehaviour::EndpointIndependent => 1,
            MappingBehaviour::AddressDependent => 2,
            MappingBehaviour::AddressAndPortDependent => 3,
        };
        let f = match self.filtering {
            FilteringBehaviour::EndpointIndependent => 1,
            FilteringBehaviour::AddressDependent => 2,
            FilteringBehaviour::AddressAndPortDependent => 3,
        };
        (m << 4) | f
    }

    /// Reads a [`code`](Self::code) byte (the allocation is not in it:
    /// `None`); any other byte is `None`.
    #[must_use]
    pub const fn from_code(code: u8) -> Option<NatProfile> {
        let mapping = match code >> 4 {
            1 => MappingBehaviour::EndpointIndependent,
            2 => MappingBehaviour::AddressDependent,
            3 => MappingBehaviour::AddressAndPortDependent,
            _ => return None,
        };
        let filtering = match code & 0x0f {
            1 => FilteringBehaviour::EndpointIndependent,
            2 => FilteringBehaviour::AddressDependent,
            3 => FilteringBehaviour::AddressAndPortDependent,
            _ => return None,
        };
        Some(NatProfile::new(mapping, filtering))
    }
}

impl fmt::Display for NatProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.mapping.short(), self.filtering.short())
    }
}

impl Behaviour {
    /// The [`NatProfile`] to announce: both mapping and filtering measured
    /// (no NAT counts as endpoint-independent mapping), with the allocation
    /// when measured; `None` otherwise.
    #[must_use]
    pub const fn profile(&self) -> Option<NatProfile> {
        let mapping = match (self.nat, self.mapping) {
            (Some(false), _) => MappingBehaviour::EndpointIndependent,
            (_, Some(m)) => m,
            (_, None) => return None,
        };
        match self.filtering {
            Some(filtering) => Some(NatProfile {
                mapping,
                filtering,
                allocation: self.allocation,
            }),
            None => None,
        }
    }
}

/// What the pair decision reads about one side: whether every peer sees
/// its announced public port (endpoint-independent mapping), whether its
/// next port is predictable instead (N1), and its filtering. The announced
/// class wins over the profile's mapping where it says more (a sweep
/// through the node's own socket saw it); without a profile nothing is
/// known.
#[derive(Clone, Copy)]
struct Side {
    eim: bool,
    predictable: bool,
    filtering: FilteringBehaviour,
}

const fn side(class: NatClass, profile: Option<NatProfile>) -> Option<Side> {
    let Some(p) = profile else {
        return None;
    };
    let eim = match class {
        NatClass::Open | NatClass::Cone => true,
        NatClass::Symmetric => false,
        NatClass::Unknown => matches!(p.mapping, MappingBehaviour::EndpointIndependent),
    };
    let predictable = !eim
        && match p.allocation {
            Some(PortAllocation::Sequential { .. }) => {
                !matches!(p.mapping, MappingBehaviour::EndpointIndependent)
            }
            _ => false,
        };
    Some(Side {
        eim,
        predictable,
        filtering: p.filtering,
    })
}

/// N1: `x` as its peer `y` sees it in a rendezvous. A predictable `x`
/// counts as endpoint-independent toward a `y` that maps endpoint-
/// independently: the coordinator tells `y` the ports `x`'s next mapping
/// will get, `y`'s keep-alives cover them from `y`'s one announced port, and
/// `x`'s keep-alive to that port leaves from a port `y` has sent to. (Two
/// predictable sides would each make a new mapping per predicted port they
/// cover; the model does not count on that.)
const fn toward(x: Side, y: Side) -> (bool, FilteringBehaviour) {
    (x.eim || (x.predictable && y.eim), x.filtering)
}

/// Whether a rendezvous punch where `x`'s keep-alives reach `y` also gets
/// `y`'s answer back to `x`. Both sides send to the other's announced
/// address (the one the coordinator saw).
///
/// - `x`'s keep-alive leaves from `x`'s announced port only when `x` maps
///   endpoint-independently; `y`'s announced mapping lets it in when `y`
///   filters nothing, when `y` filters by address and has itself sent to
///   `x`'s IP from that mapping (`y` maps endpoint-independently), or when
///   `y` filters by address and port, has sent from that mapping, and `x`'s
///   keep-alive came from the port `y` sent to.
/// - `y` answers the port the keep-alive came from; the answer leaves from
///   `y`'s announced port when `y` maps endpoint-independently (which `x`
///   sent to, so any filter lets it in), else from a fresh port of the same
///   IP, which only a filter that ignores ports lets in.
const fn one_way(x: (bool, FilteringBehaviour), y: (bool, FilteringBehaviour)) -> bool {
    let arrives = match y.1 {
        FilteringBehaviour::EndpointIndependent => true,
        FilteringBehaviour::AddressDependent => y.0,
        FilteringBehaviour::AddressAndPortDependent => y.0 && x.0,
    };
    let answered = y.0 || !matches!(x.1, FilteringBehaviour::AddressAndPortDependent);
    arrives && answered
}

/// C8: the pair matrix refined by both sides' announced [`NatProfile`]s.
///
/// With both profiles known, a rendezvous punch is run exactly when the
/// RFC 4787 model says one can open a path both ways (see the table in
/// `docs/nat-matrix.md`): a punch the baseline would run but that cannot
/// succeed (a port-restricted cone and a symmetric NAT) is
/// [`PairAction::SkipPunch`], one it would skip but that can succeed (a
/// symmetric NAT that filters nothing, with a peer whose filter ignores
/// ports) is [`PairAction::SinglePunch`]. A [`PairAction::Direct`] verdict
/// of the baseline stands, and without both profiles the baseline
/// [`pair_action`] decides.
#[must_use]
pub const fn pair_action_with_profiles(
    local: NatClass,
    local_profile: Option<NatProfile>,
    remote: NatClass,
    remote_profile: Option<NatProfile>,
) -> PairAction {
    let baseline = pair_action(local, remote);
    if matches!(baseline, PairAction::Direct) {
        return baseline;
    }
    match (side(local, local_profile), side(remote, remote_profile)) {
        (Some(a), Some(b)) => {
            let (a, b) = (toward(a, b), toward(b, a));
            if one_way(a, b) || one_way(b, a) {
                PairAction::SinglePunch
            } else {
                PairAction::SkipPunch
            }
        }
        _ => baseline,
    }
}

/// N2: which side of a birthday punch this node plays with `remote`, when
/// the pair needs one: both profiles known, no rendezvous punch can work
/// (with N1's prediction counted, see [`pair_action_with_profiles`]), and
/// one side maps endpoint-independently while the other makes a new,
/// unpredictable mapping per destination and filters by address (or address
/// and port). The hard side is the
/// [`SpraySide::Opener`] (many sockets, each a mapping that admits the easy
/// side's reflex), the easy side the [`SpraySide::Prober`] (random ports of
/// the hard side's IP, from its one stable mapping). `None` otherwise —
/// two hard sides included. Swapping the sides swaps the answer, so both
/// ends agree.
#[must_use]
pub const fn birthday_side(
    local: NatClass,
    local_profile: Option<NatProfile>,
    remote: NatClass,
    remote_profile: Option<NatProfile>,
) -> Option<SpraySide> {
    if matches!(pair_action(local, remote), PairAction::Direct) {
        return None;
    }
    let (Some(a), Some(b)) = (side(local, local_profile), side(remote, remote_profile)) else {
        return None;
    };
    let (ta, tb) = (toward(a, b), toward(b, a));
    if one_way(ta, tb) || one_way(tb, ta) {
        return None;
    }
    // The hard side must filter by address at least: one that lets anyone
    // in would take the easy side's ordinary keep-alive on its introduced
    // mapping for the path, and answer from a mapping the easy side's
    // filter drops (its main socket cannot tell the two apart).
    match (a.eim, b.eim, a.filtering, b.filtering) {
        (false, true, FilteringBehaviour::EndpointIndependent, _)
        | (true, false, _, FilteringBehaviour::EndpointIndependent) => None,
        (false, true, ..) => Some(SpraySide::Opener),
        (true, false, ..) => Some(SpraySide::Prober),
        _ => None,
    }
}

/// A compact line with the short forms, e.g. `"NAT, EIM, APDF, ports
/// preserving, hairpin no, lifetime ?"`; `?` is "not measured".
impl fmt::Display for Behaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.nat {
            Some(true) => "NAT",
            Some(false) => "no NAT",
            None => "NAT ?",
        })?;
        f.write_str(", ")?;
        f.write_str(self.mapping.map_or("mapping ?", MappingBehaviour::short))?;
        f.write_str(", ")?;
        f.write_str(
            self.filtering
                .map_or("filtering ?", FilteringBehaviour::short),
        )?;
        match self.allocation {
            Some(a) => write!(f, ", ports {a}")?,
            None => f.write_str(", ports ?")?,
        }
        f.write_str(match self.hairpin {
            Some(true) => ", hairpin yes",
            Some(false) => ", hairpin no",
            None => ", hairpin ?",
        })?;
        match self.binding_lifetime {
            Some(d) => write!(f, ", lifetime {}s", d.as_secs()),
            None => f.write_str(", lifetime ?"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FilteringBehaviour as F;
    use MappingBehaviour as M;
    use alloc::string::ToString;

    fn nat(m: MappingBehaviour, f: FilteringBehaviour) -> Behaviour {
        Behaviour {
            nat: Some(true),
            mapping: Some(m),
            filtering: Some(f),
            ..Behaviour::UNKNOWN
        }
    }

    #[test]
    fn behaviour_rfc4787_names_and_short_forms() {
        let m = [
            (
                M::EndpointIndependent,
                "endpoint-independent mapping",
                "EIM",
            ),
            (M::AddressDependent, "address-dependent mapping", "ADM"),
            (
                M::AddressAndPortDependent,
                "address and port-dependent mapping",
                "APDM",
            ),
        ];
        for (b, name, short) in m {
            assert_eq!(b.name(), name);
            assert_eq!(b.short(), short);
            assert_eq!(b.to_string(), name);
        }
        let f = [
            (
                F::EndpointIndependent,
                "endpoint-independent filtering",
                "EIF",
            ),
            (F::AddressDependent, "address-dependent filtering", "ADF"),
            (
                F::AddressAndPortDependent,
                "address and port-dependent filtering",
                "APDF",
            ),
        ];
        for (b, name, short) in f {
            assert_eq!(b.name(), name);
            assert_eq!(b.short(), short);
            assert_eq!(b.to_string(), name);
        }
        assert_eq!(PortAllocation::Preserving.to_string(), "preserving");
        assert_eq!(
            PortAllocation::Sequential { step: 1 }.to_string(),
            "sequential (+1)"
        );
        assert_eq!(
            PortAllocation::Sequential { step: -2 }.to_string(),
            "sequential (-2)"
        );
        assert_eq!(PortAllocation::Random.to_string(), "random");
    }

    #[test]
    fn behaviour_implies_the_baseline_class() {
        assert_eq!(Behaviour::UNKNOWN.nat_class(), NatClass::Unknown);
        assert_eq!(Behaviour::default(), Behaviour::UNKNOWN);
        for f in [
            F::EndpointIndependent,
            F::AddressDependent,
            F::AddressAndPortDependent,
        ] {
            assert_eq!(nat(M::EndpointIndependent, f).nat_class(), NatClass::Cone);
            assert_eq!(nat(M::AddressDependent, f).nat_class(), NatClass::Symmetric);
            assert_eq!(
                nat(M::AddressAndPortDependent, f).nat_class(),
                NatClass::Symmetric
            );
            // No translation: open, whatever the firewall filters.
            let open = Behaviour {
                nat: Some(false),
                ..nat(M::EndpointIndependent, f)
            };
            assert_eq!(open.nat_class(), NatClass::Open);
        }
        // The NAT flag alone says nothing about the class.
        let only_nat = Behaviour {
            nat: Some(true),
            ..Behaviour::UNKNOWN
        };
        assert_eq!(only_nat.nat_class(), NatClass::Unknown);
        let no_nat = Behaviour {
            nat: Some(false),
            ..Behaviour::UNKNOWN
        };
        assert_eq!(no_nat.nat_class(), NatClass::Open);
    }

    #[test]
    fn behaviour_display_and_summary() {
        let b = Behaviour {
            allocation: Some(PortAllocation::Sequential { step: 1 }),
            hairpin: Some(false),
            binding_lifetime: Some(Duration::from_secs(120)),
            ..nat(M::AddressAndPortDependent, F::AddressAndPortDependent)
        };
        assert_eq!(
            b.to_string(),
            "NAT, APDM, APDF, ports sequential (+1), hairpin no, lifetime 120s"
        );
        assert!(b.summary().contains("predictable ports"));
        assert_eq!(
            Behaviour::UNKNOWN.to_string(),
            "NAT ?, mapping ?, filtering ?, ports ?, hairpin ?, lifetime ?"
        );
        assert!(Behaviour::UNKNOWN.summary().starts_with("unknown"));
        assert_eq!(
            nat(M::EndpointIndependent, F::AddressAndPortDependent).summary(),
            "a cone NAT that only lets in replies from where you sent: punching works with any peer that is not symmetric"
        );
        assert!(
            nat(M::EndpointIndependent, F::EndpointIndependent)
                .summary()
                .starts_with("a full-cone NAT")
        );
        let firewall = Behaviour {
            nat: Some(false),
            ..nat(M::EndpointIndependent, F::AddressAndPortDependent)
        };
        assert!(firewall.summary().starts_with("no NAT, but a firewall"));
        // Every combination has a one-line summary.
        let ms = [
            None,
            Some(M::EndpointIndependent),
            Some(M::AddressDependent),
            Some(M::AddressAndPortDependent),
        ];
        let fs = [
            None,
            Some(F::EndpointIndependent),
            Some(F::AddressDependent),
            Some(F::AddressAndPortDependent),
        ];
        for n in [None, Some(false), Some(true)] {
            for m in ms {
                for f in fs {
                    let b = Behaviour {
                        nat: n,
                        mapping: m,
                        filtering: f,
                        ..Behaviour::UNKNOWN
                    };
                    assert!(!b.summary().is_empty() && !b.summary().contains('\n'));
                }
            }
        }
    }

    const MS: [MappingBehaviour; 3] = [
        M::EndpointIndependent,
        M::AddressDependent,
        M::AddressAndPortDependent,
    ];
    const FS: [FilteringBehaviour; 3] = [
        F::EndpointIndependent,
        F::AddressDependent,
        F::AddressAndPortDependent,
    ];

    fn profiles() -> impl Iterator<Item = NatProfile> {
        MS.into_iter().flat_map(|mapping| {
            FS.into_iter()
                .map(move |filtering| NatProfile::new(mapping, filtering))
        })
    }

    #[test]
    fn profile_codes_round_trip_and_read_behaviours() {
        for p in profiles() {
            assert_eq!(NatProfile::from_code(p.code()), Some(p));
            assert_eq!(nat(p.mapping, p.filtering).profile(), Some(p));
        }
        assert_eq!(NatProfile::OPEN.code(), 0x11);
        assert_eq!(NatProfile::OPEN.to_string(), "EIM/EIF");
        // No NAT is the identity mapping, whatever was (not) measured.
        let firewall = Behaviour {
            nat: Some(false),
            filtering: Some(F::AddressAndPortDependent),
            ..Behaviour::UNKNOWN
        };
        assert_eq!(
            firewall.profile().map(|p| p.to_string()).as_deref(),
            Some("EIM/APDF")
        );
        // Half a measurement announces nothing.
        let half = Behaviour {
            mapping: Some(M::EndpointIndependent),
            ..Behaviour::UNKNOWN
        };
        assert_eq!(half.profile(), None);
        assert_eq!(Behaviour::UNKNOWN.profile(), None);
    }

    #[test]
    fn c8_without_both_profiles_the_baseline_decides() {
        for local in NatClass::ALL {
            for remote in NatClass::ALL {
                let base = pair_action(local, remote);
                assert_eq!(pair_action_with_profiles(local, None, remote, None), base);
                for p in profiles() {
                    assert_eq!(
                        pair_action_with_profiles(local, Some(p), remote, None),
                        base
                    );
                    assert_eq!(
                        pair_action_with_profiles(local, None, remote, Some(p)),
                        base
                    );
                }
            }
        }
    }

    #[test]
    fn n2_birthday_side_takes_only_the_cells_no_punch_opens() {
        use crate::spray::SpraySide::{Opener, Prober};
        let all: alloc::vec::Vec<(NatClass, NatProfile)> = profiles()
            .flat_map(|p| {
                [
                    PortAllocation::Random,
                    PortAllocation::Sequential { step: 1 },
                ]
                .map(|a| {
                    let class = p.mapping.nat_class();
                    (class, p.with_allocation(Some(a)))
                })
            })
            .collect();
        let mut cells = 0;
        for &(ca, pa) in &all {
            for &(cb, pb) in &all {
                let ab = birthday_side(ca, Some(pa), cb, Some(pb));
                let ba = birthday_side(cb, Some(pb), ca, Some(pa));
                // Both ends agree on who does what.
                match ab {
                    Some(Opener) => assert_eq!(ba, Some(Prober)),
                    Some(Prober) => assert_eq!(ba, Some(Opener)),
                    None => assert_eq!(ba, None),
                }
                if ab.is_some() {
                    cells += 1;
                    // Only where no rendezvous punch can work, and never
                    // for two hard sides.
                    assert_eq!(
                        pair_action_with_profiles(ca, Some(pa), cb, Some(pb)),
                        PairAction::SkipPunch
                    );
                    let hard = |p: NatProfile| {
                        p.mapping != MappingBehaviour::EndpointIndependent
                            && p.predictable_step().is_none()
                    };
                    assert!(hard(pa) != hard(pb), "{pa:?} {pb:?}");
                    // The hard side filters (see `birthday_side`).
                    let hard_one = if hard(pa) { pa } else { pb };
                    assert_ne!(hard_one.filtering, F::EndpointIndependent);
                }
                // Without both profiles there is no birthday.
                assert_eq!(birthday_side(ca, Some(pa), cb, None), None);
            }
        }
        assert!(cells > 0);
        // The port-restricted cone and the random symmetric NAT.
        let pr = NatProfile::new(M::EndpointIndependent, F::AddressAndPortDependent);
        let sym = NatProfile::new(M::AddressAndPortDependent, F::AddressAndPortDependent)
            .with_allocation(Some(PortAllocation::Random));
        assert_eq!(
            birthday_side(NatClass::Cone, Some(pr), NatClass::Symmetric, Some(sym)),
            Some(Prober)
        );
        // A sequential one is predicted instead (N1).
        let seq = sym.with_allocation(Some(PortAllocation::Sequential { step: 1 }));
        assert_eq!(
            birthday_side(NatClass::Cone, Some(pr), NatClass::Symmetric, Some(seq)),
            None
        );
    }

    #[test]
    fn n1_allocation_wire_form_round_trips_and_rejects_the_rest() {
        for a in [
            PortAllocation::Preserving,
            PortAllocation::Random,
            PortAllocation::Sequential { step: 1 },
            PortAllocation::Sequential { step: -2 },
            PortAllocation::Sequential { step: 32_767 },
        ] {
            assert_eq!(PortAllocation::from_wire(a.to_wire()), Some(a), "{a}");
        }
        // A step that does not fit is as good as random; step 0 is no step.
        assert_eq!(
            PortAllocation::Sequential { step: 40_000 }.to_wire(),
            PortAllocation::Random.to_wire()
        );
        assert_eq!(
            PortAllocation::Sequential { step: 0 }.to_wire(),
            PortAllocation::Random.to_wire()
        );
        let mut decoded = 0;
        for tag in 0..=255u8 {
            for step in [[0, 0], [0, 1], [0xff, 0xff], [0x80, 0]] {
                let bytes = [tag, step[0], step[1]];
                if let Some(a) = PortAllocation::from_wire(bytes) {
                    assert_eq!(a.to_wire(), bytes, "canonical");
                    decoded += 1;
                }
            }
        }
        // preserving, random, and three sequential steps.
        assert_eq!(decoded, 5);
    }

    #[test]
    fn n1_a_predictable_symmetric_nat_is_punched_with_an_endpoint_independent_peer() {
        use NatClass::{Cone, Symmetric};
        use PairAction::{SinglePunch, SkipPunch};
        let seq = |step| {
            NatProfile::new(M::AddressAndPortDependent, F::AddressAndPortDependent)
                .with_allocation(Some(PortAllocation::Sequential { step }))
        };
        let random = NatProfile::new(M::AddressAndPortDependent, F::AddressAndPortDependent)
            .with_allocation(Some(PortAllocation::Random));
        let pr = NatProfile::new(M::EndpointIndependent, F::AddressAndPortDependent);
        assert_eq!(seq(1).predictable_step(), Some(1));
        assert_eq!(random.predictable_step(), None);
        assert_eq!(
            pr.with_allocation(Some(PortAllocation::Sequential { step: 1 }))
                .predictable_step(),
            None,
            "an endpoint-independent mapping needs no prediction"
        );
        for step in [1, 2, -1] {
            let d = |a, pa, b, pb| pair_action_with_profiles(a, Some(pa), b, Some(pb));
            // Port-restricted cone × sequential symmetric: skipped without
            // the allocation, punched with it, whoever asks.
            assert_eq!(d(Cone, pr, Symmetric, seq(step)), SinglePunch);
            assert_eq!(d(Symmetric, seq(step), Cone, pr), SinglePunch);
            // Two predictable sides: not counted on.
            assert_eq!(d(Symmetric, seq(step), Symmetric, seq(step)), SkipPunch);
        }
        // Random allocation changes nothing.
        let d = pair_action_with_profiles(Cone, Some(pr), Symmetric, Some(random));
        assert_eq!(d, SkipPunch);
    }

    #[test]
    fn c8_profiles_refine_but_never_overrule_direct() {
        let cone = |f| NatProfile::new(M::EndpointIndependent, f);
        let sym = |f| NatProfile::new(M::AddressAndPortDependent, f);
        let decide = |a: (NatClass, NatProfile), b: (NatClass, NatProfile)| {
            pair_action_with_profiles(a.0, Some(a.1), b.0, Some(b.1))
        };
        use NatClass::{Cone, Open, Symmetric};
        use PairAction::{Direct, SinglePunch, SkipPunch};
        let pr = (Cone, cone(F::AddressAndPortDependent));
        let restricted = (Cone, cone(F::AddressDependent));
        let symmetric = (Symmetric, sym(F::AddressAndPortDependent));
        let sym_open_filter = (Symmetric, sym(F::EndpointIndependent));
        let sym_adf = (Symmetric, sym(F::AddressDependent));
        // A port-restricted cone and a symmetric NAT: the baseline punches,
        // the model knows it cannot work.
        assert_eq!(pair_action(Cone, Symmetric), SinglePunch);
        assert_eq!(decide(pr, symmetric), SkipPunch);
        assert_eq!(decide(symmetric, pr), SkipPunch);
        // A restricted cone lets the symmetric side's new port in.
        assert_eq!(decide(restricted, symmetric), SinglePunch);
        // Two symmetric NATs: skipped by the baseline, punched when one lets
        // anyone in and the other ignores ports.
        assert_eq!(pair_action(Symmetric, Symmetric), SkipPunch);
        assert_eq!(decide(sym_open_filter, sym_adf), SinglePunch);
        assert_eq!(decide(sym_adf, sym_open_filter), SinglePunch);
        assert_eq!(decide(sym_open_filter, symmetric), SkipPunch);
        assert_eq!(decide(symmetric, symmetric), SkipPunch);
        // A firewalled public host (no NAT, APDF) punches with any peer
        // that is not symmetric, as its summary says.
        let firewall = (Open, cone(F::AddressAndPortDependent));
        for sym in [symmetric, sym_adf, sym_open_filter] {
            assert_eq!(pair_action(Open, Symmetric), SinglePunch);
            assert_eq!(decide(firewall, sym), SkipPunch);
        }
        // Direct stays Direct whatever the profiles say.
        for p in profiles() {
            for q in profiles() {
                for (a, b) in [(Open, Open), (Open, Cone), (Cone, Open)] {
                    assert_eq!(pair_action_with_profiles(a, Some(p), b, Some(q)), Direct);
                }
            }
        }
    }

    #[test]
    fn c8_profile_decision_is_symmetric_in_its_verdict() {
        // Whether a punch can open a path does not depend on who asks: the
        // refined verdict for (a, b) and (b, a) agree wherever the baseline
        // does not say Direct.
        for ca in [NatClass::Cone, NatClass::Symmetric, NatClass::Unknown] {
            for cb in [NatClass::Cone, NatClass::Symmetric, NatClass::Unknown] {
                for p in profiles() {
                    for q in profiles() {
                        let ab = pair_action_with_profiles(ca, Some(p), cb, Some(q));
                        let ba = pair_action_with_profiles(cb, Some(q), ca, Some(p));
                        if ab != PairAction::Direct && ba != PairAction::Direct {
                            assert_eq!(ab, ba, "{ca:?} {p} / {cb:?} {q}");
                        }
                    }
                }
            }
        }
    }
}
