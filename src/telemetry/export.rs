//! Spans sent to an OpenTelemetry collector over OTLP/HTTP (protobuf), in batches.
//!
//! A request only ever offers its finished span to a bounded queue: when the queue is
//! full (a slow or dead collector) the span is dropped and counted, never waited for.
//! One task per collector drains the queue, up to [`BATCH`] spans or [`FLUSH_EVERY`]
//! at a time, and posts them with a timeout; a failed post drops its batch, counted.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{otlp, TraceContext};
use crate::config::Collector;

/// Spans waiting for the exporter, at most.
pub(crate) const QUEUE: usize = 2048;
/// Spans per export request, at most.
pub(crate) const BATCH: usize = 512;
/// How long a span waits for its batch to fill.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Time allowed to connect to the collector and have its answer to one export.
pub(crate) const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest collector answer read (it is only drained, for the connection's reuse).
const ANSWER_LIMIT: usize = 64 * 1024;

/// An attribute's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Str(&'a str),
    Int(i64),
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(s: &'a str) -> Value<'a> {
        Value::Str(s)
    }
}

impl<'a> From<&'a String> for Value<'a> {
    fn from(s: &'a String) -> Value<'a> {
        Value::Str(s)
    }
}

impl From<i64> for Value<'_> {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// fulcrum answering its client.
    Server,
    /// One attempt to a backend.
    Client,
}

/// A finished span.
#[derive(Debug, Clone)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_id: Option<[u8; 8]>,
    /// The parent is another process's span (a caller's `traceparent`).
    pub remote_parent: bool,
    pub kind: Kind,
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    /// Written as they are added, in OTLP's encoding: one allocation per span.
    pub attributes: Vec<u8>,
    pub error: bool,
}

/// What the exporter counts.
#[derive(Clone)]
pub struct Counters {
    pub exported: IntCounter,
    /// Dropped because the queue was full.
    pub queue_full: IntCounter,
    /// Dropped with a batch the collector did not take.
    pub export_failed: IntCounter,
}

/// The queue to one collector; the task that drains it ends when the last `Exporter`
/// handle is gone, after sending what was queued.
pub struct Exporter {
    /// The collector as configured: a new generation with the same keeps this one.
    pub collector: Collector,
    tx: mpsc::Sender<Span>,
    queue_full: IntCounter,
}

impl Exporter {
    /// Starts the task that exports to `collector`. Needs a Tokio runtime.
    pub fn start(collector: &Collector, counters: Counters) -> Result<Arc<Exporter>, String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "tracing.otlp: no runtime to export from".to_string())?;
        let tls = match collector.tls {
            true => Some(crate::tls::BackendTls::new(
                &crate::config::UpstreamTls {
                    sni: None,
                    ca: None,
                },
                &[b"http/1.1"],
            )?),
            false => None,
        };
        let target = Target {
            collector: collector.clone(),
            tls,
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let queue_full = counters.queue_full.clone();
        runtime.spawn(run(rx, target, counters));
        Ok(Arc::new(Exporter {
            collector: collector.clone(),
            tx,
            queue_full,
        }))
    }

    /// Queues a finished span, or drops it (counted) when the queue is full.
    pub fn send(&self, span: Span) {
        if self.tx.try_send(span).is_err() {
            self.queue_full.inc();
        }
    }
}

/// A span being timed: sent to its exporter when dropped, with the end time then.
pub struct Open {
    exporter: Arc<Exporter>,
    span: Span,
    /// An outcome was recorded; a span dropped without one ended early (its request
    /// was abandoned) and is marked as an error.
    settled: bool,
}

impl Open {
    /// fulcrum's span for a request with trace context `t`.
    pub fn server(exporter: &Arc<Exporter>, t: &TraceContext, name: String) -> Open {
        Open::new(
            exporter,
            t,
            (t.span_id, t.parent_id, t.parent_id.is_some()),
            Kind::Server,
            name,
        )
    }

    /// A span for one attempt to a backend, child of the request's span.
    pub fn client(exporter: &Arc<Exporter>, t: &TraceContext, name: String) -> Open {
        Open::new(
            exporter,
            t,
            (super::new_span_id(), Some(t.span_id), false),
            Kind::Client,
            name,
        )
    }

    fn new(
        exporter: &Arc<Exporter>,
        t: &TraceContext,
        (span_id, parent_id, remote_parent): ([u8; 8], Option<[u8; 8]>, bool),
        kind: Kind,
        name: String,
    ) -> Open {
        let now = SystemTime::now();
        Open {
            exporter: exporter.clone(),
            span: Span {
                trace_id: t.trace_id,
                span_id,
                parent_id,
                remote_parent,
                kind,
                name,
                start: now,
                end: now,
                attributes: Vec::with_capacity(512),
                error: false,
            },
            settled: false,
        }
    }

    pub fn id(&self) -> [u8; 8] {
        self.span.span_id
    }

    pub fn name(&self) -> &str {
        &self.span.name
    }

    pub fn rename(&mut self, name: String) {
        self.span.name = name;
    }

    pub fn attr<'a>(&mut self, key: &str, value: impl Into<Value<'a>>) {
        match value.into() {
            Value::Str(v) => otlp::str_attr(&mut self.span.attributes, 9, key, v),
            Value::Int(n) => otlp::int_attr(&mut self.span.attributes, 9, key, n),
        }
    }

    /// The response's status: an error at or above `error_from` (500 for fulcrum's
    /// own span, 400 for a backend's, as the semantic conventions say).
    pub fn status(&mut self, code: u16, error_from: u16) {
        self.attr("http.response.status_code", i64::from(code));
        self.span.error = code >= error_from;
        self.settled = true;
    }

    /// The attempt failed without a response: `kind` names how.
    pub fn fail(&mut self, kind: &'static str) {
        self.attr("error.type", kind);
        self.span.error = true;
        self.settled = true;
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if !self.settled {
            self.fail("aborted");
        }
        self.span.end = SystemTime::now();
        let span = std::mem::replace(
            &mut self.span,
            Span {
                trace_id: [0; 16],
                span_id: [0; 8],
                parent_id: None,
                remote_parent: false,
                kind: Kind::Server,
                name: String::new(),
                start: SystemTime::UNIX_EPOCH,
                end: SystemTime::UNIX_EPOCH,
                attributes: Vec::new(),
                error: false,
            },
        );
        self.exporter.send(span);
    }
}

async fn run(mut rx: mpsc::Receiver<Span>, target: Target, counters: Counters) {
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    let mut batch = Vec::with_capacity(BATCH);
    let mut failing = false;
    loop {
        // Every handle gone and the queue empty: the last batch was sent.
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        while batch.len() < BATCH {
            let room = BATCH - batch.len();
            match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let n = batch.len() as u64;
        let body = encode(&batch);
        batch.clear();
        match tokio::time::timeout(EXPORT_TIMEOUT, post(&mut sender, &target, body)).await {
            Ok(Ok(())) => {
                counters.exported.inc_by(n);
                if failing {
                    warn!(collector = %target.collector.address, "span export works again");
                    failing = false;
                }
            }
            failed => {
                sender = None;
                counters.export_failed.inc_by(n);
                let why = match failed {
                    Ok(Err(e)) => e,
                    _ => "timed out".to_string(),
                };
                if failing {
                    debug!(collector = %target.collector.address, error = %why, spans = n, "span export failed");
                } else {
                    warn!(collector = %target.collector.address, error = %why, spans = n, "span export failed; spans are dropped until it works again");
                    failing = true;
                }
            }
        }
    }
}

/// Where export requests go, and how.
struct Target {
    collector: Collector,
    /// For an `https://` collector: verified against the system's roots.
    tls: Option<crate::tls::BackendTls>,
}

async fn connect(target: &Target) -> Result<SendRequest<Full<Bytes>>, String> {
    let address = target.collector.address.as_str();
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    if let Some(tls) = &target.tls {
        let stream = tls
            .connect(tcp, address)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        handshake(TokioIo::new(stream)).await
    } else {
        handshake(TokioIo::new(tcp)).await
    }
}

async fn handshake<I>(io: I) -> Result<SendRequest<Full<Bytes>>, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn post(
    sender: &mut Option<SendRequest<Full<Bytes>>>,
    target: &Target,
    body: Vec<u8>,
) -> Result<(), String> {
    let mut s = match sender.take() {
        Some(s) if !s.is_closed() => s,
        _ => connect(target).await?,
    };
    s.ready().await.map_err(|e| format!("HTTP: {e}"))?;
    let req = Request::builder()
        .method(Method::POST)
        .uri(target.collector.path.as_str())
        .header(header::HOST, target.collector.authority.as_str())
        .header(header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = s
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let status = resp.status();
    // Read whole (bounded), so that the connection can carry the next batch.
    let answer = Limited::new(resp.into_body(), ANSWER_LIMIT).collect().await;
    if !status.is_success() {
        return Err(format!("the collector answered {status}"));
    }
    if answer.is_ok() {
        *sender = Some(s);
    }
    Ok(())
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `flags` of an OTLP span: the W3C flags (sampled) and whether the parent is remote.
fn flags(s: &Span) -> u32 {
    const SAMPLED: u32 = 0x01;
    const HAS_IS_REMOTE: u32 = 0x100;
    const IS_REMOTE: u32 = 0x200;
    SAMPLED | HAS_IS_REMOTE | if s.remote_parent { IS_REMOTE } else { 0 }
}

/// One OTLP export request of `spans`, encoded.
pub(crate) fn encode(spans: &[Span]) -> Vec<u8> {
    let mut written = Vec::with_capacity(spans.len() * 640);
    let mut scratch = Vec::with_capacity(1024);
    for s in spans {
        let fields = otlp::SpanFields {
            trace_id: &s.trace_id,
            span_id: &s.span_id,
            parent_id: s.parent_id.as_ref(),
            flags: flags(s),
            name: &s.name,
            kind: match s.kind {
                Kind::Server => 2,
                Kind::Client => 3,
            },
            start_ns: nanos(s.start),
            end_ns: nanos(s.end),
            attributes: &s.attributes,
            error: s.error,
        };
        otlp::span(&mut written, &fields, &mut scratch);
    }
    otlp::request(&written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use opentelemetry_proto::tonic::trace::v1 as proto;
    use prost::Message;

    #[tokio::test]
    async fn a_full_queue_drops_spans_and_counts_them_without_waiting() {
        // A collector that takes connections and never answers.
        let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let collector =
            Collector::parse(&format!("http://{}", hung.local_addr().unwrap())).unwrap();
        let counter = |n: &str| IntCounter::new(n, n).unwrap();
        let counters = Counters {
            exported: counter("exported"),
            queue_full: counter("queue_full"),
            export_failed: counter("export_failed"),
        };
        let exporter = Exporter::start(&collector, counters.clone()).unwrap();
        let t = TraceContext {
            trace_id: [1; 16],
            parent_id: None,
            span_id: [2; 8],
            sampled: true,
            incoming: false,
        };
        for _ in 0..QUEUE + BATCH + 100 {
            drop(Open::server(&exporter, &t, "GET".into()));
        }
        assert!(
            counters.queue_full.get() >= 100,
            "{}",
            counters.queue_full.get()
        );
        assert_eq!(counters.exported.get(), 0);
    }

    #[tokio::test]
    async fn spans_are_encoded_with_their_links_and_attributes() {
        let t = TraceContext {
            trace_id: [7; 16],
            parent_id: Some([9; 8]),
            span_id: [3; 8],
            sampled: true,
            incoming: false,
        };
        let span = Span {
            trace_id: t.trace_id,
            span_id: t.span_id,
            parent_id: t.parent_id,
            remote_parent: true,
            kind: Kind::Server,
            name: "GET".into(),
            start: SystemTime::UNIX_EPOCH + Duration::from_secs(1),
            end: SystemTime::UNIX_EPOCH + Duration::from_secs(2),
            attributes: Vec::new(),
            error: true,
        };
        let mut open = Open {
            exporter: Exporter::start(
                &Collector::parse("http://127.0.0.1:9").unwrap(),
                Counters {
                    exported: IntCounter::new("e", "e").unwrap(),
                    queue_full: IntCounter::new("q", "q").unwrap(),
                    export_failed: IntCounter::new("f", "f").unwrap(),
                },
            )
            .unwrap(),
            span,
            settled: true,
        };
        open.attr("http.response.status_code", 503i64);
        open.attr("url.path", "/ü/a");
        open.attr("fulcrum.retries", -1i64);
        let mut span = open.span.clone();
        let mut other = span.clone();
        other.parent_id = None;
        other.kind = Kind::Client;
        other.error = false;
        other.attributes.clear();
        span.name = "x".repeat(300);
        let decoded = ExportTraceServiceRequest::decode(encode(&[span, other]).as_slice()).unwrap();
        let rs = &decoded.resource_spans[0];
        let resource = &rs.resource.as_ref().unwrap().attributes;
        assert_eq!(resource[0].key, "service.name");
        assert_eq!(rs.scope_spans[0].scope.as_ref().unwrap().name, "fulcrum");
        let s = &rs.scope_spans[0].spans[0];
        assert_eq!(s.name.len(), 300);
        let value = |i: usize| {
            s.attributes[i]
                .value
                .as_ref()
                .unwrap()
                .value
                .clone()
                .unwrap()
        };
        assert_eq!(value(0), Any::IntValue(503));
        assert_eq!(s.attributes[1].key, "url.path");
        assert_eq!(value(1), Any::StringValue("/ü/a".into()));
        assert_eq!(value(2), Any::IntValue(-1));
        let c = &rs.scope_spans[0].spans[1];
        assert!(c.parent_span_id.is_empty() && c.status.is_none() && c.attributes.is_empty());
        assert_eq!(c.kind, proto::span::SpanKind::Client as i32);
        assert_eq!(s.trace_id, vec![7; 16]);
        assert_eq!(s.parent_span_id, vec![9; 8]);
        assert_eq!(s.kind, proto::span::SpanKind::Server as i32);
        assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 1_000_000_000);
        assert_eq!(s.flags, 0x301);
        assert_eq!(s.status.as_ref().unwrap().code, 2);
        assert_eq!(s.attributes[0].key, "http.response.status_code");
        assert_eq!(s.span_id, vec![3; 8]);
    }
}
