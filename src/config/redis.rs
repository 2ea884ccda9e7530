//! `[redis]`: where rate limits with `store = "redis"` keep their state, shared by
//! every fulcrum instance that points at the same server.

use std::time::Duration;

use super::raw::RawRedis;
use super::validate::Validator;

/// How long a decision may wait for Redis before it falls back.
pub(super) const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);

#[derive(Clone, PartialEq, Eq)]
pub struct Redis {
    /// `redis://host:port/db` or `rediss://` (TLS).
    pub url: String,
    /// Read from `password_file`.
    pub password: Option<String>,
    pub timeout: Duration,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "..."))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Validator<'_> {
    pub(super) fn redis(&mut self, r: &RawRedis) -> Redis {
        let url = r.url.get_ref().trim().to_string();
        let rest = url
            .strip_prefix("redis://")
            .or_else(|| url.strip_prefix("rediss://"));
        if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
            self.err(
                Some(r.url.span()),
                "redis.url",
                format!(
                    "must be like \"redis://127.0.0.1:6379/0\" or \"rediss://...\", got {url:?}"
                ),
            );
        }
        let password = r
            .password_file
            .as_ref()
            .and_then(|p| self.secret_file(p, "redis.password_file"));
        let timeout = self.duration(&r.timeout, "redis.timeout", DEFAULT_REDIS_TIMEOUT);
        if timeout.is_zero() {
            if let Some(t) = &r.timeout {
                self.err(Some(t.span()), "redis.timeout", "must be greater than zero");
            }
        }
        Redis {
            url,
            password,
            timeout,
        }
    }
}
