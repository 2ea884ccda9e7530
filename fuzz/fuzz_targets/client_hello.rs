//! The ClientHello reader a tcp listener routes by: any first record is a server
//! name, no name, or a reason to close; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(total)) = fulcrum::l4::sni::record_len(data) {
        if let Some(record) = data.get(..total) {
            if let Ok(Some(name)) = fulcrum::l4::sni::server_name(record) {
                assert!(!name.is_empty() && name.len() <= 253);
            }
        }
    }
    let _ = fulcrum::l4::sni::server_name(data);
});
