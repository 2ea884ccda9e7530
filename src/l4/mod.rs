//! The TCP engine (`protocol = "tcp"`): one accepted connection joined to a connection
//! to a picked backend, bytes copied both ways with half-close passed on, until both
//! sides are done, the connection is idle for `idle_timeout`, or shutdown cuts it.
//!
//! Accepting, connection limits and access rules happen before, in the runtime's
//! accept loop; this module sees one admitted connection at a time.

mod copy;
pub mod sni;
mod splice;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::upstream::{BackendOutcome, Lease, PickContext, Upstream};
use copy::{Copied, End};

/// What a tcp listener needs per connection, from one configuration generation.
#[derive(Debug)]
pub struct Settings {
    pub listener: String,
    pub upstream: Arc<Upstream>,
    pub idle_timeout: Duration,
    pub access_log: bool,
    /// TLS to the backends.
    pub tls: Option<crate::tls::BackendTls>,
    /// A PROXY header on each backend connection: `Some(true)` v2, `Some(false)` v1.
    pub proxy_protocol: Option<bool>,
    /// Per backend of `upstream`: connect times and connections opened.
    pub timings: Vec<crate::admin::metrics::BackendTimings>,
}

/// A tcp listener: its own upstream, and its routes by the ClientHello's server name.
pub struct Listener {
    /// For connections no route takes (and every connection without routes).
    pub default: Option<Arc<Settings>>,
    pub sni: Vec<SniRoute>,
}

pub struct SniRoute {
    pub pattern: crate::config::HostPattern,
    pub settings: Arc<Settings>,
    pub rate_limit: Option<crate::limits::Applied>,
}

impl Listener {
    /// The route for `name` (the first that matches), else the listener's own.
    pub fn route(
        &self,
        name: Option<&str>,
    ) -> Option<(&Arc<Settings>, Option<&crate::limits::Applied>)> {
        name.and_then(|n| self.sni.iter().find(|r| r.pattern.matches(n)))
            .map(|r| (&r.settings, r.rate_limit.as_ref()))
            .or_else(|| self.default.as_ref().map(|d| (d, None)))
    }
}

/// What came before the proxying: bytes already read from the client (a ClientHello
/// read for its server name), sent on first, and that name.
#[derive(Default)]
pub struct Opening {
    pub first: Vec<u8>,
    pub sni: Option<String>,
}

/// A client connection as the TCP engine gets it: a plain socket is spliced to its
/// backend, anything else (TLS) is copied through user space.
pub trait ClientStream:
    AsyncRead + AsyncWrite + crate::activity::ReadReady + Unpin + Send + 'static
{
    /// The socket itself, when nothing stands between it and the bytes.
    fn into_plain(self) -> Result<TcpStream, Self>
    where
        Self: Sized;
}

impl ClientStream for TcpStream {
    fn into_plain(self) -> Result<TcpStream, Self> {
        Ok(self)
    }
}

impl<S> ClientStream for tokio_rustls::server::TlsStream<S>
where
    S: AsyncRead + AsyncWrite + crate::activity::ReadReady + Unpin + Send + 'static,
{
    fn into_plain(self) -> Result<TcpStream, Self> {
        Err(self)
    }
}

/// Proxies one client connection to a backend of `s.upstream`. Returns when both
/// directions are finished, or the connection was idle for too long, or `cut` fires.
pub async fn proxy<S: ClientStream>(
    client: S,
    (peer, local): (SocketAddr, SocketAddr),
    client_cert: Option<Arc<str>>,
    s: Arc<Settings>,
    opening: Opening,
    cut: CancellationToken,
) {
    let started = Instant::now();
    let sni = opening.sni.as_deref();
    let Some((backend_stream, lease)) = connect(&s, peer, local, &opening.first).await else {
        warn!(
            client.addr = %peer,
            listener = %s.listener,
            upstream = %s.upstream.name,
            "no backend could be reached; closing the connection"
        );
        access_line(
            &s,
            peer,
            (client_cert.as_deref(), sni),
            None,
            &Copied::default(),
            started,
            End::NoBackend,
        );
        return;
    };
    let (copied, end) = match &s.tls {
        None => match client.into_plain() {
            Ok(client) => copy::spliced(client, backend_stream, s.idle_timeout, &cut).await,
            Err(client) => copy::both_ways(client, backend_stream, s.idle_timeout, &cut).await,
        },
        Some(tls) => {
            let connected = tokio::time::timeout(
                s.upstream.connect_timeout,
                tls.connect(backend_stream, &lease.backend().host),
            )
            .await;
            match connected {
                Ok(Ok(b)) => copy::both_ways(client, b, s.idle_timeout, &cut).await,
                failed => {
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "no TLS answer in time".to_string(),
                    };
                    warn!(client.addr = %peer, upstream = %s.upstream.name, backend.name = %lease.backend().name, error = %error, "TLS to the backend failed");
                    let mut lease = lease;
                    lease.set_outcome(BackendOutcome::Failure);
                    access_line(
                        &s,
                        peer,
                        (client_cert.as_deref(), sni),
                        Some(&lease),
                        &Copied::default(),
                        started,
                        End::NoBackend,
                    );
                    return;
                }
            }
        }
    };
    if let End::Error(e) = &end {
        debug!(client.addr = %peer, backend.addr = %lease.backend().addr, error = %e, "connection ended with an error");
    }
    let mut copied = copied;
    copied.from_client += opening.first.len() as u64;
    access_line(
        &s,
        peer,
        (client_cert.as_deref(), sni),
        Some(&lease),
        &copied,
        started,
        end,
    );
}

/// Picks and connects, moving on to another backend after a failed connect, up to
/// the upstream's `retries`.
async fn connect(
    s: &Settings,
    peer: SocketAddr,
    local: SocketAddr,
    first: &[u8],
) -> Option<(TcpStream, Lease)> {
    let header = s
        .proxy_protocol
        .map(|v2| crate::proxy_protocol::write(v2, Some((peer, local))));
    let up = &s.upstream;
    let attempts = up.attempts();
    let mut tried: Vec<usize> = Vec::new();
    for _ in 0..attempts {
        // A TCP connection has only its source address to hash, whatever `hash_key` says.
        let mut lease = up
            .acquire(&PickContext {
                client: Some(peer),
                exclude: &tried,
                hash: None,
            })
            .await
            .ok()?;
        let addr = lease.backend().addr;
        let started = Instant::now();
        let opened = async {
            let mut stream = TcpStream::connect(addr).await?;
            if let Some(h) = &header {
                tokio::io::AsyncWriteExt::write_all(&mut stream, h).await?;
            }
            if !first.is_empty() {
                tokio::io::AsyncWriteExt::write_all(&mut stream, first).await?;
            }
            Ok::<_, std::io::Error>(stream)
        };
        let err = match timeout(up.connect_timeout, opened).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                if let Some(t) = s.timings.get(lease.index()) {
                    t.connect.observe(started.elapsed().as_secs_f64());
                    t.opened.inc();
                }
                lease.record_latency(started.elapsed());
                lease.set_outcome(BackendOutcome::Success);
                return Some((stream, lease));
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", up.connect_timeout),
        };
        warn!(
            client.addr = %peer,
            listener = %s.listener,
            upstream = %up.name,
            backend.name = %lease.backend().name,
            backend.addr = %addr,
            error = %err,
            "connect to backend failed"
        );
        lease.set_outcome(BackendOutcome::Failure);
        tried.push(lease.index());
    }
    None
}

fn access_line(
    s: &Settings,
    peer: SocketAddr,
    (client_cert, sni): (Option<&str>, Option<&str>),
    lease: Option<&Lease>,
    copied: &Copied,
    started: Instant,
    end: End,
) {
    if !s.access_log {
        return;
    }
    info!(
        target: "fulcrum::access",
        client = %peer,
        listener = %s.listener,
        upstream = %s.upstream.name,
        backend = %lease.map_or("-", |l| l.backend().name.as_str()),
        bytes_in = copied.from_client,
        bytes_out = copied.to_client,
        duration_ms = started.elapsed().as_millis() as u64,
        end = %end.as_str(),
        client_cert = client_cert,
        sni = sni,
    );
}
