//! The answers to a CA's checks while an order runs: HTTP-01 tokens and TLS-ALPN-01
//! certificates, kept in memory and written to storage too, so that an instance
//! sharing the storage answers for the one that orders (the CA may reach either).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rustls::sign::CertifiedKey;

use super::store::{token_ok, Store};

#[derive(Default)]
pub struct Challenges {
    http: RwLock<HashMap<String, String>>,
    alpn: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    /// Where other instances put theirs; `None` without `[acme]`.
    store: RwLock<Option<Store>>,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl Challenges {
    pub fn set_store(&self, store: Option<Store>) {
        *write(&self.store) = store;
    }

    /// The key authorization for an HTTP-01 token, if an order here or on an
    /// instance sharing the storage is waiting for it.
    pub fn http(&self, token: &str) -> Option<String> {
        if !token_ok(token) {
            return None;
        }
        if let Some(answer) = read(&self.http).get(token) {
            return Some(answer.clone());
        }
        read(&self.store).as_ref()?.challenge("http", token)
    }

    /// The TLS-ALPN-01 certificate for `name`, made from the key authorization an
    /// instance sharing the storage wrote, when this one has none in memory.
    pub fn alpn(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        if let Some(cert) = read(&self.alpn).get(name) {
            return Some(cert.clone());
        }
        if super::super::config::acme_name_problem(name).is_some() {
            return None;
        }
        let key_authorization = read(&self.store).as_ref()?.challenge("alpn", name)?;
        alpn_certificate(name, key_authorization.as_bytes()).ok()
    }

    pub fn put_http(&self, token: &str, answer: &str) -> std::io::Result<()> {
        write(&self.http).insert(token.to_string(), answer.to_string());
        match read(&self.store).as_ref() {
            Some(s) => s.put_challenge("http", token, answer),
            None => Ok(()),
        }
    }

    pub fn put_alpn(&self, name: &str, key_authorization: &str) -> Result<(), String> {
        let cert = alpn_certificate(name, key_authorization.as_bytes())?;
        write(&self.alpn).insert(name.to_string(), cert);
        match read(&self.store).as_ref() {
            Some(s) => s
                .put_challenge("alpn", name, key_authorization)
                .map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    pub fn remove_http(&self, token: &str) {
        write(&self.http).remove(token);
        if let Some(s) = read(&self.store).as_ref() {
            s.remove_challenge("http", token);
        }
    }

    pub fn remove_alpn(&self, name: &str) {
        write(&self.alpn).remove(name);
        if let Some(s) = read(&self.store).as_ref() {
            s.remove_challenge("alpn", name);
        }
    }
}

/// The self-signed certificate of RFC 8737: the name as its only SAN and the SHA-256
/// of the key authorization in a critical acmeIdentifier extension.
pub fn alpn_certificate(name: &str, key_authorization: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key_authorization);
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    certified(cert, &key)
}

/// A self-signed certificate for `names`, served until the CA's arrives.
pub(super) fn fallback_certificate(names: &[String]) -> Result<Arc<CertifiedKey>, String> {
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(|e| e.to_string())?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    params.distinguished_name.push(
        rcgen::DnType::OrganizationName,
        "fulcrum fallback (certificate not issued yet)",
    );
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    certified(cert, &key)
}

fn certified(cert: rcgen::Certificate, key: &rcgen::KeyPair) -> Result<Arc<CertifiedKey>, String> {
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = crate::tls::signing_key(&der).map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}
