//! The upstream connections: hyper's client connections driven directly,
//! with a keep-alive pool per [`crate::proxy::Proxy`] (so one per server
//! worker thread, whose runtime then drives its connections' tasks too).
//!
//! - **HTTP/1.1**: idle connections wait on a stack, and the most recently
//!   used is taken first (so surplus ones go quiet and expire). A
//!   connection goes back when its response body has ended cleanly; one
//!   whose body was cut or dropped is closed, never reused.
//! - **HTTP/2**, when the upstream's TLS offers it: one connection, shared
//!   by every request, replaced once it closes.
//! - A request sent on a reused connection that the upstream had just
//!   closed is sent again on another (up to [`MAX_ATTEMPTS`] connections):
//!   hyper hands such a request back untouched, since none of it was
//!   written. A request that met a fresh connection is never sent twice.
//! - Idle connections are kept for [`IDLE_TIMEOUT`]; expired or closed ones
//!   are dropped as the pool is next used, and at most [`MAX_IDLE`] wait.
//!
//! Per request this is an uncontended lock, a pop and a push: no pool key,
//! no task spawned, no connect raced against a checkout.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{header, HeaderValue, Request, Response, Uri};
use http_body::Body;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::Connection;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;
use tower_service::Service;

use crate::body::{BoxError, Layer, Step};

/// How the proxy connects: TCP, then TLS (or plain HTTP) by the URI's scheme.
pub type Connector = HttpsConnector<HttpConnector>;

/// A request body on its way to the upstream.
pub type UpstreamBody = BoxBody<Bytes, BoxError>;

/// How long an idle connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The most idle HTTP/1.1 connections kept.
pub const MAX_IDLE: usize = 256;

/// How long an idle connection that is not yet ready is waited for.
const READY_WAIT: Duration = Duration::from_millis(20);

/// How many connections one request is offered, when reused ones turn out
/// to have been closed.
pub const MAX_ATTEMPTS: u32 = 4;

/// A response body from the upstream, which gives its connection back to
/// the pool when it ends cleanly.
pub type ResponseBody = Layer<Incoming, Release>;

/// The keep-alive pool of one upstream.
#[derive(Debug)]
pub struct Pool {
    connector: Connector,
    /// What the connector is asked for: the upstream's scheme and authority.
    origin: Uri,
    /// The `Host` of HTTP/1.1 requests.
    host: HeaderValue,
    idle: Stack,
    shared: Mutex<Option<http2::SendRequest<UpstreamBody>>>,
}

/// The idle HTTP/1.1 connections, the most recently used last.
type Stack = Arc<Mutex<VecDeque<Idle>>>;

#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<UpstreamBody>,
    since: Instant,
}

impl Idle {
    /// Neither closed by the upstream nor idle too long.
    fn usable(&self) -> bool {
        !self.sender.is_closed() && self.since.elapsed() <= IDLE_TIMEOUT
    }
}

/// A connection taken from the pool, for one request.
enum Sender {
    Http1(http1::SendRequest<UpstreamBody>),
    Http2(http2::SendRequest<UpstreamBody>),
}

/// Why no response came back.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened (TCP, TLS or the HTTP/2 handshake).
    Connect(BoxError),
    /// The exchange failed on an open connection.
    Exchange(hyper::Error),
}

impl Pool {
    /// An empty pool for `origin` (`scheme://authority`).
    pub fn new(connector: Connector, origin: Uri) -> Self {
        let authority = origin.authority().map_or("", |a| a.as_str());
        let host = HeaderValue::from_str(authority).expect("an authority is a valid Host");
        Self {
            connector,
            origin,
            host,
            idle: Arc::default(),
            shared: Mutex::default(),
        }
    }

    /// An empty pool for the same upstream, over the same connector.
    pub fn empty_copy(&self) -> Self {
        Self::new(self.connector.clone(), self.origin.clone())
    }

    /// Sends `request` (its URI origin-form: a path and query) and waits for
    /// the response head, sending it again on another connection when a
    /// reused one turns out to have been closed before any of it was written.
    pub async fn send(
        &self,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<ResponseBody>, SendError> {
        for attempt in 1.. {
            let (sender, reused) = self.checkout().await.map_err(SendError::Connect)?;
            let outcome = match sender {
                Sender::Http1(mut sender) => {
                    // Origin-form on the wire, the host in `Host`.
                    self.set_form(request.uri_mut(), false);
                    request
                        .headers_mut()
                        .insert(header::HOST, self.host.clone());
                    match sender.try_send_request(request).await {
                        Ok(response) => {
                            // An empty body (`HEAD`, 204, 304) is never polled to
                            // its end: the connection goes back now.
                            let release = if response.body().is_end_stream() {
                                release(&self.idle, sender);
                                Release(None)
                            } else {
                                Release(Some((self.idle.clone(), sender)))
                            };
                            return Ok(response.map(|body| Layer::new(body, release)));
                        }
                        Err(error) => error,
                    }
                }
                Sender::Http2(mut sender) => {
                    // The scheme and authority go in HTTP/2's pseudo-headers.
                    self.set_form(request.uri_mut(), true);
                    request.headers_mut().remove(header::HOST);
                    match sender.try_send_request(request).await {
                        Ok(response) => {
                            return Ok(response.map(|body| Layer::new(body, Release(None))))
                        }
                        Err(error) => error,
                    }
                }
            };
            request = retryable(outcome, reused && attempt < MAX_ATTEMPTS)?;
        }
        unreachable!("the attempts are counted without end")
    }

    /// Puts `uri` in the form this kind of connection sends: absolute for
    /// HTTP/2 (its scheme and authority go in the pseudo-headers), origin-form
    /// for HTTP/1.1 (the authority goes in `Host`). A request arrives
    /// origin-form, but one an HTTP/2 connection handed back unsent is
    /// already absolute when it is tried again on HTTP/1.1.
    fn set_form(&self, uri: &mut Uri, absolute: bool) {
        if uri.scheme().is_some() == absolute {
            return;
        }
        let target = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *uri = if absolute {
            let mut parts = self.origin.clone().into_parts();
            parts.path_and_query = Some(target);
            Uri::from_parts(parts).expect("a scheme, an authority and a path make a URI")
        } else {
            Uri::from(target)
        };
    }

    /// Opens a connection ahead of the first request and leaves it idle.
    pub async fn warm_up(&self) -> Result<(), BoxError> {
        match self.connect().await? {
            Sender::Http1(sender) => release(&self.idle, sender),
            Sender::Http2(_) => {}
        }
        Ok(())
    }

    /// A ready connection: the shared HTTP/2 one, the most recent idle
    /// HTTP/1.1 one, or a new one. Says whether it was reused.
    async fn checkout(&self) -> Result<(Sender, bool), BoxError> {
        if let Some(shared) = self.shared() {
            return Ok((Sender::Http2(shared), true));
        }
        loop {
            let next = self
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_back();
            let Some(idle) = next else {
                break;
            };
            if !idle.usable() {
                continue;
            }
            let mut sender = idle.sender;
            // Given back at its response body's end, a connection can be a
            // poll away from taking its next request (its task has not run
            // yet), or still busy sending a request body the upstream did not
            // wait for: it gets a moment, then is dropped.
            if sender.is_ready()
                || tokio::time::timeout(READY_WAIT, sender.ready())
                    .await
                    .is_ok_and(|ready| ready.is_ok())
            {
                return Ok((Sender::Http1(sender), true));
            }
        }
        Ok((self.connect().await?, false))
    }

    /// The shared HTTP/2 connection, while it is open.
    fn shared(&self) -> Option<http2::SendRequest<UpstreamBody>> {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        match &*shared {
            Some(sender) if !sender.is_closed() => Some(sender.clone()),
            Some(_) => {
                *shared = None;
                None
            }
            None => None,
        }
    }

    /// Opens a connection (TCP, then TLS with ALPN when the upstream is
    /// HTTPS) and starts its task on the current runtime.
    async fn connect(&self) -> Result<Sender, BoxError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
        let io = connector.call(self.origin.clone()).await?;
        if io.connected().is_negotiated_h2() {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "upstream HTTP/2 connection ended");
                }
            });
            let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            if shared.as_ref().is_none_or(|s| s.is_closed()) {
                *shared = Some(sender.clone());
            }
            Ok(Sender::Http2(sender))
        } else {
            let (sender, connection) = http1::handshake(io).await?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "upstream connection ended");
                }
            });
            Ok(Sender::Http1(sender))
        }
    }
}

/// The request back, when a reused connection refused it unsent.
fn retryable(
    mut error: TrySendError<Request<UpstreamBody>>,
    reused: bool,
) -> Result<Request<UpstreamBody>, SendError> {
    match error.take_message() {
        Some(request) if reused => {
            tracing::debug!(error = %error.error(), "a reused upstream connection was closed; sending again");
            Ok(request)
        }
        _ => Err(SendError::Exchange(error.into_error())),
    }
}

/// Puts `sender` back on the idle stack, dropping what expired.
fn release(idle: &Mutex<VecDeque<Idle>>, sender: http1::SendRequest<UpstreamBody>) {
    let mut idle = idle.lock().unwrap_or_else(|e| e.into_inner());
    while idle.front().is_some_and(|oldest| !oldest.usable()) {
        idle.pop_front();
    }
    if idle.len() < MAX_IDLE {
        idle.push_back(Idle {
            sender,
            since: Instant::now(),
        });
    }
}

/// The response body's step that gives an HTTP/1.1 connection back to the
/// pool once the body has ended cleanly (dropped earlier, the connection
/// closes with it).
pub struct Release(Option<(Stack, http1::SendRequest<UpstreamBody>)>);

impl Step for Release {
    fn end(&mut self) {
        if let Some((idle, sender)) = self.0.take() {
            release(&idle, sender);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Pool {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let tls = rustls::ClientConfig::builder_with_provider(provider.into())
            .with_safe_default_protocol_versions()
            .expect("the default versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(HttpConnector::new());
        Pool::new(
            connector,
            Uri::from_static("https://upstream.example:8443/"),
        )
    }

    #[test]
    fn a_target_is_absolute_for_http2_and_origin_form_for_http1() {
        let pool = pool();
        let mut uri = Uri::from_static("/v1/models?limit=2");
        pool.set_form(&mut uri, false);
        assert_eq!(uri, "/v1/models?limit=2");
        pool.set_form(&mut uri, true);
        assert_eq!(uri, "https://upstream.example:8443/v1/models?limit=2");
        pool.set_form(&mut uri, true);
        assert_eq!(uri, "https://upstream.example:8443/v1/models?limit=2");
        // Handed back unsent by HTTP/2, then tried on HTTP/1.1.
        pool.set_form(&mut uri, false);
        assert_eq!(uri, "/v1/models?limit=2");
        assert!(uri.scheme().is_none() && uri.authority().is_none());
    }
}
