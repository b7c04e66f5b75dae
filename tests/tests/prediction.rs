//! N1: port prediction in the simulator, over the cells of the 7 × 7 preset
//! matrix that ended on the relay before #18.
//!
//! Every pair runs with the profiles a behaviour discovery finds behind the
//! presets ([`PairScenario::with_profiles`]: mapping, filtering and — new
//! with N1 — the port allocation). The four cells of a port-restricted cone
//! (or the double NAT, whose inner NAT is one) with the sequential symmetric
//! NAT are punched through the coordinator's prediction in every one of
//! 1,000 seeds; with the prediction window switched off the same cells fail
//! as before, so it is the prediction that opens them. The cells with a
//! random-allocation symmetric NAT, and symmetric × symmetric, stay skipped
//! (N2's birthday punch is not wired into the rendezvous yet), without a
//! packet.
//!
//! `cargo test -p natrix-tests --test prediction -- --nocapture` prints the
//! table `docs/nat-matrix.md` shows.
#![allow(missing_docs)]

use std::time::Duration;

use natrix_proto::Config;
use natrix_sim::preset::Preset;
use natrix_sim::scenario::{Outcome, PairScenario};

const SEEDS: u64 = 1000;

/// The cells N1 opens: one side a sequential symmetric NAT, the other
/// endpoint-independent with a port-dependent filter.
const PREDICTABLE: [(Preset, Preset); 4] = [
    (Preset::PortRestrictedCone, Preset::SymmetricSequential),
    (Preset::SymmetricSequential, Preset::PortRestrictedCone),
    (Preset::DoubleNat, Preset::SymmetricSequential),
    (Preset::SymmetricSequential, Preset::DoubleNat),
];

/// The other former relay cells: a random-allocation symmetric NAT with a
/// port-restricted filter, and two symmetric NATs.
const UNPREDICTABLE: [(Preset, Preset); 8] = [
    (Preset::PortRestrictedCone, Preset::Symmetric),
    (Preset::Symmetric, Preset::PortRestrictedCone),
    (Preset::DoubleNat, Preset::Symmetric),
    (Preset::Symmetric, Preset::DoubleNat),
    (Preset::Symmetric, Preset::Symmetric),
    (Preset::Symmetric, Preset::SymmetricSequential),
    (Preset::SymmetricSequential, Preset::Symmetric),
    (Preset::SymmetricSequential, Preset::SymmetricSequential),
];

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() - 1) * p / 100]
}

#[test]
fn n1_prediction_punches_the_sequential_symmetric_cells_in_every_seed() {
    println!(
        "| cell | punched | keep-alives per punch (mean) | time to direct (median / p99 / max) |"
    );
    println!("|---|---|---|---|");
    for (a, b) in PREDICTABLE {
        let mut times = Vec::new();
        let mut keepalives = 0;
        let mut failed = Vec::new();
        for seed in 0..SEEDS {
            let r = PairScenario::new(a, b).with_profiles().run(seed);
            keepalives += r.keepalives;
            match (r.outcome, r.time_to_direct) {
                (Outcome::Punched, Some(t)) => times.push(t),
                _ => failed.push((seed, r.outcome, r.error)),
            }
        }
        assert!(failed.is_empty(), "{a} x {b}: {failed:?}");
        times.sort_unstable();
        println!(
            "| {a} × {b} | {}/{SEEDS} | {:.1} | {:?} / {:?} / {:?} |",
            times.len(),
            keepalives as f64 / SEEDS as f64,
            percentile(&times, 50),
            percentile(&times, 99),
            times[times.len() - 1],
        );
    }
}

#[test]
fn n1_without_the_prediction_window_those_cells_fail_as_before() {
    let config = Config::builder()
        .prediction_window(0)
        .build()
        .expect("valid");
    for (a, b) in PREDICTABLE {
        for seed in 0..20 {
            let mut s = PairScenario::new(a, b).with_profiles();
            s.config = config.clone();
            let r = s.run(seed);
            assert_eq!(r.outcome, Outcome::FailedThenRelay, "{a} x {b} seed {seed}");
        }
    }
}

#[test]
fn n1_unpredictable_cells_stay_skipped_without_a_packet() {
    for (a, b) in UNPREDICTABLE {
        for seed in 0..20 {
            let r = PairScenario::new(a, b).with_profiles().run(seed);
            assert_eq!(r.outcome, Outcome::Skipped, "{a} x {b} seed {seed}");
            assert_eq!(r.keepalives, 0, "{a} x {b} seed {seed}");
        }
    }
}
