//! Port mapping against a real gateway: miniupnpd (UPnP-IGD, NAT-PMP and
//! PCP, nftables backend) in a gateway namespace, `natrix map` on the peer
//! behind it. For each protocol: install, check the gateway's own nft rule,
//! reach the node through the mapping from the internet namespace, restart
//! miniupnpd and see the mapping come back, stop `natrix map` and see the
//! rule deleted.
//!
//! miniupnpd refuses to map when its WAN address is private or reserved,
//! so these gateways' WAN veths carry `11.0.i.2/24` — an ordinary unicast
//! address, but only on veths of the lab's own namespaces (the guide's
//! second recipe); nothing is routed anywhere else.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::natrix::Natrix;
use crate::netns::Lab;
use crate::proc::Proc;
use crate::scenarios::Scenario;
use crate::topo::Internet;
use crate::{LabError, Result};

/// The nft tables and chains miniupnpd's nftables backend expects (Debian's
/// `nft_init.sh` is broken, so the lab makes them), plus the gateway's own
/// masquerade and a home router's firewall.
fn ruleset() -> String {
    "table inet filter {\n  chain forward { type filter hook forward priority 0; policy accept;\n    iifname \"wan\" ct state established,related accept\n    iifname \"wan\" jump miniupnpd\n    iifname \"wan\" drop\n  }\n  chain miniupnpd {\n  }\n  chain prerouting { type nat hook prerouting priority -100; policy accept;\n    iifname \"wan\" jump prerouting_miniupnpd\n  }\n  chain postrouting { type nat hook postrouting priority 100; policy accept;\n    oifname \"wan\" jump postrouting_miniupnpd\n    oifname \"wan\" masquerade\n  }\n  chain prerouting_miniupnpd {\n  }\n  chain postrouting_miniupnpd {\n  }\n}\n".to_owned()
}

/// miniupnpd's HTTP port (descriptions and SOAP control), fixed as on a
/// home router: a restarted daemon serves the same control URL, where the
/// UPnP-IGD client checks that its mapping is still there (P4).
const HTTP_PORT: u16 = 5000;

/// The lease file of gateway `i` in `dir`.
fn lease_file(i: u8, dir: &str) -> String {
    format!("{dir}/leases{i}")
}

/// miniupnpd's configuration for gateway `i`; with `v6`, also IPv6 (PCP
/// MAP over IPv6 opens a pinhole in its firewall chain).
fn config(i: u8, dir: &str, v6: bool) -> String {
    let ipv6 = if v6 {
        format!("ext_ifname6=wan\nipv6_listening_ip={}\n", v6_lan(i, 1))
    } else {
        String::new()
    };
    format!(
        "ext_ifname=wan\nlistening_ip=lan\n{ipv6}http_port={HTTP_PORT}\nenable_natpmp=yes\nenable_upnp=yes\nsecure_mode=yes\n\
         system_uptime=no\nmin_lifetime=1\nuuid=3d3cec3a-8cf0-11e0-98ee-0000000000{i:02}\nlease_file={lease}\n\
         allow 1024-65535 192.168.{n}.0/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n",
        n = 200 + u16::from(i),
        lease = lease_file(i, dir),
    )
}

/// Host `h` of gateway `i`'s IPv6 LAN (`2001:db8:ee0i::h`): the gateway is
/// 1, the peer 2. Its WAN link is `2001:db8:ef0i::/64`. Neither overlaps
/// the matrix's prefixes (`topo.rs`).
fn v6_lan(i: u8, h: u8) -> String {
    format!("2001:db8:ee{i:02x}::{h}")
}

/// A gateway running miniupnpd and a peer behind it.
struct MapSite {
    gw: String,
    peer: String,
    wan: String,
    conf: String,
    daemon: Option<Proc>,
    index: u8,
    /// The peer's IPv6 address, on a dual-stack site.
    v6: Option<String>,
}

impl MapSite {
    fn build(lab: &mut Lab, internet: &Internet, i: u8) -> Result<MapSite> {
        Self::build_behind(lab, internet, i, false)
    }

    /// A dual-stack site: IPv4 as [`MapSite::build`], plus routed IPv6 (the
    /// peer's global address behind the gateway's firewall, no NAT), with
    /// miniupnpd serving PCP over IPv6 too.
    fn build_dual(lab: &mut Lab, internet: &Internet, i: u8) -> Result<MapSite> {
        let mut site = Self::build_behind(lab, internet, i, false)?;
        let (wan_inet, wan_gw) = (
            format!("2001:db8:ef{i:02x}::1"),
            format!("2001:db8:ef{i:02x}::2"),
        );
        lab.addr(&internet.ns, &format!("u{i}"), &format!("{wan_inet}/64"))?;
        lab.addr(&site.gw, "wan", &format!("{wan_gw}/64"))?;
        lab.route(&site.gw, "default", &wan_inet)?;
        lab.route(&internet.ns, &format!("2001:db8:ee{i:02x}::/64"), &wan_gw)?;
        lab.addr(&site.gw, "lan", &format!("{}/64", v6_lan(i, 1)))?;
        lab.addr(&site.peer, "eth0", &format!("{}/64", v6_lan(i, 2)))?;
        lab.route(&site.peer, "default", &v6_lan(i, 1))?;
        std::fs::write(&site.conf, config(i, &lab.dir.to_string_lossy(), true))
            .map_err(|e| LabError::Setup(format!("cannot write {}: {e}", site.conf)))?;
        site.v6 = Some(v6_lan(i, 2));
        Ok(site)
    }

    /// With `double`, miniupnpd's gateway sits behind a second one (a
    /// masquerading home router with its firewall, WAN `11.0.i.2`): its own
    /// WAN address is then the private `10.0.i.2` — double NAT.
    fn build_behind(lab: &mut Lab, internet: &Internet, i: u8, double: bool) -> Result<MapSite> {
        let gw = lab.add_ns(&format!("m{i}g"))?;
        let peer = lab.add_ns(&format!("m{i}p"))?;
        let up = format!("u{i}");
        let wan = if double {
            let outer = lab.add_ns(&format!("m{i}o"))?;
            lab.veth(&internet.ns, &up, &outer, "wan")?;
            lab.addr(&internet.ns, &up, &format!("11.0.{i}.1/24"))?;
            lab.addr(&outer, "wan", &format!("11.0.{i}.2/24"))?;
            lab.route(&outer, "default", &format!("11.0.{i}.1"))?;
            lab.veth(&outer, "lan", &gw, "wan")?;
            lab.addr(&outer, "lan", &format!("10.0.{i}.1/24"))?;
            lab.addr(&gw, "wan", &format!("10.0.{i}.2/24"))?;
            lab.route(&gw, "default", &format!("10.0.{i}.1"))?;
            let layer = crate::kinds::Layer::Masquerade;
            lab.nft(&outer, "fw", &crate::kinds::firewall_ruleset(layer))?;
            if let Some(nat) = crate::kinds::nat_ruleset(layer, "", "", 0) {
                lab.nft(&outer, "nat", &nat)?;
            }
            format!("10.0.{i}.2")
        } else {
            lab.veth(&internet.ns, &up, &gw, "wan")?;
            lab.addr(&internet.ns, &up, &format!("11.0.{i}.1/24"))?;
            lab.addr(&gw, "wan", &format!("11.0.{i}.2/24"))?;
            lab.route(&gw, "default", &format!("11.0.{i}.1"))?;
            format!("11.0.{i}.2")
        };
        let n = 200 + u16::from(i);
        lab.veth(&gw, "lan", &peer, "eth0")?;
        lab.addr(&gw, "lan", &format!("192.168.{n}.1/24"))?;
        lab.addr(&peer, "eth0", &format!("192.168.{n}.2/24"))?;
        lab.route(&peer, "default", &format!("192.168.{n}.1"))?;
        lab.nft(&gw, "miniupnpd", &ruleset())?;
        let conf = lab.dir.join(format!("miniupnpd{i}.conf"));
        std::fs::write(&conf, config(i, &lab.dir.to_string_lossy(), false))
            .map_err(|e| LabError::Setup(format!("cannot write {}: {e}", conf.display())))?;
        Ok(MapSite {
            gw,
            peer,
            wan,
            conf: conf.to_string_lossy().into_owned(),
            daemon: None,
            index: i,
            v6: None,
        })
    }

    fn start_daemon(&mut self, lab: &Lab, run: u8) -> Result<()> {
        let mut p = Proc::spawn(
            &self.gw,
            &format!("miniupnpd{}-{run}", self.index),
            &lab.dir,
            std::path::Path::new("miniupnpd"),
            &[
                "-d".to_owned(),
                "-f".to_owned(),
                self.conf.clone(),
                // Its own pid file: several run at once.
                "-P".to_owned(),
                lab.dir
                    .join(format!("miniupnpd{}-{run}.pid", self.index))
                    .to_string_lossy()
                    .into_owned(),
            ],
            None,
        )?;
        p.wait_log("Listening for NAT-PMP/PCP traffic", Duration::from_secs(10))?;
        self.daemon = Some(p);
        Ok(())
    }

    /// Stops miniupnpd (if it runs) and waits for it.
    fn stop_daemon(&mut self) -> Result<()> {
        if let Some(mut d) = self.daemon.take() {
            d.terminate();
            d.wait_exit(Duration::from_secs(5))?;
        }
        Ok(())
    }

    /// What a reboot does to a stopped miniupnpd's state: its rules (which
    /// it leaves behind on exit) flushed, its lease file (which it reloads
    /// on start) removed. The gateway has lost every mapping.
    fn forget_mappings(&self, lab: &Lab) -> Result<()> {
        let leases = lease_file(self.index, &lab.dir.to_string_lossy());
        match std::fs::remove_file(&leases) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LabError::Setup(format!("cannot remove {leases}: {e}"))),
        }
        for chain in ["prerouting_miniupnpd", "miniupnpd"] {
            lab.exec(
                &self.gw,
                &["nft", "flush", "chain", "inet", "filter", chain],
            )?;
        }
        Ok(())
    }

    /// The gateway's miniupnpd rules for `port`: over IPv6 the pinholes
    /// (accept rules in its filter chain), otherwise the DNAT rules.
    fn mapping_rules(&self, lab: &Lab, port: u16, v6: bool) -> Result<usize> {
        if !v6 {
            return self.rules(lab, port);
        }
        let out = lab.exec(
            &self.gw,
            &["nft", "list", "chain", "inet", "filter", "miniupnpd"],
        )?;
        Ok(out
            .lines()
            .filter(|l| l.contains(&format!("dport {port}")) && l.contains("accept"))
            .count())
    }

    /// The gateway's miniupnpd DNAT rules for `port`.
    fn rules(&self, lab: &Lab, port: u16) -> Result<usize> {
        let out = lab.exec(
            &self.gw,
            &[
                "nft",
                "list",
                "chain",
                "inet",
                "filter",
                "prerouting_miniupnpd",
            ],
        )?;
        Ok(out
            .lines()
            .filter(|l| l.contains(&format!("dport {port}")) && l.contains("dnat"))
            .count())
    }
}

/// Runs the port-mapping checks for PCP, NAT-PMP and UPnP-IGD, one
/// gateway each, at the same time.
///
/// # Errors
/// Setup failures, a hung process.
pub fn miniupnpd(
    lab: &mut Lab,
    nx: &Natrix,
    internet: &Internet,
    coordinators: &[&str],
    smol_map: &Path,
) -> Result<Vec<Scenario>> {
    let coordinator = coordinators.first().copied().unwrap_or_default();
    let mut sites = Vec::new();
    for i in 1..=3u8 {
        let mut s = MapSite::build(lab, internet, i)?;
        s.start_daemon(lab, 0)?;
        sites.push(s);
    }
    let mut node_site = MapSite::build(lab, internet, 4)?;
    node_site.start_daemon(lab, 0)?;
    let mut double_site = MapSite::build_behind(lab, internet, 5, true)?;
    double_site.start_daemon(lab, 0)?;
    for i in 6..=7u8 {
        let mut s = MapSite::build(lab, internet, i)?;
        s.start_daemon(lab, 0)?;
        sites.push(s);
    }
    let mut dual = MapSite::build_dual(lab, internet, 8)?;
    dual.start_daemon(lab, 0)?;
    sites.push(dual);
    let lab_ref = &*lab;
    let mut out = vec![
        netcheck(lab_ref, nx, &sites[0], coordinator)?,
        double_nat(lab_ref, nx, &mut double_site, coordinator)?,
    ];
    // (protocol, mapper, over IPv6)
    let runs = [
        ("pcp", Mapper::Cli, false),
        ("natpmp", Mapper::Cli, false),
        ("upnp", Mapper::Cli, false),
        ("upnp", Mapper::Smol, false),
        ("natpmp", Mapper::AsyncStd, false),
        ("pcp", Mapper::Cli, true),
    ];
    let results: Vec<Result<Scenario>> = std::thread::scope(|scope| {
        let handles: Vec<_> = sites
            .iter_mut()
            .zip(runs)
            .map(|(site, (proto, mapper, v6))| {
                scope.spawn(move || one(lab_ref, nx, internet, site, (proto, mapper, v6), smol_map))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(LabError::Setup("a port-mapping check panicked".into()))
                })
            })
            .collect()
    });
    for r in results {
        out.push(r?);
    }
    out.push(node_override(lab_ref, nx, &mut node_site, coordinators)?);
    Ok(out)
}

/// P7 on a node: `natrix listen --port-mapping` behind miniupnpd announces
/// the mapping's public address as Open, and its `Stats` show the mapping
/// (active, external address, renewals); when the gateway loses the mapping
/// (miniupnpd gone, its rules flushed), the node measures its class again
/// and the mapping leaves its `Stats`.
fn node_override(
    lab: &Lab,
    nx: &Natrix,
    site: &mut MapSite,
    coordinators: &[&str],
) -> Result<Scenario> {
    let mut s = Scenario::named("a node's port mapping becomes its public address (P7)");
    let want = format!("{}:{PORT}", site.wan);
    let listen = |name: &str| -> Result<Proc> {
        let (key, _) = nx.keygen(name)?;
        let mut args: Vec<String> = vec!["listen".into()];
        for c in coordinators {
            args.push("-c".into());
            args.push((*c).to_owned());
        }
        for a in [
            "--key",
            &key.to_string_lossy(),
            "--bind",
            "0.0.0.0:4000",
            "--port-mapping",
            "--port-mapping-lifetime",
            "6",
            "--report",
            &nx.report_path(name).to_string_lossy(),
            "-v",
        ] {
            args.push(a.to_owned());
        }
        Proc::spawn(&site.peer, name, &nx.dir, &nx.bin, &args, None)
    };
    let mapped_and_open = |p: &mut Proc| {
        let mapped = p
            .wait_log(
                &format!("port mapping: {want} via PCP"),
                Duration::from_secs(15),
            )
            .is_ok();
        mapped
            && p.wait_log(
                &format!("NAT class: Open, public address {want}"),
                Duration::from_secs(15),
            )
            .is_ok()
    };

    // First run: the mapping, one renewal (at half the 6 s lease), then the
    // report the node writes on the way out, before its shutdown deletes
    // the mapping.
    let mut p = listen("p7-listen")?;
    let first = mapped_and_open(&mut p);
    let renewed = first
        && p.wait_log("port mapping renewed", Duration::from_secs(10))
            .is_ok();
    p.terminate();
    p.wait_exit(Duration::from_secs(10))?;
    let report = nx.report("p7-listen")?;
    let pm = &report.port_mapping;
    s.measure(format!("its Stats while mapped: {pm}"));
    s.check(
        format!(
            "the node got the mapping {want} via PCP (the first in the probe order) and announced itself Open there (the reflex override, C6)"
        ),
        first,
    );
    s.check(
        format!("its Stats show the mapping: active, external {want}, renewed at least once"),
        renewed
            && pm.get("active").and_then(Value::as_bool) == Some(true)
            && pm.get("external").and_then(Value::as_str) == Some(want.as_str())
            && pm.get("renewals").and_then(Value::as_u64) >= Some(1),
    );
    s.check(
        "its shutdown deleted the mapping: the gateway's rule is gone (P4)",
        site.rules(lab, PORT)? == 0,
    );

    // Second run: the gateway loses the mapping (miniupnpd stops and its
    // rules go).
    let mut p = listen("p7-lost")?;
    let second = mapped_and_open(&mut p);
    site.stop_daemon()?;
    site.forget_mappings(lab)?;
    let lost = p
        .wait_log("port mapping lost", Duration::from_secs(20))
        .is_ok();
    // Time for the sweep the lost override lets run again.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        if !p.running() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    p.terminate();
    p.wait_exit(Duration::from_secs(10))?;
    let report = nx.report("p7-lost")?;
    s.measure(format!(
        "after the loss: class {} at {}; Stats {}",
        report.class.as_deref().unwrap_or("?"),
        report.reflex.as_deref().unwrap_or("?"),
        report.port_mapping
    ));
    s.check("mapped again in a second run", second);
    s.check("the renewal failed and the mapping was reported lost", lost);
    s.check(
        "losing it restored classification: the node measured itself again (cone behind the gateway's masquerade)",
        lost && report.class.as_deref() == Some("cone"),
    );
    s.check(
        "and the mapping left its Stats (inactive, no external address)",
        report.port_mapping.get("active").and_then(Value::as_bool) == Some(false)
            && report
                .port_mapping
                .get("external")
                .is_some_and(Value::is_null),
    );
    Ok(s)
}

/// P6 against a real gateway: miniupnpd behind a second NAT has a private
/// WAN address. It answers, but has no public address to offer (NAT-PMP
/// "network failure", an empty UPnP external address, PCP refusing):
/// `natrix netcheck` says double NAT, `natrix map` fails naming it, and
/// nothing is installed or advertised.
fn double_nat(lab: &Lab, nx: &Natrix, site: &mut MapSite, coordinator: &str) -> Result<Scenario> {
    let mut s = Scenario::named("double NAT: miniupnpd behind a second gateway (P6)");
    let doc = netcheck_json(nx, site, coordinator, "netcheck-double")?;
    let row = &doc["port_mapping"]["double_nat"];
    s.measure(format!(
        "netcheck double NAT: {} ({})",
        row["value"].as_str().unwrap_or("?"),
        row["detail"].as_str().unwrap_or("")
    ));
    s.check(
        "netcheck reports the gateway as double NAT",
        row["value"].as_str() == Some("yes"),
    );
    let args: Vec<String> = ["map", "--port", "4000", "--lifetime", "60"]
        .map(str::to_owned)
        .to_vec();
    let mut map = Proc::spawn(&site.peer, "map-double", &nx.dir, &nx.bin, &args, None)?;
    let status = map.wait_exit(Duration::from_secs(20))?;
    let log = map.log_text();
    let line = log
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or("(no error line)");
    s.measure(format!("natrix map: exit {:?}: {line}", status.code()));
    s.check(
        "natrix map failed (exit 1) and named double NAT as the reason",
        status.code() == Some(1) && line.contains("double NAT"),
    );
    s.check(
        "no address was printed as a mapping, and the gateway holds no rule",
        map.received().is_empty() && site.rules(lab, PORT)? == 0,
    );
    let _ = site.stop_daemon();
    Ok(s)
}

/// `natrix netcheck --json` behind `site`, parsed.
fn netcheck_json(
    nx: &Natrix,
    site: &MapSite,
    coordinator: &str,
    name: &str,
) -> Result<serde_json::Value> {
    let args: Vec<String> = [
        "netcheck",
        "--coordinator",
        coordinator,
        "--json",
        "--timeout",
        "2",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut p = Proc::spawn(&site.peer, name, &nx.dir, &nx.bin, &args, None)?;
    p.wait_exit(Duration::from_secs(20))?;
    let text: String = p.received().into_iter().map(|(_, l)| l + "\n").collect();
    serde_json::from_str(&text).map_err(|e| LabError::Report {
        file: format!("{name} stdout"),
        detail: e.to_string(),
    })
}

/// D1: `natrix netcheck` behind miniupnpd reports all three services, and
/// installs nothing.
fn netcheck(lab: &Lab, nx: &Natrix, site: &MapSite, coordinator: &str) -> Result<Scenario> {
    let mut s = Scenario::named("netcheck behind miniupnpd (D1)");
    let doc = netcheck_json(nx, site, coordinator, "netcheck-portmap")?;
    let mut answered = Vec::new();
    for key in ["pcp", "nat_pmp", "upnp_igd"] {
        let m = &doc["port_mapping"][key];
        s.measure(format!(
            "{key}: {} ({})",
            m["value"].as_str().unwrap_or("?"),
            m["detail"].as_str().unwrap_or("")
        ));
        answered.push(m["value"].as_str() == Some("answers"));
    }
    s.check(
        "PCP, NAT-PMP and UPnP-IGD are each reported as answering",
        answered.iter().all(|a| *a),
    );
    s.check(
        format!(
            "NAT-PMP reports the gateway's external address {}",
            site.wan
        ),
        doc["port_mapping"]["nat_pmp"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&site.wan)),
    );
    s.check(
        "and the gateway is not behind another NAT",
        doc["port_mapping"]["double_nat"]["value"].as_str() == Some("no"),
    );
    s.check(
        "nothing was installed: the gateway has no mapping rule",
        site.rules(lab, PORT)? == 0,
    );
    Ok(s)
}

const PORT: u16 = 4000;

/// A port-mapping client the lab runs: `natrix map` (tokio), or the
/// `smol_map` example on smol or inside async-std.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapper {
    /// `natrix map --protocol …`.
    Cli,
    /// `smol_map` on smol's executor.
    Smol,
    /// `smol_map --async-std`: the smol driver inside async-std.
    AsyncStd,
}

/// `proto` through `mapper` (over IPv6 with `v6`: PCP on a dual-stack
/// site, mapping the peer's global address): install, reach the node
/// through the mapping, renew, survive a gateway restart, delete when
/// stopped.
fn one(
    lab: &Lab,
    nx: &Natrix,
    internet: &Internet,
    site: &mut MapSite,
    (proto, mapper, v6): (&'static str, Mapper, bool),
    smol_map: &Path,
) -> Result<Scenario> {
    let protocol = match proto {
        "pcp" => "PCP",
        "natpmp" => "NAT-PMP",
        _ => "UPnP-IGD",
    };
    let runtime = match mapper {
        Mapper::Cli => "",
        Mapper::Smol => ", the smol driver",
        Mapper::AsyncStd => ", the smol driver inside async-std",
    };
    let family = if v6 {
        " over IPv6 (a firewall pinhole)"
    } else {
        ""
    };
    let mut s = Scenario::named(format!(
        "port mapping: {protocol}{family} against miniupnpd{runtime}"
    ));
    let (address, rule) = match (&site.v6, v6) {
        (Some(a), true) => (a.clone(), "pinhole"),
        (None, true) => {
            return Err(LabError::Setup(format!(
                "{protocol} over IPv6 needs a dual-stack site"
            )));
        }
        (_, false) => (site.wan.clone(), "DNAT rule"),
    };
    // A short lease, so a renewal comes within the check: renewed at half.
    let mut args: Vec<String> = ["--port", "4000", "--protocol", proto, "--lifetime", "6"]
        .map(str::to_owned)
        .to_vec();
    if v6 {
        // Bound to its IPv6 address, the mapper asks the IPv6 gateway.
        args.extend(["--bind".to_owned(), address.clone()]);
    }
    let label = format!("map-{proto}-{mapper:?}{}", if v6 { "-v6" } else { "" });
    let mut map = match mapper {
        Mapper::Cli => {
            args.splice(0..0, ["map".to_owned()]);
            args.extend(["--echo", "-v"].map(str::to_owned));
            Proc::spawn(&site.peer, &label, &nx.dir, &nx.bin, &args, None)?
        }
        Mapper::Smol | Mapper::AsyncStd => {
            if mapper == Mapper::AsyncStd {
                args.push("--async-std".to_owned());
            }
            // It stops (and deletes) at the end of its stdin.
            Proc::spawn(
                &site.peer,
                &label,
                &nx.dir,
                smol_map,
                &args,
                Some("keep".to_owned()),
            )?
        }
    };
    let t0 = Instant::now();
    map.wait_for(
        "the external address on stdout",
        Duration::from_secs(10),
        |p| !p.received().is_empty(),
    )?;
    let installed_after = t0.elapsed();
    let external = map
        .received()
        .first()
        .map(|(_, l)| l.clone())
        .unwrap_or_default();
    let want = SocketAddr::new(address.parse().expect("an address"), PORT).to_string();
    s.check(
        format!("installed; the granted external address is {want} (P3)"),
        external == want,
    );
    s.check(
        format!("the gateway holds the mapping's {rule}"),
        site.mapping_rules(lab, PORT, v6)? == 1,
    );
    // Reach the node through the mapping from the internet namespace.
    lab.exec(
        &internet.ns,
        &[
            "bash",
            "-c",
            &format!("echo through-the-{proto}-mapping > /dev/udp/{address}/{PORT}"),
        ],
    )?;
    let reached = map
        .wait_log(
            &format!("through-the-{proto}-mapping"),
            Duration::from_secs(5),
        )
        .is_ok();
    s.check(
        "a datagram from the internet namespace reached the node through the mapping",
        reached,
    );
    // A renewal at half the 6 s lease.
    let renewed = map.wait_log("renewed:", Duration::from_secs(8)).is_ok();
    s.check("renewed at half the granted lifetime (P4)", renewed);
    // Restart the gateway's daemon, as a reboot would: the restarted
    // gateway has lost the mapping.
    site.stop_daemon()?;
    site.forget_mappings(lab)?;
    site.start_daemon(lab, 1)?;
    let restarted = Instant::now();
    // Both mappers print "the gateway restarted (…)" on GatewayRestarted and
    // "renewed:" when the client reports the mapping installed again.
    const RESTARTED: &str = "the gateway restarted";
    let detected_before = map.log_text().matches(RESTARTED).count();
    // PCP and NAT-PMP notice the restart at their next exchange (epoch);
    // UPnP-IGD at its next check of the entry, at most min(30 s, lease/2)
    // = 3 s away with the 6 s lease: 10 s is ample for all three.
    let detected_and_back = |log: &str| {
        log.matches(RESTARTED).count() > detected_before
            && log
                .rfind(RESTARTED)
                .is_some_and(|at| log[at..].contains("renewed:"))
    };
    let waited = map
        .wait_for(
            "the restart detected and the mapping back on the restarted gateway",
            Duration::from_secs(10),
            |p| detected_and_back(&p.log_text()),
        )
        .is_ok();
    let back_after = restarted.elapsed();
    let log = map.log_text();
    let detected = log.matches(RESTARTED).count() > detected_before;
    let back = waited && detected_and_back(&log) && site.mapping_rules(lab, PORT, v6)? == 1;
    let how = if proto == "upnp" {
        "the missing entry"
    } else {
        "the epoch"
    };
    s.measure(format!(
        "installed {:.0} ms after start; external {external}; mapping back {:.1} s after the gateway restart{}",
        installed_after.as_secs_f64() * 1e3,
        back_after.as_secs_f64(),
        if detected {
            format!(" (restart detected by {how})")
        } else {
            String::new()
        }
    ));
    s.check(
        format!("the restart was detected ({how}, P4) and the mapping installed again"),
        back && detected,
    );
    // Stop: the mapping is deleted (P4).
    if mapper == Mapper::Cli {
        map.terminate();
    } else {
        map.stop_feeding();
    }
    let status = map.wait_exit(Duration::from_secs(10))?;
    let log = map.log_text();
    if v6 {
        // miniupnpd 2.3.1 (nftables) refuses, NOT_AUTHORIZED, to delete an
        // IPv6 pinhole once a second MAP refreshed it (here the renewal and
        // the re-install after the restart). natrix must say so, not claim
        // a deletion; the pinhole then lasts until its lease ends.
        let refused = log.contains("did not confirm deleting")
            && log.contains("NOT_AUTHORIZED")
            && status.code() == Some(1);
        let t = Instant::now();
        while site.mapping_rules(lab, PORT, v6)? != 0 && t.elapsed() < Duration::from_secs(9) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let gone = site.mapping_rules(lab, PORT, v6)? == 0;
        s.measure(format!(
            "deletion of the refreshed pinhole: {}; the pinhole gone {:.1} s after the stop",
            if refused {
                "refused by the gateway (NOT_AUTHORIZED)"
            } else {
                "not refused"
            },
            t.elapsed().as_secs_f64()
        ));
        s.check(
            "stopping the client: the gateway refused to delete the refreshed pinhole (miniupnpd 2.3.1), natrix map said so and exited 1 (P4: no false 'deleted'), and the pinhole ended with its 6 s lease",
            refused && gone,
        );
        // A pinhole installed and deleted without a refresh: the gateway
        // confirms, and it is gone at once.
        let mut short = Proc::spawn(
            &site.peer,
            "map-pcp-v6-short",
            &nx.dir,
            &nx.bin,
            &[
                "map",
                "--bind",
                &address,
                "--port",
                "4000",
                "--protocol",
                "pcp",
                "--lifetime",
                "60",
                "--run-for",
                "1",
                "-v",
            ]
            .map(str::to_owned),
            None,
        )?;
        let status = short.wait_exit(Duration::from_secs(10))?;
        let deleted = short.log_text().contains("deleted the mapping")
            && status.success()
            && site.mapping_rules(lab, PORT, v6)? == 0;
        s.check(
            "a pinhole installed and deleted without a refresh: the gateway confirmed, and the pinhole is gone (P4)",
            deleted,
        );
    } else {
        let deleted =
            log.contains("deleted the mapping") && site.mapping_rules(lab, PORT, v6)? == 0;
        s.check(
            format!("stopping the client deleted the mapping: the gateway's {rule} is gone (P4)"),
            deleted,
        );
    }
    let _ = site.stop_daemon();
    Ok(s)
}
