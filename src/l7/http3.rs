//! HTTP/3 (RFC 9114) from clients over an accepted QUIC connection: each request
//! stream becomes a request of the same engine as HTTP/1.1 and HTTP/2 ([`handle`]),
//! whose response is written back as HTTP/3 frames.
//!
//! The QUIC side (UDP sockets, handshakes, address validation, limits) is the
//! runtime's; this module starts once a connection's handshake is done.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{header, HeaderMap, Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, Instrument};

use super::conn::{ConnCtx, Serving};
use super::request::handle;
use super::request_body::{BoxError, Inbound};

type Stream<S> = ::h3::server::RequestStream<S, Bytes>;
type RecvStream = Stream<h3_quinn::RecvStream>;
type Resolver = ::h3::server::RequestResolver<h3_quinn::Connection, Bytes>;

/// H3_NO_ERROR (RFC 9114 8.1).
const NO_ERROR: u32 = 0x100;

/// Bidirectional streams (requests) a client may have open at once.
pub const H3_MAX_CONCURRENT_STREAMS: u32 = 100;

/// Completes once a QUIC handshake begun with early data is done: true when it is.
pub type Confirmation = Pin<Box<dyn std::future::Future<Output = bool> + Send>>;

/// An accepted QUIC connection and its facts.
pub struct QuicAccepted {
    pub conn: quinn::Connection,
    /// `None`: the handshake is done. Else the connection serves before it is (0-RTT),
    /// and this completes when it is.
    pub confirmed: Option<Confirmation>,
    pub peer: std::net::SocketAddr,
    /// The address the client sent to.
    pub local: std::net::SocketAddr,
    pub client_cert: Option<Arc<str>>,
    pub admitted: bool,
    pub permits: Arc<dyn Send + Sync>,
}

/// Serves one QUIC connection's HTTP/3 requests until the client closes it, it stays
/// without requests for `idle_timeout`, or shutdown ends it: `drain` sends GOAWAY and
/// lets the requests in flight finish, `cut` closes it at once.
pub async fn serve_quic(accepted: QuicAccepted, serving: Serving, drain: CancellationToken) {
    let QuicAccepted {
        conn,
        mut confirmed,
        peer,
        local,
        client_cert,
        admitted,
        permits,
    } = accepted;
    let cut = serving.cut.clone();
    let ctx = Arc::new(ConnCtx::new(
        serving,
        (peer, local),
        client_cert,
        admitted,
        permits,
    ));
    ctx.requests.set_h2();
    let settings = ctx.settings.clone();
    let mut builder = ::h3::server::builder();
    builder.max_field_section_size(settings.max_header_list);
    let built = builder.build(h3_quinn::Connection::new(conn.clone()));
    let mut h3 = match tokio::time::timeout(settings.header_timeout, built).await {
        Ok(Ok(h3)) => h3,
        Ok(Err(e)) => {
            debug!(error = %e, "HTTP/3 connection failed before its first request");
            return;
        }
        Err(_) => {
            debug!("HTTP/3 connection set-up not finished within header_timeout: closed");
            conn.close(NO_ERROR.into(), b"");
            return;
        }
    };
    // GOAWAY: once sent, requests on streams from the `goaway`-th on are refused.
    let (mut goaway, mut accepted) = (None::<u64>, 0u64);
    // Whether the handshake is done: a request accepted before it may be a replay of
    // early data (a replayed connection never completes its handshake).
    let (handshake_done, done) = tokio::sync::watch::channel(confirmed.is_none());
    // The connection's requests end with it, whichever way it ends.
    let ended = cut.child_token();
    let _end = ended.clone().drop_guard();
    let streams = Arc::new(Streams::default());
    // Made once, not per request: each holds a timer or a waiter.
    let idle = idle(&ctx, &streams, settings.idle_timeout);
    let (drained, cut_off) = (drain.cancelled(), cut.cancelled());
    tokio::pin!(idle, drained, cut_off);
    loop {
        tokio::select! {
            // A request that arrived before the handshake completed is seen first.
            biased;
            resolver = h3.accept() => match resolver {
                Ok(Some(resolver)) => {
                    // Client streams are accepted in the order of their ids.
                    let refused = goaway.is_some_and(|g| accepted >= g);
                    accepted += 1;
                    let (ctx, ended) = (ctx.clone(), ended.clone());
                    let (span, tracker) = (ctx.span.clone(), ctx.tracker.clone());
                    let early = (!*done.borrow()).then(|| done.clone());
                    let open = Streams::open(&streams);
                    let task = async move {
                        let request = request(resolver, ctx, early, refused);
                        crate::side::first(request, ended.cancelled()).await;
                        drop(open);
                    };
                    // Boxed: the request's future is large, and a task's future
                    // is moved on its way in; only a pointer moves.
                    tracker.spawn(Box::pin(task.instrument(span)));
                }
                // GOAWAY sent or received, and every request answered.
                Ok(None) => break,
                Err(e) => {
                    if !e.is_h3_no_error() {
                        debug!(error = %e, "HTTP/3 connection ended with an error");
                    }
                    return;
                }
            },
            ok = async {
                match confirmed.as_mut() {
                    Some(handshake) => handshake.await,
                    None => std::future::pending().await,
                }
            }, if confirmed.is_some() => {
                confirmed = None;
                if !ok {
                    debug!("QUIC handshake with early data not completed: closed");
                    conn.close(NO_ERROR.into(), b"");
                    return;
                }
                let _ = handshake_done.send(true);
            }
            _ = &mut drained, if goaway.is_none() => {
                debug!("draining: GOAWAY sent");
                goaway = Some(accepted);
                if !send_goaway(&mut h3, settings.idle_timeout).await {
                    conn.close(NO_ERROR.into(), b"");
                    return;
                }
            }
            _ = &mut idle, if goaway.is_none() => {
                debug!("no request for idle_timeout: GOAWAY sent");
                goaway = Some(accepted);
                if !send_goaway(&mut h3, settings.idle_timeout).await {
                    conn.close(NO_ERROR.into(), b"");
                    return;
                }
            }
            // After GOAWAY, once the requests in flight are answered (a client need
            // not close the connection itself).
            _ = streams.closed(), if goaway.is_some() => break,
            _ = &mut cut_off => {
                conn.close(NO_ERROR.into(), b"");
                return;
            }
        }
    }
    // Every response is written, not necessarily delivered: closing the connection
    // would discard what is not acknowledged yet. The client closes once it has read
    // them, or the connection is closed after `CLOSE_LINGER`.
    tokio::select! {
        _ = conn.closed() => {}
        _ = tokio::time::sleep(settings.idle_timeout.min(CLOSE_LINGER)) => {
            conn.close(NO_ERROR.into(), b"");
        }
        _ = cut.cancelled() => conn.close(NO_ERROR.into(), b""),
    }
}

/// Sends GOAWAY naming the next request stream as the first not served (h3 counts
/// one past the last accepted), within `limit`: false if it could not be sent.
async fn send_goaway(
    h3: &mut ::h3::server::Connection<h3_quinn::Connection, Bytes>,
    limit: Duration,
) -> bool {
    match tokio::time::timeout(limit, h3.shutdown(1)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            debug!(error = %e, "GOAWAY not sent");
            false
        }
        Err(_) => {
            debug!("GOAWAY not sent within idle_timeout");
            false
        }
    }
}

/// A connection's request streams open (accepted, not yet done with), whatever
/// stage they are at: head, handling, response.
#[derive(Default)]
struct Streams {
    open: std::sync::atomic::AtomicUsize,
    closed: tokio::sync::Notify,
}

/// One stream counted in [`Streams`] while held.
struct StreamOpen(Arc<Streams>);

impl Streams {
    fn open(this: &Arc<Streams>) -> StreamOpen {
        this.open.fetch_add(1, Ordering::Relaxed);
        StreamOpen(this.clone())
    }

    fn count(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Completes once no stream is open.
    async fn closed(&self) {
        loop {
            let notified = self.closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for StreamOpen {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

/// How long a connection whose requests are all answered stays open after GOAWAY
/// for its last bytes to be acknowledged, unless the client closes it first.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Completes once no request has been open for `timeout` (a client's pings and other
/// frames do not count, as on HTTP/2).
async fn idle(ctx: &ConnCtx, streams: &Streams, timeout: Duration) {
    loop {
        let quiet = ctx.requests.quiet();
        if ctx.requests.in_flight() == 0 && streams.count() == 0 && quiet >= timeout {
            return;
        }
        let left = timeout.saturating_sub(quiet);
        tokio::time::sleep(if left.is_zero() { timeout } else { left }).await;
    }
}

/// Fields that are about a connection, never sent on HTTP/3 (RFC 9114 4.2).
const CONNECTION_SPECIFIC: [&header::HeaderName; 4] = [
    &header::CONNECTION,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &super::h1::KEEP_ALIVE,
];

/// `Early-Data` (RFC 8470): the request came before the client's handshake was done.
static EARLY_DATA: header::HeaderName = header::HeaderName::from_static("early-data");

/// One request stream: its head (within `header_timeout`), the engine's answer, and
/// the answer's body and trailers written back. `early`: the request was accepted
/// before the connection's handshake was done, and this says when it is. `refused`:
/// it came on a stream GOAWAY said would not be served; it is reset unanswered (the
/// client may send it again elsewhere).
async fn request(
    resolver: Resolver,
    ctx: Arc<ConnCtx>,
    early: Option<tokio::sync::watch::Receiver<bool>>,
    refused: bool,
) {
    let settings = &ctx.settings;
    let (req, stream) =
        match tokio::time::timeout(settings.header_timeout, resolver.resolve_request()).await {
            Ok(Ok(resolved)) => resolved,
            Ok(Err(e)) => {
                debug!(error = %e, "HTTP/3 request refused");
                return;
            }
            Err(_) => {
                debug!("no HTTP/3 request head within header_timeout");
                return;
            }
        };
    if refused {
        debug!("request after GOAWAY: rejected");
        let mut stream = stream;
        stream.stop_sending(::h3::error::Code::H3_REQUEST_REJECTED);
        stream.stop_stream(::h3::error::Code::H3_REQUEST_REJECTED);
        return;
    }
    let (mut send, recv) = stream.split();
    let mut req = req;
    if let Some(mut done) = early {
        if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
            // Safe to act on even if replayed; the backend is told, and may answer
            // 425 itself.
            req.headers_mut()
                .insert(EARLY_DATA.clone(), http::HeaderValue::from_static("1"));
        } else {
            // Anything else waits for the handshake: a replay never gets past it.
            let confirmed = tokio::time::timeout(settings.header_timeout, done.wait_for(|d| *d));
            if !matches!(confirmed.await, Ok(Ok(_))) {
                debug!("early request without a completed handshake: 425");
                let too_early = Response::builder()
                    .status(StatusCode::from_u16(425).unwrap_or(StatusCode::BAD_REQUEST))
                    .body(())
                    .unwrap_or_default();
                if progress(settings.idle_timeout, send.send_response(too_early))
                    .await
                    .is_ok()
                {
                    let _ = progress(settings.idle_timeout, send.finish()).await;
                }
                return;
            }
        }
    }
    let declared = content_length(req.headers());
    let mut body = Box::new(H3Body {
        stream: recv,
        state: State::Data,
        declared,
        seen: 0,
        first: None,
    });
    // Without a length, whether there is a body at all is known once the stream says
    // so: a GET's end arrives with its head.
    if declared.is_none_or(|n| n == 0) {
        let first = tokio::time::timeout(settings.body_timeout, body.first_frame()).await;
        if first.is_err() {
            debug!("HTTP/3 request body not begun within body_timeout");
            send.stop_stream(::h3::error::Code::H3_REQUEST_INCOMPLETE);
            return;
        }
    }
    let head_only = req.method() == Method::HEAD;
    let response = handle(req.map(|()| Inbound::H3(body)), &ctx).await;
    let (mut parts, body) = response.into_parts();
    for name in CONNECTION_SPECIFIC {
        parts.headers.remove(name);
    }
    parts.headers.remove(&super::h1::PROXY_CONNECTION);
    let bodiless = head_only
        || parts.status.is_informational()
        || matches!(
            parts.status,
            StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
        );
    // A client that stops reading grants no more flow-control credit, and a write
    // would wait for ever: each must make progress within `idle_timeout`, or the
    // stream is reset (and the upstream request dropped).
    let stall = settings.idle_timeout;
    let head = send.send_response(Response::from_parts(parts, ()));
    if let Err(e) = progress(stall, head).await {
        debug!(error = %e, "HTTP/3 response head not sent");
        send.stop_stream(::h3::error::Code::H3_REQUEST_CANCELLED);
        return;
    }
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                debug!(error = %e, "response body failed: HTTP/3 stream reset");
                send.stop_stream(::h3::error::Code::H3_INTERNAL_ERROR);
                return;
            }
        };
        let sent = match frame.into_data() {
            Ok(data) if data.is_empty() || bodiless => Ok(()),
            Ok(data) => progress(stall, send.send_data(data)).await,
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) if !bodiless => progress(stall, send.send_trailers(trailers)).await,
                _ => Ok(()),
            },
        };
        if let Err(e) = sent {
            // The client reset the stream, left, or stopped reading: the body (and
            // its upstream request) is dropped.
            debug!(error = %e, "HTTP/3 response not delivered");
            send.stop_stream(::h3::error::Code::H3_REQUEST_CANCELLED);
            return;
        }
    }
    let _ = progress(stall, send.finish()).await;
}

/// A write to the client, given `limit` to complete.
async fn progress(
    limit: Duration,
    write: impl std::future::Future<Output = Result<(), ::h3::error::StreamError>>,
) -> Result<(), String> {
    match tokio::time::timeout(limit, write).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no progress for {limit:?}")),
    }
}

/// A request's `Content-Length`, when it has one valid value.
pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok()?.parse().ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Data,
    Trailers,
    Done,
}

#[derive(Debug, thiserror::Error)]
#[error("HTTP/3 request body does not match its content-length")]
struct LengthMismatch;

/// An HTTP/3 request's body: DATA frames, then trailers, checked against the
/// request's `Content-Length` (RFC 9114 4.1.2: a mismatch is a malformed request).
pub struct H3Body {
    stream: RecvStream,
    state: State,
    declared: Option<u64>,
    seen: u64,
    /// The first frame (or failure), read before the request went on (see
    /// `first_frame`).
    first: Option<Result<Frame<Bytes>, BoxError>>,
}

impl H3Body {
    /// Reads up to the first DATA frame or the end of the body, so that a request
    /// without a body is known as one before it is forwarded.
    async fn first_frame(&mut self) {
        let next = std::future::poll_fn(|cx| Pin::new(&mut *self).poll_frame(cx)).await;
        self.first = next;
    }

    fn counted(&mut self, data: &Bytes) -> Result<(), BoxError> {
        self.seen += data.len() as u64;
        match self.declared {
            Some(n) if self.seen > n => Err(Box::new(LengthMismatch)),
            _ => Ok(()),
        }
    }

    fn ended(&mut self) -> Result<(), BoxError> {
        self.state = State::Done;
        match self.declared {
            Some(n) if self.seen != n => Err(Box::new(LengthMismatch)),
            _ => Ok(()),
        }
    }
}

impl Body for H3Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(first));
        }
        loop {
            match this.state {
                State::Data => match ready!(this.stream.poll_recv_data(cx)) {
                    Ok(Some(mut buf)) => {
                        let data = buf.copy_to_bytes(buf.remaining());
                        if data.is_empty() {
                            continue;
                        }
                        if let Err(e) = this.counted(&data) {
                            this.state = State::Done;
                            return Poll::Ready(Some(Err(e)));
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(None) => this.state = State::Trailers,
                    Err(e) => {
                        this.state = State::Done;
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                },
                State::Trailers => {
                    let trailers = ready!(this.stream.poll_recv_trailers(cx));
                    if let Err(e) = this.ended() {
                        return Poll::Ready(Some(Err(e)));
                    }
                    return Poll::Ready(match trailers {
                        Ok(Some(t)) => Some(Ok(Frame::trailers(t))),
                        Ok(None) => None,
                        Err(e) => Some(Err(Box::new(e))),
                    });
                }
                State::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done && self.first.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let first = match &self.first {
            Some(Ok(frame)) => frame.data_ref().map_or(0, |d| d.len() as u64),
            _ => 0,
        };
        match (self.declared, self.state) {
            (_, State::Done) => SizeHint::with_exact(first),
            (Some(n), _) => SizeHint::with_exact(n.saturating_sub(self.seen) + first),
            (None, _) => SizeHint::default(),
        }
    }
}
