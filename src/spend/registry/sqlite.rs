//! [`Registry`] on the SQLite store: two tables in the same file, written
//! through the store's reading connection (changes are rare; SQLite orders
//! them with the writer's commits).

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};

use super::{Managed, Registry, Session, SessionKey, Updated};
use crate::record::BoxFuture;
use crate::spend::sqlite::Sqlite;
use crate::spend::store::StoreError;

/// The tables, created with the store's own.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS managed_tokens (
    name TEXT PRIMARY KEY, entry TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0, revoked INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    key TEXT PRIMARY KEY, admin TEXT NOT NULL, expires INTEGER NOT NULL);
";

fn time(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, 0).unwrap_or_default()
}

/// A version as SQLite holds it (an `i64`; a version never gets near the top).
fn version(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Registry for Sqlite {
    fn tokens(&self) -> BoxFuture<Result<Vec<Managed>, StoreError>> {
        self.run(|c| {
            let mut statement = c.prepare_cached(
                "SELECT name, entry, disabled, revoked, created_at, updated_at, version
                 FROM managed_tokens ORDER BY name",
            )?;
            let rows = statement.query_map([], |r| {
                Ok(Managed {
                    name: r.get(0)?,
                    entry: r.get(1)?,
                    disabled: r.get(2)?,
                    revoked: r.get(3)?,
                    created_at: time(r.get(4)?),
                    updated_at: time(r.get(5)?),
                    version: u64::try_from(r.get::<_, i64>(6)?).unwrap_or(0),
                })
            })?;
            rows.collect()
        })
    }

    fn create_token(&self, t: Managed) -> BoxFuture<Result<bool, StoreError>> {
        self.run(move |c| {
            let added = c.execute(
                "INSERT INTO managed_tokens
                     (name, entry, disabled, revoked, created_at, updated_at, version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (name) DO NOTHING",
                params![
                    t.name,
                    t.entry,
                    t.disabled,
                    t.revoked,
                    t.created_at.timestamp(),
                    t.updated_at.timestamp(),
                    version(t.version)
                ],
            )?;
            Ok(added == 1)
        })
    }

    fn update_token(&self, t: Managed) -> BoxFuture<Result<Updated, StoreError>> {
        self.run(move |c| {
            let changed = c.execute(
                "UPDATE managed_tokens SET entry = ?2, disabled = ?3, revoked = ?4,
                     updated_at = ?5, version = ?6
                 WHERE name = ?1 AND version = ?7 AND revoked = 0",
                params![
                    t.name,
                    t.entry,
                    t.disabled,
                    t.revoked,
                    t.updated_at.timestamp(),
                    version(t.version),
                    version(t.version.saturating_sub(1))
                ],
            )?;
            if changed == 1 {
                return Ok(Updated::Done);
            }
            let exists: Option<i64> = c
                .query_row(
                    "SELECT 1 FROM managed_tokens WHERE name = ?1",
                    [&t.name],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(if exists.is_some() {
                Updated::Stale
            } else {
                Updated::Missing
            })
        })
    }

    fn create_session(
        &self,
        key: SessionKey,
        session: Session,
        now: DateTime<Utc>,
    ) -> BoxFuture<Result<(), StoreError>> {
        self.run(move |c| {
            // Sessions that ended are dropped as new ones begin.
            c.execute(
                "DELETE FROM sessions WHERE expires <= ?1",
                [now.timestamp()],
            )?;
            c.execute(
                "INSERT OR REPLACE INTO sessions (key, admin, expires) VALUES (?1, ?2, ?3)",
                params![key, session.admin, session.expires.timestamp()],
            )?;
            Ok(())
        })
    }

    fn session(&self, key: SessionKey) -> BoxFuture<Result<Option<Session>, StoreError>> {
        self.run(move |c| {
            c.query_row(
                "SELECT admin, expires FROM sessions WHERE key = ?1",
                [key],
                |r| {
                    Ok(Session {
                        admin: r.get(0)?,
                        expires: time(r.get(1)?),
                    })
                },
            )
            .optional()
        })
    }

    fn end_session(&self, key: SessionKey) -> BoxFuture<Result<(), StoreError>> {
        self.run(move |c| {
            c.execute("DELETE FROM sessions WHERE key = ?1", [key])?;
            Ok(())
        })
    }
}
