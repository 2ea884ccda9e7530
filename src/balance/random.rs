//! Power of two random choices: two candidates drawn with probability proportional to
//! weight; the one with fewer in flight per unit of weight wins.
//!
//! The cumulative weights of the eligible set are computed once per epoch and kept
//! behind an `ArcSwap`, so a pick is two binary searches.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::candidates::{Candidates, Selection};

#[derive(Debug)]
pub(crate) struct Random {
    table: ArcSwap<Table>,
}

#[derive(Debug, Default)]
struct Table {
    epoch: Option<u64>,
    len: usize,
    /// (cumulative weight, index) of the eligible candidates.
    cumulative: Vec<(u64, u32)>,
}

impl Default for Random {
    fn default() -> Self {
        Self::new()
    }
}

impl Random {
    pub(crate) fn new() -> Self {
        Random {
            table: ArcSwap::from_pointee(Table::default()),
        }
    }

    fn draw(t: &Table) -> Option<usize> {
        let total = t.cumulative.last()?.0;
        let x = fastrand::u64(0..total);
        let k = t.cumulative.partition_point(|&(cum, _)| cum <= x);
        t.cumulative.get(k).map(|&(_, i)| i as usize)
    }

    pub(crate) fn select(&self, c: &impl Candidates, s: Selection<'_>) -> Option<usize> {
        let mut t = self.table.load();
        let epoch = c.epoch();
        if t.epoch != Some(epoch) || t.len != c.len() {
            let mut sum = 0u64;
            let cumulative = (0..c.len())
                .filter(|&i| c.is_eligible(i))
                .map(|i| {
                    sum += u64::from(c.weight(i));
                    (sum, i as u32)
                })
                .collect();
            self.table.store(Arc::new(Table {
                epoch: Some(epoch),
                len: c.len(),
                cumulative,
            }));
            t = self.table.load();
        }
        let load = |i: usize| c.active(i) as f64 * c.inv_weight(i);
        let a = Self::draw(&t).filter(|&i| s.usable(c, i));
        let b = Self::draw(&t).filter(|&i| s.usable(c, i));
        match (a, b) {
            (Some(a), Some(b)) => Some(if load(b) < load(a) { b } else { a }),
            (Some(x), None) | (None, Some(x)) => Some(x),
            // Both draws hit excluded or just-downed backends: take the least loaded
            // of what is left rather than fail.
            (None, None) => super::candidates::lowest(c, &s, 0, load),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::Fake;

    #[test]
    fn it_should_spread_by_weight_within_five_percent() {
        let c = Fake::new(&[1, 2, 7]);
        let r = Random::new();
        let mut counts = [0usize; 3];
        let n = 100_000;
        for _ in 0..n {
            counts[r.select(&c, Selection::default()).unwrap()] += 1;
        }
        for (i, w) in [1.0, 2.0, 7.0].iter().enumerate() {
            let share = counts[i] as f64 / n as f64;
            assert!(
                (share - w / 10.0).abs() < 0.05 * w / 10.0 + 0.005,
                "{counts:?}"
            );
        }
    }

    #[test]
    fn it_should_take_the_less_loaded_of_two() {
        let mut c = Fake::new(&[1, 1]);
        c.active = vec![100, 0];
        let r = Random::new();
        let picks_of_0 = (0..10_000)
            .filter(|_| r.select(&c, Selection::default()) == Some(0))
            .count();
        // Backend 0 wins only when both draws are 0: a quarter of the time.
        assert!((2_000..3_000).contains(&picks_of_0), "{picks_of_0}");
    }

    #[test]
    fn it_should_return_none_when_all_are_down() {
        let mut c = Fake::new(&[1, 1]);
        c.set_up(0, false);
        c.set_up(1, false);
        assert_eq!(Random::new().select(&c, Selection::default()), None);
    }
}
