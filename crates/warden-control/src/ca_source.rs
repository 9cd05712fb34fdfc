//! The control plane's own serving SVID when `[identity] source = "builtin-ca"`: issued by
//! the built-in CA in-process (no Workload API round trip) and re-issued before half-life, or
//! at once when the CA's trust state changes, so the served bundles follow it too.
//!
//! Like every source it delivers only complete, validated identities, never blocks the caller
//! of `start`, and never logs key material.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use warden_identity::{SourceEvent, SourceHandle, SpiffeId, SvidSource};

use crate::ca::BuiltinCa;

/// How long to wait before retrying after the CA failed to issue (it should not fail; if it
/// does, the previous identity stays in force until it expires).
const RETRY: Duration = Duration::from_secs(1);

/// Issues `spiffe_id` from the built-in CA and keeps it fresh.
#[derive(Debug, Clone)]
pub struct BuiltinCaSource {
    pub ca: Arc<BuiltinCa>,
    pub spiffe_id: SpiffeId,
    pub ttl: Duration,
}

impl BuiltinCaSource {
    pub fn new(ca: Arc<BuiltinCa>, spiffe_id: SpiffeId, ttl: Duration) -> Self {
        Self { ca, spiffe_id, ttl }
    }
}

impl SvidSource for BuiltinCaSource {
    fn name(&self) -> &'static str {
        "builtin-ca"
    }

    fn start(self: Box<Self>) -> SourceHandle {
        let (tx, rx) = mpsc::channel(4);
        let task = tokio::spawn(async move { self.run(tx).await });
        SourceHandle::new(rx, task)
    }
}

impl BuiltinCaSource {
    async fn run(self: Box<Self>, tx: mpsc::Sender<SourceEvent>) {
        let mut trust = self.ca.watch_trust();
        trust.borrow_and_update();
        loop {
            let ca = self.ca.clone();
            let (id, ttl) = (self.spiffe_id.clone(), self.ttl);
            // Key generation and signing are CPU work; keep them off the async workers.
            let issued = tokio::task::spawn_blocking(move || ca.identity_for(&id, ttl)).await;
            let (event, next) = match issued {
                Ok(Ok(identity)) => {
                    let lifetime = identity
                        .not_after()
                        .duration_since(identity.not_before())
                        .unwrap_or_default();
                    let refresh = identity.not_before() + lifetime.mul_f64(0.45);
                    (SourceEvent::Updated(Arc::new(identity)), refresh)
                }
                Ok(Err(e)) => (
                    SourceEvent::Unavailable {
                        reason: format!("built-in CA: {e}"),
                    },
                    SystemTime::now() + RETRY,
                ),
                Err(join) => (
                    SourceEvent::Unavailable {
                        reason: format!("built-in CA: {join}"),
                    },
                    SystemTime::now() + RETRY,
                ),
            };
            if tx.send(event).await.is_err() {
                return;
            }
            let wait = next
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                changed = trust.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = tx.closed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_identity::TrustDomain;

    #[tokio::test]
    async fn delivers_and_rotates_before_expiry() {
        let dir = tempfile::tempdir().expect("tmp");
        let td = TrustDomain::new("example.org").expect("td");
        let ca = Arc::new(BuiltinCa::load_or_create(dir.path(), &td).expect("ca"));
        let id = SpiffeId::parse("spiffe://example.org/warden/control-plane").expect("id");
        let source = Box::new(BuiltinCaSource {
            ca,
            spiffe_id: id.clone(),
            ttl: Duration::from_secs(2),
        });
        let mut handle = source.start();
        let mut leaves = Vec::new();
        while leaves.len() < 3 {
            let event = tokio::time::timeout(Duration::from_secs(10), handle.events.recv())
                .await
                .expect("an event in time")
                .expect("source alive");
            match event {
                SourceEvent::Updated(identity) => {
                    assert_eq!(identity.spiffe_id(), &id);
                    let leaf = identity.leaf().expect("leaf").clone();
                    if let Some((_, previous_expiry)) = leaves.last() {
                        assert!(identity.not_after() >= *previous_expiry);
                    }
                    leaves.push((leaf, identity.not_after()));
                }
                other => panic!("unexpected event {other:?}"),
            }
        }
        assert_ne!(leaves[0].0, leaves[1].0);
        assert_ne!(leaves[1].0, leaves[2].0);
    }
}
