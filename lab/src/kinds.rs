//! The NAT kinds of the lab, as nftables rulesets on Linux gateways, and the
//! simulator preset each one is compared with.
//!
//! Every gateway namespace has a `wan` veth (toward the Internet, or toward
//! the next gateway out) and a `lan` veth (toward the peer, or toward the
//! next gateway in). A peer binds UDP port [`PEER_PORT`]. Every NAT gateway
//! also runs the firewall a home router runs: nothing from `wan` reaches the
//! gateway itself, and only replies (conntrack `established`) or what a
//! kind's DNAT admits are forwarded in. Dropping unsolicited packets
//! *before* conntrack confirms them matters: an unsolicited keep-alive that
//! reached the gateway's own stack would become a conntrack entry, claim
//! the tuple the peer's own outbound packet needs, and make the NAT pick
//! another port (`../shared/guides/test-lab.md`: "`masquerade persistent`
//! is not a cone NAT").

use natrix_sim::preset::Preset;

/// The UDP port every lab peer binds.
pub const PEER_PORT: u16 = 4000;

/// One kind of network a lab peer sits behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A public address, no NAT, no firewall.
    Open,
    /// Endpoint-independent mapping and filtering: a static `snat` of the
    /// peer's port plus the matching `dnat`.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering: the
    /// full cone's static `snat` and `dnat`, with inbound admitted only from
    /// IPs the peer has sent to (an nft set the outbound traffic fills).
    Restricted,
    /// Endpoint-independent mapping, address-and-port-dependent filtering:
    /// a static `snat` of the peer's port; conntrack admits only replies.
    PortRestricted,
    /// Linux's default `masquerade`: the port is kept when free;
    /// conntrack admits only replies.
    Masquerade,
    /// Address-and-port-dependent mapping: `masquerade fully-random`.
    Symmetric,
    /// `masquerade` with no firewall at all: an unsolicited datagram
    /// reaches the gateway's own stack and conntrack keeps it, claiming the
    /// tuple the peer's own outbound datagram would use (see
    /// [`Layer::MasqueradeBare`]). Not in the matrix: the outcome depends on
    /// which keep-alive reaches which gateway first (a scenario covers it).
    MasqueradeBare,
    /// A home router's `masquerade` behind a second `masquerade` (10/8
    /// between them).
    Double,
    /// A home router with a static `snat` (port-restricted) behind a
    /// carrier-grade NAT in 100.64.0.0/10 with endpoint-independent
    /// mapping and filtering (static `snat` + `dnat` of the home router's
    /// port).
    Cgnat,
    /// IPv6, a public address, no NAT, no firewall.
    V6Open,
    /// IPv6, a public address, no NAT, but a stateful firewall that drops
    /// unsolicited inbound (conntrack admits only replies).
    V6Firewall,
}

/// What one gateway does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// Static `snat` of the inner port, plus `dnat` back: full cone.
    StaticFullCone,
    /// Full cone, with inbound only from IPs the inside has sent to.
    StaticRestricted,
    /// Static `snat` of the inner port only: port-restricted.
    StaticPortRestricted,
    /// `masquerade`.
    Masquerade,
    /// `masquerade fully-random`.
    FullyRandom,
    /// `masquerade` without the home router's firewall: nothing drops
    /// unsolicited inbound before conntrack confirms it.
    MasqueradeBare,
    /// No translation (IPv6): only a stateful firewall.
    Firewall,
}

impl Kind {
    /// The IPv4 kinds, in table order.
    pub const V4: [Kind; 8] = [
        Kind::Open,
        Kind::FullCone,
        Kind::Restricted,
        Kind::PortRestricted,
        Kind::Masquerade,
        Kind::Symmetric,
        Kind::Double,
        Kind::Cgnat,
    ];

    /// The IPv6 kinds.
    pub const V6: [Kind; 2] = [Kind::V6Open, Kind::V6Firewall];

    /// A short name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Kind::Open => "open",
            Kind::FullCone => "full-cone",
            Kind::Restricted => "restricted",
            Kind::PortRestricted => "port-restricted",
            Kind::Masquerade => "masquerade",
            Kind::Symmetric => "symmetric",
            Kind::MasqueradeBare => "masquerade-bare",
            Kind::Double => "double",
            Kind::Cgnat => "cgnat",
            Kind::V6Open => "v6-open",
            Kind::V6Firewall => "v6-firewall",
        }
    }

    /// Whether the peer uses IPv6.
    #[must_use]
    pub fn is_v6(self) -> bool {
        matches!(self, Kind::V6Open | Kind::V6Firewall)
    }

    /// The gateways between the peer and the Internet, outermost first.
    #[must_use]
    pub fn layers(self) -> &'static [Layer] {
        match self {
            Kind::Open | Kind::V6Open => &[],
            Kind::FullCone => &[Layer::StaticFullCone],
            Kind::Restricted => &[Layer::StaticRestricted],
            Kind::PortRestricted => &[Layer::StaticPortRestricted],
            Kind::Masquerade => &[Layer::Masquerade],
            Kind::Symmetric => &[Layer::FullyRandom],
            Kind::MasqueradeBare => &[Layer::MasqueradeBare],
            Kind::Double => &[Layer::Masquerade, Layer::Masquerade],
            Kind::Cgnat => &[Layer::StaticFullCone, Layer::StaticPortRestricted],
            Kind::V6Firewall => &[Layer::Firewall],
        }
    }

    /// The simulator preset with the same RFC 4787 behaviour, whose outcome
    /// the lab must reproduce.
    ///
    /// `Masquerade` and `Double` behave as a port-restricted cone: Linux
    /// keeps the port when it is free (endpoint-independent mapping in
    /// practice) and conntrack admits only replies (address-and-port-
    /// dependent filtering); two such NATs in a row compose to one.
    #[must_use]
    pub fn preset(self) -> Preset {
        match self {
            Kind::Open | Kind::V6Open => Preset::Open,
            Kind::FullCone => Preset::FullCone,
            Kind::Restricted => Preset::RestrictedCone,
            Kind::PortRestricted | Kind::Masquerade | Kind::MasqueradeBare | Kind::Double => {
                Preset::PortRestrictedCone
            }
            Kind::Symmetric => Preset::Symmetric,
            Kind::Cgnat => Preset::DoubleNat,
            Kind::V6Firewall => Preset::Firewall,
        }
    }

    /// How the kind is built, for tables.
    #[must_use]
    pub fn recipe(self) -> &'static str {
        match self {
            Kind::Open => "public address, no NAT",
            Kind::FullCone => "snat + dnat of the peer's port",
            Kind::Restricted => "snat + dnat, inbound only from contacted IPs (nft set)",
            Kind::PortRestricted => "snat of the peer's port, replies only",
            Kind::Masquerade => "masquerade, replies only",
            Kind::Symmetric => "masquerade fully-random",
            Kind::MasqueradeBare => "masquerade, no firewall",
            Kind::Double => "masquerade behind masquerade (10/8 between)",
            Kind::Cgnat => "port-restricted home NAT behind a full-cone carrier NAT (100.64/10)",
            Kind::V6Open => "IPv6 public address, no firewall",
            Kind::V6Firewall => "IPv6 public address, stateful firewall (replies only)",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::V4
            .into_iter()
            .chain(Kind::V6)
            .chain([Kind::MasqueradeBare])
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown NAT kind {s:?}"))
    }
}

/// The gateway's firewall table (`inet natrix_fw`).
#[must_use]
pub fn firewall_ruleset(layer: Layer) -> String {
    let mut r = String::from("table inet natrix_fw {\n");
    if layer == Layer::StaticRestricted {
        r += "  set contacted { type ipv4_addr; flags dynamic,timeout; timeout 120s; }\n";
    }
    if layer == Layer::MasqueradeBare {
        return String::new();
    }
    if layer != Layer::Firewall {
        r += "  chain input { type filter hook input priority 0; policy accept;\n";
        r += "    iifname \"wan\" ct state established,related accept\n";
        r += "    iifname \"wan\" drop\n";
        r += "  }\n";
    }
    r += "  chain forward { type filter hook forward priority 0; policy accept;\n";
    if layer == Layer::StaticRestricted {
        r += "    oifname \"wan\" update @contacted { ip daddr }\n";
    }
    r += "    iifname \"wan\" ct state established,related accept\n";
    match layer {
        Layer::StaticFullCone => r += "    iifname \"wan\" ct status dnat accept\n",
        Layer::StaticRestricted => {
            r += "    iifname \"wan\" ct status dnat ip saddr @contacted accept\n";
        }
        _ => {}
    }
    r += "    iifname \"wan\" drop\n";
    r += "  }\n}\n";
    r
}

/// The gateway's NAT table (`ip natrix_nat`): `inner` is the address
/// inside whose [`PEER_PORT`] the static kinds map, `wan_ip` the gateway's
/// outside address and `public_port` the port it maps to. `None` for
/// [`Layer::Firewall`].
#[must_use]
pub fn nat_ruleset(layer: Layer, inner: &str, wan_ip: &str, public_port: u16) -> Option<String> {
    let p = PEER_PORT;
    let mut pre = String::new();
    let mut post = String::new();
    match layer {
        Layer::Firewall => return None,
        Layer::StaticFullCone | Layer::StaticRestricted => {
            pre += &format!("    iifname \"wan\" udp dport {public_port} dnat to {inner}:{p}\n");
            post += &format!(
                "    oifname \"wan\" ip saddr {inner} udp sport {p} snat to {wan_ip}:{public_port}\n"
            );
            post += "    oifname \"wan\" masquerade\n";
        }
        Layer::StaticPortRestricted => {
            post += &format!(
                "    oifname \"wan\" ip saddr {inner} udp sport {p} snat to {wan_ip}:{public_port}\n"
            );
            post += "    oifname \"wan\" masquerade\n";
        }
        Layer::Masquerade | Layer::MasqueradeBare => {
            post += "    oifname \"wan\" masquerade\n";
        }
        Layer::FullyRandom => post += "    oifname \"wan\" masquerade fully-random\n",
    }
    Some(format!(
        "table ip natrix_nat {{\n  chain pre {{ type nat hook prerouting priority dstnat; policy accept;\n{pre}  }}\n  chain post {{ type nat hook postrouting priority srcnat; policy accept;\n{post}  }}\n}}\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_back_from_their_names() {
        for k in Kind::V4.into_iter().chain(Kind::V6) {
            assert_eq!(k.name().parse::<Kind>(), Ok(k));
        }
        assert!("cone".parse::<Kind>().is_err());
    }

    #[test]
    fn static_kinds_map_the_peer_port_and_only_full_cones_admit_strangers() {
        let fc = nat_ruleset(Layer::StaticFullCone, "192.168.1.2", "198.18.1.2", 4000).unwrap();
        assert!(fc.contains("dnat to 192.168.1.2:4000"));
        assert!(fc.contains("snat to 198.18.1.2:4000"));
        let pr = nat_ruleset(
            Layer::StaticPortRestricted,
            "192.168.1.2",
            "198.18.1.2",
            4001,
        )
        .unwrap();
        assert!(!pr.contains("dnat"));
        assert!(pr.contains("snat to 198.18.1.2:4001"));
        assert!(firewall_ruleset(Layer::StaticFullCone).contains("ct status dnat accept"));
        assert!(firewall_ruleset(Layer::StaticRestricted).contains("@contacted accept"));
        assert!(!firewall_ruleset(Layer::StaticPortRestricted).contains("dnat"));
        assert!(
            nat_ruleset(Layer::FullyRandom, "x", "y", 1)
                .unwrap()
                .contains("fully-random")
        );
        assert!(nat_ruleset(Layer::Firewall, "x", "y", 1).is_none());
    }

    #[test]
    fn every_nat_gateway_drops_unsolicited_input_before_conntrack_confirms_it() {
        for layer in [
            Layer::StaticFullCone,
            Layer::StaticRestricted,
            Layer::StaticPortRestricted,
            Layer::Masquerade,
            Layer::FullyRandom,
        ] {
            let fw = firewall_ruleset(layer);
            assert!(fw.contains("chain input"), "{layer:?}");
            assert!(fw.trim_end().ends_with('}'));
        }
    }
}
