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
