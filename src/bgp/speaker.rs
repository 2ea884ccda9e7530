//! The task that runs one peer's [`Session`]: the TCP connection, the framing of what
//! the peer sends, the timers, and what the session's actions mean for `/status` and
//! the metrics.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use ipnet::IpNet;
use prometheus::{IntCounterVec, IntGaugeVec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::machine::{Action, Event, Kind, Session, Settings, State};
use super::wire::{self, Family};
use crate::config::BgpPeer;

/// How long a connection to the peer may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one message may take to be written.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The metrics the speakers keep.
#[derive(Clone)]
pub struct Metrics {
    /// `fulcrum_bgp_session_up{peer}`
    pub session_up: IntGaugeVec,
    /// `fulcrum_bgp_updates_sent_total{peer,kind}`
    pub updates_sent: IntCounterVec,
    /// `fulcrum_bgp_session_transitions_total{peer,to}`
    pub transitions: IntCounterVec,
}

/// What `/status` shows of one peer.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    pub peer: BgpPeer,
    pub state: State,
    pub since: Instant,
    /// This side's address on the session: the next hop of its routes.
    pub local: Option<IpAddr>,
    pub hold_time: Duration,
    pub advertised: BTreeSet<IpNet>,
    pub last_error: Option<String>,
}

struct Connection {
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    buf: BytesMut,
}

/// Runs the session with `peer` until `stop`, announcing what `routes` holds (of the
/// peer's address family).
pub async fn run(
    peer: BgpPeer,
    settings: Settings,
    mut routes: watch::Receiver<Arc<BTreeSet<IpNet>>>,
    stop: CancellationToken,
    status: Arc<Mutex<PeerStatus>>,
    metrics: Metrics,
) {
    let name = peer.name();
    let family = settings.family;
    let mut session = Session::new(settings, Instant::now());
    let mut conn: Option<Connection> = None;
    let mut pending = session.step(
        Event::Routes(&of_family(&routes.borrow(), family)),
        Instant::now(),
    );
    metrics.session_up.with_label_values(&[&name]).set(0);
    loop {
        while !pending.is_empty() {
            let actions = std::mem::take(&mut pending);
            for action in actions {
                let more = perform(
                    &peer,
                    &name,
                    action,
                    &mut session,
                    &mut conn,
                    &stop,
                    &status,
                    &metrics,
                )
                .await;
                pending.extend(more);
            }
            set_advertised(&status, &session);
        }
        if session.state() == State::Idle && session.next_deadline().is_none() {
            // Stopped.
            return;
        }
        let deadline = session.next_deadline();
        let sleep = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        let read = async {
            match conn.as_mut() {
                Some(c) => c.read.read_buf(&mut c.buf).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => {
                pending = session.step(Event::Stop, Instant::now());
            }
            _ = sleep => {
                pending = session.step(Event::Tick, Instant::now());
            }
            changed = routes.changed() => {
                if changed.is_err() {
                    pending = session.step(Event::Stop, Instant::now());
                } else {
                    let wanted = of_family(&routes.borrow_and_update(), family);
                    pending = session.step(Event::Routes(&wanted), Instant::now());
                }
            }
            n = read => {
                pending = match n {
                    Ok(0) | Err(_) => session.step(Event::Closed, Instant::now()),
                    Ok(_) => received(&mut session, conn.as_mut()),
                };
            }
        }
    }
}

fn of_family(all: &BTreeSet<IpNet>, family: Family) -> BTreeSet<IpNet> {
    all.iter()
        .filter(|p| Family::of(p.addr()) == family)
        .copied()
        .collect()
}

fn set_advertised(status: &Mutex<PeerStatus>, session: &Session) {
    let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
    if &s.advertised != session.advertised() {
        s.advertised.clone_from(session.advertised());
    }
    s.hold_time = session.hold();
}

/// Feeds every whole message in the buffer to the session.
fn received(session: &mut Session, conn: Option<&mut Connection>) -> Vec<Action> {
    let Some(c) = conn else { return Vec::new() };
    let mut out = Vec::new();
    loop {
        match wire::frame(&c.buf) {
            Ok(None) => break,
            Ok(Some(len)) if c.buf.len() < len => break,
            Ok(Some(len)) => {
                let event = wire::decode(&c.buf[..len]);
                c.buf.advance(len);
                let now = Instant::now();
                let actions = match &event {
                    Ok(m) => session.step(Event::Received(m), now),
                    Err(n) => session.step(Event::Malformed(n.clone()), now),
                };
                let closes = actions.iter().any(|a| matches!(a, Action::Close));
                out.extend(actions);
                if closes {
                    break;
                }
            }
            Err(n) => {
                out.extend(session.step(Event::Malformed(n), Instant::now()));
                break;
            }
        }
    }
    out
}

async fn connect(peer: &BgpPeer) -> std::io::Result<TcpStream> {
    let socket = match peer.address {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(local) = peer.local_address {
        socket.bind(SocketAddr::new(local, 0))?;
    }
    let stream = tokio::time::timeout(
        CONNECT_TIMEOUT,
        socket.connect(SocketAddr::new(peer.address, peer.port)),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[allow(clippy::too_many_arguments)]
async fn perform(
    peer: &BgpPeer,
    name: &str,
    action: Action,
    session: &mut Session,
    conn: &mut Option<Connection>,
    stop: &CancellationToken,
    status: &Mutex<PeerStatus>,
    metrics: &Metrics,
) -> Vec<Action> {
    match action {
        Action::Connect => {
            let result = tokio::select! {
                r = connect(peer) => r,
                _ = stop.cancelled() => return session.step(Event::Stop, Instant::now()),
            };
            set_state(status, session.state(), None);
            match result.and_then(|s| s.local_addr().map(|l| (s, l))) {
                Ok((stream, local)) => {
                    let (read, write) = stream.into_split();
                    *conn = Some(Connection {
                        read,
                        write,
                        buf: BytesMut::with_capacity(wire::MAX_LEN),
                    });
                    let local = local.ip();
                    status.lock().unwrap_or_else(|p| p.into_inner()).local = Some(local);
                    let out = session.step(Event::Connected { local }, Instant::now());
                    set_state(status, session.state(), None);
                    out
                }
                Err(e) => {
                    let why = format!("cannot connect: {e}");
                    let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
                    if s.last_error.as_deref() != Some(why.as_str()) {
                        info!(peer = name, error = %e, "bgp: cannot connect to the peer");
                    }
                    s.last_error = Some(why);
                    drop(s);
                    session.step(Event::ConnectFailed, Instant::now())
                }
            }
        }
        Action::Send(kind, bytes) => {
            let Some(c) = conn.as_mut() else {
                return Vec::new();
            };
            let written = tokio::time::timeout(WRITE_TIMEOUT, c.write.write_all(&bytes)).await;
            if !matches!(written, Ok(Ok(()))) {
                if kind == Kind::Notification {
                    return Vec::new();
                }
                return session.step(Event::Closed, Instant::now());
            }
            let label = match kind {
                Kind::Announce => "announce",
                Kind::Withdraw => "withdraw",
                _ => {
                    if kind == Kind::Open {
                        set_state(status, session.state(), None);
                    }
                    return Vec::new();
                }
            };
            metrics.updates_sent.with_label_values(&[name, label]).inc();
            Vec::new()
        }
        Action::Close => {
            if let Some(mut c) = conn.take() {
                let _ = c.write.shutdown().await;
            }
            status.lock().unwrap_or_else(|p| p.into_inner()).local = None;
            Vec::new()
        }
        Action::Up => {
            info!(peer = name, hold = ?session.hold(), "bgp: session established");
            metrics.session_up.with_label_values(&[name]).set(1);
            metrics
                .transitions
                .with_label_values(&[name, "established"])
                .inc();
            set_state(status, State::Established, None);
            Vec::new()
        }
        Action::Down(why) => {
            let was_up = metrics.session_up.with_label_values(&[name]).get() == 1;
            if was_up {
                warn!(peer = name, reason = %why, "bgp: session down");
                metrics.session_up.with_label_values(&[name]).set(0);
                metrics.transitions.with_label_values(&[name, "down"]).inc();
            } else {
                info!(peer = name, reason = %why, "bgp: session attempt ended");
            }
            set_state(status, session.state(), Some(why));
            Vec::new()
        }
    }
}

fn set_state(status: &Mutex<PeerStatus>, state: State, error: Option<String>) {
    let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
    if s.state != state {
        s.state = state;
        s.since = Instant::now();
    }
    if error.is_some() {
        s.last_error = error;
    }
}
