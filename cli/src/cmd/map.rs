//! `natrix map`: installs a port mapping on the gateway (PCP, NAT-PMP or
//! UPnP-IGD, in that order), prints it, renews it until interrupted, and
//! deletes it on exit (P4).
//!
//! The command binds the UDP port it maps and holds it while it runs; with
//! `--echo` it prints what arrives there, so the mapping can be tested from
//! outside (`echo hi | nc -u EXTERNAL_IP EXTERNAL_PORT`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use natrix_tokio::{PortMapConfig, PortMapEvent, PortMapProtocol, PortMapper, Tokio};

use crate::common::wait_for_signal;
use crate::error::{CliError, CliResult, Exit};

/// A protocol for `--protocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ProtoArg {
    /// Port Control Protocol (RFC 6887).
    Pcp,
    /// NAT-PMP (RFC 6886).
    Natpmp,
    /// UPnP Internet Gateway Device.
    Upnp,
}

impl From<ProtoArg> for PortMapProtocol {
    fn from(p: ProtoArg) -> Self {
        match p {
            ProtoArg::Pcp => PortMapProtocol::Pcp,
            ProtoArg::Natpmp => PortMapProtocol::NatPmp,
            ProtoArg::Upnp => PortMapProtocol::UpnpIgd,
        }
    }
}

/// `natrix map` options.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  natrix map --port 4000\n  \
natrix map --port 4000 --protocol natpmp --echo\n  \
natrix map --bind 2001:db8::2 --port 4000   (IPv6: a PCP pinhole)\n\
stdout: the external address and port, one line, once installed.\n\
Exit codes: 0 ok (deleted on exit), 1 no gateway, no mapping granted, or the deletion not confirmed, 2 bad arguments.")]
pub(crate) struct Args {
    /// The local UDP port to map (bound by this command while it runs).
    /// 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// The local IP to bind. Its family chooses the gateway: an IPv6
    /// address maps over IPv6 (PCP only: a pinhole in the gateway's
    /// firewall); `0.0.0.0` (the default) or an IPv4 address over IPv4.
    #[arg(long, value_name = "IP", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    bind: IpAddr,
    /// Use only this protocol. Default: PCP, then NAT-PMP, then UPnP-IGD.
    #[arg(long, value_enum)]
    protocol: Option<ProtoArg>,
    /// The lease to ask for, in seconds (renewed at half of what the
    /// gateway grants).
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    lifetime: u64,
    /// Print every datagram that arrives on the mapped port (to test the
    /// mapping from outside).
    #[arg(long)]
    echo: bool,
    /// Stop (and delete the mapping) after SECS. Default: at Ctrl-C.
    #[arg(long, value_name = "SECS")]
    run_for: Option<f64>,
}

/// Runs `natrix map`.
///
/// # Errors
/// Bad arguments; no gateway; no protocol answered.
pub(crate) async fn run(args: &Args, quiet: bool) -> CliResult<Exit> {
    if args.lifetime == 0 {
        return Err(CliError::usage("--lifetime must be at least 1 second"));
    }
    let run_for = match args.run_for {
        Some(s) if !s.is_finite() || s < 0.0 => {
            return Err(CliError::usage(format!(
                "--run-for {s} is not a number of seconds"
            )));
        }
        Some(s) => Some(Duration::from_secs_f64(s)),
        None => None,
    };
    let socket = UdpSocket::bind(SocketAddr::new(args.bind, args.port)).map_err(|e| {
        CliError::failure(format!(
            "cannot bind UDP {}: {e}",
            SocketAddr::new(args.bind, args.port)
        ))
    })?;
    let local = socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::new(args.bind, args.port));
    let port = local.port();
    if args.echo {
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                eprintln!(
                    "received from {from}: {}",
                    String::from_utf8_lossy(&buf[..n]).trim_end()
                );
            }
        });
    } else {
        // Hold the port while mapping it.
        std::mem::forget(socket);
    }
    let config = PortMapConfig {
        lifetime: Duration::from_secs(args.lifetime),
        only: args.protocol.map(Into::into),
        ..PortMapConfig::default()
    };
    let (mapper, task) = PortMapper::spawn(
        &Tokio,
        local,
        &config,
        u64::from_le_bytes(natrix_tokio::os_seed()[..8].try_into().unwrap_or_default()),
    )
    .map_err(|e| {
        CliError::new(Exit::Failure, format!("cannot start port mapping: {e}"))
            .hint("is there a default route? `ip route` shows it")
    })?;
    let state = mapper.state();
    if !quiet {
        eprintln!(
            "mapping UDP port {port} on gateway {}",
            state
                .gateway
                .map_or_else(|| "?".to_owned(), |g| g.to_string())
        );
    }
    let stop = async {
        match run_for {
            Some(d) => tokio::time::sleep(d).await,
            None => wait_for_signal().await,
        }
    };
    tokio::pin!(stop);
    let mut installed = false;
    let outcome: CliResult<()> = loop {
        tokio::select! {
            ev = mapper.next_event() => {
                let Some(ev) = ev else { break Ok(()) };
                match PortMapEvent::from(&ev) {
                    PortMapEvent::Installed { mapping, double_nat } => {
                        installed = true;
                        outln!("{}", mapping.external);
                        if !quiet {
                            eprintln!(
                                "mapped via {}: port {port} -> {} for {} s (renewed every {} s)",
                                mapping.protocol,
                                mapping.external,
                                mapping.lifetime.as_secs(),
                                (mapping.lifetime / 2).as_secs()
                            );
                        }
                        if double_nat {
                            eprintln!(
                                "warning: the gateway's external address {} is private or shared (100.64/10): \
                                 it is itself behind a NAT (double NAT); peers on the Internet cannot use this mapping",
                                mapping.external.ip()
                            );
                        }
                    }
                    PortMapEvent::Renewed(m) if !quiet => eprintln!("renewed: {} for {} s", m.external, m.lifetime.as_secs()),
                    PortMapEvent::GatewayRestarted(p) if !quiet => eprintln!("the gateway restarted ({p}: it lost the mapping); installing again"),
                    PortMapEvent::Lost(p) => eprintln!("lost the {p} mapping; probing again"),
                    PortMapEvent::Unavailable if !installed => break Err(unavailable(&mapper.state().errors)),
                    _ => {}
                }
            }
            () = &mut stop => break Ok(()),
        }
    };
    let deleted = mapper.shutdown().await;
    task.await;
    outcome?;
    match deleted {
        Ok(Some(p)) => {
            if !quiet {
                eprintln!("deleted the mapping ({p})");
            }
            Ok(Exit::Ok)
        }
        Ok(None) => Ok(Exit::Ok),
        Err((p, e)) => Err(CliError::new(
            Exit::Failure,
            format!("the gateway did not confirm deleting the {p} mapping: {e}"),
        )
        .hint("it expires on its own at the end of its lease")),
    }
}

/// Why no mapping could be installed, from each protocol's error: a
/// gateway behind another NAT (P6) is named as such.
fn unavailable(errors: &[(PortMapProtocol, natrix_tokio::MapError)]) -> CliError {
    let list: Vec<String> = errors.iter().map(|(p, e)| format!("{p}: {e}")).collect();
    if errors.iter().any(|(_, e)| e.is_double_nat()) {
        CliError::new(
            Exit::Failure,
            format!(
                "double NAT: the gateway has no public address of its own, so no mapping on it can be reached from the Internet ({})",
                list.join("; ")
            ),
        )
        .hint("the gateway is itself behind another NAT (an ISP router or carrier-grade NAT); map on the outer gateway, or rely on hole punching and the relay")
    } else if errors
        .iter()
        .all(|(_, e)| matches!(e, natrix_tokio::MapError::Timeout(_)))
    {
        CliError::new(
            Exit::Failure,
            format!("no port mapping service answered ({})", list.join("; ")),
        )
        .hint("the gateway may not offer PCP, NAT-PMP or UPnP-IGD, or has it turned off")
    } else {
        CliError::new(
            Exit::Failure,
            format!("the gateway did not grant a mapping ({})", list.join("; ")),
        )
        .hint("the gateway answered but refused; its port-mapping settings (allowed ports and clients) decide")
    }
}
