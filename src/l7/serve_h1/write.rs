//! Writing a response to an HTTP/1.x client: its head, with the framing its body
//! needs (RFC 9112 6), and its body's pieces in that framing.

use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Version};
use http_body::SizeHint;

use super::parse::has_token;

/// What the request said that shapes its response.
pub(super) struct Asked {
    pub(super) version: Version,
    pub(super) method_head: bool,
    pub(super) method_connect: bool,
    /// The client, and the connection's state, allow another request after this one.
    pub(super) keep_alive: bool,
}

/// How a response's body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Out {
    /// No body (HEAD, 204, 304), or one already complete.
    None,
    Length(u64),
    Chunked,
    /// Up to the connection's close (an HTTP/1.0 client, length unknown).
    Close,
}

/// A response head as it will be written.
pub(super) struct Plan {
    pub(super) body: Out,
    pub(super) keep_alive: bool,
    /// A 101, or a 2xx to CONNECT: the connection becomes a tunnel.
    pub(super) upgrade: bool,
    /// Trailer fields the response declared (`Trailer`): the only ones sent.
    pub(super) trailers: bool,
}

/// Writes the status line and fields of a response into `out`, fixing its framing
/// fields; `hint` is its body's size hint.
pub(super) fn head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &mut HeaderMap,
    asked: &Asked,
    hint: SizeHint,
) -> Plan {
    let mut keep_alive = asked.keep_alive
        && !headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v, "close"));
    let upgrade =
        status == StatusCode::SWITCHING_PROTOCOLS || (asked.method_connect && status.is_success());
    // The framing is fulcrum's to choose: the handler's framing fields are replaced.
    headers.remove(header::TRANSFER_ENCODING);
    let body = if upgrade {
        if status != StatusCode::SWITCHING_PROTOCOLS {
            // A 2xx to CONNECT has neither (RFC 9110 9.3.6).
            headers.remove(header::CONTENT_LENGTH);
        }
        keep_alive = false;
        Out::None
    } else if status == StatusCode::NO_CONTENT || status.is_informational() {
        headers.remove(header::CONTENT_LENGTH);
        Out::None
    } else if asked.method_head {
        // The length a GET would have had, when the body says it (an empty body
        // says nothing: a HEAD's is empty).
        if let (None, Some(n @ 1..)) = (declared_length(headers), hint.exact()) {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        Out::None
    } else if status == StatusCode::NOT_MODIFIED {
        Out::None
    } else if let Some(n) = declared_length(headers) {
        Out::Length(n)
    } else if let Some(n) = hint.exact() {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        Out::Length(n)
    } else if asked.version == Version::HTTP_11 {
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        Out::Chunked
    } else {
        keep_alive = false;
        Out::Close
    };
    if !upgrade {
        let said_close = !asked.keep_alive || !keep_alive;
        if said_close
            && !headers
                .get_all(header::CONNECTION)
                .iter()
                .any(|v| has_token(v, "close"))
        {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        } else if keep_alive && asked.version == Version::HTTP_10 {
            headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        }
    }
    if !headers.contains_key(header::DATE) {
        headers.insert(header::DATE, crate::l7::serve_h2::date());
    }
    let trailers = body == Out::Chunked && headers.contains_key(header::TRAILER);
    status_line(out, asked.version, status);
    for (name, value) in headers.iter() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Plan {
        body,
        keep_alive,
        upgrade,
        trailers,
    }
}

/// The response's own `Content-Length`, when it has exactly one valid value.
fn declared_length(headers: &mut HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let first = values.next()?;
    let n = crate::l7::h1::content_length(first.as_bytes());
    if values.next().is_some() || n.is_none() {
        headers.remove(header::CONTENT_LENGTH);
        return None;
    }
    n
}

fn status_line(out: &mut Vec<u8>, version: Version, status: StatusCode) {
    if version != Version::HTTP_10 && status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        return;
    }
    out.extend_from_slice(if version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The head of an error fulcrum answers before any request exists (a head it could
/// not parse): no body, and the connection closes.
pub(super) fn refusal(status: StatusCode) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    status_line(&mut out, Version::HTTP_11, status);
    out.extend_from_slice(b"content-length: 0\r\nconnection: close\r\ndate: ");
    out.extend_from_slice(crate::l7::serve_h2::date().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out
}

/// A chunk's size line.
pub(super) fn chunk_line(out: &mut Vec<u8>, len: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = len;
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked body, with the trailer fields the response declared.
pub(super) fn last_chunk(
    out: &mut Vec<u8>,
    trailers: Option<&HeaderMap>,
    declared: Option<&HeaderMap>,
) {
    out.extend_from_slice(b"0\r\n");
    if let (Some(trailers), Some(head)) = (trailers, declared) {
        let allowed: Vec<&HeaderValue> = head.get_all(header::TRAILER).iter().collect();
        for (name, value) in trailers {
            let named = allowed.iter().any(|v| has_token(v, name.as_str()));
            if named {
                out.extend_from_slice(name.as_str().as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Whether a request's method is HEAD or CONNECT.
pub(super) fn asked(method: &Method, version: Version, keep_alive: bool) -> Asked {
    Asked {
        version,
        method_head: *method == Method::HEAD,
        method_connect: *method == Method::CONNECT,
        keep_alive,
    }
}

/// Pieces of a body at least this large are written from their own buffer, not
/// copied into the connection's.
pub(super) const COPY_MAX: usize = 8 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn written(
        status: u16,
        headers: &[(&str, &str)],
        asked: Asked,
        hint: SizeHint,
    ) -> (String, Plan) {
        let mut h = HeaderMap::new();
        for (n, v) in headers {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut out = Vec::new();
        let plan = head(
            &mut out,
            StatusCode::from_u16(status).unwrap(),
            &mut h,
            &asked,
            hint,
        );
        (String::from_utf8(out).unwrap(), plan)
    }

    fn get11() -> Asked {
        asked(&Method::GET, Version::HTTP_11, true)
    }

    #[test]
    fn a_known_length_is_sent_and_an_unknown_one_chunked() {
        let (text, plan) = written(200, &[], get11(), SizeHint::with_exact(5));
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(
            text.contains("content-length: 5\r\n") && text.contains("date: "),
            "{text}"
        );
        assert_eq!((plan.body, plan.keep_alive), (Out::Length(5), true));
        let (text, plan) = written(
            200,
            &[("transfer-encoding", "gzip")],
            get11(),
            SizeHint::default(),
        );
        assert!(
            text.contains("transfer-encoding: chunked\r\n") && !text.contains("gzip"),
            "{text}"
        );
        assert_eq!(plan.body, Out::Chunked);
        let (_, plan) = written(
            200,
            &[("content-length", "7")],
            get11(),
            SizeHint::default(),
        );
        assert_eq!(plan.body, Out::Length(7));
    }

    #[test]
    fn http_1_0_gets_its_own_version_and_a_close_without_a_length() {
        let one0 = asked(&Method::GET, Version::HTTP_10, false);
        let (text, plan) = written(404, &[], one0, SizeHint::default());
        assert!(text.starts_with("HTTP/1.0 404 Not Found\r\n"), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
        assert_eq!((plan.body, plan.keep_alive), (Out::Close, false));
        let one0 = asked(&Method::GET, Version::HTTP_10, true);
        let (text, plan) = written(200, &[], one0, SizeHint::with_exact(1));
        assert!(text.contains("connection: keep-alive\r\n"), "{text}");
        assert!(plan.keep_alive);
    }

    #[test]
    fn bodiless_responses_get_no_framing_of_their_own() {
        let head_req = || asked(&Method::HEAD, Version::HTTP_11, true);
        let (text, plan) = written(
            200,
            &[("content-length", "9")],
            head_req(),
            SizeHint::with_exact(0),
        );
        assert!(text.contains("content-length: 9\r\n"), "{text}");
        assert_eq!(plan.body, Out::None);
        let (text, _) = written(400, &[], head_req(), SizeHint::with_exact(16));
        assert!(text.contains("content-length: 16\r\n"), "{text}");
        let (text, _) = written(200, &[], head_req(), SizeHint::with_exact(0));
        assert!(!text.contains("content-length"), "{text}");
        let (text, plan) = written(
            204,
            &[("content-length", "0")],
            get11(),
            SizeHint::default(),
        );
        assert!(
            !text.contains("content-length") && !text.contains("transfer-encoding"),
            "{text}"
        );
        assert_eq!(plan.body, Out::None);
        let (text, plan) = written(
            101,
            &[("upgrade", "websocket"), ("connection", "upgrade")],
            get11(),
            SizeHint::default(),
        );
        assert!(
            text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{text}"
        );
        assert!(
            plan.upgrade && !text.contains("connection: close"),
            "{text}"
        );
    }

    #[test]
    fn a_last_response_says_so() {
        let (text, plan) = written(
            200,
            &[("connection", "close")],
            get11(),
            SizeHint::with_exact(0),
        );
        assert_eq!(text.matches("connection").count(), 1, "{text}");
        assert!(!plan.keep_alive);
        let closing = asked(&Method::GET, Version::HTTP_11, false);
        let (text, _) = written(200, &[], closing, SizeHint::with_exact(0));
        assert!(text.contains("connection: close\r\n"), "{text}");
    }

    #[test]
    fn chunks_are_framed_in_hex_with_declared_trailers_only() {
        let mut out = Vec::new();
        chunk_line(&mut out, 0x1a2b);
        chunk_line(&mut out, 1);
        assert_eq!(out, b"1a2b\r\n1\r\n");
        let mut declared = HeaderMap::new();
        declared.insert(header::TRAILER, HeaderValue::from_static("x-sum"));
        let mut t = HeaderMap::new();
        t.insert("x-sum", HeaderValue::from_static("1"));
        t.insert("x-other", HeaderValue::from_static("2"));
        let mut out = Vec::new();
        last_chunk(&mut out, Some(&t), Some(&declared));
        assert_eq!(out, b"0\r\nx-sum: 1\r\n\r\n");
    }
}
