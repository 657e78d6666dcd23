//! Every failure, typed: [`GatewayError`] on the request path, answered in
//! OpenAI's JSON error shape, and [`ConfigError`] on the cold path (start-up
//! and configuration sources), printed as one clear line.
//!
//! Clients of this gateway are OpenAI SDKs, so request errors use OpenAI's
//! shape, `{"error": {"message", "type", "param", "code"}}`, which the SDKs
//! parse into their typed exceptions (a 401 becomes `AuthenticationError`,
//! and so on). Messages are fixed strings or carry non-secret facts only:
//! never a token, key, Authorization value or query string.

use std::path::PathBuf;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::tokens::format::ParseError;

/// An error answered by the gateway itself, rather than by the upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The request carried no gateway token.
    #[error(
        "missing gateway token: pass it as ?token=, an X-Token header or Authorization: Bearer"
    )]
    MissingToken,
    /// The token is not in the token list.
    #[error("invalid gateway token")]
    InvalidToken,
    /// The token is known but past its expiry.
    #[error("gateway token expired")]
    TokenExpired,
    /// The request carried two different gateway tokens (query and header, or a repeated `token`).
    #[error("conflicting gateway tokens: the request carries more than one different token")]
    ConflictingTokens,
    /// The request carries more than one `Authorization` header.
    #[error("the request carries more than one Authorization header; send one")]
    MultipleAuthorization,
    /// The method is one the gateway never forwards (`CONNECT`).
    #[error("the {0} method is not supported by this gateway")]
    MethodNotAllowed(&'static str),
    /// The client went silent while sending its request body.
    #[error("the client sent no request body bytes for {0} seconds")]
    ClientTimeout(u64),
    /// The token's `endpoints` do not include this path.
    #[error("this gateway token may not use this endpoint")]
    EndpointNotAllowed,
    /// The token's `models` do not include the request's model.
    #[error("this gateway token may not use the model `{0}`")]
    ModelNotAllowed(String),
    /// The token has `models`, and the request's model cannot be told.
    #[error("this gateway token may use only some models, and the gateway cannot tell which model this request uses; the token's `endpoints` must name this path to allow it")]
    ModelUnknown,
    /// A per-minute limit of the token is reached.
    #[error("this gateway token has reached its limit `{limit}`; retry in {retry_after} s")]
    RateLimited {
        /// The limit's key.
        limit: &'static str,
        /// Seconds to the window's end.
        retry_after: u64,
    },
    /// A day, month or total budget of the token is spent.
    #[error("this gateway token has used up its `{limit}`{}", match .retry_after { Some(s) => format!("; it resets in {s} s"), None => String::new() })]
    QuotaExceeded {
        /// The limit's key.
        limit: &'static str,
        /// Seconds to the window's end; `None` for a total.
        retry_after: Option<u64>,
    },
    /// The token has a dollar limit and the request's model has no price.
    #[error("the model `{0}` has no price, and this gateway token has a dollar limit; add the model to the gateway's PRICES_FILE")]
    ModelPriceUnknown(String),
    /// The usage store cannot be reached and `USAGE_FAIL_MODE=closed`.
    #[error("the gateway's usage store is unavailable; try again shortly")]
    UsageStoreUnavailable,
    /// The request target cannot be forwarded safely (dot segments, backslashes, not origin-form).
    #[error("invalid request path: {0}")]
    InvalidPath(&'static str),
    /// A request body that a policy had to read is larger than it may read.
    #[error("the request body is larger than the {0} bytes the gateway inspects")]
    RequestTooLarge(u64),
    /// The request body could not be read or is not what a policy needs.
    #[error("invalid request body: {0}")]
    InvalidRequestBody(&'static str),
    /// A field of the request (body or query) is not what OpenAI accepts.
    #[error("{message}")]
    InvalidParam {
        /// The field, as OpenAI names it in `param`.
        param: &'static str,
        /// What is wrong (never the value itself).
        message: String,
    },
    /// A spending endpoint's body is of a type the gateway cannot meter.
    #[error("this gateway token's rules need a JSON body{}; got another Content-Type", if *.0 { " (or multipart/form-data)" } else { "" })]
    UnsupportedMediaType(bool),
    /// The token has limits, and the endpoint can spend without being metered.
    #[error("this gateway token has limits, and this endpoint can spend money the gateway does not meter ({0}); to allow it knowingly, name the path itself in the token's `endpoints`")]
    EndpointNotMetered(&'static str),
    /// The gateway failed inside (a bug): the request is refused, the gateway goes on.
    #[error("the gateway failed while handling this request; it has been logged")]
    Internal,
    /// The usage store refused this request's values (not an outage).
    #[error("the gateway's usage store refused this request's usage record")]
    UsageStoreRejected,
    /// The token list source (SSM) has not produced a usable token list yet.
    #[error("the gateway's token store is unavailable; try again shortly")]
    TokenStoreUnavailable,
    /// The upstream key source (SSM) has not produced a usable key yet.
    #[error("the gateway's upstream API key is unavailable; try again shortly")]
    UpstreamKeyUnavailable,
    /// The upstream could not be reached (connection refused, DNS, TLS).
    #[error("the upstream API could not be reached")]
    UpstreamUnreachable,
    /// The upstream connection failed after it was made (reset, malformed HTTP).
    #[error("the upstream API failed to answer with a valid HTTP response")]
    UpstreamFailed,
    /// The upstream answered 101 Switching Protocols (e.g. WebSocket).
    #[error(
        "the upstream switched protocols (e.g. to WebSocket), which this gateway does not proxy"
    )]
    UpstreamUpgrade,
    /// The upstream sent no response headers within the configured timeout.
    #[error("the upstream API did not answer within {0} seconds")]
    UpstreamTimeout(u64),
    /// The gateway's own state is for admin tokens only.
    #[error("this endpoint is for the gateway's admin tokens only")]
    AdminOnly,
    /// The admin API or console over plain http from another machine.
    #[error("the console and admin API answer over plain http on this machine only (the admin token would cross the network in clear); put TLS in front (TRUSTED_PROXIES with X-Forwarded-Proto: https), use an SSH tunnel, or set CONSOLE_ALLOW_HTTP=true")]
    HttpsRequired,
    /// A console session that is not (or no longer) good.
    #[error("the console session is missing, has ended, or its admin token is no longer an admin token; log in again")]
    InvalidSession,
    /// A state-changing console request from another site's page.
    #[error("a console change must come from the gateway's own page (Origin or Sec-Fetch-Site: same-origin)")]
    CrossSite,
    /// Too many failed logins from one address.
    #[error("too many failed logins from this address; retry in {0} s")]
    TooManyLogins(u64),
    /// Managed tokens and sessions need a usage store.
    #[error("the console needs a usage store to keep tokens and sessions in (USAGE_STORE is off)")]
    ConsoleUnavailable,
    /// A managed token's name is taken (by any entry, ever).
    #[error("a token named `{0}` exists (or existed: a revoked token's name is not given again)")]
    TokenNameTaken(String),
    /// A change to an entry of the token file or SSM parameter.
    #[error("`{name}` is defined in {origin}; change it there")]
    TokenInConfig {
        /// The entry.
        name: String,
        /// Where the list comes from.
        origin: String,
    },
    /// No managed token by that name.
    #[error("no managed token is named `{0}`")]
    TokenNotFound(String),
    /// A change to a revoked token.
    #[error("`{0}` is revoked; it can be neither changed nor used again")]
    TokenRevoked(String),
    /// Another change landed in between.
    #[error("`{0}` was changed by someone else meanwhile; read it again and retry")]
    TokenChanged(String),
    /// The token's `allow_ips` does not hold the client's address.
    #[error("this token may not be used from this address (its entry's `allow_ips` does not include it)")]
    IpNotAllowed,
    /// An admin token came in the query, where it would be logged and kept.
    #[error("an admin token is never accepted in the query (it would land in browser history and access logs); send it as Authorization: Bearer")]
    AdminTokenInQuery,
    /// No configured upstream serves the request's model.
    #[error("no upstream of this gateway serves the model `{0}`")]
    NoUpstreamForModel(String),
    /// Every upstream that serves the request is resting, cooling down
    /// after failures, or has had its key refused.
    #[error("every upstream for this request is unavailable{}", match .0 { Some(s) => format!("; retry in {s} s"), None => String::new() })]
    UpstreamsUnavailable(Option<u64>),
    /// A buffered (non-streaming) Lambda response would exceed Lambda's payload limit.
    #[error("the upstream response is larger than the {0} bytes a buffered Lambda response can carry; use the streaming Function URL")]
    ResponseTooLarge(usize),
}

impl GatewayError {
    /// The HTTP status the client receives.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingToken
            | Self::InvalidToken
            | Self::TokenExpired
            | Self::InvalidSession
            | Self::AdminTokenInQuery => StatusCode::UNAUTHORIZED,
            Self::TokenNameTaken(_)
            | Self::TokenInConfig { .. }
            | Self::TokenRevoked(_)
            | Self::TokenChanged(_) => StatusCode::CONFLICT,
            Self::TokenNotFound(_) => StatusCode::NOT_FOUND,
            Self::ConflictingTokens
            | Self::MultipleAuthorization
            | Self::InvalidPath(_)
            | Self::InvalidParam { .. }
            | Self::InvalidRequestBody(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Internal | Self::UsageStoreRejected => StatusCode::INTERNAL_SERVER_ERROR,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::EndpointNotAllowed
            | Self::AdminOnly
            | Self::IpNotAllowed
            | Self::HttpsRequired
            | Self::CrossSite
            | Self::ModelNotAllowed(_)
            | Self::ModelUnknown
            | Self::EndpointNotMetered(_)
            | Self::ModelPriceUnknown(_) => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } | Self::QuotaExceeded { .. } | Self::TooManyLogins(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::ClientTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::RequestTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TokenStoreUnavailable
            | Self::UpstreamKeyUnavailable
            | Self::UsageStoreUnavailable
            | Self::ConsoleUnavailable
            | Self::UpstreamsUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::NoUpstreamForModel(_) => StatusCode::NOT_FOUND,
            Self::UpstreamUnreachable
            | Self::UpstreamFailed
            | Self::UpstreamUpgrade
            | Self::ResponseTooLarge(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The machine-readable `code` of the error body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::InvalidToken => "invalid_token",
            Self::TokenExpired => "token_expired",
            Self::ConflictingTokens => "conflicting_tokens",
            Self::MultipleAuthorization => "multiple_authorization_headers",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::EndpointNotAllowed => "endpoint_not_allowed",
            Self::ModelNotAllowed(_) | Self::ModelUnknown => "model_not_allowed",
            Self::ClientTimeout(_) => "request_timeout",
            Self::RateLimited { .. } => "rate_limit_exceeded",
            Self::QuotaExceeded { .. } => "insufficient_quota",
            Self::ModelPriceUnknown(_) => "model_price_unknown",
            Self::UsageStoreUnavailable => "usage_store_unavailable",
            Self::UpstreamUpgrade => "upgrade_not_supported",
            Self::InvalidPath(_) => "invalid_path",
            Self::RequestTooLarge(_) => "request_too_large",
            Self::InvalidRequestBody(_) => "invalid_request_body",
            Self::InvalidParam { .. } => "invalid_value",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::EndpointNotMetered(_) => "endpoint_not_metered",
            Self::Internal => "internal_error",
            Self::UsageStoreRejected => "usage_store_rejected",
            Self::TokenStoreUnavailable => "token_store_unavailable",
            Self::UpstreamKeyUnavailable => "upstream_key_unavailable",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::UpstreamFailed => "upstream_error",
            Self::UpstreamTimeout(_) => "upstream_timeout",
            Self::ResponseTooLarge(_) => "response_too_large",
            Self::NoUpstreamForModel(_) => "model_not_found",
            Self::AdminOnly => "admin_only",
            Self::IpNotAllowed => "ip_not_allowed",
            Self::HttpsRequired => "https_required",
            Self::InvalidSession => "invalid_session",
            Self::CrossSite => "cross_site_request",
            Self::TooManyLogins(_) => "too_many_logins",
            Self::ConsoleUnavailable => "console_unavailable",
            Self::TokenNameTaken(_) => "token_name_taken",
            Self::TokenInConfig { .. } => "token_in_config",
            Self::TokenNotFound(_) => "token_not_found",
            Self::TokenRevoked(_) => "token_revoked",
            Self::TokenChanged(_) => "token_changed",
            Self::AdminTokenInQuery => "admin_token_in_query",
            Self::UpstreamsUnavailable(_) => "upstreams_unavailable",
        }
    }

    /// The `type` of the error body, following OpenAI's vocabulary.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::RateLimited { .. } => return "requests",
            Self::QuotaExceeded { .. } => return "insufficient_quota",
            _ => {}
        }
        match self.status() {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::BAD_REQUEST
            | StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::UNSUPPORTED_MEDIA_TYPE
            | StatusCode::METHOD_NOT_ALLOWED
            | StatusCode::NOT_FOUND
            | StatusCode::CONFLICT
            | StatusCode::REQUEST_TIMEOUT => "invalid_request_error",
            _ => "gateway_error",
        }
    }

    /// A request field at fault, named as OpenAI names it in `param`.
    pub fn param(&self) -> Option<&'static str> {
        match self {
            Self::InvalidParam { param, .. } => Some(param),
            Self::NoUpstreamForModel(_) => Some("model"),
            _ => None,
        }
    }

    /// A field at fault: `400 invalid_request_error` naming `param`.
    pub fn invalid_param(param: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidParam {
            param,
            message: message.into(),
        }
    }

    /// The JSON body, `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> Bytes {
        let value = serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": self.kind(),
                "param": self.param(),
                "code": self.code(),
            }
        });
        Bytes::from(value.to_string())
    }

    /// A complete response carrying this error.
    pub fn to_response<B: From<Bytes>>(&self) -> Response<B> {
        let mut response = Response::new(B::from(self.body()));
        *response.status_mut() = self.status();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.status() == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"chatgpt-gateway\""),
            );
        }
        let retry_after = match self {
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            Self::QuotaExceeded { retry_after, .. } => {
                // A spent budget is not worth retrying: the official SDKs
                // honour this and give up at once.
                response
                    .headers_mut()
                    .insert("x-should-retry", HeaderValue::from_static("false"));
                *retry_after
            }
            Self::UpstreamsUnavailable(retry_after) => *retry_after,
            Self::TooManyLogins(seconds) => Some(*seconds),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A configuration or start-up failure. Each names the setting, file or
/// parameter at fault, and never a secret value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Two settings that exclude each other are both set.
    #[error("both {0} and {1} are set; choose one")]
    Conflict(&'static str, &'static str),
    /// A token file cannot be read.
    #[error("tokens file {}: cannot read: {source}", path.display())]
    TokensUnreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A token list (file, bundled, SSM) is malformed.
    #[error("{origin}: {error}")]
    Tokens {
        /// Where the list came from: a file path, an SSM parameter, `bundled token list`.
        origin: String,
        /// What is wrong, naming the entry.
        error: ParseError,
    },
    /// The upstream URL is unusable.
    #[error("upstream URL `{url}` {problem}")]
    Upstream {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The upstreams file cannot be read.
    #[error("upstreams file {}: cannot read: {source}", path.display())]
    UpstreamsUnreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The upstreams file is malformed.
    #[error("upstreams file {}: {problem}", path.display())]
    Upstreams {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the entry (never a key).
        problem: String,
    },
    /// The upstream URL carries a user or password.
    #[error("the upstream URL must not carry credentials; use UPSTREAM_API_KEY")]
    UpstreamCredentials,
    /// An upstream key that cannot be sent in an Authorization header.
    #[error(
        "{origin}: the upstream API key is empty or holds characters an HTTP header cannot carry"
    )]
    InvalidKey {
        /// Where the key came from (a variable, an SSM parameter).
        origin: String,
    },
    /// A value of a setting is malformed.
    #[error("{setting}: {problem}")]
    Invalid {
        /// The setting's variable name.
        setting: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The configuration would open the upstream (or its key) to anyone.
    #[error("refusing to start: {0}")]
    Unsafe(String),
    /// The HTTP client cannot be built.
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(String),
    /// The local server cannot listen.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The local server's worker threads cannot start.
    #[error("cannot start the server's worker threads: {0}")]
    Workers(std::io::Error),
    /// The Lambda runtime loop stopped with an error.
    #[error("the Lambda runtime stopped: {0}")]
    Lambda(String),
}

/// An error and its sources, each by its `Display`, joined with `: `.
/// (Never `Debug`, which for SDK errors would include raw responses.)
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_shape() {
        let body: serde_json::Value =
            serde_json::from_slice(&GatewayError::TokenExpired.body()).unwrap();
        assert_eq!(body["error"]["code"], "token_expired");
        assert_eq!(body["error"]["type"], "authentication_error");
        assert!(body["error"]["param"].is_null());
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"));
    }

    #[test]
    fn statuses() {
        assert_eq!(GatewayError::MissingToken.status(), 401);
        assert_eq!(GatewayError::UpstreamUnreachable.status(), 502);
        assert_eq!(GatewayError::UpstreamTimeout(5).status(), 504);
        assert_eq!(GatewayError::TokenStoreUnavailable.status(), 503);
        assert_eq!(GatewayError::UpstreamKeyUnavailable.status(), 503);
        assert_eq!(GatewayError::ConflictingTokens.status(), 400);
        assert_eq!(GatewayError::RequestTooLarge(1).status(), 413);
        assert_eq!(
            GatewayError::RequestTooLarge(1).kind(),
            "invalid_request_error"
        );
    }
}
