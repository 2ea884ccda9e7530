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
//!   [`HOOK_TIMEOUT`]: after the addresses are added and announced, never before.
//!
//! Settings a reload may change (priority, preempt, interval, dead_after, peers, the
//! hooks) arrive on a `watch` channel and apply at once. A graceful stop sends a few
//! resign heartbeats first, then removes the addresses. The role is published on a
//! `watch` channel for `/status`; the metrics are plain prometheus handles given by
//! the runtime.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{IntCounter, IntCounterVec, IntGauge};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::exit;
use super::machine::{Action, Event, Machine, Role};
use super::neighbour;
use super::netlink::{Link, Netlink};
use super::wire::{self, Heartbeat, Receiver, Reject, State};
use crate::config::{Failover, Vip};

/// How long a hook may run before it is killed.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Resign heartbeats sent on a graceful stop: one lost datagram does not delay the
/// peer's takeover to `dead_after`.
const RESIGN_COPIES: u32 = 3;
/// Announcements per address per takeover, the time between them, and the rounds
/// after which sends that keep failing are given up.
const ANNOUNCE_COUNT: u32 = 3;
const ANNOUNCE_GAP: Duration = Duration::from_millis(150);
const ANNOUNCE_ROUNDS: u32 = ANNOUNCE_COUNT + 5;
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

/// The metrics the driver keeps, handed in by the runtime.
#[derive(Clone)]
pub struct Metrics {
    /// `fulcrum_failover_active`
    pub active: IntGauge,
    /// `fulcrum_failover_transitions_total{to}`
    pub transitions: IntCounterVec,
    /// `fulcrum_failover_heartbeats_rejected_total{reason}`
    pub rejected: IntCounterVec,
    /// `fulcrum_failover_heartbeats_late_total`
    pub heartbeats_late: IntCounter,
    /// `fulcrum_failover_timer_late_total`
    pub timer_late: IntCounter,
    /// `fulcrum_failover_announce_failures_total{family}`
    pub announce_failures: IntCounterVec,
    /// `fulcrum_failover_peer_exits_total`
    pub peer_exits: IntCounter,
}

/// What `/status` shows.
#[derive(Debug, Clone)]
pub struct Status {
    pub node: String,
    pub role: Role,
    /// When the last valid heartbeat of any peer arrived.
    pub last_heard: Option<Instant>,
}

impl Status {
    pub fn state(&self) -> &'static str {
        role_name(self.role)
    }

    pub fn peer_last_seen_ms(&self) -> Option<u64> {
        self.last_heard
            .map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX))
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Active => "active",
        Role::Passive => "passive",
        Role::Fault => "fault",
    }
}

/// The sockets of a driver: heartbeats over UDP, and the exit watch's listener over
/// TCP on the same address and port.
pub struct Bound {
    pub heartbeat: std::net::UdpSocket,
    pub exits: std::net::TcpListener,
}

/// Binds the heartbeat sockets: done with the listeners, so that a port in use stops
/// the start the same way.
pub fn bind(config: &Failover) -> io::Result<Bound> {
    bind_at(config.bind)
}

/// Binds both sockets at `addr`; with port 0 the TCP one takes the port the UDP one
/// was given.
pub fn bind_at(addr: SocketAddr) -> io::Result<Bound> {
    // Port 0: the port the UDP socket gets may be taken for TCP (ephemeral ports are
    // shared by outgoing connections); another is tried.
    let mut tries = if addr.port() == 0 { 16 } else { 1 };
    loop {
        let heartbeat = std::net::UdpSocket::bind(addr)?;
        heartbeat.set_nonblocking(true)?;
        match std::net::TcpListener::bind(heartbeat.local_addr()?) {
            Ok(exits) => {
                exits.set_nonblocking(true)?;
                return Ok(Bound { heartbeat, exits });
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && tries > 1 => tries -= 1,
            Err(e) => return Err(e),
        }
    }
}

/// What the rest of the process sees of a running driver: its role, and the way to
/// hand it new settings.
#[derive(Clone)]
pub struct Control {
    status: watch::Receiver<Status>,
    settings: Arc<watch::Sender<Arc<Failover>>>,
}

impl Control {
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// The settings the driver runs with now.
    pub fn settings(&self) -> Arc<Failover> {
        self.settings.borrow().clone()
    }

    /// New settings from a reload; [`reloadable`] must have accepted them.
    pub fn update(&self, config: Failover) {
        self.settings.send_replace(Arc::new(config));
    }
}

/// Whether a reload may go from `old` to `new`: the node's name, its heartbeat
/// address, the key and the addresses it holds cannot change under a running pair
/// (the peer would see a stranger, or both would hold the addresses); the error names
/// the first key that did.
pub fn reloadable(old: &Failover, new: &Failover) -> Result<(), String> {
    let fixed = if old.node != new.node {
        "failover.node"
    } else if old.bind != new.bind {
        "failover.bind"
    } else if old.secret != new.secret {
        "failover.secret_file (the key)"
    } else if old.vips != new.vips {
        "failover.vips"
    } else {
        return Ok(());
    };
    Err(format!(
        "{fixed} cannot change at reload: restart to change it"
    ))
}

/// A running driver.
pub struct Running {
    control: Control,
    stop: CancellationToken,
    done: oneshot::Receiver<()>,
}

impl Running {
    pub fn status(&self) -> watch::Receiver<Status> {
        self.control.status()
    }

    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// The graceful stop: resign if active, remove the addresses, then return.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.done.await;
    }
}

/// Starts the driver on a socket from [`bind`], on a thread of its own.
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

/// Work for the address task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    /// Add and announce every address, then run `on_active`.
    Acquire,
    /// Remove every address, then run `on_passive` when `hook`.
    Release { hook: bool },
    /// Announce again.
    Announce,
}

/// Reports from the address task.
enum Report {
    /// Every address is held (and being announced).
    Acquired,
    VipFailed,
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
async fn run_addresses(
    vips: Vec<Vip>,
    mut commands: mpsc::Receiver<Command>,
    reports: mpsc::Sender<Report>,
    hooks: mpsc::Sender<Hook>,
    failures: IntCounterVec,
) {
    let mut netlink: Option<Netlink> = None;
    // The announcements under way: a node that gives the addresses away stops
    // announcing them, so that its last one never follows the new holder's.
    let mut series = CancellationToken::new();
    // Whether the addresses are held: only then are they announced again.
    let mut held = false;
    while let Some(command) = commands.recv().await {
        series.cancel();
        series = CancellationToken::new();
        if !vips.is_empty() && netlink.is_none() {
            match Netlink::connect() {
                Ok(n) => netlink = Some(n),
                Err(e) => {
                    error!(error = %e, "failover: no netlink socket");
                    if command == Command::Acquire {
                        let _ = reports.try_send(Report::VipFailed);
                    }
                    continue;
                }
            }
        }
        match command {
            Command::Acquire => match acquire(netlink.as_ref(), &vips).await {
                Ok(links) => {
                    held = true;
                    announce(&vips, &links, series.clone(), &failures);
                    let _ = reports.try_send(Report::Acquired);
                    let _ = hooks.try_send(Hook::Active);
                }
                Err(e) => {
                    error!(error = %e, "failover: cannot add a virtual address");
                    held = false;
                    release(netlink.as_ref(), &vips).await;
                    let _ = reports.try_send(Report::VipFailed);
                }
            },
            Command::Release { hook } => {
                held = false;
                release(netlink.as_ref(), &vips).await;
                if hook {
                    let _ = hooks.try_send(Hook::Passive);
                }
            }
            Command::Announce if !held => {}
            Command::Announce => {
                if let Some(n) = &netlink {
                    let mut links = Vec::new();
                    for vip in &vips {
                        links.push(n.link(&vip.interface).await.ok());
                    }
                    announce(&vips, &links, series.clone(), &failures);
                }
            }
        }
    }
}

async fn acquire(netlink: Option<&Netlink>, vips: &[Vip]) -> io::Result<Vec<Option<Link>>> {
    let Some(n) = netlink else {
        return Ok(Vec::new());
    };
    let mut links = Vec::new();
    for vip in vips {
        let link = n.link(&vip.interface).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{} on {}: {e}", vip.address, vip.interface),
            )
        })?;
        n.add(vip, &link).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{} on {}: {e}", vip.address, vip.interface),
            )
        })?;
        info!(address = %vip.address, interface = %vip.interface, "failover: address added");
        links.push(Some(link));
    }
    Ok(links)
}

async fn release(netlink: Option<&Netlink>, vips: &[Vip]) {
    let Some(n) = netlink else { return };
    for vip in vips {
        match n.remove(vip).await {
            Ok(()) => {
                debug!(address = %vip.address, interface = %vip.interface, "failover: address removed")
            }
            Err(e) => {
                error!(address = %vip.address, interface = %vip.interface, error = %e, "failover: cannot remove a virtual address")
            }
        }
    }
}

/// One address to announce, and how many of its announcements went out.
struct Target {
    index: u32,
    mac: [u8; 6],
    ip: IpAddr,
    sent: u32,
}

/// Announces every address [`ANNOUNCE_COUNT`] times: the first round now, before
/// this returns (so before the hooks), the rest on a timer of its own. A send that
/// fails is logged and counted and tried again at the next round, for at most
/// [`ANNOUNCE_ROUNDS`] rounds. Stops early when `stop` fires.
fn announce(
    vips: &[Vip],
    links: &[Option<Link>],
    stop: CancellationToken,
    failures: &IntCounterVec,
) {
    let mut targets: Vec<Target> = vips
        .iter()
        .zip(links)
        .filter_map(|(vip, link)| {
            let link = link.as_ref()?;
            let mac: [u8; 6] = link.mac.as_slice().try_into().ok()?;
            Some(Target {
                index: link.index,
                mac,
                ip: vip.address.addr(),
                sent: 0,
            })
        })
        .collect();
    if targets.is_empty() {
        return;
    }
    announce_round(&mut targets, failures);
    let failures = failures.clone();
    tokio::spawn(async move {
        for _ in 1..ANNOUNCE_ROUNDS {
            targets.retain(|t| t.sent < ANNOUNCE_COUNT);
            if targets.is_empty() {
                debug!(count = ANNOUNCE_COUNT, "failover: addresses announced");
                return;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(ANNOUNCE_GAP) => {}
            }
            announce_round(&mut targets, &failures);
        }
        for t in targets.iter().filter(|t| t.sent < ANNOUNCE_COUNT) {
            error!(address = %t.ip, sent = t.sent, "failover: announcements given up");
        }
    });
}

fn announce_round(targets: &mut [Target], failures: &IntCounterVec) {
    for t in targets.iter_mut().filter(|t| t.sent < ANNOUNCE_COUNT) {
        match neighbour::send(t.index, t.mac, t.ip) {
            Ok(()) => t.sent += 1,
            Err(e) => {
                let (family, what) = match t.ip {
                    IpAddr::V4(_) => ("ipv4", "gratuitous ARP"),
                    IpAddr::V6(_) => ("ipv6", "neighbour advertisement"),
                };
                failures.with_label_values(&[family]).inc();
                warn!(address = %t.ip, error = %e, "failover: {what} not sent");
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Hook {
    Active,
    Passive,
}

/// Runs hooks one at a time, in order, each bounded by [`HOOK_TIMEOUT`].
async fn run_hooks(settings: watch::Receiver<Arc<Failover>>, hooks: mpsc::Receiver<Hook>) {
    run_hooks_within(settings, hooks, HOOK_TIMEOUT).await
}

/// Runs each hook as the settings name it when its turn comes (a reload may have
/// changed them).
async fn run_hooks_within(
    settings: watch::Receiver<Arc<Failover>>,
    mut hooks: mpsc::Receiver<Hook>,
    limit: Duration,
) {
    while let Some(hook) = hooks.recv().await {
        let config = settings.borrow().clone();
        let (path, state): (&Option<PathBuf>, &str) = match hook {
            Hook::Active => (&config.on_active, "active"),
            Hook::Passive => (&config.on_passive, "passive"),
        };
        let Some(path) = path else { continue };
        let mut command = tokio::process::Command::new(path);
        command
            .env("FULCRUM_FAILOVER_STATE", state)
            .env("FULCRUM_FAILOVER_NODE", &config.node)
            .stdin(std::process::Stdio::null())
            // A group of its own: at the timeout, what it started goes with it.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(c) => c,
            Err(e) => {
                error!(hook = %path.display(), error = %e, "failover: hook cannot be started");
                continue;
            }
        };
        match tokio::time::timeout(limit, child.wait()).await {
            Ok(Ok(status)) if status.success() => {
                info!(hook = %path.display(), state, "failover: hook finished")
            }
            Ok(Ok(status)) => {
                warn!(hook = %path.display(), state, %status, "failover: hook failed")
            }
            Ok(Err(e)) => error!(hook = %path.display(), error = %e, "failover: hook lost"),
            Err(_) => {
                if let Some(pid) = child.id() {
                    super::group::kill(pid);
                }
                let _ = child.kill().await;
                warn!(hook = %path.display(), state, timeout = ?limit, "failover: hook killed: ran too long");
            }
        }
    }
}

#[cfg(test)]
mod tests;
