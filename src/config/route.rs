//! `[[listener.route]]`: what a request must match, and where it goes.

use super::defaults::DEFAULT_ROUTE_TIMEOUT;
use super::defaults::DEFAULT_UPGRADES;
use super::headers::HeaderRules;
use super::kinds::HostPattern;
use super::kinds::Protocol;
use super::raw::RawRoute;
use super::raw::RawUpstream;
use super::shaping::Redirect;
use super::shaping::Rewrite;
use super::sni;
use super::validate::Validator;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// One `[[listener.route]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub host: Option<HostPattern>,
    pub path_prefix: Option<String>,
    /// Upper case; empty means any method.
    pub methods: Vec<String>,
    /// Lower-case names, exact values.
    pub headers: Vec<(String, String)>,
    pub target: RouteTarget,
    /// Time allowed for the upstream's response headers.
    pub timeout: Duration,
    /// Served through the response cache.
    pub cache: bool,
    /// `Upgrade` protocols passed through, lower case; never `h2c`.
    pub upgrades: Vec<String>,
    /// Static routes: serve path segments that start with a dot.
    pub static_hidden: bool,
    /// Upstream routes: the path sent to the upstream.
    pub rewrite: Option<Rewrite>,
    /// Applied after the listener's.
    pub request_headers: Option<HeaderRules>,
    pub response_headers: Option<HeaderRules>,
    /// Responses compressed as `[compression]` says.
    pub compress: bool,
    /// The `[rate_limit.*]` rule the route's requests go through, after the
    /// listener's.
    pub rate_limit: Option<String>,
}

impl HostPattern {
    /// `host` without its port; compared without regard to case.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => host.eq_ignore_ascii_case(h),
            HostPattern::Suffix(s) => {
                host.len() > s.len()
                    && host.is_char_boundary(host.len() - s.len())
                    && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
                    && !host[..host.len() - s.len()].ends_with('.')
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    Upstream(String),
    /// A directory, already resolved against the config file's directory.
    Static(PathBuf),
    /// Answered by fulcrum itself.
    Redirect(Redirect),
}

impl Validator<'_> {
    pub(super) fn route(
        &mut self,
        key: &str,
        sr: &Spanned<RawRoute>,
        upstreams: &std::collections::BTreeMap<String, Spanned<RawUpstream>>,
    ) -> Option<Route> {
        let r = sr.get_ref();
        let k = |f: &str| format!("{key}.{f}");
        if let Some(sni) = &r.sni {
            self.err(
                Some(sni.span()),
                k("sni"),
                "applies to the routes of tcp listeners (without `tls`): http routes match `host`",
            );
        }
        let host = r.host.as_ref().and_then(|h| {
            if let Some(pattern) = sni::host_pattern(h.get_ref()) {
                Some(pattern)
            } else {
                self.err(
                    Some(h.span()),
                    k("host"),
                    format!("must be a host name like \"api.example.com\" or \"*.example.com\" (no port), got {:?}", h.get_ref()),
                );
                None
            }
        });
        let path_prefix = r.path_prefix.as_ref().and_then(|p| {
            if p.get_ref().starts_with('/') {
                Some(p.get_ref().clone())
            } else {
                self.err(
                    Some(p.span()),
                    k("path_prefix"),
                    format!("must start with '/', got {:?}", p.get_ref()),
                );
                None
            }
        });
        let mut methods = Vec::new();
        for (j, m) in r.methods.iter().flatten().enumerate() {
            let upper = m.get_ref().to_ascii_uppercase();
            if upper.is_empty() || http::Method::from_bytes(upper.as_bytes()).is_err() {
                self.err(
                    Some(m.span()),
                    format!("{key}.methods[{j}]"),
                    format!("is not an HTTP method, got {:?}", m.get_ref()),
                );
            } else {
                methods.push(upper);
            }
        }
        let mut headers = Vec::new();
        if let Some(h) = &r.headers {
            for (name, value) in h.get_ref() {
                let lower = name.to_ascii_lowercase();
                if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
                    self.err(
                        Some(h.span()),
                        format!("{key}.headers.{name}"),
                        "is not a valid header name",
                    );
                } else if http::HeaderValue::from_str(value).is_err() {
                    self.err(
                        Some(h.span()),
                        format!("{key}.headers.{name}"),
                        format!("is not a valid header value, got {value:?}"),
                    );
                } else {
                    headers.push((lower, value.clone()));
                }
            }
        }
        let timeout = self.duration(&r.timeout, &k("timeout"), DEFAULT_ROUTE_TIMEOUT);
        let cache = r.cache.as_ref().is_some_and(|c| *c.get_ref());
        let served = [
            r.upstream.as_ref().map(|s| s.span()),
            r.static_dir.as_ref().map(|s| s.span()),
            r.redirect.as_ref().map(|s| s.span()),
        ];
        if served.iter().flatten().count() > 1 {
            self.err(
                served.iter().flatten().nth(1).cloned(),
                key.to_string(),
                "has more than one of `upstream`, `static` and `redirect`; a route does one of them",
            );
            return None;
        }
        if let Some(redirect) = &r.redirect {
            let redirect = self.redirect(&k("redirect"), redirect)?;
            for (set, name) in [
                (r.rewrite.as_ref().map(|v| v.span()), "rewrite"),
                (r.cache.as_ref().map(|v| v.span()), "cache"),
                (r.timeout.as_ref().map(|v| v.span()), "timeout"),
                (r.upgrades.as_ref().map(|v| v.span()), "upgrades"),
                (r.static_hidden.as_ref().map(|v| v.span()), "static_hidden"),
            ] {
                if let Some(span) = set {
                    self.err(
                        Some(span),
                        k(name),
                        "does not apply to a route with `redirect`: fulcrum answers it itself",
                    );
                }
            }
            let response_headers = r
                .response_headers
                .as_ref()
                .map(|h| self.header_rules(&k("response_headers"), h, false));
            if let Some(h) = &r.request_headers {
                self.err(
                    Some(h.span()),
                    k("request_headers"),
                    "does not apply to a route with `redirect`: no request is sent",
                );
            }
            if let Some(c) = &r.compress {
                self.err(
                    Some(c.span()),
                    k("compress"),
                    "does not apply to a route with `redirect`: fulcrum answers it itself",
                );
            }
            return Some(Route {
                rate_limit: self.rate_limit_ref(&k("rate_limit"), &r.rate_limit, Protocol::Http),
                compress: false,
                host,
                path_prefix,
                methods,
                headers,
                request_headers: None,
                response_headers,
                target: RouteTarget::Redirect(redirect),
                timeout: DEFAULT_ROUTE_TIMEOUT,
                cache: false,
                upgrades: Vec::new(),
                static_hidden: false,
                rewrite: None,
            });
        }
        let rewrite = match &r.rewrite {
            Some(rw) if r.upstream.is_none() => {
                self.err(
                    Some(rw.span()),
                    k("rewrite"),
                    "applies to routes with an `upstream`",
                );
                None
            }
            Some(rw) => self.rewrite(&k("rewrite"), rw),
            None => None,
        };
        let target = match (&r.upstream, &r.static_dir) {
            (Some(u), None) => {
                if !upstreams.contains_key(u.get_ref()) {
                    self.err(
                        Some(u.span()),
                        k("upstream"),
                        format!("names upstream {:?}, which is not defined", u.get_ref()),
                    );
                }
                RouteTarget::Upstream(u.get_ref().clone())
            }
            (None, Some(d)) => {
                let dir = self
                    .file
                    .parent()
                    .unwrap_or(Path::new(""))
                    .join(d.get_ref());
                if !dir.is_dir() {
                    self.err(
                        Some(d.span()),
                        k("static"),
                        format!("{} is not a readable directory", dir.display()),
                    );
                }
                RouteTarget::Static(dir)
            }
            (Some(u), Some(_)) => {
                self.err(
                    Some(u.span()),
                    key.to_string(),
                    "has both `upstream` and `static`; a route serves one of them",
                );
                return None;
            }
            (None, None) => {
                self.err(
                    Some(sr.span()),
                    key.to_string(),
                    "needs `upstream`, `static` or `redirect`",
                );
                return None;
            }
        };
        let mut upgrades = Vec::new();
        match &r.upgrades {
            None => upgrades.extend(DEFAULT_UPGRADES.iter().map(|u| u.to_string())),
            Some(list) => {
                for (j, u) in list.get_ref().iter().enumerate() {
                    let lower = u.get_ref().trim().to_ascii_lowercase();
                    let token = !lower.is_empty()
                        && lower
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&b));
                    if lower == "h2c" || lower.starts_with("h2c/") {
                        self.err(
                            Some(u.span()),
                            format!("{key}.upgrades[{j}]"),
                            "h2c is never tunnelled: a client could reach the backend's HTTP/2 past every route rule",
                        );
                    } else if !token {
                        self.err(
                            Some(u.span()),
                            format!("{key}.upgrades[{j}]"),
                            format!(
                                "is not a protocol name like \"websocket\", got {:?}",
                                u.get_ref()
                            ),
                        );
                    } else {
                        upgrades.push(lower);
                    }
                }
            }
        }
        let static_hidden = r.static_hidden.as_ref().is_some_and(|h| *h.get_ref());
        if let (Some(h), false) = (&r.static_hidden, matches!(target, RouteTarget::Static(_))) {
            self.err(
                Some(h.span()),
                k("static_hidden"),
                "applies to routes with `static`",
            );
        }
        if let (Some(h), RouteTarget::Static(_)) = (&r.request_headers, &target) {
            self.err(
                Some(h.span()),
                k("request_headers"),
                "applies to routes with an `upstream`: a static route sends no request",
            );
        }
        if cache && matches!(target, RouteTarget::Static(_)) {
            if let Some(c) = &r.cache {
                self.err(
                    Some(c.span()),
                    k("cache"),
                    "applies to routes with an `upstream`; static files are served from disk",
                );
            }
        }
        Some(Route {
            host,
            path_prefix,
            methods,
            headers,
            target,
            timeout,
            cache,
            upgrades,
            static_hidden,
            rewrite,
            request_headers: r
                .request_headers
                .as_ref()
                .map(|h| self.header_rules(&k("request_headers"), h, true)),
            response_headers: r
                .response_headers
                .as_ref()
                .map(|h| self.header_rules(&k("response_headers"), h, false)),
            compress: r.compress.as_ref().is_some_and(|c| *c.get_ref()),
            rate_limit: self.rate_limit_ref(&k("rate_limit"), &r.rate_limit, Protocol::Http),
        })
    }
}
