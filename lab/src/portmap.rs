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

use std::time::{Duration, Instant};

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

fn config(i: u8, dir: &str) -> String {
    format!(
        "ext_ifname=wan\nlistening_ip=lan\nhttp_port=0\nenable_natpmp=yes\nenable_upnp=yes\nsecure_mode=yes\n\
         system_uptime=no\nmin_lifetime=1\nuuid=3d3cec3a-8cf0-11e0-98ee-00000000000{i}\nlease_file={dir}/leases{i}\n\
         allow 1024-65535 192.168.{n}.0/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n",
        n = 200 + u16::from(i)
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
        let gw = lab.add_ns(&format!("m{i}g"))?;
        let peer = lab.add_ns(&format!("m{i}p"))?;
        let up = format!("u{i}");
        lab.veth(&internet.ns, &up, &gw, "wan")?;
        lab.addr(&internet.ns, &up, &format!("11.0.{i}.1/24"))?;
        lab.addr(&gw, "wan", &format!("11.0.{i}.2/24"))?;
        lab.route(&gw, "default", &format!("11.0.{i}.1"))?;
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
            wan: format!("11.0.{i}.2"),
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
    let lab_ref = &*lab;
    let mut out = vec![netcheck(lab_ref, nx, &sites[0], coordinator)?];
    let results: Vec<Result<Scenario>> = std::thread::scope(|scope| {
        let handles: Vec<_> = sites
            .iter_mut()
            .zip(["pcp", "natpmp", "upnp"])
            .map(|(site, proto)| scope.spawn(move || one(lab_ref, nx, internet, site, proto)))
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
/// the mapping's public address as Open; when the gateway loses the mapping
/// (miniupnpd gone, its rules flushed), the node measures its class again.
fn node_override(
    lab: &Lab,
    nx: &Natrix,
    site: &mut MapSite,
    coordinators: &[&str],
) -> Result<Scenario> {
    let mut s = Scenario::named("a node's port mapping becomes its public address (P7)");
    let (key, _) = nx.keygen("p7-listen")?;
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
        &nx.report_path("p7-listen").to_string_lossy(),
        "-v",
    ] {
        args.push(a.to_owned());
    }
    let mut p = Proc::spawn(&site.peer, "p7-listen", &nx.dir, &nx.bin, &args, None)?;
    let want = format!("{}:{PORT}", site.wan);
    let mapped = p
        .wait_log(
            &format!("port mapping: {want} via PCP"),
            Duration::from_secs(15),
        )
        .is_ok();
    let open = p
        .wait_log(
            &format!("NAT class: Open, public address {want}"),
            Duration::from_secs(15),
        )
        .is_ok();
    s.check(
        format!("the node got the mapping {want} via PCP (the first in the probe order)"),
        mapped,
    );
    s.check(
        format!("and announced itself Open at {want} (the reflex override, C6)"),
        open,
    );
    // The gateway loses the mapping: miniupnpd stops and its rules go.
    if let Some(mut d) = site.daemon.take() {
        d.terminate();
        d.wait_exit(Duration::from_secs(5))?;
    }
    lab.exec(
        &site.gw,
        &[
            "nft",
            "flush",
            "chain",
            "inet",
            "filter",
            "prerouting_miniupnpd",
        ],
    )?;
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
    let report = nx.report("p7-listen")?;
    s.measure(format!(
        "after the loss: class {} at {}",
        report.class.as_deref().unwrap_or("?"),
        report.reflex.as_deref().unwrap_or("?")
    ));
    s.check("the renewal failed and the mapping was reported lost", lost);
    s.check(
        "losing it restored classification: the node measured itself again (cone behind the gateway's masquerade)",
        lost && report.class.as_deref() == Some("cone"),
    );
    Ok(s)
}

/// D1: `natrix netcheck` behind miniupnpd reports all three services, and
/// installs nothing.
fn netcheck(lab: &Lab, nx: &Natrix, site: &MapSite, coordinator: &str) -> Result<Scenario> {
    let mut s = Scenario::named("netcheck behind miniupnpd (D1)");
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
    let mut p = Proc::spawn(
        &site.peer,
        "netcheck-portmap",
        &nx.dir,
        &nx.bin,
        &args,
        None,
    )?;
    p.wait_exit(Duration::from_secs(20))?;
    let text: String = p.received().into_iter().map(|(_, l)| l + "\n").collect();
    let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| LabError::Report {
        file: "netcheck stdout".into(),
        detail: e.to_string(),
    })?;
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
        "nothing was installed: the gateway has no mapping rule",
        site.rules(lab, PORT)? == 0,
    );
    Ok(s)
}

const PORT: u16 = 4000;

fn one(
    lab: &Lab,
    nx: &Natrix,
    internet: &Internet,
    site: &mut MapSite,
    proto: &'static str,
) -> Result<Scenario> {
    let name = match proto {
        "pcp" => "port mapping: PCP against miniupnpd",
        "natpmp" => "port mapping: NAT-PMP against miniupnpd",
        _ => "port mapping: UPnP-IGD against miniupnpd",
    };
    let mut s = Scenario::named(name);
    // A short lease, so a renewal comes within the check: renewed at half.
    let args: Vec<String> = [
        "map",
        "--port",
        "4000",
        "--protocol",
        proto,
        "--echo",
        "--lifetime",
        "6",
        "-v",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut map = Proc::spawn(
        &site.peer,
        &format!("map-{proto}"),
        &nx.dir,
        &nx.bin,
        &args,
        None,
    )?;
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
    // Restart the gateway's daemon.
    if let Some(mut d) = site.daemon.take() {
        d.terminate();
        d.wait_exit(Duration::from_secs(5))?;
    }
    // miniupnpd leaves its rules behind on exit: flush them, as a reboot would.
    lab.exec(
        &site.gw,
        &[
            "nft",
            "flush",
            "chain",
            "inet",
            "filter",
            "prerouting_miniupnpd",
        ],
    )?;
    lab.exec(
        &site.gw,
        &["nft", "flush", "chain", "inet", "filter", "miniupnpd"],
    )?;
    site.start_daemon(lab, 1)?;
    let restarted = Instant::now();
    let before =
        map.log_text().matches("renewed:").count() + map.log_text().matches("restarted").count();
    let back = map
        .wait_for(
            "the mapping back on the restarted gateway",
            Duration::from_secs(10),
            |p| {
                let log = p.log_text();
                log.matches("renewed:").count() + log.matches("restarted").count() > before
            },
        )
        .is_ok()
        && site.rules(lab, PORT)? == 1;
    let detected = map.log_text().contains("the gateway restarted");
    s.measure(format!(
        "installed {:.0} ms after start; external {external}; mapping back {:.1} s after the gateway restart{}",
        installed_after.as_secs_f64() * 1e3,
        restarted.elapsed().as_secs_f64(),
        if detected { " (restart detected by the epoch)" } else { "" }
    ));
    if proto == "upnp" {
        s.check(
            "after miniupnpd restarted, the next renewal installed the mapping again",
            back,
        );
    } else {
        s.check(
            "the restart was detected (epoch, P4) and the mapping installed again",
            back && detected,
        );
    }
    // Stop: the mapping is deleted (P4).
    map.terminate();
    map.wait_exit(Duration::from_secs(10))?;
    let deleted = map.log_text().contains("deleted the mapping") && site.rules(lab, PORT)? == 0;
    s.check(
        "stopping natrix map deleted the mapping: the gateway's rule is gone (P4)",
        deleted,
    );
    if let Some(mut d) = site.daemon.take() {
        d.terminate();
        let _ = d.wait_exit(Duration::from_secs(5));
    }
    Ok(s)
}
