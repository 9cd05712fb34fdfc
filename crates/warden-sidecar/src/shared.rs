//! The state every connection task of one sidecar shares (identity, policy in force,
//! registry of open connections, telemetry, limits and their permits), and the one way a
//! policy is put in force: store, then re-check every open connection.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;
use warden_identity::{IdentityStore, PeerCounts, SpiffeId};
use warden_policy::PolicySnapshot;

use crate::config::Limits;
use crate::registry::Registry;
use crate::telemetry::{PolicyOutcome, Telemetry};

/// State shared by every connection task.
pub(crate) struct Shared {
    pub identity: Arc<IdentityStore>,
    pub policy: ArcSwap<PolicySnapshot>,
    pub registry: Arc<Registry>,
    pub telemetry: Telemetry,
    pub limits: Limits,
    /// One per open connection (`limits.max_connections`).
    pub permits: Arc<Semaphore>,
    /// One per inbound connection still in its TLS handshake
    /// (`limits.max_pending_handshakes`).
    pub handshakes: Arc<Semaphore>,
    /// Inbound connections per peer SPIFFE ID (`limits.max_connections_per_peer`).
    pub per_peer: Arc<PeerCounts<SpiffeId>>,
    /// What L7 routes of a policy may name here.
    pub l7: L7Targets,
    /// Held while a policy is put in force, so a conditional update
    /// ([`Shared::apply_cached_policy`]) decides on the policy it replaces.
    pub policy_writer: std::sync::Mutex<()>,
}

/// The inbound `http` listeners and `[[jwt]]` issuers of this sidecar: a policy whose
/// routes name anything else is an error (never silently ignored), and is enforced as
/// "deny everything" like any other invalid policy.
#[derive(Debug, Default, Clone)]
pub(crate) struct L7Targets {
    pub http_listeners: std::collections::HashSet<String>,
    pub jwt_issuers: std::collections::HashSet<String>,
}

impl L7Targets {
    /// Why `policy`'s routes cannot be enforced by this sidecar, if they cannot.
    pub(crate) fn check(&self, policy: &PolicySnapshot) -> Result<(), String> {
        for (i, route) in policy.routes().iter().enumerate() {
            if !self.http_listeners.contains(&route.listener) {
                return Err(format!(
                    "route[{i}] names listener {:?}, which is not an inbound protocol = \"http\" listener of this sidecar",
                    route.listener
                ));
            }
            if let Some(users) = &route.users
                && !self.jwt_issuers.contains(&users.jwt)
            {
                return Err(format!(
                    "route[{i}] names [[jwt]] {:?}, which this sidecar does not configure",
                    users.jwt
                ));
            }
        }
        Ok(())
    }
}

/// What an accepted connection holds: its connection slot for its whole life and, inbound,
/// a handshake slot that `inbound::serve` drops as soon as the handshake has ended.
pub(crate) struct Permits {
    pub _connection: tokio::sync::OwnedSemaphorePermit,
    pub handshake: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Shared {
    pub(crate) fn apply_policy(&self, policy: PolicySnapshot, outcome: PolicyOutcome) -> usize {
        let _writer = self.lock_writer();
        self.put_in_force(policy, outcome)
    }

    /// Puts a cached policy in force unless the control plane's is already: a snapshot that
    /// arrived while the cache was read must not be replaced by the (older) cache. Whether
    /// it was applied.
    pub(crate) fn apply_cached_policy(&self, policy: PolicySnapshot) -> bool {
        let _writer = self.lock_writer();
        if self.policy.load().source() == warden_policy::PolicySource::ControlPlane {
            return false;
        }
        self.put_in_force(policy, PolicyOutcome::Applied);
        true
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, ()> {
        // Nothing is left half done by a panic under it (a unit).
        self.policy_writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put_in_force(&self, policy: PolicySnapshot, outcome: PolicyOutcome) -> usize {
        let (policy, outcome) = match self.l7.check(&policy) {
            Ok(()) => (policy, outcome),
            Err(why) => {
                tracing::error!(version = policy.version(), "{why}; denying everything");
                let deny =
                    PolicySnapshot::compile(None, policy.source()).with_version(policy.version());
                (deny, PolicyOutcome::Invalid)
            }
        };
        // Store first, then re-check: a connection registering concurrently either sees the
        // new policy in its own decision or is found by the re-check.
        self.policy.store(Arc::new(policy));
        let policy = self.policy.load();
        let revoked = self.registry.recheck(&policy);
        self.telemetry
            .policy_update(outcome, policy.version(), policy.source().as_str(), revoked);
        revoked
    }
}
