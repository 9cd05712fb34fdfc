//! Per-uid shares of the Workload API. A socket is reachable by any local process that can
//! reach its path, and a streaming call is never idle, so without a cap one process could
//! hold connections and calls until the control plane runs out of file descriptors and every
//! other workload on the node waits for its SVID. On each socket, each caller uid (which the
//! kernel vouches for, `SO_PEERCRED`) may hold at most `limits.max_connections_per_peer`
//! connections and `limits.max_streams_per_peer` calls in flight: the figures the policy API
//! applies per caller SPIFFE ID. (Its share of `limits.max_message_bytes_per_peer` is kept
//! by `grpc_limits::MessageShares`, also per socket.) The shares are per socket as well as
//! per uid because a socket is one pod's (the directory mounted into it) and many pods run
//! as the same uid, root most often: a process in one pod must not use up what the next pod
//! needs. Callers whose uid the kernel does not tell share one share.

use std::fmt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::UnixStream;
use tonic::Status;
use tonic::transport::server::{Connected, UdsConnectInfo};
use warden_identity::peer_share::{PeerCounts, PeerSlot};

use crate::audit::{AuditEvent, Decision};
use crate::grpc_limits::{Gate, LogBudget, Permit};
use crate::h2_authority::AuthorityFix;

/// Refusals over a share are logged per connection or call; a flood is summarized.
static SHARE_LOG: LogBudget = LogBudget::new("workload_api_share", 20);

/// A caller as its shares know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Uid(Option<u32>);

impl Uid {
    pub(super) fn of(info: &UdsConnectInfo) -> Self {
        Self(info.peer_cred.map(|cred| cred.uid()))
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(uid) => write!(f, "uid {uid}"),
            None => f.write_str("uid unknown"),
        }
    }
}

/// The connection and call shares of every caller uid on one socket.
pub(super) struct UidShares {
    connections: Arc<PeerCounts<Uid>>,
    streams: Arc<PeerCounts<Uid>>,
}

impl UidShares {
    pub(super) fn new(max_connections: usize, max_streams: usize) -> Self {
        Self {
            connections: PeerCounts::new(max_connections),
            streams: PeerCounts::new(max_streams),
        }
    }

    /// The accepted `stream`, holding one of its caller's connection slots; or `None` (the
    /// stream is closed, and the refusal audited and counted) when the caller holds them all.
    pub(super) fn admit(&self, stream: UnixStream, socket: &Path) -> Option<UidConn> {
        let stream = AuthorityFix::new(stream);
        let uid = Uid::of(&stream.connect_info());
        match self.connections.acquire(&uid) {
            Some(slot) => Some(UidConn {
                inner: stream,
                _slot: slot,
            }),
            None => {
                let max = self.connections.max();
                crate::metrics::METRICS.workload_api_refused("limits.max_connections_per_peer");
                if let Some(suppressed) = SHARE_LOG.admit() {
                    tracing::warn!(target: "warden::audit", event = AuditEvent::ApiConnection.as_str(), socket = %socket.display(), caller = %uid, decision = Decision::Deny.as_str(), limit = "limits.max_connections_per_peer", max, suppressed, "Workload API connection refused: the caller's uid holds its share of connections");
                }
                None
            }
        }
    }

    /// Admits a call while its caller's uid holds fewer than its share of calls in flight;
    /// the permit is held until the call's response has been sent.
    pub(super) fn gate(&self) -> Gate<UdsConnectInfo> {
        let streams = self.streams.clone();
        Arc::new(move |path: &str, info: &UdsConnectInfo| {
            let uid = Uid::of(info);
            match streams.acquire(&uid) {
                Some(slot) => Ok(Some(Box::new(slot) as Permit)),
                None => {
                    let max = streams.max();
                    crate::metrics::METRICS.workload_api_refused("limits.max_streams_per_peer");
                    if let Some(suppressed) = SHARE_LOG.admit() {
                        let method = path.rsplit('/').next().unwrap_or(path);
                        tracing::warn!(target: "warden::audit", event = AuditEvent::Api.as_str(), caller = %uid, method, decision = Decision::Deny.as_str(), limit = "limits.max_streams_per_peer", max, suppressed, "Workload API call refused: the caller's uid holds its share of calls");
                    }
                    Err(Status::resource_exhausted(format!(
                        "{uid} already has {max} Workload API calls in flight"
                    )))
                }
            }
        })
    }
}

/// A Workload API connection that holds one of its caller uid's connection slots.
pub(super) struct UidConn {
    inner: AuthorityFix<UnixStream>,
    _slot: PeerSlot<Uid>,
}

impl AsyncRead for UidConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

delegate_async_write!(UidConn, inner);

impl Connected for UidConn {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> UdsConnectInfo {
        self.inner.connect_info()
    }
}
