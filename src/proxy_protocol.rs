//! The PROXY protocol (HAProxy's, versions 1 and 2): the header a load balancer in
//! front of fulcrum puts at the start of a connection to say who the client is.
//!
//! The parsers are pure and bounded (a v1 line is at most 107 bytes, a v2 header at
//! most 16 + 65,535); [`read`] takes exactly the header's bytes off a socket, so that
//! what follows (a TLS ClientHello, an HTTP request) is left for the next layer, and
//! the TCP engine can still splice the socket.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The v2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 line's longest form, CRLF included.
pub const V1_MAX: usize = 107;

/// What a header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The client's address; `None` for v1 `UNKNOWN`, v2 `LOCAL`, and the families
    /// that are not IP (the connection's own peer stands then).
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("the connection does not start with a PROXY header")]
    Missing,
    #[error("malformed PROXY v1 header")]
    V1,
    #[error("malformed PROXY v2 header")]
    V2,
    #[error("the connection ended inside the PROXY header")]
    Truncated,
}

/// Parses a whole v1 line, `PROXY ... \r\n`.
pub fn parse_v1(line: &[u8]) -> Result<Header, Error> {
    let text = line
        .strip_suffix(b"\r\n")
        .filter(|_| line.len() <= V1_MAX)
        .and_then(|l| std::str::from_utf8(l).ok())
        .ok_or(Error::V1)?;
    let mut parts = text.split(' ');
    if parts.next() != Some("PROXY") {
        return Err(Error::V1);
    }
    let family = parts.next().ok_or(Error::V1)?;
    if family == "UNKNOWN" {
        // Whatever follows is ignored (the specification says so).
        return Ok(Header {
            source: None,
            destination: None,
        });
    }
    let fields: Vec<&str> = parts.collect();
    let [src, dst, sport, dport] = fields.as_slice() else {
        return Err(Error::V1);
    };
    let ip = |s: &str| -> Result<IpAddr, Error> {
        match family {
            "TCP4" => s.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| Error::V1),
            "TCP6" => s.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| Error::V1),
            _ => Err(Error::V1),
        }
    };
    let port = |s: &str| -> Result<u16, Error> {
        // Decimal, no sign, no leading zero.
        if s.is_empty()
            || s.len() > 5
            || (s.len() > 1 && s.starts_with('0'))
            || !s.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(Error::V1);
        }
        s.parse().map_err(|_| Error::V1)
    };
    Ok(Header {
        source: Some(SocketAddr::new(ip(src)?, port(sport)?)),
        destination: Some(SocketAddr::new(ip(dst)?, port(dport)?)),
    })
}

/// The length of the v2 header that starts with these 16 bytes (16 + its length
/// field), or an error when they are not a v2 header's start.
pub fn v2_len(fixed: &[u8; 16]) -> Result<usize, Error> {
    if fixed[..12] != V2_SIGNATURE {
        return Err(Error::Missing);
    }
    if fixed[12] >> 4 != 2 {
        return Err(Error::V2);
    }
    Ok(16 + usize::from(u16::from_be_bytes([fixed[14], fixed[15]])))
}

/// Parses a whole v2 header (the 16 fixed bytes, the addresses and the TLVs).
pub fn parse_v2(header: &[u8]) -> Result<Header, Error> {
    let fixed: &[u8; 16] = header
        .get(..16)
        .and_then(|f| f.try_into().ok())
        .ok_or(Error::V2)?;
    if v2_len(fixed)? != header.len() {
        return Err(Error::V2);
    }
    let command = fixed[12] & 0x0f;
    let (family, transport) = (fixed[13] >> 4, fixed[13] & 0x0f);
    let body = &header[16..];
    if command > 1 || family > 3 || transport > 2 {
        return Err(Error::V2);
    }
    let (addresses, size) = match family {
        1 => (
            body.get(..12).map(|a| {
                let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(a[o], a[o + 1], a[o + 2], a[o + 3]));
                let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
                (
                    SocketAddr::new(ip(0), port(8)),
                    SocketAddr::new(ip(4), port(10)),
                )
            }),
            12,
        ),
        2 => (
            body.get(..36).map(|a| {
                let ip = |o: usize| {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(&a[o..o + 16]);
                    IpAddr::V6(Ipv6Addr::from(b))
                };
                let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
                (
                    SocketAddr::new(ip(0), port(32)),
                    SocketAddr::new(ip(16), port(34)),
                )
            }),
            36,
        ),
        3 => (None, 216),
        _ => (None, 0),
    };
    if command == 1 && body.len() < size {
        return Err(Error::V2);
    }
    // The TLVs after the addresses must tile the rest exactly.
    let mut tlvs = body.get(size..).unwrap_or(&[]);
    if command == 1 || body.len() >= size {
        while !tlvs.is_empty() {
            let [_, hi, lo, ..] = *tlvs else {
                return Err(Error::V2);
            };
            let len = 3 + usize::from(u16::from_be_bytes([hi, lo]));
            tlvs = tlvs.get(len..).ok_or(Error::V2)?;
        }
    }
    if command == 0 {
        // LOCAL: the sender's own connection (a health check); no client address.
        return Ok(Header {
            source: None,
            destination: None,
        });
    }
    Ok(match addresses {
        Some((source, destination)) => Header {
            source: Some(source),
            destination: Some(destination),
        },
        None => Header {
            source: None,
            destination: None,
        },
    })
}

/// Parses a header at the start of `buf`: `Ok(None)` when more bytes are needed,
/// otherwise the header and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, Error> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[..buf.len().min(6)] == b"PROXY "[..buf.len().min(6)] {
        return match buf.iter().position(|&b| b == b'\n') {
            Some(end) => parse_v1(&buf[..=end]).map(|h| Some((h, end + 1))),
            None if buf.len() >= V1_MAX => Err(Error::V1),
            None => Ok(None),
        };
    }
    let prefix = buf.len().min(12);
    if buf[..prefix] != V2_SIGNATURE[..prefix] {
        return Err(Error::Missing);
    }
    let Some(fixed) = buf.get(..16).and_then(|f| <&[u8; 16]>::try_from(f).ok()) else {
        return Ok(None);
    };
    let len = v2_len(fixed)?;
    match buf.get(..len) {
        Some(h) => parse_v2(h).map(|h| Some((h, len))),
        None => Ok(None),
    }
}

/// Reads a PROXY header off `stream`, taking exactly its bytes. The caller bounds
/// the time it may take.
pub async fn read(stream: &mut TcpStream) -> Result<Header, Error> {
    let mut buf = Vec::with_capacity(64);
    let mut peeked = [0u8; 256];
    loop {
        // Peek, then take only what is surely header: up to a v1 line's end, or the
        // v2 length once known. What follows the header stays in the socket.
        let n = stream
            .peek(&mut peeked)
            .await
            .map_err(|_| Error::Truncated)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                Error::Missing
            } else {
                Error::Truncated
            });
        }
        let mut joined = buf.clone();
        joined.extend_from_slice(&peeked[..n]);
        if let Some((header, len)) = parse(&joined)? {
            let mut rest = vec![0u8; len - buf.len()];
            stream
                .read_exact(&mut rest)
                .await
                .map_err(|_| Error::Truncated)?;
            return Ok(header);
        }
        // Incomplete: all of it is header. A v2 header's length is known from its
        // 16th byte on: the rest is read in one go.
        if let Some(fixed) = joined
            .get(..16)
            .and_then(|f| <&[u8; 16]>::try_from(f).ok())
            .filter(|f| f.starts_with(&V2_SIGNATURE))
        {
            let len = v2_len(fixed)?;
            let mut whole = buf;
            let from = whole.len();
            whole.resize(len, 0);
            stream
                .read_exact(&mut whole[from..])
                .await
                .map_err(|_| Error::Truncated)?;
            return parse_v2(&whole);
        }
        let mut chunk = vec![0u8; n];
        stream
            .read_exact(&mut chunk)
            .await
            .map_err(|_| Error::Truncated)?;
        buf.extend_from_slice(&chunk);
    }
}

/// Writes a header for a connection from `source` to `destination`, in version 2's
/// binary form when `v2`, else version 1's text. `None`: a connection fulcrum makes
/// for itself (a health check): v2 `LOCAL`, v1 `UNKNOWN`. A pair of mixed families is
/// written as IPv6, the IPv4 side mapped.
pub fn write(v2: bool, addresses: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    let six = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => (v4.to_ipv6_mapped(), a.port()),
        IpAddr::V6(v6) => (v6, a.port()),
    };
    let pair = addresses.map(
        |(s, d)| match (s.ip().to_canonical(), d.ip().to_canonical()) {
            (IpAddr::V4(a), IpAddr::V4(b)) => (IpAddr::V4(a), s.port(), IpAddr::V4(b), d.port()),
            _ => {
                let ((a, ap), (b, bp)) = (six(s), six(d));
                (IpAddr::V6(a), ap, IpAddr::V6(b), bp)
            }
        },
    );
    if !v2 {
        return match pair {
            None => b"PROXY UNKNOWN\r\n".to_vec(),
            Some((a, ap, b, bp)) => {
                let family = if a.is_ipv4() { "TCP4" } else { "TCP6" };
                format!("PROXY {family} {a} {b} {ap} {bp}\r\n").into_bytes()
            }
        };
    }
    let mut out = V2_SIGNATURE.to_vec();
    match pair {
        None => out.extend_from_slice(&[0x20, 0x00, 0, 0]),
        Some((a, ap, b, bp)) => {
            let (family, body): (u8, Vec<u8>) = match (a, b) {
                (IpAddr::V4(a), IpAddr::V4(b)) => (0x11, [a.octets(), b.octets()].concat()),
                (IpAddr::V6(a), IpAddr::V6(b)) => (0x21, [a.octets(), b.octets()].concat()),
                // Both sides are of one family by now.
                _ => (0x00, Vec::new()),
            };
            let len = body.len() + if body.is_empty() { 0 } else { 4 };
            out.extend_from_slice(&[0x21, family]);
            out.extend_from_slice(&(len as u16).to_be_bytes());
            out.extend_from_slice(&body);
            if !body.is_empty() {
                out.extend_from_slice(&ap.to_be_bytes());
                out.extend_from_slice(&bp.to_be_bytes());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    #[test]
    fn v1_lines_give_the_client_address() {
        let h = parse_v1(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n").unwrap();
        assert_eq!(h.source, Some("192.0.2.1:56324".parse().unwrap()));
        assert_eq!(h.destination, Some("198.51.100.2:443".parse().unwrap()));
        let h = parse_v1(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n").unwrap();
        assert_eq!(h.source, Some("[2001:db8::1]:1".parse().unwrap()));
        let h = parse_v1(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").unwrap();
        assert_eq!(h.source, None);
        for bad in [
            &b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\n"[..],
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 01 443\r\n",
            b"PROXY TCP4 192.0.2.1  198.51.100.2 1 443\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n",
            b"GET / HTTP/1.1\r\n",
        ] {
            assert!(parse_v1(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn v2_headers_with_tlvs_local_and_other_families() {
        let mut body = vec![192, 0, 2, 1, 198, 51, 100, 2, 0xdc, 0x04, 0x01, 0xbb];
        // An authority TLV and a NOOP TLV.
        body.extend_from_slice(&[0x02, 0x00, 0x03, b'a', b'.', b'b', 0x04, 0x00, 0x00]);
        let h = v2(1, 0x11, &body);
        let (header, len) = parse(&h).unwrap().unwrap();
        assert_eq!(len, h.len());
        assert_eq!(header.source, Some("192.0.2.1:56324".parse().unwrap()));
        let mut six = Vec::new();
        six.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        six.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        six.extend_from_slice(&[0, 80, 1, 187]);
        let header = parse_v2(&v2(1, 0x21, &six)).unwrap();
        assert_eq!(header.source, Some("[2001:db8::1]:80".parse().unwrap()));
        assert_eq!(parse_v2(&v2(0, 0x00, &[])).unwrap().source, None, "LOCAL");
        assert_eq!(
            parse_v2(&v2(1, 0x31, &[0u8; 216])).unwrap().source,
            None,
            "UNIX"
        );
        // Bad: a TLV running past the end, short addresses, unknown command, version.
        let mut cut = body.clone();
        cut.truncate(body.len() - 1);
        assert!(parse_v2(&v2(1, 0x11, &cut)).is_err());
        assert!(parse_v2(&v2(1, 0x11, &body[..8])).is_err());
        assert!(parse_v2(&v2(2, 0x11, &body)).is_err());
        let mut v3 = v2(1, 0x11, &body);
        v3[12] = 0x31;
        assert!(parse(&v3).is_err());
    }

    #[test]
    fn written_headers_read_back() {
        let pairs: [(&str, &str); 3] = [
            ("192.0.2.1:5000", "198.51.100.2:443"),
            ("[2001:db8::1]:5000", "[2001:db8::2]:443"),
            ("192.0.2.1:5000", "[2001:db8::2]:443"),
        ];
        for (src, dst) in pairs {
            let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
            for v2 in [false, true] {
                let h = write(v2, Some((src, dst)));
                let (header, len) = parse(&h).unwrap().unwrap();
                assert_eq!(len, h.len());
                let got = header.source.unwrap();
                assert_eq!(
                    got.ip().to_canonical(),
                    src.ip().to_canonical(),
                    "{v2} {src}"
                );
                assert_eq!(got.port(), src.port());
                assert_eq!(header.destination.unwrap().port(), dst.port());
            }
        }
        assert_eq!(write(false, None), b"PROXY UNKNOWN\r\n");
        let local = write(true, None);
        assert_eq!(
            parse(&local).unwrap().unwrap(),
            (
                Header {
                    source: None,
                    destination: None
                },
                16
            )
        );
    }

    #[test]
    fn partial_input_asks_for_more_and_garbage_is_refused() {
        let line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /";
        for cut in 1..45 {
            assert_eq!(parse(&line[..cut]), Ok(None), "{cut}");
        }
        assert_eq!(parse(line).unwrap().unwrap().1, 45);
        let h = v2(1, 0x11, &[0u8; 12]);
        for cut in 1..h.len() {
            assert_eq!(parse(&h[..cut]), Ok(None), "{cut}");
        }
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(Error::Missing));
        assert_eq!(parse(b"\x16\x03\x01"), Err(Error::Missing));
        assert_eq!(parse(&[b'P'; 200]), Err(Error::Missing));
        let long = [&b"PROXY TCP4 "[..], &[b'1'; 120]].concat();
        assert_eq!(parse(&long), Err(Error::V1));
    }
}
