//! `warden.control.v1.PolicyService`: authorization of every call by the caller's SPIFFE ID,
//! durable writes, and live fan-out of each workload's policy to the sidecars watching it.
//!
//! Writes go to the store; watchers are fed from the store's change feed (`fanout.rs`), in
//! revision order, whichever replica made the write. A watcher can never see version N+1
//! before N, and no write falls between "read current" and "subscribe".

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use warden_identity::SpiffeId;
use warden_policy::wire as convert;
use warden_proto::control::v1 as pb;
use warden_proto::control::v1::policy_service_server::PolicyService;

use warden_identity::peer_share::PeerCounts;

use crate::audit::{AuditEvent, Decision, GateResult, WriteAction, WriteResult};
use crate::fanout::Fanout;
use crate::grpc_limits::{ConnInfo, Gate, LogBudget, MethodLimits, Permit};
use crate::insight::Insight;
use crate::quarantine::Quarantines;
use crate::store::{PolicyStore, StoreError};
use crate::transport::Caller;

/// The methods only an admin may call, by gRPC path: refused before their request body is
/// read (see `grpc_limits`), and again in the handler.
const ADMIN_ONLY: &[&str] = &[
    "/warden.control.v1.PolicyService/PutPolicy",
    "/warden.control.v1.PolicyService/DeletePolicy",
    "/warden.control.v1.PolicyService/ListPolicies",
    "/warden.control.v1.PolicyService/History",
    "/warden.control.v1.PolicyService/Status",
    "/warden.control.v1.PolicyService/Observed",
    "/warden.control.v1.PolicyService/Anomalies",
    "/warden.control.v1.PolicyService/Quarantine",
    "/warden.control.v1.PolicyService/Release",
];

/// The largest request message of each method. A policy may be large and is written by an
/// admin (authorized before its body is read); a watch request is a hello, an ack or an
/// edge report (which the sidecars cut to 192 KiB); everything else names one workload or
/// nothing.
pub fn method_limits() -> MethodLimits {
    const SMALL: usize = 8 * 1024;
    MethodLimits::new(
        64 * 1024,
        &[
            (
                "/warden.control.v1.PolicyService/PutPolicy",
                crate::config::MAX_REQUEST_MESSAGE,
            ),
            ("/warden.control.v1.PolicyService/GetPolicy", SMALL),
            ("/warden.control.v1.PolicyService/DeletePolicy", SMALL),
            ("/warden.control.v1.PolicyService/ListPolicies", SMALL),
            ("/warden.control.v1.PolicyService/History", SMALL),
            ("/warden.control.v1.PolicyService/Status", SMALL),
            ("/warden.control.v1.PolicyService/WatchPolicy", 256 * 1024),
            ("/warden.control.v1.PolicyService/Observed", SMALL),
            ("/warden.control.v1.PolicyService/Anomalies", SMALL),
            ("/warden.control.v1.PolicyService/Quarantine", SMALL),
            ("/warden.control.v1.PolicyService/Release", SMALL),
        ],
    )
}

/// `sidecar_version` as stored and shown: what a sidecar reports about itself is bounded
/// before it is kept, so `warden policy status` stays small whatever a watcher sends.
const MAX_SIDECAR_VERSION: usize = 64;

/// Log lines a caller can trigger at will (each watch opened, each refusal).
static WATCH_LOG: LogBudget = LogBudget::new(AuditEvent::Watch.as_str(), 20);
static REFUSAL_LOG: LogBudget = LogBudget::new(AuditEvent::Api.as_str(), 20);

#[derive(Debug, Clone)]
struct Session {
    spiffe_id: SpiffeId,
    addr: String,
    connected_since_unix_ms: u64,
    applied_version: u64,
    sent_version: u64,
    sidecar_version: String,
}

/// The live watch sessions.
#[derive(Default)]
struct Hub {
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
    fanout: Arc<Fanout>,
    insight: Arc<Insight>,
    quarantines: Arc<Quarantines>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The status a store failure becomes. `detailed`: the caller is an admin, who is told
/// which store failed and why (a workload reading its own policy is not).
fn store_status(e: StoreError, detailed: bool) -> Status {
    match e {
        StoreError::VersionConflict { expected, actual } => Status::failed_precondition(format!(
            "stale version: you expected version {expected}, the current version is {actual}; get the policy again and retry"
        )),
        StoreError::NotFound(id) => Status::not_found(format!("no policy for {id}")),
        StoreError::Backend(detail) | StoreError::Unavailable(detail) => {
            tracing::error!(%detail, "policy store failure");
            if detailed {
                Status::unavailable(format!("{detail}; nothing was changed"))
            } else {
                Status::unavailable("the policy store failed; nothing was changed")
            }
        }
        StoreError::Indeterminate(detail) => {
            tracing::error!(%detail, "policy store failure; the write may yet be applied");
            // DEADLINE_EXCEEDED: gRPC's code for "may have completed".
            if detailed {
                Status::deadline_exceeded(format!(
                    "{detail}; the write was sent but not confirmed and may still be applied \
                     when the store recovers: read the policy (or its history) before retrying"
                ))
            } else {
                Status::unavailable("the policy store failed")
            }
        }
        e @ StoreError::Compacted { .. } => {
            tracing::error!(detail = %e, "policy store failure");
            Status::unavailable("the policy store failed")
        }
    }
}

/// Audits (rate-bounded) and words the refusal of a call that needs an admin.
fn refuse_non_admin(caller: &Caller, method: &str) -> Status {
    if let Some(suppressed) = REFUSAL_LOG.admit() {
        tracing::warn!(target: "warden::audit", event = AuditEvent::Api.as_str(), method, caller = %caller.spiffe_id, addr = %caller.addr, decision = Decision::Deny.as_str(), suppressed, "control-plane call refused: not an admin");
    }
    Status::permission_denied(format!(
        "{} is not an admin of this control plane",
        caller.spiffe_id
    ))
}

/// Audits (rate-bounded) and words the refusal of a call over the caller's share.
fn refuse_over_share(caller: &Caller, max: usize) -> Status {
    if let Some(suppressed) = REFUSAL_LOG.admit() {
        tracing::warn!(target: "warden::audit", event = AuditEvent::Api.as_str(), caller = %caller.spiffe_id, addr = %caller.addr, decision = Decision::Deny.as_str(), limit = "limits.max_streams_per_peer", max, suppressed, "control-plane call refused: the caller holds its share of calls");
    }
    Status::resource_exhausted(format!(
        "{} already has {max} calls in flight on this control plane",
        caller.spiffe_id
    ))
}

/// The status a watch ends with when its request stream fails. tonic reports a message it
/// cannot decode (bad protobuf, a compressed flag without `grpc-encoding`, a message cut
/// short by the end of the stream) as INTERNAL; the fault is the caller's, so it is told
/// INVALID_ARGUMENT. Other failures (RESOURCE_EXHAUSTED for an oversized message) stand.
fn request_stream_error(status: Status) -> Status {
    if status.code() == tonic::Code::Internal {
        Status::invalid_argument(format!("malformed watch request: {}", status.message()))
    } else {
        status
    }
}

/// What a sidecar says its version is, as kept: at most [`MAX_SIDECAR_VERSION`] bytes of
/// printable ASCII (anything else becomes `?`).
fn bounded_version(raw: &str) -> String {
    raw.chars()
        .take(MAX_SIDECAR_VERSION)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

impl PolicyApi {
    /// The API over `store`, following its change feed from now on.
    pub async fn start(
        store: Arc<dyn PolicyStore>,
        admins: impl IntoIterator<Item = SpiffeId>,
    ) -> Result<Self, StoreError> {
        let fanout = Arc::new(Fanout::start(store.clone()).await?);
        let admins: HashSet<SpiffeId> = admins.into_iter().collect();
        Ok(Self {
            quarantines: Arc::new(Quarantines::new(store.clone(), fanout.clone())),
            fanout,
            store,
            insight: Arc::new(Insight::new(
                Default::default(),
                Default::default(),
                admins.iter().map(|a| a.to_string()).collect(),
                now_ms(),
            )),
            admins,
            hub: Arc::new(Hub::default()),
        })
    }

    /// Quarantine and release, for the anomaly rules' responder.
    pub fn quarantines(&self) -> Arc<Quarantines> {
        self.quarantines.clone()
    }

    /// Feeds edge reports to `insight` (instead of a private one with default bounds).
    pub fn with_insight(mut self, insight: Arc<Insight>) -> Self {
        self.insight = insight;
        self
    }

    /// The gate `grpc_limits::GuardLayer` applies before reading a request body: the
    /// admin-only methods are refused to callers that are not admins, and each caller
    /// SPIFFE ID may have at most `max_streams_per_peer` calls in flight (every replica of
    /// a workload shares its ID, and each holds one watch).
    pub fn gate(&self, max_streams_per_peer: usize) -> Gate<Caller> {
        let admins = self.admins.clone();
        let streams = PeerCounts::new(max_streams_per_peer);
        Arc::new(move |path: &str, caller: &Caller| {
            let metrics = &crate::metrics::METRICS;
            if ADMIN_ONLY.contains(&path) && !admins.contains(&caller.spiffe_id) {
                metrics.api_call(path, GateResult::Refused);
                let method = path.rsplit('/').next().unwrap_or(path);
                return Err(refuse_non_admin(caller, method));
            }
            match streams.acquire(&caller.spiffe_id) {
                Some(slot) => {
                    metrics.api_call(path, GateResult::Admitted);
                    Ok(Some(Box::new(slot) as Permit))
                }
                None => {
                    metrics.api_call(path, GateResult::Refused);
                    Err(refuse_over_share(caller, streams.max()))
                }
            }
        })
    }

    fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
        req.extensions()
            .get::<ConnInfo<Caller>>()
            .map(|c| c.peer.clone())
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
        Err(refuse_non_admin(caller, method))
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
        let stored = self
            .store
            .put(policy, body.expected_version, &caller.spiffe_id, now_ms())
            .await
            .map_err(|e| {
                crate::metrics::METRICS.policy_write(WriteAction::Put, WriteResult::Error);
                store_status(e, true)
            })?;
        crate::metrics::METRICS.policy_write(WriteAction::Put, WriteResult::Ok);
        tracing::info!(target: "warden::audit", event = AuditEvent::PolicyWrite.as_str(), action = WriteAction::Put.as_str(), workload = %id, version = stored.version, admin = %caller.spiffe_id, "policy written");
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
        let admin = self.admins.contains(&caller.spiffe_id);
        let policy = self
            .store
            .get(&id)
            .await
            .map_err(|e| store_status(e, admin))?;
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
        let list = self.store.list().await.map_err(|e| store_status(e, true))?;
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
        let version = self
            .store
            .delete(&id, body.expected_version, &caller.spiffe_id, now_ms())
            .await
            .map_err(|e| {
                crate::metrics::METRICS.policy_write(WriteAction::Delete, WriteResult::Error);
                store_status(e, true)
            })?;
        crate::metrics::METRICS.policy_write(WriteAction::Delete, WriteResult::Ok);
        tracing::info!(target: "warden::audit", event = AuditEvent::PolicyWrite.as_str(), action = WriteAction::Delete.as_str(), workload = %id, version, admin = %caller.spiffe_id, "policy deleted");
        Ok(Response::new(pb::DeletePolicyResponse { version }))
    }

    async fn history(
        &self,
        req: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let caller = Self::caller(&req)?;
        let id = Self::target(&req.get_ref().spiffe_id)?;
        self.authorize(&caller, "History", Some(&id))?;
        let entries = self
            .store
            .history(&id)
            .await
            .map_err(|e| store_status(e, true))?;
        let quarantines = self
            .store
            .quarantine_history(&id)
            .await
            .map_err(|e| store_status(e, true))?;
        let mut entries: Vec<pb::HistoryEntry> = entries
            .into_iter()
            .map(|e| pb::HistoryEntry {
                version: e.version,
                at_unix_ms: e.at_unix_ms,
                admin: e.admin,
                action: e.action.as_str().to_owned(),
                policy: e.policy.as_ref().map(convert::to_proto),
                reason: String::new(),
            })
            .chain(quarantines.into_iter().map(|q| pb::HistoryEntry {
                version: q.version,
                at_unix_ms: q.at_unix_ms,
                admin: q.by,
                action: WriteAction::quarantine(q.released).as_str().to_owned(),
                policy: None,
                reason: q.reason,
            }))
            .collect();
        // One revision counter: the merged history is in the order the changes were made.
        entries.sort_by_key(|e| e.version);
        Ok(Response::new(pb::HistoryResponse { entries }))
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let caller = Self::caller(&req)?;
        self.authorize(&caller, "Status", None)?;
        let store_version = self
            .store
            .revision()
            .await
            .map_err(|e| store_status(e, true))?;
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
        let rx = self
            .fanout
            .subscribe(&id)
            .await
            .map_err(|e| store_status(e, false))?;
        let session_id = self.hub.next_session.fetch_add(1, Ordering::Relaxed);
        crate::metrics::METRICS.watcher_opened();
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
        if let Some(suppressed) = WATCH_LOG.admit() {
            tracing::info!(target: "warden::audit", event = AuditEvent::Watch.as_str(), workload = %id, addr = %caller.addr, suppressed, "sidecar watching its policy");
        }
        // Acks arrive on the request stream. A request stream that fails (an oversized or
        // malformed message) ends the watch with its error, and so does an ack of a version
        // this watch never sent (OUT_OF_RANGE); one the sidecar closes cleanly just stops
        // the acks. The session is listed exactly while the watch is served: it
        // is removed when the response stream is dropped.
        let (end_tx, end_rx) = tokio::sync::oneshot::channel::<Status>();
        let hub = self.hub.clone();
        let insight = self.insight.clone();
        let reporter: Arc<str> = Arc::from(id.as_str());
        tokio::spawn(async move {
            let mut last_report: Option<std::time::Instant> = None;
            loop {
                match requests.message().await {
                    Ok(Some(pb::WatchRequest {
                        msg: Some(pb::watch_request::Msg::EdgeReport(report)),
                    })) => {
                        // At most one report per min_report_interval per watch: a sidecar
                        // that sends more only has the extra ones dropped.
                        let now = std::time::Instant::now();
                        if last_report
                            .is_some_and(|t| now.duration_since(t) < insight.min_report_interval())
                        {
                            insight.refuse_report();
                            continue;
                        }
                        last_report = Some(now);
                        insight.ingest(&reporter, &report, now_ms());
                    }
                    Ok(Some(msg)) => {
                        let mut sessions = lock(&hub.sessions);
                        let Some(session) = sessions.get_mut(&session_id) else {
                            return;
                        };
                        match msg.msg {
                            Some(pb::watch_request::Msg::Hello(h)) => {
                                session.sidecar_version = bounded_version(&h.sidecar_version)
                            }
                            Some(pb::watch_request::Msg::Ack(a)) => {
                                // A sidecar acknowledges a version it was sent on this watch;
                                // a higher one would make `status` show a version in force
                                // that no sidecar has.
                                if a.applied_version > session.sent_version {
                                    let status = Status::out_of_range(format!(
                                        "acknowledged version {} was never sent on this watch (last sent: {})",
                                        a.applied_version, session.sent_version
                                    ));
                                    drop(sessions);
                                    let _ = end_tx.send(status);
                                    return;
                                }
                                session.applied_version = a.applied_version
                            }
                            Some(pb::watch_request::Msg::EdgeReport(_)) | None => {}
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        let _ = end_tx.send(request_stream_error(status));
                        return;
                    }
                }
            }
        });
        let hub = self.hub.clone();
        let snapshots = tokio_stream::wrappers::WatchStream::new(rx).map(move |snapshot| {
            if let Some(s) = lock(&hub.sessions).get_mut(&session_id) {
                s.sent_version = snapshot.version;
            }
            Ok((*snapshot).clone())
        });
        let stream = UntilEnded {
            snapshots,
            end: Some(end_rx),
            done: false,
            _session: SessionEntry {
                hub: self.hub.clone(),
                id: session_id,
            },
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn observed(
        &self,
        req: Request<pb::ObservedRequest>,
    ) -> Result<Response<pb::ObservedResponse>, Status> {
        let caller = Self::caller(&req)?;
        self.authorize(&caller, "Observed", None)?;
        let body = req.into_inner();
        if !body.spiffe_id.is_empty() {
            Self::target(&body.spiffe_id)?;
        }
        let now = now_ms();
        let since = if body.since_ms == 0 {
            0
        } else {
            now.saturating_sub(body.since_ms)
        };
        Ok(Response::new(self.insight.observed(
            &body.spiffe_id,
            since,
            now,
        )))
    }

    async fn anomalies(
        &self,
        req: Request<pb::AnomaliesRequest>,
    ) -> Result<Response<pb::AnomaliesResponse>, Status> {
        let caller = Self::caller(&req)?;
        self.authorize(&caller, "Anomalies", None)?;
        let since_ms = req.get_ref().since_ms;
        let since = if since_ms == 0 {
            0
        } else {
            now_ms().saturating_sub(since_ms)
        };
        let quarantined = self
            .quarantines
            .list()
            .await
            .map_err(|e| store_status(e, true))?;
        Ok(Response::new(pb::AnomaliesResponse {
            anomalies: self.insight.anomalies(since),
            quarantined: quarantined
                .into_iter()
                .map(|q| pb::Quarantined {
                    spiffe_id: q.spiffe_id,
                    by: q.by,
                    reason: q.reason,
                    at_unix_ms: q.at_unix_ms,
                    version: q.version,
                })
                .collect(),
        }))
    }

    async fn quarantine(
        &self,
        req: Request<pb::QuarantineRequest>,
    ) -> Result<Response<pb::QuarantineResponse>, Status> {
        let caller = Self::caller(&req)?;
        self.authorize(&caller, "Quarantine", None)?;
        let body = req.into_inner();
        let id = Self::target(&body.spiffe_id)?;
        if body.reason.trim().is_empty() {
            return Err(Status::invalid_argument(
                "a reason is required: it is kept in the history and the audit log",
            ));
        }
        let version = self
            .quarantines
            .set(&id, false, caller.spiffe_id.as_str(), &body.reason)
            .await
            .map_err(|e| store_status(e, true))?;
        Ok(Response::new(pb::QuarantineResponse { version }))
    }

    async fn release(
        &self,
        req: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let caller = Self::caller(&req)?;
        self.authorize(&caller, "Release", None)?;
        let body = req.into_inner();
        let id = Self::target(&body.spiffe_id)?;
        let version = self
            .quarantines
            .set(&id, true, caller.spiffe_id.as_str(), &body.reason)
            .await
            .map_err(|e| match e {
                StoreError::NotFound(id) => Status::not_found(format!("{id} is not in quarantine")),
                e => store_status(e, true),
            })?;
        Ok(Response::new(pb::ReleaseResponse { version }))
    }
}

/// The snapshots of one watch, until its request side fails: then that error as the last
/// item (tonic sends it as the call's status).
struct UntilEnded<S> {
    snapshots: S,
    /// `None` once it has answered (a oneshot must not be polled again).
    end: Option<tokio::sync::oneshot::Receiver<Status>>,
    done: bool,
    _session: SessionEntry,
}

/// A watch session's row in `status`, removed when the watch's response stream is dropped.
struct SessionEntry {
    hub: Arc<Hub>,
    id: u64,
}

impl Drop for SessionEntry {
    fn drop(&mut self) {
        crate::metrics::METRICS.watcher_closed();
        lock(&self.hub.sessions).remove(&self.id);
    }
}

impl<S> Stream for UntilEnded<S>
where
    S: Stream<Item = Result<pb::PolicySnapshot, Status>> + Unpin,
{
    type Item = Result<pb::PolicySnapshot, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(end) = &mut self.end
            && let Poll::Ready(ended) = Pin::new(end).poll(cx)
        {
            self.end = None;
            // A closed channel (the reader stopped without an error) leaves the watch on.
            if let Ok(status) = ended {
                self.done = true;
                return Poll::Ready(Some(Err(status)));
            }
        }
        Pin::new(&mut self.snapshots).poll_next(cx)
    }
}
