//! Metering: the exact usage that every response carries, read as it passes.
//!
//! - [`read`] finds `usage` in an OpenAI JSON body or SSE event, whatever the
//!   endpoint (chat completions and completions, embeddings, the Responses
//!   API, transcriptions);
//! - [`event`] reads what a stream event without usage streamed (its model
//!   and content length), in one pass, serde as its fallback;
//! - [`sse`] scans an event stream incrementally, in bounded memory, and
//!   [`scan`] a JSON answer too big to copy, for its top-level `usage`;
//! - [`decode`] inflates a copy of a compressed body (gzip, deflate, br, zstd)
//!   while the client gets the compressed bytes unchanged;
//! - [`prices`] says what usage costs (a bundled table, and `PRICES_FILE`);
//! - [`tap`] is the response-body step that does all this and leaves the
//!   result in the request's [`Meter`];
//! - [`stream_usage`] asks the upstream for a streamed chat's usage when the
//!   client did not, and hides the extra chunk from that client.
//!
//! When a response ends without usage (the client left mid-stream, or usage
//! was malformed), the meter holds an estimate, flagged as such: never zero
//! for a request that reached the upstream.

pub mod decode;
pub mod event;
pub mod prices;
pub mod read;
pub mod scan;
pub mod sse;
pub mod stream_usage;
pub mod tap;

use std::sync::{Arc, Mutex};

/// The search run on every event of a stream, built once
/// (`memmem::find` builds its searcher again on every call).
pub(crate) mod find {
    use memchr::memmem::Finder;
    use std::sync::LazyLock;

    static USAGE_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));

    /// Where `"usage"` (the key only an event that can carry usage holds) is.
    pub fn usage_key(bytes: &[u8]) -> Option<usize> {
        USAGE_KEY.find(bytes)
    }
}

pub use crate::headers::{is_event_stream, is_json};

/// The largest count (of tokens, requests or micro-dollars) the gateway
/// keeps: 2^53, exact in a double, so every store, report and JSON reader
/// holds it; sums of counters saturate there.
pub const MAX_COUNT: u64 = 1 << 53;

/// Token counts, as the upstream reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// The model as the upstream answered it.
    pub model: Option<String>,
    /// Input tokens, cached ones included.
    pub input: u64,
    /// Of the input, tokens served from the prompt cache.
    pub cached_input: u64,
    /// Output tokens, reasoning included (as OpenAI bills them).
    pub output: u64,
    /// Counted by the gateway, not reported by the upstream.
    pub estimated: bool,
}

impl Usage {
    /// Counts as the upstream reported them. A count over [`MAX_COUNT`] is
    /// capped and the usage flagged as estimated, so that no upstream can
    /// make a counter overflow; a model name that is too long or not
    /// printable is not kept (the request is priced as it asked).
    pub fn reported(model: Option<&str>, input: u64, cached_input: u64, output: u64) -> Self {
        let capped = [input, cached_input, output].iter().any(|n| *n > MAX_COUNT);
        Self {
            model: model
                .filter(|m| crate::openai::check_model(m).is_ok())
                .map(str::to_owned),
            input: input.min(MAX_COUNT),
            cached_input: cached_input.min(input).min(MAX_COUNT),
            output: output.min(MAX_COUNT),
            estimated: capped,
        }
    }

    /// Input plus output: what a token limit counts.
    pub fn total(&self) -> u64 {
        self.input.saturating_add(self.output)
    }
}

/// What is known of one request's usage while its response streams, shared
/// by the response's usage tap and the request's record.
#[derive(Debug, Clone, Default)]
pub struct Meter(Arc<Mutex<Metered>>);

#[derive(Debug, Default)]
struct Metered {
    reported: Option<Usage>,
    model: Option<String>,
    /// Bytes of the request body, for an estimate of its input.
    request_bytes: u64,
    /// Characters of generated content seen, for an estimate of the output.
    output_chars: u64,
    /// A usage that could not be read (truncated, malformed, undecodable).
    unreadable: bool,
    /// Whether a response that carries usage was expected.
    expected: bool,
    /// For an answer that comes whole (JSON), the output it is charged if
    /// its usage cannot be read: the request's reserved maximum. (A
    /// stream's is what streamed.)
    whole_output: u64,
    /// The answer was read to its end and carries no usage (a whisper
    /// transcription, billed by the minute): only its input is estimated.
    read_without_usage: bool,
}

impl Meter {
    /// The upstream's usage, as read from the response.
    pub fn report(&self, usage: Usage) {
        let mut m = self.0.lock().expect("meter lock");
        if m.model.is_none() {
            m.model.clone_from(&usage.model);
        }
        m.reported = Some(usage);
    }

    /// What a stream event showed: its model, and `chars` of content.
    /// One lock for both, as it runs on every event.
    pub fn saw(&self, model: Option<&str>, chars: usize) {
        let mut m = self.0.lock().expect("meter lock");
        if let Some(model) = model {
            if m.model.is_none() && crate::openai::check_model(model).is_ok() {
                m.model = Some(model.to_owned());
            }
        }
        m.output_chars = m.output_chars.saturating_add(chars as u64);
    }

    /// The whole answer was read, and it carries no usage.
    pub fn read_without_usage(&self) {
        self.0.lock().expect("meter lock").read_without_usage = true;
    }

    /// The usage was there but could not be read.
    pub fn unreadable(&self) {
        self.0.lock().expect("meter lock").unreadable = true;
    }

    /// The response is of a kind that carries usage; the request body had
    /// `bytes`; an answer that comes whole is charged `whole_output` output
    /// tokens if its usage cannot be read (0 for a stream, which is charged
    /// what streamed).
    pub fn expect(&self, request_bytes: u64, whole_output: u64) {
        let mut m = self.0.lock().expect("meter lock");
        m.expected = true;
        m.request_bytes = request_bytes;
        m.whole_output = whole_output;
    }

    /// The final usage: the reported one, else (when usage was expected or
    /// unreadable) an estimate from the request's size and the streamed
    /// output, about four characters a token; `None` for a response that
    /// carries no usage (images, files).
    pub fn usage(&self) -> Option<Usage> {
        let m = self.0.lock().expect("meter lock");
        if let Some(usage) = &m.reported {
            return Some(usage.clone());
        }
        (m.expected || m.unreadable).then(|| Usage {
            model: m.model.clone(),
            input: m.request_bytes.div_ceil(4),
            cached_input: 0,
            output: if m.read_without_usage && !m.unreadable {
                m.output_chars.div_ceil(4)
            } else {
                m.output_chars.div_ceil(4).max(m.whole_output)
            },
            estimated: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_usage_wins_and_an_estimate_is_flagged() {
        let meter = Meter::default();
        assert_eq!(meter.usage(), None, "nothing expected, nothing metered");
        meter.expect(400, 0);
        meter.saw(Some("gpt-4o-mini"), 41);
        let estimate = meter.usage().unwrap();
        assert!(estimate.estimated);
        assert_eq!((estimate.input, estimate.output), (100, 11));
        assert_eq!(estimate.model.as_deref(), Some("gpt-4o-mini"));
        meter.report(Usage {
            model: Some("gpt-4o-mini-2024-07-18".into()),
            input: 7,
            cached_input: 2,
            output: 9,
            estimated: false,
        });
        let usage = meter.usage().unwrap();
        assert!(!usage.estimated);
        assert_eq!(
            (usage.input, usage.cached_input, usage.output, usage.total()),
            (7, 2, 9, 16)
        );
    }

    #[test]
    fn an_answer_that_comes_whole_is_charged_its_reservation_when_unreadable() {
        let meter = Meter::default();
        meter.expect(40, 5000);
        meter.unreadable();
        let usage = meter.usage().unwrap();
        assert_eq!(
            (usage.input, usage.output, usage.estimated),
            (10, 5000, true)
        );
    }

    #[test]
    fn absurd_counts_are_capped_and_flagged() {
        let usage = Usage::reported(Some("m"), u64::MAX, u64::MAX, 1 << 63);
        assert_eq!((usage.input, usage.output), (MAX_COUNT, MAX_COUNT));
        assert!(usage.cached_input <= usage.input);
        assert!(usage.estimated);
        assert_eq!(usage.total(), 2 * MAX_COUNT);
        let named = Usage::reported(Some(&"m".repeat(5000)), 1, 0, 1);
        assert_eq!(named.model, None, "a 5 kB model name is not kept");
    }
}
