//! HPACK (RFC 7541) for the client side of a backend connection.
//!
//! The encoder keeps no dynamic table: each field is an index of the static table or
//! a literal that is not indexed, its string sent as it is (no Huffman). It needs no
//! state, so a request's head is encoded by the request's own task without any lock,
//! and costs a few copies. The decoder is complete: dynamic table, size updates,
//! Huffman strings.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

use super::huffman;

/// RFC 7541 Appendix A.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Why a header block cannot be decoded: a connection error (COMPRESSION_ERROR).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Invalid(pub &'static str);

/// Appends an integer with an `n`-bit prefix, `first` holding the bits above it.
fn put_int(dst: &mut BytesMut, first: u8, n: u8, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        dst.put_u8(first | value as u8);
        return;
    }
    dst.put_u8(first | max as u8);
    value -= max;
    while value >= 128 {
        dst.put_u8((value % 128) as u8 | 0x80);
        value /= 128;
    }
    dst.put_u8(value as u8);
}

fn put_str(dst: &mut BytesMut, s: &[u8]) {
    put_int(dst, 0, 7, s.len());
    dst.extend_from_slice(s);
}

/// The static table's index of `name` (its first entry), if it has one, and whether
/// entries of that name carry values.
fn name_index(name: &[u8]) -> Option<(usize, bool)> {
    let i = match name {
        b":authority" => 1,
        b":method" => return Some((2, true)),
        b":path" => return Some((4, true)),
        b":scheme" => return Some((6, true)),
        b":status" => return Some((8, true)),
        b"accept-encoding" => return Some((16, true)),
        b"user-agent" => 58,
        b"accept" => 19,
        b"content-type" => 31,
        b"content-length" => 28,
        // Most other names are not in the table: names of fields fulcrum adds, and
        // custom ones, are ruled out by their first octet.
        [b'x', ..] | [] => return None,
        _ => STATIC.iter().position(|(n, _)| n.as_bytes() == name)? + 1,
    };
    Some((i, false))
}

/// Appends one field. A value of the static table is sent as its index; otherwise
/// the name is indexed where the static table has it, and the value is a literal
/// not indexed, or never indexed when `sensitive` (RFC 7541 6.2.3).
pub(crate) fn encode(dst: &mut BytesMut, name: &[u8], value: &[u8], sensitive: bool) {
    let index = name_index(name);
    if let Some((i, true)) = index {
        // Look at the entries of this name for its value.
        let mut j = i;
        while j <= STATIC.len() && STATIC[j - 1].0.as_bytes() == name {
            if STATIC[j - 1].1.as_bytes() == value {
                put_int(dst, 0x80, 7, j);
                return;
            }
            j += 1;
        }
    }
    let first = if sensitive { 0x10 } else { 0x00 };
    match index {
        Some((i, _)) => put_int(dst, first, 4, i),
        None => {
            dst.put_u8(first);
            put_str(dst, name);
        }
    }
    put_str(dst, value);
}

/// The decoder's dynamic table.
#[derive(Debug)]
pub(crate) struct Decoder {
    /// Newest first.
    table: VecDeque<(Bytes, Bytes)>,
    size: usize,
    /// The most the table may hold: what this side's SETTINGS allow (4,096 by default).
    max: usize,
    /// The limit announced with the last size update (at most `max`).
    limit: usize,
    /// Where Huffman strings are decoded.
    scratch: Vec<u8>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(4096)
    }
}

fn entry_size(name: &[u8], value: &[u8]) -> usize {
    name.len() + value.len() + 32
}

impl Decoder {
    pub(crate) fn new(max: usize) -> Decoder {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max,
            limit: max,
            scratch: Vec::new(),
        }
    }

    fn evict(&mut self) {
        while self.size > self.limit {
            match self.table.pop_back() {
                Some((n, v)) => self.size -= entry_size(&n, &v),
                None => break,
            }
        }
    }

    fn get(&self, index: usize) -> Result<(Bytes, Bytes), Invalid> {
        match index {
            0 => Err(Invalid("index 0")),
            i if i <= STATIC.len() => {
                let (n, v) = STATIC[i - 1];
                Ok((
                    Bytes::from_static(n.as_bytes()),
                    Bytes::from_static(v.as_bytes()),
                ))
            }
            i => self
                .table
                .get(i - STATIC.len() - 1)
                .cloned()
                .ok_or(Invalid("index beyond the tables")),
        }
    }

    fn insert(&mut self, name: &Bytes, value: &Bytes, block: &Bytes) {
        self.size += entry_size(name, value);
        // Strings that are slices of the block are copied out of the frame's buffer,
        // which the table would otherwise pin; the others (Huffman-decoded, or from
        // a table) are the table's already.
        let own = |s: &Bytes| {
            let (at, start) = (s.as_ptr() as usize, block.as_ptr() as usize);
            if !s.is_empty() && at >= start && at + s.len() <= start + block.len() {
                Bytes::copy_from_slice(s)
            } else {
                s.clone()
            }
        };
        self.table.push_front((own(name), own(value)));
        self.evict();
    }

    /// Decodes a whole header block, calling `field` for each field in order.
    pub(crate) fn decode(
        &mut self,
        block: &Bytes,
        mut field: impl FnMut(Bytes, Bytes),
    ) -> Result<(), Invalid> {
        let mut at = 0usize;
        let mut fields = false;
        while at < block.len() {
            let b = block[at];
            if b & 0x80 != 0 {
                let index = int(block, &mut at, 7)?;
                let (n, v) = self.get(index)?;
                field(n, v);
                fields = true;
            } else if b & 0x40 != 0 {
                let (n, v) = self.literal(block, &mut at, 6)?;
                self.insert(&n, &v, block);
                field(n, v);
                fields = true;
            } else if b & 0x20 != 0 {
                // A size update comes only at the start of a block (RFC 7541 4.2).
                if fields {
                    return Err(Invalid("table size update after a field"));
                }
                let size = int(block, &mut at, 5)?;
                if size > self.max {
                    return Err(Invalid("table size above the limit"));
                }
                self.limit = size;
                self.evict();
            } else {
                // Without indexing (0000) or never indexed (0001).
                let (n, v) = self.literal(block, &mut at, 4)?;
                field(n, v);
                fields = true;
            }
        }
        Ok(())
    }

    fn literal(&mut self, block: &Bytes, at: &mut usize, n: u8) -> Result<(Bytes, Bytes), Invalid> {
        let index = int(block, at, n)?;
        let name = if index == 0 {
            string(block, at, &mut self.scratch)?
        } else {
            self.get(index)?.0
        };
        let value = string(block, at, &mut self.scratch)?;
        Ok((name, value))
    }

    /// Entries in the dynamic table (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.len()
    }
}

/// An integer with an `n`-bit prefix at `block[*at]`.
fn int(block: &[u8], at: &mut usize, n: u8) -> Result<usize, Invalid> {
    let max = (1usize << n) - 1;
    let first = usize::from(*block.get(*at).ok_or(Invalid("truncated integer"))?) & max;
    *at += 1;
    if first < max {
        return Ok(first);
    }
    let mut value = max;
    let mut shift = 0u32;
    loop {
        let b = *block.get(*at).ok_or(Invalid("truncated integer"))?;
        *at += 1;
        // Nothing here needs more than 28 bits.
        if shift > 21 {
            return Err(Invalid("integer too large"));
        }
        value += usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
}

/// A string literal at `block[*at]`: a slice of the block, or decoded Huffman.
fn string(block: &Bytes, at: &mut usize, scratch: &mut Vec<u8>) -> Result<Bytes, Invalid> {
    let huffman = block.get(*at).ok_or(Invalid("truncated string"))? & 0x80 != 0;
    let len = int(block, at, 7)?;
    let end = at
        .checked_add(len)
        .filter(|&e| e <= block.len())
        .ok_or(Invalid("string beyond the block"))?;
    let raw = &block[*at..end];
    let s = if huffman {
        // Decoded into a buffer kept for it, then copied once at its exact size.
        scratch.clear();
        huffman::decode(raw, scratch).map_err(|_| Invalid("bad Huffman string"))?;
        Bytes::copy_from_slice(scratch)
    } else {
        block.slice(*at..end)
    };
    *at = end;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Bytes {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect::<Vec<u8>>()
            .into()
    }

    fn fields(d: &mut Decoder, block: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        d.decode(&hex(block), |n, v| {
            out.push((
                String::from_utf8(n.to_vec()).unwrap(),
                String::from_utf8(v.to_vec()).unwrap(),
            ))
        })
        .unwrap();
        out
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn decodes_the_request_examples_of_rfc_7541_with_huffman() {
        // C.4: three requests on one connection, the dynamic table carried along.
        let mut d = Decoder::default();
        assert_eq!(
            fields(&mut d, "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ])
        );
        assert_eq!(d.size, 57);
        assert_eq!(
            fields(&mut d, "8286 84be 5886 a8eb 1064 9cbf"),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache"),
            ])
        );
        assert_eq!(
            fields(
                &mut d,
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"
            ),
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ])
        );
        assert_eq!(d.len(), 3);
        assert_eq!(d.size, 164);
    }

    #[test]
    fn decodes_the_response_examples_of_rfc_7541_with_eviction() {
        // C.6: a table of 256 octets, entries evicted as new ones come.
        let mut d = Decoder::new(256);
        assert_eq!(
            fields(
                &mut d,
                "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 \
                 82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3"
            ),
            pairs(&[
                (":status", "302"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ])
        );
        assert_eq!(d.size, 222);
        assert_eq!(
            fields(&mut d, "4883 640e ffc1 c0bf"),
            pairs(&[
                (":status", "307"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ])
        );
        assert_eq!(d.size, 222);
        assert_eq!(d.len(), 4);
    }

    #[test]
    fn what_the_encoder_writes_the_decoder_reads() {
        let mut block = BytesMut::new();
        let sent = [
            (":method", "GET", false),
            (":method", "PATCH", false),
            (":scheme", "https", false),
            (":path", "/a/b?c=d", false),
            (":authority", "example.com", false),
            ("x-request-id", "0123456789abcdef", true),
            ("content-length", "0", false),
            ("accept-encoding", "gzip, deflate", false),
            ("a-long-name-that-no-table-has", &"v".repeat(300), false),
        ];
        for (n, v, s) in sent {
            encode(&mut block, n.as_bytes(), v.as_bytes(), s);
        }
        // Indexed: GET, https, and the accept-encoding pair are one octet each.
        assert_eq!(block[0], 0x82);
        let mut d = Decoder::default();
        let mut got = Vec::new();
        d.decode(&block.freeze(), |n, v| got.push((n, v))).unwrap();
        assert_eq!(got.len(), sent.len());
        for ((n, v), (sn, sv, _)) in got.iter().zip(sent) {
            assert_eq!((&n[..], &v[..]), (sn.as_bytes(), sv.as_bytes()));
        }
        // Nothing was indexed on the way.
        assert_eq!(d.len(), 0);
    }

    #[test]
    fn bad_blocks_are_refused() {
        for (block, why) in [
            ("80", "index 0"),
            ("be", "index beyond the tables"),
            ("ff", "truncated integer"),
            ("ff ff ff ff ff ff 7f", "integer too large"),
            ("04 05 61", "string beyond the block"),
            ("00 01 61 81 00", "bad Huffman string"),
            ("82 3f e1 1f", "table size update after a field"),
            ("3f e2 1f", "table size above the limit"),
        ] {
            let mut d = Decoder::default();
            assert_eq!(
                d.decode(&hex(block), |_, _| {}),
                Err(Invalid(why)),
                "{block}"
            );
        }
    }

    #[test]
    fn a_size_update_evicts() {
        let mut d = Decoder::default();
        fields(&mut d, "4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf");
        assert_eq!(d.len(), 1);
        // Size 0: the table empties; then the entry is gone.
        fields(&mut d, "20");
        assert_eq!(d.len(), 0);
        assert_eq!(
            d.decode(&hex("be"), |_, _| {}),
            Err(Invalid("index beyond the tables"))
        );
    }
}
