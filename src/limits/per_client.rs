//! Connections per client address, for `listener.max_connections_per_client`. The
//! counts belong to a listener name and outlive generations, like its other
//! connection counts: a reload that lowers the limit applies it to new connections.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

const SHARDS: usize = 16;

/// Open connections per client address.
pub(crate) struct PerClient {
    shards: [Mutex<HashMap<IpAddr, u32>>; SHARDS],
    hasher: RandomState,
}

impl Default for PerClient {
    fn default() -> Self {
        PerClient {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: RandomState::new(),
        }
    }
}

/// A client's place, given back when dropped (the entry goes with its last place).
pub(crate) struct ClientPlace {
    counts: Arc<PerClient>,
    ip: IpAddr,
}

impl Drop for ClientPlace {
    fn drop(&mut self) {
        let mut shard = self.counts.shard(self.ip);
        if let Some(n) = shard.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                shard.remove(&self.ip);
            }
        }
    }
}

impl PerClient {
    fn shard(&self, ip: IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        let i = self.hasher.hash_one(ip) as usize % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for `ip` if it holds fewer than `max`.
    pub(crate) fn take(self: &Arc<Self>, ip: IpAddr, max: u32) -> Option<ClientPlace> {
        let ip = ip.to_canonical();
        let mut shard = self.shard(ip);
        let n = shard.entry(ip).or_insert(0);
        if *n >= max {
            if *n == 0 {
                shard.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(ClientPlace {
            counts: self.clone(),
            ip,
        })
    }

    /// Addresses holding a connection now.
    #[cfg(test)]
    pub(crate) fn clients(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_holds_at_most_max_and_places_come_back() {
        let counts = Arc::new(PerClient::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "::ffff:192.0.2.2".parse().unwrap();
        let first = counts.take(a, 2).unwrap();
        let _second = counts.take(a, 2).unwrap();
        assert!(counts.take(a, 2).is_none());
        let _other = counts.take(b, 2).unwrap();
        drop(first);
        let third = counts.take(a, 2);
        assert!(third.is_some());
        drop(third);
        drop(_second);
        drop(_other);
        assert_eq!(counts.clients(), 0, "no entry outlives its last connection");
        assert!(counts.take(a, 0).is_none());
        assert_eq!(counts.clients(), 0);
    }
}
