//! Helpers the clients' tests share.

use std::net::SocketAddr;

use std::time::Duration;

use crate::{Client, Event, Instant, MappingRequest, Transmit};

/// `ms` milliseconds after the start of time.
pub(crate) fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

/// A request for `internal` made without [`MappingRequest::new`]'s check,
/// so that what refuses a bad address is the client's own (P2).
pub(crate) fn unchecked_request(internal: &str) -> MappingRequest {
    MappingRequest {
        internal: internal.parse().expect("literal"),
        lifetime: Duration::from_secs(60),
    }
}

/// The events `c` has queued, in order.
pub(crate) fn events(c: &mut impl Client) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

/// The datagrams `c` has queued, each checked to go to `gateway` (P1); a
/// UDP client never asks for HTTP.
pub(crate) fn sent(c: &mut impl Client, gateway: SocketAddr) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(t) = c.poll_transmit() {
        match t {
            Transmit::Udp { to, payload } => {
                assert_eq!(to, gateway, "P1");
                out.push(payload);
            }
            Transmit::Http { .. } => panic!("{} never speaks HTTP", c.protocol()),
        }
    }
    out
}
