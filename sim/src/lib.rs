//! # natrix-sim — a deterministic network and NAT simulator
//!
//! Runs natrix [`Agent`](natrix_proto::Agent)s on simulated hosts behind
//! simulated NATs, in virtual time, with every random choice drawn from one
//! seed. Hosts talk through real `natrix-session` sessions (Noise IK, keys
//! derived from the seed) whose packets cross the simulated NATs like any
//! other datagram. The same seed gives a byte-identical [`World::transcript`].
//!
//! * [`conn`] — what a host keeps for its connections (relay first, direct
//!   when proven: `natrix_session::path`), relay frames through a
//!   coordinator running a `natrix_session::relay::RelayServer`
//!   ([`World::open_connection`], [`World::conn_send`]).
//! * [`nat`] — the RFC 4787 NAT model: mapping, filtering, port allocation,
//!   hairpinning, binding lifetime; nestable.
//! * [`world`] — realms, hosts (agent + session endpoint on one socket,
//!   demultiplexed), lossy links (session packets included: control messages
//!   use the sessions' reliable delivery), per-host wall-clock skew measured
//!   by the sessions, the bounded run loop, the transcript.
//! * [`sockets`] — a host's extra sockets: the ones its agent's birthday
//!   attempts open (N2), and the few it keeps, each pinned to a path.
//! * [`preset`] — named NAT presets (open, full cone, restricted cone,
//!   port-restricted cone, symmetric, symmetric with sequential ports, double NAT),
//!   and, outside the pair matrix, a stateful firewall without NAT (the
//!   IPv6 home router's: [`Preset::LAB_EXTRA`](preset::Preset::LAB_EXTRA)).
//! * [`scenario`] — the standard two-peer topology (coordinator, reflex
//!   server, A and B behind presets, sessions dialled over the network) and a
//!   punch run with its outcome.
//!
//! ```
//! use natrix_sim::preset::Preset;
//! use natrix_sim::scenario::{Outcome, PairScenario};
//!
//! let r = PairScenario::new(Preset::FullCone, Preset::Symmetric).run(7);
//! assert_eq!(r.outcome, Outcome::Punched);
//! ```

pub mod conn;
pub mod nat;
pub mod preset;
pub mod scenario;
pub mod sockets;
pub mod world;

pub use world::{HostId, LinkConfig, NatId, Realm, World};
