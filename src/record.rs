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
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use http::Method;

use crate::body::ByteCount;
use crate::usage::prices::{Prices, Units};
use crate::usage::{Meter, Usage};
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
    /// The client's address ([`crate::client_ip`]), if the front end knew it.
    pub client_ip: Option<std::net::IpAddr>,
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
    /// Whether the request was sent upstream (and so may be billed there,
    /// whether or not an answer came back).
    pub sent: bool,
    /// Milliseconds from sending upstream to the upstream's response head.
    pub upstream_ms: Option<f64>,
    /// The upstream whose answer the client got.
    pub upstream: Option<Arc<str>>,
    /// Every attempt, in order, when there was more than one upstream to
    /// try (empty for a gateway of one upstream: `upstream` says it all).
    pub attempts: Vec<Attempt>,
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
    /// What the request is charged, worked out once (see [`Record::charge`]).
    charge: OnceLock<Charge>,
}

/// One try of one upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// Which.
    pub upstream: Arc<str>,
    /// Its answer's status, or the gateway's code for why there was none
    /// (`upstream_unreachable`, `upstream_timeout`, `upstream_error`).
    pub result: Result<u16, &'static str>,
    /// Milliseconds from sending to the answer's head (or the failure).
    pub ms: f64,
    /// What the upstream was after it ([`crate::upstreams::Status`]'s name:
    /// `ok`, `open`, `resting`, `dead`).
    pub state: &'static str,
}

/// What a request asked for (read from its body by the policy that needed
/// it), left in its record's notes: the model prices a response that names
/// none or one without a price, and the units price images and speech.
#[derive(Debug, Clone, Default)]
pub struct Asked {
    /// The model asked for.
    pub model: String,
    /// What it asked for by the unit.
    pub units: Units,
}

/// What a request with limits was reserved, left in its notes: what it is
/// charged when its answer cannot be read (the client left before it, the
/// upstream broke off, the usage was unreadable). The upstream may have
/// finished and billed it, so the gateway never assumes less.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reserved {
    /// Input tokens (estimated from the body).
    pub input: u64,
    /// Output tokens: the request's maximum, times its answers.
    pub output: u64,
}

/// What a finished request is charged: one reading, shared by the access
/// line, the metrics and the usage settlement, so that all three tell the
/// same story.
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    /// The usage, reported or estimated; `None` for a response that carries
    /// none (images, files).
    pub usage: Option<Usage>,
    /// The model it is priced as: the upstream's answer, else the one asked for.
    pub model: Option<String>,
    /// What it cost in USD: its usage at its model's price, else the model's
    /// price per request; `None` when nothing reached the upstream or the
    /// model has no price.
    pub usd: Option<f64>,
}

impl Charge {
    fn of(record: &Record, prices: &Prices) -> Self {
        let asked = record.notes.get::<Asked>();
        let mut usage = record.meter.usage();
        if record.sent && record.upstream_ms.is_none() {
            // Sent, and no answer came back to read (the client left, the
            // upstream timed out or broke): charged what was reserved.
            if let Some(reserved) = record.notes.get::<Reserved>() {
                usage = Some(Usage {
                    model: None,
                    input: reserved.input,
                    cached_input: 0,
                    output: reserved.output,
                    estimated: true,
                });
            }
        }
        // Priced as the upstream's answer names it, else as asked: a model
        // name the table does not know never makes a request free.
        let answered = usage.as_ref().and_then(|u| u.model.clone());
        let named = answered
            .iter()
            .chain(asked.map(|a| &a.model))
            .find(|m| prices.lookup(m).is_some())
            .cloned();
        let model = named
            .clone()
            .or(answered)
            .or_else(|| asked.map(|a| a.model.clone()));
        let units = asked.map_or(&Units::None, |a| &a.units);
        let usd = match &named {
            Some(model) if record.sent => prices.charge(model, usage.as_ref(), units),
            _ => None,
        };
        Self { usage, model, usd }
    }
}

impl Record {
    /// Starts the record of a request that arrived now, by the system clock.
    pub fn start(method: &Method, path: &str, started: Instant) -> Self {
        Self::start_at(method, path, started, Utc::now())
    }

    /// Starts the record of a request that arrived at `arrived` (by the
    /// gateway's [`crate::clock::Clock`]).
    pub fn start_at(method: &Method, path: &str, started: Instant, arrived: DateTime<Utc>) -> Self {
        let mut cut = MAX_RECORDED_PATH.min(path.len());
        while !path.is_char_boundary(cut) {
            cut -= 1;
        }
        Self {
            method: method.clone(),
            path: path[..cut].to_owned(),
            request_id: None,
            started,
            arrived,
            token: None,
            status: 0,
            code: None,
            sent: false,
            upstream_ms: None,
            client_ip: None,
            upstream: None,
            attempts: Vec::new(),
            bytes_in: ByteCount::default(),
            bytes_out: 0,
            outcome: Outcome::ClientClosed,
            meter: Meter::default(),
            notes: http::Extensions::new(),
            charge: OnceLock::new(),
        }
    }

    /// What the request is charged, priced with `prices` the first time it
    /// is asked (the gateway has one price table; every hook that asks is
    /// given it) and the same reading after: the hooks run once the
    /// response has ended, when nothing more is metered.
    pub fn charge(&self, prices: &Prices) -> &Charge {
        self.charge.get_or_init(|| Charge::of(self, prices))
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

    fn prices() -> Prices {
        let dir = std::env::temp_dir().join(format!("gw-charge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("prices.json");
        std::fs::write(
            &file,
            r#"{"img-model": {"input": 0, "output": 0, "per_request": 0.04}}"#,
        )
        .unwrap();
        Prices::load(Some(&file)).unwrap()
    }

    fn asked(model: &str) -> Asked {
        Asked {
            model: model.into(),
            units: Units::None,
        }
    }

    #[test]
    fn a_request_is_charged_once_by_its_usage_else_by_the_model_it_asked_for() {
        let prices = prices();
        // Usage reported: its model, at that model's price.
        let mut record = Record::start(&Method::POST, "/v1/chat/completions", Instant::now());
        record.sent = true;
        record.upstream_ms = Some(1.0);
        record.notes.insert(asked("gpt-4o"));
        let usage = Usage::reported(Some("gpt-4o-mini-2024-07-18"), 1_000_000, 0, 0);
        record.meter.report(usage.clone());
        let charge = record.charge(&prices).clone();
        assert_eq!(charge.model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
        assert_eq!(charge.usd, prices.cost(&usage));
        assert!(charge.usd.is_some_and(|usd| usd > 0.0));
        // Read once: what the meter hears after the first reading changes nothing.
        record
            .meter
            .report(Usage::reported(Some("gpt-4o"), 5_000_000, 0, 0));
        assert_eq!(record.charge(&prices), &charge);

        // No usage (an image): the asked model's price per request.
        let mut record = Record::start(&Method::POST, "/v1/images/generations", Instant::now());
        record.sent = true;
        record.upstream_ms = Some(1.0);
        record.notes.insert(asked("img-model"));
        let charge = record.charge(&prices);
        assert_eq!(charge.usage, None);
        assert_eq!(charge.model.as_deref(), Some("img-model"));
        assert_eq!(charge.usd, Some(0.04));

        // Refused before the upstream: nothing is charged.
        let mut record = Record::start(&Method::POST, "/v1/images/generations", Instant::now());
        record.notes.insert(asked("img-model"));
        assert_eq!(record.charge(&prices).usd, None);

        // Sent, and the client left before the answer: its reservation, estimated.
        let mut record = Record::start(&Method::POST, "/v1/chat/completions", Instant::now());
        record.sent = true;
        record.notes.insert(asked("gpt-4o"));
        record.notes.insert(Reserved {
            input: 1_000_000,
            output: 1_000_000,
        });
        let charge = record.charge(&prices);
        assert!(charge
            .usage
            .as_ref()
            .is_some_and(|u| u.estimated && u.output == 1_000_000));
        assert_eq!(
            charge.usd,
            Some(12.5),
            "gpt-4o: $2.50 in and $10 out per 1M"
        );

        // An answer naming a model without a price is priced as asked, never free.
        let mut record = Record::start(&Method::POST, "/v1/chat/completions", Instant::now());
        record.sent = true;
        record.upstream_ms = Some(1.0);
        record.notes.insert(asked("gpt-4o"));
        record
            .meter
            .report(Usage::reported(Some("unpriced-model"), 1_000_000, 0, 0));
        assert_eq!(record.charge(&prices).usd, Some(2.5));

        // Nothing names a model: no price.
        let mut record = Record::start(&Method::GET, "/v1/models", Instant::now());
        record.sent = true;
        record.upstream_ms = Some(1.0);
        assert_eq!(
            record.charge(&prices),
            &Charge {
                usage: None,
                model: None,
                usd: None
            }
        );
    }
}
