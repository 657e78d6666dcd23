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
use crate::policy::view::StreamOptions;
use crate::policy::{Inspect, Policy, ResponseEdit, Verdict};

/// The policy that adds `stream_options.include_usage` to streamed chats.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamUsage;

/// A streamed chat's body as the client sent it, before the gateway added
/// `stream_options.include_usage` (left in the request's notes): what an
/// upstream that refuses `stream_options` is sent instead.
#[derive(Debug, Clone)]
pub struct AsSent(pub Bytes);

/// The longest event that can be the usage chunk the gateway asked for
/// (they are a few hundred bytes): a longer one is passed on at once.
const MAX_USAGE_CHUNK: usize = 64 << 10;

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
            // A body too big to look at (or one that does not parse, which
            // the upstream will refuse) is sent as it is.
            let Some(view) = request.try_view().await? else {
                return Ok(());
            };
            if !view.stream {
                return Ok(());
            }
            let options = view.stream_options;
            let Some(body) = request.body.try_read(request.max_body).await? else {
                return Ok(());
            };
            let Some(rewritten) = with_usage(body, options) else {
                return Ok(());
            };
            let as_sent = AsSent(body.clone());
            request.body.replace(rewritten);
            request.notes.insert(as_sent);
            request.edits.push(ResponseEdit::HideUsageChunk);
            Ok::<(), GatewayError>(())
        })
    }
}

/// A streamed body with `stream_options.include_usage: true`, when it does
/// not ask for usage already; `None` to send it as it is. The result has
/// exactly one `stream_options` (a `null` is replaced, not shadowed).
fn with_usage(body: &[u8], options: StreamOptions) -> Option<Bytes> {
    match options {
        StreamOptions::Object {
            include_usage: true,
        } => None,
        StreamOptions::Absent => {
            // Added after the opening brace: the rest stays byte for byte.
            let at = body.iter().position(|b| *b == b'{')? + 1;
            let mut out = BytesMut::with_capacity(body.len() + 40);
            out.extend_from_slice(&body[..at]);
            out.extend_from_slice(br#""stream_options":{"include_usage":true},"#);
            out.extend_from_slice(&body[at..]);
            Some(out.freeze())
        }
        StreamOptions::Null | StreamOptions::Object { .. } => {
            // Rare (the key is there, but says no usage): the body is
            // re-serialised once, with the key set.
            let mut value: Value = serde_json::from_slice(body).ok()?;
            let object = value.as_object_mut()?;
            match object.get_mut("stream_options") {
                Some(Value::Object(options)) => {
                    options.insert("include_usage".into(), Value::Bool(true));
                }
                _ => {
                    object.insert(
                        "stream_options".into(),
                        serde_json::json!({"include_usage": true}),
                    );
                }
            }
            serde_json::to_vec(&value).ok().map(Bytes::from)
        }
    }
}

/// Removes the usage chunk (empty `choices`, with `usage`) from a chat event
/// stream, passing every other event on as soon as it is complete.
///
/// Memory is bounded: an event is held only while it could still be the
/// usage chunk; once it is longer than that could be, what there is of it
/// goes on at once, and the rest of it as it arrives.
pub struct HideUsageChunk<B> {
    inner: B,
    partial: BytesMut,
    ready: VecDeque<Bytes>,
    /// Inside an event too long to be the usage chunk: passed through
    /// until its end. Holds the last bytes passed, to find an end that is
    /// split across chunks.
    passing: Option<Vec<u8>>,
}

impl<B> HideUsageChunk<B> {
    /// Wraps an event stream.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            partial: BytesMut::new(),
            ready: VecDeque::new(),
            passing: None,
        }
    }

    /// Takes a chunk of the stream.
    fn take(&mut self, data: Bytes) {
        let data = match self.passing.take() {
            None => data,
            Some(mut tail) => {
                // Where the long event ends: search the last bytes passed
                // and the new ones together.
                let seen = tail.len();
                tail.extend_from_slice(&data[..data.len().min(3)]);
                let end = event_end(&tail)
                    .map(|e| e.saturating_sub(seen))
                    .or_else(|| event_end(&data));
                match end {
                    Some(end) => {
                        if end > 0 {
                            self.ready.push_back(data.slice(..end));
                        }
                        data.slice(end..)
                    }
                    None => {
                        let keep = data.len().min(3);
                        let mut last = tail[..seen].to_vec();
                        last.extend_from_slice(&data[data.len() - keep..]);
                        let cut = last.len().saturating_sub(3);
                        last.drain(..cut);
                        self.passing = Some(last);
                        self.ready.push_back(data);
                        return;
                    }
                }
            }
        };
        if self.partial.is_empty() {
            // The usual case: a chunk of whole events, none of them the
            // usage chunk (which must name `usage`): it goes on as it
            // came, not copied; what follows its last event waits.
            let whole = last_event_end(&data);
            if whole > 0 && super::find::usage_key(&data[..whole]).is_none() {
                self.ready.push_back(data.slice(..whole));
                if whole < data.len() {
                    self.partial.extend_from_slice(&data[whole..]);
                    self.split();
                }
                return;
            }
        }
        self.partial.extend_from_slice(&data);
        self.split();
    }

    /// Moves the complete events out of `partial`, less the usage chunk;
    /// an unfinished event too long to be it goes on as it is.
    fn split(&mut self) {
        let mut kept = BytesMut::new();
        while let Some(end) = event_end(&self.partial) {
            let event = self.partial.split_to(end);
            if !is_usage_chunk(&event) {
                kept.extend_from_slice(&event);
            }
        }
        if self.partial.len() > MAX_USAGE_CHUNK {
            let long = self.partial.split();
            let cut = long.len().saturating_sub(3);
            self.passing = Some(long[cut..].to_vec());
            kept.extend_from_slice(&long);
        }
        if !kept.is_empty() {
            self.ready.push_back(kept.freeze());
        }
    }
}

/// Where the first complete event in `bytes` ends (after its blank line:
/// `\n\n`, or `\r\n\r\n`, whichever ends first). One pass, from line end
/// to line end (an event has a few).
fn event_end(bytes: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = bytes
        .get(from..)
        .and_then(|rest| memchr::memchr(b'\n', rest))
    {
        let lf = from + at;
        let cr_before = lf.checked_sub(1).and_then(|i| bytes.get(i)) == Some(&b'\r');
        match bytes.get(lf + 1) {
            Some(b'\n') => return Some(lf + 2),
            Some(b'\r') if cr_before && bytes.get(lf + 2) == Some(&b'\n') => return Some(lf + 3),
            _ => from = lf + 1,
        }
    }
    None
}

/// [`event_end`] as it was written first, by two searches: its oracle.
#[cfg(test)]
fn event_end_by_search(bytes: &[u8]) -> Option<usize> {
    let lf = memchr::memmem::find(bytes, b"\n\n").map(|i| i + 2);
    // A CRLF end counts only if it comes first: search no further than the LF one.
    let before = lf.map_or(bytes.len(), |end| (end + 2).min(bytes.len()));
    let crlf = memchr::memmem::find(&bytes[..before], b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Where the last complete event in `bytes` ends (0: none is complete).
fn last_event_end(bytes: &[u8]) -> usize {
    let mut at = 0;
    while let Some(end) = event_end(&bytes[at..]) {
        at += end;
    }
    at
}

fn is_usage_chunk(event: &[u8]) -> bool {
    if super::find::usage_key(event).is_none() {
        return false;
    }
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
                    Ok(data) => this.take(data),
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

    proptest::proptest! {
        #[test]
        fn an_event_ends_where_the_two_searches_said(
            bytes in proptest::collection::vec(proptest::sample::select(vec![b'\n', b'\r', b'a', b':']), 0..24)
        ) {
            proptest::prop_assert_eq!(event_end(&bytes), event_end_by_search(&bytes));
        }
    }

    #[test]
    fn usage_is_asked_for_only_when_missing() {
        let out = with_usage(
            br#"{"model":"m", "stream": true, "messages":[]}"#,
            StreamOptions::Absent,
        )
        .unwrap();
        assert_eq!(
            &out[..],
            br#"{"stream_options":{"include_usage":true},"model":"m", "stream": true, "messages":[]}"#
        );
        let out: Value = serde_json::from_slice(
            &with_usage(
                br#"{"stream":true,"stream_options":{"include_obfuscation":false}}"#,
                StreamOptions::Object {
                    include_usage: false,
                },
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            out["stream_options"],
            serde_json::json!({"include_obfuscation": false, "include_usage": true})
        );
        assert_eq!(
            with_usage(
                br#"{"stream":true,"stream_options":{"include_usage":true}}"#,
                StreamOptions::Object {
                    include_usage: true
                }
            ),
            None
        );
    }

    #[test]
    fn a_null_stream_options_is_replaced_not_shadowed() {
        let body = br#"{"model":"m","stream":true,"stream_options":null,"messages":[]}"#;
        let out = with_usage(body, StreamOptions::Null).unwrap();
        let text = std::str::from_utf8(&out).unwrap();
        assert_eq!(text.matches("stream_options").count(), 1, "{text}");
        let value: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["stream_options"]["include_usage"], true);
    }

    #[tokio::test]
    async fn a_long_event_goes_on_as_it_comes_and_the_next_is_still_read() {
        let long = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n",
            "x".repeat(3 * MAX_USAGE_CHUNK)
        );
        let usage = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n";
        let stream = format!("{long}{usage}");
        // Cut into 1000-byte chunks: the hider never holds much more than
        // the longest usage chunk, and the output is the stream less it.
        let chunks: Vec<Bytes> = stream
            .as_bytes()
            .chunks(1000)
            .map(Bytes::copy_from_slice)
            .collect();
        let mut hider = HideUsageChunk::new(StreamBody::new(futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, BoxError>(Frame::data(c))),
        )));
        let mut out = Vec::new();
        while let Some(frame) = hider.frame().await {
            out.extend_from_slice(&frame.unwrap().into_data().unwrap());
            assert!(hider.partial.capacity() <= 4 * MAX_USAGE_CHUNK);
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{long}data: [DONE]\n\n")
        );
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
