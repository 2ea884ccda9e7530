//! A tcp listener's `[[listener.route]]` entries: routing by the server name of the
//! TLS ClientHello, the bytes passed on untouched.

use std::collections::BTreeMap;
use std::ops::Range;

use toml::Spanned;

use super::kinds::HostPattern;
use super::raw::{RawRoute, RawUpstream};
use super::validate::Validator;

/// One route of a tcp listener.
#[derive(Debug, Clone, PartialEq)]
pub struct SniRoute {
    pub pattern: HostPattern,
    pub upstream: String,
    /// Applied to each connection the route takes.
    pub rate_limit: Option<String>,
}

/// `"api.example.com"` or `"*.example.com"`, lower case; `None` when it is neither.
pub(super) fn host_pattern(text: &str) -> Option<HostPattern> {
    let text = text.trim().to_ascii_lowercase();
    let (pattern, name) = match text.strip_prefix("*.") {
        Some(rest) => (HostPattern::Suffix(format!(".{rest}")), rest.to_string()),
        None => (HostPattern::Exact(text.clone()), text.clone()),
    };
    let valid = !name.is_empty()
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    valid.then_some(pattern)
}

impl Validator<'_> {
    /// The routes of tcp listener `key`; `tls`: the listener terminates TLS, which
    /// leaves no ClientHello to read.
    pub(super) fn sni_routes(
        &mut self,
        key: &str,
        routes: &[Spanned<RawRoute>],
        upstreams: &BTreeMap<String, Spanned<RawUpstream>>,
        tls: bool,
    ) -> Vec<SniRoute> {
        let mut out = Vec::new();
        for (j, sr) in routes.iter().enumerate() {
            let k = |f: &str| format!("{key}.route[{j}].{f}");
            let r = sr.get_ref();
            let http_only: [(&str, Option<Range<usize>>); 14] = [
                ("host", r.host.as_ref().map(Spanned::span)),
                ("path_prefix", r.path_prefix.as_ref().map(Spanned::span)),
                (
                    "methods",
                    r.methods
                        .as_ref()
                        .and_then(|m| m.first())
                        .map(Spanned::span),
                ),
                ("headers", r.headers.as_ref().map(Spanned::span)),
                ("static", r.static_dir.as_ref().map(Spanned::span)),
                ("cache", r.cache.as_ref().map(Spanned::span)),
                ("timeout", r.timeout.as_ref().map(Spanned::span)),
                ("upgrades", r.upgrades.as_ref().map(Spanned::span)),
                ("static_hidden", r.static_hidden.as_ref().map(Spanned::span)),
                ("rewrite", r.rewrite.as_ref().map(Spanned::span)),
                ("redirect", r.redirect.as_ref().map(Spanned::span)),
                ("compress", r.compress.as_ref().map(Spanned::span)),
                (
                    "request_headers",
                    r.request_headers.as_ref().map(Spanned::span),
                ),
                (
                    "response_headers",
                    r.response_headers.as_ref().map(Spanned::span),
                ),
            ];
            for (f, span) in http_only {
                if let Some(span) = span {
                    self.err(
                        Some(span),
                        k(f),
                        "only `sni`, `upstream` and `rate_limit` apply to a tcp listener's route",
                    );
                }
            }
            if tls {
                self.err(
                    Some(sr.span()),
                    format!("{key}.route[{j}]"),
                    "routing by SNI needs a tcp listener without `tls` (with it, fulcrum terminates TLS and passes the plaintext)",
                );
                continue;
            }
            let Some(sni) = &r.sni else {
                self.err(
                    Some(sr.span()),
                    k("sni"),
                    "is required on a tcp listener's route",
                );
                continue;
            };
            let Some(pattern) = host_pattern(sni.get_ref()) else {
                self.err(
                    Some(sni.span()),
                    k("sni"),
                    format!(
                        "must be a server name like \"api.example.com\" or \"*.example.com\", got {:?}",
                        sni.get_ref()
                    ),
                );
                continue;
            };
            let Some(u) = &r.upstream else {
                self.err(
                    Some(sr.span()),
                    k("upstream"),
                    "is required on a tcp listener's route",
                );
                continue;
            };
            match upstreams.get(u.get_ref()) {
                None => {
                    self.err(
                        Some(u.span()),
                        k("upstream"),
                        format!("names upstream {:?}, which is not defined", u.get_ref()),
                    );
                    continue;
                }
                Some(up) if up.get_ref().tls.is_some() || up.get_ref().sticky.is_some() => {
                    self.err(
                        Some(u.span()),
                        k("upstream"),
                        format!(
                            "upstream {:?} has `tls` or `sticky`; a route by SNI passes the client's TLS through as it is",
                            u.get_ref()
                        ),
                    );
                    continue;
                }
                Some(_) => {}
            }
            let rate_limit =
                self.rate_limit_ref(&k("rate_limit"), &r.rate_limit, super::kinds::Protocol::Tcp);
            out.push(SniRoute {
                pattern,
                upstream: u.get_ref().clone(),
                rate_limit,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_name_patterns() {
        assert_eq!(
            host_pattern("API.example.com"),
            Some(HostPattern::Exact("api.example.com".into()))
        );
        assert_eq!(
            host_pattern("*.example.com"),
            Some(HostPattern::Suffix(".example.com".into()))
        );
        for bad in ["", "*.", "a..b", "a.example.com:443", "*", "a b"] {
            assert_eq!(host_pattern(bad), None, "{bad}");
        }
    }
}
