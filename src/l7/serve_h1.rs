//! The client side of HTTP/1.x: one connection's requests, read, handled and
//! answered in turn (pipelined requests wait in the read buffer).
//!
//! Between requests a connection holds no buffer: a head is first read into a buffer
//! on the stack and copied out at its size, the handler's future and the response's
//! body live on the heap only while a request is in flight, and the write buffer only
//! while a response is written.

use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{Request, StatusCode};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use super::conn::{ConnCtx, Park};
use super::h1::poll_fill;
use super::request::handle;
use super::request_body::Inbound;
use super::serve::Prefixed;

mod body;
mod parse;
mod write;

pub(super) use body::H1Body;
use write::Out;

/// A head's first read goes to a buffer this large on the stack.
const FIRST_READ: usize = 4 * 1024;

/// Bytes gathered from a response's body before they are written.
const WRITE_BATCH: usize = 64 * 1024;

/// Why a connection ended other than by a clean close.
#[derive(Debug)]
pub(super) enum Error {
    /// A request head that could not be served was answered with this status.
    Refused(StatusCode),
    /// A later request's head did not arrive whole within `header_timeout`.
    HeadTimeout,
    /// The connection ended in the middle of a request head.
    Incomplete,
    /// The client went away while its request was handled (`abort_on_close`).
    Aborted,
    Io(io::Error),
    /// A response's body failed after its head was sent.
    Body(super::request_body::BoxError),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Refused(s) => write!(f, "request refused with {s}"),
            Error::HeadTimeout => f.write_str("request head not received within header_timeout"),
            Error::Incomplete => f.write_str("connection closed in the middle of a request head"),
            Error::Aborted => f.write_str("client closed the connection during its request"),
            Error::Io(e) => write!(f, "{e}"),
            Error::Body(e) => write!(f, "response body failed: {e}"),
        }
    }
}

/// A connection being served: a future that ends with the connection, or gives its
/// stream back when asked to park (see [`Server::park`]).
pub(super) struct Server<S> {
    ctx: Arc<ConnCtx>,
    run: Pin<Box<dyn Future<Output = Result<Option<S>, Error>> + Send>>,
}

impl<S> Server<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Serves `io`; `later`: its first request is not the connection's first (the
    /// connection was parked), and its head has `header_timeout` from its first byte.
    pub(super) fn new(io: S, ctx: Arc<ConnCtx>, later: bool) -> Server<S> {
        let run = crate::side::boxed(|| run(io, ctx.clone(), later));
        Server { ctx, run }
    }

    /// Finishes the request in flight, if any, then closes: its response says
    /// `Connection: close`. An idle connection closes at once.
    pub(super) fn graceful_shutdown(&mut self) {
        self.ctx.shutdown.store(true, Ordering::Relaxed);
    }

    /// Gives the stream back (the future ends with it) if the connection waits for a
    /// request with nothing read of it and nothing in the stream, now or the next
    /// time it waits so; a request that arrives first takes the ask back.
    pub(super) fn park(&mut self) {
        self.ctx.park.store(Park::QUIET, Ordering::Relaxed);
    }
}

impl<S> Future for Server<S> {
    type Output = Result<Option<S>, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.run.as_mut().poll(cx)
    }
}

/// A client connection's byte stream once it has become a tunnel.
pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The client's side of an upgraded HTTP/1.1 connection: the bytes it sent past its
/// request head first.
pub(super) type Upgraded = Prefixed<Box<dyn Io>>;

/// Put on an upgrade request: how its connection reaches the tunnel once the 101 (or
/// the 2xx to CONNECT) is written. (A request's extensions must be `Clone`; the
/// connection is taken once.)
#[derive(Clone)]
pub(crate) struct OnUpgrade(pub(crate) Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

/// Serves the connection's requests one after another; `Some(io)`: parked. Not an
/// `async fn`: the future keeps `io` and `ctx` once, where an `async fn` keeps its
/// arguments beside the locals they are moved into.
#[allow(clippy::manual_async_fn)] // the size, as said above
fn run<S>(
    mut io: S,
    ctx: Arc<ConnCtx>,
    later: bool,
) -> impl Future<Output = Result<Option<S>, Error>> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async move {
        let max_head = ctx.settings.max_header_list as usize;
        let mut read = BytesMut::new();
        let mut later = later;
        let refused = loop {
            if read.is_empty() {
                // Nothing pipelined: the buffer is given back while the connection waits.
                read = BytesMut::new();
            }
            let timeout = later.then_some(ctx.settings.header_timeout);
            // Everything a request needs lives in one allocation while it is served,
            // none while the connection waits for the next: the head is moved into it
            // within this block.
            let served = {
                let head = match read_head(&mut io, &mut read, max_head, timeout, &ctx).await {
                    Ok(Waited::Head(head)) => head,
                    Ok(Waited::Closed) => return Ok(None),
                    Ok(Waited::Park) => return Ok(Some(io)),
                    Err(Error::Refused(status)) => break status,
                    Err(e) => return Err(e),
                };
                // A request arrived: an ask to park is taken back.
                ctx.park.store(Park::NO, Ordering::Relaxed);
                crate::side::boxed(|| serve_one(&mut io, &mut read, head, &ctx))
            };
            let first = !later;
            later = true;
            match served.await? {
                // A connection that waits after its first response parks at once: most
                // that go quiet do so from there (a client's pool keeping it, a page's
                // requests done), and one that is busy pays for it once.
                Next::Request if first => ctx.park.store(Park::NOW, Ordering::Relaxed),
                Next::Request => {}
                Next::Close => {
                    let _ = poll_fn(|cx| Pin::new(&mut io).poll_shutdown(cx)).await;
                    return Ok(None);
                }
                Next::Upgrade(to) => {
                    let io: Box<dyn Io> = Box::new(io);
                    let _ = to.send(Prefixed::new(read.freeze(), io));
                    return Ok(None);
                }
            }
        };
        Box::pin(refuse(&mut io, refused)).await.map(|()| None)
    }
}

/// Answers a request head that cannot be served and closes the connection (boxed by
/// the caller: a waiting connection carries no room for it).
async fn refuse<S: AsyncWrite + Unpin>(io: &mut S, status: StatusCode) -> Result<(), Error> {
    let out = write::refusal(status);
    let mut left = &out[..];
    let _ = poll_fn(|cx| poll_write_all(io, &mut left, cx)).await;
    let _ = poll_fn(|cx| Pin::new(&mut *io).poll_shutdown(cx)).await;
    Err(Error::Refused(status))
}

/// What waiting for a request head ended with.
// The head is moved into its request's allocation at once: boxing it here would be
// one allocation more per request.
#[allow(clippy::large_enum_variant)]
enum Waited {
    Head(parse::Head),
    /// The connection closed (or shutdown began) before a next request began.
    Closed,
    /// Nothing of a next request was read, none is in the stream, and the connection
    /// was asked to park.
    Park,
}

/// Reads until a whole request head is in `read`. `timeout`: how long a head may take
/// from its first byte (the first request's is watched by the caller).
async fn read_head<S>(
    io: &mut S,
    read: &mut BytesMut,
    max_head: usize,
    timeout: Option<Duration>,
    ctx: &ConnCtx,
) -> Result<Waited, Error>
where
    S: AsyncRead + Unpin,
{
    let mut deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        if !read.is_empty() {
            match parse::parse(read, max_head) {
                Ok(Some(head)) => return Ok(Waited::Head(head)),
                Ok(None) => {}
                Err(status) => return Err(Error::Refused(status)),
            }
            if let (None, Some(t)) = (&deadline, timeout) {
                deadline = Some(Box::pin(tokio::time::sleep(t)));
            }
        }
        let n = poll_fn(|cx| {
            if let Some(d) = deadline.as_mut() {
                if d.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(Error::HeadTimeout));
                }
            }
            if read.is_empty() && ctx.shutdown.load(Ordering::Relaxed) {
                return Poll::Ready(Ok(None));
            }
            match poll_read_head(io, read, max_head, cx) {
                // Only once a read found nothing: no byte waits in the stream (nor in
                // a TLS session's buffer), and readiness says when one comes.
                Poll::Pending
                    if read.is_empty() && ctx.park.load(Ordering::Relaxed) != Park::NO =>
                {
                    Poll::Ready(Ok(Some(None)))
                }
                other => other.map(|r| r.map(|n| Some(Some(n))).map_err(Error::Io)),
            }
        })
        .await?;
        match n {
            None => return Ok(Waited::Closed),
            Some(None) => return Ok(Waited::Park),
            Some(Some(0)) if read.is_empty() => return Ok(Waited::Closed),
            Some(Some(0)) => return Err(Error::Incomplete),
            Some(Some(_)) => {}
        }
    }
}

/// One read towards a request head: into a buffer on the stack when `read` holds
/// nothing (copied out at its size), else into `read` itself.
fn poll_read_head<S: AsyncRead + Unpin>(
    io: &mut S,
    read: &mut BytesMut,
    max_head: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if read.capacity() > read.len() {
        let want = (max_head + 1).saturating_sub(read.len()).max(1);
        return poll_fill(io, read, want.min(FIRST_READ * 4), cx);
    }
    let mut stack = [MaybeUninit::<u8>::uninit(); FIRST_READ];
    let mut rb = ReadBuf::uninit(&mut stack);
    ready!(Pin::new(io).poll_read(cx, &mut rb))?;
    let got = rb.filled();
    if got.len() == FIRST_READ {
        // More may follow: room for it now.
        read.reserve(FIRST_READ * 4);
    }
    read.extend_from_slice(got);
    Poll::Ready(Ok(got.len()))
}

/// Writes all of `data`, taking what is written off its front: a write cut short by
/// a full socket goes on from there when polled again.
pub(super) fn poll_write_all<S: AsyncWrite + Unpin>(
    io: &mut S,
    data: &mut &[u8],
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while !data.is_empty() {
        let n = ready!(Pin::new(&mut *io).poll_write(cx, data))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        *data = &data[n..];
    }
    Poll::Ready(Ok(()))
}

/// What follows a response.
enum Next {
    Request,
    Close,
    Upgrade(oneshot::Sender<Upgraded>),
}

/// Handles one request and writes its response.
async fn serve_one<S>(
    io: &mut S,
    read: &mut BytesMut,
    head: parse::Head,
    ctx: &Arc<ConnCtx>,
) -> Result<Next, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (shutdown, abort_on_close) = (&ctx.shutdown, ctx.settings.abort_on_close);
    let parse::Head {
        parts,
        framing,
        keep_alive,
        expect_continue,
        upgrade,
    } = head;
    let asked = (parts.method.clone(), parts.version);
    let (mut feeder, body) = body::Feeder::new(
        framing,
        expect_continue && parts.version == http::Version::HTTP_11,
    );
    let mut req = Request::from_parts(parts, Inbound::H1(body));
    let handover = upgrade.then(|| {
        let (tx, rx) = oneshot::channel();
        req.extensions_mut()
            .insert(OnUpgrade(Arc::new(Mutex::new(Some(rx)))));
        tx
    });
    let handling = handle(req, ctx);
    tokio::pin!(handling);
    let response = poll_fn(|cx| loop {
        if let Poll::Ready(r) = handling.as_mut().poll(cx) {
            return Poll::Ready(Ok(r));
        }
        if feeder.poll(io, read, cx).is_ready() {
            // A piece (or the end) for the handler: let it take it.
            continue;
        }
        if abort_on_close && feeder.complete() {
            // With nothing left to read of the request, the client's end of stream
            // means it went away: the request is cancelled.
            if read.len() < parse::MAX_FIELDS * 64 {
                match poll_fill(io, read, FIRST_READ, cx) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        return Poll::Ready(Err(Error::Aborted))
                    }
                    Poll::Ready(Ok(_)) => continue,
                    Poll::Pending => {}
                }
            }
        }
        return Poll::Pending;
    })
    .await?;

    let (mut parts, body) = response.into_parts();
    // A body the handler let go of unread, and that is not here whole, makes this
    // response the connection's last: it says so.
    let reusable = feeder.settle_abandoned(read);
    let asked = write::asked(
        &asked.0,
        asked.1,
        keep_alive && reusable && !shutdown.load(Ordering::Relaxed),
    );
    let mut out = Vec::with_capacity(256 + 64 * parts.headers.len());
    let plan = write::head(
        &mut out,
        parts.status,
        &mut parts.headers,
        &asked,
        body.size_hint(),
    );
    if plan.upgrade {
        drop(body);
        let mut left = &out[..];
        let flushed = poll_fn(|cx| {
            ready!(poll_write_all(io, &mut left, cx))?;
            Pin::new(&mut *io).poll_flush(cx)
        })
        .await;
        flushed.map_err(Error::Io)?;
        return Ok(match handover {
            Some(to) if feeder.complete() => Next::Upgrade(to),
            _ => Next::Close,
        });
    }
    let mut sending = Sending {
        out,
        sent: 0,
        piece: None,
        framing: plan.body,
        ended: plan.body == Out::None,
        trailers: plan.trailers.then_some(parts.headers),
        last: None,
    };
    if sending.ended {
        drop(body);
        let written = poll_fn(|cx| sending.poll_flush_out(io, cx)).await;
        written.map_err(Error::Io)?;
    } else {
        // The request's body is still fed meanwhile: a backend may answer before it
        // has all of it.
        tokio::pin!(body);
        let written = poll_fn(|cx| {
            let _ = feeder.poll(io, read, cx);
            sending.poll(io, body.as_mut(), cx)
        })
        .await;
        written?;
        if sending.framing == Out::Close {
            return Ok(Next::Close);
        }
    }
    let reusable = feeder.finish(read);
    if plan.keep_alive && reusable && !shutdown.load(Ordering::Relaxed) {
        Ok(Next::Request)
    } else {
        Ok(Next::Close)
    }
}

/// A response body on its way out.
struct Sending {
    /// Head, chunk lines and small pieces, copied; `sent` of it already written.
    out: Vec<u8>,
    sent: usize,
    /// A large piece written from its own buffer after `out` (and its chunk end).
    piece: Option<Bytes>,
    framing: Out,
    ended: bool,
    /// The response's fields, when it declared trailers.
    trailers: Option<http::HeaderMap>,
    /// A chunked body's end (with its trailers) to write once `piece` is out.
    last: Option<Option<http::HeaderMap>>,
}

impl Sending {
    /// Writes what is queued, then flushes.
    fn poll_flush_out<S: AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.queued() {
            ready!(self.poll_write_queued(io, cx))?;
        }
        Pin::new(io).poll_flush(cx)
    }

    fn queued(&self) -> bool {
        self.sent < self.out.len() || self.piece.is_some()
    }

    fn poll_write_queued<S: AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let head = &self.out[self.sent..];
        let n = match &self.piece {
            Some(piece) if !head.is_empty() => {
                let bufs = [io::IoSlice::new(head), io::IoSlice::new(piece)];
                ready!(Pin::new(&mut *io).poll_write_vectored(cx, &bufs))?
            }
            Some(piece) => ready!(Pin::new(&mut *io).poll_write(cx, piece))?,
            None => ready!(Pin::new(&mut *io).poll_write(cx, head))?,
        };
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        let from_out = n.min(head.len());
        self.sent += from_out;
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
        }
        let rest = n - from_out;
        if rest > 0 {
            if let Some(piece) = self.piece.as_mut() {
                piece.advance(rest);
                if piece.is_empty() {
                    self.piece = None;
                    if self.framing == Out::Chunked {
                        self.out.extend_from_slice(b"\r\n");
                        if let Some(trailers) = self.last.take() {
                            write::last_chunk(
                                &mut self.out,
                                trailers.as_ref(),
                                self.trailers.as_ref(),
                            );
                            self.framing = Out::None;
                        }
                    }
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Moves the body out: gathers its pieces while they come and there is room,
    /// writes, and ends with the body's framing.
    fn poll<S, B>(
        &mut self,
        io: &mut S,
        mut body: Pin<&mut B>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Error>>
    where
        S: AsyncWrite + Unpin,
        B: Body<Data = Bytes, Error = super::request_body::BoxError>,
    {
        loop {
            while !self.ended && self.piece.is_none() && self.out.len() < WRITE_BATCH {
                match body.as_mut().poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        match frame.into_data() {
                            Ok(data) => self.queue(data)?,
                            Err(frame) => {
                                if let Ok(t) = frame.into_trailers() {
                                    self.end(Some(&t))?;
                                }
                            }
                        }
                        if !self.ended && body.is_end_stream() {
                            self.end(None)?;
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Error::Body(e))),
                    Poll::Ready(None) => self.end(None)?,
                    Poll::Pending => break,
                }
            }
            if self.queued() {
                match self.poll_write_queued(io, cx) {
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::Io(e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if self.ended {
                return Pin::new(io).poll_flush(cx).map_err(Error::Io);
            }
            return Poll::Pending;
        }
    }

    fn queue(&mut self, data: Bytes) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        match self.framing {
            Out::Length(left) => {
                if data.len() as u64 > left {
                    return Err(Error::Body(
                        "response body longer than its content-length".into(),
                    ));
                }
                self.framing = Out::Length(left - data.len() as u64);
            }
            Out::Chunked => write::chunk_line(&mut self.out, data.len()),
            Out::Close | Out::None => {}
        }
        if data.len() >= write::COPY_MAX {
            self.piece = Some(data);
        } else {
            self.out.extend_from_slice(&data);
            if self.framing == Out::Chunked {
                self.out.extend_from_slice(b"\r\n");
            }
        }
        Ok(())
    }

    fn end(&mut self, trailers: Option<&http::HeaderMap>) -> Result<(), Error> {
        self.ended = true;
        match self.framing {
            Out::Length(0) | Out::Close | Out::None => Ok(()),
            Out::Length(_) => Err(Error::Body(
                "response body shorter than its content-length".into(),
            )),
            Out::Chunked => {
                if self.piece.is_some() {
                    // The piece's CRLF goes after it, and the last chunk after that.
                    self.last = Some(trailers.cloned());
                    return Ok(());
                }
                write::last_chunk(&mut self.out, trailers, self.trailers.as_ref());
                self.framing = Out::None;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes at most 3 bytes a write, and is not ready every other time.
    struct Trickle {
        got: Vec<u8>,
        ready: bool,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.ready = !self.ready;
            if !self.ready {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = data.len().min(3);
            self.got.extend_from_slice(&data[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_write_cut_short_goes_on_where_it_stopped() {
        let mut io = Trickle {
            got: Vec::new(),
            ready: false,
        };
        let mut left = &b"HTTP/1.1 100 Continue\r\n\r\n"[..];
        // Starting over on each poll would never finish (and would repeat bytes).
        let write = poll_fn(|cx| poll_write_all(&mut io, &mut left, cx));
        tokio::time::timeout(Duration::from_secs(5), write)
            .await
            .expect("finished")
            .unwrap();
        assert_eq!(io.got, b"HTTP/1.1 100 Continue\r\n\r\n");
        assert!(left.is_empty());
    }
}
