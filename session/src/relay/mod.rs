//! The relay (S3): a coordinator forwards session packets between two of its
//! authenticated peers, under quotas.
//!
//! When two peers cannot reach each other directly, each sends its packets of
//! their own end-to-end session to a coordinator both have a session with,
//! wrapped in a [`RelayFrame::Forward`] on channel [`CH_RELAY`]. The
//! coordinator checks the frame against its quotas ([`RelayServer`]) and
//! passes the packet on, or drops it and — at most once per second per pair —
//! tells the sender why with a [`RelayFrame::Refused`] carrying a typed
//! [`Refusal`]. The coordinator sees ciphertext only.
//!
//! - [`frame`]: the byte layouts, [`Quota`] and [`Refusal`];
//! - [`server`]: [`RelayServer`], circuits and quotas, deterministic and
//!   sans-IO.
//!
//! # The coordinator's loop
//!
//! For each payload received from peer `from` on [`CH_RELAY`] (the session
//! layer has authenticated `from`):
//!
//! ```
//! use natrix_proto::{Instant, NodeId};
//! use natrix_session::MAX_PAYLOAD;
//! use natrix_session::relay::{
//!     RelayConfig, RelayFrame, RelayServer, encode_forward_into, encode_refused,
//! };
//!
//! let mut relay = RelayServer::new(RelayConfig::default());
//! let online = |n: NodeId| n == NodeId(2);
//! let (now, from) = (Instant::from_millis(5), NodeId(1));
//!
//! // What peer 1 sent: "deliver these bytes to node 2".
//! let mut payload = [0u8; MAX_PAYLOAD];
//! let n = encode_forward_into(NodeId(2), b"ciphertext", &mut payload).unwrap();
//!
//! let mut out = [0u8; MAX_PAYLOAD];
//! match RelayFrame::decode(&payload[..n]) {
//!     Ok(RelayFrame::Forward { peer: to, packet }) => {
//!         match relay.forward(now, from, to, packet.len(), online(to)) {
//!             Ok(()) => {
//!                 // To node 2, unreliable, on CH_RELAY: "this came from node 1".
//!                 let len = encode_forward_into(from, packet, &mut out).unwrap();
//!                 assert_eq!(&out[9..len], b"ciphertext");
//!             }
//!             Err(refused) if refused.notify => {
//!                 // To node 1, on CH_RELAY: the typed error.
//!                 let _notice = encode_refused(to, refused.refusal);
//!             }
//!             Err(_) => {} // noticed recently: drop silently
//!         }
//!     }
//!     // Refused frames only flow coordinator → peer; garbage is dropped.
//!     Ok(RelayFrame::Refused { .. }) | Err(_) => {}
//! }
//! assert_eq!(relay.circuits(), 1);
//!
//! // When `from`'s session goes down: close its circuits.
//! relay.peer_gone(now, from);
//! assert_eq!(relay.circuits(), 0);
//! ```
//!
//! Besides, the coordinator sleeps until [`RelayServer::poll_timeout`] and
//! then calls [`RelayServer::handle_timeout`], like every sans-IO state
//! machine in natrix. A coordinator that does not relay answers forward
//! frames with [`Quota::Disabled`], rate-limiting its notices with a
//! [`NoticeLimiter`].
//!
//! # On the peers' side
//!
//! A relayed packet is at most [`MAX_RELAYED_PACKET`] (1191) bytes, so the
//! end-to-end session run through a relay must keep its datagrams that small.
//! A peer that receives a [`RelayFrame::Refused`] gets the [`Refusal`] from
//! [`RelayFrame::refusal`] and should not retry toward that peer before its
//! `retry_after`.

pub mod frame;
pub mod server;

pub use frame::{
    CH_RELAY, FORWARD_HEADER_LEN, MAX_RELAYED_PACKET, Quota, REFUSED_LEN, Refusal,
    RelayEncodeError, RelayFrame, RelayFrameError, encode_forward_into, encode_refused,
};
pub use server::{
    CircuitInfo, NOTICE_INTERVAL, NoticeLimiter, Refused, RelayConfig, RelayConfigError,
    RelayServer, RelayStats,
};
