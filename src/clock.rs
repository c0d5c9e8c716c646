//! Injectable time, so expiry edges can be tested to the second.

use std::fmt;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeDelta, Utc};

/// A source of the current time. Keygate reads it for every expiry decision and timestamp.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;

    /// The current time in microseconds since the Unix epoch: what every verify reads.
    /// The default derives it from [`now`](Self::now); override it when that is cheaper.
    fn now_micros(&self) -> i64 {
        self.now().timestamp_micros()
    }
}

/// A shared clock is a clock: keep one handle and give the gate another.
impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> DateTime<Utc> {
        (**self).now()
    }

    fn now_micros(&self) -> i64 {
        (**self).now_micros()
    }
}

/// The system clock ([`Utc::now`]); the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn now_micros(&self) -> i64 {
        // No calendar arithmetic: this is on every verify.
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(since) => i64::try_from(since.as_micros()).unwrap_or(i64::MAX),
            Err(before) => i64::try_from(before.duration().as_micros())
                .unwrap_or(i64::MAX)
                .saturating_neg(),
        }
    }
}

/// A clock that only moves when told to: for tests of expiry edges.
///
/// ```
/// use chrono::{TimeDelta, TimeZone, Utc};
/// use keygate::{Clock, ManualClock};
///
/// let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap());
/// clock.advance(TimeDelta::seconds(30));
/// assert_eq!(clock.now(), Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 30).unwrap());
/// ```
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    /// A clock standing at `now`.
    pub fn new(now: DateTime<Utc>) -> Self {
        Self(Mutex::new(now))
    }

    /// Moves the clock to `now` (backwards too).
    pub fn set(&self, now: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = now;
    }

    /// Moves the clock by `delta` (forward; backward when negative). It never panics:
    /// a move past the ends of [`DateTime<Utc>`]'s range stops at
    /// [`DateTime::<Utc>::MAX_UTC`] or [`DateTime::<Utc>::MIN_UTC`].
    pub fn advance(&self, delta: TimeDelta) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *now = now
            .checked_add_signed(delta)
            .unwrap_or(if delta < TimeDelta::zero() {
                DateTime::<Utc>::MIN_UTC
            } else {
                DateTime::<Utc>::MAX_UTC
            });
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ManualClock").field(&self.now()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_saturates_instead_of_panicking() {
        let start = DateTime::<Utc>::UNIX_EPOCH;
        let clock = ManualClock::new(start);
        clock.advance(TimeDelta::MAX);
        assert_eq!(clock.now(), DateTime::<Utc>::MAX_UTC);
        clock.advance(TimeDelta::seconds(1));
        assert_eq!(clock.now(), DateTime::<Utc>::MAX_UTC);
        clock.set(start);
        clock.advance(TimeDelta::MIN);
        assert_eq!(clock.now(), DateTime::<Utc>::MIN_UTC);
        clock.set(start);
        clock.advance(TimeDelta::seconds(-30));
        assert_eq!(clock.now(), start - TimeDelta::seconds(30));
    }
}
