//! The HTTP engine against real sockets: a real fulcrum between real clients and real
//! hyper backends on loopback.

mod common;

use std::time::Duration;

use common::http::*;
use common::Fulcrum;
use http::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn upstream(name: &str, backends: &[&HttpBackend]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ address = \"{}\", name = \"{}\" }}", b.addr, b.name))
        .collect();
    format!("[upstream.{name}]\nbackends = [{}]\n", list.join(", "))
}

/// An http listener "web" on port 0 with `listener` keys and routes, then upstreams.
fn web(listener: &str, rest: &str) -> String {
    format!("[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n{listener}\n{rest}")
}

#[tokio::test]
async fn routes_match_host_path_method_and_headers_in_order() {
    let api = HttpBackend::start("api").await;
    let wild = HttpBackend::start("wild").await;
    let post = HttpBackend::start("post").await;
    let canary = HttpBackend::start("canary").await;
    let dflt = HttpBackend::start("default").await;
    let config = web(
        "upstream = \"dflt\"\n\
         [[listener.route]]\nhost = \"api.example.com\"\npath_prefix = \"/v1/\"\nupstream = \"api\"\n\
         [[listener.route]]\nheaders = { \"X-Canary\" = \"1\" }\nupstream = \"canary\"\n\
         [[listener.route]]\nhost = \"*.example.com\"\nupstream = \"wild\"\n\
         [[listener.route]]\nmethods = [\"POST\"]\nupstream = \"post\"\n",
        &[
            upstream("api", &[&api]),
            upstream("wild", &[&wild]),
            upstream("post", &[&post]),
            upstream("canary", &[&canary]),
            upstream("dflt", &[&dflt]),
        ]
        .concat(),
    );
    let f = Fulcrum::start(&config).await;
    let addr = f.addr("web");
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("GET", "/v1/users", &[("host", "api.example.com")], "api"),
        (
            "GET",
            "/v1/users",
            &[("host", "API.Example.COM:8443")],
            "api",
        ),
        ("GET", "/v2/users", &[("host", "api.example.com")], "wild"),
        ("GET", "/", &[("host", "a.b.example.com")], "wild"),
        ("GET", "/", &[("host", "example.com")], "default"),
        (
            "GET",
            "/",
            &[("host", "x.example.com"), ("x-canary", "1")],
            "canary",
        ),
        (
            "GET",
            "/v1/x",
            &[("host", "api.example.com"), ("x-canary", "1")],
            "api",
        ),
        (
            "GET",
            "/",
            &[("host", "other.org"), ("x-canary", "2")],
            "default",
        ),
        ("POST", "/", &[("host", "other.org")], "post"),
        ("POST", "/", &[("host", "q.example.com")], "wild"),
    ];
    for (method, path, headers, expected) in cases {
        let mut b = Request::builder()
            .method(*method)
            .uri(format!("http://{addr}{path}"));
        for (k, v) in headers.iter() {
            b = b.header(*k, *v);
        }
        let (status, h, _) = send(&client(), b.body(empty()).unwrap()).await;
        assert_eq!(status, 200);
        assert_eq!(h["x-backend"], *expected, "{method} {path} {headers:?}");
    }
    f.stop().await;
}

#[tokio::test]
async fn without_a_match_or_default_the_answer_is_404_naming_nothing() {
    let api = HttpBackend::start("api").await;
    let config = web(
        "[[listener.route]]\npath_prefix = \"/api/\"\nupstream = \"api\"\n",
        &upstream("api", &[&api]),
    );
    let f = Fulcrum::start(&config).await;
    let (status, h, body) = get(f.addr("web"), "/other").await;
    assert_eq!(status, 404);
    assert_eq!(h["content-type"], "text/plain; charset=utf-8");
    assert_eq!(body, "404 Not Found\n");
    assert!(api.requests().is_empty());
    f.stop().await;
}

#[tokio::test]
async fn forwarded_headers_follow_the_rules() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&web("upstream = \"app\"", &upstream("app", &[&b]))).await;
    let addr = f.addr("web");
    let (status, resp_headers, _) = get_with(
        addr,
        "/path?q=1",
        &[
            ("host", "shop.example.com"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("connection", "x-private"),
            ("x-private", "secret"),
            ("te", "trailers"),
            ("x-custom", "kept"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let seen = b.last();
    let h = &seen.headers;
    assert_eq!(seen.uri, "/path?q=1");
    assert_eq!(h["host"], "shop.example.com");
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example.com");
    assert_eq!(h["x-custom"], "kept");
    assert!(
        !h.contains_key("x-private"),
        "header named by Connection forwarded"
    );
    assert!(!h.contains_key("te"));
    assert!(!h.contains_key("keep-alive"));
    assert_eq!(h["x-request-id"].len(), 32, "a request id is created");
    // The backend's own hop-by-hop headers do not reach the client.
    assert!(!resp_headers.contains_key("x-hop"));
    assert!(!resp_headers.contains_key("keep-alive"));
    assert_eq!(resp_headers["x-backend"], "b");

    get_with(addr, "/", &[("x-request-id", "abc-123")]).await;
    assert_eq!(
        b.last().headers["x-request-id"],
        "abc-123",
        "a client's request id is kept"
    );
    f.stop().await;
}

/// What a client sending `bytes` reads back until the connection ends (10 s at most).
async fn answer_to(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the connection stays open after {got:?}"),
        }
    }
}

#[tokio::test]
async fn h2c_only_and_off_listeners_speak_one_version() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&format!(
        "{}{}",
        web("upstream = \"app\"\nh2c = \"only\"", ""),
        web("upstream = \"app\"\nh2c = \"off\"", &upstream("app", &[&b]))
            .replace("name = \"web\"", "name = \"old\"")
    ))
    .await;
    let (only, off) = (f.addr("web"), f.addr("old"));
    let h2 = |addr| {
        Request::get(format!("http://{addr}/"))
            .body(empty())
            .unwrap()
    };
    // Prior knowledge is served; bytes that are not the preface are an HTTP/2
    // connection error (the connection ends; HTTP/1 gets no answer of its own).
    assert_eq!(send(&h2c_client(), h2(only)).await.0, 200);
    for bytes in [
        &b"INVALID CONNECTION PREFACE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nhost: a\r\n\r\n",
    ] {
        let got = answer_to(only, bytes).await;
        assert!(!got.starts_with(b"HTTP/"), "{got:?}");
        if !got.is_empty() {
            assert_eq!(
                got.get(3),
                Some(&0x4),
                "HTTP/2 frames, SETTINGS first: {got:?}"
            );
        }
    }
    // `off`: HTTP/1.1 only; a preface is not served (no HTTP/2 SETTINGS come back).
    assert_eq!(get(off, "/").await.0, StatusCode::OK);
    let got = answer_to(off, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    assert!(got.is_empty() || got.starts_with(b"HTTP/1.1 "), "{got:?}");
    assert!(!got.starts_with(b"HTTP/1.1 200"), "{got:?}");
    assert_eq!(b.requests().len(), 2);
    f.stop().await;
}

#[tokio::test]
async fn http2_prior_knowledge_is_served_and_forwarded_as_http1() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&web("upstream = \"app\"", &upstream("app", &[&b]))).await;
    let addr = f.addr("web");
    let req = Request::get(format!("http://{addr}/h2?x=1"))
        .body(empty())
        .unwrap();
    let (status, h, body) = send(&h2c_client(), req).await;
    assert_eq!(status, 200);
    assert_eq!(body, "b");
    assert_eq!(h["x-backend"], "b");
    let seen = b.last();
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.uri, "/h2?x=1");
    assert_eq!(seen.headers["host"], addr.to_string());
    assert_eq!(seen.headers["x-forwarded-host"], addr.to_string());
    f.stop().await;
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&web("upstream = \"app\"", &upstream("app", &[&b]))).await;
    let addr = f.addr("web");
    let c = client();
    for _ in 0..20 {
        let req = Request::get(format!("http://{addr}/"))
            .body(empty())
            .unwrap();
        assert_eq!(send(&c, req).await.0, 200);
    }
    assert_eq!(b.requests().len(), 20);
    assert_eq!(
        b.accepted(),
        1,
        "sequential requests share one upstream connection"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_mebibytes_go_up_and_down_intact() {
    const LEN: usize = 20 << 20;
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&web("upstream = \"app\"", &upstream("app", &[&b]))).await;
    let addr = f.addr("web");
    let data = pattern(LEN);
    let req = Request::post(format!("http://{addr}/echo"))
        .body(body(data.clone()))
        .unwrap();
    let (status, _, echoed) = send(&client(), req).await;
    assert_eq!(status, 200);
    assert_eq!(echoed.len(), LEN);
    assert!(echoed == data, "uploaded bytes came back changed");

    let (status, h, down) = get(addr, &format!("/bytes/{LEN}")).await;
    assert_eq!(status, 200);
    assert_eq!(h["content-length"], LEN.to_string());
    assert!(down == data, "downloaded bytes differ");
    f.stop().await;
}

#[tokio::test]
async fn an_upgrade_passes_through_both_ways() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&web("upstream = \"app\"", &upstream("app", &[&b]))).await;
    let mut s = tokio::net::TcpStream::connect(f.addr("web")).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut byte))
            .await
            .expect("101 in time")
            .unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    let seen = b.last();
    assert_eq!(seen.headers["upgrade"], "websocket");
    for msg in [&b"ping"[..], b"a longer message"] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
            .await
            .expect("echo in time")
            .unwrap();
        assert_eq!(back, msg);
    }
    drop(s);
    f.stop().await;
}

#[tokio::test]
async fn denied_clients_get_403() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&web(
        "upstream = \"app\"\ndeny = [\"127.0.0.0/8\"]",
        &upstream("app", &[&b]),
    ))
    .await;
    let (status, _, body) = get(f.addr("web"), "/").await;
    assert_eq!(status, 403);
    assert_eq!(body, "403 Forbidden\n");
    assert!(b.requests().is_empty());
    f.stop().await;
}

#[tokio::test]
async fn bodies_over_max_body_size_get_413() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&web(
        "upstream = \"app\"\nmax_body_size = \"1KiB\"",
        &upstream("app", &[&b]),
    ))
    .await;
    let addr = f.addr("web");
    // Declared too large: refused before the backend hears of it.
    let req = Request::post(format!("http://{addr}/echo"))
        .body(body(vec![b'x'; 2048]))
        .unwrap();
    assert_eq!(send(&client(), req).await.0, 413);
    assert!(b.requests().is_empty());
    // Chunked, found too large on the way.
    let raw = format!(
        "POST /upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n800\r\n{}\r\n0\r\n\r\n",
        "y".repeat(2048)
    );
    let resp = raw_exchange(addr, raw.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    // Small enough: forwarded.
    let req = Request::post(format!("http://{addr}/echo"))
        .body(body(vec![b'x'; 1024]))
        .unwrap();
    assert_eq!(send(&client(), req).await.2.len(), 1024);
    f.stop().await;
}

#[tokio::test]
async fn headers_over_max_header_size_get_431() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&web(
        "upstream = \"app\"\nmax_header_size = \"16KiB\"",
        &upstream("app", &[&b]),
    ))
    .await;
    let raw = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let resp = raw_exchange(f.addr("web"), raw.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    assert!(b.requests().is_empty());
    f.stop().await;
}

#[tokio::test]
async fn a_refused_connect_is_retried_even_with_a_body() {
    let b = HttpBackend::start("good").await;
    let dead = common::refusing_addr().await;
    let config = web(
        "upstream = \"app\"",
        &format!(
            "[upstream.app]\nretries = 1\nbackends = [{{ address = \"{dead}\", name = \"dead\" }}, {{ address = \"{}\", name = \"good\" }}]\n",
            b.addr
        ),
    );
    let f = Fulcrum::start(&config).await;
    let addr = f.addr("web");
    for _ in 0..4 {
        let req = Request::post(format!("http://{addr}/echo"))
            .body(body("payload"))
            .unwrap();
        let (status, _, got) = send(&client(), req).await;
        assert_eq!(status, 200);
        assert_eq!(got, "payload");
    }
    f.stop().await;
}

#[tokio::test]
async fn every_connect_failing_gives_502() {
    let dead = common::refusing_addr().await;
    let config = web(
        "upstream = \"app\"",
        &format!(
            "[upstream.app]\nbackends = [{{ address = \"{dead}\", name = \"secret-backend\" }}]\n"
        ),
    );
    let f = Fulcrum::start(&config).await;
    let (status, _, body) = get(f.addr("web"), "/").await;
    assert_eq!(status, 502);
    assert_eq!(body, "502 Bad Gateway\n");
    f.stop().await;
}

#[tokio::test]
async fn an_invalid_response_gives_502_and_an_idempotent_request_is_retried() {
    let (bad, _task) = raw_backend(b"NOT HTTP AT ALL\r\n\r\n").await;
    let good = HttpBackend::start("good").await;
    let config = web(
        "upstream = \"app\"",
        &format!(
            "[upstream.app]\nretries = 0\nbackends = [{{ address = \"{bad}\", name = \"bad\" }}, {{ address = \"{}\", name = \"good\" }}]\n",
            good.addr
        ),
    );
    let f = Fulcrum::start(&config).await;
    let (first, _, _) = get(f.addr("web"), "/").await;
    let (second, _, _) = get(f.addr("web"), "/").await;
    assert_eq!((first, second), (StatusCode::BAD_GATEWAY, StatusCode::OK));
    f.stop().await;

    // A backend that closes without answering: a GET is retried elsewhere...
    let (closing, _task2) = raw_backend(b"").await;
    let config = web(
        "upstream = \"app\"",
        &format!(
            "[upstream.app]\nretries = 1\nbackends = [{{ address = \"{closing}\", name = \"closing\" }}, {{ address = \"{}\", name = \"good\" }}]\n",
            good.addr
        ),
    );
    let f = Fulcrum::start(&config).await;
    let addr = f.addr("web");
    let before = good.requests().len();
    for _ in 0..4 {
        assert_eq!(get(addr, "/").await.0, 200);
    }
    assert_eq!(good.requests().len() - before, 4);
    // ... but a POST whose body was sent is not.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let req = Request::post(format!("http://{addr}/echo"))
            .body(body("once"))
            .unwrap();
        statuses.push(send(&client(), req).await.0.as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 502]);
    f.stop().await;
}

#[tokio::test]
async fn no_eligible_backend_gives_503_with_retry_after() {
    let b = HttpBackend::start("b").await;
    let config = web(
        "upstream = \"app\"",
        &format!(
            "[upstream.app]\nbackends = [{{ address = \"{}\", weight = 0 }}]\n",
            b.addr
        ),
    );
    let f = Fulcrum::start(&config).await;
    let (status, h, body) = get(f.addr("web"), "/").await;
    assert_eq!(status, 503);
    assert_eq!(h["retry-after"], "1");
    assert_eq!(body, "503 Service Unavailable\n");
    f.stop().await;
}

#[tokio::test]
async fn over_max_connections_a_connection_gets_503_and_is_closed() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&web(
        "upstream = \"app\"\nmax_connections = 1",
        &upstream("app", &[&b]),
    ))
    .await;
    let addr = f.addr("web");
    let mut held = tokio::net::TcpStream::connect(addr).await.unwrap();
    held.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 12];
    held.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    let resp = raw_exchange(addr, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(resp.to_ascii_lowercase().contains("retry-after: 1"));
    drop(held);
    f.stop().await;
}

#[tokio::test]
async fn a_backend_slower_than_the_route_timeout_gives_504() {
    let b = HttpBackend::start("b").await;
    let config = web(
        "[[listener.route]]\nupstream = \"app\"\ntimeout = \"200ms\"\n",
        &upstream("app", &[&b]),
    );
    let f = Fulcrum::start(&config).await;
    let (status, _, body) = get(f.addr("web"), "/slow/5000").await;
    assert_eq!(status, 504);
    assert_eq!(body, "504 Gateway Timeout\n");
    f.stop().await;
}

#[tokio::test]
async fn with_abort_on_close_a_client_that_goes_away_cancels_the_upstream_request() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&web(
        "upstream = \"app\"\nabort_on_close = true",
        &upstream("app", &[&b]),
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(f.addr("web")).await.unwrap();
    s.write_all(b"GET /slow/20000 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    common::eventually(
        "the request reached the backend",
        common::PATIENCE,
        || async { !b.requests().is_empty() },
    )
    .await;
    assert_eq!(b.requests().len(), 1, "one request reached the backend");
    drop(s);
    common::eventually(
        "the backend's request was not cancelled",
        common::PATIENCE,
        || async { b.abandoned.load(std::sync::atomic::Ordering::SeqCst) == 1 },
    )
    .await;
    f.stop().await;
}

/// Reads until the peer closes; `None` if it stays open longer than the patience.
async fn read_to_close(s: &mut tokio::net::TcpStream) -> Option<String> {
    let mut out = Vec::new();
    tokio::time::timeout(common::PATIENCE, s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_request_still_gets_the_response() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&web("upstream = \"app\"", &upstream("app", &[&b]))).await;
    // A bodiless request, then the write side shut (as `printf ... | nc -N` does); the
    // backend takes its time, so the close arrives while the request is in flight.
    let mut s = tokio::net::TcpStream::connect(f.addr("web")).await.unwrap();
    s.write_all(b"GET /slow/300 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let resp = read_to_close(&mut s).await.expect("answered, then closed");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(b.abandoned.load(std::sync::atomic::Ordering::SeqCst), 0);
    // A request with a whole body, then the shut: the body arrives, the echo comes back.
    let mut s = tokio::net::TcpStream::connect(f.addr("web")).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let resp = read_to_close(&mut s).await.expect("answered, then closed");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("hello"), "{resp}");
    // Two pipelined requests, then the shut: both are answered, in order.
    let mut s = tokio::net::TcpStream::connect(f.addr("web")).await.unwrap();
    s.write_all(b"GET /one HTTP/1.1\r\nhost: x\r\n\r\nGET /two HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let resp = read_to_close(&mut s).await.expect("answered, then closed");
    assert_eq!(resp.matches("HTTP/1.1 200").count(), 2, "{resp}");
    f.stop().await;
}

#[tokio::test]
async fn a_client_that_half_closes_inside_its_body_is_an_aborted_upload() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&web("upstream = \"app\"", &upstream("app", &[&b]))).await;
    let mut s = tokio::net::TcpStream::connect(f.addr("web")).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let resp = read_to_close(&mut s)
        .await
        .expect("the connection is closed");
    assert!(
        !resp.contains(" 200 "),
        "no success for a cut upload: {resp}"
    );
    // The backend never got the whole body: the upload was cut there too.
    assert!(
        b.requests().iter().all(|r| r.body_len < 100),
        "{:?}",
        b.requests()
    );
    f.stop().await;
}

#[tokio::test]
async fn malformed_requests_get_400_and_never_reach_a_backend() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&web("upstream = \"app\"", &upstream("app", &[&b]))).await;
    let addr = f.addr("web");
    for raw in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nhost: x\r\nbad header\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n",
    ] {
        let resp = raw_exchange(addr, raw).await;
        assert!(
            resp.starts_with("HTTP/1.1 400"),
            "{:?} -> {resp}",
            String::from_utf8_lossy(raw)
        );
    }
    assert!(b.requests().is_empty());
    f.stop().await;
}

#[tokio::test]
async fn smuggling_attempts_never_reach_a_backend_as_two_requests() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&web("upstream = \"app\"", &upstream("app", &[&b]))).await;
    let addr = f.addr("web");
    let smuggled = "GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n";
    // (request, the status line it must get)
    let attempts = [
        // Content-Length and Transfer-Encoding together: chunked wins, the connection
        // closes after the response (RFC 9112 6.1), so what follows is never read.
        (format!("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"), "HTTP/1.1 200"),
        // Two different Content-Length values.
        (format!("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\ncontent-length: {}\r\n\r\n{smuggled}", smuggled.len()), "HTTP/1.1 400"),
        // An obs-fold continuation line.
        (format!("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nx-folded: a\r\n b\r\n\r\n{smuggled}"), "HTTP/1.1 400"),
        // A bare LF inside the head: read as a line end, so the rest is this request's body.
        (format!("POST / HTTP/1.1\r\nhost: x\nx: y\r\ncontent-length: {}\r\n\r\n{smuggled}", smuggled.len()), "HTTP/1.1 200"),
        // Transfer-Encoding whose last coding is not chunked.
        (format!("POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: identity, chunked, x\r\n\r\n0\r\n\r\n{smuggled}"), "HTTP/1.1 400"),
    ];
    for (raw, expected) in &attempts {
        let resp = raw_exchange_within(addr, raw.as_bytes(), Duration::from_secs(1)).await;
        assert!(resp.starts_with(expected), "{raw:?} -> {resp}");
        // Whatever the answer, it is at most one response.
        assert_eq!(resp.matches("HTTP/1.1 ").count(), 1, "{raw:?} -> {resp}");
    }
    let seen = b.requests();
    assert!(
        !seen.iter().any(|r| r.uri.contains("smuggled")),
        "a smuggled request reached the backend: {seen:?}"
    );
    f.stop().await;
}

#[tokio::test]
async fn a_client_too_slow_with_its_headers_is_cut_at_header_timeout() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&web(
        "upstream = \"app\"\nheader_timeout = \"300ms\"",
        &upstream("app", &[&b]),
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(f.addr("web")).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    assert!(closed.is_ok(), "connection still open");
    assert!(b.requests().is_empty());
    f.stop().await;
}

#[tokio::test]
async fn redirect_https_answers_308_to_the_same_host_and_path() {
    let f = Fulcrum::start(&web("redirect_https = true", "")).await;
    let (status, h, _) = get_with(
        f.addr("web"),
        "/a/b?c=d",
        &[("host", "shop.example.com:8080")],
    )
    .await;
    assert_eq!(status, 308);
    assert_eq!(h["location"], "https://shop.example.com/a/b?c=d");
    f.stop().await;
}

#[tokio::test]
async fn the_route_timeout_starts_after_a_slow_upload_is_complete() {
    let b = HttpBackend::start("b").await;
    let config = web(
        "[[listener.route]]\nupstream = \"app\"\ntimeout = \"500ms\"\n",
        &upstream("app", &[&b]),
    );
    let f = Fulcrum::start(&config).await;
    let mut s = tokio::net::TcpStream::connect(f.addr("web")).await.unwrap();
    // /bytes/0 answers only after reading the whole body: ten bytes over 1.5 seconds.
    s.write_all(b"POST /bytes/0 HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        s.write_all(b"z").await.unwrap();
    }
    let mut buf = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    assert_eq!(b.last().body_len, 10);
    f.stop().await;
}

#[tokio::test]
async fn a_keep_alive_connection_outlives_header_timeout_while_idle() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&web(
        "upstream = \"app\"\nheader_timeout = \"200ms\"\nidle_timeout = \"10s\"",
        &upstream("app", &[&b]),
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(f.addr("web")).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
            .await
            .expect("an answer")
            .expect("the connection is still open");
        assert_eq!(&buf, b"HTTP/1.1 200");
        let mut rest = [0u8; 512];
        let _ = tokio::time::timeout(Duration::from_millis(200), s.read(&mut rest)).await;
        // Idle for longer than header_timeout, well within idle_timeout.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    drop(s);
    f.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_idle_timeout() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&web(
        "upstream = \"app\"\nidle_timeout = \"300ms\"",
        &upstream("app", &[&b]),
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(f.addr("web")).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // The response, then the server's close (EOF) once the connection sat idle:
    // reading to the end finishes only if fulcrum closes it.
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let resp = String::from_utf8_lossy(&out);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        !resp.to_ascii_lowercase().contains("connection: close"),
        "a keep-alive response: the close comes from the idle timeout: {resp}"
    );
    assert!(
        matches!(closed, Ok(Ok(_))),
        "the idle connection was not closed: {closed:?}"
    );
    f.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_the_backend_released() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&web(
        "upstream = \"app\"\nidle_timeout = \"300ms\"",
        &upstream("app", &[&b]),
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(f.addr("web")).await.unwrap();
    s.write_all(b"GET /bytes/67108864 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let backend = f.backend("app", "b");
    common::eventually(
        "the request never reached the backend",
        common::PATIENCE,
        || async { backend.state.active() == 1 },
    )
    .await;
    // Never read: the response stalls once the socket buffers are full.
    common::eventually(
        "a stalled response held its backend",
        common::PATIENCE,
        || async { backend.state.active() == 0 },
    )
    .await;
    drop(s);
    f.stop().await;
}

#[tokio::test]
async fn requests_with_no_host_or_two_hosts_get_400() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&web("upstream = \"app\"", &upstream("app", &[&b]))).await;
    let addr = f.addr("web");
    let resp = raw_exchange(addr, b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    let resp = raw_exchange(addr, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(b.requests().is_empty());
    f.stop().await;
}

#[tokio::test]
async fn an_empty_post_still_says_its_length_and_http2_cookies_arrive_as_one() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&web("upstream = \"app\"", &upstream("app", &[&b]))).await;
    let addr = f.addr("web");
    let req = Request::post(format!("http://{addr}/"))
        .body(empty())
        .unwrap();
    assert_eq!(send(&client(), req).await.0, 200);
    assert_eq!(b.last().headers["content-length"], "0");
    let req = Request::get(format!("http://{addr}/"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(empty())
        .unwrap();
    assert_eq!(send(&h2c_client(), req).await.0, 200);
    let seen = b.last();
    let cookies: Vec<_> = seen.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1; b=2"]);
    f.stop().await;
}
