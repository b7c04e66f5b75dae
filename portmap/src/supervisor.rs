//! The supervisor: probes the port-mapping protocols one at a time, in the
//! order the caller gives (the spec's PCP, NAT-PMP, UPnP-IGD), keeps the
//! first mapping that works, reports renewals, gateway restarts and loss,
//! probes again after a loss or after every protocol failed, and deletes
//! the mapping on shutdown (P4).
//!
//! Sans-IO like every machine of the crate: `handle_*` for what arrives,
//! `poll_*` for what to do next; time is passed in.
//!
//! # State machine
//!
//! ```text
//! Idle --start--> Probing(0)
//! Probing(i) --Failed--> Probing(i+1) | Unavailable (after the last)
//! Probing(i) --Installed--> Installed(i)
//! Installed(i) --Installed--> Installed(i)          (Renewed)
//! Installed(i) --Failed--> Probing(0)                (Lost)
//! Unavailable --retry_after--> Probing(0)
//! Idle | Unavailable --shutdown--> Done              (Deleted(None))
//! Probing(i) | Installed(i) --shutdown--> Deleting(i)
//! Deleting(i) --Deleted | Failed | deadline--> Done  (Deleted / DeleteFailed)
//! ```
//!
//! Only one client is ever active (started and not yet failed): the one
//! being probed, the installed one, or the one deleting. Everything the
//! driver hands in is forwarded to it and only to it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use natrix_proto::time::earliest;

use crate::{Client, Event, Instant, MapError, Mapping, Protocol, Transmit};

/// How the [`Supervisor`] behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SupervisorConfig {
    /// When every protocol failed, how long to wait before probing the
    /// whole sequence again (default 5 minutes).
    pub retry_after: Duration,
    /// How long [`Supervisor::shutdown`] waits for the client to confirm
    /// the deletion before giving up (default 5 seconds).
    pub shutdown_timeout: Duration,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            retry_after: Duration::from_secs(5 * 60),
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

/// What the [`Supervisor`] reports.
///
/// The driver may simply take [`Supervisor::reflex_override`] afresh after
/// every event: it changes only on `Installed`, `Renewed` (a re-install
/// after a gateway restart may grant another external address), `Lost` and
/// on shutdown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SupervisorEvent {
    /// A mapping was installed: the best one, from the first protocol in
    /// probe order that worked. `mapping.external` is the external address
    /// and port the gateway granted (P3).
    Installed {
        /// The mapping.
        mapping: Mapping,
        /// The external address is private or shared address space (P6):
        /// the mapping is reported but is no reflex override.
        double_nat: bool,
    },
    /// The installed mapping was renewed or re-installed by its client.
    Renewed {
        /// The mapping as now granted.
        mapping: Mapping,
    },
    /// The gateway restarted (P4); the client re-installs on its own, and
    /// the mapping is kept until it reports again.
    GatewayRestarted(Protocol),
    /// The installed mapping was lost (renewal refused, gateway gone…): the
    /// reflex override is withdrawn and probing starts again from the first
    /// protocol.
    Lost {
        /// The protocol that held it.
        protocol: Protocol,
        /// Why.
        error: MapError,
    },
    /// Every protocol failed; probing starts again after
    /// [`SupervisorConfig::retry_after`].
    Unavailable {
        /// Each protocol's error, in probe order.
        errors: Vec<(Protocol, MapError)>,
    },
    /// Shutdown finished: `Some(protocol)` when that protocol's client
    /// confirmed the deletion, `None` when there was nothing to delete.
    Deleted(Option<Protocol>),
    /// Shutdown finished without the deletion being confirmed: the client
    /// failed, or did not answer within
    /// [`SupervisorConfig::shutdown_timeout`].
    DeleteFailed {
        /// The protocol whose mapping could not be deleted.
        protocol: Protocol,
        /// Why.
        error: MapError,
    },
}

/// Where the [`Supervisor`] stands (for netcheck and the CLI).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Not started yet.
    Idle,
    /// This protocol is being probed.
    Probing(Protocol),
    /// A mapping from this protocol is installed ([`Supervisor::mapping`]).
    Installed(Protocol),
    /// Every protocol failed ([`Supervisor::errors`]); probing again at
    /// `retry_at`.
    Unavailable {
        /// When the next round starts.
        retry_at: Instant,
    },
    /// Shutting down: this protocol's client is deleting.
    Deleting(Protocol),
    /// Shut down.
    Done,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Idle,
    Probing { index: usize },
    Installed { index: usize, mapping: Mapping },
    Unavailable { retry_at: Instant },
    Deleting { index: usize, deadline: Instant },
    Done,
}

/// Drives the protocol clients one at a time and keeps the best mapping.
pub struct Supervisor {
    clients: Vec<Box<dyn Client + Send>>,
    config: SupervisorConfig,
    state: State,
    /// The errors of the current (or last complete) probe round.
    errors: Vec<(Protocol, MapError)>,
    events: VecDeque<SupervisorEvent>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let protocols: Vec<Protocol> = self.clients.iter().map(|c| c.protocol()).collect();
        f.debug_struct("Supervisor")
            .field("clients", &protocols)
            .field("config", &self.config)
            .field("state", &self.state)
            .field("errors", &self.errors)
            .field("events", &self.events)
            .finish()
    }
}

impl Supervisor {
    /// A supervisor over `clients`, in probe order (the spec's PCP,
    /// NAT-PMP, UPnP-IGD). Nothing happens before [`Supervisor::start`].
    #[must_use]
    pub fn new(clients: Vec<Box<dyn Client + Send>>, config: SupervisorConfig) -> Self {
        Supervisor {
            clients,
            config,
            state: State::Idle,
            errors: Vec::new(),
            events: VecDeque::new(),
        }
    }

    /// Starts probing with the first client. Does nothing once started.
    pub fn start(&mut self, now: Instant) {
        if self.state == State::Idle {
            self.probe_from(now, 0);
            self.pump(now);
        }
    }

    /// A UDP datagram the port-mapping socket received; forwarded to the
    /// active client.
    pub fn handle_udp(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        if let Some(client) = self.active_mut() {
            client.handle_udp(now, from, datagram);
        }
        self.pump(now);
    }

    /// The answer to a [`Transmit::Http`]; forwarded to the active client.
    pub fn handle_http(&mut self, now: Instant, id: u64, response: Result<&[u8], String>) {
        if let Some(client) = self.active_mut() {
            client.handle_http(now, id, response);
        }
        self.pump(now);
    }

    /// Time passed: forwarded to the active client; starts a new probe
    /// round when the retry timer is due; ends a shutdown whose deadline
    /// passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(client) = self.active_mut() {
            client.handle_timeout(now);
        }
        self.pump(now);
        match self.state {
            State::Unavailable { retry_at } if now >= retry_at => {
                tracing::debug!("port mapping: probing again");
                self.probe_from(now, 0);
                self.pump(now);
            }
            State::Deleting { index, deadline } if now >= deadline => {
                let protocol = self.clients[index].protocol();
                tracing::debug!(%protocol, "port mapping: deletion not confirmed in time");
                self.state = State::Done;
                self.events.push_back(SupervisorEvent::DeleteFailed {
                    protocol,
                    error: MapError::Timeout(protocol),
                });
            }
            _ => {}
        }
    }

    /// Shutdown (P4): stops probing and asks the active client (the
    /// installed one, or the one being probed, which may have a mapping in
    /// flight) to delete its mapping. [`SupervisorEvent::Deleted`] follows
    /// once it confirms, at once when there is nothing to delete; see
    /// [`Supervisor::is_done`].
    pub fn shutdown(&mut self, now: Instant) {
        match self.state {
            State::Idle | State::Unavailable { .. } => {
                self.state = State::Done;
                self.events.push_back(SupervisorEvent::Deleted(None));
            }
            State::Probing { index } | State::Installed { index, .. } => {
                let deadline = now.saturating_add(self.config.shutdown_timeout);
                self.state = State::Deleting { index, deadline };
                self.clients[index].delete(now);
                self.pump(now);
            }
            State::Deleting { .. } | State::Done => {}
        }
    }

    /// Whether shutdown finished: the driver may stop driving.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The next thing to send (from the active client).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.active_mut()?.poll_transmit()
    }

    /// When [`Supervisor::handle_timeout`] is due: the earliest of the
    /// active client's timeout, the retry timer and the shutdown deadline.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let own = match self.state {
            State::Unavailable { retry_at } => Some(retry_at),
            State::Deleting { deadline, .. } => Some(deadline),
            _ => None,
        };
        earliest(own, self.active().and_then(|c| c.poll_timeout()))
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<SupervisorEvent> {
        self.events.pop_front()
    }

    /// The installed mapping, if any (none once shutdown began).
    #[must_use]
    pub fn mapping(&self) -> Option<Mapping> {
        match self.state {
            State::Installed { mapping, .. } => Some(mapping),
            _ => None,
        }
    }

    /// The external address to use as the reflex override (P7, C6): the
    /// installed mapping's, unless it is double NAT (P6). `None` restores
    /// classification.
    #[must_use]
    pub fn reflex_override(&self) -> Option<SocketAddr> {
        self.mapping()
            .filter(|m| !m.is_double_nat())
            .map(|m| m.external)
    }

    /// Where the supervisor stands.
    #[must_use]
    pub fn status(&self) -> Status {
        match self.state {
            State::Idle => Status::Idle,
            State::Probing { index } => Status::Probing(self.clients[index].protocol()),
            State::Installed { mapping, .. } => Status::Installed(mapping.protocol),
            State::Unavailable { retry_at } => Status::Unavailable { retry_at },
            State::Deleting { index, .. } => Status::Deleting(self.clients[index].protocol()),
            State::Done => Status::Done,
        }
    }

    /// The errors of the current probe round so far, or of the last one
    /// when every protocol failed, in probe order.
    #[must_use]
    pub fn errors(&self) -> &[(Protocol, MapError)] {
        &self.errors
    }

    fn active_index(&self) -> Option<usize> {
        match self.state {
            State::Probing { index }
            | State::Installed { index, .. }
            | State::Deleting { index, .. } => Some(index),
            State::Idle | State::Unavailable { .. } | State::Done => None,
        }
    }

    fn active(&self) -> Option<&(dyn Client + Send)> {
        let index = self.active_index()?;
        Some(self.clients[index].as_ref())
    }

    fn active_mut(&mut self) -> Option<&mut (dyn Client + Send)> {
        let index = self.active_index()?;
        Some(self.clients[index].as_mut())
    }

    /// Starts a probe round at `index` (0 clears the round's errors).
    fn probe_from(&mut self, now: Instant, index: usize) {
        if index == 0 {
            self.errors.clear();
        }
        if let Some(client) = self.clients.get_mut(index) {
            tracing::debug!(protocol = %client.protocol(), "port mapping: probing");
            self.state = State::Probing { index };
            client.start(now);
        } else {
            let retry_at = now.saturating_add(self.config.retry_after);
            tracing::debug!(errors = ?self.errors, "port mapping: unavailable");
            self.state = State::Unavailable { retry_at };
            self.events.push_back(SupervisorEvent::Unavailable {
                errors: self.errors.clone(),
            });
        }
    }

    /// Drains the active client's events (and those of any client it hands
    /// over to) into state changes and supervisor events.
    fn pump(&mut self, now: Instant) {
        while let Some(index) = self.active_index() {
            let Some(event) = self.clients[index].poll_event() else {
                break;
            };
            self.on_event(now, index, event);
        }
    }

    fn on_event(&mut self, now: Instant, index: usize, event: Event) {
        let protocol = self.clients[index].protocol();
        match (&self.state, event) {
            (_, Event::GatewayRestarted(p)) => {
                if matches!(self.state, State::Probing { .. } | State::Installed { .. }) {
                    tracing::debug!(protocol = %p, "port mapping: gateway restarted");
                    self.events.push_back(SupervisorEvent::GatewayRestarted(p));
                }
            }
            (State::Probing { .. }, Event::Installed(mapping)) => {
                let double_nat = mapping.is_double_nat();
                tracing::debug!(%protocol, external = %mapping.external, double_nat,
                    "port mapping: installed");
                self.state = State::Installed { index, mapping };
                self.events.push_back(SupervisorEvent::Installed {
                    mapping,
                    double_nat,
                });
            }
            (State::Installed { .. }, Event::Installed(mapping)) => {
                self.state = State::Installed { index, mapping };
                self.events.push_back(SupervisorEvent::Renewed { mapping });
            }
            (State::Probing { .. }, Event::Failed(error)) => {
                tracing::debug!(%protocol, %error, "port mapping: protocol failed");
                self.errors.push((protocol, error));
                self.probe_from(now, index + 1);
            }
            (State::Installed { .. }, Event::Failed(error)) => {
                tracing::debug!(%protocol, %error, "port mapping: lost");
                self.events
                    .push_back(SupervisorEvent::Lost { protocol, error });
                self.probe_from(now, 0);
            }
            (State::Deleting { .. }, Event::Deleted(p)) => {
                self.state = State::Done;
                self.events.push_back(SupervisorEvent::Deleted(Some(p)));
            }
            (State::Deleting { .. }, Event::Failed(error)) => {
                self.state = State::Done;
                self.events
                    .push_back(SupervisorEvent::DeleteFailed { protocol, error });
            }
            // An unrequested Deleted, or an Installed after delete was
            // asked: nothing to act on.
            (_, event) => {
                tracing::debug!(%protocol, ?event, "port mapping: event ignored");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex, MutexGuard};

    const GW: &str = "192.168.1.1:5351";

    fn gw() -> SocketAddr {
        GW.parse().expect("literal")
    }

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    /// What a scripted client did and will report.
    #[derive(Debug, Default)]
    struct MockState {
        starts: u32,
        deletes: u32,
        /// Started and not yet failed or deleted.
        running: bool,
        mapping: Option<Mapping>,
        events: VecDeque<Event>,
        transmits: VecDeque<Transmit>,
        timeout: Option<Instant>,
        udp: Vec<Vec<u8>>,
        http: Vec<u64>,
        timeouts: u32,
    }

    /// The test's handle on a scripted client.
    #[derive(Clone, Debug)]
    struct Script(Arc<Mutex<MockState>>);

    impl Script {
        fn get(&self) -> MutexGuard<'_, MockState> {
            self.0.lock().expect("mock lock")
        }
        fn push(&self, event: Event) {
            self.get().events.push_back(event);
        }
        fn send(&self, payload: &[u8]) {
            self.get().transmits.push_back(Transmit::Udp {
                to: gw(),
                payload: payload.to_vec(),
            });
        }
        fn starts(&self) -> u32 {
            self.get().starts
        }
        fn running(&self) -> bool {
            self.get().running
        }
    }

    struct Mock {
        protocol: Protocol,
        state: Arc<Mutex<MockState>>,
    }

    impl Mock {
        fn st(&self) -> MutexGuard<'_, MockState> {
            self.state.lock().expect("mock lock")
        }
    }

    impl Client for Mock {
        fn protocol(&self) -> Protocol {
            self.protocol
        }
        fn start(&mut self, _now: Instant) {
            let mut s = self.st();
            s.starts += 1;
            s.running = true;
        }
        fn handle_udp(&mut self, _now: Instant, _from: SocketAddr, datagram: &[u8]) {
            self.st().udp.push(datagram.to_vec());
        }
        fn handle_http(&mut self, _now: Instant, id: u64, _response: Result<&[u8], String>) {
            self.st().http.push(id);
        }
        fn handle_timeout(&mut self, _now: Instant) {
            self.st().timeouts += 1;
        }
        fn delete(&mut self, _now: Instant) {
            let mut s = self.st();
            s.deletes += 1;
            if s.mapping.is_none() {
                s.events.push_back(Event::Deleted(self.protocol));
            }
        }
        fn poll_transmit(&mut self) -> Option<Transmit> {
            self.st().transmits.pop_front()
        }
        fn poll_timeout(&self) -> Option<Instant> {
            self.st().timeout
        }
        fn poll_event(&mut self) -> Option<Event> {
            let mut s = self.st();
            let event = s.events.pop_front()?;
            match &event {
                Event::Installed(m) => s.mapping = Some(*m),
                Event::Failed(_) | Event::Deleted(_) => {
                    s.running = false;
                    s.mapping = None;
                }
                Event::GatewayRestarted(_) => {}
            }
            Some(event)
        }
        fn mapping(&self) -> Option<Mapping> {
            self.st().mapping
        }
    }

    const ORDER: [Protocol; 3] = [Protocol::Pcp, Protocol::NatPmp, Protocol::UpnpIgd];

    fn setup(config: SupervisorConfig) -> (Supervisor, Vec<Script>) {
        let mut clients: Vec<Box<dyn Client + Send>> = Vec::new();
        let mut scripts = Vec::new();
        for protocol in ORDER {
            let state = Arc::new(Mutex::new(MockState::default()));
            scripts.push(Script(state.clone()));
            clients.push(Box::new(Mock { protocol, state }));
        }
        (Supervisor::new(clients, config), scripts)
    }

    fn mapping(protocol: Protocol, external: &str, now: Instant) -> Mapping {
        Mapping {
            protocol,
            internal: "192.168.1.20:4000".parse().expect("literal"),
            external: external.parse().expect("literal"),
            lifetime: Duration::from_secs(3600),
            granted_at: now,
        }
    }

    fn refused(protocol: Protocol) -> MapError {
        MapError::Refused {
            protocol,
            reason: "no".into(),
        }
    }

    fn events(sup: &mut Supervisor) -> Vec<SupervisorEvent> {
        std::iter::from_fn(|| sup.poll_event()).collect()
    }

    /// Lets the supervisor see what the scripts pushed.
    fn tick(sup: &mut Supervisor, now: Instant) {
        sup.handle_udp(now, gw(), b"answer");
    }

    #[test]
    fn probes_in_order_one_at_a_time() {
        let (mut sup, s) = setup(SupervisorConfig::default());
        assert_eq!(sup.status(), Status::Idle);
        sup.start(at(0));
        assert_eq!(sup.status(), Status::Probing(Protocol::Pcp));
        assert_eq!((s[0].starts(), s[1].starts(), s[2].starts()), (1, 0, 0));

        // Only the first client sees traffic and sends.
        s[0].send(b"pcp-map");
        s[1].send(b"natpmp-map");
        sup.handle_udp(at(10), gw(), b"noise");
        sup.handle_http(at(10), 7, Ok(b"HTTP/1.1 200 OK\r\n\r\n"));
        sup.handle_timeout(at(20));
        assert_eq!(
            sup.poll_transmit(),
            Some(Transmit::Udp {
                to: gw(),
                payload: b"pcp-map".to_vec()
            })
        );
        assert_eq!(sup.poll_transmit(), None);
        {
            let second = s[1].get();
            assert!(second.udp.is_empty() && second.http.is_empty());
            assert_eq!(second.timeouts, 0);
        }
        assert_eq!(s[0].get().udp, vec![b"noise".to_vec()]);
        assert_eq!(s[0].get().http, vec![7]);

        // PCP fails: NAT-PMP starts, and now gets the traffic.
        s[0].push(Event::Failed(MapError::Timeout(Protocol::Pcp)));
        tick(&mut sup, at(1000));
        assert_eq!(sup.status(), Status::Probing(Protocol::NatPmp));
        assert_eq!((s[0].starts(), s[1].starts(), s[2].starts()), (1, 1, 0));
        assert_eq!(
            sup.poll_transmit(),
            Some(Transmit::Udp {
                to: gw(),
                payload: b"natpmp-map".to_vec()
            })
        );
        tick(&mut sup, at(1010));
        assert_eq!(s[1].get().udp.len(), 1);
        assert_eq!(
            s[0].get().udp.len(),
            2,
            "the failed client gets nothing more"
        );

        s[1].push(Event::Failed(MapError::Timeout(Protocol::NatPmp)));
        tick(&mut sup, at(2000));
        assert_eq!(sup.status(), Status::Probing(Protocol::UpnpIgd));
        assert_eq!(s[2].starts(), 1);
        assert!(events(&mut sup).is_empty());
    }

    #[test]
    fn first_success_wins_and_later_protocols_never_start() {
        let (mut sup, s) = setup(SupervisorConfig::default());
        sup.start(at(0));
        s[0].push(Event::Failed(refused(Protocol::Pcp)));
        tick(&mut sup, at(5));
        let m = mapping(Protocol::NatPmp, "203.0.113.7:41000", at(30));
        s[1].push(Event::Installed(m));
        tick(&mut sup, at(30));
        assert_eq!(
            events(&mut sup),
            vec![SupervisorEvent::Installed {
                mapping: m,
                double_nat: false
            }]
        );
        assert_eq!(sup.status(), Status::Installed(Protocol::NatPmp));
        assert_eq!(sup.mapping(), Some(m));
        // Much later, renewals: UPnP never starts.
        let renewed = mapping(Protocol::NatPmp, "203.0.113.7:41000", at(1_800_000));
        s[1].push(Event::Installed(renewed));
        sup.handle_timeout(at(1_800_000));
        assert_eq!(
            events(&mut sup),
            vec![SupervisorEvent::Renewed { mapping: renewed }]
        );
        assert_eq!(sup.mapping(), Some(renewed));
        assert_eq!(s[2].starts(), 0);
        assert_eq!(s[0].starts(), 1);
    }

    #[test]
    fn all_fail_reports_every_error_then_retries_after_retry_after() {
        let config = SupervisorConfig {
            retry_after: Duration::from_secs(60),
            ..SupervisorConfig::default()
        };
        let (mut sup, s) = setup(config);
        // Synchronous failures are handled too.
        s[0].push(Event::Failed(MapError::Timeout(Protocol::Pcp)));
        sup.start(at(0));
        assert_eq!(sup.status(), Status::Probing(Protocol::NatPmp));
        s[1].push(Event::Failed(refused(Protocol::NatPmp)));
        tick(&mut sup, at(1000));
        s[2].push(Event::Failed(MapError::Http("reset".into())));
        tick(&mut sup, at(3000));
        let errors = vec![
            (Protocol::Pcp, MapError::Timeout(Protocol::Pcp)),
            (Protocol::NatPmp, refused(Protocol::NatPmp)),
            (Protocol::UpnpIgd, MapError::Http("reset".into())),
        ];
        assert_eq!(
            events(&mut sup),
            vec![SupervisorEvent::Unavailable {
                errors: errors.clone()
            }]
        );
        assert_eq!(sup.errors(), errors.as_slice());
        assert_eq!(
            sup.status(),
            Status::Unavailable {
                retry_at: at(63_000)
            }
        );
        assert_eq!(sup.poll_timeout(), Some(at(63_000)));
        assert_eq!(sup.reflex_override(), None);

        // Not before time.
        sup.handle_timeout(at(62_999));
        assert_eq!(s[0].starts(), 1);
        sup.handle_timeout(at(63_000));
        assert_eq!(sup.status(), Status::Probing(Protocol::Pcp));
        assert_eq!((s[0].starts(), s[1].starts(), s[2].starts()), (2, 1, 1));
        assert!(sup.errors().is_empty());
        assert_eq!(sup.poll_timeout(), None);
    }

    #[test]
    fn no_clients_is_unavailable() {
        let mut sup = Supervisor::new(Vec::new(), SupervisorConfig::default());
        sup.start(at(0));
        assert_eq!(
            events(&mut sup),
            vec![SupervisorEvent::Unavailable { errors: Vec::new() }]
        );
    }

    #[test]
    fn p7_mapping_becomes_reflex_override_and_losing_it_restores_classification() {
        let (mut sup, s) = setup(SupervisorConfig::default());
        sup.start(at(0));
        assert_eq!(sup.reflex_override(), None);
        let m = mapping(Protocol::Pcp, "203.0.113.7:41000", at(40));
        s[0].push(Event::Installed(m));
        tick(&mut sup, at(40));
        assert_eq!(
            sup.reflex_override(),
            Some("203.0.113.7:41000".parse().expect("literal"))
        );
        events(&mut sup);

        // Renewal refused.
        s[0].push(Event::Failed(refused(Protocol::Pcp)));
        sup.handle_timeout(at(1_800_000));
        assert_eq!(
            events(&mut sup),
            vec![SupervisorEvent::Lost {
                protocol: Protocol::Pcp,
                error: refused(Protocol::Pcp)
            }]
        );
        assert_eq!(sup.reflex_override(), None);
        assert_eq!(sup.mapping(), None);
        // Probing again from the first protocol.
        assert_eq!(sup.status(), Status::Probing(Protocol::Pcp));
        assert_eq!(s[0].starts(), 2);
    }

    #[test]
    fn lost_from_a_later_protocol_probes_from_the_first() {
        let (mut sup, s) = setup(SupervisorConfig::default());
        sup.start(at(0));
        s[0].push(Event::Failed(MapError::Timeout(Protocol::Pcp)));
        tick(&mut sup, at(1000));
        s[1].push(Event::Installed(mapping(
            Protocol::NatPmp,
            "203.0.113.7:1",
            at(1000),
        )));
        tick(&mut sup, at(1000));
        s[1].push(Event::Failed(MapError::Timeout(Protocol::NatPmp)));
        tick(&mut sup, at(9000));
        assert_eq!(sup.status(), Status::Probing(Protocol::Pcp));
        assert_eq!((s[0].starts(), s[1].starts(), s[2].starts()), (2, 1, 0));
    }

    #[test]
    fn p6_double_nat_mapping_is_reported_and_not_an_override() {
        for external in ["100.64.1.2:5000", "192.168.0.9:5000"] {
            let (mut sup, s) = setup(SupervisorConfig::default());
            sup.start(at(0));
            let m = mapping(Protocol::Pcp, external, at(10));
            s[0].push(Event::Installed(m));
            tick(&mut sup, at(10));
            assert_eq!(
                events(&mut sup),
                vec![SupervisorEvent::Installed {
                    mapping: m,
                    double_nat: true
                }],
                "{external}"
            );
            assert_eq!(sup.mapping(), Some(m));
            assert_eq!(sup.reflex_override(), None, "{external}");
            // The mapping is kept: nothing else is probed.
            assert_eq!(s[1].starts(), 0);
        }
    }

    #[test]
    fn p4_shutdown_deletes_the_installed_mapping() {
        let (mut sup, s) = setup(SupervisorConfig::default());
        sup.start(at(0));
        s[0].push(Event::Installed(mapping(
            Protocol::Pcp,
            "203.0.113.7:41000",
            at(10),
        )));
        tick(&mut sup, at(10));
        events(&mut sup);

        sup.shutdown(at(100));
        assert_eq!(s[0].get().deletes, 1);
        assert_eq!(sup.status(), Status::Deleting(Protocol::Pcp));
        assert_eq!(sup.mapping(), None);
        assert_eq!(sup.reflex_override(), None);
        assert!(!sup.is_done());
        assert_eq!(sup.poll_timeout(), Some(at(5100)));
        // The deleting client still sends and gets its answers.
        s[0].send(b"pcp-delete");
        assert!(sup.poll_transmit().is_some());
        s[0].push(Event::Deleted(Protocol::Pcp));
        sup.handle_udp(at(120), gw(), b"delete-ack");
        assert_eq!(s[0].get().udp.last(), Some(&b"delete-ack".to_vec()));
        assert_eq!(
            events(&mut sup),
            vec![SupervisorEvent::Deleted(Some(Protocol::Pcp))]
        );
        assert!(sup.is_done());
        assert_eq!(sup.status(), Status::Done);
        assert_eq!(sup.poll_timeout(), None);
        // A second shutdown does nothing.
        sup.shutdown(at(200));
        assert_eq!(s[0].get().deletes, 1);
        assert!(events(&mut sup).is_empty());
    }

    #[test]
    fn shutdown_with_nothing_installed_is_done_at_once() {
        let (mut sup, _s) = setup(SupervisorConfig::default());
        sup.shutdown(at(0));
        assert_eq!(events(&mut sup), vec![SupervisorEvent::Deleted(None)]);
        assert!(sup.is_done());

        // While probing, the probing client is asked to delete (it may
        // have a mapping in flight) and stops probing.
        let (mut sup, s) = setup(SupervisorConfig::default());
        sup.start(at(0));
        sup.shutdown(at(10));
        assert_eq!(s[0].get().deletes, 1);
        assert_eq!(
            events(&mut sup),
            vec![SupervisorEvent::Deleted(Some(Protocol::Pcp))]
        );
        assert!(sup.is_done());
        assert_eq!(s[1].starts(), 0);
    }

    #[test]
    fn shutdown_gives_up_after_its_deadline() {
        let (mut sup, s) = setup(SupervisorConfig::default());
        sup.start(at(0));
        s[0].push(Event::Installed(mapping(
            Protocol::Pcp,
            "203.0.113.7:1",
            at(0),
        )));
        tick(&mut sup, at(0));
        events(&mut sup);
        sup.shutdown(at(1000));
        sup.handle_timeout(at(5999));
        assert!(!sup.is_done());
        sup.handle_timeout(at(6000));
        assert!(sup.is_done());
        assert_eq!(
            events(&mut sup),
            vec![SupervisorEvent::DeleteFailed {
                protocol: Protocol::Pcp,
                error: MapError::Timeout(Protocol::Pcp)
            }]
        );
    }

    #[test]
    fn gateway_restart_is_forwarded_and_the_mapping_kept_then_reinstalled() {
        let (mut sup, s) = setup(SupervisorConfig::default());
        sup.start(at(0));
        let m = mapping(Protocol::Pcp, "203.0.113.7:41000", at(10));
        s[0].push(Event::Installed(m));
        tick(&mut sup, at(10));
        events(&mut sup);

        s[0].push(Event::GatewayRestarted(Protocol::Pcp));
        tick(&mut sup, at(500));
        assert_eq!(
            events(&mut sup),
            vec![SupervisorEvent::GatewayRestarted(Protocol::Pcp)]
        );
        assert_eq!(sup.mapping(), Some(m));
        assert_eq!(sup.status(), Status::Installed(Protocol::Pcp));

        // The client re-installs, possibly with another external port.
        let again = mapping(Protocol::Pcp, "203.0.113.7:41001", at(600));
        s[0].push(Event::Installed(again));
        tick(&mut sup, at(600));
        assert_eq!(
            events(&mut sup),
            vec![SupervisorEvent::Renewed { mapping: again }]
        );
        assert_eq!(
            sup.reflex_override(),
            Some("203.0.113.7:41001".parse().expect("literal"))
        );
        assert_eq!(s[0].starts(), 1);
        assert_eq!(s[1].starts(), 0);
    }

    #[test]
    fn poll_timeout_is_the_earliest() {
        let config = SupervisorConfig {
            retry_after: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(3),
        };
        let (mut sup, s) = setup(config);
        assert_eq!(sup.poll_timeout(), None);
        s[0].get().timeout = Some(at(1000));
        s[1].get().timeout = Some(at(5)); // not active: not counted
        sup.start(at(0));
        assert_eq!(sup.poll_timeout(), Some(at(1000)));

        s[0].push(Event::Installed(mapping(
            Protocol::Pcp,
            "203.0.113.7:1",
            at(0),
        )));
        tick(&mut sup, at(0));
        s[0].get().timeout = Some(at(1_800_000));
        assert_eq!(sup.poll_timeout(), Some(at(1_800_000)));

        // Deleting: the client's retransmission before the deadline…
        sup.shutdown(at(100));
        s[0].get().timeout = Some(at(600));
        assert_eq!(sup.poll_timeout(), Some(at(600)));
        // …and the deadline before a later client timeout.
        s[0].get().timeout = Some(at(9000));
        assert_eq!(sup.poll_timeout(), Some(at(3100)));

        // Unavailable: the retry timer, the failed clients' timers ignored.
        let (mut sup, s) = setup(config);
        s[0].push(Event::Failed(MapError::NoGateway));
        s[1].push(Event::Failed(MapError::NoGateway));
        s[2].push(Event::Failed(MapError::NoGateway));
        s[2].get().timeout = Some(at(1));
        sup.start(at(0));
        assert_eq!(sup.poll_timeout(), Some(at(10_000)));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Op {
            Fail,
            Install { public: bool, port: u16 },
            Restart,
            Deleted,
            Advance(u64),
            Shutdown,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => Just(Op::Fail),
                3 => (any::<bool>(), 1u16..).prop_map(|(public, port)| Op::Install { public, port }),
                1 => Just(Op::Restart),
                1 => Just(Op::Deleted),
                2 => (0u64..400_000).prop_map(Op::Advance),
                1 => Just(Op::Shutdown),
            ]
        }

        proptest! {
            #[test]
            fn one_probing_client_at_a_time_and_at_most_one_mapping(
                ops in proptest::collection::vec(op(), 0..80)
            ) {
                let (mut sup, s) = setup(SupervisorConfig::default());
                let mut now = at(0);
                sup.start(now);
                let mut done_seen = false;
                for op in ops {
                    let running: Vec<usize> = (0..s.len()).filter(|&i| s[i].running()).collect();
                    let target = running.first().copied();
                    match op {
                        Op::Fail => {
                            if let Some(i) = target {
                                s[i].push(Event::Failed(MapError::Timeout(ORDER[i])));
                            }
                            tick(&mut sup, now);
                        }
                        Op::Install { public, port } => {
                            if let Some(i) = target {
                                let ip = if public { "203.0.113.7" } else { "100.64.1.2" };
                                s[i].push(Event::Installed(mapping(ORDER[i], &format!("{ip}:{port}"), now)));
                            }
                            tick(&mut sup, now);
                        }
                        Op::Restart => {
                            if let Some(i) = target {
                                s[i].push(Event::GatewayRestarted(ORDER[i]));
                            }
                            tick(&mut sup, now);
                        }
                        Op::Deleted => {
                            // Clients report Deleted only when asked.
                            if let (Some(i), Status::Deleting(_)) = (target, sup.status()) {
                                s[i].push(Event::Deleted(ORDER[i]));
                            }
                            tick(&mut sup, now);
                        }
                        Op::Advance(ms) => {
                            now = now.saturating_add(Duration::from_millis(ms));
                            sup.handle_timeout(now);
                        }
                        Op::Shutdown => sup.shutdown(now),
                    }

                    // One client at most is running (probing, installed or
                    // deleting).
                    let running: Vec<usize> = (0..s.len()).filter(|&i| s[i].running()).collect();
                    prop_assert!(running.len() <= 1, "running: {running:?}");

                    for event in events(&mut sup) {
                        prop_assert!(!done_seen, "event after shutdown finished: {event:?}");
                        match event {
                            SupervisorEvent::Installed { mapping, double_nat } => {
                                prop_assert_eq!(double_nat, mapping.is_double_nat());
                            }
                            SupervisorEvent::Deleted(_) | SupervisorEvent::DeleteFailed { .. } => {
                                done_seen = true;
                            }
                            _ => {}
                        }
                    }
                    prop_assert_eq!(done_seen, sup.is_done());

                    // At most one active mapping: the supervisor's, held by
                    // the one running client.
                    match sup.mapping() {
                        Some(m) => {
                            prop_assert_eq!(running.len(), 1);
                            let i = running[0];
                            prop_assert_eq!(ORDER[i], m.protocol);
                            prop_assert_eq!(s[i].get().mapping, Some(m));
                            prop_assert_eq!(sup.status(), Status::Installed(m.protocol));
                            prop_assert_eq!(
                                sup.reflex_override(),
                                (!m.is_double_nat()).then_some(m.external)
                            );
                        }
                        None => prop_assert_eq!(sup.reflex_override(), None),
                    }
                    match sup.status() {
                        Status::Probing(p) | Status::Deleting(p) => {
                            prop_assert_eq!(running.len(), 1);
                            prop_assert_eq!(ORDER[running[0]], p);
                        }
                        Status::Unavailable { .. } => {
                            prop_assert!(running.is_empty(), "running: {running:?}");
                        }
                        // Done may leave a client that never confirmed.
                        Status::Installed(_) | Status::Idle | Status::Done => {}
                    }
                }
            }
        }
    }
}
