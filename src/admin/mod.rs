//! The admin API on its own listener: health, metrics, status, reload, drain. It acts
//! through [`Control`], which the runtime implements, so this module knows nothing of
//! how the server is put together.

mod dashboard;
pub mod metrics;
pub mod status;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Admin request bodies are small JSON documents.
const MAX_BODY: usize = 64 * 1024;
/// Admin connections open at once; more are closed at once.
const MAX_CONNECTIONS: usize = 64;
/// Time allowed to read a request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request under way may take to finish once the API stops.
const STOP_GRACE: Duration = Duration::from_secs(10);

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the admin API can ask of the running server.
pub trait Control: Send + Sync + 'static {
    /// The `/status` document.
    fn status(&self) -> serde_json::Value;
    /// Reloads the configuration file: the new generation, or why it was refused.
    fn reload(&self) -> BoxFuture<'_, Result<u64, String>>;
    /// Drains or takes back a backend; `Err` names what does not exist.
    fn set_draining(&self, upstream: &str, backend: &str, draining: bool) -> Result<(), String>;
    /// The Prometheus text of every metric.
    fn metrics(&self) -> String;
    /// Drops the cached responses of `host` (and under `path_prefix`): how many, or
    /// `None` when no route caches.
    fn purge_cache(&self, host: Option<&str>, path_prefix: Option<&str>) -> Option<usize>;
    /// `POST /bgp/withdraw` (true) or `/bgp/announce` (false); `Err` when no
    /// `[bgp]` is configured.
    fn bgp_maintenance(&self, withdraw: bool) -> Result<(), String>;
    /// What the dashboard polls: the `/status` document and the metric families it
    /// computes rates and latencies from.
    fn dashboard(&self) -> serde_json::Value;
    /// The bearer token POST requests need, if one is configured.
    fn token(&self) -> Option<String>;
}

/// The body of `POST /cache/purge`: both optional.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeFilter {
    host: Option<String>,
    path_prefix: Option<String>,
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    json_response(status, json!({ "error": message.into() }))
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Whether the request carries the configured token (compared in constant time).
fn authorized(req: &Request<Incoming>, token: Option<&str>) -> bool {
    let Some(token) = token else { return true };
    // The scheme name is case-insensitive (RFC 9110 11.1).
    let Some(given) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token)
    else {
        return false;
    };
    given.trim().as_bytes().ct_eq(token.as_bytes()).into()
}

/// Whether a browser sent the request on behalf of another site (RFC 6454 `Origin`,
/// Fetch metadata's `Sec-Fetch-Site`): a page elsewhere must not be able to reload,
/// drain or purge through a browser that can reach the admin API.
fn cross_site(req: &Request<Incoming>) -> bool {
    let h = req.headers();
    let fetch_site = h
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
    let foreign_origin = h.get(header::ORIGIN).is_some_and(|origin| {
        let own = h.get(header::HOST).and_then(|v| v.to_str().ok());
        let given = origin.to_str().ok().and_then(|o| {
            o.strip_prefix("http://")
                .or_else(|| o.strip_prefix("https://"))
        });
        match (given, own) {
            (Some(given), Some(own)) => !given.eq_ignore_ascii_case(own),
            _ => true,
        }
    });
    fetch_site || foreign_origin
}

/// Whether the request has a body that is not declared `application/json`.
fn body_not_json(req: &Request<Incoming>) -> bool {
    let h = req.headers();
    match h.get(header::CONTENT_TYPE) {
        Some(ct) => {
            let media = ct
                .to_str()
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim();
            !media.eq_ignore_ascii_case("application/json")
        }
        None => {
            h.contains_key(header::TRANSFER_ENCODING)
                || h.get(header::CONTENT_LENGTH)
                    .is_some_and(|v| v.as_bytes() != b"0")
        }
    }
}

async fn route(req: Request<Incoming>, control: &dyn Control) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let changes = method == Method::POST || method == Method::DELETE;
    if changes && cross_site(&req) {
        return error(StatusCode::FORBIDDEN, "cross-site requests are refused");
    }
    if changes && !authorized(&req, control.token().as_deref()) {
        let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    if changes && body_not_json(&req) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "request bodies must be application/json",
        );
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => {
            text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into())
        }
        (&Method::GET, ["metrics"]) => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            control.metrics(),
        ),
        (&Method::GET, ["status"]) => json_response(StatusCode::OK, control.status()),
        (&Method::GET, [""]) => dashboard::page(dashboard::INDEX, "text/html; charset=utf-8"),
        (&Method::GET, ["dashboard", "app.js"]) => {
            dashboard::page(dashboard::SCRIPT, "text/javascript; charset=utf-8")
        }
        (&Method::GET, ["dashboard", "style.css"]) => {
            dashboard::page(dashboard::STYLE, "text/css; charset=utf-8")
        }
        (&Method::GET, ["dashboard", "data"]) => {
            let mut r = json_response(StatusCode::OK, control.dashboard());
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        (&Method::POST, ["reload"]) => match control.reload().await {
            Ok(generation) => json_response(StatusCode::OK, json!({ "generation": generation })),
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        },
        (
            &Method::POST,
            ["upstreams", upstream, "backends", backend, action @ ("drain" | "undrain")],
        ) => {
            let upstream = percent_decode(upstream);
            let backend = percent_decode(backend);
            match control.set_draining(&upstream, &backend, *action == "drain") {
                Ok(()) => json_response(
                    StatusCode::OK,
                    json!({ "upstream": upstream, "backend": backend, "draining": *action == "drain" }),
                ),
                Err(e) => error(StatusCode::NOT_FOUND, e),
            }
        }
        (&Method::POST, ["cache", "purge"]) => {
            let read = tokio::time::timeout(
                BODY_TIMEOUT,
                Limited::new(req.into_body(), MAX_BODY).collect(),
            );
            let Ok(read) = read.await else {
                return error(
                    StatusCode::REQUEST_TIMEOUT,
                    "the body did not arrive in time",
                );
            };
            match read {
                Ok(body) => {
                    let bytes = body.to_bytes();
                    let filter = if bytes.iter().all(u8::is_ascii_whitespace) {
                        PurgeFilter::default()
                    } else {
                        match serde_json::from_slice::<PurgeFilter>(&bytes) {
                            Ok(f) => f,
                            Err(e) => {
                                return error(
                                    StatusCode::BAD_REQUEST,
                                    format!("the body is not a purge request: {e}"),
                                )
                            }
                        }
                    };
                    match control.purge_cache(filter.host.as_deref(), filter.path_prefix.as_deref())
                    {
                        Some(n) => json_response(StatusCode::OK, json!({ "purged": n })),
                        None => error(StatusCode::NOT_FOUND, "no response cache is configured"),
                    }
                }
                Err(_) => error(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
            }
        }
        (&Method::POST, ["bgp", action @ ("withdraw" | "announce")]) => {
            match control.bgp_maintenance(*action == "withdraw") {
                Ok(()) => json_response(
                    StatusCode::OK,
                    json!({ "maintenance": *action == "withdraw" }),
                ),
                Err(e) => error(StatusCode::NOT_FOUND, e),
            }
        }
        (_, ["bgp", "withdraw" | "announce"]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        (_, ["healthz" | "metrics" | "status" | "reload"]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}

/// `%2F` and friends in path segments (backend names default to `host:port`).
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Serves the admin API on `listener` until `stop` fires.
pub async fn serve(listener: TcpListener, control: Arc<dyn Control>, stop: CancellationToken) {
    let places = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer): (_, SocketAddr) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            debug!(client.addr = %peer, "too many admin connections: closed");
            continue;
        };
        let control = control.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _place = place;
            let service = service_fn(move |req| {
                let control = control.clone();
                async move { Ok::<_, Infallible>(route(req, control.as_ref()).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = stop.cancelled() => None,
            };
            let ended = match ended {
                Some(r) => r,
                // Stopped (a reload moved the API, or shutdown): the request under way
                // (a POST /reload that moved it, say) still gets its answer.
                None => {
                    conn.as_mut().graceful_shutdown();
                    match tokio::time::timeout(STOP_GRACE, conn.as_mut()).await {
                        Ok(r) => r,
                        Err(_) => Ok(()),
                    }
                }
            };
            if let Err(e) = ended {
                debug!(client.addr = %peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(percent_decode("127.0.0.1%3A9001"), "127.0.0.1:9001");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("bad%zz"), "bad%zz");
        assert_eq!(percent_decode("end%4"), "end%4");
    }
}
