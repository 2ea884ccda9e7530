use super::validation::usual_case;
use super::*;
use http::HeaderName;
use std::time::SystemTime;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn policy(req: &HeaderMap, status: u16, res: &HeaderMap, now: SystemTime) -> CachePolicy {
    let uri: Uri = "/x".parse().unwrap();
    new_policy(&uri, req, StatusCode::from_u16(status).unwrap(), res, now)
}

/// (request headers, status, response headers, stored?, freshness lifetime in s)
#[test]
fn storability_and_freshness_follow_the_headers() {
    let now = SystemTime::now();
    let date = httpdate_of(now);
    let hour_ago = httpdate_of(now - Duration::from_secs(3600));
    let ten_hours_ago = httpdate_of(now - Duration::from_secs(36_000));
    let in_a_minute = httpdate_of(now + Duration::from_secs(60));
    type Row<'a> = (
        Vec<(&'a str, &'a str)>,
        u16,
        Vec<(&'a str, String)>,
        bool,
        u64,
    );
    let table: Vec<Row> = vec![
        (
            vec![],
            200,
            vec![("cache-control", "max-age=60".into())],
            true,
            60,
        ),
        (
            vec![],
            200,
            vec![("cache-control", "s-maxage=30, max-age=60".into())],
            true,
            30,
        ),
        (
            vec![],
            200,
            vec![("cache-control", "no-store, max-age=60".into())],
            false,
            0,
        ),
        (
            vec![],
            200,
            vec![("cache-control", "private, max-age=60".into())],
            false,
            0,
        ),
        (
            vec![("cache-control", "no-store")],
            200,
            vec![("cache-control", "max-age=60".into())],
            false,
            0,
        ),
        // Authorization: only with public, s-maxage or must-revalidate.
        (
            vec![("authorization", "Basic eDp5")],
            200,
            vec![("cache-control", "max-age=60".into())],
            false,
            0,
        ),
        (
            vec![("authorization", "Basic eDp5")],
            200,
            vec![("cache-control", "public, max-age=60".into())],
            true,
            60,
        ),
        (
            vec![("authorization", "Basic eDp5")],
            200,
            vec![("cache-control", "s-maxage=60".into())],
            true,
            60,
        ),
        // Expires against Date; max-age wins over Expires.
        (
            vec![],
            200,
            vec![("date", date.clone()), ("expires", in_a_minute.clone())],
            true,
            60,
        ),
        (
            vec![],
            200,
            vec![
                ("date", date.clone()),
                ("expires", in_a_minute.clone()),
                ("cache-control", "max-age=5".into()),
            ],
            true,
            5,
        ),
        (
            vec![],
            200,
            vec![("expires", "0".into()), ("etag", "\"a\"".into())],
            true,
            0,
        ),
        // No freshness and no validator: nothing to reuse, not stored.
        (vec![], 200, vec![], false, 0),
        // Heuristic freshness: 10% of the time since Last-Modified.
        (
            vec![],
            200,
            vec![
                ("date", date.clone()),
                ("last-modified", ten_hours_ago.clone()),
            ],
            true,
            3600,
        ),
        // ... only for status codes that are heuristically cacheable.
        (
            vec![],
            302,
            vec![("date", date.clone()), ("last-modified", hour_ago.clone())],
            false,
            0,
        ),
        (
            vec![],
            404,
            vec![("cache-control", "max-age=60".into())],
            true,
            60,
        ),
        // no-cache: stored, always revalidated.
        (
            vec![],
            200,
            vec![
                ("cache-control", "no-cache".into()),
                ("etag", "\"a\"".into()),
            ],
            true,
            0,
        ),
        (
            vec![],
            200,
            vec![("cache-control", "max-age=60".into()), ("vary", "*".into())],
            false,
            0,
        ),
        (
            vec![],
            200,
            vec![
                ("cache-control", "max-age=60".into()),
                ("set-cookie", "a=b".into()),
            ],
            false,
            0,
        ),
        (
            vec![],
            200,
            vec![
                ("cache-control", "public, max-age=60".into()),
                ("set-cookie", "a=b".into()),
            ],
            true,
            60,
        ),
        (
            vec![],
            206,
            vec![
                ("cache-control", "max-age=60".into()),
                ("content-range", "bytes 0-1/2".into()),
            ],
            true,
            60,
        ),
        (
            vec![],
            206,
            vec![
                ("cache-control", "max-age=60".into()),
                ("content-range", "bytes 0-1/*".into()),
            ],
            false,
            60,
        ),
        (vec![], 500, vec![], false, 0),
        // Conflicting duplicate directives: the first counts, and the response is
        // never served stale (must-revalidate).
        (
            vec![],
            200,
            vec![
                ("cache-control", "max-age=60, max-age=10".into()),
                ("etag", "\"a\"".into()),
            ],
            true,
            60,
        ),
    ];
    for (i, (req, status, res, stored, ttl)) in table.into_iter().enumerate() {
        let req = headers(&req);
        let res_pairs: Vec<(&str, &str)> = res.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let res = headers(&res_pairs);
        let p = policy(&req, status, &res, now);
        let refused = refuse(StatusCode::from_u16(status).unwrap(), &res, &p, now);
        assert_eq!(refused.is_none(), stored, "row {i}: {refused:?}");
        if stored {
            let got = p.time_to_live(now).as_secs();
            assert!(got.abs_diff(ttl) <= 1, "row {i}: ttl {got}, want {ttl}");
        }
    }
}

fn httpdate_of(t: SystemTime) -> String {
    fmt_httpdate(t)
}

#[test]
fn dates_round_trip() {
    assert_eq!(
        httpdate("Sun, 06 Nov 1994 08:49:37 GMT"),
        Some(std::time::UNIX_EPOCH + Duration::from_secs(784_111_777))
    );
    let t = std::time::UNIX_EPOCH + Duration::from_secs(784_111_777);
    assert_eq!(httpdate("Sunday, 06-Nov-94 08:49:37 GMT"), Some(t));
    assert_eq!(httpdate("Sun Nov  6 08:49:37 1994"), Some(t));
    assert_eq!(httpdate("SUN, 06 nov 1994 08:49:37 gmt"), Some(t));
    for bad in [
        "Sun, 06 Nov 1994 08:49:37 PST",
        "Sun, 06  Nov  1994 08:49:37 GMT",
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 8:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "0",
        "garbage",
        "",
    ] {
        assert_eq!(httpdate(bad), None, "{bad:?}");
    }
    let t = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert_eq!(httpdate(&fmt_httpdate(t)), Some(t));
    assert_eq!(fmt_httpdate(t), "Tue, 14 Nov 2023 22:13:20 GMT");
    let far = std::time::UNIX_EPOCH + Duration::from_secs(400_000_000_000);
    assert_eq!(fmt_httpdate(far), "Fri, 31 Dec 9999 23:59:59 GMT");
    assert_eq!(
        usual_case("sunday, 06-NOV-94 08:49:37 gmt"),
        "Sunday, 06-Nov-94 08:49:37 GMT"
    );
    assert_eq!(httpdate("é, 06 nov 1994"), None);
}

#[test]
fn cache_control_lists_keep_quoted_commas() {
    let h = headers(&[
        (
            "cache-control",
            "no-cache=\"set-cookie, x\", max-age=\"20\"",
        ),
        ("cache-control", "Stale-While-Revalidate=30,,"),
    ]);
    let got: Vec<_> = directives(&h).collect();
    assert_eq!(
        got,
        vec![
            ("no-cache", Some("set-cookie, x")),
            ("max-age", Some("20")),
            ("Stale-While-Revalidate", Some("30"))
        ]
    );
    assert_eq!(
        delta_seconds("99999999999999999999"),
        Some(Duration::from_secs(1 << 31))
    );
    assert_eq!(delta_seconds("-1"), None);
    assert_eq!(delta_seconds("1.5"), None);
    assert_eq!(delta_seconds(""), None);
}

#[test]
fn stale_rules() {
    let none = HeaderMap::new();
    let r = StaleRules::of_response(&headers(&[(
        "cache-control",
        "max-age=1, stale-while-revalidate=10, stale-if-error=60",
    )]));
    assert!(r.serve_while_revalidating(Duration::from_secs(10), &none));
    assert!(!r.serve_while_revalidating(Duration::from_secs(11), &none));
    assert!(r.serve_on_error(Duration::from_secs(60), &none));
    assert!(!r.serve_on_error(Duration::from_secs(61), &none));
    // The client insisting on the origin gets no stale response.
    let no_cache = headers(&[("cache-control", "no-cache")]);
    assert!(!r.serve_while_revalidating(Duration::ZERO, &no_cache));
    assert!(!r.serve_on_error(Duration::ZERO, &no_cache));
    let pragma = headers(&[("pragma", "no-cache")]);
    assert!(!r.serve_while_revalidating(Duration::ZERO, &pragma));
    // must-revalidate forbids both.
    let strict = StaleRules::of_response(&headers(&[(
        "cache-control",
        "max-age=1, must-revalidate, stale-while-revalidate=10, stale-if-error=60",
    )]));
    assert!(!strict.serve_while_revalidating(Duration::ZERO, &none));
    assert!(!strict.serve_on_error(Duration::ZERO, &none));
    // So do proxy-revalidate and s-maxage, for a shared cache.
    for cc in ["max-age=1, proxy-revalidate", "s-maxage=1"] {
        let r = StaleRules::of_response(&headers(&[(
            "cache-control",
            &format!("{cc}, stale-while-revalidate=10, stale-if-error=60"),
        )]));
        assert!(!r.serve_while_revalidating(Duration::ZERO, &none), "{cc}");
        assert!(!r.serve_on_error(Duration::ZERO, &none), "{cc}");
    }
    // The request's stale-if-error counts.
    let plain = StaleRules::of_response(&headers(&[("cache-control", "max-age=1")]));
    assert!(!plain.serve_on_error(Duration::from_secs(5), &none));
    let asks = headers(&[("cache-control", "stale-if-error=30")]);
    assert!(plain.serve_on_error(Duration::from_secs(5), &asks));
}

#[test]
fn conditional_requests_of_the_client() {
    let res = headers(&[
        ("etag", "W/\"v1\""),
        ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
    ]);
    assert!(not_modified(&headers(&[("if-none-match", "\"v1\"")]), &res));
    assert!(not_modified(
        &headers(&[("if-none-match", "\"x\", W/\"v1\"")]),
        &res
    ));
    assert!(not_modified(&headers(&[("if-none-match", "*")]), &res));
    assert!(!not_modified(
        &headers(&[("if-none-match", "\"v2\"")]),
        &res
    ));
    // If-None-Match wins over If-Modified-Since.
    assert!(!not_modified(
        &headers(&[
            ("if-none-match", "\"v2\""),
            ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")
        ]),
        &res
    ));
    assert!(not_modified(
        &headers(&[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")]),
        &res
    ));
    assert!(!not_modified(
        &headers(&[("if-modified-since", "Sat, 05 Nov 1994 08:49:37 GMT")]),
        &res
    ));
    assert!(!not_modified(
        &headers(&[("if-modified-since", "junk")]),
        &res
    ));
    assert!(!not_modified(&HeaderMap::new(), &res));
}

#[test]
fn the_secondary_key_lists_what_vary_names() {
    let res = headers(&[
        ("vary", "Accept-Encoding, accept-language"),
        ("vary", "accept-encoding"),
    ]);
    let req = headers(&[("accept-encoding", "gzip"), ("x", "y")]);
    let key = SecondaryKey::of(&res, &req);
    assert_eq!(key.0.len(), 2);
    assert_eq!(key.0[0].0, "accept-encoding");
    assert_eq!(key.0[0].1, vec![HeaderValue::from_static("gzip")]);
    assert_eq!(key.0[1].0, "accept-language");
    assert!(key.0[1].1.is_empty());
    assert!(key.matches(&req));
    assert!(!key.matches(&headers(&[("accept-encoding", "br")])));
    assert!(
        !key.matches(&headers(&[
            ("accept-encoding", "gzip"),
            ("accept-language", "")
        ])),
        "an empty field is not an absent one"
    );
}

#[test]
fn must_understand_stores_known_statuses_despite_no_store_and_nothing_else() {
    let now = SystemTime::now();
    let req = HeaderMap::new();
    let cc = [("cache-control", "max-age=3600, no-store, must-understand")];
    assert!(policy(&req, 200, &headers(&cc), now).is_storable());
    assert!(policy(&req, 404, &headers(&cc), now).is_storable());
    assert!(!policy(&req, 599, &headers(&cc), now).is_storable());
    // Without no-store, an unknown status is still not stored under the directive,
    // though explicit freshness alone would store it.
    let mu = [("cache-control", "max-age=3600, must-understand")];
    assert!(!policy(&req, 599, &headers(&mu), now).is_storable());
    assert!(policy(
        &req,
        599,
        &headers(&[("cache-control", "max-age=3600")]),
        now
    )
    .is_storable());
    // Without must-understand, no-store is obeyed.
    let plain = [("cache-control", "max-age=3600, no-store")];
    assert!(!policy(&req, 200, &headers(&plain), now).is_storable());
}

#[test]
fn selecting_fields_are_compared_normalised() {
    let value = |pairs: &[(&str, &str)], name: &str| {
        vary_value(
            &headers(pairs),
            &HeaderName::from_bytes(name.as_bytes()).unwrap(),
        )
    };
    // Lines combined, whitespace around elements dropped, for any field.
    assert_eq!(
        value(&[("foo", "1"), ("foo", "2")], "foo"),
        value(&[("foo", "1, 2")], "foo")
    );
    assert_eq!(
        value(&[("foo", " 1, 2 ")], "foo"),
        value(&[("foo", "1,2")], "foo")
    );
    assert_ne!(
        value(&[("foo", "2, 1")], "foo"),
        value(&[("foo", "1, 2")], "foo"),
        "order counts"
    );
    assert_ne!(
        value(&[("foo", "A")], "foo"),
        value(&[("foo", "a")], "foo"),
        "case counts"
    );
    // The Accept-* lists of tokens: case, order and inner whitespace do not.
    let lang = |v: &str| value(&[("accept-language", v)], "accept-language");
    assert_eq!(lang("en, de"), lang("de, en"));
    assert_eq!(lang("en, de"), lang("eN, De"));
    assert_eq!(lang("en, de"), lang(" en ,   de"));
    assert_eq!(lang("de; q=0.5, en"), lang("en,de;q=0.5"));
    assert_ne!(lang("de;q=0.5, en"), lang("de, en;q=0.5"));
    assert_eq!(value(&[], "accept-language"), None);
    // What the policy sees: the normalised value in place of the received one.
    let res = headers(&[("vary", "Accept-Encoding")]);
    let req = headers(&[("accept-encoding", "GZIP, br"), ("x", "1")]);
    let view = vary_view(&req, &res);
    assert_eq!(view.get("accept-encoding").unwrap(), "br,gzip");
    assert_eq!(view.get("x").unwrap(), "1");
    let plain = headers(&[("accept-encoding", "br,gzip")]);
    assert!(matches!(
        vary_view(&plain, &res),
        std::borrow::Cow::Borrowed(_)
    ));
}
