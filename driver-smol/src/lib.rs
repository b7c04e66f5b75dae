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
use natrix_driver_core::{BoxFuture, Runtime, UdpSocket};

/// A natrix node on smol.
pub type Node = natrix_driver_core::Node<Smol>;

/// A natrix coordinator service on smol.
pub type Coordinator = natrix_driver_core::Coordinator<Smol>;

/// smol's global executor and async-io's reactor, as a natrix [`Runtime`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Smol;

/// An async-io UDP socket.
#[derive(Debug)]
pub struct SmolSocket(Async<std::net::UdpSocket>);

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

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().local_addr()
    }
}

impl Runtime for Smol {
    type Socket = SmolSocket;
    type Task = smol::Task<()>;

    fn bind(&self, addr: SocketAddr) -> io::Result<SmolSocket> {
        Ok(SmolSocket(Async::<std::net::UdpSocket>::bind(addr)?))
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
