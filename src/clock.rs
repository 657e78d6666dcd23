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

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, digit by digit (chrono's `format` parses
/// its pattern again on every call): the access line's time, and, cut
/// short, the limits' window keys and the usage rows' days and hours. A
/// year outside 0–9999 is clamped to it; [`prefix`] writes such a year as
/// chrono does.
pub fn stamp(at: DateTime<Utc>) -> [u8; 27] {
    use chrono::{Datelike, Timelike};
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |from: usize, width: usize, mut n: u32| {
        for i in (from..from + width).rev() {
            out[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    // Each of `DateTime`'s getters converts to local time again: once.
    let (date, time) = (at.date_naive(), at.time());
    put(0, 4, date.year().clamp(0, 9999) as u32);
    put(5, 2, date.month());
    put(8, 2, date.day());
    put(11, 2, time.hour());
    put(14, 2, time.minute());
    put(17, 2, time.second());
    // A leap second's nanoseconds run past a billion.
    put(20, 6, (time.nanosecond() / 1_000).min(999_999));
    out
}

/// The length of [`stamp`]'s minute, `YYYY-MM-DDTHH:MM`.
const MINUTE: usize = 16;

/// The first [`MINUTE`] bytes of [`stamp`] of `at`, remembered per thread
/// for the last minute asked: every limited request asks for its windows'
/// keys (a minute, a day, a month) at admission and again at settlement,
/// and they change once a minute.
fn minute_stamp(at: DateTime<Utc>) -> [u8; MINUTE] {
    use std::cell::Cell;
    thread_local! {
        static LAST: Cell<Option<(i64, [u8; MINUTE])>> = const { Cell::new(None) };
    }
    // A leap second's time is the minute's last second: the same minute.
    let minute = at.timestamp().div_euclid(60);
    LAST.with(|last| match last.get() {
        Some((m, digits)) if m == minute => digits,
        _ => {
            let mut digits = [0; MINUTE];
            digits.copy_from_slice(&stamp(at)[..MINUTE]);
            last.set(Some((minute, digits)));
            digits
        }
    })
}

/// The first `len` characters of [`stamp`] (`7`: the month, `10`: the day,
/// `13`: the hour, `16`: the minute), after `head`: as chrono's `%Y-%m…`
/// would write them, in any year.
pub fn prefix(head: &str, at: DateTime<Utc>, len: usize) -> String {
    use chrono::Datelike;
    let len = len.min(27);
    let mut out = String::with_capacity(head.len() + len);
    out.push_str(head);
    if (0..=9999).contains(&at.year()) {
        let (minute, whole);
        let digits: &[u8] = if len <= MINUTE {
            minute = minute_stamp(at);
            &minute[..len]
        } else {
            whole = stamp(at);
            &whole[..len]
        };
        // ASCII digits and separators only, so always text.
        out.push_str(std::str::from_utf8(digits).unwrap_or_default());
    } else {
        let full = at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        let year_extra = full.len() - 27;
        out.push_str(full.get(..len + year_extra).unwrap_or(&full));
    }
    out
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
    fn stamps_and_their_prefixes_are_as_chrono_writes_them() {
        for at in [
            Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
            Utc.with_ymd_and_hms(1999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(10_000, 3, 4, 5, 6, 7).unwrap(),
            Utc.with_ymd_and_hms(-5, 3, 4, 5, 6, 7).unwrap(),
        ] {
            for (len, pattern) in [
                (7, "%Y-%m"),
                (10, "%Y-%m-%d"),
                (13, "%Y-%m-%dT%H"),
                (16, "%Y-%m-%dT%H:%M"),
            ] {
                assert_eq!(
                    prefix("k:", at, len),
                    format!("k:{}", at.format(pattern)),
                    "{at}"
                );
            }
        }
    }

    #[test]
    fn a_remembered_minute_is_never_another_minutes() {
        use chrono::Timelike;
        // Forwards within a minute, over its end, back in time, a leap
        // second, a year's end: each prefix as chrono writes it.
        let start = Utc.with_ymd_and_hms(2026, 12, 31, 23, 58, 30).unwrap();
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .and_then(|d| d.and_hms_nano_opt(23, 59, 59, 1_500_000_000))
            .map(|t| Utc.from_utc_datetime(&t))
            .unwrap();
        let mut times = vec![];
        for seconds in [0, 1, 29, 30, 89, 90, 91, -1, -31, -3600, 0, 86_400 * 400] {
            times.push(start + chrono::Duration::seconds(seconds));
        }
        times.extend([leap, leap + chrono::Duration::milliseconds(600), leap]);
        times.push(Utc.with_ymd_and_hms(1969, 12, 31, 23, 59, 59).unwrap());
        times.push(Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap());
        for at in times {
            for (len, pattern) in [(7, "%Y-%m"), (10, "%Y-%m-%d"), (16, "%Y-%m-%dT%H:%M")] {
                assert_eq!(prefix("", at, len), at.format(pattern).to_string(), "{at}");
            }
            // A leap second's stamp is its minute's last microsecond.
            let whole = match at.time().nanosecond() >= 1_000_000_000 {
                true => at.format("%Y-%m-%dT%H:%M:59.999999Z"),
                false => at.format("%Y-%m-%dT%H:%M:%S%.6fZ"),
            };
            assert_eq!(stamp(at).as_slice(), whole.to_string().as_bytes(), "{at}");
        }
    }

    #[test]
    fn the_system_clock_is_the_systems_and_cannot_be_moved() {
        let clock = Clock::system();
        clock.advance(chrono::Duration::days(365));
        let gap = (clock.now() - Utc::now()).num_seconds().abs();
        assert!(gap < 60, "{gap}");
    }
}
