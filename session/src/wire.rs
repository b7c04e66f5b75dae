//! Byte-exact layouts of the four session packet types.
//!
//! Every session packet starts with a 4-byte header: the type byte
//! (`0xA1..=0xA4`, see [`PacketType`]) followed by three zero bytes. All
//! integers are big endian. The layouts (offsets in bytes) are:
//!
//! **Handshake init** (`0xA1`, [`INIT_LEN`] = 144 bytes)
//!
//! | offset | len | field |
//! |---|---|---|
//! | 0 | 1 | type `0xA1` |
//! | 1 | 3 | reserved, zero |
//! | 4 | 4 | sender index (the initiator's local index) |
//! | 8 | 104 | Noise IK message 1: ephemeral (32), sealed static (48), sealed timestamp (8 + 16) |
//! | 112 | 16 | mac1 |
//! | 128 | 16 | mac2 (zero when no cookie is held) |
//!
//! **Handshake response** (`0xA2`, [`RESPONSE_LEN`] = 108 bytes)
//!
//! | offset | len | field |
//! |---|---|---|
//! | 0 | 4 | type `0xA2`, reserved |
//! | 4 | 4 | sender index (the responder's local index) |
//! | 8 | 4 | receiver index (the initiator's sender index) |
//! | 12 | 64 | Noise IK message 2: ephemeral (32), sealed echo + responder time (16 + 16) |
//! | 76 | 16 | mac1 |
//! | 92 | 16 | mac2 (always zero today) |
//!
//! **Cookie reply** (`0xA3`, [`COOKIE_REPLY_LEN`] = 64 bytes)
//!
//! | offset | len | field |
//! |---|---|---|
//! | 0 | 4 | type `0xA3`, reserved |
//! | 4 | 4 | receiver index (the initiator's sender index) |
//! | 8 | 24 | XChaCha20 nonce |
//! | 32 | 32 | sealed cookie (16) + tag (16) |
//!
//! **Transport** (`0xA4`, at least [`TRANSPORT_MIN_LEN`] = 33 bytes)
//!
//! | offset | len | field |
//! |---|---|---|
//! | 0 | 4 | type `0xA4`, reserved |
//! | 4 | 4 | receiver index |
//! | 8 | 8 | counter (the AEAD nonce) |
//! | 16 | 1 + n + 16 | ChaCha20-Poly1305 of (channel ‖ payload), tag |
//!
//! Channel 0 belongs to the session: its first payload byte is a kind
//! ([`control`]); the reliable-delivery kinds `03` (message) and `04`
//! (acknowledgement) are laid out in [`reliable`].

use crate::demux::{self, PacketType};

/// Largest caller payload in one transport packet (bytes after the channel byte).
pub const MAX_PAYLOAD: usize = 1200;

/// Length of the transport header (type, reserved, receiver index, counter).
pub const TRANSPORT_HEADER_LEN: usize = 16;

/// Length of an AEAD tag.
pub const TAG_LEN: usize = 16;

/// Length of a MAC (mac1, mac2, cookie).
pub const MAC_LEN: usize = 16;

/// Largest datagram the endpoint ever produces: a transport packet carrying
/// [`MAX_PAYLOAD`] bytes (header + channel + payload + tag = 1233 bytes).
pub const MAX_PACKET: usize = TRANSPORT_HEADER_LEN + 1 + MAX_PAYLOAD + TAG_LEN;

/// Length of a handshake init.
pub const INIT_LEN: usize = 144;
/// Length of a handshake response.
pub const RESPONSE_LEN: usize = 108;
/// Length of a cookie reply.
pub const COOKIE_REPLY_LEN: usize = 64;
/// Shortest transport packet (an empty payload on some channel).
pub const TRANSPORT_MIN_LEN: usize = TRANSPORT_HEADER_LEN + 1 + TAG_LEN;

/// Length of the Noise IK message 1 with an 8-byte payload.
pub const NOISE_MSG1_LEN: usize = 32 + (32 + TAG_LEN) + (8 + TAG_LEN);
/// Length of the Noise IK message 2 with a 16-byte payload.
pub const NOISE_MSG2_LEN: usize = 32 + (16 + TAG_LEN);

/// Offsets inside a handshake init.
pub mod init {
    /// Sender index.
    pub const SENDER: usize = 4;
    /// Noise message 1.
    pub const NOISE: usize = 8;
    /// mac1 (covers bytes `0..MAC1`).
    pub const MAC1: usize = NOISE + super::NOISE_MSG1_LEN;
    /// mac2 (covers bytes `0..MAC2`).
    pub const MAC2: usize = MAC1 + super::MAC_LEN;
}

/// Offsets inside a handshake response.
pub mod response {
    /// Sender index.
    pub const SENDER: usize = 4;
    /// Receiver index.
    pub const RECEIVER: usize = 8;
    /// Noise message 2.
    pub const NOISE: usize = 12;
    /// mac1 (covers bytes `0..MAC1`).
    pub const MAC1: usize = NOISE + super::NOISE_MSG2_LEN;
    /// mac2 (covers bytes `0..MAC2`).
    pub const MAC2: usize = MAC1 + super::MAC_LEN;
}

/// Offsets inside a cookie reply.
pub mod cookie_reply {
    /// Receiver index.
    pub const RECEIVER: usize = 4;
    /// 24-byte nonce.
    pub const NONCE: usize = 8;
    /// Sealed cookie and tag.
    pub const SEALED: usize = 32;
}

/// Offsets inside a transport packet.
pub mod transport {
    /// Receiver index.
    pub const RECEIVER: usize = 4;
    /// Counter.
    pub const COUNTER: usize = 8;
    /// Ciphertext.
    pub const CIPHERTEXT: usize = 16;
}

const _: () = {
    assert!(init::MAC2 + MAC_LEN == INIT_LEN);
    assert!(response::MAC2 + MAC_LEN == RESPONSE_LEN);
    assert!(cookie_reply::SEALED + MAC_LEN + TAG_LEN == COOKIE_REPLY_LEN);
    assert!(INIT_LEN == demux::HANDSHAKE_INIT_LEN);
    assert!(RESPONSE_LEN == demux::HANDSHAKE_RESPONSE_LEN);
    assert!(COOKIE_REPLY_LEN == demux::COOKIE_REPLY_LEN);
    assert!(TRANSPORT_MIN_LEN == demux::TRANSPORT_MIN_LEN);
    // S5: no amplification.
    assert!(RESPONSE_LEN <= INIT_LEN);
    assert!(COOKIE_REPLY_LEN <= INIT_LEN);
    assert!(MAX_RELIABLE_PAYLOAD == 1190);
    assert!(reliable::ACK_IDS + 4 * MAX_ACK_IDS <= MAX_PAYLOAD);
};

/// Channel 0 message kinds (the session's own channel).
pub mod control {
    /// Keep-alive: no body.
    pub const KEEPALIVE: u8 = 0;
    /// Clock ping: sender's wall-clock ms (u64).
    pub const PING: u8 = 1;
    /// Clock pong: echoed ping ms (u64) then the answerer's wall-clock ms (u64).
    pub const PONG: u8 = 2;
    /// Reliable message: stream (u32), message id (u32), channel (u8), payload.
    pub const RELIABLE: u8 = 3;
    /// Acknowledgement: stream (u32), then one or more message ids (u32 each).
    pub const ACK: u8 = 4;
}

/// Layout of the reliable-delivery kinds on channel 0 (offsets from the
/// kind byte, i.e. from the first plaintext byte after the channel byte).
///
/// **Reliable message** (kind `03`):
///
/// | offset | len | field |
/// |---|---|---|
/// | 0 | 1 | kind `03` |
/// | 1 | 4 | stream: the sender's random nonzero id for its reliable state toward this peer |
/// | 5 | 4 | message id (per stream: 0, 1, 2, … wrapping) |
/// | 9 | 1 | channel (1..=255) the payload is delivered on |
/// | 10 | n | payload (n ≤ [`MAX_RELIABLE_PAYLOAD`]) |
///
/// **Acknowledgement** (kind `04`):
///
/// | offset | len | field |
/// |---|---|---|
/// | 0 | 1 | kind `04` |
/// | 1 | 4 | stream being acknowledged (the reliable messages' stream, echoed) |
/// | 5 | 4·k | k ≥ 1 message ids (k ≤ [`MAX_ACK_IDS`]) |
pub mod reliable {
    /// Stream id.
    pub const STREAM: usize = 1;
    /// Message id.
    pub const ID: usize = 5;
    /// Delivery channel.
    pub const CHANNEL: usize = 9;
    /// Payload.
    pub const PAYLOAD: usize = 10;
    /// First acknowledged id.
    pub const ACK_IDS: usize = 5;
}

/// Bytes a reliable message puts in front of its payload (kind, stream,
/// message id, channel), after the channel-0 byte.
pub const RELIABLE_HEADER_LEN: usize = reliable::PAYLOAD;

/// Largest payload of one reliable message:
/// [`MAX_PAYLOAD`] − [`RELIABLE_HEADER_LEN`] = 1190 bytes.
pub const MAX_RELIABLE_PAYLOAD: usize = MAX_PAYLOAD - RELIABLE_HEADER_LEN;

/// Most message ids in one acknowledgement (it fills at most [`MAX_PAYLOAD`] bytes).
pub const MAX_ACK_IDS: usize = (MAX_PAYLOAD - reliable::ACK_IDS) / 4;

/// Writes the 4-byte header of `kind` into `buf[0..4]`.
pub(crate) fn put_header(buf: &mut [u8], kind: PacketType) {
    buf[0] = kind as u8;
    buf[1] = 0;
    buf[2] = 0;
    buf[3] = 0;
}

/// The packet type of `buf` when its header is well formed (type byte in
/// range, reserved bytes zero); the length is not checked.
pub(crate) fn header(buf: &[u8]) -> Option<PacketType> {
    if buf.len() < 4 || buf[1..4] != [0, 0, 0] {
        return None;
    }
    match buf[0] {
        0xA1 => Some(PacketType::HandshakeInit),
        0xA2 => Some(PacketType::HandshakeResponse),
        0xA3 => Some(PacketType::CookieReply),
        0xA4 => Some(PacketType::Transport),
        _ => None,
    }
}

/// Reads a big-endian u32 at `at` (caller checked the length).
pub(crate) fn get_u32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_be_bytes(b)
}

/// Reads a big-endian u64 at `at` (caller checked the length).
pub(crate) fn get_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_be_bytes(b)
}
