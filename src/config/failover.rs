//! `[failover]`: the active-passive pair, checked into [`Failover`]. The shared key is
//! read here, at load time, so that `fulcrum check` and a reload find a missing or
//! empty key file before anything runs with it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use super::raw::{RawFailover, RawVip};
use super::validate::Validator;

pub const DEFAULT_FAILOVER_PRIORITY: u8 = 100;
pub const DEFAULT_FAILOVER_INTERVAL: Duration = Duration::from_millis(200);
/// Heartbeats more frequent than this would only burn CPU and bandwidth.
pub const MIN_FAILOVER_INTERVAL: Duration = Duration::from_millis(10);
/// The longest node name a heartbeat carries.
pub const MAX_NODE_NAME: usize = 64;
/// The shortest shared key accepted, in bytes (as written in the file, trimmed).
pub(super) const MIN_SECRET_LEN: usize = 32;
/// Linux interface names are at most 15 bytes (IFNAMSIZ less the NUL).
const MAX_INTERFACE_NAME: usize = 15;

/// `[failover]`, validated. Read at start: a reload that changes it is logged and
/// takes effect at the next restart.
#[derive(Clone, PartialEq, Eq)]
pub struct Failover {
    pub node: String,
    /// 1..=254, higher wins.
    pub priority: u8,
    /// The UDP address heartbeats are sent from and received on.
    pub bind: SocketAddr,
    pub peers: Vec<SocketAddr>,
    pub interval: Duration,
    /// Silence from the active peer after which this node takes over; at least
    /// twice `interval`.
    pub dead_after: Duration,
    pub preempt: bool,
    /// A peer whose process ends without resigning (its heartbeat port, over TCP,
    /// closes and then refuses connections) is gone at once, not after `dead_after`.
    pub detect_exit: bool,
    /// The shared HMAC key: the key file's bytes, surrounding whitespace removed.
    pub secret: Vec<u8>,
    pub vips: Vec<Vip>,
    /// Hooks, resolved against the config file's directory.
    pub on_active: Option<PathBuf>,
    pub on_passive: Option<PathBuf>,
}

/// Never prints the key.
impl std::fmt::Debug for Failover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failover")
            .field("node", &self.node)
            .field("priority", &self.priority)
            .field("bind", &self.bind)
            .field("peers", &self.peers)
            .field("interval", &self.interval)
            .field("dead_after", &self.dead_after)
            .field("preempt", &self.preempt)
            .field("detect_exit", &self.detect_exit)
            .field("secret", &"<redacted>")
            .field("vips", &self.vips)
            .field("on_active", &self.on_active)
            .field("on_passive", &self.on_passive)
            .finish()
    }
}

/// A virtual address: the address with its prefix length, and the interface it goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    /// Host bits kept: `10.99.0.100/24` is the address 10.99.0.100 with prefix 24.
    pub address: IpNet,
    pub interface: String,
}

/// The default `dead_after`, from the interval and this node's priority: what
/// keepalived's backup waits at the same advertisement interval and priority (three
/// intervals and a skew of `(256 - priority) / 256` of one, so that the best backup
/// takes over first and two backups never race), less the machine's check granularity
/// (`interval / 10`), so that a takeover never comes later than keepalived's. Whole
/// milliseconds, rounded down.
pub fn default_dead_after(interval: Duration, priority: u8) -> Duration {
    let skew = interval * (256 - u32::from(priority)) / 256;
    let wait = interval * 3 + skew - interval / 10;
    Duration::from_millis(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX))
}

impl Validator<'_> {
    pub(super) fn dir(&self) -> PathBuf {
        self.file.parent().unwrap_or(Path::new("")).to_path_buf()
    }

    fn socket_addr(&mut self, v: &Spanned<String>, key: &str) -> Option<SocketAddr> {
        match v.get_ref().parse::<SocketAddr>() {
            Ok(a) if a.port() != 0 => Some(a),
            _ => {
                self.err(
                    Some(v.span()),
                    key,
                    format!(
                        "is not an address with a port like \"10.99.0.11:8411\", got {:?}",
                        v.get_ref()
                    ),
                );
                None
            }
        }
    }

    pub(super) fn failover(&mut self, f: &RawFailover) -> Failover {
        let node = f.node.get_ref().clone();
        if node.is_empty() || node.len() > MAX_NODE_NAME {
            self.err(
                Some(f.node.span()),
                "failover.node",
                format!("must be 1 to {MAX_NODE_NAME} bytes long, got {node:?}"),
            );
        }
        let priority = self.int(
            &f.priority,
            "failover.priority",
            1,
            254,
            i64::from(DEFAULT_FAILOVER_PRIORITY),
        ) as u8;
        let bind = self
            .socket_addr(&f.bind, "failover.bind")
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let mut peers = Vec::new();
        for (i, p) in f.peers.get_ref().iter().enumerate() {
            let key = format!("failover.peers[{i}]");
            if let Some(a) = self.socket_addr(p, &key) {
                if a == bind {
                    self.err(Some(p.span()), key, "is this node's own `bind`");
                } else {
                    peers.push(a);
                }
            }
        }
        if f.peers.get_ref().is_empty() {
            self.err(
                Some(f.peers.span()),
                "failover.peers",
                "must list at least one peer address",
            );
        }
        let interval = self.duration(&f.interval, "failover.interval", DEFAULT_FAILOVER_INTERVAL);
        let interval = if interval < MIN_FAILOVER_INTERVAL {
            let span = f.interval.as_ref().map(|v| v.span());
            self.err(span, "failover.interval", "must be at least 10ms");
            DEFAULT_FAILOVER_INTERVAL
        } else {
            interval
        };
        let dead_after = self.duration(
            &f.dead_after,
            "failover.dead_after",
            default_dead_after(interval, priority),
        );
        // One late heartbeat must never be taken for a dead peer.
        if dead_after < interval * 2 {
            let span = f.dead_after.as_ref().map(|v| v.span());
            self.err(
                span,
                "failover.dead_after",
                format!(
                    "must be at least twice `failover.interval` ({}), got {}",
                    humantime::format_duration(interval),
                    humantime::format_duration(dead_after)
                ),
            );
        }
        let secret = self.secret(&f.secret_file);
        let mut vips: Vec<Vip> = Vec::new();
        for (i, v) in f.vips.iter().enumerate() {
            if let Some(vip) = self.vip(i, v) {
                if vips.iter().any(|o| o.address.addr() == vip.address.addr()) {
                    self.err(
                        Some(v.get_ref().address.span()),
                        format!("failover.vips[{i}].address"),
                        format!("{} is listed twice", vip.address.addr()),
                    );
                }
                vips.push(vip);
            }
        }
        let hook = |h: &Option<Spanned<String>>, this: &Self| {
            h.as_ref().map(|h| this.dir().join(h.get_ref()))
        };
        let on_active = hook(&f.on_active, self);
        let on_passive = hook(&f.on_passive, self);
        for (h, key) in [
            (&f.on_active, "failover.on_active"),
            (&f.on_passive, "failover.on_passive"),
        ] {
            if let Some(h) = h {
                if h.get_ref().trim().is_empty() {
                    self.err(Some(h.span()), key, "must name a program");
                }
            }
        }
        Failover {
            node,
            priority,
            bind,
            peers,
            interval,
            dead_after,
            preempt: f.preempt.unwrap_or(true),
            detect_exit: f.detect_exit.unwrap_or(true),
            secret,
            vips,
            on_active,
            on_passive,
        }
    }

    fn secret(&mut self, file: &Spanned<String>) -> Vec<u8> {
        let path = self.dir().join(file.get_ref());
        if let Ok(meta) = std::fs::metadata(&path) {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                self.err(
                    Some(file.span()),
                    "failover.secret_file",
                    format!(
                        "{} is readable by group or others (mode {:o}): make it readable by fulcrum only (chmod 600)",
                        path.display(),
                        mode & 0o777
                    ),
                );
            }
        }
        match std::fs::read(&path) {
            Ok(bytes) if bytes.trim_ascii().len() >= MIN_SECRET_LEN => bytes.trim_ascii().to_vec(),
            Ok(bytes) if bytes.trim_ascii().is_empty() => {
                self.err(
                    Some(file.span()),
                    "failover.secret_file",
                    format!("{} is empty", path.display()),
                );
                Vec::new()
            }
            Ok(bytes) => {
                self.err(
                    Some(file.span()),
                    "failover.secret_file",
                    format!(
                        "{} holds {} bytes: a key needs at least {MIN_SECRET_LEN} (head -c 32 /dev/urandom | base64 > failover.key)",
                        path.display(),
                        bytes.trim_ascii().len()
                    ),
                );
                Vec::new()
            }
            Err(e) => {
                self.err(
                    Some(file.span()),
                    "failover.secret_file",
                    format!("{} cannot be read: {e}", path.display()),
                );
                Vec::new()
            }
        }
    }

    fn vip(&mut self, i: usize, v: &Spanned<RawVip>) -> Option<Vip> {
        let v = v.get_ref();
        let address = match v.address.get_ref().trim().parse::<IpNet>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    Some(v.address.span()),
                    format!("failover.vips[{i}].address"),
                    format!(
                        "is not an address with a prefix length like \"10.99.0.100/24\", got {:?}",
                        v.address.get_ref()
                    ),
                );
                None
            }
        };
        let interface = v.interface.get_ref();
        let bad_interface = interface.is_empty()
            || interface.len() > MAX_INTERFACE_NAME
            || interface
                .bytes()
                .any(|b| b == b'/' || b.is_ascii_whitespace() || b == 0);
        if bad_interface {
            self.err(
                Some(v.interface.span()),
                format!("failover.vips[{i}].interface"),
                format!(
                    "must be an interface name of 1 to {MAX_INTERFACE_NAME} bytes without '/' or spaces, got {interface:?}"
                ),
            );
            return None;
        }
        Some(Vip {
            address: address?,
            interface: interface.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_default_wait_is_keepalived_s_less_the_check_granularity() {
        // keepalived: 3 x 100 + (256 - 100) / 256 x 100 = 360.9 ms; less 10 ms.
        assert_eq!(default_dead_after(ms(100), 100), ms(350));
        assert_eq!(default_dead_after(ms(200), 100), ms(701));
        assert_eq!(default_dead_after(ms(50), 100), ms(175));
        assert_eq!(default_dead_after(ms(20), 100), ms(70));
        // A higher priority waits less: the best backup takes over first.
        assert!(default_dead_after(ms(100), 200) < default_dead_after(ms(100), 100));
        assert_eq!(default_dead_after(ms(100), 254), ms(290));
        assert_eq!(default_dead_after(ms(100), 1), ms(389));
        // Never under twice the interval, which `check` refuses.
        for p in 1..=254 {
            for i in [10, 20, 100, 1000] {
                assert!(
                    default_dead_after(ms(i), p) >= ms(i) * 2,
                    "{i} ms, priority {p}"
                );
            }
        }
    }
}
