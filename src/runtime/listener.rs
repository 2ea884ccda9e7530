//! Binding listener sockets and the accept loop shared by both engines: connection
//! limits and access rules are applied here, before an engine sees a connection.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::snapshot::Engine;
use super::Shared;
use crate::l4;

const BACKLOG: i32 = 1024;

/// Binds a listening socket. IPv6 sockets are IPv6-only, so that `0.0.0.0:p` and
/// `[::]:p` can be separate listeners.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

pub(crate) async fn accept_loop(
    socket: TcpListener,
    name: String,
    limit: Option<Arc<Semaphore>>,
    shared: Arc<Shared>,
) {
    loop {
        let accepted = tokio::select! {
            _ = shared.stop_accepting.cancelled() => break,
            r = socket.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors or memory: back off instead of spinning.
                warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(global_permit) = shared.global_limit.clone().try_acquire_owned() else {
            debug!(listener = %name, client.addr = %peer, "over global.max_connections: closed");
            continue;
        };
        let listener_permit = match &limit {
            Some(l) => match l.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    debug!(listener = %name, client.addr = %peer, "over the listener's max_connections: closed");
                    continue;
                }
            },
            None => None,
        };
        let snapshot = shared.current.load_full();
        let Some(entry) = snapshot.listener(&name) else {
            continue;
        };
        if !entry.access.admits(peer.ip()) {
            debug!(listener = %name, client.addr = %peer, "denied by the access rules: closed");
            continue;
        }
        let cut = shared.cut.clone();
        match &entry.engine {
            Engine::Tcp(settings) => {
                let settings = settings.clone();
                shared.tracker.spawn(async move {
                    let _permits = (global_permit, listener_permit);
                    l4::proxy(stream, peer, settings, cut).await;
                });
            }
        }
    }
}
