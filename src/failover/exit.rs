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
//!   one per address (a newer one replaces the older), and never reads more than it
//!   discards.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

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

fn is_peer(settings: &watch::Receiver<Arc<Failover>>, ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    settings
        .borrow()
        .peers
        .iter()
        .any(|p| p.ip().to_canonical() == ip)
}

/// The listening side: holds one connection per peer address until it ends.
pub async fn listen(listener: TcpListener, settings: watch::Receiver<Arc<Failover>>) {
    let mut held: HashMap<IpAddr, JoinHandle<()>> = HashMap::new();
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
        if !is_peer(&settings, ip) {
            debug!(from = %from, "failover: exit watch: connection from a stranger closed");
            continue;
        }
        keepalive(&stream);
        held.retain(|_, task| !task.is_finished());
        if let Some(older) = held.insert(ip, tokio::spawn(hold(stream))) {
            older.abort();
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
    let mut stream = None;
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
        hold(held).await;
        // Ended: is anything still listening there?
        match connect(local, peer).await {
            Ok(s) => stream = Some(s),
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

    #[tokio::test]
    async fn a_closed_connection_is_an_exit_only_when_the_port_then_refuses() {
        let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = peer.local_addr().unwrap();
        let (tx, mut exits) = mpsc::channel(4);
        let watcher = tokio::spawn(watch(
            "127.0.0.1".parse().unwrap(),
            addr,
            tx,
            Arc::new(Notify::new()),
        ));

        // The peer closes the connection but still listens: the watcher connects
        // again, and reports nothing.
        let (first, _) = tokio::time::timeout(PATIENCE, peer.accept())
            .await
            .unwrap()
            .unwrap();
        drop(first);
        let (second, _) = tokio::time::timeout(PATIENCE, peer.accept())
            .await
            .unwrap()
            .unwrap();
        assert!(exits.try_recv().is_err(), "a reset is not an exit");

        // The peer's process ends: connection closed, port refusing.
        drop(peer);
        drop(second);
        let reported = tokio::time::timeout(PATIENCE, exits.recv()).await.unwrap();
        assert_eq!(reported, Some(addr));
        watcher.abort();
    }

    #[tokio::test]
    async fn the_listener_holds_peers_only_and_one_connection_each() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = Failover {
            node: "a".into(),
            priority: 100,
            bind: addr,
            peers: vec!["127.0.0.2:8411".parse().unwrap()],
            interval: Duration::from_millis(100),
            dead_after: Duration::from_millis(350),
            preempt: true,
            detect_exit: true,
            secret: b"key".to_vec(),
            vips: Vec::new(),
            on_active: None,
            on_passive: None,
        };
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
