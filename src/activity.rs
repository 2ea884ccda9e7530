//! Whether a connection moves bytes, for idle timeouts, and the bytes read from each
//! side. Shared by both engines: a stream wrapper notes every read and write with one
//! atomic add, and reads no clock; the idle check looks at the counts a few times per
//! timeout instead.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{sleep_until, Instant};

/// How many times per idle timeout [`Activity::idle_for`] looks at the counts: a
/// connection is closed at most a quarter of its timeout late, never early.
pub(crate) const CHECKS_PER_TIMEOUT: u32 = 4;

/// The bytes a connection moved, and its other signs of life.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    /// Bytes read and written, all streams together.
    moved: AtomicU64,
    /// Signs of life that move no byte (see [`Activity::touch`]).
    touches: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Bytes read and written so far.
    pub(crate) fn moved(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }

    /// Notes `n` bytes moved.
    pub(crate) fn moved_bytes(&self, n: usize) {
        self.moved.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Notes activity that moved no byte the counts see.
    pub(crate) fn touch(&self) {
        self.touches.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stirred(&self) -> (u64, u64) {
        (self.moved(), self.touches.load(Ordering::Relaxed))
    }

    /// Completes once nothing has moved for `idle`, counted from the call or from the
    /// last activity after it. Activity is noticed on checks `idle / 4` apart, so it
    /// completes between `idle` and `1.25 x idle` after the last byte.
    pub(crate) async fn idle_for(&self, idle: Duration) {
        let step = (idle / CHECKS_PER_TIMEOUT).max(Duration::from_millis(1));
        let mut seen = self.stirred();
        let mut quiet_since = Instant::now();
        loop {
            let deadline = quiet_since + idle;
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            sleep_until(deadline.min(now + step)).await;
            let stirred = self.stirred();
            if stirred != seen {
                seen = stirred;
                quiet_since = Instant::now();
            }
        }
    }
}

/// A stream that counts the bytes read from it and touches its [`Activity`] on
/// every read and write.
#[derive(Debug)]
pub(crate) struct Watched<S> {
    inner: S,
    read: u64,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> Self {
        Watched {
            inner,
            read: 0,
            activity,
        }
    }

    /// Bytes read from this stream so far.
    pub(crate) fn bytes_read(&self) -> u64 {
        self.read
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read += n as u64;
            self.activity.moved_bytes(n);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            if n > 0 {
                self.activity.moved_bytes(n);
            }
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            if n > 0 {
                self.activity.moved_bytes(n);
            }
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What a client stream waited on without reading from it has for its reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readable {
    /// Bytes (or a readiness the read may still find empty).
    Bytes,
    /// The client closed or reset the connection with nothing left to read.
    End,
}

/// A client stream whose readiness for reading can be awaited without reading from it:
/// a connection waiting for its next request can hand its stream to a task that holds
/// nothing else, and that task can tell a client that went away from one that sent
/// its next request.
pub trait ReadReady {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<Readable>;
}

impl ReadReady for tokio::net::TcpStream {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<Readable> {
        // A peek at one byte: it tells the end from bytes, and leaves them in place.
        let mut byte = [std::mem::MaybeUninit::uninit(); 1];
        let mut buf = ReadBuf::uninit(&mut byte);
        match self.poll_peek(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(Readable::End),
            Poll::Ready(Ok(_)) => Poll::Ready(Readable::Bytes),
        }
    }
}

/// The socket's: a TLS stream whose read found nothing holds no plaintext either, so
/// only new records from the socket (or its end) can change that.
impl<S: ReadReady> ReadReady for tokio_rustls::server::TlsStream<S> {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<Readable> {
        self.get_mut().0.poll_readable(cx)
    }
}

impl<S: ReadReady> ReadReady for Watched<S> {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<Readable> {
        self.inner.poll_readable(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_quiet_connection_is_idle_after_exactly_the_timeout() {
        let a = Activity::new();
        a.moved_bytes(10);
        let start = Instant::now();
        a.idle_for(Duration::from_secs(1)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn activity_pushes_the_end_back_by_at_most_a_quarter_late() {
        let a = Arc::new(Activity::new());
        let start = Instant::now();
        let stir = {
            let a = a.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(600)).await;
                a.moved_bytes(1);
                tokio::time::sleep(Duration::from_millis(300)).await;
                a.touch();
            })
        };
        a.idle_for(Duration::from_secs(1)).await;
        let waited = start.elapsed();
        // The last sign of life at 900 ms: never idle before 1,900 ms, noticed at the
        // latest a quarter of the timeout after it.
        assert!(waited >= Duration::from_millis(1900), "{waited:?}");
        assert!(waited <= Duration::from_millis(2150), "{waited:?}");
        stir.await.unwrap();
    }
}
