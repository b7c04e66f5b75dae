//! The same seed gives a byte-identical transcript (real sessions included);
//! different seeds give different loss patterns.
#![allow(missing_docs)]

use std::time::Duration;

use natrix_sim::LinkConfig;
use natrix_sim::preset::Preset;
use natrix_sim::scenario::PairScenario;

fn lossy(a: Preset, b: Preset) -> PairScenario {
    let mut s = PairScenario::new(a, b);
    s.link = LinkConfig {
        loss: 0.2,
        duplicate: 0.05,
        jitter: Duration::from_millis(8),
        ..LinkConfig::default()
    };
    s.record = true;
    s
}

#[test]
fn same_seed_gives_a_byte_identical_transcript() {
    // With session datagrams on the clean link class (the default) and on
    // the impaired one (handshake retries, lost control messages): keys,
    // Noise ephemerals and session indices all derive from the seed too.
    for impair_sessions in [false, true] {
        for (a, b) in [
            (Preset::PortRestrictedCone, Preset::Symmetric),
            (Preset::DoubleNat, Preset::RestrictedCone),
        ] {
            let mut s = lossy(a, b);
            s.link.impair_sessions = impair_sessions;
            let one = s.run(9);
            let two = s.run(9);
            assert!(one.world.transcript().len() > 1_000);
            assert!(one.world.transcript().contains(" session "));
            assert_eq!(one.world.transcript(), two.world.transcript());
            assert_eq!(one.world.loss_pattern, two.world.loss_pattern);
        }
    }
}

#[test]
fn different_seeds_give_different_loss_patterns() {
    let s = lossy(Preset::FullCone, Preset::FullCone);
    let patterns: Vec<Vec<bool>> = (0..5).map(|seed| s.run(seed).world.loss_pattern).collect();
    for i in 0..patterns.len() {
        for j in (i + 1)..patterns.len() {
            assert_ne!(patterns[i], patterns[j], "seeds {i} and {j}");
        }
    }
    assert!(
        patterns.iter().all(|p| p.iter().any(|l| *l)),
        "some loss in every run"
    );
}
