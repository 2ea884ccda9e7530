//! Thread per core (`global.work_stealing = false`): every worker accepts on its own
//! socket of each listener address and serves what it accepted.
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::http::*;
use common::metrics::{scrape, value};
use common::Fulcrum;

const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";

fn config(backend: SocketAddr, workers: usize) -> String {
    format!(
        "[global]\nworkers = {workers}\nwork_stealing = false\nshutdown_timeout = \"10s\"\nwatch_config = false\n\
         [admin]\nbind = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nupstream = \"app\"\n\
         [[listener]]\nname = \"l4\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nupstream = \"app\"\n\
         [upstream.app]\nbackends = [{{ address = \"{backend}\" }}]\n"
    )
}

/// Connections accepted by each of `workers` workers.
async fn accepted(admin: SocketAddr, workers: usize) -> Vec<f64> {
    let text = scrape(admin).await;
    (0..workers)
        .map(|w| {
            value(
                &text,
                &format!("fulcrum_worker_connections_total{{worker=\"{w}\"}}"),
            )
            .unwrap_or(0.0)
        })
        .collect()
}

/// `n` GETs to listener "web" one after the other, each on a new client connection,
/// all answered 200; both of two workers took some.
async fn one_after_the_other(f: &Fulcrum, n: usize) {
    for _ in 0..n {
        let resp = raw_exchange(f.addr("web"), GET).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    }
    let counts = accepted(f.admin.expect("admin"), 2).await;
    assert!(counts.iter().all(|&c| c > 0.0), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_accepts_and_serves_http_and_tcp() {
    let backend = HttpBackend::start("one").await;
    let f = Fulcrum::start(&config(backend.addr, 3)).await;
    let admin = f.admin.expect("admin");
    // 96 new connections (and 24 below) from as many source ports: the kernel spreads them over the
    // three sockets by a hash of the addresses, so each worker gets some (the chance
    // that one gets none is below 1e-16).
    for listener in ["web", "l4"] {
        for _ in 0..48 {
            let resp = raw_exchange(f.addr(listener), GET).await;
            assert!(resp.starts_with("HTTP/1.1 200"), "{listener}: {resp}");
        }
    }
    // HTTP/2 with prior knowledge: a new client (one connection) for each request.
    for _ in 0..24 {
        let req = http::Request::get(format!("http://{}/", f.addr("web")))
            .body(empty())
            .unwrap();
        let (status, _, body) = send(&h2c_client(), req).await;
        assert_eq!((status.as_u16(), &body[..]), (200, &b"one"[..]));
    }
    let counts = accepted(admin, 3).await;
    assert_eq!(counts.iter().sum::<f64>(), 120.0, "{counts:?}");
    assert!(counts.iter().all(|&c| c > 0.0), "{counts:?}");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_reuses_its_own_idle_backend_connections() {
    let backend = HttpBackend::start("one").await;
    let f = Fulcrum::start(&config(backend.addr, 2)).await;
    // Each worker opens one backend connection and reuses it.
    one_after_the_other(&f, 24).await;
    assert_eq!(backend.requests().len(), 24);
    assert_eq!(backend.accepted(), 2, "one backend connection per worker");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_requests_on_every_worker_finish() {
    let backend = HttpBackend::start("one").await;
    let mut f = Fulcrum::start(&config(backend.addr, 2)).await;
    let admin = f.admin.expect("admin");
    let web = f.addr("web");
    // Slow responses on 16 connections, spread over both workers.
    let requests: Vec<_> = (0..16)
        .map(|_| {
            tokio::spawn(async move {
                raw_exchange(
                    web,
                    b"GET /slow/1500 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
                )
                .await
            })
        })
        .collect();
    common::eventually(
        "every request reaches the backend",
        Duration::from_secs(10),
        || {
            let n = backend.requests().len();
            async move { n == 16 }
        },
    )
    .await;
    let counts = accepted(admin, 2).await;
    assert!(counts.iter().all(|&c| c > 0.0), "{counts:?}");
    f.begin_stop();
    for r in requests {
        let resp = r.await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    }
    let report = tokio::time::timeout(Duration::from_secs(30), f.stop())
        .await
        .expect("shutdown finished");
    assert_eq!(report.cut, 0);
    // Every socket of the listener is closed.
    assert!(tokio::net::TcpStream::connect(web).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_removes_every_workers_sockets() {
    let backend = HttpBackend::start("one").await;
    let dir = std::env::temp_dir().join(format!("fulcrum-workers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("fulcrum.toml");
    let base = config(backend.addr, 2);
    std::fs::write(&file, &base).unwrap();
    let server = fulcrum::runtime::Server::bind(fulcrum::config::Config::load(&file).unwrap())
        .await
        .unwrap();
    let handle = server.handle();
    let admin = server.admin_addr().expect("admin");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    // A listener added by a reload gets a socket on every worker.
    let port = common::free_port();
    let added = format!(
        "{base}[[listener]]\nname = \"extra\"\nbind = \"127.0.0.1:{port}\"\nprotocol = \"http\"\nupstream = \"app\"\n"
    );
    std::fs::write(&file, &added).unwrap();
    handle.reload().await.expect("reload");
    let extra: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let before = accepted(admin, 2).await;
    for _ in 0..32 {
        let resp = raw_exchange(extra, GET).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    }
    let after = accepted(admin, 2).await;
    assert!(
        (0..2).all(|w| after[w] > before[w]),
        "{before:?} -> {after:?}"
    );
    // Removed: no worker's socket is left to take a connection.
    std::fs::write(&file, &base).unwrap();
    handle.reload().await.expect("reload");
    // (Each worker closes its socket as its loop ends, just after the reload.)
    common::eventually(
        "every socket of the removed listener is closed",
        Duration::from_secs(10),
        // From 16 source ports: a socket left open would take some of them.
        || async move {
            for _ in 0..16 {
                if tokio::net::TcpStream::connect(extra).await.is_ok() {
                    return false;
                }
            }
            true
        },
    )
    .await;
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("stopped")
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_keeps_its_own_http2_backend_connection() {
    let backend = common::h2::H2Backend::start("h2").await;
    let toml = format!(
        "[global]\nworkers = 2\nwork_stealing = false\nwatch_config = false\n\
         [admin]\nbind = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nupstream = \"app\"\n\
         [upstream.app]\nprotocol = \"h2c\"\nbackends = [{{ address = \"{}\" }}]\n",
        backend.addr
    );
    let f = Fulcrum::start(&toml).await;
    // A worker's requests take streams on its own backend connection, opened by its
    // first one.
    one_after_the_other(&f, 24).await;
    assert_eq!(backend.calls(), 24);
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        2,
        "one backend connection per worker"
    );
    f.stop().await;
}
