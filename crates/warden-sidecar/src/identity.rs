//! The sidecar's own identity over time: SVIDs from the source go into the store, and the
//! first SVID (or one with another SPIFFE ID) is when the last-known-good policy cache can
//! be checked against who this sidecar is.

use std::sync::Arc;

use warden_identity::{SourceEvent, SvidSource};
use warden_policy::PolicySnapshot;

use crate::shared::Shared;
use crate::telemetry::PolicyOutcome;

/// Moves identities from the source into the store, logging each rotation. Never logs key
/// material: `Identity`'s Debug has none.
///
/// The first SVID, and any later one with another SPIFFE ID, is when the policy cache can be
/// checked against who this sidecar is; that happens before the SVID is installed, so no
/// handshake is served under a policy that has not been checked.
pub(crate) async fn follow_identity(
    source: Box<dyn SvidSource>,
    shared: Arc<Shared>,
    cache: Option<std::path::PathBuf>,
) {
    let name = source.name();
    let mut handle = source.start();
    let mut checked_for: Option<warden_identity::SpiffeId> = None;
    while let Some(event) = handle.events.recv().await {
        match event {
            SourceEvent::Updated(identity) => {
                let expires = humantime::format_rfc3339_seconds(identity.not_after());
                tracing::info!(source = name, spiffe_id = %identity.spiffe_id(), %expires, "SVID loaded");
                if let Some(path) = &cache
                    && checked_for.as_ref() != Some(identity.spiffe_id())
                {
                    if checked_for.is_some()
                        && shared.policy.load().source() == warden_policy::PolicySource::Cache
                    {
                        // The cache in force was checked for the previous ID: deny until
                        // the control plane speaks, unless a cache for the new ID exists.
                        shared.apply_policy(PolicySnapshot::deny_all(), PolicyOutcome::Applied);
                    }
                    crate::control::enforce_cache(&shared, path, identity.spiffe_id());
                    checked_for = Some(identity.spiffe_id().clone());
                }
                shared.telemetry.svid_loaded(name, &identity);
                shared.identity.set(identity);
            }
            SourceEvent::Rejected { reason } => {
                tracing::warn!(source = name, %reason, "new SVID rejected; keeping the previous one");
                shared.telemetry.svid_rejected(name, &reason.to_string());
            }
            SourceEvent::Unavailable { reason } => {
                tracing::warn!(source = name, %reason, "SVID source unavailable");
            }
        }
    }
}
