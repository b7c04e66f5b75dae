//! `natrix netcheck` end to end: the built binary against real coordinators
//! on loopback.
//!
//! Every test starts its own coordinators (`natrix coordinator --listen
//! 127.0.0.1:0`, the dial string is the first line of its stdout) and kills
//! them when it ends. The two-IP test needs a second loopback address
//! (127.0.0.2, all of 127.0.0.0/8 on Linux) and the IPv6 test `::1`; each
//! skips itself where the address cannot be bound.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

mod common;
use common::*;

/// A running `natrix coordinator`, killed on drop.
struct Coordinator {
    child: Child,
    dial: String,
    _dir: TempDir,
}

impl Coordinator {
    /// Starts one listening on `listen` (port 0); `None` when that address
    /// cannot be bound on this host.
    fn start(listen: &str) -> Option<Coordinator> {
        Self::start_with(listen, &[])
    }

    /// Like [`start`](Self::start), with more `natrix coordinator` flags.
    fn start_with(listen: &str, extra: &[&str]) -> Option<Coordinator> {
        let addr: SocketAddr = listen.parse().expect("a socket address");
        if UdpSocket::bind(addr).is_err() {
            eprintln!("skipping: cannot bind {addr} on this host");
            return None;
        }
        let dir = TempDir::new("netcheck");
        let mut child = Command::new(NATRIX)
            .args([
                "coordinator",
                "--listen",
                listen,
                "--run-for",
                "30",
                "--key",
            ])
            .arg(dir.0.join("coordinator.key"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start natrix coordinator");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the dial string");
        let dial = line.trim().to_owned();
        let started = Coordinator {
            child,
            dial,
            _dir: dir,
        };
        if !(started.dial.starts_with("natrix1") && started.dial.contains('@')) {
            // It exited before printing one: another process took one of
            // its addresses after the check above (drop kills it).
            eprintln!("coordinator printed {:?}, not a dial string", started.dial);
            return None;
        }
        Some(started)
    }

    /// The coordinator's public key (the dial string before '@').
    fn key(&self) -> &str {
        self.dial.split('@').next().unwrap_or_default()
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `natrix netcheck` with `args`.
fn netcheck(args: &[&str]) -> Output {
    Command::new(NATRIX)
        .arg("netcheck")
        // Tests never send to the machine's real gateway.
        .arg("--no-port-mapping")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run natrix netcheck")
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Parses netcheck's JSON document (stdout must hold exactly one).
fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}):\n{}\nstderr:\n{}",
            stdout(out),
            stderr(out)
        )
    })
}

fn field<'a>(v: &'a Value, name: &str) -> &'a Value {
    v.get(name)
        .unwrap_or_else(|| panic!("field {name:?} missing in {v:#}"))
}

fn addr_field(v: &Value, name: &str) -> SocketAddr {
    let s = field(v, name)
        .as_str()
        .unwrap_or_else(|| panic!("{name} is not a string in {v:#}"));
    s.parse()
        .unwrap_or_else(|e| panic!("{name} = {s:?} is not a socket address: {e}"))
}

fn is_null_or(v: &Value, check: impl Fn(&Value) -> bool) -> bool {
    v.is_null() || check(v)
}

/// A measurement object: `status`, `value`, `detail` with their types, and
/// the status's consistency with the value. Returns the status.
fn check_measure<'a>(m: &'a Value, what: &str) -> &'a str {
    let status = field(m, "status")
        .as_str()
        .unwrap_or_else(|| panic!("{what}.status is not a string: {m:#}"));
    assert!(
        ["measured", "heuristic", "not_measured", "not_probed"].contains(&status),
        "{what}.status = {status:?}"
    );
    let value = field(m, "value");
    let detail = field(m, "detail");
    assert!(is_null_or(detail, Value::is_string), "{what}.detail: {m:#}");
    match status {
        "measured" => assert!(value.is_string(), "{what}: measured without a value: {m:#}"),
        "heuristic" => {
            assert!(
                value.is_string(),
                "{what}: heuristic without a value: {m:#}"
            );
            assert!(
                detail.is_string(),
                "{what}: heuristic without its basis: {m:#}"
            );
        }
        _ => {
            assert!(value.is_null(), "{what}: a value although {status}: {m:#}");
            assert!(
                detail.is_string(),
                "{what}: {status} without a reason: {m:#}"
            );
        }
    }
    status
}

/// Every documented field of the document, with its type; returns nothing,
/// panics with the document on the first problem.
fn check_document(doc: &Value) {
    assert_eq!(field(doc, "version").as_u64(), Some(1), "{doc:#}");
    assert!(field(doc, "ok").is_boolean());
    assert!(field(doc, "throwaway_identity").is_boolean());
    assert!(field(doc, "timeout_secs").as_f64().is_some_and(|t| t > 0.0));
    let interfaces = field(doc, "interfaces")
        .as_array()
        .expect("interfaces: array");
    for ip in interfaces {
        let s = ip.as_str().expect("interface: string");
        s.parse::<IpAddr>()
            .unwrap_or_else(|e| panic!("interface {s:?} is not an IP: {e}"));
    }
    let coordinators = field(doc, "coordinators")
        .as_array()
        .expect("coordinators: array");
    assert!(!coordinators.is_empty());
    for c in coordinators {
        assert!(field(c, "dial").as_str().is_some_and(|d| d.contains('@')));
        assert!(
            field(c, "key")
                .as_str()
                .is_some_and(|k| k.starts_with("natrix1"))
        );
        let reachable = field(c, "reachable").as_bool().expect("reachable: bool");
        assert!(is_null_or(field(c, "addr"), Value::is_string));
        assert!(is_null_or(field(c, "family"), |f| {
            f == "ipv4" || f == "ipv6"
        }));
        for ms in ["rtt_ms", "probe_rtt_ms"] {
            assert!(
                is_null_or(field(c, ms), |v| v.as_f64().is_some_and(|x| x >= 0.0)),
                "{ms}: {c:#}"
            );
        }
        assert!(is_null_or(field(c, "reflex"), Value::is_string));
        assert!(is_null_or(field(c, "error"), Value::is_string));
        if !reachable {
            assert!(
                field(c, "error").is_string(),
                "unreachable without a reason: {c:#}"
            );
            assert!(field(c, "reflex").is_null());
        }
    }
    for fam in ["ipv4", "ipv6"] {
        let f = field(doc, fam);
        if f.is_null() {
            continue;
        }
        assert!(
            field(f, "identity")
                .as_str()
                .is_some_and(|k| k.starts_with("natrix1"))
        );
        assert!(is_null_or(field(f, "bound"), Value::is_string));
        assert!(is_null_or(field(f, "error"), Value::is_string));
        for n in ["coordinators", "answered", "destinations"] {
            assert!(field(f, n).is_u64(), "{fam}.{n}: {f:#}");
        }
        assert!(is_null_or(field(f, "reflex"), Value::is_string));
        assert!(is_null_or(field(f, "reflex_is_local"), Value::is_boolean));
        assert!(is_null_or(field(f, "port_preserved"), Value::is_boolean));
        for m in ["nat_class", "mapping", "filtering", "port_allocation"] {
            check_measure(field(f, m), &format!("{fam}.{m}"));
        }
        if let Some(v) = field(field(f, "nat_class"), "value").as_str() {
            assert!(
                ["open", "cone", "symmetric", "unknown"].contains(&v),
                "{f:#}"
            );
        }
        if let Some(v) = field(field(f, "mapping"), "value").as_str() {
            assert!(
                ["endpoint-independent", "endpoint-dependent"].contains(&v),
                "{f:#}"
            );
        }
        // The test coordinators have no RFC 5780 alternate: STUN against
        // the first measures port allocation (new mappings from extra
        // sockets; on loopback the ports are kept), not filtering.
        assert_eq!(
            check_measure(field(f, "filtering"), "filtering"),
            "not_measured"
        );
        let allocation = field(f, "port_allocation");
        if check_measure(allocation, "port_allocation") == "measured" {
            assert_eq!(allocation["value"], "preserving", "{f:#}");
        }
    }
    // C8: the STUN section, against the first coordinator.
    let stun = field(doc, "stun");
    assert!(field(stun, "server").is_string(), "{stun:#}");
    assert!(field(stun, "other_address").is_null(), "{stun:#}");
    assert!(is_null_or(field(stun, "mapped"), Value::is_string));
    for m in [
        "nat",
        "mapping",
        "filtering",
        "port_allocation",
        "hairpin",
        "binding_lifetime",
    ] {
        check_measure(field(stun, m), m);
    }
    assert!(
        is_null_or(field(stun, "binding_lifetime_ms"), Value::is_u64),
        "{stun:#}"
    );
    assert_eq!(
        check_measure(field(stun, "filtering"), "filtering"),
        "not_measured",
        "no RFC 5780 without an alternate: {stun:#}"
    );
    assert!(field(stun, "nat_class").is_string());
    assert!(field(stun, "summary").is_string());
    let pm = field(doc, "port_mapping");
    for s in ["upnp_igd", "nat_pmp", "pcp"] {
        // Not asked (--no-port-mapping).
        assert_eq!(check_measure(field(pm, s), s), "not_probed");
    }
    assert!(
        field(doc, "summary")
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
}

#[test]
fn json_with_one_coordinator_has_every_field() {
    let c = Coordinator::start("127.0.0.1:0").expect("127.0.0.1 is always there");
    let out = netcheck(&["--coordinator", &c.dial, "--json"]);
    assert_eq!(code(&out), Some(0), "stderr:\n{}", stderr(&out));
    let doc = json(&out);
    check_document(&doc);
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["throwaway_identity"], true);
    assert!(doc["ipv6"].is_null(), "no IPv6 coordinator was given");

    let coordinators = doc["coordinators"].as_array().unwrap();
    assert_eq!(coordinators.len(), 1);
    let co = &coordinators[0];
    assert_eq!(co["dial"], c.dial.as_str());
    assert_eq!(co["key"], c.key());
    assert_eq!(co["family"], "ipv4");
    assert_eq!(co["reachable"], true);
    assert!(co["error"].is_null(), "{co:#}");
    assert!(co["rtt_ms"].is_number(), "session RTT missing: {co:#}");
    assert!(co["probe_rtt_ms"].is_number(), "{co:#}");
    let reflex = addr_field(co, "reflex");
    assert_eq!(reflex.ip(), "127.0.0.1".parse::<IpAddr>().unwrap());

    let v4 = &doc["ipv4"];
    let bound = addr_field(v4, "bound");
    assert!(bound.ip().is_unspecified() && bound.is_ipv4(), "{v4:#}");
    assert_eq!(addr_field(v4, "reflex"), reflex);
    assert_eq!(reflex.port(), bound.port(), "loopback has no NAT");
    assert_eq!(v4["coordinators"], 1);
    assert_eq!(v4["answered"], 1);
    assert_eq!(v4["destinations"], 1);
    assert_eq!(v4["reflex_is_local"], true);
    assert_eq!(v4["port_preserved"], true);
    assert!(v4["error"].is_null());
    // One coordinator IP: the class cannot be measured (C4), typed, not an error.
    assert_eq!(v4["nat_class"]["status"], "not_measured");
    assert!(
        v4["nat_class"]["detail"]
            .as_str()
            .unwrap()
            .contains("two coordinators at different IPs"),
        "{v4:#}"
    );
    // STUN against the coordinator saw this host's own address: no NAT, so
    // the mapping is the identity (endpoint-independent), measured (C8).
    assert_eq!(doc["stun"]["nat"]["value"], "no", "{:#}", doc["stun"]);
    assert_eq!(v4["mapping"]["status"], "measured", "{v4:#}");
    assert_eq!(v4["mapping"]["value"], "endpoint-independent");
}

#[test]
fn json_with_two_coordinator_ips_measures_the_class() {
    let a = Coordinator::start("127.0.0.1:0").expect("127.0.0.1 is always there");
    let Some(b) = Coordinator::start("127.0.0.2:0") else {
        return;
    };
    let out = netcheck(&["--coordinator", &a.dial, "--coordinator", &b.dial, "--json"]);
    assert_eq!(code(&out), Some(0), "stderr:\n{}", stderr(&out));
    let doc = json(&out);
    check_document(&doc);
    let coordinators = doc["coordinators"].as_array().unwrap();
    assert_eq!(coordinators.len(), 2);
    for co in coordinators {
        assert_eq!(co["reachable"], true, "{co:#}");
        assert!(co["rtt_ms"].is_number(), "{co:#}");
        assert!(co["reflex"].is_string(), "{co:#}");
    }
    let v4 = &doc["ipv4"];
    assert_eq!(v4["answered"], 2);
    assert_eq!(v4["destinations"], 2);
    assert_eq!(v4["nat_class"]["status"], "measured", "{v4:#}");
    // Loopback: the reflex is this host's own address at the bound port.
    assert_eq!(v4["nat_class"]["value"], "open", "{v4:#}");
    assert_eq!(v4["reflex_is_local"], true);
    // STUN's measurement (no NAT: the identity mapping) replaces the
    // two-coordinator heuristic.
    assert_eq!(v4["mapping"]["status"], "measured", "{v4:#}");
    assert_eq!(v4["mapping"]["value"], "endpoint-independent");
}

#[test]
fn ipv4_and_ipv6_coordinators_give_one_reflex_each() {
    let a = Coordinator::start("127.0.0.1:0").expect("127.0.0.1 is always there");
    let Some(b) = Coordinator::start("[::1]:0") else {
        return;
    };
    let out = netcheck(&["--coordinator", &a.dial, "--coordinator", &b.dial, "--json"]);
    assert_eq!(code(&out), Some(0), "stderr:\n{}", stderr(&out));
    let doc = json(&out);
    check_document(&doc);
    let v4 = &doc["ipv4"];
    let v6 = &doc["ipv6"];
    assert!(addr_field(v4, "bound").is_ipv4(), "{v4:#}");
    assert!(addr_field(v6, "bound").is_ipv6(), "{v6:#}");
    assert!(addr_field(v4, "reflex").is_ipv4(), "{v4:#}");
    assert_eq!(
        addr_field(v6, "reflex").ip(),
        "::1".parse::<IpAddr>().unwrap(),
        "{v6:#}"
    );
    // One coordinator per family: no class in either.
    assert_eq!(v4["nat_class"]["status"], "not_measured");
    assert_eq!(v6["nat_class"]["status"], "not_measured");
    assert_eq!(doc["coordinators"][1]["family"], "ipv6");
}

#[test]
fn human_output_ends_with_the_summary() {
    let c = Coordinator::start("127.0.0.1:0").expect("127.0.0.1 is always there");
    let out = netcheck(&["--coordinator", &c.dial]);
    assert_eq!(code(&out), Some(0), "stderr:\n{}", stderr(&out));
    let text = stdout(&out);
    for key in [
        "reachable:",
        "latency:",
        "reflex:",
        "bound socket:",
        "NAT class:",
        "mapping:",
        "filtering:",
        "port allocation:",
        "interfaces:",
        "not probed",
    ] {
        assert!(text.contains(key), "{key:?} missing in:\n{text}");
    }
    assert!(text.contains("not measured: needs two coordinators at different IPs"));
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("summary: "),
        "last line {last:?} in:\n{text}"
    );
    assert!(last.contains("1 of 1 coordinators answered"), "{last}");
    // Keys line up: every "key: value" row's value starts in one column.
    let columns: std::collections::BTreeSet<usize> = text
        .lines()
        .filter(|l| l.starts_with("  "))
        .filter_map(|l| {
            let colon = l.find(": ")?;
            let rest = &l[colon + 1..];
            Some(colon + 1 + rest.len() - rest.trim_start().len())
        })
        .collect();
    assert_eq!(columns.len(), 1, "values not aligned:\n{text}");
}

#[test]
fn unanswered_coordinator_exits_4_with_a_report() {
    // A real key, at a UDP port where nobody answers (held open by the test).
    let c = Coordinator::start("127.0.0.1:0").expect("127.0.0.1 is always there");
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind a silent socket");
    let dial = format!("{}@{}", c.key(), silent.local_addr().unwrap());

    let out = netcheck(&["--coordinator", &dial, "--timeout", "1", "--json"]);
    assert_eq!(code(&out), Some(4), "stderr:\n{}", stderr(&out));
    let doc = json(&out);
    check_document(&doc);
    assert_eq!(doc["ok"], false);
    let co = &doc["coordinators"][0];
    assert_eq!(co["reachable"], false);
    assert!(co["rtt_ms"].is_null() && co["reflex"].is_null(), "{co:#}");
    assert!(
        co["error"].as_str().unwrap().contains("no session"),
        "{co:#}"
    );
    assert_eq!(doc["ipv4"]["answered"], 0);
    assert!(doc["ipv4"]["reflex"].is_null());
    assert_eq!(doc["ipv4"]["nat_class"]["status"], "not_measured");
    assert!(
        stderr(&out).contains("no coordinator answered"),
        "stderr:\n{}",
        stderr(&out)
    );

    let out = netcheck(&["--coordinator", &dial, "--timeout", "1"]);
    assert_eq!(code(&out), Some(4), "stderr:\n{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("reachable:") && text.contains(" no"),
        "{text}"
    );
    assert!(text.contains("summary: No coordinator answered"), "{text}");
}

#[test]
fn one_answering_coordinator_is_enough() {
    let c = Coordinator::start("127.0.0.1:0").expect("127.0.0.1 is always there");
    // Another coordinator's key (one key twice in a family is refused), at
    // a UDP port where nobody answers.
    let other = Coordinator::start("127.0.0.1:0").expect("127.0.0.1 is always there");
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind a silent socket");
    let dead = format!("{}@{}", other.key(), silent.local_addr().unwrap());
    let out = netcheck(&[
        "--coordinator",
        &c.dial,
        "--coordinator",
        &dead,
        "--timeout",
        "1",
        "--json",
    ]);
    assert_eq!(code(&out), Some(0), "stderr:\n{}", stderr(&out));
    let doc = json(&out);
    check_document(&doc);
    assert_eq!(doc["coordinators"][0]["reachable"], true);
    assert_eq!(doc["coordinators"][1]["reachable"], false);
    assert_eq!(doc["ipv4"]["answered"], 1);
}

#[test]
fn bad_dial_string_is_a_usage_error() {
    let out = netcheck(&["--coordinator", "not-a-dial-string"]);
    assert_eq!(code(&out), Some(2));
    assert!(stderr(&out).contains("bad dial string"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty(), "no report for bad arguments");

    let out = netcheck(&[]);
    assert_eq!(code(&out), Some(2), "--coordinator is required");

    let c = Coordinator::start("127.0.0.1:0").expect("127.0.0.1 is always there");
    let out = netcheck(&["--coordinator", &c.dial, "--timeout", "0"]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
}

/// C8 end to end: `natrix coordinator --stun-alternate` serves RFC 5780, and
/// `natrix netcheck --stun` (no coordinator needed) measures against it:
/// on loopback, no NAT and no filtering.
#[test]
fn c8_netcheck_measures_filtering_against_a_coordinator_with_an_alternate() {
    if UdpSocket::bind("127.0.0.2:0").is_err() {
        eprintln!("skipping: no 127.0.0.2 on this host");
        return;
    }
    // The coordinator binds four addresses (both IPs × both ports), and
    // tests running beside this one take ephemeral ports too: find a pair
    // free on both IPs, and try again with fresh ports when another
    // process takes one before the coordinator binds it.
    let (listen, alt, _c) = (0..20)
        .find_map(|_| {
            let (primary, alt) = free_port_pair()?;
            let listen = primary.to_string();
            let c = Coordinator::start_with(&listen, &["--stun-alternate", &alt.to_string()])?;
            Some((listen, alt, c))
        })
        .expect("a coordinator on 127.0.0.1 and 127.0.0.2 within 20 tries");
    let out = netcheck(&["--stun", &listen, "--json"]);
    assert_eq!(code(&out), Some(0), "stderr:\n{}", stderr(&out));
    let doc = json(&out);
    let stun = &doc["stun"];
    assert_eq!(stun["server"], listen.as_str());
    assert_eq!(stun["other_address"], alt.to_string().as_str(), "{stun:#}");
    assert_eq!(stun["nat"]["value"], "no", "{stun:#}");
    assert_eq!(stun["mapping"]["value"], "endpoint-independent", "{stun:#}");
    assert_eq!(
        stun["filtering"]["value"], "endpoint-independent",
        "{stun:#}"
    );
    assert_eq!(stun["nat_class"], "open");
    assert!(doc["coordinators"].as_array().is_some_and(Vec::is_empty));
    assert_eq!(doc["ok"], true);
}

/// C8 `--lifetime`: opt-in. On loopback there is no NAT, so the binding
/// lifetime is not measured, with the reason, and at once (no idle waits);
/// without the flag the report says how to ask for it.
#[test]
fn c8_netcheck_lifetime_without_nat_says_no_nat() {
    let c = Coordinator::start("127.0.0.1:0").expect("127.0.0.1 is always there");
    let started = std::time::Instant::now();
    let out = netcheck(&["--coordinator", &c.dial, "--lifetime", "600", "--json"]);
    assert_eq!(code(&out), Some(0), "stderr:\n{}", stderr(&out));
    // No idle wait of 600 s happened (generous: a whole run takes seconds).
    assert!(started.elapsed() < std::time::Duration::from_secs(300));
    let doc = json(&out);
    check_document(&doc);
    let stun = &doc["stun"];
    assert_eq!(stun["nat"]["value"], "no", "{stun:#}");
    let lifetime = &stun["binding_lifetime"];
    assert_eq!(check_measure(lifetime, "binding_lifetime"), "not_measured");
    assert_eq!(lifetime["detail"], "there is no NAT", "{stun:#}");
    assert!(stun["binding_lifetime_ms"].is_null(), "{stun:#}");

    let out = netcheck(&["--coordinator", &c.dial, "--lifetime", "600"]);
    assert_eq!(code(&out), Some(0), "stderr:\n{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.lines().any(
            |l| l.contains("binding lifetime:") && l.ends_with("not measured: there is no NAT")
        ),
        "{text}"
    );

    let out = netcheck(&["--coordinator", &c.dial, "--json"]);
    assert_eq!(code(&out), Some(0), "stderr:\n{}", stderr(&out));
    let doc = json(&out);
    let detail = doc["stun"]["binding_lifetime"]["detail"]
        .as_str()
        .unwrap_or_default();
    assert!(detail.contains("--lifetime"), "{detail}");
}

#[test]
fn c8_netcheck_lifetime_flag_is_checked() {
    // Zero, not a number, or with --no-stun: usage errors, before anything runs.
    for args in [
        &["--stun", "127.0.0.1:9", "--lifetime", "0"][..],
        &["--stun", "127.0.0.1:9", "--lifetime", "soon"],
        &[
            "--coordinator",
            "natrix1x@127.0.0.1:9",
            "--no-stun",
            "--lifetime",
            "60",
        ],
    ] {
        let out = netcheck(args);
        assert_eq!(code(&out), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stdout(&out).is_empty(), "{args:?}");
        assert!(stderr(&out).contains("--lifetime"), "{}", stderr(&out));
    }
}
