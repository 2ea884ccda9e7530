//! An HTTP/3 client for tests: QUIC (quinn) with TLS 1.3 trusting a test CA, HTTP/3
//! (h3) over it.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Request, StatusCode};
use rustls::pki_types::CertificateDer;

pub type Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// One HTTP/3 connection.
pub struct H3 {
    pub conn: quinn::Connection,
    pub send: Sender,
    pub endpoint: quinn::Endpoint,
    driver: tokio::task::JoinHandle<h3::error::ConnectionError>,
}

/// A QUIC client endpoint on loopback that trusts `ca` and offers ALPN `h3`.
pub fn endpoint(ca: &CertificateDer<'static>) -> quinn::Endpoint {
    endpoint_with(ca, false)
}

/// As [`endpoint`]; with `early_data`, a resumed connection may send 0-RTT data.
pub fn endpoint_with(ca: &CertificateDer<'static>, early_data: bool) -> quinn::Endpoint {
    endpoint_configured(ca, early_data, None)
}

/// As [`endpoint`], its connections sending a PING every `ping` (kept alive however
/// idle they are).
pub fn endpoint_pinging(
    ca: &CertificateDer<'static>,
    ping: std::time::Duration,
) -> quinn::Endpoint {
    endpoint_configured(ca, false, Some(ping))
}

fn endpoint_configured(
    ca: &CertificateDer<'static>,
    early_data: bool,
    ping: Option<std::time::Duration>,
) -> quinn::Endpoint {
    let crypto = client_crypto(ca, early_data);
    let mut client = quinn::ClientConfig::new(crypto);
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(ping);
    client.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client);
    endpoint
}

/// An endpoint as [`endpoint_with`] sending early data, and a second client
/// configuration sharing its TLS sessions (so it resumes with 0-RTT too) but keeping
/// no address-validation tokens: it never proves its address before its handshake.
pub fn early_data_with_and_without_tokens(
    ca: &CertificateDer<'static>,
) -> (quinn::Endpoint, quinn::ClientConfig) {
    let crypto = client_crypto(ca, true);
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(crypto.clone()));
    let mut tokenless = quinn::ClientConfig::new(crypto);
    tokenless.token_store(Arc::new(quinn::NoneTokenStore));
    (endpoint, tokenless)
}

fn client_crypto(
    ca: &CertificateDer<'static>,
    early_data: bool,
) -> Arc<quinn::crypto::rustls::QuicClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    tls.enable_early_data = early_data;
    Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).unwrap())
}

impl H3 {
    /// Connects to `addr` (UDP) naming `server_name`, trusting `ca`.
    pub async fn connect(addr: SocketAddr, server_name: &str, ca: &CertificateDer<'static>) -> H3 {
        Self::try_connect(addr, server_name, ca)
            .await
            .expect("HTTP/3 connection")
    }

    pub async fn try_connect(
        addr: SocketAddr,
        server_name: &str,
        ca: &CertificateDer<'static>,
    ) -> Result<H3, String> {
        let endpoint = endpoint(ca);
        let conn = endpoint
            .connect(addr, server_name)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
            .await
            .map_err(|e| e.to_string())?;
        let driver = tokio::spawn(async move { driver.wait_idle().await });
        Ok(H3 {
            conn,
            send,
            endpoint,
            driver,
        })
    }

    /// Sends `req` with `body` (none when empty) and reads the whole answer.
    pub async fn request(
        &mut self,
        req: Request<()>,
        body: Bytes,
    ) -> Result<(StatusCode, HeaderMap, Bytes), String> {
        send(&mut self.send, req, body).await
    }

    pub async fn get(&mut self, authority: &str, path: &str) -> (StatusCode, HeaderMap, Bytes) {
        self.request(get(authority, path), Bytes::new())
            .await
            .expect("HTTP/3 GET")
    }
}

impl Drop for H3 {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A GET of `https://AUTHORITY/PATH`.
pub fn get(authority: &str, path: &str) -> Request<()> {
    Request::get(format!("https://{authority}{path}"))
        .body(())
        .unwrap()
}

/// One request on a connection (senders clone: many may run at once).
pub async fn send(
    sender: &mut Sender,
    req: Request<()>,
    body: Bytes,
) -> Result<(StatusCode, HeaderMap, Bytes), String> {
    let stream = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let (mut tx, mut rx) = stream.split();
    // The upload goes out while the answer comes in (an echo answers as it reads).
    let upload = async move {
        // In pieces, as a client streaming an upload would.
        for piece in body.chunks(64 * 1024) {
            tx.send_data(Bytes::copy_from_slice(piece))
                .await
                .map_err(|e| e.to_string())?;
        }
        tx.finish().await.map_err(|e| e.to_string())
    };
    let download = async move {
        let resp = rx.recv_response().await.map_err(|e| e.to_string())?;
        let mut got = BytesMut::new();
        while let Some(mut chunk) = rx.recv_data().await.map_err(|e| e.to_string())? {
            got.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
        Ok::<_, String>((resp.status(), resp.headers().clone(), got.freeze()))
    };
    let (sent, got) = tokio::join!(upload, download);
    sent?;
    got
}
