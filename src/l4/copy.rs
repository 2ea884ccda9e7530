//! Copying both ways between client and backend, with byte counts, half-close passed
//! on (tokio's bidirectional copy shuts down the write side when the other side's
//! read ends), an idle timeout over both directions, and a cut for shutdown.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

/// Per-direction buffer: large enough for loopback and LAN bulk transfers.
const BUF_SIZE: usize = 64 * 1024;

#[derive(Debug, Default, Clone, Copy)]
pub struct Copied {
    pub from_client: u64,
    pub to_client: u64,
}

#[derive(Debug)]
pub enum End {
    /// Both directions finished.
    Closed,
    IdleTimeout,
    /// Shutdown's drain time ran out.
    Cut,
    NoBackend,
    Error(io::Error),
}

impl End {
    pub fn as_str(&self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::IdleTimeout => "idle_timeout",
            End::Cut => "shutdown",
            End::NoBackend => "no_backend",
            End::Error(_) => "error",
        }
    }
}

/// A stream that counts what is read from it and notes the time of the last read.
struct Tracked<'a> {
    inner: TcpStream,
    read: u64,
    base: Instant,
    /// Milliseconds after `base` of the last read on either side.
    last_activity: &'a AtomicU64,
}

impl AsyncRead for Tracked<'_> {
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
            let ms = self.base.elapsed().as_millis() as u64;
            self.last_activity.store(ms, Ordering::Relaxed);
        }
        res
    }
}

impl AsyncWrite for Tracked<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Waits until nothing has been read on either side for `idle`.
async fn idle(base: Instant, last_activity: &AtomicU64, idle: Duration) {
    loop {
        let last = base + Duration::from_millis(last_activity.load(Ordering::Relaxed));
        let deadline = last + idle;
        if Instant::now() >= deadline {
            return;
        }
        sleep_until(deadline).await;
    }
}

pub async fn both_ways(
    client: TcpStream,
    backend: TcpStream,
    idle_timeout: Duration,
    cut: &CancellationToken,
) -> (Copied, End) {
    let base = Instant::now();
    let last_activity = AtomicU64::new(0);
    let mut c = Tracked {
        inner: client,
        read: 0,
        base,
        last_activity: &last_activity,
    };
    let mut b = Tracked {
        inner: backend,
        read: 0,
        base,
        last_activity: &last_activity,
    };
    let end = {
        let copy = tokio::io::copy_bidirectional_with_sizes(&mut c, &mut b, BUF_SIZE, BUF_SIZE);
        tokio::select! {
            r = copy => match r {
                Ok(_) => End::Closed,
                Err(e) => End::Error(e),
            },
            _ = idle(base, &last_activity, idle_timeout) => End::IdleTimeout,
            _ = cut.cancelled() => End::Cut,
        }
    };
    (
        Copied {
            from_client: c.read,
            to_client: b.read,
        },
        end,
    )
}
