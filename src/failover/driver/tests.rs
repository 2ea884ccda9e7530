use super::*;
use crate::config::Vip;
use crate::failover::control::{bind_at, reloadable};
use crate::failover::hooks::{run_hooks_within, Hook};
use prometheus::{IntCounter, IntCounterVec, IntGauge};
use std::os::unix::fs::PermissionsExt;

/// Generous bound for anything these tests wait on; never a measurement.
const PATIENCE: Duration = Duration::from_secs(10);

fn metrics() -> Metrics {
    Metrics {
        active: IntGauge::new("a", "a").unwrap(),
        transitions: IntCounterVec::new(prometheus::Opts::new("t", "t"), &["to"]).unwrap(),
        rejected: IntCounterVec::new(prometheus::Opts::new("r", "r"), &["reason"]).unwrap(),
        heartbeats_late: IntCounter::new("l", "l").unwrap(),
        timer_late: IntCounter::new("tl", "tl").unwrap(),
        announce_failures: IntCounterVec::new(prometheus::Opts::new("af", "af"), &["family"])
            .unwrap(),
        peer_exits: IntCounter::new("pe", "pe").unwrap(),
    }
}

fn node(
    name: &str,
    priority: u8,
    bind: SocketAddr,
    peer: SocketAddr,
    dir: &std::path::Path,
) -> Failover {
    Failover {
        node: name.into(),
        priority,
        bind,
        peers: vec![peer],
        interval: Duration::from_millis(50),
        dead_after: Duration::from_millis(300),
        preempt: true,
        detect_exit: true,
        secret: b"key".to_vec(),
        vips: Vec::new(),
        on_active: Some(dir.join("hook")),
        on_passive: None,
    }
}

async fn wait_role(status: &watch::Receiver<Status>, role: Role) {
    let mut rx = status.clone();
    tokio::time::timeout(PATIENCE, rx.wait_for(|s| s.role == role))
        .await
        .expect("role in time")
        .expect("driver alive");
}

#[tokio::test]
async fn two_nodes_elect_the_higher_and_a_graceful_stop_hands_over() {
    let dir = std::env::temp_dir().join(format!("fulcrum-driver-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hook = dir.join("hook");
    std::fs::write(
        &hook,
        "#!/bin/sh\necho \"$FULCRUM_FAILOVER_NODE $FULCRUM_FAILOVER_STATE\" >> \"$(dirname \"$0\")/ran\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let a_sock = bind_at("127.0.0.1:0".parse().unwrap()).unwrap();
    let b_sock = bind_at("127.0.0.1:0".parse().unwrap()).unwrap();
    let (a_addr, b_addr) = (
        a_sock.heartbeat.local_addr().unwrap(),
        b_sock.heartbeat.local_addr().unwrap(),
    );
    let a_metrics = metrics();
    let a = start(
        node("a", 200, a_addr, b_addr, &dir),
        a_sock,
        a_metrics.clone(),
    )
    .unwrap();
    let b = start(node("b", 100, b_addr, a_addr, &dir), b_sock, metrics()).unwrap();
    let (a_status, b_status) = (a.status(), b.status());
    wait_role(&a_status, Role::Active).await;
    wait_role(&b_status, Role::Passive).await;
    assert!(b_status.borrow().peer_last_seen_ms().is_some());
    assert_eq!(a_metrics.active.get(), 1);
    assert_eq!(
        a_metrics.transitions.with_label_values(&["active"]).get(),
        1
    );

    // A graceful stop of the active: the passive takes over.
    a.stop().await;
    wait_role(&b_status, Role::Active).await;
    b.stop().await;
    let ran = tokio::time::timeout(PATIENCE, async {
        loop {
            let ran = std::fs::read_to_string(dir.join("ran")).unwrap_or_default();
            if ran.lines().any(|l| l == "a active") && ran.lines().any(|l| l == "b active") {
                return ran;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    std::fs::remove_dir_all(&dir).unwrap();
    // On a loaded machine b may have been active for a moment before it heard a:
    // the order is not asserted, only that each hook ran with its node and state.
    ran.expect("both on_active hooks ran");
}

#[test]
fn a_reload_may_change_rank_and_timing_but_not_identity_key_or_addresses() {
    let dir = std::env::temp_dir();
    let (a, b): (SocketAddr, SocketAddr) = (
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
    );
    let old = node("a", 100, a, b, &dir);
    let mut new = old.clone();
    new.priority = 200;
    new.preempt = false;
    new.interval = Duration::from_millis(20);
    new.dead_after = Duration::from_millis(70);
    new.peers = vec![a];
    new.on_passive = Some(dir.join("other"));
    assert_eq!(reloadable(&old, &new), Ok(()));
    let refused = |change: fn(&mut Failover), key: &str| {
        let mut new = old.clone();
        change(&mut new);
        let e = reloadable(&old, &new).unwrap_err();
        assert!(e.starts_with(key), "{e}");
    };
    refused(|f| f.node = "b".into(), "failover.node ");
    refused(
        |f| f.bind = "127.0.0.1:3".parse().unwrap(),
        "failover.bind ",
    );
    refused(|f| f.secret = b"other".to_vec(), "failover.secret_file ");
    refused(
        |f| {
            f.vips.push(Vip {
                address: "10.0.0.1/24".parse().unwrap(),
                interface: "eth0".into(),
            })
        },
        "failover.vips ",
    );
}

#[tokio::test]
async fn a_higher_priority_given_at_reload_takes_the_role() {
    let dir = std::env::temp_dir().join(format!("fulcrum-reprio-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a_sock = bind_at("127.0.0.1:0".parse().unwrap()).unwrap();
    let b_sock = bind_at("127.0.0.1:0".parse().unwrap()).unwrap();
    let (a_addr, b_addr) = (
        a_sock.heartbeat.local_addr().unwrap(),
        b_sock.heartbeat.local_addr().unwrap(),
    );
    let mut a_config = node("a", 200, a_addr, b_addr, &dir);
    a_config.on_active = None;
    let mut b_config = node("b", 100, b_addr, a_addr, &dir);
    b_config.on_active = None;
    let a = start(a_config, a_sock, metrics()).unwrap();
    let b = start(b_config.clone(), b_sock, metrics()).unwrap();
    wait_role(&a.status(), Role::Active).await;
    wait_role(&b.status(), Role::Passive).await;
    b_config.priority = 250;
    b.control().update(b_config);
    wait_role(&b.status(), Role::Active).await;
    wait_role(&a.status(), Role::Passive).await;
    assert_eq!(b.control().settings().priority, 250);
    a.stop().await;
    b.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_overruns_is_killed_with_what_it_started() {
    let dir = std::env::temp_dir().join(format!("fulcrum-hook-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hook = dir.join("hook");
    // Starts a child of its own, writes its pid, then hangs.
    std::fs::write(
        &hook,
        "#!/bin/sh
sleep 300 &
echo $! > \"$(dirname \"$0\")/child\"
sleep 300
",
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let (_settings, config) = watch::channel(Arc::new(node("h", 100, peer, peer, &dir)));
    let (tx, rx) = mpsc::channel(1);
    // A short limit: the hook hangs for 300 s.
    let task = tokio::spawn(run_hooks_within(config, rx, Duration::from_secs(1)));
    tx.send(Hook::Active).await.unwrap();
    // The child's pid, once the script wrote it (real time passes for the script).
    let child_file = dir.join("child");
    let mut child = None;
    for _ in 0..500 {
        if let Some(pid) = std::fs::read_to_string(&child_file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        {
            child = Some(pid);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let child = child.expect("the hook started its child");
    // Closing the queue ends the task once the hook is killed.
    drop(tx);
    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("the hook task ended")
        .unwrap();
    let gone = (0..500).any(|_| {
        let alive = std::path::Path::new(&format!("/proc/{child}")).exists()
            && std::fs::read_to_string(format!("/proc/{child}/stat"))
                .is_ok_and(|s| !s.contains(") Z "));
        if alive {
            std::thread::sleep(Duration::from_millis(10));
        }
        !alive
    });
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(gone, "the hook's own child {child} outlived the kill");
}

#[tokio::test(start_paused = true)]
async fn the_heartbeat_timer_keeps_its_schedule_when_a_tick_comes_late() {
    let period = Duration::from_secs(1);
    let start = Instant::now();
    let mut t = timer(period);
    t.tick().await;
    assert_eq!(Instant::now(), start, "the first heartbeat goes at once");
    t.tick().await;
    assert_eq!(Instant::now(), start + period);
    // The runtime is held up for two and a half periods: the late tick comes at once,
    // and the next one is where the schedule had it, not a period after the late one.
    tokio::time::advance(period * 5 / 2).await;
    let held_until = Instant::now();
    t.tick().await;
    assert_eq!(Instant::now(), held_until);
    t.tick().await;
    assert_eq!(Instant::now(), start + period * 4);
    t.tick().await;
    assert_eq!(Instant::now(), start + period * 5);
}

#[test]
fn the_machine_is_looked_at_ten_times_per_interval_and_at_most_every_5_ms() {
    assert_eq!(
        check_every(Duration::from_secs(1)),
        Duration::from_millis(100)
    );
    assert_eq!(
        check_every(Duration::from_millis(20)),
        Duration::from_millis(5)
    );
}
