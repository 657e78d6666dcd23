//! Holding a stream until its first output, so that an upstream that
//! answers `200` and then fails before producing anything can still be
//! failed over: nothing has reached the client yet.
//!
//! An event carries output when it is a chat chunk with content, a refusal,
//! a tool or function call, or a finish; `[DONE]`; or, for a stream that is
//! not chat chunks (the Responses API, say), any event with data. A
//! role-only first chunk, an empty-`choices` chunk (usage, Azure's content
//! filter) and comment lines (`: PROCESSING`) are not output. An `error`
//! event before any output is a failure.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::Body;
use http_body_util::BodyExt;

/// The most held before the stream is let through all the same: a stream
/// that sends this much without output is not stalled.
pub const MAX_HELD: usize = 1 << 20;

/// Why a held stream failed before its first output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// The body broke off (reset, malformed).
    Broke,
    /// It ended cleanly with nothing to say.
    Ended,
    /// Nothing with output within the first-output timeout.
    Stalled,
    /// It sent an error event.
    Error,
}

impl Failed {
    /// The code the access line's attempt shows.
    pub fn code(self) -> &'static str {
        match self {
            Self::Broke => "stream_broke_before_output",
            Self::Ended => "stream_ended_before_output",
            Self::Stalled => "stream_stalled_before_output",
            Self::Error => "stream_error_before_output",
        }
    }
}

/// Reads `body` until its first output (or [`MAX_HELD`] bytes), within
/// `timeout`: the bytes read, to go out first; or why it failed.
pub async fn first_output<B>(body: &mut B, timeout: Duration) -> Result<Bytes, Failed>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut held = BytesMut::new();
    let mut scanned = 0;
    let read = async {
        loop {
            let Some(frame) = body.frame().await else {
                return Err(Failed::Ended);
            };
            let Ok(frame) = frame else {
                return Err(Failed::Broke);
            };
            let Some(data) = frame.data_ref() else {
                continue;
            };
            held.extend_from_slice(data);
            while let Some(end) = event_end(&held[scanned..]) {
                let event = &held[scanned..scanned + end];
                scanned += end;
                match judge(event) {
                    Verdict::Output => return Ok(()),
                    Verdict::Error => return Err(Failed::Error),
                    Verdict::Nothing => {}
                }
            }
            if held.len() >= MAX_HELD {
                return Ok(());
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(())) => Ok(held.freeze()),
        Ok(Err(failed)) => Err(failed),
        Err(_) => Err(Failed::Stalled),
    }
}

/// The length of the first whole event in `bytes` (through its blank line).
fn event_end(bytes: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'\n', b'\n') => return Some(i + 2),
            (b'\r', b'\n') if bytes[i + 2..].starts_with(b"\r\n") => return Some(i + 4),
            (b'\n', b'\r') if bytes.get(i + 2) == Some(&b'\n') => return Some(i + 3),
            _ => i += 1,
        }
    }
    None
}

enum Verdict {
    Output,
    Error,
    Nothing,
}

fn judge(event: &[u8]) -> Verdict {
    let mut data = Vec::new();
    for line in event.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b"data:") {
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(rest.strip_prefix(b" ").unwrap_or(rest));
        }
    }
    if data.is_empty() {
        return Verdict::Nothing;
    }
    if data.trim_ascii() == b"[DONE]" {
        return Verdict::Output;
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&data) else {
        // Not JSON: something was said, and it is not ours to judge.
        return Verdict::Output;
    };
    if value.get("error").is_some_and(|e| !e.is_null()) {
        return Verdict::Error;
    }
    let Some(choices) = value.get("choices").and_then(|c| c.as_array()) else {
        return Verdict::Output;
    };
    let said = choices.iter().any(|choice| {
        let delta = &choice["delta"];
        let text = |key: &str| delta[key].as_str().is_some_and(|s| !s.is_empty());
        let listed = |key: &str| delta[key].as_array().is_some_and(|a| !a.is_empty());
        text("content")
            || text("refusal")
            || listed("tool_calls")
            || delta["function_call"].is_object()
            || !choice["finish_reason"].is_null()
            // A legacy completion's chunk.
            || choice["text"].as_str().is_some_and(|s| !s.is_empty())
    });
    if said {
        Verdict::Output
    } else {
        Verdict::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::BoxError;
    use http_body::Frame;

    fn body(
        parts: Vec<Result<&'static str, &'static str>>,
    ) -> impl Body<Data = Bytes, Error = BoxError> + Unpin {
        let stream = futures_util::stream::iter(parts.into_iter().map(|p| match p {
            Ok(text) => Ok(Frame::data(Bytes::from_static(text.as_bytes()))),
            Err(e) => Err(BoxError::from(e)),
        }));
        http_body_util::StreamBody::new(stream)
    }

    const ROLE: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n";
    const TOKEN: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n";

    #[tokio::test]
    async fn a_role_chunk_is_held_until_the_first_token_and_goes_out_with_it() {
        let mut b = body(vec![
            Ok(": PROCESSING\n\n"),
            Ok(ROLE),
            Ok(&TOKEN[..20]),
            Ok(&TOKEN[20..]),
            Ok("data: [DONE]\n\n"),
        ]);
        let held = first_output(&mut b, Duration::from_secs(5)).await.unwrap();
        assert_eq!(held, [": PROCESSING\n\n", ROLE, TOKEN].concat());
        // The rest is left in the body.
        let rest = b.collect().await.unwrap().to_bytes();
        assert_eq!(rest, "data: [DONE]\n\n");
    }

    #[tokio::test]
    async fn failures_before_any_output_are_told_apart() {
        let broke = first_output(
            &mut body(vec![Ok(ROLE), Err("reset")]),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(broke, Err(Failed::Broke));
        let ended = first_output(&mut body(vec![Ok(ROLE)]), Duration::from_secs(5)).await;
        assert_eq!(ended, Err(Failed::Ended));
        let error = "data: {\"error\":{\"message\":\"overloaded\"}}\n\n";
        let errored =
            first_output(&mut body(vec![Ok(ROLE), Ok(error)]), Duration::from_secs(5)).await;
        assert_eq!(errored, Err(Failed::Error));
        let usage_only = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n";
        let ended = first_output(&mut body(vec![Ok(usage_only)]), Duration::from_secs(5)).await;
        assert_eq!(ended, Err(Failed::Ended));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_silent_after_its_head_is_stalled_at_the_timeout() {
        let mut silent = http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, BoxError>,
        >());
        let started = tokio::time::Instant::now();
        let held = first_output(&mut silent, Duration::from_secs(30)).await;
        assert_eq!(held, Err(Failed::Stalled));
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test]
    async fn other_streams_count_their_first_event_and_a_finish_counts() {
        let responses = "event: response.created\ndata: {\"type\":\"response.created\"}\n\n";
        assert!(
            first_output(&mut body(vec![Ok(responses)]), Duration::from_secs(5))
                .await
                .is_ok()
        );
        let finish =
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\r\n\r\n";
        assert!(
            first_output(&mut body(vec![Ok(finish)]), Duration::from_secs(5))
                .await
                .is_ok()
        );
        let tool =
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0}]}}]}\n\n";
        assert!(
            first_output(&mut body(vec![Ok(tool)]), Duration::from_secs(5))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn a_long_stream_without_output_is_let_through_at_the_bound() {
        let comment: &'static str =
            Box::leak(format!(": {}\n\n", "x".repeat(MAX_HELD)).into_boxed_str());
        let held = first_output(
            &mut body(vec![Ok(comment), Ok(TOKEN)]),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(held.unwrap().len(), comment.len());
    }
}
