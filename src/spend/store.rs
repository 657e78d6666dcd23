//! Where usage and limits' counters live: the [`Store`] trait and what
//! goes in and out of it.
//!
//! A request with limits is *admitted* before it is forwarded: in one atomic
//! step the store checks, for each limited window, that what was used plus
//! what other requests in flight reserved is below the limit, and reserves
//! this request's estimate. When the response ends it is *settled*: the
//! reservation is replaced by the actual usage (or just released when the
//! request never reached the upstream). A reservation whose process died
//! stops counting when it expires.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{Amount, Limit, Limits, Window};
use crate::limits::counter_add;
use crate::record::BoxFuture;

/// The upstream of usage whose upstream is not known: a row written before
/// the store kept upstreams, or a request no upstream answered.
pub const UNKNOWN_UPSTREAM: &str = "-";

/// A store's failure (unreachable, throttled past its retries, corrupt).
#[derive(Debug, Clone, thiserror::Error)]
#[error("usage store {store}: {}{problem}", if *.rejected { "refused the request's values: " } else { "" })]
pub struct StoreError {
    /// Which store (as configured, e.g. `sqlite:usage.db`).
    pub store: String,
    /// What went wrong.
    pub problem: String,
    /// The store refused the values it was given (a client error, such as
    /// DynamoDB's `ValidationException` or a SQLite value too big): not an
    /// outage. Never retried, never queued, and it never opens the gate
    /// for other requests.
    pub rejected: bool,
    /// Of a settlement that was partly written, the part still to write
    /// (what to try again, so that nothing is counted twice).
    pub unsettled: Option<Box<Settlement>>,
}

impl StoreError {
    /// A failure of `store`.
    pub fn new(store: &str, problem: impl std::fmt::Display) -> Self {
        Self {
            store: store.to_owned(),
            problem: problem.to_string(),
            rejected: false,
            unsettled: None,
        }
    }

    /// The store refused this request's values (see [`StoreError::rejected`]).
    pub fn rejected(store: &str, problem: impl std::fmt::Display) -> Self {
        Self {
            rejected: true,
            ..Self::new(store, problem)
        }
    }

    /// Of `whole`, whose settling failed with this error, what is still to
    /// write: the part left if some was written, else all of it.
    pub fn left_of(self, whole: Arc<Settlement>) -> Arc<Settlement> {
        self.unsettled.map_or(whole, |rest| Arc::new(*rest))
    }
}

/// A request asking to be admitted.
#[derive(Debug, Clone)]
pub struct Ask {
    /// The token entry's name.
    pub token: String,
    /// The token's limits.
    pub limits: Limits,
    /// What the request reserves.
    pub reserve: Amount,
    /// The request's arrival.
    pub now: DateTime<Utc>,
    /// When the reservation stops counting if nobody settles it.
    pub expires: DateTime<Utc>,
    /// A unique id for the reservation.
    pub id: String,
}

/// An admitted request's hold on its windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Its id.
    pub id: String,
    /// The token.
    pub token: String,
    /// The keys of the windows it holds (those current when it was made).
    pub windows: Vec<String>,
    /// What it holds in each.
    pub amount: Amount,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The limit reached.
    pub limit: Limit,
    /// Seconds until the window resets; `None` for a total.
    pub retry_after: Option<u64>,
}

/// The answer to an [`Ask`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Admitted, holding this.
    Granted(Reservation),
    /// Refused.
    Refused(Refusal),
}

/// What one finished request used.
#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    /// The token.
    pub token: Arc<str>,
    /// When the request arrived (its usage counts in the windows of that instant).
    pub at: DateTime<Utc>,
    /// The reservation to replace, if one was made.
    pub reservation: Option<Reservation>,
    /// Whether the request reached the upstream (if not, nothing is used
    /// and the reservation is only released).
    pub used: bool,
    /// The model (as the upstream answered, else as asked; `-` when unknown,
    /// which is not allocated).
    pub model: std::borrow::Cow<'static, str>,
    /// The upstream that answered (`-` when none is known).
    pub upstream: Arc<str>,
    /// Input tokens, cached included.
    pub input: i64,
    /// Cached input tokens.
    pub cached: i64,
    /// Output tokens.
    pub output: i64,
    /// Micro-dollars.
    pub usd_micros: i64,
    /// Whether the usage is the gateway's estimate.
    pub estimated: bool,
    /// The keys of the windows its usage counts in (those of its
    /// reservation, or of its token's limits if it went unenforced); none
    /// for a token without limits.
    pub windows: Vec<String>,
    /// Whether the usage row (for reports) is still to be written.
    pub row: bool,
}

impl Settlement {
    /// The amount used, as the windows count it.
    pub fn amount(&self) -> Amount {
        if !self.used {
            return Amount::default();
        }
        Amount {
            requests: 1,
            tokens: counter_add(self.input, self.output),
            usd_micros: counter_add(self.usd_micros, 0),
        }
    }
}

/// One window's state for a token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowState {
    /// Settled usage.
    pub used: Amount,
    /// Held by requests in flight.
    pub reserved: Amount,
}

/// A period of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Period {
    /// One UTC day, `YYYY-MM-DD`.
    Day(String),
    /// One UTC month, `YYYY-MM`.
    Month(String),
    /// From one day to another, both included.
    Days(String, String),
}

impl Period {
    /// The first and last day (`YYYY-MM-DD`) of the period.
    pub fn day_range(&self) -> (String, String) {
        match self {
            Self::Day(d) => (d.clone(), d.clone()),
            Self::Month(m) => (format!("{m}-01"), format!("{m}-31")),
            Self::Days(from, to) => (from.clone(), to.clone()),
        }
    }

    /// Whether the day `YYYY-MM-DD` is in the period.
    pub fn holds(&self, day: &str) -> bool {
        match self {
            Self::Day(d) => day == d,
            Self::Month(m) => day.starts_with(m.as_str()) && day.as_bytes().get(7) == Some(&b'-'),
            Self::Days(from, to) => from.as_str() <= day && day <= to.as_str(),
        }
    }
}

/// One row of a report: a token, model and upstream's usage in a period.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Row {
    /// The token's name.
    pub token: String,
    /// The model.
    pub model: String,
    /// The upstream that served it (`-` for usage recorded before the store
    /// kept upstreams, or when none answered).
    pub upstream: String,
    /// Requests.
    pub requests: i64,
    /// Input tokens, cached included.
    pub input_tokens: i64,
    /// Cached input tokens.
    pub cached_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Dollars.
    #[serde(serialize_with = "micros_as_usd")]
    pub cost_usd: i64,
    /// Requests whose usage was estimated.
    pub estimated_requests: i64,
}

impl Row {
    /// Adds `other`'s counts (saturating).
    pub fn add_row(&mut self, other: &Row) {
        let add = crate::limits::counter_add;
        self.requests = add(self.requests, other.requests);
        self.input_tokens = add(self.input_tokens, other.input_tokens);
        self.cached_tokens = add(self.cached_tokens, other.cached_tokens);
        self.output_tokens = add(self.output_tokens, other.output_tokens);
        self.cost_usd = add(self.cost_usd, other.cost_usd);
        self.estimated_requests = add(self.estimated_requests, other.estimated_requests);
    }
}

fn micros_as_usd<S: serde::Serializer>(micros: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(*micros as f64 / 1e6)
}

impl Row {
    /// Adds one settled request.
    pub fn add(&mut self, s: &Settlement) {
        self.requests = counter_add(self.requests, 1);
        self.input_tokens = counter_add(self.input_tokens, s.input);
        self.cached_tokens = counter_add(self.cached_tokens, s.cached);
        self.output_tokens = counter_add(self.output_tokens, s.output);
        self.cost_usd = counter_add(self.cost_usd, s.usd_micros);
        self.estimated_requests = counter_add(self.estimated_requests, i64::from(s.estimated));
    }
}

/// A usage store.
pub trait Store: Send + Sync + fmt::Debug {
    /// The store as configured (`sqlite:usage.db`, `dynamodb:TABLE`).
    fn name(&self) -> &str;

    /// Creates what the store needs (tables), if missing.
    fn init(&self) -> BoxFuture<Result<(), StoreError>>;

    /// Checks and reserves in one atomic step.
    fn admit(&self, ask: Ask) -> BoxFuture<Result<Admission, StoreError>>;

    /// Records a finished request and drops its reservation. A store may
    /// write it later (batched), but within a second. Shared, so that the
    /// caller keeps it to try again without copying it first.
    fn settle(&self, settlement: Arc<Settlement>) -> BoxFuture<Result<(), StoreError>>;

    /// Takes `settlement` without waiting, when this store can (it queues
    /// it for a writer of its own), saying whether that worked; `None` when
    /// it must go through [`Store::settle`] instead. The request path then
    /// makes no future for it.
    fn hand_over(&self, _settlement: &Arc<Settlement>) -> Option<Result<(), StoreError>> {
        None
    }

    /// Checks that the store answers (a cheap read).
    fn ping(&self) -> BoxFuture<Result<(), StoreError>>;

    /// Resolves once every settlement handed over so far is written.
    fn flush(&self) -> BoxFuture<Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// The state of `token`'s windows holding `now`, in `windows`' order.
    fn windows(
        &self,
        token: String,
        windows: Vec<Window>,
        now: DateTime<Utc>,
    ) -> BoxFuture<Result<Vec<WindowState>, StoreError>>;

    /// Usage per token, model and upstream over `period` (one token's when named).
    fn report(
        &self,
        period: Period,
        token: Option<String>,
    ) -> BoxFuture<Result<Vec<Row>, StoreError>>;

    /// Usage per UTC day and hour, token, model and upstream over `period`
    /// (one token's when named): the console's costs by day or hour.
    fn hourly(
        &self,
        period: Period,
        token: Option<String>,
    ) -> BoxFuture<Result<Hourly, StoreError>>;

    /// The managed tokens and console sessions kept in this store, if it
    /// keeps them.
    fn registry(&self) -> Option<Arc<dyn super::registry::Registry>> {
        None
    }
}

/// Usage rows with their UTC day (`YYYY-MM-DD`) and hour (0 to 23).
pub type Hourly = Vec<(String, u8, Row)>;

/// `rows` summed per token, model and upstream (saturating), in that order.
pub fn sum_days(rows: impl Iterator<Item = Row>) -> Vec<Row> {
    let mut sums: std::collections::BTreeMap<(String, String, String), Row> = Default::default();
    for row in rows {
        let key = (row.token.clone(), row.model.clone(), row.upstream.clone());
        let sum = sums.entry(key).or_insert_with(|| Row {
            token: row.token.clone(),
            model: row.model.clone(),
            upstream: row.upstream.clone(),
            ..Row::default()
        });
        sum.add_row(&row);
    }
    sums.into_values().collect()
}

/// The keys of the windows holding `at`, for `limits`.
pub fn window_keys(limits: &Limits, at: DateTime<Utc>) -> Vec<(Window, String)> {
    limits
        .windows()
        .into_iter()
        .map(|w| (w, w.key(at)))
        .collect()
}

/// The first limit that `states` (in `limits.windows()` order) leaves no room under.
pub fn first_exhausted(
    limits: &Limits,
    states: &[(Window, WindowState)],
    at: DateTime<Utc>,
) -> Option<Refusal> {
    limits.iter().find_map(|limit| {
        let (_, state) = states.iter().find(|(w, _)| *w == limit.window)?;
        let held = counter_add(
            limit.measure.of(&state.used),
            limit.measure.of(&state.reserved),
        );
        (held >= limit.max).then(|| Refusal {
            limit: *limit,
            retry_after: limit.window.seconds_left(at),
        })
    })
}
