//! Batched receives for the drivers' sockets: up to [`BatchReceiver::SLOTS`]
//! datagrams per system call (`recvmmsg`, through `quinn-udp`), on Linux and
//! Android. Elsewhere `quinn-udp` reads one datagram per call anyway, so the
//! drivers keep the [`UdpSocket`](crate::runtime::UdpSocket) trait's default
//! there.
//!
//! `quinn-udp`'s [`UdpSocketState::new`] configures the socket it is given for
//! QUIC: UDP GRO on (several datagrams glued into one read, which a plain
//! `recv_from` on the same socket would then hand out as one), fragmentation
//! off (`IP_PMTUDISC_PROBE`, `IPV6_DONTFRAG`: a
//! [`Node::send_to`](crate::Node::send_to) larger than the link MTU would fail
//! instead of being fragmented), timestamps and packet info on every
//! datagram. None of that is wanted on a node's socket, so the state is built
//! on a scratch socket of the same family, dropped at once: on these
//! platforms its `recv` is `recvmmsg` on the socket it is handed and reads
//! nothing of the state. The node's socket keeps its options; without GRO
//! every slot holds one datagram (the node still splits a slot by its
//! stride). This leans on how `quinn-udp` 0.6 works inside; see
//! `docs/ecosystem.md`, "Batched socket calls".

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;

use quinn_udp::{RecvMeta, UdpSockRef, UdpSocketState};

use crate::runtime::{RecvBatch, RecvSlot};

/// Receives a batch of datagrams per system call from any socket of one
/// address family.
pub struct BatchReceiver {
    state: UdpSocketState,
}

impl fmt::Debug for BatchReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchReceiver").finish_non_exhaustive()
    }
}

impl BatchReceiver {
    /// Datagrams per receive at most (`quinn-udp`'s own batch limit).
    pub const SLOTS: usize = 32;

    /// A receiver for sockets of `local`'s family (see the module docs for
    /// why it is built on a scratch socket); `None` (receive one datagram per
    /// call) if that socket cannot be had.
    #[must_use]
    pub fn for_family_of(local: SocketAddr) -> Option<Self> {
        let any = if local.is_ipv4() {
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
        };
        let scratch = std::net::UdpSocket::bind(any).ok()?;
        let state = UdpSocketState::new((&scratch).into()).ok()?;
        Some(BatchReceiver { state })
    }

    /// One `recvmmsg` from the non-blocking `socket` into the batch's slots:
    /// how many it filled; `WouldBlock` when nothing is there.
    pub fn recv(&self, socket: &impl AsFd, batch: &mut RecvBatch) -> io::Result<usize> {
        let (mut bufs, slots) = batch.parts_mut();
        let k = slots.len().min(Self::SLOTS);
        let mut iov: [IoSliceMut<'_>; Self::SLOTS] =
            std::array::from_fn(|_| IoSliceMut::new(bufs.next().unwrap_or_default()));
        let mut meta = [RecvMeta::default(); Self::SLOTS];
        let n = self
            .state
            .recv(UdpSockRef::from(socket), &mut iov[..k], &mut meta[..k])?;
        for (slot, m) in slots.iter_mut().zip(&meta[..n.min(k)]) {
            *slot = RecvSlot {
                len: m.len,
                stride: m.stride,
                src: m.addr,
            };
        }
        Ok(n.min(k))
    }
}
