//! Reload, the admin API, metrics and systemd notifications.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::free_port;
use common::http::*;
use fulcrum::config::Config;
use fulcrum::runtime::{Handle, Server};
use http::{Request, StatusCode};

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("fulcrum-ops-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn file(&self) -> PathBuf {
        self.0.join("fulcrum.toml")
    }
    fn write(&self, contents: &str) {
        // Write then rename, as careful editors and config managers do.
        let tmp = self.0.join(".fulcrum.toml.tmp");
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, self.file()).unwrap();
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Running {
    handle: Handle,
    admin: Option<std::net::SocketAddr>,
    web: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<fulcrum::runtime::ShutdownReport>,
}

async fn start(dir: &Dir) -> Running {
    let config = Config::load(&dir.file()).unwrap_or_else(|e| panic!("{e}"));
    let server = Server::bind(config).await.unwrap();
    let handle = server.handle();
    let admin = server.admin_addr();
    let web = server.local_addrs("web")[0];
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    Running {
        handle,
        admin,
        web,
        stop,
        task,
    }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("stopped")
            .unwrap();
    }
}

fn web_config(backend: &HttpBackend, extra: &str) -> String {
    format!(
        "[global]\nwatch_config = false\nshutdown_timeout = \"5s\"\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nupstream = \"app\"\n\
         {extra}\n\
         [upstream.app]\nbackends = [{{ address = \"{}\", name = \"{}\" }}]\n",
        backend.addr, backend.name
    )
}

async fn admin(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, String) {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let (status, _, body) = send(&client(), b.body(empty()).unwrap()).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_fail_no_request() {
    let one = HttpBackend::start("one").await;
    let two = HttpBackend::start("two").await;
    let dir = Dir::new("under-load");
    let a = web_config(&one, "");
    let b = web_config(&two, "");
    dir.write(&a);
    let r = start(&dir).await;
    let addr = r.web;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for fresh in [false, true] {
        let (done, failures, served) = (done.clone(), failures.clone(), served.clone());
        clients.push(tokio::spawn(async move {
            let keep_alive = client();
            for _ in 0..5000 {
                if done.load(Ordering::SeqCst) {
                    break;
                }
                let c = if fresh { client() } else { keep_alive.clone() };
                let req = Request::get(format!("http://{addr}/"))
                    .body(empty())
                    .unwrap();
                match tokio::time::timeout(Duration::from_secs(10), c.request(req)).await {
                    Ok(Ok(resp)) if resp.status() == 200 => {
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        dir.write(if i % 2 == 0 { &b } else { &a });
        let generation = r.handle.reload().await.expect("reload");
        assert_eq!(generation, i + 2);
    }
    done.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "requests failed during reloads"
    );
    assert!(served.load(Ordering::SeqCst) > 20);
    assert!(!one.requests().is_empty() && !two.requests().is_empty());
    r.stop().await;
}

#[tokio::test]
async fn an_invalid_reload_changes_nothing_and_is_counted() {
    let one = HttpBackend::start("one").await;
    let dir = Dir::new("invalid");
    dir.write(
        &web_config(&one, "").replace("[global]", "[admin]\nbind = \"127.0.0.1:0\"\n[global]"),
    );
    let r = start(&dir).await;
    let admin_addr = r.admin.unwrap();
    dir.write("[[listener]]\nname = \"web\"\nbind = \"nowhere\"\n");
    let err = r.handle.reload().await.unwrap_err();
    assert!(
        err.contains("`listener[0].bind` is not an address"),
        "{err}"
    );
    assert_eq!(
        get(r.web, "/").await.0,
        200,
        "the old configuration serves on"
    );
    let (status, body) = admin(admin_addr, "POST", "/reload", None).await;
    assert_eq!(status, 400);
    assert!(body.contains("is not an address"), "{body}");
    let (_, metrics) = admin(admin_addr, "GET", "/metrics", None).await;
    assert!(
        metrics.contains("fulcrum_config_reloads_total{result=\"failure\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("fulcrum_config_generation 1"), "{metrics}");
    r.stop().await;
}

#[tokio::test]
async fn a_reload_binding_a_port_in_use_is_refused_whole() {
    let one = HttpBackend::start("one").await;
    let dir = Dir::new("port-in-use");
    dir.write(&web_config(&one, ""));
    let r = start(&dir).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap();
    dir.write(&format!(
        "{}[[listener]]\nname = \"extra\"\nbind = \"{port}\"\nprotocol = \"http\"\nupstream = \"app\"\n",
        web_config(&one, "")
    ));
    let err = r.handle.reload().await.unwrap_err();
    assert!(
        err.contains(&format!("listener \"extra\": cannot bind {port}")),
        "{err}"
    );
    assert_eq!(r.handle.snapshot().generation, 1);
    assert_eq!(get(r.web, "/").await.0, 200);
    r.stop().await;
}

#[tokio::test]
async fn listeners_are_added_and_removed_and_unchanged_ones_keep_their_socket() {
    let one = HttpBackend::start("one").await;
    let dir = Dir::new("listeners");
    dir.write(&web_config(&one, ""));
    let r = start(&dir).await;
    let with_extra = format!(
        "{}[[listener]]\nname = \"extra\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nupstream = \"app\"\n",
        web_config(&one, "")
    );
    dir.write(&with_extra);
    r.handle.reload().await.unwrap();
    let extra = r.handle.local_addrs("extra");
    assert_eq!(extra.len(), 1);
    assert_eq!(
        r.handle.local_addrs("web"),
        [r.web],
        "the unchanged listener kept its socket"
    );
    // The new tcp listener forwards to the HTTP backend.
    let resp = raw_exchange(
        extra[0],
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    dir.write(&web_config(&one, ""));
    r.handle.reload().await.unwrap();
    assert!(r.handle.local_addrs("extra").is_empty());
    common::eventually(
        "a removed listener still accepts",
        common::PATIENCE,
        || async { tokio::net::TcpStream::connect(extra[0]).await.is_err() },
    )
    .await;
    assert_eq!(get(r.web, "/").await.0, 200);
    r.stop().await;
}

#[tokio::test]
async fn the_admin_api_drains_reports_and_guards_posts_with_the_token() {
    let one = HttpBackend::start("one").await;
    let two = HttpBackend::start("two").await;
    let dir = Dir::new("admin");
    std::fs::write(dir.0.join("admin.token"), "  s3cret-token\n").unwrap();
    dir.write(&format!(
        "[admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n\
         [global]\nwatch_config = false\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nupstream = \"app\"\n\
         [upstream.app]\nbackends = [{{ address = \"{}\", name = \"one\" }}, {{ address = \"{}\", name = \"two\" }}]\n",
        one.addr, two.addr
    ));
    let r = start(&dir).await;
    let a = r.admin.unwrap();
    assert_eq!(
        admin(a, "GET", "/healthz", None).await,
        (StatusCode::OK, "ok\n".into())
    );
    assert_eq!(
        admin(a, "POST", "/upstreams/app/backends/one/drain", None)
            .await
            .0,
        401
    );
    assert_eq!(
        admin(
            a,
            "POST",
            "/upstreams/app/backends/one/drain",
            Some("wrong")
        )
        .await
        .0,
        401
    );
    assert_eq!(
        admin(
            a,
            "POST",
            "/upstreams/app/backends/one/drain",
            Some("s3cret-token")
        )
        .await
        .0,
        200
    );
    for _ in 0..4 {
        assert_eq!(get(r.web, "/").await.1["x-backend"], "two");
    }
    // The drain survives a reload.
    assert_eq!(
        admin(a, "POST", "/reload", Some("s3cret-token")).await.1,
        "{\"generation\":2}"
    );
    for _ in 0..4 {
        assert_eq!(get(r.web, "/").await.1["x-backend"], "two");
    }
    let (status, body) = admin(a, "GET", "/status", None).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["generation"], 2);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["listeners"][0]["name"], "web");
    assert_eq!(v["listeners"][0]["protocol"], "http");
    assert_eq!(v["upstreams"][0]["strategy"], "round_robin");
    assert_eq!(v["upstreams"][0]["backends"][0]["draining"], true);
    assert_eq!(v["upstreams"][0]["backends"][0]["healthy"], true);
    assert_eq!(
        admin(
            a,
            "POST",
            "/upstreams/app/backends/one/undrain",
            Some("s3cret-token")
        )
        .await
        .0,
        200
    );
    let mut names = std::collections::HashSet::new();
    for _ in 0..4 {
        names.insert(
            get(r.web, "/").await.1["x-backend"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    assert!(names.contains("one"));
    let (status, body) = admin(
        a,
        "POST",
        "/upstreams/app/backends/nope/drain",
        Some("s3cret-token"),
    )
    .await;
    assert_eq!(status, 404);
    assert!(body.starts_with("{\"error\":"), "{body}");
    assert_eq!(
        admin(
            a,
            "POST",
            "/upstreams/none/backends/one/drain",
            Some("s3cret-token")
        )
        .await
        .0,
        404
    );
    // Bad JSON on the purge endpoint is a 400 with a message.
    let req = Request::post(format!("http://{a}/cache/purge"))
        .header("authorization", "Bearer s3cret-token")
        .header("content-type", "application/json")
        .body(body_of("{not json"))
        .unwrap();
    let (status, _, body) = send(&client(), req).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("error"));
    r.stop().await;
}

fn body_of(s: &'static str) -> Body {
    body(s)
}

#[tokio::test]
async fn every_contract_metric_is_exported_after_traffic() {
    let one = HttpBackend::start("one").await;
    let dir = Dir::new("metrics");
    dir.write(
        &web_config(&one, "").replace("[global]", "[admin]\nbind = \"127.0.0.1:0\"\n[global]"),
    );
    let r = start(&dir).await;
    for _ in 0..3 {
        assert_eq!(get(r.web, "/").await.0, 200);
    }
    assert_eq!(get(r.web, "/status/404").await.0, 404);
    r.handle.reload().await.unwrap();
    let (status, text) = admin(r.admin.unwrap(), "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    for line in [
        "fulcrum_connections_total{listener=\"web\"}",
        "fulcrum_connections_active{listener=\"web\"}",
        "fulcrum_http_requests_total{code=\"200\",listener=\"web\",upstream=\"app\"} 3",
        "fulcrum_http_requests_total{code=\"404\",listener=\"web\",upstream=\"app\"} 1",
        "fulcrum_http_request_duration_seconds_count{listener=\"web\",upstream=\"app\"} 4",
        "fulcrum_backend_healthy{backend=\"one\",upstream=\"app\"} 1",
        "fulcrum_backend_active_connections{backend=\"one\",upstream=\"app\"} 0",
        "fulcrum_backend_requests_total{backend=\"one\",outcome=\"success\",upstream=\"app\"} 4",
        "fulcrum_cache_size_bytes 0",
        "fulcrum_config_reloads_total{result=\"success\"} 1",
        "fulcrum_config_generation 2",
        "fulcrum_failover_active 0",
    ] {
        assert!(text.contains(line), "missing {line}:\n{text}");
    }
    // The text format: every sample line is `name{labels} value`, names documented.
    for l in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let value = l.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad sample line {l}");
        assert!(l.starts_with("fulcrum_"), "{l}");
    }
    assert!(text.contains("# HELP fulcrum_connections_total"));
    assert!(text.contains("# TYPE fulcrum_http_request_duration_seconds histogram"));
    r.stop().await;
}

/// Starts fulcrum on a watched file laid out by `lay_out`, changes its backend by
/// `change` and waits for the reload.
async fn a_changed_file_is_reloaded(
    name: &str,
    lay_out: impl Fn(&Dir, &str),
    change: impl Fn(&Dir, &str),
) {
    let one = HttpBackend::start("one").await;
    let two = HttpBackend::start("two").await;
    let dir = Dir::new(name);
    let watched =
        |b: &HttpBackend| web_config(b, "").replace("watch_config = false", "watch_config = true");
    lay_out(&dir, &watched(&one));
    let r = start(&dir).await;
    assert_eq!(get(r.web, "/").await.1["x-backend"], "one");
    change(&dir, &watched(&two));
    common::eventually(
        "the file change was not noticed",
        common::PATIENCE,
        || async { r.handle.snapshot().generation >= 2 },
    )
    .await;
    assert_eq!(get(r.web, "/").await.1["x-backend"], "two");
    r.stop().await;
}

#[tokio::test]
async fn a_change_of_the_file_reloads_it() {
    // A new file renamed over the old one.
    a_changed_file_is_reloaded("watch", Dir::write, Dir::write).await;
}

#[tokio::test]
async fn a_file_written_in_place_is_reloaded() {
    a_changed_file_is_reloaded("watch-in-place", Dir::write, |dir, contents| {
        std::fs::write(dir.file(), contents).unwrap()
    })
    .await;
}

/// A Kubernetes ConfigMap volume: fulcrum.toml is a symlink to ..data/fulcrum.toml,
/// and `..data` a symlink to the current version's directory.
fn config_map_version(dir: &Dir, version: &str, contents: &str) {
    std::fs::create_dir_all(dir.0.join(version)).unwrap();
    std::fs::write(dir.0.join(version).join("fulcrum.toml"), contents).unwrap();
    std::os::unix::fs::symlink(version, dir.0.join("..data_tmp")).unwrap();
    std::fs::rename(dir.0.join("..data_tmp"), dir.0.join("..data")).unwrap();
}

#[tokio::test]
async fn a_configuration_behind_a_swapped_symlink_is_reloaded() {
    // An update swaps `..data`: no event in the directory names fulcrum.toml.
    a_changed_file_is_reloaded(
        "watch-symlink-swap",
        |dir, contents| {
            config_map_version(dir, "..v1", contents);
            std::os::unix::fs::symlink("..data/fulcrum.toml", dir.file()).unwrap();
        },
        |dir, contents| config_map_version(dir, "..v2", contents),
    )
    .await;
}

#[tokio::test]
async fn a_request_on_a_keep_alive_connection_uses_the_generation_current_when_it_arrives() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let one = HttpBackend::start("one").await;
    let two = HttpBackend::start("two").await;
    let dir = Dir::new("keepalive-generation");
    dir.write(&web_config(&one, ""));
    let r = start(&dir).await;
    let mut s = tokio::net::TcpStream::connect(r.web).await.unwrap();
    let ask = async |s: &mut tokio::net::TcpStream| {
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(ask(&mut s).await.contains("x-backend: one"));
    dir.write(&web_config(&two, ""));
    r.handle.reload().await.unwrap();
    let answer = ask(&mut s).await;
    assert!(answer.contains("x-backend: two"), "{answer}");
    drop(s);
    r.stop().await;
}

#[tokio::test]
async fn a_removed_backend_leaves_the_metrics() {
    let one = HttpBackend::start("one").await;
    let two = HttpBackend::start("two").await;
    let dir = Dir::new("metrics-removed");
    let both = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n[global]\nwatch_config = false\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nupstream = \"app\"\n\
         [upstream.app]\nbackends = [{{ address = \"{}\", name = \"one\" }}, {{ address = \"{}\", name = \"two\" }}]\n",
        one.addr, two.addr
    );
    dir.write(&both);
    let r = start(&dir).await;
    let admin_addr = r.admin.unwrap();
    let (_, before) = admin(admin_addr, "GET", "/metrics", None).await;
    assert!(
        before.contains("fulcrum_backend_healthy{backend=\"two\",upstream=\"app\"} 1"),
        "{before}"
    );
    dir.write(&both.replace(
        &format!(", {{ address = \"{}\", name = \"two\" }}", two.addr),
        "",
    ));
    r.handle.reload().await.unwrap();
    let (_, after) = admin(admin_addr, "GET", "/metrics", None).await;
    assert!(!after.contains("backend=\"two\""), "{after}");
    assert!(
        after.contains("fulcrum_backend_healthy{backend=\"one\",upstream=\"app\"} 1"),
        "{after}"
    );
    r.stop().await;
}

/// A page on another site, opened in a browser that can reach the admin API, must not
/// be able to act through it.
#[tokio::test]
async fn the_admin_api_refuses_cross_site_requests_and_bodies_that_are_not_json() {
    let one = HttpBackend::start("one").await;
    let dir = Dir::new("admin-guard");
    dir.write(&format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n{}",
        web_config(&one, "")
    ));
    let r = start(&dir).await;
    let a = r.admin.unwrap();
    let post = |headers: &[(&str, String)], body_text: &'static str| {
        let mut b = Request::post(format!("http://{a}/cache/purge"));
        for (n, v) in headers {
            b = b.header(*n, v.as_str());
        }
        let req = b.body(body(body_text)).unwrap();
        async move { send(&client(), req).await.0 }
    };
    let json = ("content-type", "application/json".to_string());
    // No cache is configured: a request that passes the guards gets 404.
    assert_eq!(post(std::slice::from_ref(&json), "{}").await, 404);
    assert_eq!(
        post(&[], "").await,
        404,
        "a POST without a body needs no type"
    );
    assert_eq!(
        post(&[json.clone(), ("origin", format!("http://{a}"))], "{}").await,
        404,
        "the admin API's own origin is allowed"
    );
    assert_eq!(
        post(
            &[json.clone(), ("sec-fetch-site", "same-origin".into())],
            "{}"
        )
        .await,
        404
    );
    for cross in [
        ("origin", "http://evil.example".to_string()),
        ("origin", "null".to_string()),
        ("origin", format!("http://{a}.evil.example")),
        ("sec-fetch-site", "cross-site".to_string()),
    ] {
        assert_eq!(
            post(&[json.clone(), cross.clone()], "{}").await,
            403,
            "{cross:?}"
        );
    }
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        assert_eq!(
            post(&[("content-type", ct.to_string())], "{}").await,
            415,
            "{ct}"
        );
    }
    assert_eq!(post(&[], "{}").await, 415, "a body without a type");
    assert_eq!(
        post(
            &[("content-type", "Application/JSON; charset=utf-8".into())],
            "{}"
        )
        .await,
        404
    );
    // Reads stay open to any page: they change nothing.
    let (status, _) = admin(a, "GET", "/healthz", None).await;
    assert_eq!(status, 200);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moving_a_listener_between_loopback_and_any_address_refuses_no_connection() {
    let one = HttpBackend::start("one").await;
    let dir = Dir::new("reuseport");
    let port = free_port();
    let at = |host: &str| web_config(&one, "").replace("127.0.0.1:0", &format!("{host}:{port}"));
    dir.write(&at("127.0.0.1"));
    let r = start(&dir).await;
    let target: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (done, failures, served) = (done.clone(), failures.clone(), served.clone());
        clients.push(tokio::spawn(async move {
            for _ in 0..5000 {
                if done.load(Ordering::SeqCst) {
                    break;
                }
                // A new connection each time: a refused or reset one is a failure.
                let resp = raw_exchange(
                    target,
                    b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
                )
                .await;
                if resp.starts_with("HTTP/1.1 200") {
                    served.fetch_add(1, Ordering::SeqCst);
                } else {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let host = if i % 2 == 0 { "0.0.0.0" } else { "127.0.0.1" };
        dir.write(&at(host));
        r.handle.reload().await.expect("reload");
        assert_eq!(
            r.handle.local_addrs("web"),
            [format!("{host}:{port}")
                .parse::<std::net::SocketAddr>()
                .unwrap()]
        );
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    done.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "connections failed during the moves"
    );
    assert!(served.load(Ordering::SeqCst) > 10);
    r.stop().await;
}

#[tokio::test]
async fn a_reload_moves_the_admin_api_and_answers_the_request_that_moved_it() {
    let one = HttpBackend::start("one").await;
    let dir = Dir::new("admin-move");
    let (first, second) = (free_port(), free_port());
    let with_admin = |port: u16| {
        format!(
            "[admin]\nbind = \"127.0.0.1:{port}\"\n{}",
            web_config(&one, "")
        )
    };
    dir.write(&with_admin(first));
    let r = start(&dir).await;
    let a: std::net::SocketAddr = format!("127.0.0.1:{first}").parse().unwrap();
    let b: std::net::SocketAddr = format!("127.0.0.1:{second}").parse().unwrap();
    assert_eq!(r.admin, Some(a));
    dir.write(&with_admin(second));
    let (status, body) = admin(a, "POST", "/reload", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(admin(b, "GET", "/healthz", None).await.0, 200);
    common::eventually(
        "the old admin address still accepts",
        common::PATIENCE,
        || async { tokio::net::TcpStream::connect(a).await.is_err() },
    )
    .await;
    // A reload whose admin address cannot be bound is refused whole.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    dir.write(&with_admin(port));
    let err = r.handle.reload().await.unwrap_err();
    assert!(err.contains("admin: cannot bind"), "{err}");
    assert_eq!(admin(b, "GET", "/healthz", None).await.0, 200);
    r.stop().await;
}

#[tokio::test]
async fn error_pages_replace_fulcrums_own_errors_and_are_read_again_at_reload() {
    let app = HttpBackend::start("app").await;
    let dir = Dir::new("error-pages");
    std::fs::create_dir_all(dir.0.join("errors")).unwrap();
    std::fs::write(dir.0.join("errors/404.html"), "<h1>not here</h1>\n").unwrap();
    std::fs::write(
        dir.0.join("errors/502.json"),
        "{\"error\":\"bad gateway\"}\n",
    )
    .unwrap();
    let down = common::refusing_addr().await;
    let config = |pages: &str| {
        format!(
            "[global]\nwatch_config = false\nshutdown_timeout = \"5s\"\n\
             [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n\
             error_pages = {{ {pages} }}\n\
             [[listener.route]]\npath_prefix = \"/down/\"\nupstream = \"down\"\n\
             [[listener.route]]\npath_prefix = \"/app/\"\nupstream = \"app\"\n\
             rewrite = {{ prefix = \"/app/\", to = \"/\" }}\n\
             [upstream.app]\nbackends = [{{ address = \"{}\" }}]\n\
             [upstream.down]\nretries = 0\nbackends = [{{ address = \"{down}\" }}]\n",
            app.addr
        )
    };
    dir.write(&config(
        "\"404\" = \"errors/404.html\", \"502\" = \"errors/502.json\"",
    ));
    let r = start(&dir).await;

    // No route: fulcrum's 404, with the page and its type.
    let (status, headers, body) = get(r.web, "/nowhere").await;
    assert_eq!(status, 404);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(body, "<h1>not here</h1>\n");
    // The backend cannot be reached: fulcrum's 502.
    let (status, headers, body) = get(r.web, "/down/x").await;
    assert_eq!(status, 502);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body, "{\"error\":\"bad gateway\"}\n");
    // A backend's own 404 goes through untouched.
    let (status, _, body) = get(r.web, "/app/status/404").await;
    assert_eq!(status, 404);
    assert_ne!(body, "<h1>not here</h1>\n");
    // A gRPC client keeps fulcrum's plain error.
    let req = Request::post(format!("http://{}/nowhere", r.web))
        .header("content-type", "application/grpc")
        .body(empty())
        .unwrap();
    let (status, headers, body) = send(&client(), req).await;
    assert_eq!(status, 404);
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(body, "404 Not Found\n");

    // The file changes and the configuration reloads: the new page is served.
    std::fs::write(dir.0.join("errors/404.html"), "<h1>moved on</h1>\n").unwrap();
    r.handle.reload().await.unwrap();
    let (_, _, body) = get(r.web, "/nowhere").await;
    assert_eq!(body, "<h1>moved on</h1>\n");
    // A page that cannot be read refuses the reload whole; the old page serves on.
    dir.write(&config("\"404\" = \"errors/missing.html\""));
    let err = r.handle.reload().await.unwrap_err();
    assert!(
        err.contains("`listener[0].error_pages.404`") && err.contains("cannot be read"),
        "{err}"
    );
    let (_, _, body) = get(r.web, "/nowhere").await;
    assert_eq!(body, "<h1>moved on</h1>\n");
    r.stop().await;
}

#[tokio::test]
async fn a_reload_keeps_unchanged_rate_limits_and_per_client_counts() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = HttpBackend::start("app").await;
    let dir = Dir::new("limits-reload");
    let rules = |burst: u32| {
        web_config(
            &backend,
            &format!(
                "rate_limit = \"one\"\nmax_connections_per_client = 1\n\
                 [rate_limit.one]\nrate = \"1/h\"\nburst = {burst}"
            ),
        )
    };
    dir.write(&rules(1));
    let r = start(&dir).await;
    // One connection held across the reloads, its one request used.
    let mut held = tokio::net::TcpStream::connect(r.web).await.unwrap();
    held.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = held.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // The same rule after a reload: its bucket is still empty, and the held
    // connection still counts against the client.
    r.handle.reload().await.expect("reload");
    let answer = raw_exchange(
        r.web,
        b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 503"),
        "per-client count kept: {answer}"
    );
    held.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let n = held.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 429"),
        "bucket kept: {}",
        String::from_utf8_lossy(&buf[..n])
    );
    // A changed rule starts afresh.
    dir.write(&rules(2));
    r.handle.reload().await.expect("reload");
    held.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let n = held.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    drop(held);
    r.stop().await;
}
