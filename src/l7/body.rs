//! Response bodies of the HTTP engine. Bodies stream frame by frame; none is collected.
//!
//! - [`ResponseBody`]: what the client receives: a short error text, a backend's body
//!   (whose connection returns to the pool when it ends), a static file, or a cached
//!   response.
//! - [`ClientBody`]: that body as it is sent, with the access record it completes.
//!
//! The request side is in `request_body`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::h1;
use super::pool::BackendPool;
pub use super::request_body::BoxError;
use crate::upstream::Lease;

/// A backend's response body. Holds the lease (the request is in flight on the
/// backend until its body ends) and the pool its connection returns to once the
/// response ended cleanly and the request was sent whole (a backend may answer before
/// reading it all; that connection is still busy and is closed).
pub struct UpstreamBody {
    pub inner: h1::ResponseBody,
    pub pool: Arc<BackendPool>,
    pub lease: Option<Lease>,
}

impl UpstreamBody {
    fn finish(&mut self) {
        if let Some(conn) = self.inner.take_conn() {
            self.pool.checkin(conn);
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

/// A backend's HTTP/2 response body (trailers included), with the lease and the
/// request's place on its connection, both held until it ends.
pub struct Upstream2Body {
    pub inner: super::h2::ResponseStream,
    pub in_flight: Option<super::h2::InFlight>,
    pub lease: Option<Lease>,
}

pub enum ResponseBody {
    Full(Option<Bytes>),
    Upstream(UpstreamBody),
    Upstream2(Box<Upstream2Body>),
    Static(Box<hyper_staticfile::Body>),
    /// On its way to the client and into the cache.
    Tee(Box<crate::cache::tee::Tee<ResponseBody>>),
    /// Read from a response being stored (as it fills, at the origin's pace).
    Fill(crate::cache::fill::FillReader),
    /// Compressed on its way to the client.
    Compressed(Box<super::compress::Compressed<ResponseBody>>),
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
                    if let Some(lease) = u.lease.as_mut() {
                        lease.set_outcome(crate::upstream::BackendOutcome::Failure);
                    }
                    Poll::Ready(Some(Err(e)))
                }
                other => other,
            },
            ResponseBody::Upstream2(u) => match Pin::new(&mut u.inner).poll_frame(cx) {
                Poll::Ready(None) => {
                    u.in_flight.take();
                    u.lease.take();
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Err(e))) => {
                    if let Some(lease) = u.lease.as_mut() {
                        lease.set_outcome(crate::upstream::BackendOutcome::Failure);
                    }
                    Poll::Ready(Some(Err(Box::new(e) as BoxError)))
                }
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Pending => Poll::Pending,
            },
            ResponseBody::Static(s) => Pin::new(s)
                .poll_frame(cx)
                .map(|o| o.map(|r| r.map_err(|e| Box::new(e) as BoxError))),
            ResponseBody::Tee(t) => Pin::new(t.as_mut()).poll_frame(cx),
            ResponseBody::Fill(f) => Pin::new(f).poll_frame(cx),
            ResponseBody::Compressed(c) => Pin::new(c.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(b) => b.is_none(),
            ResponseBody::Upstream(u) => u.inner.is_end_stream(),
            ResponseBody::Upstream2(u) => u.inner.is_end_stream(),
            ResponseBody::Static(s) => s.is_end_stream(),
            ResponseBody::Tee(t) => t.is_end_stream(),
            ResponseBody::Fill(f) => f.is_end_stream(),
            ResponseBody::Compressed(c) => c.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ResponseBody::Upstream(u) => u.inner.size_hint(),
            ResponseBody::Upstream2(u) => u.inner.size_hint(),
            ResponseBody::Static(s) => s.size_hint(),
            ResponseBody::Tee(t) => t.size_hint(),
            ResponseBody::Fill(f) => f.size_hint(),
            ResponseBody::Compressed(_) => SizeHint::default(),
        }
    }
}

/// The body the client receives: counts what is sent and logs the access line when
/// the response is over (finished, failed or abandoned).
pub struct ClientBody {
    pub inner: ResponseBody,
    pub record: Option<super::access::Record>,
    /// Ends the request for the connection's idle accounting when dropped.
    pub _open: Option<super::open::OpenRequest>,
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
            } else if let (Some(t), Some(line)) = (frame.trailers_ref(), record.line.as_mut()) {
                line.grpc_status = super::access::grpc_status(t).or(line.grpc_status);
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
