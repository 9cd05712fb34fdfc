//! The durable policy store: every workload's current policy and its full history.
//!
//! Behind the [`PolicyStore`] trait so a replicated backend (etcd, Raft) can replace the
//! embedded one for HA. The embedded backend is redb: a pure-Rust, single-file ACID store
//! whose commits are fsync'd before they return (`Durability::Immediate`), so a write the
//! API has acknowledged survives `kill -9` and power loss. SQLite would do the same job but
//! brings a C library and a second build system; redb keeps the build pure cargo.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use warden_identity::SpiffeId;
use warden_policy::WorkloadPolicy;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("version conflict: expected version {expected}, current version is {actual}")]
    VersionConflict { expected: u64, actual: u64 },
    #[error("no policy for {0}")]
    NotFound(String),
    #[error("policy store: {0}")]
    Backend(String),
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
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

/// A policy store. Versions are store revisions: one counter over all workloads, bumped
/// by every write, so versions are monotonic per workload and across the store.
pub trait PolicyStore: Send + Sync + 'static {
    /// Writes `policy`, stamping version, admin and time. With `expected`, only if the
    /// workload's current version equals it (0 = no policy yet).
    fn put(
        &self,
        policy: WorkloadPolicy,
        expected: Option<u64>,
        admin: &SpiffeId,
        now_ms: u64,
    ) -> Result<WorkloadPolicy, StoreError>;
    /// Deletes the workload's policy; returns the revision of the deletion.
    fn delete(
        &self,
        id: &SpiffeId,
        expected: Option<u64>,
        admin: &SpiffeId,
        now_ms: u64,
    ) -> Result<u64, StoreError>;
    fn get(&self, id: &SpiffeId) -> Result<Option<WorkloadPolicy>, StoreError>;
    fn list(&self) -> Result<Vec<WorkloadPolicy>, StoreError>;
    fn history(&self, id: &SpiffeId) -> Result<Vec<HistoryEntry>, StoreError>;
    /// The latest revision of the whole store.
    fn revision(&self) -> Result<u64, StoreError>;
}

const POLICIES: TableDefinition<&str, &[u8]> = TableDefinition::new("policies");
const HISTORY: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("history");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";

/// The embedded store: one redb file in `data_dir`.
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(backend)?;
        // Create the tables up front so that reads never meet a missing table.
        let txn = db.begin_write().map_err(backend)?;
        txn.open_table(POLICIES).map_err(backend)?;
        txn.open_table(HISTORY).map_err(backend)?;
        txn.open_table(META).map_err(backend)?;
        txn.commit().map_err(backend)?;
        Ok(Self { db })
    }

    fn write(
        &self,
        id: &SpiffeId,
        expected: Option<u64>,
        entry: impl FnOnce(u64) -> HistoryEntry,
    ) -> Result<HistoryEntry, StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        let entry = {
            let mut policies = txn.open_table(POLICIES).map_err(backend)?;
            let mut meta = txn.open_table(META).map_err(backend)?;
            let current = match policies.get(id.as_str()).map_err(backend)? {
                Some(bytes) => Some(decode_policy(bytes.value())?.version),
                None => None,
            };
            if let Some(expected) = expected
                && current.unwrap_or(0) != expected
            {
                return Err(StoreError::VersionConflict {
                    expected,
                    actual: current.unwrap_or(0),
                });
            }
            let revision = meta
                .get(REVISION)
                .map_err(backend)?
                .map(|v| v.value())
                .unwrap_or(0)
                + 1;
            let entry = entry(revision);
            match &entry.policy {
                Some(policy) => {
                    let bytes = serde_json::to_vec(policy).map_err(backend)?;
                    policies
                        .insert(id.as_str(), bytes.as_slice())
                        .map_err(backend)?;
                }
                None => {
                    if current.is_none() {
                        return Err(StoreError::NotFound(id.to_string()));
                    }
                    policies.remove(id.as_str()).map_err(backend)?;
                }
            }
            let mut history = txn.open_table(HISTORY).map_err(backend)?;
            let bytes = serde_json::to_vec(&entry).map_err(backend)?;
            history
                .insert((id.as_str(), revision), bytes.as_slice())
                .map_err(backend)?;
            meta.insert(REVISION, revision).map_err(backend)?;
            entry
        };
        // redb's default durability is Immediate: commit returns after fsync.
        txn.commit().map_err(backend)?;
        Ok(entry)
    }
}

fn decode_policy(bytes: &[u8]) -> Result<WorkloadPolicy, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Backend(format!("corrupt policy record: {e}")))
}

impl PolicyStore for RedbStore {
    fn put(
        &self,
        mut policy: WorkloadPolicy,
        expected: Option<u64>,
        admin: &SpiffeId,
        now_ms: u64,
    ) -> Result<WorkloadPolicy, StoreError> {
        let id = policy.spiffe_id.clone();
        let entry = self.write(&id, expected, |revision| {
            policy.version = revision;
            policy.updated_by = Some(admin.to_string());
            policy.updated_at_unix_ms = Some(now_ms);
            HistoryEntry {
                version: revision,
                at_unix_ms: now_ms,
                admin: admin.to_string(),
                action: Action::Put,
                policy: Some(policy),
            }
        })?;
        entry
            .policy
            .ok_or_else(|| StoreError::Backend("put recorded no policy".into()))
    }

    fn delete(
        &self,
        id: &SpiffeId,
        expected: Option<u64>,
        admin: &SpiffeId,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let entry = self.write(id, expected, |revision| HistoryEntry {
            version: revision,
            at_unix_ms: now_ms,
            admin: admin.to_string(),
            action: Action::Delete,
            policy: None,
        })?;
        Ok(entry.version)
    }

    fn get(&self, id: &SpiffeId) -> Result<Option<WorkloadPolicy>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(POLICIES).map_err(backend)?;
        match table.get(id.as_str()).map_err(backend)? {
            Some(bytes) => Ok(Some(decode_policy(bytes.value())?)),
            None => Ok(None),
        }
    }

    fn list(&self) -> Result<Vec<WorkloadPolicy>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(POLICIES).map_err(backend)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(backend)? {
            let (_, bytes) = row.map_err(backend)?;
            out.push(decode_policy(bytes.value())?);
        }
        Ok(out)
    }

    fn history(&self, id: &SpiffeId) -> Result<Vec<HistoryEntry>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(HISTORY).map_err(backend)?;
        let mut out = Vec::new();
        for row in table
            .range((id.as_str(), 0)..=(id.as_str(), u64::MAX))
            .map_err(backend)?
        {
            let (_, bytes) = row.map_err(backend)?;
            out.push(
                serde_json::from_slice(bytes.value())
                    .map_err(|e| StoreError::Backend(format!("corrupt history record: {e}")))?,
            );
        }
        Ok(out)
    }

    fn revision(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(META).map_err(backend)?;
        Ok(table
            .get(REVISION)
            .map_err(backend)?
            .map(|v| v.value())
            .unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(p: &str) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://example.org{p}")).expect("id")
    }

    fn policy(p: &str) -> WorkloadPolicy {
        let mut w = WorkloadPolicy::new(id(p));
        w.inbound.insert(
            "http".into(),
            vec![warden_policy::Pattern::parse("spiffe://example.org/a").expect("pattern")],
        );
        w
    }

    #[test]
    fn puts_are_versioned_stamped_and_kept_in_history() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = RedbStore::open(&dir.path().join("s.redb")).expect("open");
        let admin = id("/admin");
        let a1 = store.put(policy("/w"), None, &admin, 10).expect("put");
        assert_eq!(a1.version, 1);
        assert_eq!(a1.updated_by.as_deref(), Some("spiffe://example.org/admin"));
        let b1 = store.put(policy("/v"), None, &admin, 11).expect("put");
        assert_eq!(b1.version, 2);
        let a2 = store
            .put(policy("/w"), Some(1), &admin, 12)
            .expect("cas put");
        assert_eq!(a2.version, 3);
        let del = store.delete(&id("/w"), None, &admin, 13).expect("delete");
        assert_eq!(del, 4);
        let h = store.history(&id("/w")).expect("history");
        assert_eq!(
            h.iter().map(|e| (e.version, e.action)).collect::<Vec<_>>(),
            vec![(1, Action::Put), (3, Action::Put), (4, Action::Delete)]
        );
        assert!(store.get(&id("/w")).expect("get").is_none());
        assert_eq!(store.list().expect("list").len(), 1);
        assert_eq!(store.revision().expect("rev"), 4);
    }

    #[test]
    fn compare_and_set_rejects_stale_versions() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = RedbStore::open(&dir.path().join("s.redb")).expect("open");
        let admin = id("/admin");
        store
            .put(policy("/w"), Some(0), &admin, 1)
            .expect("create with expected 0");
        let err = store
            .put(policy("/w"), Some(0), &admin, 2)
            .expect_err("exists already");
        assert!(matches!(
            err,
            StoreError::VersionConflict {
                expected: 0,
                actual: 1
            }
        ));
        let err = store
            .delete(&id("/w"), Some(7), &admin, 3)
            .expect_err("stale delete");
        assert!(matches!(
            err,
            StoreError::VersionConflict {
                expected: 7,
                actual: 1
            }
        ));
        let err = store
            .delete(&id("/nope"), None, &admin, 4)
            .expect_err("missing");
        assert!(matches!(err, StoreError::NotFound(_)));
        // Failed writes consume no revision.
        assert_eq!(store.revision().expect("rev"), 1);
    }

    #[test]
    fn data_survives_reopening() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("s.redb");
        {
            let store = RedbStore::open(&path).expect("open");
            store
                .put(policy("/w"), None, &id("/admin"), 1)
                .expect("put");
        }
        let store = RedbStore::open(&path).expect("reopen");
        assert_eq!(
            store.get(&id("/w")).expect("get").map(|p| p.version),
            Some(1)
        );
        assert_eq!(store.history(&id("/w")).expect("h").len(), 1);
    }
}
