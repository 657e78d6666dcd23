//! The per-request record: what one request was and how it ended.
//!
//! The gateway starts a [`Record`] when a request arrives and carries it
//! through every phase (identity after authentication, timings after the
//! upstream answers). The response body's [`crate::completion::Completion`] layer
//! then owns it, fills in the outcome and byte counts, and hands it exactly
//! once to the completion hooks ([`Finish`]): the access log now, the usage
//! store and metrics later.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use http::Method;

use crate::body::ByteCount;
use crate::usage::Meter;
use tokio::time::Instant;

/// The longest path kept in a record; longer ones are cut.
const MAX_RECORDED_PATH: usize = 256;

/// The id of the invocation a request arrived in (Lambda), put in the
/// request's extensions by the Lambda glue.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// How a request's response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The whole body reached the client.
    Complete,
    /// The upstream's body broke off, or went silent too long.
    UpstreamStreamError,
    /// The gateway ended the body itself (a buffered response over its limit).
    GatewayError,
    /// The client went away before the body ended.
    ClientClosed,
}

impl Outcome {
    /// The name written to logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::UpstreamStreamError => "upstream_stream_error",
            Self::GatewayError => "gateway_error",
            Self::ClientClosed => "client_closed",
        }
    }
}

/// One request, from arrival to the end of its response.
#[derive(Debug)]
pub struct Record {
    /// The method.
    pub method: Method,
    /// The path without its query, cut to a bounded length.
    pub path: String,
    /// The Lambda request id, if any.
    pub request_id: Option<String>,
    /// When the request arrived.
    pub started: Instant,
    /// The same instant on the UTC clock (the windows its usage counts in).
    pub arrived: DateTime<Utc>,
    /// The token entry's name; `None` before authentication or when anonymous.
    pub token: Option<Arc<str>>,
    /// The status the client got (0 until known).
    pub status: u16,
    /// The gateway's error code, when the gateway answered itself.
    pub code: Option<&'static str>,
    /// Milliseconds from sending upstream to the upstream's response head.
    pub upstream_ms: Option<f64>,
    /// Request body bytes read.
    pub bytes_in: ByteCount,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// How the response ended (set by the completion layer).
    pub outcome: Outcome,
    /// The usage read from the response (or estimated), as it streams.
    pub meter: Meter,
    /// What the policies left for the completion hooks (a spend reservation).
    pub notes: http::Extensions,
}

impl Record {
    /// Starts the record of a request.
    pub fn start(method: &Method, path: &str, started: Instant) -> Self {
        let mut cut = MAX_RECORDED_PATH.min(path.len());
        while !path.is_char_boundary(cut) {
            cut -= 1;
        }
        Self {
            method: method.clone(),
            path: path[..cut].to_owned(),
            request_id: None,
            started,
            arrived: Utc::now(),
            token: None,
            status: 0,
            code: None,
            upstream_ms: None,
            bytes_in: ByteCount::default(),
            bytes_out: 0,
            outcome: Outcome::ClientClosed,
            meter: Meter::default(),
            notes: http::Extensions::new(),
        }
    }

    /// Milliseconds since the request arrived.
    pub fn elapsed_ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1e3
    }
}

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Work done once per request when its response ends, whatever the ending.
///
/// A hook gets the finished record by reference; the future it returns runs
/// to completion before the response body reports its end, so on Lambda it
/// finishes inside the invocation.
pub trait Finish: Send + Sync {
    /// A request arrived (before anything else is done with it).
    fn start(&self) {}

    /// Does the work for `record`, or starts it and returns what is left to
    /// wait for (`None`: done already, as most hooks are; nothing is boxed).
    fn finish(&self, record: &Record) -> Option<BoxFuture<()>>;

    /// Work at shutdown, after the last request (write what still waits).
    fn close(&self) -> BoxFuture<()> {
        Box::pin(std::future::ready(()))
    }
}

/// The hooks, in order.
pub type Hooks = Arc<[Arc<dyn Finish>]>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_paths_are_cut_on_a_character_boundary() {
        let path = format!("/{}", "é".repeat(300));
        let record = Record::start(&Method::GET, &path, Instant::now());
        assert!(record.path.len() <= MAX_RECORDED_PATH);
        assert!(record.path.len() >= MAX_RECORDED_PATH - 1);
        assert!(path.starts_with(&record.path));
    }
}
