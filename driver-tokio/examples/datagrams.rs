//! Datagrams a tokio node handles per second through a real UDP socket on
//! 127.0.0.1 — keep-alives, datagrams for the application, session data —
//! against a bare `recv_from` loop on the same runtime in the same run
//! (numbers for docs/performance.md). Both the current-thread and the
//! multi-thread runtime.
//!
//! `cargo run --release -p natrix-tokio --example tokio_datagrams`
//! (`-- --quick` for a run of a few seconds, as CI does).

use natrix_driver_core::testkit::bench::{datagram_rates, plan_from_args, print_table, workloads};

fn main() {
    let plan = plan_from_args();
    let mut ok = true;
    for (name, multi) in [
        ("tokio (current-thread)", false),
        ("tokio (multi-thread, 2 workers)", true),
    ] {
        let rt = if multi {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        }
        .expect("runtime");
        let rates: Vec<_> = workloads()
            .into_iter()
            .map(|w| rt.block_on(datagram_rates(natrix_tokio::Tokio, w, plan)))
            .collect();
        ok &= print_table(name, plan, &rates);
    }
    if !ok {
        eprintln!("a workload delivered nothing");
        std::process::exit(1);
    }
}
