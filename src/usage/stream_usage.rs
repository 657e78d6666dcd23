//! Usage for every streamed chat, asked for or not.
//!
//! A streamed chat completion (or completion) carries its usage only when the
//! client asks for it (`stream_options.include_usage: true`), in one extra
//! chunk whose `choices` is empty. Without it the spend of a stream is
//! unknown. So [`StreamUsage`] asks for it on the client's behalf, and
//! [`HideUsageChunk`] removes that extra chunk from the client's stream
//! again: a client that did not ask never sees an empty-`choices` chunk
//! (which crashes clients that read `choices[0]`). A client that asked gets
//! its chunk as before.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::Method;
use http_body::{Body, Frame, SizeHint};
use serde_json::Value;

use crate::body::BoxError;
use crate::error::GatewayError;
use crate::policy::{Inspect, Policy, ResponseEdit, Verdict};

/// The policy that adds `stream_options.include_usage` to streamed chats.
#[derive(Debug, Clone, Copy)]
pub struct StreamUsage {
    /// How much of a body may be read to look.
    pub max_body: u64,
}

/// Whether `path` is a chat completion or (legacy) completion.
pub fn is_completion(path: &str) -> bool {
    path.ends_with("/chat/completions") || path.ends_with("/completions")
}

impl Policy for StreamUsage {
    fn applies(&self, request: &Inspect<'_>) -> bool {
        *request.method == Method::POST && is_completion(request.path)
    }

    fn check<'a>(&'a self, request: &'a mut Inspect<'_>) -> Verdict<'a> {
        Box::pin(async move {
            if *request.method != Method::POST || !is_completion(request.path) {
                return Ok(());
            }
            if !crate::headers::is_json(request.headers) {
                return Ok(());
            }
            // A body too big to look at is sent as it is, unmetered by this step.
            let Some(body) = request.body.try_read(self.max_body).await? else {
                return Ok(());
            };
            let Some(rewritten) = with_usage(body) else {
                return Ok(());
            };
            request.body.replace(rewritten);
            request.edit = Some(ResponseEdit::HideUsageChunk);
            Ok::<(), GatewayError>(())
        })
    }
}

/// The body with `stream_options.include_usage: true`, when it streams and
/// does not ask for usage already; `None` to send it as it is.
fn with_usage(body: &[u8]) -> Option<Bytes> {
    let value: Value = serde_json::from_slice(body).ok()?;
    if value.get("stream") != Some(&Value::Bool(true)) {
        return None;
    }
    match value.get("stream_options") {
        None | Some(Value::Null) => {
            // Added after the opening brace: the rest stays byte for byte.
            let at = body.iter().position(|b| *b == b'{')? + 1;
            let mut out = BytesMut::with_capacity(body.len() + 40);
            out.extend_from_slice(&body[..at]);
            out.extend_from_slice(br#""stream_options":{"include_usage":true},"#);
            out.extend_from_slice(&body[at..]);
            Some(out.freeze())
        }
        Some(Value::Object(options))
            if options.get("include_usage") == Some(&Value::Bool(true)) =>
        {
            None
        }
        Some(Value::Object(_)) => {
            let mut value = value;
            value["stream_options"]["include_usage"] = Value::Bool(true);
            Some(Bytes::from(value.to_string()))
        }
        Some(_) => None,
    }
}

/// Removes the usage chunk (empty `choices`, with `usage`) from a chat event
/// stream, passing every other event on as soon as it is complete.
pub struct HideUsageChunk<B> {
    inner: B,
    partial: BytesMut,
    ready: VecDeque<Bytes>,
}

impl<B> HideUsageChunk<B> {
    /// Wraps an event stream.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            partial: BytesMut::new(),
            ready: VecDeque::new(),
        }
    }

    /// Moves the complete events out of `partial`, less the usage chunk.
    fn split(&mut self) {
        let mut kept = BytesMut::new();
        while let Some(end) = event_end(&self.partial) {
            let event = self.partial.split_to(end);
            if !is_usage_chunk(&event) {
                kept.extend_from_slice(&event);
            }
        }
        if !kept.is_empty() {
            self.ready.push_back(kept.freeze());
        }
    }
}

/// Where the first complete event in `bytes` ends (after its blank line).
fn event_end(bytes: &[u8]) -> Option<usize> {
    let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn is_usage_chunk(event: &[u8]) -> bool {
    let text = String::from_utf8_lossy(event);
    let data: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim_start)
        .collect::<Vec<_>>()
        .join("\n");
    let Ok(value) = serde_json::from_str::<Value>(&data) else {
        return false;
    };
    value
        .get("choices")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
        && value.get("usage").is_some_and(|u| !u.is_null())
}

impl<B> Body for HideUsageChunk<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(bytes) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.partial.extend_from_slice(&data);
                        this.split();
                    }
                    Err(other) => return Poll::Ready(Some(Ok(other))),
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    // An unterminated last event goes out as it came.
                    if this.partial.is_empty() {
                        return Poll::Ready(None);
                    }
                    let rest = this.partial.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_empty() && self.partial.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    #[test]
    fn usage_is_asked_for_only_when_missing() {
        let out = with_usage(br#"{"model":"m", "stream": true, "messages":[]}"#).unwrap();
        assert_eq!(
            &out[..],
            br#"{"stream_options":{"include_usage":true},"model":"m", "stream": true, "messages":[]}"#
        );
        let out: Value = serde_json::from_slice(
            &with_usage(br#"{"stream":true,"stream_options":{"include_obfuscation":false}}"#)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            out["stream_options"],
            serde_json::json!({"include_obfuscation": false, "include_usage": true})
        );
        assert_eq!(
            with_usage(br#"{"stream":true,"stream_options":{"include_usage":true}}"#),
            None
        );
        assert_eq!(with_usage(br#"{"stream":false}"#), None);
        assert_eq!(with_usage(b"not json"), None);
    }

    #[tokio::test]
    async fn the_usage_chunk_is_hidden_wherever_the_stream_is_cut() {
        let stream: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n";
        let want = b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: [DONE]\n\n";
        for cut in 0..stream.len() {
            let (a, b) = stream.split_at(cut);
            let frames = futures_util::stream::iter(
                [a, b].map(|p| Ok::<_, BoxError>(Frame::data(Bytes::copy_from_slice(p)))),
            );
            let body = HideUsageChunk::new(StreamBody::new(frames));
            let got = body.collect().await.unwrap().to_bytes();
            assert_eq!(&got[..], want, "cut at {cut}");
        }
    }
}
