//! The running server: one [`Snapshot`] per configuration generation, the bound
//! listeners and their accept loops, connection limits, and graceful shutdown.
//!
//! Only this module wires the others together. The engines get what one connection
//! needs from the current snapshot and never see the rest.

mod listener;
mod snapshot;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;
use crate::health;
use crate::l7::Pools;
use crate::upstream::Registry;
pub use snapshot::Snapshot;

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("listener {listener:?}: cannot bind {addr}: {source}")]
pub struct BindError {
    pub listener: String,
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// What every accept loop and connection shares.
pub(crate) struct Shared {
    pub current: ArcSwap<Snapshot>,
    pub registry: Registry,
    pub health: health::Supervisor,
    /// `global.max_connections` across all listeners.
    pub global_limit: Arc<Semaphore>,
    /// Every connection task, so that shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Fires when shutdown begins: the accept loops stop and drop their sockets.
    pub stop_accepting: CancellationToken,
    /// Fires when the drain time is over: open connections are cut.
    pub cut: CancellationToken,
}

struct Bound {
    name: String,
    socket: TcpListener,
    local: SocketAddr,
    /// The listener's own `max_connections`.
    limit: Option<Arc<Semaphore>>,
}

/// A server whose listeners are bound: start it with [`Server::run`].
pub struct Server {
    shared: Arc<Shared>,
    bound: Vec<Bound>,
}

/// How a shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections still open when `shutdown_timeout` ran out.
    pub cut: usize,
}

impl Server {
    /// Builds the first generation from `config` and binds every listener.
    pub async fn bind(config: Config) -> Result<Server, BindError> {
        let registry = Registry::new();
        let pools = Pools::new();
        let snapshot = Snapshot::build(Arc::new(config), 1, &registry, &pools);
        let mut bound = Vec::new();
        for l in &snapshot.config.listeners {
            let limit = l.max_connections.map(|n| Arc::new(Semaphore::new(n)));
            for addr in &l.bind {
                let socket = listener::bind(*addr).map_err(|source| BindError {
                    listener: l.name.clone(),
                    addr: *addr,
                    source,
                })?;
                let local = socket.local_addr().unwrap_or(*addr);
                bound.push(Bound {
                    name: l.name.clone(),
                    socket,
                    local,
                    limit: limit.clone(),
                });
            }
        }
        let shared = Arc::new(Shared {
            global_limit: Arc::new(Semaphore::new(snapshot.config.global.max_connections)),
            current: ArcSwap::from_pointee(snapshot),
            registry,
            health: health::Supervisor::new(),
            tracker: TaskTracker::new(),
            stop_accepting: CancellationToken::new(),
            cut: CancellationToken::new(),
        });
        Ok(Server { shared, bound })
    }

    /// The addresses a listener is bound to (useful with port 0).
    pub fn local_addrs(&self, listener: &str) -> Vec<SocketAddr> {
        self.bound
            .iter()
            .filter(|b| b.name == listener)
            .map(|b| b.local)
            .collect()
    }

    /// The current configuration generation.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.current.load_full()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets open connections
    /// finish for up to `global.shutdown_timeout`, and cuts the rest.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> ShutdownReport {
        let shared = self.shared;
        shared
            .health
            .sync(&shared.current.load().config, &shared.registry);
        let mut loops = tokio::task::JoinSet::new();
        for b in self.bound {
            info!(listener = %b.name, addr = %b.local, "listening");
            loops.spawn(listener::accept_loop(
                b.socket,
                b.name,
                b.limit,
                shared.clone(),
            ));
        }
        shutdown.await;

        let timeout = shared.current.load().config.global.shutdown_timeout;
        shared.stop_accepting.cancel();
        while loops.join_next().await.is_some() {}
        shared.health.stop_all();
        info!(
            open = shared.tracker.len(),
            timeout = ?timeout,
            "shutting down: listeners closed, waiting for open connections"
        );
        shared.tracker.close();
        let cut = match tokio::time::timeout(timeout, shared.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => {
                let open = shared.tracker.len();
                shared.cut.cancel();
                shared.tracker.wait().await;
                open
            }
        };
        if cut > 0 {
            warn!(cut, "shutdown timeout reached: connections cut");
        } else {
            info!("shutdown complete: every connection finished");
        }
        ShutdownReport { cut }
    }
}
