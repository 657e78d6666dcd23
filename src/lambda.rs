//! AWS Lambda glue: events in, the core handler, responses out.
//!
//! The same [`Gateway`] serves Lambda events through lambda_http in one of
//! two invoke modes ([`InvokeMode`], from `GATEWAY_INVOKE_MODE`):
//!
//! - `RESPONSE_STREAM` (default): for a Function URL with
//!   `InvokeMode: RESPONSE_STREAM`. Every response, errors included, goes
//!   down the streaming path with its status and headers in the prelude, so
//!   SSE reaches the client event by event.
//! - `BUFFERED`: for API Gateway (REST v1, HTTP v2) and BUFFERED Function
//!   URLs. The body is collected; binary bodies go out base64; a body too big
//!   for Lambda's 6 MB response limit becomes a `response_too_large` error.
//!
//! Requests are mapped from the event's raw path and query; an API Gateway
//! stage prefix is never forwarded upstream.

use std::convert::Infallible;

use bytes::BytesMut;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Response, Uri};
use http_body_util::BodyExt;
use lambda_http::request::RequestContext;
use lambda_http::{service_fn, RequestExt};

use crate::body::GatewayBody;
use crate::error::GatewayError;
use crate::handler::Gateway;
use crate::telemetry::RequestId;

/// `AWS_LAMBDA_RUNTIME_API`: set by Lambda (and `cargo lambda watch`); its presence selects Lambda mode.
pub const AWS_LAMBDA_RUNTIME_API: &str = "AWS_LAMBDA_RUNTIME_API";
/// `GATEWAY_INVOKE_MODE`: `RESPONSE_STREAM` (default) or `BUFFERED`.
pub const GATEWAY_INVOKE_MODE: &str = "GATEWAY_INVOKE_MODE";
/// Lambda's limit on a buffered response payload, envelope included.
pub const MAX_BUFFERED_PAYLOAD: usize = 6 * 1024 * 1024;
/// Room left in the payload for the JSON envelope (status, headers).
const ENVELOPE_ALLOWANCE: usize = 64 * 1024;

/// How responses leave the function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvokeMode {
    /// Lambda response streaming (Function URL `InvokeMode: RESPONSE_STREAM`).
    ResponseStream,
    /// One buffered response per event (API Gateway, BUFFERED Function URL).
    Buffered,
}

impl InvokeMode {
    /// Reads `GATEWAY_INVOKE_MODE`; unset means `RESPONSE_STREAM`.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var(GATEWAY_INVOKE_MODE) {
            Err(_) => Ok(Self::ResponseStream),
            Ok(text) => Self::parse(&text),
        }
    }

    /// Parses `RESPONSE_STREAM` or `BUFFERED` (case-insensitive).
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_uppercase().as_str() {
            "" | "RESPONSE_STREAM" => Ok(Self::ResponseStream),
            "BUFFERED" => Ok(Self::Buffered),
            other => Err(format!(
                "{GATEWAY_INVOKE_MODE}={other} is not RESPONSE_STREAM or BUFFERED"
            )),
        }
    }
}

/// True when running under a Lambda runtime API.
pub fn in_lambda() -> bool {
    std::env::var_os(AWS_LAMBDA_RUNTIME_API).is_some()
}

/// Serves Lambda events until the runtime stops.
///
/// lambda_runtime ends its loop when posting a response to the runtime API
/// fails (for instance when the client of a streamed response went away and
/// the API dropped the connection). The process would then exit and the next
/// event would pay a cold start, or, under an emulator that does not restart
/// it, wait forever; so the loop is resumed, giving up only when it keeps
/// failing at once.
pub async fn run(gateway: Gateway, mode: InvokeMode) -> Result<(), lambda_http::Error> {
    const MAX_QUICK_FAILURES: u32 = 5;
    tracing::info!(?mode, "serving Lambda events");
    let mut quick_failures = 0;
    loop {
        let started = std::time::Instant::now();
        let error = match serve_events(gateway.clone(), mode).await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        if started.elapsed() > std::time::Duration::from_secs(10) {
            quick_failures = 0;
        }
        quick_failures += 1;
        if quick_failures >= MAX_QUICK_FAILURES {
            return Err(error);
        }
        tracing::warn!(error = %error, "Lambda runtime loop failed; resuming");
        tokio::time::sleep(std::time::Duration::from_millis(
            50 * u64::from(quick_failures),
        ))
        .await;
    }
}

async fn serve_events(gateway: Gateway, mode: InvokeMode) -> Result<(), lambda_http::Error> {
    match mode {
        InvokeMode::ResponseStream => {
            lambda_http::run_with_streaming_response(service_fn(move |request| {
                let gateway = gateway.clone();
                async move { Ok::<_, Infallible>(streaming(&gateway, request).await) }
            }))
            .await
        }
        InvokeMode::Buffered => {
            lambda_http::run(service_fn(move |request| {
                let gateway = gateway.clone();
                async move { Ok::<_, Infallible>(buffered(&gateway, request).await) }
            }))
            .await
        }
    }
}

/// Handles one event for the streaming runner.
pub async fn streaming(gateway: &Gateway, request: lambda_http::Request) -> Response<GatewayBody> {
    let mut response = gateway.handle(from_event(request)).await;
    // The stream carries its own framing; a length from the upstream would
    // contradict it.
    response.headers_mut().remove(CONTENT_LENGTH);
    response
}

/// Handles one event for the buffered runner.
pub async fn buffered(
    gateway: &Gateway,
    request: lambda_http::Request,
) -> Response<lambda_http::Body> {
    collect(
        gateway.handle(from_event(request)).await,
        MAX_BUFFERED_PAYLOAD - ENVELOPE_ALLOWANCE,
    )
    .await
}

/// Turns a lambda_http request into the core's: origin-form URI from the raw
/// path (stage prefix removed) and query, and the Lambda request id.
pub fn from_event(request: lambda_http::Request) -> http::Request<lambda_http::Body> {
    let path = upstream_path(&request).to_owned();
    let request_id = request.lambda_context_ref().map(|c| c.request_id.clone());
    let (mut parts, body) = request.into_parts();
    let target = match parts.uri.query() {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path,
    };
    // A path the URI grammar refuses keeps lambda_http's form, which the
    // proxy then checks like any other.
    if let Ok(uri) = Uri::try_from(target) {
        parts.uri = uri;
    }
    if let Some(id) = request_id.filter(|id| !id.is_empty()) {
        parts.extensions.insert(RequestId(id));
    }
    http::Request::from_parts(parts, body)
}

/// The path to forward: the event's raw path, less an HTTP API stage prefix.
/// REST API (v1) events carry the path without the stage already.
fn upstream_path(request: &lambda_http::Request) -> &str {
    let raw = request.raw_http_path();
    let raw = if raw.is_empty() {
        request.uri().path()
    } else {
        raw
    };
    let stage = match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(context)) => context.stage.as_deref(),
        _ => None,
    };
    match stage {
        Some(stage) if !stage.is_empty() && stage != "$default" => {
            let rest = raw.strip_prefix('/').and_then(|r| r.strip_prefix(stage));
            match rest {
                Some("") => "/",
                Some(rest) if rest.starts_with('/') => rest,
                _ => raw,
            }
        }
        _ => raw,
    }
}

/// Collects a response for a buffered invoke, within `limit` payload bytes.
async fn collect(response: Response<GatewayBody>, limit: usize) -> Response<lambda_http::Body> {
    let (parts, mut body) = response.into_parts();
    let binary = is_binary(&parts.headers);
    let mut bytes = BytesMut::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    bytes.extend_from_slice(data);
                    let payload = if binary {
                        bytes.len().div_ceil(3) * 4
                    } else {
                        bytes.len()
                    };
                    if payload > limit {
                        let error = GatewayError::ResponseTooLarge(MAX_BUFFERED_PAYLOAD);
                        tracing::warn!(
                            status = parts.status.as_u16(),
                            code = error.code(),
                            "buffered response too large"
                        );
                        return error
                            .to_response::<GatewayBody>()
                            .map(|b| text_body(b.into_full()));
                    }
                }
            }
            Err(_) => {
                // The upstream broke off mid-body; a truncated body must not look complete.
                return GatewayError::UpstreamFailed
                    .to_response::<GatewayBody>()
                    .map(|b| text_body(b.into_full()));
            }
        }
    }
    let body = if bytes.is_empty() {
        lambda_http::Body::Empty
    } else if binary {
        lambda_http::Body::Binary(bytes.to_vec())
    } else {
        match String::from_utf8(bytes.to_vec()) {
            Ok(text) => lambda_http::Body::Text(text),
            Err(e) => lambda_http::Body::Binary(e.into_bytes()),
        }
    };
    Response::from_parts(parts, body)
}

fn text_body(bytes: bytes::Bytes) -> lambda_http::Body {
    lambda_http::Body::Text(String::from_utf8_lossy(&bytes).into_owned())
}

/// Whether a body must travel base64-encoded: anything compressed, or not textual.
fn is_binary(headers: &HeaderMap) -> bool {
    if headers
        .get(CONTENT_ENCODING)
        .is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return true;
    }
    let Some(kind) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let kind = kind
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let textual = kind.starts_with("text/")
        || kind.ends_with("json")
        || kind.ends_with("+json")
        || kind.ends_with("xml")
        || kind == "application/javascript"
        || kind == "application/x-www-form-urlencoded";
    !textual
}
