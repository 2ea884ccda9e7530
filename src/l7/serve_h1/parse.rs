//! Reading a client's request head: the request line and fields (`httparse`), and
//! how the body is delimited (RFC 9112 6). What is refused, and how, is hyper's rule
//! set (fulcrum served HTTP/1.1 through hyper before): a `Transfer-Encoding` whose
//! last coding is not `chunked`, or any on HTTP/1.0; a `Content-Length` that is not
//! digits, or two that differ; a field folded over lines, a bare CR, a space before
//! the colon, a bad method, target or version: 400. A head larger than the limit, or
//! with more than [`MAX_FIELDS`] fields: 431; a target over 64 KiB: 414.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, Version};

use crate::l7::h1::{content_length, record_spans, Chunk, Framing};

/// Most fields in one request head.
pub(super) const MAX_FIELDS: usize = 100;

/// The longest request target.
const MAX_URI_LEN: usize = (u16::MAX - 1) as usize;

/// A request head and what serving it needs besides.
pub(super) struct Head {
    pub(super) parts: http::request::Parts,
    /// How the body is delimited: `Done` when there is none.
    pub(super) framing: Framing,
    /// The client allows another request on the connection after this one.
    pub(super) keep_alive: bool,
    /// `Expect: 100-continue`.
    pub(super) expect_continue: bool,
    /// `Upgrade` on HTTP/1.1, or CONNECT.
    pub(super) upgrade: bool,
}

/// Parses a request head from the front of `buf`, consuming it; `Ok(None)`: more
/// bytes are needed. An error is the status to answer with, after which the
/// connection closes.
pub(super) fn parse(buf: &mut BytesMut, max_head: usize) -> Result<Option<Head>, StatusCode> {
    let bad = StatusCode::BAD_REQUEST;
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) if len > max_head => {
            return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => {
            return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        }
        Err(_) => return Err(bad),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(bad);
    };
    if target.len() > MAX_URI_LEN {
        return Err(StatusCode::URI_TOO_LONG);
    }
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| bad)?;
    let http11 = minor == 1;
    // Where the target and every field lie in the head: the head becomes shared
    // bytes, and the values slices of it, not copies.
    let base = buf.as_ptr() as usize;
    let target_at = target.as_ptr() as usize - base;
    let target_span = target_at..target_at + target.len();
    let mut spans = [const { MaybeUninit::<[u32; 4]>::uninit() }; MAX_FIELDS];
    let count = req.headers.len();
    record_spans(buf, req.headers, &mut spans)
        .ok_or(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)?;
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target_span)).map_err(|_| bad)?;

    let mut headers = HeaderMap::with_capacity(count);
    let mut framing = Framing::Done;
    let mut keep_alive = http11;
    let mut saw_close = false;
    let mut expect_continue = false;
    let mut upgrade = method == Method::CONNECT;
    let mut length: Option<u64> = None;
    let (mut has_length, mut has_te, mut te_chunked) = (false, false, false);
    for span in &spans[..count] {
        // SAFETY: the loop above wrote the first `count` spans.
        let [ns, ne, vs, ve] = unsafe { span.assume_init() }.map(|i| i as usize);
        let name = HeaderName::from_bytes(&head[ns..ne]).map_err(|_| bad)?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve)).map_err(|_| bad)?;
        if name == header::TRANSFER_ENCODING {
            // RFC 9112 6.1: HTTP/1.0 has no transfer codings; `chunked` must be last.
            if !http11 {
                return Err(bad);
            }
            has_te = true;
            if has_length && length.take().is_some() {
                headers.remove(header::CONTENT_LENGTH);
            }
            te_chunked = last_is_chunked(&value);
            framing = Framing::Chunked(Chunk::Size);
        } else if name == header::CONTENT_LENGTH {
            has_length = true;
            if has_te {
                continue;
            }
            let n = content_length(value.as_bytes()).ok_or(bad)?;
            match length {
                Some(prev) if prev != n => return Err(bad),
                // The same length again: one is enough.
                Some(_) => continue,
                None => {}
            }
            length = Some(n);
            framing = if n == 0 {
                Framing::Done
            } else {
                Framing::Length(n)
            };
        } else if name == header::CONNECTION {
            // Once any `Connection` line asks to close, a later `keep-alive` does not
            // undo it.
            if saw_close || has_token(&value, "close") {
                saw_close = true;
                keep_alive = false;
            } else if !keep_alive {
                keep_alive = has_token(&value, "keep-alive");
            }
        } else if name == header::EXPECT {
            expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        } else if name == header::UPGRADE {
            upgrade = http11;
        }
        headers.append(name, value);
    }
    if has_te && !te_chunked {
        return Err(bad);
    }
    if has_te && has_length {
        keep_alive = false;
    }
    let mut parts = Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = if http11 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    parts.headers = headers;
    Ok(Some(Head {
        parts,
        framing,
        keep_alive,
        expect_continue,
        upgrade,
    }))
}

/// The last coding of a `Transfer-Encoding` value is `chunked`.
fn last_is_chunked(value: &HeaderValue) -> bool {
    value
        .to_str()
        .ok()
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
}

/// A comma-separated value names `token` (case-insensitively).
pub(super) fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &str) -> Result<Option<Head>, StatusCode> {
        parse(&mut BytesMut::from(raw.as_bytes()), 8192)
    }

    fn status(raw: &str) -> u16 {
        match parsed(raw) {
            Ok(Some(_)) => 200,
            Ok(None) => 0,
            Err(s) => s.as_u16(),
        }
    }

    #[test]
    fn a_plain_request_is_read_with_its_fields() {
        let mut buf =
            BytesMut::from(&b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\n\r\nNEXT"[..]);
        let head = parse(&mut buf, 8192).unwrap().unwrap();
        assert_eq!(head.parts.method, Method::GET);
        assert_eq!(head.parts.uri, "/a?b=1");
        assert_eq!(head.parts.version, Version::HTTP_11);
        assert_eq!(head.parts.headers["host"], "x");
        assert_eq!(head.parts.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(head.framing, Framing::Done);
        assert!(head.keep_alive && !head.expect_continue && !head.upgrade);
        assert_eq!(&buf[..], b"NEXT");
    }

    #[test]
    fn an_unfinished_head_needs_more_bytes_until_the_limit() {
        assert_eq!(status("GET / HTTP/1.1\r\nHost: x\r\n"), 0);
        let big = format!("GET / HTTP/1.1\r\nx: {}\r\n", "a".repeat(9000));
        assert_eq!(status(&big), 431);
        let done = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(9000));
        assert_eq!(status(&done), 431);
        let many: String = (0..101).map(|i| format!("x{i}: 1\r\n")).collect();
        assert_eq!(status(&format!("GET / HTTP/1.1\r\n{many}\r\n")), 431);
    }

    #[test]
    fn body_framing_follows_rfc_9112() {
        let f = |raw: &str| parsed(raw).unwrap().unwrap().framing;
        assert_eq!(
            f("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"),
            Framing::Length(5)
        );
        assert_eq!(
            f("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            Framing::Done
        );
        assert_eq!(
            f("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            Framing::Length(5)
        );
        assert_eq!(
            f("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Framing::Chunked(Chunk::Size)
        );
        // With both, the coding wins, the length goes, and the connection closes after.
        let head =
            parsed("POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(head.framing, Framing::Chunked(Chunk::Size));
        assert!(!head.parts.headers.contains_key("content-length"));
        assert!(!head.keep_alive);
        let head =
            parsed("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(!head.parts.headers.contains_key("content-length"));
        assert!(!head.keep_alive);
    }

    #[test]
    fn smuggling_vectors_are_refused() {
        for raw in [
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 0x5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
            "POST / HTTP/1.1\r\nX: a\rb\r\n\r\n",
            "POST / HTTP/1.1\r\nX\r\n\r\n",
            "GET / HTTP/1.2\r\n\r\n",
            "GET / HTTP/2.0\r\n\r\n",
            "GET / HTTP/1.1 x\r\n\r\n",
            "GET /a b HTTP/1.1\r\n\r\n",
            "G@T / HTTP/1.1\r\n\r\n",
            "GET\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert_eq!(status(raw), 400, "{raw:?}");
        }
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let k = |raw: &str| parsed(raw).unwrap().unwrap().keep_alive;
        assert!(k("GET / HTTP/1.1\r\n\r\n"));
        assert!(!k("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!k(
            "GET / HTTP/1.1\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n"
        ));
        assert!(!k("GET / HTTP/1.0\r\n\r\n"));
        assert!(k("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    }

    #[test]
    fn expectations_and_upgrades_are_noticed() {
        let h = parsed("POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.expect_continue);
        let h = parsed("GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.upgrade);
        let h = parsed("GET / HTTP/1.0\r\nUpgrade: websocket\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.upgrade);
        let h = parsed("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.upgrade);
        assert_eq!(h.parts.uri.authority().unwrap(), "a:443");
    }
}
