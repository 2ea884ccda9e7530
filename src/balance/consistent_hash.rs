//! Consistent hashing on a ring with virtual nodes proportional to weight. The points
//! come from the backends' names, so every instance running the same configuration
//! builds the same ring. Adding or removing one of N backends moves about 1/N of the
//! keys; a key whose backend is down or excluded goes to the next backend on the ring.

use super::candidates::{Candidates, Selection};
use crate::hash::hash_bytes;

/// Virtual nodes per unit of weight.
const POINTS_PER_WEIGHT: u64 = 100;
/// Upper bound on the ring's size; larger weight sums are scaled down.
const MAX_POINTS: u64 = 400_000;

/// The ring is indexed by the top bits of a hash, so that a lookup searches only the
/// few points of one slice instead of the whole ring.
const INDEX_BITS: u32 = 16;

#[derive(Debug)]
pub(crate) struct ConsistentHash {
    /// (point, backend index), sorted by point.
    ring: Vec<(u64, u32)>,
    /// `index[b]`: the first ring position whose point's top bits are >= b.
    index: Vec<u32>,
}

impl ConsistentHash {
    /// `ids`: each backend's name and weight, by index.
    pub(crate) fn new<S: AsRef<str>>(ids: &[(S, u32)]) -> Self {
        let total: u64 = ids
            .iter()
            .map(|(_, w)| u64::from(*w) * POINTS_PER_WEIGHT)
            .sum();
        let scale = |w: u32| {
            let p = u64::from(w) * POINTS_PER_WEIGHT;
            if total > MAX_POINTS {
                (p * MAX_POINTS / total).max(u64::from(w > 0))
            } else {
                p
            }
        };
        let mut ring = Vec::new();
        for (i, (name, w)) in ids.iter().enumerate() {
            for k in 0..scale(*w) {
                let point = hash_bytes(format!("{}#{k}", name.as_ref()).as_bytes());
                ring.push((point, i as u32));
            }
        }
        ring.sort_unstable();
        let mut index = Vec::with_capacity((1 << INDEX_BITS) + 1);
        let mut pos = 0usize;
        for b in 0..=(1u64 << INDEX_BITS) {
            while pos < ring.len() && (ring[pos].0 >> (64 - INDEX_BITS)) < b {
                pos += 1;
            }
            index.push(pos as u32);
        }
        ConsistentHash { ring, index }
    }

    pub(crate) fn select(&self, c: &impl Candidates, s: Selection<'_>) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let h = s.hash.unwrap_or(0);
        let b = (h >> (64 - INDEX_BITS)) as usize;
        let (lo, hi) = (self.index[b] as usize, self.index[b + 1] as usize);
        let start = lo + self.ring[lo..hi].partition_point(|&(p, _)| p < h);
        let n = self.ring.len();
        (start..n)
            .chain(0..start)
            .map(|k| self.ring[k].1 as usize)
            .find(|&i| s.usable(c, i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::Fake;

    fn ring(n: usize) -> (ConsistentHash, Fake) {
        let ids: Vec<(String, u32)> = (0..n).map(|i| (format!("backend-{i}"), 1)).collect();
        (ConsistentHash::new(&ids), Fake::new(&vec![1; n]))
    }

    fn pick(r: &ConsistentHash, c: &Fake, key: u64) -> usize {
        r.select(
            c,
            Selection {
                exclude: &[],
                hash: Some(hash_bytes(&key.to_le_bytes())),
            },
        )
        .unwrap()
    }

    #[test]
    fn the_same_key_always_goes_to_the_same_backend() {
        let (r, c) = ring(5);
        for key in 0..100 {
            assert_eq!(pick(&r, &c, key), pick(&r, &c, key));
        }
    }

    #[test]
    fn removing_one_of_ten_backends_moves_about_a_tenth_of_the_keys() {
        let (r10, c10) = ring(10);
        let ids9: Vec<(String, u32)> = (0..9).map(|i| (format!("backend-{i}"), 1)).collect();
        let r9 = ConsistentHash::new(&ids9);
        let c9 = Fake::new(&[1; 9]);
        let keys = 20_000u64;
        let moved = (0..keys)
            .filter(|&k| pick(&r10, &c10, k) != pick(&r9, &c9, k))
            .count();
        let fraction = moved as f64 / keys as f64;
        // Exactly the keys of the removed backend move: about 1/10.
        assert!((0.07..0.13).contains(&fraction), "{fraction}");
        let of_removed = (0..keys).filter(|&k| pick(&r10, &c10, k) == 9).count();
        assert_eq!(moved, of_removed, "only the removed backend's keys move");
    }

    #[test]
    fn adding_a_backend_moves_about_one_in_n_plus_one() {
        let (r4, c4) = ring(4);
        let (r5, c5) = ring(5);
        let keys = 20_000u64;
        let moved = (0..keys)
            .filter(|&k| pick(&r4, &c4, k) != pick(&r5, &c5, k))
            .count();
        let fraction = moved as f64 / keys as f64;
        assert!((0.14..0.26).contains(&fraction), "{fraction}");
    }

    #[test]
    fn a_key_whose_backend_is_down_goes_to_the_next_and_others_stay() {
        let (r, mut c) = ring(5);
        let before: Vec<usize> = (0..1000).map(|k| pick(&r, &c, k)).collect();
        c.set_up(2, false);
        for (k, b) in before.iter().enumerate() {
            let now = pick(&r, &c, k as u64);
            if *b == 2 {
                assert_ne!(now, 2);
            } else {
                assert_eq!(now, *b, "a key not on the down backend moved");
            }
        }
    }

    #[test]
    fn weights_give_proportional_shares() {
        let ids = [("a", 1u32), ("b", 3)];
        let r = ConsistentHash::new(&ids);
        let c = Fake::new(&[1, 3]);
        let b = (0..40_000u64).filter(|&k| pick(&r, &c, k) == 1).count() as f64 / 40_000.0;
        assert!((0.68..0.82).contains(&b), "{b}");
    }

    const PINNED: &str = "71b315422692add9";

    #[test]
    fn hashes_are_stable() {
        assert_eq!(hash_bytes(b""), hash_bytes(b""));
        assert_ne!(hash_bytes(b"a"), hash_bytes(b"b"));
        // Pinned so that rings (and sticky cookies) agree across builds and machines.
        assert_eq!(format!("{:016x}", hash_bytes(b"fulcrum")), PINNED);
    }
}
