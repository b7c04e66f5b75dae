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
//! Then the pair decision with NAT profiles (C8), on the same sites: peers
//! (`listen`/`connect` with the natrix coordinator and `--stun-server`
//! coturn, which also measures their behaviour from the peer's own socket)
//! announce their mapping and filtering; a port-restricted cone and a
//! symmetric NAT then skip the punch the baseline runs and loses (the
//! matrix's relay cell), and a restricted cone with a symmetric NAT still
//! punches.

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
    for (n, (kind, _, _)) in KINDS.iter().enumerate() {
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

/// The pairs of [`KINDS`] (by index) checked with profiles, and whether a
/// punch must run: port-restricted × symmetric (skipped), restricted ×
/// symmetric (punched).
const PROFILE_PAIRS: [(usize, usize, bool); 2] = [(2, 4, false), (1, 4, true)];

/// The C8 pair decision on real NAT: each pair of [`PROFILE_PAIRS`] in
/// turn (sites are reused), with its NAT state flushed first.
fn profile_pairs(lab: &Lab, nx: &Natrix, sites: &[Site], dial: &str) -> Vec<Result<Scenario>> {
    let nx = Natrix {
        peer_flags: vec!["--stun-server".into(), format!("{}:3478", COTURN[0])],
        ..nx.clone()
    };
    PROFILE_PAIRS
        .iter()
        .filter_map(|&(a, b, punch)| Some((sites.get(a)?, sites.get(b)?, punch)))
        .map(|(a, b, punch)| profile_pair(lab, &nx, a, b, dial, punch))
        .collect()
}

fn profile_pair(
    lab: &Lab,
    nx: &Natrix,
    a: &Site,
    b: &Site,
    dial: &str,
    punch: bool,
) -> Result<Scenario> {
    let mut s = Scenario::named(format!(
        "pair decision with NAT profiles: {} x {} (C8)",
        a.kind, b.kind
    ));
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
            .find(|(k, _, _)| *k == site.kind)
            .map(|(_, m, f)| short(m, f))
    };
    s.check(
        "both peers measured their NAT from the peer socket and announced its profile",
        ra.profile.is_some() && ra.profile == want(a) && rb.profile == want(b),
    );
    if punch {
        s.check(
            "the profiles say a punch works, and it does",
            cell.outcome == crate::matrix::Outcome::Punched,
        );
    } else {
        s.check(
            "the profiles skip the punch: relayed at once, no keep-alive sent",
            cell.outcome == crate::matrix::Outcome::Relayed
                && cell.keepalives == (0, 0)
                && cell
                    .upgrade_error
                    .as_deref()
                    .is_some_and(|e| e.contains("skips")),
        );
    }
    s.check(
        "data crossed both ways",
        cell.received.0 > 0 && cell.received.1 > 0,
    );
    Ok(s)
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
