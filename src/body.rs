//! Response and request bodies, built from small layers over any body.
//!
//! Nothing here buffers: each [`Layer`] passes frames through as they
//! arrive, showing them to its [`Step`]. A proxied response is, from the
//! inside out:
//!
//! 1. the upstream's body;
//! 2. [`IdleTimeout`]: cut when the upstream goes silent too long;
//! 3. a [`Cap`] (buffered Lambda only): refuse to grow past Lambda's limit;
//! 4. [`crate::completion::Completion`]: counts what was sent, sets the
//!    record's outcome, and runs the completion hooks exactly once.
//!
//! The gateway's own answers (errors, preflights) are a full body under the
//! same completion layer. On the way up, [`from_client`] counts the
//! request body into the record, cuts a silent upload, and marks its failures
//! as the client's. New behaviour (a usage tap, an SSE filter) is one
//! more layer, in the place the list above gives it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use tokio::time::{Instant, Sleep};

use crate::error::GatewayError;

/// The error type of gateway bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a body's poll yields.
pub type Polled = Result<Frame<Bytes>, BoxError>;

/// A response body in every mode: any stack of layers, boxed once.
pub struct GatewayBody(UnsyncBoxBody<Bytes, BoxError>);

impl GatewayBody {
    /// Boxes a body.
    pub fn new<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Self(body.map_err(Into::into).boxed_unsync())
    }

    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::new(Full::new(bytes.into()))
    }
}

impl From<Bytes> for GatewayBody {
    fn from(bytes: Bytes) -> Self {
        Self::full(bytes)
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Polled>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// A body with bytes already read from it (a stream held until its first
/// output) going out first.
pub struct Prefixed<B> {
    prefix: Option<Bytes>,
    inner: B,
}

impl<B> Prefixed<B> {
    /// `inner` as it is.
    pub fn plain(inner: B) -> Self {
        Self {
            prefix: None,
            inner,
        }
    }

    /// `prefix`, then the rest of `inner`.
    pub fn new(prefix: Bytes, inner: B) -> Self {
        Self {
            prefix: (!prefix.is_empty()).then_some(prefix),
            inner,
        }
    }
}

impl<B> Body for Prefixed<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        let held = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(held));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(held));
        }
        hint
    }
}

/// The upstream went silent for longer than the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing for {0:?}; stream cut")]
pub struct Idle(pub Duration);

/// What one body layer does, seen from its [`Layer`]: each layer is a step
/// that looks at the chunks going by and may end the body with an error.
pub trait Step: Unpin {
    /// Sees a data chunk; an error ends the body.
    fn data(&mut self, _data: &Bytes) -> Result<(), BoxError> {
        Ok(())
    }
    /// Runs while the inner body has nothing to give; an error ends the body.
    fn waiting(&mut self, _cx: &mut Context<'_>) -> Option<BoxError> {
        None
    }
    /// Runs once when the inner body has ended cleanly.
    fn end(&mut self) {}
}

/// A body with one [`Step`] over it, passing every frame through as it comes.
pub struct Layer<B, S> {
    inner: B,
    step: S,
    ended: bool,
}

impl<B, S: Step> Layer<B, S> {
    /// Puts `step` over `inner`.
    pub fn new(inner: B, step: S) -> Self {
        Self {
            inner,
            step,
            ended: false,
        }
    }

    fn end(&mut self) {
        if !std::mem::replace(&mut self.ended, true) {
            self.step.end();
        }
    }
}

impl<B, S> Body for Layer<B, S>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    S: Step,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Err(error) = this.step.data(data) {
                        return Poll::Ready(Some(Err(error)));
                    }
                }
                // A body of known length may not be polled past its last
                // frame (the server stops once the length is written).
                if this.inner.is_end_stream() {
                    this.end();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                this.end();
                Poll::Ready(None)
            }
            Poll::Pending => match this.step.waiting(cx) {
                Some(error) => Poll::Ready(Some(Err(error))),
                None => Poll::Pending,
            },
        }
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Cuts a body that yields no frame for `idle`, counted from the time it is
/// asked for one and has none (a body not asked for is not silent).
///
/// The timer is made only when the body first has nothing to give: a
/// response whose frames are there when asked (most non-streamed ones)
/// allocates no timer and never touches the runtime's timer wheel. A frame
/// only marks the timer for re-arming; the next wait pushes its deadline
/// out, which for a registered timer needs no lock.
pub struct IdleTimeout {
    idle: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl IdleTimeout {
    /// The step for a silence of at most `idle`.
    pub fn new(idle: Duration) -> Self {
        Self {
            idle,
            deadline: None,
            armed: false,
        }
    }
}

impl Step for IdleTimeout {
    fn data(&mut self, _data: &Bytes) -> Result<(), BoxError> {
        self.armed = false;
        Ok(())
    }
    fn waiting(&mut self, cx: &mut Context<'_>) -> Option<BoxError> {
        let idle = self.idle;
        let deadline = match &mut self.deadline {
            Some(deadline) => {
                if !self.armed {
                    deadline.as_mut().reset(Instant::now() + idle);
                }
                deadline
            }
            None => self.deadline.insert(Box::pin(tokio::time::sleep(idle))),
        };
        self.armed = true;
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Some(Idle(idle).into()),
            Poll::Pending => None,
        }
    }
}

/// A step that shows each data chunk to a function, which may end the body:
/// byte counting, caps, and later usage taps are each one function.
pub struct Tap<F>(pub F);

impl<F> Step for Tap<F>
where
    F: FnMut(&Bytes) -> Result<(), BoxError> + Unpin,
{
    fn data(&mut self, data: &Bytes) -> Result<(), BoxError> {
        (self.0)(data)
    }
}

/// Asks for a response that will be collected before it is sent (buffered
/// Lambda), as a request extension: the gateway then caps its body, and a
/// body over the cap becomes the client's error (and the record's).
#[derive(Debug, Clone, Copy)]
pub struct Buffered {
    /// Payload bytes allowed.
    pub limit: usize,
    /// The limit named in the error.
    pub reported: usize,
    /// Whether a response with these headers travels base64-encoded.
    pub base64: fn(&http::HeaderMap) -> bool,
}

impl Buffered {
    /// The cap for a response with `headers`.
    pub fn cap(&self, headers: &http::HeaderMap) -> Cap {
        Cap {
            limit: self.limit,
            base64: (self.base64)(headers),
            reported: self.reported,
        }
    }
}

/// A limit on how much a body may carry, for responses that are collected
/// before they are sent (buffered Lambda): past it the body fails with
/// [`GatewayError::ResponseTooLarge`].
#[derive(Debug, Clone, Copy)]
pub struct Cap {
    /// Payload bytes allowed.
    pub limit: usize,
    /// The payload travels base64-encoded (4 bytes for each 3).
    pub base64: bool,
    /// The limit named in the error (Lambda's, envelope included).
    pub reported: usize,
}

impl Cap {
    /// A [`Tap`] that fails the body once it carries more than the cap.
    pub fn tap(self) -> Tap<impl FnMut(&Bytes) -> Result<(), BoxError> + Send + Unpin> {
        let mut seen = 0usize;
        Tap(move |data: &Bytes| {
            seen += data.len();
            let payload = if self.base64 {
                seen.div_ceil(3) * 4
            } else {
                seen
            };
            if payload > self.limit {
                return Err(GatewayError::ResponseTooLarge(self.reported).into());
            }
            Ok(())
        })
    }
}

/// The client's request body failed: malformed framing, a connection that
/// broke, or silence. The client's fault, never the upstream's.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body failed")]
pub struct ClientBodyError(#[source] pub BoxError);

/// The client's request body on its way up: its bytes counted into `count`,
/// cut after `idle` of silence, and any failure marked as the client's.
pub fn from_client<B>(
    body: B,
    count: ByteCount,
    idle: Duration,
) -> impl Body<Data = Bytes, Error = BoxError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let counted = Layer::new(
        body,
        Tap(move |data: &Bytes| {
            count.add(data.len());
            Ok(())
        }),
    );
    Layer::new(counted, IdleTimeout::new(idle))
        .map_err(|error| -> BoxError { Box::new(ClientBodyError(error)) })
}

/// The answer for a failure whose cause is the client's request body, found
/// anywhere in `error`'s chain of sources: a 408 for silence, else a 400.
pub fn client_fault(error: &(dyn std::error::Error + 'static)) -> Option<GatewayError> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(ClientBodyError(cause)) = e.downcast_ref::<ClientBodyError>() {
            return Some(match cause.downcast_ref::<Idle>() {
                Some(Idle(idle)) => GatewayError::ClientTimeout(idle.as_secs()),
                None => {
                    GatewayError::InvalidRequestBody("the request body is malformed or incomplete")
                }
            });
        }
        next = e.source();
    }
    None
}

/// Bytes read from the client's request body, counted while it streams
/// upstream (the upload and the response run at the same time).
#[derive(Debug, Clone, Default)]
pub struct ByteCount(Arc<AtomicU64>);

impl ByteCount {
    /// Adds `n` bytes.
    pub fn add(&self, n: usize) {
        self.0.fetch_add(n as u64, Ordering::Relaxed);
    }
    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A body of `parts`, each a frame or an error (the body layers' tests).
#[cfg(test)]
pub(crate) fn test_stream(parts: Vec<Result<&'static str, &'static str>>) -> GatewayBody {
    let frames = futures_util::stream::iter(parts.into_iter().map(|p| {
        p.map(|s| Frame::data(Bytes::from_static(s.as_bytes())))
            .map_err(BoxError::from)
    }));
    GatewayBody::new(http_body_util::StreamBody::new(frames))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::body::test_stream as stream;

    #[tokio::test(start_paused = true)]
    async fn silence_cuts_the_stream() {
        let silent = http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, BoxError>,
        >());
        let mut body = Layer::new(silent, IdleTimeout::new(Duration::from_secs(5)));
        let error = body.frame().await.unwrap().unwrap_err();
        assert!(error.is::<Idle>(), "{error}");
    }

    #[tokio::test(start_paused = true)]
    async fn each_frame_restarts_the_silence_and_a_later_silence_still_cuts() {
        let idle = Duration::from_secs(5);
        // Three frames 4 s apart under a 5 s timeout, then the end: whole.
        let slow = futures_util::stream::unfold(0, |n| async move {
            if n == 3 {
                return None;
            }
            tokio::time::sleep(Duration::from_secs(4)).await;
            Some((Ok::<_, BoxError>(Frame::data(Bytes::from("x"))), n + 1))
        });
        let start = Instant::now();
        let body = Layer::new(
            http_body_util::StreamBody::new(Box::pin(slow)),
            IdleTimeout::new(idle),
        );
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"xxx");
        assert!(start.elapsed() >= Duration::from_secs(12));
        // A frame at once, then silence: cut one timeout after the frame.
        use futures_util::StreamExt;
        let then_silent =
            futures_util::stream::once(async { Ok::<_, BoxError>(Frame::data(Bytes::from("y"))) })
                .chain(futures_util::stream::pending());
        let start = Instant::now();
        let mut body = Layer::new(
            http_body_util::StreamBody::new(Box::pin(then_silent)),
            IdleTimeout::new(idle),
        );
        assert!(body.frame().await.unwrap().unwrap().is_data());
        let error = body.frame().await.unwrap().unwrap_err();
        assert!(error.is::<Idle>(), "{error}");
        assert_eq!(start.elapsed(), idle);
    }

    #[tokio::test]
    async fn base64_payloads_count_their_encoded_size() {
        let cap = Cap {
            limit: 8,
            base64: true,
            reported: 8,
        };
        // 6 bytes are 8 in base64: allowed; 7 are 12: refused.
        let ok = Layer::new(stream(vec![Ok("abcdef")]), cap.tap());
        assert!(ok.collect().await.is_ok());
        let big = Layer::new(stream(vec![Ok("abcdefg")]), cap.tap());
        assert!(big.collect().await.is_err());
    }
}
