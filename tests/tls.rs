//! TLS termination: certificates by SNI, ALPN, versions, client certificates, TLS in
//! front of TCP, and what a broken handshake gets. The PKI is made by each test.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::http::*;
use common::tls::{tls_backend, tls_backend_speaking, Pki};
use common::{Backend, Fulcrum};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

/// The clients and files of a test's PKI.
trait PkiExt {
    fn file(&self) -> PathBuf;
    fn client(&self, alpn: &[&str], tls12_only: bool, identity: Option<&str>) -> TlsConnector;
}

impl PkiExt for Pki {
    fn file(&self) -> PathBuf {
        self.dir.join("fulcrum.toml")
    }

    fn client(&self, alpn: &[&str], tls12_only: bool, identity: Option<&str>) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match identity {
            Some(name) => {
                let chain = CertificateDer::pem_file_iter(self.dir.join(format!("{name}.pem")))
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                let key =
                    PrivateKeyDer::from_pem_file(self.dir.join(format!("{name}.key"))).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn connect(c: &TlsConnector, addr: std::net::SocketAddr, name: &str) -> std::io::Result<Tls> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), c.connect(server_name, tcp))
        .await
        .expect("handshake in time")
}

fn peer_leaf(s: &Tls) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// One HTTP/1.1 request over the stream; returns the status line and the whole response.
async fn http1(s: &mut Tls, path: &str) -> String {
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn https_config(backend: &HttpBackend, tls_extra: &str) -> String {
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nupstream = \"app\"\nheader_timeout = \"500ms\"\n\
         [listener.tls]\ncertificates = [\n\
           {{ cert = \"default.pem\", key = \"default.key\" }},\n\
           {{ cert = \"a.pem\", key = \"a.key\" }},\n\
           {{ cert = \"wild.pem\", key = \"wild.key\" }},\n\
         ]\n{tls_extra}\n\
         [upstream.app]\nbackends = [{{ address = \"{}\", name = \"b\" }}]\n",
        backend.addr
    )
}

fn standard_pki(name: &str) -> (Pki, [CertificateDer<'static>; 3]) {
    let pki = Pki::new("tls", name);
    let d = pki.leaf("default", &["default.test", "127.0.0.1"]);
    let a = pki.leaf("a", &["a.test"]);
    let w = pki.leaf("wild", &["*.wild.test"]);
    (pki, [d, a, w])
}

#[tokio::test]
async fn sni_picks_the_certificate_and_the_first_is_the_default() {
    let (pki, [default, a, wild]) = standard_pki("sni");
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start_at(&https_config(&b, ""), &pki.file()).await;
    let addr = f.addr("web");
    let c = pki.client(&["http/1.1"], false, None);
    assert_eq!(peer_leaf(&connect(&c, addr, "a.test").await.unwrap()), a);
    assert_eq!(
        peer_leaf(&connect(&c, addr, "x.wild.test").await.unwrap()),
        wild
    );
    assert_eq!(
        peer_leaf(&connect(&c, addr, "default.test").await.unwrap()),
        default
    );
    // No SNI at all (an IP address as the name): the default certificate.
    assert_eq!(
        peer_leaf(&connect(&c, addr, "127.0.0.1").await.unwrap()),
        default
    );
    // An unknown name gets the default, which the client then rightly refuses.
    assert!(connect(&c, addr, "other.test").await.is_err());
    f.stop().await;
}

#[tokio::test]
async fn alpn_offers_h2_and_http11_and_requests_are_forwarded_as_https() {
    let (pki, _) = standard_pki("alpn");
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start_at(&https_config(&b, ""), &pki.file()).await;
    let addr = f.addr("web");
    let mut s = connect(&pki.client(&["http/1.1"], false, None), addr, "a.test")
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let resp = http1(&mut s, "/").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(b.last().headers["x-forwarded-proto"], "https");

    let s = connect(
        &pki.client(&["h2", "http/1.1"], false, None),
        addr,
        "a.test",
    )
    .await
    .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://a.test/h2")
        .body(empty())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(b.last().uri, "/h2");
    f.stop().await;
}

#[tokio::test]
async fn tls12_is_refused_under_min_version_13_and_counted() {
    let (pki, _) = standard_pki("min13");
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start_at(&https_config(&b, "min_version = \"1.3\""), &pki.file()).await;
    let addr = f.addr("web");
    assert!(connect(&pki.client(&[], true, None), addr, "a.test")
        .await
        .is_err());
    let mut ok = connect(&pki.client(&[], false, None), addr, "a.test")
        .await
        .unwrap();
    assert_eq!(
        ok.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert!(http1(&mut ok, "/").await.starts_with("HTTP/1.1 200"));
    let (_, _, metrics) = get(f.admin.unwrap(), "/metrics").await;
    let text = String::from_utf8_lossy(&metrics);
    assert!(
        text.contains("fulcrum_tls_handshakes_total{listener=\"web\",result=\"failed\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("fulcrum_tls_handshakes_total{listener=\"web\",result=\"ok\"} 1"),
        "{text}"
    );
    f.stop().await;
}

#[tokio::test]
async fn client_certificates_are_required_and_verified_with_client_ca() {
    let (pki, _) = standard_pki("mtls");
    pki.leaf("client", &["client.test"]);
    let other = Pki::new("tls", "mtls-other");
    other.leaf("stranger", &["stranger.test"]);
    std::fs::copy(other.dir.join("stranger.pem"), pki.dir.join("stranger.pem")).unwrap();
    std::fs::copy(other.dir.join("stranger.key"), pki.dir.join("stranger.key")).unwrap();
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start_at(&https_config(&b, "client_ca = \"ca.pem\""), &pki.file()).await;
    let addr = f.addr("web");
    let mut with = connect(&pki.client(&[], false, Some("client")), addr, "a.test")
        .await
        .unwrap();
    assert!(http1(&mut with, "/").await.starts_with("HTTP/1.1 200"));
    for identity in [None, Some("stranger")] {
        // With TLS 1.3 the refusal can surface after the client's handshake completes.
        let refused = match connect(&pki.client(&[], false, identity), addr, "a.test").await {
            Err(_) => true,
            Ok(mut s) => !http1(&mut s, "/").await.starts_with("HTTP/1.1 200"),
        };
        assert!(refused, "{identity:?} was let in");
    }
    assert_eq!(b.requests().len(), 1);
    f.stop().await;
}

#[tokio::test]
async fn tls_terminates_in_front_of_a_plain_tcp_backend() {
    let (pki, _) = standard_pki("tcp");
    let a = Backend::start("a").await;
    let config = format!(
        "[[listener]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nupstream = \"app\"\n\
         [listener.tls]\ncertificates = [{{ cert = \"a.pem\", key = \"a.key\" }}]\n\
         [upstream.app]\nbackends = [{{ address = \"{}\", name = \"a\" }}]\n",
        a.addr
    );
    let f = Fulcrum::start_at(&config, &pki.file()).await;
    let mut s = connect(&pki.client(&[], false, None), f.addr("front"), "a.test")
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), None);
    s.write_all(b"ping").await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .ok();
    assert_eq!(String::from_utf8_lossy(&out), "a\npingbye:a");
    f.stop().await;
}

#[tokio::test]
async fn garbage_and_stalled_handshakes_are_closed_and_counted() {
    let (pki, _) = standard_pki("garbage");
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start_at(&https_config(&b, ""), &pki.file()).await;
    let addr = f.addr("web");
    let resp = raw_exchange(addr, b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n").await;
    assert!(!resp.contains("200"), "{resp}");
    // A client that opens and says nothing is cut at header_timeout (500 ms here).
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    let (_, _, metrics) = get(f.admin.unwrap(), "/metrics").await;
    let text = String::from_utf8_lossy(&metrics);
    assert!(
        text.contains("fulcrum_tls_handshakes_total{listener=\"web\",result=\"failed\"} 2"),
        "{text}"
    );
    assert!(b.requests().is_empty());
    f.stop().await;
}

#[test]
fn check_refuses_a_key_that_does_not_match_its_certificate() {
    let pki = Pki::new("tls", "mismatch");
    pki.leaf("a", &["a.test"]);
    pki.leaf("b", &["b.test"]);
    let src = "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n\
               [listener.tls]\ncertificates = [{ cert = \"a.pem\", key = \"b.key\" }]\n";
    let err = fulcrum::config::Config::parse(src, &pki.file())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`listener[0].tls.certificates[0].key`"),
        "{err}"
    );
    assert!(err.contains("b.key does not match"), "{err}");
}

#[tokio::test]
async fn backends_are_reached_over_verified_tls() {
    let pki = Pki::new("tls", "upstream");
    pki.leaf("backend", &["backend.test"]);
    let other = Pki::new("tls", "upstream-other");
    std::fs::copy(other.dir.join("ca.pem"), pki.dir.join("other-ca.pem")).unwrap();
    let (addr, _task) = tls_backend(&pki, "backend").await;
    for (ca, expected) in [("ca.pem", 200), ("other-ca.pem", 502)] {
        let config = format!(
            "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nupstream = \"app\"\n\
             [upstream.app]\nretries = 0\nbackends = [{{ address = \"{addr}\" }}]\n\
             tls = {{ sni = \"backend.test\", ca = \"{ca}\" }}\n"
        );
        let f = Fulcrum::start_at(&config, &pki.file()).await;
        let (status, _, body) = get(f.addr("web"), "/").await;
        assert_eq!(status.as_u16(), expected, "with {ca}");
        if expected == 200 {
            assert_eq!(body, "tls-backend");
        }
        f.stop().await;
    }
    // The TCP engine too: TLS offload to the backend.
    let config = format!(
        "[[listener]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nupstream = \"app\"\n\
         [upstream.app]\nbackends = [{{ address = \"{addr}\" }}]\n\
         tls = {{ sni = \"backend.test\", ca = \"ca.pem\" }}\n"
    );
    let f = Fulcrum::start_at(&config, &pki.file()).await;
    let resp = raw_exchange(
        f.addr("front"),
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.ends_with("tls-backend"),
        "{resp}"
    );
    f.stop().await;
}

#[tokio::test]
async fn h2_backends_are_reached_over_tls_with_alpn_h2() {
    let pki = Pki::new("tls", "upstream-h2");
    pki.leaf("backend", &["backend.test"]);
    let (h2, _t1) = tls_backend_speaking(&pki, "backend", true).await;
    let (h1, _t2) = tls_backend_speaking(&pki, "backend", false).await;
    for (addr, expected) in [(h2, 200), (h1, 502)] {
        let config = format!(
            "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nupstream = \"app\"\n\
             [upstream.app]\nprotocol = \"h2\"\nretries = 0\nbackends = [{{ address = \"{addr}\" }}]\n\
             tls = {{ sni = \"backend.test\", ca = \"ca.pem\" }}\n"
        );
        let f = Fulcrum::start_at(&config, &pki.file()).await;
        let (status, _, body) = get(f.addr("web"), "/").await;
        // A backend that does not agree to h2 in ALPN fails the connect.
        assert_eq!(status.as_u16(), expected);
        if expected == 200 {
            assert_eq!(body, "tls-backend over h2");
        }
        f.stop().await;
    }
}

#[tokio::test]
async fn auto_speaks_what_each_backend_picks_in_alpn() {
    let pki = Pki::new("tls", "upstream-auto");
    pki.leaf("backend", &["backend.test"]);
    let (h2, _t1) = tls_backend_speaking(&pki, "backend", true).await;
    let (h1, _t2) = tls_backend_speaking(&pki, "backend", false).await;
    let config = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nupstream = \"app\"\n\
         [upstream.app]\nprotocol = \"auto\"\nretries = 0\n\
         backends = [{{ address = \"{h2}\" }}, {{ address = \"{h1}\" }}]\n\
         tls = {{ sni = \"backend.test\", ca = \"ca.pem\" }}\n"
    );
    let f = Fulcrum::start_at(&config, &pki.file()).await;
    let mut answers = Vec::new();
    for _ in 0..6 {
        let (status, _, body) = get(f.addr("web"), "/").await;
        assert_eq!(status, 200);
        answers.push(String::from_utf8_lossy(&body).into_owned());
    }
    answers.sort();
    assert_eq!(
        answers,
        [
            "tls-backend",
            "tls-backend",
            "tls-backend",
            "tls-backend over h2",
            "tls-backend over h2",
            "tls-backend over h2"
        ]
    );
    // Each request took one connection, opened (to learn ALPN) or reused: never both.
    let (_, _, text) = get(f.admin.unwrap(), "/metrics").await;
    let text = String::from_utf8_lossy(&text);
    let total: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("fulcrum_backend_connections_opened_total{")
                || l.starts_with("fulcrum_backend_connections_reused_total{")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(total, 6.0, "{text}");
    f.stop().await;
}

#[tokio::test]
async fn a_reload_swaps_the_certificate_without_dropping_an_open_connection() {
    let pki = Pki::new("tls", "reload");
    let first = pki.leaf("site", &["a.test"]);
    let b = HttpBackend::start("b").await;
    std::fs::write(
        pki.file(),
        format!(
            "[global]\nwatch_config = false\n\
             [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nupstream = \"app\"\n\
             [listener.tls]\ncertificates = [{{ cert = \"site.pem\", key = \"site.key\" }}]\n\
             [upstream.app]\nbackends = [{{ address = \"{}\" }}]\n",
            b.addr
        ),
    )
    .unwrap();
    let config = fulcrum::config::Config::load(&pki.file()).unwrap();
    let server = fulcrum::runtime::Server::bind(config).await.unwrap();
    let handle = server.handle();
    let addr = server.local_addrs("web")[0];
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    // A new client each time: a resumed session would report the certificate of the
    // session it resumes (tickets outlive reloads).
    let c = || pki.client(&["http/1.1"], false, None);
    let mut open = connect(&c(), addr, "a.test").await.unwrap();
    assert_eq!(peer_leaf(&open), first);
    let second = pki.leaf("site", &["a.test"]);
    assert_ne!(first, second);
    handle.reload().await.unwrap();
    assert_eq!(
        peer_leaf(&connect(&c(), addr, "a.test").await.unwrap()),
        second
    );
    // The connection opened before the reload still works, on its old session.
    assert!(http1(&mut open, "/").await.starts_with("HTTP/1.1 200"));
    // A broken key refuses the reload whole: the new certificate keeps serving.
    std::fs::write(pki.dir.join("site.key"), "not a key").unwrap();
    assert!(handle.reload().await.is_err());
    assert_eq!(
        peer_leaf(&connect(&c(), addr, "a.test").await.unwrap()),
        second
    );
    // Session tickets outlive reloads: a returning client resumes without a full handshake.
    let same = c();
    let mut first_visit = connect(&same, addr, "a.test").await.unwrap();
    assert!(http1(&mut first_visit, "/")
        .await
        .starts_with("HTTP/1.1 200"));
    let _ = pki.leaf("site", &["a.test"]);
    handle.reload().await.unwrap();
    let back = connect(&same, addr, "a.test").await.unwrap();
    assert_eq!(
        back.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    tx.send(()).unwrap();
    run.await.unwrap();
}

#[tokio::test]
async fn a_tcp_listener_routes_tls_by_sni_without_terminating_it() {
    let pki = Pki::new("tls", "sni-passthrough");
    let a_leaf = pki.leaf("a", &["a.example"]);
    let b_leaf = pki.leaf("b", &["x.b.example", "y.b.example"]);
    let (a, a_task) = tls_backend(&pki, "a").await;
    let (b, b_task) = tls_backend(&pki, "b").await;
    let f = Fulcrum::start_at(
        &format!(
            "[[listener]]\nname = \"sni\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nheader_timeout = \"1s\"\n\
             [[listener.route]]\nsni = \"a.example\"\nupstream = \"a\"\n\
             [[listener.route]]\nsni = \"*.b.example\"\nupstream = \"b\"\n\
             [upstream.a]\nbackends = [{{ address = \"{a}\" }}]\n\
             [upstream.b]\nbackends = [{{ address = \"{b}\" }}]\n"
        ),
        &pki.file(),
    )
    .await;
    let addr = f.addr("sni");
    let client = pki.client(&[], false, None);
    // The client verifies each backend's own certificate, end to end.
    for (name, leaf) in [
        ("a.example", &a_leaf),
        ("x.b.example", &b_leaf),
        ("Y.B.Example", &b_leaf),
    ] {
        let mut s = connect(&client, addr, name).await.expect(name);
        assert_eq!(&peer_leaf(&s), leaf, "{name}");
        let answer = http1(&mut s, "/").await;
        assert!(answer.contains("tls-backend"), "{name}: {answer}");
    }
    // No route for the name, no listener upstream: closed.
    assert!(connect(&client, addr, "c.example").await.is_err());
    // Not TLS, or nothing within header_timeout: closed.
    for raw in [&b"GET / HTTP/1.1\r\n\r\n"[..], b"\x16\x03\x01"] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(raw).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    f.stop().await;
    a_task.abort();
    b_task.abort();
}

#[tokio::test]
async fn a_server_name_no_route_takes_goes_to_the_listeners_upstream() {
    let pki = Pki::new("tls", "sni-default");
    let a_leaf = pki.leaf("a", &["a.example", "other.example"]);
    let b_leaf = pki.leaf("b", &["b.example"]);
    let (a, a_task) = tls_backend(&pki, "a").await;
    let (b, b_task) = tls_backend(&pki, "b").await;
    let f = Fulcrum::start_at(
        &format!(
            "[[listener]]\nname = \"sni\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nupstream = \"a\"\n\
             [[listener.route]]\nsni = \"b.example\"\nupstream = \"b\"\n\
             [upstream.a]\nbackends = [{{ address = \"{a}\" }}]\n\
             [upstream.b]\nbackends = [{{ address = \"{b}\" }}]\n"
        ),
        &pki.file(),
    )
    .await;
    let client = pki.client(&[], false, None);
    let s = connect(&client, f.addr("sni"), "other.example")
        .await
        .unwrap();
    assert_eq!(peer_leaf(&s), a_leaf);
    drop(s);
    let s = connect(&client, f.addr("sni"), "b.example").await.unwrap();
    assert_eq!(peer_leaf(&s), b_leaf);
    drop(s);
    f.stop().await;
    a_task.abort();
    b_task.abort();
}

#[tokio::test]
async fn every_served_certificate_has_its_expiry_in_the_metrics() {
    let (pki, _) = standard_pki("expiry");
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start_at(&https_config(&b, ""), &pki.file()).await;
    let (_, _, metrics) = get(f.admin.unwrap(), "/metrics").await;
    let text = String::from_utf8_lossy(&metrics);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    for name in ["default.test", "a.test", "*.wild.test"] {
        let series =
            format!("fulcrum_tls_certificate_expiry_seconds{{listener=\"web\",name=\"{name}\"}} ");
        let value: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .unwrap_or_else(|| panic!("no {series}in:\n{text}"))
            .parse()
            .unwrap();
        // rcgen's certificates are valid until 4096.
        assert!(value > now + 1000.0 * 365.0 * 86400.0, "{name}: {value}");
    }
    f.stop().await;
}

/// Handshakes with `name`, offering `schemes`: the leaf the server chose and the OCSP
/// response it stapled.
async fn chosen(
    addr: std::net::SocketAddr,
    name: &str,
    schemes: &[rustls::SignatureScheme],
) -> (CertificateDer<'static>, Vec<u8>) {
    let recorder = common::tls::Recorder::new(schemes);
    let mut s = connect(&recorder.connector(), addr, name)
        .await
        .expect("handshake");
    assert!(http1(&mut s, "/").await.starts_with("HTTP/1.1 200"));
    recorder.take().expect("the server's certificate")
}

#[tokio::test]
async fn ecdsa_capable_clients_get_ecdsa_others_rsa_and_ocsp_is_stapled() {
    use rustls::SignatureScheme as S;
    let pki = Pki::new("tls", "dual");
    let ec = pki.leaf("ec", &["dual.test"]);
    // An RSA certificate for the same name (rcgen with ring makes no RSA keys).
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
        ])
        .args([
            "-subj",
            "/CN=dual.test",
            "-addext",
            "subjectAltName=DNS:dual.test",
        ])
        .arg("-keyout")
        .arg(pki.dir.join("rsa.key"))
        .arg("-out")
        .arg(pki.dir.join("rsa.pem"))
        .output();
    if !made.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: openssl cannot make an RSA certificate: {made:?}");
        return;
    }
    let rsa = CertificateDer::from_pem_file(pki.dir.join("rsa.pem")).unwrap();
    // A stapled response is served as it is in the file.
    let ocsp = [0x30, 0x03, 0x0a, 0x01, 0x00];
    std::fs::write(pki.dir.join("ec.ocsp"), ocsp).unwrap();
    let b = HttpBackend::start("b").await;
    // RSA first: the choice is by the client's schemes, not the order.
    let config = format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nupstream = \"app\"\n\
         [listener.tls]\ncertificates = [\n\
           {{ cert = \"rsa.pem\", key = \"rsa.key\" }},\n\
           {{ cert = \"ec.pem\", key = \"ec.key\", ocsp = \"ec.ocsp\" }},\n\
         ]\n\
         [upstream.app]\nbackends = [{{ address = \"{}\" }}]\n",
        b.addr
    );
    let f = Fulcrum::start_at(&config, &pki.file()).await;
    let addr = f.addr("web");
    let all = [
        S::ECDSA_NISTP256_SHA256,
        S::ECDSA_NISTP384_SHA384,
        S::RSA_PSS_SHA256,
        S::RSA_PKCS1_SHA256,
    ];
    let rsa_only = [S::RSA_PSS_SHA256, S::RSA_PSS_SHA384, S::RSA_PKCS1_SHA256];
    let (leaf, stapled) = chosen(addr, "dual.test", &all).await;
    assert_eq!(
        leaf, ec,
        "an ECDSA-capable client gets the ECDSA certificate"
    );
    assert_eq!(stapled, ocsp, "with its stapled OCSP response");
    let (leaf, stapled) = chosen(addr, "dual.test", &rsa_only).await;
    assert_eq!(leaf, rsa, "a client without ECDSA gets the RSA certificate");
    assert!(stapled.is_empty());
    // Without SNI (an IP address), the same choice among the default's alternatives.
    assert_eq!(chosen(addr, "127.0.0.1", &all).await.0, ec);
    assert_eq!(chosen(addr, "127.0.0.1", &rsa_only).await.0, rsa);
    f.stop().await;
}

#[test]
fn an_ocsp_file_must_be_a_der_response_and_auto_needs_a_responder_and_the_issuer() {
    let pki = Pki::new("tls", "ocspcheck");
    pki.leaf("ec", &["a.test"]);
    std::fs::write(pki.dir.join("bad.ocsp"), "not DER").unwrap();
    // The leaf alone, without its issuer after it, but naming a responder.
    let (_, leaf, _) = ocsp_pki(&pki, "http://127.0.0.1:9/");
    std::fs::write(pki.dir.join("alone.pem"), leaf.pem()).unwrap();
    let file = |cert: &str, ocsp: &str| {
        format!(
            "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nupstream = \"app\"\n\
             [listener.tls]\ncertificates = [{{ cert = \"{cert}.pem\", key = \"{cert}.key\", ocsp = \"{ocsp}\" }}]\n\
             [upstream.app]\nbackends = [{{ address = \"127.0.0.1:9\" }}]\n"
        )
    };
    std::fs::copy(pki.dir.join("stapled.key"), pki.dir.join("alone.key")).unwrap();
    for (cert, ocsp, expected) in [
        ("ec", "bad.ocsp", "is not a DER OCSP response"),
        ("ec", "missing.ocsp", "cannot be read"),
        ("ec", "auto", "names no OCSP responder"),
        ("alone", "auto", "needs its issuer's certificate after it"),
    ] {
        let err = fulcrum::config::Config::parse(&file(cert, ocsp), &pki.file())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("listener[0].tls.certificates[0].ocsp") && err.contains(expected),
            "{err}"
        );
    }
    fulcrum::config::Config::parse(&file("stapled", "auto"), &pki.file()).unwrap();
}

/// A CA of its own (`ocsp-ca.pem`, `ocsp-ca.key`) and a leaf for `ocsp.test` naming
/// `responder` in its Authority Information Access, written as `stapled.pem` (leaf,
/// then the CA) and `stapled.key`. Returns the CA, the leaf and its serial in hex as
/// openssl's index writes it.
fn ocsp_pki(
    pki: &Pki,
    responder: &str,
) -> (
    rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    rcgen::Certificate,
    String,
) {
    use rcgen::{BasicConstraints, CertificateParams, CustomExtension, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    std::fs::write(pki.dir.join("ocsp-ca.key"), ca_key.serialize_pem()).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fulcrum OCSP test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(params, ca_key).unwrap();
    std::fs::write(pki.dir.join("ocsp-ca.pem"), ca.pem()).unwrap();
    // AuthorityInfoAccess: SEQUENCE { SEQUENCE { id-ad-ocsp, [6] URI } }
    let der = |tag: u8, content: &[u8]| {
        assert!(content.len() < 128);
        [&[tag, content.len() as u8][..], content].concat()
    };
    let ocsp_oid = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01];
    let access = der(
        0x30,
        &[&ocsp_oid[..], &der(0x86, responder.as_bytes())].concat(),
    );
    let aia = der(0x30, &access);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["ocsp.test".to_string()]).unwrap();
    params.custom_extensions = vec![CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 5, 5, 7, 1, 1],
        aia,
    )];
    let leaf = params.signed_by(&key, &ca).unwrap();
    std::fs::write(
        pki.dir.join("stapled.pem"),
        format!("{}{}", leaf.pem(), ca.pem()),
    )
    .unwrap();
    std::fs::write(pki.dir.join("stapled.key"), key.serialize_pem()).unwrap();
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.der()).unwrap();
    let serial: String = parsed
        .raw_serial()
        .iter()
        .skip_while(|b| **b == 0)
        .map(|b| format!("{b:02X}"))
        .collect();
    (ca, leaf, serial)
}

/// An OCSP responder on loopback: each POSTed request is answered by `openssl ocsp`
/// from `index.txt`, signed by the test CA. Counts the requests.
async fn ocsp_responder(
    dir: PathBuf,
) -> (
    std::net::SocketAddr,
    Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // The head, then content-length bytes of body.
            let body = loop {
                let n = s.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len: usize = text
                        .lines()
                        .find_map(|l| {
                            l.strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break Some(buf[end + 4..end + 4 + len].to_vec());
                    }
                }
            };
            let Some(body) = body else { continue };
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::fs::write(dir.join("req.der"), &body).unwrap();
            let status = std::process::Command::new("openssl")
                .current_dir(&dir)
                .args([
                    "ocsp",
                    "-index",
                    "index.txt",
                    "-CA",
                    "ocsp-ca.pem",
                    "-rsigner",
                    "ocsp-ca.pem",
                ])
                .args([
                    "-rkey",
                    "ocsp-ca.key",
                    "-reqin",
                    "req.der",
                    "-respout",
                    "resp.der",
                    "-ndays",
                    "1",
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "openssl ocsp answers");
            let resp = std::fs::read(dir.join("resp.der")).unwrap();
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/ocsp-response\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                resp.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&resp).await;
            let _ = s.shutdown().await;
        }
    });
    (addr, count, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocsp_auto_staples_the_responders_answer_and_serves_without_one_meanwhile() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        println!("skipped: openssl is not installed (apt-get install openssl)");
        return;
    }
    let pki = Pki::new("tls", "ocspauto");
    let (responder, asked, task) = ocsp_responder(pki.dir.clone()).await;
    let (_ca, _leaf, serial) = ocsp_pki(&pki, &format!("http://{responder}/"));
    std::fs::write(
        pki.dir.join("index.txt"),
        format!("V\t491231235959Z\t\t{serial}\tunknown\t/CN=ocsp.test\n"),
    )
    .unwrap();
    let backend = HttpBackend::start("b").await;
    let config = format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nupstream = \"app\"\n\
         [listener.tls]\ncertificates = [{{ cert = \"stapled.pem\", key = \"stapled.key\", ocsp = \"auto\" }}]\n\
         [upstream.app]\nbackends = [{{ address = \"{}\", name = \"b\" }}]\n",
        backend.addr
    );
    let f = Fulcrum::start_at(&config, &pki.file()).await;
    let addr = f.addr("web");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let staple = loop {
        let (_, staple) = chosen(
            addr,
            "ocsp.test",
            &[rustls::SignatureScheme::ECDSA_NISTP256_SHA256],
        )
        .await;
        if !staple.is_empty() {
            break staple;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing stapled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(asked.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    // openssl checks the stapled response: signed by the CA, about this leaf, good.
    std::fs::write(pki.dir.join("staple.der"), &staple).unwrap();
    std::fs::write(pki.dir.join("leaf-only.pem"), {
        let chain = std::fs::read_to_string(pki.dir.join("stapled.pem")).unwrap();
        let end =
            chain.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----\n".len();
        chain[..end].to_string()
    })
    .unwrap();
    let out = std::process::Command::new("openssl")
        .current_dir(&pki.dir)
        .args([
            "ocsp",
            "-respin",
            "staple.der",
            "-CAfile",
            "ocsp-ca.pem",
            "-issuer",
            "ocsp-ca.pem",
        ])
        .args(["-cert", "leaf-only.pem"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("leaf-only.pem: good") && text.contains("Response verify OK"),
        "{text}"
    );
    f.stop().await;
    task.abort();

    // A responder that is not there: the certificate serves, with nothing stapled.
    let gone = common::refusing_addr().await;
    let pki = Pki::new("tls", "ocspgone");
    ocsp_pki(&pki, &format!("http://{gone}/"));
    let f = Fulcrum::start_at(&config, &pki.file()).await;
    let (_, staple) = chosen(
        f.addr("web"),
        "ocsp.test",
        &[rustls::SignatureScheme::ECDSA_NISTP256_SHA256],
    )
    .await;
    assert!(staple.is_empty());
    f.stop().await;
}

/// An HTTPS keep-alive connection quiet between requests parks (its TLS session kept),
/// and its next request is served on it.
#[tokio::test]
async fn a_parked_tls_connection_serves_its_next_request() {
    let (pki, _) = standard_pki("park");
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start_at(&https_config(&b, ""), &pki.file()).await;
    let admin = f.admin.expect("admin API");
    let s = connect(
        &pki.client(&["http/1.1"], false, None),
        f.addr("web"),
        "a.test",
    )
    .await
    .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    for path in ["/first", "/after-parking"] {
        let req = http::Request::get(path)
            .header("host", "a.test")
            .body(empty())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(b.last().uri, path);
        if path == "/first" {
            common::eventually(
                "the connection parked",
                Duration::from_secs(20),
                || async move {
                    common::metrics::current(admin, "fulcrum_connections_parked{listener=\"web\"}")
                        .await
                        == 1.0
                },
            )
            .await;
        }
    }
    assert_eq!(b.accepted(), 1);
    drop(sender);
    let _ = conn.await;
    f.stop().await;
}
