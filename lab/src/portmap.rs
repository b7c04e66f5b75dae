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

fn config(i: u8, dir: &str) -> String {
    format!(
        "ext_ifname=wan\nlistening_ip=lan\nhttp_port={HTTP_PORT}\nenable_natpmp=yes\nenable_upnp=yes\nsecure_mode=yes\n\
         system_uptime=no\nmin_lifetime=1\nuuid=3d3cec3a-8cf0-11e0-98ee-00000000000{i}\nlease_file={lease}\n\
         allow 1024-65535 192.168.{n}.0/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n",
        n = 200 + u16::from(i),
        lease = lease_file(i, dir),
    )
}

/// A gateway running miniupnpd and a peer behind it.
struct MapSite {
    gw: String,
    peer: String,
    wan: String,
    conf: String,
    daemon: Option<Proc>,
    index: u8,
}

impl MapSite {
    fn build(lab: &mut Lab, internet: &Internet, i: u8) -> Result<MapSite> {
        Self::build_behind(lab, internet, i, false)
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
        std::fs::write(&conf, config(i, &lab.dir.to_string_lossy()))
            .map_err(|e| LabError::Setup(format!("cannot write {}: {e}", conf.display())))?;
        Ok(MapSite {
            gw,
            peer,
            wan,
            conf: conf.to_string_lossy().into_owned(),
            daemon: None,
            index: i,
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
    let lab_ref = &*lab;
    let mut out = vec![
        netcheck(lab_ref, nx, &sites[0], coordinator)?,
        double_nat(lab_ref, nx, &mut double_site, coordinator)?,
    ];
    let runs = [
        ("pcp", Mapper::Cli),
        ("natpmp", Mapper::Cli),
        ("upnp", Mapper::Cli),
        ("upnp", Mapper::Smol),
        ("natpmp", Mapper::AsyncStd),
    ];
    let results: Vec<Result<Scenario>> = std::thread::scope(|scope| {
        let handles: Vec<_> = sites
            .iter_mut()
            .zip(runs)
            .map(|(site, (proto, mapper))| {
                scope.spawn(move || one(lab_ref, nx, internet, site, proto, mapper, smol_map))
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

/// `proto` through `mapper`: install, reach the node through the mapping,
/// renew, survive a gateway restart, delete when stopped.
fn one(
    lab: &Lab,
    nx: &Natrix,
    internet: &Internet,
    site: &mut MapSite,
    proto: &'static str,
    mapper: Mapper,
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
    let mut s = Scenario::named(format!(
        "port mapping: {protocol} against miniupnpd{runtime}"
    ));
    // A short lease, so a renewal comes within the check: renewed at half.
    let mut args: Vec<String> = ["--port", "4000", "--protocol", proto, "--lifetime", "6"]
        .map(str::to_owned)
        .to_vec();
    let label = format!("map-{proto}-{mapper:?}");
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
    let want = format!("{}:{PORT}", site.wan);
    s.check(
        format!("installed; the granted external address is {want} (P3)"),
        external == want,
    );
    s.check(
        "the gateway holds the mapping's DNAT rule",
        site.rules(lab, PORT)? == 1,
    );
    // Reach the node through the mapping from the internet namespace.
    lab.exec(
        &internet.ns,
        &[
            "bash",
            "-c",
            &format!(
                "echo through-the-{proto}-mapping > /dev/udp/{}/{PORT}",
                site.wan
            ),
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
    let back = waited && detected_and_back(&log) && site.rules(lab, PORT)? == 1;
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
    map.wait_exit(Duration::from_secs(10))?;
    let deleted = map.log_text().contains("deleted the mapping") && site.rules(lab, PORT)? == 0;
    s.check(
        "stopping the client deleted the mapping: the gateway's rule is gone (P4)",
        deleted,
    );
    let _ = site.stop_daemon();
    Ok(s)
}
