//! The server name of a TLS ClientHello, read without terminating TLS: for routing a
//! tcp listener's connections by SNI while their bytes pass untouched.
//!
//! Only the first TLS record is read (at most [`MAX_RECORD`] bytes): every ClientHello
//! seen in practice fits in one, post-quantum key shares included.

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// A TLS record's header and its largest plaintext body (RFC 8446 5.1).
const HEADER: usize = 5;
pub const MAX_RECORD: usize = 16_384;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("not a TLS handshake")]
    NotTls,
    #[error("malformed ClientHello")]
    Malformed,
    #[error("ClientHello record larger than 16 KiB")]
    TooLarge,
    #[error("the connection ended inside the ClientHello")]
    Truncated,
}

/// Reads `n` bytes off `b`, advancing it.
fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], Error> {
    if b.len() < n {
        return Err(Error::Malformed);
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

fn u8_len(b: &mut &[u8]) -> Result<usize, Error> {
    Ok(usize::from(take(b, 1)?[0]))
}

fn u16_len(b: &mut &[u8]) -> Result<usize, Error> {
    let x = take(b, 2)?;
    Ok(usize::from(u16::from_be_bytes([x[0], x[1]])))
}

/// How many bytes the first record takes (header included), once its header is in
/// `buf`; `Ok(None)` while fewer than 5 bytes are there.
pub fn record_len(buf: &[u8]) -> Result<Option<usize>, Error> {
    let Some(h) = buf.get(..HEADER) else {
        // A first byte that is not a handshake record tells at once.
        return match buf.first() {
            Some(&b) if b != 0x16 => Err(Error::NotTls),
            _ => Ok(None),
        };
    };
    if h[0] != 0x16 || h[1] != 0x03 {
        return Err(Error::NotTls);
    }
    let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
    if len > MAX_RECORD {
        return Err(Error::TooLarge);
    }
    Ok(Some(HEADER + len))
}

/// The server name of the ClientHello in `record` (one whole record, header
/// included); `Ok(None)` when it names none.
pub fn server_name(record: &[u8]) -> Result<Option<String>, Error> {
    let mut b = record.get(HEADER..).ok_or(Error::Malformed)?;
    // Handshake header: type 1 (ClientHello), 24-bit length within the record.
    let hs = take(&mut b, 4)?;
    if hs[0] != 1 {
        return Err(Error::NotTls);
    }
    let len = (usize::from(hs[1]) << 16) | (usize::from(hs[2]) << 8) | usize::from(hs[3]);
    let mut b = b.get(..len).ok_or(Error::Malformed)?;
    take(&mut b, 2 + 32)?; // legacy_version, random
    let n = u8_len(&mut b)?;
    take(&mut b, n)?; // session id
    let n = u16_len(&mut b)?;
    take(&mut b, n)?; // cipher suites
    let n = u8_len(&mut b)?;
    take(&mut b, n)?; // compression methods
    if b.is_empty() {
        return Ok(None); // no extensions
    }
    let n = u16_len(&mut b)?;
    let mut exts = take(&mut b, n)?;
    while !exts.is_empty() {
        let ty = u16_len(&mut exts)?;
        let n = u16_len(&mut exts)?;
        let mut body = take(&mut exts, n)?;
        if ty != 0 {
            continue;
        }
        let n = u16_len(&mut body)?;
        let mut list = take(&mut body, n)?;
        while !list.is_empty() {
            let kind = u8_len(&mut list)?;
            let n = u16_len(&mut list)?;
            let name = take(&mut list, n)?;
            if kind == 0 {
                let name = std::str::from_utf8(name).map_err(|_| Error::Malformed)?;
                let valid = !name.is_empty()
                    && name.len() <= 253
                    && name
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_');
                if !valid {
                    return Err(Error::Malformed);
                }
                return Ok(Some(name.trim_end_matches('.').to_ascii_lowercase()));
            }
        }
        return Ok(None);
    }
    Ok(None)
}

/// Reads the first TLS record off `stream` (the caller bounds the time), returning
/// its bytes (to be sent on first) and the server name it asks for.
pub async fn read(stream: &mut TcpStream) -> Result<(Vec<u8>, Option<String>), Error> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(total) = record_len(&buf)? {
            if buf.len() >= total {
                // Bytes past the record (a client that sent more at once) go on too.
                let name = server_name(&buf[..total])?;
                return Ok((buf, name));
            }
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| Error::Truncated)?;
        if n == 0 {
            return Err(Error::Truncated);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as rustls writes it, for `name`.
    fn hello(name: &str) -> Vec<u8> {
        use std::sync::Arc;
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut conn = rustls::ClientConnection::new(
            Arc::new(config),
            rustls::pki_types::ServerName::try_from(name.to_string()).unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn the_server_name_of_a_real_client_hello() {
        let h = hello("API.Example.com");
        let total = record_len(&h).unwrap().unwrap();
        assert_eq!(total, h.len());
        assert_eq!(server_name(&h).unwrap().as_deref(), Some("api.example.com"));
        // An address sends no SNI.
        let h = hello("192.0.2.1");
        assert_eq!(server_name(&h).unwrap(), None);
    }

    #[test]
    fn what_is_not_a_client_hello_is_refused() {
        assert_eq!(record_len(b"GET / HTTP/1.1\r\n"), Err(Error::NotTls));
        assert_eq!(record_len(b"G"), Err(Error::NotTls));
        assert_eq!(record_len(b"\x16\x03"), Ok(None));
        assert_eq!(
            record_len(&[0x16, 0x03, 0x01, 0x40, 0x01]),
            Err(Error::TooLarge)
        );
        let h = hello("a.example");
        for cut in HEADER..h.len() {
            // A record cut short (its length field fixed up) never parses past its end.
            let mut short = h[..cut].to_vec();
            let body = (cut - HEADER) as u16;
            short[3..5].copy_from_slice(&body.to_be_bytes());
            let _ = server_name(&short);
        }
        let mut bad = h.clone();
        bad[HEADER] = 2; // a ServerHello
        assert_eq!(server_name(&bad), Err(Error::NotTls));
    }
}
