//! The request head as the backend gets it: hop-by-hop fields dropped (RFC 9110
//! 7.6.1), `Host`, `X-Forwarded-*` and `X-Request-Id` set, the header rules applied.

use super::Forwarding;
use crate::l7::h1::{self, Head, KEEP_ALIVE, PROXY_CONNECTION};
use crate::l7::host::RequestHost;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Uri, Version};

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Hop-by-hop headers (RFC 9110 7.6.1), never forwarded.
pub(crate) fn hop_by_hop() -> [&'static HeaderName; 6] {
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
pub(super) fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
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
pub(super) fn take_own_fields(
    headers: &mut HeaderMap,
    ip: &HeaderValue,
) -> (HeaderValue, bool, bool) {
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

pub(super) fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The client's address (`ip`, from [`crate::l7::client::ip_value`]) appended to any `X-Forwarded-For`
/// it sent.
pub(super) fn forwarded_for(headers: &HeaderMap, ip: &HeaderValue) -> HeaderValue {
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

/// The header rules: the request head as it goes to the backend. Hop-by-hop fields
/// and those fulcrum sets itself are dropped from the client's; `Host`,
/// `X-Forwarded-*` and `X-Request-Id` are set; HTTP/2 cookies are joined; an allowed
/// upgrade keeps its `Connection` and `Upgrade`.
pub(super) fn upstream_head(
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
    if matches!(parts.version, Version::HTTP_2 | Version::HTTP_3)
        && headers.get_all(header::COOKIE).iter().count() > 1
    {
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
        let vars = crate::l7::headers::Vars {
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
