//! A small etcd v3 client on the generated KV and Watch code (`warden_proto::etcd`): TLS 1.3
//! with a client certificate (rustls, the tree's one TLS stack), one connection at a time to
//! one of the configured members, moving to the next member when the current one fails or
//! has no leader. Only what the policy store needs: range, transactions, and a watch that
//! resumes from the last revision it delivered.
//!
//! Why not the `etcd-client` crate: it generates its code with `protoc` at build time, and
//! Warden builds with no system `protoc` (everything goes through `protox`).
//!
//! Every request carries `hasleader: true`, so a member cut off from the quorum refuses at
//! once (and we move on) instead of answering stale reads or holding a watch that never
//! fires.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};
use warden_config::error_chain;
use warden_proto::etcd::etcdserverpb as rpc;
use warden_proto::etcd::etcdserverpb::kv_client::KvClient;

use crate::config::{EtcdConfig, endpoint_authority};

mod watch;
pub use watch::{WatchEnd, WatchEvent, watch_prefix};

/// One attempt at one member: connecting (TCP + TLS + HTTP/2) and then one call.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// One operation, over as many members as it takes.
const OPERATION_BUDGET: Duration = Duration::from_secs(8);

#[derive(Debug, Error)]
pub enum EtcdError {
    #[error("{path}: {detail}")]
    TlsFile { path: String, detail: String },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{endpoint}: {detail}")]
    Unreachable { endpoint: String, detail: String },
    #[error("{endpoint}: {detail}")]
    Refused { endpoint: String, detail: String },
    #[error("no member answered within {budget:?} (is a quorum of the etcd cluster up?): {last}")]
    NoMember {
        budget: Duration,
        last: String,
        /// Some attempt reached a member and got no definite answer (no reply in time, the
        /// connection lost mid-call, etcd's own "request timed out"): a write may still be
        /// applied, for instance once a lost quorum is back.
        maybe_applied: bool,
    },
    #[error("{0}")]
    Protocol(String),
}

/// The etcd cluster, as one client.
pub struct Etcd {
    /// `host:port` per member, in config order.
    members: Vec<String>,
    urls: Vec<String>,
    tls: Arc<rustls::ClientConfig>,
    current: tokio::sync::Mutex<Option<(usize, Channel)>>,
    next: AtomicUsize,
}

fn tls_file_err(path: &std::path::Path, detail: impl std::fmt::Display) -> EtcdError {
    EtcdError::TlsFile {
        path: path.display().to_string(),
        detail: detail.to_string(),
    }
}

/// TLS 1.3 to etcd: the members' certificates must chain to `config.ca`; our client
/// certificate is presented when configured.
fn client_tls(config: &EtcdConfig) -> Result<rustls::ClientConfig, EtcdError> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&config.ca)
        .map_err(|e| tls_file_err(&config.ca, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_file_err(&config.ca, e))?;
    if certs.is_empty() {
        return Err(tls_file_err(&config.ca, "no PEM certificate in the file"));
    }
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| tls_file_err(&config.ca, format!("not a usable CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut tls = match &config.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| tls_file_err(cert, e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls_file_err(cert, e))?;
            if chain.is_empty() {
                return Err(tls_file_err(cert, "no PEM certificate in the file"));
            }
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_file_err(key, e))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| tls_file_err(key, format!("does not fit the certificate: {e}")))?
        }
    };
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tls)
}

/// Whether a failed call may succeed on another member (or the same one later): the member
/// is gone, has no leader, or did not answer in time. Anything else is etcd refusing the
/// request itself (permission denied, a bad request), which no other member would accept.
fn retryable(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Cancelled
            | Code::Aborted
    ) || status.message().contains("no leader")
        || status.message().contains("leader changed")
        || status.message().contains("timed out")
}

fn status_text(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Some(source) = std::error::Error::source(status) {
        text.push_str(": ");
        text.push_str(&error_chain(source));
    }
    text
}

/// With TLS 1.3 a server refuses a client certificate only after the handshake has
/// completed on the client's side: the first call then fails with a closed connection,
/// or, when the client was still writing it, a broken pipe or a reset.
fn with_hint(detail: String) -> String {
    let refused = [
        "connection closed",
        "operation was canceled",
        "received fatal alert",
        "broken pipe",
        "connection reset",
    ];
    if refused.iter().any(|r| detail.contains(r)) {
        format!(
            "{detail} (the member ended the connection right after the TLS handshake: does it \
             accept the client certificate in store.cert, signed by a CA in its \
             --trusted-ca-file?)"
        )
    } else {
        detail
    }
}

/// Whether a failed call certainly did not reach etcd's log: refused before it was sent
/// (no connection) or by a member that has no leader. Anything else that failed after the
/// request left (no answer in time, a connection lost mid-call, "request timed out") may
/// still be applied.
fn certainly_not_applied(status: &tonic::Status) -> bool {
    let text = status_text(status);
    text.contains("no leader") || text.contains("Connection refused")
}

/// A request with `hasleader: true`.
pub(crate) fn leader_request<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "hasleader",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    req
}

impl Etcd {
    pub fn new(config: &EtcdConfig) -> Result<Self, EtcdError> {
        let mut members = Vec::new();
        for url in &config.endpoints {
            members.push(
                endpoint_authority(url)
                    .map_err(|detail| EtcdError::Protocol(format!("{url}: {detail}")))?
                    .to_owned(),
            );
        }
        Ok(Self {
            members,
            urls: config.endpoints.clone(),
            tls: Arc::new(client_tls(config)?),
            current: tokio::sync::Mutex::new(None),
            next: AtomicUsize::new(0),
        })
    }

    /// Connects to member `i` (TCP, TLS 1.3, HTTP/2), eagerly, within [`CONNECT_TIMEOUT`].
    async fn connect(&self, i: usize) -> Result<Channel, EtcdError> {
        let authority = self.members[i].clone();
        let url = self.urls[i].clone();
        let unreachable = |detail: String| EtcdError::Unreachable {
            endpoint: url.clone(),
            detail,
        };
        let host = authority
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_owned())
            .unwrap_or_default();
        let server_name = ServerName::try_from(host)
            .map_err(|e| unreachable(format!("not a TLS server name: {e}")))?;
        let connector = TlsConnector::from(self.tls.clone());
        let endpoint = Endpoint::from_shared(format!("http://{authority}"))
            .map_err(|e| unreachable(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true);
        let dial = authority.clone();
        let service = tower::service_fn(move |_uri| {
            let connector = connector.clone();
            let server_name = server_name.clone();
            let dial = dial.clone();
            async move {
                let tcp = TcpStream::connect(&dial).await?;
                let _ = tcp.set_nodelay(true);
                let tls = connector
                    .connect(server_name, tcp)
                    .await
                    .map_err(|e| std::io::Error::new(e.kind(), format!("TLS handshake: {e}")))?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        });
        match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect_with_connector(service)).await
        {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(e)) => Err(unreachable(with_hint(error_chain(&e)))),
            Err(_) => Err(unreachable(format!(
                "no connection within {CONNECT_TIMEOUT:?}"
            ))),
        }
    }

    /// The current channel, or a new one to the next member in turn.
    async fn channel(&self) -> Result<(usize, Channel), EtcdError> {
        let mut current = self.current.lock().await;
        if let Some((i, ch)) = &*current {
            return Ok((*i, ch.clone()));
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.members.len();
        let ch = self.connect(i).await?;
        *current = Some((i, ch.clone()));
        Ok((i, ch))
    }

    /// Forgets member `i`'s channel (if still current): the next call tries the next member.
    async fn drop_channel(&self, i: usize) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|(c, _)| *c == i) {
            *current = None;
        }
    }

    /// A channel for a long-lived call (the watch): the next member in turn, not shared.
    pub(crate) async fn dedicated_channel(&self) -> Result<(String, Channel), EtcdError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.members.len();
        Ok((self.urls[i].clone(), self.connect(i).await?))
    }

    /// Runs one KV call, moving to another member while the failure is one another member
    /// could fix, within [`OPERATION_BUDGET`]. `call` must be safe to repeat: a call that timed
    /// out may have been applied (the store's writes check for that themselves), and when the
    /// budget runs out after such a call the error says so (`maybe_applied`).
    pub async fn kv<T, F, Fut>(&self, call: F) -> Result<T, EtcdError>
    where
        F: Fn(KvClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + OPERATION_BUDGET;
        // The last failure of each member, in member order, for the error.
        let mut last: Vec<Option<String>> = vec![None; self.members.len()];
        let mut failures = 0usize;
        let mut maybe_applied = false;
        while tokio::time::Instant::now() < deadline {
            let (i, channel) = match self.channel().await {
                Ok(c) => c,
                Err(e) => {
                    let i = self.next.load(Ordering::Relaxed).wrapping_sub(1) % self.members.len();
                    last[i] = Some(e.to_string());
                    failures += 1;
                    self.pause(failures).await;
                    continue;
                }
            };
            match tokio::time::timeout(CALL_TIMEOUT, call(KvClient::new(channel))).await {
                Ok(Ok(resp)) => return Ok(resp.into_inner()),
                Ok(Err(status)) if !retryable(&status) => {
                    return Err(EtcdError::Refused {
                        endpoint: self.urls[i].clone(),
                        detail: status_text(&status),
                    });
                }
                Ok(Err(status)) => {
                    maybe_applied |= !certainly_not_applied(&status);
                    last[i] = Some(format!("{}: {}", self.urls[i], status_text(&status)))
                }
                Err(_) => {
                    maybe_applied = true;
                    last[i] = Some(format!(
                        "{}: no answer within {CALL_TIMEOUT:?}",
                        self.urls[i]
                    ))
                }
            }
            self.drop_channel(i).await;
            failures += 1;
            self.pause(failures).await;
        }
        Err(EtcdError::NoMember {
            budget: OPERATION_BUDGET,
            last: last.into_iter().flatten().collect::<Vec<_>>().join("; "),
            maybe_applied,
        })
    }

    /// After a full round of members has failed, wait a little before the next round.
    async fn pause(&self, failures: usize) {
        if failures.is_multiple_of(self.members.len()) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Checks that some member answers (start-up), with the reason of every failure.
    pub async fn probe(&self, key: Vec<u8>) -> Result<i64, EtcdError> {
        let mut reasons = Vec::new();
        for i in 0..self.members.len() {
            let attempt = async {
                let channel = self.connect(i).await?;
                let resp = tokio::time::timeout(
                    CALL_TIMEOUT,
                    KvClient::new(channel.clone()).range(leader_request(rpc::RangeRequest {
                        key: key.clone(),
                        count_only: true,
                        ..Default::default()
                    })),
                )
                .await
                .map_err(|_| EtcdError::Unreachable {
                    endpoint: self.urls[i].clone(),
                    detail: format!("no answer within {CALL_TIMEOUT:?}"),
                })?
                .map_err(|s| EtcdError::Refused {
                    endpoint: self.urls[i].clone(),
                    detail: with_hint(status_text(&s)),
                })?;
                Ok::<_, EtcdError>((channel, resp.into_inner()))
            };
            match attempt.await {
                Ok((channel, resp)) => {
                    *self.current.lock().await = Some((i, channel));
                    self.next.store(i + 1, Ordering::Relaxed);
                    return Ok(resp.header.map(|h| h.revision).unwrap_or(0));
                }
                Err(e) => reasons.push(e.to_string()),
            }
        }
        Err(EtcdError::Protocol(format!(
            "no member answered: {}",
            reasons.join("; ")
        )))
    }
}

/// `range_end` for "every key with this prefix" (etcd's convention: the prefix with its last
/// byte incremented).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"/w/a"), b"/w/b".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
