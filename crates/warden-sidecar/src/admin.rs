//! The admin HTTP server: `/metrics` (OpenMetrics), `/healthz`, `/readyz`, and read-only
//! JSON views `/debug/identity`, `/debug/policy`, `/debug/connections`. An optional second
//! listener serves `/metrics`, `/healthz` and `/readyz` only, so Prometheus and the kubelet
//! (which reach the pod IP) are served while the debug views stay on loopback (security
//! invariant 6: admin endpoints bind 127.0.0.1 by default).
//!
//! It must never change sidecar state (every route is a GET of a view), never show key
//! material (identity shows the ID, expiry and trust domains only), and never let a client
//! hold resources for long: hyper rejects malformed requests, headers must arrive within a
//! few seconds, a connection lives at most [`CONN_LIFETIME`], and at most
//! [`MAX_CONNECTIONS`] are served at once (the rest are closed at accept).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use warden_policy::Direction;

use crate::Shared;

const MAX_CONNECTIONS: usize = 64;
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONN_LIFETIME: Duration = Duration::from_secs(60);
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Everything: the loopback admin listener.
    Full,
    /// `/metrics`, `/healthz`, `/readyz`: the optional public listener (Prometheus, kubelet).
    MetricsOnly,
}

/// Serves until the task is aborted (dropping the `Sidecar`). Connection tasks live in a
/// `JoinSet` owned by this task, so aborting it ends them too.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, scope: Scope) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Too many open admin connections: shed instead of queueing.
            continue;
        };
        let shared = shared.clone();
        conns.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let response = route(&shared, scope, &req);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONN_LIFETIME, conn).await;
        });
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
        "workload": p.workload().map(|w| w.as_str()),
        "updated_by": p.updated_by(),
        "updated_at_unix_ms": p.updated_at_unix_ms(),
        "outbound_checked_by_policy": shared.outbound_policy,
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
    TcpListener::bind(addr)
        .await
        .map_err(|source| crate::StartError::Bind {
            listener: what.to_owned(),
            addr,
            source,
        })
}
