//! Who gets in, and how much, on real sockets: rate limits, per-client connection
//! limits and the PROXY protocol, between real clients, a real fulcrum and real
//! backends on loopback.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::http::*;
use common::{Backend, Client, Fulcrum, PATIENCE};
use http::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An http listener "web" in front of `backend`, with an admin API.
fn web(listener: &str, routes: &str, rules: &str, backend: &HttpBackend) -> String {
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n{rules}\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nupstream = \"app\"\n{listener}\n{routes}\n\
         [upstream.app]\nbackends = [{{ address = \"{}\", name = \"app\" }}]\n",
        backend.addr
    )
}

async fn metrics(f: &Fulcrum) -> String {
    common::metrics::scrape(f.admin.expect("admin")).await
}

async fn get_headers(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap) {
    let mut req = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (status, h, _) = send(&client(), req.body(empty()).unwrap()).await;
    (status, h)
}

#[tokio::test]
async fn a_burst_passes_and_the_next_request_gets_429_with_its_headers() {
    let app = HttpBackend::start("app").await;
    let f = Fulcrum::start(&web(
        "rate_limit = \"per_ip\"",
        "",
        "[rate_limit.per_ip]\nkey = \"client_ip\"\nrate = \"3/h\"\nburst = 3\nheaders = true",
        &app,
    ))
    .await;
    let addr = f.addr("web");
    for remaining in [2, 1, 0] {
        let (status, h) = get_headers(addr, "/", &[]).await;
        assert_eq!(status, 200);
        assert_eq!(h["ratelimit-policy"], "\"per_ip\";q=3;w=3600");
        let said = h["ratelimit"].to_str().unwrap().to_string();
        assert!(
            said.starts_with(&format!("\"per_ip\";r={remaining};t=")),
            "{said}"
        );
    }
    let (status, h) = get_headers(addr, "/", &[]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=1200).contains(&retry), "{retry}");
    assert!(h["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"per_ip\";r=0;t="));
    assert_eq!(
        app.requests().len(),
        3,
        "the refused request never reached the backend"
    );
    assert!(metrics(&f)
        .await
        .contains("fulcrum_rate_limited_total{listener=\"web\",rule=\"per_ip\"} 1"));
    f.stop().await;
}

#[tokio::test]
async fn a_route_limit_keys_by_header_or_cookie_and_route_shares_one_bucket() {
    let app = HttpBackend::start("app").await;
    let f = Fulcrum::start(&web(
        "",
        "[[listener.route]]\npath_prefix = \"/api/\"\nupstream = \"app\"\nrate_limit = \"per_key\"\n\
         [[listener.route]]\npath_prefix = \"/session/\"\nupstream = \"app\"\nrate_limit = \"per_session\"\n\
         [[listener.route]]\npath_prefix = \"/shared/\"\nupstream = \"app\"\nrate_limit = \"shared\"\n\
         [[listener.route]]\nupstream = \"app\"\n",
        "[rate_limit.per_key]\nkey = \"header:X-Api-Key\"\nrate = \"1/h\"\n\
         [rate_limit.per_session]\nkey = \"cookie:sid\"\nrate = \"1/h\"\n\
         [rate_limit.shared]\nkey = \"route\"\nrate = \"2/h\"\nburst = 2\n",
        &app,
    ))
    .await;
    let addr = f.addr("web");
    let status = |h: &[(&'static str, &'static str)], path: &'static str| {
        let h = h.to_vec();
        async move { get_headers(addr, path, &h).await.0 }
    };
    // A header value per bucket; no header is one more bucket.
    assert_eq!(status(&[("x-api-key", "a")], "/api/x").await, 200);
    assert_eq!(status(&[("x-api-key", "a")], "/api/x").await, 429);
    assert_eq!(status(&[("x-api-key", "b")], "/api/x").await, 200);
    assert_eq!(status(&[], "/api/x").await, 200);
    assert_eq!(status(&[], "/api/x").await, 429);
    // Allowed responses carry no RateLimit field without `headers = true`.
    let (_, h) = get_headers(addr, "/api/x", &[("x-api-key", "c")]).await;
    assert!(h.get("ratelimit").is_none());
    // Ten kilobytes of garbage as a key: one more bucket, nothing more.
    let garbage = "g".repeat(10_000);
    let (s, _) = get_headers(addr, "/api/x", &[("x-api-key", garbage.as_str())]).await;
    assert!(s == 200 || s == 431, "{s}");
    // Cookies.
    assert_eq!(status(&[("cookie", "a=1; sid=s1")], "/session/").await, 200);
    assert_eq!(status(&[("cookie", "sid=s1")], "/session/").await, 429);
    assert_eq!(status(&[("cookie", "sid=s2; a=1")], "/session/").await, 200);
    // One bucket for every client of the route; other routes are not limited.
    assert_eq!(status(&[("x-api-key", "a")], "/shared/").await, 200);
    assert_eq!(status(&[("x-api-key", "b")], "/shared/").await, 200);
    assert_eq!(status(&[("x-api-key", "c")], "/shared/").await, 429);
    for _ in 0..5 {
        assert_eq!(status(&[], "/free").await, 200);
    }
    f.stop().await;
}

#[tokio::test]
async fn a_tcp_listener_limits_new_connections_and_closes_the_refused() {
    let b = Backend::start("b1").await;
    let f = Fulcrum::start(&format!(
        "[rate_limit.conns]\nkey = \"client_ip\"\nrate = \"2/h\"\nburst = 2\n{}",
        common::tcp_config("rate_limit = \"conns\"", &common::backends_list(&[(&b, 1)]))
    ))
    .await;
    let addr = f.addr("front");
    assert_eq!(common::who(addr).await.as_deref(), Some("b1"));
    assert_eq!(common::who(addr).await.as_deref(), Some("b1"));
    assert_eq!(common::who(addr).await, None, "closed at once");
    assert_eq!(b.accepted(), 2);
    f.stop().await;
}

#[tokio::test]
async fn one_client_holds_at_most_max_connections_per_client() {
    let app = HttpBackend::start("app").await;
    let f = Fulcrum::start(&web("max_connections_per_client = 2", "", "", &app)).await;
    let addr = f.addr("web");
    let request = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s);
    }
    let third = raw_exchange(addr, request).await;
    assert!(third.starts_with("HTTP/1.1 503"), "{third}");
    assert!(metrics(&f)
        .await
        .contains("fulcrum_client_connections_limited_total{listener=\"web\"} 1"));
    // A place given back is a place to take.
    drop(held.pop());
    let mut again = None;
    for _ in 0..100 {
        let answer = raw_exchange(
            addr,
            b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
        )
        .await;
        if answer.starts_with("HTTP/1.1 200") {
            again = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "the closed connection's place came back");
    f.stop().await;
}

#[tokio::test]
async fn a_tcp_listener_closes_a_clients_connection_past_its_limit() {
    let b = Backend::start("b1").await;
    let f = Fulcrum::start(&common::tcp_config(
        "max_connections_per_client = 1",
        &common::backends_list(&[(&b, 1)]),
    ))
    .await;
    let addr = f.addr("front");
    let mut first = Client::connect(addr).await;
    assert_eq!(first.greeting().await.as_deref(), Some("b1"));
    assert_eq!(common::who(addr).await, None);
    drop(first);
    f.stop().await;
}

/// The address the backend saw in `X-Forwarded-For` for a request sent after `header`.
async fn forwarded_for(addr: SocketAddr, app: &HttpBackend, header: &[&[u8]]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    for piece in header {
        s.write_all(piece).await.unwrap();
        s.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.write_all(b"GET /who HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    app.last().headers["x-forwarded-for"]
        .to_str()
        .unwrap()
        .to_string()
}

fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x20 | command);
    h.push(family);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(body);
    h
}

#[tokio::test]
async fn the_proxy_header_gives_the_client_address_everywhere() {
    let app = HttpBackend::start("app").await;
    let f = Fulcrum::start(&web(
        "proxy_protocol = true\nheader_timeout = \"1s\"\ndeny = [\"203.0.113.0/24\"]\nrate_limit = \"one\"",
        "",
        "[rate_limit.one]\nrate = \"1/h\"",
        &app,
    ))
    .await;
    let addr = f.addr("web");
    // v1, split across segments.
    let seen = forwarded_for(
        addr,
        &app,
        &[b"PROXY TCP4 192.0.2.", b"7 127.0.0.1 40000 80\r", b"\n"],
    )
    .await;
    assert_eq!(seen, "192.0.2.7");
    // v2 over IPv6, with TLVs.
    let mut body = Vec::new();
    body.extend_from_slice(
        &"2001:db8::5"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    body.extend_from_slice(
        &"2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    body.extend_from_slice(&[0x9c, 0x40, 0, 80]);
    body.extend_from_slice(&[0x02, 0, 5, b'a', b'.', b'b', b'.', b'c', 0x04, 0, 2, 0, 0]);
    let header = v2(1, 0x21, &body);
    assert_eq!(forwarded_for(addr, &app, &[&header]).await, "2001:db8::5");
    // The rate limit keys by that address too: 192.0.2.7 has had its one request.
    let again = raw_exchange(
        addr,
        b"PROXY TCP4 192.0.2.7 127.0.0.1 40001 80\r\nGET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(again.starts_with("HTTP/1.1 429"), "{again}");
    // The access rules see it: 203.0.113.9 is denied.
    let denied = raw_exchange(
        addr,
        b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 80\r\nGET / HTTP/1.1\r\nhost: a\r\n\r\n",
    )
    .await;
    assert!(denied.starts_with("HTTP/1.1 403"), "{denied}");
    // LOCAL (a health check of the proxy in front): the connection's own address.
    let local = v2(0, 0x00, &[]);
    assert_eq!(forwarded_for(addr, &app, &[&local]).await, "127.0.0.1");
    // No header, a malformed one, a truncated one: closed without an answer.
    for bad in [
        &b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"[..],
        b"PROXY TCP4 192.0.2.1 127.0.0.1 99999 80\r\n",
        b"PROXY TCP4 192.0.2.1",
        &v2(1, 0x11, &[1, 2, 3])[..],
    ] {
        let answer = raw_exchange(addr, bad).await;
        assert_eq!(answer, "", "{:?}", String::from_utf8_lossy(bad));
    }
    assert!(metrics(&f)
        .await
        .contains("fulcrum_proxy_protocol_errors_total{listener=\"web\"} 4"));
    f.stop().await;
}

#[tokio::test]
async fn a_tcp_listener_takes_the_proxy_header_off_and_forwards_the_rest() {
    let b = Backend::start("b1").await;
    let f = Fulcrum::start(&common::tcp_config(
        "proxy_protocol = true\nallow = [\"198.51.100.0/24\"]",
        &common::backends_list(&[(&b, 1)]),
    ))
    .await;
    let addr = f.addr("front");
    let mut c = Client::connect(addr).await;
    c.writer
        .write_all(b"PROXY TCP4 198.51.100.1 127.0.0.1 5000 80\r\nhello")
        .await
        .unwrap();
    assert_eq!(c.greeting().await.as_deref(), Some("b1"));
    c.writer.shutdown().await.unwrap();
    let rest = c.read_to_end().await;
    assert_eq!(
        rest, b"hellobye:b1",
        "the backend got the bytes after the header"
    );
    // Not in `allow`: closed.
    let mut c = Client::connect(addr).await;
    c.writer
        .write_all(b"PROXY TCP4 192.0.2.1 127.0.0.1 5000 80\r\n")
        .await
        .unwrap();
    assert_eq!(c.greeting().await, None);
    f.stop().await;
}

#[tokio::test]
async fn trusted_proxies_name_the_client_and_others_are_never_believed() {
    let app = HttpBackend::start("app").await;
    let listener = |trusted: &str| {
        format!(
            "trusted_proxies = [\"{trusted}\"]\ndeny = [\"203.0.113.0/24\"]\nrate_limit = \"one\"\n\
             request_headers = {{ set = {{ \"x-client\" = \"{{client_ip}}\" }} }}"
        )
    };
    let rules = "[rate_limit.one]\nrate = \"1/h\"";
    // Loopback, where the test client connects from, is trusted.
    let f = Fulcrum::start(&web(&listener("127.0.0.0/8"), "", rules, &app)).await;
    let addr = f.addr("web");
    let (status, _) = get_headers(
        addr,
        "/",
        &[("x-forwarded-for", "6.6.6.6, 198.51.100.9, 127.0.0.5")],
    )
    .await;
    assert_eq!(status, 200);
    let seen = app.last();
    assert_eq!(
        seen.headers["x-client"], "198.51.100.9",
        "the rightmost untrusted entry"
    );
    assert_eq!(
        seen.headers["x-forwarded-for"], "6.6.6.6, 198.51.100.9, 127.0.0.5, 127.0.0.1",
        "the chain is passed on, with the peer appended"
    );
    // The rate limit keys by that client: 198.51.100.9 has had its one request, another
    // client has not.
    let (status, _) = get_headers(addr, "/", &[("x-forwarded-for", "198.51.100.9")]).await;
    assert_eq!(status, 429);
    let (status, _) = get_headers(addr, "/", &[("forwarded", "for=\"[2001:db8::3]:80\"")]).await;
    assert_eq!(status, 200);
    assert_eq!(app.last().headers["x-client"], "2001:db8::3");
    // The access rules see it.
    let (status, _) = get_headers(addr, "/", &[("x-forwarded-for", "203.0.113.50")]).await;
    assert_eq!(status, 403);
    f.stop().await;

    // Loopback is not trusted: the same fields are spoofs, and change nothing.
    let f = Fulcrum::start(&web(&listener("10.0.0.0/8"), "", rules, &app)).await;
    let addr = f.addr("web");
    let (status, _) = get_headers(addr, "/", &[("x-forwarded-for", "203.0.113.50")]).await;
    assert_eq!(status, 200, "a spoofed address is not denied");
    assert_eq!(app.last().headers["x-client"], "127.0.0.1");
    let (status, _) = get_headers(addr, "/", &[("x-forwarded-for", "198.51.100.1")]).await;
    assert_eq!(status, 429, "nor does it get a bucket of its own");
    f.stop().await;
}

/// A backend that wants a PROXY header first: it answers each HTTP request with the
/// source address its connection's header named (`local` for LOCAL / UNKNOWN), and
/// counts connections and LOCAL headers.
struct ProxiedBackend {
    addr: SocketAddr,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    locals: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl ProxiedBackend {
    async fn start(http: bool) -> ProxiedBackend {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let locals = Arc::new(AtomicUsize::new(0));
        let (c, l) = (connections.clone(), locals.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (c, l) = (c.clone(), l.clone());
                tokio::spawn(async move {
                    let Ok(header) = fulcrum::proxy_protocol::read(&mut s).await else {
                        return;
                    };
                    let who = match header.source {
                        Some(a) => a.to_string(),
                        None => {
                            l.fetch_add(1, Ordering::SeqCst);
                            "local".to_string()
                        }
                    };
                    c.fetch_add(1, Ordering::SeqCst);
                    if !http {
                        let _ = s.write_all(format!("{who}\n").as_bytes()).await;
                        return;
                    }
                    let svc = hyper::service::service_fn(move |_req| {
                        let who = who.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(who)),
                            ))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        ProxiedBackend {
            addr,
            connections,
            locals,
            task,
        }
    }
}

impl Drop for ProxiedBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends `count` keep-alive requests on one connection; the bodies.
async fn requests_on_one_connection(addr: SocketAddr, count: usize) -> (SocketAddr, Vec<String>) {
    let s = TcpStream::connect(addr).await.unwrap();
    let me = s.local_addr().unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut bodies = Vec::new();
    for _ in 0..count {
        let req = Request::get("/").header("host", "a").body(empty()).unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        bodies.push(String::from_utf8_lossy(&body).into_owned());
    }
    (me, bodies)
}

#[tokio::test]
async fn http_backend_connections_carry_their_clients_proxy_header_and_no_other() {
    use std::sync::atomic::Ordering;
    for version in ["v1", "v2"] {
        let backend = ProxiedBackend::start(true).await;
        let f = Fulcrum::start(&format!(
            "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nupstream = \"app\"\n\
             [upstream.app]\nproxy_protocol = \"{version}\"\n\
             health = {{ check = \"http\", interval = \"50ms\" }}\n\
             backends = [{{ address = \"{}\", name = \"app\" }}]\n",
            backend.addr
        ))
        .await;
        let addr = f.addr("web");
        let (a, a_seen) = requests_on_one_connection(addr, 3).await;
        let (b, b_seen) = requests_on_one_connection(addr, 3).await;
        assert_ne!(a, b);
        assert!(
            a_seen.iter().all(|s| *s == a.to_string()),
            "{version}: {a} got {a_seen:?}"
        );
        assert!(
            b_seen.iter().all(|s| *s == b.to_string()),
            "{version}: {b} got {b_seen:?}"
        );
        // Health checks say LOCAL / UNKNOWN, and pass.
        common::eventually(
            &format!("{version}: health checks sent a header"),
            common::PATIENCE,
            || async { backend.locals.load(Ordering::SeqCst) > 4 },
        )
        .await;
        assert!(
            f.backend("app", "app").state.is_healthy(),
            "{version}: and passed (more checks than `fall` ran)"
        );
        // Each client connection had its own backend connection, reused.
        let by_clients =
            backend.connections.load(Ordering::SeqCst) - backend.locals.load(Ordering::SeqCst);
        assert_eq!(by_clients, 2, "{version}");
        f.stop().await;
    }
}

#[tokio::test]
async fn a_tcp_listener_sends_the_clients_address_to_its_backend() {
    let backend = ProxiedBackend::start(false).await;
    let f = Fulcrum::start(&format!(
        "[[listener]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nupstream = \"app\"\n\
         proxy_protocol = true\n\
         [upstream.app]\nproxy_protocol = \"v2\"\nbackends = [{{ address = \"{}\", name = \"app\" }}]\n",
        backend.addr
    ))
    .await;
    // The address fulcrum received in its own PROXY header is the one passed on.
    let mut c = Client::connect(f.addr("front")).await;
    c.writer
        .write_all(b"PROXY TCP6 2001:db8::9 2001:db8::1 4242 443\r\n")
        .await
        .unwrap();
    assert_eq!(c.greeting().await.as_deref(), Some("[2001:db8::9]:4242"));
    drop(c);
    f.stop().await;
}
