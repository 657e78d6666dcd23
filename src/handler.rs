//! The gateway's request handler: request → auth → proxy → response.
//!
//! [`Gateway::handle`] takes any `http::Request` whose body streams bytes
//! (hyper's for the local server, lambda_http's in Lambda) and returns an
//! `http::Response` with a streaming [`GatewayBody`]. Every mode calls it.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use http::{Request, Response};
use tokio::time::Instant;

use crate::auth;
use crate::body::{BoxError, Counted, GatewayBody};
use crate::cors::Cors;
use crate::error::GatewayError;
use crate::proxy::{self, Proxy};
use crate::secret::Secret;
use crate::telemetry::{AccessLog, RequestId};
use crate::tokens::cache::Cached;
use crate::tokens::TokenSet;

/// The gateway: cheap to clone, shared by every connection.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    proxy: Proxy,
    tokens: Cached<TokenSet>,
    upstream_key: Option<Cached<Secret>>,
    anonymous: bool,
    idle_timeout: Duration,
    cors: Option<Cors>,
}

impl Gateway {
    /// Assembles a gateway. `anonymous` allows pass-through while the token
    /// list is empty; `upstream_key` is injected for tokens without their own.
    pub fn new(
        proxy: Proxy,
        tokens: Cached<TokenSet>,
        upstream_key: Option<Cached<Secret>>,
        anonymous: bool,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                proxy,
                tokens,
                upstream_key,
                anonymous,
                idle_timeout,
                cors: None,
            }),
        }
    }

    /// Turns CORS on with this policy (call before sharing the gateway).
    pub fn with_cors(mut self, cors: Option<Cors>) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("with_cors is called before the gateway is shared")
            .cors = cors;
        self
    }

    /// The proxy (for start-up checks such as a connection warm-up).
    pub fn proxy(&self) -> &Proxy {
        &self.inner.proxy
    }

    /// The token cache.
    pub fn tokens(&self) -> &Cached<TokenSet> {
        &self.inner.tokens
    }

    /// Handles one request. Never fails: errors become OpenAI-shaped responses.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<GatewayBody>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        let received = Arc::new(AtomicU64::new(0));
        let (mut parts, body) = request.into_parts();
        let mut log = AccessLog::start(&parts.method, parts.uri.path(), started, received.clone());
        log.request_id = parts.extensions.get::<RequestId>().map(|id| id.0.clone());
        let cors = self.inner.cors.as_ref();
        if let Some(preflight) = cors.and_then(|c| c.preflight(&parts.method, &parts.headers)) {
            log.status = preflight.status().as_u16();
            return preflight.map(|body: GatewayBody| body.with_log(log));
        }
        let decision = cors.map(|c| c.decide(&parts.headers));
        let mut response = match self.forward(&mut parts, body, &mut log, received).await {
            Ok(response) => response,
            Err(error) => {
                log.code = Some(error.code());
                error.to_response()
            }
        };
        if let Some(decision) = decision {
            decision.apply(response.headers_mut());
        }
        log.status = response.status().as_u16();
        response.map(|body| body.with_log(log))
    }

    async fn forward<B>(
        &self,
        parts: &mut http::request::Parts,
        body: B,
        log: &mut AccessLog,
        received: Arc<AtomicU64>,
    ) -> Result<Response<GatewayBody>, GatewayError>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let inner = &*self.inner;
        let tokens = inner.tokens.get().await?;
        let admitted = auth::admit(
            &mut parts.headers,
            parts.uri.query(),
            &tokens,
            inner.anonymous,
            Utc::now(),
        )?;
        log.token = admitted.name;
        let url = inner
            .proxy
            .target(parts.uri.path(), admitted.query.as_deref())?;
        let key = match (admitted.upstream_key, &inner.upstream_key) {
            (Some(own), _) => Some(own),
            (None, Some(global)) => Some(Secret::clone(&*global.get().await?)),
            (None, None) => None,
        };
        let headers = proxy::upstream_headers(std::mem::take(&mut parts.headers), key.as_ref());
        let body = if body.is_end_stream() {
            reqwest::Body::from(Bytes::new())
        } else {
            reqwest::Body::wrap(Counted::new(body, received))
        };
        let asked = Instant::now();
        let response = inner
            .proxy
            .send(parts.method.clone(), url, headers, body)
            .await?;
        log.upstream_ms = Some(asked.elapsed().as_secs_f64() * 1e3);
        Ok(response.map(|body| GatewayBody::upstream(body, inner.idle_timeout)))
    }
}
