//! The cache's decisions, as functions of what is stored, the request's headers and
//! the time: fresh or stale, revalidate or serve while revalidating, `only-if-cached`,
//! `stale-if-error`, what a 304 means, whether a response is stored. Nothing here
//! does I/O or keeps state; the HTTP engine carries the decisions out.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::request::Parts;
use http::{header, HeaderMap, Method, StatusCode};
use http_cache_semantics::CachePolicy;

use super::fill::Fill;
use super::policy;
use super::status::Fwd;
use super::{Lookup, Stored};

/// What a GET or HEAD of a cached route gets, given what the lookup found.
pub enum OnRequest {
    /// A fresh stored response answers.
    Hit(Arc<Stored>),
    /// Stale, within its `stale-while-revalidate`: it answers, and is refreshed in
    /// the background.
    ServeStale {
        stored: Arc<Stored>,
        revalidation: Box<Parts>,
        stale_for: Duration,
    },
    /// The stored response must be revalidated first: this request (with its
    /// validators) goes to the origin.
    Revalidate {
        stored: Arc<Stored>,
        revalidation: Box<Parts>,
        fwd: Fwd,
    },
    /// `only-if-cached` and nothing usable stored: 504 (RFC 9111 5.2.1.7).
    GatewayTimeout,
    /// Sent to the origin: a HEAD as it is (a HEAD response has nothing to store, but
    /// may update `head_of`, the stale GET response it could have been answered with:
    /// see [`on_head_response`]), a GET as a miss that stores what comes back.
    Forward {
        fwd: Fwd,
        store: bool,
        head_of: Option<Arc<Stored>>,
    },
}

/// The decision for a GET or HEAD request.
pub fn on_request(
    found: Lookup,
    method: &Method,
    request: &HeaderMap,
    now: SystemTime,
) -> OnRequest {
    let (stale, fwd) = match found {
        Lookup::Fresh(stored) => return OnRequest::Hit(stored),
        Lookup::Stale(stored, revalidation) => (Some((stored, revalidation)), Fwd::Stale),
        Lookup::Miss { vary: true } => (None, Fwd::VaryMiss),
        Lookup::Miss { vary: false } => (None, Fwd::Miss),
    };
    if policy::only_if_cached(request) {
        return OnRequest::GatewayTimeout;
    }
    if method == Method::HEAD {
        return OnRequest::Forward {
            fwd,
            store: false,
            head_of: stale.map(|(stored, _)| stored),
        };
    }
    let Some((stored, revalidation)) = stale else {
        return OnRequest::Forward {
            fwd,
            store: true,
            head_of: None,
        };
    };
    // Still fresh: the client's own directives sent it to the origin.
    if !stored.policy.is_stale(now) {
        return OnRequest::Revalidate {
            stored,
            revalidation,
            fwd: Fwd::Request,
        };
    }
    let stale_for = stored.stale_for(now);
    if stored.stale.serve_while_revalidating(stale_for, request) {
        OnRequest::ServeStale {
            stored,
            revalidation,
            stale_for,
        }
    } else {
        OnRequest::Revalidate {
            stored,
            revalidation,
            fwd: Fwd::Stale,
        }
    }
}

/// What a response to a HEAD does to the stored GET response the HEAD could have been
/// answered with (RFC 9111 4.3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnHead {
    /// It describes the same content: its fields update the stored ones, as a 304's
    /// would (and so its freshness).
    Freshen,
    /// It describes other content (another status, validator or length): the stored
    /// response is not to be used without the origin.
    Invalidate,
    /// Not a 200: nothing follows from it.
    Nothing,
}

pub fn on_head_response(stored: &Stored, status: StatusCode, response: &HeaderMap) -> OnHead {
    if status != StatusCode::OK {
        return OnHead::Nothing;
    }
    let same = |name: header::HeaderName| {
        response
            .get(&name)
            .is_none_or(|v| stored.headers.get(&name) == Some(v))
    };
    let same_length = response.get(header::CONTENT_LENGTH).is_none_or(|v| {
        v.to_str().ok().and_then(|n| n.trim().parse::<u64>().ok()) == Some(stored.body.len() as u64)
    });
    if stored.status == status && same(header::ETAG) && same(header::LAST_MODIFIED) && same_length {
        OnHead::Freshen
    } else {
        OnHead::Invalidate
    }
}

/// Whether the request is conditional: then a 304 is an answer it can use.
pub fn conditional(request: &HeaderMap) -> bool {
    request.contains_key(header::IF_NONE_MATCH) || request.contains_key(header::IF_MODIFIED_SINCE)
}

/// 500, 502, 503 and 504: the origin failing, as `stale-if-error` means it.
pub fn is_origin_error(s: StatusCode) -> bool {
    matches!(s.as_u16(), 500 | 502 | 503 | 504)
}

/// What the origin failing leaves the client with when a response is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// `stale-if-error` allows the stored response, stale by this much.
    ServeStale(Duration),
    /// No answer, and the stored response may never be served stale
    /// (`must-revalidate` and kin): 504 (RFC 9111 4.2.4, 5.2.2.2).
    GatewayTimeout,
    /// The failure goes to the client as it is.
    Relay,
}

/// The decision when the origin gave no answer (`answered` false) or answered with
/// an origin error (`answered` true, see [`is_origin_error`]).
pub fn on_failure(
    stored: &Stored,
    answered: bool,
    request: &HeaderMap,
    now: SystemTime,
) -> OnFailure {
    let stale_for = stored.stale_for(now);
    if stored.stale.serve_on_error(stale_for, request) {
        OnFailure::ServeStale(stale_for)
    } else if !answered && stored.stale.never {
        OnFailure::GatewayTimeout
    } else {
        OnFailure::Relay
    }
}

/// What a 304 from the origin means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnNotModified {
    /// It validates the stored response, which is freshened with its fields and sent.
    Freshen,
    /// It is for another response than the one stored, and the client asked for no
    /// 304: the stored response is dropped and the request sent again without
    /// validators (RFC 9111 4.3.3).
    Refetch,
    /// The client's own conditional: its 304 goes back as it is.
    Relay,
}

/// The decision for a 304 to a request whose client sent `request`, with `stored`
/// the response being revalidated, if any.
pub fn on_not_modified(
    stored: Option<&Stored>,
    request: &HeaderMap,
    response: &HeaderMap,
) -> OnNotModified {
    match stored {
        Some(s) if policy::freshens(&s.headers, response) => OnNotModified::Freshen,
        Some(_) if !conditional(request) => OnNotModified::Refetch,
        _ => OnNotModified::Relay,
    }
}

/// Whether and how the origin's answer to a GET is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storing {
    /// Not stored, for `reason`; `invalidate` when what was stored for the request is
    /// no longer what the origin says.
    Refused {
        reason: &'static str,
        invalidate: bool,
    },
    /// Stored as it arrives, `Content-Length` bytes long (within the object limit).
    Known(u64),
    /// No declared length: copied as it streams, within the object limit.
    Streamed,
}

/// The decision for a response (not a 304) to a GET; `revalidating` when a stored
/// response was being revalidated.
pub fn on_response(
    status: StatusCode,
    response: &HeaderMap,
    policy: &CachePolicy,
    max_object_size: u64,
    revalidating: bool,
    now: SystemTime,
) -> Storing {
    let declared = response
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(reason) = policy::refuse(status, response, policy, now) {
        return Storing::Refused {
            reason,
            invalidate: revalidating,
        };
    }
    match declared {
        Some(n) if n > max_object_size => Storing::Refused {
            reason: "too large",
            invalidate: false,
        },
        Some(n) => Storing::Known(n),
        None => Storing::Streamed,
    }
}

/// Whether a request that collapsed onto a fill can be given it as it streams: a
/// plain GET of the same variant (conditionals and ranges wait for the stored copy).
pub fn streams_from(client: &Parts, fill: &Fill) -> bool {
    client.method == Method::GET
        && fill.status != StatusCode::PARTIAL_CONTENT
        && !conditional(&client.headers)
        && !client.headers.contains_key(header::RANGE)
        && fill.same_variant(&client.headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{Cache, Key};
    use crate::config::CacheSettings;
    use bytes::Bytes;
    use http::{HeaderName, HeaderValue};

    fn headers(list: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in list {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn request(method: Method, list: &[(&str, &str)]) -> Parts {
        let mut r = http::Request::new(());
        *r.method_mut() = method;
        *r.uri_mut() = "/a".parse().unwrap();
        *r.headers_mut() = headers(list);
        r.into_parts().0
    }

    fn stored_at(response: &[(&str, &str)], at: SystemTime) -> Stored {
        let req = request(Method::GET, &[]);
        let h = headers(response);
        let policy = policy::new_policy(&req.uri, &req.headers, StatusCode::OK, &h, at);
        Stored::new(
            policy,
            req.uri.clone(),
            &req.headers,
            StatusCode::OK,
            h,
            Bytes::from_static(b"body"),
            at,
        )
    }

    /// Stored at `t0`, looked up `after` later by a request with `client` fields.
    fn decide(
        response: &[(&str, &str)],
        method: Method,
        client: &[(&str, &str)],
        after: u64,
    ) -> OnRequest {
        let t0 = SystemTime::now();
        let cache = Cache::new(CacheSettings::new(1 << 20, 1 << 20));
        let key = Key::new(&Arc::from("web#0"), false, "h", &"/a".parse().unwrap());
        if !response.is_empty() {
            cache.insert(key.clone(), stored_at(response, t0));
        }
        let now = t0 + Duration::from_secs(after);
        let req = request(method.clone(), client);
        on_request(cache.lookup(&key, &req, now), &method, &req.headers, now)
    }

    const FRESH_60: [(&str, &str); 2] = [("cache-control", "max-age=60"), ("etag", "\"v1\"")];

    #[test]
    fn a_fresh_response_is_a_hit_for_get_and_head() {
        assert!(matches!(
            decide(&FRESH_60, Method::GET, &[], 10),
            OnRequest::Hit(_)
        ));
        assert!(matches!(
            decide(&FRESH_60, Method::HEAD, &[], 10),
            OnRequest::Hit(_)
        ));
    }

    #[test]
    fn nothing_stored_is_a_miss_that_stores_for_get_only() {
        assert!(matches!(
            decide(&[], Method::GET, &[], 0),
            OnRequest::Forward {
                fwd: Fwd::Miss,
                store: true,
                head_of: None,
            }
        ));
        assert!(matches!(
            decide(&[], Method::HEAD, &[], 0),
            OnRequest::Forward {
                fwd: Fwd::Miss,
                store: false,
                head_of: None,
            }
        ));
    }

    #[test]
    fn another_variant_is_a_vary_miss() {
        let vary = [("cache-control", "max-age=60"), ("vary", "accept-language")];
        let t0 = SystemTime::now();
        let cache = Cache::new(CacheSettings::new(1 << 20, 1 << 20));
        let key = Key::new(&Arc::from("web#0"), false, "h", &"/a".parse().unwrap());
        let en = request(Method::GET, &[("accept-language", "en")]);
        let h = headers(&vary);
        let policy = policy::new_policy(&en.uri, &en.headers, StatusCode::OK, &h, t0);
        let s = Stored::new(
            policy,
            en.uri.clone(),
            &en.headers,
            StatusCode::OK,
            h,
            Bytes::new(),
            t0,
        );
        cache.insert(key.clone(), s);
        let fr = request(Method::GET, &[("accept-language", "fr")]);
        assert!(matches!(
            on_request(cache.lookup(&key, &fr, t0), &Method::GET, &fr.headers, t0),
            OnRequest::Forward {
                fwd: Fwd::VaryMiss,
                store: true,
                ..
            }
        ));
    }

    #[test]
    fn a_head_goes_through_past_a_stale_get_and_its_200_freshens_or_drops_it() {
        match decide(&FRESH_60, Method::HEAD, &[], 120) {
            OnRequest::Forward {
                fwd: Fwd::Stale,
                store: false,
                head_of: Some(_),
            } => {}
            _ => panic!("a HEAD past a stale GET goes through, carrying it"),
        }
        let stored = stored_at(&FRESH_60, SystemTime::now());
        let head = |list: &[(&str, &str)]| headers(list);
        let same = head(&[("etag", "\"v1\""), ("content-length", "4"), ("x", "new")]);
        assert_eq!(
            on_head_response(&stored, StatusCode::OK, &same),
            OnHead::Freshen
        );
        assert_eq!(
            on_head_response(&stored, StatusCode::OK, &head(&[("x", "only")])),
            OnHead::Freshen,
            "no validator or length received: nothing contradicts the stored response"
        );
        for other in [
            head(&[("etag", "\"v2\"")]),
            head(&[("content-length", "5")]),
            head(&[("last-modified", "Tue, 01 Dec 2026 00:00:00 GMT")]),
        ] {
            assert_eq!(
                on_head_response(&stored, StatusCode::OK, &other),
                OnHead::Invalidate
            );
        }
        assert_eq!(
            on_head_response(&stored, StatusCode::NOT_FOUND, &same),
            OnHead::Nothing
        );
    }

    #[test]
    fn a_stale_response_is_revalidated_with_its_validator() {
        match decide(&FRESH_60, Method::GET, &[], 120) {
            OnRequest::Revalidate {
                revalidation, fwd, ..
            } => {
                assert_eq!(fwd, Fwd::Stale);
                assert_eq!(revalidation.headers[header::IF_NONE_MATCH], "\"v1\"");
            }
            _ => panic!("a stale response is revalidated"),
        }
    }

    #[test]
    fn a_client_asking_for_the_origin_revalidates_a_fresh_response() {
        assert!(matches!(
            decide(&FRESH_60, Method::GET, &[("cache-control", "no-cache")], 10),
            OnRequest::Revalidate {
                fwd: Fwd::Request,
                ..
            }
        ));
    }

    #[test]
    fn stale_while_revalidate_serves_within_its_window_only() {
        let swr = [
            ("cache-control", "max-age=60, stale-while-revalidate=30"),
            ("etag", "\"v1\""),
        ];
        match decide(&swr, Method::GET, &[], 80) {
            OnRequest::ServeStale { stale_for, .. } => assert_eq!(stale_for.as_secs(), 20),
            _ => panic!("within the window"),
        }
        assert!(matches!(
            decide(&swr, Method::GET, &[], 100),
            OnRequest::Revalidate {
                fwd: Fwd::Stale,
                ..
            }
        ));
        // must-revalidate outranks it; so does a client that wants no stale response.
        let must = [(
            "cache-control",
            "max-age=60, stale-while-revalidate=30, must-revalidate",
        )];
        assert!(matches!(
            decide(&must, Method::GET, &[], 80),
            OnRequest::Revalidate { .. }
        ));
        assert!(matches!(
            decide(&swr, Method::GET, &[("cache-control", "max-age=0")], 80),
            OnRequest::Revalidate { .. }
        ));
    }

    #[test]
    fn only_if_cached_without_a_fresh_response_is_504() {
        let oic = [("cache-control", "only-if-cached")];
        assert!(matches!(
            decide(&[], Method::GET, &oic, 0),
            OnRequest::GatewayTimeout
        ));
        assert!(matches!(
            decide(&FRESH_60, Method::GET, &oic, 120),
            OnRequest::GatewayTimeout
        ));
        assert!(matches!(
            decide(&FRESH_60, Method::GET, &oic, 10),
            OnRequest::Hit(_)
        ));
    }

    #[test]
    fn stale_if_error_serves_within_its_window_and_must_revalidate_is_504() {
        let t0 = SystemTime::now();
        let at = |s| t0 + Duration::from_secs(s);
        let sie = stored_at(&[("cache-control", "max-age=60, stale-if-error=30")], t0);
        let none = HeaderMap::new();
        assert_eq!(
            on_failure(&sie, false, &none, at(80)),
            OnFailure::ServeStale(Duration::from_secs(20))
        );
        assert_eq!(
            on_failure(&sie, true, &none, at(80)),
            OnFailure::ServeStale(Duration::from_secs(20))
        );
        assert_eq!(on_failure(&sie, false, &none, at(100)), OnFailure::Relay);
        // The request's own stale-if-error widens the window.
        let wider = headers(&[("cache-control", "stale-if-error=60")]);
        assert!(matches!(
            on_failure(&sie, false, &wider, at(100)),
            OnFailure::ServeStale(_)
        ));
        let must = stored_at(&[("cache-control", "max-age=60, must-revalidate")], t0);
        assert_eq!(
            on_failure(&must, false, &none, at(80)),
            OnFailure::GatewayTimeout
        );
        // An origin that answered with a 5xx: its answer goes to the client.
        assert_eq!(on_failure(&must, true, &none, at(80)), OnFailure::Relay);
        let plain = stored_at(&[("cache-control", "max-age=60")], t0);
        assert_eq!(on_failure(&plain, false, &none, at(80)), OnFailure::Relay);
    }

    #[test]
    fn a_304_freshens_only_the_response_it_validates() {
        let t0 = SystemTime::now();
        let s = stored_at(&FRESH_60, t0);
        let none = HeaderMap::new();
        let same = headers(&[("etag", "\"v1\"")]);
        let other = headers(&[("etag", "\"v2\"")]);
        let ims = headers(&[("if-none-match", "\"v2\"")]);
        assert_eq!(
            on_not_modified(Some(&s), &none, &same),
            OnNotModified::Freshen
        );
        assert_eq!(
            on_not_modified(Some(&s), &none, &HeaderMap::new()),
            OnNotModified::Freshen
        );
        assert_eq!(
            on_not_modified(Some(&s), &none, &other),
            OnNotModified::Refetch
        );
        assert_eq!(
            on_not_modified(Some(&s), &ims, &other),
            OnNotModified::Relay
        );
        assert_eq!(on_not_modified(None, &ims, &other), OnNotModified::Relay);
    }

    #[test]
    fn what_is_stored() {
        let now = SystemTime::now();
        let decide = |status: StatusCode, list: &[(&str, &str)], revalidating| {
            let h = headers(list);
            let req = request(Method::GET, &[]);
            let p = policy::new_policy(&req.uri, &req.headers, status, &h, now);
            on_response(status, &h, &p, 100, revalidating, now)
        };
        let cc = ("cache-control", "max-age=60");
        assert_eq!(
            decide(StatusCode::OK, &[cc, ("content-length", "10")], false),
            Storing::Known(10)
        );
        assert_eq!(decide(StatusCode::OK, &[cc], false), Storing::Streamed);
        assert_eq!(
            decide(StatusCode::OK, &[cc, ("content-length", "101")], true),
            Storing::Refused {
                reason: "too large",
                invalidate: false
            }
        );
        assert!(matches!(
            decide(StatusCode::OK, &[("cache-control", "no-store")], true),
            Storing::Refused {
                invalidate: true,
                ..
            }
        ));
        assert!(matches!(
            decide(StatusCode::PARTIAL_CONTENT, &[cc], false),
            Storing::Refused {
                reason: "partial",
                invalidate: false
            }
        ));
    }
}
