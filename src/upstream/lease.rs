//! A picked backend, held while its work lasts: the count in flight, and the
//! outcome reported to passive health when it ends.

use super::state::Backend;
use super::state::Changes;
use crate::health::passive::Passive;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

/// How the work given to a backend went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendOutcome {
    Success,
    Failure,
}

/// A picked backend. While held it counts as one in-flight connection or request on
/// that backend; dropping it releases the count and records the outcome, if one was set:
/// failures in a row past `passive_failures` eject the backend for `eject_for`.
#[derive(Debug)]
pub struct Lease {
    pub(super) backend: Arc<Backend>,
    pub(super) index: usize,
    pub(super) outcome: Option<BackendOutcome>,
    pub(super) passive: Option<Passive>,
    /// Under `max_connections_per_backend`: told when this lease ends.
    pub(super) freed: Option<Arc<Changes>>,
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

    pub fn set_outcome(&mut self, outcome: BackendOutcome) {
        self.outcome = Some(outcome);
    }

    /// Time to first response byte (HTTP) or to connect (TCP), for `ewma`.
    pub fn record_latency(&self, latency: Duration) {
        self.backend.state.record_latency(latency);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let s = &self.backend.state;
        s.active.fetch_sub(1, Ordering::AcqRel);
        if let Some(changes) = &self.freed {
            changes.freed.notify_one();
        }
        match self.outcome {
            Some(BackendOutcome::Success) => {
                s.succeeded.fetch_add(1, Ordering::Relaxed);
                s.consecutive_failures.store(0, Ordering::Relaxed);
            }
            Some(BackendOutcome::Failure) => {
                s.failed.fetch_add(1, Ordering::Relaxed);
                let n = s.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                // The passive checks decide what the failures mean.
                if let Some(eject_for) = self
                    .passive
                    .and_then(|p| p.after_failure(n, s.is_ejected()))
                {
                    s.eject(eject_for);
                    warn!(
                        backend.name = %self.backend.name,
                        backend.addr = %self.backend.addr,
                        failures = n,
                        eject_for = ?eject_for,
                        "backend ejected after failures in a row"
                    );
                }
            }
            None => {}
        }
    }
}
