//! What goes in and out of the agent: control channels, transmits, events.

use alloc::collections::VecDeque;
use core::net::SocketAddr;
use core::time::Duration;

use crate::behaviour::NatProfile;
use crate::classify::NatClass;
use crate::discovery::{ProbeError, SweepOutcome};
use crate::error::TraversalError;
use crate::spray::SprayOutcome;
use crate::stats::Stats;
use crate::wire::NodeId;

/// Which natrix sub-protocol a control message belongs to.
///
/// Control messages travel on the embedder's authenticated sessions. The
/// embedder frames each with its channel (for example a sub-protocol id byte in
/// its own header) and hands the channel back with the payload; the reflex
/// messages carry no kind byte of their own, so the channel is what tells them
/// apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Channel {
    /// Rendezvous messages (`PunchRequest`, `PunchIntroduce`, `PunchAck`, `PunchReject`).
    Rendezvous,
    /// Reflex request (empty payload).
    ReflexRequest,
    /// Reflex response (one address block).
    ReflexResponse,
    /// natrix's own control messages ([`crate::wire::natrix`]: hello, punch
    /// bind, refuse, refused). Sent only toward peers known to speak natrix
    /// (the hello excepted, see [`Config::natrix_extensions`](crate::Config::natrix_extensions)).
    Natrix,
}

impl Channel {
    /// The channel byte natrix's own sessions carry this channel under
    /// (`natrix-session` transport packets: channel, then payload). Channel 0
    /// belongs to the session layer itself and is never an agent channel.
    #[must_use]
    pub const fn wire_byte(self) -> u8 {
        match self {
            Channel::Rendezvous => 1,
            Channel::ReflexRequest => 2,
            Channel::ReflexResponse => 3,
            Channel::Natrix => 7,
        }
    }

    /// The agent channel carried under session channel byte `b`, if any.
    #[must_use]
    pub const fn from_wire_byte(b: u8) -> Option<Channel> {
        match b {
            1 => Some(Channel::Rendezvous),
            2 => Some(Channel::ReflexRequest),
            3 => Some(Channel::ReflexResponse),
            7 => Some(Channel::Natrix),
            _ => None,
        }
    }
}

/// An encoded message held inline: no allocation per transmit.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Payload {
    bytes: [u8; Payload::CAPACITY],
    len: u8,
}

impl Payload {
    /// The largest natrix message (a `PunchIntroduce`).
    pub const CAPACITY: usize = 36;

    /// Copies `bytes` (at most [`CAPACITY`](Self::CAPACITY); longer input is cut,
    /// which no natrix message needs).
    #[must_use]
    #[inline]
    pub fn new(bytes: &[u8]) -> Self {
        let mut p = Payload {
            bytes: [0; Self::CAPACITY],
            len: 0,
        };
        let n = bytes.len().min(Self::CAPACITY);
        if let Ok(full) = <[u8; Self::CAPACITY]>::try_from(bytes) {
            // The common case (an introduce): one fixed-size copy, no call.
            p.bytes = full;
        } else if let (Some(dst), Some(src)) = (p.bytes.get_mut(..n), bytes.get(..n)) {
            dst.copy_from_slice(src);
        }
        p.len = n as u8;
        p
    }

    /// The encoded bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or(&[])
    }
}

impl core::fmt::Debug for Payload {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Payload({:02x?})", self.as_bytes())
    }
}

/// Something the agent wants sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transmit {
    /// A control message to an authenticated peer, on its session.
    Control {
        /// The peer.
        to: NodeId,
        /// The sub-protocol.
        channel: Channel,
        /// The encoded message.
        payload: Payload,
    },
    /// A raw UDP datagram. It must leave from the socket bound at `local`:
    /// the NAT mapping a punch opens belongs to that socket.
    Datagram {
        /// The local socket to send from.
        local: SocketAddr,
        /// The destination.
        to: SocketAddr,
        /// The datagram.
        payload: Payload,
    },
    /// N2: a datagram from the birthday attempt's local socket number
    /// `socket` (`0..SprayConfig::sockets`). The driver opens that socket
    /// the first time it is named — a fresh port on the main socket's IP,
    /// so the NAT makes a new mapping for it — hands what arrives on it to
    /// [`Agent::handle_spray_datagram`](crate::Agent::handle_spray_datagram),
    /// and closes the attempt's sockets when its [`Event::SprayEnded`]
    /// comes (all but the one it names to keep).
    Spray {
        /// The attempt (its id in [`Event::SprayEnded`]).
        attempt: u64,
        /// The attempt's socket to send from.
        socket: u16,
        /// The destination.
        to: SocketAddr,
        /// The datagram.
        payload: Payload,
    },
}

/// Which side of a punch this node played.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// This node asked for the punch (`request_punch`).
    Requester,
    /// Another node asked; a coordinator introduced it to us.
    Responder,
}

/// How a direct path was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PathMethod {
    /// A keep-alive from the peer arrived: the hole is open.
    Punched,
    /// The pair matrix says no punch is needed: the peer's announced reflex is
    /// reachable directly.
    Direct,
}

/// Something that happened, for the application.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A punch found a direct path.
    PunchSucceeded {
        /// The other end.
        peer: NodeId,
        /// The punch id (0 on the responder side, which never learns it).
        punch_id: u32,
        /// Which side we were.
        role: Role,
        /// The peer's address on the direct path (peer-reflexive: where its
        /// keep-alive actually came from, R8).
        path: SocketAddr,
        /// How it was found.
        method: PathMethod,
        /// Time from the start of the punch to this event.
        elapsed: Duration,
    },
    /// A punch ended without a direct path: use the relay.
    PunchFailed {
        /// The other end.
        peer: NodeId,
        /// The punch id (0 on the responder side).
        punch_id: u32,
        /// Which side we were.
        role: Role,
        /// Why.
        error: TraversalError,
        /// Time from the start of the punch to this event.
        elapsed: Duration,
    },
    /// This node's (class, reflex, profile) changed: announce it to peers.
    ClassificationChanged {
        /// The class now in force.
        class: NatClass,
        /// The public address that goes with it.
        reflex: SocketAddr,
        /// C8: the measured mapping and filtering that go with it, if any.
        profile: Option<NatProfile>,
    },
    /// A classification sweep ended (whether or not it changed anything).
    SweepFinished {
        /// The sweep's generation.
        generation: u64,
        /// How it ended.
        outcome: SweepOutcome,
    },
    /// N2: a birthday attempt ended (it started with a rendezvous whose pair
    /// needs one; see [`birthday_side`](crate::behaviour::birthday_side)).
    /// The driver closes the attempt's sockets now, except `keep`: the
    /// socket the peer's keep-alive came in on, which from now on carries
    /// every datagram to `path` (the punch's [`Event::PunchSucceeded`],
    /// which follows, names the same path). [`Transmit::Spray`] with this
    /// attempt and `keep` may still follow (the train's last keep-alives).
    SprayEnded {
        /// The other end.
        peer: NodeId,
        /// The attempt.
        attempt: u64,
        /// How it ended.
        outcome: SprayOutcome,
        /// The socket to keep, on the hard side of a success.
        keep: Option<u16>,
        /// Datagrams the attempt sent.
        sent: u16,
    },
    /// A standalone reflex probe ended.
    ReflexProbed {
        /// The id `probe_reflex` returned.
        probe_id: u64,
        /// The probed peer.
        peer: NodeId,
        /// The address the peer saw us at, or why there is none.
        result: Result<SocketAddr, ProbeError>,
    },
}

/// What [`Agent::handle_datagram`](crate::Agent::handle_datagram) did with a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[must_use]
pub enum DatagramVerdict {
    /// A natrix keep-alive: consumed (accepted or dropped) by the agent.
    Consumed,
    /// Not natrix's: hand it to the application untouched.
    NotOurs,
}

/// The queues the machines write into, and the counters they maintain.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pub(crate) transmits: VecDeque<Transmit>,
    pub(crate) events: VecDeque<Event>,
    pub(crate) stats: Stats,
}

impl Outbox {
    #[inline]
    pub(crate) fn control(&mut self, to: NodeId, channel: Channel, bytes: &[u8]) {
        self.transmits.push_back(Transmit::Control {
            to,
            channel,
            payload: Payload::new(bytes),
        });
    }

    pub(crate) fn spray(&mut self, attempt: u64, socket: u16, to: SocketAddr, bytes: &[u8]) {
        self.transmits.push_back(Transmit::Spray {
            attempt,
            socket,
            to,
            payload: Payload::new(bytes),
        });
    }

    pub(crate) fn datagram(&mut self, local: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        self.transmits.push_back(Transmit::Datagram {
            local,
            to,
            payload: Payload::new(bytes),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::Channel;

    #[test]
    fn channel_wire_bytes_map_both_ways_and_skip_zero() {
        for c in [
            Channel::Rendezvous,
            Channel::ReflexRequest,
            Channel::ReflexResponse,
            Channel::Natrix,
        ] {
            assert_ne!(c.wire_byte(), 0);
            assert_eq!(Channel::from_wire_byte(c.wire_byte()), Some(c));
        }
        assert_eq!(Channel::Natrix.wire_byte(), 7);
        // 4, 5, 6 and 16 belong to the driver's own channels (announcements,
        // directory, application data), 0 to the session layer.
        for b in [0, 4, 5, 6, 8, 16, 255] {
            assert_eq!(Channel::from_wire_byte(b), None, "{b}");
        }
    }
}
