//! The end-to-end suite every driver runs, written once: three nodes on real
//! UDP sockets on loopback (127.0.0.1 and ::1), with the in-process control
//! plane (this module) and with natrix's own sessions on the nodes' sockets
//! and nothing else ([`net`]). Each driver instantiates it with
//! [`e2e_suite!`](crate::e2e_suite), so the suite is the same for every
//! runtime.
//!
//! Only loopback addresses are ever sent to. Documentation addresses appear
//! as claimed reflexes that the protocol must refuse to use (R1).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::time::{Duration, Instant as StdInstant};

use futures_lite::future;
use natrix_proto::wire::{NodeId, RejectReason};
use natrix_proto::{Config, NatClass, PathMethod, SweepOutcome, TraversalError};

use crate::control::InProcessHub;
use crate::node::{Node, NodeConfig, Reclassified};
use crate::runtime::Runtime;

pub mod bench;
pub mod conn;
pub mod net;
pub mod spray;

/// IPv4 loopback.
pub const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// IPv6 loopback.
pub const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

const A: NodeId = NodeId(1);
const B: NodeId = NodeId(2);
const R: NodeId = NodeId(3);
const S: NodeId = NodeId(4);

/// Sleeps on the runtime.
pub async fn sleep<R: Runtime>(rt: &R, d: Duration) {
    rt.sleep_until(StdInstant::now() + d).await;
}

/// Runs `fut`, failing the test if it takes longer than `limit` (a hang is a
/// failure, not a stuck CI job).
pub async fn within<R: Runtime, T>(rt: &R, limit: Duration, fut: impl Future<Output = T>) -> T {
    let timeout = async {
        sleep(rt, limit).await;
        panic!("did not finish within {limit:?}");
    };
    future::or(fut, timeout).await
}

/// Configuration for test nodes: no automatic sweeps (on loopback every node
/// would classify as Open and the pair matrix would say Direct), a short
/// punch deadline.
#[must_use]
pub fn test_config() -> Config {
    Config::builder()
        .auto_reclassify(false)
        .punch_deadline(Duration::from_millis(1_500))
        .build()
        .expect("valid test config")
}

/// Three nodes A, B (requester, responder) and R (coordinator).
#[derive(Debug)]
pub struct Trio<R: Runtime> {
    /// The control plane.
    pub hub: InProcessHub,
    /// Requester.
    pub a: Node<R>,
    /// Responder.
    pub b: Node<R>,
    /// Coordinator.
    pub r: Node<R>,
}

/// Starts a trio on `ip`, A and B announced as `class`, sessions A–R and
/// B–R; `tweak` adjusts each node's configuration (by id) before it starts.
pub async fn trio<R: Runtime>(
    rt: &R,
    ip: IpAddr,
    class: Option<NatClass>,
    tweak: impl Fn(&mut NodeConfig),
) -> Trio<R> {
    let hub = InProcessHub::new();
    let start = |id: NodeId| {
        let mut cfg = NodeConfig::new(id, SocketAddr::new(ip, 0));
        cfg.agent = test_config();
        tweak(&mut cfg);
        let node = Node::spawn(rt.clone(), cfg, hub.join(id)).expect("bind");
        hub.set_addr(id, node.local_addr());
        node
    };
    let (a, b, r) = (start(A), start(B), start(R));
    hub.connect(A, R, Duration::from_millis(1));
    hub.connect(B, R, Duration::from_millis(1));
    r.set_local_classification(NatClass::Open, r.local_addr());
    if let Some(class) = class {
        a.set_local_classification(class, a.local_addr());
        b.set_local_classification(class, b.local_addr());
    }
    sleep(rt, Duration::from_millis(100)).await;
    Trio { hub, a, b, r }
}

/// A punch that succeeds: the path is B's socket and really carries datagrams.
pub async fn punch_succeeds<R: Runtime>(rt: R, ip: IpAddr) {
    let t = trio(&rt, ip, Some(NatClass::Cone), |_| {}).await;
    let out = within(&rt, Duration::from_secs(5), t.a.request_punch(B, R))
        .await
        .expect("punched");
    assert_eq!(out.path, t.b.local_addr());
    assert_eq!(out.method, PathMethod::Punched);
    assert_eq!(t.a.stats().punches_succeeded, 1);
    // The application shares the socket: its datagrams cross the new path.
    t.a.send_to(b"hello over the punched path", out.path)
        .await
        .expect("send");
    let (bytes, from) = within(&rt, Duration::from_secs(2), t.b.recv_from())
        .await
        .expect("recv");
    assert_eq!(
        (&bytes[..], from),
        (&b"hello over the punched path"[..], t.a.local_addr())
    );
    for n in [&t.a, &t.b, &t.r] {
        n.shutdown().await;
    }
}

/// Every rejection reason reaches the caller as a typed error, at once.
pub async fn rejections<R: Runtime>(rt: R, ip: IpAddr) {
    let quick = Duration::from_secs(1);
    // R1: A claims a reflex on another IP (a documentation address, which the
    // coordinator must refuse to use).
    let t = trio(&rt, ip, Some(NatClass::Cone), |_| {}).await;
    let elsewhere: SocketAddr = if ip.is_ipv4() {
        "192.0.2.1:9".parse()
    } else {
        "[2001:db8::1]:9".parse()
    }
    .expect("addr");
    t.a.set_local_classification(NatClass::Cone, elsewhere);
    let err = within(&rt, quick, t.a.request_punch(B, R)).await;
    assert_eq!(
        err,
        Err(TraversalError::Rejected(RejectReason::ReflexMismatch))
    );
    // No session with the target.
    t.a.set_local_classification(NatClass::Cone, t.a.local_addr());
    t.hub.disconnect(B, R);
    sleep(&rt, Duration::from_millis(50)).await;
    let err = within(&rt, quick, t.a.request_punch(B, R)).await;
    assert_eq!(
        err,
        Err(TraversalError::Rejected(RejectReason::NoSessionWithTarget))
    );
    // No relay: no coordinator candidate.
    assert_eq!(
        t.a.select_coordinator(B, vec![]).await,
        Err(TraversalError::NoRelay)
    );
    for n in [&t.a, &t.b, &t.r] {
        n.shutdown().await;
    }

    // Rate limited: R mediates one request per window.
    let t = trio(&rt, ip, Some(NatClass::Cone), |c| {
        if c.id == R {
            c.agent = test_config()
                .to_builder()
                .coordinator_requests_per_window(1)
                .build()
                .expect("valid");
        }
    })
    .await;
    within(&rt, Duration::from_secs(5), t.a.request_punch(B, R))
        .await
        .expect("first is mediated");
    let err = within(&rt, quick, t.a.request_punch(B, R)).await;
    assert_eq!(
        err,
        Err(TraversalError::Rejected(RejectReason::RateLimited))
    );
    for n in [&t.a, &t.b, &t.r] {
        n.shutdown().await;
    }

    // Unknown target reflex: B never announced one.
    let t = trio(&rt, ip, None, |_| {}).await;
    t.a.set_local_classification(NatClass::Cone, t.a.local_addr());
    sleep(&rt, Duration::from_millis(50)).await;
    let err = within(&rt, quick, t.a.request_punch(B, R)).await;
    assert_eq!(
        err,
        Err(TraversalError::Rejected(RejectReason::UnknownTargetReflex))
    );
    for n in [&t.a, &t.b, &t.r] {
        n.shutdown().await;
    }

    // The pair matrix skips symmetric × symmetric.
    let t = trio(&rt, ip, Some(NatClass::Symmetric), |_| {}).await;
    let err = t.a.request_punch(B, R).await;
    assert!(
        matches!(err, Err(TraversalError::Skipped { .. })),
        "{err:?}"
    );
    for n in [&t.a, &t.b, &t.r] {
        n.shutdown().await;
    }
}

/// Keep-alives dropped by a filter: the punch fails with a typed timeout.
pub async fn timeout<R: Runtime>(rt: R, ip: IpAddr) {
    let t = trio(&rt, ip, Some(NatClass::Cone), |c| {
        c.datagram_filter = Some(std::sync::Arc::new(|_, bytes: &[u8]| {
            natrix_proto::wire::is_keepalive(bytes)
        }));
    })
    .await;
    let err = within(&rt, Duration::from_secs(5), t.a.request_punch(B, R)).await;
    assert!(
        matches!(err, Err(TraversalError::DeadlinePassed { .. })),
        "{err:?}"
    );
    assert_eq!(t.a.stats().punch_timeouts, 1);
    for n in [&t.a, &t.b, &t.r] {
        n.shutdown().await;
    }
}

/// A reclassification against two reflex responders. On IPv4 the responders
/// sit on 127.0.0.2 and 127.0.0.3 (two destinations, C4) and A, bound to a
/// specific address, finds itself Open; on ::1 there is only one loopback IP,
/// so the sweep reports too few destinations and publishes nothing.
pub async fn reclassify_against_two_responders<R: Runtime>(rt: R, ip: IpAddr) {
    let hub = InProcessHub::new();
    let node = |id: NodeId, last: u8| {
        let ip = match ip {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)),
            IpAddr::V6(_) => V6,
        };
        let mut cfg = NodeConfig::new(id, SocketAddr::new(ip, 0));
        cfg.agent = test_config();
        let n = Node::spawn(rt.clone(), cfg, hub.join(id)).expect("bind");
        hub.set_addr(id, n.local_addr());
        n
    };
    let (a, r, s) = (node(A, 1), node(R, 2), node(S, 3));
    let a_addr = a.local_addr();
    hub.connect(A, R, Duration::from_millis(1));
    hub.connect(A, S, Duration::from_millis(1));
    sleep(&rt, Duration::from_millis(50)).await;
    let outcome = within(&rt, Duration::from_secs(5), a.reclassify())
        .await
        .expect("node alive");
    if ip.is_ipv4() {
        let Reclassified::Swept(SweepOutcome::Committed(c)) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(
            (c.class, c.reflex, c.observations),
            (NatClass::Open, Some(a_addr), 2)
        );
        assert_eq!(a.nat_class(), NatClass::Open);
        // A single probe: R answers with the session address it sees.
        assert_eq!(a.probe_reflex(R).await, Ok(a_addr));
        assert_eq!(
            a.probe_reflex(NodeId(99)).await,
            Err(natrix_proto::ProbeError::NoSession(NodeId(99)))
        );
        // With an override installed, sweeps are suppressed.
        a.set_reflex_override(Some(a_addr));
        assert_eq!(
            a.reclassify().await.expect("alive"),
            Reclassified::Suppressed
        );

        // C3 on real sockets: a node bound to the wildcard address is Open only
        // because the reflex IP is one of the host's interface addresses, as
        // the driver enumerates them.
        let w_id = NodeId(5);
        let mut cfg = NodeConfig::new(w_id, SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
        cfg.agent = test_config();
        let w = Node::spawn(rt.clone(), cfg, hub.join(w_id)).expect("bind");
        let seen = SocketAddr::new(V4, w.local_addr().port());
        hub.set_addr(w_id, seen);
        hub.connect(w_id, R, Duration::from_millis(1));
        hub.connect(w_id, S, Duration::from_millis(1));
        sleep(&rt, Duration::from_millis(50)).await;
        let outcome = within(&rt, Duration::from_secs(5), w.reclassify())
            .await
            .expect("node alive");
        let Reclassified::Swept(SweepOutcome::Committed(c)) = outcome else {
            panic!("{outcome:?}")
        };
        assert!(
            crate::interface_addrs().contains(&V4),
            "loopback is an interface"
        );
        assert_eq!((c.class, c.reflex), (NatClass::Open, Some(seen)));
        w.shutdown().await;
    } else {
        assert_eq!(
            outcome,
            Reclassified::Swept(SweepOutcome::InsufficientDestinations { destinations: 1 })
        );
        assert_eq!(a.classification(), None);
    }
    for n in [&a, &r, &s] {
        n.shutdown().await;
    }
}

/// Dropping a pending `request_punch` future cancels the punch.
pub async fn cancel_by_dropping_the_future<R: Runtime>(rt: R, ip: IpAddr) {
    let t = trio(&rt, ip, Some(NatClass::Cone), |c| {
        c.datagram_filter = Some(std::sync::Arc::new(|_, bytes: &[u8]| {
            natrix_proto::wire::is_keepalive(bytes)
        }));
    })
    .await;
    let punch = t.a.request_punch(B, R);
    let outcome = future::or(async { Some(punch.await) }, async {
        sleep(&rt, Duration::from_millis(200)).await;
        None
    })
    .await;
    assert_eq!(outcome, None, "still pending when dropped");
    sleep(&rt, Duration::from_millis(100)).await;
    let s = t.a.stats();
    assert_eq!(
        (s.punches_attempted, s.punches_cancelled, s.punch_timeouts),
        (1, 1, 0)
    );
    for n in [&t.a, &t.b, &t.r] {
        n.shutdown().await;
    }
}

/// Shutdown with a punch in flight: the punch ends `Cancelled`, the node's
/// task ends, and the handle refuses new work.
pub async fn shutdown_with_punch_in_flight<R: Runtime>(rt: R, ip: IpAddr) {
    let t = trio(&rt, ip, Some(NatClass::Cone), |c| {
        c.datagram_filter = Some(std::sync::Arc::new(|_, bytes: &[u8]| {
            natrix_proto::wire::is_keepalive(bytes)
        }));
    })
    .await;
    let mut events = t.a.events();
    let (punch, ()) = within(
        &rt,
        Duration::from_secs(3),
        future::zip(t.a.request_punch(B, R), async {
            sleep(&rt, Duration::from_millis(100)).await;
            t.a.shutdown().await;
        }),
    )
    .await;
    assert_eq!(punch, Err(TraversalError::Cancelled));
    assert_eq!(
        t.a.request_punch(B, R).await,
        Err(TraversalError::Cancelled)
    );
    assert!(t.a.reclassify().await.is_err());
    // The event stream ends once the task is gone.
    while within(&rt, Duration::from_secs(1), events.next())
        .await
        .is_some()
    {}
    t.b.shutdown().await;
    t.r.shutdown().await;
}

/// The node asks the OS for its receive buffer: a small request is granted
/// about as asked (far below any OS default), the default request at least
/// the OS default, and `None` leaves the socket alone.
pub async fn recv_buffer_is_asked_for<R: Runtime>(rt: R, ip: IpAddr) {
    let hub = InProcessHub::new();
    let start = |n: u64, recv_buffer: Option<usize>| {
        let mut cfg = NodeConfig::new(NodeId(n), SocketAddr::new(ip, 0));
        cfg.recv_buffer = recv_buffer;
        Node::spawn(rt.clone(), cfg, hub.join(NodeId(n))).expect("bind")
    };
    let fresh = std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind");
    let default_size = socket2::SockRef::from(&fresh)
        .recv_buffer_size()
        .expect("SO_RCVBUF");
    let small = start(1, Some(8 * 1024));
    let granted = small.recv_buffer().expect("the runtime sets SO_RCVBUF");
    assert!(
        (8 * 1024..default_size).contains(&granted),
        "asked 8 KiB, granted {granted} (OS default {default_size})"
    );
    let big = start(2, Some(crate::DEFAULT_RECV_BUFFER));
    assert!(big.recv_buffer().expect("set") >= default_size);
    let untouched = start(3, None);
    assert_eq!(untouched.recv_buffer(), None);
    for n in [small, big, untouched] {
        n.shutdown().await;
    }
}

/// A socket fed random garbage keeps working: garbage that is not a
/// keep-alive reaches the application untouched, and a punch still succeeds.
pub async fn garbage_on_the_socket<R: Runtime>(rt: R, ip: IpAddr) {
    let t = trio(&rt, ip, Some(NatClass::Cone), |_| {}).await;
    let attacker = std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind");
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let from = attacker.local_addr().expect("addr");
    for i in 0..200 {
        let len = (rand() % 1_400) as usize;
        let mut d: Vec<u8> = (0..len).map(|_| rand() as u8).collect();
        if i % 10 == 0 {
            // Keep-alive-shaped garbage: 14 bytes with the magic.
            d = b"PH"
                .iter()
                .copied()
                .chain((0..12).map(|_| rand() as u8))
                .collect();
        }
        attacker.send_to(&d, t.a.local_addr()).expect("send");
        if !natrix_proto::wire::is_keepalive(&d) {
            // Everything else reaches the application, byte for byte.
            let (got, src) = within(&rt, Duration::from_secs(2), t.a.recv_from())
                .await
                .expect("alive");
            assert_eq!((&got, src), (&d, from));
        }
    }
    sleep(&rt, Duration::from_millis(50)).await;
    assert_eq!(t.a.stats().keepalives_dropped, 20);
    let out = within(&rt, Duration::from_secs(5), t.a.request_punch(B, R))
        .await
        .expect("still punches");
    assert_eq!(out.path, t.b.local_addr());
    for n in [&t.a, &t.b, &t.r] {
        n.shutdown().await;
    }
}

/// Datagrams that are not natrix's reach the application through a buffer
/// it passes ([`Node::recv_from_into`]), cut to fit as a UDP socket does;
/// keep-alives are the agent's and counted apart; the inbox is bounded, counts
/// what it drops and keeps the datagrams it took in order; a node that shut
/// down reports it.
pub async fn app_datagrams_into_caller_buffers<R: Runtime>(rt: R, ip: IpAddr) {
    let t = trio(&rt, ip, Some(NatClass::Cone), |_| {}).await;
    let stranger = std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind");
    let from = stranger.local_addr().expect("addr");
    let to = t.a.local_addr();
    let quick = Duration::from_secs(2);

    stranger.send_to(b"whole datagram", to).expect("send");
    let mut buf = [0u8; 64];
    let (n, src) = within(&rt, quick, t.a.recv_from_into(&mut buf))
        .await
        .expect("alive");
    assert_eq!((&buf[..n], src), (&b"whole datagram"[..], from));
    stranger.send_to(b"longer than four", to).expect("send");
    let mut short = [0u8; 4];
    let (n, _) = within(&rt, quick, t.a.recv_from_into(&mut short))
        .await
        .expect("alive");
    assert_eq!(&short[..n], b"long");
    // A keep-alive is the agent's, not the application's.
    let keepalive = natrix_proto::wire::Keepalive {
        sender: NodeId(99),
        punch_id: 1,
    };
    stranger.send_to(&keepalive.to_bytes(), to).expect("send");
    stranger.send_to(b"after", to).expect("send");
    let (n, _) = within(&rt, quick, t.a.recv_from_into(&mut buf))
        .await
        .expect("alive");
    assert_eq!(&buf[..n], b"after");
    let d = t.a.driver_stats();
    assert_eq!(
        (
            d.datagrams_received,
            d.keepalives,
            d.app_datagrams,
            d.app_datagrams_dropped
        ),
        (4, 1, 3, 0)
    );

    // Nobody reads for a while: the inbox takes QUEUE_CAPACITY datagrams and
    // drops the rest (counted); the node goes on.
    // More than the inbox holds, with room for the kernel to lose a few
    // chunks on a loaded machine.
    let sent = crate::QUEUE_CAPACITY + 400;
    for i in 0..sent {
        stranger
            .send_to(&u32::try_from(i).expect("small").to_be_bytes(), to)
            .expect("send");
        if i % 50 == 49 {
            // Paced, so that the kernel's socket buffer keeps them.
            sleep(&rt, Duration::from_millis(5)).await;
        }
    }
    let t0 = StdInstant::now();
    while t.a.driver_stats().datagrams_received < 4 + sent as u64
        && t0.elapsed() < Duration::from_secs(3)
    {
        sleep(&rt, Duration::from_millis(10)).await;
    }
    let d = t.a.driver_stats();
    let arrived = d.datagrams_received - 4;
    let capacity = crate::QUEUE_CAPACITY as u64;
    assert!(arrived > capacity, "only {arrived} arrived");
    assert_eq!(d.app_datagrams - 3, capacity);
    assert_eq!(d.app_datagrams_dropped, arrived - capacity);
    let mut last = None;
    for _ in 0..capacity {
        let (n, _) = within(&rt, quick, t.a.recv_from_into(&mut buf))
            .await
            .expect("alive");
        assert_eq!(n, 4);
        let i = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes"));
        assert!(last.is_none_or(|l| i > l), "{i} after {last:?}");
        last = Some(i);
    }
    // Drained, it takes datagrams again (the old call still works too).
    stranger.send_to(b"again", to).expect("send");
    let (bytes, src) = within(&rt, quick, t.a.recv_from()).await.expect("alive");
    assert_eq!((&bytes[..], src), (&b"again"[..], from));
    for n in [&t.a, &t.b, &t.r] {
        n.shutdown().await;
    }
    assert!(matches!(
        t.a.recv_from_into(&mut buf).await,
        Err(crate::NodeError::Closed)
    ));
}

/// Runs all `futs` concurrently and adds up their results.
async fn sum_all(mut futs: Vec<Pin<Box<dyn Future<Output = u64> + Send + '_>>>) -> u64 {
    let mut total = 0;
    future::poll_fn(|cx| {
        futs.retain_mut(|f| match f.as_mut().poll(cx) {
            std::task::Poll::Ready(n) => {
                total += n;
                false
            }
            std::task::Poll::Pending => true,
        });
        if futs.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    total
}

/// Throughput of a driver over loopback (issue #7, item 8).
#[derive(Clone, Copy, Debug)]
pub struct Throughput {
    /// Successful punches per second, `pairs` requesters punching at once
    /// through one coordinator.
    pub punches_per_sec: f64,
    /// Reflex answers per second, `pairs` nodes probing one responder at once.
    pub reflex_answers_per_sec: f64,
    /// Punches that failed during the measurement (should be 0 on loopback).
    pub punches_failed: u64,
    /// Concurrent pairs.
    pub pairs: usize,
}

/// Measures punches and reflex answers per second for `window` each.
pub async fn throughput<R: Runtime>(rt: R, pairs: usize, window: Duration) -> Throughput {
    let hub = InProcessHub::new();
    let cfg = test_config()
        .to_builder()
        .coordinator_requests_per_window(u32::MAX)
        .responder_trains_per_introducer(u32::MAX)
        .responder_concurrent_trains(u32::MAX)
        .build()
        .expect("valid");
    let start = |id: NodeId| {
        let mut c = NodeConfig::new(id, SocketAddr::new(V4, 0));
        c.agent = cfg.clone();
        let n = Node::spawn(rt.clone(), c, hub.join(id)).expect("bind");
        hub.set_addr(id, n.local_addr());
        n
    };
    let r = start(R);
    r.set_local_classification(NatClass::Open, r.local_addr());
    let nodes: Vec<(Node<R>, Node<R>)> = (0..pairs as u64)
        .map(|i| (start(NodeId(100 + 2 * i)), start(NodeId(101 + 2 * i))))
        .collect();
    for (a, b) in &nodes {
        for n in [a, b] {
            hub.connect(n.id(), R, Duration::from_millis(1));
            n.set_local_classification(NatClass::Cone, n.local_addr());
        }
    }
    sleep(&rt, Duration::from_millis(200)).await;

    let t0 = StdInstant::now();
    let failed = &std::sync::atomic::AtomicU64::new(0);
    let punched = sum_all(
        nodes
            .iter()
            .map(|(a, b)| {
                Box::pin(async move {
                    let mut ok = 0u64;
                    while t0.elapsed() < window {
                        match a.request_punch(b.id(), R).await {
                            Ok(_) => ok += 1,
                            Err(_) => {
                                failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    }
                    ok
                }) as Pin<Box<dyn Future<Output = u64> + Send + '_>>
            })
            .collect(),
    )
    .await;
    let punches_per_sec = punched as f64 / t0.elapsed().as_secs_f64();

    let t0 = StdInstant::now();
    let answered = sum_all(
        nodes
            .iter()
            .map(|(a, _)| {
                Box::pin(async move {
                    let mut ok = 0u64;
                    while t0.elapsed() < window {
                        if a.probe_reflex(R).await.is_ok() {
                            ok += 1;
                        }
                    }
                    ok
                }) as Pin<Box<dyn Future<Output = u64> + Send + '_>>
            })
            .collect(),
    )
    .await;
    let reflex_answers_per_sec = answered as f64 / t0.elapsed().as_secs_f64();

    for (a, b) in &nodes {
        a.shutdown().await;
        b.shutdown().await;
    }
    r.shutdown().await;
    Throughput {
        punches_failed: failed.load(std::sync::atomic::Ordering::Relaxed),
        punches_per_sec,
        reflex_answers_per_sec,
        pairs,
    }
}

/// The demo behind each driver's `examples/punch_loopback.rs`: a coordinator
/// and two peers on 127.0.0.1 that talk only through their UDP sockets over
/// natrix's authenticated sessions; A punches to B through the coordinator,
/// runs its own session with B over the punched path, and they exchange data.
pub async fn punch_loopback_demo<R: Runtime>(rt: R) -> Result<(), String> {
    let t = net::net_trio(&rt, V4, None).await;
    println!("coordinator: {}", t.r.dial());
    println!("A: {} at {}", t.ka, t.a.local_addr());
    println!("B: {} at {}", t.kb, t.b.local_addr());
    let out =
        t.a.connect_direct(t.kb, t.r.public_key())
            .await
            .map_err(|e| format!("connect failed: {e}"))?;
    println!(
        "direct path to B at {} after {:?} ({:?}); A and B now share their own session",
        out.path, out.elapsed, out.method
    );
    t.a.send_data(t.kb, b"hello, B")
        .await
        .map_err(|e| e.to_string())?;
    let (from, bytes) = t.b.recv_data().await.map_err(|e| e.to_string())?;
    println!(
        "B got {:?} from {}",
        String::from_utf8_lossy(&bytes),
        if from == t.ka {
            "A (authenticated)"
        } else {
            "someone else"
        }
    );
    println!("A's punch stats: {:?}", t.a.stats());
    println!("coordinator's session stats: {:?}", t.r.session_stats());
    t.shutdown().await;
    Ok(())
}

/// The largest UDP datagram of the family, an empty one and a small one, sent
/// at once, come out of the runtime socket's batched receive whole, in order,
/// one per slot (no GRO on a node's socket), with their source.
pub async fn batched_receive_keeps_datagrams_whole<R: Runtime>(rt: R, ip: IpAddr) {
    use crate::runtime::{RecvBatch, UdpSocket as _};
    let socket = rt.bind(SocketAddr::new(ip, 0)).expect("bind");
    let to = socket.local_addr().expect("addr");
    let sender = std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind");
    let from = sender.local_addr().expect("addr");
    // 65,535 − 8 (UDP) − 20 (IPv4 header); IPv6 has no header in its limit.
    let max = if ip.is_ipv4() { 65_507 } else { 65_527 };
    let big: Vec<u8> = (0..max).map(|i: u32| (i % 251) as u8).collect();
    let sent: [&[u8]; 3] = [&big, b"", b"small"];
    for d in sent {
        sender.send_to(d, to).expect("send");
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    assert_eq!(
        socket.recv_batch_slots(),
        crate::batch::BatchReceiver::SLOTS,
        "batched receives on this platform"
    );
    let mut batch = RecvBatch::new(socket.recv_batch_slots());
    let mut got: Vec<Vec<u8>> = Vec::new();
    while got.len() < sent.len() {
        let n = within(
            &rt,
            Duration::from_secs(5),
            std::future::poll_fn(|cx| socket.poll_recv_batch(cx, &mut batch)),
        )
        .await
        .expect("recv");
        assert!(n >= 1);
        let (bufs, meta) = batch.parts_mut();
        for (buf, m) in bufs.zip(meta.iter()).take(n) {
            assert_eq!(m.src, from);
            assert_eq!(m.stride, m.len, "no GRO on a node's socket");
            got.push(buf[..m.len].to_vec());
        }
    }
    let want: Vec<Vec<u8>> = sent.iter().map(|d| d.to_vec()).collect();
    assert_eq!(got, want);
}

/// Instantiates the end-to-end suite for a runtime: `$block_on` runs a future
/// to completion, `$rt` makes the runtime value.
#[macro_export]
macro_rules! e2e_suite {
    ($block_on:path, $rt:expr) => {
        // 127.0.0.18 is loopback on Linux (all of 127/8), not everywhere.
        #[cfg(target_os = "linux")]
        #[test]
        fn n2_birthday_pins_the_kept_socket_v4() {
            $block_on($crate::testkit::spray::birthday_pins_the_kept_socket($rt))
        }
        #[test]
        fn c8_coordinator_serves_rfc5780_stun_v4() {
            $block_on($crate::testkit::net::stun_coordinator_serves_rfc5780($rt))
        }
        #[test]
        fn c8_measured_profiles_refine_the_pair_decision_v4() {
            $block_on($crate::testkit::net::measured_profiles_refine_the_pair_decision($rt))
        }
        #[test]
        fn batched_receive_keeps_datagrams_whole_v4() {
            $block_on($crate::testkit::batched_receive_keeps_datagrams_whole(
                $rt,
                $crate::testkit::V4,
            ))
        }
        #[test]
        fn batched_receive_keeps_datagrams_whole_v6() {
            $block_on($crate::testkit::batched_receive_keeps_datagrams_whole(
                $rt,
                $crate::testkit::V6,
            ))
        }
        #[test]
        fn s1_node_id_must_be_the_keys_v4() {
            $block_on($crate::testkit::net::net_node_id_must_be_the_keys(
                $rt,
                $crate::testkit::V4,
            ))
        }
        #[test]
        fn s1_node_id_must_be_the_keys_v6() {
            $block_on($crate::testkit::net::net_node_id_must_be_the_keys(
                $rt,
                $crate::testkit::V6,
            ))
        }
        #[test]
        fn net_punch_and_data_v4() {
            $block_on($crate::testkit::net::net_punch_and_data(
                $rt,
                $crate::testkit::V4,
            ))
        }
        #[test]
        fn net_punch_and_data_v6() {
            $block_on($crate::testkit::net::net_punch_and_data(
                $rt,
                $crate::testkit::V6,
            ))
        }
        #[test]
        fn net_wrong_key_v4() {
            $block_on($crate::testkit::net::net_wrong_key(
                $rt,
                $crate::testkit::V4,
            ))
        }
        #[test]
        fn net_wrong_key_v6() {
            $block_on($crate::testkit::net::net_wrong_key(
                $rt,
                $crate::testkit::V6,
            ))
        }
        #[test]
        fn s2_s6_net_replay_and_spoof_v4() {
            $block_on($crate::testkit::net::net_replay_and_spoof(
                $rt,
                $crate::testkit::V4,
            ))
        }
        #[test]
        fn s2_s6_net_replay_and_spoof_v6() {
            $block_on($crate::testkit::net::net_replay_and_spoof(
                $rt,
                $crate::testkit::V6,
            ))
        }
        #[test]
        fn s5_net_handshake_flood_v4() {
            $block_on($crate::testkit::net::net_handshake_flood(
                $rt,
                $crate::testkit::V4,
            ))
        }
        #[test]
        fn s5_net_handshake_flood_v6() {
            $block_on($crate::testkit::net::net_handshake_flood(
                $rt,
                $crate::testkit::V6,
            ))
        }
        #[test]
        fn punch_succeeds_v4() {
            $block_on($crate::testkit::punch_succeeds($rt, $crate::testkit::V4))
        }
        #[test]
        fn punch_succeeds_v6() {
            $block_on($crate::testkit::punch_succeeds($rt, $crate::testkit::V6))
        }
        #[test]
        fn rejections_v4() {
            $block_on($crate::testkit::rejections($rt, $crate::testkit::V4))
        }
        #[test]
        fn rejections_v6() {
            $block_on($crate::testkit::rejections($rt, $crate::testkit::V6))
        }
        #[test]
        fn timeout_v4() {
            $block_on($crate::testkit::timeout($rt, $crate::testkit::V4))
        }
        #[test]
        fn timeout_v6() {
            $block_on($crate::testkit::timeout($rt, $crate::testkit::V6))
        }
        #[test]
        fn reclassify_v4() {
            $block_on($crate::testkit::reclassify_against_two_responders(
                $rt,
                $crate::testkit::V4,
            ))
        }
        #[test]
        fn reclassify_v6() {
            $block_on($crate::testkit::reclassify_against_two_responders(
                $rt,
                $crate::testkit::V6,
            ))
        }
        #[test]
        fn cancel_by_drop_v4() {
            $block_on($crate::testkit::cancel_by_dropping_the_future(
                $rt,
                $crate::testkit::V4,
            ))
        }
        #[test]
        fn cancel_by_drop_v6() {
            $block_on($crate::testkit::cancel_by_dropping_the_future(
                $rt,
                $crate::testkit::V6,
            ))
        }
        #[test]
        fn shutdown_in_flight_v4() {
            $block_on($crate::testkit::shutdown_with_punch_in_flight(
                $rt,
                $crate::testkit::V4,
            ))
        }
        #[test]
        fn shutdown_in_flight_v6() {
            $block_on($crate::testkit::shutdown_with_punch_in_flight(
                $rt,
                $crate::testkit::V6,
            ))
        }
        #[test]
        fn app_datagrams_into_buffers_v4() {
            $block_on($crate::testkit::app_datagrams_into_caller_buffers(
                $rt,
                $crate::testkit::V4,
            ))
        }
        #[test]
        fn app_datagrams_into_buffers_v6() {
            $block_on($crate::testkit::app_datagrams_into_caller_buffers(
                $rt,
                $crate::testkit::V6,
            ))
        }
        #[test]
        fn net_data_into_buffers_v4() {
            $block_on($crate::testkit::net::net_data_into_caller_buffers(
                $rt,
                $crate::testkit::V4,
            ))
        }
        #[test]
        fn net_data_into_buffers_v6() {
            $block_on($crate::testkit::net::net_data_into_caller_buffers(
                $rt,
                $crate::testkit::V6,
            ))
        }
        #[test]
        fn s3_s4_d2_connection_relay_upgrade_fallback_v4() {
            $block_on(
                $crate::testkit::conn::net_connection_relay_upgrade_fallback(
                    $rt,
                    $crate::testkit::V4,
                ),
            )
        }
        #[test]
        fn s3_s4_d2_connection_relay_upgrade_fallback_v6() {
            $block_on(
                $crate::testkit::conn::net_connection_relay_upgrade_fallback(
                    $rt,
                    $crate::testkit::V6,
                ),
            )
        }
        #[test]
        fn s3_relay_quota_reaches_the_sender_v4() {
            $block_on($crate::testkit::conn::net_relay_quota_reaches_the_sender(
                $rt,
                $crate::testkit::V4,
            ))
        }
        #[test]
        fn s3_relay_quota_reaches_the_sender_v6() {
            $block_on($crate::testkit::conn::net_relay_quota_reaches_the_sender(
                $rt,
                $crate::testkit::V6,
            ))
        }
        #[test]
        fn s3_relay_refuses_offline_targets_v4() {
            $block_on($crate::testkit::conn::net_relay_refuses_offline_targets(
                $rt,
                $crate::testkit::V4,
            ))
        }
        #[test]
        fn s3_relay_refuses_offline_targets_v6() {
            $block_on($crate::testkit::conn::net_relay_refuses_offline_targets(
                $rt,
                $crate::testkit::V6,
            ))
        }
        #[test]
        fn s4_close_reaches_the_peer_v4() {
            $block_on($crate::testkit::conn::net_close_reaches_the_peer(
                $rt,
                $crate::testkit::V4,
            ))
        }
        #[test]
        fn s4_close_reaches_the_peer_v6() {
            $block_on($crate::testkit::conn::net_close_reaches_the_peer(
                $rt,
                $crate::testkit::V6,
            ))
        }
        #[test]
        fn s4_acceptor_learns_the_dialler_announcement_v4() {
            $block_on(
                $crate::testkit::conn::net_acceptor_learns_the_dialler_announcement(
                    $rt,
                    $crate::testkit::V4,
                ),
            )
        }
        #[test]
        fn s4_acceptor_learns_the_dialler_announcement_v6() {
            $block_on(
                $crate::testkit::conn::net_acceptor_learns_the_dialler_announcement(
                    $rt,
                    $crate::testkit::V6,
                ),
            )
        }
        #[test]
        fn recv_buffer_v4() {
            $block_on($crate::testkit::recv_buffer_is_asked_for(
                $rt,
                $crate::testkit::V4,
            ))
        }
        #[test]
        fn recv_buffer_v6() {
            $block_on($crate::testkit::recv_buffer_is_asked_for(
                $rt,
                $crate::testkit::V6,
            ))
        }
        #[test]
        fn garbage_v4() {
            $block_on($crate::testkit::garbage_on_the_socket(
                $rt,
                $crate::testkit::V4,
            ))
        }
        #[test]
        fn garbage_v6() {
            $block_on($crate::testkit::garbage_on_the_socket(
                $rt,
                $crate::testkit::V6,
            ))
        }
    };
}
