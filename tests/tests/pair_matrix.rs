//! Every preset × every preset: the outcome matches `docs/nat-matrix.md`,
//! classification through the NATs is right, every punch ends in exactly one
//! terminal event, and successful punches reach a direct path within 1.2× the
//! theoretical minimum + 10 ms (virtual time).
#![allow(missing_docs)]

use std::time::Duration;

use natrix_sim::preset::Preset;
use natrix_sim::scenario::{Outcome, PairScenario};
use natrix_tests::expected;

#[test]
fn every_cell_of_the_pair_matrix() {
    let mut failures = Vec::new();
    let mut table = String::new();
    for a in Preset::ALL {
        for b in Preset::ALL {
            let r = PairScenario::new(a, b).run(42);
            let (want, why) = expected(a, b);
            table.push_str(&format!(
                "{:<16} {:<16} {:<8} ttd={:<8} keepalives={}\n",
                a.name(),
                b.name(),
                r.outcome.name(),
                r.time_to_direct
                    .map_or("-".into(), |d| format!("{}ms", d.as_millis())),
                r.keepalives
            ));
            if r.classes != (a.expected_class(), b.expected_class()) {
                failures.push(format!("{a} x {b}: classified as {:?}", r.classes));
            }
            if r.outcome != want {
                failures.push(format!(
                    "{a} x {b}: {:?}, expected {want:?} ({why}); error {:?}",
                    r.outcome, r.error
                ));
            }
            if r.outcome != Outcome::Skipped && r.terminal_events != 1 {
                failures.push(format!("{a} x {b}: {} terminal events", r.terminal_events));
            }
            if r.outcome == Outcome::Punched {
                // 10 ms access links: request 20 + introduce 20 + keep-alive 20.
                let minimum = Duration::from_millis(60);
                let ttd = r.time_to_direct.expect("a punched cell has a time");
                // A symmetric requester needs one extra crossing: its first
                // keep-alive is filtered, the peer's reply comes back.
                let allowed = if a.expected_class() == natrix_proto::NatClass::Symmetric {
                    minimum.mul_f64(1.2) + Duration::from_millis(10) + Duration::from_millis(20)
                } else {
                    minimum.mul_f64(1.2) + Duration::from_millis(10)
                };
                if ttd > allowed {
                    failures.push(format!("{a} x {b}: time to direct {ttd:?} > {allowed:?}"));
                }
                if r.keepalives > 4 {
                    failures.push(format!(
                        "{a} x {b}: {} keep-alives, R10 should stop at 4",
                        r.keepalives
                    ));
                }
            }
        }
    }
    println!("{table}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn relay_cells_run_their_trains_to_the_deadline_and_no_further() {
    let r = PairScenario::new(Preset::PortRestrictedCone, Preset::Symmetric).run(1);
    assert_eq!(r.outcome, Outcome::FailedThenRelay);
    // Opener (3) + resends every 250 ms to the 5 s deadline, both sides.
    assert!(r.keepalives <= 2 * (3 + 20), "{}", r.keepalives);
}
