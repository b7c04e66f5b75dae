//! Relay forwarding rate through a coordinator (issue #13, S3), per core,
//! against the unavoidable crypto of one relayed datagram measured in the
//! same run.
//!
//! Everything is in memory on one thread, no sockets: a coordinator
//! [`SessionControl`] (serving, `RelayConfig::default()` except that the
//! per-circuit rate and burst are raised to `u64::MAX`, so that no quota
//! throttles the benchmark) and peer `SessionControl`s whose sessions come up
//! by pumping their datagrams into each other through the [`ControlPlane`]
//! methods. Peer A of each pair opens a connection to its peer B on the
//! coordinator's relay (`open_connection`); the benchmark pumps until B
//! accepted it and one datagram went end to end.
//!
//! Then, per round, it records the datagrams A sends to the coordinator for
//! `n` calls of `send_data` (a relay frame on A's session with the
//! coordinator, carrying A's own session packet for B) and times only the
//! coordinator: `handle_datagram` for each (open A's packet, decode the frame,
//! quotas, encode the forward frame, seal it on B's session) and draining
//! `poll_transmit_into`. Every round asserts that every frame was forwarded
//! (one output each, to the right peer, of the right length; the relay's
//! counters agree; nothing refused), and delivers the round's last output to
//! its B, which must hand the payload to the application — so a rate can never
//! be a count of drops.
//!
//! Sizes: 64 B and `natrix_session::path::MAX_DATAGRAM` (1158 B), the largest
//! datagram a connection carries on any path (a relayed session packet of a
//! 1158-byte datagram plus the 9-byte relay header fill the 1200-byte session
//! payload). One circuit (a coordinator with two peers) and 1,000 circuits
//! (2,000 peers with sessions at the coordinator, the pairs taken
//! round-robin).
//!
//! Baseline, in alternating rounds of the same run: one session seal + one
//! session open of the coordinator's frame size (the relay frame: 9 + 33 +
//! payload bytes) between two bare `natrix_session::Endpoint`s — the AEAD
//! work a relay cannot avoid, since it must open A's outer packet and seal a
//! new one to B.
//!
//! Plain wall-clock timing, no criterion: each number is the median of five
//! rounds (after one warm-up round). Timing is reported, never asserted.
//!
//! `cargo bench -p natrix-driver-core --bench relay` for the numbers;
//! `… -- --quick` (or `--test`, CI) runs the same checks with small counts in
//! a few seconds.
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::SocketAddr;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant as WallClock};

use natrix_driver_core::{ControlInput, ControlPlane, SessionControl, SessionControlConfig};
use natrix_proto::Instant;
use natrix_session::path::MAX_DATAGRAM;
use natrix_session::relay::{CH_RELAY, FORWARD_HEADER_LEN, RelayConfig};
use natrix_session::wire::{TAG_LEN, TRANSPORT_HEADER_LEN};
use natrix_session::{Endpoint, Keypair, MAX_PACKET, PublicKey, Received, SessionConfig};

/// Unix time (ms) handed to the control planes.
const WALL: u64 = 1_700_000_000_000;
/// Virtual time per relayed datagram: a round of 50,000 is 50 ms, and the
/// whole run stays far below the session layer's keep-alive (10 s) and the
/// relay's idle close (60 s), so no timer is due (none is run).
const TICK: Duration = Duration::from_micros(1);
const SIZES: [usize; 2] = [64, MAX_DATAGRAM];

#[derive(Clone, Copy, Debug)]
struct Mode {
    quick: bool,
    /// Timed rounds per measurement (after one warm-up round).
    rounds: usize,
    /// Datagrams per round.
    ops: usize,
    /// Circuits in the "realistic size" case.
    circuits: usize,
}

impl Mode {
    fn from_args() -> Mode {
        if std::env::args().any(|a| a == "--quick" || a == "--test") {
            Mode {
                quick: true,
                rounds: 1,
                ops: 2_000,
                circuits: 50,
            }
        } else {
            Mode {
                quick: false,
                rounds: 5,
                ops: 50_000,
                circuits: 1_000,
            }
        }
    }
}

/// The virtual clock: only ever moves forward.
#[derive(Debug)]
struct Clock(u64);

impl Clock {
    fn now(&self) -> Instant {
        Instant::from_nanos(self.0)
    }
    fn advance(&mut self, by: Duration) -> Instant {
        self.0 += u64::try_from(by.as_nanos()).unwrap();
        self.now()
    }
}

fn keypair(i: u64) -> Keypair {
    let mut secret = [0u8; 32];
    secret[..8].copy_from_slice(&(i + 1).to_be_bytes());
    secret[31] = 0x55;
    Keypair::from_secret(secret)
}

fn seed(i: u64) -> [u8; 32] {
    let mut s = [0x33u8; 32];
    s[..8].copy_from_slice(&i.to_le_bytes());
    s
}

fn coordinator_addr() -> SocketAddr {
    "192.0.2.1:3478".parse().unwrap()
}

fn peer_addr(i: usize) -> SocketAddr {
    let o = u32::try_from(i + 1).unwrap().to_be_bytes();
    SocketAddr::from(([10, o[1], o[2], o[3]], 4000))
}

/// Every input a control plane has queued for its node's task.
fn inputs(ctl: &mut SessionControl) -> Vec<ControlInput> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    while let Poll::Ready(Some(i)) = ctl.poll_recv(&mut cx) {
        out.push(i);
    }
    out
}

/// One coordinator (node 0) and `2 × circuits` peers; circuit `i` is peer
/// `1 + 2i` (A, which opened it) to peer `2 + 2i` (B).
struct Net {
    nodes: Vec<SessionControl>,
    addrs: Vec<SocketAddr>,
    keys: Vec<PublicKey>,
    by_addr: BTreeMap<SocketAddr, usize>,
    buf: Vec<u8>,
}

impl Net {
    const COORDINATOR: usize = 0;

    fn add(&mut self, ctl: SessionControl, addr: SocketAddr) -> usize {
        let i = self.nodes.len();
        self.keys.push(ctl.public_key().unwrap());
        self.nodes.push(ctl);
        self.addrs.push(addr);
        assert!(self.by_addr.insert(addr, i).is_none());
        i
    }

    /// Moves datagrams between `who` until none is left.
    fn pump(&mut self, who: &[usize], now: Instant) {
        loop {
            let mut moved = false;
            for &i in who {
                while let Some((to, n)) = self.nodes[i].poll_transmit_into(&mut self.buf) {
                    moved = true;
                    let j = self.by_addr[&to];
                    let from = self.addrs[i];
                    assert!(self.nodes[j].handle_datagram(now, WALL, from, &self.buf[..n]));
                }
            }
            if !moved {
                break;
            }
        }
    }

    fn new(circuits: usize, clock: &mut Clock) -> Net {
        let mut net = Net {
            nodes: Vec::new(),
            addrs: Vec::new(),
            keys: Vec::new(),
            by_addr: BTreeMap::new(),
            buf: vec![0; 65_536],
        };
        let coordinator = SessionControl::new(
            keypair(u64::MAX - 1),
            SessionControlConfig {
                relay: Some(RelayConfig {
                    rate_bytes_per_sec: u64::MAX,
                    burst_bytes: u64::MAX,
                    ..RelayConfig::default()
                }),
                // Cookies off: in setup 2,000 peers handshake at one virtual
                // instant, far above the cookie threshold (S5), which is not
                // what is measured here.
                ..SessionControlConfig::coordinator(SessionConfig {
                    cookie_threshold: u32::MAX,
                    ..SessionConfig::default()
                })
            },
            seed(u64::MAX),
        );
        assert_eq!(net.add(coordinator, coordinator_addr()), Net::COORDINATOR);
        let ck = net.keys[Net::COORDINATOR];
        let now = clock.advance(Duration::from_millis(1));
        for c in 0..circuits {
            let mut pair = [0usize; 2];
            for (k, slot) in pair.iter_mut().enumerate() {
                let i = 2 * c + k;
                let mut ctl = SessionControl::new(
                    keypair(i as u64),
                    SessionControlConfig {
                        coordinators: vec![(ck, coordinator_addr())],
                        ..SessionControlConfig::default()
                    },
                    seed(i as u64),
                );
                ctl.handle_timeout(now, WALL); // dials the coordinator
                *slot = net.add(ctl, peer_addr(i));
            }
            let [a, b] = pair;
            net.pump(&[Net::COORDINATOR, a, b], now);
            for p in pair {
                assert!(net.nodes[Net::COORDINATOR].session(&net.keys[p]).is_some());
                assert_eq!(net.nodes[p].coordinators(), vec![ck]);
            }
            let (ka, kb) = (net.keys[a], net.keys[b]);
            net.nodes[a]
                .open_connection(now, WALL, kb, ck)
                .expect("connection opened");
            net.pump(&[Net::COORDINATOR, a, b], now);
            assert!(
                inputs(&mut net.nodes[b])
                    .iter()
                    .any(|i| matches!(i, ControlInput::Accepted { peer } if *peer == ka)),
                "B accepted A's relayed connection"
            );
            // One datagram end to end through the relay.
            net.nodes[a].send_data(now, &kb, b"hello").unwrap();
            net.pump(&[Net::COORDINATOR, a, b], now);
            assert!(
                inputs(&mut net.nodes[b]).iter().any(|i| matches!(
                    i, ControlInput::Data { peer, payload } if *peer == ka && &payload[..] == b"hello"
                )),
                "B received A's datagram through the relay"
            );
            inputs(&mut net.nodes[a]);
        }
        inputs(&mut net.nodes[Net::COORDINATOR]);
        let coordinator = &net.nodes[Net::COORDINATOR];
        assert_eq!(
            coordinator.session_stats().unwrap().sessions_live as usize,
            2 * circuits
        );
        let relay = coordinator.relay_stats().unwrap();
        assert_eq!(relay.circuits_opened as usize, circuits);
        assert_eq!(relay.refused_total(), 0);
        net
    }

    fn circuits(&self) -> usize {
        (self.nodes.len() - 1) / 2
    }
}

/// Datagrams A sent to the coordinator, back to back in one buffer.
#[derive(Default)]
struct Recording {
    bytes: Vec<u8>,
    /// (sender, start, length, the B it is for).
    spans: Vec<(usize, usize, usize, usize)>,
}

/// Has the A of circuit `k mod circuits` send `ops` datagrams of `size`
/// bytes to its B, and records what leaves A (one relay frame to the
/// coordinator each).
fn record(net: &mut Net, rec: &mut Recording, size: usize, ops: usize, now: Instant) {
    rec.bytes.clear();
    rec.spans.clear();
    let circuits = net.circuits();
    let coordinator = coordinator_addr();
    let outer = TRANSPORT_HEADER_LEN + 1 + frame_len(size) + TAG_LEN;
    let mut payload = vec![0xA5u8; size];
    for k in 0..ops {
        let c = k % circuits;
        let (a, b) = (1 + 2 * c, 2 + 2 * c);
        payload[0] = k as u8;
        let kb = net.keys[b];
        net.nodes[a].send_data(now, &kb, &payload).unwrap();
        let (to, n) = net.nodes[a]
            .poll_transmit_into(&mut net.buf)
            .expect("a relay frame");
        assert_eq!((to, n), (coordinator, outer));
        assert!(net.nodes[a].poll_transmit_into(&mut net.buf).is_none());
        let start = rec.bytes.len();
        rec.bytes.extend_from_slice(&net.buf[..n]);
        rec.spans.push((a, start, n, b));
    }
}

/// The coordinator's frame for a `size`-byte datagram: relay header + A's
/// session packet (header, channel byte, payload, tag).
fn frame_len(size: usize) -> usize {
    FORWARD_HEADER_LEN + TRANSPORT_HEADER_LEN + 1 + size + TAG_LEN
}

/// Feeds the recording to the coordinator and drains what it sends; returns
/// the wall time of that alone. Checks that every frame was forwarded.
fn relay_round(net: &mut Net, rec: &Recording, size: usize, clock: &mut Clock) -> Duration {
    let before = net.nodes[Net::COORDINATOR].relay_stats().unwrap();
    let mut out = vec![0u8; 65_536];
    let (mut forwarded, mut misrouted, mut bytes_in, mut bytes_out) = (0usize, 0usize, 0, 0);
    let mut last = (0, 0);
    let base = clock.0;
    let nanos = u64::try_from(TICK.as_nanos()).unwrap();
    let coordinator = &mut net.nodes[Net::COORDINATOR];
    let addrs = &net.addrs;
    let started = WallClock::now();
    for (k, &(from, start, len, to)) in rec.spans.iter().enumerate() {
        let now = Instant::from_nanos(base + k as u64 * nanos);
        coordinator.handle_datagram(now, WALL, addrs[from], &rec.bytes[start..start + len]);
        bytes_in += len;
        while let Some((dst, n)) = coordinator.poll_transmit_into(&mut out) {
            forwarded += 1;
            bytes_out += n;
            if dst != addrs[to] {
                misrouted += 1;
            }
            last = (to, n);
        }
    }
    let elapsed = started.elapsed();
    black_box(&out);
    clock.advance(TICK * u32::try_from(rec.spans.len()).unwrap());

    // Every frame forwarded, once, to the right peer, at the right size.
    let ops = rec.spans.len();
    assert_eq!(forwarded, ops, "one forwarded datagram per relay frame");
    assert_eq!(misrouted, 0);
    assert_eq!(bytes_out, bytes_in);
    let after = net.nodes[Net::COORDINATOR].relay_stats().unwrap();
    assert_eq!(
        (after.frames_forwarded - before.frames_forwarded) as usize,
        ops
    );
    assert_eq!(after.refused_total(), 0);
    assert_eq!(net.nodes[Net::COORDINATOR].dropped(), 0);
    // The last one, delivered: its B hands A's payload to the application.
    let (b, n) = last;
    let now = clock.advance(TICK);
    assert!(net.nodes[b].handle_datagram(now, WALL, coordinator_addr(), &out[..n]));
    let got = inputs(&mut net.nodes[b]);
    assert!(
        got.iter().any(|i| matches!(
            i, ControlInput::Data { peer, payload } if *peer == net.keys[b - 1] && payload.len() == size
        )),
        "the forwarded frame opens at B: {got:?}"
    );
    while net.nodes[b].poll_transmit_into(&mut out).is_some() {}
    elapsed
}

/// Two bare endpoints with a session (X dialled Y).
fn bare_pair() -> (Endpoint, Endpoint, SocketAddr) {
    let (xa, ya) = (peer_addr(100_000), peer_addr(100_001));
    let mut x = Endpoint::new(keypair(1 << 40), SessionConfig::default(), seed(1 << 40));
    let mut y = Endpoint::new(
        keypair((1 << 40) + 1),
        SessionConfig::default(),
        seed((1 << 40) + 1),
    );
    let t0 = Instant::from_millis(1);
    x.connect(t0, WALL, y.public_key(), ya).unwrap();
    let mut buf = [0u8; MAX_PACKET];
    loop {
        let mut moved = false;
        while let Some((_, n)) = x.poll_transmit(&mut buf) {
            moved = true;
            let _ = y.handle_datagram(t0, WALL, xa, &buf[..n]);
        }
        while let Some((_, n)) = y.poll_transmit(&mut buf) {
            moved = true;
            let _ = x.handle_datagram(t0, WALL, ya, &buf[..n]);
        }
        if !moved {
            break;
        }
    }
    assert!(y.session(&x.public_key()).is_some());
    (x, y, xa)
}

/// `ops` × (X seals a frame-sized payload, Y opens it): one session seal +
/// one session open, what the coordinator cannot avoid per relayed datagram.
fn baseline_round(
    pair: &mut (Endpoint, Endpoint, SocketAddr),
    len: usize,
    ops: usize,
    clock: &mut Clock,
) -> Duration {
    let (x, y, xa) = pair;
    let ky = y.public_key();
    let payload = vec![0x5Au8; len];
    let mut out = vec![0u8; MAX_PACKET];
    let mut opened = 0usize;
    let base = clock.0;
    let nanos = u64::try_from(TICK.as_nanos()).unwrap();
    let started = WallClock::now();
    for k in 0..ops {
        let now = Instant::from_nanos(base + k as u64 * nanos);
        let (_, n) = x
            .send(now, &ky, CH_RELAY, black_box(&payload), &mut out)
            .unwrap()
            .unwrap();
        if let Received::Data { payload, .. } = y.handle_datagram(now, WALL, *xa, &out[..n]) {
            if payload.len() == len {
                opened += 1;
            }
        }
    }
    let elapsed = started.elapsed();
    clock.advance(TICK * u32::try_from(ops).unwrap());
    assert_eq!(opened, ops, "every baseline packet opened");
    elapsed
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn ns_per_op(d: Duration, ops: usize) -> f64 {
    d.as_secs_f64() * 1e9 / ops as f64
}

fn main() {
    let mode = Mode::from_args();
    if mode.quick {
        println!("relay: quick mode: small counts, the numbers mean nothing");
    }
    let mut clock = Clock(0);
    let setup = WallClock::now();
    let mut nets = [Net::new(1, &mut clock), Net::new(mode.circuits, &mut clock)];
    let mut pair = bare_pair();
    println!(
        "setup: coordinators with {} and {} peer sessions, {} and {} relayed connections up ({:.1} s)",
        2,
        2 * mode.circuits,
        1,
        mode.circuits,
        setup.elapsed().as_secs_f64()
    );
    println!(
        "coordinator: handle_datagram + drain poll_transmit_into per relayed datagram, \
         one thread; baseline: bare Endpoint seal + open of the frame's size; \
         median of {} rounds × {} datagrams (after a warm-up round)",
        mode.rounds, mode.ops
    );
    println!(
        "{:>7} | {:>8} | {:>10} | {:>12} | {:>11} | {:>12} | {:>11} | {:>6} | {:>17}",
        "payload",
        "circuits",
        "frame B",
        "per datagram",
        "datagrams/s",
        "payload MB/s",
        "baseline",
        "ratio",
        "ratio per round"
    );
    let mut rec = Recording::default();
    for size in SIZES {
        let frame = frame_len(size);
        let mut relay_ns: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        let mut base_ns = Vec::new();
        for round in 0..=mode.rounds {
            let mut times = [0.0; 2];
            for (t, net) in times.iter_mut().zip(nets.iter_mut()) {
                let now = clock.advance(TICK);
                record(net, &mut rec, size, mode.ops, now);
                *t = ns_per_op(relay_round(net, &rec, size, &mut clock), mode.ops);
            }
            let b = ns_per_op(
                baseline_round(&mut pair, frame, mode.ops, &mut clock),
                mode.ops,
            );
            if round > 0 {
                relay_ns[0].push(times[0]);
                relay_ns[1].push(times[1]);
                base_ns.push(b);
            }
        }
        let base = median(base_ns.clone());
        for (which, net) in nets.iter().enumerate() {
            let ns = median(relay_ns[which].clone());
            let per_round: Vec<f64> = relay_ns[which]
                .iter()
                .zip(&base_ns)
                .map(|(r, b)| r / b)
                .collect();
            let lo = per_round.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = per_round.iter().copied().fold(0.0, f64::max);
            let rate = 1e9 / ns;
            println!(
                "{:>5} B | {:>8} | {:>8} B | {:>9.0} ns | {:>9.0} k | {:>12.1} | {:>8.0} ns | {:>5.2}× | {:>7.2}–{:.2}×",
                size,
                net.circuits(),
                frame,
                ns,
                rate / 1e3,
                rate * size as f64 / 1e6,
                base,
                ns / base,
                lo,
                hi
            );
        }
    }
}
