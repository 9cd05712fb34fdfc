//! The etcd store: several control-plane replicas share one etcd v3 cluster.
//!
//! Keys, under the configured prefix `P`:
//! - `P/policies/<spiffe id>`: the policy (JSON). Its version is the key's `mod_revision`,
//!   the revision of the transaction that wrote it, so versions are etcd revisions: one
//!   counter over the store, as with the embedded backend.
//! - `P/history/<spiffe id>#<random>`: one key per change, written once in the same
//!   transaction as the policy and never changed or removed (history is kept forever). Its
//!   version is the key's `create_revision`. `#` cannot occur in a SPIFFE ID, so one
//!   workload's history never matches the prefix of another's.
//! - `P/ca/<trust domain>`: the built-in CA's root certificate and key (JSON), created once
//!   by whichever replica starts first.
//! - `P/quarantined/<spiffe id>`: an identity in quarantine (JSON: who, why, when); its
//!   revision is the key's `mod_revision`. Released = removed.
//! - `P/quarantine-history/<spiffe id>#<random>`: one key per quarantine or release, written
//!   once in the same transaction, like the policy history.
//! - `P/quarantine-revision`: rewritten (empty) by every quarantine and release, so its
//!   `mod_revision` is the revision of the last one, and the change feed (a watch on all of
//!   `P/`) sees each of them in revision order among the policy writes.
//!
//! Compare-and-set is an etcd transaction comparing the policy key's `mod_revision` (0 for
//! a key that does not exist, which is what `--expected-version 0` means). Every write also
//! requires its fresh history key to be absent: a write retried on another member after a
//! timeout finds its own history key if the first attempt was applied, and reports that
//! write instead of applying it twice.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use warden_identity::SpiffeId;
use warden_policy::WorkloadPolicy;
use warden_proto::etcd::etcdserverpb as rpc;
use warden_proto::etcd::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use warden_proto::etcd::mvccpb::KeyValue;
use zeroize::Zeroizing;

use super::{
    Action, Change, ChangeFeed, HistoryEntry, PolicyStore, QuarantineEvent, Quarantined, StoreError,
};
use crate::config::EtcdConfig;
use crate::etcd::{
    Etcd, EtcdError, WatchEnd, WatchEvent, leader_request, prefix_end, watch_prefix,
};

/// Keys per page when listing: bounded responses whatever the number of workloads.
const PAGE: i64 = 256;

pub struct EtcdStore {
    etcd: Arc<Etcd>,
    /// `policy store etcd (https://…)`: how errors name this store.
    label: String,
    prefix: String,
}

/// The built-in CA's root as kept in the store.
pub struct StoredCa {
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
    /// Whether this call created it (otherwise another replica had).
    pub created: bool,
}

#[derive(Serialize, Deserialize)]
struct CaRecord {
    cert: String,
    key: String,
}

fn compare(key: &[u8], target: CompareTarget, value: i64) -> rpc::Compare {
    let union = match target {
        CompareTarget::Create => TargetUnion::CreateRevision(value),
        CompareTarget::Mod => TargetUnion::ModRevision(value),
        _ => TargetUnion::Version(value),
    };
    rpc::Compare {
        result: CompareResult::Equal as i32,
        target: target as i32,
        key: key.to_vec(),
        range_end: Vec::new(),
        target_union: Some(union),
    }
}

fn exists(key: &[u8]) -> rpc::Compare {
    rpc::Compare {
        result: CompareResult::Greater as i32,
        ..compare(key, CompareTarget::Version, 0)
    }
}

fn put_op(key: &[u8], value: Vec<u8>) -> rpc::RequestOp {
    rpc::RequestOp {
        request: Some(rpc::request_op::Request::RequestPut(rpc::PutRequest {
            key: key.to_vec(),
            value,
            ..Default::default()
        })),
    }
}

fn get_op(key: &[u8]) -> rpc::RequestOp {
    rpc::RequestOp {
        request: Some(rpc::request_op::Request::RequestRange(rpc::RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    }
}

fn delete_op(key: &[u8]) -> rpc::RequestOp {
    rpc::RequestOp {
        request: Some(rpc::request_op::Request::RequestDeleteRange(
            rpc::DeleteRangeRequest {
                key: key.to_vec(),
                ..Default::default()
            },
        )),
    }
}

/// The key-values of the `n`th response of a transaction, when it is a range.
fn range_kvs(resp: &rpc::TxnResponse, n: usize) -> Option<&KeyValue> {
    match resp.responses.get(n)?.response.as_ref()? {
        rpc::response_op::Response::ResponseRange(r) => r.kvs.first(),
        _ => None,
    }
}

fn revision_of(header: Option<&rpc::ResponseHeader>) -> u64 {
    header.map_or(0, |h| h.revision.max(0) as u64)
}

/// The revision of a write guarded by a fresh history key (its failure branch reads the
/// target key, then the history key): the transaction's when it succeeded, else that of
/// its own history key when an earlier attempt, retried after a timeout, was applied.
/// `None`: a compare failed for another reason (the target key's read says which).
fn written_revision(resp: &rpc::TxnResponse) -> Option<u64> {
    if resp.succeeded {
        return Some(revision_of(resp.header.as_ref()));
    }
    range_kvs(resp, 1).map(|mine| mine.create_revision.max(0) as u64)
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Backend(e.to_string()))
}

/// 128 random bits, hex: the unique part of a history key.
fn random_suffix() -> Result<String, StoreError> {
    let mut bytes = [0u8; 16];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| StoreError::Backend("no random bytes for a history key".into()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl EtcdStore {
    /// Connects to the cluster and checks that a member answers; an unreachable cluster or
    /// a TLS failure is an error that names the store and each member's reason.
    pub async fn connect(config: &EtcdConfig) -> Result<Self, StoreError> {
        let label = format!("policy store etcd ({})", config.endpoints_text());
        let etcd =
            Etcd::new(config).map_err(|e| StoreError::Unavailable(format!("{label}: {e}")))?;
        let store = Self {
            etcd: Arc::new(etcd),
            label,
            prefix: config.prefix.clone(),
        };
        store
            .etcd
            .probe(store.key("policies/"))
            .await
            .map_err(|e| store.err(e))?;
        Ok(store)
    }

    fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}/{rest}", self.prefix).into_bytes()
    }

    fn policy_key(&self, id: &SpiffeId) -> Vec<u8> {
        self.key(&format!("policies/{id}"))
    }

    fn history_prefix(&self, id: &SpiffeId) -> Vec<u8> {
        self.key(&format!("history/{id}#"))
    }

    fn err(&self, e: EtcdError) -> StoreError {
        StoreError::Unavailable(format!("{}: {e}", self.label))
    }

    fn corrupt(&self, key: &[u8], what: impl std::fmt::Display) -> StoreError {
        StoreError::Backend(format!(
            "{}: {}: {what}",
            self.label,
            String::from_utf8_lossy(key)
        ))
    }

    fn decode_policy(&self, kv: &KeyValue) -> Result<WorkloadPolicy, StoreError> {
        let mut policy: WorkloadPolicy = serde_json::from_slice(&kv.value)
            .map_err(|e| self.corrupt(&kv.key, format!("not a policy record: {e}")))?;
        policy.version = kv.mod_revision.max(0) as u64;
        Ok(policy)
    }

    /// A write transaction. Its failure after a member took it but did not answer is
    /// [`StoreError::Indeterminate`], never "nothing changed".
    async fn txn(&self, req: rpc::TxnRequest) -> Result<rpc::TxnResponse, StoreError> {
        self.etcd
            .kv(|mut kv| {
                let req = req.clone();
                async move { kv.txn(leader_request(req)).await }
            })
            .await
            .map_err(|e| match e {
                EtcdError::NoMember {
                    maybe_applied: true,
                    ..
                } => StoreError::Indeterminate(format!("{}: {e}", self.label)),
                e => self.err(e),
            })
    }

    /// Every key-value with `prefix`, page by page, all pages read at one revision.
    async fn range_prefix(&self, prefix: &[u8]) -> Result<(Vec<KeyValue>, u64), StoreError> {
        self.range_prefix_at(prefix, 0).await
    }

    /// [`Self::range_prefix`] at revision `at` (0: the latest, then held for every page).
    async fn range_prefix_at(
        &self,
        prefix: &[u8],
        mut at: i64,
    ) -> Result<(Vec<KeyValue>, u64), StoreError> {
        let end = prefix_end(prefix);
        let mut out = Vec::new();
        let mut from = prefix.to_vec();
        loop {
            let req = rpc::RangeRequest {
                key: from.clone(),
                range_end: end.clone(),
                limit: PAGE,
                revision: at,
                ..Default::default()
            };
            let resp = self
                .etcd
                .kv(|mut kv| {
                    let req = req.clone();
                    async move { kv.range(leader_request(req)).await }
                })
                .await
                .map_err(|e| self.err(e))?;
            if at == 0 {
                at = resp.header.as_ref().map_or(0, |h| h.revision);
            }
            let more = resp.more;
            if let Some(last) = resp.kvs.last() {
                from = last.key.clone();
                from.push(0);
            }
            out.extend(resp.kvs);
            if !more {
                return Ok((out, at.max(0) as u64));
            }
        }
    }

    /// Loads the CA root of `trust_domain` from the store, or stores `create()`'s if there
    /// is none yet (create-if-absent in one transaction: two replicas starting together
    /// end up with the same root, never two).
    pub async fn load_or_create_ca<E>(
        &self,
        trust_domain: &str,
        create: impl FnOnce() -> Result<(String, Zeroizing<String>), E>,
    ) -> Result<Result<StoredCa, E>, StoreError> {
        let key = self.key(&format!("ca/{trust_domain}"));
        let read = rpc::TxnRequest {
            compare: vec![exists(&key)],
            success: vec![get_op(&key)],
            failure: vec![],
        };
        let resp = self.txn(read).await?;
        let (record, created) = match range_kvs(&resp, 0) {
            Some(kv) if resp.succeeded => (kv.value.clone(), false),
            _ => {
                let (cert, key_pem) = match create() {
                    Ok(pair) => pair,
                    Err(e) => return Ok(Err(e)),
                };
                let value = Zeroizing::new(
                    serde_json::to_vec(&CaRecord {
                        cert,
                        key: key_pem.to_string(),
                    })
                    .map_err(|e| StoreError::Backend(e.to_string()))?,
                );
                let create_if_absent = rpc::TxnRequest {
                    compare: vec![compare(&key, CompareTarget::Create, 0)],
                    success: vec![put_op(&key, value.to_vec()), get_op(&key)],
                    failure: vec![get_op(&key)],
                };
                let resp = self.txn(create_if_absent).await?;
                let n = usize::from(resp.succeeded);
                let kv = range_kvs(&resp, n)
                    .ok_or_else(|| self.corrupt(&key, "the CA record vanished"))?;
                // A retried create finds its own record: the values are equal then.
                (kv.value.clone(), resp.succeeded || kv.value == *value)
            }
        };
        let record = Zeroizing::new(record);
        let parsed: CaRecord = serde_json::from_slice(&record)
            .map_err(|e| self.corrupt(&key, format!("not a CA record: {e}")))?;
        Ok(Ok(StoredCa {
            cert_pem: parsed.cert,
            key_pem: Zeroizing::new(parsed.key),
            created,
        }))
    }

    fn quarantined_key(&self, id: &SpiffeId) -> Vec<u8> {
        self.key(&format!("quarantined/{id}"))
    }

    fn quarantine_history_prefix(&self, id: &SpiffeId) -> Vec<u8> {
        self.key(&format!("quarantine-history/{id}#"))
    }

    /// The key of a write's history entry and the compares every write starts with.
    fn write_guard(&self, id: &SpiffeId) -> Result<(Vec<u8>, rpc::Compare), StoreError> {
        self.fresh_key(self.history_prefix(id))
    }

    /// A new key under `prefix` (a history prefix) and the compare that it is still absent:
    /// a write retried after a timeout finds it if the first attempt was applied.
    fn fresh_key(&self, mut key: Vec<u8>) -> Result<(Vec<u8>, rpc::Compare), StoreError> {
        key.extend_from_slice(random_suffix()?.as_bytes());
        let fresh = compare(&key, CompareTarget::Create, 0);
        Ok((key, fresh))
    }
}

#[tonic::async_trait]
impl PolicyStore for EtcdStore {
    fn describe(&self) -> String {
        self.label.trim_start_matches("policy store ").to_owned()
    }

    async fn put(
        &self,
        mut policy: WorkloadPolicy,
        expected: Option<u64>,
        admin: &SpiffeId,
        now_ms: u64,
    ) -> Result<WorkloadPolicy, StoreError> {
        let id = policy.spiffe_id.clone();
        let key = self.policy_key(&id);
        let (history_key, fresh) = self.write_guard(&id)?;
        policy.version = 0;
        policy.updated_by = Some(admin.to_string());
        policy.updated_at_unix_ms = Some(now_ms);
        let entry = HistoryEntry {
            version: 0,
            at_unix_ms: now_ms,
            admin: admin.to_string(),
            action: Action::Put,
            policy: Some(policy.clone()),
        };
        let mut compares = vec![fresh];
        if let Some(expected) = expected {
            compares.push(compare(&key, CompareTarget::Mod, expected as i64));
        }
        let txn = rpc::TxnRequest {
            compare: compares,
            success: vec![
                put_op(&key, json(&policy)?),
                put_op(&history_key, json(&entry)?),
            ],
            failure: vec![get_op(&key), get_op(&history_key)],
        };
        let resp = self.txn(txn).await?;
        if let Some(version) = written_revision(&resp) {
            policy.version = version;
            return Ok(policy);
        }
        Err(StoreError::VersionConflict {
            expected: expected.unwrap_or(0),
            actual: range_kvs(&resp, 0).map_or(0, |kv| kv.mod_revision.max(0) as u64),
        })
    }

    async fn delete(
        &self,
        id: &SpiffeId,
        expected: Option<u64>,
        admin: &SpiffeId,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let key = self.policy_key(id);
        let (history_key, fresh) = self.write_guard(id)?;
        let entry = HistoryEntry {
            version: 0,
            at_unix_ms: now_ms,
            admin: admin.to_string(),
            action: Action::Delete,
            policy: None,
        };
        let mut compares = vec![fresh, exists(&key)];
        if let Some(expected) = expected {
            compares.push(compare(&key, CompareTarget::Mod, expected as i64));
        }
        let value = json(&entry)?;
        let txn = rpc::TxnRequest {
            compare: compares,
            success: vec![delete_op(&key), put_op(&history_key, value)],
            failure: vec![get_op(&key), get_op(&history_key)],
        };
        let resp = self.txn(txn).await?;
        if let Some(revision) = written_revision(&resp) {
            return Ok(revision);
        }
        match range_kvs(&resp, 0) {
            None => Err(StoreError::NotFound(id.to_string())),
            Some(kv) => Err(StoreError::VersionConflict {
                expected: expected.unwrap_or(0),
                actual: kv.mod_revision.max(0) as u64,
            }),
        }
    }

    async fn get_at(&self, id: &SpiffeId) -> Result<(Option<WorkloadPolicy>, u64), StoreError> {
        let req = rpc::RangeRequest {
            key: self.policy_key(id),
            ..Default::default()
        };
        let resp = self
            .etcd
            .kv(|mut kv| {
                let req = req.clone();
                async move { kv.range(leader_request(req)).await }
            })
            .await
            .map_err(|e| self.err(e))?;
        let policy = match resp.kvs.first() {
            Some(kv) => Some(self.decode_policy(kv)?),
            None => None,
        };
        Ok((policy, revision_of(resp.header.as_ref())))
    }

    async fn list(&self) -> Result<Vec<WorkloadPolicy>, StoreError> {
        let (kvs, _) = self.range_prefix(&self.key("policies/")).await?;
        kvs.iter().map(|kv| self.decode_policy(kv)).collect()
    }

    async fn history(&self, id: &SpiffeId) -> Result<Vec<HistoryEntry>, StoreError> {
        let (kvs, _) = self.range_prefix(&self.history_prefix(id)).await?;
        let mut out = Vec::with_capacity(kvs.len());
        for kv in kvs {
            let mut entry: HistoryEntry = serde_json::from_slice(&kv.value)
                .map_err(|e| self.corrupt(&kv.key, format!("not a history record: {e}")))?;
            entry.version = kv.create_revision.max(0) as u64;
            if let Some(p) = entry.policy.as_mut() {
                p.version = entry.version;
            }
            out.push(entry);
        }
        out.sort_by_key(|e| e.version);
        Ok(out)
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        let req = rpc::RangeRequest {
            key: self.key("policies/"),
            count_only: true,
            ..Default::default()
        };
        let resp = self
            .etcd
            .kv(|mut kv| {
                let req = req.clone();
                async move { kv.range(leader_request(req)).await }
            })
            .await
            .map_err(|e| self.err(e))?;
        Ok(revision_of(resp.header.as_ref()))
    }

    async fn set_quarantine(
        &self,
        id: &SpiffeId,
        release: bool,
        by: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let key = self.quarantined_key(id);
        let (history_key, fresh) = self.fresh_key(self.quarantine_history_prefix(id))?;
        let event = QuarantineEvent {
            version: 0,
            at_unix_ms: now_ms,
            by: by.to_owned(),
            released: release,
            reason: reason.to_owned(),
        };
        let marker = self.key("quarantine-revision");
        let (state, change) = if release {
            (exists(&key), delete_op(&key))
        } else {
            let record = Quarantined {
                spiffe_id: id.to_string(),
                version: 0,
                at_unix_ms: now_ms,
                by: by.to_owned(),
                reason: reason.to_owned(),
            };
            (
                compare(&key, CompareTarget::Create, 0),
                put_op(&key, json(&record)?),
            )
        };
        let txn = rpc::TxnRequest {
            compare: vec![fresh, state],
            success: vec![
                change,
                put_op(&history_key, json(&event)?),
                put_op(&marker, Vec::new()),
            ],
            failure: vec![get_op(&key), get_op(&history_key)],
        };
        let resp = self.txn(txn).await?;
        if let Some(revision) = written_revision(&resp) {
            return Ok(revision);
        }
        match range_kvs(&resp, 0) {
            // Already in quarantine: nothing written, its revision returned.
            Some(kv) if !release => Ok(kv.mod_revision.max(0) as u64),
            _ => Err(StoreError::NotFound(id.to_string())),
        }
    }

    async fn quarantined(&self) -> Result<(Vec<Quarantined>, u64), StoreError> {
        // The marker first: its read fixes the revision the list is then read at.
        let req = rpc::RangeRequest {
            key: self.key("quarantine-revision"),
            ..Default::default()
        };
        let resp = self
            .etcd
            .kv(|mut kv| {
                let req = req.clone();
                async move { kv.range(leader_request(req)).await }
            })
            .await
            .map_err(|e| self.err(e))?;
        let last = resp
            .kvs
            .first()
            .map_or(0, |kv| kv.mod_revision.max(0) as u64);
        let at = revision_of(resp.header.as_ref()) as i64;
        let (kvs, _) = self.range_prefix_at(&self.key("quarantined/"), at).await?;
        let mut out = Vec::with_capacity(kvs.len());
        for kv in kvs {
            let mut q: Quarantined = serde_json::from_slice(&kv.value)
                .map_err(|e| self.corrupt(&kv.key, format!("not a quarantine record: {e}")))?;
            q.version = kv.mod_revision.max(0) as u64;
            out.push(q);
        }
        Ok((out, last))
    }

    async fn quarantine_history(&self, id: &SpiffeId) -> Result<Vec<QuarantineEvent>, StoreError> {
        let (kvs, _) = self
            .range_prefix(&self.quarantine_history_prefix(id))
            .await?;
        let mut out = Vec::with_capacity(kvs.len());
        for kv in kvs {
            let mut event: QuarantineEvent = serde_json::from_slice(&kv.value)
                .map_err(|e| self.corrupt(&kv.key, format!("not a quarantine event: {e}")))?;
            event.version = kv.create_revision.max(0) as u64;
            out.push(event);
        }
        out.sort_by_key(|e| e.version);
        Ok(out)
    }

    async fn changes(&self, after: u64) -> Result<ChangeFeed, StoreError> {
        // The whole prefix: policy writes and the quarantine marker, in one revision order.
        let prefix = self.key("");
        let mut events = watch_prefix(self.etcd.clone(), prefix.clone(), after as i64 + 1);
        let (tx, rx) = mpsc::channel(1024);
        let label = self.label.clone();
        let store = Self {
            etcd: self.etcd.clone(),
            label: self.label.clone(),
            prefix: self.prefix.clone(),
        };
        tokio::spawn(async move {
            // Ends when the reader is gone (then `events` is dropped, which ends the watch).
            loop {
                let event = tokio::select! {
                    e = events.recv() => e,
                    _ = tx.closed() => return,
                };
                let Some(event) = event else { return };
                let change = match event {
                    Ok(WatchEvent::Put {
                        key,
                        value,
                        revision,
                    }) => store.change(&prefix, &key, Some(value), revision).map(Ok),
                    Ok(WatchEvent::Delete { key, revision }) => {
                        store.change(&prefix, &key, None, revision).map(Ok)
                    }
                    Err(WatchEnd::Compacted { next, compacted_to }) => {
                        Some(Err(StoreError::Compacted {
                            store: label.clone(),
                            next: next.max(0) as u64,
                            compacted_to: compacted_to.max(0) as u64,
                        }))
                    }
                };
                if let Some(change) = change
                    && tx.send(change).await.is_err()
                {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

impl EtcdStore {
    /// A watch event under the store's prefix as a change: a policy key is a policy change,
    /// the quarantine marker a quarantine change; history and CA keys are not changes. A
    /// policy key that does not name a workload is skipped (logged).
    fn change(
        &self,
        prefix: &[u8],
        key: &[u8],
        value: Option<Vec<u8>>,
        revision: i64,
    ) -> Option<Change> {
        let rest = key.strip_prefix(prefix)?;
        if rest == b"quarantine-revision" {
            return Some(Change::Quarantine {
                revision: revision.max(0) as u64,
            });
        }
        let name = rest
            .strip_prefix(b"policies/")
            .map(|k| std::str::from_utf8(k).ok());
        let Some(workload) = name?.and_then(|n| SpiffeId::parse(n).ok()) else {
            tracing::warn!(key = %String::from_utf8_lossy(key), "a key under the policies prefix does not name a workload; ignored");
            return None;
        };
        let policy = match value {
            None => None,
            Some(value) => {
                let kv = KeyValue {
                    key: key.to_vec(),
                    value,
                    mod_revision: revision,
                    ..Default::default()
                };
                match self.decode_policy(&kv) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        // Nothing a retry would fix; the sidecars keep what they have.
                        tracing::error!(error = %e, "a policy record in etcd does not parse; not pushed");
                        return None;
                    }
                }
            }
        };
        Some(Change::Policy {
            revision: revision.max(0) as u64,
            workload,
            policy,
        })
    }
}
