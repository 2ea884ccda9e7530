//! Forwarding one request to a backend of an upstream: the header rules, the
//! upstream connection from the pool, retries, the response-header timeout, and
//! HTTP/1.1 upgrades.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::l7::request_body::Inbound;
use http::header::{self};
use http::{HeaderValue, Request, Response};
use tracing::warn;

use super::body::ResponseBody;
use super::conn::ConnCtx;
use super::error::ProxyError;
use super::exchange::Exchange;
use super::h1::{self, Head};
use super::h2;
use super::host::RequestHost;
use super::request_body::{BodyStats, RequestBody};
use super::spans;
use super::sticky::{cookie, StickyCookie};
use super::target::{Upstream2, UpstreamTarget};
use crate::config::HashKey;
use crate::hash::hash_bytes;
use crate::upstream::{hash_ip, BackendOutcome, Lease, NoLease, PickContext};

mod h2_attempt;
mod head;
mod relay;
mod upgrade;
use h2_attempt::*;
use head::*;
pub(super) use head::{
    hop_by_hop, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REQUEST_ID,
};
use relay::*;
pub(super) use upgrade::H2Connect;
use upgrade::*;
pub(super) use upgrade::{from_extended_connect, wants_upgrade, FromExtendedConnect};

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

/// Sends the request to a backend of `target`, with the retries of section 3 of the
/// interface. `None` as the body is a request fulcrum makes itself (a background
/// revalidation): no body, no client connection behind it.
pub(super) async fn forward(
    mut req: Request<Option<Inbound>>,
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
    let client_upgrade = upgrade.then(|| client_upgrade(&mut req));
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

/// Times one request may find its HTTP/2 stream refused unprocessed (connections
/// going away under it) before that counts as a failed attempt.
const MAX_UNSENT_H2: u32 = 4;

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
        // The request span (debug level) names the backend of the latest attempt.
        if tracing::level_enabled!(tracing::Level::DEBUG) {
            tracing::Span::current().record("backend.name", &*lease.backend().name);
        }
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
                        connect_failed(f, &lease, &e, span.as_mut());
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
                    // Never sent, or refused unprocessed (a connection closing or
                    // refusing new streams): again, on another connection; counted
                    // against the backend when the connection was new, or past
                    // MAX_UNSENT_H2 times for the request.
                    unsent_h2 += 1;
                    if fresh || unsent_h2 > MAX_UNSENT_H2 {
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
                    connect_failed(f, &lease, &e, span.as_mut());
                    tries.failed(&mut lease, i, ProxyError::Connect(e));
                    continue;
                }
            },
        };
        exchange.backend = Some(lease.shared_backend());
        let Some(request_body) = body_for_attempt(sending, &mut body) else {
            break;
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
                head_arrived(&mut lease, timings, sent_at, exchange);
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
                request_failed(f, &lease, &e);
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

fn connect_failed(
    f: &Forwarding<'_>,
    lease: &Lease,
    e: &str,
    span: Option<&mut crate::telemetry::export::Open>,
) {
    if let Some(span) = span {
        span.fail("connect");
    }
    warn!(
        request.id = %f.request_id.to_str().unwrap_or("-"),
        upstream = %f.target.upstream.name,
        backend.name = %lease.backend().name,
        backend.addr = %lease.backend().addr,
        error = %e,
        "connect to backend failed"
    );
}

/// A request that reached a backend failed there (or on the way).
fn request_failed(f: &Forwarding<'_>, lease: &Lease, e: &dyn std::fmt::Display) {
    warn!(
        request.id = %f.request_id.to_str().unwrap_or("-"),
        upstream = %f.target.upstream.name,
        backend.name = %lease.backend().name,
        error = %e,
        "request to backend failed"
    );
}

/// A response head arrived `sent_at` after the request went: the backend's success,
/// its latency (for `ewma` and the metrics) and the access log's `upstream_header_ms`.
fn head_arrived(
    lease: &mut Lease,
    timings: &crate::admin::metrics::BackendTimings,
    sent_at: tokio::time::Instant,
    exchange: &mut Exchange,
) {
    lease.set_outcome(BackendOutcome::Success);
    let took = sent_at.elapsed();
    lease.record_latency(took);
    timings.response.observe(took.as_secs_f64());
    exchange.upstream_header_ms = Some(took.as_millis() as u64);
}

/// The body this attempt sends: a request without a body can be sent again (an
/// empty one each time); one with a body goes once (`None` once it has gone).
fn body_for_attempt(sending: &Sending<'_>, body: &mut Option<RequestBody>) -> Option<RequestBody> {
    if sending.retriable {
        Some(RequestBody::empty())
    } else {
        body.take()
    }
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
