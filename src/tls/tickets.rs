//! TLS session tickets (stateless resumption) under keys that rotate every
//! `global.tls_ticket_rotation`, the previous key still accepted; with `[redis]`,
//! the key of each rotation period is the same on every instance, so a client
//! resumes on whichever instance it reaches.
//!
//! A period's key comes from 32 bytes of material: this process's own random bytes,
//! or those stored in Redis under `fulcrum:tls_ticket_key:INTERVAL:PERIOD` by the
//! first instance that needed them (`SET NX`, expiring after three periods). The
//! ticket is `name (16) | nonce (12) | ChaCha20-Poly1305(state) | tag (16)`; the name
//! says which key sealed it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ring::aead::{self, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

const NAME_LEN: usize = 16;
/// Keys accepted at once: the current period's, the previous one's, and one more
/// (a local key replaced by the shared one of the same period).
const MAX_KEYS: usize = 3;

struct Key {
    name: [u8; NAME_LEN],
    aead: LessSafeKey,
    period: u64,
}

impl Key {
    fn from_material(material: &[u8], period: u64) -> Key {
        let mut h = Sha256::new();
        h.update(b"fulcrum ticket name\0");
        h.update(material);
        let mut name = [0u8; NAME_LEN];
        name.copy_from_slice(&h.finalize()[..NAME_LEN]);
        let mut h = Sha256::new();
        h.update(b"fulcrum ticket key\0");
        h.update(material);
        let secret = h.finalize();
        // A 32-byte key is what ChaCha20-Poly1305 takes: this cannot fail.
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &secret)
            .unwrap_or_else(|_| unreachable!("32-byte ChaCha20-Poly1305 key"));
        Key {
            name,
            aead: LessSafeKey::new(unbound),
            period,
        }
    }
}

/// Random material for a key of this process only.
pub fn local_material() -> [u8; 32] {
    let mut m = [0u8; 32];
    // The system's random source failing leaves the zero-filled buffer a
    // different period's name could collide with; derive from the time too.
    if SystemRandom::new().fill(&mut m).is_err() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        m[..16].copy_from_slice(&now.to_le_bytes());
    }
    m
}

pub struct Ticketer {
    /// Newest first.
    keys: ArcSwap<Vec<Arc<Key>>>,
    /// Seconds per rotation period (also the tickets' lifetime); 0: none issued.
    interval: AtomicU64,
    rng: SystemRandom,
}

impl std::fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticketer")
            .field("interval", &self.interval.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The rotation period `now` (seconds since the epoch) falls in.
pub fn period(now: u64, interval: Duration) -> u64 {
    now / interval.as_secs().max(1)
}

impl Ticketer {
    pub fn new(interval: Duration) -> Arc<Ticketer> {
        let t = Arc::new(Ticketer {
            keys: ArcSwap::from_pointee(Vec::new()),
            interval: AtomicU64::new(interval.as_secs()),
            rng: SystemRandom::new(),
        });
        t.install(&local_material(), period(now_secs(), interval));
        t
    }

    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval.load(Ordering::Relaxed))
    }

    pub fn set_interval(&self, interval: Duration) {
        self.interval.store(interval.as_secs(), Ordering::Relaxed);
    }

    /// The period the newest key belongs to.
    pub fn current_period(&self) -> Option<u64> {
        self.keys.load().first().map(|k| k.period)
    }

    /// Whether `material` is already the key of `period`.
    pub fn has(&self, material: &[u8], period: u64) -> bool {
        let key = Key::from_material(material, period);
        self.keys.load().iter().any(|k| k.name == key.name)
    }

    /// Makes `material` the key of `period`: the newest key when its period is the
    /// newest; keys of periods more than one before it are dropped.
    pub fn install(&self, material: &[u8], period: u64) {
        let key = Arc::new(Key::from_material(material, period));
        let mut keys: Vec<Arc<Key>> = self
            .keys
            .load()
            .iter()
            .filter(|k| k.name != key.name && k.period + 1 >= period)
            .cloned()
            .collect();
        keys.insert(0, key);
        // Newest period first; within a period, the one just installed first (the
        // sort is stable).
        keys.sort_by_key(|k| std::cmp::Reverse(k.period));
        keys.truncate(MAX_KEYS);
        self.keys.store(Arc::new(keys));
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl rustls::server::ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        self.interval.load(Ordering::Relaxed) > 0
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(self.interval.load(Ordering::Relaxed)).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let keys = self.keys.load();
        let key = keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&key.name);
        out.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(&key.name),
                &mut sealed,
            )
            .ok()?;
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < NAME_LEN + NONCE_LEN + 16 {
            return None;
        }
        let (name, rest) = cipher.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let keys = self.keys.load();
        let key = keys.iter().find(|k| k.name == name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(nonce, aead::Aad::from(name), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ProducesTickets;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn tickets_open_under_the_current_and_previous_key_only() {
        let t = Ticketer::new(HOUR);
        let p = t.current_period().unwrap();
        t.install(&[1; 32], p + 1);
        let sealed_1 = t.encrypt(b"session state").unwrap();
        assert_eq!(t.decrypt(&sealed_1).unwrap(), b"session state");
        t.install(&[2; 32], p + 2);
        assert_eq!(
            t.decrypt(&sealed_1).unwrap(),
            b"session state",
            "previous key"
        );
        let sealed_2 = t.encrypt(b"newer").unwrap();
        t.install(&[3; 32], p + 3);
        assert!(t.decrypt(&sealed_1).is_none(), "two periods back: refused");
        assert_eq!(t.decrypt(&sealed_2).unwrap(), b"newer");
    }

    #[test]
    fn the_same_material_makes_the_same_key_on_every_instance() {
        let (a, b) = (Ticketer::new(HOUR), Ticketer::new(HOUR));
        // Each instance starts with its own local key: no resumption across.
        let local = a.encrypt(b"x").unwrap();
        assert!(b.decrypt(&local).is_none());
        // The shared key of the same period replaces the local one for new tickets;
        // the local one still opens what it sealed.
        let p = a.current_period().unwrap();
        a.install(&[7; 32], p);
        b.install(&[7; 32], p);
        let shared = a.encrypt(b"resumed anywhere").unwrap();
        assert_eq!(b.decrypt(&shared).unwrap(), b"resumed anywhere");
        assert_eq!(a.decrypt(&local).unwrap(), b"x");
        assert!(a.has(&[7; 32], p) && !a.has(&[8; 32], p));
    }

    #[test]
    fn garbage_and_tampered_tickets_are_refused() {
        let t = Ticketer::new(HOUR);
        let mut sealed = t.encrypt(b"state").unwrap();
        for bad in [
            &b""[..],
            &[0u8; 10],
            &[0u8; 100],
            &sealed[..sealed.len() - 1],
        ] {
            assert!(t.decrypt(bad).is_none());
        }
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(t.decrypt(&sealed).is_none());
    }

    #[test]
    fn a_zero_interval_issues_no_tickets() {
        let t = Ticketer::new(HOUR);
        assert!(t.enabled());
        assert_eq!(t.lifetime(), 3600);
        t.set_interval(Duration::ZERO);
        assert!(!t.enabled());
    }
}
