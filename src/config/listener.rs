//! `[[listener]]`: what a listener binds and how it treats its connections, and its access rules.

use super::defaults::DEFAULT_BODY_TIMEOUT;
use super::defaults::DEFAULT_HEADER_TIMEOUT;
use super::defaults::DEFAULT_IDLE_TIMEOUT;
use super::defaults::DEFAULT_MAX_BODY_SIZE;
use super::defaults::DEFAULT_MAX_HEADER_SIZE;
use super::error_pages::ErrorPage;
use super::headers::HeaderRules;
use super::kinds::Protocol;
use super::raw::OneOrMany;
use super::raw::RawListener;
use super::raw::RawUpstream;
use super::route::Route;
use super::sni::SniRoute;
use super::tls::ListenerTls;
use super::units;
use super::validate::Validator;
use ipnet::IpNet;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;
use toml::Spanned;

/// `listener.h2c`: which HTTP versions a plain http listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum H2c {
    /// HTTP/1.1, and HTTP/2 with prior knowledge, told apart by the first bytes.
    #[default]
    Detect,
    /// HTTP/2 with prior knowledge only: anything else is an HTTP/2 connection error.
    Only,
    /// HTTP/1.1 only.
    Off,
}

/// A listener's `allow` and `deny` networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessRules {
    /// Empty: every client not denied.
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
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
    /// over [`MIN_RATE_WINDOW`](super::defaults::MIN_RATE_WINDOW); 0 = off.
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
    /// http without tls: HTTP/1.1 and h2c told apart, or one of them only.
    pub h2c: H2c,
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

impl Validator<'_> {
    pub(super) fn listener(
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
        let protocol = self.one_of(
            &l.protocol,
            key("protocol"),
            &[("http", Protocol::Http), ("tcp", Protocol::Tcp)],
            Protocol::Tcp,
        );
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
        let h2c = self.one_of(
            &l.h2c,
            key("h2c"),
            &[
                ("detect", H2c::Detect),
                ("only", H2c::Only),
                ("off", H2c::Off),
            ],
            H2c::Detect,
        );
        if let (Some(v), Some(_)) = (&l.h2c, &l.tls) {
            self.err(
                Some(v.span()),
                key("h2c"),
                "only applies to listeners without tls (on tls listeners ALPN picks: see tls.alpn)",
            );
        }
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
            let http_only: [(&str, Option<Range<usize>>); 15] = [
                ("h2c", l.h2c.as_ref().map(Spanned::span)),
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
            h2c,
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

    pub(super) fn cidrs(&mut self, v: &Option<Vec<Spanned<String>>>, key: &str) -> Vec<IpNet> {
        let mut out = Vec::new();
        for (j, s) in v.iter().flatten().enumerate() {
            match units::parse_cidr(s.get_ref()) {
                Ok(n) => out.push(n),
                Err(e) => self.err(Some(s.span()), format!("{key}[{j}]"), e),
            }
        }
        out
    }
}

impl Validator<'_> {
    /// `listener.tls.acme` needs `[acme]`; HTTP-01 needs a plain http listener to
    /// answer on.
    pub(super) fn acme_listeners(
        &mut self,
        raw: &super::raw::RawConfig,
        listeners: &[Listener],
        acme: Option<&super::acme::Acme>,
    ) {
        let wanted = raw.listener.iter().enumerate().find_map(|(i, l)| {
            let names = l.get_ref().tls.as_ref()?.get_ref().acme.as_ref()?;
            Some((i, names.span()))
        });
        let Some((i, span)) = wanted else { return };
        match acme {
            None => self.err(
                Some(span),
                format!("listener[{i}].tls.acme"),
                "needs an [acme] section (directory, storage)",
            ),
            Some(a) if a.challenge == super::acme::AcmeChallenge::Http01 => {
                let plain = listeners
                    .iter()
                    .any(|l| l.protocol == super::kinds::Protocol::Http && l.tls.is_none());
                if !plain {
                    self.err(
                        Some(span),
                        format!("listener[{i}].tls.acme"),
                        "the http-01 challenge needs a plain http listener (the CA asks on port 80); add one or set acme.challenge = \"tls-alpn-01\"",
                    );
                }
            }
            Some(_) => {}
        }
    }
}
