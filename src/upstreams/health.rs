//! Whether an upstream is worth an attempt: a circuit breaker, a rest after
//! a `429` that said how long, and a key the upstream refused.
//!
//! State is per process (per Lambda container): each instance learns an
//! upstream's health from its own attempts. It is judged by the gateway's
//! [`crate::clock::Clock`], so tests move time instead of waiting.
//!
//! - **Breaker**: [`Breaker::failures`] failures within [`Breaker::window`]
//!   open it for [`Breaker::cool_down`]; then one request at a time may try
//!   (a probe, itself good for one cool-down), until one succeeds.
//! - **Rest**: a `429` with `retry-after` (or OpenAI's `x-ratelimit-reset-*`)
//!   rests the upstream that long (at most [`MAX_REST`]).
//! - **Dead**: a `401` to the gateway's own key marks that key dead: the
//!   upstream is not tried with it again. Another key (the entry changed
//!   on a reload, or its SSM parameter now holds another) brings it back.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// The longest rest an upstream's `retry-after` can impose: a hostile or
/// broken upstream cannot park itself for a year.
pub const MAX_REST: Duration = Duration::from_secs(3600);

/// When a breaker opens, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    /// Failures that open it.
    pub failures: u32,
    /// Within this long of the first of them.
    pub window: Duration,
    /// How long it stays open before a probe.
    pub cool_down: Duration,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            failures: 5,
            window: Duration::from_secs(30),
            cool_down: Duration::from_secs(30),
        }
    }
}

/// What an upstream is, as `GET /v1/gateway/upstreams` and the metrics say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Taking requests.
    Ok,
    /// Its breaker is open until then (then it takes a probe).
    Open(DateTime<Utc>),
    /// Resting after a `429`, until then.
    Resting(DateTime<Utc>),
    /// Its key was refused.
    Dead,
}

impl Status {
    /// The name written to logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Open(_) => "open",
            Self::Resting(_) => "resting",
            Self::Dead => "dead",
        }
    }
}

/// Whether to try an upstream now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Yes.
    Try,
    /// Yes, as the one probe of an open breaker.
    Probe,
    /// No; it may take requests again at `until` (never, for a dead key).
    Skip {
        /// When it recovers, if ever.
        until: Option<DateTime<Utc>>,
    },
}

/// One upstream's health.
#[derive(Debug, Default)]
pub struct Health {
    breaker: Breaker,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Failures counted since `since`.
    failures: u32,
    since: Option<DateTime<Utc>>,
    open_until: Option<DateTime<Utc>>,
    /// While a probe is out, no other request may probe (until then).
    probe_until: Option<DateTime<Utc>>,
    resting_until: Option<DateTime<Utc>>,
    /// The key refused (its [`crate::secret::ApiKey::fingerprint`]).
    dead: Option<u64>,
    /// Every failure, for the upstreams report.
    failed_total: u64,
}

fn later(now: DateTime<Utc>, by: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(by)
        .ok()
        .and_then(|by| now.checked_add_signed(by))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl Health {
    /// Health judged by `breaker`.
    pub fn new(breaker: Breaker) -> Self {
        Self {
            breaker,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a few numbers: one that a panic left half-written is
        // still a state.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a request may try this upstream at `now` with the gateway's
    /// key of that fingerprint (`None`: the request sends a key of its own,
    /// which a refusal of the gateway's says nothing about).
    pub fn admit(&self, now: DateTime<Utc>, key: Option<u64>) -> Admission {
        let mut s = self.state();
        match (s.dead, key) {
            (Some(dead), Some(key)) if dead == key => return Admission::Skip { until: None },
            (Some(_), Some(_)) => {
                // Its key was replaced: the new one is worth a try.
                s.dead = None;
                tracing::info!("an upstream whose key was refused has another now: tried again");
            }
            (Some(_), None) | (None, _) => {}
        }
        if let Some(until) = s.resting_until.filter(|t| now < *t) {
            return Admission::Skip { until: Some(until) };
        }
        match s.open_until {
            None => Admission::Try,
            Some(until) if now < until => Admission::Skip { until: Some(until) },
            Some(_) => match s.probe_until {
                Some(until) if now < until => Admission::Skip { until: Some(until) },
                _ => {
                    s.probe_until = Some(later(now, self.breaker.cool_down));
                    Admission::Probe
                }
            },
        }
    }

    /// The upstream answered (anything but a failure): the breaker closes.
    pub fn succeeded(&self) {
        let mut s = self.state();
        s.failures = 0;
        s.since = None;
        s.open_until = None;
        s.probe_until = None;
    }

    /// The upstream failed at `now` (could not be reached, timed out, a
    /// `5xx`): counted, and the breaker opens at the threshold. A failed
    /// probe opens it again.
    pub fn failed(&self, now: DateTime<Utc>) {
        let mut s = self.state();
        s.failed_total = s.failed_total.saturating_add(1);
        let in_window = s
            .since
            .is_some_and(|since| now < later(since, self.breaker.window));
        if !in_window {
            s.since = Some(now);
            s.failures = 0;
        }
        s.failures = s.failures.saturating_add(1);
        let probing = s.open_until.is_some();
        if probing || s.failures >= self.breaker.failures.max(1) {
            s.open_until = Some(later(now, self.breaker.cool_down));
            s.probe_until = None;
        }
    }

    /// The upstream asked for a rest (`429` with how long): none is tried
    /// before `now + rest` (at most [`MAX_REST`]).
    pub fn rest(&self, now: DateTime<Utc>, rest: Duration) {
        let mut s = self.state();
        s.failed_total = s.failed_total.saturating_add(1);
        let until = later(now, rest.min(MAX_REST));
        s.resting_until = Some(s.resting_until.map_or(until, |t| t.max(until)));
    }

    /// The upstream refused the gateway's key (of that fingerprint): not
    /// tried with it again.
    pub fn kill(&self, key: u64) {
        let mut s = self.state();
        s.failed_total = s.failed_total.saturating_add(1);
        s.dead = Some(key);
    }

    /// What it is at `now`, and its failures so far.
    pub fn status(&self, now: DateTime<Utc>) -> (Status, u64) {
        let s = self.state();
        let status = if s.dead.is_some() {
            Status::Dead
        } else if let Some(until) = s.resting_until.filter(|t| now < *t) {
            Status::Resting(until)
        } else if let Some(until) = s.open_until.filter(|t| now < *t) {
            Status::Open(until)
        } else {
            Status::Ok
        };
        (status, s.failed_total)
    }
}

/// How long a `429` asks to wait: `retry-after-ms`, `retry-after` (seconds
/// or an HTTP date), else the larger of OpenAI's `x-ratelimit-reset-requests`
/// and `x-ratelimit-reset-tokens` (`1s`, `6m0s`, `20ms`). `None` when none
/// says. Every figure is the upstream's, so it is bounded by [`MAX_REST`].
pub fn rest_asked(headers: &http::HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let asked = if let Some(ms) = text("retry-after-ms").and_then(|t| t.trim().parse::<f64>().ok())
    {
        secs_f64(ms / 1e3)
    } else if let Some(value) = text("retry-after") {
        match value.trim().parse::<u64>() {
            Ok(seconds) => Some(Duration::from_secs(seconds)),
            Err(_) => DateTime::parse_from_rfc2822(value.trim())
                .ok()
                .map(|at| (at.with_timezone(&Utc) - now).to_std().unwrap_or_default()),
        }
    } else {
        ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
            .iter()
            .filter_map(|name| text(name).and_then(go_duration))
            .max()
    };
    asked.map(|d| d.min(MAX_REST))
}

fn secs_f64(seconds: f64) -> Option<Duration> {
    (seconds.is_finite() && seconds >= 0.0)
        .then(|| Duration::from_secs_f64(seconds.min(MAX_REST.as_secs_f64())))
}

/// A Go-style duration as OpenAI writes it: `1s`, `6m0s`, `1h2m3.5s`, `20ms`.
fn go_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() || rest.len() > 32 {
        return None;
    }
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit..];
        total += number * scale;
    }
    secs_f64(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 7, 12, 0, 0).unwrap()
    }

    fn secs(n: i64) -> chrono::Duration {
        chrono::Duration::seconds(n)
    }

    #[test]
    fn the_breaker_opens_at_the_threshold_and_lets_one_probe_through_after_its_cool_down() {
        let health = Health::new(Breaker {
            failures: 3,
            window: Duration::from_secs(10),
            cool_down: Duration::from_secs(30),
        });
        let now = t0();
        health.failed(now);
        health.failed(now + secs(1));
        assert_eq!(health.admit(now + secs(2), Some(1)), Admission::Try);
        health.failed(now + secs(2));
        let until = now + secs(32);
        assert_eq!(
            health.admit(now + secs(3), Some(1)),
            Admission::Skip { until: Some(until) }
        );
        assert_eq!(health.status(now + secs(3)), (Status::Open(until), 3));
        // After the cool-down: one probe, and while it is out, no other.
        assert_eq!(health.admit(until, Some(1)), Admission::Probe);
        assert!(matches!(
            health.admit(until + secs(1), Some(1)),
            Admission::Skip { .. }
        ));
        // The probe fails: open again for a cool-down.
        health.failed(until + secs(1));
        assert_eq!(
            health.admit(until + secs(2), Some(1)),
            Admission::Skip {
                until: Some(until + secs(31))
            }
        );
        // A probe that never reports back frees the next after a cool-down.
        assert_eq!(health.admit(until + secs(31), Some(1)), Admission::Probe);
        assert_eq!(health.admit(until + secs(61), Some(1)), Admission::Probe);
        // A probe that succeeds closes it.
        health.succeeded();
        assert_eq!(health.admit(until + secs(62), Some(1)), Admission::Try);
        assert_eq!(health.status(until + secs(62)).0, Status::Ok);
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let health = Health::new(Breaker {
            failures: 2,
            window: Duration::from_secs(10),
            cool_down: Duration::from_secs(30),
        });
        health.failed(t0());
        health.failed(t0() + secs(11));
        assert_eq!(health.admit(t0() + secs(12), Some(1)), Admission::Try);
        health.failed(t0() + secs(12));
        assert!(matches!(
            health.admit(t0() + secs(13), Some(1)),
            Admission::Skip { .. }
        ));
    }

    #[test]
    fn a_rest_and_a_dead_key_skip_the_upstream() {
        let health = Health::default();
        health.rest(t0(), Duration::from_secs(20));
        assert_eq!(
            health.admit(t0() + secs(19), Some(1)),
            Admission::Skip {
                until: Some(t0() + secs(20))
            }
        );
        assert_eq!(health.admit(t0() + secs(20), Some(1)), Admission::Try);
        // A year's rest is an hour's.
        health.rest(t0(), Duration::from_secs(365 * 86_400));
        assert_eq!(health.status(t0()).0, Status::Resting(t0() + secs(3600)));
        health.kill(1);
        assert_eq!(
            health.admit(t0() + secs(7200), Some(1)),
            Admission::Skip { until: None }
        );
        assert_eq!(health.status(t0()).0, Status::Dead);
        // A token's own key is not the one refused: it may try.
        assert_eq!(health.admit(t0() + secs(7200), None), Admission::Try);
        assert_eq!(health.status(t0() + secs(7200)).0, Status::Dead);
        // Another key of the gateway's (the entry or its SSM parameter
        // changed): tried again, and no longer dead.
        assert_eq!(health.admit(t0() + secs(7200), Some(2)), Admission::Try);
        assert_eq!(health.status(t0() + secs(7200)).0, Status::Ok);
    }

    #[test]
    fn the_rest_asked_for_is_read_from_each_header_and_bounded() {
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut map = http::HeaderMap::new();
            for (k, v) in pairs {
                map.insert(*k, v.parse().unwrap());
            }
            map
        };
        let now = t0();
        let d = Duration::from_secs;
        assert_eq!(
            rest_asked(&headers(&[("retry-after", "7")]), now),
            Some(d(7))
        );
        assert_eq!(
            rest_asked(&headers(&[("retry-after-ms", "1500")]), now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            rest_asked(
                &headers(&[("retry-after", "Mon, 07 Dec 2026 12:00:09 GMT")]),
                now
            ),
            Some(d(9))
        );
        assert_eq!(
            rest_asked(
                &headers(&[
                    ("x-ratelimit-reset-requests", "1s"),
                    ("x-ratelimit-reset-tokens", "6m0s")
                ]),
                now
            ),
            Some(d(360))
        );
        assert_eq!(
            rest_asked(&headers(&[("x-ratelimit-reset-tokens", "20ms")]), now),
            Some(Duration::from_millis(20))
        );
        assert_eq!(
            rest_asked(&headers(&[("retry-after", "99999999999999")]), now),
            Some(MAX_REST)
        );
        for hostile in ["-5", "NaN", "inf", "1e400", ""] {
            assert_eq!(
                rest_asked(&headers(&[("retry-after-ms", hostile)]), now),
                None,
                "{hostile}"
            );
        }
        assert_eq!(
            rest_asked(&headers(&[("x-ratelimit-reset-tokens", "5x")]), now),
            None
        );
        assert_eq!(rest_asked(&headers(&[]), now), None);
    }
}
