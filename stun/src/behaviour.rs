//! NAT behaviour discovery (C8) against an RFC 5780 STUN server.
//!
//! [`BehaviourDiscovery`] runs the RFC 5780 §4 tests from one main socket
//! (plus, for the port-allocation test, any extra sockets the driver opened)
//! against a server that offers an alternate address (OTHER-ADDRESS), and
//! reports the NAT in RFC 4787 terms ([`Behaviour`]), with a typed reason
//! ([`NotMeasured`]) for every aspect it could not measure.
//!
//! ## The tests, in the order they run
//!
//! One request is outstanding at a time. Each is sent up to
//! `1 + retries` times, [`DiscoveryConfig::rto`] apart (same transaction id,
//! so an answer to any copy counts), and gives up `rto` after the last copy:
//! a test never takes longer than `(1 + retries) × rto`, and a whole run
//! without the lifetime test at most `(6 + extra sockets) × (1 + retries) ×
//! rto` (2.7 s per three timed-out tests with the defaults; a typical run is
//! a handful of round trips plus the two filtering timeouts of a
//! port-restricted NAT). The lifetime test adds its idle waits, at most
//! [`LifetimeConfig::max_idle`] in all, plus two tests per round.
//!
//! 1. **Test I** (main socket → primary): the mapped address X1 and
//!    OTHER-ADDRESS. X1 equal to the bound address (C3/C9 rules: with a
//!    wildcard bind, X1's IP must be one of [`DiscoveryConfig::interfaces`])
//!    means no NAT: the mapping is the identity (reported as
//!    endpoint-independent and port-preserving), and filtering then describes
//!    a firewall at most. No answer ends the run
//!    ([`NotMeasured::ServerUnreachable`]); no usable OTHER-ADDRESS means
//!    mapping and filtering are [`NotMeasured::NoRfc5780`].
//! 2. **Filtering** (RFC 5780 §4.4, main socket → primary): CHANGE-REQUEST
//!    "change IP and port" answered → endpoint-independent; else "change
//!    port" answered → address-dependent; else address-and-port-dependent.
//!    A timeout is the signal. These run *before* mapping tests II and III
//!    on purpose: those send to the alternate IP, and with an
//!    endpoint-independent mapping that would open the (shared) mapping's
//!    filter to the alternate IP, making an address-dependent filter look
//!    endpoint-independent.
//! 3. **Mapping** (RFC 5780 §4.3): test II (main → alternate IP, primary
//!    port) → X2; X2 = X1 → endpoint-independent; else test III (main →
//!    alternate IP and port) → X3; X3 = X2 → address-dependent, else
//!    address-and-port-dependent.
//! 4. **Port allocation**: one request from each extra socket to the primary,
//!    in order. X1's port equal to the main socket's port, and every extra
//!    socket's mapped port equal to its own → preserving. Otherwise the
//!    external ports of the new mappings in creation order (X1, then X2 and
//!    X3 when they are distinct mappings, then the extra sockets):
//!    consecutive differences all equal, non-zero and at most
//!    [`MAX_SEQUENTIAL_STEP`] → sequential; at least three ports without
//!    such a pattern → random; fewer → [`NotMeasured::TooFewMappings`].
//! 5. **Hairpin** (when [`DiscoveryConfig::hairpin`]): a Binding request
//!    from the main socket to X1; the very request (its transaction id)
//!    arriving back on the main socket → hairpinning, none by the deadline →
//!    none. The request may pass the NAT's own filter on the way back in: a
//!    NAT that hairpins but filters the hairpinned packet is reported as not
//!    hairpinning, which is what matters to a peer behind the same NAT.
//! 6. **Binding lifetime** (RFC 5780 §4.6, opt-in:
//!    [`DiscoveryConfig::lifetime`]; without it
//!    [`NotMeasured::TakesTooLong`]). It takes minutes of idle
//!    waiting, so it runs last and only on request. Each round: the main
//!    socket refreshes its binding with a Binding request to the primary
//!    (learning its mapped address X), then stays idle for a time T; then
//!    the first extra socket sends the primary a Binding request with
//!    RESPONSE-PORT = X's port. The server answers to the extra socket's
//!    public IP — the NAT's, the same as X's — at that port, from the
//!    primary, which the main socket's binding was refreshed toward: the
//!    answer arriving on the main socket means the binding was still alive
//!    after T idle; no answer after the usual retransmissions means it was
//!    gone. A first round with T = 0 checks that the method works at all
//!    (else [`NotMeasured::ResponsePortUnanswered`]; an answer on the extra
//!    socket itself is [`NotMeasured::ResponsePortIgnored`]); then T =
//!    [`LifetimeConfig::max`] (alive: reported as at least `max`,
//!    [`BehaviourReport::lifetime_at_least_max`]); then a binary search
//!    between the longest T found alive and the shortest found gone, until
//!    they are at most [`LifetimeConfig::precision`] apart. The report is the
//!    longest T found alive: a lower bound (the true lifetime is less than
//!    the shortest T found gone plus a round trip). Not measured without a
//!    NAT ([`NotMeasured::NoNat`]: the identity mapping has no lifetime),
//!    without an extra socket ([`NotMeasured::NoExtraSocket`]), or when test
//!    I failed. A refresh without an answer ends the search
//!    ([`NotMeasured::ServerUnreachable`]).
//!
//! ## Answers
//!
//! Answers are matched by transaction id (96 random bits from the seeded
//! generator: an off-path sender cannot guess them). An answer must also
//! arrive on the socket the request left from (the lifetime probe's, on the
//! main socket: RESPONSE-PORT sends it there) and come from the address the
//! request went to — for the CHANGE-REQUEST tests, from the address the
//! change names. An answer to a change request from another of the server's
//! addresses means the server ignored CHANGE-REQUEST
//! ([`NotMeasured::ChangeRequestIgnored`]); anything else inconsistent is
//! ignored (the test keeps waiting). A RESPONSE-ORIGIN that disagrees with
//! the source (a server behind a NAT, or an address-rewriting middlebox) is
//! noted in [`BehaviourReport::origin_mismatch`] but does not void the
//! answer. Late answers to finished tests, foreign and malformed datagrams
//! change nothing.
//!
//! ## Run loop
//!
//! [`start`](BehaviourDiscovery::start), then after every `handle_*` call
//! drain [`poll_transmit`](BehaviourDiscovery::poll_transmit) (each transmit
//! names the local socket it must leave from) and sleep until
//! [`poll_timeout`](BehaviourDiscovery::poll_timeout) or the next datagram.
//! Offer every datagram arriving on the main or an extra socket to
//! [`handle_datagram`](BehaviourDiscovery::handle_datagram) first (before a
//! STUN server on the same socket: the hairpin test's request must reach the
//! discovery); `true` means it was one of the discovery's own.
//!
//! ```
//! use natrix_stun::Instant;
//! use natrix_stun::behaviour::{BehaviourDiscovery, DiscoveryConfig, NotMeasured};
//!
//! let server = "198.51.100.1:3478".parse().unwrap();
//! let local = "10.0.0.2:4000".parse().unwrap();
//! let mut d = BehaviourDiscovery::new(DiscoveryConfig::new(server, local), 7);
//! d.start(Instant::ZERO);
//! let t = d.poll_transmit().unwrap();
//! assert_eq!((t.from, t.to), (local, server));
//! // Nobody answers: the run ends after three tries.
//! while let Some(at) = d.poll_timeout() {
//!     d.handle_timeout(at);
//!     while d.poll_transmit().is_some() {}
//! }
//! assert!(d.is_done());
//! assert_eq!(d.report().mapping_reason, Some(NotMeasured::ServerUnreachable));
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub use natrix_proto::behaviour::{
    Behaviour, FilteringBehaviour, MappingBehaviour, PortAllocation,
};
use natrix_proto::classify::{canonical_addr, canonical_ip, is_bogus_destination};
use natrix_proto::{Instant, NatClass, Rng};
use tracing::debug;

use crate::codec::{self, BindingRequest, ChangeRequest, MAX_MESSAGE, Message, TransactionId};

/// The largest step a sequential allocation may have.
pub const MAX_SEQUENTIAL_STEP: i32 = 16;

/// At most this many [`DiscoveryConfig::extra_sockets`] are used (the rest
/// are ignored), so a run stays bounded.
pub const MAX_EXTRA_SOCKETS: usize = 16;

/// How a discovery runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// The RFC 5780 server's primary address.
    pub server: SocketAddr,
    /// The main socket's bound address.
    pub local: SocketAddr,
    /// More bound local sockets the driver opened, for the port-allocation
    /// test (one request each); may be empty. At most
    /// [`MAX_EXTRA_SOCKETS`] are used.
    pub extra_sockets: Vec<SocketAddr>,
    /// The host's own interface addresses: with a wildcard `local`, "no
    /// NAT" needs X1's IP to be one of them (C3).
    pub interfaces: Vec<IpAddr>,
    /// The time between copies of a request, and the wait after the last.
    pub rto: Duration,
    /// Copies sent after the first (so `1 + retries` in all).
    pub retries: u32,
    /// Whether to run the hairpin test.
    pub hairpin: bool,
    /// The binding-lifetime test (RFC 5780 §4.6), which takes minutes:
    /// `None` (the default) skips it ([`NotMeasured::TakesTooLong`]).
    pub lifetime: Option<LifetimeConfig>,
}

/// How the binding-lifetime test searches (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LifetimeConfig {
    /// The longest idle time tried: a binding still alive after it is
    /// reported as lasting at least `max`.
    pub max: Duration,
    /// The search ends when the longest idle time found alive and the
    /// shortest found gone are at most this far apart (at least
    /// [`LifetimeConfig::MIN_PRECISION`] is used).
    pub precision: Duration,
}

impl LifetimeConfig {
    /// The default precision: 5 s.
    pub const DEFAULT_PRECISION: Duration = Duration::from_secs(5);
    /// The finest precision used (a finer one is raised to it): 1 ms.
    pub const MIN_PRECISION: Duration = Duration::from_millis(1);

    /// Up to `max`, to within [`DEFAULT_PRECISION`](Self::DEFAULT_PRECISION).
    #[must_use]
    pub fn new(max: Duration) -> Self {
        LifetimeConfig {
            max,
            precision: Self::DEFAULT_PRECISION,
        }
    }

    /// The precision in use: `precision`, at least
    /// [`MIN_PRECISION`](Self::MIN_PRECISION).
    #[must_use]
    pub fn effective_precision(&self) -> Duration {
        self.precision.max(Self::MIN_PRECISION)
    }

    /// How many rounds of the binary search follow the `max` round at most:
    /// the halvings of `max` until it is within the precision.
    #[must_use]
    pub fn search_rounds(&self) -> u32 {
        let precision = self.effective_precision();
        let mut gap = self.max;
        let mut rounds = 0u32;
        while gap > precision {
            gap = gap.saturating_sub(gap / 2);
            rounds = rounds.saturating_add(1);
        }
        rounds
    }

    /// The longest the idle waits can add up to: `max` for the `max` round
    /// and less than `max` for each search round, so at most `max × (1 +`
    /// [`search_rounds`](Self::search_rounds)`)`.
    #[must_use]
    pub fn max_idle(&self) -> Duration {
        self.max
            .saturating_mul(self.search_rounds().saturating_add(1))
    }
}

impl DiscoveryConfig {
    /// Defaults: no extra sockets, no interfaces, `rto` 300 ms, 2 retries (3
    /// tries, 900 ms per test at most), hairpin test on, lifetime test off.
    #[must_use]
    pub fn new(server: SocketAddr, local: SocketAddr) -> Self {
        DiscoveryConfig {
            server,
            local,
            extra_sockets: Vec::new(),
            interfaces: Vec::new(),
            rto: Duration::from_millis(300),
            retries: 2,
            hairpin: true,
            lifetime: None,
        }
    }
}

/// Why an aspect of the behaviour was not measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NotMeasured {
    /// The discovery has not got this far (yet).
    Pending,
    /// The server's primary address never answered test I.
    ServerUnreachable,
    /// The server answered test I without a usable OTHER-ADDRESS (none, or
    /// one that does not differ in both IP and port): it does not offer
    /// RFC 5780.
    NoRfc5780,
    /// The server's alternate address never answered (mapping tests II/III).
    AlternateUnreachable,
    /// The server answered a CHANGE-REQUEST from an address the change does
    /// not name: it ignores CHANGE-REQUEST.
    ChangeRequestIgnored,
    /// The server answered with a STUN error (e.g. 420: CHANGE-REQUEST not
    /// understood).
    ServerError {
        /// The error code.
        code: u16,
    },
    /// Some port-allocation requests got no answer: the sequence of new
    /// mappings has gaps.
    LostAnswers,
    /// Fewer than three new mappings to compare (add extra sockets).
    TooFewMappings,
    /// No NAT: nothing to hairpin.
    NoNat,
    /// The test is switched off in the configuration.
    Disabled,
    /// Measuring it takes minutes of idle waiting (the binding lifetime):
    /// not part of a discovery run unless [`DiscoveryConfig::lifetime`] asks.
    TakesTooLong,
    /// The lifetime test needs an extra socket to send from, and there is
    /// none.
    NoExtraSocket,
    /// The lifetime test's check round (no idle time) failed: the answer
    /// the server should send to the main socket's public port
    /// (RESPONSE-PORT) never arrived there. The server may not support
    /// RESPONSE-PORT, or the NAT gives the two sockets different public IPs.
    ResponsePortUnanswered,
    /// The server answered a RESPONSE-PORT request to the requesting socket
    /// itself: it ignores RESPONSE-PORT.
    ResponsePortIgnored,
}

impl fmt::Display for NotMeasured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotMeasured::Pending => f.write_str("not measured yet"),
            NotMeasured::ServerUnreachable => f.write_str("the STUN server did not answer"),
            NotMeasured::NoRfc5780 => {
                f.write_str("the server does not offer RFC 5780 (no alternate address)")
            }
            NotMeasured::AlternateUnreachable => {
                f.write_str("the server's alternate address did not answer")
            }
            NotMeasured::ChangeRequestIgnored => f.write_str("the server ignores CHANGE-REQUEST"),
            NotMeasured::ServerError { code } => write!(f, "the server answered error {code}"),
            NotMeasured::LostAnswers => f.write_str("some port-allocation probes got no answer"),
            NotMeasured::TooFewMappings => {
                f.write_str("too few new mappings to see a pattern (add extra sockets)")
            }
            NotMeasured::NoNat => f.write_str("there is no NAT"),
            NotMeasured::Disabled => f.write_str("switched off"),
            NotMeasured::TakesTooLong => f.write_str("it takes minutes to measure"),
            NotMeasured::NoExtraSocket => f.write_str("no extra socket to probe from"),
            NotMeasured::ResponsePortUnanswered => f.write_str(
                "the server's answer to the main socket's port (RESPONSE-PORT) never arrived",
            ),
            NotMeasured::ResponsePortIgnored => f.write_str("the server ignores RESPONSE-PORT"),
        }
    }
}

/// What a discovery found. Invariant once [`BehaviourDiscovery::is_done`]:
/// each `*_reason` is `Some` exactly when the matching aspect of
/// `behaviour` is `None`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BehaviourReport {
    /// The behaviour measured (`behaviour.nat == Some(false)`: no NAT).
    pub behaviour: Behaviour,
    /// X1: the main socket's public address, as the primary saw it.
    pub mapped: Option<SocketAddr>,
    /// The server's OTHER-ADDRESS.
    pub other_address: Option<SocketAddr>,
    /// Some answer's RESPONSE-ORIGIN disagreed with where it came from.
    pub origin_mismatch: bool,
    /// Why [`Behaviour::nat`] is unknown.
    pub nat_reason: Option<NotMeasured>,
    /// Why [`Behaviour::mapping`] is unknown.
    pub mapping_reason: Option<NotMeasured>,
    /// Why [`Behaviour::filtering`] is unknown.
    pub filtering_reason: Option<NotMeasured>,
    /// Why [`Behaviour::allocation`] is unknown.
    pub allocation_reason: Option<NotMeasured>,
    /// Why [`Behaviour::hairpin`] is unknown.
    pub hairpin_reason: Option<NotMeasured>,
    /// Why [`Behaviour::binding_lifetime`] is unknown.
    pub lifetime_reason: Option<NotMeasured>,
    /// The binding was still alive after [`LifetimeConfig::max`] idle:
    /// [`Behaviour::binding_lifetime`] is `max`, and the lifetime at least
    /// that (the search went no further).
    pub lifetime_at_least_max: bool,
}

impl BehaviourReport {
    fn pending() -> Self {
        let p = Some(NotMeasured::Pending);
        BehaviourReport {
            behaviour: Behaviour::UNKNOWN,
            mapped: None,
            other_address: None,
            origin_mismatch: false,
            nat_reason: p,
            mapping_reason: p,
            filtering_reason: p,
            allocation_reason: p,
            hairpin_reason: p,
            lifetime_reason: Some(NotMeasured::TakesTooLong),
            lifetime_at_least_max: false,
        }
    }

    /// The baseline class the behaviour implies ([`Behaviour::nat_class`]).
    #[must_use]
    pub fn nat_class(&self) -> NatClass {
        self.behaviour.nat_class()
    }
}

/// A datagram the discovery wants sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The local socket it must leave from (the main socket or an extra).
    pub from: SocketAddr,
    /// The destination.
    pub to: SocketAddr,
    /// The STUN Binding request.
    pub payload: Vec<u8>,
}

/// The tests, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Test {
    /// Main → primary.
    MappingI,
    /// Main → primary, change IP and port.
    FilteringIpPort,
    /// Main → primary, change port.
    FilteringPort,
    /// Main → (alternate IP, primary port).
    MappingII,
    /// Main → alternate.
    MappingIII,
    /// Extra socket `i` → primary.
    Allocation(usize),
    /// Main → X1.
    Hairpin,
    /// Lifetime round: main → primary, refreshing the binding.
    Refresh,
    /// Lifetime round: first extra socket → primary, RESPONSE-PORT = the
    /// main socket's mapped port; the answer is due on the main socket.
    LifetimeProbe,
}

/// How a test ended.
#[derive(Clone, Copy, Debug)]
enum Outcome {
    /// A success response: the mapped address.
    Answer(SocketAddr),
    /// A change request answered from an address it does not name.
    ChangeIgnored,
    /// An error response.
    Error(u16),
    /// The hairpinned request came back.
    Hairpinned,
    /// A RESPONSE-PORT request answered to the requesting socket itself.
    ResponsePortIgnored,
    /// No answer by the deadline.
    Timeout,
}

#[derive(Clone, Debug)]
struct Outstanding {
    test: Test,
    transaction: TransactionId,
    from: SocketAddr,
    to: SocketAddr,
    change: ChangeRequest,
    response_port: Option<u16>,
    /// Copies sent so far.
    sends: u32,
    /// The next copy, or the give-up time after the last.
    next_at: Instant,
}

/// Where the binding-lifetime search stands.
#[derive(Clone, Copy, Debug)]
struct LifetimeSearch {
    max: Duration,
    precision: Duration,
    /// Whether the check round (no idle time) got its answer.
    checked: bool,
    /// The longest idle time after which the binding was found alive.
    alive: Duration,
    /// The shortest idle time after which it was found gone (`None`: `max`
    /// not tried yet).
    gone: Option<Duration>,
    /// The idle time of the round in progress.
    idle: Duration,
    /// The main socket's mapped port, from the round's refresh.
    port: u16,
    /// The end of the idle wait, while waiting.
    wake_at: Option<Instant>,
}

/// The behaviour discovery machine. See the [module docs](self) for the
/// tests, the answer rules and the run loop.
#[derive(Clone, Debug)]
pub struct BehaviourDiscovery {
    config: DiscoveryConfig,
    rng: Rng,
    started: bool,
    done: bool,
    current: Option<Outstanding>,
    transmits: VecDeque<Transmit>,
    /// Every transaction id sent (one per test: bounded, the lifetime
    /// search by its rounds, fewer than 70 at any precision).
    issued: Vec<TransactionId>,
    report: BehaviourReport,
    x1: Option<SocketAddr>,
    x2: Option<SocketAddr>,
    x3: Option<SocketAddr>,
    other: Option<SocketAddr>,
    /// Whether test II was sent (then X1 alone is not followed by the extra
    /// sockets' mappings when the mapping stays unknown).
    alternate_tried: bool,
    /// Mapped address per extra socket (`None`: no answer).
    extras: Vec<Option<SocketAddr>>,
    /// The lifetime search, once it has begun.
    search: Option<LifetimeSearch>,
}

impl BehaviourDiscovery {
    /// A discovery that has not started; `seed` drives the transaction ids.
    #[must_use]
    pub fn new(mut config: DiscoveryConfig, seed: u64) -> Self {
        config.extra_sockets.truncate(MAX_EXTRA_SOCKETS);
        let mut report = BehaviourReport::pending();
        if config.lifetime.is_some() {
            report.lifetime_reason = Some(NotMeasured::Pending);
        }
        BehaviourDiscovery {
            config,
            rng: Rng::new(seed),
            started: false,
            done: false,
            current: None,
            transmits: VecDeque::new(),
            issued: Vec::new(),
            report,
            x1: None,
            x2: None,
            x3: None,
            other: None,
            alternate_tried: false,
            extras: Vec::new(),
            search: None,
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &DiscoveryConfig {
        &self.config
    }

    /// Starts the run (sends test I). A second call is a no-op.
    pub fn start(&mut self, now: Instant) {
        if self.started {
            return;
        }
        self.started = true;
        if is_bogus_destination(self.config.server) {
            debug!(server = %self.config.server, "behaviour: bogus server address");
            self.end_unmeasured(NotMeasured::ServerUnreachable);
            return;
        }
        self.begin(now, Test::MappingI);
    }

    /// Whether the run has finished: the report is final.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// What has been found so far (final once [`is_done`](Self::is_done)).
    #[must_use]
    pub fn report(&self) -> &BehaviourReport {
        &self.report
    }

    /// The next datagram to send, from the socket it names.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due next: the next
    /// copy of the outstanding request, the time it is given up, or the end
    /// of a lifetime round's idle wait. `None` before [`start`](Self::start)
    /// and once done.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.current {
            Some(c) => Some(c.next_at),
            None => self.search.and_then(|s| s.wake_at),
        }
    }

    /// Sends the next copy of the outstanding request, or gives it up, or
    /// ends a lifetime round's idle wait, when due. Early or repeated calls
    /// are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(cur) = self.current.as_mut() else {
            let wake = self.search.as_mut().and_then(|s| {
                let due = s.wake_at.filter(|w| now >= *w);
                if due.is_some() {
                    s.wake_at = None;
                }
                due
            });
            if wake.is_some() && !self.done {
                self.begin(now, Test::LifetimeProbe);
            }
            return;
        };
        if now < cur.next_at {
            return;
        }
        if cur.sends <= self.config.retries {
            cur.sends = cur.sends.saturating_add(1);
            cur.next_at = now.saturating_add(self.config.rto);
            let (from, to) = (cur.from, cur.to);
            let req = request(cur.transaction, cur.change, cur.response_port);
            self.push(from, to, &req);
            return;
        }
        let test = cur.test;
        self.current = None;
        debug!(?test, "behaviour: no answer");
        self.finish(now, test, Outcome::Timeout);
    }

    /// Feeds a datagram that arrived on local socket `local` from `from`.
    /// Returns `true` when it was one of the discovery's own (an answer to
    /// one of its requests, current or past, or its hairpinned request);
    /// `false` for anything else, which the caller may hand on. Never panics.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        datagram: &[u8],
    ) -> bool {
        let Ok(msg) = codec::decode(datagram) else {
            return false;
        };
        let transaction = match msg {
            Message::Request(r) => r.transaction,
            Message::Success(r) => r.transaction,
            Message::Error { transaction, .. } => transaction,
        };
        if !self.issued.contains(&transaction) {
            return false;
        }
        let Some(cur) = self
            .current
            .as_ref()
            .filter(|c| c.transaction == transaction)
            .cloned()
        else {
            debug!("behaviour: late answer to a finished test ignored");
            return true;
        };
        let test = cur.test;
        let on_sender = canonical_addr(local) == canonical_addr(cur.from);
        // A RESPONSE-PORT answer is due on the main socket, not the sender.
        let redirected = test == Test::LifetimeProbe;
        let on_main = canonical_addr(local) == canonical_addr(self.config.local);
        if !(on_sender || redirected && on_main) {
            debug!(?test, %local, "behaviour: answer on the wrong socket ignored");
            return true;
        }
        let outcome = match msg {
            Message::Request(_) if test == Test::Hairpin => Outcome::Hairpinned,
            Message::Request(_) => return true,
            Message::Success(r) => {
                let origin = r.response_origin.map(canonical_addr);
                if origin.is_some_and(|o| o != canonical_addr(from)) {
                    debug!(?origin, %from, "behaviour: RESPONSE-ORIGIN disagrees with the source");
                    self.report.origin_mismatch = true;
                }
                match self.check_source(test, &cur, from) {
                    Source::Expected => {}
                    Source::ChangeIgnored => {
                        self.current = None;
                        self.finish(now, test, Outcome::ChangeIgnored);
                        return true;
                    }
                    Source::Other => {
                        debug!(?test, %from, "behaviour: answer from an unexpected address ignored");
                        return true;
                    }
                }
                if test == Test::MappingI {
                    self.other = r.other_address;
                }
                if redirected && !on_main {
                    Outcome::ResponsePortIgnored
                } else {
                    Outcome::Answer(r.mapped)
                }
            }
            Message::Error { code, .. } => match self.check_source(test, &cur, from) {
                Source::Other => return true,
                _ => Outcome::Error(code),
            },
        };
        self.current = None;
        self.finish(now, test, outcome);
        true
    }

    // ------------------------------------------------------------ internals

    fn check_source(&self, test: Test, cur: &Outstanding, from: SocketAddr) -> Source {
        let from = canonical_addr(from);
        let expected = match (test, self.other) {
            (Test::FilteringIpPort, Some(o)) => o,
            (Test::FilteringPort, Some(o)) => SocketAddr::new(cur.to.ip(), o.port()),
            _ => cur.to,
        };
        if from == canonical_addr(expected) {
            return Source::Expected;
        }
        let server_addresses = match self.other {
            Some(o) => [
                self.config.server,
                o,
                SocketAddr::new(self.config.server.ip(), o.port()),
                SocketAddr::new(o.ip(), self.config.server.port()),
            ],
            None => [self.config.server; 4],
        };
        let change_test = matches!(test, Test::FilteringIpPort | Test::FilteringPort);
        if change_test && server_addresses.iter().any(|a| canonical_addr(*a) == from) {
            Source::ChangeIgnored
        } else {
            Source::Other
        }
    }

    fn begin(&mut self, now: Instant, test: Test) {
        let main = self.config.local;
        let server = self.config.server;
        let (from, to, change) = match test {
            Test::MappingI | Test::Refresh => (main, server, ChangeRequest::default()),
            Test::FilteringIpPort => (
                main,
                server,
                ChangeRequest {
                    change_ip: true,
                    change_port: true,
                },
            ),
            Test::FilteringPort => (
                main,
                server,
                ChangeRequest {
                    change_ip: false,
                    change_port: true,
                },
            ),
            Test::MappingII => {
                let Some(o) = self.other else {
                    return self.finish(now, test, Outcome::Timeout);
                };
                (
                    main,
                    SocketAddr::new(o.ip(), server.port()),
                    ChangeRequest::default(),
                )
            }
            Test::MappingIII => {
                let Some(o) = self.other else {
                    return self.finish(now, test, Outcome::Timeout);
                };
                (main, o, ChangeRequest::default())
            }
            Test::Allocation(i) => {
                let Some(s) = self.config.extra_sockets.get(i) else {
                    return self.finish(now, test, Outcome::Timeout);
                };
                (*s, server, ChangeRequest::default())
            }
            Test::Hairpin => {
                let Some(x1) = self.x1.filter(|x| !is_bogus_destination(*x)) else {
                    return self.finish(now, test, Outcome::Timeout);
                };
                (main, x1, ChangeRequest::default())
            }
            Test::LifetimeProbe => {
                let Some(y) = self.config.extra_sockets.first() else {
                    return self.finish(now, test, Outcome::Timeout);
                };
                (*y, server, ChangeRequest::default())
            }
        };
        let response_port = match test {
            Test::LifetimeProbe => self.search.map(|s| s.port),
            _ => None,
        };
        let transaction = self.transaction_id();
        self.issued.push(transaction);
        let req = request(transaction, change, response_port);
        self.push(from, to, &req);
        self.current = Some(Outstanding {
            test,
            transaction,
            from,
            to,
            change,
            response_port,
            sends: 1,
            next_at: now.saturating_add(self.config.rto),
        });
    }

    fn transaction_id(&mut self) -> TransactionId {
        let mut t = [0u8; 12];
        let (a, b) = t.split_at_mut(8);
        a.copy_from_slice(&self.rng.next_u64().to_be_bytes());
        b.copy_from_slice(&self.rng.next_u32().to_be_bytes());
        t
    }

    fn push(&mut self, from: SocketAddr, to: SocketAddr, req: &BindingRequest) {
        let mut buf = [0u8; MAX_MESSAGE];
        // A Binding request with at most CHANGE-REQUEST and FINGERPRINT
        // always fits; should encoding ever fail, the test times out.
        if let Ok(n) = codec::encode_request(req, &mut buf) {
            self.transmits.push_back(Transmit {
                from,
                to,
                payload: buf.get(..n).unwrap_or_default().to_vec(),
            });
        }
    }

    /// Whether `x` (the server's view of the main socket) is the bound
    /// address itself: no translation (C3, C9).
    fn is_own_address(&self, x: SocketAddr) -> bool {
        let local = canonical_addr(self.config.local);
        let x = canonical_addr(x);
        if local.ip().is_unspecified() {
            x.port() == local.port()
                && self
                    .config
                    .interfaces
                    .iter()
                    .any(|i| canonical_ip(*i) == x.ip())
        } else {
            x == local
        }
    }

    /// Ends the run with nothing measured, every reason `why`.
    fn end_unmeasured(&mut self, why: NotMeasured) {
        let r = Some(why);
        let rep = &mut self.report;
        rep.nat_reason = r;
        rep.mapping_reason = r;
        rep.filtering_reason = r;
        rep.allocation_reason = r;
        rep.hairpin_reason = r;
        if self.config.lifetime.is_some() {
            rep.lifetime_reason = r;
        }
        self.done = true;
    }

    /// Records how `test` ended and starts the next one.
    fn finish(&mut self, now: Instant, test: Test, outcome: Outcome) {
        debug!(?test, ?outcome, "behaviour: test finished");
        match test {
            Test::MappingI => self.after_mapping_i(now, outcome),
            Test::FilteringIpPort | Test::FilteringPort => {
                let filtering = match (test, outcome) {
                    (Test::FilteringIpPort, Outcome::Answer(_)) => {
                        Ok(FilteringBehaviour::EndpointIndependent)
                    }
                    (Test::FilteringIpPort, Outcome::Timeout) => {
                        return self.begin(now, Test::FilteringPort);
                    }
                    (_, Outcome::Answer(_)) => Ok(FilteringBehaviour::AddressDependent),
                    (_, Outcome::Timeout) => Ok(FilteringBehaviour::AddressAndPortDependent),
                    (_, Outcome::Error(code)) => Err(NotMeasured::ServerError { code }),
                    (
                        _,
                        Outcome::ChangeIgnored | Outcome::Hairpinned | Outcome::ResponsePortIgnored,
                    ) => Err(NotMeasured::ChangeRequestIgnored),
                };
                debug!(?filtering, "behaviour: filtering");
                match filtering {
                    Ok(f) => {
                        self.report.behaviour.filtering = Some(f);
                        self.report.filtering_reason = None;
                    }
                    Err(r) => self.report.filtering_reason = Some(r),
                }
                if self.report.behaviour.nat == Some(false) {
                    self.after_tests(now);
                } else {
                    self.begin(now, Test::MappingII);
                }
            }
            Test::MappingII => {
                self.alternate_tried = true;
                match outcome {
                    Outcome::Answer(x2) => {
                        self.x2 = Some(x2);
                        if self.x1.map(canonical_addr) == Some(canonical_addr(x2)) {
                            self.set_mapping(MappingBehaviour::EndpointIndependent);
                            self.begin_allocation(now);
                        } else {
                            self.begin(now, Test::MappingIII);
                        }
                    }
                    other => {
                        self.mapping_failed(other);
                        self.begin_allocation(now);
                    }
                }
            }
            Test::MappingIII => {
                match outcome {
                    Outcome::Answer(x3) => {
                        self.x3 = Some(x3);
                        if self.x2.map(canonical_addr) == Some(canonical_addr(x3)) {
                            self.set_mapping(MappingBehaviour::AddressDependent);
                        } else {
                            self.set_mapping(MappingBehaviour::AddressAndPortDependent);
                        }
                    }
                    other => self.mapping_failed(other),
                }
                self.begin_allocation(now);
            }
            Test::Allocation(i) => {
                self.extras.push(match outcome {
                    Outcome::Answer(x) => Some(x),
                    _ => None,
                });
                if i.saturating_add(1) < self.config.extra_sockets.len() {
                    self.begin(now, Test::Allocation(i.saturating_add(1)));
                } else {
                    self.decide_allocation();
                    self.begin_hairpin(now);
                }
            }
            Test::Hairpin => {
                let hairpin = matches!(outcome, Outcome::Hairpinned);
                debug!(hairpin, "behaviour: hairpin");
                self.report.behaviour.hairpin = Some(hairpin);
                self.report.hairpin_reason = None;
                self.after_tests(now);
            }
            Test::Refresh => self.after_refresh(now, outcome),
            Test::LifetimeProbe => self.after_probe(now, outcome),
        }
    }

    fn after_mapping_i(&mut self, now: Instant, outcome: Outcome) {
        let x1 = match outcome {
            Outcome::Answer(x1) => x1,
            Outcome::Error(code) => {
                self.end_unmeasured(NotMeasured::ServerError { code });
                return;
            }
            _ => {
                self.end_unmeasured(NotMeasured::ServerUnreachable);
                return;
            }
        };
        self.x1 = Some(x1);
        self.report.mapped = Some(x1);
        let server = canonical_addr(self.config.server);
        // RFC 5780 needs an alternate that differs in both IP and port, of
        // the same family, and a sane destination.
        self.other = self.other.map(canonical_addr).filter(|o| {
            o.ip() != server.ip()
                && o.port() != server.port()
                && o.is_ipv4() == server.is_ipv4()
                && !is_bogus_destination(*o)
        });
        self.report.other_address = self.other;
        let nat = !self.is_own_address(x1);
        self.report.behaviour.nat = Some(nat);
        self.report.nat_reason = None;
        debug!(%x1, other = ?self.other, nat, "behaviour: test I");
        if !nat {
            // The identity translation: endpoint-independent, ports kept.
            self.set_mapping(MappingBehaviour::EndpointIndependent);
            self.report.behaviour.allocation = Some(PortAllocation::Preserving);
            self.report.allocation_reason = None;
            self.report.hairpin_reason = Some(NotMeasured::NoNat);
        }
        if self.other.is_some() {
            self.begin(now, Test::FilteringIpPort);
            return;
        }
        self.report.filtering_reason = Some(NotMeasured::NoRfc5780);
        if nat {
            self.report.mapping_reason = Some(NotMeasured::NoRfc5780);
            self.begin_allocation(now);
        } else {
            self.after_tests(now);
        }
    }

    fn set_mapping(&mut self, m: MappingBehaviour) {
        debug!(mapping = %m, "behaviour: mapping");
        self.report.behaviour.mapping = Some(m);
        self.report.mapping_reason = None;
    }

    fn mapping_failed(&mut self, outcome: Outcome) {
        let reason = match outcome {
            Outcome::Error(code) => NotMeasured::ServerError { code },
            _ => NotMeasured::AlternateUnreachable,
        };
        debug!(%reason, "behaviour: mapping not measured");
        self.report.mapping_reason = Some(reason);
    }

    fn begin_allocation(&mut self, now: Instant) {
        if self.config.extra_sockets.is_empty() {
            self.decide_allocation();
            self.begin_hairpin(now);
        } else {
            self.begin(now, Test::Allocation(0));
        }
    }

    fn decide_allocation(&mut self) {
        let decision = self.allocation();
        debug!(?decision, "behaviour: port allocation");
        match decision {
            Ok(a) => {
                self.report.behaviour.allocation = Some(a);
                self.report.allocation_reason = None;
            }
            Err(r) => self.report.allocation_reason = Some(r),
        }
    }

    fn allocation(&self) -> Result<PortAllocation, NotMeasured> {
        let Some(x1) = self.x1 else {
            return Err(NotMeasured::ServerUnreachable);
        };
        let sockets = self.config.extra_sockets.iter();
        let preserved = x1.port() == self.config.local.port()
            && sockets
                .zip(&self.extras)
                .all(|(s, x)| x.is_none_or(|x| x.port() == s.port()));
        if preserved {
            return Ok(PortAllocation::Preserving);
        }
        if self.extras.iter().any(Option::is_none) {
            return Err(NotMeasured::LostAnswers);
        }
        // The new mappings' ports, in creation order. Test II/III's
        // mappings count only when the mapping behaviour says whether they
        // are new; if the alternate was tried but the mapping stayed unknown,
        // X1 is left out too (an unseen mapping may lie between it and the
        // extra sockets').
        let mut ports: Vec<u16> = Vec::with_capacity(3 + self.extras.len());
        match self.report.behaviour.mapping {
            Some(MappingBehaviour::EndpointIndependent) => ports.push(x1.port()),
            Some(MappingBehaviour::AddressDependent) => {
                ports.push(x1.port());
                ports.extend(self.x2.map(|x| x.port()));
            }
            Some(MappingBehaviour::AddressAndPortDependent) => {
                ports.push(x1.port());
                ports.extend(self.x2.map(|x| x.port()));
                ports.extend(self.x3.map(|x| x.port()));
            }
            None if !self.alternate_tried => ports.push(x1.port()),
            None => {}
        }
        ports.extend(self.extras.iter().flatten().map(|x| x.port()));
        if ports.len() < 3 {
            return Err(NotMeasured::TooFewMappings);
        }
        let steps: Vec<i32> = ports
            .windows(2)
            .map(|w| match w {
                [a, b] => i32::from(*b) - i32::from(*a),
                _ => 0,
            })
            .collect();
        match steps.first() {
            Some(&step)
                if step != 0
                    && step.abs() <= MAX_SEQUENTIAL_STEP
                    && steps.iter().all(|s| *s == step) =>
            {
                Ok(PortAllocation::Sequential { step })
            }
            _ => Ok(PortAllocation::Random),
        }
    }

    fn begin_hairpin(&mut self, now: Instant) {
        if self.config.hairpin {
            self.begin(now, Test::Hairpin);
        } else {
            self.report.hairpin_reason = Some(NotMeasured::Disabled);
            self.after_tests(now);
        }
    }

    /// After the quick tests: the lifetime test when asked for and
    /// possible, else the end.
    fn after_tests(&mut self, now: Instant) {
        let Some(cfg) = self.config.lifetime else {
            return self.finish_run();
        };
        let why = if self.report.behaviour.nat == Some(false) {
            Some(NotMeasured::NoNat)
        } else if self.x1.is_none() {
            Some(NotMeasured::ServerUnreachable)
        } else if self.config.extra_sockets.is_empty() {
            Some(NotMeasured::NoExtraSocket)
        } else {
            None
        };
        if let Some(why) = why {
            debug!(reason = %why, "behaviour: binding lifetime not measured");
            self.report.lifetime_reason = Some(why);
            return self.finish_run();
        }
        self.search = Some(LifetimeSearch {
            max: cfg.max,
            precision: cfg.effective_precision(),
            checked: false,
            alive: Duration::ZERO,
            gone: None,
            idle: Duration::ZERO,
            port: 0,
            wake_at: None,
        });
        self.begin(now, Test::Refresh);
    }

    /// A lifetime round's refresh ended: wait the round's idle time (none:
    /// probe at once).
    fn after_refresh(&mut self, now: Instant, outcome: Outcome) {
        let x = match outcome {
            Outcome::Answer(x) => x,
            Outcome::Error(code) => return self.end_lifetime(NotMeasured::ServerError { code }),
            _ => return self.end_lifetime(NotMeasured::ServerUnreachable),
        };
        let Some(s) = self.search.as_mut() else {
            return self.finish_run();
        };
        s.port = x.port();
        debug!(%x, idle = ?s.idle, "behaviour: binding refreshed, idle");
        if s.idle.is_zero() {
            self.begin(now, Test::LifetimeProbe);
        } else {
            s.wake_at = Some(now.saturating_add(s.idle));
        }
    }

    /// A lifetime round's probe ended: the next round, or the result.
    fn after_probe(&mut self, now: Instant, outcome: Outcome) {
        let alive = match outcome {
            Outcome::Answer(_) => true,
            Outcome::Timeout => false,
            Outcome::Error(code) => return self.end_lifetime(NotMeasured::ServerError { code }),
            Outcome::ResponsePortIgnored | Outcome::ChangeIgnored | Outcome::Hairpinned => {
                return self.end_lifetime(NotMeasured::ResponsePortIgnored);
            }
        };
        let Some(mut s) = self.search else {
            return self.finish_run();
        };
        debug!(idle = ?s.idle, alive, "behaviour: binding lifetime round");
        if !s.checked {
            if !alive {
                return self.end_lifetime(NotMeasured::ResponsePortUnanswered);
            }
            s.checked = true;
            s.idle = s.max;
        } else if alive {
            s.alive = s.idle;
            if s.idle >= s.max {
                self.search = Some(s);
                return self.lifetime_found(true);
            }
        } else {
            s.gone = Some(s.idle);
        }
        if let Some(gone) = s.gone {
            let gap = gone.saturating_sub(s.alive);
            if gap <= s.precision {
                self.search = Some(s);
                return self.lifetime_found(false);
            }
            s.idle = s.alive.saturating_add(gap / 2);
        }
        self.search = Some(s);
        self.begin(now, Test::Refresh);
    }

    /// Reports the longest idle time found alive and ends the run.
    fn lifetime_found(&mut self, at_least_max: bool) {
        let alive = self.search.map_or(Duration::ZERO, |s| s.alive);
        debug!(?alive, at_least_max, "behaviour: binding lifetime");
        self.report.behaviour.binding_lifetime = Some(alive);
        self.report.lifetime_reason = None;
        self.report.lifetime_at_least_max = at_least_max;
        self.finish_run();
    }

    /// Ends the run with the lifetime not measured, because of `why`.
    fn end_lifetime(&mut self, why: NotMeasured) {
        debug!(reason = %why, "behaviour: binding lifetime not measured");
        self.report.lifetime_reason = Some(why);
        self.finish_run();
    }

    fn finish_run(&mut self) {
        self.current = None;
        if let Some(s) = self.search.as_mut() {
            s.wake_at = None;
        }
        self.done = true;
        debug!(behaviour = %self.report.behaviour, "behaviour: done");
    }
}

enum Source {
    Expected,
    ChangeIgnored,
    Other,
}

fn request(
    transaction: TransactionId,
    change: ChangeRequest,
    response_port: Option<u16>,
) -> BindingRequest {
    BindingRequest {
        transaction,
        change,
        response_port,
        padding: 0,
        fingerprint: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::BindingResponse;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const SERVER: &str = "198.51.100.1:3478";
    const ALT: &str = "198.51.100.2:3479";
    const LOCAL: &str = "10.0.0.2:4000";
    const X1: &str = "203.0.113.9:4000";

    /// What the scripted network does with one transmit.
    enum Reply {
        /// Nothing arrives.
        Drop,
        /// A success response from `from` with `mapped`.
        Ok {
            from: SocketAddr,
            mapped: SocketAddr,
        },
        /// An error response from `from`.
        Err { from: SocketAddr, code: u16 },
        /// The request itself arrives back on the socket it left from.
        Hairpin,
        /// A success response from `from` with `mapped`, arriving on local
        /// socket `on` (a RESPONSE-PORT answer).
        OkOn {
            on: SocketAddr,
            from: SocketAddr,
            mapped: SocketAddr,
        },
    }

    fn decode_request(t: &Transmit) -> BindingRequest {
        match codec::decode(&t.payload) {
            Ok(Message::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    fn success(
        transaction: TransactionId,
        mapped: SocketAddr,
        other: Option<SocketAddr>,
        origin: Option<SocketAddr>,
    ) -> Vec<u8> {
        let mut buf = [0u8; MAX_MESSAGE];
        let resp = BindingResponse {
            transaction,
            mapped,
            other_address: other,
            response_origin: origin,
        };
        let n = codec::encode_success(&resp, true, &mut buf).unwrap();
        buf[..n].to_vec()
    }

    fn error(transaction: TransactionId, code: u16) -> Vec<u8> {
        let mut buf = [0u8; MAX_MESSAGE];
        let n = codec::encode_error(&transaction, code, &[], &mut buf).unwrap();
        buf[..n].to_vec()
    }

    /// Drives `d` to the end: every transmit is shown to `net` (with its
    /// decoded request) and answered at once; time jumps to the next
    /// timeout when nothing is in flight. Returns every transmit and when
    /// the run ended.
    fn drive(
        d: &mut BehaviourDiscovery,
        other: Option<SocketAddr>,
        mut net: impl FnMut(&Transmit, &BindingRequest) -> Reply,
    ) -> (Vec<Transmit>, Instant) {
        drive_at(d, other, |_, t, r| net(t, r))
    }

    /// [`drive`], with the time of each transmit shown to `net` too.
    fn drive_at(
        d: &mut BehaviourDiscovery,
        other: Option<SocketAddr>,
        mut net: impl FnMut(Instant, &Transmit, &BindingRequest) -> Reply,
    ) -> (Vec<Transmit>, Instant) {
        let mut now = Instant::ZERO;
        let mut log = Vec::new();
        d.start(now);
        for _ in 0..1000 {
            while let Some(t) = d.poll_transmit() {
                let req = decode_request(&t);
                let reply = net(now, &t, &req);
                log.push(t.clone());
                let (on, from, bytes) = match reply {
                    Reply::Drop => continue,
                    Reply::Ok { from, mapped } => (
                        t.from,
                        from,
                        success(req.transaction, mapped, other, Some(from)),
                    ),
                    Reply::OkOn { on, from, mapped } => (
                        on,
                        from,
                        success(req.transaction, mapped, other, Some(from)),
                    ),
                    Reply::Err { from, code } => (t.from, from, error(req.transaction, code)),
                    Reply::Hairpin => (t.from, t.to, t.payload.clone()),
                };
                assert!(d.handle_datagram(now, on, from, &bytes));
            }
            match d.poll_timeout() {
                Some(at) => {
                    assert!(at >= now, "timeouts never go back");
                    now = at;
                    d.handle_timeout(now);
                }
                None => {
                    assert!(d.is_done());
                    return (log, now);
                }
            }
        }
        panic!("discovery did not finish");
    }

    /// A new discovery with `cfg` and `seed`, [`drive`]n to the end.
    fn run(
        cfg: DiscoveryConfig,
        seed: u64,
        other: Option<SocketAddr>,
        net: impl FnMut(&Transmit, &BindingRequest) -> Reply,
    ) -> (BehaviourDiscovery, Vec<Transmit>, Instant) {
        let mut d = BehaviourDiscovery::new(cfg, seed);
        let (log, end) = drive(&mut d, other, net);
        (d, log, end)
    }

    fn config() -> DiscoveryConfig {
        DiscoveryConfig::new(a(SERVER), a(LOCAL))
    }

    /// A success from `from` reporting the mapped address X1.
    fn ok_x1(from: SocketAddr) -> Reply {
        Reply::Ok {
            from,
            mapped: a(X1),
        }
    }

    /// What a server answering a request that arrived on `to` sends it from:
    /// `to`'s part (IP or port), or with `change`, the other address's.
    fn answer_part<T: PartialEq>(change: bool, to: T, server: T, alt: T) -> T {
        match (change, to == server) {
            (false, _) => to,
            (true, true) => alt,
            (true, false) => server,
        }
    }

    /// A tiny NAT model for scripted answers: the mapped port per mapping
    /// key, allocated on first use, and a filter.
    struct Script {
        mapping: MappingBehaviour,
        filtering: FilteringBehaviour,
        /// Ports handed out in order to new mappings.
        ports: Vec<u16>,
        keys: Vec<(SocketAddr, Option<SocketAddr>)>,
        contacted: Vec<(SocketAddr, SocketAddr)>,
        hairpin: bool,
    }

    impl Script {
        fn new(m: MappingBehaviour, f: FilteringBehaviour, ports: &[u16]) -> Self {
            Script {
                mapping: m,
                filtering: f,
                ports: ports.to_vec(),
                keys: Vec::new(),
                contacted: Vec::new(),
                hairpin: false,
            }
        }

        fn map(&mut self, local: SocketAddr, dst: SocketAddr) -> SocketAddr {
            let key = match self.mapping {
                MappingBehaviour::EndpointIndependent => (local, None),
                MappingBehaviour::AddressDependent => (local, Some(SocketAddr::new(dst.ip(), 0))),
                MappingBehaviour::AddressAndPortDependent => (local, Some(dst)),
            };
            let i = match self.keys.iter().position(|k| *k == key) {
                Some(i) => i,
                None => {
                    self.keys.push(key);
                    self.keys.len() - 1
                }
            };
            self.contacted.push((local, dst));
            SocketAddr::new("203.0.113.9".parse().unwrap(), self.ports[i])
        }

        fn admits(&self, local: SocketAddr, src: SocketAddr) -> bool {
            self.contacted.iter().any(|(l, c)| {
                *l == local
                    && match self.filtering {
                        FilteringBehaviour::EndpointIndependent => true,
                        FilteringBehaviour::AddressDependent => c.ip() == src.ip(),
                        FilteringBehaviour::AddressAndPortDependent => *c == src,
                    }
            })
        }

        fn reply(&mut self, t: &Transmit, req: &BindingRequest) -> Reply {
            if t.to.ip() == "203.0.113.9".parse::<IpAddr>().unwrap() {
                return if self.hairpin {
                    Reply::Hairpin
                } else {
                    Reply::Drop
                };
            }
            let mapped = self.map(t.from, t.to);
            let (server, alt) = (a(SERVER), a(ALT));
            let from = SocketAddr::new(
                answer_part(req.change.change_ip, t.to.ip(), server.ip(), alt.ip()),
                answer_part(
                    req.change.change_port,
                    t.to.port(),
                    server.port(),
                    alt.port(),
                ),
            );
            if self.admits(t.from, from) {
                Reply::Ok { from, mapped }
            } else {
                Reply::Drop
            }
        }
    }

    fn run_script(
        mut s: Script,
        cfg: DiscoveryConfig,
    ) -> (BehaviourReport, Vec<Transmit>, Instant) {
        let (d, log, end) = run(cfg, 1, Some(a(ALT)), |t, r| s.reply(t, r));
        (d.report().clone(), log, end)
    }

    fn assert_consistent(r: &BehaviourReport) {
        let b = &r.behaviour;
        assert_eq!(b.nat.is_none(), r.nat_reason.is_some(), "{r:?}");
        assert_eq!(b.mapping.is_none(), r.mapping_reason.is_some(), "{r:?}");
        assert_eq!(b.filtering.is_none(), r.filtering_reason.is_some(), "{r:?}");
        assert_eq!(
            b.allocation.is_none(),
            r.allocation_reason.is_some(),
            "{r:?}"
        );
        assert_eq!(b.hairpin.is_none(), r.hairpin_reason.is_some(), "{r:?}");
        assert_eq!(
            b.binding_lifetime.is_none(),
            r.lifetime_reason.is_some(),
            "{r:?}"
        );
        assert!(!r.lifetime_at_least_max || b.binding_lifetime.is_some());
        assert!(
            ![
                r.nat_reason,
                r.mapping_reason,
                r.filtering_reason,
                r.allocation_reason,
                r.hairpin_reason,
                r.lifetime_reason,
            ]
            .contains(&Some(NotMeasured::Pending))
        );
    }

    use FilteringBehaviour as F;
    use MappingBehaviour as M;

    #[test]
    fn c8_full_cone_with_hairpin_in_rfc5780_order() {
        let mut s = Script::new(M::EndpointIndependent, F::EndpointIndependent, &[4000]);
        s.hairpin = true;
        let (r, log, end) = run_script(s, config());
        assert_consistent(&r);
        assert_eq!(r.behaviour.nat, Some(true));
        assert_eq!(r.behaviour.mapping, Some(M::EndpointIndependent));
        assert_eq!(r.behaviour.filtering, Some(F::EndpointIndependent));
        assert_eq!(r.behaviour.allocation, Some(PortAllocation::Preserving));
        assert_eq!(r.behaviour.hairpin, Some(true));
        assert_eq!(r.mapped, Some(a(X1)));
        assert_eq!(r.other_address, Some(a(ALT)));
        assert_eq!(r.nat_class(), NatClass::Cone);
        assert!(!r.origin_mismatch);
        // Test I, filtering (change IP+port), test II, hairpin: one each,
        // all answered at once, so no time passes.
        let plan: Vec<_> = log
            .iter()
            .map(|t| (t.from, t.to, decode_request(t).change))
            .collect();
        let ch = |ip, port| ChangeRequest {
            change_ip: ip,
            change_port: port,
        };
        assert_eq!(
            plan,
            [
                (a(LOCAL), a(SERVER), ch(false, false)),
                (a(LOCAL), a(SERVER), ch(true, true)),
                (a(LOCAL), a("198.51.100.2:3478"), ch(false, false)),
                (a(LOCAL), a(X1), ch(false, false)),
            ]
        );
        assert_eq!(end, Instant::ZERO);
    }

    #[test]
    fn c8_address_dependent_filtering_after_one_timeout() {
        let s = Script::new(M::EndpointIndependent, F::AddressDependent, &[4000]);
        let mut cfg = config();
        cfg.hairpin = false;
        let (r, log, end) = run_script(s, cfg);
        assert_consistent(&r);
        assert_eq!(r.behaviour.filtering, Some(F::AddressDependent));
        assert_eq!(r.behaviour.mapping, Some(M::EndpointIndependent));
        assert_eq!(r.behaviour.hairpin, None);
        assert_eq!(r.hairpin_reason, Some(NotMeasured::Disabled));
        // The change-IP-and-port request went out three times, 300 ms apart,
        // and was given up 300 ms after the last copy.
        let both = log
            .iter()
            .filter(|t| decode_request(t).change.change_ip)
            .count();
        assert_eq!(both, 3);
        assert_eq!(end, Instant::from_millis(900));
        // Retransmissions reuse the transaction id.
        let ids: Vec<_> = log.iter().map(|t| decode_request(t).transaction).collect();
        assert_eq!(ids[1], ids[2]);
        assert_eq!(ids[2], ids[3]);
        assert_ne!(ids[0], ids[1]);
    }

    #[test]
    fn c8_port_restricted_cone_and_hairpin_timeout() {
        let s = Script::new(M::EndpointIndependent, F::AddressAndPortDependent, &[4000]);
        let (r, _, end) = run_script(s, config());
        assert_consistent(&r);
        assert_eq!(r.behaviour.filtering, Some(F::AddressAndPortDependent));
        assert_eq!(r.behaviour.hairpin, Some(false));
        // Two filtering tests and the hairpin test time out.
        assert_eq!(end, Instant::from_millis(2700));
    }

    #[test]
    fn c8_address_dependent_mapping_sequential_ports() {
        let s = Script::new(
            M::AddressDependent,
            F::AddressAndPortDependent,
            &[40_000, 40_002, 40_004, 40_006, 40_008, 40_010],
        );
        let mut cfg = config();
        cfg.extra_sockets = vec![a("10.0.0.2:4001"), a("10.0.0.2:4002")];
        let (r, log, _) = run_script(s, cfg);
        assert_consistent(&r);
        assert_eq!(r.behaviour.mapping, Some(M::AddressDependent));
        assert_eq!(r.behaviour.nat_class(), NatClass::Symmetric);
        // X1 40000, X2 = X3 40002, extras 40004, 40006.
        assert_eq!(
            r.behaviour.allocation,
            Some(PortAllocation::Sequential { step: 2 })
        );
        let extra: Vec<_> = log
            .iter()
            .filter(|t| t.from != a(LOCAL))
            .map(|t| (t.from, t.to))
            .collect();
        assert_eq!(
            extra,
            [
                (a("10.0.0.2:4001"), a(SERVER)),
                (a("10.0.0.2:4002"), a(SERVER))
            ]
        );
    }

    #[test]
    fn c8_symmetric_mapping_random_and_sequential_ports() {
        let s = Script::new(
            M::AddressAndPortDependent,
            F::AddressAndPortDependent,
            &[51_234, 40_017, 61_002, 1_500, 9_999],
        );
        let mut cfg = config();
        cfg.extra_sockets = vec![a("10.0.0.2:4001"), a("10.0.0.2:4002")];
        cfg.hairpin = false;
        let (r, _, _) = run_script(s, cfg.clone());
        assert_consistent(&r);
        assert_eq!(r.behaviour.mapping, Some(M::AddressAndPortDependent));
        assert_eq!(r.behaviour.allocation, Some(PortAllocation::Random));

        // Without extra sockets, X1..X3 are three new mappings already.
        let s = Script::new(
            M::AddressAndPortDependent,
            F::EndpointIndependent,
            &[30_000, 29_999, 29_998],
        );
        cfg.extra_sockets.clear();
        let (r, _, _) = run_script(s, cfg.clone());
        assert_consistent(&r);
        assert_eq!(
            r.behaviour.allocation,
            Some(PortAllocation::Sequential { step: -1 })
        );
        assert_eq!(r.behaviour.filtering, Some(F::EndpointIndependent));

        // A step beyond MAX_SEQUENTIAL_STEP is no pattern.
        let s = Script::new(
            M::AddressAndPortDependent,
            F::EndpointIndependent,
            &[30_000, 30_100, 30_200],
        );
        let (r, _, _) = run_script(s, cfg);
        assert_eq!(r.behaviour.allocation, Some(PortAllocation::Random));
    }

    #[test]
    fn c8_too_few_mappings_and_lost_answers() {
        // EIM without extra sockets: one new mapping only.
        let s = Script::new(M::EndpointIndependent, F::EndpointIndependent, &[40_000]);
        let mut cfg = config();
        cfg.hairpin = false;
        let (r, _, _) = run_script(s, cfg.clone());
        assert_consistent(&r);
        assert_eq!(r.behaviour.allocation, None);
        assert_eq!(r.allocation_reason, Some(NotMeasured::TooFewMappings));

        // An extra socket that gets no answer leaves a gap.
        cfg.extra_sockets = vec![a("10.0.0.2:4001"), a("10.0.0.2:4002")];
        let mut s = Script::new(
            M::EndpointIndependent,
            F::EndpointIndependent,
            &[40_000, 40_001, 40_002],
        );
        let (d, ..) = run(cfg, 3, Some(a(ALT)), |t, r| {
            if t.from == a("10.0.0.2:4001") {
                Reply::Drop
            } else {
                s.reply(t, r)
            }
        });
        assert_consistent(d.report());
        assert_eq!(d.report().allocation_reason, Some(NotMeasured::LostAnswers));
    }

    #[test]
    fn c8_no_nat_describes_the_firewall_only() {
        let local = a("203.0.113.50:4000");
        let mut cfg = DiscoveryConfig::new(a(SERVER), local);
        cfg.extra_sockets = vec![a("203.0.113.50:4001")];
        let (d, log, _) = run(cfg, 9, Some(a(ALT)), |t, r| {
            // A port-restricted firewall: only the primary gets in.
            if r.change.change_ip || r.change.change_port {
                Reply::Drop
            } else {
                Reply::Ok {
                    from: t.to,
                    mapped: t.from,
                }
            }
        });
        let r = d.report();
        assert_consistent(r);
        assert_eq!(r.behaviour.nat, Some(false));
        assert_eq!(r.nat_class(), NatClass::Open);
        assert_eq!(r.behaviour.mapping, Some(M::EndpointIndependent));
        assert_eq!(r.behaviour.allocation, Some(PortAllocation::Preserving));
        assert_eq!(r.behaviour.filtering, Some(F::AddressAndPortDependent));
        assert_eq!(r.hairpin_reason, Some(NotMeasured::NoNat));
        // Test I and the two filtering tests only.
        assert_eq!(log.len(), 1 + 3 + 3);
        assert!(log.iter().all(|t| t.from == local && t.to == a(SERVER)));
    }

    #[test]
    fn c8_c3_wildcard_bind_needs_an_interface_address_for_no_nat() {
        for (ifaces, nat) in [
            (vec![], true),
            (vec!["203.0.113.9".parse().unwrap()], false),
        ] {
            let mut cfg = DiscoveryConfig::new(a(SERVER), a("0.0.0.0:4000"));
            cfg.interfaces = ifaces;
            cfg.hairpin = false;
            let (d, ..) = run(cfg, 9, Some(a(ALT)), |_, r| {
                if r.change.change_ip || r.change.change_port {
                    Reply::Drop
                } else {
                    Reply::Ok {
                        from: a(SERVER),
                        mapped: "[::ffff:203.0.113.9]:4000".parse().unwrap(),
                    }
                }
            });
            // IPv4-mapped reflex compares as its IPv4 form (C9) — and
            // without an interface match a kept port is only preservation.
            assert_eq!(d.report().behaviour.nat, Some(nat));
        }
    }

    #[test]
    fn c8_server_without_rfc5780_measures_only_allocation() {
        let mut cfg = config();
        cfg.extra_sockets = vec![a("10.0.0.2:4001"), a("10.0.0.2:4002"), a("10.0.0.2:4003")];
        cfg.hairpin = false;
        let mut next = 50_000u16;
        let (d, log, _) = run(cfg, 5, None, |t, r| {
            assert!(!r.change.change_ip && !r.change.change_port);
            assert_eq!(t.to, a(SERVER));
            next += 3;
            Reply::Ok {
                from: t.to,
                mapped: SocketAddr::new("203.0.113.9".parse().unwrap(), next),
            }
        });
        assert_eq!(log.len(), 4);
        let r = d.report();
        assert_consistent(r);
        assert_eq!(r.mapping_reason, Some(NotMeasured::NoRfc5780));
        assert_eq!(r.filtering_reason, Some(NotMeasured::NoRfc5780));
        assert_eq!(r.other_address, None);
        assert_eq!(
            r.behaviour.allocation,
            Some(PortAllocation::Sequential { step: 3 })
        );
        assert_eq!(r.nat_class(), NatClass::Unknown);
    }

    #[test]
    fn c8_unusable_other_address_is_no_rfc5780() {
        // OTHER-ADDRESS with the primary's own IP would make test II a
        // repeat of test I.
        let (d, ..) = run(config(), 5, Some(a("198.51.100.1:3479")), |t, _| {
            ok_x1(t.to)
        });
        assert_eq!(d.report().mapping_reason, Some(NotMeasured::NoRfc5780));
        assert_eq!(d.report().other_address, None);
    }

    #[test]
    fn c8_unreachable_server_exact_schedule() {
        let mut d = BehaviourDiscovery::new(config(), 5);
        assert_eq!(d.poll_timeout(), None);
        let (log, end) = drive(&mut d, None, |_, _| Reply::Drop);
        assert_eq!(log.len(), 3);
        assert_eq!(end, Instant::from_millis(900));
        let r = d.report();
        assert_consistent(r);
        assert_eq!(r.behaviour, Behaviour::UNKNOWN);
        assert_eq!(r.mapping_reason, Some(NotMeasured::ServerUnreachable));
        assert_eq!(r.nat_class(), NatClass::Unknown);
        assert_eq!(d.poll_timeout(), None);
        // Done is final: more input changes nothing.
        d.handle_timeout(Instant::MAX);
        d.start(Instant::MAX);
        assert!(d.poll_transmit().is_none());
    }

    #[test]
    fn c8_timeouts_early_twice_or_late_are_harmless() {
        let mut d = BehaviourDiscovery::new(config(), 5);
        d.start(Instant::ZERO);
        d.start(Instant::ZERO);
        assert_eq!(d.poll_transmit().map(|t| t.to), Some(a(SERVER)));
        assert!(d.poll_transmit().is_none());
        d.handle_timeout(Instant::from_millis(299));
        d.handle_timeout(Instant::ZERO);
        assert!(d.poll_transmit().is_none());
        assert_eq!(d.poll_timeout(), Some(Instant::from_millis(300)));
        // Late: the copy goes out now, the next one rto after now.
        d.handle_timeout(Instant::from_millis(1000));
        d.handle_timeout(Instant::from_millis(1000));
        assert!(d.poll_transmit().is_some());
        assert!(d.poll_transmit().is_none());
        assert_eq!(d.poll_timeout(), Some(Instant::from_millis(1300)));
    }

    #[test]
    fn c8_server_errors_are_typed() {
        // 420 to CHANGE-REQUEST: filtering not measured, the rest goes on.
        let (d, ..) = run(config(), 5, Some(a(ALT)), |t, r| {
            if r.change.change_port {
                Reply::Err {
                    from: a(SERVER),
                    code: 420,
                }
            } else if t.to.ip() == a(X1).ip() {
                Reply::Drop
            } else {
                ok_x1(t.to)
            }
        });
        let r = d.report();
        assert_consistent(r);
        assert_eq!(
            r.filtering_reason,
            Some(NotMeasured::ServerError { code: 420 })
        );
        assert_eq!(r.behaviour.mapping, Some(M::EndpointIndependent));
        // An error to test I ends the run.
        let (d, ..) = run(config(), 5, Some(a(ALT)), |t, _| Reply::Err {
            from: t.to,
            code: 500,
        });
        assert_consistent(d.report());
        assert_eq!(
            d.report().nat_reason,
            Some(NotMeasured::ServerError { code: 500 })
        );
    }

    #[test]
    fn c8_alternate_unreachable_leaves_mapping_unmeasured() {
        let mut cfg = config();
        cfg.hairpin = false;
        let (d, ..) = run(cfg, 5, Some(a(ALT)), |t, r| {
            if t.to.ip() == a(ALT).ip() || r.change.change_ip {
                Reply::Drop
            } else if r.change.change_port {
                ok_x1(a("198.51.100.1:3479"))
            } else {
                ok_x1(t.to)
            }
        });
        let r = d.report();
        assert_consistent(r);
        assert_eq!(r.mapping_reason, Some(NotMeasured::AlternateUnreachable));
        assert_eq!(r.behaviour.filtering, Some(F::AddressDependent));
        assert_eq!(r.behaviour.allocation, Some(PortAllocation::Preserving));
    }

    #[test]
    fn c8_change_request_answered_from_the_primary_is_ignored_change() {
        let (d, ..) = run(config(), 5, Some(a(ALT)), |t, _| {
            if t.to.ip() == a(X1).ip() {
                Reply::Drop
            } else {
                // The server never changes anything.
                ok_x1(t.to)
            }
        });
        let r = d.report();
        assert_consistent(r);
        assert_eq!(r.filtering_reason, Some(NotMeasured::ChangeRequestIgnored));
        assert_eq!(r.behaviour.filtering, None);
    }

    /// Starts a discovery and returns it with test I's transmit.
    fn started(seed: u64) -> (BehaviourDiscovery, Transmit, TransactionId) {
        let mut d = BehaviourDiscovery::new(config(), seed);
        d.start(Instant::ZERO);
        let t = d.poll_transmit().unwrap();
        let id = decode_request(&t).transaction;
        (d, t, id)
    }

    #[test]
    fn c8_garbage_and_foreign_datagrams_are_ignored() {
        let (mut d, _, id) = started(11);
        let now = Instant::from_millis(5);
        let server = a(SERVER);
        let local = a(LOCAL);
        let mut wrong = id;
        wrong[0] ^= 1;
        let inputs: Vec<Vec<u8>> = vec![
            vec![],
            vec![0; 3],
            vec![0xff; 600],
            b"hello, world, this is not stun".to_vec(),
            success(wrong, a(X1), Some(a(ALT)), None),
            error(wrong, 400),
            // A request with a foreign transaction id (someone probing us).
            {
                let mut buf = [0u8; MAX_MESSAGE];
                let n = codec::encode_request(
                    &request(wrong, ChangeRequest::default(), None),
                    &mut buf,
                )
                .unwrap();
                buf[..n].to_vec()
            },
        ];
        for bytes in &inputs {
            assert!(!d.handle_datagram(now, local, server, bytes));
        }
        // Truncations of a real answer never panic and never count.
        let good = success(id, a(X1), Some(a(ALT)), None);
        for n in 0..good.len() {
            assert!(!d.handle_datagram(now, local, server, &good[..n]));
        }
        assert!(d.poll_transmit().is_none());
        assert_eq!(d.poll_timeout(), Some(Instant::from_millis(300)));
        assert_eq!(d.report(), &BehaviourReport::pending());
        // The real answer still works afterwards.
        assert!(d.handle_datagram(now, local, server, &good));
        assert_eq!(d.report().mapped, Some(a(X1)));
    }

    #[test]
    fn c8_answers_from_the_wrong_source_or_socket_do_not_count() {
        let (mut d, _, id) = started(12);
        let now = Instant::from_millis(5);
        let good = success(id, a(X1), Some(a(ALT)), None);
        // Our transaction, but from elsewhere or on another socket: consumed,
        // not acted on.
        assert!(d.handle_datagram(now, a(LOCAL), a("192.0.2.66:3478"), &good));
        assert!(d.handle_datagram(now, a("10.0.0.2:4001"), a(SERVER), &good));
        assert_eq!(d.report().mapped, None);
        assert!(d.poll_transmit().is_none());
        // From the right place, with an IPv4-mapped source (C9): accepted;
        // a RESPONSE-ORIGIN that disagrees is noted.
        let origin = success(id, a(X1), Some(a(ALT)), Some(a("10.9.9.9:3478")));
        assert!(d.handle_datagram(
            now,
            a(LOCAL),
            "[::ffff:198.51.100.1]:3478".parse().unwrap(),
            &origin
        ));
        assert_eq!(d.report().mapped, Some(a(X1)));
        assert!(d.report().origin_mismatch);
        // Test I is over: a duplicate answer is ours but changes nothing.
        let next = d.poll_transmit().unwrap();
        assert!(d.handle_datagram(now, a(LOCAL), a(SERVER), &good));
        assert!(d.poll_transmit().is_none());
        assert!(decode_request(&next).change.change_ip);
        // The change-IP-and-port answer must come from the alternate.
        let nid = decode_request(&next).transaction;
        let stray = success(nid, a(X1), None, None);
        assert!(d.handle_datagram(now, a(LOCAL), a("192.0.2.66:3479"), &stray));
        assert_eq!(d.report().behaviour.filtering, None);
        assert!(d.handle_datagram(now, a(LOCAL), a(ALT), &stray));
        assert_eq!(d.report().behaviour.filtering, Some(F::EndpointIndependent));
    }

    #[test]
    fn c8_same_seed_same_transmits() {
        let run = |seed| {
            let mut s = Script::new(
                M::AddressAndPortDependent,
                F::AddressDependent,
                &[40_000, 40_001, 40_002, 40_003, 40_004, 40_005],
            );
            let mut cfg = config();
            cfg.extra_sockets = vec![a("10.0.0.2:4001"), a("10.0.0.2:4002")];
            let (d, log, end) = run(cfg, seed, Some(a(ALT)), |t, r| s.reply(t, r));
            (log, end, d.report().clone())
        };
        let (l1, e1, r1) = run(42);
        let (l2, e2, r2) = run(42);
        assert_eq!(l1, l2);
        assert_eq!((e1, r1.clone()), (e2, r2));
        let (l3, _, r3) = run(43);
        assert_ne!(l1, l3);
        assert_eq!(r1, r3);
        assert_eq!(
            r1.behaviour.allocation,
            Some(PortAllocation::Sequential { step: 1 })
        );
    }

    #[test]
    fn c8_extra_sockets_are_capped() {
        let mut cfg = config();
        cfg.extra_sockets = (0..100)
            .map(|i| a(&format!("10.0.0.2:{}", 5000 + i)))
            .collect();
        let d = BehaviourDiscovery::new(cfg, 1);
        assert_eq!(d.config().extra_sockets.len(), MAX_EXTRA_SOCKETS);
    }

    // ------------------------------------------------ binding lifetime

    const EXTRA: &str = "10.0.0.2:4001";
    /// The extra socket's public address.
    const Y1: &str = "203.0.113.9:4001";

    /// A port-restricted cone for the lifetime tests, with a server that
    /// honours RESPONSE-PORT: the main socket's binding lives `lifetime`
    /// after its last outbound datagram. Records every probe (time, port).
    struct Expiring {
        script: Script,
        lifetime: Duration,
        last_main: Option<Instant>,
        probes: Vec<(Instant, u16)>,
        /// The probes' distinct transactions: one per round.
        rounds: Vec<TransactionId>,
    }

    impl Expiring {
        fn new(lifetime: Duration) -> Self {
            Expiring {
                script: Script::new(
                    M::EndpointIndependent,
                    F::AddressAndPortDependent,
                    &[4000, 4001],
                ),
                lifetime,
                last_main: None,
                probes: Vec::new(),
                rounds: Vec::new(),
            }
        }

        fn alive(&self, now: Instant) -> bool {
            self.last_main
                .is_some_and(|l| now < l.saturating_add(self.lifetime))
        }

        fn reply(&mut self, now: Instant, t: &Transmit, req: &BindingRequest) -> Reply {
            let Some(port) = req.response_port else {
                if t.from == a(LOCAL) {
                    self.last_main = Some(now);
                }
                return self.script.reply(t, req);
            };
            self.probes.push((now, port));
            if !self.rounds.contains(&req.transaction) {
                self.rounds.push(req.transaction);
            }
            assert_eq!((t.from, t.to), (a(EXTRA), a(SERVER)));
            if port == a(X1).port() && self.alive(now) {
                Reply::OkOn {
                    on: a(LOCAL),
                    from: t.to,
                    mapped: a(Y1),
                }
            } else {
                Reply::Drop
            }
        }
    }

    fn lifetime_config(max: u64, precision_ms: u64) -> DiscoveryConfig {
        let mut cfg = config();
        cfg.extra_sockets = vec![a(EXTRA)];
        cfg.hairpin = false;
        cfg.lifetime = Some(LifetimeConfig {
            max: Duration::from_secs(max),
            precision: Duration::from_millis(precision_ms),
        });
        cfg
    }

    /// Runs a lifetime discovery behind [`Expiring`] with `lifetime`.
    fn run_lifetime(
        cfg: DiscoveryConfig,
        lifetime: Duration,
    ) -> (BehaviourReport, Vec<Transmit>, Instant, Expiring) {
        let mut nat = Expiring::new(lifetime);
        let mut d = BehaviourDiscovery::new(cfg, 21);
        let (log, end) = drive_at(&mut d, Some(a(ALT)), |now, t, r| nat.reply(now, t, r));
        assert_consistent(d.report());
        (d.report().clone(), log, end, nat)
    }

    #[test]
    fn c8_lifetime_is_off_by_default() {
        let s = Script::new(M::EndpointIndependent, F::EndpointIndependent, &[4000]);
        let (r, log, _) = run_script(s, config());
        assert_eq!(r.lifetime_reason, Some(NotMeasured::TakesTooLong));
        assert_eq!(r.behaviour.binding_lifetime, None);
        assert!(!r.lifetime_at_least_max);
        assert!(
            log.iter()
                .all(|t| decode_request(t).response_port.is_none())
        );
    }

    #[test]
    fn c8_lifetime_answer_on_the_main_socket_means_alive_at_max() {
        let (r, log, end, nat) = run_lifetime(lifetime_config(60, 1000), Duration::from_secs(600));
        assert_eq!(r.behaviour.binding_lifetime, Some(Duration::from_secs(60)));
        assert!(r.lifetime_at_least_max);
        assert_eq!(r.lifetime_reason, None);
        // The quick tests are unchanged (EIM, APDF: two filtering timeouts).
        assert_eq!(r.behaviour.filtering, Some(F::AddressAndPortDependent));
        // Two rounds: the check (no idle time), then max. Each: a refresh
        // from the main socket to the primary, then the probe from the
        // extra socket with RESPONSE-PORT = the main socket's mapped port.
        let lifetime: Vec<_> = log
            .iter()
            .skip_while(|t| t.from != a(EXTRA))
            .skip(1)
            .map(|t| (t.from, t.to, decode_request(t).response_port))
            .collect();
        assert_eq!(
            lifetime,
            [
                (a(LOCAL), a(SERVER), None),
                (a(EXTRA), a(SERVER), Some(4000)),
                (a(LOCAL), a(SERVER), None),
                (a(EXTRA), a(SERVER), Some(4000)),
            ]
        );
        let quick = Instant::from_millis(1800);
        assert_eq!(
            nat.probes,
            [
                (quick, 4000),
                (quick.saturating_add(Duration::from_secs(60)), 4000)
            ]
        );
        assert_eq!(end, quick.saturating_add(Duration::from_secs(60)));
    }

    #[test]
    fn c8_lifetime_probe_timeout_means_gone() {
        // Precision as wide as max: gone at max ends the search, with only
        // the check round alive.
        let (r, log, end, nat) = run_lifetime(lifetime_config(60, 60_000), Duration::from_secs(10));
        assert_eq!(r.behaviour.binding_lifetime, Some(Duration::ZERO));
        assert!(!r.lifetime_at_least_max);
        // The max round's probe went out three times (one transaction) and
        // was given up after the usual 900 ms.
        let probes: Vec<_> = log
            .iter()
            .map(decode_request)
            .filter(|r| r.response_port.is_some())
            .map(|r| r.transaction)
            .collect();
        assert_eq!(probes.len(), 4);
        assert_ne!(probes[0], probes[1]);
        assert!(probes[1..].iter().all(|t| *t == probes[1]));
        let max_probe = Instant::from_millis(1800).saturating_add(Duration::from_secs(60));
        assert_eq!(nat.probes.get(1).map(|p| p.0), Some(max_probe));
        assert_eq!(end, max_probe.saturating_add(Duration::from_millis(900)));
    }

    #[test]
    fn c8_lifetime_binary_search_converges_below_the_lifetime() {
        for (lifetime_ms, max, precision_ms) in [
            (47_000, 120, 2_000),
            (20_000, 120, 5_000),
            (119_000, 120, 1_000),
            (1_500, 300, 500),
            (90_000, 100, 10),
        ] {
            let lifetime = Duration::from_millis(lifetime_ms);
            let precision = Duration::from_millis(precision_ms);
            let cfg = lifetime_config(max, precision_ms);
            let limit = cfg.lifetime.unwrap();
            let (r, _, end, nat) = run_lifetime(cfg, lifetime);
            let found = r.behaviour.binding_lifetime.unwrap();
            assert!(found < lifetime, "{lifetime:?}: {found:?}");
            assert!(
                found + precision >= lifetime,
                "{lifetime:?}: {found:?} not within {precision:?}"
            );
            assert!(!r.lifetime_at_least_max);
            // The check, max, then at most search_rounds() halvings.
            assert!(
                u32::try_from(nat.rounds.len()).unwrap() <= 2 + limit.search_rounds(),
                "{lifetime:?}: {} rounds",
                nat.rounds.len()
            );
            // Idle waits bounded as documented, plus 0.9 s per timed-out
            // test.
            let budget = Duration::from_millis(900) * (2 + 2 * (2 + limit.search_rounds()));
            assert!(end.since_origin() <= limit.max_idle() + budget, "{end:?}");
        }
    }

    #[test]
    fn c8_lifetime_idle_wait_is_the_next_timeout() {
        let mut cfg = lifetime_config(30, 1000);
        cfg.hairpin = false;
        let mut d = BehaviourDiscovery::new(cfg, 4);
        let mut nat = Expiring::new(Duration::from_secs(100));
        nat.script.filtering = F::EndpointIndependent;
        let mut now = Instant::ZERO;
        let mut pump = |d: &mut BehaviourDiscovery, now: Instant| {
            let mut sent = Vec::new();
            while let Some(t) = d.poll_transmit() {
                let req = decode_request(&t);
                let (on, from, mapped) = match nat.reply(now, &t, &req) {
                    Reply::Ok { from, mapped } => (t.from, from, mapped),
                    Reply::OkOn { on, from, mapped } => (on, from, mapped),
                    _ => panic!("everything is answered here"),
                };
                let bytes = success(req.transaction, mapped, Some(a(ALT)), Some(from));
                assert!(d.handle_datagram(now, on, from, &bytes));
                sent.push(req);
            }
            sent
        };
        d.start(now);
        // The quick tests and the check round, all answered at once.
        let sent = pump(&mut d, now);
        assert_eq!(sent.iter().filter(|r| r.response_port.is_some()).count(), 1);
        assert!(!d.is_done());
        assert_eq!(d.report().lifetime_reason, Some(NotMeasured::Pending));
        // Idle: nothing to send until 30 s, early timeouts change nothing.
        assert_eq!(d.poll_timeout(), Some(Instant::from_millis(30_000)));
        d.handle_timeout(Instant::from_millis(29_999));
        assert!(d.poll_transmit().is_none());
        assert_eq!(d.poll_timeout(), Some(Instant::from_millis(30_000)));
        now = Instant::from_millis(30_000);
        d.handle_timeout(now);
        d.handle_timeout(now);
        let sent = pump(&mut d, now);
        assert_eq!(sent.len(), 1, "one probe, no refresh during the wait");
        assert_eq!(sent[0].response_port, Some(4000));
        assert!(d.is_done());
        assert_eq!(d.poll_timeout(), None);
        assert_eq!(
            d.report().behaviour.binding_lifetime,
            Some(Duration::from_secs(30))
        );
        assert!(d.report().lifetime_at_least_max);
    }

    #[test]
    fn c8_lifetime_without_an_extra_socket_is_not_measured() {
        let mut cfg = lifetime_config(60, 1000);
        cfg.extra_sockets.clear();
        let (r, log, _, nat) = run_lifetime(cfg, Duration::from_secs(100));
        assert_eq!(r.lifetime_reason, Some(NotMeasured::NoExtraSocket));
        assert!(nat.probes.is_empty());
        assert!(
            log.iter()
                .all(|t| decode_request(t).response_port.is_none())
        );
        // The rest was measured as usual.
        assert_eq!(r.behaviour.mapping, Some(M::EndpointIndependent));
    }

    #[test]
    fn c8_lifetime_without_nat_is_not_measured() {
        let local = a("203.0.113.50:4000");
        let mut cfg = DiscoveryConfig::new(a(SERVER), local);
        cfg.extra_sockets = vec![a("203.0.113.50:4001")];
        cfg.lifetime = Some(LifetimeConfig::new(Duration::from_secs(60)));
        let (d, log, end) = run(cfg, 9, Some(a(ALT)), |t, _| Reply::Ok {
            from: t.to,
            mapped: t.from,
        });
        let r = d.report();
        assert_consistent(r);
        assert_eq!(r.behaviour.nat, Some(false));
        assert_eq!(r.lifetime_reason, Some(NotMeasured::NoNat));
        assert!(
            log.iter()
                .all(|t| decode_request(t).response_port.is_none())
        );
        assert_eq!(end, Instant::ZERO);
    }

    #[test]
    fn c8_lifetime_after_a_failed_test_i_is_not_measured() {
        let cfg = lifetime_config(60, 1000);
        let (d, log, _) = run(cfg.clone(), 9, Some(a(ALT)), |_, _| Reply::Drop);
        assert_consistent(d.report());
        assert_eq!(
            d.report().lifetime_reason,
            Some(NotMeasured::ServerUnreachable)
        );
        assert_eq!(log.len(), 3);
        let (d, ..) = run(cfg, 9, Some(a(ALT)), |t, _| Reply::Err {
            from: t.to,
            code: 500,
        });
        assert_eq!(
            d.report().lifetime_reason,
            Some(NotMeasured::ServerError { code: 500 })
        );
    }

    #[test]
    fn c8_lifetime_response_port_unanswered_or_ignored() {
        // The server (or the NAT) never delivers the RESPONSE-PORT answer:
        // the check round fails, nothing else is tried.
        let mut s = Script::new(
            M::EndpointIndependent,
            F::EndpointIndependent,
            &[4000, 4001],
        );
        let (d, log, _) = run(lifetime_config(60, 1000), 3, Some(a(ALT)), |t, r| {
            if r.response_port.is_some() {
                Reply::Drop
            } else {
                s.reply(t, r)
            }
        });
        assert_consistent(d.report());
        assert_eq!(
            d.report().lifetime_reason,
            Some(NotMeasured::ResponsePortUnanswered)
        );
        let probes = log
            .iter()
            .filter(|t| decode_request(t).response_port.is_some())
            .count();
        assert_eq!(probes, 3, "one probe, three copies");
        // The server answers the extra socket itself: it ignores the port.
        let mut s = Script::new(
            M::EndpointIndependent,
            F::EndpointIndependent,
            &[4000, 4001],
        );
        let (d, ..) = run(lifetime_config(60, 1000), 3, Some(a(ALT)), |t, r| {
            s.reply(t, r)
        });
        assert_consistent(d.report());
        assert_eq!(
            d.report().lifetime_reason,
            Some(NotMeasured::ResponsePortIgnored)
        );
        // An error to the probe is typed.
        let mut s = Script::new(
            M::EndpointIndependent,
            F::EndpointIndependent,
            &[4000, 4001],
        );
        let (d, ..) = run(lifetime_config(60, 1000), 3, Some(a(ALT)), |t, r| {
            if r.response_port.is_some() {
                Reply::Err {
                    from: t.to,
                    code: 420,
                }
            } else {
                s.reply(t, r)
            }
        });
        assert_eq!(
            d.report().lifetime_reason,
            Some(NotMeasured::ServerError { code: 420 })
        );
    }

    #[test]
    fn c8_lifetime_refresh_without_answer_ends_the_search() {
        let mut nat = Expiring::new(Duration::from_secs(100));
        let mut refreshes = 0;
        let mut d = BehaviourDiscovery::new(lifetime_config(60, 1000), 5);
        drive_at(&mut d, Some(a(ALT)), |now, t, r| {
            let refresh = t.from == a(LOCAL) && nat.probes.len() == 1 && r.response_port.is_none();
            if refresh {
                refreshes += 1;
                return Reply::Drop;
            }
            nat.reply(now, t, r)
        });
        assert_consistent(d.report());
        assert_eq!(refreshes, 3);
        assert_eq!(
            d.report().lifetime_reason,
            Some(NotMeasured::ServerUnreachable)
        );
        // The quick tests keep their results.
        assert_eq!(d.report().behaviour.mapping, Some(M::EndpointIndependent));
    }

    #[test]
    fn c8_lifetime_answers_elsewhere_do_not_count() {
        // The probe's answer on a socket that is neither the main one nor
        // the sender, or from another address: consumed, not acted on; the
        // probe then times out.
        let mut nat = Expiring::new(Duration::from_secs(100));
        let mut cfg = lifetime_config(60, 60_000);
        cfg.extra_sockets.push(a("10.0.0.2:4002"));
        nat.script.ports.push(4002);
        let mut d = BehaviourDiscovery::new(cfg, 6);
        let mut now = Instant::ZERO;
        d.start(now);
        for _ in 0..100 {
            while let Some(t) = d.poll_transmit() {
                let req = decode_request(&t);
                let (on, from, mapped) = match nat.reply(now, &t, &req) {
                    Reply::Ok { from, mapped } => (t.from, from, mapped),
                    Reply::OkOn { from, mapped, .. } => {
                        let bytes = success(req.transaction, mapped, None, None);
                        assert!(d.handle_datagram(now, a("10.0.0.2:4002"), from, &bytes));
                        assert!(d.handle_datagram(now, a(LOCAL), a(ALT), &bytes));
                        continue;
                    }
                    _ => continue,
                };
                let bytes = success(req.transaction, mapped, Some(a(ALT)), None);
                assert!(d.handle_datagram(now, on, from, &bytes));
            }
            match d.poll_timeout() {
                Some(at) => {
                    now = at;
                    d.handle_timeout(now);
                }
                None => break,
            }
        }
        assert!(d.is_done());
        assert_eq!(
            d.report().lifetime_reason,
            Some(NotMeasured::ResponsePortUnanswered)
        );
    }

    #[test]
    fn c8_lifetime_config_bounds() {
        let c = LifetimeConfig::new(Duration::from_secs(120));
        assert_eq!(c.precision, Duration::from_secs(5));
        // 120 → 60 → 30 → 15 → 7.5 → 3.75 s.
        assert_eq!(c.search_rounds(), 5);
        assert_eq!(c.max_idle(), Duration::from_secs(720));
        let fine = LifetimeConfig {
            max: Duration::from_secs(1),
            precision: Duration::ZERO,
        };
        assert_eq!(fine.effective_precision(), LifetimeConfig::MIN_PRECISION);
        assert_eq!(fine.search_rounds(), 10);
        let zero = LifetimeConfig::new(Duration::ZERO);
        assert_eq!(zero.search_rounds(), 0);
        // max = 0: the check round is the max round.
        let mut cfg = lifetime_config(0, 1000);
        cfg.lifetime = Some(zero);
        let (r, ..) = run_lifetime(cfg, Duration::from_secs(5));
        assert_eq!(r.behaviour.binding_lifetime, Some(Duration::ZERO));
        assert!(r.lifetime_at_least_max);
    }

    proptest::proptest! {
        /// Arbitrary datagrams, at any point of a run, never panic, and are
        /// never taken for an answer.
        #[test]
        fn c8_arbitrary_datagrams_never_panic(
            steps in 0usize..6,
            junk in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80), 0..8),
        ) {
            let mut s = Script::new(
                M::AddressAndPortDependent,
                F::AddressAndPortDependent,
                &[40_000, 40_001, 40_002, 40_003],
            );
            let mut d = BehaviourDiscovery::new(config(), 8);
            let mut now = Instant::ZERO;
            d.start(now);
            for _ in 0..steps {
                for j in &junk {
                    proptest::prop_assert!(!d.handle_datagram(now, a(LOCAL), a(SERVER), j));
                }
                while let Some(t) = d.poll_transmit() {
                    let req = decode_request(&t);
                    if let Reply::Ok { from, mapped } = s.reply(&t, &req) {
                        let bytes = success(req.transaction, mapped, Some(a(ALT)), None);
                        d.handle_datagram(now, t.from, from, &bytes);
                    }
                }
                if let Some(at) = d.poll_timeout() {
                    now = at;
                    d.handle_timeout(now);
                }
            }
        }
    }
}
