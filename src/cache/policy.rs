//! What may be stored and for how long: RFC 9111 through `http-cache-semantics`, with
//! the parts it leaves out added here (RFC 5861's stale directives, `Vary: *`,
//! `only-if-cached`, no storing of responses that set cookies, no storing of what
//! could never be reused).

use std::time::Duration;

use http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use http_cache_semantics::{CacheOptions, CachePolicy, RequestLike, ResponseLike};

mod validation;
mod vary;
pub use validation::{fmt_httpdate, freshens, httpdate, merge_304, not_modified};
pub use vary::{vary_names, vary_value, vary_view, SecondaryKey};

/// RFC 9111 1.2.2: delta-seconds too large to represent are taken as 2^31.
const DELTA_SECONDS_MAX: u64 = 1 << 31;

/// The policy options of a shared cache: `private` is not stored, `s-maxage` counts,
/// heuristic freshness is at most 10% of the time since `Last-Modified` (RFC 9111
/// 4.2.2) and `immutable` adds nothing beyond the response's own lifetime.
pub fn options() -> CacheOptions {
    CacheOptions {
        shared: true,
        cache_heuristic: 0.1,
        immutable_min_time_to_live: Duration::ZERO,
        ignore_cargo_cult: false,
    }
}

/// Statuses the policy crate stores; others only with explicit freshness (below).
const UNDERSTOOD: [u16; 14] = [
    200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501,
];

/// The policy of a response, from the fields as [`response_view`] and
/// [`request_view`] present them. A final status the policy crate does not know is
/// storable with explicit freshness (RFC 9111 3: any final status the cache
/// understands, and a cache understands what it only stores and replays): it is
/// presented as a 200, which changes nothing else since explicit freshness rules out
/// heuristics.
pub fn new_policy(
    uri: &Uri,
    request: &HeaderMap,
    status: StatusCode,
    response: &HeaderMap,
    now: std::time::SystemTime,
) -> CachePolicy {
    let request = request_view(request);
    let request = vary_view(&request, response);
    let response = must_understand_view(status, response_view(response));
    let explicit = response.contains_key(header::EXPIRES)
        || directives(&response).any(|(n, _)| n == "max-age" || n == "s-maxage");
    // One part of a known whole (RFC 9111 3.3, 3.4): stored as its whole would be.
    let one_part =
        status == StatusCode::PARTIAL_CONTENT && super::range::content_range(&response).is_some();
    let status = if one_part
        || !UNDERSTOOD.contains(&status.as_u16())
            && explicit
            && status.as_u16() >= 200
            && status != StatusCode::PARTIAL_CONTENT
            && status != StatusCode::NOT_MODIFIED
    {
        StatusCode::OK
    } else {
        status
    };
    CachePolicy::new_options(
        &PolicyRequest {
            method: &Method::GET,
            uri,
            headers: &request,
        },
        &PolicyResponse {
            status,
            headers: &response,
        },
        now,
        options(),
    )
}

/// RFC 9111 5.2.2.3: with `must-understand`, a response is stored only when its status
/// is one whose caching rules this cache implements (the [`UNDERSTOOD`] ones), and then
/// its `no-store` (which the directive comes with, for caches that do not know it) is
/// ignored. Any other status is not stored, whatever else the response says.
fn must_understand_view(
    status: StatusCode,
    response: std::borrow::Cow<'_, HeaderMap>,
) -> std::borrow::Cow<'_, HeaderMap> {
    if !directives(&response).any(|(n, _)| n == "must-understand") {
        return response;
    }
    let understood = UNDERSTOOD.contains(&status.as_u16());
    let kept: Vec<String> = response
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(split_list)
        .map(str::trim)
        .filter(|d| {
            let name = d.split('=').next().unwrap_or("").trim();
            !name.eq_ignore_ascii_case("no-store")
        })
        .map(str::to_string)
        .chain((!understood).then(|| "no-store".to_string()))
        .collect();
    let mut out = response.into_owned();
    out.remove(header::CACHE_CONTROL);
    if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
        out.insert(header::CACHE_CONTROL, v);
    }
    std::borrow::Cow::Owned(out)
}

/// Directive names are case-insensitive (RFC 9111 5.2); the policy crate compares
/// them as written: lower-case them. Delta-seconds over 2^31 are 2^31 (RFC 9111
/// 1.2.2): the crate would take them as they are, and a lifetime of 10^19 seconds
/// overflows every clock it is added to.
fn normal_cache_control(h: &mut HeaderMap) {
    let values: Vec<HeaderValue> = h
        .get_all(header::CACHE_CONTROL)
        .iter()
        .map(|v| {
            let lower = v.as_bytes().to_ascii_lowercase();
            let capped = match std::str::from_utf8(&lower) {
                Ok(text) if has_big_delta(text) => cap_deltas(text).into_bytes(),
                _ => lower,
            };
            HeaderValue::from_bytes(&capped).unwrap_or(v.clone())
        })
        .collect();
    h.remove(header::CACHE_CONTROL);
    for v in values {
        h.append(header::CACHE_CONTROL, v);
    }
}

/// Whether a directive's value is a run of digits larger than 2^31.
fn has_big_delta(v: &str) -> bool {
    split_list(v).any(|d| {
        d.split_once('=').is_some_and(|(_, n)| {
            let n = unquote(n.trim());
            !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
                && n.parse::<u64>().map_or(true, |x| x > DELTA_SECONDS_MAX)
        })
    })
}

/// The list with every numeric value over 2^31 replaced by 2^31.
fn cap_deltas(v: &str) -> String {
    let parts: Vec<String> = split_list(v)
        .map(|d| match d.split_once('=') {
            Some((name, _)) if has_big_delta(d) => {
                format!("{}={DELTA_SECONDS_MAX}", name.trim())
            }
            _ => d.trim().to_string(),
        })
        .collect();
    parts.join(", ")
}

fn needs_normal_cache_control(h: &HeaderMap) -> bool {
    h.get_all(header::CACHE_CONTROL).iter().any(|v| {
        v.as_bytes().iter().any(u8::is_ascii_uppercase) || v.to_str().is_ok_and(has_big_delta)
    })
}

/// The request's fields as the policy reads them: directive names in lower case, and
/// `Pragma` ignored beside `Cache-Control` (RFC 9111 5.4).
pub fn request_view(h: &HeaderMap) -> std::borrow::Cow<'_, HeaderMap> {
    let pragma_ignored = h.contains_key(header::CACHE_CONTROL) && h.contains_key(header::PRAGMA);
    if !pragma_ignored && !needs_normal_cache_control(h) {
        return std::borrow::Cow::Borrowed(h);
    }
    let mut out = h.clone();
    if pragma_ignored {
        out.remove(header::PRAGMA);
    }
    normal_cache_control(&mut out);
    std::borrow::Cow::Owned(out)
}

/// The response's fields as the policy reads them: directive names in lower case;
/// `Expires`, `Date` and `Last-Modified` read strictly in the three HTTP date forms
/// (an `Expires` that is not one, or appears twice, is in the past; a `Date` or
/// `Last-Modified` that is not one is absent); `Age` from its first value, absent when
/// that is not delta-seconds.
pub fn response_view(h: &HeaderMap) -> std::borrow::Cow<'_, HeaderMap> {
    let mut out: Option<HeaderMap> = None;
    if needs_normal_cache_control(h) {
        normal_cache_control(out.get_or_insert_with(|| h.clone()));
    }
    for name in [header::EXPIRES, header::DATE, header::LAST_MODIFIED] {
        let mut values = h.get_all(&name).iter();
        let Some(first) = values.next() else { continue };
        let twice = values.next().is_some();
        let parsed = first.to_str().ok().and_then(httpdate).filter(|_| !twice);
        let normal = parsed.map(fmt_httpdate);
        if normal.as_deref().map(str::as_bytes) == Some(first.as_bytes()) {
            continue;
        }
        let o = out.get_or_insert_with(|| h.clone());
        match normal.and_then(|n| HeaderValue::try_from(n).ok()) {
            Some(v) => {
                o.insert(&name, v);
            }
            None if name == header::EXPIRES => {
                o.insert(&name, HeaderValue::from_static("0"));
            }
            None => {
                o.remove(&name);
            }
        }
    }
    if let Some(age) = h.get(header::AGE) {
        let first = age
            .to_str()
            .ok()
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .and_then(delta_seconds);
        let plain = h.get_all(header::AGE).iter().count() == 1
            && first.is_some_and(|d| age.as_bytes() == d.as_secs().to_string().as_bytes());
        if !plain {
            let o = out.get_or_insert_with(|| h.clone());
            match first {
                Some(d) => {
                    o.insert(header::AGE, HeaderValue::from(d.as_secs()));
                }
                None => {
                    o.remove(header::AGE);
                }
            }
        }
    }
    match out {
        Some(o) => std::borrow::Cow::Owned(o),
        None => std::borrow::Cow::Borrowed(h),
    }
}

/// A request as the policy sees it: the path and query only (the cache key already
/// holds the scheme and host), and optionally another method (a HEAD is answered
/// from a stored GET).
pub struct PolicyRequest<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
}

impl RequestLike for PolicyRequest<'_> {
    fn uri(&self) -> Uri {
        self.uri.clone()
    }
    fn is_same_uri(&self, other: &Uri) -> bool {
        self.uri.path_and_query() == other.path_and_query()
    }
    fn method(&self) -> &Method {
        self.method
    }
    fn headers(&self) -> &HeaderMap {
        self.headers
    }
}

pub struct PolicyResponse<'a> {
    pub status: StatusCode,
    pub headers: &'a HeaderMap,
}

impl ResponseLike for PolicyResponse<'_> {
    fn status(&self) -> StatusCode {
        self.status
    }
    fn headers(&self) -> &HeaderMap {
        self.headers
    }
}

/// The directives of every `Cache-Control` field of `headers`: names as written (compare
/// them without regard to case), values unquoted. Commas inside quoted strings do not
/// split.
pub fn directives(headers: &HeaderMap) -> impl Iterator<Item = (&str, Option<&str>)> {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(split_list)
        .filter_map(|d| {
            let (name, value) = match d.split_once('=') {
                Some((n, v)) => (n.trim(), Some(unquote(v.trim()))),
                None => (d.trim(), None),
            };
            (!name.is_empty()).then_some((name, value))
        })
}

/// Splits a comma-separated list, keeping quoted strings whole.
pub(super) fn split_list(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        let mut quoted = false;
        let mut escaped = false;
        for (i, c) in s.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                ',' if !quoted => {
                    rest = Some(&s[i + 1..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(s)
    })
    .filter(|p| !p.trim().is_empty())
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

/// RFC 9111 1.2.2 delta-seconds: digits only; too large is 2^31.
pub fn delta_seconds(v: &str) -> Option<Duration> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs = v.parse::<u64>().unwrap_or(DELTA_SECONDS_MAX);
    Some(Duration::from_secs(secs.min(DELTA_SECONDS_MAX)))
}

fn has(headers: &HeaderMap, name: &str) -> bool {
    directives(headers).any(|(n, _)| n.eq_ignore_ascii_case(name))
}

fn seconds(headers: &HeaderMap, name: &str) -> Option<Duration> {
    directives(headers)
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| delta_seconds(v?))
}

/// What a stored response allows beyond its freshness lifetime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StaleRules {
    /// RFC 5861 `stale-while-revalidate`.
    pub while_revalidate: Option<Duration>,
    /// RFC 5861 `stale-if-error`.
    pub if_error: Option<Duration>,
    /// `must-revalidate`, `proxy-revalidate`, `s-maxage` (which carries
    /// proxy-revalidate's meaning for a shared cache, RFC 9111 5.2.2.10) or `no-cache`:
    /// never served stale, whatever RFC 5861's directives say.
    pub never: bool,
}

impl StaleRules {
    pub fn of_response(headers: &HeaderMap) -> StaleRules {
        StaleRules {
            while_revalidate: seconds(headers, "stale-while-revalidate"),
            if_error: seconds(headers, "stale-if-error"),
            never: has(headers, "must-revalidate")
                || has(headers, "proxy-revalidate")
                || has(headers, "s-maxage")
                || has(headers, "no-cache"),
        }
    }

    /// Whether a response stale by `stale_for` may be served while it is refreshed.
    pub fn serve_while_revalidating(&self, stale_for: Duration, request: &HeaderMap) -> bool {
        !self.never
            && self.while_revalidate.is_some_and(|w| stale_for <= w)
            && accepts_stale(request)
    }

    /// Whether a response stale by `stale_for` may be served because the origin
    /// failed; the request's own `stale-if-error` counts too (RFC 5861 4).
    pub fn serve_on_error(&self, stale_for: Duration, request: &HeaderMap) -> bool {
        if self.never || !accepts_stale(request) {
            return false;
        }
        let window = match (self.if_error, seconds(request, "stale-if-error")) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        window.is_some_and(|w| stale_for <= w)
    }
}

/// A request that insists on the origin (`no-cache`, `max-age=0`, `Pragma: no-cache`)
/// or on freshness takes no stale response.
fn accepts_stale(request: &HeaderMap) -> bool {
    let mut accepts = true;
    for (name, value) in directives(request) {
        if name.eq_ignore_ascii_case("no-cache") || name.eq_ignore_ascii_case("min-fresh") {
            accepts = false;
        } else if name.eq_ignore_ascii_case("max-age") {
            accepts &= value.and_then(delta_seconds).is_none_or(|d| !d.is_zero());
        }
    }
    if !request.contains_key(header::CACHE_CONTROL) && pragma_no_cache(request) {
        accepts = false;
    }
    accepts
}

fn pragma_no_cache(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::PRAGMA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("no-cache"))
        })
}

/// RFC 9111 5.2.1.7: the client wants a stored response or nothing (504).
pub fn only_if_cached(request: &HeaderMap) -> bool {
    has(request, "only-if-cached")
}

/// Why a response to a GET is not stored, if it is not (only GET responses are).
pub fn refuse(
    status: StatusCode,
    response: &HeaderMap,
    policy: &CachePolicy,
    now: std::time::SystemTime,
) -> Option<&'static str> {
    if status == StatusCode::PARTIAL_CONTENT && super::range::content_range(response).is_none() {
        // Several parts, or an unknown complete length: nothing to combine it with.
        return Some("partial");
    }
    if !policy.is_storable() {
        return Some("not storable");
    }
    if vary_names(response).any(|n| n == "*") {
        return Some("vary *");
    }
    if response.contains_key(header::SET_COOKIE)
        && !has(response, "public")
        && !has(response, "s-maxage")
    {
        // Storable by the letter of RFC 9111, but one client's cookie would reach
        // every other: the origin has to say `public` or `s-maxage` to share it.
        return Some("set-cookie");
    }
    let validator =
        response.contains_key(header::ETAG) || response.contains_key(header::LAST_MODIFIED);
    let stale = StaleRules::of_response(response);
    if policy.time_to_live(now).is_zero()
        && !validator
        && (stale.never || stale.if_error.is_none() && stale.while_revalidate.is_none())
    {
        // Stale from the start and nothing to revalidate with: never reusable.
        return Some("no freshness");
    }
    None
}

#[cfg(test)]
mod tests;
