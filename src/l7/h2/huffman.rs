//! The Huffman code of HPACK (RFC 7541 Appendix B), and its decoder.

use std::sync::OnceLock;

/// Each octet's code, right-aligned (RFC 7541 Appendix B).
const CODES: [u32; 256] = [
    0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7, 0xfffffe8,
    0xffffea, 0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec, 0xfffffed,
    0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3, 0xffffff4,
    0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb, 0x14, 0x3f8,
    0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa, 0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18,
    0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb,
    0x3fc, 0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0,
    0x1ffc, 0x3ffc, 0x22, 0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26, 0x27, 0x6, 0x74, 0x75,
    0x28, 0x29, 0x2a, 0x7, 0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78, 0x79, 0x7a, 0x7b, 0x7ffe,
    0x7fc, 0x3ffd, 0x1ffd, 0xffffffc, 0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4,
    0x3fffd5, 0x7fffd9, 0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb,
    0x7fffdf, 0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3,
    0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef, 0x3fffda,
    0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde, 0x7fffea, 0x3fffdd,
    0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec, 0x1fffe0, 0x1fffe1, 0x3fffe0,
    0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef, 0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4,
    0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1, 0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7,
    0x7ffff2, 0x3fffe8, 0x1ffffec, 0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf,
    0x3ffffe5, 0xfffff1, 0x1ffffed, 0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7,
    0x7ffffe2, 0xfffff2, 0x1fffe4, 0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4,
    0x7ffffe5, 0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3,
    0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4, 0x3ffffeb,
    0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea, 0x7ffffeb,
    0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee,
];

/// The length of each octet's code in bits.
const LENGTHS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
];

/// End of string: 30 one bits, never valid inside a string.
const EOS: (u32, u8) = (0x3fff_ffff, 30);

/// The code as a binary tree: node `i` has its children at `nodes[i]`, each either
/// another node's index or a leaf (`LEAF | symbol`, symbol 256 being EOS).
const LEAF: u16 = 0x8000;
const EOS_SYMBOL: u16 = 256;

fn tree() -> Vec<[u16; 2]> {
    let mut nodes = vec![[0u16; 2]];
    let codes = CODES
        .iter()
        .zip(LENGTHS.iter())
        .map(|(&c, &l)| (c, l))
        .chain(std::iter::once(EOS));
    for (symbol, (code, len)) in codes.enumerate() {
        let mut at = 0usize;
        for i in (0..len).rev() {
            let bit = ((code >> i) & 1) as usize;
            if i == 0 {
                nodes[at][bit] = LEAF | symbol as u16;
            } else {
                if nodes[at][bit] == 0 {
                    nodes.push([0, 0]);
                    nodes[at][bit] = (nodes.len() - 1) as u16;
                }
                at = usize::from(nodes[at][bit]);
            }
        }
    }
    nodes
}

/// One step of the decoder: from a node of the tree, four bits in.
#[derive(Clone, Copy, Default)]
struct Step {
    /// The node reached.
    next: u8,
    /// A symbol completed on the way, if `EMITS` is set.
    symbol: u8,
    flags: u8,
}

const EMITS: u8 = 1;
/// EOS was reached: the string is invalid.
const FAILS: u8 = 2;

/// The tree as a state machine read four bits at a time (no code is shorter than
/// five bits, so each step completes one symbol at most), and which states may end a
/// string: those whose bits since the last symbol are at most seven ones (the
/// padding, RFC 7541 5.2).
struct Machine {
    steps: Vec<Step>,
    accepts: Vec<bool>,
}

fn machine() -> &'static Machine {
    static MACHINE: OnceLock<Machine> = OnceLock::new();
    MACHINE.get_or_init(|| {
        let nodes = tree();
        // A full binary tree with 257 leaves: 256 inner nodes, each fits a `u8`.
        assert_eq!(nodes.len(), 256);
        let mut steps = vec![Step::default(); nodes.len() * 16];
        for (n, step) in steps.iter_mut().enumerate() {
            let (node, nibble) = (n / 16, n % 16);
            let mut at = node;
            for i in (0..4).rev() {
                let child = nodes[at][(nibble >> i) & 1];
                if child & LEAF == 0 {
                    at = usize::from(child);
                    continue;
                }
                let symbol = child & !LEAF;
                if symbol == EOS_SYMBOL {
                    step.flags |= FAILS;
                    break;
                }
                step.flags |= EMITS;
                step.symbol = symbol as u8;
                at = 0;
            }
            step.next = at as u8;
        }
        // Depth and all-ones-ness of each node, from the root.
        let mut accepts = vec![false; nodes.len()];
        let mut at = 0usize;
        for _ in 0..=7 {
            accepts[at] = true;
            let child = nodes[at][1];
            if child & LEAF != 0 {
                break;
            }
            at = usize::from(child);
        }
        Machine { steps, accepts }
    })
}

/// Why a Huffman string is invalid (RFC 7541 5.2).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Invalid;

/// Decodes `src` onto the end of `dst`. The padding must be the most significant
/// bits of EOS, at most 7 of them; EOS itself is an error.
pub(crate) fn decode(src: &[u8], dst: &mut Vec<u8>) -> Result<(), Invalid> {
    let m = machine();
    dst.reserve(src.len() * 8 / 5);
    let mut state = 0usize;
    for &byte in src {
        for nibble in [byte >> 4, byte & 0xf] {
            let step = m.steps[state * 16 + usize::from(nibble)];
            if step.flags & FAILS != 0 {
                return Err(Invalid);
            }
            if step.flags & EMITS != 0 {
                dst.push(step.symbol);
            }
            state = usize::from(step.next);
        }
    }
    if !m.accepts[state] {
        return Err(Invalid);
    }
    Ok(())
}

/// Encodes `src` onto the end of `dst` (for tests of the decoder; fulcrum sends
/// strings as they are).
#[cfg(test)]
pub(crate) fn encode(src: &[u8], dst: &mut Vec<u8>) {
    let mut bits: u64 = 0;
    let mut n = 0u32;
    for &b in src {
        let len = u32::from(LENGTHS[usize::from(b)]);
        bits = (bits << len) | u64::from(CODES[usize::from(b)]);
        n += len;
        while n >= 8 {
            n -= 8;
            dst.push((bits >> n) as u8);
        }
    }
    if n > 0 {
        dst.push(((bits << (8 - n)) | (0xff >> n)) as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn decodes_the_examples_of_rfc_7541() {
        for (encoded, plain) in [
            ("f1e3 c2e5 f23a 6ba0 ab90 f4ff", "www.example.com"),
            ("a8eb 1064 9cbf", "no-cache"),
            ("25a8 49e9 5ba9 7d7f", "custom-key"),
            ("25a8 49e9 5bb8 e8b4 bf", "custom-value"),
            ("6402", "302"),
            ("aec3 771a 4b", "private"),
            (
                "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff",
                "Mon, 21 Oct 2013 20:13:21 GMT",
            ),
            (
                "9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3",
                "https://www.example.com",
            ),
        ] {
            let mut out = Vec::new();
            decode(&hex(encoded), &mut out).unwrap();
            assert_eq!(out, plain.as_bytes());
            let mut again = Vec::new();
            encode(plain.as_bytes(), &mut again);
            assert_eq!(again, hex(encoded));
        }
    }

    #[test]
    fn every_octet_comes_back() {
        let all: Vec<u8> = (0..=255).collect();
        let mut enc = Vec::new();
        encode(&all, &mut enc);
        let mut out = Vec::new();
        decode(&enc, &mut out).unwrap();
        assert_eq!(out, all);
    }

    #[test]
    fn bad_padding_and_eos_are_refused() {
        // "0" is 00000 (5 bits): padded with zeros instead of ones.
        assert_eq!(decode(&[0b0000_0000], &mut Vec::new()), Err(Invalid));
        // More than 7 bits of padding: a whole byte of ones after a symbol.
        assert_eq!(decode(&[0b0000_0111, 0xff], &mut Vec::new()), Err(Invalid));
        // EOS itself, 30 ones, padded.
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff], &mut Vec::new()),
            Err(Invalid)
        );
        // A well-padded "0".
        let mut out = Vec::new();
        decode(&[0b0000_0111], &mut out).unwrap();
        assert_eq!(out, b"0");
    }
}
