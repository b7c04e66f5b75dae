//! Prints the NAT pair matrix: for every preset of A (rows) and B (columns),
//! the outcome of A's punch to B, the time from `request_punch` to a direct
//! path, and the keep-alives both sides sent. Then, for every cell, a
//! connection end to end (relay first, direct when a punch works): the time
//! until the first datagram arrives (the slower direction) and until the
//! connection is direct, or "relayed". Exits non-zero if any cell's peers
//! did not exchange data both ways. Last, two markdown tables of the
//! baseline matrix against the NAT profiles both peers announce (mapping,
//! filtering and port allocation: C8 and N1): the seven presets (the old
//! and the new matrix side by side), and every pair of single RFC 4787
//! NATs with the public and firewalled hosts.
//!
//! `cargo run --release -p natrix-sim --example matrix`

use std::process::ExitCode;
use std::time::{Duration, Instant as WallClock};

use natrix_session::path::PathKind;
use natrix_sim::preset::Preset;
use natrix_sim::scenario::{PairScenario, run_connection};

fn main() -> ExitCode {
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
    println!();
    println!("connections (A opens to B through R; data both ways every 20 ms):");
    print!("{:<16}", "A \\ B");
    for b in Preset::ALL {
        print!("{:<w$}", b.name());
    }
    println!();
    let mut failures = Vec::new();
    // One-way latency on each kind of path, over the cells that stay on it.
    let mut latency = [(Duration::ZERO, 0u32); 2];
    for a in Preset::ALL {
        print!("{:<16}", a.name());
        for b in Preset::ALL {
            let c = run_connection(a, b, 1, Duration::from_secs(30));
            runs += 1;
            let first = match c.first_datagram {
                [Some(x), Some(y)] => format!("{}ms", x.max(y).as_millis()),
                _ => "-".to_owned(),
            };
            let path = match (c.kinds.0, c.time_to_direct) {
                (Some(PathKind::Direct), Some(d)) => format!("{}ms", d.as_millis()),
                _ => "relayed".to_owned(),
            };
            // Steady state: the path a cell stays on for its 30 s (the
            // few datagrams a cell sends before its upgrade waited for the
            // handshake and would skew the relayed figure).
            let k = usize::from(c.kinds.0 == Some(PathKind::Relayed));
            for l in c.report.mean_latency.iter().filter_map(|dir| dir[k]) {
                latency[k].0 += l;
                latency[k].1 += 1;
            }
            let ok = c.exchanged() && c.report.duplicates == [0, 0];
            if !ok {
                failures.push(format!(
                    "{a} x {b}: {:?} {:?} dups {:?}",
                    c.kinds, c.report.by_kind, c.report.duplicates
                ));
            }
            let cell = format!("{}{first} {path}", if ok { "⇄ " } else { "✗ " });
            print!("{cell:<w$}");
        }
        println!();
    }
    println!();
    println!(
        "cells: ⇄ data crossed both ways (✗ it did not), time to the first datagram (slower direction), time to a direct path or \"relayed\""
    );
    let mean = |(sum, n): (Duration, u32)| (n > 0).then(|| sum / n);
    if let (Some(direct), Some(relayed)) = (mean(latency[0]), mean(latency[1])) {
        println!(
            "one-way latency (mean over the cells that end on each path): direct {:.1?}, relayed {:.1?} (the relay adds {:.1?})",
            direct,
            relayed,
            relayed.saturating_sub(direct)
        );
    }
    runs += profile_table(
        "old → new: the baseline matrix → with NAT profiles, port prediction and birthday punching (C8, N1, N2; A rows, B columns; seed 1)",
        &Preset::ALL,
    );
    let mut rfc4787 = vec![Preset::Open, Preset::Firewall];
    rfc4787.extend(Preset::RFC4787);
    runs += profile_table(
        "C8: baseline → with NAT profiles (A rows, B columns; seed 1)",
        &rfc4787,
    );
    println!("{runs} scenarios in {:.2?} wall time", started.elapsed());
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        for f in &failures {
            eprintln!("FAILED {f}");
        }
        ExitCode::FAILURE
    }
}

/// A markdown table of `presets` × `presets`: each cell is the baseline's
/// outcome, then, where the profiles change it, the refined one (with its
/// time to direct and keep-alives). Returns the scenarios run.
fn profile_table(title: &str, presets: &[Preset]) -> usize {
    println!();
    println!("{title}");
    println!();
    print!("| A \\ B |");
    for b in presets {
        print!(" {b} |");
    }
    println!();
    println!("|---|{}", "---|".repeat(presets.len()));
    let mut runs = 0;
    for &a in presets {
        print!("| **{a}** |");
        for &b in presets {
            let base = PairScenario::new(a, b).run(1);
            let refined = PairScenario::new(a, b).with_profiles().run(1);
            runs += 2;
            let (x, y) = (base.outcome.name(), refined.outcome.name());
            if x == y {
                print!(" {x} |");
            } else {
                let ttd = refined
                    .time_to_direct
                    .map_or_else(String::new, |d| format!(" {} ms", d.as_millis()));
                print!(" {x} → **{y}{ttd} {} p** |", refined.keepalives);
            }
        }
        println!();
    }
    runs
}
