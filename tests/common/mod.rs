//! Test harness: a mock OpenAI upstream, and the gateway, either in this
//! process (`Launch::serve`, the default: `server::serve` over the same
//! start-up as the binary) or as the real binary in a child process
//! (`Launch::start`, for what only a process shows: logs, signals, exit codes,
//! memory).
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chatgpt_gateway::config::{Settings, SETTINGS};
use chatgpt_gateway::record::{BoxFuture, Finish, Record};
use chatgpt_gateway::secret::Secret;
use chatgpt_gateway::startup::{self, Mode};
use chatgpt_gateway::{server, ConfigError, Gateway};
use futures_util::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

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
}

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
}

/// A mock of the OpenAI API, answering by path:
/// - `/v1/models` (and anything unknown): JSON with OpenAI's headers;
/// - `/sse?n=N&gap_ms=M`: N SSE events M ms apart, then `[DONE]`;
/// - `/echo`: the request body back, same content type;
/// - `/upload`: reads the body, answers `{"len", "sha256"}`;
/// - `/download?bytes=N`: N bytes of a fixed pattern, in 64 KB chunks;
/// - `/gzip`: a gzip-encoded body, with `content-encoding: gzip`;
/// - `/slow?ms=M`: headers after M ms;
/// - `/drop?after=N`: headers, N SSE events, then a broken connection;
/// - `/stall`: headers and one event, then silence;
/// - `/status/CODE`: that status with an OpenAI error body.
pub struct MockUpstream {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
}

impl MockUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let log = log.clone();
                        async move { Ok::<_, Infallible>(answer(req, log).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, requests }
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

async fn answer(req: Request<Incoming>, log: Arc<Mutex<Vec<Recorded>>>) -> Response<Body> {
    let (parts, mut body) = req.into_parts();
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
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
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
    let sha = hex(&hasher.finalize());
    let wants_stream = String::from_utf8_lossy(&kept).contains("\"stream\": true");
    log.lock().unwrap().push(Recorded {
        method: parts.method.to_string(),
        target: target.clone(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect(),
        body_len: len,
        body_sha256: sha.clone(),
        body: if len <= 1 << 20 { kept } else { Vec::new() },
    });
    let n = |k: &str, d: u64| q.get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
    let json = |status: u16, text: String| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("x-request-id", "req_mock_123")
            .header("openai-processing-ms", "42")
            .header("openai-version", "2020-10-01")
            .header("x-ratelimit-remaining-requests", "99")
            .header("retry-after", "1")
            .body(full(text))
            .unwrap()
    };
    let sse = |events: Vec<Result<Bytes, &'static str>>, gap: Duration, tail: Option<Duration>| {
        let stream = futures_util::stream::iter(events.into_iter().enumerate()).then(
            move |(i, e)| async move {
                if i > 0 {
                    tokio::time::sleep(gap).await;
                }
                e.map(Frame::data)
                    .map_err(|m| -> Box<dyn std::error::Error + Send + Sync> { m.into() })
            },
        );
        let stream = stream.chain(futures_util::stream::once(async move {
            if let Some(t) = tail {
                tokio::time::sleep(t).await;
            }
            Ok(Frame::data(Bytes::new()))
        }));
        Response::builder()
            .header("content-type", "text/event-stream")
            .header("x-request-id", "req_sse")
            .body(BoxBody::new(StreamBody::new(stream)))
            .unwrap()
    };
    let chunk = |i: u64| -> Result<Bytes, &'static str> {
        Ok(Bytes::from(format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}}}}]}}\n\n"
        )))
    };
    match path.as_str() {
        p if p.ends_with("/sse") || p.ends_with("/chat/completions") && wants_stream => {
            let mut events: Vec<_> = (0..n("n", 5)).map(chunk).collect();
            events.push(Ok(Bytes::from_static(b"data: [DONE]\n\n")));
            sse(events, Duration::from_millis(n("gap_ms", 200)), None)
        }
        p if p.ends_with("/drop") => {
            let mut events: Vec<_> = (0..n("after", 2)).map(chunk).collect();
            events.push(Err("mock upstream drops the connection"));
            sse(events, Duration::from_millis(50), None)
        }
        p if p.ends_with("/stall") => sse(
            vec![chunk(0)],
            Duration::ZERO,
            Some(Duration::from_secs(3600)),
        ),
        p if p.ends_with("/echo") => {
            let ct = parts.headers.get("content-type").cloned();
            let mut r = Response::new(full(echoed));
            if let Some(ct) = ct {
                r.headers_mut().insert("content-type", ct);
            }
            r
        }
        p if p.ends_with("/upload") => json(200, format!("{{\"len\":{len},\"sha256\":\"{sha}\"}}")),
        p if p.ends_with("/download") => {
            let total = n("bytes", 1 << 20);
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
            tokio::time::sleep(Duration::from_millis(n("ms", 5000))).await;
            json(200, "{\"slow\":true}".into())
        }
        p if p.contains("/status/") => {
            let code: u16 = p.rsplit('/').next().unwrap().parse().unwrap_or(500);
            json(code, format!("{{\"error\":{{\"message\":\"mock error {code}\",\"type\":\"server_error\",\"param\":null,\"code\":null}}}}"))
        }
        _ => json(
            200,
            "{\"object\":\"list\",\"data\":[{\"id\":\"gpt-4o\",\"object\":\"model\"}]}".into(),
        ),
    }
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

/// A scratch directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("gw-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Anything the tests can send requests to.
pub trait Target {
    fn addr(&self) -> SocketAddr;
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }
}

/// The gateway, served in this process.
pub struct Served {
    pub addr: SocketAddr,
    records: Arc<Mutex<Vec<serde_json::Value>>>,
    task: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

impl Target for Served {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Served {
    pub fn url(&self, path: &str) -> String {
        Target::url(self, path)
    }

    /// The finished requests' records, as the access log would show them.
    pub fn access_lines(&self) -> Vec<serde_json::Value> {
        self.records.lock().unwrap().clone()
    }

    /// Waits until `n` requests finished.
    pub async fn wait_access_lines(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lines = self.access_lines();
            if lines.len() >= n || Instant::now() > deadline {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A completion hook that keeps each record as the access line's fields.
#[derive(Clone, Default)]
pub struct Collect(pub Arc<Mutex<Vec<serde_json::Value>>>);

impl Finish for Collect {
    fn finish(&self, r: &Record) -> BoxFuture<()> {
        self.0.lock().unwrap().push(serde_json::json!({
            "message": "request",
            "method": r.method.as_str(),
            "path": r.path,
            "status": r.status,
            "token": r.token.as_deref().unwrap_or("-"),
            "error_code": r.code.unwrap_or("-"),
            "upstream_ms": r.upstream_ms,
            "bytes_in": r.bytes_in.get(),
            "bytes_out": r.bytes_out,
            "outcome": r.outcome.as_str(),
            "request_id": r.request_id,
        }));
        Box::pin(std::future::ready(()))
    }
}

#[derive(clap::Parser)]
struct SettingsOnly {
    #[command(flatten)]
    settings: Settings,
}

/// The gateway binary, running.
pub struct GatewayProc {
    pub addr: SocketAddr,
    pub child: Child,
    pub logs: Arc<Mutex<Vec<String>>>,
    _dir: TempDir,
}

/// How to start the gateway.
pub struct Launch {
    pub tokens: Option<String>,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
}

impl Launch {
    pub fn new(upstream: &str) -> Self {
        Self {
            tokens: None,
            env: vec![("UPSTREAM_URL".into(), upstream.into())],
            args: Vec::new(),
        }
    }
    pub fn tokens(mut self, json: &str) -> Self {
        self.tokens = Some(json.into());
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.into());
        self
    }

    /// Serves the gateway in this process, built by the same start-up code
    /// as the binary; variables become their flags (see `config::SETTINGS`).
    pub async fn serve(self) -> Served {
        match self.try_serve().await {
            Ok(served) => served,
            Err(error) => panic!("the gateway did not start: {error}"),
        }
    }

    /// Like [`Launch::serve`], returning a start-up refusal instead of panicking.
    pub async fn try_serve(self) -> Result<Served, ConfigError> {
        let dir = TempDir::new();
        let mut args = vec!["chatgpt-gateway".to_owned()];
        if let Some(tokens) = &self.tokens {
            args.push(format!(
                "--tokens-file={}",
                dir.write("tokens.json", tokens).display()
            ));
        }
        let mut key = None;
        for (var, value) in &self.env {
            match var.as_str() {
                "UPSTREAM_API_KEY" => key = Some(value.clone()),
                "LOG_FORMAT" | "RUST_LOG" => {}
                _ => {
                    let setting = SETTINGS
                        .iter()
                        .find(|s| s.var == var)
                        .unwrap_or_else(|| panic!("{var} is not a setting"));
                    let flag = setting
                        .flag
                        .unwrap_or_else(|| panic!("{var} has no flag; set it on the settings"));
                    args.push(format!("{flag}={value}"));
                }
            }
        }
        args.extend(self.args);
        let mut settings = <SettingsOnly as clap::Parser>::try_parse_from(&args)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .settings;
        settings.upstream_api_key = key.map(Secret::new);
        let records = Arc::new(Mutex::new(Vec::new()));
        let mut options = startup::options(&settings, Mode::Local).await?;
        options.hooks.push(Arc::new(Collect(records.clone())));
        let gateway = Gateway::new(options);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(server::serve(
            listener,
            gateway,
            std::future::pending(),
            Duration::from_secs(1),
        ));
        Ok(Served {
            addr,
            records,
            task,
            _dir: dir,
        })
    }

    /// Starts the binary and waits for its `listening` line.
    pub fn start(self) -> GatewayProc {
        match self.spawn() {
            Ok(proc) => proc,
            Err((code, logs)) => panic!(
                "gateway exited ({code:?}) before listening:\n{}",
                logs.join("\n")
            ),
        }
    }

    /// Starts the binary; on an early exit returns its status and output.
    pub fn spawn(self) -> Result<GatewayProc, (Option<i32>, Vec<String>)> {
        self.spawn_until("listening")
    }

    /// Starts the binary in Lambda mode (its environment names the runtime
    /// API) and waits until it serves events.
    pub fn start_lambda(self) -> GatewayProc {
        match self.spawn_until("serving Lambda events") {
            Ok(proc) => proc,
            Err((code, logs)) => panic!("gateway exited ({code:?}):\n{}", logs.join("\n")),
        }
    }

    /// Starts the binary and waits for a log line with `message`.
    fn spawn_until(self, message: &str) -> Result<GatewayProc, (Option<i32>, Vec<String>)> {
        let dir = TempDir::new();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatgpt-gateway"));
        cmd.current_dir(&dir.0)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("GATEWAY_LISTEN", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("SHUTDOWN_GRACE_SECS", "5");
        if let Some(tokens) = &self.tokens {
            cmd.env("TOKENS_FILE", dir.write("tokens.json", tokens));
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("the gateway binary starts");
        let logs = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = logs.lock().unwrap().iter().find_map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                (v["message"] == message).then(|| {
                    v["address"]
                        .as_str()
                        .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |a| a.parse().unwrap())
                })
            });
            if let Some(addr) = found {
                return Ok(GatewayProc {
                    addr,
                    child,
                    logs,
                    _dir: dir,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                let logs = logs.lock().unwrap().clone();
                return Err((status.code(), logs));
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not start: {:?}",
                logs.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Target for GatewayProc {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl GatewayProc {
    pub fn url(&self, path: &str) -> String {
        Target::url(self, path)
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// The access-log lines (JSON), in order.
    pub fn access_lines(&self) -> Vec<serde_json::Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == "request")
            .collect()
    }

    /// Waits until `n` access lines were written.
    pub fn wait_access_lines(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lines = self.access_lines();
            if lines.len() >= n || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmHWM:")
    }

    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmRSS:")
    }

    pub fn terminate(&self) {
        unsafe_kill(self.child.id(), "TERM");
    }
}

pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn unsafe_kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP client for tests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A plain GET through the gateway.
pub async fn fetch(gw: &impl Target, path: &str) -> reqwest::Response {
    client().get(gw.url(path)).send().await.unwrap()
}

/// Reads a streamed response to its end; returns the bytes and whether the
/// stream broke (rather than ending cleanly). Panics when it stalls for `stall`.
pub async fn read_stream(response: reqwest::Response, stall: Duration) -> (Vec<u8>, bool) {
    let mut body = response.bytes_stream();
    let mut got = Vec::new();
    while let Some(chunk) = tokio::time::timeout(stall, body.next())
        .await
        .expect("stream hung")
    {
        match chunk {
            Ok(c) => got.extend_from_slice(&c),
            Err(_) => return (got, true),
        }
    }
    (got, false)
}

/// Sends raw bytes and returns the raw answer (until the server closes or 2 s pass).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.windows(4).any(|w| w == b"\r\n\r\n") && out.len() > 12 && complete(&out) {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a raw response with a Content-Length body has all of it.
fn complete(raw: &[u8]) -> bool {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .is_some_and(|n| body.len() >= n)
}
