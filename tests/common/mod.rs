//! Fixtures: real backends and a real fulcrum on loopback port 0.
#![allow(dead_code)]

pub mod dns;
pub mod h2;
pub mod h3;
pub mod http;
pub mod metrics;
pub mod netns;
pub mod origin;
pub mod redis;
pub mod tls;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fulcrum::config::Config;
use fulcrum::runtime::{Server, ShutdownReport};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Generous bound for anything a test waits on; never a measurement.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A TCP backend that greets each connection with its name and a newline, echoes
/// what it receives, and after the client's half-close sends "bye:NAME" and closes.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let greeting = format!("{name}\n");
        let bye = format!("bye:{name}");
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let greeting = greeting.clone();
                let bye = bye.clone();
                tokio::spawn(async move {
                    if s.write_all(greeting.as_bytes()).await.is_err() {
                        return;
                    }
                    let (mut r, mut w) = s.split();
                    if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                        let _ = w.write_all(bye.as_bytes()).await;
                    }
                    let _ = w.shutdown().await;
                });
            }
        });
        Backend {
            addr,
            name: name.to_string(),
            accepted,
            task,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until `check` holds, looking every 20 ms for at most `within`, and panics
/// naming `what` otherwise: for state that follows an event the test cannot await
/// directly (a counter, a health verdict, a file). A bound, never a measurement.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An address where nothing listens: a port below the ephemeral range, never handed
/// out twice (see [`free_port`]). A port the kernel gave for port 0 and that was
/// released may be given again to a listener bound meanwhile (a fulcrum proxying to
/// it would then proxy to itself).
pub async fn refusing_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A port nothing listens on now (bound once, then released).
///
/// Chosen below the kernel's ephemeral range (which starts at 32768 by default): a
/// port the kernel handed out for port 0 may meanwhile become the local port of some
/// test's outgoing connection, and the bind that follows fails. A port is never
/// handed out twice in one process: tests run side by side and one may not have
/// bound its port yet when another asks for one.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let below = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768)
        .max(20_001);
    for _ in 0..1000 {
        let port = fastrand::u16(20_000..below);
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        // Free for TCP and UDP alike (the DNS server of a test may take it).
        if !given.contains(&port)
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            given.push(port);
            return port;
        }
    }
    panic!("no free port below the ephemeral range");
}

/// A fulcrum server started from TOML in this process.
pub struct Fulcrum {
    /// The generation the server started with; its backends' live state is shared.
    pub snapshot: Arc<fulcrum::runtime::Snapshot>,
    server_addrs: Vec<(String, SocketAddr)>,
    /// The admin API, when the config has `[admin]`.
    pub admin: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<ShutdownReport>,
}

impl Fulcrum {
    pub async fn start(toml: &str) -> Fulcrum {
        Self::start_at(toml, Path::new("test.toml")).await
    }

    /// As `start`, with relative paths resolved as if the file were `file`.
    pub async fn start_at(toml: &str, file: &Path) -> Fulcrum {
        let config =
            Config::parse(toml, file).unwrap_or_else(|e| panic!("test config is invalid:\n{e}"));
        let names: Vec<String> = config.listeners.iter().map(|l| l.name.clone()).collect();
        let server = Server::bind(config).await.expect("bind");
        let server_addrs = names
            .iter()
            .flat_map(|n| {
                server
                    .local_addrs(n)
                    .into_iter()
                    .map(move |a| (n.clone(), a))
            })
            .collect();
        let snapshot = server.snapshot();
        let admin = server.admin_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        Fulcrum {
            snapshot,
            admin,
            server_addrs,
            stop: Some(tx),
            handle,
        }
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.server_addrs
            .iter()
            .find(|(n, _)| n == listener)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no listener {listener}"))
    }

    /// Begins shutdown and waits for it to finish.
    pub async fn stop(mut self) -> ShutdownReport {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), &mut self.handle)
            .await
            .expect("shutdown finished")
            .expect("server task")
    }

    /// The live state of backend `name` of upstream `upstream`.
    pub fn backend(&self, upstream: &str, name: &str) -> Arc<fulcrum::upstream::Backend> {
        self.snapshot.upstreams[upstream]
            .backends()
            .iter()
            .find(|b| b.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no backend {name} in {upstream}"))
    }

    pub fn begin_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Fulcrum {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// A client connection, with its reader buffered.
pub struct Client {
    pub reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    pub writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).await.expect("connect");
        let (r, w) = s.into_split();
        Client {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    /// The first line: the name of the backend reached, or `None` if the connection
    /// was closed without one.
    pub async fn greeting(&mut self) -> Option<String> {
        let mut line = String::new();
        match tokio::time::timeout(PATIENCE, self.reader.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 => Some(line.trim_end().to_string()),
            Ok(_) => None,
            Err(_) => panic!("no greeting and no close within {PATIENCE:?}"),
        }
    }

    /// Reads to the end of the stream.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        tokio::time::timeout(PATIENCE, self.reader.read_to_end(&mut out))
            .await
            .expect("stream ended in time")
            .ok();
        out
    }
}

/// Connects and returns which backend answered (`None` for a closed connection).
pub async fn who(addr: SocketAddr) -> Option<String> {
    Client::connect(addr).await.greeting().await
}

/// A tcp listener config on 127.0.0.1:0 named "front" in front of upstream "app".
pub fn tcp_config(extra_listener: &str, upstream: &str) -> String {
    format!(
        "[[listener]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nupstream = \"app\"\n{extra_listener}\n\
         [upstream.app]\n{upstream}\n"
    )
}

pub fn backends_list(backends: &[(&Backend, u32)]) -> String {
    let items: Vec<String> = backends
        .iter()
        .map(|(b, w)| {
            format!(
                "{{ address = \"{}\", name = \"{}\", weight = {w} }}",
                b.addr, b.name
            )
        })
        .collect();
    format!("backends = [{}]", items.join(", "))
}
