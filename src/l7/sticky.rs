//! Sticky sessions: a cookie whose value names a backend opaquely. The value is a hash
//! of the upstream's and the backend's names, so every instance running the same
//! configuration agrees on it, and it never reveals an address. A value that names no
//! eligible backend (forged, stale, drained, down) is ignored and replaced.

use http::{header, HeaderMap, HeaderValue};

use crate::hash::hash_bytes;
use crate::upstream::Upstream;

#[derive(Debug)]
pub struct StickyCookie {
    pub name: String,
    /// The cookie value of each backend, by index.
    ids: Vec<String>,
    /// `Set-Cookie` of each backend, by index, ready to send: for plain and for TLS
    /// listeners (the same unless `sticky.secure` is set).
    set: Vec<HeaderValue>,
    set_secure: Vec<HeaderValue>,
}

/// The value of cookie `name` among the request's `Cookie` headers.
pub(super) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
}

impl StickyCookie {
    pub fn new(cfg: &crate::config::Sticky, upstream: &Upstream) -> Self {
        let name = cfg.cookie.as_str();
        let ids: Vec<String> = upstream
            .backends()
            .iter()
            .map(|b| {
                let mut key = upstream.name.clone().into_bytes();
                key.push(0);
                key.extend_from_slice(b.name.as_bytes());
                format!("{:016x}", hash_bytes(&key))
            })
            .collect();
        let max_age = cfg
            .max_age
            .map(|d| format!("; Max-Age={}", d.as_secs()))
            .unwrap_or_default();
        let make = |tls: bool| -> Vec<HeaderValue> {
            let secure = if cfg.secure.unwrap_or(tls) {
                "; Secure"
            } else {
                ""
            };
            ids.iter()
                .map(|id| {
                    HeaderValue::try_from(format!(
                        "{name}={id}; Path=/; HttpOnly; SameSite={}{max_age}{secure}",
                        cfg.same_site
                    ))
                    .unwrap_or_else(|_| HeaderValue::from_static(""))
                })
                .collect()
        };
        let set = make(false);
        let set_secure = make(true);
        StickyCookie {
            name: name.to_string(),
            ids,
            set,
            set_secure,
        }
    }

    /// The backend the request's cookie names, if any.
    pub fn requested(&self, headers: &HeaderMap) -> Option<usize> {
        let value = cookie(headers, &self.name)?;
        self.ids.iter().position(|id| id == value)
    }

    /// `secure`: the client came over TLS.
    pub fn set_cookie(&self, i: usize, secure: bool) -> Option<&HeaderValue> {
        let list = if secure { &self.set_secure } else { &self.set };
        list.get(i).filter(|v| !v.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_several() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; sticky=abc"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, "sticky"), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "stick"), None);
    }
}
