//! Upstreams as both engines use them: the backends of one configuration generation,
//! their live state, and `pick`, which hands out a [`Lease`].
//!
//! Live state ([`BackendState`]: health, draining, passive ejection, in-flight count,
//! latency, outcome counters) is not part of a generation. It lives in the [`Registry`],
//! keyed by (upstream name, backend address), so a reload that keeps a backend keeps
//! its state. Nothing here knows whether it serves TCP or HTTP.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

use crate::balance::{
    Balancer, Candidates, ConsistentHash, Ewma, LeastConnections, Random, Selection,
};
use crate::config::{self, HashKey, Strategy};
use crate::hash::hash_bytes;
use crate::health::passive::Passive;

mod lease;
mod state;
pub use lease::{BackendOutcome, Lease};
pub use state::{eligibility_changes, Backend, BackendState, Registry};
use state::{now_ms, Changes};

/// Most backends one connection or request tries, whatever `retries` says, to bound
/// the work a single client can cause.
pub const MAX_ATTEMPTS: usize = 16;

/// The most requests (or connections) one upstream lets wait for a backend under
/// `max_connections_per_backend`; past it, they are refused at once.
pub const MAX_QUEUE: usize = 4096;

/// Why no lease could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoLease {
    /// No backend is eligible (down, drained, ejected, weight 0, or all tried).
    NoBackend,
    /// Every eligible backend stayed at its cap for `queue_timeout`.
    QueueTimeout,
    /// The queue was full.
    QueueFull,
}

/// A place in an upstream's queue, given back when dropped.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An upstream of one generation: its backends, its strategy and its settings.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub strategy: Strategy,
    pub connect_timeout: Duration,
    pub retries: u32,
    pub hash_key: HashKey,
    backends: Vec<Arc<Backend>>,
    /// The backends' state, weights and inverse weights side by side, so that a
    /// strategy scanning them follows one pointer per backend, not two.
    states: Vec<Arc<BackendState>>,
    weights: Vec<u32>,
    inv_weights: Vec<f64>,
    balancer: Balancer,
    passive: Option<Passive>,
    changes: Arc<Changes>,
    /// `max_connections_per_backend`; 0: no cap.
    cap: usize,
    pub queue_timeout: Duration,
}

/// What a pick may depend on.
#[derive(Debug, Default, Clone, Copy)]
pub struct PickContext<'a> {
    pub client: Option<SocketAddr>,
    /// Backends (by index) already tried for this connection or request.
    pub exclude: &'a [usize],
    /// The request's hash for `consistent_hash` ([`Upstream::hashes`] says whether one is needed); `None` hashes
    /// the client address.
    pub hash: Option<u64>,
}

struct View<'a> {
    states: &'a [Arc<BackendState>],
    weights: &'a [u32],
    inv_weights: &'a [f64],
    epoch: u64,
}

impl Candidates for View<'_> {
    fn len(&self) -> usize {
        self.states.len()
    }
    fn weight(&self, i: usize) -> u32 {
        self.weights[i]
    }
    fn inv_weight(&self, i: usize) -> f64 {
        self.inv_weights[i]
    }
    fn is_eligible(&self, i: usize) -> bool {
        let s = &self.states[i];
        self.weights[i] > 0 && s.is_healthy() && !s.is_draining() && !s.is_ejected()
    }
    fn active(&self, i: usize) -> u64 {
        self.states[i].active() as u64
    }
    fn latency_ns(&self, i: usize) -> f64 {
        self.states[i].latency_ns()
    }
    fn epoch(&self) -> u64 {
        self.epoch
    }
}

/// The hash of a client address, for `hash_key = "source_ip"` and as the fallback.
pub fn hash_ip(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => hash_bytes(&v4.octets()),
        IpAddr::V6(v6) => hash_bytes(&v6.octets()),
    }
}

impl Upstream {
    /// Builds the upstream of a new generation, taking live state from `registry`.
    pub fn build(cfg: &config::Upstream, registry: &Registry) -> Upstream {
        let backends: Vec<Arc<Backend>> = cfg
            .backends
            .iter()
            .map(|b| {
                Arc::new(Backend {
                    name: b.name.clone(),
                    address: b.address.clone(),
                    host: b.host.clone(),
                    addr: b.resolved,
                    weight: b.weight,
                    state: registry.state(&cfg.name, &b.address),
                })
            })
            .collect();
        let balancer = match cfg.strategy {
            Strategy::RoundRobin => Balancer::round_robin(),
            Strategy::LeastConnections => Balancer::LeastConnections(LeastConnections::new()),
            Strategy::Random => Balancer::Random(Random::new()),
            Strategy::Ewma => Balancer::Ewma(Ewma::new()),
            Strategy::ConsistentHash => {
                let ids: Vec<(&str, u32)> = backends
                    .iter()
                    .map(|b| (b.name.as_str(), b.weight))
                    .collect();
                Balancer::ConsistentHash(ConsistentHash::new(&ids))
            }
        };
        let passive = cfg.health.as_ref().and_then(Passive::of);
        let states = backends.iter().map(|b| b.state.clone()).collect();
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        let inv_weights = weights
            .iter()
            .map(|w| 1.0 / f64::from((*w).max(1)))
            .collect();
        Upstream {
            states,
            weights,
            inv_weights,
            name: cfg.name.clone(),
            strategy: cfg.strategy,
            connect_timeout: cfg.connect_timeout,
            retries: cfg.retries,
            hash_key: cfg.hash_key.clone(),
            backends,
            balancer,
            passive,
            changes: Registry::changes(&mut registry.lock(), &cfg.name),
            cap: cfg.max_connections_per_backend as usize,
            queue_timeout: cfg.queue_timeout,
        }
    }

    /// How many backends one connection or request may try: the first and `retries`
    /// more, at most `MAX_ATTEMPTS`, for both engines.
    pub fn attempts(&self) -> usize {
        (self.retries as usize + 1).min(MAX_ATTEMPTS)
    }

    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// Whether the strategy looks at [`PickContext::hash`].
    pub fn hashes(&self) -> bool {
        self.strategy == Strategy::ConsistentHash
    }

    /// Ends the ejections of this upstream's backends whose time ran out.
    fn expire_ejections(&self) {
        if self.changes.ejected.load(Ordering::Acquire) == 0 {
            return;
        }
        let now = now_ms();
        for b in &self.backends {
            let until = b.state.ejected_until.load(Ordering::Acquire);
            if until != 0 && now >= until && b.state.clear_ejection() {
                info!(upstream = %self.name, backend.name = %b.name, "ejection over: backend back in rotation");
            }
        }
    }

    /// A lease on backend `i`, unless it is at its cap: the count is taken only while
    /// below it, so concurrent picks never push a backend past it.
    fn lease(&self, i: usize) -> Option<Lease> {
        let backend = self.backends.get(i)?.clone();
        let active = &backend.state.active;
        if self.cap == 0 {
            active.fetch_add(1, Ordering::Relaxed);
        } else {
            active
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                    (n < self.cap).then_some(n + 1)
                })
                .ok()?;
        }
        Some(Lease {
            backend,
            index: i,
            outcome: None,
            passive: self.passive,
            freed: (self.cap > 0).then(|| self.changes.clone()),
        })
    }

    /// Picks a backend by the upstream's strategy; `None` when none is eligible (or,
    /// under `max_connections_per_backend`, every eligible one is at its cap).
    pub fn pick(&self, ctx: &PickContext<'_>) -> Option<Lease> {
        self.expire_ejections();
        let mut full: Option<Vec<usize>> = None;
        loop {
            let exclude = full.as_deref().unwrap_or(ctx.exclude);
            let i = self.select(ctx, exclude)?;
            if let Some(lease) = self.lease(i) {
                return Some(lease);
            }
            // At its cap: look among the others.
            full.get_or_insert_with(|| ctx.exclude.to_vec()).push(i);
        }
    }

    /// As [`pick`](Self::pick), but when every eligible backend is at its cap the
    /// request waits (in a queue bounded by [`MAX_QUEUE`]) for one to free up, at most
    /// `queue_timeout`.
    pub async fn acquire(&self, ctx: &PickContext<'_>) -> Result<Lease, NoLease> {
        if self.cap == 0 {
            return self.pick(ctx).ok_or(NoLease::NoBackend);
        }
        // Those already waiting go first.
        if self.changes.queued.load(Ordering::Acquire) == 0 {
            if let Some(lease) = self.pick(ctx) {
                return Ok(lease);
            }
        }
        if self.select(ctx, ctx.exclude).is_none() {
            return Err(NoLease::NoBackend);
        }
        let queued = &self.changes.queued;
        if queued.fetch_add(1, Ordering::AcqRel) >= MAX_QUEUE {
            queued.fetch_sub(1, Ordering::AcqRel);
            return Err(NoLease::QueueFull);
        }
        let _place = Queued(queued);
        let deadline = Instant::now() + self.queue_timeout;
        loop {
            let freed = self.changes.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(lease) = self.pick(ctx) {
                return Ok(lease);
            }
            if self.select(ctx, ctx.exclude).is_none() {
                return Err(NoLease::NoBackend);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(NoLease::QueueTimeout);
            }
        }
    }

    /// The strategy's choice among eligible backends not in `exclude`.
    fn select(&self, ctx: &PickContext<'_>, exclude: &[usize]) -> Option<usize> {
        let view = View {
            states: &self.states,
            weights: &self.weights,
            inv_weights: &self.inv_weights,
            epoch: self.changes.epoch.load(Ordering::Acquire),
        };
        let hash = if self.hashes() {
            ctx.hash.or_else(|| ctx.client.map(|c| hash_ip(c.ip())))
        } else {
            None
        };
        self.balancer.select(&view, Selection { exclude, hash })
    }

    /// A lease on backend `i` if it is eligible and below its cap (for sticky
    /// sessions).
    pub fn pick_backend(&self, i: usize) -> Option<Lease> {
        self.expire_ejections();
        self.backends
            .get(i)
            .filter(|b| b.is_eligible())
            .and_then(|_| self.lease(i))
    }
}

#[cfg(test)]
mod tests;
