//! One trip to the origin for a GET, a miss or the revalidation of a stored response:
//! the answer decided against what is stored, the response stored at the origin's
//! pace while it goes to the client, and the background refresh of
//! `stale-while-revalidate`.

use super::copy_head;
use super::finish;
use super::send_as;
use super::served;
use super::ttl_secs;
use crate::cache::decide::{self, OnFailure, OnNotModified, Storing};
use crate::cache::fill::Fill;
use crate::cache::policy;
use crate::cache::status::{CacheOutcome, CacheStatus, Fwd};
use crate::cache::tee::{Pending, Tee};
use crate::cache::{Flight, Join, Key, Stored};
use crate::l7::body::ResponseBody;
use crate::l7::cache_route::CacheRoute;
use crate::l7::error::{self, ProxyError};
use crate::l7::exchange::Exchange;
use crate::l7::forward::{self, Forwarding};
use crate::l7::request_body::Inbound;
use http::request::Parts;
use http::{Request, Response, StatusCode};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracing::debug;

/// One trip to the origin for a GET: a miss, or the revalidation of a stored response.
pub(super) struct Fetch {
    pub(super) key: Key,
    /// The client's request as it arrived.
    pub(super) client: Parts,
    /// What goes upstream (with the stored validators when revalidating).
    pub(super) upstream: Parts,
    pub(super) stored: Option<Arc<Stored>>,
    pub(super) fwd: Fwd,
    pub(super) flight: Option<Flight>,
    /// The longest gap allowed between two pieces of a response being stored.
    pub(super) idle: Duration,
}

impl Fetch {
    pub(super) async fn run(
        self,
        route: &CacheRoute,
        f: &Forwarding<'_>,
        body: Option<Inbound>,
        exchange: &mut Exchange,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let sent = send_as(
            f,
            CacheStatus::forward(self.fwd),
            Request::from_parts(copy_head(&self.upstream), body),
            exchange,
        )
        .await;
        let now = SystemTime::now();
        let failed = match &sent {
            Err(e) => Some((e.status().as_u16(), false)),
            Ok(r) if decide::is_origin_error(r.status()) => Some((r.status().as_u16(), true)),
            Ok(_) => None,
        };
        if let (Some((code, answered)), Some(stored)) = (failed, &self.stored) {
            match decide::on_failure(stored, answered, &self.client.headers, now) {
                OnFailure::ServeStale(stale_for) => {
                    debug!(
                        code,
                        "origin failed: serving the stored response (stale-if-error)"
                    );
                    let mut status = CacheStatus::forward(self.fwd);
                    status.fwd_status = Some(code);
                    status.ttl = Some(-(stale_for.as_secs() as i64));
                    status.detail = Some("stale-if-error");
                    return Ok(served(
                        route,
                        &self.client,
                        stored,
                        now,
                        status,
                        CacheOutcome::Stale,
                        &mut exchange.cache,
                    ));
                }
                OnFailure::GatewayTimeout => {
                    debug!(code, "revalidation failed");
                    let r = error::plain(StatusCode::GATEWAY_TIMEOUT)
                        .map(|b| ResponseBody::Full(Some(b)));
                    return Ok(finish(
                        route,
                        r,
                        CacheStatus::forward(self.fwd),
                        CacheOutcome::Miss,
                        &mut exchange.cache,
                    ));
                }
                OnFailure::Relay => {}
            }
        }
        let resp = sent?;
        if resp.status() == StatusCode::NOT_MODIFIED
            && decide::on_not_modified(self.stored.as_deref(), &self.client.headers, resp.headers())
                == OnNotModified::Refetch
        {
            drop(resp);
            route.cache.invalidate(&self.key);
            let again = send_as(
                f,
                CacheStatus::forward(self.fwd),
                Request::from_parts(copy_head(&self.client), None),
                exchange,
            )
            .await?;
            let refetch = Fetch {
                stored: None,
                ..self
            };
            return Ok(refetch.answer(route, again, SystemTime::now(), &mut exchange.cache));
        }
        Ok(self.answer(route, resp, now, &mut exchange.cache))
    }

    /// What the client gets for the origin's answer, and what is stored of it.
    fn answer(
        self,
        route: &CacheRoute,
        resp: Response<ResponseBody>,
        now: SystemTime,
        outcome: &mut Option<CacheOutcome>,
    ) -> Response<ResponseBody> {
        let mut status = CacheStatus::forward(self.fwd);
        if resp.status() == StatusCode::NOT_MODIFIED {
            if let Some(stored) = &self.stored {
                if decide::on_not_modified(Some(stored), &self.client.headers, resp.headers())
                    == OnNotModified::Freshen
                {
                    let fresh =
                        Arc::new(stored.freshened(resp.headers(), &self.client.headers, now));
                    route.cache.insert_arc(self.key.clone(), fresh.clone());
                    status.fwd_status = Some(304);
                    status.stored = true;
                    status.ttl = Some(ttl_secs(&fresh, now));
                    return served(
                        route,
                        &self.client,
                        &fresh,
                        now,
                        status,
                        CacheOutcome::Revalidated,
                        outcome,
                    );
                }
            }
            // The client's own conditional: its 304 goes back as it is.
            return finish(route, resp, status, CacheOutcome::Miss, outcome);
        }
        let (parts, body) = resp.into_parts();
        let policy = policy::new_policy(
            &self.client.uri,
            &self.client.headers,
            parts.status,
            &parts.headers,
            now,
        );
        let cache = &route.cache;
        let storing = decide::on_response(
            parts.status,
            &parts.headers,
            &policy,
            cache.settings.max_object_size,
            self.stored.is_some(),
            now,
        );
        if let Storing::Refused { reason, invalidate } = storing {
            debug!(reason, "response not stored");
            if invalidate {
                cache.invalidate(&self.key);
            }
            return finish(
                route,
                Response::from_parts(parts, body),
                status,
                CacheOutcome::Miss,
                outcome,
            );
        }
        let mut pending = Pending {
            cache: cache.clone(),
            key: self.key,
            uri: self.client.uri,
            request: self.client.headers,
            status: parts.status,
            headers: parts.headers.clone(),
            policy,
            flight: None,
        };
        let Storing::Known(len) = storing else {
            // No declared length: copied as it streams to this client, within the
            // budget chunk by chunk. The others waiting on this key do not wait for
            // this client's pace: they go their own way.
            drop(self.flight);
            let reservation = cache.budget.reserve(0);
            status.stored = true;
            let tee = Tee::new(body, cache.settings.max_object_size, pending, reservation);
            let r = Response::from_parts(parts, ResponseBody::Tee(Box::new(tee)));
            return finish(route, r, status, CacheOutcome::Miss, outcome);
        };
        // A declared length within the budget: filled at the origin's pace by a task of
        // its own, read by this client and by those that collapsed onto it.
        let Some(reservation) = cache.budget.reserve(len) else {
            drop(self.flight);
            debug!(reason = "max_inflight", "response not stored");
            let r = Response::from_parts(parts, body);
            return finish(route, r, status, CacheOutcome::Miss, outcome);
        };
        status.stored = true;
        let fill = Fill::new(
            parts.status,
            parts.headers.clone(),
            pending.policy.clone(),
            &pending.request,
            len,
            reservation,
        );
        if let Some(flight) = &self.flight {
            flight.publish(fill.clone());
        }
        pending.flight = self.flight;
        tokio::spawn(fill_from(fill.clone(), body, pending, self.idle));
        let r = Response::from_parts(parts, ResponseBody::Fill(fill.reader()));
        finish(route, r, status, CacheOutcome::Miss, outcome)
    }
}

/// Reads a response into its fill at the origin's pace, then stores it whole. A gap
/// of more than `idle` between two pieces, a broken or lying body: not stored, and the
/// fill's readers see it broken off.
pub(super) async fn fill_from(
    fill: Arc<Fill>,
    mut body: ResponseBody,
    pending: Pending,
    idle: Duration,
) {
    use http_body_util::BodyExt;
    let complete = loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if !fill.push(data) {
                        debug!("response longer than its Content-Length: not stored");
                        break false;
                    }
                }
            }
            Ok(None) => break true,
            Ok(Some(Err(e))) => {
                debug!(error = %e, "response broke off: not stored");
                break false;
            }
            Err(_) => {
                debug!("response stalled: not stored");
                break false;
            }
        }
    };
    // Stored before the fill says it ended: whoever waits on the end finds it.
    match fill.body().filter(|_| complete) {
        Some(whole) => pending.store(whole),
        None => debug!("response shorter than its Content-Length: not stored"),
    }
    fill.finish(complete);
}

/// `stale-while-revalidate`: the stale response went to the client; this refreshes
/// it. One refresh per key at a time.
pub(super) fn refresh_in_background(
    route: &CacheRoute,
    f: &Forwarding<'_>,
    key: &Key,
    client: &Parts,
    revalidation: Parts,
    stored: Arc<Stored>,
) {
    let Join::Lead(flight) = route.cache.join(key) else {
        return;
    };
    let route = route.clone();
    let target = f.target.clone();
    let timeout = f.timeout;
    // Nothing of the client's connection is held while the refresh runs.
    let ctx = f.ctx.detached();
    let settings = f.settings.clone();
    let request_id = f.request_id.clone();
    let host = f.host.cloned();
    let (who, trace) = (f.client.clone(), f.trace);
    let request_headers = f.request_headers.cloned();
    let fetch = Fetch {
        key: key.clone(),
        client: copy_head(client),
        upstream: revalidation,
        stored: Some(stored),
        fwd: Fwd::Stale,
        flight: Some(flight),
        idle: f.timeout,
    };
    // Tracked with the connections: a shutdown waits for it (up to its drain time, at
    // whose end it is cut) rather than dropping a refresh half-stored.
    let (tracker, cut) = (ctx.tracker.clone(), ctx.cut.clone());
    tracker.spawn(async move {
        let f = Forwarding {
            client: who,
            trace,
            target: &target,
            timeout,
            ctx: &ctx,
            settings: &settings,
            request_id: &request_id,
            host: host.as_ref(),
            upgrades: &[],
            request_headers: request_headers.as_ref(),
        };
        let mut exchange = Exchange::default();
        let mut outcome = None;
        let result = async {
            let resp = forward::forward(
                Request::from_parts(copy_head(&fetch.upstream), None),
                &f,
                &mut exchange,
            )
            .await?;
            let r = fetch.answer(&route, resp, SystemTime::now(), &mut outcome);
            match r.into_body() {
                // Filled by a task of its own, at the origin's pace.
                ResponseBody::Fill(_) => Ok(()),
                // Read through piece by piece, which stores it; nothing kept here.
                mut body @ ResponseBody::Tee(_) => {
                    use http_body_util::BodyExt;
                    loop {
                        match tokio::time::timeout(timeout, body.frame()).await {
                            Ok(None) => return Ok(()),
                            Ok(Some(Ok(_))) => {}
                            Ok(Some(Err(e))) => return Err(ProxyError::Backend(e.to_string())),
                            Err(_) => return Err(ProxyError::Timeout(timeout)),
                        }
                    }
                }
                // Not stored: nothing to read.
                _ => Ok(()),
            }
        };
        match crate::side::first(result, cut.cancelled()).await {
            crate::side::First::Main(Err(e)) => {
                debug!(error = %e, "background revalidation failed")
            }
            crate::side::First::Main(Ok(())) => {}
            crate::side::First::Side(()) => debug!("background revalidation cut at shutdown"),
        }
    });
}
