//! The wait for a plain HTTP connection's first bytes.
//!
//! Every connection that has sent nothing yet waits here, so the wait is a small
//! hand-written future: a read of the socket (through its registration, without a
//! readiness waiter of its own) whose bytes the socket keeps for the engine, the
//! header deadline, and the start of a drain.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::client_socket::ClientSocket;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFuture;

use crate::l7::DRAIN_LINGER;

/// How the wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arrived {
    /// This many bytes were read: the socket hands them out again
    /// ([`ClientSocket::ahead`]).
    Bytes(usize),
    /// The client closed or reset the connection.
    Reset,
    /// Nothing within `header_timeout`.
    HeaderTimeout,
    /// A drain began, and nothing came within its linger.
    Drained,
}

impl Arrived {
    /// Why a connection that sent nothing was closed, as the closed-connection metric
    /// counts it (a drain's close is not counted).
    pub(super) fn closed_reason(self) -> Option<&'static str> {
        match self {
            Arrived::Reset => Some("client_reset"),
            Arrived::HeaderTimeout => Some("header_timeout"),
            Arrived::Bytes(_) | Arrived::Drained => None,
        }
    }
}

pin_project! {
    /// See the module's documentation. A drain that begins while the connection waits
    /// gives it [`DRAIN_LINGER`] (or what is left of its header time, if less): a
    /// request already on its way is served, its response closing the connection.
    pub(super) struct FirstBytes<'a> {
        stream: &'a mut ClientSocket,
        #[pin]
        deadline: Sleep,
        #[pin]
        drain: WaitForCancellationFuture<'a>,
        draining: bool,
        lingering: bool,
    }
}

impl<'a> FirstBytes<'a> {
    pub(super) fn new(
        stream: &'a mut ClientSocket,
        header_timeout: std::time::Duration,
        drain: WaitForCancellationFuture<'a>,
    ) -> Self {
        FirstBytes {
            stream,
            deadline: tokio::time::sleep(header_timeout),
            drain,
            draining: false,
            lingering: false,
        }
    }
}

impl Future for FirstBytes<'_> {
    type Output = Arrived;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Arrived> {
        let mut this = self.project();
        match this.stream.poll_first(cx) {
            Poll::Ready(Ok(first)) if !first.is_empty() => {
                return Poll::Ready(Arrived::Bytes(first.len()))
            }
            Poll::Ready(_) => return Poll::Ready(Arrived::Reset),
            Poll::Pending => {}
        }
        if !*this.draining && this.drain.as_mut().poll(cx).is_ready() {
            *this.draining = true;
            let linger = Instant::now() + DRAIN_LINGER;
            if linger < this.deadline.deadline() {
                *this.lingering = true;
                this.deadline.as_mut().reset(linger);
            }
        }
        if this.deadline.poll(cx).is_ready() {
            return Poll::Ready(if *this.lingering {
                Arrived::Drained
            } else {
                Arrived::HeaderTimeout
            });
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::runtime::client_socket::tests::pair;

    #[tokio::test]
    async fn bytes_read_are_handed_out_again() {
        let (mut client, mut server) = pair().await;
        let stop = CancellationToken::new();
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let arrived = FirstBytes::new(&mut server, Duration::from_secs(60), stop.cancelled()).await;
        let Arrived::Bytes(n) = arrived else {
            panic!("{arrived:?}")
        };
        assert_eq!(server.ahead(), &b"GET / HTTP/1.1\r\n"[..n]);
        client.write_all(b"host: a\r\n\r\n").await.unwrap();
        let mut again = vec![0u8; 16 + 11];
        server.read_exact(&mut again).await.unwrap();
        assert_eq!(again, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n");
        assert!(server.ahead().is_empty());
    }

    #[tokio::test]
    async fn a_closed_client_is_a_reset() {
        let (client, mut server) = pair().await;
        drop(client);
        let stop = CancellationToken::new();
        let arrived = FirstBytes::new(&mut server, Duration::from_secs(60), stop.cancelled()).await;
        assert_eq!(arrived, Arrived::Reset);
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_a_header_timeout() {
        let (_client, mut server) = pair().await;
        let stop = CancellationToken::new();
        let arrived = FirstBytes::new(&mut server, Duration::from_secs(10), stop.cancelled()).await;
        assert_eq!(arrived, Arrived::HeaderTimeout);
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_gives_the_linger_then_ends_the_wait() {
        let (_client, mut server) = pair().await;
        let stop = CancellationToken::new();
        let start = Instant::now();
        let wait = FirstBytes::new(&mut server, Duration::from_secs(600), stop.cancelled());
        let cancel = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            stop.cancel();
        };
        let (arrived, ()) = tokio::join!(wait, cancel);
        assert_eq!(arrived, Arrived::Drained);
        assert!(start.elapsed() < Duration::from_secs(600));
        assert!(start.elapsed() >= Duration::from_secs(5) + DRAIN_LINGER);
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_does_not_lengthen_a_shorter_header_time() {
        let (_client, mut server) = pair().await;
        let stop = CancellationToken::new();
        stop.cancel();
        let arrived = FirstBytes::new(&mut server, DRAIN_LINGER / 2, stop.cancelled()).await;
        assert_eq!(arrived, Arrived::HeaderTimeout);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_during_the_linger_is_taken() {
        let (mut client, mut server) = pair().await;
        let stop = CancellationToken::new();
        stop.cancel();
        let wait = FirstBytes::new(&mut server, Duration::from_secs(600), stop.cancelled());
        let send = async {
            tokio::time::sleep(DRAIN_LINGER / 2).await;
            client.write_all(b"GET").await.unwrap();
        };
        let (arrived, ()) = tokio::join!(wait, send);
        assert_eq!(arrived, Arrived::Bytes(3));
    }
}
