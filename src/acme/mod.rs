//! Certificates from an ACME CA (RFC 8555) for the names of `listener.tls.acme`:
//! ordered in the background, stored, renewed before they expire, and swapped into
//! the live TLS configuration without a reload.
//!
//! One [`Manager`] lives as long as the process. Each configuration generation asks
//! it for the [`LiveCert`] of each listener's names ([`Manager::slot`]): the stored
//! certificate when a valid one is on disk, else a self-signed fallback until the CA's
//! arrives. Its task looks at every slot when it is due (jittered), orders when a
//! certificate is missing or due for renewal, and backs off on failure while the old
//! (or fallback) certificate keeps serving.
//!
//! Several instances may share one `storage`: a lock file with a lease lets one of
//! them order at a time, the others pick the result up from disk, and challenge
//! answers are written there too so that whichever instance the CA reaches answers.
//! In a failover pair only the active node orders.

mod challenge;
mod client;
mod order;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rustls::sign::CertifiedKey;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use challenge::{alpn_certificate, Challenges};
pub use order::Failure;

use crate::config::Acme;
use crate::tls::LiveCert;
use store::{now_unix, Store, Stored};

/// A certificate that is not due is looked at again this often (storage may hold a
/// newer one from another instance).
const RECHECK: Duration = Duration::from_secs(3600);
/// While another instance holds the ordering lock.
const LOCK_BUSY: Duration = Duration::from_secs(2);
/// A passive failover node looks at storage this often.
const PASSIVE_RECHECK: Duration = Duration::from_secs(30);
/// An order, all of its requests and waits, takes at most this long.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);

/// The names' certificate, served and renewed.
pub struct Slot {
    names: Vec<String>,
    live: Arc<LiveCert>,
    state: Mutex<SlotState>,
}

struct SlotState {
    /// Serving the self-signed fallback: no certificate from the CA yet.
    fallback: bool,
    not_after: i64,
    next: Instant,
    failures: u32,
    /// Times the manager looked at this certificate (storage, due date, order).
    checks: u64,
    last_error: Option<String>,
    /// When the CA's renewal information (ARI) says to renew: a moment picked at
    /// random in its suggested window.
    ari_due: Option<i64>,
    /// When to ask for renewal information again.
    ari_next: Instant,
}

impl Slot {
    fn state(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves `stored` from now on.
    fn serve(&self, stored: Stored) {
        self.live.store(stored.key);
        let mut s = self.state();
        s.fallback = false;
        s.not_after = stored.not_after;
        // Renewal information is about the certificate it was asked for.
        s.ari_due = None;
        s.ari_next = Instant::now();
    }

    fn later(&self, after: Duration) {
        self.state().next = Instant::now() + after;
    }
}

/// What the manager asks of the rest of the process.
pub struct Hooks {
    /// Whether this node may order now (in a failover pair: it is the active node).
    pub may_order: Box<dyn Fn() -> bool + Send + Sync>,
    /// A served certificate changed (to publish its expiry).
    pub changed: Box<dyn Fn() + Send + Sync>,
    /// `[redis]`'s connection, when configured: the ordering lock lives there.
    pub redis: Box<dyn Fn() -> Option<Arc<crate::limits::RedisStore>> + Send + Sync>,
}

/// The right to order: the lock file in storage, or a key in Redis.
enum Held {
    File {
        _lock: store::Lock,
    },
    Redis {
        redis: Arc<crate::limits::RedisStore>,
        key: String,
        holder: String,
    },
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Held::Redis { redis, key, holder } = self {
            let (redis, key, holder) = (redis.clone(), std::mem::take(key), std::mem::take(holder));
            tokio::spawn(async move { redis.unlock(&key, &holder).await });
        }
    }
}

pub struct Manager {
    settings: Mutex<Option<Acme>>,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    challenges: Arc<Challenges>,
    wake: Notify,
    /// This process in lock files: host name, process id and a random part.
    holder: String,
    /// `fulcrum_acme_orders_total{result}`.
    orders: prometheus::IntCounterVec,
    hooks: OnceLock<Hooks>,
}

/// `d` give or take a tenth, so that instances sharing storage drift apart.
fn jitter(d: Duration) -> Duration {
    let tenth = d.as_millis() as u64 / 10;
    d.saturating_sub(Duration::from_millis(tenth))
        + Duration::from_millis(fastrand::u64(0..=tenth * 2))
}

impl Manager {
    pub fn new(orders: prometheus::IntCounterVec) -> Arc<Manager> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        Arc::new(Manager {
            settings: Mutex::new(None),
            slots: Mutex::new(HashMap::new()),
            challenges: Arc::new(Challenges::default()),
            wake: Notify::new(),
            holder: format!("{host}:{}:{:08x}", std::process::id(), fastrand::u32(..)),
            orders,
            hooks: OnceLock::new(),
        })
    }

    pub fn set_hooks(&self, hooks: Hooks) {
        let _ = self.hooks.set(hooks);
    }

    pub fn challenges(&self) -> &Arc<Challenges> {
        &self.challenges
    }

    fn settings(&self) -> Option<Acme> {
        self.settings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live certificate for `names`: the one served already, else the one in
    /// `storage`, else a self-signed fallback until the CA's arrives.
    pub fn slot(&self, names: &[String], settings: &Acme) -> Result<Arc<LiveCert>, String> {
        let id = store::certificate_id(names);
        if let Some(s) = self.slots().get(&id) {
            return Ok(s.live.clone());
        }
        let (live, fallback, not_after) = match Store::new(&settings.storage).load(names) {
            Some(stored) => {
                info!(names = ?names, "acme: serving the stored certificate");
                (LiveCert::new(stored.key), false, stored.not_after)
            }
            None => (
                LiveCert::new(challenge::fallback_certificate(names)?),
                true,
                0,
            ),
        };
        let slot = Arc::new(Slot {
            names: names.to_vec(),
            live: Arc::new(live),
            state: Mutex::new(SlotState {
                fallback,
                not_after,
                next: Instant::now(),
                failures: 0,
                checks: 0,
                last_error: None,
                ari_due: None,
                ari_next: Instant::now(),
            }),
        });
        let live = slot.live.clone();
        self.slots().entry(id).or_insert(slot);
        Ok(live)
    }

    /// The certificate served for `names` now, if they are managed.
    pub fn current(&self, names: &[String]) -> Option<Arc<CertifiedKey>> {
        let id = store::certificate_id(names);
        self.slots().get(&id).map(|s| s.live.load())
    }

    /// Takes a generation's settings: `wanted`, every listener's names; slots no
    /// listener wants any more are dropped.
    pub fn configure(&self, settings: Option<&Acme>, wanted: &[Vec<String>]) {
        if let Some(a) = settings {
            if let Err(e) = Store::new(&a.storage).create() {
                warn!(storage = %a.storage.display(), error = %e, "acme: storage cannot be created");
            }
        }
        self.challenges
            .set_store(settings.map(|a| Store::new(&a.storage)));
        *self.settings.lock().unwrap_or_else(|p| p.into_inner()) = settings.cloned();
        let keep: std::collections::HashSet<String> =
            wanted.iter().map(|n| store::certificate_id(n)).collect();
        self.slots().retain(|id, _| keep.contains(id));
        self.nudge();
    }

    /// Looks at every certificate again now (a reload, this node became active),
    /// except those backing off after a failure: a reload does not hurry the CA.
    pub fn nudge(&self) {
        let now = Instant::now();
        for slot in self.slots().values() {
            let mut s = slot.state();
            if s.failures == 0 {
                s.next = now;
            }
        }
        self.wake.notify_one();
    }

    /// Looks at each slot when it is due, until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let now = Instant::now();
            let due: Vec<Arc<Slot>> = self
                .slots()
                .values()
                .filter(|s| s.state().next <= now)
                .cloned()
                .collect();
            for slot in due {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = self.check(&slot) => {}
                }
            }
            let next = self
                .slots()
                .values()
                .map(|s| s.state().next)
                .min()
                .unwrap_or(now + RECHECK);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(next) => {}
            }
        }
    }

    /// Serves the stored certificate when it is newer than the one served (another
    /// instance renewed it, or this one restarted).
    fn adopt_stored(&self, slot: &Slot, store: &Store) -> bool {
        let Some(stored) = store.load(&slot.names) else {
            return false;
        };
        let (fallback, not_after) = {
            let s = slot.state();
            (s.fallback, s.not_after)
        };
        if !fallback && stored.not_after <= not_after {
            return false;
        }
        info!(names = ?slot.names, "acme: serving the certificate found in storage");
        slot.serve(stored);
        self.changed();
        true
    }

    fn changed(&self) {
        if let Some(h) = self.hooks.get() {
            (h.changed)();
        }
    }

    /// How long until `slot` is due for renewal (`renew_before` before it expires, or
    /// earlier when the CA's renewal information says so); `None`: due now.
    fn until_due(&self, slot: &Slot, settings: &Acme) -> Option<Duration> {
        let s = slot.state();
        if s.fallback {
            return None;
        }
        let by_age = s.not_after - settings.renew_before.as_secs() as i64;
        let due_at = s.ari_due.map_or(by_age, |ari| ari.min(by_age));
        let left = due_at - now_unix();
        (left > 0).then(|| Duration::from_secs(left as u64))
    }

    async fn check(&self, slot: &Slot) {
        self.check_once(slot).await;
        slot.state().checks += 1;
    }

    /// The `acme` object of `/status`: each certificate, where it came from, when it
    /// expires, and how the last attempts went.
    pub fn status(&self) -> serde_json::Value {
        let now = Instant::now();
        let mut certificates: Vec<serde_json::Value> = self
            .slots()
            .values()
            .map(|slot| {
                let s = slot.state();
                serde_json::json!({
                    "names": slot.names,
                    "source": if s.fallback { "fallback" } else { "ca" },
                    "not_after": (!s.fallback).then_some(s.not_after),
                    "next_check_seconds": s.next.saturating_duration_since(now).as_secs(),
                    "checks": s.checks,
                    "failures": s.failures,
                    "last_error": s.last_error,
                    "renewal_window_at": s.ari_due,
                })
            })
            .collect();
        certificates.sort_by(|a, b| a["names"].to_string().cmp(&b["names"].to_string()));
        let settings = self.settings();
        serde_json::json!({
            "enabled": true,
            "directory": settings.as_ref().map(|a| a.directory.clone()),
            "challenge": settings.as_ref().map(|a| a.challenge.name()),
            "certificates": certificates,
        })
    }

    /// Asks the CA when to renew the served certificate (ARI), when it is time to ask
    /// again: as the CA's Retry-After says (between a minute and a day), a day when
    /// the directory offers no renewal information, an hour after a failure.
    async fn ask_renewal_window(&self, slot: &Slot, settings: &Acme, store: &Store) {
        let leaf = {
            let s = slot.state();
            if s.fallback || s.ari_next > Instant::now() {
                return;
            }
            slot.live.load().cert.first().cloned()
        };
        let Some(leaf) = leaf else { return };
        let asked =
            tokio::time::timeout(ORDER_TIMEOUT, order::renewal_window(settings, store, &leaf))
                .await
                .unwrap_or_else(|_| Err(Failure::unreachable("no renewal information in time")));
        let mut s = slot.state();
        match asked {
            Ok(Some((start, end, retry))) => {
                let pick = start + fastrand::i64(0..=(end - start).max(0));
                info!(names = ?slot.names, window_start = start, window_end = end, "acme: the CA suggests a renewal window");
                s.ari_due = Some(pick);
                s.ari_next = Instant::now()
                    + retry.clamp(Duration::from_secs(60), Duration::from_secs(86_400));
            }
            Ok(None) => s.ari_next = Instant::now() + Duration::from_secs(86_400),
            Err(e) => {
                warn!(names = ?slot.names, error = %e, "acme: no renewal information from the CA; renew_before decides meanwhile");
                s.ari_next = Instant::now() + RECHECK;
            }
        }
    }

    /// Takes the ordering lock: in `[redis]` when it is configured (one key per
    /// directory, leased as the file is), else the lock file in storage.
    async fn lock(&self, store: &Store, settings: &Acme) -> Result<Result<Held, String>, String> {
        let redis = self.hooks.get().and_then(|h| (h.redis)());
        match redis {
            Some(redis) => {
                let key = format!(
                    "fulcrum:acme:lock:{:016x}",
                    crate::hash::hash_bytes(settings.directory.as_bytes())
                );
                Ok(redis
                    .try_lock(&key, &self.holder, store::LEASE)
                    .await?
                    .map(|()| Held::Redis {
                        redis,
                        key,
                        holder: self.holder.clone(),
                    }))
            }
            None => Ok(store
                .lock(&self.holder)
                .map_err(|e| e.to_string())?
                .map(|l| Held::File { _lock: l })),
        }
    }

    /// The served certificate, when renewal information made it due.
    fn replaces(&self, slot: &Slot) -> Option<instant_acme::CertificateIdentifier<'static>> {
        {
            let s = slot.state();
            if s.fallback || s.ari_due.is_none() {
                return None;
            }
        }
        let leaf = slot.live.load().cert.first()?.clone();
        instant_acme::CertificateIdentifier::try_from(&leaf)
            .ok()
            .map(|id| id.into_owned())
    }

    async fn check_once(&self, slot: &Slot) {
        let Some(settings) = self.settings() else {
            slot.later(RECHECK);
            return;
        };
        let store = Store::new(&settings.storage);
        self.adopt_stored(slot, &store);
        self.ask_renewal_window(slot, &settings, &store).await;
        if let Some(left) = self.until_due(slot, &settings) {
            slot.later(jitter(left.min(RECHECK)));
            return;
        }
        if !self.hooks.get().is_none_or(|h| (h.may_order)()) {
            debug!(names = ?slot.names, "acme: not the active node: not ordering");
            slot.later(jitter(PASSIVE_RECHECK));
            return;
        }
        let lock = match self.lock(&store, &settings).await {
            Ok(Ok(lock)) => lock,
            Ok(Err(other)) => {
                debug!(names = ?slot.names, holder = %other, "acme: another instance is ordering");
                slot.later(jitter(LOCK_BUSY));
                return;
            }
            Err(e) => {
                self.failed(slot, Failure::storage(format!("lock: {e}")));
                return;
            }
        };
        // The last holder may have stored what this one was about to order.
        if self.adopt_stored(slot, &store) {
            if let Some(left) = self.until_due(slot, &settings) {
                slot.later(jitter(left.min(RECHECK)));
                return;
            }
        }
        info!(names = ?slot.names, directory = %settings.directory, challenge = settings.challenge.name(), "acme: ordering a certificate");
        let result = match tokio::time::timeout(
            ORDER_TIMEOUT,
            order::obtain(
                &settings,
                &slot.names,
                &self.challenges,
                &store,
                self.replaces(slot),
            ),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(Failure::unreachable("the order did not finish in time")),
        };
        let issued = result.and_then(|(chain, key)| {
            let stored = store::certified_pem(&chain, &key)
                .filter(|s| store::covers(&s.key, &slot.names))
                .ok_or_else(|| {
                    Failure::refused("the CA's certificate does not match the key or the names")
                })?;
            store
                .save(&slot.names, &chain, &key)
                .map_err(|e| Failure::storage(format!("saving the certificate: {e}")))?;
            Ok(stored)
        });
        drop(lock);
        match issued {
            Ok(stored) => {
                self.orders.with_label_values(&["issued"]).inc();
                let expires = stored.not_after;
                slot.serve(stored);
                {
                    let mut s = slot.state();
                    s.failures = 0;
                    s.last_error = None;
                }
                info!(names = ?slot.names, not_after = expires, "acme: certificate issued and served");
                self.changed();
                let left = self.until_due(slot, &settings).unwrap_or(Duration::ZERO);
                slot.later(jitter(left.min(RECHECK)).max(Duration::from_secs(1)));
            }
            Err(f) => self.failed(slot, f),
        }
    }

    fn failed(&self, slot: &Slot, f: Failure) {
        self.orders.with_label_values(&[f.result()]).inc();
        let failures = {
            let mut s = slot.state();
            s.failures = s.failures.saturating_add(1);
            s.last_error = Some(f.to_string());
            s.failures
        };
        let wait = f.back_off(failures);
        warn!(names = ?slot.names, error = %f, retry_in = ?wait, "acme: no certificate this time; the one served stays");
        slot.later(wait);
    }
}

#[cfg(test)]
mod tests;
