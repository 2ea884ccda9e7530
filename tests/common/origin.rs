//! A scripted HTTP/1.1 origin: each answer chosen by the test from the request and
//! how many came before it (status, headers, body, a delay).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::http::Seen;

/// What the origin answers.
#[derive(Clone, Default)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
    pub delay: Duration,
}

pub fn reply(status: u16, headers: &[(&'static str, &str)], b: impl Into<Bytes>) -> Reply {
    Reply {
        status,
        headers: headers.iter().map(|(n, v)| (*n, v.to_string())).collect(),
        body: b.into(),
        delay: Duration::ZERO,
    }
}

type Script = dyn Fn(&Seen, usize) -> Reply + Send + Sync;

/// An HTTP/1.1 origin whose answers a test scripts: `script(request, n)` with `n`
/// the number of requests before this one.
pub struct Origin {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Responses whose delay ran out (those not cut short with their connection).
    pub answered: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Origin {
    pub async fn start(script: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let script: Arc<Script> = Arc::new(script);
        let count = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        let (s, a) = (seen.clone(), answered.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (seen, script, count, answered) =
                    (s.clone(), script.clone(), count.clone(), a.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (seen, script, count, answered) = (
                            seen.clone(),
                            script.clone(),
                            count.clone(),
                            answered.clone(),
                        );
                        async move {
                            let (parts, b) = req.into_parts();
                            let body_len = b.collect().await.map_or(0, |c| c.to_bytes().len());
                            let one = Seen {
                                method: parts.method,
                                uri: parts.uri.to_string(),
                                version: parts.version,
                                headers: parts.headers,
                                body_len,
                            };
                            let n = count.fetch_add(1, Ordering::SeqCst);
                            let r = script(&one, n);
                            seen.lock().unwrap().push(one);
                            if !r.delay.is_zero() {
                                tokio::time::sleep(r.delay).await;
                            }
                            answered.fetch_add(1, Ordering::SeqCst);
                            let mut resp = Response::new(Full::new(r.body));
                            *resp.status_mut() = StatusCode::from_u16(r.status).unwrap();
                            for (n, v) in r.headers {
                                resp.headers_mut().append(n, v.parse().unwrap());
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Origin {
            addr,
            seen,
            answered,
            task,
        }
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}
