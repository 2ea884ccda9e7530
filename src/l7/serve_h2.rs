//! Serving an HTTP/2 client connection ([`super::h2::server`]): the connection's
//! task reads and writes frames and starts a task per request stream; each stream's
//! task runs the request through the engine and writes its answer (head, body as the
//! client's flow control allows, trailers) on the stream itself. An extended CONNECT
//! (RFC 8441) whose answer is a 2xx hands its stream to the upgrade tunnel.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::debug;

use super::conn::ConnCtx;
use super::forward::H2Connect;
use super::h2::server::{self, Incoming, Responder};
use super::h2::Pump;
use super::request::handle;
use super::request_body::{BoxError, Inbound};

/// RST_STREAM codes a stream's task sends.
const INTERNAL_ERROR: u32 = 0x2;

/// An HTTP/2 client connection being served: its streams, until the client or a
/// graceful shutdown closes it.
pub(super) struct Server<S> {
    conn: server::Connection<S>,
    ctx: Arc<ConnCtx>,
}

impl<S> Server<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    pub(super) fn new(io: S, config: &server::Config, ctx: Arc<ConnCtx>) -> Server<S> {
        Server {
            conn: server::accept(io, config),
            ctx,
        }
    }

    /// GOAWAY: no new stream is taken; the connection closes once the open ones end.
    pub(super) fn graceful_shutdown(&mut self) {
        self.conn.graceful_shutdown();
    }
}

impl<S> Future for Server<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = Result<(), server::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match ready!(this.conn.poll_accept(cx)) {
                Some(Ok(req)) => {
                    // Boxed: the request's future is several KiB, and a task's
                    // creation and end would each copy it whole.
                    let ctx = this.ctx.clone();
                    tokio::spawn(crate::side::boxed(|| stream(req, ctx)));
                }
                Some(Err(e)) => return Poll::Ready(Err(e)),
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// One request stream: the engine's answer written back, and the request (with its
/// upstream exchange) dropped if the client resets the stream first.
async fn stream(req: server::Request, ctx: Arc<ConnCtx>) {
    let server::Request {
        mut head,
        body,
        mut respond,
        declared,
    } = req;
    // A CONNECT's stream carries the tunnel, not a body: it is kept aside until the
    // answer says whether a tunnel opens.
    let mut tunnel = None;
    let body = if head.method == Method::CONNECT {
        if declared.is_some_and(|n| n > 0) {
            respond.reset(INTERNAL_ERROR);
            return;
        }
        let (connect, handed) = H2Connect::new();
        head.extensions.insert(connect);
        tunnel = Some((body, handed));
        H2Body::empty()
    } else {
        match body {
            Some(body) => H2Body::new(body, declared),
            None => H2Body::empty(),
        }
    };
    let handling = handle(Request::from_parts(head, Inbound::H2(body)), &ctx);
    // Polled where it lies: the request's future is moved once, not into a select's
    // tuple as well.
    tokio::pin!(handling);
    let answered = std::future::poll_fn(|cx| {
        if let Poll::Ready(response) = handling.as_mut().poll(cx) {
            return Poll::Ready(Ok(response));
        }
        respond.poll_reset(cx).map(Err)
    })
    .await;
    let response = match answered {
        Ok(response) => response,
        Err(reset) => {
            debug!(reason = %reset, "client reset a stream before its answer");
            return;
        }
    };
    let (mut head, body) = response.into_parts();
    strip_connection_specific(&mut head.headers);
    if !head.headers.contains_key(header::DATE) {
        head.headers.insert(header::DATE, date::now());
    }
    if let Some((recv, handed)) = tunnel {
        if head.status.is_success() {
            if head.headers.remove(header::CONTENT_LENGTH).is_some() {
                debug!("content-length dropped from a 2xx to CONNECT");
            }
            match (recv, respond.send_head(head.status, &head.headers, false)) {
                (Some(recv), Ok(())) => handed.give(H2Io::new(recv, respond)),
                (_, Err(e)) => debug!(error = %e, "answer to CONNECT not sent"),
                // The client ended its side with the CONNECT: nothing to tunnel.
                (None, Ok(())) => {}
            }
            return;
        }
    }
    if body.is_end_stream() {
        if let Err(e) = respond.send_head(head.status, &head.headers, true) {
            debug!(error = %e, "HTTP/2 response not sent");
        }
        return;
    }
    if let Some(n) = body.size_hint().exact() {
        head.headers
            .entry(header::CONTENT_LENGTH)
            .or_insert_with(|| HeaderValue::from(n));
    }
    match respond.send_head(head.status, &head.headers, false) {
        Ok(()) => {
            if let Err(Some(e)) = Pump::new(body, respond, INTERNAL_ERROR).await {
                debug!(error = %e, "response body failed: HTTP/2 stream reset");
            }
        }
        Err(e) => debug!(error = %e, "HTTP/2 response not sent"),
    }
}

/// Removes the fields HTTP/2 forbids (RFC 9113 8.2.2). One pass over the names finds
/// whether there is any.
fn strip_connection_specific(headers: &mut HeaderMap) {
    fn forbidden(name: &HeaderName) -> bool {
        name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || name == header::UPGRADE
            || name == header::TE
            || name == super::h1::KEEP_ALIVE
            || name == super::h1::PROXY_CONNECTION
    }
    if !headers.keys().any(forbidden) {
        return;
    }
    let trailers_only = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        super::h1::KEEP_ALIVE.clone(),
        super::h1::PROXY_CONNECTION.clone(),
    ] {
        headers.remove(name);
    }
    if !trailers_only {
        headers.remove(header::TE);
    }
}

/// An HTTP/2 request's body: DATA (each chunk's window given back as it is read),
/// then trailers. A stream the client reset before its end, or whose DATA disagreed
/// with its `Content-Length`, is a failed body, never a short one taken for whole.
pub struct H2Body {
    recv: Option<Incoming>,
    data_done: bool,
    declared: Option<u64>,
}

impl H2Body {
    fn new(recv: Incoming, declared: Option<u64>) -> H2Body {
        H2Body {
            recv: Some(recv),
            data_done: false,
            declared,
        }
    }

    fn empty() -> H2Body {
        H2Body {
            recv: None,
            data_done: true,
            declared: Some(0),
        }
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(recv) = this.recv.as_mut() else {
            return Poll::Ready(None);
        };
        if !this.data_done {
            match ready!(recv.poll_data(cx)) {
                Some(Ok(chunk)) => return Poll::Ready(Some(Ok(Frame::data(chunk)))),
                Some(Err(e)) => {
                    this.recv = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
                None => this.data_done = true,
            }
        }
        let trailers = ready!(recv.poll_trailers(cx));
        this.recv = None;
        match trailers {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match (self.recv.is_some(), self.declared) {
            (false, _) => SizeHint::with_exact(0),
            (true, Some(n)) if !self.data_done => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// A stream turned tunnel (an extended CONNECT answered 2xx): what the client sends
/// in DATA is read, what is written goes out in DATA as the client's window allows,
/// and shutting down the writing side ends the stream.
pub(crate) struct H2Io {
    recv: Incoming,
    send: Responder,
    /// Received but not yet read.
    buf: Bytes,
}

impl H2Io {
    fn new(recv: Incoming, send: Responder) -> H2Io {
        H2Io {
            recv,
            send,
            buf: Bytes::new(),
        }
    }
}

/// A stream error as I/O: a reset with NO_ERROR or CANCEL is the tunnel's end.
fn io_error(e: server::Error) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, e)
}

fn tunnel_ended(e: &server::Error) -> bool {
    matches!(e.reason(), Some(0x0 | 0x8))
}

impl AsyncRead for H2Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.buf.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(chunk)) => this.buf = chunk,
                Some(Err(e)) if tunnel_ended(&e) => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = this.buf.len().min(out.remaining());
        out.put_slice(&this.buf[..n]);
        this.buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send.poll_send_some(cx, data, false).map_err(|e| {
            debug!(error = %e, "tunnel's stream ended");
            io_error(e)
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.send
            .poll_send_some(cx, &[], true)
            .map_ok(|_| ())
            .map_err(io_error)
    }
}

pub(in crate::l7) use date::now as date;

/// The `Date` of responses that carry none, formatted once a second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    use http::HeaderValue;

    thread_local! {
        static NOW: RefCell<(u64, HeaderValue)> =
            const { RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
    }

    pub(in crate::l7) fn now() -> HeaderValue {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        NOW.with(|cached| {
            let mut cached = cached.borrow_mut();
            if cached.0 != second {
                if let Ok(v) = HeaderValue::try_from(httpdate::fmt_http_date(now)) {
                    *cached = (second, v);
                }
            }
            cached.1.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_specific_fields_are_stripped_and_te_trailers_kept() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::SERVER, HeaderValue::from_static("x"));
        strip_connection_specific(&mut h);
        let names: Vec<_> = h.keys().map(|n| n.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(h.contains_key(header::TE) && h.contains_key(header::SERVER));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_connection_specific(&mut h);
        assert!(!h.contains_key(header::TE));
    }

    #[test]
    fn the_date_is_an_http_date_of_now() {
        let v = date::now();
        let t = httpdate::parse_http_date(v.to_str().unwrap()).unwrap();
        let age = std::time::SystemTime::now().duration_since(t).unwrap();
        assert!(age.as_secs() < 5);
    }
}
