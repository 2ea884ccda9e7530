//! What a strategy selects among: the candidates (backends as the caller sees them)
//! and the selection's constraints, and the lowest-score pick that several
//! strategies share.

/// The backends a strategy chooses among, seen through their live state.
pub(crate) trait Candidates {
    fn len(&self) -> usize;
    fn weight(&self, i: usize) -> u32;
    /// `1 / weight` (1 for weight 0), precomputed where it can be: scores multiply by it.
    fn inv_weight(&self, i: usize) -> f64 {
        1.0 / f64::from(self.weight(i).max(1))
    }
    /// Healthy, not drained, not ejected, and weight > 0.
    fn is_eligible(&self, i: usize) -> bool;
    /// Connections or requests in flight.
    fn active(&self, i: usize) -> u64;
    /// Peak-EWMA response latency in nanoseconds; 0 before the first sample.
    fn latency_ns(&self, i: usize) -> f64;
    /// Changes whenever the eligibility of any candidate may have changed, so that a
    /// strategy can cache what it derives from the eligible set.
    fn epoch(&self) -> u64;
}

/// What one selection must avoid, and what it may hash.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Selection<'a> {
    /// Indices already tried for this request or connection.
    pub exclude: &'a [usize],
    /// The request's hash, for `consistent_hash`.
    pub hash: Option<u64>,
}

impl Selection<'_> {
    pub(super) fn usable(&self, c: &impl Candidates, i: usize) -> bool {
        i < c.len() && c.is_eligible(i) && !self.exclude.contains(&i)
    }
}

/// Among the usable candidates, the one with the lowest `score`, ties broken by a
/// rotating start so that equal candidates share the work.
pub(super) fn lowest<F: Fn(usize) -> f64>(
    c: &impl Candidates,
    s: &Selection<'_>,
    start: usize,
    score: F,
) -> Option<usize> {
    let n = c.len();
    let start = start.min(n);
    let mut best: Option<(usize, f64)> = None;
    // From `start` to the end, then from 0: no division per candidate.
    for i in (start..n).chain(0..start) {
        if !s.usable(c, i) {
            continue;
        }
        let v = score(i);
        if best.is_none_or(|(_, b)| v < b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
pub(crate) mod testing {
    use super::Candidates;
    use std::cell::Cell;

    /// Fake candidates for strategy tests: weights, which are up, what is in flight.
    #[derive(Clone)]
    pub(crate) struct Fake {
        pub weights: Vec<u32>,
        pub up: Vec<bool>,
        pub active: Vec<u64>,
        pub latency: Vec<f64>,
        pub epoch: Cell<u64>,
    }

    impl Fake {
        pub(crate) fn new(weights: &[u32]) -> Self {
            Fake {
                weights: weights.to_vec(),
                up: vec![true; weights.len()],
                active: vec![0; weights.len()],
                latency: vec![0.0; weights.len()],
                epoch: Cell::new(0),
            }
        }

        pub(crate) fn set_up(&mut self, i: usize, up: bool) {
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
        fn active(&self, i: usize) -> u64 {
            self.active[i]
        }
        fn latency_ns(&self, i: usize) -> f64 {
            self.latency[i]
        }
        fn epoch(&self) -> u64 {
            self.epoch.get()
        }
    }
}
