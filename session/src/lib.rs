//! Sans-IO authenticated UDP sessions for natrix (issue #10).
//!
//! One [`Endpoint`] carries many sessions over one UDP socket. A session is a
//! Noise IK handshake (`Noise_IK_25519_ChaChaPoly_BLAKE2s`, through `snow`)
//! to a peer known by its static [`PublicKey`], then ChaCha20-Poly1305
//! transport packets with an explicit counter and a replay window. The
//! endpoint handles handshake retries, stateless cookies under load (S5),
//! roaming (S6), rekeying (S7), keep-alives, dead-peer detection and an
//! NTP-style clock-offset estimate; node ids are bound to one key each (S1).
//!
//! Transport packets are not retransmitted. A message the caller marks
//! reliable ([`Endpoint::send_reliable`]) is: it travels on the session's own
//! channel with a message id, the peer acknowledges every copy and delivers
//! each id once — as an ordinary [`Received::Data`] — and the sender retries
//! with an RTT-based timeout until acknowledged or `reliable_timeout` (5 s)
//! has passed. Order is not preserved.
//!
//! Like `natrix-proto`, it does no I/O and reads no clock or OS randomness:
//! the caller passes time (`natrix_proto::Instant` plus Unix wall-clock ms),
//! datagrams and a 32-byte seed in, and takes datagrams and events out. The
//! byte layouts are in [`wire`] and in `docs/protocol.md` ("Sessions").
//!
//! # The run loop
//!
//! ```
//! use std::net::SocketAddr;
//! use natrix_proto::Instant;
//! use natrix_session::demux::{classify, DatagramKind};
//! use natrix_session::{Endpoint, Keypair, Received, SessionConfig, SessionEvent, MAX_PACKET};
//!
//! let a_addr: SocketAddr = "192.0.2.1:4000".parse().unwrap();
//! let b_addr: SocketAddr = "198.51.100.2:5000".parse().unwrap();
//! let mut a = Endpoint::new(Keypair::from_secret([1; 32]), SessionConfig::default(), [11; 32]);
//! let mut b = Endpoint::new(Keypair::from_secret([2; 32]), SessionConfig::default(), [22; 32]);
//! let (now, wall_ms) = (Instant::from_millis(1_000), 1_700_000_000_000);
//!
//! // A dials B by its public key; payloads sent before the handshake are queued.
//! a.connect(now, wall_ms, b.public_key(), b_addr).unwrap();
//! let mut out = [0u8; MAX_PACKET];
//! assert_eq!(a.send(now, &b.public_key(), 16, b"hello", &mut out), Ok(None));
//!
//! // A toy "network": deliver what `from` wants to send to `to`.
//! fn pump(from: &mut Endpoint, from_addr: SocketAddr, to: &mut Endpoint, wall_ms: u64,
//!         now: Instant, got: &mut Vec<(u8, Vec<u8>)>) -> bool {
//!     let mut out = [0u8; MAX_PACKET];
//!     let mut moved = false;
//!     while let Some((_to_addr, len)) = from.poll_transmit(&mut out) {
//!         moved = true;
//!         // A real driver first routes by `classify` (keep-alives, STUN, …).
//!         assert!(matches!(classify(&out[..len]), DatagramKind::Session(_)));
//!         if let Received::Data { channel, payload, .. } =
//!             to.handle_datagram(now, wall_ms, from_addr, &out[..len])
//!         {
//!             got.push((channel, payload.to_vec()));
//!         }
//!     }
//!     moved
//! }
//! let mut got = Vec::new();
//! while pump(&mut a, a_addr, &mut b, wall_ms, now, &mut got)
//!     | pump(&mut b, b_addr, &mut a, wall_ms, now, &mut got)
//! {}
//! assert_eq!(got, vec![(16, b"hello".to_vec())]);
//! assert!(matches!(a.poll_event(), Some(SessionEvent::Up { initiator: true, .. })));
//!
//! // Steady state: `send` seals straight into the caller's buffer.
//! let (to, len) = b.send(now, &a.public_key(), 16, b"world", &mut out).unwrap().unwrap();
//! assert_eq!(to, a_addr);
//! match a.handle_datagram(now, wall_ms, b_addr, &out[..len]) {
//!     Received::Data { payload, .. } => assert_eq!(payload, b"world"),
//!     other => panic!("{other:?}"),
//! }
//!
//! // Timers: sleep until `poll_timeout`, then call `handle_timeout`.
//! let next = a.poll_timeout().expect("keep-alive, dead-peer and rekey timers");
//! a.handle_timeout(next, wall_ms + 10_000);
//! ```

pub mod cookie;
pub mod demux;
mod endpoint;
pub mod identity;
pub mod keyfile;
pub mod path;
pub mod relay;
pub mod replay;
pub mod wire;

pub use demux::{DatagramKind, PacketType, classify};
pub use endpoint::{
    ConfigError, DownReason, DropReason, Endpoint, HandshakeError, MAX_RELIABLE_WINDOW,
    NOISE_PATTERN, NOISE_PROLOGUE, Received, SendError, SessionConfig, SessionError, SessionEvent,
    SessionInfo, SessionStats,
};
pub use identity::{Dial, KeyParseError, Keypair, PublicKey};
pub use replay::ReplayWindow;
pub use wire::{MAX_PACKET, MAX_PAYLOAD, MAX_RELIABLE_PAYLOAD};
