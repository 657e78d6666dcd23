//! CloudWatch Embedded Metric Format: one JSON document per request,
//! printed as one line on stdout beside the access log line.
//!
//! Each document holds `_aws.Timestamp` (epoch milliseconds) and two
//! directives in `_aws.CloudWatchMetrics`, in the namespace
//! `METRICS_NAMESPACE`:
//!
//! - request metrics (`Requests`, `Rejected`, `GatewayErrors`,
//!   `UpstreamErrors`, `Latency`, `TimeToFirstByte`, and with a pool of
//!   upstreams `Failovers`) with the dimensionless set only, so totals exist;
//! - usage metrics (`InputTokens`, `OutputTokens`, `CachedInputTokens`,
//!   `CostUSD`), when the response carried usage, with the dimensionless set
//!   and `["Model"]`.
//!
//! Every metric and dimension a directive names has its value at the root.
//! The token's name, the status, the error code, the upstream that answered
//! and the request id are plain
//! properties, not dimensions: each distinct dimension value is a metric of
//! its own, which CloudWatch bills. A metric without a value (no time to
//! first byte for a request the gateway refused) is left out, not sent as 0.

use std::io::Write;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::Figures;
use crate::record::{BoxFuture, Finish, Record};
use crate::usage::prices::Prices;

/// The namespace when `METRICS_NAMESPACE` is not set.
pub const DEFAULT_NAMESPACE: &str = "ChatGptGateway";

/// The completion hook that prints each request's EMF document.
#[derive(Debug, Clone)]
pub struct Emf {
    /// The CloudWatch namespace.
    pub namespace: String,
    /// What usage costs.
    pub prices: Arc<Prices>,
}

/// The EMF document of `figures`, stamped `timestamp_ms`.
pub fn document(namespace: &str, figures: &Figures, timestamp_ms: i64) -> Value {
    let mut root = Map::new();
    let mut metric = |metrics: &mut Vec<Value>, name: &str, unit: &str, value: Value| {
        metrics.push(json!({"Name": name, "Unit": unit}));
        root.insert(name.to_owned(), value);
    };
    let count = |yes: bool| json!(u8::from(yes));
    let mut request = Vec::new();
    metric(&mut request, "Requests", "Count", json!(1));
    metric(&mut request, "Rejected", "Count", count(figures.rejected));
    metric(
        &mut request,
        "GatewayErrors",
        "Count",
        count(figures.gateway_error),
    );
    metric(
        &mut request,
        "UpstreamErrors",
        "Count",
        count(figures.upstream_error),
    );
    metric(
        &mut request,
        "Latency",
        "Milliseconds",
        json!(round(figures.latency_ms)),
    );
    if let Some(ms) = figures.first_byte_ms {
        metric(
            &mut request,
            "TimeToFirstByte",
            "Milliseconds",
            json!(round(ms)),
        );
    }
    if let Some(failovers) = figures.failovers {
        metric(&mut request, "Failovers", "Count", json!(failovers));
    }
    let mut directives = vec![json!({
        "Namespace": namespace,
        "Dimensions": [[]],
        "Metrics": request,
    })];
    if let Some((input, cached, output)) = figures.tokens {
        let mut usage = Vec::new();
        metric(&mut usage, "InputTokens", "Count", json!(input));
        metric(&mut usage, "OutputTokens", "Count", json!(output));
        metric(&mut usage, "CachedInputTokens", "Count", json!(cached));
        if let Some(cost) = figures.cost_usd {
            metric(&mut usage, "CostUSD", "None", json!(cost));
        }
        directives.push(json!({
            "Namespace": namespace,
            "Dimensions": [[], ["Model"]],
            "Metrics": usage,
        }));
        root.insert(
            "Model".into(),
            json!(figures.model.as_deref().unwrap_or("unknown")),
        );
    }
    root.insert(
        "_aws".into(),
        json!({"Timestamp": timestamp_ms, "CloudWatchMetrics": directives}),
    );
    root.insert("status".into(), json!(figures.status));
    root.insert("code".into(), json!(figures.code));
    root.insert("token".into(), json!(figures.token));
    root.insert("request_id".into(), json!(figures.request_id));
    if let Some(upstream) = &figures.upstream {
        root.insert("upstream".into(), json!(&**upstream));
    }
    Value::Object(root)
}

fn round(ms: f64) -> f64 {
    (ms * 1e3).round() / 1e3
}

impl Finish for Emf {
    fn finish(&self, record: &Record) -> Option<BoxFuture<()>> {
        let figures = Figures::of(record, &self.prices);
        let now = chrono::Utc::now().timestamp_millis();
        let mut line = document(&self.namespace, &figures, now).to_string();
        line.push('\n');
        // One write of one whole line: it never interleaves with a log line.
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures() -> Figures {
        Figures {
            rejected: false,
            gateway_error: false,
            upstream_error: false,
            latency_ms: 12.3456,
            first_byte_ms: Some(4.0),
            model: Some("gpt-4o-mini".into()),
            tokens: Some((3, 1, 5)),
            cost_usd: Some(0.0000035),
            status: 200,
            code: None,
            token: Some("alice".into()),
            request_id: Some("req-1".into()),
            upstream: Some("default".into()),
            failovers: None,
        }
    }

    /// The specification's rules: every name a directive lists is at the root.
    fn assert_valid(doc: &Value) {
        let aws = &doc["_aws"];
        assert!(aws["Timestamp"].as_i64().unwrap() > 0);
        for directive in aws["CloudWatchMetrics"].as_array().unwrap() {
            assert!(directive["Namespace"].is_string());
            let metrics = directive["Metrics"].as_array().unwrap();
            assert!(metrics.len() <= 100);
            for m in metrics {
                assert!(doc[m["Name"].as_str().unwrap()].is_number(), "{m}");
            }
            for set in directive["Dimensions"].as_array().unwrap() {
                let set = set.as_array().unwrap();
                assert!(set.len() <= 30);
                for d in set {
                    assert!(doc[d.as_str().unwrap()].is_string(), "{d}");
                }
            }
        }
    }

    #[test]
    fn a_document_follows_the_specification() {
        let doc = document("Ns", &figures(), 1_700_000_000_000);
        assert_valid(&doc);
        assert_eq!(doc["Requests"], 1);
        assert_eq!(doc["Latency"], 12.346);
        assert_eq!(doc["Model"], "gpt-4o-mini");
        assert_eq!(doc["token"], "alice");
        let directives = doc["_aws"]["CloudWatchMetrics"].as_array().unwrap();
        assert_eq!(directives[1]["Dimensions"], json!([[], ["Model"]]));
        // A refusal: no time to first byte, no usage, and still valid.
        let refused = Figures {
            rejected: true,
            first_byte_ms: None,
            model: None,
            tokens: None,
            cost_usd: None,
            status: 401,
            code: Some("invalid_token"),
            token: None,
            ..figures()
        };
        let doc = document("Ns", &refused, 1);
        assert_valid(&doc);
        assert_eq!(doc["Rejected"], 1);
        assert!(doc.get("TimeToFirstByte").is_none());
        assert_eq!(
            doc["_aws"]["CloudWatchMetrics"].as_array().unwrap().len(),
            1
        );
    }
}
