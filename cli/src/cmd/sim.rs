//! `natrix sim`: the NAT pair matrix on the simulator.

use std::time::Duration;

use natrix_sim::LinkConfig;
use natrix_sim::preset::Preset;
use natrix_sim::scenario::PairScenario;
use serde::Serialize;

use crate::error::{CliError, CliResult, Exit};

/// `natrix sim` options.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  natrix sim\n  natrix sim --loss 0.1 --seed 7 --json")]
pub(crate) struct Args {
    /// Datagram loss on every link, 0.0..1.0.
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// The simulation's seed (the same seed gives the same run).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// One JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// One cell of the matrix.
#[derive(Debug, Serialize)]
pub(crate) struct Cell {
    /// A's NAT.
    pub a: &'static str,
    /// B's NAT.
    pub b: &'static str,
    /// The punch's outcome.
    pub outcome: &'static str,
    /// Time to the direct path, ms.
    pub time_to_direct_ms: Option<u64>,
    /// Keep-alives both sides sent.
    pub keepalives: u64,
}

/// Runs the 49 cells and prints them.
///
/// # Errors
/// [`Exit::Usage`] for a loss outside 0..1.
pub(crate) fn run(args: &Args) -> CliResult<Exit> {
    if !(0.0..1.0).contains(&args.loss) {
        return Err(CliError::usage(format!(
            "--loss {} is not in 0.0..1.0",
            args.loss
        )));
    }
    let cells = matrix(args.loss, args.seed);
    if args.json {
        let doc = serde_json::json!({ "seed": args.seed, "loss": args.loss, "cells": cells });
        outln!("{doc:#}");
        return Ok(Exit::Ok);
    }
    let w = 20;
    out!("{:<16}", "A \\ B");
    for b in Preset::ALL {
        out!("{:<w$}", b.name());
    }
    outln!();
    for (i, a) in Preset::ALL.iter().enumerate() {
        out!("{:<16}", a.name());
        for c in &cells[i * Preset::ALL.len()..(i + 1) * Preset::ALL.len()] {
            let t = c
                .time_to_direct_ms
                .map_or_else(|| "-".to_owned(), |ms| format!("{ms}ms"));
            out!("{:<w$}", format!("{} {t} {}p", c.outcome, c.keepalives));
        }
        outln!();
    }
    outln!();
    outln!(
        "cells: outcome, time to the direct path, keep-alives sent (both sides); seed {}, loss {}",
        args.seed,
        args.loss
    );
    Ok(Exit::Ok)
}

/// The 49 cells with `loss` on every link.
#[must_use]
pub(crate) fn matrix(loss: f64, seed: u64) -> Vec<Cell> {
    let mut cells = Vec::new();
    for a in Preset::ALL {
        for b in Preset::ALL {
            let mut s = PairScenario::new(a, b);
            s.link = LinkConfig {
                loss,
                ..LinkConfig::default()
            };
            let r = s.run(seed);
            cells.push(Cell {
                a: a.name(),
                b: b.name(),
                outcome: r.outcome.name(),
                time_to_direct_ms: r
                    .time_to_direct
                    .map(|d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                keepalives: r.keepalives,
            });
        }
    }
    cells
}
