//! Balancing strategies: pure and synchronous, no sockets and no runtime. A strategy
//! selects an index among [`Candidates`]; the caller (the `upstream` module) owns the
//! backends and their live state and turns the index into a lease.
//!
//! Every strategy skips candidates that are not eligible (down, drained or weight 0)
//! and those the caller excludes (already tried for this request), and returns `None`
//! when nothing is left.

mod round_robin;

pub use round_robin::RoundRobin;

/// The backends a strategy chooses among, seen through their live state.
pub trait Candidates {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn weight(&self, i: usize) -> u32;
    /// Healthy, not drained, and weight > 0.
    fn is_eligible(&self, i: usize) -> bool;
    /// Changes whenever the eligibility of any candidate may have changed, so that a
    /// strategy can cache what it derives from the eligible set.
    fn epoch(&self) -> u64;
}

/// What one selection must avoid.
#[derive(Debug, Default, Clone, Copy)]
pub struct Selection<'a> {
    /// Indices already tried for this request or connection.
    pub exclude: &'a [usize],
}

/// The strategies, dispatched by enum (no trait objects on the hot path).
#[derive(Debug)]
pub enum Balancer {
    RoundRobin(RoundRobin),
}

impl Balancer {
    pub fn round_robin() -> Self {
        Balancer::RoundRobin(RoundRobin::new())
    }

    pub fn select(&self, c: &impl Candidates, s: Selection<'_>) -> Option<usize> {
        match self {
            Balancer::RoundRobin(rr) => rr.select(c, s),
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::Candidates;
    use std::cell::Cell;

    /// Fake candidates for strategy tests: weights, and which are up.
    pub struct Fake {
        pub weights: Vec<u32>,
        pub up: Vec<bool>,
        pub epoch: Cell<u64>,
    }

    impl Fake {
        pub fn new(weights: &[u32]) -> Self {
            Fake {
                weights: weights.to_vec(),
                up: vec![true; weights.len()],
                epoch: Cell::new(0),
            }
        }

        pub fn set_up(&mut self, i: usize, up: bool) {
            self.up[i] = up;
            self.epoch.set(self.epoch.get() + 1);
        }
    }

    impl Candidates for Fake {
        fn len(&self) -> usize {
            self.weights.len()
        }
        fn weight(&self, i: usize) -> u32 {
            self.weights[i]
        }
        fn is_eligible(&self, i: usize) -> bool {
            self.up[i] && self.weights[i] > 0
        }
        fn epoch(&self) -> u64 {
            self.epoch.get()
        }
    }
}
