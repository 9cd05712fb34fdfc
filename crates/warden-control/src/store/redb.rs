//! The embedded store: one redb file in `data_dir`. redb is a pure-Rust, single-file ACID
//! store whose commits are fsync'd before they return (`Durability::Immediate`), so a write
//! the API has acknowledged survives `kill -9` and power loss. SQLite would do the same job
//! but brings a C library and a second build system; redb keeps the build pure cargo.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use warden_identity::SpiffeId;
use warden_policy::WorkloadPolicy;

use tokio::sync::mpsc;

use super::{
    Action, Change, ChangeFeed, HistoryEntry, PolicyStore, QuarantineEvent, Quarantined, StoreError,
};

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

const POLICIES: TableDefinition<&str, &[u8]> = TableDefinition::new("policies");
const HISTORY: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("history");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";
/// Identities in quarantine, and every quarantine and release (on the change feed as
/// [`Change::Quarantine`], which carries no more than the revision).
const QUARANTINE: TableDefinition<&str, &[u8]> = TableDefinition::new("quarantine");
const QUARANTINE_HISTORY: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("quarantine_history");
const QUARANTINE_REVISION: &str = "quarantine_revision";

/// The embedded store: one redb file in `data_dir`. Its calls run on tokio's blocking pool.
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    db: Database,
    /// Held from a write's start until its change is on the feed, so the feed is in commit
    /// order (redb serializes the transactions, not what follows their commit).
    writing: Mutex<()>,
    feed: Mutex<Option<mpsc::Sender<Result<Change, StoreError>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Both critical sections leave nothing half-done on a panic (a unit, an Option swap).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RedbStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            inner: Arc::new(Inner::open(path)?),
        })
    }

    /// Runs `f` on the blocking pool (redb's calls block on disk I/O and fsync).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }
}

impl Inner {
    fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(backend)?;
        // Create the tables up front so that reads never meet a missing table.
        let txn = db.begin_write().map_err(backend)?;
        txn.open_table(POLICIES).map_err(backend)?;
        txn.open_table(HISTORY).map_err(backend)?;
        txn.open_table(META).map_err(backend)?;
        txn.open_table(QUARANTINE).map_err(backend)?;
        txn.open_table(QUARANTINE_HISTORY).map_err(backend)?;
        txn.commit().map_err(backend)?;
        Ok(Self {
            path: path.to_owned(),
            db,
            writing: Mutex::new(()),
            feed: Mutex::new(None),
        })
    }

    fn write(
        &self,
        id: &SpiffeId,
        expected: Option<u64>,
        entry: impl FnOnce(u64) -> HistoryEntry,
    ) -> Result<HistoryEntry, StoreError> {
        let _writing = lock(&self.writing);
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
        self.publish(Change::Policy {
            revision: entry.version,
            workload: id.clone(),
            policy: entry.policy.clone(),
        });
        Ok(entry)
    }

    /// Puts a committed change on the feed. Called with `writing` held, so the feed is in
    /// commit order. Blocks only while the reader is 1,024 changes behind; a reader that is
    /// gone is simply not fed.
    fn publish(&self, change: Change) {
        let feed = lock(&self.feed).clone();
        if let Some(feed) = feed
            && feed.blocking_send(Ok(change)).is_err()
        {
            *lock(&self.feed) = None;
        }
    }
}

fn decode_policy(bytes: &[u8]) -> Result<WorkloadPolicy, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Backend(format!("corrupt policy record: {e}")))
}

impl Inner {
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

    /// The policy and the revision, from one read transaction.
    fn get_at(&self, id: &SpiffeId) -> Result<(Option<WorkloadPolicy>, u64), StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(POLICIES).map_err(backend)?;
        let policy = match table.get(id.as_str()).map_err(backend)? {
            Some(bytes) => Some(decode_policy(bytes.value())?),
            None => None,
        };
        let meta = txn.open_table(META).map_err(backend)?;
        let revision = meta
            .get(REVISION)
            .map_err(backend)?
            .map(|v| v.value())
            .unwrap_or(0);
        Ok((policy, revision))
    }

    /// Starts a new feed (replacing any previous one) with the changes after `after` already
    /// in it, taken from the history under the write lock so none falls in between.
    fn changes(&self, after: u64) -> Result<ChangeFeed, StoreError> {
        let _writing = lock(&self.writing);
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(HISTORY).map_err(backend)?;
        let mut missed = Vec::new();
        for row in table.iter().map_err(backend)? {
            let (key, bytes) = row.map_err(backend)?;
            let (workload, version) = key.value();
            if version > after {
                let entry: HistoryEntry = serde_json::from_slice(bytes.value())
                    .map_err(|e| StoreError::Backend(format!("corrupt history record: {e}")))?;
                let workload = SpiffeId::parse(workload)
                    .map_err(|e| StoreError::Backend(format!("corrupt history key: {e}")))?;
                missed.push(Change::Policy {
                    revision: entry.version,
                    workload,
                    policy: entry.policy,
                });
            }
        }
        // Quarantines: the feed says only that the list changed, so the last one will do.
        let quarantine_revision = txn
            .open_table(META)
            .map_err(backend)?
            .get(QUARANTINE_REVISION)
            .map_err(backend)?
            .map_or(0, |v| v.value());
        if quarantine_revision > after {
            missed.push(Change::Quarantine {
                revision: quarantine_revision,
            });
        }
        missed.sort_by_key(Change::revision);
        let (tx, rx) = mpsc::channel(1024.max(missed.len() + 1));
        for change in missed {
            // Cannot fail: the channel has room for all of them and the receiver is here.
            let _ = tx.try_send(Ok(change));
        }
        *lock(&self.feed) = Some(tx);
        Ok(rx)
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

    fn set_quarantine(
        &self,
        id: &SpiffeId,
        release: bool,
        by: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let _writing = lock(&self.writing);
        let txn = self.db.begin_write().map_err(backend)?;
        let revision = {
            let mut table = txn.open_table(QUARANTINE).map_err(backend)?;
            let current: Option<Quarantined> =
                match table.get(id.as_str()).map_err(backend)? {
                    Some(bytes) => Some(serde_json::from_slice(bytes.value()).map_err(|e| {
                        StoreError::Backend(format!("corrupt quarantine record: {e}"))
                    })?),
                    None => None,
                };
            match (&current, release) {
                // Already in quarantine: nothing to write.
                (Some(q), false) => return Ok(q.version),
                (None, true) => return Err(StoreError::NotFound(id.to_string())),
                _ => {}
            }
            let mut meta = txn.open_table(META).map_err(backend)?;
            let revision = meta
                .get(REVISION)
                .map_err(backend)?
                .map(|v| v.value())
                .unwrap_or(0)
                + 1;
            if release {
                table.remove(id.as_str()).map_err(backend)?;
            } else {
                let record = Quarantined {
                    spiffe_id: id.to_string(),
                    version: revision,
                    at_unix_ms: now_ms,
                    by: by.to_owned(),
                    reason: reason.to_owned(),
                };
                let bytes = serde_json::to_vec(&record).map_err(backend)?;
                table
                    .insert(id.as_str(), bytes.as_slice())
                    .map_err(backend)?;
            }
            let event = QuarantineEvent {
                version: revision,
                at_unix_ms: now_ms,
                by: by.to_owned(),
                released: release,
                reason: reason.to_owned(),
            };
            let bytes = serde_json::to_vec(&event).map_err(backend)?;
            txn.open_table(QUARANTINE_HISTORY)
                .map_err(backend)?
                .insert((id.as_str(), revision), bytes.as_slice())
                .map_err(backend)?;
            meta.insert(REVISION, revision).map_err(backend)?;
            meta.insert(QUARANTINE_REVISION, revision)
                .map_err(backend)?;
            revision
        };
        txn.commit().map_err(backend)?;
        self.publish(Change::Quarantine { revision });
        Ok(revision)
    }

    fn quarantined(&self) -> Result<(Vec<Quarantined>, u64), StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(QUARANTINE).map_err(backend)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(backend)? {
            let (_, bytes) = row.map_err(backend)?;
            out.push(
                serde_json::from_slice(bytes.value())
                    .map_err(|e| StoreError::Backend(format!("corrupt quarantine record: {e}")))?,
            );
        }
        let meta = txn.open_table(META).map_err(backend)?;
        let revision = meta
            .get(QUARANTINE_REVISION)
            .map_err(backend)?
            .map(|v| v.value())
            .unwrap_or(0);
        Ok((out, revision))
    }

    fn quarantine_history(&self, id: &SpiffeId) -> Result<Vec<QuarantineEvent>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(QUARANTINE_HISTORY).map_err(backend)?;
        let mut out = Vec::new();
        for row in table
            .range((id.as_str(), 0)..=(id.as_str(), u64::MAX))
            .map_err(backend)?
        {
            let (_, bytes) = row.map_err(backend)?;
            out.push(
                serde_json::from_slice(bytes.value())
                    .map_err(|e| StoreError::Backend(format!("corrupt quarantine event: {e}")))?,
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

#[tonic::async_trait]
impl PolicyStore for RedbStore {
    fn describe(&self) -> String {
        format!("embedded ({})", self.inner.path.display())
    }

    async fn put(
        &self,
        policy: WorkloadPolicy,
        expected: Option<u64>,
        admin: &SpiffeId,
        now_ms: u64,
    ) -> Result<WorkloadPolicy, StoreError> {
        let admin = admin.clone();
        self.blocking(move |s| s.put(policy, expected, &admin, now_ms))
            .await
    }

    async fn delete(
        &self,
        id: &SpiffeId,
        expected: Option<u64>,
        admin: &SpiffeId,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let (id, admin) = (id.clone(), admin.clone());
        self.blocking(move |s| s.delete(&id, expected, &admin, now_ms))
            .await
    }

    async fn get_at(&self, id: &SpiffeId) -> Result<(Option<WorkloadPolicy>, u64), StoreError> {
        let id = id.clone();
        self.blocking(move |s| s.get_at(&id)).await
    }

    async fn list(&self) -> Result<Vec<WorkloadPolicy>, StoreError> {
        self.blocking(|s| s.list()).await
    }

    async fn history(&self, id: &SpiffeId) -> Result<Vec<HistoryEntry>, StoreError> {
        let id = id.clone();
        self.blocking(move |s| s.history(&id)).await
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        self.blocking(|s| s.revision()).await
    }

    async fn changes(&self, after: u64) -> Result<ChangeFeed, StoreError> {
        self.blocking(move |s| s.changes(after)).await
    }

    async fn set_quarantine(
        &self,
        id: &SpiffeId,
        release: bool,
        by: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let (id, by, reason) = (id.clone(), by.to_owned(), reason.to_owned());
        self.blocking(move |s| s.set_quarantine(&id, release, &by, &reason, now_ms))
            .await
    }

    async fn quarantined(&self) -> Result<(Vec<Quarantined>, u64), StoreError> {
        self.blocking(|s| s.quarantined()).await
    }

    async fn quarantine_history(&self, id: &SpiffeId) -> Result<Vec<QuarantineEvent>, StoreError> {
        let id = id.clone();
        self.blocking(move |s| s.quarantine_history(&id)).await
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

    #[tokio::test]
    async fn puts_are_versioned_stamped_and_kept_in_history() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = RedbStore::open(&dir.path().join("s.redb")).expect("open");
        let admin = id("/admin");
        let a1 = store
            .put(policy("/w"), None, &admin, 10)
            .await
            .expect("put");
        assert_eq!(a1.version, 1);
        assert_eq!(a1.updated_by.as_deref(), Some("spiffe://example.org/admin"));
        let b1 = store
            .put(policy("/v"), None, &admin, 11)
            .await
            .expect("put");
        assert_eq!(b1.version, 2);
        let a2 = store
            .put(policy("/w"), Some(1), &admin, 12)
            .await
            .expect("cas put");
        assert_eq!(a2.version, 3);
        let del = store
            .delete(&id("/w"), None, &admin, 13)
            .await
            .expect("delete");
        assert_eq!(del, 4);
        let h = store.history(&id("/w")).await.expect("history");
        assert_eq!(
            h.iter().map(|e| (e.version, e.action)).collect::<Vec<_>>(),
            vec![(1, Action::Put), (3, Action::Put), (4, Action::Delete)]
        );
        assert!(store.get(&id("/w")).await.expect("get").is_none());
        assert_eq!(store.list().await.expect("list").len(), 1);
        assert_eq!(store.revision().await.expect("rev"), 4);
    }

    #[tokio::test]
    async fn compare_and_set_rejects_stale_versions() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = RedbStore::open(&dir.path().join("s.redb")).expect("open");
        let admin = id("/admin");
        store
            .put(policy("/w"), Some(0), &admin, 1)
            .await
            .expect("create with expected 0");
        let err = store
            .put(policy("/w"), Some(0), &admin, 2)
            .await
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
            .await
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
            .await
            .expect_err("missing");
        assert!(matches!(err, StoreError::NotFound(_)));
        // Failed writes consume no revision.
        assert_eq!(store.revision().await.expect("rev"), 1);
    }

    #[tokio::test]
    async fn quarantine_is_durable_versioned_and_kept_in_history() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("s.redb");
        let admin = id("/admin");
        {
            let store = RedbStore::open(&path).expect("open");
            store.put(policy("/w"), None, &admin, 1).await.expect("put");
            let v = store
                .set_quarantine(&id("/x"), false, admin.as_str(), "probing", 2)
                .await
                .expect("quarantine");
            assert_eq!(v, 2, "one revision counter with the policies");
            // Again: nothing written, the same version.
            let again = store
                .set_quarantine(&id("/x"), false, admin.as_str(), "again", 3)
                .await
                .expect("idempotent");
            assert_eq!(again, 2);
            let err = store
                .set_quarantine(&id("/y"), true, admin.as_str(), "", 3)
                .await
                .expect_err("not quarantined");
            assert!(matches!(err, StoreError::NotFound(_)));
        }
        let store = RedbStore::open(&path).expect("reopen");
        let (list, rev) = store.quarantined().await.expect("list");
        assert_eq!(rev, 2);
        assert_eq!(list.len(), 1);
        assert_eq!(
            (list[0].spiffe_id.as_str(), list[0].reason.as_str()),
            ("spiffe://example.org/x", "probing")
        );
        let v = store
            .set_quarantine(&id("/x"), true, admin.as_str(), "false alarm", 4)
            .await
            .expect("release");
        assert_eq!(v, 3);
        assert_eq!(store.quarantined().await.expect("list"), (Vec::new(), 3));
        let h = store.quarantine_history(&id("/x")).await.expect("history");
        assert_eq!(
            h.iter()
                .map(|e| (e.version, e.released))
                .collect::<Vec<_>>(),
            vec![(2, false), (3, true)]
        );
        assert_eq!(h[1].by, admin.as_str());
        assert_eq!(store.revision().await.expect("rev"), 3);
    }

    #[tokio::test]
    async fn data_survives_reopening() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("s.redb");
        {
            let store = RedbStore::open(&path).expect("open");
            store
                .put(policy("/w"), None, &id("/admin"), 1)
                .await
                .expect("put");
        }
        let store = RedbStore::open(&path).expect("reopen");
        assert_eq!(
            store.get(&id("/w")).await.expect("get").map(|p| p.version),
            Some(1)
        );
        assert_eq!(store.history(&id("/w")).await.expect("h").len(), 1);
    }

    #[tokio::test]
    async fn the_change_feed_replays_what_it_missed_then_follows_in_order() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = RedbStore::open(&dir.path().join("s.redb")).expect("open");
        let admin = id("/admin");
        store.put(policy("/w"), None, &admin, 1).await.expect("put");
        store.put(policy("/v"), None, &admin, 2).await.expect("put");
        // Asked from revision 1: the write at 2 is replayed, then live writes follow.
        let mut feed = store.changes(1).await.expect("feed");
        store
            .delete(&id("/w"), None, &admin, 3)
            .await
            .expect("delete");
        store
            .put(policy("/v"), Some(2), &admin, 4)
            .await
            .expect("put");
        store
            .set_quarantine(&id("/v"), false, admin.as_str(), "probing", 5)
            .await
            .expect("quarantine");
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(feed.recv().await.expect("open").expect("change"));
        }
        assert_eq!(
            seen.iter()
                .map(|c| match c {
                    Change::Policy {
                        revision,
                        workload,
                        policy,
                    } => (*revision, workload.to_string(), Some(policy.is_some())),
                    Change::Quarantine { revision } => (*revision, "quarantine".to_owned(), None),
                })
                .collect::<Vec<_>>(),
            vec![
                (2, "spiffe://example.org/v".to_owned(), Some(true)),
                (3, "spiffe://example.org/w".to_owned(), Some(false)),
                (4, "spiffe://example.org/v".to_owned(), Some(true)),
                (5, "quarantine".to_owned(), None),
            ]
        );
        let (p, at) = store.get_at(&id("/v")).await.expect("get_at");
        assert_eq!((p.map(|p| p.version), at), (Some(4), 5));
        // A feed asked from before the quarantine replays it; from after, nothing.
        let mut replay = store.changes(4).await.expect("feed");
        assert_eq!(
            replay.try_recv().ok().and_then(Result::ok),
            Some(Change::Quarantine { revision: 5 })
        );
        let mut none = store.changes(5).await.expect("feed");
        assert!(none.try_recv().is_err(), "nothing after revision 5");
    }
}
