//! Backends from DNS: a backend with `resolve = "30s"` is a host name looked up on that
//! interval (sooner when its records' TTL runs out first), and stands for one backend
//! per A/AAAA record, named `host:port#ip`. A failed lookup keeps the last answer.
//!
//! [`Dns`] keeps the latest records and one lookup task per such backend; the runtime
//! builds each generation from the file's configuration [`expand`]ed with them, and
//! again whenever they change, so that added backends get health checks, removed ones
//! finish what they have in flight, and the others keep their state.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{self, Config};

/// How long one lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// One backend a lookup found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Found {
    /// `host:port` as the records name it: TLS's server name and the health checks'
    /// `Host`.
    pub host: String,
    pub addr: SocketAddr,
    /// An SRV record's weight.
    pub weight: Option<u32>,
}

/// (upstream, backend address as written, or `srv:` and the SRV name) to what its
/// lookups found, sorted.
pub(crate) type Records = HashMap<(String, String), Vec<Found>>;

/// The key of an upstream's SRV records.
fn srv_key(name: &str) -> String {
    format!("srv:{name}")
}

/// Whether `config` has a name to look up.
pub(crate) fn wanted(config: &Config) -> bool {
    config
        .upstreams
        .iter()
        .any(|u| u.srv.is_some() || u.backends.iter().any(|b| b.resolve.is_some()))
}

/// An SRV record's weight as a backend weight: 0 (the least) still takes a share.
fn srv_weight(w: u16) -> u32 {
    u32::from(w).clamp(1, config::MAX_WEIGHT as u32)
}

/// `config` with each backend that has `resolve` replaced by one backend per record
/// (none while its name has no records).
pub(crate) fn expand(config: &Config, records: &Records) -> Config {
    let mut out = config.clone();
    for u in &mut out.upstreams {
        if u.srv.is_none() && !u.backends.iter().any(|b| b.resolve.is_some()) {
            continue;
        }
        let mut backends = Vec::with_capacity(u.backends.len());
        for b in &u.backends {
            if b.resolve.is_none() {
                backends.push(b.clone());
                continue;
            }
            let found = records.get(&(u.name.clone(), b.address.clone()));
            for f in found.into_iter().flatten() {
                let ip = f.addr.ip();
                backends.push(config::Backend {
                    name: format!("{}#{ip}", b.name),
                    address: format!("{}#{ip}", b.address),
                    host: b.host.clone(),
                    resolved: f.addr,
                    weight: b.weight,
                    resolve: b.resolve,
                });
            }
        }
        if let Some(name) = &u.srv {
            let found = records.get(&(u.name.clone(), srv_key(name)));
            for f in found.into_iter().flatten() {
                let id = format!("{}#{}", f.host, f.addr.ip());
                if backends.iter().any(|b| b.address == id) {
                    continue;
                }
                backends.push(config::Backend {
                    name: id.clone(),
                    address: id,
                    host: f.host.clone(),
                    resolved: f.addr,
                    weight: f.weight.unwrap_or(1),
                    resolve: Some(config::SRV_INTERVAL),
                });
            }
        }
        u.backends = backends;
    }
    out
}

/// A resolver for `[resolver]`: its servers (UDP, then TCP for truncated answers), or
/// the system's configuration.
fn resolver(settings: &config::Resolver) -> Result<TokioResolver, String> {
    if settings.servers.is_empty() {
        return TokioResolver::builder_tokio()
            .map(|b| b.build())
            .map_err(|e| format!("cannot read the system's resolver configuration: {e}"));
    }
    let mut group = NameServerConfigGroup::new();
    for s in &settings.servers {
        group.push(NameServerConfig::new(*s, Protocol::Udp));
        group.push(NameServerConfig::new(*s, Protocol::Tcp));
    }
    let config = ResolverConfig::from_parts(None, vec![], group);
    Ok(TokioResolver::builder_with_config(config, TokioConnectionProvider::default()).build())
}

/// The host part of `host:port`.
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// One name to look up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Target {
    upstream: String,
    /// The backend's address as written, or `srv:` and the SRV name.
    address: String,
    every: Duration,
}

/// The records of every backend with `resolve`, and the tasks that keep them fresh.
pub(crate) struct Dns {
    records: Mutex<Records>,
    tasks: Mutex<HashMap<Target, CancellationToken>>,
    /// The `[resolver]` the tasks run with.
    settings: Mutex<Option<config::Resolver>>,
    changed: Notify,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            records: Mutex::new(HashMap::new()),
            tasks: Mutex::new(HashMap::new()),
            settings: Mutex::new(None),
            changed: Notify::new(),
        }
    }
}

fn targets(config: &Config) -> Vec<Target> {
    let mut out = Vec::new();
    for u in &config.upstreams {
        for b in &u.backends {
            if let Some(every) = b.resolve {
                out.push(Target {
                    upstream: u.name.clone(),
                    address: b.address.clone(),
                    every,
                });
            }
        }
        if let Some(name) = &u.srv {
            out.push(Target {
                upstream: u.name.clone(),
                address: srv_key(name),
                every: config::SRV_INTERVAL,
            });
        }
    }
    out
}

impl Dns {
    pub(crate) fn new() -> Arc<Dns> {
        Arc::new(Dns::default())
    }

    /// The records now.
    pub(crate) fn records(&self) -> Records {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Completes when records changed (register before reading them).
    pub(crate) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Stores `ips` for `target`; whether they changed.
    fn store(&self, target: &Target, mut ips: Vec<Found>, max: usize) -> bool {
        ips.sort();
        ips.dedup();
        if ips.len() > max {
            warn!(
                upstream = %target.upstream,
                backend.addr = %target.address,
                records = ips.len(),
                resolve_max = max,
                "more DNS records than resolve_max: the rest are not used"
            );
            ips.truncate(max);
        }
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let key = (target.upstream.clone(), target.address.clone());
        if records.get(&key) == Some(&ips) {
            return false;
        }
        info!(
            upstream = %target.upstream,
            backend.addr = %target.address,
            records = ?ips.iter().map(|f| format!("{}#{}", f.host, f.addr.ip())).collect::<Vec<_>>(),
            "backends from DNS"
        );
        records.insert(key, ips);
        true
    }

    /// Whether a name of `config` has not been looked up (with an answer) yet.
    pub(crate) fn missing(&self, config: &Config) -> bool {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        targets(config)
            .into_iter()
            .any(|t| !records.contains_key(&(t.upstream, t.address)))
    }

    /// Looks every backend of `config` up once, each within a few seconds (at start,
    /// so that the first generation has them).
    pub(crate) async fn lookup_now(&self, config: &Config) {
        let Ok(resolver) = resolver(&config.resolver)
            .map_err(|e| warn!(error = %e, "backends from DNS: no resolver"))
        else {
            return;
        };
        for target in targets(config) {
            if let Ok(ips) = lookup(&resolver, &target).await {
                self.store(&target, ips.0, config.resolver.resolve_max);
            }
        }
    }

    /// Runs a lookup task for each backend of `config` with `resolve` and stops the
    /// others (all of them when `[resolver]` changed); forgets records no backend has.
    pub(crate) fn sync(self: &Arc<Self>, config: &Config) {
        let wanted = targets(config);
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let mut settings = self.settings.lock().unwrap_or_else(|p| p.into_inner());
        let same_resolver = settings.as_ref() == Some(&config.resolver);
        tasks.retain(|t, stop| {
            let keep = same_resolver && wanted.contains(t);
            if !keep {
                stop.cancel();
            }
            keep
        });
        *settings = Some(config.resolver.clone());
        let resolver = match resolver(&config.resolver) {
            Ok(r) => Arc::new(r),
            Err(e) => {
                if !wanted.is_empty() {
                    warn!(error = %e, "backends from DNS: no resolver; the last records stay");
                }
                return;
            }
        };
        for t in wanted {
            if tasks.contains_key(&t) {
                continue;
            }
            let stop = CancellationToken::new();
            tokio::spawn(refresh(
                self.clone(),
                resolver.clone(),
                t.clone(),
                config.resolver.resolve_max,
                stop.clone(),
            ));
            tasks.insert(t, stop);
        }
        drop(tasks);
        let keep: Vec<(String, String)> = targets(config)
            .into_iter()
            .map(|t| (t.upstream, t.address))
            .collect();
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| keep.contains(k));
    }

    /// Stops every lookup task.
    pub(crate) fn stop(&self) {
        for (_, stop) in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            stop.cancel();
        }
    }
}

/// The addresses of `host` and how long they are valid.
async fn addresses(
    resolver: &TokioResolver,
    host: &str,
) -> Result<(Vec<IpAddr>, Duration), String> {
    let answer = tokio::time::timeout(LOOKUP_TIMEOUT, resolver.lookup_ip(host))
        .await
        .map_err(|_| format!("no answer for {host} within {LOOKUP_TIMEOUT:?}"))?
        .map_err(|e| format!("{host}: {e}"))?;
    let ttl = answer
        .valid_until()
        .saturating_duration_since(std::time::Instant::now());
    Ok((answer.iter().collect(), ttl))
}

/// What `target`'s lookup finds, and how long it is valid.
async fn lookup(
    resolver: &TokioResolver,
    target: &Target,
) -> Result<(Vec<Found>, Duration), String> {
    let Some(name) = target.address.strip_prefix("srv:") else {
        let host = host_of(&target.address);
        let port = target
            .address
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0);
        let (ips, ttl) = addresses(resolver, host).await?;
        let found = ips
            .into_iter()
            .map(|ip| Found {
                host: target.address.clone(),
                addr: SocketAddr::new(ip, port),
                weight: None,
            })
            .collect();
        return Ok((found, ttl));
    };
    let answer = tokio::time::timeout(LOOKUP_TIMEOUT, resolver.srv_lookup(name))
        .await
        .map_err(|_| format!("no SRV answer for {name} within {LOOKUP_TIMEOUT:?}"))?
        .map_err(|e| format!("{name}: {e}"))?;
    let mut ttl = answer
        .as_lookup()
        .valid_until()
        .saturating_duration_since(std::time::Instant::now());
    // The most preferred records only: the others are for when those are gone.
    let best = answer.iter().map(|r| r.priority()).min();
    let mut found = Vec::new();
    for r in answer.iter().filter(|r| Some(r.priority()) == best) {
        let target_name = r.target().to_utf8();
        let target_name = target_name.trim_end_matches('.');
        if target_name.is_empty() {
            continue;
        }
        let (ips, t) = addresses(resolver, target_name).await?;
        ttl = ttl.min(t);
        for ip in ips {
            found.push(Found {
                host: format!("{target_name}:{}", r.port()),
                addr: SocketAddr::new(ip, r.port()),
                weight: Some(srv_weight(r.weight())),
            });
        }
    }
    Ok((found, ttl))
}

/// Looks `target` up every `every` (or when its records expire, if sooner, but not
/// more than once a second), storing what changes.
async fn refresh(
    dns: Arc<Dns>,
    resolver: Arc<TokioResolver>,
    target: Target,
    max: usize,
    stop: CancellationToken,
) {
    let mut failing = false;
    loop {
        let wait = match lookup(&resolver, &target).await {
            Ok((ips, ttl)) => {
                if failing {
                    info!(upstream = %target.upstream, backend.addr = %target.address, "DNS lookups work again");
                    failing = false;
                }
                if dns.store(&target, ips, max) {
                    dns.changed.notify_one();
                }
                target.every.min(ttl).max(config::MIN_RESOLVE)
            }
            Err(e) => {
                if !failing {
                    warn!(upstream = %target.upstream, backend.addr = %target.address, error = %e, "DNS lookup failed: the last records stay");
                    failing = true;
                }
                target.every
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_strips_the_port_and_brackets() {
        assert_eq!(host_of("app.internal:8080"), "app.internal");
        assert_eq!(host_of("[::1]:80"), "::1");
    }
}
