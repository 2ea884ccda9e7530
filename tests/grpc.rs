//! HTTP/2 to the backends (`protocol = "h2c"`) and gRPC through fulcrum, with a real
//! HTTP/2 backend and client on loopback: streams both ways, trailers, balancing per
//! call over one client connection, and fulcrum's own failures as gRPC statuses.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::h2::{message, H2Backend};
use common::http::{body, empty, h2c_client, send, Body, BoxError};
use common::Fulcrum;
use http::{HeaderMap, Request, Version};
use http_body::Frame;
use http_body_util::BodyExt;

fn config(backends: &[&H2Backend], extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{{ address = \"{}\", name = \"b{i}\" }}", b.addr))
        .collect();
    format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nupstream = \"grpc\"\n\
         [upstream.grpc]\nprotocol = \"h2c\"\n{extra}\nbackends = [{}]\n",
        list.join(", ")
    )
}

fn call(addr: SocketAddr, path: &str, b: Body) -> Request<Body> {
    Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(b)
        .unwrap()
}

/// A unary echo call through `addr` with `payload`: answered 200 with its echo.
async fn unary(client: &common::http::H2cClient, addr: SocketAddr, payload: &[u8]) {
    let (status, headers, got) = send(
        client,
        call(addr, "/echo.Echo/Unary", body(message(payload))),
    )
    .await;
    assert_eq!(status, 200, "{headers:?}");
    assert_eq!(got, message(payload));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidirectional_call_streams_both_ways_and_keeps_its_trailers() {
    let b = H2Backend::start("one").await;
    let f = Fulcrum::start(&config(&[&b], "")).await;
    let client = h2c_client();
    // The client sends a message, reads its echo, sends the next: neither side has
    // the whole body before the other answers.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    let stream = http_body_util::StreamBody::new(tokio_stream(rx));
    let req = call(f.addr("web"), "/echo.Echo/Chat", stream.boxed());
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let mut body = resp.into_body();
    for word in ["one", "two", "three"] {
        tx.send(Ok(Frame::data(message(word.as_bytes()))))
            .await
            .unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the echo arrives before the call ends")
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), message(word.as_bytes()));
    }
    drop(tx);
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        if let Ok(t) = frame.unwrap().into_trailers() {
            trailers = Some(t);
        }
    }
    let trailers = trailers.expect("trailers relayed");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-backend"], "one");
    let (version, headers) = b.seen.lock().unwrap()[0].clone();
    assert_eq!(version, Version::HTTP_2, "HTTP/2 to the backend");
    assert_eq!(headers["te"], "trailers");
    assert!(headers.get("connection").is_none());
    f.stop().await;
}

/// The receiving half of a channel as a stream of frames.
fn tokio_stream(
    mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_one_client_connection_are_balanced_one_by_one() {
    let backends = [
        H2Backend::start("a").await,
        H2Backend::start("b").await,
        H2Backend::start("c").await,
    ];
    let f = Fulcrum::start(&config(&backends.iter().collect::<Vec<_>>(), "")).await;
    let client = h2c_client();
    let addr = f.addr("web");
    // One request first so that the client's one connection exists, then 30 at once.
    let (status, _, _) = send(&client, call(addr, "/echo.Echo/Unary", body(message(b"x")))).await;
    assert_eq!(status, 200);
    let calls = (0..30).map(|i| {
        let client = client.clone();
        async move { unary(&client, addr, format!("call {i}").as_bytes()).await }
    });
    futures_util::future::join_all(calls).await;
    let counts: Vec<usize> = backends.iter().map(H2Backend::calls).collect();
    assert_eq!(counts.iter().sum::<usize>(), 31);
    for c in &counts {
        assert!((10..=11).contains(c), "round robin per call: {counts:?}");
    }
    for b in &backends {
        assert_eq!(
            b.connections.load(Ordering::SeqCst),
            1,
            "one shared connection per backend"
        );
    }
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fulcrums_own_failures_reach_grpc_clients_as_grpc_statuses() {
    let b = H2Backend::start("slow").await;
    let dead = common::refusing_addr().await;
    let f = Fulcrum::start(&format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
         [[listener.route]]\npath_prefix = \"/dead\"\nupstream = \"dead\"\n\
         [[listener.route]]\nupstream = \"grpc\"\n\
         [upstream.grpc]\nprotocol = \"h2c\"\nbackends = [{{ address = \"{}\" }}]\n\
         [upstream.dead]\nprotocol = \"h2c\"\nbackends = [{{ address = \"{dead}\" }}]\n",
        b.addr
    ))
    .await;
    let client = h2c_client();
    let addr = f.addr("web");
    // No backend answers: UNAVAILABLE, as HTTP 200 with grpc-status in the head.
    let (status, headers, _) =
        send(&client, call(addr, "/dead.Svc/Call", body(message(b"x")))).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/grpc");
    assert_eq!(headers["grpc-status"], "14");
    // The call's own deadline, shorter than the route's: DEADLINE_EXCEEDED.
    let mut req = call(addr, "/slow", body(message(b"x")));
    req.headers_mut()
        .insert("grpc-timeout", "100m".parse().unwrap());
    let (status, headers, _) = send(&client, req).await;
    assert_eq!(status, 200);
    assert_eq!(headers["grpc-status"], "4");
    // A plain HTTP/2 request to the dead upstream still gets a plain 502/503.
    let req = Request::get(format!("http://{addr}/dead"))
        .body(empty())
        .unwrap();
    let (status, _, _) = send(&client, req).await;
    assert!(status == 502 || status == 503, "{status}");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_reaches_an_h2c_backend_checked_over_http2() {
    let b = H2Backend::start("one").await;
    let f = Fulcrum::start(&config(
        &[&b],
        "health = { check = \"http\", path = \"/health\", interval = \"100ms\", rise = 1, fall = 1 }",
    ))
    .await;
    // Health checks speak HTTP/2 to it, and pass.
    common::eventually("health checks over HTTP/2", common::PATIENCE, || async {
        b.health_checks.load(Ordering::SeqCst) >= 3
    })
    .await;
    assert!(f.backend("grpc", "b0").state.is_healthy());
    let client = common::http::client();
    let req = Request::post(format!("http://{}/upload", f.addr("web")))
        .header("host", "api.example")
        .body(body("hello over HTTP/1.1"))
        .unwrap();
    let (status, _, got) = send(&client, req).await;
    assert_eq!(status, 200);
    assert_eq!(got, "hello over HTTP/1.1");
    let (version, headers) = b.seen.lock().unwrap()[0].clone();
    assert_eq!(version, Version::HTTP_2);
    assert!(headers.get("host").is_none(), "Host travels as :authority");
    assert_eq!(headers["x-forwarded-host"], "api.example");
    f.stop().await;
}

#[test]
fn grpc_timeouts_are_read_in_every_unit() {
    use fulcrum::l7::grpc_timeout;
    let t = |v: &str| {
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", v.parse().unwrap());
        grpc_timeout(&h)
    };
    assert_eq!(t("100m"), Some(Duration::from_millis(100)));
    assert_eq!(t("2S"), Some(Duration::from_secs(2)));
    assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
    assert_eq!(t("5u"), Some(Duration::from_micros(5)));
    for bad in ["", "m", "10", "10x", "123456789S", "-1S"] {
        assert_eq!(t(bad), None, "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connections_and_calls_in_flight_are_exported() {
    let b = H2Backend::start("one").await;
    let f = Fulcrum::start(&format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n{}",
        config(&[&b], "")
    ))
    .await;
    let client = h2c_client();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    let req = call(
        f.addr("web"),
        "/echo.Echo/Chat",
        http_body_util::StreamBody::new(tokio_stream(rx)).boxed(),
    );
    let resp = client.request(req).await.unwrap();
    let mut body = resp.into_body();
    tx.send(Ok(Frame::data(message(b"hi")))).await.unwrap();
    assert!(body.frame().await.unwrap().unwrap().is_data());
    let scrape = || async {
        let (_, _, text) = common::http::get(f.admin.unwrap(), "/metrics").await;
        String::from_utf8_lossy(&text).into_owned()
    };
    let text = scrape().await;
    let series = |name: &str| format!("{name}{{backend=\"b0\",upstream=\"grpc\"}}");
    assert!(
        text.contains(&format!("{} 1", series("fulcrum_backend_h2_connections"))),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{} 1",
            series("fulcrum_upstream_h2_streams_active")
        )),
        "{text}"
    );
    drop(tx);
    while body.frame().await.is_some() {}
    let text = scrape().await;
    assert!(
        text.contains(&format!(
            "{} 0",
            series("fulcrum_upstream_h2_streams_active")
        )),
        "{text}"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backends_goaway_fails_no_call() {
    let b = H2Backend::start("one").await;
    let f = Fulcrum::start(&config(&[&b], "retries = 0")).await;
    let client = h2c_client();
    let addr = f.addr("web");
    let one = |i: usize| {
        let client = client.clone();
        async move { unary(&client, addr, format!("call {i}").as_bytes()).await }
    };
    // Calls before, one in flight while the backend says GOAWAY (it finishes), and
    // calls after (on a new connection), none failing, without retries.
    for i in 0..5 {
        one(i).await;
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    let req = call(
        addr,
        "/echo.Echo/Chat",
        http_body_util::StreamBody::new(tokio_stream(rx)).boxed(),
    );
    let resp = client.request(req).await.unwrap();
    let mut open = resp.into_body();
    b.goaway.notify_waiters();
    tokio::time::sleep(Duration::from_millis(50)).await;
    futures_util::future::join_all((5..25).map(one)).await;
    tx.send(Ok(Frame::data(message(b"late")))).await.unwrap();
    assert_eq!(
        open.frame().await.unwrap().unwrap().into_data().unwrap(),
        message(b"late"),
        "the stream in flight goes on after GOAWAY"
    );
    drop(tx);
    while open.frame().await.is_some() {}
    assert_eq!(b.calls(), 26);
    assert_eq!(b.connections.load(Ordering::SeqCst), 2);
    f.stop().await;
}

/// A bidirectional call opened through `addr` whose response has started (within
/// 10 s): its sender, and its response body.
async fn open_chat(
    client: &common::http::H2cClient,
    addr: SocketAddr,
) -> (
    tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
    hyper::body::Incoming,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    let req = call(
        addr,
        "/echo.Echo/Chat",
        http_body_util::StreamBody::new(tokio_stream(rx)).boxed(),
    );
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("the call is answered while the others are open")
        .unwrap();
    (tx, resp.into_body())
}

/// Sends a message on an open call and reads its echo, then ends the call.
async fn finish_chat(
    (tx, mut body): (
        tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
        hyper::body::Incoming,
    ),
    text: &[u8],
) {
    tx.send(Ok(Frame::data(message(text)))).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the echo arrives")
        .unwrap()
        .unwrap();
    assert_eq!(echo.into_data().unwrap(), message(text));
    drop(tx);
    while body.frame().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_allowing_one_stream_per_connection_gets_more_connections() {
    let b = H2Backend::start_with("one", Some(1)).await;
    let f = Fulcrum::start(&config(&[&b], "retries = 0")).await;
    let client = h2c_client();
    let addr = f.addr("web");
    // Four calls open at once: on one connection the later ones would wait for the
    // first to end.
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(open_chat(&client, addr).await);
    }
    assert_eq!(b.connections.load(Ordering::SeqCst), 4);
    for (i, call) in open.into_iter().enumerate() {
        finish_chat(call, format!("call {i}").as_bytes()).await;
    }
    // Once they have ended, the connections serve again: no new one.
    for i in 0..6 {
        unary(&client, addr, format!("unary {i}").as_bytes()).await;
    }
    assert_eq!(b.connections.load(Ordering::SeqCst), 4);
    assert_eq!(b.calls(), 10);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_for_a_one_stream_backend_stay_under_the_backends_cap() {
    let b = H2Backend::start_with("one", Some(1)).await;
    let f = Fulcrum::start(&config(
        &[&b],
        "retries = 0\nmax_connections_per_backend = 2\nqueue_timeout = \"10s\"",
    ))
    .await;
    let client = h2c_client();
    let addr = f.addr("web");
    let first = open_chat(&client, addr).await;
    let second = open_chat(&client, addr).await;
    // A third call waits for a place under the cap, then takes a freed connection.
    let third = {
        let client = client.clone();
        tokio::spawn(async move { unary(&client, addr, b"third").await })
    };
    finish_chat(first, b"first").await;
    third.await.unwrap();
    finish_chat(second, b"second").await;
    assert_eq!(b.connections.load(Ordering::SeqCst), 2);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_health_check_takes_a_not_serving_backend_out() {
    let b = H2Backend::start("one").await;
    b.grpc_health.store(2, Ordering::SeqCst);
    let f = Fulcrum::start(&config(
        &[&b],
        "health = { check = \"grpc\", grpc_service = \"echo.Echo\", interval = \"50ms\", rise = 1, fall = 1 }",
    ))
    .await;
    let backend = f.backend("grpc", "b0");
    let wait_for = |healthy: bool| {
        let backend = backend.clone();
        async move {
            for _ in 0..400 {
                if backend.state.is_healthy() == healthy {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("the backend never became healthy = {healthy}");
        }
    };
    wait_for(false).await;
    let client = h2c_client();
    let (status, headers, _) = send(
        &client,
        call(f.addr("web"), "/echo.Echo/Unary", body(message(b"x"))),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["grpc-status"], "14", "NOT_SERVING is out");
    b.grpc_health.store(1, Ordering::SeqCst);
    wait_for(true).await;
    let (status, _, got) = send(
        &client,
        call(f.addr("web"), "/echo.Echo/Unary", body(message(b"x"))),
    )
    .await;
    assert_eq!((status.as_u16(), got), (200, message(b"x")));
    let asked = b.grpc_health_asked.lock().unwrap()[0].clone();
    assert_eq!(
        &asked[..],
        &[0, 0, 0, 0, 11, 0x0a, 9, b'e', b'c', b'h', b'o', b'.', b'E', b'c', b'h', b'o']
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_http2_reaches_an_http1_websocket_backend() {
    let app = common::http::HttpBackend::start("ws").await;
    let f = Fulcrum::start(&format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
         [[listener.route]]\npath_prefix = \"/ws\"\nupstream = \"app\"\nupgrades = [\"websocket\"]\n\
         [[listener.route]]\npath_prefix = \"/plain\"\nupstream = \"app\"\nupgrades = []\n\
         [[listener.route]]\nupstream = \"app\"\n\
         [upstream.app]\nbackends = [{{ address = \"{}\" }}]\n",
        app.addr
    ))
    .await;
    let tcp = tokio::net::TcpStream::connect(f.addr("web")).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.unwrap();
    // One request first: the server's SETTINGS have arrived by its answer.
    let get = Request::get(format!("http://{}/", f.addr("web")))
        .body(())
        .unwrap();
    let (first, _) = client.send_request(get, true).unwrap();
    assert_eq!(first.await.unwrap().status(), 200);
    let mut client = client.ready().await.unwrap();
    assert!(
        client.is_extended_connect_protocol_enabled(),
        "SETTINGS_ENABLE_CONNECT_PROTOCOL"
    );
    let connect = |path: &str| {
        Request::builder()
            .method("CONNECT")
            .uri(format!("http://{}{path}", f.addr("web")))
            .extension(h2::ext::Protocol::from("websocket"))
            .header("sec-websocket-version", "13")
            .body(())
            .unwrap()
    };
    let (response, mut up) = client.send_request(connect("/ws"), false).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("sec-websocket-accept").is_none());
    let mut down = response.into_body();
    up.send_data(Bytes::from_static(b"ping over h2"), false)
        .unwrap();
    let mut echoed = Vec::new();
    while echoed.len() < 12 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), down.data())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let _ = down.flow_control().release_capacity(chunk.len());
        echoed.extend_from_slice(&chunk);
    }
    assert_eq!(echoed, b"ping over h2");
    // The client ends its side: the tunnel closes.
    up.send_data(Bytes::new(), true).unwrap();
    while let Some(Ok(_)) = down.data().await {}
    let seen = app.last();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.headers["upgrade"], "websocket");
    assert_eq!(seen.headers["sec-websocket-key"].len(), 24);
    // A route that does not pass WebSocket refuses it; a backend that answers the
    // upgrade with a plain 200 gives no tunnel: 502.
    let (response, _up) = client.send_request(connect("/plain"), false).unwrap();
    assert_eq!(response.await.unwrap().status(), 400);
    let (response, _up) = client.send_request(connect("/other"), false).unwrap();
    assert_eq!(response.await.unwrap().status(), 502);
    f.stop().await;
}
