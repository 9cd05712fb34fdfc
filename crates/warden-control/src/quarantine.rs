//! Quarantine: an identity denied everywhere until released. Written to the store (durable,
//! with who and why, in the identity's history), then pushed at once into every watcher's
//! snapshot, where every sidecar refuses it inbound and its own sidecar refuses all its
//! outbound calls; each sidecar's re-check closes the open connections.
//!
//! Orders come from admins (`Quarantine`, `Release`) and from the anomaly rules when
//! `[anomaly] response = "quarantine"` (through [`respond`]).

use std::sync::Arc;

use tokio::sync::{Mutex, mpsc};
use warden_identity::SpiffeId;

use crate::audit::{AuditEvent, WriteAction, WriteResult};
use crate::fanout::{Fanout, QuarantineList};
use crate::store::{PolicyStore, Quarantined, StoreError};

/// The longest reason kept (the rest is cut): it is free text an admin wrote.
pub const MAX_REASON: usize = 512;

/// An automatic quarantine asked for by the anomaly rules.
#[derive(Debug, Clone)]
pub struct Order {
    pub spiffe_id: SpiffeId,
    pub reason: String,
}

pub struct Quarantines {
    store: Arc<dyn PolicyStore>,
    fanout: Arc<Fanout>,
    /// One change at a time, so the list pushed is the one the store has after it.
    order: Mutex<()>,
}

/// `reason` as kept: printable, at most [`MAX_REASON`] characters.
pub fn bounded_reason(raw: &str) -> String {
    raw.chars()
        .take(MAX_REASON)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

impl Quarantines {
    pub(crate) fn new(store: Arc<dyn PolicyStore>, fanout: Arc<Fanout>) -> Self {
        Self {
            store,
            fanout,
            order: Mutex::new(()),
        }
    }

    /// Quarantines `id` (or releases it), then pushes the new list to every watcher.
    /// Returns the store revision of the change.
    pub async fn set(
        &self,
        id: &SpiffeId,
        release: bool,
        by: &str,
        reason: &str,
    ) -> Result<u64, StoreError> {
        let _one = self.order.lock().await;
        let reason = bounded_reason(reason);
        let now = crate::policy_service::now_ms();
        let action = WriteAction::quarantine(release);
        let version = self
            .store
            .set_quarantine(id, release, by, &reason, now)
            .await
            .inspect_err(|_| crate::metrics::METRICS.policy_write(action, WriteResult::Error))?;
        crate::metrics::METRICS.policy_write(action, WriteResult::Ok);
        let (list, revision) = self.store.quarantined().await?;
        self.fanout
            .set_quarantine(QuarantineList {
                ids: list.into_iter().map(|q| q.spiffe_id).collect(),
                revision,
            })
            .await;
        let event = AuditEvent::quarantine(release).as_str();
        tracing::warn!(target: "warden::audit", event, spiffe_id = %id, by, reason = %reason, version, "identity {}", if release { "released from quarantine" } else { "quarantined" });
        Ok(version)
    }

    pub async fn list(&self) -> Result<Vec<Quarantined>, StoreError> {
        Ok(self.store.quarantined().await?.0)
    }
}

/// Carries out the anomaly rules' quarantine orders, one at a time, as `by()` (the control
/// plane's own identity). Runs until the sender side is dropped.
pub async fn respond(
    quarantines: Arc<Quarantines>,
    mut orders: mpsc::Receiver<Order>,
    by: impl Fn() -> String + Send,
) {
    while let Some(order) = orders.recv().await {
        if let Err(e) = quarantines
            .set(&order.spiffe_id, false, &by(), &order.reason)
            .await
        {
            tracing::error!(spiffe_id = %order.spiffe_id, error = %e, "anomaly response: cannot quarantine");
        }
    }
}
