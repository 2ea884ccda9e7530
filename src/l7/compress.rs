//! Response compression on routes with `compress = true`: the algorithm negotiated
//! from `Accept-Encoding` (RFC 9110 12.5.3), the response checked, and its body
//! compressed as it flows, with a flush whenever the upstream pauses (so that a
//! trickled response, server-sent events, arrives as it is written).
//!
//! A body that ends in an error is never finished: the client sees a truncated
//! stream and a closed connection, never a well-formed compressed body that hides
//! the truncation.

use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body::{Body, Frame};

use crate::config::{Algorithm, Compression};

/// What of the request decides compression, taken before the request moves on.
pub(super) struct Asked {
    pub accept: Option<HeaderValue>,
    pub head: bool,
    pub range: bool,
    /// The request said `Cache-Control: no-transform`.
    pub no_transform: bool,
}

impl Asked {
    pub(super) fn of(method: &Method, headers: &HeaderMap) -> Asked {
        Asked {
            accept: headers.get(header::ACCEPT_ENCODING).cloned(),
            head: method == Method::HEAD,
            range: headers.contains_key(header::RANGE),
            no_transform: no_transform(headers),
        }
    }
}

/// `Cache-Control: no-transform` among the fields.
fn no_transform(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
}

/// The quality value of an element's parameters: `None` when it is malformed.
fn quality(params: &str) -> Option<u32> {
    let mut q = 1000;
    for p in params.split(';') {
        let p = p.trim();
        if p.is_empty() {
            continue;
        }
        let (name, value) = p.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("q") {
            continue;
        }
        let value = value.trim();
        let (int, frac) = value.split_once('.').unwrap_or((value, ""));
        if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let thousandths = format!("{frac:0<3}").parse::<u32>().ok()?;
        q = match int {
            "0" => thousandths,
            "1" if thousandths == 0 => 1000,
            _ => return None,
        };
    }
    Some(q)
}

/// The algorithm to use, from the client's `Accept-Encoding` and the server's
/// preference: the highest quality wins, ties go to the server's order; `*` stands
/// for any algorithm not named. `None`: identity (also for a malformed field).
pub(super) fn negotiate(
    accept: Option<&HeaderValue>,
    offered: &[(Algorithm, u32)],
) -> Option<(Algorithm, u32)> {
    let text = accept?.to_str().ok()?;
    let mut named: Vec<(&str, u32)> = Vec::new();
    for element in text.split(',') {
        let element = element.trim();
        if element.is_empty() {
            continue;
        }
        let (token, params) = element.split_once(';').unwrap_or((element, ""));
        let token = token.trim();
        if token.is_empty()
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            return None;
        }
        named.push((token, quality(params)?));
    }
    let star = named.iter().find(|(t, _)| *t == "*").map(|(_, q)| *q);
    let q_of = |a: Algorithm| {
        let explicit = named.iter().find(|(t, _)| {
            t.eq_ignore_ascii_case(a.token())
                || (a == Algorithm::Gzip && t.eq_ignore_ascii_case("x-gzip"))
        });
        explicit.map(|(_, q)| *q).or(star).unwrap_or(0)
    };
    let mut best: Option<((Algorithm, u32), u32)> = None;
    for &(a, level) in offered {
        let q = q_of(a);
        if q > 0 && best.is_none_or(|(_, bq)| q > bq) {
            best = Some(((a, level), q));
        }
    }
    best.map(|(choice, _)| choice)
}

/// Whether `media` (a `Content-Type` value) is one of `types`.
fn compressible_type(content_type: Option<&HeaderValue>, types: &[String]) -> bool {
    let Some(media) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let media = media
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let Some((ty, _)) = media.split_once('/') else {
        return false;
    };
    types.iter().any(|t| match t.strip_suffix("/*") {
        Some(whole) => whole == ty,
        None => *t == media,
    })
}

/// Compresses `response` for the client when everything allows it: the client
/// accepts an algorithm, it is not a range request or a request that says
/// `no-transform`, the status has a body worth it (not 1xx, 204, 206 or 304), the
/// response is not encoded already, does not say `no-transform`, has a type of
/// `types` and is not known to be under `min_size`. Sets `Content-Encoding` and
/// `Vary`, drops `Content-Length` and `Accept-Ranges`, and makes a strong `ETag` weak.
/// A `HEAD` gets the header fields its `GET` would (no body to encode); a 304 gets the
/// `Vary` and the weak `ETag` its 200 would (RFC 9110, 15.4.5). The encoder to wrap
/// the body in ([`Compressed::new`]) when it has one to compress.
pub(super) fn maybe<B: Body>(
    asked: &Asked,
    settings: &Compression,
    response: &mut Response<B>,
) -> Option<Encoding> {
    if asked.range || asked.no_transform {
        return None;
    }
    let status = response.status();
    if status == StatusCode::NOT_MODIFIED {
        if compressible_type(
            response.headers().get(header::CONTENT_TYPE),
            &settings.types,
        ) || !response.headers().contains_key(header::CONTENT_TYPE)
        {
            vary(response.headers_mut());
            if negotiate(asked.accept.as_ref(), &settings.algorithms).is_some() {
                weaken(response.headers_mut());
            }
        }
        return None;
    }
    if status.is_informational()
        || matches!(status, StatusCode::NO_CONTENT | StatusCode::PARTIAL_CONTENT)
    {
        return None;
    }
    let headers = response.headers();
    if headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return None;
    }
    if no_transform(headers)
        || !compressible_type(headers.get(header::CONTENT_TYPE), &settings.types)
    {
        return None;
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .or_else(|| {
            // A HEAD's empty body says nothing of its GET's size.
            (!asked.head)
                .then(|| response.body().size_hint().exact())
                .flatten()
        });
    if declared.is_some_and(|n| n < settings.min_size.max(1)) {
        return None;
    }
    // Vary first: the answer depends on Accept-Encoding even when it is identity.
    vary(response.headers_mut());
    let (algorithm, level) = negotiate(asked.accept.as_ref(), &settings.algorithms)?;
    let encoder = if asked.head {
        None
    } else {
        Some(Encoder::new(algorithm, level).ok()?)
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(algorithm.token()),
    );
    h.remove(header::CONTENT_LENGTH);
    h.remove(header::ACCEPT_RANGES);
    weaken(h);
    encoder.map(Encoding)
}

/// Adds `Vary: Accept-Encoding` unless `Vary` lists it (or `*`) already.
fn vary(h: &mut HeaderMap) {
    let listed = h
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.eq_ignore_ascii_case("accept-encoding")
        });
    if !listed {
        h.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

/// A strong `ETag` made weak: the encoded bytes are not the origin's.
fn weaken(h: &mut HeaderMap) {
    if let Some(etag) = h.get(header::ETAG) {
        if !etag.as_bytes().starts_with(b"W/") {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(etag.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&weak) {
                h.insert(header::ETAG, v);
            }
        }
    }
}

/// A streaming encoder writing into a buffer that is taken after each write.
/// The compressor a response's body goes through, as negotiated.
pub struct Encoding(Encoder);

enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

/// brotli's internal buffer, and the window of brotli and zstd: 2^19 = 512 KiB (as
/// nginx's brotli module), not their 4 MiB and 2 MiB defaults, so that a few thousand
/// responses compressed at once hold hundreds of megabytes, not gigabytes. Responses
/// smaller than the window lose nothing by it.
const BROTLI_BUFFER: usize = 4096;
const WINDOW_LOG: u32 = 19;

impl Encoder {
    fn new(algorithm: Algorithm, level: u32) -> std::io::Result<Encoder> {
        Ok(match algorithm {
            Algorithm::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(level),
            )),
            Algorithm::Brotli => Encoder::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                BROTLI_BUFFER,
                level,
                WINDOW_LOG,
            ))),
            Algorithm::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(Vec::new(), level as i32)?;
                e.window_log(WINDOW_LOG)?;
                Encoder::Zstd(e)
            }
        })
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(data),
            Encoder::Brotli(e) => e.write_all(data),
            Encoder::Zstd(e) => e.write_all(data),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Brotli(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }

    /// What was produced so far.
    fn take(&mut self) -> Bytes {
        let out = match self {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Brotli(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
        };
        Bytes::from(std::mem::take(out))
    }

    /// The end of the stream.
    fn finish(self) -> std::io::Result<Bytes> {
        Ok(Bytes::from(match self {
            Encoder::Gzip(e) => e.finish()?,
            Encoder::Brotli(e) => e.into_inner(),
            Encoder::Zstd(e) => e.finish()?,
        }))
    }
}

/// A body compressed as it flows.
pub struct Compressed<B> {
    inner: B,
    /// `None` once finished.
    encoder: Option<Encoder>,
    /// Data written since the last flush.
    dirty: bool,
    trailers: Option<HeaderMap>,
}

impl<B> Compressed<B> {
    pub fn new(inner: B, encoding: Encoding) -> Compressed<B> {
        Compressed {
            inner,
            encoder: Some(encoding.0),
            dirty: false,
            trailers: None,
        }
    }
}

impl<B> Body for Compressed<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: From<std::io::Error>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        loop {
            let Some(encoder) = this.encoder.as_mut() else {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            };
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        encoder.write(&data)?;
                        this.dirty = true;
                        let out = encoder.take();
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            this.trailers = Some(t);
                        }
                    }
                },
                // Not finished: the stream stays truncated.
                Poll::Ready(Some(Err(e))) => {
                    this.encoder = None;
                    this.trailers = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    let Some(encoder) = this.encoder.take() else {
                        continue;
                    };
                    let out = encoder.finish()?;
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
                Poll::Pending => {
                    if this.dirty {
                        this.dirty = false;
                        encoder.flush()?;
                        let out = encoder.take();
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.encoder.is_none() && self.trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFERED: [(Algorithm, u32); 3] = [
        (Algorithm::Zstd, 3),
        (Algorithm::Brotli, 4),
        (Algorithm::Gzip, 6),
    ];

    fn pick(accept: &str) -> Option<&'static str> {
        negotiate(Some(&HeaderValue::from_str(accept).unwrap()), &OFFERED).map(|(a, _)| a.token())
    }

    #[test]
    fn quality_values_pick_the_algorithm_and_ties_go_to_the_server() {
        assert_eq!(pick("gzip"), Some("gzip"));
        assert_eq!(pick("gzip, br"), Some("br"), "a tie: the server's order");
        assert_eq!(pick("gzip, br, zstd"), Some("zstd"));
        assert_eq!(pick("gzip;q=1.0, br;q=0.5"), Some("gzip"));
        assert_eq!(pick("zstd;q=0, gzip;q=0.1"), Some("gzip"));
        assert_eq!(pick("*"), Some("zstd"));
        assert_eq!(pick("*;q=0.5, br;q=0"), Some("zstd"));
        assert_eq!(pick("identity;q=0, *;q=0.2, zstd;q=0"), Some("br"));
        assert_eq!(pick("identity"), None);
        assert_eq!(pick("x-gzip"), Some("gzip"));
        assert_eq!(pick("GZIP;Q=0.5"), Some("gzip"));
        assert_eq!(pick("deflate, compress"), None);
        assert_eq!(pick("gzip;q=0"), None);
        assert_eq!(pick(""), None);
        assert_eq!(negotiate(None, &OFFERED), None);
    }

    #[test]
    fn a_malformed_field_means_identity() {
        for garbage in [
            "gzip;q=2",
            "gzip;q=0.5555",
            "gzip;q=abc",
            "g zip",
            "gzip;q",
            "br;q=1.5",
        ] {
            assert_eq!(pick(garbage), None, "{garbage}");
        }
    }

    #[test]
    fn types_match_whole_or_by_their_type() {
        let types: Vec<String> = ["text/*", "application/json"].map(String::from).to_vec();
        let ct = |v: &str| HeaderValue::from_str(v).unwrap();
        assert!(compressible_type(
            Some(&ct("text/html; charset=utf-8")),
            &types
        ));
        assert!(compressible_type(Some(&ct("Application/JSON")), &types));
        assert!(!compressible_type(Some(&ct("application/jsonx")), &types));
        assert!(!compressible_type(Some(&ct("image/png")), &types));
        assert!(!compressible_type(None, &types));
    }
}
