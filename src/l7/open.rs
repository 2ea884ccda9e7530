//! A connection's requests in flight, and when the last one began or ended: on
//! HTTP/2, where a client's pings and other frames do not count as activity, this is
//! what tells a connection in use from an idle one.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// The requests of one connection.
#[derive(Debug)]
pub(super) struct Requests {
    /// Requests whose response is not over yet.
    open: AtomicUsize,
    /// When the last request began or ended, in milliseconds since `born`.
    last_ms: AtomicU64,
    born: Instant,
    /// Set by an HTTP/2 request: then only requests count as activity.
    h2: AtomicBool,
}

impl Default for Requests {
    fn default() -> Self {
        Requests {
            open: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            born: Instant::now(),
            h2: AtomicBool::new(false),
        }
    }
}

impl Requests {
    /// The connection carries HTTP/2.
    pub(super) fn set_h2(&self) {
        self.h2.store(true, Ordering::Relaxed);
    }

    pub(super) fn h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    /// Requests whose response is not over yet.
    pub(super) fn in_flight(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// How long since the last request began or ended (or the connection opened).
    pub(super) fn quiet(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(last)
    }

    fn touch(&self) {
        let ms = self.born.elapsed().as_millis().min(u128::from(u64::MAX)) as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }
}

/// What holds a connection's [`Requests`] (its connection state, which keeps them in
/// place rather than in an allocation of their own).
pub(super) trait Counted: Send + Sync {
    fn requests(&self) -> &Requests;
}

impl Counted for Requests {
    fn requests(&self) -> &Requests {
        self
    }
}

/// A request of the connection `holder` began: it counts until the returned guard is
/// dropped.
pub(super) fn began<T: Counted + 'static>(holder: &Arc<T>) -> OpenRequest {
    let r = holder.requests();
    r.open.fetch_add(1, Ordering::Relaxed);
    if r.h2() {
        r.touch();
    }
    OpenRequest(holder.clone())
}

/// A request whose response is not over yet; its end counts as the connection's last
/// activity.
pub struct OpenRequest(Arc<dyn Counted>);

impl Drop for OpenRequest {
    fn drop(&mut self) {
        let r = self.0.requests();
        // The time of the last request matters only where requests time the
        // connection out (HTTP/2); HTTP/1.1 reads no clock here.
        if r.h2() {
            r.touch();
        }
        r.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn http2_requests_count_as_activity_until_their_end() {
        let r = Arc::new(Requests::default());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(r.quiet(), Duration::from_secs(5));
        r.set_h2();
        let open = began(&r);
        assert_eq!((r.in_flight(), r.quiet()), (1, Duration::ZERO));
        tokio::time::advance(Duration::from_secs(3)).await;
        drop(open);
        assert_eq!((r.in_flight(), r.quiet()), (0, Duration::ZERO));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(r.quiet(), Duration::from_secs(2));
    }
}
