//! Metrics that can be trusted: exact counters under concurrent scrapes, and the
//! upstream timings, on real sockets.

mod common;

use std::time::Duration;

use common::http::*;
use common::metrics::value;
use common::Fulcrum;

fn config(backend: &HttpBackend) -> String {
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nupstream = \"app\"\n\
         [upstream.app]\nbackends = [{{ address = \"{}\", name = \"app\" }}]\n",
        backend.addr
    )
}

async fn metrics(f: &Fulcrum) -> String {
    common::metrics::scrape(f.admin.expect("admin")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counters_are_exact_however_many_scrapes_run_at_once() {
    let app = HttpBackend::start("app").await;
    let f = Fulcrum::start(&config(&app)).await;
    let addr = f.addr("web");
    let admin = f.admin.unwrap();
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    const CLIENTS: usize = 4;
    const EACH: usize = 250;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let series =
        "fulcrum_backend_requests_total{backend=\"app\",outcome=\"success\",upstream=\"app\"}";
    let scrapers: Vec<_> = (0..8)
        .map(|_| {
            let (stop, done) = (stop.clone(), done.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let (_, _, body) = get(admin, "/metrics").await;
                    let seen = common::metrics::value(&String::from_utf8_lossy(&body), series)
                        .unwrap_or(0.0);
                    // Never more than the responses received, plus those in flight.
                    let bound = done.load(Ordering::SeqCst) + CLIENTS;
                    assert!(
                        seen <= bound as f64,
                        "a scrape counted {seen}, at most {bound} happened"
                    );
                }
            })
        })
        .collect();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let done = done.clone();
            tokio::spawn(async move {
                for _ in 0..EACH {
                    assert_eq!(get(addr, "/").await.0, 200);
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for s in scrapers {
        s.await.unwrap();
    }
    let text = metrics(&f).await;
    let total = (CLIENTS * EACH) as f64;
    assert_eq!(common::metrics::value(&text, series), Some(total), "{text}");
    // Every request either opened a backend connection or reused a pooled one.
    let opened = value(
        &text,
        "fulcrum_backend_connections_opened_total{backend=\"app\",upstream=\"app\"}",
    )
    .unwrap();
    let reused = value(
        &text,
        "fulcrum_backend_connections_reused_total{backend=\"app\",upstream=\"app\"}",
    )
    .unwrap();
    assert_eq!(opened + reused, total);
    assert!(
        reused > opened,
        "the pool is used: {opened} opened, {reused} reused"
    );
    assert_eq!(
        value(
            &text,
            "fulcrum_backend_connect_seconds_count{backend=\"app\",upstream=\"app\"}"
        ),
        Some(opened)
    );
    f.stop().await;
}

#[tokio::test]
async fn a_slow_backend_fills_the_upper_buckets_of_the_response_histogram() {
    let app = HttpBackend::start("app").await;
    let f = Fulcrum::start(&config(&app)).await;
    let (status, _, _) = get(f.addr("web"), "/slow/300").await;
    assert_eq!(status, 200);
    let text = metrics(&f).await;
    let bucket = |le: &str| {
        value(
            &text,
            &format!("fulcrum_backend_response_seconds_bucket{{backend=\"app\",upstream=\"app\",le=\"{le}\"}}"),
        )
    };
    // The backend waited 300 ms before its head: never in a bucket under that.
    assert_eq!(bucket("0.25"), Some(0.0), "{text}");
    assert_eq!(bucket("+Inf"), Some(1.0));
    let sum = value(
        &text,
        "fulcrum_backend_response_seconds_sum{backend=\"app\",upstream=\"app\"}",
    )
    .unwrap();
    assert!(sum >= Duration::from_millis(300).as_secs_f64(), "{sum}");
    f.stop().await;
}

#[tokio::test]
async fn answers_of_the_http_parser_and_connections_without_a_request_are_counted() {
    let app = HttpBackend::start("app").await;
    let f = Fulcrum::start(&config(&app).replace(
        "upstream = \"app\"\n[upstream",
        "upstream = \"app\"\nheader_timeout = \"300ms\"\nmax_header_size = \"8KiB\"\n[upstream",
    ))
    .await;
    let addr = f.addr("web");
    // 400, 431, a head begun and never finished (408), a connection that says
    // nothing (closed at header_timeout), and one closed at once.
    unreadable_heads(addr).await;
    drop(tokio::net::TcpStream::connect(addr).await.unwrap());
    let text = {
        // The last close is seen asynchronously: wait for it (bounded).
        let mut text = metrics(&f).await;
        for _ in 0..100 {
            if value(
                &text,
                "fulcrum_http_connections_closed_total{listener=\"web\",reason=\"client_reset\"}",
            )
            .is_some()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            text = metrics(&f).await;
        }
        text
    };
    let counted = |code: &str| {
        value(
            &text,
            &format!(
                "fulcrum_http_requests_total{{code=\"{code}\",listener=\"web\",upstream=\"-\"}}"
            ),
        )
    };
    assert_eq!(counted("400"), Some(1.0), "{text}");
    assert_eq!(counted("431"), Some(1.0), "{text}");
    assert_eq!(counted("408"), Some(1.0), "{text}");
    assert_eq!(
        value(
            &text,
            "fulcrum_connections_closed_total{listener=\"web\",reason=\"header_timeout\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "fulcrum_http_connections_closed_total{listener=\"web\",reason=\"client_reset\"}"
        ),
        Some(1.0),
        "{text}"
    );
    f.stop().await;
}

/// A request with `traceparent` and a `tracestate`.
async fn with_traceparent(addr: std::net::SocketAddr, traceparent: &str) {
    let req = http::Request::get(format!("http://{addr}/"))
        .header("traceparent", traceparent)
        .header("tracestate", "vendor=1")
        .body(empty())
        .unwrap();
    assert_eq!(send(&client(), req).await.0, 200);
}

#[tokio::test]
async fn a_traceparent_reaches_the_backend_with_fulcrums_span_as_its_parent() {
    let app = HttpBackend::start("app").await;
    let traced = Fulcrum::start(&format!("[tracing]\nsample = 0.0\n{}", config(&app))).await;
    let plain = Fulcrum::start(&config(&app)).await;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    with_traceparent(traced.addr("web"), incoming).await;
    let h = app.last().headers;
    let sent = h["traceparent"].to_str().unwrap();
    let fields: Vec<&str> = sent.split('-').collect();
    assert_eq!(fields[0], "00");
    assert_eq!(
        fields[1], "4bf92f3577b34da6a3ce929d0e0e4736",
        "the same trace"
    );
    assert_ne!(
        fields[2], "00f067aa0ba902b7",
        "a new parent: fulcrum's span"
    );
    assert_eq!(fields[2].len(), 16);
    assert_eq!(fields[3], "01", "the caller's sampled flag");
    assert_eq!(h["tracestate"], "vendor=1");
    // Malformed: a new trace, not sampled at sample = 0, without the old tracestate.
    with_traceparent(traced.addr("web"), "00-nonsense-01").await;
    let h = app.last().headers;
    let sent = h["traceparent"].to_str().unwrap();
    assert!(
        sent.starts_with("00-") && sent.ends_with("-00") && sent.len() == 55,
        "{sent}"
    );
    assert!(!sent.contains("4bf92f35"));
    assert!(h.get("tracestate").is_none());
    // Without [tracing]: passed on as any other header.
    with_traceparent(plain.addr("web"), "00-nonsense-01").await;
    assert_eq!(app.last().headers["traceparent"], "00-nonsense-01");
    traced.stop().await;
    plain.stop().await;
}

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AttrValue;
use opentelemetry_proto::tonic::trace::v1::Span;

/// An OTLP/HTTP collector on 127.0.0.1: the spans of every export it receives,
/// decoded, with the path and content type they came with.
struct Collector {
    addr: std::net::SocketAddr,
    spans: tokio::sync::mpsc::UnboundedReceiver<(String, String, Span)>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    async fn start() -> Collector {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, spans) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let kind = req.headers()[http::header::CONTENT_TYPE]
                                .to_str()
                                .unwrap()
                                .to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let export =
                                <ExportTraceServiceRequest as prost::Message>::decode(body)
                                    .expect("an OTLP export request");
                            for rs in export.resource_spans {
                                for ss in rs.scope_spans {
                                    for s in ss.spans {
                                        let _ = tx.send((path.clone(), kind.clone(), s));
                                    }
                                }
                            }
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::new()),
                            ))
                        }
                    });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Collector { addr, spans, task }
    }

    /// The next span received (within a generous wait: batches leave every second).
    async fn next(&mut self) -> Span {
        let (path, kind, span) = tokio::time::timeout(Duration::from_secs(20), self.spans.recv())
            .await
            .expect("a span within 20 s")
            .expect("the collector runs");
        assert_eq!(path, "/v1/traces");
        assert_eq!(kind, "application/x-protobuf");
        span
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a AttrValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn int_attr(span: &Span, key: &str) -> Option<i64> {
    match attr(span, key)? {
        AttrValue::IntValue(n) => Some(*n),
        _ => None,
    }
}

fn str_attr<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match attr(span, key)? {
        AttrValue::StringValue(s) => Some(s),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_collector_with_their_parents_and_attempts() {
    let app = HttpBackend::start("app").await;
    let dead = common::refusing_addr().await;
    let mut collector = Collector::start().await;
    let f = Fulcrum::start(&format!(
        "[tracing]\nsample = 0.0\notlp = \"http://{}\"\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nupstream = \"app\"\n\
         [upstream.app]\nretries = 1\nbackends = [{{ address = \"{dead}\", name = \"dead\" }}, \
         {{ address = \"{}\", name = \"app\" }}]\n",
        collector.addr, app.addr
    ))
    .await;
    // Two sampled requests: round robin sends one of them to the dead backend first.
    let traces = [
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ];
    let mut seen_parents = Vec::new();
    for t in traces {
        with_traceparent(f.addr("web"), t).await;
        let sent = app.last().headers["traceparent"]
            .to_str()
            .unwrap()
            .to_string();
        seen_parents.push(sent.split('-').nth(2).unwrap().to_string());
    }
    // An unsampled request: no span.
    with_traceparent(
        f.addr("web"),
        "00-11111111111111111111111111111111-2222222222222222-00",
    )
    .await;
    // Each request's server span and answered attempt (a failed attempt ends, and is
    // queued, before the answered one).
    let complete = |spans: &[Span], trace: &str| {
        let id = trace.split('-').nth(1).unwrap();
        let ours = || spans.iter().filter(move |s| hex(&s.trace_id) == id);
        ours().any(|s| s.kind == 2)
            && ours().any(|s| int_attr(s, "http.response.status_code") == Some(200) && s.kind == 3)
    };
    let mut spans = Vec::new();
    while !traces.iter().all(|t| complete(&spans, t)) {
        spans.push(collector.next().await);
    }
    assert!(
        spans
            .iter()
            .any(|s| str_attr(s, "error.type") == Some("connect")),
        "one attempt went to the dead backend"
    );
    for (t, backend_parent) in traces.iter().zip(&seen_parents) {
        let fields: Vec<&str> = t.split('-').collect();
        let ours: Vec<&Span> = spans
            .iter()
            .filter(|s| hex(&s.trace_id) == fields[1])
            .collect();
        let server: Vec<&&Span> = ours.iter().filter(|s| s.kind == 2).collect();
        assert_eq!(server.len(), 1, "one server span per request");
        let server = server[0];
        assert_eq!(hex(&server.parent_span_id), fields[2], "the caller's span");
        assert_eq!(int_attr(server, "http.response.status_code"), Some(200));
        assert_eq!(str_attr(server, "http.request.method"), Some("GET"));
        assert_eq!(str_attr(server, "fulcrum.upstream"), Some("app"));
        assert_eq!(str_attr(server, "fulcrum.backend"), Some("app"));
        assert!(server.end_time_unix_nano >= server.start_time_unix_nano);
        let clients: Vec<&&Span> = ours.iter().filter(|s| s.kind == 3).collect();
        assert!(!clients.is_empty());
        for c in &clients {
            assert_eq!(c.parent_span_id, server.span_id, "attempts are children");
        }
        let answered: Vec<&&&Span> = clients
            .iter()
            .filter(|c| int_attr(c, "http.response.status_code") == Some(200))
            .collect();
        assert_eq!(answered.len(), 1);
        assert_eq!(
            &hex(&answered[0].span_id),
            backend_parent,
            "the backend's parent is the attempt's span"
        );
        if clients.len() == 2 {
            let failed = clients.iter().find(|c| c.status.is_some()).unwrap();
            assert_eq!(str_attr(failed, "error.type"), Some("connect"));
            assert_eq!(str_attr(failed, "fulcrum.backend"), Some("dead"));
            assert_eq!(int_attr(answered[0], "http.request.resend_count"), Some(1));
            assert_eq!(int_attr(server, "fulcrum.retries"), Some(1));
        }
    }
    assert!(spans
        .iter()
        .all(|s| hex(&s.trace_id) != "11111111111111111111111111111111"));
    f.stop().await;
}

#[tokio::test]
async fn a_dead_collector_costs_requests_nothing_but_a_counter() {
    let app = HttpBackend::start("app").await;
    let dead = common::refusing_addr().await;
    let f = Fulcrum::start(&format!(
        "[tracing]\nsample = 1.0\notlp = \"http://{dead}\"\n{}",
        config(&app)
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(get(f.addr("web"), "/").await.0, 200);
    }
    let series = "fulcrum_tracing_spans_dropped_total{reason=\"export_failed\"}";
    common::eventually(
        "every span counted as dropped",
        common::PATIENCE,
        || async { common::metrics::current(f.admin.unwrap(), series).await >= 6.0 },
    )
    .await;
    let text = metrics(&f).await;
    // Each request: fulcrum's span and its attempt's.
    assert_eq!(common::metrics::value(&text, series), Some(6.0), "{text}");
    assert_eq!(
        common::metrics::value(&text, "fulcrum_tracing_spans_exported_total"),
        Some(0.0)
    );
    f.stop().await;
}
