//! Racing a busy future against watchers that rarely fire.
//!
//! `tokio::select!` polls every branch whenever the task wakes: a connection's timers
//! and cancellation tokens would be polled for every read and write of every request.
//! [`first`] polls the side future only when one of its own wakers fired, and the main
//! future on every wake-up.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Which future completed first.
pub enum First<A, B> {
    Main(A),
    Side(B),
}

/// Records that the side future was woken, and wakes the task.
struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Runs `main` and `side` until either completes. `side` is polled once at the start
/// and then only after one of its wakers fired.
pub async fn first<A: Future, B: Future>(main: A, side: B) -> First<A::Output, B::Output> {
    let flag = Arc::new(Flag {
        woken: AtomicBool::new(true),
        task: AtomicWaker::new(),
    });
    let side_waker = Waker::from(flag.clone());
    let mut main = pin!(main);
    let mut side = pin!(side);
    poll_fn(|cx| {
        flag.task.register(cx.waker());
        if flag.woken.swap(false, Ordering::AcqRel) {
            let mut side_cx = Context::from_waker(&side_waker);
            if let Poll::Ready(v) = side.as_mut().poll(&mut side_cx) {
                return Poll::Ready(First::Side(v));
            }
        }
        main.as_mut().poll(cx).map(First::Main)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// A future that counts its polls and never completes.
    struct Counting<'a>(&'a AtomicUsize);

    impl Future for Counting<'_> {
        type Output = ();
        fn poll(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn the_side_is_not_polled_when_only_the_main_future_wakes() {
        let polls = AtomicUsize::new(0);
        let main = async {
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
            7
        };
        match first(main, Counting(&polls)).await {
            First::Main(v) => assert_eq!(v, 7),
            First::Side(()) => panic!("the side never completes"),
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_side_wins_when_its_waker_fires() {
        let main = std::future::pending::<()>();
        let side = tokio::time::sleep(Duration::from_secs(5));
        assert!(matches!(first(main, side).await, First::Side(())));
    }

    #[tokio::test]
    async fn a_main_future_that_is_ready_at_once_wins() {
        let side = std::future::pending::<()>();
        assert!(matches!(first(async { 1 }, side).await, First::Main(1)));
    }
}
