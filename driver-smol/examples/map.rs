//! A port mapping on smol, as an application embeds it: the port mapper
//! asks the routing table's default gateway for a mapping of a UDP port
//! (PCP, then NAT-PMP, then UPnP-IGD), prints the external address, prints
//! what arrives on the port, renews at half the lease, and deletes the
//! mapping when stdin closes or after `--run-for`.
//!
//! `cargo run -p natrix-smol --example smol_map -- [--port N] [--protocol pcp|natpmp|upnp] [--lifetime SECS] [--run-for SECS] [--async-std]`
//!
//! With `--async-std` the same code runs inside async-std's executor. This
//! example talks to your real gateway: natrix's lab runs it against
//! miniupnpd in network namespaces.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use natrix_smol::{PortMapConfig, PortMapEvent, PortMapProtocol, PortMapper, Smol, os_seed};

type Error = Box<dyn std::error::Error>;

struct Args {
    port: u16,
    lifetime: u64,
    run_for: Option<Duration>,
    only: Option<PortMapProtocol>,
    async_std: bool,
}

fn parse() -> Result<Args, Error> {
    let mut a = Args {
        port: 0,
        lifetime: 3600,
        run_for: None,
        only: None,
        async_std: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--port" => a.port = value()?.parse()?,
            "--lifetime" => a.lifetime = value()?.parse()?,
            "--run-for" => a.run_for = Some(Duration::from_secs_f64(value()?.parse()?)),
            "--protocol" => {
                a.only = Some(match value()?.as_str() {
                    "pcp" => PortMapProtocol::Pcp,
                    "natpmp" => PortMapProtocol::NatPmp,
                    "upnp" => PortMapProtocol::UpnpIgd,
                    other => return Err(format!("unknown protocol {other:?}").into()),
                });
            }
            "--async-std" => a.async_std = true,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    Ok(a)
}

fn main() {
    let result = parse().and_then(|args| {
        if args.async_std {
            async_std::task::block_on(run(&args))
        } else {
            smol::block_on(run(&args))
        }
    });
    if let Err(e) = result {
        eprintln!("smol_map failed: {e}");
        std::process::exit(1);
    }
}

async fn run(args: &Args) -> Result<(), Error> {
    // Bind the port first and hold it: the mapping points at it.
    let socket = UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, args.port)))?;
    let local = socket.local_addr()?;
    let port = local.port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]);
            eprintln!("received from {from}: {}", text.trim_end());
        }
    });

    // [map]
    let config = PortMapConfig {
        lifetime: Duration::from_secs(args.lifetime),
        only: args.only,
        ..PortMapConfig::default()
    };
    let seed = u64::from_le_bytes(os_seed()[..8].try_into()?);
    let (mapper, _task) = PortMapper::spawn(&Smol, local, &config, seed)?;
    // [map]

    // Stop at end of stdin (or after --run-for).
    let (stop_tx, stop) = smol::channel::bounded::<()>(1);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = stop_tx.try_send(());
    });
    let run_for = args.run_for;
    let deadline = async move {
        match run_for {
            Some(d) => {
                smol::Timer::after(d).await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    let stopped = smol::future::or(
        async {
            let _ = stop.recv().await;
        },
        deadline,
    );
    let events = async {
        while let Some(ev) = mapper.next_event().await {
            match PortMapEvent::from(&ev) {
                PortMapEvent::Installed {
                    mapping,
                    double_nat,
                } => {
                    println!("{}", mapping.external);
                    eprintln!(
                        "installed via {}: port {port} -> {} for {} s{}",
                        mapping.protocol,
                        mapping.external,
                        mapping.lifetime.as_secs(),
                        if double_nat { " (double NAT)" } else { "" }
                    );
                }
                PortMapEvent::Renewed(m) => eprintln!("renewed: {}", m.external),
                PortMapEvent::GatewayRestarted(p) => eprintln!("the gateway restarted ({p})"),
                PortMapEvent::Lost(p) => eprintln!("lost the {p} mapping"),
                PortMapEvent::Unavailable => {
                    eprintln!("no mapping: {:?}", mapper.state().errors);
                    return;
                }
                _ => {}
            }
        }
    };
    smol::future::or(stopped, events).await;
    // [shutdown]
    match mapper.shutdown().await {
        Ok(Some(p)) => eprintln!("deleted the mapping ({p})"),
        Ok(None) => eprintln!("nothing to delete"),
        Err((p, e)) => return Err(format!("the {p} mapping was not deleted: {e}").into()),
    }
    // [shutdown]
    Ok(())
}
