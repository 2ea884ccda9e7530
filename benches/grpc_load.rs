//! A gRPC origin and a unary-call load client for `benches/load/grpc.sh`.
//!
//!   grpc_load serve ADDR                        # an echo.Echo/Unary server on ADDR
//!   grpc_load load ADDR CONNECTIONS CALLS SECS  # CALLS concurrent calls per
//!                                               # connection for SECS; prints calls/s
//!
//! Without arguments (as `cargo bench` runs it) it prints this and exits.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use tonic::codegen::{BoxFuture, Service};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
}

struct Unary;
impl tonic::server::UnaryService<Msg> for Unary {
    type Response = Msg;
    type Future = BoxFuture<Response<Msg>, Status>;
    fn call(&mut self, r: Request<Msg>) -> Self::Future {
        Box::pin(async move { Ok(Response::new(r.into_inner())) })
    }
}

#[derive(Clone)]
struct Echo;

impl Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default());
            Ok(match req.uri().path() {
                "/echo.Echo/Unary" => grpc.unary(Unary, req).await,
                _ => Status::unimplemented("").into_http(),
            })
        })
    }
}

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "echo.Echo";
}

async fn serve(addr: SocketAddr) {
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    tonic::transport::Server::builder()
        .add_service(Echo)
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
        .await
        .expect("serve");
}

async fn load(addr: SocketAddr, connections: usize, calls: usize, secs: u64) {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .expect("address")
            .connect()
            .await
            .expect("connect");
        for _ in 0..calls {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            let (done, failed, stop) = (done.clone(), failed.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let ok = match grpc.ready().await {
                        Ok(()) => grpc
                            .unary(
                                Request::new(Msg {
                                    text: "ping".into(),
                                }),
                                PathAndQuery::from_static("/echo.Echo/Unary"),
                                ProstCodec::<Msg, Msg>::default(),
                            )
                            .await
                            .is_ok(),
                        Err(_) => false,
                    };
                    if ok { &done } else { &failed }.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (n, elapsed) = (done.load(Ordering::Relaxed), started.elapsed());
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    println!(
        "calls {n} failed {} seconds {:.2} calls/s {:.0}",
        failed.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let addr = |i: usize| -> SocketAddr { args[i].parse().expect("an address") };
    let num = |i: usize| -> u64 { args[i].parse().expect("a number") };
    match args.first().map(String::as_str) {
        Some("serve") if args.len() == 2 => runtime.block_on(serve(addr(1))),
        Some("load") if args.len() == 5 => {
            runtime.block_on(load(addr(1), num(2) as usize, num(3) as usize, num(4)))
        }
        _ => println!("usage: grpc_load serve ADDR | grpc_load load ADDR CONNECTIONS CALLS SECS"),
    }
}
