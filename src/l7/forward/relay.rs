//! The response stage: the backend's answer on its way to the client, or the
//! upgrade tunnel after a 101.

use super::tunnel;
use super::Answer;
use super::Answered;
use super::Choice;
use super::ClientUpgrade;
use super::Forwarding;
use crate::l7::body::{ResponseBody, Upstream2Body, UpstreamBody};
use crate::l7::error::ProxyError;
use crate::l7::exchange::Exchange;
use crate::l7::h1::{self};
use crate::l7::h2;
use http::header::{self};
use http::{Response, StatusCode, Version};

/// The response stage: a 101 becomes the upgrade tunnel; any other answer goes to
/// the client (without its hop-by-hop fields, left out by the parser), its body
/// streamed from the connection,
/// which returns to the pool when the body ends. The sticky cookie is set when the
/// request named another backend or none.
pub(super) fn relay(
    answered: Answered,
    (client_upgrade, from_connect): (Option<ClientUpgrade>, bool),
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
