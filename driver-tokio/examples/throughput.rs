//! Punches and reflex answers per second over loopback with the tokio driver
//! (numbers for docs/performance.md).
//!
//! `cargo run --release -p natrix-tokio --example tokio_throughput`

fn main() {
    for pairs in [1, 8] {
        let t = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(natrix_driver_core::testkit::throughput(
                natrix_tokio::Tokio,
                pairs,
                std::time::Duration::from_secs(2),
            ));
        println!(
            "tokio: {pairs} pair(s): {:.0} punches/s ({} failed), {:.0} reflex answers/s",
            t.punches_per_sec, t.punches_failed, t.reflex_answers_per_sec
        );
    }
}
