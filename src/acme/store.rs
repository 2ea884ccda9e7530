//! The `[acme] storage` directory: the account, each certificate with its key, the
//! challenge answers other instances may be asked for, and the ordering lock.
//!
//! ```text
//! storage/                      0700
//!   account.json                the account key and URL, per directory
//!   certificates/NAME-HASH/     one per set of names
//!     cert.pem  key.pem         written whole (write, then rename)
//!   challenges/                 http-TOKEN, alpn-NAME: answers while an order runs
//!   lock                        "HOLDER EXPIRES_MS": who orders now
//! ```
//!
//! Every file is written to a temporary name and renamed into place, so a reader
//! (this process after a restart, another instance on shared storage) sees the old
//! file or the new one, never half of one.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// How long a lock holds without being renewed: longer than an order may take.
pub const LEASE: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// A certificate read back from storage, with when it expires.
pub struct Stored {
    pub key: Arc<CertifiedKey>,
    pub not_after: i64,
}

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// The directory name of a set of names: the first name, then a hash of all of them
/// (sorted), so that different sets never share a directory.
pub fn certificate_id(names: &[String]) -> String {
    let mut sorted = names.to_vec();
    sorted.sort();
    let hash = crate::hash::hash_bytes(sorted.join(",").as_bytes());
    let first = names.first().map_or("", String::as_str);
    format!("{first}-{:08x}", hash as u32)
}

/// Whether a challenge token is one a CA could have issued (base64url): nothing else
/// is ever looked up on disk.
pub fn token_ok(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Store {
    pub fn new(dir: &Path) -> Store {
        Store {
            dir: dir.to_path_buf(),
        }
    }

    /// Creates the directory (mode 0700) and its subdirectories.
    pub fn create(&self) -> std::io::Result<()> {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true).mode(0o700);
        b.create(&self.dir)?;
        b.create(self.dir.join("certificates"))?;
        b.create(self.dir.join("challenges"))
    }

    /// Writes `data` to `path` whole: a temporary file in the same directory, synced,
    /// then renamed over it.
    fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
        let tmp = path.with_extension(format!("tmp.{}.{}", std::process::id(), fastrand::u32(..)));
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    pub fn read_account(&self) -> Option<Vec<u8>> {
        std::fs::read(self.dir.join("account.json")).ok()
    }

    pub fn write_account(&self, json: &[u8]) -> std::io::Result<()> {
        Self::write_atomic(&self.dir.join("account.json"), json)
    }

    fn certificate_dir(&self, names: &[String]) -> PathBuf {
        self.dir.join("certificates").join(certificate_id(names))
    }

    /// The stored certificate for `names`, if there is one that parses, matches its
    /// key and is valid for every name.
    pub fn load(&self, names: &[String]) -> Option<Stored> {
        let dir = self.certificate_dir(names);
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(dir.join("cert.pem"))
                .ok()?
                .collect::<Result<_, _>>()
                .ok()?;
        let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).ok()?;
        let stored = certified(chain, &key)?;
        covers(&stored.key, names).then_some(stored)
    }

    /// Stores a certificate chain and its key (PEM); the key first, so that a
    /// certificate on disk always has its key beside it.
    pub fn save(&self, names: &[String], chain_pem: &str, key_pem: &str) -> std::io::Result<()> {
        let dir = self.certificate_dir(names);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        // A reader between the two renames sees the new key with the old certificate:
        // `load` refuses that pair (keys do not match) and tries again later.
        Self::write_atomic(&dir.join("key.pem"), key_pem.as_bytes())?;
        Self::write_atomic(&dir.join("cert.pem"), chain_pem.as_bytes())
    }

    fn challenge_path(&self, kind: &str, id: &str) -> PathBuf {
        self.dir.join("challenges").join(format!("{kind}-{id}"))
    }

    pub fn put_challenge(&self, kind: &str, id: &str, answer: &str) -> std::io::Result<()> {
        Self::write_atomic(&self.challenge_path(kind, id), answer.as_bytes())
    }

    pub fn challenge(&self, kind: &str, id: &str) -> Option<String> {
        std::fs::read_to_string(self.challenge_path(kind, id)).ok()
    }

    pub fn remove_challenge(&self, kind: &str, id: &str) {
        let _ = std::fs::remove_file(self.challenge_path(kind, id));
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }

    /// Takes the ordering lock for `holder`, or says who holds it. A lease that ran out
    /// (its holder died or hung) is taken over.
    pub fn lock(&self, holder: &str) -> std::io::Result<Result<Lock, String>> {
        let path = self.lock_path();
        let content = format!("{holder} {}\n", now_ms() + LEASE.as_millis());
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(content.as_bytes())?;
                    f.sync_all()?;
                    return Ok(Ok(Lock {
                        path,
                        holder: holder.to_string(),
                    }));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            let seen = std::fs::read_to_string(&path).unwrap_or_default();
            let (other, expires) = parse_lock(&seen);
            if expires > now_ms() {
                return Ok(Err(other.to_string()));
            }
            // Expired: move it aside (one contender's rename wins), check that what
            // moved is the lease that expired, and try to create a fresh one.
            let aside = path.with_extension(format!("stale.{}", fastrand::u64(..)));
            if std::fs::rename(&path, &aside).is_err() {
                continue;
            }
            let moved = std::fs::read_to_string(&aside).unwrap_or_default();
            if moved != seen {
                // Someone else's fresh lease: put it back unless yet another exists.
                let _ = std::fs::hard_link(&aside, &path);
                let _ = std::fs::remove_file(&aside);
                return Ok(Err(parse_lock(&moved).0.to_string()));
            }
            let _ = std::fs::remove_file(&aside);
        }
        Ok(Err("another instance".into()))
    }
}

fn parse_lock(text: &str) -> (&str, u128) {
    let mut parts = text.split_whitespace();
    let holder = parts.next().unwrap_or("?");
    let expires = parts.next().and_then(|e| e.parse().ok()).unwrap_or(0);
    (holder, expires)
}

/// The ordering lock, released on drop when it still names its holder.
#[derive(Debug)]
pub struct Lock {
    path: PathBuf,
    holder: String,
}

impl Lock {
    /// Whether the lock file still names this holder (no one took it over).
    pub fn held(&self) -> bool {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        parse_lock(&text).0 == self.holder
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if self.held() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A chain and key made into what rustls serves, if they belong together.
pub fn certified(chain: Vec<CertificateDer<'static>>, key: &PrivateKeyDer<'_>) -> Option<Stored> {
    if chain.is_empty() {
        return None;
    }
    let signing = crate::tls::signing_key(key).ok()?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().ok()?;
    let (_, not_after) = crate::tls::certificate_expiry(&ck)?;
    Some(Stored {
        key: Arc::new(ck),
        not_after,
    })
}

/// A chain and key in PEM, as an order returns them.
pub fn certified_pem(chain_pem: &str, key_pem: &str) -> Option<Stored> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .ok()?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).ok()?;
    certified(chain, &key)
}

/// Whether the leaf is valid for every one of `names`.
pub fn covers(key: &CertifiedKey, names: &[String]) -> bool {
    let Some(leaf) = key.cert.first() else {
        return false;
    };
    let Ok(ee) = webpki::EndEntityCert::try_from(leaf) else {
        return false;
    };
    names.iter().all(|n| {
        rustls::pki_types::ServerName::try_from(n.as_str())
            .is_ok_and(|sn| ee.verify_is_valid_for_subject_name(&sn).is_ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fulcrum-acme-{tag}-{}", fastrand::u64(..)));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn storage_is_private_and_certificates_round_trip() {
        let d = dir("store");
        let store = Store::new(&d);
        store.create().unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let names = vec!["a.example.test".to_string(), "b.example.test".to_string()];
        assert!(store.load(&names).is_none());
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(names.clone())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        store
            .save(&names, &cert.pem(), &key.serialize_pem())
            .unwrap();
        let loaded = store.load(&names).expect("stored certificate loads");
        assert_eq!(loaded.key.cert[0].as_ref(), cert.der().as_ref());
        // Another set of names is another certificate.
        assert!(store.load(&names[..1]).is_none());
        // A key that does not match is refused.
        let other = rcgen::KeyPair::generate().unwrap();
        let cdir = d.join("certificates").join(certificate_id(&names));
        std::fs::write(cdir.join("key.pem"), other.serialize_pem()).unwrap();
        assert!(store.load(&names).is_none());
        let key_mode = std::fs::metadata(cdir.join("cert.pem"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(key_mode, 0o600);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn one_lock_holder_at_a_time_and_expired_leases_are_taken_over() {
        let d = dir("lock");
        let store = Store::new(&d);
        store.create().unwrap();
        let a = store.lock("a").unwrap().expect("free lock is taken");
        assert!(a.held());
        assert_eq!(store.lock("b").unwrap().unwrap_err(), "a");
        drop(a);
        let b = store.lock("b").unwrap().expect("released lock is taken");
        // A lease that ran out is taken over; the old holder sees it lost it.
        std::fs::write(d.join("lock"), "b 1\n").unwrap();
        let c = store
            .lock("c")
            .unwrap()
            .expect("expired lease is taken over");
        assert!(!b.held());
        drop(b);
        assert!(c.held(), "the loser's drop leaves the new holder's lock");
        drop(c);
        assert!(!d.join("lock").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn tokens_are_base64url_only() {
        assert!(token_ok("abc-DEF_123"));
        assert!(!token_ok("../account.json"));
        assert!(!token_ok(""));
        assert!(!token_ok("a/b"));
    }
}
