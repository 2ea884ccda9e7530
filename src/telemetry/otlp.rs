//! The OTLP trace export request (`opentelemetry.proto.collector.trace.v1.
//! ExportTraceServiceRequest`) written straight from fulcrum's spans with prost's
//! wire primitives: no message tree to build and drop per span. The field numbers are
//! those of opentelemetry-proto; the tests decode what is written with its types.

use prost::encoding::{encode_varint, encoded_len_varint};

/// Wire types.
const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const FIXED32: u64 = 5;

fn key(out: &mut Vec<u8>, field: u64, wire: u64) {
    encode_varint(field << 3 | wire, out);
}

/// A length-delimited field holding `bytes`.
pub(super) fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    key(out, field, LEN);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn len_field(field: u64, len: usize) -> usize {
    encoded_len_varint(field << 3) + encoded_len_varint(len as u64) + len
}

/// An attribute (`KeyValue`, in field `field` of its message) whose value is a string.
pub(super) fn str_attr(out: &mut Vec<u8>, field: u64, k: &str, v: &str) {
    let any = len_field(1, v.len());
    key(out, field, LEN);
    encode_varint((len_field(1, k.len()) + len_field(2, any)) as u64, out);
    bytes_field(out, 1, k.as_bytes());
    key(out, 2, LEN);
    encode_varint(any as u64, out);
    bytes_field(out, 1, v.as_bytes());
}

/// An attribute whose value is an integer (`int_value`).
pub(super) fn int_attr(out: &mut Vec<u8>, field: u64, k: &str, v: i64) {
    let any = 1 + encoded_len_varint(v as u64);
    key(out, field, LEN);
    encode_varint((len_field(1, k.len()) + len_field(2, any)) as u64, out);
    bytes_field(out, 1, k.as_bytes());
    key(out, 2, LEN);
    encode_varint(any as u64, out);
    key(out, 3, VARINT);
    encode_varint(v as u64, out);
}

/// The fields of one `Span`.
pub(super) struct SpanFields<'a> {
    pub trace_id: &'a [u8; 16],
    pub span_id: &'a [u8; 8],
    pub parent_id: Option<&'a [u8; 8]>,
    pub flags: u32,
    pub name: &'a str,
    /// `SpanKind`: 2 server, 3 client.
    pub kind: u64,
    pub start_ns: u64,
    pub end_ns: u64,
    /// `KeyValue`s already written as field 9 (`attributes`).
    pub attributes: &'a [u8],
    pub error: bool,
}

/// One `Span`, as field 2 (`spans`) of a `ScopeSpans`; `scratch` is reused.
pub(super) fn span(out: &mut Vec<u8>, s: &SpanFields<'_>, scratch: &mut Vec<u8>) {
    scratch.clear();
    bytes_field(scratch, 1, s.trace_id);
    bytes_field(scratch, 2, s.span_id);
    if let Some(p) = s.parent_id {
        bytes_field(scratch, 4, p);
    }
    bytes_field(scratch, 5, s.name.as_bytes());
    key(scratch, 6, VARINT);
    encode_varint(s.kind, scratch);
    key(scratch, 7, FIXED64);
    scratch.extend_from_slice(&s.start_ns.to_le_bytes());
    key(scratch, 8, FIXED64);
    scratch.extend_from_slice(&s.end_ns.to_le_bytes());
    scratch.extend_from_slice(s.attributes);
    if s.error {
        // Status { code: STATUS_CODE_ERROR (2) }
        bytes_field(scratch, 15, &[3 << 3, 2]);
    }
    key(scratch, 16, FIXED32);
    scratch.extend_from_slice(&s.flags.to_le_bytes());
    bytes_field(out, 2, scratch);
}

/// The whole request: one resource (fulcrum) and one scope holding `spans`, each
/// written by [`span`].
pub(super) fn request(spans: &[u8]) -> Vec<u8> {
    let version = env!("CARGO_PKG_VERSION");
    let mut resource = Vec::with_capacity(64);
    str_attr(&mut resource, 1, "service.name", "fulcrum");
    str_attr(&mut resource, 1, "service.version", version);
    let mut scope = Vec::with_capacity(32);
    bytes_field(&mut scope, 1, b"fulcrum");
    bytes_field(&mut scope, 2, version.as_bytes());
    let scope_spans = len_field(1, scope.len()) + spans.len();
    let resource_spans = len_field(1, resource.len()) + len_field(2, scope_spans);
    let mut out = Vec::with_capacity(len_field(1, resource_spans));
    key(&mut out, 1, LEN);
    encode_varint(resource_spans as u64, &mut out);
    bytes_field(&mut out, 1, &resource);
    key(&mut out, 2, LEN);
    encode_varint(scope_spans as u64, &mut out);
    bytes_field(&mut out, 1, &scope);
    out.extend_from_slice(spans);
    out
}
