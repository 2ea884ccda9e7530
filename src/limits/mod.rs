//! Who gets in, and how much: rate-limit rules (GCRA over a bounded keyed map) and
//! per-client connection counts. The engines call into this room; it knows nothing
//! of them.

mod gcra;
mod keyed;
mod per_client;
mod redis;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use http::{HeaderMap, HeaderName, HeaderValue};

pub(crate) use gcra::{Decision, Gcra};
pub(crate) use keyed::Keyed;
pub(crate) use per_client::{ClientPlace, PerClient};
pub(crate) use redis::RedisStore;

use crate::config::{LimitKey, OnStoreError, RateLimit};

pub(crate) static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub(crate) static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

const NANOS: u64 = 1_000_000_000;

/// Nanoseconds on the process's monotonic clock, from one second (so that a fresh
/// key's 0 is in the past).
fn now() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    NANOS + u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX / 2)
}

/// Whole seconds, rounded up.
fn seconds(ns: u64) -> u64 {
    ns.div_ceil(NANOS)
}

enum State {
    /// `key = "route"`: one bucket, updated without a lock.
    One(AtomicU64),
    Keyed(Keyed),
}

/// One `[rate_limit.NAME]` rule with its state. The state lives as long as the rule
/// is unchanged: a reload that keeps it keeps its buckets.
pub struct Limiter {
    pub rule: RateLimit,
    gcra: Gcra,
    state: State,
    /// `RateLimit-Policy`, built once.
    policy: HeaderValue,
    /// `store = "redis"`: where the shared state lives.
    store: Option<std::sync::Arc<RedisStore>>,
}

/// A decision and what the client is told of it.
pub struct Verdict {
    pub decision: Decision,
    limiter_policy: HeaderValue,
    name: String,
}

impl Limiter {
    pub fn new(rule: &RateLimit) -> Limiter {
        Limiter::with_store(rule, None)
    }

    /// A rule whose `store = "redis"` state lives in `store`.
    pub fn with_store(rule: &RateLimit, store: Option<std::sync::Arc<RedisStore>>) -> Limiter {
        let gcra = Gcra::new(rule.count, rule.period_ns, rule.burst);
        let window = seconds(gcra.interval.saturating_mul(gcra.burst)).max(1);
        let policy =
            HeaderValue::try_from(format!("\"{}\";q={};w={window}", rule.name, gcra.burst))
                .unwrap_or_else(|_| HeaderValue::from_static("\"limit\""));
        let state = match rule.key {
            LimitKey::Route => State::One(AtomicU64::new(0)),
            _ => State::Keyed(Keyed::new(rule.max_keys)),
        };
        Limiter {
            rule: rule.clone(),
            gcra,
            state,
            policy,
            store: store.filter(|_| rule.shared),
        }
    }

    /// Decides one request (or connection) whose key is `key` (ignored for
    /// `key = "route"`): in Redis for a shared rule, unless it cannot answer in time,
    /// and then as `on_store_error` says.
    pub async fn check(&self, key: &[u8]) -> Decision {
        if let Some(store) = &self.store {
            let shared = store
                .decide(&self.rule.name, key, self.gcra.interval, self.gcra.burst)
                .await;
            if let Some(d) = shared {
                return d;
            }
            match self.rule.on_store_error {
                OnStoreError::Local => {}
                OnStoreError::Allow => {
                    return Decision::Allow {
                        remaining: self.gcra.burst - 1,
                        reset: self.gcra.interval,
                    }
                }
                OnStoreError::Deny => {
                    return Decision::Deny {
                        retry_after: NANOS,
                        reset: NANOS,
                    }
                }
            }
        }
        self.check_local(key)
    }

    /// The instance's own decision.
    pub fn check_local(&self, key: &[u8]) -> Decision {
        let now = now();
        match &self.state {
            State::Keyed(map) => map.with(key, |tat| self.gcra.decide(tat, now)),
            State::One(cell) => {
                let mut current = cell.load(Ordering::Acquire);
                loop {
                    let mut tat = current;
                    let d = self.gcra.decide(&mut tat, now);
                    if tat == current {
                        return d;
                    }
                    match cell.compare_exchange_weak(
                        current,
                        tat,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return d,
                        Err(seen) => current = seen,
                    }
                }
            }
        }
    }

    /// [`Limiter::check`], with what the response headers need.
    pub async fn verdict(&self, key: &[u8]) -> Verdict {
        Verdict {
            decision: self.check(key).await,
            limiter_policy: self.policy.clone(),
            name: self.rule.name.clone(),
        }
    }
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        matches!(self.decision, Decision::Allow { .. })
    }

    /// How many more may pass now (0 when refused).
    pub fn remaining(&self) -> u64 {
        match self.decision {
            Decision::Allow { remaining, .. } => remaining,
            Decision::Deny { .. } => 0,
        }
    }

    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers), and
    /// `Retry-After` when refused.
    pub fn write(&self, headers: &mut HeaderMap) {
        let (remaining, reset) = match self.decision {
            Decision::Allow { remaining, reset } => (remaining, reset),
            Decision::Deny { retry_after, reset } => {
                headers.insert(
                    http::header::RETRY_AFTER,
                    HeaderValue::from(seconds(retry_after).max(1)),
                );
                (0, reset)
            }
        };
        headers.insert(RATELIMIT_POLICY.clone(), self.limiter_policy.clone());
        if let Ok(v) = HeaderValue::try_from(format!(
            "\"{}\";r={remaining};t={}",
            self.name,
            seconds(reset)
        )) {
            headers.insert(RATELIMIT.clone(), v);
        }
    }
}

/// A rule as one listener applies it: the limiter, and the counter of its refusals
/// there (`fulcrum_rate_limited_total{listener, rule}`).
#[derive(Clone)]
pub struct Applied {
    pub limiter: std::sync::Arc<Limiter>,
    pub refused: prometheus::IntCounter,
}

impl std::fmt::Debug for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Applied")
            .field(&self.limiter.rule.name)
            .finish()
    }
}

impl Applied {
    /// Decides for `key`, counting a refusal.
    pub async fn verdict(&self, key: &[u8]) -> Verdict {
        let v = self.limiter.verdict(key).await;
        if !v.allowed() {
            self.refused.inc();
        }
        v
    }
}

/// The rules of a generation, by name, reusing the state of `previous` for rules
/// that did not change.
pub(crate) fn build(
    rules: &[RateLimit],
    previous: &std::collections::HashMap<String, std::sync::Arc<Limiter>>,
    store: Option<&std::sync::Arc<RedisStore>>,
) -> std::collections::HashMap<String, std::sync::Arc<Limiter>> {
    // A shared rule keeps its state only with the same connection to Redis.
    let same_store = |l: &Limiter| match (&l.store, store) {
        (Some(a), Some(b)) => std::sync::Arc::ptr_eq(a, b),
        (None, _) => !l.rule.shared,
        (Some(_), None) => false,
    };
    rules
        .iter()
        .map(|r| {
            let l = match previous.get(&r.name) {
                Some(l) if l.rule == *r && same_store(l) => l.clone(),
                _ => std::sync::Arc::new(Limiter::with_store(r, store.cloned())),
            };
            (r.name.clone(), l)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(key: LimitKey, count: u64, burst: u64) -> RateLimit {
        RateLimit {
            name: "per_ip".into(),
            key,
            count,
            period_ns: NANOS,
            burst,
            headers: true,
            max_keys: 100,
            shared: false,
            on_store_error: OnStoreError::Local,
        }
    }

    #[tokio::test]
    async fn keys_have_their_own_buckets_and_route_shares_one() {
        let l = Limiter::new(&rule(LimitKey::ClientIp, 1, 2));
        assert!(l.verdict(b"a").await.allowed());
        assert!(l.verdict(b"a").await.allowed());
        assert!(!l.verdict(b"a").await.allowed());
        assert!(l.verdict(b"b").await.allowed());
        let shared = Limiter::new(&rule(LimitKey::Route, 1, 2));
        assert!(shared.verdict(b"a").await.allowed());
        assert!(shared.verdict(b"b").await.allowed());
        assert!(!shared.verdict(b"c").await.allowed());
    }

    #[tokio::test]
    async fn a_refusal_says_when_to_come_back() {
        let l = Limiter::new(&rule(LimitKey::ClientIp, 10, 1));
        let mut h = HeaderMap::new();
        l.verdict(b"a").await.write(&mut h);
        assert_eq!(h["ratelimit-policy"], "\"per_ip\";q=1;w=1");
        assert_eq!(h["ratelimit"], "\"per_ip\";r=0;t=1");
        assert!(h.get("retry-after").is_none());
        let v = l.verdict(b"a").await;
        assert!(!v.allowed());
        let mut h = HeaderMap::new();
        v.write(&mut h);
        assert_eq!(h["retry-after"], "1");
    }

    #[tokio::test]
    async fn an_unchanged_rule_keeps_its_state_across_a_rebuild() {
        let r = rule(LimitKey::ClientIp, 1, 1);
        let first = build(std::slice::from_ref(&r), &Default::default(), None);
        assert!(matches!(
            first["per_ip"].check(b"a").await,
            Decision::Allow { .. }
        ));
        let again = build(std::slice::from_ref(&r), &first, None);
        assert!(std::sync::Arc::ptr_eq(&first["per_ip"], &again["per_ip"]));
        assert!(
            matches!(again["per_ip"].check(b"a").await, Decision::Deny { .. }),
            "the bucket was kept"
        );
        let changed = RateLimit { burst: 5, ..r };
        let other = build(std::slice::from_ref(&changed), &again, None);
        assert!(!std::sync::Arc::ptr_eq(&again["per_ip"], &other["per_ip"]));
    }
}
