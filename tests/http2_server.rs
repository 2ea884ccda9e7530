//! The HTTP/2 side facing clients, on real sockets: a connection whose first bytes
//! arrive in pieces is still told apart and served whole, a response's fields
//! follow HTTP/2's rules, and a stream the client resets in the middle of its body
//! never reaches the backend as a whole request.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::http::HttpBackend;
use common::{eventually, Fulcrum};
use http::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(b: &HttpBackend) -> String {
    format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nupstream = \"app\"\n\
         [upstream.app]\nretries = 0\nbackends = [{{ address = \"{}\", name = \"b\" }}]\n",
        b.addr
    )
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An HTTP/2 client connection to the `web` listener, driven by a task of its own.
async fn h2_client(
    f: &Fulcrum,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(f.addr("web")).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    (client, tokio::spawn(conn))
}

/// Reads frames until one of `kind` on `stream` arrives; its flags and payload.
async fn frame_of(s: &mut TcpStream, kind: u8, stream: u32) -> (u8, Vec<u8>) {
    loop {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).await.expect("a frame head");
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.expect("a frame payload");
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        if head[3] == kind && id == stream {
            return (head[4], payload);
        }
    }
}

/// A preface split across two writes, the first too short to tell it from HTTP/1.1:
/// the connection is HTTP/2, and nothing of the preface is lost.
#[tokio::test]
async fn a_preface_arriving_in_pieces_is_http2() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&config(&b)).await;
    let mut s = TcpStream::connect(f.addr("web")).await.unwrap();
    s.write_all(&PREFACE[..5]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    s.write_all(&PREFACE[5..]).await.unwrap();
    // An empty SETTINGS, then GET / on stream 1: `:method GET`, `:scheme http` and
    // `:path /` from the static table, `:authority a` as a literal.
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let block = [0x82, 0x86, 0x84, 0x41, 0x01, b'a'];
    let mut headers = vec![0, 0, block.len() as u8, 1, 0x05, 0, 0, 0, 1];
    headers.extend_from_slice(&block);
    s.write_all(&headers).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), frame_of(&mut s, 1, 1))
        .await
        .expect("a response head in time");
    // `:status 200` is entry 8 of the static table.
    assert_eq!(answer.1.first(), Some(&0x88), "{answer:?}");
    drop(s);
    f.stop().await;
}

/// An HTTP/1.1 request whose first write is one byte that could begin the HTTP/2
/// preface: served as HTTP/1.1, that byte included.
#[tokio::test]
async fn a_request_line_arriving_in_pieces_is_http1() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&config(&b)).await;
    let mut s = TcpStream::connect(f.addr("web")).await.unwrap();
    s.write_all(b"P").await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    s.write_all(
        b"OST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("hi"), "{answer}");
    assert_eq!(b.last().method, http::Method::POST);
    f.stop().await;
}

/// A backend's connection fields never reach an HTTP/2 client, and its response
/// has a `Date`.
#[tokio::test]
async fn responses_carry_no_connection_fields_and_a_date() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&config(&b)).await;
    let (mut client, driver) = h2_client(&f).await;
    let req = Request::get("http://a/x").body(()).unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers();
    // The backend says `connection: x-hop`, `x-hop: 1` and `keep-alive`.
    for name in ["connection", "keep-alive", "x-hop", "transfer-encoding"] {
        assert!(!h.contains_key(name), "{name} reached the client: {h:?}");
    }
    assert_eq!(h["x-backend"], "b");
    assert!(h.contains_key("date"));
    drop(client);
    driver.abort();
    f.stop().await;
}

/// A client that resets its stream in the middle of its body: the backend's request
/// is abandoned, never ended as if the body were whole.
#[tokio::test]
async fn a_reset_upload_never_reaches_the_backend_whole() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&config(&b)).await;
    let (mut client, driver) = h2_client(&f).await;
    let req = Request::post("http://a/upload").body(()).unwrap();
    let (resp, mut body) = client.send_request(req, false).unwrap();
    body.send_data(Bytes::from_static(b"12345"), false).unwrap();
    // Time for the head and the first bytes to be on their way to the backend.
    tokio::time::sleep(Duration::from_millis(300)).await;
    body.send_reset(h2::Reason::CANCEL);
    let seen = b.seen.clone();
    eventually(
        "the backend's request ended",
        Duration::from_secs(10),
        || {
            let done = !seen.lock().unwrap().is_empty();
            async move { done }
        },
    )
    .await;
    assert_eq!(b.last().body_len, 0, "a cut body was ended as whole");
    drop(resp);
    drop(client);
    driver.abort();
    f.stop().await;
}

/// A shutdown's drain: a request in flight on an HTTP/2 connection is answered
/// whole, the client is told GOAWAY, and the connection then ends.
#[tokio::test]
async fn a_drain_answers_the_streams_in_flight_then_closes() {
    let b = HttpBackend::start("b").await;
    let mut f = Fulcrum::start(&config(&b)).await;
    let (mut client, driver) = h2_client(&f).await;
    let req = Request::get("http://a/slow/700").body(()).unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let seen = b.seen.clone();
    eventually(
        "the request reached the backend",
        Duration::from_secs(10),
        || {
            let there = !seen.lock().unwrap().is_empty();
            async move { there }
        },
    )
    .await;
    f.begin_stop();
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("an answer in time")
        .expect("the stream in flight was answered");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while let Some(chunk) = body.data().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(got, b"b");
    // GOAWAY, then the connection's end: the client's driver finishes.
    tokio::time::timeout(Duration::from_secs(10), driver)
        .await
        .expect("the connection ended after the drain")
        .unwrap()
        .ok();
    let report = tokio::time::timeout(Duration::from_secs(30), f.stop())
        .await
        .expect("shutdown finished");
    assert_eq!(report.cut, 0);
}
