//! The host a request is for, computed once per request and used by everything that
//! needs it: routing, the forwarded `Host` and `X-Forwarded-Host`, the cache key and
//! the access log. Two places that read the host each their own way are how a cache
//! gets poisoned (a request routed by one host and stored under another).
//!
//! The host comes from the request target's authority (absolute form, or HTTP/2's
//! `:authority`) or else from `Host`. When both are present they must name the same
//! authority (RFC 9112 3.2.2, RFC 9113 8.3.1); otherwise the request is malformed.
//! The value is normalised: lower case, no default port, no empty port.

use http::uri::Authority;
use http::{header, HeaderMap, HeaderValue, Uri, Version};

/// A validated, normalised authority: `example.com`, `example.com:8080`, `[::1]:81`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHost {
    value: HeaderValue,
    /// Where the host name ends (the port, if any, follows).
    name_len: usize,
}

impl RequestHost {
    /// The host name without its port.
    pub fn name(&self) -> &str {
        &self.authority()[..self.name_len]
    }

    /// The host name with its port, if it is not the scheme's default.
    pub fn authority(&self) -> &str {
        // Built from a `&str` in `normalise`: always visible ASCII.
        self.value.to_str().unwrap_or("")
    }

    /// The value sent upstream as `Host` and `X-Forwarded-Host`.
    pub fn header(&self) -> &HeaderValue {
        &self.value
    }
}

/// The request's host, `None` for an HTTP/1.0 request that names none; an error names
/// what makes the request malformed.
pub fn request_host(
    uri: &Uri,
    headers: &HeaderMap,
    version: Version,
    https: bool,
) -> Result<Option<RequestHost>, &'static str> {
    let mut values = headers.get_all(header::HOST).iter();
    let host_header = values.next();
    if values.next().is_some() {
        return Err("more than one Host header");
    }
    let default_port = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("https") => 443,
        Some(_) => 80,
        None if https => 443,
        None => 80,
    };
    // The common case: only `Host`, already in its normal form (a lower-case name, a
    // port that is not the default): taken as it is, nothing parsed or allocated.
    match (uri.authority(), host_header) {
        (None, Some(v)) => {
            if let Some(name_len) = already_normal(v.as_bytes(), default_port) {
                return Ok(Some(RequestHost {
                    value: v.clone(),
                    name_len,
                }));
            }
        }
        // HTTP/2's `:authority` alone, in its normal form: copied, not parsed again.
        (Some(a), None) => {
            if let Some(name_len) = already_normal(a.as_str().as_bytes(), default_port) {
                if let Ok(value) = HeaderValue::from_str(a.as_str()) {
                    return Ok(Some(RequestHost { value, name_len }));
                }
            }
        }
        _ => {}
    }
    let from_header = match host_header {
        Some(v) => {
            let text = v.to_str().map_err(|_| "Host is not a valid authority")?;
            let a: Authority = text.parse().map_err(|_| "Host is not a valid authority")?;
            Some(normalise(&a, default_port).ok_or("Host is not a valid authority")?)
        }
        None => None,
    };
    let from_target = match uri.authority() {
        Some(a) => {
            Some(normalise(a, default_port).ok_or("the request target's authority is not valid")?)
        }
        None => None,
    };
    match (from_target, from_header) {
        (Some(t), Some(h)) if t != h => Err("Host differs from the request target's authority"),
        (Some(t), _) => Ok(Some(t)),
        (None, Some(h)) => Ok(Some(h)),
        (None, None) if version == Version::HTTP_11 => Err("HTTP/1.1 request without Host"),
        (None, None) => Ok(None),
    }
}

/// Where the name ends in `b`, when `b` is already a normal authority: a lower-case
/// DNS name or IPv4 address (letters, digits, `-`, `.`), optionally with a port that
/// is not `default_port`.
fn already_normal(b: &[u8], default_port: u16) -> Option<usize> {
    let name_len = b.iter().position(|&c| c == b':').unwrap_or(b.len());
    let (name, port) = b.split_at(name_len);
    let name_ok = !name.is_empty()
        && name
            .iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.');
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => {
            !digits.is_empty()
                && digits.len() <= 5
                && digits[0] != b'0'
                && digits.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(digits)
                    .ok()
                    .and_then(|d| d.parse::<u16>().ok())
                    .is_some_and(|p| p != default_port)
        }
        _ => false,
    };
    (name_ok && port_ok).then_some(name_len)
}

/// Lower case, without user information, with a port only when it is not the default.
fn normalise(a: &Authority, default_port: u16) -> Option<RequestHost> {
    let text = a.as_str();
    if text.contains('@') {
        return None;
    }
    let host = a.host();
    if host.is_empty() || host.bytes().any(|b| !b.is_ascii_graphic()) {
        return None;
    }
    // What follows the host: "", ":" or ":digits".
    let rest = text.get(host.len()..)?;
    let port = match rest.strip_prefix(':') {
        None if rest.is_empty() => None,
        None => return None,
        Some("") => None,
        Some(p) => Some(p.parse::<u16>().ok()?),
    };
    let mut out = host.to_ascii_lowercase();
    let name_len = out.len();
    if let Some(p) = port.filter(|&p| p != default_port) {
        out.push(':');
        out.push_str(&p.to_string());
    }
    Some(RequestHost {
        value: HeaderValue::try_from(out).ok()?,
        name_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(uri: &str, host: &[&str], https: bool) -> Result<Option<String>, &'static str> {
        let uri: Uri = uri.parse().unwrap();
        let mut h = HeaderMap::new();
        for v in host {
            h.append(header::HOST, HeaderValue::from_str(v).unwrap());
        }
        request_host(&uri, &h, Version::HTTP_11, https).map(|o| o.map(|h| h.authority().to_owned()))
    }

    #[test]
    fn the_host_is_lower_case_without_its_default_port() {
        assert_eq!(
            host("/x", &["WWW.Example.com"], false),
            Ok(Some("www.example.com".into()))
        );
        assert_eq!(
            host("/x", &["example.com:80"], false),
            Ok(Some("example.com".into()))
        );
        assert_eq!(
            host("/x", &["example.com:443"], true),
            Ok(Some("example.com".into()))
        );
        assert_eq!(
            host("/x", &["example.com:443"], false),
            Ok(Some("example.com:443".into()))
        );
        assert_eq!(
            host("/x", &["example.com:"], false),
            Ok(Some("example.com".into()))
        );
        assert_eq!(
            host("/x", &["example.com:8080"], false),
            Ok(Some("example.com:8080".into()))
        );
        assert_eq!(
            host("/x", &["[::1]:8080"], false),
            Ok(Some("[::1]:8080".into()))
        );
    }

    #[test]
    fn the_name_is_the_authority_without_the_port() {
        let uri: Uri = "/".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("[::1]:81"));
        let got = request_host(&uri, &h, Version::HTTP_11, false)
            .unwrap()
            .unwrap();
        assert_eq!(got.name(), "[::1]");
        assert_eq!(got.header(), "[::1]:81");
    }

    #[test]
    fn an_absolute_target_must_agree_with_host() {
        assert_eq!(
            host("http://evil.example/x", &["www.victim.example"], false),
            Err("Host differs from the request target's authority")
        );
        assert_eq!(
            host("http://Victim.example:80/x", &["victim.example"], false),
            Ok(Some("victim.example".into()))
        );
        assert_eq!(
            host("https://victim.example/x", &["victim.example:443"], false),
            Ok(Some("victim.example".into()))
        );
        assert_eq!(
            host("http://a.example/x", &[], false),
            Ok(Some("a.example".into()))
        );
    }

    #[test]
    fn an_authority_alone_is_normalised_like_host() {
        for (uri, https, want) in [
            (
                "http://a.example:8080/x",
                false,
                Ok(Some("a.example:8080".into())),
            ),
            ("http://a.example:80/x", false, Ok(Some("a.example".into()))),
            (
                "https://a.example:443/x",
                false,
                Ok(Some("a.example".into())),
            ),
            ("http://A.Example/x", false, Ok(Some("a.example".into()))),
            (
                "http://10.0.0.1:81/x",
                false,
                Ok(Some("10.0.0.1:81".into())),
            ),
            ("http://[::1]:81/x", false, Ok(Some("[::1]:81".into()))),
            (
                "http://u@a.example/x",
                false,
                Err("the request target's authority is not valid"),
            ),
        ] {
            let parsed: Uri = uri.parse().unwrap();
            let got = request_host(&parsed, &HeaderMap::new(), Version::HTTP_2, https)
                .map(|o| o.map(|h| h.authority().to_owned()));
            assert_eq!(got, want, "{uri}");
        }
    }

    #[test]
    fn malformed_hosts_are_refused() {
        assert!(host("/x", &["a.example", "b.example"], false).is_err());
        assert!(host("/x", &[], false).is_err());
        assert!(host("/x", &["user@a.example"], false).is_err());
        assert!(host("/x", &["a.example:99999"], false).is_err());
        assert!(host("/x", &["a.example:8x"], false).is_err());
        assert!(host("/x", &["a.example/x"], false).is_err());
        assert!(host("/x", &[""], false).is_err());
        assert!(host("http://user@a.example/x", &["a.example"], false).is_err());
    }

    #[test]
    fn a_host_already_normal_is_taken_as_it_is() {
        for (v, https, normal) in [
            ("example.com", false, true),
            ("example.com:8080", false, true),
            ("127.0.0.1:18081", false, true),
            ("example.com:80", false, false),
            ("example.com:443", true, false),
            ("Example.com", false, false),
            ("example.com:", false, false),
            ("example.com:0080", false, false),
            ("[::1]:80", false, false),
            ("a@b", false, false),
        ] {
            let got = already_normal(v.as_bytes(), if https { 443 } else { 80 });
            assert_eq!(got.is_some(), normal, "{v}");
        }
        // Whichever way it is read, the answer is the same.
        for v in [
            "example.com",
            "example.com:8080",
            "Example.COM:80",
            "[::1]:81",
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_static(v));
            let uri: Uri = "/".parse().unwrap();
            let fast = request_host(&uri, &h, Version::HTTP_11, false)
                .unwrap()
                .unwrap();
            let slow = normalise(&v.parse().unwrap(), 80).unwrap();
            assert_eq!(fast, slow, "{v}");
        }
    }

    #[test]
    fn http_1_0_may_name_no_host() {
        let uri: Uri = "/x".parse().unwrap();
        assert_eq!(
            request_host(&uri, &HeaderMap::new(), Version::HTTP_10, false),
            Ok(None)
        );
    }
}
