//! Response and request bodies, built from small layers over any body.
//!
//! Nothing here buffers: each [`Layer`] passes frames through as they
//! arrive, showing them to its [`Step`]. A proxied response is, from the
//! inside out:
//!
//! 1. the upstream's body;
//! 2. [`IdleTimeout`]: cut when the upstream goes silent too long;
//! 3. a [`Cap`] (buffered Lambda only): refuse to grow past Lambda's limit;
//! 4. [`Completion`]: counts what was sent, sets the record's outcome, and
//!    runs the completion hooks exactly once.
//!
//! The gateway's own answers (errors, preflights) are a full body under the
//! same [`Completion`] layer. On the way up, [`from_client`] counts the
//! request body into the record, cuts a silent upload, and marks its failures
//! as the client's. New behaviour (a usage tap, an SSE filter) is one
//! more layer, in the place the list above gives it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use crate::error::GatewayError;
use crate::record::{BoxFuture, ByteCount, Hooks, Outcome, Record};

/// The error type of gateway bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
}

/// A body with one [`Step`] over it, passing every frame through as it comes.
pub struct Layer<B, S> {
    inner: B,
    step: S,
}

impl<B, S> Layer<B, S> {
    /// Puts `step` over `inner`.
    pub fn new(inner: B, step: S) -> Self {
        Self { inner, step }
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
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
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

/// Cuts a body that yields no frame for `idle`, counted from the first
/// time it is asked for one (a body not yet asked for is not silent).
pub struct IdleTimeout {
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    armed: bool,
}

impl IdleTimeout {
    /// The step for a silence of at most `idle`.
    pub fn new(idle: Duration) -> Self {
        Self {
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            armed: false,
        }
    }

    fn rearm(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
        self.armed = true;
    }
}

impl Step for IdleTimeout {
    fn data(&mut self, _data: &Bytes) -> Result<(), BoxError> {
        self.rearm();
        Ok(())
    }
    fn waiting(&mut self, cx: &mut Context<'_>) -> Option<BoxError> {
        if !self.armed {
            self.rearm();
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Some(Idle(self.idle).into()),
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

/// Completion work that outlived its response body (the client left, so
/// nobody polls the body to its end): spawned, and counted so that a Lambda
/// runner can wait for it before the container may be frozen.
#[derive(Debug, Default)]
pub struct Pending {
    count: AtomicUsize,
    settled: Notify,
}

impl Pending {
    /// Runs `work` in the background, counted until it ends.
    pub fn spawn(self: &Arc<Self>, work: BoxFuture<()>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.count.fetch_add(1, Ordering::SeqCst);
        let pending = self.clone();
        runtime.spawn(async move {
            work.await;
            if pending.count.fetch_sub(1, Ordering::SeqCst) == 1 {
                pending.settled.notify_waiters();
            }
        });
    }

    /// Resolves once no spawned completion work is left.
    pub async fn settled(&self) {
        loop {
            let notified = self.settled.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// What a body's poll yields.
type Polled = Result<Frame<Bytes>, BoxError>;

/// The one completion point of a request: counts the bytes sent, decides the
/// outcome, and runs the hooks once, before the body reports its end (or, if
/// the body is dropped first, in the background via [`Pending`]).
pub struct Completion<B> {
    inner: B,
    pending: Arc<Pending>,
    state: Option<Finishing>,
    running: Option<BoxFuture<()>>,
    ending: Option<Option<Result<Frame<Bytes>, BoxError>>>,
    saw_end: bool,
}

struct Finishing {
    record: Record,
    hooks: Hooks,
    /// Whether the status already went out (streaming) or can still change
    /// (a collected, buffered response).
    committed: bool,
}

impl<B> Completion<B> {
    /// Wraps `inner`; `committed` is false when the response head can still
    /// be replaced by an error (buffered Lambda).
    pub fn new(
        inner: B,
        record: Record,
        hooks: Hooks,
        pending: Arc<Pending>,
        committed: bool,
    ) -> Self {
        Self {
            inner,
            pending,
            state: Some(Finishing {
                record,
                hooks,
                committed,
            }),
            running: None,
            ending: None,
            saw_end: false,
        }
    }

    /// Ends the record with `outcome` and starts the hooks.
    fn start_hooks(&mut self, outcome: Outcome, error: Option<&BoxError>) -> Option<BoxFuture<()>> {
        let Finishing {
            mut record,
            hooks,
            committed,
            ..
        } = self.state.take()?;
        record.outcome = outcome;
        if let Some(error) = error {
            let gateway = error.downcast_ref::<GatewayError>();
            if !committed {
                // The client gets an error instead of this body: say so.
                let error = gateway.cloned().unwrap_or(GatewayError::UpstreamFailed);
                record.status = error.status().as_u16();
                record.code = Some(error.code());
            }
            tracing::warn!(error = %error, "response stream ended early");
        }
        let work: Vec<BoxFuture<()>> = hooks.iter().map(|h| h.finish(&record)).collect();
        Some(Box::pin(async move {
            futures_util::future::join_all(work).await;
        }))
    }
}

impl<B> Body for Completion<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Polled>> {
        let this = self.get_mut();
        if this.ending.is_none() {
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(frame) => frame,
            };
            match frame {
                Some(Ok(frame)) => {
                    if let (Some(data), Some(state)) = (frame.data_ref(), this.state.as_mut()) {
                        state.record.bytes_out += data.len() as u64;
                    }
                    this.saw_end = this.inner.is_end_stream();
                    return Poll::Ready(Some(Ok(frame)));
                }
                None => {
                    this.saw_end = true;
                    this.running = this.start_hooks(Outcome::Complete, None);
                    this.ending = Some(None);
                }
                Some(Err(error)) => {
                    let outcome = if error.is::<GatewayError>() {
                        Outcome::GatewayError
                    } else {
                        Outcome::UpstreamStreamError
                    };
                    this.running = this.start_hooks(outcome, Some(&error));
                    this.ending = Some(Some(Err(error)));
                }
            }
        }
        if let Some(running) = this.running.as_mut() {
            if running.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.running = None;
        }
        Poll::Ready(this.ending.as_mut().and_then(Option::take))
    }

    fn is_end_stream(&self) -> bool {
        // Only once the hooks ran: the server then polls once more after the
        // last frame, and that poll runs them.
        self.state.is_none() && self.running.is_none() && self.ending.is_some()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Completion<B> {
    fn drop(&mut self) {
        let outcome = if self.saw_end {
            // Every byte went out; only the closing poll never came.
            Outcome::Complete
        } else {
            Outcome::ClientClosed
        };
        if let Some(work) = self.start_hooks(outcome, None).or(self.running.take()) {
            self.pending.spawn(work);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Finish;
    use http::Method;
    use std::sync::Mutex;

    /// A hook that keeps what it saw, after an await.
    /// What a hook saw: outcome, bytes out, status, code.
    type Seen = Arc<Mutex<Vec<(Outcome, u64, u16, Option<&'static str>)>>>;

    #[derive(Default)]
    struct Keep(Seen);

    impl Finish for Keep {
        fn finish(&self, record: &Record) -> BoxFuture<()> {
            let seen = self.0.clone();
            let fact = (record.outcome, record.bytes_out, record.status, record.code);
            Box::pin(async move {
                tokio::task::yield_now().await;
                seen.lock().unwrap().push(fact);
            })
        }
    }

    fn completion<B>(body: B, committed: bool) -> (Completion<B>, Seen, Arc<Pending>) {
        let keep = Keep::default();
        let seen = keep.0.clone();
        let mut record = Record::start(&Method::GET, "/x", Instant::now());
        record.status = 200;
        let pending = Arc::new(Pending::default());
        let hooks: Hooks = Arc::new([Arc::new(keep) as Arc<dyn Finish>]);
        (
            Completion::new(body, record, hooks, pending.clone(), committed),
            seen,
            pending,
        )
    }

    fn stream(parts: Vec<Result<&'static str, &'static str>>) -> GatewayBody {
        let frames = futures_util::stream::iter(parts.into_iter().map(|p| {
            p.map(|s| Frame::data(Bytes::from_static(s.as_bytes())))
                .map_err(BoxError::from)
        }));
        GatewayBody::new(http_body_util::StreamBody::new(frames))
    }

    #[tokio::test]
    async fn hooks_run_once_before_the_end_is_reported() {
        let (body, seen, _) = completion(stream(vec![Ok("ab"), Ok("cde")]), true);
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"abcde");
        assert_eq!(*seen.lock().unwrap(), [(Outcome::Complete, 5, 200, None)]);
    }

    #[tokio::test]
    async fn a_dropped_body_finishes_in_the_background() {
        let (mut body, seen, pending) = completion(stream(vec![Ok("ab"), Ok("c")]), true);
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "ab");
        drop(body);
        pending.settled().await;
        assert_eq!(
            *seen.lock().unwrap(),
            [(Outcome::ClientClosed, 2, 200, None)]
        );
    }

    #[tokio::test]
    async fn an_uncommitted_head_takes_the_errors_status() {
        let cap = Cap {
            limit: 4,
            base64: false,
            reported: 99,
        };
        let capped = GatewayBody::new(Layer::new(stream(vec![Ok("abc"), Ok("de")]), cap.tap()));
        let (body, seen, _) = completion(capped, false);
        let error = body.collect().await.unwrap_err();
        assert_eq!(
            error.downcast_ref::<GatewayError>(),
            Some(&GatewayError::ResponseTooLarge(99))
        );
        assert_eq!(
            *seen.lock().unwrap(),
            [(Outcome::GatewayError, 3, 502, Some("response_too_large"))]
        );
        // Committed (streamed): the status the client already got stays.
        let (body, seen, _) = completion(stream(vec![Ok("a"), Err("reset")]), true);
        assert!(body.collect().await.is_err());
        assert_eq!(
            *seen.lock().unwrap(),
            [(Outcome::UpstreamStreamError, 1, 200, None)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn silence_cuts_the_stream() {
        let silent = http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, BoxError>,
        >());
        let mut body = Layer::new(silent, IdleTimeout::new(Duration::from_secs(5)));
        let error = body.frame().await.unwrap().unwrap_err();
        assert!(error.is::<Idle>(), "{error}");
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
