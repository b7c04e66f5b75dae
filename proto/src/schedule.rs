//! The keep-alive train schedule (requirement R3).
//!
//! Both ends of a punch start sending keep-alives at the introduce's
//! `fire_at_ms`: an opener of three packets at *lead*, *lead + 100 ms* and
//! *lead + 250 ms*, then one every 250 ms until the punch is confirmed by both
//! sides (R10, decided by the endpoint machine) or the deadline passes.
//!
//! Everything here is pure and saturating: a far-future or `u64::MAX` fire time
//! is clamped to the deadline, a fire time in the past means "now", and no offset
//! ever exceeds `deadline + 250 ms`.

use core::time::Duration;

/// Spacing of the second opener packet after the first.
pub const OPENER_SECOND: Duration = Duration::from_millis(100);
/// Spacing of the third opener packet after the first.
pub const OPENER_THIRD: Duration = Duration::from_millis(250);
/// Interval between resends after the opener.
pub const RESEND_INTERVAL: Duration = Duration::from_millis(250);

/// The three opener offsets, measured from `now_ms` (R3).
///
/// `lead = fire_at_ms - now_ms`, saturating at 0 and clamped to `deadline`; the
/// other two are `lead + 100 ms` and `lead + 250 ms` with saturating adds. Pure,
/// total, and never beyond `deadline + 250 ms`.
#[must_use]
pub fn keepalive_send_offsets(fire_at_ms: u64, now_ms: u64, deadline: Duration) -> [Duration; 3] {
    let lead = Duration::from_millis(fire_at_ms.saturating_sub(now_ms)).min(deadline);
    [
        lead,
        lead.saturating_add(OPENER_SECOND),
        lead.saturating_add(OPENER_THIRD),
    ]
}

/// The whole train: the opener, then a resend every 250 ms up to the deadline.
///
/// An iterator of offsets from `now_ms`, strictly increasing. It yields the three
/// opener offsets of [`keepalive_send_offsets`] and then `lead + k × 250 ms`
/// (k ≥ 2) while that is no later than `deadline`. It is finite: at most
/// `3 + deadline / 250 ms` items.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeepaliveTrain {
    opener: [Duration; 3],
    deadline: Duration,
    /// Index of the next item: 0..3 opener, then resend number `next - 1`.
    next: u32,
}

impl KeepaliveTrain {
    /// The schedule for a punch introduced at `now_ms` that fires at `fire_at_ms`
    /// and must end by `deadline` after `now_ms`.
    #[must_use]
    pub fn new(fire_at_ms: u64, now_ms: u64, deadline: Duration) -> Self {
        KeepaliveTrain {
            opener: keepalive_send_offsets(fire_at_ms, now_ms, deadline),
            deadline,
            next: 0,
        }
    }

    /// The offset of the first packet (the clamped lead).
    #[must_use]
    pub fn lead(&self) -> Duration {
        self.opener[0]
    }

    /// The deadline this train was built with.
    #[must_use]
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The offset of the `n`th packet (0-based), if the train has one.
    #[must_use]
    pub fn offset(&self, n: u32) -> Option<Duration> {
        match n {
            0..=2 => self.opener.get(n as usize).copied(),
            _ => {
                // Resends continue the opener's 250 ms grid: lead + (n - 1) × 250 ms.
                let k = n.saturating_sub(1);
                let at = self.lead().checked_add(RESEND_INTERVAL.checked_mul(k)?)?;
                (at <= self.deadline).then_some(at)
            }
        }
    }
}

impl Iterator for KeepaliveTrain {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let out = self.offset(self.next)?;
        self.next = self.next.saturating_add(1);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(5);

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn r3_offsets_normal_lead() {
        assert_eq!(
            keepalive_send_offsets(1_500, 1_000, D),
            [ms(500), ms(600), ms(750)]
        );
    }

    #[test]
    fn r3_far_future_and_max_fire_time_clamp_to_deadline() {
        for fire in [u64::MAX, 1 << 63, 10_000_000] {
            assert_eq!(
                keepalive_send_offsets(fire, 0, D),
                [D, D + ms(100), D + ms(250)]
            );
        }
        // A deadline near Duration::MAX saturates instead of overflowing.
        let o = keepalive_send_offsets(u64::MAX, 0, Duration::MAX);
        assert_eq!(
            o,
            [ms(u64::MAX), ms(u64::MAX) + ms(100), ms(u64::MAX) + ms(250)]
        );
        let o = keepalive_send_offsets(0, 0, Duration::MAX);
        assert_eq!(o[0], Duration::ZERO);
    }

    #[test]
    fn r3_past_fire_time_means_now() {
        assert_eq!(
            keepalive_send_offsets(1_000, 5_000, D),
            [ms(0), ms(100), ms(250)]
        );
        assert_eq!(
            keepalive_send_offsets(0, u64::MAX, D),
            [ms(0), ms(100), ms(250)]
        );
    }

    #[test]
    fn train_resends_every_250ms_until_deadline() {
        let t: std::vec::Vec<_> = KeepaliveTrain::new(500, 0, ms(1_600)).collect();
        assert_eq!(
            t,
            [ms(500), ms(600), ms(750), ms(1_000), ms(1_250), ms(1_500)]
        );
        // Lead clamped to the deadline: the opener only.
        let t: std::vec::Vec<_> = KeepaliveTrain::new(u64::MAX, 0, ms(1_000)).collect();
        assert_eq!(t, [ms(1_000), ms(1_100), ms(1_250)]);
        // Default: 500 ms lead, 5 s deadline → opener + resends up to 5 s.
        let t: std::vec::Vec<_> = KeepaliveTrain::new(500, 0, D).collect();
        assert_eq!(t.len(), 3 + 17);
        assert_eq!(*t.last().unwrap(), ms(5_000));
    }
}
