//! The `/status` document and the metrics set at scrape time, from a read-only view
//! of the running server that the runtime hands over.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::metrics::Metrics;
use crate::cache::Cache;
use crate::config::{Config, Protocol};
use crate::l7::Pools;
use crate::upstream::Upstream;

/// What `/status` and a scrape read of the running server: the current generation and
/// the state kept across generations.
pub struct View<'a> {
    pub generation: u64,
    pub config: &'a Config,
    pub upstreams: &'a HashMap<String, Arc<Upstream>>,
    pub cache: Option<&'a Cache>,
    pub pools: &'a Pools,
    pub uptime: Duration,
    /// The failover driver's published state, when there is a pair.
    pub failover: Option<crate::failover::Status>,
    /// The `bgp` object, when `[bgp]` is configured.
    pub bgp: Option<serde_json::Value>,
    /// The `acme` object, when `[acme]` is configured.
    pub acme: Option<serde_json::Value>,
    /// The UDP addresses HTTP/3 is served on, by listener.
    pub udp: Vec<(String, std::net::SocketAddr)>,
}

/// Drops the per-backend series of backends a reload removed, so that they are no
/// longer exported with their last values.
pub fn forget_removed_series(m: &Metrics, old: &Config, new: &Config) {
    let _one = m.scrape.lock().unwrap_or_else(|p| p.into_inner());
    for u in &old.upstreams {
        for b in &u.backends {
            let kept = new
                .upstream(&u.name)
                .is_some_and(|n| n.backends.iter().any(|nb| nb.name == b.name));
            if kept {
                continue;
            }
            let labels = [u.name.as_str(), b.name.as_str()];
            let _ = m.backend_healthy.remove_label_values(&labels);
            let _ = m.backend_active.remove_label_values(&labels);
            let _ = m.backend_h2_connections.remove_label_values(&labels);
            let _ = m.upstream_h2_streams_active.remove_label_values(&labels);
            let _ = m.backend_response_seconds.remove_label_values(&labels);
            let _ = m.backend_connect_seconds.remove_label_values(&labels);
            let _ = m
                .backend_connections_opened_total
                .remove_label_values(&labels);
            let _ = m
                .backend_connections_reused_total
                .remove_label_values(&labels);
            for outcome in ["success", "failure"] {
                let _ = m.backend_requests_total.remove_label_values(&[
                    u.name.as_str(),
                    b.name.as_str(),
                    outcome,
                ]);
            }
        }
    }
}

/// Sets the backend metrics from the live state, for a scrape.
pub fn refresh_backend_metrics(view: &View<'_>, m: &Metrics) {
    // One scrape at a time here: the counters below catch up with the live counts by
    // difference, which two scrapes at once would add twice.
    let _one = m.scrape.lock().unwrap_or_else(|p| p.into_inner());
    m.cache_size_bytes
        .set(view.cache.map_or(0, |c| c.size() as i64));
    for (name, up) in view.upstreams {
        let http2 = view
            .config
            .upstream(name)
            .is_some_and(|u| u.protocol.is_http2());
        for b in up.backends() {
            let labels = [name.as_str(), b.name.as_str()];
            if http2 {
                let (conns, streams) = view
                    .pools
                    .find(name, &b.address)
                    .map_or((0, 0), |p| p.h2.counts());
                m.backend_h2_connections
                    .with_label_values(&labels)
                    .set(conns as i64);
                m.upstream_h2_streams_active
                    .with_label_values(&labels)
                    .set(streams as i64);
            }
            m.backend_healthy
                .with_label_values(&labels)
                .set(i64::from(b.state.is_healthy() && !b.state.is_ejected()));
            m.backend_active
                .with_label_values(&labels)
                .set(b.state.active() as i64);
            for (outcome, value) in [
                ("success", b.state.succeeded()),
                ("failure", b.state.failed()),
            ] {
                let c = m.backend_requests_total.with_label_values(&[
                    name.as_str(),
                    b.name.as_str(),
                    outcome,
                ]);
                if value > c.get() {
                    c.inc_by(value - c.get());
                }
            }
        }
    }
}

/// The `failover` object of `/status`.
fn failover_status(status: Option<&crate::failover::Status>) -> serde_json::Value {
    match status {
        Some(s) => json!({
            "enabled": true,
            "node": s.node,
            "state": s.state(),
            "peer_last_seen_ms": s.peer_last_seen_ms(),
        }),
        None => json!({ "enabled": false }),
    }
}

/// The `/status` document.
pub fn document(view: &View<'_>, m: &Metrics) -> serde_json::Value {
    let config = view.config;
    let listeners: Vec<_> = config
        .listeners
        .iter()
        .map(|l| {
            let mut o = json!({
                "name": l.name,
                "bind": l.bind.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "protocol": match l.protocol { Protocol::Http => "http", Protocol::Tcp => "tcp" },
                "active_connections": m.connections_active.with_label_values(&[&l.name]).get(),
            });
            if l.tls.as_ref().is_some_and(|t| t.http3.is_some()) {
                o["http3"] = json!({
                    "udp": view
                        .udp
                        .iter()
                        .filter(|(name, _)| *name == l.name)
                        .map(|(_, a)| a.to_string())
                        .collect::<Vec<_>>(),
                    "active_connections": m.quic_connections_active.with_label_values(&[&l.name]).get(),
                });
            }
            o
        })
        .collect();
    let mut names: Vec<&String> = view.upstreams.keys().collect();
    names.sort();
    let upstreams: Vec<_> = names
        .into_iter()
        .map(|name| {
            let up = &view.upstreams[name];
            let backends: Vec<_> = up
                .backends()
                .iter()
                .map(|b| {
                    json!({
                        "name": b.name,
                        "address": b.address,
                        "weight": b.weight,
                        "healthy": b.state.is_healthy(),
                        "ejected": b.state.is_ejected(),
                        "draining": b.state.is_draining(),
                        "active_connections": b.state.active(),
                        "ewma_ms": b.state.latency_ns() / 1e6,
                    })
                })
                .collect();
            json!({ "name": name, "strategy": up.strategy.as_str(), "backends": backends })
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "generation": view.generation,
        "uptime_seconds": view.uptime.as_secs(),
        "failover": failover_status(view.failover.as_ref()),
        "bgp": view.bgp.clone().unwrap_or_else(|| json!({ "enabled": false })),
        "acme": view.acme.clone().unwrap_or_else(|| json!({ "enabled": false })),
        "cache": match view.cache {
            Some(c) => json!({
                "enabled": true,
                "size_bytes": c.size(),
                "keys": c.keys(),
                "max_size": c.settings.max_size,
                "max_object_size": c.settings.max_object_size,
            }),
            None => json!({ "enabled": false }),
        },
        "listeners": listeners,
        "upstreams": upstreams,
    })
}
