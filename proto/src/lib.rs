//! # natrix-proto — the sans-IO core of natrix
//!
//! natrix gives two peers behind NATs a direct UDP path, or a typed answer why
//! not. This crate holds every protocol decision and no I/O: no sockets, no
//! async, no clock, no OS randomness. Drivers (`natrix-tokio`, `natrix-smol`)
//! own the sockets and clocks and feed this crate.
//!
//! ## Why sans-IO
//!
//! A state machine that takes time and randomness as inputs is deterministic:
//! the same seed and inputs produce byte-identical outputs. That makes every
//! rule testable in-process, under a simulated network, at any speed, and lets
//! the same core run under any async runtime or none.
//!
//! ## What is here
//!
//! | module | contents |
//! |---|---|
//! | [`wire`] | byte-exact codecs for every message, and the keep-alive predicate |
//! | [`schedule`] | the keep-alive train schedule (R3) |
//! | [`mod@classify`] | [`NatClass`], the [`pair_action`] matrix, two-probe [`classify()`](classify::classify) (C3) |
//! | [`config`] | [`Config`] with the documented defaults, validated at construction |
//! | [`time`] | [`Instant`], the crate's saturating monotonic time |
//!
//! ## Policy
//!
//! * Nothing that arrives from the network panics, allocates without bound, or
//!   parks work without a deadline. Decoders return typed [`DecodeError`]s.
//! * All time arithmetic saturates.
//! * The crate is `#![no_std]` with `alloc`; the default `std` feature only adds
//!   `std::error::Error` impls.
//!
//! ## Requirements
//!
//! Requirement ids (R1–R10, C1–C8, P1–P7, S1–S4) come from the behaviour
//! contract; each is pinned by a test named after it. `docs/security.md` in the
//! repository lists every id, its status and its test. Pinned in this crate so far:
//!
//! | id | where | test |
//! |---|---|---|
//! | R3 | [`schedule::keepalive_send_offsets`] | `r3_*` in `schedule.rs`, `r3_offsets_never_panic_and_are_bounded` (property) |
//! | C3 | [`classify::classify`] | `c3_wildcard_bind_port_preserving_nat_is_cone` |
//!
//! ## Example
//!
//! ```
//! use natrix_proto::wire::{Keepalive, NodeId, RendezvousMessage, is_keepalive};
//!
//! let datagram = Keepalive { sender: NodeId(7), punch_id: 42 }.to_bytes();
//! assert!(is_keepalive(&datagram));
//! assert_eq!(Keepalive::decode(&datagram).unwrap().punch_id, 42);
//! assert!(RendezvousMessage::decode(&[0x09]).is_err());
//! ```

#![no_std]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg_attr(
    not(test),
    warn(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

pub mod agent;
pub mod classify;
pub mod config;
pub mod discovery;
pub mod error;
pub mod rendezvous;
pub mod rng;
pub mod schedule;
pub mod stats;
pub mod table;
pub mod time;
pub mod wire;

pub use agent::io::{Channel, DatagramVerdict, Event, PathMethod, Payload, Role, Transmit};
pub use agent::peers::Announcement;
pub use agent::{Agent, DirectoryFull};
pub use classify::{Classification, NatClass, Observation, PairAction, classify, pair_action};
pub use config::{Config, ConfigBuilder, ConfigError, UnannouncedPeerPolicy};
pub use discovery::{ProbeError, ReclassifyOutcome, SweepObservation, SweepOutcome};
pub use error::{PunchStage, TraversalError};
pub use rendezvous::CoordinatorCandidate;
pub use rng::Rng;
pub use schedule::{KeepaliveTrain, keepalive_send_offsets};
pub use stats::Stats;
pub use time::Instant;
pub use wire::{DecodeError, EncodeError, NodeId};
