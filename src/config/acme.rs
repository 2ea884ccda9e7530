//! `[acme]`: where fulcrum orders the certificates of `listener.tls.acme` names, and
//! how it proves it holds them.

use std::path::PathBuf;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use toml::Spanned;

use super::raw::RawAcme;
use super::validate::Validator;

pub const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);

/// How the CA checks that this server answers for a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// A token served at `http://NAME/.well-known/acme-challenge/TOKEN` (port 80).
    Http01,
    /// A certificate made for the CA, served to `acme-tls/1` handshakes (port 443).
    TlsAlpn01,
}

impl AcmeChallenge {
    pub fn name(self) -> &'static str {
        match self {
            AcmeChallenge::Http01 => "http-01",
            AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

/// External account binding: the CA's key identifier and its MAC key.
#[derive(Clone, PartialEq, Eq)]
pub struct Eab {
    pub kid: String,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for Eab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Eab")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acme {
    /// The CA's directory URL (`https://`).
    pub directory: String,
    pub email: Option<String>,
    /// The account key, certificates, keys and renewal state (mode 0700).
    pub storage: PathBuf,
    /// Roots trusted for the directory's own TLS besides the system's.
    pub ca: Option<Vec<CertificateDer<'static>>>,
    pub challenge: AcmeChallenge,
    /// A certificate is renewed this long before it expires.
    pub renew_before: Duration,
    pub eab: Option<Eab>,
}

/// Whether `name` is a DNS name a CA can issue for by HTTP-01 or TLS-ALPN-01: no
/// wildcard (those need DNS-01), no IP address, at least two labels.
pub fn acme_name_problem(name: &str) -> Option<&'static str> {
    if name.starts_with("*.") {
        return Some("wildcard names need the dns-01 challenge, which fulcrum does not answer");
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Some("is an IP address, not a DNS name");
    }
    if name.len() > 253
        || !name.contains('.')
        || name.split('.').any(|l| {
            l.is_empty()
                || l.len() > 63
                || l.starts_with('-')
                || l.ends_with('-')
                || !l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
    {
        return Some("is not a DNS name (letters, digits, '-', at least two labels)");
    }
    None
}

impl Validator<'_> {
    pub(super) fn acme(&mut self, a: &RawAcme) -> Acme {
        let directory = a.directory.get_ref().trim().to_string();
        let host = directory
            .strip_prefix("https://")
            .map(|r| r.split('/').next().unwrap_or(""));
        if host.is_none_or(str::is_empty) {
            self.err(
                Some(a.directory.span()),
                "acme.directory",
                format!("must be an https:// URL, got {directory:?}"),
            );
        }
        if let Some(e) = &a.email {
            let v = e.get_ref();
            if !v.contains('@') || v.contains(char::is_whitespace) || v.starts_with("mailto:") {
                self.err(
                    Some(e.span()),
                    "acme.email",
                    format!("must be an e-mail address, got {v:?}"),
                );
            }
        }
        let storage = self
            .file
            .parent()
            .unwrap_or(std::path::Path::new(""))
            .join(a.storage.get_ref());
        if let Some(problem) = storage_problem(&storage) {
            self.err(Some(a.storage.span()), "acme.storage", problem);
        }
        let ca =
            a.ca.as_ref()
                .and_then(|ca| self.ca_file("acme.ca".into(), ca));
        let challenge = self.one_of(
            &a.challenge,
            "acme.challenge",
            &[
                ("http-01", AcmeChallenge::Http01),
                ("tls-alpn-01", AcmeChallenge::TlsAlpn01),
            ],
            AcmeChallenge::Http01,
        );
        // Certificates live for weeks or months: longer than the file's other durations.
        let renew_before = match &a.renew_before {
            None => DEFAULT_RENEW_BEFORE,
            Some(v) => match humantime::parse_duration(v.get_ref().trim()) {
                Ok(d) if !d.is_zero() && d <= Duration::from_secs(365 * 86_400) => d,
                Ok(_) => {
                    self.err(
                        Some(v.span()),
                        "acme.renew_before",
                        format!(
                            "must be greater than zero and at most 365 days, got {:?}",
                            v.get_ref()
                        ),
                    );
                    DEFAULT_RENEW_BEFORE
                }
                Err(e) => {
                    self.err(
                        Some(v.span()),
                        "acme.renew_before",
                        format!(
                            "is not a duration ({e}); write it like \"30d\", got {:?}",
                            v.get_ref()
                        ),
                    );
                    DEFAULT_RENEW_BEFORE
                }
            },
        };
        let eab = a.eab.as_ref().and_then(|e| {
            let raw = e.get_ref();
            let key_file = Spanned::new(e.span(), raw.key_file.clone());
            let text = self.secret_file(&key_file, "acme.eab.key_file")?;
            use base64::Engine;
            let trimmed = text.trim_end_matches('=');
            let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(trimmed)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed));
            match key {
                Ok(key) if !key.is_empty() && !raw.kid.trim().is_empty() => Some(Eab {
                    kid: raw.kid.trim().to_string(),
                    key,
                }),
                Ok(_) => {
                    self.err(Some(e.span()), "acme.eab", "kid and key must not be empty");
                    None
                }
                Err(_) => {
                    self.err(
                        Some(e.span()),
                        "acme.eab.key_file",
                        "must hold the MAC key in base64url, as the CA gives it",
                    );
                    None
                }
            }
        });
        Acme {
            directory,
            email: a.email.as_ref().map(|e| e.get_ref().clone()),
            storage,
            ca,
            challenge,
            renew_before,
            eab,
        }
    }
}

/// Why fulcrum could not keep its ACME state in `dir`: not a directory, or neither it
/// nor (when missing) the directory it would be created in takes a new file (tried
/// with a probe file, removed at once).
fn storage_problem(dir: &std::path::Path) -> Option<String> {
    fn probe(d: &std::path::Path) -> std::io::Result<()> {
        let p = d.join(format!(".fulcrum-check.{}", std::process::id()));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)?;
        std::fs::remove_file(&p)
    }
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Some(format!("{} is not a directory", dir.display())),
        Ok(_) => probe(dir)
            .err()
            .map(|e| format!("{} is not writable: {e}", dir.display())),
        Err(_) => {
            let existing = dir
                .ancestors()
                .skip(1)
                .map(|p| {
                    if p.as_os_str().is_empty() {
                        std::path::Path::new(".")
                    } else {
                        p
                    }
                })
                .find(|p| p.exists())?;
            if !existing.is_dir() {
                return Some(format!(
                    "{} cannot be created: {} is not a directory",
                    dir.display(),
                    existing.display()
                ));
            }
            probe(existing).err().map(|e| {
                format!(
                    "{} does not exist and cannot be created: {} is not writable: {e}",
                    dir.display(),
                    existing.display()
                )
            })
        }
    }
}
