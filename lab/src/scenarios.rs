//! Failures on real NAT that the simulator cannot fake convincingly. Each
//! scenario gets its own two sites (and the restart its own coordinators),
//! so they run at the same time:
//!
//! - **conntrack flush**: both gateways forget every mapping
//!   (`conntrack -F`) in the middle of a direct connection;
//! - **rebinding** (S6): A's gateway maps A to another public port; the
//!   connection follows A to it;
//! - **blackhole** (S4): an nft rule in the internet drops the direct path;
//!   the connection falls back to the relay, and moves back once the rule
//!   is gone;
//! - **coordinator restart**: both coordinators are killed and restarted;
//!   the direct path carries on meanwhile and both peers register again.

use std::time::{Duration, Instant};

use crate::kinds::{Kind, PEER_PORT};
use crate::natrix::{Coordinator, Natrix, PeerReport};
use crate::netns::{Lab, interrupted};
use crate::proc::Proc;
use crate::topo::{Internet, Site, flush_conntrack, load_rules};
use crate::{LabError, Result};

/// One scenario's verdict.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Its name.
    pub name: String,
    /// The sites' kinds (A, B), for the scenarios between two sites.
    pub kinds: Option<(crate::kinds::Kind, crate::kinds::Kind)>,
    /// Each check and whether it held.
    pub checks: Vec<(String, bool)>,
    /// What was measured.
    pub measured: Vec<String>,
}

impl Scenario {
    fn new(name: &'static str, a: &Site, b: &Site) -> Scenario {
        Scenario {
            kinds: Some((a.kind, b.kind)),
            ..Scenario::named(name)
        }
    }

    /// A scenario that is not between two sites.
    #[must_use]
    pub fn named(name: impl Into<String>) -> Scenario {
        Scenario {
            name: name.into(),
            kinds: None,
            checks: Vec::new(),
            measured: Vec::new(),
        }
    }

    pub(crate) fn check(&mut self, what: impl Into<String>, ok: bool) {
        self.checks.push((what.into(), ok));
    }

    pub(crate) fn measure(&mut self, what: impl Into<String>) {
        self.measured.push(what.into());
    }

    /// Whether every check held.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|(_, ok)| *ok)
    }
}

/// A connected pair: B listening, A connected, both sending.
struct Pair {
    a: Proc,
    b: Proc,
}

impl Pair {
    /// Starts the pair and waits until A's path is direct and datagrams
    /// cross it both ways.
    fn direct(nx: &Natrix, tag: &str, a: &Site, b: &Site, coordinators: &[&str]) -> Result<Pair> {
        let (mut pa, pb) = nx.start_pair(tag, a, b, coordinators)?;
        pa.wait_log("path: direct to", Duration::from_secs(20))?;
        let at = Instant::now();
        let pbr = &pb;
        pa.wait_for(
            "datagrams both ways on the direct path",
            Duration::from_secs(10),
            |p| p.received_since(at) >= 5 && pbr.received_since(at) >= 5,
        )?;
        Ok(Pair { a: pa, b: pb })
    }

    /// Ends both (A's stdin first) and reads their reports.
    fn finish(mut self, nx: &Natrix) -> Result<(PeerReport, PeerReport)> {
        self.a.stop_feeding();
        self.a.wait_exit(Duration::from_secs(10))?;
        self.b.stop_feeding();
        self.b.wait_exit(Duration::from_secs(10))?;
        Ok((nx.report(&self.a.name)?, nx.report(&self.b.name)?))
    }

    /// Waits `d`, failing early if either peer exits.
    fn hold(&mut self, d: Duration) -> Result<()> {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if interrupted() {
                return Err(LabError::Interrupted);
            }
            for p in [&mut self.a, &mut self.b] {
                if !p.running() {
                    return Err(p.failure("exited during the scenario"));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

/// The longest gap between consecutive datagrams received in `[from, to]`.
fn longest_gap(p: &Proc, from: Instant, to: Instant) -> Duration {
    let times: Vec<Instant> = p
        .received()
        .into_iter()
        .map(|(t, _)| t)
        .filter(|t| *t >= from && *t <= to)
        .collect();
    let mut worst = Duration::ZERO;
    let mut prev = from;
    for t in times.iter().copied().chain(std::iter::once(to)) {
        worst = worst.max(t.saturating_duration_since(prev));
        prev = t;
    }
    worst
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// The path's dead-after (S4 default): a gap shorter than this means the
/// connection never fell back.
const DEAD_AFTER: Duration = Duration::from_millis(6500);

/// Both gateways' conntrack tables are flushed mid-connection: the direct
/// path must carry on (the next outbound datagram makes the mapping again,
/// on the same port) without falling back to the relay.
///
/// # Errors
/// Setup failures, a hung peer.
pub fn conntrack_flush(
    lab: &Lab,
    nx: &Natrix,
    a: &Site,
    b: &Site,
    coordinators: &[&str],
) -> Result<Scenario> {
    let mut s = Scenario::new("conntrack flush", a, b);
    let mut pair = Pair::direct(nx, "flush", a, b, coordinators)?;
    pair.hold(Duration::from_secs(1))?;
    let t0 = Instant::now();
    for g in a.gateways.iter().chain(&b.gateways) {
        flush_conntrack(lab, &g.ns)?;
    }
    pair.hold(Duration::from_secs(5))?;
    let t1 = Instant::now();
    let gaps = (longest_gap(&pair.a, t0, t1), longest_gap(&pair.b, t0, t1));
    s.measure(format!(
        "longest gap in datagrams after the flush: {} at A, {} at B",
        ms(gaps.0),
        ms(gaps.1)
    ));
    let log_a = pair.a.log_text();
    let (ra, rb) = pair.finish(nx)?;
    s.check(
        "datagrams kept crossing both ways (gaps < 1 s)",
        gaps.0 < Duration::from_secs(1) && gaps.1 < Duration::from_secs(1),
    );
    s.check(
        "the connection never left the direct path",
        !log_a.contains("stopped answering") && ra.final_kind.as_deref() == Some("direct"),
    );
    s.check("both ends exited cleanly", ra.exit == 0 && rb.exit == 0);
    Ok(s)
}

/// How a connection got through a disruption of its direct path.
struct Recovery {
    /// A fell back to the relay ("stopped answering"), and when.
    fell: Option<Duration>,
    /// B's log showed `line` (direct again), and when.
    back: Option<Duration>,
}

/// Waits (from `t0`) for A to fall back to the relay, then calls `heal`,
/// then waits up to `patience` for B's log to satisfy `back` (direct again).
fn fall_back_and_return(
    pair: &mut Pair,
    t0: Instant,
    heal: impl FnOnce(&Pair) -> Result<()>,
    back: impl Fn(&str) -> bool,
    patience: Duration,
) -> Result<Recovery> {
    let fell = pair
        .a
        .wait_log("the direct path stopped answering", Duration::from_secs(15))
        .is_ok()
        .then(|| t0.elapsed());
    heal(pair)?;
    let pbr = &pair.b;
    let back = pair
        .a
        .wait_for("B direct again", patience, |_| back(&pbr.log_text()))
        .is_ok()
        .then(|| t0.elapsed());
    Ok(Recovery { fell, back })
}

fn fell_in_time(r: &Recovery) -> bool {
    r.fell
        .is_some_and(|d| d <= DEAD_AFTER + Duration::from_secs(1))
}

fn opt_ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "never".to_owned(), ms)
}

/// A's gateway starts mapping A to another public port (its mapping rule
/// changes and its conntrack table is flushed).
///
/// - B open: B's end must follow A to the new address (S6: the session
///   moves on the first authenticated datagram from it) and stay direct.
/// - B behind a port-restricted NAT: B's NAT drops A's datagrams from the
///   new port (B never sent to it), so the direct path dies; the connection
///   must fall back to the relay within dead-after and come back direct to
///   A's new address (A notices its reflex changed, C7, reclassifies and
///   announces it; the upgrade punches again).
///
/// # Errors
/// Setup failures, a hung peer.
pub fn rebinding(
    lab: &Lab,
    nx: &Natrix,
    a: &Site,
    b: &Site,
    coordinators: &[&str],
) -> Result<Scenario> {
    let filtered = b.kind != Kind::Open;
    let (name, tag) = if filtered {
        ("rebinding behind a filtering NAT", "rebind-filtered")
    } else {
        ("rebinding", "rebind")
    };
    let mut s = Scenario::new(name, a, b);
    let gw = a
        .edge()
        .ok_or_else(|| LabError::Setup("rebinding needs A behind a gateway".into()))?;
    let mut pair = Pair::direct(nx, tag, a, b, coordinators)?;
    pair.hold(Duration::from_secs(1))?;
    let new_port = PEER_PORT + 1;
    let want = format!("{}:{new_port}", gw.wan_ip);
    let line = format!("path: direct to {want}");
    let t0 = Instant::now();
    load_rules(lab, gw, new_port)?;
    flush_conntrack(lab, &gw.ns)?;
    let recovery = if filtered {
        fall_back_and_return(
            &mut pair,
            t0,
            |_| Ok(()),
            |log| log.contains(&line),
            Duration::from_secs(30),
        )?
    } else {
        let back = pair.b.wait_log(&line, Duration::from_secs(10)).is_ok();
        Recovery {
            fell: None,
            back: back.then(|| t0.elapsed()),
        }
    };
    pair.hold(Duration::from_secs(2))?;
    let t1 = Instant::now();
    let gaps = (longest_gap(&pair.a, t0, t1), longest_gap(&pair.b, t0, t1));
    let after = t1 - Duration::from_millis(800);
    let direct_again = (pair.a.received_since(after), pair.b.received_since(after));
    s.measure(format!(
        "{}B direct to A's new address {want} {} after the change; longest gap: {} at A, {} at B",
        if filtered {
            format!(
                "fell back to the relay {} after the change; ",
                opt_ms(recovery.fell)
            )
        } else {
            String::new()
        },
        opt_ms(recovery.back),
        ms(gaps.0),
        ms(gaps.1)
    ));
    let log_b = pair.b.log_text();
    let (ra, rb) = pair.finish(nx)?;
    let direct =
        ra.final_kind.as_deref() == Some("direct") && rb.final_kind.as_deref() == Some("direct");
    if filtered {
        s.check(
            "the connection fell back to the relay within dead-after + 1 s",
            fell_in_time(&recovery),
        );
        s.check(
            format!("then went direct again, to A's new address {want}, within 30 s"),
            recovery.back.is_some() && direct,
        );
        s.check(
            "datagrams kept crossing both ways (gaps < dead-after + 1 s)",
            gaps.0.max(gaps.1) < DEAD_AFTER + Duration::from_secs(1),
        );
    } else {
        s.check(
            format!(
                "B's connection moved to A's new address {want} (\"the peer's address changed\")"
            ),
            recovery.back.is_some() && log_b.contains("the peer's address changed"),
        );
        s.check("both ends stayed direct", direct);
        s.check(
            "datagrams kept crossing both ways (gaps < 1 s)",
            gaps.0.max(gaps.1) < Duration::from_secs(1),
        );
    }
    s.check(
        "datagrams crossed both ways at the end",
        direct_again.0 > 0 && direct_again.1 > 0,
    );
    // Restore the usual mapping for anything that runs after.
    load_rules(lab, gw, PEER_PORT)?;
    Ok(s)
}

/// An nft rule in the internet namespace drops everything between the two
/// sites' public addresses: the connection must fall back to the relay
/// within dead-after, carry data there, and move back to a direct path
/// once the rule is removed.
///
/// # Errors
/// Setup failures, a hung peer.
pub fn blackhole(
    lab: &Lab,
    nx: &Natrix,
    internet: &Internet,
    a: &Site,
    b: &Site,
    coordinators: &[&str],
) -> Result<Scenario> {
    let mut s = Scenario::new("blackhole", a, b);
    let mut pair = Pair::direct(nx, "blackhole", a, b, coordinators)?;
    pair.hold(Duration::from_secs(1))?;
    let (ia, ib) = (a.public_ip, b.public_ip);
    let rules = format!(
        "table inet natrix_blackhole {{\n  chain forward {{ type filter hook forward priority -10; policy accept;\n    ip saddr {ia} ip daddr {ib} drop\n    ip saddr {ib} ip daddr {ia} drop\n  }}\n}}\n"
    );
    let t0 = Instant::now();
    lab.nft(&internet.ns, "blackhole", &rules)?;
    // B's log already shows one direct line; the heal must add another.
    let before = pair.b.log_text().matches("path: direct to").count();
    let mut on_relay = (0, 0);
    let mut lifted = None;
    let heal = |p: &Pair| {
        // Two seconds on the relay, then lift the rule.
        std::thread::sleep(Duration::from_secs(2));
        let since = Instant::now() - Duration::from_millis(1500);
        on_relay = (p.a.received_since(since), p.b.received_since(since));
        lab.exec(
            &internet.ns,
            &["nft", "delete", "table", "inet", "natrix_blackhole"],
        )?;
        lifted = Some(t0.elapsed());
        Ok(())
    };
    let recovery = fall_back_and_return(
        &mut pair,
        t0,
        heal,
        |log| log.matches("path: direct to").count() > before,
        Duration::from_secs(40),
    )?;
    pair.hold(Duration::from_secs(1))?;
    let after = Instant::now() - Duration::from_millis(800);
    let direct_again = (pair.a.received_since(after), pair.b.received_since(after));
    let back_after_lift = recovery.back.zip(lifted).map(|(b, l)| b.saturating_sub(l));
    s.measure(format!(
        "fell back to the relay {} after the blackhole (dead-after {}); direct again {} after it was lifted",
        opt_ms(recovery.fell),
        ms(DEAD_AFTER),
        opt_ms(back_after_lift)
    ));
    let (ra, rb) = pair.finish(nx)?;
    s.check(
        "the connection fell back to the relay within dead-after + 1 s",
        fell_in_time(&recovery),
    );
    s.check(
        "the relay carried datagrams both ways during the blackhole",
        on_relay.0 > 0 && on_relay.1 > 0,
    );
    s.check(
        "the connection moved back to a direct path after the rule was removed",
        recovery.back.is_some() && ra.final_kind.as_deref() == Some("direct"),
    );
    s.check(
        "datagrams crossed both ways after that",
        direct_again.0 > 0 && direct_again.1 > 0,
    );
    s.check("both ends exited cleanly", ra.exit == 0 && rb.exit == 0);
    Ok(s)
}

/// Both coordinators are killed mid-connection and restarted (same keys,
/// same addresses): the direct path carries on meanwhile, and both peers'
/// sessions with the restarted coordinators come back.
///
/// # Errors
/// Setup failures, a hung peer.
pub fn coordinator_restart(
    nx: &Natrix,
    internet: &Internet,
    a: &Site,
    b: &Site,
    coordinators: &mut [Coordinator],
) -> Result<Scenario> {
    let mut s = Scenario::new("coordinator restart", a, b);
    // Debug logs show the coordinator sessions coming back.
    let nx = Natrix {
        verbosity: "-vv".to_owned(),
        ..nx.clone()
    };
    let dials: Vec<String> = coordinators.iter().map(|c| c.dial.clone()).collect();
    let dials: Vec<&str> = dials.iter().map(String::as_str).collect();
    let mut pair = Pair::direct(&nx, "restart", a, b, &dials)?;
    pair.hold(Duration::from_secs(1))?;
    // Sessions with the coordinators (not with the other peer) coming up.
    let addrs: Vec<String> = coordinators.iter().map(|c| c.addr.to_string()).collect();
    let ups = |p: &Proc| {
        p.log_text()
            .lines()
            .filter(|l| l.contains("session up") && addrs.iter().any(|a| l.contains(a.as_str())))
            .count()
    };
    let before = (ups(&pair.a), ups(&pair.b));
    let t0 = Instant::now();
    for c in coordinators.iter_mut() {
        c.proc.kill();
    }
    pair.hold(Duration::from_secs(3))?;
    for c in coordinators.iter_mut() {
        let name = format!("{}-restarted", c.proc.name);
        c.proc = nx.start_coordinator(&internet.ns, &name, &c.key_file, c.addr)?;
    }
    let restarted = Instant::now();
    // A session is declared dead after 30 s of silence, then redialled.
    let want = coordinators.len();
    let back_a = pair
        .a
        .wait_for(
            "sessions with the restarted coordinators",
            Duration::from_secs(60),
            |p| ups(p) >= before.0 + want,
        )
        .is_ok();
    let pbr = &pair.b;
    let back_b = pair
        .a
        .wait_for(
            "B's sessions with the restarted coordinators",
            Duration::from_secs(20),
            |_| ups(pbr) >= before.1 + want,
        )
        .is_ok();
    let back_after = restarted.elapsed();
    let t1 = Instant::now();
    let gaps = (longest_gap(&pair.a, t0, t1), longest_gap(&pair.b, t0, t1));
    s.measure(format!(
        "coordinators down 3 s; both peers' sessions back {} after the restart; longest datagram gap meanwhile: {} at A, {} at B",
        ms(back_after),
        ms(gaps.0),
        ms(gaps.1)
    ));
    let log_a = pair.a.log_text();
    let (ra, rb) = pair.finish(&nx)?;
    s.check(
        "the direct path carried datagrams throughout (gaps < 1 s)",
        gaps.0 < Duration::from_secs(1) && gaps.1 < Duration::from_secs(1),
    );
    s.check(
        "the connection stayed direct",
        !log_a.contains("stopped answering") && ra.final_kind.as_deref() == Some("direct"),
    );
    s.check(
        "both peers registered with the restarted coordinators again",
        back_a && back_b,
    );
    s.check("both ends exited cleanly", ra.exit == 0 && rb.exit == 0);
    Ok(s)
}

/// Two peers behind `masquerade` gateways with no firewall: at the shared
/// fire time each side's keep-alive can reach the other gateway before that
/// gateway's own peer has sent; the gateway's conntrack keeps the stray
/// datagram (it reached the gateway's own stack) and so claims the tuple
/// the local peer's outbound datagram needs, and masquerade gives that
/// outbound another port. The other side's filter never saw that port, so
/// the punch fails and the connection stays on the relay. The simulator,
/// whose NATs have no such claim and whose links have 10 ms latency,
/// predicts a punch: the documented difference (docs/nat-matrix.md). The
/// scenario asserts the real outcome, the mechanism (a gateway's conntrack
/// shows its peer's flow to the other peer on another public port) and that
/// the relay carries the data.
///
/// # Errors
/// Setup failures, a hung peer.
pub fn simultaneous_open_race(
    lab: &Lab,
    nx: &Natrix,
    a: &Site,
    b: &Site,
    coordinators: &[&str],
) -> Result<Scenario> {
    let mut s = Scenario::new("simultaneous open through bare masquerade", a, b);
    let cell = crate::matrix::run_cell(nx, a, b, coordinators)?;
    // The mechanism: in a gateway, the local peer's flow to the other
    // peer left from another public port than PEER_PORT (the tuple was
    // taken by the other side's stray keep-alive).
    let mut moved = Vec::new();
    for (label, site, peer) in [("A", a, b), ("B", b, a)] {
        let Some(gw) = site.edge() else { continue };
        let table = lab.exec(
            &gw.ns,
            &[
                "conntrack",
                "-L",
                "-p",
                "udp",
                "--orig-src",
                &site.peer_ip.to_string(),
                "--orig-dst",
                &peer.public_ip.to_string(),
            ],
        )?;
        for line in table.lines() {
            // The reply half's `dport` is the public port the flow got.
            let ports: Vec<&str> = line
                .split_whitespace()
                .filter_map(|w| w.strip_prefix("dport="))
                .collect();
            if let Some(p) = ports.get(1).filter(|p| **p != PEER_PORT.to_string()) {
                moved.push(format!("{label}'s gateway gave the flow port {p}"));
            }
        }
    }
    s.measure(format!(
        "outcome {} (simulator: {}); keep-alives {}+{}; {}",
        cell.outcome,
        cell.predicted.outcome,
        cell.keepalives.0,
        cell.keepalives.1,
        if moved.is_empty() {
            "no flow moved off its port".to_owned()
        } else {
            moved.join(", ")
        }
    ));
    s.check(
        "the punch fails and the connection stays relayed (the simulator predicts punched)",
        cell.outcome == crate::matrix::Outcome::Relayed,
    );
    s.check(
        format!("a gateway gave its peer's flow to the other peer a port other than {PEER_PORT}"),
        !moved.is_empty(),
    );
    s.check(
        "the relay carried datagrams both ways",
        cell.received.0 > 0 && cell.received.1 > 0,
    );
    Ok(s)
}
