//! How many requests a backend lets one HTTP/2 connection carry at once: its
//! `SETTINGS_MAX_CONCURRENT_STREAMS`, read from the frames as they pass on their way
//! to hyper (whose client does not tell). The pool opens another connection when the
//! open ones are at that number.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// `SETTINGS_MAX_CONCURRENT_STREAMS` (RFC 9113 6.5.2).
const MAX_CONCURRENT_STREAMS: u16 = 0x3;
/// Frame type SETTINGS, and its ACK flag.
const SETTINGS: u8 = 0x4;
const ACK: u8 = 0x1;

/// What a connection's backend allows, as far as its SETTINGS have said.
#[derive(Debug, Default)]
pub(super) struct Limits {
    /// Concurrent streams allowed; 0 until the first SETTINGS frame arrived.
    streams: AtomicUsize,
    seen: Notify,
}

impl Limits {
    /// Requests the connection takes at once now: one until the backend's first
    /// SETTINGS arrived, then what they say (`default` when they do not say).
    pub(super) fn streams(&self) -> usize {
        self.streams.load(Ordering::Acquire).max(1)
    }

    /// Whether the backend's first SETTINGS arrived.
    pub(super) fn known(&self) -> bool {
        self.streams.load(Ordering::Acquire) != 0
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

/// Where a reader is in the backend's frame sequence.
#[derive(Debug, Default)]
struct Scan {
    head: [u8; 9],
    /// Bytes of `head` read; 9 while in a frame's payload.
    head_len: usize,
    /// Payload bytes of the current frame still to come.
    left: usize,
    /// The current frame is a SETTINGS frame (not an ACK).
    settings: bool,
    param: [u8; 6],
    param_len: usize,
}

impl Scan {
    fn feed(&mut self, mut bytes: &[u8], limits: &Limits, default: usize) {
        while !bytes.is_empty() {
            if self.head_len < 9 {
                let take = (9 - self.head_len).min(bytes.len());
                self.head[self.head_len..self.head_len + take].copy_from_slice(&bytes[..take]);
                self.head_len += take;
                bytes = &bytes[take..];
                if self.head_len < 9 {
                    return;
                }
                let h = &self.head;
                self.left = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                self.settings = h[3] == SETTINGS && h[4] & ACK == 0;
                self.param_len = 0;
                if self.settings && !limits.known() {
                    // Until a parameter says otherwise.
                    limits.streams.store(default, Ordering::Release);
                }
            }
            let take = self.left.min(bytes.len());
            if self.settings {
                for &b in &bytes[..take] {
                    self.param[self.param_len] = b;
                    self.param_len += 1;
                    if self.param_len == 6 {
                        self.param_len = 0;
                        let p = self.param;
                        if u16::from_be_bytes([p[0], p[1]]) == MAX_CONCURRENT_STREAMS {
                            let n = u32::from_be_bytes([p[2], p[3], p[4], p[5]]);
                            let n = usize::try_from(n).unwrap_or(usize::MAX).max(1);
                            limits.streams.store(n, Ordering::Release);
                        }
                    }
                }
            }
            self.left -= take;
            bytes = &bytes[take..];
            if self.left == 0 {
                self.head_len = 0;
                if self.settings {
                    limits.seen.notify_waiters();
                }
            }
        }
    }
}

/// A backend connection's byte stream, its incoming frames read for SETTINGS.
pub(super) struct Watched<S> {
    inner: S,
    scan: Scan,
    limits: Arc<Limits>,
    /// Streams allowed when the backend's SETTINGS do not say.
    default: usize,
}

impl<S> Watched<S> {
    pub(super) fn new(inner: S, limits: Arc<Limits>, default: usize) -> Watched<S> {
        Watched {
            inner,
            scan: Scan::default(),
            limits,
            default,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.scan
                .feed(&buf.filled()[before..], &this.limits, this.default);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, b)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let n = payload.len();
        let mut f = vec![
            (n >> 16) as u8,
            (n >> 8) as u8,
            n as u8,
            kind,
            flags,
            0,
            0,
            0,
            0,
        ];
        f.extend_from_slice(payload);
        f
    }

    fn settings(params: &[(u16, u32)]) -> Vec<u8> {
        let mut p = Vec::new();
        for (id, v) in params {
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&v.to_be_bytes());
        }
        frame(SETTINGS, 0, &p)
    }

    /// Fed in every split into two pieces, the bytes give the same limit.
    fn limit_after(bytes: &[u8]) -> Vec<usize> {
        (0..=bytes.len())
            .map(|cut| {
                let limits = Limits::default();
                let mut scan = Scan::default();
                scan.feed(&bytes[..cut], &limits, 100);
                scan.feed(&bytes[cut..], &limits, 100);
                limits.streams.load(Ordering::Relaxed)
            })
            .collect()
    }

    #[test]
    fn the_backends_stream_limit_is_read_across_any_split() {
        let mut bytes = frame(0x0, 0, b"data before");
        bytes.extend(settings(&[
            (0x1, 4096),
            (MAX_CONCURRENT_STREAMS, 1),
            (0x4, 65535),
        ]));
        bytes.extend(frame(0x6, 0, &[0; 8]));
        assert!(limit_after(&bytes).iter().all(|&n| n == 1));
    }

    #[test]
    fn settings_without_the_limit_give_the_default_and_an_ack_changes_nothing() {
        let bytes = settings(&[(0x4, 65535)]);
        assert!(limit_after(&bytes).iter().all(|&n| n == 100));
        let ack = frame(SETTINGS, ACK, &[]);
        assert!(limit_after(&ack).iter().all(|&n| n == 0));
        let limits = Limits::default();
        assert_eq!(limits.streams(), 1, "one request until SETTINGS arrive");
    }

    #[test]
    fn a_later_settings_frame_changes_the_limit_and_zero_counts_as_one() {
        let mut bytes = settings(&[(MAX_CONCURRENT_STREAMS, 50)]);
        bytes.extend(frame(0x0, 0, &[7; 300]));
        bytes.extend(settings(&[(MAX_CONCURRENT_STREAMS, 0)]));
        assert!(limit_after(&bytes).iter().all(|&n| n == 1));
        let limits = Limits::default();
        let mut scan = Scan::default();
        scan.feed(&settings(&[(MAX_CONCURRENT_STREAMS, 50)]), &limits, 100);
        assert_eq!(limits.streams(), 50);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_settings_ends_when_they_arrive_or_in_time() {
        let limits = Arc::new(Limits::default());
        assert!(!limits.arrived(Duration::from_secs(5)).await);
        let l = limits.clone();
        let waiter = tokio::spawn(async move { l.arrived(Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        Scan::default().feed(&settings(&[]), &limits, 100);
        assert!(waiter.await.unwrap());
        assert!(limits.arrived(Duration::ZERO).await);
    }
}
