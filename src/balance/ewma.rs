//! The latency-aware "least loaded": the lowest peak-EWMA response latency times
//! (in flight + 1), per unit of weight. Backends without a sample yet score 0, so each
//! is tried early; ties go round robin.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::candidates::{lowest, Candidates, Selection};

#[derive(Debug, Default)]
pub(crate) struct Ewma {
    next: AtomicUsize,
}

impl Ewma {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn select(&self, c: &impl Candidates, s: Selection<'_>) -> Option<usize> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        lowest(c, &s, start % c.len().max(1), |i| {
            c.latency_ns(i) * (c.active(i) + 1) as f64 * c.inv_weight(i)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::Fake;

    #[test]
    fn it_should_prefer_the_faster_backend() {
        let mut c = Fake::new(&[1, 1]);
        c.latency = vec![5_000_000.0, 1_000_000.0];
        assert_eq!(Ewma::new().select(&c, Selection::default()), Some(1));
    }

    #[test]
    fn it_should_weigh_latency_by_load() {
        let mut c = Fake::new(&[1, 1]);
        c.latency = vec![3_000_000.0, 1_000_000.0];
        c.active = vec![0, 4]; // 3 ms x 1 against 1 ms x 5
        assert_eq!(Ewma::new().select(&c, Selection::default()), Some(0));
    }

    #[test]
    fn it_should_try_backends_without_samples_in_turn() {
        let c = Fake::new(&[1, 1, 1]);
        let e = Ewma::new();
        let picks: Vec<usize> = (0..3)
            .map(|_| e.select(&c, Selection::default()).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2]);
    }
}
