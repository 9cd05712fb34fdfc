//! `Pattern::parse` on arbitrary text: never panics; an accepted pattern round-trips through
//! its text form, and matching it against an arbitrary valid ID never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_identity::SpiffeId;
use warden_policy::Pattern;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Split at the first newline: a pattern and an ID to match it against.
    let (pattern, candidate) = text.split_once('\n').unwrap_or((text, text));
    if let Ok(p) = Pattern::parse(pattern) {
        let again = Pattern::parse(p.as_str()).expect("an accepted pattern parses again");
        assert_eq!(again.as_str(), p.as_str());
        if let Ok(id) = SpiffeId::parse(candidate) {
            let _ = p.matches(&id);
        }
    }
});
