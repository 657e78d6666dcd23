//! The response body the gateway hands back, in every mode.
//!
//! Either a small body of the gateway's own (an error) or the upstream's
//! stream, passed through frame by frame as it arrives: nothing is buffered.
//! The stream is cut when the upstream goes silent for longer than the idle
//! timeout. When the body ends, fails or is dropped (the client left), the
//! request's access-log line is written with the bytes sent.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::telemetry::AccessLog;

/// The error type of gateway bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body: the gateway's own bytes or the upstream's stream.
pub struct GatewayBody {
    kind: Kind,
    sent: u64,
    log: Option<AccessLog>,
}

enum Kind {
    Full(Option<Bytes>),
    Upstream {
        body: reqwest::Body,
        idle: Duration,
        deadline: Pin<Box<Sleep>>,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing for {0:?}; stream cut")]
struct IdleTimeout(Duration);

impl GatewayBody {
    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self {
            kind: Kind::Full(Some(bytes.into())),
            sent: 0,
            log: None,
        }
    }

    /// The upstream's stream, cut after `idle` without a frame.
    pub fn upstream(body: reqwest::Body, idle: Duration) -> Self {
        Self {
            kind: Kind::Upstream {
                body,
                idle,
                deadline: Box::pin(tokio::time::sleep(idle)),
            },
            sent: 0,
            log: None,
        }
    }

    /// The bytes of a body made with [`GatewayBody::full`]; empty for a stream.
    pub fn into_full(mut self) -> Bytes {
        match &mut self.kind {
            Kind::Full(bytes) => bytes.take().unwrap_or_default(),
            Kind::Upstream { .. } => Bytes::new(),
        }
    }

    /// Writes `log` when this body is finished or dropped.
    pub(crate) fn with_log(mut self, log: AccessLog) -> Self {
        self.log = Some(log);
        self
    }

    fn finish(&mut self, outcome: &'static str) {
        if let Some(log) = self.log.take() {
            log.write(self.sent, outcome);
        }
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

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = match &mut this.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream {
                body,
                idle,
                deadline,
            } => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    deadline.as_mut().reset(Instant::now() + *idle);
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BoxError::from(e)))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BoxError::from(IdleTimeout(*idle))))),
                    Poll::Pending => Poll::Pending,
                },
            },
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
                // The server may never poll a body past its last frame.
                if this.is_end_stream() {
                    this.finish("complete");
                }
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::warn!(error = %e, "response stream ended early");
                this.finish("upstream_stream_error");
            }
            Poll::Ready(None) => this.finish("complete"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream { body, .. } => body.size_hint(),
        }
    }
}

impl Drop for GatewayBody {
    fn drop(&mut self) {
        self.finish("client_closed");
    }
}

/// A request body that counts the bytes it yields into a shared counter.
pub struct Counted<B> {
    inner: B,
    count: Arc<AtomicU64>,
}

impl<B> Counted<B> {
    /// Wraps `inner`, adding its data lengths to `count`.
    pub fn new(inner: B, count: Arc<AtomicU64>) -> Self {
        Self { inner, count }
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
