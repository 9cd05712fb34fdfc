//! Fan-out: one `tokio::sync::watch` channel per watched workload, fed from the store's
//! change feed. Every write reaches the channels this way, whichever replica made it, so a
//! sidecar watching any replica sees every write to the shared store.
//!
//! Ordering without gaps: the feed delivers changes in revision order; each channel
//! remembers the revision its current snapshot reflects (`as_of`) and takes only later
//! changes, so it never goes back. A channel is created from a read of the store (policy and
//! the revision the read saw) while holding the same lock the feeder takes for each change:
//! changes the read already reflects are skipped, later ones are applied, none is lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use warden_identity::SpiffeId;
use warden_policy::WorkloadPolicy;
use warden_policy::wire as convert;
use warden_proto::control::v1 as pb;

use crate::store::{Change, PolicyStore, StoreError};

pub(crate) type Snapshot = Arc<pb::PolicySnapshot>;

pub(crate) fn snapshot_of(policy: Option<&WorkloadPolicy>, revision: u64) -> Snapshot {
    Arc::new(pb::PolicySnapshot {
        present: policy.is_some(),
        policy: policy.map(convert::to_proto),
        version: policy.map(|p| p.version).unwrap_or(revision),
        quarantined: Vec::new(),
    })
}

struct Channel {
    tx: watch::Sender<Snapshot>,
    /// The store revision the current snapshot reflects.
    as_of: u64,
}

#[derive(Default)]
struct Channels {
    by_workload: HashMap<SpiffeId, Channel>,
    /// The last revision taken from the feed.
    applied: u64,
}

/// The watch channels and the task that feeds them. Dropping it stops the task.
pub(crate) struct Fanout {
    store: Arc<dyn PolicyStore>,
    channels: Arc<Mutex<Channels>>,
    feeder: JoinHandle<()>,
}

impl Drop for Fanout {
    fn drop(&mut self) {
        self.feeder.abort();
    }
}

impl Fanout {
    /// Starts following the store from its current revision.
    pub(crate) async fn start(store: Arc<dyn PolicyStore>) -> Result<Self, StoreError> {
        let revision = store.revision().await?;
        let feed = store.changes(revision).await?;
        let channels = Arc::new(Mutex::new(Channels {
            applied: revision,
            ..Channels::default()
        }));
        let feeder = tokio::spawn(feed_loop(store.clone(), channels.clone(), feed));
        Ok(Self {
            store,
            channels,
            feeder,
        })
    }

    /// A receiver of `id`'s snapshots, starting with its current one.
    pub(crate) async fn subscribe(
        &self,
        id: &SpiffeId,
    ) -> Result<watch::Receiver<Snapshot>, StoreError> {
        let mut channels = self.channels.lock().await;
        if let Some(ch) = channels.by_workload.get(id) {
            return Ok(ch.tx.subscribe());
        }
        // Read under the lock: the feeder cannot apply a change meanwhile, and every change
        // it applies later is checked against `as_of`.
        let (policy, as_of) = self.store.get_at(id).await?;
        let (tx, rx) = watch::channel(snapshot_of(policy.as_ref(), as_of));
        channels
            .by_workload
            .insert(id.clone(), Channel { tx, as_of });
        Ok(rx)
    }
}

fn apply(channels: &mut Channels, change: Change) {
    channels.applied = channels.applied.max(change.revision);
    if let Some(ch) = channels.by_workload.get_mut(&change.workload)
        && change.revision > ch.as_of
    {
        ch.as_of = change.revision;
        ch.tx
            .send_replace(snapshot_of(change.policy.as_ref(), change.revision));
    }
}

/// Brings every channel up to the store's current state (after the feed lost its place)
/// and returns the revision to follow the feed from: read before the channels are, so
/// every change after it is either in a channel's read or still to come on the new feed.
async fn resync(store: &dyn PolicyStore, channels: &Mutex<Channels>) -> Result<u64, StoreError> {
    let from = store.revision().await?;
    let mut channels = channels.lock().await;
    let ids: Vec<SpiffeId> = channels.by_workload.keys().cloned().collect();
    for id in ids {
        let (policy, as_of) = store.get_at(&id).await?;
        if let Some(ch) = channels.by_workload.get_mut(&id)
            && as_of > ch.as_of
        {
            let current = ch.tx.borrow().clone();
            // Only a real change is pushed: "still no policy" at a later revision is not.
            let same = match &policy {
                None => !current.present,
                Some(p) => current.present && current.version == p.version,
            };
            if !same {
                ch.tx.send_replace(snapshot_of(policy.as_ref(), as_of));
            }
            ch.as_of = as_of;
        }
    }
    channels.applied = channels.applied.max(from);
    Ok(from)
}

async fn feed_loop(
    store: Arc<dyn PolicyStore>,
    channels: Arc<Mutex<Channels>>,
    mut feed: crate::store::ChangeFeed,
) {
    loop {
        let ended = loop {
            match feed.recv().await {
                Some(Ok(change)) => apply(&mut *channels.lock().await, change),
                Some(Err(e)) => break e.to_string(),
                None => break "the change feed closed".to_owned(),
            }
        };
        tracing::error!(store = %store.describe(), reason = %ended, "policy change feed interrupted; reloading the watched policies");
        // Reload, then follow again from what the reload saw; retry until the store answers.
        loop {
            let restarted = async {
                let from = resync(store.as_ref(), &channels).await?;
                store.changes(from).await
            };
            match restarted.await {
                Ok(f) => {
                    feed = f;
                    break;
                }
                Err(e) => {
                    tracing::warn!(store = %store.describe(), error = %e, "cannot follow the policy store yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}
