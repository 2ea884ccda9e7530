//! Who the client of a request is: the connection's peer (after any PROXY header),
//! or, when that peer is one of the listener's `trusted_proxies`, the address those
//! proxies name in `X-Forwarded-For` (or `Forwarded: for=`): the rightmost entry that
//! is not itself a trusted proxy. From anyone else those fields are never believed.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;

/// A request's client address, and its text for `X-Forwarded-For`-like uses.
#[derive(Debug, Clone)]
pub struct Client {
    pub addr: SocketAddr,
    pub ip: HeaderValue,
}

fn trusted(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|n| n.contains(&ip))
}

/// An `X-Forwarded-For` or `Forwarded` node: an address, with or without a port,
/// IPv6 in brackets or bare, quotes removed. `None` for `unknown`, obfuscated
/// identifiers and anything else.
fn node(text: &str) -> Option<IpAddr> {
    let t = text.trim().trim_matches('"');
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = t.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    t.strip_prefix('[')
        .and_then(|r| r.split_once(']'))
        .and_then(|(ip, _)| ip.parse().ok())
}

/// The `for=` nodes of the `Forwarded` fields, in order.
fn forwarded_for(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(http::header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then_some(v)
            })
        })
        .collect()
}

/// The client address that `headers` name, when `peer` is trusted: `None` when it
/// is not, or the fields name none that parses.
pub(super) fn forwarded_client(
    peer: IpAddr,
    headers: &HeaderMap,
    nets: &[IpNet],
) -> Option<IpAddr> {
    if !trusted(nets, peer) {
        return None;
    }
    let mut entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    if entries.is_empty() {
        entries = forwarded_for(headers);
    }
    let mut nearest = None;
    for entry in entries.iter().rev() {
        // A node that does not parse ends the chain: what lies beyond it cannot be
        // vouched for; the last trusted hop before it stands.
        let ip = node(entry)?;
        if !trusted(nets, ip) {
            return Some(ip.to_canonical());
        }
        nearest = Some(ip.to_canonical());
    }
    nearest
}

impl Client {
    /// The client of a request on a connection from `peer` (whose text is `peer_ip`).
    pub fn of(
        peer: SocketAddr,
        peer_ip: &HeaderValue,
        headers: &HeaderMap,
        nets: &[IpNet],
    ) -> Client {
        if !nets.is_empty() {
            if let Some(ip) = forwarded_client(peer.ip(), headers, nets) {
                let addr = SocketAddr::new(ip, 0);
                return Client {
                    addr,
                    ip: ip_value(addr),
                };
            }
        }
        Client {
            addr: peer,
            ip: peer_ip.clone(),
        }
    }
}

/// A client's address as `X-Forwarded-For` carries it (IPv4-mapped IPv6 as IPv4).
/// Formatted once per connection; IPv4 without the formatting machinery.
pub(super) fn ip_value(peer: SocketAddr) -> HeaderValue {
    match peer.ip().to_canonical() {
        std::net::IpAddr::V4(v4) => {
            let mut out = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out[len] = b'.';
                    len += 1;
                }
                let digits = [octet / 100, octet / 10 % 10, octet % 10];
                let skip = if octet >= 100 {
                    0
                } else if octet >= 10 {
                    1
                } else {
                    2
                };
                for d in &digits[skip..] {
                    out[len] = b'0' + d;
                    len += 1;
                }
            }
            HeaderValue::from_bytes(&out[..len])
        }
        v6 => HeaderValue::try_from(v6.to_string()),
    }
    .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_rightmost_untrusted_entry_is_the_client() {
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6, 203.0.113.7"),
            ("x-forwarded-for", "10.1.1.1"),
        ]);
        assert_eq!(
            forwarded_client(proxy, &h, &nets),
            Some("203.0.113.7".parse().unwrap())
        );
        // From a peer that is not trusted: never believed.
        assert_eq!(
            forwarded_client("192.0.2.1".parse().unwrap(), &h, &nets),
            None
        );
        // Every entry trusted: the leftmost.
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.1.1.1")]);
        assert_eq!(
            forwarded_client(proxy, &h, &nets),
            Some("10.9.9.9".parse().unwrap())
        );
        // Ports and IPv6 forms.
        let h = headers(&[("x-forwarded-for", "[2001:db8::7]:443")]);
        assert_eq!(
            forwarded_client(proxy, &h, &nets),
            Some("2001:db8::7".parse().unwrap())
        );
        let h = headers(&[("x-forwarded-for", "198.51.100.4:5000")]);
        assert_eq!(
            forwarded_client(proxy, &h, &nets),
            Some("198.51.100.4".parse().unwrap())
        );
        // Garbage nearest the proxy: nothing to believe.
        let h = headers(&[("x-forwarded-for", "203.0.113.7, garbage")]);
        assert_eq!(forwarded_client(proxy, &h, &nets), None);
        // No field at all.
        assert_eq!(forwarded_client(proxy, &HeaderMap::new(), &nets), None);
    }

    #[test]
    fn forwarded_for_is_read_when_x_forwarded_for_is_absent() {
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        let h = headers(&[(
            "forwarded",
            "for=192.0.2.60;proto=http;by=203.0.113.43, For=\"[2001:db8:cafe::17]:4711\", for=10.0.0.9",
        )]);
        assert_eq!(
            forwarded_client(proxy, &h, &nets),
            Some("2001:db8:cafe::17".parse().unwrap())
        );
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(forwarded_client(proxy, &h, &nets), None);
    }
}
