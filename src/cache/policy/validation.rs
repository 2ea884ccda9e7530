//! Validation: a 304 merged into what is stored (RFC 9111 4.3.4), conditional
//! requests answered from the cache (RFC 9110 13), and HTTP dates.

use http::{header, HeaderMap};
use std::time::Duration;

/// Fields a 304 never replaces: they describe the stored body, or the connection.
pub(super) const KEEP_ON_304: [&str; 10] = [
    "content-length",
    "content-encoding",
    "content-range",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
];

/// The stored fields freshened by a 304 (RFC 9111 4.3.4): every field the 304
/// carries replaces all stored instances of it, except those that describe the body.
pub fn merge_304(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    let mut out = stored.clone();
    for name in not_modified.keys() {
        if KEEP_ON_304.contains(&name.as_str()) {
            continue;
        }
        out.remove(name);
        for v in not_modified.get_all(name) {
            out.append(name.clone(), v.clone());
        }
    }
    out
}

/// Whether a 304 answers for this stored response (RFC 9111 4.3.4): a strong ETag must
/// be the stored one, a weak one compares weakly, a Last-Modified must agree. A 304
/// with no validator at all answers the conditional request the cache sent with the
/// stored validators: it is taken as freshening the stored response.
pub fn freshens(stored: &HeaderMap, not_modified: &HeaderMap) -> bool {
    let get = |h: &HeaderMap, n: header::HeaderName| {
        h.get(n)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned())
    };
    let old_tag = get(stored, header::ETAG);
    match get(not_modified, header::ETAG) {
        Some(new) if !new.starts_with("W/") => old_tag.as_deref() == Some(new.as_str()),
        Some(new) => old_tag.is_some_and(|old| weak(&old) == weak(&new)),
        None => match get(not_modified, header::LAST_MODIFIED) {
            Some(new) => get(stored, header::LAST_MODIFIED).as_deref() == Some(new.as_str()),
            None => true,
        },
    }
}

/// RFC 9110 13.1.2 / 13.1.3 for a response the cache is about to send: whether the
/// client's `If-None-Match` (or, without it, `If-Modified-Since`) makes it a 304.
pub fn not_modified(request: &HeaderMap, response: &HeaderMap) -> bool {
    if let Some(inm) = request.get(header::IF_NONE_MATCH) {
        let Some(etag) = response.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let etag = weak(etag);
        return request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .any(|t| t == "*" || weak(t) == etag)
            || inm.as_bytes() == b"*";
    }
    let (Some(since), Some(modified)) = (
        request
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(httpdate),
        response
            .get(header::LAST_MODIFIED)
            .and_then(|v| v.to_str().ok())
            .and_then(httpdate),
    ) else {
        return false;
    };
    modified <= since
}

/// Weak comparison (RFC 9110 8.8.3.2): the opaque tags only.
pub(super) fn weak(tag: &str) -> &str {
    tag.trim().trim_start_matches("W/")
}

/// An HTTP date (RFC 9110 5.6.7): IMF-fixdate, or one of the two obsolete forms
/// recipients must still read (RFC 850 and asctime), as the `httpdate` crate reads
/// them; names compare without regard to case (origins that send `AUG` or `gmt` mean
/// the same date), so a date that does not parse as sent is tried again with its
/// names in their usual case. Anything else is not a date.
pub fn httpdate(v: &str) -> Option<std::time::SystemTime> {
    let v = v.trim();
    if let Ok(t) = httpdate::parse_http_date(v) {
        return Some(t);
    }
    if !v.bytes().any(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    httpdate::parse_http_date(&usual_case(v)).ok()
}

/// `SUN, 06 nov 1994 08:49:37 gmt` as `Sun, 06 Nov 1994 08:49:37 GMT`.
pub(super) fn usual_case(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut rest = v;
    while let Some(c) = rest.chars().next() {
        if c.is_ascii_alphabetic() {
            let end = rest
                .find(|c: char| !c.is_ascii_alphabetic())
                .unwrap_or(rest.len());
            let (word, after) = rest.split_at(end);
            if word.eq_ignore_ascii_case("gmt") {
                out.push_str("GMT");
            } else {
                out.push_str(&word[..1].to_ascii_uppercase());
                out.push_str(&word[1..].to_ascii_lowercase());
            }
            rest = after;
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// IMF-fixdate of a time (times past the year 9999 are written as its last second).
pub fn fmt_httpdate(t: std::time::SystemTime) -> String {
    const LAST: Duration = Duration::from_secs(253_402_300_799);
    let t = match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) if d > LAST => std::time::UNIX_EPOCH + LAST,
        Ok(_) => t,
        Err(_) => std::time::UNIX_EPOCH,
    };
    httpdate::fmt_http_date(t)
}
