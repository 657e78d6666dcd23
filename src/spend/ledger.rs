//! The counters of the embedded store, kept in memory: what each limited
//! window of each token used and holds, the reservations in flight, and
//! what is still to be written to the file.
//!
//! The SQLite store ([`super::sqlite`]) holds its file exclusively, so these
//! counters are the truth while the process runs: an admission is a few
//! map lookups under one lock, not a transaction. Every change is also
//! queued, summed by key (so the queue is bounded by tokens, windows and
//! models, never by requests), for the store's writer to commit.
//!
//! Nothing here touches the disk or the clock: the store hands in the
//! times and the rows it read.

use std::collections::BTreeSet;

// The ledger is looked up a dozen times a request: foldhash (seeded per
// process, as hashbrown's own default) rather than SipHash.
use foldhash::HashMap;
use std::sync::Arc;

use chrono::NaiveDate;

use super::store::{first_exhausted, Admission, Ask, Reservation, Row, Settlement, WindowState};
use super::{Amount, Window};

/// One window of one token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counter {
    /// Settled usage (what the file holds, plus what is queued).
    pub used: Amount,
    /// Held by reservations in flight.
    pub reserved: Amount,
    /// When the window ends (Unix seconds); `None` for a total.
    pub ends: Option<i64>,
}

/// A reservation in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The token.
    pub token: Arc<str>,
    /// The keys of the windows it holds.
    pub windows: Vec<String>,
    /// What it holds in each.
    pub amount: Amount,
    /// When it stops counting (Unix seconds).
    pub expires: i64,
}

/// A report row's key: token, UTC day and hour, model and upstream.
pub type RowKey = (Arc<str>, NaiveDate, u8, String, Arc<str>);

/// What is still to be written, summed by key.
#[derive(Debug, Default)]
pub struct Pending {
    /// Usage to add to each (token, window) row, with the row's expiry.
    pub windows: HashMap<(Arc<str>, String), (Amount, Option<i64>)>,
    /// Usage to add to each (token, day, hour, model, upstream) report row.
    pub rows: HashMap<RowKey, Row>,
    /// Reservations to insert (those released before being written never are).
    pub reserve: HashMap<String, Held>,
    /// Reservations to delete.
    pub release: Vec<String>,
}

impl Pending {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
            && self.rows.is_empty()
            && self.reserve.is_empty()
            && self.release.is_empty()
    }

    /// Puts back a batch whose commit failed, under what came since
    /// (sums are added; a reservation released since is deleted after it is
    /// inserted, as the commit orders them).
    pub fn merge_back(&mut self, failed: Pending) {
        for (key, (amount, expires)) in failed.windows {
            let entry = self
                .windows
                .entry(key)
                .or_insert((Amount::default(), expires));
            entry.0 = entry.0.plus(amount);
        }
        for (key, row) in failed.rows {
            let entry = self.rows.entry(key).or_default();
            entry.requests = crate::limits::counter_add(entry.requests, row.requests);
            entry.input_tokens = crate::limits::counter_add(entry.input_tokens, row.input_tokens);
            entry.cached_tokens =
                crate::limits::counter_add(entry.cached_tokens, row.cached_tokens);
            entry.output_tokens =
                crate::limits::counter_add(entry.output_tokens, row.output_tokens);
            entry.cost_usd = crate::limits::counter_add(entry.cost_usd, row.cost_usd);
            entry.estimated_requests =
                crate::limits::counter_add(entry.estimated_requests, row.estimated_requests);
        }
        for (id, held) in failed.reserve {
            self.reserve.entry(id).or_insert(held);
        }
        let mut release = failed.release;
        release.append(&mut self.release);
        self.release = release;
    }
}

/// The counters, the reservations and the queue of one store.
#[derive(Debug, Default)]
pub struct Ledger {
    counters: HashMap<Arc<str>, HashMap<String, Counter>>,
    held: HashMap<String, Held>,
    expiring: BTreeSet<(i64, String)>,
    /// What the writer has still to commit.
    pub pending: Pending,
}

impl Ledger {
    /// Stops counting the reservations expired at `now` (their process,
    /// or their request, is gone); their rows are deleted with the next commit.
    pub fn prune(&mut self, now: i64) {
        while let Some(first) = self.expiring.first() {
            if first.0 > now {
                break;
            }
            let Some((_, id)) = self.expiring.pop_first() else {
                break;
            };
            if let Some(held) = self.held.remove(&id) {
                self.unhold(&held);
                self.release(id);
            }
        }
    }

    /// Forgets windows that ended more than `grace` seconds before `now`
    /// and hold nothing: memory is bounded by tokens and live windows.
    /// (A settlement that arrives later for such a window is still written.)
    pub fn evict(&mut self, now: i64, grace: i64) {
        for windows in self.counters.values_mut() {
            windows.retain(|_, c| {
                c.ends.is_none_or(|end| end.saturating_add(grace) > now)
                    || c.reserved != Amount::default()
            });
        }
        self.counters.retain(|_, windows| !windows.is_empty());
    }

    /// The keys of `keys` whose counters are not in memory (to be read from the file).
    pub fn missing<'k>(
        &self,
        token: &str,
        keys: &'k [(Window, String)],
    ) -> Vec<&'k (Window, String)> {
        let windows = self.counters.get(token);
        keys.iter()
            .filter(|(_, key)| windows.is_none_or(|w| !w.contains_key(key)))
            .collect()
    }

    /// Takes a counter read from the file, unless one is in memory already
    /// (which is then the truer one).
    pub fn load(&mut self, token: &str, key: String, counter: Counter) {
        let windows = match self.counters.get_mut(token) {
            Some(windows) => windows,
            None => self.counters.entry(Arc::from(token)).or_default(),
        };
        windows.entry(key).or_insert(counter);
    }

    /// The state of `token`'s windows `keys` (in memory; `None` for one that is not).
    pub fn state(&self, token: &str, key: &str) -> Option<WindowState> {
        let counter = self.counters.get(token)?.get(key)?;
        Some(WindowState {
            used: counter.used,
            reserved: counter.reserved,
        })
    }

    /// Checks and reserves, for the windows `keys` of `ask.now` (all in
    /// memory: see [`Ledger::missing`]). Atomic: the caller holds the lock.
    pub fn admit(&mut self, ask: Ask, keys: Vec<(Window, String)>) -> Admission {
        let now = ask.now.timestamp();
        self.prune(now);
        let mut states = Vec::with_capacity(keys.len());
        for (window, key) in &keys {
            states.push((*window, self.state(&ask.token, key).unwrap_or_default()));
        }
        if let Some(refusal) = first_exhausted(&ask.limits, &states, ask.now) {
            return Admission::Refused(refusal);
        }
        let token: Arc<str> = match self.counters.get_key_value(ask.token.as_str()) {
            Some((token, _)) => token.clone(),
            None => Arc::from(ask.token.as_str()),
        };
        let windows: Vec<String> = keys.into_iter().map(|(_, k)| k).collect();
        let held = Held {
            token: token.clone(),
            windows: windows.clone(),
            amount: ask.reserve,
            expires: ask.expires.timestamp(),
        };
        self.hold(ask.id.clone(), held.clone());
        self.pending.reserve.insert(ask.id.clone(), held);
        Admission::Granted(Reservation {
            id: ask.id,
            token: ask.token,
            windows,
            amount: ask.reserve,
        })
    }

    /// Counts a reservation read back from the file at start-up (left by a
    /// process that died): it holds its windows until it expires.
    pub fn hold(&mut self, id: String, held: Held) {
        let counters = self.counters.entry(held.token.clone()).or_default();
        for key in &held.windows {
            let counter = counters.entry(key.clone()).or_default();
            counter.reserved = counter.reserved.plus(held.amount);
        }
        self.expiring.insert((held.expires, id.clone()));
        self.held.insert(id, held);
    }

    /// Records a finished request: its reservation is dropped, its usage
    /// counted and queued.
    pub fn settle(&mut self, s: &Settlement) {
        if let Some(reservation) = &s.reservation {
            // An expired reservation was released already.
            if let Some(held) = self.held.remove(&reservation.id) {
                self.expiring
                    .remove(&(held.expires, reservation.id.clone()));
                self.unhold(&held);
                self.release(reservation.id.clone());
            }
        }
        if !s.used {
            return;
        }
        let amount = s.amount();
        for key in &s.windows {
            if let Some(counter) = self
                .counters
                .get_mut(&*s.token)
                .and_then(|windows| windows.get_mut(key))
            {
                counter.used = counter.used.plus(amount);
            }
            let entry = self
                .pending
                .windows
                .entry((s.token.clone(), key.clone()))
                .or_insert_with(|| (Amount::default(), row_expiry(key, s.at)));
            entry.0 = entry.0.plus(amount);
        }
        if s.row {
            self.pending
                .rows
                .entry((
                    s.token.clone(),
                    s.at.date_naive(),
                    u8::try_from(chrono::Timelike::hour(&s.at)).unwrap_or(0),
                    s.model.to_string(),
                    s.upstream.clone(),
                ))
                .or_default()
                .add(s);
        }
    }

    fn unhold(&mut self, held: &Held) {
        if let Some(counters) = self.counters.get_mut(&held.token) {
            for key in &held.windows {
                if let Some(counter) = counters.get_mut(key) {
                    counter.reserved = counter.reserved.minus(held.amount);
                }
            }
        }
    }

    fn release(&mut self, id: String) {
        // Made and released between two commits: never written at all.
        if self.pending.reserve.remove(&id).is_none() {
            self.pending.release.push(id);
        }
    }

    /// Reservations in flight (for tests and figures).
    pub fn in_flight(&self) -> usize {
        self.held.len()
    }

    /// Windows in memory (for tests and figures).
    pub fn windows_held(&self) -> usize {
        self.counters.values().map(HashMap::len).sum()
    }
}

/// How long a minute window's row is kept in the file after it ends.
pub const KEEP_MINUTES_SECS: i64 = 3600;

/// When a window's row may go from the file: an hour after a minute window
/// ends; never for the others (they are few, and reports may want them).
pub fn row_expiry(key: &str, at: chrono::DateTime<chrono::Utc>) -> Option<i64> {
    key.starts_with("minute:")
        .then(|| {
            Window::Minute
                .end(at)
                .map(|end| end.timestamp() + KEEP_MINUTES_SECS)
        })
        .flatten()
}

/// The window a key names, and an instant inside it (for a counter read
/// back from the file); `None` for a key that is not one.
pub fn window_of(key: &str) -> Option<(Window, chrono::DateTime<chrono::Utc>)> {
    use chrono::{NaiveDateTime, TimeZone};
    let midnight = |day: NaiveDate| {
        day.and_hms_opt(0, 0, 0)
            .map(|t| chrono::Utc.from_utc_datetime(&t))
    };
    if key == "total" {
        // Any instant is inside the total.
        return Some((Window::Total, chrono::DateTime::UNIX_EPOCH));
    }
    let (kind, rest) = key.split_once(':')?;
    match kind {
        "minute" => NaiveDateTime::parse_from_str(&format!("{rest}:00"), "%Y-%m-%dT%H:%M:%S")
            .ok()
            .map(|t| (Window::Minute, chrono::Utc.from_utc_datetime(&t))),
        "day" => NaiveDate::parse_from_str(rest, "%Y-%m-%d")
            .ok()
            .and_then(midnight)
            .map(|t| (Window::Day, t)),
        "month" => NaiveDate::parse_from_str(&format!("{rest}-01"), "%Y-%m-%d")
            .ok()
            .and_then(midnight)
            .map(|t| (Window::Month, t)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spend::Limits;
    use chrono::{DateTime, Utc};

    fn ask(limits: &Limits, id: &str, now: DateTime<Utc>) -> Ask {
        Ask {
            token: "alice".into(),
            limits: limits.clone(),
            reserve: Amount {
                requests: 1,
                tokens: 10,
                usd_micros: 0,
            },
            now,
            expires: now + chrono::Duration::seconds(60),
            id: id.into(),
        }
    }

    fn ready(ledger: &mut Ledger, limits: &Limits, now: DateTime<Utc>) -> Vec<(Window, String)> {
        let keys = super::super::store::window_keys(limits, now);
        for (window, key) in ledger
            .missing("alice", &keys)
            .into_iter()
            .cloned()
            .collect::<Vec<_>>()
        {
            let ends = window.end(now).map(|e| e.timestamp());
            ledger.load(
                "alice",
                key,
                Counter {
                    ends,
                    ..Counter::default()
                },
            );
        }
        keys
    }

    #[test]
    fn a_key_names_its_window() {
        let at: DateTime<Utc> = "2026-12-31T23:59:30Z".parse().unwrap();
        for window in Window::ALL {
            let (w, inside) = window_of(&window.key(at)).unwrap();
            assert_eq!(w, window);
            assert_eq!(w.end(inside), window.end(at), "{window:?}");
        }
        assert!(window_of("minute:nonsense").is_none());
    }

    #[test]
    fn a_reservation_made_and_released_between_commits_is_never_written() {
        let limits = Limits::parse(&serde_json::json!({"requests_per_minute": 2})).unwrap();
        let now: DateTime<Utc> = "2026-12-01T10:00:30Z".parse().unwrap();
        let mut ledger = Ledger::default();
        let keys = ready(&mut ledger, &limits, now);
        let Admission::Granted(r) = ledger.admit(ask(&limits, "a", now), keys) else {
            panic!("refused")
        };
        assert_eq!(ledger.pending.reserve.len(), 1);
        let s = Settlement {
            token: "alice".into(),
            at: now,
            windows: r.windows.clone(),
            reservation: Some(r),
            used: true,
            model: "gpt-4o-mini".into(),
            upstream: "default".into(),
            input: 3,
            cached: 0,
            output: 4,
            usd_micros: 9,
            estimated: false,
            row: true,
        };
        ledger.settle(&s);
        assert!(ledger.pending.reserve.is_empty() && ledger.pending.release.is_empty());
        assert_eq!(ledger.in_flight(), 0);
        let state = ledger.state("alice", "minute:2026-12-01T10:00").unwrap();
        assert_eq!(state.reserved, Amount::default());
        assert_eq!((state.used.requests, state.used.tokens), (1, 7));
        assert_eq!(ledger.pending.windows.len(), 1);
        assert_eq!(ledger.pending.rows.len(), 1);
    }

    #[test]
    fn an_expired_reservation_stops_counting_and_its_row_is_deleted() {
        let limits = Limits::parse(&serde_json::json!({"requests_per_minute": 1})).unwrap();
        let now: DateTime<Utc> = "2026-12-01T10:00:00Z".parse().unwrap();
        let mut ledger = Ledger::default();
        let keys = ready(&mut ledger, &limits, now);
        let mut first = ask(&limits, "a", now);
        first.expires = now + chrono::Duration::seconds(5);
        assert!(matches!(
            ledger.admit(first, keys.clone()),
            Admission::Granted(_)
        ));
        assert!(matches!(
            ledger.admit(ask(&limits, "b", now), keys.clone()),
            Admission::Refused(_)
        ));
        ledger.pending = Pending::default(); // as if committed
        let later = now + chrono::Duration::seconds(6);
        assert!(matches!(
            ledger.admit(ask(&limits, "c", later), keys),
            Admission::Granted(_)
        ));
        assert_eq!(ledger.pending.release, ["a"]);
    }

    #[test]
    fn ended_windows_are_forgotten_and_memory_stays_bounded() {
        let limits =
            Limits::parse(&serde_json::json!({"requests_per_minute": 1_000_000, "usd_total": 10}))
                .unwrap();
        let start: DateTime<Utc> = "2026-12-01T10:00:00Z".parse().unwrap();
        let mut ledger = Ledger::default();
        for minute in 0..600 {
            let now = start + chrono::Duration::minutes(minute);
            let keys = ready(&mut ledger, &limits, now);
            let id = format!("r{minute}");
            let Admission::Granted(r) = ledger.admit(ask(&limits, &id, now), keys) else {
                panic!("refused")
            };
            ledger.settle(&Settlement {
                token: "alice".into(),
                at: now,
                windows: r.windows.clone(),
                reservation: Some(r),
                used: true,
                model: "m".into(),
                upstream: "default".into(),
                input: 1,
                cached: 0,
                output: 1,
                usd_micros: 1,
                estimated: false,
                row: false,
            });
            ledger.pending = Pending::default();
            ledger.evict(now.timestamp(), 120);
        }
        // The total, and the last few minutes.
        assert!(ledger.windows_held() <= 5, "{}", ledger.windows_held());
        assert_eq!(ledger.state("alice", "total").unwrap().used.requests, 600);
    }

    #[test]
    fn what_waits_to_be_written_is_bounded_by_keys_not_requests() {
        let now: DateTime<Utc> = "2026-12-01T10:00:30Z".parse().unwrap();
        let mut ledger = Ledger::default();
        for i in 0..10_000i64 {
            ledger.settle(&Settlement {
                token: "bob".into(),
                at: now,
                reservation: None,
                used: true,
                model: if i % 2 == 0 { "gpt-4o-mini" } else { "gpt-4o" }.into(),
                upstream: "default".into(),
                input: 2,
                cached: 0,
                output: 3,
                usd_micros: 1,
                estimated: false,
                windows: Vec::new(),
                row: true,
            });
        }
        assert_eq!(ledger.pending.rows.len(), 2);
        assert!(ledger.pending.windows.is_empty() && ledger.pending.release.is_empty());
        let total: i64 = ledger.pending.rows.values().map(|r| r.requests).sum();
        assert_eq!(total, 10_000);
    }
}
