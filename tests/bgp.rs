//! Active-active over BGP end to end: three real fulcrum processes, each in a network
//! namespace of its own with a backend beside it, peering with a router namespace
//! that runs BIRD 2 (and once GoBGP); a client namespace behind the router.
//!
//! ```text
//!   b1 (10.0.1.2) ──┐
//!   b2 (10.0.2.2) ──┼── r (BIRD, AS 65000, ECMP) ── cl (10.9.0.2)
//!   b3 (10.0.3.2) ──┘        service address 198.51.100.10 on each b's loopback
//! ```
//!
//! Needs root and BIRD (`bird2`) or GoBGP (`gobgpd`): otherwise the test says it is
//! skipped. Every wait is for an event, with a generous bound; nothing is timed.
//!
//! And, on loopback with no root needed, a peer written here that checks the bytes of
//! what fulcrum sends and answers with what a broken or misconfigured router would.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::netns::{enter, get, in_ns, request, skipped, Lab, PATIENCE};
use common::Fulcrum;
use fulcrum::bgp::wire::{self, Family, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SERVICE: &str = "198.51.100.10";
const SERVICE6: &str = "2001:db8::10";
const NODES: [&str; 5] = ["r", "cl", "b1", "b2", "b3"];
const BALANCERS: [usize; 3] = [1, 2, 3];

fn installed(program: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|d| std::path::Path::new(d).join(program).exists())
}

/// The router, the client and three balancers, linked and addressed; the service
/// address on each balancer's loopback.
fn lab() -> Result<Lab, String> {
    let lab = Lab::new("bg", &NODES)?;
    for i in BALANCERS {
        let b = format!("b{i}");
        lab.link(
            ("r", &format!("r{i}"), &format!("10.0.{i}.1/24")),
            (&b, "eth0", &format!("10.0.{i}.2/24")),
        )?;
        let (r6, b6) = (format!("fd00:{i}::1/64"), format!("fd00:{i}::2/64"));
        lab.ip(
            "r",
            &["-6", "addr", "add", &r6, "dev", &format!("r{i}"), "nodad"],
        )?;
        lab.ip(&b, &["-6", "addr", "add", &b6, "dev", "eth0", "nodad"])?;
        lab.ip(&b, &["addr", "add", &format!("{SERVICE}/32"), "dev", "lo"])?;
        lab.ip(
            &b,
            &["route", "add", "default", "via", &format!("10.0.{i}.1")],
        )?;
    }
    lab.link(("r", "rc", "10.9.0.1/24"), ("cl", "eth0", "10.9.0.2/24"))?;
    lab.ip("cl", &["route", "add", "default", "via", "10.9.0.1"])?;
    for (key, value) in [
        ("net.ipv4.ip_forward", "1"),
        // Spread flows by ports too, so that one client reaches every balancer.
        ("net.ipv4.fib_multipath_hash_policy", "1"),
    ] {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.ns("r"), "sysctl", "-qw"])
            .arg(format!("{key}={value}"))
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "sysctl {key}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(lab)
}

fn bird_config() -> String {
    let mut c = String::from(
        r#"
log stderr all;
router id 10.9.0.1;
protocol device { scan time 1; }
protocol kernel {
  ipv4 { export all; import none; };
  merge paths on;
}
template bgp balancer {
  local as 65000;
  passive on;
  hold time 3;
  ipv4 { import all; export none; };
}
"#,
    );
    for i in BALANCERS {
        c.push_str(&format!(
            "protocol bgp b{i} from balancer {{ neighbor 10.0.{i}.2 as 65011; }}\n"
        ));
    }
    c
}

fn gobgp_config() -> String {
    let mut c = String::from(
        r#"
[global.config]
  as = 65000
  router-id = "10.9.0.1"
  port = 179
"#,
    );
    for i in BALANCERS {
        c.push_str(&format!(
            r#"
[[neighbors]]
  [neighbors.config]
    neighbor-address = "10.0.{i}.2"
    peer-as = 65011
  [neighbors.timers.config]
    hold-time = 3
    keepalive-interval = 1
  [neighbors.transport.config]
    passive-mode = true
"#
        ));
    }
    // b1 also announces the IPv6 service address over an IPv6 session (MP-BGP).
    c.push_str(
        r#"
[[neighbors]]
  [neighbors.config]
    neighbor-address = "fd00:1::2"
    peer-as = 65011
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-unicast"
  [neighbors.transport.config]
    passive-mode = true
"#,
    );
    c
}

fn backend_config(i: usize) -> String {
    format!(
        r#"
[global]
watch_config = false
access_log = false

[[listener]]
name = "origin"
bind = "127.0.0.1:8081"
protocol = "http"

  [[listener.route]]
  static = "site{i}"
"#
    )
}

/// Balancer `i`'s file; with `v6`, also an IPv6 session announcing `SERVICE6`.
fn balancer_config(i: usize, v6: bool) -> String {
    let extra = if v6 {
        format!(
            r#"
  [[bgp.peer]]
  address = "fd00:{i}::1"
  remote_as = 65000

  [[bgp.announce]]
  prefix = "{SERVICE6}/128"
  upstreams = ["web"]
"#
        )
    } else {
        String::new()
    };
    let base = format!(
        r#"
[global]
watch_config = false
access_log = false
shutdown_timeout = "2s"

[admin]
bind = "127.0.0.1:9090"

[[listener]]
name = "service"
bind = "{SERVICE}:8080"
protocol = "http"
upstream = "web"

[upstream.web]
connect_timeout = "1s"
backends = [{{ address = "127.0.0.1:8081" }}]

  [upstream.web.health]
  check = "http"
  path = "/"
  interval = "200ms"
  timeout = "500ms"
  rise = 1
  fall = 1

[bgp]
router_id = "10.0.{i}.2"
local_as = 65011
hold_time = "3s"
withdraw_grace = "1s"

  [[bgp.peer]]
  address = "10.0.{i}.1"
  remote_as = 65000

  [[bgp.announce]]
  prefix = "{SERVICE}/32"
  upstreams = ["web"]
"#
    );
    base + &extra
}

fn start_backend(lab: &mut Lab, i: usize) {
    let x = format!("b{i}");
    lab.write(
        &x,
        &format!("site{i}/index.html"),
        &format!("served by b{i}\n"),
    );
    let path = lab.write(&x, "backend.toml", &backend_config(i));
    let path = path.to_string_lossy().into_owned();
    lab.spawn(
        &x,
        &format!("be{i}"),
        env!("CARGO_BIN_EXE_fulcrum"),
        &["run", "-c", &path],
        &[("RUST_LOG", "warn")],
    );
}

fn start_balancer(lab: &mut Lab, i: usize, v6: bool) {
    lab.start(&format!("b{i}"), &balancer_config(i, v6), "info");
}

/// The gateways the router's kernel table holds for the service address.
fn kernel_paths(lab: &Lab) -> BTreeSet<String> {
    let out = lab.ip_out("r", &["route", "show", &format!("{SERVICE}/32")]);
    let words: Vec<&str> = out.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "via")
        .map(|w| w[1].to_string())
        .collect()
}

fn via(list: &[usize]) -> BTreeSet<String> {
    list.iter().map(|i| format!("10.0.{i}.2")).collect()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("waited {PATIENCE:?} for {what}");
}

fn admin(lab: &Lab, i: usize, method: &'static str, path: &'static str) -> Option<String> {
    in_ns(&lab.ns(&format!("b{i}")), move || {
        request("127.0.0.1:9090".parse().unwrap(), method, path)
    })
    .filter(|(s, _)| *s == 200)
    .map(|(_, b)| b)
}

fn metric(lab: &Lab, i: usize, series: &str) -> Option<f64> {
    let text = admin(lab, i, "GET", "/metrics")?;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

fn status(lab: &Lab, i: usize) -> serde_json::Value {
    admin(lab, i, "GET", "/status")
        .and_then(|b| serde_json::from_str(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// A client in its namespace asking the service address in a steady loop, one new
/// connection per request, counting answers, failures and who served.
struct Clients {
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    served_by: Arc<Mutex<BTreeSet<String>>>,
    stop: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

impl Clients {
    fn start(ns: &str) -> Clients {
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let served_by = Arc::new(Mutex::new(BTreeSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let path = format!("/var/run/netns/{ns}");
        let (ok2, failed2, by2, stop2) =
            (ok.clone(), failed.clone(), served_by.clone(), stop.clone());
        let task = std::thread::spawn(move || {
            enter(&path);
            let addr: SocketAddr = format!("{SERVICE}:8080").parse().unwrap();
            while !stop2.load(Ordering::SeqCst) {
                match get(addr, "/") {
                    Some((200, body)) if body.starts_with("served by ") => {
                        ok2.fetch_add(1, Ordering::SeqCst);
                        by2.lock().unwrap().insert(body.trim().to_string());
                    }
                    _ => {
                        failed2.fetch_add(1, Ordering::SeqCst);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Clients {
            ok,
            failed,
            served_by,
            stop,
            task: Some(task),
        }
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }

    fn failed(&self) -> usize {
        self.failed.load(Ordering::SeqCst)
    }

    /// Waits for `n` more answers than now.
    fn wait_served(&self, what: &str, n: usize) {
        let base = self.ok();
        wait_for(what, || self.ok() >= base + n);
    }

    /// Forgets who served so far.
    fn reset_served(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.served_by.lock().unwrap())
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

fn served(list: &[usize]) -> BTreeSet<String> {
    list.iter().map(|i| format!("served by b{i}")).collect()
}

#[test]
fn three_balancers_share_the_address_through_bird_ecmp() {
    if !installed("bird") {
        return skipped("BIRD is not installed (Debian package bird2)");
    }
    let mut lab = match lab() {
        Ok(l) => l,
        Err(why) => return skipped(&why),
    };
    let conf = lab.write("r", "bird.conf", &bird_config());
    let conf = conf.to_string_lossy().into_owned();
    let ctl = lab.dir("r").join("bird.ctl").to_string_lossy().into_owned();
    lab.spawn("r", "bird", "bird", &["-f", "-c", &conf, "-s", &ctl], &[]);
    for i in BALANCERS {
        if i != 3 {
            start_backend(&mut lab, i);
        }
        start_balancer(&mut lab, i, false);
    }
    // b3's backend is not there: its session comes up, but it announces nothing.
    wait_for("paths via b1 and b2, b3's session up", || {
        kernel_paths(&lab) == via(&[1, 2])
            && status(&lab, 3)["bgp"]["peers"][0]["state"] == "established"
    });
    assert_eq!(status(&lab, 3)["bgp"]["announce"][0]["announced"], false);
    assert_eq!(kernel_paths(&lab), via(&[1, 2]));
    start_backend(&mut lab, 3);

    // Every healthy balancer is a path of one multipath route.
    wait_for("a path via every balancer", || {
        kernel_paths(&lab) == via(&[1, 2, 3])
    });
    let s = status(&lab, 1);
    assert_eq!(s["bgp"]["peers"][0]["state"], "established", "{s}");
    assert_eq!(
        s["bgp"]["peers"][0]["announced"][0],
        format!("{SERVICE}/32")
    );
    assert_eq!(s["bgp"]["announce"][0]["announced"], true);
    assert_eq!(
        metric(&lab, 1, "fulcrum_bgp_session_up{peer=\"10.0.1.1\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &lab,
            1,
            &format!("fulcrum_bgp_announced{{prefix=\"{SERVICE}/32\"}}")
        ),
        Some(1.0)
    );

    // Clients behind the router are served by all of them.
    let clients = Clients::start(&lab.ns("cl"));
    wait_for("answers from every balancer", || {
        *clients.served_by.lock().unwrap() == served(&[1, 2, 3])
    });
    assert_eq!(clients.failed(), 0);

    // b1's backend goes down: b1 withdraws by an UPDATE, its session stays up.
    lab.kill("be1");
    wait_for("b1's path withdrawn", || kernel_paths(&lab) == via(&[2, 3]));
    let withdraws = "fulcrum_bgp_updates_sent_total{kind=\"withdraw\",peer=\"10.0.1.1\"}";
    assert_eq!(metric(&lab, 1, withdraws), Some(1.0));
    assert_eq!(status(&lab, 1)["bgp"]["peers"][0]["state"], "established");
    assert_eq!(status(&lab, 1)["bgp"]["announce"][0]["announced"], false);
    let failed = clients.failed();
    clients.reset_served();
    clients.wait_served("answers after the withdrawal", 40);
    assert_eq!(
        clients.failed(),
        failed,
        "requests failed after the withdrawal"
    );
    assert!(!clients.reset_served().contains("served by b1"));

    // The backend comes back: so does the path.
    start_backend(&mut lab, 1);
    wait_for("b1's path back", || kernel_paths(&lab) == via(&[1, 2, 3]));

    // Maintenance on b2: withdrawn, then announced again. b2 keeps serving, so no
    // request fails but one the router itself moves: Linux hashes flows over the next
    // hops without state, and a change of the next hops moves some flows in flight
    // (at most one here: the client sends one request at a time). Once the router's
    // table settled, nothing fails.
    let failed = clients.failed();
    assert!(admin(&lab, 2, "POST", "/bgp/withdraw").is_some());
    wait_for("b2's path withdrawn", || kernel_paths(&lab) == via(&[1, 3]));
    assert!(
        clients.failed() <= failed + 1,
        "requests failed at the withdrawal"
    );
    let settled = clients.failed();
    clients.reset_served();
    clients.wait_served("answers while b2 is out", 40);
    assert_eq!(
        clients.failed(),
        settled,
        "a request failed during maintenance"
    );
    assert!(!clients.reset_served().contains("served by b2"));
    assert_eq!(status(&lab, 2)["bgp"]["maintenance"], true);
    assert!(admin(&lab, 2, "POST", "/bgp/announce").is_some());
    wait_for("b2's path back", || kernel_paths(&lab) == via(&[1, 2, 3]));

    // SIGTERM on b3: it withdraws first and serves through its grace; at most the
    // request in flight on it fails (the client sends one at a time).
    let failed = clients.failed();
    lab.signal_term("b3");
    wait_for("b3's path withdrawn", || kernel_paths(&lab) == via(&[1, 2]));
    let exit = lab.wait_exit("b3");
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}");
    clients.wait_served("answers after b3 left", 40);
    assert!(
        clients.failed() <= failed + 1,
        "{} requests failed while b3 stopped",
        clients.failed() - failed
    );
    let log = lab.log("b3");
    assert!(log.contains("bgp: routes withdrawn"), "{log}");
    assert!(log.contains("withdraw grace"), "{log}");

    // b1 hangs (SIGSTOP: its kernel still holds the connection, nothing more is
    // sent): the router drops the path when its hold time runs out.
    lab.signal("b1", libc::SIGSTOP);
    wait_for("b1's path gone after the hold time", || {
        kernel_paths(&lab) == via(&[2])
    });
    let log = lab.log("r");
    assert!(log.contains("Hold timer expired"), "{log}");
    lab.kill("b1");
    clients.wait_served("answers from b2 alone", 20);

    // kill -9 on b2: its kernel closes the session, the router drops the path at once.
    lab.kill("b2");
    wait_for("b2's path gone", || kernel_paths(&lab).is_empty());
    drop(clients);
}

/// The text `gobgp` prints for the router's RIB of `family` (`ipv4`, `ipv6`).
fn gobgp_rib(lab: &Lab, family: &str) -> String {
    let ns = lab.ns("r");
    let args = ["netns", "exec", &ns, "gobgp", "global", "rib", "-a", family];
    let out = std::process::Command::new("ip").args(args).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Whether GoBGP holds the IPv6 service address from b1 (next hop its IPv6 address).
fn gobgp_v6(lab: &Lab) -> bool {
    gobgp_rib(lab, "ipv6")
        .lines()
        .any(|l| l.contains(&format!("{SERVICE6}/128")) && l.contains("fd00:1::2"))
}

/// The next hops GoBGP holds for the service address.
fn gobgp_paths(lab: &Lab) -> BTreeSet<String> {
    gobgp_rib(lab, "ipv4")
        .lines()
        .filter(|l| l.contains(&format!("{SERVICE}/32")))
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("10.0.") && w.ends_with(".2"))
                .map(str::to_string)
        })
        .collect()
}

#[test]
fn gobgp_as_the_router_sees_announcements_and_withdrawals() {
    if !installed("gobgpd") || !installed("gobgp") {
        return skipped("GoBGP is not installed (Debian package gobgpd)");
    }
    let mut lab = match lab() {
        Ok(l) => l,
        Err(why) => return skipped(&why),
    };
    let conf = lab.write("r", "gobgpd.toml", &gobgp_config());
    let conf = conf.to_string_lossy().into_owned();
    lab.spawn("r", "gobgpd", "gobgpd", &["-f", &conf, "-t", "toml"], &[]);
    for i in BALANCERS {
        start_backend(&mut lab, i);
        start_balancer(&mut lab, i, i == 1);
    }
    wait_for("GoBGP holds a path from every balancer", || {
        gobgp_paths(&lab) == via(&[1, 2, 3])
    });
    assert_eq!(status(&lab, 2)["bgp"]["peers"][0]["state"], "established");
    // The IPv6 service address, over b1's IPv6 session, next hop its IPv6 address.
    wait_for("GoBGP holds b1's IPv6 route", || gobgp_v6(&lab));

    // Health: b1's backend down withdraws b1's paths, up announces them again.
    lab.kill("be1");
    wait_for("b1's path withdrawn", || gobgp_paths(&lab) == via(&[2, 3]));
    wait_for("b1's IPv6 route withdrawn", || !gobgp_v6(&lab));
    assert_eq!(status(&lab, 1)["bgp"]["peers"][0]["state"], "established");
    start_backend(&mut lab, 1);
    wait_for("b1's path back", || gobgp_paths(&lab) == via(&[1, 2, 3]));

    // Maintenance, then SIGTERM.
    assert!(admin(&lab, 2, "POST", "/bgp/withdraw").is_some());
    wait_for("b2's path withdrawn", || gobgp_paths(&lab) == via(&[1, 3]));
    assert!(admin(&lab, 2, "POST", "/bgp/announce").is_some());
    wait_for("b2's path back", || gobgp_paths(&lab) == via(&[1, 2, 3]));
    lab.signal_term("b3");
    wait_for("b3's path withdrawn", || gobgp_paths(&lab) == via(&[1, 2]));
    assert!(lab.wait_exit("b3").is_some_and(|s| s.success()));
}

/// A `[bgp]` section peering with a router on 127.0.0.1:`port`, announcing `prefix`
/// while upstream "app" has a backend.
fn loopback_bgp(port: u16, local_as: u32, hold: &str, prefix: &str) -> String {
    format!(
        r#"
[bgp]
router_id = "192.0.2.11"
local_as = {local_as}
hold_time = "{hold}"
withdraw_grace = "0s"

  [[bgp.peer]]
  address = "127.0.0.1"
  port = {port}
  remote_as = 65000

  [[bgp.announce]]
  prefix = "{prefix}"
  upstreams = ["app"]
"#
    )
}

/// Reads one whole BGP message.
async fn read_message(s: &mut TcpStream) -> Vec<u8> {
    let mut msg = vec![0u8; wire::HEADER_LEN];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut msg))
        .await
        .expect("a message in time")
        .expect("a message header");
    let len = usize::from(u16::from_be_bytes([msg[16], msg[17]]));
    msg.resize(len, 0);
    tokio::time::timeout(PATIENCE, s.read_exact(&mut msg[wire::HEADER_LEN..]))
        .await
        .expect("a message in time")
        .expect("a message body");
    msg
}

/// The NOTIFICATION's code and subcode.
fn notification(msg: &[u8]) -> (u8, u8) {
    match wire::decode(msg) {
        Ok(Message::Notification(n)) => (n.code, n.subcode),
        other => panic!("not a notification: {other:?}"),
    }
}

/// Accepts fulcrum's next connection and reads its OPEN.
async fn accept_open(listener: &TcpListener) -> (TcpStream, wire::Open) {
    let (mut s, _) = tokio::time::timeout(PATIENCE, listener.accept())
        .await
        .expect("fulcrum connects")
        .unwrap();
    let msg = read_message(&mut s).await;
    match wire::decode(&msg) {
        Ok(Message::Open(o)) => (s, o),
        other => panic!("not an OPEN: {other:?}"),
    }
}

/// Answers fulcrum's OPEN as a router of AS `asn` and takes the session to
/// Established.
async fn establish(s: &mut TcpStream, asn: u32) {
    s.write_all(&wire::open(asn, 90, [192, 0, 2, 1].into(), Family::V4))
        .await
        .unwrap();
    s.write_all(&wire::keepalive()).await.unwrap();
    assert_eq!(wire::decode(&read_message(s).await), Ok(Message::Keepalive));
}

/// The attributes and the NLRI of an UPDATE.
fn update_parts(msg: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    assert_eq!(msg[18], 2, "an UPDATE");
    let body = &msg[wire::HEADER_LEN..];
    let withdrawn = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let at = 2 + withdrawn;
    let attrs = usize::from(u16::from_be_bytes([body[at], body[at + 1]]));
    (
        body[2..at].to_vec(),
        body[at + 2..at + 2 + attrs].to_vec(),
        body[at + 2 + attrs..].to_vec(),
    )
}

#[tokio::test]
async fn a_router_gets_the_route_and_broken_input_its_notification() {
    let router = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = router.local_addr().unwrap().port();
    let config = format!(
        r#"
[[listener]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
upstream = "app"

[upstream.app]
backends = [{{ address = "127.0.0.1:9" }}]
{}"#,
        loopback_bgp(port, 4_200_000_001, "30s", &format!("{SERVICE}/32"))
    );
    let f = Fulcrum::start(&config).await;

    // OPEN: 4-octet AS in its capability, AS_TRANS in the 2-octet field.
    let (mut s, open) = accept_open(&router).await;
    assert_eq!(open.asn, 4_200_000_001);
    assert!(open.four_octet);
    assert_eq!(open.hold_time, 30);
    establish(&mut s, 65000).await;
    // The route: ORIGIN IGP, AS_PATH with the 4-octet AS, NEXT_HOP = its address on
    // the session, the host route as NLRI.
    let (withdrawn, attrs, nlri) = update_parts(&read_message(&mut s).await);
    assert!(withdrawn.is_empty());
    assert_eq!(nlri, [32, 198, 51, 100, 10]);
    let as_path = [0x40, 2, 6, 2, 1, 0xfa, 0x56, 0xea, 0x01];
    assert!(
        attrs.windows(as_path.len()).any(|w| w == as_path),
        "{attrs:?}"
    );
    let next_hop = [0x40, 3, 4, 127, 0, 0, 1];
    assert!(
        attrs.windows(next_hop.len()).any(|w| w == next_hop),
        "{attrs:?}"
    );

    // A message without the marker: "connection not synchronized", and the session
    // ends; fulcrum comes back after its back-off.
    let mut broken = wire::keepalive();
    broken[0] = 0;
    s.write_all(&broken).await.unwrap();
    assert_eq!(notification(&read_message(&mut s).await), (1, 1));
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, s.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?}");

    // A router of another AS: "bad peer AS".
    let (mut s, _) = accept_open(&router).await;
    s.write_all(&wire::open(65001, 90, [192, 0, 2, 1].into(), Family::V4))
        .await
        .unwrap();
    assert_eq!(notification(&read_message(&mut s).await), (2, 2));

    // An UPDATE before the session is up: an FSM error (RFC 6608, in OpenConfirm).
    let (mut s, _) = accept_open(&router).await;
    s.write_all(&wire::open(65000, 90, [192, 0, 2, 1].into(), Family::V4))
        .await
        .unwrap();
    assert_eq!(
        wire::decode(&read_message(&mut s).await),
        Ok(Message::Keepalive)
    );
    s.write_all(&wire::withdraw(&["203.0.113.1/32".parse().unwrap()], Family::V4)[0])
        .await
        .unwrap();
    assert_eq!(notification(&read_message(&mut s).await), (5, 2));

    // Shutdown: the route is withdrawn first, then the session ends with a Cease.
    let (mut s, _) = accept_open(&router).await;
    establish(&mut s, 65000).await;
    let (_, _, nlri) = update_parts(&read_message(&mut s).await);
    assert_eq!(nlri, [32, 198, 51, 100, 10]);
    let stopping = tokio::spawn(f.stop());
    let (withdrawn, attrs, nlri) = update_parts(&read_message(&mut s).await);
    assert_eq!(withdrawn, [32, 198, 51, 100, 10]);
    assert!(attrs.is_empty() && nlri.is_empty());
    assert_eq!(notification(&read_message(&mut s).await), (6, 2));
    stopping.await.unwrap();
}

/// An admin API request; the status and the body.
async fn admin_call(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(common::http::empty())
        .unwrap();
    let (status, _, body) = common::http::send(&common::http::client(), req).await;
    (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
}

/// Reads an UPDATE: (withdrawn NLRI, announced NLRI).
async fn read_update(s: &mut TcpStream) -> (Vec<u8>, Vec<u8>) {
    let (withdrawn, _, nlri) = update_parts(&read_message(s).await);
    (withdrawn, nlri)
}

#[tokio::test]
async fn maintenance_and_reloads_change_what_the_router_has() {
    let router = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = router.local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("fulcrum-bgp-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("fulcrum.toml");
    let config = |bgp: &str| {
        format!(
            r#"
[global]
watch_config = false

[admin]
bind = "127.0.0.1:0"

[[listener]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
upstream = "app"

[upstream.app]
backends = [{{ address = "127.0.0.1:9" }}]
{bgp}"#
        )
    };
    let bgp = |prefix: &str, hold: &str| loopback_bgp(port, 65011, hold, prefix);
    std::fs::write(&file, config(&bgp("198.51.100.10/32", "30s"))).unwrap();
    let server = fulcrum::runtime::Server::bind(fulcrum::config::Config::load(&file).unwrap())
        .await
        .unwrap();
    let handle = server.handle();
    let api = server.admin_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let ten = vec![32, 198, 51, 100, 10];
    let eleven = vec![32, 198, 51, 100, 11];

    let (mut s, _) = accept_open(&router).await;
    establish(&mut s, 65000).await;
    assert_eq!(read_update(&mut s).await, (vec![], ten.clone()));

    // Maintenance: withdrawn, then announced again.
    let (status, body) = admin_call(api, "POST", "/bgp/withdraw").await;
    assert_eq!((status, body.as_str()), (200, r#"{"maintenance":true}"#));
    assert_eq!(read_update(&mut s).await, (ten.clone(), vec![]));
    let (_, body) = admin_call(api, "GET", "/status").await;
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["bgp"]["maintenance"], true);
    assert_eq!(doc["bgp"]["peers"][0]["state"], "established");
    assert_eq!(doc["bgp"]["peers"][0]["announced"], serde_json::json!([]));
    assert_eq!(admin_call(api, "GET", "/bgp/withdraw").await.0, 405);
    assert_eq!(admin_call(api, "POST", "/bgp/announce").await.0, 200);
    assert_eq!(read_update(&mut s).await, (vec![], ten.clone()));

    // A reload that moves the announcement keeps the session.
    std::fs::write(&file, config(&bgp("198.51.100.11/32", "30s"))).unwrap();
    handle.reload().await.unwrap();
    assert_eq!(read_update(&mut s).await, (ten.clone(), vec![]));
    assert_eq!(read_update(&mut s).await, (vec![], eleven.clone()));

    // One that changes the hold time starts a new session: the old one ends with a
    // Cease.
    std::fs::write(&file, config(&bgp("198.51.100.11/32", "60s"))).unwrap();
    handle.reload().await.unwrap();
    assert_eq!(notification(&read_message(&mut s).await), (6, 2));
    let (mut s, open) = accept_open(&router).await;
    assert_eq!(open.hold_time, 60);
    establish(&mut s, 65000).await;
    assert_eq!(read_update(&mut s).await, (vec![], eleven.clone()));

    // Removing [bgp]: withdrawn, then a Cease; the endpoints say there is no BGP.
    std::fs::write(&file, config("")).unwrap();
    handle.reload().await.unwrap();
    assert_eq!(read_update(&mut s).await, (eleven, vec![]));
    assert_eq!(notification(&read_message(&mut s).await), (6, 2));
    assert_eq!(admin_call(api, "POST", "/bgp/withdraw").await.0, 404);

    let _ = stop.send(());
    task.await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
