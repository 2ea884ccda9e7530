//! Copying a response body of unknown length into the cache as it streams to its
//! client: the copy is stored once the body ended intact within the size limit and
//! the budget of bytes being stored.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_cache_semantics::CachePolicy;

use super::fill::Reservation;
use super::{Cache, Flight, Key, Stored};

/// What is needed to store a response once its body has arrived whole.
pub struct Pending {
    pub cache: Arc<Cache>,
    pub key: Key,
    pub uri: Uri,
    pub request: HeaderMap,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub policy: CachePolicy,
    /// Requests waiting on this one look again when it is dropped.
    pub flight: Option<Flight>,
}

impl Pending {
    pub fn store(self, body: Bytes) {
        let stored = Stored::new(
            self.policy,
            self.uri,
            &self.request,
            self.status,
            self.headers,
            body,
            SystemTime::now(),
        );
        self.cache.insert(self.key, stored);
    }
}

/// A response body of unknown length on its way to the client, copied (by reference)
/// for the store. Stored only once it ended intact within the size limit and the
/// budget of bytes being stored; past either, it goes on streaming, unbuffered.
pub struct Tee<B: Body> {
    inner: B,
    chunks: Vec<Bytes>,
    size: u64,
    max: u64,
    pending: Option<Pending>,
    /// What the copy holds of `cache.max_inflight`.
    reservation: Option<Reservation>,
}

impl<B: Body> Tee<B> {
    pub fn new(inner: B, max: u64, pending: Pending, reservation: Option<Reservation>) -> Self {
        Tee {
            inner,
            chunks: Vec::new(),
            size: 0,
            max,
            pending: Some(pending),
            reservation,
        }
    }

    fn abandon(&mut self) {
        self.pending = None;
        self.chunks = Vec::new();
        self.reservation = None;
    }

    fn complete(&mut self) {
        let Some(p) = self.pending.take() else { return };
        self.reservation = None;
        let body = match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks.pop().unwrap_or_default(),
            _ => {
                let mut all = BytesMut::with_capacity(self.size as usize);
                for c in self.chunks.drain(..) {
                    all.extend_from_slice(&c);
                }
                all.freeze()
            }
        };
        p.store(body);
    }
}

impl<B: Body> Drop for Tee<B> {
    fn drop(&mut self) {
        if self.pending.is_some() && self.inner.is_end_stream() {
            self.complete();
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tee<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_frame(cx);
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), true) = (frame.data_ref(), this.pending.is_some()) {
                    this.size += data.len() as u64;
                    let held = this
                        .reservation
                        .as_mut()
                        .is_some_and(|r| r.grow(data.len() as u64));
                    if this.size > this.max || !held {
                        // Too large to store, or too much being stored at once: stream
                        // the rest, keep nothing.
                        this.abandon();
                    } else {
                        this.chunks.push(data.clone());
                    }
                }
                // The server stops polling once the body says it is over.
                if this.inner.is_end_stream() {
                    this.complete();
                }
            }
            Poll::Ready(Some(Err(_))) => this.abandon(),
            Poll::Ready(None) => this.complete(),
            Poll::Pending => {}
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
