//! What an operator watches: the figures of each finished request, taken
//! once from its [`Record`], and published where the gateway runs:
//!
//! - [`emf`]: on Lambda, one CloudWatch Embedded Metric Format document per
//!   request, a JSON line on stdout that CloudWatch turns into metrics (no
//!   API call, no added latency);
//! - [`prometheus`]: on a server, counters and histograms for `/metrics`,
//!   and `/healthz`, on a listener of their own (`METRICS_LISTEN`).
//!
//! No figure, label or property holds a secret: the token appears only by
//! its entry's name.

pub mod emf;
pub mod prometheus;

use std::sync::Arc;

use crate::record::Record;
use crate::usage::prices::Prices;

/// One finished request's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// A 4xx the gateway answered itself.
    pub rejected: bool,
    /// A 5xx the gateway answered itself.
    pub gateway_error: bool,
    /// A 5xx from the upstream.
    pub upstream_error: bool,
    /// Milliseconds from arrival to the end of the response.
    pub latency_ms: f64,
    /// Milliseconds from sending upstream to the upstream's response head.
    pub first_byte_ms: Option<f64>,
    /// The model, when the response carried usage.
    pub model: Option<String>,
    /// Input tokens (cached included), cached input tokens, output tokens.
    pub tokens: Option<(u64, u64, u64)>,
    /// Dollars, when the model has a price.
    pub cost_usd: Option<f64>,
    /// The status the client got.
    pub status: u16,
    /// The gateway's error code; `None` when the upstream answered.
    pub code: Option<&'static str>,
    /// The token entry's name.
    pub token: Option<Arc<str>>,
    /// The Lambda request id.
    pub request_id: Option<String>,
    /// The upstream that answered.
    pub upstream: Option<Arc<str>>,
    /// With a pool: how many times the request failed over (its attempts
    /// less one); `None` without one.
    pub failovers: Option<u64>,
}

impl Figures {
    /// The figures of `record`, priced with `prices`.
    pub fn of(record: &Record, prices: &Prices) -> Self {
        let ours = record.code.is_some();
        let charge = record.charge(prices);
        let usage = &charge.usage;
        Self {
            rejected: ours && (400..500).contains(&record.status),
            gateway_error: ours && record.status >= 500,
            upstream_error: !ours && record.status >= 500,
            latency_ms: record.elapsed_ms(),
            first_byte_ms: record.upstream_ms,
            model: usage
                .as_ref()
                .map(|u| u.model.clone().unwrap_or_else(|| "unknown".into())),
            tokens: usage.as_ref().map(|u| (u.input, u.cached_input, u.output)),
            cost_usd: charge.usd,
            status: record.status,
            code: record.code,
            token: record.token.clone(),
            request_id: record.request_id.clone(),
            upstream: record.upstream.clone(),
            failovers: (!record.attempts.is_empty())
                .then(|| record.attempts.len().saturating_sub(1) as u64),
        }
    }
}

/// The token list was (re)loaded: for `chatgpt_gateway_token_list_loaded_timestamp_seconds`.
pub fn token_list_loaded() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    metrics::gauge!(prometheus::TOKEN_LIST_LOADED).set(now);
}

/// The usage store failed an operation: for `chatgpt_gateway_usage_store_errors_total`.
pub fn usage_store_error() {
    metrics::counter!(prometheus::STORE_ERRORS).increment(1);
}
