//! `GET /v1/gateway/upstreams`: each upstream's state, for an operator.
//!
//! Answered by the gateway itself (never forwarded), for a token whose entry
//! has `admin: true`, presented in a header (`Authorization: Bearer` or
//! `X-Token`), never in the query: a query lands in browser history and
//! access logs. Other tokens get `403`; an admin token in the query `401`.
//! The answer names each upstream's kind, URL, models, priority, weight,
//! state (`ok`, `open` or `resting` with `until`, `dead`) and failures so
//! far. Never a key.

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use serde_json::json;

use super::live::Live;
use super::Status;
use crate::clock::Clock;
use crate::error::GatewayError;
use crate::policy::{Inspect, Policy, Verdict};

/// The path it answers (with or without `/v1`).
pub const PATH: &str = "/gateway/upstreams";

/// The policy that answers `GET /v1/gateway/upstreams`.
#[derive(Clone)]
pub struct UpstreamsReport {
    /// The upstreams (their health is shared with the gateway's).
    pub upstreams: Live,
    /// The time their rests and cool-downs are judged by.
    pub clock: Clock,
}

fn is_report(path: &str) -> bool {
    path.strip_prefix("/v1")
        .unwrap_or(path)
        .trim_end_matches('/')
        == PATH
}

impl Policy for UpstreamsReport {
    fn applies(&self, request: &Inspect<'_>) -> bool {
        *request.method == Method::GET && is_report(request.path)
    }

    fn check<'a>(&'a self, request: &'a mut Inspect<'_>) -> Verdict<'a> {
        Box::pin(async move {
            let admitted = request.admitted;
            if !admitted.admin {
                return Err(GatewayError::AdminOnly);
            }
            if admitted.in_query {
                return Err(GatewayError::AdminTokenInQuery);
            }
            let now = self.clock.now();
            let upstreams = self.upstreams.current().await?;
            let data: Vec<_> = upstreams
                .members()
                .iter()
                .map(|m| {
                    let (status, failures) = m.health.status(now);
                    let until = match status {
                        Status::Open(t) | Status::Resting(t) => {
                            Some(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        }
                        Status::Ok | Status::Dead => None,
                    };
                    let models: Vec<_> = m
                        .models
                        .iter()
                        .map(|r| match &r.deployment {
                            Some(d) => json!({"model": r.pattern, "as": d}),
                            None => json!(r.pattern),
                        })
                        .collect();
                    json!({
                        "name": &*m.name,
                        "kind": m.kind.as_str(),
                        "base_url": m.proxy.upstream().to_string(),
                        "models": models,
                        "priority": m.priority,
                        "weight": m.weight,
                        "state": status.as_str(),
                        "until": until,
                        "failures": failures,
                        "keyed": m.key.is_some(),
                    })
                })
                .collect();
            let body = json!({"object": "list", "data": data}).to_string();
            request.reply = Some(
                Response::builder()
                    .status(StatusCode::OK)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .header(http::header::CACHE_CONTROL, "no-store")
                    .body(Bytes::from(body))
                    .expect("a static head"),
            );
            Ok(())
        })
    }
}
