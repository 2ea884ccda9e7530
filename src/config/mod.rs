//! Configuration: the TOML file as written (`raw`) is checked as a whole and turned into
//! an immutable, validated [`Config`]. Every problem found is reported at once, each with
//! the file, the line and column, and the key path.

mod bgp;
mod compression;
mod error;
mod error_pages;
mod failover;
mod headers;
mod rate_limit;
mod raw;
mod redis;
mod shaping;
mod sni;
mod telemetry;
mod units;
mod unsupported;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use bgp::{Announce, Bgp, BgpPeer, DEFAULT_BGP_PORT};
pub use compression::{Algorithm, Compression};
pub use error::{ConfigError, ConfigErrors};
pub use error_pages::ErrorPage;
pub use failover::{
    default_dead_after, Failover, Vip, DEFAULT_FAILOVER_INTERVAL, DEFAULT_FAILOVER_PRIORITY,
    MAX_NODE_NAME, MIN_FAILOVER_INTERVAL,
};
pub use headers::{value_template as header_value_template, HeaderRules, Piece};
pub use ipnet::IpNet;
pub use rate_limit::{parse_rate, LimitKey, OnStoreError, RateLimit};
use raw::*;
pub use redis::Redis;
pub use shaping::{
    compile as compile_rewrite_regex, template as redirect_template, Part, Redirect, Rewrite,
};
pub use sni::SniRoute;
pub use telemetry::{Collector, Tracing, DEFAULT_TRACE_SAMPLE};
use toml::Spanned;
pub use units::{parse_duration, parse_size};

/// The longest duration any key accepts: longer ones are surely mistakes, and would
/// overflow clocks.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_WORKERS: usize = 0;
pub const MAX_WORKERS: i64 = 1024;
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_HEADER_SIZE: u64 = 64 * 1024;
pub const DEFAULT_MAX_BODY_SIZE: u64 = 0;
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// The window over which `min_rate` is measured.
pub const MIN_RATE_WINDOW: Duration = Duration::from_secs(10);
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);
/// `route.upgrades` when not given.
pub const DEFAULT_UPGRADES: [&str; 1] = ["websocket"];
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_RETRIES: u32 = 1;
pub const MAX_RETRIES: i64 = 100;
pub const DEFAULT_STICKY_COOKIE: &str = "fulcrum_sticky";
pub const DEFAULT_HEALTH_PATH: &str = "/";
pub const DEFAULT_EXPECT_STATUS: (u16, u16) = (200, 399);
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
pub const DEFAULT_PASSIVE_FAILURES: u32 = 5;
pub const DEFAULT_EJECT_FOR: Duration = Duration::from_secs(30);
pub const DEFAULT_WEIGHT: u32 = 1;
pub const MAX_WEIGHT: i64 = 1000;

/// A validated configuration: everything `run` needs, nothing left to check.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from; relative paths in it are relative to its directory.
    pub file: PathBuf,
    pub global: Global,
    pub listeners: Vec<Listener>,
    /// Sorted by name.
    pub upstreams: Vec<Upstream>,
    pub admin: Option<Admin>,
    /// `[cache]`, or its defaults when only routes ask for the cache; `None` when no
    /// route caches.
    pub cache: Option<CacheSettings>,
    /// How routes with `compress = true` compress (the defaults without the section).
    pub compression: Compression,
    /// `[failover]`: the active-passive pair.
    pub failover: Option<Failover>,
    /// `[rate_limit.*]`, by name.
    pub rate_limits: Vec<RateLimit>,
    /// `[redis]`: the store of rate limits shared by several instances.
    pub redis: Option<Redis>,
    /// `[tracing]`: trace context for requests; `None`: `traceparent` passes as any
    /// other header.
    pub tracing: Option<Tracing>,
    /// `[bgp]`: the service addresses announced to the routers.
    pub bgp: Option<Bgp>,
    /// `[resolver]`, or its defaults.
    pub resolver: Resolver,
}

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
    pub max_connections: usize,
    pub shutdown_timeout: Duration,
    pub log_format: LogFormat,
    pub access_log: bool,
    /// Reload when the file changes on disk.
    pub watch_config: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub bind: Vec<SocketAddr>,
    pub protocol: Protocol,
    pub upstream: Option<String>,
    /// Per-listener connection limit; `None` leaves only the global one.
    pub max_connections: Option<usize>,
    pub idle_timeout: Duration,
    pub header_timeout: Duration,
    pub max_header_size: u64,
    /// 0 means no limit.
    pub max_body_size: u64,
    /// http: a request body must have arrived whole within this time (408).
    pub body_timeout: Duration,
    /// http: bytes per second below which an upload or a download is cut, measured
    /// over [`MIN_RATE_WINDOW`]; 0 = off.
    pub min_rate: u64,
    /// http: repeated slashes in a path are merged before routes match it.
    pub merge_slashes: bool,
    /// http/1.1: a client's end of stream (FIN) while its request is in flight cancels
    /// the request; otherwise it is a half-close and the response still goes out.
    pub abort_on_close: bool,
    /// http: `%2F`, `%5C` and `\` in a path are let through (otherwise 400).
    pub allow_encoded_slashes: bool,
    /// http: the backend gets the normalised path rather than the one received.
    pub forward_normalized_path: bool,
    pub access: AccessRules,
    /// http: answer every request with a 308 to the same host and path over https.
    pub redirect_https: bool,
    /// http: rules for every request and response of this listener; a route's own
    /// apply after them.
    pub request_headers: Option<HeaderRules>,
    pub response_headers: Option<HeaderRules>,
    /// http: pages served in place of fulcrum's own error bodies, by status.
    pub error_pages: Vec<ErrorPage>,
    /// http: tried in order, the first match wins.
    pub routes: Vec<Route>,
    /// `[listener.tls]`: TLS termination.
    pub tls: Option<ListenerTls>,
    /// Every connection starts with a PROXY protocol header (v1 or v2) whose source
    /// address is the client's.
    pub proxy_protocol: bool,
    /// The `[rate_limit.*]` rule every request (tcp: every connection) goes through.
    pub rate_limit: Option<String>,
    /// http: peers whose `X-Forwarded-For` / `Forwarded` name the client.
    pub trusted_proxies: Vec<IpNet>,
    /// tcp: routes by the ClientHello's server name, tried in order.
    pub sni_routes: Vec<SniRoute>,
    /// Connections one client address may hold.
    pub max_connections_per_client: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V12,
    V13,
}

/// `[listener.tls]`, with every certificate and key already read, parsed and matched.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    /// In the order written: SNI picks by each certificate's names, the first is the
    /// default.
    pub certificates: Vec<Arc<rustls::sign::CertifiedKey>>,
    pub min_version: TlsVersion,
    /// Protocol names offered by ALPN, in preference order.
    pub alpn: Vec<Vec<u8>>,
    /// Require client certificates signed by one of these.
    pub client_ca: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
}

impl PartialEq for ListenerTls {
    fn eq(&self, o: &Self) -> bool {
        self.min_version == o.min_version
            && self.alpn == o.alpn
            && self.client_ca == o.client_ca
            && self.certificates.len() == o.certificates.len()
            && self
                .certificates
                .iter()
                .zip(&o.certificates)
                .all(|(a, b)| a.cert == b.cert && a.ocsp == b.ocsp)
    }
}

/// `upstream.NAME.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge over plain TCP.
    H2c,
    /// HTTP/2 over TLS (ALPN `h2`).
    H2,
    /// TLS offering `h2` and `http/1.1`: what each backend picks.
    Auto,
}

impl UpstreamProtocol {
    /// HTTP/2 is (or may be) spoken to the backends.
    pub fn is_http2(self) -> bool {
        self != UpstreamProtocol::Http1
    }

    /// The ALPN protocols offered to the backends over TLS.
    pub fn alpn(self) -> &'static [&'static [u8]] {
        match self {
            UpstreamProtocol::Http1 => &[b"http/1.1"],
            UpstreamProtocol::H2c | UpstreamProtocol::H2 => &[b"h2"],
            UpstreamProtocol::Auto => &[b"h2", b"http/1.1"],
        }
    }
}

pub const DEFAULT_H2_KEEPALIVE: Duration = Duration::from_secs(30);

/// One `[[listener.route]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub host: Option<HostPattern>,
    pub path_prefix: Option<String>,
    /// Upper case; empty means any method.
    pub methods: Vec<String>,
    /// Lower-case names, exact values.
    pub headers: Vec<(String, String)>,
    pub target: RouteTarget,
    /// Time allowed for the upstream's response headers.
    pub timeout: Duration,
    /// Served through the response cache.
    pub cache: bool,
    /// `Upgrade` protocols passed through, lower case; never `h2c`.
    pub upgrades: Vec<String>,
    /// Static routes: serve path segments that start with a dot.
    pub static_hidden: bool,
    /// Upstream routes: the path sent to the upstream.
    pub rewrite: Option<Rewrite>,
    /// Applied after the listener's.
    pub request_headers: Option<HeaderRules>,
    pub response_headers: Option<HeaderRules>,
    /// Responses compressed as `[compression]` says.
    pub compress: bool,
    /// The `[rate_limit.*]` rule the route's requests go through, after the
    /// listener's.
    pub rate_limit: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Lower case.
    Exact(String),
    /// `*.example.com` kept as `.example.com`, lower case: one or more labels before it.
    Suffix(String),
}

impl HostPattern {
    /// `host` without its port; compared without regard to case.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => host.eq_ignore_ascii_case(h),
            HostPattern::Suffix(s) => {
                host.len() > s.len()
                    && host.is_char_boundary(host.len() - s.len())
                    && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
                    && !host[..host.len() - s.len()].ends_with('.')
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    Upstream(String),
    /// A directory, already resolved against the config file's directory.
    Static(PathBuf),
    /// Answered by fulcrum itself.
    Redirect(Redirect),
}

/// A listener's `allow` and `deny` networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessRules {
    /// Empty: every client not denied.
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

impl AccessRules {
    /// `deny` wins over `allow`; IPv4 clients seen on an IPv6 socket match IPv4 networks.
    pub fn admits(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    RoundRobin,
    LeastConnections,
    Random,
    ConsistentHash,
    Ewma,
}

impl Strategy {
    pub const ALL: [(&'static str, Strategy); 5] = [
        ("round_robin", Strategy::RoundRobin),
        ("least_connections", Strategy::LeastConnections),
        ("random", Strategy::Random),
        ("consistent_hash", Strategy::ConsistentHash),
        ("ewma", Strategy::Ewma),
    ];

    pub fn as_str(self) -> &'static str {
        Strategy::ALL
            .iter()
            .find(|(_, s)| *s == self)
            .map_or("round_robin", |(n, _)| n)
    }
}

/// What `consistent_hash` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    SourceIp,
    Path,
    /// Lower case.
    Header(String),
    Cookie(String),
}

/// `[upstream.NAME.sticky]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sticky {
    pub cookie: String,
    /// `Secure`; `None`: on TLS listeners only.
    pub secure: Option<bool>,
    /// `SameSite`: `"Strict"`, `"Lax"` or `"None"`.
    pub same_site: &'static str,
    /// `Max-Age`; `None`: a session cookie.
    pub max_age: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    Tcp,
    Http,
    /// `grpc.health.v1.Health/Check` over HTTP/2.
    Grpc,
}

/// `[upstream.NAME.health]`: active checks, and passive ejection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub check: CheckKind,
    pub path: String,
    /// Inclusive range of statuses that pass.
    pub expect_status: (u16, u16),
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Consecutive failed proxied attempts that eject a backend; with `eject_for`.
    pub passive_failures: u32,
    /// Zero: no passive ejection.
    pub eject_for: Duration,
    /// `check = "grpc"`: the service asked about (empty: the server as a whole).
    pub grpc_service: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub name: String,
    pub strategy: Strategy,
    pub connect_timeout: Duration,
    /// Further attempts on another backend after a failed one.
    pub retries: u32,
    pub backends: Vec<Backend>,
    /// `srv`: more backends from the SRV records of this name (looked up by the
    /// running server every `SRV_INTERVAL`, or on the records' TTL if sooner).
    pub srv: Option<String>,
    /// `consistent_hash` only.
    pub hash_key: HashKey,
    pub sticky: Option<Sticky>,
    pub health: Option<Health>,
    /// TLS to the backends.
    pub tls: Option<UpstreamTls>,
    /// Requests (or tcp connections) in flight per backend; 0 = no cap.
    pub max_connections_per_backend: u32,
    /// How long a request waits for a backend under its cap before a 503.
    pub queue_timeout: Duration,
    /// A PROXY header on every new backend connection: `Some(true)` v2, `Some(false)` v1.
    pub proxy_protocol: Option<bool>,
    /// How the HTTP engine speaks to the backends.
    pub protocol: UpstreamProtocol,
    /// PING interval on HTTP/2 connections to the backends.
    pub h2_keepalive: Duration,
}

/// `upstream.NAME.tls`: TLS to the backends, verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// The name sent and verified; defaults to the host part of each backend's address.
    pub sni: Option<String>,
    /// Trusted roots; `None`: the system's.
    pub ca: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    pub name: String,
    /// The address as written; with the upstream's name, the backend's identity.
    /// (A backend from a DNS record is `host:port#ip`.)
    pub address: String,
    /// The host and port as written, for the `Host` of health checks and TLS's server
    /// name (`address` but for backends from DNS records).
    pub host: String,
    /// `address` resolved when the file was loaded; for a backend with `resolve`, an
    /// unspecified placeholder until the runtime expands it into its records.
    pub resolved: SocketAddr,
    pub weight: u32,
    /// Re-resolve the host name this often: one backend per A/AAAA record.
    pub resolve: Option<Duration>,
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

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let src = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                location: None,
                key: String::new(),
                message: format!("cannot be read: {e}"),
            }])
        })?;
        Config::parse(&src, path)
    }

    /// Validates `src` as if it had been read from `file`.
    pub fn parse(src: &str, file: &Path) -> Result<Config, ConfigErrors> {
        let de = toml::Deserializer::parse(src).map_err(|e| {
            ConfigErrors(vec![ConfigError::new(
                file,
                src,
                e.span(),
                "",
                e.message().trim_end().to_string(),
            )])
        })?;
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = clean_path(&e.path().to_string());
            let inner = e.into_inner();
            ConfigErrors(vec![ConfigError::new(
                file,
                src,
                inner.span(),
                key,
                inner.message().trim_end().to_string(),
            )])
        })?;
        let mut v = Validator {
            file,
            src,
            errors: Vec::new(),
            rules: Vec::new(),
        };
        let config = v.config(raw);
        if v.errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(v.errors))
        }
    }

    /// A configuration with nothing in it.
    pub fn empty() -> Config {
        Config {
            file: PathBuf::new(),
            global: Global {
                workers: DEFAULT_WORKERS,
                max_connections: DEFAULT_MAX_CONNECTIONS,
                shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
                log_format: LogFormat::Text,
                access_log: true,
                watch_config: false,
            },
            listeners: Vec::new(),
            upstreams: Vec::new(),
            admin: None,
            cache: None,
            compression: Compression::default(),
            rate_limits: Vec::new(),
            redis: None,
            tracing: None,
            failover: None,
            bgp: None,
            resolver: Resolver {
                servers: Vec::new(),
                resolve_max: DEFAULT_RESOLVE_MAX,
            },
        }
    }

    /// Every backend's identity: (upstream name, address as written). Live state,
    /// pools and health checkers are kept by it across reloads.
    pub fn backend_identities(&self) -> HashSet<(&str, &str)> {
        self.upstreams
            .iter()
            .flat_map(|u| {
                u.backends
                    .iter()
                    .map(move |b| (u.name.as_str(), b.address.as_str()))
            })
            .collect()
    }

    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.name == name)
    }

    /// The summary `fulcrum check` prints: one line per listener and upstream.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for l in &self.listeners {
            let binds: Vec<String> = l.bind.iter().map(|a| a.to_string()).collect();
            let _ = write!(
                out,
                "listener {}: {} on {}",
                l.name,
                l.protocol.as_str(),
                binds.join(", ")
            );
            if let Some(u) = &l.upstream {
                let _ = write!(out, " -> upstream {u}");
            }
            if !l.routes.is_empty() {
                let _ = write!(
                    out,
                    ", {} route{}",
                    l.routes.len(),
                    if l.routes.len() == 1 { "" } else { "s" }
                );
            }
            out.push('\n');
        }
        for u in &self.upstreams {
            let backends: Vec<String> = u
                .backends
                .iter()
                .map(|b| {
                    if b.name == b.address {
                        format!("{} (weight {})", b.address, b.weight)
                    } else {
                        format!("{} {} (weight {})", b.name, b.address, b.weight)
                    }
                })
                .collect();
            let _ = writeln!(
                out,
                "upstream {}: {}, {} backend{}: {}",
                u.name,
                u.strategy.as_str(),
                u.backends.len(),
                if u.backends.len() == 1 { "" } else { "s" },
                backends.join(", ")
            );
        }
        if let Some(f) = &self.failover {
            let vips: Vec<String> = f
                .vips
                .iter()
                .map(|v| format!("{} on {}", v.address, v.interface))
                .collect();
            let _ = writeln!(
                out,
                "failover {}: priority {}, heartbeats on {} to {} peer{}, vips: {}",
                f.node,
                f.priority,
                f.bind,
                f.peers.len(),
                if f.peers.len() == 1 { "" } else { "s" },
                if vips.is_empty() {
                    "none (hooks only)".to_string()
                } else {
                    vips.join(", ")
                }
            );
        }
        if let Some(b) = &self.bgp {
            let peers: Vec<String> = b
                .peers
                .iter()
                .map(|p| format!("{} (AS {})", p.name(), p.remote_as))
                .collect();
            let announce: Vec<String> = b
                .announce
                .iter()
                .map(|a| format!("{} while {}", a.prefix, a.upstreams.join(" and ")))
                .collect();
            let _ = writeln!(
                out,
                "bgp AS {} (router id {}): peers {}; announces {}",
                b.local_as,
                b.router_id,
                peers.join(", "),
                announce.join(", ")
            );
        }
        out
    }
}

/// The port of `host:port` where host is a DNS name (not an IP address literal).
fn dns_name(address: &str) -> Result<u16, String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("{address:?} is not host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{address:?} has no valid port"))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "{address:?} is an IP address: with `resolve` it must be a host name"
        ));
    }
    let name_chars = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if host.is_empty() || !host.chars().all(name_chars) {
        return Err(format!("{address:?} is not a host name and port"));
    }
    Ok(port)
}

/// serde_path_to_error shows the private field that `Spanned` uses; users never wrote it.
fn clean_path(path: &str) -> String {
    path.replace(".$__serde_spanned_private_value", "")
        .replace("$__serde_spanned_private_value.", "")
        .replace("$__serde_spanned_private_value", "")
}

struct Validator<'a> {
    file: &'a Path,
    src: &'a str,
    errors: Vec<ConfigError>,
    /// `[rate_limit.*]`, read before the listeners that name them.
    rules: Vec<RateLimit>,
}

impl Validator<'_> {
    fn err(&mut self, span: Option<Range<usize>>, key: impl Into<String>, msg: impl Into<String>) {
        self.errors
            .push(ConfigError::new(self.file, self.src, span, key, msg));
    }

    /// A duration where zero means "none" (no wait, no timer).
    fn duration_or_zero(
        &mut self,
        v: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let Some(v) = v else { return default };
        parse_duration(v.get_ref()).unwrap_or_else(|e| {
            self.err(Some(v.span()), key, e);
            default
        })
    }

    fn duration(&mut self, v: &Option<Spanned<String>>, key: &str, default: Duration) -> Duration {
        let Some(v) = v else { return default };
        match parse_duration(v.get_ref()) {
            Ok(d) if d.is_zero() => {
                self.err(Some(v.span()), key, "must be greater than zero");
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.err(Some(v.span()), key, e);
                default
            }
        }
    }

    fn size(&mut self, v: &Option<Spanned<RawSize>>, key: &str, default: u64) -> u64 {
        let Some(v) = v else { return default };
        let parsed = match v.get_ref() {
            RawSize::Bytes(n) if *n >= 0 => Ok(*n as u64),
            RawSize::Bytes(n) => Err(format!("must not be negative, got {n}")),
            RawSize::Text(s) => parse_size(s),
        };
        match parsed {
            Ok(n) => n,
            Err(e) => {
                self.err(Some(v.span()), key, e);
                default
            }
        }
    }

    fn int(
        &mut self,
        v: &Option<Spanned<i64>>,
        key: &str,
        min: i64,
        max: i64,
        default: i64,
    ) -> i64 {
        let Some(v) = v else { return default };
        let n = *v.get_ref();
        if n < min || n > max {
            self.err(
                Some(v.span()),
                key,
                format!("must be between {min} and {max}, got {n}"),
            );
            return default;
        }
        n
    }

    /// A file's contents, whitespace trimmed (a token, a password), relative to the
    /// config file; an error when it cannot be read or is empty.
    fn secret_file(&mut self, t: &Spanned<String>, key: &str) -> Option<String> {
        let path = self
            .file
            .parent()
            .unwrap_or(Path::new(""))
            .join(t.get_ref());
        match std::fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => Some(text.trim().to_string()),
            Ok(_) => {
                self.err(Some(t.span()), key, format!("{} is empty", path.display()));
                None
            }
            Err(e) => {
                self.err(
                    Some(t.span()),
                    key,
                    format!("{} cannot be read: {e}", path.display()),
                );
                None
            }
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        self.unsupported_sections(&raw);
        let global = self.global(raw.global.as_ref());
        let admin = raw.admin.as_ref().map(|a| self.admin(a.get_ref()));
        let cache_section = raw.cache.as_ref().map(|c| self.cache(c.get_ref()));
        let compression = raw
            .compression
            .as_ref()
            .map(|c| self.compression(c.get_ref()))
            .unwrap_or_default();
        let failover = raw.failover.as_ref().map(|f| self.failover(f.get_ref()));
        let redis = raw.redis.as_ref().map(|r| self.redis(r.get_ref()));
        self.rules = self.rate_limits(&raw.rate_limit, redis.is_some());
        let upstreams: Vec<Upstream> = raw
            .upstream
            .iter()
            .filter_map(|(name, u)| self.upstream(name, u))
            .collect();
        let bgp = raw.bgp.as_ref().map(|b| self.bgp(b.get_ref(), &upstreams));
        let mut listeners = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut binds: HashMap<SocketAddr, String> = HashMap::new();
        for (i, l) in raw.listener.iter().enumerate() {
            let Some(listener) = self.listener(i, l, &raw.upstream) else {
                continue;
            };
            if let Some(first) = names.insert(listener.name.clone(), i) {
                self.err(
                    Some(l.get_ref().name.span()),
                    format!("listener[{i}].name"),
                    format!(
                        "{:?} is already the name of listener[{first}]",
                        listener.name
                    ),
                );
            }
            // Port 0 asks the kernel for a fresh port each time: never a clash.
            for addr in listener.bind.iter().filter(|a| a.port() != 0) {
                if let Some(other) = binds.insert(*addr, listener.name.clone()) {
                    self.err(
                        Some(l.get_ref().bind.span()),
                        format!("listener[{i}].bind"),
                        format!("{addr} is already bound by listener {other:?}"),
                    );
                }
            }
            listeners.push(listener);
        }
        if raw.listener.is_empty() {
            self.err(None, "listener", "at least one [[listener]] is required");
        }
        let caching = listeners
            .iter()
            .any(|l: &Listener| l.routes.iter().any(|r| r.cache));
        let cache = caching.then(|| {
            cache_section.unwrap_or(CacheSettings::new(
                DEFAULT_CACHE_MAX_SIZE,
                DEFAULT_CACHE_MAX_OBJECT_SIZE,
            ))
        });
        Config {
            file: self.file.to_path_buf(),
            global,
            listeners,
            upstreams,
            admin,
            cache,
            compression,
            failover,
            rate_limits: std::mem::take(&mut self.rules),
            redis,
            tracing: raw.tracing.as_ref().map(|t| self.tracing(t.get_ref())),
            bgp,
            resolver: self.resolver(raw.resolver.as_ref().map(Spanned::get_ref)),
        }
    }

    fn resolver(&mut self, r: Option<&RawResolver>) -> Resolver {
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

    fn cache(&mut self, c: &RawCache) -> CacheSettings {
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

    fn admin(&mut self, a: &RawAdmin) -> Admin {
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

    fn global(&mut self, g: Option<&RawGlobal>) -> Global {
        let Some(g) = g else {
            return Global {
                workers: DEFAULT_WORKERS,
                max_connections: DEFAULT_MAX_CONNECTIONS,
                shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
                log_format: LogFormat::Text,
                access_log: true,
                watch_config: true,
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
        let log_format = match g
            .log_format
            .as_ref()
            .map(|v| (v.get_ref().as_str(), v.span()))
        {
            None | Some(("text", _)) => LogFormat::Text,
            Some(("json", _)) => LogFormat::Json,
            Some((other, span)) => {
                self.err(
                    Some(span),
                    "global.log_format",
                    format!("must be \"text\" or \"json\", got {other:?}"),
                );
                LogFormat::Text
            }
        };
        Global {
            workers,
            max_connections,
            shutdown_timeout,
            log_format,
            access_log: g.access_log.unwrap_or(true),
            watch_config: g.watch_config.unwrap_or(true),
        }
    }

    fn listener(
        &mut self,
        i: usize,
        sl: &Spanned<RawListener>,
        upstreams: &std::collections::BTreeMap<String, Spanned<RawUpstream>>,
    ) -> Option<Listener> {
        let l = sl.get_ref();
        let key = |k: &str| format!("listener[{i}].{k}");
        let name = l.name.get_ref().clone();
        if !units::is_valid_name(&name) {
            self.err(
                Some(l.name.span()),
                key("name"),
                format!("must match [a-z0-9_-]+, got {name:?}"),
            );
        }
        let bind_strings: Vec<&str> = match l.bind.get_ref() {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        };
        if bind_strings.is_empty() {
            self.err(
                Some(l.bind.span()),
                key("bind"),
                "must name at least one address",
            );
        }
        let mut bind = Vec::new();
        for s in bind_strings {
            match s.parse::<SocketAddr>() {
                Ok(a) => bind.push(a),
                Err(_) => self.err(
                    Some(l.bind.span()),
                    key("bind"),
                    format!("is not an address like \"0.0.0.0:8080\" or \"[::]:8080\", got {s:?}"),
                ),
            }
        }
        let protocol = match l
            .protocol
            .as_ref()
            .map(|p| (p.get_ref().as_str(), p.span()))
        {
            None | Some(("http", _)) => Protocol::Http,
            Some(("tcp", _)) => Protocol::Tcp,
            Some((other, span)) => {
                self.err(
                    Some(span),
                    key("protocol"),
                    format!("must be \"http\" or \"tcp\", got {other:?}"),
                );
                Protocol::Tcp
            }
        };
        let upstream = l.upstream.as_ref().map(|u| u.get_ref().clone());
        match &l.upstream {
            Some(u) => match upstreams.get(u.get_ref()) {
                None => self.err(
                    Some(u.span()),
                    key("upstream"),
                    format!("names upstream {:?}, which is not defined", u.get_ref()),
                ),
                Some(up) if protocol == Protocol::Tcp => {
                    if let Some(sticky) = &up.get_ref().sticky {
                        self.err(
                            Some(sticky.span()),
                            format!("upstream.{}.sticky", u.get_ref()),
                            format!(
                                "needs HTTP cookies, but tcp listener {name:?} uses this upstream"
                            ),
                        );
                    }
                }
                Some(_) => {}
            },
            None if protocol == Protocol::Tcp && l.route.as_ref().is_none_or(Vec::is_empty) => self
                .err(
                    Some(sl.span()),
                    key("upstream"),
                    "is required on a tcp listener without routes",
                ),
            None => {}
        }

        let max_connections = l.max_connections.as_ref().map(|_| {
            self.int(
                &l.max_connections,
                &key("max_connections"),
                1,
                i64::from(u32::MAX),
                1,
            ) as usize
        });
        let idle_timeout =
            self.duration(&l.idle_timeout, &key("idle_timeout"), DEFAULT_IDLE_TIMEOUT);
        let header_timeout = self.duration(
            &l.header_timeout,
            &key("header_timeout"),
            DEFAULT_HEADER_TIMEOUT,
        );
        let max_header_size = self.size(
            &l.max_header_size,
            &key("max_header_size"),
            DEFAULT_MAX_HEADER_SIZE,
        );
        let max_body_size = self.size(
            &l.max_body_size,
            &key("max_body_size"),
            DEFAULT_MAX_BODY_SIZE,
        );
        let body_timeout =
            self.duration(&l.body_timeout, &key("body_timeout"), DEFAULT_BODY_TIMEOUT);
        let min_rate = self.size(&l.min_rate, &key("min_rate"), 0);
        if max_header_size == 0 {
            if let Some(v) = &l.max_header_size {
                self.err(
                    Some(v.span()),
                    key("max_header_size"),
                    "must be greater than zero",
                );
            }
        }
        let allow = self.cidrs(&l.allow, &key("allow"));
        let deny = self.cidrs(&l.deny, &key("deny"));
        let proxy_protocol = l.proxy_protocol.as_ref().is_some_and(|p| *p.get_ref());
        let trusted_proxies = self.cidrs(&l.trusted_proxies, &key("trusted_proxies"));
        let rate_limit = self.rate_limit_ref(&key("rate_limit"), &l.rate_limit, protocol);
        let max_connections_per_client = l.max_connections_per_client.as_ref().map(|_| {
            self.int(
                &l.max_connections_per_client,
                &key("max_connections_per_client"),
                1,
                i64::from(u32::MAX),
                1,
            ) as u32
        });

        if protocol == Protocol::Tcp {
            let http_only: [(&str, Option<Range<usize>>); 14] = [
                ("body_timeout", l.body_timeout.as_ref().map(Spanned::span)),
                (
                    "abort_on_close",
                    l.abort_on_close.as_ref().map(Spanned::span),
                ),
                ("merge_slashes", l.merge_slashes.as_ref().map(Spanned::span)),
                (
                    "allow_encoded_slashes",
                    l.allow_encoded_slashes.as_ref().map(Spanned::span),
                ),
                (
                    "forward_normalized_path",
                    l.forward_normalized_path.as_ref().map(Spanned::span),
                ),
                ("min_rate", l.min_rate.as_ref().map(Spanned::span)),
                (
                    "header_timeout",
                    // A tcp listener's PROXY header must arrive within it.
                    l.header_timeout
                        .as_ref()
                        .filter(|_| !proxy_protocol && l.route.is_none())
                        .map(Spanned::span),
                ),
                (
                    "max_header_size",
                    l.max_header_size.as_ref().map(Spanned::span),
                ),
                ("max_body_size", l.max_body_size.as_ref().map(Spanned::span)),
                (
                    "redirect_https",
                    l.redirect_https.as_ref().map(Spanned::span),
                ),
                (
                    "request_headers",
                    l.request_headers.as_ref().map(Spanned::span),
                ),
                ("error_pages", l.error_pages.as_ref().map(Spanned::span)),
                (
                    "trusted_proxies",
                    l.trusted_proxies
                        .as_ref()
                        .and_then(|t| t.first())
                        .map(Spanned::span),
                ),
                (
                    "response_headers",
                    l.response_headers.as_ref().map(Spanned::span),
                ),
            ];
            for (k, span) in http_only {
                if let Some(span) = span {
                    self.err(Some(span), key(k), "only applies to http listeners");
                }
            }
        }
        let tls = l
            .tls
            .as_ref()
            .map(|t| self.listener_tls(&key("tls"), t.get_ref(), protocol));
        let (request_headers, response_headers) = if protocol == Protocol::Http {
            (
                l.request_headers
                    .as_ref()
                    .map(|r| self.header_rules(&key("request_headers"), r, true)),
                l.response_headers
                    .as_ref()
                    .map(|r| self.header_rules(&key("response_headers"), r, false)),
            )
        } else {
            (None, None)
        };
        let error_pages = match (&l.error_pages, protocol) {
            (Some(p), Protocol::Http) => self.error_pages(&key("error_pages"), p),
            _ => Vec::new(),
        };
        let sni_routes = match (&l.route, protocol) {
            (Some(routes), Protocol::Tcp) => self.sni_routes(
                &format!("listener[{i}]"),
                routes,
                upstreams,
                l.tls.is_some(),
            ),
            _ => Vec::new(),
        };
        let routes = if protocol == Protocol::Http {
            l.route
                .iter()
                .flatten()
                .enumerate()
                .filter_map(|(j, r)| self.route(&format!("listener[{i}].route[{j}]"), r, upstreams))
                .collect()
        } else {
            Vec::new()
        };

        Some(Listener {
            name,
            bind,
            protocol,
            upstream,
            max_connections,
            idle_timeout,
            header_timeout,
            max_header_size,
            max_body_size,
            body_timeout,
            min_rate,
            merge_slashes: l.merge_slashes.as_ref().is_none_or(|v| *v.get_ref()),
            abort_on_close: l.abort_on_close.as_ref().is_some_and(|v| *v.get_ref()),
            allow_encoded_slashes: l
                .allow_encoded_slashes
                .as_ref()
                .is_some_and(|v| *v.get_ref()),
            forward_normalized_path: l
                .forward_normalized_path
                .as_ref()
                .is_none_or(|v| *v.get_ref()),
            access: AccessRules { allow, deny },
            redirect_https: l.redirect_https.as_ref().is_some_and(|r| *r.get_ref()),
            request_headers,
            response_headers,
            error_pages,
            routes,
            tls: tls.flatten(),
            proxy_protocol,
            rate_limit,
            max_connections_per_client,
            trusted_proxies,
            sni_routes,
        })
    }

    fn listener_tls(
        &mut self,
        key: &str,
        t: &RawListenerTls,
        protocol: Protocol,
    ) -> Option<ListenerTls> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let k = |f: &str| format!("{key}.{f}");
        let dir = self.file.parent().unwrap_or(Path::new("")).to_path_buf();
        self.unsupported_listener_tls(key, t);
        let listed = t
            .certificates
            .as_ref()
            .map_or(&[][..], |c| c.get_ref().as_slice());
        if listed.is_empty() && t.acme.is_none() {
            self.err(
                t.certificates.as_ref().map(|c| c.span()),
                k("certificates"),
                "must list at least one { cert, key }",
            );
        }
        let mut certificates = Vec::new();
        for (i, c) in listed.iter().enumerate() {
            let ck = |f: &str| format!("{key}.certificates[{i}].{f}");
            let cert_path = dir.join(&c.get_ref().cert);
            let key_path = dir.join(&c.get_ref().key);
            let chain: Vec<CertificateDer<'static>> =
                match CertificateDer::pem_file_iter(&cert_path)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                {
                    Ok(chain) if !chain.is_empty() => chain,
                    Ok(_) => {
                        self.err(
                            Some(c.span()),
                            ck("cert"),
                            format!("{} holds no PEM certificate", cert_path.display()),
                        );
                        continue;
                    }
                    Err(e) => {
                        self.err(
                            Some(c.span()),
                            ck("cert"),
                            format!("{} cannot be loaded: {e}", cert_path.display()),
                        );
                        continue;
                    }
                };
            let private = match PrivateKeyDer::from_pem_file(&key_path) {
                Ok(p) => p,
                Err(e) => {
                    self.err(
                        Some(c.span()),
                        ck("key"),
                        format!("{} cannot be loaded: {e}", key_path.display()),
                    );
                    continue;
                }
            };
            let signing = match rustls::crypto::ring::sign::any_supported_type(&private) {
                Ok(s) => s,
                Err(e) => {
                    self.err(
                        Some(c.span()),
                        ck("key"),
                        format!("{} is not a usable key: {e}", key_path.display()),
                    );
                    continue;
                }
            };
            let mut certified = rustls::sign::CertifiedKey::new(chain, signing);
            match c.get_ref().ocsp.as_deref() {
                None => {}
                Some("auto") => {
                    self.err(Some(c.span()), ck("ocsp"), "\"auto\" not supported yet");
                }
                Some(file) => {
                    let path = dir.join(file);
                    match std::fs::read(&path) {
                        // An OCSPResponse is a DER SEQUENCE.
                        Ok(der) if der.first() == Some(&0x30) && der.len() > 4 => {
                            certified.ocsp = Some(der);
                        }
                        Ok(_) => self.err(
                            Some(c.span()),
                            ck("ocsp"),
                            format!("{} is not a DER OCSP response", path.display()),
                        ),
                        Err(e) => self.err(
                            Some(c.span()),
                            ck("ocsp"),
                            format!("{} cannot be read: {e}", path.display()),
                        ),
                    }
                }
            }
            if let Err(e) = certified.keys_match() {
                self.err(
                    Some(c.span()),
                    ck("key"),
                    format!(
                        "{} does not match {}: {e}",
                        key_path.display(),
                        cert_path.display()
                    ),
                );
                continue;
            }
            if let Err(e) = webpki::EndEntityCert::try_from(&certified.cert[0]) {
                self.err(
                    Some(c.span()),
                    ck("cert"),
                    format!("{} is not a usable certificate: {e}", cert_path.display()),
                );
                continue;
            }
            certificates.push(Arc::new(certified));
        }
        let min_version = match t
            .min_version
            .as_ref()
            .map(|v| (v.get_ref().as_str(), v.span()))
        {
            None | Some(("1.2", _)) => TlsVersion::V12,
            Some(("1.3", _)) => TlsVersion::V13,
            Some((other, span)) => {
                self.err(
                    Some(span),
                    k("min_version"),
                    format!("must be \"1.2\" or \"1.3\", got {other:?}"),
                );
                TlsVersion::V12
            }
        };
        let alpn = match &t.alpn {
            Some(a) => {
                for p in a.get_ref() {
                    let ok = match protocol {
                        Protocol::Http => p == "h2" || p == "http/1.1",
                        Protocol::Tcp => !p.is_empty() && p.len() < 256,
                    };
                    if !ok {
                        self.err(
                            Some(a.span()),
                            k("alpn"),
                            format!("{p:?} is not a protocol this listener speaks"),
                        );
                    }
                }
                a.get_ref().iter().map(|p| p.as_bytes().to_vec()).collect()
            }
            None if protocol == Protocol::Http => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            None => Vec::new(),
        };
        let client_ca = t
            .client_ca
            .as_ref()
            .and_then(|ca| self.ca_file(k("client_ca"), ca));
        if certificates.is_empty() {
            return None;
        }
        Some(ListenerTls {
            certificates,
            min_version,
            alpn,
            client_ca,
        })
    }

    fn route(
        &mut self,
        key: &str,
        sr: &Spanned<RawRoute>,
        upstreams: &std::collections::BTreeMap<String, Spanned<RawUpstream>>,
    ) -> Option<Route> {
        let r = sr.get_ref();
        let k = |f: &str| format!("{key}.{f}");
        if let Some(sni) = &r.sni {
            self.err(
                Some(sni.span()),
                k("sni"),
                "applies to the routes of tcp listeners (without `tls`): http routes match `host`",
            );
        }
        let host = r.host.as_ref().and_then(|h| {
            if let Some(pattern) = sni::host_pattern(h.get_ref()) {
                Some(pattern)
            } else {
                self.err(
                    Some(h.span()),
                    k("host"),
                    format!("must be a host name like \"api.example.com\" or \"*.example.com\" (no port), got {:?}", h.get_ref()),
                );
                None
            }
        });
        let path_prefix = r.path_prefix.as_ref().and_then(|p| {
            if p.get_ref().starts_with('/') {
                Some(p.get_ref().clone())
            } else {
                self.err(
                    Some(p.span()),
                    k("path_prefix"),
                    format!("must start with '/', got {:?}", p.get_ref()),
                );
                None
            }
        });
        let mut methods = Vec::new();
        for (j, m) in r.methods.iter().flatten().enumerate() {
            let upper = m.get_ref().to_ascii_uppercase();
            if upper.is_empty() || http::Method::from_bytes(upper.as_bytes()).is_err() {
                self.err(
                    Some(m.span()),
                    format!("{key}.methods[{j}]"),
                    format!("is not an HTTP method, got {:?}", m.get_ref()),
                );
            } else {
                methods.push(upper);
            }
        }
        let mut headers = Vec::new();
        if let Some(h) = &r.headers {
            for (name, value) in h.get_ref() {
                let lower = name.to_ascii_lowercase();
                if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
                    self.err(
                        Some(h.span()),
                        format!("{key}.headers.{name}"),
                        "is not a valid header name",
                    );
                } else if http::HeaderValue::from_str(value).is_err() {
                    self.err(
                        Some(h.span()),
                        format!("{key}.headers.{name}"),
                        format!("is not a valid header value, got {value:?}"),
                    );
                } else {
                    headers.push((lower, value.clone()));
                }
            }
        }
        let timeout = self.duration(&r.timeout, &k("timeout"), DEFAULT_ROUTE_TIMEOUT);
        let cache = r.cache.as_ref().is_some_and(|c| *c.get_ref());
        let served = [
            r.upstream.as_ref().map(|s| s.span()),
            r.static_dir.as_ref().map(|s| s.span()),
            r.redirect.as_ref().map(|s| s.span()),
        ];
        if served.iter().flatten().count() > 1 {
            self.err(
                served.iter().flatten().nth(1).cloned(),
                key.to_string(),
                "has more than one of `upstream`, `static` and `redirect`; a route does one of them",
            );
            return None;
        }
        if let Some(redirect) = &r.redirect {
            let redirect = self.redirect(&k("redirect"), redirect)?;
            for (set, name) in [
                (r.rewrite.as_ref().map(|v| v.span()), "rewrite"),
                (r.cache.as_ref().map(|v| v.span()), "cache"),
                (r.timeout.as_ref().map(|v| v.span()), "timeout"),
                (r.upgrades.as_ref().map(|v| v.span()), "upgrades"),
                (r.static_hidden.as_ref().map(|v| v.span()), "static_hidden"),
            ] {
                if let Some(span) = set {
                    self.err(
                        Some(span),
                        k(name),
                        "does not apply to a route with `redirect`: fulcrum answers it itself",
                    );
                }
            }
            let response_headers = r
                .response_headers
                .as_ref()
                .map(|h| self.header_rules(&k("response_headers"), h, false));
            if let Some(h) = &r.request_headers {
                self.err(
                    Some(h.span()),
                    k("request_headers"),
                    "does not apply to a route with `redirect`: no request is sent",
                );
            }
            if let Some(c) = &r.compress {
                self.err(
                    Some(c.span()),
                    k("compress"),
                    "does not apply to a route with `redirect`: fulcrum answers it itself",
                );
            }
            return Some(Route {
                rate_limit: self.rate_limit_ref(&k("rate_limit"), &r.rate_limit, Protocol::Http),
                compress: false,
                host,
                path_prefix,
                methods,
                headers,
                request_headers: None,
                response_headers,
                target: RouteTarget::Redirect(redirect),
                timeout: DEFAULT_ROUTE_TIMEOUT,
                cache: false,
                upgrades: Vec::new(),
                static_hidden: false,
                rewrite: None,
            });
        }
        let rewrite = match &r.rewrite {
            Some(rw) if r.upstream.is_none() => {
                self.err(
                    Some(rw.span()),
                    k("rewrite"),
                    "applies to routes with an `upstream`",
                );
                None
            }
            Some(rw) => self.rewrite(&k("rewrite"), rw),
            None => None,
        };
        let target = match (&r.upstream, &r.static_dir) {
            (Some(u), None) => {
                if !upstreams.contains_key(u.get_ref()) {
                    self.err(
                        Some(u.span()),
                        k("upstream"),
                        format!("names upstream {:?}, which is not defined", u.get_ref()),
                    );
                }
                RouteTarget::Upstream(u.get_ref().clone())
            }
            (None, Some(d)) => {
                let dir = self
                    .file
                    .parent()
                    .unwrap_or(Path::new(""))
                    .join(d.get_ref());
                if !dir.is_dir() {
                    self.err(
                        Some(d.span()),
                        k("static"),
                        format!("{} is not a readable directory", dir.display()),
                    );
                }
                RouteTarget::Static(dir)
            }
            (Some(u), Some(_)) => {
                self.err(
                    Some(u.span()),
                    key.to_string(),
                    "has both `upstream` and `static`; a route serves one of them",
                );
                return None;
            }
            (None, None) => {
                self.err(
                    Some(sr.span()),
                    key.to_string(),
                    "needs `upstream`, `static` or `redirect`",
                );
                return None;
            }
        };
        let mut upgrades = Vec::new();
        match &r.upgrades {
            None => upgrades.extend(DEFAULT_UPGRADES.iter().map(|u| u.to_string())),
            Some(list) => {
                for (j, u) in list.get_ref().iter().enumerate() {
                    let lower = u.get_ref().trim().to_ascii_lowercase();
                    let token = !lower.is_empty()
                        && lower
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&b));
                    if lower == "h2c" || lower.starts_with("h2c/") {
                        self.err(
                            Some(u.span()),
                            format!("{key}.upgrades[{j}]"),
                            "h2c is never tunnelled: a client could reach the backend's HTTP/2 past every route rule",
                        );
                    } else if !token {
                        self.err(
                            Some(u.span()),
                            format!("{key}.upgrades[{j}]"),
                            format!(
                                "is not a protocol name like \"websocket\", got {:?}",
                                u.get_ref()
                            ),
                        );
                    } else {
                        upgrades.push(lower);
                    }
                }
            }
        }
        let static_hidden = r.static_hidden.as_ref().is_some_and(|h| *h.get_ref());
        if let (Some(h), false) = (&r.static_hidden, matches!(target, RouteTarget::Static(_))) {
            self.err(
                Some(h.span()),
                k("static_hidden"),
                "applies to routes with `static`",
            );
        }
        if let (Some(h), RouteTarget::Static(_)) = (&r.request_headers, &target) {
            self.err(
                Some(h.span()),
                k("request_headers"),
                "applies to routes with an `upstream`: a static route sends no request",
            );
        }
        if cache && matches!(target, RouteTarget::Static(_)) {
            if let Some(c) = &r.cache {
                self.err(
                    Some(c.span()),
                    k("cache"),
                    "applies to routes with an `upstream`; static files are served from disk",
                );
            }
        }
        Some(Route {
            host,
            path_prefix,
            methods,
            headers,
            target,
            timeout,
            cache,
            upgrades,
            static_hidden,
            rewrite,
            request_headers: r
                .request_headers
                .as_ref()
                .map(|h| self.header_rules(&k("request_headers"), h, true)),
            response_headers: r
                .response_headers
                .as_ref()
                .map(|h| self.header_rules(&k("response_headers"), h, false)),
            compress: r.compress.as_ref().is_some_and(|c| *c.get_ref()),
            rate_limit: self.rate_limit_ref(&k("rate_limit"), &r.rate_limit, Protocol::Http),
        })
    }

    fn cidrs(&mut self, v: &Option<Vec<Spanned<String>>>, key: &str) -> Vec<IpNet> {
        let mut out = Vec::new();
        for (j, s) in v.iter().flatten().enumerate() {
            match units::parse_cidr(s.get_ref()) {
                Ok(n) => out.push(n),
                Err(e) => self.err(Some(s.span()), format!("{key}[{j}]"), e),
            }
        }
        out
    }

    fn upstream(&mut self, name: &str, su: &Spanned<RawUpstream>) -> Option<Upstream> {
        let u = su.get_ref();
        let key = |k: &str| format!("upstream.{name}.{k}");
        if name.is_empty() || name.contains(['/', ' ', '"']) {
            self.err(
                Some(su.span()),
                format!("upstream.{name:?}"),
                "names must be non-empty and contain no '/', space or quote",
            );
        }
        let strategy = match &u.strategy {
            None => Strategy::RoundRobin,
            Some(s) => match Strategy::ALL.iter().find(|(n, _)| n == s.get_ref()) {
                Some((_, st)) => *st,
                None => {
                    let names: Vec<&str> = Strategy::ALL.iter().map(|(n, _)| *n).collect();
                    self.err(
                        Some(s.span()),
                        key("strategy"),
                        format!("must be one of {}, got {:?}", names.join(", "), s.get_ref()),
                    );
                    Strategy::RoundRobin
                }
            },
        };
        let hash_key = match &u.hash_key {
            None => HashKey::SourceIp,
            Some(h) => {
                if strategy != Strategy::ConsistentHash {
                    self.err(
                        Some(h.span()),
                        key("hash_key"),
                        "only applies to strategy = \"consistent_hash\"",
                    );
                }
                let text = h.get_ref().as_str();
                let named = |prefix: &str| {
                    text.strip_prefix(prefix)
                        .filter(|n| {
                            !n.is_empty() && http::HeaderName::from_bytes(n.as_bytes()).is_ok()
                        })
                        .map(str::to_ascii_lowercase)
                };
                match text {
                    "source_ip" => HashKey::SourceIp,
                    "path" => HashKey::Path,
                    _ => {
                        if let Some(n) = named("header:") {
                            HashKey::Header(n)
                        } else if let Some(n) =
                            text.strip_prefix("cookie:").filter(|n| !n.is_empty())
                        {
                            HashKey::Cookie(n.to_string())
                        } else {
                            self.err(
                                Some(h.span()),
                                key("hash_key"),
                                format!("must be \"source_ip\", \"path\", \"header:NAME\" or \"cookie:NAME\", got {text:?}"),
                            );
                            HashKey::SourceIp
                        }
                    }
                }
            }
        };
        let connect_timeout = self.duration(
            &u.connect_timeout,
            &key("connect_timeout"),
            DEFAULT_CONNECT_TIMEOUT,
        );
        let retries = self.int(
            &u.retries,
            &key("retries"),
            0,
            MAX_RETRIES,
            i64::from(DEFAULT_RETRIES),
        ) as u32;
        let tls = u.tls.as_ref().map(|t| self.upstream_tls(name, t.get_ref()));
        let sticky = u.sticky.as_ref().map(|st| {
            let cookie = match &st.get_ref().cookie {
                None => DEFAULT_STICKY_COOKIE.to_string(),
                Some(c) => {
                    let valid = !c.get_ref().is_empty()
                        && c.get_ref()
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                    if !valid {
                        self.err(
                            Some(c.span()),
                            key("sticky.cookie"),
                            format!("is not a valid cookie name, got {:?}", c.get_ref()),
                        );
                    }
                    c.get_ref().clone()
                }
            };
            let st = st.get_ref();
            let same_site = match st
                .same_site
                .as_ref()
                .map(|v| (v.get_ref().as_str(), v.span()))
            {
                None => "Lax",
                Some((v, span)) => match v.to_ascii_lowercase().as_str() {
                    "strict" => "Strict",
                    "lax" => "Lax",
                    "none" => "None",
                    _ => {
                        self.err(
                            Some(span),
                            key("sticky.same_site"),
                            format!("must be \"Strict\", \"Lax\" or \"None\", got {v:?}"),
                        );
                        "Lax"
                    }
                },
            };
            let secure = st.secure.as_ref().map(|s| *s.get_ref());
            if let (Some(false), "None", Some(s)) = (secure, same_site, &st.secure) {
                self.err(
                    Some(s.span()),
                    key("sticky.secure"),
                    "must not be false with same_site = \"None\": browsers drop such cookies",
                );
            }
            let max_age = st
                .max_age
                .as_ref()
                .map(|_| self.duration(&st.max_age, &key("sticky.max_age"), Duration::ZERO));
            Sticky {
                cookie,
                secure,
                same_site,
                max_age,
            }
        });
        let health = u.health.as_ref().map(|h| self.health(name, h.get_ref()));

        let srv = u.srv.as_ref().and_then(|v| {
            let text = v.get_ref().trim().trim_end_matches('.');
            let ok = !text.is_empty()
                && text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
            if ok {
                Some(text.to_string())
            } else {
                self.err(
                    Some(v.span()),
                    key("srv"),
                    format!(
                        "is not a DNS name like \"_http._tcp.app.internal\", got {:?}",
                        v.get_ref()
                    ),
                );
                None
            }
        });
        if u.backends.get_ref().is_empty() && u.srv.is_none() {
            self.err(
                Some(u.backends.span()),
                key("backends"),
                "must list at least one backend (or name `srv` records)",
            );
        }
        let mut backends: Vec<Backend> = Vec::new();
        let mut seen_names: HashSet<String> = HashSet::new();
        let mut seen_addrs: HashSet<String> = HashSet::new();
        for (j, sb) in u.backends.get_ref().iter().enumerate() {
            let b = sb.get_ref();
            let bkey = |k: &str| format!("upstream.{name}.backends[{j}].{k}");
            let address = b.address.get_ref().trim().to_string();
            let every = b.resolve.as_ref().map(|r| {
                let d = self.duration(&Some(r.clone()), &bkey("resolve"), MIN_RESOLVE);
                if d < MIN_RESOLVE {
                    self.err(Some(r.span()), bkey("resolve"), "must be at least 1s");
                }
                d.max(MIN_RESOLVE)
            });
            let resolved = if every.is_some() {
                // Looked up by the running server, with `[resolver]`.
                match dns_name(&address) {
                    Ok(port) => Some(SocketAddr::from(([0, 0, 0, 0], port))),
                    Err(e) => {
                        self.err(Some(b.address.span()), bkey("address"), e);
                        None
                    }
                }
            } else {
                match resolve(&address) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        self.err(Some(b.address.span()), bkey("address"), e);
                        None
                    }
                }
            };
            if !seen_addrs.insert(address.clone()) {
                self.err(
                    Some(b.address.span()),
                    bkey("address"),
                    format!("{address:?} is listed twice in this upstream"),
                );
            }
            let weight = self.int(
                &b.weight,
                &bkey("weight"),
                0,
                MAX_WEIGHT,
                i64::from(DEFAULT_WEIGHT),
            ) as u32;
            let bname = match &b.name {
                Some(n) if n.get_ref().trim().is_empty() || n.get_ref().contains('/') => {
                    self.err(
                        Some(n.span()),
                        bkey("name"),
                        "must be non-empty and contain no '/'",
                    );
                    address.clone()
                }
                Some(n) => n.get_ref().clone(),
                None => address.clone(),
            };
            if !seen_names.insert(bname.clone()) {
                let span = b.name.as_ref().map_or(b.address.span(), Spanned::span);
                self.err(
                    Some(span),
                    bkey("name"),
                    format!("{bname:?} is already the name of another backend of this upstream"),
                );
            }
            if let Some(resolved) = resolved {
                backends.push(Backend {
                    name: bname,
                    host: address.clone(),
                    address,
                    resolved,
                    weight,
                    resolve: every,
                });
            }
        }
        let proxy_protocol = u
            .proxy_protocol
            .as_ref()
            .and_then(|p| match p.get_ref().as_str() {
                "v1" => Some(false),
                "v2" => Some(true),
                other => {
                    self.err(
                        Some(p.span()),
                        key("proxy_protocol"),
                        format!("must be \"v1\" or \"v2\", got {other:?}"),
                    );
                    None
                }
            });
        let protocol = self.upstream_protocol(&key("protocol"), u, tls.is_some());
        if let (Some(h), Some(raw)) = (&health, &u.health) {
            if h.check == CheckKind::Grpc && !protocol.is_http2() {
                let span = raw.get_ref().check.as_ref().map(Spanned::span);
                self.err(
                    span,
                    format!("upstream.{name}.health.check"),
                    "\"grpc\" needs protocol = \"h2c\" or \"h2\"",
                );
            }
        }
        if protocol.is_http2() && proxy_protocol.is_some() {
            if let Some(p) = &u.proxy_protocol {
                self.err(
                    Some(p.span()),
                    key("proxy_protocol"),
                    "cannot be combined with an HTTP/2 protocol: a PROXY header names one \
                     client, an HTTP/2 connection carries many",
                );
            }
        }
        let h2_keepalive =
            self.duration(&u.h2_keepalive, &key("h2_keepalive"), DEFAULT_H2_KEEPALIVE);
        if h2_keepalive.is_zero() {
            if let Some(k) = &u.h2_keepalive {
                self.err(
                    Some(k.span()),
                    key("h2_keepalive"),
                    "must be greater than zero",
                );
            }
        }
        let max_connections_per_backend = self.int(
            &u.max_connections_per_backend,
            &key("max_connections_per_backend"),
            0,
            i64::from(u32::MAX),
            0,
        ) as u32;
        let queue_timeout = self.duration(
            &u.queue_timeout,
            &key("queue_timeout"),
            DEFAULT_QUEUE_TIMEOUT,
        );
        Some(Upstream {
            name: name.to_string(),
            strategy,
            connect_timeout,
            retries,
            max_connections_per_backend,
            queue_timeout,
            backends,
            srv,
            hash_key,
            sticky,
            health,
            tls,
            proxy_protocol,
            protocol,
            h2_keepalive,
        })
    }

    fn upstream_protocol(&mut self, key: &str, u: &RawUpstream, tls: bool) -> UpstreamProtocol {
        let Some(p) = &u.protocol else {
            return UpstreamProtocol::Http1;
        };
        let (value, span) = (p.get_ref().as_str(), Some(p.span()));
        match value {
            "http1" => UpstreamProtocol::Http1,
            "h2c" if tls => {
                self.err(
                    span,
                    key,
                    "\"h2c\" is HTTP/2 over plain TCP; with tls use \"h2\"",
                );
                UpstreamProtocol::Http1
            }
            "h2c" => UpstreamProtocol::H2c,
            "h2" if !tls => {
                self.err(span, key, "\"h2\" needs tls (use \"h2c\" for plain TCP)");
                UpstreamProtocol::Http1
            }
            "h2" => UpstreamProtocol::H2,
            "auto" if !tls => {
                self.err(span, key, "\"auto\" needs tls (ALPN chooses)");
                UpstreamProtocol::Http1
            }
            "auto" => UpstreamProtocol::Auto,
            other => {
                self.err(
                    span,
                    key,
                    format!("must be \"http1\", \"h2c\", \"h2\" or \"auto\", got {other:?}"),
                );
                UpstreamProtocol::Http1
            }
        }
    }

    /// A PEM file of CA certificates (relative to the config file's directory), each
    /// usable as a trust anchor.
    fn ca_file(
        &mut self,
        key: String,
        v: &Spanned<String>,
    ) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        let path = self
            .file
            .parent()
            .unwrap_or(Path::new(""))
            .join(v.get_ref());
        let problem = match CertificateDer::pem_file_iter(&path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        {
            Ok(certs) if certs.is_empty() => format!("{} holds no PEM certificate", path.display()),
            Ok(certs) => match certs
                .iter()
                .find_map(|c| webpki::anchor_from_trusted_cert(c).err())
            {
                None => return Some(certs),
                Some(e) => format!("{} is not a usable CA certificate: {e}", path.display()),
            },
            Err(e) => format!("{} cannot be loaded: {e}", path.display()),
        };
        self.err(Some(v.span()), key, problem);
        None
    }

    fn upstream_tls(&mut self, upstream: &str, t: &RawUpstreamTls) -> UpstreamTls {
        let key = |k: &str| format!("upstream.{upstream}.tls.{k}");
        let sni = t.sni.as_ref().and_then(|s| {
            match rustls::pki_types::ServerName::try_from(s.get_ref().as_str()) {
                Ok(_) => Some(s.get_ref().clone()),
                Err(_) => {
                    self.err(
                        Some(s.span()),
                        key("sni"),
                        format!("is not a DNS name or IP address, got {:?}", s.get_ref()),
                    );
                    None
                }
            }
        });
        let ca = t.ca.as_ref().and_then(|ca| self.ca_file(key("ca"), ca));
        UpstreamTls { sni, ca }
    }

    fn health(&mut self, upstream: &str, h: &RawHealth) -> Health {
        let key = |k: &str| format!("upstream.{upstream}.health.{k}");
        let check = match h.check.as_ref().map(|c| (c.get_ref().as_str(), c.span())) {
            None | Some(("tcp", _)) => CheckKind::Tcp,
            Some(("http", _)) => CheckKind::Http,
            Some(("grpc", _)) => CheckKind::Grpc,
            Some((other, span)) => {
                self.err(
                    Some(span),
                    key("check"),
                    format!("must be \"tcp\", \"http\" or \"grpc\", got {other:?}"),
                );
                CheckKind::Tcp
            }
        };
        let path = match &h.path {
            None => DEFAULT_HEALTH_PATH.to_string(),
            Some(p) => {
                if check != CheckKind::Http {
                    self.err(
                        Some(p.span()),
                        key("path"),
                        "only applies to check = \"http\"",
                    );
                }
                if !p.get_ref().starts_with('/')
                    || http::uri::PathAndQuery::try_from(p.get_ref().as_str()).is_err()
                {
                    self.err(
                        Some(p.span()),
                        key("path"),
                        format!("must be a path starting with '/', got {:?}", p.get_ref()),
                    );
                }
                p.get_ref().clone()
            }
        };
        let expect_status = match &h.expect_status {
            None => DEFAULT_EXPECT_STATUS,
            Some(e) => {
                match parse_status_range(e.get_ref()) {
                    Some(r) => r,
                    None => {
                        self.err(
                        Some(e.span()),
                        key("expect_status"),
                        format!("must be a status or a range like \"200-399\" within 100-599, got {:?}", e.get_ref()),
                    );
                        DEFAULT_EXPECT_STATUS
                    }
                }
            }
        };
        let grpc_service = match &h.grpc_service {
            None => String::new(),
            Some(g) => {
                if check != CheckKind::Grpc {
                    self.err(
                        Some(g.span()),
                        key("grpc_service"),
                        "only applies to check = \"grpc\"",
                    );
                }
                if g.get_ref().len() > 1024 {
                    self.err(Some(g.span()), key("grpc_service"), "is over 1024 bytes");
                }
                g.get_ref().clone()
            }
        };
        let interval = self.duration(&h.interval, &key("interval"), DEFAULT_HEALTH_INTERVAL);
        let timeout = self.duration(&h.timeout, &key("timeout"), DEFAULT_HEALTH_TIMEOUT);
        let rise = self.int(&h.rise, &key("rise"), 1, 100, i64::from(DEFAULT_RISE)) as u32;
        let fall = self.int(&h.fall, &key("fall"), 1, 100, i64::from(DEFAULT_FALL)) as u32;
        let passive_failures = self.int(
            &h.passive_failures,
            &key("passive_failures"),
            1,
            1000,
            i64::from(DEFAULT_PASSIVE_FAILURES),
        ) as u32;
        let eject_for = match &h.eject_for {
            None => DEFAULT_EJECT_FOR,
            Some(v) => match parse_duration(v.get_ref()) {
                Ok(d) => d,
                Err(e) => {
                    self.err(Some(v.span()), key("eject_for"), e);
                    DEFAULT_EJECT_FOR
                }
            },
        };
        Health {
            check,
            path,
            expect_status,
            interval,
            timeout,
            rise,
            fall,
            passive_failures,
            eject_for,
            grpc_service,
        }
    }
}

/// `"200"` or `"200-399"`, within 100..=599.
fn parse_status_range(s: &str) -> Option<(u16, u16)> {
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
        None => {
            let v = s.trim().parse().ok()?;
            (v, v)
        }
    };
    ((100..=599).contains(&lo) && (100..=599).contains(&hi) && lo <= hi).then_some((lo, hi))
}

/// Resolves `host:port` (or an IP address with port) to its first address.
fn resolve(address: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = address.parse::<SocketAddr>() {
        return Ok(a);
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!("must be host:port, got {address:?}"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("must be host:port, got {address:?}"));
    }
    // A fuzzed file must not send the fuzzer to the resolver.
    if cfg!(fuzzing) {
        return Err(format!("{address:?} is not resolved while fuzzing"));
    }
    match address.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("{address:?} resolves to no address")),
        Err(e) => Err(format!("{address:?} cannot be resolved: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn host_patterns_match_exactly_or_by_suffix_ignoring_case() {
        let exact = HostPattern::Exact("api.example.com".into());
        assert!(exact.matches("API.example.com"));
        assert!(!exact.matches("x.api.example.com"));
        let wild = HostPattern::Suffix(".example.com".into());
        assert!(wild.matches("a.example.com"));
        assert!(wild.matches("a.b.EXAMPLE.com"));
        assert!(!wild.matches("example.com"));
        assert!(!wild.matches(".example.com"));
        assert!(!wild.matches("a..example.com"));
        assert!(!wild.matches("badexample.com"));
    }

    #[test]
    fn status_ranges_parse() {
        assert_eq!(parse_status_range("200-399"), Some((200, 399)));
        assert_eq!(parse_status_range("204"), Some((204, 204)));
        assert_eq!(parse_status_range("399-200"), None);
        assert_eq!(parse_status_range("99-200"), None);
        assert_eq!(parse_status_range("ok"), None);
    }

    #[test]
    fn access_rules_deny_first_then_allow() {
        let rules = AccessRules {
            allow: vec![net("10.0.0.0/8")],
            deny: vec![net("10.1.0.0/16")],
        };
        assert!(rules.admits("10.2.3.4".parse().unwrap()));
        assert!(!rules.admits("10.1.3.4".parse().unwrap()));
        assert!(!rules.admits("192.0.2.1".parse().unwrap()));
        assert!(rules.admits("::ffff:10.2.3.4".parse().unwrap()));
        assert!(AccessRules::default().admits("192.0.2.1".parse().unwrap()));
    }
}
