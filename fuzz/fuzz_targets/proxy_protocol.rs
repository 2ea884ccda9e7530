//! PROXY protocol headers (v1 and v2) from arbitrary bytes: never a panic, and a
//! header that parses takes no more bytes than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((_, len))) = fulcrum::proxy_protocol::parse(data) {
        assert!(len <= data.len());
        // The same header alone parses to the same length.
        let again = fulcrum::proxy_protocol::parse(&data[..len]);
        assert!(matches!(again, Ok(Some((_, l))) if l == len));
    }
    let _ = fulcrum::proxy_protocol::parse_v1(data);
    let _ = fulcrum::proxy_protocol::parse_v2(data);
});
