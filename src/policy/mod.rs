//! The policy step: rules that run after authentication and before
//! anything is sent upstream.
//!
//! A [`Policy`] sees the admitted request ([`Inspect`]): method, path,
//! headers, who it was admitted as, and, if it needs them, the body's
//! bytes, read up to a bound it chooses. It answers with `Ok` to let the
//! request through or with the [`GatewayError`] the client gets. A body
//! that no policy reads keeps streaming upstream untouched; a body that one
//! read is sent on byte for byte from what was read.
//!
//! Every rule reads the body through one [`View`], parsed the first time a
//! rule asks ([`Inspect::view`]).
//!
//! The rules, in the order they run: [`crate::spend::account`] (a token's
//! own usage, answered here), [`spending`] (what a token with rules may
//! reach at all: placeable paths, readable bodies, metered endpoints),
//! [`allowlist`] (a token's `models` and `endpoints`),
//! [`crate::spend::enforce`] (limits: admission and reservation), and
//! [`crate::usage::stream_usage`] (usage for every streamed chat).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures_util::{StreamExt, TryStreamExt};
use http::{HeaderMap, Method};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};

pub mod allowlist;
pub mod spending;
pub mod view;

pub use view::View;

use crate::auth::Admitted;
use crate::body::{client_fault, from_client, BoxError, ByteCount};
use crate::error::GatewayError;
use crate::proxy::UpstreamBody;

/// A policy's verdict, as a future borrowing the request.
pub type Verdict<'a> = Pin<Box<dyn Future<Output = Result<(), GatewayError>> + Send + 'a>>;

/// One rule on admitted requests.
pub trait Policy: Send + Sync {
    /// Whether the rule has anything to do with this request: a cheap test
    /// that spares most requests the rule's future (and its allocation).
    fn applies(&self, request: &Inspect<'_>) -> bool {
        let _ = request;
        true
    }

    /// Checks one request.
    fn check<'a>(&'a self, request: &'a mut Inspect<'_>) -> Verdict<'a>;
}

/// What a policy may look at.
pub struct Inspect<'r> {
    /// The method.
    pub method: &'r Method,
    /// The path as policy reads it: the client's, normalised
    /// ([`crate::path::normalise`]); it is still forwarded as sent.
    pub path: &'r str,
    /// The client's headers.
    pub headers: &'r HeaderMap,
    /// Who the request was admitted as.
    pub admitted: &'r Admitted,
    /// The body.
    pub body: &'r mut RequestBody,
    /// The changes the policies ask for in the response, applied in the
    /// order they were asked (the pipeline's order), each over the last.
    pub edits: Vec<ResponseEdit>,
    /// What a policy leaves for the completion hooks (kept in the request's
    /// record), such as a spend reservation to settle.
    pub notes: &'r mut http::Extensions,
    /// An answer the gateway gives itself instead of forwarding (the
    /// token holder's own usage); the policies after it do not run.
    pub reply: Option<http::Response<Bytes>>,
    /// The most of a body a policy reads.
    pub max_body: u64,
    /// When the request arrived, by the gateway's [`crate::clock::Clock`]:
    /// the instant every rule judges it at (windows, expiry, `resets_at`).
    pub now: DateTime<Utc>,
    /// The body's [`View`], once a rule asked for it.
    view: Parsed,
}

/// The body's view: not asked for yet, over the bound, or parsed (or not).
enum Parsed {
    NotYet,
    Over,
    Done(Result<View, GatewayError>),
}

impl<'r> Inspect<'r> {
    /// What the policies see of a request whose body has not been read.
    #[allow(clippy::too_many_arguments)] // one per field the pipeline fills in
    pub fn new(
        method: &'r Method,
        path: &'r str,
        headers: &'r HeaderMap,
        admitted: &'r Admitted,
        body: &'r mut RequestBody,
        notes: &'r mut http::Extensions,
        max_body: u64,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            method,
            path,
            headers,
            admitted,
            body,
            edits: Vec::new(),
            notes,
            reply: None,
            max_body,
            now,
            view: Parsed::NotYet,
        }
    }

    /// The body's fields, read (up to [`Inspect::max_body`]: a larger body
    /// is `413`) and parsed the first time a rule asks; a body that does
    /// not parse is the client's `400`.
    pub async fn view(&mut self) -> Result<&View, GatewayError> {
        self.parse().await?;
        match &self.view {
            Parsed::Done(Ok(view)) => Ok(view),
            Parsed::Done(Err(error)) => Err(error.clone()),
            _ => Err(GatewayError::RequestTooLarge(self.max_body)),
        }
    }

    /// Like [`Inspect::view`], for a rule that only looks when it can: a body
    /// over the bound, or one that does not parse, is `None` and goes
    /// upstream as it is.
    pub async fn try_view(&mut self) -> Result<Option<&View>, GatewayError> {
        self.parse().await?;
        Ok(match &self.view {
            Parsed::Done(Ok(view)) => Some(view),
            _ => None,
        })
    }

    async fn parse(&mut self) -> Result<(), GatewayError> {
        if !matches!(self.view, Parsed::NotYet) {
            return Ok(());
        }
        // Reading can fail only by the client's doing (a broken upload): that
        // is this request's error whoever asked.
        self.view = match self.body.try_read(self.max_body).await? {
            None => Parsed::Over,
            Some(bytes) => {
                let bytes = bytes.clone();
                Parsed::Done(View::parse(self.headers, &bytes).await)
            }
        };
        Ok(())
    }
}

/// A change to a successful response, decided before the request goes upstream.
pub enum ResponseEdit {
    /// The body is collected (up to `limit`), asked for uncompressed, and
    /// replaced by what `rewrite` makes of it.
    Rewrite {
        /// The most the collected body may hold.
        limit: usize,
        /// The new body from the old.
        rewrite: Box<dyn FnOnce(Bytes) -> Bytes + Send>,
    },
    /// The stream's usage chunk, which the gateway asked for, is removed.
    HideUsageChunk,
}

/// A request body on its way upstream: streaming, or read by a policy.
pub struct RequestBody(State);

enum State {
    Empty,
    Streaming(BoxBody<Bytes, BoxError>),
    Read(Bytes),
    /// Read past a policy's limit: the bytes read, then the rest.
    Over(Bytes, BoxBody<Bytes, BoxError>),
}

impl RequestBody {
    /// The client's body, counting what is read of it into `count`, cut
    /// after `idle` without a byte.
    pub fn new<B>(body: B, count: ByteCount, idle: Duration) -> Self
    where
        B: Body<Data = Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        if body.is_end_stream() {
            return Self(State::Empty);
        }
        Self(State::Streaming(from_client(body, count, idle).boxed()))
    }

    /// Reads the whole body, up to `limit` bytes. Later calls return the
    /// same bytes; the body then goes upstream as read. A larger body is
    /// `413 request_too_large`.
    pub async fn read(&mut self, limit: u64) -> Result<&Bytes, GatewayError> {
        self.try_read(limit)
            .await?
            .ok_or(GatewayError::RequestTooLarge(limit))
    }

    /// Like [`RequestBody::read`], but a body over `limit` is `None` and goes
    /// upstream whole all the same (what was read, then the rest): for a
    /// policy that only looks when it can.
    pub async fn try_read(&mut self, limit: u64) -> Result<Option<&Bytes>, GatewayError> {
        if let State::Streaming(body) = &mut self.0 {
            // A declared length is allocated once (a 30 MiB body then costs
            // 30 MiB, not the 48 MiB of doubling); never more than may be read.
            let hint = body.size_hint().lower().min(limit.saturating_add(1));
            let mut bytes = BytesMut::with_capacity(usize::try_from(hint).unwrap_or(0));
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| {
                    client_fault(&*e).unwrap_or(GatewayError::InvalidRequestBody(
                        "the body could not be read",
                    ))
                })?;
                if let Some(data) = frame.data_ref() {
                    bytes.extend_from_slice(data);
                    if bytes.len() as u64 > limit {
                        let State::Streaming(rest) = std::mem::replace(&mut self.0, State::Empty)
                        else {
                            unreachable!("matched above")
                        };
                        self.0 = State::Over(bytes.freeze(), rest);
                        return Ok(None);
                    }
                }
            }
            self.0 = State::Read(bytes.freeze());
        }
        static EMPTY: Bytes = Bytes::new();
        Ok(match &self.0 {
            State::Read(bytes) => Some(bytes),
            State::Over(..) => None,
            _ => Some(&EMPTY),
        })
    }

    /// Sends `bytes` upstream instead (a policy that rewrote the body).
    pub fn replace(&mut self, bytes: Bytes) {
        self.0 = State::Read(bytes);
    }

    /// The whole body, if it is held (read by a rule, or empty) and at most
    /// `limit` bytes: what a retry can send again.
    pub fn replayable(&self, limit: u64) -> Option<Bytes> {
        match &self.0 {
            State::Empty => Some(Bytes::new()),
            State::Read(bytes) if bytes.len() as u64 <= limit => Some(bytes.clone()),
            _ => None,
        }
    }

    /// The body for the upstream: what was read of it, then the rest.
    pub fn into_upstream(self) -> UpstreamBody {
        match self.0 {
            State::Empty => UpstreamBody::default(),
            State::Read(bytes) => Full::new(bytes).map_err(|never| match never {}).boxed(),
            State::Streaming(body) => body,
            State::Over(head, rest) => {
                let head = futures_util::stream::once(async move { Ok::<_, BoxError>(head) });
                let rest = rest.into_data_stream();
                BodyExt::boxed(StreamBody::new(head.chain(rest).map_ok(Frame::data)))
            }
        }
    }
}

/// A held body sent again ([`RequestBody::replayable`]).
pub fn replay(bytes: Bytes) -> UpstreamBody {
    if bytes.is_empty() {
        return UpstreamBody::default();
    }
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    const IDLE: Duration = Duration::from_secs(30);

    fn chunks(parts: &[&'static str]) -> RequestBody {
        let frames = futures_util::stream::iter(
            parts
                .iter()
                .map(|p| {
                    Ok::<_, BoxError>(http_body::Frame::data(Bytes::from_static(p.as_bytes())))
                })
                .collect::<Vec<_>>(),
        );
        RequestBody::new(StreamBody::new(frames), ByteCount::default(), IDLE)
    }

    #[tokio::test]
    async fn a_read_body_is_kept_whole_and_bounded() {
        let mut body = chunks(&["{\"model\":", "\"gpt-4o\"}"]);
        assert_eq!(
            &body.read(100).await.unwrap()[..],
            b"{\"model\":\"gpt-4o\"}"
        );
        // Read again: the same bytes, nothing lost.
        assert_eq!(body.read(100).await.unwrap().len(), 18);
        let mut big = chunks(&["12345", "67890"]);
        assert_eq!(
            big.read(8).await.unwrap_err(),
            GatewayError::RequestTooLarge(8)
        );
        let count = ByteCount::default();
        let mut empty = RequestBody::new(Full::new(Bytes::new()), count.clone(), IDLE);
        assert!(empty.read(1).await.unwrap().is_empty());
        let mut counted =
            RequestBody::new(Full::new(Bytes::from_static(b"abc")), count.clone(), IDLE);
        counted.read(10).await.unwrap();
        assert_eq!(count.get(), 3);
    }

    #[tokio::test]
    async fn a_body_over_a_try_read_goes_upstream_whole() {
        let mut body = chunks(&["12345", "67890", "abc"]);
        assert_eq!(body.try_read(6).await.unwrap(), None);
        assert_eq!(body.try_read(6).await.unwrap(), None, "again: still over");
        let upstream = body.into_upstream();
        let all = http_body_util::BodyExt::collect(upstream)
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&all[..], b"1234567890abc");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_upload_is_the_clients_timeout() {
        let silent = StreamBody::new(futures_util::stream::pending::<
            Result<http_body::Frame<Bytes>, BoxError>,
        >());
        let mut body = RequestBody::new(silent, ByteCount::default(), Duration::from_secs(7));
        assert_eq!(
            body.read(10).await.unwrap_err(),
            GatewayError::ClientTimeout(7)
        );
    }
}
