//! HTTP/2 backends that misbehave (`protocol = "h2c"`), on real sockets: a stream the
//! backend resets, a connection on which it breaks the protocol, and a client that
//! gives up on a stream. Each fails only its own request, is counted against the
//! backend, and leaves the backend usable.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::http::{body, empty, h2c_client, send};
use common::Fulcrum;
use h2::Reason;
use http::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// What a backend connection does with the `n`th connection it accepted.
#[derive(Clone, Copy)]
enum Conduct {
    /// HTTP/2 served by the `h2` crate: `/reset` is reset with INTERNAL_ERROR,
    /// `/hang` is never answered (how its stream ended goes to `resets`), anything
    /// else is answered 200 `ok`.
    Serve,
    /// Reads the client's first request, then sends a DATA frame on stream 0: a
    /// connection error (RFC 9113 6.1).
    BreakProtocol,
    /// Answers the first request 200 `ok`, then stops reading the connection (so
    /// PINGs go unanswered) but keeps it open.
    Freeze,
    /// Answers the first request 200, then meets the second with GOAWAY naming the
    /// first stream: the second was never acted on (as nginx rotates a connection
    /// after `keepalive_requests`).
    AnswerOneThenGoAway,
}

struct Backend {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// The reason each `/hang` stream was reset with.
    resets: mpsc::UnboundedReceiver<Reason>,
    /// Requests whose head arrived.
    heads: mpsc::UnboundedReceiver<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    /// The backend's connections behave as `conduct(n)` says for the `n`th one.
    async fn start(conduct: impl Fn(usize) -> Conduct + Copy + Send + 'static) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (reset_tx, resets) = mpsc::unbounded_channel();
        let (head_tx, heads) = mpsc::unbounded_channel();
        let counted = accepted.clone();
        let task = tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            while let Ok((socket, _)) = listener.accept().await {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                let (reset_tx, head_tx) = (reset_tx.clone(), head_tx.clone());
                tasks.spawn(async move {
                    match conduct(n) {
                        Conduct::Serve => serve(socket, reset_tx, head_tx).await,
                        Conduct::BreakProtocol => break_protocol(socket).await,
                        Conduct::Freeze => freeze(socket).await,
                        Conduct::AnswerOneThenGoAway => answer_one_then_go_away(socket).await,
                    }
                });
            }
        });
        Backend {
            addr,
            accepted,
            resets,
            heads,
            task,
        }
    }

    fn config(&self) -> String {
        self.config_with("")
    }

    fn config_with(&self, extra: &str) -> String {
        format!(
            "[admin]\nbind = \"127.0.0.1:0\"\n\
             [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nupstream = \"app\"\n\
             [upstream.app]\nprotocol = \"h2c\"\n{extra}\n\
             backends = [{{ address = \"{}\", name = \"b0\" }}]\n",
            self.addr
        )
    }
}

/// The first connection behaves as `first` says, the others are served.
fn first_then_serve(first: Conduct) -> impl Fn(usize) -> Conduct + Copy + Send + 'static {
    move |n| if n == 0 { first } else { Conduct::Serve }
}

async fn serve(
    socket: TcpStream,
    resets: mpsc::UnboundedSender<Reason>,
    heads: mpsc::UnboundedSender<String>,
) {
    let Ok(mut conn) = h2::server::handshake(socket).await else {
        return;
    };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        let path = req.uri().path().to_owned();
        let _ = heads.send(path.clone());
        let resets = resets.clone();
        tokio::spawn(async move {
            match path.as_str() {
                "/reset" => respond.send_reset(Reason::INTERNAL_ERROR),
                "/echo" => {
                    // The whole body, its window given back as it is read, then sent
                    // back at the pace the client's window allows.
                    let mut body = req.into_body();
                    let mut got = Vec::new();
                    while let Some(Ok(chunk)) = body.data().await {
                        let _ = body.flow_control().release_capacity(chunk.len());
                        got.extend_from_slice(&chunk);
                    }
                    if let Ok(mut tx) = respond.send_response(Response::new(()), false) {
                        let _ = tx.send_data(Bytes::from(got), true);
                        // Held until sent: the stream's sending side ends with it.
                        let _ = std::future::poll_fn(|cx| tx.poll_capacity(cx)).await;
                    }
                }
                "/hang" => {
                    let reason = std::future::poll_fn(|cx| respond.poll_reset(cx)).await;
                    let _ = resets.send(reason.unwrap_or(Reason::NO_ERROR));
                }
                _ => {
                    if let Ok(mut tx) = respond.send_response(Response::new(()), false) {
                        let _ = tx.send_data(Bytes::from_static(b"ok"), true);
                    }
                }
            }
        });
    }
}

async fn freeze(socket: TcpStream) {
    let Ok(mut conn) = h2::server::handshake(socket).await else {
        return;
    };
    let Some(Ok((_, mut respond))) = conn.accept().await else {
        return;
    };
    if let Ok(mut tx) = respond.send_response(Response::new(()), false) {
        let _ = tx.send_data(Bytes::from_static(b"ok"), true);
    }
    // Driven a little longer to write the answer out (a request that comes meanwhile
    // is never answered), then held without being read.
    let _ = tokio::time::timeout(Duration::from_millis(300), conn.accept()).await;
    std::future::pending::<()>().await;
    drop(conn);
}

async fn break_protocol(mut socket: TcpStream) {
    // The client's preface (24 bytes), its SETTINGS and its request's HEADERS.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !has_headers_frame(&seen) {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    // An empty SETTINGS, then DATA on stream 0.
    let frames = [
        &[0, 0, 0, 0x4, 0, 0, 0, 0, 0][..],
        &[0, 0, 2, 0x0, 0, 0, 0, 0, 0, b'n', b'o'][..],
    ]
    .concat();
    let _ = socket.write_all(&frames).await;
    // Held open: the client is the one to give up on the connection.
    let _ = socket.read(&mut buf).await;
}

/// Whether the bytes after the 24-byte preface hold a whole HEADERS frame.
fn has_headers_frame(bytes: &[u8]) -> bool {
    headers_frames(bytes) > 0
}

/// The whole HEADERS frames in the bytes after the 24-byte preface.
fn headers_frames(bytes: &[u8]) -> usize {
    let (mut at, mut n) = (24, 0);
    while bytes.len() >= at + 9 {
        let len = usize::from(bytes[at]) << 16
            | usize::from(bytes[at + 1]) << 8
            | usize::from(bytes[at + 2]);
        if bytes.len() < at + 9 + len {
            break;
        }
        if bytes[at + 3] == 0x1 {
            n += 1;
        }
        at += 9 + len;
    }
    n
}

async fn answer_one_then_go_away(mut socket: TcpStream) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    for (wanted, frames) in [
        // An empty SETTINGS, then stream 1 answered 200 (HPACK: static entry 8)
        // with END_STREAM.
        (
            1,
            &[
                0, 0, 0, 0x4, 0, 0, 0, 0, 0, 0, 0, 1, 0x1, 0x5, 0, 0, 0, 1, 0x88,
            ][..],
        ),
        // GOAWAY, NO_ERROR, the last stream acted on 1.
        (
            2,
            &[0, 0, 8, 0x7, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0][..],
        ),
    ] {
        while headers_frames(&seen) < wanted {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        if socket.write_all(frames).await.is_err() {
            return;
        }
    }
    // Held open until the client closes it.
    while let Ok(n) = socket.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// The backend's attempts counted with `outcome` in fulcrum's metrics.
async fn attempts(f: &Fulcrum, outcome: &str) -> u64 {
    let (_, _, text) = common::http::get(f.admin.unwrap(), "/metrics").await;
    let series = format!(
        "fulcrum_backend_requests_total{{backend=\"b0\",outcome=\"{outcome}\",upstream=\"app\"}} "
    );
    String::from_utf8_lossy(&text)
        .lines()
        .find_map(|l| l.strip_prefix(&series).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// fulcrum's open HTTP/2 connections to the backend.
async fn h2_connections(f: &Fulcrum) -> u64 {
    let (_, _, text) = common::http::get(f.admin.unwrap(), "/metrics").await;
    let series = "fulcrum_backend_h2_connections{backend=\"b0\",upstream=\"app\"} ";
    String::from_utf8_lossy(&text)
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn post(addr: SocketAddr, path: &str, grpc: bool) -> Request<common::http::Body> {
    let mut req = Request::post(format!("http://{addr}{path}"));
    if grpc {
        req = req
            .header("content-type", "application/grpc")
            .header("te", "trailers");
    }
    req.body(body(&b"\0\0\0\0\0"[..])).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_backend_resets_fails_only_that_request() {
    let b = Backend::start(|_| Conduct::Serve).await;
    let f = Fulcrum::start(&b.config()).await;
    let web = f.addr("web");
    let client = h2c_client();
    let (status, _, _) = send(&client, post(web, "/reset", false)).await;
    assert_eq!(status, 502);
    let (status, headers, _) = send(&client, post(web, "/reset", true)).await;
    assert_eq!(status, 200);
    assert_eq!(headers["grpc-status"], "13", "{headers:?}");
    assert_eq!(attempts(&f, "failure").await, 2);
    // The connection itself is sound: the next requests go on it.
    for _ in 0..3 {
        let (status, _, got) = send(&client, post(web, "/", false)).await;
        assert_eq!((status.as_u16(), &got[..]), (200, &b"ok"[..]));
    }
    assert_eq!(b.accepted.load(Ordering::SeqCst), 1);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_breaks_http2_fails_the_request_and_is_reconnected() {
    let b = Backend::start(first_then_serve(Conduct::BreakProtocol)).await;
    let f = Fulcrum::start(&b.config()).await;
    let web = f.addr("web");
    let client = h2c_client();
    // A request with a body is not sent twice: it fails with its connection.
    let (status, headers, _) = send(&client, post(web, "/", true)).await;
    assert_eq!(status, 200);
    assert_eq!(headers["grpc-status"], "13", "{headers:?}");
    assert_eq!(attempts(&f, "failure").await, 1);
    // The broken connection is replaced by a new one.
    let (status, _, got) = send(&client, post(web, "/", false)).await;
    assert_eq!((status.as_u16(), &got[..]), (200, &b"ok"[..]));
    let (status, _, got) = send(
        &client,
        Request::get(format!("http://{web}/"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!((status.as_u16(), &got[..]), (200, &b"ok"[..]));
    assert_eq!(b.accepted.load(Ordering::SeqCst), 2);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_resets_its_stream_cancels_the_backends() {
    let mut b = Backend::start(|_| Conduct::Serve).await;
    let f = Fulcrum::start(&b.config()).await;
    let socket = TcpStream::connect(f.addr("web")).await.unwrap();
    let (mut client, conn) = h2::client::handshake(socket).await.unwrap();
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::get(format!("http://{}/hang", f.addr("web")))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(req, true).unwrap();
    let arrived = tokio::time::timeout(Duration::from_secs(10), b.heads.recv()).await;
    assert_eq!(arrived.unwrap().as_deref(), Some("/hang"));
    // Dropping the response (the stream's last handle) resets the stream (CANCEL).
    drop(response);
    let reason = tokio::time::timeout(Duration::from_secs(10), b.resets.recv())
        .await
        .expect("the backend's stream was reset");
    assert_eq!(reason, Some(Reason::CANCEL));
    driver.abort();
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_backend_stops_answering_pings_is_replaced() {
    let b = Backend::start(first_then_serve(Conduct::Freeze)).await;
    let f = Fulcrum::start(&b.config_with("h2_keepalive = \"1s\"")).await;
    let web = f.addr("web");
    let client = h2c_client();
    let get = || {
        Request::get(format!("http://{web}/"))
            .body(empty())
            .unwrap()
    };
    let (status, _, got) = send(&client, get()).await;
    assert_eq!((status.as_u16(), &got[..]), (200, &b"ok"[..]));
    assert_eq!(h2_connections(&f).await, 1);
    // The first connection no longer reads: its PING goes unanswered and the
    // connection is closed.
    let mut open = 1;
    for _ in 0..400 {
        open = h2_connections(&f).await;
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(open, 0, "the silent connection is still counted open");
    // The next request goes on a new one.
    let (status, _, got) = send(&client, get()).await;
    assert_eq!((status.as_u16(), &got[..]), (200, &b"ok"[..]));
    assert_eq!(b.accepted.load(Ordering::SeqCst), 2);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_larger_than_every_window_stream_both_ways() {
    let b = Backend::start(|_| Conduct::Serve).await;
    let f = Fulcrum::start(&b.config()).await;
    let web = f.addr("web");
    // 8 MiB: more than the backend's stream and connection windows (64 KiB by
    // default), and than fulcrum's own (2 and 5 MiB).
    let sent = common::http::pattern(8 << 20);
    for client in [h2c_client(), common::http::client()] {
        let req = Request::post(format!("http://{web}/echo"))
            .body(body(sent.clone()))
            .unwrap();
        let (status, _, got) = send(&client, req).await;
        assert_eq!(status, 200);
        assert_eq!(got.len(), sent.len());
        assert!(got[..] == sent[..], "the echo differs");
    }
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_backend_went_away_without_acting_on_goes_again_uncounted() {
    // No retries: only a stream refused unprocessed may go again.
    let b = Backend::start(first_then_serve(Conduct::AnswerOneThenGoAway)).await;
    let f = Fulcrum::start(&b.config_with("retries = 0")).await;
    let web = f.addr("web");
    let client = h2c_client();
    let get = |path: &str| {
        Request::get(format!("http://{web}{path}"))
            .body(empty())
            .unwrap()
    };
    let (status, _, _) = send(&client, get("/one")).await;
    assert_eq!(status, 200);
    // On the same connection: GOAWAY names stream 1, so this stream (3) was not
    // acted on; it goes on a new connection, served.
    let (status, _, got) = send(&client, get("/two")).await;
    assert_eq!((status.as_u16(), &got[..]), (200, &b"ok"[..]));
    assert_eq!(b.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(attempts(&f, "failure").await, 0);
    f.stop().await;
}
