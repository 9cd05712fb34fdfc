//! The SPIFFE Workload API served by the built-in CA, on Unix sockets: one socket per
//! workload, the way the SPIFFE CSI driver hands a socket to a pod, optionally narrowed to the
//! caller's Unix uid (`SO_PEERCRED`, which the kernel vouches for).
//!
//! Each socket's SVIDs are issued once and shared by every stream on it (a workload that opens
//! ten streams gets one key, not ten), renewed at 45% of their lifetime so holders have the new
//! one before half-life, and pushed on every open stream as the complete current state. Trust
//! bundle changes reach open streams the same way.
//!
//! It must never answer a call without the `workload.spiffe.io: true` header (the spec's
//! defence against browsers and SSRF), never hand a registration to a caller whose uid it does
//! not match, never replace a file that is not a stale socket, and never log key material
//! or tokens.
//!
//! JWT-SVIDs (`jwt.rs`): `FetchJWTSVID` signs one per identity the caller may have (or the
//! one it names) for the audiences it asks for, with the CA's JWT key; `FetchJWTBundles`
//! streams the trust domain's JWT bundle; `ValidateJWTSVID` checks a token by the rules a
//! sidecar's `spiffe = true` issuer uses.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use thiserror::Error;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};
use warden_identity::SpiffeId;
use warden_proto::workload::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use warden_proto::workload::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svid, X509svidRequest,
    X509svidResponse,
};

use crate::ca::{BuiltinCa, CaError, IssuedSvid, JwtAuthority, TrustBundles};
use crate::config::WorkloadRegistration;
use crate::grpc_limits::{ConnInfo, GuardLayer, IdleClose, LogBudget, MessageShares, MethodLimits};

mod jwt;
mod uid_shares;

use uid_shares::{Uid, UidConn, UidShares};

/// The largest request message: every Workload API request is a handful of short strings.
const MAX_REQUEST_MESSAGE: usize = 64 * 1024;
/// Refusals are logged per call; a flood of them is summarized.
static DENIED_LOG: LogBudget = LogBudget::new("workload_api_denied", 20);

/// Retry pace when the CA fails to issue a renewal (the current SVID stays served meanwhile).
const ISSUE_RETRY: Duration = Duration::from_secs(1);
/// How long `shutdown` waits for streams and connections to wind down before cutting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum WorkloadApiError {
    #[error("Workload API socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Workload API socket {path}: another process is serving it")]
    InUse { path: PathBuf },
    #[error("Workload API socket {path}: exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("cannot issue the SVID of {spiffe_id}: {source}")]
    Issue { spiffe_id: String, source: CaError },
}

/// One identity offered on a socket.
#[derive(Debug, Clone)]
struct Entry {
    uid: Option<u32>,
    spiffe_id: SpiffeId,
}

/// Everything served on one socket: its registrations and their current SVIDs (same order).
struct SocketState {
    path: PathBuf,
    entries: Vec<Entry>,
    svids: watch::Sender<Arc<Vec<Arc<IssuedSvid>>>>,
}

impl SocketState {
    /// Indices of the entries a caller with `uid` may have, in configuration order (the first
    /// is the caller's default SVID). A caller whose uid is unknown gets only uid-less ones.
    fn entries_for(&self, uid: Option<u32>) -> Vec<usize> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.uid.is_none() || e.uid == uid)
            .map(|(i, _)| i)
            .collect()
    }
}

/// The running servers. Dropping it stops them abruptly; prefer [`WorkloadApiHandle::shutdown`].
pub struct WorkloadApiHandle {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    external_shutdown: JoinHandle<()>,
    /// Each socket path and the inode we bound, so we only ever delete our own socket.
    sockets: Vec<(PathBuf, u64)>,
}

impl std::fmt::Debug for WorkloadApiHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadApiHandle")
            .field("sockets", &self.sockets)
            .finish_non_exhaustive()
    }
}

impl WorkloadApiHandle {
    pub fn sockets(&self) -> impl Iterator<Item = &Path> {
        self.sockets.iter().map(|(p, _)| p.as_path())
    }

    /// Stops accepting, ends every open stream with `UNAVAILABLE` (clients retry elsewhere or
    /// later), waits up to a few seconds for connections to close, and removes the sockets.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("Workload API connections did not close in time; cutting them");
            self.tasks.abort_all();
        }
        // Drop removes the socket files.
    }
}

impl Drop for WorkloadApiHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.external_shutdown.abort();
        self.tasks.abort_all();
        for (path, ino) in &self.sockets {
            remove_if_ours(path, *ino);
        }
    }
}

fn remove_if_ours(path: &Path, ino: u64) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.ino() == ino) {
        let _ = std::fs::remove_file(path);
    }
}

/// Binds one socket per distinct registration path, issues every registered SVID, and serves
/// until `shutdown` completes or the handle is shut down or dropped. JWT-SVIDs are signed by
/// `jwt` and live as long as X509-SVIDs (`svid_ttl`).
pub async fn serve_workload_api(
    ca: Arc<BuiltinCa>,
    jwt: Arc<JwtAuthority>,
    registrations: Vec<WorkloadRegistration>,
    svid_ttl: Duration,
    limits: &crate::config::ControlLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<WorkloadApiHandle, WorkloadApiError> {
    let idle_timeout = limits.idle_timeout;
    let mut by_socket: Vec<(PathBuf, Vec<Entry>)> = Vec::new();
    for r in registrations {
        let entry = Entry {
            uid: r.uid,
            spiffe_id: r.spiffe_id,
        };
        match by_socket.iter_mut().find(|(p, _)| *p == r.socket) {
            Some((_, entries)) => entries.push(entry),
            None => by_socket.push((r.socket, vec![entry])),
        }
    }
    let (stop, _) = watch::channel(false);
    let mut handle = WorkloadApiHandle {
        stop,
        tasks: JoinSet::new(),
        external_shutdown: tokio::spawn(async {}),
        sockets: Vec::new(),
    };
    for (path, entries) in by_socket {
        // Each caller uid has its shares on this socket, of connections and calls in flight
        // (`uid_shares.rs`) and of partial request messages: a local process cannot make the
        // control plane hold more than `limits.max_message_bytes_per_peer` for it. Per
        // socket, because a socket is one pod's and pods that run as the same uid must not
        // use up each other's shares.
        let shares = MessageShares::new(limits.max_message_bytes_per_peer);
        let uid_shares =
            UidShares::new(limits.max_connections_per_peer, limits.max_streams_per_peer);
        let svids = issue_all(&ca, &entries, svid_ttl).await?;
        let state = Arc::new(SocketState {
            path: path.clone(),
            entries,
            svids: watch::Sender::new(Arc::new(svids)),
        });
        let listener = bind(&path).await?;
        let ino = std::fs::symlink_metadata(&path)
            .map_err(|source| WorkloadApiError::Socket {
                path: path.clone(),
                source,
            })?
            .ino();
        handle.sockets.push((path.clone(), ino));
        handle.tasks.spawn(rotate(
            ca.clone(),
            state.clone(),
            svid_ttl,
            handle.stop.subscribe(),
        ));
        let api = WorkloadApi {
            ca: ca.clone(),
            jwt: jwt.clone(),
            svid_ttl,
            state,
            stop: handle.stop.subscribe(),
        };
        let mut stop_rx = handle.stop.subscribe();
        handle.tasks.spawn(async move {
            let signal = async move {
                let _ = stop_rx.wait_for(|stopped| *stopped).await;
            };
            // Every caller may call every method (authorization is per call, by uid); the
            // guard holds each uid to its share of calls, each message to the limit, and
            // counts calls for idle close.
            let guard = GuardLayer::new(
                uid_shares.gate(),
                MethodLimits::new(MAX_REQUEST_MESSAGE, &[]),
            )
            .with_message_shares(shares, caller_uid);
            let served = crate::grpc_limits::server_builder()
                .layer(guard)
                .serve_with_incoming_shutdown(
                    SpiffeWorkloadApiServer::new(api),
                    Incoming::new(listener, idle_timeout, uid_shares, path.clone()),
                    signal,
                )
                .await;
            if let Err(e) = served {
                tracing::error!(socket = %path.display(), error = %e, "Workload API server failed");
            }
        });
        tracing::info!(socket = %handle.sockets.last().map(|(p, _)| p.display().to_string()).unwrap_or_default(), "Workload API serving");
    }
    let stop = handle.stop.clone();
    handle.external_shutdown = tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    Ok(handle)
}

/// A Workload API caller as its byte share knows it: its uid, which the kernel vouches for.
fn caller_uid(info: &UdsConnectInfo) -> String {
    Uid::of(info).to_string()
}

async fn issue_all(
    ca: &Arc<BuiltinCa>,
    entries: &[Entry],
    ttl: Duration,
) -> Result<Vec<Arc<IssuedSvid>>, WorkloadApiError> {
    let ca = ca.clone();
    let ids: Vec<SpiffeId> = entries.iter().map(|e| e.spiffe_id.clone()).collect();
    // Key generation is CPU work: keep it off the async workers.
    tokio::task::spawn_blocking(move || {
        ids.iter()
            .map(|id| {
                ca.issue(id, ttl)
                    .map(Arc::new)
                    .map_err(|source| WorkloadApiError::Issue {
                        spiffe_id: id.to_string(),
                        source,
                    })
            })
            .collect()
    })
    .await
    .map_err(|join| WorkloadApiError::Issue {
        spiffe_id: "(all)".into(),
        source: CaError::Sign(join.to_string()),
    })?
}

/// Prepares `path` and binds it: parent directories created, a stale socket (nobody
/// answering) removed, anything else left alone. Mode 0666: access is granted by who can
/// reach the path (the directory mounted into the pod) and, where configured, by uid.
async fn bind(path: &Path) -> Result<UnixListener, WorkloadApiError> {
    let err = |source| WorkloadApiError::Socket {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).await.is_ok() {
                return Err(WorkloadApiError::InUse {
                    path: path.to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(err)?;
        }
        Ok(_) => {
            return Err(WorkloadApiError::NotASocket {
                path: path.to_owned(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(err)?;
    Ok(listener)
}

/// Accepted connections for tonic. Accept errors (out of file descriptors, usually) back off
/// instead of spinning: tonic itself retries them immediately. A connection without a call
/// in flight for `idle_timeout` is closed, and one over its caller uid's share at once.
struct Incoming {
    listener: UnixListener,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
    delay: Duration,
    idle_timeout: Duration,
    shares: UidShares,
    socket: PathBuf,
}

impl Incoming {
    fn new(
        listener: UnixListener,
        idle_timeout: Duration,
        shares: UidShares,
        socket: PathBuf,
    ) -> Self {
        Self {
            listener,
            backoff: None,
            delay: Duration::from_millis(5),
            idle_timeout,
            shares,
            socket,
        }
    }
}

impl tokio_stream::Stream for Incoming {
    type Item = std::io::Result<IdleClose<UidConn>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(sleep) = &mut this.backoff {
                ready!(sleep.as_mut().poll(cx));
                this.backoff = None;
            }
            match ready!(this.listener.poll_accept(cx)) {
                Ok((stream, _)) => {
                    this.delay = Duration::from_millis(5);
                    // C-core and Java clients name the socket in `:authority` (h2_authority,
                    // inside `admit`). Over its uid's share, the stream is closed here.
                    if let Some(conn) = this.shares.admit(stream, &this.socket) {
                        return Poll::Ready(Some(Ok(IdleClose::new(conn, this.idle_timeout))));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, backoff_ms = this.delay.as_millis() as u64, "Workload API accept failed; backing off");
                    this.backoff = Some(Box::pin(tokio::time::sleep(this.delay)));
                    this.delay = (this.delay * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

/// Renews each SVID of a socket when it reaches its refresh time.
async fn rotate(
    ca: Arc<BuiltinCa>,
    state: Arc<SocketState>,
    ttl: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut failed = false;
    loop {
        let current = state.svids.borrow().clone();
        let Some(due) = current.iter().map(|s| s.refresh_at()).min() else {
            return;
        };
        let mut wait = due
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        if failed {
            wait = wait.max(ISSUE_RETRY);
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let now = SystemTime::now();
        let ca2 = ca.clone();
        let todo: Vec<(usize, SpiffeId)> = current
            .iter()
            .enumerate()
            .filter(|(_, s)| s.refresh_at() <= now)
            .map(|(i, s)| (i, s.spiffe_id.clone()))
            .collect();
        let renewed = tokio::task::spawn_blocking(move || {
            todo.into_iter()
                .map(|(i, id)| (i, ca2.issue(&id, ttl)))
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(renewed) = renewed else {
            failed = true;
            continue;
        };
        failed = false;
        let mut next = current.as_ref().clone();
        for (i, issued) in renewed {
            match issued {
                Ok(svid) => {
                    tracing::info!(target: "warden::audit", event = crate::audit::AuditEvent::SvidIssued.as_str(), socket = %state.path.display(), spiffe_id = %svid.spiffe_id, expires = %humantime::format_rfc3339_seconds(svid.not_after), "SVID renewed");
                    next[i] = Arc::new(svid);
                }
                Err(e) => {
                    tracing::error!(socket = %state.path.display(), spiffe_id = %state.entries[i].spiffe_id, error = %e, "SVID renewal failed; serving the current one meanwhile");
                    failed = true;
                }
            }
        }
        state.svids.send_replace(Arc::new(next));
    }
}

fn concat_der<'a>(
    certs: impl IntoIterator<Item = &'a rustls::pki_types::CertificateDer<'static>>,
) -> Vec<u8> {
    certs.into_iter().flat_map(|c| c.iter().copied()).collect()
}

fn svid_response(
    svids: &[Arc<IssuedSvid>],
    selected: &[usize],
    trust: &TrustBundles,
) -> X509svidResponse {
    let bundle = concat_der(&trust.own);
    X509svidResponse {
        svids: selected
            .iter()
            .filter_map(|&i| svids.get(i))
            .map(|s| X509svid {
                spiffe_id: s.spiffe_id.to_string(),
                x509_svid: concat_der(&s.chain),
                x509_svid_key: s.key.to_vec(),
                bundle: bundle.clone(),
                hint: String::new(),
            })
            .collect(),
        crl: Vec::new(),
        federated_bundles: trust
            .federated
            .iter()
            .map(|(td, certs)| (td.id_string(), concat_der(certs)))
            .collect(),
    }
}

fn bundles_response(trust: &TrustBundles) -> X509BundlesResponse {
    let mut bundles: HashMap<String, Vec<u8>> = trust
        .federated
        .iter()
        .map(|(td, certs)| (td.id_string(), concat_der(certs)))
        .collect();
    bundles.insert(trust.trust_domain.id_string(), concat_der(&trust.own));
    X509BundlesResponse {
        crl: Vec::new(),
        bundles,
    }
}

struct WorkloadApi {
    ca: Arc<BuiltinCa>,
    jwt: Arc<JwtAuthority>,
    svid_ttl: Duration,
    state: Arc<SocketState>,
    stop: watch::Receiver<bool>,
}

type Stream<T> = ReceiverStream<Result<T, Status>>;

impl WorkloadApi {
    /// The spec's security header, then the caller's entries. Both checks come before any
    /// work, so a refused call costs nothing.
    fn authorize<T>(&self, request: &Request<T>) -> Result<Vec<usize>, Status> {
        check_header(request)?;
        let uid = request
            .extensions()
            .get::<ConnInfo<UdsConnectInfo>>()
            .and_then(|info| info.peer.peer_cred)
            .map(|cred| cred.uid());
        let selected = self.state.entries_for(uid);
        if selected.is_empty() {
            if let Some(suppressed) = DENIED_LOG.admit() {
                tracing::warn!(target: "warden::audit", event = crate::audit::AuditEvent::WorkloadApiDenied.as_str(), socket = %self.state.path.display(), uid = ?uid, suppressed, "no identity registered for this caller");
            }
            return Err(Status::permission_denied(
                "no identity issued: no registration on this socket matches the caller",
            ));
        }
        Ok(selected)
    }

    /// Runs a stream: sends `build()` now and again whenever the SVIDs or the trust state
    /// change (only when the message differs), until the client leaves or we shut down.
    fn stream<T, F>(&self, build: F) -> Stream<T>
    where
        T: Clone + PartialEq + Send + 'static,
        F: Fn(&[Arc<IssuedSvid>], &TrustBundles) -> T + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(2);
        let mut svids = self.state.svids.subscribe();
        let mut trust = self.ca.watch_trust();
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            let mut last: Option<T> = None;
            loop {
                let msg = {
                    let s = svids.borrow_and_update().clone();
                    let t = trust.borrow_and_update().clone();
                    build(&s, &t)
                };
                if last.as_ref() != Some(&msg) {
                    // Kept to compare against: the next message is sent only if it differs.
                    last = Some(msg.clone());
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    r = svids.changed() => if r.is_err() { return },
                    r = trust.changed() => if r.is_err() { return },
                    _ = stop.wait_for(|stopped| *stopped) => break,
                    () = tx.closed() => return,
                }
            }
            // Ending the stream lets the server's graceful shutdown finish; UNAVAILABLE tells
            // the client to reconnect with backoff, keeping its SVID meanwhile.
            let _ = tx
                .send(Err(Status::unavailable("Workload API is shutting down")))
                .await;
        });
        ReceiverStream::new(rx)
    }
}

fn check_header<T>(request: &Request<T>) -> Result<(), Status> {
    match request.metadata().get("workload.spiffe.io") {
        Some(v) if v.as_bytes() == b"true" => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request (workload.spiffe.io: true)",
        )),
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = Stream<X509svidResponse>;
    type FetchX509BundlesStream = Stream<X509BundlesResponse>;
    type FetchJWTBundlesStream = Stream<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        crate::metrics::METRICS.workload_api_call("FetchX509SVID");
        let selected = self.authorize(&request)?;
        Ok(Response::new(self.stream(move |svids, trust| {
            svid_response(svids, &selected, trust)
        })))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        crate::metrics::METRICS.workload_api_call("FetchX509Bundles");
        self.authorize(&request)?;
        Ok(Response::new(
            self.stream(|_, trust| bundles_response(trust)),
        ))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        crate::metrics::METRICS.workload_api_call("FetchJWTSVID");
        self.fetch_jwt(request)
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        crate::metrics::METRICS.workload_api_call("FetchJWTBundles");
        self.authorize(&request)?;
        let authority = self.jwt.clone();
        Ok(Response::new(self.stream(move |_, trust| {
            jwt::bundles_response(&authority, trust)
        })))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        crate::metrics::METRICS.workload_api_call("ValidateJWTSVID");
        self.validate_jwt(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(uid: Option<u32>, path: &str) -> Entry {
        Entry {
            uid,
            spiffe_id: SpiffeId::parse(&format!("spiffe://example.org{path}")).expect("id"),
        }
    }

    #[test]
    fn callers_get_their_uid_entries_and_the_unrestricted_ones_in_order() {
        let state = SocketState {
            path: PathBuf::from("/x"),
            entries: vec![
                entry(None, "/any"),
                entry(Some(1000), "/u1000"),
                entry(Some(7), "/u7"),
            ],
            svids: watch::Sender::new(Arc::new(Vec::new())),
        };
        assert_eq!(state.entries_for(Some(1000)), [0, 1]);
        assert_eq!(state.entries_for(Some(7)), [0, 2]);
        assert_eq!(state.entries_for(Some(5)), [0]);
        assert_eq!(state.entries_for(None), [0]);
        let only_uid = SocketState {
            path: PathBuf::from("/y"),
            entries: vec![entry(Some(7), "/u7")],
            svids: watch::Sender::new(Arc::new(Vec::new())),
        };
        assert!(only_uid.entries_for(Some(8)).is_empty());
        assert!(only_uid.entries_for(None).is_empty());
    }
}
