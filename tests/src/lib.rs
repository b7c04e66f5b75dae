//! Scenario suites for natrix on the simulator (`tests/`), and the expected
//! pair matrix they check against (documented cell by cell in
//! `docs/nat-matrix.md`).

use natrix_sim::preset::Preset;
use natrix_sim::scenario::Outcome;

/// The expected outcome of A (rows) punching B (columns) with the baseline
/// pair matrix, and why. Derived from the NAT rules; see `docs/nat-matrix.md`.
#[must_use]
pub fn expected(a: Preset, b: Preset) -> (Outcome, &'static str) {
    use Outcome::{Direct, FailedThenRelay, Punched, Skipped};
    use Preset::{
        DoubleNat, FullCone, Open, PortRestrictedCone, RestrictedCone, Symmetric,
        SymmetricSequential,
    };
    let symmetric = |p: Preset| matches!(p, Symmetric | SymmetricSequential);
    let cone = |p: Preset| {
        matches!(
            p,
            FullCone | RestrictedCone | PortRestrictedCone | DoubleNat
        )
    };
    // Port-restricted filtering somewhere on the path (the double NAT's home
    // router is port-restricted).
    let port_restricted = |p: Preset| matches!(p, PortRestrictedCone | DoubleNat);
    match (a, b) {
        (Open, Open) => (Direct, "no NAT on either side"),
        (Open, x) | (x, Open) if cone(x) => (
            Direct,
            "matrix says Direct; both ends send, the cone side's outbound opens its own filter for the open side",
        ),
        (Open, _) | (_, Open) => (
            Punched,
            "open × symmetric: the symmetric side's keep-alive reaches the open side from a fresh port; R8 learns it and the reply passes",
        ),
        (x, y) if symmetric(x) && symmetric(y) => {
            (Skipped, "symmetric × symmetric: the matrix skips")
        }
        (x, y) if cone(x) && cone(y) => (
            Punched,
            "both endpoint-independent: each train goes to the other's real mapping and opens its own filter",
        ),
        (x, y) if (port_restricted(x) && symmetric(y)) || (symmetric(x) && port_restricted(y)) => (
            FailedThenRelay,
            "port-restricted × symmetric: the cone side only admits the symmetric side's announced port, which it never uses toward the cone side",
        ),
        _ => (
            Punched,
            "cone (full or address-restricted) × symmetric: the symmetric side's fresh port passes the cone filter; R8 learns it",
        ),
    }
}
