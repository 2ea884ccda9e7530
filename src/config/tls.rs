//! `[listener.tls]` and `upstream.NAME.tls`: certificates and keys loaded and matched, versions, ALPN, client certificates, and TLS to the backends.

use super::kinds::Protocol;
use super::raw::RawListenerTls;
use super::raw::RawUpstreamTls;
use super::validate::Validator;
use std::path::Path;
use std::sync::Arc;
use toml::Spanned;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V12,
    V13,
}

/// `[listener.tls]`, with every certificate and key already read, parsed and matched.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    /// In the order written: SNI picks by each certificate's names, the first is the
    /// default.
    pub certificates: Vec<Arc<rustls::sign::CertifiedKey>>,
    pub min_version: TlsVersion,
    /// Protocol names offered by ALPN, in preference order.
    pub alpn: Vec<Vec<u8>>,
    /// Require client certificates signed by one of these.
    pub client_ca: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
    /// Names fulcrum orders one certificate for from `[acme]` (lowercase, as written).
    pub acme: Vec<String>,
    /// By position in `certificates`: `ocsp = "auto"`, the response fetched from the
    /// certificate's responder.
    pub ocsp_auto: Vec<bool>,
    /// `http3 = true`: HTTP/3 over QUIC on the listener's addresses too (UDP).
    pub http3: Option<Http3>,
}

/// HTTP/3's settings on a TLS listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http3 {
    /// `http3_retry_above`: with more QUIC handshakes than this in progress, a new
    /// client proves its address with a Retry first (0: every client does).
    pub retry_above: u32,
    /// `http3_0rtt`: resuming clients may send requests before their handshake is
    /// done; only safe methods are acted on before it is.
    pub zero_rtt: bool,
}

/// `http3_retry_above`'s default.
pub const HTTP3_RETRY_ABOVE: u32 = 64;

impl PartialEq for ListenerTls {
    fn eq(&self, o: &Self) -> bool {
        self.min_version == o.min_version
            && self.alpn == o.alpn
            && self.client_ca == o.client_ca
            && self.acme == o.acme
            && self.ocsp_auto == o.ocsp_auto
            && self.http3 == o.http3
            && self.certificates.len() == o.certificates.len()
            && self
                .certificates
                .iter()
                .zip(&o.certificates)
                .all(|(a, b)| a.cert == b.cert && a.ocsp == b.ocsp)
    }
}

/// `upstream.NAME.tls`: TLS to the backends, verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// The name sent and verified; defaults to the host part of each backend's address.
    pub sni: Option<String>,
    /// Trusted roots; `None`: the system's.
    pub ca: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
}

impl Validator<'_> {
    pub(super) fn listener_tls(
        &mut self,
        key: &str,
        t: &RawListenerTls,
        protocol: Protocol,
    ) -> Option<ListenerTls> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let k = |f: &str| format!("{key}.{f}");
        let dir = self.file.parent().unwrap_or(Path::new("")).to_path_buf();
        let listed = t
            .certificates
            .as_ref()
            .map_or(&[][..], |c| c.get_ref().as_slice());
        let mut acme: Vec<String> = Vec::new();
        if let Some(names) = &t.acme {
            if names.get_ref().is_empty() {
                self.err(Some(names.span()), k("acme"), "must list at least one name");
            }
            for n in names.get_ref() {
                let name = n
                    .get_ref()
                    .trim()
                    .trim_end_matches('.')
                    .to_ascii_lowercase();
                if let Some(problem) = super::acme::acme_name_problem(&name) {
                    self.err(Some(n.span()), k("acme"), format!("{name:?} {problem}"));
                } else if acme.contains(&name) {
                    self.err(
                        Some(n.span()),
                        k("acme"),
                        format!("{name:?} is listed twice"),
                    );
                } else {
                    acme.push(name);
                }
            }
        }
        if listed.is_empty() && t.acme.is_none() {
            self.err(
                t.certificates.as_ref().map(|c| c.span()),
                k("certificates"),
                "must list at least one { cert, key }",
            );
        }
        let mut certificates = Vec::new();
        let mut ocsp_auto = Vec::new();
        for (i, c) in listed.iter().enumerate() {
            let ck = |f: &str| format!("{key}.certificates[{i}].{f}");
            let cert_path = dir.join(&c.get_ref().cert);
            let key_path = dir.join(&c.get_ref().key);
            let chain: Vec<CertificateDer<'static>> =
                match CertificateDer::pem_file_iter(&cert_path)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                {
                    Ok(chain) if !chain.is_empty() => chain,
                    Ok(_) => {
                        self.err(
                            Some(c.span()),
                            ck("cert"),
                            format!("{} holds no PEM certificate", cert_path.display()),
                        );
                        continue;
                    }
                    Err(e) => {
                        self.err(
                            Some(c.span()),
                            ck("cert"),
                            format!("{} cannot be loaded: {e}", cert_path.display()),
                        );
                        continue;
                    }
                };
            let private = match PrivateKeyDer::from_pem_file(&key_path) {
                Ok(p) => p,
                Err(e) => {
                    self.err(
                        Some(c.span()),
                        ck("key"),
                        format!("{} cannot be loaded: {e}", key_path.display()),
                    );
                    continue;
                }
            };
            let signing = match crate::tls::signing_key(&private) {
                Ok(s) => s,
                Err(e) => {
                    self.err(
                        Some(c.span()),
                        ck("key"),
                        format!("{} is not a usable key: {e}", key_path.display()),
                    );
                    continue;
                }
            };
            let mut certified = rustls::sign::CertifiedKey::new(chain, signing);
            let mut auto = false;
            match c.get_ref().ocsp.as_deref() {
                None => {}
                Some("auto") => {
                    if let Err(e) = crate::tls::ocsp::responder(&certified) {
                        self.err(
                            Some(c.span()),
                            ck("ocsp"),
                            format!("\"auto\": {} {e}", cert_path.display()),
                        );
                    }
                    auto = true;
                }
                Some(file) => {
                    let path = dir.join(file);
                    match std::fs::read(&path) {
                        // An OCSPResponse is a DER SEQUENCE.
                        Ok(der) if der.first() == Some(&0x30) && der.len() > 4 => {
                            certified.ocsp = Some(der);
                        }
                        Ok(_) => self.err(
                            Some(c.span()),
                            ck("ocsp"),
                            format!("{} is not a DER OCSP response", path.display()),
                        ),
                        Err(e) => self.err(
                            Some(c.span()),
                            ck("ocsp"),
                            format!("{} cannot be read: {e}", path.display()),
                        ),
                    }
                }
            }
            if let Err(e) = certified.keys_match() {
                self.err(
                    Some(c.span()),
                    ck("key"),
                    format!(
                        "{} does not match {}: {e}",
                        key_path.display(),
                        cert_path.display()
                    ),
                );
                continue;
            }
            if let Err(e) = webpki::EndEntityCert::try_from(&certified.cert[0]) {
                self.err(
                    Some(c.span()),
                    ck("cert"),
                    format!("{} is not a usable certificate: {e}", cert_path.display()),
                );
                continue;
            }
            certificates.push(Arc::new(certified));
            ocsp_auto.push(auto);
        }
        let min_version = self.one_of(
            &t.min_version,
            k("min_version"),
            &[("1.2", TlsVersion::V12), ("1.3", TlsVersion::V13)],
            TlsVersion::V12,
        );
        let alpn = match &t.alpn {
            Some(a) => {
                for p in a.get_ref() {
                    let ok = match protocol {
                        Protocol::Http => p == "h2" || p == "http/1.1",
                        Protocol::Tcp => !p.is_empty() && p.len() < 256,
                    };
                    if !ok {
                        self.err(
                            Some(a.span()),
                            k("alpn"),
                            format!("{p:?} is not a protocol this listener speaks"),
                        );
                    }
                }
                a.get_ref().iter().map(|p| p.as_bytes().to_vec()).collect()
            }
            None if protocol == Protocol::Http => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            None => Vec::new(),
        };
        let client_ca = t
            .client_ca
            .as_ref()
            .and_then(|ca| self.ca_file(k("client_ca"), ca));
        let http3 = match &t.http3 {
            Some(on) if *on.get_ref() && protocol != Protocol::Http => {
                self.err(
                    Some(on.span()),
                    k("http3"),
                    "only http listeners serve HTTP/3",
                );
                None
            }
            Some(on) if *on.get_ref() => {
                let zero_rtt = t.http3_0rtt.as_ref().is_some_and(|z| *z.get_ref());
                if let (true, true, Some(z)) = (zero_rtt, t.client_ca.is_some(), &t.http3_0rtt) {
                    self.err(
                        Some(z.span()),
                        k("http3_0rtt"),
                        "not with client_ca: early requests would come before the client certificate is verified",
                    );
                }
                Some(Http3 {
                    retry_above: t
                        .http3_retry_above
                        .as_ref()
                        .map_or(HTTP3_RETRY_ABOVE, |v| *v.get_ref()),
                    zero_rtt,
                })
            }
            _ => {
                for (name, span) in [
                    (
                        "http3_retry_above",
                        t.http3_retry_above.as_ref().map(|v| v.span()),
                    ),
                    ("http3_0rtt", t.http3_0rtt.as_ref().map(|v| v.span())),
                ] {
                    if let Some(span) = span {
                        self.err(Some(span), k(name), "applies only with http3 = true");
                    }
                }
                None
            }
        };
        if certificates.is_empty() && acme.is_empty() {
            return None;
        }
        Some(ListenerTls {
            certificates,
            min_version,
            alpn,
            client_ca,
            acme,
            ocsp_auto,
            http3,
        })
    }

    /// A PEM file of CA certificates (relative to the config file's directory), each
    /// usable as a trust anchor.
    pub(super) fn ca_file(
        &mut self,
        key: String,
        v: &Spanned<String>,
    ) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        let path = self
            .file
            .parent()
            .unwrap_or(Path::new(""))
            .join(v.get_ref());
        let problem = match CertificateDer::pem_file_iter(&path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        {
            Ok(certs) if certs.is_empty() => format!("{} holds no PEM certificate", path.display()),
            Ok(certs) => match certs
                .iter()
                .find_map(|c| webpki::anchor_from_trusted_cert(c).err())
            {
                None => return Some(certs),
                Some(e) => format!("{} is not a usable CA certificate: {e}", path.display()),
            },
            Err(e) => format!("{} cannot be loaded: {e}", path.display()),
        };
        self.err(Some(v.span()), key, problem);
        None
    }

    pub(super) fn upstream_tls(&mut self, upstream: &str, t: &RawUpstreamTls) -> UpstreamTls {
        let key = |k: &str| format!("upstream.{upstream}.tls.{k}");
        let sni = t.sni.as_ref().and_then(|s| {
            match rustls::pki_types::ServerName::try_from(s.get_ref().as_str()) {
                Ok(_) => Some(s.get_ref().clone()),
                Err(_) => {
                    self.err(
                        Some(s.span()),
                        key("sni"),
                        format!("is not a DNS name or IP address, got {:?}", s.get_ref()),
                    );
                    None
                }
            }
        });
        let ca = t.ca.as_ref().and_then(|ca| self.ca_file(key("ca"), ca));
        UpstreamTls { sni, ca }
    }
}
