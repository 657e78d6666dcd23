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

use super::{Inspect, Policy, ResponseEdit, Verdict};
use crate::error::GatewayError;
use crate::headers;
use crate::tokens::Rules;

/// The allowlist rule, reading at most `max_body` bytes of a body.
#[derive(Debug, Clone, Copy)]
pub struct Allowlist {
    /// How much of a body may be read to find its model.
    pub max_body: u64,
}

impl Policy for Allowlist {
    fn applies(&self, request: &Inspect<'_>) -> bool {
        request.admitted.rules.is_some()
    }

    fn check<'a>(&'a self, request: &'a mut Inspect<'_>) -> Verdict<'a> {
        Box::pin(async move {
            let Some(rules) = request.admitted.rules.clone() else {
                return Ok(());
            };
            if !rules.allows_endpoint(request.path) {
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
                    request.edit = Some(ResponseEdit::Rewrite {
                        limit: MAX_MODEL_LIST,
                        rewrite: Box::new(move |body| filter_models(&body, &rules)),
                    });
                    return Ok(());
                }
                // Reads spend nothing; a model's own page is still its model's.
                match model_in_path(request.path) {
                    Some(model) => model.to_owned(),
                    None => return Ok(()),
                }
            }
            _ => match self.model_in_body(request).await? {
                Some(model) => model,
                None if rules.names_endpoint(request.path) => return Ok(()),
                None => return Err(GatewayError::ModelUnknown),
            },
        };
        if rules.allows_model(&model) {
            Ok(())
        } else {
            Err(GatewayError::ModelNotAllowed(model))
        }
    }

    async fn model_in_body(
        &self,
        request: &mut Inspect<'_>,
    ) -> Result<Option<String>, GatewayError> {
        if headers::is_json(request.headers) {
            let body = request.body.read(self.max_body).await?;
            if body.is_empty() {
                return Ok(None);
            }
            let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| {
                GatewayError::InvalidRequestBody(
                    "the body is not valid JSON, and this token's rules need its model",
                )
            })?;
            return Ok(value
                .get("model")
                .and_then(|m| m.as_str())
                .map(str::to_owned));
        }
        if headers::is_media(request.headers, "multipart/form-data") {
            let Some(boundary) = boundary(headers::content_type(request.headers)) else {
                return Err(GatewayError::InvalidRequestBody(
                    "a multipart body without a boundary",
                ));
            };
            let body = request.body.read(self.max_body).await?;
            return Ok(form_field(body, &boundary, "model"));
        }
        Ok(None)
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

/// The `boundary` parameter of a multipart content type (case kept).
pub(crate) fn boundary(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_owned())
            .filter(|b| !b.is_empty())
    })
}

/// The value of the form field `name` in a multipart body.
pub(crate) fn form_field(body: &[u8], boundary: &str, name: &str) -> Option<String> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let wanted = format!("name=\"{name}\"");
    let mut rest = body;
    while let Some(at) = find(rest, delimiter) {
        rest = &rest[at + delimiter.len()..];
        let end = find(rest, delimiter).unwrap_or(rest.len());
        let part = &rest[..end];
        let split = find(part, b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&part[..split]);
        let is_field = head.lines().any(|line| {
            let line = line.to_ascii_lowercase();
            line.starts_with("content-disposition:")
                && line.contains(&wanted)
                && !line.contains("filename=")
        });
        if is_field {
            let value = &part[split + 4..];
            let value = value.strip_suffix(b"\r\n").unwrap_or(value);
            return std::str::from_utf8(value).ok().map(|v| v.trim().to_owned());
        }
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_of_a_multipart_body() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nname=\"model\"\r\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--XyZ--\r\n";
        assert_eq!(
            form_field(body, "XyZ", "model").as_deref(),
            Some("whisper-1")
        );
        assert_eq!(form_field(body, "XyZ", "prompt"), None);
        assert_eq!(
            boundary("multipart/form-data; boundary=\"XyZ\"").as_deref(),
            Some("XyZ")
        );
        assert_eq!(boundary("multipart/form-data"), None);
    }

    #[test]
    fn model_lists_are_filtered_and_anything_else_emptied() {
        let rules = Rules {
            models: Some(vec!["gpt-4o-mini*".into()]),
            endpoints: None,
            limits: None,
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
