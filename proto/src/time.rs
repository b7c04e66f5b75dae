//! Time as an input.
//!
//! The proto crate never reads a clock. Drivers pass two kinds of time in:
//!
//! * [`Instant`]: monotonic, nanoseconds since an origin the driver picks (for
//!   example the moment it started). Timers and deadlines are `Instant`s. All
//!   arithmetic saturates, so no input can overflow or panic (quinn#290 shows what
//!   a subtracting `Instant` can do).
//! * Wall-clock Unix milliseconds, a plain `u64`, needed only because
//!   `PunchIntroduce::fire_at_ms` is an absolute wall-clock time on the wire.
//!   It is stamped in the coordinator's clock; the agent reads it in its own
//!   clock with [`peer_wall_to_local`] and the coordinator's offset
//!   ([`Agent::handle_clock_offset`](crate::Agent::handle_clock_offset)).

use core::fmt;
use core::ops::{Add, AddAssign, Sub};
use core::time::Duration;

/// A monotonic instant: nanoseconds since a driver-chosen origin.
///
/// Works without `std`. `Instant + Duration` saturates at [`Instant::MAX`];
/// `Instant - Instant` saturates at [`Duration::ZERO`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(u64);

impl Instant {
    /// The origin.
    pub const ZERO: Instant = Instant(0);
    /// The latest representable instant (about 584 years after the origin);
    /// used as "never".
    pub const MAX: Instant = Instant(u64::MAX);

    /// An instant `nanos` nanoseconds after the origin.
    #[must_use]
    pub const fn from_nanos(nanos: u64) -> Self {
        Instant(nanos)
    }

    /// An instant `millis` milliseconds after the origin (saturating).
    #[must_use]
    pub const fn from_millis(millis: u64) -> Self {
        Instant(millis.saturating_mul(1_000_000))
    }

    /// Nanoseconds since the origin.
    #[must_use]
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// The time elapsed since the origin.
    #[must_use]
    pub const fn since_origin(self) -> Duration {
        Duration::from_nanos(self.0)
    }

    /// `self + d`, saturating at [`Instant::MAX`].
    #[must_use]
    pub fn saturating_add(self, d: Duration) -> Instant {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_add(nanos))
    }

    /// `self - d`, saturating at [`Instant::ZERO`].
    #[must_use]
    pub fn saturating_sub(self, d: Duration) -> Instant {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_sub(nanos))
    }

    /// `self + d`, or `None` on overflow.
    #[must_use]
    pub fn checked_add(self, d: Duration) -> Option<Instant> {
        let nanos = u64::try_from(d.as_nanos()).ok()?;
        self.0.checked_add(nanos).map(Instant)
    }

    /// The time from `earlier` to `self`, or zero when `earlier` is later.
    #[must_use]
    pub const fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    /// Saturating.
    fn add(self, d: Duration) -> Instant {
        self.saturating_add(d)
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, d: Duration) {
        *self = self.saturating_add(d);
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    /// Saturating: a later `rhs` gives zero.
    fn sub(self, rhs: Instant) -> Duration {
        self.saturating_duration_since(rhs)
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Instant({:?})", self.since_origin())
    }
}

/// The earlier of two optional deadlines (`None` means "nothing scheduled").
#[must_use]
pub fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A wall-clock time `peer_ms` read on a peer's clock, converted to ours:
/// `peer_ms - offset_ms`, where `offset_ms` is the peer's wall clock minus
/// ours. Saturates at `0` and `u64::MAX`; an offset of 0 changes nothing.
#[must_use]
pub fn peer_wall_to_local(peer_ms: u64, offset_ms: i64) -> u64 {
    if offset_ms >= 0 {
        peer_ms.saturating_sub(offset_ms.unsigned_abs())
    } else {
        peer_ms.saturating_add(offset_ms.unsigned_abs())
    }
}

/// Converts a duration to whole milliseconds, saturating at `u64::MAX`.
#[must_use]
pub fn duration_to_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Instant::from_millis(5);
        assert_eq!(t + Duration::MAX, Instant::MAX);
        assert_eq!(Instant::MAX + Duration::from_nanos(1), Instant::MAX);
        assert_eq!(t.saturating_sub(Duration::from_secs(1)), Instant::ZERO);
        assert_eq!(Instant::ZERO - t, Duration::ZERO);
        assert_eq!(t - Instant::ZERO, Duration::from_millis(5));
        assert_eq!(t.checked_add(Duration::MAX), None);
        assert_eq!(Instant::from_millis(u64::MAX), Instant::MAX);
        let mut u = t;
        u += Duration::from_millis(1);
        assert_eq!(u, Instant::from_millis(6));
    }

    #[test]
    fn peer_wall_time_converts_and_saturates() {
        assert_eq!(peer_wall_to_local(10_500, 10_000), 500);
        assert_eq!(peer_wall_to_local(500, -10_000), 10_500);
        assert_eq!(peer_wall_to_local(500, 0), 500);
        assert_eq!(peer_wall_to_local(5, i64::MAX), 0);
        assert_eq!(peer_wall_to_local(u64::MAX - 1, i64::MIN), u64::MAX);
        assert_eq!(peer_wall_to_local(0, i64::MIN), 1 << 63);
    }

    #[test]
    fn millis_conversion_saturates() {
        assert_eq!(duration_to_millis(Duration::MAX), u64::MAX);
        assert_eq!(duration_to_millis(Duration::from_micros(2500)), 2);
    }
}
