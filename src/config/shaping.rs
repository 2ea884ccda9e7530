//! A route's `rewrite` (the path sent to the upstream) and `redirect` (an answer
//! fulcrum gives itself), checked into [`Rewrite`] and [`Redirect`].

use toml::Spanned;

use super::raw::{RawRedirect, RawRewrite};
use super::validate::Validator;

/// The statuses a `redirect` may answer with.
pub(super) const REDIRECT_STATUSES: [u16; 5] = [301, 302, 303, 307, 308];
/// A `redirect` without `status`: temporary, so that a mistake is not cached for good
/// by browsers.
pub(super) const DEFAULT_REDIRECT_STATUS: u16 = 302;
/// The longest regex accepted, and the most memory its compiled form may take.
const MAX_REGEX_LEN: usize = 1024;
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// `route.rewrite`: how the path is changed before it goes to the upstream. The query
/// is kept as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    /// A path that starts with `prefix` has it replaced by `to`; others pass unchanged.
    Prefix { prefix: String, to: String },
    /// The first match of `regex` in the path replaced by `to` (`$1`, `${name}`
    /// expand to its groups); a path it does not match passes unchanged. Compiled
    /// once per configuration generation.
    Regex { regex: String, to: String },
}

/// A piece of a redirect target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    /// `{path}`: the request's path, without the query.
    Path,
    /// `{query}`: the query, without its `?` (empty when there is none).
    Query,
    /// `{uri}`: the path, then `?` and the query when there is one.
    Uri,
    /// `{host}`: the request's host name, without a port.
    Host,
}

/// `route.redirect`: fulcrum answers with `status` and a `Location` built from `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub to: Vec<Part>,
    pub status: u16,
}

/// Splits `text` into literal runs (made by `literal`) and `{name}` pieces, each
/// name looked up in `names`; the error says what is wrong.
pub(super) fn split_template<T: Clone>(
    text: &str,
    names: &[(&str, T)],
    literal: impl Fn(String) -> T,
) -> Result<Vec<T>, String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return Err("has a `}` without its `{`".into());
        }
        let Some(len) = rest[open..].find('}') else {
            return Err("has a `{` without its `}`".into());
        };
        if open > 0 {
            pieces.push(literal(rest[..open].to_string()));
        }
        let name = &rest[open + 1..open + len];
        match names.iter().find(|(n, _)| *n == name) {
            Some((_, piece)) => pieces.push(piece.clone()),
            None => {
                let known: Vec<String> = names.iter().map(|(n, _)| format!("{{{n}}}")).collect();
                return Err(format!(
                    "names `{{{name}}}`, which is not one of {}",
                    known.join(", ")
                ));
            }
        }
        rest = &rest[open + len + 1..];
    }
    if !rest.is_empty() {
        pieces.push(literal(rest.to_string()));
    }
    Ok(pieces)
}

/// Splits a redirect target into text and `{name}` parts.
pub fn template(text: &str) -> Result<Vec<Part>, String> {
    split_template(
        text,
        &[
            ("path", Part::Path),
            ("query", Part::Query),
            ("uri", Part::Uri),
            ("host", Part::Host),
        ],
        Part::Text,
    )
}

/// Characters a path may hold as written in the configuration (RFC 3986 `pchar`,
/// `/`, and `%` for escapes).
fn path_like(s: &str) -> bool {
    s.starts_with('/')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b))
}

/// Compiles a rewrite regex with the limits fulcrum uses at run time.
pub fn compile(regex: &str) -> Result<regex::Regex, String> {
    if regex.len() > MAX_REGEX_LEN {
        return Err(format!("is longer than {MAX_REGEX_LEN} characters"));
    }
    regex::RegexBuilder::new(regex)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("does not compile: {}", e.to_string().replace('\n', " ")))
}

impl Validator<'_> {
    pub(super) fn rewrite(&mut self, key: &str, r: &Spanned<RawRewrite>) -> Option<Rewrite> {
        let raw = r.get_ref();
        let to = raw.to.get_ref();
        let rewrite = match (&raw.prefix, &raw.regex) {
            (Some(prefix), None) => {
                if !path_like(prefix.get_ref()) {
                    self.err(
                        Some(prefix.span()),
                        format!("{key}.prefix"),
                        format!(
                            "must be a path starting with '/', got {:?}",
                            prefix.get_ref()
                        ),
                    );
                    return None;
                }
                Rewrite::Prefix {
                    prefix: prefix.get_ref().clone(),
                    to: to.clone(),
                }
            }
            (None, Some(regex)) => {
                if let Err(why) = compile(regex.get_ref()) {
                    self.err(Some(regex.span()), format!("{key}.regex"), why);
                    return None;
                }
                Rewrite::Regex {
                    regex: regex.get_ref().clone(),
                    to: to.clone(),
                }
            }
            _ => {
                self.err(
                    Some(r.span()),
                    key.to_string(),
                    "needs one of `prefix` or `regex` (and `to`)",
                );
                return None;
            }
        };
        // A regex's `to` may start with a group (`$1`); what it expands to is checked
        // at run time.
        let literal_start = matches!(rewrite, Rewrite::Prefix { .. }) || !to.starts_with('$');
        if (literal_start && !path_like(to)) || to.contains(['?', '#', ' ']) {
            self.err(
                Some(raw.to.span()),
                format!("{key}.to"),
                format!("must be a path starting with '/' (no query), got {to:?}"),
            );
            return None;
        }
        Some(rewrite)
    }

    pub(super) fn redirect(&mut self, key: &str, r: &Spanned<RawRedirect>) -> Option<Redirect> {
        let raw = r.get_ref();
        let to = match template(raw.to.get_ref()) {
            Ok(parts) if !parts.is_empty() => parts,
            Ok(_) => {
                self.err(
                    Some(raw.to.span()),
                    format!("{key}.to"),
                    "must not be empty",
                );
                return None;
            }
            Err(why) => {
                self.err(Some(raw.to.span()), format!("{key}.to"), why);
                return None;
            }
        };
        let bad_text = to.iter().any(|p| match p {
            Part::Text(t) => t.bytes().any(|b| b.is_ascii_control() || b == b' '),
            _ => false,
        });
        if bad_text {
            self.err(
                Some(raw.to.span()),
                format!("{key}.to"),
                "must not contain spaces or control characters",
            );
            return None;
        }
        let status = match &raw.status {
            None => DEFAULT_REDIRECT_STATUS,
            Some(s) => match u16::try_from(*s.get_ref()) {
                Ok(code) if REDIRECT_STATUSES.contains(&code) => code,
                _ => {
                    self.err(
                        Some(s.span()),
                        format!("{key}.status"),
                        format!(
                            "must be one of 301, 302, 303, 307, 308, got {}",
                            s.get_ref()
                        ),
                    );
                    return None;
                }
            },
        };
        Some(Redirect { to, status })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_split_into_text_and_names() {
        assert_eq!(
            template("https://example.com{path}?x=1&{query}").unwrap(),
            vec![
                Part::Text("https://example.com".into()),
                Part::Path,
                Part::Text("?x=1&".into()),
                Part::Query,
            ]
        );
        assert_eq!(
            template("https://{host}{uri}").unwrap(),
            vec![Part::Text("https://".into()), Part::Host, Part::Uri]
        );
        assert_eq!(
            template("/plain").unwrap(),
            vec![Part::Text("/plain".into())]
        );
        assert!(template("https://x{nope}").unwrap_err().contains("{nope}"));
        assert!(template("https://x{path")
            .unwrap_err()
            .contains("without its `}`"));
        assert!(template("https://x}")
            .unwrap_err()
            .contains("without its `{`"));
    }

    #[test]
    fn regexes_compile_within_limits() {
        assert!(compile("^/old/(.*)$").is_ok());
        assert!(compile("(").unwrap_err().starts_with("does not compile"));
        assert!(compile(&"a".repeat(MAX_REGEX_LEN + 1)).is_err());
        // A pattern whose compiled form is huge is refused, not built.
        assert!(compile("\\w{1000}\\w{1000}\\w{1000}").is_err());
    }
}
