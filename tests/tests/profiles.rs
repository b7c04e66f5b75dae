//! C8: the NAT profiles nodes announce refine the pair decision, checked in
//! the simulator over every pair of single RFC 4787 NATs (mapping ×
//! filtering, 9 × 9) plus the public and firewalled hosts, 121 cells.
//!
//! Each cell runs three times, same seed: with the baseline matrix (no
//! profiles), with the profiles a behaviour discovery finds behind the
//! presets ([`PairScenario::with_profiles`]), and with both peers claiming
//! [`NatProfile::OPEN`] — a lie that makes the decision punch every cell
//! the baseline does not call Direct, so the forced run shows whether a
//! punch *can* work there. Then:
//!
//! - the model is exact: the refined decision punches a cell exactly when
//!   the forced punch works;
//! - it is never worse than the baseline: every cell the baseline opened,
//!   the refined decision opens too;
//! - it changes something both ways: cells the baseline skipped are punched
//!   (a symmetric NAT that filters nothing), and doomed punches the
//!   baseline ran are skipped (a port-restricted cone with a symmetric NAT).
#![allow(missing_docs)]

use natrix_proto::{NatProfile, PairAction, pair_action_with_profiles};
use natrix_sim::preset::Preset;
use natrix_sim::scenario::{Outcome, PairResult, PairScenario};

fn works(r: &PairResult) -> bool {
    matches!(r.outcome, Outcome::Direct | Outcome::Punched)
}

fn presets() -> Vec<Preset> {
    let mut v = vec![Preset::Open, Preset::Firewall];
    v.extend(Preset::RFC4787);
    v
}

#[test]
fn c8_profiles_refine_the_pair_decision_over_every_rfc4787_pair() {
    const SEED: u64 = 11;
    let mut failures = Vec::new();
    let (mut gained, mut saved) = (Vec::new(), Vec::new());
    for a in presets() {
        for b in presets() {
            let cell = format!("{a} x {b}");
            let baseline = PairScenario::new(a, b).run(SEED);
            let refined = PairScenario::new(a, b).with_profiles().run(SEED);
            let mut forced = PairScenario::new(a, b);
            forced.profiles = Some((NatProfile::OPEN, NatProfile::OPEN));
            let forced = forced.run(SEED);

            // The decision the refined run made, from what it announced.
            let decision = pair_action_with_profiles(
                refined.classes.0,
                Some(a.profile()),
                refined.classes.1,
                Some(b.profile()),
            );
            let skipped = refined.outcome == Outcome::Skipped;
            if skipped != (decision == PairAction::SkipPunch) {
                failures.push(format!(
                    "{cell}: decision {decision:?} but outcome {:?}",
                    refined.outcome
                ));
            }
            if !skipped && refined.terminal_events != 1 {
                failures.push(format!(
                    "{cell}: {} terminal events",
                    refined.terminal_events
                ));
            }
            // Exact: punched where a punch works, skipped where none does.
            if works(&refined) != works(&forced) {
                failures.push(format!(
                    "{cell}: refined {:?}, but a forced punch gives {:?}",
                    refined.outcome, forced.outcome
                ));
            }
            if skipped && works(&forced) {
                failures.push(format!("{cell}: skipped a punch that works"));
            }
            if !works(&refined) && !skipped {
                failures.push(format!(
                    "{cell}: ran a punch that failed ({:?})",
                    refined.error
                ));
            }
            // Never worse than the baseline.
            if works(&baseline) && !works(&refined) {
                failures.push(format!(
                    "{cell}: the baseline opened a path, the refined decision did not"
                ));
            }
            if works(&refined) && !works(&baseline) {
                gained.push(cell.clone());
            }
            if baseline.outcome == Outcome::FailedThenRelay && skipped {
                saved.push(cell.clone());
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Both directions of the refinement happen, in the cells the model
    // names.
    for want in ["APDM/EIF x APDM/ADF", "ADM/ADF x APDM/EIF"] {
        assert!(
            gained.contains(&want.to_owned()),
            "{want} not gained: {gained:?}"
        );
    }
    for want in ["EIM/APDF x APDM/APDF", "firewall x APDM/APDF"] {
        assert!(
            saved.contains(&want.to_owned()),
            "{want} not saved: {saved:?}"
        );
    }
}

/// The seven presets of `docs/nat-matrix.md` with their profiles: no cell
/// the baseline opens is lost, the doomed punches (port-restricted or
/// double NAT with a random-allocation symmetric NAT) are skipped instead
/// of run, and those with the sequential symmetric NAT are punched (N1).
#[test]
fn c8_profiles_skip_the_doomed_punches_of_the_preset_matrix() {
    for a in Preset::ALL {
        for b in Preset::ALL {
            let baseline = PairScenario::new(a, b).run(3);
            let refined = PairScenario::new(a, b).with_profiles().run(3);
            assert!(
                !works(&baseline) || works(&refined),
                "{a} x {b}: baseline {:?}, refined {:?}",
                baseline.outcome,
                refined.outcome
            );
            if baseline.outcome == Outcome::FailedThenRelay {
                // N1: with a sequential symmetric NAT the allocation in the
                // profile makes the punch work (the coordinator predicts the
                // port); every other doomed punch is skipped.
                let predictable =
                    a == Preset::SymmetricSequential || b == Preset::SymmetricSequential;
                let want = if predictable {
                    Outcome::Punched
                } else {
                    Outcome::Skipped
                };
                assert_eq!(refined.outcome, want, "{a} x {b}");
                if !predictable {
                    assert_eq!(refined.keepalives, 0, "{a} x {b}");
                }
            }
        }
    }
}
