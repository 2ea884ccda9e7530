//! Certificates from an ACME CA: Debian's `pebble` (the ACME test server) with
//! `pebble-challtestsrv` answering its DNS, both on loopback, against a real fulcrum
//! answering HTTP-01 and TLS-ALPN-01; a directory written here for the ways a CA
//! fails. Skipped, with the reason printed, where pebble is not installed.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::http::*;
use common::tls::{any_client, Pki};
use common::{free_port, Fulcrum};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

/// Issuance waits on the CA's validation: generous, and ends as soon as it is seen.
const ISSUANCE: Duration = Duration::from_secs(90);

fn pebble_missing() -> bool {
    let found = |bin: &str| {
        Command::new(bin)
            .arg("-h")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    if found("pebble") && found("pebble-challtestsrv") {
        return false;
    }
    eprintln!("skipped: pebble and pebble-challtestsrv are not installed (apt-get install pebble)");
    true
}

/// A scratch directory with a CA for the directory's own HTTPS (`directory.pem`).
struct Lab {
    pki: Pki,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let pki = Pki::new("acme", tag);
        pki.leaf("directory", &["127.0.0.1", "localhost"]);
        Lab { pki }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.pki.dir.join(name)
    }

    /// A TLS client for the directory's HTTPS (our CA).
    fn directory_client(&self) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.pki.ca.der().clone()).unwrap();
        client_with(roots)
    }
}

fn client_with(roots: rustls::RootCertStore) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// A running pebble (and its DNS), stopped on drop.
struct Pebble {
    pebble: Child,
    dns: Child,
    management: u16,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in [&mut self.pebble, &mut self.dns] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct PebbleSettings {
    port: u16,
    /// Where pebble validates HTTP-01 and TLS-ALPN-01: fulcrum's ports.
    http_port: u16,
    tls_port: u16,
    validity_seconds: Option<u64>,
    /// External account binding required, with this key id and MAC key (base64url).
    eab: Option<(&'static str, &'static str)>,
}

/// Whether `port` listens within 30 s, while `process` runs.
async fn wait_listening(process: &mut std::process::Child, port: u16) -> bool {
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return true;
        }
        if !matches!(process.try_wait(), Ok(None)) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn start_pebble(lab: &Lab, s: PebbleSettings) -> Pebble {
    let dns_port = free_port();
    let management = free_port();
    let dns = Command::new("pebble-challtestsrv")
        .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
        .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
        .args(["-management", &format!("127.0.0.1:{}", free_port())])
        .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pebble-challtestsrv starts");
    let mut config = serde_json::json!({
        "pebble": {
            "listenAddress": format!("127.0.0.1:{}", s.port),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": lab.path("directory.pem"),
            "privateKey": lab.path("directory.key"),
            "httpPort": s.http_port,
            "tlsPort": s.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }
    });
    if let Some((kid, key)) = s.eab {
        config["pebble"]["externalAccountBindingRequired"] = true.into();
        config["pebble"]["externalAccountMACKeys"] = serde_json::json!({ kid: key });
    }
    if let Some(v) = s.validity_seconds {
        config["pebble"]["certificateValidityPeriod"] = v.into();
    }
    let file = lab.path(&format!("pebble-{}.json", s.port));
    std::fs::write(&file, config.to_string()).unwrap();
    let log = std::fs::File::create(lab.path(&format!("pebble-{}.log", s.port))).unwrap();
    let pebble = Command::new("pebble")
        .arg("-config")
        .arg(&file)
        .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .env("PEBBLE_AUTHZREUSE", "0")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("pebble starts");
    let mut p = Pebble {
        pebble,
        dns,
        management,
    };
    let log = lab.path(&format!("pebble-{}.log", s.port));
    for port in [s.port, management] {
        if !wait_listening(&mut p.pebble, port).await {
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("pebble does not listen on port {port}; it said:\n{said}");
        }
    }
    p
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn connect(c: &TlsConnector, addr: SocketAddr, name: &str) -> std::io::Result<Tls> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), c.connect(server_name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// One HTTP/1.1 request on an open stream; the response head and body as text.
async fn request(s: &mut Tls, host: &str, path: &str, close: bool) -> String {
    let connection = if close { "close" } else { "keep-alive" };
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: {connection}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // Bodies here are short and framed by content-length: read until it is all there.
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("response in time")
            .unwrap();
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out).into_owned();
        if n == 0 {
            return text;
        }
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            });
            if len.is_some_and(|len| body.len() >= len) {
                return text;
            }
        }
    }
}

/// An HTTPS GET to pebble's management interface (our CA), e.g. its issuing root.
async fn management_get(lab: &Lab, port: u16, path: &str) -> String {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut s = connect(&lab.directory_client(), addr, "127.0.0.1")
        .await
        .unwrap();
    let text = request(&mut s, "127.0.0.1", path, true).await;
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// A TLS client trusting pebble's issuing root only.
async fn issued_client(lab: &Lab, pebble: &Pebble) -> TlsConnector {
    let pem = management_get(lab, pebble.management, "/roots/0").await;
    let root = CertificateDer::from_pem_slice(pem.as_bytes()).expect("pebble's root");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    client_with(roots)
}

fn serial(s: &Tls) -> Vec<u8> {
    let leaf = &s.get_ref().1.peer_certificates().unwrap()[0];
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
    cert.raw_serial().to_vec()
}

fn issuer(s: &Tls) -> String {
    let leaf = &s.get_ref().1.peer_certificates().unwrap()[0];
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
    cert.issuer().to_string()
}

/// Waits until a client trusting pebble's root completes a handshake for `name`.
async fn wait_issued(c: &TlsConnector, addr: SocketAddr, name: &str, within: Duration) -> Tls {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(s) = connect(c, addr, name).await {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no certificate from the CA for {name} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn orders(admin: SocketAddr, result: &str) -> u64 {
    let series = format!("fulcrum_acme_orders_total{{result=\"{result}\"}}");
    common::metrics::current(admin, &series).await as u64
}

async fn status(admin: SocketAddr) -> serde_json::Value {
    let (_, _, body) = get(admin, "/status").await;
    serde_json::from_slice(&body).unwrap()
}

/// One fulcrum's ports and ACME settings: HTTP-01 and renewal 30 days before expiry
/// unless a test says otherwise.
struct Setup {
    plain: u16,
    tls: u16,
    directory_port: u16,
    storage: PathBuf,
    challenge: &'static str,
    renew_before: &'static str,
    names: Vec<&'static str>,
}

impl Setup {
    fn new(lab: &Lab, names: &[&'static str]) -> Setup {
        Setup {
            plain: free_port(),
            tls: free_port(),
            directory_port: free_port(),
            storage: lab.path("acme"),
            challenge: "http-01",
            renew_before: "30d",
            names: names.to_vec(),
        }
    }

    /// Pebble at this setup's directory port, validating on its listeners' ports.
    async fn pebble(&self, lab: &Lab, validity_seconds: Option<u64>) -> Pebble {
        start_pebble(
            lab,
            PebbleSettings {
                port: self.directory_port,
                http_port: self.plain,
                tls_port: self.tls,
                validity_seconds,
                eab: None,
            },
        )
        .await
    }

    fn config(&self, lab: &Lab, backend: &HttpBackend) -> String {
        let names: Vec<String> = self.names.iter().map(|n| format!("{n:?}")).collect();
        format!(
            "[admin]\nbind = \"127.0.0.1:0\"\n\
             [[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:{plain}\"\nprotocol = \"http\"\nupstream = \"app\"\n\
             [[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:{tls}\"\nprotocol = \"http\"\nupstream = \"app\"\n\
             [listener.tls]\nacme = [{names}]\n\
             [upstream.app]\nbackends = [{{ address = \"{backend}\", name = \"b\" }}]\n\
             [acme]\ndirectory = \"https://127.0.0.1:{dir}/dir\"\nemail = \"ops@fulcrum.test\"\nstorage = \"{storage}\"\n\
             ca = \"{ca}\"\nchallenge = \"{challenge}\"\nrenew_before = \"{renew}\"\n",
            plain = self.plain,
            tls = self.tls,
            names = names.join(", "),
            backend = backend.addr,
            dir = self.directory_port,
            storage = self.storage.display(),
            ca = lab.path("ca.pem").display(),
            challenge = self.challenge,
            renew = self.renew_before,
        )
    }
}

/// Waits until `f` holds for the admin API's counters or status.
async fn until<F, Fut>(what: &str, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    common::eventually(what, ISSUANCE, f).await;
}

/// Waits until the manager has looked at the (first) certificate once.
async fn checked(admin: SocketAddr) {
    until("the certificate checked", || async {
        status(admin).await["acme"]["certificates"][0]["checks"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    })
    .await;
}

/// The fallback serves requests: a client that takes any certificate sees it.
async fn fallback_serves(addr: SocketAddr, name: &str) {
    let mut s = connect(&any_client(), addr, name).await.unwrap();
    assert!(issuer(&s).contains("fallback"), "{}", issuer(&s));
    let reply = request(&mut s, name, "/", true).await;
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "the fallback serves: {reply}"
    );
}

async fn first_issuance(challenge: &'static str) {
    if pebble_missing() {
        return;
    }
    let lab = Lab::new(challenge);
    let backend = HttpBackend::start("b").await;
    let mut setup = Setup::new(&lab, &["a.fulcrum.test", "www.fulcrum.test"]);
    setup.challenge = challenge;
    let pebble = setup.pebble(&lab, None).await;
    let storage = setup.storage.clone();
    let f = Fulcrum::start(&setup.config(&lab, &backend)).await;
    let admin = f.admin.unwrap();
    let addr = f.addr("tls");
    // Before the CA's certificate arrives (or if it never does) a fallback serves.
    let early = connect(&any_client(), addr, "a.fulcrum.test")
        .await
        .unwrap();
    let early_issuer = issuer(&early);
    drop(early);
    let client = issued_client(&lab, &pebble).await;
    let mut s = wait_issued(&client, addr, "a.fulcrum.test", ISSUANCE).await;
    assert!(
        issuer(&s).contains("Pebble"),
        "issued by pebble: {}",
        issuer(&s)
    );
    assert!(
        early_issuer.contains("Pebble") || early_issuer.contains("fallback"),
        "before issuance: the fallback, got {early_issuer}"
    );
    let reply = request(&mut s, "a.fulcrum.test", "/hello", true).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // One certificate for both names.
    let s2 = connect(&client, addr, "www.fulcrum.test").await.unwrap();
    assert_eq!(serial(&s2), serial(&s));
    assert_eq!(orders(admin, "issued").await, 1);
    let text = common::metrics::scrape(admin).await;
    let expiry = text
        .lines()
        .find_map(|l| l.strip_prefix("fulcrum_tls_certificate_expiry_seconds{listener=\"tls\""))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(expiry > 1_700_000_000, "expiry published: {expiry}");
    let st = status(admin).await;
    assert_eq!(st["acme"]["certificates"][0]["source"], "ca", "{st}");
    // Tokens fulcrum did not issue are not found; routes still serve the rest.
    let (code, _, _) = get(f.addr("plain"), "/.well-known/acme-challenge/not-a-token").await;
    assert_eq!(code, 404);
    let (code, _, _) = get(
        f.addr("plain"),
        "/.well-known/acme-challenge/../../account.json",
    )
    .await;
    assert_eq!(code, 404);
    let (code, _, _) = get(f.addr("plain"), "/hello").await;
    assert_eq!(code, 200);
    // Stored privately: the account, the certificate and its key.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&storage).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert!(storage.join("account.json").exists());
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_certificate_by_http01_is_served_without_a_reload() {
    first_issuance("http-01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_certificate_by_tls_alpn01_is_served_without_a_reload() {
    first_issuance("tls-alpn-01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_swaps_the_certificate_while_open_connections_stay() {
    if pebble_missing() {
        return;
    }
    let lab = Lab::new("renew");
    let backend = HttpBackend::start("b").await;
    let mut setup = Setup::new(&lab, &["renew.fulcrum.test"]);
    // Certificates valid for an hour, renewed when less than 3590 s are left: each
    // is renewed about ten seconds after it was issued.
    setup.renew_before = "3590s";
    let pebble = setup.pebble(&lab, Some(3600)).await;
    let f = Fulcrum::start(&setup.config(&lab, &backend)).await;
    let addr = f.addr("tls");
    let client = issued_client(&lab, &pebble).await;
    let mut kept = wait_issued(&client, addr, "renew.fulcrum.test", ISSUANCE).await;
    let first = serial(&kept);
    let reply = request(&mut kept, "renew.fulcrum.test", "/before", false).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let deadline = tokio::time::Instant::now() + ISSUANCE;
    let renewed = loop {
        let s = connect(&client, addr, "renew.fulcrum.test").await.unwrap();
        if serial(&s) != first {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "no renewal seen");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(issuer(&renewed).contains("Pebble"));
    // The connection opened before the swap still serves.
    let reply = request(&mut kept, "renew.fulcrum.test", "/after", false).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(orders(f.admin.unwrap(), "issued").await >= 2);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_requires_external_account_binding_gets_it() {
    if pebble_missing() {
        return;
    }
    let lab = Lab::new("eab");
    let backend = HttpBackend::start("b").await;
    let (kid, key) = (
        "kid-1",
        "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W",
    );
    std::fs::write(lab.path("eab.key"), format!("{key}\n")).unwrap();
    let bound = Setup::new(&lab, &["bound.fulcrum.test"]);
    let mut unbound = Setup::new(&lab, &["unbound.fulcrum.test"]);
    unbound.directory_port = bound.directory_port;
    unbound.storage = lab.path("acme-unbound");
    let pebble = start_pebble(
        &lab,
        PebbleSettings {
            port: bound.directory_port,
            http_port: bound.plain,
            tls_port: bound.tls,
            validity_seconds: None,
            eab: Some((kid, key)),
        },
    )
    .await;
    let client = issued_client(&lab, &pebble).await;
    // Without the binding the CA refuses the account: counted as failed.
    let f = Fulcrum::start(&unbound.config(&lab, &backend)).await;
    let admin = f.admin.unwrap();
    until("the refusal counted", || async {
        orders(admin, "failed").await >= 1
    })
    .await;
    let st = status(admin).await;
    assert!(
        st["acme"]["certificates"][0]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("externalAccount"),
        "{st}"
    );
    f.stop().await;
    // With it, the certificate comes.
    let config = bound.config(&lab, &backend)
        + &format!(
            "eab = {{ kid = \"{kid}\", key_file = \"{}\" }}\n",
            lab.path("eab.key").display()
        );
    let f = Fulcrum::start(&config).await;
    wait_issued(&client, f.addr("tls"), "bound.fulcrum.test", ISSUANCE).await;
    assert_eq!(orders(f.admin.unwrap(), "issued").await, 1);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_ca_down_at_start_the_fallback_serves_until_it_returns() {
    if pebble_missing() {
        return;
    }
    let lab = Lab::new("down");
    let backend = HttpBackend::start("b").await;
    let setup = Setup::new(&lab, &["down.fulcrum.test"]);
    let f = Fulcrum::start(&setup.config(&lab, &backend)).await;
    let admin = f.admin.unwrap();
    let addr = f.addr("tls");
    // Nothing listens at the directory: attempts fail and are counted, the
    // fallback serves meanwhile.
    until("failed attempts counted", || async {
        orders(admin, "unreachable").await >= 2
    })
    .await;
    fallback_serves(addr, "down.fulcrum.test").await;
    let st = status(admin).await;
    let cert = &st["acme"]["certificates"][0];
    assert_eq!(cert["source"], "fallback", "{st}");
    assert!(cert["failures"].as_u64().unwrap() >= 2, "{st}");
    assert!(
        cert["last_error"].as_str().unwrap().contains("unreachable"),
        "{st}"
    );
    // The CA comes back: the certificate follows within the back-off.
    let pebble = setup.pebble(&lab, None).await;
    let client = issued_client(&lab, &pebble).await;
    wait_issued(&client, addr, "down.fulcrum.test", ISSUANCE).await;
    assert_eq!(orders(admin, "issued").await, 1);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_serves_the_stored_certificate_without_a_new_order() {
    if pebble_missing() {
        return;
    }
    let lab = Lab::new("restart");
    let backend = HttpBackend::start("b").await;
    let setup = Setup::new(&lab, &["keep.fulcrum.test"]);
    let pebble = setup.pebble(&lab, None).await;
    let client = issued_client(&lab, &pebble).await;
    let f = Fulcrum::start(&setup.config(&lab, &backend)).await;
    let first = serial(&wait_issued(&client, f.addr("tls"), "keep.fulcrum.test", ISSUANCE).await);
    f.stop().await;
    // The CA is gone: any order would fail and be counted.
    drop(pebble);
    let f = Fulcrum::start(&setup.config(&lab, &backend)).await;
    let admin = f.admin.unwrap();
    let s = connect(&client, f.addr("tls"), "keep.fulcrum.test")
        .await
        .unwrap();
    assert_eq!(
        serial(&s),
        first,
        "the stored certificate serves from the start"
    );
    // Once the manager has looked at it: not due, nothing ordered.
    checked(admin).await;
    assert_eq!(
        status(admin).await["acme"]["certificates"][0]["source"],
        "ca"
    );
    for result in ["issued", "failed", "unreachable", "rate_limited"] {
        assert_eq!(orders(admin, result).await, 0, "{result}");
    }
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_storage_place_one_order_between_them() {
    if pebble_missing() {
        return;
    }
    let lab = Lab::new("shared");
    let backend = HttpBackend::start("b").await;
    let name = "shared.fulcrum.test";
    let one = Setup::new(&lab, &[name]);
    let mut two = Setup::new(&lab, &[name]);
    two.directory_port = one.directory_port;
    // The CA reaches instance one only, whichever instance orders: two's challenge
    // answers are in the shared storage, where one finds them.
    let pebble = one.pebble(&lab, None).await;
    let client = issued_client(&lab, &pebble).await;
    let (config_one, config_two) = (one.config(&lab, &backend), two.config(&lab, &backend));
    let (a, b) = tokio::join!(Fulcrum::start(&config_one), Fulcrum::start(&config_two));
    one_order_between(&client, a, b, name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_the_ordering_lock_lives_there_and_a_held_lock_file_does_not_matter() {
    if pebble_missing() {
        return;
    }
    let Some((redis_port, _redis)) = common::redis::RedisServer::start_if_installed() else {
        return;
    };
    let lab = Lab::new("redislock");
    let backend = HttpBackend::start("b").await;
    let name = "locked.fulcrum.test";
    let one = Setup::new(&lab, &[name]);
    let mut two = Setup::new(&lab, &[name]);
    two.directory_port = one.directory_port;
    // A lock file another instance holds for ten more minutes: an instance that
    // locks with the file would wait for it.
    std::fs::create_dir_all(&one.storage).unwrap();
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 600_000;
    std::fs::write(one.storage.join("lock"), format!("elsewhere {expires}\n")).unwrap();
    let pebble = one.pebble(&lab, None).await;
    let client = issued_client(&lab, &pebble).await;
    let redis = format!("[redis]\nurl = \"redis://127.0.0.1:{redis_port}/0\"\ntimeout = \"1s\"\n");
    let (config_one, config_two) = (
        one.config(&lab, &backend) + &redis,
        two.config(&lab, &backend) + &redis,
    );
    let (a, b) = tokio::join!(Fulcrum::start(&config_one), Fulcrum::start(&config_two));
    one_order_between(&client, a, b, name).await;
}

/// Both instances serve the same certificate from the CA, ordered once between them.
async fn one_order_between(client: &TlsConnector, a: Fulcrum, b: Fulcrum, name: &str) {
    let sa = wait_issued(client, a.addr("tls"), name, ISSUANCE).await;
    let sb = wait_issued(client, b.addr("tls"), name, ISSUANCE).await;
    assert_eq!(serial(&sa), serial(&sb), "one certificate for both");
    let issued =
        orders(a.admin.unwrap(), "issued").await + orders(b.admin.unwrap(), "issued").await;
    assert_eq!(issued, 1, "one order between the two instances");
    a.stop().await;
    b.stop().await;
}

/// A directory written here: it serves its directory object and nonces, and answers
/// every other request with one problem (status, type), or never at all (`None`).
/// With `ari` (a suggested renewal window, RFC 3339 start and end), it also offers
/// renewal information, and creates accounts.
async fn fake_directory(
    lab: &Lab,
    port: u16,
    answer: Option<(u16, &'static str)>,
    ari: Option<(&'static str, &'static str)>,
) -> tokio::task::JoinHandle<()> {
    use rustls::pki_types::PrivateKeyDer;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(lab.path("directory.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(lab.path("directory.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 16384];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let Some((status, kind)) = answer else {
                    // Hang: hold the connection, answer nothing.
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    return;
                };
                let base = format!("https://127.0.0.1:{port}");
                // The directory and nonces are served; every POST gets the problem.
                let renewal = if ari.is_some() {
                    format!(",\"renewalInfo\":\"{base}/ari\"")
                } else {
                    String::new()
                };
                let (status, kind_header, body) = if head.starts_with("GET /dir ") {
                    (200, "application/json", format!(
                        "{{\"newNonce\":\"{base}/nonce\",\"newAccount\":\"{base}/account\",\"newOrder\":\"{base}/order\",\"revokeCert\":\"{base}/revoke\",\"keyChange\":\"{base}/key\"{renewal}}}"
                    ))
                } else if head.contains(" /nonce ") {
                    (200, "text/plain", String::new())
                } else if let (Some((start, end)), true) = (ari, head.starts_with("GET /ari/")) {
                    (
                        200,
                        "application/json",
                        format!(
                            "{{\"suggestedWindow\":{{\"start\":\"{start}\",\"end\":\"{end}\"}}}}"
                        ),
                    )
                } else if ari.is_some() && head.starts_with("POST /account ") {
                    (
                        201,
                        "application/json",
                        "{\"status\":\"valid\"}".to_string(),
                    )
                } else {
                    (status, "application/problem+json", format!(
                        "{{\"type\":\"urn:ietf:params:acme:error:{kind}\",\"detail\":\"refused by the test\",\"status\":{status}}}"
                    ))
                };
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: {kind_header}\r\nreplay-nonce: nonce{}\r\nretry-after: 3600\r\nlocation: {base}/acct/1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    fastrand::u32(..),
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_directory_is_backed_off_counted_and_the_fallback_serves() {
    let lab = Lab::new("broken");
    let backend = HttpBackend::start("b").await;
    let cases: [(Option<(u16, &'static str)>, &str); 4] = [
        (Some((500, "serverInternal")), "unreachable"),
        (Some((429, "rateLimited")), "rate_limited"),
        (Some((400, "malformed")), "failed"),
        (None, "unreachable"),
    ];
    for (answer, result) in cases {
        let mut setup = Setup::new(&lab, &["broken.fulcrum.test"]);
        setup.storage = lab.path(&format!("acme-{}", setup.directory_port));
        let directory = fake_directory(&lab, setup.directory_port, answer, None).await;
        let f = Fulcrum::start(&setup.config(&lab, &backend)).await;
        let admin = f.admin.unwrap();
        // A hung directory is given up on after the request timeout (10 s).
        until(result, || async { orders(admin, result).await >= 1 }).await;
        let st = status(admin).await;
        let cert = &st["acme"]["certificates"][0];
        assert_eq!(cert["source"], "fallback", "{st}");
        // Refusals and rate limits wait a minute or more before the next attempt.
        if result != "unreachable" {
            assert!(
                cert["next_check_seconds"].as_u64().unwrap() >= 50,
                "{answer:?}: {st}"
            );
        }
        fallback_serves(f.addr("tls"), "broken.fulcrum.test").await;
        f.stop().await;
        directory.abort();
    }
}

/// A stored certificate the CA did not issue (valid until 4096): never due by
/// `renew_before`, so only renewal information can make it due.
fn store_certificate(lab: &Lab, setup: &Setup) {
    let names: Vec<String> = setup.names.iter().map(|n| n.to_string()).collect();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(names.clone()).unwrap();
    // What renewal information identifies a certificate by, with its serial.
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &lab.pki.ca).unwrap();
    fulcrum::acme::store::Store::new(&setup.storage)
        .save(&names, &cert.pem(), &key.serialize_pem())
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cas_renewal_window_brings_a_renewal_forward() {
    let lab = Lab::new("ari");
    let backend = HttpBackend::start("b").await;
    // A window that has begun: renew now (the fake refuses the order: counted). A
    // window years away: renew_before decides, and nothing is due.
    for (window, orders_expected) in [
        (("2020-01-01T00:00:00Z", "2020-01-02T00:00:00Z"), true),
        (("2090-01-01T00:00:00Z", "2090-01-02T00:00:00Z"), false),
    ] {
        let mut setup = Setup::new(&lab, &["ari.fulcrum.test"]);
        setup.storage = lab.path(&format!("acme-{}", setup.directory_port));
        store_certificate(&lab, &setup);
        let directory = fake_directory(
            &lab,
            setup.directory_port,
            Some((400, "malformed")),
            Some(window),
        )
        .await;
        let f = Fulcrum::start(&setup.config(&lab, &backend)).await;
        let admin = f.admin.unwrap();
        checked(admin).await;
        let st = status(admin).await;
        let cert = &st["acme"]["certificates"][0];
        assert_eq!(cert["source"], "ca", "the stored certificate serves: {st}");
        assert!(
            cert["renewal_window_at"].as_i64().is_some(),
            "the window was asked for: {st}"
        );
        assert_eq!(
            orders(admin, "failed").await >= 1,
            orders_expected,
            "{window:?}: {st}"
        );
        f.stop().await;
        directory.abort();
    }
}
