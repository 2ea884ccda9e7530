//! Balancing strategies: pure and synchronous, no sockets and no runtime. A strategy
//! selects an index among [`Candidates`]; the caller (the `upstream` module) owns the
//! backends and their live state and turns the index into a lease.
//!
//! Every strategy skips candidates that are not eligible (down, drained, ejected or
//! weight 0) and those the caller excludes (already tried for this request), and
//! returns `None` when nothing is left. None takes a lock.

mod consistent_hash;
mod ewma;
mod least_connections;
mod random;
mod round_robin;

pub use consistent_hash::ConsistentHash;
pub use ewma::Ewma;
pub use least_connections::LeastConnections;
pub use random::Random;
pub use round_robin::RoundRobin;

/// The backends a strategy chooses among, seen through their live state.
pub trait Candidates {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
pub struct Selection<'a> {
    /// Indices already tried for this request or connection.
    pub exclude: &'a [usize],
    /// The request's hash, for `consistent_hash`.
    pub hash: Option<u64>,
}

impl Selection<'_> {
    fn usable(&self, c: &impl Candidates, i: usize) -> bool {
        i < c.len() && c.is_eligible(i) && !self.exclude.contains(&i)
    }
}

/// The strategies, dispatched by enum (no trait objects on the hot path).
#[derive(Debug)]
pub enum Balancer {
    RoundRobin(RoundRobin),
    LeastConnections(LeastConnections),
    Random(Random),
    ConsistentHash(ConsistentHash),
    Ewma(Ewma),
}

impl Balancer {
    pub fn round_robin() -> Self {
        Balancer::RoundRobin(RoundRobin::new())
    }

    pub fn select(&self, c: &impl Candidates, s: Selection<'_>) -> Option<usize> {
        match self {
            Balancer::RoundRobin(b) => b.select(c, s),
            Balancer::LeastConnections(b) => b.select(c, s),
            Balancer::Random(b) => b.select(c, s),
            Balancer::ConsistentHash(b) => b.select(c, s),
            Balancer::Ewma(b) => b.select(c, s),
        }
    }
}

/// Among the usable candidates, the one with the lowest `score`, ties broken by a
/// rotating start so that equal candidates share the work.
fn lowest<F: Fn(usize) -> f64>(
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
    pub struct Fake {
        pub weights: Vec<u32>,
        pub up: Vec<bool>,
        pub active: Vec<u64>,
        pub latency: Vec<f64>,
        pub epoch: Cell<u64>,
    }

    impl Fake {
        pub fn new(weights: &[u32]) -> Self {
            Fake {
                weights: weights.to_vec(),
                up: vec![true; weights.len()],
                active: vec![0; weights.len()],
                latency: vec![0.0; weights.len()],
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

#[cfg(test)]
mod properties {
    use super::testing::Fake;
    use super::*;
    use proptest::prelude::*;

    fn every_strategy(fake: &Fake) -> Vec<(&'static str, Balancer)> {
        let ids: Vec<(String, u32)> = fake
            .weights
            .iter()
            .enumerate()
            .map(|(i, w)| (format!("b{i}"), *w))
            .collect();
        vec![
            ("round_robin", Balancer::round_robin()),
            (
                "least_connections",
                Balancer::LeastConnections(LeastConnections::new()),
            ),
            ("random", Balancer::Random(Random::new())),
            (
                "consistent_hash",
                Balancer::ConsistentHash(ConsistentHash::new(&ids)),
            ),
            ("ewma", Balancer::Ewma(Ewma::new())),
        ]
    }

    proptest! {
        #[test]
        fn no_strategy_ever_picks_an_ineligible_or_excluded_backend(
            weights in prop::collection::vec(0u32..5, 1..12),
            down in prop::collection::vec(any::<bool>(), 12),
            active in prop::collection::vec(0u64..20, 12),
            exclude in prop::collection::vec(0usize..12, 0..3),
            hashes in prop::collection::vec(any::<u64>(), 20),
        ) {
            let mut fake = Fake::new(&weights);
            for i in 0..weights.len() {
                fake.up[i] = !down[i];
                fake.active[i] = active[i];
                fake.latency[i] = (active[i] * 1000) as f64;
            }
            let any_usable = (0..weights.len()).any(|i| fake.is_eligible(i) && !exclude.contains(&i));
            for (name, b) in every_strategy(&fake) {
                for h in &hashes {
                    let s = Selection { exclude: &exclude, hash: Some(*h) };
                    match b.select(&fake, s) {
                        Some(i) => {
                            prop_assert!(fake.is_eligible(i), "{} picked ineligible {}", name, i);
                            prop_assert!(!exclude.contains(&i), "{} picked excluded {}", name, i);
                        }
                        None => prop_assert!(!any_usable, "{} found nothing among usable backends", name),
                    }
                }
            }
        }

        #[test]
        fn weights_are_respected_in_the_long_run(
            weights in prop::collection::vec(1u32..6, 2..6),
        ) {
            let fake = Fake::new(&weights);
            let total: u32 = weights.iter().sum();
            let rounds = 3000usize;
            for (name, b) in every_strategy(&fake) {
                if name == "consistent_hash" || name == "ewma" || name == "least_connections" {
                    // Hashing follows keys, and the load-aware strategies follow load:
                    // with nothing in flight their long-run share is covered by unit tests.
                    continue;
                }
                let mut counts = vec![0usize; weights.len()];
                for _ in 0..rounds {
                    counts[b.select(&fake, Selection::default()).unwrap()] += 1;
                }
                for (i, w) in weights.iter().enumerate() {
                    let expected = rounds as f64 * f64::from(*w) / f64::from(total);
                    let got = counts[i] as f64;
                    prop_assert!((got - expected).abs() <= expected * 0.25 + 10.0,
                        "{}: backend {} weight {} got {} expected {}", name, i, w, got, expected);
                }
            }
        }
    }
}
