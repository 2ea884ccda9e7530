//! Requests of routes with `cache = true`: answered from the response cache when it
//! may, forwarded (and stored) when it must.
//!
//! - GET: a fresh stored response is a hit; a stale one is revalidated with its
//!   validators (a 304 refreshes it), or served while it is refreshed in the background
//!   (`stale-while-revalidate`), or served when the origin fails (`stale-if-error`);
//!   concurrent misses for one key make one upstream request.
//! - HEAD: answered from a fresh stored GET, otherwise forwarded as it is; its 200
//!   updates a stale stored GET that describes the same content (RFC 9111 4.3.5), or
//!   drops one that does not.
//! - Other methods are forwarded untouched; a non-error answer to an unsafe one drops
//!   what is stored for its URI (and for `Location` / `Content-Location` on the same
//!   host).

use std::sync::Arc;
use std::time::SystemTime;

use crate::l7::request_body::Inbound;
use http::request::Parts;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};

use super::body::ResponseBody;
use super::error::{self, ProxyError};
use super::exchange::Exchange;
use super::forward::{self, Forwarding};
use crate::cache::decide::{self, OnHead, OnRequest};
use crate::cache::fill::Fill;
use crate::cache::policy;
use crate::cache::range;
use crate::cache::status::{CacheOutcome, CacheStatus, Fwd, CACHE_STATUS};
use crate::cache::{self, Join, Lookup, Stored};

mod fetch;
use fetch::*;

use super::cache_route::{count, CacheRoute};

/// Forwards; should it fail, the error response carries `status` too.
async fn send_as(
    f: &Forwarding<'_>,
    status: CacheStatus,
    req: Request<Option<Inbound>>,
    exchange: &mut Exchange,
) -> Result<Response<ResponseBody>, ProxyError> {
    exchange.cache_status = Some(status.to_header());
    forward::forward(req, f, exchange).await
}

pub async fn serve(
    req: Request<Inbound>,
    route: &CacheRoute,
    f: Forwarding<'_>,
    exchange: &mut Exchange,
) -> Result<Response<ResponseBody>, ProxyError> {
    let answered_here = req.method() == Method::GET || req.method() == Method::HEAD;
    let result = answer(req, route, f, exchange).await;
    if result.is_err() && exchange.cache.is_none() {
        // The origin failed and nothing stored could answer: still counted.
        let counted = if answered_here {
            CacheOutcome::Miss
        } else {
            CacheOutcome::Bypass
        };
        count(counted, &route.counters);
        exchange.cache = Some(counted);
    }
    result
}

async fn answer(
    mut req: Request<Inbound>,
    route: &CacheRoute,
    f: Forwarding<'_>,
    exchange: &mut Exchange,
) -> Result<Response<ResponseBody>, ProxyError> {
    // HTTP/2 and absolute-form requests carry the host in the URI: the request's one
    // host as Host for all, so that their stored requests compare alike.
    if let Some(h) = f.host {
        req.headers_mut().insert(header::HOST, h.header().clone());
    }
    let https = f.settings.scheme == "https";
    let method = req.method().clone();
    let (Some(host), true) = (f.host, method == Method::GET || method == Method::HEAD) else {
        return bypass(req, route, &f, https, exchange).await;
    };
    let key = route.key(https, host.authority(), req.uri());
    let now = SystemTime::now();
    let (parts, body) = req.into_parts();
    let found = route.cache.lookup(&key, &parts, now);
    let fwd = match decide::on_request(found, &method, &parts.headers, now) {
        OnRequest::Hit(stored) => {
            return Ok(hit(route, &parts, &stored, now, None, exchange));
        }
        OnRequest::GatewayTimeout => {
            let r = error::plain(StatusCode::GATEWAY_TIMEOUT).map(|b| ResponseBody::Full(Some(b)));
            return Ok(finish(
                route,
                r,
                CacheStatus::forward(Fwd::Miss),
                CacheOutcome::Miss,
                &mut exchange.cache,
            ));
        }
        OnRequest::ServeStale {
            stored,
            mut revalidation,
            stale_for,
        } => {
            revalidation.version = parts.version;
            refresh_in_background(route, &f, &key, &parts, *revalidation, stored.clone());
            let mut status = CacheStatus::hit(-(stale_for.as_secs() as i64));
            status.detail = Some("stale-while-revalidate");
            return Ok(served(
                route,
                &parts,
                &stored,
                now,
                status,
                CacheOutcome::Stale,
                &mut exchange.cache,
            ));
        }
        OnRequest::Revalidate {
            stored,
            mut revalidation,
            fwd,
        } => {
            revalidation.version = parts.version;
            let fetch = Fetch {
                key,
                client: parts,
                upstream: *revalidation,
                stored: Some(stored),
                fwd,
                flight: None,
                idle: f.timeout,
            };
            return fetch.run(route, &f, Some(body), exchange).await;
        }
        OnRequest::Forward {
            fwd,
            store: false,
            head_of,
        } => {
            // Forwarded as it is: a HEAD response has no body to store, but it may
            // update the stored GET response it could have been answered with.
            let client = head_of.as_ref().map(|_| {
                let (mut head, ()) = Request::new(()).into_parts();
                head.method = parts.method.clone();
                head.uri = parts.uri.clone();
                head.headers = parts.headers.clone();
                head
            });
            let resp = send_as(
                &f,
                CacheStatus::forward(fwd),
                Request::from_parts(parts, Some(body)),
                exchange,
            )
            .await?;
            if let (Some(stored), Some(client)) = (head_of, client) {
                match decide::on_head_response(&stored, resp.status(), resp.headers()) {
                    OnHead::Freshen => {
                        // The client gets the freshened stored head: the fields the
                        // HEAD response updated, and those it did not repeat.
                        let now = SystemTime::now();
                        let fresh =
                            Arc::new(stored.freshened(resp.headers(), &client.headers, now));
                        route.cache.insert_arc(key, fresh.clone());
                        let mut status = CacheStatus::forward(fwd);
                        status.fwd_status = Some(resp.status().as_u16());
                        status.stored = true;
                        status.ttl = Some(ttl_secs(&fresh, now));
                        return Ok(served(
                            route,
                            &client,
                            &fresh,
                            now,
                            status,
                            CacheOutcome::Revalidated,
                            &mut exchange.cache,
                        ));
                    }
                    OnHead::Invalidate => route.cache.invalidate(&key),
                    OnHead::Nothing => {}
                }
            }
            return Ok(finish(
                route,
                resp,
                CacheStatus::forward(fwd),
                CacheOutcome::Miss,
                &mut exchange.cache,
            ));
        }
        OnRequest::Forward {
            fwd, store: true, ..
        } => fwd,
    };
    let flight = match route.cache.join(&key) {
        Join::Lead(flight) => Some(flight),
        Join::Wait(rx) => {
            // Released as soon as the leader's response head is in.
            if let Some(fill) = cache::wait(rx, f.timeout).await {
                if decide::streams_from(&parts, &fill) {
                    return Ok(from_fill(route, fill, &mut exchange.cache));
                }
                // A conditional or range request is answered from the stored copy,
                // once the fill (at the origin's pace) has made it.
                fill.wait_done(f.timeout).await;
            }
            let now = SystemTime::now();
            if let Lookup::Fresh(stored) = route.cache.lookup(&key, &parts, now) {
                return Ok(hit(
                    route,
                    &parts,
                    &stored,
                    now,
                    Some("collapsed"),
                    exchange,
                ));
            }
            None
        }
    };
    let fetch = Fetch {
        key,
        upstream: copy_head(&parts),
        client: parts,
        stored: None,
        fwd,
        flight,
        idle: f.timeout,
    };
    fetch.run(route, &f, Some(body), exchange).await
}

/// Methods the cache does not answer: forwarded untouched. A non-error answer to an
/// unsafe one invalidates the URI (RFC 9111 4.4).
async fn bypass(
    req: Request<Inbound>,
    route: &CacheRoute,
    f: &Forwarding<'_>,
    https: bool,
    exchange: &mut Exchange,
) -> Result<Response<ResponseBody>, ProxyError> {
    let safe = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    let target = match (safe, f.host) {
        (false, Some(h)) => Some((h.authority(), req.uri().clone())),
        _ => None,
    };
    let resp = send_as(
        f,
        CacheStatus::forward(Fwd::Method),
        req.map(Some),
        exchange,
    )
    .await?;
    if let Some((host, uri)) = target {
        let status = resp.status();
        if status.is_success() || status.is_redirection() {
            route.cache.invalidate(&route.key(https, host, &uri));
            for name in [header::LOCATION, header::CONTENT_LOCATION] {
                let Some(other) = resp.headers().get(&name).and_then(|v| v.to_str().ok()) else {
                    continue;
                };
                if let Some(uri) = same_origin(other, host) {
                    route.cache.invalidate(&route.key(https, host, &uri));
                }
            }
        }
    }
    Ok(finish(
        route,
        resp,
        CacheStatus::forward(Fwd::Method),
        CacheOutcome::Bypass,
        &mut exchange.cache,
    ))
}

/// A `Location`-like reference as a path on `host`, if it points there.
fn same_origin(reference: &str, host: &str) -> Option<Uri> {
    let uri: Uri = reference.parse().ok()?;
    match uri.authority() {
        None if reference.starts_with('/') && !reference.starts_with("//") => Some(uri),
        Some(a) if a.as_str().eq_ignore_ascii_case(host) => {
            Some(Uri::from(uri.path_and_query()?.clone()))
        }
        _ => None,
    }
}

/// The response being stored, as it streams, to a request that collapsed onto it.
fn from_fill(
    route: &CacheRoute,
    fill: Arc<Fill>,
    outcome: &mut Option<CacheOutcome>,
) -> Response<ResponseBody> {
    let now = SystemTime::now();
    let mut r = Response::new(ResponseBody::Fill(fill.reader()));
    *r.status_mut() = fill.status;
    *r.headers_mut() = fill.headers.clone();
    r.headers_mut().insert(
        header::AGE,
        HeaderValue::from(fill.policy.age(now).as_secs()),
    );
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(fill.len));
    let ttl = fill.policy.time_to_live(now).min(cache::MAX_TTL).as_secs() as i64;
    let mut status = CacheStatus::hit(ttl);
    status.detail = Some("collapsed");
    finish(route, r, status, CacheOutcome::Hit, outcome)
}

/// A copy of a request head (`Parts` is not `Clone`).
fn copy_head(parts: &Parts) -> Parts {
    let mut r = Request::new(());
    *r.method_mut() = parts.method.clone();
    *r.uri_mut() = parts.uri.clone();
    *r.version_mut() = parts.version;
    *r.headers_mut() = parts.headers.clone();
    r.into_parts().0
}

fn ttl_secs(stored: &Stored, now: SystemTime) -> i64 {
    stored.ttl(now).as_secs() as i64
}

/// A stored response sent to the client; a 304 when the client's own conditional
/// matches it (RFC 9111 4.3.2). HEAD gets the head only.
/// A fresh stored response served as a hit (`detail`: the `Cache-Status` detail).
fn hit(
    route: &CacheRoute,
    client: &Parts,
    stored: &Stored,
    now: SystemTime,
    detail: Option<&'static str>,
    exchange: &mut Exchange,
) -> Response<ResponseBody> {
    let mut status = CacheStatus::hit(ttl_secs(stored, now));
    status.detail = detail;
    served(
        route,
        client,
        stored,
        now,
        status,
        CacheOutcome::Hit,
        &mut exchange.cache,
    )
}

fn served(
    route: &CacheRoute,
    client: &Parts,
    stored: &Stored,
    now: SystemTime,
    status: CacheStatus,
    result: CacheOutcome,
    outcome: &mut Option<CacheOutcome>,
) -> Response<ResponseBody> {
    let head = stored.head(now);
    let body = if client.method == Method::HEAD {
        ResponseBody::empty()
    } else {
        ResponseBody::Full(Some(stored.body.clone()))
    };
    let mut r = Response::from_parts(head, body);
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(stored.body.len()));
    // A stored part answers only the ranges within it (the lookup saw to that).
    let partial = stored.part.is_some();
    let total = stored.total_len();
    let offset = stored.part.map_or(0, |p| p.first);
    if r.status() == StatusCode::OK && policy::not_modified(&client.headers, r.headers()) {
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        *r.body_mut() = ResponseBody::empty();
        r.headers_mut().remove(header::CONTENT_LENGTH);
    } else if r.status() == StatusCode::OK || partial {
        match range::select(&client.headers, r.headers(), total) {
            range::Selected::Whole => {}
            range::Selected::Part(from, to) => {
                *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                let h = r.headers_mut();
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(to - from + 1));
                if let Ok(v) = HeaderValue::try_from(format!("bytes {from}-{to}/{total}")) {
                    h.insert(header::CONTENT_RANGE, v);
                }
                if client.method != Method::HEAD {
                    let (from, to) = ((from - offset) as usize, (to - offset) as usize);
                    let part = stored.body.slice(from..=to);
                    *r.body_mut() = ResponseBody::Full(Some(part));
                }
            }
            range::Selected::Unsatisfiable => {
                *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                let h = r.headers_mut();
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
                if let Ok(v) = HeaderValue::try_from(format!("bytes */{total}")) {
                    h.insert(header::CONTENT_RANGE, v);
                }
                *r.body_mut() = ResponseBody::empty();
            }
        }
    }
    finish(route, r, status, result, outcome)
}

/// Adds `Cache-Status` and counts the outcome.
fn finish(
    route: &CacheRoute,
    mut r: Response<ResponseBody>,
    status: CacheStatus,
    result: CacheOutcome,
    outcome: &mut Option<CacheOutcome>,
) -> Response<ResponseBody> {
    r.headers_mut().insert(CACHE_STATUS, status.to_header());
    count(result, &route.counters);
    *outcome = Some(result);
    r
}
