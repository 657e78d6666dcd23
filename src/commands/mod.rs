//! The admin commands, beside the gateway itself.
//!
//! - [`tokens`]: make, check and publish token lists.

pub mod tokens;

use std::path::PathBuf;

use crate::sources::cached::LoadError;
use crate::sources::ssm::SsmError;
use crate::tokens::format::ParseError;

/// Why an admin command failed: one line on stderr, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// A file cannot be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A token list is malformed.
    #[error("{origin}: {error}")]
    Tokens {
        /// Where it came from.
        origin: String,
        /// What is wrong, naming the entry.
        error: ParseError,
    },
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
