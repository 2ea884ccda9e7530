//! An HTTP/2 backend speaking like a gRPC server.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, Version};
use http_body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// An HTTP/2 (prior knowledge) backend answering every call by echoing the request
/// body as it arrives, then trailers `grpc-status: 0` and `x-backend`. `/slow` waits
/// a second before answering; `/health` answers 200.
pub struct H2Backend {
    pub addr: SocketAddr,
    /// TCP connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// Each call's HTTP version and headers.
    pub seen: Arc<Mutex<Vec<(Version, HeaderMap)>>>,
    /// `/health` requests that came over HTTP/2.
    pub health_checks: Arc<AtomicUsize>,
    /// What `grpc.health.v1.Health/Check` answers (1: SERVING, 2: NOT_SERVING).
    pub grpc_health: Arc<std::sync::atomic::AtomicU8>,
    /// The `HealthCheckRequest` messages it got (framed).
    pub grpc_health_asked: Arc<Mutex<Vec<Bytes>>>,
    /// Sends GOAWAY on every open connection (they finish their streams and close).
    pub goaway: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

/// The request body echoed, then the trailers.
struct Echo {
    inner: Incoming,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for Echo {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        loop {
            return match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) if f.is_data() => Poll::Ready(Some(Ok(f))),
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
                }
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

impl H2Backend {
    pub async fn start(name: &'static str) -> H2Backend {
        H2Backend::start_with(name, None).await
    }

    /// With `SETTINGS_MAX_CONCURRENT_STREAMS` of `streams` on every connection.
    pub async fn start_with(name: &'static str, streams: Option<u32>) -> H2Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let health_checks = Arc::new(AtomicUsize::new(0));
        let goaway = Arc::new(tokio::sync::Notify::new());
        let grpc_health = Arc::new(std::sync::atomic::AtomicU8::new(1));
        let grpc_health_asked = Arc::new(Mutex::new(Vec::new()));
        let (c, s, h, g) = (
            connections.clone(),
            seen.clone(),
            health_checks.clone(),
            goaway.clone(),
        );
        let (gh, ga) = (grpc_health.clone(), grpc_health_asked.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let (seen, health) = (s.clone(), h.clone());
                let (gh, ga) = (gh.clone(), ga.clone());
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (seen, health) = (seen.clone(), health.clone());
                    let (gh, ga) = (gh.clone(), ga.clone());
                    async move {
                        if req.uri().path() == "/grpc.health.v1.Health/Check" {
                            use http_body_util::BodyExt;
                            let asked = req.into_body().collect().await.unwrap().to_bytes();
                            ga.lock().unwrap().push(asked);
                            let status = gh.load(Ordering::SeqCst);
                            let mut trailers = HeaderMap::new();
                            trailers.insert("grpc-status", "0".parse().unwrap());
                            let frames: Vec<Result<Frame<Bytes>, hyper::Error>> = vec![
                                Ok(Frame::data(Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]))),
                                Ok(Frame::trailers(trailers)),
                            ];
                            let body =
                                http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                            let mut r = Response::new(BodyExt::boxed(body));
                            r.headers_mut()
                                .insert("content-type", "application/grpc".parse().unwrap());
                            return Ok::<_, Infallible>(r);
                        }
                        if req.uri().path() == "/health" {
                            if req.version() == Version::HTTP_2 {
                                health.fetch_add(1, Ordering::SeqCst);
                            }
                        } else {
                            seen.lock()
                                .unwrap()
                                .push((req.version(), req.headers().clone()));
                        }
                        if req.uri().path() == "/slow" {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        let mut trailers = HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        trailers.insert("x-backend", name.parse().unwrap());
                        let mut r = Response::new(http_body_util::BodyExt::boxed(Echo {
                            inner: req.into_body(),
                            trailers: Some(trailers),
                        }));
                        r.headers_mut()
                            .insert("content-type", "application/grpc".parse().unwrap());
                        Ok::<_, Infallible>(r)
                    }
                });
                let goaway = g.clone();
                tokio::spawn(async move {
                    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .max_concurrent_streams(streams)
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        _ = goaway.notified() => conn.as_mut().graceful_shutdown(),
                    }
                    let _ = conn.await;
                });
            }
        });
        H2Backend {
            addr,
            connections,
            seen,
            health_checks,
            goaway,
            grpc_health,
            grpc_health_asked,
            task,
        }
    }

    pub fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for H2Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A gRPC message: flag, length, payload.
pub fn message(payload: &[u8]) -> Bytes {
    let mut m = vec![0u8];
    m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    m.extend_from_slice(payload);
    Bytes::from(m)
}
