//! What both sides of an HTTP/2 connection share (RFC 9113): frame types and flags,
//! error codes, limits of the protocol, and how frames are written and taken apart.

use std::hash::{BuildHasherDefault, Hasher};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::HeaderName;

pub(crate) const DATA: u8 = 0x0;
pub(crate) const HEADERS: u8 = 0x1;
pub(crate) const PRIORITY: u8 = 0x2;
pub(crate) const RST_STREAM: u8 = 0x3;
pub(crate) const SETTINGS: u8 = 0x4;
pub(crate) const PUSH_PROMISE: u8 = 0x5;
pub(crate) const PING: u8 = 0x6;
pub(crate) const GOAWAY: u8 = 0x7;
pub(crate) const WINDOW_UPDATE: u8 = 0x8;
pub(crate) const CONTINUATION: u8 = 0x9;

pub(crate) const END_STREAM: u8 = 0x1;
pub(crate) const ACK: u8 = 0x1;
pub(crate) const END_HEADERS: u8 = 0x4;
pub(crate) const PADDED: u8 = 0x8;
pub(crate) const PRIORITY_FLAG: u8 = 0x20;

/// Error codes (RFC 9113 7).
pub(crate) mod reason {
    pub(crate) const NO_ERROR: u32 = 0x0;
    pub(crate) const PROTOCOL_ERROR: u32 = 0x1;
    pub(crate) const INTERNAL_ERROR: u32 = 0x2;
    pub(crate) const FLOW_CONTROL_ERROR: u32 = 0x3;
    pub(crate) const STREAM_CLOSED: u32 = 0x5;
    pub(crate) const FRAME_SIZE_ERROR: u32 = 0x6;
    pub(crate) const REFUSED_STREAM: u32 = 0x7;
    pub(crate) const CANCEL: u32 = 0x8;
    pub(crate) const COMPRESSION_ERROR: u32 = 0x9;
    pub(crate) const ENHANCE_YOUR_CALM: u32 = 0xb;

    pub(crate) fn name(code: u32) -> &'static str {
        match code {
            NO_ERROR => "NO_ERROR",
            PROTOCOL_ERROR => "PROTOCOL_ERROR",
            INTERNAL_ERROR => "INTERNAL_ERROR",
            FLOW_CONTROL_ERROR => "FLOW_CONTROL_ERROR",
            0x4 => "SETTINGS_TIMEOUT",
            STREAM_CLOSED => "STREAM_CLOSED",
            FRAME_SIZE_ERROR => "FRAME_SIZE_ERROR",
            REFUSED_STREAM => "REFUSED_STREAM",
            CANCEL => "CANCEL",
            COMPRESSION_ERROR => "COMPRESSION_ERROR",
            0xa => "CONNECT_ERROR",
            ENHANCE_YOUR_CALM => "ENHANCE_YOUR_CALM",
            0xc => "INADEQUATE_SECURITY",
            0xd => "HTTP_1_1_REQUIRED",
            _ => "unknown error code",
        }
    }
}

pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The largest frame either side sends, and fulcrum takes (the protocol's minimum
/// maximum).
pub(crate) const MAX_FRAME: usize = 16_384;
/// The default window, before SETTINGS say otherwise.
pub(crate) const DEFAULT_WINDOW: i64 = 65_535;
pub(crate) const MAX_WINDOW: i64 = (1 << 31) - 1;
pub(crate) const MAX_STREAM_ID: u32 = (1 << 31) - 1;

/// Stream identifiers hashed by one multiplication: they are distinct odd numbers.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub(crate) type Ids = BuildHasherDefault<IdHasher>;

pub(crate) fn put_frame_head(out: &mut BytesMut, len: usize, kind: u8, flags: u8, id: u32) {
    out.put_uint(len as u64, 3);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(id);
}

/// A header block as HEADERS and as many CONTINUATION frames as it needs.
pub(crate) fn put_headers(out: &mut BytesMut, id: u32, block: &[u8], end_stream: bool) {
    let mut chunks = block.chunks(MAX_FRAME).peekable();
    let first = chunks.next().unwrap_or(&[]);
    let mut flags = if end_stream { END_STREAM } else { 0 };
    if chunks.peek().is_none() {
        flags |= END_HEADERS;
    }
    put_frame_head(out, first.len(), HEADERS, flags, id);
    out.extend_from_slice(first);
    while let Some(c) = chunks.next() {
        let flags = if chunks.peek().is_none() {
            END_HEADERS
        } else {
            0
        };
        put_frame_head(out, c.len(), CONTINUATION, flags, id);
        out.extend_from_slice(c);
    }
}

/// A connection error: the code sent with GOAWAY, and why.
pub(crate) struct ConnError(pub u32, pub &'static str);

/// Takes a padded frame's padding off.
pub(crate) fn strip_padding(flags: u8, payload: &mut Bytes) -> Result<(), ConnError> {
    if flags & PADDED == 0 {
        return Ok(());
    }
    let Some(&pad) = payload.first() else {
        return Err(ConnError(
            reason::FRAME_SIZE_ERROR,
            "padded frame too short",
        ));
    };
    let pad = usize::from(pad);
    if pad >= payload.len() {
        return Err(ConnError(
            reason::PROTOCOL_ERROR,
            "padding longer than the frame",
        ));
    }
    payload.advance(1);
    payload.truncate(payload.len() - pad);
    Ok(())
}

pub(crate) fn is_connection_specific(name: &HeaderName) -> bool {
    use http::header;
    *name == header::CONNECTION
        || *name == header::TRANSFER_ENCODING
        || *name == header::UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}
