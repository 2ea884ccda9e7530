use super::*;
use crate::l7::client::ip_value;
use http::HeaderMap;

#[test]
fn hop_by_hop_headers_and_those_connection_names_are_removed() {
    let mut h = HeaderMap::new();
    h.insert(
        "connection",
        HeaderValue::from_static("keep-alive, x-secret"),
    );
    h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    h.insert("x-secret", HeaderValue::from_static("1"));
    h.insert("te", HeaderValue::from_static("trailers"));
    h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
    h.insert("x-kept", HeaderValue::from_static("1"));
    strip_hop_by_hop(&mut h);
    assert_eq!(h.len(), 1, "{h:?}");
    assert!(h.contains_key("x-kept"));
}

#[test]
fn forwarded_for_appends_the_client() {
    let mut h = HeaderMap::new();
    let peer: SocketAddr = "192.0.2.9:1234".parse().unwrap();
    assert_eq!(forwarded_for(&h, &ip_value(peer)), "192.0.2.9");
    h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
    h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
    assert_eq!(
        forwarded_for(&h, &ip_value(peer)),
        "10.0.0.1, 10.0.0.2, 192.0.2.9"
    );
    let mapped: SocketAddr = "[::ffff:192.0.2.9]:1".parse().unwrap();
    assert_eq!(ip_value(mapped), "192.0.2.9");
    for ip in [
        "0.0.0.0",
        "10.0.0.1",
        "127.0.0.1",
        "255.255.255.255",
        "1.20.100.9",
    ] {
        let peer = SocketAddr::new(ip.parse().unwrap(), 1);
        assert_eq!(ip_value(peer), ip);
    }
    let v6: SocketAddr = "[2001:db8::1]:1".parse().unwrap();
    assert_eq!(ip_value(v6), "2001:db8::1");
}

#[test]
fn a_field_named_by_connection_alone_is_removed() {
    let mut h = HeaderMap::new();
    h.insert("connection", HeaderValue::from_static("x-secret"));
    h.insert("x-secret", HeaderValue::from_static("1"));
    h.insert("x-kept", HeaderValue::from_static("1"));
    strip_hop_by_hop(&mut h);
    assert_eq!(h.len(), 1, "{h:?}");
    let mut plain = HeaderMap::new();
    plain.insert("x-kept", HeaderValue::from_static("1"));
    strip_hop_by_hop(&mut plain);
    assert_eq!(plain.len(), 1);
}
