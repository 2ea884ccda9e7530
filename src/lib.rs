//! fulcrum: a layer-4/layer-7 load balancer and reverse proxy.
//!
//! # Layout
//!
//! From what a request meets first to what it is sent to (modules written as code
//! rather than links are internal to the crate):
//!
//! - [`runtime`]: the running server: one generation of configuration at a time
//!   (built whole, swapped in at reload), the listening sockets and their accept
//!   loops, connection limits, reloads, binary upgrades, systemd notifications and
//!   the graceful shutdown. The only module that wires the others together.
//! - [`config`]: the TOML file, parsed and validated into an immutable `Config`, one
//!   file per section.
//! - [`tls`]: TLS termination (certificates chosen by SNI and signature schemes) and
//!   TLS to the backends; [`acme`]: certificates ordered from an ACME CA, renewed and
//!   swapped in without a reload.
//! - [`proxy_protocol`]: the PROXY protocol header, read and written.
//! - `limits`: rate limits and per-client connection counts.
//! - [`l4`]: the TCP engine.
//! - [`l7`]: the HTTP engine: routes, forwarding, retries, the client and upstream
//!   connections; [`cache`]: its shared response cache.
//! - [`upstream`]: backends, their live state across reloads, `pick` and the `Lease`;
//!   `balance`: the strategies, pure and synchronous; `hash`: the stable hash the
//!   ring, sticky cookies and fingerprints derive from.
//! - `health`: active health checks, and what failed requests mean (passive
//!   ejection); `dns`: backends from DNS records.
//! - [`failover`]: the active-passive pair: heartbeats, the state machine, the driver
//!   that moves the virtual addresses; [`bgp`]: active-active scale-out, the service
//!   addresses announced to routers while this instance can serve them.
//! - [`admin`]: the admin API, its dashboard, and the metrics registry.
//! - `telemetry`: trace context and span export.
//! - `activity`: bytes moved per connection, for idle timeouts and rates;
//!   `side`: racing a busy future against rarely firing watchers.
//! - [`aligned`]: the global allocator, which keeps the 128-byte-aligned blocks of
//!   tokio's tasks and sockets for reuse on each worker.

// An item no path from the crate's root reaches is `pub(crate)` at most: `pub`
// means the library's interface (the binary, the integration tests and benches use it).
#![warn(unreachable_pub)]

pub mod acme;
pub(crate) mod activity;
pub mod admin;
pub mod aligned;
pub(crate) mod balance;
pub mod bgp;
pub mod cache;
pub mod config;
pub(crate) mod dns;
pub mod failover;
pub(crate) mod hash;
pub(crate) mod health;
pub mod l4;
pub mod l7;
pub(crate) mod limits;
pub mod proxy_protocol;
pub mod runtime;
pub(crate) mod side;
pub(crate) mod telemetry;
pub mod tls;
pub mod upstream;
pub(crate) mod worker;
