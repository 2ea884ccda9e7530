//! The config loader: any text, as `fulcrum check` would read it, gives a validated
//! config or errors, never a panic. Paths in the text resolve under a directory that
//! does not exist, and host names are not resolved while fuzzing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("/nonexistent-fulcrum-fuzz/fulcrum.toml");
    match fulcrum::config::Config::parse(text, path) {
        Ok(config) => {
            let _ = config.summary();
        }
        Err(errors) => {
            let _ = errors.to_string();
        }
    }
});
