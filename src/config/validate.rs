//! The validator and its shared helpers: errors with their position, durations, sizes, integers, secret files.

use super::error::ConfigError;
use super::limit_rule::RateLimit;
use super::raw::RawSize;
use super::units::parse_duration;
use super::units::parse_size;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

pub(super) struct Validator<'a> {
    pub(super) file: &'a Path,
    pub(super) src: &'a str,
    pub(super) errors: Vec<ConfigError>,
    /// `[rate_limit.*]`, read before the listeners that name them.
    pub(super) rules: Vec<RateLimit>,
}

/// serde_path_to_error shows the private field that `Spanned` uses; users never wrote it.
pub(super) fn clean_path(path: &str) -> String {
    path.replace(".$__serde_spanned_private_value", "")
        .replace("$__serde_spanned_private_value.", "")
        .replace("$__serde_spanned_private_value", "")
}

impl Validator<'_> {
    pub(super) fn err(
        &mut self,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        msg: impl Into<String>,
    ) {
        self.errors
            .push(ConfigError::new(self.file, self.src, span, key, msg));
    }

    /// A key whose value is one of `choices` (the first when the key is absent); any
    /// other value is an error that names them all, and gives `on_error`.
    pub(super) fn one_of<T: Copy>(
        &mut self,
        v: &Option<Spanned<String>>,
        key: impl Into<String>,
        choices: &[(&str, T)],
        on_error: T,
    ) -> T {
        let Some(&(_, first)) = choices.first() else {
            return on_error;
        };
        let Some(v) = v else { return first };
        if let Some(&(_, t)) = choices.iter().find(|(name, _)| *name == v.get_ref()) {
            return t;
        }
        let names: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
        let listed = match names.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        self.err(
            Some(v.span()),
            key,
            format!("must be {listed}, got {:?}", v.get_ref()),
        );
        on_error
    }

    /// A duration where zero means "none" (no wait, no timer).
    pub(super) fn duration_or_zero(
        &mut self,
        v: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let Some(v) = v else { return default };
        parse_duration(v.get_ref()).unwrap_or_else(|e| {
            self.err(Some(v.span()), key, e);
            default
        })
    }

    pub(super) fn duration(
        &mut self,
        v: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let d = self.duration_or_zero(v, key, default);
        match v {
            Some(v) if d.is_zero() => {
                self.err(Some(v.span()), key, "must be greater than zero");
                default
            }
            _ => d,
        }
    }

    pub(super) fn size(&mut self, v: &Option<Spanned<RawSize>>, key: &str, default: u64) -> u64 {
        let Some(v) = v else { return default };
        let parsed = match v.get_ref() {
            RawSize::Bytes(n) if *n >= 0 => Ok(*n as u64),
            RawSize::Bytes(n) => Err(format!("must not be negative, got {n}")),
            RawSize::Text(s) => parse_size(s),
        };
        match parsed {
            Ok(n) => n,
            Err(e) => {
                self.err(Some(v.span()), key, e);
                default
            }
        }
    }

    pub(super) fn int(
        &mut self,
        v: &Option<Spanned<i64>>,
        key: &str,
        min: i64,
        max: i64,
        default: i64,
    ) -> i64 {
        let Some(v) = v else { return default };
        let n = *v.get_ref();
        if n < min || n > max {
            self.err(
                Some(v.span()),
                key,
                format!("must be between {min} and {max}, got {n}"),
            );
            return default;
        }
        n
    }

    /// A file's contents, whitespace trimmed (a token, a password), relative to the
    /// config file; an error when it cannot be read or is empty.
    pub(super) fn secret_file(&mut self, t: &Spanned<String>, key: &str) -> Option<String> {
        let path = self
            .file
            .parent()
            .unwrap_or(Path::new(""))
            .join(t.get_ref());
        match std::fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => Some(text.trim().to_string()),
            Ok(_) => {
                self.err(Some(t.span()), key, format!("{} is empty", path.display()));
                None
            }
            Err(e) => {
                self.err(
                    Some(t.span()),
                    key,
                    format!("{} cannot be read: {e}", path.display()),
                );
                None
            }
        }
    }
}
