//! N2 in the driver, on loopback: a birthday attempt's sockets, and the
//! direct path pinned to the one that found it.
//!
//! Loopback has no NAT, so this shows the driver's mechanics, not the odds
//! of a birthday punch (the kernel-NAT lab does): the hard side A is bound
//! on its own loopback address (127.0.0.18, so that nothing else there can
//! answer), and announces a symmetric NAT with random ports; B announces a
//! port-restricted cone. Their measured profiles make A the attempt's
//! opener. A's main socket is kept from B by A's datagram filter (a NAT in
//! front of it whose mapping toward B is not the one B would answer), so
//! only A's birthday sockets can reach B; and B drops everything toward
//! A's IP for the first 400 ms, so that A has opened several sockets before
//! one of them hears from B.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_lite::future;
use natrix_proto::{
    Behaviour, Config, FilteringBehaviour, MappingBehaviour, NatClass, PathMethod, PortAllocation,
};
use natrix_session::path::PathConfig;

use super::net::{net_coordinator, net_peer_with, test_keypair, test_session_config, wait_session};
use super::{sleep, within};
use crate::coordinator::Coordinator;
use crate::node::{DatagramFilter, Node};
use crate::runtime::Runtime;

/// The hard side's own loopback address.
pub const HARD_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 18));

fn behaviour(mapping: MappingBehaviour, allocation: PortAllocation) -> Behaviour {
    Behaviour {
        nat: Some(true),
        mapping: Some(mapping),
        filtering: Some(FilteringBehaviour::AddressAndPortDependent),
        allocation: Some(allocation),
        ..Behaviour::UNKNOWN
    }
}

fn config() -> Config {
    Config::builder()
        .auto_reclassify(false)
        .punch_deadline(Duration::from_secs(4))
        .build()
        .expect("valid test config")
}

/// A peer with identity `n` on `ip` with a session to `r`, announced as
/// `class` at its own address with a measured profile (`mapping`,
/// address-and-port-dependent filtering, random ports).
fn peer<R: Runtime>(
    rt: &R,
    ip: IpAddr,
    n: u8,
    r: &Coordinator<R>,
    filter: DatagramFilter,
    class: NatClass,
    mapping: MappingBehaviour,
) -> Node<R> {
    let node = net_peer_with(rt, ip, n, r, Some(filter), PathConfig::default(), config());
    node.set_local_classification(class, node.local_addr());
    node.set_behaviour(behaviour(mapping, PortAllocation::Random));
    node
}

async fn wait_for<R: Runtime>(rt: &R, what: &str, mut done: impl FnMut() -> bool) {
    within(rt, Duration::from_secs(3), async {
        while !done() {
            sleep(rt, Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(done(), "{what}");
}

/// A (symmetric, random ports) connects to B (port-restricted cone): a
/// birthday attempt opens sockets on A's IP, the one B's answer reaches is
/// kept and the others are closed, and the direct path is pinned to it —
/// the session handshake, session data and application datagrams to B all
/// leave from it (A's main socket could not reach B at all), and what B
/// sends back to it reaches A's session and A's application.
pub async fn birthday_pins_the_kept_socket<R: Runtime>(rt: R) {
    let r = net_coordinator(&rt, super::V4, test_session_config());
    let gate = Arc::new(AtomicBool::new(false));
    let open = gate.clone();
    let b_filter: DatagramFilter =
        Arc::new(move |to, _| to.ip() == HARD_IP && !open.load(Ordering::Relaxed));
    let b = peer(
        &rt,
        super::V4,
        2,
        &r,
        b_filter,
        NatClass::Cone,
        MappingBehaviour::EndpointIndependent,
    );
    let b_addr = b.local_addr();
    let a_filter: DatagramFilter = Arc::new(move |to, _| to == b_addr);
    let a = peer(
        &rt,
        HARD_IP,
        1,
        &r,
        a_filter,
        NatClass::Symmetric,
        MappingBehaviour::AddressAndPortDependent,
    );
    let (ka, kb) = (test_keypair(1).public(), test_keypair(2).public());
    wait_session(&rt, &a, r.public_key()).await;
    wait_session(&rt, &b, r.public_key()).await;
    for n in [&a, &b] {
        wait_for(&rt, "profile announced", || {
            n.classification().is_some_and(|c| c.profile.is_some())
        })
        .await;
    }
    // The announcements reach R.
    sleep(&rt, Duration::from_millis(100)).await;

    let (out, ()) = future::zip(
        within(
            &rt,
            Duration::from_secs(6),
            a.connect_direct(kb, r.public_key()),
        ),
        async {
            sleep(&rt, Duration::from_millis(400)).await;
            gate.store(true, Ordering::Relaxed);
        },
    )
    .await;
    let out = out.expect("the birthday attempt finds the path");
    assert_eq!(out.path, b_addr);
    assert_eq!(out.method, PathMethod::Punched);
    let stats = a.stats();
    assert_eq!(
        (stats.birthday_attempts, stats.birthday_successes),
        (1, 1),
        "{stats:?}"
    );
    assert!(stats.spray_datagrams >= 2, "{stats:?}");
    // Several sockets were opened, on A's IP; one stays, pinned.
    let d = a.driver_stats();
    assert!(d.spray_sockets_opened >= 2, "{d:?}");
    assert_eq!(d.spray_socket_failures, 0, "{d:?}");
    assert_eq!((d.spray_sockets_open, d.pinned_paths), (1, 1), "{d:?}");

    // A's session with B runs on the path; B sees it at the kept socket,
    // not at A's main socket.
    assert_eq!(a.session(kb).await.expect("session to B").addr, b_addr);
    a.send_data(kb, b"ping from the kept socket")
        .await
        .expect("send");
    let (from, bytes) = within(&rt, Duration::from_secs(2), b.recv_data())
        .await
        .expect("recv");
    assert_eq!((from, &bytes[..]), (ka, &b"ping from the kept socket"[..]));
    // (The responder's session is up once the first data came in.)
    let pinned = b.session(ka).await.expect("session to A").addr;
    assert_eq!(pinned.ip(), HARD_IP);
    assert_ne!(pinned, a.local_addr());
    b.send_data(ka, b"pong to the kept socket")
        .await
        .expect("send");
    let (from, bytes) = within(&rt, Duration::from_secs(2), a.recv_data())
        .await
        .expect("recv");
    assert_eq!((from, &bytes[..]), (kb, &b"pong to the kept socket"[..]));

    // The application's own datagrams take the pinned socket too, both ways.
    a.send_to(b"app datagram", b_addr).await.expect("send");
    let (bytes, from) = within(&rt, Duration::from_secs(2), b.recv_from())
        .await
        .expect("recv");
    assert_eq!((&bytes[..], from), (&b"app datagram"[..], pinned));
    b.send_to(b"app answer", pinned).await.expect("send");
    let (bytes, from) = within(&rt, Duration::from_secs(2), a.recv_from())
        .await
        .expect("recv");
    assert_eq!((&bytes[..], from), (&b"app answer"[..], b_addr));

    let d = a.driver_stats();
    assert!(d.spray_datagrams_received >= 3, "{d:?}");
    assert_eq!((d.spray_sockets_open, d.pinned_paths), (1, 1), "{d:?}");
    a.shutdown().await;
    b.shutdown().await;
    r.shutdown().await;
}
