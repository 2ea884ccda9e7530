//! Trace context (W3C Trace Context, `traceparent`): read from a request or started
//! by head sampling, and passed to the backend with fulcrum's own span as the parent.
//! Shared by the engines; pure apart from the random ids. `export` sends sampled
//! requests' spans to an OpenTelemetry collector.

pub(crate) mod export;
mod otlp;

use http::{HeaderMap, HeaderName, HeaderValue};

pub(crate) static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// One request's place in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The span that sent the request to fulcrum (`None` for a trace fulcrum started).
    pub parent_id: Option<[u8; 8]>,
    /// fulcrum's own span, the parent of the backend request.
    pub span_id: [u8; 8],
    pub sampled: bool,
    /// The request came with a `traceparent` (valid or not), which the backend's
    /// replaces.
    pub incoming: bool,
}

fn hex_to<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Every byte's two lower-case hex digits.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [DIGITS[i >> 4], DIGITS[i & 15]];
        i += 1;
    }
    t
};

/// `bytes` as lower-case hex digits into `out` (twice as long).
fn hex(bytes: &[u8], out: &mut [u8]) {
    for (b, o) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        o.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}

/// A valid `traceparent`: trace id, parent id and the sampled flag. Version `00`
/// must have exactly four fields; a later version (not `ff`) may have more, of
/// which the first four are read.
pub(crate) fn parse(value: &[u8]) -> Option<([u8; 16], [u8; 8], bool)> {
    let text = std::str::from_utf8(value).ok()?;
    let mut fields = text.split('-');
    let version: [u8; 1] = hex_to(fields.next()?)?;
    let trace: [u8; 16] = hex_to(fields.next()?)?;
    let parent: [u8; 8] = hex_to(fields.next()?)?;
    let flags: [u8; 1] = hex_to(fields.next()?)?;
    match version[0] {
        0 if fields.next().is_some() => return None,
        0xff => return None,
        _ => {}
    }
    if trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace, parent, flags[0] & 1 == 1))
}

impl TraceContext {
    /// The context of a request with `headers`: the caller's trace when its
    /// `traceparent` is valid (its sampled flag honoured), else a new trace, sampled
    /// with probability `sample`.
    pub fn of(headers: &HeaderMap, sample: f64) -> TraceContext {
        let span_id = new_span_id();
        let incoming = headers.get(&TRACEPARENT);
        match incoming.and_then(|v| parse(v.as_bytes())) {
            Some((trace_id, parent, sampled)) => TraceContext {
                trace_id,
                parent_id: Some(parent),
                span_id,
                sampled,
                incoming: true,
            },
            None => {
                let mut trace_id = [0u8; 16];
                trace_id[..8].copy_from_slice(&new_span_id());
                trace_id[8..].copy_from_slice(&fastrand::u64(..).to_be_bytes());
                TraceContext {
                    trace_id,
                    parent_id: None,
                    span_id,
                    sampled: fastrand::f64() < sample,
                    incoming: incoming.is_some(),
                }
            }
        }
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        let mut s = [0u8; 32];
        hex(&self.trace_id, &mut s);
        String::from_utf8_lossy(&s).into_owned()
    }

    /// The `traceparent` a backend gets: this trace, fulcrum's span as the parent.
    pub fn header(&self) -> HeaderValue {
        self.header_for(self.span_id)
    }

    /// The `traceparent` of a request sent from span `parent` of this trace (one
    /// attempt's span, when spans are exported).
    pub fn header_for(&self, parent: [u8; 8]) -> HeaderValue {
        HeaderValue::from_bytes(&self.encoded(parent))
            .unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// [`TraceContext::header_for`]'s value as bytes, written into a request head as
    /// they are (no header value to build).
    pub fn encoded(&self, parent: [u8; 8]) -> [u8; 55] {
        let mut s = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex(&self.trace_id, &mut s[3..35]);
        hex(&parent, &mut s[36..52]);
        if self.sampled {
            s[54] = b'1';
        }
        s
    }

    /// Takes the caller's trace fields off a request going to a backend (whose
    /// `traceparent` fulcrum writes itself, see [`TraceContext::header`]):
    /// `traceparent`, and `tracestate` unless it goes with the caller's valid
    /// `traceparent` (a new trace has none).
    /// `tracestate`: whether the request has one (the caller may know it without a
    /// lookup).
    pub fn strip(&self, headers: &mut HeaderMap, tracestate: bool) {
        if self.incoming {
            headers.remove(&TRACEPARENT);
        }
        if self.parent_id.is_none() && tracestate {
            headers.remove(&TRACESTATE);
        }
    }
}

/// A new span id (never all zero).
pub(crate) fn new_span_id() -> [u8; 8] {
    fastrand::u64(1..).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn valid_traceparents_are_read_and_invalid_ones_refused() {
        let (trace, parent, sampled) = parse(VALID.as_bytes()).unwrap();
        assert_eq!(trace[0], 0x4b);
        assert_eq!(parent, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert!(sampled);
        assert!(parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra").is_some());
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "garbage",
            "",
        ] {
            assert!(parse(bad.as_bytes()).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_backend_gets_the_same_trace_with_fulcrums_span_as_parent() {
        let mut h = HeaderMap::new();
        h.insert(&TRACEPARENT, HeaderValue::from_static(VALID));
        h.insert(&TRACESTATE, HeaderValue::from_static("vendor=1"));
        let ctx = TraceContext::of(&h, 0.0);
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(ctx.sampled, "the caller's sampled flag is honoured");
        ctx.strip(&mut h, true);
        assert!(h.get(&TRACEPARENT).is_none());
        let sent = ctx.header().to_str().unwrap().to_string();
        let (trace, parent, sampled) = parse(sent.as_bytes()).unwrap();
        assert_eq!(trace, ctx.trace_id);
        assert_eq!(parent, ctx.span_id);
        assert_ne!(parent, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert!(sampled);
        assert_eq!(h[&TRACESTATE], "vendor=1");
    }

    #[test]
    fn a_new_trace_is_sampled_as_configured() {
        let mut h = HeaderMap::new();
        h.insert(&TRACEPARENT, HeaderValue::from_static("00-broken"));
        h.insert(&TRACESTATE, HeaderValue::from_static("vendor=1"));
        let never = TraceContext::of(&h, 0.0);
        assert!(!never.sampled && never.parent_id.is_none());
        assert!(TraceContext::of(&h, 1.0).sampled);
        never.strip(&mut h, true);
        assert!(
            h.get(&TRACESTATE).is_none(),
            "a new trace carries no tracestate"
        );
        assert!(h.get(&TRACEPARENT).is_none());
        assert!(parse(never.header().as_bytes()).is_some());
        assert!(never.header().as_bytes().ends_with(b"-00"));
    }
}
