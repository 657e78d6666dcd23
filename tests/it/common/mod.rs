//! Test harness: a mock OpenAI upstream, and the gateway, either in this
//! process (`Launch::serve`, the default: `server::serve` over the same
//! start-up as the binary) or as the real binary in a child process
//! (`Launch::start`, for what only a process shows: logs, signals, exit codes,
//! memory).
#![allow(dead_code)]

pub mod aws;
pub mod mock;
pub mod runtime;
#[allow(unused_imports)] // not every suite talks to the mock
pub use mock::*;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chatgpt_gateway::clock::Clock;
use chatgpt_gateway::config::{Settings, SETTINGS};
use chatgpt_gateway::policy::Policy;
use chatgpt_gateway::record::{BoxFuture, Finish, Record};
use chatgpt_gateway::secret::Secret;
use chatgpt_gateway::startup::{self, Mode};
use chatgpt_gateway::{server, ConfigError, Gateway};
use futures_util::StreamExt;
use tokio::net::TcpListener;

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
    pub dir: TempDir,
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
    fn finish(&self, r: &Record) -> Option<BoxFuture<()>> {
        self.0.lock().unwrap().push(serde_json::json!({
            "message": "request",
            "method": r.method.as_str(),
            "path": r.path,
            "status": r.status,
            "token": r.token.as_deref().unwrap_or("-"),
            "error_code": r.code.unwrap_or("-"),
            "upstream_ms": r.upstream_ms,
            "upstream": r.upstream.as_deref(),
            "attempts": (!r.attempts.is_empty()).then(|| r.attempts.iter().map(|a| match a.result {
                Ok(status) => serde_json::json!({"upstream": &*a.upstream, "status": status, "ms": a.ms}),
                Err(code) => serde_json::json!({"upstream": &*a.upstream, "error": code, "ms": a.ms}),
            }).collect::<Vec<_>>()),
            "bytes_in": r.bytes_in.get(),
            "bytes_out": r.bytes_out,
            "outcome": r.outcome.as_str(),
            "request_id": r.request_id,
            "client_ip": r.client_ip.map(|ip| ip.to_string()),
            "usage": r.meter.usage().map(|u| serde_json::json!({
                "model": u.model, "input": u.input, "cached": u.cached_input,
                "output": u.output, "estimated": u.estimated,
            })),
        }));
        None
    }
}

#[derive(clap::Parser)]
pub struct SettingsOnly {
    #[command(flatten)]
    pub settings: Settings,
}

/// The gateway binary, running.
pub struct GatewayProc {
    pub addr: SocketAddr,
    pub child: Child,
    pub logs: Arc<Mutex<Vec<String>>>,
    /// The threads reading its stderr and stdout into `logs`.
    readers: Vec<std::thread::JoinHandle<()>>,
    _dir: TempDir,
}

/// How to start the gateway.
pub struct Launch {
    pub tokens: Option<String>,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    /// Rules added to the gateway (in-process only).
    pub policies: Vec<Arc<dyn Policy>>,
    /// Files written to the binary's working directory.
    pub files: Vec<(String, String)>,
    /// The time the gateway goes by (in-process only; the system's if none).
    pub clock: Option<Clock>,
}

impl Launch {
    pub fn new(upstream: &str) -> Self {
        Self {
            tokens: None,
            env: vec![("UPSTREAM_URL".into(), upstream.into())],
            args: Vec::new(),
            policies: Vec::new(),
            files: Vec::new(),
            clock: None,
        }
    }
    /// Runs the gateway by `clock`, which the test moves (in-process only).
    pub fn clock(mut self, clock: &Clock) -> Self {
        self.clock = Some(clock.clone());
        self
    }
    /// A file in the binary's working directory (binary only).
    pub fn file(mut self, name: &str, text: &str) -> Self {
        self.files.push((name.into(), text.into()));
        self
    }
    pub fn policy(mut self, policy: impl Policy + 'static) -> Self {
        self.policies.push(Arc::new(policy));
        self
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
        if !self.env.iter().any(|(k, _)| k == "USAGE_STORE") {
            // The local default (`sqlite:usage.db` in the working directory),
            // kept in this gateway's own directory.
            args.push(format!(
                "--usage-store=sqlite:{}",
                dir.0.join("usage.db").display()
            ));
        }
        args.extend(self.args);
        let mut settings = <SettingsOnly as clap::Parser>::try_parse_from(&args)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .settings;
        settings.upstream_api_key = key.map(Secret::new);
        let records = Arc::new(Mutex::new(Vec::new()));
        let clock = self.clock.unwrap_or_default();
        let mut options = startup::options_at(&settings, Mode::Local, clock).await?;
        options.hooks.push(Arc::new(Collect(records.clone())));
        options.policies.extend(self.policies);
        let gateway = Gateway::new(options);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Two workers, as the binary runs on a 2-core machine: connections
        // are handed to threads with runtimes of their own.
        let task = tokio::spawn(async move {
            server::serve_on_workers(
                listener,
                gateway,
                std::future::pending(),
                Duration::from_secs(1),
                2,
            )
            .await
            .expect("the worker threads start");
        });
        Ok(Served {
            addr,
            records,
            task,
            dir,
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
        assert!(
            self.policies.is_empty(),
            "policies are for the in-process gateway"
        );
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
        for (name, text) in &self.files {
            dir.write(name, text);
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
        let mut readers = Vec::new();
        for stream in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let logs = logs.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    logs.lock().unwrap().push(line);
                }
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = logs.lock().unwrap().iter().find_map(|line| {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    // A text line: `… INFO listening address=127.0.0.1:1234`.
                    let rest = line.split_once(&format!(" {message}"))?.1;
                    let address = rest
                        .split_once("address=")
                        .and_then(|(_, a)| a.split_whitespace().next());
                    return Some(
                        address.map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |a| a.parse().unwrap()),
                    );
                };
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
                    readers,
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

    /// The binary's working directory.
    pub fn dir(&self) -> &std::path::Path {
        &self._dir.0
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

    /// Waits up to `within` for the process to exit, and returns how it did.
    pub async fn exited(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "did not exit within {within:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    status_field(&format!("/proc/{pid}"), field)
}

/// A number from the `status` file of `dir` (a process or a thread under
/// `/proc`): the value after `field`, e.g. `VmRSS:` or
/// `voluntary_ctxt_switches:`.
pub fn status_field(dir: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("{dir}/status")).unwrap();
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

impl GatewayProc {
    /// Everything the process wrote, once it has ended: stops it (SIGTERM,
    /// then SIGKILL after 10 s) and reads both its pipes to their end, so
    /// that a line it would have written is not merely still on its way.
    pub async fn all_output(mut self) -> String {
        self.terminate();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for reader in std::mem::take(&mut self.readers) {
            tokio::task::spawn_blocking(move || reader.join())
                .await
                .unwrap()
                .unwrap();
        }
        self.log_text()
    }
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

/// A local port nothing listens on (for a listener a test starts later).
pub fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET /healthz` on the metrics listener at `port`: status and JSON body.
pub async fn healthz(port: u16) -> (u16, serde_json::Value) {
    let r = client()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
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

/// A clock standing half-way through the current minute (so a test of a
/// per-minute window never straddles two), until the test moves it.
pub fn mid_minute() -> Clock {
    let now = chrono::Utc::now().timestamp();
    let at = now - now.rem_euclid(60) + 30;
    Clock::manual(chrono::DateTime::from_timestamp(at, 0).expect("a time in range"))
}

/// An outside tool a suite needs beyond Rust.
#[derive(Clone, Copy, Debug)]
pub enum Tool {
    /// moto's server (Python), as SSM and DynamoDB: `MOTO_URL`, or
    /// `python3` with `moto[server]` installed.
    Moto,
    /// The `openssl` command (a CA of the TLS suite's own, `s_server`).
    Openssl,
}

impl Tool {
    /// Why it is missing, and how to get it; `None` when it is here.
    fn missing(self) -> Option<&'static str> {
        let runs = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        match self {
            Tool::Moto if std::env::var_os("MOTO_URL").is_some() => None,
            Tool::Moto if runs("python3", &["-c", "import moto.server, flask"]) => None,
            Tool::Moto => Some(
                "moto is not installed (pip install 'moto[server]', or set MOTO_URL; scripts/test does both)",
            ),
            Tool::Openssl if runs("openssl", &["version"]) => None,
            Tool::Openssl => Some("the openssl command is not installed (apt-get install openssl)"),
        }
    }
}

/// Whether `tool` is here, for a test that needs it: call it first and
/// return when it says no. A test without its tool is not run, and says so
/// on stderr (past the harness's capture), naming the tool and how to get
/// it; under `GATEWAY_TESTS_REQUIRE_ALL=1` (scripts/test, CI) it fails
/// instead, so a skip is never counted as a pass there.
pub fn needs(tool: Tool) -> bool {
    static MOTO: OnceLock<Option<&str>> = OnceLock::new();
    static OPENSSL: OnceLock<Option<&str>> = OnceLock::new();
    let checked = match tool {
        Tool::Moto => &MOTO,
        Tool::Openssl => &OPENSSL,
    };
    let missing = *checked.get_or_init(|| tool.missing());
    let Some(reason) = missing else {
        return true;
    };
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    if std::env::var("GATEWAY_TESTS_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("{test} cannot run: {reason}");
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "NOT RUN {test}: {reason}");
    false
}
