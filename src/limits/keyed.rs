//! Per-key state with a bound: a map from a key's 64-bit hash to one `u64`, split in
//! shards that each keep their keys in least-recently-used order. When a shard is
//! full the key used longest ago makes room, so a flood of distinct keys costs a
//! fixed amount of memory and only forgets the quietest keys (a forgotten key starts
//! again with a full burst).
//!
//! Keys are hashed with a per-process random key (SipHash), so a client cannot pick
//! keys that collide, and a key of any length takes the same room.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Mutex;

const NIL: u32 = u32::MAX;
/// Most shards a map gets: each has its own lock, held for a few map operations.
const MAX_SHARDS: usize = 64;
/// Fewest keys per shard before a map is split further.
const KEYS_PER_SHARD: usize = 1024;

/// The keys are hashes already.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

struct Node {
    key: u64,
    value: u64,
    prev: u32,
    next: u32,
}

struct Shard {
    index: HashMap<u64, u32, BuildHasherDefault<Identity>>,
    nodes: Vec<Node>,
    /// Most recently used.
    head: u32,
    /// Least recently used: the next to go.
    tail: u32,
    capacity: usize,
}

impl Shard {
    fn new(capacity: usize) -> Shard {
        Shard {
            index: HashMap::default(),
            nodes: Vec::new(),
            head: NIL,
            tail: NIL,
            capacity: capacity.max(1),
        }
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let n = &self.nodes[i as usize];
            (n.prev, n.next)
        };
        match prev {
            NIL => self.head = next,
            p => self.nodes[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.nodes[n as usize].prev = prev,
        }
    }

    fn push_front(&mut self, i: u32) {
        let old = self.head;
        {
            let n = &mut self.nodes[i as usize];
            n.prev = NIL;
            n.next = old;
        }
        match old {
            NIL => self.tail = i,
            o => self.nodes[o as usize].prev = i,
        }
        self.head = i;
    }

    /// The value of `key` (0 when new), now the most recently used.
    fn get(&mut self, key: u64) -> &mut u64 {
        let i = match self.index.get(&key) {
            Some(&i) => {
                self.unlink(i);
                i
            }
            None if self.nodes.len() < self.capacity => {
                self.nodes.push(Node {
                    key,
                    value: 0,
                    prev: NIL,
                    next: NIL,
                });
                let i = (self.nodes.len() - 1) as u32;
                self.index.insert(key, i);
                i
            }
            None => {
                let i = self.tail;
                self.unlink(i);
                let n = &mut self.nodes[i as usize];
                self.index.remove(&n.key);
                n.key = key;
                n.value = 0;
                self.index.insert(key, i);
                i
            }
        };
        self.push_front(i);
        &mut self.nodes[i as usize].value
    }
}

/// A bounded map of keys to one number each.
pub(crate) struct Keyed {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
}

impl Keyed {
    /// Holds at most `max_keys` keys (at least one).
    pub(crate) fn new(max_keys: usize) -> Keyed {
        let max_keys = max_keys.max(1);
        let count = (max_keys / KEYS_PER_SHARD).clamp(1, MAX_SHARDS);
        let per = max_keys / count;
        let extra = max_keys % count;
        let shards = (0..count)
            .map(|i| Mutex::new(Shard::new(per + usize::from(i < extra))))
            .collect();
        Keyed {
            shards,
            hasher: RandomState::new(),
        }
    }

    /// Runs `f` on `key`'s number (0 for a key not held), under its shard's lock.
    pub(crate) fn with<R>(&self, key: &[u8], f: impl FnOnce(&mut u64) -> R) -> R {
        let hash = self.hasher.hash_one(key);
        let shard = &self.shards[(hash >> 32) as usize % self.shards.len()];
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        f(shard.get(hash))
    }

    /// Keys held now.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).index.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_kept_per_key() {
        let k = Keyed::new(10);
        k.with(b"a", |v| *v = 1);
        k.with(b"b", |v| *v = 2);
        assert_eq!(k.with(b"a", |v| *v), 1);
        assert_eq!(k.with(b"b", |v| *v), 2);
        assert_eq!(k.with(b"c", |v| *v), 0);
    }

    #[test]
    fn the_least_recently_used_key_goes_first() {
        let k = Keyed::new(3);
        for (key, v) in [(b"a", 1), (b"b", 2), (b"c", 3)] {
            k.with(key, |x| *x = v);
        }
        k.with(b"a", |_| ()); // a is now the most recent; b the least
        k.with(b"d", |x| *x = 4);
        assert_eq!(k.held(), 3);
        assert_eq!(k.with(b"a", |v| *v), 1);
        assert_eq!(k.with(b"c", |v| *v), 3);
        assert_eq!(k.with(b"d", |v| *v), 4);
        assert_eq!(k.with(b"b", |v| *v), 0, "b was forgotten");
    }

    #[test]
    fn a_flood_of_keys_stays_within_the_bound() {
        let k = Keyed::new(5000);
        for i in 0..100_000u32 {
            k.with(&i.to_le_bytes(), |v| *v = u64::from(i));
        }
        assert!(k.held() <= 5000, "{}", k.held());
        // The most recent keys are there.
        assert_eq!(k.with(&99_999u32.to_le_bytes(), |v| *v), 99_999);
        let long = vec![b'x'; 10_000];
        k.with(&long, |v| *v = 7);
        assert_eq!(k.with(&long, |v| *v), 7);
    }
}
