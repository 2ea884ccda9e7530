//! One request, from its arrival to its response: access rules, ACME challenges,
//! rate limits, routing, and the target that answers (upstream, cache, static files,
//! redirect), with the access log and metrics recorded on the way.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::l7::request_body::Inbound;
use http::{header, HeaderValue, Request, Response, StatusCode};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::body::{ClientBody, ResponseBody};
use super::error::ProxyError;
use super::exchange::Exchange;
use super::host::RequestHost;
use super::route::Target;
use super::settings::Settings;

use super::conn::ConnCtx;
use super::grpc::{grpc_timeout, is_grpc};
use super::target::Upstream2;
use super::{
    access, cached, client, compress, error, forward, headers, host, path, shaping, spans,
    static_files,
};

pub(super) fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut id = [0u8; 32];
    for b in id.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// One request, in a span of its own (`request.id`, `http.method`) under the
/// connection's. The span is at debug level: at info, creating and formatting one
/// per request costs about a quarter more instructions per request (callgrind,
/// keep-alive), so at the default level the request's own warnings name its
/// `request.id` themselves.
pub(super) async fn handle(req: Request<Inbound>, ctx: &Arc<ConnCtx>) -> Response<ClientBody> {
    let request_id = req
        .headers()
        .get(&forward::X_REQUEST_ID)
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .cloned()
        .unwrap_or_else(new_request_id);
    let span = tracing::debug_span!(
        parent: &ctx.span,
        "request",
        request.id = %request_id.to_str().unwrap_or("-"),
        http.method = %req.method(),
        http.route = tracing::field::Empty,
        upstream = tracing::field::Empty,
        backend.name = tracing::field::Empty,
    );
    if span.is_disabled() {
        handle_in(req, ctx, request_id).await
    } else {
        tracing::Instrument::instrument(handle_in(req, ctx, request_id), span).await
    }
}

async fn handle_in(
    req: Request<Inbound>,
    ctx: &Arc<ConnCtx>,
    request_id: HeaderValue,
) -> Response<ClientBody> {
    ctx.first_request.store(true, Ordering::Relaxed);
    let version = req.version();
    // Only multiplexed connections are timed out by their requests (see `idle`).
    if matches!(version, http::Version::HTTP_2 | http::Version::HTTP_3) {
        ctx.requests.set_h2();
    }
    let open = Some(super::open::began(ctx));
    let settings = (ctx.current)().unwrap_or_else(|| ctx.settings.clone());
    let s = &settings;
    s.by_protocol[match version {
        http::Version::HTTP_2 => 1,
        http::Version::HTTP_3 => 2,
        _ => 0,
    }]
    .inc();
    // The one host of the request, for routing, forwarding, the cache key and the log.
    let host = host::request_host(req.uri(), req.headers(), req.version(), s.scheme == "https");
    let client = client::Client::of(ctx.peer, &ctx.peer_ip, req.headers(), &s.trusted_proxies);
    let trace = s
        .trace_sample
        .map(|p| crate::telemetry::TraceContext::of(req.headers(), p));
    let line = s.access_log.then(|| {
        Box::new(access::Line {
            quote: s.quote_log_values,
            client: client.addr,
            client_cert: ctx.client_cert.clone(),
            listener: s.listener.clone(),
            method: req.method().clone(),
            host: match &host {
                Ok(h) => h.as_ref().map(|h| h.header().clone()),
                Err(_) => req.headers().get(header::HOST).cloned(),
            },
            uri: req.uri().clone(),
            request_id: request_id.clone(),
            body: None,
            upstream: None,
            backend: None,
            cache: None,
            upstream_connect_ms: None,
            upstream_header_ms: None,
            trace_id: trace.map(|t| t.trace_id_hex()),
            upstream_protocol: None,
            protocol: match version {
                http::Version::HTTP_2 => "h2",
                http::Version::HTTP_3 => "h3",
                http::Version::HTTP_10 => "http/1.0",
                _ => "http/1.1",
            },
            grpc_status: None,
        })
    });
    let span = spans::server(
        s,
        trace,
        &req,
        (
            &client,
            host.as_ref().ok().and_then(Option::as_ref),
            &request_id,
        ),
    );
    let mut record = access::Record {
        metrics: s.unrouted.clone(),
        status: 0,
        bytes_out: 0,
        started: Instant::now(),
        line,
        span,
    };
    let mut exchange = Exchange::default();
    // What decides compression, kept only where a route compresses.
    let asked = s
        .compression
        .as_ref()
        .map(|_| compress::Asked::of(req.method(), req.headers()));
    // A gRPC client (HTTP/2 only) gets fulcrum's errors as gRPC statuses, never an
    // error page.
    let grpc = req.version() == http::Version::HTTP_2 && is_grpc(req.headers());
    // (Over HTTP/1.1 too, a gRPC content type keeps fulcrum's plain errors.)
    let no_pages = grpc || (!s.error_pages.is_empty() && is_grpc(req.headers()));
    let result = match &host {
        Ok(h) => {
            respond(
                req,
                ctx,
                (&client, trace),
                &settings,
                &request_id,
                h.as_ref(),
                &mut exchange,
            )
            .await
        }
        Err(why) => Err(ProxyError::BadRequest(why)),
    };
    let cache_status = exchange.cache_status.take();
    let mut response = result.unwrap_or_else(|e| {
        let status = e.status();
        if status.is_server_error() {
            warn!(request.id = %request_id.to_str().unwrap_or("-"), status = status.as_u16(), source = ?e.source(), error = %e, "request failed");
        } else {
            debug!(status = status.as_u16(), error = %e, "request refused");
        }
        if grpc {
            return error::grpc(&e).map(|b| ResponseBody::Full(Some(b)));
        }
        let mut r = error::plain(status).map(|b| ResponseBody::Full(Some(b)));
        if let Some((_, content_type, page)) = s
            .error_pages
            .iter()
            .find(|(code, _, _)| *code == status)
            .filter(|_| !no_pages)
        {
            r.headers_mut()
                .insert(header::CONTENT_TYPE, content_type.clone());
            *r.body_mut() = ResponseBody::Full(Some(page.clone()));
        }
        if e.source() == error::Source::Client
            && matches!(
                status,
                StatusCode::BAD_REQUEST | StatusCode::FORBIDDEN | StatusCode::REQUEST_TIMEOUT
            )
        {
            // What follows a malformed or cut request on this connection cannot be
            // trusted, and a denied client has nothing more to ask: its last response.
            // HTTP/2 streams are independent: one bad request does not close the
            // connection of the others (and HTTP/2 has no `Connection` field).
            if !ctx.requests.h2() {
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                ctx.close.fire();
            }
        }
        if let Some(v) = cache_status {
            r.headers_mut()
                .insert(crate::cache::status::CACHE_STATUS, v);
        }
        r
    });
    if let Some(cookie) = exchange.set_cookie.take() {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    if let Some(verdict) = exchange.rate_limit.take() {
        verdict.write(response.headers_mut());
    }
    if let (true, Some(asked), Some(settings)) = (exchange.compress, &asked, &s.compression) {
        if let Some(encoding) = compress::maybe(asked, settings, &mut response) {
            response = response.map(|b| {
                ResponseBody::Compressed(Box::new(compress::Compressed::new(b, encoding)))
            });
        }
    }
    // A listener that also serves HTTP/3 says so on its TCP responses (before the
    // response rules, which may change or remove it).
    if s.http3 && version != http::Version::HTTP_3 {
        response
            .headers_mut()
            .insert(header::ALT_SVC, ctx.alt_svc().clone());
    }
    // The listener's response rules, then the route's: on every response of the
    // listener, fulcrum's own answers included, after the cache (what it stores is
    // the origin's response).
    let route_rules = exchange.response_headers.take();
    let rules = [s.response_headers.as_ref(), route_rules.as_ref()];
    if rules.iter().any(Option::is_some) {
        let vars = headers::Vars {
            client_ip: &client.ip,
            request_id: &request_id,
            host: host
                .as_ref()
                .ok()
                .and_then(Option::as_ref)
                .map(RequestHost::name),
            scheme: s.scheme,
        };
        for r in rules.into_iter().flatten() {
            r.apply(response.headers_mut(), &vars);
        }
    }
    // Draining: an HTTP/1.1 connection's response is its last, and says so, so that a
    // keep-alive client sends its next request on a new connection (to whichever
    // process serves now) instead of racing the close.
    if ctx.draining.load(Ordering::Relaxed)
        && !ctx.requests.h2()
        && response.status() != StatusCode::SWITCHING_PROTOCOLS
    {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    record.status = response.status().as_u16();
    if let Some(span) = record.span.as_mut() {
        spans::learned(span, &exchange);
    }
    if let Some(line) = record.line.as_mut() {
        line.body = exchange.body;
        line.upstream = exchange.upstream;
        line.backend = exchange.backend;
        line.cache = exchange.cache;
        line.upstream_connect_ms = exchange.upstream_connect_ms;
        line.upstream_header_ms = exchange.upstream_header_ms;
        if line.backend.is_some() {
            line.upstream_protocol = Some(if exchange.upstream_h2 { "h2" } else { "http1" });
        }
        if grpc {
            // A trailers-only answer has it in the head; else the trailers will.
            line.grpc_status = access::grpc_status(response.headers());
        }
    }
    if let Some(m) = exchange.metrics {
        record.metrics = m;
    }
    response.map(|inner| ClientBody {
        inner,
        record: Some(record),
        _open: open,
    })
}

/// Where a CA asks for HTTP-01 tokens (RFC 8555 section 8.3).
const ACME_CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// The key authorization of a token an order here (or on an instance sharing the
/// ACME storage) waits on; 404 for any other.
fn acme_answer(challenges: &crate::acme::Challenges, token: &str) -> Response<ResponseBody> {
    match challenges.http(token) {
        Some(answer) => {
            let mut r = Response::new(ResponseBody::Full(Some(bytes::Bytes::from(answer))));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r
        }
        None => error::plain(StatusCode::NOT_FOUND).map(|b| ResponseBody::Full(Some(b))),
    }
}

async fn respond(
    mut req: Request<Inbound>,
    ctx: &Arc<ConnCtx>,
    (client, trace): (&client::Client, Option<crate::telemetry::TraceContext>),
    s: &Arc<Settings>,
    request_id: &HeaderValue,
    host: Option<&RequestHost>,
    exchange: &mut Exchange,
) -> Result<Response<ResponseBody>, ProxyError> {
    if !ctx.admitted {
        return Err(ProxyError::Denied);
    }
    // Behind trusted proxies, the access rules see the client they name too.
    if !s.trusted_proxies.is_empty() && !s.access.admits(client.addr.ip()) {
        return Err(ProxyError::Denied);
    }
    if let Some(challenges) = &s.acme_challenges {
        if let Some(token) = req.uri().path().strip_prefix(ACME_CHALLENGE_PATH) {
            return Ok(acme_answer(challenges, token));
        }
    }
    if let Some(rule) = &s.rate_limit {
        limit(rule, &req, client, exchange).await?;
    }
    if s.redirect_https {
        let Some(host) = host else {
            return Err(ProxyError::BadRequest("no host to redirect to"));
        };
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let location = HeaderValue::try_from(format!("https://{}{path}", host.name()))
            .map_err(|_| ProxyError::BadRequest("host not usable in a redirect"))?;
        let mut r =
            error::plain(StatusCode::PERMANENT_REDIRECT).map(|b| ResponseBody::Full(Some(b)));
        r.headers_mut().insert(header::LOCATION, location);
        return Ok(r);
    }
    // Routes match the path's one normal form; the backend gets it too, unless the
    // listener says otherwise.
    let normal = path::normalize(req.uri().path(), s.paths)
        .map_err(|e| ProxyError::BadRequest(e.reason()))?;
    let action = s
        .routes
        .find(
            req.method(),
            host.map(RequestHost::name),
            &normal,
            req.headers(),
        )
        .ok_or(ProxyError::NoRoute)?;
    // The request span (debug level) learns its route and upstream.
    if tracing::level_enabled!(tracing::Level::DEBUG) {
        let span = tracing::Span::current();
        span.record("http.route", action.strip_prefix.as_deref().unwrap_or("/"));
        if let Target::Upstream(t) = &action.target {
            span.record("upstream", &*t.upstream.name);
        }
    }
    if let Some(rule) = &action.rate_limit {
        limit(rule, &req, client, exchange).await?;
    }
    // A rewrite starts from the normal form, whatever the listener forwards.
    let rewritten = action
        .rewrite
        .as_ref()
        .and_then(|rw| match rw.apply(&normal) {
            Cow::Owned(p) => Some(p),
            Cow::Borrowed(_) => None,
        });
    let forwarded = match (rewritten, normal) {
        (Some(p), _) => Some(p),
        (None, Cow::Owned(p)) if s.forward_normalized_path => Some(p),
        _ => None,
    };
    if let Some(p) = forwarded {
        let uri = with_path(req.uri(), &p).ok_or(ProxyError::BadRequest("path not usable"))?;
        *req.uri_mut() = uri;
    }
    exchange.metrics = Some(action.metrics.clone());
    if s.spans.is_some() && trace.is_some_and(|t| t.sampled) {
        exchange.route = Some(action.strip_prefix.clone().unwrap_or_else(|| "/".into()));
    }
    exchange.response_headers = action.response_headers.clone();
    exchange.compress = action.compress;
    match &action.target {
        // Each target's future (a few KiB) is built in a heap block of its own: the
        // request's future, moved whole at each level above (a move copies a future's
        // full size, however little of it is in use), stays small. The allocator keeps
        // such blocks per worker (`aligned`), so a block costs less than the copies.
        Target::Static(dir) => Ok(Box::pin(static_files::serve(
            dir,
            req.method(),
            req.uri(),
            req.headers(),
            action.strip_prefix.as_deref(),
            action.static_hidden,
        ))
        .await),
        Target::Redirect(r) => shaping::redirect(r, req.uri(), host.map(RequestHost::name))
            .ok_or(ProxyError::BadRequest("redirect target not usable")),
        Target::Upstream(t) => {
            exchange.upstream = Some(t.upstream.clone());
            if req.method() == http::Method::CONNECT && req.version() == http::Version::HTTP_2 {
                if matches!(t.http2, Upstream2::Always(_)) {
                    return Err(ProxyError::BadRequest(
                        "extended CONNECT to an HTTP/2 upstream",
                    ));
                }
                forward::from_extended_connect(&mut req, &action.upgrades)?;
            }
            let f = forward::Forwarding {
                client: client.clone(),
                trace,
                target: t,
                timeout: match t.http2 {
                    // A gRPC call's own deadline, when shorter than the route's.
                    Upstream2::Always(_) | Upstream2::Alpn(_) => grpc_timeout(req.headers())
                        .map_or(action.timeout, |d| d.min(action.timeout)),
                    Upstream2::No => action.timeout,
                },
                ctx,
                settings: s,
                request_id,
                host,
                upgrades: &action.upgrades,
                request_headers: action.request_headers.as_ref(),
            };
            match &action.cache {
                // An upgrade is a tunnel, not a response to store: it goes past the cache.
                Some(route) if !forward::wants_upgrade(&req, &action.upgrades) => {
                    Box::pin(cached::serve(req, route, f, exchange)).await
                }
                _ => crate::side::boxed(|| forward::forward(req.map(Some), &f, exchange)).await,
            }
        }
    }
}

/// Takes the request through a rate limit: `Err` when refused (the verdict, kept in
/// `exchange`, writes `Retry-After` and the `RateLimit` fields on the 429).
async fn limit(
    rule: &crate::limits::Applied,
    req: &Request<Inbound>,
    client: &client::Client,
    exchange: &mut Exchange,
) -> Result<(), ProxyError> {
    use crate::config::LimitKey;
    let ip;
    let key: &[u8] = match &rule.limiter.rule.key {
        LimitKey::ClientIp => {
            ip = client_octets(client.addr.ip());
            &ip.0[..ip.1]
        }
        LimitKey::Header(name) => req.headers().get(name).map_or(&[], |v| v.as_bytes()),
        LimitKey::Cookie(name) => cookie(req.headers(), name).unwrap_or(&[]),
        LimitKey::Route => &[],
    };
    let verdict = rule.verdict(key).await;
    if !verdict.allowed() {
        exchange.rate_limit = Some(verdict);
        return Err(ProxyError::RateLimited);
    }
    if rule.limiter.rule.headers
        && exchange
            .rate_limit
            .as_ref()
            .is_none_or(|kept| verdict.remaining() < kept.remaining())
    {
        exchange.rate_limit = Some(verdict);
    }
    Ok(())
}

/// An address as a rate-limit key: its octets (IPv4-mapped IPv6 as IPv4).
pub fn client_octets(ip: std::net::IpAddr) -> ([u8; 16], usize) {
    let mut out = [0u8; 16];
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            (out, 4)
        }
        std::net::IpAddr::V6(v6) => (v6.octets(), 16),
    }
}

/// The value of cookie `name` in the request's `Cookie` fields.
fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let (n, v) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
            (n == name.as_bytes()).then_some(&v[1..])
        })
}

/// `uri` with its path replaced (the query kept).
fn with_path(uri: &http::Uri, path: &str) -> Option<http::Uri> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse().ok()?);
    http::Uri::from_parts(parts).ok()
}
