//! What every accept loop, connection and control path of a running server shares:
//! the current generation, live backend state and pools, connection counts, the
//! listening sockets, shutdown's signals; and systemd notifications.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use super::bind::BindKey;
use super::snapshot::{Parts, Snapshot};
use crate::admin::metrics::Metrics;
use crate::bgp;
use crate::config::Config;
use crate::failover;
use crate::health;
use crate::l7::Pools;
use crate::limits;
use crate::upstream::Registry;

pub(super) struct RunningLoop {
    pub(super) listener: String,
    pub(super) local: SocketAddr,
    pub(super) stop: CancellationToken,
    /// `None` between `Server::bind` and `Server::run`: the socket waits in `pending`.
    pub(super) task: Option<JoinHandle<()>>,
    /// The socket, and with thread per core the other workers' sockets (not yet
    /// registered with their workers' event loops).
    pub(super) pending: Option<(TcpListener, Vec<(usize, std::net::TcpListener)>)>,
    /// The socket's descriptor, for an upgrade to hand over (valid while the loop
    /// runs: the task owns the socket).
    pub(super) fd: std::os::fd::RawFd,
    /// Thread per core: the accept loops of workers 1 to n-1, each on a socket of its
    /// own bound to the same address (never handed over: a new process binds its own).
    pub(super) others: Vec<JoinHandle<()>>,
}

/// What every accept loop, connection and control path shares.
pub(crate) struct Shared {
    pub current: ArcSwap<Snapshot>,
    pub registry: Registry,
    pub pools: Pools,
    pub health: health::Supervisor,
    pub metrics: Arc<Metrics>,
    /// Connections open across all listeners, against `global.max_connections`.
    pub global_open: Arc<AtomicUsize>,
    /// Connections open per listener name, across generations (limits come from the
    /// current generation; the counts from here).
    pub(super) open_by_listener: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    /// Connections per client address, per listener name, across generations.
    pub(super) clients_by_listener: Mutex<HashMap<String, Arc<limits::PerClient>>>,
    pub(super) loops: Mutex<HashMap<BindKey, RunningLoop>>,
    /// The QUIC endpoints of listeners that serve HTTP/3, by the bind they share
    /// with their TCP socket.
    pub(super) quic: Mutex<HashMap<BindKey, super::quic::QuicLoop>>,
    /// Thread per core: the schedulers of workers 1 to n-1 (empty with work stealing).
    pub(super) workers: Vec<tokio::runtime::Handle>,
    /// Every connection task, so that shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Fires when shutdown begins: the accept loops stop and drop their sockets.
    pub stop_accepting: CancellationToken,
    /// Fires when the drain time is over: open connections are cut.
    pub cut: CancellationToken,
    /// Reloads run one at a time.
    pub(super) reload_lock: tokio::sync::Mutex<()>,
    /// Stops the admin API (when a reload removes `[admin]`).
    pub(super) admin_stop: Mutex<Option<CancellationToken>>,
    pub(super) started: Instant,
    /// The failover driver's published role, once it runs.
    pub(super) failover: std::sync::OnceLock<failover::Control>,
    /// The BGP speakers, while `[bgp]` is configured.
    pub(super) bgp: Mutex<Option<bgp::Running>>,
    /// The admin API socket's descriptor, for an upgrade to hand over.
    pub(super) admin_fd: Mutex<Option<std::os::fd::RawFd>>,
    /// An upgrade is under way.
    pub(super) upgrading: std::sync::atomic::AtomicBool,
    /// Fires when a new process took the sockets over: this one drains and exits.
    pub(super) handed_over: CancellationToken,
    /// The configuration as the file says it; generations are built from it expanded
    /// with the backends' DNS records.
    pub(super) file_config: Mutex<Arc<Config>>,
    /// Backends from DNS.
    pub(super) dns: Arc<crate::dns::Dns>,
    /// Certificates from `[acme]`, kept across generations.
    pub(crate) acme: Arc<crate::acme::Manager>,
    /// TLS session ticket keys, for the life of the process.
    pub(super) tickets: Arc<crate::tls::tickets::Ticketer>,
    /// OCSP responses of the certificates with `ocsp = "auto"`.
    pub(super) stapler: Arc<crate::tls::ocsp::Stapler>,
}

impl Shared {
    /// The open-connection counters of `config`'s listeners, kept across generations.
    pub(super) fn counters_for(&self, config: &Config) -> HashMap<String, Arc<AtomicUsize>> {
        let mut open = self
            .open_by_listener
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        config
            .listeners
            .iter()
            .map(|l| {
                let c = open.entry(l.name.clone()).or_default().clone();
                (l.name.clone(), c)
            })
            .collect()
    }

    /// The per-client connection counts of `config`'s listeners that limit them.
    pub(super) fn clients_for(&self, config: &Config) -> HashMap<String, Arc<limits::PerClient>> {
        let mut all = self
            .clients_by_listener
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        config
            .listeners
            .iter()
            .filter(|l| l.max_connections_per_client.is_some())
            .map(|l| {
                let c = all.entry(l.name.clone()).or_default().clone();
                (l.name.clone(), c)
            })
            .collect()
    }

    pub(super) fn build(&self, config: Arc<Config>, generation: u64) -> Result<Snapshot, String> {
        let counters = self.counters_for(&config);
        let clients = self.clients_for(&config);
        let current = self.current.load();
        Snapshot::build(
            config,
            generation,
            &Parts {
                registry: &self.registry,
                pools: &self.pools,
                metrics: &self.metrics,
                counters: &counters,
                clients: &clients,
                cache: current.cache.as_ref(),
                limiters: &current.limiters,
                redis: current.redis.as_ref(),
                spans: current.spans.as_ref(),
                acme: &self.acme,
                tickets: &self.tickets,
                stapler: &self.stapler,
            },
        )
    }

    /// Stops the admin API; whether it was running.
    pub(super) fn stop_admin(&self) -> bool {
        let running = self
            .admin_stop
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        running.map(|stop| stop.cancel()).is_some()
    }
}

/// sd_notify, when run under systemd; a no-op otherwise.
pub(super) fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(false, states) {
            warn!(error = %e, "sd_notify failed");
        }
    }
}

/// A handle to a running server: reloads, status, drain.
#[derive(Clone)]
pub struct Handle {
    pub(super) shared: Arc<Shared>,
}
