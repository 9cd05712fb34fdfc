//! Fan-out: one `tokio::sync::watch` channel per watched workload, fed from the store's
//! change feed. Every write reaches the channels this way, whichever replica made it, so a
//! sidecar watching any replica sees every write to the shared store.
//!
//! Ordering without gaps: the feed delivers changes in revision order; each channel
//! remembers the revision its current snapshot reflects (`as_of`) and takes only later
//! changes, so it never goes back. A channel is created from a read of the store (policy and
//! the revision the read saw) while holding the same lock the feeder takes for each change:
//! changes the read already reflects are skipped, later ones are applied, none is lost.
//!
//! The quarantine list goes into every snapshot: a quarantine or release is pushed to every
//! channel at once ([`Fanout::set_quarantine`]), with the store revision of that change as
//! the snapshot's version when it is the latest. The feed carries each quarantine change
//! (its revision only): the feeder reads the list again and pushes it, so a quarantine made
//! through any replica reaches the sidecars of every replica. The replica that made it
//! also pushes it at once, without waiting for the feed; a list is taken only when it is
//! newer than the one in place, so the second push of the same change does nothing.

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

/// The identities in quarantine and the revision of the last quarantine or release.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct QuarantineList {
    pub ids: Vec<String>,
    pub revision: u64,
}

pub(crate) fn snapshot_of(
    policy: Option<&WorkloadPolicy>,
    revision: u64,
    quarantine: &QuarantineList,
) -> Snapshot {
    let version = policy.map(|p| p.version).unwrap_or(revision);
    Arc::new(pb::PolicySnapshot {
        present: policy.is_some(),
        policy: policy.map(convert::to_proto),
        version: version.max(quarantine.revision),
        quarantined: quarantine.ids.clone(),
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
    quarantine: QuarantineList,
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
        let quarantine = read_quarantine(store.as_ref()).await?;
        let feed = store.changes(revision).await?;
        let channels = Arc::new(Mutex::new(Channels {
            applied: revision,
            quarantine,
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
        let (tx, rx) = watch::channel(snapshot_of(policy.as_ref(), as_of, &channels.quarantine));
        channels
            .by_workload
            .insert(id.clone(), Channel { tx, as_of });
        Ok(rx)
    }

    /// Puts a new quarantine list in every snapshot, now. A list no newer than the one in
    /// place (a slower concurrent change, or the feed bringing a change already pushed) is
    /// ignored.
    pub(crate) async fn set_quarantine(&self, list: QuarantineList) {
        set_quarantine(&mut *self.channels.lock().await, list);
    }
}

fn set_quarantine(channels: &mut Channels, list: QuarantineList) {
    if list.revision <= channels.quarantine.revision {
        return;
    }
    for ch in channels.by_workload.values() {
        let current = ch.tx.borrow().clone();
        let mut next = (*current).clone();
        next.quarantined = list.ids.clone();
        next.version = next.version.max(list.revision);
        ch.tx.send_replace(Arc::new(next));
    }
    channels.quarantine = list;
}

/// The store's quarantine list, as the snapshots carry it.
async fn read_quarantine(store: &dyn PolicyStore) -> Result<QuarantineList, StoreError> {
    let (quarantined, revision) = store.quarantined().await?;
    Ok(QuarantineList {
        ids: quarantined.into_iter().map(|q| q.spiffe_id).collect(),
        revision,
    })
}

/// Applies a policy change to its workload's channel, if watched and newer.
fn apply(
    channels: &mut Channels,
    revision: u64,
    workload: &SpiffeId,
    policy: Option<&WorkloadPolicy>,
) {
    channels.applied = channels.applied.max(revision);
    if let Some(ch) = channels.by_workload.get_mut(workload)
        && revision > ch.as_of
    {
        ch.as_of = revision;
        ch.tx
            .send_replace(snapshot_of(policy, revision, &channels.quarantine));
    }
}

/// Brings every channel up to the store's current state (after the feed lost its place)
/// and returns the revision to follow the feed from: read before the channels are, so
/// every change after it is either in a channel's read or still to come on the new feed.
async fn resync(store: &dyn PolicyStore, channels: &Mutex<Channels>) -> Result<u64, StoreError> {
    let from = store.revision().await?;
    let mut guard = channels.lock().await;
    let channels = &mut *guard;
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
                Some(p) => {
                    current.present && current.policy.as_ref().map(|c| c.version) == Some(p.version)
                }
            };
            if !same {
                ch.tx
                    .send_replace(snapshot_of(policy.as_ref(), as_of, &channels.quarantine));
            }
            ch.as_of = as_of;
        }
    }
    channels.applied = channels.applied.max(from);
    let quarantine = read_quarantine(store).await?;
    set_quarantine(channels, quarantine);
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
                Some(Ok(Change::Policy {
                    revision,
                    workload,
                    policy,
                })) => apply(
                    &mut *channels.lock().await,
                    revision,
                    &workload,
                    policy.as_ref(),
                ),
                Some(Ok(Change::Quarantine { revision })) => {
                    // The list as of this change or later; a failed read is a lost place
                    // in the feed like any other (reload, then follow again).
                    match read_quarantine(store.as_ref()).await {
                        Ok(list) => {
                            let mut guard = channels.lock().await;
                            guard.applied = guard.applied.max(revision);
                            set_quarantine(&mut guard, list);
                        }
                        Err(e) => break e.to_string(),
                    }
                }
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
