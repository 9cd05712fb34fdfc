//! The control plane's HTTP admin listener (`[admin] listen`, 127.0.0.1:15010 by default):
//! `/metrics` (OpenMetrics), `/healthz`, `/readyz`, `/graph` (a self-contained page that
//! draws the mesh) and `/graph.json` (what the page draws).
//!
//! Plain HTTP, GET only, no state changes, bound to loopback unless the operator says
//! otherwise: the graph names every workload and who calls whom. It shows no policy text,
//! key or token. A client holds at most one of [`MAX_CONNECTIONS`] slots, headers must come
//! within a few seconds and a connection lives at most a minute.

pub mod graph;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use warden_identity::IdentityStore;

use crate::insight::Insight;
use crate::quarantine::Quarantines;

const MAX_CONNECTIONS: usize = 64;
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONN_LIFETIME: Duration = Duration::from_secs(60);
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The page's inline script and style are its own; nothing else may load or run.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What the admin routes read.
#[derive(Clone)]
pub struct AdminState {
    pub insight: Arc<Insight>,
    pub quarantines: Arc<Quarantines>,
    pub identity: Arc<IdentityStore>,
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until the task is aborted.
pub async fn serve(listener: TcpListener, state: AdminState) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Full: this connection is dropped, the ones being served are not.
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, &req).await) }
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

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert("cache-control", HeaderValue::from_static("no-store"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body)
}

async fn route(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/metrics" => respond(
            StatusCode::OK,
            OPENMETRICS,
            crate::metrics::METRICS.encode(&state.insight),
        ),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match state.identity.usable() {
            Some(_) => text(StatusCode::OK, "ready\n"),
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no usable SVID of the control plane yet\n",
            ),
        },
        "/graph.json" => {
            let graph = graph::snapshot(&state.insight, &state.quarantines).await;
            respond(
                StatusCode::OK,
                "application/json",
                serde_json::to_vec(&graph).unwrap_or_default(),
            )
        }
        "/graph" => {
            let graph = graph::snapshot(&state.insight, &state.quarantines).await;
            let mut resp = respond(
                StatusCode::OK,
                "text/html; charset=utf-8",
                graph::page(&graph),
            );
            resp.headers_mut()
                .insert("content-security-policy", HeaderValue::from_static(CSP));
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
