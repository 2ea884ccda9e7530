//! Shaping traffic on real sockets: path rewrites and redirects, between real clients
//! and a real hyper backend on loopback.

mod common;

use common::http::*;
use common::Fulcrum;
use http::{Request, StatusCode};
use http_body_util::BodyExt;

fn config(routes: &str, backend: &HttpBackend) -> String {
    format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n{routes}\n\
         [upstream.app]\nbackends = [{{ address = \"{}\", name = \"app\" }}]\n",
        backend.addr
    )
}

async fn get_host(
    addr: std::net::SocketAddr,
    path: &str,
    host: &str,
) -> (StatusCode, http::HeaderMap) {
    let req = Request::get(format!("http://{addr}{path}"))
        .header("host", host)
        .body(empty())
        .unwrap();
    let (status, headers, _) = send(&client(), req).await;
    (status, headers)
}

#[tokio::test]
async fn prefix_and_regex_rewrites_change_the_path_the_backend_sees() {
    let app = HttpBackend::start("app").await;
    let f = Fulcrum::start(&config(
        "[[listener.route]]\npath_prefix = \"/api/v2/\"\nupstream = \"app\"\n\
         rewrite = { prefix = \"/api/v2/\", to = \"/\" }\n\
         [[listener.route]]\npath_prefix = \"/old/\"\nupstream = \"app\"\n\
         rewrite = { regex = \"^/old/([a-z]+)/(.*)$\", to = \"/new/$2/$1\" }\n\
         [[listener.route]]\nupstream = \"app\"\n",
        &app,
    ))
    .await;
    let addr = f.addr("web");
    // (asked, what the backend sees): the query is kept; the rewrite starts from the
    // normalised path; paths a rule does not match pass unchanged.
    let cases = [
        ("/api/v2/users/7?x=1", "/users/7?x=1"),
        ("/api/v2/", "/"),
        ("/api/x/../v2/users", "/users"),
        ("/old/docs/a/b.html", "/new/a/b.html/docs"),
        ("/old/123", "/old/123"),
        ("/other/thing", "/other/thing"),
    ];
    for (asked, seen) in cases {
        let (status, _, _) = get(addr, asked).await;
        assert_eq!(status, 200, "{asked}");
        assert_eq!(app.last().uri, seen, "{asked}");
    }
    f.stop().await;
}

#[tokio::test]
async fn redirects_answer_with_their_status_and_a_filled_in_location() {
    let app = HttpBackend::start("app").await;
    let f = Fulcrum::start(&config(
        "[[listener.route]]\npath_prefix = \"/301/\"\nredirect = { to = \"https://example.com{path}\", status = 301 }\n\
         [[listener.route]]\npath_prefix = \"/302/\"\nredirect = { to = \"https://{host}{uri}\" }\n\
         [[listener.route]]\npath_prefix = \"/303/\"\nredirect = { to = \"/done?from={query}\", status = 303 }\n\
         [[listener.route]]\npath_prefix = \"/307/\"\nredirect = { to = \"https://b.example{uri}\", status = 307 }\n\
         [[listener.route]]\npath_prefix = \"/308/\"\nredirect = { to = \"https://c.example{path}\", status = 308 }\n\
         [[listener.route]]\nupstream = \"app\"\n",
        &app,
    ))
    .await;
    let addr = f.addr("web");
    let cases = [
        ("/301/a?q=1", 301, "https://example.com/301/a"),
        ("/302/a?q=1", 302, "https://old.example.org/302/a?q=1"),
        ("/303/a?q=1", 303, "/done?from=q=1"),
        ("/307/a", 307, "https://b.example/307/a"),
        ("/308/x/../y", 308, "https://c.example/308/y"),
    ];
    for (asked, status, location) in cases {
        let (got, headers) = get_host(addr, asked, "old.example.org:8080").await;
        assert_eq!(got.as_u16(), status, "{asked}");
        assert_eq!(headers["location"], location, "{asked}");
    }
    assert_eq!(app.requests().len(), 0, "no redirect reached the backend");
    let (status, _, _) = get(addr, "/elsewhere").await;
    assert_eq!(status, 200);
    f.stop().await;
}

#[tokio::test]
async fn request_header_rules_of_the_listener_then_the_route_reach_the_backend() {
    let app = HttpBackend::start("app").await;
    let f = Fulcrum::start(&config(
        "request_headers = { set = { \"x-env\" = \"prod\", \"x-client\" = \"{client_ip} via {scheme}\" }, remove = [\"x-debug\"] }\n\
         [[listener.route]]\npath_prefix = \"/api/\"\nupstream = \"app\"\n\
         request_headers = { set = { \"host\" = \"internal.example\", \"x-env\" = \"api\" }, add = { \"x-trace\" = \"{request_id}@{host}\" }, remove = [\"x-request-id\"] }\n\
         [[listener.route]]\nupstream = \"app\"\n",
        &app,
    ))
    .await;
    let addr = f.addr("web");
    let send_with = |path: &'static str| {
        Request::get(format!("http://{addr}{path}"))
            .header("host", "shop.example:8080")
            .header("x-debug", "1")
            .header("x-env", "from-client")
            .header("x-request-id", "req-7")
            .body(empty())
            .unwrap()
    };
    let (status, _, _) = send(&client(), send_with("/plain")).await;
    assert_eq!(status, 200);
    let seen = app.last();
    assert_eq!(seen.headers["x-env"], "prod", "the listener's set replaces");
    assert_eq!(seen.headers["x-client"], "127.0.0.1 via http");
    assert!(seen.headers.get("x-debug").is_none());
    assert_eq!(seen.headers["host"], "shop.example:8080");
    assert_eq!(seen.headers["x-request-id"], "req-7");

    let (status, _, _) = send(&client(), send_with("/api/x")).await;
    assert_eq!(status, 200);
    let seen = app.last();
    assert_eq!(seen.headers["x-env"], "api", "the route's rules come after");
    assert_eq!(seen.headers["x-client"], "127.0.0.1 via http");
    assert_eq!(seen.headers.get_all("host").iter().count(), 1);
    assert_eq!(seen.headers["host"], "internal.example");
    assert_eq!(seen.headers["x-forwarded-host"], "shop.example:8080");
    assert!(seen.headers.get("x-request-id").is_none(), "removed");
    assert_eq!(seen.headers["x-trace"], "req-7@shop.example");
    f.stop().await;
}

#[tokio::test]
async fn response_header_rules_apply_to_every_response_of_the_listener() {
    let app = HttpBackend::start("app").await;
    let f = Fulcrum::start(&config(
        "response_headers = { set = { \"strict-transport-security\" = \"max-age=63072000\" }, remove = [\"x-backend\"] }\n\
         [[listener.route]]\npath_prefix = \"/api/\"\nupstream = \"app\"\n\
         response_headers = { add = { \"x-route\" = \"api\" }, set = { \"strict-transport-security\" = \"max-age=1\" } }\n\
         [[listener.route]]\npath_prefix = \"/moved\"\nredirect = { to = \"/new\" }\n\
         response_headers = { set = { \"x-moved\" = \"yes\" } }\n",
        &app,
    ))
    .await;
    let addr = f.addr("web");
    let (status, headers, _) = get(addr, "/api/x").await;
    assert_eq!(status, 200);
    assert!(headers.get("x-backend").is_none(), "{headers:?}");
    assert_eq!(headers["x-route"], "api");
    assert_eq!(headers["strict-transport-security"], "max-age=1");
    // fulcrum's own answers: no route (404) and a redirect.
    let (status, headers, _) = get(addr, "/nothing-here").await;
    assert_eq!(status, 404);
    assert_eq!(headers["strict-transport-security"], "max-age=63072000");
    assert!(headers.get("x-route").is_none());
    let (status, headers, _) = get(addr, "/moved").await;
    assert_eq!(status, 302);
    assert_eq!(headers["x-moved"], "yes");
    assert_eq!(headers["strict-transport-security"], "max-age=63072000");
    f.stop().await;
}

mod origin {
    //! An origin for the compression tests: each path a kind of response.
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper::body::{Frame, Incoming};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;
    use tokio::sync::Notify;

    pub type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

    /// Text that compresses well, `len` bytes of it.
    pub fn text(len: usize) -> Vec<u8> {
        let line = b"{\"id\": 12345, \"name\": \"fulcrum\", \"tags\": [\"proxy\", \"cache\"]}\n";
        line.iter().copied().cycle().take(len).collect()
    }

    fn full(ct: &str, body: Vec<u8>) -> Response<Body> {
        let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
        r.headers_mut().insert("content-type", ct.parse().unwrap());
        r
    }

    /// - `/json/N`: N bytes of JSON, with a strong ETag;
    /// - `/cached/N`: the same, storable for an hour;
    /// - `/not-modified/N`: a 304 with a strong ETag;
    /// - `/png/N`, `/encoded/N`, `/no-transform/N`: what is never compressed;
    /// - `/big/N`: N bytes streamed in 64 KiB chunks, no length;
    /// - `/trickle`: an event, then another once `go` is notified.
    pub async fn start(go: Arc<Notify>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let go = go.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let go = go.clone();
                        async move { Ok::<_, Infallible>(answer(req.uri().path(), go)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        addr
    }

    fn answer(path: &str, go: Arc<Notify>) -> Response<Body> {
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let kind = parts.next().unwrap_or("");
        let n: usize = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        match kind {
            "json" => {
                let mut r = full("application/json", text(n));
                r.headers_mut().insert("etag", "\"v1\"".parse().unwrap());
                r
            }
            "cached" => {
                let mut r = full("application/json", text(n));
                r.headers_mut()
                    .insert("cache-control", "max-age=3600".parse().unwrap());
                r
            }
            "not-modified" => {
                let mut r = full("application/json", Vec::new());
                *r.status_mut() = hyper::StatusCode::NOT_MODIFIED;
                r.headers_mut().remove("content-type");
                r.headers_mut().insert("etag", "\"v1\"".parse().unwrap());
                r
            }
            "png" => full("image/png", text(n)),
            "encoded" => {
                let mut r = full("text/plain", text(n));
                r.headers_mut()
                    .insert("content-encoding", "gzip".parse().unwrap());
                r
            }
            "no-transform" => {
                let mut r = full("text/plain", text(n));
                r.headers_mut()
                    .insert("cache-control", "no-transform".parse().unwrap());
                r
            }
            "big" => {
                let chunk = Bytes::from(text(64 * 1024));
                let count = n / chunk.len();
                let stream = futures_util::stream::iter(
                    (0..count).map(move |_| Ok::<_, std::io::Error>(Frame::data(chunk.clone()))),
                );
                let mut r = Response::new(StreamBody::new(stream).boxed());
                r.headers_mut()
                    .insert("content-type", "text/plain".parse().unwrap());
                r
            }
            "trickle" => {
                let (tx, rx) =
                    tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
                tokio::spawn(async move {
                    let _ = tx
                        .send(Ok(Frame::data(Bytes::from_static(b"data: one\n\n"))))
                        .await;
                    go.notified().await;
                    let _ = tx
                        .send(Ok(Frame::data(Bytes::from_static(b"data: two\n\n"))))
                        .await;
                });
                let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|item| (item, rx))
                });
                let mut r = Response::new(StreamBody::new(stream).boxed());
                r.headers_mut()
                    .insert("content-type", "text/event-stream".parse().unwrap());
                r
            }
            _ => full("text/plain", b"?".to_vec()),
        }
    }

    /// An origin that promises `len` bytes of text and sends half, then closes.
    pub async fn cut_short(len: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {len}\r\n\r\n"
                    );
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(&text(len / 2)).await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                });
            }
        });
        addr
    }
}

fn decode(encoding: &str, data: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    match encoding {
        "gzip" => {
            flate2::read::GzDecoder::new(data)
                .read_to_end(&mut out)
                .unwrap();
        }
        "br" => {
            brotli::Decompressor::new(data, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        "zstd" => {
            out = zstd::stream::decode_all(data).unwrap();
        }
        other => panic!("unexpected encoding {other}"),
    }
    out
}

fn compress_config(origin: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "[cache]\nmax_size = \"64MiB\"\n{extra}\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n\
         [[listener.route]]\npath_prefix = \"/cached/\"\nupstream = \"origin\"\ncache = true\ncompress = true\n\
         [[listener.route]]\npath_prefix = \"/plain/\"\nupstream = \"origin\"\n\
         rewrite = {{ prefix = \"/plain/\", to = \"/\" }}\n\
         [[listener.route]]\nupstream = \"origin\"\ncompress = true\n\
         [upstream.origin]\nbackends = [{{ address = \"{origin}\" }}]\n"
    )
}

async fn fetch(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, bytes::Bytes) {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(&client(), b.body(empty()).unwrap()).await
}

#[tokio::test]
async fn responses_are_compressed_with_the_negotiated_algorithm_and_decode_to_the_original() {
    let origin = origin::start(Default::default()).await;
    let f = Fulcrum::start(&compress_config(origin, "")).await;
    let addr = f.addr("web");
    let original = origin::text(100 * 1024);
    for (accept, expected) in [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip, br, zstd", "zstd"),
        ("gzip;q=1, br;q=0.5", "gzip"),
        ("identity;q=0, *", "zstd"),
    ] {
        let (status, headers, body) =
            fetch(addr, "GET", "/json/102400", &[("accept-encoding", accept)]).await;
        assert_eq!(status, 200);
        assert_eq!(headers["content-encoding"], expected, "{accept}");
        assert!(headers.get("content-length").is_none());
        assert_eq!(headers["vary"], "Accept-Encoding");
        assert_eq!(headers["etag"], "W/\"v1\"", "a strong ETag turns weak");
        assert!(
            body.len() < original.len() / 5,
            "{accept}: {} bytes",
            body.len()
        );
        assert_eq!(decode(expected, &body), original, "{accept}");
    }
    // A HEAD gets its GET's header fields; a 304 its 200's Vary and weak ETag.
    let (_, got, body) = fetch(addr, "HEAD", "/json/102400", &[("accept-encoding", "gzip")]).await;
    assert_eq!(got["content-encoding"], "gzip", "{got:?}");
    assert!(got.get("content-length").is_none());
    assert_eq!(got["vary"], "Accept-Encoding");
    assert_eq!(got["etag"], "W/\"v1\"");
    assert!(body.is_empty());
    let (status, got, _) = fetch(
        addr,
        "GET",
        "/not-modified/1",
        &[("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(status, 304);
    assert_eq!(got["vary"], "Accept-Encoding");
    assert_eq!(got["etag"], "W/\"v1\"");
    // Sent as they are: no acceptable algorithm, garbage, a range, a small body,
    // a type not listed, an encoded body, no-transform, a route without compress.
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
    let identity: &[Case] = &[
        ("GET", "/json/102400", &[("accept-encoding", "identity")]),
        ("GET", "/json/102400", &[("accept-encoding", "gzip;q=7")]),
        ("GET", "/json/102400", &[]),
        (
            "GET",
            "/json/102400",
            &[("accept-encoding", "gzip"), ("range", "bytes=0-99")],
        ),
        ("GET", "/json/500", &[("accept-encoding", "gzip")]),
        ("GET", "/png/102400", &[("accept-encoding", "gzip")]),
        (
            "GET",
            "/no-transform/102400",
            &[("accept-encoding", "gzip")],
        ),
        (
            "GET",
            "/json/102400",
            &[
                ("accept-encoding", "gzip"),
                ("cache-control", "no-transform"),
            ],
        ),
        ("GET", "/plain/json/102400", &[("accept-encoding", "gzip")]),
    ];
    for (method, path, headers) in identity {
        let (_, got, body) = fetch(addr, method, path, headers).await;
        assert!(
            got.get("content-encoding").is_none(),
            "{method} {path} {headers:?}: {got:?}"
        );
        if *method == "GET" && headers.iter().all(|(k, _)| *k != "range") {
            assert_eq!(
                body.len(),
                path.rsplit('/').next().unwrap().parse::<usize>().unwrap()
            );
        }
    }
    let (_, got, _) = fetch(addr, "GET", "/encoded/102400", &[("accept-encoding", "br")]).await;
    assert_eq!(
        got["content-encoding"], "gzip",
        "already encoded: left alone"
    );
    f.stop().await;
}

#[tokio::test]
async fn a_paused_stream_is_flushed_and_a_large_one_streams_in_bounded_memory() {
    let go = std::sync::Arc::new(tokio::sync::Notify::new());
    let origin = origin::start(go.clone()).await;
    let f = Fulcrum::start(&compress_config(origin, "")).await;
    let addr = f.addr("web");

    // The first event arrives, decodable, before the origin sends the second.
    let mut body = streamed(addr, "/trickle", "gzip").await;
    let mut decoder = flate2::write::GzDecoder::new(Vec::new());
    loop {
        let frame = tokio::time::timeout(common::PATIENCE, body.frame())
            .await
            .expect("the first event in time")
            .expect("not the end")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            std::io::Write::write_all(&mut decoder, &data).unwrap();
            std::io::Write::flush(&mut decoder).unwrap();
        }
        if decoder.get_ref().as_slice() == b"data: one\n\n" {
            break;
        }
    }
    go.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    std::io::Write::write_all(&mut decoder, &rest).unwrap();
    assert_eq!(decoder.finish().unwrap(), b"data: one\n\ndata: two\n\n");

    // 20 MiB with no length, compressed as it flows: decoded as it arrives, and the
    // process does not grow by anything like the body.
    let rss = || {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
            .unwrap()
            * 1024
    };
    let before = rss();
    let mut body = streamed(addr, "/big/20971520", "zstd").await;
    let mut decoder = zstd::stream::write::Decoder::new(Counter(0)).unwrap();
    let mut peak = before;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            std::io::Write::write_all(&mut decoder, &data).unwrap();
            peak = peak.max(rss());
        }
    }
    std::io::Write::flush(&mut decoder).unwrap();
    assert_eq!(decoder.get_ref().0, 20 * 1024 * 1024);
    assert!(
        peak.saturating_sub(before) < 12 * 1024 * 1024,
        "grew by {} bytes",
        peak - before
    );
    f.stop().await;
}

/// The body of a response asked for with `Accept-Encoding: encoding`, which it uses.
async fn streamed(addr: std::net::SocketAddr, path: &str, encoding: &str) -> hyper::body::Incoming {
    let req = Request::get(format!("http://{addr}{path}"))
        .header("accept-encoding", encoding)
        .body(empty())
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.headers()["content-encoding"], encoding);
    resp.into_body()
}

/// Counts what is written to it.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_cached_response_is_compressed_for_each_client_and_a_cut_one_stays_cut() {
    let origin = origin::start(Default::default()).await;
    let f = Fulcrum::start(&compress_config(
        origin,
        "[compression]\nalgorithms = [\"br\", \"gzip\"]\nlevel = { gzip = 9 }\n",
    ))
    .await;
    let addr = f.addr("web");
    let original = origin::text(50 * 1024);
    let (_, first, body) =
        fetch(addr, "GET", "/cached/51200", &[("accept-encoding", "gzip")]).await;
    assert!(first["cache-status"].to_str().unwrap().contains("stored"));
    assert_eq!(first["content-encoding"], "gzip");
    assert_eq!(decode("gzip", &body), original);
    let (_, second, body) = fetch(addr, "GET", "/cached/51200", &[("accept-encoding", "br")]).await;
    assert!(
        second["cache-status"].to_str().unwrap().contains("hit"),
        "{second:?}"
    );
    assert_eq!(second["content-encoding"], "br");
    assert_eq!(decode("br", &body), original);
    let (_, third, body) =
        fetch(addr, "GET", "/cached/51200", &[("accept-encoding", "zstd")]).await;
    assert!(third["cache-status"].to_str().unwrap().contains("hit"));
    assert!(
        third.get("content-encoding").is_none(),
        "zstd is not offered here"
    );
    assert_eq!(body.len(), original.len());
    f.stop().await;

    // The origin's body ends early: the client's compressed stream is not finished.
    let short = origin::cut_short(200_000).await;
    let f = Fulcrum::start(&compress_config(short, "")).await;
    let mut body = streamed(f.addr("web"), "/x", "gzip").await;
    let mut received = Vec::new();
    let mut failed = false;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => received.extend_from_slice(&frame.into_data().unwrap_or_default()),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the client sees the body cut short");
    let mut out = Vec::new();
    let complete =
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&received[..]), &mut out);
    assert!(complete.is_err(), "what arrived is not a whole gzip stream");
    f.stop().await;
}
