//! HTTP/2 to a backend (`protocol = "h2c"` or `"h2"`): a few connections shared by
//! every request, each carrying as many requests at once as the backend's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` allows ([`MAX_STREAMS`] when it does not say);
//! another is opened only when the open ones are full. A connection that is closed (the backend
//! sent GOAWAY and its streams ended, PING went unanswered, an error) takes no new
//! request and leaves the set on the next pick. Kept across generations with the
//! backend's HTTP/1.1 pool.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{header, HeaderValue, Request, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::h1::{Head, Stream};
use super::request_body::RequestBody;
use crate::tls::BackendTls;

mod limits;

use limits::{Limits, Watched};

/// Requests in flight on one connection before another is opened, when the backend's
/// SETTINGS do not name a limit (RFC 9113 recommends allowing at least 100).
pub(super) const MAX_STREAMS: usize = 100;

/// One connection, and the requests in flight on it.
struct Conn {
    sender: SendRequest<RequestBody>,
    streams: AtomicUsize,
    limits: Arc<Limits>,
    /// The worker whose scheduler runs the connection's task.
    worker: usize,
}

/// A request in flight on a connection: holds its place until dropped (at the end of
/// the response body).
pub struct InFlight {
    conn: Arc<Conn>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.conn.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The backend's HTTP/2 connections.
#[derive(Default)]
pub struct H2Pool {
    conns: ArcSwap<Vec<Arc<Conn>>>,
    /// One connection opened at a time: a burst of requests waits for it rather than
    /// opening one each.
    opening: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for H2Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Pool")
            .field("connections", &self.conns.load().len())
            .finish()
    }
}

/// A connection's sender, the place of a request on it, and whether it was opened
/// for that request.
pub(super) type Picked = (SendRequest<RequestBody>, InFlight, bool);

/// How to open a connection.
pub struct Connect<'a> {
    pub timeout: Duration,
    /// TLS (ALPN `h2`) and the backend's address as written (for the name).
    pub tls: Option<(&'a BackendTls, &'a str)>,
    pub keepalive: Duration,
}

impl Conn {
    /// Whether a request of this thread takes streams on this connection: with thread
    /// per core, only the worker that runs the connection's task does (each worker
    /// keeps connections of its own, so no stream's frames cross threads); with work
    /// stealing, every thread does.
    fn mine(&self) -> bool {
        crate::worker::count() == 1 || self.worker == crate::worker::index()
    }
}

impl H2Pool {
    /// Open connections, and the requests in flight on them.
    pub fn counts(&self) -> (usize, usize) {
        let conns = self.conns.load();
        let open = || conns.iter().filter(|c| !c.sender.is_closed());
        let streams = open().map(|c| c.streams.load(Ordering::Relaxed)).sum();
        (open().count(), streams)
    }

    fn pick(&self) -> Option<(SendRequest<RequestBody>, InFlight)> {
        let conns = self.conns.load();
        for c in conns.iter() {
            if c.sender.is_closed() || !c.mine() {
                continue;
            }
            let room = c.limits.streams();
            let mut n = c.streams.load(Ordering::Acquire);
            while n < room {
                match c
                    .streams
                    .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => {
                        return Some((c.sender.clone(), InFlight { conn: c.clone() }));
                    }
                    Err(now) => n = now,
                }
            }
        }
        None
    }

    /// Takes the connection of `in_flight` out of the set: it refused a new stream.
    pub fn retire(&self, in_flight: &InFlight) {
        self.conns.rcu(|list| {
            list.iter()
                .filter(|c| !Arc::ptr_eq(c, &in_flight.conn))
                .cloned()
                .collect::<Vec<_>>()
        });
    }

    /// A connection with room for one more request, opened with `open` when none has
    /// (`true`: opened for this request).
    pub async fn stream<F>(
        &self,
        open: impl FnOnce() -> F,
        how: &Connect<'_>,
    ) -> Result<Picked, String>
    where
        F: std::future::Future<Output = Result<Stream, String>>,
    {
        if let Some((s, f)) = self.pick() {
            return Ok((s, f, false));
        }
        // Boxed: opening a connection (connect, TLS, handshake) is a large future
        // that a request on a connection already open never needs to carry.
        Box::pin(self.open_for_one(open, how)).await
    }

    async fn open_for_one<F>(
        &self,
        open: impl FnOnce() -> F,
        how: &Connect<'_>,
    ) -> Result<Picked, String>
    where
        F: std::future::Future<Output = Result<Stream, String>>,
    {
        let _one = self.opening.lock().await;
        if let Some((s, f)) = self.pick() {
            return Ok((s, f, false));
        }
        // A connection whose backend has not said its limit yet takes one request;
        // its SETTINGS, one round trip away, may give room for more.
        if self.settings_arrived(how.timeout).await {
            if let Some((s, f)) = self.pick() {
                return Ok((s, f, false));
            }
        }
        let stream = open().await?;
        if let Stream::Tls(t) = &stream {
            if t.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err("the backend did not agree to HTTP/2 (ALPN h2)".into());
            }
        }
        let conn = self.handshake(stream, how, 1).await?;
        Ok((conn.sender.clone(), InFlight { conn }, true))
    }

    /// Waits (up to `within`) for the SETTINGS of the newest open connection whose
    /// backend has not sent them yet; whether they arrived.
    async fn settings_arrived(&self, within: Duration) -> bool {
        let waiting = self
            .conns
            .load()
            .iter()
            .rev()
            .find(|c| !c.limits.known() && !c.sender.is_closed() && c.mine())
            .map(|c| c.limits.clone());
        match waiting {
            Some(limits) => limits.arrived(within).await,
            None => false,
        }
    }

    /// Takes a connection opened elsewhere (whose ALPN said `h2`) into the set.
    pub async fn adopt(&self, stream: Stream, how: &Connect<'_>) -> Result<(), String> {
        self.handshake(stream, how, 0).await.map(drop)
    }

    /// The HTTP/2 handshake on `stream`; the connection joins the set with `streams`
    /// requests in flight.
    async fn handshake(
        &self,
        stream: Stream,
        how: &Connect<'_>,
        streams: usize,
    ) -> Result<Arc<Conn>, String> {
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(how.keepalive)
            .keep_alive_timeout(how.keepalive.min(Duration::from_secs(20)))
            .keep_alive_while_idle(true);
        let limits = Arc::new(Limits::default());
        let stream = Watched::new(stream, limits.clone(), MAX_STREAMS);
        let handshake = builder.handshake::<_, RequestBody>(TokioIo::new(stream));
        let (sender, conn) = tokio::time::timeout(how.timeout, handshake)
            .await
            .map_err(|_| format!("no HTTP/2 handshake within {:?}", how.timeout))?
            .map_err(|e| format!("HTTP/2: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let conn = Arc::new(Conn {
            sender,
            streams: AtomicUsize::new(streams),
            limits,
            worker: crate::worker::index(),
        });
        self.conns.rcu(|list| {
            let mut next: Vec<Arc<Conn>> = list
                .iter()
                .filter(|c| !c.sender.is_closed())
                .cloned()
                .collect();
            next.push(conn.clone());
            next
        });
        Ok(conn)
    }
}

/// The connection-specific fields HTTP/2 forbids (RFC 9113 8.2.2); the head has lost
/// them already, save `te`.
pub(super) fn request(
    head: &Head,
    body: RequestBody,
    scheme: &'static str,
    backend: &str,
    te_trailers: bool,
) -> Result<Request<RequestBody>, String> {
    let authority = head
        .added
        .host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .unwrap_or(backend);
    let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|e| format!("request target: {e}"))?;
    let mut req = Request::new(body);
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_2;
    let mut headers = head.headers.clone();
    // An upgrade asked of an `auto` upstream that turned out to speak HTTP/2 goes
    // as a plain request.
    headers.remove(header::CONNECTION);
    headers.remove(header::UPGRADE);
    let added = &head.added;
    for (name, value) in [
        ("x-forwarded-for", &added.forwarded_for),
        ("x-forwarded-proto", &added.forwarded_proto),
        ("x-forwarded-host", &added.forwarded_host),
        ("x-request-id", &added.request_id),
    ] {
        if let Some(v) = value {
            let mut v = v.clone();
            // A value new with every request is sent as a literal never indexed: in
            // HPACK's dynamic table it would only push out the values that repeat.
            v.set_sensitive(name == "x-request-id");
            headers.insert(header::HeaderName::from_static(name), v);
        }
    }
    if let Some(t) = &added.traceparent {
        if let Ok(mut v) = HeaderValue::from_bytes(t) {
            v.set_sensitive(true);
            headers.insert(crate::telemetry::TRACEPARENT.clone(), v);
        }
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    *req.headers_mut() = headers;
    Ok(req)
}

/// A backend's HTTP/2 response, its body streamed (trailers included) while the
/// request holds its place on the connection.
pub(super) struct Answer {
    pub response: http::Response<Incoming>,
    pub in_flight: InFlight,
}
