//! Pooled HTTP/1.1 connections to one backend. Idle connections wait in a bounded
//! lock-free queue; a connection goes back only after its response ended cleanly.
//!
//! Pools outlive configuration generations: [`Pools`] keys them by (upstream, address)
//! like the backends' live state, so a reload keeps warm connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use super::body::RequestBody;
use crate::config;
use crate::tls::BackendTls;

/// The most a backend connection reads ahead of its client (see `handshake`).
pub const UPSTREAM_READ_BUFFER: usize = 32 * 1024;

/// Idle connections kept per backend; more are closed when their response ends.
pub const MAX_IDLE_PER_BACKEND: usize = 128;

/// A pooled connection should be ready at once; one that is not is given up.
const READY_WAIT: Duration = Duration::from_millis(500);

/// Idle connections older than this are closed rather than reused: backends close
/// idle keep-alive connections after a few seconds (Node.js after 5 s, gunicorn 2 s),
/// and a request written just as the backend closes cannot be retried if it had a body.
pub const MAX_IDLE_AGE: Duration = Duration::from_secs(4);

/// A backend connection's request side, and the count of bytes the backend has sent
/// on it: whether any byte of a response arrived decides whether a failed request
/// may be sent again.
#[derive(Debug)]
pub struct Sender {
    send: SendRequest<RequestBody>,
    received: Arc<AtomicU64>,
}

impl Sender {
    /// Bytes received from the backend on this connection so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Acquire)
    }

    pub fn try_send_request(
        &mut self,
        req: http::Request<RequestBody>,
    ) -> impl std::future::Future<
        Output = Result<
            http::Response<hyper::body::Incoming>,
            hyper::client::conn::TrySendError<http::Request<RequestBody>>,
        >,
    > {
        self.send.try_send_request(req)
    }

    fn is_closed(&self) -> bool {
        self.send.is_closed()
    }
}

/// A backend stream that counts what it reads.
struct Counted<S> {
    inner: S,
    received: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.received.fetch_add(n as u64, Ordering::Release);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[derive(Debug)]
pub struct BackendPool {
    addr: SocketAddr,
    /// Identifies the TLS settings the connections were made with (0: plain).
    tls_id: u64,
    /// Idle connections and when they became idle, oldest first.
    idle: ArrayQueue<(Instant, Sender)>,
}

impl BackendPool {
    pub fn new(addr: SocketAddr, tls_id: u64) -> Self {
        BackendPool {
            addr,
            tls_id,
            idle: ArrayQueue::new(MAX_IDLE_PER_BACKEND),
        }
    }

    /// An idle connection that is still open and ready for a request.
    pub async fn checkout(&self) -> Option<Sender> {
        while let Some((since, mut s)) = self.idle.pop() {
            if s.is_closed() || since.elapsed() > MAX_IDLE_AGE {
                continue;
            }
            if let Ok(Ok(())) = tokio::time::timeout(READY_WAIT, s.send.ready()).await {
                return Some(s);
            }
        }
        None
    }

    /// Returns a connection whose response ended cleanly; closed when the pool is full.
    pub fn checkin(&self, s: Sender) {
        if !s.is_closed() {
            let _ = self.idle.push((Instant::now(), s));
        }
    }

    /// Opens a new connection (and its TLS session, with `tls`) within `timeout`.
    pub async fn connect(
        &self,
        timeout: Duration,
        tls: Option<(&BackendTls, &str)>,
    ) -> Result<Sender, String> {
        match tokio::time::timeout(timeout, self.open(tls)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    async fn open(&self, tls: Option<(&BackendTls, &str)>) -> Result<Sender, String> {
        let stream = TcpStream::connect(self.addr)
            .await
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        match tls {
            None => self.handshake(stream).await,
            Some((tls, address)) => {
                let stream = tls
                    .connect(stream, address)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                self.handshake(stream).await
            }
        }
    }

    async fn handshake<S>(&self, stream: S) -> Result<Sender, String>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let received = Arc::new(AtomicU64::new(0));
        let stream = Counted {
            inner: stream,
            received: received.clone(),
        };
        let (send, conn) = http1::Builder::new()
            // Each read from a backend becomes a chunk that waits in the client's write
            // queue while a slow client drains it: the read buffer's bound is what a
            // slow reader can hold per response (hyper's own default is 400 KiB).
            .max_buf_size(UPSTREAM_READ_BUFFER)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(backend.addr = %addr, error = %e, "backend connection ended");
            }
        });
        Ok(Sender { send, received })
    }

    pub fn idle_len(&self) -> usize {
        self.idle.len()
    }
}

/// Every backend's pool, across generations.
#[derive(Debug, Default)]
pub struct Pools {
    /// Touched only when a generation is built.
    map: Mutex<HashMap<(String, String), Arc<BackendPool>>>,
}

impl Pools {
    pub fn new() -> Self {
        Self::default()
    }

    /// `tls_id`: a fingerprint of the upstream's TLS settings, 0 without TLS.
    pub fn get(
        &self,
        upstream: &str,
        address: &str,
        addr: SocketAddr,
        tls_id: u64,
    ) -> Arc<BackendPool> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let pool = map
            .entry((upstream.to_string(), address.to_string()))
            .or_insert_with(|| Arc::new(BackendPool::new(addr, tls_id)));
        if pool.addr != addr || pool.tls_id != tls_id {
            // The name resolves elsewhere now, or TLS changed: connections made before
            // must not be reused.
            *pool = Arc::new(BackendPool::new(addr, tls_id));
        }
        pool.clone()
    }

    /// Drops the pools of backends that `config` no longer has.
    pub fn retain(&self, config: &config::Config) {
        let keep = config.backend_identities();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|(u, a), _| keep.contains(&(u.as_str(), a.as_str())));
    }
}
