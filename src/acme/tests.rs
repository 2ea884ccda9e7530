//! The manager's schedule and gate, without a CA.

use super::*;
use std::sync::atomic::{AtomicBool, Ordering};

fn settings(storage: &std::path::Path) -> Acme {
    Acme {
        // Nothing listens on port 1: an order fails at once, as unreachable.
        directory: "https://127.0.0.1:1/dir".into(),
        email: None,
        storage: storage.to_path_buf(),
        ca: None,
        challenge: crate::config::AcmeChallenge::Http01,
        renew_before: crate::config::DEFAULT_RENEW_BEFORE,
        eab: None,
    }
}

async fn until(what: &str, f: impl Fn() -> bool) {
    for _ in 0..400 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never: {what}");
}

#[tokio::test]
async fn a_node_that_may_not_order_serves_the_fallback_and_orders_once_allowed() {
    let dir = std::env::temp_dir().join(format!("fulcrum-acme-gate-{}", fastrand::u64(..)));
    let orders =
        prometheus::IntCounterVec::new(prometheus::Opts::new("orders", "orders"), &["result"])
            .unwrap();
    let manager = Manager::new(orders.clone());
    let active = Arc::new(AtomicBool::new(false));
    let gate = active.clone();
    manager.set_hooks(Hooks {
        may_order: Box::new(move || gate.load(Ordering::SeqCst)),
        changed: Box::new(|| {}),
        redis: Box::new(|| None),
    });
    let a = settings(&dir);
    let names = vec!["gate.fulcrum.test".to_string()];
    let live = manager.slot(&names, &a).unwrap();
    assert!(
        store::covers(&live.load(), &names),
        "the fallback covers the names"
    );
    manager.configure(Some(&a), std::slice::from_ref(&names));
    let stop = CancellationToken::new();
    let task = tokio::spawn(manager.clone().run(stop.clone()));
    let checks = || {
        manager.status()["certificates"][0]["checks"]
            .as_u64()
            .unwrap_or(0)
    };
    until("checked as a passive node", || checks() >= 1).await;
    let total = || orders.with_label_values(&["unreachable"]).get();
    assert_eq!(total(), 0, "a passive node places no order");
    assert_eq!(manager.status()["certificates"][0]["source"], "fallback");
    // Active now: the next look orders (and fails here: nothing listens).
    active.store(true, Ordering::SeqCst);
    manager.nudge();
    until("an order attempted", || total() >= 1).await;
    stop.cancel();
    task.await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn back_off_grows_and_is_bounded_by_kind() {
    let u = Failure::unreachable("x");
    assert_eq!(u.back_off(1), Duration::from_secs(1));
    assert_eq!(u.back_off(3), Duration::from_secs(4));
    assert_eq!(u.back_off(40), Duration::from_secs(60));
    let r = Failure::refused("x");
    assert_eq!(r.back_off(1), Duration::from_secs(60));
    assert_eq!(r.back_off(40), Duration::from_secs(6 * 3600));
    assert_eq!(r.result(), "failed");
    assert_eq!(u.result(), "unreachable");
}
