//! STUN interop with coturn (C8): natrix's behaviour discovery against
//! coturn's `turnserver`, and coturn's `turnutils_natdiscovery` against a
//! natrix coordinator, behind kernel NAT kinds.
//!
//! In the internet namespace: `turnserver` (STUN only) on 203.0.113.50 and
//! .51, ports 3478 and 3479 — the two addresses RFC 5780 needs — and a
//! natrix coordinator on 203.0.113.60:3478 with `--stun-alternate
//! 203.0.113.61:3479`. Behind each kind:
//!
//! 1. `natrix netcheck --stun` against coturn and against the coordinator
//!    reports the kind's mapping and filtering (RFC 4787 names);
//! 2. `turnutils_natdiscovery -m -f` reports the same verdicts against the
//!    coordinator as against coturn, and they are the kind's.
//!
//! Every site's NAT state is flushed before each run, so no run sees the
//! mappings (or, for the restricted kind, the learned addresses) an earlier
//! one left.
//!
//! Then the pair decision with NAT profiles (C8), on the same sites (and a
//! cgnat site): peers (`listen`/`connect` with the natrix coordinator and
//! `--stun-server` coturn, which also measures their behaviour from the
//! peer's own socket) announce their mapping and filtering. A restricted
//! cone with a symmetric NAT punches as the class alone says. A
//! port-restricted cone (either side of the connection) or a cgnat with a
//! symmetric NAT — the matrix's relay cells, where no rendezvous punch can
//! work — is punched by a birthday attempt (N2): the symmetric side opens
//! 256 sockets (256 mappings on random ports), the other side sends up to
//! [`SPRAY_PROBES`] probes to random ports of its IP. The symmetric
//! gateway's conntrack table is read after each such pair, to show the range
//! its mappings really took (the odds below assume 1024–65535).

use std::time::Duration;

use crate::kinds::Kind;
use crate::natrix::Natrix;
use crate::netns::Lab;
use crate::proc::Proc;
use crate::scenarios::Scenario;
use crate::topo::{Internet, Site};
use crate::{LabError, Result};

/// coturn's two addresses.
const COTURN: [&str; 2] = ["203.0.113.50", "203.0.113.51"];
/// The natrix coordinator's two addresses.
const NATRIX: [&str; 2] = ["203.0.113.60", "203.0.113.61"];

/// The kinds checked, with the (mapping, filtering) each must show, in
/// RFC 4787 words as netcheck's JSON spells them. Both tools measure from
/// the peer port (4000): the full-cone and restricted kinds' static
/// mapping covers only that port (other ports get the gateway's plain
/// masquerade).
const KINDS: [(Kind, &str, &str); 5] = [
    (
        Kind::FullCone,
        "endpoint-independent",
        "endpoint-independent",
    ),
    (
        Kind::Restricted,
        "endpoint-independent",
        "address-dependent",
    ),
    (
        Kind::PortRestricted,
        "endpoint-independent",
        "address-and-port-dependent",
    ),
    (
        Kind::Masquerade,
        "endpoint-independent",
        "address-and-port-dependent",
    ),
    (
        Kind::Symmetric,
        "address-and-port-dependent",
        "address-and-port-dependent",
    ),
];

/// Kinds built only for the pairs with profiles (not in the interop
/// checks), with the (mapping, filtering) their peers must announce: the
/// cgnat's static mappings keep the peer's port 4000 through both layers,
/// and its home router filters by address and port.
const PAIR_KINDS: [(Kind, &str, &str); 1] = [(
    Kind::Cgnat,
    "endpoint-independent",
    "address-and-port-dependent",
)];

/// N2: the probes a birthday attempt's prober sends in the pairs with
/// profiles. Against the 256 mappings of the symmetric side
/// (`--spray-sockets`, default), each on a random port of 1024–65535 (64,512
/// ports: where the kernel's `fully-random` picks for a source port above
/// 1023), the chance that none of 2,048 distinct probes lands is
/// `C(64512−256, 2048) / C(64512, 2048) ≈ e^(−256·2048/64512) ≈ 2.6e−4`:
/// success 99.97 % per pair (the default 512 probes: 87 %).
pub const SPRAY_PROBES: u32 = 2048;
/// N2: the birthday attempts' rate in those pairs (datagrams per second,
/// each side): the 256 openings take 0.25 s, then the 2,048 probes at most
/// 2 s, within the punch's 5 s deadline.
pub const SPRAY_RATE: u32 = 1024;

/// `turnutils_natdiscovery`'s verdict lines for a (mapping, filtering).
fn coturn_words(mapping: &str, filtering: &str) -> [String; 2] {
    let word = |w: &str| match w {
        "endpoint-independent" => "Endpoint Independent",
        "address-dependent" => "Address Dependent",
        _ => "Address and Port Dependent",
    };
    [
        format!("NAT with {} Mapping!", word(mapping)),
        format!("NAT with {} Filtering!", word(filtering)),
    ]
}

/// Runs the interop checks; sites are numbered from `first_site`.
///
/// # Errors
/// Setup failures, a process that does not start or hangs.
pub fn interop(
    lab: &mut Lab,
    nx: &Natrix,
    internet: &Internet,
    first_site: u8,
) -> Result<Vec<Scenario>> {
    for ip in COTURN.iter().chain(NATRIX.iter()) {
        lab.addr(&internet.ns, "lo", &format!("{ip}/32"))?;
    }
    let mut coturn = start_coturn(lab, internet)?;
    let (key_file, key) = nx.keygen("stun-coordinator")?;
    let args: Vec<String> = vec![
        "coordinator".into(),
        "--listen".into(),
        format!("{}:3478", NATRIX[0]),
        "--stun-alternate".into(),
        format!("{}:3479", NATRIX[1]),
        "--key".into(),
        key_file.to_string_lossy().into_owned(),
        "-v".into(),
    ];
    let mut coordinator = Proc::spawn(
        &internet.ns,
        "stun-coordinator",
        &nx.dir,
        &nx.bin,
        &args,
        None,
    )?;
    coordinator.wait_log("coordinator running", Duration::from_secs(10))?;
    let dial = format!("{key}@{}:3478", NATRIX[0]);
    let mut sites = Vec::new();
    for (n, (kind, _, _)) in KINDS.iter().chain(PAIR_KINDS.iter()).enumerate() {
        let i = first_site + u8::try_from(n).unwrap_or(0);
        sites.push(Site::build(lab, internet, *kind, i, &format!("t{i}"))?);
    }
    let lab_ref = &*lab;
    let results: Vec<Result<Scenario>> = std::thread::scope(|scope| {
        let handles: Vec<_> = sites
            .iter()
            .zip(KINDS)
            .map(|(site, (_, mapping, filtering))| {
                scope.spawn(move || one(lab_ref, nx, site, mapping, filtering))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(LabError::Setup("a STUN check panicked".into())))
            })
            .collect()
    });
    let mut results = results;
    results.extend(profile_pairs(lab_ref, nx, &sites, &dial));
    coordinator.terminate();
    let _ = coordinator.wait_exit(Duration::from_secs(5));
    coturn.terminate();
    let _ = coturn.wait_exit(Duration::from_secs(5));
    results.into_iter().collect()
}

fn start_coturn(lab: &Lab, internet: &Internet) -> Result<Proc> {
    let mut args: Vec<String> = vec!["-n".into(), "-S".into()];
    for ip in COTURN {
        args.push("--listening-ip".into());
        args.push(ip.into());
    }
    for a in [
        "--listening-port",
        "3478",
        "--alt-listening-port",
        "3479",
        "--no-cli",
        "--no-tls",
        "--no-dtls",
        "-l",
        "stdout",
    ] {
        args.push(a.into());
    }
    let mut p = Proc::spawn(
        &internet.ns,
        "turnserver",
        &lab.dir,
        std::path::Path::new("turnserver"),
        &args,
        None,
    )?;
    // `-l stdout`: its log comes on stdout.
    p.wait_for("coturn listening", Duration::from_secs(15), |p| {
        p.received()
            .iter()
            .any(|(_, l)| l.contains("Total General servers"))
    })?;
    Ok(p)
}

fn one(lab: &Lab, nx: &Natrix, site: &Site, mapping: &str, filtering: &str) -> Result<Scenario> {
    let mut s = Scenario::named(format!(
        "STUN behaviour discovery behind {} (C8, coturn interop)",
        site.kind
    ));
    // natrix against coturn, then against the natrix coordinator.
    for (who, server) in [("coturn", COTURN[0]), ("natrix", NATRIX[0])] {
        site.reset_state(lab)?;
        let doc = netcheck(nx, site, server)?;
        let got = |k: &str| doc["stun"][k]["value"].as_str().unwrap_or("?").to_owned();
        let (m, f) = (got("mapping"), got("filtering"));
        s.measure(format!(
            "natrix netcheck against {who}: mapping {m}, filtering {f}, port allocation {}",
            got("port_allocation")
        ));
        s.check(
            format!("natrix against {who} finds {mapping} mapping and {filtering} filtering"),
            m == mapping && f == filtering,
        );
    }
    // coturn's client against both servers.
    let want = coturn_words(mapping, filtering);
    let mut verdicts = Vec::new();
    for (who, server) in [("coturn", COTURN[0]), ("natrix", NATRIX[0])] {
        let v = natdiscovery(lab, site, &nx.dir, server)?;
        s.measure(format!(
            "turnutils_natdiscovery against {who}: {}",
            v.join("; ")
        ));
        verdicts.push(v);
    }
    s.check(
        "turnutils_natdiscovery reports the same verdicts against the natrix coordinator as against coturn",
        verdicts.first() == verdicts.get(1),
    );
    s.check(
        format!("and they are the kind's: {}", want.join(" ")),
        verdicts
            .first()
            .is_some_and(|v| want.iter().all(|w| v.contains(w))),
    );
    Ok(s)
}

/// `natrix netcheck --stun SERVER:3478 --json` on the site's peer.
fn netcheck(nx: &Natrix, site: &Site, server: &str) -> Result<serde_json::Value> {
    let args: Vec<String> = [
        "netcheck",
        "--stun",
        &format!("{server}:3478"),
        "--no-port-mapping",
        "--stun-local-port",
        "4000",
        "--json",
        "--timeout",
        "5",
    ]
    .map(str::to_owned)
    .to_vec();
    let name = format!("stun-netcheck-{}-{server}", site.index);
    let mut p = Proc::spawn(&site.peer_ns, &name, &nx.dir, &nx.bin, &args, None)?;
    p.wait_exit(Duration::from_secs(30))?;
    let text: String = p.received().into_iter().map(|(_, l)| l + "\n").collect();
    serde_json::from_str(&text).map_err(|e| LabError::Report {
        file: format!("{name} stdout"),
        detail: e.to_string(),
    })
}

/// `turnutils_natdiscovery -m` then `-f` against SERVER from the peer's
/// port 4000 (`-l` applies only to a run's first test, so one test per
/// run, the site's NAT state flushed before each): its verdict lines ("NAT
/// with … Mapping!", "No NAT…").
fn natdiscovery(
    lab: &Lab,
    site: &Site,
    dir: &std::path::Path,
    server: &str,
) -> Result<Vec<String>> {
    let mut verdicts = Vec::new();
    for test in ["-m", "-f"] {
        site.reset_state(lab)?;
        let name = format!("natdiscovery{test}-{}-{server}", site.index);
        let ip = site.peer_ip.to_string();
        let args: Vec<String> = [test, "-L", &ip, "-l", "4000", server]
            .map(str::to_owned)
            .to_vec();
        let mut p = Proc::spawn(
            &site.peer_ns,
            &name,
            dir,
            std::path::Path::new("turnutils_natdiscovery"),
            &args,
            None,
        )?;
        p.wait_exit(Duration::from_secs(60))?;
        verdicts.extend(
            p.received()
                .into_iter()
                .map(|(_, l)| l.trim().to_owned())
                .filter(|l| l.starts_with("NAT with") || l.starts_with("No NAT")),
        );
    }
    Ok(verdicts)
}

/// What a pair with profiles must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// A rendezvous punch opens it (the profiles say one works).
    Punch,
    /// No rendezvous punch can: a birthday attempt opens it (N2).
    Birthday,
}

/// The pairs (connecting side, listening side) checked with profiles.
const PROFILE_PAIRS: [(Kind, Kind, Expect); 4] = [
    (Kind::PortRestricted, Kind::Symmetric, Expect::Birthday),
    (Kind::Symmetric, Kind::PortRestricted, Expect::Birthday),
    (Kind::Cgnat, Kind::Symmetric, Expect::Birthday),
    (Kind::Restricted, Kind::Symmetric, Expect::Punch),
];

/// The C8 pair decision and N2's birthday punch on real NAT: each pair of
/// [`PROFILE_PAIRS`] in turn (sites are reused), with its NAT state flushed
/// first.
fn profile_pairs(lab: &Lab, nx: &Natrix, sites: &[Site], dial: &str) -> Vec<Result<Scenario>> {
    let mut peer_flags = vec!["--stun-server".into(), format!("{}:3478", COTURN[0])];
    peer_flags.extend([
        "--spray-probes".into(),
        SPRAY_PROBES.to_string(),
        "--spray-rate".into(),
        SPRAY_RATE.to_string(),
    ]);
    let nx = Natrix {
        peer_flags,
        ..nx.clone()
    };
    let site = |k: Kind| sites.iter().find(|s| s.kind == k);
    PROFILE_PAIRS
        .iter()
        .filter_map(|&(a, b, expect)| Some((site(a)?, site(b)?, expect)))
        .map(|(a, b, expect)| profile_pair(lab, &nx, a, b, dial, expect))
        .collect()
}

fn profile_pair(
    lab: &Lab,
    nx: &Natrix,
    a: &Site,
    b: &Site,
    dial: &str,
    expect: Expect,
) -> Result<Scenario> {
    let mut s = Scenario::named(match expect {
        Expect::Punch => format!(
            "pair decision with NAT profiles: {} x {} (C8)",
            a.kind, b.kind
        ),
        Expect::Birthday => format!(
            "birthday punch with NAT profiles: {} x {} (C8, N2)",
            a.kind, b.kind
        ),
    });
    s.kinds = Some((a.kind, b.kind));
    a.reset_state(lab)?;
    b.reset_state(lab)?;
    let cell = crate::matrix::run_cell(nx, a, b, &[dial])?;
    let (ra, rb) = (
        nx.report(&format!("{}x{}-A", a.kind, b.kind))?,
        nx.report(&format!("{}x{}-B", a.kind, b.kind))?,
    );
    let profile =
        |r: &crate::natrix::PeerReport| r.profile.clone().unwrap_or_else(|| "none".into());
    s.measure(format!(
        "announced {} / {} ({} / {}); outcome {} (baseline matrix: {}); keep-alives {}+{}; last upgrade error: {}",
        profile(&ra),
        profile(&rb),
        ra.class.as_deref().unwrap_or("?"),
        rb.class.as_deref().unwrap_or("?"),
        cell.outcome,
        cell.predicted.outcome,
        cell.keepalives.0,
        cell.keepalives.1,
        cell.upgrade_error.as_deref().unwrap_or("none"),
    ));
    let want = |site: &Site| {
        KINDS
            .iter()
            .chain(PAIR_KINDS.iter())
            .find(|(k, _, _)| *k == site.kind)
            .map(|(_, m, f)| short(m, f))
    };
    s.check(
        "both peers measured their NAT from the peer socket and announced its profile",
        ra.profile.is_some() && ra.profile == want(a) && rb.profile == want(b),
    );
    match expect {
        Expect::Punch => {
            s.check(
                "the profiles say a punch works, and it does (no birthday attempt)",
                cell.outcome == crate::matrix::Outcome::Punched
                    && ra.stat("birthday_attempts") + rb.stat("birthday_attempts") == 0,
            );
        }
        Expect::Birthday => birthday_checks(lab, &mut s, &cell, (a, b), (&ra, &rb))?,
    }
    s.check(
        "data crossed both ways",
        cell.received.0 > 0 && cell.received.1 > 0,
    );
    Ok(s)
}

/// N2: what a birthday pair must show, and what it measured: the path is
/// direct (punched), both sides ran their attempt and it found the path,
/// the symmetric side opened its sockets and kept one, pinned; the spray
/// datagrams, the time to direct, and the symmetric gateway's mappings
/// toward the other side (how many, which ports).
fn birthday_checks(
    lab: &Lab,
    s: &mut Scenario,
    cell: &crate::matrix::Cell,
    (a, b): (&Site, &Site),
    (ra, rb): (&crate::natrix::PeerReport, &crate::natrix::PeerReport),
) -> Result<()> {
    let (hard, easy, rh, re) = if a.kind == Kind::Symmetric {
        (a, b, ra, rb)
    } else {
        (b, a, rb, ra)
    };
    let stat = |r: &crate::natrix::PeerReport, k: &str| r.stat(k);
    s.measure(format!(
        "birthday attempts {}+{}, successes {}+{}, refused {}+{}; spray datagrams {} (A) + {} (B); \
         symmetric side: {} sockets opened, {} failed, {} path(s) pinned at the end; time to direct {}",
        stat(ra, "birthday_attempts"),
        stat(rb, "birthday_attempts"),
        stat(ra, "birthday_successes"),
        stat(rb, "birthday_successes"),
        stat(ra, "birthday_refused"),
        stat(rb, "birthday_refused"),
        stat(ra, "spray_datagrams"),
        stat(rb, "spray_datagrams"),
        rh.spray_stat("sockets_opened"),
        rh.spray_stat("socket_failures"),
        rh.spray_stat("pinned_paths"),
        cell.time_to_direct
            .map_or_else(|| "never".to_owned(), |t| format!("{t:.2} s")),
    ));
    let ports = conntrack_ports(lab, hard.edge(), easy, 1)?;
    // The other side's gateway next to its peer: the ports its probes went
    // to (the original direction's destination port).
    let probed = conntrack_ports(lab, easy.gateways.last(), hard, 0)?;
    let landed = probed.iter().filter(|p| ports.contains(p)).count();
    s.measure(format!(
        "the other side's gateway: {} UDP flows toward {}; {landed} of them on a port the symmetric side had mapped",
        probed.len(),
        hard.public_ip,
    ));
    match (ports.iter().min(), ports.iter().max()) {
        (Some(lo), Some(hi)) => s.measure(format!(
            "symmetric gateway: {} UDP mappings toward {}, on ports {lo}–{hi} ({} below 1024, {} above 60999)",
            ports.len(),
            easy.public_ip,
            ports.iter().filter(|&&p| p < 1024).count(),
            ports.iter().filter(|&&p| p > 60_999).count(),
        )),
        _ => s.measure(format!(
            "symmetric gateway: no UDP mapping toward {} left",
            easy.public_ip
        )),
    }
    // The other side's prober starts once the openings are out; in the
    // rare run where one of the symmetric side's new mappings takes the
    // very port the other side's keep-alives already go to (its announced
    // one), the path is found before that and no probe is needed.
    s.check(
        "no rendezvous punch can work: the symmetric side's birthday attempt punched the pair",
        cell.outcome == crate::matrix::Outcome::Punched
            && stat(rh, "birthday_attempts") >= 1
            && stat(rh, "birthday_successes") >= 1
            && (stat(re, "spray_datagrams") >= 1 || stat(re, "birthday_attempts") == 0),
    );
    s.check(
        "the symmetric side opened its birthday sockets (one mapping each) and kept one, pinned to the path",
        rh.spray_stat("sockets_opened") >= 2 && rh.spray_stat("pinned_paths") == 1,
    );
    s.check(
        "the path was direct within 5 s of opening",
        cell.time_to_direct.is_some_and(|t| t < 5.0),
    );
    Ok(())
}

/// The `nth` `dport` (0: the original direction's, 1: the reply's) of
/// each UDP conntrack entry on gateway `gw` whose original destination is
/// `other`'s public IP. On the outermost NAT the reply's destination port
/// is the external port the NAT gave the mapping.
fn conntrack_ports(
    lab: &Lab,
    gw: Option<&crate::topo::Gateway>,
    other: &Site,
    nth: usize,
) -> Result<Vec<u16>> {
    let Some(gw) = gw else {
        return Ok(Vec::new());
    };
    let dst = other.public_ip.to_string();
    let out = lab.exec(
        &gw.ns,
        &["conntrack", "-L", "-p", "udp", "--orig-dst", &dst],
    )?;
    Ok(out
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.strip_prefix("dport="))
                .nth(nth)
                .and_then(|p| p.parse().ok())
        })
        .collect())
}

/// `EIM/APDF` for a (mapping, filtering) in netcheck's words.
fn short(mapping: &str, filtering: &str) -> String {
    let word = |w: &str| match w {
        "endpoint-independent" => "EI",
        "address-dependent" => "AD",
        _ => "APD",
    };
    format!("{}M/{}F", word(mapping), word(filtering))
}
