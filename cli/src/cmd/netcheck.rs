//! `natrix netcheck`: what the network and the NAT in front of this host do,
//! measured against one or more coordinators.
//!
//! For each address family a coordinator is given in, netcheck starts a
//! throwaway node (one socket per family: `0.0.0.0:0` for IPv4, `[::]:0` for
//! IPv6), waits for its sessions with the coordinators, asks each of them
//! which address it sees this host at (a reflex probe, C5), and runs one
//! classification sweep (C1–C4). Then it stops the nodes and prints the
//! report: aligned `key: value` lines ending with a one-line summary, or one
//! JSON document ([`Report`]) with `--json`.
//!
//! Probe only (D1): netcheck installs nothing on the gateway and changes the
//! state of no other node; its nodes live for the run and use a fresh
//! identity each unless `--key` is given. The NAT's behaviour (mapping,
//! filtering, port allocation, hairpinning, and with `--lifetime` the
//! binding lifetime, which takes minutes; C8) is measured with STUN
//! against `--stun` or the first coordinator — mapping and filtering need an
//! RFC 5780 server, else only a heuristic for the mapping is given — and
//! the gateway's port-mapping services (UPnP-IGD, NAT-PMP, PCP) are asked
//! with questions that install nothing (D1). What cannot be measured says
//! why.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use natrix_driver_core::interface_addrs;
use natrix_proto::{FilteringBehaviour, MappingBehaviour, NatClass, PortAllocation, SweepOutcome};
use natrix_tokio::{Keypair, LifetimeConfig, Node, NotMeasured, PublicKey, Reclassified, os_seed};
use serde::Serialize;

use crate::common::{PeerOptions, Progress, load_key, resolve_dial, resolve_host_port, spawn_peer};
use crate::error::{CliError, CliResult, Exit};

/// The version of the JSON document's layout ([`Report::version`]). Fields
/// are only ever added within a version; a rename or removal bumps it.
pub(crate) const REPORT_VERSION: u32 = 1;

/// The issue that brings behaviour discovery (C8).
const C8_ISSUE: &str = "needs STUN behaviour discovery against an RFC 5780 server (--stun, or a coordinator with --stun-alternate)";
/// How long netcheck waits for the gateway's port-mapping services.
const PORT_MAPPING_WAIT: Duration = Duration::from_secs(2);
/// Why a family's class and mapping need more coordinators.
const NEEDS_TWO_IPS: &str = "needs two coordinators at different IPs";

/// `natrix netcheck` options.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  natrix netcheck --coordinator natrix1…@203.0.113.7:7000 \
--coordinator natrix1…@198.51.100.9:7000\n  natrix netcheck --coordinator natrix1…@203.0.113.7:7000 \
--coordinator natrix1…@[2001:db8::7]:7000 --json\n\n\
The NAT class and the mapping need two coordinators at different IPs of the same \
family. Exit codes: 0 at least one coordinator answered, 2 bad arguments, 3 key file \
problem (--key), 4 no coordinator answered (the report is still printed)."
)]
pub(crate) struct Args {
    /// A coordinator's dial string, `natrix1…@host:port` (IPv4 or IPv6;
    /// repeat the flag for more coordinators).
    #[arg(
        long = "coordinator",
        value_name = "DIAL",
        required_unless_present = "stun"
    )]
    pub(crate) coordinators: Vec<String>,
    /// A STUN server (`host:port`) to discover the NAT's behaviour against
    /// (C8: mapping, filtering, port allocation, hairpinning; mapping and
    /// filtering need an RFC 5780 server, with two addresses). Default: the
    /// first coordinator, which answers STUN on its own address.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) stun: Option<String>,
    /// Do not run STUN behaviour discovery.
    #[arg(long, conflicts_with = "stun")]
    pub(crate) no_stun: bool,
    /// The local UDP port STUN discovery measures from (default: any). A
    /// NAT may treat a forwarded or statically mapped port differently.
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    pub(crate) stun_local_port: u16,
    /// Also measure how long the NAT keeps an idle binding (RFC 5780 §4.6),
    /// up to MAX_SECS, to within 5 s. Opt-in and slow: a binary search with
    /// idle waits, up to about MAX × log2(MAX/5) seconds in all (minutes on a
    /// real NAT), during which the STUN socket stays idle; the report waits
    /// for it.
    #[arg(
        long,
        value_name = "MAX_SECS",
        conflicts_with = "no_stun",
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub(crate) lifetime: Option<u64>,
    /// Print one JSON document on stdout instead of the human report.
    #[arg(long)]
    pub(crate) json: bool,
    /// Seconds to wait for each step: the coordinators' sessions, the reflex
    /// probes, the classification sweep.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub(crate) timeout: f64,
    /// Do not ask the gateway about port mapping (PCP, NAT-PMP, UPnP-IGD);
    /// by default netcheck asks, with questions that install nothing (D1).
    #[arg(long)]
    pub(crate) no_port_mapping: bool,
    /// Use this key file's identity instead of a fresh throwaway one (the
    /// file must exist; a node running elsewhere with the same key may lose
    /// its coordinator sessions while netcheck runs).
    #[arg(long, short, value_name = "FILE")]
    pub(crate) key: Option<PathBuf>,
}

// ------------------------------------------------------------ the document

/// The report: the JSON document of `natrix netcheck --json`, and what the
/// human output prints.
///
/// Addresses are strings (`"203.0.113.7:41641"`, `"[2001:db8::1]:41641"`,
/// IPs without a port for interfaces); durations are milliseconds as numbers.
/// A field that could not be observed is `null`; a property that netcheck
/// cannot establish is a [`Measure`] whose `status` says why.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// Layout version of this document (currently 1).
    pub(crate) version: u32,
    /// Whether at least one coordinator answered (exit code 0; else 4).
    pub(crate) ok: bool,
    /// Whether the nodes used fresh throwaway identities (`false` with `--key`).
    pub(crate) throwaway_identity: bool,
    /// The bound on each step, in seconds (`--timeout`).
    pub(crate) timeout_secs: f64,
    /// The host's interface addresses, as the OS lists them (sorted).
    pub(crate) interfaces: Vec<IpAddr>,
    /// One entry per `--coordinator`, in the order given.
    pub(crate) coordinators: Vec<CoordinatorReport>,
    /// The IPv4 findings; `null` when no IPv4 coordinator was given.
    pub(crate) ipv4: Option<FamilyReport>,
    /// The IPv6 findings; `null` when no IPv6 coordinator was given.
    pub(crate) ipv6: Option<FamilyReport>,
    /// Port-mapping services on the gateway.
    pub(crate) port_mapping: PortMapping,
    /// NAT behaviour discovery against a STUN server (C8); `null` with
    /// `--no-stun`. Its mapping, filtering and port allocation, when
    /// measured, also replace the family's heuristics.
    pub(crate) stun: Option<StunReport>,
    /// One line in plain language: the report's conclusion.
    pub(crate) summary: String,
}

/// NAT behaviour discovery against one STUN server (C8), in RFC 4787 terms.
#[derive(Debug, Serialize)]
pub(crate) struct StunReport {
    /// The server asked (its primary address).
    pub(crate) server: SocketAddr,
    /// The server's other address (RFC 5780 OTHER-ADDRESS); `null` when it
    /// offers none (then mapping and filtering cannot be measured).
    pub(crate) other_address: Option<SocketAddr>,
    /// This host's address as the server saw it; `null` without an answer.
    pub(crate) mapped: Option<SocketAddr>,
    /// `"yes"` (translated) or `"no"` (the server saw this host's own
    /// address).
    pub(crate) nat: Measure,
    /// `"endpoint-independent"`, `"address-dependent"` or
    /// `"address-and-port-dependent"` (RFC 4787 §4.1).
    pub(crate) mapping: Measure,
    /// The same three words for filtering (RFC 4787 §5).
    pub(crate) filtering: Measure,
    /// `"preserving"`, `"sequential"` (detail: the step) or `"random"`.
    pub(crate) port_allocation: Measure,
    /// `"yes"` or `"no"`: a datagram to the host's own public address comes
    /// back (RFC 4787 §6).
    pub(crate) hairpin: Measure,
    /// How long an idle mapping lives, with `--lifetime` (RFC 5780 §4.6):
    /// `"lower-bound"` (alive after `binding_lifetime_ms` idle, gone after
    /// somewhat longer) or `"at-least-max"` (still alive after the longest
    /// idle time tried); else `"not_measured"` (it takes minutes: opt in).
    pub(crate) binding_lifetime: Measure,
    /// The longest idle time after which the mapping was found alive, in
    /// ms (a lower bound of its lifetime); `null` unless measured.
    pub(crate) binding_lifetime_ms: Option<u64>,
    /// The NAT class this behaviour implies (`"open"`, `"cone"`,
    /// `"symmetric"`, `"unknown"`).
    pub(crate) nat_class: &'static str,
    /// One line in plain language.
    pub(crate) summary: String,
}

/// What one coordinator answered.
#[derive(Debug, Serialize)]
pub(crate) struct CoordinatorReport {
    /// The dial string as given.
    pub(crate) dial: String,
    /// The coordinator's public key (`natrix1…`).
    pub(crate) key: String,
    /// The address dialled (the host resolved); `null` when the host name
    /// did not resolve.
    pub(crate) addr: Option<SocketAddr>,
    /// `"ipv4"` or `"ipv6"`: the family of `addr`, and so which node dialled
    /// it; `null` when the host did not resolve.
    pub(crate) family: Option<Family>,
    /// Whether an authenticated session with it came up within the timeout.
    pub(crate) reachable: bool,
    /// The session's round-trip estimate (handshake or clock ping), in ms;
    /// `null` when unreachable or not estimated.
    pub(crate) rtt_ms: Option<f64>,
    /// How long the reflex probe took from request to answer, in ms (a
    /// second latency figure, including both ends' processing); `null`
    /// without an answer.
    pub(crate) probe_rtt_ms: Option<f64>,
    /// The address this coordinator sees this host at (the reflex, from the
    /// authenticated session, C5); `null` without an answer.
    pub(crate) reflex: Option<SocketAddr>,
    /// Why it did not answer (or why the probe failed); `null` when all went
    /// well.
    pub(crate) error: Option<String>,
}

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Family {
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
}

impl Family {
    fn of(addr: &SocketAddr) -> Family {
        if addr.is_ipv4() {
            Family::Ipv4
        } else {
            Family::Ipv6
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        }
    }

    fn wildcard(self) -> SocketAddr {
        match self {
            Family::Ipv4 => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            Family::Ipv6 => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        }
    }
}

/// What netcheck found for one address family (one node, one socket).
#[derive(Debug, Serialize)]
pub(crate) struct FamilyReport {
    /// The node's public key for this family (a throwaway one unless `--key`).
    pub(crate) identity: String,
    /// The node socket's bound address (`0.0.0.0:PORT` or `[::]:PORT`);
    /// `null` when the socket could not be bound.
    pub(crate) bound: Option<SocketAddr>,
    /// Why the family could not be tested (a socket that cannot be bound);
    /// `null` otherwise.
    pub(crate) error: Option<String>,
    /// Coordinators of this family given.
    pub(crate) coordinators: usize,
    /// Of those, how many answered (a session came up).
    pub(crate) answered: usize,
    /// Distinct coordinator IPs that reported a reflex (the NAT class and
    /// the mapping need 2, C4).
    pub(crate) destinations: usize,
    /// This host's public address in this family: the classification's
    /// reflex when the sweep committed one, else the first coordinator's
    /// answer; `null` when none answered.
    pub(crate) reflex: Option<SocketAddr>,
    /// Whether the reflex IP is one of this host's interface addresses (no
    /// NAT in this family); `null` without a reflex.
    pub(crate) reflex_is_local: Option<bool>,
    /// Whether the reflex port equals the bound port (no NAT, or a
    /// port-preserving NAT); `null` without a reflex.
    pub(crate) port_preserved: Option<bool>,
    /// NAT class from the classification sweep (C1–C4): value `"open"`,
    /// `"cone"`, `"symmetric"` or `"unknown"`, status `"measured"`; or
    /// `"not_measured"` with the reason (fewer than two coordinators at
    /// distinct IPs answered, the sweep missed its deadline, …).
    pub(crate) nat_class: Measure,
    /// Mapping behaviour: `"heuristic"` with value `"endpoint-independent"`
    /// (coordinators at different IPs saw the same reflex) or
    /// `"endpoint-dependent"` (they saw different ones); `"not_measured"`
    /// with one coordinator IP; `"measured"` by STUN behaviour discovery
    /// (C8) against an RFC 5780 server.
    pub(crate) mapping: Measure,
    /// Filtering behaviour: `"measured"` by STUN behaviour discovery (C8)
    /// against an RFC 5780 server, else `"not_measured"`.
    pub(crate) filtering: Measure,
    /// Port allocation (preserving / sequential / random): `"not_measured"`
    /// unless STUN behaviour discovery (C8) measured it.
    pub(crate) port_allocation: Measure,
}

/// A property netcheck measures, guesses or cannot establish.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Measure {
    /// `"measured"`, `"heuristic"` (an inference, see `detail`),
    /// `"not_measured"` (netcheck cannot establish it, see `detail`) or
    /// `"not_probed"` (netcheck does not look for it yet).
    pub(crate) status: Status,
    /// The finding (a lower-case word, e.g. `"cone"`); `null` unless
    /// `status` is `"measured"` or `"heuristic"`.
    pub(crate) value: Option<&'static str>,
    /// Why it is not measured, or what a heuristic rests on; `null` for a
    /// plain measurement.
    pub(crate) detail: Option<String>,
}

/// How a [`Measure`] was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    /// Measured.
    Measured,
    /// Inferred from what was measured.
    Heuristic,
    /// Cannot be established (yet, or with these coordinators).
    NotMeasured,
    /// Not looked for.
    NotProbed,
}

impl Measure {
    fn measured(value: &'static str) -> Self {
        Measure {
            status: Status::Measured,
            value: Some(value),
            detail: None,
        }
    }

    fn heuristic(value: &'static str, detail: impl Into<String>) -> Self {
        Measure {
            status: Status::Heuristic,
            value: Some(value),
            detail: Some(detail.into()),
        }
    }

    fn not_measured(detail: impl Into<String>) -> Self {
        Measure {
            status: Status::NotMeasured,
            value: None,
            detail: Some(detail.into()),
        }
    }

    fn not_probed(detail: impl Into<String>) -> Self {
        Measure {
            status: Status::NotProbed,
            value: None,
            detail: Some(detail.into()),
        }
    }

    /// The human form: the value, with the detail in parentheses.
    fn human(&self) -> String {
        let label = match (self.status, self.value) {
            (Status::Measured, Some(v)) => v.to_owned(),
            (Status::Heuristic, Some(v)) => format!("{v} (heuristic)"),
            (Status::NotProbed, _) => "not probed".to_owned(),
            _ => "not measured".to_owned(),
        };
        match &self.detail {
            Some(d) => format!("{label}: {d}"),
            None => label,
        }
    }
}

/// Port-mapping services on the gateway (UPnP-IGD, NAT-PMP, PCP): whether
/// each answered a question that installs nothing (D1: a PCP ANNOUNCE, a
/// NAT-PMP external-address request, an SSDP search), and what it said.
/// `"not_measured"` without a default gateway.
#[derive(Debug, Serialize)]
pub(crate) struct PortMapping {
    /// UPnP Internet Gateway Device.
    pub(crate) upnp_igd: Measure,
    /// NAT-PMP (RFC 6886).
    pub(crate) nat_pmp: Measure,
    /// PCP (RFC 6887).
    pub(crate) pcp: Measure,
    /// P6: whether the gateway is itself behind another NAT, from the
    /// NAT-PMP answer: `"yes"` when its external address is private or
    /// shared (100.64/10) or it says it has none, `"no"` for a public one.
    pub(crate) double_nat: Measure,
}

impl PortMapping {
    /// The same measure in every row (no gateway, not asked…).
    fn all(m: &Measure) -> Self {
        PortMapping {
            upnp_igd: m.clone(),
            nat_pmp: m.clone(),
            pcp: m.clone(),
            double_nat: m.clone(),
        }
    }
}

// ------------------------------------------------------------ measuring

/// One `--coordinator`, resolved.
struct Target {
    dial: String,
    key: PublicKey,
    addr: Option<SocketAddr>,
    /// Why the host did not resolve.
    resolve_error: Option<String>,
}

/// What was measured for one target.
#[derive(Default)]
struct Answer {
    rtt: Option<Duration>,
    probe_rtt: Option<Duration>,
    reflex: Option<SocketAddr>,
    reachable: bool,
    error: Option<String>,
}

/// One family's node, or why it has none.
struct FamilyNode {
    family: Family,
    identity: PublicKey,
    node: Result<Arc<Node>, String>,
}

/// A run in progress: the coordinators, one node per family, and what each
/// coordinator answered so far.
struct Check {
    targets: Vec<Target>,
    nodes: Vec<FamilyNode>,
    answers: Vec<Answer>,
    timeout: Duration,
    started: Instant,
}

/// Runs netcheck.
///
/// # Errors
/// [`Exit::Usage`] for a bad dial string or timeout, [`Exit::KeyFile`] for
/// `--key`, [`Exit::NoCoordinator`] when no coordinator answered (after
/// printing the report).
pub(crate) async fn run(args: &Args, quiet: bool) -> CliResult<Exit> {
    let timeout = parse_timeout(args.timeout)?;
    let key = args.key.as_deref().map(load_key).transpose()?;
    let targets = resolve_targets(&args.coordinators)?;
    let mut progress = Progress::new(quiet);

    // The gateway's port-mapping services, meanwhile (D1: nothing installed).
    let port_mapping =
        (!args.no_port_mapping).then(|| tokio::spawn(probe_port_mapping(PORT_MAPPING_WAIT)));
    let stun_server = if args.no_stun {
        None
    } else {
        match &args.stun {
            Some(s) => Some(resolve_host_port("--stun", s)?),
            None => targets.iter().find_map(|t| t.addr),
        }
    };
    let local_port = args.stun_local_port;
    let lifetime = args
        .lifetime
        .map(|max| LifetimeConfig::new(Duration::from_secs(max)));
    let stun = stun_server.map(|server| {
        let seed = u64::from_le_bytes(os_seed()[..8].try_into().unwrap_or_default());
        (
            server,
            tokio::spawn(async move {
                natrix_tokio::discover_behaviour_with(
                    &natrix_tokio::Tokio,
                    server,
                    local_port,
                    seed,
                    lifetime,
                )
                .await
            }),
        )
    });
    let mut check = Check::start(targets, key.as_ref(), timeout);
    check.wait_sessions(&mut progress).await;
    check.probe_reflexes(&mut progress).await;
    let outcomes = check.sweep(&mut progress).await;
    check.stop().await;
    let stun = match stun {
        Some((server, task)) => {
            if let Some(l) = lifetime.filter(|_| !task.is_finished()) {
                progress.update(&format!(
                    "netcheck: measuring the NAT binding lifetime (idle waits, up to about {})",
                    secs(l.max_idle())
                ));
            }
            Some((server, task.await))
        }
        None => None,
    };
    progress.finish(&format!(
        "netcheck: done in {:.1}s",
        check.started.elapsed().as_secs_f64()
    ));
    let mut report = check.report(outcomes, key.is_none());
    match port_mapping {
        Some(task) => {
            if let Ok(pm) = task.await {
                report.port_mapping = pm;
            }
        }
        None => {
            report.port_mapping =
                PortMapping::all(&Measure::not_probed("not asked (--no-port-mapping)"));
        }
    }
    if let Some((server, result)) = stun {
        let section = match result {
            Ok(Ok(found)) => stun_report(server, &found, lifetime),
            Ok(Err(e)) => stun_failed(server, &format!("cannot bind a socket: {e}")),
            Err(e) => stun_failed(server, &format!("the discovery task failed: {e}")),
        };
        adopt_stun(&mut report, &section);
        report.stun = Some(section);
    }
    report.summary = summary(&report);

    if args.json {
        let doc = serde_json::to_string_pretty(&report)
            .map_err(|e| CliError::failure(format!("cannot write the JSON report: {e}")))?;
        outln!("{doc}");
    } else {
        out!("{}", human(&report));
    }
    if report.ok {
        Ok(Exit::Ok)
    } else {
        Err(CliError::new(
            Exit::NoCoordinator,
            format!("no coordinator answered within {}", secs(timeout)),
        )
        .hint(
            "is the coordinator running and reachable over UDP (a firewall?), \
             and is the dial string the one `natrix coordinator` printed?",
        ))
    }
}

/// D1: asks the routing table's default gateway which port-mapping
/// services it offers, with questions that install nothing
/// (`natrix_portmap::probe`), for at most `wait`.
async fn probe_port_mapping(wait: Duration) -> PortMapping {
    use natrix_portmap::probe::Probe;
    let gateway = natrix_tokio::default_gateway();
    let Some(gw) = gateway.v4.map(IpAddr::V4).or(gateway.v6.map(IpAddr::V6)) else {
        return PortMapping::all(&Measure::not_measured(
            "no default gateway in the routing table",
        ));
    };
    let bind: SocketAddr = if gw.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let failed = |why: String| PortMapping::all(&Measure::not_measured(why));
    let socket = match tokio::net::UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(e) => return failed(format!("cannot bind a socket: {e}")),
    };
    let client_ip = match natrix_driver_core::portmap::local_ip_toward(gw) {
        Ok(ip) => ip,
        Err(e) => return failed(format!("no route to the gateway {gw}: {e}")),
    };
    let started = Instant::now();
    let now = || {
        natrix_proto::Instant::from_nanos(
            u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
        )
    };
    let mut probe = Probe::new(gw, client_ip, wait);
    probe.start(now());
    while let Some(natrix_portmap::Transmit::Udp { to, payload }) = probe.poll_transmit() {
        let _ = socket.send_to(&payload, to).await;
    }
    let mut buf = [0u8; 2048];
    while !probe.is_done() {
        let left = wait.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, socket.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) => probe.handle_udp(now(), from, &buf[..n]),
            Ok(Err(_)) => {}
            Err(_) => probe.handle_timeout(now()),
        }
    }
    let r = probe.report();
    let silent = || Measure {
        status: Status::Measured,
        value: Some("no answer"),
        detail: Some(format!("gateway {gw}, {}", secs(wait))),
    };
    let answered = |detail: String| Measure {
        status: Status::Measured,
        value: Some("answers"),
        detail: Some(detail),
    };
    PortMapping {
        upnp_igd: r.upnp.as_ref().map_or_else(silent, |(loc, server)| {
            answered(match server {
                Some(sv) => format!("{loc} ({sv})"),
                None => loc.clone(),
            })
        }),
        nat_pmp: r.natpmp.as_ref().map_or_else(silent, |(result, ext)| {
            answered(match ext {
                Some(ip) => format!("external address {ip}"),
                None => format!("result {result}"),
            })
        }),
        pcp: r.pcp.as_ref().map_or_else(silent, |(result, epoch)| {
            answered(format!("result {result}, epoch {epoch} s"))
        }),
        double_nat: match (r.double_nat(), &r.natpmp) {
            (Some(true), Some((_, Some(ip)))) => Measure {
                status: Status::Measured,
                value: Some("yes"),
                detail: Some(format!(
                    "the gateway's external address {ip} is private or shared: a mapping there is not reachable from the Internet"
                )),
            },
            (Some(true), _) => Measure {
                status: Status::Measured,
                value: Some("yes"),
                detail: Some(
                    "the gateway says it has no public address (NAT-PMP network failure): it is behind another NAT".to_owned(),
                ),
            },
            (Some(false), _) => Measure::measured("no"),
            (None, _) => Measure::not_measured("no NAT-PMP answer names the gateway's external address"),
        },
    }
}

impl Check {
    /// Starts one node per family the coordinators need, each with that
    /// family's coordinators (a socket that cannot be bound is recorded,
    /// not fatal: the other family may still work).
    fn start(targets: Vec<Target>, key: Option<&Keypair>, timeout: Duration) -> Check {
        let families: BTreeSet<Family> = targets
            .iter()
            .filter_map(|t| t.addr.as_ref().map(Family::of))
            .collect();
        let mut nodes = Vec::new();
        for family in families {
            // A fresh identity per family: a dual-stack coordinator then
            // sees two nodes, not one node flapping between addresses.
            let keypair = key
                .cloned()
                .unwrap_or_else(|| Keypair::from_secret(os_seed()));
            let identity = keypair.public();
            let coordinators = targets
                .iter()
                .filter_map(|t| {
                    t.addr
                        .filter(|a| Family::of(a) == family)
                        .map(|a| (t.key, a))
                })
                .collect();
            let opts = PeerOptions::new(family.wildcard(), coordinators);
            let node = spawn_peer(keypair, &opts)
                .map(Arc::new)
                .map_err(|e| e.message);
            nodes.push(FamilyNode {
                family,
                identity,
                node,
            });
        }
        let answers = targets.iter().map(|_| Answer::default()).collect();
        Check {
            targets,
            nodes,
            answers,
            timeout,
            started: Instant::now(),
        }
    }

    /// The family node that dials `t`.
    fn family_of(&self, t: &Target) -> Option<&FamilyNode> {
        let family = Family::of(t.addr.as_ref()?);
        self.nodes.iter().find(|n| n.family == family)
    }

    /// The running node that dials `t`.
    fn node_of(&self, t: &Target) -> Option<&Arc<Node>> {
        self.family_of(t).and_then(|n| n.node.as_ref().ok())
    }

    /// Step 1: Waits until every coordinator has a session, or the timeout.
    async fn wait_sessions(&mut self, progress: &mut Progress) {
        let deadline = self.started + self.timeout;
        loop {
            let mut waiting = 0;
            for (i, t) in self.targets.iter().enumerate() {
                if self.answers.get(i).is_some_and(|a| a.reachable) {
                    continue;
                }
                let Some(node) = self.node_of(t) else {
                    continue;
                };
                match node.session(t.key).await {
                    Some(info) => {
                        if let Some(a) = self.answers.get_mut(i) {
                            a.reachable = true;
                            a.rtt = info.rtt;
                        }
                    }
                    None => waiting += 1,
                }
            }
            if waiting == 0 || Instant::now() >= deadline {
                break;
            }
            progress.update(&format!(
                "netcheck: waiting for {waiting} coordinator(s) ({:.1}s)",
                self.started.elapsed().as_secs_f64()
            ));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Step 2: A reflex probe at each coordinator that answered, all at once;
    /// then every coordinator's error, if it has one.
    async fn probe_reflexes(&mut self, progress: &mut Progress) {
        let timeout = self.timeout;
        let mut probes = tokio::task::JoinSet::new();
        for (t, (i, a)) in self.targets.iter().zip(self.answers.iter().enumerate()) {
            let Some(node) = self.node_of(t).filter(|_| a.reachable) else {
                continue;
            };
            let node = node.clone();
            let peer = t.key.node_id();
            probes.spawn(async move {
                let start = Instant::now();
                let r = tokio::time::timeout(timeout, node.probe_reflex(peer)).await;
                (i, r.map(|r| r.map(|addr| (addr, start.elapsed()))))
            });
        }
        if !probes.is_empty() {
            progress.update(&format!(
                "netcheck: asking {} coordinator(s) for the reflex",
                probes.len()
            ));
        }
        while let Some(joined) = probes.join_next().await {
            let Ok((i, result)) = joined else { continue };
            let Some(a) = self.answers.get_mut(i) else {
                continue;
            };
            match result {
                Ok(Ok((reflex, took))) => {
                    a.reflex = Some(reflex);
                    a.probe_rtt = Some(took);
                }
                Ok(Err(e)) => a.error = Some(format!("reflex probe failed: {e}")),
                Err(_) => {
                    a.error = Some(format!("reflex probe: no answer within {}", secs(timeout)));
                }
            }
        }
        for (i, t) in self.targets.iter().enumerate() {
            // The session's RTT estimate may have improved meanwhile.
            let rtt = match self.node_of(t) {
                Some(node) => node.session(t.key).await.and_then(|s| s.rtt),
                None => None,
            };
            let node_error = self
                .family_of(t)
                .and_then(|n| n.node.as_ref().err().cloned());
            let Some(a) = self.answers.get_mut(i) else {
                continue;
            };
            if rtt.is_some() {
                a.rtt = rtt;
            }
            if a.reachable || a.error.is_some() {
                continue;
            }
            a.error = Some(match (&t.resolve_error, node_error) {
                (Some(e), _) => e.clone(),
                (None, Some(e)) => e,
                _ => format!(
                    "no session within {}: is it running and reachable over UDP, \
                     and is the key in the dial string the one it prints?",
                    secs(timeout)
                ),
            });
        }
    }

    /// Step 3: One classification sweep per family, all at once.
    async fn sweep(&self, progress: &mut Progress) -> Vec<Option<ClassOutcome>> {
        let timeout = self.timeout;
        let mut sweeps = tokio::task::JoinSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Ok(node) = &n.node {
                let node = node.clone();
                sweeps.spawn(
                    async move { (i, tokio::time::timeout(timeout, node.reclassify()).await) },
                );
            }
        }
        if self.answers.iter().any(|a| a.reflex.is_some()) {
            progress.update("netcheck: classifying the NAT (sweep)");
        }
        let mut outcomes: Vec<Option<ClassOutcome>> = self.nodes.iter().map(|_| None).collect();
        while let Some(joined) = sweeps.join_next().await {
            let Ok((i, result)) = joined else { continue };
            let outcome = match result {
                Ok(Ok(r)) => ClassOutcome::Done(r),
                Ok(Err(_)) => ClassOutcome::Failed,
                Err(_) => ClassOutcome::TimedOut,
            };
            if let Some(slot) = outcomes.get_mut(i) {
                *slot = Some(outcome);
            }
        }
        outcomes
    }

    /// Stops the nodes (their sessions end; nothing stays behind).
    async fn stop(&self) {
        for n in &self.nodes {
            if let Ok(node) = &n.node {
                node.shutdown().await;
            }
        }
    }

    /// Step 4: The report.
    fn report(&self, outcomes: Vec<Option<ClassOutcome>>, throwaway: bool) -> Report {
        let interfaces = {
            let mut ips: Vec<IpAddr> = interface_addrs();
            ips.sort();
            ips.dedup();
            ips
        };
        let coordinators: Vec<CoordinatorReport> = self
            .targets
            .iter()
            .zip(&self.answers)
            .map(|(t, a)| CoordinatorReport {
                dial: t.dial.clone(),
                key: t.key.to_string(),
                addr: t.addr,
                family: t.addr.as_ref().map(Family::of),
                reachable: a.reachable,
                rtt_ms: a.rtt.map(ms),
                probe_rtt_ms: a.probe_rtt.map(ms),
                reflex: a.reflex,
                error: a.error.clone(),
            })
            .collect();
        let mut ipv4 = None;
        let mut ipv6 = None;
        for (n, outcome) in self.nodes.iter().zip(outcomes) {
            let report = family_report(n, outcome, &coordinators, &interfaces, self.timeout);
            match n.family {
                Family::Ipv4 => ipv4 = Some(report),
                Family::Ipv6 => ipv6 = Some(report),
            }
        }
        let not_probed = Measure::not_probed("the probe did not run");
        let mut report = Report {
            version: REPORT_VERSION,
            ok: coordinators.iter().any(|c| c.reachable),
            throwaway_identity: throwaway,
            timeout_secs: self.timeout.as_secs_f64(),
            interfaces,
            coordinators,
            ipv4,
            ipv6,
            port_mapping: PortMapping::all(&not_probed),
            stun: None,
            summary: String::new(),
        };
        report.summary = summary(&report);
        report
    }
}

/// How a family's sweep ended.
enum ClassOutcome {
    Done(Reclassified),
    TimedOut,
    Failed,
}

fn parse_timeout(secs: f64) -> CliResult<Duration> {
    if secs.is_nan() || secs <= 0.0 {
        return Err(CliError::usage(format!(
            "bad --timeout {secs}: it must be a positive number of seconds"
        )));
    }
    Duration::try_from_secs_f64(secs)
        .map_err(|e| CliError::usage(format!("bad --timeout {secs}: {e}")))
}

/// Parses and resolves the dial strings. A malformed one is a usage error;
/// a host that does not resolve is reported as an unreachable coordinator.
fn resolve_targets(dials: &[String]) -> CliResult<Vec<Target>> {
    let mut targets: Vec<Target> = Vec::new();
    for d in dials {
        let (key, addr, resolve_error) = match resolve_dial(d) {
            Ok((key, addr)) => {
                // C9: an IPv4-mapped address is IPv4.
                let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
                (key, Some(addr), None)
            }
            // The key parsed: only the host did not resolve.
            Err(e) if e.exit == Exit::NoCoordinator => match d.parse::<natrix_tokio::Dial>() {
                Ok(dial) => (dial.key, None, Some(e.message)),
                Err(_) => return Err(e),
            },
            Err(e) => return Err(e),
        };
        if let Some(a) = addr {
            let family = Family::of(&a);
            if targets
                .iter()
                .any(|t| t.key == key && t.addr.as_ref().map(Family::of) == Some(family))
            {
                return Err(CliError::usage(format!(
                    "coordinator {key} is given twice for {}",
                    family.name()
                ))
                .hint("a node has one session per coordinator key: give each coordinator once per address family"));
            }
        }
        targets.push(Target {
            dial: d.clone(),
            key,
            addr,
            resolve_error,
        });
    }
    Ok(targets)
}

/// The findings for one family, from its coordinators' answers and its sweep.
fn family_report(
    n: &FamilyNode,
    outcome: Option<ClassOutcome>,
    coordinators: &[CoordinatorReport],
    interfaces: &[IpAddr],
    timeout: Duration,
) -> FamilyReport {
    let mine: Vec<&CoordinatorReport> = coordinators
        .iter()
        .filter(|c| c.family == Some(n.family))
        .collect();
    let answered = mine.iter().filter(|c| c.reachable).count();
    // Reflexes, one per coordinator IP (the first answer for each IP).
    let mut by_ip: Vec<(IpAddr, SocketAddr)> = Vec::new();
    for c in &mine {
        if let (Some(addr), Some(reflex)) = (c.addr, c.reflex) {
            let ip = addr.ip().to_canonical();
            if !by_ip.iter().any(|(i, _)| *i == ip) {
                by_ip.push((ip, canonical(reflex)));
            }
        }
    }
    let destinations = by_ip.len();
    let bound = n.node.as_ref().ok().map(|node| node.local_addr());

    let committed = match &outcome {
        Some(ClassOutcome::Done(Reclassified::Swept(SweepOutcome::Committed(c)))) => Some(*c),
        _ => None,
    };
    let reflex = committed
        .and_then(|c| c.reflex)
        .map(canonical)
        .or_else(|| by_ip.first().map(|(_, r)| *r));
    let nat_class = if let Err(e) = &n.node {
        Measure::not_measured(format!("no node for {}: {e}", n.family.name()))
    } else if answered == 0 {
        Measure::not_measured(format!("no {} coordinator answered", n.family.name()))
    } else {
        match (committed, outcome) {
            (Some(c), _) => Measure::measured(class_name(c.class)),
            (None, _) if destinations < 2 => Measure::not_measured(NEEDS_TWO_IPS),
            (None, Some(ClassOutcome::Done(r))) => Measure::not_measured(sweep_reason(r)),
            (None, Some(ClassOutcome::TimedOut)) => Measure::not_measured(format!(
                "the classification sweep did not finish within {}",
                secs(timeout)
            )),
            (None, _) => Measure::not_measured("the node stopped during the sweep"),
        }
    };
    let mapping = if destinations < 2 {
        Measure::not_measured(format!(
            "{NEEDS_TWO_IPS} for a heuristic; a measurement {C8_ISSUE}"
        ))
    } else if by_ip
        .iter()
        .all(|(_, r)| Some(*r) == by_ip.first().map(|(_, r)| *r))
    {
        Measure::heuristic(
            "endpoint-independent",
            format!("{destinations} coordinators at different IPs saw the same reflex"),
        )
    } else {
        Measure::heuristic(
            "endpoint-dependent",
            format!("{destinations} coordinators at different IPs saw different reflexes"),
        )
    };
    FamilyReport {
        identity: n.identity.to_string(),
        bound,
        error: n.node.as_ref().err().cloned(),
        coordinators: mine.len(),
        answered,
        destinations,
        reflex,
        reflex_is_local: reflex.map(|r| interfaces.contains(&r.ip().to_canonical())),
        port_preserved: reflex.zip(bound).map(|(r, b)| r.port() == b.port()),
        nat_class,
        mapping,
        filtering: Measure::not_measured(C8_ISSUE),
        port_allocation: Measure::not_measured(C8_ISSUE),
    }
}

fn mapping_word(m: MappingBehaviour) -> &'static str {
    match m {
        MappingBehaviour::EndpointIndependent => "endpoint-independent",
        MappingBehaviour::AddressDependent => "address-dependent",
        MappingBehaviour::AddressAndPortDependent => "address-and-port-dependent",
    }
}

fn filtering_word(f: FilteringBehaviour) -> &'static str {
    match f {
        FilteringBehaviour::EndpointIndependent => "endpoint-independent",
        FilteringBehaviour::AddressDependent => "address-dependent",
        FilteringBehaviour::AddressAndPortDependent => "address-and-port-dependent",
    }
}

/// A measured value with its detail (if any), or why not.
fn stun_measure(
    value: Option<(&'static str, Option<String>)>,
    reason: Option<&natrix_tokio::NotMeasured>,
) -> Measure {
    match value {
        Some((v, detail)) => Measure {
            status: Status::Measured,
            value: Some(v),
            detail,
        },
        None => Measure::not_measured(
            reason.map_or_else(|| "not measured".to_owned(), ToString::to_string),
        ),
    }
}

/// The binding lifetime a discovery found (`limit`: `--lifetime`), or why
/// not.
fn lifetime_measure(r: &natrix_tokio::BehaviourReport, limit: Option<LifetimeConfig>) -> Measure {
    let Some(found) = r.behaviour.binding_lifetime else {
        return match r.lifetime_reason {
            Some(NotMeasured::TakesTooLong) | None if limit.is_none() => Measure::not_measured(
                "it takes minutes to measure (opt in with --lifetime MAX_SECS)",
            ),
            reason => stun_measure(None, reason.as_ref()),
        };
    };
    let at_least = format!("at least {}", lifetime_secs(found));
    if r.lifetime_at_least_max {
        Measure {
            status: Status::Measured,
            value: Some("at-least-max"),
            detail: Some(format!(
                "{at_least}: still alive after the longest idle time tried (--lifetime)"
            )),
        }
    } else {
        let precision = limit.map_or(LifetimeConfig::DEFAULT_PRECISION, |l| {
            l.effective_precision()
        });
        Measure {
            status: Status::Measured,
            value: Some("lower-bound"),
            detail: Some(format!(
                "{at_least} (alive after that long idle; gone after at most {} more)",
                lifetime_secs(precision)
            )),
        }
    }
}

/// A lifetime in seconds, to a tenth at most (`"46.9 s"`, `"60 s"`).
fn lifetime_secs(d: Duration) -> String {
    let tenths = d.as_millis() / 100;
    if tenths % 10 == 0 {
        format!("{} s", tenths / 10)
    } else {
        format!("{}.{} s", tenths / 10, tenths % 10)
    }
}

/// The report section from a finished discovery (`lifetime`: `--lifetime`).
fn stun_report(
    server: SocketAddr,
    r: &natrix_tokio::BehaviourReport,
    lifetime: Option<LifetimeConfig>,
) -> StunReport {
    let b = &r.behaviour;
    let yes_no = |v: bool| if v { "yes" } else { "no" };
    StunReport {
        server,
        other_address: r.other_address,
        mapped: r.mapped,
        nat: stun_measure(
            b.nat.map(|n| {
                (
                    yes_no(n),
                    Some(if n {
                        "the server saw a translated address".to_owned()
                    } else {
                        "the server saw this host's own address".to_owned()
                    }),
                )
            }),
            r.nat_reason.as_ref(),
        ),
        mapping: stun_measure(
            b.mapping
                .map(|m| (mapping_word(m), Some(m.short().to_owned()))),
            r.mapping_reason.as_ref(),
        ),
        filtering: stun_measure(
            b.filtering
                .map(|f| (filtering_word(f), Some(f.short().to_owned()))),
            r.filtering_reason.as_ref(),
        ),
        port_allocation: stun_measure(
            b.allocation.map(|a| match a {
                PortAllocation::Preserving => ("preserving", None),
                PortAllocation::Sequential { step } => {
                    ("sequential", Some(format!("step {step:+}")))
                }
                PortAllocation::Random => ("random", None),
            }),
            r.allocation_reason.as_ref(),
        ),
        hairpin: stun_measure(
            b.hairpin.map(|h| (yes_no(h), None)),
            r.hairpin_reason.as_ref(),
        ),
        binding_lifetime: lifetime_measure(r, lifetime),
        binding_lifetime_ms: r
            .behaviour
            .binding_lifetime
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        nat_class: class_name(r.nat_class()),
        summary: b.summary().to_owned(),
    }
}

/// The report section when discovery could not run.
fn stun_failed(server: SocketAddr, why: &str) -> StunReport {
    let m = Measure::not_measured(why);
    StunReport {
        server,
        other_address: None,
        mapped: None,
        nat: m.clone(),
        mapping: m.clone(),
        filtering: m.clone(),
        port_allocation: m.clone(),
        hairpin: m.clone(),
        binding_lifetime: m,
        binding_lifetime_ms: None,
        nat_class: "unknown",
        summary: format!("STUN behaviour discovery did not run: {why}"),
    }
}

/// What STUN measured replaces the family's heuristics; a report with no
/// coordinator is ok when the STUN server answered.
fn adopt_stun(report: &mut Report, stun: &StunReport) {
    let family = if stun.server.is_ipv4() {
        report.ipv4.as_mut()
    } else {
        report.ipv6.as_mut()
    };
    if let Some(f) = family {
        for (mine, found) in [
            (&mut f.mapping, &stun.mapping),
            (&mut f.filtering, &stun.filtering),
            (&mut f.port_allocation, &stun.port_allocation),
        ] {
            if found.status == Status::Measured {
                *mine = Measure {
                    detail: Some(match &found.detail {
                        Some(d) => format!("{d}, by STUN against {}", stun.server),
                        None => format!("by STUN against {}", stun.server),
                    }),
                    ..found.clone()
                };
            }
        }
    }
    if report.coordinators.is_empty() && stun.mapped.is_some() {
        report.ok = true;
    }
}

fn sweep_reason(r: Reclassified) -> String {
    match r {
        Reclassified::Suppressed => "a reflex override is installed (C6)".to_owned(),
        Reclassified::Swept(SweepOutcome::InsufficientDestinations { .. }) => {
            NEEDS_TWO_IPS.to_owned()
        }
        Reclassified::Swept(SweepOutcome::TooFewObservations { observations }) => format!(
            "only {observations} coordinator IP(s) answered the sweep's probes; {NEEDS_TWO_IPS}"
        ),
        Reclassified::Swept(SweepOutcome::DeadlineMissed { observations }) => {
            format!("the classification sweep missed its deadline ({observations} answer(s))")
        }
        Reclassified::Swept(SweepOutcome::Discarded) => {
            "the sweep was discarded (a reflex override arrived, C6)".to_owned()
        }
        Reclassified::Swept(_) => "the sweep did not commit a class".to_owned(),
    }
}

fn class_name(c: NatClass) -> &'static str {
    match c {
        NatClass::Open => "open",
        NatClass::Cone => "cone",
        NatClass::Symmetric => "symmetric",
        NatClass::Unknown => "unknown",
    }
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// Milliseconds, to the microsecond.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

// ------------------------------------------------------------ printing

/// The one-line conclusion.
fn summary(r: &Report) -> String {
    let total = r.coordinators.len();
    let answered = r.coordinators.iter().filter(|c| c.reachable).count();
    if answered == 0 {
        return format!(
            "No coordinator answered ({total} tried): nothing could be measured; \
             check that a coordinator is running and reachable over UDP."
        );
    }
    let mut parts = Vec::new();
    for (name, f) in [("IPv4", &r.ipv4), ("IPv6", &r.ipv6)] {
        if let Some(f) = f {
            parts.push(family_summary(name, f));
        }
    }
    let mut s = parts.join("; ");
    let _ = write!(s, " ({answered} of {total} coordinators answered).");
    s
}

fn family_summary(name: &str, f: &FamilyReport) -> String {
    let Some(reflex) = f.reflex else {
        return match &f.error {
            Some(e) => format!("{name}: not tested ({e})"),
            None => format!("{name}: no coordinator answered"),
        };
    };
    let class = if f.nat_class.status == Status::Measured {
        f.nat_class.value
    } else {
        None
    };
    let local = f.reflex_is_local == Some(true);
    match class {
        _ if local && f.port_preserved == Some(true) => format!(
            "{name}: no NAT — the public address {reflex} is this host's own; peers can reach it directly"
        ),
        Some("open") => format!("{name}: open at {reflex}; peers can reach it directly"),
        Some("cone") => format!(
            "{name}: behind a cone NAT (public address {reflex}); hole punching should work"
        ),
        Some("symmetric") => format!(
            "{name}: behind a symmetric NAT (public address {reflex} varies per destination); \
             direct connections to peers behind NATs are unlikely, expect the relay"
        ),
        _ => format!(
            "{name}: public address {reflex}; NAT type not measured (give two coordinators at different IPs)"
        ),
    }
}

/// The human report: sections of aligned `key: value` lines, then the
/// summary.
fn human(r: &Report) -> String {
    let mut rows: Vec<Row> = Vec::new();
    rows.push(Row::Head("natrix netcheck".to_owned()));
    rows.push(Row::kv(
        "identity",
        if r.throwaway_identity {
            "throwaway (a fresh key per run)"
        } else {
            "from --key"
        },
    ));
    let ifs: Vec<String> = r.interfaces.iter().map(ToString::to_string).collect();
    rows.push(Row::kv(
        "interfaces",
        if ifs.is_empty() {
            "none found".to_owned()
        } else {
            ifs.join(", ")
        },
    ));
    for c in &r.coordinators {
        rows.push(Row::Head(format!("coordinator {}", c.dial)));
        rows.push(Row::kv(
            "reachable",
            match (c.reachable, &c.addr) {
                (true, Some(a)) => format!("yes, at {a}"),
                (true, None) => "yes".to_owned(),
                (false, _) => "no".to_owned(),
            },
        ));
        if c.reachable {
            let latency = match (c.rtt_ms, c.probe_rtt_ms) {
                (Some(s), Some(p)) => format!("{s:.1} ms (session), {p:.1} ms (reflex probe)"),
                (Some(s), None) => format!("{s:.1} ms (session)"),
                (None, Some(p)) => format!("{p:.1} ms (reflex probe)"),
                (None, None) => "not measured".to_owned(),
            };
            rows.push(Row::kv("latency", latency));
            rows.push(Row::kv(
                "reflex",
                c.reflex
                    .map_or_else(|| "no answer".to_owned(), |a| a.to_string()),
            ));
        }
        if let Some(e) = &c.error {
            rows.push(Row::kv("error", e.clone()));
        }
    }
    for (name, f) in [("IPv4", &r.ipv4), ("IPv6", &r.ipv6)] {
        rows.push(Row::Head(name.to_owned()));
        let Some(f) = f else {
            rows.push(Row::kv(
                "tested",
                format!("no ({name} coordinator not given)"),
            ));
            continue;
        };
        if let Some(e) = &f.error {
            rows.push(Row::kv("tested", format!("no: {e}")));
            continue;
        }
        if let Some(b) = f.bound {
            rows.push(Row::kv("bound socket", b.to_string()));
        }
        rows.push(Row::kv(
            "coordinators",
            format!(
                "{} of {} answered, {} distinct IP(s) reported a reflex",
                f.answered, f.coordinators, f.destinations
            ),
        ));
        rows.push(Row::kv(
            "reflex",
            f.reflex
                .map_or_else(|| "not measured".to_owned(), |a| a.to_string()),
        ));
        if let Some(local) = f.reflex_is_local {
            let preserved = f.port_preserved == Some(true);
            rows.push(Row::kv(
                "reflex is local",
                match (local, preserved) {
                    (true, true) => "yes: no NAT in front of this host",
                    (true, false) => "yes, but the port changed: a local firewall rewrites it",
                    (false, true) => "no: a NAT rewrites the address (port preserved)",
                    (false, false) => "no: a NAT rewrites the address and the port",
                },
            ));
        }
        rows.push(Row::kv("NAT class", f.nat_class.human()));
        rows.push(Row::kv("mapping", f.mapping.human()));
        rows.push(Row::kv("filtering", f.filtering.human()));
        rows.push(Row::kv("port allocation", f.port_allocation.human()));
    }
    if let Some(st) = &r.stun {
        rows.push(Row::Head(format!("NAT behaviour (STUN {})", st.server)));
        rows.push(Row::kv(
            "mapped address",
            st.mapped
                .map_or_else(|| "no answer".to_owned(), |a| a.to_string()),
        ));
        rows.push(Row::kv(
            "RFC 5780",
            st.other_address.map_or_else(
                || "not offered (mapping and filtering need it)".to_owned(),
                |a| format!("other address {a}"),
            ),
        ));
        rows.push(Row::kv("NAT", st.nat.human()));
        rows.push(Row::kv("mapping", st.mapping.human()));
        rows.push(Row::kv("filtering", st.filtering.human()));
        rows.push(Row::kv("port allocation", st.port_allocation.human()));
        rows.push(Row::kv("hairpinning", st.hairpin.human()));
        rows.push(Row::kv(
            "binding lifetime",
            match (&st.binding_lifetime.status, &st.binding_lifetime.detail) {
                // The detail says it all: "at least 45 s (…)".
                (Status::Measured, Some(d)) => d.clone(),
                _ => st.binding_lifetime.human(),
            },
        ));
        rows.push(Row::kv("in short", st.summary.clone()));
    }
    rows.push(Row::Head("port mapping".to_owned()));
    let pm = &r.port_mapping;
    let services = [
        ("UPnP-IGD", &pm.upnp_igd),
        ("NAT-PMP", &pm.nat_pmp),
        ("PCP", &pm.pcp),
        ("double NAT", &pm.double_nat),
    ];
    for (name, m) in services {
        rows.push(Row::kv(name, m.human()));
    }

    let width = rows
        .iter()
        .filter_map(|r| match r {
            Row::Kv(k, _) => Some(k.len()),
            Row::Head(_) => None,
        })
        .max()
        .unwrap_or(0)
        + 1;
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        match row {
            Row::Head(h) => {
                if i > 0 {
                    out.push('\n');
                }
                let _ = writeln!(out, "{h}");
            }
            Row::Kv(k, v) => {
                let key = format!("{k}:");
                let _ = writeln!(out, "  {key:<width$} {v}", width = width);
            }
        }
    }
    let _ = writeln!(out, "\nsummary: {}", r.summary);
    out
}

enum Row {
    Head(String),
    Kv(&'static str, String),
}

impl Row {
    fn kv(k: &'static str, v: impl Into<String>) -> Row {
        Row::Kv(k, v.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn family(reflexes: &[(&str, &str)]) -> FamilyReport {
        let coordinators: Vec<CoordinatorReport> = reflexes
            .iter()
            .map(|(at, reflex)| CoordinatorReport {
                dial: String::new(),
                key: String::new(),
                addr: Some(at.parse().unwrap()),
                family: Some(Family::Ipv4),
                reachable: true,
                rtt_ms: Some(1.0),
                probe_rtt_ms: Some(1.0),
                reflex: Some(reflex.parse().unwrap()),
                error: None,
            })
            .collect();
        let n = FamilyNode {
            family: Family::Ipv4,
            identity: Keypair::from_secret([7; 32]).public(),
            node: Err("not started in this test".to_owned()),
        };
        family_report(
            &n,
            None,
            &coordinators,
            &["192.168.1.2".parse().unwrap()],
            Duration::from_secs(5),
        )
    }

    #[test]
    fn one_coordinator_ip_measures_no_mapping() {
        let f = family(&[
            ("198.51.100.1:7000", "203.0.113.9:4000"),
            ("198.51.100.1:7001", "203.0.113.9:4000"),
        ]);
        assert_eq!(f.destinations, 1);
        assert_eq!(f.mapping.status, Status::NotMeasured);
        assert_eq!(f.reflex_is_local, Some(false));
    }

    #[test]
    fn same_reflex_at_two_ips_is_endpoint_independent() {
        let f = family(&[
            ("198.51.100.1:7000", "203.0.113.9:4000"),
            ("198.51.100.2:7000", "203.0.113.9:4000"),
        ]);
        assert_eq!(f.destinations, 2);
        assert_eq!(f.mapping.status, Status::Heuristic);
        assert_eq!(f.mapping.value, Some("endpoint-independent"));
    }

    #[test]
    fn different_ports_are_endpoint_dependent() {
        let f = family(&[
            ("198.51.100.1:7000", "203.0.113.9:4000"),
            ("198.51.100.2:7000", "203.0.113.9:4001"),
        ]);
        assert_eq!(f.mapping.value, Some("endpoint-dependent"));
    }

    fn stun_found(
        lifetime: Option<Duration>,
        reason: Option<NotMeasured>,
        at_least_max: bool,
    ) -> natrix_tokio::BehaviourReport {
        natrix_tokio::BehaviourReport {
            behaviour: natrix_proto::behaviour::Behaviour {
                nat: Some(true),
                binding_lifetime: lifetime,
                ..natrix_proto::behaviour::Behaviour::UNKNOWN
            },
            mapped: None,
            other_address: None,
            origin_mismatch: false,
            nat_reason: None,
            mapping_reason: None,
            filtering_reason: None,
            allocation_reason: None,
            hairpin_reason: None,
            lifetime_reason: reason,
            lifetime_at_least_max: at_least_max,
        }
    }

    #[test]
    fn binding_lifetime_is_shown_as_a_lower_bound() {
        let server: SocketAddr = "198.51.100.1:3478".parse().unwrap();
        let limit = Some(LifetimeConfig::new(Duration::from_secs(120)));
        let found = stun_found(Some(Duration::from_millis(46_875)), None, false);
        let st = stun_report(server, &found, limit);
        assert_eq!(st.binding_lifetime.status, Status::Measured);
        assert_eq!(st.binding_lifetime.value, Some("lower-bound"));
        assert_eq!(st.binding_lifetime_ms, Some(46_875));
        let detail = st.binding_lifetime.detail.unwrap();
        assert!(detail.starts_with("at least 46.8 s"), "{detail}");
        assert!(detail.contains("5 s more"), "{detail}");

        let found = stun_found(Some(Duration::from_secs(120)), None, true);
        let st = stun_report(server, &found, limit);
        assert_eq!(st.binding_lifetime.value, Some("at-least-max"));
        let detail = st.binding_lifetime.detail.unwrap();
        assert!(detail.starts_with("at least 120 s:"), "{detail}");

        let found = stun_found(None, Some(NotMeasured::NoNat), false);
        let st = stun_report(server, &found, limit);
        assert_eq!(st.binding_lifetime.status, Status::NotMeasured);
        assert_eq!(st.binding_lifetime_ms, None);
        assert_eq!(
            st.binding_lifetime.detail.as_deref(),
            Some("there is no NAT")
        );

        // Not asked for: say how to ask.
        let found = stun_found(None, Some(NotMeasured::TakesTooLong), false);
        let st = stun_report(server, &found, None);
        assert!(
            st.binding_lifetime
                .detail
                .unwrap()
                .contains("--lifetime MAX_SECS")
        );
    }

    #[test]
    fn timeout_must_be_positive() {
        assert!(parse_timeout(0.0).is_err());
        assert!(parse_timeout(f64::NAN).is_err());
        assert!(parse_timeout(-1.0).is_err());
        assert_eq!(parse_timeout(1.5).unwrap(), Duration::from_millis(1500));
    }
}
