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
use std::time::Instant;

use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use http::{HeaderMap, Response, Uri};
use http_body_util::BodyExt;
use lambda_http::request::RequestContext;
use lambda_http::{service_fn, RequestExt};

use crate::body::{Buffered, GatewayBody};
use crate::client_ip::{Peer, Secure};
use crate::config::{InvokeMode, Settings};
use crate::error::{ConfigError, GatewayError};
use crate::gateway::Gateway;
use crate::headers;
use crate::record::RequestId;
use crate::startup::{self, Mode};

/// Lambda's limit on a buffered response payload, envelope included.
pub const MAX_BUFFERED_PAYLOAD: usize = 6 * 1024 * 1024;
/// Room left in the payload for the JSON envelope (status, headers).
const ENVELOPE_ALLOWANCE: usize = 64 * 1024;

/// How the runtime loop is resumed after it fails (see [`serve`]).
///
/// A failure that comes more than `STEADY` after the loop (re)started is a
/// one-off (a client that hung up) and starts the count again; `MAX_QUICK`
/// failures in a row, each within `STEADY`, mean the runtime API itself is
/// gone, and the process exits so that Lambda replaces it. Between tries the
/// loop waits `BACKOFF` times the number of failures, so a broken API is not
/// hammered (at most 50 + 100 + 150 + 200 ms before giving up).
mod resume {
    use std::time::Duration;
    pub const STEADY: Duration = Duration::from_secs(10);
    pub const MAX_QUICK: u32 = 5;
    pub const BACKOFF: Duration = Duration::from_millis(50);
}

/// Builds the gateway from `settings` and serves Lambda events in the
/// configured invoke mode until the runtime stops.
pub async fn run(settings: Settings) -> Result<(), ConfigError> {
    let gateway = startup::build(&settings, Mode::Lambda).await?;
    gateway.warm_up().await;
    serve(gateway, settings.invoke_mode).await
}

/// Serves Lambda events until the runtime stops.
///
/// lambda_runtime ends its loop when posting a response to the runtime API
/// fails (for instance when the client of a streamed response went away and
/// the API dropped the connection). The process would then exit and the next
/// event would pay a cold start, or, under an emulator that does not restart
/// it, wait forever; so the loop is resumed (see [`resume`] for when it
/// gives up), once the completion work of the failed response has finished.
pub async fn serve(gateway: Gateway, mode: InvokeMode) -> Result<(), ConfigError> {
    tracing::info!(?mode, "serving Lambda events");
    let mut quick_failures = 0;
    loop {
        let started = Instant::now();
        let error = match serve_events(gateway.clone(), mode).await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        gateway.settled().await;
        if started.elapsed() > resume::STEADY {
            quick_failures = 0;
        }
        quick_failures += 1;
        if quick_failures >= resume::MAX_QUICK {
            return Err(ConfigError::Lambda(error.to_string()));
        }
        tracing::warn!(error = %error, quick_failures, "Lambda runtime loop failed; resuming");
        tokio::time::sleep(resume::BACKOFF * quick_failures).await;
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
///
/// The completion work of an earlier response whose client hung up runs in
/// the background; it is waited for here, so that it is done inside an
/// invocation rather than left to a frozen container.
pub async fn streaming(gateway: &Gateway, request: lambda_http::Request) -> Response<GatewayBody> {
    gateway.settled().await;
    let mut response = gateway.handle(from_event(request)).await;
    headers::for_stream(response.headers_mut());
    response
}

/// Handles one event for the buffered runner.
pub async fn buffered(
    gateway: &Gateway,
    request: lambda_http::Request,
) -> Response<lambda_http::Body> {
    let mut request = from_event(request);
    request.extensions_mut().insert(Buffered {
        limit: MAX_BUFFERED_PAYLOAD - ENVELOPE_ALLOWANCE,
        reported: MAX_BUFFERED_PAYLOAD,
        base64: is_binary,
    });
    collect(gateway.handle(request).await).await
}

/// Turns a lambda_http request into the core's: origin-form URI from the raw
/// path (stage prefix removed) and query, and the Lambda request id.
pub fn from_event(request: lambda_http::Request) -> http::Request<lambda_http::Body> {
    let path = upstream_path(&request).to_owned();
    let request_id = request.lambda_context_ref().map(|c| c.request_id.clone());
    let peer = source_ip(&request).map(Peer::new);
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
    if let Some(peer) = peer {
        parts.extensions.insert(peer);
    }
    parts.extensions.insert(Secure);
    http::Request::from_parts(parts, body)
}

/// Who API Gateway or the Function URL heard the request from: the event's
/// `requestContext` source IP (an ALB event has none; its client is then
/// unknown, and `allow_ips` tokens are refused).
fn source_ip(request: &lambda_http::Request) -> Option<std::net::IpAddr> {
    let text = match request.request_context_ref()? {
        RequestContext::ApiGatewayV2(context) => context.http.source_ip.as_deref(),
        RequestContext::ApiGatewayV1(context) => context.identity.source_ip.as_deref(),
        _ => None,
    }?;
    text.trim().parse().ok()
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

/// Collects a response for a buffered invoke. The gateway capped the body
/// (see [`Buffered`]); a body that failed, over the cap or cut by the
/// upstream, becomes the error the record already names.
async fn collect(response: Response<GatewayBody>) -> Response<lambda_http::Body> {
    let (parts, body) = response.into_parts();
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            let error = error
                .downcast_ref::<GatewayError>()
                .cloned()
                .unwrap_or(GatewayError::UpstreamFailed);
            let (parts, body) = error.to_response::<bytes::Bytes>().into_parts();
            return Response::from_parts(
                parts,
                lambda_http::Body::Text(String::from_utf8_lossy(&body).into_owned()),
            );
        }
    };
    let body = if bytes.is_empty() {
        lambda_http::Body::Empty
    } else if is_binary(&parts.headers) {
        lambda_http::Body::Binary(bytes.to_vec())
    } else {
        match String::from_utf8(bytes.to_vec()) {
            Ok(text) => lambda_http::Body::Text(text),
            Err(e) => lambda_http::Body::Binary(e.into_bytes()),
        }
    };
    Response::from_parts(parts, body)
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
