//! TLS with rustls: the server side of `[listener.tls]` (certificates chosen by SNI
//! against each certificate's names, exact and wildcard; the first is the default;
//! ALPN; minimum version; client certificates), built once per configuration
//! generation from material the config already loaded and matched.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::{ListenerTls, TlsVersion};

/// Picks the first certificate valid for the client's SNI name (as webpki checks a
/// name: exact or wildcard), else the first certificate.
#[derive(Debug)]
struct BySni {
    certificates: Vec<Arc<CertifiedKey>>,
}

impl BySni {
    fn pick(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let by_name = name
            .and_then(|n| rustls::pki_types::ServerName::try_from(n).ok())
            .and_then(|sni| {
                self.certificates.iter().find(|c| {
                    c.cert.first().is_some_and(|leaf| {
                        webpki::EndEntityCert::try_from(leaf)
                            .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&sni).is_ok())
                    })
                })
            });
        by_name.or_else(|| self.certificates.first()).cloned()
    }
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, rustls::Error> {
    static TICKETER: std::sync::OnceLock<Arc<dyn rustls::server::ProducesTickets>> =
        std::sync::OnceLock::new();
    if let Some(t) = TICKETER.get() {
        return Ok(t.clone());
    }
    let t = rustls::crypto::ring::Ticketer::new()?;
    Ok(TICKETER.get_or_init(|| t).clone())
}

/// The acceptor for one listener of one generation.
pub fn acceptor(t: &ListenerTls) -> Result<TlsAcceptor, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match t.min_version {
        TlsVersion::V12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V13 => &[&rustls::version::TLS13],
    };
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(versions)?;
    let builder = match &t.client_ca {
        Some(cas) => {
            let mut roots = RootCertStore::empty();
            for ca in cas {
                roots.add(ca.clone())?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(BySni {
        certificates: t.certificates.clone(),
    }));
    config.alpn_protocols = t.alpn.clone();
    // Resumption: stateless tickets besides rustls' in-memory session cache. One
    // ticketer for the life of the process, so that tickets survive reloads.
    config.ticketer = ticketer()?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// TLS to the backends of one upstream: verified against the configured CA, or the
/// system's roots.
#[derive(Clone)]
pub struct BackendTls {
    connector: tokio_rustls::TlsConnector,
    /// A hash of the settings (SNI, CA), never 0: pooled connections made with other
    /// settings are not reused.
    fingerprint: u64,
    /// The configured name; else each backend's host.
    sni: Option<rustls::pki_types::ServerName<'static>>,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("sni", &self.sni)
            .finish_non_exhaustive()
    }
}

/// Whether the system's root certificates (or `SSL_CERT_FILE` / `SSL_CERT_DIR`) hold
/// at least one certificate: what an upstream `tls` without `ca` verifies against.
pub fn system_roots_found() -> bool {
    !rustls_native_certs::load_native_certs().certs.is_empty()
}

impl BackendTls {
    /// `alpn`: what to offer the backend (`http/1.1` for the HTTP engine).
    pub fn new(t: &crate::config::UpstreamTls, alpn: &[&[u8]]) -> Result<BackendTls, String> {
        let mut roots = RootCertStore::empty();
        match &t.ca {
            Some(cas) => {
                for ca in cas {
                    roots.add(ca.clone()).map_err(|e| e.to_string())?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err("no system root certificates found; set upstream tls.ca".into());
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let sni = match &t.sni {
            Some(s) => Some(
                rustls::pki_types::ServerName::try_from(s.clone()).map_err(|e| e.to_string())?,
            ),
            None => None,
        };
        let mut id = Vec::new();
        id.extend_from_slice(t.sni.as_deref().unwrap_or("").as_bytes());
        for ca in t.ca.iter().flatten() {
            id.push(0);
            id.extend_from_slice(ca.as_ref());
        }
        Ok(BackendTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            fingerprint: crate::balance::hash_bytes(&id) | 1,
            sni,
        })
    }

    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The TLS handshake with a backend whose address (as written) is `address`.
    pub async fn connect(
        &self,
        tcp: tokio::net::TcpStream,
        address: &str,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let name = match &self.sni {
            Some(n) => n.clone(),
            None => {
                let host = address
                    .rsplit_once(':')
                    .map_or(address, |(h, _)| h)
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
                })?
            }
        };
        self.connector.connect(name, tcp).await
    }
}

/// The subject of the client certificate a TLS session verified (mTLS), for the logs.
pub fn client_subject(conn: &rustls::ServerConnection) -> Option<Arc<str>> {
    let leaf = conn.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(Arc::from(cert.subject().to_string()))
}

/// A served certificate's name (its first DNS subject alternative name, else its
/// subject's common name, else its subject) and when it expires (seconds since the
/// Unix epoch), read from its leaf.
pub fn certificate_expiry(key: &CertifiedKey) -> Option<(String, i64)> {
    let leaf = key.cert.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let dns = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
        });
    let name = dns
        .or_else(|| {
            cert.subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok().map(str::to_string))
        })
        .unwrap_or_else(|| cert.subject().to_string());
    Some((name, cert.validity().not_after.timestamp()))
}
