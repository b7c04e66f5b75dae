//! The lab's topology: an "internet" namespace holding the coordinators,
//! and sites, each a peer namespace behind the gateways of one [`Kind`].
//!
//! Addresses (site number `i`, 1–250), all on veths of the lab's own
//! namespaces:
//!
//! | link | IPv4 | IPv6 |
//! |---|---|---|
//! | internet ↔ outermost gateway (or an open peer) | `198.18.i.1` ↔ `198.18.i.2` /24 | `2001:db8:ff:i::1` ↔ `::2` /64 |
//! | outer ↔ inner gateway (double NAT) | `10.i.0.1` ↔ `10.i.0.2` /24 | |
//! | carrier ↔ home gateway (CGNAT) | `100.64.i.1` ↔ `100.64.i.2` /24 | |
//! | innermost gateway ↔ peer | `192.168.i.1` ↔ `192.168.i.2` /24 | `2001:db8:i::1` ↔ `::2` /64 |
//!
//! Coordinators listen on `203.0.113.N:7000` and `[2001:db8::N]:7000`,
//! addresses on the internet namespace's loopback.

use std::net::{IpAddr, SocketAddr};

use crate::kinds::{Kind, Layer, PEER_PORT, firewall_ruleset, nat_ruleset};
use crate::netns::Lab;
use crate::{LabError, Result};

/// The internet namespace.
#[derive(Debug, Clone)]
pub struct Internet {
    /// Its namespace.
    pub ns: String,
}

impl Internet {
    /// Creates the internet namespace with `coordinators` IPv4 and IPv6
    /// addresses on its loopback (`203.0.113.1…`, `2001:db8::1…`).
    ///
    /// # Errors
    /// A namespace or address cannot be created.
    pub fn build(lab: &mut Lab, coordinators: u8) -> Result<Internet> {
        let ns = lab.add_ns("inet")?;
        for n in 1..=coordinators {
            lab.addr(&ns, "lo", &format!("203.0.113.{n}/32"))?;
            lab.addr(&ns, "lo", &format!("2001:db8::{n:x}/128"))?;
        }
        Ok(Internet { ns })
    }

    /// Coordinator `n`'s address (1-based).
    #[must_use]
    pub fn coordinator_addr(n: u8, v6: bool) -> SocketAddr {
        let ip: IpAddr = if v6 {
            format!("2001:db8::{n:x}").parse().expect("literal")
        } else {
            format!("203.0.113.{n}").parse().expect("literal")
        };
        SocketAddr::new(ip, 7000)
    }
}

/// One gateway of a site.
#[derive(Debug, Clone)]
pub struct Gateway {
    /// Its namespace.
    pub ns: String,
    /// What it does.
    pub layer: Layer,
    /// Its outside address.
    pub wan_ip: IpAddr,
    /// The inside address whose peer port it maps (static kinds).
    pub inner: IpAddr,
}

/// A peer namespace behind its gateways.
#[derive(Debug, Clone)]
pub struct Site {
    /// Its kind.
    pub kind: Kind,
    /// Its number (addresses derive from it).
    pub index: u8,
    /// The peer's namespace.
    pub peer_ns: String,
    /// The peer's own address.
    pub peer_ip: IpAddr,
    /// The site's public address: the outermost gateway's, or the peer's.
    pub public_ip: IpAddr,
    /// Its gateways, outermost first.
    pub gateways: Vec<Gateway>,
}

impl Site {
    /// Builds site `index` of `kind` hanging off `internet`; `label` names
    /// its namespaces.
    ///
    /// # Errors
    /// A namespace, link, address, route or ruleset fails.
    pub fn build(
        lab: &mut Lab,
        internet: &Internet,
        kind: Kind,
        index: u8,
        label: &str,
    ) -> Result<Site> {
        if index == 0 || index > 250 {
            return Err(LabError::Setup(format!(
                "site number {index} out of 1..=250"
            )));
        }
        let i = index;
        let v6 = kind.is_v6();
        let layers = kind.layers();
        let uplink = format!("s{i}");
        // (namespace, interface) of the device on the inside of the
        // previous link, and the addresses of that link.
        let (outer_net_self, outer_net_peer, prefix) = if v6 {
            (
                format!("2001:db8:ff:{i:x}::1"),
                format!("2001:db8:ff:{i:x}::2"),
                64,
            )
        } else {
            (format!("198.18.{i}.1"), format!("198.18.{i}.2"), 24)
        };
        let peer_ns = lab.add_ns(&format!("{label}p"))?;
        let mut gateways = Vec::new();
        // Walk from the Internet inward: each step connects `up_ns` (with
        // address `up_ip` on its side) to the next device.
        let mut up_ns = internet.ns.clone();
        let mut up_if = uplink.clone();
        let mut up_ip = outer_net_self.clone();
        let mut down_ip = outer_net_peer.clone();
        let mut link_prefix = prefix;
        for (depth, layer) in layers.iter().enumerate() {
            let gw_ns = lab.add_ns(&format!("{label}g{depth}"))?;
            lab.veth(&up_ns, &up_if, &gw_ns, "wan")?;
            lab.addr(&up_ns, &up_if, &format!("{up_ip}/{link_prefix}"))?;
            lab.addr(&gw_ns, "wan", &format!("{down_ip}/{link_prefix}"))?;
            lab.route(&gw_ns, "default", &up_ip)?;
            // The next link inside.
            let last = depth + 1 == layers.len();
            let (inner_self, inner_peer, p) = if last {
                if v6 {
                    (
                        format!("2001:db8:{i:x}::1"),
                        format!("2001:db8:{i:x}::2"),
                        64,
                    )
                } else {
                    (format!("192.168.{i}.1"), format!("192.168.{i}.2"), 24)
                }
            } else if kind == Kind::Cgnat {
                (format!("100.64.{i}.1"), format!("100.64.{i}.2"), 24)
            } else {
                (format!("10.{i}.0.1"), format!("10.{i}.0.2"), 24)
            };
            let gw = Gateway {
                ns: gw_ns.clone(),
                layer: *layer,
                wan_ip: parse(&down_ip)?,
                inner: parse(&inner_peer)?,
            };
            load_rules(lab, &gw, PEER_PORT)?;
            if v6 && depth == 0 {
                // The Internet routes the site's /64 to its gateway.
                lab.route(
                    &internet.ns,
                    &format!("2001:db8:{i:x}::/64"),
                    &outer_net_peer,
                )?;
            }
            gateways.push(gw);
            up_ns = gw_ns;
            up_if = "lan".to_owned();
            up_ip = inner_self;
            down_ip = inner_peer;
            link_prefix = p;
        }
        lab.veth(&up_ns, &up_if, &peer_ns, "eth0")?;
        lab.addr(&up_ns, &up_if, &format!("{up_ip}/{link_prefix}"))?;
        lab.addr(&peer_ns, "eth0", &format!("{down_ip}/{link_prefix}"))?;
        lab.route(&peer_ns, "default", &up_ip)?;
        let peer_ip = parse(&down_ip)?;
        let public_ip = gateways.first().map_or(peer_ip, |g| g.wan_ip);
        Ok(Site {
            kind,
            index,
            peer_ns,
            peer_ip,
            public_ip,
            gateways,
        })
    }

    /// The outermost gateway (the one facing the Internet), if any.
    #[must_use]
    pub fn edge(&self) -> Option<&Gateway> {
        self.gateways.first()
    }

    /// Empties every gateway's conntrack table and learned-address set, so
    /// the next run through the site starts from a NAT with no state.
    ///
    /// # Errors
    /// `conntrack -F` fails.
    pub fn reset_state(&self, lab: &Lab) -> Result<()> {
        for g in &self.gateways {
            if g.layer == Layer::StaticRestricted {
                lab.exec(
                    &g.ns,
                    &["nft", "flush", "set", "inet", "natrix_fw", "contacted"],
                )?;
            }
            flush_conntrack(lab, &g.ns)?;
        }
        Ok(())
    }
}

/// Loads `gw`'s firewall and NAT tables, the static mapping pointing at
/// `public_port` (replacing the NAT table if it exists).
///
/// # Errors
/// `nft` rejects a ruleset.
pub fn load_rules(lab: &Lab, gw: &Gateway, public_port: u16) -> Result<()> {
    let ns = &gw.ns;
    if gw.layer != Layer::MasqueradeBare
        && lab
            .exec(ns, &["nft", "list", "table", "inet", "natrix_fw"])
            .is_err()
    {
        lab.nft(ns, "fw", &firewall_ruleset(gw.layer))?;
    }
    if let Some(nat) = nat_ruleset(
        gw.layer,
        &gw.inner.to_string(),
        &gw.wan_ip.to_string(),
        public_port,
    ) {
        // One transaction: no packet crosses the gateway between the old
        // rules and the new ones (it would leave untranslated).
        let atomic = format!("table ip natrix_nat {{}}\ndelete table ip natrix_nat\n{nat}");
        lab.nft(ns, &format!("nat{public_port}"), &atomic)?;
    }
    Ok(())
}

/// `conntrack -F` in `ns` (IPv4 and IPv6).
///
/// # Errors
/// `conntrack` fails.
pub fn flush_conntrack(lab: &Lab, ns: &str) -> Result<()> {
    lab.exec(ns, &["conntrack", "-F", "-f", "ipv4"])
        .map(drop)
        .or_else(empty_ok)?;
    lab.exec(ns, &["conntrack", "-F", "-f", "ipv6"])
        .map(drop)
        .or_else(empty_ok)
}

/// `conntrack` exits non-zero when there was nothing to flush on some
/// versions: that is not an error.
fn empty_ok(e: LabError) -> Result<()> {
    match &e {
        LabError::Command { detail, .. } if detail.contains("0 flow entries") => Ok(()),
        _ => Err(e),
    }
}

fn parse(s: &str) -> Result<IpAddr> {
    s.parse()
        .map_err(|_| LabError::Setup(format!("bad address {s}")))
}
