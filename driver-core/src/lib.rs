//! # natrix-driver-core — the runtime-independent half of the drivers
//!
//! Everything an async driver needs that does not depend on the runtime:
//!
//! * [`Node`] — the application's handle: `request_punch`, `reclassify`,
//!   classification, statistics, events, the reflex override, datagrams for
//!   the application on the shared socket (received without allocating into
//!   a buffer the caller passes, [`Node::recv_from_into`] and
//!   [`Node::recv_data_into`]), `shutdown`;
//! * the node's task: feeds the [`Agent`](natrix_proto::Agent) with datagrams,
//!   control messages, commands and timeouts, and drains it in the documented
//!   order (transmits, then events, then the next timeout), demultiplexing the
//!   socket with the keep-alive predicate so that everything else reaches the
//!   application untouched;
//! * [`ControlPlane`] — what the node needs to carry control messages to
//!   authenticated peers — with two implementations: [`SessionControl`],
//!   natrix's own authenticated UDP sessions on the node's socket (the
//!   networked control plane, [`net`]), and [`InProcessHub`], in-process, for
//!   tests and examples;
//! * [`Coordinator`] — the coordinator service: a public node serving
//!   rendezvous, reflex answers and the directory over sessions;
//! * [`Clock`] and [`interface_addrs`].
//!
//! A runtime supplies only [`Runtime`]: bind a UDP socket it can poll, sleep
//! until an instant, spawn a task. `natrix-tokio` and `natrix-smol` are that
//! and a type alias each.
//!
//! Every protocol decision stays in `natrix-proto`: this crate moves bytes,
//! reads clocks and routes replies to waiting futures.

#[cfg(any(target_os = "linux", target_os = "android"))]
pub mod batch;
pub mod buf;
pub mod clock;
pub mod connection;
pub mod control;
pub mod coordinator;
pub mod net;
pub mod node;
pub mod portmap;
pub mod runtime;
pub mod spray;
pub mod stun;
pub mod testkit;

pub use buf::{BufPool, PooledBuf, SmallBytes};
pub use clock::Clock;
pub use connection::{Connection, ConnectionError, ConnectionEvent};
pub use control::{
    ControlError, ControlInput, ControlPlane, HubFilter, InProcessControl, InProcessHub,
};
pub use coordinator::{Coordinator, CoordinatorConfig};
pub use net::{SessionControl, SessionControlConfig};
pub use node::{
    ConnectError, DEFAULT_RECV_BUFFER, DatagramFilter, DriverStats, EventStream, LOOKUP_TIMEOUT,
    Node, NodeConfig, NodeError, NodeEvent, PunchOutcome, QUEUE_CAPACITY, Reclassified,
    SessionRequestError, interface_addrs,
};

/// 32 bytes from the operating system's RNG: the seed drivers give the
/// session layer (the protocol crates never read an OS RNG themselves).
///
/// # Panics
///
/// When the OS has no randomness to give, which leaves no safe way to make
/// session keys.
#[must_use]
pub fn os_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("the OS random number generator failed");
    seed
}
pub use runtime::{BoxFuture, Runtime, UdpSocket};

/// What an application uses from a driver crate; `natrix-tokio` and
/// `natrix-smol` re-export it whole, next to their `Node` alias.
pub mod api {
    pub use crate::connection::{Connection, ConnectionError, ConnectionEvent};
    pub use crate::control::{
        ControlError, ControlInput, ControlPlane, InProcessControl, InProcessHub,
    };
    pub use crate::coordinator::CoordinatorConfig;
    pub use crate::net::{SessionControl, SessionControlConfig};
    pub use crate::node::{
        ConnectError, DEFAULT_RECV_BUFFER, DriverStats, EventStream, NodeConfig, NodeError,
        NodeEvent, PunchOutcome, Reclassified, SessionRequestError,
    };
    pub use crate::os_seed;
    pub use crate::portmap::{
        PortMapConfig, PortMapError, PortMapEvent, PortMapState, PortMapper, default_gateway,
        gateway_for,
    };
    pub use crate::stun::{StunConfig, discover_behaviour};
    pub use natrix_portmap::{MapError, Mapping, Protocol as PortMapProtocol};
    pub use natrix_proto::NatClass;
    pub use natrix_session::keyfile;
    pub use natrix_session::path::{
        ChangeReason, MAX_DATAGRAM, PathConfig, PathEvent, PathInfo, PathKind, PathStats,
        UpgradeError,
    };
    pub use natrix_session::relay::{Quota, Refusal, RelayConfig, RelayStats};
    pub use natrix_session::{Dial, Keypair, PublicKey, SessionConfig, SessionStats};
    pub use natrix_stun::behaviour::{BehaviourReport, NotMeasured};
}
