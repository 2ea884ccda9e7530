//! What the rest of the process holds of the failover driver: the sockets it is
//! started on, its metrics, the status `/status` shows, the handle that hands it new
//! settings (and the rule of what a reload may change), and the running driver.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::{IntCounter, IntCounterVec, IntGauge};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::machine::Role;
use crate::config::Failover;

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

pub(super) fn role_name(role: Role) -> &'static str {
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
    pub(super) status: watch::Receiver<Status>,
    pub(super) settings: Arc<watch::Sender<Arc<Failover>>>,
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
    pub(super) control: Control,
    pub(super) stop: CancellationToken,
    pub(super) done: oneshot::Receiver<()>,
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
