//! Connections end to end on loopback (S3, S4, D2): a coordinator and two
//! peers whose direct path the test blocks with a filter on each peer's
//! socket layer (everything but the coordinator is dropped), so that the
//! connection has to start on the relay, then upgrades when unblocked, and
//! falls back when blocked again.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_lite::future;
use natrix_proto::NatClass;
use natrix_session::PublicKey;
use natrix_session::path::{ChangeReason, PathConfig, PathEvent, PathKind};
use natrix_session::relay::{Quota, RelayConfig};

use super::net::{net_peer_with, test_keypair, test_session_config, wait_session};
use super::{sleep, test_config, within};
use crate::connection::{Connection, ConnectionEvent};
use crate::coordinator::{Coordinator, CoordinatorConfig};
use crate::node::{DatagramFilter, Node};
use crate::runtime::Runtime;

/// Path timers for tests: pings every 150 ms, dead after 500 ms without a
/// pong, upgrades retried after 300 ms.
#[must_use]
pub fn test_path_config() -> PathConfig {
    PathConfig {
        ping_interval: Duration::from_millis(150),
        dead_after: Duration::from_millis(500),
        idle_after: Duration::from_secs(5),
        upgrade_first: Duration::from_millis(300),
        upgrade_max: Duration::from_secs(2),
        ..PathConfig::default()
    }
}

/// A coordinator serving a relay with `relay` quotas.
fn coordinator<R: Runtime>(rt: &R, ip: IpAddr, relay: RelayConfig) -> Coordinator<R> {
    let mut cfg = CoordinatorConfig::new(SocketAddr::new(ip, 0));
    cfg.session = test_session_config();
    cfg.agent = test_config();
    cfg.relay = Some(relay);
    Coordinator::spawn(rt.clone(), test_keypair(3), cfg, [3; 32]).expect("bind")
}

/// A peer whose datagrams to anyone but the coordinator are dropped while
/// `blocked` is set.
fn peer<R: Runtime>(
    rt: &R,
    ip: IpAddr,
    n: u8,
    r: &Coordinator<R>,
    blocked: Arc<AtomicBool>,
) -> Node<R> {
    let coordinator = r.public_addr();
    let filter: DatagramFilter =
        Arc::new(move |to, _| to != coordinator && blocked.load(Ordering::Relaxed));
    net_peer_with(
        rt,
        ip,
        n,
        r,
        Some(filter),
        test_path_config(),
        test_config(),
    )
}

struct Setup<R: Runtime> {
    r: Coordinator<R>,
    a: Node<R>,
    b: Node<R>,
    kb: PublicKey,
    blocked: Arc<AtomicBool>,
}

impl<R: Runtime> Setup<R> {
    async fn new(rt: &R, ip: IpAddr, relay: RelayConfig) -> Self {
        let blocked = Arc::new(AtomicBool::new(true));
        let r = coordinator(rt, ip, relay);
        let a = peer(rt, ip, 1, &r, blocked.clone());
        let b = peer(rt, ip, 2, &r, blocked.clone());
        wait_session(rt, &a, r.public_key()).await;
        wait_session(rt, &b, r.public_key()).await;
        sleep(rt, Duration::from_millis(50)).await;
        Setup {
            kb: test_keypair(2).public(),
            r,
            a,
            b,
            blocked,
        }
    }

    /// A connects to B, B accepts.
    async fn connect(&self, rt: &R) -> (Connection, Connection) {
        let (ca, cb) = within(
            rt,
            Duration::from_secs(5),
            future::zip(self.a.connect(self.kb), self.b.accept()),
        )
        .await;
        (ca.expect("connect"), cb.expect("accept"))
    }

    async fn shutdown(&self) {
        self.a.shutdown().await;
        self.b.shutdown().await;
        self.r.shutdown().await;
    }
}

/// Waits for a path change on `conn` for `reason`, skipping other events.
async fn wait_change<R: Runtime>(
    rt: &R,
    conn: &Connection,
    reason: ChangeReason,
    patience: Duration,
) {
    within(rt, patience, async {
        loop {
            match conn.next_event().await {
                Some(ConnectionEvent::Path(PathEvent::Changed { reason: r, .. }))
                    if r == reason =>
                {
                    return;
                }
                Some(_) => {}
                None => panic!("connection closed while waiting for {reason:?}"),
            }
        }
    })
    .await;
}

/// One datagram from `from` arrives at `to`.
async fn exchange<R: Runtime>(rt: &R, from: &Connection, to: &Connection, msg: &[u8]) {
    from.send(msg).await.expect("send");
    let got = within(rt, Duration::from_secs(3), to.recv())
        .await
        .expect("recv");
    assert_eq!(got, msg);
}

/// Sends `msg` until it arrives at `to`, skipping what was still in flight;
/// returns how many other datagrams arrived first.
async fn deliver<R: Runtime>(rt: &R, from: &Connection, to: &Connection, msg: &[u8]) -> usize {
    from.send(msg).await.expect("send");
    within(rt, Duration::from_secs(3), async {
        let mut skipped = 0;
        loop {
            let got = to.recv().await.expect("recv");
            if got == msg {
                return skipped;
            }
            skipped += 1;
        }
    })
    .await
}

/// S3/S4/D2: a connection starts on the relay (data both ways while the
/// direct path is blocked; the coordinator forwards it), upgrades to the
/// direct path once it is unblocked and a network change is reported,
/// falls back to the relay when the direct path is blocked again (the time
/// bound is asserted in virtual time: `session/tests/paths.rs`, the
/// simulator), and keeps carrying data
/// throughout. The path it reports says all of it.
pub async fn net_connection_relay_upgrade_fallback<R: Runtime>(rt: R, ip: IpAddr) {
    let s = Setup::new(&rt, ip, RelayConfig::default()).await;
    let (ca, cb) = s.connect(&rt).await;
    let p = ca.path().await.expect("path");
    assert_eq!(p.kind, PathKind::Relayed);
    assert_eq!(p.via, Some(s.r.public_key().node_id()));
    exchange(&rt, &ca, &cb, b"over the relay").await;
    exchange(&rt, &cb, &ca, b"back over the relay").await;
    let relayed = s.r.node().relay_stats().expect("relay stats");
    assert!(relayed.frames_forwarded >= 2, "{relayed:?}");
    assert_eq!(cb.path().await.expect("path").kind, PathKind::Relayed);

    // The direct path opens: the upgrade follows a network change at once.
    s.blocked.store(false, Ordering::Relaxed);
    s.a.refresh_interfaces();
    wait_change(&rt, &ca, ChangeReason::Upgraded, Duration::from_secs(10)).await;
    let p = ca.path().await.expect("path");
    assert_eq!(p.kind, PathKind::Direct);
    assert_eq!(p.remote, s.b.local_addr());
    assert!(p.rtt.is_some());
    assert_eq!(p.last_upgrade_error, None);
    let forwarded =
        s.r.node()
            .relay_stats()
            .expect("relay stats")
            .frames_forwarded;
    exchange(&rt, &ca, &cb, b"direct").await;
    wait_change(&rt, &cb, ChangeReason::Upgraded, Duration::from_secs(5)).await;
    exchange(&rt, &cb, &ca, b"direct back").await;
    assert_eq!(
        s.r.node()
            .relay_stats()
            .expect("relay stats")
            .frames_forwarded,
        forwarded,
        "direct traffic must not cross the relay"
    );

    // The direct path goes dark while in use: back to the relay.
    s.blocked.store(true, Ordering::Relaxed);
    let keep_busy = async {
        loop {
            let _ = ca.send(b"busy").await;
            sleep(&rt, Duration::from_millis(50)).await;
        }
    };
    within(
        &rt,
        Duration::from_secs(5),
        future::or(
            wait_change(&rt, &ca, ChangeReason::DirectDead, Duration::from_secs(5)),
            keep_busy,
        ),
    )
    .await;
    assert_eq!(ca.path().await.expect("path").kind, PathKind::Relayed);
    // Data flows over the relay again (after what was still in flight).
    deliver(&rt, &ca, &cb, b"relay again").await;

    let ps = s.a.path_stats().expect("path stats");
    assert!(
        ps.upgrades_succeeded >= 1 && ps.direct_deaths >= 1,
        "{ps:?}"
    );
    assert!(
        ps.bytes_sent_relayed > 0 && ps.bytes_sent_direct > 0,
        "{ps:?}"
    );
    assert_eq!(s.a.stats().upgrades_succeeded, ps.upgrades_succeeded);
    s.shutdown().await;
}

/// S3: the relay's rate quota refuses a flood with a typed error that
/// reaches the sender (which quota, when it resets); the circuit carries
/// data again once the bucket refills.
pub async fn net_relay_quota_reaches_the_sender<R: Runtime>(rt: R, ip: IpAddr) {
    let relay = RelayConfig {
        rate_bytes_per_sec: 4_000,
        burst_bytes: 4_000,
        ..RelayConfig::default()
    };
    let s = Setup::new(&rt, ip, relay).await;
    let (ca, cb) = s.connect(&rt).await;
    let big = [7u8; 1_000];
    for _ in 0..20 {
        let _ = ca.send(&big).await;
    }
    let refusal = within(&rt, Duration::from_secs(3), async {
        loop {
            if let Some(ConnectionEvent::RelayRefused(r)) = ca.next_event().await {
                return r;
            }
        }
    })
    .await;
    assert_eq!(refusal.quota, Quota::Rate);
    assert!(refusal.retry_after > Duration::ZERO);
    // The coordinator's task publishes its counters after it handled the
    // flood, which can be after its notice reached A.
    within(&rt, Duration::from_secs(2), async {
        loop {
            let stats = s.r.node().relay_stats().expect("relay stats");
            if stats.refused(Quota::Rate) > 0 {
                return;
            }
            sleep(&rt, Duration::from_millis(5)).await;
        }
    })
    .await;
    // At most a burst got through; after the refill, data passes again.
    sleep(&rt, refusal.retry_after + Duration::from_millis(200)).await;
    let got = deliver(&rt, &ca, &cb, b"after the refill").await;
    assert!(got <= 4, "{got} datagrams passed a 4,000-byte burst");
    s.shutdown().await;
}

/// Bad input: a connection to a key no coordinator knows is refused by the
/// relay as offline (typed), then closes when its handshake gives up; the
/// coordinator opens no circuit for it and the other peers' connection is
/// untouched.
pub async fn net_relay_refuses_offline_targets<R: Runtime>(rt: R, ip: IpAddr) {
    let s = Setup::new(&rt, ip, RelayConfig::default()).await;
    let (ca, cb) = s.connect(&rt).await;
    let ghost = test_keypair(77).public();
    let cg =
        s.a.connect_via(ghost, s.r.public_key())
            .await
            .expect("opened on the relay");
    let mut refused = false;
    within(&rt, Duration::from_secs(5), async {
        loop {
            match cg.next_event().await {
                Some(ConnectionEvent::RelayRefused(r)) => {
                    assert_eq!(r.quota, Quota::Offline);
                    refused = true;
                }
                Some(ConnectionEvent::Closed(_)) | None => break,
                Some(_) => {}
            }
        }
    })
    .await;
    assert!(refused, "the relay did not say the target is offline");
    assert!(
        s.r.node()
            .relay_stats()
            .expect("stats")
            .refused(Quota::Offline)
            > 0
    );
    exchange(&rt, &ca, &cb, b"unaffected").await;
    s.shutdown().await;
}

/// Closing a connection tells the peer: its side ends at once (no session
/// timeout), with `ClosedByPeer`, and its reads end.
pub async fn net_close_reaches_the_peer<R: Runtime>(rt: R, ip: IpAddr) {
    let s = Setup::new(&rt, ip, RelayConfig::default()).await;
    let (ca, cb) = s.connect(&rt).await;
    exchange(&rt, &ca, &cb, b"before the close").await;
    ca.close().await;
    within(&rt, Duration::from_secs(3), async {
        loop {
            match cb.next_event().await {
                Some(ConnectionEvent::ClosedByPeer) => break,
                Some(ConnectionEvent::Closed(e)) => {
                    panic!("closed, not by the peer: {e:?}")
                }
                Some(_) => {}
                None => panic!("events ended without Closed"),
            }
        }
    })
    .await;
    assert!(
        within(&rt, Duration::from_secs(3), cb.recv())
            .await
            .is_err(),
        "reads end once the connection is closed"
    );
    assert!(s.b.session(test_keypair(1).public()).await.is_none());
    s.shutdown().await;
}

/// The accepting side learns the dialler's class and reflex over their
/// relayed session (it never looks the dialler up): with A open and A's own
/// direct datagrams blocked, B's upgrade is the pair matrix's Direct verdict
/// (a path ping to A), not a punch toward an Unknown peer. Found on real NAT
/// by natrix-lab (open × port-restricted punched where the simulator
/// predicted a direct exchange).
pub async fn net_acceptor_learns_the_dialler_announcement<R: Runtime>(rt: R, ip: IpAddr) {
    let r = coordinator(&rt, ip, RelayConfig::default());
    let a = peer(&rt, ip, 1, &r, Arc::new(AtomicBool::new(true)));
    let b = peer(&rt, ip, 2, &r, Arc::new(AtomicBool::new(false)));
    a.set_local_classification(NatClass::Open, a.local_addr());
    wait_session(&rt, &a, r.public_key()).await;
    wait_session(&rt, &b, r.public_key()).await;
    sleep(&rt, Duration::from_millis(50)).await;
    let (ca, cb) = within(
        &rt,
        Duration::from_secs(5),
        future::zip(a.connect(test_keypair(2).public()), b.accept()),
    )
    .await;
    let (ca, cb) = (ca.expect("connect"), cb.expect("accept"));
    // B's first upgrade comes ACCEPTOR_FIRST_UPGRADE after it accepted.
    within(&rt, Duration::from_secs(5), async {
        while b.stats().upgrades_attempted == 0 {
            sleep(&rt, Duration::from_millis(20)).await;
        }
    })
    .await;
    let st = b.stats();
    assert_eq!(
        st.punches_attempted, 0,
        "B punched: it did not know A's class"
    );
    assert!(st.direct_paths >= 1, "B's verdict was not Direct: {st:?}");
    drop((ca, cb));
    a.shutdown().await;
    b.shutdown().await;
    r.shutdown().await;
}
