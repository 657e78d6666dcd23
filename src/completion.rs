//! The one completion point of a request: the outermost layer of every
//! response body. It counts the bytes sent, decides how the response ended,
//! and hands the request's [`Record`] to the completion hooks exactly once,
//! before the body reports its end, so that on Lambda the hooks finish inside
//! the invocation. A body dropped early (the client left) finishes its hooks
//! in the background, counted by [`Pending`] so that a Lambda runner can wait
//! for them.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;

use crate::body::{BoxError, Polled};
use crate::error::GatewayError;
use crate::record::{BoxFuture, Hooks, Outcome, Record};

/// Completion work that outlived its response body (the client left, so
/// nobody polls the body to its end): spawned, and counted so that a Lambda
/// runner can wait for it before the container may be frozen.
#[derive(Debug, Default)]
pub struct Pending {
    count: AtomicUsize,
    settled: Notify,
}

impl Pending {
    /// Runs `work` in the background, counted until it ends. Work that is
    /// done at its first poll (a log line, a channel send: most hooks) is
    /// finished here instead, which saves a task per request.
    pub fn spawn(self: &Arc<Self>, mut work: BoxFuture<()>) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if work.as_mut().poll(&mut cx).is_ready() {
            return;
        }
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
    /// An event stream: a cut upstream ends it with an error event.
    events: bool,
}

/// The last event of a stream whose upstream broke off (reset, or silent
/// past `UPSTREAM_IDLE_TIMEOUT_SECS`): an OpenAI-shaped error, and no
/// `[DONE]`, so that the official SDKs raise instead of handing back a
/// truncated answer as if it were whole.
pub const CUT_STREAM_EVENT: &[u8] = b"data: {\"error\":{\"message\":\"the upstream's stream broke off before it ended; the answer is incomplete\",\"type\":\"server_error\",\"param\":null,\"code\":\"upstream_stream_error\"}}\n\n";

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
            events: false,
        }
    }

    /// For an event stream (`text/event-stream`) that has started: a cut
    /// upstream ends it with [`CUT_STREAM_EVENT`] instead of a broken body.
    pub fn ending_cuts_with_an_event(mut self) -> Self {
        self.events = true;
        self
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
        // What is left to wait for: usually one hook's work (the usage
        // store's), run as it is; several are joined.
        let mut work = hooks.iter().filter_map(|h| h.finish(&record));
        let first = work.next()?;
        let rest: Vec<BoxFuture<()>> = work.collect();
        if rest.is_empty() {
            return Some(first);
        }
        Some(Box::pin(async move {
            futures_util::future::join_all(std::iter::once(first).chain(rest)).await;
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
                    if !this.saw_end {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    // The last frame (the body knows its length): the hooks
                    // run before it goes out, so a client holding the whole
                    // response also sees what it did (its usage settled).
                    this.running = this.start_hooks(Outcome::Complete, None);
                    this.ending = Some(Some(Ok(frame)));
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
                    let committed = this.state.as_ref().is_some_and(|s| s.committed);
                    if let Some(state) = this.state.as_mut().filter(|_| this.events) {
                        state.record.bytes_out += CUT_STREAM_EVENT.len() as u64;
                    }
                    this.running = this.start_hooks(outcome, Some(&error));
                    this.ending = Some(Some(
                        match this.events && committed && outcome == Outcome::UpstreamStreamError {
                            true => Ok(Frame::data(Bytes::from_static(CUT_STREAM_EVENT))),
                            false => Err(error),
                        },
                    ));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::{Cap, GatewayBody, Layer};
    use crate::record::Finish;
    use http::Method;
    use http_body_util::BodyExt;
    use std::sync::Mutex;
    use tokio::time::Instant;

    /// A hook that keeps what it saw, after an await.
    /// What a hook saw: outcome, bytes out, status, code.
    type Seen = Arc<Mutex<Vec<(Outcome, u64, u16, Option<&'static str>)>>>;

    #[derive(Default)]
    struct Keep(Seen);

    impl Finish for Keep {
        fn finish(&self, record: &Record) -> Option<BoxFuture<()>> {
            let seen = self.0.clone();
            let fact = (record.outcome, record.bytes_out, record.status, record.code);
            Some(Box::pin(async move {
                tokio::task::yield_now().await;
                seen.lock().unwrap().push(fact);
            }))
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

    use crate::body::test_stream as stream;

    /// A hook whose work is done when `finish` returns.
    #[derive(Default)]
    struct Count(std::sync::atomic::AtomicUsize);

    impl Finish for Count {
        fn finish(&self, _: &Record) -> Option<BoxFuture<()>> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            None
        }
    }

    fn with_hooks<B>(body: B, hooks: Hooks) -> Completion<B> {
        let record = Record::start(&Method::GET, "/x", Instant::now());
        Completion::new(body, record, hooks, Arc::new(Pending::default()), true)
    }

    #[tokio::test]
    async fn done_and_waited_for_hooks_each_run_once_in_any_mix() {
        let (count, keep, also) = (Arc::new(Count::default()), Keep::default(), Keep::default());
        let (seen, also_seen) = (keep.0.clone(), also.0.clone());
        let hooks: Hooks = Arc::new([
            count.clone() as Arc<dyn Finish>,
            Arc::new(keep),
            count.clone(),
            Arc::new(also),
        ]);
        let collected = with_hooks(stream(vec![Ok("ab")]), hooks).collect().await;
        assert_eq!(&collected.unwrap().to_bytes()[..], b"ab");
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(seen.lock().unwrap().len(), 1);
        assert_eq!(also_seen.lock().unwrap().len(), 1);
        // Only hooks that are done at once: the body still ends, and a
        // dropped one runs them as it goes.
        let count = Arc::new(Count::default());
        let hooks: Hooks = Arc::new([count.clone() as Arc<dyn Finish>]);
        let body = with_hooks(stream(vec![Ok("a"), Ok("b")]), hooks.clone());
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"ab");
        let mut body = with_hooks(stream(vec![Ok("a"), Ok("b")]), hooks);
        body.frame().await.unwrap().unwrap();
        drop(body);
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 2);
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
}
