use super::*;

fn settings(max: u64) -> CacheSettings {
    CacheSettings::new(max, max)
}

fn request(path: &str, headers: &[(&str, &str)]) -> Parts {
    let mut b = http::Request::get(path);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn stored(req: &Parts, response: &[(&str, &str)], body: &'static [u8]) -> Stored {
    let now = SystemTime::now();
    let mut h = HeaderMap::new();
    for (n, v) in response {
        h.append(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let policy = policy::new_policy(&req.uri, &req.headers, StatusCode::OK, &h, now);
    Stored::new(
        policy,
        req.uri.clone(),
        &req.headers,
        StatusCode::OK,
        h,
        Bytes::from_static(body),
        now,
    )
}

/// A 206 for `first..=last` of a 10-byte whole whose ETag is `etag`.
fn part(first: u64, last: u64, etag: &str, body: &'static [u8]) -> Stored {
    let now = SystemTime::now();
    let req = request("/p", &[]);
    let mut h = HeaderMap::new();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=60"),
    );
    h.insert(header::ETAG, HeaderValue::from_str(etag).unwrap());
    let range = format!("bytes {first}-{last}/10");
    h.insert(
        header::CONTENT_RANGE,
        HeaderValue::from_str(&range).unwrap(),
    );
    let status = StatusCode::PARTIAL_CONTENT;
    let policy = policy::new_policy(&req.uri, &req.headers, status, &h, now);
    let body = Bytes::from_static(body);
    Stored::new(policy, req.uri.clone(), &req.headers, status, h, body, now)
}

#[test]
fn parts_of_one_whole_combine_and_others_replace() {
    let cache = Cache::new(settings(1 << 20));
    let now = SystemTime::now();
    let k = key("/p");
    let ranged = |r: &str| request("/p", &[("range", r)]);
    cache.insert(k.clone(), part(2, 4, "\"a\"", b"234"));
    assert!(matches!(
        cache.lookup(&k, &ranged("bytes=3-4"), now),
        Lookup::Fresh(_)
    ));
    assert!(matches!(
        cache.lookup(&k, &ranged("bytes=1-4"), now),
        Lookup::Miss { vary: false }
    ));
    assert!(matches!(
        cache.lookup(&k, &request("/p", &[]), now),
        Lookup::Miss { .. }
    ));
    // Touching, same strong ETag: one part 2-7.
    cache.insert(k.clone(), part(5, 7, "\"a\"", b"567"));
    let Lookup::Fresh(s) = cache.lookup(&k, &ranged("bytes=2-7"), now) else {
        panic!("the combined part answers 2-7");
    };
    assert_eq!(&s.body[..], b"234567");
    assert_eq!(
        s.part,
        Some(Part {
            first: 2,
            total: 10
        })
    );
    assert_eq!(s.headers[header::CONTENT_RANGE], "bytes 2-7/10");
    // Apart from it (a gap at 8): not combined, it replaces.
    cache.insert(k.clone(), part(9, 9, "\"a\"", b"9"));
    assert!(matches!(
        cache.lookup(&k, &ranged("bytes=2-3"), now),
        Lookup::Miss { .. }
    ));
    // Another ETag: another whole, never mixed.
    cache.insert(k.clone(), part(0, 8, "\"b\"", b"012345678"));
    let Lookup::Fresh(s) = cache.lookup(&k, &ranged("bytes=0-1"), now) else {
        panic!("the newer part answers");
    };
    assert_eq!(s.headers[header::ETAG], "\"b\"");
    // The rest of "b": complete, a 200 that answers everything.
    cache.insert(k.clone(), part(9, 9, "\"b\"", b"9"));
    let Lookup::Fresh(s) = cache.lookup(&k, &request("/p", &[]), now) else {
        panic!("complete");
    };
    assert_eq!(
        (s.status, &s.body[..], s.part),
        (StatusCode::OK, &b"0123456789"[..], None)
    );
    assert!(s.headers.get(header::CONTENT_RANGE).is_none());
    // A part of the same whole adds nothing to the complete response; a body that
    // is not the length its Content-Range says is never stored.
    cache.insert(k.clone(), part(0, 1, "\"b\"", b"01"));
    assert!(matches!(
        cache.lookup(&k, &request("/p", &[]), now),
        Lookup::Fresh(_)
    ));
    cache.insert(key("/q"), part(0, 4, "\"c\"", b"01"));
    assert!(matches!(
        cache.lookup(&key("/q"), &ranged("bytes=0-1"), now),
        Lookup::Miss { .. }
    ));
    // Weak ETags never combine.
    cache.insert(key("/w"), part(0, 4, "W/\"d\"", b"01234"));
    cache.insert(key("/w"), part(5, 9, "W/\"d\"", b"56789"));
    assert!(matches!(
        cache.lookup(&key("/w"), &request("/w", &[]), now),
        Lookup::Miss { .. }
    ));
}

fn key(path: &str) -> Key {
    Key::new(
        &Arc::from("web#0"),
        false,
        "Example.com",
        &path.parse().unwrap(),
    )
}

#[test]
fn stores_looks_up_and_keeps_one_response_per_variant() {
    let cache = Cache::new(settings(1 << 20));
    let now = SystemTime::now();
    let en = request("/a", &[("accept-language", "en")]);
    let fr = request("/a", &[("accept-language", "fr")]);
    let vary = [("cache-control", "max-age=60"), ("vary", "accept-language")];
    assert!(matches!(
        cache.lookup(&key("/a"), &en, now),
        Lookup::Miss { vary: false }
    ));
    cache.insert(key("/a"), stored(&en, &vary, b"en"));
    assert!(matches!(
        cache.lookup(&key("/a"), &fr, now),
        Lookup::Miss { vary: true }
    ));
    cache.insert(key("/a"), stored(&fr, &vary, b"fr"));
    cache.insert(key("/a"), stored(&en, &vary, b"en2"));
    match cache.lookup(&key("/a"), &en, now) {
        Lookup::Fresh(s) => assert_eq!(s.body, "en2"),
        _ => panic!("en is stored"),
    }
    match cache.lookup(&key("/a"), &fr, now) {
        Lookup::Fresh(s) => assert_eq!(s.body, "fr"),
        _ => panic!("fr is stored"),
    }
    // Hosts are compared without regard to case; the path is not.
    assert!(matches!(
        cache.lookup(
            &Key::new(
                &Arc::from("web#0"),
                false,
                "example.COM",
                &"/a".parse().unwrap()
            ),
            &en,
            now
        ),
        Lookup::Fresh(_)
    ));
    assert!(matches!(
        cache.lookup(&key("/A"), &en, now),
        Lookup::Miss { .. }
    ));
    // A request with directives of its own takes the policy's full path.
    let no_cache = request(
        "/a",
        &[("accept-language", "en"), ("cache-control", "no-cache")],
    );
    assert!(matches!(
        cache.lookup(&key("/a"), &no_cache, now),
        Lookup::Stale(..)
    ));
    assert_eq!(cache.purge(Some("example.com"), Some("/a")), 2);
    assert!(matches!(
        cache.lookup(&key("/a"), &en, now),
        Lookup::Miss { vary: false }
    ));
}

#[test]
fn huge_lifetimes_are_capped_never_overflowed() {
    let cache = Cache::new(settings(1 << 20));
    let now = SystemTime::now();
    let r = request("/", &[]);
    let cases: [&[(&str, &str)]; 7] = [
        &[("cache-control", "max-age=10000000000000000000")],
        &[("cache-control", "max-age=99999999999999999999999999")],
        &[("cache-control", "s-maxage=18446744073709551615")],
        &[(
            "cache-control",
            "max-age=0, stale-while-revalidate=10000000000000000000, stale-if-error=10000000000000000000",
        )],
        &[("expires", "Fri, 31 Dec 9999 23:59:59 GMT")],
        &[
            ("cache-control", "max-age=60"),
            ("age", "10000000000000000000"),
            ("etag", "\"x\""),
        ],
        &[("cache-control", "MAX-AGE=10000000000000000000, Public")],
    ];
    for (i, headers) in cases.iter().enumerate() {
        let s = stored(&r, headers, b"x");
        assert!(
            s.ttl(now) <= MAX_TTL + Duration::from_secs(1),
            "case {i}: {:?}",
            s.ttl(now)
        );
        let _ = s.stale_for(now + MAX_TTL + MAX_TTL);
        let _ = s.head(now);
        cache.insert(key(&format!("/{i}")), s);
        let later = now + Duration::from_secs(3600);
        let _ = cache.lookup(&key(&format!("/{i}")), &r, later);
        let no_cache = request(
            "/",
            &[(
                "cache-control",
                "max-stale=99999999999999999999, min-fresh=18446744073709551615",
            )],
        );
        let _ = cache.lookup(&key(&format!("/{i}")), &no_cache, later);
    }
    // A huge max-age is a long lifetime, not none.
    let s = stored(&r, cases[0], b"x");
    assert!(s.ttl(now) >= Duration::from_secs(1 << 30));
}

#[test]
fn routes_and_listeners_never_share_an_entry() {
    let cache = Cache::new(settings(1 << 20));
    let now = SystemTime::now();
    let r = request("/a", &[]);
    let uri: Uri = "/a".parse().unwrap();
    let api = Key::new(&Arc::from("web#0"), false, "example.com", &uri);
    cache.insert(
        api.clone(),
        stored(&r, &[("cache-control", "max-age=60")], b"api"),
    );
    for other in [
        Key::new(&Arc::from("web#1"), false, "example.com", &uri),
        Key::new(&Arc::from("other#0"), false, "example.com", &uri),
        Key::new(&Arc::from("web#0"), true, "example.com", &uri),
        Key::new(&Arc::from("web#0"), false, "example.org", &uri),
    ] {
        assert!(matches!(
            cache.lookup(&other, &r, now),
            Lookup::Miss { vary: false }
        ));
    }
    assert!(matches!(cache.lookup(&api, &r, now), Lookup::Fresh(_)));
}

#[test]
fn the_least_recently_used_goes_first() {
    let cache = Cache::new(settings(8 * 1024));
    let r = request("/", &[]);
    let body: &'static [u8] = &[b'x'; 2000];
    for i in 0..3 {
        cache.insert(
            key(&format!("/{i}")),
            stored(&r, &[("cache-control", "max-age=60")], body),
        );
    }
    let now = SystemTime::now();
    // Touch /0, then two more entries push out the least recently used: /1, /2.
    assert!(matches!(
        cache.lookup(&key("/0"), &r, now),
        Lookup::Fresh(_)
    ));
    for i in 3..5 {
        cache.insert(
            key(&format!("/{i}")),
            stored(&r, &[("cache-control", "max-age=60")], body),
        );
    }
    assert!(cache.size() <= 8 * 1024);
    assert!(matches!(
        cache.lookup(&key("/4"), &r, now),
        Lookup::Fresh(_)
    ));
    assert!(matches!(
        cache.lookup(&key("/1"), &r, now),
        Lookup::Miss { .. }
    ));
}

#[tokio::test]
async fn one_request_leads_the_others_wait_until_it_is_over() {
    let cache = Cache::new(settings(1 << 20));
    let Join::Lead(flight) = cache.join(&key("/c")) else {
        panic!("the first leads");
    };
    let Join::Wait(rx) = cache.join(&key("/c")) else {
        panic!("the second waits");
    };
    assert!(matches!(cache.join(&key("/other")), Join::Lead(_)));
    let waiter = tokio::spawn(wait(rx, Duration::from_secs(30)));
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    drop(flight);
    waiter.await.unwrap();
    // Over: the next one leads again.
    assert!(matches!(cache.join(&key("/c")), Join::Lead(_)));
}

#[tokio::test(start_paused = true)]
async fn a_wait_is_bounded() {
    let cache = Cache::new(settings(1 << 20));
    let _flight = cache.join(&key("/c"));
    let Join::Wait(rx) = cache.join(&key("/c")) else {
        panic!("the second waits");
    };
    // Paused time: the bound passes without the flight ending.
    let bounded = tokio::time::timeout(Duration::from_secs(60), wait(rx, Duration::from_secs(5)));
    assert!(bounded.await.is_ok(), "the wait outlived its bound");
}
