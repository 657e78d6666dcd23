//! The mock OpenAI upstream, written once: the Rust suites start it in their
//! own process ([`MockUpstream::start`]); the SDK suites (`tests/compat`) and
//! `scripts/bench` run it as a program (`examples/mock_upstream.rs`, which
//! includes this file).
//!
//! It answers by path, the way OpenAI does where the clients care (JSON with
//! OpenAI's headers, `usage`, SSE, binary content, OpenAI's error shape):
//!
//! - `POST …/chat/completions`: a completion with `usage` (gzipped when the
//!   client accepts gzip), or with `"stream": true` five SSE chunks
//!   `metadata.gap` seconds apart (default 0.2), a stop chunk, the usage
//!   chunk when `stream_options.include_usage` asks for it, and `[DONE]`;
//! - `POST …/responses`: the Responses API's SSE events, ending in `response.completed`;
//! - `POST …/embeddings`, `…/images/generations`: their JSON;
//! - `POST …/audio/transcriptions`: `{"text": "sha256:<digest of the file part>"}`;
//! - `GET …/files/ID/content`: [`FILE_BYTES`]; `…/download?bytes=N`: N bytes of
//!   [`pattern_byte`], in 64 KB chunks;
//! - `…/sse?n=N&gap_ms=M`: N chat chunks M ms apart (each stamped `sent_us`), then `[DONE]`;
//! - `…/echo`: the body back; `…/upload`: `{"len", "length", "sha256"}` of the body;
//! - `…/gzip`: a gzip-encoded body; `…/slow?ms=M`: headers after M ms;
//! - `…/drop?after=N`: N events, then a broken connection; `…/stall`: one event, then silence;
//! - `…/status/CODE`: that status with an OpenAI error body;
//! - a `model` of `force-500`: a 500; `force-429`: a 429 with `retry-after: 0`
//!   the first time per `x-mock-attempt-key` (an SDK's retry then succeeds);
//! - `…/_fail/MODE/…` (a path prefix: a pool entry's `base_url` names it):
//!   every request fails so: `429` (with `retry-after: 60`), `500`, `401`,
//!   `reset` (no answer, the connection dropped), `silent` (no answer ever),
//!   `close-before-output` and `stall-before-output` (a `200` stream of a
//!   role-only chunk, then a broken connection or silence);
//! - `GET /_mock/requests`: what it received, as JSON (`DELETE` clears it);
//! - `POST /_mock/step`: lets a `?step=1` stream (`/sse`, or a streamed
//!   chat) send its next event, as [`MockUpstream::step`] does in-process;
//! - anything else: a model list (`?mock_models=a,b` names its models).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A fixed "binary file": every byte value, repeated.
pub fn file_bytes() -> Vec<u8> {
    (0..64).flat_map(|_| 0..=255u8).collect()
}
/// How long [`file_bytes`] is.
pub const FILE_BYTES: usize = 256 * 64;

/// What the mock upstream received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query exactly as received.
    pub target: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body_len: u64,
    pub body_sha256: String,
    /// The body itself, kept only when it is small (under 1 MB).
    pub body: Vec<u8>,
    /// Whether the body arrived whole (false when its framing broke off).
    pub complete: bool,
    /// Which connection it came on (the first accepted is 0).
    pub connection: usize,
}

/// The number of the connection a request came on.
#[derive(Clone, Copy)]
struct ConnectionNo(usize);

impl Recorded {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .count()
    }
    fn to_json(&self) -> Value {
        json!({
            "method": self.method,
            "target": self.target,
            "headers": self.headers.iter()
                .map(|(k, v)| json!([k, String::from_utf8_lossy(v)]))
                .collect::<Vec<_>>(),
            "body_len": self.body_len,
            "body_sha256": self.body_sha256,
        })
    }
}

#[derive(Default)]
struct State {
    /// Lets a `?step=1` stream send its next event, one permit each.
    steps: Steps,
    seen_429: Mutex<HashSet<String>>,
    /// Downloads whose body is still being sent.
    live_downloads: Arc<AtomicUsize>,
}

/// Counts a download while its body lives.
struct Live(Arc<AtomicUsize>);

impl Live {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The mock, listening.
pub struct MockUpstream {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    steps: Steps,
    live_downloads: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
}

impl MockUpstream {
    /// Starts it on a free loopback port, in this runtime.
    pub async fn start() -> Self {
        Self::on(TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    /// Serves on `listener`.
    pub fn on(listener: TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(State::default());
        let live_downloads = state.live_downloads.clone();
        let steps = state.steps.clone();
        let (log, state2) = (requests.clone(), state.clone());
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let number = accepted.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_nodelay(true);
                let (log, state) = (log.clone(), state2.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |mut req: Request<Incoming>| {
                        req.extensions_mut().insert(ConnectionNo(number));
                        let (log, state) = (log.clone(), state.clone());
                        async move {
                            if req.uri().path().starts_with("/_fail/reset/") {
                                // hyper drops the connection without an answer.
                                return Err(std::io::Error::other("the mock resets on purpose"));
                            }
                            Ok(answer(req, log, state).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            requests,
            steps,
            live_downloads,
            connections,
        }
    }

    /// Lets a `?step=1` stream send its next event (the first goes at once).
    pub fn step(&self) {
        self.steps.0.add_permits(1);
    }

    /// How many connections it has accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// How many `/download` bodies are being sent right now.
    pub fn live_downloads(&self) -> usize {
        self.live_downloads.load(Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn last(&self) -> Recorded {
        self.requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream received a request")
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

fn query_map(target: &str) -> HashMap<String, String> {
    target
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The byte at `i` of a download: a pattern that catches reordering and loss.
pub fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// gzip of `{"hello":"world"}`.
pub const GZIP_HELLO: &[u8] = &[
    0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xab, 0x56, 0xca, 0x48, 0xcd, 0xc9,
    0xc9, 0x57, 0xb2, 0x52, 0x2a, 0xcf, 0x2f, 0xca, 0x49, 0x51, 0xaa, 0x05, 0x00, 0xd1, 0x41, 0x09,
    0xd8, 0x11, 0x00, 0x00, 0x00,
];

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

fn chat_chunk(content: Option<&str>, finish: Option<&str>) -> Value {
    let delta = content.map_or(json!({}), |c| json!({ "content": c }));
    json!({
        "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    })
}

/// An SSE event's bytes: `event:` when named, then `data:`.
/// What sets the pace of a stream's events.
#[derive(Clone)]
enum Pace {
    /// A time between events; none for zero (the benchmark's streams).
    Gap(Duration),
    /// Each event after the first waits for the test's [`MockUpstream::step`].
    Steps(Steps),
}

/// Permits for the next events of stepped streams (none at first).
#[derive(Clone)]
struct Steps(Arc<tokio::sync::Semaphore>);

impl Default for Steps {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(0)))
    }
}

/// `n` chat chunks paced by `pace`, each made and stamped `sent_us` when it
/// is sent; then, when `usage`, a usage chunk (empty `choices`); then `[DONE]`.
fn stamped(n: u64, pace: Pace, usage: bool) -> Response<Body> {
    let stream = futures_util::stream::unfold(0u64, move |i| {
        let pace = pace.clone();
        async move {
            if i > n + 1 {
                return None;
            }
            if i > 0 && i <= n {
                match pace {
                    Pace::Gap(gap) if !gap.is_zero() => tokio::time::sleep(gap).await,
                    Pace::Gap(_) => {}
                    Pace::Steps(steps) => steps.0.acquire().await.expect("never closed").forget(),
                }
            }
            let bytes = if i < n {
                let mut chunk = chat_chunk(Some(&format!("tok{i} ")), None);
                chunk["sent_us"] = u64::try_from(now_us()).unwrap_or(0).into();
                sse_event(None, &chunk)
            } else if i == n && usage {
                let mut last = chat_chunk(None, None);
                last["choices"] = json!([]);
                last["usage"] =
                    json!({"prompt_tokens": 3, "completion_tokens": n, "total_tokens": 3 + n});
                sse_event(None, &last)
            } else if i == n {
                Bytes::new()
            } else {
                Bytes::from_static(b"data: [DONE]\n\n")
            };
            let frame: Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>> =
                Ok(Frame::data(bytes));
            Some((frame, i + 1))
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream; charset=utf-8")
        .header("x-request-id", "req_sse")
        .body(BoxBody::new(StreamBody::new(stream)))
        .unwrap()
}

fn sse_event(name: Option<&str>, data: &Value) -> Bytes {
    let data = match data {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut text = String::new();
    if let Some(name) = name {
        text.push_str(&format!("event: {name}\n"));
    }
    text.push_str(&format!("data: {data}\n\n"));
    Bytes::from(text)
}

type Event = Result<Bytes, &'static str>;

/// A streamed response of `events`, `gap` apart; `tail` keeps it open after.
fn sse(events: Vec<Event>, gap: Duration, tail: Option<Duration>) -> Response<Body> {
    let stream =
        futures_util::stream::iter(events.into_iter().enumerate()).then(move |(i, e)| async move {
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            e.map(Frame::data)
                .map_err(|m| -> Box<dyn std::error::Error + Send + Sync> { m.into() })
        });
    let stream = stream.chain(futures_util::stream::once(async move {
        if let Some(t) = tail {
            tokio::time::sleep(t).await;
        }
        Ok(Frame::data(Bytes::new()))
    }));
    Response::builder()
        .header("content-type", "text/event-stream; charset=utf-8")
        .header("x-request-id", "req_mock_stream")
        .body(BoxBody::new(StreamBody::new(stream)))
        .unwrap()
}

fn json_response(status: u16, value: &Value, n: usize) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-request-id", format!("req_mock_{n}"))
        .header("openai-processing-ms", "42")
        .header("openai-version", "2020-10-01")
        .header("x-ratelimit-limit-requests", "10000")
        .header("x-ratelimit-remaining-requests", "9999")
        .header("retry-after", "1")
        .body(full(value.to_string()))
        .unwrap()
}

fn error_body(status: u16, message: &str, code: Option<&str>) -> Value {
    let kind = if status >= 500 {
        "server_error"
    } else if status == 429 {
        "rate_limit_error"
    } else {
        "invalid_request_error"
    };
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

fn responses_events(model: &str) -> Vec<Event> {
    let resp = json!({"id": "resp_mock", "object": "response", "created_at": 1_700_000_000,
        "model": model, "status": "in_progress", "output": []});
    let item = json!({"id": "msg_1", "type": "message", "role": "assistant",
        "status": "in_progress", "content": []});
    let part = json!({"type": "output_text", "text": "", "annotations": []});
    let full_part = json!({"type": "output_text", "text": "Hi there", "annotations": []});
    let mut done_item = item.clone();
    done_item["status"] = "completed".into();
    done_item["content"] = json!([full_part]);
    let mut done = resp.clone();
    done["status"] = "completed".into();
    done["output"] = json!([done_item]);
    let mut events = vec![
        ("response.created", json!({"response": resp})),
        ("response.in_progress", json!({"response": resp})),
        (
            "response.output_item.added",
            json!({"output_index": 0, "item": item}),
        ),
        (
            "response.content_part.added",
            json!({"item_id": "msg_1", "output_index": 0, "content_index": 0, "part": part}),
        ),
    ];
    for word in ["Hi", " there"] {
        events.push((
            "response.output_text.delta",
            json!({"item_id": "msg_1", "output_index": 0,
            "content_index": 0, "delta": word, "logprobs": []}),
        ));
    }
    events.extend([
        ("response.output_text.done", json!({"item_id": "msg_1", "output_index": 0, "content_index": 0, "text": "Hi there", "logprobs": []})),
        ("response.content_part.done", json!({"item_id": "msg_1", "output_index": 0, "content_index": 0, "part": full_part})),
        ("response.output_item.done", json!({"output_index": 0, "item": done_item})),
        ("response.completed", json!({"response": done})),
    ]);
    events
        .into_iter()
        .enumerate()
        .map(|(i, (kind, mut data))| {
            data["type"] = kind.into();
            data["sequence_number"] = i.into();
            Ok(sse_event(Some(kind), &data))
        })
        .collect()
}

/// An upstream that fails every request in one way (`/_fail/MODE/…`, a
/// pool entry's `base_url` naming it), for failover from another process.
async fn fail(mode: &str, n: usize) -> Response<Body> {
    let role = || {
        let mut chunk = chat_chunk(None, None);
        chunk["choices"][0]["delta"] = json!({"role": "assistant", "content": ""});
        Ok(sse_event(None, &chunk))
    };
    match mode {
        "429" => {
            let body = error_body(
                429,
                "Rate limit reached (mock).",
                Some("rate_limit_exceeded"),
            );
            let mut r = json_response(429, &body, n);
            r.headers_mut().insert("retry-after", "60".parse().unwrap());
            r
        }
        "401" => json_response(
            401,
            &error_body(
                401,
                "Incorrect API key provided (mock).",
                Some("invalid_api_key"),
            ),
            n,
        ),
        "silent" => std::future::pending().await,
        "close-before-output" => sse(
            vec![role(), Err("the mock closes before any output")],
            Duration::from_millis(20),
            None,
        ),
        "stall-before-output" => sse(
            vec![role()],
            Duration::ZERO,
            Some(Duration::from_secs(3600)),
        ),
        _ => json_response(
            500,
            &error_body(500, "The mock upstream failed on purpose.", None),
            n,
        ),
    }
}

/// The digest of a multipart body's `file` part.
fn file_part_digest(content_type: &str, body: &[u8]) -> Option<String> {
    let boundary = content_type.split("boundary=").nth(1)?.trim_matches('"');
    let delimiter = format!("--{boundary}").into_bytes();
    let mut parts = Vec::new();
    let mut rest = body;
    while let Some(at) = rest.windows(delimiter.len()).position(|w| w == delimiter) {
        parts.push(&rest[..at]);
        rest = &rest[at + delimiter.len()..];
    }
    parts.into_iter().find_map(|part| {
        let split = part.windows(4).position(|w| w == b"\r\n\r\n")?;
        let (head, content) = (&part[..split], &part[split + 4..]);
        let named = String::from_utf8_lossy(head).contains("name=\"file\"");
        named.then(|| sha256_hex(content.strip_suffix(b"\r\n").unwrap_or(content)))
    })
}

async fn answer(
    req: Request<Incoming>,
    log: Arc<Mutex<Vec<Recorded>>>,
    state: Arc<State>,
) -> Response<Body> {
    let (parts, mut body) = req.into_parts();
    let connection = parts.extensions.get::<ConnectionNo>().map_or(0, |c| c.0);
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let q = query_map(&target);
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut kept = Vec::new();
    let echo = path.ends_with("/echo");
    let mut echoed = Vec::new();
    let mut complete = true;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            complete = false;
            break;
        };
        if let Some(data) = frame.data_ref() {
            hasher.update(data);
            len += data.len() as u64;
            if len <= 1 << 20 {
                kept.extend_from_slice(data);
            }
            if echo {
                echoed.extend_from_slice(data);
            }
        }
    }
    if path == "/_mock/step" && parts.method == "POST" {
        // What MockUpstream::step does, for a test in another process.
        state.steps.0.add_permits(1);
        return json_response(200, &json!({"stepped": true}), 0);
    }
    if path == "/_mock/requests" {
        let mut requests = log.lock().unwrap();
        if parts.method == "DELETE" {
            requests.clear();
            return json_response(200, &json!({"cleared": true}), 0);
        }
        let all: Vec<Value> = requests.iter().map(Recorded::to_json).collect();
        return json_response(200, &Value::Array(all), 0);
    }
    let sha = hex(&hasher.finalize());
    let n = {
        let mut requests = log.lock().unwrap();
        requests.push(Recorded {
            method: parts.method.to_string(),
            target: target.clone(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect(),
            body_len: len,
            body_sha256: sha.clone(),
            body: if len <= 1 << 20 {
                kept.clone()
            } else {
                Vec::new()
            },
            complete,
            connection,
        });
        requests.len()
    };
    let content_type = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let request: Value = if content_type.starts_with("application/json") {
        serde_json::from_slice(&kept).unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    let model = request["model"].as_str().unwrap_or("").to_owned();
    let num = |k: &str, d: u64| q.get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
    let json = |status: u16, value: Value| json_response(status, &value, n);
    let numbered = |i: u64| -> Event {
        let mut chunk = chat_chunk(Some(&format!("tok{i} ")), None);
        chunk["sent_us"] = u64::try_from(now_us()).unwrap_or(0).into();
        Ok(sse_event(None, &chunk))
    };

    if model == "force-500" {
        return json(
            500,
            error_body(500, "The mock upstream failed on purpose.", None),
        );
    }
    if model == "force-429" {
        let key = parts
            .headers
            .get("x-mock-attempt-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if state.seen_429.lock().unwrap().insert(key) {
            let mut r = json(
                429,
                error_body(
                    429,
                    "Rate limit reached (mock).",
                    Some("rate_limit_exceeded"),
                ),
            );
            r.headers_mut().insert("retry-after", "0".parse().unwrap());
            return r;
        }
    }
    if let Some(rest) = path.strip_prefix("/_fail/") {
        return fail(rest.split('/').next().unwrap_or(""), n).await;
    }
    match path.as_str() {
        p if p.ends_with("/chat/completions") => {
            let words = ["Hello", " from", " the", " mock", "!"];
            // Knobs in `metadata` (strings, as OpenAI's metadata is):
            // `delay_ms` before the head, `completion_tokens` in the usage,
            // `length` ("true": a stream sent whole with Content-Length).
            let meta = |k: &str| request["metadata"][k].as_str().map(str::to_owned);
            if let Some(ms) = meta("delay_ms").and_then(|v| v.parse::<u64>().ok()) {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let completion_tokens: u64 = meta("completion_tokens")
                .and_then(|v| v.parse().ok())
                .unwrap_or(5);
            if request["stream"] == true && (q.contains_key("gap_ms") || num("step", 0) == 1) {
                // The stamped stream of `/sse`, as a chat (metered by the gateway).
                let usage = request["stream_options"]["include_usage"] == true;
                let pace = if num("step", 0) == 1 {
                    Pace::Steps(state.steps.clone())
                } else {
                    Pace::Gap(Duration::from_millis(num("gap_ms", 200)))
                };
                return stamped(num("n", 5), pace, usage);
            }
            if request["stream"] == true {
                let gap = request["metadata"]["gap"]
                    .as_str()
                    .and_then(|g| g.parse::<f64>().ok())
                    .unwrap_or(0.2);
                let mut events: Vec<Event> = words
                    .iter()
                    .map(|w| Ok(sse_event(None, &chat_chunk(Some(w), None))))
                    .collect();
                events.push(Ok(sse_event(None, &chat_chunk(None, Some("stop")))));
                // As OpenAI: the usage chunk (empty choices) only when asked for.
                if request["stream_options"]["include_usage"] == true {
                    let mut last = chat_chunk(None, None);
                    last["choices"] = json!([]);
                    last["usage"] = json!({"prompt_tokens": 3, "completion_tokens": completion_tokens,
                        "total_tokens": 3u64.saturating_add(completion_tokens),
                        "prompt_tokens_details": {"cached_tokens": 1}});
                    events.push(Ok(sse_event(None, &last)));
                }
                events.push(Ok(sse_event(None, &json!("[DONE]"))));
                // `metadata.cut`: that many events, then the connection drops.
                if let Some(n) = meta("cut").and_then(|n| n.parse::<usize>().ok()) {
                    events.truncate(n);
                    events.push(Err("mock upstream cuts the stream"));
                }
                if meta("length").as_deref() == Some("true") {
                    let whole: Vec<u8> = events
                        .into_iter()
                        .flat_map(|e| e.map(|b| b.to_vec()).unwrap_or_default())
                        .collect();
                    return Response::builder()
                        .header("content-type", "text/event-stream; charset=utf-8")
                        .header("content-length", whole.len())
                        .header("etag", "\"mock-stream\"")
                        .body(full(whole))
                        .unwrap();
                }
                return sse(events, Duration::from_secs_f64(gap), None);
            }
            let completion = json!({
                "id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000,
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": words.concat()},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": completion_tokens,
                          "total_tokens": 3u64.saturating_add(completion_tokens)},
            });
            let mut r = json(200, completion.clone());
            // As OpenAI: JSON gzipped for a client that accepts it.
            let gzip = parts
                .headers
                .get("accept-encoding")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("gzip"));
            if gzip {
                use std::io::Write;
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                encoder
                    .write_all(completion.to_string().as_bytes())
                    .unwrap();
                *r.body_mut() = full(encoder.finish().unwrap());
                r.headers_mut()
                    .insert("content-encoding", "gzip".parse().unwrap());
            }
            r
        }
        p if p.ends_with("/responses") => {
            let gap = request["metadata"]["gap"]
                .as_str()
                .and_then(|g| g.parse::<f64>().ok())
                .unwrap_or(0.2);
            sse(responses_events(&model), Duration::from_secs_f64(gap), None)
        }
        p if p.ends_with("/embeddings") => json(
            200,
            json!({"object": "list", "model": model,
                   "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                   "usage": {"prompt_tokens": 1, "total_tokens": 1}}),
        ),
        p if p.ends_with("/audio/transcriptions") => {
            let digest = file_part_digest(&content_type, &kept).unwrap_or_default();
            json(200, json!({ "text": format!("sha256:{digest}") }))
        }
        p if p.ends_with("/images/generations") => json(
            200,
            json!({"created": 1_700_000_000,
                   "data": [{"b64_json": "aGVsbG8=", "revised_prompt": request["prompt"]}]}),
        ),
        p if p.ends_with("/content") => Response::builder()
            .header("content-type", "application/octet-stream")
            .header("x-request-id", format!("req_mock_{n}"))
            .body(full(file_bytes()))
            .unwrap(),
        p if p.ends_with("/sse") => stamped(
            num("n", 5),
            if num("step", 0) == 1 {
                Pace::Steps(state.steps.clone())
            } else {
                Pace::Gap(Duration::from_millis(num("gap_ms", 200)))
            },
            false,
        ),
        p if p.ends_with("/drop") => {
            let mut events: Vec<Event> = (0..num("after", 2)).map(numbered).collect();
            events.push(Err("mock upstream drops the connection"));
            sse(events, Duration::from_millis(50), None)
        }
        p if p.ends_with("/stall") => sse(
            vec![numbered(0)],
            Duration::ZERO,
            Some(Duration::from_secs(3600)),
        ),
        p if p.ends_with("/echo") => {
            let mut r = Response::new(full(echoed));
            if let Some(ct) = parts.headers.get("content-type").cloned() {
                r.headers_mut().insert("content-type", ct);
            }
            r
        }
        p if p.ends_with("/upload") => json(200, json!({"len": len, "length": len, "sha256": sha})),
        p if p.ends_with("/download") => {
            let total = num("bytes", 1 << 20);
            let live = Live::new(&state.live_downloads);
            let stream = futures_util::stream::unfold(0u64, move |at| async move {
                if at >= total {
                    return None;
                }
                let size = (total - at).min(64 * 1024);
                let chunk: Vec<u8> = (at..at + size).map(pattern_byte).collect();
                Some((
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from(
                        chunk,
                    ))),
                    at + size,
                ))
            });
            // The counter lives as long as the body does.
            let stream = stream.map(move |frame| {
                let _alive = &live;
                frame
            });
            Response::builder()
                .header("content-type", "application/octet-stream")
                .header("content-length", total.to_string())
                .body(BoxBody::new(StreamBody::new(stream)))
                .unwrap()
        }
        p if p.ends_with("/gzip") => Response::builder()
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(full(GZIP_HELLO.to_vec()))
            .unwrap(),
        p if p.ends_with("/slow") => {
            tokio::time::sleep(Duration::from_millis(num("ms", 5000))).await;
            json(200, json!({"slow": true}))
        }
        p if p.contains("/status/") => {
            let code: u16 = p.rsplit('/').next().unwrap().parse().unwrap_or(500);
            json(code, error_body(code, &format!("mock error {code}"), None))
        }
        _ => {
            // `?mock_models=a,b` lists those instead.
            let ids = q.get("mock_models").map_or("gpt-4o-mini", String::as_str);
            let data: Vec<Value> = ids
                .split(',')
                .map(|id| json!({"id": id, "object": "model", "created": 1, "owned_by": "openai"}))
                .collect();
            json(200, json!({"object": "list", "data": data}))
        }
    }
}
