//! The cache's reading of headers: Cache-Control directives, HTTP dates, `Age`, and
//! the storability and freshness decision built on them, with the store's own
//! arithmetic (lifetimes, staleness, `Age` sent) on what comes out. Whatever an origin
//! or a client sends, nothing panics or overflows.
//!
//! Input: one byte choosing the status, then request header lines, an empty line, and
//! response header lines (`name: value`); lines that are not valid fields are skipped.
#![no_main]

use std::time::{Duration, SystemTime};

use fulcrum::cache::policy;
use fulcrum::cache::{range, Cache, Key, Stored};
use fulcrum::config::CacheSettings;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use libfuzzer_sys::fuzz_target;

const STATUSES: [u16; 12] = [200, 203, 204, 206, 301, 304, 404, 410, 418, 500, 503, 599];

fn fields(text: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    for line in text.lines() {
        let Some((n, v)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(n.trim().as_bytes()),
            HeaderValue::from_str(v.trim()),
        ) {
            h.append(n, v);
        }
    }
    h
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let status = StatusCode::from_u16(STATUSES[usize::from(first) % STATUSES.len()])
        .unwrap_or(StatusCode::OK);
    let (req_text, res_text) = text.split_once("\n\n").unwrap_or(("", text));
    let request = fields(req_text);
    let response = fields(res_text);
    let uri = Uri::from_static("/fuzz?q=1");
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);

    for v in request.values().chain(response.values()) {
        if let Ok(s) = v.to_str() {
            let _ = policy::httpdate(s);
            let _ = policy::delta_seconds(s);
        }
    }
    let _ = policy::directives(&response).count();
    let _ = policy::only_if_cached(&request);
    let _ = policy::not_modified(&request, &response);
    let _ = policy::freshens(&response, &request);
    let _ = policy::merge_304(&response, &request);
    let _ = range::select(&request, &response, 1000);

    let p = policy::new_policy(&uri, &request, status, &response, now);
    let _ = policy::refuse(status, &response, &p, now);
    let stale = policy::StaleRules::of_response(&response);
    let stored = Stored::new(
        p,
        uri.clone(),
        &request,
        status,
        response.clone(),
        bytes::Bytes::from_static(b"body"),
        now,
    );
    for later in [0u64, 1, 3600, 1 << 31, 1 << 33] {
        let t = now + Duration::from_secs(later);
        let _ = stored.ttl(t);
        let stale_for = stored.stale_for(t);
        let _ = stale.serve_while_revalidating(stale_for, &request);
        let _ = stale.serve_on_error(stale_for, &request);
        let _ = stored.head(t);
    }
    let fresh = stored.freshened(&request, &request, now + Duration::from_secs(60));
    let _ = fresh.ttl(now);

    let cache = Cache::new(CacheSettings::new(1 << 20, 1 << 16));
    let key = Key::new(&std::sync::Arc::from("web#0"), false, "example.com", &uri);
    cache.insert(key.clone(), stored);
    let mut req = http::Request::get("/fuzz?q=1").body(()).unwrap_or_default();
    *req.headers_mut() = request;
    let (parts, ()) = req.into_parts();
    let _ = cache.lookup(&key, &parts, now + Duration::from_secs(30));
});
