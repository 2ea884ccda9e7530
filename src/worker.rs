//! Which worker the current thread is, with thread per core (`global.work_stealing =
//! false`): worker 0 is the server's own thread (and every thread of a work-stealing
//! scheduler), workers 1 to n-1 set their index when they start.
//!
//! Sockets are registered with the event loop of the worker that opened them, so a
//! connection kept for reuse is best used again by that worker: used by another, every
//! readiness event would cross threads.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The most workers any server of this process runs (1 with work stealing).
static COUNT: AtomicUsize = AtomicUsize::new(1);

/// The current thread's worker.
pub(crate) fn index() -> usize {
    INDEX.with(Cell::get)
}

/// Called by a worker thread as it starts.
pub(crate) fn set_index(index: usize) {
    INDEX.with(|i| i.set(index));
}

/// Records that a server runs `count` workers, before it builds anything that keeps
/// per-worker state.
pub(crate) fn started(count: usize) {
    COUNT.fetch_max(count, Ordering::Relaxed);
}

/// How many per-worker slots to keep.
pub(crate) fn count() -> usize {
    COUNT.load(Ordering::Relaxed)
}

/// How far ahead the scheduler's next timer is kept while it runs.
const TIMER_NEAR: std::time::Duration = std::time::Duration::from_millis(100);

/// A timer that is always due within [`TIMER_NEAR`], for as long as the scheduler runs.
///
/// tokio's timer wakes its event loop (a write to an eventfd) whenever a timer is set
/// earlier than the earliest one the loop last went to sleep for: it cannot tell
/// whether the loop is asleep. Short connections come and go between two sleeps, so
/// when only long timers (reloads, health checks, pools) are left at a sleep, nearly
/// every new connection's first timer costs that write and a wake-up. With this timer
/// always nearer than any connection's, none does; it costs one wake-up per
/// `TIMER_NEAR`.
pub(crate) async fn keep_timers_near(stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(TIMER_NEAR) => {}
        }
    }
}
