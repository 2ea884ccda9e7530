//! An HTTP/3 and HTTP/2-over-TLS load client for `benches/load/h3.sh`: the same
//! request loop over either protocol, so that the two are compared with one client.
//!
//!   h3_load h3|h2 ADDR NAME CA.pem CONNECTIONS STREAMS SECS PATH
//!   h3_load hold-h3|hold-h2 ADDR NAME CA.pem CONNECTIONS SECS
//!
//! Opens CONNECTIONS connections to ADDR (TLS with server name NAME, trusting the CA
//! in CA.pem), keeps STREAMS GETs of PATH in flight on each for SECS seconds, and
//! prints "requests N failed F bytes B seconds S req/s R MiB/s M". `hold-*` opens
//! CONNECTIONS connections, makes one request of `/` on each, prints "held N" and
//! keeps them open and idle for SECS seconds. Without arguments
//! (as `cargo bench` runs it) it prints its usage and exits.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

#[derive(Default)]
struct Counts {
    done: AtomicU64,
    failed: AtomicU64,
    bytes: AtomicU64,
}

fn tls(ca: &str, alpn: &[u8]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("a PEM certificate")).expect("a CA");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    config
}

/// One HTTP/3 connection with `streams` request loops.
async fn h3_connection(
    endpoint: &quinn::Endpoint,
    (addr, name, uri): (SocketAddr, &str, &http::Uri),
    streams: usize,
    counts: &Arc<Counts>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let conn = endpoint
        .connect(addr, name)
        .expect("connect")
        .await
        .expect("QUIC handshake");
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .expect("HTTP/3");
    let mut tasks = vec![tokio::spawn(async move {
        let _ = driver.wait_idle().await;
    })];
    for _ in 0..streams {
        let (mut send, counts, stop, uri) =
            (send.clone(), counts.clone(), stop.clone(), uri.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let one = async {
                    let req = http::Request::get(uri.clone()).body(()).map_err(|_| ())?;
                    let mut s = send.send_request(req).await.map_err(|_| ())?;
                    s.finish().await.map_err(|_| ())?;
                    let resp = s.recv_response().await.map_err(|_| ())?;
                    let mut n = 0u64;
                    while let Some(chunk) = s.recv_data().await.map_err(|_| ())? {
                        n += chunk.remaining() as u64;
                    }
                    if resp.status() != http::StatusCode::OK {
                        return Err(());
                    }
                    Ok::<u64, ()>(n)
                };
                count(&counts, one.await);
            }
        }));
    }
    tasks
}

/// One HTTP/2-over-TLS connection with `streams` request loops.
async fn h2_connection(
    connector: &tokio_rustls::TlsConnector,
    (addr, name, uri): (SocketAddr, &str, &http::Uri),
    streams: usize,
    counts: &Arc<Counts>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = tcp.set_nodelay(true);
    let server = rustls::pki_types::ServerName::try_from(name.to_string()).expect("a name");
    let tls = connector.connect(server, tcp).await.expect("TLS handshake");
    let (send, conn) = h2::client::handshake(tls).await.expect("HTTP/2");
    let mut tasks = vec![tokio::spawn(async move {
        let _ = conn.await;
    })];
    for _ in 0..streams {
        let (send, counts, stop, uri) = (send.clone(), counts.clone(), stop.clone(), uri.clone());
        tasks.push(tokio::spawn(async move {
            let mut send = send;
            while !stop.load(Ordering::Relaxed) {
                let one = async {
                    send = send.clone().ready().await.map_err(|_| ())?;
                    let req = http::Request::get(uri.clone()).body(()).map_err(|_| ())?;
                    let (resp, _) = send.send_request(req, true).map_err(|_| ())?;
                    let resp = resp.await.map_err(|_| ())?;
                    let status = resp.status();
                    let mut body = resp.into_body();
                    let mut n = 0u64;
                    while let Some(chunk) = body.data().await {
                        let chunk: Bytes = chunk.map_err(|_| ())?;
                        n += chunk.len() as u64;
                        let _ = body.flow_control().release_capacity(chunk.len());
                    }
                    if status != http::StatusCode::OK {
                        return Err(());
                    }
                    Ok::<u64, ()>(n)
                };
                count(&counts, one.await);
            }
        }));
    }
    tasks
}

fn count(counts: &Counts, r: Result<u64, ()>) {
    match r {
        Ok(n) => {
            counts.done.fetch_add(1, Ordering::Relaxed);
            counts.bytes.fetch_add(n, Ordering::Relaxed);
        }
        Err(()) => {
            counts.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Load {
    h3: bool,
    addr: SocketAddr,
    name: String,
    ca: String,
    connections: usize,
    streams: usize,
    secs: u64,
    path: String,
}

async fn run(l: Load) {
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let uri: http::Uri = format!("https://{}{}", l.name, l.path)
        .parse()
        .expect("a path");
    let target = (l.addr, l.name.as_str(), &uri);
    let mut tasks = Vec::new();
    if l.h3 {
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls(&l.ca, b"h3")))
            .expect("QUIC TLS");
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("an address"))
            .expect("UDP socket");
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        for _ in 0..l.connections {
            tasks.extend(h3_connection(&endpoint, target, l.streams, &counts, &stop).await);
        }
    } else {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls(&l.ca, b"h2")));
        for _ in 0..l.connections {
            tasks.extend(h2_connection(&connector, target, l.streams, &counts, &stop).await);
        }
    }
    let started = Instant::now();
    let before = (
        counts.done.load(Ordering::Relaxed),
        counts.bytes.load(Ordering::Relaxed),
    );
    tokio::time::sleep(Duration::from_secs(l.secs)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let n = counts.done.load(Ordering::Relaxed) - before.0;
    let bytes = counts.bytes.load(Ordering::Relaxed) - before.1;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    println!(
        "requests {n} failed {} bytes {bytes} seconds {elapsed:.2} req/s {:.0} MiB/s {:.1}",
        counts.failed.load(Ordering::Relaxed),
        n as f64 / elapsed,
        bytes as f64 / elapsed / 1048576.0
    );
}

/// Opens `n` connections, one request on each, and holds them for `secs`.
async fn hold(h3: bool, (addr, name, ca): (SocketAddr, &str, &str), n: usize, secs: u64) {
    let uri: http::Uri = format!("https://{name}/").parse().expect("a URI");
    let mut kept: Vec<Box<dyn std::any::Any>> = Vec::new();
    let endpoint = h3.then(|| {
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls(ca, b"h3")))
            .expect("QUIC TLS");
        let mut e = quinn::Endpoint::client("127.0.0.1:0".parse().expect("an address"))
            .expect("UDP socket");
        e.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        e
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls(ca, b"h2")));
    for _ in 0..n {
        let req = http::Request::get(uri.clone()).body(()).expect("a request");
        if let Some(endpoint) = &endpoint {
            let conn = endpoint
                .connect(addr, name)
                .expect("connect")
                .await
                .expect("QUIC");
            let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
                .await
                .expect("HTTP/3");
            let drive = tokio::spawn(async move {
                let _ = driver.wait_idle().await;
            });
            let mut s = send.send_request(req).await.expect("request");
            s.finish().await.expect("finish");
            s.recv_response().await.expect("response");
            while s.recv_data().await.expect("body").is_some() {}
            kept.push(Box::new((conn, send, drive)));
        } else {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let server = rustls::pki_types::ServerName::try_from(name.to_string()).expect("a name");
            let tls = connector.connect(server, tcp).await.expect("TLS");
            let (send, conn) = h2::client::handshake(tls).await.expect("HTTP/2");
            let drive = tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut send = send.ready().await.expect("ready");
            let (resp, _) = send.send_request(req, true).expect("request");
            let mut body = resp.await.expect("response").into_body();
            while let Some(chunk) = body.data().await {
                let _ = chunk.expect("body");
            }
            kept.push(Box::new((send, drive)));
        }
    }
    println!("held {}", kept.len());
    tokio::time::sleep(Duration::from_secs(secs)).await;
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if args.len() == 6 && matches!(args[0].as_str(), "hold-h3" | "hold-h2") {
        let addr: SocketAddr = args[1].parse().expect("an address");
        let n: usize = args[4].parse().expect("a number");
        let secs: u64 = args[5].parse().expect("a number");
        let target = (addr, args[2].as_str(), args[3].as_str());
        runtime.block_on(hold(args[0] == "hold-h3", target, n, secs));
        return;
    }
    if args.len() != 8 || !matches!(args[0].as_str(), "h3" | "h2") {
        println!("usage: h3_load h3|h2 ADDR NAME CA.pem CONNECTIONS STREAMS SECS PATH");
        println!("       h3_load hold-h3|hold-h2 ADDR NAME CA.pem CONNECTIONS SECS");
        return;
    }
    let num = |i: usize| -> u64 { args[i].parse().expect("a number") };
    let load = Load {
        h3: args[0] == "h3",
        addr: args[1].parse().expect("an address"),
        name: args[2].clone(),
        ca: args[3].clone(),
        connections: num(4) as usize,
        streams: num(5) as usize,
        secs: num(6),
        path: args[7].clone(),
    };
    runtime.block_on(run(load));
}
