//! `GET /v1/gateway/costs`: spend by day, in the shape of OpenAI's
//! organization costs API (`/v1/organization/costs`), read from the usage
//! store.
//!
//! `start_time` (Unix seconds, required) and `end_time` (default: now)
//! bound the period; buckets are UTC days (`bucket_width=1d`, the default)
//! or hours (`1h`), as the store keeps usage by hour; `group_by` is any of
//! `token` and `model` (comma-separated, or given again); `limit` buckets a
//! page (default 7 days or 24 hours, at most 180) and `page` the
//! `next_page` of the last answer. An admin token sees every token; any
//! other token its own.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::json_response;
use crate::error::GatewayError;
use crate::policy::{Inspect, Policy, Verdict};
use crate::spend::account::store_down;
use crate::spend::store::{Hourly, Period, Row, Store};

/// The path.
pub const PATH: &str = "/v1/gateway/costs";
/// The most buckets a page holds.
pub const MAX_BUCKETS: i64 = 180;
/// Buckets a page holds unless `limit` says: a week of days, a day of hours.
const DEFAULT_DAYS: i64 = 7;
const DEFAULT_HOURS: i64 = 24;
/// The earliest start (the store holds nothing before; bounds the arithmetic).
const EARLIEST: i64 = 946_684_800; // 2000-01-01

/// The policy that answers it.
pub struct Costs {
    /// The usage store.
    pub store: Option<Arc<dyn Store>>,
}

/// A costs query, checked.
#[derive(Debug, PartialEq, Eq)]
struct Query {
    /// The start of this page's first bucket (Unix seconds).
    first: i64,
    /// The start of the last bucket asked for (of all pages).
    last: i64,
    /// A bucket's width: 86,400 or 3,600 seconds.
    step: i64,
    /// Buckets per page.
    limit: i64,
    by_token: bool,
    by_model: bool,
}

fn bad(param: &'static str, message: impl Into<String>) -> GatewayError {
    GatewayError::invalid_param(param, message)
}

fn day_of(seconds: i64) -> NaiveDate {
    DateTime::<Utc>::from_timestamp(seconds, 0)
        .unwrap_or_default()
        .date_naive()
}

fn start_of(day: NaiveDate) -> i64 {
    day.and_hms_opt(0, 0, 0)
        .map_or(0, |t| t.and_utc().timestamp())
}

/// The start of the bucket of `step` seconds holding `seconds`.
fn bucket_of(seconds: i64, step: i64) -> i64 {
    seconds - seconds.rem_euclid(step)
}

fn parse(query: &str, now: DateTime<Utc>) -> Result<Query, GatewayError> {
    let mut start = None;
    let mut end = None;
    let mut step = None;
    let mut limit = None;
    let mut page = None;
    let (mut by_token, mut by_model) = (false, false);
    let seconds = |param: &'static str, value: &str| -> Result<i64, GatewayError> {
        value
            .parse::<i64>()
            .ok()
            .filter(|v| (EARLIEST..=253_402_300_799).contains(v))
            .ok_or_else(|| {
                bad(
                    param,
                    format!("`{param}` must be a time in Unix seconds, from 2000 to 9999"),
                )
            })
    };
    let once = |param: &'static str, slot: &Option<i64>| {
        if slot.is_some() {
            Err(bad(param, format!("`{param}` is given more than once")))
        } else {
            Ok(())
        }
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| bad("group_by", "a query value is not UTF-8"))?;
        match key {
            "start_time" => {
                once("start_time", &start)?;
                start = Some(seconds("start_time", &value)?);
            }
            "end_time" => {
                once("end_time", &end)?;
                end = Some(seconds("end_time", &value)?);
            }
            "bucket_width" => {
                once("bucket_width", &step)?;
                step = Some(match &*value {
                    "1d" => 86_400,
                    "1h" => 3_600,
                    _ => return Err(bad("bucket_width", "`bucket_width` must be `1d` or `1h`")),
                });
            }
            "limit" => {
                once("limit", &limit)?;
                limit = Some(
                    value
                        .parse::<i64>()
                        .ok()
                        .filter(|v| (1..=MAX_BUCKETS).contains(v))
                        .ok_or_else(|| {
                            bad("limit", format!("`limit` must be a whole number from 1 to {MAX_BUCKETS}"))
                        })?,
                );
            }
            "page" => {
                once("page", &page)?;
                page = Some(
                    value
                        .strip_prefix("t")
                        .and_then(|v| v.parse::<i64>().ok())
                        .filter(|v| (EARLIEST..=253_402_300_799).contains(v))
                        .ok_or_else(|| bad("page", "`page` must be a `next_page` this endpoint gave"))?,
                );
            }
            "group_by" | "group_by[]" => {
                for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    match part {
                        "token" => by_token = true,
                        "model" => by_model = true,
                        _ => {
                            return Err(bad(
                                "group_by",
                                "`group_by` takes `token` and `model`, comma-separated",
                            ))
                        }
                    }
                }
            }
            _ => {
                return Err(bad(
                    "start_time",
                    format!(
                        "unknown parameter `{}` (expected start_time, end_time, bucket_width, group_by, limit, page)",
                        key.chars().take(40).collect::<String>()
                    ),
                ))
            }
        }
    }
    let step = step.unwrap_or(86_400);
    let start =
        start.ok_or_else(|| bad("start_time", "`start_time` (Unix seconds) is required"))?;
    let end = end.unwrap_or_else(|| now.timestamp().max(start + 1));
    if end <= start {
        return Err(bad("end_time", "`end_time` must be after `start_time`"));
    }
    // `end_time` is exclusive: its own bucket counts only past its start.
    let last = bucket_of(end - 1, step);
    let first = bucket_of(page.unwrap_or(start), step);
    if page.is_some_and(|p| p < bucket_of(start, step) || first > last || p != first) {
        return Err(bad("page", "`page` is outside this query's period"));
    }
    let default = if step == 3_600 {
        DEFAULT_HOURS
    } else {
        DEFAULT_DAYS
    };
    Ok(Query {
        first,
        last,
        step,
        limit: limit.unwrap_or(default),
        by_token,
        by_model,
    })
}

/// One result of a bucket, summed over what is not grouped by.
fn result(token: Option<&str>, model: Option<&str>, row: &Row) -> Value {
    json!({
        "object": "gateway.costs.result",
        "amount": {"value": row.cost_usd.max(0) as f64 / 1e6, "currency": "usd"},
        "token": token,
        "model": model,
        "requests": row.requests,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "estimated": row.estimated_requests > 0,
    })
}

/// The start of the bucket a row (of `day` and `hour`) falls in.
fn row_bucket(day: &str, hour: u8, step: i64) -> Option<i64> {
    let day = NaiveDate::parse_from_str(day, "%Y-%m-%d").ok()?;
    Some(bucket_of(start_of(day) + i64::from(hour) * 3_600, step))
}

/// The page of buckets for `query` from `rows` (each with its day and hour).
fn page(query: &Query, rows: &Hourly) -> Value {
    let buckets = (query.last - query.first) / query.step + 1;
    let count = buckets.clamp(0, query.limit);
    // Each row summed into its bucket's group, in one pass.
    type Groups<'r> = BTreeMap<(Option<&'r str>, Option<&'r str>), Row>;
    let mut buckets_of: HashMap<i64, Groups<'_>> = HashMap::new();
    for (day, hour, row) in rows {
        let Some(bucket) = row_bucket(day, *hour, query.step) else {
            continue;
        };
        let group = (
            query.by_token.then_some(row.token.as_str()),
            query.by_model.then_some(row.model.as_str()),
        );
        buckets_of
            .entry(bucket)
            .or_default()
            .entry(group)
            .or_default()
            .add_row(row);
    }
    let mut data = Vec::new();
    for i in 0..count {
        let start = query.first + i * query.step;
        let results: Vec<Value> = buckets_of
            .get(&start)
            .into_iter()
            .flatten()
            .map(|((token, model), row)| result(*token, *model, row))
            .collect();
        data.push(json!({
            "object": "bucket",
            "start_time": start,
            "end_time": start + query.step,
            "results": results,
        }));
    }
    let more = buckets > count;
    let next = more.then(|| format!("t{}", query.first + count * query.step));
    json!({"object": "page", "data": data, "has_more": more, "next_page": next})
}

impl Policy for Costs {
    fn applies(&self, request: &Inspect<'_>) -> bool {
        request.path == PATH
    }

    fn check<'a>(&'a self, request: &'a mut Inspect<'_>) -> Verdict<'a> {
        Box::pin(async move {
            if *request.method != Method::GET {
                return Err(GatewayError::MethodNotAllowed("this"));
            }
            let admitted = request.admitted;
            if admitted.admin && admitted.in_query {
                return Err(GatewayError::AdminTokenInQuery);
            }
            let query = parse(admitted.query.as_deref().unwrap_or(""), request.now)?;
            // An ordinary token sees its own usage only.
            let token =
                (!admitted.admin).then(|| admitted.name.as_deref().unwrap_or("-").to_owned());
            let last_of_page = std::cmp::min(
                query.last,
                query.first.saturating_add((query.limit - 1) * query.step),
            );
            let rows = match &self.store {
                Some(store) => store
                    .hourly(
                        Period::Days(
                            day_of(query.first).format("%Y-%m-%d").to_string(),
                            day_of(last_of_page).format("%Y-%m-%d").to_string(),
                        ),
                        token,
                    )
                    .await
                    .map_err(store_down)?,
                None => Vec::new(),
            };
            request.reply = Some(json_response(StatusCode::OK, &page(&query, &rows), None));
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-06-10T12:00:00Z".parse().unwrap()
    }

    const JUNE_1: i64 = 1_780_272_000; // 2026-06-01T00:00:00Z
    const DAY: i64 = 86_400;

    #[test]
    fn queries_are_checked_and_bounded() {
        let q = parse(
            &format!("start_time={}&group_by=token,model", JUNE_1 + 5),
            now(),
        )
        .unwrap();
        assert_eq!(
            (q.first, q.last, q.step),
            (JUNE_1, JUNE_1 + 9 * DAY, DAY),
            "{q:?}"
        );
        assert!(q.by_token && q.by_model);
        assert_eq!(q.limit, 7);
        let q = parse(
            &format!(
                "start_time={JUNE_1}&end_time={}&group_by=model&limit=180",
                JUNE_1 + DAY
            ),
            now(),
        )
        .unwrap();
        assert_eq!(q.first, q.last, "end_time is exclusive");
        assert!(!q.by_token && q.by_model);
        let hours = parse(
            &format!(
                "start_time={}&end_time={}&bucket_width=1h",
                JUNE_1 + 3_700,
                JUNE_1 + 4 * 3_600
            ),
            now(),
        )
        .unwrap();
        assert_eq!(
            (hours.first, hours.last, hours.step, hours.limit),
            (JUNE_1 + 3_600, JUNE_1 + 3 * 3_600, 3_600, 24)
        );
        for (query, param) in [
            ("", "start_time"),
            ("start_time=abc", "start_time"),
            ("start_time=-5", "start_time"),
            ("start_time=99999999999999999999", "start_time"),
            (
                &format!("start_time={JUNE_1}&end_time={JUNE_1}"),
                "end_time",
            ),
            (
                &format!("start_time={JUNE_1}&bucket_width=1w"),
                "bucket_width",
            ),
            (
                &format!("start_time={JUNE_1}&bucket_width=1h&bucket_width=1d"),
                "bucket_width",
            ),
            (&format!("start_time={JUNE_1}&limit=181"), "limit"),
            (&format!("start_time={JUNE_1}&limit=0"), "limit"),
            (&format!("start_time={JUNE_1}&group_by=project"), "group_by"),
            (&format!("start_time={JUNE_1}&page=x"), "page"),
            (
                &format!("start_time={JUNE_1}&page=t{}", JUNE_1 - DAY),
                "page",
            ),
            (&format!("start_time={JUNE_1}&page=t{}", JUNE_1 + 5), "page"),
            (
                &format!("start_time={JUNE_1}&start_time={JUNE_1}"),
                "start_time",
            ),
            (&format!("start_time={JUNE_1}&token=x"), "start_time"),
        ] {
            let error = parse(query, now()).unwrap_err();
            assert_eq!(error.param(), Some(param), "{query}: {error}");
            assert_eq!(error.status(), 400);
        }
    }

    fn row(token: &str, model: &str, usd: i64, estimated: i64) -> Row {
        Row {
            token: token.into(),
            model: model.into(),
            upstream: "-".into(),
            requests: 1,
            input_tokens: 10,
            output_tokens: 5,
            cost_usd: usd,
            estimated_requests: estimated,
            ..Row::default()
        }
    }

    fn rows() -> Hourly {
        vec![
            ("2026-06-01".to_owned(), 0, row("a", "gpt-4o", 1_500_000, 0)),
            ("2026-06-01".to_owned(), 5, row("b", "gpt-4o", 250_000, 1)),
            ("2026-06-03".to_owned(), 23, row("a", "gpt-4o-mini", 10, 0)),
        ]
    }

    #[test]
    fn day_buckets_are_grouped_as_asked_and_paged() {
        let q = parse(
            &format!("start_time={JUNE_1}&limit=2&group_by=token"),
            now(),
        )
        .unwrap();
        let answer = page(&q, &rows());
        assert_eq!(answer["object"], "page");
        assert_eq!(answer["has_more"], true);
        assert_eq!(answer["next_page"], format!("t{}", JUNE_1 + 2 * DAY));
        let data = answer["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        assert_eq!(data[0]["start_time"], JUNE_1);
        assert_eq!(data[0]["end_time"], JUNE_1 + DAY);
        let results = data[0]["results"].as_array().unwrap();
        assert_eq!(results.len(), 2, "both hours of the day in its bucket");
        assert_eq!(results[0]["token"], "a");
        assert_eq!(results[0]["model"], Value::Null);
        assert_eq!(results[0]["amount"]["value"], 1.5);
        assert_eq!(results[1]["estimated"], true);
        assert_eq!(data[1]["results"], json!([]));
        // The next page, from where the last ended.
        let q = parse(
            &format!("start_time={JUNE_1}&limit=2&page=t{}", JUNE_1 + 2 * DAY),
            now(),
        )
        .unwrap();
        let answer = page(&q, &rows());
        let data = answer["data"].as_array().unwrap();
        assert_eq!(data[0]["start_time"], JUNE_1 + 2 * DAY);
        let results = data[0]["results"].as_array().unwrap();
        assert_eq!(results.len(), 1, "ungrouped: one sum");
        assert_eq!(
            (results[0]["token"].clone(), results[0]["requests"].clone()),
            (Value::Null, json!(1))
        );
    }

    #[test]
    fn hour_buckets_place_each_row_in_its_hour() {
        let q = parse(
            &format!("start_time={JUNE_1}&bucket_width=1h&limit=6&group_by=token"),
            now(),
        )
        .unwrap();
        let answer = page(&q, &rows());
        let data = answer["data"].as_array().unwrap();
        assert_eq!(data.len(), 6);
        assert_eq!(data[0]["end_time"], JUNE_1 + 3_600);
        assert_eq!(data[0]["results"][0]["token"], "a");
        assert_eq!(data[5]["start_time"], JUNE_1 + 5 * 3_600);
        assert_eq!(data[5]["results"][0]["token"], "b");
        for empty in &data[1..5] {
            assert_eq!(empty["results"], json!([]));
        }
        assert_eq!(answer["next_page"], format!("t{}", JUNE_1 + 6 * 3_600));
    }
}
