//! The embedded store: one SQLite file (the bundled SQLite, nothing to
//! install), the local server's default.
//!
//! The gateway holds the file **exclusively** (a lock on `PATH.lock`; a
//! second gateway on the same file refuses to start), so the counters can
//! live in memory ([`super::ledger`]): an admission is a few map lookups
//! under one lock, atomic across the process's threads. A window's counter
//! is read from the file the first time it is needed. Every change is
//! written behind by one thread, summed by key:
//!
//! - a limited token's settlement is committed before the response's last
//!   bytes go out (the request waits for the commit that holds it; commits
//!   are shared by whatever arrived meanwhile);
//! - reservations, and the usage of tokens without limits, ride with the
//!   next commit, within [`GATHER`].
//!
//! Live reservations are rows of their own, each with an expiry: one left
//! by a process that died is read back at start and counts until it expires.
//! `usage report` and the tests open the file as a reader
//! ([`Sqlite::reader`]), beside a running gateway.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::journal::{self, Journal};
use super::ledger::{window_of, Counter, Held, Ledger, Pending};
use super::store::{
    window_keys, Admission, Ask, Hourly, Period, Row, Settlement, Store, StoreError, WindowState,
};
use super::{Amount, Window};
use crate::clock::Clock;
use crate::record::BoxFuture;

/// The usage rows' table, as [`SCHEMA`] makes it and [`upgrade`] remakes
/// it: one row per token, UTC day and hour, model and upstream.
macro_rules! usage_table {
    () => {
        "
CREATE TABLE IF NOT EXISTS usage (
    token TEXT NOT NULL, day TEXT NOT NULL, model TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0, cached_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0, usd_micros INTEGER NOT NULL DEFAULT 0,
    estimated_requests INTEGER NOT NULL DEFAULT 0,
    upstream TEXT NOT NULL DEFAULT '-',
    hour INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (token, day, hour, model, upstream));
"
    };
}

const SCHEMA: &str = concat!(
    "
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
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    epoch INTEGER NOT NULL, seq INTEGER NOT NULL);
",
    usage_table!()
);

/// Whether the file's usage rows have the column `name` (files made before
/// rows named their upstream, or their hour, lack it).
fn usage_has(c: &Connection, name: &str) -> rusqlite::Result<bool> {
    c.query_row(
        "SELECT count(*) FROM pragma_table_info('usage') WHERE name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// The expressions a reader selects for the upstream and the hour: the
/// columns, or, in a file the gateway has not brought up to date yet, what
/// its rows are read as (no known upstream, the day's first hour).
fn usage_columns(c: &Connection) -> rusqlite::Result<(&'static str, &'static str)> {
    Ok((
        if usage_has(c, "upstream")? {
            "upstream"
        } else {
            "'-'"
        },
        if usage_has(c, "hour")? { "hour" } else { "0" },
    ))
}

/// Brings a file made before usage rows named their upstream, or their hour,
/// up to date: the table is remade with the columns in its key, its rows
/// kept (upstream `-`, hour 0). One transaction, run by the gateway (never
/// by a reader) when it opens the file; `false` when there was nothing to do.
fn upgrade(c: &mut Connection) -> rusqlite::Result<bool> {
    let (upstream, hour) = (usage_has(c, "upstream")?, usage_has(c, "hour")?);
    if upstream && hour {
        return Ok(false);
    }
    let kept = if upstream { ", upstream" } else { "" };
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(&format!(
        "ALTER TABLE usage RENAME TO usage_before;
         {}
         INSERT INTO usage (token, day, model, requests, input_tokens, cached_tokens,
                            output_tokens, usd_micros, estimated_requests{kept})
         SELECT token, day, model, requests, input_tokens, cached_tokens,
                output_tokens, usd_micros, estimated_requests{kept}
         FROM usage_before;
         DROP TABLE usage_before;",
        usage_table!()
    ))?;
    tx.commit()?;
    Ok(true)
}

/// What the writer prunes from the file once a minute: reservations and
/// window rows that have expired, looked up by their expiry index (so the
/// cost is the rows removed, not the table).
const PRUNE: [&str; 2] = [
    "DELETE FROM reservations WHERE expires <= ?1",
    "DELETE FROM windows WHERE expires IS NOT NULL AND expires <= ?1",
];

/// How long the writer gathers changes nobody waits for before a commit.
pub const GATHER: Duration = Duration::from_millis(20);

/// How long the writer gathers settlements that wait for their commit,
/// when other requests are in flight (none: it commits at once).
const GROUP: Duration = Duration::from_millis(1);

/// How often the writer forgets ended windows and prunes the file.
const TIDY: Duration = Duration::from_secs(60);

/// How long after its end a window's counter stays in memory (a request
/// admitted in it may still be settling).
const EVICT_GRACE_SECS: i64 = 120;

/// A SQLite usage store: the gateway's ([`Sqlite::open`]) or a reader's
/// ([`Sqlite::reader`]).
#[derive(Debug, Clone)]
pub struct Sqlite {
    name: String,
    /// Reads (counters not yet in memory, reports).
    reads: Arc<Mutex<Connection>>,
    /// The gateway's counters and writer; `None` for a reader.
    owner: Option<Arc<Owner>>,
}

/// The exclusive hold on the file: the counters, and the writer's thread.
#[derive(Debug)]
struct Owner {
    shared: Arc<Shared>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// Held (locked) for as long as the store is open.
    _lock: std::fs::File,
}

impl Drop for Owner {
    fn drop(&mut self) {
        // The writer commits what is left, then ends; the store is closed
        // once it has. (So its connections are never closed while the
        // same process opens the file again: SQLite 3.51's unix VFS can
        // deadlock when one thread closes a WAL connection to a file as
        // another opens one to it.)
        lock(&self.shared.state).closed = true;
        self.shared.wake.notify_all();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// What the request path and the writer share.
#[derive(Debug)]
struct Shared {
    name: String,
    state: Mutex<State>,
    /// The connection every commit goes through; its lock orders commits.
    writes: Mutex<Connection>,
    /// Wakes the writer: someone waits for a commit, or the store closes.
    wake: Condvar,
    /// The last change (by [`State::seq`]) committed.
    committed: AtomicU64,
    /// Whether the last commit failed (the writer tries again every second;
    /// the counters in memory still hold the limits meanwhile).
    failing: AtomicBool,
    /// Told after each commit, or failure.
    done: tokio::sync::Notify,
    /// What expiry and pruning go by.
    clock: Clock,
}

#[derive(Debug, Default)]
struct State {
    ledger: Ledger,
    /// Where a limited settlement is made durable before its response ends
    /// (`None` if it could not be opened: then the request waits for the commit).
    journal: Option<Journal>,
    /// The last append failed (said once, until one works again).
    journal_failing: bool,
    /// The writer waits its long wait (it saw nothing pending): the next
    /// settlement wakes it.
    writer_idle: bool,
    /// Numbers the changes: a request waits until `committed` reaches its.
    seq: u64,
    /// Someone waits for the next commit.
    urgent: bool,
    closed: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Opens `path` with the pragmas the store uses, and its schema.
fn connect(name: &str, path: &str) -> Result<Connection, String> {
    let fail = |e: rusqlite::Error| format!("{name}: {e}");
    let connection = Connection::open(PathBuf::from(path)).map_err(fail)?;
    connection
        .busy_timeout(Duration::from_secs(10))
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
    connection
        .execute_batch(super::registry::sqlite::SCHEMA)
        .map_err(fail)?;
    Ok(connection)
}

impl Sqlite {
    /// Opens (creating if needed) the file at `path` for the gateway: it
    /// holds the file exclusively until the store is dropped.
    pub fn open(path: &str) -> Result<Self, String> {
        Self::open_at(path, Clock::system())
    }

    /// [`Sqlite::open`], with reservations expired and ended windows
    /// pruned by `clock`.
    pub fn open_at(path: &str, clock: Clock) -> Result<Self, String> {
        let name = format!("sqlite:{path}");
        let lock_path = format!("{path}.lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| format!("{name}: cannot open {lock_path}: {e}"))?;
        if let Err(e) = file.try_lock() {
            use std::io::Read;
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim().chars().take(20).collect::<String>();
            return Err(match e {
                std::fs::TryLockError::WouldBlock => format!(
                    "{name} is in use by another gateway (process {}): one gateway per SQLite file; \
                     for several processes, share limits through dynamodb:TABLE",
                    if holder.is_empty() { "unknown" } else { &holder }
                ),
                std::fs::TryLockError::Error(e) => format!("{name}: cannot lock {lock_path}: {e}"),
            });
        }
        {
            use std::io::{Seek, Write};
            let _ = file.set_len(0);
            let _ = file.rewind();
            let _ = write!(file, "{}", std::process::id());
        }
        let mut reads = connect(&name, path)?;
        if upgrade(&mut reads)
            .map_err(|e| format!("{name}: bringing usage rows up to date: {e}"))?
        {
            tracing::info!(store = %name, "usage rows now name their upstream and hour (rows before are `-`, hour 0)");
        }
        let mut ledger = Ledger::default();
        orphans(&reads, &mut ledger, clock.now().timestamp())
            .map_err(|e| format!("{name}: {e}"))?;
        let journal = recover(&mut reads, &mut ledger, path).map_err(|e| format!("{name}: {e}"))?;
        let writes = connect(&name, path)?;
        let shared = Arc::new(Shared {
            name: name.clone(),
            writes: Mutex::new(writes),
            state: Mutex::new(State {
                ledger,
                journal: Some(journal),
                ..State::default()
            }),
            wake: Condvar::new(),
            committed: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            done: tokio::sync::Notify::new(),
            clock,
        });
        let for_writer = shared.clone();
        let writer = std::thread::Builder::new()
            .name("usage-writer".into())
            .spawn(move || write_behind(&for_writer))
            .map_err(|e| format!("{name}: cannot start the usage writer: {e}"))?;
        Ok(Self {
            name,
            reads: Arc::new(Mutex::new(reads)),
            owner: Some(Arc::new(Owner {
                shared,
                writer: Some(writer),
                _lock: file,
            })),
        })
    }

    /// Opens the file at `path` to read reports and windows beside a
    /// running gateway (creating the schema if missing). It admits and
    /// settles nothing.
    pub fn reader(path: &str) -> Result<Self, String> {
        let name = format!("sqlite:{path}");
        let reads = connect(&name, path)?;
        Ok(Self {
            name,
            reads: Arc::new(Mutex::new(reads)),
            owner: None,
        })
    }

    /// Runs `work` on the reading connection, off the async threads.
    pub(in crate::spend) fn run<T, F>(&self, work: F) -> BoxFuture<Result<T, StoreError>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let connection = self.reads.clone();
        let name = self.name.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || work(&mut lock(&connection)))
                .await
                .map_err(|e| StoreError::new(&name, e))?
                .map_err(|e| classify(&name, e))
        })
    }

    fn read_only<T: Send + 'static>(&self) -> BoxFuture<Result<T, StoreError>> {
        let error = StoreError::new(&self.name, "opened for reading only");
        Box::pin(std::future::ready(Err(error)))
    }

    /// Reads from the file the counters of `keys` that are not in memory.
    async fn load(
        &self,
        owner: &Owner,
        token: &str,
        keys: &[(Window, String)],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let missing: Vec<(Window, String)> = lock(&owner.shared.state)
            .ledger
            .missing(token, keys)
            .into_iter()
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let who = token.to_owned();
        let read = self
            .run(move |c| {
                missing
                    .into_iter()
                    .map(|(window, key)| {
                        let used = used(c, &who, &key)?;
                        let ends = window.end(now).map(|e| e.timestamp());
                        Ok((
                            key,
                            Counter {
                                used,
                                reserved: Amount::default(),
                                ends,
                            },
                        ))
                    })
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        let mut state = lock(&owner.shared.state);
        for (key, counter) in read {
            state.ledger.load(token, key, counter);
        }
        Ok(())
    }
}

/// Reads back the live reservations a process that died left in the file:
/// they count (with their windows' usage read too) until they expire.
fn orphans(c: &Connection, ledger: &mut Ledger, now: i64) -> rusqlite::Result<()> {
    let mut statement = c.prepare(
        "SELECT id, token, window, requests, tokens, usd_micros, expires
         FROM reservations WHERE expires > ?1 ORDER BY id",
    )?;
    let rows = statement.query_map([now], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            Amount {
                requests: r.get(3)?,
                tokens: r.get(4)?,
                usd_micros: r.get(5)?,
            },
            r.get::<_, i64>(6)?,
        ))
    })?;
    let mut held: Vec<(String, Held)> = Vec::new();
    for row in rows {
        let (id, token, window, amount, expires) = row?;
        match held.last_mut() {
            Some((last, h)) if *last == id => h.windows.push(window),
            _ => held.push((
                id,
                Held {
                    token: Arc::from(token),
                    windows: vec![window],
                    amount,
                    expires,
                },
            )),
        }
    }
    for (_, h) in &held {
        for key in &h.windows {
            let ends = window_of(key)
                .and_then(|(w, at)| w.end(at))
                .map(|e| e.timestamp());
            let used = used(c, &h.token, key)?;
            ledger.load(
                &h.token,
                key.clone(),
                Counter {
                    used,
                    reserved: Amount::default(),
                    ends,
                },
            );
        }
    }
    if !held.is_empty() {
        tracing::warn!(reservations = held.len(), "reservations left by a gateway that stopped without settling them count until they expire");
    }
    for (id, h) in held {
        ledger.hold(id, h);
    }
    Ok(())
}

/// A window's settled usage, as the file holds it.
fn used(c: &Connection, token: &str, window: &str) -> rusqlite::Result<Amount> {
    Ok(c.query_row(
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
    .unwrap_or_default())
}

/// Waits until change `seq` is committed; `false` if the writer is failing
/// (it keeps trying; the counters in memory hold the limits meanwhile).
async fn durable(shared: Arc<Shared>, seq: u64) -> bool {
    loop {
        let notified = shared.done.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if shared.committed.load(Ordering::Acquire) >= seq {
            return true;
        }
        if shared.failing.load(Ordering::Acquire) {
            return false;
        }
        notified.await;
    }
}

/// The writer's thread: commits what is pending every [`GATHER`], and at
/// once when someone waits for it; tidies once a minute; on a failed commit,
/// the batch is kept (summed, so bounded) and tried again every second.
fn write_behind(shared: &Shared) {
    let mut tidied = Instant::now();
    loop {
        let (closed, others) = {
            let mut state = lock(&shared.state);
            loop {
                if state.closed || state.urgent {
                    break;
                }
                let pending = !state.ledger.pending.is_empty();
                state.writer_idle = !pending;
                let wait = if pending {
                    GATHER
                } else {
                    Duration::from_secs(1)
                };
                let (next, timeout) = shared
                    .wake
                    .wait_timeout(state, wait)
                    .unwrap_or_else(|p| p.into_inner());
                state = next;
                if timeout.timed_out() && (pending || tidied.elapsed() >= TIDY) {
                    break;
                }
            }
            if tidied.elapsed() >= TIDY {
                let now = shared.clock.now().timestamp();
                state.ledger.prune(now);
                state.ledger.evict(now, EVICT_GRACE_SECS);
            }
            (state.closed, state.urgent && state.ledger.in_flight() > 0)
        };
        if others && !closed {
            // Group commit: other requests are in flight and will settle
            // in a moment; one commit for them all instead of one each.
            std::thread::sleep(GROUP);
        }
        let mut connection = lock(&shared.writes);
        let failed = land(shared, &mut connection);
        if tidied.elapsed() >= TIDY {
            tidied = Instant::now();
            let now = shared.clock.now().timestamp();
            for prune in PRUNE {
                if let Err(error) = connection.execute(prune, [now]) {
                    tracing::warn!(store = %shared.name, %error, "pruning expired rows failed");
                }
            }
        }
        drop(connection);
        if closed {
            if failed {
                tracing::error!(store = %shared.name, "usage store closed with usage it could not write");
                return;
            }
            if lock(&shared.state).ledger.pending.is_empty() {
                return;
            }
        } else if failed {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// Takes everything pending and commits it on `connection` (the caller
/// holds it, so commits land in order), then tells those who wait.
/// Returns whether the commit failed (what it held is pending again).
fn land(shared: &Shared, connection: &mut Connection) -> bool {
    // The journal's next segment is opened ahead, without the lock that
    // every settlement takes.
    let wanted = lock(&shared.state)
        .journal
        .as_ref()
        .and_then(Journal::spare_wanted);
    let spare = wanted.and_then(|(n, path)| Some((n, Journal::open_file(&path).ok()?)));
    let (batch, seq, epoch, cut) = {
        let mut state = lock(&shared.state);
        if let (Some(journal), Some((n, file))) = (state.journal.as_mut(), spare) {
            journal.spare(n, file);
        }
        state.urgent = false;
        let (epoch, cut) = match state.journal.as_mut() {
            Some(journal) => (journal.epoch(), journal.cut()),
            None => (0, None),
        };
        (
            std::mem::take(&mut state.ledger.pending),
            state.seq,
            epoch,
            cut,
        )
    };
    let mut failed = false;
    if !batch.is_empty() {
        match commit(connection, &batch, Some((epoch, seq))) {
            Ok(()) => {}
            Err(error) if rejects(&error) => {
                // Some value spoils the batch: each part is written
                // alone, and only what the store refuses is dropped (and
                // said). The journal's mark moves only once all is written
                // (a crash before replays the batch: over-counted, never under).
                let left = commit_each(connection, batch, &shared.name);
                if left.is_empty() {
                    failed = commit(connection, &Pending::default(), Some((epoch, seq))).is_err();
                } else {
                    lock(&shared.state).ledger.pending.merge_back(left);
                    failed = true;
                }
            }
            Err(error) => {
                tracing::error!(store = %shared.name, %error, "usage could not be written; trying again");
                lock(&shared.state).ledger.pending.merge_back(batch);
                failed = true;
            }
        }
    }
    if failed {
        shared.failing.store(true, Ordering::Release);
    } else {
        shared.failing.store(false, Ordering::Release);
        shared.committed.fetch_max(seq, Ordering::AcqRel);
        if let Some(cut) = cut {
            let gone = lock(&shared.state)
                .journal
                .as_mut()
                .map(|journal| journal.committed(cut));
            journal::remove(gone.unwrap_or_default());
        }
    }
    shared.done.notify_waiters();
    failed
}

/// Writes a batch in one transaction: reservations made, then released,
/// then the windows' and the reports' sums.
/// With `mark` (the journal's epoch and sequence), the journal's lines up
/// to it are recorded as in the file, in the same transaction.
fn commit(c: &mut Connection, batch: &Pending, mark: Option<(u64, u64)>) -> rusqlite::Result<()> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    write(&tx, batch)?;
    if let Some((epoch, seq)) = mark {
        mark_journal(&tx, epoch, seq)?;
    }
    tx.commit()
}

fn mark_journal(tx: &rusqlite::Transaction<'_>, epoch: u64, seq: u64) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT OR REPLACE INTO journal (id, epoch, seq) VALUES (0, ?1, ?2)")?
        .execute(params![
            i64::try_from(epoch).unwrap_or(i64::MAX),
            i64::try_from(seq).unwrap_or(i64::MAX)
        ])?;
    Ok(())
}

/// Settles again what the journal holds past the file's mark (a process
/// that died had journaled and not committed it), commits that with the
/// next epoch, and starts that epoch's journal.
fn recover(c: &mut Connection, ledger: &mut Ledger, path: &str) -> Result<Journal, String> {
    let (epoch, seq): (i64, i64) = c
        .query_row("SELECT epoch, seq FROM journal WHERE id = 0", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()
        .map_err(|e| e.to_string())?
        .unwrap_or((0, 0));
    let (epoch, seq) = (epoch.max(0).unsigned_abs(), seq.max(0).unsigned_abs());
    let base = PathBuf::from(format!("{path}.journal"));
    let left = journal::unsettled(&base, epoch, seq)
        .map_err(|e| format!("reading the usage journal {}: {e}", base.display()))?;
    if !left.is_empty() {
        tracing::warn!(
            settlements = left.len(),
            "usage journaled by a gateway that stopped is written now"
        );
    }
    for s in &left {
        ledger.settle(s);
    }
    let next = epoch.saturating_add(1);
    commit(c, &ledger.pending, Some((next, 0))).map_err(|e| e.to_string())?;
    ledger.pending = Pending::default();
    Journal::start(base.clone(), next)
        .map_err(|e| format!("starting the usage journal {}: {e}", base.display()))
}

fn write(tx: &rusqlite::Transaction<'_>, batch: &Pending) -> rusqlite::Result<()> {
    let mut reserve = tx.prepare_cached(
        "INSERT OR REPLACE INTO reservations (id, token, window, requests, tokens, usd_micros, expires)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for (id, held) in &batch.reserve {
        for key in &held.windows {
            reserve.execute(params![
                id,
                &*held.token,
                key,
                held.amount.requests,
                held.amount.tokens,
                held.amount.usd_micros,
                held.expires
            ])?;
        }
    }
    let mut release = tx.prepare_cached("DELETE FROM reservations WHERE id = ?1")?;
    for id in &batch.release {
        release.execute([id])?;
    }
    let mut window = tx.prepare_cached(
        "INSERT INTO windows (token, window, requests, tokens, usd_micros, expires)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (token, window) DO UPDATE SET
           requests = MIN(requests + excluded.requests, 9007199254740992),
           tokens = MIN(tokens + excluded.tokens, 9007199254740992),
           usd_micros = MIN(usd_micros + excluded.usd_micros, 9007199254740992)",
    )?;
    for ((token, key), (sum, expires)) in &batch.windows {
        window.execute(params![
            &**token,
            key,
            sum.requests,
            sum.tokens,
            sum.usd_micros,
            expires
        ])?;
    }
    let mut usage = tx.prepare_cached(
        "INSERT INTO usage (token, day, hour, model, upstream, requests, input_tokens, cached_tokens,
                            output_tokens, usd_micros, estimated_requests)
         VALUES (?1, ?2, ?11, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (token, day, hour, model, upstream) DO UPDATE SET
           requests = MIN(requests + excluded.requests, 9007199254740992),
           input_tokens = MIN(input_tokens + excluded.input_tokens, 9007199254740992),
           cached_tokens = MIN(cached_tokens + excluded.cached_tokens, 9007199254740992),
           output_tokens = MIN(output_tokens + excluded.output_tokens, 9007199254740992),
           usd_micros = MIN(usd_micros + excluded.usd_micros, 9007199254740992),
           estimated_requests = MIN(estimated_requests + excluded.estimated_requests, 9007199254740992)",
    )?;
    for ((token, day, hour, model, upstream), row) in &batch.rows {
        usage.execute(params![
            &**token,
            day.format("%Y-%m-%d").to_string(),
            model,
            &**upstream,
            row.requests,
            row.input_tokens,
            row.cached_tokens,
            row.output_tokens,
            row.cost_usd,
            row.estimated_requests,
            hour
        ])?;
    }
    Ok(())
}

/// Writes each part of `batch` in a transaction of its own; drops (and
/// logs) the parts the store refuses; returns those that failed otherwise.
fn commit_each(c: &mut Connection, batch: Pending, name: &str) -> Pending {
    let mut left = Pending::default();
    let mut one = |part: Pending, left: &mut Pending| match commit(c, &part, None) {
        Ok(()) => {}
        Err(error) if rejects(&error) => {
            tracing::error!(store = %name, %error, "the usage store refused a value; it is not kept");
        }
        Err(_) => left.merge_back(part),
    };
    for (id, held) in batch.reserve {
        let mut part = Pending::default();
        part.reserve.insert(id, held);
        one(part, &mut left);
    }
    for id in batch.release {
        let mut part = Pending::default();
        part.release.push(id);
        one(part, &mut left);
    }
    for (key, sum) in batch.windows {
        let mut part = Pending::default();
        part.windows.insert(key, sum);
        one(part, &mut left);
    }
    for (key, row) in batch.rows {
        let mut part = Pending::default();
        part.rows.insert(key, row);
        one(part, &mut left);
    }
    left
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
    let used = used(tx, token, window)?;
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
        let Some(owner) = &self.owner else {
            return self.read_only();
        };
        let keys = window_keys(&ask.limits, ask.now);
        {
            let mut state = lock(&owner.shared.state);
            if state.ledger.missing(&ask.token, &keys).is_empty() {
                return Box::pin(std::future::ready(Ok(state.ledger.admit(ask, keys))));
            }
        }
        // A window not in memory yet (the first request of a minute, or
        // since start): its counter is read from the file first.
        let (this, owner) = (self.clone(), owner.clone());
        Box::pin(async move {
            for _ in 0..3 {
                this.load(&owner, &ask.token, &keys, ask.now).await?;
                let mut state = lock(&owner.shared.state);
                if state.ledger.missing(&ask.token, &keys).is_empty() {
                    return Ok(state.ledger.admit(ask, keys));
                }
            }
            Err(StoreError::new(
                &this.name,
                "a window's counter could not be kept in memory",
            ))
        })
    }

    fn settle(&self, s: Arc<Settlement>) -> BoxFuture<Result<(), StoreError>> {
        let Some(owner) = &self.owner else {
            return self.read_only();
        };
        // A limited token's settlement is durable before the response's
        // last bytes go out: a line of the journal, written now (the file
        // gets it within GATHER, as the rest); without a journal, the
        // request waits for the commit.
        let waits = s.reservation.is_some() || !s.windows.is_empty();
        let (seq, wake) = {
            let mut state = lock(&owner.shared.state);
            // The writer waits long only while it saw nothing pending (an
            // admission's reservation does not wake it): woken once, it
            // gathers and commits within GATHER.
            let first = std::mem::take(&mut state.writer_idle);
            state.ledger.settle(&s);
            state.seq += 1;
            let seq = state.seq;
            let journaled = waits
                && match state.journal.as_mut().map(|j| j.append(seq, &s)) {
                    Some(Ok(())) => {
                        state.journal_failing = false;
                        true
                    }
                    Some(Err(error)) => {
                        if !std::mem::replace(&mut state.journal_failing, true) {
                            tracing::error!(store = %owner.shared.name, %error, "the usage journal cannot be written; requests wait for the commit instead");
                        }
                        false
                    }
                    None => false,
                };
            if !waits || journaled {
                drop(state);
                if first {
                    // The writer gathers from now, and commits within GATHER.
                    owner.shared.wake.notify_one();
                }
                return Box::pin(std::future::ready(Ok(())));
            }
            // Only the first waiter wakes the writer; the others ride along.
            let wake = !state.urgent;
            state.urgent = true;
            (seq, wake)
        };
        // Group commit: the writer commits at once when nothing else is in
        // flight, else within GROUP, holding whatever settled meanwhile.
        // (Committing on the request's own thread was tried: a little less
        // latency at one connection, but every connection on that thread
        // stalls during the commit, and p99 at 64 connections went from
        // 9 ms to 96 ms.)
        if wake {
            owner.shared.wake.notify_one();
        }
        let shared = owner.shared.clone();
        Box::pin(async move {
            // While the file cannot be written, the writer says so (and
            // keeps trying): the counters in memory still hold the limits.
            durable(shared, seq).await;
            Ok(())
        })
    }

    fn hand_over(&self, s: &Arc<Settlement>) -> Option<Result<(), StoreError>> {
        let owner = self.owner.as_ref()?;
        if s.reservation.is_some() || !s.windows.is_empty() {
            return None;
        }
        let mut state = lock(&owner.shared.state);
        let first = std::mem::take(&mut state.writer_idle);
        state.ledger.settle(s);
        state.seq += 1;
        drop(state);
        if first {
            // The writer gathers from now, and commits within GATHER.
            owner.shared.wake.notify_one();
        }
        Some(Ok(()))
    }

    fn flush(&self) -> BoxFuture<Result<(), StoreError>> {
        let Some(owner) = &self.owner else {
            return Box::pin(std::future::ready(Ok(())));
        };
        let seq = {
            let mut state = lock(&owner.shared.state);
            state.urgent = true;
            // Numbered itself, so the commit it waits for holds everything
            // pending now (reservations and releases are not numbered).
            state.seq += 1;
            state.seq
        };
        owner.shared.wake.notify_one();
        let (shared, name) = (owner.shared.clone(), self.name.clone());
        Box::pin(async move {
            if durable(shared, seq).await {
                Ok(())
            } else {
                Err(StoreError::new(
                    &name,
                    "usage could not be written yet (the writer keeps trying)",
                ))
            }
        })
    }

    fn windows(
        &self,
        token: String,
        windows: Vec<Window>,
        now: DateTime<Utc>,
    ) -> BoxFuture<Result<Vec<WindowState>, StoreError>> {
        let Some(owner) = self.owner.clone() else {
            // A reader: what the file holds.
            return self.run(move |c| {
                let tx = c.transaction()?;
                windows
                    .iter()
                    .map(|w| state(&tx, &token, &w.key(now), now.timestamp()))
                    .collect()
            });
        };
        let this = self.clone();
        Box::pin(async move {
            let keys: Vec<(Window, String)> = windows.iter().map(|w| (*w, w.key(now))).collect();
            this.load(&owner, &token, &keys, now).await?;
            let mut state = lock(&owner.shared.state);
            state.ledger.prune(now.timestamp());
            Ok(keys
                .iter()
                .map(|(_, key)| state.ledger.state(&token, key).unwrap_or_default())
                .collect())
        })
    }

    fn registry(&self) -> Option<Arc<dyn super::registry::Registry>> {
        Some(Arc::new(self.clone()))
    }

    fn hourly(
        &self,
        period: Period,
        token: Option<String>,
    ) -> BoxFuture<Result<Hourly, StoreError>> {
        let flushed = self.owner.is_some().then(|| self.flush());
        let read = self.hourly_from_file(period, token);
        Box::pin(async move {
            if let Some(flushed) = flushed {
                flushed.await?;
            }
            read.await
        })
    }

    fn report(
        &self,
        period: Period,
        token: Option<String>,
    ) -> BoxFuture<Result<Vec<Row>, StoreError>> {
        // The gateway's own report includes what is still pending.
        let flushed = self.owner.is_some().then(|| self.flush());
        let read = self.report_from_file(period, token);
        Box::pin(async move {
            if let Some(flushed) = flushed {
                flushed.await?;
            }
            read.await
        })
    }
}

impl Sqlite {
    fn hourly_from_file(
        &self,
        period: Period,
        token: Option<String>,
    ) -> BoxFuture<Result<Hourly, StoreError>> {
        self.run(move |c| {
            let (from, to) = period.day_range();
            let (upstream, hour) = usage_columns(c)?;
            let mut statement = c.prepare(&format!(
                "SELECT day, {hour}, token, model, {upstream}, requests, input_tokens, cached_tokens, output_tokens, usd_micros, estimated_requests
                 FROM usage WHERE day >= ?1 AND day <= ?2 AND (?3 IS NULL OR token = ?3)
                 ORDER BY 1, 2, 3, 4, 5",
            ))?;
            let rows = statement.query_map(params![from, to, token], |r| {
                Ok((
                    r.get(0)?,
                    u8::try_from(r.get::<_, i64>(1)?.clamp(0, 23)).unwrap_or(0),
                    Row {
                        token: r.get(2)?,
                        model: r.get(3)?,
                        upstream: r.get(4)?,
                        requests: r.get(5)?,
                        input_tokens: r.get(6)?,
                        cached_tokens: r.get(7)?,
                        output_tokens: r.get(8)?,
                        cost_usd: r.get(9)?,
                        estimated_requests: r.get(10)?,
                    },
                ))
            })?;
            rows.collect()
        })
    }

    fn report_from_file(
        &self,
        period: Period,
        token: Option<String>,
    ) -> BoxFuture<Result<Vec<Row>, StoreError>> {
        let daily = self.hourly_from_file(period, token);
        Box::pin(async move {
            let rows = daily.await?;
            Ok(super::store::sum_days(
                rows.into_iter().map(|(_, _, row)| row),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spend::store::Reservation;
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
            upstream: "default".into(),
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

    fn temp_db(name: &str) -> (PathBuf, String) {
        let dir = std::env::temp_dir().join(format!("gw-sqlite-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("usage.db");
        let text = path.to_str().unwrap().to_owned();
        (dir, text)
    }

    #[tokio::test]
    async fn a_second_gateway_on_the_same_file_is_refused_and_a_reader_is_not() {
        let (dir, path) = temp_db("exclusive");
        let first = Sqlite::open(&path).unwrap();
        let second = Sqlite::open(&path).unwrap_err();
        assert!(second.contains("in use by another gateway"), "{second}");
        assert!(second.contains(&std::process::id().to_string()), "{second}");
        assert!(second.contains("dynamodb:TABLE"), "{second}");
        let reader = Sqlite::reader(&path).unwrap();
        reader.ping().await.unwrap();
        assert!(reader
            .admit(ask(&Limits::default(), "x", Utc::now(), Amount::default()))
            .await
            .is_err());
        drop(first);
        // Released with the store: the next gateway may open it.
        Sqlite::open(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    // The writer's connection is held across settle on purpose: no commit
    // can happen, and settle must return all the same.
    #[allow(clippy::await_holding_lock)]
    async fn a_limited_settlement_is_durable_when_it_returns_and_counted_once_after_a_crash() {
        let (dir, path) = temp_db("durable");
        let store = Sqlite::open(&path).unwrap();
        let limits = Limits::parse(&serde_json::json!({"tokens_per_day": 1000})).unwrap();
        let now = Utc::now();
        let one = Amount {
            requests: 1,
            tokens: 10,
            usd_micros: 0,
        };
        let owner = store.owner.clone().unwrap();
        let mut crashes = Vec::new();
        for (i, tokens) in [7, 11, 13].into_iter().enumerate() {
            let Admission::Granted(r) = store
                .admit(ask(&limits, &format!("r{i}"), now, one))
                .await
                .unwrap()
            else {
                panic!("refused")
            };
            // No commit can happen meanwhile, and settle returns all the
            // same: it does not wait for the file.
            let no_commit = lock(&owner.shared.writes);
            store
                .settle(settlement(Some(r), now, tokens).into())
                .await
                .unwrap();
            // The process dies now: what is on disk is what a crash leaves.
            let reader = Sqlite::reader(&path).unwrap();
            let in_file = reader
                .windows("alice".into(), limits.windows(), now)
                .await
                .unwrap();
            assert_eq!(
                in_file[0].used.tokens,
                [0, 7, 18][i],
                "the file does not hold it yet"
            );
            drop(reader);
            let crash = dir.join(format!("crash-{i}"));
            std::fs::create_dir_all(&crash).unwrap();
            for entry in std::fs::read_dir(&dir).unwrap() {
                let entry = entry.unwrap();
                if entry.file_type().unwrap().is_file() {
                    std::fs::copy(entry.path(), crash.join(entry.file_name())).unwrap();
                }
            }
            crashes.push(crash.join("usage.db"));
            drop(no_commit);
            store.flush().await.unwrap();
        }
        drop(store);
        // Each crash, opened again: everything settled, counted once (the
        // journal's lines past the file's mark, and only those, settled again).
        for (i, crash) in crashes.iter().enumerate() {
            let again = Sqlite::open(crash.to_str().unwrap()).unwrap();
            let states = again
                .windows("alice".into(), limits.windows(), now)
                .await
                .unwrap();
            assert_eq!(states[0].used.tokens, [7, 18, 31][i], "crash {i}");
            assert_eq!(states[0].reserved, Amount::default(), "crash {i}");
            let day = Period::Day(now.format("%Y-%m-%d").to_string());
            let rows = again.report(day, None).await.unwrap();
            assert_eq!(rows[0].requests, i as i64 + 1, "crash {i}");
            drop(again);
            // Opened once more: nothing is settled a second time.
            let twice = Sqlite::open(crash.to_str().unwrap()).unwrap();
            let states = twice
                .windows("alice".into(), limits.windows(), now)
                .await
                .unwrap();
            assert_eq!(states[0].used.tokens, [7, 18, 31][i], "crash {i}, reopened");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn requests_per_minute_is_exact_under_concurrency() {
        let (dir, path) = temp_db("concurrent");
        let store = Arc::new(Sqlite::open(&path).unwrap());
        let limits = Limits::parse(&serde_json::json!({"requests_per_minute": 10})).unwrap();
        let now: DateTime<Utc> = "2026-12-01T10:00:30Z".parse().unwrap();
        let one = Amount {
            requests: 1,
            tokens: 1,
            usd_micros: 0,
        };
        let asks = (0..64).map(|i| {
            let (store, limits) = (store.clone(), limits.clone());
            tokio::spawn(async move {
                store
                    .admit(ask(&limits, &format!("c{i}"), now, one))
                    .await
                    .unwrap()
            })
        });
        let mut granted = 0;
        for admission in asks {
            granted += usize::from(matches!(admission.await.unwrap(), Admission::Granted(_)));
        }
        assert_eq!(granted, 10);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_reservation_left_by_a_dead_gateway_counts_until_it_expires() {
        let (dir, path) = temp_db("orphan");
        let limits = Limits::parse(&serde_json::json!({"requests_per_minute": 1})).unwrap();
        // Start-up reads back what is live by the real clock.
        let now = Utc::now();
        let one = Amount {
            requests: 1,
            tokens: 1,
            usd_micros: 0,
        };
        {
            let store = Sqlite::open(&path).unwrap();
            let mut first = ask(&limits, "held", now, one);
            first.expires = now + chrono::Duration::seconds(20);
            let Admission::Granted(_) = store.admit(first).await.unwrap() else {
                panic!("refused")
            };
            store.flush().await.unwrap();
            // Never settled: the process "dies" holding it.
        }
        let store = Sqlite::open(&path).unwrap();
        let Admission::Refused(refusal) =
            store.admit(ask(&limits, "next", now, one)).await.unwrap()
        else {
            panic!("the dead gateway's reservation was not counted")
        };
        assert_eq!(refusal.limit.key, "requests_per_minute");
        let later = now + chrono::Duration::seconds(21);
        let Admission::Granted(_) = store
            .admit(ask(&limits, "after", later, one))
            .await
            .unwrap()
        else {
            panic!("the expired reservation still counts")
        };
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_file_from_before_upstreams_keeps_its_rows_and_gains_the_column() {
        let dir = std::env::temp_dir().join(format!("gw-sqlite-up-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("old.db");
        let _ = std::fs::remove_file(&path);
        let path = path.to_str().unwrap().to_owned();
        {
            // The usage table as it was: keyed by token, day and model.
            let old = Connection::open(&path).unwrap();
            old.execute_batch(
                "CREATE TABLE usage (
                    token TEXT NOT NULL, day TEXT NOT NULL, model TEXT NOT NULL,
                    requests INTEGER NOT NULL DEFAULT 0,
                    input_tokens INTEGER NOT NULL DEFAULT 0, cached_tokens INTEGER NOT NULL DEFAULT 0,
                    output_tokens INTEGER NOT NULL DEFAULT 0, usd_micros INTEGER NOT NULL DEFAULT 0,
                    estimated_requests INTEGER NOT NULL DEFAULT 0,
                    PRIMARY KEY (token, day, model));
                 INSERT INTO usage VALUES ('alice', '2026-12-01', 'gpt-4o-mini', 7, 70, 0, 35, 700, 1);",
            )
            .unwrap();
        }
        // A reader of the old file reads its rows as of no known upstream,
        // and changes nothing.
        let reader = Sqlite::reader(&path).unwrap();
        let day = Period::Day("2026-12-01".into());
        let rows = reader.report(day.clone(), None).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].upstream.as_str(), rows[0].requests), ("-", 7));
        drop(reader);
        let store = Sqlite::open(&path).unwrap();
        let at: DateTime<Utc> = "2026-12-01T10:00:00Z".parse().unwrap();
        let mut other = settlement(None, at, 10);
        other.upstream = "backup".into();
        store.settle(settlement(None, at, 10).into()).await.unwrap();
        store.settle(other.into()).await.unwrap();
        store.settle(settlement(None, at, 4).into()).await.unwrap();
        let rows = store.report(day, None).await.unwrap();
        let seen: Vec<(&str, i64, i64)> = rows
            .iter()
            .map(|r| (r.upstream.as_str(), r.requests, r.cost_usd))
            .collect();
        assert_eq!(seen, [("-", 7, 700), ("backup", 1, 10), ("default", 2, 14)]);
        // Rows from before hours are the day's first hour; new ones their own.
        let hourly = store
            .hourly(Period::Day("2026-12-01".into()), None)
            .await
            .unwrap();
        let hours: Vec<(u8, &str)> = hourly
            .iter()
            .map(|(_, hour, row)| (*hour, row.upstream.as_str()))
            .collect();
        assert_eq!(hours, [(0, "-"), (10, "backup"), (10, "default")]);
        drop(store);

        // A file of the version before hours (rows named their upstream).
        let path2 = dir.join("upstreams.db").to_str().unwrap().to_owned();
        {
            let old = Connection::open(&path2).unwrap();
            old.execute_batch(
                "CREATE TABLE usage (
                    token TEXT NOT NULL, day TEXT NOT NULL, model TEXT NOT NULL,
                    requests INTEGER NOT NULL DEFAULT 0,
                    input_tokens INTEGER NOT NULL DEFAULT 0, cached_tokens INTEGER NOT NULL DEFAULT 0,
                    output_tokens INTEGER NOT NULL DEFAULT 0, usd_micros INTEGER NOT NULL DEFAULT 0,
                    estimated_requests INTEGER NOT NULL DEFAULT 0,
                    upstream TEXT NOT NULL DEFAULT '-',
                    PRIMARY KEY (token, day, model, upstream));
                 INSERT INTO usage VALUES ('bob', '2026-12-01', 'gpt-4o', 3, 30, 0, 15, 300, 0, 'azure');",
            )
            .unwrap();
        }
        let store = Sqlite::open(&path2).unwrap();
        store
            .settle(settlement(None, "2026-12-01T23:30:00Z".parse().unwrap(), 2).into())
            .await
            .unwrap();
        let hourly = store
            .hourly(Period::Day("2026-12-01".into()), None)
            .await
            .unwrap();
        let seen: Vec<(u8, &str, &str, i64)> = hourly
            .iter()
            .map(|(_, h, r)| (*h, r.token.as_str(), r.upstream.as_str(), r.requests))
            .collect();
        assert_eq!(seen, [(0, "bob", "azure", 3), (23, "alice", "default", 1)]);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
