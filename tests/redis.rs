//! Rate limits shared over Redis by several fulcrum instances, with a real
//! `redis-server` on loopback (skipped, saying so, where none is installed).

mod common;

use std::net::SocketAddr;

use std::time::{Duration, Instant};

use common::http::*;
use common::redis::RedisServer;
use common::{Fulcrum, PATIENCE};

fn config(port: u16, on_error: &str, backend: &HttpBackend) -> String {
    format!(
        "[redis]\nurl = \"redis://127.0.0.1:{port}/0\"\ntimeout = \"1s\"\n\
         [rate_limit.shared]\nrate = \"100/h\"\nburst = 100\nstore = \"redis\"\non_store_error = \"{on_error}\"\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nupstream = \"app\"\nrate_limit = \"shared\"\n\
         [upstream.app]\nbackends = [{{ address = \"{}\" }}]\n",
        backend.addr
    )
}

async fn status(addr: SocketAddr) -> u16 {
    get(addr, "/").await.0.as_u16()
}

#[tokio::test]
async fn instances_share_one_limit_and_follow_on_store_error_while_redis_is_down() {
    let Some((port, redis)) = RedisServer::start_if_installed() else {
        return;
    };
    let app = HttpBackend::start("app").await;
    let deny = Fulcrum::start(&config(port, "deny", &app)).await;
    let allow = Fulcrum::start(&config(port, "allow", &app)).await;
    let local = Fulcrum::start(&config(port, "local", &app)).await;
    let instances = [deny.addr("web"), allow.addr("web"), local.addr("web")];

    // 300 requests from one client, spread over three instances: the burst of 100
    // passes, whichever instance each request reaches, and nothing more.
    let mut allowed = 0;
    for i in 0..300 {
        if status(instances[i % 3]).await == 200 {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 100);

    // Redis gone: each instance does as its on_store_error says.
    drop(redis);
    assert_eq!(status(instances[0]).await, 429, "deny");
    assert_eq!(status(instances[1]).await, 200, "allow");
    assert_eq!(
        status(instances[2]).await,
        200,
        "local: a bucket of its own"
    );

    // Redis back (empty): decisions are shared again.
    let _redis = RedisServer::start(port).expect("redis-server starts again");
    let deadline = Instant::now() + PATIENCE;
    while status(instances[0]).await != 200 {
        assert!(
            Instant::now() < deadline,
            "the deny instance never reached Redis again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // That was one of the new bucket's 100; the deny instance's 200s come from Redis
    // only.
    let mut allowed = 1;
    for _ in 0..150 {
        if status(instances[0]).await == 200 {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 100);
    // The allow instance, once it asks Redis again, sees the same empty bucket.
    let deadline = Instant::now() + PATIENCE;
    while status(instances[1]).await != 429 {
        assert!(
            Instant::now() < deadline,
            "the allow instance never shared the bucket again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for f in [deny, allow, local] {
        f.stop().await;
    }
}

#[tokio::test]
async fn a_redis_that_answers_garbage_counts_as_down() {
    // Answers every command with a status line, never a decision.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(b"+garbage\r\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let app = HttpBackend::start("app").await;
    let deny = Fulcrum::start(&config(port, "deny", &app)).await;
    let allow = Fulcrum::start(&config(port, "allow", &app)).await;
    assert_eq!(status(deny.addr("web")).await, 429);
    assert_eq!(status(allow.addr("web")).await, 200);
    deny.stop().await;
    allow.stop().await;
    task.abort();
}

/// A TLS client whose session cache outlives its connections: the second handshake
/// offers the ticket the first one got.
fn resuming_client(pki: &common::tls::Pki) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// One request over a new TLS connection; whether its handshake resumed a session.
async fn resumed(c: &tokio_rustls::TlsConnector, addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
    let mut s = c.connect(name, tcp).await.unwrap();
    let kind = s.get_ref().1.handshake_kind();
    s.write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    // Reading to the end also takes in the tickets the server sent.
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut out)).await;
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    kind == Some(rustls::HandshakeKind::Resumed)
}

#[tokio::test]
async fn instances_on_one_redis_resume_each_others_tls_sessions() {
    let Some((port, _redis)) = RedisServer::start_if_installed() else {
        return;
    };
    let pki = common::tls::Pki::new("tickets", "redis");
    pki.leaf("a", &["a.test"]);
    let app = HttpBackend::start("app").await;
    let config = |redis: bool| {
        let redis = if redis {
            format!("[redis]\nurl = \"redis://127.0.0.1:{port}/0\"\ntimeout = \"1s\"\n")
        } else {
            String::new()
        };
        format!(
            "{redis}[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nupstream = \"app\"\n\
             [listener.tls]\ncertificates = [{{ cert = \"a.pem\", key = \"a.key\" }}]\n\
             [upstream.app]\nbackends = [{{ address = \"{}\" }}]\n",
            app.addr
        )
    };
    let file = pki.dir.join("fulcrum.toml");
    let one = Fulcrum::start_at(&config(true), &file).await;
    let two = Fulcrum::start_at(&config(true), &file).await;
    let alone = Fulcrum::start_at(&config(false), &file).await;
    // Each instance takes the period's key from Redis soon after it starts: until
    // both have, a ticket from one may not open on the other.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let client = resuming_client(&pki);
        assert!(
            !resumed(&client, one.addr("web")).await,
            "a first handshake is full"
        );
        if resumed(&client, two.addr("web")).await {
            // The same client's ticket means nothing to an instance with keys of
            // its own.
            assert!(!resumed(&client, alone.addr("web")).await);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a ticket from one instance never resumed on the other"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And an instance resumes its own sessions, Redis or not.
    let client = resuming_client(&pki);
    resumed(&client, alone.addr("web")).await;
    assert!(resumed(&client, alone.addr("web")).await);
    one.stop().await;
    two.stop().await;
    alone.stop().await;
}
