//! Prometheus metrics: one [`Metrics`] value built once and passed in, every name a
//! constant here. The hot path holds pre-resolved handles (per listener and per
//! (listener, upstream), resolved once per configuration generation); backend gauges
//! and counters are read from the live backend state when `/metrics` is scraped.

use std::sync::{Arc, OnceLock};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub const CONNECTIONS_TOTAL: &str = "fulcrum_connections_total";
pub const CONNECTIONS_ACTIVE: &str = "fulcrum_connections_active";
pub const WORKER_CONNECTIONS_TOTAL: &str = "fulcrum_worker_connections_total";
pub const HTTP_REQUESTS_TOTAL: &str = "fulcrum_http_requests_total";
pub const HTTP_REQUEST_DURATION: &str = "fulcrum_http_request_duration_seconds";
pub const BACKEND_HEALTHY: &str = "fulcrum_backend_healthy";
pub const BACKEND_ACTIVE: &str = "fulcrum_backend_active_connections";
pub const BACKEND_REQUESTS_TOTAL: &str = "fulcrum_backend_requests_total";
pub const TLS_HANDSHAKES_TOTAL: &str = "fulcrum_tls_handshakes_total";
pub const HTTP_REQUESTS_BY_PROTOCOL_TOTAL: &str = "fulcrum_http_requests_by_protocol_total";
pub const QUIC_HANDSHAKES_TOTAL: &str = "fulcrum_quic_handshakes_total";
pub const CONNECTIONS_PARKED: &str = "fulcrum_connections_parked";
pub const QUIC_CONNECTIONS_ACTIVE: &str = "fulcrum_quic_connections_active";
pub const CACHE_REQUESTS_TOTAL: &str = "fulcrum_cache_requests_total";
pub const CACHE_SIZE_BYTES: &str = "fulcrum_cache_size_bytes";
pub const CONFIG_RELOADS_TOTAL: &str = "fulcrum_config_reloads_total";
pub const CONFIG_GENERATION: &str = "fulcrum_config_generation";
pub const FAILOVER_ACTIVE: &str = "fulcrum_failover_active";
pub const FAILOVER_TRANSITIONS_TOTAL: &str = "fulcrum_failover_transitions_total";
pub const FAILOVER_HEARTBEATS_REJECTED_TOTAL: &str = "fulcrum_failover_heartbeats_rejected_total";
pub const FAILOVER_HEARTBEATS_LATE_TOTAL: &str = "fulcrum_failover_heartbeats_late_total";
pub const FAILOVER_TIMER_LATE_TOTAL: &str = "fulcrum_failover_timer_late_total";
pub const FAILOVER_ANNOUNCE_FAILURES_TOTAL: &str = "fulcrum_failover_announce_failures_total";
pub const FAILOVER_PEER_EXITS_TOTAL: &str = "fulcrum_failover_peer_exits_total";
pub const RATE_LIMITED_TOTAL: &str = "fulcrum_rate_limited_total";
pub const PROXY_PROTOCOL_ERRORS_TOTAL: &str = "fulcrum_proxy_protocol_errors_total";
pub const CLIENT_LIMITED_TOTAL: &str = "fulcrum_client_connections_limited_total";
pub const REDIS_UP: &str = "fulcrum_redis_up";
pub const HTTP_CONNECTIONS_CLOSED_TOTAL: &str = "fulcrum_http_connections_closed_total";
pub const CONNECTIONS_CLOSED_TOTAL: &str = "fulcrum_connections_closed_total";
pub const TLS_CERTIFICATE_EXPIRY_SECONDS: &str = "fulcrum_tls_certificate_expiry_seconds";
pub const ACME_ORDERS_TOTAL: &str = "fulcrum_acme_orders_total";
pub const TLS_OCSP_FETCHES_TOTAL: &str = "fulcrum_tls_ocsp_fetches_total";
pub const BGP_SESSION_UP: &str = "fulcrum_bgp_session_up";
pub const BGP_ANNOUNCED: &str = "fulcrum_bgp_announced";
pub const BGP_UPDATES_SENT_TOTAL: &str = "fulcrum_bgp_updates_sent_total";
pub const BGP_SESSION_TRANSITIONS_TOTAL: &str = "fulcrum_bgp_session_transitions_total";
pub const BACKEND_RESPONSE_SECONDS: &str = "fulcrum_backend_response_seconds";
pub const BACKEND_CONNECT_SECONDS: &str = "fulcrum_backend_connect_seconds";
pub const BACKEND_CONNECTIONS_OPENED_TOTAL: &str = "fulcrum_backend_connections_opened_total";
pub const BACKEND_CONNECTIONS_REUSED_TOTAL: &str = "fulcrum_backend_connections_reused_total";
pub const BACKEND_H2_CONNECTIONS: &str = "fulcrum_backend_h2_connections";
pub const UPSTREAM_H2_STREAMS_ACTIVE: &str = "fulcrum_upstream_h2_streams_active";
pub const TRACING_SPANS_EXPORTED_TOTAL: &str = "fulcrum_tracing_spans_exported_total";
pub const TRACING_SPANS_DROPPED_TOTAL: &str = "fulcrum_tracing_spans_dropped_total";

/// Buckets of the upstream timing histograms, in seconds.
const BACKEND_BUCKETS: [f64; 14] = [
    0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Every metric fulcrum exports, registered in its own registry.
pub struct Metrics {
    registry: Registry,
    /// Accepted connections, per listener.
    pub connections_total: IntCounterVec,
    /// Accepted TCP connections per worker, with thread per core.
    pub worker_connections_total: IntCounterVec,
    /// Open connections, per listener.
    pub connections_active: IntGaugeVec,
    /// HTTP/1.x keep-alive connections parked between requests, per listener.
    pub connections_parked: IntGaugeVec,
    /// HTTP responses, per listener, upstream and status code.
    pub http_requests_total: IntCounterVec,
    /// Time from a request's head to the end of its response, per listener and upstream.
    pub http_request_duration: HistogramVec,
    /// 1 when the backend is healthy (set at scrape time).
    pub backend_healthy: IntGaugeVec,
    /// Connections or requests in flight on the backend (set at scrape time).
    pub backend_active: IntGaugeVec,
    /// Attempts given to the backend, by outcome (`success`, `failure`).
    pub backend_requests_total: IntCounterVec,
    /// TLS handshakes per TLS listener and result.
    pub tls_handshakes_total: IntCounterVec,
    /// Requests per listener and the protocol the client spoke (`http/1.1`, `h2`, `h3`).
    pub http_requests_by_protocol_total: IntCounterVec,
    /// QUIC handshakes per listener and result (`ok`, `failed`, `retry`, `refused`).
    pub quic_handshakes_total: IntCounterVec,
    /// Open QUIC connections, per listener.
    pub quic_connections_active: IntGaugeVec,
    /// Requests (tcp: connections) refused by a rate limit, per listener and rule.
    pub rate_limited_total: IntCounterVec,
    /// Connections closed for a missing or malformed PROXY header, per listener.
    pub proxy_protocol_errors_total: IntCounterVec,
    /// Connections refused by `max_connections_per_client`, per listener.
    pub client_limited_total: IntCounterVec,
    /// 1 while Redis answers rate-limit decisions in time (set while `[redis]` exists).
    pub redis_up: IntGauge,
    /// HTTP connections that ended before a first request, per listener and reason.
    pub http_connections_closed_total: IntCounterVec,
    pub connections_closed_total: IntCounterVec,
    pub tls_certificate_expiry_seconds: IntGaugeVec,
    /// ACME orders, by result (`issued`, `failed`, `rate_limited`, `unreachable`).
    pub acme_orders_total: IntCounterVec,
    /// OCSP responses fetched for `ocsp = "auto"`, by result (`ok`, `failed`).
    pub tls_ocsp_fetches_total: IntCounterVec,
    pub bgp_session_up: IntGaugeVec,
    pub bgp_announced: IntGaugeVec,
    pub bgp_updates_sent_total: IntCounterVec,
    pub bgp_session_transitions_total: IntCounterVec,
    /// Time from a request sent to a backend to its response head, per backend.
    pub backend_response_seconds: HistogramVec,
    /// Time to open a backend connection (TLS included), per backend.
    pub backend_connect_seconds: HistogramVec,
    /// Backend connections opened, and requests sent on a pooled one, per backend.
    pub backend_connections_opened_total: IntCounterVec,
    pub backend_connections_reused_total: IntCounterVec,
    /// HTTP/2 backends: open connections and requests in flight on them (set at
    /// scrape time).
    pub backend_h2_connections: IntGaugeVec,
    pub upstream_h2_streams_active: IntGaugeVec,
    /// Spans the OTLP collector took, and those dropped (`queue_full`, `export_failed`).
    pub tracing_spans_exported_total: IntCounter,
    pub tracing_spans_dropped_total: IntCounterVec,
    /// Serializes the scrape-time update of the counters read from live state, so
    /// that concurrent scrapes never add one increment twice.
    pub scrape: std::sync::Mutex<()>,
    /// Requests of cached routes by how the cache answered.
    pub cache_requests_total: IntCounterVec,
    pub cache_size_bytes: IntGauge,
    /// Reloads by result (`success`, `failure`).
    pub config_reloads_total: IntCounterVec,
    pub config_generation: IntGauge,
    /// 1 while this node is the active one of a failover pair.
    pub failover_active: IntGauge,
    /// Failover role changes, by the role entered (`active`, `passive`, `fault`).
    pub failover_transitions_total: IntCounterVec,
    /// Heartbeats dropped, by reason (see `failover::wire::Reject`).
    pub failover_heartbeats_rejected_total: IntCounterVec,
    /// Peer heartbeats that came more than 1.5 intervals after the previous one.
    pub failover_heartbeats_late_total: IntCounter,
    /// This node's heartbeats sent more than half an interval after their time.
    pub failover_timer_late_total: IntCounter,
    /// Gratuitous ARPs and neighbour advertisements that could not be sent.
    pub failover_announce_failures_total: IntCounterVec,
    /// Peers whose process ended without resigning, noticed by the exit watch.
    pub failover_peer_exits_total: IntCounter,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let m = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let m = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let m = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

fn histogram_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let m = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(BACKEND_BUCKETS.to_vec()),
        labels,
    )
    .expect("valid metric");
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let m = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Builds and registers every metric. The names and labels are constants, so
    /// registration cannot fail at run time.
    pub fn new() -> Self {
        let r = Registry::new();
        let http_request_duration = HistogramVec::new(
            HistogramOpts::new(
                HTTP_REQUEST_DURATION,
                "Time from a request's head to the end of its response",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["listener", "upstream"],
        )
        .expect("valid metric");
        r.register(Box::new(http_request_duration.clone()))
            .expect("unique metric");
        Metrics {
            connections_total: counter_vec(
                &r,
                CONNECTIONS_TOTAL,
                "Accepted connections",
                &["listener"],
            ),
            worker_connections_total: counter_vec(
                &r,
                WORKER_CONNECTIONS_TOTAL,
                "Accepted TCP connections per worker (thread per core only)",
                &["worker"],
            ),
            connections_active: gauge_vec(
                &r,
                CONNECTIONS_ACTIVE,
                "Open connections",
                &["listener"],
            ),
            connections_parked: gauge_vec(
                &r,
                CONNECTIONS_PARKED,
                "HTTP/1.x keep-alive connections parked between requests (quiet for a second or more)",
                &["listener"],
            ),
            http_requests_total: counter_vec(
                &r,
                HTTP_REQUESTS_TOTAL,
                "HTTP responses by status code",
                &["listener", "upstream", "code"],
            ),
            http_request_duration,
            backend_healthy: gauge_vec(
                &r,
                BACKEND_HEALTHY,
                "1 when the backend is healthy",
                &["upstream", "backend"],
            ),
            backend_active: gauge_vec(
                &r,
                BACKEND_ACTIVE,
                "Connections or requests in flight on the backend",
                &["upstream", "backend"],
            ),
            backend_requests_total: counter_vec(
                &r,
                BACKEND_REQUESTS_TOTAL,
                "Attempts given to the backend, by outcome",
                &["upstream", "backend", "outcome"],
            ),
            tls_handshakes_total: counter_vec(
                &r,
                TLS_HANDSHAKES_TOTAL,
                "TLS handshakes by result",
                &["listener", "result"],
            ),
            http_requests_by_protocol_total: counter_vec(
                &r,
                HTTP_REQUESTS_BY_PROTOCOL_TOTAL,
                "HTTP requests by the protocol the client spoke",
                &["listener", "protocol"],
            ),
            quic_handshakes_total: counter_vec(
                &r,
                QUIC_HANDSHAKES_TOTAL,
                "QUIC handshakes by result (ok, failed, retry: address validation asked, refused: over a limit)",
                &["listener", "result"],
            ),
            quic_connections_active: gauge_vec(
                &r,
                QUIC_CONNECTIONS_ACTIVE,
                "Open QUIC (HTTP/3) connections",
                &["listener"],
            ),
            rate_limited_total: counter_vec(
                &r,
                RATE_LIMITED_TOTAL,
                "Requests (tcp: connections) refused by a rate limit",
                &["listener", "rule"],
            ),
            proxy_protocol_errors_total: counter_vec(
                &r,
                PROXY_PROTOCOL_ERRORS_TOTAL,
                "Connections closed for a missing or malformed PROXY protocol header",
                &["listener"],
            ),
            client_limited_total: counter_vec(
                &r,
                CLIENT_LIMITED_TOTAL,
                "Connections refused by max_connections_per_client",
                &["listener"],
            ),
            redis_up: gauge(
                &r,
                REDIS_UP,
                "1 while Redis answers rate-limit decisions in time",
            ),
            backend_response_seconds: histogram_vec(
                &r,
                BACKEND_RESPONSE_SECONDS,
                "Time from a request sent to a backend to its response head",
                &["upstream", "backend"],
            ),
            backend_connect_seconds: histogram_vec(
                &r,
                BACKEND_CONNECT_SECONDS,
                "Time to open a backend connection, TLS included",
                &["upstream", "backend"],
            ),
            backend_connections_opened_total: counter_vec(
                &r,
                BACKEND_CONNECTIONS_OPENED_TOTAL,
                "Backend connections opened",
                &["upstream", "backend"],
            ),
            backend_connections_reused_total: counter_vec(
                &r,
                BACKEND_CONNECTIONS_REUSED_TOTAL,
                "Requests sent on a pooled backend connection",
                &["upstream", "backend"],
            ),
            backend_h2_connections: gauge_vec(
                &r,
                BACKEND_H2_CONNECTIONS,
                "Open HTTP/2 connections to the backend",
                &["upstream", "backend"],
            ),
            upstream_h2_streams_active: gauge_vec(
                &r,
                UPSTREAM_H2_STREAMS_ACTIVE,
                "Requests in flight on the backend's HTTP/2 connections",
                &["upstream", "backend"],
            ),
            tracing_spans_exported_total: counter(
                &r,
                TRACING_SPANS_EXPORTED_TOTAL,
                "Spans exported to the OTLP collector",
            ),
            tracing_spans_dropped_total: counter_vec(
                &r,
                TRACING_SPANS_DROPPED_TOTAL,
                "Spans dropped: the export queue was full, or the collector did not take them",
                &["reason"],
            ),
            scrape: std::sync::Mutex::new(()),
            http_connections_closed_total: counter_vec(
                &r,
                HTTP_CONNECTIONS_CLOSED_TOTAL,
                "HTTP connections that ended before a first request, by reason",
                &["listener", "reason"],
            ),
            connections_closed_total: counter_vec(
                &r,
                CONNECTIONS_CLOSED_TOTAL,
                "Connections that ended before a first request, by reason",
                &["listener", "reason"],
            ),
            tls_certificate_expiry_seconds: gauge_vec(
                &r,
                TLS_CERTIFICATE_EXPIRY_SECONDS,
                "When each served TLS certificate expires, in seconds since the Unix epoch",
                &["listener", "name"],
            ),
            bgp_session_up: gauge_vec(
                &r,
                BGP_SESSION_UP,
                "1 while the BGP session with the peer is established",
                &["peer"],
            ),
            acme_orders_total: counter_vec(
                &r,
                ACME_ORDERS_TOTAL,
                "ACME certificate orders, by result",
                &["result"],
            ),
            tls_ocsp_fetches_total: counter_vec(
                &r,
                TLS_OCSP_FETCHES_TOTAL,
                "OCSP responses fetched from certificates' responders, by result",
                &["result"],
            ),
            bgp_announced: gauge_vec(
                &r,
                BGP_ANNOUNCED,
                "1 while at least one established BGP session carries the prefix",
                &["prefix"],
            ),
            bgp_updates_sent_total: counter_vec(
                &r,
                BGP_UPDATES_SENT_TOTAL,
                "BGP UPDATE messages sent, by kind (announce, withdraw)",
                &["peer", "kind"],
            ),
            bgp_session_transitions_total: counter_vec(
                &r,
                BGP_SESSION_TRANSITIONS_TOTAL,
                "BGP sessions established and lost, by peer",
                &["peer", "to"],
            ),
            cache_requests_total: counter_vec(
                &r,
                CACHE_REQUESTS_TOTAL,
                "Cache lookups by result",
                &["result"],
            ),
            cache_size_bytes: gauge(&r, CACHE_SIZE_BYTES, "Bytes of stored responses"),
            config_reloads_total: counter_vec(
                &r,
                CONFIG_RELOADS_TOTAL,
                "Configuration reloads by result",
                &["result"],
            ),
            config_generation: gauge(
                &r,
                CONFIG_GENERATION,
                "The configuration generation serving",
            ),
            failover_active: gauge(&r, FAILOVER_ACTIVE, "1 while this node is the active one"),
            failover_transitions_total: counter_vec(
                &r,
                FAILOVER_TRANSITIONS_TOTAL,
                "Failover transitions",
                &["to"],
            ),
            failover_heartbeats_rejected_total: counter_vec(
                &r,
                FAILOVER_HEARTBEATS_REJECTED_TOTAL,
                "Heartbeats dropped, by reason",
                &["reason"],
            ),
            failover_heartbeats_late_total: counter(
                &r,
                FAILOVER_HEARTBEATS_LATE_TOTAL,
                "Peer heartbeats that came more than 1.5 intervals after the previous one",
            ),
            failover_timer_late_total: counter(
                &r,
                FAILOVER_TIMER_LATE_TOTAL,
                "Heartbeats sent more than half an interval after their time",
            ),
            failover_announce_failures_total: counter_vec(
                &r,
                FAILOVER_ANNOUNCE_FAILURES_TOTAL,
                "Gratuitous ARPs (ipv4) and neighbour advertisements (ipv6) not sent",
                &["family"],
            ),
            failover_peer_exits_total: counter(
                &r,
                FAILOVER_PEER_EXITS_TOTAL,
                "Peers taken as gone because their process ended without resigning",
            ),
            registry: r,
        }
        .seed()
    }

    /// Gives the fixed label values their series at 0, so that every family of the
    /// contract is exported from the start.
    fn seed(self) -> Self {
        for r in ["success", "failure"] {
            self.config_reloads_total.with_label_values(&[r]);
        }
        for r in ["queue_full", "export_failed"] {
            self.tracing_spans_dropped_total.with_label_values(&[r]);
        }
        for r in ["hit", "miss", "stale", "revalidated", "bypass"] {
            self.cache_requests_total.with_label_values(&[r]);
        }
        for to in ["active", "passive"] {
            self.failover_transitions_total.with_label_values(&[to]);
        }
        for family in ["ipv4", "ipv6"] {
            self.failover_announce_failures_total
                .with_label_values(&[family]);
        }
        self
    }

    /// The handles of one listener.
    pub fn listener(&self, listener: &str) -> ListenerMetrics {
        ListenerMetrics {
            accepted: self.connections_total.with_label_values(&[listener]),
            open: self.connections_active.with_label_values(&[listener]),
        }
    }

    /// The handles for requests of `listener` served by `upstream` (or "-").
    pub fn requests(&self, listener: &str, upstream: &str) -> Arc<RequestMetrics> {
        Arc::new(RequestMetrics {
            vec: self.http_requests_total.clone(),
            listener: listener.to_string(),
            upstream: upstream.to_string(),
            codes: std::array::from_fn(|_| OnceLock::new()),
            duration: self
                .http_request_duration
                .with_label_values(&[listener, upstream]),
        })
    }

    /// The Prometheus text format of every metric.
    /// The metric families named in `families`, as JSON for the dashboard: per family,
    /// every series' labels and value (counters and gauges), or cumulative bucket
    /// counts, sum and count (histograms).
    pub fn json(&self, families: &[&str]) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for family in self.registry.gather() {
            if !families.contains(&family.name()) {
                continue;
            }
            let kind = family.get_field_type();
            let series: Vec<serde_json::Value> = family
                .get_metric()
                .iter()
                .map(|m| {
                    let labels: serde_json::Map<String, serde_json::Value> = m
                        .get_label()
                        .iter()
                        .map(|l| (l.name().to_string(), l.value().into()))
                        .collect();
                    let mut one = serde_json::json!({ "labels": labels });
                    match kind {
                        prometheus::proto::MetricType::HISTOGRAM => {
                            let h = m.get_histogram();
                            let buckets: Vec<serde_json::Value> = h
                                .get_bucket()
                                .iter()
                                .map(|b| serde_json::json!([b.upper_bound(), b.cumulative_count()]))
                                .collect();
                            one["buckets"] = buckets.into();
                            one["sum"] = h.get_sample_sum().into();
                            one["count"] = h.get_sample_count().into();
                        }
                        prometheus::proto::MetricType::COUNTER => {
                            one["value"] = m.get_counter().get_value().into();
                        }
                        _ => one["value"] = m.get_gauge().get_value().into(),
                    }
                    one
                })
                .collect();
            out.insert(family.name().to_string(), series.into());
        }
        out.into()
    }

    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The timing handles of one backend, resolved once per generation.
#[derive(Clone)]
pub struct BackendTimings {
    pub response: Histogram,
    pub connect: Histogram,
    pub opened: IntCounter,
    pub reused: IntCounter,
}

impl std::fmt::Debug for BackendTimings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackendTimings")
    }
}

impl Metrics {
    pub fn backend_timings(&self, upstream: &str, backend: &str) -> BackendTimings {
        let l = [upstream, backend];
        BackendTimings {
            response: self.backend_response_seconds.with_label_values(&l),
            connect: self.backend_connect_seconds.with_label_values(&l),
            opened: self.backend_connections_opened_total.with_label_values(&l),
            reused: self.backend_connections_reused_total.with_label_values(&l),
        }
    }
}

/// Connection counters of one listener.
#[derive(Clone)]
pub struct ListenerMetrics {
    pub accepted: IntCounter,
    pub open: IntGauge,
}

/// Request counters of one (listener, upstream): a counter per status code, resolved
/// on first use and kept, and the duration histogram.
pub struct RequestMetrics {
    vec: IntCounterVec,
    listener: String,
    upstream: String,
    codes: [OnceLock<IntCounter>; 500],
    pub duration: Histogram,
}

impl std::fmt::Debug for RequestMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMetrics")
            .field("listener", &self.listener)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl RequestMetrics {
    pub fn count(&self, status: u16) {
        let Some(slot) = status
            .checked_sub(100)
            .and_then(|i| self.codes.get(usize::from(i)))
        else {
            return;
        };
        slot.get_or_init(|| {
            self.vec
                .with_label_values(&[&self.listener, &self.upstream, &status.to_string()])
        })
        .inc();
    }
}

#[cfg(test)]
mod tests;
