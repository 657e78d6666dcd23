//! `usage` in OpenAI's JSON: chat completions and completions
//! (`prompt_tokens`, `completion_tokens`), embeddings, the Responses API
//! (`input_tokens`, `output_tokens`, also inside `response.*` stream events),
//! and transcriptions billed by tokens.

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::json::{Key, Scalar};

use super::Usage;

/// What a JSON document says about usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No usage in it.
    Nothing,
    /// Its usage.
    Usage(Usage),
    /// A `usage` member that is not one (wrong types, missing counts).
    Malformed,
}

/// Reads the usage of a JSON document's bytes; `None` when they are not
/// JSON. Only the members that say what was used are read (below); the
/// rest, the answer's content, is skipped without being built.
pub fn usage_in(bytes: &[u8]) -> Option<Found> {
    let doc: Doc = serde_json::from_slice(bytes).ok()?;
    Some(doc.found())
}

/// Reads the usage of a document already parsed (a stream event read whole).
pub fn usage(document: &Value) -> Found {
    Doc::deserialize(document).map_or(Found::Malformed, |doc| doc.found())
}

// What is read, as OpenAI and the compatible APIs write it. A member's
// wrong type reads as `Other`, as `Value::as_u64`/`as_str` would read it,
// so that one that is not a count is malformed rather than the document
// unreadable; a repeated member counts by its last, as in a tree.

/// A document, or a `response` / `x_groq` object within one. Anything else
/// (an array, a number) has none of these members.
#[derive(Default)]
struct Doc {
    model: Scalar,
    usage: Member<UsageFields>,
    /// Responses API stream events carry the response object.
    response: Option<Box<Doc>>,
    /// Groq's OpenAI-compatible streams put the last chunk's usage here.
    x_groq: Option<Box<Doc>>,
}

/// A member that must be an object: absent, `null`, or present (any other
/// value reads as an object without the fields).
#[derive(Default)]
enum Member<T> {
    #[default]
    Absent,
    Null,
    Present(T),
}

#[derive(Default)]
struct UsageFields {
    prompt_tokens: Scalar,
    completion_tokens: Scalar,
    input_tokens: Scalar,
    output_tokens: Scalar,
    /// `cached_tokens` of each of the three details objects.
    prompt_cached: Scalar,
    input_cached: Scalar,
    input_cached_legacy: Scalar,
    /// Whisper bills by duration (`"type": "duration"`).
    kind: Scalar,
}

/// As `Value::get(..).map(Value::as_u64)`: absent, or present and a count
/// or not.
fn count(member: &Scalar) -> Option<Option<u64>> {
    match member {
        Scalar::Absent => None,
        other => Some(other.as_u64()),
    }
}

impl Doc {
    fn has_usage(&self) -> bool {
        matches!(self.usage, Member::Present(_))
    }

    fn found(&self) -> Found {
        let holder = match (&self.response, &self.x_groq) {
            (Some(response), _) if !matches!(response.usage, Member::Absent) => response,
            (_, Some(groq)) if groq.has_usage() && !self.has_usage() => groq,
            _ => self,
        };
        let model = match &holder.model {
            Scalar::Absent => self.model.as_str(),
            model => model.as_str(),
        };
        let Member::Present(usage) = &holder.usage else {
            return Found::Nothing;
        };
        if usage.kind.as_str() == Some("duration") {
            return Found::Nothing;
        }
        let (input, output, cached) =
            match (count(&usage.prompt_tokens), count(&usage.input_tokens)) {
                (Some(Some(input)), _) => (
                    input,
                    count(&usage.completion_tokens).unwrap_or(Some(0)),
                    usage.prompt_cached.as_u64(),
                ),
                (None, Some(Some(input))) => (
                    input,
                    count(&usage.output_tokens).unwrap_or(Some(0)),
                    usage
                        .input_cached
                        .as_u64()
                        .or_else(|| usage.input_cached_legacy.as_u64()),
                ),
                _ => return Found::Malformed,
            };
        let Some(output) = output else {
            return Found::Malformed;
        };
        let cached = cached.unwrap_or(0).min(input);
        Found::Usage(Usage::reported(model, input, cached, output))
    }
}

/// The visits of a value other than an object (and other than `null`, which
/// `not_null!` adds where it is not wanted either): it is consumed (checked
/// as JSON, not built) and reads as `$default`.
macro_rules! otherwise {
    ($out:ty, $default:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<$out, E> {
            Ok($default)
        }
        fn visit_i64<E>(self, _: i64) -> Result<$out, E> {
            Ok($default)
        }
        fn visit_f64<E>(self, _: f64) -> Result<$out, E> {
            Ok($default)
        }
        fn visit_u64<E>(self, _: u64) -> Result<$out, E> {
            Ok($default)
        }
        fn visit_str<E>(self, _: &str) -> Result<$out, E> {
            Ok($default)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<$out, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok($default)
        }
    };
}

macro_rules! not_null {
    ($out:ty, $default:expr) => {
        fn visit_unit<E>(self) -> Result<$out, E> {
            Ok($default)
        }
    };
}

struct DocVisitor;

impl<'de> Visitor<'de> for DocVisitor {
    type Value = Doc;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Doc, A::Error> {
        let mut doc = Doc::default();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match &*key {
                "model" => doc.model = map.next_value()?,
                "usage" => doc.usage = map.next_value()?,
                "response" => doc.response = Some(Box::new(map.next_value()?)),
                "x_groq" => doc.x_groq = Some(Box::new(map.next_value()?)),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(doc)
    }
    otherwise!(Doc, Doc::default());
    not_null!(Doc, Doc::default());
}

impl<'de> Deserialize<'de> for Doc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DocVisitor)
    }
}

struct UsageVisitor;

impl<'de> Visitor<'de> for UsageVisitor {
    type Value = Member<UsageFields>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut u = UsageFields::default();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match &*key {
                "prompt_tokens" => u.prompt_tokens = map.next_value()?,
                "completion_tokens" => u.completion_tokens = map.next_value()?,
                "input_tokens" => u.input_tokens = map.next_value()?,
                "output_tokens" => u.output_tokens = map.next_value()?,
                "prompt_tokens_details" => u.prompt_cached = map.next_value::<Cached>()?.0,
                "input_tokens_details" => u.input_cached = map.next_value::<Cached>()?.0,
                "input_token_details" => u.input_cached_legacy = map.next_value::<Cached>()?.0,
                "type" => u.kind = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Member::Present(u))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Member::Null)
    }
    otherwise!(Self::Value, Member::Present(UsageFields::default()));
}

impl<'de> Deserialize<'de> for Member<UsageFields> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UsageVisitor)
    }
}

/// A details object's `cached_tokens` (absent when it is not an object).
struct Cached(Scalar);

struct CachedVisitor;

impl<'de> Visitor<'de> for CachedVisitor {
    type Value = Cached;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Cached, A::Error> {
        let mut cached = Scalar::Absent;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            if &*key == "cached_tokens" {
                cached = map.next_value()?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Cached(cached))
    }
    otherwise!(Cached, Cached(Scalar::Absent));
    not_null!(Cached, Cached(Scalar::Absent));
}

impl<'de> Deserialize<'de> for Cached {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CachedVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The reading of a whole tree, as it was before the typed view: the
    /// oracle the view is held to.
    fn by_tree(document: &Value) -> Found {
        let has_usage = |v: &Value| v.get("usage").is_some_and(|u| !u.is_null());
        let holder = match (document.get("response"), document.get("x_groq")) {
            (Some(response), _) if response.get("usage").is_some() => response,
            (_, Some(groq)) if has_usage(groq) && !has_usage(document) => groq,
            _ => document,
        };
        let model = holder
            .get("model")
            .or_else(|| document.get("model"))
            .and_then(Value::as_str);
        let Some(usage) = holder.get("usage") else {
            return Found::Nothing;
        };
        if usage.is_null() {
            return Found::Nothing;
        }
        let count = |key: &str| usage.get(key).map(Value::as_u64);
        let nested = |outer: &str, key: &str| {
            usage
                .get(outer)
                .and_then(|d| d.get(key))
                .and_then(Value::as_u64)
        };
        if usage.get("type").and_then(Value::as_str) == Some("duration") {
            return Found::Nothing;
        }
        let (input, output, cached) = match (count("prompt_tokens"), count("input_tokens")) {
            (Some(Some(input)), _) => (
                input,
                count("completion_tokens").unwrap_or(Some(0)),
                nested("prompt_tokens_details", "cached_tokens"),
            ),
            (None, Some(Some(input))) => (
                input,
                count("output_tokens").unwrap_or(Some(0)),
                nested("input_tokens_details", "cached_tokens")
                    .or_else(|| nested("input_token_details", "cached_tokens")),
            ),
            _ => return Found::Malformed,
        };
        let Some(output) = output else {
            return Found::Malformed;
        };
        Found::Usage(Usage::reported(
            model,
            input,
            cached.unwrap_or(0).min(input),
            output,
        ))
    }

    /// Read from the bytes and from the tree, which must agree with the oracle.
    fn read(v: Value) -> Found {
        let oracle = by_tree(&v);
        assert_eq!(usage(&v), oracle, "{v}");
        let from_bytes = usage_in(&serde_json::to_vec(&v).unwrap());
        assert_eq!(from_bytes.as_ref(), Some(&oracle), "{v}");
        oracle
    }

    #[test]
    fn every_odd_shape_reads_as_the_tree_did() {
        let values = [
            json!(null),
            json!(true),
            json!(-3),
            json!(2.5),
            json!(7),
            json!("duration"),
            json!([1, 2]),
            json!({}),
            json!({"cached_tokens": 4}),
            json!({"cached_tokens": "4"}),
        ];
        let mut docs = Vec::new();
        for v in &values {
            for key in [
                "prompt_tokens",
                "completion_tokens",
                "input_tokens",
                "output_tokens",
                "prompt_tokens_details",
                "input_tokens_details",
                "input_token_details",
                "type",
            ] {
                docs.push(json!({"model": "m", "usage": {"prompt_tokens": 9, key: v}}));
                docs.push(json!({"usage": {"input_tokens": 9, "output_tokens": 2, key: v}}));
            }
            docs.push(json!({"usage": v}));
            docs.push(json!({"model": v, "usage": {"prompt_tokens": 1}}));
            docs.push(
                json!({"model": "top", "response": {"model": v, "usage": {"input_tokens": 3}}}),
            );
            docs.push(json!({"response": v, "usage": {"prompt_tokens": 2}}));
            docs.push(json!({"response": {"usage": v}, "usage": {"prompt_tokens": 2}}));
            docs.push(json!({"x_groq": {"usage": v}, "model": "g"}));
            docs.push(json!({"x_groq": v, "usage": {"prompt_tokens": 2}}));
            docs.push(
                json!({"usage": null, "x_groq": {"usage": {"prompt_tokens": 5}, "model": v}}),
            );
            docs.push(v.clone());
        }
        for doc in docs {
            read(doc);
        }
    }

    #[test]
    fn the_bytes_are_read_as_the_tree_is() {
        // The last of a repeated member counts, as in a tree.
        let twice = br#"{"usage":{"prompt_tokens":1,"completion_tokens":1},"model":"a","usage":{"prompt_tokens":7,"completion_tokens":2},"model":"b"}"#;
        assert_eq!(usage_in(twice), Some(found("b", 7, 0, 2)));
        // Content is skipped, escapes and all; keys may be escaped too.
        let escaped = br#"{"choices":[{"message":{"content":"a \"usage\": {}"}}],"\u0075sage":{"input_tokens":3,"output_tokens":4},"model":"m"}"#;
        assert_eq!(usage_in(escaped), Some(found("m", 3, 0, 4)));
        // JSON that is not an object has no usage; what is not JSON is unreadable.
        for other in [&b"[1,{\"usage\":2}]"[..], b"3", b"\"x\"", b"null", b"true"] {
            assert_eq!(usage_in(other), Some(Found::Nothing));
        }
        for broken in [
            &b"{\"usage\":"[..],
            b"",
            b"{\"a\":1} x",
            b"{\"usage\":{\"prompt_tokens\":1}",
        ] {
            assert_eq!(usage_in(broken), None);
        }
    }

    fn found(model: &str, input: u64, cached: u64, output: u64) -> Found {
        Found::Usage(Usage::reported(Some(model), input, cached, output))
    }

    #[test]
    fn groqs_stream_carries_its_usage_in_x_groq() {
        let last = json!({"id": "chatcmpl-1", "model": "llama-3.1-8b-instant",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "x_groq": {"id": "req_1", "usage": {"prompt_tokens": 12, "completion_tokens": 7,
                                                "total_tokens": 19}}});
        assert_eq!(read(last), found("llama-3.1-8b-instant", 12, 0, 7));
        // A top-level usage wins.
        let both = json!({"model": "m", "usage": {"prompt_tokens": 1, "completion_tokens": 1},
            "x_groq": {"usage": {"prompt_tokens": 9, "completion_tokens": 9}}});
        assert_eq!(read(both), found("m", 1, 0, 1));
        assert_eq!(
            read(json!({"model": "m", "x_groq": {"id": "r"}})),
            Found::Nothing
        );
    }

    #[test]
    fn every_shape_openai_sends() {
        // Chat completion, with cache and reasoning (counted in completion_tokens).
        assert_eq!(
            read(
                json!({"model": "o3-mini", "usage": {"prompt_tokens": 20, "completion_tokens": 30,
                "total_tokens": 50, "prompt_tokens_details": {"cached_tokens": 8},
                "completion_tokens_details": {"reasoning_tokens": 25}}})
            ),
            found("o3-mini", 20, 8, 30)
        );
        // Embeddings: input only.
        assert_eq!(
            read(
                json!({"model": "text-embedding-3-small", "usage": {"prompt_tokens": 5, "total_tokens": 5}})
            ),
            found("text-embedding-3-small", 5, 0, 0)
        );
        // Responses API, and its stream's completed event.
        let responses = json!({"model": "gpt-4o-mini", "usage": {"input_tokens": 11,
            "input_tokens_details": {"cached_tokens": 3}, "output_tokens": 4,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 15}});
        assert_eq!(read(responses.clone()), found("gpt-4o-mini", 11, 3, 4));
        assert_eq!(
            read(json!({"type": "response.completed", "response": responses})),
            found("gpt-4o-mini", 11, 3, 4)
        );
        // A transcription billed by tokens; one billed by duration has none.
        assert_eq!(
            read(
                json!({"text": "hi", "usage": {"type": "tokens", "input_tokens": 14, "output_tokens": 3,
                "input_token_details": {"text_tokens": 0, "audio_tokens": 14}}})
            ),
            Found::Usage(Usage {
                model: None,
                input: 14,
                cached_input: 0,
                output: 3,
                estimated: false
            })
        );
        assert_eq!(
            read(json!({"usage": {"type": "duration", "seconds": 3}})),
            Found::Nothing
        );
        // A chunk without usage, a null usage.
        assert_eq!(
            read(json!({"choices": [{"delta": {"content": "x"}}]})),
            Found::Nothing
        );
        assert_eq!(read(json!({"usage": null})), Found::Nothing);
    }

    #[test]
    fn a_usage_that_is_not_one_is_malformed() {
        for bad in [
            json!({"usage": 5}),
            json!({"usage": {"prompt_tokens": "5"}}),
            json!({"usage": {"prompt_tokens": 5, "completion_tokens": -1}}),
            json!({"usage": {}}),
        ] {
            assert_eq!(read(bad.clone()), Found::Malformed, "{bad}");
        }
    }
}
