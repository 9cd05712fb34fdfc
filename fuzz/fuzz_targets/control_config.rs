//! `ControlPlaneConfig::from_toml` on arbitrary text: never panics, and every error names a
//! key (the control plane's config goes through the same front-end as the sidecar's).
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_control::ControlPlaneConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = ControlPlaneConfig::from_toml("fuzz.toml", text) {
        assert!(!e.key.is_empty(), "an error without a key: {e}");
        let _ = e.to_string();
    }
});
