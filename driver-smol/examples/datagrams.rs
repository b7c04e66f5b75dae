//! Datagrams a smol node handles per second through a real UDP socket on
//! 127.0.0.1 — keep-alives, datagrams for the application, session data —
//! against a bare `recv_from` loop on the same runtime in the same run
//! (numbers for docs/performance.md).
//!
//! `cargo run --release -p natrix-smol --example smol_datagrams`
//! (`-- --quick` for a run of a few seconds, as CI does).

use natrix_driver_core::testkit::bench::{datagram_rates, plan_from_args, print_table, workloads};

fn main() {
    let plan = plan_from_args();
    let rates: Vec<_> = workloads()
        .into_iter()
        .map(|w| smol::block_on(datagram_rates(natrix_smol::Smol, w, plan)))
        .collect();
    if !print_table("smol", plan, &rates) {
        eprintln!("a workload delivered nothing");
        std::process::exit(1);
    }
}
