//! The address task: adds the virtual addresses over netlink and announces them
//! (gratuitous ARP, unsolicited neighbour advertisement: the first at once, then
//! twice more, 150 ms apart; a send that fails is counted and tried again), removes
//! them, announces again, in the order the driver asks. An address that cannot be
//! added is reported back; the hooks run after the addresses are held or gone.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use prometheus::IntCounterVec;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::hooks::Hook;
use super::neighbour;
use super::netlink::{Link, Netlink};
use crate::config::Vip;

/// Announcements per address per takeover, the time between them, and the rounds
/// after which sends that keep failing are given up.
pub(super) const ANNOUNCE_COUNT: u32 = 3;
pub(super) const ANNOUNCE_GAP: Duration = Duration::from_millis(150);
pub(super) const ANNOUNCE_ROUNDS: u32 = ANNOUNCE_COUNT + 5;

/// Work for the address task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Command {
    /// Add and announce every address, then run `on_active`.
    Acquire,
    /// Remove every address, then run `on_passive` when `hook`.
    Release { hook: bool },
    /// Announce again.
    Announce,
}

/// Reports from the address task.
pub(super) enum Report {
    /// Every address is held (and being announced).
    Acquired,
    VipFailed,
}

pub(super) async fn run_addresses(
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

pub(super) async fn acquire(
    netlink: Option<&Netlink>,
    vips: &[Vip],
) -> io::Result<Vec<Option<Link>>> {
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

pub(super) async fn release(netlink: Option<&Netlink>, vips: &[Vip]) {
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
pub(super) struct Target {
    index: u32,
    mac: [u8; 6],
    ip: IpAddr,
    sent: u32,
}

/// Announces every address [`ANNOUNCE_COUNT`] times: the first round now, before
/// this returns (so before the hooks), the rest on a timer of its own. A send that
/// fails is logged and counted and tried again at the next round, for at most
/// [`ANNOUNCE_ROUNDS`] rounds. Stops early when `stop` fires.
pub(super) fn announce(
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

pub(super) fn announce_round(targets: &mut [Target], failures: &IntCounterVec) {
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
