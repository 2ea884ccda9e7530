//! `static` routes: files, conditional requests, ranges, and no way out of the directory.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::http::*;
use common::Fulcrum;
use http::{Method, Request, StatusCode};

struct Site {
    root: PathBuf,
}

impl Site {
    fn new(name: &str) -> Site {
        let root =
            std::env::temp_dir().join(format!("fulcrum-static-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let public = root.join("public");
        std::fs::create_dir_all(public.join("sub")).unwrap();
        std::fs::write(public.join("index.html"), "<h1>home</h1>").unwrap();
        std::fs::write(public.join("style.css"), "body { color: red }").unwrap();
        std::fs::write(public.join("data.bin"), pattern(1000)).unwrap();
        std::fs::write(public.join("sub").join("index.html"), "sub home").unwrap();
        std::fs::write(root.join("secret.txt"), "TOP SECRET").unwrap();
        std::os::unix::fs::symlink(root.join("secret.txt"), public.join("escape")).unwrap();
        std::os::unix::fs::symlink(public.join("style.css"), public.join("inside")).unwrap();
        Site { root }
    }

    fn config(&self) -> String {
        format!(
            "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n\
             [[listener.route]]\npath_prefix = \"/static/\"\nstatic = \"{}\"\n",
            self.root.join("public").display()
        )
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[tokio::test]
async fn files_are_served_with_type_and_index() {
    let site = Site::new("serve");
    let f = Fulcrum::start(&site.config()).await;
    let addr = f.addr("web");
    let (status, h, body) = get(addr, "/static/style.css").await;
    assert_eq!(status, 200);
    assert_eq!(body, "body { color: red }");
    assert!(h["content-type"].to_str().unwrap().starts_with("text/css"));
    assert!(h.contains_key("etag"));
    assert!(h.contains_key("last-modified"));
    let (status, _, body) = get(addr, "/static/").await;
    assert_eq!(
        (status, body.as_ref()),
        (StatusCode::OK, &b"<h1>home</h1>"[..])
    );
    let (status, h, _) = get(addr, "/static/sub").await;
    assert_eq!(status, 301);
    assert_eq!(h["location"], "/static/sub/");
    let (_, _, body) = get(addr, "/static/sub/").await;
    assert_eq!(body, "sub home");
    let (status, _, body) = get(addr, "/static/inside").await;
    assert_eq!(
        (status, body.as_ref()),
        (StatusCode::OK, &b"body { color: red }"[..])
    );
    let (status, _, _) = get(addr, "/static/missing.txt").await;
    assert_eq!(status, 404);
    f.stop().await;
}

#[tokio::test]
async fn validators_give_304_and_ranges_give_206() {
    let site = Site::new("conditional");
    let f = Fulcrum::start(&site.config()).await;
    let addr = f.addr("web");
    let (_, h, _) = get(addr, "/static/data.bin").await;
    let etag = h["etag"].to_str().unwrap().to_string();
    let modified = h["last-modified"].to_str().unwrap().to_string();
    let c = client();
    let req = Request::get(format!("http://{addr}/static/data.bin"))
        .header("if-none-match", &etag)
        .body(empty())
        .unwrap();
    let (status, h304, body) = send(&c, req).await;
    assert_eq!(status, 304);
    assert!(body.is_empty());
    assert_eq!(h304["etag"], etag.as_str());
    // A changed validator gets the file, even with a matching If-Modified-Since.
    let req = Request::get(format!("http://{addr}/static/data.bin"))
        .header("if-none-match", "\"other\"")
        .header("if-modified-since", &modified)
        .body(empty())
        .unwrap();
    assert_eq!(send(&c, req).await.0, 200);
    let req = Request::get(format!("http://{addr}/static/data.bin"))
        .header("if-modified-since", &modified)
        .body(empty())
        .unwrap();
    assert_eq!(send(&c, req).await.0, 304);
    let req = Request::get(format!("http://{addr}/static/data.bin"))
        .header("range", "bytes=10-19")
        .body(empty())
        .unwrap();
    let (status, h, body) = send(&c, req).await;
    assert_eq!(status, 206);
    assert_eq!(h["content-range"], "bytes 10-19/1000");
    assert_eq!(body.as_ref(), &pattern(1000)[10..20]);
    f.stop().await;
}

#[tokio::test]
async fn only_get_and_head_are_served() {
    let site = Site::new("methods");
    let f = Fulcrum::start(&site.config()).await;
    let addr = f.addr("web");
    let req = Request::builder()
        .method(Method::HEAD)
        .uri(format!("http://{addr}/static/data.bin"))
        .body(empty())
        .unwrap();
    let (status, h, body) = send(&client(), req).await;
    assert_eq!(status, 200);
    assert_eq!(h["content-length"], "1000");
    assert_eq!(h["content-type"], "application/octet-stream");
    assert!(body.is_empty());
    let req = Request::post(format!("http://{addr}/static/data.bin"))
        .body(body_of("x"))
        .unwrap();
    let (status, h, _) = send(&client(), req).await;
    assert_eq!(status, 405);
    assert_eq!(h["allow"], "GET, HEAD");
    f.stop().await;
}

fn body_of(s: &'static str) -> Body {
    body(s)
}

#[tokio::test]
async fn no_path_escapes_the_directory() {
    let site = Site::new("traversal");
    let f = Fulcrum::start(&site.config()).await;
    let addr = f.addr("web");
    for path in [
        "/static/../secret.txt",
        "/static/%2e%2e/secret.txt",
        "/static/%2E%2E/secret.txt",
        "/static/..%2fsecret.txt",
        "/static/sub/../../secret.txt",
        "/static/escape",
        "/static/%2fetc%2fpasswd",
        "/static//etc/passwd",
    ] {
        let raw = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        let resp = raw_exchange_within(addr, raw.as_bytes(), Duration::from_secs(2)).await;
        assert!(!resp.contains("TOP SECRET"), "{path} escaped: {resp}");
        assert!(!resp.contains("root:"), "{path} escaped: {resp}");
        let status_line = resp.lines().next().unwrap_or("");
        assert!(
            status_line.starts_with("HTTP/1.1 404") || status_line.starts_with("HTTP/1.1 400"),
            "{path} -> {status_line}"
        );
    }
    f.stop().await;
}

async fn ranged(
    addr: std::net::SocketAddr,
    range: &str,
) -> (StatusCode, http::HeaderMap, bytes::Bytes) {
    let req = Request::get(format!("http://{addr}/static/data.bin"))
        .header("range", range)
        .body(empty())
        .unwrap();
    send(&client(), req).await
}

#[tokio::test]
async fn many_or_overlapping_ranges_get_the_whole_file() {
    let site = Site::new("ranges");
    let f = Fulcrum::start(&site.config()).await;
    let addr = f.addr("web");
    let (status, h, body) = ranged(addr, "bytes=0-9,20-29").await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("multipart/byteranges"));
    assert!(body.len() < 1000);
    let seventeen: Vec<String> = (0..17)
        .map(|i| format!("{}-{}", i * 50, i * 50 + 1))
        .collect();
    for range in [
        format!("bytes={}", seventeen.join(",")),
        "bytes=0-999,0-999,0-999".to_string(),
        "bytes=0-,1-,2-".to_string(),
        "bytes=-1000,0-".to_string(),
    ] {
        let (status, _, body) = ranged(addr, &range).await;
        assert_eq!(status, StatusCode::OK, "{range}");
        assert_eq!(body, pattern(1000), "{range}");
    }
    f.stop().await;
}

#[tokio::test]
async fn hidden_files_are_served_only_when_the_route_says_so() {
    let site = Site::new("hidden");
    let public = site.root.join("public");
    std::fs::write(public.join(".env"), "PASSWORD=1").unwrap();
    std::fs::create_dir_all(public.join(".git")).unwrap();
    std::fs::write(public.join(".git").join("config"), "[core]").unwrap();
    let f = Fulcrum::start(&site.config()).await;
    let addr = f.addr("web");
    for path in [
        "/static/.env",
        "/static/.git/config",
        "/static/%2eenv",
        "/static/sub/../.env",
    ] {
        let (status, _, body) = get(addr, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(
            !body.starts_with(b"PASSWORD") && !body.starts_with(b"[core]"),
            "{path}"
        );
    }
    let (status, _, _) = get(addr, "/static/style.css").await;
    assert_eq!(status, StatusCode::OK);
    f.stop().await;
    let open = format!("{}static_hidden = true\n", site.config());
    let f = Fulcrum::start(&open).await;
    let (status, _, body) = get(f.addr("web"), "/static/.env").await;
    assert_eq!(
        (status, body.as_ref()),
        (StatusCode::OK, &b"PASSWORD=1"[..])
    );
    f.stop().await;
}
