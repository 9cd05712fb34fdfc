//! gRPC over mutual TLS 1.3 for the control plane's API.
//!
//! Handshakes run in their own tasks so a slow or hostile client cannot stall the accept
//! loop; only completed handshakes reach tonic. Each connection carries the caller's
//! validated SPIFFE ID as a request extension ([`Caller`]), which is the only thing the API
//! authorizes on: never a field of the request.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use warden_identity::peer_share::{PeerCounts, PeerSlot};

use crate::grpc_limits::{IdleClose, LogBudget};
use crate::metrics::METRICS;
use warden_identity::svid::spiffe_id_of;
use warden_identity::{HandshakeFailure, IdentityStore, SpiffeId};

/// The authenticated caller of an RPC.
#[derive(Debug, Clone)]
pub struct Caller {
    pub spiffe_id: SpiffeId,
    pub addr: SocketAddr,
}

/// A server-side mTLS connection, tagged with its peer.
pub struct MtlsConn {
    stream: TlsStream<TcpStream>,
    caller: Caller,
    /// The caller's share of `limits.max_connections_per_peer`.
    _slot: PeerSlot<SpiffeId>,
}

/// What the API's connections are held to.
#[derive(Debug, Clone, Copy)]
pub struct ApiLimits {
    pub handshake_timeout: Duration,
    /// A connection with no call in flight this long is closed.
    pub idle_timeout: Duration,
    pub max_connections_per_peer: usize,
}

/// Handshake failures and refusals are logged per connection; a flood is summarized.
static CONNECTION_LOG: LogBudget = LogBudget::new("api_handshake, api_connection", 20);

impl Connected for MtlsConn {
    type ConnectInfo = Caller;
    fn connect_info(&self) -> Caller {
        self.caller.clone()
    }
}

impl AsyncRead for MtlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

delegate_async_write!(MtlsConn, stream);

/// TLS 1.3, client SVID mandatory, ALPN h2: the control plane's server configuration.
pub fn server_config(identity: &Arc<IdentityStore>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let base = warden_identity::tls::server_config(identity)?;
    let mut config = (*base).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts TCP on `listener`, completes mTLS handshakes concurrently (each bounded by
/// `handshake_timeout`), and yields authenticated connections for tonic: each holds one of
/// its caller's `max_connections_per_peer` slots and closes after `idle_timeout` without a
/// call in flight.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    limits: ApiLimits,
) -> tokio_stream::wrappers::ReceiverStream<Result<IdleClose<MtlsConn>, io::Error>> {
    let (tx, rx) = mpsc::channel(128);
    let acceptor = TlsAcceptor::from(config);
    let per_peer = PeerCounts::new(limits.max_connections_per_peer);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(5);
        loop {
            let (tcp, addr) = match listener.accept().await {
                Ok(conn) => {
                    backoff = Duration::from_millis(5);
                    conn
                }
                Err(e) => {
                    tracing::error!(error = %e, "control plane: accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let per_peer = per_peer.clone();
            tokio::spawn(async move {
                let stream = match tokio::time::timeout(
                    limits.handshake_timeout,
                    acceptor.accept(tcp),
                )
                .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        METRICS.api_handshake_failed(HandshakeFailure::classify_io(&e));
                        if let Some(suppressed) = CONNECTION_LOG.admit() {
                            let reason = HandshakeFailure::classify_io(&e).as_label();
                            let error = HandshakeFailure::describe_io(&e);
                            tracing::warn!(target: "warden::audit", event = crate::audit::AuditEvent::ApiHandshake.as_str(), %addr, result = reason, %error, suppressed, "control-plane handshake failed");
                        }
                        return;
                    }
                    Err(_) => {
                        METRICS.api_handshake_failed(HandshakeFailure::Timeout);
                        if let Some(suppressed) = CONNECTION_LOG.admit() {
                            tracing::warn!(target: "warden::audit", event = crate::audit::AuditEvent::ApiHandshake.as_str(), %addr, result = "timeout", suppressed, "control-plane handshake timed out");
                        }
                        return;
                    }
                };
                let id = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(spiffe_id_of);
                let Some(Ok(spiffe_id)) = id else {
                    METRICS.api_handshake_failed(HandshakeFailure::BadSvid);
                    if let Some(suppressed) = CONNECTION_LOG.admit() {
                        tracing::warn!(target: "warden::audit", event = crate::audit::AuditEvent::ApiHandshake.as_str(), %addr, result = "bad_svid", suppressed, "control-plane caller has no readable SPIFFE ID");
                    }
                    return;
                };
                let Some(slot) = per_peer.acquire(&spiffe_id) else {
                    if let Some(suppressed) = CONNECTION_LOG.admit() {
                        tracing::warn!(target: "warden::audit", event = crate::audit::AuditEvent::ApiConnection.as_str(), %addr, caller = %spiffe_id, limit = "limits.max_connections_per_peer", max = per_peer.max(), suppressed, "control-plane connection refused: the caller holds its share of connections");
                    }
                    return;
                };
                let conn = MtlsConn {
                    stream,
                    caller: Caller { spiffe_id, addr },
                    _slot: slot,
                };
                let _ = tx.send(Ok(IdleClose::new(conn, limits.idle_timeout))).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
