//! HTTP/3 over QUIC on TLS listeners (`tls.http3 = true`), with a real HTTP/3 client
//! (quinn + h3) on loopback: the same routing, forwarding, cache and errors as over
//! TCP; Alt-Svc on the TCP side; reloads, drains, address validation and garbage.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, Bytes};
use common::h3::{self, H3};
use common::http::*;
use common::metrics::{current, scrape};
use common::tls::Pki;
use common::{refusing_addr, Fulcrum, PATIENCE};
use http::{Request, StatusCode};
use rustls::pki_types::CertificateDer;

/// A PKI whose leaf `site` is valid for `a.test`, `b.test` and 127.0.0.1.
fn pki(name: &str) -> (Pki, CertificateDer<'static>) {
    let pki = Pki::new("h3", name);
    pki.leaf("site", &["a.test", "b.test", "127.0.0.1"]);
    let ca = pki.ca.der().clone();
    (pki, ca)
}

/// An http listener `web` with TLS and HTTP/3 to upstream `app` at `backend`.
fn config(backend: SocketAddr, tls_extra: &str, rest: &str) -> String {
    format!(
        "[global]\nwatch_config = false\n\
         [admin]\nbind = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nupstream = \"app\"\n\
         [listener.tls]\ncertificates = [{{ cert = \"site.pem\", key = \"site.key\" }}]\nhttp3 = true\n{tls_extra}\n\
         {rest}\n\
         [upstream.app]\nbackends = [{{ address = \"{backend}\", name = \"b\" }}]\n"
    )
}

fn is_connection_specific(name: &str) -> bool {
    matches!(
        name,
        "connection" | "keep-alive" | "transfer-encoding" | "upgrade" | "x-hop"
    )
}

#[tokio::test]
async fn get_and_post_carry_20_mib_bodies_both_ways() {
    let (pki, ca) = pki("bodies");
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start_at(&config(b.addr, "", ""), &pki.dir.join("f.toml")).await;
    let addr = f.addr("web");
    let mut c = H3::connect(addr, "a.test", &ca).await;

    let size = 20 << 20;
    let (status, headers, body) = c.get("a.test", &format!("/bytes/{size}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), size);
    assert_eq!(&body[..], &pattern(size)[..]);
    assert_eq!(headers["x-backend"], "b");
    // What belongs to the backend's HTTP/1.1 connection stays there.
    for name in headers.keys() {
        assert!(!is_connection_specific(name.as_str()), "{name} relayed");
    }
    let seen = b.last();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["host"], "a.test");
    assert!(seen.headers.contains_key("x-request-id"));

    let upload = Bytes::from(pattern(size));
    let post = Request::post("https://a.test/echo").body(()).unwrap();
    let (status, _, echoed) = c.request(post, upload.clone()).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echoed.len(), size);
    assert!(echoed == upload, "the echoed body differs");

    // A declared length is forwarded as such.
    let mut post = Request::post("https://a.test/upload").body(()).unwrap();
    post.headers_mut()
        .insert("content-length", "5".parse().unwrap());
    let (status, _, _) = c.request(post, Bytes::from_static(b"hello")).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let seen = b.last();
    assert_eq!(seen.body_len, 5);
    assert_eq!(seen.headers["content-length"], "5");

    // A GET has no body: none is announced to the backend.
    c.get("a.test", "/plain").await;
    let seen = b.last();
    assert!(!seen.headers.contains_key("transfer-encoding"));
    assert_eq!(seen.version, http::Version::HTTP_11);
    f.stop().await;
}

#[tokio::test]
async fn many_streams_at_once_on_one_connection() {
    let (pki, ca) = pki("streams");
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start_at(&config(b.addr, "", ""), &pki.dir.join("f.toml")).await;
    let c = H3::connect(f.addr("web"), "a.test", &ca).await;
    let mut calls = Vec::new();
    for i in 0..60 {
        let mut sender = c.send.clone();
        calls.push(tokio::spawn(async move {
            h3::send(
                &mut sender,
                h3::get("a.test", &format!("/slow/{}", 20 + i % 5)),
                Bytes::new(),
            )
            .await
        }));
    }
    for call in calls {
        let (status, _, body) = call.await.unwrap().unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..], b"b");
    }
    assert_eq!(b.requests().len(), 60);
    // Counted as HTTP/3.
    let admin = f.admin.unwrap();
    let by = current(
        admin,
        "fulcrum_http_requests_by_protocol_total{listener=\"web\",protocol=\"h3\"}",
    )
    .await;
    assert_eq!(by, 60.0);
    f.stop().await;
}

#[tokio::test]
async fn routes_by_host_and_answers_503_when_no_backend_is_there() {
    let (pki, ca) = pki("routes");
    let a = HttpBackend::start("a").await;
    let down = refusing_addr().await;
    let rest = format!(
        "[[listener.route]]\nhost = \"a.test\"\nupstream = \"app\"\n\
         [[listener.route]]\nhost = \"b.test\"\nupstream = \"gone\"\n\
         [upstream.gone]\nbackends = [{{ address = \"{down}\", weight = 0 }}]\n"
    );
    let f = Fulcrum::start_at(&config(a.addr, "", &rest), &pki.dir.join("f.toml")).await;
    let mut c = H3::connect(f.addr("web"), "a.test", &ca).await;
    let (status, headers, _) = c.get("a.test", "/x").await;
    assert_eq!(
        (status, &headers["x-backend"]),
        (StatusCode::OK, &"a".parse().unwrap())
    );
    // Another host on the same connection (the certificate covers both).
    let (status, headers, body) = c.get("b.test", "/x").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "1");
    // The error names no backend.
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains(&down.to_string()), "{text}");
    assert_eq!(a.requests().len(), 1);
    f.stop().await;
}

#[tokio::test]
async fn the_cache_answers_http3_clients() {
    let (pki, ca) = pki("cache");
    let (origin, hits, _task) = fresh_origin("stored").await;
    let rest =
        "[[listener.route]]\nupstream = \"app\"\ncache = true\n[cache]\nmax_size = \"1MiB\"\n";
    let f = Fulcrum::start_at(&config(origin, "", rest), &pki.dir.join("f.toml")).await;
    let mut c = H3::connect(f.addr("web"), "a.test", &ca).await;
    let (_, first, body) = c.get("a.test", "/page").await;
    assert_eq!(&body[..], b"stored");
    let (_, second, body) = c.get("a.test", "/page").await;
    assert_eq!(&body[..], b"stored");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let status = |h: &http::HeaderMap| h["cache-status"].to_str().unwrap().to_string();
    assert!(status(&first).contains("fwd=miss"), "{}", status(&first));
    assert!(status(&second).contains("hit"), "{}", status(&second));
    f.stop().await;
}

#[tokio::test]
async fn tcp_responses_advertise_http3_on_the_same_port() {
    let (pki, ca) = pki("alt-svc");
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start_at(&config(b.addr, "", ""), &pki.dir.join("f.toml")).await;
    let addr = f.addr("web");
    // HTTP/1.1 over TLS.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
    let mut s = connector.connect(name, tcp).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let expected = format!("alt-svc: h3=\":{}\"; ma=86400", addr.port());
    assert!(text.to_ascii_lowercase().contains(&expected), "{text}");
    // HTTP/3 responses do not advertise what they already are.
    let mut c = H3::connect(addr, "a.test", &ca).await;
    let (_, headers, _) = c.get("a.test", "/").await;
    assert!(!headers.contains_key("alt-svc"));
    // /status lists the UDP address.
    let status = get(f.admin.unwrap(), "/status").await.2;
    let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
    assert_eq!(
        status["listeners"][0]["http3"]["udp"][0],
        addr.to_string().as_str()
    );
    f.stop().await;
}

#[tokio::test]
async fn a_reload_keeps_an_open_connection_and_applies_to_its_next_request() {
    let (pki, ca) = pki("reload");
    let b = HttpBackend::start("b").await;
    let file = pki.dir.join("f.toml");
    std::fs::write(&file, config(b.addr, "", "")).unwrap();
    let server = fulcrum::runtime::Server::bind(fulcrum::config::Config::load(&file).unwrap())
        .await
        .unwrap();
    let handle = server.handle();
    let addr = server.local_addrs("web")[0];
    assert_eq!(handle.quic_addrs("web"), vec![addr]);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    let mut c = H3::connect(addr, "a.test", &ca).await;
    let (_, headers, _) = c.get("a.test", "/").await;
    assert!(!headers.contains_key("x-generation"));
    // A new certificate and a new response header.
    pki.leaf("site", &["a.test", "b.test", "127.0.0.1"]);
    let with_header = config(b.addr, "", "").replace(
        "protocol = \"http\"\n",
        "protocol = \"http\"\nresponse_headers = { set = { \"x-generation\" = \"2\" } }\n",
    );
    std::fs::write(&file, with_header).unwrap();
    handle.reload().await.unwrap();
    // The same QUIC connection, now routed by the new generation.
    let (status, headers, _) = c.get("a.test", "/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-generation"], "2");
    assert_eq!(handle.quic_addrs("web"), vec![addr]);
    // New connections get the new certificate.
    let fresh = H3::connect(addr, "a.test", &ca).await;
    let leaf = fresh
        .conn
        .peer_identity()
        .unwrap()
        .downcast::<Vec<CertificateDer<'static>>>()
        .unwrap();
    let old_leaf = c
        .conn
        .peer_identity()
        .unwrap()
        .downcast::<Vec<CertificateDer<'static>>>()
        .unwrap();
    assert_ne!(leaf[0], old_leaf[0]);
    // An upload in flight on the old connection, across the next two reloads.
    let upload = Request::post("https://a.test/echo").body(()).unwrap();
    let mut held = c.send.send_request(upload).await.unwrap();
    held.send_data(Bytes::from_static(b"held ")).await.unwrap();
    common::eventually("the upload reaches the backend", PATIENCE, || async {
        b.requests().iter().any(|s| s.uri.ends_with("/echo"))
    })
    .await;
    // Turning HTTP/3 off stops new QUIC connections.
    std::fs::write(&file, config(b.addr, "", "").replace("http3 = true\n", "")).unwrap();
    handle.reload().await.unwrap();
    assert!(handle.quic_addrs("web").is_empty());
    let refused =
        tokio::time::timeout(Duration::from_secs(3), H3::try_connect(addr, "a.test", &ca)).await;
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "a QUIC connection was accepted"
    );
    // Back on while the old connection still drains: the same socket serves again
    // (a second one bound beside it would take some of the new clients and refuse
    // them), so every new connection is accepted.
    std::fs::write(&file, config(b.addr, "", "")).unwrap();
    handle.reload().await.unwrap();
    assert_eq!(handle.quic_addrs("web"), vec![addr]);
    for _ in 0..8 {
        let fresh = tokio::time::timeout(PATIENCE, H3::try_connect(addr, "a.test", &ca)).await;
        let mut fresh = fresh
            .expect("no handshake")
            .expect("a QUIC connection refused");
        assert_eq!(fresh.get("a.test", "/").await.0, StatusCode::OK);
    }
    // The upload ends and is answered; the old connection, told to go away when
    // HTTP/3 was turned off, is then closed.
    held.send_data(Bytes::from_static(b"then done"))
        .await
        .unwrap();
    held.finish().await.unwrap();
    let resp = held.recv_response().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut echoed = Vec::new();
    while let Some(mut chunk) = held.recv_data().await.unwrap() {
        echoed.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    assert_eq!(echoed, b"held then done");
    tokio::time::timeout(PATIENCE, c.conn.closed())
        .await
        .expect("the old connection was not closed after GOAWAY");
    tx.send(()).unwrap();
    run.await.unwrap();
}

#[tokio::test]
async fn shutdown_sends_goaway_and_lets_requests_in_flight_finish() {
    let (pki, ca) = pki("drain");
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start_at(&config(b.addr, "", ""), &pki.dir.join("f.toml")).await;
    let mut f = f;
    let c = H3::connect(f.addr("web"), "a.test", &ca).await;
    let mut sender = c.send.clone();
    let slow = tokio::spawn(async move {
        h3::send(&mut sender, h3::get("a.test", "/slow/700"), Bytes::new()).await
    });
    common::eventually("the slow request reaches the backend", PATIENCE, || async {
        !b.requests().is_empty()
    })
    .await;
    f.begin_stop();
    let (status, _, body) = slow.await.unwrap().unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"b"[..]));
    // After GOAWAY the client opens no new request on this connection.
    let mut sender = c.send.clone();
    let after = h3::send(&mut sender, h3::get("a.test", "/"), Bytes::new()).await;
    assert!(after.is_err(), "a request was accepted after GOAWAY");
    let report = f.stop().await;
    assert_eq!(report.cut, 0);
}

#[tokio::test]
async fn address_validation_by_retry_can_be_forced() {
    let (pki, ca) = pki("retry");
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start_at(
        &config(b.addr, "http3_retry_above = 0", ""),
        &pki.dir.join("f.toml"),
    )
    .await;
    let mut c = H3::connect(f.addr("web"), "a.test", &ca).await;
    assert_eq!(c.get("a.test", "/").await.0, StatusCode::OK);
    let admin = f.admin.unwrap();
    let text = scrape(admin).await;
    let value = |series: &str| common::metrics::value(&text, series).unwrap_or(0.0);
    assert_eq!(
        value("fulcrum_quic_handshakes_total{listener=\"web\",result=\"retry\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        value("fulcrum_quic_handshakes_total{listener=\"web\",result=\"ok\"}"),
        1.0
    );
    assert_eq!(
        value("fulcrum_quic_connections_active{listener=\"web\"}"),
        1.0
    );
    f.stop().await;
}

#[tokio::test]
async fn garbage_datagrams_get_nothing_back_and_the_listener_keeps_serving() {
    let (pki, ca) = pki("garbage");
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start_at(&config(b.addr, "", ""), &pki.dir.join("f.toml")).await;
    let addr = f.addr("web");
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut sent = 0usize;
    let mut rng = 0x9e3779b97f4a7c15u64;
    for i in 0..200usize {
        let len = 1 + (i * 37) % 1400;
        let mut packet = vec![0u8; len];
        for byte in packet.iter_mut() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            *byte = rng as u8;
        }
        // Half of them look like long-header packets of QUIC version 1.
        if i % 2 == 0 && len > 6 {
            packet[0] = 0xc0 | (packet[0] & 0x0f);
            packet[1..5].copy_from_slice(&1u32.to_be_bytes());
        }
        sent += udp.send_to(&packet, addr).await.unwrap();
    }
    // What comes back (version negotiation, stateless resets) stays within three
    // times what was sent before any address was validated (RFC 9000 8.1).
    let mut received = 0usize;
    let mut buf = vec![0u8; 65536];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), udp.recv(&mut buf)).await
    {
        received += n;
    }
    assert!(received <= 3 * sent, "sent {sent}, received {received}");
    let mut c = H3::connect(addr, "a.test", &ca).await;
    assert_eq!(c.get("a.test", "/").await.0, StatusCode::OK);
    f.stop().await;
}

/// Sends a GET and a POST as early data on a connection still in its handshake (0-RTT)
/// and waits for both answers and the handshake: true if the early data was taken.
async fn early_get_and_post(
    conn: quinn::Connection,
    accepted: quinn::ZeroRttAccepted,
    tag: &str,
) -> bool {
    let (mut driver, send) = ::h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .unwrap();
    let drive = tokio::spawn(async move { driver.wait_idle().await });
    let (mut get_sender, mut post_sender) = (send.clone(), send.clone());
    let post = Request::post(format!("https://a.test/{tag}-post"))
        .body(())
        .unwrap();
    let (got, posted) = tokio::join!(
        h3::send(
            &mut get_sender,
            h3::get("a.test", &format!("/{tag}-get")),
            Bytes::new()
        ),
        h3::send(&mut post_sender, post, Bytes::from_static(b"once")),
    );
    assert_eq!(got.unwrap().0, StatusCode::OK);
    assert_eq!(posted.unwrap().0, StatusCode::OK);
    let taken = accepted.await;
    drive.abort();
    taken
}

/// The `Early-Data` field the backend saw on the request to `path`.
fn early_data_seen(b: &HttpBackend, path: &str) -> Option<http::HeaderValue> {
    b.requests()
        .iter()
        .find(|s| s.uri.ends_with(path))
        .unwrap_or_else(|| panic!("{path} not forwarded"))
        .headers
        .get("early-data")
        .cloned()
}

#[tokio::test]
async fn early_data_is_acted_on_for_safe_requests_only_and_only_when_enabled() {
    for enabled in [true, false] {
        let (pki, ca) = pki(if enabled { "0rtt" } else { "no-0rtt" });
        let b = HttpBackend::start("b").await;
        let extra = if enabled { "http3_0rtt = true" } else { "" };
        let f = Fulcrum::start_at(&config(b.addr, extra, ""), &pki.dir.join("f.toml")).await;
        let addr = f.addr("web");
        let (endpoint, tokenless) = h3::early_data_with_and_without_tokens(&ca);
        // A first visit: a full handshake, session tickets to resume with and tokens
        // that prove the client's address next time.
        {
            let conn = endpoint.connect(addr, "a.test").unwrap().await.unwrap();
            let (mut driver, mut send) = ::h3::client::new(h3_quinn::Connection::new(conn.clone()))
                .await
                .unwrap();
            let drive = tokio::spawn(async move { driver.wait_idle().await });
            h3::send(&mut send, h3::get("a.test", "/first"), Bytes::new())
                .await
                .unwrap();
            conn.close(0u32.into(), b"");
            drive.abort();
        }
        // Resuming without a token: the early data is taken, but nothing is acted on
        // before the handshake proves the client's address (else anyone's address
        // could be claimed past the access rules).
        let without = endpoint
            .connect_with(tokenless, addr, "a.test")
            .unwrap()
            .into_0rtt();
        match without {
            Ok((conn, accepted)) => {
                assert!(enabled, "early data offered without http3_0rtt");
                assert!(early_get_and_post(conn, accepted, "tokenless").await);
                assert_eq!(early_data_seen(&b, "/tokenless-get"), None);
                assert_eq!(early_data_seen(&b, "/tokenless-post"), None);
            }
            Err(connecting) => {
                assert!(!enabled, "no early data offered with http3_0rtt");
                connecting.await.unwrap();
            }
        }
        // Resuming with a token: a GET goes on at once, marked; a POST waits for the
        // handshake.
        match endpoint.connect(addr, "a.test").unwrap().into_0rtt() {
            Ok((conn, accepted)) => {
                assert!(enabled, "early data offered without http3_0rtt");
                assert!(
                    early_get_and_post(conn, accepted, "early").await,
                    "the early data was refused"
                );
                assert_eq!(early_data_seen(&b, "/early-get").unwrap(), "1");
                assert_eq!(early_data_seen(&b, "/early-post"), None);
            }
            Err(connecting) => {
                assert!(!enabled, "no early data offered with http3_0rtt");
                connecting.await.unwrap();
            }
        }
        f.stop().await;
    }
}

#[tokio::test]
async fn a_client_gets_at_most_100_requests_open_at_once() {
    let (pki, ca) = pki("stream-limit");
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start_at(&config(b.addr, "", ""), &pki.dir.join("f.toml")).await;
    let c = H3::connect(f.addr("web"), "a.test", &ca).await;
    // 100 requests open (their uploads never end)...
    let mut open = Vec::new();
    for _ in 0..fulcrum::l7::H3_MAX_CONCURRENT_STREAMS {
        let req = Request::post("https://a.test/echo").body(()).unwrap();
        let mut stream = c.send.clone().send_request(req).await.unwrap();
        stream.send_data(Bytes::from_static(b"x")).await.unwrap();
        open.push(stream);
    }
    // ... and the next one cannot open a stream until some of them end.
    let mut sender = c.send.clone();
    let next = tokio::spawn(async move {
        h3::send(&mut sender, h3::get("a.test", "/after"), Bytes::new()).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!next.is_finished(), "a 101st request was served");
    // QUIC hands out new stream credit in batches (quinn: once an eighth of the
    // limit is free): 13 requests end.
    for mut ended in open.drain(..13) {
        ended.finish().await.unwrap();
        assert_eq!(
            ended.recv_response().await.unwrap().status(),
            StatusCode::OK
        );
        while ended.recv_data().await.unwrap().is_some() {}
    }
    let (status, _, _) = tokio::time::timeout(PATIENCE, next)
        .await
        .expect("the 101st request once streams ended")
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    drop(open);
    f.stop().await;
}

#[tokio::test]
async fn a_client_that_changes_address_keeps_its_connection() {
    let (pki, ca) = pki("migration");
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start_at(&config(b.addr, "", ""), &pki.dir.join("f.toml")).await;
    let mut c = H3::connect(f.addr("web"), "a.test", &ca).await;
    assert_eq!(c.get("a.test", "/before").await.0, StatusCode::OK);
    let before = c.endpoint.local_addr().unwrap();
    // A new UDP socket, as when a phone moves from Wi-Fi to mobile data.
    c.endpoint
        .rebind(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .unwrap();
    assert_ne!(c.endpoint.local_addr().unwrap(), before);
    assert_eq!(c.get("a.test", "/after").await.0, StatusCode::OK);
    assert!(c.conn.close_reason().is_none());
    f.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_has_its_stream_reset_after_idle_timeout() {
    let (pki, ca) = pki("stalled");
    let b = HttpBackend::start("b").await;
    let config = config(b.addr, "", "").replace(
        "protocol = \"http\"\n",
        "protocol = \"http\"\nidle_timeout = \"1s\"\n",
    );
    let f = Fulcrum::start_at(&config, &pki.dir.join("f.toml")).await;
    // Its pings keep the connection alive while it reads nothing.
    let endpoint = h3::endpoint_pinging(&ca, Duration::from_millis(200));
    let conn = endpoint
        .connect(f.addr("web"), "a.test")
        .unwrap()
        .await
        .unwrap();
    let (mut driver, mut send) = ::h3::client::new(h3_quinn::Connection::new(conn.clone()))
        .await
        .unwrap();
    let drive = tokio::spawn(async move { driver.wait_idle().await });
    let mut stream = send
        .send_request(h3::get("a.test", &format!("/bytes/{}", 20 << 20)))
        .await
        .unwrap();
    stream.finish().await.unwrap();
    // The response stalls on flow control; its request ends (and is counted).
    let admin = f.admin.unwrap();
    common::eventually("the stalled response is given up", PATIENCE, || async {
        current(
            admin,
            "fulcrum_http_requests_total{code=\"200\",listener=\"web\",upstream=\"app\"}",
        )
        .await
            == 1.0
    })
    .await;
    // Reading now ends in the reset (H3_REQUEST_CANCELLED), not in 20 MiB.
    let read = async {
        stream.recv_response().await?;
        let mut got = 0usize;
        while let Some(chunk) = stream.recv_data().await? {
            got += bytes::Buf::remaining(&chunk);
        }
        Ok::<usize, ::h3::error::StreamError>(got)
    };
    let read = read.await;
    assert!(read.is_err(), "the whole body arrived: {read:?}");
    // The connection itself still serves.
    let (status, _, _) = h3::send(&mut send, h3::get("a.test", "/next"), Bytes::new())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    drive.abort();
    f.stop().await;
}

/// A HEADERS frame of HTTP/3 carrying `fields`, QPACK-encoded with the static table only.
fn headers_frame(fields: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x01, fields.len() as u8 + 2, 0x00, 0x00];
    frame.extend_from_slice(fields);
    frame
}

/// A QUIC variable-length integer read from `rx`.
async fn read_varint(rx: &mut quinn::RecvStream) -> u64 {
    let mut first = [0u8; 1];
    rx.read_exact(&mut first).await.unwrap();
    let extra = (1usize << (first[0] >> 6)) - 1;
    let mut rest = [0u8; 7];
    rx.read_exact(&mut rest[..extra]).await.unwrap();
    rest[..extra]
        .iter()
        .fold(u64::from(first[0] & 0x3f), |n, b| (n << 8) | u64::from(*b))
}

/// The stream id of the first GOAWAY on the server's control stream (the server's
/// other unidirectional streams are kept open, not read).
async fn goaway_id(conn: &quinn::Connection, others: &mut Vec<quinn::RecvStream>) -> u64 {
    loop {
        let mut rx = conn.accept_uni().await.unwrap();
        if read_varint(&mut rx).await != 0x00 {
            others.push(rx);
            continue;
        }
        loop {
            let (kind, len) = (read_varint(&mut rx).await, read_varint(&mut rx).await);
            let mut payload = vec![0u8; len as usize];
            rx.read_exact(&mut payload).await.unwrap();
            if kind == 0x07 {
                let n = payload.len();
                let mut id = u64::from(payload[0] & 0x3f);
                for b in &payload[1..n] {
                    id = (id << 8) | u64::from(*b);
                }
                return id;
            }
        }
    }
}

#[tokio::test]
async fn a_request_on_the_stream_goaway_names_is_rejected_unserved() {
    let (pki, ca) = pki("goaway-id");
    let b = HttpBackend::start("b").await;
    let mut f = Fulcrum::start_at(&config(b.addr, "", ""), &pki.dir.join("f.toml")).await;
    let endpoint = h3::endpoint(&ca);
    let conn = endpoint
        .connect(f.addr("web"), "a.test")
        .unwrap()
        .await
        .unwrap();
    // HTTP/3 by hand: a control stream with empty SETTINGS...
    let mut control = conn.open_uni().await.unwrap();
    control.write_all(&[0x00, 0x04, 0x00]).await.unwrap();
    // ... stream 0: POST /echo, its upload left open...
    let (mut first, mut first_rx) = conn.open_bi().await.unwrap();
    let post = [
        &[0xd4, 0xd7, 0x51, 0x05][..],
        b"/echo",
        &[0x50, 0x06],
        b"a.test",
    ]
    .concat();
    first.write_all(&headers_frame(&post)).await.unwrap();
    first.write_all(b"\x00\x04held").await.unwrap();
    common::eventually("the upload reaches the backend", PATIENCE, || async {
        !b.requests().is_empty()
    })
    .await;
    // ... and stream 4 opened, nothing sent on it yet (the server learns of a stream
    // from its first bytes).
    let (mut second, mut second_rx) = conn.open_bi().await.unwrap();
    f.begin_stop();
    let mut others = Vec::new();
    assert_eq!(goaway_id(&conn, &mut others).await, 4);
    // A GET on stream 4 now: refused, unserved (the client may send it elsewhere).
    let get = [&[0xd1, 0xd7, 0xc1, 0x50, 0x06][..], b"a.test"].concat();
    second.write_all(&headers_frame(&get)).await.unwrap();
    second.finish().unwrap();
    match second_rx.read_to_end(1 << 16).await {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
            assert_eq!(code.into_inner(), 0x10b, "not H3_REQUEST_REJECTED")
        }
        other => panic!("stream 4 was not rejected: {other:?}"),
    }
    // Stream 0 is answered in full.
    first.write_all(b"\x00\x05 done").await.unwrap();
    first.finish().unwrap();
    let answer = first_rx.read_to_end(1 << 20).await.unwrap();
    assert!(answer.windows(4).any(|w| w == b"held"));
    assert!(answer.windows(5).any(|w| w == b" done"));
    assert_eq!(b.requests().len(), 1, "the rejected request was forwarded");
    let report = f.stop().await;
    assert_eq!(report.cut, 0);
    drop(others);
}

#[tokio::test]
async fn a_connection_that_ends_takes_its_requests_with_it() {
    let (pki, ca) = pki("conn-ends");
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start_at(&config(b.addr, "", ""), &pki.dir.join("f.toml")).await;
    let c = H3::connect(f.addr("web"), "a.test", &ca).await;
    let mut sender = c.send.clone();
    let slow = tokio::spawn(async move {
        h3::send(&mut sender, h3::get("a.test", "/slow/60000"), Bytes::new()).await
    });
    common::eventually("the request reaches the backend", PATIENCE, || async {
        !b.requests().is_empty()
    })
    .await;
    // The client goes away with its request unanswered: the upstream request is
    // dropped at once, not when its answer comes a minute later.
    c.conn.close(0u32.into(), b"bye");
    common::eventually("the upstream request is dropped", PATIENCE, || async {
        b.abandoned.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(slow.await.unwrap().is_err());
    f.stop().await;
}
