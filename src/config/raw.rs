//! The configuration file as written: serde structs that mirror the TOML one to one.
//!
//! Every table rejects unknown keys. Values that need checks beyond their TOML type
//! (durations, sizes, addresses, names, ranges) are kept as `Spanned` so that the
//! validation can point at their line and column.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// A key of a capability not built yet: its value, whatever its type; only its
/// presence and position matter (`fulcrum check` refuses it by name).

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub global: Option<RawGlobal>,
    pub admin: Option<Spanned<RawAdmin>>,
    #[serde(default)]
    pub listener: Vec<Spanned<RawListener>>,
    #[serde(default)]
    pub upstream: BTreeMap<String, Spanned<RawUpstream>>,
    pub cache: Option<Spanned<RawCache>>,
    pub failover: Option<Spanned<RawFailover>>,
    pub rate_limit: Option<Spanned<BTreeMap<String, Spanned<RawRateLimit>>>>,
    pub redis: Option<Spanned<RawRedis>>,
    pub resolver: Option<Spanned<RawResolver>>,
    pub tracing: Option<Spanned<RawTracing>>,
    pub compression: Option<Spanned<RawCompression>>,
    pub acme: Option<Spanned<RawAcme>>,
    pub bgp: Option<Spanned<RawBgp>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGlobal {
    pub workers: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<i64>>,
    pub shutdown_timeout: Option<Spanned<String>>,
    pub log_format: Option<Spanned<String>>,
    pub access_log: Option<bool>,
    pub watch_config: Option<bool>,
    pub tls_ticket_rotation: Option<Spanned<String>>,
    pub work_stealing: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub bind: Spanned<String>,
    pub token_file: Option<Spanned<String>>,
}

/// `bind` is a single address or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Sizes are strings with a unit (`"64KiB"`) or integers of bytes.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawSize {
    Bytes(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub name: Spanned<String>,
    pub bind: Spanned<OneOrMany>,
    pub protocol: Option<Spanned<String>>,
    pub upstream: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<i64>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub header_timeout: Option<Spanned<String>>,
    pub max_header_size: Option<Spanned<RawSize>>,
    pub max_body_size: Option<Spanned<RawSize>>,
    pub body_timeout: Option<Spanned<String>>,
    pub min_rate: Option<Spanned<RawSize>>,
    pub merge_slashes: Option<Spanned<bool>>,
    pub abort_on_close: Option<Spanned<bool>>,
    pub allow_encoded_slashes: Option<Spanned<bool>>,
    pub forward_normalized_path: Option<Spanned<bool>>,
    pub allow: Option<Vec<Spanned<String>>>,
    pub deny: Option<Vec<Spanned<String>>>,
    pub redirect_https: Option<Spanned<bool>>,
    pub h2c: Option<Spanned<String>>,
    pub tls: Option<Spanned<RawListenerTls>>,
    pub route: Option<Vec<Spanned<RawRoute>>>,
    pub proxy_protocol: Option<Spanned<bool>>,
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    pub rate_limit: Option<Spanned<String>>,
    pub max_connections_per_client: Option<Spanned<i64>>,
    pub error_pages: Option<Spanned<BTreeMap<String, String>>>,
    pub request_headers: Option<Spanned<RawHeaderRules>>,
    pub response_headers: Option<Spanned<RawHeaderRules>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTracing {
    pub sample: Option<Spanned<f64>>,
    pub otlp: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedis {
    pub url: Spanned<String>,
    pub password_file: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    pub key: Option<Spanned<String>>,
    pub rate: Spanned<String>,
    pub burst: Option<Spanned<i64>>,
    pub store: Option<Spanned<String>>,
    pub on_store_error: Option<Spanned<String>>,
    pub headers: Option<Spanned<bool>>,
    pub max_keys: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCompression {
    pub algorithms: Option<Spanned<Vec<Spanned<String>>>>,
    pub min_size: Option<Spanned<RawSize>>,
    pub types: Option<Spanned<Vec<Spanned<String>>>>,
    pub level: Option<Spanned<BTreeMap<String, i64>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeaderRules {
    pub set: Option<Spanned<BTreeMap<String, String>>>,
    pub add: Option<Spanned<BTreeMap<String, String>>>,
    pub remove: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListenerTls {
    /// Required unless `acme` names are given.
    pub certificates: Option<Spanned<Vec<Spanned<RawCertificate>>>>,
    pub min_version: Option<Spanned<String>>,
    pub alpn: Option<Spanned<Vec<String>>>,
    pub client_ca: Option<Spanned<String>>,
    pub acme: Option<Spanned<Vec<Spanned<String>>>>,
    pub http3: Option<Spanned<bool>>,
    pub http3_retry_above: Option<Spanned<u32>>,
    pub http3_0rtt: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAcme {
    pub directory: Spanned<String>,
    pub email: Option<Spanned<String>>,
    pub storage: Spanned<String>,
    pub ca: Option<Spanned<String>>,
    pub challenge: Option<Spanned<String>>,
    pub renew_before: Option<Spanned<String>>,
    pub eab: Option<Spanned<RawEab>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEab {
    pub kid: String,
    pub key_file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCertificate {
    pub cert: String,
    pub key: String,
    /// A DER OCSP response to staple, or "auto" (refused as not supported yet).
    pub ocsp: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub host: Option<Spanned<String>>,
    pub path_prefix: Option<Spanned<String>>,
    pub methods: Option<Vec<Spanned<String>>>,
    pub headers: Option<Spanned<BTreeMap<String, String>>>,
    pub upstream: Option<Spanned<String>>,
    #[serde(rename = "static")]
    pub static_dir: Option<Spanned<String>>,
    pub cache: Option<Spanned<bool>>,
    pub timeout: Option<Spanned<String>>,
    pub upgrades: Option<Spanned<Vec<Spanned<String>>>>,
    pub static_hidden: Option<Spanned<bool>>,
    pub rewrite: Option<Spanned<RawRewrite>>,
    pub redirect: Option<Spanned<RawRedirect>>,
    pub sni: Option<Spanned<String>>,
    pub rate_limit: Option<Spanned<String>>,
    pub compress: Option<Spanned<bool>>,
    pub request_headers: Option<Spanned<RawHeaderRules>>,
    pub response_headers: Option<Spanned<RawHeaderRules>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRewrite {
    pub prefix: Option<Spanned<String>>,
    pub regex: Option<Spanned<String>>,
    pub to: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedirect {
    pub to: Spanned<String>,
    pub status: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub strategy: Option<Spanned<String>>,
    pub hash_key: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub retries: Option<Spanned<i64>>,
    pub max_connections_per_backend: Option<Spanned<i64>>,
    pub queue_timeout: Option<Spanned<String>>,
    #[serde(default = "no_backends")]
    pub backends: Spanned<Vec<Spanned<RawBackend>>>,
    pub tls: Option<Spanned<RawUpstreamTls>>,
    pub sticky: Option<Spanned<RawSticky>>,
    pub health: Option<Spanned<RawHealth>>,
    pub protocol: Option<Spanned<String>>,
    pub h2_keepalive: Option<Spanned<String>>,
    pub proxy_protocol: Option<Spanned<String>>,
    pub srv: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub address: Spanned<String>,
    pub weight: Option<Spanned<i64>>,
    pub name: Option<Spanned<String>>,
    pub resolve: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstreamTls {
    pub sni: Option<Spanned<String>>,
    pub ca: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSticky {
    pub cookie: Option<Spanned<String>>,
    pub secure: Option<Spanned<bool>>,
    pub same_site: Option<Spanned<String>>,
    pub max_age: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub check: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub expect_status: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
    pub passive_failures: Option<Spanned<i64>>,
    pub eject_for: Option<Spanned<String>>,
    pub grpc_service: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    pub max_size: Option<Spanned<RawSize>>,
    pub max_object_size: Option<Spanned<RawSize>>,
    pub max_inflight: Option<Spanned<RawSize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFailover {
    pub node: Spanned<String>,
    pub priority: Option<Spanned<i64>>,
    pub bind: Spanned<String>,
    pub peers: Spanned<Vec<Spanned<String>>>,
    pub interval: Option<Spanned<String>>,
    pub dead_after: Option<Spanned<String>>,
    pub preempt: Option<bool>,
    pub detect_exit: Option<bool>,
    pub secret_file: Spanned<String>,
    #[serde(default)]
    pub vips: Vec<Spanned<RawVip>>,
    pub on_active: Option<Spanned<String>>,
    pub on_passive: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResolver {
    pub servers: Option<Spanned<Vec<Spanned<String>>>>,
    pub resolve_max: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBgp {
    pub router_id: Spanned<String>,
    pub local_as: Spanned<i64>,
    pub hold_time: Option<Spanned<String>>,
    pub withdraw_grace: Option<Spanned<String>>,
    #[serde(default)]
    pub peer: Vec<Spanned<RawBgpPeer>>,
    #[serde(default)]
    pub announce: Vec<Spanned<RawBgpAnnounce>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBgpPeer {
    pub address: Spanned<String>,
    pub remote_as: Spanned<i64>,
    pub port: Option<Spanned<i64>>,
    pub local_address: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBgpAnnounce {
    pub prefix: Spanned<String>,
    pub upstreams: Spanned<Vec<Spanned<String>>>,
    pub min_healthy: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVip {
    pub address: Spanned<String>,
    pub interface: Spanned<String>,
}

/// `backends` left out (an upstream whose backends all come from `srv`).
fn no_backends() -> Spanned<Vec<Spanned<RawBackend>>> {
    Spanned::new(0..0, Vec::new())
}
