//! What the gateway knows of OpenAI's API, in one place: each endpoint and
//! how it is metered (one table that the limits, the usage taps and
//! docs/spend.md all read), the endpoints that take a form, and the bounds
//! of a model name.
//!
//! Paths are read normalised ([`crate::path::normalise`]) and matched by
//! their last segments, so `/v1/chat/completions` and an Azure-style
//! `/openai/deployments/d/chat/completions` are the same endpoint.

use http::Method;

use crate::error::GatewayError;

/// The longest model name accepted (OpenAI's are under 64 bytes).
pub const MAX_MODEL_NAME: usize = 256;

/// A model name the gateway will log, store and price: at most
/// [`MAX_MODEL_NAME`] bytes, no control characters. Anything else is the
/// request's `400`, before anything is logged or stored.
pub fn check_model(model: &str) -> Result<(), GatewayError> {
    if model.len() > MAX_MODEL_NAME {
        return Err(GatewayError::invalid_param(
            "model",
            format!("`model` is longer than {MAX_MODEL_NAME} bytes"),
        ));
    }
    if model.chars().any(char::is_control) {
        return Err(GatewayError::invalid_param(
            "model",
            "`model` contains control characters",
        ));
    }
    Ok(())
}

/// How a request is metered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metering {
    /// Billed by the tokens its response's `usage` reports (chat,
    /// completions, responses, embeddings, transcriptions with usage).
    Tokens,
    /// Images: by `usage` tokens (`gpt-image-*`), else a price per image by
    /// model, size and quality (`dall-e-*`), times `n`.
    Images,
    /// Speech: by the characters of its `input`.
    Speech,
    /// Spends nothing the gateway knows of (reads, deletes, moderations).
    Free,
    /// Can spend, and the gateway cannot meter it (fine-tuning, batches,
    /// background responses, realtime sessions, uploads, assistants…): a
    /// token with limits reaches it only when its `endpoints` name the path.
    Unmetered,
}

/// POST endpoints and how they are metered; every other POST (and every
/// PUT and PATCH) is [`Metering::Unmetered`].
pub const POSTS: [(&str, Metering); 11] = [
    ("/chat/completions", Metering::Tokens),
    ("/completions", Metering::Tokens),
    ("/responses", Metering::Tokens),
    ("/embeddings", Metering::Tokens),
    ("/audio/transcriptions", Metering::Tokens),
    ("/audio/translations", Metering::Tokens),
    ("/images/generations", Metering::Images),
    ("/images/edits", Metering::Images),
    ("/images/variations", Metering::Images),
    ("/audio/speech", Metering::Speech),
    ("/moderations", Metering::Free),
];

/// `tokens new --endpoints inference`: the endpoints that make answers,
/// and nothing that stores or lists objects. With one upstream key every
/// token shares the same stored objects (files, batches, stored chat
/// completions, responses, vector stores), so a token that may reach those
/// may read and delete everyone's; this preset keeps a token to inference
/// (see docs/security.md).
pub const INFERENCE: [&str; 12] = [
    "POST /v1/chat/completions$",
    "POST /v1/completions$",
    "POST /v1/responses$",
    "POST /v1/embeddings$",
    "POST /v1/images/generations$",
    "POST /v1/images/edits$",
    "POST /v1/images/variations$",
    "POST /v1/audio/speech$",
    "POST /v1/audio/transcriptions$",
    "POST /v1/audio/translations$",
    "POST /v1/moderations$",
    "GET /v1/models",
];

/// The endpoints whose body OpenAI takes as `multipart/form-data`.
const MULTIPART: [&str; 4] = [
    "/audio/transcriptions",
    "/audio/translations",
    "/images/edits",
    "/images/variations",
];

/// How a request to `path` (normalised) with `method` is metered.
pub fn metering(method: &Method, path: &str) -> Metering {
    match *method {
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS => Metering::Free,
        Method::POST => {
            let path = path.trim_end_matches('/');
            POSTS
                .iter()
                .find(|(end, _)| ends_with_segments(path, end))
                .map_or(Metering::Unmetered, |(_, m)| *m)
        }
        _ => Metering::Unmetered,
    }
}

/// Whether `path` is the Responses API's create endpoint (whose
/// `background: true` runs are read later, unmetered).
pub fn is_responses(path: &str) -> bool {
    ends_with_segments(path.trim_end_matches('/'), "/responses")
}

/// Whether the endpoint at `path` takes a form (an upload) as well as JSON.
pub fn takes_form(path: &str) -> bool {
    let path = path.trim_end_matches('/');
    MULTIPART.iter().any(|end| ends_with_segments(path, end))
}

impl Metering {
    /// Whether the gateway meters it (its usage counts against limits).
    pub fn is_metered(self) -> bool {
        matches!(self, Self::Tokens | Self::Images | Self::Speech)
    }
}

/// `path` ends with `end` (which starts with `/`, so at a segment boundary).
fn ends_with_segments(path: &str, end: &str) -> bool {
    path.ends_with(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_endpoint_is_metered_as_the_table_says() {
        let post = |p| metering(&Method::POST, p);
        assert_eq!(post("/v1/chat/completions"), Metering::Tokens);
        assert_eq!(post("/v1/chat/completions/"), Metering::Tokens);
        assert_eq!(
            post("/openai/deployments/d/chat/completions"),
            Metering::Tokens
        );
        assert_eq!(post("/v1/completions"), Metering::Tokens);
        assert_eq!(post("/v1/responses"), Metering::Tokens);
        assert_eq!(post("/v1/images/generations"), Metering::Images);
        assert_eq!(post("/v1/audio/speech"), Metering::Speech);
        assert_eq!(post("/v1/moderations"), Metering::Free);
        for spends in [
            "/v1/fine_tuning/jobs",
            "/v1/batches",
            "/v1/realtime/sessions",
            "/v1/realtime/client_secrets",
            "/v1/files",
            "/v1/chat/completions/abc",
            "/v1/responses/resp_1/cancel",
            "/v1/xchat/completionsx",
        ] {
            assert_eq!(post(spends), Metering::Unmetered, "{spends}");
        }
        assert_eq!(metering(&Method::GET, "/v1/batches"), Metering::Free);
        assert_eq!(metering(&Method::PATCH, "/v1/x"), Metering::Unmetered);
        assert!(is_responses("/v1/responses/") && !is_responses("/v1/responses/r1"));
        assert!(takes_form("/v1/audio/transcriptions"));
        assert!(!takes_form("/v1/chat/completions"));
    }
}
