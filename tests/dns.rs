//! Backends from DNS: a backend with `resolve` is one backend per A record of its name,
//! looked up from `[resolver]`'s server (a real one on loopback UDP), and follows the
//! records as they change while requests flow; a failed lookup keeps the last answer,
//! and `resolve_max` caps the records used.

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::dns::DnsServer;
use common::http::*;
use common::{free_port, Fulcrum};

const PATIENCE: Duration = Duration::from_secs(20);

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

/// Waits until upstream "app" lists exactly `want`.
async fn wait_names(api: SocketAddr, want: &[String]) {
    let want: BTreeSet<String> = want.iter().cloned().collect();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = listed(api).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "backends {got:?}, waited for {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The backends of upstream "app" that /status lists.
async fn listed(api: SocketAddr) -> BTreeSet<String> {
    let (_, _, body) = get(api, "/status").await;
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    doc["upstreams"][0]["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["name"].as_str().map(str::to_string))
        .collect()
}

async fn wait_listed(api: SocketAddr, port: u16, ips: &[u8]) {
    let want: Vec<String> = ips
        .iter()
        .map(|n| format!("app.test:{port}#{}", ip(*n)))
        .collect();
    wait_names(api, &want).await;
}

#[tokio::test]
async fn backends_follow_the_dns_records_while_requests_flow() {
    let dns = DnsServer::start().await;
    let port = free_port();
    let mut backends = Vec::new();
    for n in 2..=5 {
        backends.push(
            HttpBackend::start_at(&format!("b{n}"), SocketAddr::new(ip(n).into(), port)).await,
        );
    }
    dns.set("app.test", &[ip(2), ip(3)]);
    let config = format!(
        r#"
[admin]
bind = "127.0.0.1:0"

[resolver]
servers = ["{}"]
resolve_max = 3

[[listener]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
upstream = "app"

[upstream.app]
backends = [{{ address = "app.test:{port}", resolve = "1s" }}]
"#,
        dns.addr
    );
    let f = Fulcrum::start(&config).await;
    let api = f.admin.unwrap();
    // The first generation already has both records.
    wait_listed(api, port, &[2, 3]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let seen: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let load = {
        let (stop, failed, seen, web) = (stop.clone(), failed.clone(), seen.clone(), f.addr("web"));
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let (status, h, _) = get(web, "/").await;
                if status == 200 {
                    let b = h["x-backend"].to_str().unwrap_or("-").to_string();
                    seen.lock().unwrap().insert(b);
                } else {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let served_by = |names: &[&str]| {
        let seen = seen.clone();
        let names: BTreeSet<String> = names.iter().map(|s| s.to_string()).collect();
        async move {
            seen.lock().unwrap().clear();
            let deadline = Instant::now() + PATIENCE;
            loop {
                if seen.lock().unwrap().is_superset(&names) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "never served by all of {names:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    served_by(&["b2", "b3"]).await;

    // A record added: a backend added.
    dns.set("app.test", &[ip(2), ip(3), ip(4)]);
    wait_listed(api, port, &[2, 3, 4]).await;
    served_by(&["b4"]).await;

    // A record removed: its backend goes, the others stay.
    dns.set("app.test", &[ip(3), ip(4)]);
    wait_listed(api, port, &[3, 4]).await;
    seen.lock().unwrap().clear();
    served_by(&["b3", "b4"]).await;
    assert!(!seen.lock().unwrap().contains("b2"));

    // More records than resolve_max: the first three (in address order) are used.
    dns.set("app.test", &[ip(5), ip(4), ip(3), ip(2)]);
    wait_listed(api, port, &[2, 3, 4]).await;

    // The name stops resolving: the last answer stays.
    dns.remove("app.test");
    let asked = dns.queries();
    let deadline = Instant::now() + PATIENCE;
    while dns.queries() < asked + 4 {
        assert!(Instant::now() < deadline, "no more lookups");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_listed(api, port, &[2, 3, 4]).await;

    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed while the records changed"
    );
    f.stop().await;
}

#[test]
fn resolve_and_the_resolver_are_checked() {
    let errors = |src: &str| {
        fulcrum::config::Config::parse(src, std::path::Path::new("f.toml"))
            .unwrap_err()
            .to_string()
    };
    let listener = "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nprotocol = \"tcp\"\nupstream = \"app\"\n";
    let got = errors(&format!(
        "{listener}[upstream.app]\nbackends = [{{ address = \"10.0.0.1:80\", resolve = \"30s\" }}]\n"
    ));
    assert!(
        got.contains("`upstream.app.backends[0].address` \"10.0.0.1:80\" is an IP address"),
        "{got}"
    );
    let got = errors(&format!(
        "{listener}[upstream.app]\nbackends = [{{ address = \"app.test:80\", resolve = \"500ms\" }}]\n"
    ));
    assert!(
        got.contains("`upstream.app.backends[0].resolve` must be at least 1s"),
        "{got}"
    );
    let got = errors(&format!(
        "{listener}[upstream.app]\nbackends = [{{ address = \"app.test:80\", resolve = \"30s\" }}]\n\
         [resolver]\nservers = [\"dns.example\"]\n"
    ));
    assert!(
        got.contains("`resolver.servers[0]` is not an address"),
        "{got}"
    );
    // `fulcrum check` does not look names with `resolve` up: the running server does.
    let ok = fulcrum::config::Config::parse(
        &format!("{listener}[upstream.app]\nbackends = [{{ address = \"nowhere.invalid:80\", resolve = \"30s\" }}]\n"),
        std::path::Path::new("f.toml"),
    );
    assert!(ok.is_ok(), "{:?}", ok.err().map(|e| e.to_string()));
}

#[tokio::test]
async fn an_upstream_takes_its_backends_from_srv_records() {
    let dns = DnsServer::start().await;
    let port = free_port();
    let a = HttpBackend::start_at("a", SocketAddr::new(ip(6).into(), port)).await;
    let b = HttpBackend::start_at("b", SocketAddr::new(ip(7).into(), port)).await;
    dns.set("a.test", &[ip(6)]);
    dns.set("b.test", &[ip(7)]);
    dns.set_srv(
        "_http._tcp.app.test",
        &[
            (10, 5, port, "a.test"),
            (10, 1, port, "b.test"),
            (20, 1, port, "backup.test"),
        ],
    );
    let config = format!(
        r#"
[admin]
bind = "127.0.0.1:0"

[resolver]
servers = ["{}"]

[[listener]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
upstream = "app"

[upstream.app]
srv = "_http._tcp.app.test"
"#,
        dns.addr
    );
    let f = Fulcrum::start(&config).await;
    let api = f.admin.unwrap();
    // The preferred priority only; weights from the records.
    let both = [
        format!("a.test:{port}#{}", ip(6)),
        format!("b.test:{port}#{}", ip(7)),
    ];
    wait_names(api, &both).await;
    let (_, _, body) = get(api, "/status").await;
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let weights: Vec<u64> = doc["upstreams"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["weight"].as_u64().unwrap())
        .collect();
    assert_eq!(weights, [5, 1]);
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        let (status, h, _) = get(f.addr("web"), "/").await;
        assert_eq!(status, 200);
        seen.insert(h["x-backend"].to_str().unwrap().to_string());
    }
    assert_eq!(seen, BTreeSet::from(["a".to_string(), "b".to_string()]));
    // A record gone: its backend goes.
    dns.set_srv("_http._tcp.app.test", &[(10, 5, port, "a.test")]);
    wait_names(api, &both[..1]).await;
    for _ in 0..10 {
        assert_eq!(get(f.addr("web"), "/").await.1["x-backend"], "a");
    }
    f.stop().await;
    drop((a, b));
}
