//! `SidecarConfig::from_toml` on arbitrary text: never panics, and every error names a key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_sidecar::SidecarConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = SidecarConfig::from_toml("fuzz.toml", text) {
        assert!(!e.key.is_empty(), "an error without a key: {e}");
        let _ = e.to_string();
    }
});
