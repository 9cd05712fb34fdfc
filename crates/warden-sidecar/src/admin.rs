//! The admin HTTP server: `/metrics` (OpenMetrics), `/healthz`, `/readyz`, and read-only
//! JSON views `/debug/identity`, `/debug/policy`, `/debug/connections`. An optional second
//! listener serves `/metrics`, `/healthz` and `/readyz` only, so Prometheus and the kubelet
//! (which reach the pod IP) are served while the debug views stay on loopback (security
//! invariant 6 of `docs/security.md`: admin endpoints bind 127.0.0.1 by default). Both also
//! answer the app's probes configured under `[[app_probe]]` (`app_probe.rs`).
//!
//! It must never change sidecar state (every route is a GET of a view), never show key
//! material (identity shows the ID, expiry and trust domains only), and never let a client
//! hold resources for long: hyper rejects malformed requests, headers must arrive within a
//! few seconds, a connection lives at most [`CONN_LIFETIME`], and at most
//! [`MAX_CONNECTIONS`] are open at once.
//!
//! Probes must keep answering under a flood (the metrics listener is reachable from every
//! pod, and a kubelet whose probes fail restarts the sidecar). So a full server never turns
//! the *new* connection away: it closes the oldest connection that is not in the middle of
//! answering a request. An idle or slow-header connection thus holds its slot only until
//! [`MAX_CONNECTIONS`] newer ones have arrived, while a probe, which sends its request at
//! once, is answered within moments of connecting.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinSet};
use warden_policy::Direction;

use crate::app_probe::AppProbes;
use crate::shared::Shared;

const MAX_CONNECTIONS: usize = 256;
/// Listen backlog of the admin listeners (as Envoy's listeners default to); the kernel caps
/// it at `net.core.somaxconn`.
const ACCEPT_BACKLOG: u32 = 1024;
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONN_LIFETIME: Duration = Duration::from_secs(60);
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Everything: the loopback admin listener.
    Full,
    /// `/metrics`, `/healthz`, `/readyz` (and the `[[app_probe]]` paths): the optional
    /// public listener (Prometheus, kubelet).
    MetricsOnly,
}

/// Serves until the task is aborted (dropping the `Sidecar`). Connection tasks live in a
/// `JoinSet` owned by this task, so aborting it ends them too.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    scope: Scope,
    probes: Arc<AppProbes>,
) {
    let mut slots = Slots::default();
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(full) = slots.make_room() else {
            // Every slot is answering a request right now: shed this one.
            continue;
        };
        let state = Arc::new(AtomicU8::new(FIRST_REQUEST));
        let shared = shared.clone();
        let probes = probes.clone();
        let conn_state = state.clone();
        let abort = conns.spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                conn_state.store(ANSWERING, Ordering::Relaxed);
                let state = conn_state.clone();
                // An app probe runs a check against the app; every other route answers at
                // once from the sidecar's state.
                let probe = [Method::GET, Method::HEAD]
                    .contains(req.method())
                    .then(|| probes.find(req.uri().path()))
                    .flatten();
                let immediate = probe.is_none().then(|| route(&shared, scope, &req));
                async move {
                    let response = match (immediate, probe) {
                        (Some(response), _) => response,
                        (None, Some(probe)) => probe.answer().await,
                        (None, None) => text(StatusCode::NOT_FOUND, "not found\n"),
                    };
                    Ok::<_, Infallible>(response.map(|body| Answer { body, state }))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONN_LIFETIME, conn).await;
        });
        slots.push(abort, state);
        if full {
            // Under a flood, let the connections already accepted read their requests
            // before accepting more: a probe that sent its request at once is then
            // answering (and safe from eviction) long before it could become the oldest.
            tokio::task::yield_now().await;
        }
    }
}

/// A connection that has not completed its first request (idle, or headers still coming).
const FIRST_REQUEST: u8 = 0;
/// Answering a request: never evicted.
const ANSWERING: u8 = 1;
/// Answered at least one request, waiting for the next (keep-alive, e.g. Prometheus).
const KEEP_ALIVE: u8 = 2;

/// The open admin connections, oldest first.
#[derive(Default)]
struct Slots {
    open: VecDeque<(AbortHandle, Arc<AtomicU8>)>,
}

impl Slots {
    /// Makes room for one more connection: forgets finished ones, then, when full, closes
    /// the oldest that has not completed a request yet, else the oldest keep-alive one.
    /// `Some(true)` when room had to be made, `None` when every connection is answering.
    fn make_room(&mut self) -> Option<bool> {
        self.open.retain(|(task, _)| !task.is_finished());
        if self.open.len() < MAX_CONNECTIONS {
            return Some(false);
        }
        let oldest_in = |wanted: u8| {
            self.open
                .iter()
                .position(|(_, state)| state.load(Ordering::Relaxed) == wanted)
        };
        let victim = oldest_in(FIRST_REQUEST).or_else(|| oldest_in(KEEP_ALIVE))?;
        if let Some((task, _)) = self.open.remove(victim) {
            // Debug, not warn: under a flood this runs per connection.
            tracing::debug!("admin listener full: closing its oldest waiting connection");
            task.abort();
        }
        Some(true)
    }

    fn push(&mut self, task: AbortHandle, state: Arc<AtomicU8>) {
        self.open.push_back((task, state));
    }
}

/// A response body that marks its connection as waiting again (keep-alive) once it has
/// been sent, or dropped with the connection: until then the connection is answering and
/// is not one that [`Slots::make_room`] closes.
struct Answer {
    body: Full<Bytes>,
    state: Arc<AtomicU8>,
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.state.store(KEEP_ALIVE, Ordering::Relaxed);
    }
}

impl hyper::body::Body for Answer {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

fn route(shared: &Shared, scope: Scope, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is supported\n");
    }
    match (scope, req.uri().path()) {
        (_, "/metrics") => match shared.telemetry.metrics().encode() {
            Ok(body) => with_type(StatusCode::OK, OPENMETRICS, body),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
        },
        (_, "/healthz") => text(StatusCode::OK, "ok\n"),
        (_, "/readyz") => readyz(shared),
        (Scope::Full, "/debug/identity") => json_response(StatusCode::OK, &identity(shared)),
        (Scope::Full, "/debug/policy") => json_response(StatusCode::OK, &policy(shared)),
        (Scope::Full, "/debug/connections") => json_response(StatusCode::OK, &connections(shared)),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Why the sidecar is not ready, or `None` when it is: it needs a usable SVID (present and
/// unexpired) and a loaded policy.
pub(crate) fn not_ready_reason(shared: &Shared) -> Option<String> {
    match shared.identity.load() {
        None => return Some("no SVID loaded yet".into()),
        Some(id) if id.is_expired_at(SystemTime::now()) => {
            return Some(format!(
                "SVID {} expired at {}",
                id.spiffe_id(),
                humantime::format_rfc3339_seconds(id.not_after())
            ));
        }
        Some(_) => {}
    }
    if !shared.policy.load().has_policy() {
        return Some("no policy loaded yet".into());
    }
    None
}

fn readyz(shared: &Shared) -> Response<Full<Bytes>> {
    match not_ready_reason(shared) {
        None => json_response(StatusCode::OK, &json!({ "ready": true })),
        Some(reason) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "ready": false, "reason": reason }),
        ),
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn identity(shared: &Shared) -> Value {
    let Some(id) = shared.identity.load() else {
        return json!({ "loaded": false });
    };
    let now = SystemTime::now();
    let trust_domains: Vec<&str> = id.bundles().trust_domains().map(|td| td.as_str()).collect();
    json!({
        "loaded": true,
        "spiffe_id": id.spiffe_id().as_str(),
        "not_before": humantime::format_rfc3339_seconds(id.not_before()).to_string(),
        "not_after": humantime::format_rfc3339_seconds(id.not_after()).to_string(),
        "not_after_unix": unix(id.not_after()),
        "expired": id.is_expired_at(now),
        "seconds_to_expiry": id.not_after().duration_since(now).map(|d| d.as_secs()).unwrap_or(0),
        "trust_domains": trust_domains,
    })
}

fn policy(shared: &Shared) -> Value {
    let p = shared.policy.load();
    let rules = |d: Direction| -> Value {
        p.rules(d)
            .iter()
            .map(|(listener, patterns)| {
                let list: Vec<&str> = patterns.iter().map(|pat| pat.as_str()).collect();
                (listener.clone(), json!(list))
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    json!({
        "version": p.version(),
        "source": p.source().as_str(),
        "has_policy": p.has_policy(),
        "mode": p.mode().as_str(),
        "quarantined": p.quarantined(),
        "workload": p.workload().map(|w| w.as_str()),
        "updated_by": p.updated_by(),
        "updated_at_unix_ms": p.updated_at_unix_ms(),
        "inbound": rules(Direction::Inbound),
        "outbound": rules(Direction::Outbound),
    })
}

fn connections(shared: &Shared) -> Value {
    let list: Vec<Value> = shared
        .registry
        .snapshot()
        .into_iter()
        .map(|c| {
            json!({
                "id": c.id,
                "direction": c.direction.as_str(),
                "listener": &*c.listener,
                "peer_id": c.peer.as_str(),
                "peer_addr": c.peer_addr.to_string(),
                "age_secs": c.age_secs,
                "rx_bytes": c.rx_bytes,
                "tx_bytes": c.tx_bytes,
                "worker": c.worker,
            })
        })
        .collect();
    json!({ "count": list.len(), "connections": list })
}

fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    with_type(status, "text/plain; charset=utf-8", body.to_owned())
}

fn json_response(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    let mut body = value.to_string();
    body.push('\n');
    with_type(status, "application/json", body)
}

/// Binds an admin listener; `what` names the config key in errors.
pub(crate) async fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener, crate::StartError> {
    let err = |source| crate::StartError::Bind {
        listener: what.to_owned(),
        addr,
        source,
    };
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    // The standard backlog (128) overflows under a connection flood, and the kernel then
    // drops SYNs: a probe caught in that waits a full SYN retransmission (1 s), the
    // kubelet's whole probe timeout. Connections accepted are then shed or evicted by
    // `serve`; the backlog only has to hold them until it gets to them.
    socket.listen(ACCEPT_BACKLOG).map_err(err)
}
