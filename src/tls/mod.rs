//! TLS with rustls: the server side of `[listener.tls]` (certificates chosen by SNI
//! against each certificate's names, exact and wildcard; the first is the default;
//! ALPN; minimum version; client certificates), built once per configuration
//! generation from material the config already loaded and matched.

pub mod ocsp;
pub mod tickets;

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig, SignatureScheme};

use crate::config::{ListenerTls, TlsVersion};

/// Every signature scheme a server key may sign with, to learn which each key takes.
const SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ECDSA_NISTP521_SHA512,
    SignatureScheme::ED25519,
    SignatureScheme::ED448,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA512,
    SignatureScheme::RSA_PKCS1_SHA256,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::RSA_PKCS1_SHA512,
];

/// One served certificate and what choosing it takes.
#[derive(Debug)]
struct Served {
    key: Arc<CertifiedKey>,
    /// The schemes its key signs with.
    schemes: Vec<SignatureScheme>,
    /// An RSA key: chosen for a name only when the client takes no other key's scheme.
    rsa: bool,
}

impl Served {
    fn new(key: Arc<CertifiedKey>) -> Served {
        Served {
            schemes: SCHEMES
                .iter()
                .copied()
                .filter(|s| key.key.choose_scheme(&[*s]).is_some())
                .collect(),
            rsa: key.key.algorithm() == rustls::SignatureAlgorithm::RSA,
            key,
        }
    }

    fn valid_for(&self, name: &rustls::pki_types::ServerName<'_>) -> bool {
        self.key.cert.first().is_some_and(|leaf| {
            webpki::EndEntityCert::try_from(leaf)
                .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(name).is_ok())
        })
    }

    fn takes(&self, offered: &[SignatureScheme]) -> bool {
        self.schemes.iter().any(|s| offered.contains(s))
    }
}

/// A certificate replaced while it is served (ACME orders and renewals): resolvers
/// read it on every handshake, so a swap needs no reload and closes no connection.
#[derive(Debug)]
pub struct LiveCert {
    served: arc_swap::ArcSwap<Served>,
}

impl LiveCert {
    pub fn new(key: Arc<CertifiedKey>) -> LiveCert {
        LiveCert {
            served: arc_swap::ArcSwap::from_pointee(Served::new(key)),
        }
    }

    pub fn store(&self, key: Arc<CertifiedKey>) {
        self.served.store(Arc::new(Served::new(key)));
    }

    pub fn load(&self) -> Arc<CertifiedKey> {
        self.served.load().key.clone()
    }
}

/// Picks among the certificates valid for the client's SNI name (as webpki checks a
/// name: exact or wildcard), or, when none is or the client sent no name, among the
/// first certificate and those valid for its name; within them, an ECDSA (or EdDSA)
/// certificate the client can verify, else the first one it can, else the first.
/// Certificates listed come before managed (ACME) ones.
#[derive(Debug)]
struct BySni {
    /// Each certificate, with whether it is one of the defaults.
    entries: Vec<(Entry, bool)>,
}

#[derive(Debug)]
enum Entry {
    Fixed(Arc<Served>),
    /// Replaced while served: an ACME certificate, or one whose OCSP response is
    /// fetched.
    Live(Arc<LiveCert>),
}

impl Entry {
    fn served(&self) -> Arc<Served> {
        match self {
            Entry::Fixed(s) => s.clone(),
            Entry::Live(l) => l.served.load_full(),
        }
    }
}

/// The certificates of a listener that are replaced while served.
#[derive(Debug, Default)]
pub struct Live {
    /// The live certificate of its `acme` names.
    pub acme: Vec<Arc<LiveCert>>,
    /// By position in `certificates`: the live one of those with `ocsp = "auto"`.
    pub stapled: Vec<Option<Arc<LiveCert>>>,
}

impl BySni {
    fn new(certificates: &[Arc<CertifiedKey>], live: Live) -> BySni {
        let default_name = certificates
            .first()
            .and_then(|k| certificate_expiry(k))
            .and_then(|(name, _)| rustls::pki_types::ServerName::try_from(name).ok());
        // The default certificate and those valid for its name: one of them serves
        // clients whose name no certificate covers.
        let mut entries: Vec<(Entry, bool)> = certificates
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let served = Served::new(key.clone());
                let default = i == 0 || default_name.as_ref().is_some_and(|n| served.valid_for(n));
                match live.stapled.get(i).cloned().flatten() {
                    Some(l) => (Entry::Live(l), default),
                    None => (Entry::Fixed(Arc::new(served)), default),
                }
            })
            .collect();
        // With no certificate listed, the first managed one is the default.
        let listed = entries.len();
        entries.extend(
            live.acme
                .into_iter()
                .enumerate()
                .map(|(i, m)| (Entry::Live(m), i == 0 && listed == 0)),
        );
        BySni { entries }
    }

    fn pick(&self, name: Option<&str>, offered: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        let sni = name.and_then(|n| rustls::pki_types::ServerName::try_from(n).ok());
        let candidates: Vec<(Arc<Served>, bool)> = self
            .entries
            .iter()
            .map(|(e, default)| (e.served(), *default))
            .collect();
        let for_name: Vec<bool> = candidates
            .iter()
            .map(|(s, _)| sni.as_ref().is_some_and(|n| s.valid_for(n)))
            .collect();
        let named = for_name.iter().any(|m| *m);
        let group = || {
            candidates
                .iter()
                .zip(&for_name)
                .filter(move |((_, default), m)| if named { **m } else { *default })
                .map(|((s, _), _)| s)
        };
        group()
            .find(|s| !s.rsa && s.takes(offered))
            .or_else(|| group().find(|s| s.takes(offered)))
            .or_else(|| group().next())
            .map(|s| s.key.clone())
    }
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name(), hello.signature_schemes())
    }
}

/// The protocol name of TLS-ALPN-01 handshakes (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Finds the certificate made for a CA's TLS-ALPN-01 check of a name.
pub type ChallengeCerts = Arc<dyn Fn(&str) -> Option<Arc<CertifiedKey>> + Send + Sync>;

#[derive(Clone)]
struct ByChallenge(ChallengeCerts);

impl std::fmt::Debug for ByChallenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ByChallenge")
    }
}

impl ResolvesServerCert for ByChallenge {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        (self.0)(&hello.server_name()?.to_ascii_lowercase())
    }
}

/// The cryptography of every TLS session fulcrum makes or takes: ring, or aws-lc-rs
/// in a build with the `aws-lc-rs` feature.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[cfg(feature = "aws-lc-rs")]
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    #[cfg(not(feature = "aws-lc-rs"))]
    let provider = rustls::crypto::ring::default_provider();
    Arc::new(provider)
}

/// A private key made into what signs handshakes, with [`provider`]'s cryptography.
pub fn signing_key(
    key: &rustls::pki_types::PrivateKeyDer<'_>,
) -> Result<Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
    #[cfg(feature = "aws-lc-rs")]
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(key);
    #[cfg(not(feature = "aws-lc-rs"))]
    let signing = rustls::crypto::ring::sign::any_supported_type(key);
    signing
}

/// The configuration for `acme-tls/1` handshakes: only the challenge certificates,
/// only that protocol. The connection ends after the handshake.
pub fn challenge_config(certs: ChallengeCerts) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = provider();
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(ByChallenge(certs)));
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// Whether a ClientHello is a CA's TLS-ALPN-01 check: it offers `acme-tls/1` only.
pub fn is_challenge_hello(hello: &ClientHello<'_>) -> bool {
    hello.alpn().is_some_and(|mut protocols| {
        protocols.next() == Some(ACME_TLS_ALPN) && protocols.next().is_none()
    })
}

/// A TLS handshake on a listener that also answers TLS-ALPN-01: the ClientHello is
/// read first; a CA's `acme-tls/1` hello gets the challenge certificate and the
/// connection ends after the handshake (`Ok(None)`), any other the listener's
/// configuration.
pub async fn accept_or_challenge<IO>(
    stream: IO,
    config: Arc<ServerConfig>,
    challenge: Arc<ServerConfig>,
) -> std::io::Result<Option<tokio_rustls::server::TlsStream<IO>>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let start =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
    if is_challenge_hello(&start.client_hello()) {
        let mut s = start.into_stream(challenge).await?;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut s).await;
        return Ok(None);
    }
    Ok(Some(start.into_stream(config).await?))
}

/// The server configuration for one listener of one generation; `live`: its
/// certificates replaced while served; `tickets`: the process's session ticketer
/// (none: resumption from the session cache only).
pub fn server_config(
    t: &ListenerTls,
    live: Live,
    tickets: Option<Arc<tickets::Ticketer>>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = provider();
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
    let mut config = builder.with_cert_resolver(Arc::new(BySni::new(&t.certificates, live)));
    config.alpn_protocols = t.alpn.clone();
    // Resumption: stateless tickets besides rustls' in-memory session cache. One
    // ticketer for the life of the process, so that tickets survive reloads.
    if let Some(t) = tickets {
        config.ticketer = t;
    }
    Ok(Arc::new(config))
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
        let provider = provider();
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
            fingerprint: crate::hash::hash_bytes(&id) | 1,
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

/// An HTTP(S) connector for fulcrum's own requests (ACME directories, OCSP
/// responders): TLS verified against the system's roots and `extra_roots`; plain
/// `http://` only when `allow_http`.
pub fn outbound_connector(
    extra_roots: Option<&[rustls::pki_types::CertificateDer<'static>]>,
    allow_http: bool,
    connect_timeout: std::time::Duration,
) -> Result<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, String>
{
    let mut roots = RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    for cert in extra_roots.into_iter().flatten() {
        roots.add(cert.clone()).map_err(|e| e.to_string())?;
    }
    if roots.is_empty() && !allow_http {
        return Err("no root certificates found".into());
    }
    let provider = provider();
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
    let builder = if allow_http {
        builder.https_or_http()
    } else {
        builder.https_only()
    };
    Ok(builder.enable_http1().wrap_connector(http))
}

/// The subject of the client certificate a TLS session verified (mTLS), for the logs.
pub fn client_subject(conn: &rustls::ServerConnection) -> Option<Arc<str>> {
    subject(conn.peer_certificates()?.first()?)
}

/// A certificate's subject.
pub fn subject(cert: &rustls::pki_types::CertificateDer<'_>) -> Option<Arc<str>> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
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
