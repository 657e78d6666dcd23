//! chatgpt-gateway: an authenticated, streaming reverse proxy for the OpenAI API.
//!
//! A request flows one way through the modules:
//!
//! 1. [`server`] (local HTTP/1.1) or [`lambda`] (Lambda events, streamed or
//!    buffered) hands an `http::Request` to [`handler::Gateway::handle`];
//! 2. [`auth`] finds the gateway token (`?token=`, `X-Token` or Bearer),
//!    checks it against the [`tokens`] list and strips it;
//! 3. [`proxy`] maps the path onto the upstream, filters headers, injects the
//!    upstream key, sends the request and returns the streaming response;
//! 4. [`body`] streams the upstream's body back, cutting silent streams, and
//!    writes the [`telemetry`] access line when it ends.
//!
//! [`cors`] answers browser preflights and adds CORS headers when enabled.
//! [`error`] turns every failure into OpenAI's JSON error shape; [`config`]
//! names every setting; [`startup`] builds the gateway from them; [`secret`]
//! keeps keys and tokens out of every formatted string; [`cli`] is the
//! `tokens` admin command.

pub mod auth;
pub mod body;
pub mod cli;
pub mod config;
pub mod cors;
pub mod error;
pub mod handler;
pub mod lambda;
pub mod proxy;
pub mod secret;
pub mod server;
pub mod startup;
pub mod telemetry;
pub mod tokens;

pub use error::GatewayError;
pub use handler::Gateway;
