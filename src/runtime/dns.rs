//! Backends from DNS: the configuration expanded with their records, and the
//! generation built again whenever the records change.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::shared::Shared;
use crate::config::Config;

/// `file` expanded with the backends' DNS records (the same `Arc` when it has none
/// to look up).
pub(crate) fn effective(shared: &Shared, file: &Arc<Config>) -> Arc<Config> {
    if crate::dns::wanted(file) {
        Arc::new(crate::dns::expand(file, &shared.dns.records()))
    } else {
        file.clone()
    }
}

/// Builds the generation again, with the same number, whenever DNS records change:
/// added backends get health checks, removed ones finish what they have in flight.
pub(super) async fn apply_dns_changes(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let changed = shared.dns.changed();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = changed => {}
        }
        let _one_at_a_time = shared.reload_lock.lock().await;
        if shared.stop_accepting.is_cancelled() {
            return;
        }
        let file = shared
            .file_config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let config = effective(&shared, &file);
        let generation = shared.current.load().generation;
        match shared.build(config.clone(), generation) {
            Ok(next) => {
                shared.current.store(Arc::new(next));
                shared.registry.retain(&config);
                shared.pools.retain(&config);
                shared.health.sync(&config, &shared.registry);
            }
            Err(e) => {
                warn!(error = %e, "backends from DNS changed, but the generation cannot be built")
            }
        }
    }
}
