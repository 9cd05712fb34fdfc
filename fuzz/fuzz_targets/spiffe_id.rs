//! `SpiffeId::parse` on arbitrary text: never panics, and whatever it accepts is stable
//! (its normalized form parses again to itself) and splits into trust domain + path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_identity::{SpiffeId, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SpiffeId::parse(text) {
        let again = SpiffeId::parse(id.as_str()).expect("a normalized ID parses again");
        assert_eq!(again, id);
        assert!(id.as_str().starts_with("spiffe://"));
        let td = TrustDomain::new(id.trust_domain_name()).expect("its trust domain is valid");
        assert_eq!(td.as_str(), id.trust_domain_name());
    }
    let _ = TrustDomain::new(text);
});
