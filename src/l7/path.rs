//! The request path as routes see it: one spelling for each resource, so that
//! `/%61pi/x`, `/web/../api/x` and `//api/x` are the `/api/x` a route names, and no
//! spelling reaches a route the operator did not mean.
//!
//! - Percent-encoded unreserved characters (RFC 3986 2.3: letters, digits, `-._~`) are
//!   decoded; other escapes are kept, with their hex digits in upper case (6.2.2.1).
//! - Dot segments are removed (5.2.4), after that decoding, so `%2e%2e` counts.
//! - Repeated slashes are merged, when the listener says so.
//! - Refused (400): an escape that is not `%` and two hex digits, an encoded NUL,
//!   escapes that do not decode to UTF-8 (overlong forms such as `%C0%AF` among them),
//!   and, unless the listener allows them, `%2F`, `%5C` and `\`: a backend may take
//!   them for separators that the route match did not see.
//!
//! Pure functions over strings; nothing is allocated for a path that is already normal.

use std::borrow::Cow;

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPath {
    /// `%` not followed by two hex digits.
    Escape,
    /// `%00`.
    Nul,
    /// Escapes whose bytes are not UTF-8.
    Utf8,
    /// `%2F`, `%5C` or `\` where they are not allowed.
    EncodedSlash,
}

impl BadPath {
    pub fn reason(self) -> &'static str {
        match self {
            BadPath::Escape => "a percent-encoding in the path is invalid",
            BadPath::Nul => "the path holds an encoded NUL",
            BadPath::Utf8 => "the path's percent-encodings are not UTF-8",
            BadPath::EncodedSlash => "the path holds an encoded slash or a backslash",
        }
    }
}

/// How a listener normalises paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub merge_slashes: bool,
    pub allow_encoded_slashes: bool,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Whether the path may need work: an escape, a backslash, a dot segment, or `//`.
fn needs_work(path: &str, rules: Rules) -> bool {
    let b = path.as_bytes();
    if b.iter().any(|&c| c == b'%' || c == b'\\') {
        return true;
    }
    if rules.merge_slashes && path.contains("//") {
        return true;
    }
    path.split('/').any(|s| s == "." || s == "..")
}

/// The normal form of `path` (the path only, without the query), or why it is refused.
pub fn normalize(path: &str, rules: Rules) -> Result<Cow<'_, str>, BadPath> {
    if !needs_work(path, rules) {
        return Ok(Cow::Borrowed(path));
    }
    // Escapes decoded where they name unreserved characters, kept (upper case) where
    // not; the bytes every escape stands for must form UTF-8 with what surrounds them.
    let bytes = path.as_bytes();
    // Bytes, not chars: a path may carry UTF-8 as it is (the URI parser lets it
    // through), and each of its bytes is kept as it came.
    let mut out: Vec<u8> = Vec::with_capacity(path.len());
    let mut decoded: Vec<u8> = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(BadPath::Escape);
            };
            let v = h * 16 + l;
            match v {
                0 => return Err(BadPath::Nul),
                b'/' | b'\\' if !rules.allow_encoded_slashes => return Err(BadPath::EncodedSlash),
                _ if unreserved(v) => out.push(v),
                _ => {
                    out.push(b'%');
                    out.push(b"0123456789ABCDEF"[usize::from(v >> 4)]);
                    out.push(b"0123456789ABCDEF"[usize::from(v & 15)]);
                }
            }
            decoded.push(v);
            i += 3;
        } else {
            if c == b'\\' && !rules.allow_encoded_slashes {
                return Err(BadPath::EncodedSlash);
            }
            out.push(c);
            decoded.push(c);
            i += 1;
        }
    }
    if std::str::from_utf8(&decoded).is_err() {
        return Err(BadPath::Utf8);
    }
    let out = String::from_utf8(out).map_err(|_| BadPath::Utf8)?;
    Ok(Cow::Owned(remove_dot_segments(&out, rules.merge_slashes)))
}

/// RFC 3986 5.2.4 over `/`-separated segments, with empty segments dropped too when
/// `merge` (repeated slashes). The result starts with `/`; a trailing slash stays.
fn remove_dot_segments(path: &str, merge: bool) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut parts = path.split('/').peekable();
    // A path starts with "/": its first part is empty.
    if path.starts_with('/') {
        parts.next();
    }
    let mut trailing = false;
    while let Some(seg) = parts.next() {
        let last = parts.peek().is_none();
        match seg {
            "." => trailing = last,
            ".." => {
                segments.pop();
                trailing = last;
            }
            "" if merge && !last => {}
            "" if last => trailing = true,
            s => {
                segments.push(s);
                trailing = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: Rules = Rules {
        merge_slashes: true,
        allow_encoded_slashes: false,
    };

    fn norm(p: &str) -> Result<String, BadPath> {
        normalize(p, DEFAULT).map(Cow::into_owned)
    }

    #[test]
    fn a_normal_path_is_borrowed() {
        for p in ["/", "/api/x", "/a.b/c.d", "/a/b/", "/x..y/.z"] {
            assert!(matches!(normalize(p, DEFAULT), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_kept_in_upper_case() {
        assert_eq!(norm("/%61pi/x").unwrap(), "/api/x");
        assert_eq!(norm("/%7euser/%2D%5f").unwrap(), "/~user/-_");
        assert_eq!(norm("/a%20b/%3f").unwrap(), "/a%20b/%3F");
        assert_eq!(norm("/caf%C3%A9").unwrap(), "/caf%C3%A9");
    }

    #[test]
    fn dot_segments_are_removed_after_decoding() {
        assert_eq!(norm("/web/../api/x").unwrap(), "/api/x");
        assert_eq!(norm("/api/../admin").unwrap(), "/admin");
        assert_eq!(norm("/a/./b/.").unwrap(), "/a/b/");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/../../etc/passwd").unwrap(), "/etc/passwd");
        assert_eq!(norm("/web/%2e%2e/api").unwrap(), "/api");
        assert_eq!(norm("/web/.%2E/api").unwrap(), "/api");
        assert_eq!(norm("/..").unwrap(), "/");
    }

    #[test]
    fn repeated_slashes_are_merged_when_the_listener_says_so() {
        assert_eq!(norm("//api//x").unwrap(), "/api/x");
        assert_eq!(norm("/api/x//").unwrap(), "/api/x/");
        let keep = Rules {
            merge_slashes: false,
            ..DEFAULT
        };
        assert_eq!(normalize("//api//x", keep).unwrap(), "//api//x");
        assert_eq!(normalize("//api/../x", keep).unwrap(), "//x");
    }

    /// Found by the route fuzz target: raw UTF-8 beside an escape was re-encoded as if
    /// each byte were a character, and normalising twice gave another path.
    #[test]
    fn raw_utf8_in_a_path_is_kept_as_it_is() {
        let rules = Rules {
            merge_slashes: true,
            allow_encoded_slashes: true,
        };
        let p = "/\\los/\u{97a13}e%61/caf\u{e9}";
        let once = normalize(p, rules).unwrap().into_owned();
        assert_eq!(once, "/\\los/\u{97a13}ea/caf\u{e9}");
        assert_eq!(normalize(&once, rules).unwrap(), once);
    }

    #[test]
    fn bad_escapes_nul_overlong_forms_and_encoded_slashes_are_refused() {
        assert_eq!(norm("/a%zz"), Err(BadPath::Escape));
        assert_eq!(norm("/a%4"), Err(BadPath::Escape));
        assert_eq!(norm("/a%"), Err(BadPath::Escape));
        assert_eq!(norm("/a%00b"), Err(BadPath::Nul));
        assert_eq!(norm("/a%C0%AF"), Err(BadPath::Utf8));
        assert_eq!(norm("/a%E0%80%AF"), Err(BadPath::Utf8));
        assert_eq!(norm("/a%FF"), Err(BadPath::Utf8));
        assert_eq!(norm("/api%2Fadmin"), Err(BadPath::EncodedSlash));
        assert_eq!(norm("/api%2fadmin"), Err(BadPath::EncodedSlash));
        assert_eq!(norm("/api%5Cadmin"), Err(BadPath::EncodedSlash));
        assert_eq!(norm("/api\\admin"), Err(BadPath::EncodedSlash));
        let allow = Rules {
            allow_encoded_slashes: true,
            ..DEFAULT
        };
        assert_eq!(normalize("/a%2fb", allow).unwrap(), "/a%2Fb");
        assert_eq!(normalize("/a\\b", allow).unwrap(), "/a\\b");
    }
}
