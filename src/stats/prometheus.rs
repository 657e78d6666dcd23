//! Prometheus metrics for the local server, through the `metrics` facade and
//! its Prometheus exporter (which renders the text exposition format).
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `chatgpt_gateway_requests_total` | counter | `status`, `code` (the gateway's error code, else `upstream`), `token` with `METRICS_TOKEN_LABELS=true` |
//! | `chatgpt_gateway_request_duration_seconds` | histogram | |
//! | `chatgpt_gateway_upstream_first_byte_seconds` | histogram | (requests that reached the upstream) |
//! | `chatgpt_gateway_tokens_total` | counter | `model`, `kind` (`input`, `cached_input`, `output`), `token` as above |
//! | `chatgpt_gateway_cost_usd_total` | counter | `model` |
//! | `chatgpt_gateway_requests_in_flight` | gauge | |
//! | `chatgpt_gateway_usage_store_errors_total` | counter | |
//! | `chatgpt_gateway_token_list_loaded_timestamp_seconds` | gauge | |
//! | `chatgpt_gateway_upstream_attempts_total` | counter | `upstream`, `result` (the status, or why there was none) — with `UPSTREAMS_FILE` |
//! | `chatgpt_gateway_upstream_attempt_seconds` | histogram | `upstream` — time to the answer's head (or the failure) |
//! | `chatgpt_gateway_upstream_failovers_total` | counter | `upstream` (the one failed over from) |
//! | `chatgpt_gateway_upstream_up` | gauge | `upstream`: 1 when taking requests, 0 while open, resting or dead (as of its last attempt) |

use std::sync::Arc;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::Figures;
use crate::record::{BoxFuture, Finish, Record};
use crate::usage::prices::Prices;

/// Requests, by status and code.
pub const REQUESTS: &str = "chatgpt_gateway_requests_total";
/// Request durations.
pub const DURATION: &str = "chatgpt_gateway_request_duration_seconds";
/// Upstream time to first byte.
pub const FIRST_BYTE: &str = "chatgpt_gateway_upstream_first_byte_seconds";
/// Tokens, by model and kind.
pub const TOKENS: &str = "chatgpt_gateway_tokens_total";
/// Dollars, by model.
pub const COST: &str = "chatgpt_gateway_cost_usd_total";
/// Requests being served.
pub const IN_FLIGHT: &str = "chatgpt_gateway_requests_in_flight";
/// Usage store failures.
pub const STORE_ERRORS: &str = "chatgpt_gateway_usage_store_errors_total";
/// When the token list was last loaded.
pub const TOKEN_LIST_LOADED: &str = "chatgpt_gateway_token_list_loaded_timestamp_seconds";
/// Attempts per upstream, by result.
pub const UPSTREAM_ATTEMPTS: &str = "chatgpt_gateway_upstream_attempts_total";
/// Each attempt's time to its answer's head, per upstream.
pub const UPSTREAM_ATTEMPT_SECONDS: &str = "chatgpt_gateway_upstream_attempt_seconds";
/// Failovers away from each upstream.
pub const UPSTREAM_FAILOVERS: &str = "chatgpt_gateway_upstream_failovers_total";
/// Whether each upstream takes requests.
pub const UPSTREAM_UP: &str = "chatgpt_gateway_upstream_up";

/// Histogram buckets, in seconds: from a cached reply to a long stream.
const BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Installs the process's Prometheus recorder; the handle renders `/metrics`.
pub fn install() -> Result<PrometheusHandle, String> {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&BUCKETS)
        .map_err(|e| e.to_string())?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
    // Present from the first scrape, before any request.
    metrics::gauge!(IN_FLIGHT).set(0.0);
    metrics::counter!(STORE_ERRORS).absolute(0);
    Ok(handle)
}

/// The completion hook that counts each request.
#[derive(Debug, Clone)]
pub struct Prometheus {
    /// Label request and token counters with the token's name.
    pub token_labels: bool,
    /// What usage costs.
    pub prices: Arc<Prices>,
}

impl Finish for Prometheus {
    fn start(&self) {
        metrics::gauge!(IN_FLIGHT).increment(1.0);
    }

    fn finish(&self, record: &Record) -> Option<BoxFuture<()>> {
        metrics::gauge!(IN_FLIGHT).decrement(1.0);
        let f = Figures::of(record, &self.prices);
        let status = f.status.to_string();
        let code = f.code.unwrap_or("upstream");
        // Made only when it labels something.
        let token = self
            .token_labels
            .then(|| f.token.clone().unwrap_or_else(|| "-".into()));
        if let Some(token) = &token {
            metrics::counter!(REQUESTS, "status" => status, "code" => code, "token" => token.clone())
                .increment(1);
        } else {
            metrics::counter!(REQUESTS, "status" => status, "code" => code).increment(1);
        }
        metrics::histogram!(DURATION).record(f.latency_ms / 1e3);
        if let Some(ms) = f.first_byte_ms {
            metrics::histogram!(FIRST_BYTE).record(ms / 1e3);
        }
        if let (Some((input, cached, output)), Some(model)) = (f.tokens, f.model.clone()) {
            for (kind, n) in [
                ("input", input),
                ("cached_input", cached),
                ("output", output),
            ] {
                if let Some(token) = &token {
                    metrics::counter!(TOKENS, "model" => model.clone(), "kind" => kind, "token" => token.clone())
                        .increment(n);
                } else {
                    metrics::counter!(TOKENS, "model" => model.clone(), "kind" => kind)
                        .increment(n);
                }
            }
            if let Some(cost) = f.cost_usd {
                // Dollars are fractions, and the facade's counters count
                // whole numbers: a gauge that is only ever added to.
                metrics::gauge!(COST, "model" => model).increment(cost);
            }
        }
        upstream_attempts(record);
        None
    }
}

/// A pool's attempts: per upstream, each result and time, the failovers
/// away from it (every attempt but the last), and its state after.
fn upstream_attempts(record: &Record) {
    let last = record.attempts.len().saturating_sub(1);
    for (i, attempt) in record.attempts.iter().enumerate() {
        let upstream = attempt.upstream.to_string();
        let result = match attempt.result {
            Ok(status) => std::borrow::Cow::Owned(status.to_string()),
            Err(code) => std::borrow::Cow::Borrowed(code),
        };
        metrics::counter!(UPSTREAM_ATTEMPTS, "upstream" => upstream.clone(), "result" => result)
            .increment(1);
        metrics::histogram!(UPSTREAM_ATTEMPT_SECONDS, "upstream" => upstream.clone())
            .record(attempt.ms / 1e3);
        if i < last {
            metrics::counter!(UPSTREAM_FAILOVERS, "upstream" => upstream.clone()).increment(1);
        }
        let up = if attempt.state == "ok" { 1.0 } else { 0.0 };
        metrics::gauge!(UPSTREAM_UP, "upstream" => upstream).set(up);
    }
}
