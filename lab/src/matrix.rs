//! The NAT matrix on real NAT: every ordered pair of kinds, each peer
//! classified through its gateways by two coordinators, `natrix connect`
//! from A to B's `natrix listen`, datagrams both ways every 20 ms, and the
//! outcome compared with the simulator's for the matching presets.
//!
//! Cells run in rounds: site A of kind `k` meets site B of kind
//! `(k + r) mod n` in round `r`, so the eight cells of a round use
//! disjoint gateways and run at once. Between rounds every gateway's
//! conntrack table (and learned-address set) is emptied.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use natrix_proto::NatClass;
use natrix_session::path::PathKind;
use natrix_sim::scenario::{Outcome as SimOutcome, PairScenario, run_connection};

use crate::kinds::Kind;
use crate::natrix::{Natrix, PeerReport};
use crate::netns::{Lab, interrupted};
use crate::topo::Site;
use crate::{LabError, Result};

/// How a connection ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Direct, without a punch (the pair matrix said Direct; path pings
    /// opened the way).
    Direct,
    /// Direct after a punch (keep-alives sent, a punch confirmed).
    Punched,
    /// On the coordinator's relay.
    Relayed,
}

impl Outcome {
    /// A short name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Direct => "direct",
            Outcome::Punched => "punched",
            Outcome::Relayed => "relayed",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the simulator predicts for a pair of kinds (their presets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prediction {
    /// The outcome.
    pub outcome: Outcome,
    /// The classes A and B find.
    pub classes: (NatClass, NatClass),
}

/// The simulator's prediction for `a` × `b`: the pair scenario (seed 1)
/// tells a punch from a Direct verdict, the connection run (seed 1) whether
/// the connection ends direct.
#[must_use]
pub fn predict(a: Kind, b: Kind) -> Prediction {
    let (pa, pb) = (a.preset(), b.preset());
    let pair = PairScenario::new(pa, pb).run(1);
    let conn = run_connection(pa, pb, 1, Duration::from_secs(20));
    let outcome = match conn.kinds.0 {
        Some(PathKind::Direct) if pair.outcome == SimOutcome::Punched => Outcome::Punched,
        Some(PathKind::Direct) => Outcome::Direct,
        _ => Outcome::Relayed,
    };
    Prediction {
        outcome,
        classes: (pa.expected_class(), pb.expected_class()),
    }
}

/// A cell where real NAT and the simulator are known to differ: the lab
/// asserts the real outcome written here instead of the simulator's.
#[derive(Clone, Copy, Debug)]
pub struct Difference {
    /// A's kind.
    pub a: Kind,
    /// B's kind.
    pub b: Kind,
    /// What real NAT does.
    pub real: Outcome,
    /// Why (also in `docs/nat-matrix.md`).
    pub why: &'static str,
}

/// Where real NAT and the simulator's model differ, with why.
pub const DIFFERENCES: &[Difference] = &[];

/// One cell's result.
#[derive(Debug, Clone)]
pub struct Cell {
    /// A's kind (the side that connects).
    pub a: Kind,
    /// B's kind (the side that listens).
    pub b: Kind,
    /// What happened.
    pub outcome: Outcome,
    /// The simulator's prediction.
    pub predicted: Prediction,
    /// Classes the peers measured.
    pub classes: (Option<String>, Option<String>),
    /// Seconds from opening to the first datagram, each way
    /// (`[0]`: B → A, at A; `[1]`: A → B, at B).
    pub first_datagram: [Option<f64>; 2],
    /// Seconds from A's opening to A's direct path.
    pub time_to_direct: Option<f64>,
    /// Keep-alives A and B sent.
    pub keepalives: (u64, u64),
    /// Datagrams A and B received.
    pub received: (u64, u64),
    /// A's last upgrade error, if any.
    pub upgrade_error: Option<String>,
}

impl Cell {
    /// The outcome the lab requires: the simulator's, or the documented
    /// real one where they are known to differ.
    #[must_use]
    pub fn expected(&self) -> (Outcome, Option<&'static str>) {
        DIFFERENCES
            .iter()
            .find(|d| d.a == self.a && d.b == self.b)
            .map_or((self.predicted.outcome, None), |d| (d.real, Some(d.why)))
    }

    /// What is wrong with this cell, if anything.
    #[must_use]
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let (want, _) = self.expected();
        if self.outcome != want {
            p.push(format!(
                "{} × {}: {} on real NAT, {} expected (simulator: {})",
                self.a, self.b, self.outcome, want, self.predicted.outcome
            ));
        }
        for (side, kind, got, want) in [
            ("A", self.a, &self.classes.0, self.predicted.classes.0),
            ("B", self.b, &self.classes.1, self.predicted.classes.1),
        ] {
            if got.as_deref() != Some(class_name(want)) {
                p.push(format!(
                    "{} × {}: {side} ({kind}) classified itself {}, the simulator's {:?} finds {}",
                    self.a,
                    self.b,
                    got.as_deref().unwrap_or("(nothing)"),
                    kind.preset(),
                    class_name(want)
                ));
            }
        }
        if self.received.0 == 0 || self.received.1 == 0 {
            p.push(format!(
                "{} × {}: data did not cross both ways (A got {}, B got {})",
                self.a, self.b, self.received.0, self.received.1
            ));
        }
        p
    }

    /// `first / direct` as the tables show it.
    #[must_use]
    pub fn timing(&self) -> String {
        let first = self
            .first_datagram
            .iter()
            .flatten()
            .copied()
            .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))));
        let ms = |t: f64| format!("{:.0} ms", t * 1e3);
        let direct = match (self.outcome, self.time_to_direct) {
            (Outcome::Relayed, _) => "relayed".to_owned(),
            (_, Some(t)) => ms(t),
            (_, None) => "?".to_owned(),
        };
        format!("{} / {direct}", first.map_or_else(|| "—".to_owned(), ms))
    }
}

/// `open`, `cone`, `symmetric`, `unknown`: what `--report` writes.
fn class_name(c: NatClass) -> &'static str {
    c.tag().trim_start_matches("nat:")
}

/// The sites of a matrix: one A and one B per kind.
#[derive(Debug)]
pub struct Sides {
    /// Connecting sides, in kind order.
    pub a: Vec<Site>,
    /// Listening sides, in kind order.
    pub b: Vec<Site>,
}

/// Builds an A and a B site for each of `kinds`; site numbers start at
/// `first`.
///
/// # Errors
/// The topology cannot be built.
pub fn build_sides(
    lab: &mut Lab,
    internet: &crate::topo::Internet,
    kinds: &[Kind],
    first: u8,
) -> Result<Sides> {
    let mut a = Vec::new();
    let mut b = Vec::new();
    for (n, k) in kinds.iter().enumerate() {
        let n = u8::try_from(n).map_err(|_| LabError::Setup("too many kinds".into()))?;
        let ia = first + 2 * n;
        a.push(Site::build(lab, internet, *k, ia, &format!("a{ia}"))?);
        b.push(Site::build(
            lab,
            internet,
            *k,
            ia + 1,
            &format!("b{}", ia + 1),
        )?);
    }
    Ok(Sides { a, b })
}

/// Runs every ordered pair of `sides`, round by round; `coordinators` are
/// the dial strings both peers use. `only`, if given, restricts to those
/// cells. Prints each round as it ends.
///
/// # Errors
/// Setup failures, a hung peer, interruption. A cell whose outcome
/// differs is not an error here: see [`Cell::problems`].
pub fn run_matrix(
    lab: &Lab,
    nx: &Natrix,
    sides: &Sides,
    coordinators: &[&str],
    only: Option<&[(Kind, Kind)]>,
) -> Result<Vec<Cell>> {
    let n = sides.a.len();
    let mut cells = Vec::new();
    for round in 0..n {
        if interrupted() {
            return Err(LabError::Interrupted);
        }
        let pairs: Vec<(&Site, &Site)> = (0..n)
            .map(|k| (&sides.a[k], &sides.b[(k + round) % n]))
            .filter(|(a, b)| only.is_none_or(|o| o.contains(&(a.kind, b.kind))))
            .collect();
        if pairs.is_empty() {
            continue;
        }
        for s in sides.a.iter().chain(&sides.b) {
            s.reset_state(lab)?;
        }
        let started = Instant::now();
        let results: Vec<Result<Cell>> = std::thread::scope(|scope| {
            let handles: Vec<_> = pairs
                .iter()
                .map(|(a, b)| scope.spawn(|| run_cell(nx, a, b, coordinators)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(LabError::Setup("a cell panicked".into())))
                })
                .collect()
        });
        for r in results {
            let cell = r?;
            eprintln!(
                "  {:>15} × {:<15} {:<8} (sim {:<8}) {}  keep-alives {}+{}",
                cell.a.name(),
                cell.b.name(),
                cell.outcome.name(),
                cell.predicted.outcome.name(),
                cell.timing(),
                cell.keepalives.0,
                cell.keepalives.1
            );
            cells.push(cell);
        }
        eprintln!(
            "  (round {} took {:.1} s)",
            round + 1,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(cells)
}

/// How long a cell may take from the connection to its verdict: the
/// punch deadline (5 s), the accepting side's later attempt (1 s) and
/// margin.
const VERDICT_WITHIN: Duration = Duration::from_secs(20);

/// Runs one cell: B listens, A connects, both send, until A's path is
/// direct with data crossing it, or both sides' upgrades failed and data
/// crosses the relay.
///
/// # Errors
/// A peer hangs, exits early, or writes no report.
pub fn run_cell(nx: &Natrix, a: &Site, b: &Site, coordinators: &[&str]) -> Result<Cell> {
    let tag = format!("{}x{}", a.kind, b.kind);
    let (mut pa, pb) = nx.start_pair(&tag, a, b, coordinators)?;
    // Wait for the verdict.
    let mut direct_at: Option<Instant> = None;
    let mut pb_log = String::new();
    pa.wait_for(
        "a direct path, or both upgrades failed",
        VERDICT_WITHIN,
        |p| {
            let la = p.log_text();
            pb_log = std::fs::read_to_string(&pb.log).unwrap_or_default();
            let direct = la.contains("path: direct to");
            if direct {
                let at = *direct_at.get_or_insert_with(Instant::now);
                return p.received_since(at) >= 5 && pb.received_since(at) >= 5;
            }
            let failed = la.contains("upgrade to direct failed")
                && pb_log.contains("upgrade to direct failed")
                && !pb_log.contains("path: direct to");
            failed && p.received().len() >= 5 && pb.received().len() >= 5
        },
    )?;
    pa.stop_feeding();
    pa.wait_exit(Duration::from_secs(10))?;
    let mut pb = pb;
    pb.stop_feeding();
    pb.wait_exit(Duration::from_secs(10))?;
    let ra = nx.report(&pa.name)?;
    let rb = nx.report(&pb.name)?;
    Ok(cell_from(a.kind, b.kind, &ra, &rb))
}

fn cell_from(a: Kind, b: Kind, ra: &PeerReport, rb: &PeerReport) -> Cell {
    let outcome = match ra.final_kind.as_deref() {
        Some("direct") => {
            let keepalives = ra.stat("keepalives_sent") + rb.stat("keepalives_sent");
            let punched = ["punches_succeeded", "responder_successes"]
                .iter()
                .map(|s| ra.stat(s) + rb.stat(s))
                .sum::<u64>();
            if keepalives > 0 && punched > 0 {
                Outcome::Punched
            } else {
                Outcome::Direct
            }
        }
        _ => Outcome::Relayed,
    };
    Cell {
        a,
        b,
        outcome,
        predicted: prediction(a, b),
        classes: (ra.class.clone(), rb.class.clone()),
        first_datagram: [ra.time_to_first_datagram(), rb.time_to_first_datagram()],
        time_to_direct: ra.time_to_direct(),
        keepalives: (ra.stat("keepalives_sent"), rb.stat("keepalives_sent")),
        received: (ra.received, rb.received),
        upgrade_error: ra.upgrade_failures.last().map(|(_, e)| e.clone()),
    }
}

/// [`predict`], computed once per pair of presets.
fn prediction(a: Kind, b: Kind) -> Prediction {
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<BTreeMap<(Kind, Kind), Prediction>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(BTreeMap::new()));
    if let Some(p) = cache.lock().expect("not poisoned").get(&(a, b)) {
        return *p;
    }
    let p = predict(a, b);
    cache.lock().expect("not poisoned").insert((a, b), p);
    p
}

/// The matrix as a markdown table: outcome, first datagram / direct, and
/// keep-alives per cell, with the simulator's outcome where it differs.
#[must_use]
pub fn markdown(kinds: &[Kind], cells: &[Cell]) -> String {
    let mut s = String::from("| A \\ B |");
    for k in kinds {
        s += &format!(" {k} |");
    }
    s += "\n|---|";
    for _ in kinds {
        s += "---|";
    }
    s += "\n";
    for a in kinds {
        s += &format!("| **{a}** |");
        for b in kinds {
            match cells.iter().find(|c| c.a == *a && c.b == *b) {
                Some(c) => {
                    let sim = if c.outcome == c.predicted.outcome {
                        String::new()
                    } else {
                        format!(" (sim: {})", c.predicted.outcome)
                    };
                    s += &format!(
                        " {}{sim} {} {}+{} ka |",
                        c.outcome,
                        c.timing(),
                        c.keepalives.0,
                        c.keepalives.1
                    );
                }
                None => s += " — |",
            }
        }
        s += "\n";
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simulator_predicts_the_textbook_cells() {
        assert_eq!(predict(Kind::Open, Kind::Open).outcome, Outcome::Direct);
        assert_eq!(
            predict(Kind::PortRestricted, Kind::Masquerade).outcome,
            Outcome::Punched
        );
        assert_eq!(
            predict(Kind::Symmetric, Kind::PortRestricted).outcome,
            Outcome::Relayed
        );
        let p = predict(Kind::Cgnat, Kind::Symmetric);
        assert_eq!(p.classes, (NatClass::Cone, NatClass::Symmetric));
    }

    fn report(kind: &str, keepalives: u64, succeeded: u64) -> PeerReport {
        PeerReport {
            final_kind: Some(kind.to_owned()),
            class: Some("cone".to_owned()),
            received: 3,
            stats: serde_json::json!({
                "keepalives_sent": keepalives,
                "punches_succeeded": succeeded,
            }),
            ..PeerReport::default()
        }
    }

    #[test]
    fn a_cell_is_punched_only_with_keepalives_and_a_confirmed_punch() {
        let (a, b) = (Kind::PortRestricted, Kind::PortRestricted);
        let c = cell_from(a, b, &report("direct", 2, 1), &report("direct", 2, 0));
        assert_eq!(c.outcome, Outcome::Punched);
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        let c = cell_from(a, b, &report("direct", 0, 0), &report("direct", 0, 0));
        assert_eq!(c.outcome, Outcome::Direct);
        assert_eq!(c.problems().len(), 1, "direct where a punch is predicted");
        let c = cell_from(a, b, &report("relayed", 20, 0), &report("relayed", 20, 0));
        assert_eq!(c.outcome, Outcome::Relayed);
        assert!(!c.problems().is_empty());
    }

    #[test]
    fn a_wrong_class_or_one_way_data_is_a_problem() {
        let (a, b) = (Kind::Symmetric, Kind::Open);
        let mut ra = report("direct", 2, 1);
        let rb = report("direct", 0, 0);
        let c = cell_from(a, b, &ra, &rb);
        assert!(c.problems().iter().any(|p| p.contains("classified")));
        ra.class = Some("symmetric".to_owned());
        ra.received = 0;
        let c = cell_from(a, b, &ra, &rb);
        assert!(c.problems().iter().any(|p| p.contains("both ways")));
    }
}
