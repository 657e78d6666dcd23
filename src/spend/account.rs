//! The token holder's own usage, answered by the gateway itself (never
//! forwarded), for a request authenticated like any other:
//!
//! - `GET /v1/gateway/usage`: the token's limits, and per limit what is used,
//!   reserved and left, and when its window resets;
//! - `GET /v1/dashboard/billing/subscription` and
//!   `GET /v1/dashboard/billing/usage?start_date=&end_date=` (also without
//!   `/v1`): the shapes chat front-ends (NextChat, LobeChat) read to show a
//!   balance. `hard_limit_usd` is the monthly dollar limit, else the total
//!   one; `total_usage` is in cents; `access_until` is the expiry in Unix time.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use http::{Method, Response, StatusCode};
use serde_json::{json, Value};

use super::store::{Period, Store, WindowState};
use super::Measure;
use crate::auth::Admitted;
use crate::error::GatewayError;
use crate::policy::{Inspect, Policy, Verdict};

/// The policy that answers the usage endpoints.
#[derive(Debug, Clone)]
pub struct Account {
    /// The store, if usage is kept.
    pub store: Option<Arc<dyn Store>>,
}

/// Which usage endpoint a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Limits,
    Subscription,
    BillingUsage,
}

fn endpoint(path: &str) -> Option<Endpoint> {
    let path = path.strip_prefix("/v1").unwrap_or(path);
    match path.trim_end_matches('/') {
        "/gateway/usage" => Some(Endpoint::Limits),
        "/dashboard/billing/subscription" => Some(Endpoint::Subscription),
        "/dashboard/billing/usage" => Some(Endpoint::BillingUsage),
        _ => None,
    }
}

impl Policy for Account {
    fn applies(&self, request: &Inspect<'_>) -> bool {
        *request.method == Method::GET && endpoint(request.path).is_some()
    }

    fn check<'a>(&'a self, request: &'a mut Inspect<'_>) -> Verdict<'a> {
        Box::pin(async move {
            if *request.method != Method::GET {
                return Ok(());
            }
            let Some(endpoint) = endpoint(request.path) else {
                return Ok(());
            };
            let now = request.now;
            let admitted = request.admitted;
            let body = match endpoint {
                Endpoint::Limits => self.limits(admitted, now).await?,
                Endpoint::Subscription => subscription(admitted),
                Endpoint::BillingUsage => self.billing_usage(admitted, now).await?,
            };
            let mut response = Response::new(Bytes::from(body.to_string()));
            *response.status_mut() = StatusCode::OK;
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            request.reply = Some(response);
            Ok(())
        })
    }
}

/// A store that failed, as the client hears it (and the log says why).
pub fn store_down(error: super::store::StoreError) -> GatewayError {
    tracing::error!(%error, "usage store unreachable");
    GatewayError::UsageStoreUnavailable
}

/// A time as the gateway's own answers show it: RFC 3339, whole seconds, UTC.
pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A measure's amount as the endpoints show it (dollars, not micro-dollars).
fn shown(measure: Measure, value: i64) -> Value {
    match measure {
        Measure::Usd => json!(value as f64 / 1e6),
        _ => json!(value),
    }
}

/// Per limit of `token`'s `limits`, what is used, reserved and left at
/// `now`, and when its window resets (`GET /v1/gateway/usage`'s rows, and
/// the console's).
pub async fn limit_rows(
    store: Option<&Arc<dyn Store>>,
    token: Option<&str>,
    limits: &crate::limits::Limits,
    now: DateTime<Utc>,
) -> Result<Vec<Value>, GatewayError> {
    let windows = limits.windows();
    let states: Vec<WindowState> = match (store, token) {
        (Some(store), Some(token)) if !windows.is_empty() => store
            .windows(token.to_owned(), windows.clone(), now)
            .await
            .map_err(store_down)?,
        _ => vec![WindowState::default(); windows.len()],
    };
    Ok(limits
        .iter()
        .map(|limit| {
            let state = windows
                .iter()
                .position(|w| *w == limit.window)
                .map(|i| states[i].clone())
                .unwrap_or_default();
            let used = limit.measure.of(&state.used);
            let reserved = limit.measure.of(&state.reserved);
            json!({
                "limit": limit.key,
                "window": limit.window.as_str(),
                "measure": limit.measure.as_str(),
                "max": shown(limit.measure, limit.max),
                "used": shown(limit.measure, used),
                "reserved": shown(limit.measure, reserved),
                "remaining": shown(limit.measure, limit.max.saturating_sub(crate::limits::counter_add(used, reserved)).max(0)),
                "resets_at": limit.window.end(now).map(rfc3339),
            })
        })
        .collect())
}

impl Account {
    async fn limits(&self, admitted: &Admitted, now: DateTime<Utc>) -> Result<Value, GatewayError> {
        let limits = admitted
            .rules
            .as_ref()
            .and_then(|r| r.limits.clone())
            .unwrap_or_default();
        let token = admitted.name.clone();
        let rows = limit_rows(self.store.as_ref(), token.as_deref(), &limits, now).await?;
        Ok(json!({
            "object": "gateway.usage",
            "token": token,
            "expires_at": admitted.expires.map(rfc3339),
            "store": self.store.as_ref().map(|s| s.name().to_owned()),
            "limits": rows,
        }))
    }

    async fn billing_usage(
        &self,
        admitted: &Admitted,
        now: DateTime<Utc>,
    ) -> Result<Value, GatewayError> {
        let query = admitted.query.as_deref().unwrap_or("");
        let today = now.date_naive();
        let first = NaiveDate::from_ymd_opt(today.year(), today.month(), 1).unwrap_or(today);
        let start = date_param(query, "start_date")?.unwrap_or(first);
        // OpenAI's end_date is exclusive.
        let end = match date_param(query, "end_date")? {
            Some(end) => end,
            None => today.succ_opt().unwrap_or(today),
        };
        if end <= start {
            return Err(GatewayError::invalid_param(
                "end_date",
                "`end_date` must be after `start_date`",
            ));
        }
        if (end - start).num_days() > MAX_BILLING_DAYS {
            return Err(GatewayError::invalid_param(
                "end_date",
                format!(
                    "the range of `start_date` to `end_date` is at most {MAX_BILLING_DAYS} days"
                ),
            ));
        }
        let last = end.pred_opt().unwrap_or(end);
        let mut cents = 0.0;
        if let (Some(store), Some(token)) = (&self.store, &admitted.name) {
            {
                let period = Period::Days(
                    start.format("%Y-%m-%d").to_string(),
                    last.format("%Y-%m-%d").to_string(),
                );
                let rows = store
                    .report(period, Some(token.to_string()))
                    .await
                    .map_err(store_down)?;
                cents = rows.iter().map(|r| r.cost_usd.max(0) as f64 / 1e4).sum();
            }
        }
        // `+ 0.0` turns a negative zero into zero: no "-0.0" in the JSON.
        let total = (cents * 1e4).round() / 1e4 + 0.0;
        Ok(json!({
            "object": "list",
            "total_usage": total,
            "start_date": start.format("%Y-%m-%d").to_string(),
            "end_date": end.format("%Y-%m-%d").to_string(),
        }))
    }
}

/// The longest range the billing usage endpoint answers, as OpenAI's.
const MAX_BILLING_DAYS: i64 = 100;

/// A `YYYY-MM-DD` query parameter: absent, or a real date written so
/// (four-digit year); given twice, or anything else, is the request's `400`.
fn date_param(query: &str, name: &'static str) -> Result<Option<NaiveDate>, GatewayError> {
    let mut found = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != name {
            continue;
        }
        let bad = || {
            GatewayError::invalid_param(
                name,
                format!("`{name}` must be a date written YYYY-MM-DD, given once"),
            )
        };
        let shaped = value.len() == 10
            && value.bytes().enumerate().all(|(i, b)| {
                if i == 4 || i == 7 {
                    b == b'-'
                } else {
                    b.is_ascii_digit()
                }
            });
        if !shaped || found.is_some() {
            return Err(bad());
        }
        found = Some(NaiveDate::parse_from_str(value, "%Y-%m-%d").map_err(|_| bad())?);
    }
    Ok(found)
}

fn subscription(admitted: &Admitted) -> Value {
    let hard = admitted
        .rules
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.hard_limit_usd());
    json!({
        "object": "billing_subscription",
        "has_payment_method": true,
        "hard_limit_usd": hard,
        "soft_limit_usd": hard,
        "system_hard_limit_usd": hard,
        "access_until": admitted.expires.map(|e| e.timestamp()),
        "plan": {"id": "chatgpt-gateway", "title": "chatgpt-gateway"},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usage_paths_are_known_with_and_without_v1() {
        assert_eq!(endpoint("/v1/gateway/usage"), Some(Endpoint::Limits));
        assert_eq!(
            endpoint("/dashboard/billing/subscription"),
            Some(Endpoint::Subscription)
        );
        assert_eq!(
            endpoint("/v1/dashboard/billing/usage"),
            Some(Endpoint::BillingUsage)
        );
        assert_eq!(endpoint("/v1/chat/completions"), None);
        assert_eq!(endpoint("/v1/gateway/usage/x"), None);
    }

    #[test]
    fn dates_are_checked_before_any_arithmetic() {
        let date = |q: &str| date_param(q, "end_date");
        assert_eq!(
            date("start_date=2026-12-01&end_date=2026-12-05").unwrap(),
            NaiveDate::from_ymd_opt(2026, 12, 5)
        );
        assert_eq!(date("start_date=2026-12-01").unwrap(), None);
        for bad in [
            "end_date=-262143-01-01",
            "end_date=+262143-01-01",
            "end_date=2026-13-01",
            "end_date=2026-02-30",
            "end_date=2026-1-1",
            "end_date=",
            "end_date",
            "end_date=2026-12-01&end_date=2026-12-02",
        ] {
            let error = date(bad).unwrap_err();
            assert_eq!(
                (error.status(), error.param()),
                (400.try_into().unwrap(), Some("end_date")),
                "{bad}"
            );
        }
    }
}
