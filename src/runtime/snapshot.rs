//! One configuration generation, built whole from a validated `Config` beside the one
//! serving, and shared read-only by every connection that starts while it is current.

use std::collections::HashMap;
use std::sync::Arc;

use std::sync::atomic::AtomicUsize;

use crate::admin::metrics::{ListenerMetrics, Metrics};
use crate::cache::Cache;
use crate::config::{AccessRules, Config, Protocol, UpstreamProtocol};
use crate::l4;
use crate::l7;
use crate::limits::{Applied, Limiter, PerClient, RedisStore};
use crate::telemetry::export::{self, Exporter};
use crate::upstream::{Registry, Upstream};

use super::bind::{bind_keys, BindKey};

pub struct Snapshot {
    pub generation: u64,
    pub config: Arc<Config>,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    /// The response cache, kept across generations while its sizes stay the same.
    pub cache: Option<Arc<Cache>>,
    /// By bind: what an accept loop on that socket serves.
    listeners: HashMap<BindKey, Arc<ListenerEntry>>,
    /// The `[rate_limit.*]` rules with their state, kept across generations while a
    /// rule stays the same.
    pub limiters: HashMap<String, Arc<Limiter>>,
    /// `[redis]`'s connection, kept across generations while its settings stay.
    pub redis: Option<Arc<RedisStore>>,
    /// `[tracing] otlp`'s exporter, kept across generations while the URL stays.
    pub spans: Option<Arc<Exporter>>,
}

pub(crate) struct ListenerEntry {
    pub name: String,
    pub access: AccessRules,
    pub engine: Engine,
    /// The listener's own `max_connections`.
    pub limit: Option<usize>,
    /// Its open connections: the same counter across generations.
    pub open: Arc<AtomicUsize>,
    pub metrics: ListenerMetrics,
    /// TLS termination, with the time a client has to finish its handshake.
    pub tls: Option<Tls>,
    /// Every connection starts with a PROXY header, read within `header_timeout`.
    pub proxy_protocol: bool,
    pub header_timeout: std::time::Duration,
    pub proxy_errors: prometheus::IntCounter,
    /// `max_connections_per_client`, with the counts (which outlive generations).
    pub per_client: Option<(u32, Arc<PerClient>)>,
    pub client_limited: prometheus::IntCounter,
    /// tcp: the rate limit every new connection goes through (http listeners apply
    /// theirs per request, in the engine).
    pub rate_limit: Option<Applied>,
}

pub(crate) struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// With `[acme] challenge = "tls-alpn-01"` on a listener with `acme` names: the
    /// configuration for the CA's `acme-tls/1` handshakes (the ClientHello is read
    /// first to choose).
    pub challenge: Option<Arc<rustls::ServerConfig>>,
    pub handshake_timeout: std::time::Duration,
    pub ok: prometheus::IntCounter,
    pub failed: prometheus::IntCounter,
    /// `http3 = true`: HTTP/3 on the listener's UDP sockets.
    pub quic: Option<super::quic::Quic>,
}

pub(crate) enum Engine {
    Tcp(Arc<l4::Listener>),
    Http(Arc<l7::Settings>),
}

/// What a generation is built from besides its `Config`: the state that outlives it.
pub(crate) struct Parts<'a> {
    pub registry: &'a Registry,
    pub pools: &'a l7::Pools,
    pub metrics: &'a Metrics,
    pub counters: &'a HashMap<String, Arc<AtomicUsize>>,
    /// Per-client connection counts of the listeners that limit them.
    pub clients: &'a HashMap<String, Arc<PerClient>>,
    /// The rate-limit rules of the generation serving now.
    pub limiters: &'a HashMap<String, Arc<Limiter>>,
    pub redis: Option<&'a Arc<RedisStore>>,
    pub spans: Option<&'a Arc<Exporter>>,
    /// The cache of the generation serving now.
    pub cache: Option<&'a Arc<Cache>>,
    pub acme: &'a crate::acme::Manager,
    pub tickets: &'a Arc<crate::tls::tickets::Ticketer>,
    pub stapler: &'a crate::tls::ocsp::Stapler,
}

impl Snapshot {
    /// Fails only if a listener's TLS settings cannot be put together, which the
    /// configuration's validation already rules out.
    pub(crate) fn build(
        config: Arc<Config>,
        generation: u64,
        parts: &Parts<'_>,
    ) -> Result<Snapshot, String> {
        let cache = config.cache.map(|settings| match parts.cache {
            Some(c) if c.settings == settings => c.clone(),
            _ => Arc::new(Cache::new(settings)),
        });
        let upstreams: HashMap<String, Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|u| (u.name.clone(), Arc::new(Upstream::build(u, parts.registry))))
            .collect();
        let http_upstreams: HashMap<String, Arc<l7::UpstreamTarget>> = if config
            .listeners
            .iter()
            .any(|l| l.protocol == Protocol::Http)
        {
            let mut targets = HashMap::new();
            for c in &config.upstreams {
                let Some(u) = upstreams.get(&c.name) else {
                    continue;
                };
                let tls = match &c.tls {
                    Some(t) => Some(
                        crate::tls::BackendTls::new(t, c.protocol.alpn())
                            .map_err(|e| format!("upstream {:?}: TLS: {e}", c.name))?,
                    ),
                    None => None,
                };
                let target = l7::UpstreamTarget::new(
                    u.clone(),
                    c.sticky.as_ref(),
                    tls,
                    parts.pools,
                    c.proxy_protocol,
                    parts.metrics,
                    match c.protocol {
                        UpstreamProtocol::Http1 => l7::Upstream2::No,
                        UpstreamProtocol::H2c | UpstreamProtocol::H2 => {
                            l7::Upstream2::Always(c.h2_keepalive)
                        }
                        UpstreamProtocol::Auto => l7::Upstream2::Alpn(c.h2_keepalive),
                    },
                );
                targets.insert(c.name.clone(), Arc::new(target));
            }
            targets
        } else {
            HashMap::new()
        };
        // The connection to Redis outlives generations while `[redis]` is unchanged.
        let redis = match (&config.redis, parts.redis) {
            (None, _) => None,
            (Some(r), Some(kept)) if kept.settings == *r => Some(kept.clone()),
            (Some(r), _) => Some(Arc::new(RedisStore::new(
                r,
                parts.metrics.redis_up.clone(),
            )?)),
        };
        let spans = match (
            config.tracing.as_ref().and_then(|t| t.otlp.as_ref()),
            parts.spans,
        ) {
            (None, _) => None,
            (Some(c), Some(kept)) if kept.collector == *c => Some(kept.clone()),
            (Some(c), _) => {
                let m = parts.metrics;
                let dropped = |r: &str| m.tracing_spans_dropped_total.with_label_values(&[r]);
                let counters = export::Counters {
                    exported: m.tracing_spans_exported_total.clone(),
                    queue_full: dropped("queue_full"),
                    export_failed: dropped("export_failed"),
                };
                Some(Exporter::start(c, counters).map_err(|e| format!("tracing.otlp: {e}"))?)
            }
        };
        let limiters = crate::limits::build(&config.rate_limits, parts.limiters, redis.as_ref());
        // A listener's certificates replaced while served, from the managers that
        // outlive generations: its `acme` names' certificate, and those whose OCSP
        // response is fetched.
        let live = |t: &crate::config::ListenerTls| -> Result<crate::tls::Live, String> {
            let acme = match (&config.acme, t.acme.is_empty()) {
                (Some(a), false) => vec![parts.acme.slot(&t.acme, a)?],
                _ => Vec::new(),
            };
            let stapled = t
                .certificates
                .iter()
                .zip(&t.ocsp_auto)
                .map(|(key, auto)| auto.then(|| parts.stapler.slot(key)).transpose())
                .collect::<Result<_, _>>()?;
            Ok(crate::tls::Live { acme, stapled })
        };
        let challenge =
            |t: &crate::config::ListenerTls| -> Result<Option<Arc<rustls::ServerConfig>>, String> {
                match &config.acme {
                    Some(a)
                        if !t.acme.is_empty()
                            && a.challenge == crate::config::AcmeChallenge::TlsAlpn01 =>
                    {
                        let challenges = parts.acme.challenges().clone();
                        crate::tls::challenge_config(Arc::new(move |name: &str| {
                            challenges.alpn(name)
                        }))
                        .map(Some)
                        .map_err(|e| format!("TLS-ALPN-01: {e}"))
                    }
                    _ => Ok(None),
                }
            };
        let tickets = (!config.global.tls_ticket_rotation.is_zero()).then(|| parts.tickets.clone());
        let mut listeners = HashMap::new();
        for l in &config.listeners {
            let applied = |name: &Option<String>| {
                name.as_ref()
                    .and_then(|n| limiters.get(n))
                    .map(|limiter| Applied {
                        limiter: limiter.clone(),
                        refused: parts
                            .metrics
                            .rate_limited_total
                            .with_label_values(&[&l.name, &limiter.rule.name]),
                    })
            };
            // Validation guarantees a tcp listener names an existing upstream.
            let upstream = l.upstream.as_ref().and_then(|u| upstreams.get(u));
            let engine = match (l.protocol, upstream) {
                (Protocol::Tcp, _) => {
                    let tcp = |up: &Arc<Upstream>| -> Result<Arc<l4::Settings>, String> {
                        let c = config.upstream(&up.name);
                        Ok(Arc::new(l4::Settings {
                            listener: l.name.clone(),
                            upstream: up.clone(),
                            idle_timeout: l.idle_timeout,
                            access_log: config.global.access_log,
                            proxy_protocol: c.and_then(|c| c.proxy_protocol),
                            timings: up
                                .backends()
                                .iter()
                                .map(|b| parts.metrics.backend_timings(&up.name, &b.name))
                                .collect(),
                            tls: match c.and_then(|c| c.tls.as_ref()) {
                                Some(t) => Some(
                                    crate::tls::BackendTls::new(t, &[])
                                        .map_err(|e| format!("upstream {:?}: TLS: {e}", up.name))?,
                                ),
                                None => None,
                            },
                        }))
                    };
                    let mut sni = Vec::new();
                    for r in &l.sni_routes {
                        // Validation guarantees the route names an existing upstream.
                        let Some(up) = upstreams.get(&r.upstream) else {
                            continue;
                        };
                        sni.push(l4::SniRoute {
                            pattern: r.pattern.clone(),
                            settings: tcp(up)?,
                            rate_limit: applied(&r.rate_limit),
                        });
                    }
                    let default = match upstream {
                        Some(up) => Some(tcp(up)?),
                        None => None,
                    };
                    Engine::Tcp(Arc::new(l4::Listener { default, sni }))
                }
                (Protocol::Http, _) => {
                    let mut settings = l7::Settings::build(
                        l,
                        &config,
                        &http_upstreams,
                        parts.metrics,
                        (cache.as_ref(), spans.as_ref()),
                        &|name| applied(name),
                    );
                    if config.acme.is_some() && l.tls.is_none() {
                        settings.acme_challenges = Some(parts.acme.challenges().clone());
                    }
                    Engine::Http(Arc::new(settings))
                }
            };
            let tls = match &l.tls {
                Some(t) => Some({
                    let server = crate::tls::server_config(t, live(t)?, tickets.clone())
                        .map_err(|e| format!("listener {:?}: TLS: {e}", l.name))?;
                    let quic = match &t.http3 {
                        Some(h3) => Some(
                            super::quic::Quic::build(&server, h3, l, parts.metrics)
                                .map_err(|e| format!("listener {:?}: QUIC: {e}", l.name))?,
                        ),
                        None => None,
                    };
                    Tls {
                        quic,
                        acceptor: tokio_rustls::TlsAcceptor::from(server),
                        challenge: challenge(t)?,
                        handshake_timeout: l.header_timeout,
                        ok: parts
                            .metrics
                            .tls_handshakes_total
                            .with_label_values(&[&l.name, "ok"]),
                        failed: parts
                            .metrics
                            .tls_handshakes_total
                            .with_label_values(&[&l.name, "failed"]),
                    }
                }),
                None => None,
            };
            let entry = Arc::new(ListenerEntry {
                tls,
                name: l.name.clone(),
                access: l.access.clone(),
                engine,
                limit: l.max_connections,
                open: parts.counters.get(&l.name).cloned().unwrap_or_default(),
                metrics: parts.metrics.listener(&l.name),
                proxy_protocol: l.proxy_protocol,
                header_timeout: l.header_timeout,
                proxy_errors: parts
                    .metrics
                    .proxy_protocol_errors_total
                    .with_label_values(&[&l.name]),
                per_client: l
                    .max_connections_per_client
                    .map(|max| (max, parts.clients.get(&l.name).cloned().unwrap_or_default())),
                client_limited: parts
                    .metrics
                    .client_limited_total
                    .with_label_values(&[&l.name]),
                rate_limit: match l.protocol {
                    Protocol::Tcp => applied(&l.rate_limit),
                    Protocol::Http => None,
                },
            });
            for (key, _) in bind_keys(l) {
                listeners.insert(key, entry.clone());
            }
        }
        Ok(Snapshot {
            generation,
            config,
            upstreams,
            cache,
            listeners,
            limiters,
            redis,
            spans,
        })
    }

    /// The listener at `key`, or, when a reload moved listener `name` to another
    /// address, that listener: connections the old socket accepted before it closed
    /// are served by the listener they were meant for.
    pub(crate) fn listener_or_moved(
        &self,
        key: &BindKey,
        name: &str,
    ) -> Option<&Arc<ListenerEntry>> {
        self.listeners
            .get(key)
            .or_else(|| self.listeners.values().find(|e| e.name == name))
    }

    /// A generation that serves nothing: the placeholder before the first.
    pub(crate) fn empty() -> Snapshot {
        Snapshot {
            generation: 0,
            config: Arc::new(Config::empty()),
            upstreams: HashMap::new(),
            cache: None,
            listeners: HashMap::new(),
            limiters: HashMap::new(),
            redis: None,
            spans: None,
        }
    }
}
