//! Spend control: the store that holds usage and limits' counters, and
//! what enforces a token's [`crate::limits`] with it.
//!
//! - [`store`] is the [`store::Store`] trait: admission (check and reserve in
//!   one atomic step), settlement, and reports; [`sqlite`] (embedded, the
//!   local default) and [`dynamodb`] (shared, for Lambda) implement it;
//! - [`enforce`] is the policy that admits requests and the completion hook
//!   that settles them; [`account`] answers the token holder's own usage
//!   endpoints.

pub mod account;
pub mod dynamodb;
pub mod enforce;
pub mod sqlite;
pub mod store;

pub use crate::limits::{Amount, Limit, Limits, Measure, Window};
