//! Prints the NAT pair matrix: for every preset of A (rows) and B (columns),
//! the outcome of A's punch to B, the time from `request_punch` to a direct
//! path, and the keep-alives both sides sent.
//!
//! `cargo run --release -p natrix-sim --example matrix`

use std::time::Instant as WallClock;

use natrix_sim::preset::Preset;
use natrix_sim::scenario::PairScenario;

fn main() {
    let started = WallClock::now();
    let w = 20;
    print!("{:<16}", "A \\ B");
    for b in Preset::ALL {
        print!("{:<w$}", b.name());
    }
    println!();
    let mut runs = 0;
    for a in Preset::ALL {
        print!("{:<16}", a.name());
        for b in Preset::ALL {
            let r = PairScenario::new(a, b).run(1);
            runs += 1;
            let ttd = r
                .time_to_direct
                .map_or_else(|| "-".to_owned(), |d| format!("{}ms", d.as_millis()));
            let cell = format!("{} {} {}p", r.outcome.name(), ttd, r.keepalives);
            print!("{cell:<w$}");
        }
        println!();
    }
    println!();
    println!("cells: outcome, time to direct path, keep-alive packets (both sides)");
    println!("classes seen: A and B classify themselves through their NATs first");
    println!("{runs} scenarios in {:.2?} wall time", started.elapsed());
}
