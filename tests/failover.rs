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

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::netns::{enter, get, in_ns, ip, skipped, Lab, PATIENCE};
use fulcrum::failover::wire::{self, Heartbeat, State};

const VIP: &str = "10.99.0.100";
const VIP6: &str = "fd99::100";
const NODES: [&str; 5] = ["br", "lb1", "lb2", "be", "cl"];

/// Builds the topology, or says why it cannot (what was made is removed on drop).
fn lab() -> Result<Lab, String> {
    let lab = Lab::new("fo", &NODES)?;
    lab.ip("br", &["link", "add", "br0", "type", "bridge"])?;
    lab.ip("br", &["link", "set", "br0", "up"])?;
    for (n, addr, addr6) in [
        ("lb1", "10.99.0.11/24", "fd99::11/64"),
        ("lb2", "10.99.0.12/24", "fd99::12/64"),
        ("be", "10.99.0.20/24", "fd99::20/64"),
        ("cl", "10.99.0.30/24", "fd99::30/64"),
    ] {
        let ns = lab.ns(n);
        let port = format!("v{n}");
        lab.ip(
            "br",
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )?;
        lab.ip("br", &["link", "set", &port, "master", "br0"])?;
        lab.ip("br", &["link", "set", &port, "up"])?;
        lab.ip(n, &["addr", "add", addr, "dev", "eth0"])?;
        lab.ip(n, &["-6", "addr", "add", addr6, "dev", "eth0", "nodad"])?;
        lab.ip(n, &["link", "set", "eth0", "up"])?;
    }
    // The heartbeat link: a veth pair straight between the balancers.
    lab.link(
        ("lb1", "hb0", "10.98.0.1/30"),
        ("lb2", "hb0", "10.98.0.2/30"),
    )?;
    Ok(lab)
}

/// Starts `fulcrum run` with `config` in namespace `n`, with the pair's key and the
/// page the backend serves beside it.
fn start(lab: &mut Lab, n: &str, config: &str) {
    let key = lab.write(n, "failover.key", "a test pair key of at least 32 bytes\n");
    std::fs::set_permissions(key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    lab.write(n, "index.html", "served through the VIP\n");
    lab.start(n, config, "info,fulcrum::failover=debug");
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

/// The hardware address of `eth0` in namespace `n`.
fn mac(lab: &Lab, n: &str) -> String {
    let out = lab.ip_out(n, &["link", "show", "eth0"]);
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .expect("eth0 has a hardware address")
        .to_string()
}

/// The hardware address the client's neighbour cache holds for the IPv6 VIP.
fn client_neighbour6(lab: &Lab) -> Option<String> {
    let out = lab.ip_out("cl", &["-6", "neigh", "show", VIP6, "dev", "eth0"]);
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
    let mut lab = match lab() {
        Ok(l) => l,
        Err(why) => return skipped(&why),
    };
    start(&mut lab, "be", &backend_config());
    start(
        &mut lab,
        "lb1",
        &lb_config("lb1", 150, "10.98.0.1", "10.98.0.2"),
    );
    start(
        &mut lab,
        "lb2",
        &lb_config("lb2", 100, "10.98.0.2", "10.98.0.1"),
    );

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
    start(
        &mut lab,
        "lb1",
        &lb_config("lb1", 200, "10.98.0.1", "10.98.0.2"),
    );
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
    let mut lab = match lab() {
        Ok(l) => l,
        Err(why) => return skipped(&why),
    };
    let config = lb_config("lb1", 150, "10.98.0.1", "10.98.0.2")
        .replace("interface = \"eth0\"", "interface = \"nosuch0\"");
    start(&mut lab, "lb1", &config);
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
    let held = lab.ip_out("lb1", &["addr", "show", "nosuch0"]);
    assert!(held.contains(VIP) && held.contains(VIP6), "{held}");
    assert!(
        lab.log("lb1").contains("leaving fault"),
        "{}",
        lab.log("lb1")
    );
}
