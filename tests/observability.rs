//! Metrics that can be trusted: exact counters under concurrent scrapes, and the
//! upstream timings, on real sockets.

mod common;

use std::time::Duration;

use common::http::*;
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
    let (_, _, body) = get(f.admin.expect("admin"), "/metrics").await;
    String::from_utf8_lossy(&body).into_owned()
}

/// The value of the series whose line starts with `series` (name and labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
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
                    let seen = value(&String::from_utf8_lossy(&body), series).unwrap_or(0.0);
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
    assert_eq!(value(&text, series), Some(total), "{text}");
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
    // Malformed: the parser's 400.
    let answer = raw_exchange(addr, b"GET / HTTP/1.1\r\nhost a\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // A head over max_header_size: the parser's 431.
    let big = format!(
        "GET / HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n",
        "b".repeat(20_000)
    );
    let answer = raw_exchange(addr, big.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // A head that never ends, and a connection that says nothing: closed at
    // header_timeout. A connection closed at once.
    let _ = raw_exchange(addr, b"GET / HTTP/1.1\r\nhost: a\r\n").await;
    let _ = raw_exchange(addr, b"").await;
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
    assert_eq!(
        value(
            &text,
            "fulcrum_http_connections_closed_total{listener=\"web\",reason=\"header_timeout\"}"
        ),
        Some(2.0),
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
