//! `[global]`, `[admin]`, `[cache]` and `[resolver]`: the process-wide settings.

use super::defaults::DEFAULT_MAX_CONNECTIONS;
use super::defaults::DEFAULT_SHUTDOWN_TIMEOUT;
use super::defaults::DEFAULT_WORKERS;
use super::defaults::MAX_WORKERS;
use super::raw::RawAdmin;
use super::raw::RawCache;
use super::raw::RawGlobal;
use super::raw::RawResolver;
use super::validate::Validator;
use std::net::SocketAddr;
use std::time::Duration;

/// `[cache]`: the shared response cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// Bytes of stored responses in total.
    pub max_size: u64,
    /// Larger responses pass through unstored.
    pub max_object_size: u64,
    /// Bytes of responses being stored at once (teed into the store while they
    /// stream); past it, further responses stream unstored.
    pub max_inflight: u64,
}

impl CacheSettings {
    /// The defaults, `max_inflight` a quarter of `max_size`.
    pub fn new(max_size: u64, max_object_size: u64) -> CacheSettings {
        CacheSettings {
            max_size,
            max_object_size,
            max_inflight: max_size / 4,
        }
    }
}

pub const DEFAULT_CACHE_MAX_SIZE: u64 = 256 << 20;

pub const DEFAULT_CACHE_MAX_OBJECT_SIZE: u64 = 8 << 20;

/// `[admin]`: the admin API's listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub bind: SocketAddr,
    /// The bearer token POST requests need, read from `token_file` (whitespace trimmed).
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Global {
    /// Runtime worker threads; 0 means one per CPU.
    pub workers: usize,
    /// `true`: one scheduler whose worker threads steal each other's tasks. `false`:
    /// thread per core, each worker its own single-threaded scheduler accepting on its
    /// own `SO_REUSEPORT` socket of every listener address.
    pub work_stealing: bool,
    pub max_connections: usize,
    pub shutdown_timeout: Duration,
    pub log_format: LogFormat,
    pub access_log: bool,
    /// Reload when the file changes on disk.
    pub watch_config: bool,
    /// How long a TLS session ticket key is the newest (the previous one still opens
    /// tickets); zero: no tickets, resumption from the session cache only.
    pub tls_ticket_rotation: Duration,
}

impl Global {
    /// Worker threads: `workers`, or one per CPU when it is 0.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            return self.workers;
        }
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    /// Whether each worker thread runs its own single-threaded scheduler (thread per
    /// core): `work_stealing = false` with more than one worker.
    pub fn thread_per_core(&self) -> bool {
        !self.work_stealing && self.worker_count() > 1
    }
}

pub const DEFAULT_TLS_TICKET_ROTATION: Duration = Duration::from_secs(12 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `[resolver]`: how backends with `resolve` are looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolver {
    /// Name servers; empty: the system's (`/etc/resolv.conf`).
    pub servers: Vec<SocketAddr>,
    /// The most records one name gives backends; more are dropped with a warning.
    pub resolve_max: usize,
}

pub const DEFAULT_RESOLVE_MAX: usize = 256;

/// How often an upstream's `srv` name is looked up again (sooner on a shorter TTL).
pub const SRV_INTERVAL: Duration = Duration::from_secs(30);

/// The shortest re-resolution interval.
pub const MIN_RESOLVE: Duration = Duration::from_secs(1);

impl Validator<'_> {
    pub(super) fn resolver(&mut self, r: Option<&RawResolver>) -> Resolver {
        let mut out = Resolver {
            servers: Vec::new(),
            resolve_max: DEFAULT_RESOLVE_MAX,
        };
        let Some(r) = r else { return out };
        for (i, s) in r
            .servers
            .iter()
            .flat_map(|s| s.get_ref().iter())
            .enumerate()
        {
            let text = s.get_ref();
            let parsed = text.parse::<SocketAddr>().ok().or_else(|| {
                text.parse::<std::net::IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, 53))
            });
            match parsed {
                Some(a) => out.servers.push(a),
                None => self.err(
                    Some(s.span()),
                    format!("resolver.servers[{i}]"),
                    format!("is not an address like \"127.0.0.1:53\", got {text:?}"),
                ),
            }
        }
        out.resolve_max = self.int(
            &r.resolve_max,
            "resolver.resolve_max",
            1,
            65536,
            DEFAULT_RESOLVE_MAX as i64,
        ) as usize;
        out
    }

    pub(super) fn cache(&mut self, c: &RawCache) -> CacheSettings {
        let max_size = self.size(&c.max_size, "cache.max_size", DEFAULT_CACHE_MAX_SIZE);
        let max_object_size = self.size(
            &c.max_object_size,
            "cache.max_object_size",
            DEFAULT_CACHE_MAX_OBJECT_SIZE,
        );
        if max_size == 0 {
            if let Some(v) = &c.max_size {
                self.err(
                    Some(v.span()),
                    "cache.max_size",
                    "must be greater than zero",
                );
            }
        }
        if max_object_size == 0 {
            if let Some(v) = &c.max_object_size {
                self.err(
                    Some(v.span()),
                    "cache.max_object_size",
                    "must be greater than zero",
                );
            }
        } else if max_object_size > max_size {
            if let Some(v) = &c.max_object_size {
                self.err(
                    Some(v.span()),
                    "cache.max_object_size",
                    format!("must not be larger than cache.max_size ({max_size} bytes)"),
                );
            }
        }
        // Stored objects are weighed in 32 bits.
        if max_object_size > u64::from(u32::MAX) {
            if let Some(v) = &c.max_object_size {
                self.err(
                    Some(v.span()),
                    "cache.max_object_size",
                    "must be at most 4GiB",
                );
            }
        }
        let max_inflight = self.size(&c.max_inflight, "cache.max_inflight", max_size / 4);
        CacheSettings {
            max_size,
            max_object_size,
            max_inflight,
        }
    }

    pub(super) fn admin(&mut self, a: &RawAdmin) -> Admin {
        let bind = match a.bind.get_ref().parse::<SocketAddr>() {
            Ok(b) => b,
            Err(_) => {
                self.err(
                    Some(a.bind.span()),
                    "admin.bind",
                    format!(
                        "is not an address like \"127.0.0.1:9090\", got {:?}",
                        a.bind.get_ref()
                    ),
                );
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        };
        let token = a
            .token_file
            .as_ref()
            .and_then(|t| self.secret_file(t, "admin.token_file"));
        if token.is_none() && a.token_file.is_none() && !bind.ip().is_loopback() {
            self.err(
                Some(a.bind.span()),
                "admin.bind",
                format!(
                    "{bind} is not a loopback address: set admin.token_file, or anyone who reaches it can reload, drain and purge"
                ),
            );
        }
        Admin { bind, token }
    }

    pub(super) fn global(&mut self, g: Option<&RawGlobal>) -> Global {
        let Some(g) = g else {
            return Global {
                workers: DEFAULT_WORKERS,
                work_stealing: true,
                max_connections: DEFAULT_MAX_CONNECTIONS,
                shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
                log_format: LogFormat::Text,
                access_log: true,
                watch_config: true,
                tls_ticket_rotation: DEFAULT_TLS_TICKET_ROTATION,
            };
        };
        let workers = self.int(&g.workers, "global.workers", 0, MAX_WORKERS, 0) as usize;
        let max_connections = self.int(
            &g.max_connections,
            "global.max_connections",
            1,
            i64::from(u32::MAX),
            DEFAULT_MAX_CONNECTIONS as i64,
        ) as usize;
        // Zero: exit without waiting for open connections.
        let shutdown_timeout = self.duration_or_zero(
            &g.shutdown_timeout,
            "global.shutdown_timeout",
            DEFAULT_SHUTDOWN_TIMEOUT,
        );
        let log_format = self.one_of(
            &g.log_format,
            "global.log_format",
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
            LogFormat::Text,
        );
        let tls_ticket_rotation = self.duration_or_zero(
            &g.tls_ticket_rotation,
            "global.tls_ticket_rotation",
            DEFAULT_TLS_TICKET_ROTATION,
        );
        if !tls_ticket_rotation.is_zero() && tls_ticket_rotation < Duration::from_secs(60) {
            if let Some(v) = &g.tls_ticket_rotation {
                self.err(
                    Some(v.span()),
                    "global.tls_ticket_rotation",
                    format!(
                        "must be \"0\" (no tickets) or at least 1m, got {:?}",
                        v.get_ref()
                    ),
                );
            }
        }
        Global {
            workers,
            work_stealing: g.work_stealing.unwrap_or(true),
            max_connections,
            shutdown_timeout,
            log_format,
            access_log: g.access_log.unwrap_or(true),
            watch_config: g.watch_config.unwrap_or(true),
            tls_ticket_rotation,
        }
    }
}
