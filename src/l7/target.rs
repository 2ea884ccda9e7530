//! An upstream as the HTTP engine sees it: the pool of each backend, TLS, sticky
//! cookies, and whether the backends speak HTTP/2.

use std::sync::Arc;
use std::time::Duration;

use super::pool::{BackendPool, Pools};
use crate::admin::metrics::Metrics;
use crate::config::{self};
use crate::upstream::Upstream;

use super::sticky;

/// An upstream as the HTTP engine uses it: the pool of each backend, by index.
#[derive(Debug)]
pub struct UpstreamTarget {
    pub upstream: Arc<Upstream>,
    pub pools: Vec<Arc<BackendPool>>,
    pub sticky: Option<sticky::StickyCookie>,
    /// TLS to the backends.
    pub tls: Option<crate::tls::BackendTls>,
    /// A PROXY header on each backend connection (`Some(true)`: v2); connections then
    /// belong to one client connection.
    pub proxy_protocol: Option<bool>,
    /// Per backend (as `pools`): response and connect times, connections opened and
    /// reused.
    pub timings: Vec<crate::admin::metrics::BackendTimings>,
    /// Whether the backends speak HTTP/2.
    pub http2: Upstream2,
}

/// `upstream.NAME.protocol` as the engine uses it, with the HTTP/2 PING interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream2 {
    /// HTTP/1.1.
    No,
    /// `h2c`, or `h2` over TLS.
    Always(Duration),
    /// `auto`: what each backend picks in ALPN, remembered until a reconnect.
    Alpn(Duration),
}

impl Upstream2 {
    /// HTTP/2 may be spoken.
    pub fn possible(self) -> bool {
        self != Upstream2::No
    }
}

impl UpstreamTarget {
    pub fn new(
        upstream: Arc<Upstream>,
        sticky: Option<&config::Sticky>,
        tls: Option<crate::tls::BackendTls>,
        pools: &Pools,
        proxy_protocol: Option<bool>,
        metrics: &Metrics,
        http2: Upstream2,
    ) -> Self {
        let timings = upstream
            .backends()
            .iter()
            .map(|b| metrics.backend_timings(&upstream.name, &b.name))
            .collect();
        let tls_id = tls.as_ref().map_or(0, crate::tls::BackendTls::fingerprint);
        let list = upstream
            .backends()
            .iter()
            .map(|b| pools.get(&upstream.name, &b.address, b.addr, tls_id))
            .collect();
        let sticky = sticky.map(|s| sticky::StickyCookie::new(s, &upstream));
        UpstreamTarget {
            upstream,
            pools: list,
            sticky,
            tls,
            proxy_protocol,
            timings,
            http2,
        }
    }
}
