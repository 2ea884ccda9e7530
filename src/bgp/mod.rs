//! Active-active scale-out: this instance announces its service addresses to routers
//! over BGP while it can serve them, so that routers spread flows over every healthy
//! instance (ECMP) and move them away from one that cannot.
//!
//! - [`wire`]: the messages, encoded and decoded (the decoder is fuzzed);
//! - [`machine`]: one peer's session, pure: `step(event, now) -> actions`;
//! - [`speaker`]: the task that runs a session over its TCP connection;
//! - here: the gate that decides which prefixes are announced (each `[[bgp.announce]]`
//!   while every upstream it names has `min_healthy` eligible backends, none in
//!   maintenance, while the failover role (when there is one) is active, none once
//!   shutdown began), the sessions started and stopped as `[bgp]` changes at reload,
//!   and the `/status` view.
//!
//! fulcrum only announces: it opens the sessions, never listens, and ignores the
//! routes its peers send.

pub mod machine;
pub mod speaker;
pub mod wire;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ipnet::IpNet;
use prometheus::IntGaugeVec;
use serde_json::json;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::{self, BgpPeer};
use crate::failover;
use machine::{Settings, State};
pub use speaker::Metrics;
use speaker::PeerStatus;

/// How often the gate looks again without being told (ejections run out on time).
const RECHECK: Duration = Duration::from_millis(250);
/// How long shutdown waits for the withdrawals to be written.
const WITHDRAW_WAIT: Duration = Duration::from_secs(2);

/// How many eligible backends an upstream has now; `None` when it does not exist.
pub type Eligible = Arc<dyn Fn(&str) -> Option<usize> + Send + Sync>;

struct Peer {
    peer: BgpPeer,
    stop: CancellationToken,
    task: JoinHandle<()>,
    status: Arc<Mutex<PeerStatus>>,
}

struct Inner {
    config: ArcSwap<config::Bgp>,
    eligible: Eligible,
    failover: Option<watch::Receiver<failover::Status>>,
    /// `POST /bgp/withdraw` until `POST /bgp/announce`.
    maintenance: AtomicBool,
    /// Shutdown began: nothing is announced any more.
    stopping: AtomicBool,
    /// Wakes the gate.
    wake: Notify,
    routes: watch::Sender<Arc<BTreeSet<IpNet>>>,
    peers: Mutex<Vec<Peer>>,
    metrics: Metrics,
    announced: IntGaugeVec,
}

/// The running BGP speakers and their gate.
#[derive(Clone)]
pub struct Running {
    inner: Arc<Inner>,
    gate: Arc<CancellationToken>,
}

/// Starts a session per peer and the gate.
pub fn start(
    config: config::Bgp,
    eligible: Eligible,
    failover: Option<watch::Receiver<failover::Status>>,
    metrics: Metrics,
    announced: IntGaugeVec,
) -> Running {
    let (routes, _) = watch::channel(Arc::new(BTreeSet::new()));
    let inner = Arc::new(Inner {
        config: ArcSwap::from_pointee(config.clone()),
        eligible,
        failover,
        maintenance: AtomicBool::new(false),
        stopping: AtomicBool::new(false),
        wake: Notify::new(),
        routes,
        peers: Mutex::new(Vec::new()),
        metrics,
        announced,
    });
    for a in &config.announce {
        inner
            .announced
            .with_label_values(&[&a.prefix.to_string()])
            .set(0);
    }
    // The first decision is made before any session starts.
    inner.routes.send_replace(Arc::new(inner.decide()));
    inner.start_peers(&config, &config.peers);
    let gate = Arc::new(CancellationToken::new());
    tokio::spawn(gate_loop(inner.clone(), (*gate).clone()));
    Running { inner, gate }
}

fn settings(config: &config::Bgp, peer: &BgpPeer) -> Settings {
    Settings {
        local_as: config.local_as,
        remote_as: peer.remote_as,
        router_id: config.router_id,
        hold_time: u16::try_from(config.hold_time.as_secs()).unwrap_or(u16::MAX),
        family: wire::Family::of(peer.address),
    }
}

impl Inner {
    /// The prefixes to announce now.
    fn decide(&self) -> BTreeSet<IpNet> {
        if self.stopping.load(Ordering::Acquire) || self.maintenance.load(Ordering::Acquire) {
            return BTreeSet::new();
        }
        let passive = self
            .failover
            .as_ref()
            .is_some_and(|f| f.borrow().role != failover::machine::Role::Active);
        if passive {
            return BTreeSet::new();
        }
        let config = self.config.load();
        config
            .announce
            .iter()
            .filter(|a| {
                a.upstreams
                    .iter()
                    .all(|u| (self.eligible)(u).is_some_and(|n| n >= a.min_healthy))
            })
            .map(|a| a.prefix)
            .collect()
    }

    fn start_peers(&self, config: &config::Bgp, peers: &[BgpPeer]) {
        let mut running = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        for peer in peers {
            let status = Arc::new(Mutex::new(PeerStatus {
                peer: peer.clone(),
                state: State::Idle,
                since: Instant::now(),
                local: None,
                hold_time: Duration::ZERO,
                advertised: BTreeSet::new(),
                last_error: None,
            }));
            let stop = CancellationToken::new();
            let task = tokio::spawn(speaker::run(
                peer.clone(),
                settings(config, peer),
                self.routes.subscribe(),
                stop.clone(),
                status.clone(),
                self.metrics.clone(),
            ));
            running.push(Peer {
                peer: peer.clone(),
                stop,
                task,
                status,
            });
        }
    }

    /// Sets `fulcrum_bgp_announced` from what the established sessions carry.
    fn publish(&self) {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let config = self.config.load();
        for a in &config.announce {
            let carried = peers.iter().any(|p| {
                let s = p.status.lock().unwrap_or_else(|p| p.into_inner());
                s.state == State::Established && s.advertised.contains(&a.prefix)
            });
            self.announced
                .with_label_values(&[&a.prefix.to_string()])
                .set(i64::from(carried));
        }
    }
}

async fn gate_loop(inner: Arc<Inner>, stop: CancellationToken) {
    let mut failover = inner.failover.clone();
    loop {
        let eligibility = crate::upstream::eligibility_changes().notified();
        tokio::pin!(eligibility);
        eligibility.as_mut().enable();
        let woken = inner.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let wanted = inner.decide();
        if **inner.routes.borrow() != wanted {
            info!(
                prefixes = ?wanted.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                "bgp: announcing"
            );
            inner.routes.send_replace(Arc::new(wanted));
        }
        inner.publish();
        let role_changed = async {
            match failover.as_mut() {
                Some(f) => {
                    if f.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = eligibility => {}
            _ = woken => {}
            _ = role_changed => {}
            _ = tokio::time::sleep(RECHECK) => {}
        }
    }
}

impl Running {
    /// `POST /bgp/withdraw` (true) and `POST /bgp/announce` (false).
    pub fn set_maintenance(&self, withdraw: bool) {
        if self.inner.maintenance.swap(withdraw, Ordering::AcqRel) != withdraw {
            info!(withdraw, "bgp: maintenance changed");
        }
        self.inner.wake.notify_one();
    }

    /// New `[bgp]` settings from a reload: the announce entries and the grace apply
    /// at once; a peer whose settings changed gets a new session (the old one ends
    /// with a Cease), unchanged peers keep theirs.
    pub fn update(&self, config: config::Bgp) {
        let old = self.inner.config.load_full();
        self.inner.config.store(Arc::new(config.clone()));
        let same_speaker = old.local_as == config.local_as
            && old.router_id == config.router_id
            && old.hold_time == config.hold_time;
        let mut gone = Vec::new();
        {
            let mut peers = self.inner.peers.lock().unwrap_or_else(|p| p.into_inner());
            peers.retain_mut(|p| {
                let keep = same_speaker && config.peers.contains(&p.peer);
                if !keep {
                    p.stop.cancel();
                    gone.push(p.peer.name());
                }
                keep
            });
            let kept: Vec<BgpPeer> = peers.iter().map(|p| p.peer.clone()).collect();
            drop(peers);
            let new: Vec<BgpPeer> = config
                .peers
                .iter()
                .filter(|p| !kept.contains(p))
                .cloned()
                .collect();
            if !new.is_empty() || !gone.is_empty() {
                info!(started = new.len(), stopped = ?gone, "bgp: sessions changed at reload");
            }
            self.inner.start_peers(&config, &new);
        }
        for name in gone {
            let _ = self.inner.metrics.session_up.remove_label_values(&[&name]);
        }
        for a in &old.announce {
            if !config.announce.iter().any(|n| n.prefix == a.prefix) {
                let _ = self
                    .inner
                    .announced
                    .remove_label_values(&[&a.prefix.to_string()]);
            }
        }
        self.inner.wake.notify_one();
    }

    /// Brings `fulcrum_bgp_announced` up to date (at scrape time).
    pub fn publish_metrics(&self) {
        self.inner.publish();
    }

    /// The grace a stopping instance keeps serving for after withdrawing.
    pub fn withdraw_grace(&self) -> Duration {
        self.inner.config.load().withdraw_grace
    }

    /// Withdraws every route (shutdown) and waits, up to a short bound, until the
    /// established sessions have sent their withdrawals.
    pub async fn withdraw_all(&self) {
        self.inner.stopping.store(true, Ordering::Release);
        self.inner.routes.send_replace(Arc::new(BTreeSet::new()));
        self.inner.wake.notify_one();
        let deadline = tokio::time::Instant::now() + WITHDRAW_WAIT;
        while tokio::time::Instant::now() < deadline && self.carries_any() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.inner.publish();
        info!("bgp: routes withdrawn");
    }

    fn carries_any(&self) -> bool {
        let peers = self.inner.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.iter().any(|p| {
            let s = p.status.lock().unwrap_or_else(|p| p.into_inner());
            s.state == State::Established && !s.advertised.is_empty()
        })
    }

    /// Ends every session with a Cease and stops the gate.
    pub async fn stop(&self) {
        self.gate.cancel();
        let peers: Vec<Peer> = {
            let mut peers = self.inner.peers.lock().unwrap_or_else(|p| p.into_inner());
            peers.drain(..).collect()
        };
        for p in &peers {
            p.stop.cancel();
        }
        for p in peers {
            let _ = tokio::time::timeout(WITHDRAW_WAIT, p.task).await;
        }
    }

    /// The `bgp` object of `/status`.
    pub fn status(&self) -> serde_json::Value {
        let config = self.inner.config.load();
        let wanted = self.inner.routes.borrow().clone();
        let peers = self.inner.peers.lock().unwrap_or_else(|p| p.into_inner());
        let peers: Vec<_> = peers
            .iter()
            .map(|p| {
                let s = p.status.lock().unwrap_or_else(|p| p.into_inner());
                json!({
                    "peer": s.peer.name(),
                    "remote_as": s.peer.remote_as,
                    "state": s.state.name(),
                    "since_seconds": s.since.elapsed().as_secs(),
                    "local_address": s.local.map(|a| a.to_string()),
                    "hold_time_seconds": s.hold_time.as_secs(),
                    "announced": s.advertised.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                    "last_error": s.last_error,
                })
            })
            .collect();
        let announce: Vec<_> = config
            .announce
            .iter()
            .map(|a| {
                json!({
                    "prefix": a.prefix.to_string(),
                    "upstreams": a.upstreams,
                    "min_healthy": a.min_healthy,
                    "announced": wanted.contains(&a.prefix),
                })
            })
            .collect();
        json!({
            "enabled": true,
            "router_id": config.router_id.to_string(),
            "local_as": config.local_as,
            "maintenance": self.inner.maintenance.load(Ordering::Acquire),
            "stopping": self.inner.stopping.load(Ordering::Acquire),
            "announce": announce,
            "peers": peers,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use prometheus::{IntCounterVec, Opts};

    use super::*;
    use crate::failover::machine::Role;

    fn config() -> config::Bgp {
        let announce = |prefix: &str, upstreams: &[&str], min_healthy| config::Announce {
            prefix: prefix.parse().unwrap(),
            upstreams: upstreams.iter().map(|u| u.to_string()).collect(),
            min_healthy,
        };
        config::Bgp {
            router_id: [192, 0, 2, 11].into(),
            local_as: 65011,
            hold_time: Duration::from_secs(9),
            withdraw_grace: Duration::from_secs(3),
            peers: Vec::new(),
            announce: vec![
                announce("198.51.100.10/32", &["web"], 1),
                announce("198.51.100.11/32", &["web", "api"], 2),
                announce("2001:db8::10/128", &["gone"], 1),
            ],
        }
    }

    fn inner(
        healthy: &[(&str, usize)],
        failover: Option<watch::Receiver<failover::Status>>,
    ) -> Inner {
        let counts: HashMap<String, usize> =
            healthy.iter().map(|(u, n)| (u.to_string(), *n)).collect();
        let counter = |name: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, name), labels).unwrap()
        };
        let gauge =
            |name: &str, labels: &[&str]| IntGaugeVec::new(Opts::new(name, name), labels).unwrap();
        Inner {
            config: ArcSwap::from_pointee(config()),
            eligible: Arc::new(move |u: &str| counts.get(u).copied()),
            failover,
            maintenance: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            wake: Notify::new(),
            routes: watch::channel(Arc::new(BTreeSet::new())).0,
            peers: Mutex::new(Vec::new()),
            metrics: Metrics {
                session_up: gauge("up", &["peer"]),
                updates_sent: counter("sent", &["peer", "kind"]),
                transitions: counter("transitions", &["peer", "to"]),
            },
            announced: gauge("announced", &["prefix"]),
        }
    }

    fn names(set: &BTreeSet<IpNet>) -> Vec<String> {
        set.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn each_prefix_is_announced_while_every_upstream_it_names_has_enough() {
        let i = inner(&[("web", 2), ("api", 1)], None);
        // api has 1 of the 2 the second prefix needs; "gone" does not exist.
        assert_eq!(names(&i.decide()), ["198.51.100.10/32"]);
        let i = inner(&[("web", 2), ("api", 2)], None);
        assert_eq!(names(&i.decide()), ["198.51.100.10/32", "198.51.100.11/32"]);
        let i = inner(&[("web", 0), ("api", 2)], None);
        assert!(i.decide().is_empty());
    }

    #[test]
    fn maintenance_and_shutdown_withdraw_everything() {
        let i = inner(&[("web", 2), ("api", 2)], None);
        i.maintenance.store(true, Ordering::Release);
        assert!(i.decide().is_empty());
        i.maintenance.store(false, Ordering::Release);
        assert_eq!(i.decide().len(), 2);
        i.stopping.store(true, Ordering::Release);
        assert!(i.decide().is_empty());
    }

    #[test]
    fn only_the_active_node_of_a_failover_pair_announces() {
        let status = |role| failover::Status {
            node: "lb1".into(),
            role,
            last_heard: None,
        };
        let (tx, rx) = watch::channel(status(Role::Passive));
        let i = inner(&[("web", 2), ("api", 2)], Some(rx));
        assert!(i.decide().is_empty());
        tx.send_replace(status(Role::Active));
        assert_eq!(i.decide().len(), 2);
        tx.send_replace(status(Role::Fault));
        assert!(i.decide().is_empty());
    }
}
