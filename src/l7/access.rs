//! One access-log line per HTTP request, written when the response is over: when its
//! body has been sent, or the client went away.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{HeaderValue, Method, Uri};
use tokio::time::Instant;
use tracing::info;

use super::body::BodyStats;
use crate::admin::metrics::RequestMetrics;
use crate::upstream::{Backend, Upstream};

pub struct Record {
    /// Write the access line (`global.access_log`); the metrics are counted either way.
    pub log: bool,
    pub metrics: Arc<RequestMetrics>,
    pub client: SocketAddr,
    /// The subject of the client's verified certificate (mTLS).
    pub client_cert: Option<Arc<str>>,
    pub listener: Arc<str>,
    pub method: Method,
    pub host: Option<HeaderValue>,
    pub uri: Uri,
    pub status: u16,
    pub request_id: HeaderValue,
    pub body: Option<Arc<BodyStats>>,
    pub bytes_out: u64,
    pub started: Instant,
    pub upstream: Option<Arc<Upstream>>,
    pub backend: Option<Arc<Backend>>,
    /// How the response cache answered, on cached routes.
    pub cache: Option<super::cached::Outcome>,
}

impl Drop for Record {
    fn drop(&mut self) {
        self.metrics.count(self.status);
        self.metrics
            .duration
            .observe(self.started.elapsed().as_secs_f64());
        if !self.log {
            return;
        }
        info!(
            target: "fulcrum::access",
            client = %self.client,
            listener = %self.listener,
            method = %self.method,
            host = %self.host.as_ref().and_then(|h| h.to_str().ok()).or(self.uri.host()).unwrap_or("-"),
            path = %self.uri.path_and_query().map_or("/", |p| p.as_str()),
            status = self.status,
            bytes_in = self.body.as_ref().map_or(0, |b| b.bytes.load(Ordering::Relaxed)),
            bytes_out = self.bytes_out,
            duration_ms = self.started.elapsed().as_millis() as u64,
            upstream = %self.upstream.as_ref().map_or("-", |u| u.name.as_str()),
            backend = %self.backend.as_ref().map_or("-", |b| b.name.as_str()),
            cache = self.cache.map(|c| tracing::field::display(c.as_str())),
            request_id = %self.request_id.to_str().unwrap_or("-"),
            client_cert = self.client_cert.as_deref(),
        );
    }
}
