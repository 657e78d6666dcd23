//! The operator's console: tokens managed at run time, console sessions,
//! spend by day, and the page that shows them, all served by the gateway
//! itself on the local server and through a Function URL alike.
//!
//! - [`session`]: logging in (`POST /v1/gateway/session`), the opaque
//!   cookie, the same-origin rule for changes, failed logins per address;
//! - [`managed`]: the token list the gateway serves, the configured one
//!   (file, SSM, bundled) merged with the tokens kept in the usage store,
//!   reloaded every `TOKENS_REFRESH_SECS`;
//! - [`tokens`]: `GET/POST /v1/gateway/tokens`, `PATCH/DELETE
//!   /v1/gateway/tokens/{name}`;
//! - [`costs`]: `GET /v1/gateway/costs`, in the shape of OpenAI's costs API;
//! - [`page`]: `GET /admin`, its script and style, built into the binary.
//!
//! The gateway asks the console first ([`Console::front`]): the page and
//! the login need no token, and a session cookie stands for its admin's
//! token on the admin API (and nowhere else). Everything after that is a
//! policy, like the upstreams report: admitted by a token or a session, in
//! the pipeline's order.

pub mod costs;
pub mod managed;
pub mod page;
pub mod session;
pub mod tokens;

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{header, Method, Response, StatusCode};

use crate::auth::{self, Admitted};
use crate::clock::Clock;
use crate::error::GatewayError;
use crate::policy::RequestBody;
use crate::sources::cached::Cached;
use crate::spend::account::rfc3339;
use crate::spend::registry::{Registry, Session};
use crate::tokens::TokenSet;
use session::Logins;

/// The admin API's paths begin so (the usage endpoint and the upstreams
/// report among them).
pub const ADMIN_PREFIX: &str = "/v1/gateway/";
/// The session endpoint.
pub const SESSION_PATH: &str = "/v1/gateway/session";
/// The most a login body may hold.
const LOGIN_BODY: u64 = 8 << 10;

/// What the console needs.
pub struct Console {
    /// Managed tokens and sessions; `None` without a usage store.
    pub registry: Option<Arc<dyn Registry>>,
    /// The token list the gateway serves (configured and managed).
    pub tokens: Cached<TokenSet>,
    /// How long a session lasts.
    pub session_secs: u64,
    /// Whether plain http from other machines is answered (`CONSOLE_ALLOW_HTTP`).
    pub remote_http: bool,
    /// Failed logins per address.
    pub logins: Logins,
    /// The time sessions end by.
    pub clock: Clock,
}

/// What [`Console::front`] decided.
pub enum Front {
    /// The console answered (the page, a login, a logout).
    Answer(Response<Bytes>),
    /// A session stands for this admin's token.
    Admitted(Admitted),
    /// Not the console's: authenticate as usual.
    Pass,
}

/// How the request reached the gateway, for the console's transport rule.
#[derive(Debug, Clone, Copy)]
pub struct Reach {
    /// The client's address, if known.
    pub client: Option<IpAddr>,
    /// Over https.
    pub https: bool,
}

impl Console {
    /// Over plain http, the console answers this machine only (unless the
    /// operator allowed more): the admin token would cross the network in clear.
    pub fn check_transport(&self, reach: Reach) -> Result<(), GatewayError> {
        let local = reach.client.is_some_and(|ip| ip.is_loopback());
        if reach.https || local || self.remote_http {
            Ok(())
        } else {
            Err(GatewayError::HttpsRequired)
        }
    }

    /// Whether `path` (normalised) is the admin API's: an admin token sent
    /// there is under the transport rule.
    pub fn is_admin_path(path: &str) -> bool {
        path.starts_with(ADMIN_PREFIX)
    }

    /// The console's part before authentication.
    pub async fn front(
        &self,
        parts: &http::request::Parts,
        body: &mut RequestBody,
        reach: Reach,
        token_name: &mut Option<Arc<str>>,
    ) -> Result<Front, GatewayError> {
        let path = parts.uri.path();
        if let Some(found) = page::find(path) {
            if !matches!(parts.method, Method::GET | Method::HEAD) {
                return Err(GatewayError::MethodNotAllowed(parts.method_static()));
            }
            let page::Found::File(asset) = found else {
                return Ok(Front::Answer(page::redirect()));
            };
            return Ok(Front::Answer(match self.check_transport(reach) {
                Ok(()) => page::serve(
                    asset,
                    parts
                        .headers
                        .get(header::IF_NONE_MATCH)
                        .map(|v| v.as_bytes()),
                ),
                Err(_) => page::https_required(),
            }));
        }
        if path == SESSION_PATH {
            self.check_transport(reach)?;
            return match parts.method {
                Method::POST => self.log_in(body, reach, token_name).await,
                Method::GET => {
                    // Who is logged in: nobody is an answer too (the page
                    // asks as it loads).
                    let body = match self.session_of(parts).await {
                        Ok((admin, session)) => {
                            token_name.clone_from(&admin.name);
                            serde_json::json!({
                                "object": "gateway.session",
                                "admin": admin.name.as_deref(),
                                "expires_at": rfc3339(session.expires),
                            })
                        }
                        Err(GatewayError::InvalidSession) => serde_json::json!({
                            "object": "gateway.session",
                            "admin": null,
                            "expires_at": null,
                        }),
                        Err(error) => return Err(error),
                    };
                    Ok(Front::Answer(json_response(StatusCode::OK, &body, None)))
                }
                Method::DELETE => self.log_out(parts, reach, token_name).await,
                _ => Err(GatewayError::MethodNotAllowed(parts.method_static())),
            };
        }
        if !path.starts_with(ADMIN_PREFIX)
            || session::from_request(&parts.headers).is_none()
            || auth::presents_credential(&parts.headers, parts.uri.query())
        {
            return Ok(Front::Pass);
        }
        self.check_transport(reach)?;
        if !session::same_origin(&parts.method, &parts.headers, reach.https) {
            return Err(GatewayError::CrossSite);
        }
        let (admitted, _) = self.session_of(parts).await?;
        Ok(Front::Admitted(admitted))
    }

    fn registry(&self) -> Result<&Arc<dyn Registry>, GatewayError> {
        self.registry
            .as_ref()
            .ok_or(GatewayError::ConsoleUnavailable)
    }

    /// The admin a request's session cookie stands for, and the session.
    async fn session_of(
        &self,
        parts: &http::request::Parts,
    ) -> Result<(Admitted, Session), GatewayError> {
        let id = session::from_request(&parts.headers).ok_or(GatewayError::InvalidSession)?;
        let found = self
            .registry()?
            .session(session::key(id))
            .await
            .map_err(crate::spend::account::store_down)?;
        let now = self.clock.now();
        let session = found
            .filter(|s| s.expires > now)
            .ok_or(GatewayError::InvalidSession)?;
        // The admin token must still be one: revoked, disabled, expired or
        // demoted ends every session it opened.
        let tokens = self.tokens.get().await?;
        let entry = tokens
            .named(&session.admin)
            .filter(|e| e.admin && !e.is_expired(now))
            .ok_or(GatewayError::InvalidSession)?;
        Ok((Admitted::as_entry(entry, parts.uri.query()), session))
    }

    async fn log_in(
        &self,
        body: &mut RequestBody,
        reach: Reach,
        token_name: &mut Option<Arc<str>>,
    ) -> Result<Front, GatewayError> {
        let now = self.clock.now();
        if let Some(wait) = self.logins.wait(reach.client, now) {
            return Err(GatewayError::TooManyLogins(wait));
        }
        let bytes = body.read(LOGIN_BODY).await?;
        let token = serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|v| v.get("token").and_then(|t| t.as_str()).map(str::to_owned))
            .ok_or_else(|| {
                GatewayError::invalid_param("token", "send {\"token\": \"<admin token>\"} as JSON")
            })?;
        let tokens = self.tokens.get().await?;
        let refused = |error: GatewayError| {
            self.logins.failed(reach.client, now);
            // Never the attempted token.
            tracing::warn!(client_ip = ?reach.client, code = error.code(), "a console login failed");
            error
        };
        let entry = tokens
            .verify(token.as_bytes(), now)
            .map_err(|r| refused(r.into()))?;
        if !entry.admin {
            return Err(refused(GatewayError::AdminOnly));
        }
        *token_name = Some(entry.name.clone());
        let id = session::new_id().map_err(|problem| {
            tracing::error!(%problem, "a console session could not be made");
            GatewayError::Internal
        })?;
        let expires = now
            + chrono::Duration::seconds(i64::try_from(self.session_secs).unwrap_or(i64::MAX / 2));
        self.registry()?
            .create_session(
                session::key(&id),
                Session {
                    admin: entry.name.to_string(),
                    expires,
                },
                now,
            )
            .await
            .map_err(crate::spend::account::store_down)?;
        let admitted = Admitted::as_entry(entry, None);
        let cookie = session::set_cookie(&id, self.session_secs, reach.https);
        Ok(Front::Answer(session_answer(
            StatusCode::CREATED,
            &admitted,
            expires,
            Some(cookie),
        )))
    }

    async fn log_out(
        &self,
        parts: &http::request::Parts,
        reach: Reach,
        token_name: &mut Option<Arc<str>>,
    ) -> Result<Front, GatewayError> {
        let id = session::from_request(&parts.headers).ok_or(GatewayError::InvalidSession)?;
        if !session::same_origin(&parts.method, &parts.headers, reach.https) {
            return Err(GatewayError::CrossSite);
        }
        let registry = self.registry()?;
        let key = session::key(id);
        if let Some(found) = registry
            .session(key.clone())
            .await
            .map_err(crate::spend::account::store_down)?
        {
            *token_name = Some(found.admin.into());
        }
        registry
            .end_session(key)
            .await
            .map_err(crate::spend::account::store_down)?;
        let body = serde_json::json!({"object": "gateway.session", "deleted": true});
        Ok(Front::Answer(json_response(
            StatusCode::OK,
            &body,
            Some(session::clear_cookie(reach.https)),
        )))
    }
}

fn session_answer(
    status: StatusCode,
    admin: &Admitted,
    expires: DateTime<Utc>,
    cookie: Option<String>,
) -> Response<Bytes> {
    let body = serde_json::json!({
        "object": "gateway.session",
        "admin": admin.name.as_deref(),
        "expires_at": rfc3339(expires),
    });
    json_response(status, &body, cookie)
}

/// A JSON answer of the console's own, never cached.
pub fn json_response(
    status: StatusCode,
    body: &serde_json::Value,
    cookie: Option<String>,
) -> Response<Bytes> {
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store");
    if let Some(cookie) = cookie {
        response = response.header(header::SET_COOKIE, cookie);
    }
    response
        .body(Bytes::from(body.to_string()))
        .expect("a static head and a cookie of safe characters")
}

/// `http::request::Parts`' method as the error names it.
trait MethodName {
    fn method_static(&self) -> &'static str;
}

impl MethodName for http::request::Parts {
    fn method_static(&self) -> &'static str {
        match self.method {
            Method::PUT => "PUT",
            Method::PATCH => "PATCH",
            Method::DELETE => "DELETE",
            Method::POST => "POST",
            Method::GET => "GET",
            Method::HEAD => "HEAD",
            Method::OPTIONS => "OPTIONS",
            Method::TRACE => "TRACE",
            _ => "this",
        }
    }
}
