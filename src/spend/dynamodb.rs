//! The shared store: one DynamoDB table, what Lambda scales with.
//!
//! The table has a string partition key `pk` and sort key `sk`, pay per
//! request, and TTL on the attribute `ttl` (the same table `template.yaml`
//! declares and `usage init` creates). Two kinds of item:
//!
//! - a **window** (`pk = w#TOKEN`, `sk` = the window's key, e.g.
//!   `day:2026-12-01`): `c_req`, `c_tok`, `c_usd`, what is *committed*
//!   (used plus reserved); `u_req`, `u_tok`, `u_usd`, what is used; and one
//!   map attribute `r_ID` per live reservation (`req`, `tok`, `usd`, `exp`);
//! - a **usage row** (`pk = u#TOKEN`, `sk = DAY@UPSTREAM#MODEL`): the
//!   day's counts for a token, model and upstream, for reports and billing
//!   (rows written before upstreams were kept are `DAY#MODEL`, read as the
//!   upstream `-`).
//!
//! Admission is one conditional `UpdateItem` per limited window, sent
//! together (one round trip): the condition is that each limited measure's
//! committed amount is below its limit, and the update adds the
//! reservation. DynamoDB serializes the writes of an item, so a limit is
//! exact however many containers ask at once. If one window refuses, the
//! windows that took the reservation give it back (a transient hold that can
//! only refuse, never let through, a request near a limit). Plain updates
//! rather than `TransactWriteItems`: a hot token's windows are written by
//! every request, and transactions on hot items cancel one another.
//!
//! A reservation whose process died is reaped once it has expired: on a
//! refusal, the gateway reads the windows, removes expired reservations
//! (each removal conditional on the reservation still being there, so it
//! happens once) and tries again. Settling is one update per window (the
//! reservation replaced by the usage) and one for the usage row, sent
//! together; what fails is kept and tried again, without counting twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, KeysAndAttributes,
    ScalarAttributeType, TimeToLiveSpecification, Update,
};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use futures_util::future::join_all;

use super::store::{
    first_exhausted, window_keys, Admission, Ask, Period, Reservation, Row, Settlement, Store,
    StoreError, WindowState,
};
use super::{Amount, Measure, Window};
use crate::record::BoxFuture;

/// The partition key attribute.
pub const PARTITION_KEY: &str = "pk";
/// The sort key attribute.
pub const SORT_KEY: &str = "sk";
/// The TTL attribute.
pub const TTL_ATTRIBUTE: &str = "ttl";

/// A usage row's sort key: `DAY@UPSTREAM#MODEL` (an upstream's name has
/// neither `@` nor `#`; a model may have anything).
fn usage_sort_key(s: &Settlement) -> String {
    format!("{}@{}#{}", s.at.format("%Y-%m-%dT%H"), s.upstream, s.model)
}

/// The day, hour, upstream and model of a usage row's sort key
/// (`DAYTHH@UPSTREAM#MODEL`); a row written before rows named their hour
/// (`DAY@UPSTREAM#MODEL`) has the hour 0, and one written before they named
/// their upstream (`DAY#MODEL`) the upstream `-` too.
fn parse_usage_sort_key(sk: &str) -> Option<(&str, u8, &str, &str)> {
    let day = sk.get(..10)?;
    let mut rest = sk.get(10..)?;
    let mut hour = 0;
    if let Some(after) = rest.strip_prefix('T') {
        hour = after.get(..2)?.parse::<u8>().ok().filter(|h| *h < 24)?;
        rest = after.get(2..)?;
    }
    if let Some(model) = rest.strip_prefix('#') {
        return Some((day, hour, super::store::UNKNOWN_UPSTREAM, model));
    }
    let (upstream, model) = rest.strip_prefix('@')?.split_once('#')?;
    Some((day, hour, upstream, model))
}

/// How often an admission refused while the windows had room (requests
/// settled in between) is tried again.
const ADMISSION_ATTEMPTS: u32 = 4;

/// A DynamoDB usage store.
#[derive(Debug, Clone)]
pub struct Dynamo {
    pub(in crate::spend) name: String,
    pub(in crate::spend) table: String,
    pub(in crate::spend) client: Client,
}

pub(in crate::spend) type Item = HashMap<String, AttributeValue>;

pub(in crate::spend) fn n(value: i64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

pub(in crate::spend) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

/// A counter attribute, within `0..=MAX_COUNTER`: a sum past `i64` (which
/// DynamoDB's 38 digits can hold) reads as full, never as 0.
fn number(item: &Item, key: &str) -> i64 {
    let Some(text) = item.get(key).and_then(|v| v.as_n().ok()) else {
        return 0;
    };
    match text.parse::<i64>() {
        Ok(n) => n.clamp(0, crate::limits::MAX_COUNTER),
        Err(_) => match text.parse::<f64>() {
            Ok(f) if f > 0.0 => crate::limits::MAX_COUNTER,
            _ => 0,
        },
    }
}

/// The attribute suffix of a measure.
fn suffix(measure: Measure) -> &'static str {
    match measure {
        Measure::Requests => "req",
        Measure::Tokens => "tok",
        Measure::Usd => "usd",
    }
}

fn amount_of(item: &Item, prefix: &str) -> Amount {
    Amount {
        requests: number(item, &format!("{prefix}req")),
        tokens: number(item, &format!("{prefix}tok")),
        usd_micros: number(item, &format!("{prefix}usd")),
    }
}

/// The live and the expired reservations held in a window item.
fn reservations(item: &Item, now: i64) -> (Amount, Vec<(String, Amount)>) {
    let mut live = Amount::default();
    let mut expired = Vec::new();
    for (key, value) in item {
        let (Some(_), Ok(map)) = (key.strip_prefix("r_"), value.as_m()) else {
            continue;
        };
        let held = amount_of(map, "");
        if number(map, "exp") > now {
            live = live.plus(held);
        } else {
            expired.push((key.clone(), held));
        }
    }
    (live, expired)
}

/// When a window's item may be deleted by TTL.
fn item_ttl(key: &str, at: DateTime<Utc>) -> Option<i64> {
    let (window, keep) = if key.starts_with("minute:") {
        (Window::Minute, 3600)
    } else if key.starts_with("day:") {
        (Window::Day, 40 * 86_400)
    } else if key.starts_with("month:") {
        (Window::Month, 400 * 86_400)
    } else {
        return None;
    };
    window.end(at).map(|end| end.timestamp() + keep)
}

impl Dynamo {
    /// A store on `table`, with the default AWS chain
    /// (`AWS_ENDPOINT_URL_DYNAMODB` points it at an emulator).
    pub async fn from_env(table: &str) -> Self {
        // Throttling is retried with backoff by the SDK's standard mode.
        let config =
            crate::sources::aws::config(Duration::from_secs(2), Duration::from_secs(5), 3).await;
        Self {
            name: format!("dynamodb:{table}"),
            table: table.to_owned(),
            client: Client::new(&config),
        }
    }

    /// The store on `table` through `client` (one configured elsewhere: a
    /// test's, against moto).
    pub fn with_client(table: &str, client: Client) -> Self {
        Self {
            name: format!("dynamodb:{table}"),
            table: table.to_owned(),
            client,
        }
    }

    fn fail(&self, problem: impl std::fmt::Display) -> StoreError {
        StoreError::new(&self.name, problem)
    }

    /// One conditional update: `Ok(false)` when its condition failed.
    async fn update(&self, u: &Update) -> Result<bool, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(u.table_name())
            .set_key(Some(u.key().clone()))
            .update_expression(u.update_expression())
            .set_condition_expression(u.condition_expression().map(str::to_owned))
            .set_expression_attribute_names(u.expression_attribute_names().cloned())
            .set_expression_attribute_values(u.expression_attribute_values().cloned())
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(false),
            Err(e) => Err(self.sdk_fail(e)),
        }
    }

    pub(in crate::spend) fn sdk_fail<E, R>(
        &self,
        error: aws_sdk_dynamodb::error::SdkError<E, R>,
    ) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + 'static,
    {
        let problem = match error.code() {
            Some(code) => format!("{code}: {}", error.message().unwrap_or("")),
            None => crate::error::error_chain(&error),
        };
        // A request DynamoDB found invalid (a key too long, an item too
        // large) fails the same way every time: it is not an outage.
        match error.code() {
            Some("ValidationException" | "ItemCollectionSizeLimitExceededException") => {
                StoreError::rejected(&self.name, problem)
            }
            _ => self.fail(problem),
        }
    }

    fn window_key(token: &str, window: &str) -> Item {
        HashMap::from([
            (PARTITION_KEY.to_owned(), s(format!("w#{token}"))),
            (SORT_KEY.to_owned(), s(window)),
        ])
    }

    /// The reservation's write on one window: the condition that every
    /// limit counted in it has room, and the update that adds `ask`.
    fn admission_update(&self, ask: &Ask, window: Window, key: &str) -> Update {
        let mut names = HashMap::from([("#r".to_owned(), format!("r_{}", ask.id))]);
        let mut values = HashMap::from([
            (":req".to_owned(), n(ask.reserve.requests)),
            (":tok".to_owned(), n(ask.reserve.tokens)),
            (":usd".to_owned(), n(ask.reserve.usd_micros)),
            (
                ":res".to_owned(),
                AttributeValue::M(HashMap::from([
                    ("req".to_owned(), n(ask.reserve.requests)),
                    ("tok".to_owned(), n(ask.reserve.tokens)),
                    ("usd".to_owned(), n(ask.reserve.usd_micros)),
                    ("exp".to_owned(), n(ask.expires.timestamp())),
                ])),
            ),
        ]);
        let mut conditions = Vec::new();
        for limit in ask.limits.iter().filter(|l| l.window == window) {
            let attribute = format!("c_{}", suffix(limit.measure));
            let value = format!(":max_{}", suffix(limit.measure));
            conditions.push(format!(
                "(attribute_not_exists({attribute}) OR {attribute} < {value})"
            ));
            values.insert(value, n(limit.max));
        }
        let mut update = "ADD c_req :req, c_tok :tok, c_usd :usd SET #r = :res".to_owned();
        if let Some(ttl) = item_ttl(key, ask.now) {
            names.insert("#ttl".into(), TTL_ATTRIBUTE.into());
            values.insert(":ttl".into(), n(ttl));
            update.push_str(", #ttl = if_not_exists(#ttl, :ttl)");
        }
        Update::builder()
            .table_name(&self.table)
            .set_key(Some(Self::window_key(&ask.token, key)))
            .update_expression(update)
            .condition_expression(conditions.join(" AND "))
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .build()
            .expect("the update has its table, key and expression")
    }

    /// Tries the admission writes once, one conditional update per window,
    /// all at once (one round trip): `Ok(true)` if every window took the
    /// reservation. If one refused, those that took it give it back.
    async fn try_admit(&self, ask: &Ask, keys: &[(Window, String)]) -> Result<bool, StoreError> {
        let updates: Vec<Update> = keys
            .iter()
            .map(|(w, k)| self.admission_update(ask, *w, k))
            .collect();
        let results = join_all(updates.iter().map(|u| self.update(u))).await;
        if results.iter().all(|r| matches!(r, Ok(true))) {
            return Ok(true);
        }
        let attribute = format!("r_{}", ask.id);
        let undo = keys
            .iter()
            .zip(&results)
            .filter(|(_, made)| matches!(made, Ok(true)))
            .map(|((_, key), _)| self.reap(&ask.token, key, &attribute, ask.reserve));
        for undone in join_all(undo).await {
            if let Err(error) = undone {
                // The reservation then stops counting when it expires.
                tracing::warn!(%error, "a refused admission's reservation could not be given back");
            }
        }
        match results.into_iter().find(Result::is_err) {
            Some(Err(error)) => Err(error),
            _ => Ok(false),
        }
    }

    /// Reads the window items (consistently).
    async fn read_windows(&self, token: &str, keys: &[String]) -> Result<Vec<Item>, StoreError> {
        let wanted = KeysAndAttributes::builder()
            .set_keys(Some(
                keys.iter().map(|k| Self::window_key(token, k)).collect(),
            ))
            .consistent_read(true)
            .build()
            .map_err(|e| self.fail(e))?;
        let output = self
            .client
            .batch_get_item()
            .request_items(&self.table, wanted)
            .send()
            .await
            .map_err(|e| self.sdk_fail(e))?;
        let found = output
            .responses()
            .and_then(|r| r.get(&self.table))
            .cloned()
            .unwrap_or_default();
        Ok(keys
            .iter()
            .map(|k| {
                found
                    .iter()
                    .find(|item| item.get(SORT_KEY).and_then(|v| v.as_s().ok()) == Some(k))
                    .cloned()
                    .unwrap_or_default()
            })
            .collect())
    }

    /// Removes one expired reservation from a window (once, whoever tries).
    async fn reap(
        &self,
        token: &str,
        key: &str,
        attribute: &str,
        held: Amount,
    ) -> Result<(), StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::window_key(token, key)))
            .update_expression("REMOVE #r ADD c_req :req, c_tok :tok, c_usd :usd")
            .condition_expression("attribute_exists(#r)")
            .expression_attribute_names("#r", attribute)
            .expression_attribute_values(":req", n(-held.requests))
            .expression_attribute_values(":tok", n(-held.tokens))
            .expression_attribute_values(":usd", n(-held.usd_micros))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(()),
            Err(e) => Err(self.sdk_fail(e)),
        }
    }

    /// The states of the windows, from their items.
    fn states(keys: &[(Window, String)], items: &[Item], now: i64) -> Vec<(Window, WindowState)> {
        keys.iter()
            .zip(items)
            .map(|((w, _), item)| {
                let (reserved, _) = reservations(item, now);
                (
                    *w,
                    WindowState {
                        used: amount_of(item, "u_"),
                        reserved,
                    },
                )
            })
            .collect()
    }

    /// The settle write on one window: the reservation (if still there)
    /// replaced by the usage.
    fn settle_update(&self, s: &Settlement, key: &str, with_reservation: bool) -> Update {
        let used = s.amount();
        let held = s
            .reservation
            .as_ref()
            .filter(|_| with_reservation)
            .map(|r| r.amount)
            .unwrap_or_default();
        let mut builder = Update::builder()
            .table_name(&self.table)
            .set_key(Some(Self::window_key(&s.token, key)))
            .expression_attribute_values(":creq", n(used.requests - held.requests))
            .expression_attribute_values(":ctok", n(used.tokens - held.tokens))
            .expression_attribute_values(":cusd", n(used.usd_micros - held.usd_micros))
            .expression_attribute_values(":ureq", n(used.requests))
            .expression_attribute_values(":utok", n(used.tokens))
            .expression_attribute_values(":uusd", n(used.usd_micros));
        let adds =
            "ADD c_req :creq, c_tok :ctok, c_usd :cusd, u_req :ureq, u_tok :utok, u_usd :uusd";
        builder = match (&s.reservation, with_reservation) {
            (Some(r), true) => builder
                .update_expression(format!("REMOVE #r {adds}"))
                .condition_expression("attribute_exists(#r)")
                .expression_attribute_names("#r", format!("r_{}", r.id)),
            _ => builder.update_expression(adds),
        };
        builder
            .build()
            .expect("the update has its table, key and expression")
    }

    fn usage_update(&self, s: &Settlement) -> Update {
        Update::builder()
            .table_name(&self.table)
            .key(PARTITION_KEY, self::s(format!("u#{}", s.token)))
            .key(SORT_KEY, self::s(usage_sort_key(s)))
            .update_expression(
                "ADD requests :one, input_tokens :in, cached_tokens :cached, output_tokens :out, usd_micros :usd, estimated_requests :est",
            )
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":in", n(s.input))
            .expression_attribute_values(":cached", n(s.cached))
            .expression_attribute_values(":out", n(s.output))
            .expression_attribute_values(":usd", n(s.usd_micros))
            .expression_attribute_values(":est", n(i64::from(s.estimated)))
            .build()
            .expect("the update has its table, key and expression")
    }

    /// Settles with one update per window and one for the usage row, all at
    /// once. A window whose reservation is gone (it expired and was reaped)
    /// gets the usage added alone. What failed is handed back to try again.
    async fn settle_now(&self, s: Arc<Settlement>) -> Result<(), StoreError> {
        let window = |key: &String| {
            let s = &s;
            let key = key.clone();
            async move {
                if s.reservation.is_some()
                    && self.update(&self.settle_update(s, &key, true)).await?
                {
                    return Ok(());
                }
                if s.used {
                    self.update(&self.settle_update(s, &key, false)).await?;
                }
                Ok::<(), StoreError>(())
            }
        };
        let row = async {
            if s.row && s.used {
                self.update(&self.usage_update(&s)).await?;
            }
            Ok::<(), StoreError>(())
        };
        let (windows, row) = futures_util::join!(join_all(s.windows.iter().map(window)), row);
        let failed: Vec<String> = s
            .windows
            .iter()
            .zip(&windows)
            .filter(|(_, r)| r.is_err())
            .map(|(k, _)| k.clone())
            .collect();
        let first = windows
            .into_iter()
            .find_map(Result::err)
            .or_else(|| row.as_ref().err().cloned());
        let Some(mut error) = first else {
            return Ok(());
        };
        error.unsettled = Some(Box::new(Settlement {
            windows: failed,
            row: s.row && row.is_err(),
            ..(*s).clone()
        }));
        Err(error)
    }
}

impl Store for Dynamo {
    fn name(&self) -> &str {
        &self.name
    }

    fn init(&self) -> BoxFuture<Result<(), StoreError>> {
        let this = self.clone();
        Box::pin(async move {
            let attribute = |name: &str| {
                AttributeDefinition::builder()
                    .attribute_name(name)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .expect("name and type given")
            };
            let key = |name: &str, kind: KeyType| {
                KeySchemaElement::builder()
                    .attribute_name(name)
                    .key_type(kind)
                    .build()
                    .expect("name and type given")
            };
            let created = this
                .client
                .create_table()
                .table_name(&this.table)
                .attribute_definitions(attribute(PARTITION_KEY))
                .attribute_definitions(attribute(SORT_KEY))
                .key_schema(key(PARTITION_KEY, KeyType::Hash))
                .key_schema(key(SORT_KEY, KeyType::Range))
                .billing_mode(BillingMode::PayPerRequest)
                .send()
                .await;
            match created {
                Ok(_) => {}
                Err(e) if e.code() == Some("ResourceInUseException") => {}
                Err(e) => return Err(this.sdk_fail(e)),
            }
            for _ in 0..60 {
                let described = this
                    .client
                    .describe_table()
                    .table_name(&this.table)
                    .send()
                    .await
                    .map_err(|e| this.sdk_fail(e))?;
                let active = described
                    .table()
                    .and_then(|t| t.table_status())
                    .is_some_and(|s| s.as_str() == "ACTIVE");
                if active {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let ttl = TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name(TTL_ATTRIBUTE)
                .build()
                .expect("name and state given");
            match this
                .client
                .update_time_to_live()
                .table_name(&this.table)
                .time_to_live_specification(ttl)
                .send()
                .await
            {
                Ok(_) => Ok(()),
                // Already on.
                Err(e) if e.code() == Some("ValidationException") => Ok(()),
                Err(e) => Err(this.sdk_fail(e)),
            }
        })
    }

    fn ping(&self) -> BoxFuture<Result<(), StoreError>> {
        let this = self.clone();
        Box::pin(async move { this.read_windows("-", &["ping".to_owned()]).await.map(drop) })
    }

    fn admit(&self, ask: Ask) -> BoxFuture<Result<Admission, StoreError>> {
        let this = self.clone();
        Box::pin(async move {
            let keys = window_keys(&ask.limits, ask.now);
            let reservation = Reservation {
                id: ask.id.clone(),
                token: ask.token.clone(),
                windows: keys.iter().map(|(_, k)| k.clone()).collect(),
                amount: ask.reserve,
            };
            let now = ask.now.timestamp();
            for _ in 0..ADMISSION_ATTEMPTS {
                if this.try_admit(&ask, &keys).await? {
                    return Ok(Admission::Granted(reservation));
                }
                // Refused: unless expired reservations were in the way, or
                // requests settled (and made room) since, that is the answer.
                let items = this.read_windows(&ask.token, &reservation.windows).await?;
                let mut reaped = false;
                for ((_, key), item) in keys.iter().zip(&items) {
                    for (attribute, held) in reservations(item, now).1 {
                        this.reap(&ask.token, key, &attribute, held).await?;
                        reaped = true;
                    }
                }
                if reaped {
                    continue;
                }
                let states = Self::states(&keys, &items, now);
                if let Some(refusal) = first_exhausted(&ask.limits, &states, ask.now) {
                    return Ok(Admission::Refused(refusal));
                }
            }
            // Still racing after every attempt: refuse rather than overshoot,
            // naming the tightest limit.
            let limit = *ask
                .limits
                .iter()
                .last()
                .expect("a limited request has limits");
            let refusal = super::store::Refusal {
                limit,
                retry_after: limit.window.seconds_left(ask.now),
            };
            Ok(Admission::Refused(refusal))
        })
    }

    fn settle(&self, settlement: Arc<Settlement>) -> BoxFuture<Result<(), StoreError>> {
        let this = self.clone();
        Box::pin(async move { this.settle_now(settlement).await })
    }

    fn windows(
        &self,
        token: String,
        windows: Vec<Window>,
        now: DateTime<Utc>,
    ) -> BoxFuture<Result<Vec<WindowState>, StoreError>> {
        let this = self.clone();
        Box::pin(async move {
            let keys: Vec<String> = windows.iter().map(|w| w.key(now)).collect();
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let items = this.read_windows(&token, &keys).await?;
            Ok(items
                .iter()
                .map(|item| WindowState {
                    used: amount_of(item, "u_"),
                    reserved: reservations(item, now.timestamp()).0,
                })
                .collect())
        })
    }

    fn registry(&self) -> Option<Arc<dyn super::registry::Registry>> {
        Some(Arc::new(self.clone()))
    }

    fn report(
        &self,
        period: Period,
        token: Option<String>,
    ) -> BoxFuture<Result<Vec<Row>, StoreError>> {
        let this = self.clone();
        Box::pin(async move {
            let days = this.usage_rows(period, token).await?;
            Ok(super::store::sum_days(
                days.into_iter().map(|(_, _, row)| row),
            ))
        })
    }

    fn hourly(
        &self,
        period: Period,
        token: Option<String>,
    ) -> BoxFuture<Result<super::store::Hourly, StoreError>> {
        let this = self.clone();
        Box::pin(async move { this.usage_rows(period, token).await })
    }
}

impl Dynamo {
    /// Each usage row of `period` (one token's when named), with its day.
    async fn usage_rows(
        &self,
        period: Period,
        token: Option<String>,
    ) -> Result<super::store::Hourly, StoreError> {
        let this = self;
        let mut rows: super::store::Hourly = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            // One token: a query of its partition (what the gateway
            // itself does, for the billing endpoints); all: a scan
            // (the operator's `usage report`, the console's costs).
            let (items, next) = match &token {
                Some(t) => {
                    let (from, to) = period.day_range();
                    let page = this
                        .client
                        .query()
                        .table_name(&this.table)
                        .consistent_read(true)
                        .key_condition_expression("pk = :u AND sk BETWEEN :from AND :to")
                        .expression_attribute_values(":u", s(format!("u#{t}")))
                        .expression_attribute_values(":from", s(format!("{from}#")))
                        // '~' sorts after '#' and '@': every row of the last day.
                        .expression_attribute_values(":to", s(format!("{to}~")))
                        .set_exclusive_start_key(start.take())
                        .send()
                        .await
                        .map_err(|e| this.sdk_fail(e))?;
                    (page.items().to_vec(), page.last_evaluated_key().cloned())
                }
                None => {
                    let page = this
                        .client
                        .scan()
                        .table_name(&this.table)
                        .consistent_read(true)
                        .filter_expression("begins_with(pk, :u)")
                        .expression_attribute_values(":u", s("u#"))
                        .set_exclusive_start_key(start.take())
                        .send()
                        .await
                        .map_err(|e| this.sdk_fail(e))?;
                    (page.items().to_vec(), page.last_evaluated_key().cloned())
                }
            };
            for item in &items {
                let pk = item.get(PARTITION_KEY).and_then(|v| v.as_s().ok());
                let sk = item.get(SORT_KEY).and_then(|v| v.as_s().ok());
                let (Some(pk), Some(sk)) = (pk, sk) else {
                    continue;
                };
                let Some((day, hour, upstream, model)) = parse_usage_sort_key(sk) else {
                    continue;
                };
                if !period.holds(day) {
                    continue;
                }
                rows.push((
                    day.to_owned(),
                    hour,
                    Row {
                        token: pk.trim_start_matches("u#").to_owned(),
                        model: model.to_owned(),
                        upstream: upstream.to_owned(),
                        requests: number(item, "requests"),
                        input_tokens: number(item, "input_tokens"),
                        cached_tokens: number(item, "cached_tokens"),
                        output_tokens: number(item, "output_tokens"),
                        cost_usd: number(item, "usd_micros"),
                        estimated_requests: number(item, "estimated_requests"),
                    },
                ));
            }
            match next {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_live_until_they_expire() {
        let held = |exp: i64| {
            AttributeValue::M(HashMap::from([
                ("req".to_owned(), n(1)),
                ("tok".to_owned(), n(100)),
                ("usd".to_owned(), n(7)),
                ("exp".to_owned(), n(exp)),
            ]))
        };
        let item: Item = HashMap::from([
            ("r_a".to_owned(), held(1_000)),
            ("r_b".to_owned(), held(2_000)),
            ("u_tok".to_owned(), n(50)),
        ]);
        let (live, expired) = reservations(&item, 1_500);
        assert_eq!(live.tokens, 100);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].0, "r_a");
        assert_eq!(amount_of(&item, "u_").tokens, 50);
    }

    #[test]
    fn usage_rows_name_their_upstream_and_old_rows_read_as_unknown() {
        let s = Settlement {
            token: "alice".into(),
            at: "2026-12-01T10:00:00Z".parse().unwrap(),
            reservation: None,
            used: true,
            model: "org/model#v2@x".into(),
            upstream: "azure-eu".into(),
            input: 1,
            cached: 0,
            output: 1,
            usd_micros: 1,
            estimated: false,
            windows: Vec::new(),
            row: true,
        };
        let sk = usage_sort_key(&s);
        assert_eq!(sk, "2026-12-01T10@azure-eu#org/model#v2@x");
        assert_eq!(
            parse_usage_sort_key(&sk),
            Some(("2026-12-01", 10, "azure-eu", "org/model#v2@x"))
        );
        assert_eq!(
            parse_usage_sort_key("2026-12-01@azure-eu#gpt-4o"),
            Some(("2026-12-01", 0, "azure-eu", "gpt-4o")),
            "a row from before hours"
        );
        assert_eq!(
            parse_usage_sort_key("2026-12-01#gpt-4o#x"),
            Some(("2026-12-01", 0, "-", "gpt-4o#x"))
        );
        assert_eq!(parse_usage_sort_key("2026-12-01"), None);
        assert_eq!(parse_usage_sort_key("2026-12-01@nomodel"), None);
        assert_eq!(parse_usage_sort_key("2026-12-01T24@u#m"), None);
        assert_eq!(parse_usage_sort_key("2026-12-01Tx"), None);
        // The query's bounds take every shape of a day's rows.
        assert!("2026-12-01#" < "2026-12-01#a" && "2026-12-01@z#m" < "2026-12-01~");
        assert!("2026-12-01#" < "2026-12-01T00@u#m" && "2026-12-01T23@z#m" < "2026-12-01~");
    }
}
