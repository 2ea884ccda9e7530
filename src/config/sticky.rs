//! How requests stick to a backend: `hash_key` (what `consistent_hash` hashes) and
//! `[upstream.NAME.sticky]` (the cookie that names a backend).

use std::time::Duration;

use toml::Spanned;

use super::defaults::DEFAULT_STICKY_COOKIE;
use super::kinds::Strategy;
use super::raw::RawSticky;
use super::validate::Validator;

/// What `consistent_hash` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    SourceIp,
    Path,
    /// Lower case.
    Header(String),
    Cookie(String),
}

/// `[upstream.NAME.sticky]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sticky {
    pub cookie: String,
    /// `Secure`; `None`: on TLS listeners only.
    pub secure: Option<bool>,
    /// `SameSite`: `"Strict"`, `"Lax"` or `"None"`.
    pub same_site: &'static str,
    /// `Max-Age`; `None`: a session cookie.
    pub max_age: Option<Duration>,
}

impl Validator<'_> {
    /// `upstream.NAME.hash_key`, which only `consistent_hash` reads.
    pub(super) fn hash_key(
        &mut self,
        name: &str,
        v: &Option<Spanned<String>>,
        strategy: Strategy,
    ) -> HashKey {
        let key = |k: &str| format!("upstream.{name}.{k}");
        match v {
            None => HashKey::SourceIp,
            Some(h) => {
                if strategy != Strategy::ConsistentHash {
                    self.err(
                        Some(h.span()),
                        key("hash_key"),
                        "only applies to strategy = \"consistent_hash\"",
                    );
                }
                let text = h.get_ref().as_str();
                let named = |prefix: &str| {
                    text.strip_prefix(prefix)
                        .filter(|n| {
                            !n.is_empty() && http::HeaderName::from_bytes(n.as_bytes()).is_ok()
                        })
                        .map(str::to_ascii_lowercase)
                };
                match text {
                    "source_ip" => HashKey::SourceIp,
                    "path" => HashKey::Path,
                    _ => {
                        if let Some(n) = named("header:") {
                            HashKey::Header(n)
                        } else if let Some(n) =
                            text.strip_prefix("cookie:").filter(|n| !n.is_empty())
                        {
                            HashKey::Cookie(n.to_string())
                        } else {
                            self.err(
                            Some(h.span()),
                            key("hash_key"),
                            format!("must be \"source_ip\", \"path\", \"header:NAME\" or \"cookie:NAME\", got {text:?}"),
                        );
                            HashKey::SourceIp
                        }
                    }
                }
            }
        }
    }

    /// `[upstream.NAME.sticky]`.
    pub(super) fn sticky(&mut self, name: &str, st: &Spanned<RawSticky>) -> Sticky {
        let key = |k: &str| format!("upstream.{name}.{k}");
        let cookie = match &st.get_ref().cookie {
            None => DEFAULT_STICKY_COOKIE.to_string(),
            Some(c) => {
                let valid = !c.get_ref().is_empty()
                    && c.get_ref()
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                if !valid {
                    self.err(
                        Some(c.span()),
                        key("sticky.cookie"),
                        format!("is not a valid cookie name, got {:?}", c.get_ref()),
                    );
                }
                c.get_ref().clone()
            }
        };
        let st = st.get_ref();
        let same_site = match st
            .same_site
            .as_ref()
            .map(|v| (v.get_ref().as_str(), v.span()))
        {
            None => "Lax",
            Some((v, span)) => match v.to_ascii_lowercase().as_str() {
                "strict" => "Strict",
                "lax" => "Lax",
                "none" => "None",
                _ => {
                    self.err(
                        Some(span),
                        key("sticky.same_site"),
                        format!("must be \"Strict\", \"Lax\" or \"None\", got {v:?}"),
                    );
                    "Lax"
                }
            },
        };
        let secure = st.secure.as_ref().map(|s| *s.get_ref());
        if let (Some(false), "None", Some(s)) = (secure, same_site, &st.secure) {
            self.err(
                Some(s.span()),
                key("sticky.secure"),
                "must not be false with same_site = \"None\": browsers drop such cookies",
            );
        }
        let max_age = st
            .max_age
            .as_ref()
            .map(|_| self.duration(&st.max_age, &key("sticky.max_age"), Duration::ZERO));
        Sticky {
            cookie,
            secure,
            same_site,
            max_age,
        }
    }
}
