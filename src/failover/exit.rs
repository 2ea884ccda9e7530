//! The exit watch: noticing at once that a peer's process ended without resigning.
//!
//! Every node listens on its heartbeat address over TCP as well as UDP, and holds one
//! connection to each peer's. Nothing is ever sent on these connections; they exist
//! to be closed. When a peer's process ends without a resign (a crash, `kill -9`, the
//! OOM killer), its kernel closes its sockets: the connection ends, and a new one to
//! the same address is refused, since nothing listens there any more. That refusal,
//! and only that, is an exit: the driver takes the peer as gone at once, as if it had
//! resigned, instead of waiting `dead_after` for its silence.
//!
//! - A connection that breaks while the peer still listens (a middlebox reset, the
//!   peer replacing an old connection) is opened again and means nothing.
//! - A peer whose whole host stops (power, kernel, network) closes nothing: its
//!   silence decides, after `dead_after`, as before. TCP keepalive ends such a
//!   connection after about half a minute, so that the peer's return is watched anew.
//! - The listening side accepts connections only from the configured peers' addresses,
//!   as many per address as peers listed there (a newer one replaces the oldest), and
//!   never reads more than it discards.
//! - A connection the other side closes at once, again and again (a listener that
//!   holds too few for this address), is opened again at most once a
//!   `RECONNECT_EVERY`, never in a tight loop.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{SockRef, TcpKeepalive};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tracing::debug;

use crate::config::Failover;

/// How long a connection attempt may take before the peer counts as unreachable
/// (not as exited: only a refusal is an exit).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait before connecting again to a peer that was not reachable, or
/// whose exit was just reported, unless a heartbeat from it arrives first.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);
/// TCP keepalive on the idle connections: a peer host that vanished ends the
/// connection after `IDLE + INTERVAL x RETRIES`.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 4;

fn keepalive(stream: &TcpStream) {
    let ka = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    if let Err(e) = SockRef::from(stream).set_tcp_keepalive(&ka) {
        debug!(error = %e, "failover: exit watch: keepalive not set");
    }
}

/// Waits until the connection ends, discarding anything the other side sends.
async fn hold(mut stream: TcpStream) {
    let mut buf = [0u8; 64];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// How many peers are listed at `ip`: so many connections from it are held.
fn peers_at(settings: &watch::Receiver<Arc<Failover>>, ip: IpAddr) -> usize {
    let ip = ip.to_canonical();
    settings
        .borrow()
        .peers
        .iter()
        .filter(|p| p.ip().to_canonical() == ip)
        .count()
}

/// The listening side: holds, per peer address, as many connections as peers are
/// listed there, until they end.
pub async fn listen(listener: TcpListener, settings: watch::Receiver<Arc<Failover>>) {
    let mut held: HashMap<IpAddr, VecDeque<JoinHandle<()>>> = HashMap::new();
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, say: try again shortly rather than spin.
                debug!(error = %e, "failover: exit watch: accept failed");
                tokio::time::sleep(RECONNECT_EVERY).await;
                continue;
            }
        };
        let ip = from.ip().to_canonical();
        let allowed = peers_at(&settings, ip);
        if allowed == 0 {
            debug!(from = %from, "failover: exit watch: connection from a stranger closed");
            continue;
        }
        keepalive(&stream);
        held.retain(|_, tasks| {
            tasks.retain(|t| !t.is_finished());
            !tasks.is_empty()
        });
        let tasks = held.entry(ip).or_default();
        tasks.push_back(tokio::spawn(hold(stream)));
        while tasks.len() > allowed {
            if let Some(oldest) = tasks.pop_front() {
                oldest.abort();
            }
        }
    }
}

/// Opens a connection to `peer` from this node's heartbeat address (so that the peer
/// sees the address it knows), or from any when that is the wildcard.
async fn connect(local: IpAddr, peer: SocketAddr) -> io::Result<TcpStream> {
    let socket = match peer {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if !local.is_unspecified() && local.is_ipv4() == peer.is_ipv4() {
        socket.bind(SocketAddr::new(local, 0))?;
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(peer)).await {
        Ok(connected) => connected,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Waits before connecting again: [`RECONNECT_EVERY`], or less when the driver
/// nudges (a heartbeat from the peer arrived: it is up, and may be listening now).
async fn pause(nudge: &Notify) {
    tokio::select! {
        _ = tokio::time::sleep(RECONNECT_EVERY) => {}
        _ = nudge.notified() => {}
    }
}

/// The connecting side for one peer: reports `peer` on `exits` each time its
/// connection ends and a new one is refused. Runs until aborted.
pub async fn watch(
    local: IpAddr,
    peer: SocketAddr,
    exits: mpsc::Sender<SocketAddr>,
    nudge: Arc<Notify>,
) {
    let mut stream: Option<TcpStream> = None;
    loop {
        let held = match stream.take() {
            Some(s) => s,
            None => match connect(local, peer).await {
                Ok(s) => {
                    debug!(peer = %peer, "failover: exit watch: connected");
                    s
                }
                Err(e) => {
                    debug!(peer = %peer, error = %e, "failover: exit watch: peer not reachable");
                    pause(&nudge).await;
                    continue;
                }
            },
        };
        keepalive(&held);
        let since = Instant::now();
        hold(held).await;
        let brief = since.elapsed() < RECONNECT_EVERY;
        // Ended: is anything still listening there?
        match connect(local, peer).await {
            Ok(s) => {
                if brief {
                    // Closed at once by the other side: do not open and lose
                    // connections in a loop. An exit meanwhile is still seen: this
                    // connection ends, and the next one is refused.
                    tokio::time::sleep(RECONNECT_EVERY).await;
                }
                stream = Some(s);
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                if exits.send(peer).await.is_err() {
                    return;
                }
                pause(&nudge).await;
            }
            Err(e) => {
                debug!(peer = %peer, error = %e, "failover: exit watch: connection ended, peer not reachable");
                pause(&nudge).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENCE: Duration = Duration::from_secs(10);

    /// A peer's listener and a watch on it.
    async fn watched() -> (
        TcpListener,
        SocketAddr,
        mpsc::Receiver<SocketAddr>,
        JoinHandle<()>,
    ) {
        let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = peer.local_addr().unwrap();
        let (tx, exits) = mpsc::channel(4);
        let watcher = tokio::spawn(watch(
            "127.0.0.1".parse().unwrap(),
            addr,
            tx,
            Arc::new(Notify::new()),
        ));
        (peer, addr, exits, watcher)
    }

    async fn accepted(peer: &TcpListener) -> TcpStream {
        let (s, _) = tokio::time::timeout(PATIENCE, peer.accept())
            .await
            .unwrap()
            .unwrap();
        s
    }

    #[tokio::test]
    async fn a_closed_connection_is_an_exit_only_when_the_port_then_refuses() {
        let (peer, addr, mut exits, watcher) = watched().await;

        // The peer closes the connection but still listens: the watcher connects
        // again, and reports nothing.
        let first = accepted(&peer).await;
        drop(first);
        let second = accepted(&peer).await;
        assert!(exits.try_recv().is_err(), "a reset is not an exit");

        // The peer's process ends: connection closed, port refusing.
        drop(peer);
        drop(second);
        let reported = tokio::time::timeout(PATIENCE, exits.recv()).await.unwrap();
        assert_eq!(reported, Some(addr));
        watcher.abort();
    }

    #[tokio::test]
    async fn a_connection_closed_at_once_is_not_reopened_in_a_loop() {
        let (peer, _, mut exits, watcher) = watched().await;
        // Accept and close at once, four times: the watcher pauses between them
        // (the sleep guarantees a lower bound, which is all this asserts).
        let mut times = Vec::new();
        for _ in 0..4 {
            let s = accepted(&peer).await;
            times.push(Instant::now());
            drop(s);
        }
        assert!(
            times[3] - times[1] >= RECONNECT_EVERY,
            "reconnects after brief connections are paced"
        );
        assert!(exits.try_recv().is_err(), "a listening peer did not exit");
        watcher.abort();
    }

    fn settings(bind: SocketAddr, peers: &[&str]) -> Failover {
        Failover {
            node: "a".into(),
            priority: 100,
            bind,
            peers: peers.iter().map(|p| p.parse().unwrap()).collect(),
            interval: Duration::from_millis(100),
            dead_after: Duration::from_millis(350),
            preempt: true,
            detect_exit: true,
            secret: b"key".to_vec(),
            vips: Vec::new(),
            on_active: None,
            on_passive: None,
        }
    }

    async fn closed(stream: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 1];
        matches!(
            tokio::time::timeout(within, stream.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn two_peers_on_one_address_are_both_held() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = settings(addr, &["127.0.0.2:8411", "127.0.0.2:8412"]);
        let (settings_tx, settings) = watch::channel(Arc::new(config));
        let task = tokio::spawn(listen(listener, settings));
        let mut first = connect("127.0.0.2".parse().unwrap(), addr).await.unwrap();
        let mut second = connect("127.0.0.2".parse().unwrap(), addr).await.unwrap();
        let mut third = connect("127.0.0.2".parse().unwrap(), addr).await.unwrap();
        assert!(
            closed(&mut first, PATIENCE).await,
            "the oldest of three is closed"
        );
        assert!(!closed(&mut second, Duration::from_millis(200)).await);
        assert!(!closed(&mut third, Duration::from_millis(200)).await);
        task.abort();
        drop(settings_tx);
    }

    #[tokio::test]
    async fn the_listener_holds_peers_only_and_one_connection_each() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = settings(addr, &["127.0.0.2:8411"]);
        let (settings_tx, settings) = watch::channel(Arc::new(config));
        let task = tokio::spawn(listen(listener, settings));

        // 127.0.0.1 is not a peer: closed at once.
        let mut stranger = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(PATIENCE, stranger.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "a stranger's connection is closed");

        // From 127.0.0.2, a peer: held; a second one replaces the first.
        let first = connect("127.0.0.2".parse().unwrap(), addr).await.unwrap();
        let second = connect("127.0.0.2".parse().unwrap(), addr).await.unwrap();
        let mut first = first;
        let n = tokio::time::timeout(PATIENCE, first.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "the older connection of the same peer is closed");
        let still = tokio::time::timeout(Duration::from_millis(200), async {
            let mut second = second;
            second.read(&mut buf).await
        })
        .await;
        assert!(still.is_err(), "the newest connection is held");
        task.abort();
        drop(settings_tx);
    }
}
