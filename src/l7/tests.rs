use super::conn::Protocol;
use super::request::new_request_id;

#[test]
fn request_ids_are_32_lower_hex_digits_and_differ() {
    let a = new_request_id();
    let b = new_request_id();
    assert_eq!(a.len(), 32);
    assert!(a
        .as_bytes()
        .iter()
        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c)));
    assert_ne!(a, b);
}

#[test]
fn the_first_bytes_or_alpn_tell_the_protocol() {
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    assert_eq!(Protocol::from_first_bytes(preface), Protocol::Http2);
    // The preface and the client's first frames, read at once.
    let mut more = preface.to_vec();
    more.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    assert_eq!(Protocol::from_first_bytes(&more), Protocol::Http2);
    // Part of the preface so far: hyper reads on and decides.
    assert_eq!(Protocol::from_first_bytes(&preface[..3]), Protocol::Detect);
    assert_eq!(
        Protocol::from_first_bytes(b"GET / HTTP/1.1\r\n"),
        Protocol::Http1
    );
    assert_eq!(Protocol::from_first_bytes(b"P"), Protocol::Detect);
    assert_eq!(Protocol::from_first_bytes(b"POST /"), Protocol::Http1);
    assert_eq!(
        Protocol::from_first_bytes(b"PRI * HTTP/1.1"),
        Protocol::Http1
    );
    assert_eq!(Protocol::from_alpn(Some(b"h2")), Protocol::Http2);
    assert_eq!(Protocol::from_alpn(Some(b"http/1.1")), Protocol::Http1);
    assert_eq!(Protocol::from_alpn(None), Protocol::Detect);
}
