//! The coordinator service: a node whose socket is public, serving
//! rendezvous, reflex answers, the directory and vouched announcements to
//! every peer with a session to it, and STUN Binding answers to anyone.
//!
//! It is an ordinary [`Node`] with a serving [`SessionControl`]; this type
//! bundles the setup and the dial string peers need. Every table it keeps is
//! bounded: sessions and half-open handshakes by the session layer's
//! configuration, budgets and the peer directory by the agent's, the
//! announcements it vouches for by its live sessions.

use std::fmt;
use std::net::SocketAddr;

use natrix_proto::{NatClass, Stats};
use natrix_session::{Dial, Keypair, PublicKey, SessionConfig, SessionStats};

use crate::net::{SessionControl, SessionControlConfig};
use crate::node::{Node, NodeConfig, NodeError};
use crate::runtime::Runtime;

/// How to run a coordinator.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// Where to bind its socket.
    pub bind: SocketAddr,
    /// The public address peers reach it at, announced as its reflex (class
    /// Open). Defaults to the bound address.
    pub public_addr: Option<SocketAddr>,
    /// The session layer's timers and bounds.
    pub session: SessionConfig,
    /// The agent's configuration (budgets, directory bound).
    pub agent: natrix_proto::Config,
    /// The agent's seed.
    pub agent_seed: u64,
    /// The relay's quotas (S3); `None` turns the relay off.
    pub relay: Option<natrix_session::relay::RelayConfig>,
    /// The STUN Binding server on the coordinator's socket (on by default;
    /// its `primary` defaults to [`public_addr`](Self::public_addr)); with an
    /// alternate address it serves the RFC 5780 tests (C8). `None` turns it
    /// off.
    pub stun: Option<crate::stun::StunConfig>,
    /// The socket's receive buffer to ask for
    /// ([`NodeConfig::recv_buffer`]; default
    /// [`DEFAULT_RECV_BUFFER`](crate::node::DEFAULT_RECV_BUFFER)): a
    /// coordinator takes bursts from many peers at once.
    pub recv_buffer: Option<usize>,
}

impl CoordinatorConfig {
    /// Defaults, bound at `bind`.
    #[must_use]
    pub fn new(bind: SocketAddr) -> Self {
        CoordinatorConfig {
            bind,
            public_addr: None,
            session: SessionConfig::default(),
            agent: natrix_proto::Config::default(),
            agent_seed: 0x0063_6f6f_7264,
            relay: Some(natrix_session::relay::RelayConfig::default()),
            stun: Some(crate::stun::StunConfig::default()),
            recv_buffer: Some(crate::node::DEFAULT_RECV_BUFFER),
        }
    }
}

/// A running coordinator.
pub struct Coordinator<R: Runtime> {
    node: Node<R>,
    key: PublicKey,
    public_addr: SocketAddr,
}

impl<R: Runtime> fmt::Debug for Coordinator<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coordinator")
            .field("key", &self.key)
            .field("public_addr", &self.public_addr)
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> Coordinator<R> {
    /// Binds and starts a coordinator with identity `keypair`; `seed` is the
    /// session layer's randomness ([`crate::os_seed`] in real use).
    pub fn spawn(
        rt: R,
        keypair: Keypair,
        config: CoordinatorConfig,
        seed: [u8; 32],
    ) -> Result<Self, NodeError> {
        let key = keypair.public();
        let control = SessionControl::new(
            keypair,
            SessionControlConfig {
                session: config.session,
                coordinators: Vec::new(),
                serve: true,
                relay: config.relay,
                paths: natrix_session::path::PathConfig::default(),
            },
            seed,
        );
        let mut node_config = NodeConfig::for_key(&key, config.bind);
        node_config.agent = config.agent;
        node_config.seed = config.agent_seed;
        node_config.recv_buffer = config.recv_buffer;
        node_config.stun = config.stun.map(|mut s| {
            s.primary = s.primary.or(config.public_addr);
            s
        });
        let node = Node::spawn(rt, node_config, control)?;
        let public_addr = config.public_addr.unwrap_or_else(|| node.local_addr());
        node.set_local_classification(NatClass::Open, public_addr);
        tracing::info!(key = %key, %public_addr, "coordinator running");
        Ok(Coordinator {
            node,
            key,
            public_addr,
        })
    }

    /// What peers pass to dial it: `public key @ host:port`.
    #[must_use]
    pub fn dial(&self) -> Dial {
        Dial::from_socket_addr(self.key, self.public_addr)
    }

    /// Its public key.
    #[must_use]
    pub fn public_key(&self) -> PublicKey {
        self.key
    }

    /// The address it announces.
    #[must_use]
    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    /// The node underneath (events, statistics, the socket).
    #[must_use]
    pub fn node(&self) -> &Node<R> {
        &self.node
    }

    /// Rendezvous counters.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.node.stats()
    }

    /// Session counters: handshakes accepted and refused, cookies sent,
    /// decrypt failures, replays dropped, sessions live.
    #[must_use]
    pub fn session_stats(&self) -> SessionStats {
        self.node.session_stats().unwrap_or_default()
    }

    /// Stops it and waits.
    pub async fn shutdown(&self) {
        self.node.shutdown().await;
    }
}
