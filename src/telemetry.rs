//! Logging: subscriber set-up, and the completion hook that writes the one
//! access-log line per request.
//!
//! Nothing secret is ever a field: the access line carries the method, the
//! path without its query, the status, timings, byte counts and the token's
//! *name*. `LOG_FORMAT=json` writes one JSON object per line (Lambda and
//! CloudWatch use it); otherwise lines are human-readable. `RUST_LOG` sets
//! the filter, `info` by default.

use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::record::{BoxFuture, Finish, Record};
use crate::usage::prices::Prices;
use std::sync::Arc;

/// Installs the global subscriber, writing to stderr in `format`.
///
/// With `background`, lines are handed to a writer thread, so a request never
/// waits on a `write` to stderr (the local server under load); the returned
/// guard flushes them when dropped. Lambda writes synchronously, because a
/// container is frozen as soon as its response is sent.
pub fn init(format: LogFormat, background: bool) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = if background {
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(false)
            .thread_name("log-writer")
            // Buffered: the writer thread flushes whenever its queue runs
            // dry, so under load one write carries many lines, and an idle
            // gateway's lines are written at once.
            .finish(std::io::BufWriter::with_capacity(
                64 * 1024,
                std::io::stderr(),
            ));
        (BoxMakeWriter::new(writer), Some(guard))
    } else {
        (BoxMakeWriter::new(std::io::stderr), None)
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let result = if format == LogFormat::Json {
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

/// The completion hook that writes one access-log line per request.
#[derive(Debug, Default, Clone)]
pub struct AccessLog {
    /// Quote and escape the path (text lines), so that a path holding
    /// `status=200` or quotes cannot pass for other fields. JSON lines
    /// escape it already.
    pub quote_path: bool,
    /// What usage costs.
    pub prices: Arc<Prices>,
}

impl Finish for AccessLog {
    fn finish(&self, record: &Record) -> BoxFuture<()> {
        let round = |ms: f64| (ms * 1e3).round() / 1e3;
        let path = if self.quote_path {
            std::borrow::Cow::Owned(format!("{:?}", record.path))
        } else {
            std::borrow::Cow::Borrowed(record.path.as_str())
        };
        let usage = record.meter.usage();
        let model = usage.as_ref().and_then(|u| u.model.as_deref());
        tracing::info!(
            method = %record.method,
            path = %path,
            model,
            input_tokens = usage.as_ref().map(|u| u.input),
            cached_tokens = usage.as_ref().map(|u| u.cached_input),
            output_tokens = usage.as_ref().map(|u| u.output),
            usage_estimated = usage.as_ref().map(|u| u.estimated),
            cost_usd = usage.as_ref().and_then(|u| self.prices.cost(u)),
            status = record.status,
            token = record.token.as_deref().unwrap_or("-"),
            error_code = record.code.unwrap_or("-"),
            upstream_ms = record.upstream_ms.map(round),
            duration_ms = round(record.elapsed_ms()),
            bytes_in = record.bytes_in.get(),
            bytes_out = record.bytes_out,
            outcome = record.outcome.as_str(),
            request_id = record.request_id.as_deref(),
            "request"
        );
        Box::pin(std::future::ready(()))
    }
}
