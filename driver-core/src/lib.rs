//! # natrix-driver-core — the runtime-independent half of the drivers
//!
//! Everything an async driver needs that does not depend on the runtime:
//!
//! * [`Node`] — the application's handle: `request_punch`, `reclassify`,
//!   classification, statistics, events, the reflex override, datagrams for
//!   the application on the shared socket, `shutdown`;
//! * the node's task: feeds the [`Agent`](natrix_proto::Agent) with datagrams,
//!   control messages, commands and timeouts, and drains it in the documented
//!   order (transmits, then events, then the next timeout), demultiplexing the
//!   socket with the keep-alive predicate so that everything else reaches the
//!   application untouched;
//! * [`ControlPlane`] — the trait an embedder implements to carry control
//!   messages over its authenticated sessions — and [`InProcessHub`], an
//!   in-process implementation for tests and examples;
//! * [`Clock`] and [`interface_addrs`].
//!
//! A runtime supplies only [`Runtime`]: bind a UDP socket it can poll, sleep
//! until an instant, spawn a task. `natrix-tokio` and `natrix-smol` are that
//! and a type alias each.
//!
//! Every protocol decision stays in `natrix-proto`: this crate moves bytes,
//! reads clocks and routes replies to waiting futures.

pub mod clock;
pub mod control;
pub mod node;
pub mod runtime;
pub mod testkit;

pub use clock::Clock;
pub use control::{ControlInput, ControlPlane, HubFilter, InProcessControl, InProcessHub};
pub use node::{
    DatagramFilter, EventStream, Node, NodeConfig, NodeError, NodeEvent, PunchOutcome,
    QUEUE_CAPACITY, Reclassified, interface_addrs,
};
pub use runtime::{BoxFuture, Runtime, UdpSocket};

/// What an application uses from a driver crate; `natrix-tokio` and
/// `natrix-smol` re-export it whole, next to their `Node` alias.
pub mod api {
    pub use crate::control::{ControlInput, ControlPlane, InProcessControl, InProcessHub};
    pub use crate::node::{
        EventStream, NodeConfig, NodeError, NodeEvent, PunchOutcome, Reclassified,
    };
}
