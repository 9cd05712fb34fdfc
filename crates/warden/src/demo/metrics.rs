//! Reads a sidecar's live metrics (the same registry its `/metrics` endpoint serves) to show
//! what each sidecar decided, in the demo's own words.

use warden_sidecar::Sidecar;

use crate::top::parse_line;

/// The sum of `name` samples whose labels include every `(key, value)` in `want`.
pub fn sum(sidecar: &Sidecar, name: &str, want: &[(&str, &str)]) -> u64 {
    let Ok(text) = sidecar.telemetry().metrics().encode() else {
        return 0;
    };
    text.lines()
        .filter_map(parse_line)
        .filter(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value.max(0.0) as u64)
        .sum()
}

/// Peer identities this sidecar has allowed in on `direction`.
pub fn allowed_peers(sidecar: &Sidecar, direction: &str) -> Vec<String> {
    let Ok(text) = sidecar.telemetry().metrics().encode() else {
        return Vec::new();
    };
    let mut peers: Vec<String> = text
        .lines()
        .filter_map(parse_line)
        .filter(|s| {
            s.name == "warden_authz_decisions_total"
                && s.value > 0.0
                && s.labels.get("direction").map(String::as_str) == Some(direction)
                && s.labels.get("decision").map(String::as_str) == Some("allow")
        })
        .filter_map(|s| s.labels.get("peer_id").cloned())
        .collect();
    peers.sort();
    peers.dedup();
    peers
}

pub fn denials(sidecar: &Sidecar, direction: &str) -> u64 {
    sum(
        sidecar,
        "warden_authz_decisions_total",
        &[("direction", direction), ("decision", "deny")],
    )
}

pub fn handshake_failures(sidecar: &Sidecar, result: &str) -> u64 {
    sum(
        sidecar,
        "warden_tls_handshakes_total",
        &[("direction", "inbound"), ("result", result)],
    )
}
