//! One client connection's state, shared by its requests: settings, peer, activity
//! accounting, drain and close signals; and what the runtime hands over with it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use http::HeaderValue;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::open::Requests;
use super::pool::BackendPool;
use super::settings::Settings;

/// The current generation's settings of a listener (`None` once a reload removed it).
pub type CurrentSettings = Arc<dyn Fn() -> Option<Arc<Settings>> + Send + Sync>;

/// One client connection.
pub struct ConnCtx {
    /// The settings the connection was accepted with: its timeouts and limits.
    pub settings: Arc<Settings>,
    /// Each request is routed by the generation current when it arrives.
    pub(super) current: CurrentSettings,
    pub peer: SocketAddr,
    /// The client's address as `X-Forwarded-For` gives it, formatted once.
    pub peer_ip: HeaderValue,
    pub client_cert: Option<Arc<str>>,
    /// False when the access rules deny the client: every request gets 403.
    pub admitted: bool,
    /// Requests whose body is sent and that wait for the backend's answer, a wait the
    /// route's `timeout` bounds: meanwhile the connection is not idle.
    pub(super) waiting: AtomicUsize,
    /// Set whenever a request waits on its backend: `min_rate` does not hold a slow
    /// backend against the client.
    pub(super) waited: AtomicBool,
    /// Set once the first request's head has arrived.
    pub(super) first_request: AtomicBool,
    /// Requests in flight and when the last began or ended: on HTTP/2 only requests
    /// count as activity, not the pings and other frames a client can send to hold a
    /// connection open.
    pub(super) requests: Requests,
    /// Fired when a response must be the connection's last (a malformed request, a
    /// denied client): the connection closes once it is sent.
    pub(super) close: Signal,
    /// Shutdown's drain began on an HTTP/1.1 connection: its next response is its last
    /// and says so (`Connection: close`).
    pub(super) draining: AtomicBool,
    /// The connection is to close: an HTTP/1.x one after the response in flight, or at
    /// once when it waits for a request.
    pub(super) shutdown: AtomicBool,
    /// Whether an HTTP/1.x connection waiting for a request is to hand its stream
    /// back, to wait on a task holding only what waiting needs: [`Park`].
    pub(super) park: std::sync::atomic::AtomicU8,
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
    pub(super) private: std::sync::Mutex<Vec<(usize, Arc<BackendPool>)>>,
    /// The connection's span (listener, client address, TLS): the parent of each
    /// request's, HTTP/2 requests (tasks of their own) included.
    pub(super) span: tracing::Span,
    /// `Alt-Svc` for HTTP/3 on this connection's port, made when first sent.
    alt_svc: std::sync::OnceLock<HeaderValue>,
}

impl super::open::Counted for ConnCtx {
    fn requests(&self) -> &Requests {
        &self.requests
    }
}

/// A one-time signal held in place (a `CancellationToken` is an allocation of its own).
#[derive(Default)]
pub(super) struct Signal {
    fired: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Signal {
    pub(super) fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Completes once the signal has fired.
    pub(super) async fn fired(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the flag is looked at: a fire in between wakes it.
            notified.as_mut().enable();
            if self.fired.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// The values of [`ConnCtx::park`].
pub(super) struct Park;

impl Park {
    /// Not asked.
    pub(super) const NO: u8 = 0;
    /// After the connection's first response: quiet from now.
    pub(super) const NOW: u8 = 1;
    /// After a quiet time of `PARK_AFTER`.
    pub(super) const QUIET: u8 = 2;
}

/// Counts a request as waiting on its backend while held.
pub struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a connection is served with, besides its own facts.
pub struct Serving {
    pub settings: Arc<Settings>,
    pub current: CurrentSettings,
    pub cut: CancellationToken,
    pub tracker: TaskTracker,
}

impl ConnCtx {
    /// A client connection's context; its span is the current one.
    pub(super) fn new(
        serving: Serving,
        (peer, local): (SocketAddr, SocketAddr),
        client_cert: Option<Arc<str>>,
        admitted: bool,
        permits: Arc<dyn Send + Sync>,
    ) -> ConnCtx {
        let Serving {
            settings,
            current,
            cut,
            tracker,
        } = serving;
        ConnCtx {
            settings,
            current,
            peer,
            peer_ip: super::client::ip_value(peer),
            client_cert,
            admitted,
            waiting: AtomicUsize::new(0),
            waited: AtomicBool::new(false),
            first_request: AtomicBool::new(false),
            requests: Default::default(),
            close: Signal::default(),
            draining: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            park: std::sync::atomic::AtomicU8::new(Park::NO),
            permits,
            cut,
            tracker,
            local,
            private: Default::default(),
            span: tracing::Span::current(),
            alt_svc: std::sync::OnceLock::new(),
        }
    }

    /// `Alt-Svc: h3=":PORT"; ma=86400` for the port the client connected to, where
    /// the listener also serves HTTP/3 (on UDP).
    pub(super) fn alt_svc(&self) -> &HeaderValue {
        self.alt_svc.get_or_init(|| {
            let v = format!("h3=\":{}\"; ma=86400", self.local.port());
            HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("clear"))
        })
    }

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
        let serving = Serving {
            settings: self.settings.clone(),
            current: self.current.clone(),
            cut: self.cut.clone(),
            tracker: self.tracker.clone(),
        };
        let ctx = ConnCtx::new(serving, (self.peer, self.local), None, true, Arc::new(()));
        ctx.first_request.store(true, Ordering::Relaxed);
        Arc::new(ctx)
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
}

/// The HTTP version of a connection, known before the HTTP engine reads from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    /// Not known yet: the engine reads the first bytes and decides.
    Detect,
}

/// The first bytes of every HTTP/2 connection (RFC 9113 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl Protocol {
    /// From the first bytes a client sent (at least one, at most the preface's 24).
    pub fn from_first_bytes(bytes: &[u8]) -> Protocol {
        // Bytes after the preface (the client's first frames) say nothing more.
        let bytes = &bytes[..bytes.len().min(H2_PREFACE.len())];
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
