//! Body types of the HTTP engine. Bodies stream frame by frame; none is collected.
//!
//! - [`RequestBody`]: what is sent to a backend: nothing, or the client's body with
//!   `max_body_size` enforced and its bytes counted.
//! - [`ResponseBody`]: what the client receives: a short error text, a backend's body
//!   (whose connection returns to the pool when it ends), or a static file.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::pool::{BackendPool, Sender};
use crate::upstream::Lease;

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

pub struct RequestBody {
    inner: Option<Incoming>,
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
        inner: Incoming,
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
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => {
                if let Some(stats) = &this.stats {
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

/// A backend's response body. Holds the lease (the request is in flight on the
/// backend until its body ends) and the connection, which returns to the pool once the
/// response ended cleanly and the request's own body was sent whole (a backend may
/// answer before reading it all; that connection is still busy and is closed).
pub struct UpstreamBody {
    pub inner: Incoming,
    pub conn: Option<(Sender, Arc<BackendPool>)>,
    pub lease: Option<Lease>,
    /// The request's body, if it had one.
    pub request: Option<Arc<BodyStats>>,
}

impl UpstreamBody {
    fn finish(&mut self) {
        if let Some((sender, pool)) = self.conn.take() {
            if self.request.as_ref().is_none_or(|r| r.is_finished()) {
                pool.checkin(sender);
            }
        }
        self.lease.take();
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body dropped before its end leaves the connection mid-response: close it.
        if self.inner.is_end_stream() {
            self.finish();
        }
    }
}

pub enum ResponseBody {
    Full(Option<Bytes>),
    Upstream(UpstreamBody),
    Static(hyper_staticfile::Body),
    /// On its way to the client and into the cache.
    Tee(Box<super::cached::Tee>),
    /// Read from a response being stored (as it fills, at the origin's pace).
    Fill(crate::cache::fill::FillReader),
}

impl ResponseBody {
    pub fn empty() -> Self {
        ResponseBody::Full(None)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Upstream(u) => match Pin::new(&mut u.inner).poll_frame(cx) {
                Poll::Ready(None) => {
                    u.finish();
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Err(e))) => {
                    // Broken mid-way: the connection is not reused, the backend failed.
                    u.conn = None;
                    if let Some(lease) = u.lease.as_mut() {
                        lease.set_outcome(crate::upstream::Outcome::Failure);
                    }
                    Poll::Ready(Some(Err(Box::new(e))))
                }
                other => other.map(|o| o.map(|r| r.map_err(|e| Box::new(e) as BoxError))),
            },
            ResponseBody::Static(s) => Pin::new(s)
                .poll_frame(cx)
                .map(|o| o.map(|r| r.map_err(|e| Box::new(e) as BoxError))),
            ResponseBody::Tee(t) => Pin::new(t.as_mut()).poll_frame(cx),
            ResponseBody::Fill(f) => Pin::new(f).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(b) => b.is_none(),
            ResponseBody::Upstream(u) => u.inner.is_end_stream(),
            ResponseBody::Static(s) => s.is_end_stream(),
            ResponseBody::Tee(t) => t.is_end_stream(),
            ResponseBody::Fill(f) => f.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ResponseBody::Upstream(u) => u.inner.size_hint(),
            ResponseBody::Static(s) => s.size_hint(),
            ResponseBody::Tee(t) => t.size_hint(),
            ResponseBody::Fill(f) => f.size_hint(),
        }
    }
}

/// The body the client receives: counts what is sent and logs the access line when
/// the response is over (finished, failed or abandoned).
pub struct ClientBody {
    pub inner: ResponseBody,
    pub record: Option<super::access::Record>,
    /// Ends the request for the connection's idle accounting when dropped.
    pub _open: Option<super::OpenRequest>,
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(record)) = (&res, this.record.as_mut()) {
            if let Some(d) = frame.data_ref() {
                record.bytes_out += d.len() as u64;
            }
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
