//! `static` routes: files from a directory, GET and HEAD only. Path resolution,
//! `index.html`, Content-Type, ETag/Last-Modified with 304s and Range with 206 come
//! from hyper-staticfile; this module adds the route's prefix removal and refuses any
//! file whose real path (after symlinks) lies outside the directory, hidden files
//! (a path segment starting with `.`, unless `static_hidden`), and range requests a
//! client could use to make one file cost many times its size (more than
//! [`MAX_RANGES`] ranges, or ranges that overlap: answered 200 with the whole file, as
//! nginx does).

use std::borrow::Cow;
use std::path::PathBuf;

use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use hyper_staticfile::{AcceptEncoding, ResolveResult, Resolver, ResponseBuilder};
use tracing::debug;

use super::body::ResponseBody;
use super::error::plain;

/// The most ranges one request may ask for; more are answered with the whole file.
pub(super) const MAX_RANGES: usize = 16;

#[derive(Debug)]
pub struct StaticDir {
    root: PathBuf,
    /// `root` with symlinks resolved, when it could be.
    canonical: Option<PathBuf>,
}

impl StaticDir {
    pub fn new(root: PathBuf) -> Self {
        let canonical = std::fs::canonicalize(&root).ok();
        StaticDir { root, canonical }
    }

    fn resolver(&self) -> Resolver {
        let mut r = Resolver::new(&self.root);
        r.allowed_encodings = AcceptEncoding::none();
        r
    }
}

fn error(status: StatusCode) -> Response<ResponseBody> {
    plain(status).map(|b| ResponseBody::Full(Some(b)))
}

pub(super) async fn serve(
    dir: &StaticDir,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    strip_prefix: Option<&str>,
    hidden: bool,
) -> Response<ResponseBody> {
    if method != Method::GET && method != Method::HEAD {
        let mut r = error(StatusCode::METHOD_NOT_ALLOWED);
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let path = uri.path();
    let (prefix, rest) = match strip_prefix.and_then(|p| path.strip_prefix(p).map(|r| (p, r))) {
        Some((p, r)) => (p.trim_end_matches('/'), r),
        None => ("", path),
    };
    let rel: Cow<'_, str> = if rest.starts_with('/') {
        Cow::Borrowed(rest)
    } else {
        Cow::Owned(format!("/{rest}"))
    };
    if !hidden && has_hidden_segment(&rel) {
        debug!(path = %rel, "hidden static file refused");
        return error(StatusCode::NOT_FOUND);
    }
    let result = match dir
        .resolver()
        .resolve_path(&rel, AcceptEncoding::none())
        .await
    {
        Ok(r) => r,
        Err(e) => {
            debug!(path = %rel, error = %e, "static file not readable");
            return error(StatusCode::NOT_FOUND);
        }
    };
    let mut content_type = None;
    let mut size = None;
    let result = match result {
        ResolveResult::Found(file) => {
            content_type = file.content_type.clone();
            size = Some(file.size);
            let inside = match (
                &dir.canonical,
                tokio::fs::canonicalize(dir.root.join(&file.path)).await,
            ) {
                (Some(root), Ok(real)) => real.starts_with(root),
                _ => false,
            };
            if !inside {
                debug!(path = %rel, "static file outside the directory refused");
                return error(StatusCode::NOT_FOUND);
            }
            ResolveResult::Found(file)
        }
        ResolveResult::IsDirectory { redirect_to } => ResolveResult::IsDirectory {
            redirect_to: format!("{prefix}{redirect_to}"),
        },
        ResolveResult::NotFound | ResolveResult::MethodNotMatched => {
            return error(StatusCode::NOT_FOUND)
        }
        ResolveResult::PermissionDenied => return error(StatusCode::FORBIDDEN),
    };
    // If-None-Match takes precedence over If-Modified-Since (RFC 9110 13.2.2), which
    // the builder alone would look at.
    let if_none_match = headers.get(header::IF_NONE_MATCH);
    let both_conditionals =
        if_none_match.is_some() && headers.contains_key(header::IF_MODIFIED_SINCE);
    let costly_ranges = size.is_some_and(|size| {
        headers
            .get(header::RANGE)
            .is_some_and(|r| !ranges_acceptable(r, size))
    });
    let filtered;
    let builder_headers = if both_conditionals || costly_ranges {
        let mut h = headers.clone();
        if both_conditionals {
            h.remove(header::IF_MODIFIED_SINCE);
        }
        if costly_ranges {
            h.remove(header::RANGE);
        }
        filtered = h;
        &filtered
    } else {
        headers
    };
    let mut resp = match ResponseBuilder::new()
        .request_parts(method, uri, builder_headers)
        .build(result)
    {
        Ok(r) => r.map(|b| ResponseBody::Static(Box::new(b))),
        Err(e) => {
            debug!(error = %e, "static response could not be built");
            return error(StatusCode::INTERNAL_SERVER_ERROR);
        }
    };
    if let (Some(ct), false) = (
        content_type,
        resp.headers().contains_key(header::CONTENT_TYPE),
    ) {
        if let Ok(v) = HeaderValue::try_from(ct) {
            resp.headers_mut().insert(header::CONTENT_TYPE, v);
        }
    }
    let is_ok = resp.status() == StatusCode::OK || resp.status() == StatusCode::PARTIAL_CONTENT;
    if let (true, Some(inm), Some(etag)) = (is_ok, if_none_match, resp.headers().get(header::ETAG))
    {
        if etag_matches(inm, etag) {
            let (mut parts, _) = resp.into_parts();
            parts.status = StatusCode::NOT_MODIFIED;
            parts.headers.remove(header::CONTENT_LENGTH);
            parts.headers.remove(header::CONTENT_RANGE);
            return Response::from_parts(parts, ResponseBody::empty());
        }
    }
    resp
}

/// Whether a path segment starts with a dot, written plainly or percent-encoded.
fn has_hidden_segment(path: &str) -> bool {
    path.split('/').any(|seg| {
        seg.starts_with('.') || seg.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("%2e"))
    })
}

/// Whether a `Range` request for a file of `size` bytes is cheap enough to answer
/// with its parts: at most [`MAX_RANGES`] ranges, none overlapping another. Values
/// that are not byte ranges are left to the response builder (it ignores them).
fn ranges_acceptable(range: &HeaderValue, size: u64) -> bool {
    let Some(spec) = range
        .to_str()
        .ok()
        .and_then(|r| r.trim().strip_prefix("bytes="))
    else {
        return true;
    };
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for part in spec.split(',') {
        if spans.len() == MAX_RANGES {
            return false;
        }
        let Some((a, b)) = part.trim().split_once('-') else {
            return true;
        };
        let span = match (a.trim(), b.trim()) {
            ("", n) => match n.parse::<u64>() {
                Ok(n) => (size.saturating_sub(n), size),
                Err(_) => return true,
            },
            (a, "") => match a.parse::<u64>() {
                Ok(a) => (a, size),
                Err(_) => return true,
            },
            (a, b) => match (a.parse::<u64>(), b.parse::<u64>()) {
                (Ok(a), Ok(b)) => (a, b.saturating_add(1).min(size)),
                _ => return true,
            },
        };
        spans.push(span);
    }
    spans.sort_unstable();
    spans.windows(2).all(|w| w[0].1 <= w[1].0)
}

/// Weak comparison (RFC 9110 8.8.3.2) of an `If-None-Match` list against an ETag.
fn etag_matches(if_none_match: &HeaderValue, etag: &HeaderValue) -> bool {
    let Ok(list) = if_none_match.to_str() else {
        return false;
    };
    let Ok(etag) = etag.to_str() else {
        return false;
    };
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_string();
    let etag = opaque(etag);
    list.split(',')
        .any(|t| t.trim() == "*" || opaque(t) == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_hidden_however_written() {
        assert!(has_hidden_segment("/.env"));
        assert!(has_hidden_segment("/a/.git/config"));
        assert!(has_hidden_segment("/%2egit/config"));
        assert!(has_hidden_segment("/a/%2Ehtaccess"));
        assert!(!has_hidden_segment("/a/b.txt"));
        assert!(!has_hidden_segment("/a.b/c"));
    }

    #[test]
    fn many_or_overlapping_ranges_are_refused() {
        let ok = |r: &'static str| ranges_acceptable(&HeaderValue::from_static(r), 1000);
        assert!(ok("bytes=0-99"));
        assert!(ok("bytes=0-9, 20-29, -10"));
        assert!(ok("bytes=0-9,10-19"));
        assert!(!ok("bytes=0-9, 5-19"));
        assert!(!ok("bytes=0-, 0-"));
        assert!(!ok("bytes=-500, 600-"));
        let seventeen: Vec<String> = (0..17)
            .map(|i| format!("{}-{}", i * 10, i * 10 + 1))
            .collect();
        let many = HeaderValue::try_from(format!("bytes={}", seventeen.join(","))).unwrap();
        assert!(!ranges_acceptable(&many, 1000));
        let sixteen =
            HeaderValue::try_from(format!("bytes={}", seventeen[..16].join(","))).unwrap();
        assert!(ranges_acceptable(&sixteen, 1000));
        assert!(ok("items=0-5"));
    }

    #[test]
    fn etags_compare_weakly_and_in_lists() {
        let e = HeaderValue::from_static("W/\"a-1\"");
        assert!(etag_matches(&HeaderValue::from_static("W/\"a-1\""), &e));
        assert!(etag_matches(&HeaderValue::from_static("\"a-1\""), &e));
        assert!(etag_matches(
            &HeaderValue::from_static("\"x\", W/\"a-1\""),
            &e
        ));
        assert!(etag_matches(&HeaderValue::from_static("*"), &e));
        assert!(!etag_matches(&HeaderValue::from_static("\"a-2\""), &e));
    }
}
