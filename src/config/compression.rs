//! `[compression]`: how routes with `compress = true` compress responses, checked
//! into [`Compression`].

use toml::Spanned;

use super::raw::RawCompression;
use super::validate::Validator;

/// Bodies of a known length under this are sent as they are.
pub(super) const DEFAULT_MIN_SIZE: u64 = 1024;

/// The media types compressed by default: `type/*` covers a whole type.
pub(super) const DEFAULT_TYPES: [&str; 12] = [
    "text/*",
    "application/json",
    "application/javascript",
    "application/x-javascript",
    "application/xml",
    "application/xhtml+xml",
    "application/rss+xml",
    "application/atom+xml",
    "application/ld+json",
    "application/manifest+json",
    "image/svg+xml",
    "application/wasm",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Zstd,
    Brotli,
    Gzip,
}

impl Algorithm {
    /// Its `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Algorithm::Zstd => "zstd",
            Algorithm::Brotli => "br",
            Algorithm::Gzip => "gzip",
        }
    }

    /// The default level, and the levels accepted.
    fn levels(self) -> (u32, std::ops::RangeInclusive<u32>) {
        match self {
            Algorithm::Zstd => (3, 1..=19),
            Algorithm::Brotli => (4, 0..=11),
            Algorithm::Gzip => (6, 1..=9),
        }
    }

    const ALL: [Algorithm; 3] = [Algorithm::Zstd, Algorithm::Brotli, Algorithm::Gzip];
}

/// `[compression]`, validated (its defaults when the section is absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compression {
    /// In the server's order of preference, each with its level.
    pub algorithms: Vec<(Algorithm, u32)>,
    pub min_size: u64,
    /// Lower case; `type/*` or a whole media type.
    pub types: Vec<String>,
}

impl Default for Compression {
    fn default() -> Self {
        Compression {
            algorithms: Algorithm::ALL.iter().map(|a| (*a, a.levels().0)).collect(),
            min_size: DEFAULT_MIN_SIZE,
            types: DEFAULT_TYPES.iter().map(|t| t.to_string()).collect(),
        }
    }
}

impl Validator<'_> {
    pub(super) fn compression(&mut self, c: &RawCompression) -> Compression {
        let defaults = Compression::default();
        let mut levels: Vec<(Algorithm, u32)> =
            Algorithm::ALL.iter().map(|a| (*a, a.levels().0)).collect();
        for (name, level) in c.level.iter().flat_map(|l| l.get_ref().iter()) {
            let key = format!("compression.level.{name}");
            let span = c.level.as_ref().map(Spanned::span);
            let Some(a) = Algorithm::ALL.iter().find(|a| a.token() == name) else {
                self.err(span, key, "names no algorithm: zstd, br or gzip");
                continue;
            };
            let range = a.levels().1;
            match u32::try_from(*level) {
                Ok(l) if range.contains(&l) => {
                    if let Some(entry) = levels.iter_mut().find(|(x, _)| x == a) {
                        entry.1 = l;
                    }
                }
                _ => self.err(
                    span,
                    key,
                    format!(
                        "must be between {} and {}, got {level}",
                        range.start(),
                        range.end()
                    ),
                ),
            }
        }
        let algorithms = match &c.algorithms {
            None => levels.clone(),
            Some(list) => {
                let mut out: Vec<(Algorithm, u32)> = Vec::new();
                for (i, name) in list.get_ref().iter().enumerate() {
                    let key = format!("compression.algorithms[{i}]");
                    match levels.iter().find(|(a, _)| a.token() == name.get_ref()) {
                        Some(entry) if !out.iter().any(|(a, _)| *a == entry.0) => out.push(*entry),
                        Some(_) => self.err(Some(name.span()), key, "is listed twice"),
                        None => self.err(
                            Some(name.span()),
                            key,
                            format!(
                                "must be \"zstd\", \"br\" or \"gzip\", got {:?}",
                                name.get_ref()
                            ),
                        ),
                    }
                }
                if out.is_empty() {
                    self.err(
                        Some(list.span()),
                        "compression.algorithms",
                        "must list at least one algorithm",
                    );
                }
                out
            }
        };
        let min_size = self.size(&c.min_size, "compression.min_size", defaults.min_size);
        let types = match &c.types {
            None => defaults.types,
            Some(list) => {
                let mut out = Vec::new();
                for (i, t) in list.get_ref().iter().enumerate() {
                    let lower = t.get_ref().trim().to_ascii_lowercase();
                    let valid = match lower.split_once('/') {
                        Some((ty, sub)) => {
                            let token = |s: &str| {
                                !s.is_empty()
                                    && s.bytes().all(|b| {
                                        b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b)
                                    })
                            };
                            token(ty) && (sub == "*" || token(sub))
                        }
                        None => false,
                    };
                    if valid {
                        out.push(lower);
                    } else {
                        self.err(
                            Some(t.span()),
                            format!("compression.types[{i}]"),
                            format!(
                                "must be a media type like \"application/json\" or \"text/*\", got {:?}",
                                t.get_ref()
                            ),
                        );
                    }
                }
                out
            }
        };
        Compression {
            algorithms,
            min_size,
            types,
        }
    }
}
