//! A single byte range (RFC 9110 14.2) answered from a stored response, complete or
//! partial, and the `Content-Range` of a partial one (RFC 9110 14.4).

use http::{header, HeaderMap};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selected {
    /// No range asked for, one the cache does not serve (several ranges, another unit,
    /// a syntax error), or an `If-Range` that does not match: the whole response.
    Whole,
    /// First and last byte, inclusive.
    Part(u64, u64),
    /// 416.
    Unsatisfiable,
}

pub fn select(request: &HeaderMap, response: &HeaderMap, len: u64) -> Selected {
    let Some(range) = request.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Selected::Whole;
    };
    if let Some(if_range) = request.get(header::IF_RANGE) {
        // Only a strong ETag equal to the stored one (RFC 9110 13.1.5); a date form is
        // not trusted for this.
        let etag = response.get(header::ETAG);
        let strong = etag.is_some_and(|e| !e.as_bytes().starts_with(b"W/"));
        if !strong || etag != Some(if_range) {
            return Selected::Whole;
        }
    }
    let Some(spec) = range.trim().strip_prefix("bytes=") else {
        return Selected::Whole;
    };
    if spec.contains(',') {
        return Selected::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Selected::Whole;
    };
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => match num(suffix) {
            Some(0) => Selected::Unsatisfiable,
            Some(n) if len > 0 => Selected::Part(len.saturating_sub(n), len - 1),
            Some(_) => Selected::Unsatisfiable,
            None => Selected::Whole,
        },
        (a, "") => match num(a) {
            Some(a) if a < len => Selected::Part(a, len - 1),
            Some(_) => Selected::Unsatisfiable,
            None => Selected::Whole,
        },
        (a, b) => match (num(a), num(b)) {
            (Some(a), Some(b)) if a <= b && a < len => Selected::Part(a, b.min(len - 1)),
            (Some(a), Some(b)) if a <= b => Selected::Unsatisfiable,
            _ => Selected::Whole,
        },
    }
}

/// The part a 206 carries: first and last byte (inclusive) and the complete length,
/// from a `Content-Range` of the form `bytes FIRST-LAST/LENGTH`. `None` for anything
/// else (an unknown length `*`, several parts, another unit, an impossible range).
pub fn content_range(response: &HeaderMap) -> Option<(u64, u64, u64)> {
    let mut values = response.get_all(header::CONTENT_RANGE).iter();
    let v = values.next()?.to_str().ok()?;
    if values.next().is_some() {
        return None;
    }
    let (range, total) = v.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (first, last, total) = (num(first)?, num(last)?, num(total)?);
    (first <= last && last < total).then_some((first, last, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn req(range: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(range).unwrap());
        h
    }

    #[test]
    fn single_ranges() {
        let none = HeaderMap::new();
        assert_eq!(select(&none, &none, 10), Selected::Whole);
        assert_eq!(select(&req("bytes=0-3"), &none, 10), Selected::Part(0, 3));
        assert_eq!(select(&req("bytes=5-"), &none, 10), Selected::Part(5, 9));
        assert_eq!(select(&req("bytes=-3"), &none, 10), Selected::Part(7, 9));
        assert_eq!(select(&req("bytes=-30"), &none, 10), Selected::Part(0, 9));
        assert_eq!(select(&req("bytes=8-100"), &none, 10), Selected::Part(8, 9));
        assert_eq!(
            select(&req("bytes=10-"), &none, 10),
            Selected::Unsatisfiable
        );
        assert_eq!(select(&req("bytes=-0"), &none, 10), Selected::Unsatisfiable);
        assert_eq!(select(&req("bytes=3-1"), &none, 10), Selected::Whole);
        assert_eq!(select(&req("bytes=0-1,3-4"), &none, 10), Selected::Whole);
        assert_eq!(select(&req("items=0-1"), &none, 10), Selected::Whole);
        assert_eq!(select(&req("bytes=x-1"), &none, 10), Selected::Whole);
    }

    #[test]
    fn content_ranges_of_one_known_part() {
        let cr = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_RANGE, HeaderValue::from_str(v).unwrap());
            content_range(&h)
        };
        assert_eq!(cr("bytes 4-9/10"), Some((4, 9, 10)));
        assert_eq!(cr("bytes 0-0/1"), Some((0, 0, 1)));
        assert_eq!(cr("bytes 4-9/*"), None);
        assert_eq!(cr("bytes */10"), None);
        assert_eq!(cr("bytes 5-4/10"), None);
        assert_eq!(cr("bytes 4-10/10"), None);
        assert_eq!(cr("items 4-9/10"), None);
        assert_eq!(content_range(&HeaderMap::new()), None);
    }

    #[test]
    fn if_range_needs_the_same_strong_etag() {
        let mut res = HeaderMap::new();
        res.insert(header::ETAG, HeaderValue::from_static("\"a\""));
        let mut r = req("bytes=0-1");
        r.insert(header::IF_RANGE, HeaderValue::from_static("\"a\""));
        assert_eq!(select(&r, &res, 10), Selected::Part(0, 1));
        r.insert(header::IF_RANGE, HeaderValue::from_static("\"b\""));
        assert_eq!(select(&r, &res, 10), Selected::Whole);
        res.insert(header::ETAG, HeaderValue::from_static("W/\"b\""));
        r.insert(header::IF_RANGE, HeaderValue::from_static("W/\"b\""));
        assert_eq!(select(&r, &res, 10), Selected::Whole);
    }
}
