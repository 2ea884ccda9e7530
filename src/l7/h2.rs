//! HTTP/2 to a backend (`protocol = "h2c"` or `"h2"`): a few connections shared by
//! every request, each carrying as many requests at once as the backend's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` allows ([`MAX_STREAMS`] when it does not say);
//! another is opened only when the open ones are full. A connection that is closed (the backend
//! sent GOAWAY and its streams ended, PING went unanswered, an error) takes no new
//! request and leaves the set on the next pick. Kept across generations with the
//! backend's HTTP/1.1 pool.
//!
//! Requests go straight to the `h2` crate's streams from the request's own task: the
//! connection's task only reads and writes frames. No channel, callback or task stands
//! between a request and its stream; a request body that is still arriving when the
//! response head does is sent on by a task of its own ([`Pump`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use ::h2::client::{ResponseFuture, SendRequest};
use ::h2::{Reason, RecvStream, SendStream};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Uri};
use http_body::{Body, Frame, SizeHint};
use tracing::debug;

use super::h1::{Head, Stream};
use super::request_body::{BoxError, RequestBody};
use crate::tls::BackendTls;

mod limits;

use limits::{Limits, Watched};

/// Requests in flight on one connection before another is opened, when the backend's
/// SETTINGS do not name a limit (RFC 9113 recommends allowing at least 100).
pub(super) const MAX_STREAMS: usize = 100;

/// One connection, and the requests in flight on it.
struct Conn {
    sender: SendRequest<Bytes>,
    /// Set when the connection's task ended (the connection is gone).
    closed: Arc<AtomicBool>,
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
pub(super) type Picked = (SendRequest<Bytes>, InFlight, bool);

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

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl H2Pool {
    /// Open connections, and the requests in flight on them.
    pub fn counts(&self) -> (usize, usize) {
        let conns = self.conns.load();
        let open = || conns.iter().filter(|c| !c.is_closed());
        let streams = open().map(|c| c.streams.load(Ordering::Relaxed)).sum();
        (open().count(), streams)
    }

    fn pick(&self) -> Option<(SendRequest<Bytes>, InFlight)> {
        let conns = self.conns.load();
        for c in conns.iter() {
            if c.is_closed() || !c.mine() {
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
            .find(|c| !c.limits.known() && !c.is_closed() && c.mine())
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
        let limits = Arc::new(Limits::default());
        let stream = Watched::new(stream, limits.clone(), MAX_STREAMS);
        let handshake = client_builder().handshake::<_, Bytes>(stream);
        let (sender, connection) = tokio::time::timeout(how.timeout, handshake)
            .await
            .map_err(|_| format!("no HTTP/2 handshake within {:?}", how.timeout))?
            .map_err(|e| format!("HTTP/2: {e}"))?;
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn(drive(connection, how.keepalive, closed.clone()));
        let conn = Arc::new(Conn {
            sender,
            closed,
            streams: AtomicUsize::new(streams),
            limits,
            worker: crate::worker::index(),
        });
        self.conns.rcu(|list| {
            let mut next: Vec<Arc<Conn>> =
                list.iter().filter(|c| !c.is_closed()).cloned().collect();
            next.push(conn.clone());
            next
        });
        Ok(conn)
    }
}

/// The client side of a backend connection, with hyper's settings: 2 MiB stream and
/// 5 MiB connection windows, 16 KiB frames and header lists, 1 MiB of sends buffered
/// per stream, no server push.
fn client_builder() -> ::h2::client::Builder {
    let mut b = ::h2::client::Builder::new();
    b.initial_window_size(2 << 20)
        .initial_connection_window_size(5 << 20)
        .max_frame_size(16 << 10)
        .max_header_list_size(16 << 10)
        .max_send_buffer_size(1 << 20)
        .max_local_error_reset_streams(Some(1024))
        .initial_max_send_streams(MAX_STREAMS)
        .enable_push(false);
    b
}

/// A connection's task: reads and writes its frames until it ends, and sends a PING
/// every `every`; one unanswered within `every` (20 s at most) ends the connection,
/// failing its streams. `closed` says it ended.
async fn drive<T>(
    mut connection: ::h2::client::Connection<T, Bytes>,
    every: Duration,
    closed: Arc<AtomicBool>,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let pings = connection.ping_pong();
    let within = every.min(Duration::from_secs(20));
    let alive = async move {
        let Some(mut pings) = pings else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(every).await;
            match tokio::time::timeout(within, pings.ping(::h2::Ping::opaque())).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return debug!(error = %e, "HTTP/2 backend PING failed"),
                Err(_) => return debug!("HTTP/2 backend did not answer a PING"),
            }
        }
    };
    tokio::select! {
        biased;
        r = &mut connection => {
            if let Err(e) = r {
                debug!(error = %e, "HTTP/2 backend connection ended");
            }
        }
        () = alive => {}
    }
    closed.store(true, Ordering::Release);
}

/// The request's head for HTTP/2: the connection-specific fields HTTP/2 forbids
/// (RFC 9113 8.2.2) left out, `:authority` from `Host`, and `Content-Length` from a
/// body of known length when the client sent none.
pub(super) fn request(
    head: &Head,
    body: &RequestBody,
    scheme: &'static str,
    backend: &str,
    te_trailers: bool,
) -> Result<Request<()>, String> {
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
    let mut req = Request::new(());
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = uri;
    // Copied into a map with room for what is added: a clone would have the size of
    // the client's fields, and growing it rebuilds its index (about 2,000
    // instructions a request).
    let mut headers = HeaderMap::with_capacity(head.headers.len() + 6);
    for (name, value) in &head.headers {
        headers.append(name, value.clone());
    }
    // The head has lost its hop-by-hop fields already; an upgrade asked of an `auto`
    // upstream that turned out to speak HTTP/2 goes as a plain request, and a header
    // rule may have set one again. The `h2` crate refuses a head with any of them.
    super::forward::strip_hop_by_hop(&mut headers);
    let added = &head.added;
    for (name, value) in [
        (&super::forward::X_FORWARDED_FOR, &added.forwarded_for),
        (&super::forward::X_FORWARDED_PROTO, &added.forwarded_proto),
        (&super::forward::X_FORWARDED_HOST, &added.forwarded_host),
    ] {
        if let Some(v) = value {
            headers.insert(name, v.clone());
        }
    }
    if let Some(v) = &added.request_id {
        // A value new with every request is sent as a literal never indexed: in
        // HPACK's dynamic table it would only push out the values that repeat.
        let mut v = v.clone();
        v.set_sensitive(true);
        headers.insert(&super::forward::X_REQUEST_ID, v);
    }
    if let Some(t) = &added.traceparent {
        if let Ok(mut v) = HeaderValue::from_bytes(t) {
            v.set_sensitive(true);
            headers.insert(&crate::telemetry::TRACEPARENT, v);
        }
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(len) = body.size_hint().exact() {
        let defined = !matches!(
            head.method,
            Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT
        );
        if (len != 0 || defined) && !headers.contains_key(header::CONTENT_LENGTH) {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
    }
    *req.headers_mut() = headers;
    Ok(req)
}

/// Opens a stream for `req` on `sender`, its body (unless empty) to follow. When the
/// connection takes no new stream (closed, the backend sent GOAWAY, its stream
/// identifiers ran out), the request never left: the error comes back with the body.
pub(super) fn send(
    sender: &mut SendRequest<Bytes>,
    req: Request<()>,
    body: RequestBody,
) -> Result<Exchanging, (::h2::Error, RequestBody)> {
    let end = body.is_end_stream();
    match sender.send_request(req, end) {
        Ok((response, tx)) => Ok(Exchanging {
            response,
            pump: (!end).then(|| Pump::new(body, tx, Reason::CANCEL)),
        }),
        Err(e) => Err((e, body)),
    }
}

/// A request on its way: its body sent while the response head is awaited.
pub(super) struct Exchanging {
    response: ResponseFuture,
    pump: Option<Pump>,
}

/// Why an exchange failed before its response head.
pub(super) enum Failed {
    /// The client's request body failed (too large, too late, cut): the stream was
    /// reset.
    Body(BoxError),
    /// The backend or the connection failed the stream.
    Backend(::h2::Error),
}

impl Future for Exchanging {
    type Output = Result<(http::Response<RecvStream>, Option<Pump>), Failed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(pump) = this.pump.as_mut() {
            match Pin::new(pump).poll(cx) {
                Poll::Ready(Ok(())) => this.pump = None,
                Poll::Ready(Err(Some(e))) => return Poll::Ready(Err(Failed::Body(e))),
                // The backend ended the stream's sending side: its answer (or the
                // error) is still to be read.
                Poll::Ready(Err(None)) => this.pump = None,
                Poll::Pending => {}
            }
        }
        match ready!(Pin::new(&mut this.response).poll(cx)) {
            Ok(r) => Poll::Ready(Ok((r, this.pump.take()))),
            Err(e) => Poll::Ready(Err(Failed::Backend(e))),
        }
    }
}

/// Sends a body on its stream, chunk by chunk as the peer's flow control allows, then
/// its trailers or its end: a request body to a backend, or a response body to a
/// client. `Err(Some)`: the body failed and the stream was reset with `on_error`;
/// `Err(None)`: the stream ended on the peer's side first.
pub(super) struct Pump<B = RequestBody> {
    body: B,
    tx: SendStream<Bytes>,
    /// A chunk read from the body that waits for window to be sent, and whether it is
    /// the body's last.
    waiting: Option<(Bytes, bool)>,
    on_error: Reason,
}

impl<B> Pump<B> {
    pub(super) fn new(body: B, tx: SendStream<Bytes>, on_error: Reason) -> Pump<B> {
        Pump {
            body,
            tx,
            waiting: None,
            on_error,
        }
    }
}

impl<B> Future for Pump<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Output = Result<(), Option<BoxError>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            // Woken by a reset while waiting for the body or for window.
            if let Poll::Ready(r) = this.tx.poll_reset(cx) {
                debug!(reason = ?r.ok(), "peer reset a stream being sent");
                return Poll::Ready(Err(None));
            }
            if let Some((chunk, last)) = this.waiting.take() {
                if this.tx.capacity() == 0 {
                    match this.tx.poll_capacity(cx) {
                        Poll::Pending => {
                            this.waiting = Some((chunk, last));
                            return Poll::Pending;
                        }
                        Poll::Ready(Some(Ok(_))) => {
                            this.waiting = Some((chunk, last));
                            continue;
                        }
                        Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(Err(None)),
                    }
                }
                // The `h2` crate splits the chunk by window itself, and keeps what
                // does not fit yet.
                if this.tx.send_data(chunk, last).is_err() {
                    return Poll::Ready(Err(None));
                }
                if last {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            // The next frame is read before window is asked for: window held for a
            // body that sends nothing could stall the connection's other streams.
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(chunk) => {
                        let last = this.body.is_end_stream();
                        if chunk.is_empty() {
                            if this.tx.send_data(chunk, last).is_err() {
                                return Poll::Ready(Err(None));
                            }
                            if last {
                                return Poll::Ready(Ok(()));
                            }
                            continue;
                        }
                        this.tx.reserve_capacity(1);
                        this.waiting = Some((chunk, last));
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            this.tx.reserve_capacity(0);
                            return Poll::Ready(this.tx.send_trailers(trailers).map_err(|_| None));
                        }
                    }
                },
                Some(Err(e)) => {
                    this.tx.send_reset(this.on_error);
                    return Poll::Ready(Err(Some(e)));
                }
                None => {
                    return Poll::Ready(this.tx.send_data(Bytes::new(), true).map_err(|_| None));
                }
            }
        }
    }
}

/// A request body still being sent after the response head arrived, on a task of its
/// own. Stopped (and its stream reset) when the response is abandoned before its end.
struct PumpTask(Option<tokio::task::JoinHandle<()>>);

impl PumpTask {
    fn spawn(pump: Pump) -> PumpTask {
        PumpTask(Some(tokio::spawn(async move {
            let _ = pump.await;
        })))
    }

    /// The response ended whole: the body may finish on its own.
    fn detach(&mut self) {
        self.0.take();
    }
}

impl Drop for PumpTask {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// A backend's HTTP/2 response body, trailers included: each chunk's window is given
/// back as it is read.
pub struct ResponseStream {
    recv: RecvStream,
    data_done: bool,
    /// `Content-Length` still to come, when the backend said it.
    left: Option<u64>,
    pump: Option<PumpTask>,
}

impl ResponseStream {
    fn new(recv: RecvStream, headers: &HeaderMap, pump: Option<Pump>) -> ResponseStream {
        let left = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        ResponseStream {
            recv,
            data_done: false,
            left,
            pump: pump.map(PumpTask::spawn),
        }
    }

    fn ended(&mut self) -> Poll<Option<Result<Frame<Bytes>, ::h2::Error>>> {
        if let Some(pump) = self.pump.as_mut() {
            pump.detach();
        }
        Poll::Ready(None)
    }
}

impl Body for ResponseStream {
    type Data = Bytes;
    type Error = ::h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ::h2::Error>>> {
        let this = self.get_mut();
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(chunk)) => {
                    let _ = this.recv.flow_control().release_capacity(chunk.len());
                    if let Some(left) = this.left.as_mut() {
                        *left = left.saturating_sub(chunk.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                // RFC 9113 8.1: RST_STREAM with NO_ERROR after a whole response only
                // stops the request's upload.
                Some(Err(e)) if e.reason() == Some(Reason::NO_ERROR) => return this.ended(),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => this.ended(),
            Err(e) if e.reason() == Some(Reason::NO_ERROR) => this.ended(),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.left
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// A backend's HTTP/2 response, its body streamed (trailers included) while the
/// request holds its place on the connection.
pub(super) struct Answer {
    pub response: http::Response<ResponseStream>,
    pub in_flight: InFlight,
}

impl Answer {
    pub(super) fn new(
        response: http::Response<RecvStream>,
        pump: Option<Pump>,
        in_flight: InFlight,
    ) -> Answer {
        let (parts, recv) = response.into_parts();
        let body = ResponseStream::new(recv, &parts.headers, pump);
        Answer {
            response: http::Response::from_parts(parts, body),
            in_flight,
        }
    }
}
