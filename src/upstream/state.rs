//! The live state of one backend, shared by every generation that has it (health,
//! ejection, connections in flight, EWMA), and the registry that keeps it across
//! generations.

use crate::config::{self};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::time::Instant;

/// Decay time of the latency average: a sample's weight halves in about 7 s.
pub(super) const EWMA_DECAY_NS: f64 = 10_000_000_000.0;

/// Milliseconds since the first call: the clock of ejections and latency samples.
pub(super) fn now_ms() -> u64 {
    now_ns() / 1_000_000
}

pub(super) fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    // +1 so that 0 can mean "never".
    Instant::now().duration_since(base).as_nanos() as u64 + 1
}

/// Counters the backends of one upstream share.
#[derive(Debug, Default)]
pub(super) struct Changes {
    /// Bumped on every change of eligibility (health, drain, ejection).
    pub(super) epoch: AtomicU64,
    /// Backends ejected right now, across the registry: while nonzero, picks look
    /// for ejections that have run out.
    pub(super) ejected: AtomicU64,
    /// `max_connections_per_backend`: requests waiting for a backend under its cap.
    pub(super) queued: AtomicUsize,
    /// Signalled when a capped lease ends: one waiting request looks again.
    pub(super) freed: tokio::sync::Notify,
}

/// Signalled whenever a backend's eligibility changes (health, drain, ejection), for
/// those that act on it at once (the BGP gate). Ejections that run out on time are
/// not signalled.
pub fn eligibility_changes() -> &'static tokio::sync::Notify {
    static CHANGES: OnceLock<tokio::sync::Notify> = OnceLock::new();
    CHANGES.get_or_init(tokio::sync::Notify::new)
}

/// One backend of one generation.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    /// As written in the file: the backend's identity (`host:port#ip` for one from a
    /// DNS record).
    pub address: String,
    /// The host and port as written: TLS's server name, the `Host` of health checks
    /// and of HTTP/2 requests' authority where the client's is not kept.
    pub host: String,
    pub addr: SocketAddr,
    pub weight: u32,
    pub state: Arc<BackendState>,
}

impl Backend {
    pub fn is_eligible(&self) -> bool {
        self.weight > 0
            && self.state.is_healthy()
            && !self.state.is_draining()
            && !self.state.is_ejected()
    }
}

/// The live state of one backend, shared by every generation that has it.
#[derive(Debug)]
pub struct BackendState {
    pub(super) healthy: AtomicBool,
    /// An active health check has passed at least once.
    pub(super) verified: AtomicBool,
    pub(super) draining: AtomicBool,
    /// `now_ms()` until which passive checks keep the backend out; 0: not ejected.
    pub(super) ejected_until: AtomicU64,
    pub(super) active: AtomicUsize,
    pub(super) succeeded: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) consecutive_failures: AtomicU32,
    /// Peak-EWMA latency in nanoseconds (f64 bits) and when it was last updated.
    pub(super) ewma_bits: AtomicU64,
    pub(super) ewma_stamp: AtomicU64,
    pub(super) changes: Arc<Changes>,
}

impl BackendState {
    pub(super) fn new(changes: Arc<Changes>) -> Self {
        BackendState {
            healthy: AtomicBool::new(true),
            verified: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            ejected_until: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ewma_bits: AtomicU64::new(0),
            ewma_stamp: AtomicU64::new(0),
            changes,
        }
    }

    pub(super) fn changed(&self) {
        self.changes.epoch.fetch_add(1, Ordering::AcqRel);
        eligibility_changes().notify_waiters();
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Returns whether the state changed.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        let changed = self.healthy.swap(healthy, Ordering::AcqRel) != healthy;
        if changed {
            self.changed();
        }
        changed
    }

    /// Whether an active health check has ever passed (a backend starts healthy
    /// on trust; this says it was seen to be).
    pub fn is_verified(&self) -> bool {
        self.verified.load(Ordering::Acquire)
    }

    /// Records a passing health check.
    pub fn set_verified(&self) {
        if !self.verified.swap(true, Ordering::AcqRel) {
            eligibility_changes().notify_waiters();
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Returns whether the state changed.
    pub fn set_draining(&self, draining: bool) -> bool {
        let changed = self.draining.swap(draining, Ordering::AcqRel) != draining;
        if changed {
            self.changed();
        }
        changed
    }

    /// Whether passive checks keep the backend out right now.
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Acquire);
        until != 0 && now_ms() < until
    }

    pub(super) fn eject(&self, for_: Duration) {
        let until = now_ms().saturating_add(for_.as_millis().min(u128::from(u64::MAX / 2)) as u64);
        if self.ejected_until.swap(until, Ordering::AcqRel) == 0 {
            self.changes.ejected.fetch_add(1, Ordering::AcqRel);
        }
        self.changed();
    }

    /// Ends an ejection (its time ran out, or an active check passed).
    pub fn clear_ejection(&self) -> bool {
        if self.ejected_until.swap(0, Ordering::AcqRel) != 0 {
            self.changes.ejected.fetch_sub(1, Ordering::AcqRel);
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.changed();
            return true;
        }
        false
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

    /// Peak-EWMA latency in nanoseconds, 0 before the first sample.
    pub fn latency_ns(&self) -> f64 {
        f64::from_bits(self.ewma_bits.load(Ordering::Relaxed))
    }

    /// Feeds one latency sample: a slower sample is taken at once (the "peak"), a
    /// faster one pulls the average down as time passes.
    pub fn record_latency(&self, sample: Duration) {
        let now = now_ns();
        let sample = sample.as_nanos() as f64;
        let prev = self.latency_ns();
        let last = self.ewma_stamp.swap(now, Ordering::Relaxed);
        let next = if prev == 0.0 || sample > prev {
            sample
        } else {
            let elapsed = now.saturating_sub(last) as f64;
            let w = (-elapsed / EWMA_DECAY_NS).exp();
            prev * w + sample * (1.0 - w)
        };
        // Lock-free: a concurrent sample may win; either is a fair estimate.
        self.ewma_bits.store(next.to_bits(), Ordering::Relaxed);
    }
}

/// Live backend state across generations.
#[derive(Debug, Default)]
pub struct Registry {
    /// Touched only when a generation is built, never per request.
    pub(super) inner: Mutex<RegistryInner>,
}

#[derive(Debug, Default)]
pub(super) struct RegistryInner {
    pub(super) states: HashMap<(String, String), Arc<BackendState>>,
    /// One per upstream, so that a change in one upstream leaves the others' cached
    /// strategy state alone.
    pub(super) changes: HashMap<String, Arc<Changes>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, RegistryInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn changes(inner: &mut RegistryInner, upstream: &str) -> Arc<Changes> {
        inner
            .changes
            .entry(upstream.to_string())
            .or_default()
            .clone()
    }

    /// The state of (upstream, address), created healthy if it is new.
    pub fn state(&self, upstream: &str, address: &str) -> Arc<BackendState> {
        let mut inner = self.lock();
        let changes = Self::changes(&mut inner, upstream);
        inner
            .states
            .entry((upstream.to_string(), address.to_string()))
            .or_insert_with(|| Arc::new(BackendState::new(changes)))
            .clone()
    }

    /// Forgets every backend that `config` no longer has.
    pub fn retain(&self, config: &config::Config) {
        let keep = config.backend_identities();
        let mut inner = self.lock();
        inner.states.retain(|(u, a), s| {
            let kept = keep.contains(&(u.as_str(), a.as_str()));
            if !kept {
                s.clear_ejection();
            }
            kept
        });
        inner
            .changes
            .retain(|u, _| config.upstreams.iter().any(|c| &c.name == u));
    }

    pub fn len(&self) -> usize {
        self.lock().states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
