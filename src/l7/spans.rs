//! The spans of a sampled request when `[tracing] otlp` exports them: fulcrum's server
//! span, from the request's head to the end of its response, and one client span per
//! attempt to a backend, its child. Attribute names follow OpenTelemetry's HTTP
//! semantic conventions; fulcrum's own are prefixed `fulcrum.`.

use http::{Method, Request, Version};

use super::client::Client;
use super::exchange::Exchange;
use super::host::RequestHost;
use super::settings::Settings;
use crate::telemetry::export::Open;
use crate::telemetry::TraceContext;
use crate::upstream::Backend;

fn version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// `ip` as text, written into `buf` (no allocation).
fn ip_text(ip: std::net::IpAddr, buf: &mut [u8; 48]) -> &str {
    use std::io::Write;
    let mut w = &mut buf[..];
    let _ = write!(w, "{ip}");
    let left = w.len();
    let n = buf.len() - left;
    std::str::from_utf8(&buf[..n]).unwrap_or("-")
}

/// fulcrum's span for a request, when its trace is sampled and spans are exported.
pub(super) fn server<B>(
    s: &Settings,
    trace: Option<TraceContext>,
    req: &Request<B>,
    (client, host, request_id): (&Client, Option<&RequestHost>, &http::HeaderValue),
) -> Option<Box<Open>> {
    let (exporter, trace) = (s.spans.as_ref()?, trace.filter(|t| t.sampled)?);
    let mut span = Open::server(exporter, &trace, req.method().as_str().to_owned());
    span.attr("http.request.method", req.method().as_str());
    span.attr("url.path", req.uri().path());
    span.attr("url.scheme", s.scheme);
    if let Some(h) = host {
        span.attr("server.address", h.name());
    }
    span.attr("client.address", client.ip.to_str().unwrap_or("-"));
    span.attr("network.protocol.version", version(req.version()));
    span.attr("fulcrum.listener", &*s.listener);
    span.attr("fulcrum.request_id", request_id.to_str().unwrap_or("-"));
    Some(Box::new(span))
}

/// What the request learned on its way, added to its span before it ends.
pub(super) fn learned(span: &mut Open, exchange: &Exchange) {
    if let Some(route) = &exchange.route {
        let name = format!("{} {route}", span.name());
        span.rename(name);
        span.attr("http.route", route.as_str());
    }
    if let Some(u) = &exchange.upstream {
        span.attr("fulcrum.upstream", u.name.as_str());
    }
    if let Some(b) = &exchange.backend {
        span.attr("fulcrum.backend", b.name.as_str());
    }
    if let Some(c) = exchange.cache {
        span.attr("fulcrum.cache", c.as_str());
    }
    if exchange.attempts > 1 {
        span.attr("fulcrum.retries", i64::from(exchange.attempts - 1));
    }
}

/// The span of one attempt (number `attempt`, from 0) to `backend` of `upstream`,
/// when the request's span is exported.
pub(super) fn attempt(
    s: &Settings,
    trace: Option<&TraceContext>,
    method: &Method,
    (upstream, backend): (&str, &Backend),
    attempt: u8,
) -> Option<Open> {
    let (exporter, trace) = (s.spans.as_ref()?, trace.filter(|t| t.sampled)?);
    let mut span = Open::client(exporter, trace, method.as_str().to_owned());
    span.attr("http.request.method", method.as_str());
    let mut buf = [0u8; 48];
    span.attr("server.address", ip_text(backend.addr.ip(), &mut buf));
    span.attr("server.port", i64::from(backend.addr.port()));
    span.attr("fulcrum.upstream", upstream);
    span.attr("fulcrum.backend", backend.name.as_str());
    if attempt > 0 {
        span.attr("http.request.resend_count", i64::from(attempt));
    }
    Some(span)
}
