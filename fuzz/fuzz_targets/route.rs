//! The request's host, the path's normal form and the route matcher: any method, target and header fields
//! give a host or a 400 reason, and a route or none, never a panic.
//!
//! Input: a method line, a request-target line, then header lines (`name: value`).
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use fulcrum::admin::metrics::Metrics;
use fulcrum::config::HostPattern;
use fulcrum::l7::host::request_host;
use fulcrum::l7::path::{normalize, Rules};
use fulcrum::l7::route::{Action, Route, RouteTable, Target};
use fulcrum::l7::StaticDir;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version};
use libfuzzer_sys::fuzz_target;

fn table() -> RouteTable {
    let metrics = Metrics::new();
    let action = || Action {
        target: Target::Static(Arc::new(StaticDir::new("/nonexistent-fulcrum-fuzz".into()))),
        timeout: Duration::from_secs(1),
        strip_prefix: None,
        metrics: metrics.requests("fuzz", "-"),
        cache: None,
        upgrades: vec!["websocket".into()],
        static_hidden: false,
        rewrite: None,
        compress: false,
        request_headers: None,
        response_headers: None,
        rate_limit: None,
    };
    let route = |host: Option<HostPattern>, prefix: Option<&str>, methods: &[Method], headers: &[(&str, &str)]| Route {
        host,
        path_prefix: prefix.map(str::to_string),
        methods: methods.to_vec(),
        headers: headers
            .iter()
            .filter_map(|(n, v)| Some((HeaderName::from_bytes(n.as_bytes()).ok()?, HeaderValue::from_str(v).ok()?)))
            .collect(),
        action: action(),
    };
    RouteTable {
        routes: vec![
            route(Some(HostPattern::Exact("api.example.com".into())), Some("/v1/"), &[Method::GET], &[]),
            route(Some(HostPattern::Suffix(".example.com".into())), None, &[], &[("x-canary", "1")]),
            route(None, Some("/static/"), &[Method::GET, Method::HEAD], &[]),
            route(None, None, &[Method::POST], &[]),
        ],
        default: Some(action()),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let (Some(method), Some(target)) = (lines.next(), lines.next()) else {
        return;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let Ok(uri) = target.parse::<Uri>() else {
        return;
    };
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some((n, v)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(n.trim().as_bytes()),
            HeaderValue::from_str(v.trim()),
        ) {
            headers.append(n, v);
        }
    }
    for merge_slashes in [false, true] {
        for allow_encoded_slashes in [false, true] {
            let rules = Rules { merge_slashes, allow_encoded_slashes };
            if let Ok(once) = normalize(uri.path(), rules) {
                let twice = normalize(&once, rules).expect("a normal path stays valid");
                assert_eq!(once, twice, "normalising is idempotent");
                if merge_slashes && !once.is_empty() {
                    assert!(!once.contains("//"));
                    assert!(!once.split('/').any(|s| s == "." || s == ".."));
                }
            }
        }
    }
    let table = table();
    for version in [Version::HTTP_10, Version::HTTP_11, Version::HTTP_2] {
        for https in [false, true] {
            let host = request_host(&uri, &headers, version, https);
            if let Ok(Some(h)) = &host {
                assert!(h.authority().starts_with(h.name()));
                assert!(!h.authority().bytes().any(|b| b.is_ascii_uppercase()));
            }
            let name = host.ok().flatten();
            let _ = table.find(&method, name.as_ref().map(|h| h.name()), uri.path(), &headers);
        }
    }
});
