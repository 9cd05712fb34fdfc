//! The sidecar's Prometheus metrics (`docs/metrics.md`), exposed as OpenMetrics text.
//!
//! Why this shape: every label lookup (a `Family` map access) happens once per connection,
//! when its labels are resolved; the per-read path only bumps an atomic through a cloned
//! counter handle, so connections never contend on a lock while moving bytes.
//!
//! It must never let a peer choose how much memory it costs: the `peer_id` label holds at
//! most `peer_id_limit` distinct values, after which every new identity is counted as
//! `other` (a flood of forged or merely numerous identities cannot grow the registry).

use std::collections::HashSet;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use warden_policy::Direction;

use crate::registry::CloseReason;

/// Default cap on distinct `peer_id` label values.
pub const DEFAULT_PEER_ID_LIMIT: usize = 1024;
/// The `peer_id` value used once the cap is reached.
pub const OTHER_PEER: &str = "other";
/// The `peer_id` of an inbound handshake that failed before the peer proved an identity.
pub const UNKNOWN_PEER: &str = "unknown";

#[derive(Debug, Error)]
pub enum MetricsError {
    #[error("encoding metrics as OpenMetrics text failed")]
    Encode(#[from] std::fmt::Error),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    direction: &'static str,
    listener: Arc<str>,
    peer_id: Arc<str>,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    direction: &'static str,
    listener: Arc<str>,
    peer_id: Arc<str>,
    decision: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    direction: &'static str,
    listener: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClosedLabels {
    direction: &'static str,
    listener: Arc<str>,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    direction: &'static str,
    listener: Arc<str>,
    peer_id: Arc<str>,
    flow: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SpiffeIdLabel {
    spiffe_id: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JwksLabels {
    /// The `[[jwt]]` name: bounded by the config.
    issuer: Arc<str>,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    listener: Arc<str>,
    peer_id: Arc<str>,
    decision: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

type HistogramFamily = Family<DirectionLabel, Histogram, fn() -> Histogram>;

fn handshake_histogram() -> Histogram {
    // 0.5 ms .. ~4 s: a loopback handshake is a millisecond, a congested WAN one seconds.
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

/// Interns `peer_id` label values up to a limit. Touched once per connection.
#[derive(Debug)]
struct PeerIdCap {
    limit: usize,
    seen: RwLock<HashSet<Arc<str>>>,
    other: Arc<str>,
}

impl PeerIdCap {
    fn label(&self, id: &str) -> Arc<str> {
        // A poisoned lock still holds a consistent set (single inserts), so keep using it.
        if let Some(v) = self.seen.read().unwrap_or_else(|p| p.into_inner()).get(id) {
            return v.clone();
        }
        let mut seen = self.seen.write().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = seen.get(id) {
            return v.clone();
        }
        if seen.len() >= self.limit {
            return self.other.clone();
        }
        let v: Arc<str> = Arc::from(id);
        seen.insert(v.clone());
        v
    }

    fn len(&self) -> usize {
        self.seen.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// How a load of an issuer's JWT keys ended: the `result` of `warden_jwks_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwksReload {
    /// Loaded; the new set is in force.
    Ok,
    /// Fetched or read, but not a usable key set.
    Invalid,
    /// Could not be fetched or read.
    Unavailable,
}

impl JwksReload {
    pub const fn as_str(self) -> &'static str {
        match self {
            JwksReload::Ok => "ok",
            JwksReload::Invalid => "invalid",
            JwksReload::Unavailable => "unavailable",
        }
    }
}

/// What became of an edge report: the `result` of `warden_edge_reports_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeReportResult {
    /// Handed to the watch stream.
    Sent,
    /// No stream, or its queue was full.
    Dropped,
}

impl EdgeReportResult {
    pub const fn as_str(self) -> &'static str {
        match self {
            EdgeReportResult::Sent => "sent",
            EdgeReportResult::Dropped => "dropped",
        }
    }
}

/// All metric families of one sidecar, and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    peers: PeerIdCap,
    handshakes: Family<HandshakeLabels, Counter>,
    handshake_duration: HistogramFamily,
    decisions: Family<DecisionLabels, Counter>,
    open: Family<ListenerLabels, Gauge>,
    closed: Family<ClosedLabels, Counter>,
    bytes: Family<BytesLabels, Counter>,
    svid_expiry: Family<SpiffeIdLabel, Gauge>,
    rotations: Family<ResultLabel, Counter>,
    policy_version: Gauge,
    policy_updates: Family<ResultLabel, Counter>,
    control_plane_connected: Gauge,
    jwks_reloads: Family<JwksLabels, Counter>,
    http_requests: Family<HttpLabels, Counter>,
    edge_reports: Family<ResultLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(DEFAULT_PEER_ID_LIMIT)
    }
}

impl Metrics {
    pub fn new(peer_id_limit: usize) -> Self {
        let mut m = Self {
            registry: Registry::default(),
            peers: PeerIdCap {
                limit: peer_id_limit,
                seen: RwLock::new(HashSet::new()),
                other: Arc::from(OTHER_PEER),
            },
            handshakes: Family::default(),
            handshake_duration: Family::new_with_constructor(handshake_histogram),
            decisions: Family::default(),
            open: Family::default(),
            closed: Family::default(),
            bytes: Family::default(),
            svid_expiry: Family::default(),
            rotations: Family::default(),
            policy_version: Gauge::default(),
            policy_updates: Family::default(),
            control_plane_connected: Gauge::default(),
            jwks_reloads: Family::default(),
            http_requests: Family::default(),
            edge_reports: Family::default(),
        };
        // Counters get their `_total` suffix from the encoder (OpenMetrics rule).
        let r = &mut m.registry;
        r.register(
            "warden_tls_handshakes",
            "TLS handshakes by result",
            m.handshakes.clone(),
        );
        r.register_with_unit(
            "warden_tls_handshake_duration",
            "Time to complete (or fail) a TLS handshake",
            Unit::Seconds,
            m.handshake_duration.clone(),
        );
        r.register(
            "warden_authz_decisions",
            "Authorization decisions on peer identities",
            m.decisions.clone(),
        );
        r.register(
            "warden_connections_open",
            "Connections currently relaying",
            m.open.clone(),
        );
        r.register(
            "warden_connections_closed",
            "Connections closed, by reason",
            m.closed.clone(),
        );
        r.register(
            "warden_connection_bytes",
            "Bytes relayed on the mTLS side (rx: from the peer, tx: to the peer)",
            m.bytes.clone(),
        );
        r.register(
            "warden_identity_svid_expiry_timestamp_seconds",
            "Expiry of the current SVID, Unix seconds",
            m.svid_expiry.clone(),
        );
        r.register(
            "warden_identity_rotations",
            "SVID updates from the identity source, by result",
            m.rotations.clone(),
        );
        r.register(
            "warden_policy_version",
            "Version of the enforced policy",
            m.policy_version.clone(),
        );
        r.register(
            "warden_policy_updates",
            "Policy updates, by result",
            m.policy_updates.clone(),
        );
        r.register(
            "warden_control_plane_connected",
            "1 while the control-plane watch stream is up",
            m.control_plane_connected.clone(),
        );
        r.register(
            "warden_jwks_reloads",
            "JWT key set loads per [[jwt]] issuer (ok, invalid: refused and the last good set kept, unavailable: not readable or reachable)",
            m.jwks_reloads.clone(),
        );
        r.register(
            "warden_http_requests",
            "HTTP requests on http listeners, by decision and reason",
            m.http_requests.clone(),
        );
        r.register(
            "warden_edge_reports",
            "Edge reports to the control plane (sent, or dropped: no watch stream up, or its queue full)",
            m.edge_reports.clone(),
        );
        r.register(
            "warden_build",
            "Build information",
            Info::new(VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        m
    }

    /// A key set load of `[[jwt]]` issuer `issuer` ended with `result`.
    pub(crate) fn jwks_reload(&self, issuer: &Arc<str>, result: JwksReload) {
        self.jwks_reloads
            .get_or_create(&JwksLabels {
                issuer: issuer.clone(),
                result: result.as_str(),
            })
            .inc();
    }

    /// An edge report was handed to the watch stream or dropped.
    pub(crate) fn edge_report(&self, result: EdgeReportResult) {
        self.edge_reports
            .get_or_create(&ResultLabel {
                result: result.as_str(),
            })
            .inc();
    }

    /// The capped `peer_id` label for `id` (`other` once the cap is reached).
    pub fn peer_label(&self, id: &str) -> Arc<str> {
        self.peers.label(id)
    }

    /// How many distinct `peer_id` values are in use (never above the limit).
    pub fn distinct_peer_ids(&self) -> usize {
        self.peers.len()
    }

    /// The whole registry as OpenMetrics text.
    pub fn encode(&self) -> Result<String, MetricsError> {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    pub(crate) fn handshake(
        &self,
        direction: &'static str,
        listener: Arc<str>,
        peer_id: Arc<str>,
        result: &'static str,
        seconds: f64,
    ) {
        self.handshakes
            .get_or_create(&HandshakeLabels {
                direction,
                listener,
                peer_id,
                result,
            })
            .inc();
        self.handshake_duration
            .get_or_create(&DirectionLabel { direction })
            .observe(seconds);
    }

    pub(crate) fn decision(
        &self,
        direction: &'static str,
        listener: Arc<str>,
        peer_id: Arc<str>,
        decision: &'static str,
        reason: &'static str,
    ) {
        self.decisions
            .get_or_create(&DecisionLabels {
                direction,
                listener,
                peer_id,
                decision,
                reason,
            })
            .inc();
    }

    pub(crate) fn http_request(
        &self,
        listener: Arc<str>,
        peer_id: Arc<str>,
        decision: &'static str,
        reason: &'static str,
    ) {
        self.http_requests
            .get_or_create(&HttpLabels {
                listener,
                peer_id,
                decision,
                reason,
            })
            .inc();
    }

    pub(crate) fn closed(&self, direction: Direction, listener: Arc<str>, reason: CloseReason) {
        self.closed
            .get_or_create(&ClosedLabels {
                direction: direction.as_str(),
                listener,
                reason: reason.as_label(),
            })
            .inc();
    }

    /// Resolves the per-connection handles once: the open gauge (incremented now,
    /// decremented when the returned value drops) and the two byte counters.
    pub(crate) fn open(
        &self,
        direction: &'static str,
        listener: Arc<str>,
        peer_id: Arc<str>,
    ) -> ConnMeters {
        let gauge = self.open.get_or_create_owned(&ListenerLabels {
            direction,
            listener: listener.clone(),
        });
        gauge.inc();
        let bytes = |flow| {
            self.bytes.get_or_create_owned(&BytesLabels {
                direction,
                listener: listener.clone(),
                peer_id: peer_id.clone(),
                flow,
            })
        };
        ConnMeters {
            _open: OpenGuard(gauge),
            rx: bytes("rx"),
            tx: bytes("tx"),
        }
    }

    pub(crate) fn svid_expiry(&self, previous: Option<&Arc<str>>, id: Arc<str>, unix: i64) {
        if let Some(prev) = previous
            && **prev != *id
        {
            // A new SPIFFE ID replaces the old series instead of leaving a stale expiry.
            self.svid_expiry.remove(&SpiffeIdLabel {
                spiffe_id: prev.clone(),
            });
        }
        self.svid_expiry
            .get_or_create(&SpiffeIdLabel { spiffe_id: id })
            .set(unix);
    }

    pub(crate) fn rotation(&self, outcome: crate::telemetry::RotationOutcome) {
        let result = outcome.as_label();
        self.rotations.get_or_create(&ResultLabel { result }).inc();
    }

    pub(crate) fn policy_update(
        &self,
        outcome: crate::telemetry::PolicyOutcome,
        version: Option<u64>,
    ) {
        let result = outcome.as_label();
        self.policy_updates
            .get_or_create(&ResultLabel { result })
            .inc();
        if let Some(v) = version {
            self.set_policy_version(v);
        }
    }

    pub(crate) fn set_policy_version(&self, version: u64) {
        self.policy_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
    }

    pub(crate) fn policy_version(&self) -> u64 {
        u64::try_from(self.policy_version.get()).unwrap_or(0)
    }

    pub(crate) fn set_control_plane_connected(&self, connected: bool) {
        self.control_plane_connected.set(i64::from(connected));
    }
}

/// Decrements `warden_connections_open` when the connection's task ends, on every path.
#[derive(Debug)]
struct OpenGuard(Gauge<i64, AtomicI64>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The metric handles one relaying connection holds.
#[derive(Debug)]
pub struct ConnMeters {
    /// Held only for its `Drop`.
    _open: OpenGuard,
    rx: Counter<u64, AtomicU64>,
    tx: Counter<u64, AtomicU64>,
}

impl ConnMeters {
    /// Handles registered nowhere: what an off [`crate::Telemetry`] hands out.
    pub(crate) fn detached() -> Self {
        Self {
            _open: OpenGuard(Gauge::default()),
            rx: Counter::default(),
            tx: Counter::default(),
        }
    }

    /// Wraps the peer-side stream so that every read and write lands directly in
    /// `warden_connection_bytes_total`: live connections show up in scrapes, not only at close.
    pub fn meter<S>(&self, inner: S) -> MeteredIo<S> {
        MeteredIo {
            inner,
            rx: self.rx.clone(),
            tx: self.tx.clone(),
        }
    }
}

/// A stream that counts its bytes into two counters (one relaxed atomic add per I/O call).
pub struct MeteredIo<S> {
    inner: S,
    rx: Counter<u64, AtomicU64>,
    tx: Counter<u64, AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for MeteredIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.rx.inc_by(n as u64);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for MeteredIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = res
            && n > 0
        {
            self.tx.inc_by(n as u64);
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_id_cardinality_is_capped_under_5000_identities() {
        let m = Metrics::new(DEFAULT_PEER_ID_LIMIT);
        for i in 0..5000 {
            let id = format!("spiffe://example.org/forged/{i}");
            let peer = m.peer_label(&id);
            m.decision("inbound", Arc::from("http"), peer, "deny", "no_match");
        }
        assert_eq!(m.distinct_peer_ids(), DEFAULT_PEER_ID_LIMIT);
        let text = m.encode().expect("encode");
        let series = text
            .lines()
            .filter(|l| l.starts_with("warden_authz_decisions_total{"))
            .count();
        assert_eq!(
            series,
            DEFAULT_PEER_ID_LIMIT + 1,
            "limit + the `other` series"
        );
        let other = text
            .lines()
            .find(|l| {
                l.starts_with("warden_authz_decisions_total{") && l.contains("peer_id=\"other\"")
            })
            .expect("other series");
        assert!(other.ends_with(" 3976"), "{other}");
        // An identity seen before the cap keeps its own series.
        assert_eq!(
            &*m.peer_label("spiffe://example.org/forged/0"),
            "spiffe://example.org/forged/0"
        );
    }

    #[test]
    fn names_follow_the_design_table() {
        let m = Metrics::default();
        m.handshake(
            "inbound",
            Arc::from("http"),
            Arc::from(UNKNOWN_PEER),
            "untrusted",
            0.01,
        );
        m.closed(Direction::Inbound, Arc::from("http"), CloseReason::Limit);
        m.rotation(crate::telemetry::RotationOutcome::Loaded);
        m.policy_update(crate::telemetry::PolicyOutcome::Applied, Some(7));
        let meters = m.open("outbound", Arc::from("llm"), Arc::from("spiffe://x/y"));
        let text = m.encode().expect("encode");
        for needle in [
            "warden_tls_handshakes_total{direction=\"inbound\",listener=\"http\",peer_id=\"unknown\",result=\"untrusted\"} 1",
            "warden_tls_handshake_duration_seconds_count{direction=\"inbound\"} 1",
            "warden_connections_closed_total{direction=\"inbound\",listener=\"http\",reason=\"limit\"} 1",
            "warden_connections_open{direction=\"outbound\",listener=\"llm\"} 1",
            "warden_identity_rotations_total{result=\"ok\"} 1",
            "warden_policy_version 7",
            "warden_policy_updates_total{result=\"ok\"} 1",
            "warden_control_plane_connected 0",
            "warden_build_info{version=",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        drop(meters);
        let text = m.encode().expect("encode");
        assert!(
            text.contains("warden_connections_open{direction=\"outbound\",listener=\"llm\"} 0")
        );
    }
}
