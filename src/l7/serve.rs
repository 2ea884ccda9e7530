//! Serving an accepted connection: HTTP/1.x (`serve_h1`) or HTTP/2 (`serve_h2`)
//! (told apart by ALPN or the first bytes),
//! watched for idleness, slowness, drain and cut.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::settings::Settings;
use crate::activity::{Activity, ReadReady, Readable, Watched};
use crate::config::{self};
use crate::side::{self, First};

use super::access;
use super::conn::{Accepted, ConnCtx, CurrentSettings, Park, Protocol, Serving};
use super::serve_h1;
use super::serve_h2;

/// Serves one accepted connection until it closes or shutdown ends it: `drain` closes
/// it after the requests in flight, `cut` at once.
///
/// Timeouts: the first request's head must arrive within `header_timeout`, and so must
/// each later head from its first byte. A connection on which no byte moves for `idle_timeout`, while no
/// request waits on a backend, is closed after its responses in flight; if it is
/// still silent one `idle_timeout` later (a client that stopped reading, a stalled
/// upload), it is dropped.
///
/// Not an `async fn`: what is set up before the connection is served is done here,
/// and the future returned holds only what serving needs (an `async fn` keeps room
/// for its arguments as long as it runs, and a connection's future lives as long as
/// the connection).
pub fn serve_connection<S>(
    accepted: Accepted<S>,
    settings: Arc<Settings>,
    current: CurrentSettings,
    drain: CancellationToken,
    cut: CancellationToken,
    tracker: TaskTracker,
) -> impl std::future::Future<Output = ()> + Send
where
    S: ClientIo,
{
    use futures_util::future::Either;
    if accepted.protocol != Protocol::Detect {
        return Either::Left(serve_known(
            accepted, settings, current, drain, cut, tracker,
        ));
    }
    Either::Right(detect(accepted, settings, current, drain, cut, tracker))
}

/// Neither ALPN nor the bytes peeked at accept told HTTP/1 from HTTP/2: reads on
/// until they do (at most the preface's 24 bytes), and serves those bytes first.
async fn detect<S>(
    accepted: Accepted<S>,
    settings: Arc<Settings>,
    current: CurrentSettings,
    drain: CancellationToken,
    cut: CancellationToken,
    tracker: TaskTracker,
) where
    S: ClientIo,
{
    let mut accepted = accepted;
    let mut first = Vec::with_capacity(H2_PREFACE_LEN);
    let known = tokio::select! {
        known = first_bytes(&mut accepted.stream, &mut first) => known,
        _ = tokio::time::sleep(settings.header_timeout) => {
            head_timed_out(&settings, accepted.peer, !first.is_empty());
            return;
        }
        _ = cut.cancelled() => return,
    };
    let Accepted {
        stream,
        peer,
        local,
        client_cert,
        admitted,
        permits,
        ..
    } = accepted;
    let accepted = Accepted {
        stream: Prefixed::new(first.into(), stream),
        protocol: known,
        peer,
        local,
        client_cert,
        admitted,
        permits,
    };
    crate::side::boxed(|| serve_known(accepted, settings, current, drain, cut, tracker)).await
}

/// The first bytes of every HTTP/2 connection (RFC 9113 3.4) are this many.
const H2_PREFACE_LEN: usize = 24;

/// Reads until the first bytes tell the protocol: HTTP/1 as soon as they stop being
/// the HTTP/2 preface (or the client stops sending), HTTP/2 once all of it came.
async fn first_bytes<S>(stream: &mut S, first: &mut Vec<u8>) -> Protocol
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut byte = [0u8; H2_PREFACE_LEN];
    loop {
        let want = H2_PREFACE_LEN - first.len();
        match stream.read(&mut byte[..want]).await {
            Ok(n) if n > 0 => first.extend_from_slice(&byte[..n]),
            // The end, or an error: HTTP/1's parser says what becomes of it.
            _ => return Protocol::Http1,
        }
        match Protocol::from_first_bytes(first) {
            Protocol::Detect => continue,
            known => return known,
        }
    }
}

/// Serves a connection whose protocol is known.
fn serve_known<S>(
    accepted: Accepted<S>,
    settings: Arc<Settings>,
    current: CurrentSettings,
    drain: CancellationToken,
    cut: CancellationToken,
    tracker: TaskTracker,
) -> impl std::future::Future<Output = ()> + Send
where
    S: ClientIo,
{
    use futures_util::future::Either;
    let Accepted {
        stream,
        protocol,
        peer,
        local,
        client_cert,
        admitted,
        permits,
    } = accepted;
    let activity = Arc::new(Activity::new());
    let watched_stream = Watched::new(stream, activity.clone());
    let serving = Serving {
        settings: settings.clone(),
        current,
        cut: cut.clone(),
        tracker,
    };
    let ctx = Arc::new(ConnCtx::new(
        serving,
        (peer, local),
        client_cert,
        admitted,
        permits,
    ));
    let watched = Driven {
        ctx,
        http1: protocol != Protocol::Http2,
        activity,
        drain,
        cut,
    };
    // Driven by the protocol's own connection type, with no detection layer between
    // the socket and the parser. HTTP/2 is boxed: its state is larger than HTTP/1's,
    // and every HTTP/1 connection would otherwise carry room for it.
    if protocol == Protocol::Http2 {
        let conn = serve_h2::Server::new(watched_stream, &settings.http2, watched.ctx.clone());
        // Mapped, not awaited in an `async` block: that would keep room for the
        // driving future twice.
        return Either::Left(crate::side::boxed(|| {
            futures_util::FutureExt::map(watched.drive(conn), |_| ())
        }));
    }
    Either::Right(serve_http1(watched_stream, watched, false))
}

/// How long an HTTP/1.x connection stays quiet between requests before it parks: its
/// task, serving loop and watch are let go, and a task holding the stream, the
/// connection's state and one timer waits for the next request (or idleness, the
/// client's end, or drain). What a kept-alive connection costs while it waits is then
/// close to what an idle one does. A connection that waits after its first response
/// parks at once; one that has been served since parks only after this quiet time,
/// so that a busy connection never does.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// Serves an HTTP/1.x connection (`later`: after it was parked) until it closes or
/// parks.
fn serve_http1<S>(
    stream: Watched<S>,
    watched: Driven,
    later: bool,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    S: ClientIo,
{
    let conn = serve_h1::Server::new(stream, watched.ctx.clone(), later);
    ServingH1 {
        drive: watched.drive(conn),
    }
}

pin_project_lite::pin_project! {
    /// An HTTP/1.x connection served until it closes or parks, then parked on a task
    /// of its own. A struct rather than an `async` block, which would keep room for
    /// the driving future twice.
    struct ServingH1<F> {
        #[pin]
        drive: F,
    }
}

impl<F, S> Future for ServingH1<F>
where
    F: Future<Output = Option<(Watched<S>, Driven)>>,
    S: ClientIo,
{
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let Some((stream, watched)) = std::task::ready!(self.project().drive.poll(cx)) else {
            return std::task::Poll::Ready(());
        };
        let ctx = watched.ctx.clone();
        // What is left of `idle_timeout`: all of it after a first response, less the
        // quiet time that parked the connection otherwise.
        let mut idle = ctx.settings.idle_timeout;
        if ctx.park.load(Ordering::Relaxed) == Park::QUIET {
            idle = idle.saturating_sub(PARK_AFTER);
        }
        ctx.settings.parked.inc();
        let parked = Parked {
            counted: Gauged(ctx.settings.parked.clone()),
            drain: watched.drain.clone().cancelled_owned(),
            idle: tokio::time::sleep(idle),
            held: Some((stream, watched)),
        };
        spawn_in_span(&ctx, parked);
        std::task::Poll::Ready(())
    }
}

/// Spawns a connection's future on its tracker, in its span.
fn spawn_in_span<F>(ctx: &ConnCtx, work: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    if ctx.span.is_disabled() {
        ctx.tracker.spawn(work);
    } else {
        ctx.tracker
            .spawn(tracing::Instrument::instrument(work, ctx.span.clone()));
    }
}

pin_project_lite::pin_project! {
    /// A parked HTTP/1.x connection: it waits for the client's next bytes or its end,
    /// for idleness or for drain, on a task of its own.
    struct Parked<S> {
        #[pin]
        drain: tokio_util::sync::WaitForCancellationFutureOwned,
        #[pin]
        idle: tokio::time::Sleep,
        // Taken when the wait ends.
        held: Option<(Watched<S>, Driven)>,
        counted: Gauged,
    }
}

/// One on a gauge while held.
struct Gauged(prometheus::IntGauge);

impl Drop for Gauged {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl<S> Future for Parked<S>
where
    S: ClientIo,
{
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        use std::task::Poll;
        let this = self.project();
        let Some((stream, waiting)) = this.held.as_mut() else {
            return Poll::Ready(());
        };
        // Bytes from the client, or drain: served again. A draining connection then
        // closes as any draining HTTP/1.1 one does, answering a request already on its
        // way. The client's end, or idleness: closed here.
        let serve = if this.drain.poll(cx).is_ready() {
            true
        } else {
            match stream.poll_readable(cx) {
                Poll::Ready(Readable::Bytes) => true,
                Poll::Ready(Readable::End) => false,
                Poll::Pending if this.idle.poll(cx).is_ready() => {
                    debug!(client.addr = %waiting.ctx.peer, "idle between requests: closed");
                    false
                }
                Poll::Pending => return Poll::Pending,
            }
        };
        let Some((stream, watched)) = this.held.take() else {
            return Poll::Ready(());
        };
        if serve {
            let ctx = watched.ctx.clone();
            // Asked again only once quiet again.
            ctx.park.store(Park::NO, Ordering::Relaxed);
            spawn_in_span(&ctx, serve_http1(stream, watched, true));
        }
        Poll::Ready(())
    }
}

/// What a connection is watched with, owned by the future that drives it.
struct Driven {
    ctx: Arc<ConnCtx>,
    http1: bool,
    activity: Arc<Activity>,
    drain: CancellationToken,
    cut: CancellationToken,
}

impl Driven {
    /// Drives `conn` until it ends, or parks: then with its stream and `self` back.
    /// Not an `async fn`, which would keep `self` and `conn` beside the future of
    /// `drive` they are moved into.
    #[allow(clippy::manual_async_fn)] // the size, as said above
    fn drive<C: Connection + Send>(
        self,
        conn: C,
    ) -> impl std::future::Future<Output = Option<(C::Parked, Driven)>> + Send {
        async move {
            let w = Watchers {
                ctx: &self.ctx,
                http1: self.http1,
                activity: &self.activity,
                drain: &self.drain,
                cut: &self.cut,
            };
            let parked = drive(conn, w).await?;
            Some((parked, self))
        }
    }
}

/// A client connection's stream, as the engine serves it.
pub trait ClientIo:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + ReadReady + Unpin + Send + 'static
{
}

impl<T> ClientIo for T where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + ReadReady + Unpin + Send + 'static
{
}

/// A connection's stream with the bytes already read from it served first.
pub(super) struct Prefixed<S> {
    first: bytes::Bytes,
    stream: S,
}

impl<S> Prefixed<S> {
    pub(super) fn new(first: bytes::Bytes, stream: S) -> Prefixed<S> {
        Prefixed { first, stream }
    }
}

impl<S: ReadReady> ReadReady for Prefixed<S> {
    fn poll_readable(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Readable> {
        if !self.first.is_empty() {
            return std::task::Poll::Ready(Readable::Bytes);
        }
        self.stream.poll_readable(cx)
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.first.is_empty() {
            let n = self.first.len().min(buf.remaining());
            buf.put_slice(&self.first.split_to(n));
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// What a connection is watched with besides itself.
#[derive(Clone, Copy)]
struct Watchers<'a> {
    ctx: &'a Arc<ConnCtx>,
    /// The connection may be HTTP/1, whose bytes before a first request are the start
    /// of a request head (HTTP/2's are its preface and settings).
    http1: bool,
    activity: &'a Arc<Activity>,
    drain: &'a CancellationToken,
    cut: &'a CancellationToken,
}

/// A served connection that can be asked to finish its requests in flight and close,
/// and (HTTP/1.x) to park.
trait Connection: std::future::Future {
    type Error: std::fmt::Display + ConnectionError;
    /// What a parked connection gives back: its stream.
    type Parked;
    fn shut_down(self: std::pin::Pin<&mut Self>);
    /// Asks the connection to park once it waits for a request with nothing read.
    fn park(self: std::pin::Pin<&mut Self>);
    /// How it ended: `Ok(Some(_))` when it parked.
    fn ended(out: Self::Output) -> Result<Option<Self::Parked>, Self::Error>;
}

/// What a connection's error says for its accounting.
trait ConnectionError {
    /// The status a request head that could not be served was answered with.
    fn refused(&self) -> Option<u16>;
    /// A request head did not arrive in time.
    fn timed_out(&self) -> bool;
}

impl<S> Connection for serve_h1::Server<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Error = serve_h1::Error;
    type Parked = S;
    fn shut_down(self: std::pin::Pin<&mut Self>) {
        self.get_mut().graceful_shutdown();
    }

    fn park(self: std::pin::Pin<&mut Self>) {
        self.get_mut().park();
    }

    fn ended(out: Self::Output) -> Result<Option<S>, serve_h1::Error> {
        out
    }
}

impl ConnectionError for serve_h1::Error {
    fn refused(&self) -> Option<u16> {
        match self {
            serve_h1::Error::Refused(status) => Some(status.as_u16()),
            _ => None,
        }
    }

    fn timed_out(&self) -> bool {
        matches!(self, serve_h1::Error::HeadTimeout)
    }
}

impl<S> Connection for serve_h2::Server<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Error = super::h2::server::Error;
    type Parked = std::convert::Infallible;
    fn shut_down(self: std::pin::Pin<&mut Self>) {
        self.get_mut().graceful_shutdown();
    }

    /// An HTTP/2 connection does not park.
    fn park(self: std::pin::Pin<&mut Self>) {}

    fn ended(out: Self::Output) -> Result<Option<Self::Parked>, Self::Error> {
        out.map(|()| None)
    }
}

impl ConnectionError for super::h2::server::Error {
    fn refused(&self) -> Option<u16> {
        None
    }

    fn timed_out(&self) -> bool {
        false
    }
}

/// How long a draining HTTP/1.1 keep-alive connection stays open for a request
/// already on its way (answered with `Connection: close`), at most `idle_timeout`.
pub const DRAIN_LINGER: Duration = Duration::from_secs(1);

/// A connection closed at `header_timeout` before its first request: with part of a
/// request head received, a 408 logged and counted like every response (as nginx
/// does, none is written: the connection is closed); with nothing, a connection
/// closed without a request.
fn head_timed_out(settings: &Settings, peer: std::net::SocketAddr, begun: bool) {
    if begun {
        settings.unrouted.count(408);
        access::before_request(&settings.listener, peer, 408);
    } else {
        settings.closed("header_timeout");
    }
}

/// Runs a connection until it ends, closing it on idleness, drain or a request's
/// say-so, and dropping it on the first head's timeout, a too slow transfer, or cut;
/// or until it parks (HTTP/1.x, waiting after its first response or quiet for
/// [`PARK_AFTER`]): then with its stream.
async fn drive<C: Connection>(conn: C, w: Watchers<'_>) -> Option<C::Parked> {
    let Watchers {
        ctx,
        http1,
        activity,
        drain,
        cut,
    } = w;
    let settings = &ctx.settings;
    tokio::pin!(conn);
    // What can end or close the connection besides the connection itself, with one
    // timer for the first head's deadline, idleness and `min_rate`: polled only when
    // the timer or a token fires, not on every read and write.
    let timer = tokio::time::sleep(settings.header_timeout);
    tokio::pin!(timer);
    let drain_fired = drain.cancelled();
    tokio::pin!(drain_fired);
    let close_fired = ctx.close.fired();
    tokio::pin!(close_fired);
    let cut_fired = cut.cancelled();
    tokio::pin!(cut_fired);
    let mut clock = Clock::new(timer.deadline(), settings.min_rate);
    let load = Load {
        activity,
        requests: &ctx.requests,
        waiting: &ctx.waiting,
        waited: &ctx.waited,
        first: &ctx.first_request,
    };
    let mut closing = false;
    // Draining an HTTP/1.1 connection: its next response closes it, or it closes once
    // idle for `linger`.
    let mut lingering = false;
    let linger = DRAIN_LINGER.min(settings.idle_timeout);
    loop {
        // One idleness at a time: a lingering connection's, then (once it closes) the
        // usual one. Idleness and `min_rate` are counted afresh from here.
        let lingers = lingering && !closing;
        clock.start(
            if lingers {
                linger
            } else {
                settings.idle_timeout
            },
            (http1 && !lingering && !closing).then_some(PARK_AFTER),
            &load,
        );
        let watch = std::future::poll_fn(|cx| {
            use std::task::Poll;
            if !closing && !lingering && drain_fired.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Watch::Drain);
            }
            if !closing && close_fired.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Watch::Close);
            }
            if cut_fired.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Watch::Cut);
            }
            match clock.poll(timer.as_mut(), cx, &load) {
                Poll::Ready(Watch::Idle) if lingers => Poll::Ready(Watch::Close),
                other => other,
            }
        });
        match side::first(conn.as_mut(), watch).await {
            First::Main(r) => {
                let e = match C::ended(r) {
                    Ok(parked) => return parked,
                    Err(e) => e,
                };
                debug!(client.addr = %ctx.peer, error = %e, "http connection ended with an error");
                match e.refused() {
                    // A request head that could not be served was answered: logged
                    // and counted like every other response.
                    Some(status) => {
                        settings.unrouted.count(status);
                        access::before_request(&settings.listener, ctx.peer, status);
                    }
                    // A connection that ended before its first request.
                    None if ctx.first_request.load(Ordering::Relaxed) => {}
                    None if e.timed_out() => {
                        head_timed_out(settings, ctx.peer, http1 && activity.moved() > 0)
                    }
                    None => settings.closed("client_reset"),
                }
                return None;
            }
            First::Side(Watch::HeadTimeout) => {
                if !ctx.first_request.load(Ordering::Relaxed) {
                    debug!(client.addr = %ctx.peer, "no complete request head within header_timeout: closed");
                    head_timed_out(settings, ctx.peer, http1 && activity.moved() > 0);
                    return None;
                }
            }
            First::Side(Watch::Drain) if http1 && !ctx.requests.h2() => {
                ctx.draining.store(true, Ordering::Relaxed);
                lingering = true;
            }
            First::Side(Watch::Close | Watch::Drain) => {
                conn.as_mut().shut_down();
                closing = true;
            }
            First::Side(Watch::Idle) => {
                if closing {
                    debug!(client.addr = %ctx.peer, "still idle after closing: dropped");
                    return None;
                }
                if !ctx.first_request.load(Ordering::Relaxed) {
                    settings.closed("idle");
                }
                conn.as_mut().shut_down();
                closing = true;
            }
            First::Side(Watch::TooSlow) => {
                debug!(client.addr = %ctx.peer, min_rate = settings.min_rate, "transfer slower than min_rate: cut");
                settings.closed("min_rate");
                return None;
            }
            First::Side(Watch::Cut) => return None,
            First::Side(Watch::Park) => conn.as_mut().park(),
        }
    }
}

/// What ends or closes a client connection from outside its requests.
enum Watch {
    HeadTimeout,
    /// Shutdown's drain began.
    Drain,
    /// A response had to be the last, or a draining connection stayed idle.
    Close,
    Idle,
    TooSlow,
    /// Shutdown's drain time is over.
    Cut,
    /// Quiet between requests for [`PARK_AFTER`]: the connection may park.
    Park,
}

/// What a connection's [`Clock`] looks at.
struct Load<'a> {
    activity: &'a Activity,
    requests: &'a super::open::Requests,
    /// Requests waiting on their backend, and whether one did in the current window.
    waiting: &'a std::sync::atomic::AtomicUsize,
    waited: &'a std::sync::atomic::AtomicBool,
    /// Set once the first request's head has arrived.
    first: &'a std::sync::atomic::AtomicBool,
}

/// The timer of a connection's watch: the first request head's deadline, idleness and
/// `min_rate`, on one `Sleep` set to whichever comes first.
///
/// Idleness: no byte moved for `timeout` while no request waits on a backend; on
/// HTTP/2 also no request open for `timeout`, whatever frames moved. Both are looked
/// at `timeout / 4` apart, so the close comes within 1.25 x `timeout`.
///
/// `min_rate`: a request's transfer (its upload, or its response's download) moved
/// fewer than `min_rate` bytes per second over a whole window. Windows in which a
/// request waited on its backend, or no request was open, do not count.
struct Clock {
    /// The first head's deadline, until it has passed.
    head: Option<tokio::time::Instant>,
    timeout: Duration,
    /// How often idleness is looked at.
    step: Duration,
    /// Activity as last seen, and since when nothing moved.
    seen: (u64, u64),
    quiet_since: tokio::time::Instant,
    /// When idleness is looked at next.
    idle_at: tokio::time::Instant,
    /// 0: no `min_rate`; else the bytes a window must move.
    floor: u64,
    /// The current `min_rate` window: its end, the bytes moved at its start, and
    /// whether a request was open then.
    window_ends: tokio::time::Instant,
    moved_before: u64,
    open_before: bool,
    /// How long the connection must be quiet between requests to park, while it may;
    /// when to look next, and what was seen at the last look.
    park_after: Option<Duration>,
    park_at: tokio::time::Instant,
    park_seen: (u64, u64),
    open_seen: bool,
    park_quiet_since: tokio::time::Instant,
}

impl Clock {
    fn new(head: tokio::time::Instant, min_rate: u64) -> Clock {
        let now = tokio::time::Instant::now();
        Clock {
            head: Some(head),
            timeout: Duration::ZERO,
            step: Duration::ZERO,
            seen: (0, 0),
            quiet_since: now,
            idle_at: now,
            floor: min_rate.saturating_mul(config::MIN_RATE_WINDOW.as_secs()),
            window_ends: now,
            moved_before: 0,
            open_before: false,
            park_after: None,
            park_at: now,
            park_seen: (0, 0),
            open_seen: false,
            park_quiet_since: now,
        }
    }

    /// Counts idleness (for `timeout`) and the `min_rate` window from now; with
    /// `park`, fires [`Watch::Park`] once the connection has moved no byte and had no
    /// request in flight for that long (after its first request). Looked at
    /// `park / 2` apart: it fires within 1.5 x `park`.
    fn start(&mut self, timeout: Duration, park: Option<Duration>, load: &Load<'_>) {
        let now = tokio::time::Instant::now();
        self.park_after = park;
        self.park_at = now + park.unwrap_or_default() / 2;
        self.park_seen = load.activity.stirred();
        self.open_seen = true;
        self.park_quiet_since = now;
        self.timeout = timeout;
        self.step = (timeout / crate::activity::CHECKS_PER_TIMEOUT).max(Duration::from_millis(1));
        self.seen = load.activity.stirred();
        self.quiet_since = now;
        self.idle_at = now;
        if self.floor > 0 {
            self.open_window(now, load);
        }
    }

    fn open_window(&mut self, now: tokio::time::Instant, load: &Load<'_>) {
        self.moved_before = load.activity.moved();
        self.open_before = load.requests.in_flight() > 0;
        load.waited
            .store(load.waiting.load(Ordering::Relaxed) > 0, Ordering::Relaxed);
        self.window_ends = now + config::MIN_RATE_WINDOW;
    }

    /// Ready with what fired (`HeadTimeout`, `Idle` or `TooSlow`); otherwise the timer
    /// is set to the next time to look.
    fn poll(
        &mut self,
        mut timer: std::pin::Pin<&mut tokio::time::Sleep>,
        cx: &mut std::task::Context<'_>,
        load: &Load<'_>,
    ) -> std::task::Poll<Watch> {
        use std::task::Poll;
        loop {
            let now = tokio::time::Instant::now();
            if self.head.is_some_and(|at| now >= at) {
                self.head = None;
                return Poll::Ready(Watch::HeadTimeout);
            }
            if now >= self.idle_at && self.idle(now, load) {
                return Poll::Ready(Watch::Idle);
            }
            if self.floor > 0 && now >= self.window_ends {
                let moved = load.activity.moved().saturating_sub(self.moved_before);
                if self.open_before
                    && load.requests.in_flight() > 0
                    && !load.waited.load(Ordering::Relaxed)
                    && moved < self.floor
                {
                    return Poll::Ready(Watch::TooSlow);
                }
                self.open_window(now, load);
            }
            if let Some(after) = self.park_after {
                if now >= self.park_at && self.park(now, after, load) {
                    // Once: asked again only when counted afresh.
                    self.park_after = None;
                    return Poll::Ready(Watch::Park);
                }
            }
            let mut next = self.idle_at;
            if self.park_after.is_some() {
                next = next.min(self.park_at);
            }
            if let Some(head) = self.head {
                next = next.min(head);
            }
            if self.floor > 0 {
                next = next.min(self.window_ends);
            }
            if timer.deadline() != next {
                timer.as_mut().reset(next);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }

    /// Looks at quietness between requests (its time has come): true when the
    /// connection may park, otherwise sets when to look next.
    fn park(&mut self, now: tokio::time::Instant, after: Duration, load: &Load<'_>) -> bool {
        let stirred = load.activity.stirred();
        let open = load.requests.in_flight() > 0;
        // A request seen open at this look or the last one: quiet from now on at best.
        if stirred != self.park_seen || open || self.open_seen {
            self.park_seen = stirred;
            self.park_quiet_since = now;
        }
        self.open_seen = open;
        let parks_at = self.park_quiet_since + after;
        if now >= parks_at && load.first.load(Ordering::Relaxed) {
            return true;
        }
        let step = after / 2;
        self.park_at = if now >= parks_at {
            now + step
        } else {
            parks_at.min(now + step)
        };
        false
    }

    /// Looks at idleness (its time has come): true when the connection is idle,
    /// otherwise sets when to look next.
    fn idle(&mut self, now: tokio::time::Instant, load: &Load<'_>) -> bool {
        let stirred = load.activity.stirred();
        if stirred != self.seen {
            self.seen = stirred;
            self.quiet_since = self.quiet_since.max(now);
        }
        if now >= self.quiet_since + self.timeout {
            if load.waiting.load(Ordering::Relaxed) == 0 {
                return true;
            }
            // A request waits on its backend: look again one timeout later, and then
            // only after a whole timeout without a byte.
            self.quiet_since = now + self.timeout;
        }
        if load.requests.h2()
            && load.requests.in_flight() == 0
            && load.requests.quiet() >= self.timeout
        {
            return true;
        }
        self.idle_at = (self.quiet_since + self.timeout).min(now + self.step);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use tokio::time::Instant;

    struct Parts {
        activity: Activity,
        requests: Arc<super::super::open::Requests>,
        waiting: AtomicUsize,
        waited: AtomicBool,
        first: AtomicBool,
    }

    impl Parts {
        fn new() -> Parts {
            Parts {
                activity: Activity::new(),
                requests: Default::default(),
                waiting: AtomicUsize::new(0),
                waited: AtomicBool::new(false),
                first: AtomicBool::new(false),
            }
        }

        fn load(&self) -> Load<'_> {
            Load {
                activity: &self.activity,
                requests: &self.requests,
                waiting: &self.waiting,
                waited: &self.waited,
                first: &self.first,
            }
        }
    }

    /// What fires next, and when (paused time runs ahead to each deadline).
    async fn next(
        clock: &mut Clock,
        timer: std::pin::Pin<&mut tokio::time::Sleep>,
        load: &Load<'_>,
    ) -> Watch {
        let mut timer = timer;
        std::future::poll_fn(|cx| clock.poll(timer.as_mut(), cx, load)).await
    }

    #[tokio::test(start_paused = true)]
    async fn one_timer_fires_the_head_deadline_then_idleness() {
        let parts = Parts::new();
        let load = parts.load();
        let begin = Instant::now();
        let timer = tokio::time::sleep(Duration::from_secs(5));
        tokio::pin!(timer);
        let mut clock = Clock::new(timer.deadline(), 0);
        clock.start(Duration::from_secs(60), None, &load);
        let fired = next(&mut clock, timer.as_mut(), &load).await;
        assert!(matches!(fired, Watch::HeadTimeout));
        assert_eq!(begin.elapsed(), Duration::from_secs(5));
        // The head's deadline fires once; then idleness, counted afresh.
        clock.start(Duration::from_secs(10), None, &load);
        let fired = next(&mut clock, timer.as_mut(), &load).await;
        assert!(matches!(fired, Watch::Idle));
        let idle = begin.elapsed() - Duration::from_secs(5);
        assert!(idle >= Duration::from_secs(10) && idle <= Duration::from_millis(12_500));
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_and_a_request_waiting_on_its_backend_put_idleness_off() {
        let parts = Parts::new();
        let load = parts.load();
        let begin = Instant::now();
        let timer = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(timer);
        let mut clock = Clock::new(timer.deadline(), 0);
        clock.start(Duration::from_secs(10), None, &load);
        assert!(matches!(
            next(&mut clock, timer.as_mut(), &load).await,
            Watch::HeadTimeout
        ));
        clock.start(Duration::from_secs(10), None, &load);
        // Bytes at 8 s: idle no earlier than 10 s after them.
        let watch = next(&mut clock, timer.as_mut(), &load);
        tokio::pin!(watch);
        tokio::select! {
            _ = &mut watch => panic!("idle while bytes moved"),
            _ = tokio::time::sleep(Duration::from_secs(8)) => parts.activity.moved_bytes(10),
        }
        let at_bytes = begin.elapsed();
        // A request now waits on its backend: no idleness until it is answered.
        parts.waiting.store(1, Ordering::Relaxed);
        tokio::select! {
            _ = &mut watch => panic!("idle while a request waited on its backend"),
            _ = tokio::time::sleep(Duration::from_secs(30)) => parts.waiting.store(0, Ordering::Relaxed),
        }
        assert!(matches!(watch.await, Watch::Idle));
        assert!(begin.elapsed() >= at_bytes + Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_transfer_under_min_rate_is_too_slow_after_a_whole_window() {
        let parts = Parts::new();
        let load = parts.load();
        let _open = super::super::open::began(&parts.requests);
        let begin = Instant::now();
        let timer = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(timer);
        let mut clock = Clock::new(timer.deadline(), 1000);
        clock.start(Duration::from_secs(3600), None, &load);
        // Fast enough in the first window, too slow in the second.
        let floor = 1000 * config::MIN_RATE_WINDOW.as_secs() as usize;
        parts.activity.moved_bytes(floor);
        let fired = next(&mut clock, timer.as_mut(), &load).await;
        assert!(matches!(fired, Watch::TooSlow));
        assert_eq!(begin.elapsed(), config::MIN_RATE_WINDOW * 2);
    }

    #[tokio::test(start_paused = true)]
    async fn park_fires_after_a_quiet_time_between_requests_never_during_one() {
        let parts = Parts::new();
        let load = parts.load();
        let after = Duration::from_secs(1);
        let timer = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(timer);
        let mut clock = Clock::new(timer.deadline(), 0);
        clock.head = None;
        clock.start(Duration::from_secs(60), Some(after), &load);
        let ended = {
            // Before the first request: no parking (the first head has its own
            // deadline).
            let watch = next(&mut clock, timer.as_mut(), &load);
            tokio::pin!(watch);
            tokio::select! {
                _ = &mut watch => panic!("parked before the first request"),
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            // A request open for 3.2 s: no parking meanwhile; then parked once
            // quiet for 1 s.
            parts.first.store(true, Ordering::Relaxed);
            let open = super::super::open::began(&parts.requests);
            tokio::select! {
                _ = &mut watch => panic!("parked during a request"),
                _ = tokio::time::sleep(Duration::from_millis(3200)) => drop(open),
            }
            let ended = Instant::now();
            assert!(matches!(watch.await, Watch::Park));
            ended
        };
        // At least `after` past the request's end, at most `after` past the first
        // look that saw it over (looks are `after / 2` apart).
        let parked = ended.elapsed();
        assert!(parked >= after && parked <= after * 3 / 2, "{parked:?}");
        // Once per start: idleness is what fires next.
        assert!(matches!(
            next(&mut clock, timer.as_mut(), &load).await,
            Watch::Idle
        ));
    }
}
