use super::*;
use std::path::Path;

fn config(backends: &str, extra: &str) -> config::Config {
    let src = format!(
        "[[listener]]\nname = \"t\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nupstream = \"app\"\n\
         [upstream.app]\nbackends = [{backends}]\n{extra}"
    );
    config::Config::parse(&src, Path::new("t.toml")).unwrap()
}

fn one() -> config::Config {
    config("{ address = \"127.0.0.1:1\" }", "")
}

#[test]
fn a_lease_counts_in_flight_work_until_dropped() {
    let reg = Registry::new();
    let up = Upstream::build(&one().upstreams[0], &reg);
    let a = up.pick(&PickContext::default()).unwrap();
    let b = up.pick(&PickContext::default()).unwrap();
    assert_eq!(up.backends()[0].state.active(), 2);
    drop(a);
    assert_eq!(up.backends()[0].state.active(), 1);
    drop(b);
    assert_eq!(up.backends()[0].state.active(), 0);
}

fn capped(cap: u32, backends: &str) -> Upstream {
    let c = config(
        backends,
        &format!("max_connections_per_backend = {cap}\nqueue_timeout = \"1s\"\n"),
    );
    Upstream::build(&c.upstreams[0], &Registry::new())
}

#[test]
fn no_backend_is_leased_past_its_cap() {
    let up = capped(
        2,
        "{ address = \"127.0.0.1:1\" }, { address = \"127.0.0.1:2\" }",
    );
    let leases: Vec<Lease> = (0..4)
        .map(|_| up.pick(&PickContext::default()).expect("below the caps"))
        .collect();
    assert!(up.backends().iter().all(|b| b.state.active() == 2));
    assert!(
        up.pick(&PickContext::default()).is_none(),
        "both at their cap"
    );
    assert!(up.pick_backend(0).is_none());
    drop(leases);
    assert!(up.backends().iter().all(|b| b.state.active() == 0));
}

#[test]
fn concurrent_picks_never_pass_the_cap() {
    let up = Arc::new(capped(3, "{ address = \"127.0.0.1:1\" }"));
    let peak = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (up, peak) = (up.clone(), peak.clone());
            std::thread::spawn(move || {
                for _ in 0..2000 {
                    if let Some(l) = up.pick(&PickContext::default()) {
                        peak.fetch_max(l.backend().state.active(), Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(peak.load(Ordering::SeqCst) <= 3);
    assert_eq!(up.backends()[0].state.active(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_request_waits_for_a_backend_to_free_up_then_times_out() {
    let up = Arc::new(capped(1, "{ address = \"127.0.0.1:1\" }"));
    let held = up.acquire(&PickContext::default()).await.unwrap();
    let waiter = {
        let up = up.clone();
        tokio::spawn(async move { up.acquire(&PickContext::default()).await.map(drop) })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "it waits while the backend is full");
    drop(held);
    assert_eq!(
        waiter.await.unwrap(),
        Ok(()),
        "a freed place goes to the waiter"
    );

    let _held = up.acquire(&PickContext::default()).await.unwrap();
    let started = Instant::now();
    assert_eq!(
        up.acquire(&PickContext::default()).await.map(drop),
        Err(NoLease::QueueTimeout)
    );
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert_eq!(up.changes.queued.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn an_upstream_with_nothing_eligible_does_not_queue() {
    let up = capped(1, "{ address = \"127.0.0.1:1\", weight = 0 }");
    assert_eq!(
        up.acquire(&PickContext::default()).await.map(drop),
        Err(NoLease::NoBackend)
    );
}

#[test]
fn a_lease_records_its_outcome_when_dropped() {
    let reg = Registry::new();
    let up = Upstream::build(&one().upstreams[0], &reg);
    for _ in 0..2 {
        let mut l = up.pick(&PickContext::default()).unwrap();
        l.set_outcome(BackendOutcome::Failure);
    }
    let s = &up.backends()[0].state;
    assert_eq!((s.failed(), s.consecutive_failures()), (2, 2));
    up.pick(&PickContext::default())
        .unwrap()
        .set_outcome(BackendOutcome::Success);
    assert_eq!((s.succeeded(), s.consecutive_failures()), (1, 0));
}

#[test]
fn state_survives_a_rebuild_for_the_same_address_only() {
    let reg = Registry::new();
    let cfg1 = config(
        "{ address = \"127.0.0.1:1\" }, { address = \"127.0.0.1:2\" }",
        "",
    );
    let gen1 = Upstream::build(&cfg1.upstreams[0], &reg);
    gen1.backends()[0].state.set_draining(true);
    gen1.backends()[1].state.set_healthy(false);
    let cfg2 = config(
        "{ address = \"127.0.0.1:2\", weight = 3 }, { address = \"127.0.0.1:3\" }",
        "",
    );
    reg.retain(&cfg2);
    let gen2 = Upstream::build(&cfg2.upstreams[0], &reg);
    assert!(!gen2.backends()[0].state.is_healthy());
    assert!(gen2.backends()[1].state.is_healthy());
    assert_eq!(reg.len(), 2);
    // The drained backend was removed, so re-adding it starts afresh.
    let gen3 = Upstream::build(&cfg1.upstreams[0], &reg);
    assert!(!gen3.backends()[0].state.is_draining());
}

#[test]
fn a_drained_or_down_backend_is_not_picked() {
    let reg = Registry::new();
    let up = Upstream::build(
        &config(
            "{ address = \"127.0.0.1:1\" }, { address = \"127.0.0.1:2\" }",
            "",
        )
        .upstreams[0],
        &reg,
    );
    up.backends()[0].state.set_draining(true);
    for _ in 0..4 {
        assert_eq!(up.pick(&PickContext::default()).unwrap().index(), 1);
    }
    up.backends()[1].state.set_healthy(false);
    assert!(up.pick(&PickContext::default()).is_none());
    up.backends()[0].state.set_draining(false);
    assert_eq!(up.pick(&PickContext::default()).unwrap().index(), 0);
}

#[tokio::test(start_paused = true)]
async fn failures_in_a_row_eject_a_backend_until_its_time_runs_out() {
    let reg = Registry::new();
    let cfg = config(
        "{ address = \"127.0.0.1:1\" }, { address = \"127.0.0.1:2\" }",
        "[upstream.app.health]\npassive_failures = 3\neject_for = \"30s\"\n",
    );
    let up = Upstream::build(&cfg.upstreams[0], &reg);
    for _ in 0..3 {
        let mut l = up.pick_backend(0).unwrap();
        l.set_outcome(BackendOutcome::Failure);
    }
    assert!(up.backends()[0].state.is_ejected());
    for _ in 0..4 {
        assert_eq!(up.pick(&PickContext::default()).unwrap().index(), 1);
    }
    assert!(up.pick_backend(0).is_none());
    // On tokio's paused clock: out for the whole of eject_for, back just after.
    tokio::time::advance(Duration::from_millis(29_990)).await;
    assert!(up.backends()[0].state.is_ejected());
    assert!(up.pick_backend(0).is_none());
    tokio::time::advance(Duration::from_millis(20)).await;
    let picks: Vec<usize> = (0..4)
        .map(|_| up.pick(&PickContext::default()).unwrap().index())
        .collect();
    assert!(
        picks.contains(&0),
        "back in rotation after eject_for: {picks:?}"
    );
    assert!(!up.backends()[0].state.is_ejected());
    // A failure after the return starts a new count: one alone does not eject.
    up.pick_backend(0)
        .unwrap()
        .set_outcome(BackendOutcome::Failure);
    assert!(!up.backends()[0].state.is_ejected());
}

#[test]
fn a_success_between_failures_resets_the_count() {
    let reg = Registry::new();
    let cfg = config(
        "{ address = \"127.0.0.1:1\" }",
        "[upstream.app.health]\npassive_failures = 2\neject_for = \"10s\"\n",
    );
    let up = Upstream::build(&cfg.upstreams[0], &reg);
    for outcome in [
        BackendOutcome::Failure,
        BackendOutcome::Success,
        BackendOutcome::Failure,
    ] {
        up.pick_backend(0).unwrap().set_outcome(outcome);
    }
    assert!(!up.backends()[0].state.is_ejected());
}

#[test]
fn latency_takes_peaks_at_once_and_decays_towards_lower_samples() {
    let reg = Registry::new();
    let s = reg.state("u", "a");
    s.record_latency(Duration::from_millis(10));
    assert_eq!(s.latency_ns(), 10_000_000.0);
    s.record_latency(Duration::from_millis(50));
    assert_eq!(s.latency_ns(), 50_000_000.0);
    s.record_latency(Duration::from_millis(1));
    let after = s.latency_ns();
    assert!((1_000_000.0..=50_000_000.0).contains(&after), "{after}");
}
