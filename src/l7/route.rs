//! The route table of one http listener, compiled once per configuration generation.
//! Matching borrows from the request and allocates nothing.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::admin::metrics::RequestMetrics;
use crate::config::HostPattern;

use super::static_files::StaticDir;
use super::target::UpstreamTarget;

/// Where a matched request goes.
#[derive(Debug, Clone)]
pub enum Target {
    Upstream(Arc<UpstreamTarget>),
    Static(Arc<StaticDir>),
    /// Answered by fulcrum itself.
    Redirect(Arc<crate::config::Redirect>),
}

/// What a route decides for a request.
#[derive(Debug)]
pub struct Action {
    pub target: Target,
    /// Time allowed for the upstream's response headers.
    pub timeout: Duration,
    /// Removed from the path before a static route looks for the file.
    pub strip_prefix: Option<String>,
    /// Request counters for this listener and the route's upstream.
    pub metrics: Arc<RequestMetrics>,
    /// Served through the response cache.
    pub cache: Option<super::cache_route::CacheRoute>,
    /// `Upgrade` protocols passed through, lower case.
    pub upgrades: Vec<String>,
    /// Static routes: serve path segments that start with a dot.
    pub static_hidden: bool,
    /// Upstream routes: the path sent to the upstream.
    pub rewrite: Option<super::shaping::PathRewrite>,
    /// Responses compressed for clients that accept it.
    pub compress: bool,
    /// The route's header rules, applied after the listener's.
    pub request_headers: Option<Arc<super::headers::Rules>>,
    pub response_headers: Option<Arc<super::headers::Rules>>,
    /// The route's rate limit, applied after the listener's.
    pub rate_limit: Option<crate::limits::Applied>,
}

#[derive(Debug)]
pub struct Route {
    pub host: Option<HostPattern>,
    pub path_prefix: Option<String>,
    /// Empty: any method.
    pub methods: Vec<Method>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub action: Action,
}

#[derive(Debug, Default)]
pub struct RouteTable {
    pub routes: Vec<Route>,
    /// The listener's own upstream, for requests no route matches.
    pub default: Option<Action>,
}

/// The host of a request without its port: `example.com:8080` -> `example.com`,
/// `[::1]:8080` -> `[::1]`.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

impl Route {
    fn matches(
        &self,
        method: &Method,
        host: Option<&str>,
        path: &str,
        headers: &HeaderMap,
    ) -> bool {
        if let Some(pattern) = &self.host {
            match host {
                Some(h) if pattern.matches(h) => {}
                _ => return false,
            }
        }
        if let Some(prefix) = &self.path_prefix {
            if !path.starts_with(prefix.as_str()) {
                return false;
            }
        }
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return false;
        }
        self.headers
            .iter()
            .all(|(name, value)| headers.get_all(name).iter().any(|v| v == value))
    }
}

impl RouteTable {
    /// The first route that matches, else the default; `host` is without its port.
    pub fn find(
        &self,
        method: &Method,
        host: Option<&str>,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<&Action> {
        self.routes
            .iter()
            .find(|r| r.matches(method, host, path, headers))
            .map(|r| &r.action)
            .or(self.default.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(
        host: Option<HostPattern>,
        prefix: Option<&str>,
        methods: &[&str],
        headers: &[(&str, &str)],
    ) -> Route {
        Route {
            host,
            path_prefix: prefix.map(str::to_string),
            methods: methods.iter().map(|m| m.parse().unwrap()).collect(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.parse().unwrap(), HeaderValue::from_str(v).unwrap()))
                .collect(),
            action: Action {
                target: Target::Static(Arc::new(StaticDir::new("/nonexistent".into()))),
                timeout: Duration::from_secs(1),
                strip_prefix: None,
                metrics: crate::admin::metrics::Metrics::new().requests("t", "-"),
                cache: None,
                upgrades: Vec::new(),
                static_hidden: false,
                rewrite: None,
                compress: false,
                request_headers: None,
                response_headers: None,
                rate_limit: None,
            },
        }
    }

    #[test]
    fn ports_are_removed_from_hosts() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn every_condition_of_a_route_must_hold() {
        let r = route(
            Some(HostPattern::Exact("api.example.com".into())),
            Some("/api/"),
            &["GET"],
            &[("x-canary", "1")],
        );
        let mut h = HeaderMap::new();
        h.insert("x-canary", HeaderValue::from_static("1"));
        assert!(r.matches(&Method::GET, Some("api.example.com"), "/api/x", &h));
        assert!(!r.matches(&Method::POST, Some("api.example.com"), "/api/x", &h));
        assert!(!r.matches(&Method::GET, Some("www.example.com"), "/api/x", &h));
        assert!(!r.matches(&Method::GET, None, "/api/x", &h));
        assert!(!r.matches(&Method::GET, Some("api.example.com"), "/apix", &h));
        assert!(!r.matches(
            &Method::GET,
            Some("api.example.com"),
            "/api/x",
            &HeaderMap::new()
        ));
    }

    #[test]
    fn the_first_match_wins_and_the_default_catches_the_rest() {
        let table = RouteTable {
            routes: vec![
                route(None, Some("/a/"), &[], &[]),
                route(None, Some("/"), &["POST"], &[]),
            ],
            default: None,
        };
        let h = HeaderMap::new();
        let first = &table.routes[0].action as *const Action;
        let second = &table.routes[1].action as *const Action;
        assert_eq!(
            table
                .find(&Method::POST, None, "/a/b", &h)
                .map(|a| a as *const _),
            Some(first)
        );
        assert_eq!(
            table
                .find(&Method::POST, None, "/b", &h)
                .map(|a| a as *const _),
            Some(second)
        );
        assert!(table.find(&Method::GET, None, "/b", &h).is_none());
    }
}
