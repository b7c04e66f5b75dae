//! Reliable delivery over the (unreliable) session transport: one peer's
//! sender and receiver state.
//!
//! A reliable message travels as channel-0 kind `03` (stream, message id,
//! channel, payload) and is acknowledged with kind `04` (stream, ids); the
//! layouts are in [`crate::wire::reliable`]. The sender numbers its messages
//! 0, 1, 2, … within a *stream* — a random nonzero u32 it picks the first time
//! it sends reliably to the peer, so a peer whose state was discarded and
//! rebuilt (a new session after `Down` on one side only) is never mistaken for
//! the old one. It retransmits each message with its own timeout until it is
//! acknowledged or `reliable_timeout` has passed since the first
//! transmission. The receiver acknowledges every copy it receives and
//! delivers each id at most once ([`ReplayWindow`] over the ids, extended to
//! 64 bits). Order is not preserved.
//!
//! Timers: each unacknowledged message has exactly one live entry in a
//! per-peer min-heap (lazy deletion; the top is always live, so the peer's
//! deadline — and `poll_timeout` — stays exact).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use natrix_proto::Instant;

use crate::replay::ReplayWindow;
use crate::wire::MAX_ACK_IDS;

/// Shortest retransmission timeout.
pub(crate) const RTO_MIN: Duration = Duration::from_millis(100);
/// Longest retransmission timeout (the doubling stops here).
pub(crate) const RTO_MAX: Duration = Duration::from_secs(1);
/// Retransmission timeout while no round trip to the peer is known.
pub(crate) const RTO_INITIAL: Duration = Duration::from_millis(500);
/// The oldest unacknowledged message may be at most this many ids behind the
/// next one: half the receiver's duplicate window, so an id the sender still
/// retransmits is always inside the receiver's window.
pub(crate) const MAX_ID_SPAN: u64 = ReplayWindow::WINDOW / 2;
/// Most acknowledgements waiting to be sent to one peer (more are not
/// recorded: the sender retransmits and is acknowledged then).
pub(crate) const MAX_PENDING_ACKS: usize = 4 * MAX_ACK_IDS;
/// Spare payload buffers an endpoint keeps for reuse.
pub(crate) const POOL_MAX: usize = 128;

/// One unacknowledged message.
pub(crate) struct Pending {
    /// 64-bit message number; the wire id is its low 32 bits.
    pub(crate) seq: u64,
    pub(crate) channel: u8,
    pub(crate) payload: Vec<u8>,
    /// First transmission; `None` while it waits for the session.
    first_sent: Option<Instant>,
    transmissions: u32,
    /// The time of its one live timer entry (retransmission or expiry).
    due: Instant,
    expires: Instant,
}

impl Pending {
    pub(crate) fn id(&self) -> u32 {
        // The wire id: the low 32 bits (wrapping).
        (self.seq & u64::from(u32::MAX)) as u32
    }
}

/// What a due timer asks for.
pub(crate) enum Due {
    /// Retransmit message `seq` (its next timer is already set).
    Retransmit(u64),
    /// Message given up: its buffer, for the pool.
    Expired(Vec<u8>),
}

/// What an arriving reliable message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// New: deliver it (and acknowledge).
    Deliver,
    /// Seen before (or older than the window): acknowledge only.
    Duplicate,
    /// From a stream the peer has since replaced: ignore.
    Stale,
}

/// The receiver's view of the peer's current stream.
struct Rx {
    stream: u32,
    /// Highest extended id received (the first id of a stream maps to
    /// 2^32 + id, so ids just below it still extend without underflow).
    top: u64,
    window: ReplayWindow,
}

/// Reliable-delivery state toward one peer (both directions).
pub(crate) struct Reliable {
    /// Our stream id (0 until first used).
    pub(crate) stream: u32,
    next_seq: u64,
    /// Unacknowledged messages in `seq` order.
    pending: VecDeque<Pending>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Smoothed round trip from acknowledgements of messages sent once (Karn).
    srtt: Option<Duration>,
    unsent: usize,
    rx: Option<Rx>,
    /// The peer's previous stream: its stragglers are ignored.
    retired: u32,
    /// Ids to acknowledge (all on `rx`'s stream).
    acks: VecDeque<u32>,
    /// An acknowledgement is in the endpoint's transmit queue.
    pub(crate) ack_queued: bool,
}

impl Reliable {
    pub(crate) fn new() -> Self {
        Reliable {
            stream: 0,
            next_seq: 0,
            pending: VecDeque::new(),
            timers: BinaryHeap::new(),
            srtt: None,
            unsent: 0,
            rx: None,
            retired: 0,
            acks: VecDeque::new(),
            ack_queued: false,
        }
    }

    /// Unacknowledged messages (sent or waiting for the session).
    pub(crate) fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Whether one more message fits: fewer than `window` unacknowledged, and
    /// the oldest within [`MAX_ID_SPAN`] of the next id.
    pub(crate) fn has_room(&self, window: usize) -> bool {
        self.pending.len() < window
            && self
                .pending
                .front()
                .is_none_or(|p| self.next_seq - p.seq < MAX_ID_SPAN)
    }

    /// Messages waiting for the session.
    pub(crate) fn unsent(&self) -> usize {
        self.unsent
    }

    /// The retransmission timeout for a new transmission: twice the round
    /// trip (ours from acknowledgements, else the session's `fallback`),
    /// within [`RTO_MIN`]..=[`RTO_MAX`]; [`RTO_INITIAL`] with no round trip.
    pub(crate) fn rto(&self, fallback: Option<Duration>) -> Duration {
        self.srtt.or(fallback).map_or(RTO_INITIAL, |rtt| {
            rtt.saturating_mul(2).clamp(RTO_MIN, RTO_MAX)
        })
    }

    /// Appends a message (not yet transmitted); returns its `seq`.
    pub(crate) fn push(&mut self, channel: u8, payload: Vec<u8>, now: Instant) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push_back(Pending {
            seq,
            channel,
            payload,
            first_sent: None,
            transmissions: 0,
            due: now,
            expires: now,
        });
        self.unsent += 1;
        seq
    }

    /// First transmission of every message still waiting for the session;
    /// `sent(seq)` is called for each, in order.
    pub(crate) fn start_unsent(
        &mut self,
        now: Instant,
        rto: Duration,
        timeout: Duration,
        mut sent: impl FnMut(u64),
    ) {
        if self.unsent == 0 {
            return;
        }
        for p in self.pending.iter_mut().filter(|p| p.first_sent.is_none()) {
            p.first_sent = Some(now);
            p.transmissions = 1;
            p.expires = now + timeout;
            p.due = (now + rto).min(p.expires);
            self.timers.push(Reverse((p.due, p.seq)));
            sent(p.seq);
        }
        self.unsent = 0;
    }

    /// The message `seq`, if still unacknowledged.
    pub(crate) fn get(&self, seq: u64) -> Option<&Pending> {
        let i = self.pending.binary_search_by_key(&seq, |p| p.seq).ok()?;
        self.pending.get(i)
    }

    /// The earliest timer (always a live one).
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    fn is_live(&self, t: Instant, seq: u64) -> bool {
        self.get(seq).is_some_and(|p| p.due == t)
    }

    /// Pops stale timer entries off the top, and rebuilds the heap when
    /// stale entries outnumber live ones by far.
    fn clean_top(&mut self) {
        while let Some(&Reverse((t, seq))) = self.timers.peek() {
            if self.is_live(t, seq) {
                break;
            }
            self.timers.pop();
        }
        if self.timers.len() > 2 * self.pending.len() + 32 {
            self.timers.clear();
            for p in self.pending.iter().filter(|p| p.first_sent.is_some()) {
                self.timers.push(Reverse((p.due, p.seq)));
            }
        }
    }

    /// The next timer due at `now`, handled: a message whose deadline passed
    /// is removed; any other is rescheduled and returned for retransmission.
    /// After its k-th transmission a message waits `rto × 2^(k−1)`, at most
    /// [`RTO_MAX`], with `rto` from the round trip known now (so a message
    /// first sent before any round trip was measured speeds up once one is).
    /// `None` when nothing more is due.
    pub(crate) fn pop_due(&mut self, now: Instant, fallback: Option<Duration>) -> Option<Due> {
        let rto = self.rto(fallback);
        loop {
            let &Reverse((t, seq)) = self.timers.peek()?;
            if t > now {
                return None;
            }
            self.timers.pop();
            let Ok(i) = self.pending.binary_search_by_key(&seq, |p| p.seq) else {
                continue;
            };
            let p = &mut self.pending[i];
            if p.due != t {
                continue;
            }
            if now >= p.expires {
                let p = self.pending.remove(i).expect("found above");
                self.clean_top();
                return Some(Due::Expired(p.payload));
            }
            let backoff = 1u32 << p.transmissions.min(16);
            p.transmissions += 1;
            p.due = (now + rto.saturating_mul(backoff).min(RTO_MAX)).min(p.expires);
            self.timers.push(Reverse((p.due, seq)));
            self.clean_top();
            return Some(Due::Retransmit(seq));
        }
    }

    /// The peer acknowledged `id` on `stream`: the message's buffer, when
    /// this acknowledged an outstanding message.
    pub(crate) fn ack(&mut self, stream: u32, id: u32, now: Instant) -> Option<Vec<u8>> {
        if stream != self.stream || stream == 0 {
            return None;
        }
        // The newest `seq` whose low 32 bits are `id`, below `next_seq`.
        let back = u64::from((self.next_seq as u32).wrapping_sub(id));
        if back == 0 || back > self.next_seq {
            return None;
        }
        let seq = self.next_seq - back;
        let i = self.pending.binary_search_by_key(&seq, |p| p.seq).ok()?;
        let p = self.pending.get(i)?;
        let sent = p.first_sent?;
        if p.transmissions == 1 {
            let sample = now.saturating_duration_since(sent);
            self.srtt = Some(match self.srtt {
                None => sample,
                Some(s) => (s * 7 + sample) / 8,
            });
        }
        let p = self.pending.remove(i).expect("found above");
        self.clean_top();
        Some(p.payload)
    }

    /// Removes every unacknowledged message (the session ended); their
    /// buffers go to `pool`. Returns how many there were.
    pub(crate) fn clear_pending(&mut self, mut pool: impl FnMut(Vec<u8>)) -> u64 {
        let n = self.pending.len() as u64;
        for p in self.pending.drain(..) {
            pool(p.payload);
        }
        self.timers.clear();
        self.unsent = 0;
        n
    }

    /// A reliable message `id` on the peer's `stream` arrived (authenticated).
    pub(crate) fn arrive(&mut self, stream: u32, id: u32) -> Arrival {
        match &mut self.rx {
            Some(rx) if rx.stream == stream => {
                // The extended id nearest to the highest one seen.
                let delta = i64::from(id.wrapping_sub(rx.top as u32) as i32);
                let ext = rx.top.saturating_add_signed(delta);
                if rx.window.commit(ext) {
                    rx.top = rx.top.max(ext);
                    Arrival::Deliver
                } else {
                    Arrival::Duplicate
                }
            }
            _ if stream == self.retired => Arrival::Stale,
            rx => {
                // A new stream: the peer's reliable state is new. Ids of the
                // old stream still waiting for an acknowledgement are
                // forgotten (they would be sent under the new stream's name).
                if let Some(old) = rx.take() {
                    self.retired = old.stream;
                }
                self.acks.clear();
                let top = (1u64 << 32) | u64::from(id);
                let mut window = ReplayWindow::new();
                window.commit(top);
                self.rx = Some(Rx {
                    stream,
                    top,
                    window,
                });
                Arrival::Deliver
            }
        }
    }

    /// Records that `id` (on the current receive stream) must be
    /// acknowledged; true when no acknowledgement is queued yet (the caller
    /// queues one).
    pub(crate) fn want_ack(&mut self, id: u32) -> bool {
        if self.acks.len() < MAX_PENDING_ACKS {
            self.acks.push_back(id);
        }
        !std::mem::replace(&mut self.ack_queued, true)
    }

    /// Writes the receive stream and up to [`MAX_ACK_IDS`] ids to
    /// acknowledge into `out` (stream at 0..4, ids after); returns the number
    /// of bytes, or `None` when there is nothing to acknowledge.
    pub(crate) fn take_acks(&mut self, out: &mut [u8]) -> Option<usize> {
        let stream = self.rx.as_ref()?.stream;
        if self.acks.is_empty() {
            return None;
        }
        out[..4].copy_from_slice(&stream.to_be_bytes());
        let mut n = 4;
        for _ in 0..MAX_ACK_IDS {
            let Some(id) = self.acks.pop_front() else {
                break;
            };
            out[n..n + 4].copy_from_slice(&id.to_be_bytes());
            n += 4;
        }
        Some(n)
    }

    /// Ids still waiting to be acknowledged.
    pub(crate) fn acks_waiting(&self) -> bool {
        !self.acks.is_empty()
    }

    /// Forgets queued acknowledgements (no keys to send them with).
    pub(crate) fn clear_acks(&mut self) {
        self.acks.clear();
        self.ack_queued = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Instant {
        Instant::from_millis(n)
    }

    #[test]
    fn ids_extend_across_the_u32_wrap() {
        let mut r = Reliable::new();
        assert_eq!(r.arrive(9, u32::MAX - 1), Arrival::Deliver);
        assert_eq!(r.arrive(9, u32::MAX), Arrival::Deliver);
        assert_eq!(r.arrive(9, 0), Arrival::Deliver);
        assert_eq!(r.arrive(9, 1), Arrival::Deliver);
        assert_eq!(r.arrive(9, u32::MAX), Arrival::Duplicate);
        assert_eq!(r.arrive(9, 0), Arrival::Duplicate);
        assert_eq!(r.arrive(9, u32::MAX - 3), Arrival::Deliver);
        // A new stream replaces the old; the old one's stragglers are ignored,
        // and its ids are not acknowledged under the new stream's name.
        assert!(r.want_ack(u32::MAX - 3));
        assert_eq!(r.arrive(10, 5), Arrival::Deliver);
        assert!(!r.want_ack(5));
        let mut out = [0u8; 64];
        assert_eq!(r.take_acks(&mut out), Some(8));
        assert_eq!(out[..8], [0, 0, 0, 10, 0, 0, 0, 5]);
        r.ack_queued = false;
        assert_eq!(r.arrive(9, 2), Arrival::Stale);
        assert_eq!(r.arrive(10, 5), Arrival::Duplicate);
        assert_eq!(r.arrive(10, 4), Arrival::Deliver);
    }

    #[test]
    fn acks_find_their_message_and_sample_the_round_trip() {
        let mut r = Reliable::new();
        r.stream = 77;
        for i in 0..3u8 {
            r.push(1, vec![i], ms(0));
        }
        let mut sent = Vec::new();
        r.start_unsent(ms(0), RTO_MIN, Duration::from_secs(5), |s| sent.push(s));
        assert_eq!(sent, [0, 1, 2]);
        assert_eq!(r.next_due(), Some(ms(100)));
        assert!(r.ack(78, 1, ms(40)).is_none(), "other stream");
        assert!(r.ack(77, 3, ms(40)).is_none(), "not sent yet");
        assert_eq!(r.ack(77, 1, ms(40)), Some(vec![1]));
        assert!(r.ack(77, 1, ms(41)).is_none(), "acknowledged once");
        assert_eq!(r.srtt, Some(Duration::from_millis(40)));
        assert_eq!(r.in_flight(), 2);
        // Retransmissions double the timeout, capped; expiry at 5 s.
        let mut times = Vec::new();
        let mut t = 0;
        while r.in_flight() > 0 {
            t = r.next_due().unwrap().as_nanos() / 1_000_000;
            while let Some(d) = r.pop_due(ms(t), None) {
                if let Due::Retransmit(0) = d {
                    times.push(t);
                }
            }
        }
        assert_eq!(times, [100, 300, 700, 1500, 2500, 3500, 4500]);
        assert_eq!(t, 5000);
        assert!(r.timers.is_empty());
    }
}
