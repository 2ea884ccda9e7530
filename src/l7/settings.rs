//! A listener's settings for the HTTP engine, compiled from one configuration
//! generation: routes against the generation's upstreams, limits, timeouts, header
//! rules, the hyper builders.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, StatusCode};

use super::route::{Action, RouteTable, Target};
use super::static_files::StaticDir;
use super::target::UpstreamTarget;
use super::{headers, path, route, shaping};
use crate::admin::metrics::{Metrics, RequestMetrics};
use crate::config::{self, RouteTarget};

/// Request heads up to this size are always allowed.
const MIN_HEADER_BUFFER: u64 = 8192;

/// HTTP/2 limits towards clients (RFC 9113 6.5.2), all set explicitly.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 128;
/// Streams a client may reset before their answer, beyond the streams answered
/// (rapid reset, CVE-2023-44487): past it, the connection is closed with
/// ENHANCE_YOUR_CALM.
pub const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams fulcrum may reset for the client's protocol errors before it closes the
/// connection (CVE-2019-9514 and kin).
pub const H2_MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// Bytes queued per connection for sending before response bodies wait.
pub const H2_MAX_SEND_BUFFER: usize = 400 * 1024;
pub const H2_STREAM_WINDOW: u32 = 1024 * 1024;
pub const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;

/// What an http listener needs, from one configuration generation.
pub struct Settings {
    pub listener: Arc<str>,
    pub routes: RouteTable,
    pub max_body_size: u64,
    /// A request body must have arrived whole this long after the request began.
    pub body_timeout: Duration,
    /// Bytes per second below which a transfer is cut (0: off).
    pub min_rate: u64,
    /// How paths are normalised before routes match them.
    pub paths: path::Rules,
    /// Send the normalised path to the backend.
    pub forward_normalized_path: bool,
    pub idle_timeout: Duration,
    pub redirect_https: bool,
    /// Plain listeners: HTTP/1.1 and h2c, or one of them only.
    pub h2c: config::H2c,
    /// A plain listener with `[acme]` configured: HTTP-01 answers, before routing.
    pub acme_challenges: Option<Arc<crate::acme::Challenges>>,
    pub access_log: bool,
    /// Text logs: values a client controls are quoted when they could pass for fields.
    pub quote_log_values: bool,
    pub header_timeout: Duration,
    /// `X-Forwarded-Proto`.
    pub scheme: &'static str,
    /// How to compress, when a route of the listener does.
    pub compression: Option<Arc<config::Compression>>,
    /// Bodies served in place of fulcrum's own for these statuses (few: a list).
    pub error_pages: Vec<(StatusCode, HeaderValue, bytes::Bytes)>,
    /// The listener's header rules (a route's apply after them).
    pub request_headers: Option<Arc<headers::Rules>>,
    pub response_headers: Option<Arc<headers::Rules>>,
    /// The listener's rate limit, applied to every request before routing.
    pub rate_limit: Option<crate::limits::Applied>,
    /// Peers whose `X-Forwarded-For` / `Forwarded` name the client.
    pub trusted_proxies: Vec<config::IpNet>,
    /// `[tracing] sample`: requests take part in traces; `None`: `traceparent` passes
    /// as any other header.
    pub trace_sample: Option<f64>,
    /// `[tracing] otlp`: where sampled requests' spans go.
    pub spans: Option<Arc<crate::telemetry::export::Exporter>>,
    /// The listener's access rules, applied per request to the client trusted
    /// proxies name (the connection's peer was checked at accept).
    pub access: config::AccessRules,
    /// Request counters for requests no route took (403, 404, 400, redirects).
    pub(super) unrouted: Arc<RequestMetrics>,
    /// `fulcrum_connections_closed_total` and its older name
    /// `fulcrum_http_connections_closed_total`, for connections that ended before
    /// a first request.
    pub(super) closed_total: [prometheus::IntCounterVec; 2],
    /// `fulcrum_connections_parked`.
    pub(super) parked: prometheus::IntGauge,
    /// `fulcrum_http_requests_by_protocol_total`: HTTP/1.x, HTTP/2, HTTP/3.
    pub(super) by_protocol: [prometheus::IntCounter; 3],
    /// `tls.http3`: responses on TCP advertise HTTP/3 on the connection's port.
    pub http3: bool,
    /// The largest request head accepted (`max_header_size`, at least the minimum
    /// buffer): HTTP/1's head, HTTP/2's header list and HTTP/3's field section limit.
    pub(super) max_header_list: u64,
    /// `abort_on_close`: a client's end of stream while its request is handled
    /// cancels the request. Otherwise a client that shuts down its sending side
    /// after a whole request (`printf ... | nc -N`, scripts, health checkers) still
    /// gets its response.
    pub(super) abort_on_close: bool,
    pub(super) http2: super::h2::server::Config,
}

impl Settings {
    /// Counts a connection that ended without a request, by `reason`.
    pub fn closed(&self, reason: &str) {
        for counter in &self.closed_total {
            counter.with_label_values(&[&self.listener, reason]).inc();
        }
    }

    /// Compiles a listener's routes against the generation's upstreams.
    /// `config`: the generation's whole configuration (its `[global]`,
    /// `[compression]` and `[tracing]`).
    pub fn build(
        l: &config::Listener,
        config: &config::Config,
        upstreams: &HashMap<String, Arc<UpstreamTarget>>,
        metrics: &Metrics,
        (cache, spans): (
            Option<&Arc<crate::cache::Cache>>,
            Option<&Arc<crate::telemetry::export::Exporter>>,
        ),
        rate_limit: &dyn Fn(&Option<String>) -> Option<crate::limits::Applied>,
    ) -> Settings {
        let (global, compression, tracing) =
            (&config.global, &config.compression, config.tracing.as_ref());
        let counters = cache.map(|_| Arc::new(super::cache_route::Counters::new(metrics)));
        let action = |index: usize, r: &config::Route| -> Option<Action> {
            let (target, timeout, strip, caching) =
                (&r.target, r.timeout, r.path_prefix.as_ref(), r.cache);
            let (target, label) = match target {
                RouteTarget::Upstream(name) => (
                    Target::Upstream(upstreams.get(name)?.clone()),
                    name.as_str(),
                ),
                RouteTarget::Static(dir) => {
                    (Target::Static(Arc::new(StaticDir::new(dir.clone()))), "-")
                }
                RouteTarget::Redirect(r) => (Target::Redirect(Arc::new(r.clone())), "-"),
            };
            let rewrite = match &r.rewrite {
                Some(rw) => Some(shaping::PathRewrite::compile(rw)?),
                None => None,
            };
            Some(Action {
                target,
                timeout,
                strip_prefix: strip.cloned(),
                metrics: metrics.requests(&l.name, label),
                cache: match (caching, cache, &counters) {
                    (true, Some(cache), Some(counters)) => Some(super::cache_route::CacheRoute {
                        cache: cache.clone(),
                        counters: counters.clone(),
                        id: Arc::from(format!("{}#{index}", l.name)),
                    }),
                    _ => None,
                },
                upgrades: r.upgrades.clone(),
                static_hidden: r.static_hidden,
                rewrite,
                compress: r.compress,
                request_headers: headers::shared(&r.request_headers),
                response_headers: headers::shared(&r.response_headers),
                rate_limit: rate_limit(&r.rate_limit),
            })
        };
        let routes = l
            .routes
            .iter()
            .enumerate()
            .filter_map(|(index, r)| {
                Some(route::Route {
                    host: r.host.clone(),
                    path_prefix: r.path_prefix.clone(),
                    methods: r.methods.iter().filter_map(|m| m.parse().ok()).collect(),
                    headers: r
                        .headers
                        .iter()
                        .filter_map(|(n, v)| {
                            Some((n.parse().ok()?, HeaderValue::from_str(v).ok()?))
                        })
                        .collect(),
                    action: action(index, r)?,
                })
            })
            .collect();
        let default = l.upstream.as_ref().and_then(|u| {
            action(
                l.routes.len(),
                &config::Route {
                    host: None,
                    path_prefix: None,
                    methods: Vec::new(),
                    headers: Vec::new(),
                    target: RouteTarget::Upstream(u.clone()),
                    timeout: config::DEFAULT_ROUTE_TIMEOUT,
                    cache: false,
                    upgrades: config::DEFAULT_UPGRADES.map(String::from).to_vec(),
                    static_hidden: false,
                    rewrite: None,
                    request_headers: None,
                    response_headers: None,
                    compress: false,
                    rate_limit: None,
                },
            )
        });
        let header_buf = l.max_header_size.max(MIN_HEADER_BUFFER);
        // Every HTTP/2 limit is set here. No pings from fulcrum; a client's pings do
        // not keep a connection open either (see `idle`).
        let http2 = super::h2::server::Config {
            max_streams: H2_MAX_CONCURRENT_STREAMS,
            stream_window: H2_STREAM_WINDOW,
            conn_window: H2_CONNECTION_WINDOW,
            max_header_list: header_buf.min(u64::from(u32::MAX)) as usize,
            max_send_buffer: H2_MAX_SEND_BUFFER,
            max_early_resets: H2_MAX_PENDING_ACCEPT_RESETS,
            max_error_resets: H2_MAX_LOCAL_ERROR_RESETS,
        };
        Settings {
            unrouted: metrics.requests(&l.name, "-"),
            closed_total: [
                metrics.connections_closed_total.clone(),
                metrics.http_connections_closed_total.clone(),
            ],
            parked: metrics.connections_parked.with_label_values(&[&l.name]),
            by_protocol: ["http/1.1", "h2", "h3"].map(|p| {
                metrics
                    .http_requests_by_protocol_total
                    .with_label_values(&[&l.name, p])
            }),
            http3: l.tls.as_ref().is_some_and(|t| t.http3.is_some()),
            max_header_list: header_buf,
            listener: Arc::from(l.name.as_str()),
            routes: RouteTable { routes, default },
            max_body_size: l.max_body_size,
            body_timeout: l.body_timeout,
            min_rate: l.min_rate,
            paths: path::Rules {
                merge_slashes: l.merge_slashes,
                allow_encoded_slashes: l.allow_encoded_slashes,
            },
            forward_normalized_path: l.forward_normalized_path,
            idle_timeout: l.idle_timeout,
            redirect_https: l.redirect_https,
            h2c: l.h2c,
            acme_challenges: None,
            access_log: global.access_log,
            quote_log_values: global.log_format == config::LogFormat::Text,
            header_timeout: l.header_timeout,
            scheme: if l.tls.is_some() { "https" } else { "http" },
            compression: l
                .routes
                .iter()
                .any(|r| r.compress)
                .then(|| Arc::new(compression.clone())),
            error_pages: l
                .error_pages
                .iter()
                .filter_map(|p| {
                    Some((
                        StatusCode::from_u16(p.status).ok()?,
                        HeaderValue::from_static(p.content_type),
                        p.body.clone(),
                    ))
                })
                .collect(),
            request_headers: headers::shared(&l.request_headers),
            response_headers: headers::shared(&l.response_headers),
            rate_limit: rate_limit(&l.rate_limit),
            trusted_proxies: l.trusted_proxies.clone(),
            trace_sample: tracing.map(|t| t.sample),
            spans: spans.cloned(),
            access: l.access.clone(),
            abort_on_close: l.abort_on_close,
            http2,
        }
    }
}
