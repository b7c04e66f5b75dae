//! Port mapping in the drivers: a task that runs `natrix-portmap`'s
//! [`Supervisor`] (PCP, then NAT-PMP, then UPnP-IGD) against the OS routing
//! table's default gateway, on a UDP socket of its own, and performs the
//! UPnP HTTP exchanges on short-lived threads (bounded in time and size).
//!
//! A [`Node`](crate::node::Node) runs one when
//! [`NodeConfig::port_mapping`](crate::node::NodeConfig::port_mapping) is
//! set (off by default, as the spec says); `natrix map` runs one on its own.
//! P1: the only targets are the gateway [`default_gateway`] reads from the
//! routing table (through the `netdev` crate) and the fixed SSDP group; no
//! configuration, wire or peer input names another.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as StdInstant};

use futures_lite::future;
use natrix_portmap::natpmp::NatPmpClient;
use natrix_portmap::pcp::PcpClient;
use natrix_portmap::supervisor::{Status, Supervisor, SupervisorConfig, SupervisorEvent};
use natrix_portmap::upnp::UpnpClient;
use natrix_portmap::{
    Client, Gateway, Instant, MapError, Mapping, MappingRequest, Protocol, Transmit,
};
use tracing::{debug, info, warn};

use crate::runtime::{Runtime, UdpSocket};

/// How the port mapper runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMapConfig {
    /// The lifetime to ask for (renewed at half of what is granted).
    pub lifetime: Duration,
    /// When every protocol failed, probe again after this long.
    pub retry_after: Duration,
    /// PCP's probe timeout (spec: 1 s).
    pub pcp_timeout: Duration,
    /// NAT-PMP's probe timeout (spec: 1 s).
    pub natpmp_timeout: Duration,
    /// UPnP-IGD's probe timeout (spec: 2 s).
    pub upnp_timeout: Duration,
    /// Only this protocol (`natrix map --protocol`); `None`: all three, in
    /// the spec's order.
    pub only: Option<Protocol>,
}

impl Default for PortMapConfig {
    /// The spec's defaults: a 3600 s lease; PCP 1 s, NAT-PMP 1 s,
    /// UPnP-IGD 2 s; a new probe 5 minutes after all failed.
    fn default() -> Self {
        PortMapConfig {
            lifetime: natrix_portmap::DEFAULT_LIFETIME,
            retry_after: Duration::from_secs(300),
            pcp_timeout: Duration::from_secs(1),
            natpmp_timeout: Duration::from_secs(1),
            upnp_timeout: Duration::from_secs(2),
            only: None,
        }
    }
}

/// Why the port mapper could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PortMapError {
    /// The routing table has no default gateway.
    #[error("no default gateway in the routing table")]
    NoGateway,
    /// The socket could not be bound, or the local address not found.
    #[error("port mapping socket: {0}")]
    Io(#[from] io::Error),
    /// The mapping request itself is invalid (P2).
    #[error(transparent)]
    Map(#[from] MapError),
    /// The one protocol asked for does not run over IPv6 (NAT-PMP and
    /// UPnP-IGD are IPv4 only; PCP maps both).
    #[error("{0} maps IPv4 only; over IPv6 only PCP does")]
    NotOverIpv6(Protocol),
}

/// The routing table's default gateways (IPv4 and IPv6), read through the
/// `netdev` crate. Empty when there is none.
#[must_use]
pub fn default_gateway() -> Gateway {
    match netdev::get_default_gateway() {
        Ok(dev) => Gateway {
            v4: dev.ipv4.first().copied(),
            v6: dev.ipv6.first().copied(),
        },
        Err(e) => {
            debug!(error = %e, "no default gateway");
            Gateway { v4: None, v6: None }
        }
    }
}

/// The local IP the system would use toward `to` (a connected UDP socket
/// tells; nothing is sent).
///
/// # Errors
/// No route.
pub fn local_ip_toward(to: IpAddr) -> io::Result<IpAddr> {
    let any: IpAddr = if to.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let s = std::net::UdpSocket::bind(SocketAddr::new(any, 0))?;
    s.connect(SocketAddr::new(to, natrix_portmap::PCP_PORT))?;
    Ok(s.local_addr()?.ip())
}

/// The gateway to ask for a mapping of `local`, the node's bound address:
/// one of its own family. A socket bound to a specific IPv6 address gets an
/// IPv6 mapping (PCP, a firewall pinhole); one bound to `::` (dual-stack)
/// or to an IPv4 address maps over IPv4, and `::` falls back to IPv6 when
/// there is no IPv4 default route.
#[must_use]
pub fn gateway_for(gateway: Gateway, local: SocketAddr) -> Option<IpAddr> {
    let (v4, v6) = (gateway.v4.map(IpAddr::V4), gateway.v6.map(IpAddr::V6));
    // An IPv4-mapped IPv6 address is its IPv4 address.
    match local.ip().to_canonical() {
        IpAddr::V4(_) => v4,
        IpAddr::V6(ip) if ip.is_unspecified() => v4.or(v6),
        IpAddr::V6(_) => v6,
    }
}

/// The clients for `local` (the node's bound address) behind `gateway`, in
/// the spec's order: PCP, NAT-PMP, UPnP-IGD (NAT-PMP and UPnP only over
/// IPv4). The internal address is `local`'s IP when it is bound to one,
/// otherwise the IP the system uses toward the gateway.
///
/// # Errors
/// No gateway of `local`'s family; the local address toward it is unusable
/// (P2).
pub fn clients(
    gateway: Gateway,
    local: SocketAddr,
    config: &PortMapConfig,
    seed: u64,
) -> Result<Vec<Box<dyn Client + Send>>, PortMapError> {
    let gw = gateway_for(gateway, local).ok_or(PortMapError::NoGateway)?;
    let bound = local.ip().to_canonical();
    let ip = if bound.is_unspecified() {
        local_ip_toward(gw)?
    } else {
        bound
    };
    let internal = SocketAddr::new(ip, local.port());
    let mut request = MappingRequest::new(internal)?;
    request.lifetime = config.lifetime;
    let mut out: Vec<Box<dyn Client + Send>> = vec![Box::new(PcpClient::new(
        gw,
        request,
        seed,
        config.pcp_timeout,
    )?)];
    if let IpAddr::V4(v4) = gw {
        // NAT-PMP and UPnP-IGD are IPv4 only.
        out.push(Box::new(NatPmpClient::new(
            v4,
            request,
            config.natpmp_timeout,
        )?));
        out.push(Box::new(UpnpClient::new(v4, request, config.upnp_timeout)?));
    }
    if let Some(p) = config.only {
        out.retain(|c| c.protocol() == p);
        if out.is_empty() {
            return Err(PortMapError::NotOverIpv6(p));
        }
    }
    Ok(out)
}

/// What the port mapper knows now (the spec's port-mapping statistics:
/// active flag, external address, renewals since install).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortMapState {
    /// What the supervisor is doing.
    pub status: Option<Status>,
    /// The installed mapping.
    pub mapping: Option<Mapping>,
    /// The mapping's external address is private or shared (P6): it is not
    /// used as the node's reflex.
    pub double_nat: bool,
    /// Renewals since the mapping was installed.
    pub renewals: u64,
    /// Why each protocol failed in the last probe round.
    pub errors: Vec<(Protocol, MapError)>,
    /// The gateway it talks to.
    pub gateway: Option<IpAddr>,
    /// How the shutdown ended, once it has: `Ok(Some(protocol))` when the
    /// gateway confirmed the deletion, `Ok(None)` when there was nothing
    /// to delete, `Err` when the deletion was not confirmed.
    pub shutdown: Option<Result<Option<Protocol>, (Protocol, MapError)>>,
}

impl PortMapState {
    /// The external address to use as the reflex override (C6, P7): the
    /// mapping's, unless it is double NAT.
    #[must_use]
    pub fn reflex_override(&self) -> Option<SocketAddr> {
        self.mapping
            .filter(|_| !self.double_nat)
            .map(|m| m.external)
    }
}

/// A port-mapping event as the node publishes it
/// ([`NodeEvent::PortMapping`](crate::node::NodeEvent::PortMapping)); the
/// details (every protocol's error) are in [`PortMapState`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortMapEvent {
    /// A mapping was installed (P3: the granted external address and port).
    Installed {
        /// The mapping.
        mapping: Mapping,
        /// Its external address is private or shared (P6): not the reflex.
        double_nat: bool,
    },
    /// The mapping was renewed.
    Renewed(Mapping),
    /// The mapping was lost (renewal refused); probing again.
    Lost(Protocol),
    /// No protocol answered; probing again later.
    Unavailable,
    /// The gateway restarted (epoch); the mapping is re-installed.
    GatewayRestarted(Protocol),
    /// The mapping was deleted (or deleting it failed) at shutdown.
    Deleted,
    /// Port mapping could not start (no gateway, no socket).
    NotStarted,
}

impl From<&SupervisorEvent> for PortMapEvent {
    fn from(e: &SupervisorEvent) -> Self {
        match e {
            SupervisorEvent::Installed {
                mapping,
                double_nat,
            } => PortMapEvent::Installed {
                mapping: *mapping,
                double_nat: *double_nat,
            },
            SupervisorEvent::Renewed { mapping } => PortMapEvent::Renewed(*mapping),
            SupervisorEvent::Lost { protocol, .. } => PortMapEvent::Lost(*protocol),
            SupervisorEvent::Unavailable { .. } => PortMapEvent::Unavailable,
            SupervisorEvent::GatewayRestarted(p) => PortMapEvent::GatewayRestarted(*p),
            SupervisorEvent::Deleted(_) | SupervisorEvent::DeleteFailed { .. } => {
                PortMapEvent::Deleted
            }
        }
    }
}

/// A running port mapper.
#[derive(Debug)]
pub struct PortMapper {
    stop: async_channel::Sender<()>,
    events: async_channel::Receiver<SupervisorEvent>,
    done: async_channel::Receiver<()>,
    state: Arc<Mutex<PortMapState>>,
}

impl PortMapper {
    /// Starts a port mapper for the node's UDP socket bound at `local` on
    /// `rt`, against the routing table's default gateway of its family
    /// ([`gateway_for`]); the task is returned for the caller to keep
    /// (dropping a smol task cancels it).
    ///
    /// # Errors
    /// No gateway, no socket, or a bad local address (P2).
    pub fn spawn<R: Runtime>(
        rt: &R,
        local: SocketAddr,
        config: &PortMapConfig,
        seed: u64,
    ) -> Result<(PortMapper, R::Task), PortMapError> {
        let gateway = default_gateway();
        let clients = clients(gateway, local, config, seed)?;
        let gw_ip = gateway_for(gateway, local);
        let bind: SocketAddr = match gw_ip {
            Some(IpAddr::V6(_)) => (Ipv6Addr::UNSPECIFIED, 0).into(),
            _ => (Ipv4Addr::UNSPECIFIED, 0).into(),
        };
        let socket = rt.bind(bind)?;
        let supervisor = Supervisor::new(
            clients,
            SupervisorConfig {
                retry_after: config.retry_after,
                ..SupervisorConfig::default()
            },
        );
        let (stop, stop_rx) = async_channel::bounded(1);
        let (events_tx, events) = async_channel::bounded(64);
        let (done_tx, done) = async_channel::bounded::<()>(1);
        let state = Arc::new(Mutex::new(PortMapState {
            gateway: gw_ip,
            ..PortMapState::default()
        }));
        info!(gateway = ?gw_ip, %local, "port mapping: probing PCP, NAT-PMP, UPnP-IGD");
        let task = Task {
            rt: rt.clone(),
            socket,
            supervisor,
            origin: rt.now(),
            state: state.clone(),
            events: events_tx,
            http_timeout: config.upnp_timeout,
        };
        let handle = rt.spawn(Box::pin(async move {
            task.run(stop_rx).await;
            drop(done_tx);
        }));
        Ok((
            PortMapper {
                stop,
                events,
                done,
                state,
            },
            handle,
        ))
    }

    /// A mapper that never started (port mapping could not start): no
    /// events, no state, shutdown at once.
    pub fn stopped<R: Runtime>(rt: &R) -> (PortMapper, R::Task) {
        let (stop, _) = async_channel::bounded(1);
        let (_, events) = async_channel::bounded(1);
        let (done_tx, done) = async_channel::bounded::<()>(1);
        drop(done_tx);
        let task = rt.spawn(Box::pin(async {}));
        (
            PortMapper {
                stop,
                events,
                done,
                state: Arc::default(),
            },
            task,
        )
    }

    /// The next event; `None` once the mapper has stopped.
    pub async fn next_event(&self) -> Option<SupervisorEvent> {
        self.events.recv().await.ok()
    }

    /// The next event if one is queued.
    pub fn try_event(&self) -> Option<SupervisorEvent> {
        self.events.try_recv().ok()
    }

    /// What it knows now.
    #[must_use]
    pub fn state(&self) -> PortMapState {
        lock(&self.state).clone()
    }

    /// Deletes the mapping (P4) and stops; waits until the gateway
    /// confirmed or the supervisor's shutdown deadline passed.
    ///
    /// # Errors
    /// The deletion was not confirmed (the gateway refused or did not
    /// answer in time): the mapping then expires with its lease.
    pub async fn shutdown(&self) -> Result<Option<Protocol>, (Protocol, MapError)> {
        let _ = self.stop.try_send(());
        let _ = self.done.recv().await;
        lock(&self.state).shutdown.clone().unwrap_or(Ok(None))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Task<R: Runtime> {
    rt: R,
    socket: R::Socket,
    supervisor: Supervisor,
    origin: StdInstant,
    state: Arc<Mutex<PortMapState>>,
    events: async_channel::Sender<SupervisorEvent>,
    http_timeout: Duration,
}

/// What woke the task.
enum Wake {
    Udp(io::Result<(usize, SocketAddr)>),
    Http(u64, Result<Vec<u8>, String>),
    Timer,
    Stop,
}

impl<R: Runtime> Task<R> {
    fn now(&self) -> Instant {
        let d = self.rt.now().saturating_duration_since(self.origin);
        Instant::from_nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    fn deadline(&self, at: Instant) -> StdInstant {
        self.origin + at.since_origin()
    }

    async fn run(mut self, stop: async_channel::Receiver<()>) {
        let (http_tx, http_rx) = async_channel::unbounded::<(u64, Result<Vec<u8>, String>)>();
        let mut buf = vec![0u8; 2048];
        let mut stopping = false;
        let now = self.now();
        self.supervisor.start(now);
        loop {
            self.flush(&http_tx).await;
            if self.supervisor.is_done() {
                break;
            }
            let deadline = self.supervisor.poll_timeout().map(|t| self.deadline(t));
            let wake = {
                let socket = &self.socket;
                let buf = &mut buf;
                let recv =
                    async { Wake::Udp(future::poll_fn(|cx| socket.poll_recv_from(cx, buf)).await) };
                let http = async {
                    match http_rx.recv().await {
                        Ok((id, r)) => Wake::Http(id, r),
                        Err(_) => future::pending().await,
                    }
                };
                let timer = async {
                    match deadline {
                        Some(d) => {
                            self.rt.sleep_until(d).await;
                            Wake::Timer
                        }
                        None => future::pending().await,
                    }
                };
                let stop_wait = async {
                    if stopping {
                        future::pending::<()>().await;
                    }
                    // A closed channel (the handle dropped) also stops.
                    let _ = stop.recv().await;
                    Wake::Stop
                };
                future::or(future::or(recv, http), future::or(timer, stop_wait)).await
            };
            let now = self.now();
            match wake {
                Wake::Udp(Ok((n, from))) => self.supervisor.handle_udp(now, from, &buf[..n]),
                Wake::Udp(Err(e)) => {
                    debug!(error = %e, "port mapping socket error");
                    // Do not spin on a persistent error.
                    self.rt
                        .sleep_until(self.rt.now() + Duration::from_millis(50))
                        .await;
                }
                Wake::Http(id, r) => {
                    let r = match &r {
                        Ok(bytes) => Ok(bytes.as_slice()),
                        Err(e) => Err(e.clone()),
                    };
                    self.supervisor.handle_http(now, id, r);
                }
                Wake::Timer => self.supervisor.handle_timeout(now),
                Wake::Stop => {
                    stopping = true;
                    self.supervisor.shutdown(now);
                }
            }
        }
        lock(&self.state).status = Some(self.supervisor.status());
    }

    /// Sends what the supervisor wants sent and publishes its events.
    async fn flush(&mut self, http_tx: &async_channel::Sender<(u64, Result<Vec<u8>, String>)>) {
        while let Some(t) = self.supervisor.poll_transmit() {
            match t {
                Transmit::Udp { to, payload } => {
                    let socket = &self.socket;
                    if let Err(e) =
                        future::poll_fn(|cx| socket.poll_send_to(cx, &payload, to)).await
                    {
                        debug!(%to, error = %e, "port mapping send failed");
                    }
                }
                Transmit::Http {
                    id,
                    to,
                    request,
                    max_response,
                } => {
                    let tx = http_tx.clone();
                    let timeout = self.http_timeout;
                    std::thread::spawn(move || {
                        let r = http_exchange(to, &request, max_response, timeout);
                        let _ = tx.send_blocking((id, r));
                    });
                }
            }
        }
        while let Some(ev) = self.supervisor.poll_event() {
            {
                let mut st = lock(&self.state);
                match &ev {
                    SupervisorEvent::Installed {
                        mapping,
                        double_nat,
                    } => {
                        info!(protocol = %mapping.protocol, external = %mapping.external, lifetime = ?mapping.lifetime, double_nat, "port mapping installed");
                        st.mapping = Some(*mapping);
                        st.double_nat = *double_nat;
                        st.renewals = 0;
                    }
                    SupervisorEvent::Renewed { mapping } => {
                        info!(external = %mapping.external, renewals = st.renewals + 1, "port mapping renewed");
                        st.mapping = Some(*mapping);
                        st.renewals += 1;
                    }
                    SupervisorEvent::Lost { protocol, error } => {
                        info!(%protocol, %error, "port mapping lost");
                        st.mapping = None;
                        st.double_nat = false;
                    }
                    SupervisorEvent::Unavailable { errors } => {
                        if errors.iter().any(|(_, e)| e.is_double_nat()) {
                            warn!(
                                ?errors,
                                "port mapping: the gateway has no public address of its own (double NAT); no mapping"
                            );
                        } else {
                            info!(?errors, "no port mapping protocol answered");
                        }
                        st.errors.clone_from(errors);
                    }
                    SupervisorEvent::GatewayRestarted(p) => {
                        info!(protocol = %p, "gateway restarted; re-installing the mapping");
                    }
                    SupervisorEvent::Deleted(p) => {
                        info!(protocol = ?p, "port mapping deleted");
                        st.mapping = None;
                        st.shutdown = Some(Ok(*p));
                    }
                    SupervisorEvent::DeleteFailed { protocol, error } => {
                        warn!(%protocol, %error, "port mapping: the deletion was not confirmed; it expires with its lease");
                        st.mapping = None;
                        st.shutdown = Some(Err((*protocol, error.clone())));
                    }
                }
                st.status = Some(self.supervisor.status());
            }
            let _ = self.events.force_send(ev);
        }
        lock(&self.state).status = Some(self.supervisor.status());
    }
}

/// One HTTP exchange with the gateway: connect, send `request`, read until
/// the server closes, at most `max` bytes and `timeout` in all (a server
/// that drips bytes is cut off).
fn http_exchange(
    to: SocketAddr,
    request: &[u8],
    max: usize,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let until = StdInstant::now() + timeout;
    let mut s = TcpStream::connect_timeout(&to, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_write_timeout(Some(timeout))
        .and_then(|()| s.write_all(request))
        .map_err(|e| format!("send: {e}"))?;
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = until.saturating_duration_since(StdInstant::now());
        if left.is_zero() {
            return Err(format!("no complete answer within {timeout:?}"));
        }
        s.set_read_timeout(Some(left))
            .map_err(|e| format!("socket: {e}"))?;
        match s.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => {
                if out.len() + n > max {
                    return Err(format!("answer larger than {max} bytes"));
                }
                out.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // The read timeout is what is left of the deadline.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("no complete answer within {timeout:?}"));
            }
            Err(e) => return Err(format!("receive: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    const V4: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
    const V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("literal")
    }

    /// The gateway's family follows the node's bound address: an IPv6
    /// socket never gets an IPv4 mapping, nor an IPv4 socket an IPv6 one.
    #[test]
    fn p1_the_gateway_is_the_routing_tables_of_the_bound_family() {
        let both = Gateway {
            v4: Some(V4),
            v6: Some(V6),
        };
        let v4_only = Gateway {
            v4: Some(V4),
            v6: None,
        };
        let v6_only = Gateway {
            v4: None,
            v6: Some(V6),
        };
        let (g4, g6) = (Some(IpAddr::V4(V4)), Some(IpAddr::V6(V6)));
        assert_eq!(gateway_for(both, sa("0.0.0.0:4000")), g4);
        assert_eq!(gateway_for(both, sa("192.168.1.2:4000")), g4);
        assert_eq!(gateway_for(both, sa("[::ffff:192.168.1.2]:4000")), g4);
        assert_eq!(
            gateway_for(both, sa("[::]:4000")),
            g4,
            "dual-stack: IPv4 first"
        );
        assert_eq!(gateway_for(v6_only, sa("[::]:4000")), g6);
        assert_eq!(gateway_for(both, sa("[2001:db8::2]:4000")), g6);
        assert_eq!(gateway_for(v4_only, sa("[2001:db8::2]:4000")), None);
        assert_eq!(gateway_for(v6_only, sa("0.0.0.0:4000")), None);
    }

    /// A socket bound to an IPv6 address gets PCP alone, for that address;
    /// asking for NAT-PMP or UPnP-IGD there is a typed error; a bound IPv4
    /// address is the mapping's internal address as it is.
    #[test]
    fn clients_follow_the_family_and_the_bound_address() {
        let both = Gateway {
            v4: Some(V4),
            v6: Some(V6),
        };
        let c = clients(both, sa("[2001:db8::2]:4000"), &PortMapConfig::default(), 1).unwrap();
        let names: Vec<Protocol> = c.iter().map(|c| c.protocol()).collect();
        assert_eq!(names, [Protocol::Pcp]);
        let c = clients(both, sa("192.168.1.2:4000"), &PortMapConfig::default(), 1).unwrap();
        let names: Vec<Protocol> = c.iter().map(|c| c.protocol()).collect();
        assert_eq!(names, [Protocol::Pcp, Protocol::NatPmp, Protocol::UpnpIgd]);
        for only in [Protocol::NatPmp, Protocol::UpnpIgd] {
            let config = PortMapConfig {
                only: Some(only),
                ..PortMapConfig::default()
            };
            let e = clients(both, sa("[2001:db8::2]:4000"), &config, 1).map(|_| ());
            assert!(
                matches!(e, Err(PortMapError::NotOverIpv6(p)) if p == only),
                "{e:?}"
            );
        }
        let none = Gateway { v4: None, v6: None };
        let e = clients(none, sa("0.0.0.0:4000"), &PortMapConfig::default(), 1).map(|_| ());
        assert!(matches!(e, Err(PortMapError::NoGateway)), "{e:?}");
        // P2 still holds for a bound address.
        let e = clients(both, sa("127.0.0.1:4000"), &PortMapConfig::default(), 1).map(|_| ());
        assert!(
            matches!(e, Err(PortMapError::Map(MapError::BadInternalAddress(_)))),
            "{e:?}"
        );
    }

    /// A gateway on loopback that answers every connection with `serve`.
    fn gateway(serve: impl Fn(TcpStream) + Send + 'static) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let at = l.local_addr().expect("address");
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                serve(s);
            }
        });
        at
    }

    fn read_request(s: &mut TcpStream) {
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf);
    }

    #[test]
    fn a_complete_answer_is_read_to_the_close() {
        let gw = gateway(|mut s| {
            read_request(&mut s);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        });
        let r = http_exchange(gw, b"GET / HTTP/1.1\r\n\r\n", 1024, Duration::from_secs(5));
        assert_eq!(
            r.as_deref(),
            Ok(&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..])
        );
    }

    /// Bad input: a gateway that drips a byte at a time and never closes is
    /// cut off at the total deadline, whatever it keeps sending.
    #[test]
    fn a_slow_drip_is_cut_off_at_the_deadline() {
        let gw = gateway(|mut s| {
            read_request(&mut s);
            std::thread::spawn(move || {
                for _ in 0..600 {
                    if s.write_all(b"x").is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        });
        let r = http_exchange(
            gw,
            b"GET / HTTP/1.1\r\n\r\n",
            1 << 20,
            Duration::from_millis(300),
        );
        let e = r.expect_err("a drip never completes");
        assert!(e.starts_with("no complete answer within"), "{e}");
    }

    /// Bad input: an answer beyond the cap is refused, not buffered.
    #[test]
    fn an_oversized_answer_is_refused() {
        let gw = gateway(|mut s| {
            read_request(&mut s);
            let _ = s.write_all(&[b'y'; 64 * 1024]);
        });
        let r = http_exchange(
            gw,
            b"GET / HTTP/1.1\r\n\r\n",
            16 * 1024,
            Duration::from_secs(5),
        );
        let e = r.expect_err("over the cap");
        assert_eq!(e, "answer larger than 16384 bytes");
    }
}
