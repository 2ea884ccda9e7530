//! How many requests a backend lets one HTTP/2 connection carry at once: its
//! `SETTINGS_MAX_CONCURRENT_STREAMS`, set by the connection as its backend's SETTINGS
//! arrive. The pool opens another connection when the open ones are at that number.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// What a connection's backend allows, as far as its SETTINGS have said.
#[derive(Debug, Default)]
pub(crate) struct Limits {
    /// Concurrent streams allowed; 0 until the first SETTINGS frame arrived.
    streams: AtomicUsize,
    seen: Notify,
}

impl Limits {
    /// Requests the connection takes at once now: one until the backend's first
    /// SETTINGS arrived, then what they say (a limit of 0 counts as 1).
    pub(crate) fn streams(&self) -> usize {
        self.streams.load(Ordering::Acquire).max(1)
    }

    /// Whether the backend's first SETTINGS arrived.
    pub(crate) fn known(&self) -> bool {
        self.streams.load(Ordering::Acquire) != 0
    }

    /// The backend's SETTINGS allow `n` streams at once.
    pub(crate) fn set(&self, n: usize) {
        self.streams.store(n.max(1), Ordering::Release);
        self.seen.notify_waiters();
    }

    /// Waits up to `within` for the backend's first SETTINGS; whether they arrived.
    pub(super) async fn arrived(&self, within: Duration) -> bool {
        let notified = self.seen.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.known() {
            return true;
        }
        tokio::time::timeout(within, notified).await.is_ok() || self.known()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_limit_is_one_until_settings_and_zero_counts_as_one() {
        let limits = Limits::default();
        assert!(!limits.known());
        assert_eq!(limits.streams(), 1);
        limits.set(50);
        assert!(limits.known());
        assert_eq!(limits.streams(), 50);
        limits.set(0);
        assert_eq!(limits.streams(), 1);
        assert!(limits.known());
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_settings_ends_when_they_arrive_or_in_time() {
        let limits = Arc::new(Limits::default());
        assert!(!limits.arrived(Duration::from_secs(5)).await);
        let l = limits.clone();
        let waiter = tokio::spawn(async move { l.arrived(Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        limits.set(100);
        assert!(waiter.await.unwrap());
        assert!(limits.arrived(Duration::ZERO).await);
    }
}
