//! Lossy links: at 10 % and 30 % datagram loss (plus 1 % duplication and 5 ms
//! jitter), over many seeds per key pair: no panic, no hang (the simulator's
//! step budget), every request ends in exactly one outcome; success rates are
//! printed and held to a floor.
//!
//! `NATRIX_LOSS_SEEDS` sets the number of seeds per cell (default 1000).
#![allow(missing_docs)]

use std::time::Duration;

use natrix_sim::LinkConfig;
use natrix_sim::preset::Preset;
use natrix_sim::scenario::{Outcome, PairScenario};

fn seeds() -> u64 {
    std::env::var("NATRIX_LOSS_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000)
}

const PAIRS: [(Preset, Preset); 4] = [
    (Preset::FullCone, Preset::PortRestrictedCone),
    (Preset::PortRestrictedCone, Preset::PortRestrictedCone),
    (Preset::RestrictedCone, Preset::Symmetric),
    (Preset::DoubleNat, Preset::DoubleNat),
];

fn sweep(loss: f64, floor: f64) {
    let n = seeds();
    let mut report = String::new();
    for (a, b) in PAIRS {
        let mut s = PairScenario::new(a, b);
        s.link = LinkConfig {
            loss,
            duplicate: 0.01,
            jitter: Duration::from_millis(5),
            ..LinkConfig::default()
        };
        let mut punched = 0u64;
        for seed in 0..n {
            let r = s.run(seed);
            assert_eq!(
                r.terminal_events, 1,
                "{a} x {b} seed {seed}: {} terminal events",
                r.terminal_events
            );
            assert!(
                matches!(r.outcome, Outcome::Punched | Outcome::FailedThenRelay),
                "{a} x {b} seed {seed}: {:?}",
                r.outcome
            );
            if r.outcome == Outcome::Punched {
                punched += 1;
            }
        }
        let rate = punched as f64 / n as f64;
        report.push_str(&format!(
            "loss {:>3.0}% {a:<16} x {b:<16} {punched}/{n} = {:.1}%\n",
            loss * 100.0,
            rate * 100.0
        ));
        assert!(
            rate >= floor,
            "{a} x {b} at {loss}: success rate {rate:.3} below {floor}"
        );
    }
    println!("{report}");
}

#[test]
fn ten_percent_loss() {
    sweep(0.10, 0.99);
}

#[test]
fn thirty_percent_loss() {
    sweep(0.30, 0.97);
}
