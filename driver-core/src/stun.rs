//! The STUN Binding service a coordinator runs: `natrix-stun`'s server
//! answering on the node's own socket (the demultiplexer's STUN slot), and,
//! with an alternate address configured, on the three other RFC 5780
//! sockets too (other port; other IP; other IP and port), so that clients
//! can measure their NAT's mapping and filtering (C8).
//!
//! The server answers anyone (a reflex is public knowledge) but is
//! rate-limited per source and never answers with more than the request
//! plus the addresses it reports (no amplification); see
//! `natrix_stun::server`.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use std::task::Poll;

use futures_lite::Stream;

use natrix_stun::behaviour::{BehaviourDiscovery, BehaviourReport, DiscoveryConfig};
use natrix_stun::server::{ServerConfig, ServerStats, StunServer};

/// The binding-lifetime test's limits, for [`discover_behaviour_with`].
pub use natrix_stun::behaviour::LifetimeConfig;

use crate::clock::Clock;
use crate::runtime::{Runtime, UdpSocket};

/// How a node serves STUN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StunConfig {
    /// The address clients reach the main socket at (what RESPONSE-ORIGIN
    /// and OTHER-ADDRESS are computed from). `None`: the bound address.
    pub primary: Option<SocketAddr>,
    /// RFC 5780: the other IP and the other port. The node then also binds
    /// (primary IP, other port), (other IP, primary port) and (other IP,
    /// other port), so both IPs must be this host's own.
    pub alternate: Option<SocketAddr>,
    /// Answers per second per source IP.
    pub rate_per_source: u32,
    /// Burst per source IP.
    pub burst_per_source: u32,
    /// Most sources tracked for the rate limit (the stalest is evicted).
    pub max_sources: usize,
}

impl Default for StunConfig {
    /// Answering on the main socket only, with the server's default limits.
    fn default() -> Self {
        let d = ServerConfig::new(SocketAddr::from(([0, 0, 0, 0], 0)));
        StunConfig {
            primary: None,
            alternate: None,
            rate_per_source: d.rate_per_source,
            burst_per_source: d.burst_per_source,
            max_sources: d.max_sources,
        }
    }
}

/// A started service with what stops it: the sender whose drop ends the
/// alternate sockets' loops, and those loops.
pub(crate) struct StunRunning<R: Runtime> {
    /// The service (the node's task holds a clone).
    pub(crate) service: Arc<StunService<R>>,
    stop: Mutex<Option<async_channel::Sender<()>>>,
    tasks: Mutex<Vec<R::Task>>,
}

impl<R: Runtime> StunRunning<R> {
    /// Stops the alternate sockets' loops and waits for them.
    pub(crate) async fn stop(&self) {
        drop(self.stop.lock().unwrap_or_else(|e| e.into_inner()).take());
        let tasks: Vec<R::Task> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            t.await;
        }
    }
}

/// The running service: the server, and every socket it may answer from.
pub(crate) struct StunService<R: Runtime> {
    server: Mutex<StunServer>,
    clock: Clock,
    /// The main socket first (at the primary address), then the others.
    sockets: Vec<(SocketAddr, Arc<R::Socket>)>,
}

impl<R: Runtime> std::fmt::Debug for StunService<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StunService")
            .field(
                "addresses",
                &self.sockets.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> StunService<R> {
    /// Starts the service for a node whose main socket is `main`, bound at
    /// `bound`; binds the alternate sockets and spawns their receive loops,
    /// which end when the returned sender is dropped.
    pub(crate) fn start(
        rt: &R,
        config: &StunConfig,
        bound: SocketAddr,
        main: Arc<R::Socket>,
    ) -> io::Result<StunRunning<R>> {
        let primary = config.primary.unwrap_or(bound);
        let server = StunServer::new(ServerConfig {
            primary,
            alternate: config.alternate,
            rate_per_source: config.rate_per_source,
            burst_per_source: config.burst_per_source,
            max_sources: config.max_sources,
        });
        let mut sockets = vec![(primary, main)];
        for addr in server.local_addresses() {
            if addr != primary {
                sockets.push((addr, Arc::new(rt.bind(addr)?)));
            }
        }
        tracing::info!(
            %primary,
            alternate = ?config.alternate,
            "STUN: answering Binding requests"
        );
        let service = Arc::new(StunService {
            server: Mutex::new(server),
            clock: Clock::at(rt.now()),
            sockets,
        });
        let (stop, stopped) = async_channel::bounded::<()>(1);
        let tasks = service
            .sockets
            .iter()
            .skip(1)
            .map(|(addr, socket): &(SocketAddr, Arc<R::Socket>)| {
                let svc = service.clone();
                let (addr, socket, stopped) = (*addr, Arc::clone(socket), stopped.clone());
                rt.spawn(Box::pin(async move {
                    futures_lite::future::or(svc.serve(addr, socket), async move {
                        let _ = stopped.recv().await;
                    })
                    .await;
                }))
            })
            .collect();
        Ok(StunRunning {
            service,
            stop: Mutex::new(Some(stop)),
            tasks: Mutex::new(tasks),
        })
    }

    /// Answers one datagram that arrived on the socket at `local`.
    pub(crate) async fn handle(&self, local: SocketAddr, from: SocketAddr, datagram: &[u8]) {
        let mut out = [0u8; natrix_stun::codec::MAX_MESSAGE];
        let now = self.clock.now();
        let reply = {
            let mut server = self.server.lock().unwrap_or_else(|e| e.into_inner());
            server.handle(now, local, from, datagram, &mut out)
        };
        let Some(reply) = reply else { return };
        let Some((_, socket)) = self.sockets.iter().find(|(a, _)| *a == reply.from) else {
            tracing::debug!(from = %reply.from, "STUN: no socket at the answer's source address");
            return;
        };
        let bytes = out.get(..reply.len).unwrap_or_default();
        // Both the node's task and the alternate sockets' loops answer from
        // any of the four sockets: the multi-waiter send.
        if let Err(e) = socket.send_to(bytes, reply.to).await {
            tracing::debug!(to = %reply.to, error = %e, "STUN: answer not sent");
        }
    }

    /// The receive loop of an alternate socket (until stopped; a receive
    /// error — an ICMP report, say — is logged and the loop goes on).
    async fn serve(&self, local: SocketAddr, socket: Arc<R::Socket>) {
        let mut buf = [0u8; 2048];
        loop {
            match poll_fn(|cx| socket.poll_recv_from(cx, &mut buf)).await {
                Ok((len, from)) => {
                    let bytes = buf.get(..len).unwrap_or_default();
                    self.handle(local, from, bytes).await;
                }
                Err(e) => tracing::debug!(%local, error = %e, "STUN: receive failed"),
            }
        }
    }

    /// The address of the main socket, as the server knows it.
    pub(crate) fn primary(&self) -> SocketAddr {
        self.sockets
            .first()
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |(a, _)| *a)
    }

    /// The server's counters.
    pub(crate) fn stats(&self) -> ServerStats {
        self.server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stats()
    }
}

/// How many extra sockets [`discover_behaviour`] opens for the
/// port-allocation test.
pub const DISCOVERY_EXTRA_SOCKETS: usize = 3;

/// NAT behaviour discovery (C8) against the RFC 5780 STUN server at
/// `server`, from fresh sockets of the server's family: the main one (at
/// `local_port`, 0 for any: a NAT may treat a forwarded or static port
/// differently) and [`DISCOVERY_EXTRA_SOCKETS`] more (their new mappings
/// show how the NAT allocates ports). Bounded: the machine gives up each
/// test after its retransmissions (a few seconds in all). The binding
/// lifetime is not measured (see [`discover_behaviour_with`]).
///
/// # Errors
/// A socket cannot be bound.
pub async fn discover_behaviour<R: Runtime>(
    rt: &R,
    server: SocketAddr,
    local_port: u16,
    seed: u64,
) -> io::Result<BehaviourReport> {
    discover_behaviour_with(rt, server, local_port, seed, None).await
}

/// [`discover_behaviour`], and with `lifetime` the binding-lifetime test too
/// (RFC 5780 §4.6): after the other tests, rounds of idle waits of up to
/// [`LifetimeConfig::max`] each, binary-searching the lifetime to within
/// [`LifetimeConfig::precision`] — minutes, up to about
/// [`LifetimeConfig::max_idle`]. The main socket stays idle meanwhile (the
/// first extra socket sends the probes): do not share it.
///
/// # Errors
/// A socket cannot be bound.
pub async fn discover_behaviour_with<R: Runtime>(
    rt: &R,
    server: SocketAddr,
    local_port: u16,
    seed: u64,
    lifetime: Option<LifetimeConfig>,
) -> io::Result<BehaviourReport> {
    let main = Arc::new(rt.bind(unspecified(server, local_port))?);
    let local = main.local_addr()?;
    run_discovery(rt, server, MainSocket::Own(local, main), seed, lifetime).await
}

/// The main socket of a discovery.
pub(crate) enum MainSocket<R: Runtime> {
    /// A socket of the discovery's own: it reads it.
    Own(SocketAddr, Arc<R::Socket>),
    /// A node's socket (at this address), which the node's task owns: the
    /// discovery's requests from it go through `send` (the task sends
    /// them: two tasks waiting on one socket's send readiness would leave
    /// one of them unwoken), and the task hands the STUN answers that
    /// arrive there back through the channel (copied, bounded).
    Shared {
        /// The node socket's address.
        local: SocketAddr,
        /// Queues one request (bytes, destination) for the node's task.
        send: SendVia,
        /// The answers.
        answers: async_channel::Receiver<(Vec<u8>, SocketAddr)>,
    },
}

/// How a discovery hands a request to the task that owns its main socket.
pub(crate) type SendVia = Box<dyn Fn(Vec<u8>, SocketAddr) + Send + Sync>;

/// The wildcard address of `server`'s family, at `port`.
fn unspecified(server: SocketAddr, port: u16) -> SocketAddr {
    if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, port).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, port).into()
    }
}

/// Runs a discovery from `main` and [`DISCOVERY_EXTRA_SOCKETS`] fresh
/// sockets until it is done, with the binding-lifetime test when
/// `lifetime` is given.
pub(crate) async fn run_discovery<R: Runtime>(
    rt: &R,
    server: SocketAddr,
    main: MainSocket<R>,
    seed: u64,
    lifetime: Option<LifetimeConfig>,
) -> io::Result<BehaviourReport> {
    // The sockets read and sent from here: the main one only when it is
    // the discovery's own.
    let mut sockets: Vec<(SocketAddr, Arc<R::Socket>)> = Vec::new();
    let (main_addr, via, inbound) = match main {
        MainSocket::Own(a, s) => {
            sockets.push((a, s));
            (a, None, None)
        }
        MainSocket::Shared {
            local,
            send,
            answers,
            ..
        } => (local, Some(send), Some(answers)),
    };
    for _ in 0..DISCOVERY_EXTRA_SOCKETS {
        let s = rt.bind(unspecified(server, 0))?;
        sockets.push((s.local_addr()?, Arc::new(s)));
    }
    let mut config = DiscoveryConfig::new(server, main_addr);
    let extra_from = usize::from(via.is_none());
    config.extra_sockets = sockets.iter().skip(extra_from).map(|(a, _)| *a).collect();
    config.interfaces = crate::node::interface_addrs();
    config.lifetime = lifetime;
    let clock = Clock::at(rt.now());
    let mut discovery = BehaviourDiscovery::new(config, seed);
    discovery.start(clock.now());
    let mut inbound = inbound.map(Box::pin);
    let mut buf = [0u8; 2048];
    loop {
        while let Some(t) = discovery.poll_transmit() {
            if let (Some(send), true) = (&via, t.from == main_addr) {
                send(t.payload.to_vec(), t.to);
            } else if let Some((_, s)) = sockets.iter().find(|(a, _)| *a == t.from) {
                if let Err(e) = poll_fn(|cx| s.poll_send_to(cx, &t.payload, t.to)).await {
                    tracing::debug!(to = %t.to, error = %e, "STUN discovery: send failed");
                }
            }
        }
        if discovery.is_done() {
            break;
        }
        let Some(deadline) = discovery.poll_timeout() else {
            break;
        };
        let mut sleep = rt.sleep_until(clock.to_std(deadline));
        let got = poll_fn(|cx| {
            if let Some(rx) = inbound.as_mut() {
                // The receiver keeps the waker between polls (a stream,
                // not a fresh `recv` future each time).
                if let Poll::Ready(Some((bytes, from))) = rx.as_mut().poll_next(cx) {
                    return Poll::Ready(Some((main_addr, Ok((bytes, from)))));
                }
            }
            for (a, s) in &sockets {
                if let Poll::Ready(r) = s.poll_recv_from(cx, &mut buf) {
                    let r = r.map(|(n, from)| (buf.get(..n).unwrap_or_default().to_vec(), from));
                    return Poll::Ready(Some((*a, r)));
                }
            }
            match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        match got {
            Some((local, Ok((bytes, from)))) => {
                discovery.handle_datagram(clock.now(), local, from, &bytes);
            }
            Some((_, Err(e))) => tracing::debug!(error = %e, "STUN discovery: receive failed"),
            None => discovery.handle_timeout(clock.now()),
        }
    }
    let report = discovery.report().clone();
    tracing::info!(%server, behaviour = %report.behaviour, "STUN behaviour discovery done");
    Ok(report)
}
