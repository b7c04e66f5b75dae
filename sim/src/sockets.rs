//! A simulated host's extra UDP sockets: the ones its agent's birthday
//! attempts open (N2, [`Transmit::Spray`](natrix_proto::Transmit::Spray)),
//! and the few it keeps afterwards, each pinned to one path.
//!
//! The [`World`](crate::World) does the plumbing; this table only decides
//! which local address a socket has, which socket a datagram leaves from
//! and which socket an arriving datagram reached, the way a driver's socket
//! set would:
//!
//! * **Opening.** Socket `socket` of attempt `attempt` opens the first time
//!   the agent names it: a fresh local address on the host's IP, its port
//!   the next free one of the dynamic range [`FIRST_PORT`]`..=65535` (a
//!   cursor that moves on and wraps, skipping the main socket's port and
//!   every open socket's), so the host's NAT sees a new internal address and
//!   makes a new mapping for it. A port comes back only after the cursor has
//!   gone once round the range (16,384 openings), long after its datagrams
//!   in flight have landed on a closed port. At most [`MAX_OPEN`] sockets
//!   are open at once (an OS's descriptor limit): an opening beyond it fails
//!   and its datagram is not sent ([`SpraySockets::refused`]).
//! * **Closing.** `Event::SprayEnded` closes every socket of its attempt
//!   but the one it names to keep. A datagram to a closed socket is dropped
//!   as to a closed port ([`Drop::ClosedPort`](crate::world::Drop::ClosedPort)),
//!   and a later `Transmit::Spray` naming a closed socket of an ended attempt
//!   is not sent (nor re-opened): counted in [`SpraySockets::late`].
//! * **Pinning.** The kept socket is pinned to the success's path (the
//!   peer's address, `SprayOutcome::Succeeded { path }`): from then on every
//!   datagram the host sends to that address — keep-alives, session packets,
//!   connection traffic, application datagrams — leaves from it, and what
//!   arrives on it that the agent does not consume is the host's input as on
//!   the main socket. One pin per path: a new pin to the same path closes
//!   the old socket. At most [`MAX_PINNED`] pinned sockets per host; a new
//!   one beyond that closes the oldest (its path falls back to the main
//!   socket, [`SpraySockets::evicted`]). Nothing else closes a pinned
//!   socket but a restart or a new identity of the host (which close every
//!   extra socket).
//!
//! Everything here is ordered (`BTreeMap`, `VecDeque`) and draws no random
//! numbers: the same inputs give the same ports.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;

/// Most sockets a host keeps pinned to paths (kept by successful birthday
/// attempts); a new pin beyond this closes the oldest.
pub const MAX_PINNED: usize = 16;

/// Most extra sockets a host has open at once (attempts' and pinned ones).
/// The agent's own caps keep far below it (256 sockets per attempt and two
/// attempts at once by default; `natrix_proto::config::MAX_SPRAY_SOCKETS`
/// per attempt at most).
pub const MAX_OPEN: usize = 4096;

/// The first port of the range extra sockets are bound in (the IANA
/// dynamic range, `49152..=65535`).
pub const FIRST_PORT: u16 = 49_152;

/// How many ended attempts a host remembers, to refuse a late transmit
/// naming one of their closed sockets instead of opening it again.
const ENDED_REMEMBERED: usize = 64;

/// One extra socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpraySocket {
    /// The attempt that opened it.
    pub attempt: u64,
    /// Its number in the attempt.
    pub socket: u16,
    /// Its local address (the host's IP, its own port).
    pub local: SocketAddr,
    /// The path it is pinned to, once kept.
    pub pinned: Option<SocketAddr>,
    /// Datagrams sent from it (any kind).
    pub sent: u64,
    /// Datagrams that arrived on it (any kind).
    pub received: u64,
}

/// Where a [`Transmit::Spray`](natrix_proto::Transmit::Spray) leaves from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendFrom {
    /// An open socket, at this local address (`true`: opened just now).
    Socket(SocketAddr, bool),
    /// The socket belonged to an attempt that ended and was not kept: not
    /// sent.
    Closed,
    /// [`MAX_OPEN`] sockets are open: not sent.
    Full,
}

/// A host's extra sockets. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct SpraySockets {
    by_local: BTreeMap<SocketAddr, SpraySocket>,
    by_id: BTreeMap<(u64, u16), SocketAddr>,
    /// Pinned sockets, oldest first: (path, local).
    pins: VecDeque<(SocketAddr, SocketAddr)>,
    /// Recently ended attempts, oldest first.
    ended: VecDeque<u64>,
    /// The next port to try.
    cursor: u16,
    /// Sockets opened so far.
    pub opened: u64,
    /// Sockets closed so far (ended attempts, replaced and evicted pins).
    pub closed: u64,
    /// Pinned sockets closed because [`MAX_PINNED`] were pinned.
    pub evicted: u64,
    /// Transmits naming a closed socket of an ended attempt (not sent).
    pub late: u64,
    /// Openings refused because [`MAX_OPEN`] sockets were open (not sent).
    pub refused: u64,
    /// `SprayEnded` events naming a socket to keep that was not open, or
    /// keeping one without a successful path: a protocol anomaly (nothing
    /// is kept).
    pub bad_keeps: u64,
}

impl Default for SpraySockets {
    fn default() -> Self {
        SpraySockets {
            by_local: BTreeMap::new(),
            by_id: BTreeMap::new(),
            pins: VecDeque::new(),
            ended: VecDeque::new(),
            cursor: FIRST_PORT,
            opened: 0,
            closed: 0,
            evicted: 0,
            late: 0,
            refused: 0,
            bad_keeps: 0,
        }
    }
}

impl SpraySockets {
    /// The socket `socket` of `attempt` sends from, opening it on `main`'s
    /// IP when it is new.
    pub fn send_from(&mut self, main: SocketAddr, attempt: u64, socket: u16) -> SendFrom {
        if let Some(&local) = self.by_id.get(&(attempt, socket)) {
            return SendFrom::Socket(local, false);
        }
        if self.ended.contains(&attempt) {
            self.late += 1;
            return SendFrom::Closed;
        }
        if self.by_local.len() >= MAX_OPEN {
            self.refused += 1;
            return SendFrom::Full;
        }
        let local = self.free_addr(main);
        self.by_local.insert(
            local,
            SpraySocket {
                attempt,
                socket,
                local,
                pinned: None,
                sent: 0,
                received: 0,
            },
        );
        self.by_id.insert((attempt, socket), local);
        self.opened += 1;
        SendFrom::Socket(local, true)
    }

    /// The next free address on `main`'s IP: the cursor's port, or the next
    /// one that is neither `main`'s nor an open socket's. There is one:
    /// fewer than [`MAX_OPEN`] sockets are open, and the range is larger.
    fn free_addr(&mut self, main: SocketAddr) -> SocketAddr {
        loop {
            let port = self.cursor;
            self.cursor = if port == u16::MAX {
                FIRST_PORT
            } else {
                port + 1
            };
            let addr = SocketAddr::new(main.ip(), port);
            if port != main.port() && !self.by_local.contains_key(&addr) {
                return addr;
            }
        }
    }

    /// The open socket at `local`, if any.
    #[must_use]
    pub fn get(&self, local: SocketAddr) -> Option<&SpraySocket> {
        self.by_local.get(&local)
    }

    /// Counts a datagram sent from the socket at `local` (if open).
    pub fn count_sent(&mut self, local: SocketAddr) {
        if let Some(s) = self.by_local.get_mut(&local) {
            s.sent += 1;
        }
    }

    /// Counts a datagram that arrived on the socket at `local` (if open).
    pub fn count_received(&mut self, local: SocketAddr) {
        if let Some(s) = self.by_local.get_mut(&local) {
            s.received += 1;
        }
    }

    /// The pinned socket datagrams to `to` leave from, if any.
    #[must_use]
    pub fn route(&self, to: SocketAddr) -> Option<SocketAddr> {
        self.pins
            .iter()
            .find(|(path, _)| *path == to)
            .map(|(_, local)| *local)
    }

    /// `attempt` ended: closes its sockets, except `keep`'s, which is pinned
    /// to `path` (replacing an older pin to the same path; closing the
    /// oldest pin beyond [`MAX_PINNED`]). Returns how many sockets closed.
    pub fn end(&mut self, attempt: u64, keep: Option<(u16, SocketAddr)>) -> usize {
        if !self.ended.contains(&attempt) {
            if self.ended.len() >= ENDED_REMEMBERED {
                self.ended.pop_front();
            }
            self.ended.push_back(attempt);
        }
        let kept = keep.and_then(|(socket, path)| {
            let local = self.by_id.get(&(attempt, socket)).copied();
            if local.is_none() {
                self.bad_keeps += 1;
            }
            local.map(|l| (l, path))
        });
        let doomed: Vec<SocketAddr> = self
            .by_local
            .values()
            .filter(|s| s.attempt == attempt && Some(s.local) != kept.map(|k| k.0))
            .map(|s| s.local)
            .collect();
        let mut closed = doomed.len();
        for local in doomed {
            self.close(local);
        }
        let Some((local, path)) = kept else {
            return closed;
        };
        let fresh = self
            .by_local
            .get(&local)
            .is_some_and(|s| s.pinned.is_none());
        if !fresh {
            return closed;
        }
        if let Some(old) = self.route(path) {
            self.close(old);
            closed += 1;
        }
        if let Some(s) = self.by_local.get_mut(&local) {
            s.pinned = Some(path);
        }
        self.pins.push_back((path, local));
        while self.pins.len() > MAX_PINNED {
            let (_, oldest) = self.pins[0];
            self.close(oldest);
            self.evicted += 1;
            closed += 1;
        }
        closed
    }

    /// Keeps nothing of `attempt` and counts a bad keep (a `SprayEnded`
    /// that named a socket without a successful path).
    pub fn end_bad_keep(&mut self, attempt: u64) -> usize {
        self.bad_keeps += 1;
        self.end(attempt, None)
    }

    fn close(&mut self, local: SocketAddr) {
        if let Some(s) = self.by_local.remove(&local) {
            self.by_id.remove(&(s.attempt, s.socket));
            self.pins.retain(|(_, l)| *l != local);
            self.closed += 1;
        }
    }

    /// Closes every socket and forgets every attempt (the host restarted:
    /// a new agent numbers its attempts from the start). The counters stay.
    pub fn clear(&mut self) {
        self.closed += self.by_local.len() as u64;
        self.by_local.clear();
        self.by_id.clear();
        self.pins.clear();
        self.ended.clear();
    }

    /// Sockets open now (attempts' and pinned).
    #[must_use]
    pub fn open(&self) -> usize {
        self.by_local.len()
    }

    /// The pinned sockets, oldest first: (path, local address).
    pub fn pinned(&self) -> impl Iterator<Item = (SocketAddr, SocketAddr)> + '_ {
        self.pins.iter().copied()
    }

    /// Every open socket, by local address.
    pub fn sockets(&self) -> impl Iterator<Item = &SpraySocket> + '_ {
        self.by_local.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn sockets_get_distinct_ports_and_close_with_their_attempt() {
        let main = a("10.1.0.2:49153");
        let mut t = SpraySockets::default();
        let SendFrom::Socket(s0, true) = t.send_from(main, 1, 0) else {
            panic!("opens");
        };
        let SendFrom::Socket(s1, true) = t.send_from(main, 1, 1) else {
            panic!("opens");
        };
        assert_eq!(s0, a("10.1.0.2:49152"));
        // The main socket's port is skipped.
        assert_eq!(s1, a("10.1.0.2:49154"));
        assert_eq!(t.send_from(main, 1, 0), SendFrom::Socket(s0, false));
        let SendFrom::Socket(other, true) = t.send_from(main, 2, 0) else {
            panic!("opens");
        };
        assert_eq!(t.open(), 3);
        // Attempt 1 ends keeping socket 1, pinned to the peer's address.
        let peer = a("198.51.100.9:4000");
        assert_eq!(t.end(1, Some((1, peer))), 1);
        assert_eq!(t.open(), 2);
        assert_eq!(t.route(peer), Some(s1));
        assert!(t.get(s0).is_none());
        assert_eq!(t.get(s1).unwrap().pinned, Some(peer));
        // Its closed sockets are not opened again; its kept one still sends.
        assert_eq!(t.send_from(main, 1, 0), SendFrom::Closed);
        assert_eq!(t.late, 1);
        assert_eq!(t.send_from(main, 1, 1), SendFrom::Socket(s1, false));
        // Attempt 2 fails: nothing kept.
        assert_eq!(t.end(2, None), 1);
        assert!(t.get(other).is_none());
        assert_eq!(t.open(), 1);
    }

    #[test]
    fn pins_are_capped_and_replaced() {
        let main = a("10.1.0.2:4000");
        let mut t = SpraySockets::default();
        let path = |i: u16| SocketAddr::new("198.51.100.9".parse().unwrap(), 5000 + i);
        for attempt in 1..=u64::from(MAX_PINNED as u16) + 3 {
            let p = path(attempt as u16);
            assert!(matches!(
                t.send_from(main, attempt, 7),
                SendFrom::Socket(..)
            ));
            t.end(attempt, Some((7, p)));
        }
        assert_eq!(t.open(), MAX_PINNED);
        assert_eq!(t.evicted, 3);
        // The three oldest paths fell back to the main socket.
        assert_eq!(t.route(path(1)), None);
        assert_eq!(t.route(path(3)), None);
        assert!(t.route(path(4)).is_some());
        // A new pin to a pinned path replaces it.
        let old = t.route(path(10)).unwrap();
        assert!(matches!(t.send_from(main, 100, 0), SendFrom::Socket(..)));
        t.end(100, Some((0, path(10))));
        let new = t.route(path(10)).unwrap();
        assert_ne!(old, new);
        assert!(t.get(old).is_none());
        assert_eq!(t.open(), MAX_PINNED);
        assert_eq!(t.pinned().count(), MAX_PINNED);
        // A keep naming a socket never opened keeps nothing.
        t.end(200, Some((3, path(99))));
        assert_eq!(t.bad_keeps, 1);
        assert_eq!(t.route(path(99)), None);
    }

    #[test]
    fn the_open_cap_holds_and_the_cursor_wraps() {
        let main = a("10.1.0.2:4000");
        let mut t = SpraySockets::default();
        for i in 0..MAX_OPEN {
            assert!(matches!(
                t.send_from(main, 1 + (i / 1000) as u64, (i % 1000) as u16),
                SendFrom::Socket(_, true)
            ));
        }
        assert_eq!(t.send_from(main, 9, 0), SendFrom::Full);
        assert_eq!(t.refused, 1);
        for attempt in 1..=5 {
            t.end(attempt, None);
        }
        assert_eq!(t.open(), 0);
        // Round the range: ports come back after 65535.
        let mut seen_wrap = false;
        for i in 0..20_000u32 {
            let SendFrom::Socket(l, true) = t.send_from(main, 1000 + u64::from(i), 0) else {
                panic!("opens");
            };
            assert!(l.port() >= FIRST_PORT);
            seen_wrap |= l.port() == FIRST_PORT;
            t.end(1000 + u64::from(i), None);
        }
        assert!(seen_wrap);
    }
}
