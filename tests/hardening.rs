//! What a hostile client or a broken backend can send, against a real fulcrum: no
//! response reaches a client it was not built for, nothing panics, every refusal has
//! its status.

mod common;

use std::time::Duration;

use common::http::*;
use common::Fulcrum;
use http::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn upstream(name: &str, backends: &[&HttpBackend]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ address = \"{}\", name = \"{}\" }}", b.addr, b.name))
        .collect();
    format!(
        "[upstream.{name}]\nretries = 0\nbackends = [{}]\n",
        list.join(", ")
    )
}

fn web(listener: &str, rest: &str) -> String {
    format!(
        "[global]\naccess_log = false\nwatch_config = false\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n{listener}\n{rest}"
    )
}

/// Writes `raw` and reads one response head and its `content-length` body.
async fn exchange(s: &mut TcpStream, raw: &[u8]) -> String {
    s.write_all(raw).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            Ok(_) => break,
            Err(_) => panic!("no response in time"),
        }
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let len = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut body)).await;
    format!("{text}{}", String::from_utf8_lossy(&body))
}

/// Whether the peer closes the connection (rather than waiting for more).
async fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn an_absolute_target_that_disagrees_with_host_is_refused_and_never_stored() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&web(
        "[[listener.route]]\nupstream = \"app\"\ncache = true\n",
        &upstream("app", &[&b]),
    ))
    .await;
    let addr = f.addr("web");
    let mut s = TcpStream::connect(addr).await.unwrap();
    let got = exchange(
        &mut s,
        b"GET http://evil.example/x HTTP/1.1\r\nhost: www.victim.example\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("http/1.1 400"), "{got}");
    assert!(got.contains("connection: close"), "{got}");
    assert!(closed(&mut s).await, "the connection closes after a 400");
    assert_eq!(b.requests().len(), 0, "nothing reached the backend");

    // Agreeing forms are one and the same host, whatever the case or default port.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let got = exchange(
        &mut s,
        b"GET http://WWW.Victim.Example:80/x HTTP/1.1\r\nhost: www.victim.example\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("http/1.1 200"), "{got}");
    let seen = b.last();
    assert_eq!(seen.headers["host"], "www.victim.example");
    assert_eq!(seen.headers["x-forwarded-host"], "www.victim.example");
}

#[tokio::test]
async fn malformed_hosts_get_400() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&web("upstream = \"app\"", &upstream("app", &[&b]))).await;
    let addr = f.addr("web");
    for raw in [
        &b"GET /x HTTP/1.1\r\nhost: a.example\r\nhost: b.example\r\n\r\n"[..],
        b"GET /x HTTP/1.1\r\n\r\n",
        b"GET /x HTTP/1.1\r\nhost: user@a.example\r\n\r\n",
        b"GET /x HTTP/1.1\r\nhost: a.example:99999\r\n\r\n",
        b"GET /x HTTP/1.1\r\nhost: a.example/evil\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let got = exchange(&mut s, raw).await;
        assert!(
            got.starts_with("http/1.1 400"),
            "{}\n{got}",
            String::from_utf8_lossy(raw)
        );
    }
    assert_eq!(b.requests().len(), 0);
}

#[tokio::test]
async fn an_h2_authority_that_disagrees_with_host_is_refused() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&web("upstream = \"app\"", &upstream("app", &[&b]))).await;
    let addr = f.addr("web");
    let req = Request::get(format!("http://{addr}/x"))
        .header("host", "other.example")
        .body(empty())
        .unwrap();
    let (status, _, _) = send(&h2c_client(), req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let req = Request::get(format!("http://{addr}/x"))
        .body(empty())
        .unwrap();
    let (status, _, _) = send(&h2c_client(), req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(b.requests().len(), 1);
    assert_eq!(b.last().headers["host"], addr.to_string());
}

#[tokio::test]
async fn the_forwarded_host_is_lower_case_without_its_default_port() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&web("upstream = \"app\"", &upstream("app", &[&b]))).await;
    let addr = f.addr("web");
    let (status, _, _) = get_with(addr, "/a", &[("host", "Example.COM:80")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(b.last().headers["host"], "example.com");
    assert_eq!(b.last().headers["x-forwarded-host"], "example.com");
    let (status, _, _) = get_with(addr, "/a", &[("host", "Example.COM:8080")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(b.last().headers["host"], "example.com:8080");
}

#[tokio::test]
async fn a_denied_client_gets_403_and_the_connection_closes() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&web(
        "upstream = \"app\"\ndeny = [\"127.0.0.0/8\"]",
        &upstream("app", &[&b]),
    ))
    .await;
    let mut s = TcpStream::connect(f.addr("web")).await.unwrap();
    let got = exchange(&mut s, b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n").await;
    assert!(got.starts_with("http/1.1 403"), "{got}");
    assert!(closed(&mut s).await, "the connection closes after a 403");
    assert_eq!(b.requests().len(), 0);
}

/// Reads one response head byte by byte (an upgraded stream follows it).
async fn head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut byte))
            .await
            .expect("a response head in time")
            .unwrap();
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap().to_ascii_lowercase()
}

/// Sends an upgrade request and checks it is answered 101 and then echoed both ways.
async fn tunnels(addr: std::net::SocketAddr, request: &[u8]) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let h = head(&mut s).await;
    assert!(h.starts_with("http/1.1 101"), "{h}");
    echoes(&mut s).await;
}

async fn echoes(s: &mut TcpStream) {
    s.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(&back, b"ping");
}

#[tokio::test]
async fn a_websocket_on_a_cached_route_is_tunnelled() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&web(
        "[[listener.route]]\nupstream = \"app\"\ncache = true\n",
        &upstream("app", &[&b]),
    ))
    .await;
    tunnels(
        f.addr("web"),
        b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n",
    )
    .await;
}

#[tokio::test]
async fn only_the_upgrades_a_route_allows_are_tunnelled_and_never_h2c() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&web(
        "upstream = \"app\"\n\
         [[listener.route]]\npath_prefix = \"/ws\"\nupstream = \"app\"\nupgrades = [\"x-custom\"]\n",
        &upstream("app", &[&b]),
    ))
    .await;
    let addr = f.addr("web");
    for (path, upgrade) in [
        ("/plain", "h2c"),
        ("/plain", "x-custom"),
        ("/plain", "websocket, h2c"),
        ("/wsx", "websocket"),
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let raw = format!(
            "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: {upgrade}\r\nhttp2-settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
        );
        let got = exchange(&mut s, raw.as_bytes()).await;
        assert!(
            got.starts_with("http/1.1 200"),
            "{upgrade} on {path}: {got}"
        );
        let seen = b.last();
        assert!(
            !seen.headers.contains_key("upgrade") && !seen.headers.contains_key("http2-settings"),
            "{upgrade} on {path} reached the backend: {:?}",
            seen.headers
        );
    }
    // What the route allows is tunnelled.
    tunnels(
        addr,
        b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: x-custom\r\n\r\n",
    )
    .await;
}

#[tokio::test]
async fn a_sticky_cookie_is_never_stored_and_does_not_stop_storing() {
    let (origin, hits, task) = fresh_origin("stored body").await;
    let f = Fulcrum::start(&web(
        "[[listener.route]]\nupstream = \"app\"\ncache = true\n",
        &format!(
            "[upstream.app]\nbackends = [{{ address = \"{origin}\", name = \"one\" }}]\n[upstream.app.sticky]\ncookie = \"lb\"\n"
        ),
    ))
    .await;
    let addr = f.addr("web");
    let (status, first, b1) = get_with(addr, "/page", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        first["set-cookie"].to_str().unwrap().starts_with("lb="),
        "the client that was balanced gets its cookie: {first:?}"
    );
    let status_line = first["cache-status"].to_str().unwrap();
    assert!(status_line.contains("stored"), "{status_line}");
    let (_, second, b2) = get_with(addr, "/page", &[]).await;
    assert_eq!(b1, b2);
    assert!(
        second["cache-status"].to_str().unwrap().contains("hit"),
        "{second:?}"
    );
    assert!(
        !second.contains_key("set-cookie"),
        "another client's cookie was replayed: {second:?}"
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    task.abort();
}

#[tokio::test]
async fn routes_never_serve_each_others_entries() {
    let (canary, _, t1) = fresh_origin("canary").await;
    let (stable, _, t2) = fresh_origin("stable").await;
    let f = Fulcrum::start(&web(
        "[[listener.route]]\nheaders = { \"x-canary\" = \"1\" }\nupstream = \"canary\"\ncache = true\n\
         [[listener.route]]\nupstream = \"stable\"\ncache = true\n",
        &format!(
            "[upstream.canary]\nbackends = [{{ address = \"{canary}\" }}]\n\
             [upstream.stable]\nbackends = [{{ address = \"{stable}\" }}]\n"
        ),
    ))
    .await;
    let addr = f.addr("web");
    let (_, _, b) = get_with(addr, "/app.js", &[("x-canary", "1")]).await;
    assert_eq!(b, "canary");
    let (_, h, b) = get_with(addr, "/app.js", &[]).await;
    assert_eq!(
        b, "stable",
        "the canary's entry served another route: {h:?}"
    );
    let (_, h, b) = get_with(addr, "/app.js", &[("x-canary", "1")]).await;
    assert_eq!(b, "canary");
    assert!(h["cache-status"].to_str().unwrap().contains("hit"));
    t1.abort();
    t2.abort();
}

#[tokio::test]
async fn a_huge_lifetime_from_the_origin_is_stored_capped() {
    let (origin, task) = raw_backend(
        b"HTTP/1.1 200 OK\r\ncache-control: max-age=10000000000000000000, stale-while-revalidate=99999999999999999999999\r\nexpires: Fri, 31 Dec 9999 23:59:59 GMT\r\ncontent-length: 4\r\nconnection: close\r\n\r\nlong",
    )
    .await;
    let f = Fulcrum::start(&web(
        "[[listener.route]]\nupstream = \"app\"\ncache = true\n",
        &format!("[upstream.app]\nbackends = [{{ address = \"{origin}\" }}]\n"),
    ))
    .await;
    let addr = f.addr("web");
    let (status, h, b) = get_with(addr, "/forever", &[]).await;
    assert_eq!((status, &b[..]), (StatusCode::OK, &b"long"[..]));
    assert!(
        h["cache-status"].to_str().unwrap().contains("stored"),
        "{h:?}"
    );
    let (status, h, b) = get_with(addr, "/forever", &[]).await;
    assert_eq!((status, &b[..]), (StatusCode::OK, &b"long"[..]));
    let cs = h["cache-status"].to_str().unwrap();
    assert!(cs.contains("hit"), "{cs}");
    let ttl: u64 = cs
        .split(';')
        .find_map(|p| p.trim().strip_prefix("ttl="))
        .and_then(|t| t.parse().ok())
        .expect("a ttl");
    assert!(ttl <= 1 << 31, "{ttl}");
    task.abort();
}

#[tokio::test]
async fn an_upload_that_does_not_arrive_in_body_timeout_gets_408() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&web(
        "upstream = \"app\"\nbody_timeout = \"1s\"",
        &upstream("app", &[&b]),
    ))
    .await;
    let mut s = TcpStream::connect(f.addr("web")).await.unwrap();
    let got = exchange(
        &mut s,
        b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 100\r\n\r\nonly ten b",
    )
    .await;
    assert!(got.starts_with("http/1.1 408"), "{got}");
    assert!(got.contains("connection: close"), "{got}");
    assert!(closed(&mut s).await);
    // A body that arrives in time is unaffected.
    let mut s = TcpStream::connect(f.addr("web")).await.unwrap();
    let got = exchange(
        &mut s,
        b"POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello",
    )
    .await;
    assert!(
        got.starts_with("http/1.1 200") && got.ends_with("hello"),
        "{got}"
    );
    // A backend that answers before the body is in: too late for a 408, so the
    // response is cut rather than completed.
    let mut s = TcpStream::connect(f.addr("web")).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: 100\r\n\r\nonly ten b")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        !got.contains("\r\n0\r\n\r\n"),
        "a cut upload made a complete response: {got}"
    );
}

/// One window of `min_rate` is ten seconds: this test takes that long.
#[tokio::test]
async fn an_upload_slower_than_min_rate_is_cut() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&web(
        "upstream = \"app\"\nmin_rate = 1000",
        &upstream("app", &[&b]),
    ))
    .await;
    let mut s = TcpStream::connect(f.addr("web")).await.unwrap();
    s.write_all(b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 100000\r\n\r\n")
        .await
        .unwrap();
    // A byte every half second: far below 1000 bytes a second. Cut within two
    // windows; a generous bound on the wait, never a measurement.
    let trickle = async {
        for _ in 0..120 {
            if s.write_all(b"x").await.is_err() {
                return true;
            }
            let mut buf = [0u8; 256];
            match tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                _ => {}
            }
        }
        false
    };
    assert!(trickle.await, "the slow upload was never cut");
}

/// HTTP/2 pings are frames, not requests: a client that only pings is idle.
#[tokio::test]
async fn h2_pings_alone_do_not_keep_a_connection_open() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&web(
        "upstream = \"app\"\nidle_timeout = \"1s\"",
        &upstream("app", &[&b]),
    ))
    .await;
    let tcp = TcpStream::connect(f.addr("web")).await.unwrap();
    let (mut client, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let mut pings = conn.ping_pong().expect("ping_pong");
    let driver = tokio::spawn(conn);
    let req = Request::get("http://a/x").body(()).unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), StatusCode::OK);
    let pinger = tokio::spawn(async move {
        loop {
            if pings.ping(h2::Ping::opaque()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    // Closed (GOAWAY, then the connection ends) about one idle_timeout after the
    // response; the bound is generous.
    tokio::time::timeout(Duration::from_secs(15), driver)
        .await
        .expect("pings kept the connection open")
        .unwrap()
        .ok();
    pinger.abort();
}

/// A fulcrum in front of `b` alone, capped at one request in flight.
async fn capped_at_one(b: &HttpBackend, queue_timeout: &str) -> Fulcrum {
    Fulcrum::start(&web(
        "upstream = \"app\"",
        &format!(
            "[upstream.app]\nretries = 0\nmax_connections_per_backend = 1\nqueue_timeout = \"{queue_timeout}\"\n\
             backends = [{{ address = \"{}\", name = \"b\" }}]\n",
            b.addr
        ),
    ))
    .await
}

#[tokio::test]
async fn requests_over_a_backends_cap_wait_their_turn() {
    let b = HttpBackend::start("b").await;
    let f = capped_at_one(&b, "30s").await;
    let addr = f.addr("web");
    let state = f.backend("app", "b").state.clone();
    // Three at once on a backend capped at one: served one after the other.
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watcher = {
        let (peak, state) = (peak.clone(), state.clone());
        tokio::spawn(async move {
            loop {
                peak.fetch_max(state.active(), std::sync::atomic::Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        })
    };
    let calls: Vec<_> = (0..3)
        .map(|_| tokio::spawn(async move { get(addr, "/slow/200").await.0 }))
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap(), StatusCode::OK);
    }
    watcher.abort();
    assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(b.requests().len(), 3);
}

#[tokio::test]
async fn a_request_that_waits_past_queue_timeout_gets_503_with_retry_after() {
    let b = HttpBackend::start("b").await;
    let f = capped_at_one(&b, "100ms").await;
    let addr = f.addr("web");
    let state = f.backend("app", "b").state.clone();
    let first = tokio::spawn(async move { get(addr, "/slow/5000").await.0 });
    // Once the first holds the backend's one place...
    common::eventually(
        "the first request holds the backend",
        common::PATIENCE,
        || async { state.active() == 1 },
    )
    .await;
    let (status, h, body) = get(addr, "/x").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h["retry-after"], "1");
    assert!(!String::from_utf8_lossy(&body).contains("127.0.0.1"));
    assert_eq!(first.await.unwrap(), StatusCode::OK);
}

/// Sends `path` raw (no client library touches it) and returns the status line.
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let got = exchange(
        &mut s,
        format!("GET {path} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    got.lines().next().unwrap_or("").to_string()
}

#[tokio::test]
async fn routes_match_the_normalised_path_and_the_backend_gets_it() {
    let api = HttpBackend::start("api").await;
    let web_b = HttpBackend::start("web").await;
    let routes = |extra: &str| {
        web(
            &format!("upstream = \"web\"\n{extra}\n[[listener.route]]\npath_prefix = \"/api/\"\nupstream = \"api\"\n"),
            &[upstream("api", &[&api]), upstream("web", &[&web_b])].concat(),
        )
    };
    let f = Fulcrum::start(&routes("")).await;
    let addr = f.addr("web");
    for (sent, backend, seen) in [
        ("/web/../api/x", &api, "/api/x"),
        ("/%61pi/x?q=%2F", &api, "/api/x?q=%2F"),
        ("//api//x", &api, "/api/x"),
        ("/api/./x", &api, "/api/x"),
        ("/web/%2e%2e/api/x", &api, "/api/x"),
        ("/api/../admin", &web_b, "/admin"),
        ("/a%20b/c%3f", &web_b, "/a%20b/c%3F"),
    ] {
        let status = raw_get(addr, sent).await;
        assert!(status.starts_with("http/1.1 200"), "{sent}: {status}");
        assert_eq!(backend.last().uri, seen, "{sent}");
    }
    for bad in [
        "/api%2Fx",
        "/api%5cx",
        "/a%zz",
        "/a%4",
        "/a%00",
        "/a%C0%AF",
        "/%E0%80%AF",
    ] {
        let status = raw_get(addr, bad).await;
        assert!(status.starts_with("http/1.1 400"), "{bad}: {status}");
    }
    f.stop().await;

    // Encoded slashes where the listener allows them; repeated slashes kept; the path
    // forwarded as it came.
    let f = Fulcrum::start(&routes(
        "allow_encoded_slashes = true\nmerge_slashes = false\nforward_normalized_path = false",
    ))
    .await;
    let addr = f.addr("web");
    assert!(raw_get(addr, "/api%2Fx").await.starts_with("http/1.1 200"));
    assert_eq!(web_b.last().uri, "/api%2Fx");
    assert!(raw_get(addr, "//api/x").await.starts_with("http/1.1 200"));
    assert_eq!(web_b.last().uri, "//api/x", "not merged: no route matched");
    assert!(raw_get(addr, "/%61pi/x").await.starts_with("http/1.1 200"));
    assert_eq!(
        api.last().uri,
        "/%61pi/x",
        "routed on the normal form, sent as it came"
    );
    f.stop().await;
}

/// A backend that sends part of a response head and closes may have acted on the
/// request: it is not sent again (to another backend or the same).
#[tokio::test]
async fn a_request_is_retried_only_when_no_byte_of_a_response_arrived() {
    let (half, _t1) = raw_backend(b"HTTP/1.1 200 OK\r\ncontent-le").await;
    let (silent, _t2) = raw_backend(b"").await;
    let good = HttpBackend::start("good").await;
    let two = |first: std::net::SocketAddr| {
        web(
            "upstream = \"app\"",
            &format!(
                "[upstream.app]\nstrategy = \"round_robin\"\nretries = 1\nbackends = [{{ address = \"{first}\", name = \"first\" }}, {{ address = \"{}\", name = \"good\" }}]\n",
                good.addr
            ),
        )
    };
    // Nothing arrived: the GET is retried on the other backend and succeeds.
    let f = Fulcrum::start(&two(silent)).await;
    let before = good.requests().len();
    for _ in 0..2 {
        assert_eq!(get(f.addr("web"), "/x").await.0, StatusCode::OK);
    }
    assert_eq!(good.requests().len() - before, 2);
    f.stop().await;
    // Half a head arrived: 502, and the other backend never sees the request.
    let f = Fulcrum::start(&two(half)).await;
    let mut statuses = Vec::new();
    let before = good.requests().len();
    for _ in 0..2 {
        statuses.push(get(f.addr("web"), "/x").await.0.as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 502], "the half answer is not retried");
    assert_eq!(
        good.requests().len() - before,
        1,
        "only the request picked for it"
    );
    f.stop().await;
}
