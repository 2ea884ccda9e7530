//! One request on its way through the engine.

use std::sync::Arc;

use http::HeaderValue;

use super::request_body::BodyStats;
use crate::admin::metrics::RequestMetrics;
use crate::cache::status::CacheOutcome;
use crate::upstream::{Backend, Upstream};

/// What a request learns as it travels: the route's counters, the upstream and the
/// backend it went to, its body's counts, what the cache did. Created once when the
/// request arrives, passed down by reference, and turned into the request's access
/// record when its response begins.
#[derive(Default)]
pub struct Exchange {
    /// The route's request counters (`None`: no route took the request).
    pub metrics: Option<Arc<RequestMetrics>>,
    pub upstream: Option<Arc<Upstream>>,
    /// The backend of the last attempt.
    pub backend: Option<Arc<Backend>>,
    /// The request body's counts, when it has one.
    pub body: Option<Arc<BodyStats>>,
    /// How the response cache answered, on cached routes.
    pub cache: Option<CacheOutcome>,
    /// `Cache-Status` for an error response, on cached routes.
    pub cache_status: Option<HeaderValue>,
    /// The sticky cookie that names the backend picked: added to the client's
    /// response only, never to what the cache stores.
    pub set_cookie: Option<HeaderValue>,
    /// The matched route compresses responses.
    pub compress: bool,
    /// The matched route's response header rules.
    pub response_headers: Option<Arc<super::headers::Rules>>,
    /// A rate limit's refusal, or the tightest of the passes whose rule shows its
    /// headers on allowed responses.
    pub rate_limit: Option<crate::limits::Verdict>,
    /// Time to open the backend connection, when one was opened for the request.
    pub upstream_connect_ms: Option<u64>,
    /// Time from the request sent to the backend's response head.
    pub upstream_header_ms: Option<u64>,
    /// With an exported span: the matched route's path prefix (`http.route`).
    pub route: Option<String>,
    /// Attempts made to backends.
    pub attempts: u8,
    /// The upstream speaks HTTP/2.
    pub upstream_h2: bool,
}
