//! What the admin API and the command line ask of a running server: its status,
//! reloads, drains, BGP maintenance, binary upgrades.

use super::bind::BindKey;
use super::shared::{notify, Handle};
use super::upgrade;
use crate::admin::{self};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

impl Handle {
    /// Starts `exe args...` as the new process, hands it every listening socket and
    /// the backends' health, and once it says it serves, tells systemd it is the main
    /// process and makes this one stop accepting and drain (as on SIGTERM). Refused
    /// while another upgrade runs, and with `[failover]` or `[bgp]` (their heartbeat
    /// socket and sessions belong to one process: restart a node of the pair, or an
    /// instance in maintenance, instead). On failure nothing changes here.
    pub async fn upgrade(
        &self,
        exe: &std::path::Path,
        args: &[std::ffi::OsString],
    ) -> Result<u32, String> {
        use std::sync::atomic::Ordering;
        let shared = &self.shared;
        let config = shared.current.load().config.clone();
        if config.failover.is_some() || config.bgp.is_some() {
            return Err("not with [failover] or [bgp]: their heartbeats and sessions belong to one process; restart this node instead (the peer or the other instances serve meanwhile)".into());
        }
        if shared.upgrading.swap(true, Ordering::AcqRel) {
            return Err("an upgrade is already under way".into());
        }
        if shared.handed_over.is_cancelled() {
            return Err("this process already handed its sockets over".into());
        }
        // No reload may change the sockets while they are handed over.
        let result = {
            let _no_reloads = shared.reload_lock.lock().await;
            let sockets = {
                let loops = shared.loops.lock().unwrap_or_else(|p| p.into_inner());
                loops
                    .iter()
                    .map(|(key, l)| {
                        let configured = match key {
                            BindKey::Addr(a) => *a,
                            BindKey::Ephemeral(..) => SocketAddr::new(l.local.ip(), 0),
                        };
                        (key.clone(), l.listener.clone(), configured, l.fd)
                    })
                    .collect()
            };
            let admin = *shared.admin_fd.lock().unwrap_or_else(|p| p.into_inner());
            let snapshot = shared.current.load();
            let backends = snapshot
                .upstreams
                .iter()
                .flat_map(|(name, up)| {
                    up.backends().iter().map(move |b| upgrade::BackendHealth {
                        upstream: name.clone(),
                        address: b.address.clone(),
                        healthy: b.state.is_healthy(),
                        draining: b.state.is_draining(),
                    })
                })
                .collect();
            let out = upgrade::Outgoing {
                sockets,
                admin,
                backends,
            };
            info!(exe = %exe.display(), "upgrade: starting the new process");
            upgrade::hand_over(exe, args, out).await
        };
        match &result {
            Ok(pid) => {
                info!(pid, "upgrade: the new process is ready");
                notify(&[sd_notify::NotifyState::MainPid(*pid)]);
                shared.handed_over.cancel();
            }
            Err(e) => {
                warn!(error = %e, "upgrade failed: this process keeps serving");
                shared.upgrading.store(false, Ordering::Release);
            }
        }
        result
    }

    /// Serves the admin API on `socket`, in place of the one serving now (if any: it
    /// stops accepting, and its open requests finish).
    pub(crate) fn serve_admin(&self, socket: TcpListener) {
        if let Ok(addr) = socket.local_addr() {
            info!(addr = %addr, "admin API listening");
        }
        *self
            .shared
            .admin_fd
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(std::os::fd::AsRawFd::as_raw_fd(&socket));
        let control: Arc<dyn admin::Control> = Arc::new(self.clone());
        let stop = CancellationToken::new();
        let before = self
            .shared
            .admin_stop
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(stop.clone());
        if let Some(before) = before {
            before.cancel();
        }
        tokio::spawn(admin::serve(socket, control, stop));
    }
}

impl admin::Control for Handle {
    fn status(&self) -> serde_json::Value {
        let snapshot = self.shared.current.load();
        admin::status::document(&self.shared.view(&snapshot), &self.shared.metrics)
    }

    fn reload(&self) -> admin::BoxFuture<'_, Result<u64, String>> {
        Box::pin(Handle::reload(self))
    }

    fn set_draining(&self, upstream: &str, backend: &str, draining: bool) -> Result<(), String> {
        let snapshot = self.shared.current.load();
        let up = snapshot
            .upstreams
            .get(upstream)
            .ok_or_else(|| format!("no upstream {upstream:?}"))?;
        let b = up
            .backends()
            .iter()
            .find(|b| b.name == backend)
            .ok_or_else(|| format!("no backend {backend:?} in upstream {upstream:?}"))?;
        if b.state.set_draining(draining) {
            info!(upstream, backend, draining, "backend drain state changed");
        }
        Ok(())
    }

    fn metrics(&self) -> String {
        let snapshot = self.shared.current.load();
        admin::status::refresh_backend_metrics(&self.shared.view(&snapshot), &self.shared.metrics);
        if let Some(b) = self.shared.bgp() {
            b.publish_metrics();
        }
        self.shared.metrics.encode()
    }

    fn purge_cache(&self, host: Option<&str>, path_prefix: Option<&str>) -> Option<usize> {
        let snapshot = self.shared.current.load();
        let cache = snapshot.cache.as_ref()?;
        let dropped = cache.purge(host, path_prefix);
        info!(host, path_prefix, dropped, "cache purged");
        Some(dropped)
    }

    fn dashboard(&self) -> serde_json::Value {
        let snapshot = self.shared.current.load();
        admin::status::refresh_backend_metrics(&self.shared.view(&snapshot), &self.shared.metrics);
        let metrics = self.shared.metrics.json(&[
            crate::admin::metrics::HTTP_REQUESTS_TOTAL,
            crate::admin::metrics::HTTP_REQUEST_DURATION,
            crate::admin::metrics::BACKEND_REQUESTS_TOTAL,
            crate::admin::metrics::CACHE_REQUESTS_TOTAL,
        ]);
        serde_json::json!({
            "status": self.status(),
            "metrics": metrics,
        })
    }

    fn bgp_maintenance(&self, withdraw: bool) -> Result<(), String> {
        let running = self
            .shared
            .bgp()
            .ok_or_else(|| "no [bgp] section is configured".to_string())?;
        running.set_maintenance(withdraw);
        Ok(())
    }

    fn token(&self) -> Option<String> {
        self.shared
            .current
            .load()
            .config
            .admin
            .as_ref()
            .and_then(|a| a.token.clone())
    }
}
