//! HTTP/3's UDP side: a QUIC endpoint on each address of a listener with
//! `tls.http3 = true` (the port its TCP socket has), the accept loop that applies the
//! connection limits and access rules and asks for address validation (Retry) when
//! handshakes pile up, and the endpoints kept across reloads with the new
//! generation's certificates and settings.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::bind::{bind_keys, BindKey};
use super::listener::{admit, bound, current_settings, Open, Protocol, Type};
use super::shared::Shared;
use super::snapshot::Engine;
use crate::admin::metrics::Metrics;
use crate::config::{Config, Http3, Listener};
use crate::l7;

/// What a listener's HTTP/3 is served with, in one generation.
pub(crate) struct Quic {
    /// The listener's certificates and client-certificate rules, ALPN `h3`.
    pub config: quinn::ServerConfig,
    /// Above this many handshakes in progress, new clients are asked to prove their
    /// address first.
    pub retry_above: usize,
    /// `http3_0rtt`: early data accepted from resuming clients.
    pub zero_rtt: bool,
    pub ok: prometheus::IntCounter,
    pub failed: prometheus::IntCounter,
    pub retry: prometheus::IntCounter,
    pub refused: prometheus::IntCounter,
    pub active: prometheus::IntGauge,
}

/// Unidirectional streams a client may open: HTTP/3's control stream, QPACK's two,
/// and room for reserved (grease) ones.
const MAX_UNI_STREAMS: u32 = 8;
/// Flow-control windows: what one connection can make fulcrum hold.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 4 << 20;
const SEND_WINDOW: u64 = 4 << 20;
/// Connection attempts waiting to be accepted, and the bytes they may buffer.
const MAX_INCOMING: usize = 4096;
const INCOMING_BUFFER_TOTAL: u64 = 16 << 20;

impl Quic {
    pub(super) fn build(
        server: &Arc<rustls::ServerConfig>,
        h3: &Http3,
        l: &Listener,
        metrics: &Metrics,
    ) -> Result<Quic, String> {
        let mut tls = (**server).clone();
        tls.alpn_protocols = vec![b"h3".to_vec()];
        // 0-RTT only when asked for: a replayed request could be acted on twice (the
        // engine acts on safe methods only before the handshake is done). QUIC takes
        // early data whole or not at all.
        tls.max_early_data_size = if h3.zero_rtt { u32::MAX } else { 0 };
        if h3.zero_rtt {
            // rustls gives early data only to sessions it stores itself (stateless
            // tickets can be replayed at will); each is taken once, so the same
            // first flight replayed to this instance gets no 0-RTT.
            tls.ticketer = Arc::new(NoTickets);
            tls.session_storage = rustls::server::ServerSessionMemoryCache::new(EARLY_SESSIONS);
        }
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(tls))
            .map_err(|e| e.to_string())?;
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(l7::H3_MAX_CONCURRENT_STREAMS.into())
            .max_concurrent_uni_streams(MAX_UNI_STREAMS.into())
            .stream_receive_window(STREAM_WINDOW.into())
            .receive_window(CONNECTION_WINDOW.into())
            .send_window(SEND_WINDOW)
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(l.idle_timeout)
                    .map_err(|_| "idle_timeout is too long for QUIC".to_string())?,
            ));
        let crypto: Arc<dyn quinn::crypto::ServerConfig> = Arc::new(crypto);
        let mut config = match token_key() {
            Some(key) => quinn::ServerConfig::new(crypto, key),
            None => quinn::ServerConfig::with_crypto(crypto),
        };
        config
            .transport_config(Arc::new(transport))
            .validation_token_config(validation_tokens())
            .migration(true)
            .max_incoming(MAX_INCOMING)
            .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL);
        let result = |r: &str| {
            metrics
                .quic_handshakes_total
                .with_label_values(&[&l.name, r])
        };
        Ok(Quic {
            config,
            retry_above: h3.retry_above as usize,
            zero_rtt: h3.zero_rtt,
            ok: result("ok"),
            failed: result("failed"),
            retry: result("retry"),
            refused: result("refused"),
            active: metrics
                .quic_connections_active
                .with_label_values(&[&l.name]),
        })
    }
}

/// The key Retry and address-validation tokens are sealed with: one for the life of
/// the process, so that a token given out before a reload is still good after it.
/// `None` if the system gave no random bytes (each generation then has its own).
fn token_key() -> Option<Arc<dyn quinn::crypto::HandshakeTokenKey>> {
    static KEY: std::sync::OnceLock<Option<Arc<ring::hkdf::Prk>>> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| {
        use ring::rand::SecureRandom;
        let mut secret = [0u8; 64];
        ring::rand::SystemRandom::new().fill(&mut secret).ok()?;
        Some(Arc::new(
            ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[]).extract(&secret),
        ))
    });
    key.clone()
        .map(|k| k as Arc<dyn quinn::crypto::HandshakeTokenKey>)
}

/// Address-validation tokens given to clients (NEW_TOKEN) for their next connection:
/// two per connection, good for a day, each taken once. The log of those taken is one
/// for the process (it grows to at most 10 MiB), so a reload does not forget it.
fn validation_tokens() -> quinn::ValidationTokenConfig {
    static LOG: std::sync::OnceLock<Arc<quinn::BloomTokenLog>> = std::sync::OnceLock::new();
    let log = LOG.get_or_init(|| Arc::new(quinn::BloomTokenLog::default()));
    let mut config = quinn::ValidationTokenConfig::default();
    config
        .log(log.clone())
        .lifetime(VALIDATION_TOKEN_LIFETIME)
        .sent(2);
    config
}

const VALIDATION_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Resumable sessions kept per listener for 0-RTT.
const EARLY_SESSIONS: usize = 16384;

/// No stateless tickets (sessions are stored instead).
#[derive(Debug)]
struct NoTickets;

impl rustls::server::ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }
    fn lifetime(&self) -> u32 {
        0
    }
    fn encrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn decrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

/// A QUIC endpoint: serving, or retired (its listener no longer serves HTTP/3 there)
/// while its connections finish.
pub(super) struct QuicLoop {
    pub(super) listener: String,
    pub(super) local: SocketAddr,
    endpoint: quinn::Endpoint,
    /// Cancelled when the endpoint stops accepting: its connections get GOAWAY.
    stop: CancellationToken,
    /// `None` until the server runs.
    task: Option<JoinHandle<()>>,
    retired: bool,
    /// See [`next_term`].
    term: u64,
}

/// A UDP socket bound for a listener, not serving yet.
pub(super) struct NewQuic {
    key: BindKey,
    listener: String,
    socket: std::net::UdpSocket,
}

/// Binds a UDP socket as [`super::listener::bind`] binds TCP ones (address reuse, IPv6
/// only for IPv6, and binding addresses the host does not hold yet).
fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    bound(addr, Type::DGRAM, Protocol::UDP).map(Into::into)
}

/// The bind keys of `config`'s listeners that serve HTTP/3, with their listener.
fn wanted(config: &Config) -> Vec<(BindKey, &Listener)> {
    config
        .listeners
        .iter()
        .filter(|l| l.tls.as_ref().is_some_and(|t| t.http3.is_some()))
        .flat_map(|l| bind_keys(l).into_iter().map(move |(k, _)| (k, l)))
        .collect()
}

/// Binds the UDP sockets `config` needs that are not bound yet, each on the address
/// of its listener's TCP socket (`tcp_local`: where the socket of a bind key is).
pub(super) fn bind_new(
    shared: &Shared,
    config: &Config,
    tcp_local: &dyn Fn(&BindKey) -> Option<SocketAddr>,
) -> Result<Vec<NewQuic>, String> {
    let running: HashSet<BindKey> = shared
        .quic
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .keys()
        .cloned()
        .collect();
    let mut new = Vec::new();
    for (key, l) in wanted(config) {
        if running.contains(&key) {
            continue;
        }
        let Some(addr) = tcp_local(&key) else {
            continue;
        };
        let socket = bind_udp(addr).map_err(|e| {
            format!(
                "listener {:?}: cannot bind UDP {addr} for HTTP/3: {e}",
                l.name
            )
        })?;
        new.push(NewQuic {
            key,
            listener: l.name.clone(),
            socket,
        });
    }
    Ok(new)
}

/// Once a generation is current: every endpoint it keeps takes its new settings
/// (connections open stay as they are), the new ones start serving (now, or at
/// [`start_all`] when `start` is false), and those it no longer has stop accepting
/// (their connections finish).
pub(super) fn apply(shared: &Arc<Shared>, new: Vec<NewQuic>, start: bool) -> Result<(), String> {
    let snapshot = shared.current.load_full();
    let config = snapshot.config.clone();
    let wanted: HashMap<BindKey, String> = wanted(&config)
        .into_iter()
        .map(|(k, l)| (k, l.name.clone()))
        .collect();
    let config_for = |key: &BindKey, name: &str| {
        let entry = snapshot.listener_or_moved(key, name)?;
        entry.tls.as_ref()?.quic.as_ref().map(|q| q.config.clone())
    };
    let mut loops = shared.quic.lock().unwrap_or_else(|p| p.into_inner());
    let gone: Vec<BindKey> = loops
        .keys()
        .filter(|k| !wanted.contains_key(*k))
        .cloned()
        .collect();
    for key in gone {
        let Some(l) = loops.get_mut(&key).filter(|l| !l.retired) else {
            continue;
        };
        info!(listener = %l.listener, addr = %l.local, "HTTP/3 removed: no longer accepting on UDP, open connections drain");
        l.retired = true;
        l.stop.cancel();
        l.endpoint.set_server_config(None);
        // The socket is kept while connections are open on it (and taken up again if
        // HTTP/3 comes back on this address before they end).
        let (shared, endpoint, term) = (shared.clone(), l.endpoint.clone(), l.term);
        tokio::spawn(async move {
            endpoint.wait_idle().await;
            let mut loops = shared.quic.lock().unwrap_or_else(|p| p.into_inner());
            if loops.get(&key).is_some_and(|l| l.retired && l.term == term) {
                loops.remove(&key);
            }
        });
    }
    for (key, l) in loops.iter_mut() {
        if l.retired {
            let Some(name) = wanted.get(key) else {
                continue;
            };
            info!(listener = %name, addr = %l.local, "HTTP/3 back on a UDP socket still open");
            l.retired = false;
            l.term = next_term();
            l.stop = shared.stop_accepting.child_token();
            l.task = None;
            l.listener.clone_from(name);
            if start {
                spawn(shared, key, l);
            }
        }
        l.endpoint.set_server_config(config_for(key, &l.listener));
    }
    let mut failed = Vec::new();
    for n in new {
        let config = config_for(&n.key, &n.listener);
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            config,
            n.socket,
            Arc::new(quinn::TokioRuntime),
        )
        .and_then(|e| e.local_addr().map(|local| (e, local)));
        let (endpoint, local) = match endpoint {
            Ok(e) => e,
            Err(e) => {
                failed.push(format!("listener {:?}: QUIC endpoint: {e}", n.listener));
                continue;
            }
        };
        let mut l = QuicLoop {
            listener: n.listener,
            local,
            endpoint,
            stop: shared.stop_accepting.child_token(),
            task: None,
            retired: false,
            term: next_term(),
        };
        if start {
            spawn(shared, &n.key, &mut l);
        }
        loops.insert(n.key, l);
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}

/// Numbers each time an endpoint starts or resumes serving, so that the task that
/// removes a retired one does not remove it once it serves again.
fn next_term() -> u64 {
    static TERMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    TERMS.fetch_add(1, Ordering::Relaxed)
}

/// Starts the accept loops bound before the server ran.
pub(super) fn start_all(shared: &Arc<Shared>) {
    let mut loops = shared.quic.lock().unwrap_or_else(|p| p.into_inner());
    for (key, l) in loops.iter_mut() {
        spawn(shared, key, l);
    }
}

fn spawn(shared: &Arc<Shared>, key: &BindKey, l: &mut QuicLoop) {
    if l.task.is_some() {
        return;
    }
    info!(listener = %l.listener, addr = %l.local, "listening (HTTP/3, UDP)");
    l.task = Some(tokio::spawn(accept_loop(
        l.endpoint.clone(),
        key.clone(),
        l.listener.clone(),
        l.stop.clone(),
        shared.clone(),
    )));
}

/// The UDP addresses each listener serves HTTP/3 on.
pub(super) fn addresses(shared: &Shared) -> Vec<(String, SocketAddr)> {
    let loops = shared.quic.lock().unwrap_or_else(|p| p.into_inner());
    let mut all: Vec<(String, SocketAddr)> = loops
        .values()
        .filter(|l| !l.retired)
        .map(|l| (l.listener.clone(), l.local))
        .collect();
    all.sort();
    all
}

/// At the end of shutdown: the accept loops have stopped and every connection has
/// finished or been cut; each endpoint's closing packets go out.
pub(super) async fn close_all(shared: &Shared) {
    let loops: Vec<QuicLoop> = {
        let mut loops = shared.quic.lock().unwrap_or_else(|p| p.into_inner());
        loops.drain().map(|(_, l)| l).collect()
    };
    for l in loops {
        l.stop.cancel();
        if let Some(task) = l.task {
            let _ = task.await;
        }
        l.endpoint.close(0u32.into(), b"");
        let _ = tokio::time::timeout(Duration::from_secs(1), l.endpoint.wait_idle()).await;
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    key: BindKey,
    name: String,
    stop: CancellationToken,
    shared: Arc<Shared>,
) {
    let handshaking = Arc::new(AtomicUsize::new(0));
    let local = endpoint.local_addr().ok();
    loop {
        let incoming = tokio::select! {
            _ = stop.cancelled() => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        admit_one(incoming, &key, &name, &shared, (&handshaking, local), &stop);
    }
    // New handshakes are refused; the connections open go on. Unless the endpoint
    // serves again already (HTTP/3 removed, then back).
    let loops = shared.quic.lock().unwrap_or_else(|p| p.into_inner());
    if loops.get(&key).is_none_or(|l| l.stop.is_cancelled()) {
        endpoint.set_server_config(None);
    }
}

/// A QUIC handshake, done by `deadline`, counted.
async fn handshake(
    connecting: quinn::Connecting,
    deadline: tokio::time::Instant,
    quic: &Quic,
) -> Option<quinn::Connection> {
    match tokio::time::timeout_at(deadline, connecting).await {
        Ok(Ok(conn)) => {
            quic.ok.inc();
            Some(conn)
        }
        Ok(Err(e)) => {
            quic.failed.inc();
            debug!(error = %e, "QUIC handshake failed");
            None
        }
        Err(_) => {
            quic.failed.inc();
            debug!("QUIC handshake not finished in time: closed");
            None
        }
    }
}

/// The server name the client asked for, on the connection's span.
fn record_sni(conn: &quinn::Connection) {
    let handshake = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok());
    if let Some(sni) = handshake.as_ref().and_then(|h| h.server_name.as_ref()) {
        tracing::Span::current().record("tls.sni", tracing::field::display(sni));
    }
}

/// Handshakes in progress on one endpoint, counted while held.
struct Handshaking(Arc<AtomicUsize>);

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Address validation, limits and access rules for a new QUIC connection, then its
/// handshake and HTTP/3 in a task of its own.
fn admit_one(
    incoming: quinn::Incoming,
    key: &BindKey,
    listener: &str,
    shared: &Arc<Shared>,
    (handshaking, endpoint_local): (&Arc<AtomicUsize>, Option<SocketAddr>),
    stop: &CancellationToken,
) {
    let snapshot = shared.current.load_full();
    let generation = snapshot.generation;
    let Some(entry) = snapshot.listener_or_moved(key, listener).cloned() else {
        incoming.refuse();
        return;
    };
    let (Engine::Http(settings), Some(quic)) = (
        &entry.engine,
        entry.tls.as_ref().and_then(|t| t.quic.as_ref()),
    ) else {
        incoming.refuse();
        return;
    };
    // Before any state is kept for a client, it may have to show that it receives at
    // its address (RFC 9000 8.1): always with `http3_retry_above = 0`, else when
    // handshakes pile up (a flood of spoofed Initials).
    if !incoming.remote_address_validated()
        && handshaking.load(Ordering::Relaxed) >= quic.retry_above
    {
        quic.retry.inc();
        if let Err(e) = incoming.retry() {
            debug!(error = %e, "QUIC retry not sent");
        }
        return;
    }
    let peer = incoming.remote_address();
    entry.metrics.accepted.inc();
    let global_max = snapshot.config.global.max_connections;
    let Some(places) = admit(&shared.global_open, global_max, &entry.open, entry.limit) else {
        debug!(listener = %entry.name, client.addr = %peer, "over max_connections: QUIC connection refused");
        quic.refused.inc();
        incoming.refuse();
        return;
    };
    let client = match &entry.per_client {
        Some((max, counts)) => match counts.take(peer.ip(), *max) {
            Some(place) => Some(place),
            None => {
                entry.client_limited.inc();
                quic.refused.inc();
                debug!(listener = %entry.name, client.addr = %peer, "over max_connections_per_client: QUIC connection refused");
                incoming.refuse();
                return;
            }
        },
        None => None,
    };
    let admitted = entry.access.admits(peer.ip());
    let local_ip = incoming.local_ip();
    // Early data is acted on only from a client that has shown it receives at its
    // address (a Retry, or a token from an earlier connection): else its source
    // address, which the access rules judge, could be anyone's.
    let validated = incoming.remote_address_validated();
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            quic.failed.inc();
            debug!(client.addr = %peer, error = %e, "QUIC connection not accepted");
            return;
        }
    };
    entry.metrics.open.inc();
    let held = (places, Open(entry.metrics.open.clone()), client);
    handshaking.fetch_add(1, Ordering::Relaxed);
    let counted = Handshaking(handshaking.clone());
    let local = match (local_ip, endpoint_local) {
        (Some(ip), Some(l)) => SocketAddr::new(ip, l.port()),
        (None, Some(l)) => l,
        (_, None) => peer,
    };
    let serving = l7::Serving {
        settings: settings.clone(),
        current: current_settings(shared, key, &entry.name, generation, settings),
        cut: shared.cut.clone(),
        tracker: shared.tracker.clone(),
    };
    // GOAWAY when the endpoint stops accepting: at shutdown, or when its listener no
    // longer serves HTTP/3 there.
    let drain = stop.clone();
    let cut = shared.cut.clone();
    let span = tracing::info_span!(
        "conn",
        listener = %entry.name,
        client.addr = %peer,
        tls.sni = tracing::field::Empty,
        tls.alpn = "h3",
    );
    let timeout = entry.header_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let work = async move {
        let Some(quic) = entry.tls.as_ref().and_then(|t| t.quic.as_ref()) else {
            return;
        };
        let (conn, confirmed) = if quic.zero_rtt && validated {
            // Serving starts at once: requests sent as early data are read before
            // the handshake is done, and the engine is told which ones they are.
            match connecting.into_0rtt() {
                Ok((conn, accepted)) => {
                    let (entry, seen) = (entry.clone(), conn.clone());
                    let confirmed: l7::Confirmation = Box::pin(async move {
                        // It resolves once the handshake completes or the connection
                        // fails (its value says whether early data was taken).
                        let ok = tokio::time::timeout_at(deadline, accepted).await.is_ok()
                            && seen.close_reason().is_none();
                        drop(counted);
                        if let Some(q) = entry.tls.as_ref().and_then(|t| t.quic.as_ref()) {
                            if ok { &q.ok } else { &q.failed }.inc();
                        }
                        if ok {
                            record_sni(&seen);
                        }
                        ok
                    });
                    (conn, Some(confirmed))
                }
                Err(connecting) => match handshake(connecting, deadline, quic).await {
                    Some(conn) => {
                        drop(counted);
                        record_sni(&conn);
                        (conn, None)
                    }
                    None => return,
                },
            }
        } else {
            match handshake(connecting, deadline, quic).await {
                Some(conn) => {
                    drop(counted);
                    record_sni(&conn);
                    (conn, None)
                }
                None => return,
            }
        };
        let client_cert = conn
            .peer_identity()
            .and_then(|i| {
                i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .and_then(|chain| chain.first().and_then(crate::tls::subject));
        quic.active.inc();
        let _active = Open(quic.active.clone());
        let accepted = l7::QuicAccepted {
            conn,
            confirmed,
            peer,
            local,
            client_cert,
            admitted,
            permits: Arc::new(held),
        };
        l7::serve_quic(accepted, serving, drain).await;
    };
    shared.tracker.spawn(async move {
        let work = crate::side::first(work, cut.cancelled());
        if span.is_disabled() {
            work.await;
        } else {
            tracing::Instrument::instrument(work, span).await;
        }
    });
}
