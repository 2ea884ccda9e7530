//! Balancing strategies: pure and synchronous, no sockets and no runtime. A strategy
//! selects an index among [`Candidates`]; the caller (the `upstream` module) owns the
//! backends and their live state and turns the index into a lease.
//!
//! Every strategy skips candidates that are not eligible (down, drained, ejected or
//! weight 0) and those the caller excludes (already tried for this request), and
//! returns `None` when nothing is left. None takes a lock.

mod candidates;
mod consistent_hash;
mod ewma;
mod least_connections;
mod random;
mod round_robin;

#[cfg(test)]
pub(crate) use candidates::testing;
pub(crate) use candidates::{Candidates, Selection};
pub(crate) use consistent_hash::ConsistentHash;
pub(crate) use ewma::Ewma;
pub(crate) use least_connections::LeastConnections;
pub(crate) use random::Random;
pub(crate) use round_robin::RoundRobin;

/// The strategies, dispatched by enum (no trait objects on the hot path).
#[derive(Debug)]
pub(crate) enum Balancer {
    RoundRobin(RoundRobin),
    LeastConnections(LeastConnections),
    Random(Random),
    ConsistentHash(ConsistentHash),
    Ewma(Ewma),
}

impl Balancer {
    pub(crate) fn round_robin() -> Self {
        Balancer::RoundRobin(RoundRobin::new())
    }

    pub(crate) fn select(&self, c: &impl Candidates, s: Selection<'_>) -> Option<usize> {
        match self {
            Balancer::RoundRobin(b) => b.select(c, s),
            Balancer::LeastConnections(b) => b.select(c, s),
            Balancer::Random(b) => b.select(c, s),
            Balancer::ConsistentHash(b) => b.select(c, s),
            Balancer::Ewma(b) => b.select(c, s),
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
