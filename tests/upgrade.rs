//! Binary upgrades end to end: a real `fulcrum run --pid-file` process, upgraded five
//! times with `fulcrum upgrade` while clients send requests on keep-alive and on new
//! connections: none fails; a backend the old process knew was down gets no request
//! from the new one before its own checks; a new process that cannot start (the file
//! no longer validates) leaves the old one serving.
//!
//! The test makes itself the child subreaper, so that each new process (whose parent,
//! the old one, exits) is reaped here, and stops the last one by its process id.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::free_port;
use common::http::*;
use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PATIENCE: Duration = Duration::from_secs(30);

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn config(web: u16, admin: u16, a: &HttpBackend, down: &HttpBackend) -> String {
    format!(
        r#"
[global]
watch_config = false
shutdown_timeout = "10s"

[admin]
bind = "127.0.0.1:{admin}"

[[listener]]
name = "web"
bind = "127.0.0.1:{web}"
protocol = "http"
upstream = "app"

[upstream.app]
backends = [{{ address = "{}", name = "a" }}, {{ address = "{}", name = "down" }}]

  [upstream.app.health]
  check = "http"
  path = "/health"
  interval = "2s"
  fall = 1
  rise = 1
"#,
        a.addr, down.addr
    )
}

/// One request on a new connection; whether it was answered 200.
async fn fresh_request(addr: std::net::SocketAddr) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    if s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    matches!(read, Ok(Ok(_))) && out.starts_with(b"HTTP/1.1 200")
}

/// The backend that answered a request on a pooled keep-alive connection, or None.
async fn pooled_request(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Body,
    >,
    addr: std::net::SocketAddr,
) -> Option<String> {
    let req = Request::get(format!("http://{addr}/"))
        .body(empty())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .ok()?
        .ok()?;
    let backend = resp.headers().get("x-backend")?.to_str().ok()?.to_string();
    let ok = resp.status() == 200;
    http_body_util::BodyExt::collect(resp.into_body())
        .await
        .ok()?;
    ok.then_some(backend)
}

struct Load {
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    to_down: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Two clients on keep-alive connections and one opening a connection per request.
    fn start(addr: std::net::SocketAddr) -> Load {
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let to_down = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let (ok, failed, to_down, stop) =
                (ok.clone(), failed.clone(), to_down.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let client = client();
                while !stop.load(Ordering::SeqCst) {
                    match pooled_request(&client, addr).await {
                        Some(b) => {
                            if b == "down" {
                                to_down.fetch_add(1, Ordering::SeqCst);
                            }
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        None => {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
        let (ok2, failed2, stop2) = (ok.clone(), failed.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop2.load(Ordering::SeqCst) {
                if fresh_request(addr).await {
                    ok2.fetch_add(1, Ordering::SeqCst);
                } else {
                    failed2.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
        Load {
            ok,
            failed,
            to_down,
            stop,
            tasks,
        }
    }

    async fn wait_more(&self, n: usize) {
        let base = self.ok.load(Ordering::SeqCst);
        let deadline = Instant::now() + PATIENCE;
        while self.ok.load(Ordering::SeqCst) < base + n {
            assert!(Instant::now() < deadline, "requests stopped being answered");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) -> (usize, usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
            self.to_down.load(Ordering::SeqCst),
        )
    }
}

/// `fulcrum upgrade --pid-file`: its exit status and what it printed.
async fn upgrade(pid_file: &Path) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(["upgrade", "--pid-file"])
        .arg(pid_file)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Reaps every exited child (orphans come here: this process is their subreaper).
fn reap() {
    loop {
        let mut status = 0;
        // SAFETY: waitpid(2) for any child, without blocking.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
    }
}

fn alive(pid: i32) -> bool {
    reap();
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

struct Stopper(PathBuf);

impl Drop for Stopper {
    fn drop(&mut self) {
        if let Some(pid) = read_pid(&self.0.join("fulcrum.pid")) {
            // SAFETY: kill(2) on the fulcrum this test started (through upgrades).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        reap();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn five_upgrades_under_load_fail_no_request() {
    // SAFETY: prctl(2) with PR_SET_CHILD_SUBREAPER only marks this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let a = HttpBackend::start("a").await;
    let down = HttpBackend::start("down").await;
    down.health.store(503, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("fulcrum-upgrade-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let stopper = Stopper(dir.clone());
    let (web, admin) = (free_port(), free_port());
    let file = dir.join("fulcrum.toml");
    let good = config(web, admin, &a, &down);
    std::fs::write(&file, &good).unwrap();
    let pid_file = dir.join("fulcrum.pid");
    let log = std::fs::File::create(dir.join("log")).unwrap();
    let mut first = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .arg("run")
        .arg("-c")
        .arg(&file)
        .arg("--pid-file")
        .arg(&pid_file)
        .env("RUST_LOG", "info")
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while read_pid(&pid_file).is_none() {
        assert!(Instant::now() < deadline, "fulcrum did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let api: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    // The first process learns that "down" is down.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, _, body) = get(api, "/status").await;
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let down_state = doc["upstreams"][0]["backends"]
            .as_array()
            .and_then(|b| b.iter().find(|b| b["name"] == "down").cloned());
        if down_state.is_some_and(|b| b["healthy"] == false) {
            break;
        }
        assert!(Instant::now() < deadline, "the health check never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let addr: std::net::SocketAddr = format!("127.0.0.1:{web}").parse().unwrap();
    let load = Load::start(addr);
    load.wait_more(50).await;
    let mut pids = vec![read_pid(&pid_file).unwrap()];
    for round in 1..=5 {
        let (ok, said) = upgrade(&pid_file).await;
        assert!(ok, "upgrade {round}: {said}");
        let new = read_pid(&pid_file).unwrap();
        assert!(!pids.contains(&new), "upgrade {round}: {said}");
        load.wait_more(50).await;
        let old = *pids.last().unwrap();
        let deadline = Instant::now() + PATIENCE;
        while alive(old) {
            assert!(Instant::now() < deadline, "process {old} did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        pids.push(new);
    }
    let _ = first.wait();

    // A new process that cannot start: the old one keeps serving.
    std::fs::write(&file, "[global]\nworkerz = 1\n").unwrap();
    let serving = read_pid(&pid_file).unwrap();
    let (ok, said) = upgrade(&pid_file).await;
    assert!(!ok, "{said}");
    assert!(said.contains("keeps serving"), "{said}");
    assert_eq!(read_pid(&pid_file), Some(serving));
    load.wait_more(50).await;
    std::fs::write(&file, &good).unwrap();

    let (ok, failed, to_down) = load.stop().await;
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    assert_eq!(
        to_down, 0,
        "a new process sent requests to the backend known down"
    );
    let log = std::fs::read_to_string(dir.join("log")).unwrap();
    assert_eq!(
        log.matches("upgrade: the new process serves").count(),
        5,
        "{log}"
    );
    // The last process stops as usual.
    // SAFETY: kill(2) on the fulcrum this test started (through upgrades).
    unsafe { libc::kill(serving, libc::SIGTERM) };
    let deadline = Instant::now() + PATIENCE;
    while alive(serving) {
        assert!(Instant::now() < deadline, "the last process did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        read_pid(&pid_file).is_none(),
        "the pid file is removed at exit"
    );
    drop(stopper);
}
