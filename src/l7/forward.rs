//! Forwarding one request to a backend of an upstream: the header rules, the
//! upstream connection from the pool, retries, the response-header timeout, and
//! HTTP/1.1 upgrades.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tracing::{debug, warn};

use super::body::{ResponseBody, Upstream2Body, UpstreamBody};
use super::conn::ConnCtx;
use super::error::ProxyError;
use super::exchange::Exchange;
use super::h1::{self, Head, KEEP_ALIVE, PROXY_CONNECTION};
use super::h2;
use super::host::RequestHost;
use super::pool::BackendPool;
use super::request_body::{BodyStats, RequestBody};
use super::spans;
use super::sticky::{cookie, StickyCookie};
use super::target::{Upstream2, UpstreamTarget};
use crate::activity::{Activity, Watched};
use crate::config::HashKey;
use crate::hash::hash_bytes;
use crate::upstream::{hash_ip, BackendOutcome, Lease, NoLease, PickContext};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Hop-by-hop headers (RFC 9110 7.6.1), never forwarded.
fn hop_by_hop() -> [&'static HeaderName; 6] {
    [
        &header::CONNECTION,
        &PROXY_CONNECTION,
        &KEEP_ALIVE,
        &header::TE,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ]
}

/// Whether `Connection` lists `token`.
fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names, then a removal only for those present: most messages
    // have none, or only `Connection`.
    let hop = hop_by_hop();
    let mut present = [false; 6];
    for k in headers.keys() {
        if let Some(i) = hop.iter().position(|h| *h == k) {
            present[i] = true;
        }
    }
    if present[0] {
        let mut named: Vec<HeaderName> = Vec::new();
        for v in headers.get_all(header::CONNECTION) {
            for t in v.to_str().unwrap_or("").split(',') {
                let t = t.trim();
                let common = ["close", "keep-alive", "upgrade", "te", ""];
                if common.iter().any(|c| t.eq_ignore_ascii_case(c)) {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(t.as_bytes()) {
                    named.push(name);
                }
            }
        }
        for name in named {
            headers.remove(name);
        }
    }
    for (h, there) in hop.into_iter().zip(present) {
        if there {
            headers.remove(h);
        }
    }
}

/// Removes what the client sent under the names fulcrum sets itself (`Host`,
/// `X-Forwarded-*`, `X-Request-Id`, `Content-Length`): one pass over the names, and a
/// removal only for those present. Returns `X-Forwarded-For` with the client (`ip`)
/// appended, whether the client said `Content-Length: 0`, and whether it sent
/// `tracestate`.
fn take_own_fields(headers: &mut HeaderMap, ip: &HeaderValue) -> (HeaderValue, bool, bool) {
    static OWN: [&HeaderName; 4] = [
        &header::HOST,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_HOST,
        &X_REQUEST_ID,
    ];
    let (mut xff, mut length, mut tracestate) = (false, false, false);
    let mut own = [false; 4];
    for name in headers.keys() {
        if *name == X_FORWARDED_FOR {
            xff = true;
        } else if *name == header::CONTENT_LENGTH {
            length = true;
        } else if let Some(i) = OWN.iter().position(|o| *o == name) {
            own[i] = true;
        } else if *name == crate::telemetry::TRACESTATE {
            tracestate = true;
        }
    }
    let value = if xff {
        let v = forwarded_for(headers, ip);
        headers.remove(&X_FORWARDED_FOR);
        v
    } else {
        ip.clone()
    };
    let said_empty = length
        && headers
            .remove(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() == b"0");
    for (name, there) in OWN.into_iter().zip(own) {
        if there {
            headers.remove(name);
        }
    }
    (value, said_empty, tracestate)
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The client's address (`ip`, from [`super::client::ip_value`]) appended to any `X-Forwarded-For`
/// it sent.
fn forwarded_for(headers: &HeaderMap, ip: &HeaderValue) -> HeaderValue {
    if !headers.contains_key(&X_FORWARDED_FOR) {
        return ip.clone();
    }
    let ip = ip.to_str().unwrap_or("unknown");
    let mut value = String::new();
    for v in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(s) = v.to_str() {
            value.push_str(s);
            value.push_str(", ");
        }
    }
    value.push_str(ip);
    HeaderValue::try_from(value).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Everything one request needs to be forwarded, besides the request itself.
#[derive(Clone)]
pub struct Forwarding<'a> {
    /// Who the request is from (after the PROXY header and trusted proxies).
    pub client: super::client::Client,
    /// With `[tracing]`: the request's trace, passed on to the backend.
    pub trace: Option<crate::telemetry::TraceContext>,
    pub target: &'a Arc<UpstreamTarget>,
    /// Time allowed for the backend's response headers.
    pub timeout: Duration,
    pub ctx: &'a Arc<ConnCtx>,
    pub settings: &'a Arc<super::settings::Settings>,
    pub request_id: &'a HeaderValue,
    /// The request's one host: sent as `Host` and `X-Forwarded-Host`.
    pub host: Option<&'a RequestHost>,
    /// The `Upgrade` protocols the route passes through (lower case).
    pub upgrades: &'a [String],
    /// The route's request header rules (the listener's are in `settings`).
    pub request_headers: Option<&'a Arc<super::headers::Rules>>,
}

/// Whether the request asks for an upgrade the route allows: HTTP/1.1, `Connection:
/// upgrade`, and every protocol `Upgrade` names among `allowed` (never `h2c`). Any
/// other `Upgrade` is dropped with the hop-by-hop fields and the request goes on as
/// a plain one (RFC 9110 7.8: a server may ignore it).
pub fn wants_upgrade<B>(req: &Request<B>, allowed: &[String]) -> bool {
    if req.version() != Version::HTTP_11 || !connection_has(req.headers(), "upgrade") {
        return false;
    }
    let mut named = req
        .headers()
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or(",").split(','))
        .map(|p| p.trim())
        .peekable();
    named.peek().is_some()
        && named.all(|p| {
            let name = p.split('/').next().unwrap_or("");
            !name.eq_ignore_ascii_case("h2c")
                && allowed
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(p) || a.eq_ignore_ascii_case(name))
        })
}

/// Marks a request rewritten from an HTTP/2 extended CONNECT: its 101 is the
/// client's 200.
#[derive(Debug, Clone, Copy)]
pub struct FromExtendedConnect;

/// An HTTP/2 extended CONNECT for `websocket` (RFC 8441) on a route that passes
/// WebSocket, rewritten as the HTTP/1.1 upgrade a backend expects: `GET` with
/// `Connection: upgrade`, `Upgrade: websocket` and a new `Sec-WebSocket-Key`. A
/// plain CONNECT is left as it is; another protocol, or a route that does not pass
/// WebSocket, is refused.
pub fn from_extended_connect<B>(
    req: &mut Request<B>,
    allowed: &[String],
) -> Result<(), ProxyError> {
    let Some(protocol) = req.extensions().get::<hyper::ext::Protocol>() else {
        return Ok(());
    };
    if !protocol.as_str().eq_ignore_ascii_case("websocket")
        || !allowed.iter().any(|a| a.eq_ignore_ascii_case("websocket"))
    {
        return Err(ProxyError::BadRequest(
            "extended CONNECT not passed on this route",
        ));
    }
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode(fastrand::u128(..).to_le_bytes());
    *req.method_mut() = Method::GET;
    *req.version_mut() = Version::HTTP_11;
    let h = req.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::try_from(key) {
        h.insert(header::SEC_WEBSOCKET_KEY, v);
    }
    if !h.contains_key(header::SEC_WEBSOCKET_VERSION) {
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
    }
    req.extensions_mut().insert(FromExtendedConnect);
    Ok(())
}

/// The header rules: the request head as it goes to the backend. Hop-by-hop fields
/// and those fulcrum sets itself are dropped from the client's; `Host`,
/// `X-Forwarded-*` and `X-Request-Id` are set; HTTP/2 cookies are joined; an allowed
/// upgrade keeps its `Connection` and `Upgrade`.
fn upstream_head(
    parts: http::request::Parts,
    has_body: bool,
    upgrade: bool,
    f: &Forwarding<'_>,
) -> Head {
    let mut headers = parts.headers;
    let upgrade_value = if upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    strip_hop_by_hop(&mut headers);
    let (forwarded_for, said_empty, tracestate) = take_own_fields(&mut headers, &f.ctx.peer_ip);
    // Framing is decided from the body when the head is written: never the client's
    // here. An empty body of a method that usually has one still says so, or some
    // backends answer 411.
    let mut added = h1::Added {
        host: f.host.map(|h| h.header().clone()),
        forwarded_for: Some(forwarded_for),
        forwarded_proto: Some(HeaderValue::from_static(f.settings.scheme)),
        forwarded_host: f.host.map(|h| h.header().clone()),
        request_id: Some(f.request_id.clone()),
        traceparent: None,
        empty_length: !has_body
            && (said_empty || matches!(parts.method, Method::POST | Method::PUT | Method::PATCH)),
    };
    // HTTP/2 may split cookies over several fields; HTTP/1.1 wants one (RFC 9113 8.2.3).
    if parts.version == Version::HTTP_2 && headers.get_all(header::COOKIE).iter().count() > 1 {
        let joined: Vec<&str> = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if let Ok(v) = HeaderValue::try_from(joined.join("; ")) {
            headers.insert(header::COOKIE, v);
        }
    }
    if let Some(t) = &f.trace {
        t.strip(&mut headers, tracestate);
        added.traceparent = Some(t.encoded(t.span_id));
    }
    let rules = [f.settings.request_headers.as_ref(), f.request_headers];
    if rules.iter().any(Option::is_some) {
        let vars = super::headers::Vars {
            client_ip: &f.client.ip,
            request_id: f.request_id,
            host: f.host.map(RequestHost::name),
            scheme: f.settings.scheme,
        };
        for r in rules.into_iter().flatten() {
            r.apply_request(&mut headers, &mut added, &vars);
        }
    }
    if let Some(v) = upgrade_value {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, v);
    }
    let uri = match parts.uri.path_and_query() {
        Some(pq) if parts.uri.scheme().is_some() || parts.uri.authority().is_some() => {
            Uri::from(pq.clone())
        }
        Some(_) => parts.uri,
        None => Uri::from_static("/"),
    };
    Head {
        method: parts.method,
        uri,
        headers,
        added,
    }
}

/// The upgrade stage: once the backend said 101, bytes pass both ways (the backend's
/// first bytes after its head first) until either side closes, `idle` passes without
/// traffic, or shutdown's drain time is over. The tunnel holds the lease and the
/// client connection's places under the limits.
fn tunnel(
    client_upgrade: hyper::upgrade::OnUpgrade,
    backend: h1::Stream,
    early: bytes::Bytes,
    lease: Lease,
    ctx: &Arc<ConnCtx>,
    idle: Duration,
) {
    let cut = ctx.cut.clone();
    let backend_addr = lease.backend().addr;
    let permits = ctx.permits.clone();
    ctx.tracker.spawn(async move {
        // The tunnel still counts against the connection limits.
        let _held = (lease, permits);
        let client = match client_upgrade.await {
            Ok(c) => c,
            Err(e) => {
                debug!(backend.addr = %backend_addr, client = ?e, "upgrade failed");
                return;
            }
        };
        let activity = Arc::new(Activity::new());
        let mut c = Watched::new(TokioIo::new(client), activity.clone());
        let mut b = Watched::new(backend, activity.clone());
        // What the backend sent right after its 101 goes first.
        if !early.is_empty() && c.write_all(&early).await.is_err() {
            return;
        }
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut c, &mut b) => {}
            _ = activity.idle_for(idle) => {}
            _ = cut.cancelled() => {}
        }
    });
}

/// Sends the request to a backend of `target`, with the retries of section 3 of the
/// interface. `None` as the body is a request fulcrum makes itself (a background
/// revalidation): no body, no client connection behind it.
pub async fn forward(
    mut req: Request<Option<Incoming>>,
    f: &Forwarding<'_>,
    exchange: &mut Exchange,
) -> Result<Response<ResponseBody>, ProxyError> {
    // HTTP/2 backends: no HTTP/1.1 upgrade; `TE: trailers` passes (RFC 9113 8.2.2).
    let upgrade =
        !matches!(f.target.http2, Upstream2::Always(_)) && wants_upgrade(&req, f.upgrades);
    let from_connect = req.extensions().get::<FromExtendedConnect>().is_some();
    let te_trailers = f.target.http2.possible()
        && req.headers().get_all(header::TE).iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
        });
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let up = &f.target.upstream;
    let choice = Choice {
        hash: up
            .hashes()
            .then(|| request_hash(&up.hash_key, &req, f.client.addr)),
        sticky: f
            .target
            .sticky
            .as_ref()
            .map(|s| (s, s.requested(req.headers()))),
    };

    let limit = f.settings.max_body_size;
    if limit > 0 {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(ProxyError::BodyTooLarge);
        }
    }

    let body_deadline = tokio::time::Instant::now() + f.settings.body_timeout;
    let (parts, body) = req.into_parts();
    let body = body.filter(|b| !hyper::body::Body::is_end_stream(b));
    let has_body = body.is_some();
    let retriable = is_idempotent(&parts.method) && !has_body;
    let mut head = upstream_head(parts, has_body, upgrade, f);
    let body = match body {
        Some(body) => {
            let stats = Arc::new(BodyStats::default());
            exchange.body = Some(stats.clone());
            RequestBody::stream(body, limit, stats, body_deadline)
        }
        None => RequestBody::empty(),
    };
    let mut sending = Sending {
        head: &mut head,
        retriable,
        body_deadline,
        te_trailers,
    };
    let answered = attempts(&mut sending, body, &choice, f, exchange).await?;
    relay(
        answered,
        (client_upgrade, from_connect),
        &choice,
        f,
        exchange,
    )
}

/// How each attempt picks its backend.
struct Choice<'a> {
    /// The request's hash, for the strategies that hash.
    hash: Option<u64>,
    /// The sticky cookie of the upstream, and the backend the request names in it.
    sticky: Option<(&'a StickyCookie, Option<usize>)>,
}

/// The request as every attempt sends it.
struct Sending<'a> {
    /// Its `traceparent` names each attempt's span when spans are exported.
    head: &'a mut Head,
    /// Idempotent and bodyless: may be sent again after it was written.
    retriable: bool,
    /// When the request body must have arrived whole.
    body_deadline: tokio::time::Instant,
    /// HTTP/2 backends: the client said `TE: trailers` (gRPC needs it passed on).
    te_trailers: bool,
}

/// The backend's answer, with the lease and the index of the backend that gave it.
struct Answered {
    resp: Answer,
    lease: Lease,
    index: usize,
}

/// A backend's response head, by the protocol it came in.
enum Answer {
    H1(h1::Response),
    H2(h2::Answer),
}

/// What the attempts so far have left: the backends tried and the last error.
struct Tries {
    allowed: usize,
    tried: Vec<usize>,
    failures: usize,
    last_error: ProxyError,
}

impl Tries {
    /// Counts a failure of backend `i` against its health and the request's tries.
    fn failed(&mut self, lease: &mut Lease, i: usize, error: ProxyError) {
        lease.set_outcome(BackendOutcome::Failure);
        self.tried.push(i);
        self.failures += 1;
        self.last_error = error;
    }
}

/// The attempts stage (section 3 of the interface): pick a backend, take a pooled
/// connection or open one, send, wait for the response head; on a failure that
/// allows it, again with another backend, at most `retries + 1` times.
async fn attempts(
    sending: &mut Sending<'_>,
    body: RequestBody,
    choice: &Choice<'_>,
    f: &Forwarding<'_>,
    exchange: &mut Exchange,
) -> Result<Answered, ProxyError> {
    let up = &f.target.upstream;
    let mut body = Some(body);
    let mut tries = Tries {
        allowed: up.attempts(),
        tried: Vec::new(),
        failures: 0,
        last_error: ProxyError::NoBackend,
    };
    let mut unsent_h2 = 0;
    while tries.failures < tries.allowed {
        let sticky_lease = match choice.sticky {
            Some((_, Some(i))) if !tries.tried.contains(&i) => up.pick_backend(i),
            _ => None,
        };
        let picked = match sticky_lease {
            Some(lease) => Ok(lease),
            None => {
                up.acquire(&PickContext {
                    client: Some(f.client.addr),
                    exclude: &tries.tried,
                    hash: choice.hash,
                })
                .await
            }
        };
        let mut lease = match picked {
            Ok(lease) => lease,
            Err(NoLease::NoBackend) => break,
            Err(why) => return Err(ProxyError::Queue(why)),
        };
        let i = lease.index();
        let mut span = spans::attempt(
            f.settings,
            f.trace.as_ref(),
            &sending.head.method,
            (&up.name, lease.backend()),
            exchange.attempts,
        );
        exchange.attempts = exchange.attempts.saturating_add(1);
        if let (Some(span), Some(t)) = (&span, &f.trace) {
            // (Unless a header rule removed it.)
            if sending.head.added.traceparent.is_some() {
                sending.head.added.traceparent = Some(t.encoded(span.id()));
            }
        }
        let private;
        let pool = match f.target.proxy_protocol {
            None => &f.target.pools[i],
            Some(v2) => {
                private = f.ctx.private_pool(&f.target.pools[i], v2);
                &private
            }
        };
        let timings = &f.target.timings[i];
        let connect_started = tokio::time::Instant::now();
        // `auto`: a connection opened to learn the backend's protocol serves this
        // request, counted as opened (not again as reused).
        let mut learnt = false;
        let http2 = match f.target.http2 {
            Upstream2::No => None,
            Upstream2::Always(keepalive) => Some(keepalive),
            Upstream2::Alpn(keepalive) => {
                let how = connect_how(f, &lease, keepalive);
                match pool.alpn_h2(&how).await {
                    Ok((h2, opened)) => {
                        if opened {
                            count_opened(timings, connect_started, exchange);
                            learnt = true;
                        }
                        h2.then_some(keepalive)
                    }
                    Err(e) => {
                        connect_failed(f, &lease, &e);
                        if let Some(span) = span.as_mut() {
                            span.fail("connect");
                        }
                        tries.failed(&mut lease, i, ProxyError::Connect(e));
                        continue;
                    }
                }
            }
        };
        exchange.upstream_h2 = http2.is_some();
        if let Some(keepalive) = http2 {
            match attempt_h2(
                sending,
                &mut body,
                (pool, keepalive, learnt),
                (&mut lease, i),
                f,
                exchange,
            )
            .await
            {
                H2Try::Answered(resp) => {
                    if let Some(span) = span.as_mut() {
                        span.status(resp.response.status().as_u16(), 400);
                    }
                    return Ok(Answered {
                        resp: Answer::H2(resp),
                        lease,
                        index: i,
                    });
                }
                H2Try::Unsent { fresh } => {
                    // Never sent (a connection closing or refusing new streams): again,
                    // on another connection; counted against the backend when the
                    // connection was new, or when it happens twice.
                    unsent_h2 += 1;
                    if fresh || unsent_h2 > 1 {
                        if let Some(span) = span.as_mut() {
                            span.fail("backend");
                        }
                        tries.failed(
                            &mut lease,
                            i,
                            ProxyError::Backend("HTTP/2 stream refused".into()),
                        );
                    }
                    continue;
                }
                H2Try::Failed { error, again } => {
                    if let Some(span) = span.as_mut() {
                        span.fail(match error {
                            ProxyError::Connect(_) => "connect",
                            ProxyError::Timeout(_) => "timeout",
                            ProxyError::BodyTooLarge | ProxyError::BodyTimeout => "request_body",
                            _ => "backend",
                        });
                    }
                    match error {
                        e @ (ProxyError::Connect(_) | ProxyError::Backend(_)) => {
                            tries.failed(&mut lease, i, e);
                            if again {
                                continue;
                            }
                            break;
                        }
                        ProxyError::Timeout(t) => {
                            lease.set_outcome(BackendOutcome::Failure);
                            return Err(ProxyError::Timeout(t));
                        }
                        e => return Err(e),
                    }
                }
            }
        }
        let (conn, fresh) = match pool.checkout() {
            Some(c) => {
                if !learnt {
                    timings.reused.inc();
                }
                (c, false)
            }
            // Boxed: opening a connection (with its TLS handshake) is the rare case,
            // and its state would otherwise sit in every request's future.
            None => match Box::pin(
                pool.connect(
                    up.connect_timeout,
                    f.target
                        .tls
                        .as_ref()
                        .map(|t| (t, lease.backend().host.as_str())),
                ),
            )
            .await
            {
                Ok(c) => {
                    count_opened(timings, connect_started, exchange);
                    (c, true)
                }
                Err(e) => {
                    connect_failed(f, &lease, &e);
                    if let Some(span) = span.as_mut() {
                        span.fail("connect");
                    }
                    tries.failed(&mut lease, i, ProxyError::Connect(e));
                    continue;
                }
            },
        };
        exchange.backend = Some(lease.shared_backend());
        // A request without a body can be sent again; one with a body goes once.
        let request_body = if sending.retriable {
            RequestBody::empty()
        } else {
            match body.take() {
                Some(b) => b,
                None => break,
            }
        };
        let sent_at = tokio::time::Instant::now();
        let sent = tokio::select! {
            r = conn.exchange(&*sending.head, request_body) => Ok(r),
            late = deadline(exchange.body.clone(), sending.body_deadline, f) => Err(late),
        };
        let e = match sent {
            // The client's upload is late: the backend request is dropped with it.
            Err(Late::Body) => return Err(ProxyError::BodyTimeout),
            Err(Late::Backend) => {
                if let Some(span) = span.as_mut() {
                    span.fail("timeout");
                }
                lease.set_outcome(BackendOutcome::Failure);
                return Err(ProxyError::Timeout(f.timeout));
            }
            Ok(Ok(resp)) => {
                lease.set_outcome(BackendOutcome::Success);
                let took = sent_at.elapsed();
                lease.record_latency(took);
                timings.response.observe(took.as_secs_f64());
                exchange.upstream_header_ms = Some(took.as_millis() as u64);
                if let Some(span) = span.as_mut() {
                    span.status(resp.status.as_u16(), 400);
                }
                return Ok(Answered {
                    resp: Answer::H1(resp),
                    lease,
                    index: i,
                });
            }
            Ok(Err(e)) => e,
        };
        if let Some(span) = span.as_mut() {
            span.fail(
                if e.too_large() || e.too_late() || matches!(e, h1::Failed::RequestBody(_)) {
                    "request_body"
                } else {
                    "backend"
                },
            );
        }
        match e {
            h1::Failed::Unsent(unsent, e) => {
                // Never written: a pooled connection the backend had closed. Try
                // again; only a fresh connection failing counts against the backend.
                if !sending.retriable {
                    body = Some(unsent);
                }
                if fresh {
                    tries.failed(&mut lease, i, ProxyError::Backend(e.to_string()));
                }
            }
            e if e.too_large() => return Err(ProxyError::BodyTooLarge),
            e if e.too_late() => return Err(ProxyError::BodyTimeout),
            h1::Failed::RequestBody(e) => return Err(ProxyError::ClientBody(e.to_string())),
            e => {
                warn!(
                    request.id = %f.request_id.to_str().unwrap_or("-"),
                    upstream = %up.name,
                    backend.name = %lease.backend().name,
                    error = %e,
                    "request to backend failed"
                );
                // Sent again only when not a byte of a response arrived.
                let nothing_arrived = matches!(
                    e,
                    h1::Failed::Io {
                        answered: false,
                        ..
                    }
                );
                tries.failed(&mut lease, i, ProxyError::Backend(e.to_string()));
                if !(sending.retriable && nothing_arrived) {
                    break;
                }
            }
        }
    }
    Err(tries.last_error)
}

/// Counts a backend connection opened for the request, `started` when opening began.
fn count_opened(
    timings: &crate::admin::metrics::BackendTimings,
    started: tokio::time::Instant,
    exchange: &mut Exchange,
) {
    let took = started.elapsed();
    timings.connect.observe(took.as_secs_f64());
    timings.opened.inc();
    exchange.upstream_connect_ms = Some(took.as_millis() as u64);
}

/// How a new connection to the lease's backend is opened for HTTP/2 or ALPN.
fn connect_how<'a>(
    f: &'a Forwarding<'_>,
    lease: &'a Lease,
    keepalive: Duration,
) -> h2::Connect<'a> {
    h2::Connect {
        timeout: f.target.upstream.connect_timeout,
        tls: f
            .target
            .tls
            .as_ref()
            .map(|t| (t, lease.backend().host.as_str())),
        keepalive,
    }
}

fn connect_failed(f: &Forwarding<'_>, lease: &Lease, e: &str) {
    warn!(
        request.id = %f.request_id.to_str().unwrap_or("-"),
        upstream = %f.target.upstream.name,
        backend.name = %lease.backend().name,
        backend.addr = %lease.backend().addr,
        error = %e,
        "connect to backend failed"
    );
}

/// How one HTTP/2 attempt ended.
enum H2Try {
    Answered(h2::Answer),
    /// The request never left (its body, if any, is back in place).
    Unsent {
        fresh: bool,
    },
    /// `again`: another backend may be tried (nothing was sent, or nothing of the
    /// request can have been acted on).
    Failed {
        error: ProxyError,
        again: bool,
    },
}

/// One attempt on an HTTP/2 backend: a stream on a shared connection (opened if none
/// has room), the request sent, its response head awaited.
async fn attempt_h2(
    sending: &Sending<'_>,
    body: &mut Option<RequestBody>,
    (pool, keepalive, learnt): (&BackendPool, Duration, bool),
    (lease, i): (&mut Lease, usize),
    f: &Forwarding<'_>,
    exchange: &mut Exchange,
) -> H2Try {
    let up = &f.target.upstream;
    let timings = &f.target.timings[i];
    let how = connect_how(f, lease, keepalive);
    let started = tokio::time::Instant::now();
    let (mut sender, in_flight, fresh) = match pool
        .h2
        .stream(pool.open_stream(how.timeout, how.tls), &how)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            connect_failed(f, lease, &e);
            return H2Try::Failed {
                error: ProxyError::Connect(e),
                again: true,
            };
        }
    };
    if fresh {
        count_opened(timings, started, exchange);
    } else if !learnt {
        timings.reused.inc();
    }
    exchange.backend = Some(lease.shared_backend());
    let request_body = if sending.retriable {
        RequestBody::empty()
    } else {
        match body.take() {
            Some(b) => b,
            None => {
                return H2Try::Failed {
                    error: ProxyError::NoBackend,
                    again: false,
                }
            }
        }
    };
    let scheme = if f.target.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let req = match h2::request(
        sending.head,
        request_body,
        scheme,
        &lease.backend().host,
        sending.te_trailers,
    ) {
        Ok(r) => r,
        Err(e) => {
            debug!(error = %e, "request not expressible in HTTP/2");
            return H2Try::Failed {
                error: ProxyError::BadRequest("request target not usable"),
                again: false,
            };
        }
    };
    let sent_at = tokio::time::Instant::now();
    let sent = tokio::select! {
        r = sender.try_send_request(req) => Ok(r),
        late = deadline(exchange.body.clone(), sending.body_deadline, f) => Err(late),
    };
    match sent {
        Err(Late::Body) => H2Try::Failed {
            error: ProxyError::BodyTimeout,
            again: false,
        },
        Err(Late::Backend) => H2Try::Failed {
            error: ProxyError::Timeout(f.timeout),
            again: false,
        },
        Ok(Ok(response)) => {
            lease.set_outcome(BackendOutcome::Success);
            let took = sent_at.elapsed();
            lease.record_latency(took);
            timings.response.observe(took.as_secs_f64());
            exchange.upstream_header_ms = Some(took.as_millis() as u64);
            H2Try::Answered(h2::Answer {
                response,
                in_flight,
            })
        }
        Ok(Err(mut e)) => {
            if let Some(req) = e.take_message() {
                pool.h2.retire(&in_flight);
                if !sending.retriable {
                    *body = Some(req.into_body());
                }
                return H2Try::Unsent { fresh };
            }
            let e = e.into_error();
            if let Some(own) = request_body_error(&e) {
                return H2Try::Failed {
                    error: own,
                    again: false,
                };
            }
            warn!(
                request.id = %f.request_id.to_str().unwrap_or("-"),
                upstream = %up.name,
                backend.name = %lease.backend().name,
                error = %e,
                "request to backend failed"
            );
            H2Try::Failed {
                error: ProxyError::Backend(e.to_string()),
                // A stream the backend refused before acting on it may go elsewhere.
                again: sending.retriable,
            }
        }
    }
}

/// fulcrum's own request body errors, found in an HTTP/2 send's error chain.
fn request_body_error(e: &hyper::Error) -> Option<ProxyError> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<super::request_body::TooLarge>() {
            return Some(ProxyError::BodyTooLarge);
        }
        if s.is::<super::request_body::TooLate>() {
            return Some(ProxyError::BodyTimeout);
        }
        source = s.source();
    }
    None
}

/// The route's timeout is for the backend's answer: it starts once the request body
/// (if any) has been read whole, not while a client is still uploading; the upload
/// itself has `body_timeout` from the request's start.
async fn deadline(
    body: Option<Arc<BodyStats>>,
    body_deadline: tokio::time::Instant,
    f: &Forwarding<'_>,
) -> Late {
    if let Some(stats) = &body {
        tokio::select! {
            _ = stats.wait_finished() => {}
            _ = tokio::time::sleep_until(body_deadline) => return Late::Body,
        }
    }
    let _waiting = f.ctx.waiting_on_backend();
    tokio::time::sleep(f.timeout).await;
    Late::Backend
}

/// The response stage: a 101 becomes the upgrade tunnel; any other answer goes to
/// the client (without its hop-by-hop fields, left out by the parser), its body
/// streamed from the connection,
/// which returns to the pool when the body ends. The sticky cookie is set when the
/// request named another backend or none.
fn relay(
    answered: Answered,
    (client_upgrade, from_connect): (Option<hyper::upgrade::OnUpgrade>, bool),
    choice: &Choice<'_>,
    f: &Forwarding<'_>,
    exchange: &mut Exchange,
) -> Result<Response<ResponseBody>, ProxyError> {
    let Answered { resp, lease, index } = answered;
    if let Some((cookie, requested)) = choice.sticky {
        if requested != Some(index) {
            exchange.set_cookie = cookie
                .set_cookie(index, f.settings.scheme == "https")
                .cloned();
        }
    }
    let resp = match resp {
        // To an HTTP/2 CONNECT, a 2xx opens a tunnel: a backend that answered the
        // upgrade with anything but 101 cannot give one.
        Answer::H1(r)
            if from_connect
                && r.status.is_success()
                && r.status != StatusCode::SWITCHING_PROTOCOLS =>
        {
            return Err(ProxyError::Backend(format!(
                "{} to a WebSocket upgrade",
                r.status
            )));
        }
        Answer::H1(r) => r,
        Answer::H2(h2::Answer {
            response,
            in_flight,
        }) => {
            let (mut parts, inner) = response.into_parts();
            // What the client's protocol writes: its own version, no HTTP/2-only
            // fields to strip (HTTP/2 has no connection-specific ones).
            parts.version = Version::HTTP_11;
            return Ok(Response::from_parts(
                parts,
                ResponseBody::Upstream2(Box::new(Upstream2Body {
                    inner,
                    in_flight: Some(in_flight),
                    lease: Some(lease),
                })),
            ));
        }
    };
    let h1::Response {
        status,
        version,
        headers,
        body: inner,
    } = resp;
    let body = if status == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(ProxyError::Backend(
                "101 to a request that asked for no upgrade".into(),
            ));
        };
        let Some((backend, early)) = inner.upgraded() else {
            return Err(ProxyError::Backend("upgrade without a connection".into()));
        };
        tunnel(
            client_upgrade,
            backend,
            early,
            lease,
            f.ctx,
            f.settings.idle_timeout,
        );
        ResponseBody::empty()
    } else {
        // The hop-by-hop fields never made it into `headers` (see h1's parser).
        ResponseBody::Upstream(UpstreamBody {
            inner,
            pool: match f.target.proxy_protocol {
                None => f.target.pools[index].clone(),
                Some(v2) => f.ctx.private_pool(&f.target.pools[index], v2),
            },
            lease: Some(lease),
        })
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.version_mut() = version;
    *r.headers_mut() = headers;
    if from_connect && status == StatusCode::SWITCHING_PROTOCOLS {
        // RFC 8441 5: the tunnel opens with a 200, without the handshake's fields.
        *r.status_mut() = StatusCode::OK;
        let h = r.headers_mut();
        h.remove(header::SEC_WEBSOCKET_ACCEPT);
        h.remove(header::UPGRADE);
        h.remove(header::CONNECTION);
    }
    Ok(r)
}

/// Which wait ran out first.
enum Late {
    /// The request body did not arrive whole within `body_timeout`.
    Body,
    /// The backend sent no response head within the route's timeout.
    Backend,
}

/// What `consistent_hash` hashes for this request; a missing header or cookie falls
/// back to the client address.
fn request_hash<B>(key: &HashKey, req: &Request<B>, peer: SocketAddr) -> u64 {
    let bytes: Option<&[u8]> = match key {
        HashKey::SourceIp => None,
        HashKey::Path => Some(req.uri().path().as_bytes()),
        HashKey::Header(name) => req.headers().get(name.as_str()).map(HeaderValue::as_bytes),
        HashKey::Cookie(name) => cookie(req.headers(), name).map(str::as_bytes),
    };
    match bytes {
        Some(b) => hash_bytes(b),
        None => hash_ip(peer.ip()),
    }
}

#[cfg(test)]
mod tests;
