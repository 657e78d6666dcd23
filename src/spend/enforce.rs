//! Enforcement: [`Enforce`], the policy that admits a request with limits
//! (check and reserve, one atomic step in the store) before it is
//! forwarded, and [`Settle`], the completion hook that replaces the
//! reservation by what the request actually used.
//!
//! What a request reserves: one request; for a metered endpoint, its
//! estimated input (a token per four bytes of body) plus its maximum output
//! (`max_tokens`, `max_completion_tokens` or `max_output_tokens`, else
//! `USAGE_DEFAULT_RESERVE_TOKENS`), capped at the model's output ceiling
//! and multiplied by the answers it asks for (`n`, `best_of`); and, for
//! dollar limits, what that would cost (images and speech by their units).
//! A token with a dollar limit never sends a request whose model has no
//! price. Every count saturates ([`crate::limits::counter`]).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;

use super::store::{
    window_keys, Admission, Ask, Reservation, Settlement, Store, StoreError, UNKNOWN_UPSTREAM,
};
use super::{Amount, Limits};
use crate::config::FailMode;
use crate::error::GatewayError;
use crate::limits::counter;
use crate::openai::{self, Metering};
use crate::policy::view::{Media, View};
use crate::policy::{Inspect, Policy, Verdict};
use crate::record::{Asked, BoxFuture, Finish, Record, Reserved};
use crate::usage::prices::{Prices, Units};
use crate::usage::Usage;

/// Settlements kept in memory while the store is down, at most.
const MAX_BACKLOG: usize = 10_000;

/// How often settlements that wait for the store are tried again.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Left in a request's record by [`Enforce`]: the token has limits.
#[derive(Debug, Clone)]
pub struct Held {
    /// The request's reservation; `None` when the store was down and the
    /// request went through unenforced.
    pub reservation: Option<Reservation>,
    /// The keys of the windows its usage counts in.
    pub windows: Vec<String>,
}

/// The policy that enforces a token's `limits`.
#[derive(Debug, Clone)]
pub struct Enforce {
    /// The store; `None` (`USAGE_STORE=off`): a token with limits is
    /// refused, as its limits cannot be enforced.
    pub store: Option<Arc<dyn Store>>,
    /// What models cost.
    pub prices: Arc<Prices>,
    /// Output tokens reserved when a request sets no maximum.
    pub default_reserve: u64,
    /// How long an unsettled reservation counts.
    pub ttl: Duration,
    /// What to do while the store is down.
    pub fail_mode: FailMode,
}

impl Policy for Enforce {
    fn applies(&self, request: &Inspect<'_>) -> bool {
        request
            .admitted
            .rules
            .as_ref()
            .is_some_and(|r| r.limits.is_some())
    }

    fn check<'a>(&'a self, request: &'a mut Inspect<'_>) -> Verdict<'a> {
        Box::pin(async move {
            let Some(limits) = request
                .admitted
                .rules
                .as_ref()
                .and_then(|r| r.limits.clone())
            else {
                return Ok(());
            };
            let Some(token) = request.admitted.name.clone() else {
                return Ok(());
            };
            let Some(store) = &self.store else {
                // Only a list reloaded since start-up can get here (start-up
                // refuses limits without a store): never serve them unenforced.
                tracing::error!(
                    token = &*token,
                    "this token has limits, and USAGE_STORE=off cannot enforce them"
                );
                return Err(GatewayError::UsageStoreUnavailable);
            };
            let metering = openai::metering(request.method, request.path);
            let view = match *request.method {
                Method::POST => Some(request.view().await?.clone()),
                _ => None,
            };
            let view = view.unwrap_or_default();
            let units = units(metering, &view);
            if let Some(model) = &view.model {
                request.notes.insert(Asked {
                    model: model.clone(),
                    units: units.clone(),
                });
            }
            let (reserve, reserved) = self.estimate(&limits, metering, &view, &units)?;
            request.notes.insert(reserved);
            let now = request.now;
            let windows: Vec<String> = window_keys(&limits, now)
                .into_iter()
                .map(|(_, k)| k)
                .collect();
            let ask = Ask {
                token: token.to_string(),
                limits,
                reserve,
                now,
                expires: now
                    + chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::hours(1)),
                id: reservation_id(),
            };
            match store.admit(ask).await {
                Ok(Admission::Granted(reservation)) => {
                    request.notes.insert(Held {
                        windows: reservation.windows.clone(),
                        reservation: Some(reservation),
                    });
                    Ok(())
                }
                Ok(Admission::Refused(refusal)) => Err(if refusal.limit.is_rate() {
                    GatewayError::RateLimited {
                        limit: refusal.limit.key,
                        retry_after: refusal.retry_after.unwrap_or(1),
                    }
                } else {
                    GatewayError::QuotaExceeded {
                        limit: refusal.limit.key,
                        retry_after: refusal.retry_after,
                    }
                }),
                Err(error) if error.rejected => {
                    // This request's values, not an outage: its own error,
                    // and the gate stays shut for everyone else.
                    tracing::error!(%error, "the usage store refused this request's reservation");
                    Err(GatewayError::UsageStoreRejected)
                }
                Err(error) => {
                    crate::stats::usage_store_error();
                    match self.fail_mode {
                        FailMode::Closed => {
                            tracing::error!(%error, "usage store unreachable: refusing requests with limits (USAGE_FAIL_MODE=closed)");
                            Err(GatewayError::UsageStoreUnavailable)
                        }
                        FailMode::Open => {
                            tracing::error!(%error, "usage store unreachable: serving without enforcing limits (USAGE_FAIL_MODE=open)");
                            request.notes.insert(Held {
                                reservation: None,
                                windows,
                            });
                            Ok(())
                        }
                    }
                }
            }
        })
    }
}

/// What a request asks for by the unit: images (`n` of a size and
/// quality), speech (characters of input).
fn units(metering: Metering, view: &View) -> Units {
    match metering {
        Metering::Images => Units::Images {
            count: view.copies,
            size: view.size.clone(),
            quality: view.quality.clone(),
        },
        Metering::Speech => Units::Chars(view.input_chars),
        _ => Units::None,
    }
}

impl Enforce {
    /// What the request reserves in the store, and in tokens (what it is
    /// charged if its answer cannot be read).
    fn estimate(
        &self,
        limits: &Limits,
        metering: Metering,
        view: &View,
        units: &Units,
    ) -> Result<(Amount, Reserved), GatewayError> {
        let model = view.model.as_deref();
        let ceiling = self.prices.max_output(model);
        let per_answer = view.max_output.unwrap_or(self.default_reserve).min(ceiling);
        // An upload's bytes are a file, not text: they estimate no tokens.
        let input = match view.media {
            Media::Json => view.bytes.div_ceil(4),
            _ => 0,
        };
        let output = match metering {
            Metering::Tokens => per_answer.saturating_mul(view.copies),
            // Token-priced images (`gpt-image-*`) write up to their ceiling each.
            Metering::Images
                if self
                    .prices
                    .lookup(model.unwrap_or(""))
                    .is_some_and(|p| p.per_image.is_none()) =>
            {
                ceiling.saturating_mul(view.copies)
            }
            _ => 0,
        };
        let reserved = Reserved { input, output };
        let mut amount = Amount {
            requests: 1,
            ..Amount::default()
        };
        if metering.is_metered() {
            amount.tokens = counter(input.saturating_add(output));
        }
        if limits.has_usd() && (metering.is_metered() || model.is_some()) {
            let model = model.unwrap_or("(none)");
            let usage = Usage::reported(Some(model), input, 0, output);
            let tokens = metering.is_metered().then_some(&usage);
            let cost = self
                .prices
                .charge(model, tokens, units)
                .ok_or_else(|| GatewayError::ModelPriceUnknown(model.to_owned()))?;
            amount.usd_micros = Amount::micros(cost);
        }
        Ok((amount, reserved))
    }
}

/// A reservation's id: 64 random bits drawn once per process (so that no
/// two processes sharing a store make the same id), then a counter: 24 hex
/// digits, with no system call and one allocation per request.
fn reservation_id() -> String {
    use std::fmt::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PROCESS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let process = *PROCESS.get_or_init(|| {
        let mut random = [0u8; 8];
        // Without randomness, the clock and the process id still tell processes apart.
        if getrandom::fill(&mut random).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            random = (nanos ^ (u64::from(std::process::id()) << 40)).to_le_bytes();
        }
        u64::from_le_bytes(random)
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut id = String::with_capacity(32);
    let _ = write!(id, "{process:016x}{n:08x}");
    id
}

/// The completion hook that records each forwarded request's usage in the
/// store and settles its reservation. While the store is down, settlements
/// wait in memory (bounded) and are written when it answers again.
#[derive(Debug)]
pub struct Settle {
    /// The store.
    pub store: Arc<dyn Store>,
    /// What models cost.
    pub prices: Arc<Prices>,
    backlog: Arc<Mutex<VecDeque<Arc<Settlement>>>>,
}

impl Settle {
    /// Settles into `store`. Within a runtime, a background task also
    /// writes what waited once the store answers again, every
    /// [`RETRY_EVERY`], even if no request comes to do it.
    pub fn new(store: Arc<dyn Store>, prices: Arc<Prices>) -> Self {
        let backlog: Arc<Mutex<VecDeque<Arc<Settlement>>>> = Arc::default();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (store, waiting) = (store.clone(), Arc::downgrade(&backlog));
            runtime.spawn(async move {
                loop {
                    tokio::time::sleep(RETRY_EVERY).await;
                    let Some(backlog) = waiting.upgrade() else {
                        return;
                    };
                    if !backlog.lock().expect("backlog lock").is_empty() {
                        Self::drain(&store, &backlog).await;
                    }
                }
            });
        }
        Self {
            store,
            prices,
            backlog,
        }
    }

    /// The settlement of a finished request, if it is usage or held a reservation.
    pub fn settlement(&self, record: &Record) -> Option<Settlement> {
        let held = record.notes.get::<Held>();
        let reservation = held.and_then(|h| h.reservation.clone());
        let used = record.sent;
        if !used && reservation.is_none() {
            // Refused by the gateway itself: not usage.
            return None;
        }
        let token = record.token.clone()?;
        let charge = record.charge(&self.prices);
        let usage = &charge.usage;
        let model = charge.model.clone().map_or(Cow::Borrowed("-"), Cow::Owned);
        let count = counter;
        Some(Settlement {
            token,
            at: record.arrived,
            reservation,
            used,
            model,
            upstream: record
                .upstream
                .clone()
                .unwrap_or_else(|| Arc::from(UNKNOWN_UPSTREAM)),
            input: usage.as_ref().map_or(0, |u| count(u.input)),
            cached: usage.as_ref().map_or(0, |u| count(u.cached_input)),
            output: usage.as_ref().map_or(0, |u| count(u.output)),
            usd_micros: Amount::micros(charge.usd.unwrap_or(0.0)),
            estimated: usage.as_ref().is_some_and(|u| u.estimated),
            windows: held.map(|h| h.windows.clone()).unwrap_or_default(),
            row: used,
        })
    }

    /// Writes what waited while the store was down, oldest first; stops at
    /// the first failure.
    async fn drain(store: &Arc<dyn Store>, backlog: &Mutex<VecDeque<Arc<Settlement>>>) {
        loop {
            let Some(next) = backlog.lock().expect("backlog lock").pop_front() else {
                return;
            };
            if let Err(error) = store.settle(next.clone()).await {
                if error.rejected {
                    tracing::error!(%error, "the usage store refused a settlement; it is not kept");
                    continue;
                }
                tracing::warn!(%error, "usage store still unreachable; usage kept in memory");
                let rest = error.left_of(next);
                backlog.lock().expect("backlog lock").push_front(rest);
                return;
            }
        }
    }

    /// Settlements waiting for the store.
    pub fn waiting(&self) -> usize {
        self.backlog.lock().expect("backlog lock").len()
    }
}

impl Finish for Settle {
    fn close(&self) -> BoxFuture<()> {
        let (store, backlog) = (self.store.clone(), self.backlog.clone());
        Box::pin(async move {
            Self::drain(&store, &backlog).await;
            let left = backlog.lock().expect("backlog lock").len();
            if left > 0 {
                tracing::error!(
                    store = store.name(),
                    left,
                    "stopping with usage the store did not take"
                );
            }
            if let Err(error) = store.flush().await {
                tracing::error!(%error, "stopping before the usage store wrote everything");
            }
        })
    }

    fn finish(&self, record: &Record) -> Option<BoxFuture<()>> {
        let settlement = Arc::new(self.settlement(record)?);
        let waiting = !self.backlog.lock().expect("backlog lock").is_empty();
        if !waiting {
            match self.store.hand_over(&settlement) {
                Some(Ok(())) => return None,
                Some(Err(error)) => {
                    keep(&self.backlog, error, settlement);
                    return None;
                }
                None => {}
            }
        }
        let store = self.store.clone();
        let backlog = self.backlog.clone();
        Some(Box::pin(async move {
            // What waited goes first, so the store sees settlements in order.
            if waiting {
                Self::drain(&store, &backlog).await;
            }
            if let Err(error) = store.settle(settlement.clone()).await {
                keep(&backlog, error, settlement);
            }
        }))
    }
}

/// Keeps what of `settlement` the store did not take, to be written once it
/// is back: the oldest is dropped when the backlog is full.
fn keep(
    backlog: &Mutex<VecDeque<Arc<Settlement>>>,
    error: StoreError,
    settlement: Arc<Settlement>,
) {
    crate::stats::usage_store_error();
    if error.rejected {
        // Written again it would fail again: logged as what it is, and dropped.
        tracing::error!(%error, token = &*settlement.token, "the usage store refused a settlement; it is not kept");
        return;
    }
    tracing::error!(%error, "usage store unreachable: usage kept in memory until it is back");
    let settlement = error.left_of(settlement);
    let mut backlog = backlog.lock().expect("backlog lock");
    if backlog.len() >= MAX_BACKLOG {
        tracing::error!("usage backlog full ({MAX_BACKLOG}): the oldest settlement is dropped");
        backlog.pop_front();
    }
    backlog.push_back(settlement);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Admitted;
    use crate::body::ByteCount;
    use crate::policy::RequestBody;
    use crate::spend::store::{Period, Row, WindowState};
    use crate::spend::Window;
    use crate::tokens::Rules;

    /// A store that refuses every value it is given (a client error).
    #[derive(Debug, Default)]
    struct Refusing;

    impl Store for Refusing {
        fn name(&self) -> &str {
            "refusing"
        }
        fn init(&self) -> BoxFuture<Result<(), StoreError>> {
            Box::pin(std::future::ready(Ok(())))
        }
        fn admit(&self, _: Ask) -> BoxFuture<Result<Admission, StoreError>> {
            Box::pin(std::future::ready(Err(StoreError::rejected(
                "refusing", "too big",
            ))))
        }
        fn settle(&self, _: Arc<Settlement>) -> BoxFuture<Result<(), StoreError>> {
            Box::pin(std::future::ready(Err(StoreError::rejected(
                "refusing", "too big",
            ))))
        }
        fn ping(&self) -> BoxFuture<Result<(), StoreError>> {
            Box::pin(std::future::ready(Ok(())))
        }
        fn windows(
            &self,
            _: String,
            windows: Vec<Window>,
            _: chrono::DateTime<chrono::Utc>,
        ) -> BoxFuture<Result<Vec<WindowState>, StoreError>> {
            Box::pin(std::future::ready(Ok(vec![
                WindowState::default();
                windows.len()
            ])))
        }
        fn report(&self, _: Period, _: Option<String>) -> BoxFuture<Result<Vec<Row>, StoreError>> {
            Box::pin(std::future::ready(Ok(Vec::new())))
        }
        fn hourly(
            &self,
            _: Period,
            _: Option<String>,
        ) -> BoxFuture<Result<crate::spend::store::Hourly, StoreError>> {
            Box::pin(std::future::ready(Ok(Vec::new())))
        }
    }

    #[test]
    fn reservation_ids_are_unique_and_share_the_process_prefix() {
        let ids: Vec<String> = (0..1000).map(|_| reservation_id()).collect();
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        assert!(ids
            .iter()
            .all(|id| id.len() >= 24 && id[..16] == ids[0][..16]));
        assert!(ids
            .iter()
            .all(|id| id.bytes().all(|b| b.is_ascii_hexdigit())));
    }

    fn enforce(store: Option<Arc<dyn Store>>) -> Enforce {
        Enforce {
            store,
            prices: Arc::new(Prices::load(None).unwrap()),
            default_reserve: 1024,
            ttl: Duration::from_secs(60),
            fail_mode: FailMode::Open,
        }
    }

    fn limits(text: &str) -> Limits {
        Limits::parse(&serde_json::from_str(text).unwrap()).unwrap()
    }

    fn view(model: &str, max_output: Option<u64>, copies: u64) -> View {
        View {
            media: Media::Json,
            bytes: 400,
            model: Some(model.into()),
            max_output,
            copies,
            ..View::default()
        }
    }

    #[test]
    fn a_reservation_is_capped_at_the_models_ceiling_and_multiplied_by_its_answers() {
        let e = enforce(None);
        let tokens = limits(r#"{"tokens_per_day": 1000}"#);
        let (amount, reserved) = e
            .estimate(
                &tokens,
                Metering::Tokens,
                &view("gpt-4o-mini", Some(2_000_000_000), 1),
                &Units::None,
            )
            .unwrap();
        assert_eq!(
            reserved,
            Reserved {
                input: 100,
                output: 16_384
            }
        );
        assert_eq!(amount.tokens, 100 + 16_384);
        let (amount, _) = e
            .estimate(
                &tokens,
                Metering::Tokens,
                &view("gpt-4o-mini", Some(50), 100),
                &Units::None,
            )
            .unwrap();
        assert_eq!(
            amount.tokens,
            100 + 50 * 100,
            "n: 100 reserves a hundred answers"
        );
        let (amount, _) = e
            .estimate(
                &tokens,
                Metering::Tokens,
                &view("no-such-model", None, 1),
                &Units::None,
            )
            .unwrap();
        assert_eq!(
            amount.tokens,
            100 + 1024,
            "the default reserve, under the default ceiling"
        );
        // Dollars: the most an answer can cost, and nothing unpriced.
        let usd = limits(r#"{"usd_per_day": 1}"#);
        let (amount, _) = e
            .estimate(
                &usd,
                Metering::Tokens,
                &view("gpt-4o-mini", Some(u64::from(u32::MAX)), 128),
                &Units::None,
            )
            .unwrap();
        let most = (100.0 * 0.15 + 16_384.0 * 128.0 * 0.6) / 1e6;
        assert_eq!(amount.usd_micros, Amount::micros(most));
        let refused = e.estimate(
            &usd,
            Metering::Tokens,
            &view("gpt-5-pro-max", None, 1),
            &Units::None,
        );
        assert_eq!(
            refused.unwrap_err(),
            GatewayError::ModelPriceUnknown("gpt-5-pro-max".into())
        );
        let images = Units::Images {
            count: 3,
            size: Some("1024x1024".into()),
            quality: None,
        };
        let (amount, reserved) = e
            .estimate(&usd, Metering::Images, &view("dall-e-3", None, 3), &images)
            .unwrap();
        assert_eq!(
            (amount.usd_micros, amount.tokens, reserved.output),
            (120_000, 100, 0)
        );
    }

    #[tokio::test]
    async fn a_store_that_refuses_a_requests_values_fails_that_request_and_opens_nothing() {
        let e = enforce(Some(Arc::new(Refusing)));
        let admitted = Admitted {
            name: Some("t".into()),
            upstream_key: None,
            query: None,
            strip: Default::default(),
            rules: Some(Arc::new(Rules {
                limits: Some(limits(r#"{"tokens_per_day": 10}"#)),
                ..Rules::default()
            })),
            expires: None,
            admin: false,
            in_query: false,
            allow_ips: None,
        };
        let mut headers = http::HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        let mut body = RequestBody::new(
            http_body_util::Full::new(bytes::Bytes::from_static(br#"{"model":"gpt-4o-mini"}"#)),
            ByteCount::default(),
            Duration::from_secs(5),
        );
        let mut notes = http::Extensions::new();
        let mut inspect = Inspect::new(
            &Method::POST,
            "/v1/chat/completions",
            &headers,
            &admitted,
            &mut body,
            &mut notes,
            1 << 20,
            chrono::Utc::now(),
        );
        // USAGE_FAIL_MODE=open: still refused, as this is no outage.
        assert_eq!(
            e.check(&mut inspect).await.unwrap_err(),
            GatewayError::UsageStoreRejected
        );
        assert!(notes.get::<Held>().is_none(), "not served unenforced");
        // A settlement the store refuses is not kept to be tried for ever.
        let settle = Settle::new(Arc::new(Refusing), Arc::new(Prices::load(None).unwrap()));
        let mut record = Record::start(
            &Method::POST,
            "/v1/chat/completions",
            tokio::time::Instant::now(),
        );
        record.token = Some("t".into());
        record.sent = true;
        record.upstream_ms = Some(1.0);
        if let Some(work) = settle.finish(&record) {
            work.await;
        }
        assert_eq!(settle.waiting(), 0);
    }
}
