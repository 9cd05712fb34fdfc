//! HTTP listeners (`protocol = "http"`): the connection has passed every L4 check of
//! `inbound.rs` (mTLS, the peer's share, the listener's allowlist); from here each request
//! inside it is decided on its own, against the policy in force when it arrives:
//!
//! 1. the path is normalized ([`warden_policy::normalize_path`]); an ambiguous one is 400;
//! 2. the listener's routes decide (`PolicySnapshot::decide_request`): path prefix,
//!    method, calling workload, and the end user's token from `Authorization: Bearer`,
//!    validated by the named `[[jwt]]` issuer (`jwks::Jwt`);
//! 3. a denial is answered here (401 with `WWW-Authenticate: Bearer`, or 403), counted
//!    (`warden_http_requests_total`) and audited with the user's `sub`, method and path;
//! 4. an allowed request goes to the app ([`upstream`]) with the normalized path, the
//!    client's `x-forwarded-client-cert` dropped and, with `sanitize_set`, ours set; the
//!    response streams back as the app produces it.
//!
//! HTTP/1.1 and HTTP/2 are both served (ALPN, or the HTTP/2 preface for a client that
//! offers no ALPN, such as an outbound sidecar relaying an app's h2c); the app is spoken
//! to as it speaks (`app_protocol`). Nothing in a request reaches the app before its
//! decision, and a policy push applies to the next request of every open connection.

mod request;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use warden_identity::SpiffeId;

use crate::config::{AppProtocol, ForwardClientCert};
use crate::registry::CloseReason;
use crate::shared::Shared;
use crate::telemetry::PeerLabels;

pub(crate) use upstream::AppClient;

/// Largest request head (request line and headers) accepted; larger is 431 (HTTP/1.1)
/// or a stream reset (HTTP/2). A 1 MiB token never gets near a validator.
pub(crate) const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The HTTP settings of one inbound listener.
pub(crate) struct HttpSettings {
    pub forward_client_cert: ForwardClientCert,
    pub app_protocol: AppProtocol,
    pub tokens: Arc<crate::jwks::Jwt>,
}

/// One HTTP connection's context, shared by its requests.
pub(crate) struct ConnCtx {
    pub shared: Arc<Shared>,
    pub listener: Arc<str>,
    pub forward: String,
    pub settings: Arc<HttpSettings>,
    pub peer: SpiffeId,
    pub labels: PeerLabels,
    pub conn_id: u64,
    pub peer_addr: SocketAddr,
    pub app: upstream::AppClient,
}

/// Serves HTTP on an allowed connection until it ends, the policy revokes it, or the
/// sidecar drains it.
pub(crate) async fn serve<IO>(
    ctx: ConnCtx,
    io: IO,
    closed: &mut oneshot::Receiver<CloseReason>,
) -> CloseReason
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ctx = Arc::new(ctx);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // A request head must arrive within `limits.handshake_timeout` (slowloris on
        // headers): the same patience as for the TLS handshake that came before it.
        .header_read_timeout(ctx.shared.limits.handshake_timeout)
        .max_buf_size(MAX_HEADER_BYTES.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    let service = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, std::convert::Infallible>(request::handle(&ctx, req).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::select! {
        served = conn => match served {
            Ok(()) => CloseReason::Eof,
            Err(e) => {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
                CloseReason::Error
            }
        },
        reason = closed => reason.unwrap_or(CloseReason::Drain),
    }
}
