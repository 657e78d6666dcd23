//! The gateway: one pipeline of named phases, request → auth → policy →
//! proxy → response, run for every request in every mode.
//!
//! [`Gateway::handle`] takes any `http::Request` whose body streams bytes
//! (hyper's for the local server, lambda_http's in Lambda) and returns an
//! `http::Response` with a streaming [`GatewayBody`]. The phases, in order:
//!
//! 1. **preflight**: CORS preflights are answered here, without a token;
//! 2. **authenticate** ([`crate::auth`]): find and check the gateway token;
//! 3. **policy** ([`crate::policy`]): the configured rules, which may read a bounded body;
//! 4. **forward** ([`crate::proxy`]): headers cleaned ([`crate::headers`]), key injected, sent;
//! 5. **respond**: CORS headers, then the body layers ([`crate::body`]) ending
//!    in the one completion point, which hands the request's [`Record`] to
//!    the completion hooks exactly once.
//!
//! The [`Record`] is created when the request arrives and carried through
//! the phases; nothing else holds per-request state.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use ipnet::IpNet;
use tokio::time::Instant;

use crate::auth::{self, Admitted};
use crate::body::{BoxError, Buffered, GatewayBody, IdleTimeout, Layer, Prefixed};
use crate::client_ip::Peer;
use crate::clock::Clock;
use crate::completion::{Completion, Pending};
use crate::console::{Console, Front, Reach};
use crate::cors::Cors;
use crate::error::GatewayError;
use crate::headers;
use crate::openai::Metering;
use crate::policy::{Inspect, Policy, RequestBody, ResponseEdit};
use crate::proxy::Proxy;
use crate::record::{Attempt, Finish, Hooks, Record, RequestId, Reserved};
use crate::secret::ApiKey;
use crate::sources::cached::Cached;
use crate::spend::store::Store;
use crate::tokens::TokenSet;
use crate::upstreams::live::Live;
use crate::upstreams::{hold, Admission, Upstreams};
use crate::usage::stream_usage::{AsSent, HideUsageChunk};
use crate::usage::tap::UsageTap;
use crate::usage::{self, Meter};

/// What a gateway is made of.
pub struct GatewayOptions {
    /// The upstreams, each with its connections and the key injected for
    /// tokens without their own (fixed, or reloaded).
    pub upstreams: Live,
    /// The token list.
    pub tokens: Cached<TokenSet>,
    /// Pass-through while the token list is empty (the operator allowed it).
    pub anonymous: bool,
    /// Longest silence inside an upstream body.
    pub idle_timeout: Duration,
    /// Longest time a client may send no request body bytes, or (local
    /// server) accept no response bytes.
    pub client_idle_timeout: Duration,
    /// Browser access, when on.
    pub cors: Option<Cors>,
    /// Rules run after authentication, in order.
    pub policies: Vec<Arc<dyn Policy>>,
    /// Work run once when each response ends, in order.
    pub hooks: Vec<Arc<dyn Finish>>,
    /// The usage store, if any (for the health check).
    pub store: Option<Arc<dyn Store>>,
    /// The most of a request body a policy reads (`MAX_INSPECTED_BODY_BYTES`).
    pub max_body: u64,
    /// The time requests are judged by (expiry, windows).
    pub clock: Clock,
    /// The proxies whose `X-Forwarded-For` names the client (`TRUSTED_PROXIES`).
    pub trusted_proxies: Vec<IpNet>,
    /// The operator's console (its page, logins and sessions), if on.
    pub console: Option<Arc<Console>>,
}

impl GatewayOptions {
    /// A gateway in front of `proxy` with `tokens`, and nothing else on.
    pub fn new(proxy: Proxy, tokens: Cached<TokenSet>) -> Self {
        Self {
            upstreams: Upstreams::single(proxy, None).into(),
            tokens,
            anonymous: false,
            idle_timeout: Duration::from_secs(300),
            client_idle_timeout: Duration::from_secs(300),
            cors: None,
            policies: Vec::new(),
            hooks: Vec::new(),
            store: None,
            max_body: 32 << 20,
            clock: Clock::system(),
            trusted_proxies: Vec::new(),
            console: None,
        }
    }
}

/// The gateway: cheap to clone, shared by every connection.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
    /// Outside `inner`, so that a server thread can have pools of its own.
    upstreams: Live,
}

struct Inner {
    /// What the gateway was made of; its `upstreams` are the template of
    /// the gateway's own (the first shares their pools, others get their own).
    options: GatewayOptions,
    hooks: Hooks,
    pending: Arc<Pending>,
}

impl Gateway {
    /// Assembles a gateway.
    pub fn new(mut options: GatewayOptions) -> Self {
        let hooks = std::mem::take(&mut options.hooks).into();
        Self {
            upstreams: options.upstreams.clone(),
            inner: Arc::new(Inner {
                options,
                hooks,
                pending: Arc::default(),
            }),
        }
    }

    /// The same gateway (tokens, policies, hooks, store, upstreams' health)
    /// with upstream keep-alive pools of its own, for a server thread with
    /// its own runtime.
    pub fn with_own_pool(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            upstreams: self.inner.options.upstreams.with_own_pools(),
        }
    }

    /// Opens a connection to each first-choice upstream (those of the
    /// lowest priority) ahead of the first request.
    pub async fn warm_up(&self) {
        let Some(upstreams) = self.upstreams.current().await.ok() else {
            return;
        };
        let members = upstreams.members();
        let first = members.iter().map(|m| m.priority).min().unwrap_or(0);
        let warm = members
            .iter()
            .filter(|m| m.priority == first)
            .map(|m| m.proxy.warm_up());
        futures_util::future::join_all(warm).await;
    }

    /// Longest time a client may accept no response bytes (the local server
    /// enforces it on the connection).
    pub fn client_idle_timeout(&self) -> Duration {
        self.inner.options.client_idle_timeout
    }

    /// Resolves once the completion work of responses whose client left
    /// early has finished (a Lambda runner waits for it).
    pub async fn settled(&self) {
        self.inner.pending.settled().await;
    }

    /// Whether the gateway can serve: its token list is loaded, and its usage
    /// store (if any) answers. The JSON names what is missing.
    pub async fn health(&self) -> (bool, serde_json::Value) {
        let options = &self.inner.options;
        let tokens = options.tokens.peek().map(|t| t.entries().len());
        let store = match &options.store {
            Some(store) => Some((store.name().to_owned(), store.ping().await)),
            None => None,
        };
        let store_ok = store.as_ref().is_none_or(|(_, r)| r.is_ok());
        let ok = tokens.is_some() && store_ok;
        let mut missing = Vec::new();
        if tokens.is_none() {
            missing.push("the token list is not loaded".to_owned());
        }
        if let Some((name, Err(_))) = &store {
            missing.push(format!("the usage store {name} does not answer"));
        }
        let body = serde_json::json!({
            "status": if ok { "ok" } else { "unavailable" },
            "tokens": tokens,
            "store": store.as_ref().map(|(name, _)| name),
            "missing": missing,
        });
        (ok, body)
    }

    /// Runs the hooks' shutdown work (the usage store writes what waits).
    pub async fn close(&self) {
        self.settled().await;
        futures_util::future::join_all(self.inner.hooks.iter().map(|h| h.close())).await;
    }

    /// Handles one request. Never fails: errors become OpenAI-shaped responses.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<GatewayBody>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = request.into_parts();
        for hook in self.inner.hooks.iter() {
            hook.start();
        }
        let mut record = Record::start_at(
            &parts.method,
            parts.uri.path(),
            Instant::now(),
            self.inner.options.clock.now(),
        );
        record.request_id = parts.extensions.get::<RequestId>().map(|id| id.0.clone());
        record.client_ip = crate::client_ip::resolve(
            parts.extensions.get::<Peer>().copied(),
            &parts.headers,
            &self.inner.options.trusted_proxies,
        );
        let buffered = parts.extensions.get::<Buffered>().copied();
        let cors = self.inner.options.cors.as_ref();
        // From here the record is held by a guard: if this future is dropped
        // before the response exists (the client left while the upstream
        // thought), the guard still hands it to the completion hooks.
        let mut guard = Unanswered {
            record: Some(record),
            gateway: self,
        };

        // 1. preflight
        if let Some(preflight) = cors.and_then(|c| c.preflight(&parts.method, &parts.headers)) {
            return self.respond(preflight, guard.take(), buffered);
        }
        let decision = cors.map(|c| c.decide(&parts.headers));
        // 2-4. authenticate, policy, forward; a panic is this request's 500.
        let forwarded = AssertUnwindSafe(self.forward(parts, body, guard.record()))
            .catch_unwind()
            .await;
        let mut response = match forwarded {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                guard.record().code = Some(error.code());
                error.to_response()
            }
            Err(panic) => {
                let error = GatewayError::Internal;
                tracing::error!(
                    panic = panic_message(&*panic),
                    code = error.code(),
                    "a request failed inside the gateway; the gateway goes on"
                );
                guard.record().code = Some(error.code());
                error.to_response()
            }
        };
        // 5. respond
        if let Some(decision) = decision {
            headers::apply_cors(response.headers_mut(), &decision);
        }
        self.respond(response, guard.take(), buffered)
    }

    /// Phases 2 to 4: authenticate, apply the policies, forward.
    async fn forward<B>(
        &self,
        parts: http::request::Parts,
        body: B,
        record: &mut Record,
    ) -> Result<Response<Shaped>, GatewayError>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let inner = &self.inner.options;
        if parts.method == Method::CONNECT {
            // An origin-form CONNECT would otherwise be sent upstream as a
            // CONNECT to the upstream's host.
            return Err(GatewayError::MethodNotAllowed("CONNECT"));
        }
        let mut body = RequestBody::new(body, record.bytes_in.clone(), inner.client_idle_timeout);
        let reach = Reach {
            client: record.client_ip,
            https: crate::client_ip::is_https(
                &parts.extensions,
                &parts.headers,
                &inner.trusted_proxies,
            ),
        };
        // The console's own doors (its page, logging in and out) need no
        // token, and its session stands for its admin's on the admin API.
        let front = match &inner.console {
            Some(console) => {
                console
                    .front(&parts, &mut body, reach, &mut record.token)
                    .await?
            }
            None => Front::Pass,
        };
        let admitted = match front {
            Front::Answer(reply) => return Ok(reply.map(Shaped::from)),
            Front::Admitted(admitted) => admitted,
            Front::Pass => self.authenticate(&parts, record.arrived).await?,
        };
        record.token.clone_from(&admitted.name);
        // Before anything is read, reserved or sent.
        admitted.check_address(record.client_ip)?;
        if let Some(console) = &inner.console {
            // The path as the policies will read it: an encoded spelling of
            // an admin path is one too.
            if admitted.admin && Console::is_admin_path(&crate::path::normalise(parts.uri.path())) {
                console.check_transport(reach)?;
            }
        }
        // One view of the upstreams for the whole request, reloads or not.
        let upstreams = self.upstreams.current().await?;
        crate::proxy::check_path(parts.uri.path())?;
        // Policy and metering read the path as the upstream will route it.
        let path = crate::path::normalise(parts.uri.path());
        if matches!(parts.method, Method::GET | Method::HEAD) {
            // One rule whatever the framing: such a body has no meaning, and
            // is refused rather than silently dropped or sent on.
            body.read(0).await.map_err(|_| {
                GatewayError::InvalidRequestBody("GET and HEAD requests cannot carry a body")
            })?;
        }
        let checked = self
            .apply_policies(
                &parts,
                &path,
                upstreams.needs_model(),
                &admitted,
                &mut body,
                record,
            )
            .await?;
        if let Some(reply) = checked.reply {
            return Ok(reply.map(Shaped::from));
        }
        let edits = checked.edits;
        let metering = crate::openai::metering(&parts.method, &path);
        let reserved = record.notes.get::<Reserved>().copied().unwrap_or_default();
        // What the usage tap reads, and whether an answer without usage is
        // estimated: images carry usage only when token-priced
        // (`gpt-image-*`, which the limits then reserve output for; a
        // `dall-e-*` answer is priced by its images); speech carries none.
        let metered = match metering {
            Metering::Tokens => Some((reserved.output, true)),
            Metering::Images => Some((reserved.output, reserved.output > 0)),
            _ => None,
        };
        // An upload's bytes are a file (audio), not text: they estimate no tokens.
        let text_body = !headers::is_media(&parts.headers, "multipart/form-data");
        let mut cleaned = headers::to_upstream(parts.headers, admitted.strip, None);
        if edits
            .iter()
            .any(|e| matches!(e, ResponseEdit::Rewrite { .. }))
        {
            headers::identity_only(&mut cleaned);
        }
        let request = Outgoing {
            method: parts.method,
            path: parts.uri.path(),
            query: admitted.query.as_deref(),
            model: checked.model.as_deref(),
            upload: !text_body,
            headers: cleaned,
            own_key: admitted.upstream_key.as_ref(),
            allowed: admitted.rules.as_ref().and_then(|r| r.upstreams.as_deref()),
        };
        let response = self.attempt(&upstreams, request, body, record).await?;
        Ok(self.shape(response, edits, metered, text_body, record))
    }

    /// The routing phase and its attempt loop: the upstreams that serve the
    /// request, in [`Upstreams::plan`]'s order, each skipped while its
    /// health says so, each tried until one answers with something other
    /// than a failure worth another upstream (a connection error, a
    /// timeout, `5xx`, and, with the gateway's own key, `429`, `401` and
    /// `403`). A retry replays the body from memory, so a body that was
    /// never read whole (too large, or no rule read it) is sent once.
    /// Nothing has reached the client yet: a retry is invisible to it.
    async fn attempt(
        &self,
        upstreams: &Upstreams,
        mut request: Outgoing<'_>,
        body: RequestBody,
        record: &mut Record,
    ) -> Result<http::Response<Prefixed<crate::pool::ResponseBody>>, GatewayError> {
        let plan = upstreams.plan(request.model, request.allowed);
        if plan.is_empty() {
            return Err(match request.model {
                Some(model) => GatewayError::NoUpstreamForModel(model.to_owned()),
                None => GatewayError::UpstreamsUnavailable(None),
            });
        }
        let many = plan.len() > 1;
        // Health is a pool's: with one upstream there is nothing to skip
        // to, and every answer is passed on as it came.
        let pooled = upstreams.members().len() > 1;
        let mut body = body;
        if many && !request.upload {
            // Held, so that a retry can send it again (a larger one goes
            // on as it streams, once).
            body.try_read(MAX_REPLAYED_BODY).await?;
        }
        let replay = body.replayable(MAX_REPLAYED_BODY);
        let mut once = Some(body);
        let clock = &self.inner.options.clock;
        let mut soonest: Option<DateTime<Utc>> = None;
        let mut last: Option<
            Result<http::Response<Prefixed<crate::pool::ResponseBody>>, GatewayError>,
        > = None;
        let mut tries = 0;
        let mut reached = false;
        let planned = plan.len();
        for (place, index) in plan.into_iter().enumerate() {
            if tries >= upstreams.max_attempts {
                break;
            }
            let member = &upstreams.members()[index];
            // The gateway's key, unless the token brings its own (whose
            // refusals and rate limits are its holder's, not the upstream's).
            let (key, owned) = match (request.own_key, &member.key) {
                (Some(own), _) => (Some(own.clone()), false),
                (None, Some(key)) => match key.get().await {
                    Ok(key) => (Some(ApiKey::clone(&key)), pooled),
                    // Its key (SSM) is not loaded yet: the next upstream.
                    Err(error) => {
                        last = Some(Err(error));
                        continue;
                    }
                },
                (None, None) => (None, false),
            };
            if pooled {
                // Judged with the key it would be sent: a key it refused
                // is skipped, another one tried.
                let gateways = key.as_ref().filter(|_| owned).map(ApiKey::fingerprint);
                if let Admission::Skip { until } = member.health.admit(clock.now(), gateways) {
                    soonest = match (soonest, until) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    continue;
                }
            }
            // An upstream that refuses `stream_options` gets the body as
            // the client sent it (its usage is then estimated).
            let as_sent = match member.inject_include_usage {
                true => None,
                false => record.notes.get::<AsSent>().map(|b| b.0.clone()),
            };
            let body = match (as_sent, &replay) {
                (Some(bytes), _) => crate::policy::replay(bytes),
                (None, Some(bytes)) => crate::policy::replay(bytes.clone()),
                (None, None) => match once.take() {
                    Some(body) => body.into_upstream(),
                    // Sent once already, and it cannot be sent again.
                    None => break,
                },
            };
            tries += 1;
            let target = member.target(request.path, request.query, request.model)?;
            // The last upstream of the plan takes the headers themselves.
            let cleaned = if place + 1 == planned {
                std::mem::take(&mut request.headers)
            } else {
                request.headers.clone()
            };
            let headers = member.headers(cleaned, key.as_ref());
            let asked = Instant::now();
            // Sent: from here the upstream may bill it, whatever happens next.
            record.sent = true;
            let mut result = member
                .proxy
                .send(request.method.clone(), target, headers, body)
                .await;
            let ms = asked.elapsed().as_secs_f64() * 1e3;
            // An attempt that never connected reached no upstream; the
            // request is sent once any attempt did.
            reached |= !matches!(result, Err(GatewayError::UpstreamUnreachable));
            record.sent = reached;
            let now = clock.now();
            let (mut retry, mut outcome) = match &result {
                Err(
                    error @ (GatewayError::UpstreamUnreachable
                    | GatewayError::UpstreamTimeout(_)
                    | GatewayError::UpstreamFailed),
                ) => {
                    if pooled {
                        member.health.failed(now);
                    }
                    (true, Err(error.code()))
                }
                // The client's own fault, or an answer no upstream would
                // change (a protocol switch): this request's answer.
                Err(error) => (false, Err(error.code())),
                Ok(response) => {
                    let status = response.status();
                    let retry = match status.as_u16() {
                        429 if owned => {
                            match crate::upstreams::health::rest_asked(response.headers(), now) {
                                Some(rest) => member.health.rest(now, rest),
                                None => member.health.failed(now),
                            }
                            true
                        }
                        401 if owned => {
                            if let Some(key) = &key {
                                member.health.kill(key.fingerprint());
                            }
                            tracing::error!(
                                upstream = &*member.name,
                                status = 401,
                                "the upstream refused the gateway's key: it is not tried with that key again \
                                 (replace the key: a reload of the upstreams, or its SSM parameter, or a restart)"
                            );
                            true
                        }
                        // OpenAI's 403 is also one model's or one region's
                        // (`model_not_found`-like permissions,
                        // `unsupported_country_region_territory`): another
                        // upstream may serve it, but the key is not dead.
                        403 if owned => {
                            member.health.failed(now);
                            true
                        }
                        500 | 502 | 503 | 504 => {
                            if pooled {
                                member.health.failed(now);
                            }
                            true
                        }
                        _ => false,
                    };
                    (retry, Ok(status.as_u16()))
                }
            };
            // A stream that another upstream could still serve is held
            // until its first output: one that fails before it is failed
            // over like a 5xx, and the client never knows.
            let mut held = Bytes::new();
            let another = tries < upstreams.max_attempts && replay.is_some() && place + 1 < planned;
            if let (false, true, Ok(response)) = (retry, another, &mut result) {
                if response.status() == http::StatusCode::OK
                    && usage::is_event_stream(response.headers())
                {
                    let timeout = upstreams.first_output_timeout;
                    match hold::first_output(response.body_mut(), timeout).await {
                        Ok(bytes) => held = bytes,
                        Err(failed) => {
                            member.health.failed(clock.now());
                            (retry, outcome) = (true, Err(failed.code()));
                        }
                    }
                }
            }
            if pooled && !retry && result.is_ok() {
                member.health.succeeded();
            }
            let result = result.map(|r| r.map(|body| Prefixed::new(held, body)));
            if many {
                record.attempts.push(Attempt {
                    upstream: member.name.clone(),
                    result: outcome,
                    ms,
                    state: member.health.status(clock.now()).0.as_str(),
                });
            }
            record.upstream = Some(member.name.clone());
            record.upstream_ms = Some(ms);
            if !retry {
                return result;
            }
            last = Some(result);
        }
        match last {
            Some(result) => result,
            None => Err(GatewayError::UpstreamsUnavailable(soonest.map(|t| {
                let wait = (t - clock.now()).num_milliseconds().max(0);
                u64::try_from(wait).unwrap_or(0).div_ceil(1000).max(1)
            }))),
        }
    }

    /// Who the request is, its token checked as of `now`.
    async fn authenticate(
        &self,
        parts: &http::request::Parts,
        now: DateTime<Utc>,
    ) -> Result<Admitted, GatewayError> {
        let inner = &self.inner.options;
        let tokens = inner.tokens.get().await?;
        auth::admit(
            &parts.headers,
            parts.uri.query(),
            &tokens,
            inner.anonymous,
            now,
        )
    }

    /// Runs every policy in order; the first refusal, or the first answer
    /// a policy gives itself, ends the run.
    async fn apply_policies(
        &self,
        parts: &http::request::Parts,
        path: &str,
        needs_model: bool,
        admitted: &Admitted,
        body: &mut RequestBody,
        record: &mut Record,
    ) -> Result<Checked, GatewayError> {
        let (notes, now) = (&mut record.notes, record.arrived);
        let policies = &self.inner.options.policies;
        if policies.is_empty() && !needs_model {
            return Ok(Checked::default());
        }
        let mut inspect = Inspect::new(
            &parts.method,
            path,
            &parts.headers,
            admitted,
            body,
            notes,
            self.inner.options.max_body,
            now,
        );
        for rule in policies {
            if !rule.applies(&inspect) {
                continue;
            }
            rule.check(&mut inspect).await?;
            if inspect.reply.is_some() {
                break;
            }
        }
        // Routing reads the model from the same view (parsed already when
        // a rule asked); a body it cannot read names none.
        let model = match needs_model && inspect.reply.is_none() {
            true => inspect.try_view().await?.and_then(|v| v.model.clone()),
            false => None,
        };
        Ok(Checked {
            edits: inspect.edits,
            reply: inspect.reply,
            model,
        })
    }

    /// The upstream's response as the client gets it: cut when silent,
    /// metered when it carries usage, then edited as the policies asked, in
    /// their order (each edit wraps the body the one before made).
    fn shape(
        &self,
        response: http::Response<Prefixed<crate::pool::ResponseBody>>,
        edits: Vec<ResponseEdit>,
        metered: Option<(u64, bool)>,
        text_body: bool,
        record: &Record,
    ) -> Response<Shaped> {
        let idle = IdleTimeout::new(self.inner.options.idle_timeout);
        let response = response.map(|body| Layer::new(body, idle));
        if metered.is_none() && edits.is_empty() {
            return response.map(Shaped::Upstream);
        }
        let mut response = response.map(GatewayBody::new);
        if let Some((whole_output, estimate)) = metered {
            let text_bytes = if text_body { record.bytes_in.get() } else { 0 };
            response = meter(response, &record.meter, text_bytes, whole_output, estimate);
        }
        if response.status().is_success() {
            for edit in edits {
                response = apply(response, edit);
            }
        }
        response.map(Shaped::Other)
    }

    /// Layers the response body: a cap when it will be collected, then the
    /// completion point that owns the record; boxed once.
    fn respond(
        &self,
        response: Response<Shaped>,
        mut record: Record,
        buffered: Option<Buffered>,
    ) -> Response<GatewayBody> {
        record.status = response.status().as_u16();
        let (parts, body) = response.into_parts();
        let body = match buffered {
            Some(b) => {
                let capped = Layer::new(body, b.cap(&parts.headers).tap());
                GatewayBody::new(self.completion(capped, record, false))
            }
            None if parts.status.is_success() && usage::is_event_stream(&parts.headers) => {
                GatewayBody::new(
                    self.completion(body, record, true)
                        .ending_cuts_with_an_event(),
                )
            }
            None => GatewayBody::new(self.completion(body, record, true)),
        };
        Response::from_parts(parts, body)
    }

    fn completion<B>(&self, body: B, record: Record, committed: bool) -> Completion<B> {
        let inner = &*self.inner;
        Completion::new(
            body,
            record,
            inner.hooks.clone(),
            inner.pending.clone(),
            committed,
        )
    }
}

/// What the policy phase decided.
#[derive(Default)]
struct Checked {
    /// Changes to a successful response, in pipeline order.
    edits: Vec<ResponseEdit>,
    /// An answer the gateway gives itself instead of forwarding.
    reply: Option<Response<Bytes>>,
    /// The request's model, when routing needs it.
    model: Option<String>,
}

/// A request as every attempt sends it.
struct Outgoing<'a> {
    method: Method,
    path: &'a str,
    query: Option<&'a str>,
    model: Option<&'a str>,
    /// A multipart upload: sent once, never held for a retry.
    upload: bool,
    /// The client's headers, less the gateway's own; each upstream's key is
    /// added per attempt.
    headers: http::HeaderMap,
    /// The token's own upstream key, if it has one.
    own_key: Option<&'a ApiKey>,
    /// The token's `upstreams`, if it names them.
    allowed: Option<&'a [String]>,
}

/// The largest body a retry replays from memory; a larger one is sent once.
pub const MAX_REPLAYED_BODY: u64 = 16 << 20;

/// A request's record until its response exists. Dropped with the record
/// still in it (the request's future was dropped: the client closed the
/// connection before the response head), it runs the completion hooks all
/// the same, as `499` (client closed request), so the request is billed
/// and logged once.
struct Unanswered<'g> {
    record: Option<Record>,
    gateway: &'g Gateway,
}

impl Unanswered<'_> {
    fn record(&mut self) -> &mut Record {
        self.record
            .as_mut()
            .expect("the record is taken only at the end")
    }

    fn take(&mut self) -> Record {
        self.record.take().expect("the record is taken once")
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.status = STATUS_CLIENT_CLOSED;
            // A completion point with nothing to send, dropped at once:
            // it runs the hooks (in the background) as `client_closed`.
            drop(
                self.gateway
                    .completion(http_body_util::Empty::<Bytes>::new(), record, true),
            );
        }
    }
}

/// The status an access line gives a request whose client left before
/// its response head (nginx's 499, "client closed request").
pub const STATUS_CLIENT_CLOSED: u16 = 499;

/// What a caught panic said, bounded (its payload is a message, or nothing
/// printable).
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    text.chars().take(200).collect()
}

/// A response body before its completion point: the upstream's, cut when
/// silent, as it is (most responses: nothing else to layer, so nothing
/// boxed before the completion point), or any other body, boxed.
enum Shaped {
    Upstream(Layer<Prefixed<crate::pool::ResponseBody>, IdleTimeout>),
    Other(GatewayBody),
}

impl From<Bytes> for Shaped {
    fn from(bytes: Bytes) -> Self {
        Self::Other(GatewayBody::full(bytes))
    }
}

impl http_body::Body for Shaped {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<crate::body::Polled>> {
        match self.get_mut() {
            Self::Upstream(body) => std::pin::Pin::new(body).poll_frame(cx),
            Self::Other(body) => std::pin::Pin::new(body).poll_frame(cx),
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream(body) => body.is_end_stream(),
            Self::Other(body) => body.is_end_stream(),
        }
    }
    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::Upstream(body) => body.size_hint(),
            Self::Other(body) => body.size_hint(),
        }
    }
}

/// Puts a usage tap on a response that may carry usage (a stream's events,
/// or a JSON body), reading into `meter`.
fn meter(
    response: Response<GatewayBody>,
    meter: &Meter,
    request_bytes: u64,
    whole_output: u64,
    estimate: bool,
) -> Response<GatewayBody> {
    let mut whole_output = whole_output;
    let tap = if usage::is_event_stream(response.headers()) {
        // A stream is charged what streamed.
        whole_output = 0;
        UsageTap::stream(meter.clone())
    } else if usage::is_json(response.headers()) {
        let encoding = response
            .headers()
            .get(http::header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        UsageTap::json(meter.clone(), encoding)
    } else {
        return response;
    };
    if estimate && response.status().is_success() {
        meter.expect(request_bytes, whole_output);
    }
    response.map(|body| GatewayBody::new(Layer::new(body, tap)))
}

/// One policy's edit of a successful response.
fn apply(mut response: Response<GatewayBody>, edit: ResponseEdit) -> Response<GatewayBody> {
    match edit {
        ResponseEdit::Rewrite { limit, rewrite } => {
            headers::for_rewrite(response.headers_mut());
            response.map(|body| rewritten(body, limit, rewrite))
        }
        ResponseEdit::HideUsageChunk if usage::is_event_stream(response.headers()) => {
            // The body changes: the upstream's length and validators no
            // longer describe it (it goes out chunked).
            headers::for_edit(response.headers_mut());
            response.map(|body| GatewayBody::new(HideUsageChunk::new(body)))
        }
        ResponseEdit::HideUsageChunk => response,
    }
}

/// A body replaced, once whole, by what `rewrite` makes of it.
fn rewritten(
    body: GatewayBody,
    limit: usize,
    rewrite: Box<dyn FnOnce(Bytes) -> Bytes + Send>,
) -> GatewayBody {
    let whole = async move {
        let collected = http_body_util::Limited::new(body, limit)
            .collect()
            .await
            .map_err(|e| -> BoxError { e })?;
        Ok::<_, BoxError>(http_body::Frame::data(rewrite(collected.to_bytes())))
    };
    GatewayBody::new(http_body_util::StreamBody::new(futures_util::stream::once(
        whole,
    )))
}
