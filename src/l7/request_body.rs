//! The body sent to a backend: nothing, or the client's body with `max_body_size`
//! and `body_timeout` enforced and its bytes counted.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Counts of one request's body, shared with its access record.
#[derive(Debug, Default)]
pub struct BodyStats {
    pub bytes: AtomicU64,
    pub too_large: AtomicBool,
    /// The whole body was read from the client (and handed on).
    pub finished: AtomicBool,
    /// Signalled once `finished` is set.
    pub done: tokio::sync::Notify,
}

impl BodyStats {
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// Completes once the whole body has been read.
    pub async fn wait_finished(&self) {
        if !self.is_finished() {
            self.done.notified().await;
        }
    }

    fn finish(&self) {
        self.finished.store(true, Ordering::Release);
        self.done.notify_one();
    }
}

#[derive(Debug, thiserror::Error)]
#[error("request body over max_body_size")]
pub struct TooLarge;

#[derive(Debug, thiserror::Error)]
#[error("request body not received within body_timeout")]
pub struct TooLate;

/// A client's request body as its connection delivers it: an HTTP/1.x connection's, an
/// HTTP/2 stream's, or an HTTP/3 stream's (boxed: its stream state is large, and
/// every request of the other protocols would carry room for it).
pub enum Inbound {
    H1(super::serve_h1::H1Body),
    H2(super::serve_h2::H2Body),
    H3(Box<super::http3::H3Body>),
}

impl Body for Inbound {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Inbound::H1(b) => Pin::new(b).poll_frame(cx),
            Inbound::H2(b) => Pin::new(b).poll_frame(cx),
            Inbound::H3(b) => Pin::new(&mut **b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Inbound::H1(b) => b.is_end_stream(),
            Inbound::H2(b) => b.is_end_stream(),
            Inbound::H3(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Inbound::H1(b) => b.size_hint(),
            Inbound::H2(b) => b.size_hint(),
            Inbound::H3(b) => b.size_hint(),
        }
    }
}

pub struct RequestBody {
    inner: Option<Inbound>,
    /// 0: no limit.
    limit: u64,
    seen: u64,
    stats: Option<Arc<BodyStats>>,
    /// `body_timeout`: when the whole body must have arrived. Checked while the body
    /// is read after the backend already answered; before that, the forwarding waits
    /// on it itself.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl RequestBody {
    pub fn empty() -> Self {
        RequestBody {
            inner: None,
            limit: 0,
            seen: 0,
            stats: None,
            deadline: None,
        }
    }

    pub fn stream(
        inner: Inbound,
        limit: u64,
        stats: Arc<BodyStats>,
        deadline: tokio::time::Instant,
    ) -> Self {
        RequestBody {
            inner: Some(inner),
            limit,
            seen: 0,
            stats: Some(stats),
            deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if let Some(stats) = &this.stats {
                        stats.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                        if this.limit > 0 && this.seen > this.limit {
                            stats.too_large.store(true, Ordering::Relaxed);
                            return Poll::Ready(Some(Err(Box::new(TooLarge))));
                        }
                    }
                }
                // A writer that stops at `is_end_stream` (HTTP/2's) never polls for
                // the end: the body is whole with its last frame.
                if this.inner.as_ref().is_some_and(Body::is_end_stream) {
                    if let Some(stats) = this.stats.as_ref().filter(|s| !s.is_finished()) {
                        stats.finish();
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => {
                if let Some(stats) = this.stats.as_ref().filter(|s| !s.is_finished()) {
                    stats.finish();
                }
                Poll::Ready(None)
            }
            Poll::Pending => match this.deadline.as_mut().map(|d| d.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => {
                    this.inner = None;
                    Poll::Ready(Some(Err(Box::new(TooLate))))
                }
                _ => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
