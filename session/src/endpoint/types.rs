//! The endpoint's public value types: what it returns, reports and counts.

use std::net::SocketAddr;
use std::time::Duration;

use natrix_proto::{Instant, NodeId};

use crate::identity::PublicKey;

/// What [`crate::Endpoint::handle_datagram`] made of one datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// An authenticated payload on a caller channel (1..=255). `payload`
    /// borrows the endpoint's receive buffer until the next call.
    Data {
        /// The sending peer.
        peer: PublicKey,
        /// Its node id.
        node: NodeId,
        /// The source address (the session's address after this packet: S6).
        from: SocketAddr,
        /// The channel, 1..=255.
        channel: u8,
        /// The payload.
        payload: &'a [u8],
    },
    /// Handled inside the endpoint: a handshake message, a cookie, a session
    /// keep-alive or clock ping/pong. Check [`crate::Endpoint::poll_transmit`]
    /// and [`crate::Endpoint::poll_event`].
    Consumed,
    /// Dropped without any change of session state (and counted in [`SessionStats`]).
    Dropped(DropReason),
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not a well-formed session packet (type, reserved bytes, length).
    Malformed,
    /// A handshake message whose mac1 is wrong: not meant for this key, or forged.
    Mac1,
    /// A receiver index that names no handshake or session of ours (expired, or forged).
    UnknownIndex,
    /// A transport counter already seen or older than the replay window (S2).
    Replay,
    /// Authenticated decryption failed (transport, handshake or cookie reply).
    Decrypt,
    /// A handshake init whose timestamp is not newer than the last one accepted
    /// from that key: a replayed init.
    StaleHandshake,
    /// A handshake from a key whose node id is already bound to another key (S1).
    NodeIdTaken,
    /// A handshake from a new peer while `max_sessions` peers exist.
    TooManySessions,
    /// A handshake that claims to come from our own key.
    OwnKey,
    /// Under load, a handshake init with a valid cookie from a source IP
    /// over its `handshakes_per_ip` rate (S5): dropped before any DH work.
    RateLimited,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DownReason {
    /// Nothing authenticated was received for `dead_after`.
    Dead,
    /// [`crate::Endpoint::close`] was called.
    Closed,
    /// The keys reached `reject_after` without a successful rekey.
    RekeyFailed,
}

/// Why a handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum HandshakeError {
    /// No answer within `handshake_timeout`: wrong public key, or the peer is unreachable.
    #[error("handshake timed out: no answer (wrong public key, or the peer is unreachable)")]
    Timeout,
    /// The peer's node id is already bound to another key (S1); reported on
    /// the responder side when such a handshake is refused.
    #[error("node id already bound to another key ({bound}); refused, not merged")]
    NodeIdTaken {
        /// The key the node id is bound to.
        bound: PublicKey,
    },
}

/// Something that happened to a session; drain with [`crate::Endpoint::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The session is established (first time; rekeys are silent).
    Up {
        /// The peer.
        peer: PublicKey,
        /// Its node id.
        node: NodeId,
        /// The session's address.
        addr: SocketAddr,
        /// The handshake round trip (initiator side only).
        rtt: Option<Duration>,
        /// Whether we dialled.
        initiator: bool,
    },
    /// An authenticated packet arrived from a new address and the session moved there (S6).
    AddrChanged {
        /// The peer.
        peer: PublicKey,
        /// Its node id.
        node: NodeId,
        /// The previous address.
        old: SocketAddr,
        /// The new address.
        new: SocketAddr,
    },
    /// A clock offset estimate: the peer's wall clock minus ours (NTP-style;
    /// the error is at most `rtt / 2` plus the clocks' reading granularity).
    ClockOffset {
        /// The peer.
        peer: PublicKey,
        /// Its node id.
        node: NodeId,
        /// Peer wall clock − our wall clock, in milliseconds.
        offset_ms: i64,
        /// The round trip the estimate came from.
        rtt: Duration,
    },
    /// The session ended.
    Down {
        /// The peer.
        peer: PublicKey,
        /// Its node id.
        node: NodeId,
        /// Why.
        reason: DownReason,
    },
    /// A handshake failed (as initiator: no session came up; as responder: refused).
    HandshakeFailed {
        /// The peer.
        peer: PublicKey,
        /// The address dialled (initiator) or the init's source (responder).
        addr: SocketAddr,
        /// Why.
        error: HandshakeError,
    },
}

/// Why [`crate::Endpoint::connect`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum SessionError {
    /// Dialling our own public key.
    #[error("cannot open a session to our own key")]
    OwnKey,
    /// The key's node id is already bound to another key (S1).
    #[error("node id already bound to another key ({bound})")]
    NodeIdTaken {
        /// The key the node id is bound to.
        bound: PublicKey,
    },
    /// `max_sessions` peers exist.
    #[error("too many sessions (max_sessions reached)")]
    TooManySessions,
}

/// Why [`crate::Endpoint::send`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum SendError {
    /// Neither a session nor a handshake to that key exists; call `connect` first.
    #[error("no session or handshake to that peer")]
    NoSession,
    /// Channel 0 belongs to the session itself.
    #[error("channel 0 is reserved for the session")]
    ReservedChannel,
    /// The payload is longer than [`crate::MAX_PAYLOAD`].
    #[error("payload of {len} bytes exceeds the maximum of {max}")]
    PayloadTooLarge {
        /// The payload's length.
        len: usize,
        /// [`crate::MAX_PAYLOAD`].
        max: usize,
    },
    /// `out` cannot hold the sealed packet.
    #[error("output buffer of {len} bytes is smaller than the {need} needed")]
    BufferTooSmall {
        /// `out.len()`.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// [`crate::Endpoint::send_reliable`]: `reliable_window` messages to
    /// that peer are already waiting for their acknowledgement (nothing was
    /// queued; try again after some are acknowledged or expire).
    #[error("{pending} reliable messages to that peer are unacknowledged (window {max})")]
    ReliableWindowFull {
        /// Messages in flight.
        pending: usize,
        /// [`crate::SessionConfig::reliable_window`].
        max: usize,
    },
}

/// A snapshot of one established session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionInfo {
    /// The peer's node id.
    pub node: NodeId,
    /// The session's current address.
    pub addr: SocketAddr,
    /// Latest round-trip estimate (handshake or clock ping).
    pub rtt: Option<Duration>,
    /// Latest clock offset estimate (peer − ours, ms).
    pub clock_offset_ms: Option<i64>,
    /// When the session first came up.
    pub since: Instant,
    /// Whether we initiated the current keys.
    pub initiator: bool,
    /// Completed rekeys on this session.
    pub rekeys: u64,
}

/// Monotonic counters (plus the `sessions_live` gauge).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Handshakes started as initiator (connects and rekeys; retries not counted).
    pub handshakes_initiated: u64,
    /// Inits answered with a response (Diffie-Hellman work done as responder).
    pub handshakes_accepted: u64,
    /// Authenticated inits refused (S1 node-id conflict, too many sessions, own key).
    pub handshakes_refused: u64,
    /// Handshakes given up as initiator (timeouts, including failed rekeys).
    pub handshakes_failed: u64,
    /// Cookie replies sent (S5).
    pub cookies_sent: u64,
    /// Inits with a valid cookie dropped under load because their source
    /// IP was over `handshakes_per_ip` (S5).
    pub handshakes_rate_limited: u64,
    /// Valid cookie replies received.
    pub cookies_received: u64,
    /// Authenticated-decryption failures (transport, handshake, cookie).
    pub decrypt_failures: u64,
    /// Replayed transport packets and replayed (stale) handshake inits.
    pub replays_dropped: u64,
    /// Malformed datagrams.
    pub malformed: u64,
    /// Handshake messages with a wrong mac1.
    pub mac1_failures: u64,
    /// Packets naming an unknown receiver index.
    pub unknown_index: u64,
    /// Completed rekeys (either side).
    pub rekeys: u64,
    /// Established sessions now (a gauge).
    pub sessions_live: u64,
    /// Transport packets sealed.
    pub packets_sealed: u64,
    /// Transport packets opened (authenticated, not replayed).
    pub packets_opened: u64,
    /// Queued payloads dropped (queue full, or the handshake failed).
    pub queued_dropped: u64,
    /// Reliable messages accepted by `send_reliable`.
    pub reliable_sent: u64,
    /// Retransmissions of reliable messages (first transmissions not counted).
    pub reliable_retransmits: u64,
    /// Reliable messages acknowledged by the peer.
    pub reliable_acked: u64,
    /// Reliable messages given up unacknowledged `reliable_timeout` after
    /// their first transmission.
    pub reliable_expired: u64,
    /// Reliable messages discarded unacknowledged because their session (or
    /// handshake) ended.
    pub reliable_dropped: u64,
    /// Reliable messages received and delivered (each message id once).
    pub reliable_delivered: u64,
    /// Reliable messages received again (acknowledged again, not delivered).
    pub reliable_duplicates: u64,
}
