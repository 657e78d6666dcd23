//! The time the gateway goes by: token expiry, limit windows, reservation
//! lifetimes, `resets_at` and the usage reports read it here, never from
//! `Utc::now()` directly, so that a test can move it instead of waiting.
//!
//! The gateway runs on [`Clock::system`]; [`Clock::manual`] is a clock
//! that stands still until it is moved ([`Clock::advance`], [`Clock::set`]).
//! A clone shares the time of the clock it was cloned from.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};

/// Where the time comes from. Cheap to clone; the system clock is the default.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// `None`: the system's time. `Some`: microseconds since the epoch,
    /// shared by every clone.
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system's time.
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock standing at `at` until it is moved.
    pub fn manual(at: DateTime<Utc>) -> Self {
        Self {
            manual: Some(Arc::new(AtomicI64::new(at.timestamp_micros()))),
        }
    }

    /// The time now.
    pub fn now(&self) -> DateTime<Utc> {
        match &self.manual {
            None => Utc::now(),
            Some(micros) => Utc
                .timestamp_micros(micros.load(Ordering::Acquire))
                .single()
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        }
    }

    /// Moves a manual clock on by `by` (saturating); the system clock
    /// cannot be moved, and is left as it is.
    pub fn advance(&self, by: chrono::Duration) {
        if let Some(micros) = &self.manual {
            let by = by.num_microseconds().unwrap_or(i64::MAX);
            let _ = micros.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_add(by))
            });
        }
    }

    /// Sets a manual clock to `at`; the system clock is left as it is.
    pub fn set(&self, at: DateTime<Utc>) {
        if let Some(micros) = &self.manual {
            micros.store(at.timestamp_micros(), Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_stands_still_until_moved_and_its_clones_move_with_it() {
        let start = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 59).unwrap();
        let clock = Clock::manual(start);
        let clone = clock.clone();
        assert_eq!(clock.now(), start);
        clock.advance(chrono::Duration::seconds(2));
        assert_eq!(clone.now(), start + chrono::Duration::seconds(2));
        clone.set(start);
        assert_eq!(clock.now(), start);
        clock.advance(chrono::Duration::MAX);
        assert!(clock.now() > start, "saturates instead of wrapping");
    }

    #[test]
    fn the_system_clock_is_the_systems_and_cannot_be_moved() {
        let clock = Clock::system();
        clock.advance(chrono::Duration::days(365));
        let gap = (clock.now() - Utc::now()).num_seconds().abs();
        assert!(gap < 60, "{gap}");
    }
}
