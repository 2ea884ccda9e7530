//! One attempt on an HTTP/2 backend, and what its errors say.

use super::body_for_attempt;
use super::connect_failed;
use super::connect_how;
use super::count_opened;
use super::deadline;
use super::head_arrived;
use super::request_failed;
use super::Forwarding;
use super::Late;
use super::Sending;
use crate::l7::error::ProxyError;
use crate::l7::exchange::Exchange;
use crate::l7::h2;
use crate::l7::pool::BackendPool;
use crate::l7::request_body::RequestBody;
use crate::upstream::Lease;
use std::time::Duration;
use tracing::debug;

/// How one HTTP/2 attempt ended.
pub(super) enum H2Try {
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
pub(super) async fn attempt_h2(
    sending: &Sending<'_>,
    body: &mut Option<RequestBody>,
    (pool, keepalive, learnt): (&BackendPool, Duration, bool),
    (lease, i): (&mut Lease, usize),
    f: &Forwarding<'_>,
    exchange: &mut Exchange,
) -> H2Try {
    let timings = &f.target.timings[i];
    let how = connect_how(f, lease, keepalive);
    let started = tokio::time::Instant::now();
    let (in_flight, fresh) = match pool
        .h2
        .stream(|| pool.open_stream(how.timeout, how.tls), &how)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            connect_failed(f, lease, &e, None);
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
    let Some(request_body) = body_for_attempt(sending, body) else {
        return H2Try::Failed {
            error: ProxyError::NoBackend,
            again: false,
        };
    };
    let scheme = if f.target.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let req = match h2::request(
        sending.head,
        &request_body,
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
    let exchanging = match h2::send(&in_flight, &req, request_body) {
        Ok(x) => x,
        // The connection takes no new stream: it is gone or going (GOAWAY), or its
        // stream identifiers ran out.
        Err((e, request_body)) => {
            debug!(error = %e, "HTTP/2 connection took no new stream");
            pool.h2.retire(&in_flight);
            if !sending.retriable {
                *body = Some(request_body);
            }
            return H2Try::Unsent { fresh };
        }
    };
    let sent = tokio::select! {
        r = exchanging => Ok(r),
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
        Ok(Ok(arrived)) => {
            head_arrived(lease, timings, sent_at, exchange);
            H2Try::Answered(h2::Answer::new(arrived, in_flight))
        }
        Ok(Err(h2::Failed::Body(e))) => H2Try::Failed {
            error: request_body_error(e.as_ref())
                .unwrap_or_else(|| ProxyError::ClientBody(e.to_string())),
            again: false,
        },
        // RFC 9113 8.7: a stream the backend refused (GOAWAY naming a lower stream,
        // or REFUSED_STREAM) was not acted on. A backend that rotates its connections
        // (nginx's `keepalive_requests`) refuses some at each rotation: a request
        // without a body goes again on another connection, not counted against the
        // backend.
        Ok(Err(h2::Failed::Backend(e))) if sending.retriable && e.unprocessed() => {
            debug!(error = %e, "HTTP/2 stream refused by the backend: sent again");
            H2Try::Unsent { fresh }
        }
        Ok(Err(h2::Failed::Backend(e))) => {
            request_failed(f, lease, &e);
            H2Try::Failed {
                error: ProxyError::Backend(e.to_string()),
                // A stream the backend refused before acting on it may go elsewhere.
                again: sending.retriable,
            }
        }
    }
}

/// fulcrum's own request body errors, found in an HTTP/2 send's error chain.
pub(super) fn request_body_error(e: &(dyn std::error::Error + 'static)) -> Option<ProxyError> {
    let mut source = Some(e);
    while let Some(s) = source {
        if s.is::<crate::l7::request_body::TooLarge>() {
            return Some(ProxyError::BodyTooLarge);
        }
        if s.is::<crate::l7::request_body::TooLate>() {
            return Some(ProxyError::BodyTimeout);
        }
        source = s.source();
    }
    None
}
