//! The one stable hash fulcrum derives names and placements from: the consistent-hash
//! ring's points and keys, sticky cookie values, TLS configuration fingerprints and
//! client addresses. It must give the same value on every machine and in every
//! version, so that instances behind ECMP agree.

/// A stable 64-bit hash (FNV-1a, then a finalising mix for good spread), the same on
/// every machine and in every version.
pub(crate) fn hash_bytes(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::hash_bytes;

    #[test]
    fn the_hash_is_stable() {
        // Fixed values: a change here changes every instance's ring and cookies.
        assert_eq!(hash_bytes(b""), hash_bytes(b""));
        assert_ne!(hash_bytes(b"a"), hash_bytes(b"b"));
        assert_eq!(hash_bytes(b"backend-a"), 0x30fb157bf5695a01);
    }
}
