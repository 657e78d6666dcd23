//! Logging: subscriber set-up and the one access-log line per request.
//!
//! Nothing secret is ever a field: the access line carries the method, the
//! path without its query, the status, timings, byte counts and the token's
//! *name*. `LOG_FORMAT=json` writes one JSON object per line (Lambda and
//! CloudWatch use it); otherwise lines are human-readable. `RUST_LOG` sets
//! the filter, `info` by default.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::Method;
use tokio::time::Instant;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber, writing to stderr. `json` selects JSON lines.
///
/// With `background`, lines are handed to a writer thread, so a request never
/// waits on a `write` to stderr (the local server under load); the returned
/// guard flushes them when dropped. Lambda writes synchronously, because a
/// container is frozen as soon as its response is sent.
pub fn init(json: bool, background: bool) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = if background {
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(false)
            .thread_name("log-writer")
            .finish(std::io::stderr());
        (BoxMakeWriter::new(writer), Some(guard))
    } else {
        (BoxMakeWriter::new(std::io::stderr), None)
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let result = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
    // A second init (tests) keeps the first subscriber.
    drop(result);
    LogGuard(guard)
}

/// Keeps the background log writer running; dropping it flushes what is queued.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard(#[allow(dead_code)] Option<tracing_appender::non_blocking::WorkerGuard>);

/// Installs a quiet subscriber for the admin commands: warnings and errors only.
pub fn init_cli() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    drop(
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_target(false)
            .try_init(),
    );
}

/// The id of the invocation a request arrived in (Lambda), put in the
/// request's extensions by the Lambda glue and written on its access line.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The longest path written to a log line; longer ones are cut.
const MAX_LOGGED_PATH: usize = 256;

/// What the access-log line of one request will say.
#[derive(Debug)]
pub struct AccessLog {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) status: u16,
    pub(crate) token: Option<String>,
    pub(crate) code: Option<&'static str>,
    pub(crate) started: Instant,
    pub(crate) upstream_ms: Option<f64>,
    pub(crate) received: Arc<AtomicU64>,
    pub(crate) request_id: Option<String>,
}

impl AccessLog {
    /// Starts the record for a request; the path is cut to a bounded length.
    pub(crate) fn start(
        method: &Method,
        path: &str,
        started: Instant,
        received: Arc<AtomicU64>,
    ) -> Self {
        let mut cut = MAX_LOGGED_PATH.min(path.len());
        while !path.is_char_boundary(cut) {
            cut -= 1;
        }
        Self {
            method: method.clone(),
            path: path[..cut].to_owned(),
            status: 0,
            token: None,
            code: None,
            started,
            upstream_ms: None,
            received,
            request_id: None,
        }
    }

    /// Writes the line. `outcome` says how the response body ended.
    pub(crate) fn write(self, sent: u64, outcome: &'static str) {
        let duration_ms = self.started.elapsed().as_secs_f64() * 1e3;
        tracing::info!(
            method = %self.method,
            path = %self.path,
            status = self.status,
            token = self.token.as_deref().unwrap_or("-"),
            error_code = self.code.unwrap_or("-"),
            upstream_ms = self.upstream_ms.map(|ms| (ms * 1e3).round() / 1e3),
            duration_ms = (duration_ms * 1e3).round() / 1e3,
            bytes_in = self.received.load(Ordering::Relaxed),
            bytes_out = sent,
            outcome,
            request_id = self.request_id.as_deref(),
            "request"
        );
    }
}
