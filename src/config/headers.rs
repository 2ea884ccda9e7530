//! `request_headers` and `response_headers` of a listener or a route, checked into
//! [`HeaderRules`].

use std::collections::BTreeMap;

use toml::Spanned;

use super::raw::RawHeaderRules;
use super::validate::Validator;

/// Fields no rule may touch: they frame the message or belong to its hop.
const FRAMING: [&str; 8] = [
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Fields fulcrum writes on every request to a backend: a request rule may set or
/// remove them, not add a second one.
const OWN: [&str; 5] = [
    "host",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-request-id",
];

/// A piece of a header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    /// `{client_ip}`: the client's address (the connection's peer).
    ClientIp,
    /// `{request_id}`: the request's `X-Request-Id`.
    RequestId,
    /// `{host}`: the request's host name, without a port.
    Host,
    /// `{scheme}`: `http` or `https`.
    Scheme,
}

/// The rules of one side: names lower case; applied as `remove`, then `set`
/// (replacing), then `add` (appending).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderRules {
    pub set: Vec<(String, Vec<Piece>)>,
    pub add: Vec<(String, Vec<Piece>)>,
    pub remove: Vec<String>,
}

/// Splits a value into text and `{name}` pieces; the error says what is wrong.
pub fn value_template(text: &str) -> Result<Vec<Piece>, String> {
    super::shaping::split_template(
        text,
        &[
            ("client_ip", Piece::ClientIp),
            ("request_id", Piece::RequestId),
            ("host", Piece::Host),
            ("scheme", Piece::Scheme),
        ],
        Piece::Text,
    )
}

impl Validator<'_> {
    /// A header name a rule may use, lower case; `request` allows `host` to be set.
    fn rule_name(
        &mut self,
        span: std::ops::Range<usize>,
        key: &str,
        name: &str,
        removing: bool,
        request: bool,
    ) -> Option<String> {
        let lower = name.to_ascii_lowercase();
        if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            self.err(
                Some(span),
                key,
                format!("{name:?} is not a valid header name"),
            );
            return None;
        }
        if FRAMING.contains(&lower.as_str()) {
            self.err(
                Some(span),
                key,
                format!("{lower} frames the message or belongs to its hop: no rule may change it"),
            );
            return None;
        }
        if lower == "host" && (removing || !request) {
            self.err(
                Some(span),
                key,
                "host can only be set, on the request side: a request needs one",
            );
            return None;
        }
        Some(lower)
    }

    fn rule_values(
        &mut self,
        key: &str,
        map: &Option<Spanned<BTreeMap<String, String>>>,
        request: bool,
    ) -> Vec<(String, Vec<Piece>)> {
        let mut out = Vec::new();
        let Some(map) = map else { return out };
        for (name, value) in map.get_ref() {
            let k = format!("{key}.{name}");
            let Some(lower) = self.rule_name(map.span(), &k, name, false, request) else {
                continue;
            };
            let pieces = match value_template(value) {
                Ok(p) => p,
                Err(why) => {
                    self.err(Some(map.span()), k, why);
                    continue;
                }
            };
            let bad_text = pieces.iter().any(|p| match p {
                Piece::Text(t) => http::HeaderValue::from_str(t).is_err(),
                _ => false,
            });
            if bad_text {
                self.err(
                    Some(map.span()),
                    k,
                    format!("is not a valid header value, got {value:?}"),
                );
                continue;
            }
            out.push((lower, pieces));
        }
        out
    }

    /// `request` says which side: only a request's `host` may be set.
    pub(super) fn header_rules(
        &mut self,
        key: &str,
        r: &Spanned<RawHeaderRules>,
        request: bool,
    ) -> HeaderRules {
        let raw = r.get_ref();
        let set = self.rule_values(&format!("{key}.set"), &raw.set, request);
        let add = self.rule_values(&format!("{key}.add"), &raw.add, request);
        if request {
            for (name, _) in add.iter().filter(|(n, _)| OWN.contains(&n.as_str())) {
                self.err(
                    Some(r.span()),
                    format!("{key}.add.{name}"),
                    format!("fulcrum writes {name} itself: use `set` to change it"),
                );
            }
        }
        let mut remove = Vec::new();
        for (i, name) in raw.remove.iter().flatten().enumerate() {
            let k = format!("{key}.remove[{i}]");
            if let Some(lower) = self.rule_name(name.span(), &k, name.get_ref(), true, request) {
                remove.push(lower);
            }
        }
        HeaderRules { set, add, remove }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_split_into_text_and_names() {
        assert_eq!(
            value_template("for={client_ip};id={request_id}").unwrap(),
            vec![
                Piece::Text("for=".into()),
                Piece::ClientIp,
                Piece::Text(";id=".into()),
                Piece::RequestId,
            ]
        );
        assert_eq!(
            value_template("{scheme}://{host}").unwrap(),
            vec![Piece::Scheme, Piece::Text("://".into()), Piece::Host]
        );
        assert_eq!(value_template("").unwrap(), Vec::new());
        assert!(value_template("{path}").unwrap_err().contains("{path}"));
        assert!(value_template("{host").is_err());
        assert!(value_template("host}").is_err());
    }
}
