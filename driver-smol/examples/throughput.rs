//! Punches and reflex answers per second over loopback with the smol driver
//! (numbers for docs/performance.md).
//!
//! `cargo run --release -p natrix-smol --example smol_throughput`

fn main() {
    for pairs in [1, 8] {
        let t = smol::block_on(natrix_driver_core::testkit::throughput(
            natrix_smol::Smol,
            pairs,
            std::time::Duration::from_secs(2),
        ));
        println!(
            "smol: {pairs} pair(s): {:.0} punches/s ({} failed), {:.0} reflex answers/s",
            t.punches_per_sec, t.punches_failed, t.reflex_answers_per_sec
        );
    }
}
