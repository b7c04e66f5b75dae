//! What the PCP and NAT-PMP clients share, sans-IO: the lifecycle of one
//! mapping held through the gateway's UDP port 5351.
//!
//! [`Lifecycle`] holds the state (idle, an exchange outstanding, installed),
//! the queued transmits and events, the installed mapping and the last epoch
//! sample, and makes the transitions both protocols make alike: begin an
//! install, a renewal (at half the granted lifetime, P4) or a deletion;
//! retransmit ([`Retransmit`]: 250 ms, doubling, capped at 64 s) until the
//! exchange's deadline; give up ([`MapError::Timeout`]) when it passes;
//! re-install when the epoch rule ([`gateway_restarted`])
//! says the gateway lost its state. What differs, which requests an exchange
//! sends, is the [`Requests`] the client plugs in; reading the answers stays
//! in `pcp` and `natpmp`.
//!
//! Nothing here reads a clock or does I/O: time is passed in, datagrams are
//! queued as [`Transmit`]s, always to the gateway's port 5351 (P1).

use std::collections::VecDeque;
use std::fmt::Debug;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::{
    Event, Instant, MapError, Mapping, MappingRequest, PCP_PORT, Protocol, Transmit, check_internal,
};

/// The first retransmission interval.
pub const INITIAL_RTO: Duration = Duration::from_millis(250);
/// The longest retransmission interval.
pub const MAX_RTO: Duration = Duration::from_secs(64);

/// A request's retransmission schedule and deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Retransmit {
    next: Instant,
    rto: Duration,
    deadline: Instant,
}

impl Retransmit {
    /// The first request went out at `now`.
    pub(crate) fn new(now: Instant, deadline: Instant) -> Self {
        Retransmit {
            next: now.saturating_add(INITIAL_RTO),
            rto: INITIAL_RTO,
            deadline,
        }
    }

    /// When something is due.
    pub(crate) fn poll_timeout(&self) -> Instant {
        self.next.min(self.deadline)
    }

    /// Whether the deadline has passed.
    pub(crate) fn expired(&self, now: Instant) -> bool {
        now >= self.deadline
    }

    /// Whether to send again now; if so the interval doubles.
    pub(crate) fn fire(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.rto = (self.rto * 2).min(MAX_RTO);
        self.next = now.saturating_add(self.rto);
        true
    }
}

/// A server epoch and the local time it arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EpochSample {
    /// The server's epoch, seconds.
    pub(crate) server: u32,
    /// When it arrived.
    pub(crate) local: Instant,
}

/// The epoch rule (RFC 6886 §3.6, RFC 6887 §8.5): the server lost its state
/// when its epoch went back by more than `backwards_slack` seconds, or is
/// less than `previous + 7/8 × elapsed − 2 s`.
pub(crate) fn gateway_restarted(
    prev: Option<EpochSample>,
    server: u32,
    now: Instant,
    backwards_slack: u32,
) -> bool {
    let Some(prev) = prev else {
        return false;
    };
    if u64::from(server) + u64::from(backwards_slack) < u64::from(prev.server) {
        return true;
    }
    let elapsed_ms = now.saturating_duration_since(prev.local).as_millis();
    let expected_plus_2s = u128::from(prev.server) * 1000 + elapsed_ms * 7 / 8;
    u128::from(server) * 1000 + 2000 < expected_plus_2s
}

/// The gateway's address as the driver may report it (IPv4-mapped sources
/// from a dual-stack socket count as IPv4).
pub(crate) fn is_from_gateway(from: SocketAddr, gateway: IpAddr) -> bool {
    from.port() == PCP_PORT && from.ip().to_canonical() == gateway
}

/// P2 for a client whose requests carry the internal address: `internal`
/// must be a local unicast address and port also once an IPv4-mapped address
/// is read as IPv4. Returns that canonical address.
///
/// # Errors
/// [`MapError::BadInternalAddress`] naming `internal` as given.
pub(crate) fn canonical_internal_ip(internal: SocketAddr) -> Result<IpAddr, MapError> {
    check_internal(internal)?;
    let ip = internal.ip().to_canonical();
    check_internal(SocketAddr::new(ip, internal.port()))
        .map_err(|_| MapError::BadInternalAddress(internal))?;
    Ok(ip)
}

/// The lifetime to ask for, in whole seconds: at least 1, at most what the
/// 32-bit field holds.
pub(crate) fn requested_lifetime(request: &MappingRequest) -> u32 {
    u32::try_from(request.lifetime.as_secs())
        .unwrap_or(u32::MAX)
        .max(1)
}

/// A success answer granting lifetime 0 or port 0 grants nothing.
///
/// # Errors
/// [`MapError::Malformed`] saying so.
pub(crate) fn check_grant(protocol: Protocol, lifetime: u32, port: u16) -> Result<(), MapError> {
    if lifetime == 0 || port == 0 {
        return Err(MapError::Malformed {
            protocol,
            reason: format!("success with lifetime {lifetime} and external port {port}"),
        });
    }
    Ok(())
}

/// What an outstanding exchange is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// The first install, or a re-install after a gateway restart.
    Install,
    /// Renewal of the installed mapping.
    Renew,
    /// Deletion (lifetime 0).
    Delete,
}

/// What PCP and NAT-PMP do differently in the lifecycle: the requests an
/// exchange sends.
pub(crate) trait Requests: Debug {
    /// The protocol's requests for one exchange, and which of them are
    /// still unanswered.
    type Pending: Copy + Debug + Eq;

    /// Who this is.
    const PROTOCOL: Protocol;

    /// How many seconds the server's epoch may go back before the gateway
    /// counts as restarted.
    const EPOCH_SLACK: u32;

    /// The requests of a new exchange for `purpose`.
    fn pending(&self, purpose: Purpose) -> Self::Pending;

    /// Calls `send` with each request of `pending` still unanswered, in the
    /// order they go out.
    fn outstanding(pending: &Self::Pending, purpose: Purpose, send: impl FnMut(&[u8]));
}

/// An outstanding exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Exchange<P> {
    /// What it is for.
    pub(crate) purpose: Purpose,
    /// Its schedule and deadline.
    pub(crate) retransmit: Retransmit,
    /// The protocol's requests, and what has been answered.
    pub(crate) pending: P,
}

/// Where the mapping stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State<P> {
    /// Not started, failed, or deleted.
    Idle,
    /// An exchange is outstanding.
    Requesting(Exchange<P>),
    /// Installed; renew at `renew_at`.
    Installed {
        /// Half the granted lifetime after the grant (P4).
        renew_at: Instant,
    },
}

/// One mapping's lifecycle against the gateway's UDP port 5351, whatever the
/// protocol: the state, what to send, what to report.
#[derive(Debug)]
pub(crate) struct Lifecycle<R: Requests> {
    /// The protocol's part: builds the requests.
    pub(crate) requests: R,
    gateway: IpAddr,
    internal: SocketAddr,
    timeout: Duration,
    state: State<R::Pending>,
    mapping: Option<Mapping>,
    epoch: Option<EpochSample>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

impl<R: Requests> Lifecycle<R> {
    /// An idle lifecycle mapping `internal` through `gateway`; `timeout`
    /// bounds an install or a deletion without an answer.
    pub(crate) fn new(
        requests: R,
        gateway: IpAddr,
        internal: SocketAddr,
        timeout: Duration,
    ) -> Self {
        Lifecycle {
            requests,
            gateway,
            internal,
            timeout,
            state: State::Idle,
            mapping: None,
            epoch: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The gateway.
    pub(crate) fn gateway(&self) -> IpAddr {
        self.gateway
    }

    /// Where the mapping stands.
    pub(crate) fn state(&self) -> State<R::Pending> {
        self.state
    }

    /// Whether a datagram from `from` is for this client to read: it comes
    /// from the gateway's port 5351 (P1) and the client is not idle.
    pub(crate) fn accepts(&self, from: SocketAddr) -> bool {
        is_from_gateway(from, self.gateway) && self.state != State::Idle
    }

    /// Starts (or restarts) installing.
    pub(crate) fn start(&mut self, now: Instant) {
        self.mapping = None;
        self.begin(now, Purpose::Install);
    }

    /// Sends the requests of a new exchange for `purpose`. An install or a
    /// deletion has `timeout` to be answered; a renewal keeps trying until
    /// the mapping expires.
    pub(crate) fn begin(&mut self, now: Instant, purpose: Purpose) {
        let timeout_at = now.saturating_add(self.timeout);
        let deadline = match purpose {
            Purpose::Renew => self
                .mapping
                .map_or(timeout_at, |m| m.expires_at().max(timeout_at)),
            Purpose::Install | Purpose::Delete => timeout_at,
        };
        let exchange = Exchange {
            purpose,
            retransmit: Retransmit::new(now, deadline),
            pending: self.requests.pending(purpose),
        };
        self.send_outstanding(&exchange);
        self.state = State::Requesting(exchange);
    }

    /// Records the progress of the outstanding exchange (an answer that
    /// completes only part of it).
    pub(crate) fn keep_waiting(&mut self, exchange: Exchange<R::Pending>) {
        self.state = State::Requesting(exchange);
    }

    /// Queues what the exchange still waits for.
    fn send_outstanding(&mut self, exchange: &Exchange<R::Pending>) {
        let to = SocketAddr::new(self.gateway, PCP_PORT);
        R::outstanding(&exchange.pending, exchange.purpose, |payload| {
            self.transmits.push_back(Transmit::Udp {
                to,
                payload: payload.to_vec(),
            });
        });
    }

    /// The mapping was granted `lifetime` seconds on `external`, now:
    /// installed until half of that has passed. Returns it.
    pub(crate) fn install(&mut self, now: Instant, external: SocketAddr, lifetime: u32) -> Mapping {
        let mapping = Mapping {
            protocol: R::PROTOCOL,
            internal: self.internal,
            external,
            lifetime: Duration::from_secs(u64::from(lifetime)),
            granted_at: now,
        };
        self.mapping = Some(mapping);
        self.state = State::Installed {
            renew_at: mapping.renew_at(),
        };
        self.events.push_back(Event::Installed(mapping));
        mapping
    }

    /// Gives up: nothing held, `Failed(error)`.
    pub(crate) fn fail(&mut self, error: MapError) {
        self.mapping = None;
        self.state = State::Idle;
        self.events.push_back(Event::Failed(error));
    }

    /// The gateway refused; `reason` is its result code in words.
    pub(crate) fn refused(&mut self, reason: impl std::fmt::Display) {
        self.fail(MapError::Refused {
            protocol: R::PROTOCOL,
            reason: reason.to_string(),
        });
    }

    /// The deletion is over: nothing held, `Deleted`.
    pub(crate) fn deleted(&mut self) {
        self.mapping = None;
        self.state = State::Idle;
        self.events.push_back(Event::Deleted(R::PROTOCOL));
    }

    /// The answer to the deletion came: `Deleted`, or `Failed` with the
    /// gateway's `refusal` (P4: only a gateway that said so deleted the
    /// mapping; a refused one stays until its lifetime runs out). Either
    /// way nothing is held any more. Records the epoch.
    pub(crate) fn deletion_answered(
        &mut self,
        now: Instant,
        epoch: u32,
        refusal: Option<impl std::fmt::Display>,
    ) {
        self.observe_epoch(epoch, now);
        match refusal {
            None => self.deleted(),
            Some(result) => {
                tracing::debug!(%result, protocol = %R::PROTOCOL, "deletion refused; the mapping stays until its lifetime runs out");
                self.refused(result);
            }
        }
    }

    /// The gateway lost its state (P4): `GatewayRestarted`, and re-install
    /// at once.
    pub(crate) fn restart_detected(&mut self, now: Instant) {
        tracing::debug!(gateway = %self.gateway, protocol = %R::PROTOCOL, "gateway epoch went back: re-installing");
        self.mapping = None;
        self.events.push_back(Event::GatewayRestarted(R::PROTOCOL));
        self.begin(now, Purpose::Install);
    }

    /// Checks the epoch rule against the previous sample and records this
    /// one; whether the gateway restarted.
    pub(crate) fn observe_epoch(&mut self, server: u32, now: Instant) -> bool {
        let lost = gateway_restarted(self.epoch, server, now, R::EPOCH_SLACK);
        self.epoch = Some(EpochSample { server, local: now });
        lost
    }

    /// Time passed: renew when due, retransmit, or give up at the deadline
    /// (`Failed` with [`MapError::Timeout`], a deletion too: nothing says the
    /// gateway dropped the mapping before its lifetime runs out).
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Idle => {}
            State::Installed { renew_at } => {
                if now >= renew_at {
                    self.begin(now, Purpose::Renew);
                }
            }
            State::Requesting(mut exchange) => {
                if exchange.retransmit.expired(now) {
                    self.fail(MapError::Timeout(R::PROTOCOL));
                } else if exchange.retransmit.fire(now) {
                    self.send_outstanding(&exchange);
                    self.state = State::Requesting(exchange);
                }
            }
        }
    }

    /// Deletes the mapping: `Deleted` at once when idle, nothing new while
    /// a deletion is outstanding, otherwise a deletion exchange (also while
    /// installing: the gateway may already hold the mapping).
    pub(crate) fn delete(&mut self, now: Instant) {
        match self.state {
            State::Idle => self.deleted(),
            State::Requesting(Exchange {
                purpose: Purpose::Delete,
                ..
            }) => {}
            State::Installed { .. } | State::Requesting(_) => {
                self.mapping = None;
                self.begin(now, Purpose::Delete);
            }
        }
    }

    /// The next datagram to send.
    pub(crate) fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// When [`Lifecycle::handle_timeout`] is due.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Idle => None,
            State::Requesting(exchange) => Some(exchange.retransmit.poll_timeout()),
            State::Installed { renew_at } => Some(renew_at),
        }
    }

    /// The next event.
    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The installed mapping, if any.
    pub(crate) fn mapping(&self) -> Option<Mapping> {
        self.mapping
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn epoch_rule() {
        let prev = Some(EpochSample {
            server: 1000,
            local: at(0),
        });
        assert!(!gateway_restarted(None, 0, at(0), 1));
        // Kept pace, or 7/8 of the pace minus 2 s: fine.
        assert!(!gateway_restarted(prev, 1100, at(100_000), 1));
        // (7/8 of 100 s is 87.5 s.)
        assert!(!gateway_restarted(prev, 1086, at(100_000), 1));
        // Slower than that: restarted.
        assert!(gateway_restarted(prev, 1085, at(100_000), 1));
        // Backwards: more than the slack.
        assert!(!gateway_restarted(prev, 999, at(0), 1));
        assert!(gateway_restarted(prev, 998, at(0), 1));
        assert!(gateway_restarted(prev, 999, at(0), 0));
    }
}
