//! The server side of an HTTP/2 connection (RFC 9113): a client's connection to
//! fulcrum.
//!
//! Built like the client side: the connection's task ([`Connection`]) reads frames
//! and files each into its stream's slot, writes what the streams queued, and hands
//! every new request to its caller ([`Connection::poll_accept`]). A request's own
//! task reads its body from the slot ([`Incoming`]) and writes its response
//! ([`Responder`]): it encodes the head (HPACK with no dynamic table needs no shared
//! state) and appends its frames to the connection's outgoing buffer. One lock
//! guards the connection's state; with a thread per core it is never contended.
//!
//! Bad input, as RFC 9113 sorts it: what breaks one stream resets that stream
//! (malformed heads, a body longer or shorter than its `Content-Length`, frames
//! past a stream's end or window); what breaks the connection (bad frame sizes,
//! frames on idle streams, a bad header block, a broken CONTINUATION sequence,
//! window overflow) ends it with GOAWAY. A client that makes fulcrum reset too
//! many streams, or resets too many before their answer (rapid reset), has its
//! connection closed with ENHANCE_YOUR_CALM.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};
use tokio::io::{AsyncRead, AsyncWrite};

use super::frame::*;
use super::hpack;

/// SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441).
const ENABLE_CONNECT_PROTOCOL: u16 = 0x8;
/// Streams reset by this side whose late frames are dropped without a word.
const RECENT_RESETS: usize = 64;
/// Outgoing bytes (answers to PING and SETTINGS included) past which the
/// connection stops reading: a client that sends but does not read cannot make it
/// queue without end.
const READ_STOP: usize = 1 << 20;
/// Request octets still read (and dropped) after the whole answer went out; past
/// them the upload is stopped with `RST_STREAM NO_ERROR`.
const DRAIN: u64 = 64 * 1024;

/// The limits of a client connection, all set here (none left to a default).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// SETTINGS_MAX_CONCURRENT_STREAMS: streams past it are refused.
    pub max_streams: u32,
    /// The window of each stream, and of the connection.
    pub stream_window: u32,
    pub conn_window: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: a larger request head is answered 431.
    pub max_header_list: usize,
    /// Outgoing bytes queued before response bodies wait for the connection to
    /// drain.
    pub max_send_buffer: usize,
    /// Streams the client may reset before their answer, beyond those answered.
    pub max_early_resets: usize,
    /// Streams this side may reset for the client's errors.
    pub max_error_resets: usize,
}

/// Why a stream failed.
#[derive(Debug, Clone)]
pub(crate) enum Error {
    /// The client reset the stream.
    Reset(u32),
    /// This side reset the stream: the client broke the protocol on it.
    Malformed(&'static str),
    /// This side no longer reads the request: its answer is whole.
    Stopped,
    /// The connection ended.
    Closed(Arc<str>),
}

impl Error {
    /// The error code the client sent, for a reset.
    pub(crate) fn reason(&self) -> Option<u32> {
        match self {
            Error::Reset(r) => Some(*r),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Reset(r) => write!(f, "stream reset by the client: {}", reason::name(*r)),
            Error::Malformed(why) => write!(f, "invalid HTTP/2 request: {why}"),
            Error::Stopped => f.write_str("request body no longer read"),
            Error::Closed(why) => write!(f, "HTTP/2 connection ended: {why}"),
        }
    }
}

impl std::error::Error for Error {}

/// The `:protocol` of an extended CONNECT (RFC 8441), put on its request.
#[derive(Debug, Clone)]
pub(crate) struct Protocol(Bytes);

impl Protocol {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A request that arrived: its head, its body (`None` when the head ended the
/// stream), and where its answer goes.
pub(crate) struct Request {
    pub head: http::request::Parts,
    pub body: Option<Incoming>,
    pub respond: Responder,
    /// Its `Content-Length`, when it declared one (checked against its DATA).
    pub declared: Option<u64>,
}

/// One stream's state, shared by the request's task and the connection's.
#[derive(Default)]
struct Slot {
    data: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    /// The client ended the stream (or it was reset): no more request frames.
    recv_end: bool,
    recv_window: i64,
    unacked: i64,
    declared: Option<u64>,
    received: u64,
    recv_waker: Option<Waker>,
    /// The request's body is no longer read: what arrives is dropped.
    unread: bool,
    send_window: i64,
    send_waker: Option<Waker>,
    send_end: bool,
    /// The stream failed: both halves see it.
    error: Option<Error>,
    /// Holders of the stream: the request's body and its answer. A stream no one
    /// holds stays only while it drains (answered whole, the request still arriving).
    halves: u8,
    /// Request octets that arrived after the whole answer was sent.
    after_answer: u64,
}

impl Slot {
    fn wake(&mut self) {
        if let Some(w) = self.recv_waker.take() {
            w.wake();
        }
        if let Some(w) = self.send_waker.take() {
            w.wake();
        }
    }

    fn fail(&mut self, e: Error) {
        if self.error.is_none() {
            self.error = Some(e);
        }
        self.recv_end = true;
        self.wake();
    }
}

struct State {
    out: BytesMut,
    driver: Option<Waker>,
    streams: HashMap<u32, Slot, Ids>,
    /// The client's SETTINGS_INITIAL_WINDOW_SIZE.
    initial_window: i64,
    send_window: i64,
    recv_window: i64,
    unacked: i64,
    conn_window: i64,
    stream_window: i64,
    out_high: usize,
    /// Response bodies waiting for `out` to drain.
    blocked: Vec<Waker>,
    /// The connection ended: every stream fails with this.
    error: Option<Error>,
    /// Streams this side reset lately: their late frames are dropped quietly.
    recent_resets: VecDeque<u32>,
    /// Streams closed lately (told from identifiers never used).
    recent_closed: VecDeque<u32>,
    /// Client resets of unanswered streams, less answers given.
    early_resets: usize,
}

impl State {
    fn frame(&mut self, len: usize, kind: u8, flags: u8, id: u32) {
        put_frame_head(&mut self.out, len, kind, flags, id);
    }

    fn wake_driver(&self) {
        if let Some(w) = &self.driver {
            w.wake_by_ref();
        }
    }

    /// Resets stream `id` from this side; its late frames will be dropped.
    fn reset(&mut self, id: u32, code: u32) {
        self.frame(4, RST_STREAM, 0, id);
        self.out.put_u32(code);
        remember(&mut self.recent_resets, id);
    }

    fn window_update(&mut self, id: u32, inc: i64) {
        self.frame(4, WINDOW_UPDATE, 0, id);
        self.out.put_u32(inc as u32);
    }

    /// Gives `n` octets of window back to the connection (and to stream `id`).
    fn release(&mut self, id: Option<u32>, n: i64) {
        self.unacked += n;
        if self.unacked >= self.conn_window / 2 {
            let inc = std::mem::take(&mut self.unacked);
            self.recv_window += inc;
            self.window_update(0, inc);
        }
        if let Some(id) = id {
            let half = self.stream_window / 2;
            let Some(slot) = self.streams.get_mut(&id) else {
                return;
            };
            slot.unacked += n;
            if slot.unacked >= half && !slot.recv_end {
                let inc = std::mem::take(&mut slot.unacked);
                slot.recv_window += inc;
                self.window_update(id, inc);
            }
        }
    }

    /// Drops what stream `id` received and nobody will read, giving its window back
    /// to the connection.
    fn discard(&mut self, id: u32) {
        if let Some(slot) = self.streams.get_mut(&id) {
            let unread: usize = slot.data.drain(..).map(|b| b.len()).sum();
            if unread > 0 {
                self.release(None, unread as i64);
            }
        }
    }

    fn fail_all(&mut self, e: Error) {
        if self.error.is_none() {
            self.error = Some(e.clone());
        }
        for slot in self.streams.values_mut() {
            slot.fail(e.clone());
        }
        for w in self.blocked.drain(..) {
            w.wake();
        }
    }

    fn drop_half(&mut self, id: u32) {
        if let Some(slot) = self.streams.get_mut(&id) {
            slot.halves -= 1;
        }
        self.reap(id);
    }

    /// Forgets stream `id` once no one holds it and nothing more arrives on it.
    fn reap(&mut self, id: u32) {
        if let Some(slot) = self.streams.get(&id) {
            if slot.halves == 0 && (slot.recv_end || slot.error.is_some()) {
                self.streams.remove(&id);
                remember(&mut self.recent_closed, id);
            }
        }
    }

    /// Stops the upload of an answered stream with `NO_ERROR` (RFC 9113 8.1).
    fn stop_upload(&mut self, id: u32) {
        if let Some(slot) = self.streams.get_mut(&id) {
            slot.fail(Error::Stopped);
        }
        self.discard(id);
        self.reset(id, reason::NO_ERROR);
    }

    /// Writes a frame's head with room for a header block encoded after it; the
    /// block's length is set (or the block split into CONTINUATION frames) by
    /// [`State::end_block`].
    fn start_block(&mut self) -> usize {
        let at = self.out.len();
        self.out.put_bytes(0, 9);
        at
    }

    fn end_block(&mut self, at: usize, id: u32, end_stream: bool) {
        let len = self.out.len() - at - 9;
        if len <= MAX_FRAME {
            let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
            let head = &mut self.out[at..at + 9];
            head[..3].copy_from_slice(&(len as u32).to_be_bytes()[1..]);
            head[3] = HEADERS;
            head[4] = flags;
            head[5..].copy_from_slice(&id.to_be_bytes());
            return;
        }
        let block = self.out.split_off(at + 9);
        self.out.truncate(at);
        put_headers(&mut self.out, id, &block, end_stream);
    }
}

fn remember(ring: &mut VecDeque<u32>, id: u32) {
    if ring.len() == RECENT_RESETS {
        ring.pop_front();
    }
    ring.push_back(id);
}

struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held leaves nothing half-done that matters
        // more than carrying on.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Queues the frames of a stream's response; held by the request's task.
pub(crate) struct Responder {
    shared: Arc<Shared>,
    id: u32,
}

impl Responder {
    /// Sends the response's head, the end of the stream with it when `end`.
    pub(crate) fn send_head(
        &mut self,
        status: StatusCode,
        headers: &HeaderMap,
        end: bool,
    ) -> Result<(), Error> {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        let Some(slot) = st.streams.get_mut(&self.id) else {
            return Err(Error::Closed("stream gone".into()));
        };
        if let Some(e) = &slot.error {
            return Err(e.clone());
        }
        if end {
            slot.send_end = true;
            st.early_resets = st.early_resets.saturating_sub(1);
        }
        let was_empty = st.out.is_empty();
        let at = st.start_block();
        hpack::encode(&mut st.out, b":status", status.as_str().as_bytes(), false);
        for (name, value) in headers {
            hpack::encode(
                &mut st.out,
                name.as_str().as_bytes(),
                value.as_bytes(),
                value.is_sensitive(),
            );
        }
        st.end_block(at, self.id, end);
        if was_empty {
            st.wake_driver();
        }
        Ok(())
    }

    /// Sends what of `data` the windows allow now, at least one octet (the end of
    /// the stream with the last when `last`): how many were sent.
    pub(crate) fn poll_send_some(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
        last: bool,
    ) -> Poll<Result<usize, Error>> {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        let was_empty = st.out.is_empty();
        let Some(slot) = st.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(Error::Closed("stream gone".into())));
        };
        if let Some(e) = &slot.error {
            return Poll::Ready(Err(e.clone()));
        }
        if slot.send_end {
            // Ending a stream that has ended is done already.
            let done = data.is_empty() && last;
            return Poll::Ready(if done {
                Ok(0)
            } else {
                Err(Error::Closed("stream ended".into()))
            });
        }
        if st.out.len() >= st.out_high {
            st.blocked.push(cx.waker().clone());
            return Poll::Pending;
        }
        let room = st.send_window.min(slot.send_window).min(MAX_FRAME as i64);
        if room <= 0 && !data.is_empty() {
            slot.send_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = data.len().min(room.max(0) as usize);
        let end = last && n == data.len();
        put_frame_head(
            &mut st.out,
            n,
            DATA,
            if end { END_STREAM } else { 0 },
            self.id,
        );
        st.out.extend_from_slice(&data[..n]);
        st.send_window -= n as i64;
        slot.send_window -= n as i64;
        if end {
            slot.send_end = true;
            st.early_resets = st.early_resets.saturating_sub(1);
        }
        if was_empty {
            st.wake_driver();
        }
        Poll::Ready(Ok(n))
    }

    /// Sends all of `chunk` (what is sent is taken off its front), and the end of
    /// the stream with its last octet when `last`.
    pub(crate) fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
        last: bool,
    ) -> Poll<Result<(), Error>> {
        loop {
            if chunk.is_empty() && !last {
                return Poll::Ready(Ok(()));
            }
            let n = std::task::ready!(self.poll_send_some(cx, chunk, last))?;
            chunk.advance(n);
            if last && chunk.is_empty() {
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Ends the stream with trailers.
    pub(crate) fn send_trailers(&mut self, trailers: &HeaderMap) -> Result<(), Error> {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        let Some(slot) = st.streams.get_mut(&self.id) else {
            return Err(Error::Closed("stream gone".into()));
        };
        if let Some(e) = &slot.error {
            return Err(e.clone());
        }
        if slot.send_end {
            return Err(Error::Closed("stream ended".into()));
        }
        slot.send_end = true;
        st.early_resets = st.early_resets.saturating_sub(1);
        let was_empty = st.out.is_empty();
        let at = st.start_block();
        for (name, value) in trailers {
            if !is_connection_specific(name) && *name != header::TE {
                hpack::encode(
                    &mut st.out,
                    name.as_str().as_bytes(),
                    value.as_bytes(),
                    value.is_sensitive(),
                );
            }
        }
        st.end_block(at, self.id, true);
        if was_empty {
            st.wake_driver();
        }
        Ok(())
    }

    /// Resets the stream with `code` (its response failed).
    pub(crate) fn reset(&mut self, code: u32) {
        let mut st = self.shared.lock();
        let was_empty = st.out.is_empty();
        let Some(slot) = st.streams.get_mut(&self.id) else {
            return;
        };
        if slot.error.is_some() || slot.send_end {
            return;
        }
        slot.fail(Error::Malformed("response failed"));
        slot.send_end = true;
        st.discard(self.id);
        st.reset(self.id, code);
        if was_empty {
            st.wake_driver();
        }
    }

    /// Ready once the stream takes no more of the response (the client reset it, or
    /// the connection ended).
    pub(crate) fn poll_reset(&mut self, cx: &mut Context<'_>) -> Poll<Error> {
        let mut st = self.shared.lock();
        match st.streams.get_mut(&self.id) {
            Some(slot) => match &slot.error {
                Some(e) => Poll::Ready(e.clone()),
                None => {
                    slot.send_waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            },
            None => Poll::Ready(Error::Closed("stream gone".into())),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        let was_empty = st.out.is_empty();
        if let Some(slot) = st.streams.get_mut(&self.id) {
            if slot.error.is_none() && !slot.send_end {
                // Given up before its end.
                slot.fail(Error::Malformed("response abandoned"));
                st.discard(self.id);
                st.reset(self.id, reason::CANCEL);
            } else if slot.error.is_none()
                && !slot.recv_end
                && slot
                    .declared
                    .is_some_and(|d| d.saturating_sub(slot.received) > DRAIN)
            {
                // RFC 9113 8.1: the answer is whole; the client may stop sending.
                // A rest of at most DRAIN octets is read and dropped instead (its
                // trailers still checked), as clients that send the whole request
                // expect.
                st.stop_upload(self.id);
            }
        }
        if was_empty && !st.out.is_empty() {
            st.wake_driver();
        }
        st.drop_half(self.id);
    }
}

/// The request's body as it arrives: DATA, then trailers.
pub(crate) struct Incoming {
    shared: Arc<Shared>,
    id: u32,
}

impl Incoming {
    /// The next chunk of the body; its window goes back to the client.
    pub(crate) fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        let Some(slot) = st.streams.get_mut(&self.id) else {
            return Poll::Ready(Some(Err(Error::Closed("stream gone".into()))));
        };
        if let Some(chunk) = slot.data.pop_front() {
            let was_empty = st.out.is_empty();
            st.release(Some(self.id), chunk.len() as i64);
            if was_empty && !st.out.is_empty() {
                st.wake_driver();
            }
            return Poll::Ready(Some(Ok(chunk)));
        }
        if let Some(e) = &slot.error {
            return Poll::Ready(Some(Err(e.clone())));
        }
        if slot.recv_end {
            return Poll::Ready(None);
        }
        slot.recv_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The trailers, once the body has ended.
    pub(crate) fn poll_trailers(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<HeaderMap>, Error>> {
        let mut st = self.shared.lock();
        let Some(slot) = st.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(Error::Closed("stream gone".into())));
        };
        if let Some(t) = slot.trailers.take() {
            return Poll::Ready(Ok(Some(t)));
        }
        if let Some(e) = &slot.error {
            return Poll::Ready(Err(e.clone()));
        }
        if slot.recv_end {
            return Poll::Ready(Ok(None));
        }
        slot.recv_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Whether the body has ended and all of it was read.
    pub(crate) fn is_end_stream(&self) -> bool {
        let st = self.shared.lock();
        st.streams.get(&self.id).is_none_or(|s| {
            s.recv_end && s.error.is_none() && s.data.is_empty() && s.trailers.is_none()
        })
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if let Some(slot) = st.streams.get_mut(&self.id) {
            slot.unread = true;
        }
        st.discard(self.id);
        st.drop_half(self.id);
    }
}

/// A request head being decoded and checked (RFC 9113 8.2, 8.3.1).
#[derive(Default)]
struct Fields {
    method: Option<Bytes>,
    scheme: Option<Bytes>,
    authority: Option<Bytes>,
    path: Option<Bytes>,
    protocol: Option<Bytes>,
    headers: HeaderMap,
    size: usize,
    regular: bool,
    /// Trailers: no pseudo-header allowed.
    trailers: bool,
    malformed: Option<&'static str>,
    /// Larger than SETTINGS_MAX_HEADER_LIST_SIZE.
    too_large: bool,
    max: usize,
}

impl Fields {
    fn new(max: usize, trailers: bool) -> Fields {
        Fields {
            max,
            trailers,
            ..Fields::default()
        }
    }

    fn add(&mut self, name: Bytes, value: Bytes) {
        self.size += name.len() + value.len() + 32;
        if self.malformed.is_some() || self.too_large {
            return;
        }
        if self.size > self.max {
            self.too_large = true;
            return;
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            if self.regular || self.trailers {
                self.malformed = Some("pseudo-header out of place");
                return;
            }
            let field = match pseudo {
                b"method" => &mut self.method,
                b"scheme" => &mut self.scheme,
                b"authority" => &mut self.authority,
                b"path" => &mut self.path,
                b"protocol" => &mut self.protocol,
                _ => {
                    self.malformed = Some("unknown pseudo-header");
                    return;
                }
            };
            if field.is_some() {
                self.malformed = Some("pseudo-header twice");
                return;
            }
            *field = Some(value);
            return;
        }
        self.regular = true;
        if name.iter().any(u8::is_ascii_uppercase) {
            self.malformed = Some("upper-case field name");
            return;
        }
        let Ok(name) = HeaderName::from_bytes(&name) else {
            self.malformed = Some("bad field name");
            return;
        };
        if is_connection_specific(&name) {
            self.malformed = Some("connection-specific field");
            return;
        }
        if name == header::TE && &value[..] != b"trailers" {
            self.malformed = Some("te other than trailers");
            return;
        }
        let edge = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t'));
        if edge(value.first()) || edge(value.last()) {
            self.malformed = Some("field value with white space at an end");
            return;
        }
        match HeaderValue::from_maybe_shared(value) {
            Ok(v) => {
                if self.headers.capacity() == 0 {
                    self.headers.reserve(12);
                }
                self.headers.append(name, v);
            }
            Err(_) => self.malformed = Some("bad field value"),
        }
    }

    /// The request's head, or why it is malformed.
    fn request(self) -> Result<(http::request::Parts, Option<u64>), &'static str> {
        if let Some(why) = self.malformed {
            return Err(why);
        }
        let method = self.method.ok_or("no :method")?;
        let method = Method::from_bytes(&method).map_err(|_| "bad :method")?;
        let connect = method == Method::CONNECT;
        let mut parts = http::uri::Parts::default();
        if let Some(a) = self.authority {
            parts.authority = Some(Authority::from_maybe_shared(a).map_err(|_| "bad :authority")?);
        }
        match (&self.protocol, connect) {
            (Some(_), false) => return Err(":protocol on a request other than CONNECT"),
            (None, true) => {
                // A tunnel: its authority, nothing else.
                if self.scheme.is_some() || self.path.is_some() || parts.authority.is_none() {
                    return Err("CONNECT with :scheme or :path, or no :authority");
                }
            }
            _ => {
                let scheme = self.scheme.ok_or("no :scheme")?;
                let scheme = Scheme::try_from(&scheme[..]).map_err(|_| "bad :scheme")?;
                let path = self.path.ok_or("no :path")?;
                if path.is_empty() {
                    return Err("empty :path");
                }
                parts.path_and_query =
                    Some(PathAndQuery::from_maybe_shared(path).map_err(|_| "bad :path")?);
                // A URI has a scheme only with an authority.
                if parts.authority.is_some() {
                    parts.scheme = Some(scheme);
                }
            }
        }
        let uri = Uri::from_parts(parts).map_err(|_| "bad request target")?;
        let mut declared = None;
        for v in self.headers.get_all(header::CONTENT_LENGTH) {
            let n = std::str::from_utf8(v.as_bytes())
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or("bad content-length")?;
            if declared.is_some_and(|d| d != n) {
                return Err("content-length values disagree");
            }
            declared = Some(n);
        }
        let (mut head, ()) = http::Request::new(()).into_parts();
        head.method = method;
        head.uri = uri;
        head.version = Version::HTTP_2;
        head.headers = self.headers;
        if let Some(p) = self.protocol {
            head.extensions.insert(Protocol(p));
        }
        Ok((head, declared))
    }
}

/// A client connection being served: its frames read and written, its requests
/// handed out by [`Connection::poll_accept`].
pub(crate) struct Connection<T> {
    io: T,
    shared: Arc<Shared>,
    config: Config,
    rbuf: BytesMut,
    wbuf: BytesMut,
    hpack: hpack::Decoder,
    /// A header block whose CONTINUATION frames are still coming: its stream,
    /// whether it ends the stream, whether its stream is to be reset for a priority
    /// on itself, and its octets so far.
    continuation: Option<(u32, bool, bool, BytesMut)>,
    /// The client's preface, then its SETTINGS, have arrived.
    preface: bool,
    settings: bool,
    /// The highest stream the client opened.
    last_id: u32,
    arrived: VecDeque<Request>,
    error_resets: usize,
    /// GOAWAY sent for a graceful close: no stream above `last_id` is taken.
    going_away: bool,
    /// The connection is ending: what is queued is written, then it ends.
    closing: bool,
    /// How it ended, when not cleanly.
    failed: Option<Error>,
}

/// Starts serving a client connection whose first bytes (the preface) are still
/// to be read: fulcrum's SETTINGS are its first write.
pub(crate) fn accept<T>(io: T, config: &Config) -> Connection<T> {
    let mut out = BytesMut::with_capacity(1024);
    put_frame_head(&mut out, 30, SETTINGS, 0, 0);
    for (id, value) in [
        (0x3u16, config.max_streams),
        (0x4, config.stream_window),
        (0x5, MAX_FRAME as u32),
        (0x6, config.max_header_list.min(u32::MAX as usize) as u32),
        (ENABLE_CONNECT_PROTOCOL, 1),
    ] {
        out.put_u16(id);
        out.put_u32(value);
    }
    let conn_window = i64::from(config.conn_window).max(DEFAULT_WINDOW);
    if conn_window > DEFAULT_WINDOW {
        put_frame_head(&mut out, 4, WINDOW_UPDATE, 0, 0);
        out.put_u32((conn_window - DEFAULT_WINDOW) as u32);
    }
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            out,
            driver: None,
            streams: HashMap::default(),
            initial_window: DEFAULT_WINDOW,
            send_window: DEFAULT_WINDOW,
            recv_window: conn_window,
            unacked: 0,
            conn_window,
            stream_window: i64::from(config.stream_window),
            out_high: config.max_send_buffer.max(MAX_FRAME * 4),
            blocked: Vec::new(),
            error: None,
            recent_resets: VecDeque::new(),
            recent_closed: VecDeque::new(),
            early_resets: 0,
        }),
    });
    Connection {
        io,
        shared,
        config: config.clone(),
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        hpack: hpack::Decoder::default(),
        continuation: None,
        preface: false,
        settings: false,
        last_id: 0,
        arrived: VecDeque::new(),
        error_resets: 0,
        going_away: false,
        closing: false,
        failed: None,
    }
}

impl<T> Connection<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    /// Closes gracefully: GOAWAY names the last stream taken, the open streams
    /// finish, then the connection closes.
    pub(crate) fn graceful_shutdown(&mut self) {
        if self.going_away || self.closing {
            return;
        }
        self.going_away = true;
        let mut st = self.shared.lock();
        st.frame(8, GOAWAY, 0, 0);
        st.out.put_u32(self.last_id);
        st.out.put_u32(reason::NO_ERROR);
        st.wake_driver();
    }

    fn end(&mut self, e: Error) {
        let mut st = self.shared.lock();
        st.fail_all(e);
        self.closing = true;
    }

    fn conn_error(&mut self, ConnError(code, why): ConnError) {
        tracing::debug!(
            why,
            code = reason::name(code),
            "HTTP/2 client broke the protocol"
        );
        {
            let mut st = self.shared.lock();
            st.frame(8, GOAWAY, 0, 0);
            st.out.put_u32(self.last_id);
            st.out.put_u32(code);
        }
        let e = Error::Closed(Arc::from(why));
        self.failed = Some(e.clone());
        self.end(e);
    }

    /// A stream error of this side's making: counted, and past the limit the
    /// connection's end.
    fn stream_error(&mut self, st: &mut State, id: u32, code: u32) -> Result<(), ConnError> {
        self.error_resets += 1;
        if self.error_resets > self.config.max_error_resets {
            return Err(ConnError(
                reason::ENHANCE_YOUR_CALM,
                "too many stream errors",
            ));
        }
        if let Some(slot) = st.streams.get_mut(&id) {
            slot.fail(Error::Malformed(reason::name(code)));
            slot.send_end = true;
        }
        st.discard(id);
        st.reset(id, code);
        st.reap(id);
        Ok(())
    }

    /// Files every whole frame in the read buffer.
    fn frames(&mut self) -> Result<(), ConnError> {
        if !self.preface {
            let n = self.rbuf.len().min(PREFACE.len());
            if self.rbuf[..n] != PREFACE[..n] {
                return Err(ConnError(reason::PROTOCOL_ERROR, "invalid preface"));
            }
            if n < PREFACE.len() {
                return Ok(());
            }
            self.rbuf.advance(PREFACE.len());
            self.preface = true;
        }
        loop {
            if self.closing || self.rbuf.len() < 9 {
                return Ok(());
            }
            let len = usize::from(self.rbuf[0]) << 16
                | usize::from(self.rbuf[1]) << 8
                | usize::from(self.rbuf[2]);
            if len > MAX_FRAME {
                return Err(ConnError(reason::FRAME_SIZE_ERROR, "frame too large"));
            }
            if self.rbuf.len() < 9 + len {
                self.rbuf.reserve(9 + len - self.rbuf.len());
                return Ok(());
            }
            let kind = self.rbuf[3];
            let flags = self.rbuf[4];
            let id = u32::from_be_bytes([self.rbuf[5], self.rbuf[6], self.rbuf[7], self.rbuf[8]])
                & MAX_STREAM_ID;
            self.rbuf.advance(9);
            let payload = self.rbuf.split_to(len).freeze();
            if !self.settings {
                if kind != SETTINGS || flags & ACK != 0 {
                    return Err(ConnError(
                        reason::PROTOCOL_ERROR,
                        "first frame not SETTINGS",
                    ));
                }
                self.settings = true;
            }
            if let Some((cid, ..)) = &self.continuation {
                if kind != CONTINUATION || id != *cid {
                    return Err(ConnError(reason::PROTOCOL_ERROR, "expected CONTINUATION"));
                }
            }
            match kind {
                DATA => self.data(id, flags, payload)?,
                HEADERS => self.headers(id, flags, payload)?,
                PRIORITY => self.priority(id, &payload)?,
                RST_STREAM => self.rst_stream(id, &payload)?,
                SETTINGS => self.settings(id, flags, &payload)?,
                PUSH_PROMISE => {
                    return Err(ConnError(reason::PROTOCOL_ERROR, "PUSH_PROMISE"));
                }
                PING => self.ping(id, flags, &payload)?,
                GOAWAY => self.goaway(id, &payload)?,
                WINDOW_UPDATE => self.window_update(id, &payload)?,
                CONTINUATION => self.continuation(id, flags, &payload)?,
                _ => {}
            }
        }
    }

    /// Whether stream `id` is idle: never opened by the client.
    fn idle(&self, id: u32) -> bool {
        id > self.last_id
    }

    fn data(&mut self, id: u32, flags: u8, mut payload: Bytes) -> Result<(), ConnError> {
        if id == 0 {
            return Err(ConnError(reason::PROTOCOL_ERROR, "DATA on stream 0"));
        }
        if self.idle(id) {
            return Err(ConnError(reason::PROTOCOL_ERROR, "DATA on an idle stream"));
        }
        let flow = payload.len() as i64;
        strip_padding(flags, &mut payload)?;
        let shared = self.shared.clone();
        let mut guard = shared.lock();
        let st = &mut *guard;
        st.recv_window -= flow;
        if st.recv_window < 0 {
            return Err(ConnError(
                reason::FLOW_CONTROL_ERROR,
                "connection window exceeded",
            ));
        }
        let was_empty = st.out.is_empty();
        let end = flags & END_STREAM != 0;
        let len = payload.len();
        let mut error = None;
        let mut keep = false;
        let mut stop = false;
        match st.streams.get_mut(&id) {
            None => {
                if !st.recent_resets.contains(&id) {
                    error = Some(reason::STREAM_CLOSED);
                }
            }
            // RFC 9113 5.1: after the client's RST_STREAM.
            Some(slot) if matches!(slot.error, Some(Error::Reset(_))) => {
                error = Some(reason::STREAM_CLOSED)
            }
            Some(slot) if slot.error.is_some() => {}
            Some(slot) if slot.recv_end => error = Some(reason::STREAM_CLOSED),
            Some(slot) => {
                slot.recv_window -= flow;
                slot.received += len as u64;
                if slot.recv_window < 0 {
                    error = Some(reason::FLOW_CONTROL_ERROR);
                } else if slot
                    .declared
                    .is_some_and(|d| slot.received > d || (end && slot.received != d))
                {
                    // RFC 9113 8.1.1: a body that disagrees with its Content-Length.
                    error = Some(reason::PROTOCOL_ERROR);
                } else {
                    keep = !slot.unread;
                    if keep && len > 0 {
                        slot.data.push_back(payload);
                    }
                    slot.recv_end = end;
                    if let Some(w) = slot.recv_waker.take() {
                        w.wake();
                    }
                    if slot.send_end && !end {
                        slot.after_answer += len as u64;
                        stop = slot.after_answer > DRAIN;
                    }
                }
            }
        }
        if keep {
            // Padding is given back at once, the data once read.
            let padding = flow - len as i64;
            if padding > 0 {
                st.release(Some(id), padding);
            }
        } else {
            st.release(None, flow);
        }
        if stop {
            st.stop_upload(id);
        }
        if let Some(code) = error {
            self.stream_error(st, id, code)?;
        }
        st.reap(id);
        if was_empty && !st.out.is_empty() {
            st.wake_driver();
        }
        Ok(())
    }

    fn headers(&mut self, id: u32, flags: u8, mut payload: Bytes) -> Result<(), ConnError> {
        if id == 0 || id.is_multiple_of(2) {
            return Err(ConnError(
                reason::PROTOCOL_ERROR,
                "HEADERS on stream 0 or an even stream",
            ));
        }
        strip_padding(flags, &mut payload)?;
        let mut on_itself = false;
        if flags & PRIORITY_FLAG != 0 {
            if payload.len() < 5 {
                return Err(ConnError(reason::FRAME_SIZE_ERROR, "HEADERS too short"));
            }
            let dep = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                & MAX_STREAM_ID;
            on_itself = dep == id;
            payload.advance(5);
        }
        let end = flags & END_STREAM != 0;
        if flags & END_HEADERS != 0 {
            self.block(id, end, on_itself, payload)
        } else {
            self.continuation = Some((id, end, on_itself, BytesMut::from(&payload[..])));
            Ok(())
        }
    }

    fn continuation(&mut self, id: u32, flags: u8, payload: &[u8]) -> Result<(), ConnError> {
        let limit = self.config.max_header_list.saturating_mul(2) + MAX_FRAME;
        let Some((_, end, on_itself, block)) = self.continuation.as_mut() else {
            return Err(ConnError(
                reason::PROTOCOL_ERROR,
                "CONTINUATION without HEADERS",
            ));
        };
        if block.len() + payload.len() > limit {
            return Err(ConnError(
                reason::ENHANCE_YOUR_CALM,
                "header block too large",
            ));
        }
        block.extend_from_slice(payload);
        let (end, on_itself) = (*end, *on_itself);
        if flags & END_HEADERS != 0 {
            if let Some((_, _, _, block)) = self.continuation.take() {
                return self.block(id, end, on_itself, block.freeze());
            }
        }
        Ok(())
    }

    /// A whole header block on stream `id`: a new request, or its trailers.
    fn block(
        &mut self,
        id: u32,
        end: bool,
        on_itself: bool,
        block: Bytes,
    ) -> Result<(), ConnError> {
        let new = self.idle(id);
        let mut fields = Fields::new(self.config.max_header_list, !new);
        // Decoded whatever becomes of the stream: the table is the connection's.
        self.hpack
            .decode(&block, |n, v| fields.add(n, v))
            .map_err(|e| ConnError(reason::COMPRESSION_ERROR, e.0))?;
        let shared = self.shared.clone();
        let mut guard = shared.lock();
        let st = &mut *guard;
        let was_empty = st.out.is_empty();
        if new {
            self.last_id = id;
            self.open(st, id, end, on_itself, fields)?;
        } else {
            self.trailers(st, id, end, fields)?;
        }
        if was_empty && !st.out.is_empty() {
            st.wake_driver();
        }
        Ok(())
    }

    fn open(
        &mut self,
        st: &mut State,
        id: u32,
        end: bool,
        on_itself: bool,
        fields: Fields,
    ) -> Result<(), ConnError> {
        if on_itself {
            return self.stream_error(st, id, reason::PROTOCOL_ERROR);
        }
        if self.going_away || self.closing {
            st.reset(id, reason::REFUSED_STREAM);
            return Ok(());
        }
        if fields.too_large {
            // Answered, as a server that read the head would.
            let at = st.start_block();
            hpack::encode(&mut st.out, b":status", b"431", false);
            st.end_block(at, id, true);
            if !end {
                st.reset(id, reason::NO_ERROR);
            }
            return Ok(());
        }
        if st.streams.len() >= self.config.max_streams as usize {
            st.reset(id, reason::REFUSED_STREAM);
            return Ok(());
        }
        let (head, declared) = match fields.request() {
            Ok(r) => r,
            Err(why) => {
                tracing::debug!(why, "malformed HTTP/2 request: stream reset");
                return self.stream_error(st, id, reason::PROTOCOL_ERROR);
            }
        };
        if end && declared.is_some_and(|d| d != 0) {
            return self.stream_error(st, id, reason::PROTOCOL_ERROR);
        }
        let slot = Slot {
            recv_end: end,
            recv_window: i64::from(self.config.stream_window),
            declared,
            send_window: st.initial_window,
            halves: if end { 1 } else { 2 },
            ..Slot::default()
        };
        st.streams.insert(id, slot);
        let body = (!end).then(|| Incoming {
            shared: self.shared.clone(),
            id,
        });
        self.arrived.push_back(Request {
            head,
            body,
            respond: Responder {
                shared: self.shared.clone(),
                id,
            },
            declared,
        });
        Ok(())
    }

    fn trailers(
        &mut self,
        st: &mut State,
        id: u32,
        end: bool,
        fields: Fields,
    ) -> Result<(), ConnError> {
        let Some(slot) = st.streams.get_mut(&id) else {
            if st.recent_resets.contains(&id) {
                return Ok(());
            }
            if st.recent_closed.contains(&id) {
                // RFC 9113 5.1: a closed stream.
                return Err(ConnError(
                    reason::STREAM_CLOSED,
                    "HEADERS on a closed stream",
                ));
            }
            // RFC 9113 5.1.1: new streams take higher identifiers.
            return Err(ConnError(
                reason::PROTOCOL_ERROR,
                "HEADERS on a stream below the last one opened",
            ));
        };
        match slot.error {
            Some(Error::Reset(_)) => {
                return Err(ConnError(reason::STREAM_CLOSED, "HEADERS after RST_STREAM"))
            }
            Some(_) => return Ok(()),
            None => {}
        }
        let code = if slot.recv_end {
            Some(reason::STREAM_CLOSED)
        } else if !end
            || fields.malformed.is_some()
            || fields.too_large
            || slot.declared.is_some_and(|d| d != slot.received)
        {
            Some(reason::PROTOCOL_ERROR)
        } else {
            if !slot.unread {
                slot.trailers = Some(fields.headers);
            }
            slot.recv_end = true;
            if let Some(w) = slot.recv_waker.take() {
                w.wake();
            }
            None
        };
        if let Some(code) = code {
            self.stream_error(st, id, code)?;
        }
        st.reap(id);
        Ok(())
    }

    fn priority(&mut self, id: u32, payload: &[u8]) -> Result<(), ConnError> {
        if id == 0 {
            return Err(ConnError(reason::PROTOCOL_ERROR, "PRIORITY on stream 0"));
        }
        let code = if payload.len() != 5 {
            reason::FRAME_SIZE_ERROR
        } else if u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
            & MAX_STREAM_ID
            == id
        {
            reason::PROTOCOL_ERROR
        } else {
            return Ok(());
        };
        let shared = self.shared.clone();
        let mut st = shared.lock();
        let was_empty = st.out.is_empty();
        self.stream_error(&mut st, id, code)?;
        if was_empty {
            st.wake_driver();
        }
        Ok(())
    }

    fn rst_stream(&mut self, id: u32, payload: &[u8]) -> Result<(), ConnError> {
        if payload.len() != 4 {
            return Err(ConnError(reason::FRAME_SIZE_ERROR, "RST_STREAM size"));
        }
        if id == 0 || self.idle(id) {
            return Err(ConnError(
                reason::PROTOCOL_ERROR,
                "RST_STREAM on stream 0 or an idle stream",
            ));
        }
        let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
        let mut st = self.shared.lock();
        let Some(slot) = st.streams.get_mut(&id) else {
            return Ok(());
        };
        if slot.error.is_some() {
            return Ok(());
        }
        let unanswered = !slot.send_end;
        slot.fail(Error::Reset(code));
        slot.send_end = true;
        st.discard(id);
        st.reap(id);
        if unanswered {
            st.early_resets += 1;
            if st.early_resets > self.config.max_early_resets {
                return Err(ConnError(
                    reason::ENHANCE_YOUR_CALM,
                    "too many streams reset before their answer",
                ));
            }
        }
        Ok(())
    }

    fn settings(&mut self, id: u32, flags: u8, payload: &[u8]) -> Result<(), ConnError> {
        if id != 0 {
            return Err(ConnError(reason::PROTOCOL_ERROR, "SETTINGS on a stream"));
        }
        if flags & ACK != 0 {
            if !payload.is_empty() {
                return Err(ConnError(
                    reason::FRAME_SIZE_ERROR,
                    "SETTINGS ACK with a payload",
                ));
            }
            return Ok(());
        }
        if !payload.len().is_multiple_of(6) {
            return Err(ConnError(reason::FRAME_SIZE_ERROR, "SETTINGS size"));
        }
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        for p in payload.chunks_exact(6) {
            let value = u32::from_be_bytes([p[2], p[3], p[4], p[5]]);
            match u16::from_be_bytes([p[0], p[1]]) {
                0x2 | ENABLE_CONNECT_PROTOCOL if value > 1 => {
                    return Err(ConnError(reason::PROTOCOL_ERROR, "bad boolean setting"));
                }
                0x4 => {
                    let value = i64::from(value);
                    if value > MAX_WINDOW {
                        return Err(ConnError(reason::FLOW_CONTROL_ERROR, "initial window"));
                    }
                    let delta = value - st.initial_window;
                    st.initial_window = value;
                    for slot in st.streams.values_mut() {
                        slot.send_window += delta;
                        if slot.send_window > MAX_WINDOW {
                            return Err(ConnError(reason::FLOW_CONTROL_ERROR, "stream window"));
                        }
                        if delta > 0 {
                            if let Some(w) = slot.send_waker.take() {
                                w.wake();
                            }
                        }
                    }
                }
                0x5 if !(16_384..=16_777_215).contains(&value) => {
                    return Err(ConnError(reason::PROTOCOL_ERROR, "max frame size"));
                }
                _ => {}
            }
        }
        let was_empty = st.out.is_empty();
        st.frame(0, SETTINGS, ACK, 0);
        if was_empty {
            st.wake_driver();
        }
        Ok(())
    }

    fn ping(&mut self, id: u32, flags: u8, payload: &[u8]) -> Result<(), ConnError> {
        if payload.len() != 8 {
            return Err(ConnError(reason::FRAME_SIZE_ERROR, "PING size"));
        }
        if id != 0 {
            return Err(ConnError(reason::PROTOCOL_ERROR, "PING on a stream"));
        }
        if flags & ACK != 0 {
            return Ok(());
        }
        let mut st = self.shared.lock();
        let was_empty = st.out.is_empty();
        st.frame(8, PING, ACK, 0);
        st.out.extend_from_slice(payload);
        if was_empty {
            st.wake_driver();
        }
        Ok(())
    }

    fn goaway(&mut self, id: u32, payload: &[u8]) -> Result<(), ConnError> {
        if id != 0 {
            return Err(ConnError(reason::PROTOCOL_ERROR, "GOAWAY on a stream"));
        }
        if payload.len() < 8 {
            return Err(ConnError(reason::FRAME_SIZE_ERROR, "GOAWAY size"));
        }
        let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
        tracing::debug!(code = reason::name(code), "HTTP/2 client sent GOAWAY");
        // The client opens no more streams: the open ones finish, then it closes.
        self.going_away = true;
        Ok(())
    }

    fn window_update(&mut self, id: u32, payload: &[u8]) -> Result<(), ConnError> {
        if payload.len() != 4 {
            return Err(ConnError(reason::FRAME_SIZE_ERROR, "WINDOW_UPDATE size"));
        }
        let inc = i64::from(
            u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & MAX_STREAM_ID,
        );
        let shared = self.shared.clone();
        let mut guard = shared.lock();
        let st = &mut *guard;
        if id == 0 {
            if inc == 0 {
                return Err(ConnError(reason::PROTOCOL_ERROR, "WINDOW_UPDATE of 0"));
            }
            st.send_window += inc;
            if st.send_window > MAX_WINDOW {
                return Err(ConnError(reason::FLOW_CONTROL_ERROR, "connection window"));
            }
            for slot in st.streams.values_mut() {
                if let Some(w) = slot.send_waker.take() {
                    w.wake();
                }
            }
            return Ok(());
        }
        if self.idle(id) {
            return Err(ConnError(
                reason::PROTOCOL_ERROR,
                "WINDOW_UPDATE on an idle stream",
            ));
        }
        let was_empty = st.out.is_empty();
        let mut code = None;
        if let Some(slot) = st.streams.get_mut(&id) {
            if slot.error.is_none() {
                slot.send_window += inc;
                if inc == 0 {
                    code = Some(reason::PROTOCOL_ERROR);
                } else if slot.send_window > MAX_WINDOW {
                    code = Some(reason::FLOW_CONTROL_ERROR);
                } else if let Some(w) = slot.send_waker.take() {
                    w.wake();
                }
            }
        }
        if let Some(code) = code {
            self.stream_error(st, id, code)?;
        }
        if was_empty && !st.out.is_empty() {
            st.wake_driver();
        }
        Ok(())
    }

    /// Drives the connection: reads and files frames, writes what is queued. The
    /// next request to serve, or `None` once the connection has ended (`Some(Err)`
    /// when it ended on an error).
    pub(crate) fn poll_accept(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Request, Error>>> {
        {
            let mut st = self.shared.lock();
            if !st.driver.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                st.driver = Some(cx.waker().clone());
            }
        }
        // Rounds before yielding to the other tasks of the thread.
        let mut budget = 32;
        loop {
            if let Some(req) = self.arrived.pop_front() {
                return Poll::Ready(Some(Ok(req)));
            }
            let mut progress = false;
            let queued = self.wbuf.len() + self.shared.lock().out.len();
            if !self.closing && queued < READ_STOP {
                if self.rbuf.capacity() - self.rbuf.len() < 4096 {
                    self.rbuf.reserve(16 << 10);
                }
                match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf) {
                    Poll::Ready(Ok(0)) => {
                        if !self.preface || !self.rbuf.is_empty() || self.continuation.is_some() {
                            self.failed = Some(Error::Closed("closed mid-frame".into()));
                        }
                        self.end(Error::Closed("the client closed it".into()));
                    }
                    Poll::Ready(Ok(_)) => {
                        progress = true;
                        if let Err(e) = self.frames() {
                            self.conn_error(e);
                        }
                    }
                    Poll::Ready(Err(e)) => {
                        let e = Error::Closed(e.to_string().into());
                        self.failed = Some(e.clone());
                        self.end(e);
                    }
                    Poll::Pending => {}
                }
            }
            let finished = {
                let mut st = self.shared.lock();
                if !st.out.is_empty() {
                    if self.wbuf.is_empty() {
                        std::mem::swap(&mut self.wbuf, &mut st.out);
                    } else {
                        self.wbuf.extend_from_slice(&st.out);
                        st.out.clear();
                    }
                    for w in st.blocked.drain(..) {
                        w.wake();
                    }
                }
                if !self.closing
                    && self.going_away
                    && st.streams.values().all(|s| s.halves == 0)
                    && self.arrived.is_empty()
                {
                    self.closing = true;
                }
                self.closing
            };
            while !self.wbuf.is_empty() {
                match Pin::new(&mut self.io).poll_write(cx, &self.wbuf) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        self.wbuf.clear();
                        if !self.closing {
                            let e = Error::Closed("write failed".into());
                            self.failed = Some(e.clone());
                            self.end(e);
                        }
                        return Poll::Ready(self.failed.take().map(Err));
                    }
                    Poll::Ready(Ok(n)) => self.wbuf.advance(n),
                    Poll::Pending => break,
                }
            }
            if self.wbuf.is_empty() {
                // What is written is flushed (TLS keeps records until then).
                let _ = Pin::new(&mut self.io).poll_flush(cx);
                if finished {
                    let _ = Pin::new(&mut self.io).poll_shutdown(cx);
                    return Poll::Ready(self.failed.take().map(Err));
                }
            } else if finished && self.failed.is_some() {
                // Ending on an error: bytes that cannot be written now are not
                // waited for.
                return Poll::Ready(self.failed.take().map(Err));
            }
            if !progress && self.arrived.is_empty() {
                return Poll::Pending;
            }
            budget -= 1;
            if budget == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    }
}

impl<T> Drop for Connection<T> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.fail_all(Error::Closed("the connection ended".into()));
        st.driver = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    fn config() -> Config {
        Config {
            max_streams: 4,
            stream_window: 1 << 20,
            conn_window: 1 << 20,
            max_header_list: 1024,
            max_send_buffer: 256 << 10,
            max_early_resets: 3,
            max_error_resets: 100,
        }
    }

    /// A client speaking raw frames on a loopback socket, and the requests the
    /// server side hands out.
    struct Peer {
        s: TcpStream,
        buf: BytesMut,
        requests: mpsc::UnboundedReceiver<Request>,
        /// Set when the connection's task ended, with how.
        ended: tokio::sync::oneshot::Receiver<Option<String>>,
        shutdown: mpsc::UnboundedSender<()>,
    }

    /// A connection to the server past both prefaces and SETTINGS.
    async fn start(config: Config) -> Peer {
        let mut p = connect(config).await;
        p.s.write_all(PREFACE).await.unwrap();
        p.send(SETTINGS, 0, 0, &[]).await;
        let (kind, flags, _, _) = p.frame().await;
        assert_eq!((kind, flags), (SETTINGS, 0));
        p
    }

    async fn connect(config: Config) -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (theirs, _) = listener.accept().await.unwrap();
        let (tx, requests) = mpsc::unbounded_channel();
        let (done, ended) = tokio::sync::oneshot::channel();
        let (shutdown, mut shut) = mpsc::unbounded_channel::<()>();
        tokio::spawn(async move {
            let mut conn = accept(theirs, &config);
            let how = poll_fn(|cx| {
                if let Poll::Ready(Some(())) = shut.poll_recv(cx) {
                    conn.graceful_shutdown();
                }
                loop {
                    match conn.poll_accept(cx) {
                        Poll::Ready(Some(Ok(r))) => {
                            let _ = tx.send(r);
                        }
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(e.to_string())),
                        Poll::Ready(None) => return Poll::Ready(None),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            })
            .await;
            let _ = done.send(how);
        });
        Peer {
            s: client,
            buf: BytesMut::new(),
            requests,
            ended,
            shutdown,
        }
    }

    impl Peer {
        async fn frame(&mut self) -> (u8, u8, u32, Bytes) {
            loop {
                if self.buf.len() >= 9 {
                    let len = (usize::from(self.buf[0]) << 16)
                        | (usize::from(self.buf[1]) << 8)
                        | usize::from(self.buf[2]);
                    if self.buf.len() >= 9 + len {
                        let head = self.buf.split_to(9);
                        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
                        return (head[3], head[4], id, self.buf.split_to(len).freeze());
                    }
                }
                let n =
                    tokio::time::timeout(Duration::from_secs(10), self.s.read_buf(&mut self.buf))
                        .await
                        .expect("a frame within 10 s")
                        .unwrap();
                assert!(n > 0, "connection closed");
            }
        }

        /// The next frame of `kind`, others passed over.
        async fn expect(&mut self, kind: u8) -> (u8, u32, Bytes) {
            loop {
                let (k, flags, id, payload) = self.frame().await;
                if k == kind {
                    return (flags, id, payload);
                }
            }
        }

        /// The error code of the next RST_STREAM (and its stream) or GOAWAY (0).
        async fn error(&mut self) -> (u32, u32) {
            loop {
                let (k, _, id, p) = self.frame().await;
                match k {
                    RST_STREAM => return (id, u32::from_be_bytes(p[..4].try_into().unwrap())),
                    GOAWAY => return (0, u32::from_be_bytes(p[4..8].try_into().unwrap())),
                    _ => {}
                }
            }
        }

        async fn send(&mut self, kind: u8, flags: u8, id: u32, payload: &[u8]) {
            let mut b = BytesMut::new();
            put_frame_head(&mut b, payload.len(), kind, flags, id);
            b.extend_from_slice(payload);
            self.s.write_all(&b).await.unwrap();
        }

        /// Opens stream `id` with `head` (no END_STREAM) and answers it whole at once.
        async fn answered_whole(&mut self, id: u32, head: &[u8]) {
            self.send(HEADERS, END_HEADERS, id, head).await;
            let mut req = self.request().await;
            req.respond
                .send_head(StatusCode::OK, &HeaderMap::new(), true)
                .unwrap();
        }

        async fn request(&mut self) -> Request {
            tokio::time::timeout(Duration::from_secs(10), self.requests.recv())
                .await
                .expect("a request within 10 s")
                .expect("connection open")
        }

        /// The connection's end: `None` clean, else why.
        async fn ended(self) -> Option<String> {
            tokio::time::timeout(Duration::from_secs(10), self.ended)
                .await
                .expect("the end within 10 s")
                .unwrap()
        }
    }

    fn block(fields: &[(&str, &str)]) -> BytesMut {
        let mut b = BytesMut::new();
        for (n, v) in fields {
            hpack::encode(&mut b, n.as_bytes(), v.as_bytes(), false);
        }
        b
    }

    fn get(path: &str) -> BytesMut {
        block(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "example.com"),
            (":path", path),
        ])
    }

    fn post(length: &str) -> BytesMut {
        block(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "example.com"),
            (":path", "/up"),
            ("content-length", length),
        ])
    }

    fn decode(payload: &Bytes) -> Vec<(String, String)> {
        let mut out = Vec::new();
        hpack::Decoder::default()
            .decode(payload, |n, v| {
                out.push((
                    String::from_utf8_lossy(&n).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                ))
            })
            .unwrap();
        out
    }

    async fn body(incoming: &mut Incoming) -> Result<Vec<u8>, Error> {
        let mut all = Vec::new();
        while let Some(chunk) = poll_fn(|cx| incoming.poll_data(cx)).await {
            all.extend_from_slice(&chunk?);
        }
        Ok(all)
    }

    #[tokio::test]
    async fn a_request_arrives_whole_and_its_answer_goes_back_in_frames() {
        let mut p = start(config()).await;
        p.send(HEADERS, END_HEADERS, 1, &post("5")).await;
        p.send(DATA, 0, 1, b"hel").await;
        p.send(DATA, END_STREAM, 1, b"lo").await;
        let mut req = p.request().await;
        assert_eq!(req.head.method, Method::POST);
        assert_eq!(req.head.uri, "http://example.com/up");
        assert_eq!(req.head.version, Version::HTTP_2);
        assert_eq!(req.declared, Some(5));
        let mut incoming = req.body.take().unwrap();
        assert_eq!(body(&mut incoming).await.unwrap(), b"hello");
        let mut headers = HeaderMap::new();
        headers.insert("x-answer", HeaderValue::from_static("yes"));
        req.respond
            .send_head(StatusCode::OK, &headers, false)
            .unwrap();
        let mut chunk = Bytes::from_static(b"world");
        poll_fn(|cx| req.respond.poll_send(cx, &mut chunk, true))
            .await
            .unwrap();
        let (flags, id, head) = p.expect(HEADERS).await;
        assert_eq!((flags, id), (END_HEADERS, 1));
        assert_eq!(
            decode(&head),
            [
                (":status".into(), "200".into()),
                ("x-answer".into(), "yes".into())
            ]
        );
        let (flags, id, data) = p.expect(DATA).await;
        assert_eq!((flags, id, &data[..]), (END_STREAM, 1, &b"world"[..]));
    }

    #[tokio::test]
    async fn malformed_heads_reset_only_their_stream() {
        let mut p = start(config()).await;
        let base = [
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "a"),
            (":path", "/"),
        ];
        let cases: Vec<Vec<(&str, &str)>> = vec![
            vec![(":method", "GET"), (":scheme", "http"), (":authority", "a")],
            vec![(":method", "GET"), (":scheme", "http"), (":path", "")],
            base.iter().copied().chain([("Upper", "1")]).collect(),
            base.iter()
                .copied()
                .chain([("connection", "close")])
                .collect(),
            base.iter().copied().chain([("te", "gzip")]).collect(),
            base.iter().copied().chain([("x", " padded")]).collect(),
            vec![
                ("x", "1"),
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
            ],
            base.iter().copied().chain([(":method", "GET")]).collect(),
            base.iter().copied().chain([(":status", "200")]).collect(),
            base.iter()
                .copied()
                .chain([(":protocol", "websocket")])
                .collect(),
            vec![
                (":method", "CONNECT"),
                (":authority", "a:1"),
                (":path", "/"),
            ],
            base.iter()
                .copied()
                .chain([("content-length", "1"), ("content-length", "2")])
                .collect(),
        ];
        let mut id = 1;
        for fields in &cases {
            p.send(HEADERS, END_STREAM | END_HEADERS, id, &block(fields))
                .await;
            assert_eq!(p.error().await, (id, reason::PROTOCOL_ERROR), "{fields:?}");
            id += 2;
        }
        // The connection still serves.
        p.send(HEADERS, END_STREAM | END_HEADERS, id, &get("/ok"))
            .await;
        assert_eq!(p.request().await.head.uri.path(), "/ok");
    }

    #[tokio::test]
    async fn a_body_that_disagrees_with_its_length_is_refused() {
        let mut p = start(config()).await;
        // Longer.
        p.send(HEADERS, END_HEADERS, 1, &post("2")).await;
        let mut req = p.request().await;
        p.send(DATA, 0, 1, b"abc").await;
        assert_eq!(p.error().await, (1, reason::PROTOCOL_ERROR));
        assert!(body(req.body.as_mut().unwrap()).await.is_err());
        // Shorter.
        p.send(HEADERS, END_HEADERS, 3, &post("4")).await;
        let mut req = p.request().await;
        p.send(DATA, END_STREAM, 3, b"abc").await;
        assert_eq!(p.error().await, (3, reason::PROTOCOL_ERROR));
        assert!(body(req.body.as_mut().unwrap()).await.is_err());
        // Trailers before the whole of it.
        p.send(HEADERS, END_HEADERS, 5, &post("4")).await;
        let mut req = p.request().await;
        p.send(DATA, 0, 5, b"abc").await;
        p.send(HEADERS, END_STREAM | END_HEADERS, 5, &block(&[("x", "1")]))
            .await;
        assert_eq!(p.error().await, (5, reason::PROTOCOL_ERROR));
        assert!(body(req.body.as_mut().unwrap()).await.is_err());
    }

    #[tokio::test]
    async fn an_invalid_preface_gets_goaway() {
        let mut p = connect(config()).await;
        p.s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(p.error().await, (0, reason::PROTOCOL_ERROR));
        assert!(p.ended().await.is_some());
    }

    #[tokio::test]
    async fn a_head_over_the_limit_is_answered_431() {
        let mut p = start(config()).await;
        let big = "x".repeat(2000);
        let mut fields = get("/");
        hpack::encode(&mut fields, b"x-big", big.as_bytes(), false);
        p.send(HEADERS, END_STREAM | END_HEADERS, 1, &fields).await;
        let (flags, id, head) = p.expect(HEADERS).await;
        assert_eq!((flags & END_STREAM, id), (END_STREAM, 1));
        assert_eq!(decode(&head), [(":status".into(), "431".into())]);
        p.send(HEADERS, END_STREAM | END_HEADERS, 3, &get("/next"))
            .await;
        assert_eq!(p.request().await.head.uri.path(), "/next");
    }

    #[tokio::test]
    async fn streams_past_the_limit_are_refused() {
        let mut p = start(config()).await;
        let mut held = Vec::new();
        for id in [1, 3, 5, 7] {
            p.send(HEADERS, END_STREAM | END_HEADERS, id, &get("/"))
                .await;
            held.push(p.request().await);
        }
        p.send(HEADERS, END_STREAM | END_HEADERS, 9, &get("/"))
            .await;
        assert_eq!(p.error().await, (9, reason::REFUSED_STREAM));
        // One answered and let go makes room.
        let mut first = held.remove(0);
        first
            .respond
            .send_head(StatusCode::NO_CONTENT, &HeaderMap::new(), true)
            .unwrap();
        drop(first);
        p.send(HEADERS, END_STREAM | END_HEADERS, 11, &get("/room"))
            .await;
        assert_eq!(p.request().await.head.uri.path(), "/room");
    }

    #[tokio::test]
    async fn a_client_resetting_streams_before_their_answer_is_cut_off() {
        let mut p = start(config()).await;
        for id in [1u32, 3, 5, 7] {
            p.send(HEADERS, END_STREAM | END_HEADERS, id, &get("/"))
                .await;
            let mut req = p.request().await;
            p.send(RST_STREAM, 0, id, &reason::CANCEL.to_be_bytes())
                .await;
            let e = poll_fn(|cx| req.respond.poll_reset(cx)).await;
            assert_eq!(e.reason(), Some(reason::CANCEL));
        }
        assert_eq!(p.error().await, (0, reason::ENHANCE_YOUR_CALM));
    }

    #[tokio::test]
    async fn frames_on_idle_or_closed_streams_break_the_connection() {
        // DATA on an idle stream.
        let mut p = start(config()).await;
        p.send(DATA, 0, 1, b"x").await;
        assert_eq!(p.error().await, (0, reason::PROTOCOL_ERROR));
        // HEADERS after the client's RST_STREAM.
        let mut p = start(config()).await;
        p.send(HEADERS, END_HEADERS, 1, &post("1")).await;
        let mut req = p.request().await;
        p.send(RST_STREAM, 0, 1, &reason::CANCEL.to_be_bytes())
            .await;
        poll_fn(|cx| req.respond.poll_reset(cx)).await;
        drop(req);
        p.send(HEADERS, END_STREAM | END_HEADERS, 1, &block(&[("x", "1")]))
            .await;
        assert_eq!(p.error().await, (0, reason::STREAM_CLOSED));
        // A new stream below the last one.
        let mut p = start(config()).await;
        p.send(HEADERS, END_STREAM | END_HEADERS, 5, &get("/"))
            .await;
        let _req = p.request().await;
        p.send(HEADERS, END_STREAM | END_HEADERS, 3, &get("/"))
            .await;
        assert_eq!(p.error().await, (0, reason::PROTOCOL_ERROR));
    }

    #[tokio::test]
    async fn a_response_body_waits_for_the_clients_window() {
        let mut p = connect(config()).await;
        p.s.write_all(PREFACE).await.unwrap();
        // A window of one octet per stream.
        p.send(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 1]).await;
        p.send(HEADERS, END_STREAM | END_HEADERS, 1, &get("/"))
            .await;
        let mut req = p.request().await;
        req.respond
            .send_head(StatusCode::OK, &HeaderMap::new(), false)
            .unwrap();
        let sending = tokio::spawn(async move {
            let mut chunk = Bytes::from_static(b"abc");
            poll_fn(|cx| req.respond.poll_send(cx, &mut chunk, true))
                .await
                .unwrap();
        });
        let (_, _, one) = p.expect(DATA).await;
        assert_eq!(&one[..], b"a");
        p.send(WINDOW_UPDATE, 0, 1, &2u32.to_be_bytes()).await;
        let (flags, _, rest) = p.expect(DATA).await;
        assert_eq!((flags, &rest[..]), (END_STREAM, &b"bc"[..]));
        sending.await.unwrap();
    }

    #[tokio::test]
    async fn a_graceful_shutdown_finishes_the_open_streams_then_closes() {
        let mut p = start(config()).await;
        p.send(HEADERS, END_STREAM | END_HEADERS, 1, &get("/"))
            .await;
        let mut req = p.request().await;
        p.shutdown.send(()).unwrap();
        let (_, _, goaway) = p.expect(GOAWAY).await;
        assert_eq!(&goaway[..8], &[0, 0, 0, 1, 0, 0, 0, 0]);
        // A stream opened after the GOAWAY is refused.
        p.send(HEADERS, END_STREAM | END_HEADERS, 3, &get("/"))
            .await;
        assert_eq!(p.error().await, (3, reason::REFUSED_STREAM));
        req.respond
            .send_head(StatusCode::OK, &HeaderMap::new(), true)
            .unwrap();
        drop(req);
        let (flags, id, _) = p.expect(HEADERS).await;
        assert_eq!((flags & END_STREAM, id), (END_STREAM, 1));
        assert!(p.ended().await.is_none());
    }

    #[tokio::test]
    async fn an_answer_given_up_resets_its_stream_and_a_whole_one_stops_the_upload() {
        let mut p = start(config()).await;
        p.send(HEADERS, END_STREAM | END_HEADERS, 1, &get("/"))
            .await;
        let mut req = p.request().await;
        req.respond
            .send_head(StatusCode::OK, &HeaderMap::new(), false)
            .unwrap();
        drop(req);
        assert_eq!(p.error().await, (1, reason::CANCEL));
        p.send(HEADERS, END_HEADERS, 3, &post("1000000")).await;
        let mut req = p.request().await;
        req.respond
            .send_head(StatusCode::PAYLOAD_TOO_LARGE, &HeaderMap::new(), true)
            .unwrap();
        drop(req);
        assert_eq!(p.error().await, (3, reason::NO_ERROR));
        // Its late DATA is dropped quietly; the connection serves on.
        p.send(DATA, 0, 3, b"late").await;
        p.send(PING, 0, 0, b"12345678").await;
        let (flags, _, payload) = p.expect(PING).await;
        assert_eq!((flags, &payload[..]), (ACK, &b"12345678"[..]));
    }

    #[tokio::test]
    async fn a_short_rest_after_the_whole_answer_is_read_and_its_trailers_checked() {
        let mut p = start(config()).await;
        let post_no_length = block(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "example.com"),
            (":path", "/up"),
        ]);
        // Answered whole, then the rest of the body and good trailers: no reset.
        p.answered_whole(1, &post_no_length).await;
        p.send(DATA, 0, 1, b"part").await;
        p.send(DATA, 0, 1, b"more").await;
        p.send(
            HEADERS,
            END_STREAM | END_HEADERS,
            1,
            &block(&[("x-sum", "1")]),
        )
        .await;
        // Answered whole, then trailers with a pseudo-header: PROTOCOL_ERROR.
        p.answered_whole(3, &post_no_length).await;
        p.send(DATA, 0, 3, b"part").await;
        p.send(
            HEADERS,
            END_STREAM | END_HEADERS,
            3,
            &block(&[(":path", "/")]),
        )
        .await;
        assert_eq!(p.error().await, (3, reason::PROTOCOL_ERROR));
        // Answered whole, then more than the drained rest: NO_ERROR stops it.
        p.answered_whole(5, &post_no_length).await;
        let chunk = vec![0u8; 16_384];
        for _ in 0..=DRAIN / 16_384 {
            p.send(DATA, 0, 5, &chunk).await;
        }
        assert_eq!(p.error().await, (5, reason::NO_ERROR));
        // Stream 1 ended cleanly: HEADERS on it now is a closed stream's.
        p.send(HEADERS, END_STREAM | END_HEADERS, 1, &get("/"))
            .await;
        assert_eq!(p.error().await, (0, reason::STREAM_CLOSED));
    }

    #[tokio::test]
    async fn settings_and_frame_sizes_are_checked() {
        for (kind, flags, id, payload, code) in [
            (SETTINGS, 0, 0, vec![0u8; 5], reason::FRAME_SIZE_ERROR),
            (SETTINGS, ACK, 0, vec![0u8; 6], reason::FRAME_SIZE_ERROR),
            (SETTINGS, 0, 1, vec![], reason::PROTOCOL_ERROR),
            (
                SETTINGS,
                0,
                0,
                vec![0, 2, 0, 0, 0, 2],
                reason::PROTOCOL_ERROR,
            ),
            (
                SETTINGS,
                0,
                0,
                vec![0, 4, 0x80, 0, 0, 0],
                reason::FLOW_CONTROL_ERROR,
            ),
            (
                SETTINGS,
                0,
                0,
                vec![0, 5, 0, 0, 0, 1],
                reason::PROTOCOL_ERROR,
            ),
            (PING, 0, 0, vec![0u8; 7], reason::FRAME_SIZE_ERROR),
            (PING, 0, 1, vec![0u8; 8], reason::PROTOCOL_ERROR),
            (WINDOW_UPDATE, 0, 0, vec![0u8; 4], reason::PROTOCOL_ERROR),
            (WINDOW_UPDATE, 0, 0, vec![0u8; 3], reason::FRAME_SIZE_ERROR),
            (
                PUSH_PROMISE,
                END_HEADERS,
                1,
                vec![0u8; 4],
                reason::PROTOCOL_ERROR,
            ),
            (CONTINUATION, END_HEADERS, 1, vec![], reason::PROTOCOL_ERROR),
            (DATA, 0, 0, vec![1], reason::PROTOCOL_ERROR),
            (
                DATA,
                0,
                0,
                vec![0u8; MAX_FRAME + 1],
                reason::FRAME_SIZE_ERROR,
            ),
        ] {
            let mut p = start(config()).await;
            p.send(kind, flags, id, &payload).await;
            assert_eq!(p.error().await, (0, code), "frame {kind} flags {flags}");
        }
    }
}
