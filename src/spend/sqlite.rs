//! The embedded store: one SQLite file (the bundled SQLite, nothing to
//! install), the local server's default.
//!
//! Admission is one `BEGIN IMMEDIATE` transaction, so it is atomic across
//! the threads of a process and across processes sharing the file. Live
//! reservations are rows of their own, each with an expiry: a reservation
//! whose process died simply stops being counted once it expires.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::store::{
    first_exhausted, window_keys, Admission, Ask, Period, Reservation, Row, Settlement, Store,
    StoreError, WindowState,
};
use super::{Amount, Window};
use crate::record::BoxFuture;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS windows (
    token TEXT NOT NULL, window TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0, tokens INTEGER NOT NULL DEFAULT 0,
    usd_micros INTEGER NOT NULL DEFAULT 0,
    expires INTEGER,
    PRIMARY KEY (token, window));
CREATE TABLE IF NOT EXISTS reservations (
    id TEXT NOT NULL, token TEXT NOT NULL, window TEXT NOT NULL,
    requests INTEGER NOT NULL, tokens INTEGER NOT NULL, usd_micros INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    PRIMARY KEY (id, window));
CREATE INDEX IF NOT EXISTS reservations_by_window ON reservations (token, window);
CREATE INDEX IF NOT EXISTS reservations_by_expiry ON reservations (expires);
CREATE INDEX IF NOT EXISTS windows_by_expiry ON windows (expires);
CREATE TABLE IF NOT EXISTS usage (
    token TEXT NOT NULL, day TEXT NOT NULL, model TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0, cached_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0, usd_micros INTEGER NOT NULL DEFAULT 0,
    estimated_requests INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (token, day, model));
";

/// What each admission prunes first: reservations and window rows that
/// have expired. Both are looked up by their expiry index, so the cost is
/// the rows removed, not the table: a full scan of `windows` (a row per
/// token and window, kept an hour after a minute window ends) took 2.5 ms
/// per admission with a thousand limited tokens (60,000 rows), under the
/// lock every admission takes; by the index, about 2 µs.
const PRUNE: [&str; 2] = [
    "DELETE FROM reservations WHERE expires <= ?1",
    "DELETE FROM windows WHERE expires IS NOT NULL AND expires <= ?1",
];

/// How long a minute window's row is kept after it ends.
const KEEP_MINUTES_SECS: i64 = 3600;

/// A SQLite usage store.
#[derive(Debug, Clone)]
pub struct Sqlite {
    name: String,
    /// Admissions and reads.
    connection: Arc<Mutex<Connection>>,
    /// Settlements, written in batches by a thread of their own.
    writer: mpsc::Sender<Job>,
}

/// Work for the writer thread.
enum Job {
    Settle(Arc<Settlement>),
    /// Answered once everything sent before is written (or given up on).
    Flush(mpsc::SyncSender<()>),
}

/// The thread that writes settlements: whatever has arrived since the last
/// commit goes in one transaction, so a request's completion never waits
/// for the disk, and what it wrote is visible within milliseconds. If a
/// commit fails, the batch is kept (bounded) and tried again every second.
struct Writer;

/// How long the writer gathers settlements before a commit.
const GATHER: std::time::Duration = std::time::Duration::from_millis(20);

/// The most settlements a commit holds, and kept while commits fail.
const MAX_BATCH: usize = 1024;
const MAX_KEPT: usize = 10_000;

impl Writer {
    fn start(mut connection: Connection, name: String) -> mpsc::Sender<Job> {
        let (sender, jobs) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("usage-writer".into())
            .spawn(move || {
                let mut pending: Vec<Arc<Settlement>> = Vec::new();
                let mut flushes: Vec<mpsc::SyncSender<()>> = Vec::new();
                let mut open = true;
                while open || !pending.is_empty() {
                    let first = if pending.is_empty() {
                        jobs.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
                    } else {
                        jobs.recv_timeout(std::time::Duration::from_secs(1))
                    };
                    let take = |job: Job, pending: &mut Vec<Arc<Settlement>>, flushes: &mut Vec<_>| {
                        match job {
                            Job::Settle(s) => pending.push(s),
                            Job::Flush(done) => flushes.push(done),
                        }
                    };
                    match first {
                        Ok(job) => take(job, &mut pending, &mut flushes),
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => open = false,
                    }
                    // Gather for a moment, asleep (senders then wake no one):
                    // one commit for many requests.
                    if open && flushes.is_empty() {
                        std::thread::sleep(GATHER);
                    }
                    while pending.len() < MAX_BATCH {
                        match jobs.try_recv() {
                            Ok(job) => take(job, &mut pending, &mut flushes),
                            Err(mpsc::TryRecvError::Empty) => break,
                            Err(mpsc::TryRecvError::Disconnected) => {
                                open = false;
                                break;
                            }
                        }
                    }
                    let failed = !pending.is_empty() && {
                        match commit(&mut connection, &pending) {
                            Ok(()) => {
                                pending.clear();
                                false
                            }
                            Err(error) if rejects(&error) => {
                                // One settlement's values spoil the batch:
                                // each is written alone, and only those the
                                // store refuses are dropped (and said).
                                pending.retain(|one| match commit(&mut connection, std::slice::from_ref(one)) {
                                    Ok(()) => false,
                                    Err(error) => {
                                        let error = classify(&name, error);
                                        if error.rejected {
                                            tracing::error!(store = %name, %error, token = &*one.token, "the usage store refused a settlement; it is not kept");
                                        }
                                        !error.rejected
                                    }
                                });
                                !pending.is_empty()
                            }
                            Err(error) => {
                                tracing::error!(store = %name, %error, kept = pending.len(), "usage could not be written; trying again");
                                if pending.len() > MAX_KEPT {
                                    let drop = pending.len() - MAX_KEPT;
                                    tracing::error!(store = %name, dropped = drop, "usage backlog full: the oldest settlements are dropped");
                                    pending.drain(..drop);
                                }
                                true
                            }
                        }
                    };
                    if !failed || !open {
                        for done in flushes.drain(..) {
                            let _ = done.send(());
                        }
                    }
                    if failed && !open {
                        tracing::error!(store = %name, lost = pending.len(), "usage store closed with settlements it could not write");
                        break;
                    }
                }
            })
            .expect("the usage writer thread starts");
        sender
    }
}

impl Sqlite {
    /// Opens (creating if needed) the file at `path`, with its schema.
    pub fn open(path: &str) -> Result<Self, String> {
        let name = format!("sqlite:{path}");
        let connect = || {
            let fail = |e: rusqlite::Error| format!("{name}: {e}");
            let connection = Connection::open(PathBuf::from(path)).map_err(fail)?;
            connection
                .busy_timeout(std::time::Duration::from_secs(10))
                .map_err(fail)?;
            // WAL lets readers (`usage report`) run beside the gateway, and
            // with synchronous=NORMAL a commit costs no fsync (a power cut
            // may lose the last commits, a crash of the process does not).
            let _: String = connection
                .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
                .map_err(fail)?;
            connection
                .execute_batch("PRAGMA synchronous=NORMAL;")
                .map_err(fail)?;
            connection.execute_batch(SCHEMA).map_err(fail)?;
            Ok::<_, String>(connection)
        };
        let connection = connect()?;
        let writer = Writer::start(connect()?, name.clone());
        Ok(Self {
            name,
            connection: Arc::new(Mutex::new(connection)),
            writer,
        })
    }

    /// Runs `work` on the connection, off the async threads.
    fn run<T, F>(&self, work: F) -> BoxFuture<Result<T, StoreError>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let connection = self.connection.clone();
        let name = self.name.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut connection = connection.lock().unwrap_or_else(|p| p.into_inner());
                work(&mut connection)
            })
            .await
            .map_err(|e| StoreError::new(&name, e))?
            .map_err(|e| classify(&name, e))
        })
    }
}

/// A SQLite error as a store error: one caused by the values written (too
/// big, out of range, a constraint) is the request's, not an outage.
fn classify(name: &str, error: rusqlite::Error) -> StoreError {
    if rejects(&error) {
        StoreError::rejected(name, error)
    } else {
        StoreError::new(name, error)
    }
}

/// Whether SQLite refused the values themselves (see [`classify`]).
fn rejects(error: &rusqlite::Error) -> bool {
    use rusqlite::ffi::ErrorCode;
    match error {
        rusqlite::Error::SqliteFailure(e, _) => matches!(
            e.code,
            ErrorCode::TooBig | ErrorCode::ConstraintViolation | ErrorCode::TypeMismatch
        ),
        rusqlite::Error::ToSqlConversionFailure(_)
        | rusqlite::Error::IntegralValueOutOfRange(..) => true,
        _ => false,
    }
}

fn state(
    tx: &rusqlite::Transaction<'_>,
    token: &str,
    window: &str,
    now: i64,
) -> rusqlite::Result<WindowState> {
    let used = tx
        .query_row(
            "SELECT requests, tokens, usd_micros FROM windows WHERE token = ?1 AND window = ?2",
            params![token, window],
            |r| {
                Ok(Amount {
                    requests: r.get(0)?,
                    tokens: r.get(1)?,
                    usd_micros: r.get(2)?,
                })
            },
        )
        .optional()?
        .unwrap_or_default();
    let reserved = tx.query_row(
        // TOTAL (a double) never overflows as SUM would; capped at 2^53.
        "SELECT CAST(MIN(TOTAL(requests), 9007199254740992.0) AS INTEGER),
                CAST(MIN(TOTAL(tokens), 9007199254740992.0) AS INTEGER),
                CAST(MIN(TOTAL(usd_micros), 9007199254740992.0) AS INTEGER)
         FROM reservations WHERE token = ?1 AND window = ?2 AND expires > ?3",
        params![token, window, now],
        |r| {
            Ok(Amount {
                requests: r.get(0)?,
                tokens: r.get(1)?,
                usd_micros: r.get(2)?,
            })
        },
    )?;
    Ok(WindowState { used, reserved })
}

/// When a window's row may go: an hour after a minute window ends; never
/// for the others (they are few, and reports may want them).
fn expiry(key: &str, at: DateTime<Utc>) -> Option<i64> {
    key.starts_with("minute:")
        .then(|| {
            Window::Minute
                .end(at)
                .map(|end| end.timestamp() + KEEP_MINUTES_SECS)
        })
        .flatten()
}

/// Writes settlements in one transaction.
fn commit(c: &mut Connection, settlements: &[Arc<Settlement>]) -> rusqlite::Result<()> {
    // Summed in memory first: a batch of many requests of few tokens is a
    // few upserts, not one per request.
    let mut windows: HashMap<(&str, &str), (Amount, Option<i64>)> = HashMap::new();
    // Keyed by the UTC day itself; written as `YYYY-MM-DD` once per row.
    let mut rows: HashMap<(&str, chrono::NaiveDate, &str), Row> = HashMap::new();
    for s in settlements.iter().filter(|s| s.used) {
        let amount = s.amount();
        for key in &s.windows {
            let (sum, _) = windows
                .entry((&*s.token, key.as_str()))
                .or_insert((Amount::default(), expiry(key, s.at)));
            *sum = sum.plus(amount);
        }
        if s.row {
            rows.entry((&*s.token, s.at.date_naive(), &*s.model))
                .or_default()
                .add(s);
        }
    }
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut release = tx.prepare_cached("DELETE FROM reservations WHERE id = ?1")?;
        for s in settlements {
            if let Some(reservation) = &s.reservation {
                release.execute([&reservation.id])?;
            }
        }
        let mut window = tx.prepare_cached(
            "INSERT INTO windows (token, window, requests, tokens, usd_micros, expires)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (token, window) DO UPDATE SET
               requests = MIN(requests + excluded.requests, 9007199254740992),
               tokens = MIN(tokens + excluded.tokens, 9007199254740992),
               usd_micros = MIN(usd_micros + excluded.usd_micros, 9007199254740992)",
        )?;
        for ((token, key), (sum, expires)) in &windows {
            window.execute(params![
                token,
                key,
                sum.requests,
                sum.tokens,
                sum.usd_micros,
                expires
            ])?;
        }
        let mut usage = tx.prepare_cached(
            "INSERT INTO usage (token, day, model, requests, input_tokens, cached_tokens,
                                output_tokens, usd_micros, estimated_requests)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (token, day, model) DO UPDATE SET
               requests = MIN(requests + excluded.requests, 9007199254740992),
               input_tokens = MIN(input_tokens + excluded.input_tokens, 9007199254740992),
               cached_tokens = MIN(cached_tokens + excluded.cached_tokens, 9007199254740992),
               output_tokens = MIN(output_tokens + excluded.output_tokens, 9007199254740992),
               usd_micros = MIN(usd_micros + excluded.usd_micros, 9007199254740992),
               estimated_requests = MIN(estimated_requests + excluded.estimated_requests, 9007199254740992)",
        )?;
        for ((token, day, model), row) in &rows {
            usage.execute(params![
                token,
                day.format("%Y-%m-%d").to_string(),
                model,
                row.requests,
                row.input_tokens,
                row.cached_tokens,
                row.output_tokens,
                row.cost_usd,
                row.estimated_requests
            ])?;
        }
    }
    tx.commit()
}

impl Store for Sqlite {
    fn name(&self) -> &str {
        &self.name
    }

    fn init(&self) -> BoxFuture<Result<(), StoreError>> {
        self.run(|c| c.execute_batch(SCHEMA))
    }

    fn ping(&self) -> BoxFuture<Result<(), StoreError>> {
        self.run(|c| c.query_row("SELECT count(*) FROM windows LIMIT 1", [], |_| Ok(())))
    }

    fn admit(&self, ask: Ask) -> BoxFuture<Result<Admission, StoreError>> {
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = ask.now.timestamp();
            for prune in PRUNE {
                tx.execute(prune, [now])?;
            }
            let keys = window_keys(&ask.limits, ask.now);
            let mut states = Vec::with_capacity(keys.len());
            for (window, key) in &keys {
                states.push((*window, state(&tx, &ask.token, key, now)?));
            }
            if let Some(refusal) = first_exhausted(&ask.limits, &states, ask.now) {
                return Ok(Admission::Refused(refusal));
            }
            for (_, key) in &keys {
                tx.execute(
                    "INSERT INTO reservations (id, token, window, requests, tokens, usd_micros, expires)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        ask.id,
                        ask.token,
                        key,
                        ask.reserve.requests,
                        ask.reserve.tokens,
                        ask.reserve.usd_micros,
                        ask.expires.timestamp()
                    ],
                )?;
            }
            tx.commit()?;
            Ok(Admission::Granted(Reservation {
                id: ask.id,
                token: ask.token,
                windows: keys.into_iter().map(|(_, k)| k).collect(),
                amount: ask.reserve,
            }))
        })
    }

    fn settle(&self, s: Arc<Settlement>) -> BoxFuture<Result<(), StoreError>> {
        match self.hand_over(&s) {
            Some(result) => Box::pin(std::future::ready(result)),
            None => self.run(move |c| commit(c, std::slice::from_ref(&s))),
        }
    }

    fn hand_over(&self, s: &Arc<Settlement>) -> Option<Result<(), StoreError>> {
        if s.reservation.is_some() || !s.windows.is_empty() {
            // A limited token's next admission must see this settlement (its
            // reservation gone, its usage counted), so it is written now, in
            // one transaction, before the response's last bytes go out.
            // Tokens without limits go through the batching writer.
            return None;
        }
        let sent = self.writer.send(Job::Settle(s.clone()));
        Some(sent.map_err(|_| StoreError::new(&self.name, "the usage writer has stopped")))
    }

    fn flush(&self) -> BoxFuture<Result<(), StoreError>> {
        let (done, written) = mpsc::sync_channel(1);
        let sent = self.writer.send(Job::Flush(done));
        let name = self.name.clone();
        Box::pin(async move {
            sent.map_err(|_| StoreError::new(&name, "the usage writer has stopped"))?;
            tokio::task::spawn_blocking(move || {
                written.recv_timeout(std::time::Duration::from_secs(10))
            })
            .await
            .map_err(|e| StoreError::new(&name, e))?
            .map_err(|_| StoreError::new(&name, "usage was not written in time"))
        })
    }

    fn windows(
        &self,
        token: String,
        windows: Vec<Window>,
        now: DateTime<Utc>,
    ) -> BoxFuture<Result<Vec<WindowState>, StoreError>> {
        self.run(move |c| {
            let tx = c.transaction()?;
            windows
                .iter()
                .map(|w| state(&tx, &token, &w.key(now), now.timestamp()))
                .collect()
        })
    }

    fn report(
        &self,
        period: Period,
        token: Option<String>,
    ) -> BoxFuture<Result<Vec<Row>, StoreError>> {
        self.run(move |c| {
            let (from, to) = period.day_range();
            let mut statement = c.prepare(
                "SELECT token, model, CAST(MIN(TOTAL(requests), 9007199254740992.0) AS INTEGER), CAST(MIN(TOTAL(input_tokens), 9007199254740992.0) AS INTEGER), CAST(MIN(TOTAL(cached_tokens), 9007199254740992.0) AS INTEGER), CAST(MIN(TOTAL(output_tokens), 9007199254740992.0) AS INTEGER), CAST(MIN(TOTAL(usd_micros), 9007199254740992.0) AS INTEGER), CAST(MIN(TOTAL(estimated_requests), 9007199254740992.0) AS INTEGER)
                 FROM usage WHERE day >= ?1 AND day <= ?2 AND (?3 IS NULL OR token = ?3)
                 GROUP BY token, model ORDER BY token, model",
            )?;
            let rows = statement.query_map(params![from, to, token], |r| {
                Ok(Row {
                    token: r.get(0)?,
                    model: r.get(1)?,
                    requests: r.get(2)?,
                    input_tokens: r.get(3)?,
                    cached_tokens: r.get(4)?,
                    output_tokens: r.get(5)?,
                    cost_usd: r.get(6)?,
                    estimated_requests: r.get(7)?,
                })
            })?;
            rows.collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spend::Limits;

    fn ask(store_limits: &Limits, id: &str, now: DateTime<Utc>, reserve: Amount) -> Ask {
        Ask {
            token: "alice".into(),
            limits: store_limits.clone(),
            reserve,
            now,
            expires: now + chrono::Duration::seconds(60),
            id: id.into(),
        }
    }

    fn settlement(reservation: Option<Reservation>, at: DateTime<Utc>, tokens: i64) -> Settlement {
        let windows = reservation
            .as_ref()
            .map(|r| r.windows.clone())
            .unwrap_or_default();
        Settlement {
            token: "alice".into(),
            at,
            reservation,
            used: true,
            model: "gpt-4o-mini".into(),
            input: tokens / 2,
            cached: 0,
            output: tokens - tokens / 2,
            usd_micros: tokens,
            estimated: false,
            windows,
            row: true,
        }
    }

    #[test]
    fn pruning_what_expired_searches_an_index_instead_of_scanning() {
        let connection = Connection::open_in_memory().unwrap();
        connection.execute_batch(SCHEMA).unwrap();
        for prune in PRUNE {
            let plan: Vec<String> = connection
                .prepare(&format!("EXPLAIN QUERY PLAN {prune}"))
                .unwrap()
                .query_map([0], |row| row.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(
                plan.iter().any(|step| step.contains("USING INDEX"))
                    && !plan.iter().any(|step| step.starts_with("SCAN")),
                "{prune}: {plan:?}"
            );
        }
    }

    #[tokio::test]
    async fn admission_counts_use_and_live_reservations() {
        let dir = std::env::temp_dir().join(format!("gw-sqlite-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("unit.db");
        let _ = std::fs::remove_file(&path);
        let store = Sqlite::open(path.to_str().unwrap()).unwrap();
        let limits =
            Limits::parse(&serde_json::json!({"requests_per_minute": 2, "tokens_per_day": 100}))
                .unwrap();
        let now: DateTime<Utc> = "2026-12-01T10:00:30Z".parse().unwrap();
        let one = Amount {
            requests: 1,
            tokens: 10,
            usd_micros: 0,
        };
        let Admission::Granted(first) = store.admit(ask(&limits, "a", now, one)).await.unwrap()
        else {
            panic!("first refused")
        };
        assert_eq!(first.windows, ["minute:2026-12-01T10:00", "day:2026-12-01"]);
        let Admission::Granted(_) = store.admit(ask(&limits, "b", now, one)).await.unwrap() else {
            panic!("second refused")
        };
        // Two in flight: the third is over requests_per_minute.
        let Admission::Refused(refusal) = store.admit(ask(&limits, "c", now, one)).await.unwrap()
        else {
            panic!("third admitted")
        };
        assert_eq!(refusal.limit.key, "requests_per_minute");
        assert_eq!(refusal.retry_after, Some(30));
        // The next minute: the reservations still count for the day only.
        let later = now + chrono::Duration::seconds(40);
        store
            .settle(settlement(Some(first), now, 95).into())
            .await
            .unwrap();
        store.flush().await.unwrap();
        let Admission::Refused(refusal) = store.admit(ask(&limits, "d", later, one)).await.unwrap()
        else {
            panic!("over the day's tokens, admitted")
        };
        assert_eq!(refusal.limit.key, "tokens_per_day");
        // Once the unsettled reservation ("b") expires, only use counts.
        let states = store
            .windows("alice".into(), limits.windows(), later)
            .await
            .unwrap();
        assert_eq!(states[1].used.tokens, 95);
        assert_eq!(states[1].reserved.tokens, 10);
        let expired = later + chrono::Duration::seconds(60);
        let states = store
            .windows("alice".into(), limits.windows(), expired)
            .await
            .unwrap();
        assert_eq!(states[1].reserved, Amount::default());
        let rows = store
            .report(Period::Month("2026-12".into()), None)
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (
                rows[0].requests,
                rows[0].input_tokens,
                rows[0].output_tokens
            ),
            (1, 47, 48)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
