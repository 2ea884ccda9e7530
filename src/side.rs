//! Racing a busy future against watchers that rarely fire.
//!
//! `tokio::select!` polls every branch whenever the task wakes: a connection's timers
//! and cancellation tokens would be polled for every read and write of every request.
//! [`first`] polls the side future only when one of its own wakers fired, and the main
//! future on every wake-up.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use pin_project_lite::pin_project;

/// Which future completed first.
pub(crate) enum First<A, B> {
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

pin_project! {
    /// See [`first`]. A plain struct rather than an `async fn`: the two futures are
    /// stored once, where an `async fn` would keep room for its arguments beside them.
    pub(crate) struct FirstOf<A, B> {
        #[pin]
        main: A,
        #[pin]
        side: B,
        // Made at the first poll.
        flag: Option<(Arc<Flag>, Waker)>,
    }
}

/// Runs `main` and `side` until either completes. `side` is polled once at the start
/// and then only after one of its wakers fired.
pub(crate) fn first<A: Future, B: Future>(main: A, side: B) -> FirstOf<A, B> {
    FirstOf {
        main,
        side,
        flag: None,
    }
}

impl<A: Future, B: Future> Future for FirstOf<A, B> {
    type Output = First<A::Output, B::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let (flag, side_waker) = this.flag.get_or_insert_with(|| {
            let flag = Arc::new(Flag {
                woken: AtomicBool::new(true),
                task: AtomicWaker::new(),
            });
            let waker = Waker::from(flag.clone());
            (flag, waker)
        });
        flag.task.register(cx.waker());
        if flag.woken.swap(false, Ordering::AcqRel) {
            let mut side_cx = Context::from_waker(side_waker);
            if let Poll::Ready(v) = this.side.poll(&mut side_cx) {
                return Poll::Ready(First::Side(v));
            }
        }
        this.main.poll(cx).map(First::Main)
    }
}

/// A future built directly in its heap allocation: the allocation is made first, so
/// that the compiler can construct the future in it rather than build it on the stack
/// and copy all of it over (several KiB for a request's or a connection's future,
/// and most of it not yet in use).
#[inline(always)]
pub(crate) fn boxed<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    let mut slot = Box::<F>::new_uninit();
    slot.write(make());
    // SAFETY: written just above.
    Box::into_pin(unsafe { slot.assume_init() })
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

    #[tokio::test]
    async fn a_future_boxed_in_place_runs_as_it_would_unboxed() {
        let data = vec![1u8; 4096];
        let f = boxed(|| async move {
            tokio::task::yield_now().await;
            data.iter().map(|&b| u32::from(b)).sum::<u32>()
        });
        assert_eq!(f.await, 4096);
    }
}
