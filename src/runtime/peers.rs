//! The processes' peers: the failover pair's driver and the BGP speakers, started
//! with what they read of the running server.

use super::shared::Shared;
use crate::bgp;
use crate::failover;
use std::sync::Arc;

/// Starts the BGP speakers: the gate reads backend eligibility from the current
/// generation (with health checks, only backends a check has passed count) and the
/// failover role when there is one.
pub(super) fn start_bgp(shared: &Arc<Shared>, config: crate::config::Bgp) {
    let weak = Arc::downgrade(shared);
    let eligible: bgp::Eligible = Arc::new(move |name: &str| {
        let shared = weak.upgrade()?;
        let snapshot = shared.current.load();
        let up = snapshot.upstreams.get(name)?;
        // With health checks, a backend counts once a check has passed: a fresh
        // instance does not draw traffic to backends it has not seen answer.
        let checked = snapshot
            .config
            .upstream(name)
            .is_some_and(|u| u.health.is_some());
        let counted = up
            .backends()
            .iter()
            .filter(|b| b.is_eligible() && (!checked || b.state.is_verified()))
            .count();
        Some(counted)
    });
    let m = &shared.metrics;
    let metrics = bgp::Metrics {
        session_up: m.bgp_session_up.clone(),
        updates_sent: m.bgp_updates_sent_total.clone(),
        transitions: m.bgp_session_transitions_total.clone(),
    };
    let role = shared.failover.get().map(|c| c.status());
    let running = bgp::start(config, eligible, role, metrics, m.bgp_announced.clone());
    *shared.bgp.lock().unwrap_or_else(|p| p.into_inner()) = Some(running);
}

/// Starts the failover driver with the shared metrics; a failure to start is logged
/// and leaves this node out of the pair (it never claims the addresses).
pub(super) fn start_failover(
    shared: &Shared,
    config: crate::config::Failover,
    sockets: failover::control::Bound,
) -> Option<failover::Running> {
    let metrics = failover::Metrics {
        active: shared.metrics.failover_active.clone(),
        transitions: shared.metrics.failover_transitions_total.clone(),
        rejected: shared.metrics.failover_heartbeats_rejected_total.clone(),
        heartbeats_late: shared.metrics.failover_heartbeats_late_total.clone(),
        timer_late: shared.metrics.failover_timer_late_total.clone(),
        announce_failures: shared.metrics.failover_announce_failures_total.clone(),
        peer_exits: shared.metrics.failover_peer_exits_total.clone(),
    };
    match failover::driver::start(config, sockets, metrics) {
        Ok(running) => {
            let _ = shared.failover.set(running.control());
            Some(running)
        }
        Err(e) => {
            tracing::error!(error = %e, "failover cannot start");
            None
        }
    }
}
