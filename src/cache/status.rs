//! `Cache-Status` (RFC 9211) with the cache name `fulcrum`.

use http::HeaderValue;

pub const CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");

/// What the cache did for one request, as the access log and
/// `fulcrum_cache_requests_total` say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Miss,
    Stale,
    Revalidated,
    Bypass,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Stale => "stale",
            CacheOutcome::Revalidated => "revalidated",
            CacheOutcome::Bypass => "bypass",
        }
    }
}

/// Why a request went to the origin (RFC 9211 2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fwd {
    /// Nothing stored for the URI.
    Miss,
    /// Stored responses for the URI, none for this request's variant.
    VaryMiss,
    /// A stored response that had to be revalidated.
    Stale,
    /// The request asked for the origin (`no-cache`, `max-age=0`, ...).
    Request,
    /// A method the cache does not answer.
    Method,
}

impl Fwd {
    fn as_str(self) -> &'static str {
        match self {
            Fwd::Miss => "miss",
            Fwd::VaryMiss => "vary-miss",
            Fwd::Stale => "stale",
            Fwd::Request => "request",
            Fwd::Method => "method",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStatus {
    pub hit: bool,
    pub fwd: Option<Fwd>,
    /// The origin's status, when it differs from the one sent (a 304 turned into 200,
    /// an error answered with a stale response).
    pub fwd_status: Option<u16>,
    pub stored: bool,
    /// Freshness left, in seconds; negative when stale.
    pub ttl: Option<i64>,
    pub detail: Option<&'static str>,
}

impl CacheStatus {
    pub fn hit(ttl: i64) -> CacheStatus {
        CacheStatus {
            hit: true,
            ttl: Some(ttl),
            ..CacheStatus::default()
        }
    }

    pub fn forward(fwd: Fwd) -> CacheStatus {
        CacheStatus {
            fwd: Some(fwd),
            ..CacheStatus::default()
        }
    }

    pub fn to_header(&self) -> HeaderValue {
        let mut s = String::with_capacity(48);
        s.push_str("fulcrum");
        if self.hit {
            s.push_str("; hit");
        }
        if let Some(f) = self.fwd {
            s.push_str("; fwd=");
            s.push_str(f.as_str());
        }
        if let Some(code) = self.fwd_status {
            s.push_str("; fwd-status=");
            s.push_str(&code.to_string());
        }
        if self.stored {
            s.push_str("; stored");
        }
        if let Some(ttl) = self.ttl {
            s.push_str("; ttl=");
            s.push_str(&ttl.to_string());
        }
        if let Some(d) = self.detail {
            s.push_str("; detail=");
            s.push_str(d);
        }
        HeaderValue::try_from(s).unwrap_or(HeaderValue::from_static("fulcrum"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_as_rfc_9211_lists() {
        assert_eq!(CacheStatus::hit(42).to_header(), "fulcrum; hit; ttl=42");
        let mut s = CacheStatus::forward(Fwd::Miss);
        s.stored = true;
        assert_eq!(s.to_header(), "fulcrum; fwd=miss; stored");
        let mut s = CacheStatus::forward(Fwd::Stale);
        s.fwd_status = Some(503);
        s.ttl = Some(-4);
        s.detail = Some("stale-if-error");
        assert_eq!(
            s.to_header(),
            "fulcrum; fwd=stale; fwd-status=503; ttl=-4; detail=stale-if-error"
        );
        assert_eq!(
            CacheStatus::forward(Fwd::Method).to_header(),
            "fulcrum; fwd=method"
        );
    }
}
