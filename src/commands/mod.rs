//! The admin commands, beside the gateway itself.
//!
//! - [`tokens`]: make, check and publish token lists; with [`admin`], list,
//!   create, change and revoke a running gateway's managed tokens;
//! - [`usage`]: set up the usage store, and report usage and limits.

pub mod admin;
pub mod tokens;
pub mod usage;

use crate::error::ConfigError;
use crate::sources::cached::LoadError;
use crate::sources::ssm::SsmError;

/// Why an admin command failed: one line on stderr, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// A token list cannot be read, or is malformed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A flag's value is unusable.
    #[error("{flag}: {problem}")]
    Flag {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// Refused on purpose (e.g. publishing an empty list).
    #[error("{0}")]
    Refused(String),
    /// Reading SSM failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Writing SSM failed.
    #[error(transparent)]
    Ssm(#[from] SsmError),
}
