//! Configuration: the TOML file as written (`raw`) is checked as a whole and turned into
//! an immutable, validated [`Config`]. Every problem found is reported at once, each with
//! the file, the line and column, and the key path.

mod acme;
mod bgp;
mod compression;
mod defaults;
mod error;
mod error_pages;
mod failover;
mod global;
mod headers;
mod health;
mod kinds;
mod limit_rule;
mod listener;
mod rate_limit;
mod raw;
mod redis;
mod route;
mod shaping;
mod sni;
mod sticky;
mod summary;
mod telemetry;
mod tls;
mod units;
mod upstream;
mod validate;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use acme::{acme_name_problem, Acme, AcmeChallenge, Eab, DEFAULT_RENEW_BEFORE};
pub use bgp::{Announce, Bgp, BgpPeer, DEFAULT_BGP_PORT};
pub use compression::{Algorithm, Compression};
pub use defaults::*;
pub use error::{ConfigError, ConfigErrors};
pub use error_pages::ErrorPage;
pub use failover::{
    default_dead_after, Failover, Vip, DEFAULT_FAILOVER_INTERVAL, DEFAULT_FAILOVER_PRIORITY,
    MAX_NODE_NAME, MIN_FAILOVER_INTERVAL,
};
pub use global::*;
pub use headers::{value_template as header_value_template, HeaderRules, Piece};
pub use health::*;
pub use ipnet::IpNet;
pub use kinds::{HostPattern, Protocol, Strategy};
pub use limit_rule::{LimitKey, OnStoreError, RateLimit};
pub use listener::*;
pub use rate_limit::parse_rate;
use raw::*;
pub use redis::Redis;
pub use route::*;
pub use shaping::{
    compile as compile_rewrite_regex, template as redirect_template, Part, Redirect, Rewrite,
};
pub use sni::SniRoute;
pub use sticky::{HashKey, Sticky};
pub use telemetry::{Collector, Tracing, DEFAULT_TRACE_SAMPLE};
pub use tls::*;
use toml::Spanned;
pub use units::{parse_duration, parse_size};
pub use upstream::*;
use validate::{clean_path, Validator};

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
    /// `[acme]`: where the certificates of `listener.tls.acme` names come from.
    pub acme: Option<Acme>,
    /// `[resolver]`, or its defaults.
    pub resolver: Resolver,
}

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
                work_stealing: true,
                max_connections: DEFAULT_MAX_CONNECTIONS,
                shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
                log_format: LogFormat::Text,
                access_log: true,
                watch_config: false,
                tls_ticket_rotation: DEFAULT_TLS_TICKET_ROTATION,
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
            acme: None,
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
}

impl Validator<'_> {
    fn config(&mut self, raw: RawConfig) -> Config {
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
        let acme = raw.acme.as_ref().map(|a| self.acme(a.get_ref()));
        self.acme_listeners(&raw, &listeners, acme.as_ref());
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
            acme,
            resolver: self.resolver(raw.resolver.as_ref().map(Spanned::get_ref)),
        }
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
