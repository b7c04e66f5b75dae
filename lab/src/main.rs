//! `natrix-lab`: runs natrix through the Linux kernel's NAT in network
//! namespaces (see `docs/nat-lab.md`). Needs root. Exit 0 when every cell
//! and scenario holds, 1 otherwise, 2 when the lab cannot run here.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use natrix_lab::kinds::Kind;
use natrix_lab::matrix::{self, Cell};
use natrix_lab::natrix::Natrix;
use natrix_lab::netns::{self, Lab};
use natrix_lab::scenarios::{self, Scenario};
use natrix_lab::topo::{Internet, Site};
use natrix_lab::{LabError, Result};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(
    name = "natrix-lab",
    about = "natrix through real kernel NAT in network namespaces (root only)"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// The natrix binary. Default: `natrix` next to this program.
    #[arg(long, global = true, value_name = "PATH")]
    natrix: Option<PathBuf>,
    /// The `smol_map` example (the port mapper on smol). Default:
    /// `examples/smol_map` next to this program (`cargo build --release -p
    /// natrix-smol --example smol_map`).
    #[arg(long, global = true, value_name = "PATH")]
    smol_map: Option<PathBuf>,
    /// Where logs, keys, reports and results go (emptied first).
    #[arg(long, global = true, value_name = "DIR", default_value = "target/lab")]
    dir: PathBuf,
    /// Peer log verbosity flag passed to natrix (`-v`, `-vv`).
    #[arg(long, global = true, default_value = "-v", allow_hyphen_values = true)]
    peer_verbosity: String,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The matrix and the failure scenarios (the default).
    Run,
    /// Only the matrix; `--cell A:B` (repeatable) restricts it to cells.
    Matrix {
        /// A cell, as `kind:kind` (e.g. `symmetric:full-cone`).
        #[arg(long, value_name = "A:B")]
        cell: Vec<String>,
    },
    /// Only the failure scenarios.
    Scenarios,
    /// Only the STUN interop with coturn and the pairs with NAT profiles
    /// (C8, and N2's birthday punches): a part of `scenarios`.
    Stun,
    /// Only the port mapping against miniupnpd (P1–P7, D1): a part of
    /// `scenarios`.
    Portmap,
    /// Removes the namespaces an interrupted or killed run left behind.
    Cleanup,
    /// STUN Binding answers per second: a natrix coordinator against coturn,
    /// each on one core, on 127.0.0.1 (no namespaces, no root).
    StunBench {
        /// Seconds counted per server turn (default 5; 0.5 with --quick).
        #[arg(long)]
        seconds: Option<f64>,
        /// One short round that only proves it runs.
        #[arg(long)]
        quick: bool,
        /// Rounds (each server one turn per round; default 3, 1 with --quick).
        #[arg(long)]
        rounds: Option<usize>,
        /// Outstanding requests per generator socket (16 sockets; default 8).
        #[arg(long)]
        window: Option<usize>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Cmd::StunBench {
        seconds,
        quick,
        rounds,
        window,
    }) = args.command
    {
        let mut plan = natrix_lab::stun_bench::Plan::new(seconds, quick);
        plan.rounds = rounds.unwrap_or(plan.rounds);
        plan.window = window.unwrap_or(plan.window);
        return stun_bench(&args, &plan);
    }
    if matches!(args.command, Some(Cmd::Cleanup)) {
        let removed = netns::cleanup_all();
        println!(
            "removed {} lab namespace(s): {}",
            removed.len(),
            removed.join(" ")
        );
        return ExitCode::SUCCESS;
    }
    if let Err(e) = netns::preflight().and_then(|()| netns::install_interrupt_handler()) {
        eprintln!("natrix-lab: {e}");
        return ExitCode::from(2);
    }
    let stale = netns::cleanup_all();
    if !stale.is_empty() {
        eprintln!(
            "removed {} namespace(s) an earlier run left behind",
            stale.len()
        );
    }
    let started = Instant::now();
    let outcome = run(&args);
    // The lab is torn down by now (on every path: it is dropped in `run`).
    let left = netns::leftovers();
    let mut ok = match outcome {
        Ok(ok) => ok,
        Err(e) => {
            eprintln!("natrix-lab: FAILED: {e}");
            false
        }
    };
    if left.is_empty() {
        eprintln!("teardown: no lab namespace, veth or nft table left");
    } else {
        eprintln!(
            "natrix-lab: FAILED: namespaces left behind: {}",
            left.join(" ")
        );
        ok = false;
    }
    eprintln!("lab time: {:.1} s", started.elapsed().as_secs_f64());
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `natrix-lab stun-bench`: no namespaces, so no preflight or cleanup.
fn stun_bench(args: &Args, plan: &natrix_lab::stun_bench::Plan) -> ExitCode {
    let report = binary(
        args.natrix.as_ref(),
        "natrix",
        "cargo build --release -p natrix-cli",
        "--natrix",
    )
    .and_then(|bin| natrix_lab::stun_bench::run(&bin, &args.dir.join("stun-bench"), plan));
    match report {
        Ok(r) => {
            println!("{}", r.text);
            if r.ok {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "natrix-lab stun-bench: FAILED: a wrong answer, or a server answered nothing"
                );
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("natrix-lab stun-bench: {e}");
            ExitCode::from(2)
        }
    }
}

/// `given`, or `default` (a path relative to this program's folder); it
/// must exist, or the preflight fails with how to build it.
fn binary(given: Option<&PathBuf>, default: &str, build: &str, flag: &str) -> Result<PathBuf> {
    let bin = match given {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| LabError::Setup(format!("cannot find this program: {e}")))?
            .with_file_name(default),
    };
    if !bin.is_file() {
        return Err(LabError::Preflight(format!(
            "no {default} at {} (build it: {build}, or pass {flag})",
            bin.display()
        )));
    }
    Ok(bin)
}

/// Runs what `args` asks for; whether every check held.
fn run(args: &Args) -> Result<bool> {
    let bin = binary(
        args.natrix.as_ref(),
        "natrix",
        "cargo build --release -p natrix-cli",
        "--natrix",
    )?;
    let _ = std::fs::remove_dir_all(&args.dir);
    let mut lab = Lab::new(&args.dir)?;
    let nx = Natrix {
        bin,
        dir: args.dir.clone(),
        verbosity: args.peer_verbosity.clone(),
        peer_flags: Vec::new(),
    };
    let stun_only = matches!(args.command, Some(Cmd::Stun));
    let portmap_only = matches!(args.command, Some(Cmd::Portmap));
    let (do_matrix, do_scenarios, only) = match &args.command {
        None | Some(Cmd::Run) => (true, true, None),
        Some(Cmd::Matrix { cell }) if !cell.is_empty() => (true, false, Some(parse_cells(cell)?)),
        Some(Cmd::Matrix { .. }) => (true, false, None),
        Some(Cmd::Scenarios | Cmd::Stun | Cmd::Portmap) => (false, true, None),
        Some(Cmd::Cleanup | Cmd::StunBench { .. }) => unreachable!("handled in main"),
    };
    let t = Instant::now();
    let internet = Internet::build(&mut lab, 4)?;
    let c4 = [
        nx.coordinator(&internet, 1, false)?,
        nx.coordinator(&internet, 2, false)?,
    ];
    let c6 = [
        nx.coordinator(&internet, 1, true)?,
        nx.coordinator(&internet, 2, true)?,
    ];
    let d4: Vec<&str> = c4.iter().map(|c| c.dial.as_str()).collect();
    let d6: Vec<&str> = c6.iter().map(|c| c.dial.as_str()).collect();
    let v4 = matrix::build_sides(&mut lab, &internet, &Kind::V4, 1)?;
    let v6 = matrix::build_sides(&mut lab, &internet, &Kind::V6, 20)?;
    let mut sites = Vec::new();
    let failure_scenarios = do_scenarios && !stun_only && !portmap_only;
    if failure_scenarios {
        for (n, kind) in [
            Kind::Masquerade,
            Kind::PortRestricted,
            Kind::PortRestricted,
            Kind::Open,
            Kind::PortRestricted,
            Kind::PortRestricted,
            Kind::PortRestricted,
            Kind::Masquerade,
            Kind::PortRestricted,
            Kind::PortRestricted,
            Kind::MasqueradeBare,
            Kind::MasqueradeBare,
        ]
        .into_iter()
        .enumerate()
        {
            let i = 30 + u8::try_from(n).unwrap_or(0);
            sites.push(Site::build(&mut lab, &internet, kind, i, &format!("x{i}"))?);
        }
    }
    eprintln!(
        "topology: {} namespaces built in {:.1} s",
        count_namespaces(&lab),
        t.elapsed().as_secs_f64()
    );

    let mut ok = true;
    let mut cells: Vec<Cell> = Vec::new();
    if do_matrix {
        let t = Instant::now();
        eprintln!("matrix, IPv4 ({} kinds):", Kind::V4.len());
        cells.extend(matrix::run_matrix(&lab, &nx, &v4, &d4, only.as_deref())?);
        eprintln!("matrix, IPv6 ({} kinds):", Kind::V6.len());
        cells.extend(matrix::run_matrix(&lab, &nx, &v6, &d6, only.as_deref())?);
        eprintln!(
            "matrix: {} cells in {:.1} s",
            cells.len(),
            t.elapsed().as_secs_f64()
        );
        println!(
            "## Real NAT matrix (IPv4)\n\n{}",
            matrix::markdown(&Kind::V4, &cells)
        );
        println!(
            "## Real NAT matrix (IPv6)\n\n{}",
            matrix::markdown(&Kind::V6, &cells)
        );
        let problems: Vec<String> = cells.iter().flat_map(Cell::problems).collect();
        for c in &cells {
            if let (_, Some(why)) = c.expected() {
                println!(
                    "known difference, asserted: {} × {}: {} ({why})",
                    c.a, c.b, c.outcome
                );
            }
        }
        if problems.is_empty() {
            println!("every cell matches the simulator (or its documented difference)");
        } else {
            ok = false;
            for p in &problems {
                println!("MISMATCH: {p}");
            }
        }
    }
    let mut results: Vec<Scenario> = Vec::new();
    if failure_scenarios {
        let t = Instant::now();
        let mut restart_coordinators = [
            nx.coordinator(&internet, 3, false)?,
            nx.coordinator(&internet, 4, false)?,
        ];
        let (lab_ref, nx_ref, inet) = (&lab, &nx, &internet);
        let s = &sites;
        let rc = &mut restart_coordinators;
        let d4r = &d4;
        let outcomes: Vec<Result<Scenario>> = std::thread::scope(|scope| {
            let h1 =
                scope.spawn(move || scenarios::conntrack_flush(lab_ref, nx_ref, &s[0], &s[1], d4r));
            let h2 = scope.spawn(move || scenarios::rebinding(lab_ref, nx_ref, &s[2], &s[3], d4r));
            let h3 =
                scope.spawn(move || scenarios::blackhole(lab_ref, nx_ref, inet, &s[4], &s[5], d4r));
            let h4 =
                scope.spawn(move || scenarios::coordinator_restart(nx_ref, inet, &s[6], &s[7], rc));
            let h5 = scope.spawn(move || scenarios::rebinding(lab_ref, nx_ref, &s[8], &s[9], d4r));
            let h6 = scope.spawn(move || {
                scenarios::simultaneous_open_race(lab_ref, nx_ref, &s[10], &s[11], d4r)
            });
            [h1, h2, h5, h3, h4, h6]
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(LabError::Setup("a scenario panicked".into())))
                })
                .collect()
        });
        println!("## Failure scenarios\n");
        for r in outcomes {
            let sc = r?;
            print_scenario(&sc);
            ok &= sc.passed();
            results.push(sc);
        }
        eprintln!("scenarios: {:.1} s", t.elapsed().as_secs_f64());
    }
    if do_scenarios && !stun_only {
        let t = Instant::now();
        println!("## Port mapping against miniupnpd\n");
        let smol_map = binary(
            args.smol_map.as_ref(),
            "examples/smol_map",
            "cargo build --release -p natrix-smol --example smol_map",
            "--smol-map",
        )?;
        for sc in natrix_lab::portmap::miniupnpd(&mut lab, &nx, &internet, &d4, &smol_map)? {
            print_scenario(&sc);
            ok &= sc.passed();
            results.push(sc);
        }
        eprintln!("port mapping: {:.1} s", t.elapsed().as_secs_f64());
    }
    if do_scenarios && !portmap_only {
        let t = Instant::now();
        println!("## STUN behaviour discovery and coturn interop\n");
        for sc in natrix_lab::stun::interop(&mut lab, &nx, &internet, 60)? {
            print_scenario(&sc);
            ok &= sc.passed();
            results.push(sc);
        }
        eprintln!("STUN interop: {:.1} s", t.elapsed().as_secs_f64());
    }
    write_summary(&args.dir, &cells, &results);
    drop(c4);
    drop(c6);
    lab.teardown();
    Ok(ok)
}

fn print_scenario(sc: &Scenario) {
    match sc.kinds {
        Some((a, b)) => println!("### {} ({a} / {b})", sc.name),
        None => println!("### {}", sc.name),
    }
    for m in &sc.measured {
        println!("- measured: {m}");
    }
    for (what, held) in &sc.checks {
        println!("- [{}] {what}", if *held { "ok" } else { "FAILED" });
    }
}

fn parse_cells(cells: &[String]) -> Result<Vec<(Kind, Kind)>> {
    cells
        .iter()
        .map(|c| {
            let (a, b) = c
                .split_once(':')
                .ok_or_else(|| LabError::Setup(format!("--cell {c}: expected KIND:KIND")))?;
            Ok((
                a.parse().map_err(LabError::Setup)?,
                b.parse().map_err(LabError::Setup)?,
            ))
        })
        .collect()
}

fn count_namespaces(lab: &Lab) -> usize {
    netns::leftovers()
        .iter()
        .filter(|n| n.starts_with(lab.prefix()))
        .count()
}

fn write_summary(dir: &std::path::Path, cells: &[Cell], scenarios: &[Scenario]) {
    let doc = json!({
        "cells": cells.iter().map(|c| json!({
            "a": c.a.name(),
            "b": c.b.name(),
            "outcome": c.outcome.name(),
            "simulator": c.predicted.outcome.name(),
            "expected": c.expected().0.name(),
            "classes": [c.classes.0, c.classes.1],
            "first_datagram_s": c.first_datagram,
            "time_to_direct_s": c.time_to_direct,
            "keepalives": [c.keepalives.0, c.keepalives.1],
            "received": [c.received.0, c.received.1],
            "upgrade_error": c.upgrade_error,
            "problems": c.problems(),
        })).collect::<Vec<_>>(),
        "scenarios": scenarios.iter().map(|s| json!({
            "name": s.name,
            "kinds": s.kinds.map(|(a, b)| [a.name(), b.name()]),
            "measured": s.measured,
            "checks": s.checks.iter().map(|(w, ok)| json!({"check": w, "ok": ok})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    let file = dir.join("results.json");
    if let Err(e) = std::fs::write(
        &file,
        serde_json::to_string_pretty(&doc).unwrap_or_default(),
    ) {
        eprintln!("cannot write {}: {e}", file.display());
    }
}
