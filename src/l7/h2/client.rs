//! The client side of an HTTP/2 connection to a backend (RFC 9113): frames, streams
//! and flow control, written for a proxy's upstream.
//!
//! A request's own task does its stream's work: it encodes its head (HPACK without
//! a dynamic table needs no shared state), appends the frames to the connection's
//! outgoing buffer, and reads its response from its stream's slot. The connection's
//! task only moves bytes: it writes the outgoing buffer, reads frames, and files
//! each into its stream's slot, waking the request. One lock guards the connection's
//! state; with a thread per core the connection and its requests share a thread, so
//! it is never contended.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use super::frame::*;
use super::hpack;
use super::limits::Limits;

/// Window this side gives each stream, and the connection as a whole.
const STREAM_WINDOW: i64 = 2 << 20;
const CONN_WINDOW: i64 = 5 << 20;
/// Decoded size of a response head (or trailers) this side takes, announced as
/// SETTINGS_MAX_HEADER_LIST_SIZE.
const MAX_HEADER_LIST: usize = 16 << 10;
/// Encoded size of a header block across its CONTINUATION frames.
const MAX_BLOCK: usize = 64 << 10;
/// Outgoing bytes queued before request bodies wait for the connection to drain.
const OUT_HIGH: usize = 256 << 10;

/// Why a stream failed.
#[derive(Debug, Clone)]
pub enum Error {
    /// The backend reset the stream.
    Reset(u32),
    /// The stream never started on the backend: the connection went away (GOAWAY
    /// naming a lower stream) or takes no new stream. Safe to send again.
    Refused,
    /// This side reset the stream: the backend broke the protocol on it.
    Malformed(&'static str),
    /// This side reset the stream: its request or response was given up.
    Cancelled(&'static str),
    /// The connection ended.
    Closed(Arc<str>),
}

impl Error {
    /// Whether the backend did not act on the stream (RFC 9113 8.7): it went away
    /// naming a lower stream, or reset this one with `REFUSED_STREAM`.
    pub(crate) fn unprocessed(&self) -> bool {
        match self {
            Error::Refused => true,
            Error::Reset(code) => *code == reason::REFUSED_STREAM,
            _ => false,
        }
    }

    /// The error code the backend sent, for a reset.
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
            Error::Reset(r) => write!(f, "stream reset by the backend: {}", reason::name(*r)),
            Error::Refused => f.write_str("the backend did not start the stream"),
            Error::Malformed(why) => write!(f, "invalid HTTP/2 response: {why}"),
            Error::Cancelled(why) => write!(f, "stream cancelled: {why}"),
            Error::Closed(why) => write!(f, "HTTP/2 connection ended: {why}"),
        }
    }
}

impl std::error::Error for Error {}

/// A response head.
pub(crate) type Head = (StatusCode, HeaderMap);

/// One stream's state, shared by the request's halves and the connection's task.
#[derive(Default)]
struct Slot {
    head: Option<Head>,
    head_seen: bool,
    data: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    recv_end: bool,
    /// The stream failed; both halves see it.
    error: Option<Error>,
    /// The backend needs no more of the request (RST_STREAM NO_ERROR after a whole
    /// response).
    send_stopped: bool,
    send_end: bool,
    recv_waker: Option<Waker>,
    send_waker: Option<Waker>,
    /// What this side may still send, and the backend may still send.
    send_window: i64,
    recv_window: i64,
    /// Bytes read by the request and not yet given back with WINDOW_UPDATE.
    unacked: i64,
    /// Halves still held (a request sent whole has no sending half).
    halves: u8,
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
        self.wake();
    }
}

struct State {
    /// Frames waiting for the connection's task to write them.
    out: BytesMut,
    driver: Option<Waker>,
    streams: HashMap<u32, Slot, Ids>,
    next_id: u32,
    /// The backend's SETTINGS_INITIAL_WINDOW_SIZE.
    initial_window: i64,
    send_window: i64,
    recv_window: i64,
    unacked: i64,
    /// GOAWAY arrived, or stream identifiers ran out: no new stream.
    going_away: bool,
    /// The connection ended: every stream fails with this.
    error: Option<Error>,
    /// The pool let go of the connection: it ends once its streams have.
    released: bool,
    /// Request bodies waiting for `out` to drain.
    blocked: Vec<Waker>,
}

impl State {
    /// Queues a frame's 9-octet head.
    fn frame(&mut self, len: usize, kind: u8, flags: u8, id: u32) {
        put_frame_head(&mut self.out, len, kind, flags, id);
    }

    fn reset(&mut self, id: u32, code: u32) {
        self.frame(4, RST_STREAM, 0, id);
        self.out.put_u32(code);
    }

    fn window_update(&mut self, id: u32, inc: i64) {
        self.frame(4, WINDOW_UPDATE, 0, id);
        self.out.put_u32(inc as u32);
    }

    /// Gives `n` octets of window back to the connection (and to stream `id`).
    fn release(&mut self, id: Option<u32>, n: i64) {
        self.unacked += n;
        if self.unacked >= CONN_WINDOW / 2 {
            let inc = std::mem::take(&mut self.unacked);
            self.recv_window += inc;
            self.window_update(0, inc);
        }
        if let Some(id) = id {
            let Some(slot) = self.streams.get_mut(&id) else {
                return;
            };
            slot.unacked += n;
            if slot.unacked >= STREAM_WINDOW / 2 && !slot.recv_end && slot.error.is_none() {
                let inc = std::mem::take(&mut slot.unacked);
                slot.recv_window += inc;
                self.window_update(id, inc);
            }
        }
    }

    fn wake_driver(&self) {
        if let Some(w) = &self.driver {
            w.wake_by_ref();
        }
    }

    /// Fails every stream: the connection is gone.
    fn fail_all(&mut self, e: Error) {
        if self.error.is_none() {
            self.error = Some(e.clone());
        }
        for slot in self.streams.values_mut() {
            if slot.recv_end {
                // The response is whole: only its request's upload stops.
                slot.send_stopped = true;
                slot.wake();
            } else {
                slot.fail(e.clone());
            }
        }
        for w in self.blocked.drain(..) {
            w.wake();
        }
    }

    /// One half of stream `id` let go; the slot goes with the last.
    fn drop_half(&mut self, id: u32) {
        if let Some(slot) = self.streams.get_mut(&id) {
            slot.halves -= 1;
            if slot.halves == 0 {
                self.streams.remove(&id);
            }
        }
    }

    /// Resets stream `id` from this side (once) unless it already ended or failed.
    fn cancel(&mut self, id: u32, code: u32, e: Error) {
        let was_empty = self.out.is_empty();
        let Some(slot) = self.streams.get_mut(&id) else {
            return;
        };
        if slot.error.is_some() || (slot.recv_end && (slot.send_end || slot.send_stopped)) {
            return;
        }
        slot.fail(e);
        // Data that came but was not read gives its window back to the connection.
        let unread: usize = slot.data.drain(..).map(|b| b.len()).sum();
        self.reset(id, code);
        self.release(None, unread as i64);
        if was_empty {
            self.wake_driver();
        }
    }
}

struct Shared {
    state: Mutex<State>,
    limits: Arc<Limits>,
    /// Told to the pool: the connection takes no new stream.
    closed: Arc<AtomicBool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held leaves nothing half-done that matters
        // more than carrying on.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The pool's hold on a connection. Dropped: the connection ends once its streams
/// have.
pub(crate) struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.released = true;
        st.wake_driver();
    }
}

/// Starts a connection on `io`: its task (to spawn) and the pool's handle. The
/// preface and this side's SETTINGS are the task's first writes. `default_streams`:
/// the requests it takes at once when the backend's SETTINGS name no limit.
pub(crate) fn handshake<T>(
    io: T,
    keepalive: Duration,
    limits: Arc<Limits>,
    closed: Arc<AtomicBool>,
    default_streams: usize,
) -> (Handle, Driver<T>) {
    let mut out = BytesMut::with_capacity(4096);
    out.extend_from_slice(PREFACE);
    // SETTINGS: ENABLE_PUSH 0, INITIAL_WINDOW_SIZE, MAX_HEADER_LIST_SIZE.
    put_frame_head(&mut out, 18, SETTINGS, 0, 0);
    for (id, value) in [
        (0x2u16, 0u32),
        (0x4, STREAM_WINDOW as u32),
        (0x6, MAX_HEADER_LIST as u32),
    ] {
        out.put_u16(id);
        out.put_u32(value);
    }
    put_frame_head(&mut out, 4, WINDOW_UPDATE, 0, 0);
    out.put_u32((CONN_WINDOW - DEFAULT_WINDOW) as u32);
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            out,
            driver: None,
            streams: HashMap::default(),
            next_id: 1,
            initial_window: DEFAULT_WINDOW,
            send_window: DEFAULT_WINDOW,
            recv_window: CONN_WINDOW,
            unacked: 0,
            going_away: false,
            error: None,
            released: false,
            blocked: Vec::new(),
        }),
        limits,
        closed,
    });
    let every = keepalive.max(Duration::from_millis(1));
    let driver = Driver {
        io,
        shared: shared.clone(),
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        hpack: hpack::Decoder::default(),
        continuation: None,
        ping: Box::pin(tokio::time::sleep(every)),
        ping_sent: false,
        every,
        within: every.min(Duration::from_secs(20)),
        default_streams,
        closing: false,
    };
    (Handle { shared }, driver)
}

impl Handle {
    /// Opens a stream with the header block `block` (the request's head), the end
    /// of the request with it when `end`. `Err` (always [`Error::Refused`] or the
    /// connection's end): nothing was sent.
    pub(crate) fn open(
        &self,
        block: &[u8],
        end: bool,
    ) -> Result<(Option<Sender>, Receiver), Error> {
        let mut st = self.shared.lock();
        if let Some(e) = &st.error {
            return Err(e.clone());
        }
        if st.going_away || st.next_id > MAX_STREAM_ID {
            st.going_away = true;
            self.shared.closed.store(true, Ordering::Release);
            return Err(Error::Refused);
        }
        let id = st.next_id;
        st.next_id += 2;
        let was_empty = st.out.is_empty();
        put_headers(&mut st.out, id, block, end);
        let slot = Slot {
            send_window: st.initial_window,
            recv_window: STREAM_WINDOW,
            send_end: end,
            halves: if end { 1 } else { 2 },
            ..Slot::default()
        };
        st.streams.insert(id, slot);
        if was_empty {
            st.wake_driver();
        }
        drop(st);
        let sender = (!end).then(|| Sender {
            shared: self.shared.clone(),
            id,
        });
        Ok((
            sender,
            Receiver {
                shared: self.shared.clone(),
                id,
            },
        ))
    }
}

/// The sending half of a stream: the request's body and trailers.
pub(crate) struct Sender {
    shared: Arc<Shared>,
    id: u32,
}

impl Sender {
    /// Sends `chunk` (all of it, in frames the windows allow; what is sent is taken
    /// off its front), and the end of the stream with its last octet when `last`.
    /// `Err`: the stream is gone (reset, failed, or no longer wanted).
    pub(crate) fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
        last: bool,
    ) -> Poll<Result<(), Error>> {
        let mut st = self.shared.lock();
        let st = &mut *st;
        let was_empty = st.out.is_empty();
        let Some(slot) = st.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(Error::Refused));
        };
        if let Some(e) = &slot.error {
            return Poll::Ready(Err(e.clone()));
        }
        if slot.send_stopped || slot.send_end {
            return Poll::Ready(Err(Error::Reset(reason::NO_ERROR)));
        }
        let result = loop {
            if chunk.is_empty() && !last {
                break Poll::Ready(Ok(()));
            }
            if st.out.len() >= OUT_HIGH {
                st.blocked.push(cx.waker().clone());
                break Poll::Pending;
            }
            let room = st.send_window.min(slot.send_window).min(MAX_FRAME as i64);
            if room <= 0 && !chunk.is_empty() {
                slot.send_waker = Some(cx.waker().clone());
                break Poll::Pending;
            }
            let n = chunk.len().min(room.max(0) as usize);
            let end = last && n == chunk.len();
            put_frame_head(
                &mut st.out,
                n,
                DATA,
                if end { END_STREAM } else { 0 },
                self.id,
            );
            st.out.extend_from_slice(&chunk[..n]);
            chunk.advance(n);
            st.send_window -= n as i64;
            slot.send_window -= n as i64;
            if end {
                slot.send_end = true;
                break Poll::Ready(Ok(()));
            }
        };
        if was_empty && !st.out.is_empty() {
            st.wake_driver();
        }
        result
    }

    /// Ends the stream with trailers (an encoded header block).
    pub(crate) fn send_trailers(&mut self, block: &[u8]) -> Result<(), Error> {
        let mut st = self.shared.lock();
        let was_empty = st.out.is_empty();
        let Some(slot) = st.streams.get_mut(&self.id) else {
            return Err(Error::Refused);
        };
        if let Some(e) = &slot.error {
            return Err(e.clone());
        }
        if slot.send_stopped || slot.send_end {
            return Err(Error::Reset(reason::NO_ERROR));
        }
        slot.send_end = true;
        put_headers(&mut st.out, self.id, block, true);
        if was_empty {
            st.wake_driver();
        }
        Ok(())
    }

    /// Resets the stream with `code` (the request's body failed).
    pub(crate) fn reset(&mut self, code: u32) {
        let e = Error::Cancelled("request body failed");
        self.shared.lock().cancel(self.id, code, e);
    }

    /// Ready once the stream no longer takes the request's bytes.
    pub(crate) fn poll_stopped(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.shared.lock();
        match st.streams.get_mut(&self.id) {
            Some(slot) if slot.error.is_none() && !slot.send_stopped => {
                slot.send_waker = Some(cx.waker().clone());
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        let unfinished = st
            .streams
            .get(&self.id)
            .is_some_and(|s| !s.send_end && !s.send_stopped);
        if unfinished {
            st.cancel(
                self.id,
                reason::CANCEL,
                Error::Cancelled("request abandoned"),
            );
        }
        st.drop_half(self.id);
    }
}

/// The receiving half of a stream: the response.
pub(crate) struct Receiver {
    shared: Arc<Shared>,
    id: u32,
}

impl Receiver {
    /// The response's head (informational ones skipped).
    pub(crate) fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<Head, Error>> {
        let mut st = self.shared.lock();
        let Some(slot) = st.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(Error::Refused));
        };
        if let Some(head) = slot.head.take() {
            return Poll::Ready(Ok(head));
        }
        if let Some(e) = &slot.error {
            return Poll::Ready(Err(e.clone()));
        }
        slot.recv_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The next chunk of the response's body; its window goes back to the backend.
    pub(crate) fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        let mut st = self.shared.lock();
        let Some(slot) = st.streams.get_mut(&self.id) else {
            return Poll::Ready(Some(Err(Error::Refused)));
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
            return Poll::Ready(Err(Error::Refused));
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

    /// Whether the response has ended and all of it was read.
    pub(crate) fn is_end_stream(&self) -> bool {
        let st = self.shared.lock();
        st.streams.get(&self.id).is_none_or(|s| {
            s.recv_end && s.data.is_empty() && s.trailers.is_none() && s.head.is_none()
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        let unfinished = st.streams.get(&self.id).is_some_and(|s| !s.recv_end);
        if unfinished {
            st.cancel(
                self.id,
                reason::CANCEL,
                Error::Cancelled("response abandoned"),
            );
        } else if let Some(slot) = st.streams.get_mut(&self.id) {
            let unread: usize = slot.data.drain(..).map(|b| b.len()).sum();
            if unread > 0 {
                st.release(None, unread as i64);
            }
        }
        st.drop_half(self.id);
    }
}

/// The connection's task: writes what its streams queued, reads and files frames,
/// sends a PING every `every` (ending the connection when one goes unanswered for
/// `within`).
pub(crate) struct Driver<T> {
    io: T,
    shared: Arc<Shared>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    hpack: hpack::Decoder,
    /// A header block whose CONTINUATION frames are still coming: its stream,
    /// whether it ends the stream, and its octets so far.
    continuation: Option<(u32, bool, BytesMut)>,
    ping: Pin<Box<Sleep>>,
    ping_sent: bool,
    every: Duration,
    within: Duration,
    default_streams: usize,
    /// The connection is ending: what is queued is written, then the task ends.
    closing: bool,
}

impl<T> Driver<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    fn end(&mut self, e: Error) {
        let mut st = self.shared.lock();
        st.fail_all(e);
        st.going_away = true;
        self.shared.closed.store(true, Ordering::Release);
        self.closing = true;
    }

    fn conn_error(&mut self, ConnError(code, why): ConnError) {
        tracing::debug!(why, "HTTP/2 backend broke the protocol");
        {
            let mut st = self.shared.lock();
            put_frame_head(&mut st.out, 8, GOAWAY, 0, 0);
            st.out.put_u32(0);
            st.out.put_u32(code);
        }
        self.end(Error::Closed(Arc::from(why)));
    }

    /// Files every whole frame in the read buffer.
    fn frames(&mut self) -> Result<(), ConnError> {
        loop {
            if self.rbuf.len() < 9 {
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
            if let Some((cid, _, _)) = &self.continuation {
                if kind != CONTINUATION || id != *cid {
                    return Err(ConnError(reason::PROTOCOL_ERROR, "expected CONTINUATION"));
                }
            }
            match kind {
                DATA => self.data(id, flags, payload)?,
                HEADERS => self.headers(id, flags, payload)?,
                PRIORITY => {}
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

    fn data(&mut self, id: u32, flags: u8, mut payload: Bytes) -> Result<(), ConnError> {
        if id == 0 {
            return Err(ConnError(reason::PROTOCOL_ERROR, "DATA on stream 0"));
        }
        let flow = payload.len() as i64;
        strip_padding(flags, &mut payload)?;
        let mut st = self.shared.lock();
        let st = &mut *st;
        st.recv_window -= flow;
        if st.recv_window < 0 {
            return Err(ConnError(
                reason::FLOW_CONTROL_ERROR,
                "connection window exceeded",
            ));
        }
        let was_empty = st.out.is_empty();
        let Some(slot) = st.streams.get_mut(&id) else {
            if id >= st.next_id {
                return Err(ConnError(reason::PROTOCOL_ERROR, "DATA on an idle stream"));
            }
            st.release(None, flow);
            return Ok(());
        };
        // What becomes of the frame: kept for the request, or dropped (and the
        // stream reset with a code when the backend broke the protocol on it).
        let mut reset = None;
        let mut padding = 0;
        let keep = if slot.error.is_some() {
            false
        } else if slot.recv_end {
            slot.fail(Error::Malformed("DATA after the end of the stream"));
            reset = Some(reason::STREAM_CLOSED);
            false
        } else if !slot.head_seen {
            slot.fail(Error::Malformed("DATA before the response head"));
            reset = Some(reason::PROTOCOL_ERROR);
            false
        } else {
            slot.recv_window -= flow;
            if slot.recv_window < 0 {
                slot.fail(Error::Malformed("stream window exceeded"));
                reset = Some(reason::FLOW_CONTROL_ERROR);
                false
            } else {
                padding = flow - payload.len() as i64;
                if !payload.is_empty() {
                    slot.data.push_back(payload);
                }
                if flags & END_STREAM != 0 {
                    slot.recv_end = true;
                }
                if let Some(w) = slot.recv_waker.take() {
                    w.wake();
                }
                true
            }
        };
        if let Some(code) = reset {
            st.reset(id, code);
        }
        if !keep {
            st.release(None, flow);
        } else if padding > 0 {
            st.release(Some(id), padding);
        }
        if was_empty && !st.out.is_empty() {
            st.wake_driver();
        }
        Ok(())
    }

    fn headers(&mut self, id: u32, flags: u8, mut payload: Bytes) -> Result<(), ConnError> {
        if id == 0 {
            return Err(ConnError(reason::PROTOCOL_ERROR, "HEADERS on stream 0"));
        }
        strip_padding(flags, &mut payload)?;
        if flags & PRIORITY_FLAG != 0 {
            if payload.len() < 5 {
                return Err(ConnError(reason::FRAME_SIZE_ERROR, "HEADERS too short"));
            }
            payload.advance(5);
        }
        let end = flags & END_STREAM != 0;
        if flags & END_HEADERS != 0 {
            self.block(id, end, payload)
        } else {
            self.continuation = Some((id, end, BytesMut::from(&payload[..])));
            Ok(())
        }
    }

    fn continuation(&mut self, id: u32, flags: u8, payload: &[u8]) -> Result<(), ConnError> {
        let Some((_, end, block)) = self.continuation.as_mut() else {
            return Err(ConnError(
                reason::PROTOCOL_ERROR,
                "CONTINUATION without HEADERS",
            ));
        };
        if block.len() + payload.len() > MAX_BLOCK {
            return Err(ConnError(
                reason::ENHANCE_YOUR_CALM,
                "header block too large",
            ));
        }
        block.extend_from_slice(payload);
        let end = *end;
        if flags & END_HEADERS != 0 {
            if let Some((_, _, block)) = self.continuation.take() {
                return self.block(id, end, block.freeze());
            }
        }
        Ok(())
    }

    /// A whole header block for stream `id`: a response head, an informational head,
    /// or trailers.
    fn block(&mut self, id: u32, end: bool, block: Bytes) -> Result<(), ConnError> {
        let mut fields = Fields::default();
        // Decoded whatever becomes of the stream: the table is the connection's.
        self.hpack
            .decode(&block, |n, v| fields.add(n, v))
            .map_err(|e| ConnError(reason::COMPRESSION_ERROR, e.0))?;
        let mut st = self.shared.lock();
        let st = &mut *st;
        let was_empty = st.out.is_empty();
        let Some(slot) = st.streams.get_mut(&id) else {
            if id >= st.next_id || id.is_multiple_of(2) {
                return Err(ConnError(
                    reason::PROTOCOL_ERROR,
                    "HEADERS on an idle stream",
                ));
            }
            return Ok(());
        };
        if slot.error.is_some() {
            return Ok(());
        }
        let malformed = if slot.recv_end {
            Some((reason::STREAM_CLOSED, "HEADERS after the end of the stream"))
        } else if let Some(why) = fields.malformed {
            Some((reason::PROTOCOL_ERROR, why))
        } else if !slot.head_seen {
            match fields.status {
                None => Some((reason::PROTOCOL_ERROR, "no :status")),
                Some(s) if s.is_informational() => {
                    if end || s == StatusCode::SWITCHING_PROTOCOLS {
                        Some((reason::PROTOCOL_ERROR, "bad informational response"))
                    } else {
                        None
                    }
                }
                Some(s) => {
                    slot.head = Some((s, std::mem::take(&mut fields.headers)));
                    slot.head_seen = true;
                    slot.recv_end = end;
                    None
                }
            }
        } else if !end || fields.status.is_some() {
            Some((reason::PROTOCOL_ERROR, "bad trailers"))
        } else {
            slot.trailers = Some(std::mem::take(&mut fields.headers));
            slot.recv_end = true;
            None
        };
        match malformed {
            Some((code, why)) => {
                slot.fail(Error::Malformed(why));
                st.reset(id, code);
            }
            None => {
                if let Some(w) = slot.recv_waker.take() {
                    w.wake();
                }
            }
        }
        if was_empty && !st.out.is_empty() {
            st.wake_driver();
        }
        Ok(())
    }

    fn rst_stream(&mut self, id: u32, payload: &[u8]) -> Result<(), ConnError> {
        if payload.len() != 4 {
            return Err(ConnError(reason::FRAME_SIZE_ERROR, "RST_STREAM size"));
        }
        if id == 0 {
            return Err(ConnError(reason::PROTOCOL_ERROR, "RST_STREAM on stream 0"));
        }
        let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
        let mut st = self.shared.lock();
        let next_id = st.next_id;
        match st.streams.get_mut(&id) {
            Some(slot) => {
                if slot.recv_end {
                    // RFC 9113 8.1: the response is whole; the request's upload stops.
                    slot.send_stopped = true;
                    slot.wake();
                } else {
                    slot.fail(Error::Reset(code));
                }
            }
            None if id >= next_id => {
                return Err(ConnError(
                    reason::PROTOCOL_ERROR,
                    "RST_STREAM on an idle stream",
                ));
            }
            None => {}
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
        let mut streams = None;
        for p in payload.chunks_exact(6) {
            let value = u32::from_be_bytes([p[2], p[3], p[4], p[5]]);
            match u16::from_be_bytes([p[0], p[1]]) {
                0x3 => streams = Some(value as usize),
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
        drop(guard);
        // The first SETTINGS settle the limit; later ones may change it.
        if streams.is_some() || !self.shared.limits.known() {
            self.shared
                .limits
                .set(streams.unwrap_or(self.default_streams));
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
            self.ping_sent = false;
            let at = Instant::now() + self.every;
            self.ping.as_mut().reset(at);
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
        let last =
            u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & MAX_STREAM_ID;
        let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
        tracing::debug!(
            last,
            code = reason::name(code),
            "HTTP/2 backend sent GOAWAY"
        );
        let mut st = self.shared.lock();
        st.going_away = true;
        self.shared.closed.store(true, Ordering::Release);
        for (&sid, slot) in st.streams.iter_mut() {
            if sid > last {
                slot.fail(Error::Refused);
            }
        }
        Ok(())
    }

    fn window_update(&mut self, id: u32, payload: &[u8]) -> Result<(), ConnError> {
        if payload.len() != 4 {
            return Err(ConnError(reason::FRAME_SIZE_ERROR, "WINDOW_UPDATE size"));
        }
        let inc = i64::from(
            u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & MAX_STREAM_ID,
        );
        let mut st = self.shared.lock();
        let st = &mut *st;
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
        let was_empty = st.out.is_empty();
        match st.streams.get_mut(&id) {
            Some(slot) if slot.error.is_none() => {
                slot.send_window += inc;
                if inc == 0 || slot.send_window > MAX_WINDOW {
                    slot.fail(Error::Malformed("bad WINDOW_UPDATE"));
                    let code = if inc == 0 {
                        reason::PROTOCOL_ERROR
                    } else {
                        reason::FLOW_CONTROL_ERROR
                    };
                    st.reset(id, code);
                } else if let Some(w) = slot.send_waker.take() {
                    w.wake();
                }
            }
            Some(_) => {}
            None if id >= st.next_id => {
                return Err(ConnError(
                    reason::PROTOCOL_ERROR,
                    "WINDOW_UPDATE on an idle stream",
                ));
            }
            None => {}
        }
        if was_empty && !st.out.is_empty() {
            st.wake_driver();
        }
        Ok(())
    }
}

/// A decoded head being checked (RFC 9113 8.1.1, 8.2, 8.3.2).
#[derive(Default)]
struct Fields {
    status: Option<StatusCode>,
    headers: HeaderMap,
    size: usize,
    regular: bool,
    malformed: Option<&'static str>,
}

impl Fields {
    fn add(&mut self, name: Bytes, value: Bytes) {
        self.size += name.len() + value.len() + 32;
        if self.malformed.is_some() {
            return;
        }
        if self.size > MAX_HEADER_LIST {
            self.malformed = Some("head too large");
            return;
        }
        if name.first() == Some(&b':') {
            if &name[..] != b":status" || self.status.is_some() || self.regular {
                self.malformed = Some("bad pseudo-header");
                return;
            }
            match StatusCode::from_bytes(&value) {
                Ok(s) if value.len() == 3 => self.status = Some(s),
                _ => self.malformed = Some("bad :status"),
            }
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
}

impl<T> Future for Driver<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        {
            let mut st = this.shared.lock();
            if !st.driver.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                st.driver = Some(cx.waker().clone());
            }
        }
        // Rounds before yielding to the other tasks of the thread.
        let mut budget = 32;
        loop {
            let mut progress = false;
            if !this.closing {
                if this.rbuf.capacity() - this.rbuf.len() < 4096 {
                    this.rbuf.reserve(32 << 10);
                }
                match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.rbuf) {
                    Poll::Ready(Ok(0)) => this.end(Error::Closed("the backend closed it".into())),
                    Poll::Ready(Ok(_)) => {
                        progress = true;
                        if let Err(e) = this.frames() {
                            this.conn_error(e);
                        }
                    }
                    Poll::Ready(Err(e)) => this.end(Error::Closed(e.to_string().into())),
                    Poll::Pending => {}
                }
            }
            if !this.closing && this.ping.as_mut().poll(cx).is_ready() {
                if this.ping_sent {
                    tracing::debug!("HTTP/2 backend did not answer a PING");
                    this.end(Error::Closed("no answer to a PING".into()));
                } else {
                    this.ping_sent = true;
                    let mut st = this.shared.lock();
                    st.frame(8, PING, 0, 0);
                    st.out.put_u64(0);
                    drop(st);
                    let at = Instant::now() + this.within;
                    this.ping.as_mut().reset(at);
                    // Polled again to be woken when it fires.
                    let _ = this.ping.as_mut().poll(cx);
                }
            }
            let finished = {
                let mut st = this.shared.lock();
                if !st.out.is_empty() {
                    if this.wbuf.is_empty() {
                        std::mem::swap(&mut this.wbuf, &mut st.out);
                    } else {
                        this.wbuf.extend_from_slice(&st.out);
                        st.out.clear();
                    }
                    for w in st.blocked.drain(..) {
                        w.wake();
                    }
                }
                let idle = st.streams.is_empty();
                if !this.closing && (st.going_away || st.released) && idle {
                    if st.released && !st.going_away {
                        put_frame_head(&mut this.wbuf, 8, GOAWAY, 0, 0);
                        this.wbuf.put_u32(0);
                        this.wbuf.put_u32(reason::NO_ERROR);
                    }
                    st.going_away = true;
                    this.shared.closed.store(true, Ordering::Release);
                    this.closing = true;
                }
                this.closing
            };
            while !this.wbuf.is_empty() {
                match Pin::new(&mut this.io).poll_write(cx, &this.wbuf) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        this.wbuf.clear();
                        if !this.closing {
                            this.end(Error::Closed("write failed".into()));
                        }
                        return Poll::Ready(());
                    }
                    Poll::Ready(Ok(n)) => this.wbuf.advance(n),
                    Poll::Pending => break,
                }
            }
            if this.wbuf.is_empty() {
                // What is written is flushed (TLS keeps records until then).
                let _ = Pin::new(&mut this.io).poll_flush(cx);
                if finished {
                    let _ = Pin::new(&mut this.io).poll_shutdown(cx);
                    return Poll::Ready(());
                }
            } else if finished {
                // Ending: bytes that cannot be written now are not waited for.
                return Poll::Ready(());
            }
            if !progress {
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

impl<T> Drop for Driver<T> {
    fn drop(&mut self) {
        // Aborted (the runtime shuts down) or ended: no stream waits on it.
        let mut st = self.shared.lock();
        st.fail_all(Error::Closed("the connection ended".into()));
        st.going_away = true;
        st.driver = None;
        self.shared.closed.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A backend speaking raw frames on a loopback socket.
    struct Peer {
        s: TcpStream,
        buf: BytesMut,
    }

    struct Started {
        handle: Handle,
        peer: Peer,
        limits: Arc<Limits>,
        closed: Arc<AtomicBool>,
    }

    /// A connection from the client to a raw backend, past the client's preface.
    async fn start() -> Started {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (theirs, _) = listener.accept().await.unwrap();
        let limits = Arc::new(Limits::default());
        let closed = Arc::new(AtomicBool::new(false));
        let (handle, driver) = handshake(
            ours,
            Duration::from_secs(30),
            limits.clone(),
            closed.clone(),
            100,
        );
        tokio::spawn(driver);
        let mut peer = Peer {
            s: theirs,
            buf: BytesMut::new(),
        };
        let mut preface = [0u8; 24];
        peer.s.read_exact(&mut preface).await.unwrap();
        assert_eq!(&preface, PREFACE);
        let (kind, _, _, settings) = peer.frame().await;
        assert_eq!(kind, SETTINGS);
        assert_eq!(settings.len(), 18);
        let (kind, _, id, _) = peer.frame().await;
        assert_eq!((kind, id), (WINDOW_UPDATE, 0));
        Started {
            handle,
            peer,
            limits,
            closed,
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

        async fn send(&mut self, kind: u8, flags: u8, id: u32, payload: &[u8]) {
            let mut b = BytesMut::new();
            put_frame_head(&mut b, payload.len(), kind, flags, id);
            b.extend_from_slice(payload);
            self.s.write_all(&b).await.unwrap();
        }

        async fn settings(&mut self, params: &[(u16, u32)]) {
            let mut p = BytesMut::new();
            for (id, v) in params {
                p.put_u16(*id);
                p.put_u32(*v);
            }
            self.send(SETTINGS, 0, 0, &p).await;
        }
    }

    fn block(fields: &[(&str, &str)]) -> BytesMut {
        let mut b = BytesMut::new();
        for (n, v) in fields {
            hpack::encode(&mut b, n.as_bytes(), v.as_bytes(), false);
        }
        b
    }

    fn get() -> BytesMut {
        block(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "b"),
            (":path", "/"),
        ])
    }

    async fn head(rx: &mut Receiver) -> Result<Head, Error> {
        poll_fn(|cx| rx.poll_head(cx)).await
    }

    async fn data(rx: &mut Receiver) -> Option<Result<Bytes, Error>> {
        poll_fn(|cx| rx.poll_data(cx)).await
    }

    #[tokio::test]
    async fn a_response_in_continuation_padded_and_with_trailers_arrives_whole() {
        let mut s = start().await;
        let (_, mut rx) = s.handle.open(&get(), true).unwrap();
        let (flags, id, _) = s.peer.expect(HEADERS).await;
        assert_eq!((flags, id), (END_STREAM | END_HEADERS, 1));
        let fields = block(&[
            (":status", "200"),
            ("x-a", "b"),
            ("content-type", "text/plain"),
        ]);
        // HEADERS padded with 3 octets and carrying the first 2 octets, the rest in
        // a CONTINUATION.
        let mut first = vec![3u8];
        first.extend_from_slice(&fields[..2]);
        first.extend_from_slice(&[0, 0, 0]);
        s.peer.send(HEADERS, PADDED, 1, &first).await;
        s.peer
            .send(CONTINUATION, END_HEADERS, 1, &fields[2..])
            .await;
        s.peer.send(DATA, PADDED, 1, b"\x02hello\0\0").await;
        let trailers = block(&[("grpc-status", "0")]);
        s.peer
            .send(HEADERS, END_STREAM | END_HEADERS, 1, &trailers)
            .await;
        let (status, headers) = head(&mut rx).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-a"], "b");
        assert_eq!(headers["content-type"], "text/plain");
        assert_eq!(data(&mut rx).await.unwrap().unwrap(), "hello");
        assert!(data(&mut rx).await.is_none());
        let t = poll_fn(|cx| rx.poll_trailers(cx)).await.unwrap().unwrap();
        assert_eq!(t["grpc-status"], "0");
        assert!(rx.is_end_stream());
    }

    #[tokio::test]
    async fn a_request_body_waits_for_the_backends_window() {
        let mut s = start().await;
        s.peer.settings(&[(0x4, 10)]).await;
        let (flags, _, _) = s.peer.expect(SETTINGS).await;
        assert_eq!(flags, ACK);
        let (tx, _rx) = s.handle.open(&get(), false).unwrap();
        let mut tx = tx.unwrap();
        let mut chunk = Bytes::from_static(b"0123456789abcdefghijklmno");
        let sent = poll_fn(|cx| Poll::Ready(tx.poll_send(cx, &mut chunk, true))).await;
        assert!(sent.is_pending());
        assert_eq!(chunk.len(), 15);
        let (flags, id, payload) = s.peer.expect(DATA).await;
        assert_eq!((flags, id, &payload[..]), (0, 1, &b"0123456789"[..]));
        s.peer
            .send(WINDOW_UPDATE, 0, 1, &100u32.to_be_bytes())
            .await;
        poll_fn(|cx| tx.poll_send(cx, &mut chunk, true))
            .await
            .unwrap();
        let (flags, _, payload) = s.peer.expect(DATA).await;
        assert_eq!((flags, &payload[..]), (END_STREAM, &b"abcdefghijklmno"[..]));
    }

    #[tokio::test]
    async fn goaway_refuses_the_streams_above_its_last_and_lets_the_others_finish() {
        let mut s = start().await;
        let (_, mut one) = s.handle.open(&get(), true).unwrap();
        let (_, mut three) = s.handle.open(&get(), true).unwrap();
        let mut goaway = 1u32.to_be_bytes().to_vec();
        goaway.extend_from_slice(&0u32.to_be_bytes());
        s.peer.send(GOAWAY, 0, 0, &goaway).await;
        assert!(matches!(head(&mut three).await, Err(Error::Refused)));
        assert!(s.closed.load(Ordering::Acquire));
        assert!(matches!(s.handle.open(&get(), true), Err(Error::Refused)));
        s.peer
            .send(
                HEADERS,
                END_STREAM | END_HEADERS,
                1,
                &block(&[(":status", "204")]),
            )
            .await;
        assert_eq!(head(&mut one).await.unwrap().0, StatusCode::NO_CONTENT);
    }

    #[tokio::test]
    async fn a_protocol_violation_ends_the_connection_with_goaway() {
        let mut s = start().await;
        let (_, mut rx) = s.handle.open(&get(), true).unwrap();
        s.peer.send(DATA, 0, 7, b"x").await;
        let (_, _, payload) = s.peer.expect(GOAWAY).await;
        assert_eq!(&payload[4..8], &reason::PROTOCOL_ERROR.to_be_bytes());
        assert!(matches!(head(&mut rx).await, Err(Error::Closed(_))));
        assert!(s.handle.open(&get(), true).is_err());
        assert!(s.closed.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn a_malformed_response_resets_only_its_stream() {
        let mut s = start().await;
        let (_, mut one) = s.handle.open(&get(), true).unwrap();
        let (_, mut three) = s.handle.open(&get(), true).unwrap();
        for (fields, why) in [
            (
                vec![(":status", "200"), ("X-Upper", "1")],
                "upper-case field name",
            ),
            (
                vec![(":status", "200"), ("connection", "close")],
                "connection-specific field",
            ),
            (vec![("x", "1"), (":status", "200")], "bad pseudo-header"),
            (vec![("x", "1")], "no :status"),
        ] {
            let mut s = start().await;
            let (_, mut rx) = s.handle.open(&get(), true).unwrap();
            s.peer.send(HEADERS, END_HEADERS, 1, &block(&fields)).await;
            let (_, id, code) = s.peer.expect(RST_STREAM).await;
            assert_eq!(
                (id, &code[..]),
                (1, &reason::PROTOCOL_ERROR.to_be_bytes()[..])
            );
            match head(&mut rx).await {
                Err(Error::Malformed(w)) => assert_eq!(w, why),
                other => panic!("{fields:?}: {:?}", other.map(|h| h.0)),
            }
        }
        s.peer
            .send(
                HEADERS,
                END_HEADERS,
                1,
                &block(&[(":status", "200"), ("Bad", "1")]),
            )
            .await;
        s.peer
            .send(
                HEADERS,
                END_STREAM | END_HEADERS,
                3,
                &block(&[(":status", "200")]),
            )
            .await;
        assert!(head(&mut one).await.is_err());
        assert_eq!(head(&mut three).await.unwrap().0, StatusCode::OK);
    }

    #[tokio::test]
    async fn pings_are_answered_and_read_data_gives_its_window_back() {
        let mut s = start().await;
        s.peer.send(PING, 0, 0, b"12345678").await;
        let (flags, _, payload) = s.peer.expect(PING).await;
        assert_eq!((flags, &payload[..]), (ACK, &b"12345678"[..]));
        let (_, mut rx) = s.handle.open(&get(), true).unwrap();
        s.peer
            .send(HEADERS, END_HEADERS, 1, &block(&[(":status", "200")]))
            .await;
        let chunk = vec![b'x'; MAX_FRAME];
        // Half the stream's window, in frames; read as it comes.
        let frames = (STREAM_WINDOW / 2) as usize / MAX_FRAME;
        head(&mut rx).await.unwrap();
        for _ in 0..frames {
            s.peer.send(DATA, 0, 1, &chunk).await;
            assert_eq!(data(&mut rx).await.unwrap().unwrap().len(), MAX_FRAME);
        }
        let (_, id, inc) = s.peer.expect(WINDOW_UPDATE).await;
        assert_eq!(id, 1);
        assert_eq!(
            u32::from_be_bytes(inc[..].try_into().unwrap()) as i64,
            STREAM_WINDOW / 2
        );
    }

    #[tokio::test]
    async fn an_abandoned_response_resets_its_stream() {
        let mut s = start().await;
        let (_, rx) = s.handle.open(&get(), true).unwrap();
        drop(rx);
        let (_, id, code) = s.peer.expect(RST_STREAM).await;
        assert_eq!((id, &code[..]), (1, &reason::CANCEL.to_be_bytes()[..]));
    }

    #[tokio::test]
    async fn the_backends_settings_set_the_stream_limit() {
        let mut s = start().await;
        assert!(!s.limits.known());
        s.peer.settings(&[(0x3, 1)]).await;
        s.peer.expect(SETTINGS).await;
        assert_eq!(s.limits.streams(), 1);
        // A frame size below the protocol's minimum ends the connection.
        s.peer.settings(&[(0x5, 100)]).await;
        let (_, _, payload) = s.peer.expect(GOAWAY).await;
        assert_eq!(&payload[4..8], &reason::PROTOCOL_ERROR.to_be_bytes());
    }
}
