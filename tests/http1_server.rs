//! The HTTP/1.x side facing clients, on real sockets: pipelined requests, HTTP/1.0
//! keep-alive and close, `Expect: 100-continue`, chunked uploads, request bodies left
//! unread, and a later request head that never finishes.

mod common;

use std::time::Duration;

use common::http::{raw_exchange, raw_exchange_within, HttpBackend};
use common::Fulcrum;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(b: &HttpBackend, listener: &str) -> String {
    format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nupstream = \"app\"\n{listener}\n\
         [upstream.app]\nretries = 0\nbackends = [{{ address = \"{}\", name = \"b\" }}]\n",
        b.addr
    )
}

/// Reads one response (head and a `Content-Length` body) from `s`; its head and body.
async fn response(s: &mut TcpStream, pending: &mut Vec<u8>) -> (String, Vec<u8>) {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            while pending.len() < end + 4 + len {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed mid-body");
                pending.extend_from_slice(&buf[..n]);
            }
            let body = pending[end + 4..end + 4 + len].to_vec();
            pending.drain(..end + 4 + len);
            return (head, body);
        }
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before a response: {pending:?}");
        pending.extend_from_slice(&buf[..n]);
    }
}

async fn closes(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// Three requests in one write are answered in order, on one connection, each whole.
#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&config(&b, "")).await;
    let mut s = TcpStream::connect(f.addr("web")).await.unwrap();
    s.write_all(
        b"GET /bytes/10 HTTP/1.1\r\nhost: a\r\n\r\n\
          POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello\
          GET /bytes/3 HTTP/1.1\r\nhost: a\r\n\r\n",
    )
    .await
    .unwrap();
    let mut pending = Vec::new();
    let (h1, b1) = response(&mut s, &mut pending).await;
    let (h2, b2) = response(&mut s, &mut pending).await;
    let (h3, b3) = response(&mut s, &mut pending).await;
    assert!(
        h1.starts_with("HTTP/1.1 200 OK") && h2.starts_with("HTTP/1.1 200"),
        "{h1}\n{h2}"
    );
    assert!(h3.starts_with("HTTP/1.1 200"), "{h3}");
    assert_eq!((b1.len(), &b2[..], b3.len()), (10, &b"hello"[..], 3));
    assert_eq!(b.accepted(), 1);
    f.stop().await;
}

/// HTTP/1.0: answered in its own version; closed after the response unless it asked
/// for keep-alive, which the response then says.
#[tokio::test]
async fn http_1_0_closes_unless_it_asks_to_keep_alive() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&config(&b, "")).await;
    let answer = raw_exchange(f.addr("web"), b"GET /bytes/4 HTTP/1.0\r\nhost: a\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    let mut s = TcpStream::connect(f.addr("web")).await.unwrap();
    let ask = b"GET /bytes/4 HTTP/1.0\r\nhost: a\r\nconnection: keep-alive\r\n\r\n";
    s.write_all(ask).await.unwrap();
    let mut pending = Vec::new();
    let (head, _) = response(&mut s, &mut pending).await;
    assert!(head.contains("connection: keep-alive"), "{head}");
    s.write_all(ask).await.unwrap();
    let (head, body) = response(&mut s, &mut pending).await;
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert_eq!(body.len(), 4);
    f.stop().await;
}

/// `Expect: 100-continue`: the interim answer comes before the body is sent, then
/// the final one with the body echoed.
#[tokio::test]
async fn an_expectation_gets_100_continue_before_the_body_is_sent() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&config(&b, "")).await;
    let mut s = TcpStream::connect(f.addr("web")).await.unwrap();
    s.write_all(
        b"POST /echo HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = [0u8; 25];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"ping").await.unwrap();
    let (head, body) = response(&mut s, &mut Vec::new()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"ping");
    f.stop().await;
}

/// A chunked upload with extensions and trailers reaches the backend whole, and the
/// connection carries the next request.
#[tokio::test]
async fn a_chunked_upload_arrives_whole_and_the_connection_goes_on() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&config(&b, "")).await;
    let mut s = TcpStream::connect(f.addr("web")).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n\
          5;name=x\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 1\r\n\r\n\
          GET /bytes/2 HTTP/1.1\r\nhost: a\r\n\r\n",
    )
    .await
    .unwrap();
    let mut pending = Vec::new();
    let (head, _) = response(&mut s, &mut pending).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (head, body) = response(&mut s, &mut pending).await;
    assert!(
        head.starts_with("HTTP/1.1 200") && body.len() == 2,
        "{head}"
    );
    let seen = b.requests();
    assert_eq!(seen[0].body_len, 11);
    f.stop().await;
}

/// A malformed chunk fails the upload: the backend never gets it whole, and the
/// connection closes rather than reading the rest as a request.
#[tokio::test]
async fn a_malformed_chunk_fails_the_upload_and_closes() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&config(&b, "")).await;
    let answer = raw_exchange(
        f.addr("web"),
        b"POST /upload HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n\
          5\r\nhello\r\nzz\r\nGET /x HTTP/1.1\r\nhost: a\r\n\r\n",
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert!(
        b.requests().iter().all(|r| r.body_len != 5),
        "{:?}",
        b.requests()
    );
    assert!(b.requests().iter().all(|r| r.uri != "/x"));
    f.stop().await;
}

/// A response sent before the request's body was read closes the connection: the
/// unread body is never taken for the next request.
#[tokio::test]
async fn an_unread_body_closes_the_connection_after_the_response() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&config(&b, "max_body_size = \"10B\"")).await;
    let mut s = TcpStream::connect(f.addr("web")).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: 100000\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = response(&mut s, &mut Vec::new()).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(closes(&mut s).await);
    f.stop().await;
}

/// A later request head that begins and never ends is dropped at `header_timeout`,
/// however long `idle_timeout` is.
#[tokio::test]
async fn a_later_head_that_never_ends_is_dropped_at_header_timeout() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&config(
        &b,
        "header_timeout = \"1s\"\nidle_timeout = \"60s\"",
    ))
    .await;
    let mut s = TcpStream::connect(f.addr("web")).await.unwrap();
    s.write_all(b"GET /bytes/1 HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut pending = Vec::new();
    response(&mut s, &mut pending).await;
    s.write_all(b"GET /bytes/1 HTTP/1.1\r\nhost:")
        .await
        .unwrap();
    assert!(closes(&mut s).await, "still open past header_timeout");
    f.stop().await;
}

/// Refused heads get their status, `Connection: close`, and the connection closes.
#[tokio::test]
async fn refused_heads_are_answered_and_closed() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&config(&b, "")).await;
    for (raw, status) in [
        (
            &b"GET / HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"[..],
            "400",
        ),
        (
            b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked, identity\r\n\r\n",
            "400",
        ),
        (b"GET / HTTP/1.1\r\nhost: a\r\nx: a\r\n b\r\n\r\n", "400"),
        (b"GET / HTTP/1.7\r\nhost: a\r\n\r\n", "400"),
    ] {
        let answer = raw_exchange_within(f.addr("web"), raw, Duration::from_secs(10)).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{answer}"
        );
        assert!(answer.contains("connection: close"), "{answer}");
    }
    assert!(b.requests().is_empty());
    f.stop().await;
}

const PARKED: &str = "fulcrum_connections_parked{listener=\"web\"}";

/// `config` with the admin API, whose metrics say when a connection is parked.
fn parking_config(b: &HttpBackend, listener: &str) -> String {
    format!("{}[admin]\nbind = \"127.0.0.1:0\"\n", config(b, listener))
}

/// Waits until `n` connections of listener `web` are parked (a connection parks once
/// quiet for a second).
async fn parked(f: &Fulcrum, n: f64) {
    let admin = f.admin.expect("admin API");
    common::eventually(
        &format!("{n} parked connections"),
        Duration::from_secs(20),
        || async move { common::metrics::current(admin, PARKED).await == n },
    )
    .await;
}

/// A connection to `f`'s listener `web` that had one response, once parked.
async fn served_then_parked(f: &Fulcrum) -> TcpStream {
    let mut s = TcpStream::connect(f.addr("web")).await.unwrap();
    s.write_all(b"GET /bytes/1 HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = response(&mut s, &mut Vec::new()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body.len(), 1);
    parked(f, 1.0).await;
    s
}

/// A keep-alive connection quiet between requests parks; its next requests (two
/// pipelined in one write, one with a body) are served as before, in order.
#[tokio::test]
async fn a_quiet_keep_alive_connection_parks_and_serves_its_next_requests() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&parking_config(&b, "")).await;
    let mut s = TcpStream::connect(f.addr("web")).await.unwrap();
    let mut pending = Vec::new();
    s.write_all(b"GET /bytes/10 HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = response(&mut s, &mut pending).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body.len(), 10);
    parked(&f, 1.0).await;
    s.write_all(
        b"POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello\
          GET /bytes/3 HTTP/1.1\r\nhost: a\r\n\r\n",
    )
    .await
    .unwrap();
    let (h1, b1) = response(&mut s, &mut pending).await;
    let (h2, b2) = response(&mut s, &mut pending).await;
    assert!(
        h1.starts_with("HTTP/1.1 200") && h2.starts_with("HTTP/1.1 200"),
        "{h1}\n{h2}"
    );
    assert_eq!((&b1[..], b2.len()), (&b"hello"[..], 3));
    // Parked again once quiet, and served again.
    parked(&f, 1.0).await;
    s.write_all(b"GET /bytes/4 HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = response(&mut s, &mut pending).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body.len(), 4);
    f.stop().await;
}

/// A parked connection still closes at `idle_timeout`, and is no longer counted.
#[tokio::test]
async fn a_parked_connection_closes_at_idle_timeout() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&parking_config(&b, "idle_timeout = \"3s\"")).await;
    let mut s = served_then_parked(&f).await;
    assert!(
        closes(&mut s).await,
        "a parked connection outlived idle_timeout"
    );
    parked(&f, 0.0).await;
    f.stop().await;
}

/// Shutdown closes a parked connection within the drain's linger, nothing is cut,
/// and the client sees a clean close.
#[tokio::test]
async fn shutdown_closes_a_parked_connection_without_cutting_it() {
    let b = HttpBackend::start("b").await;
    let mut f = Fulcrum::start(&parking_config(&b, "")).await;
    let mut s = served_then_parked(&f).await;
    f.begin_stop();
    assert!(
        closes(&mut s).await,
        "a parked connection kept shutdown waiting"
    );
    assert_eq!(f.stop().await.cut, 0);
}

/// A client that closes its parked connection: the connection is let go at once
/// (readiness wakes it, its read finds the end), not kept until `idle_timeout`.
#[tokio::test]
async fn a_parked_connection_is_let_go_when_the_client_closes() {
    let b = HttpBackend::start("b").await;
    let f = Fulcrum::start(&parking_config(&b, "")).await;
    let s = served_then_parked(&f).await;
    drop(s);
    parked(&f, 0.0).await;
    f.stop().await;
}
