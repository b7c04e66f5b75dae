//! A connection between two peers, as an application embeds natrix on tokio:
//! a coordinator (with its relay) and two peers in one process on 127.0.0.1,
//! each with its own key file. B accepts, A connects to B's public key; the
//! connection starts on the coordinator's relay, carries datagrams both ways,
//! moves to the direct path by itself, and everything shuts down.
//! `docs/guide.md` walks through this file.
//!
//! `cargo run -p natrix-tokio --example tokio_connect`

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use natrix_tokio::{
    ConnectError, Connection, ConnectionEvent, Coordinator, CoordinatorConfig, Dial, Keypair,
    NatClass, Node, NodeConfig, PathEvent, PathInfo, PathKind, PublicKey, RelayConfig,
    SessionControl, SessionControlConfig, Tokio, keyfile, os_seed,
};

type Error = Box<dyn std::error::Error>;

/// Every wait in this example gives up after this long: enough for a failed
/// upgrade to be retried (the first retry comes 5 s after a failure).
const PATIENCE: Duration = Duration::from_secs(20);

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let dir = std::env::temp_dir().join(format!("natrix-connect-{}", std::process::id()));
    let result = run(&dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = result {
        eprintln!("tokio_connect failed: {e}");
        std::process::exit(1);
    }
}

async fn run(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir)?;

    // [coordinator]
    let mut config = CoordinatorConfig::new("127.0.0.1:0".parse()?);
    config.relay = Some(RelayConfig {
        rate_bytes_per_sec: 64 * 1024,
        ..RelayConfig::default()
    });
    let coordinator = Coordinator::spawn(Tokio, identity(dir, "coordinator")?, config, os_seed())?;
    let dial = coordinator.dial().to_string(); // what peers are configured with
    println!("coordinator: {dial}");
    // [coordinator]

    let alice = start_peer(identity(dir, "alice")?, &dial)?;
    let bob = start_peer(identity(dir, "bob")?, &dial)?;
    let bob_key = bob.public_key().ok_or("bob has no identity")?;

    // [connect]
    let (to_bob, from_alice) = within("connection", async {
        tokio::try_join!(
            async { Ok::<_, Error>(connect(&alice, bob_key).await?) },
            async { Ok::<_, Error>(bob.accept().await?) },
        )
    })
    .await??;
    println!("alice: connected to {}", to_bob.peer());
    println!("bob:   accepted {}", from_alice.peer());
    // [connect]

    // [datagrams]
    to_bob.send(b"hello, bob").await?;
    let got = within("datagram", from_alice.recv()).await??;
    println!("bob:   got {:?}", String::from_utf8_lossy(&got));
    from_alice.send(b"hello, alice").await?;
    let mut buf = [0u8; 1500];
    let n = within("datagram", to_bob.recv_into(&mut buf)).await??;
    println!("alice: got {:?}", String::from_utf8_lossy(&buf[..n]));
    // [datagrams]

    // [events]
    let direct = within("direct path", async {
        loop {
            match to_bob.next_event().await {
                Some(ConnectionEvent::Path(PathEvent::Changed { info, reason })) => {
                    println!("alice: path {} ({reason:?})", describe(&info));
                    if info.kind == PathKind::Direct {
                        return Ok(info);
                    }
                }
                Some(ConnectionEvent::Path(PathEvent::UpgradeFailed { error, .. })) => {
                    println!("alice: upgrade failed, staying on the relay: {error}");
                }
                Some(ConnectionEvent::RelayRefused(refusal)) => {
                    println!("alice: relay refused a datagram: {refusal}");
                }
                Some(ConnectionEvent::Closed(why)) => return Err(format!("closed: {why:?}")),
                Some(other) => println!("alice: {other:?}"),
                None => return Err("the connection closed".to_owned()),
            }
        }
    })
    .await??;
    // [events]
    if direct.remote != bob.local_addr() {
        return Err(format!("direct path to {}, not to bob", direct.remote).into());
    }

    // [path]
    to_bob.send(b"now direct").await?;
    within("datagram", from_alice.recv()).await??;
    let path = to_bob.path().await?;
    println!(
        "alice: {} path to {}, rtt {:?}, sent {} B in {} datagrams, received {} B",
        path.kind, path.remote, path.rtt, path.bytes_sent, path.datagrams_sent, path.bytes_received,
    );
    // [path]
    if path.kind != PathKind::Direct || path.datagrams_sent != 2 || path.datagrams_received != 1 {
        return Err(format!("unexpected path report: {path:?}").into());
    }

    // [stats]
    let relayed = coordinator.node().relay_stats().unwrap_or_default();
    let paths = alice.path_stats().unwrap_or_default();
    println!(
        "coordinator relayed {} frames ({} B); alice upgraded {} of {} times",
        relayed.frames_forwarded,
        relayed.bytes_forwarded,
        paths.upgrades_succeeded,
        paths.upgrades_attempted,
    );
    // [stats]

    // [shutdown]
    to_bob.close().await;
    from_alice.close().await;
    alice.shutdown().await;
    bob.shutdown().await;
    coordinator.shutdown().await;
    // [shutdown]
    println!("done");
    Ok(())
}

// [identity]
/// This node's key pair from its key file, created with a fresh random secret
/// the first time.
fn identity(dir: &Path, name: &str) -> Result<Keypair, Error> {
    let keypair = keyfile::load_or_create(&dir.join(format!("{name}.key")), os_seed)?;
    println!("{name}: public key {}", keypair.public());
    Ok(keypair)
}
// [identity]

// [peer]
/// A peer node on 127.0.0.1 that keeps a session to the coordinator `dial`
/// (`natrix1…@host:port`).
fn start_peer(keypair: Keypair, dial: &str) -> Result<Node, Error> {
    let dial: Dial = dial.parse()?;
    let addr: SocketAddr = dial
        .socket_addr()
        .ok_or("the coordinator needs an IP address")?;
    let key = keypair.public();
    let control = SessionControl::new(
        keypair,
        SessionControlConfig {
            coordinators: vec![(dial.key, addr)],
            ..SessionControlConfig::default()
        },
        os_seed(),
    );
    let config = NodeConfig::for_key(&key, "127.0.0.1:0".parse()?);
    let node = Node::spawn(Tokio, config, control)?;
    // A node finds its NAT class and public address itself when it has
    // coordinators at two or more IP addresses. With one, as here, publish
    // them: reachable at the bound address, Cone (punch before going direct).
    node.set_local_classification(NatClass::Cone, node.local_addr());
    Ok(node)
}
// [peer]

// [retry]
/// Connects to `peer`, retrying for a while when this node's coordinator
/// session is not up yet or the coordinator does not know `peer` yet.
async fn connect(node: &Node, peer: PublicKey) -> Result<Connection, ConnectError> {
    let give_up = Instant::now() + PATIENCE / 2;
    loop {
        match node.connect(peer).await {
            Err(ConnectError::NoCoordinator | ConnectError::Offline)
                if Instant::now() < give_up =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}
// [retry]

/// One line about a path.
fn describe(info: &PathInfo) -> String {
    match info.kind {
        PathKind::Direct => format!("direct to {}", info.remote),
        PathKind::Relayed => match info.via {
            Some(coordinator) => format!("relayed by coordinator {coordinator}"),
            None => "relayed".to_owned(),
        },
    }
}

/// `fut`'s output, or an error naming `what` did not come in time.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Result<T, Error> {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .map_err(|_| format!("no {what} within {PATIENCE:?}").into())
}
