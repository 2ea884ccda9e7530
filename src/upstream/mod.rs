//! Upstreams as both engines use them: the backends of one configuration generation,
//! their live state, and `pick`, which hands out a [`Lease`].
//!
//! Live state ([`BackendState`]: health, draining, in-flight count, outcome counters) is
//! not part of a generation. It lives in the [`Registry`], keyed by (upstream name,
//! backend address), so a reload that keeps a backend keeps its state.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::balance::{Balancer, Candidates, Selection};
use crate::config;

/// The live state of one backend, shared by every generation that has it.
#[derive(Debug)]
pub struct BackendState {
    healthy: AtomicBool,
    draining: AtomicBool,
    active: AtomicUsize,
    succeeded: AtomicU64,
    failed: AtomicU64,
    consecutive_failures: AtomicU32,
    /// The registry's eligibility epoch, bumped on every health or drain change.
    epoch: Arc<AtomicU64>,
}

impl BackendState {
    fn new(epoch: Arc<AtomicU64>) -> Self {
        BackendState {
            healthy: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            epoch,
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Returns whether the state changed.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        let changed = self.healthy.swap(healthy, Ordering::AcqRel) != healthy;
        if changed {
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        changed
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Returns whether the state changed.
    pub fn set_draining(&self, draining: bool) -> bool {
        let changed = self.draining.swap(draining, Ordering::AcqRel) != draining;
        if changed {
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        changed
    }

    /// Connections or requests in flight on this backend.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub fn succeeded(&self) -> u64 {
        self.succeeded.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }
}

/// Live backend state across generations.
#[derive(Debug, Default)]
pub struct Registry {
    epoch: Arc<AtomicU64>,
    /// Touched only when a generation is built, never per request.
    states: Mutex<HashMap<(String, String), Arc<BackendState>>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The state of (upstream, address), created healthy if it is new.
    pub fn state(&self, upstream: &str, address: &str) -> Arc<BackendState> {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states
            .entry((upstream.to_string(), address.to_string()))
            .or_insert_with(|| Arc::new(BackendState::new(self.epoch.clone())))
            .clone()
    }

    /// Forgets every backend that `config` no longer has.
    pub fn retain(&self, config: &config::Config) {
        let keep: HashSet<(&str, &str)> = config
            .upstreams
            .iter()
            .flat_map(|u| {
                u.backends
                    .iter()
                    .map(move |b| (u.name.as_str(), b.address.as_str()))
            })
            .collect();
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.retain(|(u, a), _| keep.contains(&(u.as_str(), a.as_str())));
    }

    pub fn len(&self) -> usize {
        self.states.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One backend of one generation.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    /// As written in the file: the backend's identity.
    pub address: String,
    pub addr: SocketAddr,
    pub weight: u32,
    pub state: Arc<BackendState>,
}

impl Backend {
    pub fn is_eligible(&self) -> bool {
        self.weight > 0 && self.state.is_healthy() && !self.state.is_draining()
    }
}

/// An upstream of one generation: its backends, its strategy and its settings.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub connect_timeout: Duration,
    pub retries: u32,
    backends: Vec<Arc<Backend>>,
    balancer: Balancer,
    epoch: Arc<AtomicU64>,
}

/// What a pick may depend on.
#[derive(Debug, Default, Clone, Copy)]
pub struct PickContext<'a> {
    pub client: Option<SocketAddr>,
    /// Backends (by index) already tried for this connection or request.
    pub exclude: &'a [usize],
}

struct View<'a> {
    backends: &'a [Arc<Backend>],
    epoch: u64,
}

impl Candidates for View<'_> {
    fn len(&self) -> usize {
        self.backends.len()
    }
    fn weight(&self, i: usize) -> u32 {
        self.backends[i].weight
    }
    fn is_eligible(&self, i: usize) -> bool {
        self.backends[i].is_eligible()
    }
    fn epoch(&self) -> u64 {
        self.epoch
    }
}

impl Upstream {
    /// Builds the upstream of a new generation, taking live state from `registry`.
    pub fn build(cfg: &config::Upstream, registry: &Registry) -> Upstream {
        let backends = cfg
            .backends
            .iter()
            .map(|b| {
                Arc::new(Backend {
                    name: b.name.clone(),
                    address: b.address.clone(),
                    addr: b.resolved,
                    weight: b.weight,
                    state: registry.state(&cfg.name, &b.address),
                })
            })
            .collect();
        // The config refuses every strategy this build does not have.
        debug_assert_eq!(cfg.strategy, config::Strategy::RoundRobin);
        let balancer = Balancer::round_robin();
        Upstream {
            name: cfg.name.clone(),
            connect_timeout: cfg.connect_timeout,
            retries: cfg.retries,
            backends,
            balancer,
            epoch: registry.epoch.clone(),
        }
    }

    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// Picks a backend by the upstream's strategy; `None` when none is eligible.
    pub fn pick(&self, ctx: &PickContext<'_>) -> Option<Lease> {
        let view = View {
            backends: &self.backends,
            epoch: self.epoch.load(Ordering::Acquire),
        };
        let i = self.balancer.select(
            &view,
            Selection {
                exclude: ctx.exclude,
            },
        )?;
        let backend = self.backends[i].clone();
        backend.state.active.fetch_add(1, Ordering::Relaxed);
        Some(Lease {
            backend,
            index: i,
            outcome: None,
        })
    }
}

/// How the work given to a backend went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

/// A picked backend. While held it counts as one in-flight connection or request on
/// that backend; dropping it releases the count and records the outcome, if one was set.
#[derive(Debug)]
pub struct Lease {
    backend: Arc<Backend>,
    index: usize,
    outcome: Option<Outcome>,
}

impl Lease {
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The backend, to keep after the lease is gone (for logging).
    pub fn shared_backend(&self) -> Arc<Backend> {
        self.backend.clone()
    }

    /// The backend's index in its upstream, for `PickContext::exclude`.
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn set_outcome(&mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let s = &self.backend.state;
        s.active.fetch_sub(1, Ordering::Relaxed);
        match self.outcome {
            Some(Outcome::Success) => {
                s.succeeded.fetch_add(1, Ordering::Relaxed);
                s.consecutive_failures.store(0, Ordering::Relaxed);
            }
            Some(Outcome::Failure) => {
                s.failed.fetch_add(1, Ordering::Relaxed);
                s.consecutive_failures.fetch_add(1, Ordering::Relaxed);
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(backends: &str) -> config::Config {
        let src = format!(
            "[[listener]]\nname = \"t\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nupstream = \"app\"\n\
             [upstream.app]\nbackends = [{backends}]\n"
        );
        config::Config::parse(&src, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn a_lease_counts_in_flight_work_until_dropped() {
        let reg = Registry::new();
        let up = Upstream::build(&config("{ address = \"127.0.0.1:1\" }").upstreams[0], &reg);
        let a = up.pick(&PickContext::default()).unwrap();
        let b = up.pick(&PickContext::default()).unwrap();
        assert_eq!(up.backends()[0].state.active(), 2);
        drop(a);
        assert_eq!(up.backends()[0].state.active(), 1);
        drop(b);
        assert_eq!(up.backends()[0].state.active(), 0);
    }

    #[test]
    fn a_lease_records_its_outcome_when_dropped() {
        let reg = Registry::new();
        let up = Upstream::build(&config("{ address = \"127.0.0.1:1\" }").upstreams[0], &reg);
        for _ in 0..2 {
            let mut l = up.pick(&PickContext::default()).unwrap();
            l.set_outcome(Outcome::Failure);
        }
        let s = &up.backends()[0].state;
        assert_eq!((s.failed(), s.consecutive_failures()), (2, 2));
        up.pick(&PickContext::default())
            .unwrap()
            .set_outcome(Outcome::Success);
        assert_eq!((s.succeeded(), s.consecutive_failures()), (1, 0));
    }

    #[test]
    fn state_survives_a_rebuild_for_the_same_address_only() {
        let reg = Registry::new();
        let cfg1 = config("{ address = \"127.0.0.1:1\" }, { address = \"127.0.0.1:2\" }");
        let gen1 = Upstream::build(&cfg1.upstreams[0], &reg);
        gen1.backends()[0].state.set_draining(true);
        gen1.backends()[1].state.set_healthy(false);
        let cfg2 =
            config("{ address = \"127.0.0.1:2\", weight = 3 }, { address = \"127.0.0.1:3\" }");
        reg.retain(&cfg2);
        let gen2 = Upstream::build(&cfg2.upstreams[0], &reg);
        assert!(!gen2.backends()[0].state.is_healthy());
        assert!(gen2.backends()[1].state.is_healthy());
        assert_eq!(reg.len(), 2);
        // The drained backend was removed, so re-adding it starts afresh.
        let gen3 = Upstream::build(&cfg1.upstreams[0], &reg);
        assert!(!gen3.backends()[0].state.is_draining());
    }

    #[test]
    fn a_drained_or_down_backend_is_not_picked() {
        let reg = Registry::new();
        let up = Upstream::build(
            &config("{ address = \"127.0.0.1:1\" }, { address = \"127.0.0.1:2\" }").upstreams[0],
            &reg,
        );
        up.backends()[0].state.set_draining(true);
        for _ in 0..4 {
            assert_eq!(up.pick(&PickContext::default()).unwrap().index(), 1);
        }
        up.backends()[1].state.set_healthy(false);
        assert!(up.pick(&PickContext::default()).is_none());
        up.backends()[0].state.set_draining(false);
        assert_eq!(up.pick(&PickContext::default()).unwrap().index(), 0);
    }
}
