//! HTTP fixtures: a real hyper backend that records what reaches it, and clients.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// What one request looked like when it reached the backend.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body_len: usize,
}

/// A hyper HTTP/1.1 backend. Paths:
/// - `/echo`: the request body back;
/// - `/bytes/N`: N bytes of the test pattern;
/// - `/slow/MS`: answers after MS milliseconds (and counts requests dropped unanswered);
/// - `/status/N`: that status;
/// - `/ws`: `101` to an upgrade, then echoes the upgraded stream;
/// - anything else: the backend's name.
///
/// Every response carries `x-backend: NAME` and, for the header tests,
/// `connection: x-hop`, `x-hop: 1`, `keep-alive: timeout=5`.
pub struct HttpBackend {
    pub addr: SocketAddr,
    pub name: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    accepted: Arc<AtomicUsize>,
    pub abandoned: Arc<AtomicUsize>,
    /// The status `/health` answers with.
    pub health: Arc<AtomicU16>,
    task: JoinHandle<()>,
}

struct Abandon(Arc<AtomicUsize>, bool);

impl Drop for Abandon {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

pub fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn backend_service(
    mut req: Request<Incoming>,
    name: Arc<str>,
    seen: Arc<Mutex<Vec<Seen>>>,
    abandoned: Arc<AtomicUsize>,
    health: Arc<AtomicU16>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/health" {
        let mut r = Response::new(full(""));
        *r.status_mut() = StatusCode::from_u16(health.load(Ordering::SeqCst)).unwrap();
        return Ok(r);
    }
    let mut record = Seen {
        method: req.method().clone(),
        uri: req.uri().to_string(),
        version: req.version(),
        headers: req.headers().clone(),
        body_len: 0,
    };
    let mut resp = if path == "/echo" {
        seen.lock().unwrap().push(record);
        Response::new(req.into_body().map_err(|e| Box::new(e) as BoxError).boxed())
    } else if path == "/ws" {
        seen.lock().unwrap().push(record);
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        });
        let mut r = Response::new(full(""));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        r.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        return Ok(r);
    } else {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        record.body_len = body.len();
        seen.lock().unwrap().push(record);
        if let Some(n) = path.strip_prefix("/bytes/") {
            Response::new(full(pattern(n.parse().unwrap_or(0))))
        } else if let Some(ms) = path.strip_prefix("/slow/") {
            let mut guard = Abandon(abandoned, false);
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            guard.1 = true;
            Response::new(full(name.to_string()))
        } else if let Some(code) = path.strip_prefix("/status/") {
            let mut r = Response::new(full(""));
            *r.status_mut() = StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap();
            r
        } else {
            Response::new(full(name.to_string()))
        }
    };
    let h = resp.headers_mut();
    h.insert("x-backend", name.parse().unwrap());
    h.insert("connection", "x-hop".parse().unwrap());
    h.insert("x-hop", "1".parse().unwrap());
    h.insert("keep-alive", "timeout=5".parse().unwrap());
    Ok(resp)
}

impl HttpBackend {
    pub async fn start(name: &str) -> HttpBackend {
        Self::start_at(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// As `start`, listening on `addr` (another loopback address, a given port).
    pub async fn start_at(name: &str, addr: SocketAddr) -> HttpBackend {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let abandoned = Arc::new(AtomicUsize::new(0));
        let health = Arc::new(AtomicU16::new(200));
        let (s, a, ab, hl) = (
            seen.clone(),
            accepted.clone(),
            abandoned.clone(),
            health.clone(),
        );
        let n: Arc<str> = Arc::from(name);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let (s, ab, n, hl) = (s.clone(), ab.clone(), n.clone(), hl.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        backend_service(req, n.clone(), s.clone(), ab.clone(), hl.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        HttpBackend {
            addr,
            name: name.to_string(),
            seen,
            accepted,
            abandoned,
            health,
            task,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.requests().pop().expect("the backend saw a request")
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A backend that answers every request with `reply` as raw bytes, then closes.
pub async fn raw_backend(reply: &'static [u8]) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, task)
}

pub fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 (prior knowledge) client: one connection, shared by its requests.
pub type H2cClient = Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

pub fn h2c_client() -> H2cClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub fn empty() -> Body {
    Empty::<Bytes>::new().map_err(|e| match e {}).boxed()
}

pub fn body(b: impl Into<Bytes>) -> Body {
    full(b)
}

/// Sends a request and returns the status, headers and whole body.
pub async fn send(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Body>,
    req: Request<Body>,
) -> (StatusCode, HeaderMap, Bytes) {
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("response in time")
        .expect("response");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, headers, body)
}

pub async fn get(addr: SocketAddr, path: &str) -> (StatusCode, HeaderMap, Bytes) {
    let req = Request::get(format!("http://{addr}{path}"))
        .body(empty())
        .unwrap();
    send(&client(), req).await
}

/// A GET with extra request headers.
pub async fn get_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Bytes) {
    let mut b = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(&client(), b.body(empty()).unwrap()).await
}

/// An HTTP/1.1 origin that answers every request with `body`, fresh for a minute
/// (`Cache-Control: max-age=60`), and counts the requests it answered.
pub async fn fresh_origin(body: &'static str) -> (SocketAddr, Arc<AtomicUsize>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let h = h.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    h.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let mut r = Response::new(full(body));
                        r.headers_mut()
                            .insert("cache-control", "max-age=60".parse().unwrap());
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, hits, task)
}

/// Writes `raw` on a new connection and reads until the peer closes (or 10 s pass).
pub async fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> String {
    raw_exchange_within(addr, raw, Duration::from_secs(10)).await
}

/// To a listener with `max_header_size` of 8 KiB and a short `header_timeout`: a
/// malformed head (the parser's 400), one too large (431), one begun and never
/// finished (a 408, logged, no answer), and a connection that says nothing.
pub async fn unreadable_heads(addr: SocketAddr) {
    let answer = raw_exchange(addr, b"GET / HTTP/1.1\r\nhost a\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let big = format!(
        "GET / HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n",
        "b".repeat(20_000)
    );
    let answer = raw_exchange(addr, big.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let _ = raw_exchange(addr, b"GET / HTTP/1.1\r\nhost: a\r\n").await;
    let _ = raw_exchange(addr, b"").await;
}

/// Writes `raw` and reads until the peer closes or stays silent for `quiet`.
pub async fn raw_exchange_within(addr: SocketAddr, raw: &[u8], quiet: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(raw).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(quiet, s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}
