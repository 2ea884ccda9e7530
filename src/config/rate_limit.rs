//! `[rate_limit.NAME]` rules, checked into a `RateLimit`, and the references to
//! them from listeners and routes.

use std::collections::BTreeMap;

use toml::Spanned;

use super::kinds::Protocol;
use super::limit_rule::{LimitKey, OnStoreError, RateLimit};
use super::raw::RawRateLimit;
use super::units;
use super::validate::Validator;

/// Keys a rule holds when `max_keys` is not given.
pub(super) const DEFAULT_MAX_KEYS: u64 = 100_000;

/// `"100/s"`, `"6000/m"`, `"1000/h"`: a count and a period in nanoseconds.
pub fn parse_rate(s: &str) -> Result<(u64, u64), String> {
    let (count, unit) = s
        .trim()
        .split_once('/')
        .ok_or_else(|| format!("must be like \"100/s\", \"6000/m\" or \"1000/h\", got {s:?}"))?;
    let count: u64 = count
        .trim()
        .parse()
        .ok()
        .filter(|n| *n > 0 && *n <= 1_000_000_000)
        .ok_or_else(|| format!("needs a count between 1 and 1000000000, got {s:?}"))?;
    let period = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("the period must be s, m or h, got {s:?}")),
    };
    Ok((count, period * 1_000_000_000))
}

impl Validator<'_> {
    pub(super) fn rate_limits(
        &mut self,
        raw: &Option<Spanned<BTreeMap<String, Spanned<RawRateLimit>>>>,
        redis: bool,
    ) -> Vec<RateLimit> {
        let mut out = Vec::new();
        for (name, r) in raw.iter().flat_map(|m| m.get_ref().iter()) {
            let key = format!("rate_limit.{name}");
            let k = |f: &str| format!("{key}.{f}");
            let span = Some(r.span());
            let r = r.get_ref();
            if !units::is_valid_name(name) {
                self.err(
                    span.clone(),
                    &key,
                    format!("the name must match [a-z0-9_-]+, got {name:?}"),
                );
                continue;
            }
            let limit_key = match r.key.as_ref().map(|k| (k.get_ref().as_str(), k.span())) {
                None | Some(("client_ip", _)) => LimitKey::ClientIp,
                Some(("route", _)) => LimitKey::Route,
                Some((text, span)) => {
                    let header = text.strip_prefix("header:").map(|h| {
                        http::HeaderName::from_bytes(h.trim().to_ascii_lowercase().as_bytes())
                            .map(LimitKey::Header)
                    });
                    let cookie = text
                        .strip_prefix("cookie:")
                        .map(str::trim)
                        .filter(|c| {
                            !c.is_empty()
                                && c.bytes().all(|b| {
                                    b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b)
                                })
                        })
                        .map(|c| LimitKey::Cookie(c.to_string()));
                    match (header, cookie) {
                        (Some(Ok(h)), _) => h,
                        (_, Some(c)) => c,
                        _ => {
                            self.err(
                                Some(span),
                                k("key"),
                                format!("must be \"client_ip\", \"header:NAME\", \"cookie:NAME\" or \"route\", got {text:?}"),
                            );
                            continue;
                        }
                    }
                }
            };
            let (count, period_ns) = match parse_rate(r.rate.get_ref()) {
                Ok(x) => x,
                Err(why) => {
                    self.err(Some(r.rate.span()), k("rate"), why);
                    continue;
                }
            };
            // One second's worth by default, at least one.
            let per_second = (count * 1_000_000_000 / period_ns).max(1);
            let burst = self.int(&r.burst, &k("burst"), 1, 1_000_000_000, per_second as i64) as u64;
            let max_keys = self.int(
                &r.max_keys,
                &k("max_keys"),
                1,
                100_000_000,
                DEFAULT_MAX_KEYS as i64,
            ) as usize;
            let mut shared = false;
            if let Some(store) = &r.store {
                match store.get_ref().as_str() {
                    "local" => {}
                    "redis" if redis => shared = true,
                    "redis" => self.err(
                        Some(store.span()),
                        k("store"),
                        "\"redis\" needs a [redis] section with its url",
                    ),
                    other => self.err(
                        Some(store.span()),
                        k("store"),
                        format!("must be \"local\" or \"redis\", got {other:?}"),
                    ),
                }
            }
            let on_store_error = self.one_of(
                &r.on_store_error,
                k("on_store_error"),
                &[
                    ("local", OnStoreError::Local),
                    ("allow", OnStoreError::Allow),
                    ("deny", OnStoreError::Deny),
                ],
                OnStoreError::Local,
            );
            out.push(RateLimit {
                name: name.clone(),
                key: limit_key,
                count,
                period_ns,
                burst,
                headers: r.headers.as_ref().is_some_and(|h| *h.get_ref()),
                max_keys,
                shared,
                on_store_error,
            });
        }
        out
    }

    /// A listener's or route's `rate_limit`: the name of a rule this file defines,
    /// one a tcp listener can key by.
    pub(super) fn rate_limit_ref(
        &mut self,
        key: &str,
        v: &Option<Spanned<String>>,
        protocol: Protocol,
    ) -> Option<String> {
        let v = v.as_ref()?;
        let name = v.get_ref();
        let Some(rule) = self.rules.iter().find(|r| r.name == *name) else {
            self.err(
                Some(v.span()),
                key,
                format!("names rate_limit {name:?}, which is not defined"),
            );
            return None;
        };
        if protocol == Protocol::Tcp && rule.key.needs_http() {
            self.err(
                Some(v.span()),
                key,
                format!("rate_limit {name:?} keys by a header or cookie, which a tcp listener does not have: use \"client_ip\" or \"route\""),
            );
            return None;
        }
        Some(name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_as_a_count_per_period() {
        assert_eq!(parse_rate("100/s").unwrap(), (100, 1_000_000_000));
        assert_eq!(parse_rate(" 6000 / m ").unwrap(), (6000, 60_000_000_000));
        assert_eq!(parse_rate("1000/h").unwrap(), (1000, 3_600_000_000_000));
        for bad in ["100", "0/s", "-1/s", "10/d", "x/s", "99999999999/s", "/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
