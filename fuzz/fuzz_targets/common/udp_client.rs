//! What the PCP and NAT-PMP client targets share: arbitrary steps (datagrams
//! from the gateway or from elsewhere, well-formed answers with arbitrary
//! fields, timer advances, deletes, restarts) driven into a started client,
//! with the checks every step must pass: each transmit is a UDP datagram to
//! the gateway's port 5351 (P1) that the protocol's decoder accepts, and an
//! installed mapping is for the requested internal address on a real port.

use std::net::SocketAddr;
use std::time::Duration;

use arbitrary::Arbitrary;
use natrix_portmap::{Client, Instant, Mapping, Transmit};

/// One step; `A` is the protocol's own well-formed answer.
#[derive(Debug, Arbitrary)]
pub enum Action<A> {
    /// A datagram from the gateway.
    FromGateway(Vec<u8>),
    /// A datagram from another host.
    FromElsewhere([u8; 4], u16, Vec<u8>),
    /// A well-formed answer with arbitrary fields.
    Answer(A),
    Timeout,
    Delete,
    Start,
}

/// The protocol-specific half of a target.
pub trait Protocol {
    /// The client under test.
    type Client: Client;
    /// The well-formed answers it can be fed.
    type Answer;
    /// The client.
    fn client(&mut self) -> &mut Self::Client;
    /// The datagram for `answer`.
    fn answer(&mut self, answer: Self::Answer) -> Vec<u8>;
    /// Checks one request the client sent (it went to the gateway).
    fn sent(&mut self, payload: &[u8]);
    /// Checks an installed mapping beyond the shared checks.
    fn installed(&self, mapping: &Mapping) {
        let _ = mapping;
    }
}

/// Starts the client and drives it through at most 256 `steps`.
pub fn drive<P: Protocol>(
    p: &mut P,
    gw: SocketAddr,
    internal: SocketAddr,
    steps: Vec<(u16, Action<P::Answer>)>,
) {
    let mut now = Instant::ZERO;
    p.client().start(now);
    for (advance_ms, action) in steps.into_iter().take(256) {
        now = now.saturating_add(Duration::from_millis(u64::from(advance_ms)));
        match action {
            Action::FromGateway(d) => p.client().handle_udp(now, gw, &d),
            Action::FromElsewhere(ip, port, d) => {
                p.client().handle_udp(now, SocketAddr::from((ip, port)), &d);
            }
            Action::Answer(a) => {
                let d = p.answer(a);
                p.client().handle_udp(now, gw, &d);
            }
            Action::Timeout => {
                if let Some(t) = p.client().poll_timeout() {
                    now = now.max(t);
                }
                p.client().handle_timeout(now);
            }
            Action::Delete => p.client().delete(now),
            Action::Start => p.client().start(now),
        }
        while let Some(t) = p.client().poll_transmit() {
            let Transmit::Udp { to, payload } = t else {
                panic!("a UDP client sent HTTP");
            };
            assert_eq!(to, gw, "P1");
            p.sent(&payload);
        }
        while p.client().poll_event().is_some() {}
        if let Some(m) = p.client().mapping() {
            assert_eq!(m.internal, internal);
            assert_ne!(m.external.port(), 0);
            p.installed(&m);
        }
    }
}
