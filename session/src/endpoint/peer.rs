//! One peer's state: its handshake, its keys, its timers.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use natrix_proto::{Instant, NodeId, time::earliest};
use snow::{HandshakeState, StatelessTransportState};

use crate::cookie::Mac;
use crate::identity::PublicKey;
use crate::replay::ReplayWindow;
use crate::wire::INIT_LEN;

use super::config::SessionConfig;
use super::reliable::Reliable;

/// Keys are never used to seal at or beyond this counter (the Noise nonce
/// limit is 2^64 − 1; the margin leaves room for queued control packets).
pub(crate) const HARD_PACKET_LIMIT: u64 = u64::MAX - (1 << 16);

/// One set of transport keys (one handshake's result).
pub(crate) struct Keys {
    pub(crate) transport: StatelessTransportState,
    /// Our index: the peer puts it in packets to us.
    pub(crate) local: u32,
    /// The peer's index: we put it in packets to the peer.
    pub(crate) remote: u32,
    /// Next counter to seal with.
    pub(crate) send_counter: u64,
    pub(crate) replay: ReplayWindow,
    pub(crate) created: Instant,
    /// Whether we were the initiator of the handshake that made these keys.
    pub(crate) initiator: bool,
    /// The peer has shown it holds these keys (a packet opened with them; a
    /// responder's keys are confirmed when they become current).
    pub(crate) confirmed: bool,
}

impl Keys {
    pub(crate) fn usable(&self) -> bool {
        self.send_counter < HARD_PACKET_LIMIT
    }
}

/// Our outstanding initiator handshake.
pub(crate) struct Handshake {
    pub(crate) state: Box<HandshakeState>,
    /// Our sender index for this attempt.
    pub(crate) local: u32,
    /// First attempt of this handshake (the give-up clock).
    pub(crate) started: Instant,
    /// This attempt (the RTT clock).
    pub(crate) sent_at: Instant,
    pub(crate) next_retry: Instant,
    pub(crate) interval: Duration,
    /// The init as sent (mac2 is rewritten when a cookie arrives).
    pub(crate) init: [u8; INIT_LEN],
    /// The timestamp in the init's payload.
    pub(crate) ts: u64,
    /// A cookie reply was already acted on for this attempt.
    pub(crate) cookie_used: bool,
}

/// A payload `send` queued while no keys were ready.
pub(crate) struct Queued {
    pub(crate) channel: u8,
    pub(crate) payload: Vec<u8>,
}

/// Everything about one peer key.
pub(crate) struct Peer {
    pub(crate) key: PublicKey,
    pub(crate) node: NodeId,
    pub(crate) addr: SocketAddr,
    /// mac1 key for messages to this peer.
    pub(crate) mac1_key: [u8; 32],
    /// Key of the cookie replies this peer sends us.
    pub(crate) cookie_key: [u8; 32],
    pub(crate) handshake: Option<Handshake>,
    /// Responder-side keys the initiator has not confirmed yet (half-open).
    pub(crate) next: Option<Keys>,
    pub(crate) current: Option<Keys>,
    /// The keys before the last rekey, kept to open in-flight packets.
    pub(crate) previous: Option<Keys>,
    pub(crate) queue: VecDeque<Queued>,
    /// `Up` was reported.
    pub(crate) up: bool,
    pub(crate) up_since: Instant,
    pub(crate) last_sent: Instant,
    pub(crate) last_received: Instant,
    /// When the current keys should be replaced.
    pub(crate) rekey_at: Instant,
    pub(crate) rtt: Option<Duration>,
    pub(crate) clock_offset_ms: Option<i64>,
    /// The round trip of the sample behind `clock_offset_ms`, and when.
    pub(crate) offset_sample: Option<(Duration, Instant)>,
    /// Outstanding clock ping: (our wall ms in it, when sent).
    pub(crate) ping: Option<(u64, Instant)>,
    /// Latest cookie from this peer and when it arrived.
    pub(crate) cookie: Option<(Mac, Instant)>,
    pub(crate) rekeys: u64,
    /// Reliable delivery, both directions (made on first use).
    pub(crate) rel: Option<Box<Reliable>>,
}

impl Peer {
    pub(crate) fn new(key: PublicKey, node: NodeId, addr: SocketAddr, now: Instant) -> Self {
        Peer {
            key,
            node,
            addr,
            mac1_key: crate::cookie::derive_key(crate::cookie::MAC1_DOMAIN, &key),
            cookie_key: crate::cookie::derive_key(crate::cookie::COOKIE_DOMAIN, &key),
            handshake: None,
            next: None,
            current: None,
            previous: None,
            queue: VecDeque::new(),
            up: false,
            up_since: now,
            last_sent: now,
            last_received: now,
            rekey_at: Instant::MAX,
            rtt: None,
            clock_offset_ms: None,
            offset_sample: None,
            ping: None,
            cookie: None,
            rekeys: 0,
            rel: None,
        }
    }

    /// The earliest time anything about this peer needs `handle_timeout`.
    pub(crate) fn deadline(&self, config: &SessionConfig) -> Option<Instant> {
        let mut d = None;
        if let Some(hs) = &self.handshake {
            let give_up = hs.started + config.handshake_timeout;
            d = earliest(d, Some(hs.next_retry.min(give_up)));
        }
        if let Some(n) = &self.next {
            d = earliest(d, Some(n.created + config.handshake_timeout));
        }
        if let Some(p) = &self.previous {
            d = earliest(d, Some(p.created + config.reject_after));
        }
        if let Some(c) = &self.current {
            d = earliest(d, Some(self.last_sent + config.keepalive_interval));
            d = earliest(d, Some(self.last_received + config.dead_after));
            d = earliest(d, Some(c.created + config.reject_after));
            if self.handshake.is_none() {
                d = earliest(d, Some(self.rekey_at));
                if !c.confirmed {
                    // Re-send the confirmation; re-handshake if it never lands.
                    d = earliest(d, Some(self.last_sent + config.handshake_retry));
                    d = earliest(d, Some(c.created + config.handshake_timeout));
                }
            }
        }
        if let Some(r) = &self.rel {
            d = earliest(d, r.next_due());
        }
        d
    }

    /// When keys made at `created` should be replaced: the initiator of the
    /// keys at `rekey_after`, the responder a handshake timeout later (so the
    /// two sides do not usually start at once).
    pub(crate) fn rekey_time(config: &SessionConfig, created: Instant, initiator: bool) -> Instant {
        let mut t = created + config.rekey_after;
        if !initiator {
            t += config.handshake_timeout;
        }
        t
    }

    /// Reliable messages waiting for the session.
    pub(crate) fn reliable_unsent(&self) -> usize {
        self.rel.as_ref().map_or(0, |r| r.unsent())
    }

    /// Whether any handshake or key state is left.
    pub(crate) fn is_empty(&self) -> bool {
        self.handshake.is_none() && self.next.is_none() && self.current.is_none()
    }
}
