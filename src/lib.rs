//! fulcrum: a layer-4/layer-7 load balancer and reverse proxy.
//!
//! - [`config`]: the TOML file, parsed and validated into an immutable `Config`.
//! - [`balance`]: the balancing strategies, pure and synchronous.
//! - [`dns`]: backends from DNS records, looked up again on an interval.
//! - [`upstream`]: backends, their live state across reloads, `pick` and the `Lease`.
//! - [`l4`]: the TCP engine.
//! - [`l7`]: the HTTP engine; [`cache`]: its shared response cache.
//! - [`failover`]: the active-passive pair: heartbeats, the state machine, the driver
//!   that moves the virtual addresses.
//! - [`bgp`]: active-active scale-out: the service addresses announced to routers
//!   while this instance can serve them.
//! - [`limits`]: rate limits and per-client connection counts; [`proxy_protocol`]:
//!   the PROXY protocol header.
//! - [`runtime`]: one generation of configuration, listeners, shutdown.

pub mod activity;
pub mod admin;
pub mod balance;
pub mod bgp;
pub mod cache;
pub mod config;
pub mod dns;
pub mod failover;
pub mod health;
pub mod l4;
pub mod l7;
pub mod limits;
pub mod proxy_protocol;
pub mod runtime;
pub mod side;
pub mod telemetry;
pub mod tls;
pub mod upstream;
