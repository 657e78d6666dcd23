//! chatgpt-gateway: an authenticated, streaming reverse proxy for the OpenAI API.
//!
//! A request flows one way through the modules:
//!
//! 1. [`server`] (local HTTP/1.1) or [`lambda`] (Lambda events, streamed or
//!    buffered) hands an `http::Request` to [`gateway::Gateway::handle`],
//!    which runs the phases in order:
//! 2. [`cors`] answers browser preflights;
//! 3. [`auth`] finds the gateway token (`?token=`, `X-Token` or Bearer) and
//!    checks it against the [`tokens`] list;
//! 4. [`policy`] runs the configured rules on the request's [`path`]
//!    (normalised) and its body, parsed once into a typed view: a token's
//!    allowlists, what it may spend on ([`openai`] says how each endpoint
//!    is metered), and its [`limits`], which [`spend`] enforces (admission
//!    and reservation in a usage store, SQLite or DynamoDB);
//! 5. [`upstreams`] picks the upstreams that serve the request, in order
//!    (priority, weight, health), and the gateway tries them until one
//!    answers; [`proxy`] maps the path onto each and sends the request, with
//!    the headers [`headers`] cleaned and its key injected, on a connection
//!    from its [`pool`];
//! 6. [`body`] layers stream the upstream's body back, cutting silent
//!    streams, [`usage`] taps read the usage it carries, and one completion
//!    point ([`completion`]) hands the request's [`record`] to the completion hooks (the
//!    [`access_log`] line, and [`spend`]'s settlement of its usage).
//!
//! Around that path: [`config`] names every setting; [`startup`] builds the
//! gateway from them; [`sources`] keeps the token list and the key fresh
//! (files, SSM); [`error`] types every failure (OpenAI's JSON shape on the
//! request path); [`secret`] keeps keys and tokens out of every formatted
//! string; [`json`] has the lenient JSON pieces the view and the usage
//! reader share; [`clock`] is the time every rule goes by (a test moves its own);
//! [`logging`] sets up the log lines and where they go; [`stats`] turns
//! each request into metrics (CloudWatch EMF, Prometheus); [`commands`] are
//! the admin commands (`tokens`, `usage`).

pub mod access_log;
pub mod auth;
pub mod body;
pub mod client_ip;
pub mod clock;
pub mod commands;
pub mod completion;
pub mod config;
pub mod console;
pub mod cors;
pub mod error;
pub mod gateway;
pub mod headers;
pub mod json;
pub mod lambda;
pub mod limits;
pub mod logging;
pub mod openai;
pub mod path;
pub mod policy;
pub mod pool;
pub mod proxy;
pub mod record;
pub mod secret;
pub mod server;
pub mod sources;
pub mod spend;
pub mod startup;
pub mod stats;
pub mod tokens;
pub mod upstreams;
pub mod usage;

pub use error::{ConfigError, GatewayError};
pub use gateway::{Gateway, GatewayOptions};
