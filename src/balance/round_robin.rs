//! Smooth weighted round robin (nginx's algorithm): with weights 5,1,1 the order is
//! a,a,b,a,c,a,a — heavy backends are interleaved, never sent bursts.
//!
//! The classic algorithm mutates every backend's "current weight" on every pick, which
//! needs a lock. Instead the whole cycle for the current eligible set is computed once
//! and stored behind an `ArcSwap`; a pick is one atomic increment and an index. The
//! cycle is rebuilt when the candidates' epoch says eligibility changed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::candidates::{Candidates, Selection};

/// Upper bound on `cycle length × eligible backends`, the cost of building the exact
/// smooth cycle. Past it (hundreds of backends with large, uneven weights) the cycle is
/// built by stride scheduling instead: O(length × log n), just as smooth in the long
/// run, but not the exact nginx sequence.
const MAX_BUILD_STEPS: u64 = 4_000_000;

/// Upper bound on the cycle length; larger weight sums are scaled down proportionally.
const MAX_CYCLE: u64 = 1 << 20;

#[derive(Debug)]
pub(crate) struct RoundRobin {
    cycle: ArcSwap<Cycle>,
    next: AtomicUsize,
}

#[derive(Debug)]
struct Cycle {
    /// The candidates' epoch the cycle was built for; `None` before the first build.
    epoch: Option<u64>,
    len: usize,
    order: Vec<u32>,
}

impl Default for RoundRobin {
    fn default() -> Self {
        Self::new()
    }
}

impl RoundRobin {
    pub(crate) fn new() -> Self {
        RoundRobin {
            cycle: ArcSwap::from_pointee(Cycle {
                epoch: None,
                len: 0,
                order: Vec::new(),
            }),
            next: AtomicUsize::new(0),
        }
    }

    pub(crate) fn select(&self, c: &impl Candidates, s: Selection<'_>) -> Option<usize> {
        let mut cycle = self.cycle.load();
        let epoch = c.epoch();
        if cycle.epoch != Some(epoch) || cycle.len != c.len() {
            self.cycle.store(Arc::new(build(c, epoch)));
            cycle = self.cycle.load();
        }
        let order = &cycle.order;
        if order.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        // The cycle can be a little behind the live state (a backend went down since it
        // was built) and some indices may be excluded: walk on to the next usable one.
        for k in 0..order.len() {
            let i = order[(start.wrapping_add(k)) % order.len()] as usize;
            if s.usable(c, i) {
                return Some(i);
            }
        }
        None
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn build(c: &impl Candidates, epoch: u64) -> Cycle {
    let mut members: Vec<(u32, u64)> = (0..c.len())
        .filter(|&i| c.is_eligible(i))
        .map(|i| (i as u32, u64::from(c.weight(i))))
        .filter(|&(_, w)| w > 0)
        .collect();
    if members.is_empty() {
        return Cycle {
            epoch: Some(epoch),
            len: c.len(),
            order: Vec::new(),
        };
    }
    let g = members.iter().fold(0, |g, &(_, w)| gcd(g, w));
    for m in &mut members {
        m.1 /= g;
    }
    let n = members.len() as u64;
    let total: u64 = members.iter().map(|m| m.1).sum();
    if total > MAX_CYCLE {
        for m in &mut members {
            m.1 = (m.1 * MAX_CYCLE / total).max(1);
        }
    }
    let total: u64 = members.iter().map(|m| m.1).sum();
    let order = if total.saturating_mul(n) > MAX_BUILD_STEPS {
        stride_order(&members, total)
    } else {
        smooth_order(&members, total)
    };
    Cycle {
        epoch: Some(epoch),
        len: c.len(),
        order,
    }
}

/// nginx's smooth weighted round robin, run for one whole cycle.
fn smooth_order(members: &[(u32, u64)], total: u64) -> Vec<u32> {
    let total = total as i64;
    let mut current = vec![0i64; members.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (k, m) in members.iter().enumerate() {
            current[k] += m.1 as i64;
            if current[k] > current[best] {
                best = k;
            }
        }
        current[best] -= total;
        order.push(members[best].0);
    }
    order
}

/// Stride scheduling: the k-th turn of a backend of weight w falls at (k + 1/2) / w;
/// the cycle lists every turn in time order.
fn stride_order(members: &[(u32, u64)], total: u64) -> Vec<u32> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    // Turn times as exact fractions (2k + 1) / (2w), ordered by cross-multiplication.
    #[derive(PartialEq, Eq)]
    struct Turn {
        num: u64,
        den: u64,
        member: usize,
    }
    impl Ord for Turn {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            (u128::from(self.num) * u128::from(o.den))
                .cmp(&(u128::from(o.num) * u128::from(self.den)))
                .then(self.member.cmp(&o.member))
        }
    }
    impl PartialOrd for Turn {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    let mut heap: BinaryHeap<Reverse<Turn>> = members
        .iter()
        .enumerate()
        .map(|(k, m)| {
            Reverse(Turn {
                num: 1,
                den: 2 * m.1,
                member: k,
            })
        })
        .collect();
    let mut order = Vec::with_capacity(total as usize);
    while order.len() < total as usize {
        let Some(Reverse(t)) = heap.pop() else { break };
        order.push(members[t.member].0);
        heap.push(Reverse(Turn {
            num: t.num + 2,
            ..t
        }));
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::Fake;

    fn picks(rr: &RoundRobin, c: &Fake, n: usize) -> Vec<usize> {
        (0..n)
            .map(|_| rr.select(c, Selection::default()).unwrap())
            .collect()
    }

    #[test]
    fn it_should_interleave_weights_five_one_one_as_a_a_b_a_c_a_a() {
        let c = Fake::new(&[5, 1, 1]);
        let rr = RoundRobin::new();
        assert_eq!(
            picks(&rr, &c, 14),
            [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]
        );
    }

    #[test]
    fn it_should_rotate_equal_weights_in_order() {
        let c = Fake::new(&[1, 1, 1]);
        let rr = RoundRobin::new();
        assert_eq!(picks(&rr, &c, 6), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn it_should_never_pick_a_backend_of_weight_zero() {
        let c = Fake::new(&[1, 0, 2]);
        let rr = RoundRobin::new();
        let p = picks(&rr, &c, 30);
        assert!(!p.contains(&1));
        assert_eq!(p.iter().filter(|&&i| i == 2).count(), 20);
    }

    #[test]
    fn it_should_skip_a_down_backend_and_take_it_back_when_up() {
        let mut c = Fake::new(&[1, 1, 1]);
        let rr = RoundRobin::new();
        c.set_up(1, false);
        let p = picks(&rr, &c, 6);
        assert_eq!(p.iter().filter(|&&i| i == 0).count(), 3);
        assert_eq!(p.iter().filter(|&&i| i == 2).count(), 3);
        c.set_up(1, true);
        let p = picks(&rr, &c, 6);
        assert_eq!(p.iter().filter(|&&i| i == 1).count(), 2);
    }

    #[test]
    fn it_should_return_none_when_all_are_down_or_empty() {
        let mut c = Fake::new(&[1, 1]);
        c.set_up(0, false);
        c.set_up(1, false);
        assert_eq!(RoundRobin::new().select(&c, Selection::default()), None);
        let empty = Fake::new(&[]);
        assert_eq!(RoundRobin::new().select(&empty, Selection::default()), None);
    }

    #[test]
    fn it_should_honour_exclusions() {
        let c = Fake::new(&[1, 1, 1]);
        let rr = RoundRobin::new();
        for _ in 0..10 {
            let i = rr
                .select(
                    &c,
                    Selection {
                        exclude: &[0, 2],
                        hash: None,
                    },
                )
                .unwrap();
            assert_eq!(i, 1);
        }
        assert_eq!(
            rr.select(
                &c,
                Selection {
                    exclude: &[0, 1, 2],
                    hash: None,
                }
            ),
            None
        );
    }

    #[test]
    fn it_should_follow_weights_exactly_over_a_cycle() {
        let weights = [3, 7, 1, 9];
        let c = Fake::new(&weights);
        let rr = RoundRobin::new();
        let p = picks(&rr, &c, 200);
        for (i, w) in weights.iter().enumerate() {
            assert_eq!(p.iter().filter(|&&x| x == i).count(), *w as usize * 10);
        }
    }

    #[test]
    fn it_should_keep_proportions_when_weights_are_scaled_down() {
        let weights: Vec<u32> = (0..1000).map(|i| 1 + (i % 1000) as u32).collect();
        let c = Fake::new(&weights);
        let rr = RoundRobin::new();
        let cycle_len = rr.cycle.load().order.len();
        assert_eq!(cycle_len, 0);
        rr.select(&c, Selection::default());
        let cycle = rr.cycle.load();
        let count = |i: u32| cycle.order.iter().filter(|&&x| x == i).count() as f64;
        // backend 999 (weight 1000) against backend 499 (weight 500): twice as often.
        let ratio = count(999) / count(499);
        assert!((ratio - 2.0).abs() < 0.01, "ratio {ratio}");
        assert_eq!(count(0), 1.0);
        // and a weight-1000 backend is spread through the cycle, not sent a burst.
        let longest_run = cycle
            .order
            .chunk_by(|a, b| a == b)
            .map(<[u32]>::len)
            .max()
            .unwrap();
        assert_eq!(longest_run, 1);
    }
}
