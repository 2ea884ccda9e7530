//! The failover driver: one thread of its own that owns the heartbeat socket and the
//! [`Machine`], and two helpers it never waits on.
//!
//! - The heartbeat task sends this node's heartbeat to every peer each `interval`, on a
//!   timer that keeps its schedule (a tick that comes late is counted, and the next
//!   one is not moved), authenticates what arrives (rejections counted by reason, a
//!   peer's heartbeat that comes more than 1.5 intervals after its previous one
//!   counted as late), ticks the machine ten times per interval, and turns the
//!   machine's actions into commands. It runs on a thread and runtime of its own, so
//!   that no amount of proxied traffic delays a heartbeat or a takeover.
//! - The address task runs those commands in order: add the virtual addresses over
//!   netlink and announce them (gratuitous ARP, unsolicited neighbour advertisement;
//!   the first at once, then twice more, 150 ms apart, on a timer of their own; a send
//!   that fails is counted and tried again), remove them, announce again. An address
//!   that cannot be added comes back to the heartbeat task as [`Event::VipFailed`]:
//!   the node goes to fault, never claims to be active, and tries again after a
//!   back-off (1 s, doubling up to 30 s).
//! - The hook task runs `on_active` and `on_passive` one at a time, each killed after
//!   `HOOK_TIMEOUT` (10 s, in `hooks.rs`): after the addresses are added and
//!   announced, never before.
//!
//! Settings a reload may change (priority, preempt, interval, dead_after, peers, the
//! hooks) arrive on a `watch` channel and apply at once. A graceful stop sends a few
//! resign heartbeats first, then removes the addresses. The role is published on a
//! `watch` channel for `/status`; the metrics are plain prometheus handles given by
//! the runtime.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::addresses::{run_addresses, Command, Report};
use super::control::{role_name, Bound, Control, Metrics, Running, Status};
use super::exit;
use super::hooks::run_hooks;
use super::machine::{Action, Event, Machine, Role};
use super::wire::{self, Heartbeat, Receiver, Reject, State};
use crate::config::Failover;

/// Resign heartbeats sent on a graceful stop: one lost datagram does not delay the
/// peer's takeover to `dead_after`.
const RESIGN_COPIES: u32 = 3;
/// How long a graceful stop waits for the addresses to be removed and a last hook.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// At most one warning per this period about rejected heartbeats or failed sends.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Announcing again at most this often: while a peer that ranks lower still claims to
/// be active, each of its heartbeats asks for an announce.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);
/// Commands waiting for the address and hook tasks; transitions are rare.
const QUEUE: usize = 64;
/// The back-off of a node in fault before it tries the addresses again.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Starts the driver on a socket from [`bind`](super::control::bind), on a thread of
/// its own.
pub fn start(config: Failover, bound: Bound, metrics: Metrics) -> io::Result<Running> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (socket, exits_listener) = {
        let _in = runtime.enter();
        (
            UdpSocket::from_std(bound.heartbeat)?,
            TcpListener::from_std(bound.exits)?,
        )
    };
    let config = Arc::new(config);
    let (status_tx, status) = watch::channel(Status {
        node: config.node.clone(),
        role: Role::Passive,
        last_heard: None,
    });
    let (settings_tx, settings) = watch::channel(config.clone());
    metrics.active.set(0);
    let stop = CancellationToken::new();
    let (done_tx, done) = oneshot::channel();
    let stopping = stop.clone();
    std::thread::Builder::new()
        .name("fulcrum-failover".into())
        .spawn(move || {
            runtime.block_on(async move {
                let (hooks_tx, hooks_rx) = mpsc::channel(QUEUE);
                let hooks = tokio::spawn(run_hooks(settings.clone(), hooks_rx));
                let (commands_tx, commands_rx) = mpsc::channel(QUEUE);
                let (events_tx, events_rx) = mpsc::channel(QUEUE);
                let listening = tokio::spawn(exit::listen(exits_listener, settings.clone()));
                let (exits_tx, exits_rx) = mpsc::channel(QUEUE);
                let addresses = tokio::spawn(run_addresses(
                    config.vips.clone(),
                    commands_rx,
                    events_tx,
                    hooks_tx,
                    metrics.announce_failures.clone(),
                ));
                // Addresses left by an earlier run that ended without a stop (a crash,
                // kill -9): a node starts passive, so they go, without the hook.
                let _ = commands_tx.try_send(Command::Release { hook: false });
                let mut driver = Driver {
                    machine: Machine::new(
                        &config.node,
                        config.priority,
                        config.preempt,
                        millis(config.dead_after),
                        0,
                    ),
                    receiver: Receiver::new(&config.node),
                    sequence: unix_micros(),
                    sent_at_ms: 0,
                    held: false,
                    resigned: false,
                    started: Instant::now(),
                    socket,
                    status: status_tx,
                    settings,
                    commands: commands_tx,
                    metrics,
                    warned: None,
                    suppressed: 0,
                    announced: None,
                    heard: HashMap::new(),
                    retry_at: None,
                    backoff: RETRY_FIRST,
                    names: HashMap::new(),
                    states: HashMap::new(),
                    watchers: HashMap::new(),
                    exits: exits_tx,
                    config,
                };
                driver.watch_peers();
                driver
                    .run(stopping, events_rx, exits_rx, addresses, hooks)
                    .await;
                listening.abort();
            });
            let _ = done_tx.send(());
        })?;
    Ok(Running {
        control: Control {
            status,
            settings: Arc::new(settings_tx),
        },
        stop,
        done,
    })
}

/// How often the machine looks at the time: a tenth of `interval` (at least 5 ms), so
/// that a takeover comes at most that late after `dead_after`.
fn check_every(interval: Duration) -> Duration {
    (interval / 10).max(Duration::from_millis(5))
}

/// A timer on a fixed schedule: a tick that comes late does not move the next ones.
fn timer(period: Duration) -> Interval {
    let mut t = tokio::time::interval(period);
    t.set_missed_tick_behavior(MissedTickBehavior::Skip);
    t
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}

/// Where sequence numbers start: above whatever this node sent before a restart, as
/// long as its clock does not step back and it sent fewer than a million heartbeats
/// per second.
fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

struct Driver {
    config: Arc<Failover>,
    settings: watch::Receiver<Arc<Failover>>,
    machine: Machine,
    receiver: Receiver,
    sequence: u64,
    /// The send time of the last heartbeat: never goes back, even if the clock does.
    sent_at_ms: u64,
    /// The machine is active and the addresses are held: until then the node says
    /// passive, in its heartbeats, `/status` and the metrics.
    held: bool,
    /// A resign went out: no other heartbeat follows it.
    resigned: bool,
    started: Instant,
    socket: UdpSocket,
    status: watch::Sender<Status>,
    commands: mpsc::Sender<Command>,
    metrics: Metrics,
    /// Rate limit of warnings: when the last one was logged, and how many were not.
    warned: Option<Instant>,
    suppressed: u64,
    /// When the addresses were last announced again.
    announced: Option<Instant>,
    /// When each peer's last valid heartbeat arrived: a longer gap than 1.5 intervals
    /// is a late heartbeat.
    heard: HashMap<String, Instant>,
    /// In fault: when to try again, and the wait after the next fault.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Which node each peer socket address's heartbeats name: the exit watch reports
    /// the configured addresses, the machine knows names. Keyed by address and port,
    /// so that two nodes on one host are told apart.
    names: HashMap<SocketAddr, String>,
    /// What each peer's heartbeats said last: a change is logged.
    states: HashMap<String, State>,
    /// The exit watch of each peer, and where they report.
    watchers: HashMap<SocketAddr, (JoinHandle<()>, Arc<Notify>)>,
    exits: mpsc::Sender<SocketAddr>,
}

/// `addr` with an IPv4-mapped IPv6 address written as IPv4, as configured peers are.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

impl Driver {
    /// The machine's clock: milliseconds since start, from tokio's clock.
    fn now(&self) -> u64 {
        millis(self.started.elapsed())
    }

    async fn run(
        mut self,
        stop: CancellationToken,
        mut reports: mpsc::Receiver<Report>,
        mut exits: mpsc::Receiver<SocketAddr>,
        addresses: JoinHandle<()>,
        hooks: JoinHandle<()>,
    ) {
        info!(
            node = %self.config.node,
            priority = self.config.priority,
            bind = %self.config.bind,
            interval = ?self.config.interval,
            dead_after = ?self.config.dead_after,
            "failover: starting passive"
        );
        let mut send = timer(self.config.interval);
        let mut check = timer(check_every(self.config.interval));
        let mut settings_open = true;
        let mut buf = [0u8; 512];
        loop {
            let retry_at = self.retry_at;
            tokio::select! {
                _ = stop.cancelled() => break,
                due = send.tick() => {
                    self.on_time(due);
                    self.send(self.advertised());
                }
                _ = check.tick() => self.step(Event::Tick),
                Some(peer) = exits.recv() => self.exited(peer),
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => self.received(&buf[..n], from),
                    Err(e) => self.warn(format_args!("heartbeat receive failed: {e}")),
                },
                Some(report) = reports.recv() => match report {
                    Report::Acquired => {
                        self.backoff = RETRY_FIRST;
                        if self.machine.role() == Role::Active && !self.held {
                            self.held = true;
                            info!(node = %self.config.node, "failover: active, the addresses are held");
                            self.transition(Role::Active);
                            // Tell the peers now rather than an interval later: a
                            // dual-active conflict or a preemption settles sooner.
                            self.send(State::Active);
                        }
                    }
                    Report::VipFailed => self.step(Event::VipFailed),
                },
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                    self.retry_at = None;
                    self.step(Event::Retry);
                }
                changed = self.settings.changed(), if settings_open => {
                    if changed.is_err() {
                        settings_open = false;
                        continue;
                    }
                    let new = self.settings.borrow_and_update().clone();
                    if new.interval != self.config.interval {
                        send = timer(new.interval);
                        check = timer(check_every(new.interval));
                    }
                    self.reconfigure(new);
                }
            }
        }
        self.step(Event::Shutdown);
        for (_, (w, _)) in self.watchers.drain() {
            w.abort();
        }
        // Closing the queue ends the address task once it has done what is queued; it
        // then closes the hook queue the same way.
        drop(self.commands);
        let waited = tokio::time::timeout(STOP_TIMEOUT, async {
            let _ = addresses.await;
            let _ = hooks.await;
        })
        .await;
        if waited.is_err() {
            warn!("failover: stop did not finish removing addresses or running a hook in time");
        }
        info!("failover: stopped");
    }

    fn step(&mut self, event: Event<'_>) {
        let now = self.now();
        let actions = self.machine.step(now, event);
        self.act(actions);
    }

    /// The heartbeat timer fired for `due`: a tick later than half an interval is a
    /// missed deadline (the thread did not get the CPU in time), counted.
    fn on_time(&mut self, due: Instant) {
        let late = Instant::now().saturating_duration_since(due);
        if late > self.config.interval / 2 {
            self.metrics.timer_late.inc();
            self.warn(format_args!(
                "heartbeat sent {late:?} after its time: this machine is overloaded"
            ));
        }
    }

    fn reconfigure(&mut self, new: Arc<Failover>) {
        info!(
            priority = new.priority,
            preempt = new.preempt,
            interval = ?new.interval,
            dead_after = ?new.dead_after,
            peers = ?new.peers,
            "failover: settings changed at reload"
        );
        self.machine
            .reconfigure(new.priority, new.preempt, millis(new.dead_after));
        self.config = new;
        self.watch_peers();
        self.step(Event::Tick);
        // The peers learn a new priority now, not an interval later.
        self.send(self.advertised());
    }

    fn received(&mut self, data: &[u8], from: SocketAddr) {
        let source = from.ip().to_canonical();
        let accepted = if self
            .config
            .peers
            .iter()
            .any(|p| p.ip().to_canonical() == source)
        {
            self.receiver.accept(data, &self.config.secret, unix_ms())
        } else {
            Err(Reject::Source)
        };
        match accepted {
            Ok(hb) => {
                let arrived = Instant::now();
                self.status.send_modify(|s| s.last_heard = Some(arrived));
                self.on_arrival(&hb.node, arrived);
                // A watch not connected yet tries at once: the peer is up.
                for (addr, (_, nudge)) in &self.watchers {
                    if addr.ip().to_canonical() == source {
                        nudge.notify_one();
                    }
                }
                let key = canonical(from);
                if self.names.get(&key).is_none_or(|n| *n != hb.node) {
                    self.names.insert(key, hb.node.clone());
                }
                if self.states.get(&hb.node) != Some(&hb.state) {
                    info!(peer = %from, node = %hb.node, state = hb.state.name(), "failover: peer state");
                    self.states.insert(hb.node.clone(), hb.state);
                }
                self.step(Event::Heartbeat {
                    from: &hb.node,
                    priority: hb.priority,
                    state: hb.state,
                });
            }
            Err(reject) => {
                self.metrics
                    .rejected
                    .with_label_values(&[reject.reason()])
                    .inc();
                debug!(from = %from, reason = reject.reason(), "failover: heartbeat rejected");
                // `own` from a peer's address: two nodes share a name.
                self.warn(format_args!(
                    "heartbeat from {from} rejected ({})",
                    reject.reason()
                ));
            }
        }
    }

    /// Starts an exit watch for each peer that has none, and ends those of addresses
    /// no longer listed.
    fn watch_peers(&mut self) {
        let peers = self.config.peers.clone();
        self.watchers.retain(|addr, (w, _)| {
            let keep = peers.contains(addr);
            if !keep {
                w.abort();
            }
            keep
        });
        for peer in peers {
            self.watchers.entry(peer).or_insert_with(|| {
                let nudge = Arc::new(Notify::new());
                let task = tokio::spawn(exit::watch(
                    self.config.bind.ip(),
                    peer,
                    self.exits.clone(),
                    nudge.clone(),
                ));
                (task, nudge)
            });
        }
    }

    /// The exit watch saw `peer`'s process end without a resign: the node that
    /// address's heartbeats named is gone, at once (unless `detect_exit` is off).
    fn exited(&mut self, peer: SocketAddr) {
        if !self.config.detect_exit {
            debug!(peer = %peer, "failover: peer exited (detect_exit off: waiting for dead_after)");
            return;
        }
        let Some(node) = self.names.get(&canonical(peer)).cloned() else {
            debug!(peer = %peer, "failover: an unheard peer exited");
            return;
        };
        if !self.machine.knows(&node) {
            debug!(peer = %peer, node = %node, "failover: peer exited, already gone");
            return;
        }
        self.metrics.peer_exits.inc();
        info!(peer = %peer, node = %node, "failover: peer exited without resigning (its heartbeat port refuses connections): gone at once");
        self.heard.remove(&node);
        self.states.remove(&node);
        self.step(Event::Exited { from: &node });
    }

    /// Counts a heartbeat that came more than 1.5 intervals after the previous one of
    /// the same peer (but within `dead_after`: after that the peer was gone, and this
    /// is its return).
    fn on_arrival(&mut self, node: &str, arrived: Instant) {
        let previous = match self.heard.get_mut(node) {
            Some(at) => Some(std::mem::replace(at, arrived)),
            None => {
                self.heard.insert(node.to_string(), arrived);
                None
            }
        };
        if let Some(previous) = previous {
            let gap = arrived.saturating_duration_since(previous);
            if gap > self.config.interval * 3 / 2 && gap <= self.config.dead_after {
                self.metrics.heartbeats_late.inc();
                debug!(peer = node, gap = ?gap, "failover: late heartbeat");
            }
        }
    }

    /// Logs at warn at most once per [`WARN_EVERY`]; the rest at debug, counted.
    fn warn(&mut self, what: std::fmt::Arguments<'_>) {
        let now = Instant::now();
        if self
            .warned
            .is_some_and(|t| now.duration_since(t) < WARN_EVERY)
        {
            self.suppressed += 1;
            debug!("failover: {what}");
            return;
        }
        warn!(suppressed_since_last = self.suppressed, "failover: {what}");
        self.warned = Some(now);
        self.suppressed = 0;
    }

    /// What the heartbeats say: active only once the addresses are held.
    fn advertised(&self) -> State {
        match self.machine.role() {
            Role::Active if !self.held => State::Passive,
            role => role.state(),
        }
    }

    /// Sends this node's heartbeat, saying `state`, to every peer. Never waits: a full
    /// socket buffer drops this one, the next comes an interval later.
    fn send(&mut self, state: State) {
        if self.resigned {
            return;
        }
        self.sequence += 1;
        self.sent_at_ms = self.sent_at_ms.max(unix_ms());
        let hb = Heartbeat {
            node: self.config.node.clone(),
            priority: self.config.priority,
            state,
            sequence: self.sequence,
            sent_at_ms: self.sent_at_ms,
        };
        let data = wire::encode(&hb, &self.config.secret);
        let config = self.config.clone();
        for peer in &config.peers {
            if let Err(e) = self.socket.try_send_to(&data, *peer) {
                self.warn(format_args!("heartbeat to {peer} not sent: {e}"));
            }
        }
    }

    fn command(&mut self, c: Command) {
        if let Err(e) = self.commands.try_send(c) {
            error!(command = ?c, error = %e, "failover: address task not keeping up; command dropped");
        }
    }

    fn transition(&mut self, role: Role) {
        let name = role_name(role);
        self.metrics.transitions.with_label_values(&[name]).inc();
        self.metrics.active.set(i64::from(role == Role::Active));
        self.status.send_modify(|s| s.role = role);
    }

    fn act(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::BecomeActive => {
                    // Active once the addresses are held (`Report::Acquired`).
                    info!(node = %self.config.node, "failover: taking the addresses");
                    self.held = false;
                    self.command(Command::Acquire);
                }
                Action::BecomePassive => {
                    info!(node = %self.config.node, "failover: becoming passive");
                    self.held = false;
                    self.transition(Role::Passive);
                    self.command(Command::Release { hook: true });
                    self.send(State::Passive);
                }
                Action::Announce => {
                    let now = Instant::now();
                    if self
                        .announced
                        .is_none_or(|t| now.duration_since(t) >= ANNOUNCE_EVERY)
                    {
                        debug!("failover: announcing the addresses again");
                        self.announced = Some(now);
                        self.command(Command::Announce);
                    }
                }
                Action::SendResign => {
                    info!("failover: resigning");
                    for _ in 0..RESIGN_COPIES {
                        self.send(State::Resign);
                    }
                    // Nothing after it: a later `passive` would make the peer wait
                    // `dead_after` for a node that is leaving.
                    self.resigned = true;
                }
                Action::EnterFault => {
                    error!(
                        node = %self.config.node,
                        retry_in = ?self.backoff,
                        "failover: fault, the addresses cannot be held; this node claims nothing until a retry succeeds"
                    );
                    self.held = false;
                    self.transition(Role::Fault);
                    self.command(Command::Release { hook: false });
                    self.send(State::Fault);
                    self.retry_at = Some(Instant::now() + self.backoff);
                    self.backoff = (self.backoff * 2).min(RETRY_MAX);
                }
                Action::LeaveFault => {
                    info!(node = %self.config.node, "failover: leaving fault, passive again");
                    self.transition(Role::Passive);
                    self.send(State::Passive);
                }
            }
        }
    }
}

/// Runs address commands in order; failures of `Acquire` are reported back.
#[cfg(test)]
mod tests;
