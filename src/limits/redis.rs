//! Rate-limit state kept in Redis, shared by every fulcrum instance that uses the same
//! server: one atomic round trip per decision (a Lua script run with `EVALSHA`), the
//! clock Redis's own (`TIME`), so instances whose clocks differ still agree, and each
//! key expiring by itself once its bucket is full again.
//!
//! The hot path never waits longer than `redis.timeout`: a decision Redis does not
//! give in time falls back (`on_store_error`), and after a failure Redis is left
//! alone for [`PAUSE`] (decisions fall back at once) before it is tried again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::gcra::Decision;
use crate::config::Redis;

/// How long Redis is left alone after it failed to answer.
const PAUSE: Duration = Duration::from_secs(1);

/// GCRA over microseconds of Redis's clock. KEYS[1]: the bucket; ARGV: interval
/// (µs), burst. Returns {allowed (1/0), remaining or retry-after (µs), reset (µs)}.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tolerance = interval * (burst - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local ahead = tat - now
if ahead > tolerance then
  return {0, ahead - tolerance, ahead}
end
local new = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1)
return {1, math.floor((tolerance + interval - (new - now)) / interval), new - now}
";

/// The connection to Redis shared by every rule of a configuration (and kept across
/// reloads while `[redis]` stays the same).
pub struct RedisStore {
    pub settings: Redis,
    manager: ConnectionManager,
    script: redis::Script,
    /// While Redis is being left alone: until this many ms after `born`.
    paused_until_ms: AtomicU64,
    born: Instant,
    /// The state last reported (a warning once per outage, a note when it ends).
    up: AtomicBool,
    gauge: prometheus::IntGauge,
}

impl RedisStore {
    /// Connects lazily: a Redis that is down at start delays nothing.
    pub fn new(settings: &Redis, gauge: prometheus::IntGauge) -> Result<RedisStore, String> {
        let mut info = redis::IntoConnectionInfo::into_connection_info(settings.url.as_str())
            .map_err(|e| format!("redis.url: {e}"))?;
        if let Some(p) = &settings.password {
            let redis_settings = info.redis_settings().clone().set_password(p);
            info = info.set_redis_settings(redis_settings);
        }
        let client = redis::Client::open(info).map_err(|e| format!("redis: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(settings.timeout))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(2))
            .set_number_of_retries(1);
        let manager = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("redis: {e}"))?;
        gauge.set(1);
        Ok(RedisStore {
            settings: settings.clone(),
            manager,
            script: redis::Script::new(SCRIPT),
            paused_until_ms: AtomicU64::new(0),
            born: Instant::now(),
            up: AtomicBool::new(true),
            gauge,
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The bucket's key: the same on every instance for the same rule and key.
    fn bucket(rule: &str, key: &[u8]) -> String {
        let digest = Sha256::digest(key);
        let mut out = format!("fulcrum:rl:{rule}:");
        for b in &digest[..16] {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// Redis's decision, or `None` when it did not give one in time (or is being
    /// left alone after a failure).
    pub async fn decide(
        &self,
        rule: &str,
        key: &[u8],
        interval_ns: u64,
        burst: u64,
    ) -> Option<Decision> {
        if self.now_ms() < self.paused_until_ms.load(Ordering::Relaxed) {
            return None;
        }
        let mut conn = self.manager.clone();
        let mut call = self.script.key(Self::bucket(rule, key));
        call.arg((interval_ns / 1000).max(1)).arg(burst);
        let answer = tokio::time::timeout(
            self.settings.timeout,
            call.invoke_async::<Vec<i64>>(&mut conn),
        )
        .await;
        let parsed = match answer {
            Ok(Ok(v)) => match v.as_slice() {
                [1, remaining, reset] => Some(Decision::Allow {
                    remaining: u64::try_from(*remaining).unwrap_or(0),
                    reset: u64::try_from(*reset).unwrap_or(0) * 1000,
                }),
                [0, retry, reset] => Some(Decision::Deny {
                    retry_after: u64::try_from(*retry).unwrap_or(0) * 1000,
                    reset: u64::try_from(*reset).unwrap_or(0) * 1000,
                }),
                _ => {
                    self.failed("it answered something else than a decision");
                    return None;
                }
            },
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                return None;
            }
            Err(_) => {
                self.failed(&format!("no answer within {:?}", self.settings.timeout));
                return None;
            }
        };
        if !self.up.swap(true, Ordering::Relaxed) {
            self.gauge.set(1);
            info!("redis: answering again; rate limits are shared again");
        }
        parsed
    }

    /// The 32 bytes of TLS ticket key material of rotation `period` of `interval`,
    /// created there (`SET NX`, expiring after three periods) when `create` and
    /// missing: every instance on this Redis gets the same.
    pub async fn ticket_key(
        &self,
        interval: Duration,
        period: u64,
        create: bool,
    ) -> Result<Option<Vec<u8>>, String> {
        const TICKET_SCRIPT: &str = r"
if ARGV[2] == '1' then
  redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[3])
end
return redis.call('GET', KEYS[1])";
        let key = format!("fulcrum:tls_ticket_key:{}:{period}", interval.as_secs());
        let material = crate::tls::tickets::local_material();
        let mut conn = self.manager.clone();
        let script = redis::Script::new(TICKET_SCRIPT);
        let mut call = script.key(key);
        call.arg(&material[..])
            .arg(if create { "1" } else { "0" })
            .arg(interval.as_secs().saturating_mul(3).max(1));
        let wait = self.settings.timeout.max(Duration::from_secs(1));
        match tokio::time::timeout(wait, call.invoke_async::<Option<Vec<u8>>>(&mut conn)).await {
            Ok(Ok(Some(m))) if m.len() == material.len() => Ok(Some(m)),
            Ok(Ok(Some(_))) => Err("the stored ticket key is not 32 bytes".into()),
            Ok(Ok(None)) => Ok(None),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {wait:?}")),
        }
    }

    /// Takes the lock `key` for `holder` for `lease` (`SET NX PX`); `Ok(Err(other))`
    /// when `other` holds it.
    pub async fn try_lock(
        &self,
        key: &str,
        holder: &str,
        lease: Duration,
    ) -> Result<Result<(), String>, String> {
        const LOCK_SCRIPT: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return ARGV[1]
end
return redis.call('GET', KEYS[1])";
        let mut conn = self.manager.clone();
        let script = redis::Script::new(LOCK_SCRIPT);
        let mut call = script.key(key);
        call.arg(holder).arg(lease.as_millis() as u64);
        let wait = self.settings.timeout.max(Duration::from_secs(1));
        match tokio::time::timeout(wait, call.invoke_async::<Option<String>>(&mut conn)).await {
            Ok(Ok(Some(h))) if h == holder => Ok(Ok(())),
            Ok(Ok(Some(other))) => Ok(Err(other)),
            // Expired between the SET and the GET: free again.
            Ok(Ok(None)) => Ok(Err("nobody (just expired)".into())),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {wait:?}")),
        }
    }

    /// Releases `key` if `holder` still holds it.
    pub async fn unlock(&self, key: &str, holder: &str) {
        const UNLOCK_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";
        let mut conn = self.manager.clone();
        let script = redis::Script::new(UNLOCK_SCRIPT);
        let mut call = script.key(key);
        call.arg(holder);
        let wait = self.settings.timeout.max(Duration::from_secs(1));
        let _ = tokio::time::timeout(wait, call.invoke_async::<i64>(&mut conn)).await;
    }

    fn failed(&self, why: &str) {
        self.paused_until_ms
            .store(self.now_ms() + PAUSE.as_millis() as u64, Ordering::Relaxed);
        if self.up.swap(false, Ordering::Relaxed) {
            self.gauge.set(0);
            warn!(error = %why, "redis: not answering; rate limits with store = \"redis\" follow on_store_error until it does");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_the_same_everywhere_and_hide_the_key() {
        let a = RedisStore::bucket("per_ip", b"192.0.2.1");
        assert_eq!(a, RedisStore::bucket("per_ip", b"192.0.2.1"));
        assert_ne!(a, RedisStore::bucket("per_ip", b"192.0.2.2"));
        assert!(a.starts_with("fulcrum:rl:per_ip:") && a.len() == "fulcrum:rl:per_ip:".len() + 32);
        assert!(!RedisStore::bucket("r", &[b'x'; 10_000]).contains('x'));
    }
}
