//! What the console keeps beside usage, in the same store: the **managed
//! tokens** an operator creates at run time, and the **sessions** of
//! operators logged in to the console.
//!
//! A managed token is kept as the entry a token file would hold (its token
//! as `sha256`, never the token itself), so it is read back by the same
//! parser ([`crate::tokens::format`]) with the same checks, plus its state:
//! disabled, revoked, when it was made and changed, and a version that a
//! change must name (two operators changing one token at once: the second
//! is told, rather than undoing the first). A revoked token stays, so that
//! its name is never given again and reports still name it.
//!
//! A session is kept under the SHA-256 of its id (the cookie's value): the
//! store never holds what would let someone in.
//!
//! [`sqlite`] and [`dynamodb`] implement [`Registry`] on their stores.

pub mod dynamodb;
pub mod sqlite;

use chrono::{DateTime, Utc};

use super::store::StoreError;
use crate::record::BoxFuture;

/// One managed token, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Managed {
    /// Its name (unique among every token, config or managed, ever).
    pub name: String,
    /// The entry, as JSON in the token file's native form, with `sha256`.
    pub entry: String,
    /// Suspended: refused until enabled again.
    pub disabled: bool,
    /// Revoked for good (its name stays taken).
    pub revoked: bool,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// Counts its changes, from 1: an update names the version it changes.
    pub version: u64,
}

/// A logged-in operator's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The admin token's name it was opened with.
    pub admin: String,
    /// When it ends.
    pub expires: DateTime<Utc>,
}

/// The SHA-256 of a session id, in hex: what a session is stored under.
pub type SessionKey = String;

/// What an update found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Updated {
    /// Written.
    Done,
    /// No managed token has that name.
    Missing,
    /// It changed since the version named (or was revoked).
    Stale,
}

/// Managed tokens and console sessions, in a usage store.
pub trait Registry: Send + Sync {
    /// Every managed token, revoked ones included, by name.
    fn tokens(&self) -> BoxFuture<Result<Vec<Managed>, StoreError>>;

    /// Stores a new token; `Ok(false)` when the name is taken.
    fn create_token(&self, token: Managed) -> BoxFuture<Result<bool, StoreError>>;

    /// Replaces a token (entry and state) whose stored version is
    /// `token.version - 1` and which is not revoked.
    fn update_token(&self, token: Managed) -> BoxFuture<Result<Updated, StoreError>>;

    /// Stores a session (dropping those that ended before `now`).
    fn create_session(
        &self,
        key: SessionKey,
        session: Session,
        now: DateTime<Utc>,
    ) -> BoxFuture<Result<(), StoreError>>;

    /// The session stored under `key`, if any (expired or not).
    fn session(&self, key: SessionKey) -> BoxFuture<Result<Option<Session>, StoreError>>;

    /// Ends a session (a missing one is no error).
    fn end_session(&self, key: SessionKey) -> BoxFuture<Result<(), StoreError>>;
}
