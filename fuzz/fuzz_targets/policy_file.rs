//! `parse_policy_file` (TOML or JSON, sniffed) on arbitrary text: never panics, and every
//! accepted policy compiles into a snapshot that can decide.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_policy::{Direction, PolicySnapshot, PolicySource, SpiffeId, parse_policy_file};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policies) = parse_policy_file(text) else {
        return;
    };
    let peer = SpiffeId::parse("spiffe://example.org/a").expect("id");
    for p in &policies {
        let snapshot = PolicySnapshot::compile(Some(p), PolicySource::ControlPlane);
        let _ = snapshot.decide(Direction::Inbound, "http", &peer);
    }
});
