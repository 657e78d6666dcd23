//! A token's `limits`: what each counts, and the UTC calendar windows they
//! count in.
//!
//! - [`Limits`] is what an entry's `limits` says (requests and tokens per
//!   minute, tokens and dollars per day and month, dollars in total);
//! - [`Window`] is a UTC calendar window and its arithmetic.
//!
//! Amounts are integers (dollars as micro-dollars), so that counters add up
//! exactly in any store. Enforcement is [`crate::spend`]'s business.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Timelike, Utc};
use serde_json::Value;

/// A calendar window in UTC, or the token's whole life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Window {
    /// The current UTC minute.
    Minute,
    /// The current UTC day.
    Day,
    /// The current UTC month.
    Month,
    /// Since the first request.
    Total,
}

impl Window {
    /// All windows, shortest first.
    pub const ALL: [Window; 4] = [Self::Minute, Self::Day, Self::Month, Self::Total];

    /// The name used in keys and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Day => "day",
            Self::Month => "month",
            Self::Total => "total",
        }
    }

    /// The key of the window holding `at`: `minute:2026-12-01T13:16`,
    /// `day:2026-12-01`, `month:2026-12`, `total`.
    pub fn key(self, at: DateTime<Utc>) -> String {
        match self {
            Self::Minute => crate::clock::prefix("minute:", at, 16),
            Self::Day => crate::clock::prefix("day:", at, 10),
            Self::Month => crate::clock::prefix("month:", at, 7),
            Self::Total => "total".to_owned(),
        }
    }

    /// When the window holding `at` ends; `None` for the total.
    pub fn end(self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let day = at.date_naive();
        match self {
            Self::Minute => {
                let start = at.with_second(0)?.with_nanosecond(0)?;
                Some(start + Duration::minutes(1))
            }
            Self::Day => Some(midnight(day.succ_opt()?)),
            Self::Month => {
                let (year, month) = if day.month() == 12 {
                    (day.year() + 1, 1)
                } else {
                    (day.year(), day.month() + 1)
                };
                Some(midnight(NaiveDate::from_ymd_opt(year, month, 1)?))
            }
            Self::Total => None,
        }
    }

    /// Whole seconds from `at` to the window's end, at least 1.
    pub fn seconds_left(self, at: DateTime<Utc>) -> Option<u64> {
        let end = self.end(at)?;
        let millis = (end - at).num_milliseconds().max(0) as u64;
        Some(millis.div_ceil(1000).max(1))
    }
}

fn midnight(day: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).expect("midnight exists"))
}

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Measure {
    /// Requests forwarded.
    Requests,
    /// Input plus output tokens, as the upstream reports them.
    Tokens,
    /// Dollars, in micro-dollars.
    Usd,
}

impl Measure {
    /// The name used in messages and the usage endpoint.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Tokens => "tokens",
            Self::Usd => "usd",
        }
    }

    /// This measure of `amount`.
    pub fn of(self, amount: &Amount) -> i64 {
        match self {
            Self::Requests => amount.requests,
            Self::Tokens => amount.tokens,
            Self::Usd => amount.usd_micros,
        }
    }
}

/// One limit: at most `max` of `measure` in each `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// The entry's key for it, e.g. `tokens_per_day`.
    pub key: &'static str,
    /// Where it counts.
    pub window: Window,
    /// What it counts.
    pub measure: Measure,
    /// The most allowed (micro-dollars for USD).
    pub max: i64,
}

impl Limit {
    /// Whether a refusal by this limit is a rate limit (it resets within a
    /// minute, worth retrying) rather than an exhausted budget.
    pub fn is_rate(&self) -> bool {
        self.window == Window::Minute
    }
}

/// The keys of `limits`, what each counts and where.
pub const LIMIT_KEYS: [(&str, Window, Measure); 7] = [
    ("requests_per_minute", Window::Minute, Measure::Requests),
    ("tokens_per_minute", Window::Minute, Measure::Tokens),
    ("tokens_per_day", Window::Day, Measure::Tokens),
    ("tokens_per_month", Window::Month, Measure::Tokens),
    ("usd_per_day", Window::Day, Measure::Usd),
    ("usd_per_month", Window::Month, Measure::Usd),
    ("usd_total", Window::Total, Measure::Usd),
];

/// A token's limits, in the order of [`LIMIT_KEYS`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Limits(Vec<Limit>);

impl Limits {
    /// Reads an entry's `limits` object. Keys are case-insensitive; each
    /// value is a non-negative number (a whole one except for dollars).
    pub fn parse(value: &Value) -> Result<Self, String> {
        let Value::Object(map) = value else {
            return Err("`limits` must be an object".into());
        };
        let mut limits = Vec::new();
        for (key, value) in map {
            let Some(&(name, window, measure)) = LIMIT_KEYS
                .iter()
                .find(|(name, ..)| name.eq_ignore_ascii_case(key))
            else {
                let known: Vec<&str> = LIMIT_KEYS.iter().map(|(k, ..)| *k).collect();
                return Err(format!(
                    "`limits` has an unknown key `{}` (expected one of: {})",
                    key.chars().take(40).collect::<String>(),
                    known.join(", ")
                ));
            };
            if limits.iter().any(|l: &Limit| l.key == name) {
                return Err(format!("`limits` gives `{name}` more than once"));
            }
            let max = match (measure, value) {
                (Measure::Usd, Value::Number(n)) => n
                    .as_f64()
                    .filter(|v| v.is_finite() && *v >= 0.0 && *v < 1e12)
                    .map(|v| (v * 1e6).round() as i64),
                (_, Value::Number(n)) => n.as_u64().and_then(|v| i64::try_from(v).ok()),
                _ => None,
            };
            let Some(max) = max else {
                let kind = if measure == Measure::Usd {
                    "a non-negative number of dollars"
                } else {
                    "a non-negative whole number"
                };
                return Err(format!("`limits.{name}` must be {kind}"));
            };
            limits.push(Limit {
                key: name,
                window,
                measure,
                max,
            });
        }
        limits.sort_by_key(|l| LIMIT_KEYS.iter().position(|(k, ..)| *k == l.key));
        Ok(Self(limits))
    }

    /// The limits from `key=value` pairs (`tokens new --limit`).
    pub fn from_pairs(pairs: &[String]) -> Result<Self, String> {
        let mut map = serde_json::Map::new();
        for pair in pairs {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}`: a limit is written KEY=VALUE"))?;
            let number: serde_json::Number = value
                .trim()
                .parse()
                .map_err(|_| format!("`{pair}`: the value must be a number"))?;
            map.insert(key.trim().to_owned(), Value::Number(number));
        }
        Self::parse(&Value::Object(map))
    }

    /// The limits as an entry writes them.
    pub fn to_json(&self) -> Value {
        let mut map = serde_json::Map::new();
        for limit in &self.0 {
            let value = match limit.measure {
                Measure::Usd => serde_json::json!(limit.max as f64 / 1e6),
                _ => serde_json::json!(limit.max),
            };
            map.insert(limit.key.to_owned(), value);
        }
        Value::Object(map)
    }

    /// Each limit.
    pub fn iter(&self) -> impl Iterator<Item = &Limit> {
        self.0.iter()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether any limit counts dollars (then every request needs a price).
    pub fn has_usd(&self) -> bool {
        self.0.iter().any(|l| l.measure == Measure::Usd)
    }

    /// The windows that have a limit, shortest first.
    pub fn windows(&self) -> Vec<Window> {
        let mut windows: Vec<Window> = self.0.iter().map(|l| l.window).collect();
        windows.sort();
        windows.dedup();
        windows
    }

    /// The token's monthly dollar limit, else its total one (what billing
    /// dashboards show as the hard limit).
    pub fn hard_limit_usd(&self) -> Option<f64> {
        let find = |key: &str| self.0.iter().find(|l| l.key == key);
        find("usd_per_month")
            .or_else(|| find("usd_total"))
            .map(|l| l.max as f64 / 1e6)
    }
}

/// A quantity of each measure: what a request reserves or used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amount {
    /// Requests.
    pub requests: i64,
    /// Input plus output tokens.
    pub tokens: i64,
    /// Micro-dollars.
    pub usd_micros: i64,
}

/// The most a counter holds: 2^53 ([`crate::usage::MAX_COUNT`]), exact in
/// a double and far below `i64::MAX`, so that a sum of two never
/// overflows in Rust, SQLite or DynamoDB.
pub const MAX_COUNTER: i64 = 1 << 53;

/// `a + b` for counters: saturating at [`MAX_COUNTER`], never below 0.
pub fn counter_add(a: i64, b: i64) -> i64 {
    a.saturating_add(b).clamp(0, MAX_COUNTER)
}

/// A count from an unsigned number, saturating at [`MAX_COUNTER`].
pub fn counter(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX).min(MAX_COUNTER)
}

impl Amount {
    /// Dollars as micro-dollars, rounded up (so that a budget never
    /// undercounts), at most [`MAX_COUNTER`].
    pub fn micros(usd: f64) -> i64 {
        if usd.is_finite() && usd > 0.0 {
            // `as` saturates; the clamp bounds it for every store.
            ((usd * 1e6).ceil() as i64).min(MAX_COUNTER)
        } else if usd > 0.0 {
            MAX_COUNTER
        } else {
            0
        }
    }

    /// `self` less `other`, never below zero.
    pub fn minus(self, other: Amount) -> Amount {
        let less = |a: i64, b: i64| a.saturating_sub(b).max(0);
        Amount {
            requests: less(self.requests, other.requests),
            tokens: less(self.tokens, other.tokens),
            usd_micros: less(self.usd_micros, other.usd_micros),
        }
    }

    /// Each measure added, saturating ([`counter_add`]).
    pub fn plus(self, other: Amount) -> Amount {
        Amount {
            requests: counter_add(self.requests, other.requests),
            tokens: counter_add(self.tokens, other.tokens),
            usd_micros: counter_add(self.usd_micros, other.usd_micros),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn windows_are_utc_calendar_windows() {
        let t = at("2026-12-31T23:59:59.500Z");
        assert_eq!(Window::Minute.key(t), "minute:2026-12-31T23:59");
        assert_eq!(Window::Day.key(t), "day:2026-12-31");
        assert_eq!(Window::Month.key(t), "month:2026-12");
        assert_eq!(Window::Minute.end(t), Some(at("2027-01-01T00:00:00Z")));
        assert_eq!(Window::Day.end(t), Some(at("2027-01-01T00:00:00Z")));
        assert_eq!(Window::Month.end(t), Some(at("2027-01-01T00:00:00Z")));
        assert_eq!(Window::Total.end(t), None);
        assert_eq!(Window::Minute.seconds_left(t), Some(1));
        let feb = at("2028-02-29T12:00:00Z");
        assert_eq!(Window::Month.end(feb), Some(at("2028-03-01T00:00:00Z")));
        assert_eq!(Window::Day.seconds_left(feb), Some(12 * 3600));
        // The first instant of a window belongs to it, not to the one before.
        let start = at("2026-12-01T00:00:00Z");
        assert_eq!(Window::Day.key(start), "day:2026-12-01");
        assert_eq!(Window::Minute.seconds_left(start), Some(60));
    }

    #[test]
    fn limits_parse_strictly() {
        let limits = Limits::parse(&serde_json::json!({
            "USD_per_month": 5, "requests_per_minute": 20, "usd_per_day": 0.25
        }))
        .unwrap();
        let keys: Vec<_> = limits.iter().map(|l| (l.key, l.max)).collect();
        assert_eq!(
            keys,
            [
                ("requests_per_minute", 20),
                ("usd_per_day", 250_000),
                ("usd_per_month", 5_000_000)
            ]
        );
        assert!(limits.has_usd());
        assert_eq!(limits.hard_limit_usd(), Some(5.0));
        assert_eq!(
            limits.windows(),
            [Window::Minute, Window::Day, Window::Month]
        );
        assert_eq!(Limits::parse(&limits.to_json()).unwrap(), limits);
        for (bad, says) in [
            (serde_json::json!([1]), "must be an object"),
            (serde_json::json!({"rpm": 1}), "unknown key `rpm`"),
            (
                serde_json::json!({"tokens_per_day": -1}),
                "non-negative whole",
            ),
            (
                serde_json::json!({"tokens_per_day": 1.5}),
                "non-negative whole",
            ),
            (serde_json::json!({"usd_total": "5"}), "number of dollars"),
            (
                serde_json::json!({"usd_total": 1, "USD_TOTAL": 2}),
                "more than once",
            ),
        ] {
            let error = Limits::parse(&bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
        let pairs = Limits::from_pairs(&["usd_per_month=5".into(), "tokens_per_day=100".into()]);
        assert_eq!(pairs.unwrap().iter().count(), 2);
        assert!(Limits::from_pairs(&["usd_per_month".into()])
            .unwrap_err()
            .contains("KEY=VALUE"));
    }

    #[test]
    fn dollars_round_up_to_micro_dollars() {
        assert_eq!(Amount::micros(0.0000001), 1);
        assert_eq!(Amount::micros(1.5), 1_500_000);
        assert_eq!(Amount::micros(-1.0), 0);
        assert_eq!(Amount::micros(f64::NAN), 0);
        assert_eq!(Amount::micros(1e300), MAX_COUNTER);
        assert_eq!(Amount::micros(f64::INFINITY), MAX_COUNTER);
    }

    #[test]
    fn counters_saturate_instead_of_wrapping() {
        assert_eq!(counter_add(i64::MAX, i64::MAX), MAX_COUNTER);
        assert_eq!(counter_add(MAX_COUNTER, 1), MAX_COUNTER);
        assert_eq!(counter_add(-5, 2), 0);
        assert_eq!(counter(u64::MAX), MAX_COUNTER);
        let big = Amount {
            requests: 1,
            tokens: i64::MAX,
            usd_micros: MAX_COUNTER,
        };
        assert_eq!(big.plus(big).tokens, MAX_COUNTER);
    }
}
