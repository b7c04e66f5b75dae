//! Sans-IO STUN for natrix.
//!
//! - [`codec`]: STUN Binding messages (RFC 8489) with XOR-MAPPED-ADDRESS,
//!   FINGERPRINT and the RFC 5780 attributes (CHANGE-REQUEST, OTHER-ADDRESS,
//!   RESPONSE-ORIGIN, RESPONSE-PORT, PADDING). Decoding borrows the datagram
//!   and never allocates; encoding writes into the caller's buffer.
//! - [`server`]: the Binding responder every coordinator runs: answers anyone
//!   (a reflex is public knowledge), rate-limited per source, never larger
//!   than the request plus the mapped address (no amplification); with a
//!   second address and port it serves the RFC 5780 tests.
//! - [`behaviour`]: NAT behaviour discovery (C8) against RFC 5780 servers:
//!   mapping, filtering, port allocation, hairpinning, and (opt-in, it takes
//!   minutes) the binding lifetime.
//!
//! Like every natrix protocol crate: no I/O, no clock, no OS randomness —
//! time ([`Instant`]) and seeds are passed in, and the same inputs give the
//! same bytes.

pub mod behaviour;
pub mod server;

/// The STUN codec: it lives with natrix's other wire codecs in
/// `natrix-proto` (the agent's sweeps speak STUN too, C8), re-exported here.
pub use natrix_proto::wire::stun as codec;

pub use natrix_proto::Instant;
