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
//! | [`agent`] | the [`Agent`]: one node, every role, one `handle_*` / `poll_*` surface (start here) |
//! | [`rendezvous`] | the coordinator and endpoint roles, coordinator selection |
//! | [`discovery`] | reflex probes, the classification sweep, the reflex override |
//! | [`wire`] | byte-exact codecs for every message (the Net v0.27 forms and natrix's own channel), and the keep-alive predicate |
//! | [`schedule`] | the keep-alive train schedule (R3) |
//! | [`spray`] | the caps of birthday punching (N2, N3): [`SprayMachine`](spray::SprayMachine) |
//! | [`mod@classify`] | [`NatClass`], the [`pair_action`] matrix, two-probe [`classify()`](classify::classify) (C3) |
//! | [`config`] | [`Config`] with the documented defaults, validated at construction |
//! | [`time`], [`rng`] | [`Instant`] (saturating monotonic time) and the seeded [`Rng`] |
//! | [`table`], [`stats`], [`error`] | bounded budget tables, counters, [`TraversalError`] |
//!
//! ## Run loop
//!
//! After any `handle_*` call or command, drain [`Agent::poll_transmit`], then
//! [`Agent::poll_event`], then read [`Agent::poll_timeout`] and sleep until
//! then (or until input arrives). See the [`agent`] module for the full
//! contract and a compiled example.
//!
//! ## Policy
//!
//! * Nothing that arrives from the network panics, allocates without bound, or
//!   parks work without a deadline. Decoders return typed [`DecodeError`]s;
//!   every table is bounded by a [`Config`] limit.
//! * All time arithmetic saturates. The crate never reads a clock or an OS
//!   random source (a clippy `disallowed-methods` list guards it): the same
//!   seed and inputs give byte-identical outputs.
//! * The crate is `#![no_std]` with `alloc`; the default `std` feature only adds
//!   `std::error::Error` impls.
//! * Out of scope here: sockets, timers, sessions and their cryptography,
//!   relaying, port mapping (drivers and later crates).
//!
//! ## Requirements
//!
//! Requirement ids come from the behaviour contract; each is pinned by a test
//! named after it (`docs/security.md` in the repository has the full table):
//!
//! | id | code | tests |
//! |---|---|---|
//! | R1 | [`rendezvous::coordinator`] | `r1_*` in `tests/rendezvous.rs` |
//! | R2, R8 | [`rendezvous::endpoint`] (`handle_keepalive`) | `r2_*`, `r8_*` |
//! | R3 | [`schedule::keepalive_send_offsets`] | `r3_*` in `schedule.rs` and `tests/rendezvous.rs`, property `r3_offsets_never_panic_and_are_bounded` |
//! | R4, R5 (responder) | [`rendezvous::endpoint`] (`handle_introduce`) | `r4_*`, `r5_responder_*` |
//! | R5 (coordinator) | [`rendezvous::coordinator`], [`table`] | `r5_*` |
//! | R6, R7 | [`rendezvous::endpoint`], [`rendezvous::coordinator`], [`wire::natrix`] (`PunchBind`) | `r6_*`, `r7_*` |
//! | R9 | [`rendezvous::adaptive_fire_lead`] | `r9_*` |
//! | R10 | [`rendezvous::endpoint`] (`Train::done`, duplicate introduces) | `r10_*`, `happy_path_*` |
//! | R11 | [`rendezvous::endpoint`] (crossing rules), [`rendezvous::coordinator`] (joining) | `r11_*` in `tests/hardening.rs` |
//! | R12, R13 | [`rendezvous::endpoint`], [`rendezvous::coordinator`], [`classify::is_bogus_destination`] | `r12_*`, `r13_*` |
//! | C1–C7 | [`discovery`], [`mod@classify`] | `c1_*` … `c7_*` in `tests/discovery.rs`, property `c2_*` |
//! | C8 | [`mod@behaviour`] (the RFC 4787 model), [`wire::stun`] (the STUN codec), STUN servers in sweeps ([`discovery`], [`Agent::set_stun_servers`]); discovery against RFC 5780 servers is `natrix-stun` | `c8_*` in `tests/stun_sweep.rs` and `wire::stun` |
//! | C9 | [`classify::canonical_addr`] at every input | `c9_*` |
//! | N1 | [`rendezvous::coordinator`] (`predict`), [`rendezvous::endpoint`] (port prediction), [`wire::PunchPredict`], [`NatProfile::predictable_step`] | `n1_*` in `tests/prediction.rs` |
//! | N2, N3 | [`spray`] (the caps), [`behaviour::birthday_side`], [`rendezvous::endpoint`] (the attempt in the rendezvous), [`Transmit::Spray`], [`Event::SprayEnded`] | `n2_*`, `n3_*` in `tests/spray.rs` and `tests/birthday.rs` |
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
pub mod behaviour;
pub mod classify;
pub mod config;
pub mod discovery;
pub mod error;
pub mod rendezvous;
pub mod rng;
pub mod schedule;
pub mod spray;
pub mod stats;
pub mod table;
pub mod time;
pub mod wire;

pub use agent::io::{Channel, DatagramVerdict, Event, PathMethod, Payload, Role, Transmit};
pub use agent::peers::Announcement;
pub use agent::{Agent, AnnouncementError, DirectoryFull};
pub use behaviour::{
    Behaviour, FilteringBehaviour, MappingBehaviour, NatProfile, PortAllocation,
    pair_action_with_profiles,
};
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
