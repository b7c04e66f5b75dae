//! `natrix`: run a coordinator, connect two machines behind NATs, see what
//! your NAT does. See `docs/cli.md`.

#[macro_use]
mod out;
mod cmd;
mod common;
mod error;
mod report;

use std::process::ExitCode;

use clap::{ArgAction, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::error::Exit;

/// NAT traversal with natrix: keys, a coordinator, connections, netcheck.
#[derive(Debug, Parser)]
#[command(name = "natrix", version, about, long_about = None)]
#[command(
    after_help = "Examples:\n  natrix demo\n  natrix coordinator --listen 0.0.0.0:7000 --public-addr 203.0.113.7:7000\n\n\
Exit codes: 0 ok, 1 failure, 2 bad arguments, 3 key file problem, \
4 could not reach a coordinator, 5 peer unreachable, 6 relayed only (--require-direct).\n\
Logs: -v, -vv, or RUST_LOG=natrix=debug. More: docs/cli.md."
)]
struct Cli {
    /// More logging on stderr (-v: info, -vv: debug, -vvv: trace).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,
    /// No progress line and no status messages (errors still go to stderr).
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a key file and print the public key.
    Keygen(cmd::keygen::Args),
    /// Run a coordinator: rendezvous, reflex answers, directory and relay.
    Coordinator(cmd::coordinator::Args),
    /// Wait for peers to connect and pipe stdin/stdout with each (netcat).
    Listen(cmd::netcat::ListenArgs),
    /// Connect to a peer's public key and pipe stdin/stdout (netcat).
    Connect(cmd::netcat::ConnectArgs),
    /// Report what the network and the NAT in front of this host do.
    Netcheck(cmd::netcheck::Args),
    /// Install a port mapping on the gateway (PCP, NAT-PMP, UPnP-IGD), renew it, delete it on exit.
    Map(cmd::map::Args),
    /// Run the NAT pair matrix on the simulator.
    Sim(cmd::sim::Args),
    /// A coordinator and two peers in one process on loopback: relay, then direct.
    Demo(cmd::demo::Args),
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let quiet = cli.quiet;
    let result = match cli.command {
        Command::Keygen(a) => cmd::keygen::run(&a, quiet),
        Command::Sim(a) => cmd::sim::run(&a),
        command => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return Exit::Failure.into();
                }
            };
            rt.block_on(async move {
                match command {
                    Command::Coordinator(a) => cmd::coordinator::run(&a, quiet).await,
                    Command::Listen(a) => cmd::netcat::listen(&a, quiet).await,
                    Command::Connect(a) => cmd::netcat::connect(&a, quiet).await,
                    Command::Netcheck(a) => cmd::netcheck::run(&a, quiet).await,
                    Command::Map(a) => cmd::map::run(&a, quiet).await,
                    Command::Demo(a) => cmd::demo::run(&a, quiet).await,
                    Command::Keygen(_) | Command::Sim(_) => unreachable!("handled above"),
                }
            })
        }
    };
    match result {
        Ok(exit) => exit.into(),
        Err(e) => {
            eprintln!("{e}");
            e.exit.into()
        }
    }
}
