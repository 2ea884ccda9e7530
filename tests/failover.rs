//! Failover end to end: two real fulcrum processes, each in a network namespace of its
//! own, on a bridge in another namespace; a backend (fulcrum serving a static file)
//! and a client in two more. Heartbeats go over a link of their own between the two
//! balancers, so that the test can cut them without cutting the clients off.
//!
//! ```text
//!   lb1 (10.99.0.11) ──┐                ┌── backend (10.99.0.20)
//!        │ hb 10.98.0.1 ├── br0 (bridge) ┤
//!        │ hb 10.98.0.2 │                └── client (10.99.0.30)
//!   lb2 (10.99.0.12) ──┘        VIP 10.99.0.100/24
//!                               VIP6 fd99::100/64 (every node fd99::N/64 too)
//! ```
//!
//! Needs root (namespaces, veth, bridge): otherwise the test says it is skipped.
//! Every wait is for an event, with a generous bound; nothing is timed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fulcrum::failover::wire::{self, Heartbeat, State};

/// Bound for every wait: far above what any step takes.
const PATIENCE: Duration = Duration::from_secs(20);
const VIP: &str = "10.99.0.100";
const VIP6: &str = "fd99::100";

/// Runs `ip` with `args`; the error names the command and says what `ip` said.
fn try_ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `ip` with `args`; panics when it fails.
fn ip(args: &[&str]) {
    if let Err(e) = try_ip(args) {
        panic!("{e}");
    }
}

/// The namespaces, the links and the processes of one test run, all removed when
/// dropped, also when the test fails.
struct Lab {
    prefix: String,
    dir: PathBuf,
    children: Vec<(String, Child)>,
}

impl Lab {
    fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Builds the topology, or says why it cannot (what was made is removed on drop).
    fn new() -> Result<Lab, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: network namespaces need CAP_SYS_ADMIN".into());
        }
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let prefix = format!(
            "fo{}x{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::SeqCst)
        );
        let probe = format!("{prefix}probe");
        let made = Command::new("ip")
            .args(["netns", "add", &probe])
            .output()
            .map_err(|e| format!("no ip command: {e}"))?;
        if !made.status.success() {
            return Err(format!(
                "ip netns add failed: {}",
                String::from_utf8_lossy(&made.stderr).trim()
            ));
        }
        let _ = Command::new("ip").args(["netns", "del", &probe]).status();
        let dir = std::env::temp_dir().join(format!("fulcrum-failover-{prefix}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let lab = Lab {
            prefix,
            dir,
            children: Vec::new(),
        };
        let br = lab.ns("br");
        for n in ["br", "lb1", "lb2", "be", "cl"] {
            try_ip(&["netns", "add", &lab.ns(n)])?;
            try_ip(&["-n", &lab.ns(n), "link", "set", "lo", "up"])?;
        }
        try_ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        try_ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for (n, addr, addr6) in [
            ("lb1", "10.99.0.11/24", "fd99::11/64"),
            ("lb2", "10.99.0.12/24", "fd99::12/64"),
            ("be", "10.99.0.20/24", "fd99::20/64"),
            ("cl", "10.99.0.30/24", "fd99::30/64"),
        ] {
            let ns = lab.ns(n);
            let port = format!("v{n}");
            try_ip(&[
                "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            try_ip(&["-n", &br, "link", "set", &port, "master", "br0"])?;
            try_ip(&["-n", &br, "link", "set", &port, "up"])?;
            try_ip(&["-n", &ns, "addr", "add", addr, "dev", "eth0"])?;
            try_ip(&[
                "-n", &ns, "-6", "addr", "add", addr6, "dev", "eth0", "nodad",
            ])?;
            try_ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        // The heartbeat link: a veth pair straight between the balancers.
        let (lb1, lb2) = (lab.ns("lb1"), lab.ns("lb2"));
        try_ip(&[
            "-n", &lb1, "link", "add", "hb0", "type", "veth", "peer", "name", "hb0", "netns", &lb2,
        ])?;
        try_ip(&["-n", &lb1, "addr", "add", "10.98.0.1/30", "dev", "hb0"])?;
        try_ip(&["-n", &lb2, "addr", "add", "10.98.0.2/30", "dev", "hb0"])?;
        try_ip(&["-n", &lb1, "link", "set", "hb0", "up"])?;
        try_ip(&["-n", &lb2, "link", "set", "hb0", "up"])?;
        Ok(lab)
    }

    /// Starts `fulcrum run` with `config` in namespace `n`; its log goes to a file.
    fn start(&mut self, n: &str, config: &str) {
        let dir = self.dir.join(n);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("failover.key"),
            "a test pair key of at least 32 bytes\n",
        )
        .unwrap();
        std::fs::set_permissions(
            dir.join("failover.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        std::fs::write(dir.join("index.html"), "served through the VIP\n").unwrap();
        let path = dir.join("fulcrum.toml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("log"))
            .unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(n),
                env!("CARGO_BIN_EXE_fulcrum"),
                "run",
                "-c",
            ])
            .arg(&path)
            .env("RUST_LOG", "info,fulcrum::failover=debug")
            .env_remove("FULCRUM_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start fulcrum");
        self.children.push((n.to_string(), child));
    }

    /// SIGKILL to the fulcrum of namespace `n` (`ip netns exec` execs it: same PID).
    fn kill(&mut self, n: &str) {
        if let Some(i) = self.children.iter().position(|(name, _)| name == n) {
            let (_, mut child) = self.children.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Rewrites the config of namespace `n`'s fulcrum and sends it SIGHUP.
    fn reload(&self, n: &str, config: &str) {
        std::fs::write(self.dir.join(n).join("fulcrum.toml"), config).unwrap();
        let (_, child) = self.children.iter().find(|(name, _)| name == n).unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        // SAFETY: kill(2) on the PID of a child this test started and has not reaped.
        unsafe { libc::kill(pid, libc::SIGHUP) };
    }

    /// SIGTERM, and waits for the exit.
    fn terminate(&mut self, n: &str) -> Option<std::process::ExitStatus> {
        let i = self.children.iter().position(|(name, _)| name == n)?;
        let (_, mut child) = self.children.remove(i);
        let pid = i32::try_from(child.id()).ok()?;
        // SAFETY: kill(2) on the PID of a child this test started and has not reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    fn log(&self, n: &str) -> String {
        std::fs::read_to_string(self.dir.join(n).join("log")).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let names: Vec<String> = self.children.iter().map(|(n, _)| n.clone()).collect();
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for n in names
                .iter()
                .chain(["lb1".to_string(), "lb2".to_string()].iter())
            {
                eprintln!("---- log of {n} ----\n{}", self.log(n));
            }
        }
        for n in ["br", "lb1", "lb2", "be", "cl"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(n)])
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Says, past the test harness's capture of `println!`, why a test did not run.
fn skipped(why: &str) {
    let _ = writeln!(std::io::stderr(), "skipped: {why}");
}

/// Runs `f` on a thread that has entered the network namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        enter(&path);
        f()
    })
    .join()
    .expect("namespace thread")
}

fn enter(path: &str) {
    let file = std::fs::File::open(path).expect("open the namespace");
    // SAFETY: setns(2) with a valid descriptor; it changes only the calling thread,
    // which is one this test made for that namespace.
    let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
}

/// A plain HTTP/1.1 GET; the status and body, or `None` on any failure.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

fn admin(lab: &Lab, n: &str, path: &'static str) -> Option<String> {
    in_ns(&lab.ns(n), move || {
        get("127.0.0.1:9090".parse().unwrap(), path)
    })
    .filter(|(s, _)| *s == 200)
    .map(|(_, b)| b)
}

/// The failover state a node reports, or "down" when it does not answer.
fn state(lab: &Lab, n: &str) -> String {
    admin(lab, n, "/status")
        .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| v["failover"]["state"].as_str().map(str::to_string))
        .unwrap_or_else(|| "down".into())
}

fn wait_for(what: &str, lab: &Lab, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "waited {PATIENCE:?} for {what}; lb1: {}, lb2: {}",
        state(lab, "lb1"),
        state(lab, "lb2")
    );
}

/// A client in its namespace asking the VIP for the page in a steady loop.
struct Clients {
    ok: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

impl Clients {
    fn start(ns: &str) -> Clients {
        let ok = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let path = format!("/var/run/netns/{ns}");
        let (ok2, stop2) = (ok.clone(), stop.clone());
        let task = std::thread::spawn(move || {
            enter(&path);
            let vip: SocketAddr = format!("{VIP}:8080").parse().unwrap();
            while !stop2.load(Ordering::SeqCst) {
                if let Some((200, body)) = get(vip, "/") {
                    if body.contains("served through the VIP") {
                        ok2.fetch_add(1, Ordering::SeqCst);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Clients {
            ok,
            stop,
            task: Some(task),
        }
    }

    /// Waits until the clients are served again: a few more successes than now.
    fn wait_served(&self, what: &str, lab: &Lab) {
        let base = self.ok.load(Ordering::SeqCst);
        wait_for(what, lab, || self.ok.load(Ordering::SeqCst) >= base + 5);
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.task.take() {
            let _ = t.join();
        }
    }
}

fn backend_config() -> String {
    r#"
[global]
watch_config = false
access_log = false

[[listener]]
name = "web"
bind = "10.99.0.20:8080"
protocol = "http"

  [[listener.route]]
  static = "."
"#
    .to_string()
}

fn lb_config(node: &str, priority: u8, hb: &str, peer: &str) -> String {
    format!(
        r#"
[global]
watch_config = false
access_log = false
shutdown_timeout = "1s"

[admin]
bind = "127.0.0.1:9090"

[[listener]]
name = "vip"
bind = ["{VIP}:8080", "[{VIP6}]:8080"]
protocol = "http"
upstream = "app"

[upstream.app]
connect_timeout = "1s"
backends = [{{ address = "10.99.0.20:8080" }}]

[failover]
node = "{node}"
priority = {priority}
bind = "{hb}:8411"
peers = ["{peer}:8411"]
interval = "100ms"
# Long enough that the exit watch, not silence, sees a killed peer even on a loaded
# machine (the test counts the exit).
dead_after = "1s"
secret_file = "failover.key"
vips = [
  {{ address = "{VIP}/24", interface = "eth0" }},
  {{ address = "{VIP6}/64", interface = "eth0" }},
]
"#
    )
}

/// What `ip` prints for `args`, run in namespace `n`.
fn ip_out(lab: &Lab, n: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["-n", &lab.ns(n)])
        .args(args)
        .output()
        .expect("ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The hardware address of `eth0` in namespace `n`.
fn mac(lab: &Lab, n: &str) -> String {
    let out = ip_out(lab, n, &["link", "show", "eth0"]);
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .expect("eth0 has a hardware address")
        .to_string()
}

/// The hardware address the client's neighbour cache holds for the IPv6 VIP.
fn client_neighbour6(lab: &Lab) -> Option<String> {
    let out = ip_out(lab, "cl", &["-6", "neigh", "show", VIP6, "dev", "eth0"]);
    out.split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .map(str::to_string)
}

/// One GET through the IPv6 VIP from the client's namespace.
fn served6(lab: &Lab) -> bool {
    in_ns(&lab.ns("cl"), || {
        get(format!("[{VIP6}]:8080").parse().unwrap(), "/")
    })
    .is_some_and(|(s, b)| s == 200 && b.contains("served through the VIP"))
}

fn metric(lab: &Lab, n: &str, series: &str) -> Option<f64> {
    let text = admin(lab, n, "/metrics")?;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn a_pair_fails_over_takes_back_ignores_forgeries_and_heals_a_partition() {
    let mut lab = match Lab::new() {
        Ok(l) => l,
        Err(why) => return skipped(&why),
    };
    lab.start("be", &backend_config());
    lab.start("lb1", &lb_config("lb1", 150, "10.98.0.1", "10.98.0.2"));
    lab.start("lb2", &lb_config("lb2", 100, "10.98.0.2", "10.98.0.1"));

    // One becomes active (the higher priority), the other stays a hot standby.
    wait_for("lb1 active and lb2 passive", &lab, || {
        state(&lab, "lb1") == "active" && state(&lab, "lb2") == "passive"
    });
    let clients = Clients::start(&lab.ns("cl"));
    clients.wait_served("the VIP to serve through lb1", &lab);
    let status: serde_json::Value =
        serde_json::from_str(&admin(&lab, "lb2", "/status").unwrap()).unwrap();
    assert_eq!(status["failover"]["enabled"], true);
    assert_eq!(status["failover"]["node"], "lb2");
    assert!(status["failover"]["peer_last_seen_ms"].is_u64(), "{status}");
    assert_eq!(metric(&lab, "lb1", "fulcrum_failover_active"), Some(1.0));
    assert_eq!(metric(&lab, "lb2", "fulcrum_failover_active"), Some(0.0));
    // The IPv6 VIP serves at once (no duplicate address detection to wait for), and
    // the client's neighbour cache points at lb1.
    wait_for("the IPv6 VIP to serve through lb1", &lab, || served6(&lab));
    let (mac1, mac2) = (mac(&lab, "lb1"), mac(&lab, "lb2"));
    assert_eq!(client_neighbour6(&lab).as_deref(), Some(mac1.as_str()));

    // The active dies without a word: the passive takes over. Its unsolicited
    // neighbour advertisement moves the client's entry (which would otherwise stay on
    // lb1's address for half a minute or more) without any traffic from the client.
    lab.kill("lb1");
    wait_for("lb2 to take over", &lab, || state(&lab, "lb2") == "active");
    wait_for(
        "the client's IPv6 neighbour entry to name lb2",
        &lab,
        || client_neighbour6(&lab).as_deref() == Some(mac2.as_str()),
    );
    clients.wait_served("the VIP to serve through lb2", &lab);
    assert!(served6(&lab), "the IPv6 VIP serves through lb2");
    assert_eq!(
        metric(
            &lab,
            "lb2",
            "fulcrum_failover_announce_failures_total{family=\"ipv6\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &lab,
            "lb2",
            "fulcrum_failover_transitions_total{to=\"active\"}"
        ),
        Some(1.0)
    );
    // lb1's process ended without a resign: the exit watch saw it.
    assert_eq!(
        metric(&lab, "lb2", "fulcrum_failover_peer_exits_total"),
        Some(1.0)
    );

    // It comes back with a higher priority and preempt: it takes the role back.
    lab.start("lb1", &lb_config("lb1", 200, "10.98.0.1", "10.98.0.2"));
    wait_for("lb1 to take the role back", &lab, || {
        state(&lab, "lb1") == "active" && state(&lab, "lb2") == "passive"
    });
    clients.wait_served("the VIP to serve through lb1 again", &lab);

    // A heartbeat signed with the wrong key, from the peer's own address, claiming the
    // highest priority: dropped and counted, and nothing changes.
    let forged = wire::encode(
        &Heartbeat {
            node: "lb2".into(),
            priority: 254,
            state: State::Active,
            sequence: u64::MAX - 1,
            sent_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64,
        },
        b"not the pair's key",
    );
    in_ns(&lab.ns("lb2"), move || {
        let s = std::net::UdpSocket::bind("10.98.0.2:0").unwrap();
        for _ in 0..3 {
            s.send_to(&forged, "10.98.0.1:8411").unwrap();
        }
    });
    let rejected = "fulcrum_failover_heartbeats_rejected_total{reason=\"mac\"}";
    wait_for("the forged heartbeats to be counted", &lab, || {
        metric(&lab, "lb1", rejected) == Some(3.0)
    });
    assert_eq!(state(&lab, "lb1"), "active");
    assert_eq!(state(&lab, "lb2"), "passive");

    // Cut the heartbeat link: each hears nothing, so each holds the VIP (both active
    // is what a partition gives). Healed, the higher priority keeps it, alone.
    ip(&["-n", &lab.ns("lb1"), "link", "set", "hb0", "down"]);
    wait_for("both active during the partition", &lab, || {
        state(&lab, "lb1") == "active" && state(&lab, "lb2") == "active"
    });
    ip(&["-n", &lab.ns("lb1"), "link", "set", "hb0", "up"]);
    wait_for("exactly one active after the partition", &lab, || {
        state(&lab, "lb1") == "active" && state(&lab, "lb2") == "passive"
    });
    clients.wait_served("the VIP to serve after the partition", &lab);

    // A reload that changes what cannot change under a running pair (the node's name)
    // is refused whole, naming the key; nothing changes in the pair.
    lab.reload(
        "lb2",
        &lb_config("lb2", 250, "10.98.0.2", "10.98.0.1")
            .replace("node = \"lb2\"", "node = \"lb9\""),
    );
    wait_for("lb2 to refuse the reload", &lab, || {
        lab.log("lb2")
            .contains("failover.node cannot change at reload")
    });
    assert_eq!(
        metric(
            &lab,
            "lb2",
            "fulcrum_config_reloads_total{result=\"failure\"}"
        ),
        Some(1.0)
    );
    assert_eq!(state(&lab, "lb2"), "passive");
    assert_eq!(state(&lab, "lb1"), "active");

    // A reload that raises the passive's priority above the active's is applied: with
    // preempt, it takes the role.
    lab.reload("lb2", &lb_config("lb2", 250, "10.98.0.2", "10.98.0.1"));
    wait_for("lb2 to take the role with its new priority", &lab, || {
        state(&lab, "lb2") == "active" && state(&lab, "lb1") == "passive"
    });
    assert!(lab.log("lb2").contains("settings changed at reload"));
    clients.wait_served("the VIP to serve through lb2 after the reload", &lab);

    // A graceful stop of the active resigns: the passive takes over, and the stopped
    // node exits 0.
    let exit = lab.terminate("lb2");
    assert!(exit.is_some_and(|s| s.success()), "lb2 exit: {exit:?}");
    assert!(lab.log("lb2").contains("resigning"), "{}", lab.log("lb2"));
    wait_for("lb1 to take over after the resign", &lab, || {
        state(&lab, "lb1") == "active"
    });
    clients.wait_served("the VIP to serve through lb1 after the resign", &lab);
    drop(clients);
}

#[test]
fn a_vip_that_cannot_be_added_is_a_fault_never_active() {
    let mut lab = match Lab::new() {
        Ok(l) => l,
        Err(why) => return skipped(&why),
    };
    let config = lb_config("lb1", 150, "10.98.0.1", "10.98.0.2")
        .replace("interface = \"eth0\"", "interface = \"nosuch0\"");
    lab.start("lb1", &config);
    wait_for("lb1 to report a fault", &lab, || {
        state(&lab, "lb1") == "fault"
    });
    assert_eq!(metric(&lab, "lb1", "fulcrum_failover_active"), Some(0.0));
    // It never said it was active, not even while it tried to add the address.
    assert_eq!(
        metric(
            &lab,
            "lb1",
            "fulcrum_failover_transitions_total{to=\"active\"}"
        ),
        Some(0.0)
    );
    assert!(lab.log("lb1").contains("nosuch0"), "{}", lab.log("lb1"));

    // The interface appears: a retry (after a back-off) adds the addresses, and the
    // node leaves fault for good.
    let lb1 = lab.ns("lb1");
    ip(&[
        "-n", &lb1, "link", "add", "nosuch0", "type", "veth", "peer", "name", "nosuch1",
    ]);
    ip(&["-n", &lb1, "link", "set", "nosuch1", "up"]);
    ip(&["-n", &lb1, "link", "set", "nosuch0", "up"]);
    wait_for("lb1 to leave fault and take the addresses", &lab, || {
        state(&lab, "lb1") == "active"
    });
    let held = ip_out(&lab, "lb1", &["addr", "show", "nosuch0"]);
    assert!(held.contains(VIP) && held.contains(VIP6), "{held}");
    assert!(
        lab.log("lb1").contains("leaving fault"),
        "{}",
        lab.log("lb1")
    );
}
