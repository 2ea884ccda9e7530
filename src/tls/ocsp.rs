//! OCSP stapling with responses fetched from each certificate's responder
//! (`ocsp = "auto"`): the request built from the leaf and its issuer (the next
//! certificate of the chain), POSTed to the URL of the leaf's Authority Information
//! Access, the response checked (successful, about this serial, good or revoked)
//! and stapled from then on; fetched again halfway to its `nextUpdate`. A responder
//! that does not answer leaves the last response stapled (or none) and is asked
//! again after a back-off.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls::sign::CertifiedKey;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::LiveCert;

/// One fetch, the answer read whole, takes at most this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The most an OCSP response may hold.
const MAX_RESPONSE: usize = 64 * 1024;
/// Without a `nextUpdate`, a response is fetched again after this.
const DEFAULT_REFRESH: Duration = Duration::from_secs(3600);

// DER: what an OCSP request needs written and a response needs read.

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// The first element of `input`: its tag, its content, and what follows it.
fn read(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, b| (a << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// `YYYYMMDDHHMMSS[.f]Z` as seconds since the Unix epoch.
fn generalized_time(t: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(t).ok()?;
    if s.len() < 15 || !s.ends_with('Z') {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let (hh, mm, ss) = (n(8..10)?, n(10..12)?, n(12..14)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from civil (proleptic Gregorian), as in Howard Hinnant's algorithm.
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// The OCSP responder URL of a certificate's leaf, when its issuer is in the chain
/// too (the request names the issuer's name and key).
pub fn responder(key: &CertifiedKey) -> Result<String, String> {
    let leaf = key.cert.first().ok_or("has no certificate")?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("does not parse: {e}"))?;
    let url = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityInfoAccess(aia) => {
                aia.accessdescs.iter().find_map(|d| {
                    let ocsp = d.access_method
                        == x509_parser::oid_registry::OID_PKIX_ACCESS_DESCRIPTOR_OCSP;
                    match &d.access_location {
                        x509_parser::extensions::GeneralName::URI(u) if ocsp => Some(u.to_string()),
                        _ => None,
                    }
                })
            }
            _ => None,
        })
        .ok_or("names no OCSP responder (Authority Information Access)")?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "names an OCSP responder that is not http(s): {url}"
        ));
    }
    if key.cert.len() < 2 {
        return Err("needs its issuer's certificate after it in the file".into());
    }
    Ok(url)
}

/// The DER OCSPRequest for the leaf of `key` (its issuer is the next certificate):
/// one CertID with SHA-1 hashes, as responders expect.
pub fn request(key: &CertifiedKey) -> Result<(Vec<u8>, Vec<u8>), String> {
    let (leaf, issuer) = match key.cert.as_slice() {
        [leaf, issuer, ..] => (leaf, issuer),
        _ => return Err("needs its issuer's certificate".into()),
    };
    let (_, leaf) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| e.to_string())?;
    let (_, issuer) =
        x509_parser::parse_x509_certificate(issuer.as_ref()).map_err(|e| e.to_string())?;
    let sha1 = |data: &[u8]| ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, data);
    let name_hash = sha1(issuer.tbs_certificate.subject.as_raw());
    let key_hash = sha1(&issuer.public_key().subject_public_key.data);
    let serial = leaf.raw_serial().to_vec();
    // AlgorithmIdentifier { sha1, NULL }
    let algorithm = tlv(
        0x30,
        &[
            &[0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a][..],
            &[0x05, 0x00],
        ]
        .concat(),
    );
    let cert_id = tlv(
        0x30,
        &[
            algorithm,
            tlv(0x04, name_hash.as_ref()),
            tlv(0x04, key_hash.as_ref()),
            tlv(0x02, &serial),
        ]
        .concat(),
    );
    let request = tlv(0x30, &cert_id);
    let request_list = tlv(0x30, &request);
    let tbs = tlv(0x30, &request_list);
    Ok((tlv(0x30, &tbs), serial))
}

/// What a response says about one certificate.
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    pub status: &'static str,
    pub this_update: i64,
    pub next_update: Option<i64>,
}

/// Reads an OCSPResponse: successful, and a SingleResponse for `serial`.
pub fn parse_response(der: &[u8], serial: &[u8]) -> Result<Verdict, String> {
    let bad = |what: &str| format!("not an OCSP response ({what})");
    let (tag, body, _) = read(der).ok_or_else(|| bad("outer"))?;
    if tag != 0x30 {
        return Err(bad("outer"));
    }
    let (tag, status, rest) = read(body).ok_or_else(|| bad("status"))?;
    if tag != 0x0a || status.len() != 1 {
        return Err(bad("status"));
    }
    if status[0] != 0 {
        let why = match status[0] {
            1 => "malformedRequest",
            2 => "internalError",
            3 => "tryLater",
            5 => "sigRequired",
            6 => "unauthorized",
            _ => "unknown status",
        };
        return Err(format!("the responder answered {why}"));
    }
    let (_, bytes, _) = read(rest)
        .filter(|(t, ..)| *t == 0xa0)
        .ok_or_else(|| bad("responseBytes"))?;
    let (_, bytes, _) = read(bytes)
        .filter(|(t, ..)| *t == 0x30)
        .ok_or_else(|| bad("responseBytes"))?;
    let (_, _oid, rest) = read(bytes)
        .filter(|(t, ..)| *t == 0x06)
        .ok_or_else(|| bad("type"))?;
    let (_, basic, _) = read(rest)
        .filter(|(t, ..)| *t == 0x04)
        .ok_or_else(|| bad("response"))?;
    let (_, basic, _) = read(basic)
        .filter(|(t, ..)| *t == 0x30)
        .ok_or_else(|| bad("basic"))?;
    let (_, mut tbs, _) = read(basic)
        .filter(|(t, ..)| *t == 0x30)
        .ok_or_else(|| bad("tbs"))?;
    // version, responderID, producedAt, then the responses.
    let responses = loop {
        let (tag, content, rest) = read(tbs).ok_or_else(|| bad("responses"))?;
        tbs = rest;
        if tag == 0x30 {
            break content;
        }
    };
    let mut list = responses;
    while !list.is_empty() {
        let (_, single, rest) = read(list).ok_or_else(|| bad("single"))?;
        list = rest;
        let (_, mut cert_id, rest) = read(single).ok_or_else(|| bad("certID"))?;
        let mut id_serial: &[u8] = &[];
        while !cert_id.is_empty() {
            let (tag, content, r) = read(cert_id).ok_or_else(|| bad("certID"))?;
            if tag == 0x02 {
                id_serial = content;
            }
            cert_id = r;
        }
        if id_serial != serial {
            continue;
        }
        let (status_tag, _, rest) = read(rest).ok_or_else(|| bad("certStatus"))?;
        let status = match status_tag {
            0x80 => "good",
            0xa1 => "revoked",
            _ => "unknown",
        };
        let (tag, this, rest) = read(rest).ok_or_else(|| bad("thisUpdate"))?;
        let this_update = (tag == 0x18)
            .then(|| generalized_time(this))
            .flatten()
            .ok_or_else(|| bad("thisUpdate"))?;
        let next_update = read(rest)
            .filter(|(t, ..)| *t == 0xa0)
            .and_then(|(_, inner, _)| read(inner))
            .filter(|(t, ..)| *t == 0x18)
            .and_then(|(_, t, _)| generalized_time(t));
        return Ok(Verdict {
            status,
            this_update,
            next_update,
        });
    }
    Err("the response says nothing about this certificate".into())
}

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

fn client() -> Result<Client, String> {
    let connector = super::outbound_connector(None, true, FETCH_TIMEOUT)?;
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
    )
}

/// POSTs `request` to `url`; the DER response.
async fn fetch(client: &Client, url: &str, request: &[u8]) -> Result<Vec<u8>, String> {
    let req = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/ocsp-request")
        .body(Full::new(Bytes::copy_from_slice(request)))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let rsp = client
            .request(req)
            .await
            .map_err(|e| format!("unreachable: {e}"))?;
        if !rsp.status().is_success() {
            return Err(format!("the responder answered {}", rsp.status()));
        }
        let body = http_body_util::Limited::new(rsp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| format!("reading the response: {e}"))?;
        Ok(body.to_bytes().to_vec())
    };
    tokio::time::timeout(FETCH_TIMEOUT, exchange)
        .await
        .map_err(|_| "unreachable: no answer in time".to_string())?
}

struct Slot {
    live: Arc<LiveCert>,
    /// The certificate without a response.
    base: Arc<CertifiedKey>,
    url: String,
    request: Vec<u8>,
    serial: Vec<u8>,
    state: Mutex<SlotState>,
}

struct SlotState {
    next: Instant,
    failures: u32,
}

/// The certificates with `ocsp = "auto"`, across generations, and the task that
/// keeps their responses fresh.
pub struct Stapler {
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    wake: Notify,
    /// `fulcrum_tls_ocsp_fetches_total{result}`.
    fetches: prometheus::IntCounterVec,
}

fn id(key: &CertifiedKey) -> u64 {
    key.cert
        .first()
        .map_or(0, |c| crate::hash::hash_bytes(c.as_ref()))
}

impl Stapler {
    pub fn new(fetches: prometheus::IntCounterVec) -> Arc<Stapler> {
        Arc::new(Stapler {
            slots: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            fetches,
        })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live certificate of `key`, stapled as soon as a response arrives (the one
    /// already fetched, when the same certificate was served before a reload).
    pub fn slot(&self, key: &Arc<CertifiedKey>) -> Result<Arc<LiveCert>, String> {
        let id = id(key);
        if let Some(s) = self.slots().get(&id) {
            return Ok(s.live.clone());
        }
        let url = responder(key)?;
        let (request, serial) = request(key)?;
        let slot = Arc::new(Slot {
            live: Arc::new(LiveCert::new(key.clone())),
            base: key.clone(),
            url,
            request,
            serial,
            state: Mutex::new(SlotState {
                next: Instant::now(),
                failures: 0,
            }),
        });
        let live = slot.live.clone();
        self.slots().entry(id).or_insert(slot);
        self.wake.notify_one();
        Ok(live)
    }

    /// Keeps the slots of the certificates still served with `ocsp = "auto"`.
    pub fn retain<'a>(&self, keys: impl Iterator<Item = &'a Arc<CertifiedKey>>) {
        let keep: std::collections::HashSet<u64> = keys.map(|k| id(k)).collect();
        self.slots().retain(|id, _| keep.contains(id));
    }

    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let client = match client() {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "OCSP: no HTTP client; nothing is stapled");
                return;
            }
        };
        loop {
            let now = Instant::now();
            let due: Vec<Arc<Slot>> = self
                .slots()
                .values()
                .filter(|s| s.state.lock().unwrap_or_else(|p| p.into_inner()).next <= now)
                .cloned()
                .collect();
            for slot in due {
                let wait = tokio::select! {
                    _ = stop.cancelled() => return,
                    w = self.refresh(&client, &slot) => w,
                };
                slot.state.lock().unwrap_or_else(|p| p.into_inner()).next = Instant::now() + wait;
            }
            let next = self
                .slots()
                .values()
                .map(|s| s.state.lock().unwrap_or_else(|p| p.into_inner()).next)
                .min()
                .unwrap_or(now + DEFAULT_REFRESH);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(next) => {}
            }
        }
    }

    /// Fetches and staples one response; how long until the next fetch.
    async fn refresh(&self, client: &Client, slot: &Slot) -> Duration {
        let result = fetch(client, &slot.url, &slot.request)
            .await
            .and_then(|der| Ok((parse_response(&der, &slot.serial)?, der)));
        let now = crate::acme::store::now_unix();
        match result {
            Ok((verdict, der)) if verdict.status != "unknown" => {
                self.fetches.with_label_values(&["ok"]).inc();
                if verdict.status == "revoked" {
                    warn!(responder = %slot.url, "OCSP: the certificate is REVOKED; clients that check will refuse it");
                }
                let mut stapled = (*slot.base).clone();
                stapled.ocsp = Some(der);
                slot.live.store(Arc::new(stapled));
                slot.state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .failures = 0;
                info!(responder = %slot.url, status = verdict.status, "OCSP: response stapled");
                let refresh = match verdict.next_update {
                    Some(next) if next > verdict.this_update => {
                        let half = verdict.this_update + (next - verdict.this_update) / 2;
                        Duration::from_secs(half.saturating_sub(now).max(0) as u64)
                    }
                    _ => DEFAULT_REFRESH,
                };
                refresh.clamp(Duration::from_secs(300), Duration::from_secs(86_400))
            }
            other => {
                self.fetches.with_label_values(&["failed"]).inc();
                let why = match other {
                    Ok(_) => "the responder does not know the certificate".to_string(),
                    Err(e) => e,
                };
                let failures = {
                    let mut s = slot.state.lock().unwrap_or_else(|p| p.into_inner());
                    s.failures = s.failures.saturating_add(1);
                    s.failures
                };
                let wait = Duration::from_secs(
                    60u64
                        .saturating_mul(1 << failures.saturating_sub(1).min(6))
                        .min(3600),
                );
                warn!(responder = %slot.url, error = %why, retry_in = ?wait, "OCSP: no fresh response; the last one (if any) stays stapled");
                wait
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_round_trip() {
        for len in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let content = vec![7u8; len];
            let encoded = tlv(0x04, &content);
            let (tag, got, rest) = read(&encoded).unwrap();
            assert_eq!((tag, got.len(), rest.len()), (0x04, len, 0));
        }
        assert!(
            read(&[0x04, 0x85, 1, 1, 1, 1, 1]).is_none(),
            "length of 5 bytes"
        );
        assert!(read(&[0x04, 0x05, 1]).is_none(), "short content");
        assert!(read(&[0x04]).is_none());
    }

    #[test]
    fn generalized_times() {
        assert_eq!(generalized_time(b"19700101000000Z"), Some(0));
        assert_eq!(generalized_time(b"20240229120000Z"), Some(1_709_208_000));
        assert_eq!(generalized_time(b"20240229120000.5Z"), Some(1_709_208_000));
        assert_eq!(generalized_time(b"2024022912000Z"), None);
        assert_eq!(generalized_time(b"20241329120000Z"), None);
    }

    #[test]
    fn responses_that_are_not_successful_or_not_ocsp_are_refused() {
        // OCSPResponse { responseStatus tryLater }
        let try_later = tlv(0x30, &tlv(0x0a, &[3]));
        assert_eq!(
            parse_response(&try_later, &[1]).unwrap_err(),
            "the responder answered tryLater"
        );
        for garbage in [
            &b""[..],
            b"\x30\x03\x0a\x01",
            b"hello",
            &[0x30, 0x82, 0xff, 0xff],
        ] {
            assert!(parse_response(garbage, &[1]).is_err());
        }
    }
}
