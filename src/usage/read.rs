//! `usage` in OpenAI's JSON: chat completions and completions
//! (`prompt_tokens`, `completion_tokens`), embeddings, the Responses API
//! (`input_tokens`, `output_tokens`, also inside `response.*` stream events),
//! and transcriptions billed by tokens.

use serde_json::Value;

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

/// Reads the usage of a response body or stream event.
pub fn usage(document: &Value) -> Found {
    let has_usage = |v: &Value| v.get("usage").is_some_and(|u| !u.is_null());
    // Responses API stream events carry the response object; Groq's
    // OpenAI-compatible streams put the last chunk's usage in `x_groq`.
    let holder = match (document.get("response"), document.get("x_groq")) {
        (Some(response), _) if response.get("usage").is_some() => response,
        (_, Some(groq)) if has_usage(groq) && !has_usage(document) => groq,
        _ => document,
    };
    let model = holder
        .get("model")
        .or_else(|| document.get("model"))
        .and_then(Value::as_str)
        .map(str::to_owned);
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
    // Whisper bills by duration: no token usage to read.
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
    let cached = cached.unwrap_or(0).min(input);
    Found::Usage(Usage::reported(model.as_deref(), input, cached, output))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(v: Value) -> Found {
        usage(&v)
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
