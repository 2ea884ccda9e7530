//! The `fulcrum` binary: command line, exit codes, signals.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fulcrum"));
    c.env_remove("FULCRUM_CONFIG").env_remove("RUST_LOG");
    c
}

/// A config file in a fresh directory of its own, removed when dropped.
struct TempConfig {
    dir: PathBuf,
    path: PathBuf,
}

impl TempConfig {
    fn new(name: &str, contents: &str) -> TempConfig {
        let dir = std::env::temp_dir().join(format!("fulcrum-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fulcrum.toml");
        std::fs::write(&path, contents).unwrap();
        TempConfig { dir, path }
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn output(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run fulcrum");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name)
}

#[test]
fn version_is_printed() {
    let (code, out, _) = output(bin().arg("--version"));
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("fulcrum {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn check_accepts_every_example_and_prints_a_summary() {
    for entry in std::fs::read_dir(example("")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let (code, out, err) = output(bin().arg("check").arg("-c").arg(&path));
        assert_eq!(code, 0, "{}: {err}", path.display());
        assert!(out.lines().any(|l| l.starts_with("listener ")), "{out}");
        assert_eq!(out.lines().last(), Some("ok"));
    }
}

#[test]
fn check_rejects_an_invalid_file_with_its_position_and_exit_1() {
    let t = TempConfig::new("check-invalid", "[global]\nworkers = \"many\"\n");
    let (code, out, err) = output(bin().arg("check").arg("--config").arg(&t.path));
    assert_eq!(code, 1);
    assert!(!out.contains("ok"));
    assert!(
        err.starts_with(&format!("{}:2:11: `global.workers`", t.path.display())),
        "{err}"
    );
}

#[test]
fn check_warns_when_an_upstream_needs_system_roots_and_there_are_none() {
    let t = TempConfig::new(
        "check-roots",
        "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\nupstream = \"app\"\n\
         [upstream.app]\ntls = { sni = \"app.internal\" }\nbackends = [{ address = \"127.0.0.1:2\" }]\n",
    );
    let empty = t.dir.join("no-roots.pem");
    std::fs::write(&empty, "").unwrap();
    let (code, out, err) = output(
        bin()
            .arg("check")
            .arg("-c")
            .arg(&t.path)
            .env("SSL_CERT_FILE", &empty)
            .env("SSL_CERT_DIR", &t.dir),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().last(), Some("ok"));
    assert!(
        err.contains(
            "warning: `upstream.app.tls` has no `ca`, and no system root certificates were found"
        ),
        "{err}"
    );
    // With roots (the test's own CA file as the system's), no warning.
    let ca = t.dir.join("roots.pem");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["ca.test".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(&ca, cert.pem()).unwrap();
    let (code, _, err) = output(
        bin()
            .arg("check")
            .arg("-c")
            .arg(&t.path)
            .env("SSL_CERT_FILE", &ca)
            .env("SSL_CERT_DIR", &t.dir),
    );
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("warning"), "{err}");
}

#[test]
fn the_config_path_comes_from_the_environment_when_not_given() {
    let (code, out, _) = output(
        bin()
            .arg("check")
            .env("FULCRUM_CONFIG", example("tcp.toml")),
    );
    assert_eq!(code, 0);
    assert!(out.ends_with("ok\n"));
    let (code, _, err) = output(
        bin()
            .arg("check")
            .env("FULCRUM_CONFIG", "/nonexistent/f.toml"),
    );
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/f.toml: cannot be read"), "{err}");
}

#[test]
fn run_refuses_an_invalid_file_with_exit_1() {
    let t = TempConfig::new(
        "run-invalid",
        "[[listener]]\nname = \"x\"\nbind = \"nowhere\"\n",
    );
    let (code, _, err) = output(bin().arg("run").arg("-c").arg(&t.path));
    assert_eq!(code, 1);
    assert!(
        err.contains("`listener[0].bind` is not an address"),
        "{err}"
    );
}

#[test]
fn run_names_the_listener_and_address_when_a_bind_fails() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let t = TempConfig::new(
        "bind-fails",
        &format!(
            "[[listener]]\nname = \"busy\"\nbind = \"{addr}\"\nprotocol = \"tcp\"\nupstream = \"app\"\n\
             [upstream.app]\nbackends = [{{ address = \"127.0.0.1:9\" }}]\n"
        ),
    );
    let (code, _, err) = output(bin().arg("run").arg("-c").arg(&t.path));
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("listener \"busy\": cannot bind {addr}")),
        "{err}"
    );
}

/// A running fulcrum process, its stderr read line by line.
struct Process {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Process {
    fn start(config: &Path) -> Process {
        Self::start_with(config, &[])
    }

    fn start_with(config: &Path, env: &[(&str, &str)]) -> Process {
        let mut cmd = bin();
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .arg("run")
            .arg("-c")
            .arg(config)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn fulcrum");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Process { child, lines }
    }

    /// Waits for the first JSON log line whose `key` is `value`.
    fn wait_for_field(&self, key: &str, value: &str) -> serde_json::Value {
        loop {
            let line = self.wait_for_line(&format!("{key} = {value:?}"), |_| true);
            if let Ok(line) = serde_json::from_str::<serde_json::Value>(&line) {
                if line[key] == value {
                    return line;
                }
            }
        }
    }

    /// Waits for the first log line that `wanted` accepts.
    fn wait_for_line(&self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(PATIENCE)
                .unwrap_or_else(|_| panic!("no log line with {what}"));
            if wanted(&line) {
                return line;
            }
        }
    }

    /// The address of the first listener (JSON logs).
    fn listening_addr(&self) -> SocketAddr {
        self.wait_for("listening")["addr"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    fn wait_for(&self, message: &str) -> serde_json::Value {
        self.wait_for_field("message", message)
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait_exit(&mut self) -> i32 {
        for _ in 0..(PATIENCE.as_millis() / 20) {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("fulcrum did not exit");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn process_config(name: &str, backend: SocketAddr, shutdown_timeout: &str) -> TempConfig {
    TempConfig::new(
        name,
        &format!(
            "[global]\nlog_format = \"json\"\nshutdown_timeout = \"{shutdown_timeout}\"\n\
             [[listener]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nupstream = \"app\"\n\
             [upstream.app]\nbackends = [{{ address = \"{backend}\", name = \"a\" }}]\n"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_and_lets_open_connections_finish() {
    let a = Backend::start("a").await;
    let t = process_config("sigterm", a.addr, "20s");
    let mut p = Process::start(&t.path);
    let listening = p.wait_for("listening");
    let addr: SocketAddr = listening["addr"].as_str().unwrap().parse().unwrap();

    let mut open = Client::connect(addr).await;
    assert_eq!(open.greeting().await.as_deref(), Some("a"));
    p.signal("TERM");
    p.wait_for("shutting down: listeners closed, waiting for open connections");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting"
    );

    open.writer.write_all(b"done").await.unwrap();
    open.writer.shutdown().await.unwrap();
    assert_eq!(open.read_to_end().await, b"donebye:a");
    let line = p.wait_for_field("target", "fulcrum::access");
    assert_eq!(line["listener"], "front");
    assert_eq!(line["backend"], "a");
    assert_eq!(line["bytes_in"], 4);
    assert_eq!(line["bytes_out"], "a\ndonebye:a".len());
    assert_eq!(p.wait_exit(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_cuts_connections_left_at_the_shutdown_timeout_and_exits_0() {
    let a = Backend::start("a").await;
    let t = process_config("sigint", a.addr, "300ms");
    let mut p = Process::start(&t.path);
    let addr = p.listening_addr();
    let mut open = Client::connect(addr).await;
    assert_eq!(open.greeting().await.as_deref(), Some("a"));
    p.signal("INT");
    let cut = p.wait_for("shutdown timeout reached: connections cut");
    assert_eq!(cut["cut"], 1);
    assert_eq!(open.read_to_end().await, b"");
    assert_eq!(p.wait_exit(), 0);
}

/// With one worker, serving, watching the file and looking at free memory all run on
/// the main thread: with no other thread sharing the descriptor table, the kernel
/// looks up each system call's descriptor without taking a reference on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_serves_on_one_thread() {
    let a = Backend::start("a").await;
    let t = process_config("one-thread", a.addr, "5s");
    let text = std::fs::read_to_string(&t.path).unwrap();
    std::fs::write(
        &t.path,
        text.replace("[global]\n", "[global]\nworkers = 1\nwatch_config = true\n"),
    )
    .unwrap();
    let p = Process::start(&t.path);
    let mut c = Client::connect(p.listening_addr()).await;
    assert_eq!(c.greeting().await.as_deref(), Some("a"));
    let tasks = format!("/proc/{}/task", p.child.id());
    let threads = || std::fs::read_dir(&tasks).map(|d| d.count()).unwrap_or(0);
    eventually("fulcrum to run on one thread", PATIENCE, || async {
        threads() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_reloading_and_stopping_and_sighup_reloads() {
    let a = Backend::start("a").await;
    let t = process_config("notify", a.addr, "5s");
    let socket_path = t.dir.join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut p = Process::start_with(&t.path, &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())]);
    let mut buf = [0u8; 512];
    let mut next = || {
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).trim_end().to_string()
    };
    assert_eq!(next(), "READY=1");
    p.signal("HUP");
    let reloading = next();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert_eq!(next(), "READY=1");
    let line = p.wait_for("configuration reloaded");
    assert_eq!(line["generation"], 2);
    p.signal("TERM");
    assert_eq!(next(), "STOPPING=1");
    assert_eq!(p.wait_exit(), 0);
}

/// What is left of a text log line once its quoted values are taken out.
fn outside_quotes(line: &str) -> String {
    let mut out = String::new();
    let (mut quoted, mut escaped) = (false, false);
    for c in line.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            _ if !quoted => out.push(c),
            _ => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_add_fields_to_a_text_access_line() {
    let b = common::http::HttpBackend::start("b").await;
    let t = TempConfig::new(
        "log-forging",
        &format!(
            "[global]\nlog_format = \"text\"\n\
             [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nupstream = \"app\"\n\
             [upstream.app]\nbackends = [{{ address = \"{}\", name = \"b\" }}]\n",
            b.addr
        ),
    );
    let p = Process::start_with(&t.path, &[("NO_COLOR", "1")]);
    let listening = p.wait_for_line("listening", |l| l.contains("listening"));
    let addr: SocketAddr = listening
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .expect("the listening line names its address")
        .trim_matches('"')
        .parse()
        .unwrap();
    let req = ::http::Request::get(format!("http://{addr}/x"))
        .header("x-request-id", "abc status=999 upstream=forged")
        .body(common::http::empty())
        .unwrap();
    let (status, _, _) = common::http::send(&common::http::client(), req).await;
    assert_eq!(status, 200);
    let line = p.wait_for_line("fulcrum::access", |l| l.contains("fulcrum::access"));
    assert!(
        line.contains(r#"request_id="abc status=999 upstream=forged""#),
        "{line}"
    );
    let fields = outside_quotes(&line);
    assert_eq!(fields.matches("status=").count(), 1, "{line}");
    assert!(fields.contains("status=200"), "{line}");
    assert!(!fields.contains("forged"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_debug_level_a_requests_lines_carry_its_connection_and_request_spans() {
    let refusing = common::refusing_addr().await;
    let t = TempConfig::new(
        "spans",
        &format!(
            "[global]\nlog_format = \"json\"\n\
             [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n\
             [[listener.route]]\npath_prefix = \"/api/\"\nupstream = \"app\"\n\
             [upstream.app]\nretries = 0\nbackends = [{{ address = \"{refusing}\", name = \"gone\" }}]\n"
        ),
    );
    let p = Process::start_with(&t.path, &[("RUST_LOG", "debug")]);
    let listening = p.wait_for_field("message", "listening");
    let addr: SocketAddr = listening["addr"]
        .as_str()
        .or(listening["fields"]["addr"].as_str())
        .expect("the listening line names its address")
        .parse()
        .unwrap();
    let req = ::http::Request::get(format!("http://{addr}/api/x"))
        .header("x-request-id", "span-test-1")
        .body(common::http::empty())
        .unwrap();
    let (status, _, _) = common::http::send(&common::http::client(), req).await;
    assert_eq!(status, 502);
    let line = p.wait_for_field("message", "connect to backend failed");
    let spans = line["spans"].as_array().expect("the line lists its spans");
    let conn = spans
        .iter()
        .find(|s| s["name"] == "conn")
        .expect("a conn span");
    assert_eq!(conn["listener"], "web", "{line}");
    assert!(
        conn["client.addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{line}"
    );
    let request = &line["span"];
    assert_eq!(request["name"], "request", "{line}");
    assert_eq!(request["request.id"], "span-test-1", "{line}");
    assert_eq!(request["http.method"], "GET", "{line}");
    assert_eq!(request["http.route"], "/api/", "{line}");
    assert_eq!(request["upstream"], "app", "{line}");
    assert_eq!(request["backend.name"], "gone", "{line}");
}

/// A port free for both UDP and TCP on 127.0.0.1 (bound once, then released).
fn free_heartbeat_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A failover node on loopback with no addresses to move, in `dir`.
fn failover_node(
    dir: &Path,
    node: &str,
    priority: u8,
    port: u16,
    peer: u16,
    extra: &str,
) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let key = dir.join("failover.key");
    std::fs::write(&key, "a shared key of at least thirty-two bytes\n").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let path = dir.join(format!("{node}.toml"));
    std::fs::write(
        &path,
        format!(
            "[global]\nlog_format = \"json\"\nshutdown_timeout = \"1s\"\nwatch_config = false\n\
             [[listener]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nupstream = \"app\"\n\
             [upstream.app]\nbackends = [{{ address = \"127.0.0.1:9\", name = \"a\" }}]\n\
             [failover]\nnode = \"{node}\"\npriority = {priority}\nbind = \"127.0.0.1:{port}\"\n\
             peers = [\"127.0.0.1:{peer}\"]\ninterval = \"1s\"\nsecret_file = \"failover.key\"\n{extra}"
        ),
    )
    .unwrap();
    path
}

const FAILOVER_LOG: (&str, &str) = ("RUST_LOG", "info,fulcrum::failover=debug");
const ACTIVE: &str = "failover: active, the addresses are held";

/// Starts lb1 (priority 150) and lb2 (priority 100, with `lb2_extra`), waits until lb1
/// is active and lb2 watches it, then kills lb1 with SIGKILL: no resign is sent.
fn kill_the_active(name: &str, lb2_extra: &str) -> (TempConfig, Process) {
    let t = TempConfig::new(name, "");
    let (p1, p2) = (free_heartbeat_port(), free_heartbeat_port());
    let lb2 = Process::start_with(
        &failover_node(&t.dir, "lb2", 100, p2, p1, lb2_extra),
        &[FAILOVER_LOG],
    );
    let mut lb1 = Process::start_with(
        &failover_node(&t.dir, "lb1", 150, p1, p2, "dead_after = \"3s\"\n"),
        &[FAILOVER_LOG],
    );
    lb1.wait_for(ACTIVE);
    let (connected, heard) = (std::cell::Cell::new(false), std::cell::Cell::new(false));
    lb2.wait_for_line("lb2 watching lb1 and hearing it active", |l| {
        connected.set(connected.get() || l.contains("failover: exit watch: connected"));
        heard.set(
            heard.get()
                || (l.contains("failover: peer state") && l.contains(r#""state":"active""#)),
        );
        connected.get() && heard.get()
    });
    lb1.child.kill().unwrap();
    lb1.child.wait().unwrap();
    (t, lb2)
}

#[test]
fn a_killed_active_is_taken_over_at_once_when_its_port_refuses() {
    // lb2 would wait a minute of silence; the exit watch sees lb1's process end.
    let (_t, lb2) = kill_the_active("exit-watch", "dead_after = \"60s\"\n");
    let exited = lb2.wait_for(
        "failover: peer exited without resigning (its heartbeat port refuses connections): gone at once",
    );
    assert_eq!(exited["node"], "lb1");
    lb2.wait_for(ACTIVE);
}

#[test]
fn with_detect_exit_off_a_killed_active_is_taken_over_after_dead_after() {
    let (_t, lb2) = kill_the_active(
        "exit-watch-off",
        "dead_after = \"5s\"\ndetect_exit = false\n",
    );
    let seen = std::cell::Cell::new(false);
    lb2.wait_for_line("the exit, seen and not acted on", |l| {
        assert!(!l.contains("gone at once"), "{l}");
        seen.set(seen.get() || l.contains("detect_exit off"));
        l.contains(ACTIVE)
    });
    assert!(seen.get(), "the exit watch saw lb1 end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_before_a_request_each_get_one_access_line() {
    let b = common::http::HttpBackend::start("b").await;
    let t = TempConfig::new(
        "before-request",
        &format!(
            "[global]\nlog_format = \"json\"\n\
             [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nupstream = \"app\"\n\
             header_timeout = \"300ms\"\nmax_header_size = \"8KiB\"\n\
             [upstream.app]\nbackends = [{{ address = \"{}\", name = \"b\" }}]\n",
            b.addr
        ),
    );
    let p = Process::start(&t.path);
    let addr = p.listening_addr();
    common::http::unreadable_heads(addr).await;
    let (status, _, _) = common::http::get(addr, "/after").await;
    assert_eq!(status, 200);
    // One access line per answer. Each connection's line is written by its own task:
    // on a busy machine they may come out of order.
    let mut statuses = Vec::new();
    while statuses.len() < 4 {
        let line = p.wait_for_field("target", "fulcrum::access");
        statuses.push(line["status"].as_u64().unwrap());
        if line["path"] != "/after" {
            assert_eq!(line["upstream"], "-", "{line}");
            assert_eq!(line["method"], "-", "{line}");
        }
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 400, 408, 431]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_are_logged_with_the_upstream_protocol_and_grpc_status() {
    let b = common::h2::H2Backend::start("g").await;
    let dead = refusing_addr().await;
    let t = TempConfig::new(
        "grpc-log",
        &format!(
            "[global]\nlog_format = \"json\"\n\
             [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n\
             [[listener.route]]\npath_prefix = \"/dead\"\nupstream = \"dead\"\n\
             [[listener.route]]\nupstream = \"grpc\"\n\
             [upstream.grpc]\nprotocol = \"h2c\"\nbackends = [{{ address = \"{}\" }}]\n\
             [upstream.dead]\nprotocol = \"h2c\"\nbackends = [{{ address = \"{dead}\" }}]\n",
            b.addr
        ),
    );
    let p = Process::start(&t.path);
    let addr = p.listening_addr();
    let client = common::http::h2c_client();
    for path in ["/echo.Echo/Unary", "/dead.Svc/Call"] {
        let req = ::http::Request::post(format!("http://{addr}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(common::http::body(common::h2::message(b"x")))
            .unwrap();
        let (status, _, _) = common::http::send(&client, req).await;
        assert_eq!(status, 200);
    }
    let line = p.wait_for_field("target", "fulcrum::access");
    assert_eq!(line["path"], "/echo.Echo/Unary");
    assert_eq!(line["protocol"], "h2");
    assert_eq!(line["upstream_protocol"], "h2");
    assert_eq!(line["grpc_status"], 0, "{line}");
    let line = p.wait_for_field("target", "fulcrum::access");
    assert_eq!(line["upstream"], "dead");
    assert_eq!(line["grpc_status"], 14, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_requests_are_logged_with_their_protocol() {
    let pki = common::tls::Pki::new("cli", "h3-log");
    pki.leaf("site", &["a.test"]);
    let b = common::http::HttpBackend::start("b").await;
    let path = pki.dir.join("fulcrum.toml");
    std::fs::write(
        &path,
        format!(
            "[global]\nlog_format = \"json\"\n\
             [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nupstream = \"app\"\n\
             [listener.tls]\ncertificates = [{{ cert = \"site.pem\", key = \"site.key\" }}]\nhttp3 = true\n\
             [upstream.app]\nbackends = [{{ address = \"{}\" }}]\n",
            b.addr
        ),
    )
    .unwrap();
    let p = Process::start(&path);
    let addr = p.listening_addr();
    p.wait_for("listening (HTTP/3, UDP)");
    let mut c = common::h3::H3::connect(addr, "a.test", pki.ca.der()).await;
    assert_eq!(c.get("a.test", "/three").await.0, 200);
    let line = p.wait_for_field("target", "fulcrum::access");
    assert_eq!(line["path"], "/three");
    assert_eq!(line["protocol"], "h3", "{line}");
    assert_eq!(line["status"], 200);
}

/// The major version of the machine's systemd, when it has one.
fn systemd_version() -> Option<u32> {
    let out = Command::new("systemctl").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn the_systemd_units_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: no systemd-analyze");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("systemd/fulcrum.service"))
        .unwrap()
        .replace("/usr/local/bin/fulcrum", env!("CARGO_BIN_EXE_fulcrum"));
    let dir = std::env::temp_dir().join(format!("fulcrum-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let verify = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        output(Command::new("systemd-analyze").arg("verify").arg(&path))
    };
    let (code, out, err) = verify("fulcrum.service", &unit);
    assert_eq!((code, out.as_str(), err.as_str()), (0, "", ""));
    // The drop-in for systemd >= 253, applied to the unit.
    let drop_in = std::fs::read_to_string(root.join("systemd/notify-reload.conf")).unwrap();
    assert!(drop_in.contains("Type=notify-reload"));
    let reloading = unit
        .replace("Type=notify\n", "Type=notify-reload\n")
        .lines()
        .filter(|l| !l.starts_with("ExecReload="))
        .collect::<Vec<_>>()
        .join("\n");
    let (code, _, err) = verify("fulcrum-reload.service", &reloading);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(code, 0);
    match systemd_version() {
        Some(v) if v >= 253 => assert_eq!(err, "", "systemd {v}"),
        v => eprintln!("skipped: systemd {v:?} predates Type=notify-reload (253): {err}"),
    }
}
