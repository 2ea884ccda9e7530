//! The admin dashboard: the page and its data from the API, and the page itself in
//! headless Chromium (Debian's `chromium`, driven by Playwright's `playwright-core`
//! from npm in tests/browser): under light load its numbers change, names show as
//! text, a drain asks for the token and takes effect, and it fits a phone's screen.
//! The browser part says it is skipped when Node.js, Chromium or playwright-core is
//! missing; its screenshots are kept in target/artifacts/.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::http::*;
use common::Fulcrum;

const TOKEN: &str = "dashboard-test-token-0123456789";

/// A directory with the admin token, and the config naming it.
fn setup(name: &str, a: &HttpBackend, odd: &HttpBackend) -> (PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("fulcrum-dash-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("admin.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let config = format!(
        r#"
[admin]
bind = "127.0.0.1:0"
token_file = "admin.token"

[[listener]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
upstream = "app"

[upstream.app]
backends = [{{ address = "{}", name = "a" }}, {{ address = "{}", name = "<img src=x onerror=alert(1)>" }}]
"#,
        a.addr, odd.addr
    );
    (dir, config)
}

async fn fetch(
    addr: std::net::SocketAddr,
    path: &str,
) -> (http::StatusCode, http::HeaderMap, String) {
    let (status, headers, body) = get(addr, path).await;
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_admin_api_serves_the_page_and_its_data() {
    let a = HttpBackend::start("a").await;
    let odd = HttpBackend::start("odd").await;
    let (dir, config) = setup("serve", &a, &odd);
    let f = Fulcrum::start_at(&config, &dir.join("fulcrum.toml")).await;
    let api = f.admin.unwrap();
    get(f.addr("web"), "/").await;

    let (status, h, page) = fetch(api, "/").await;
    assert_eq!(status, 200);
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert_eq!(h["x-frame-options"], "DENY");
    assert!(page.contains(r#"<script src="/dashboard/app.js" defer></script>"#));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "nothing from elsewhere"
    );
    let (status, h, script) = fetch(api, "/dashboard/app.js").await;
    assert_eq!(status, 200);
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert!(!script.contains("innerHTML"), "names go in as text only");
    assert!(!script.contains("localStorage") && !script.contains("sessionStorage"));
    let (status, h, _) = fetch(api, "/dashboard/style.css").await;
    assert_eq!(status, 200);
    assert!(h["content-type"].to_str().unwrap().starts_with("text/css"));

    let (status, h, data) = fetch(api, "/dashboard/data").await;
    assert_eq!(status, 200);
    assert_eq!(h["cache-control"], "no-store");
    let doc: serde_json::Value = serde_json::from_str(&data).unwrap();
    assert_eq!(doc["status"]["upstreams"][0]["name"], "app");
    let backends = &doc["status"]["upstreams"][0]["backends"];
    assert_eq!(backends[0]["name"], "a");
    assert!(backends[0]["ewma_ms"].is_number());
    let requests = doc["metrics"]["fulcrum_http_requests_total"]
        .as_array()
        .unwrap();
    let served = requests
        .iter()
        .find(|s| s["labels"]["listener"] == "web" && s["labels"]["code"] == "200")
        .expect("the request is counted");
    assert_eq!(served["value"], 1.0);
    let latency = doc["metrics"]["fulcrum_http_request_duration_seconds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["labels"]["listener"] == "web" && s["labels"]["upstream"] == "app")
        .expect("the request's latency");
    assert_eq!(latency["count"], 1);
    assert!(latency["buckets"].as_array().unwrap().len() > 5);
    f.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Why the browser test cannot run here, if it cannot.
fn browser_missing(browser_dir: &Path) -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!(
            "no Chromium at {chromium} (Debian package chromium)"
        ));
    }
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Some("no Node.js".into());
    }
    if !browser_dir.join("node_modules/playwright-core").exists() {
        return Some("playwright-core is not installed: npm ci --prefix tests/browser".into());
    }
    None
}

#[tokio::test]
async fn the_dashboard_works_in_a_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let browser_dir = root.join("tests/browser");
    if let Some(why) = browser_missing(&browser_dir) {
        eprintln!("skipped: {why}");
        return;
    }
    let a = HttpBackend::start("a").await;
    let odd = HttpBackend::start("odd").await;
    let (dir, config) = setup("browser", &a, &odd);
    let f = Fulcrum::start_at(&config, &dir.join("fulcrum.toml")).await;
    let api = f.admin.unwrap();
    // Light load for as long as the browser looks.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, web) = (stop.clone(), f.addr("web"));
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                get(web, "/").await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let run = tokio::process::Command::new("node")
        .arg(browser_dir.join("dashboard.mjs"))
        .arg(format!("http://{api}/"))
        .arg(TOKEN)
        .arg(&artifacts)
        .current_dir(&browser_dir)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the browser finished in time")
        .expect("node runs");
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(said.contains("ok"), "{said}");
    // The click reached the API: /status has backend a drained.
    let (_, _, status) = fetch(api, "/status").await;
    let doc: serde_json::Value = serde_json::from_str(&status).unwrap();
    let a_state = doc["upstreams"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "a")
        .cloned()
        .unwrap();
    assert_eq!(a_state["draining"], true, "{doc}");
    assert!(artifacts.join("dashboard.png").exists());
    assert!(artifacts.join("dashboard-phone.png").exists());
    f.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
