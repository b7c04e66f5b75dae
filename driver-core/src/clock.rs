//! Maps the host's clocks onto the agent's time inputs.

use std::time::{Instant as StdInstant, SystemTime, UNIX_EPOCH};

use natrix_proto::Instant;

/// The node's clock: monotonic time since the node started, and wall-clock
/// Unix milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: StdInstant,
}

impl Clock {
    /// A clock whose origin is now.
    #[must_use]
    pub fn start() -> Self {
        Clock {
            origin: StdInstant::now(),
        }
    }

    /// A clock whose origin is `origin` (a runtime's own clock, see
    /// [`Runtime::now`](crate::Runtime::now)).
    #[must_use]
    pub fn at(origin: StdInstant) -> Self {
        Clock { origin }
    }

    /// The agent's `now`.
    #[must_use]
    pub fn now(&self) -> Instant {
        self.to_agent(StdInstant::now())
    }

    /// A std instant as the agent's instant (saturating at the origin).
    #[must_use]
    pub fn to_agent(&self, t: StdInstant) -> Instant {
        let nanos = t.saturating_duration_since(self.origin).as_nanos();
        Instant::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The agent's instant as a std instant (for timers).
    #[must_use]
    pub fn to_std(&self, t: Instant) -> StdInstant {
        self.origin
            .checked_add(t.since_origin())
            .unwrap_or_else(|| self.origin + std::time::Duration::from_secs(86_400 * 365))
    }

    /// Wall-clock Unix milliseconds (0 if the system clock is before 1970).
    #[must_use]
    pub fn wall_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}
