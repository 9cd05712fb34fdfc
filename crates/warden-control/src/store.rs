//! The durable policy store: every workload's current policy and its full history, and the
//! feed of changes the control plane pushes to sidecars.
//!
//! Behind the [`PolicyStore`] trait, with two backends: [`RedbStore`] (embedded, one file in
//! `data_dir`, the default: one replica) and [`EtcdStore`] (etcd v3, shared by several
//! replicas). Versions are store revisions: one counter over the whole store, so a version is
//! monotonic per workload and across workloads, and compare-and-set compares the workload's
//! current version (0: no policy yet).
//!
//! The change feed ([`PolicyStore::changes`]) is how every replica learns of every write,
//! its own included: each change once, in revision order, without gaps. Quarantines and
//! releases are writes too, in the same revision order and on the same feed.

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::mpsc;
use warden_identity::SpiffeId;
use warden_policy::WorkloadPolicy;

mod etcd;
mod redb;

pub use self::etcd::{EtcdStore, StoredCa};
pub use self::redb::RedbStore;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("version conflict: expected version {expected}, current version is {actual}")]
    VersionConflict { expected: u64, actual: u64 },
    #[error("no policy for {0}")]
    NotFound(String),
    #[error("policy store: {0}")]
    Backend(String),
    /// The store is there but cannot serve (etcd without quorum, unreachable members). The
    /// text names the store: `policy store etcd (https://…): …`.
    #[error("{0}")]
    Unavailable(String),
    /// A write was sent and no member answered whether it was applied: it may yet be (etcd
    /// applies it if the member that took it still reaches a quorum). Read before retrying.
    #[error("{0}")]
    Indeterminate(String),
    /// The change feed cannot continue from where it was: the store dropped the revisions
    /// in between (etcd compaction). The reader must reload the current state.
    #[error(
        "{store}: change feed compacted: revision {next} is gone (compacted to {compacted_to})"
    )]
    Compacted {
        store: String,
        next: u64,
        compacted_to: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Put,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Put => "put",
            Action::Delete => "delete",
        }
    }
}

/// One change, as kept forever in the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub version: u64,
    pub at_unix_ms: u64,
    pub admin: String,
    pub action: Action,
    /// The policy after the change; `None` for a deletion.
    pub policy: Option<WorkloadPolicy>,
}

/// An identity in quarantine (`warden policy quarantine`, or an anomaly's response).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantined {
    pub spiffe_id: String,
    /// The store revision of the quarantine.
    pub version: u64,
    pub at_unix_ms: u64,
    /// The admin, or the control plane itself for an automatic response.
    pub by: String,
    pub reason: String,
}

/// A quarantine or a release, as kept in the identity's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineEvent {
    pub version: u64,
    pub at_unix_ms: u64,
    pub by: String,
    /// `false`: put in quarantine; `true`: released.
    pub released: bool,
    pub reason: String,
}

/// One write, as the change feed delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A workload's policy was put (`policy` is the policy after it) or deleted (`None`).
    Policy {
        /// The revision of the write (the policy's version for a put).
        revision: u64,
        workload: SpiffeId,
        policy: Option<WorkloadPolicy>,
    },
    /// An identity was put in quarantine or released: the list is read again
    /// ([`PolicyStore::quarantined`]); the feed says only that it changed, and when.
    Quarantine { revision: u64 },
}

impl Change {
    pub fn revision(&self) -> u64 {
        match self {
            Change::Policy { revision, .. } | Change::Quarantine { revision } => *revision,
        }
    }
}

/// The change feed: `Ok` changes in revision order; an `Err` ends it (read the state again,
/// then ask for a new feed).
pub type ChangeFeed = mpsc::Receiver<Result<Change, StoreError>>;

/// A policy store. Versions are store revisions: one counter over all workloads, bumped
/// by every write, so versions are monotonic per workload and across the store.
#[tonic::async_trait]
pub trait PolicyStore: Send + Sync + 'static {
    /// What the store is, for logs and errors: `embedded (…/policy.redb)`, `etcd (https://…)`.
    fn describe(&self) -> String;
    /// Writes `policy`, stamping version, admin and time. With `expected`, only if the
    /// workload's current version equals it (0 = no policy yet).
    async fn put(
        &self,
        policy: WorkloadPolicy,
        expected: Option<u64>,
        admin: &SpiffeId,
        now_ms: u64,
    ) -> Result<WorkloadPolicy, StoreError>;
    /// Deletes the workload's policy; returns the revision of the deletion.
    async fn delete(
        &self,
        id: &SpiffeId,
        expected: Option<u64>,
        admin: &SpiffeId,
        now_ms: u64,
    ) -> Result<u64, StoreError>;
    async fn get(&self, id: &SpiffeId) -> Result<Option<WorkloadPolicy>, StoreError> {
        Ok(self.get_at(id).await?.0)
    }
    /// The workload's policy and the store revision the read saw: every change up to that
    /// revision is reflected, none after it.
    async fn get_at(&self, id: &SpiffeId) -> Result<(Option<WorkloadPolicy>, u64), StoreError>;
    async fn list(&self) -> Result<Vec<WorkloadPolicy>, StoreError>;
    async fn history(&self, id: &SpiffeId) -> Result<Vec<HistoryEntry>, StoreError>;
    /// The latest revision of the whole store.
    async fn revision(&self) -> Result<u64, StoreError>;
    /// Every change with a revision above `after`, in revision order, as they happen.
    async fn changes(&self, after: u64) -> Result<ChangeFeed, StoreError>;

    /// Puts `id` in quarantine, or releases it (`release`), durably, with who and why;
    /// returns the store revision of the change, which is also on the change feed.
    /// Quarantining an identity already in quarantine changes nothing and returns its
    /// revision; releasing one that is not is `NotFound`.
    async fn set_quarantine(
        &self,
        id: &SpiffeId,
        release: bool,
        by: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<u64, StoreError>;

    /// Every identity in quarantine, and the revision of the last quarantine or release (0:
    /// none ever), from one read.
    async fn quarantined(&self) -> Result<(Vec<Quarantined>, u64), StoreError>;

    /// Every quarantine and release of `id`, oldest first.
    async fn quarantine_history(&self, id: &SpiffeId) -> Result<Vec<QuarantineEvent>, StoreError>;
}
