//! Reading a backend's response head: the status line and fields (`httparse`), the
//! hop-by-hop fields, and the body's framing (RFC 9112 6.3).

use super::Chunk;
use super::Framing;
use super::MAX_FIELDS;
use bytes::{Buf, BytesMut};
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Version};
use std::mem::MaybeUninit;

pub(super) struct Parsed {
    pub(super) status: StatusCode,
    pub(super) version: Version,
    pub(super) headers: HeaderMap,
    pub(super) framing: Framing,
    pub(super) reusable: bool,
}

/// Parses a final response head from the front of `buf`, consuming it (and any 1xx
/// before it); `Ok(None)`: more bytes are needed.
pub(super) fn parse_head(
    buf: &mut BytesMut,
    method: &Method,
) -> Result<Option<Parsed>, &'static str> {
    loop {
        // Neither array is initialised up front: at 128 fields that alone would cost
        // more than the parse.
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
        let mut res = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut res,
            buf,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err("too many header fields"),
            Err(_) => return Err("malformed response head"),
        };
        let code = res.code.ok_or("no status")?;
        let status = StatusCode::from_u16(code).map_err(|_| "bad status")?;
        let version = if res.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            // 100 Continue, 102, 103: interim, not forwarded.
            buf.advance(len);
            continue;
        }
        // Field values are slices of the head's own bytes, not copies. Offsets fit in
        // u16: the head is at most MAX_HEAD bytes.
        let mut spans = [const { MaybeUninit::<[u32; 4]>::uninit() }; MAX_FIELDS];
        let count = res.headers.len();
        record_spans(buf, res.headers, &mut spans).ok_or("response head too large")?;
        let head = buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(count);
        // Hop-by-hop fields never enter the map (a 101 keeps them all: its client
        // needs `Connection` and `Upgrade`); what they say is kept apart.
        let upgrade = status == StatusCode::SWITCHING_PROTOCOLS;
        let mut hop = Hop::default();
        for span in &spans[..count] {
            // SAFETY: the loop above wrote the first `count` spans.
            let [ns, ne, vs, ve] = unsafe { span.assume_init() }.map(|i| i as usize);
            let name = HeaderName::from_bytes(&head[ns..ne]).map_err(|_| "bad field name")?;
            let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
                .map_err(|_| "bad field value")?;
            if upgrade || !hop.take(&name, &value) {
                headers.append(name, value);
            }
        }
        for name in &hop.named {
            headers.remove(name);
        }
        let (framing, reusable) = framing(status, version, method, &mut headers, &hop)?;
        return Ok(Some(Parsed {
            status,
            version,
            headers,
            framing,
            reusable,
        }));
    }
}

/// Where each field's name and value lie in `head`, the buffer httparse read them
/// from (start and end of each, as offsets): a head becomes shared bytes, and field
/// values slices of it rather than copies. `None`: an offset past `u32`.
pub(in crate::l7) fn record_spans(
    head: &[u8],
    fields: &[httparse::Header<'_>],
    spans: &mut [MaybeUninit<[u32; 4]>],
) -> Option<()> {
    let base = head.as_ptr() as usize;
    for (span, f) in spans.iter_mut().zip(fields) {
        let n = f.name.as_ptr() as usize - base;
        let v = f.value.as_ptr() as usize - base;
        let at = |i: usize| u32::try_from(i).ok();
        span.write([
            at(n)?,
            at(n + f.name.len())?,
            at(v)?,
            at(v + f.value.len())?,
        ]);
    }
    Some(())
}

/// What a response's hop-by-hop fields say: kept out of its header map, which goes
/// on to the client.
#[derive(Default)]
pub(super) struct Hop {
    /// `Connection: close`.
    close: bool,
    /// `Connection: keep-alive`.
    keep_alive: bool,
    /// The other fields `Connection` names: hop-by-hop too, removed from the map.
    named: Vec<HeaderName>,
    /// The last `Transfer-Encoding` field.
    transfer_encoding: Option<HeaderValue>,
}

pub(in crate::l7) static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub(in crate::l7) static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

impl Hop {
    /// Takes the field if it is hop-by-hop (RFC 9110 7.6.1): true when it must not
    /// be forwarded.
    fn take(&mut self, name: &HeaderName, value: &HeaderValue) -> bool {
        if *name == header::CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = trim(token);
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                } else if !token.is_empty()
                    && !token.eq_ignore_ascii_case(b"upgrade")
                    && !token.eq_ignore_ascii_case(b"te")
                {
                    if let Ok(n) = HeaderName::from_bytes(token) {
                        self.named.push(n);
                    }
                }
            }
            true
        } else if *name == header::TRANSFER_ENCODING {
            self.transfer_encoding = Some(value.clone());
            true
        } else {
            *name == header::TE
                || *name == header::UPGRADE
                || *name == KEEP_ALIVE
                || *name == PROXY_CONNECTION
        }
    }
}

/// How the body of this response is delimited, and whether its connection may carry
/// another request after it (RFC 9112 6.3, 9.3). A `Content-Length` beside
/// `Transfer-Encoding` is removed.
pub(super) fn framing(
    status: StatusCode,
    version: Version,
    method: &Method,
    headers: &mut HeaderMap,
    hop: &Hop,
) -> Result<(Framing, bool), &'static str> {
    let mut reusable = !hop.close && (version != Version::HTTP_10 || hop.keep_alive);
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Ok((Framing::Done, false));
    }
    if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Done, reusable));
    }
    if let Some(te) = &hop.transfer_encoding {
        if headers.remove(header::CONTENT_LENGTH).is_some() {
            reusable = false;
        }
        let last = te
            .to_str()
            .ok()
            .and_then(|v| v.rsplit(',').next())
            .map(str::trim);
        return Ok(match last {
            Some(c) if c.eq_ignore_ascii_case("chunked") => {
                (Framing::Chunked(Chunk::Size), reusable)
            }
            _ => (Framing::Close, false),
        });
    }
    let mut length: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let n = content_length(trim(part)).ok_or("bad content-length")?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting content-length");
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => (Framing::Done, reusable),
        Some(n) => (Framing::Length(n), reusable),
        None => (Framing::Close, false),
    })
}

pub(super) fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

pub(in crate::l7) fn content_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// A chunk-size line (`1a;ext=x`): the size, or an error.
pub(super) fn chunk_size(line: &[u8]) -> Result<u64, &'static str> {
    let end = line
        .iter()
        .position(|&b| b == b';' || b == b' ' || b == b'\t')
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(end);
    if digits.is_empty() || digits.len() > 15 {
        return Err("bad chunk size");
    }
    let mut n = 0u64;
    for &d in digits {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => return Err("bad chunk size"),
        };
        n = n * 16 + u64::from(v);
    }
    let rest = trim(rest);
    if !(rest.is_empty() || rest[0] == b';') || rest.iter().any(|&b| b == b'\r' || b == b'\n') {
        return Err("bad chunk extension");
    }
    Ok(n)
}
