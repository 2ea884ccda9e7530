//! gRPC through fulcrum with a real gRPC stack on both sides (tonic): the four call
//! kinds, balancing per call, and fulcrum's own failures as gRPC statuses.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use common::Fulcrum;
use futures_util::{Stream, StreamExt};
use http::uri::PathAndQuery;
use tonic::codegen::{BoxFuture, Service};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
}

fn msg(text: impl Into<String>) -> Msg {
    Msg { text: text.into() }
}

type Replies = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

/// `echo.Echo`: `Unary` (answers with the server's name), `Count` (server streaming:
/// `n` replies), `Join` (client streaming: one reply of all texts), `Chat` (each
/// message echoed as it arrives), `Slow` (answers after two seconds).
#[derive(Clone)]
struct Echo(&'static str);

struct Unary(&'static str, Duration);
impl tonic::server::UnaryService<Msg> for Unary {
    type Response = Msg;
    type Future = BoxFuture<Response<Msg>, Status>;
    fn call(&mut self, r: Request<Msg>) -> Self::Future {
        let (name, wait) = (self.0, self.1);
        Box::pin(async move {
            tokio::time::sleep(wait).await;
            Ok(Response::new(msg(format!(
                "{name}: {}",
                r.into_inner().text
            ))))
        })
    }
}

struct Count;
impl tonic::server::ServerStreamingService<Msg> for Count {
    type Response = Msg;
    type ResponseStream = Replies;
    type Future = BoxFuture<Response<Replies>, Status>;
    fn call(&mut self, r: Request<Msg>) -> Self::Future {
        Box::pin(async move {
            let n: usize = r
                .into_inner()
                .text
                .parse()
                .map_err(|_| Status::invalid_argument("n"))?;
            let replies = futures_util::stream::iter((0..n).map(|i| Ok(msg(i.to_string()))));
            Ok(Response::new(Box::pin(replies) as Replies))
        })
    }
}

struct Join;
impl tonic::server::ClientStreamingService<Msg> for Join {
    type Response = Msg;
    type Future = BoxFuture<Response<Msg>, Status>;
    fn call(&mut self, r: Request<Streaming<Msg>>) -> Self::Future {
        Box::pin(async move {
            let mut all = Vec::new();
            let mut s = r.into_inner();
            while let Some(m) = s.message().await? {
                all.push(m.text);
            }
            Ok(Response::new(msg(all.join(","))))
        })
    }
}

struct Chat;
impl tonic::server::StreamingService<Msg> for Chat {
    type Response = Msg;
    type ResponseStream = Replies;
    type Future = BoxFuture<Response<Replies>, Status>;
    fn call(&mut self, r: Request<Streaming<Msg>>) -> Self::Future {
        Box::pin(async move {
            let replies = r
                .into_inner()
                .map(|m| m.map(|m| msg(format!("echo {}", m.text))));
            Ok(Response::new(Box::pin(replies) as Replies))
        })
    }
}

impl Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let name = self.0;
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default());
            Ok(match req.uri().path() {
                "/echo.Echo/Unary" => grpc.unary(Unary(name, Duration::ZERO), req).await,
                "/echo.Echo/Slow" => grpc.unary(Unary(name, Duration::from_secs(2)), req).await,
                "/echo.Echo/Count" => grpc.server_streaming(Count, req).await,
                "/echo.Echo/Join" => grpc.client_streaming(Join, req).await,
                "/echo.Echo/Chat" => grpc.streaming(Chat, req).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "echo.Echo";
}

/// A tonic server on 127.0.0.1, stopped when dropped.
struct Server {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(name: &'static str) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(Echo(name))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await;
        });
        Server { addr, task }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn client(addr: SocketAddr) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::new(channel)
}

fn path(method: &'static str) -> PathAndQuery {
    PathAndQuery::from_static(method)
}

async fn unary(
    c: &mut tonic::client::Grpc<tonic::transport::Channel>,
    method: &'static str,
    req: Request<Msg>,
) -> Result<Msg, Status> {
    c.ready().await.unwrap();
    c.unary(req, path(method), ProstCodec::<Msg, Msg>::default())
        .await
        .map(Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_four_kinds_of_call_pass_and_are_balanced_per_call() {
    let (a, b) = (Server::start("a").await, Server::start("b").await);
    let f = Fulcrum::start(&format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nupstream = \"grpc\"\n\
         [upstream.grpc]\nprotocol = \"h2c\"\n\
         backends = [{{ address = \"{}\" }}, {{ address = \"{}\" }}]\n",
        a.addr, b.addr
    ))
    .await;
    let mut c = client(f.addr("web")).await;
    // Unary, over one client connection: both backends answer.
    let mut names = Vec::new();
    for i in 0..4 {
        let reply = unary(&mut c, "/echo.Echo/Unary", Request::new(msg(i.to_string())))
            .await
            .unwrap();
        names.push(reply.text.split(':').next().unwrap().to_string());
    }
    names.sort();
    assert_eq!(names, ["a", "a", "b", "b"]);
    // Server streaming.
    c.ready().await.unwrap();
    let mut replies = c
        .server_streaming(
            Request::new(msg("3")),
            path("/echo.Echo/Count"),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = replies.message().await.unwrap() {
        got.push(m.text);
    }
    assert_eq!(got, ["0", "1", "2"]);
    // Client streaming.
    c.ready().await.unwrap();
    let sent = futures_util::stream::iter(["x", "y", "z"].map(msg));
    let joined = c
        .client_streaming(
            Request::new(sent),
            path("/echo.Echo/Join"),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(joined.text, "x,y,z");
    // Bidirectional: each reply arrives before the next message is sent.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Msg>(1);
    let outgoing = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    c.ready().await.unwrap();
    let mut replies = c
        .streaming(
            Request::new(outgoing),
            path("/echo.Echo/Chat"),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    for word in ["one", "two"] {
        tx.send(msg(word)).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(10), replies.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(reply.text, format!("echo {word}"));
    }
    drop(tx);
    assert!(replies.message().await.unwrap().is_none());
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fulcrums_failures_reach_a_grpc_client_as_statuses() {
    let a = Server::start("a").await;
    let dead = common::refusing_addr().await;
    let f = Fulcrum::start(&format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
         [[listener.route]]\npath_prefix = \"/dead.\"\nupstream = \"dead\"\n\
         [[listener.route]]\npath_prefix = \"/echo.Echo/Slow\"\nupstream = \"grpc\"\ntimeout = \"100ms\"\n\
         [[listener.route]]\nupstream = \"grpc\"\n\
         [upstream.grpc]\nprotocol = \"h2c\"\nbackends = [{{ address = \"{}\" }}]\n\
         [upstream.dead]\nprotocol = \"h2c\"\nbackends = [{{ address = \"{dead}\" }}]\n",
        a.addr
    ))
    .await;
    let mut c = client(f.addr("web")).await;
    let e = unary(&mut c, "/dead.Svc/Call", Request::new(msg("x")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    // The route's timeout runs out (the client set none of its own).
    let e = unary(&mut c, "/echo.Echo/Slow", Request::new(msg("x")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    // The backend's own statuses pass as they are.
    let e = unary(&mut c, "/echo.Echo/Nothing", Request::new(msg("x")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
    f.stop().await;
}
