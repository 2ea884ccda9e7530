//! The running server: one [`Snapshot`] per configuration generation, the bound
//! listeners and their accept loops, reloads, the admin API, connection limits,
//! systemd notifications and graceful shutdown.
//!
//! Only this module wires the others together. The engines get what one connection
//! needs from the current snapshot and never see the rest.

mod bind;
mod certificates;
mod client_socket;
mod control;
mod dns;
mod first_bytes;
mod listener;
mod peers;
mod quic;
mod reload;
mod shared;
mod snapshot;
pub mod upgrade;
mod workers;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use std::sync::atomic::AtomicUsize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin::{self, metrics::Metrics};
use crate::bgp;
use crate::config::Config;
use crate::failover;
use crate::health;
use crate::l7::Pools;
use crate::upstream::Registry;
pub(crate) use bind::{bind_keys, BindKey};
use certificates::{
    configure_certificates, publish_certificates, rotate_tickets, start_acme, watch_certificates,
};
use dns::{apply_dns_changes, effective};
use peers::{start_bgp, start_failover};
pub use shared::Handle;
use shared::{notify, RunningLoop, Shared};
pub use snapshot::Snapshot;
use workers::Workers;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("listener {listener:?}: cannot bind {addr}: {source}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Tls(String),
    #[error("cannot start the worker threads: {0}")]
    Workers(#[source] std::io::Error),
}

/// A server whose listeners are bound: start it with [`Server::run`].
pub struct Server {
    shared: Arc<Shared>,
    admin: Option<TcpListener>,
    /// The heartbeat socket, bound with the listeners; the driver starts in `run`.
    failover: Option<failover::control::Bound>,
    /// Called once the server serves (after READY=1).
    ready: Option<Box<dyn FnOnce() + Send>>,
    /// Thread per core: workers 1 to n-1.
    workers: Workers,
}

/// How a shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections still open when `shutdown_timeout` ran out.
    pub cut: usize,
}

impl Server {
    /// Builds the first generation from `config` and binds every listener (and the
    /// admin API's).
    pub async fn bind(config: Config) -> Result<Server, BindError> {
        Self::bind_inheriting(config, None).await
    }

    /// As [`Server::bind`], taking the sockets an upgrade handed over where they
    /// match a listener (the others are bound anew), and the old process's view of
    /// backend health: a backend it knew was down stays down until a check passes.
    pub async fn bind_inheriting(
        config: Config,
        mut inherited: Option<&mut upgrade::Incoming>,
    ) -> Result<Server, BindError> {
        let metrics = Arc::new(Metrics::new());
        let workers = if config.global.thread_per_core() {
            Workers::start(config.global.worker_count() - 1).map_err(BindError::Workers)?
        } else {
            Workers::none()
        };
        let acme = crate::acme::Manager::new(metrics.acme_orders_total.clone());
        let stapler = crate::tls::ocsp::Stapler::new(metrics.tls_ocsp_fetches_total.clone());
        let shared = Arc::new(Shared {
            current: ArcSwap::from_pointee(Snapshot::empty()),
            registry: Registry::new(),
            pools: Pools::new(),
            health: health::Supervisor::new(),
            metrics,
            global_open: Arc::new(AtomicUsize::new(0)),
            open_by_listener: Mutex::new(HashMap::new()),
            clients_by_listener: Mutex::new(HashMap::new()),
            loops: Mutex::new(HashMap::new()),
            quic: Mutex::new(HashMap::new()),
            workers: workers.handles().to_vec(),
            tracker: TaskTracker::new(),
            stop_accepting: CancellationToken::new(),
            cut: CancellationToken::new(),
            reload_lock: tokio::sync::Mutex::new(()),
            admin_stop: Mutex::new(None),
            started: Instant::now(),
            failover: std::sync::OnceLock::new(),
            bgp: Mutex::new(None),
            admin_fd: Mutex::new(None),
            upgrading: std::sync::atomic::AtomicBool::new(false),
            handed_over: CancellationToken::new(),
            file_config: Mutex::new(Arc::new(Config::empty())),
            dns: crate::dns::Dns::new(),
            acme,
            tickets: crate::tls::tickets::Ticketer::new(config.global.tls_ticket_rotation),
            stapler,
        });
        let config = Arc::new(config);
        for l in &config.listeners {
            for (key, addr) in bind_keys(l) {
                let socket = match inherited.as_deref_mut().and_then(|i| i.take(&key)) {
                    Some(socket) => socket,
                    None => listener::bind(addr).map_err(|source| BindError::Bind {
                        listener: l.name.clone(),
                        addr,
                        source,
                    })?,
                };
                shared.add_loop(key, l.name.clone(), addr, socket, false);
            }
        }
        let admin = match &config.admin {
            Some(a) => match inherited.as_deref_mut().and_then(|i| i.take_admin(a.bind)) {
                Some(socket) => Some(socket),
                None => Some(listener::bind(a.bind).map_err(|source| BindError::Bind {
                    listener: "admin".into(),
                    addr: a.bind,
                    source,
                })?),
            },
            None => None,
        };
        let failover = match &config.failover {
            Some(f) => Some(
                failover::control::bind(f).map_err(|source| BindError::Bind {
                    listener: "failover".into(),
                    addr: f.bind,
                    source,
                })?,
            ),
            None => None,
        };
        if crate::dns::wanted(&config) {
            shared.dns.lookup_now(&config).await;
        }
        *shared.file_config.lock().unwrap_or_else(|p| p.into_inner()) = config.clone();
        let config = effective(&shared, &config);
        let snapshot = shared.build(config, 1).map_err(BindError::Tls)?;
        shared.metrics.config_generation.set(1);
        let udp = {
            let loops = shared.loops.lock().unwrap_or_else(|p| p.into_inner());
            quic::bind_new(&shared, &snapshot.config, &|k| {
                loops.get(k).map(|l| l.local)
            })
            .map_err(BindError::Tls)?
        };
        if let Some(i) = inherited.as_deref() {
            for b in i.backends() {
                let Some(up) = config_upstream(&snapshot, &b.upstream) else {
                    continue;
                };
                if !up.backends.iter().any(|x| x.address == b.address) {
                    continue;
                }
                let state = shared.registry.state(&b.upstream, &b.address);
                // Down stays down only where checks can bring it back.
                if up.health.is_some() && !b.healthy {
                    state.set_healthy(false);
                }
                state.set_draining(b.draining);
            }
        }
        shared.current.store(Arc::new(snapshot));
        quic::apply(&shared, udp, false).map_err(BindError::Tls)?;
        configure_certificates(&shared);
        publish_certificates(&shared, &shared.current.load().config);
        Ok(Server {
            shared,
            admin,
            failover,
            ready: None,
            workers,
        })
    }

    /// Calls `f` once the server serves: its accept loops run and READY=1 was sent.
    pub fn when_ready(mut self, f: impl FnOnce() + Send + 'static) -> Server {
        self.ready = Some(Box::new(f));
        self
    }

    /// The addresses a listener is bound to (useful with port 0).
    pub fn local_addrs(&self, listener: &str) -> Vec<SocketAddr> {
        self.handle().local_addrs(listener)
    }

    /// The admin API's address, when `[admin]` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// The current configuration generation.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.current.load_full()
    }

    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }

    /// Serves until `shutdown` completes, then stops accepting, lets open connections
    /// finish for up to `global.shutdown_timeout`, and cuts the rest.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> ShutdownReport {
        let shared = self.shared;
        let mut workers = self.workers;
        {
            let mut loops = shared.loops.lock().unwrap_or_else(|p| p.into_inner());
            for (key, entry) in loops.iter_mut() {
                shared.spawn_loop(key, entry);
            }
        }
        quic::start_all(&shared);
        let config = shared.current.load().config.clone();
        shared.health.sync(&config, &shared.registry);
        {
            let file_config = shared
                .file_config
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            shared.dns.sync(&file_config);
        }
        let handle = Handle {
            shared: shared.clone(),
        };
        let background = CancellationToken::new();
        if let Some(socket) = self.admin {
            handle.serve_admin(socket);
        }
        if config.global.watch_config {
            reload::watch(handle.clone(), &config.file, background.clone());
        }
        tokio::spawn(crate::worker::keep_timers_near(background.clone()));
        tokio::spawn(watch_certificates(shared.clone(), background.clone()));
        tokio::spawn(apply_dns_changes(shared.clone(), background.clone()));
        start_acme(&shared, background.clone());
        tokio::spawn(rotate_tickets(shared.clone(), background.clone()));
        tokio::spawn(shared.stapler.clone().run(background.clone()));
        let failover = match (self.failover, &config.failover) {
            (Some(socket), Some(f)) => start_failover(&shared, f.clone(), socket),
            _ => None,
        };
        if let Some(b) = &config.bgp {
            start_bgp(&shared, b.clone());
        }
        // A node that becomes active orders what the passive one left to it.
        if let Some(control) = shared.failover.get() {
            let mut role = control.status();
            let acme = shared.acme.clone();
            let stop = background.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        changed = role.changed() => if changed.is_err() { return },
                    }
                    if role.borrow().role == failover::machine::Role::Active {
                        acme.nudge();
                    }
                }
            });
        }
        notify(&[sd_notify::NotifyState::Ready]);
        if let Some(ready) = self.ready {
            ready();
        }

        let handed_over = tokio::select! {
            _ = shutdown => false,
            _ = shared.handed_over.cancelled() => true,
        };
        if handed_over {
            info!("upgrade: the new process serves; this one stops accepting and drains");
        } else {
            notify(&[sd_notify::NotifyState::Stopping]);
        }
        // Routers move new flows to the other instances first, while this one still
        // serves what they send meanwhile.
        let speakers = shared.bgp();
        if let Some(b) = &speakers {
            b.withdraw_all().await;
            let grace = b.withdraw_grace();
            info!(grace = ?grace, "bgp: serving through the withdraw grace");
            tokio::time::sleep(grace).await;
        }
        // Resign and give the addresses away first: the peer takes over while this
        // node drains what it has.
        if let Some(f) = failover {
            f.stop().await;
        }
        // No reload may start (or be half-way) while the listeners close.
        let _no_reloads = shared.reload_lock.lock().await;
        let timeout = shared.current.load().config.global.shutdown_timeout;
        shared.stop_accepting.cancel();
        let loops: Vec<RunningLoop> = {
            let mut loops = shared.loops.lock().unwrap_or_else(|p| p.into_inner());
            loops.drain().map(|(_, l)| l).collect()
        };
        for l in loops {
            if let Some(task) = l.task {
                let _ = task.await;
            }
            for task in l.others {
                let _ = task.await;
            }
        }
        shared.health.stop_all();
        shared.dns.stop();
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
        quic::close_all(&shared).await;
        workers.stop();
        background.cancel();
        let speakers = shared.bgp.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(b) = speakers {
            b.stop().await;
        }
        shared.stop_admin();
        if cut > 0 {
            warn!(cut, "shutdown timeout reached: connections cut");
        } else {
            info!("shutdown complete: every connection finished");
        }
        ShutdownReport { cut }
    }
}

fn config_upstream<'a>(snapshot: &'a Snapshot, name: &str) -> Option<&'a crate::config::Upstream> {
    snapshot.config.upstream(name)
}

impl Shared {
    /// What the admin API reads of the running server, with `snapshot` current.
    fn view<'a>(&'a self, snapshot: &'a Snapshot) -> admin::status::View<'a> {
        admin::status::View {
            generation: snapshot.generation,
            config: &snapshot.config,
            upstreams: &snapshot.upstreams,
            cache: snapshot.cache.as_deref(),
            pools: &self.pools,
            uptime: self.started.elapsed(),
            failover: self.failover.get().map(|c| c.status().borrow().clone()),
            bgp: self.bgp().map(|b| b.status()),
            acme: snapshot.config.acme.as_ref().map(|_| self.acme.status()),
            udp: quic::addresses(self),
        }
    }

    /// The BGP speakers, when `[bgp]` is configured.
    fn bgp(&self) -> Option<bgp::Running> {
        self.bgp.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Handle {
    /// Reloads the configuration file (see the `reload` module).
    pub async fn reload(&self) -> Result<u64, String> {
        reload::reload(&self.shared).await
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.current.load_full()
    }

    /// The UDP addresses a listener serves HTTP/3 on.
    pub fn quic_addrs(&self, listener: &str) -> Vec<SocketAddr> {
        quic::addresses(&self.shared)
            .into_iter()
            .filter(|(l, _)| l == listener)
            .map(|(_, a)| a)
            .collect()
    }

    /// The local addresses of a listener's sockets, in the order of its `bind`.
    pub fn local_addrs(&self, listener: &str) -> Vec<SocketAddr> {
        let loops = self.shared.loops.lock().unwrap_or_else(|p| p.into_inner());
        let mut found: Vec<(&BindKey, SocketAddr)> = loops
            .iter()
            .filter(|(_, l)| l.listener == listener)
            .map(|(k, l)| (k, l.local))
            .collect();
        found.sort_by_key(|(k, local)| match k {
            BindKey::Ephemeral(_, i) => (*i, *local),
            BindKey::Addr(_) => (usize::MAX, *local),
        });
        found.into_iter().map(|(_, a)| a).collect()
    }
}
