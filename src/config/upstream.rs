//! `[upstream.NAME]`: backends, the strategy and its hash key, sticky sessions, the protocol spoken to the backends.

use super::defaults::DEFAULT_CONNECT_TIMEOUT;
use super::defaults::DEFAULT_QUEUE_TIMEOUT;
use super::defaults::DEFAULT_RETRIES;
use super::defaults::DEFAULT_WEIGHT;
use super::defaults::MAX_RETRIES;
use super::defaults::MAX_WEIGHT;
use super::global::MIN_RESOLVE;
use super::health::CheckKind;
use super::health::Health;
use super::kinds::Strategy;
use super::raw::RawUpstream;
use super::sticky::{HashKey, Sticky};
use super::tls::UpstreamTls;
use super::validate::Validator;
use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;
use toml::Spanned;

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

/// The port of `host:port` where host is a DNS name (not an IP address literal).
pub(super) fn dns_name(address: &str) -> Result<u16, String> {
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

/// Resolves `host:port` (or an IP address with port) to its first address.
pub(super) fn resolve(address: &str) -> Result<SocketAddr, String> {
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

impl Validator<'_> {
    pub(super) fn upstream(&mut self, name: &str, su: &Spanned<RawUpstream>) -> Option<Upstream> {
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
        let hash_key = self.hash_key(name, &u.hash_key, strategy);
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
        let sticky = u.sticky.as_ref().map(|st| self.sticky(name, st));
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

    pub(super) fn upstream_protocol(
        &mut self,
        key: &str,
        u: &RawUpstream,
        tls: bool,
    ) -> UpstreamProtocol {
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
}
