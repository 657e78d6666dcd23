//! The usage tap: a response-body step that reads usage as the body passes,
//! without holding it back: SSE events as they complete, a JSON body (a
//! bounded, decoded copy) when it ends; a JSON body over that bound is
//! scanned as it streams for its top-level `usage` ([`super::scan`]).

use bytes::Bytes;
use serde_json::Value;

use super::read::{self, Found};
use super::scan::Scan;
use super::sse::Scanner;
use super::{decode, event, Meter};
use crate::body::{BoxError, Step};

/// The most of a JSON body copied to read its usage.
const MAX_JSON: usize = 8 << 20;

/// Reads a response's usage into its request's meter.
pub struct UsageTap {
    meter: Meter,
    kind: Kind,
}

enum Kind {
    Stream(Scanner),
    Json {
        copy: Vec<u8>,
        encoding: Option<String>,
        /// Over the copy's bound: scanned as it streams instead.
        scan: Option<Scan>,
    },
}

impl UsageTap {
    /// A tap for an event stream.
    pub fn stream(meter: Meter) -> Self {
        Self {
            meter,
            kind: Kind::Stream(Scanner::default()),
        }
    }

    /// A tap for a JSON body sent with `encoding`.
    pub fn json(meter: Meter, encoding: Option<String>) -> Self {
        Self {
            meter,
            kind: Kind::Json {
                copy: Vec::new(),
                encoding,
                scan: None,
            },
        }
    }
}

impl Step for UsageTap {
    fn data(&mut self, data: &Bytes) -> Result<(), BoxError> {
        match &mut self.kind {
            Kind::Stream(scanner) => {
                let meter = &self.meter;
                scanner.feed(data, |event| match event {
                    Some(event) => stream_event(meter, event),
                    None => meter.unreadable(),
                });
            }
            Kind::Json {
                copy,
                encoding,
                scan,
            } => match scan {
                Some(scan) => scan.feed(data),
                None if copy.len() + data.len() <= MAX_JSON => copy.extend_from_slice(data),
                None => {
                    let mut streaming = Scan::new(encoding.as_deref(), copy);
                    streaming.feed(copy);
                    streaming.feed(data);
                    *copy = Vec::new();
                    *scan = Some(streaming);
                }
            },
        }
        Ok(())
    }

    fn end(&mut self) {
        let Kind::Json {
            copy,
            encoding,
            scan,
        } = &mut self.kind
        else {
            return;
        };
        let found = match scan.take() {
            Some(scan) => Some(scan.finish()),
            None => {
                decode::decode(encoding.as_deref(), copy, MAX_JSON).and_then(|d| read::usage_in(&d))
            }
        };
        match found {
            Some(Found::Usage(usage)) => self.meter.report(usage),
            Some(Found::Nothing) => self.meter.read_without_usage(),
            Some(Found::Malformed) | None => self.meter.unreadable(),
        }
        *copy = Vec::new();
    }
}

/// One event of a chat, completion or Responses stream.
fn stream_event(meter: &Meter, data: &[u8]) {
    if data == b"[DONE]" {
        return;
    }
    // Only an event that names `usage` is read whole (the last of a chat
    // stream, `response.completed`); the others, by their few fields. The
    // skim gives up on a `usage` member anywhere, so it goes first.
    if let Some(seen) = event::seen(data) {
        meter.saw(seen.model.as_deref(), seen.chars);
        return;
    }
    // A shape neither view takes (a `delta` that is an object…), or one
    // that can carry usage: read as a tree.
    let Ok(event) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let mut chars = 0usize;
    if let Some(choices) = event.get("choices").and_then(Value::as_array) {
        for choice in choices {
            let delta = choice.get("delta").or_else(|| choice.get("text"));
            chars = chars.saturating_add(
                delta
                    .and_then(|d| d.get("content").or(Some(d)))
                    .and_then(Value::as_str)
                    .map_or(0, str::len),
            );
        }
    }
    if event.get("type").and_then(Value::as_str) == Some("response.output_text.delta") {
        chars = chars.saturating_add(
            event
                .get("delta")
                .and_then(Value::as_str)
                .map_or(0, str::len),
        );
    }
    meter.saw(event.get("model").and_then(Value::as_str), chars);
    match read::usage(&event) {
        Found::Usage(usage) => meter.report(usage),
        Found::Malformed => meter.unreadable(),
        Found::Nothing => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(tap: &mut UsageTap, chunks: &[&[u8]]) {
        for c in chunks {
            tap.data(&Bytes::copy_from_slice(c)).unwrap();
        }
        tap.end();
    }

    #[test]
    fn a_chat_stream_with_its_usage_chunk() {
        let meter = Meter::default();
        meter.expect(40, 0);
        let mut tap = UsageTap::stream(meter.clone());
        feed(&mut tap, &[
            b"data: {\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\nda",
            b"ta: {\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"prompt_tokens_details\":{\"cached_tokens\":4}}}\n\ndata: [DONE]\n\n",
        ]);
        let usage = meter.usage().unwrap();
        assert_eq!(
            (
                usage.input,
                usage.cached_input,
                usage.output,
                usage.estimated
            ),
            (9, 4, 2, false)
        );
        assert_eq!(usage.model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
    }

    #[test]
    fn a_cut_stream_is_estimated_from_what_streamed() {
        let meter = Meter::default();
        meter.expect(400, 0);
        let mut tap = UsageTap::stream(meter.clone());
        tap.data(&Bytes::from_static(
            b"data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"12345678\"}}]}\n\n",
        ))
        .unwrap();
        let usage = meter.usage().unwrap();
        assert_eq!((usage.input, usage.output, usage.estimated), (100, 2, true));
    }

    #[test]
    fn a_gzipped_json_body() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(
            br#"{"model":"text-embedding-3-small","usage":{"prompt_tokens":5,"total_tokens":5}}"#,
        )
        .unwrap();
        let gz = gz.finish().unwrap();
        let meter = Meter::default();
        let mut tap = UsageTap::json(meter.clone(), Some("gzip".into()));
        let (a, b) = gz.split_at(7);
        feed(&mut tap, &[a, b]);
        assert_eq!(meter.usage().unwrap().input, 5);
        // Truncated: unreadable, so estimated rather than lost.
        let meter = Meter::default();
        let mut tap = UsageTap::json(meter.clone(), Some("gzip".into()));
        feed(&mut tap, &[a]);
        assert!(meter.usage().unwrap().estimated);
    }

    #[test]
    fn an_answer_too_big_to_read_is_charged_its_reservation_never_zero() {
        let meter = Meter::default();
        meter.expect(400, 16_384);
        let mut tap = UsageTap::json(meter.clone(), None);
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..9 {
            tap.data(&Bytes::from(chunk.clone())).unwrap();
        }
        tap.end();
        let usage = meter.usage().unwrap();
        assert_eq!(
            (usage.input, usage.output, usage.estimated),
            (100, 16_384, true)
        );
        // Read whole and without usage: only its input is estimated.
        let meter = Meter::default();
        meter.expect(400, 16_384);
        feed(
            &mut UsageTap::json(meter.clone(), None),
            &[b"{\"text\":\"hi\"}"],
        );
        assert_eq!(meter.usage().unwrap().output, 0);
    }
}
