//! The HTTP engine (`protocol = "http"`): HTTP/1.1 and HTTP/2 (h2c with prior
//! knowledge) from clients through hyper; routes; forwarding to upstreams over pooled
//! HTTP/1.1 connections; static files; upgrades; error responses; access logs.
//!
//! Accepting, connection limits and access rules happen in the runtime's accept loop;
//! a denied client still gets an HTTP answer (403) from here.

mod access;
pub mod body;
pub mod cached;
mod client;
mod compress;
mod error;
mod exchange;
mod forward;
mod h1;
mod h2;
mod headers;
pub mod host;
pub mod path;
pub mod pool;
pub mod request_body;
pub mod route;
mod settings;
mod shaping;
mod spans;
mod static_files;
mod sticky;

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::activity::{Activity, Watched};
use crate::admin::metrics::{Metrics, RequestMetrics};
use crate::config::{self, RouteTarget};
use crate::side::{self, First};
use crate::upstream::Upstream;
use body::{ClientBody, ResponseBody};
pub use error::{ProxyError, OVERLOADED};
use exchange::Exchange;
use host::RequestHost;
pub use pool::{BackendPool, Pools};
use route::{Action, RouteTable, Target};
pub use settings::Settings;
pub use static_files::StaticDir;

/// hyper refuses a smaller read buffer; headers up to this size are always allowed.
const MIN_HEADER_BUFFER: u64 = 8192;

/// HTTP/2 limits towards clients (RFC 9113 6.5.2), all set explicitly.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 128;
/// Streams a client may open and reset before fulcrum accepted them (rapid reset,
/// CVE-2023-44487): past it, the connection is closed with ENHANCE_YOUR_CALM.
pub const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams fulcrum may reset for the client's protocol errors before it closes the
/// connection (CVE-2019-9514 and kin).
pub const H2_MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// Bytes buffered per stream for sending.
pub const H2_MAX_SEND_BUFFER: usize = 400 * 1024;
pub const H2_MAX_FRAME_SIZE: u32 = 16 * 1024;
pub const H2_STREAM_WINDOW: u32 = 1024 * 1024;
pub const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;

/// An upstream as the HTTP engine uses it: the pool of each backend, by index.
#[derive(Debug)]
pub struct UpstreamTarget {
    pub upstream: Arc<Upstream>,
    pub pools: Vec<Arc<BackendPool>>,
    pub sticky: Option<sticky::StickyCookie>,
    /// TLS to the backends.
    pub tls: Option<crate::tls::BackendTls>,
    /// A PROXY header on each backend connection (`Some(true)`: v2); connections then
    /// belong to one client connection.
    pub proxy_protocol: Option<bool>,
    /// Per backend (as `pools`): response and connect times, connections opened and
    /// reused.
    pub timings: Vec<crate::admin::metrics::BackendTimings>,
    /// Whether the backends speak HTTP/2.
    pub http2: Upstream2,
}

/// `upstream.NAME.protocol` as the engine uses it, with the HTTP/2 PING interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream2 {
    /// HTTP/1.1.
    No,
    /// `h2c`, or `h2` over TLS.
    Always(Duration),
    /// `auto`: what each backend picks in ALPN, remembered until a reconnect.
    Alpn(Duration),
}

impl Upstream2 {
    /// HTTP/2 may be spoken.
    pub fn possible(self) -> bool {
        self != Upstream2::No
    }
}

impl UpstreamTarget {
    pub fn new(
        upstream: Arc<Upstream>,
        sticky: Option<&config::Sticky>,
        tls: Option<crate::tls::BackendTls>,
        pools: &Pools,
        proxy_protocol: Option<bool>,
        metrics: &Metrics,
        http2: Upstream2,
    ) -> Self {
        let timings = upstream
            .backends()
            .iter()
            .map(|b| metrics.backend_timings(&upstream.name, &b.name))
            .collect();
        let tls_id = tls.as_ref().map_or(0, crate::tls::BackendTls::fingerprint);
        let list = upstream
            .backends()
            .iter()
            .map(|b| pools.get(&upstream.name, &b.address, b.addr, tls_id))
            .collect();
        let sticky = sticky.map(|s| sticky::StickyCookie::new(s, &upstream));
        UpstreamTarget {
            upstream,
            pools: list,
            sticky,
            tls,
            proxy_protocol,
            timings,
            http2,
        }
    }
}

/// The current generation's settings of a listener (`None` once a reload removed it).
pub type CurrentSettings = Arc<dyn Fn() -> Option<Arc<Settings>> + Send + Sync>;

/// One client connection.
pub struct ConnCtx {
    /// The settings the connection was accepted with: its timeouts and limits.
    pub settings: Arc<Settings>,
    /// Each request is routed by the generation current when it arrives.
    current: CurrentSettings,
    pub peer: SocketAddr,
    /// The client's address as `X-Forwarded-For` gives it, formatted once.
    pub peer_ip: HeaderValue,
    pub client_cert: Option<Arc<str>>,
    /// False when the access rules deny the client: every request gets 403.
    pub admitted: bool,
    /// Requests whose body is sent and that wait for the backend's answer, a wait the
    /// route's `timeout` bounds: meanwhile the connection is not idle.
    waiting: AtomicUsize,
    /// Set whenever a request waits on its backend: `min_rate` does not hold a slow
    /// backend against the client.
    waited: AtomicBool,
    /// Set once the first request's head has arrived.
    first_request: AtomicBool,
    /// Requests whose response is not over yet.
    open: AtomicUsize,
    /// When the last request began or ended, in milliseconds since `born`.
    last_request_ms: AtomicU64,
    born: Instant,
    /// Set by an HTTP/2 request: then only requests count as activity, not the pings
    /// and other frames a client can send to hold a connection open.
    h2: AtomicBool,
    /// Fired when a response must be the connection's last (a malformed request, a
    /// denied client): the connection closes once it is sent.
    close: CancellationToken,
    /// Shutdown's drain began on an HTTP/1.1 connection: its next response is its last
    /// and says so (`Connection: close`).
    draining: AtomicBool,
    /// The connection's places under the connection limits, held by upgraded tunnels too.
    pub permits: Arc<dyn Send + Sync>,
    /// Fires when shutdown's drain time is over.
    pub cut: CancellationToken,
    /// Where upgraded connections are spawned, so shutdown waits for them too.
    pub tracker: TaskTracker,
    /// The address the client connected to (its PROXY header's destination, if any).
    pub local: SocketAddr,
    /// Backend connections that carry this client's PROXY header, by the shared pool
    /// of their backend: used for this connection's requests only.
    private: std::sync::Mutex<Vec<(usize, Arc<BackendPool>)>>,
    /// The connection's span (listener, client address, TLS): the parent of each
    /// request's, HTTP/2 requests (tasks of their own) included.
    span: tracing::Span,
}

/// Counts a request as waiting on its backend while held.
pub struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnCtx {
    pub fn waiting_on_backend(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        self.waited.store(true, Ordering::Relaxed);
        Waiting(&self.waiting)
    }

    /// A context for what fulcrum does on its own after a client's request (a
    /// background revalidation): the client's address and settings, none of its
    /// connection's resources (its places under the connection limits, its idle
    /// accounting).
    pub fn detached(&self) -> Arc<ConnCtx> {
        Arc::new(ConnCtx {
            settings: self.settings.clone(),
            current: self.current.clone(),
            peer: self.peer,
            peer_ip: self.peer_ip.clone(),
            client_cert: None,
            admitted: true,
            waiting: AtomicUsize::new(0),
            waited: AtomicBool::new(false),
            first_request: AtomicBool::new(true),
            open: AtomicUsize::new(0),
            last_request_ms: AtomicU64::new(0),
            born: Instant::now(),
            h2: AtomicBool::new(false),
            close: CancellationToken::new(),
            draining: AtomicBool::new(false),
            permits: Arc::new(()),
            cut: self.cut.clone(),
            tracker: self.tracker.clone(),
            local: self.local,
            private: Default::default(),
            span: tracing::Span::current(),
        })
    }

    /// The pool of `shared`'s backend that this client connection's requests use
    /// when the upstream sends PROXY headers (`v2`: version 2, else 1).
    pub fn private_pool(&self, shared: &Arc<BackendPool>, v2: bool) -> Arc<BackendPool> {
        let id = Arc::as_ptr(shared) as usize;
        let mut pools = self.private.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, p)) = pools.iter().find(|(k, _)| *k == id) {
            return p.clone();
        }
        let header = crate::proxy_protocol::write(v2, Some((self.peer, self.local)));
        let pool = Arc::new(BackendPool::private(shared, header));
        pools.push((id, pool.clone()));
        pool
    }

    fn touch(&self) {
        let ms = self.born.elapsed().as_millis().min(u128::from(u64::MAX)) as u64;
        self.last_request_ms.store(ms, Ordering::Relaxed);
    }

    fn request_began(self: &Arc<Self>) -> OpenRequest {
        self.open.fetch_add(1, Ordering::Relaxed);
        if self.h2.load(Ordering::Relaxed) {
            self.touch();
        }
        OpenRequest(self.clone())
    }
}

/// A request whose response is not over yet; its end counts as the connection's last
/// activity.
pub struct OpenRequest(Arc<ConnCtx>);

impl Drop for OpenRequest {
    fn drop(&mut self) {
        // The time of the last request matters only where requests time the
        // connection out (HTTP/2); HTTP/1.1 reads no clock here.
        if self.0.h2.load(Ordering::Relaxed) {
            self.0.touch();
        }
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The HTTP version of a connection, known before the HTTP engine reads from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    /// Not known yet: hyper reads the first bytes and decides.
    Detect,
}

/// The first bytes of every HTTP/2 connection (RFC 9113 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl Protocol {
    /// From the first bytes a client sent (at least one, at most the preface's 24).
    pub fn from_first_bytes(bytes: &[u8]) -> Protocol {
        if !H2_PREFACE.starts_with(bytes) {
            Protocol::Http1
        } else if bytes.len() == H2_PREFACE.len() {
            Protocol::Http2
        } else {
            Protocol::Detect
        }
    }

    /// From the protocol TLS negotiated (ALPN), if it did.
    pub fn from_alpn(alpn: Option<&[u8]>) -> Protocol {
        match alpn {
            Some(b"h2") => Protocol::Http2,
            Some(b"http/1.1") => Protocol::Http1,
            _ => Protocol::Detect,
        }
    }
}

/// What the runtime hands over with an accepted connection (after TLS, if any).
pub struct Accepted<S> {
    pub stream: S,
    /// What the client speaks, when its first bytes or ALPN told.
    pub protocol: Protocol,
    pub peer: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
    /// The subject of the verified client certificate (mTLS).
    pub client_cert: Option<Arc<str>>,
    /// False when the access rules deny the client.
    pub admitted: bool,
    /// Places under the connection limits, released when the connection (and any
    /// tunnel upgraded from it) ends.
    pub permits: Arc<dyn Send + Sync>,
}

/// Serves one accepted connection until it closes or shutdown ends it: `drain` closes
/// it after the requests in flight, `cut` at once.
///
/// Timeouts: the first request's head must arrive within `header_timeout` (later heads
/// on a keep-alive connection get the longer of `header_timeout` and `idle_timeout`
/// from hyper). A connection on which no byte moves for `idle_timeout`, while no
/// request waits on a backend, is closed after its responses in flight; if it is
/// still silent one `idle_timeout` later (a client that stopped reading, a stalled
/// upload), it is dropped.
pub async fn serve_connection<S>(
    accepted: Accepted<S>,
    settings: Arc<Settings>,
    current: CurrentSettings,
    drain: CancellationToken,
    cut: CancellationToken,
    tracker: TaskTracker,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
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
    let io = TokioIo::new(Watched::new(stream, activity.clone()));
    let ctx = Arc::new(ConnCtx {
        settings: settings.clone(),
        current,
        peer,
        peer_ip: client::ip_value(peer),
        client_cert,
        admitted,
        waiting: AtomicUsize::new(0),
        waited: AtomicBool::new(false),
        first_request: AtomicBool::new(false),
        open: AtomicUsize::new(0),
        last_request_ms: AtomicU64::new(0),
        born: Instant::now(),
        h2: AtomicBool::new(false),
        close: CancellationToken::new(),
        draining: AtomicBool::new(false),
        permits,
        cut: cut.clone(),
        tracker,
        local,
        private: Default::default(),
        span: tracing::Span::current(),
    });
    let service_ctx = ctx.clone();
    let service = service_fn(move |req| {
        let ctx = service_ctx.clone();
        async move { Ok::<_, Infallible>(handle(req, &ctx).await) }
    });
    let watched = Watchers {
        ctx: &ctx,
        http1: !matches!(protocol, Protocol::Http2),
        activity: &activity,
        drain: &drain,
        cut: &cut,
    };
    // Driven by hyper's own connection type when the protocol is known, so that no
    // detection layer sits between the socket and the parser. HTTP/2 and detection
    // are boxed: their state is larger than HTTP/1's, and every HTTP/1 connection
    // would otherwise carry room for it.
    match protocol {
        Protocol::Http1 => {
            let conn = settings.http1.serve_connection(io, service).with_upgrades();
            drive(conn, watched).await;
        }
        Protocol::Http2 => {
            // Each HTTP/2 request runs as a task of its own, which its future is moved
            // into: boxed, only a pointer moves.
            let boxed_ctx = ctx.clone();
            let boxed = service_fn(move |req| {
                let ctx = boxed_ctx.clone();
                Box::pin(async move { Ok::<_, Infallible>(handle(req, &ctx).await) })
            });
            drop(service);
            let conn = settings.http2.serve_connection(io, boxed);
            Box::pin(drive(conn, watched)).await;
        }
        Protocol::Detect => {
            let conn = settings.server.serve_connection_with_upgrades(io, service);
            Box::pin(drive(conn, watched)).await;
        }
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

/// A hyper connection that can be asked to finish its requests in flight and close.
trait Connection: std::future::Future<Output = Result<(), Self::Error>> {
    type Error: std::fmt::Display + HyperError;
    fn shut_down(self: std::pin::Pin<&mut Self>);
}

/// The HTTP library's error inside a connection's error, if that is what it is.
trait HyperError {
    fn hyper(&self) -> Option<&hyper::Error>;
}

impl HyperError for hyper::Error {
    fn hyper(&self) -> Option<&hyper::Error> {
        Some(self)
    }
}

impl HyperError for Box<dyn std::error::Error + Send + Sync> {
    fn hyper(&self) -> Option<&hyper::Error> {
        self.downcast_ref()
    }
}

impl<I, S> Connection for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    Self: std::future::Future<Output = hyper::Result<()>>,
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: 'static + hyper::body::Body,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
{
    type Error = hyper::Error;
    fn shut_down(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E> Connection for hyper::server::conn::http2::Connection<I, S, E>
where
    Self: std::future::Future<Output = hyper::Result<()>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming>,
    S::ResBody: 'static + hyper::body::Body,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    type Error = hyper::Error;
    fn shut_down(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E> Connection for auto::UpgradeableConnection<'_, I, S, E>
where
    Self: std::future::Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
    S: hyper::service::HttpService<Incoming>,
    S::ResBody: 'static + hyper::body::Body,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    type Error = Box<dyn std::error::Error + Send + Sync>;
    fn shut_down(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// How long a draining HTTP/1.1 keep-alive connection stays open for a request
/// already on its way (answered with `Connection: close`), at most `idle_timeout`.
pub const DRAIN_LINGER: Duration = Duration::from_secs(1);

/// Runs a connection until it ends, closing it on idleness, drain or a request's
/// say-so, and dropping it on the first head's timeout, a too slow transfer, or cut.
/// The status the HTTP library answered a request it could not parse with (it writes
/// that response itself, before any request exists).
fn parser_answer(e: &hyper::Error) -> Option<u16> {
    if !e.is_parse() {
        return None;
    }
    let text = e.to_string();
    Some(if e.is_parse_too_large() {
        if text.contains("uri") {
            414
        } else {
            431
        }
    } else if text.contains("version") {
        505
    } else {
        400
    })
}

/// A gRPC call's `grpc-timeout` (digits, then `H`, `M`, `S`, `m`, `u` or `n`).
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.as_bytes();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Whether the request is a gRPC call (`content-type: application/grpc[+proto...]`).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

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

async fn drive<C: Connection>(conn: C, w: Watchers<'_>) {
    let Watchers {
        ctx,
        http1,
        activity,
        drain,
        cut,
    } = w;
    let settings = &ctx.settings;
    let peer = ctx.peer;
    tokio::pin!(conn);
    let first_head = tokio::time::sleep(settings.header_timeout);
    tokio::pin!(first_head);
    let mut head_checked = false;
    let mut closing = false;
    // Draining an HTTP/1.1 connection: its next response closes it, or it closes once
    // idle for `linger`.
    let mut lingering = false;
    let linger = DRAIN_LINGER.min(settings.idle_timeout);
    loop {
        // What can end or close the connection besides the connection itself: polled
        // only when one of its timers or tokens fires, not on every read and write.
        let watch = async {
            tokio::select! {
                _ = &mut first_head, if !head_checked => Watch::HeadTimeout,
                _ = drain.cancelled(), if !closing && !lingering => Watch::Drain,
                _ = idle(activity, ctx, linger), if lingering && !closing => Watch::Close,
                _ = ctx.close.cancelled(), if !closing => Watch::Close,
                _ = idle(activity, ctx, settings.idle_timeout) => Watch::Idle,
                _ = too_slow(activity, ctx, settings.min_rate), if settings.min_rate > 0 => Watch::TooSlow,
                _ = cut.cancelled() => Watch::Cut,
            }
        };
        match side::first(conn.as_mut(), watch).await {
            First::Main(r) => {
                if let Err(e) = r {
                    debug!(client.addr = %peer, error = %e, "http connection ended with an error");
                    match e.hyper().and_then(parser_answer) {
                        // The HTTP library answered a request it could not parse:
                        // logged and counted like every other response.
                        Some(status) => {
                            settings.unrouted.count(status);
                            access::before_request(&settings.listener, peer, status);
                        }
                        // A connection that ended before its first request.
                        None if ctx.first_request.load(Ordering::Relaxed) => {}
                        None if e.hyper().is_some_and(hyper::Error::is_timeout) => {
                            head_timed_out(settings, peer, http1 && activity.moved() > 0)
                        }
                        None => settings.closed("client_reset"),
                    }
                }
                return;
            }
            First::Side(Watch::HeadTimeout) => {
                head_checked = true;
                if !ctx.first_request.load(Ordering::Relaxed) {
                    debug!(client.addr = %peer, "no complete request head within header_timeout: closed");
                    head_timed_out(settings, peer, http1 && activity.moved() > 0);
                    return;
                }
            }
            First::Side(Watch::Drain) if http1 && !ctx.h2.load(Ordering::Relaxed) => {
                ctx.draining.store(true, Ordering::Relaxed);
                lingering = true;
            }
            First::Side(Watch::Close | Watch::Drain) => {
                conn.as_mut().shut_down();
                closing = true;
            }
            First::Side(Watch::Idle) => {
                if closing {
                    debug!(client.addr = %peer, "still idle after closing: dropped");
                    return;
                }
                if !ctx.first_request.load(Ordering::Relaxed) {
                    settings.closed("idle");
                }
                conn.as_mut().shut_down();
                closing = true;
            }
            First::Side(Watch::TooSlow) => {
                debug!(client.addr = %peer, min_rate = settings.min_rate, "transfer slower than min_rate: cut");
                settings.closed("min_rate");
                return;
            }
            First::Side(Watch::Cut) => return,
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
}

/// Completes when a request's transfer (its upload, or its response's download) moved
/// fewer than `min_rate` bytes per second over a whole window. Windows in which a
/// request waited on its backend, or no request was open, do not count.
async fn too_slow(activity: &Activity, ctx: &ConnCtx, min_rate: u64) {
    let window = config::MIN_RATE_WINDOW;
    let floor = min_rate.saturating_mul(window.as_secs());
    loop {
        let before = activity.moved();
        let open_before = ctx.open.load(Ordering::Relaxed) > 0;
        ctx.waited
            .store(ctx.waiting.load(Ordering::Relaxed) > 0, Ordering::Relaxed);
        tokio::time::sleep(window).await;
        let moved = activity.moved().saturating_sub(before);
        if open_before
            && ctx.open.load(Ordering::Relaxed) > 0
            && !ctx.waited.load(Ordering::Relaxed)
            && moved < floor
        {
            return;
        }
    }
}

/// Completes when no byte has moved for `timeout` and no request waits on a backend;
/// on HTTP/2 also when no request has been open for `timeout`, whatever frames moved.
async fn idle(activity: &Activity, ctx: &ConnCtx, timeout: Duration) {
    let bytes = async {
        loop {
            activity.idle_for(timeout).await;
            if ctx.waiting.load(Ordering::Relaxed) == 0 {
                return;
            }
            tokio::time::sleep(timeout).await;
        }
    };
    let requests = async {
        loop {
            if !ctx.h2.load(Ordering::Relaxed) {
                tokio::time::sleep(timeout).await;
                continue;
            }
            let last = Duration::from_millis(ctx.last_request_ms.load(Ordering::Relaxed));
            let quiet = ctx.born.elapsed().saturating_sub(last);
            if ctx.open.load(Ordering::Relaxed) == 0 && quiet >= timeout {
                return;
            }
            // Open requests: look again one timeout later.
            let left = timeout.saturating_sub(quiet);
            tokio::time::sleep(if left.is_zero() { timeout } else { left }).await;
        }
    };
    tokio::select! {
        _ = bytes => {}
        _ = requests => {}
    }
}

fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut id = [0u8; 32];
    for b in id.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// One request, in a span of its own (`request.id`, `http.method`) under the
/// connection's. The span is at debug level: at info, creating and formatting one
/// per request costs about a quarter more instructions per request (callgrind,
/// keep-alive), so at the default level the request's own warnings name its
/// `request.id` themselves.
async fn handle(req: Request<Incoming>, ctx: &Arc<ConnCtx>) -> Response<ClientBody> {
    let request_id = req
        .headers()
        .get(&forward::X_REQUEST_ID)
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .cloned()
        .unwrap_or_else(new_request_id);
    let span = tracing::debug_span!(
        parent: &ctx.span,
        "request",
        request.id = %request_id.to_str().unwrap_or("-"),
        http.method = %req.method(),
    );
    if span.is_disabled() {
        handle_in(req, ctx, request_id).await
    } else {
        tracing::Instrument::instrument(handle_in(req, ctx, request_id), span).await
    }
}

async fn handle_in(
    req: Request<Incoming>,
    ctx: &Arc<ConnCtx>,
    request_id: HeaderValue,
) -> Response<ClientBody> {
    ctx.first_request.store(true, Ordering::Relaxed);
    // Only HTTP/2 connections are timed out by their requests (see `idle`).
    if req.version() == http::Version::HTTP_2 {
        ctx.h2.store(true, Ordering::Relaxed);
    }
    let open = Some(ctx.request_began());
    let settings = (ctx.current)().unwrap_or_else(|| ctx.settings.clone());
    let s = &settings;
    // The one host of the request, for routing, forwarding, the cache key and the log.
    let host = host::request_host(req.uri(), req.headers(), req.version(), s.scheme == "https");
    let client = client::Client::of(ctx.peer, &ctx.peer_ip, req.headers(), &s.trusted_proxies);
    let trace = s
        .trace_sample
        .map(|p| crate::telemetry::TraceContext::of(req.headers(), p));
    let line = s.access_log.then(|| {
        Box::new(access::Line {
            quote: s.quote_log_values,
            client: client.addr,
            client_cert: ctx.client_cert.clone(),
            listener: s.listener.clone(),
            method: req.method().clone(),
            host: match &host {
                Ok(h) => h.as_ref().map(|h| h.header().clone()),
                Err(_) => req.headers().get(header::HOST).cloned(),
            },
            uri: req.uri().clone(),
            request_id: request_id.clone(),
            body: None,
            upstream: None,
            backend: None,
            cache: None,
            upstream_connect_ms: None,
            upstream_header_ms: None,
            trace_id: trace.map(|t| t.trace_id_hex()),
            upstream_protocol: None,
            grpc_status: None,
        })
    });
    let span = spans::server(
        s,
        trace,
        &req,
        (
            &client,
            host.as_ref().ok().and_then(Option::as_ref),
            &request_id,
        ),
    );
    let mut record = access::Record {
        metrics: s.unrouted.clone(),
        status: 0,
        bytes_out: 0,
        started: Instant::now(),
        line,
        span,
    };
    let mut exchange = Exchange::default();
    // What decides compression, kept only where a route compresses.
    let asked = s
        .compression
        .as_ref()
        .map(|_| compress::Asked::of(req.method(), req.headers()));
    // A gRPC client (HTTP/2 only) gets fulcrum's errors as gRPC statuses, never an
    // error page.
    let grpc = req.version() == http::Version::HTTP_2 && is_grpc(req.headers());
    // (Over HTTP/1.1 too, a gRPC content type keeps fulcrum's plain errors.)
    let no_pages = grpc || (!s.error_pages.is_empty() && is_grpc(req.headers()));
    let result = match &host {
        Ok(h) => {
            respond(
                req,
                ctx,
                (&client, trace),
                &settings,
                &request_id,
                h.as_ref(),
                &mut exchange,
            )
            .await
        }
        Err(why) => Err(ProxyError::BadRequest(why)),
    };
    let cache_status = exchange.cache_status.take();
    let mut response = result.unwrap_or_else(|e| {
        let status = e.status();
        if status.is_server_error() {
            warn!(request.id = %request_id.to_str().unwrap_or("-"), status = status.as_u16(), source = ?e.source(), error = %e, "request failed");
        } else {
            debug!(status = status.as_u16(), error = %e, "request refused");
        }
        if grpc {
            return error::grpc(&e).map(|b| ResponseBody::Full(Some(b)));
        }
        let mut r = error::plain(status).map(|b| ResponseBody::Full(Some(b)));
        if let Some((_, content_type, page)) = s
            .error_pages
            .iter()
            .find(|(code, _, _)| *code == status)
            .filter(|_| !no_pages)
        {
            r.headers_mut()
                .insert(header::CONTENT_TYPE, content_type.clone());
            *r.body_mut() = ResponseBody::Full(Some(page.clone()));
        }
        if e.source() == error::Source::Client
            && matches!(
                status,
                StatusCode::BAD_REQUEST | StatusCode::FORBIDDEN | StatusCode::REQUEST_TIMEOUT
            )
        {
            // What follows a malformed or cut request on this connection cannot be
            // trusted, and a denied client has nothing more to ask: its last response.
            // HTTP/2 streams are independent: one bad request does not close the
            // connection of the others (and HTTP/2 has no `Connection` field).
            if !ctx.h2.load(Ordering::Relaxed) {
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                ctx.close.cancel();
            }
        }
        if let Some(v) = cache_status {
            r.headers_mut()
                .insert(crate::cache::status::CACHE_STATUS, v);
        }
        r
    });
    if let Some(cookie) = exchange.set_cookie.take() {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    if let Some(verdict) = exchange.rate_limit.take() {
        verdict.write(response.headers_mut());
    }
    if let (true, Some(asked), Some(settings)) = (exchange.compress, &asked, &s.compression) {
        if let Some(encoding) = compress::maybe(asked, settings, &mut response) {
            response = response
                .map(|b| ResponseBody::Compressed(Box::new(compress::Compressed::new(b, encoding))));
        }
    }
    // The listener's response rules, then the route's: on every response of the
    // listener, fulcrum's own answers included, after the cache (what it stores is
    // the origin's response).
    let route_rules = exchange.response_headers.take();
    let rules = [s.response_headers.as_ref(), route_rules.as_ref()];
    if rules.iter().any(Option::is_some) {
        let vars = headers::Vars {
            client_ip: &client.ip,
            request_id: &request_id,
            host: host
                .as_ref()
                .ok()
                .and_then(Option::as_ref)
                .map(RequestHost::name),
            scheme: s.scheme,
        };
        for r in rules.into_iter().flatten() {
            r.apply(response.headers_mut(), &vars);
        }
    }
    // Draining: an HTTP/1.1 connection's response is its last, and says so, so that a
    // keep-alive client sends its next request on a new connection (to whichever
    // process serves now) instead of racing the close.
    if ctx.draining.load(Ordering::Relaxed)
        && !ctx.h2.load(Ordering::Relaxed)
        && response.status() != StatusCode::SWITCHING_PROTOCOLS
    {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    record.status = response.status().as_u16();
    if let Some(span) = record.span.as_mut() {
        spans::learned(span, &exchange);
    }
    if let Some(line) = record.line.as_mut() {
        line.body = exchange.body;
        line.upstream = exchange.upstream;
        line.backend = exchange.backend;
        line.cache = exchange.cache;
        line.upstream_connect_ms = exchange.upstream_connect_ms;
        line.upstream_header_ms = exchange.upstream_header_ms;
        if line.backend.is_some() {
            line.upstream_protocol = Some(if exchange.upstream_h2 { "h2" } else { "http1" });
        }
        if grpc {
            // A trailers-only answer has it in the head; else the trailers will.
            line.grpc_status = access::grpc_status(response.headers());
        }
    }
    if let Some(m) = exchange.metrics {
        record.metrics = m;
    }
    response.map(|inner| ClientBody {
        inner,
        record: Some(record),
        _open: open,
    })
}

/// Where a CA asks for HTTP-01 tokens (RFC 8555 section 8.3).
const ACME_CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// The key authorization of a token an order here (or on an instance sharing the
/// ACME storage) waits on; 404 for any other.
fn acme_answer(challenges: &crate::acme::Challenges, token: &str) -> Response<ResponseBody> {
    match challenges.http(token) {
        Some(answer) => {
            let mut r = Response::new(ResponseBody::Full(Some(bytes::Bytes::from(answer))));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r
        }
        None => error::plain(StatusCode::NOT_FOUND).map(|b| ResponseBody::Full(Some(b))),
    }
}

async fn respond(
    mut req: Request<Incoming>,
    ctx: &Arc<ConnCtx>,
    (client, trace): (&client::Client, Option<crate::telemetry::TraceContext>),
    s: &Arc<Settings>,
    request_id: &HeaderValue,
    host: Option<&RequestHost>,
    exchange: &mut Exchange,
) -> Result<Response<ResponseBody>, ProxyError> {
    if !ctx.admitted {
        return Err(ProxyError::Denied);
    }
    // Behind trusted proxies, the access rules see the client they name too.
    if !s.trusted_proxies.is_empty() && !s.access.admits(client.addr.ip()) {
        return Err(ProxyError::Denied);
    }
    if let Some(challenges) = &s.acme_challenges {
        if let Some(token) = req.uri().path().strip_prefix(ACME_CHALLENGE_PATH) {
            return Ok(acme_answer(challenges, token));
        }
    }
    if let Some(rule) = &s.rate_limit {
        limit(rule, &req, client, exchange).await?;
    }
    if s.redirect_https {
        let Some(host) = host else {
            return Err(ProxyError::BadRequest("no host to redirect to"));
        };
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let location = HeaderValue::try_from(format!("https://{}{path}", host.name()))
            .map_err(|_| ProxyError::BadRequest("host not usable in a redirect"))?;
        let mut r =
            error::plain(StatusCode::PERMANENT_REDIRECT).map(|b| ResponseBody::Full(Some(b)));
        r.headers_mut().insert(header::LOCATION, location);
        return Ok(r);
    }
    // Routes match the path's one normal form; the backend gets it too, unless the
    // listener says otherwise.
    let normal = path::normalize(req.uri().path(), s.paths)
        .map_err(|e| ProxyError::BadRequest(e.reason()))?;
    let action = s
        .routes
        .find(
            req.method(),
            host.map(RequestHost::name),
            &normal,
            req.headers(),
        )
        .ok_or(ProxyError::NoRoute)?;
    if let Some(rule) = &action.rate_limit {
        limit(rule, &req, client, exchange).await?;
    }
    // A rewrite starts from the normal form, whatever the listener forwards.
    let rewritten = action
        .rewrite
        .as_ref()
        .and_then(|rw| match rw.apply(&normal) {
            Cow::Owned(p) => Some(p),
            Cow::Borrowed(_) => None,
        });
    let forwarded = match (rewritten, normal) {
        (Some(p), _) => Some(p),
        (None, Cow::Owned(p)) if s.forward_normalized_path => Some(p),
        _ => None,
    };
    if let Some(p) = forwarded {
        let uri = with_path(req.uri(), &p).ok_or(ProxyError::BadRequest("path not usable"))?;
        *req.uri_mut() = uri;
    }
    exchange.metrics = Some(action.metrics.clone());
    if s.spans.is_some() && trace.is_some_and(|t| t.sampled) {
        exchange.route = Some(action.strip_prefix.clone().unwrap_or_else(|| "/".into()));
    }
    exchange.response_headers = action.response_headers.clone();
    exchange.compress = action.compress;
    match &action.target {
        // The static and cached paths' large futures are boxed: the proxied request's
        // future, moved whole into hyper, does not grow by them.
        Target::Static(dir) => Ok(Box::pin(static_files::serve(
            dir,
            req.method(),
            req.uri(),
            req.headers(),
            action.strip_prefix.as_deref(),
            action.static_hidden,
        ))
        .await),
        Target::Redirect(r) => shaping::redirect(r, req.uri(), host.map(RequestHost::name))
            .ok_or(ProxyError::BadRequest("redirect target not usable")),
        Target::Upstream(t) => {
            exchange.upstream = Some(t.upstream.clone());
            if req.method() == http::Method::CONNECT && req.version() == http::Version::HTTP_2 {
                if matches!(t.http2, Upstream2::Always(_)) {
                    return Err(ProxyError::BadRequest(
                        "extended CONNECT to an HTTP/2 upstream",
                    ));
                }
                forward::from_extended_connect(&mut req, &action.upgrades)?;
            }
            let f = forward::Forwarding {
                client: client.clone(),
                trace,
                target: t,
                timeout: match t.http2 {
                    // A gRPC call's own deadline, when shorter than the route's.
                    Upstream2::Always(_) | Upstream2::Alpn(_) => grpc_timeout(req.headers())
                        .map_or(action.timeout, |d| d.min(action.timeout)),
                    Upstream2::No => action.timeout,
                },
                ctx,
                settings: s,
                request_id,
                host,
                upgrades: &action.upgrades,
                request_headers: action.request_headers.as_ref(),
            };
            match &action.cache {
                // An upgrade is a tunnel, not a response to store: it goes past the cache.
                Some(route) if !forward::wants_upgrade(&req, &action.upgrades) => {
                    Box::pin(cached::serve(req, route, f, exchange)).await
                }
                _ => forward::forward(req.map(Some), &f, exchange).await,
            }
        }
    }
}

/// Takes the request through a rate limit: `Err` when refused (the verdict, kept in
/// `exchange`, writes `Retry-After` and the `RateLimit` fields on the 429).
async fn limit(
    rule: &crate::limits::Applied,
    req: &Request<Incoming>,
    client: &client::Client,
    exchange: &mut Exchange,
) -> Result<(), ProxyError> {
    use crate::config::LimitKey;
    let ip;
    let key: &[u8] = match &rule.limiter.rule.key {
        LimitKey::ClientIp => {
            ip = client_octets(client.addr.ip());
            &ip.0[..ip.1]
        }
        LimitKey::Header(name) => req.headers().get(name).map_or(&[], |v| v.as_bytes()),
        LimitKey::Cookie(name) => cookie(req.headers(), name).unwrap_or(&[]),
        LimitKey::Route => &[],
    };
    let verdict = rule.verdict(key).await;
    if !verdict.allowed() {
        exchange.rate_limit = Some(verdict);
        return Err(ProxyError::RateLimited);
    }
    if rule.limiter.rule.headers
        && exchange
            .rate_limit
            .as_ref()
            .is_none_or(|kept| verdict.remaining() < kept.remaining())
    {
        exchange.rate_limit = Some(verdict);
    }
    Ok(())
}

/// An address as a rate-limit key: its octets (IPv4-mapped IPv6 as IPv4).
pub fn client_octets(ip: std::net::IpAddr) -> ([u8; 16], usize) {
    let mut out = [0u8; 16];
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            (out, 4)
        }
        std::net::IpAddr::V6(v6) => (v6.octets(), 16),
    }
}

/// The value of cookie `name` in the request's `Cookie` fields.
fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let (n, v) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
            (n == name.as_bytes()).then_some(&v[1..])
        })
}

/// `uri` with its path replaced (the query kept).
fn with_path(uri: &http::Uri, path: &str) -> Option<http::Uri> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse().ok()?);
    http::Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests;
