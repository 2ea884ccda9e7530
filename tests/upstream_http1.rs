//! What fulcrum reads from HTTP/1.1 backends: interim responses, the three ways a body
//! is delimited, trailers, broken responses, idle connections the backend closed, and
//! the bytes a backend sends right after a 101. Raw backends on loopback write exactly
//! the bytes under test.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::http::*;
use common::Fulcrum;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn proxy_to(backend: SocketAddr) -> String {
    format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nupstream = \"app\"\n\
         [upstream.app]\nretries = 0\nbackends = [{{ address = \"{backend}\" }}]\n"
    )
}

#[tokio::test]
async fn interim_responses_are_skipped_and_a_chunked_body_arrives_whole() {
    let (origin, _task) = raw_backend(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\n\
          HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-origin: 1\r\n\r\n\
          5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-digest: 1\r\n\r\n",
    )
    .await;
    let f = Fulcrum::start(&proxy_to(origin)).await;
    let (status, headers, body) = get(f.addr("web"), "/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "hello world");
    assert_eq!(headers["x-origin"], "1");
    assert!(
        !headers.contains_key("link"),
        "an interim head leaked: {headers:?}"
    );
    f.stop().await;
}

#[tokio::test]
async fn a_body_without_a_length_is_read_to_the_close() {
    let (origin, _task) = raw_backend(b"HTTP/1.1 200 OK\r\n\r\nuntil the very end").await;
    let f = Fulcrum::start(&proxy_to(origin)).await;
    let (status, _, body) = get(f.addr("web"), "/").await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::OK, &b"until the very end"[..])
    );
    f.stop().await;
}

#[tokio::test]
async fn responses_that_could_be_framed_two_ways_are_refused() {
    for reply in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 2, 3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nx-folded: a\r\n b\r\ncontent-length: 3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nbad name: a\r\ncontent-length: 3\r\n\r\nabc",
    ] {
        let (origin, task) = raw_backend(reply).await;
        let f = Fulcrum::start(&proxy_to(origin)).await;
        let (status, _, body) = get(f.addr("web"), "/").await;
        assert_eq!(
            status,
            StatusCode::BAD_GATEWAY,
            "{}",
            String::from_utf8_lossy(reply)
        );
        assert_eq!(body, "502 Bad Gateway\n");
        f.stop().await;
        task.abort();
    }
}

#[tokio::test]
async fn a_broken_chunk_cuts_the_response() {
    let (origin, _task) = raw_backend(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n",
    )
    .await;
    let f = Fulcrum::start(&proxy_to(origin)).await;
    let reply = raw_exchange(f.addr("web"), b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
    // The response is cut (the head may or may not have left already): never a body
    // that looks complete.
    assert!(!reply.contains("hello"), "{reply}");
    assert!(!reply.ends_with("0\r\n\r\n"), "{reply}");
    f.stop().await;
}

/// A backend that answers each request with a keep-alive response and then closes the
/// connection anyway, counting connections.
async fn closing_keepalive_backend() -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>)
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                // Closed while fulcrum holds the connection as idle.
            });
        }
    });
    (addr, accepted, task)
}

#[tokio::test]
async fn an_idle_connection_the_backend_closed_is_not_used() {
    let (origin, accepted, _task) = closing_keepalive_backend().await;
    let f = Fulcrum::start(&proxy_to(origin)).await;
    for _ in 0..3 {
        let (status, _, body) = get(f.addr("web"), "/").await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
        // Let the close reach fulcrum's side before the next request.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    f.stop().await;
}

#[tokio::test]
async fn a_keep_alive_backend_connection_carries_many_requests() {
    let backend = HttpBackend::start("one").await;
    let f = Fulcrum::start(&proxy_to(backend.addr)).await;
    for _ in 0..5 {
        assert_eq!(get(f.addr("web"), "/").await.0, StatusCode::OK);
    }
    assert_eq!(backend.accepted(), 1);
    f.stop().await;
}

#[tokio::test]
async fn bytes_a_backend_sends_right_after_its_101_reach_the_client() {
    let (origin, _task) = raw_backend(
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\nfirst frame",
    )
    .await;
    let f = Fulcrum::start(&proxy_to(origin)).await;
    let reply = raw_exchange(
        f.addr("web"),
        b"GET /ws HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 101"), "{reply}");
    assert!(reply.ends_with("\r\n\r\nfirst frame"), "{reply}");
    f.stop().await;
}

#[tokio::test]
async fn a_backend_that_answers_before_the_upload_ends_is_relayed() {
    // Answers 413 as soon as the head arrives, without reading the body.
    let (origin, _task) = raw_backend(
        b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbig!",
    )
    .await;
    let f = Fulcrum::start(&proxy_to(origin)).await;
    let mut s = tokio::net::TcpStream::connect(f.addr("web")).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nhost: a\r\ncontent-length: 1000000\r\n\r\n")
        .await
        .unwrap();
    let _ = s.write_all(&vec![b'x'; 65536]).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) =
        tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf)).await
    {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.ends_with(b"big!") {
            break;
        }
    }
    let reply = String::from_utf8_lossy(&got);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.ends_with("big!"), "{reply}");
    f.stop().await;
}
