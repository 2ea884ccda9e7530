//! A response on its way into the store: filled at the origin's pace by one task,
//! read by the client that asked for it and by the requests that collapsed onto it,
//! each at its own pace. No reader can slow the fill, so a slow client holds neither
//! the backend connection nor the others waiting on the same key.
//!
//! And the budget of bytes being stored at once (`cache.max_inflight`): every fill
//! and every stored copy being made holds a [`Reservation`] on it.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_cache_semantics::CachePolicy;
use tokio::sync::watch;

/// Bytes of responses being stored at once, against `cache.max_inflight`.
#[derive(Debug)]
pub struct Budget {
    used: AtomicU64,
    max: u64,
}

impl Budget {
    pub fn new(max: u64) -> Arc<Budget> {
        Arc::new(Budget {
            used: AtomicU64::new(0),
            max,
        })
    }

    /// Bytes reserved right now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| {
                u.checked_add(n).filter(|&t| t <= self.max)
            })
            .is_ok()
    }

    /// `n` bytes of the budget, or `None` when that would pass it.
    pub fn reserve(self: &Arc<Self>, n: u64) -> Option<Reservation> {
        self.take(n).then(|| Reservation {
            budget: self.clone(),
            held: n,
        })
    }
}

/// Bytes held on the [`Budget`]; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    held: u64,
}

impl Reservation {
    /// Holds `n` more bytes; `false` (and nothing more held) past the budget.
    pub fn grow(&mut self, n: u64) -> bool {
        let ok = self.budget.take(n);
        if ok {
            self.held += n;
        }
        ok
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.held, Ordering::AcqRel);
    }
}

#[derive(Debug, Default)]
struct State {
    chunks: Vec<Bytes>,
    len: u64,
    /// `Some(true)`: complete; `Some(false)`: broken off.
    end: Option<bool>,
    /// Readers waiting for more.
    wakers: Vec<Waker>,
}

/// One response being filled. Its length is known from the start: only responses
/// that declare it are filled this way.
#[derive(Debug)]
pub struct Fill {
    pub status: StatusCode,
    /// The response's fields as they are stored.
    pub headers: HeaderMap,
    pub policy: CachePolicy,
    /// The `Content-Length` declared.
    pub len: u64,
    /// The leader's values of the fields `Vary` names: who else may read it.
    secondary: super::policy::SecondaryKey,
    state: Mutex<State>,
    done: watch::Sender<Option<bool>>,
    _reservation: Reservation,
}

impl Fill {
    pub fn new(
        status: StatusCode,
        headers: HeaderMap,
        policy: CachePolicy,
        request: &HeaderMap,
        len: u64,
        reservation: Reservation,
    ) -> Arc<Fill> {
        Arc::new(Fill {
            secondary: super::policy::SecondaryKey::of(&headers, request),
            status,
            headers,
            policy,
            len,
            state: Mutex::new(State::default()),
            done: watch::channel(None).0,
            _reservation: reservation,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a request with these fields may be given this response (its `Vary`).
    pub fn same_variant(&self, request: &HeaderMap) -> bool {
        self.secondary.matches(request)
    }

    /// Appends what arrived; `false` when it runs past the declared length (the
    /// fill is then broken off).
    pub fn push(&self, data: Bytes) -> bool {
        let mut s = self.lock();
        if s.end.is_some() {
            return false;
        }
        s.len += data.len() as u64;
        if s.len > self.len {
            drop(s);
            self.finish(false);
            return false;
        }
        if !data.is_empty() {
            s.chunks.push(data);
        }
        for w in s.wakers.drain(..) {
            w.wake();
        }
        true
    }

    /// The body as a whole, once complete at its declared length.
    pub fn body(&self) -> Option<Bytes> {
        let s = self.lock();
        if s.len != self.len {
            return None;
        }
        Some(match s.chunks.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let mut all = BytesMut::with_capacity(self.len as usize);
                for c in many {
                    all.extend_from_slice(c);
                }
                all.freeze()
            }
        })
    }

    /// Ends the fill: complete (`true`, only at the declared length) or broken off.
    pub fn finish(&self, complete: bool) {
        let mut s = self.lock();
        if s.end.is_some() {
            return;
        }
        let complete = complete && s.len == self.len;
        s.end = Some(complete);
        for w in s.wakers.drain(..) {
            w.wake();
        }
        drop(s);
        self.done.send_replace(Some(complete));
    }

    /// Waits (at most `limit`) until the fill has ended; whether it completed.
    pub async fn wait_done(&self, limit: Duration) -> bool {
        let mut rx = self.done.subscribe();
        let ended = tokio::time::timeout(limit, rx.wait_for(Option::is_some)).await;
        matches!(ended, Ok(Ok(v)) if *v == Some(true))
    }

    /// A reader from the start.
    pub fn reader(self: &Arc<Self>) -> FillReader {
        FillReader {
            fill: self.clone(),
            next: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the response broke off before it was complete")]
pub struct BrokenOff;

/// One client's view of a [`Fill`]: every chunk in order, then the end; an error if
/// the fill broke off, so the client's connection is cut rather than a short body
/// passed off as whole.
#[derive(Debug)]
pub struct FillReader {
    fill: Arc<Fill>,
    next: usize,
}

impl Body for FillReader {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let next = self.next;
        let mut s = self.fill.lock();
        if let Some(chunk) = s.chunks.get(next).cloned() {
            drop(s);
            self.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match s.end {
            Some(true) => Poll::Ready(None),
            Some(false) => Poll::Ready(Some(Err(Box::new(BrokenOff)))),
            None => {
                if !s.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    s.wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = self.fill.lock();
        s.end == Some(true) && self.next >= s.chunks.len()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.fill.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn fill(len: u64, budget: &Arc<Budget>) -> Arc<Fill> {
        let headers = HeaderMap::new();
        let policy = super::super::policy::new_policy(
            &"/".parse().unwrap(),
            &HeaderMap::new(),
            StatusCode::OK,
            &headers,
            std::time::SystemTime::now(),
        );
        Fill::new(
            StatusCode::OK,
            headers,
            policy,
            &HeaderMap::new(),
            len,
            budget.reserve(len).unwrap(),
        )
    }

    #[test]
    fn the_budget_is_never_passed_and_comes_back() {
        let b = Budget::new(100);
        let mut r = b.reserve(60).unwrap();
        assert!(b.reserve(41).is_none());
        assert!(!r.grow(41));
        assert!(r.grow(40));
        assert_eq!(b.used(), 100);
        drop(r);
        assert_eq!(b.used(), 0);
        assert!(b.reserve(100).is_some());
        assert!(b.reserve(u64::MAX).is_none());
    }

    #[tokio::test]
    async fn readers_get_every_chunk_at_their_own_pace() {
        let budget = Budget::new(1000);
        let f = fill(6, &budget);
        let early = f.reader();
        assert!(f.push(Bytes::from_static(b"abc")));
        let reader = tokio::spawn(async move { early.collect().await.unwrap().to_bytes() });
        assert!(f.push(Bytes::from_static(b"def")));
        f.finish(true);
        assert_eq!(reader.await.unwrap(), "abcdef");
        // A late reader still gets all of it.
        assert_eq!(f.reader().collect().await.unwrap().to_bytes(), "abcdef");
        assert_eq!(f.body().unwrap(), "abcdef");
        assert!(f.wait_done(Duration::from_secs(1)).await);
        drop(f);
        assert_eq!(budget.used(), 0, "the fill's reservation is given back");
    }

    #[tokio::test]
    async fn a_short_or_long_fill_is_broken_off_for_its_readers() {
        let budget = Budget::new(1000);
        let short = fill(6, &budget);
        short.push(Bytes::from_static(b"abc"));
        short.finish(true);
        assert!(short.reader().collect().await.is_err());
        assert!(short.body().is_none());
        assert!(!short.wait_done(Duration::from_secs(1)).await);
        let long = fill(2, &budget);
        assert!(!long.push(Bytes::from_static(b"abc")));
        assert!(long.reader().collect().await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_the_end_is_bounded() {
        let budget = Budget::new(1000);
        let f = fill(6, &budget);
        assert!(!f.wait_done(Duration::from_secs(5)).await);
    }
}
