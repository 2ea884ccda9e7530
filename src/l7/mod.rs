//! The HTTP engine (`protocol = "http"`): HTTP/1.1 and HTTP/2 (h2c with prior
//! knowledge) from clients through hyper; routes; forwarding to upstreams over pooled
//! HTTP/1.1 connections; static files; upgrades; error responses; access logs.
//!
//! Accepting, connection limits and access rules happen in the runtime's accept loop;
//! a denied client still gets an HTTP answer (403) from here.

mod access;
pub mod body;
pub mod cache_route;
pub mod cached;
mod client;
mod compress;
mod conn;
mod error;
mod exchange;
mod forward;
mod grpc;
mod h1;
mod h2;
mod headers;
pub mod host;
mod http3;
mod open;
pub mod path;
pub mod pool;
mod request;
pub mod request_body;
pub mod route;
mod serve;
mod serve_h1;
mod serve_h2;
mod settings;
mod shaping;
mod spans;
mod static_files;
mod sticky;
mod target;

pub use error::{ProxyError, OVERLOADED};
pub use pool::{BackendPool, Pools};
pub use settings::{
    Settings, H2_CONNECTION_WINDOW, H2_MAX_CONCURRENT_STREAMS, H2_MAX_LOCAL_ERROR_RESETS,
    H2_MAX_PENDING_ACCEPT_RESETS, H2_MAX_SEND_BUFFER, H2_STREAM_WINDOW,
};
pub use static_files::StaticDir;

pub use conn::{Accepted, ConnCtx, CurrentSettings, Protocol, Serving, Waiting};
pub use grpc::{grpc_timeout, is_grpc};
pub use http3::{serve_quic, Confirmation, QuicAccepted, H3_MAX_CONCURRENT_STREAMS};
pub use open::OpenRequest;
pub use request::client_octets;
pub use serve::{serve_connection, DRAIN_LINGER, PARK_AFTER};
pub use target::{Upstream2, UpstreamTarget};
#[cfg(test)]
mod tests;
