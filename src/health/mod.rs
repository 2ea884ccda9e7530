//! Active health checks: one checker task per backend (per upstream and address),
//! shared by every generation that has it, probing every `interval` (jittered so that
//! many backends are not probed together) within `timeout`, and marking the backend
//! down after `fall` failures in a row and up after `rise` successes. Transitions are
//! logged once each. A passing check also ends a passive ejection.
//!
//! Checkers write `BackendState` only; the engines never run checks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{CheckKind, Config, Health, UpstreamTls};
use crate::tls::BackendTls;
use crate::upstream::{BackendState, Registry};

/// What one checker probes; a change restarts it.
#[derive(Debug, Clone, PartialEq)]
struct Spec {
    addr: SocketAddr,
    /// The backend's address as written, sent as `Host`.
    host: String,
    name: String,
    health: Health,
    /// The upstream's TLS to its backends: http checks use it too.
    tls: Option<UpstreamTls>,
    /// The upstream sends PROXY headers (`Some(true)`: v2): http checks start with a
    /// `LOCAL` (v1: `UNKNOWN`) one, as a backend that expects them needs.
    proxy_protocol: Option<bool>,
    /// The upstream speaks HTTP/2 (`h2c`, `h2`): http checks do too.
    http2: bool,
}

struct Running {
    spec: Spec,
    stop: CancellationToken,
}

/// The running checkers, keyed by (upstream, address).
#[derive(Default)]
pub struct Supervisor {
    running: Mutex<HashMap<(String, String), Running>>,
}

impl Supervisor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts checkers for every backend of `config` whose upstream has `[health]`, and
    /// stops those no longer wanted. A checker whose settings did not change keeps
    /// running, with its counts.
    pub fn sync(&self, config: &Config, registry: &Registry) {
        let mut wanted: HashMap<(String, String), Spec> = HashMap::new();
        for u in &config.upstreams {
            let Some(health) = &u.health else { continue };
            for b in &u.backends {
                wanted.insert(
                    (u.name.clone(), b.address.clone()),
                    Spec {
                        addr: b.resolved,
                        host: b.address.clone(),
                        name: b.name.clone(),
                        health: health.clone(),
                        tls: u.tls.clone(),
                        proxy_protocol: u.proxy_protocol,
                        http2: u.protocol.is_http2(),
                    },
                );
            }
        }
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.retain(|key, r| {
            let keep = wanted.get(key) == Some(&r.spec);
            if !keep {
                r.stop.cancel();
                let still_there = config
                    .upstream(&key.0)
                    .is_some_and(|u| u.backends.iter().any(|b| b.address == key.1));
                if still_there && !wanted.contains_key(key) {
                    // Checks are off now: nothing would ever bring it back up.
                    registry.state(&key.0, &key.1).set_healthy(true);
                }
            }
            keep
        });
        for (key, spec) in wanted {
            if running.contains_key(&key) {
                continue;
            }
            let state = registry.state(&key.0, &key.1);
            let stop = CancellationToken::new();
            tokio::spawn(check_loop(key.0.clone(), spec.clone(), state, stop.clone()));
            running.insert(key, Running { spec, stop });
        }
    }

    pub fn stop_all(&self) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        for (_, r) in running.drain() {
            r.stop.cancel();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// `interval`, give or take a tenth, so that checks spread out.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.9 + fastrand::f64() * 0.2)
}

async fn check_loop(
    upstream: String,
    spec: Spec,
    state: Arc<BackendState>,
    stop: CancellationToken,
) {
    let tls = match &spec.tls {
        Some(t) => match BackendTls::new(t, if spec.http2 { &[b"h2"] } else { &[b"http/1.1"] }) {
            Ok(tls) => Some(tls),
            Err(e) => {
                warn!(upstream = %upstream, backend = %spec.name, error = %e, "health checks cannot set up TLS");
                None
            }
        },
        None => None,
    };
    let h = &spec.health;
    let first = h.interval.mul_f64(fastrand::f64());
    let mut successes = 0u32;
    let mut failures = 0u32;
    let mut wait = first;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = jittered(h.interval);
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(h.timeout, probe(&spec, tls.as_ref())) => r.unwrap_or_else(|_| Err(format!("no answer within {:?}", h.timeout))),
        };
        match result {
            Ok(()) => {
                successes += 1;
                failures = 0;
                if !state.is_healthy() && successes >= h.rise && state.set_healthy(true) {
                    info!(upstream = %upstream, backend = %spec.name, backend.addr = %spec.addr, "backend up: health checks pass");
                }
                if state.clear_ejection() {
                    info!(upstream = %upstream, backend = %spec.name, "ejection ended by a passing health check");
                }
            }
            Err(e) => {
                failures += 1;
                successes = 0;
                debug!(upstream = %upstream, backend = %spec.name, error = %e, "health check failed");
                if state.is_healthy() && failures >= h.fall && state.set_healthy(false) {
                    warn!(upstream = %upstream, backend = %spec.name, backend.addr = %spec.addr, error = %e, failures, "backend down: health checks fail");
                }
            }
        }
    }
}

async fn probe(spec: &Spec, tls: Option<&BackendTls>) -> Result<(), String> {
    let mut stream = TcpStream::connect(spec.addr)
        .await
        .map_err(|e| e.to_string())?;
    if spec.health.check == CheckKind::Tcp {
        return Ok(());
    }
    if let Some(v2) = spec.proxy_protocol {
        tokio::io::AsyncWriteExt::write_all(&mut stream, &crate::proxy_protocol::write(v2, None))
            .await
            .map_err(|e| format!("PROXY header: {e}"))?;
    }
    match tls {
        None => http_probe(spec, stream).await,
        Some(tls) => {
            let stream = tls
                .connect(stream, &spec.host)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            http_probe(spec, stream).await
        }
    }
}

async fn http_probe<S>(spec: &Spec, stream: S) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let status = if spec.http2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        let conn = tokio::spawn(conn);
        let scheme = if spec.tls.is_some() { "https" } else { "http" };
        let req = Request::get(format!("{scheme}://{}{}", spec.host, spec.health.path))
            .header(header::USER_AGENT, "fulcrum-health-check")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string());
        conn.abort();
        resp?.status().as_u16()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        let conn = tokio::spawn(conn);
        let req = Request::get(spec.health.path.as_str())
            .header(header::HOST, spec.host.as_str())
            .header(header::USER_AGENT, "fulcrum-health-check")
            .header(header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string());
        conn.abort();
        resp?.status().as_u16()
    };
    let (lo, hi) = spec.health.expect_status;
    if (lo..=hi).contains(&status) {
        Ok(())
    } else {
        Err(format!("status {status}, expected {lo}-{hi}"))
    }
}
