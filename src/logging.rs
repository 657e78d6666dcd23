//! Logging: the subscriber's set-up, and where lines go (the gathered
//! writer of the local server, or stderr directly on Lambda), access lines
//! ([`crate::access_log`]) included.
//!
//! `LOG_FORMAT=json` writes one JSON object per line (Lambda and CloudWatch
//! use it); otherwise lines are human-readable. `RUST_LOG` sets the filter,
//! `info` by default.

use std::io::Write;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriter};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use std::sync::Arc;

/// Installs the global subscriber, writing to stderr in `format`.
///
/// With `background`, lines are gathered in memory and written by a thread
/// of their own (the local server under load): a request never waits on a
/// `write` to stderr, and nothing wakes another thread per line. The
/// returned guard writes what is still gathered when dropped. Lambda writes
/// synchronously, because a container is frozen as soon as its response is
/// sent.
pub fn init(format: LogFormat, background: bool) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = if background {
        let lines = Gathered::start(std::io::stderr());
        lines.write_before_panics();
        (BoxMakeWriter::new(lines.clone()), Some(lines))
    } else {
        (BoxMakeWriter::new(std::io::stderr), None)
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = ACCESS.set(AccessSink {
        lines: guard.clone(),
        json: format == LogFormat::Json,
        ansi,
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
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

/// Keeps the background log writer running; dropping it writes what is
/// gathered and stops the writer.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard(Option<Lines>);

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(lines) = self.0.take() {
            lines.close();
        }
    }
}

/// How long the writer gathers lines before writing them: the longest a
/// line waits.
const GATHER: Duration = Duration::from_millis(20);
/// Gathered bytes that wake the writer before its time is up.
const HIGH: usize = 64 * 1024;
/// Gathered bytes at which a logging thread waits for the writer (stderr
/// is stuck): lines are held back, never dropped.
const FULL: usize = 4 * 1024 * 1024;

/// Log lines gathered in memory for the writer thread.
#[derive(Clone)]
struct Lines(Arc<Gathered>);

struct Gathered {
    state: Mutex<State>,
    /// The writer waits on it: the first line of a batch, `HIGH`, closing.
    ready: Condvar,
    /// Loggers wait on it while `FULL`.
    taken: Condvar,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Default)]
struct State {
    buffer: Vec<u8>,
    closing: bool,
}

impl Gathered {
    /// Starts the writer thread, writing to `out`.
    fn start(mut out: impl Write + Send + 'static) -> Lines {
        let lines = Lines(Arc::new(Self {
            state: Mutex::default(),
            ready: Condvar::new(),
            taken: Condvar::new(),
            writer: Mutex::new(None),
        }));
        let gathered = lines.0.clone();
        let writer = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || gathered.write_out(&mut out))
            .expect("the log writer thread starts");
        *lines.0.writer.lock().expect("log writer") = Some(writer);
        lines
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The writer thread: waits for a first line, gathers for up to
    /// `GATHER` (or until `HIGH`), writes the batch in one go; until closed.
    fn write_out(&self, out: &mut impl Write) {
        let mut batch = Vec::new();
        let mut state = self.lock();
        loop {
            if state.buffer.is_empty() {
                if state.closing {
                    return;
                }
                state = self.ready.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let deadline = Instant::now() + GATHER;
            while state.buffer.len() < HIGH && !state.closing {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                state = self
                    .ready
                    .wait_timeout(state, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            std::mem::swap(&mut state.buffer, &mut batch);
            drop(state);
            self.taken.notify_all();
            let _ = out.write_all(&batch).and_then(|()| out.flush());
            batch.clear();
            if batch.capacity() > FULL {
                batch.shrink_to(HIGH);
            }
            state = self.lock();
        }
    }
}

impl Lines {
    /// A panic aborts the process (release builds): what is gathered is
    /// written to stderr first, so the lines before it are not lost.
    fn write_before_panics(&self) {
        let gathered = self.0.clone();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Ok(mut state) = gathered.state.try_lock() {
                let _ = std::io::stderr().write_all(&state.buffer);
                state.buffer.clear();
            }
            previous(info);
        }));
    }

    /// Writes what is gathered and stops the writer.
    fn close(&self) {
        self.0.lock().closing = true;
        self.0.ready.notify_one();
        self.0.taken.notify_all();
        if let Some(writer) = self.0.writer.lock().expect("log writer").take() {
            let _ = writer.join();
        }
    }
}

impl Write for &Gathered {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut state = self.lock();
        while state.buffer.len() >= FULL && !state.closing {
            state = self.taken.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        let before = state.buffer.len();
        state.buffer.extend_from_slice(line);
        let after = state.buffer.len();
        drop(state);
        // Only the first line of a batch, and the one that fills it, wake
        // the writer: a wake-up is a system call and a context switch.
        if before == 0 || (before < HIGH && after >= HIGH) {
            self.ready.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Lines {
    type Writer = &'a Gathered;

    fn make_writer(&'a self) -> Self::Writer {
        &self.0
    }
}

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

/// Where the access lines go: set by [`init`], in its format. Without it
/// (a gateway inside a test) there are no access lines, as there are no
/// other log lines without a subscriber.
static ACCESS: OnceLock<AccessSink> = OnceLock::new();

pub(crate) struct AccessSink {
    /// The gathered lines, or stderr directly (Lambda).
    lines: Option<Lines>,
    /// Lines are JSON (`LOG_FORMAT=json`).
    pub json: bool,
    /// Text lines may be coloured (stderr is a terminal).
    pub ansi: bool,
}

/// Where access lines go, once [`init`] has run.
pub(crate) fn access_sink() -> Option<&'static AccessSink> {
    ACCESS.get()
}

impl AccessSink {
    /// Writes one whole line.
    pub(crate) fn write(&self, line: &[u8]) {
        match &self.lines {
            Some(lines) => drop((&*lines.0).write_all(line)),
            None => drop(std::io::stderr().write_all(line)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read, slow when asked to be.
    #[derive(Clone, Default)]
    struct Sink {
        bytes: Arc<Mutex<Vec<u8>>>,
        writes: Arc<std::sync::atomic::AtomicUsize>,
        delay: Duration,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            std::thread::sleep(self.delay);
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn text(sink: &Sink) -> String {
        String::from_utf8(sink.bytes.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_line_on_an_idle_writer_goes_out_without_waiting_for_more() {
        let sink = Sink::default();
        let lines = Gathered::start(sink.clone());
        (&*lines.0).write_all(b"one\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while text(&sink).is_empty() {
            assert!(Instant::now() < deadline, "the line was never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(text(&sink), "one\n");
        lines.close();
    }

    #[test]
    fn lines_from_many_threads_are_all_written_whole_and_in_order_through_a_slow_sink() {
        // A sink slow enough that the buffer fills up: loggers must wait,
        // not drop lines, and each thread's lines keep their order.
        let sink = Sink {
            delay: Duration::from_millis(50),
            ..Sink::default()
        };
        let lines = Gathered::start(sink.clone());
        let line = |t: usize, n: usize| format!("thread={t} n={n} {}\n", "x".repeat(200));
        std::thread::scope(|scope| {
            for t in 0..4 {
                let lines = lines.clone();
                scope.spawn(move || {
                    for n in 0..10_000 {
                        (&*lines.0).write_all(line(t, n).as_bytes()).unwrap();
                    }
                });
            }
        });
        lines.close();
        let written = text(&sink);
        let mut next = [0; 4];
        for got in written.lines() {
            let t: usize = got[7..8].parse().unwrap();
            assert_eq!(format!("{got}\n"), line(t, next[t]), "out of order or cut");
            next[t] += 1;
        }
        assert_eq!(next, [10_000; 4], "lines were lost");
        // 40,000 lines of ~215 bytes: batches, not a write per line.
        let writes = sink.writes.load(std::sync::atomic::Ordering::SeqCst);
        assert!(writes < 1_000, "{writes} writes");
    }
}
