//! The networked half of the end-to-end suite: a coordinator and two peers
//! that talk only through their UDP sockets, over natrix's authenticated
//! sessions (no in-process hub). Loopback only.

use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::future;
use natrix_proto::{Config, Instant, NatClass, PathMethod};
use natrix_session::path::PathConfig;
use natrix_session::{Endpoint, HandshakeError, Keypair, PublicKey, SessionConfig};

use super::{sleep, test_config, within};
use crate::coordinator::{Coordinator, CoordinatorConfig};
use crate::net::{SessionControl, SessionControlConfig};
use crate::node::{DatagramFilter, Node, NodeConfig, SessionRequestError};
use crate::runtime::{Runtime, UdpSocket as _};

/// A fixed test identity (never use fixed secrets outside tests).
#[must_use]
pub fn test_keypair(n: u8) -> Keypair {
    let mut secret = [n; 32];
    secret[0] = 0x4e;
    Keypair::from_secret(secret)
}

/// Session timers for tests: a dial to a wrong key gives up after about a
/// second instead of five.
#[must_use]
pub fn test_session_config() -> SessionConfig {
    SessionConfig {
        handshake_retry: Duration::from_millis(150),
        handshake_timeout: Duration::from_millis(1_000),
        ..SessionConfig::default()
    }
}

fn seed(n: u8) -> [u8; 32] {
    [n.wrapping_mul(31).wrapping_add(7); 32]
}

/// A coordinator R and two peers A, B with sessions to it.
#[derive(Debug)]
pub struct NetTrio<R: Runtime> {
    /// The coordinator.
    pub r: Coordinator<R>,
    /// Requester.
    pub a: Node<R>,
    /// Responder.
    pub b: Node<R>,
    /// A's key.
    pub ka: PublicKey,
    /// B's key.
    pub kb: PublicKey,
}

impl<R: Runtime> NetTrio<R> {
    /// Shuts all three down.
    pub async fn shutdown(&self) {
        self.a.shutdown().await;
        self.b.shutdown().await;
        self.r.shutdown().await;
    }
}

/// Starts a peer with identity `n` that keeps a session to `r`.
pub fn net_peer<R: Runtime>(
    rt: &R,
    ip: IpAddr,
    n: u8,
    r: &Coordinator<R>,
    filter: Option<DatagramFilter>,
) -> Node<R> {
    net_peer_with(rt, ip, n, r, filter, PathConfig::default(), test_config())
}

/// [`net_peer`] with connections' path timers `paths` and the agent's
/// configuration `agent`.
pub fn net_peer_with<R: Runtime>(
    rt: &R,
    ip: IpAddr,
    n: u8,
    r: &Coordinator<R>,
    filter: Option<DatagramFilter>,
    paths: PathConfig,
    agent: Config,
) -> Node<R> {
    let kp = test_keypair(n);
    let key = kp.public();
    let control = SessionControl::new(
        kp,
        SessionControlConfig {
            session: test_session_config(),
            coordinators: vec![(r.public_key(), r.public_addr())],
            serve: false,
            paths,
            ..SessionControlConfig::default()
        },
        seed(n),
    );
    let mut cfg = NodeConfig::for_key(&key, SocketAddr::new(ip, 0));
    cfg.agent = agent;
    cfg.datagram_filter = filter;
    let node = Node::spawn(rt.clone(), cfg, control).expect("bind");
    node.set_local_classification(NatClass::Cone, node.local_addr());
    node
}

/// Starts a coordinator whose session layer is configured by `session`.
pub fn net_coordinator<R: Runtime>(rt: &R, ip: IpAddr, session: SessionConfig) -> Coordinator<R> {
    let mut cfg = CoordinatorConfig::new(SocketAddr::new(ip, 0));
    cfg.session = session;
    cfg.agent = test_config();
    Coordinator::spawn(rt.clone(), test_keypair(3), cfg, seed(3)).expect("bind")
}

/// Waits until `node` has a session to `key`.
pub async fn wait_session<R: Runtime>(rt: &R, node: &Node<R>, key: PublicKey) {
    within(rt, Duration::from_secs(5), async {
        while node.session(key).await.is_none() {
            sleep(rt, Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// A coordinator and two peers on `ip`, sessions up; A's outgoing datagrams
/// pass `filter_a`.
pub async fn net_trio<R: Runtime>(
    rt: &R,
    ip: IpAddr,
    filter_a: Option<DatagramFilter>,
) -> NetTrio<R> {
    let r = net_coordinator(rt, ip, test_session_config());
    let a = net_peer(rt, ip, 1, &r, filter_a);
    let b = net_peer(rt, ip, 2, &r, None);
    let (ka, kb) = (test_keypair(1).public(), test_keypair(2).public());
    wait_session(rt, &a, r.public_key()).await;
    wait_session(rt, &b, r.public_key()).await;
    // Let the announcements reach R.
    sleep(rt, Duration::from_millis(50)).await;
    NetTrio { r, a, b, ka, kb }
}

/// Punch through the coordinator, then exchange data over the peers' own
/// session on the punched path.
pub async fn net_punch_and_data<R: Runtime>(rt: R, ip: IpAddr) {
    let t = net_trio(&rt, ip, None).await;
    let out = within(
        &rt,
        Duration::from_secs(5),
        t.a.connect_direct(t.kb, t.r.public_key()),
    )
    .await
    .expect("direct path");
    assert_eq!(out.path, t.b.local_addr());
    assert_eq!(out.method, PathMethod::Punched);
    // A's session with B runs on the punched path, not through R.
    let s = t.a.session(t.kb).await.expect("session to B");
    assert_eq!(s.addr, t.b.local_addr());
    t.a.send_data(t.kb, b"ping over the punched path")
        .await
        .expect("send");
    let (from, bytes) = within(&rt, Duration::from_secs(2), t.b.recv_data())
        .await
        .expect("recv");
    assert_eq!(
        (from, &bytes[..]),
        (t.ka, &b"ping over the punched path"[..])
    );
    t.b.send_data(t.ka, b"pong").await.expect("send");
    let (from, bytes) = within(&rt, Duration::from_secs(2), t.a.recv_data())
        .await
        .expect("recv");
    assert_eq!((from, &bytes[..]), (t.kb, &b"pong"[..]));
    assert_eq!(t.a.stats().punches_succeeded, 1);
    // R holds exactly its two sessions: the peers' own session is theirs.
    assert_eq!(t.r.session_stats().sessions_live, 2);
    t.shutdown().await;
}

/// Dialling a peer with the wrong public key fails with a typed error, and
/// the peer does no handshake work for it.
pub async fn net_wrong_key<R: Runtime>(rt: R, ip: IpAddr) {
    let t = net_trio(&rt, ip, None).await;
    let accepted = t.b.session_stats().expect("stats").handshakes_accepted;
    let wrong = test_keypair(99).public();
    let err = within(
        &rt,
        Duration::from_secs(5),
        t.a.dial(wrong, t.b.local_addr()),
    )
    .await;
    assert_eq!(
        err,
        Err(SessionRequestError::Handshake(HandshakeError::Timeout))
    );
    assert_eq!(
        t.b.session_stats().expect("stats").handshakes_accepted,
        accepted
    );
    t.shutdown().await;
}

/// Recv with a short patience: `None` when nothing arrives.
/// Application data from a session peer reaches the application through a
/// buffer it passes ([`Node::recv_data_into`]): whole, cut to a short
/// buffer, and at the largest size a session carries; counted.
pub async fn net_data_into_caller_buffers<R: Runtime>(rt: R, ip: IpAddr) {
    let t = net_trio(&rt, ip, None).await;
    // On loopback A reaches B directly.
    within(
        &rt,
        Duration::from_secs(5),
        t.a.dial(t.kb, t.b.local_addr()),
    )
    .await
    .expect("a session to B");
    let quick = Duration::from_secs(2);
    let mut buf = vec![0u8; natrix_session::MAX_PAYLOAD];
    t.a.send_data(t.kb, b"into a buffer").await.expect("send");
    let (from, n) = within(&rt, quick, t.b.recv_data_into(&mut buf))
        .await
        .expect("alive");
    assert_eq!((from, &buf[..n]), (t.ka, &b"into a buffer"[..]));
    t.a.send_data(t.kb, b"0123456789").await.expect("send");
    let mut short = [0u8; 3];
    let (_, n) = within(&rt, quick, t.b.recv_data_into(&mut short))
        .await
        .expect("alive");
    assert_eq!(&short[..n], b"012");
    let largest = vec![0xA7; natrix_session::MAX_PAYLOAD];
    t.a.send_data(t.kb, &largest).await.expect("send");
    let (_, n) = within(&rt, quick, t.b.recv_data_into(&mut buf))
        .await
        .expect("alive");
    assert_eq!(&buf[..n], &largest[..]);
    let d = t.b.driver_stats();
    assert_eq!((d.data_received, d.data_dropped), (3, 0));
    assert!(d.session_datagrams >= 3);
    t.shutdown().await;
}

async fn recv_quietly<R: Runtime>(rt: &R, node: &Node<R>) -> Option<(PublicKey, Vec<u8>)> {
    future::or(async { node.recv_data().await.ok() }, async {
        sleep(rt, Duration::from_millis(300)).await;
        None
    })
    .await
}

/// S2 and S6 on real sockets: a captured transport packet replayed from
/// another socket is dropped as a replay; a forged one fails to decrypt;
/// neither moves B's session nor delivers anything.
pub async fn net_replay_and_spoof<R: Runtime>(rt: R, ip: IpAddr) {
    type Capture = Arc<Mutex<(Option<SocketAddr>, Option<Vec<u8>>)>>;
    let capture: Capture = Arc::default();
    let tap = capture.clone();
    let filter: DatagramFilter = Arc::new(move |to, bytes| {
        let mut c = tap.lock().expect("lock");
        if c.0 == Some(to) && c.1.is_none() && bytes.first() == Some(&0xA4) {
            c.1 = Some(bytes.to_vec());
        }
        false
    });
    let t = net_trio(&rt, ip, Some(filter)).await;
    within(
        &rt,
        Duration::from_secs(5),
        t.a.connect_direct(t.kb, t.r.public_key()),
    )
    .await
    .expect("direct path");
    capture.lock().expect("lock").0 = Some(t.b.local_addr());
    t.a.send_data(t.kb, b"once").await.expect("send");
    let (_, bytes) = within(&rt, Duration::from_secs(2), t.b.recv_data())
        .await
        .expect("recv");
    assert_eq!(&bytes[..], b"once");
    let packet = capture.lock().expect("lock").1.clone().expect("captured");

    let before = t.b.session_stats().expect("stats");
    let attacker = StdUdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind");
    attacker.send_to(&packet, t.b.local_addr()).expect("send");
    // A forgery with a fresh counter (bytes 8..16), so that it is not a
    // replay: it must fail authentication.
    let mut forged = packet.clone();
    if let Some(counter) = forged.get_mut(8..16) {
        let mut c = [0u8; 8];
        c.copy_from_slice(counter);
        counter.copy_from_slice(&(u64::from_be_bytes(c) + 1_000).to_be_bytes());
    }
    attacker.send_to(&forged, t.b.local_addr()).expect("send");
    assert_eq!(recv_quietly(&rt, &t.b).await, None, "nothing delivered");
    let after = t.b.session_stats().expect("stats");
    assert!(
        after.replays_dropped > before.replays_dropped,
        "S2: replay dropped"
    );
    assert!(
        after.decrypt_failures > before.decrypt_failures,
        "forgery dropped"
    );
    let s = t.b.session(t.ka).await.expect("session to A");
    assert_eq!(s.addr, t.a.local_addr(), "S6: the session did not move");
    // The session still works both ways.
    t.b.send_data(t.ka, b"still here").await.expect("send");
    let (_, bytes) = within(&rt, Duration::from_secs(2), t.a.recv_data())
        .await
        .expect("recv");
    assert_eq!(&bytes[..], b"still here");
    t.shutdown().await;
}

/// S5 on real sockets: handshake initiations from many source ports push the
/// coordinator into cookie mode; a legitimate peer still connects.
pub async fn net_handshake_flood<R: Runtime>(rt: R, ip: IpAddr) {
    let session = SessionConfig {
        cookie_threshold: 8,
        ..test_session_config()
    };
    let r = net_coordinator(&rt, ip, session);
    let mut buf = vec![0u8; natrix_session::MAX_PACKET];
    let mut sockets = Vec::new();
    for i in 0..200u32 {
        let mut secret = [0u8; 32];
        secret[..4].copy_from_slice(&i.to_be_bytes());
        secret[31] = 0x77;
        let mut ep = Endpoint::new(
            Keypair::from_secret(secret),
            SessionConfig::default(),
            [9; 32],
        );
        ep.connect(Instant::ZERO, 1, r.public_key(), r.public_addr())
            .expect("connect");
        let sock = StdUdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind");
        while let Some((to, len)) = ep.poll_transmit(&mut buf) {
            sock.send_to(&buf[..len], to).expect("send");
        }
        sockets.push(sock);
    }
    sleep(&rt, Duration::from_millis(200)).await;
    let stats = r.session_stats();
    assert!(
        stats.cookies_sent > 0,
        "S5: cookies under a flood: {stats:?}"
    );
    // A legitimate peer gets through (echoing a cookie if it is sent one).
    let c = net_peer(&rt, ip, 7, &r, None);
    wait_session(&rt, &c, r.public_key()).await;
    assert!(r.session_stats().handshakes_accepted >= 1);
    drop(sockets);
    c.shutdown().await;
    r.shutdown().await;
}

/// S1 at the node: a node's id on the rendezvous wire is its key's node id;
/// a configuration naming another id is refused before anything is bound.
pub async fn net_node_id_must_be_the_keys<R: Runtime>(rt: R, ip: IpAddr) {
    let kp = test_keypair(5);
    let key = kp.public();
    let control = SessionControl::new(kp, SessionControlConfig::default(), seed(5));
    let mut cfg = NodeConfig::for_key(&key, SocketAddr::new(ip, 0));
    cfg.id = natrix_proto::wire::NodeId(key.node_id().0 ^ 1);
    match Node::spawn(rt.clone(), cfg, control) {
        Err(crate::node::NodeError::IdentityMismatch { configured, of_key }) => {
            assert_eq!(of_key, key.node_id());
            assert_ne!(configured, of_key);
        }
        other => panic!("expected IdentityMismatch, got {other:?}"),
    }
}

/// A coordinator serving RFC 5780 STUN on `127.0.0.1` and `alt_ip`, and
/// its alternate address.
fn rfc5780_coordinator<R: Runtime>(rt: &R, alt_ip: IpAddr) -> (Coordinator<R>, SocketAddr) {
    // The coordinator binds both IPs × both ports, and tests beside this one
    // take ephemeral ports too: when one of the four is taken, try again
    // with a fresh alternate port.
    (0..20)
        .find_map(|_| {
            // A port free on the second IP (and, likely, on the first).
            let alt_port = std::net::UdpSocket::bind((alt_ip, 0))
                .and_then(|s| s.local_addr())
                .ok()?
                .port();
            let alternate = SocketAddr::new(alt_ip, alt_port);
            let mut cfg = CoordinatorConfig::new(SocketAddr::new(crate::testkit::V4, 0));
            cfg.agent = test_config();
            cfg.stun = Some(crate::stun::StunConfig {
                alternate: Some(alternate),
                ..crate::stun::StunConfig::default()
            });
            let c = Coordinator::spawn(rt.clone(), test_keypair(3), cfg, seed(3)).ok()?;
            Some((c, alternate))
        })
        .expect("a coordinator on 127.0.0.1 and 127.0.0.2 within 20 tries")
}

/// C8 through the drivers: a coordinator with an RFC 5780 alternate (a
/// second loopback IP, so IPv4 only) answers STUN on its four addresses,
/// and [`crate::stun::discover_behaviour`] against it finds no NAT, the
/// identity mapping and no filtering, with the alternate as OTHER-ADDRESS.
pub async fn stun_coordinator_serves_rfc5780<R: Runtime>(rt: R) {
    use natrix_proto::{FilteringBehaviour, MappingBehaviour};
    let alt_ip: IpAddr = "127.0.0.2".parse().expect("literal");
    let (c, alternate) = rfc5780_coordinator(&rt, alt_ip);
    let alt_port = alternate.port();
    let primary = c.node().local_addr();
    let report = within(
        &rt,
        Duration::from_secs(20),
        crate::stun::discover_behaviour(&rt, primary, 0, 7),
    )
    .await
    .expect("sockets");
    assert_eq!(report.other_address, Some(alternate), "{report:?}");
    assert_eq!(report.behaviour.nat, Some(false), "{report:?}");
    assert_eq!(
        report.behaviour.mapping,
        Some(MappingBehaviour::EndpointIndependent),
        "{report:?}"
    );
    assert_eq!(
        report.behaviour.filtering,
        Some(FilteringBehaviour::EndpointIndependent),
        "{report:?}"
    );
    // No NAT: test I and the change-IP-and-port request (answered from the
    // alternate socket) were enough.
    let stats = c.node().stun_stats().expect("serving STUN");
    assert_eq!(stats.answered, 2, "{stats:?} {report:?}");
    // A request to each of the other three addresses is answered from it.
    let client = rt
        .bind(SocketAddr::new(crate::testkit::V4, 0))
        .expect("bind");
    for to in [
        SocketAddr::new(primary.ip(), alt_port),
        SocketAddr::new(alt_ip, primary.port()),
        alternate,
    ] {
        let req = natrix_stun::codec::BindingRequest {
            transaction: [9; 12],
            ..Default::default()
        };
        let mut buf = [0u8; 600];
        let n = natrix_stun::codec::encode_request(&req, &mut buf).expect("fits");
        std::future::poll_fn(|cx| client.poll_send_to(cx, &buf[..n], to))
            .await
            .expect("send");
        let (n, from) = within(
            &rt,
            Duration::from_secs(5),
            std::future::poll_fn(|cx| client.poll_recv_from(cx, &mut buf)),
        )
        .await
        .expect("an answer");
        assert_eq!(from, to);
        match natrix_stun::codec::decode(&buf[..n]) {
            Ok(natrix_stun::codec::Message::Success(r)) => {
                assert_eq!(r.response_origin, Some(to));
                assert_eq!(r.mapped, client.local_addr().expect("bound"));
            }
            other => panic!("{other:?}"),
        }
    }
    c.shutdown().await;
}

/// C8 end to end: two nodes that measured their NAT behaviour against a
/// coordinator serving RFC 5780 announce it, and the pair decision reads
/// it. Both are announced as symmetric, which the baseline matrix skips;
/// their measured profile (loopback: no filtering) says a punch works, and
/// it does. Without the measurement the same pair is skipped.
pub async fn measured_profiles_refine_the_pair_decision<R: Runtime>(rt: R) {
    use natrix_proto::{NatProfile, TraversalError};
    let alt_ip: IpAddr = "127.0.0.2".parse().expect("literal");
    let (stun, _) = rfc5780_coordinator(&rt, alt_ip);
    let server = stun.node().local_addr();
    for measured in [false, true] {
        let t = super::trio(&rt, super::V4, Some(NatClass::Symmetric), |cfg| {
            if measured && cfg.id != super::R {
                cfg.behaviour_server = Some(server);
            }
        })
        .await;
        if !measured {
            assert!(matches!(
                t.a.request_punch(super::B, super::R).await,
                Err(TraversalError::Skipped { .. })
            ));
            assert_eq!(t.a.behaviour(), None);
            continue;
        }
        for n in [&t.a, &t.b] {
            within(&rt, Duration::from_secs(20), async {
                while n.behaviour().is_none() {
                    sleep(&rt, Duration::from_millis(10)).await;
                }
            })
            .await;
            let b = n.behaviour().expect("measured");
            // Loopback: no filtering, and the ports are whatever the
            // allocation test measured (announced with the profile, N1).
            let open = NatProfile::OPEN.with_allocation(b.allocation);
            assert_eq!(b.profile(), Some(open), "{b}");
            let announced = n.classification().expect("classified");
            assert_eq!(announced.class, NatClass::Symmetric);
            assert_eq!(announced.profile, Some(open));
            // Measured from the node's own socket: the answers came in
            // through its demultiplexer (test I, and the filtering test
            // answered from the alternate address).
            let answers = n.driver_stats().discovery_answers;
            assert!(answers >= 2, "{answers} answers through the node socket");
        }
        // The announcements cross the hub.
        sleep(&rt, Duration::from_millis(100)).await;
        let out = within(
            &rt,
            Duration::from_secs(5),
            t.a.request_punch(super::B, super::R),
        )
        .await
        .expect("the profiles say a punch works");
        assert_eq!(out.method, PathMethod::Punched);
        assert_eq!(out.path, t.b.local_addr());
        for n in [&t.a, &t.b, &t.r] {
            n.shutdown().await;
        }
    }
    stun.shutdown().await;
}
