//! The dashboard at `GET /`: one page, its script and its style, compiled into the
//! binary. The page polls `/dashboard/data`; it loads nothing from elsewhere, and its
//! Content-Security-Policy says so.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

pub(super) const INDEX: &str = include_str!("dashboard/index.html");
pub(super) const SCRIPT: &str = include_str!("dashboard/app.js");
pub(super) const STYLE: &str = include_str!("dashboard/style.css");

/// Scripts and styles from this origin only, no inline code, no frames, no forms
/// posted elsewhere.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                      connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                      form-action 'none'; frame-ancestors 'none'";

/// One of the dashboard's files, with headers that keep it to itself.
pub(super) fn page(body: &'static str, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}
