//! The response cache as a route holds it: the cache, the route's part of every key,
//! and the counters of `fulcrum_cache_requests_total`. What a cached route does with a
//! request is `cached.rs`'s.

use std::sync::Arc;

use http::Uri;
use prometheus::IntCounter;

use crate::admin::metrics::Metrics;
use crate::cache::status::CacheOutcome;
use crate::cache::{Cache, Key};

/// The cache as a route uses it, with the counters of `fulcrum_cache_requests_total`.
#[derive(Debug, Clone)]
pub struct CacheRoute {
    pub cache: Arc<Cache>,
    pub counters: Arc<Counters>,
    /// The listener and route, part of every key this route stores under.
    pub id: Arc<str>,
}

impl CacheRoute {
    pub(super) fn key(&self, https: bool, host: &str, uri: &Uri) -> Key {
        Key::new(&self.id, https, host, uri)
    }
}

#[derive(Debug)]
pub struct Counters {
    hit: IntCounter,
    miss: IntCounter,
    stale: IntCounter,
    revalidated: IntCounter,
    bypass: IntCounter,
}

impl Counters {
    pub fn new(metrics: &Metrics) -> Counters {
        let c = |r: &str| metrics.cache_requests_total.with_label_values(&[r]);
        Counters {
            hit: c("hit"),
            miss: c("miss"),
            stale: c("stale"),
            revalidated: c("revalidated"),
            bypass: c("bypass"),
        }
    }
}

/// Counts `outcome` in `fulcrum_cache_requests_total`.
pub(super) fn count(outcome: CacheOutcome, c: &Counters) {
    match outcome {
        CacheOutcome::Hit => c.hit.inc(),
        CacheOutcome::Miss => c.miss.inc(),
        CacheOutcome::Stale => c.stale.inc(),
        CacheOutcome::Revalidated => c.revalidated.inc(),
        CacheOutcome::Bypass => c.bypass.inc(),
    }
}
