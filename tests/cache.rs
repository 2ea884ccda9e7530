//! The response cache, end to end: a real origin, a real fulcrum, a real client.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::http::{body, client, empty, pattern, send, Seen};
use common::origin::{reply, Origin, Reply};
use common::Fulcrum;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

fn config(origin: SocketAddr, cache: &str) -> String {
    format!(
        "[global]\nwatch_config = false\nshutdown_timeout = \"5s\"\naccess_log = false\n\
         [admin]\nbind = \"127.0.0.1:0\"\n\
         {cache}\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n\
         [[listener.route]]\npath_prefix = \"/plain\"\nupstream = \"app\"\n\
         [[listener.route]]\nupstream = \"app\"\ncache = true\n\
         [upstream.app]\nretries = 0\nbackends = [{{ address = \"{origin}\" }}]\n"
    )
}

struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Got {
    fn cache_status(&self) -> &str {
        self.headers
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn request(addr: SocketAddr, method: Method, path: &str, headers: &[(&str, &str)]) -> Got {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    let (status, headers, body) = send(&client(), b.body(empty()).unwrap()).await;
    Got {
        status,
        headers,
        body,
    }
}

async fn get(addr: SocketAddr, path: &str) -> Got {
    request(addr, Method::GET, path, &[]).await
}

async fn start(origin: &Origin, cache: &str) -> (Fulcrum, SocketAddr) {
    let f = Fulcrum::start(&config(origin.addr, cache)).await;
    let addr = f.addr("web");
    (f, addr)
}

#[tokio::test]
async fn a_fresh_response_is_served_from_the_cache_and_head_after_get() {
    let origin = Origin::start(|_, n| {
        reply(
            200,
            &[("cache-control", "max-age=60"), ("etag", "\"v1\"")],
            format!("body {n}"),
        )
    })
    .await;
    let (_f, addr) = start(&origin, "").await;

    let first = get(addr, "/a").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body, "body 0");
    assert_eq!(first.cache_status(), "fulcrum; fwd=miss; stored");

    let second = get(addr, "/a").await;
    assert_eq!(second.body, "body 0");
    assert!(
        second.cache_status().starts_with("fulcrum; hit; ttl="),
        "{}",
        second.cache_status()
    );
    assert!(second.headers.contains_key("age"));
    assert_eq!(second.headers["etag"], "\"v1\"");
    assert_eq!(origin.count(), 1);

    let head = request(addr, Method::HEAD, "/a", &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.headers["content-length"], "6");
    assert!(head.cache_status().contains("hit"));
    assert_eq!(origin.count(), 1);

    // A single range of the stored response.
    let part = request(addr, Method::GET, "/a", &[("range", "bytes=2-3")]).await;
    assert_eq!(part.status, 206);
    assert_eq!(part.body, "dy");
    assert_eq!(part.headers["content-range"], "bytes 2-3/6");
    assert_eq!(origin.count(), 1);

    // The client's own conditional is answered from the cache.
    let cond = request(addr, Method::GET, "/a", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(cond.status, 304);
    assert_eq!(origin.count(), 1);

    // Routes without `cache` never see it.
    let plain = get(addr, "/plain").await;
    assert!(!plain.headers.contains_key("cache-status"));

    // Another path, another host: separate entries. A key never mixes hosts.
    get(addr, "/b").await;
    let other_host = request(addr, Method::GET, "/a", &[("host", "other.example")]).await;
    assert_eq!(other_host.cache_status(), "fulcrum; fwd=miss; stored");
    assert_eq!(origin.count(), 4);
}

#[tokio::test]
async fn what_must_not_be_stored_is_not() {
    let origin = Origin::start(|seen, n| {
        let cc = match seen.uri.as_str() {
            "/no-store" => "no-store, max-age=60",
            "/private" => "private, max-age=60",
            _ => "max-age=60",
        };
        let mut r = reply(200, &[("cache-control", cc)], format!("{n}"));
        if seen.uri == "/vary-star" {
            r.headers.push(("vary", "*".into()));
        }
        if seen.uri == "/nothing" {
            r.headers.clear();
        }
        r
    })
    .await;
    let (_f, addr) = start(&origin, "").await;
    for path in ["/no-store", "/private", "/vary-star", "/nothing"] {
        let a = get(addr, path).await;
        let b = get(addr, path).await;
        assert_ne!(a.body, b.body, "{path} was served from the cache");
        assert_eq!(b.cache_status(), "fulcrum; fwd=miss", "{path}");
    }
    // Authorization: not stored without public / s-maxage / must-revalidate.
    let auth = [("authorization", "Bearer x")];
    let a = request(addr, Method::GET, "/auth", &auth).await;
    let b = request(addr, Method::GET, "/auth", &auth).await;
    assert_ne!(a.body, b.body);
    // A request that says no-store is not stored either.
    let ns = [("cache-control", "no-store")];
    let a = request(addr, Method::GET, "/req-no-store", &ns).await;
    let b = get(addr, "/req-no-store").await;
    assert_ne!(a.body, b.body);
}

#[tokio::test]
async fn vary_keeps_one_response_per_variant() {
    let origin = Origin::start(|seen, _| {
        let lang = seen
            .headers
            .get("accept-language")
            .map_or("none", |v| v.to_str().unwrap())
            .to_string();
        reply(
            200,
            &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
            lang,
        )
    })
    .await;
    let (_f, addr) = start(&origin, "").await;
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];
    assert_eq!(request(addr, Method::GET, "/v", &en).await.body, "en");
    let f = request(addr, Method::GET, "/v", &fr).await;
    assert_eq!(f.body, "fr");
    assert_eq!(f.cache_status(), "fulcrum; fwd=vary-miss; stored");
    let e = request(addr, Method::GET, "/v", &en).await;
    assert_eq!(e.body, "en");
    assert!(e.cache_status().contains("hit"));
    assert_eq!(request(addr, Method::GET, "/v", &fr).await.body, "fr");
    assert_eq!(get(addr, "/v").await.body, "none");
    assert_eq!(origin.count(), 3);
}

#[tokio::test]
async fn a_head_response_freshens_the_stale_get_it_describes_or_drops_it() {
    // Stale at once (max-age=0) but revalidatable; a HEAD gets a fresh lifetime and a
    // new field for the same content (/same), or another validator (/changed).
    let origin = Origin::start(|seen, _| {
        if seen.method == Method::HEAD {
            let etag = if seen.uri == "/changed" {
                "\"v2\""
            } else {
                "\"v1\""
            };
            reply(
                200,
                &[
                    ("cache-control", "max-age=60"),
                    ("etag", etag),
                    ("x-gen", "2"),
                ],
                "content",
            )
        } else {
            reply(
                200,
                &[
                    ("cache-control", "max-age=0"),
                    ("etag", "\"v1\""),
                    ("x-gen", "1"),
                    ("x-only-get", "1"),
                ],
                "content",
            )
        }
    })
    .await;
    let (_f, addr) = start(&origin, "").await;
    for path in ["/same", "/changed"] {
        let first = get(addr, path).await;
        assert!(
            first.cache_status().contains("stored"),
            "{}",
            first.cache_status()
        );
        let head = request(addr, Method::HEAD, path, &[]).await;
        assert_eq!(head.status, 200);
        assert_eq!(origin.last().method, Method::HEAD, "the HEAD went through");
        assert_eq!(head.headers["x-gen"], "2");
        // The same content: the client gets the freshened stored head, with the
        // fields the HEAD response did not repeat; another: the HEAD response as is.
        let kept = head.headers.get("x-only-get").is_some();
        assert_eq!(kept, path == "/same", "{path}: {:?}", head.headers);
        assert_eq!(head.headers["content-length"], "7", "{path}");
    }
    let before = origin.count();
    // The same content: the stored GET took the HEAD's fields and lifetime.
    let same = get(addr, "/same").await;
    assert!(
        same.cache_status().contains("hit"),
        "{}",
        same.cache_status()
    );
    assert_eq!(same.headers["x-gen"], "2");
    assert_eq!(same.body, "content");
    assert_eq!(origin.count(), before);
    // Another validator: the stored GET is gone, the next GET goes to the origin.
    let changed = get(addr, "/changed").await;
    assert!(
        !changed.cache_status().contains("hit"),
        "{}",
        changed.cache_status()
    );
    assert_eq!(origin.count(), before + 1);
    assert_eq!(origin.last().method, Method::GET);
}

#[tokio::test]
async fn must_understand_stores_a_known_status_despite_no_store_and_never_an_unknown_one() {
    let origin = Origin::start(|seen, _| {
        let status = if seen.uri == "/unknown" { 599 } else { 200 };
        reply(
            status,
            &[("cache-control", "max-age=3600, no-store, must-understand")],
            "x",
        )
    })
    .await;
    let (_f, addr) = start(&origin, "").await;
    get(addr, "/known").await;
    let again = get(addr, "/known").await;
    assert!(
        again.cache_status().contains("hit"),
        "{}",
        again.cache_status()
    );
    get(addr, "/unknown").await;
    let again = get(addr, "/unknown").await;
    assert_eq!(again.status, 599);
    assert!(
        !again.cache_status().contains("hit"),
        "{}",
        again.cache_status()
    );
    assert_eq!(origin.count(), 3);
}

/// "0123456789", whole or the single range asked for, fresh for a minute, with a
/// strong `ETag`.
fn ten_bytes(seen: &Seen) -> Reply {
    const WHOLE: &str = "0123456789";
    let cc = ("cache-control", "max-age=60");
    let etag = ("etag", "\"ten\"");
    let Some(range) = seen.headers.get("range").and_then(|v| v.to_str().ok()) else {
        return reply(200, &[cc, etag], WHOLE);
    };
    let spec = range.strip_prefix("bytes=").unwrap();
    let (a, b) = spec.split_once('-').unwrap();
    let (first, last): (usize, usize) = match (a, b) {
        ("", n) => (10 - n.parse::<usize>().unwrap(), 9),
        (a, "") => (a.parse().unwrap(), 9),
        (a, b) => (a.parse().unwrap(), b.parse::<usize>().unwrap().min(9)),
    };
    let content_range = format!("bytes {first}-{last}/10");
    reply(
        206,
        &[cc, etag, ("content-range", &content_range)],
        &WHOLE[first..=last],
    )
}

#[tokio::test]
async fn parts_are_stored_reused_and_combined_into_the_whole() {
    let origin = Origin::start(|seen, _| ten_bytes(seen)).await;
    let (_f, addr) = start(&origin, "").await;
    let range = |r: &'static str| [("range", r)];
    // The last five bytes: stored as a part.
    let tail = request(addr, Method::GET, "/ten", &range("bytes=-5")).await;
    assert_eq!((tail.status.as_u16(), &tail.body[..]), (206, &b"56789"[..]));
    assert!(
        tail.cache_status().contains("stored"),
        "{}",
        tail.cache_status()
    );
    // Ranges within it: answered from the part.
    for (asked, body, content_range) in [
        ("bytes=-5", "56789", "bytes 5-9/10"),
        ("bytes=6-8", "678", "bytes 6-8/10"),
        ("bytes=7-", "789", "bytes 7-9/10"),
        ("bytes=-1", "9", "bytes 9-9/10"),
    ] {
        let got = request(addr, Method::GET, "/ten", &range(asked)).await;
        assert!(
            got.cache_status().contains("hit"),
            "{asked}: {}",
            got.cache_status()
        );
        assert_eq!(got.status, 206, "{asked}");
        assert_eq!(got.body, body, "{asked}");
        assert_eq!(got.headers["content-range"], content_range, "{asked}");
    }
    assert_eq!(origin.count(), 1);
    // The whole, or a range outside the part: the part cannot answer.
    let head = request(addr, Method::GET, "/ten", &range("bytes=0-4")).await;
    assert_eq!((head.status.as_u16(), &head.body[..]), (206, &b"01234"[..]));
    assert!(
        !head.cache_status().contains("hit"),
        "{}",
        head.cache_status()
    );
    assert_eq!(origin.count(), 2);
    // The two parts of the same whole (same strong ETag) made it: a complete 200.
    let whole = get(addr, "/ten").await;
    assert!(
        whole.cache_status().contains("hit"),
        "{}",
        whole.cache_status()
    );
    assert_eq!(
        (whole.status.as_u16(), &whole.body[..]),
        (200, &b"0123456789"[..])
    );
    assert!(whole.headers.get("content-range").is_none());
    assert_eq!(origin.count(), 2);
}

#[tokio::test]
async fn a_part_never_answers_what_lies_outside_it() {
    let origin = Origin::start(|seen, _| ten_bytes(seen)).await;
    let (_f, addr) = start(&origin, "").await;
    request(addr, Method::GET, "/p", &[("range", "bytes=2-3")]).await;
    let whole = get(addr, "/p").await;
    assert_eq!(
        (whole.status.as_u16(), &whole.body[..]),
        (200, &b"0123456789"[..])
    );
    assert!(
        !whole.cache_status().contains("hit"),
        "{}",
        whole.cache_status()
    );
    // The complete response replaced the part, and answers every range now.
    let r = request(addr, Method::GET, "/p", &[("range", "bytes=0-0")]).await;
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    assert_eq!(r.body, "0");
}

#[tokio::test]
async fn selecting_fields_match_once_normalised() {
    let origin = Origin::start(|seen, _| {
        let names: Vec<String> = seen
            .headers
            .get_all("accept-language")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        reply(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("vary", "Accept-Language, Foo"),
            ],
            names.join("|"),
        )
    })
    .await;
    let (_f, addr) = start(&origin, "").await;
    let first = request(
        addr,
        Method::GET,
        "/n",
        &[("accept-language", "en, de"), ("foo", "1,2")],
    )
    .await;
    assert!(
        first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );
    // Another order, case and spacing of the same languages; the unknown field split
    // over two lines and spaced: the same variant.
    for (lang, foo) in [
        ("de, en", "1,2"),
        ("eN, De", " 1, 2 "),
        (" en ,   de", "1, 2"),
    ] {
        let mut b = Request::builder().uri(format!("http://{addr}/n"));
        b = b.header("accept-language", lang);
        for part in foo.split(',') {
            b = b.header("foo", part);
        }
        let (_, headers, body) = send(&client(), b.body(empty()).unwrap()).await;
        let status = headers.get("cache-status").unwrap().to_str().unwrap();
        assert!(status.contains("hit"), "{lang:?} {foo:?}: {status}");
        assert_eq!(body, "en, de");
    }
    // A different preference is a different variant; so is another order of an
    // unknown field's values.
    let other = request(
        addr,
        Method::GET,
        "/n",
        &[("accept-language", "en;q=0.5, de"), ("foo", "1,2")],
    )
    .await;
    assert!(
        other.cache_status().contains("vary-miss"),
        "{}",
        other.cache_status()
    );
    let other = request(
        addr,
        Method::GET,
        "/n",
        &[("accept-language", "en, de"), ("foo", "2,1")],
    )
    .await;
    assert!(
        other.cache_status().contains("vary-miss"),
        "{}",
        other.cache_status()
    );
    assert_eq!(origin.count(), 3);
}

#[tokio::test]
async fn stale_responses_are_revalidated_and_a_304_refreshes_them() {
    // max-age=0: stale at once, revalidated with its ETag every time.
    let origin = Origin::start(|seen, _| {
        let matches = seen
            .headers
            .get("if-none-match")
            .is_some_and(|v| v.to_str().unwrap().contains("\"v1\""));
        if matches {
            reply(
                304,
                &[
                    ("etag", "\"v1\""),
                    ("cache-control", "max-age=0"),
                    ("x-fresh", "yes"),
                ],
                "",
            )
        } else {
            reply(
                200,
                &[("etag", "\"v1\""), ("cache-control", "max-age=0")],
                "the body",
            )
        }
    })
    .await;
    let (_f, addr) = start(&origin, "").await;
    assert_eq!(get(addr, "/r").await.body, "the body");
    let again = get(addr, "/r").await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body, "the body");
    assert_eq!(
        again.headers["x-fresh"], "yes",
        "the 304's fields replace the stored ones"
    );
    assert!(
        again
            .cache_status()
            .starts_with("fulcrum; fwd=stale; fwd-status=304; stored"),
        "{}",
        again.cache_status()
    );
    assert_eq!(origin.last().headers["if-none-match"], "\"v1\"");
    assert_eq!(origin.count(), 2);
}

#[tokio::test]
async fn a_client_no_cache_revalidates_a_fresh_response() {
    let origin = Origin::start(|seen, n| {
        if seen.headers.contains_key("if-none-match") {
            reply(304, &[("etag", "\"e\"")], "")
        } else {
            reply(
                200,
                &[("etag", "\"e\""), ("cache-control", "max-age=600")],
                format!("v{n}"),
            )
        }
    })
    .await;
    let (_f, addr) = start(&origin, "").await;
    assert_eq!(get(addr, "/n").await.body, "v0");
    let r = request(addr, Method::GET, "/n", &[("cache-control", "no-cache")]).await;
    assert_eq!(r.body, "v0");
    assert!(
        r.cache_status().contains("fwd=request"),
        "{}",
        r.cache_status()
    );
    assert_eq!(origin.count(), 2);
    let p = request(addr, Method::GET, "/n", &[("pragma", "no-cache")]).await;
    assert_eq!(p.body, "v0");
    assert_eq!(origin.count(), 3);
}

#[tokio::test]
async fn concurrent_misses_make_one_upstream_request() {
    let origin = Origin::start(|_, n| {
        let mut r = reply(200, &[("cache-control", "max-age=60")], format!("only {n}"));
        r.delay = Duration::from_millis(300);
        r
    })
    .await;
    let (_f, addr) = start(&origin, "").await;
    let mut tasks = Vec::new();
    for _ in 0..12 {
        tasks.push(tokio::spawn(async move { get(addr, "/c").await }));
    }
    for t in tasks {
        let g = t.await.unwrap();
        assert_eq!(g.status, 200);
        assert_eq!(g.body, "only 0");
    }
    assert_eq!(origin.count(), 1);
}

#[tokio::test]
async fn concurrent_misses_of_an_unstorable_response_each_go_upstream() {
    let origin = Origin::start(|_, n| {
        let mut r = reply(200, &[("cache-control", "no-store")], format!("{n}"));
        r.delay = Duration::from_millis(200);
        r
    })
    .await;
    let (_f, addr) = start(&origin, "").await;
    let tasks: Vec<_> = (0..4)
        .map(|_| tokio::spawn(async move { get(addr, "/u").await }))
        .collect();
    let mut bodies = Vec::new();
    for t in tasks {
        bodies.push(t.await.unwrap().body);
    }
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), 4, "each got its own answer");
    assert_eq!(origin.count(), 4);
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_and_refreshes_behind() {
    let origin = Origin::start(|_, n| {
        reply(
            200,
            &[("cache-control", "max-age=0, stale-while-revalidate=600")],
            format!("v{n}"),
        )
    })
    .await;
    let (_f, addr) = start(&origin, "").await;
    assert_eq!(get(addr, "/s").await.body, "v0");
    let stale = get(addr, "/s").await;
    assert_eq!(stale.body, "v0");
    assert!(
        stale.cache_status().contains("hit")
            && stale.cache_status().contains("stale-while-revalidate"),
        "{}",
        stale.cache_status()
    );
    // The refresh happens behind: wait for it, then the new body is what is stored.
    common::eventually(
        "the refresh reached the origin",
        common::PATIENCE,
        || async { origin.count() >= 2 },
    )
    .await;
    let mut body = Bytes::new();
    for _ in 0..200 {
        body = get(addr, "/s").await.body;
        if body != "v0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(body.starts_with(b"v"), "{body:?}");
    assert_ne!(body, "v0");
}

#[tokio::test]
async fn a_shutdown_waits_for_a_background_revalidation() {
    let origin = Origin::start(|_, n| {
        let mut r = reply(
            200,
            &[
                ("cache-control", "max-age=0, stale-while-revalidate=60"),
                ("etag", "\"v1\""),
            ],
            "x",
        );
        if n == 1 {
            r.delay = Duration::from_millis(300);
        }
        r
    })
    .await;
    let (f, addr) = start(&origin, "").await;
    get(addr, "/r").await;
    let stale = get(addr, "/r").await;
    assert!(
        stale.cache_status().contains("stale-while-revalidate"),
        "{}",
        stale.cache_status()
    );
    // The refresh is on its way (or about to be); stop now: the stop returns only once
    // the origin has answered it.
    let report = f.stop().await;
    assert_eq!(report.cut, 0);
    assert_eq!(origin.count(), 2, "the refresh reached the origin");
    assert_eq!(
        origin.answered.load(Ordering::SeqCst),
        2,
        "the stop waited for the refresh"
    );
}

#[tokio::test]
async fn stale_if_error_serves_stale_when_the_origin_fails() {
    let origin = Origin::start(|_, n| {
        if n == 0 {
            reply(
                200,
                &[("cache-control", "max-age=0, stale-if-error=600")],
                "good",
            )
        } else {
            reply(503, &[], "down")
        }
    })
    .await;
    let (_f, addr) = start(&origin, "").await;
    assert_eq!(get(addr, "/e").await.body, "good");
    let r = get(addr, "/e").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "good");
    assert!(
        r.cache_status().contains("fwd-status=503"),
        "{}",
        r.cache_status()
    );
    assert!(r.cache_status().contains("detail=stale-if-error"));
    // The origin gone altogether: still served.
    drop(origin);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = get(addr, "/e").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "good");
    // Without the directive, a failure is the client's to see.
    let strict = Origin::start(|_, n| {
        if n == 0 {
            reply(
                200,
                &[("cache-control", "max-age=0"), ("etag", "\"x\"")],
                "good",
            )
        } else {
            reply(503, &[], "down")
        }
    })
    .await;
    let (_g, addr) = start(&strict, "").await;
    get(addr, "/e").await;
    assert_eq!(get(addr, "/e").await.status, 503);
}

#[tokio::test]
async fn the_store_is_bounded_and_large_objects_stream_through() {
    let origin = Origin::start(|seen, _| {
        let len = if seen.uri.starts_with("/big") {
            64 * 1024
        } else {
            10 * 1024
        };
        reply(200, &[("cache-control", "max-age=600")], pattern(len))
    })
    .await;
    let (f, addr) = start(
        &origin,
        "[cache]\nmax_size = \"48KiB\"\nmax_object_size = \"16KiB\"\n",
    )
    .await;
    // Larger than max_object_size: passes through whole, not stored.
    let big = get(addr, "/big").await;
    assert_eq!(big.body.len(), 64 * 1024);
    assert_eq!(big.body.as_ref(), pattern(64 * 1024).as_slice());
    assert_eq!(big.cache_status(), "fulcrum; fwd=miss");
    assert_eq!(get(addr, "/big").await.cache_status(), "fulcrum; fwd=miss");

    // Ten 10 KiB objects into 48 KiB: the first ones go, the last one stays.
    for i in 0..10 {
        get(addr, &format!("/o{i}")).await;
    }
    assert!(get(addr, "/o9").await.cache_status().contains("hit"));
    assert_eq!(
        get(addr, "/o0").await.cache_status(),
        "fulcrum; fwd=miss; stored"
    );
    let m = common::metrics::scrape(f.admin.unwrap()).await;
    let size: u64 = common::metrics::value(&m, "fulcrum_cache_size_bytes").unwrap() as u64;
    assert!(size > 0 && size <= 48 * 1024, "size {size}");
}

#[tokio::test]
async fn a_broken_or_lying_body_is_not_stored() {
    // Promises 1000 bytes, sends 500, closes.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let s = served.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            s.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf).await;
            let _ = c
                .write_all(b"HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\ncontent-length: 1000\r\n\r\n")
                .await;
            let _ = c.write_all(&[b'x'; 500]).await;
            drop(c);
        }
    });
    let f = Fulcrum::start(&config(addr, "")).await;
    let web = f.addr("web");
    for _ in 0..2 {
        let resp = client()
            .request(
                Request::get(format!("http://{web}/broken"))
                    .body(empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert!(resp.into_body().collect().await.is_err(), "the body breaks");
    }
    assert_eq!(served.load(Ordering::SeqCst), 2, "nothing was stored");
    task.abort();
}

#[tokio::test]
async fn unsafe_methods_pass_through_and_invalidate() {
    let origin = Origin::start(|seen, n| match seen.method {
        Method::GET => reply(200, &[("cache-control", "max-age=600")], format!("get {n}")),
        _ => reply(
            200,
            &[("location", "/other")],
            format!("{} {}", seen.method, seen.body_len),
        ),
    })
    .await;
    let (_f, addr) = start(&origin, "").await;
    get(addr, "/item").await;
    get(addr, "/other").await;
    assert!(get(addr, "/item").await.cache_status().contains("hit"));
    let put = send(
        &client(),
        Request::put(format!("http://{addr}/item"))
            .body(body("12345"))
            .unwrap(),
    )
    .await;
    assert_eq!(put.2, "PUT 5", "forwarded untouched, with its body");
    assert_eq!(put.1["cache-status"], "fulcrum; fwd=method");
    let after = get(addr, "/item").await;
    assert_eq!(after.cache_status(), "fulcrum; fwd=miss; stored");
    // Location on the same host was invalidated too.
    assert_eq!(
        get(addr, "/other").await.cache_status(),
        "fulcrum; fwd=miss; stored"
    );
    // A failed unsafe request invalidates nothing... and OPTIONS never does.
    let before = origin.count();
    request(addr, Method::OPTIONS, "/item", &[]).await;
    assert!(get(addr, "/item").await.cache_status().contains("hit"));
    assert_eq!(origin.count(), before + 1);
}

#[tokio::test]
async fn only_if_cached_gets_504_on_a_miss() {
    let origin = Origin::start(|_, _| reply(200, &[("cache-control", "max-age=60")], "x")).await;
    let (_f, addr) = start(&origin, "").await;
    let r = request(
        addr,
        Method::GET,
        "/oic",
        &[("cache-control", "only-if-cached")],
    )
    .await;
    assert_eq!(r.status, 504);
    assert_eq!(origin.count(), 0);
    get(addr, "/oic").await;
    let r = request(
        addr,
        Method::GET,
        "/oic",
        &[("cache-control", "only-if-cached")],
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn the_admin_api_purges_and_the_metrics_count() {
    let origin =
        Origin::start(|_, n| reply(200, &[("cache-control", "max-age=600")], format!("{n}"))).await;
    let (f, addr) = start(&origin, "").await;
    for p in ["/p/1", "/p/2", "/q"] {
        get(addr, p).await;
    }
    let admin = f.admin.unwrap();
    let (status, _, body) = send(
        &client(),
        Request::post(format!("http://{admin}/cache/purge"))
            .header("content-type", "application/json")
            .body(common::http::body(r#"{"path_prefix": "/p/"}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, r#"{"purged":2}"#);
    let (_, _, status) = send(
        &client(),
        Request::get(format!("http://{admin}/status"))
            .body(empty())
            .unwrap(),
    )
    .await;
    let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
    assert_eq!(status["cache"]["keys"], 1, "{status}");
    assert!(status["cache"]["size_bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        get(addr, "/p/1").await.cache_status(),
        "fulcrum; fwd=miss; stored"
    );
    assert!(get(addr, "/q").await.cache_status().contains("hit"));
    let (status, _, _) = send(
        &client(),
        Request::post(format!("http://{admin}/cache/purge"))
            .header("content-type", "application/json")
            .body(common::http::body(r#"{"host": 3}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    let host = addr.to_string();
    let (_, _, body) = send(
        &client(),
        Request::post(format!("http://{admin}/cache/purge"))
            .header("content-type", "application/json")
            .body(common::http::body(format!(r#"{{"host": "{host}"}}"#)))
            .unwrap(),
    )
    .await;
    assert_eq!(body, r#"{"purged":2}"#);

    request(addr, Method::DELETE, "/q", &[]).await;
    let m = common::metrics::scrape(f.admin.unwrap()).await;
    assert_eq!(
        common::metrics::value(&m, "fulcrum_cache_requests_total{result=\"hit\"}"),
        Some(1.0)
    );
    assert_eq!(
        common::metrics::value(&m, "fulcrum_cache_requests_total{result=\"miss\"}"),
        Some(4.0)
    );
    assert_eq!(
        common::metrics::value(&m, "fulcrum_cache_requests_total{result=\"bypass\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn last_modified_validates_and_must_revalidate_fails_closed() {
    const LM: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    let origin = Origin::start(|seen, n| {
        if seen
            .headers
            .get("if-modified-since")
            .is_some_and(|v| v == LM)
        {
            reply(304, &[], "")
        } else if n == 0 {
            reply(
                200,
                &[("last-modified", LM), ("cache-control", "max-age=0")],
                "dated",
            )
        } else {
            reply(
                200,
                &[
                    ("etag", "\"m\""),
                    ("cache-control", "max-age=0, must-revalidate"),
                ],
                "strict",
            )
        }
    })
    .await;
    let (_f, addr) = start(&origin, "").await;
    get(addr, "/lm").await;
    let r = get(addr, "/lm").await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_ref()),
        (200, b"dated".as_ref())
    );
    assert!(
        r.cache_status().contains("fwd-status=304"),
        "{}",
        r.cache_status()
    );
    assert_eq!(origin.last().headers["if-modified-since"], LM);

    // One answer, then the origin is gone: revalidation is impossible, and a
    // must-revalidate response is not served stale but answered 504.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone = listener.local_addr().unwrap();
    let once = tokio::spawn(async move {
        let (mut c, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = c.read(&mut buf).await;
        let _ = c
            .write_all(b"HTTP/1.1 200 OK\r\netag: \"m\"\r\ncache-control: max-age=0, must-revalidate\r\ncontent-length: 6\r\nconnection: close\r\n\r\nstrict")
            .await;
    });
    let g = Fulcrum::start(&config(gone, "")).await;
    let web = g.addr("web");
    assert_eq!(get(web, "/strict").await.body, "strict");
    once.await.unwrap();
    let r = get(web, "/strict").await;
    assert_eq!(r.status, 504);
    assert!(
        r.cache_status().contains("fwd=stale"),
        "{}",
        r.cache_status()
    );
    // An origin that cannot be reached at all: the error says so in Cache-Status too.
    let r = get(web, "/never-stored").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.cache_status(), "fulcrum; fwd=miss");
    let m = common::metrics::scrape(g.admin.unwrap()).await;
    // /strict: miss, then the failed revalidation; /never-stored: the failure.
    assert_eq!(
        common::metrics::value(&m, "fulcrum_cache_requests_total{result=\"miss\"}"),
        Some(3.0)
    );
}

#[tokio::test]
async fn a_304_for_another_response_is_not_passed_to_an_unconditional_client() {
    let origin = Origin::start(|seen, n| {
        if n == 0 {
            reply(
                200,
                &[("etag", "\"abc\""), ("cache-control", "max-age=0")],
                "old",
            )
        } else if seen.headers.contains_key("if-none-match") {
            reply(304, &[("etag", "\"xyz\"")], "")
        } else {
            reply(
                200,
                &[("etag", "\"xyz\""), ("cache-control", "max-age=0")],
                "new",
            )
        }
    })
    .await;
    let (_f, addr) = start(&origin, "").await;
    assert_eq!(get(addr, "/t").await.body, "old");
    let r = get(addr, "/t").await;
    assert_eq!((r.status.as_u16(), r.body.as_ref()), (200, b"new".as_ref()));
    assert!(!origin.last().headers.contains_key("if-none-match"));
}

#[tokio::test]
async fn the_cache_survives_a_reload_unless_its_sizes_change() {
    let origin =
        Origin::start(|_, n| reply(200, &[("cache-control", "max-age=600")], format!("{n}"))).await;
    let dir = std::env::temp_dir().join(format!("fulcrum-cache-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("fulcrum.toml");
    std::fs::write(&file, config(origin.addr, "")).unwrap();
    let f = Fulcrum::start_at(&config(origin.addr, ""), &file).await;
    let (addr, admin) = (f.addr("web"), f.admin.unwrap());
    let reload = || async move {
        let (status, _, body) = send(
            &client(),
            Request::post(format!("http://{admin}/reload"))
                .body(empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{body:?}");
    };
    get(addr, "/r").await;
    reload().await;
    assert!(get(addr, "/r").await.cache_status().contains("hit"));
    std::fs::write(
        &file,
        config(origin.addr, "[cache]\nmax_size = \"32MiB\"\n"),
    )
    .unwrap();
    reload().await;
    assert_eq!(
        get(addr, "/r").await.cache_status(),
        "fulcrum; fwd=miss; stored"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A raw HTTP/1.1 origin: every request gets `head` then `body` written as they are.
async fn raw_origin(head: String, body: Bytes) -> (SocketAddr, Arc<AtomicUsize>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let (head, body, c) = (head.clone(), body.clone(), c.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    c.fetch_add(1, Ordering::SeqCst);
                    if s.write_all(head.as_bytes()).await.is_err()
                        || s.write_all(&body).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, count, task)
}

#[tokio::test]
async fn a_slow_client_that_leads_a_miss_holds_back_no_one() {
    let size = 8 << 20;
    let body = Bytes::from(pattern(size));
    let (origin, count, task) = raw_origin(
        format!("HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ncontent-length: {size}\r\n\r\n"),
        body.clone(),
    )
    .await;
    let f = Fulcrum::start(&config(
        origin,
        "[cache]\nmax_size = \"64MiB\"\nmax_object_size = \"16MiB\"\n",
    ))
    .await;
    let addr = f.addr("web");
    // The leader asks and then reads nothing: megabytes wait in the socket buffers.
    let mut leader = tokio::net::TcpStream::connect(addr).await.unwrap();
    leader
        .write_all(b"GET /big HTTP/1.1\r\nhost: cached.example\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 16];
    leader.read_exact(&mut first).await.unwrap();
    assert_eq!(&first[..12], b"HTTP/1.1 200");
    // Another client gets the whole response at its own pace, from the same fill.
    let (status, headers, got) = send(
        &client(),
        Request::get(format!("http://{addr}/big"))
            .header("host", "cached.example")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(got.len(), size);
    assert!(got == body, "the body arrived intact");
    assert!(
        headers["cache-status"].to_str().unwrap().contains("hit"),
        "{headers:?}"
    );
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "one request reached the origin"
    );
    drop(leader);
    task.abort();
}

#[tokio::test]
async fn responses_past_max_inflight_stream_unstored() {
    let body = Bytes::from(pattern(4096));
    let (origin, count, task) = raw_origin(
        "HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ncontent-length: 4096\r\n\r\n".into(),
        body.clone(),
    )
    .await;
    let f = Fulcrum::start(&config(origin, "[cache]\nmax_inflight = \"1KiB\"\n")).await;
    let addr = f.addr("web");
    for _ in 0..2 {
        let g = get(addr, "/over-budget").await;
        assert_eq!(g.body, body);
        assert_eq!(g.cache_status(), "fulcrum; fwd=miss");
    }
    assert_eq!(count.load(Ordering::SeqCst), 2);
    task.abort();

    // Without a declared length the copy is held to the budget as it grows.
    let (origin, count, task) = raw_origin(
        "HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ntransfer-encoding: chunked\r\n\r\n".into(),
        Bytes::from(format!("1000\r\n{}\r\n0\r\n\r\n", "x".repeat(4096))),
    )
    .await;
    let f2 = Fulcrum::start(&config(origin, "[cache]\nmax_inflight = \"1KiB\"\n")).await;
    let addr = f2.addr("web");
    for _ in 0..2 {
        let g = get(addr, "/chunked").await;
        assert_eq!(g.body.len(), 4096);
    }
    assert_eq!(count.load(Ordering::SeqCst), 2, "nothing was stored");
    task.abort();
    drop(f);
}
