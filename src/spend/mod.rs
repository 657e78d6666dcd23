//! Spend control: the store that holds usage and limits' counters, and
//! what enforces a token's [`crate::limits`] with it.
//!
//! - [`store`] is the [`store::Store`] trait: admission (check and reserve in
//!   one atomic step), settlement, and reports; [`sqlite`] (embedded, the
//!   local default) and [`dynamodb`] (shared, for Lambda) implement it, and
//!   [`open`] here, where the stores are assembled, is the one place that
//!   names both (each store depends on the trait alone);
//! - [`enforce`] is the policy that admits requests and the completion hook
//!   that settles them; [`account`] answers the token holder's own usage
//!   endpoints.

pub mod account;
pub mod dynamodb;
pub mod enforce;
pub mod journal;
pub mod ledger;
pub mod registry;
pub mod sqlite;
pub mod store;

pub use crate::limits::{Amount, Limit, Limits, Measure, Window};

use std::sync::Arc;

use crate::clock::Clock;
use store::Store;

/// Opens the store `spec` names for the gateway: `sqlite:PATH`,
/// `dynamodb:TABLE`; `off` is `None`. A SQLite file is held exclusively,
/// its reservations expiring by `clock`.
pub async fn open(spec: &str, clock: &Clock) -> Result<Option<Arc<dyn Store>>, String> {
    open_as(spec, Some(clock)).await
}

/// Opens the store `spec` names to read it (`usage report`, `usage init`),
/// beside a gateway that may be running on it.
pub async fn open_reader(spec: &str) -> Result<Option<Arc<dyn Store>>, String> {
    open_as(spec, None).await
}

/// Opens `spec` for the gateway (with its clock), or as a reader (`None`).
async fn open_as(spec: &str, owner: Option<&Clock>) -> Result<Option<Arc<dyn Store>>, String> {
    let spec = spec.trim();
    if spec.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    match spec.split_once(':') {
        Some(("sqlite", path)) if !path.is_empty() => {
            let store = match owner {
                Some(clock) => sqlite::Sqlite::open_at(path, clock.clone())?,
                None => sqlite::Sqlite::reader(path)?,
            };
            Ok(Some(Arc::new(store)))
        }
        Some(("dynamodb", table)) if !table.is_empty() => {
            let store = dynamodb::Dynamo::from_env(table).await;
            Ok(Some(Arc::new(store)))
        }
        _ => Err(format!(
            "`{}` is not a store: use sqlite:PATH, dynamodb:TABLE or off",
            spec.chars().take(80).collect::<String>()
        )),
    }
}
