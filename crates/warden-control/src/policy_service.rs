//! `warden.control.v1.PolicyService`: authorization of every call by the caller's SPIFFE ID,
//! durable writes, and live fan-out of each workload's policy to the sidecars watching it.
//!
//! Writes are serialized (one at a time, as the store does anyway) and published to
//! watchers in commit order while still holding the write lock, so a watcher can never see
//! version N+1 before N. A watch subscription takes the same lock to read its initial state,
//! so no write can fall between "read current" and "subscribe".

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use warden_identity::SpiffeId;
use warden_proto::control::v1 as pb;
use warden_proto::control::v1::policy_service_server::PolicyService;
use warden_sidecar::control::convert;

use crate::store::{PolicyStore, StoreError};
use crate::transport::Caller;

type Snapshot = Arc<pb::PolicySnapshot>;

#[derive(Debug, Clone)]
struct Session {
    spiffe_id: SpiffeId,
    addr: String,
    connected_since_unix_ms: u64,
    applied_version: u64,
    sent_version: u64,
    sidecar_version: String,
}

/// Watch channels per workload, and the live watch sessions.
#[derive(Default)]
struct Hub {
    channels: Mutex<HashMap<SpiffeId, watch::Sender<Snapshot>>>,
    sessions: Mutex<HashMap<u64, Session>>,
    next_session: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a single map operation; a panic cannot leave a
    // half-updated map behind, so a poisoned lock is safe to reuse.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct PolicyApi {
    store: Arc<dyn PolicyStore>,
    admins: HashSet<SpiffeId>,
    hub: Arc<Hub>,
    writes: tokio::sync::Mutex<()>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::VersionConflict { expected, actual } => Status::failed_precondition(format!(
            "stale version: you expected version {expected}, the current version is {actual}; get the policy again and retry"
        )),
        StoreError::NotFound(id) => Status::not_found(format!("no policy for {id}")),
        StoreError::Backend(detail) => {
            tracing::error!(%detail, "policy store failure");
            Status::unavailable("the policy store failed; the write was not applied")
        }
    }
}

fn snapshot_of(policy: Option<&warden_policy::WorkloadPolicy>, revision: u64) -> Snapshot {
    Arc::new(pb::PolicySnapshot {
        present: policy.is_some(),
        policy: policy.map(convert::to_proto),
        version: policy.map(|p| p.version).unwrap_or(revision),
    })
}

impl PolicyApi {
    pub fn new(store: Arc<dyn PolicyStore>, admins: impl IntoIterator<Item = SpiffeId>) -> Self {
        Self {
            store,
            admins: admins.into_iter().collect(),
            hub: Arc::new(Hub::default()),
            writes: tokio::sync::Mutex::new(()),
        }
    }

    fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
        req.extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))
    }

    /// Admins only; every refusal is audited.
    fn authorize(
        &self,
        caller: &Caller,
        method: &str,
        target: Option<&SpiffeId>,
    ) -> Result<(), Status> {
        let own_read = method == "GetPolicy" && target == Some(&caller.spiffe_id);
        if self.admins.contains(&caller.spiffe_id) || own_read {
            return Ok(());
        }
        tracing::warn!(target: "warden::audit", event = "api", method, caller = %caller.spiffe_id, addr = %caller.addr, decision = "deny", "control-plane call refused: not an admin");
        Err(Status::permission_denied(format!(
            "{} is not an admin of this control plane",
            caller.spiffe_id
        )))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn PolicyStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| Status::internal(format!("store task failed: {e}")))?
            .map_err(store_status)
    }

    fn publish(&self, id: &SpiffeId, snapshot: Snapshot) {
        if let Some(tx) = lock(&self.hub.channels).get(id) {
            tx.send_replace(snapshot);
        }
    }

    fn target(raw: &str) -> Result<SpiffeId, Status> {
        convert::workload_id(raw).map_err(|e| Status::invalid_argument(e.to_string()))
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::PolicySnapshot, Status>> + Send>>;

#[tonic::async_trait]
impl PolicyService for PolicyApi {
    async fn put_policy(
        &self,
        req: Request<pb::PutPolicyRequest>,
    ) -> Result<Response<pb::PutPolicyResponse>, Status> {
        let caller = Self::caller(&req)?;
        let body = req.into_inner();
        let wire = body
            .policy
            .ok_or_else(|| Status::invalid_argument("policy is missing"))?;
        let policy =
            convert::from_proto(&wire).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.authorize(&caller, "PutPolicy", Some(&policy.spiffe_id))?;
        let id = policy.spiffe_id.clone();
        let admin = caller.spiffe_id.clone();
        let _writing = self.writes.lock().await;
        let stored = self
            .blocking(move |s| s.put(policy, body.expected_version, &admin, now_ms()))
            .await?;
        self.publish(&id, snapshot_of(Some(&stored), stored.version));
        tracing::info!(target: "warden::audit", event = "policy_write", action = "put", workload = %id, version = stored.version, admin = %caller.spiffe_id, "policy written");
        Ok(Response::new(pb::PutPolicyResponse {
            policy: Some(convert::to_proto(&stored)),
        }))
    }

    async fn get_policy(
        &self,
        req: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyResponse>, Status> {
        let caller = Self::caller(&req)?;
        let id = Self::target(&req.get_ref().spiffe_id)?;
        self.authorize(&caller, "GetPolicy", Some(&id))?;
        let lookup = id.clone();
        let policy = self.blocking(move |s| s.get(&lookup)).await?;
        match policy {
            Some(p) => Ok(Response::new(pb::GetPolicyResponse {
                policy: Some(convert::to_proto(&p)),
            })),
            None => Err(Status::not_found(format!("no policy for {id}"))),
        }
    }

    async fn list_policies(
        &self,
        req: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        let caller = Self::caller(&req)?;
        self.authorize(&caller, "ListPolicies", None)?;
        let list = self.blocking(|s| s.list()).await?;
        Ok(Response::new(pb::ListPoliciesResponse {
            policies: list.iter().map(convert::to_proto).collect(),
        }))
    }

    async fn delete_policy(
        &self,
        req: Request<pb::DeletePolicyRequest>,
    ) -> Result<Response<pb::DeletePolicyResponse>, Status> {
        let caller = Self::caller(&req)?;
        let body = req.into_inner();
        let id = Self::target(&body.spiffe_id)?;
        self.authorize(&caller, "DeletePolicy", Some(&id))?;
        let admin = caller.spiffe_id.clone();
        let target = id.clone();
        let _writing = self.writes.lock().await;
        let version = self
            .blocking(move |s| s.delete(&target, body.expected_version, &admin, now_ms()))
            .await?;
        self.publish(&id, snapshot_of(None, version));
        tracing::info!(target: "warden::audit", event = "policy_write", action = "delete", workload = %id, version, admin = %caller.spiffe_id, "policy deleted");
        Ok(Response::new(pb::DeletePolicyResponse { version }))
    }

    async fn history(
        &self,
        req: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let caller = Self::caller(&req)?;
        let id = Self::target(&req.get_ref().spiffe_id)?;
        self.authorize(&caller, "History", Some(&id))?;
        let entries = self.blocking(move |s| s.history(&id)).await?;
        Ok(Response::new(pb::HistoryResponse {
            entries: entries
                .into_iter()
                .map(|e| pb::HistoryEntry {
                    version: e.version,
                    at_unix_ms: e.at_unix_ms,
                    admin: e.admin,
                    action: e.action.as_str().to_owned(),
                    policy: e.policy.as_ref().map(convert::to_proto),
                })
                .collect(),
        }))
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let caller = Self::caller(&req)?;
        self.authorize(&caller, "Status", None)?;
        let store_version = self.blocking(|s| s.revision()).await?;
        let mut sidecars: Vec<pb::SidecarStatus> = lock(&self.hub.sessions)
            .values()
            .map(|s| pb::SidecarStatus {
                spiffe_id: s.spiffe_id.to_string(),
                peer_addr: s.addr.clone(),
                connected_since_unix_ms: s.connected_since_unix_ms,
                applied_version: s.applied_version,
                sent_version: s.sent_version,
                sidecar_version: s.sidecar_version.clone(),
            })
            .collect();
        sidecars.sort_by(|a, b| (&a.spiffe_id, &a.peer_addr).cmp(&(&b.spiffe_id, &b.peer_addr)));
        Ok(Response::new(pb::StatusResponse {
            sidecars,
            store_version,
        }))
    }

    type WatchPolicyStream = WatchStream;

    async fn watch_policy(
        &self,
        req: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchPolicyStream>, Status> {
        // The workload is the caller's certificate identity: there is no field to ask for
        // another workload's policy, so there is nothing to forge.
        let caller = Self::caller(&req)?;
        let id = caller.spiffe_id.clone();
        let mut requests = req.into_inner();
        let rx = {
            let _writing = self.writes.lock().await;
            let existing = lock(&self.hub.channels).get(&id).map(|tx| tx.subscribe());
            match existing {
                Some(rx) => rx,
                None => {
                    let lookup = id.clone();
                    let (policy, revision) = self
                        .blocking(move |s| Ok((s.get(&lookup)?, s.revision()?)))
                        .await?;
                    let (tx, rx) = watch::channel(snapshot_of(policy.as_ref(), revision));
                    lock(&self.hub.channels).insert(id.clone(), tx);
                    rx
                }
            }
        };
        let session_id = self.hub.next_session.fetch_add(1, Ordering::Relaxed);
        lock(&self.hub.sessions).insert(
            session_id,
            Session {
                spiffe_id: id.clone(),
                addr: caller.addr.to_string(),
                connected_since_unix_ms: now_ms(),
                applied_version: 0,
                sent_version: 0,
                sidecar_version: String::new(),
            },
        );
        tracing::info!(target: "warden::audit", event = "watch", workload = %id, addr = %caller.addr, "sidecar watching its policy");
        // Acks and the end of the session arrive on the request stream.
        let hub = self.hub.clone();
        tokio::spawn(async move {
            while let Ok(Some(msg)) = requests.message().await {
                let mut sessions = lock(&hub.sessions);
                let Some(session) = sessions.get_mut(&session_id) else {
                    break;
                };
                match msg.msg {
                    Some(pb::watch_request::Msg::Hello(h)) => {
                        session.sidecar_version = h.sidecar_version
                    }
                    Some(pb::watch_request::Msg::Ack(a)) => {
                        session.applied_version = a.applied_version
                    }
                    None => {}
                }
            }
            lock(&hub.sessions).remove(&session_id);
        });
        let hub = self.hub.clone();
        let stream = tokio_stream::wrappers::WatchStream::new(rx).map(move |snapshot| {
            if let Some(s) = lock(&hub.sessions).get_mut(&session_id) {
                s.sent_version = snapshot.version;
            }
            Ok((*snapshot).clone())
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
