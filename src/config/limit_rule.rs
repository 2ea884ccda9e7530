//! A `[rate_limit.NAME]` rule as the rest of the process sees it, once checked.

/// What a rule counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The client's address (after the PROXY header and `trusted_proxies`).
    ClientIp,
    /// A request header's value (lower-case name); requests without it share one
    /// bucket.
    Header(http::HeaderName),
    /// A cookie's value; requests without it share one bucket.
    Cookie(String),
    /// One bucket for everything the rule applies to.
    Route,
}

impl LimitKey {
    /// Whether a tcp listener can key by it (no request to read a header from).
    pub fn needs_http(&self) -> bool {
        matches!(self, LimitKey::Header(_) | LimitKey::Cookie(_))
    }
}

/// What a rule with `store = "redis"` decides while Redis cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// The instance's own bucket decides.
    Local,
    Allow,
    Deny,
}

/// One `[rate_limit.NAME]` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub name: String,
    pub key: LimitKey,
    /// `count` requests per `period_ns` nanoseconds.
    pub count: u64,
    pub period_ns: u64,
    /// Requests that may pass at once.
    pub burst: u64,
    /// `RateLimit` and `RateLimit-Policy` on allowed responses too.
    pub headers: bool,
    pub max_keys: usize,
    /// `store = "redis"`: the state lives in Redis, shared by every instance.
    pub shared: bool,
    pub on_store_error: OnStoreError,
}
