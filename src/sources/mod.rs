//! Where configuration values come from at run time, and how they stay fresh.
//!
//! - [`cached`] holds the current value of a source: fixed (a file, an
//!   environment variable) or refreshed stale-while-revalidate (SSM);
//! - [`ssm`] reads SSM Parameter Store, for the token list and the upstream key.

pub mod aws;
pub mod cached;
pub mod ssm;
