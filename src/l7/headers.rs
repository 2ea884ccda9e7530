//! Header rules at run time: a listener's or a route's `request_headers` and
//! `response_headers`, compiled once per configuration generation. Each set of rules
//! removes, then sets (replacing), then adds (appending); values without `{name}`
//! pieces are built once.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{HeaderRules, Piece};

use super::h1::Added;

/// What `{name}` pieces stand for in one request.
pub struct Vars<'a> {
    pub client_ip: &'a HeaderValue,
    pub request_id: &'a HeaderValue,
    pub host: Option<&'a str>,
    pub scheme: &'static str,
}

#[derive(Debug)]
enum Value {
    Fixed(HeaderValue),
    Template(Vec<Piece>),
}

impl Value {
    fn new(pieces: &[Piece]) -> Option<Value> {
        match pieces {
            [] => Some(Value::Fixed(HeaderValue::from_static(""))),
            [Piece::Text(t)] => HeaderValue::from_str(t).ok().map(Value::Fixed),
            _ => Some(Value::Template(pieces.to_vec())),
        }
    }

    /// `None` when the filled-in value is not a valid header value, or a piece the
    /// client chose (`{request_id}`, `{host}`) holds a character outside letters,
    /// digits and `-._:+/@[]` (it is then not set: no rule can make a malformed
    /// head, and a client cannot add a `,`, `;` or `=` to a structured value).
    fn render(&self, vars: &Vars<'_>) -> Option<HeaderValue> {
        let pieces = match self {
            Value::Fixed(v) => return Some(v.clone()),
            Value::Template(p) => p,
        };
        let mut out = String::with_capacity(64);
        for piece in pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::ClientIp => out.push_str(vars.client_ip.to_str().unwrap_or("")),
                Piece::RequestId => out.push_str(plain(vars.request_id.to_str().ok()?)?),
                Piece::Host => out.push_str(plain(vars.host.unwrap_or(""))?),
                Piece::Scheme => out.push_str(vars.scheme),
            }
        }
        HeaderValue::try_from(out).ok()
    }
}

/// `s` if it holds only characters that separate nothing in a structured field.
fn plain(s: &str) -> Option<&str> {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._:+/@[]".contains(&b))
        .then_some(s)
}

/// One set of rules, ready to apply.
#[derive(Debug)]
pub struct Rules {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, Value)>,
    add: Vec<(HeaderName, Value)>,
}

fn compiled(list: &[(String, Vec<Piece>)]) -> Vec<(HeaderName, Value)> {
    list.iter()
        .filter_map(|(n, p)| Some((HeaderName::from_bytes(n.as_bytes()).ok()?, Value::new(p)?)))
        .collect()
}

/// The fields fulcrum writes itself on a request to a backend, which live in
/// [`Added`] rather than in the header map.
fn own_field<'a>(added: &'a mut Added, name: &HeaderName) -> Option<&'a mut Option<HeaderValue>> {
    match name.as_str() {
        "host" => Some(&mut added.host),
        "x-forwarded-for" => Some(&mut added.forwarded_for),
        "x-forwarded-proto" => Some(&mut added.forwarded_proto),
        "x-forwarded-host" => Some(&mut added.forwarded_host),
        "x-request-id" => Some(&mut added.request_id),
        // A rule on `traceparent` replaces the one fulcrum writes with [tracing],
        // and acts on the map.
        "traceparent" => {
            added.traceparent = None;
            None
        }
        _ => None,
    }
}

/// A listener's or route's rules as the engine holds them.
pub(super) fn shared(r: &Option<HeaderRules>) -> Option<std::sync::Arc<Rules>> {
    r.as_ref().map(|r| std::sync::Arc::new(Rules::new(r)))
}

impl Rules {
    pub fn new(r: &HeaderRules) -> Rules {
        Rules {
            remove: r
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
            set: compiled(&r.set),
            add: compiled(&r.add),
        }
    }

    /// On a response to the client.
    pub fn apply(&self, headers: &mut HeaderMap, vars: &Vars<'_>) {
        self.run(headers, None, vars);
    }

    /// On a request to a backend, after fulcrum's own fields: a rule on `Host`,
    /// `X-Forwarded-*` or `X-Request-Id` changes (or drops) what fulcrum writes.
    pub fn apply_request(&self, headers: &mut HeaderMap, added: &mut Added, vars: &Vars<'_>) {
        self.run(headers, Some(added), vars);
    }

    fn run(&self, headers: &mut HeaderMap, mut added: Option<&mut Added>, vars: &Vars<'_>) {
        for name in &self.remove {
            headers.remove(name);
            if let Some(own) = added.as_deref_mut().and_then(|a| own_field(a, name)) {
                *own = None;
            }
        }
        for (name, value) in &self.set {
            let v = value.render(vars);
            if let Some(own) = added.as_deref_mut().and_then(|a| own_field(a, name)) {
                *own = v;
                continue;
            }
            match v {
                Some(v) => {
                    headers.insert(name.clone(), v);
                }
                None => {
                    headers.remove(name);
                }
            }
        }
        for (name, value) in &self.add {
            if let Some(v) = value.render(vars) {
                headers.append(name.clone(), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> Rules {
        let t = |l: &[(&str, &str)]| {
            l.iter()
                .map(|(n, v)| {
                    (
                        n.to_string(),
                        crate::config::header_value_template(v).unwrap(),
                    )
                })
                .collect()
        };
        Rules::new(&HeaderRules {
            set: t(set),
            add: t(add),
            remove: remove.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn vars<'a>(ip: &'a HeaderValue, id: &'a HeaderValue) -> Vars<'a> {
        Vars {
            client_ip: ip,
            request_id: id,
            host: Some("example.com"),
            scheme: "https",
        }
    }

    #[test]
    fn remove_then_set_then_add_with_filled_in_values() {
        let r = rules(
            &[("x-env", "prod"), ("x-who", "{client_ip} {request_id}")],
            &[("via", "fulcrum {scheme}://{host}")],
            &["server", "x-env"],
        );
        let (ip, id) = (
            HeaderValue::from_static("10.0.0.1"),
            HeaderValue::from_static("abc"),
        );
        let mut h = HeaderMap::new();
        h.insert("server", HeaderValue::from_static("app/1.0"));
        h.insert("x-env", HeaderValue::from_static("dev"));
        h.insert("via", HeaderValue::from_static("1.1 cdn"));
        r.apply(&mut h, &vars(&ip, &id));
        assert!(h.get("server").is_none());
        assert_eq!(h["x-env"], "prod", "set after remove");
        assert_eq!(h["x-who"], "10.0.0.1 abc");
        let via: Vec<_> = h.get_all("via").iter().collect();
        assert_eq!(via, ["1.1 cdn", "fulcrum https://example.com"]);
    }

    #[test]
    fn a_client_chosen_piece_with_separators_is_not_filled_in() {
        let r = rules(
            &[("forwarded", "for={client_ip};id={request_id}")],
            &[],
            &[],
        );
        let ip = HeaderValue::from_static("10.0.0.1");
        let mut h = HeaderMap::new();
        let good = HeaderValue::from_static("9f2c-41:ab/c+d@e");
        r.apply(&mut h, &vars(&ip, &good));
        assert_eq!(h["forwarded"], "for=10.0.0.1;id=9f2c-41:ab/c+d@e");
        for bad in ["a;by=evil", "a,for=1.2.3.4", "a=b", "a b", "\"x\""] {
            let bad = HeaderValue::from_str(bad).unwrap();
            r.apply(&mut h, &vars(&ip, &bad));
            assert!(h.get("forwarded").is_none(), "{bad:?} is not filled in");
        }
        let host = rules(&[("x-site", "{host}")], &[], &[]);
        let mut h = HeaderMap::new();
        let v = Vars {
            host: Some("a.example;x=1"),
            ..vars(&ip, &good)
        };
        host.apply(&mut h, &v);
        assert!(h.get("x-site").is_none());
        host.apply(&mut h, &vars(&ip, &good));
        assert_eq!(h["x-site"], "example.com");
    }

    #[test]
    fn request_rules_reach_the_fields_fulcrum_writes() {
        let r = rules(
            &[
                ("host", "internal.example"),
                ("x-forwarded-proto", "{scheme}"),
            ],
            &[],
            &["x-request-id", "x-debug"],
        );
        let (ip, id) = (
            HeaderValue::from_static("10.0.0.1"),
            HeaderValue::from_static("abc"),
        );
        let mut added = Added {
            host: Some(HeaderValue::from_static("example.com")),
            forwarded_for: Some(HeaderValue::from_static("10.0.0.1")),
            forwarded_proto: Some(HeaderValue::from_static("http")),
            forwarded_host: None,
            request_id: Some(HeaderValue::from_static("abc")),
            traceparent: None,
            empty_length: false,
        };
        let mut h = HeaderMap::new();
        h.insert("x-debug", HeaderValue::from_static("1"));
        r.apply_request(&mut h, &mut added, &vars(&ip, &id));
        assert_eq!(added.host.unwrap(), "internal.example");
        assert_eq!(added.forwarded_proto.unwrap(), "https");
        assert!(added.request_id.is_none());
        assert!(h.get("x-debug").is_none());
        assert!(h.get("host").is_none(), "written once, by fulcrum");
    }
}
