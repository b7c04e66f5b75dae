//! # natrix-smol — natrix on smol (and inside async-std)
//!
//! The smol half of the driver: a [`Runtime`] over `async-io` (an
//! `Async<std::net::UdpSocket>` and `async_io::Timer`) that spawns on smol's
//! global executor. Everything else is `natrix-driver-core`, shared with
//! `natrix-tokio`.
//!
//! Because async-std runs on the same reactor (async-io), this driver also
//! runs unchanged inside `async_std::task::block_on` — its test suite checks
//! that. (async-std itself is deprecated in favour of smol.)

use std::io;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Instant as StdInstant;

use async_io::Async;
pub use natrix_driver_core::api::*;
#[cfg(any(target_os = "linux", target_os = "android"))]
use natrix_driver_core::batch::BatchReceiver;
pub use natrix_driver_core::stun::{LifetimeConfig, discover_behaviour_with};
use natrix_driver_core::{BoxFuture, Runtime, UdpSocket};

/// A natrix node on smol.
pub type Node = natrix_driver_core::Node<Smol>;

/// A natrix coordinator service on smol.
pub type Coordinator = natrix_driver_core::Coordinator<Smol>;

/// smol's global executor and async-io's reactor, as a natrix [`Runtime`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Smol;

/// An async-io UDP socket. On Linux and Android the node receives from it
/// up to 32 datagrams per system call (`recvmmsg`, through `quinn-udp`).
#[derive(Debug)]
pub struct SmolSocket(
    Async<std::net::UdpSocket>,
    #[cfg(any(target_os = "linux", target_os = "android"))] Option<BatchReceiver>,
);

/// Retries a non-blocking socket call until it does not report `WouldBlock`,
/// waiting for readiness with `ready` in between.
fn poll_io<T>(
    cx: &mut Context<'_>,
    mut op: impl FnMut() -> io::Result<T>,
    mut ready: impl FnMut(&mut Context<'_>) -> Poll<io::Result<()>>,
) -> Poll<io::Result<T>> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => match ready(cx) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            },
            other => return Poll::Ready(other),
        }
    }
}

impl UdpSocket for SmolSocket {
    fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        poll_io(
            cx,
            || self.0.get_ref().recv_from(buf),
            |cx| self.0.poll_readable(cx),
        )
    }

    fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        target: SocketAddr,
    ) -> Poll<io::Result<usize>> {
        poll_io(
            cx,
            || self.0.get_ref().send_to(buf, target),
            |cx| self.0.poll_writable(cx),
        )
    }

    fn send_to<'a>(
        &'a self,
        buf: &'a [u8],
        target: SocketAddr,
    ) -> impl std::future::Future<Output = io::Result<usize>> + Send + 'a {
        // async-io's async send waits in a list of waiters, unlike
        // `poll_writable`'s single waker slot.
        self.0.send_to(buf, target)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().local_addr()
    }

    fn set_recv_buffer(&self, bytes: usize) -> io::Result<usize> {
        natrix_driver_core::runtime::set_recv_buffer(self.0.get_ref(), bytes)
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn recv_batch_slots(&self) -> usize {
        if self.1.is_some() {
            BatchReceiver::SLOTS
        } else {
            1
        }
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn poll_recv_batch(
        &self,
        cx: &mut Context<'_>,
        batch: &mut natrix_driver_core::runtime::RecvBatch,
    ) -> Poll<io::Result<usize>> {
        let Some(state) = &self.1 else {
            return batch.poll_recv_one(cx, self);
        };
        poll_io(
            cx,
            || state.recv(self.0.get_ref(), batch),
            |cx| self.0.poll_readable(cx),
        )
    }
}

impl Runtime for Smol {
    type Socket = SmolSocket;
    type Task = smol::Task<()>;

    fn bind(&self, addr: SocketAddr) -> io::Result<SmolSocket> {
        let sock = Async::<std::net::UdpSocket>::bind(addr)?;
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let state = BatchReceiver::for_family_of(sock.get_ref().local_addr()?);
        Ok(SmolSocket(
            sock,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            state,
        ))
    }

    fn sleep_until(&self, deadline: StdInstant) -> BoxFuture {
        let timer = async_io::Timer::at(deadline);
        Box::pin(async move {
            timer.await;
        })
    }

    fn spawn(&self, task: BoxFuture) -> smol::Task<()> {
        smol::spawn(task)
    }
}
