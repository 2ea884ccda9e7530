//! Binding listener sockets and the accept loop shared by both engines: connection
//! limits and access rules are applied here, before an engine sees a connection.
//!
//! An accept loop belongs to a configured bind address, not to a generation: each
//! accepted connection is served by whatever the current generation says that address
//! is, so a reload that keeps the address keeps the socket.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Socket};
pub(super) use socket2::{Protocol, Type};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::bind::BindKey;
use super::client_socket::ClientSocket;
use super::first_bytes::{Arrived, FirstBytes};
use super::shared::{RunningLoop, Shared};
use super::snapshot::{Engine, ListenerEntry};
use crate::config::H2c;
use crate::limits::ClientPlace;
use crate::{l4, l7, proxy_protocol};

const BACKLOG: i32 = 1024;

/// Binds a listening socket. IPv6 sockets are IPv6-only, so that `0.0.0.0:p` and
/// `[::]:p` can be separate listeners.
///
/// IP_FREEBIND lets a listener bind an address this host does not hold (yet): the
/// passive node of a failover pair keeps its listeners on the virtual address bound,
/// and they accept the moment the address arrives. For an address the host holds it
/// changes nothing.
pub(super) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::from_std(listening(addr)?)
}

/// A listening socket not registered with any scheduler yet.
fn listening(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = bound(addr, Type::STREAM, Protocol::TCP)?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// A non-blocking socket of `kind` bound to `addr` with the options every listening
/// socket has (see [`bind`]).
pub(super) fn bound(addr: SocketAddr, kind: Type, protocol: Protocol) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), kind, Some(protocol))?;
    socket.set_reuse_address(true)?;
    // A reload that turns `127.0.0.1:p` into `0.0.0.0:p` (or back) binds the new socket
    // while the old one still listens.
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
        socket.set_freebind_v6(true)?;
    } else {
        socket.set_freebind_v4(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Open-connection gauge of a listener, decremented when the connection ends.
pub(super) struct Open(pub(super) prometheus::IntGauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub(crate) async fn accept_loop(
    socket: TcpListener,
    key: BindKey,
    name: String,
    stop: CancellationToken,
    shared: Arc<Shared>,
    counted: Option<prometheus::IntCounter>,
) {
    let configured = socket.local_addr().ok();
    // A socket bound to one address gives its connections that address: no
    // `getsockname` for each of them. A wildcard socket's connections ask.
    let local = configured.filter(|a| !a.ip().is_unspecified());
    // Accepted by hand, so that connections come out unregistered (see `ClientSocket`).
    let socket = match socket.into_std().and_then(|s| {
        // SAFETY: a listener owns its descriptor, open for as long as it lives and
        // always the same one.
        unsafe { AsyncFd::register(s) }.map_err(io::Error::from)
    }) {
        Ok(s) => s,
        Err(e) => {
            warn!(addr = ?configured, error = %e, "cannot watch the listening socket: not accepting");
            return;
        }
    };
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => {
                // Removed by a reload: the socket closes for good. At shutdown it is
                // left as it is: after an upgrade the next process accepts on it.
                if !shared.stop_accepting.is_cancelled() {
                    refuse_new_handshakes(socket.get_ref());
                }
                drain_backlog(socket.get_ref(), &key, &name, &shared);
                break;
            }
            r = socket.async_io(Interest::READABLE, accept) => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors or memory: back off instead of spinning.
                warn!(addr = ?configured, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Some(c) = &counted {
            c.inc();
        }
        admit_one(ClientSocket::new(stream), peer, local, &key, &name, &shared);
    }
}

/// One connection from the queue, non-blocking: `WouldBlock` when there is none.
fn accept(socket: &std::net::TcpListener) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    // SAFETY: `try_init` gives room for any socket address and its length; accept4
    // writes at most that. On success the returned descriptor is open and ours.
    let (fd, addr) = unsafe {
        socket2::SockAddr::try_init(|storage, len| {
            let fd = libc::accept4(
                socket.as_raw_fd(),
                storage.cast(),
                len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            );
            if fd < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(fd)
            }
        })?
    };
    // SAFETY: a descriptor accept4 just returned, owned by nothing else.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    match addr.as_socket() {
        Some(peer) => Ok((stream, peer)),
        None => Err(io::Error::other("a connection without an IP address")),
    }
}

/// A listener about to close drops the SYNs that reach it from now on, so that no new
/// connection completes into its queue between the last accept and the close (which
/// would reset it). Handshakes under way still complete (their ACKs pass). A client
/// whose SYN was dropped sends it again about a second later, to whatever listens
/// then: the listener that replaced this one (a reload that moves `127.0.0.1:p` to
/// `0.0.0.0:p`), or none. A classic socket filter: for TCP it sees the TCP header,
/// whose byte 13 holds the flags.
fn refuse_new_handshakes(socket: &impl std::os::fd::AsFd) {
    use socket2::SockFilter;
    const LD_B_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
    const JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const SYN: u32 = 0x02;
    let program = [
        SockFilter::new(LD_B_ABS, 0, 0, 13),
        // SYN set: the next instruction (drop); otherwise the one after (keep).
        SockFilter::new(JSET_K, 0, 1, SYN),
        SockFilter::new(RET_K, 0, 0, 0),
        SockFilter::new(RET_K, 0, 0, u32::MAX),
    ];
    if let Err(e) = socket2::SockRef::from(socket).attach_filter(&program) {
        debug!(error = %e, "cannot filter a stopping listener's SYNs");
    }
}

/// A listener that stops (removed at reload) first takes the connections the kernel
/// already completed for it: closing it with them queued would reset them. (A reload
/// that moves `127.0.0.1:p` to `0.0.0.0:p` binds the new socket first, with
/// `SO_REUSEPORT`; new connections go to it once this one is closed.)
fn drain_backlog(socket: &std::net::TcpListener, key: &BindKey, name: &str, shared: &Arc<Shared>) {
    let mut taken = 0usize;
    while let Ok((stream, peer)) = accept(socket) {
        admit_one(ClientSocket::new(stream), peer, None, key, name, shared);
        taken += 1;
    }
    if taken > 0 {
        debug!(taken, "listener stopped: queued connections taken first");
    }
}

/// Admission (limits, access rules) and the connection's own task.
fn admit_one(
    stream: ClientSocket,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    key: &BindKey,
    listener: &str,
    shared: &Arc<Shared>,
) {
    let snapshot = shared.current.load_full();
    let generation = snapshot.generation;
    let Some(entry) = snapshot.listener_or_moved(key, listener) else {
        return;
    };
    let name = &entry.name;
    entry.metrics.accepted.inc();
    let global_max = snapshot.config.global.max_connections;
    let Some(permits) = admit(&shared.global_open, global_max, &entry.open, entry.limit) else {
        debug!(listener = %name, client.addr = %peer, "over max_connections: closed");
        if let (Engine::Http(_), None) = (&entry.engine, &entry.tls) {
            // One try, never a wait: the answer fits any socket buffer.
            let _ = stream.try_write(l7::OVERLOADED);
        }
        return;
    };
    entry.metrics.open.inc();
    let open = Open(entry.metrics.open.clone());
    let _ = stream.set_nodelay(true);
    // The address the client connected to, for PROXY headers fulcrum sends on: the
    // listening socket's when it is bound to one address. Found here, before the
    // task: kept in it once, and changed in place by a PROXY header.
    let Some(mut local) = local.or_else(|| stream.local_addr().ok()) else {
        return;
    };
    let entry = entry.clone();
    let shared_task = shared.clone();
    let key = key.clone();
    let cut = shared.cut.clone();
    let span = tracing::info_span!(
        "conn",
        listener = %entry.name,
        client.addr = %SpanAddr(peer),
        tls.sni = tracing::field::Empty,
        tls.alpn = tracing::field::Empty,
    );
    // The connection's task is built from its parts rather than in an outer `async`
    // block: such a block would keep a second copy of everything the work captures
    // for as long as the connection waits for its first bytes.
    let mut stream = stream;
    let work = async move {
        let Some((from, admitted, client)) = client(&mut stream, peer, &mut local, &entry).await
        else {
            return;
        };
        // The client's address: the TCP peer's, or the one its PROXY header gave.
        if from != peer {
            tracing::Span::current().record("client.addr", tracing::field::display(SpanAddr(from)));
        }
        let peer = from;
        let held = (permits, open, client);
        let Some(tls) = &entry.tls else {
            // A plain HTTP connection that has sent nothing holds only this small
            // future: the engine's state is built once its first bytes arrive.
            let mut protocol = l7::Protocol::Detect;
            if let Engine::Http(settings) = &entry.engine {
                // A read, not readiness: readiness can be reported before a byte is
                // there, and the engine's state would be built early. The socket
                // keeps the bytes read for the engine; they also tell HTTP/1 from
                // HTTP/2's preface.
                let arrived = FirstBytes::new(
                    &mut stream,
                    settings.header_timeout,
                    shared_task.stop_accepting.cancelled(),
                )
                .await;
                let Arrived::Bytes(_) = arrived else {
                    let reason = arrived.closed_reason();
                    debug!(reason = reason.unwrap_or("shutdown"), "no request: closed");
                    if let Some(reason) = reason {
                        settings.closed(reason);
                    }
                    return;
                };
                protocol = match settings.h2c {
                    H2c::Detect => l7::Protocol::from_first_bytes(stream.ahead()),
                    H2c::Only => l7::Protocol::Http2,
                    H2c::Off => l7::Protocol::Http1,
                };
            }
            let conn = Conn {
                generation,
                protocol,
                peer,
                local,
                client_cert: None,
                admitted,
                held,
            };
            return serve(stream, conn, &entry, &key, &shared_task).await;
        };
        // Boxed: a TLS session's state is large, and plain connections should
        // not carry room for it.
        Box::pin(async {
            let handshake = async {
                match &tls.challenge {
                    None => tls.acceptor.accept(stream).await.map(Some),
                    Some(c) => {
                        crate::tls::accept_or_challenge(
                            stream,
                            tls.acceptor.config().clone(),
                            c.clone(),
                        )
                        .await
                    }
                }
            };
            match tokio::time::timeout(tls.handshake_timeout, handshake).await {
                Ok(Ok(None)) => {
                    debug!("TLS-ALPN-01 challenge answered");
                }
                Ok(Ok(Some(s))) => {
                    tls.ok.inc();
                    {
                        let conn = s.get_ref().1;
                        let span = tracing::Span::current();
                        if let Some(sni) = conn.server_name() {
                            span.record("tls.sni", tracing::field::display(sni));
                        }
                        if let Some(alpn) = conn.alpn_protocol() {
                            span.record(
                                "tls.alpn",
                                tracing::field::display(String::from_utf8_lossy(alpn)),
                            );
                        }
                    }
                    let subject = crate::tls::client_subject(s.get_ref().1);
                    let protocol = l7::Protocol::from_alpn(s.get_ref().1.alpn_protocol());
                    serve(
                        s,
                        Conn {
                            generation,
                            protocol,
                            peer,
                            local,
                            client_cert: subject,
                            admitted,
                            held,
                        },
                        &entry,
                        &key,
                        &shared_task,
                    )
                    .await;
                }
                Ok(Err(e)) => {
                    tls.failed.inc();
                    debug!(error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    tls.failed.inc();
                    debug!("TLS handshake not finished in time: closed");
                }
            }
        })
        .await;
    };
    // Whatever the connection waits on (a handshake, a connect), the end of the drain
    // time ends it. Everything logged for the connection carries its span.
    let work = crate::side::first(work, cut.cancelled_owned());
    let work = if span.is_disabled() {
        futures_util::future::Either::Left(work)
    } else {
        futures_util::future::Either::Right(tracing::Instrument::instrument(work, span))
    };
    shared.tracker.spawn(work);
}

/// A socket address as a connection's span shows it. The span is made for every
/// connection at the default log level, and its fields are formatted as it is made:
/// an IPv4 address is written in one piece rather than through the formatting
/// machinery's calls for every octet.
struct SpanAddr(SocketAddr);

impl std::fmt::Display for SpanAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let SocketAddr::V4(a) = self.0 else {
            return self.0.fmt(f);
        };
        let mut out = Digits {
            bytes: [0; 21], // "255.255.255.255:65535"
            len: 0,
        };
        for (i, octet) in a.ip().octets().into_iter().enumerate() {
            if i > 0 {
                out.push(b'.');
            }
            out.number(u16::from(octet));
        }
        out.push(b':');
        out.number(a.port());
        let text = out.bytes.get(..out.len).unwrap_or_default();
        f.write_str(std::str::from_utf8(text).map_err(|_| std::fmt::Error)?)
    }
}

struct Digits {
    bytes: [u8; 21],
    len: usize,
}

impl Digits {
    fn push(&mut self, byte: u8) {
        if let Some(b) = self.bytes.get_mut(self.len) {
            *b = byte;
            self.len += 1;
        }
    }

    fn number(&mut self, mut n: u16) {
        let mut digits = [0u8; 5];
        let mut start = digits.len();
        while start > 0 {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for &d in &digits[start..] {
            self.push(d);
        }
    }
}

/// Who the client is, and whether it may stay: the PROXY header (when the listener
/// expects one) gives its address, and the one it connected to (`local`); then the
/// per-client connection limit, the access
/// rules and, on a tcp listener, the rate limit. `None`: the connection is closed
/// (an http client over its per-client limit gets a 503 first, when it is plain).
async fn client(
    stream: &mut ClientSocket,
    mut peer: SocketAddr,
    local: &mut SocketAddr,
    entry: &ListenerEntry,
) -> Option<(SocketAddr, bool, Option<ClientPlace>)> {
    let name = &entry.name;
    if entry.proxy_protocol {
        // Boxed: reading a PROXY header takes a buffer that connections of listeners
        // without one should not carry while they wait for their first bytes.
        let Ok(tcp) = stream.polled() else {
            return None;
        };
        let read = Box::pin(proxy_protocol::read(tcp));
        match tokio::time::timeout(entry.header_timeout, read).await {
            Ok(Ok(header)) => {
                if let (Some(source), Some(destination)) = (header.source, header.destination) {
                    peer = source;
                    *local = destination;
                }
            }
            Ok(Err(e)) => {
                entry.proxy_errors.inc();
                debug!(listener = %name, client.addr = %peer, error = %e, "PROXY header refused: closed");
                return None;
            }
            Err(_) => {
                entry.proxy_errors.inc();
                debug!(listener = %name, client.addr = %peer, "no PROXY header within header_timeout: closed");
                return None;
            }
        }
    }
    let place = match &entry.per_client {
        Some((max, counts)) => match counts.take(peer.ip(), *max) {
            Some(place) => Some(place),
            None => {
                entry.client_limited.inc();
                debug!(listener = %name, client.addr = %peer, "over max_connections_per_client: closed");
                if let (Engine::Http(_), None) = (&entry.engine, &entry.tls) {
                    let _ = stream.try_write(l7::OVERLOADED);
                }
                return None;
            }
        },
        None => None,
    };
    let admitted = entry.access.admits(peer.ip());
    if let Engine::Tcp(_) = entry.engine {
        if !admitted {
            debug!(listener = %name, client.addr = %peer, "denied by the access rules: closed");
            return None;
        }
        // Boxed, and only with a rule: a verdict (which may ask Redis) is a large
        // future that connections waiting for their first bytes should not carry.
        if entry.rate_limit.is_some()
            && Box::pin(over_limit(entry.rate_limit.as_ref(), peer, name)).await
        {
            return None;
        }
    }
    Some((peer, admitted, place))
}

/// Whether a new tcp connection from `peer` is over `rule` (counted, and logged).
async fn over_limit(
    rule: Option<&crate::limits::Applied>,
    peer: SocketAddr,
    listener: &str,
) -> bool {
    let Some(rule) = rule else { return false };
    let (octets, len) = l7::client_octets(peer.ip());
    if rule.verdict(&octets[..len]).await.allowed() {
        return false;
    }
    debug!(listener = %listener, client.addr = %peer, rule = %rule.limiter.rule.name, "over the rate limit: closed");
    true
}

/// Serves an admitted connection (after TLS, if any) with its listener's engine: an
/// HTTP connection on a task of its own, so that it no longer carries the state it
/// waited for its first bytes or its handshake in; a tcp connection within this task.
///
/// (Serving within this task, the engine's future in a heap block of its own, saves
/// the spawn, about 1,400 instructions per new connection, but the waiting task's
/// memory then lives as long as the serving: with 8,000 requests in flight at once,
/// 8.9 KiB stayed resident per connection afterwards against 5.9 KiB.)
async fn serve<S>(stream: S, conn: Conn, entry: &ListenerEntry, key: &BindKey, shared: &Arc<Shared>)
where
    S: l4::ClientStream,
{
    match &entry.engine {
        Engine::Http(settings) => {
            let work = serve_http(stream, conn, settings, key, &entry.name, shared);
            let span = tracing::Span::current();
            if span.is_disabled() {
                shared.tracker.spawn(work);
            } else {
                shared
                    .tracker
                    .spawn(tracing::Instrument::instrument(work, span));
            }
        }
        // Boxed: the task waiting for a connection's first bytes should not carry
        // room for its engine.
        Engine::Tcp(listener) => {
            Box::pin(serve_tcp(stream, conn, listener, entry, shared)).await;
        }
    }
}

/// The future that serves an admitted HTTP connection, for its own task. Not an
/// `async fn`: it holds only what the engine needs, for the connection's life. Its
/// end of drain time is watched by the engine.
fn serve_http<S>(
    stream: S,
    conn: Conn,
    settings: &Arc<l7::Settings>,
    key: &BindKey,
    name: &str,
    shared: &Arc<Shared>,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    S: l4::ClientStream,
{
    let Conn {
        generation,
        protocol,
        peer,
        local,
        client_cert,
        admitted,
        held,
    } = conn;
    let accepted = l7::Accepted {
        stream,
        protocol,
        peer,
        local,
        client_cert,
        admitted,
        permits: Arc::new(held),
    };
    let current = current_settings(shared, key, name, generation, settings);
    l7::serve_connection(
        accepted,
        settings.clone(),
        current,
        shared.stop_accepting.clone(),
        shared.cut.clone(),
        shared.tracker.clone(),
    )
}

/// A connection of a `tcp` listener: to its default upstream, or routed by the
/// server name of its ClientHello.
async fn serve_tcp<S>(
    stream: S,
    conn: Conn,
    listener: &l4::Listener,
    entry: &ListenerEntry,
    shared: &Arc<Shared>,
) where
    S: l4::ClientStream,
{
    let Conn {
        peer,
        local,
        client_cert,
        held,
        ..
    } = conn;
    let cut = shared.cut.clone();
    let _held = held;
    if listener.sni.is_empty() {
        let Some(settings) = &listener.default else {
            return;
        };
        // Boxed: the TCP engine's future is larger than the HTTP engine's.
        crate::side::boxed(|| {
            l4::proxy(
                stream,
                (peer, local),
                client_cert,
                settings.clone(),
                l4::Opening::default(),
                cut,
            )
        })
        .await;
        return;
    }
    // Routes by SNI: only on listeners without TLS, whose streams are plain.
    let Ok(mut tcp) = stream.into_plain() else {
        return;
    };
    // Boxed: waiting for a ClientHello is the rare case, and every connection's
    // future would otherwise keep room for it.
    let read =
        crate::side::boxed(|| tokio::time::timeout(entry.header_timeout, l4::sni::read(&mut tcp)));
    let (first, name) = match read.await {
        Ok(Ok(hello)) => hello,
        Ok(Err(e)) => {
            debug!(error = %e, "no ClientHello to route by: closed");
            return;
        }
        Err(_) => {
            debug!("no ClientHello within header_timeout: closed");
            return;
        }
    };
    let Some((settings, rule)) = listener.route(name.as_deref()) else {
        debug!(
            sni = name.as_deref().unwrap_or("-"),
            "no route for this server name: closed"
        );
        return;
    };
    if over_limit(rule, peer, &entry.name).await {
        return;
    }
    crate::side::boxed(|| {
        l4::proxy(
            tcp,
            (peer, local),
            client_cert,
            settings.clone(),
            l4::Opening { first, sni: name },
            cut,
        )
    })
    .await;
}

/// The settings a connection's requests are routed by: those it was accepted with
/// until a reload, then the current generation's for its listener (`None` once the
/// listener is gone).
pub(super) fn current_settings(
    shared: &Arc<Shared>,
    key: &BindKey,
    name: &str,
    generation: u64,
    accepted_with: &Arc<l7::Settings>,
) -> l7::CurrentSettings {
    let shared = shared.clone();
    let key = key.clone();
    let name = name.to_string();
    let accepted_with = accepted_with.clone();
    Arc::new(move || {
        let snapshot = shared.current.load();
        // Until a reload, the settings the connection was accepted with: no lookup
        // per request.
        if snapshot.generation == generation {
            return Some(accepted_with.clone());
        }
        match snapshot.listener_or_moved(&key, &name).map(|e| &e.engine) {
            Some(Engine::Http(s)) => Some(s.clone()),
            _ => None,
        }
    })
}

pub(super) type Places = (Place, Place);
pub(super) type Held = (Places, Open, Option<ClientPlace>);

/// An accepted connection's facts, for its engine.
struct Conn {
    /// The generation whose listener entry serves it.
    generation: u64,
    /// For the HTTP engine: what the client speaks, if known.
    protocol: l7::Protocol,
    peer: std::net::SocketAddr,
    /// The address the client connected to (as its PROXY header says, if any).
    local: std::net::SocketAddr,
    /// The subject of the verified client certificate (mTLS).
    client_cert: Option<Arc<str>>,
    admitted: bool,
    held: Held,
}

/// A place counted under a limit, given back when dropped.
pub(crate) struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Place> {
    if count.fetch_add(1, Ordering::AcqRel) >= max {
        count.fetch_sub(1, Ordering::AcqRel);
        return None;
    }
    Some(Place(count.clone()))
}

/// Takes a place under the global limit and the listener's own, or neither. The
/// limits are the current generation's; the counts outlive generations, so a reload
/// that lowers a limit applies it exactly to new connections.
pub(super) fn admit(
    global: &Arc<AtomicUsize>,
    global_max: usize,
    listener: &Arc<AtomicUsize>,
    listener_max: Option<usize>,
) -> Option<Places> {
    let g = take(global, global_max)?;
    let l = take(listener, listener_max.unwrap_or(usize::MAX))?;
    Some((g, l))
}

impl Shared {
    /// Registers a bound socket; its accept loop starts now, or at `run` when `start`
    /// is false (the server is not running yet).
    pub(super) fn add_loop(
        self: &Arc<Self>,
        key: BindKey,
        name: String,
        configured: SocketAddr,
        socket: TcpListener,
        start: bool,
    ) {
        let local = socket.local_addr().unwrap_or(configured);
        let stop = self.stop_accepting.child_token();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
        // Thread per core: a socket of its own for every other worker, in the same
        // SO_REUSEPORT group (bound to the address the first one got, for port 0).
        // Bound now, with the first: connections that arrive before the loops run
        // wait in every worker's backlog, not only in the first one's.
        let others = (1..=self.workers.len())
            .filter_map(|worker| match listening(local) {
                Ok(s) => Some((worker, s)),
                Err(e) => {
                    warn!(listener = %name, addr = %local, worker, error = %e,
                        "cannot bind this worker's socket: the other workers take its share");
                    None
                }
            })
            .collect();
        let mut entry = RunningLoop {
            listener: name,
            local,
            stop,
            task: None,
            pending: Some((socket, others)),
            fd,
            others: Vec::new(),
        };
        if start {
            self.spawn_loop(&key, &mut entry);
        }
        let mut loops = self.loops.lock().unwrap_or_else(|p| p.into_inner());
        loops.insert(key, entry);
    }

    pub(super) fn spawn_loop(self: &Arc<Self>, key: &BindKey, entry: &mut RunningLoop) {
        let Some((socket, others)) = entry.pending.take() else {
            return;
        };
        tracing::info!(listener = %entry.listener, addr = %entry.local, "listening");
        let counted = |worker: usize| {
            (!self.workers.is_empty()).then(|| {
                self.metrics
                    .worker_connections_total
                    .with_label_values(&[&worker.to_string()])
            })
        };
        entry.task = Some(tokio::spawn(accept_loop(
            socket,
            key.clone(),
            entry.listener.clone(),
            entry.stop.clone(),
            self.clone(),
            counted(0),
        )));
        for (worker, socket) in others {
            let Some(scheduler) = self.workers.get(worker - 1) else {
                continue;
            };
            let (key, name, stop, shared) = (
                key.clone(),
                entry.listener.clone(),
                entry.stop.clone(),
                self.clone(),
            );
            let counted = counted(worker);
            entry.others.push(scheduler.spawn(async move {
                // Registered with this worker's own event loop.
                match TcpListener::from_std(socket) {
                    Ok(socket) => accept_loop(socket, key, name, stop, shared, counted).await,
                    Err(e) => warn!(error = %e, "cannot register a worker's socket"),
                }
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_as_the_standard_library_writes_them() {
        for a in [
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.0.0.1:80",
            "127.0.0.1:8080",
            "192.168.100.9:10001",
            "1.20.255.0:9",
            "[::1]:443",
            "[2001:db8::7]:65535",
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            assert_eq!(SpanAddr(addr).to_string(), addr.to_string());
        }
    }

    #[tokio::test]
    async fn a_stopping_listener_takes_no_new_handshake_but_keeps_completed_ones() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Completed before the filter: still in the queue, taken after it.
        let before = tokio::net::TcpStream::connect(addr).await.unwrap();
        refuse_new_handshakes(&listener);
        let (taken, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("the queued connection is taken")
            .unwrap();
        assert_eq!(taken.peer_addr().unwrap(), before.local_addr().unwrap());
        // A new SYN is dropped: the connection does not complete (the client would
        // send it again about a second later).
        let after = tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await;
        assert!(
            after.is_err(),
            "a handshake completed on a stopping listener"
        );
        // The connection taken is a socket of its own: its data passes.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut before = before;
        before.write_all(b"x").await.unwrap();
        let mut taken = taken;
        let mut byte = [0u8; 1];
        taken.read_exact(&mut byte).await.unwrap();
        assert_eq!(&byte, b"x");
    }
}
