//! Active health checks: one checker task per backend (per upstream and address),
//! shared by every generation that has it, probing every `interval` (jittered so that
//! many backends are not probed together) within `timeout`, and marking the backend
//! down after `fall` failures in a row and up after `rise` successes. Transitions are
//! logged once each. A passing check also ends a passive ejection.
//!
//! Checkers write `BackendState` only; the engines never run checks. What real
//! requests' failures mean (passive ejection) is decided in [`passive`].

pub(crate) mod passive;

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
    /// The upstream's protocol: http checks speak it (with `auto`, what ALPN picks).
    protocol: crate::config::UpstreamProtocol,
}

struct Running {
    spec: Spec,
    stop: CancellationToken,
}

/// The running checkers, keyed by (upstream, address).
#[derive(Default)]
pub(crate) struct Supervisor {
    running: Mutex<HashMap<(String, String), Running>>,
}

impl Supervisor {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Starts checkers for every backend of `config` whose upstream has `[health]`, and
    /// stops those no longer wanted. A checker whose settings did not change keeps
    /// running, with its counts.
    pub(crate) fn sync(&self, config: &Config, registry: &Registry) {
        let mut wanted: HashMap<(String, String), Spec> = HashMap::new();
        for u in &config.upstreams {
            let Some(health) = &u.health else { continue };
            for b in &u.backends {
                wanted.insert(
                    (u.name.clone(), b.address.clone()),
                    Spec {
                        addr: b.resolved,
                        host: b.host.clone(),
                        name: b.name.clone(),
                        health: health.clone(),
                        tls: u.tls.clone(),
                        proxy_protocol: u.proxy_protocol,
                        protocol: u.protocol,
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

    pub(crate) fn stop_all(&self) {
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
        Some(t) => match BackendTls::new(t, spec.protocol.alpn()) {
            Ok(tls) => Some(tls),
            Err(e) => {
                warn!(upstream = %upstream, backend.name = %spec.name, error = %e, "health checks cannot set up TLS");
                None
            }
        },
        None => None,
    };
    let prober = || probe(&spec, tls.as_ref());
    run_checks(&upstream, &spec, &state, &stop, prober).await;
}

/// The checker's schedule and verdicts: a first probe at a random point of the first
/// interval, then one every (jittered) `interval`, each given `timeout`; `fall`
/// failures in a row mark the backend down, `rise` successes up; a success also
/// ends a passive ejection. `prober` makes one probe.
async fn run_checks<P, F>(
    upstream: &str,
    spec: &Spec,
    state: &BackendState,
    stop: &CancellationToken,
    mut prober: P,
) where
    P: FnMut() -> F,
    F: std::future::Future<Output = Result<(), String>>,
{
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
            r = tokio::time::timeout(h.timeout, prober()) => r.unwrap_or_else(|_| Err(format!("no answer within {:?}", h.timeout))),
        };
        match result {
            Ok(()) => {
                successes += 1;
                failures = 0;
                state.set_verified();
                if !state.is_healthy() && successes >= h.rise && state.set_healthy(true) {
                    info!(upstream = %upstream, backend.name = %spec.name, backend.addr = %spec.addr, "backend up: health checks pass");
                }
                if state.clear_ejection() {
                    info!(upstream = %upstream, backend.name = %spec.name, "ejection ended by a passing health check");
                }
            }
            Err(e) => {
                failures += 1;
                successes = 0;
                debug!(upstream = %upstream, backend.name = %spec.name, error = %e, "health check failed");
                if state.is_healthy() && failures >= h.fall && state.set_healthy(false) {
                    warn!(upstream = %upstream, backend.name = %spec.name, backend.addr = %spec.addr, error = %e, failures, "backend down: health checks fail");
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
    let h2 = spec.protocol.is_http2();
    match tls {
        None => http_probe(spec, stream, h2).await,
        Some(tls) => {
            let stream = tls
                .connect(stream, &spec.host)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            let h2 = h2 && stream.get_ref().1.alpn_protocol() == Some(b"h2");
            http_probe(spec, stream, h2).await
        }
    }
}

async fn http_probe<S>(spec: &Spec, stream: S, h2: bool) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if spec.health.check == CheckKind::Grpc {
        return grpc_probe(spec, stream).await;
    }
    let status = if h2 {
        let (mut sender, conn, scheme) = http2(spec, stream).await?;
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

/// An HTTP/2 connection for one check: its sender, its task (to abort after the
/// check) and the scheme of its requests.
async fn http2<S, B>(
    spec: &Spec,
    stream: S,
) -> Result<
    (
        hyper::client::conn::http2::SendRequest<B>,
        tokio::task::JoinHandle<Result<(), hyper::Error>>,
        &'static str,
    ),
    String,
>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    let scheme = if spec.tls.is_some() { "https" } else { "http" };
    Ok((sender, tokio::spawn(conn), scheme))
}

/// `grpc.health.v1.Health/Check` for `health.grpc_service`: passes on `SERVING`.
async fn grpc_probe<S>(spec: &Spec, stream: S) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::{BodyExt, Full, Limited};
    let (mut sender, conn, scheme) = http2(spec, stream).await?;
    let req = Request::post(format!(
        "{scheme}://{}/grpc.health.v1.Health/Check",
        spec.host
    ))
    .header(header::CONTENT_TYPE, "application/grpc")
    .header(header::TE, "trailers")
    .header(header::USER_AGENT, "fulcrum-health-check")
    .body(Full::new(Bytes::from(grpc_health_request(
        &spec.health.grpc_service,
    ))))
    .map_err(|e| e.to_string())?;
    let answer = async {
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let whole = Limited::new(body, 64 * 1024)
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((parts, whole))
    }
    .await;
    conn.abort();
    let (parts, whole) = answer?;
    if parts.status != 200 {
        return Err(format!("status {}", parts.status.as_u16()));
    }
    let grpc_status = whole
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| parts.headers.get("grpc-status"))
        .map(|v| v.as_bytes().to_vec());
    if grpc_status.as_deref() != Some(b"0") {
        return Err(format!(
            "grpc-status {}",
            String::from_utf8_lossy(grpc_status.as_deref().unwrap_or(b"missing"))
        ));
    }
    match grpc_health_status(&whole.to_bytes()) {
        Some(1) => Ok(()),
        Some(2) => Err("NOT_SERVING".into()),
        Some(3) => Err("SERVICE_UNKNOWN".into()),
        Some(_) => Err("UNKNOWN".into()),
        None => Err("not a HealthCheckResponse".into()),
    }
}

/// A `HealthCheckRequest { service }` in its gRPC frame.
fn grpc_health_request(service: &str) -> Vec<u8> {
    let mut message = Vec::with_capacity(service.len() + 4);
    if !service.is_empty() {
        message.push(0x0a); // field 1, length-delimited
        prost::encoding::encode_varint(service.len() as u64, &mut message);
        message.extend_from_slice(service.as_bytes());
    }
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    frame
}

/// The `status` of a `HealthCheckResponse` in its gRPC frame (0, UNKNOWN, when the
/// field is absent); `None` for anything else.
fn grpc_health_status(frame: &[u8]) -> Option<u64> {
    let (head, message) = frame.split_at_checked(5)?;
    if head[0] != 0
        || u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize != message.len()
    {
        return None;
    }
    let mut buf = message;
    let mut status = 0;
    while !buf.is_empty() {
        let key = prost::encoding::decode_varint(&mut buf).ok()?;
        match (key >> 3, key & 7) {
            (1, 0) => status = prost::encoding::decode_varint(&mut buf).ok()?,
            (_, 0) => {
                prost::encoding::decode_varint(&mut buf).ok()?;
            }
            (_, 2) => {
                let n = usize::try_from(prost::encoding::decode_varint(&mut buf).ok()?).ok()?;
                buf = buf.get(n..)?;
            }
            _ => return None,
        }
    }
    Some(status)
}

#[cfg(test)]
mod grpc_tests {
    use super::*;

    #[test]
    fn health_requests_and_answers_are_framed_as_grpc_says() {
        assert_eq!(grpc_health_request(""), [0, 0, 0, 0, 0]);
        assert_eq!(
            grpc_health_request("a.B"),
            [0, 0, 0, 0, 5, 0x0a, 3, b'a', b'.', b'B']
        );
        assert_eq!(grpc_health_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
        assert_eq!(grpc_health_status(&[0, 0, 0, 0, 2, 0x08, 2]), Some(2));
        assert_eq!(grpc_health_status(&[0, 0, 0, 0, 0]), Some(0));
        // Unknown fields are skipped; a wrong length or a compressed frame is refused.
        assert_eq!(
            grpc_health_status(&[0, 0, 0, 0, 5, 0x12, 1, b'x', 0x08, 1]),
            Some(1)
        );
        assert_eq!(grpc_health_status(&[0, 0, 0, 0, 3, 0x08, 1]), None);
        assert_eq!(grpc_health_status(&[1, 0, 0, 0, 2, 0x08, 1]), None);
        assert_eq!(grpc_health_status(&[0, 0, 0]), None);
        assert_eq!(grpc_health_status(&[0, 0, 0, 0, 2, 0x0d, 1]), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A spec with `interval = "1s"`, `timeout = "500ms"`, `rise = 2`, `fall = 3`.
    fn spec() -> Spec {
        let src = "[[listener]]\nname = \"t\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nupstream = \"app\"\n\
                   [upstream.app]\nbackends = [{ address = \"127.0.0.1:1\" }]\n\
                   health = { check = \"tcp\", interval = \"1s\", timeout = \"500ms\", rise = 2, fall = 3 }\n";
        let config = Config::parse(src, std::path::Path::new("t.toml")).unwrap();
        let (u, b) = (&config.upstreams[0], &config.upstreams[0].backends[0]);
        Spec {
            addr: b.resolved,
            host: b.host.clone(),
            name: b.name.clone(),
            health: u.health.clone().unwrap(),
            tls: None,
            proxy_protocol: None,
            protocol: u.protocol,
        }
    }

    /// Runs the checker against scripted probe results (`None`: a probe that never
    /// answers) under tokio's paused clock. Returns the backend's health as each
    /// probe began (what the results before it left), and as the one after the
    /// script began (what the last result left).
    async fn scripted(results: Vec<Option<bool>>) -> Vec<bool> {
        let registry = Registry::new();
        let state = registry.state("app", "127.0.0.1:1");
        let count = results.len();
        let script = Mutex::new(VecDeque::from(results));
        let seen = Mutex::new(Vec::new());
        let stop = CancellationToken::new();
        let spec = spec();
        let checker = run_checks("app", &spec, &state, &stop, || {
            let next = script.lock().unwrap().pop_front();
            seen.lock().unwrap().push(state.is_healthy());
            async move {
                match next {
                    Some(Some(true)) => Ok(()),
                    Some(Some(false)) => Err("refused".to_string()),
                    // Never answers: the timeout decides.
                    Some(None) | None => std::future::pending().await,
                }
            }
        });
        // Long enough (in paused time) for one probe past the script, whose start
        // shows the last verdict: the probes come about a second apart.
        let _ = tokio::time::timeout(Duration::from_secs(2 * count as u64 + 3), checker).await;
        let mut seen = seen.into_inner().unwrap();
        assert!(seen.len() > count, "{} probes", seen.len());
        seen.truncate(count + 1);
        seen
    }

    #[tokio::test(start_paused = true)]
    async fn fall_failures_in_a_row_mark_down_and_rise_successes_mark_up() {
        let (f, t) = (Some(false), Some(true));
        // Down only at the third failure in a row (a success between resets the
        // count); up again at the second success.
        assert_eq!(
            scripted(vec![f, f, t, f, f, f, t, t]).await,
            [true, true, true, true, true, true, false, false, true]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_never_answers_fails_at_the_timeout() {
        assert_eq!(
            scripted(vec![None, None, None, Some(true), Some(true)]).await,
            [true, true, true, false, false, true]
        );
    }
}
