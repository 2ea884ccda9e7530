use super::body::decode;
use super::*;
use http::header;

fn parse(raw: &str, method: Method) -> Result<Option<Parsed>, &'static str> {
    let mut buf = BytesMut::from(raw.as_bytes());
    parse_head(&mut buf, &method)
}

fn framing_of(raw: &str) -> Result<(Framing, bool), &'static str> {
    parse(raw, Method::GET).map(|p| {
        let p = p.expect("complete");
        (p.framing, p.reusable)
    })
}

#[test]
fn content_length_frames_the_body() {
    let (f, keep) = framing_of("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello").unwrap();
    assert_eq!(f, Framing::Length(5));
    assert!(keep);
    let (f, _) = framing_of("HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n").unwrap();
    assert_eq!(f, Framing::Length(5));
}

#[test]
fn conflicting_or_malformed_lengths_fail() {
    for raw in [
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 0x10\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
    ] {
        assert!(framing_of(raw).is_err(), "{raw:?}");
    }
}

#[test]
fn transfer_encoding_wins_over_content_length_and_stops_reuse() {
    let raw = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n";
    let p = parse(raw, Method::GET).unwrap().unwrap();
    assert_eq!(p.framing, Framing::Chunked(Chunk::Size));
    assert!(!p.reusable);
    assert!(!p.headers.contains_key(header::CONTENT_LENGTH));
}

#[test]
fn a_coding_other_than_chunked_last_reads_to_the_close() {
    let (f, keep) =
        framing_of("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n").unwrap();
    assert_eq!(f, Framing::Close);
    assert!(!keep);
    let (f, _) = framing_of("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\r\n").unwrap();
    assert_eq!(f, Framing::Chunked(Chunk::Size));
}

#[test]
fn hop_by_hop_fields_stay_out_of_the_forwarded_head() {
    let raw = "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\
               Keep-Alive: timeout=5\r\nProxy-Connection: close\r\nTE: trailers\r\n\
               Upgrade: h2c\r\nTransfer-Encoding: chunked\r\nX-Kept: yes\r\n\r\n";
    let p = parse(raw, Method::GET).unwrap().unwrap();
    let names: Vec<&str> = p.headers.keys().map(|n| n.as_str()).collect();
    assert_eq!(names, ["x-kept"]);
    assert_eq!(p.framing, Framing::Chunked(Chunk::Size));
    assert!(p.reusable);
    // What Connection says still decides reuse.
    let p = parse(
        "HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 0\r\n\r\n",
        Method::GET,
    )
    .unwrap()
    .unwrap();
    assert!(!p.reusable && p.headers.get(header::CONNECTION).is_none());
    let p = parse(
        "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\ncontent-length: 0\r\n\r\n",
        Method::GET,
    )
    .unwrap()
    .unwrap();
    assert!(p.reusable);
}

#[test]
fn a_101_keeps_connection_and_upgrade_for_its_client() {
    let raw =
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    let p = parse(raw, Method::GET).unwrap().unwrap();
    assert_eq!(p.headers[header::UPGRADE], "websocket");
    assert_eq!(p.headers[header::CONNECTION], "Upgrade");
    assert!(!p.reusable);
}

#[test]
fn no_length_reads_to_the_close() {
    assert_eq!(
        framing_of("HTTP/1.1 200 OK\r\n\r\n").unwrap(),
        (Framing::Close, false)
    );
}

#[test]
fn bodiless_responses_have_no_body_whatever_they_say() {
    let p = parse("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", Method::HEAD)
        .unwrap()
        .unwrap();
    assert_eq!(p.framing, Framing::Done);
    assert_eq!(p.headers[header::CONTENT_LENGTH], "9");
    for raw in [
        "HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n",
        "HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n",
    ] {
        assert_eq!(framing_of(raw).unwrap().0, Framing::Done, "{raw:?}");
    }
}

#[test]
fn interim_responses_are_skipped() {
    let raw = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n";
    let p = parse(raw, Method::POST).unwrap().unwrap();
    assert_eq!(p.status, StatusCode::CREATED);
    assert!(!p.headers.contains_key(header::LINK));
}

#[test]
fn keep_alive_follows_version_and_connection() {
    assert!(
        !framing_of("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n")
            .unwrap()
            .1
    );
    assert!(
        framing_of("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n")
            .unwrap()
            .1
    );
    assert!(
        !framing_of("HTTP/1.1 200 OK\r\nconnection: x, Close\r\ncontent-length: 0\r\n\r\n")
            .unwrap()
            .1
    );
}

#[test]
fn malformed_heads_fail() {
    for raw in [
        "HTTP/1.1 200 OK\r\nx: a\r\n folded\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/2.0 200 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nx: a\rb\r\n\r\n",
        "HTTX/1.1 200 OK\r\n\r\n",
    ] {
        assert!(parse(raw, Method::GET).is_err(), "{raw:?}");
    }
    assert!(parse("HTTP/1.1 200 OK\r\nx: a\r\n", Method::GET)
        .unwrap()
        .is_none());
}

#[test]
fn chunk_sizes() {
    assert_eq!(chunk_size(b"1a"), Ok(26));
    assert_eq!(chunk_size(b"1A;name=value"), Ok(26));
    assert_eq!(chunk_size(b"0"), Ok(0));
    assert_eq!(chunk_size(b"5 ;x"), Ok(5));
    for bad in [
        &b""[..],
        b"g",
        b"-1",
        b"0x5",
        b"1 2",
        b"fffffffffffffffff",
        b"5\n",
        b" 5",
    ] {
        assert!(
            chunk_size(bad).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

fn decode_all(
    mut framing: Framing,
    wire: &[u8],
) -> Result<(Vec<u8>, Option<HeaderMap>, bool), &'static str> {
    // Fed one byte at a time: every boundary falls between reads somewhere.
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    let mut trailers = None;
    for &byte in wire {
        buf.extend_from_slice(&[byte]);
        loop {
            match decode(&mut framing, &mut buf) {
                Some(Ok(Some(frame))) => match frame.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(f) => trailers = f.into_trailers().ok(),
                },
                Some(Ok(None)) => return Ok((data, trailers, buf.is_empty())),
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
    }
    Ok((data, trailers, false))
}

#[test]
fn chunked_bodies_decode_across_any_split() {
    let wire = b"5;ext\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\nx-sum: 1\r\n\r\n";
    let (data, trailers, rest_empty) = decode_all(Framing::Chunked(Chunk::Size), wire).unwrap();
    assert_eq!(data, b"hello world!");
    assert_eq!(trailers.unwrap()["x-sum"], "1");
    assert!(rest_empty);
    let (data, trailers, _) =
        decode_all(Framing::Chunked(Chunk::Size), b"3\r\nabc\r\n0\r\n\r\n").unwrap();
    assert_eq!(data, b"abc");
    assert!(trailers.is_none());
}

#[test]
fn broken_chunked_bodies_fail() {
    for wire in [
        &b"5\r\nhelloX\r\n0\r\n\r\n"[..],
        b"z\r\n",
        b"5\nhello\r\n",
        b"3\r\nabc\r\n0\r\nbad trailer\r\n\r\n",
    ] {
        assert!(
            decode_all(Framing::Chunked(Chunk::Size), wire).is_err(),
            "{:?}",
            String::from_utf8_lossy(wire)
        );
    }
}

#[test]
fn length_bodies_stop_at_their_length() {
    let (data, _, rest_empty) = decode_all(Framing::Length(3), b"abc").unwrap();
    assert_eq!(data, b"abc");
    assert!(rest_empty);
}

#[test]
fn heads_are_written_with_the_body_framing() {
    let mut headers = HeaderMap::new();
    headers.insert(header::HOST, HeaderValue::from_static("example.com"));
    let head = Head {
        method: Method::GET,
        uri: Uri::from_static("/a?b=1"),
        headers,
        added: Added::default(),
    };
    let mut out = Vec::new();
    assert!(!encode_head(&mut out, &head, &RequestBody::empty()));
    assert_eq!(out, b"GET /a?b=1 HTTP/1.1\r\nhost: example.com\r\n\r\n");
    let mut headers = HeaderMap::new();
    headers.insert("x-a", HeaderValue::from_static("1"));
    let head = Head {
        method: Method::POST,
        uri: Uri::from_static("/"),
        headers,
        added: Added {
            host: Some(HeaderValue::from_static("h")),
            forwarded_for: Some(HeaderValue::from_static("192.0.2.1")),
            request_id: Some(HeaderValue::from_static("id")),
            traceparent: None,
            empty_length: true,
            ..Added::default()
        },
    };
    out.clear();
    encode_head(&mut out, &head, &RequestBody::empty());
    assert_eq!(
        String::from_utf8_lossy(&out),
        "POST / HTTP/1.1\r\nhost: h\r\nx-a: 1\r\nx-forwarded-for: 192.0.2.1\r\nx-request-id: id\r\ncontent-length: 0\r\n\r\n"
    );
    assert_eq!(itoa_u64(0, &mut [0; 20]), b"0");
    assert_eq!(itoa_u64(u64::MAX, &mut [0; 20]), b"18446744073709551615");
}

/// Reads `len` bytes of a fast backend's body through a `ResponseBody`; `hold`: the
/// reader keeps every piece (a client that does not keep up). The largest piece.
async fn largest_piece(len: usize, hold: bool) -> usize {
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (mut server, _) = listener.accept().await.unwrap();
    let sent: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let expected = sent.clone();
    let writer = tokio::spawn(async move { server.write_all(&sent).await });
    let conn = Conn {
        io: Stream::Plain(client),
        buf: BytesMut::new(),
        head: Vec::new(),
    };
    let mut body = ResponseBody {
        conn: Some(conn),
        framing: Framing::Length(len as u64),
        reusable: false,
        writer: None,
        filled: false,
    };
    let mut got = Vec::with_capacity(len);
    let mut held = Vec::new();
    let mut largest = 0;
    while let Some(frame) = body.frame().await {
        let data = frame.unwrap().into_data().unwrap();
        largest = largest.max(data.len());
        got.extend_from_slice(&data);
        if hold {
            held.push(data);
        }
    }
    writer.await.unwrap().unwrap();
    assert!(got == expected, "the body arrived changed");
    largest
}

/// A client that keeps every piece it was given (as one that reads slowly does)
/// gets a large body in pieces no larger than a head's reads: a larger buffer would
/// only add to what it holds.
#[tokio::test]
async fn a_client_that_does_not_keep_up_keeps_small_reads() {
    let largest = largest_piece(4 << 20, true).await;
    // A read asks for READ_SIZE more room than it had; the buffer may give more.
    assert!(largest <= 2 * READ_SIZE, "largest piece {largest}");
}

/// A body the backend keeps the socket full with is read in pieces larger than a
/// head's reads, whole and in order.
#[tokio::test]
async fn a_large_body_that_keeps_the_socket_full_is_read_in_large_pieces() {
    let largest = largest_piece(4 << 20, false).await;
    assert!(largest > READ_SIZE, "largest piece {largest}");
    // A read asks for BODY_READ_SIZE more room than it had; the buffer may give more.
    assert!(largest <= 2 * BODY_READ_SIZE, "largest piece {largest}");
}
