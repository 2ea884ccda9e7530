//! HTTP/2 to a backend (`protocol = "h2c"` or `"h2"`): a few connections shared by
//! every request, each carrying as many requests at once as the backend's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` allows ([`MAX_STREAMS`] when it does not say);
//! another is opened only when the open ones are full. A connection that is closed (the backend
//! sent GOAWAY and its streams ended, PING went unanswered, an error) takes no new
//! request and leaves the set on the next pick. Kept across generations with the
//! backend's HTTP/1.1 pool.
//!
//! The connection is fulcrum's own ([`client`]): a request encodes its head and
//! queues its frames from its own task, and reads its response from its stream's
//! slot; the connection's task only reads and writes frames. No channel or task
//! stands between a request and its stream; a request body that is still arriving
//! when the response head does is sent on by a task of its own ([`Upload`]).
//! A client's HTTP/2 connection to fulcrum is served the same way ([`server`]);
//! [`Pump`] sends response bodies there, and request bodies to backends.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, Method};
use http_body::{Body, Frame, SizeHint};
use tracing::debug;

use super::h1::{Head, Stream};
use super::request_body::{BoxError, RequestBody};
use crate::tls::BackendTls;

pub(super) mod client;
mod frame;
mod hpack;
mod huffman;
mod limits;
pub(super) mod server;

use frame::reason;
use limits::Limits;

/// Requests in flight on one connection before another is opened, when the backend's
/// SETTINGS do not name a limit (RFC 9113 recommends allowing at least 100).
pub(super) const MAX_STREAMS: usize = 100;

/// One connection, and the requests in flight on it.
struct Conn {
    handle: client::Handle,
    /// Set when the connection takes no new stream (it ended, or is going away).
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

/// The place of a request on a connection, and whether the connection was opened
/// for that request.
pub(super) type Picked = (InFlight, bool);

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

    fn pick(&self) -> Option<InFlight> {
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
                    Ok(_) => return Some(InFlight { conn: c.clone() }),
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
        if let Some(f) = self.pick() {
            return Ok((f, false));
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
        if let Some(f) = self.pick() {
            return Ok((f, false));
        }
        // A connection whose backend has not said its limit yet takes one request;
        // its SETTINGS, one round trip away, may give room for more.
        if self.settings_arrived(how.timeout).await {
            if let Some(f) = self.pick() {
                return Ok((f, false));
            }
        }
        let stream = open().await?;
        if let Stream::Tls(t) = &stream {
            if t.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err("the backend did not agree to HTTP/2 (ALPN h2)".into());
            }
        }
        let conn = self.start(stream, how, 1);
        Ok((InFlight { conn }, true))
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
        self.start(stream, how, 0);
        Ok(())
    }

    /// Starts HTTP/2 on `stream` (the preface and SETTINGS are its first writes); the
    /// connection joins the set with `streams` requests in flight.
    fn start(&self, stream: Stream, how: &Connect<'_>, streams: usize) -> Arc<Conn> {
        let limits = Arc::new(Limits::default());
        let closed = Arc::new(AtomicBool::new(false));
        let (handle, driver) = client::handshake(
            stream,
            how.keepalive,
            limits.clone(),
            closed.clone(),
            MAX_STREAMS,
        );
        tokio::spawn(driver);
        let conn = Arc::new(Conn {
            handle,
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
        conn
    }
}

/// Whether a field never goes to an HTTP/2 backend: the connection-specific ones
/// (RFC 9113 8.2.2), and `Host`, which `:authority` carries.
fn not_for_h2(name: &HeaderName) -> bool {
    *name == header::HOST || super::forward::hop_by_hop().contains(&name)
}

/// The request's head for HTTP/2, encoded: the connection-specific fields HTTP/2
/// forbids (RFC 9113 8.2.2) left out, `:authority` from `Host`, and `Content-Length`
/// from a body of known length when the client sent none.
pub(super) fn request(
    head: &Head,
    body: &RequestBody,
    scheme: &'static str,
    backend: &str,
    te_trailers: bool,
) -> Result<BytesMut, String> {
    let authority = head
        .added
        .host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .unwrap_or(backend);
    // What `Host` may hold is checked where it is read; this keeps out what would
    // make `:authority` something else than a host and port.
    let bad = |b: &u8| !b.is_ascii_graphic() || b"/?#\\".contains(b);
    if authority.is_empty() || authority.bytes().any(|b| bad(&b)) {
        return Err(format!("request target: bad authority {authority:?}"));
    }
    let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut block = BytesMut::with_capacity(512);
    let enc = hpack::encode;
    enc(
        &mut block,
        b":method",
        head.method.as_str().as_bytes(),
        false,
    );
    enc(&mut block, b":scheme", scheme.as_bytes(), false);
    enc(&mut block, b":authority", authority.as_bytes(), false);
    enc(&mut block, b":path", path.as_bytes(), false);
    // The head has lost its hop-by-hop fields already, but a header rule may have
    // set one again; fields named by a `Connection` field go with it.
    let named: Vec<HeaderName> = head
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let added = &head.added;
    let replaced = [
        (
            &super::forward::X_FORWARDED_FOR,
            added.forwarded_for.is_some(),
        ),
        (
            &super::forward::X_FORWARDED_PROTO,
            added.forwarded_proto.is_some(),
        ),
        (
            &super::forward::X_FORWARDED_HOST,
            added.forwarded_host.is_some(),
        ),
        (&super::forward::X_REQUEST_ID, added.request_id.is_some()),
        (&crate::telemetry::TRACEPARENT, added.traceparent.is_some()),
    ];
    let mut has_length = false;
    for (name, value) in &head.headers {
        if not_for_h2(name)
            || named.contains(name)
            || replaced.iter().any(|(n, set)| *set && *n == name)
        {
            continue;
        }
        has_length |= *name == header::CONTENT_LENGTH;
        enc(
            &mut block,
            name.as_str().as_bytes(),
            value.as_bytes(),
            value.is_sensitive(),
        );
    }
    for (name, value) in [
        (&super::forward::X_FORWARDED_FOR, &added.forwarded_for),
        (&super::forward::X_FORWARDED_PROTO, &added.forwarded_proto),
        (&super::forward::X_FORWARDED_HOST, &added.forwarded_host),
    ] {
        if let Some(v) = value {
            enc(&mut block, name.as_str().as_bytes(), v.as_bytes(), false);
        }
    }
    if let Some(v) = &added.request_id {
        // A value new with every request is sent as a literal never indexed.
        enc(&mut block, b"x-request-id", v.as_bytes(), true);
    }
    if let Some(t) = &added.traceparent {
        if http::HeaderValue::from_bytes(t).is_ok() {
            enc(&mut block, b"traceparent", t, true);
        }
    }
    if te_trailers {
        enc(&mut block, b"te", b"trailers", false);
    }
    if let Some(len) = body.size_hint().exact() {
        let defined = !matches!(
            head.method,
            Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT
        );
        if (len != 0 || defined) && !has_length {
            enc(
                &mut block,
                b"content-length",
                len.to_string().as_bytes(),
                false,
            );
        }
    }
    Ok(block)
}

/// Trailers encoded for HTTP/2, connection-specific fields left out.
fn trailers_block(trailers: &HeaderMap) -> BytesMut {
    let mut block = BytesMut::with_capacity(128);
    for (name, value) in trailers {
        if !not_for_h2(name) {
            hpack::encode(
                &mut block,
                name.as_str().as_bytes(),
                value.as_bytes(),
                value.is_sensitive(),
            );
        }
    }
    block
}

/// Opens a stream for the head `block` on the connection of `in_flight`, its body
/// (unless empty) to follow. When the connection takes no new stream (closed, the
/// backend sent GOAWAY, its stream identifiers ran out), the request never left: the
/// error comes back with the body.
pub(super) fn send(
    in_flight: &InFlight,
    block: &[u8],
    body: RequestBody,
) -> Result<Exchanging, (client::Error, RequestBody)> {
    let end = body.is_end_stream();
    match in_flight.conn.handle.open(block, end) {
        Ok((tx, rx)) => Ok(Exchanging {
            rx: Some(rx),
            upload: tx.map(|tx| Upload::new(body, tx, reason::CANCEL)),
        }),
        Err(e) => Err((e, body)),
    }
}

/// A request on its way: its body sent while the response head is awaited.
pub(super) struct Exchanging {
    rx: Option<client::Receiver>,
    upload: Option<Upload>,
}

/// Why an exchange failed before its response head.
pub(super) enum Failed {
    /// The client's request body failed (too large, too late, cut): the stream was
    /// reset.
    Body(BoxError),
    /// The backend or the connection failed the stream.
    Backend(client::Error),
}

/// A response head, the stream to read its body from, and the request body's upload
/// when it is still going.
pub(super) type Arrived = (client::Head, client::Receiver, Option<Upload>);

impl Future for Exchanging {
    type Output = Result<Arrived, Failed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(upload) = this.upload.as_mut() {
            match Pin::new(upload).poll(cx) {
                Poll::Ready(Ok(())) => this.upload = None,
                Poll::Ready(Err(Some(e))) => return Poll::Ready(Err(Failed::Body(e))),
                // The backend ended the stream's sending side: its answer (or the
                // error) is still to be read.
                Poll::Ready(Err(None)) => this.upload = None,
                Poll::Pending => {}
            }
        }
        let Some(rx) = this.rx.as_mut() else {
            return Poll::Pending;
        };
        match ready!(rx.poll_head(cx)) {
            Ok(head) => match this.rx.take() {
                Some(rx) => Poll::Ready(Ok((head, rx, this.upload.take()))),
                None => Poll::Pending,
            },
            Err(e) => Poll::Ready(Err(Failed::Backend(e))),
        }
    }
}

/// The sending half of a stream, as [`Pump`] drives it: a request's stream to a
/// backend, or a response's stream to a client.
pub(super) trait Outgoing {
    /// Sends all of `chunk` as the windows allow (what is sent is taken off its
    /// front), the stream's end with its last octet when `last`. `Err`: the stream
    /// takes no more.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
        last: bool,
    ) -> Poll<Result<(), ()>>;
    /// Ends the stream with trailers.
    fn send_trailers(&mut self, trailers: &HeaderMap) -> Result<(), ()>;
    /// Resets the stream with `code`: the body failed.
    fn reset(&mut self, code: u32);
    /// Ready once the peer takes no more of the stream.
    fn poll_stopped(&mut self, cx: &mut Context<'_>) -> Poll<()>;
}

impl Outgoing for client::Sender {
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
        last: bool,
    ) -> Poll<Result<(), ()>> {
        client::Sender::poll_send(self, cx, chunk, last).map_err(|_| ())
    }

    fn send_trailers(&mut self, trailers: &HeaderMap) -> Result<(), ()> {
        client::Sender::send_trailers(self, &trailers_block(trailers)).map_err(|_| ())
    }

    fn reset(&mut self, code: u32) {
        client::Sender::reset(self, code)
    }

    fn poll_stopped(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        client::Sender::poll_stopped(self, cx)
    }
}

impl Outgoing for server::Responder {
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
        last: bool,
    ) -> Poll<Result<(), ()>> {
        server::Responder::poll_send(self, cx, chunk, last).map_err(|_| ())
    }

    fn send_trailers(&mut self, trailers: &HeaderMap) -> Result<(), ()> {
        server::Responder::send_trailers(self, trailers).map_err(|_| ())
    }

    fn reset(&mut self, code: u32) {
        server::Responder::reset(self, code)
    }

    fn poll_stopped(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_reset(cx).map(|_| ())
    }
}

/// Sends a body on its stream, chunk by chunk as the peer's flow control allows, then
/// its trailers or its end: a request body to a backend ([`Upload`]), or a response
/// body to a client. `Err(Some)`: the body failed and the stream was reset with
/// `on_error`; `Err(None)`: the stream ended on the peer's side first.
pub(super) struct Pump<B, T> {
    body: B,
    tx: T,
    /// A chunk read from the body that waits for window to be sent (what is left of
    /// it), and whether it is the body's last.
    waiting: Option<(Bytes, bool)>,
    on_error: u32,
}

/// A request body sent to a backend.
pub(super) type Upload = Pump<RequestBody, client::Sender>;

impl<B, T> Pump<B, T> {
    pub(super) fn new(body: B, tx: T, on_error: u32) -> Pump<B, T> {
        Pump {
            body,
            tx,
            waiting: None,
            on_error,
        }
    }
}

impl<B, T> Future for Pump<B, T>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
    T: Outgoing + Unpin,
{
    type Output = Result<(), Option<BoxError>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            if let Some((mut chunk, last)) = this.waiting.take() {
                match this.tx.poll_send(cx, &mut chunk, last) {
                    Poll::Ready(Ok(())) if last => return Poll::Ready(Ok(())),
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(())) => return Poll::Ready(Err(None)),
                    Poll::Pending => {
                        this.waiting = Some((chunk, last));
                        return Poll::Pending;
                    }
                }
            }
            // Woken by a reset while waiting for the body.
            if this.tx.poll_stopped(cx).is_ready() {
                debug!("peer reset a stream being sent");
                return Poll::Ready(Err(None));
            }
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(chunk) => {
                        let last = this.body.is_end_stream();
                        if !chunk.is_empty() || last {
                            this.waiting = Some((chunk, last));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            return Poll::Ready(this.tx.send_trailers(&trailers).map_err(|_| None));
                        }
                    }
                },
                Some(Err(e)) => {
                    this.tx.reset(this.on_error);
                    return Poll::Ready(Err(Some(e)));
                }
                None => this.waiting = Some((Bytes::new(), true)),
            }
        }
    }
}

/// A request body still being sent after the response head arrived, on a task of its
/// own. Stopped (and its stream reset) when the response is abandoned before its end.
struct UploadTask(Option<tokio::task::JoinHandle<()>>);

impl UploadTask {
    fn spawn(upload: Upload) -> UploadTask {
        UploadTask(Some(tokio::spawn(async move {
            let _ = upload.await;
        })))
    }

    /// The response ended whole: the body may finish on its own.
    fn detach(&mut self) {
        self.0.take();
    }
}

impl Drop for UploadTask {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// A backend's HTTP/2 response body, trailers included: each chunk's window is given
/// back as it is read.
pub struct ResponseStream {
    rx: client::Receiver,
    data_done: bool,
    /// `Content-Length` still to come, when the backend said it.
    left: Option<u64>,
    upload: Option<UploadTask>,
}

impl ResponseStream {
    fn new(rx: client::Receiver, headers: &HeaderMap, upload: Option<Upload>) -> ResponseStream {
        let left = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        ResponseStream {
            rx,
            data_done: false,
            left,
            upload: upload.map(UploadTask::spawn),
        }
    }

    fn ended(&mut self) -> Poll<Option<Result<Frame<Bytes>, client::Error>>> {
        if let Some(upload) = self.upload.as_mut() {
            upload.detach();
        }
        Poll::Ready(None)
    }
}

impl Body for ResponseStream {
    type Data = Bytes;
    type Error = client::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, client::Error>>> {
        let this = self.get_mut();
        let no_error = |e: &client::Error| e.reason() == Some(reason::NO_ERROR);
        if !this.data_done {
            match ready!(this.rx.poll_data(cx)) {
                Some(Ok(chunk)) => {
                    if let Some(left) = this.left.as_mut() {
                        match left.checked_sub(chunk.len() as u64) {
                            Some(l) => *left = l,
                            None => {
                                let e = client::Error::Malformed("body longer than Content-Length");
                                return Poll::Ready(Some(Err(e)));
                            }
                        }
                    }
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                // RFC 9113 8.1: RST_STREAM with NO_ERROR after a whole response only
                // stops the request's upload.
                Some(Err(e)) if no_error(&e) => return this.ended(),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match ready!(this.rx.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => this.ended(),
            Err(e) if no_error(&e) => this.ended(),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_end_stream()
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
    pub(super) fn new(arrived: Arrived, in_flight: InFlight) -> Answer {
        let ((status, headers), rx, upload) = arrived;
        let body = ResponseStream::new(rx, &headers, upload);
        let mut response = http::Response::new(body);
        *response.status_mut() = status;
        *response.version_mut() = http::Version::HTTP_2;
        *response.headers_mut() = headers;
        Answer {
            response,
            in_flight,
        }
    }
}
