//! The hook task: runs `on_active` and `on_passive` one at a time, each killed after
//! [`HOOK_TIMEOUT`], after the addresses are added and announced, never before.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::config::Failover;

/// How long a hook may run before it is killed.
pub(super) const HOOK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
pub(super) enum Hook {
    Active,
    Passive,
}

/// Runs hooks one at a time, in order, each bounded by [`HOOK_TIMEOUT`].
pub(super) async fn run_hooks(
    settings: watch::Receiver<Arc<Failover>>,
    hooks: mpsc::Receiver<Hook>,
) {
    run_hooks_within(settings, hooks, HOOK_TIMEOUT).await
}

/// Runs each hook as the settings name it when its turn comes (a reload may have
/// changed them).
pub(super) async fn run_hooks_within(
    settings: watch::Receiver<Arc<Failover>>,
    mut hooks: mpsc::Receiver<Hook>,
    limit: Duration,
) {
    while let Some(hook) = hooks.recv().await {
        let config = settings.borrow().clone();
        let (path, state): (&Option<PathBuf>, &str) = match hook {
            Hook::Active => (&config.on_active, "active"),
            Hook::Passive => (&config.on_passive, "passive"),
        };
        let Some(path) = path else { continue };
        let mut command = tokio::process::Command::new(path);
        command
            .env("FULCRUM_FAILOVER_STATE", state)
            .env("FULCRUM_FAILOVER_NODE", &config.node)
            .stdin(std::process::Stdio::null())
            // A group of its own: at the timeout, what it started goes with it.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(c) => c,
            Err(e) => {
                error!(hook = %path.display(), error = %e, "failover: hook cannot be started");
                continue;
            }
        };
        match tokio::time::timeout(limit, child.wait()).await {
            Ok(Ok(status)) if status.success() => {
                info!(hook = %path.display(), state, "failover: hook finished")
            }
            Ok(Ok(status)) => {
                warn!(hook = %path.display(), state, %status, "failover: hook failed")
            }
            Ok(Err(e)) => error!(hook = %path.display(), error = %e, "failover: hook lost"),
            Err(_) => {
                if let Some(pid) = child.id() {
                    super::group::kill(pid);
                }
                let _ = child.kill().await;
                warn!(hook = %path.display(), state, timeout = ?limit, "failover: hook killed: ran too long");
            }
        }
    }
}
