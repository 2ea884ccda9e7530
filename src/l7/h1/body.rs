//! A backend's response body, decoded from its connection (`Content-Length`,
//! chunked, or up to the close) as the client reads it.

use super::chunk_size;
use super::Chunk;
use super::Conn;
use super::Failed;
use super::Framing;
use super::Stream;
use super::Writer;
use super::MAX_CHUNK_LINE;
use super::MAX_FIELDS;
use super::MAX_HEAD;
use super::{poll_fill, BODY_READ_SIZE, READ_SIZE};
use crate::l7::request_body::BoxError;
use bytes::{Buf, Bytes, BytesMut};
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

/// Pieces up to this size are copied out of the read buffer rather than split off:
/// the buffer then stays unshared and is reused for the next read, where a split
/// would leave it shared and make the next read allocate a new one.
pub(super) const COPY_MAX: usize = 4 * 1024;

/// The first `n` bytes of `buf`, taken off it.
pub(super) fn take(buf: &mut BytesMut, n: usize) -> Bytes {
    if n <= COPY_MAX {
        let piece = Bytes::copy_from_slice(&buf[..n]);
        buf.advance(n);
        piece
    } else {
        buf.split_to(n).freeze()
    }
}

pub(super) fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// A backend's response body, read from its connection as the client asks for it.
/// The connection goes back to the pool (see [`ResponseBody::into_conn`]) once the
/// body ended cleanly, the request was written whole, and both sides allow it.
pub struct ResponseBody {
    pub(super) conn: Option<Conn>,
    pub(super) framing: Framing,
    pub(super) reusable: bool,
    /// The rest of the request, when the backend answered before it had it all.
    pub(super) writer: Option<Box<Writer>>,
    /// The last read filled all the room it had: more was waiting, so the next read
    /// of a large body may ask for more.
    pub(super) filled: bool,
}

impl ResponseBody {
    /// After a 101: the connection, and the bytes the backend sent past the head.
    pub fn upgraded(self) -> Option<(Stream, Bytes)> {
        let conn = self.conn?;
        Some((conn.io, conn.buf.freeze()))
    }

    /// The connection, once the body ended cleanly and it can carry another request.
    pub fn take_conn(&mut self) -> Option<Conn> {
        if self.framing != Framing::Done || !self.reusable || self.writer.is_some() {
            return None;
        }
        let conn = self.conn.take()?;
        conn.buf.is_empty().then_some(conn)
    }

    fn fail(&mut self, why: &'static str) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.framing = Framing::Done;
        self.reusable = false;
        Poll::Ready(Some(Err(why.into())))
    }
}

/// The next frame of a body framed by `framing` already in `buf`; `None`: more bytes
/// are needed.
pub(in crate::l7) fn decode(
    framing: &mut Framing,
    buf: &mut BytesMut,
) -> Option<Result<Option<Frame<Bytes>>, &'static str>> {
    loop {
        match *framing {
            Framing::Done => return Some(Ok(None)),
            Framing::Close => {
                if buf.is_empty() {
                    return None;
                }
                let n = buf.len();
                return Some(Ok(Some(Frame::data(take(buf, n)))));
            }
            Framing::Length(rest) => {
                if buf.is_empty() {
                    return None;
                }
                let n = (rest as usize).min(buf.len());
                let data = take(buf, n);
                let left = rest - n as u64;
                *framing = if left == 0 {
                    Framing::Done
                } else {
                    Framing::Length(left)
                };
                return Some(Ok(Some(Frame::data(data))));
            }
            Framing::Chunked(Chunk::Size) => {
                let Some(end) = find_crlf(buf) else {
                    return (buf.len() > MAX_CHUNK_LINE).then_some(Err("chunk line too long"));
                };
                let size = match chunk_size(&buf[..end]) {
                    Ok(n) => n,
                    Err(e) => return Some(Err(e)),
                };
                buf.advance(end + 2);
                *framing = Framing::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
            }
            Framing::Chunked(Chunk::Data(rest)) => {
                if buf.is_empty() {
                    return None;
                }
                let n = (rest as usize).min(buf.len());
                let data = take(buf, n);
                let left = rest - n as u64;
                *framing = Framing::Chunked(if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                });
                return Some(Ok(Some(Frame::data(data))));
            }
            Framing::Chunked(Chunk::DataEnd) => {
                if buf.len() < 2 {
                    return None;
                }
                if &buf[..2] != b"\r\n" {
                    return Some(Err("chunk not followed by CRLF"));
                }
                buf.advance(2);
                *framing = Framing::Chunked(Chunk::Size);
            }
            Framing::Chunked(Chunk::Trailers) => {
                if buf.len() < 2 {
                    return None;
                }
                if &buf[..2] == b"\r\n" {
                    buf.advance(2);
                    *framing = Framing::Done;
                    return Some(Ok(None));
                }
                let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
                let len = match httparse::parse_headers(buf, &mut fields) {
                    Ok(httparse::Status::Complete((len, _))) => len,
                    Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return None,
                    _ => return Some(Err("malformed trailers")),
                };
                let mut trailers = HeaderMap::new();
                for f in fields.iter().take_while(|f| !f.name.is_empty()) {
                    let (Ok(name), Ok(value)) = (
                        HeaderName::from_bytes(f.name.as_bytes()),
                        HeaderValue::from_bytes(f.value),
                    ) else {
                        return Some(Err("malformed trailers"));
                    };
                    trailers.append(name, value);
                }
                buf.advance(len);
                *framing = Framing::Done;
                return Some(Ok((!trailers.is_empty()).then(|| Frame::trailers(trailers))));
            }
        }
    }
}

/// Whether every piece handed on from `buf` has been dropped (written to the client):
/// its allocation can be taken back whole. A client still holding pieces is not
/// keeping up, and its reads stay small: a larger buffer would only add to what it
/// holds. (`try_reclaim` answers at once when the room is already there: one byte
/// more than the room asks whether the allocation is the buffer's own again.)
fn released(buf: &mut BytesMut) -> bool {
    let spare = buf.capacity() - buf.len();
    buf.try_reclaim(spare + 1)
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let (Some(w), Some(conn)) = (this.writer.as_mut(), this.conn.as_mut()) {
                match w.poll(&mut conn.io, cx) {
                    Poll::Ready(Ok(())) => this.writer = None,
                    Poll::Ready(Err(Failed::RequestBody(e))) => {
                        this.conn = None;
                        this.framing = Framing::Done;
                        return Poll::Ready(Some(Err(e)));
                    }
                    // The backend stopped reading the request: its response may still
                    // be whole, the connection is not reused.
                    Poll::Ready(Err(_)) => {
                        this.writer = None;
                        this.reusable = false;
                    }
                    Poll::Pending => {}
                }
            }
            let decoded = match this.conn.as_mut() {
                Some(conn) => decode(&mut this.framing, &mut conn.buf),
                None => Some(Ok(None)),
            };
            match decoded {
                Some(Ok(Some(frame))) => return Poll::Ready(Some(Ok(frame))),
                Some(Ok(None)) => return Poll::Ready(None),
                Some(Err(why)) => return this.fail(why),
                None => {}
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            if conn.buf.len() >= MAX_HEAD {
                return this.fail("read buffer full");
            }
            // Large reads only while a large body keeps the socket full, and the
            // client keeps up: a slow backend's body is read as it comes, and a slow
            // client's as before, into small buffers.
            let large = match this.framing {
                Framing::Length(left) | Framing::Chunked(Chunk::Data(left)) => {
                    left > READ_SIZE as u64
                }
                Framing::Close => true,
                _ => false,
            };
            let want = if large && this.filled && released(&mut conn.buf) {
                BODY_READ_SIZE
            } else {
                READ_SIZE
            };
            let read = ready!(poll_fill(&mut conn.io, &mut conn.buf, want, cx));
            this.filled = conn.buf.len() == conn.buf.capacity();
            match read {
                Ok(0) if this.framing == Framing::Close => {
                    this.framing = Framing::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail("backend closed the connection mid-body"),
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    this.framing = Framing::Done;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
