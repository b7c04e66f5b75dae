//! `natrix coordinator`: rendezvous, reflex answers, the directory and the
//! relay, until interrupted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use natrix_tokio::{Coordinator, CoordinatorConfig, RelayConfig, StunConfig, Tokio, os_seed};

use crate::common::{default_key_path, load_or_create_key, wait_for_signal};
use crate::error::{CliError, CliResult, Exit};

/// `natrix coordinator` options.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  natrix coordinator --listen 0.0.0.0:7000 --public-addr 203.0.113.7:7000\n  \
natrix1q…@203.0.113.7:7000   (the dial string, on stdout: peers pass it to --coordinator)"
)]
pub(crate) struct Args {
    /// UDP address to listen on.
    #[arg(long, short, default_value = "0.0.0.0:7000")]
    pub listen: SocketAddr,
    /// The address peers reach this coordinator at, when it differs from
    /// --listen (a wildcard listen address, a port forward).
    #[arg(long)]
    pub public_addr: Option<SocketAddr>,
    /// Key file (created with a new identity if missing). Default: $NATRIX_KEY,
    /// else ~/.config/natrix/key.
    #[arg(long, short)]
    pub key: Option<PathBuf>,
    /// Do not relay (peers that cannot punch get a typed refusal).
    #[arg(long)]
    pub no_relay: bool,
    /// Relay quota: bytes per second per circuit.
    #[arg(long, default_value_t = 128 * 1024)]
    pub relay_rate: u64,
    /// Relay quota: circuits a peer may open.
    #[arg(long, default_value_t = 8)]
    pub relay_circuits_per_peer: usize,
    /// Relay quota: circuits in all.
    #[arg(long, default_value_t = 1024)]
    pub relay_circuits: usize,
    /// Relay quota: seconds a circuit may stay idle.
    #[arg(long, default_value_t = 60)]
    pub relay_idle_secs: u64,
    /// Relay quota: bytes a circuit may carry (none by default).
    #[arg(long)]
    pub relay_max_bytes: Option<u64>,
    /// Relay quota: seconds a circuit may live (none by default).
    #[arg(long)]
    pub relay_max_secs: Option<u64>,
    /// The receive buffer (SO_RCVBUF) to ask the OS for on the socket, in
    /// bytes; 0 keeps the OS default. The OS may grant less (Linux:
    /// net.core.rmem_max).
    #[arg(long, value_name = "BYTES", default_value_t = natrix_tokio::DEFAULT_RECV_BUFFER)]
    pub recv_buffer: usize,
    /// Do not answer STUN Binding requests (by default the coordinator
    /// answers them on its socket, rate-limited per source).
    #[arg(long)]
    pub no_stun: bool,
    /// RFC 5780: the coordinator's other IP and other port (IP2:PORT2), so
    /// STUN clients can measure their NAT's mapping and filtering. The
    /// coordinator then also listens on (IP1, PORT2), (IP2, PORT1) and (IP2,
    /// PORT2); both IPs must be this host's own, and --listen a specific IP.
    #[arg(long, value_name = "IP2:PORT2")]
    pub stun_alternate: Option<SocketAddr>,
    /// STUN: answers per second per source IP.
    #[arg(long, default_value_t = StunConfig::default().rate_per_source)]
    pub stun_rate: u32,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long)]
    pub run_for: Option<u64>,
}

impl Args {
    fn stun(&self) -> CliResult<Option<StunConfig>> {
        if self.no_stun {
            if self.stun_alternate.is_some() {
                return Err(CliError::usage(
                    "--stun-alternate needs STUN: drop --no-stun",
                ));
            }
            return Ok(None);
        }
        if let Some(alt) = self.stun_alternate {
            let primary = self.public_addr.unwrap_or(self.listen);
            if self.listen.ip().is_unspecified() {
                return Err(CliError::usage(
                    "--stun-alternate needs --listen on a specific IP (the RFC 5780 answers come from both IPs)",
                ));
            }
            if alt.ip() == primary.ip() || alt.port() == primary.port() {
                return Err(CliError::usage(format!(
                    "--stun-alternate {alt} must differ from {primary} in both IP and port (RFC 5780)"
                )));
            }
        }
        if self.stun_rate == 0 {
            return Err(CliError::usage("--stun-rate must be at least 1"));
        }
        let d = StunConfig::default();
        Ok(Some(StunConfig {
            alternate: self.stun_alternate,
            rate_per_source: self.stun_rate,
            burst_per_source: d.burst_per_source.max(self.stun_rate.saturating_mul(2)),
            ..d
        }))
    }

    fn relay(&self) -> CliResult<Option<RelayConfig>> {
        if self.no_relay {
            return Ok(None);
        }
        let config = RelayConfig {
            rate_bytes_per_sec: self.relay_rate,
            burst_bytes: self
                .relay_rate
                .max(natrix_session::relay::MAX_RELAYED_PACKET as u64),
            idle_close: Duration::from_secs(self.relay_idle_secs),
            circuits_per_peer: self.relay_circuits_per_peer,
            max_circuits: self.relay_circuits,
            max_bytes: self.relay_max_bytes,
            max_duration: self.relay_max_secs.map(Duration::from_secs),
        };
        config
            .validate()
            .map_err(|e| CliError::usage(format!("bad relay quota: {e}")))?;
        Ok(Some(config))
    }
}

/// Runs the coordinator until Ctrl-C (or `--run-for`), then shuts it down.
///
/// # Errors
/// Key file, bad quota, or a socket that cannot be bound.
pub(crate) async fn run(args: &Args, quiet: bool) -> CliResult<Exit> {
    let path = args.key.clone().unwrap_or_else(default_key_path);
    let (keypair, created) = load_or_create_key(&path)?;
    if created && !quiet {
        eprintln!("created a new identity in {}", path.display());
    }
    let mut config = CoordinatorConfig::new(args.listen);
    config.public_addr = args.public_addr;
    config.relay = args.relay()?;
    config.stun = args.stun()?;
    config.recv_buffer = Some(args.recv_buffer).filter(|&b| b > 0);
    let config_stun = config.stun;
    let coordinator = Coordinator::spawn(Tokio, keypair, config, os_seed()).map_err(|e| {
        CliError::failure(format!("cannot listen on {}: {e}", args.listen))
            .hint("is the port in use? pick another with --listen")
    })?;
    let public = coordinator.public_addr();
    if public.ip().is_unspecified() && !quiet {
        eprintln!(
            "warning: listening on a wildcard address; peers need a real one: pass --public-addr IP:{}",
            public.port()
        );
    }
    outln!("{}", coordinator.dial());
    if !quiet {
        eprintln!(
            "coordinator running on {} (relay {}, STUN {}); Ctrl-C stops it",
            coordinator.node().local_addr(),
            if args.no_relay { "off" } else { "on" },
            match (&config_stun, args.stun_alternate) {
                (None, _) => "off".to_owned(),
                (Some(_), None) => "on".to_owned(),
                (Some(_), Some(alt)) => format!("on, RFC 5780 with {alt}"),
            }
        );
    }
    match args.run_for {
        Some(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
        None => wait_for_signal().await,
    }
    let stats = coordinator.stats();
    let relay = coordinator.node().relay_stats().unwrap_or_default();
    let sessions = coordinator.session_stats();
    let stun = coordinator.node().stun_stats().unwrap_or_default();
    coordinator.shutdown().await;
    if !quiet {
        eprintln!(
            "stopped: {} sessions live, {} punches mediated, {} frames relayed ({} B), {} refused; STUN: {} answered, {} rate-limited",
            sessions.sessions_live,
            stats.requests_mediated,
            relay.frames_forwarded,
            relay.bytes_forwarded,
            relay.refused_total(),
            stun.answered,
            stun.rate_limited
        );
    }
    Ok(Exit::Ok)
}
