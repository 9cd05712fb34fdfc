//! The policies a sidecar enforces before and besides its control plane: what the config
//! file says (static rules), in force from start-up.

use std::collections::BTreeMap;

use warden_policy::PolicySnapshot;

use crate::config::SidecarConfig;

/// The policy a sidecar enforces from start-up until it knows its own SPIFFE ID: the static
/// allowlists (a listener without `allow` denies everyone). The last-known-good cache is
/// checked against that ID and put in force only then (`control::enforce_cache`), so a
/// cache written for another workload can never widen access.
pub fn initial_policy(config: &SidecarConfig) -> PolicySnapshot {
    static_policy(config)
}

/// The rules of the config file as a policy: each inbound listener's `allow` list and,
/// without a control plane, each outbound listener's `server_id` (the one upstream it may
/// reach). Under a control plane its policy decides outbound calls, and until it has
/// spoken none is allowed: static outbound rules are left out.
pub fn static_policy(config: &SidecarConfig) -> PolicySnapshot {
    let inbound: BTreeMap<_, _> = config
        .inbound
        .iter()
        .map(|l| (l.name.clone(), l.allow.clone()))
        .collect();
    let outbound: BTreeMap<_, _> = if !config.policy.control_plane.is_empty() {
        BTreeMap::new()
    } else {
        config
            .outbound
            .iter()
            .map(|l| {
                // A configured server_id is a workload ID, so it is always a valid exact
                // pattern; were it not, the listener would have no rule and deny.
                let rule = warden_policy::Pattern::exact(&l.server_id)
                    .into_iter()
                    .collect();
                (l.name.clone(), rule)
            })
            .collect()
    };
    PolicySnapshot::from_static(inbound, outbound)
}
