//! HTTP/1.1 to a backend, driven inside the request's own task: the request head is
//! written from the forwarding's header map, the response head is parsed with
//! `httparse`, and the response body is decoded (`Content-Length`, chunked, or up to
//! the connection's close) as the client reads it. No task per connection, no channel
//! per request: the connection is a value that the pool holds while it is idle and
//! the response body holds while a response streams.
//!
//! The parser is strict where a lenient one could be fooled into reading a response
//! boundary in the wrong place: conflicting `Content-Length` values, a chunk size that
//! is not hexadecimal or overflows, a chunk not followed by CRLF, header fields folded
//! over lines, or a head over [`MAX_HEAD`] bytes all fail the response (502) and close
//! the connection.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, Version};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::request_body::{BoxError, RequestBody, TooLarge, TooLate};

mod body;
mod parse;

pub(super) use body::{decode, ResponseBody};
use parse::*;
pub(super) use parse::{content_length, record_spans};
pub(super) use parse::{KEEP_ALIVE, PROXY_CONNECTION};

/// The largest response head (status line, fields, and any interim 1xx heads before
/// it) read from a backend, and the read-ahead of a response body.
pub(super) const MAX_HEAD: usize = 32 * 1024;

/// Most fields in one response head or trailer section.
const MAX_FIELDS: usize = 128;

/// The longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;

/// What one read from a backend asks for at least.
pub(super) const READ_SIZE: usize = 16 * 1024;

/// What the first read of a response asks for (later ones [`READ_SIZE`]).
const HEAD_READ_SIZE: usize = 4 * 1024;

/// What one read asks for while a large body streams and the backend keeps the
/// socket full: an eighth of the reads (and writes to the client) of [`READ_SIZE`].
/// Only while that much is known to follow, so that a connection serving small
/// responses, or a slow backend, never fills a buffer this large.
pub(super) const BODY_READ_SIZE: usize = 128 * 1024;

/// A backend connection's byte stream: plain TCP or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, b),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, b),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One connection to a backend, between requests or during one.
pub struct Conn {
    io: Stream,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// Request heads are written from here; its allocation is kept between requests.
    head: Vec<u8>,
}

/// Why an exchange failed.
pub enum Failed {
    /// Not a byte of the request was written: the connection was already closed. The
    /// request, body included, can go to another connection.
    Unsent(RequestBody, io::Error),
    /// The request's own body failed: too large, too late, or the client went away.
    RequestBody(BoxError),
    /// The connection failed; `answered` says whether any byte of a response arrived.
    Io { error: io::Error, answered: bool },
    /// The backend's response is not valid HTTP/1.1.
    Invalid(&'static str),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Unsent(_, e) => write!(f, "connection closed before the request: {e}"),
            Failed::RequestBody(e) => write!(f, "request body: {e}"),
            Failed::Io { error, .. } => write!(f, "{error}"),
            Failed::Invalid(why) => write!(f, "invalid response: {why}"),
        }
    }
}

impl Failed {
    /// Whether the request body failed because it went over `max_body_size`.
    pub fn too_large(&self) -> bool {
        matches!(self, Failed::RequestBody(e) if e.is::<TooLarge>())
    }

    /// Whether the request body did not arrive within `body_timeout`.
    pub fn too_late(&self) -> bool {
        matches!(self, Failed::RequestBody(e) if e.is::<TooLate>())
    }
}

/// The request head as it goes to the backend.
pub struct Head {
    pub method: Method,
    pub uri: Uri,
    /// The client's fields, less hop-by-hop ones and those in `added`.
    pub headers: HeaderMap,
    pub added: Added,
}

/// The fields fulcrum sets itself, written with the head rather than inserted into the
/// map (each insertion would hash and probe it again).
#[derive(Default)]
pub struct Added {
    /// Written first.
    pub host: Option<HeaderValue>,
    pub forwarded_for: Option<HeaderValue>,
    pub forwarded_proto: Option<HeaderValue>,
    pub forwarded_host: Option<HeaderValue>,
    pub request_id: Option<HeaderValue>,
    /// With `[tracing]`: the `traceparent` fulcrum passes on, as written.
    pub traceparent: Option<[u8; 55]>,
    /// `Content-Length: 0` for a request without a body.
    pub empty_length: bool,
}

/// How a response body is delimited (RFC 9112 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    Length(u64),
    Chunked(Chunk),
    /// Up to the connection's end: never reused.
    Close,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// A response head read from a backend, and what reading its body needs.
pub struct Response {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    /// The body, or for a 101 the connection itself (see [`ResponseBody::upgraded`]).
    pub body: ResponseBody,
}

impl Conn {
    pub fn new(io: Stream) -> Self {
        Conn {
            io,
            buf: BytesMut::new(),
            head: Vec::new(),
        }
    }

    /// Whether the connection is still open with nothing unexpected on it: an idle
    /// connection the backend closed (or wrote to) must not carry a request.
    pub fn is_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut probe),
            Poll::Pending
        )
    }

    /// Sends `head` and `body` and reads the response head, skipping interim (1xx)
    /// responses other than 101. The request body keeps being sent while the response
    /// streams if the backend answers before it has all of it.
    pub async fn exchange(mut self, head: &Head, body: RequestBody) -> Result<Response, Failed> {
        self.head.clear();
        let chunked = encode_head(&mut self.head, head, &body);
        let mut writer = Writer {
            pieces: VecDeque::new(),
            body: Some(body),
            chunked,
            wrote_any: false,
            flushed: false,
        };
        // Most heads go out whole in one write, straight from the connection's own
        // buffer; only what does not is queued.
        let sent = write_now(&mut self.io, &self.head);
        writer.wrote_any = sent > 0;
        if sent < self.head.len() {
            writer
                .pieces
                .push_back(Bytes::copy_from_slice(&self.head[sent..]));
        }
        let mut writing = true;
        let mut answered = false;
        // A backend may answer and close before it read the whole request: its
        // answer still counts, the failed write only if no answer comes.
        let mut write_failed = None;
        let parsed = poll_fn(|cx| {
            if writing {
                match writer.poll(&mut self.io, cx) {
                    Poll::Ready(Ok(())) => writing = false,
                    Poll::Ready(Err(Failed::Io { error, .. })) if writer.wrote_any => {
                        writing = false;
                        write_failed = Some(error);
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            loop {
                // Nothing to parse before the first bytes arrive (the common case on
                // the poll that sent the request, and on the wake-up that reads it).
                if !self.buf.is_empty() {
                    match parse_head(&mut self.buf, &head.method) {
                        Ok(Some(parsed)) => return Poll::Ready(Ok(parsed)),
                        Ok(None) => {}
                        Err(why) => return Poll::Ready(Err(Failed::Invalid(why))),
                    }
                }
                if self.buf.len() >= MAX_HEAD {
                    return Poll::Ready(Err(Failed::Invalid("response head too large")));
                }
                // A first read of 4 KiB holds most heads and small bodies whole; a
                // connection waiting on its backend holds no more than that.
                let want = if self.buf.capacity() == 0 {
                    HEAD_READ_SIZE
                } else {
                    READ_SIZE
                };
                match ready!(poll_fill(&mut self.io, &mut self.buf, want, cx)) {
                    Ok(0) => {
                        let error = write_failed.take().unwrap_or_else(|| {
                            io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "backend closed the connection before a response",
                            )
                        });
                        return Poll::Ready(Err(Failed::Io { error, answered }));
                    }
                    Ok(_) => answered = true,
                    Err(error) => return Poll::Ready(Err(Failed::Io { error, answered })),
                }
            }
        })
        .await;
        let parsed = match parsed {
            Ok(p) => p,
            Err(Failed::Io {
                error,
                answered: false,
            }) if !writer.wrote_any => {
                let body = writer.body.take().unwrap_or_else(RequestBody::empty);
                return Err(Failed::Unsent(body, error));
            }
            Err(e) => return Err(e),
        };
        let Parsed {
            status,
            version,
            headers,
            framing,
            reusable,
        } = parsed;
        Ok(Response {
            status,
            version,
            headers,
            body: ResponseBody {
                conn: Some(self),
                framing,
                reusable: reusable && write_failed.is_none(),
                writer: writing.then(|| Box::new(writer)),
                filled: false,
            },
        })
    }
}

/// Writes what the socket takes of `data` now, without waiting: the bytes written (0
/// also when it would wait or failed; the writer then finds out again).
fn write_now(io: &mut Stream, data: &[u8]) -> usize {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match Pin::new(io).poll_write(&mut cx, data) {
        Poll::Ready(Ok(n)) => n,
        _ => 0,
    }
}

/// Reads more from `io` into `buf`, with room for at least `want / 4` bytes (`want`
/// when it has to make room); `Ok(0)` is the connection's end.
pub(super) fn poll_fill<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    want: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < want / 4 {
        buf.reserve(want);
    }
    let spare = buf.spare_capacity_mut();
    let mut rb = ReadBuf::uninit(spare);
    ready!(Pin::new(io).poll_read(cx, &mut rb))?;
    let n = rb.filled().len();
    // SAFETY: `poll_read` initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Poll::Ready(Ok(n))
}

/// Writes the request line and fields; returns whether the body goes chunked.
fn encode_head(out: &mut Vec<u8>, head: &Head, body: &RequestBody) -> bool {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    let target = head.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let field = |out: &mut Vec<u8>, name: &[u8], value: &HeaderValue| {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    };
    let added = &head.added;
    if let Some(v) = &added.host {
        field(out, b"host", v);
    }
    for (name, value) in &head.headers {
        field(out, name.as_str().as_bytes(), value);
    }
    for (name, value) in [
        (&b"x-forwarded-for"[..], &added.forwarded_for),
        (b"x-forwarded-proto", &added.forwarded_proto),
        (b"x-forwarded-host", &added.forwarded_host),
        (b"x-request-id", &added.request_id),
    ] {
        if let Some(v) = value {
            field(out, name, v);
        }
    }
    if let Some(v) = &added.traceparent {
        out.extend_from_slice(b"traceparent: ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    let mut chunked = false;
    if body.is_end_stream() {
        if added.empty_length {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
    } else {
        match body.size_hint().exact() {
            Some(n) => {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(itoa_u64(n, &mut [0u8; 20]));
                out.extend_from_slice(b"\r\n");
            }
            None => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                chunked = true;
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    chunked
}

fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// The request's bytes on their way out: the head, then the body as it arrives.
struct Writer {
    pieces: VecDeque<Bytes>,
    body: Option<RequestBody>,
    chunked: bool,
    wrote_any: bool,
    flushed: bool,
}

impl Writer {
    /// Writes what there is; ready once the whole request is written and flushed.
    fn poll(&mut self, io: &mut Stream, cx: &mut Context<'_>) -> Poll<Result<(), Failed>> {
        let io_failed = |error: io::Error| Failed::Io {
            error,
            answered: false,
        };
        loop {
            while let Some(front) = self.pieces.front_mut() {
                match Pin::new(&mut *io).poll_write(cx, front) {
                    Poll::Ready(Ok(0)) => {
                        let e = io::Error::new(io::ErrorKind::WriteZero, "backend write failed");
                        return Poll::Ready(Err(io_failed(e)));
                    }
                    Poll::Ready(Ok(n)) => {
                        self.wrote_any = true;
                        self.flushed = false;
                        front.advance(n);
                        if front.is_empty() {
                            self.pieces.pop_front();
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(io_failed(e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if !self.flushed {
                match Pin::new(&mut *io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.flushed = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(io_failed(e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            let Some(body) = self.body.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            match ready!(Pin::new(body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) if self.chunked => {
                        self.pieces
                            .push_back(Bytes::from(format!("{:x}\r\n", data.len())));
                        self.pieces.push_back(data);
                        self.pieces.push_back(Bytes::from_static(b"\r\n"));
                    }
                    Ok(data) => self.pieces.push_back(data),
                    Err(frame) => {
                        if let (true, Ok(trailers)) = (self.chunked, frame.into_trailers()) {
                            let mut t = b"0\r\n".to_vec();
                            for (name, value) in &trailers {
                                t.extend_from_slice(name.as_str().as_bytes());
                                t.extend_from_slice(b": ");
                                t.extend_from_slice(value.as_bytes());
                                t.extend_from_slice(b"\r\n");
                            }
                            t.extend_from_slice(b"\r\n");
                            self.pieces.push_back(Bytes::from(t));
                            self.chunked = false;
                            self.body = None;
                        }
                    }
                },
                Some(Err(e)) => {
                    self.body = None;
                    return Poll::Ready(Err(Failed::RequestBody(e)));
                }
                None => {
                    if self.chunked {
                        self.pieces.push_back(Bytes::from_static(b"0\r\n\r\n"));
                    }
                    self.body = None;
                }
            }
        }
    }
}
#[cfg(test)]
mod tests;
