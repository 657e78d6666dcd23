//! The token's allowlists: `endpoints` (path prefixes) and `models`.
//!
//! A request to a path outside `endpoints` gets `403 endpoint_not_allowed`.
//! For `models`, the model comes from the request itself: the JSON body's
//! `model`, a multipart body's `model` field, or the id in
//! `/v1/models/{id}`; the body is read (up to a bound) only then, and goes
//! upstream byte for byte as read. A request that could spend money and
//! whose model the gateway cannot tell (`POST /v1/batches`, whose models sit
//! in an uploaded file) is refused unless `endpoints` names its path itself:
//! an allowlist that another endpoint could get around would be no allowlist.

use bytes::Bytes;
use http::Method;

use super::view::check_model;
use super::{Inspect, Policy, ResponseEdit, Verdict};
use crate::error::GatewayError;
use crate::tokens::Rules;

/// The allowlist rule.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allowlist;

impl Policy for Allowlist {
    fn applies(&self, request: &Inspect<'_>) -> bool {
        request.admitted.rules.is_some()
    }

    fn check<'a>(&'a self, request: &'a mut Inspect<'_>) -> Verdict<'a> {
        Box::pin(async move {
            let Some(rules) = request.admitted.rules.clone() else {
                return Ok(());
            };
            if !rules.allows_endpoint(request.method, request.path) {
                return Err(GatewayError::EndpointNotAllowed);
            }
            if rules.models.is_none() {
                return Ok(());
            }
            self.check_model(&rules, request).await
        })
    }
}

impl Allowlist {
    async fn check_model(
        &self,
        rules: &Rules,
        request: &mut Inspect<'_>,
    ) -> Result<(), GatewayError> {
        let model = match *request.method {
            Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS => {
                if *request.method == Method::GET && is_model_list(request.path) {
                    // The list shows only what the token may use.
                    let rules = rules.clone();
                    request.edits.push(ResponseEdit::Rewrite {
                        limit: MAX_MODEL_LIST,
                        rewrite: Box::new(move |body| filter_models(&body, &rules)),
                    });
                    return Ok(());
                }
                // Reads spend nothing; a model's own page is still its model's.
                match model_in_path(request.path) {
                    Some(model) => {
                        check_model(model)?;
                        model.to_owned()
                    }
                    None => return Ok(()),
                }
            }
            _ => match request.view().await?.model.clone() {
                Some(model) => model,
                None if rules.names_endpoint(request.method, request.path) => return Ok(()),
                None => return Err(GatewayError::ModelUnknown),
            },
        };
        if rules.allows_model(&model) {
            Ok(())
        } else {
            Err(GatewayError::ModelNotAllowed(model))
        }
    }
}

/// The most of a model list the gateway collects to filter it.
const MAX_MODEL_LIST: usize = 4 << 20;

fn is_model_list(path: &str) -> bool {
    matches!(path.trim_end_matches('/'), "/v1/models" | "/models")
}

/// A model list less the models `rules` exclude; an answer that is not a
/// list becomes an empty one, so nothing unfiltered gets through.
fn filter_models(body: &[u8], rules: &Rules) -> Bytes {
    let mut list: serde_json::Value = serde_json::from_slice(body)
        .ok()
        .filter(|v: &serde_json::Value| v["data"].is_array())
        .unwrap_or_else(|| serde_json::json!({"object": "list", "data": []}));
    if let Some(data) = list["data"].as_array_mut() {
        data.retain(|m| m["id"].as_str().is_some_and(|id| rules.allows_model(id)));
    }
    Bytes::from(list.to_string())
}

/// The id in `/v1/models/{id}` (or `/models/{id}`).
fn model_in_path(path: &str) -> Option<&str> {
    let rest = path
        .strip_prefix("/v1/models/")
        .or_else(|| path.strip_prefix("/models/"))?;
    (!rest.is_empty() && !rest.contains('/')).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_lists_are_filtered_and_anything_else_emptied() {
        let rules = Rules {
            models: Some(vec!["gpt-4o-mini*".into()]),
            endpoints: None,
            limits: None,
            upstreams: None,
        };
        let list = br#"{"object":"list","data":[{"id":"gpt-4o"},{"id":"gpt-4o-mini"},{"id":"gpt-4o-mini-tts"}]}"#;
        let out: serde_json::Value = serde_json::from_slice(&filter_models(list, &rules)).unwrap();
        let ids: Vec<_> = out["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].clone())
            .collect();
        assert_eq!(ids, ["gpt-4o-mini", "gpt-4o-mini-tts"]);
        let out: serde_json::Value =
            serde_json::from_slice(&filter_models(b"\x1f\x8b garbage", &rules)).unwrap();
        assert_eq!(out["data"], serde_json::json!([]));
    }

    #[test]
    fn models_in_paths() {
        assert_eq!(model_in_path("/v1/models/gpt-4o"), Some("gpt-4o"));
        assert_eq!(model_in_path("/v1/models"), None);
        assert_eq!(model_in_path("/v1/models/"), None);
        assert_eq!(model_in_path("/v1/chat/completions"), None);
    }
}
