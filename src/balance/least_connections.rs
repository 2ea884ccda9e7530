//! Least connections: the fewest in flight per unit of weight; ties go round robin
//! (a rotating start), not always to the first backend.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::candidates::{lowest, Candidates, Selection};

#[derive(Debug, Default)]
pub(crate) struct LeastConnections {
    next: AtomicUsize,
}

impl LeastConnections {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn select(&self, c: &impl Candidates, s: Selection<'_>) -> Option<usize> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        lowest(c, &s, start % c.len().max(1), |i| {
            c.active(i) as f64 * c.inv_weight(i)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::Fake;

    #[test]
    fn it_should_find_the_backend_with_least_connections() {
        let mut c = Fake::new(&[1, 1, 1]);
        c.active = vec![5, 2, 7];
        let lc = LeastConnections::new();
        for _ in 0..5 {
            assert_eq!(lc.select(&c, Selection::default()), Some(1));
        }
    }

    #[test]
    fn it_should_divide_connections_by_weight() {
        let mut c = Fake::new(&[1, 4]);
        c.active = vec![2, 6]; // 2/1 against 6/4
        assert_eq!(
            LeastConnections::new().select(&c, Selection::default()),
            Some(1)
        );
    }

    #[test]
    fn it_should_break_ties_round_robin() {
        let c = Fake::new(&[1, 1, 1]);
        let lc = LeastConnections::new();
        let picks: Vec<usize> = (0..6)
            .map(|_| lc.select(&c, Selection::default()).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn it_should_skip_down_and_return_none_when_all_down() {
        let mut c = Fake::new(&[1, 1]);
        c.active = vec![0, 9];
        c.set_up(0, false);
        assert_eq!(
            LeastConnections::new().select(&c, Selection::default()),
            Some(1)
        );
        c.set_up(1, false);
        assert_eq!(
            LeastConnections::new().select(&c, Selection::default()),
            None
        );
    }
}
