//! Upgrades: which a request may ask for, WebSocket over HTTP/2 (RFC 8441) turned
//! into an HTTP/1.1 upgrade, and the tunnel once the backend said 101.

use super::connection_has;
use crate::activity::{Activity, Watched};
use crate::l7::conn::ConnCtx;
use crate::l7::error::ProxyError;
use crate::l7::h1::{self};
use crate::l7::serve_h1::{OnUpgrade, Upgraded};
use crate::l7::serve_h2::H2Io;
use crate::upstream::Lease;
use http::header::{self};
use http::{HeaderValue, Method, Request, Version};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;
use tracing::debug;

/// Whether the request asks for an upgrade the route allows: HTTP/1.1, `Connection:
/// upgrade`, and every protocol `Upgrade` names among `allowed` (never `h2c`). Any
/// other `Upgrade` is dropped with the hop-by-hop fields and the request goes on as
/// a plain one (RFC 9110 7.8: a server may ignore it).
pub(crate) fn wants_upgrade<B>(req: &Request<B>, allowed: &[String]) -> bool {
    if req.version() != Version::HTTP_11 || !connection_has(req.headers(), "upgrade") {
        return false;
    }
    let mut named = req
        .headers()
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or(",").split(','))
        .map(|p| p.trim())
        .peekable();
    named.peek().is_some()
        && named.all(|p| {
            let name = p.split('/').next().unwrap_or("");
            !name.eq_ignore_ascii_case("h2c")
                && allowed
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(p) || a.eq_ignore_ascii_case(name))
        })
}

/// Marks a request rewritten from an HTTP/2 extended CONNECT: its 101 is the
/// client's 200.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FromExtendedConnect;

/// An HTTP/2 extended CONNECT for `websocket` (RFC 8441) on a route that passes
/// WebSocket, rewritten as the HTTP/1.1 upgrade a backend expects: `GET` with
/// `Connection: upgrade`, `Upgrade: websocket` and a new `Sec-WebSocket-Key`. A
/// plain CONNECT is left as it is; another protocol, or a route that does not pass
/// WebSocket, is refused.
pub(crate) fn from_extended_connect<B>(
    req: &mut Request<B>,
    allowed: &[String],
) -> Result<(), ProxyError> {
    let Some(protocol) = req.extensions().get::<crate::l7::h2::server::Protocol>() else {
        return Ok(());
    };
    if !protocol.as_bytes().eq_ignore_ascii_case(b"websocket")
        || !allowed.iter().any(|a| a.eq_ignore_ascii_case("websocket"))
    {
        return Err(ProxyError::BadRequest(
            "extended CONNECT not passed on this route",
        ));
    }
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode(fastrand::u128(..).to_le_bytes());
    *req.method_mut() = Method::GET;
    *req.version_mut() = Version::HTTP_11;
    let h = req.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::try_from(key) {
        h.insert(header::SEC_WEBSOCKET_KEY, v);
    }
    if !h.contains_key(header::SEC_WEBSOCKET_VERSION) {
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
    }
    req.extensions_mut().insert(FromExtendedConnect);
    Ok(())
}

/// The client's side of an upgrade: its HTTP/1.1 connection once the 101 is sent, or
/// the stream of an HTTP/2 extended CONNECT once its 200 is.
pub(crate) enum ClientUpgrade {
    Http1(oneshot::Receiver<Upgraded>),
    H2(oneshot::Receiver<H2Io>),
}

/// Where the client's side of a request's upgrade will come from.
pub(crate) fn client_upgrade<B>(req: &mut Request<B>) -> ClientUpgrade {
    if let Some(connect) = req.extensions_mut().remove::<H2Connect>() {
        if let Some(stream) = connect.0.lock().ok().and_then(|mut s| s.take()) {
            return ClientUpgrade::H2(stream);
        }
    }
    let connection = req
        .extensions_mut()
        .remove::<OnUpgrade>()
        .and_then(|on| on.0.lock().ok().and_then(|mut c| c.take()));
    ClientUpgrade::Http1(connection.unwrap_or_else(|| oneshot::channel().1))
}

/// Put on an HTTP/2 CONNECT by the server: how its stream reaches the tunnel. (A
/// request's extensions must be `Clone`; the stream is taken once.)
#[derive(Clone)]
pub(crate) struct H2Connect(Arc<Mutex<Option<oneshot::Receiver<H2Io>>>>);

/// The server's end of an [`H2Connect`].
pub(crate) struct Handed(oneshot::Sender<H2Io>);

impl H2Connect {
    pub(crate) fn new() -> (H2Connect, Handed) {
        let (tx, rx) = oneshot::channel();
        (H2Connect(Arc::new(Mutex::new(Some(rx)))), Handed(tx))
    }
}

impl Handed {
    /// The stream, its 200 sent, goes to the tunnel (if one still waits).
    pub(crate) fn give(self, stream: H2Io) {
        let _ = self.0.send(stream);
    }
}

/// The upgrade stage: once the backend said 101, bytes pass both ways (the backend's
/// first bytes after its head first) until either side closes, `idle` passes without
/// traffic, or shutdown's drain time is over. The tunnel holds the lease and the
/// client connection's places under the limits.
pub(super) fn tunnel(
    client_upgrade: ClientUpgrade,
    backend: h1::Stream,
    early: bytes::Bytes,
    lease: Lease,
    ctx: &Arc<ConnCtx>,
    idle: Duration,
) {
    let cut = ctx.cut.clone();
    let backend_addr = lease.backend().addr;
    let permits = ctx.permits.clone();
    ctx.tracker.spawn(async move {
        // The tunnel still counts against the connection limits.
        let _held = (lease, permits);
        match client_upgrade {
            ClientUpgrade::Http1(on) => match on.await {
                Ok(client) => pass(client, backend, early, idle, &cut).await,
                Err(_) => {
                    debug!(backend.addr = %backend_addr, "upgrade failed: no client connection")
                }
            },
            ClientUpgrade::H2(stream) => match stream.await {
                Ok(client) => pass(client, backend, early, idle, &cut).await,
                Err(_) => debug!(backend.addr = %backend_addr, "upgrade failed: no client stream"),
            },
        }
    });
}

/// Bytes both ways between an upgraded client and its backend.
async fn pass<C>(
    client: C,
    backend: h1::Stream,
    early: bytes::Bytes,
    idle: Duration,
    cut: &tokio_util::sync::CancellationToken,
) where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let activity = Arc::new(Activity::new());
    let mut c = Watched::new(client, activity.clone());
    let mut b = Watched::new(backend, activity.clone());
    // What the backend sent right after its 101 goes first.
    if !early.is_empty() && c.write_all(&early).await.is_err() {
        return;
    }
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut c, &mut b) => {}
        _ = activity.idle_for(idle) => {}
        _ = cut.cancelled() => {}
    }
}
