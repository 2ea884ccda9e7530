//! TLS for tests: a throw-away PKI in a scratch directory, and a client that records
//! what the server presented instead of verifying it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};

/// A CA (`ca.pem`) in a scratch directory, removed on drop.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    /// `tag` names the directory: `fulcrum-TAG-PID-NAME`.
    pub fn new(tag: &str, name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("fulcrum-{tag}-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca }
    }

    /// Writes `name.pem` and `name.key` for a certificate valid for `names`.
    pub fn leaf(&self, name: &str, names: &[&str]) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        std::fs::write(self.dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        cert.der().clone()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A client-side verifier that takes any certificate (signatures still checked),
/// offers `schemes`, and keeps what the server sent: its leaf and its stapled OCSP
/// response.
#[derive(Debug)]
pub struct Recorder {
    schemes: Vec<rustls::SignatureScheme>,
    seen: Mutex<Option<(CertificateDer<'static>, Vec<u8>)>>,
}

impl Recorder {
    pub fn new(schemes: &[rustls::SignatureScheme]) -> Arc<Recorder> {
        Arc::new(Recorder {
            schemes: schemes.to_vec(),
            seen: Mutex::new(None),
        })
    }

    /// The leaf and OCSP response of the last handshake.
    pub fn take(&self) -> Option<(CertificateDer<'static>, Vec<u8>)> {
        self.seen.lock().unwrap().take()
    }

    pub fn connector(self: &Arc<Self>) -> tokio_rustls::TlsConnector {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(self.clone())
        .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// A client that takes whatever certificate the server presents.
pub fn any_client() -> tokio_rustls::TlsConnector {
    let schemes = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .supported_schemes();
    Recorder::new(&schemes).connector()
}

impl rustls::client::danger::ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        ocsp: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = Some((end_entity.clone().into_owned(), ocsp.to_vec()));
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.schemes.clone()
    }
}

/// An HTTPS backend presenting certificate `name` from `pki`; answers "tls-backend".
pub async fn tls_backend(
    pki: &Pki,
    name: &str,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    tls_backend_speaking(pki, name, false).await
}

/// The same, speaking HTTP/2 only (ALPN `h2`) with `h2`; it answers with the version.
pub async fn tls_backend_speaking(
    pki: &Pki,
    name: &str,
    h2: bool,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let chain = <CertificateDer as rustls::pki_types::pem::PemObject>::pem_file_iter(
        pki.dir.join(format!("{name}.pem")),
    )
    .unwrap()
    .collect::<Result<Vec<_>, _>>()
    .unwrap();
    let key =
        <rustls::pki_types::PrivateKeyDer as rustls::pki_types::pem::PemObject>::from_pem_file(
            pki.dir.join(format!("{name}.key")),
        )
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let mut config = config;
    config.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let answer = if req.version() == http::Version::HTTP_2 {
                            "tls-backend over h2"
                        } else {
                            "tls-backend"
                        };
                        Ok::<_, std::convert::Infallible>(http::Response::new(super::http::body(
                            answer,
                        )))
                    },
                );
                let io = hyper_util::rt::TokioIo::new(tls);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(io, svc)
                    .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                }
            });
        }
    });
    (addr, task)
}
