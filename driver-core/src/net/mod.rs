//! The networked control plane: natrix's own authenticated UDP sessions on
//! the node's socket.
//!
//! [`SessionControl`] implements [`ControlPlane`] over a
//! [`natrix_session::Endpoint`]. It does no I/O itself: the node's task hands
//! it the session datagrams its socket receives and sends what it yields from
//! the same socket, so the address a coordinator sees a session at is the very
//! NAT mapping the punch's keep-alives use (as Net does).
//!
//! What travels where is in [`wire`]. Besides the agent's rendezvous and
//! reflex messages it carries:
//!
//! * **announcements** — each node sends its own (reflex, class) to every
//!   session peer; a coordinator (a node built with
//!   [`SessionControlConfig::serve`]) vouches for a peer's announcement to the
//!   other side right before it introduces them, which is how an endpoint
//!   learns the announcement R4 checks an introduce against. A vouched
//!   announcement is accepted only from a coordinator this node dialled;
//! * **directory lookups** — "is this public key online at you?", answered
//!   by serving nodes with the peer's announcement when it has one;
//! * **application data** between two peers' own session (after a punch, the
//!   peers dial each other over the punched path: the coordinator never holds
//!   their keys and cannot impersonate either end).
//!
//! Coordinators listed in the configuration are dialled at start and redialled
//! with backoff (1 s doubling to 30 s) whenever their session fails or dies.

mod relay;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use natrix_proto::wire::{NodeId, RendezvousMessage};
use natrix_proto::{Announcement, Channel, Instant, TraversalError};
use natrix_session::path::{
    CH_PATH, MAX_DATAGRAM, PATH_MESSAGE_LEN, PathConfig, PathInfo, PathMessage, PathStats, Paths,
    RelayRoute,
};
use natrix_session::relay::{CH_RELAY, NoticeLimiter, RelayConfig, RelayServer, RelayStats};
use natrix_session::{
    Endpoint, Keypair, PublicKey, Received, SendError, SessionConfig, SessionEvent, SessionInfo,
    SessionStats,
};
use tracing::{debug, trace};

use self::wire::{
    AnnouncementMsg, CH_ANNOUNCEMENT, CH_DATA, CH_DIRECTORY_ANSWER, CH_DIRECTORY_LOOKUP,
    ControlDecodeError, Lookup, LookupAnswer,
};
use crate::buf::{BufPool, PooledBuf, SmallBytes};
use crate::control::{ControlError, ControlInput, ControlPlane};

/// Most inputs held for the node's task, and most datagrams waiting to be
/// sent; beyond either, new items are dropped (UDP semantics) and counted.
pub const QUEUE_LIMIT: usize = 4096;

/// Most spare packet buffers kept for the outbox, and most free buffers kept
/// for application data ([`BufPool`]): what a burst needs is reused
/// afterwards, and the memory kept stays bounded.
const SPARE_LIMIT: usize = 256;

const REDIAL_FIRST: Duration = Duration::from_secs(1);
const REDIAL_MAX: Duration = Duration::from_secs(30);

/// How to build a [`SessionControl`].
#[derive(Clone, Debug, Default)]
pub struct SessionControlConfig {
    /// The session layer's timers and bounds.
    pub session: SessionConfig,
    /// Coordinators to keep a session with: dialled at start, redialled with
    /// backoff when their session fails or dies.
    pub coordinators: Vec<(PublicKey, SocketAddr)>,
    /// Serve as a coordinator: answer directory lookups and vouch for a peer's
    /// announcement when introducing it.
    pub serve: bool,
    /// The relay's quotas when serving (S3); `None` turns the relay off (a
    /// frame to relay is then refused with `Quota::Disabled`).
    pub relay: Option<RelayConfig>,
    /// Connections' liveness timers and bounds (S4).
    pub paths: PathConfig,
}

impl SessionControlConfig {
    /// A coordinator's configuration: serving, with the relay's default quotas.
    #[must_use]
    pub fn coordinator(session: SessionConfig) -> Self {
        SessionControlConfig {
            session,
            serve: true,
            relay: Some(RelayConfig::default()),
            ..SessionControlConfig::default()
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Redial {
    addr: SocketAddr,
    at: Option<Instant>,
    backoff: Duration,
}

/// The networked control plane (see the [module docs](self)).
pub struct SessionControl {
    endpoint: Endpoint,
    serve: bool,
    /// Coordinators we keep a session with, and when to dial each next.
    coordinators: BTreeMap<PublicKey, Redial>,
    /// The same coordinators in configuration order: a relay route's `via`
    /// is an index here.
    coordinator_slots: Vec<PublicKey>,
    /// The relay we serve (coordinators).
    relay: Option<RelayServer>,
    /// Our connections and their paths.
    paths: Paths,
    /// Relayed packets we could not route (no such coordinator, no session).
    unroutable: u64,
    /// Notices for frames refused because the relay is off.
    disabled_notices: NoticeLimiter,
    /// The wall clock at the latest input that carried one.
    last_wall_ms: u64,
    /// Peers with a live session.
    live: BTreeSet<PublicKey>,
    /// Session peers' own announcements (removed when their session ends).
    announced: BTreeMap<NodeId, Announcement>,
    mine: Option<Announcement>,
    inbox: VecDeque<ControlInput>,
    /// Sealed datagrams waiting to be sent: destination, length, buffer.
    outbox: VecDeque<(SocketAddr, usize, Box<[u8]>)>,
    /// Packet buffers ([`natrix_session::MAX_PACKET`] bytes) to seal into,
    /// recycled from the outbox.
    spare: Vec<Box<[u8]>>,
    /// Buffers for application data on its way to the application.
    pool: BufPool,
    next_query: u32,
    dropped: u64,
}

impl fmt::Debug for SessionControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionControl")
            .field("key", &self.endpoint.public_key())
            .field("serve", &self.serve)
            .field("coordinators", &self.coordinators.len())
            .field("inbox", &self.inbox.len())
            .field("outbox", &self.outbox.len())
            .finish_non_exhaustive()
    }
}

impl SessionControl {
    /// A control plane for the node whose static key is `keypair`. `seed` is
    /// the session layer's only randomness: 32 bytes from the OS RNG in real
    /// use ([`crate::os_seed`]), fixed in tests.
    ///
    /// # Panics
    /// When the relay's configuration fails `RelayConfig::validate`.
    #[must_use]
    pub fn new(keypair: Keypair, config: SessionControlConfig, seed: [u8; 32]) -> Self {
        let coordinators = config
            .coordinators
            .iter()
            .map(|(k, addr)| {
                (
                    *k,
                    Redial {
                        addr: *addr,
                        at: Some(Instant::ZERO),
                        backoff: REDIAL_FIRST,
                    },
                )
            })
            .collect();
        let coordinator_slots = config.coordinators.iter().map(|(k, _)| *k).collect();
        SessionControl {
            endpoint: Endpoint::new(keypair, config.session, seed),
            coordinator_slots,
            relay: if config.serve {
                config.relay.map(RelayServer::new)
            } else {
                None
            },
            paths: Paths::new(config.paths),
            unroutable: 0,
            disabled_notices: NoticeLimiter::new(1024),
            last_wall_ms: 0,
            serve: config.serve,
            coordinators,
            live: BTreeSet::new(),
            announced: BTreeMap::new(),
            mine: None,
            inbox: VecDeque::new(),
            outbox: VecDeque::new(),
            spare: Vec::new(),
            pool: BufPool::new(SPARE_LIMIT),
            next_query: 1,
            dropped: 0,
        }
    }

    /// The session endpoint (for inspection).
    #[must_use]
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Inputs or datagrams dropped because a queue was full.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn push_input(&mut self, input: ControlInput) {
        if self.inbox.len() >= QUEUE_LIMIT {
            self.dropped += 1;
            return;
        }
        self.inbox.push_back(input);
    }

    /// A buffer to seal a packet into.
    fn packet_buffer(&mut self) -> Box<[u8]> {
        self.spare
            .pop()
            .unwrap_or_else(|| vec![0; natrix_session::MAX_PACKET].into_boxed_slice())
    }

    fn recycle(&mut self, buf: Box<[u8]>) {
        if self.spare.len() < SPARE_LIMIT {
            self.spare.push(buf);
        }
    }

    /// Queues a sealed packet for `to`; a packet for a relay route goes
    /// inside a relay frame on the coordinator's session instead.
    fn push_datagram(&mut self, now: Instant, to: SocketAddr, len: usize, buf: Box<[u8]>) {
        if let Some(route) = RelayRoute::from_addr(to) {
            self.relay_out(now, route, buf.get(..len).unwrap_or(&[]));
            self.recycle(buf);
            return;
        }
        if self.outbox.len() >= QUEUE_LIMIT {
            self.dropped += 1;
            self.recycle(buf);
            return;
        }
        self.outbox.push_back((to, len, buf));
    }

    /// Seals `payload` on `channel` to `key` and queues the datagram.
    /// Control channels (everything but [`CH_DATA`]) go with the session's
    /// reliable delivery (`Endpoint::send_reliable`: retransmitted until
    /// acknowledged; the datagrams leave through the endpoint's
    /// `poll_transmit`, which every caller drains); application data is sent
    /// unreliably.
    fn seal(
        &mut self,
        now: Instant,
        key: &PublicKey,
        channel: u8,
        payload: &[u8],
    ) -> Result<(), ControlError> {
        let reliable = channel != CH_DATA;
        let max = if reliable {
            natrix_session::MAX_RELIABLE_PAYLOAD
        } else {
            natrix_session::MAX_PAYLOAD
        };
        if payload.len() > max {
            return Err(ControlError::TooLarge {
                len: payload.len(),
                max,
            });
        }
        let result = if reliable {
            self.endpoint.send_reliable(now, key, channel, payload)
        } else {
            let mut buf = self.packet_buffer();
            let sent = self.endpoint.send(now, key, channel, payload, &mut buf);
            if let Ok(Some((to, len))) = sent {
                self.push_datagram(now, to, len, buf);
            } else {
                self.recycle(buf);
            }
            sent.map(|_| ())
        };
        match result {
            Ok(()) => Ok(()),
            Err(SendError::NoSession) => Err(ControlError::NoSession(key.node_id())),
            Err(e) => {
                debug!(peer = %key, error = %e, "session send refused");
                Err(ControlError::Session("send refused by the session layer"))
            }
        }
    }

    fn is_coordinator(&self, key: &PublicKey) -> bool {
        self.coordinators.contains_key(key)
    }

    fn send_own_announcement(&mut self, now: Instant, to: &PublicKey) {
        if let Some(announcement) = self.mine {
            let msg = AnnouncementMsg::Own(announcement).to_bytes();
            let _ = self.seal(now, to, CH_ANNOUNCEMENT, msg.as_bytes());
        }
    }

    /// Moves the endpoint's datagrams to the outbox.
    fn take_transmits(&mut self, now: Instant) {
        loop {
            let mut buf = self.packet_buffer();
            match self.endpoint.poll_transmit(&mut buf) {
                Some((to, len)) => self.push_datagram(now, to, len, buf),
                None => {
                    self.recycle(buf);
                    break;
                }
            }
        }
    }

    /// Drains the endpoint: datagrams, then events (which may queue more).
    fn drain_endpoint(&mut self, now: Instant) {
        self.take_transmits(now);
        while let Some(ev) = self.endpoint.poll_event() {
            self.session_event(now, ev);
        }
        self.drain_paths(now);
        self.take_transmits(now);
    }

    fn session_event(&mut self, now: Instant, ev: SessionEvent) {
        match ev {
            SessionEvent::Up {
                peer,
                node,
                addr,
                rtt,
                ..
            } => {
                debug!(%peer, %addr, "session up");
                self.live.insert(peer);
                if let Some(r) = self.coordinators.get_mut(&peer) {
                    r.at = None;
                    r.backoff = REDIAL_FIRST;
                }
                if let Some(route) = RelayRoute::from_addr(addr) {
                    // A session through a relay: a connection (accepted
                    // here unless we opened it), never the agent's business.
                    self.accept_relayed(now, peer, route);
                    // Tell the peer our class and reflex: an accepting side
                    // learns the dialler's only this way (the dialler found
                    // ours in its lookup), and without it the pair matrix
                    // sees an Unknown peer and punches where a direct
                    // exchange would do (found on real NAT: natrix-lab).
                    self.send_own_announcement(now, &peer);
                    return;
                }
                self.paths.on_session_up(now, &peer);
                self.push_input(ControlInput::SessionUp {
                    peer: node,
                    addr,
                    rtt,
                });
                self.send_own_announcement(now, &peer);
            }
            SessionEvent::AddrChanged {
                peer,
                node,
                old,
                new,
            } => {
                debug!(%peer, %old, %new, "session moved (S6: authenticated packet from a new address)");
                self.paths.on_session_moved(now, &peer, new);
                if RelayRoute::is_relay(&new) {
                    return;
                }
                let rtt = self.endpoint.session(&peer).and_then(|s| s.rtt);
                self.push_input(ControlInput::SessionUp {
                    peer: node,
                    addr: new,
                    rtt,
                });
            }
            SessionEvent::ClockOffset {
                node,
                offset_ms,
                rtt,
                ..
            } => self.push_input(ControlInput::ClockOffset {
                peer: node,
                offset_ms,
                rtt,
            }),
            SessionEvent::Down { peer, node, reason } => {
                debug!(%peer, ?reason, "session down");
                self.live.remove(&peer);
                self.announced.remove(&node);
                self.schedule_redial(now, &peer);
                self.connection_session_down(now, peer);
                if let Some(relay) = self.relay.as_mut() {
                    relay.peer_gone(now, node);
                }
                self.push_input(ControlInput::SessionDown { peer: node });
            }
            SessionEvent::HandshakeFailed { peer, addr, error } => {
                debug!(%peer, %addr, %error, "handshake failed");
                self.schedule_redial(now, &peer);
                if self.paths.close(&peer) {
                    self.push_input(ControlInput::ConnectionClosed {
                        peer,
                        error: Some(error),
                        by_peer: false,
                    });
                }
                self.push_input(ControlInput::SessionFailed {
                    peer: peer.node_id(),
                    error,
                });
            }
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }

    /// One session packet from `from` (the socket, or a relay route) into
    /// the endpoint, and what it delivered onwards.
    fn session_datagram(&mut self, now: Instant, wall_ms: u64, from: SocketAddr, datagram: &[u8]) {
        let delivered = match self.endpoint.handle_datagram(now, wall_ms, from, datagram) {
            Received::Data {
                peer,
                node,
                from,
                channel,
                payload,
            } => Some(Incoming::new(
                self.serve, &self.pool, peer, node, from, channel, payload,
            )),
            Received::Consumed => None,
            Received::Dropped(reason) => {
                trace!(%from, ?reason, "session datagram dropped");
                None
            }
        };
        if let Some(incoming) = delivered {
            self.received(now, wall_ms, incoming);
        }
    }

    fn schedule_redial(&mut self, now: Instant, key: &PublicKey) {
        if let Some(r) = self.coordinators.get_mut(key) {
            r.at = Some(now.saturating_add(r.backoff));
            r.backoff = (r.backoff * 2).min(REDIAL_MAX);
        }
    }

    /// Acts on what a session delivered (already copied out of the
    /// endpoint's receive buffer).
    fn received(&mut self, now: Instant, wall_ms: u64, incoming: Incoming) {
        match incoming {
            Incoming::Message {
                node,
                from,
                channel,
                payload,
            } => self.push_input(ControlInput::Message {
                peer: node,
                session_addr: from,
                channel,
                payload,
            }),
            Incoming::Data {
                peer,
                from,
                payload,
            } => {
                self.paths.on_received(now, &peer, from, payload.len());
                self.push_input(ControlInput::Data { peer, payload });
            }
            Incoming::Relay {
                peer,
                node,
                payload,
            } => self.relay_in(now, wall_ms, peer, node, &payload),
            Incoming::Path { peer, from, msg } => {
                let mut buf = self.packet_buffer();
                match self.paths.handle_message(
                    &mut self.endpoint,
                    now,
                    &peer,
                    from,
                    msg.as_bytes(),
                    &mut buf,
                ) {
                    Some((to, len)) => self.push_datagram(now, to, len, buf),
                    None => self.recycle(buf),
                }
            }
            Incoming::Announcement { peer, node, msg } => match msg {
                Ok(AnnouncementMsg::Own(announcement)) => {
                    self.announced.insert(node, announcement);
                    self.push_input(ControlInput::Announcement {
                        peer: node,
                        announcement,
                    });
                }
                Ok(AnnouncementMsg::Vouched {
                    peer: about,
                    announcement,
                }) if self.is_coordinator(&peer) => {
                    self.push_input(ControlInput::Announcement {
                        peer: about,
                        announcement,
                    });
                }
                Ok(AnnouncementMsg::Vouched { .. }) => {
                    trace!(%peer, "vouched announcement from a non-coordinator ignored");
                }
                Err(e) => trace!(%peer, error = %e, "bad announcement dropped"),
            },
            Incoming::Lookup { peer, lookup } => match lookup {
                Ok(l) => {
                    let online = self.endpoint.session(&l.key).is_some();
                    let answer = LookupAnswer {
                        query: l.query,
                        key: l.key,
                        online,
                        announced: if online {
                            self.announced.get(&l.key.node_id()).copied()
                        } else {
                            None
                        },
                    };
                    let _ = self.seal(
                        now,
                        &peer,
                        CH_DIRECTORY_ANSWER,
                        answer.to_bytes().as_bytes(),
                    );
                }
                Err(e) => trace!(%peer, error = %e, "bad lookup dropped"),
            },
            Incoming::Answer { peer, node, answer } => match answer {
                Ok(answer) => self.push_input(ControlInput::LookupAnswer { from: node, answer }),
                Err(e) => trace!(%peer, error = %e, "bad directory answer dropped"),
            },
            Incoming::Unknown { peer, channel } => {
                trace!(%peer, channel, "message on an unknown channel dropped");
            }
        }
    }
}

/// A message a session delivered, copied out of the endpoint's receive
/// buffer: agent messages inline, application data into a pooled buffer, the
/// control plane's own messages decoded.
enum Incoming {
    Message {
        node: NodeId,
        from: SocketAddr,
        channel: Channel,
        payload: SmallBytes,
    },
    Data {
        peer: PublicKey,
        from: SocketAddr,
        payload: PooledBuf,
    },
    Relay {
        peer: PublicKey,
        node: NodeId,
        payload: PooledBuf,
    },
    Path {
        peer: PublicKey,
        from: SocketAddr,
        msg: SmallBytes,
    },
    Announcement {
        peer: PublicKey,
        node: NodeId,
        msg: Result<AnnouncementMsg, ControlDecodeError>,
    },
    Lookup {
        peer: PublicKey,
        lookup: Result<Lookup, ControlDecodeError>,
    },
    Answer {
        peer: PublicKey,
        node: NodeId,
        answer: Result<LookupAnswer, ControlDecodeError>,
    },
    Unknown {
        peer: PublicKey,
        channel: u8,
    },
}

impl Incoming {
    fn new(
        serve: bool,
        pool: &BufPool,
        peer: PublicKey,
        node: NodeId,
        from: SocketAddr,
        channel: u8,
        payload: &[u8],
    ) -> Self {
        if let Some(ch) = Channel::from_wire_byte(channel) {
            return Incoming::Message {
                node,
                from,
                channel: ch,
                payload: SmallBytes::new(payload),
            };
        }
        match channel {
            CH_ANNOUNCEMENT => Incoming::Announcement {
                peer,
                node,
                msg: AnnouncementMsg::decode(payload),
            },
            CH_DIRECTORY_LOOKUP if serve => Incoming::Lookup {
                peer,
                lookup: Lookup::decode(payload),
            },
            CH_DIRECTORY_ANSWER => Incoming::Answer {
                peer,
                node,
                answer: LookupAnswer::decode(payload),
            },
            CH_DATA => Incoming::Data {
                peer,
                from,
                payload: pool.copy_from(payload),
            },
            CH_RELAY => Incoming::Relay {
                peer,
                node,
                payload: pool.copy_from(payload),
            },
            CH_PATH if payload.len() == PATH_MESSAGE_LEN => Incoming::Path {
                peer,
                from,
                msg: SmallBytes::new(payload),
            },
            other => Incoming::Unknown {
                peer,
                channel: other,
            },
        }
    }
}

impl ControlPlane for SessionControl {
    fn send(&mut self, now: Instant, peer: NodeId, channel: Channel, payload: &[u8]) {
        let Some(key) = self.endpoint.peer_by_node_id(peer) else {
            trace!(?peer, "control message to a peer without a session dropped");
            return;
        };
        let ch = channel.wire_byte();
        // A coordinator vouches for the introduced peer's announcement right
        // before the introduce, so that the endpoint can check R4.
        if self.serve && channel == Channel::Rendezvous {
            if let Ok(RendezvousMessage::Introduce(intro)) = RendezvousMessage::decode(payload) {
                if let Some(&announcement) = self.announced.get(&intro.peer) {
                    let msg = AnnouncementMsg::Vouched {
                        peer: intro.peer,
                        announcement,
                    }
                    .to_bytes();
                    let _ = self.seal(now, &key, CH_ANNOUNCEMENT, msg.as_bytes());
                }
            }
        }
        if let Err(e) = self.seal(now, &key, ch, payload) {
            trace!(?peer, error = %e, "control message dropped");
        }
        self.drain_endpoint(now);
    }

    fn announce(&mut self, now: Instant, announcement: Announcement) {
        self.mine = Some(announcement);
        let peers: Vec<PublicKey> = self.live.iter().copied().collect();
        for p in peers {
            self.send_own_announcement(now, &p);
        }
        self.drain_endpoint(now);
    }

    fn poll_recv(&mut self, _cx: &mut Context<'_>) -> Poll<Option<ControlInput>> {
        // Filled only from the task's own calls, which poll again after each.
        match self.inbox.pop_front() {
            Some(i) => Poll::Ready(Some(i)),
            None => Poll::Pending,
        }
    }

    fn public_key(&self) -> Option<PublicKey> {
        Some(self.endpoint.public_key())
    }

    fn handle_datagram(
        &mut self,
        now: Instant,
        wall_ms: u64,
        from: SocketAddr,
        datagram: &[u8],
    ) -> bool {
        if RelayRoute::is_relay(&from) {
            // No datagram from the network comes from a relay route's
            // address (100::/64 is discard-only): a forgery.
            trace!(%from, "datagram from a relay-route address dropped");
            return true;
        }
        self.last_wall_ms = wall_ms;
        self.session_datagram(now, wall_ms, from, datagram);
        self.drain_endpoint(now);
        true
    }

    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        let (to, len, buf) = self.outbox.pop_front()?;
        let bytes = buf.get(..len).unwrap_or(&[]).to_vec();
        self.recycle(buf);
        Some((to, bytes))
    }
    fn poll_transmit_into(&mut self, out: &mut [u8]) -> Option<(SocketAddr, usize)> {
        let (to, len, buf) = self.outbox.pop_front()?;
        let n = len.min(out.len());
        if let (Some(dst), Some(src)) = (out.get_mut(..n), buf.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.recycle(buf);
        Some((to, n))
    }

    fn poll_timeout(&self) -> Option<Instant> {
        [
            self.endpoint.poll_timeout(),
            self.coordinators.values().filter_map(|r| r.at).min(),
            self.paths.poll_timeout(),
            self.relay.as_ref().and_then(RelayServer::poll_timeout),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn handle_timeout(&mut self, now: Instant, wall_ms: u64) {
        self.last_wall_ms = wall_ms;
        self.endpoint.handle_timeout(now, wall_ms);
        self.paths.handle_timeout(now);
        if let Some(relay) = self.relay.as_mut() {
            relay.handle_timeout(now);
        }
        let due: Vec<(PublicKey, SocketAddr)> = self
            .coordinators
            .iter()
            .filter(|(_, r)| r.at.is_some_and(|t| t <= now))
            .map(|(k, r)| (*k, r.addr))
            .collect();
        for (key, addr) in due {
            if let Some(r) = self.coordinators.get_mut(&key) {
                r.at = None;
            }
            debug!(coordinator = %key, %addr, "dialling coordinator");
            if let Err(e) = self.endpoint.connect(now, wall_ms, key, addr) {
                debug!(coordinator = %key, error = %e, "dial refused");
                self.schedule_redial(now, &key);
            }
        }
        self.drain_endpoint(now);
    }

    fn dial(
        &mut self,
        now: Instant,
        wall_ms: u64,
        key: PublicKey,
        addr: SocketAddr,
    ) -> Result<(), ControlError> {
        let r = self.endpoint.connect(now, wall_ms, key, addr);
        self.drain_endpoint(now);
        r.map_err(|e| {
            debug!(peer = %key, %addr, error = %e, "dial refused");
            ControlError::Session("dial refused by the session layer")
        })
    }

    fn send_data(
        &mut self,
        now: Instant,
        key: &PublicKey,
        data: &[u8],
    ) -> Result<(), ControlError> {
        if self.paths.contains(key) {
            // A connection: one size on every path (a relay frame must hold it).
            if data.len() > MAX_DATAGRAM {
                return Err(ControlError::TooLarge {
                    len: data.len(),
                    max: MAX_DATAGRAM,
                });
            }
            self.paths.on_sent(now, key, data.len());
        }
        let r = self.seal(now, key, CH_DATA, data);
        self.drain_endpoint(now);
        r
    }

    fn open_connection(
        &mut self,
        now: Instant,
        wall_ms: u64,
        peer: PublicKey,
        via: PublicKey,
    ) -> Result<PathInfo, ControlError> {
        self.last_wall_ms = wall_ms;
        let r = self.open(now, wall_ms, peer, via);
        self.drain_endpoint(now);
        r
    }

    fn close_connection(&mut self, now: Instant, peer: &PublicKey) {
        if self.paths.close(peer) {
            // Tell the peer (twice: it is one unreliable datagram, and a
            // lost one only costs the peer a session timeout).
            let close = PathMessage::Close.encode();
            for _ in 0..2 {
                let mut buf = self.packet_buffer();
                match self.endpoint.send(now, peer, CH_PATH, &close, &mut buf) {
                    Ok(Some((to, len))) => self.push_datagram(now, to, len, buf),
                    _ => self.recycle(buf),
                }
            }
            self.endpoint.close(now, peer);
            self.drain_endpoint(now);
        }
    }

    fn path(&self, peer: &PublicKey) -> Option<PathInfo> {
        self.paths.info(peer)
    }

    fn path_stats(&self) -> Option<PathStats> {
        Some(self.paths.stats())
    }

    fn relay_stats(&self) -> Option<RelayStats> {
        self.relay.as_ref().map(RelayServer::stats)
    }

    fn punch_outcome(
        &mut self,
        now: Instant,
        peer: NodeId,
        outcome: Result<SocketAddr, TraversalError>,
    ) {
        self.on_punch_outcome(now, peer, outcome);
        self.drain_endpoint(now);
    }

    fn network_changed(&mut self, now: Instant) {
        self.paths.network_changed(now);
        self.drain_endpoint(now);
    }

    fn coordinators(&self) -> Vec<PublicKey> {
        self.coordinator_slots
            .iter()
            .filter(|k| self.live.contains(k))
            .copied()
            .collect()
    }

    fn lookup(&mut self, now: Instant, at: NodeId, key: PublicKey) -> Result<u32, ControlError> {
        let coordinator = self
            .endpoint
            .peer_by_node_id(at)
            .ok_or(ControlError::NoSession(at))?;
        let query = self.next_query;
        self.next_query = self.next_query.wrapping_add(1).max(1);
        let msg = Lookup { query, key }.to_bytes();
        let r = self.seal(now, &coordinator, CH_DIRECTORY_LOOKUP, msg.as_bytes());
        self.drain_endpoint(now);
        r.map(|()| query)
    }

    fn session(&self, key: &PublicKey) -> Option<SessionInfo> {
        self.endpoint.session(key)
    }

    fn session_stats(&self) -> Option<SessionStats> {
        Some(self.endpoint.stats())
    }
}
