//! One access-log line per HTTP request, written when the response is over: when its
//! body has been sent, or the client went away.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{HeaderValue, Method, Uri};
use tokio::time::Instant;
use tracing::info;

use super::request_body::BodyStats;
use crate::admin::metrics::RequestMetrics;
use crate::upstream::{Backend, Upstream};

/// What every request counts when its response is over.
pub struct Record {
    pub metrics: Arc<RequestMetrics>,
    pub status: u16,
    pub bytes_out: u64,
    pub started: Instant,
    /// What only the access line needs: none when `global.access_log` is off, so
    /// that a request then copies nothing for it.
    pub line: Option<Box<Line>>,
    /// The request's span, when its trace is sampled and spans are exported.
    pub span: Option<Box<crate::telemetry::export::Open>>,
}

/// The fields of an access line beyond the counts.
pub struct Line {
    /// Quote values a client controls that could pass for more fields (text logs).
    pub quote: bool,
    pub client: SocketAddr,
    /// The subject of the client's verified certificate (mTLS).
    pub client_cert: Option<Arc<str>>,
    pub listener: Arc<str>,
    pub method: Method,
    pub host: Option<HeaderValue>,
    pub uri: Uri,
    pub request_id: HeaderValue,
    pub body: Option<Arc<BodyStats>>,
    pub upstream: Option<Arc<Upstream>>,
    pub backend: Option<Arc<Backend>>,
    /// How the response cache answered, on cached routes.
    pub cache: Option<crate::cache::status::CacheOutcome>,
    /// Time to open a backend connection (when one was opened) and to the backend's
    /// response head, in ms.
    pub upstream_connect_ms: Option<u64>,
    pub upstream_header_ms: Option<u64>,
    /// With `[tracing]`: the request's trace.
    pub trace_id: Option<String>,
    /// `http1` or `h2`, when a backend was asked.
    pub upstream_protocol: Option<&'static str>,
    /// What the client spoke: `http/1.0`, `http/1.1`, `h2` or `h3`.
    pub protocol: &'static str,
    /// gRPC responses: the `grpc-status` of the head (trailers-only) or the trailers.
    pub grpc_status: Option<u16>,
}

/// A `grpc-status` field's value.
pub(super) fn grpc_status(fields: &http::HeaderMap) -> Option<u16> {
    fields.get("grpc-status")?.to_str().ok()?.parse().ok()
}

impl Drop for Record {
    fn drop(&mut self) {
        self.metrics.count(self.status);
        let elapsed = self.started.elapsed();
        self.metrics.duration.observe(elapsed.as_secs_f64());
        if let Some(mut span) = self.span.take() {
            span.attr("http.response.body.size", self.bytes_out as i64);
            span.status(self.status, 500);
        }
        let Some(l) = &self.line else {
            return;
        };
        let q = |v| Logged(v, l.quote);
        info!(
            target: "fulcrum::access",
            client = %l.client,
            listener = %l.listener,
            method = %q(l.method.as_str()),
            protocol = l.protocol,
            host = %q(l.host.as_ref().and_then(|h| h.to_str().ok()).or(l.uri.host()).unwrap_or("-")),
            path = %q(l.uri.path_and_query().map_or("/", |p| p.as_str())),
            status = self.status,
            bytes_in = l.body.as_ref().map_or(0, |b| b.bytes.load(Ordering::Relaxed)),
            bytes_out = self.bytes_out,
            duration_ms = elapsed.as_millis() as u64,
            upstream = %l.upstream.as_ref().map_or("-", |u| u.name.as_str()),
            backend = %l.backend.as_ref().map_or("-", |b| b.name.as_str()),
            cache = l.cache.map(|c| tracing::field::display(c.as_str())),
            upstream_connect_ms = l.upstream_connect_ms,
            upstream_header_ms = l.upstream_header_ms,
            trace_id = l.trace_id.as_deref(),
            upstream_protocol = l.upstream_protocol,
            grpc_status = l.grpc_status,
            request_id = %q(l.request_id.to_str().unwrap_or("-")),
            client_cert = l.client_cert.as_deref().map(|c| tracing::field::display(q(c))),
        );
    }
}

/// The access line of a response the HTTP library wrote itself, to a request it
/// could not parse: no method, host or path to show.
pub(super) fn before_request(listener: &str, client: SocketAddr, status: u16) {
    info!(
        target: "fulcrum::access",
        client = %client,
        listener = %listener,
        method = "-",
        host = "-",
        path = "-",
        status,
        bytes_in = 0u64,
        bytes_out = 0u64,
        duration_ms = 0u64,
        upstream = "-",
        backend = "-",
        request_id = "-",
    );
}

/// A value in an access line. In text logs, one that holds anything but visible ASCII
/// other than `"` and `\` is written quoted, its quotes and control characters
/// escaped: a client cannot make `x-request-id: a status=200` read as two fields.
/// JSON lines escape every value already.
struct Logged<'a>(&'a str, bool);

impl std::fmt::Display for Logged<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plain = !self.0.is_empty()
            && self
                .0
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\'));
        if plain || !self.1 {
            f.write_str(self.0)
        } else {
            write!(f, "{:?}", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Logged;

    #[test]
    fn values_that_could_pass_for_fields_are_quoted_in_text_logs() {
        let text = |v: &str| Logged(v, true).to_string();
        assert_eq!(text("/a/b?c"), "/a/b?c");
        assert_eq!(text("abc status=200"), "\"abc status=200\"");
        assert_eq!(text("a\"b"), "\"a\\\"b\"");
        assert_eq!(text("line\nbreak"), "\"line\\nbreak\"");
        assert_eq!(text("/search?q=1&r=2"), "/search?q=1&r=2");
        assert_eq!(text(""), "\"\"");
        assert_eq!(Logged("a b", false).to_string(), "a b");
    }
}
