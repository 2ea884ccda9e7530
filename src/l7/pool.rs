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
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::h1::{Conn, Stream};
use crate::config;
use crate::tls::BackendTls;

/// Idle connections kept per backend; more are closed when their response ends.
pub const MAX_IDLE_PER_BACKEND: usize = 128;

/// Idle connections older than this are closed rather than reused: backends close
/// idle keep-alive connections after a few seconds (Node.js after 5 s, gunicorn 2 s),
/// and a request written just as the backend closes cannot be retried if it had a body.
pub const MAX_IDLE_AGE: Duration = Duration::from_secs(4);

pub struct BackendPool {
    addr: SocketAddr,
    /// Identifies the TLS settings the connections were made with (0: plain).
    tls_id: u64,
    /// Idle connections and when they became idle, oldest first.
    idle: Idle,
    /// The PROXY header each new connection starts with: set only on a pool private
    /// to one client connection, so that a connection that named one client is never
    /// used for another.
    header: Option<Vec<u8>>,
    /// The backend's HTTP/2 connections (`protocol = "h2c"` or `"h2"`).
    pub h2: super::h2::H2Pool,
    /// `protocol = "auto"`: what the backend picked in ALPN (0 not known yet, 1
    /// HTTP/1.1, 2 HTTP/2).
    alpn: std::sync::atomic::AtomicU8,
}

/// Idle connections a client connection's private pool keeps per backend.
const MAX_IDLE_PRIVATE: usize = 4;

impl std::fmt::Debug for BackendPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendPool")
            .field("addr", &self.addr)
            .field("idle", &self.idle.len())
            .finish()
    }
}

/// Idle connections and when they became idle, oldest first.
type Queue = ArrayQueue<(Instant, Conn)>;

/// Idle connections, in one queue per worker (one queue with work stealing). A
/// connection is opened, used and given back by one worker, whose event loop its
/// socket is registered with: with thread per core each worker keeps its own, as it
/// keeps its own HTTP/2 connections.
struct Idle {
    queues: Box<[std::sync::OnceLock<Queue>]>,
    /// The most each queue keeps.
    capacity: usize,
}

impl Idle {
    fn new(capacity: usize) -> Idle {
        Idle {
            queues: (0..crate::worker::count())
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            capacity,
        }
    }

    /// The current worker's queue (made at its first use). There is at least one:
    /// `worker::count()` is never 0.
    fn own(&self) -> &std::sync::OnceLock<Queue> {
        match &self.queues[..] {
            [only] => only,
            all => &all[crate::worker::index() % all.len()],
        }
    }

    fn pop(&self) -> Option<(Instant, Conn)> {
        self.own().get()?.pop()
    }

    /// The connection is closed when the queue is full.
    fn push(&self, item: (Instant, Conn)) {
        let queue = self.own().get_or_init(|| ArrayQueue::new(self.capacity));
        let _ = queue.push(item);
    }

    fn len(&self) -> usize {
        self.queues
            .iter()
            .filter_map(|q| q.get())
            .map(ArrayQueue::len)
            .sum()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl BackendPool {
    pub fn new(addr: SocketAddr, tls_id: u64) -> Self {
        BackendPool {
            addr,
            tls_id,
            idle: Idle::new(MAX_IDLE_PER_BACKEND),
            header: None,
            h2: Default::default(),
            alpn: Default::default(),
        }
    }

    /// A pool of `shared`'s backend for one client connection, whose new connections
    /// start with `header`.
    pub fn private(shared: &BackendPool, header: Vec<u8>) -> Self {
        BackendPool {
            addr: shared.addr,
            tls_id: shared.tls_id,
            idle: Idle::new(MAX_IDLE_PRIVATE),
            header: Some(header),
            h2: Default::default(),
            alpn: Default::default(),
        }
    }

    /// An idle connection that is still open, with nothing unexpected on it.
    pub fn checkout(&self) -> Option<Conn> {
        while let Some((since, mut conn)) = self.idle.pop() {
            if since.elapsed() <= MAX_IDLE_AGE && conn.is_usable() {
                return Some(conn);
            }
        }
        None
    }

    /// Returns a connection whose response ended cleanly; closed when the pool is full.
    pub fn checkin(&self, conn: Conn) {
        self.idle.push((Instant::now(), conn));
    }

    /// Opens a new connection (and its TLS session, with `tls`) within `timeout`.
    pub async fn connect(
        &self,
        timeout: Duration,
        tls: Option<(&BackendTls, &str)>,
    ) -> Result<Conn, String> {
        self.open_stream(timeout, tls).await.map(Conn::new)
    }

    /// A new connection's byte stream (TLS included), within `timeout`.
    pub async fn open_stream(
        &self,
        timeout: Duration,
        tls: Option<(&BackendTls, &str)>,
    ) -> Result<Stream, String> {
        match tokio::time::timeout(timeout, self.open(tls)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    async fn open(&self, tls: Option<(&BackendTls, &str)>) -> Result<Stream, String> {
        let mut stream = TcpStream::connect(self.addr)
            .await
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        if let Some(h) = &self.header {
            tokio::io::AsyncWriteExt::write_all(&mut stream, h)
                .await
                .map_err(|e| format!("PROXY header: {e}"))?;
        }
        let stream = match tls {
            None => Stream::Plain(stream),
            Some((tls, address)) => Stream::Tls(Box::new(
                tls.connect(stream, address)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?,
            )),
        };
        Ok(stream)
    }

    /// `auto`: whether the backend speaks HTTP/2, learnt from a new connection's ALPN
    /// when not known, or when the connections it was learnt on are gone (the new
    /// connection joins the HTTP/1.1 or the HTTP/2 pool). `true` when it was opened.
    pub async fn alpn_h2(&self, how: &super::h2::Connect<'_>) -> Result<(bool, bool), String> {
        use std::sync::atomic::Ordering;
        match self.alpn.load(Ordering::Relaxed) {
            2 if self.h2.counts().0 > 0 => return Ok((true, false)),
            1 if !self.idle.is_empty() => return Ok((false, false)),
            _ => {}
        }
        // Boxed: opening a connection is a large future a known backend never needs.
        Box::pin(self.learn_alpn(how)).await
    }

    async fn learn_alpn(&self, how: &super::h2::Connect<'_>) -> Result<(bool, bool), String> {
        use std::sync::atomic::Ordering;
        let stream = self.open_stream(how.timeout, how.tls).await?;
        let h2 = matches!(&stream, Stream::Tls(t) if t.get_ref().1.alpn_protocol() == Some(b"h2"));
        self.alpn.store(if h2 { 2 } else { 1 }, Ordering::Relaxed);
        if h2 {
            self.h2.adopt(stream, how).await?;
        } else {
            self.checkin(Conn::new(stream));
        }
        Ok((h2, true))
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

    /// The pool of a backend, if it has one.
    pub fn find(&self, upstream: &str, address: &str) -> Option<Arc<BackendPool>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(upstream.to_string(), address.to_string()))
            .cloned()
    }

    /// Drops the pools of backends that `config` no longer has.
    pub fn retain(&self, config: &config::Config) {
        let keep = config.backend_identities();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|(u, a), _| keep.contains(&(u.as_str(), a.as_str())));
    }
}
