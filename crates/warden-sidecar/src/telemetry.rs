//! What the sidecar reports about each connection, identity and policy: the metric
//! increments and the audit records (security invariant 8 of `docs/security.md`: every
//! authorization decision and handshake failure produces both). The data plane calls these
//! hooks and nothing else, so metrics and the audit log hang off one place.
//!
//! It must never block a connection task (metrics are atomics, the audit log a non-blocking
//! queue), never do a label lookup per byte (a connection resolves its labels once, in
//! [`Telemetry::peer`], and keeps the handles), and never record key material.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, UNIX_EPOCH};

use warden_identity::{HandshakeFailure, Identity, SpiffeId};
use warden_policy::{Decision, Direction, Reason};

use crate::audit::{AuditDecision, AuditEvent, AuditLog, Record};
use crate::edges::{EdgeKey, Edges};
use crate::metrics::{ConnMeters, EdgeReportResult, Metrics, UNKNOWN_PEER};
use crate::registry::CloseReason;

/// How a policy update ended: `warden_policy_updates_total{result}` and the audit record's
/// decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyOutcome {
    /// The policy offered is in force (`ok`).
    Applied,
    /// It did not parse, or named another workload: deny-all is in force instead.
    Invalid,
    /// It was refused and the policy in force stays (a foreign or damaged cache).
    Rejected,
}

impl PolicyOutcome {
    pub fn as_label(self) -> &'static str {
        match self {
            PolicyOutcome::Applied => "ok",
            PolicyOutcome::Invalid => "invalid",
            PolicyOutcome::Rejected => "rejected",
        }
    }

    fn decision(self) -> AuditDecision {
        match self {
            PolicyOutcome::Applied => AuditDecision::Ok,
            PolicyOutcome::Invalid => AuditDecision::Invalid,
            PolicyOutcome::Rejected => AuditDecision::Rejected,
        }
    }
}

/// How an SVID update ended: `warden_identity_rotations_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationOutcome {
    /// Installed (`ok`).
    Loaded,
    /// Refused; the previous SVID stays (`rejected`).
    Rejected,
}

impl RotationOutcome {
    pub fn as_label(self) -> &'static str {
        match self {
            RotationOutcome::Loaded => "ok",
            RotationOutcome::Rejected => "rejected",
        }
    }
}

/// Metrics and audit sink of one sidecar; clones share both.
#[derive(Debug, Clone, Default)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    metrics: Metrics,
    audit: AuditLog,
    /// Benchmarks only ([`Telemetry::off`]): every hook returns at once. A running sidecar
    /// never has this set; its decisions are always counted and audited (invariant 8,
    /// `docs/security.md`).
    off: bool,
    /// The SPIFFE ID whose expiry the gauge currently shows (replaced on an ID change).
    svid_id: Mutex<Option<Arc<str>>>,
    /// Edge counts for the control plane, when the sidecar reports them.
    edges: OnceLock<Arc<Edges>>,
}

/// A connection's labels, resolved once when its peer is known.
#[derive(Debug, Clone)]
pub struct PeerLabels {
    direction: Direction,
    listener: Arc<str>,
    /// Capped label value (may be `other`).
    peer_label: Arc<str>,
    /// The full identity (a SPIFFE ID, or an egress SNI name), for audit records and edge
    /// counts.
    peer: Arc<str>,
}

/// One HTTP request's outcome, for [`Telemetry::http_request`].
pub struct HttpOutcome<'a> {
    pub allowed: bool,
    /// Allowed only because the policy is in audit mode (`decision="would_deny"`).
    pub would_deny: bool,
    /// The `reason` label: `allowed`, `no_routes`, `no_match`, `claims_mismatch`,
    /// `bad_path`, or why the token was refused.
    pub reason: &'static str,
    /// The route that allowed it (index among the workload's routes).
    pub route: Option<usize>,
    pub user: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub detail: Option<String>,
}

/// Why capture refused a redirected connection before any policy could be asked (the
/// `reason` label of `warden_authz_decisions_total`, with `decision="deny"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureRefusal {
    /// Captured inbound to a port no `[[inbound]]` claims.
    NoListener,
    /// Captured outbound to an address no `[[outbound]]` claims and no `[[egress]]` port.
    UnknownDestination,
    /// Egress whose ClientHello names no listed host (or is no ClientHello at all).
    EgressDenied,
    /// The sidecar's own upstream connection came back through capture: it is not running
    /// as the proxy uid that `warden init` exempts.
    Loop,
}

impl CaptureRefusal {
    pub fn as_label(self) -> &'static str {
        match self {
            CaptureRefusal::NoListener => "no_listener",
            CaptureRefusal::UnknownDestination => "unknown_destination",
            CaptureRefusal::EgressDenied => "egress_denied",
            CaptureRefusal::Loop => "capture_loop",
        }
    }
}

impl Telemetry {
    pub fn new(metrics: Metrics, audit: AuditLog) -> Self {
        Self {
            inner: Arc::new(Inner {
                metrics,
                audit,
                off: false,
                svid_id: Mutex::new(None),
                edges: OnceLock::new(),
            }),
        }
    }

    /// Counts every decision from now on per edge into `edges`, for the control plane.
    /// Set once, at start-up; a second call is ignored.
    pub fn report_edges(&self, edges: Arc<Edges>) {
        let _ = self.inner.edges.set(edges);
    }

    fn edge(
        &self,
        p: &PeerLabels,
        decision: &'static str,
        reason: &'static str,
        http: bool,
        route: Option<usize>,
    ) {
        if let Some(edges) = self.inner.edges.get() {
            edges.record(EdgeKey {
                direction: p.direction.as_str(),
                listener: p.listener.clone(),
                peer: p.peer.clone(),
                decision,
                reason,
                http,
                route: route.and_then(|r| u32::try_from(r).ok()),
            });
        }
    }

    /// Records nothing at all: the baseline for measuring what metrics and the audit log
    /// cost (`cargo bench --bench telemetry_overhead`). Never used by `warden sidecar`.
    #[doc(hidden)]
    pub fn off() -> Self {
        Self {
            inner: Arc::new(Inner {
                metrics: Metrics::new(1),
                audit: AuditLog::disabled(),
                off: true,
                svid_id: Mutex::new(None),
                edges: OnceLock::new(),
            }),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn audit(&self) -> &AuditLog {
        &self.inner.audit
    }

    /// Resolves a connection's labels (one capped `peer_id` lookup).
    pub fn peer(&self, direction: Direction, listener: &Arc<str>, peer: &SpiffeId) -> PeerLabels {
        if self.inner.off {
            return PeerLabels {
                direction,
                listener: listener.clone(),
                peer_label: listener.clone(),
                peer: peer.as_str().into(),
            };
        }
        self.named_peer(direction, listener, peer.as_str())
    }

    /// [`Telemetry::peer`] for a peer known by name only: an egress destination's SNI.
    pub fn named_peer(&self, direction: Direction, listener: &Arc<str>, name: &str) -> PeerLabels {
        PeerLabels {
            direction,
            listener: listener.clone(),
            peer_label: self.inner.metrics.peer_label(name),
            peer: name.into(),
        }
    }

    /// Capture refused a redirected connection (no listener or destination claims it, or
    /// egress not listed): a `deny` decision with the refusal as its reason, and an audit
    /// record whose detail says what was asked for.
    pub fn capture_refused(
        &self,
        direction: Direction,
        listener: &Arc<str>,
        conn_id: u64,
        peer_addr: SocketAddr,
        refusal: CaptureRefusal,
        detail: String,
    ) {
        if self.inner.off {
            return;
        }
        self.inner.metrics.decision(
            direction.as_str(),
            listener.clone(),
            Arc::from(UNKNOWN_PEER),
            "deny",
            refusal.as_label(),
        );
        tracing::debug!(direction = direction.as_str(), listener = &**listener, conn_id, %peer_addr, reason = refusal.as_label(), detail, "captured connection refused");
        self.inner.audit.emit(Record {
            direction: Some(direction.as_str()),
            listener: Some(listener.clone()),
            peer_addr: Some(peer_addr),
            decision: Some(AuditDecision::Deny),
            reason: Some(refusal.as_label().to_owned()),
            policy_version: Some(self.inner.metrics.policy_version()),
            conn_id: Some(conn_id),
            detail: Some(detail),
            ..Record::new(AuditEvent::Authz)
        });
    }

    /// A decision on one HTTP request: `warden_http_requests_total` and an `http` audit
    /// record (denials flood-bounded like connection denials).
    pub fn http_request(
        &self,
        p: &PeerLabels,
        conn_id: u64,
        peer_addr: SocketAddr,
        o: &HttpOutcome<'_>,
    ) {
        if self.inner.off {
            return;
        }
        let (decision, verdict) = match (o.allowed, o.would_deny) {
            (_, true) => ("would_deny", AuditDecision::WouldDeny),
            (true, false) => ("allow", AuditDecision::Allow),
            (false, false) => ("deny", AuditDecision::Deny),
        };
        self.inner.metrics.http_request(
            p.listener.clone(),
            p.peer_label.clone(),
            decision,
            o.reason,
        );
        self.edge(p, decision, o.reason, true, o.route);
        self.inner.audit.emit(Record {
            direction: Some(p.direction.as_str()),
            listener: Some(p.listener.clone()),
            peer_id: Some(p.peer.to_string()),
            peer_addr: Some(peer_addr),
            decision: Some(verdict),
            rule: o.route.map(|i| format!("route[{i}]")),
            reason: Some(o.reason.to_owned()),
            policy_version: Some(self.inner.metrics.policy_version()),
            conn_id: Some(conn_id),
            detail: o.detail.clone(),
            method: Some(o.method.to_owned()),
            path: Some(o.path.to_owned()),
            user: o.user.map(str::to_owned),
            ..Record::new(AuditEvent::Http)
        });
    }

    /// Egress let through: an `allow` decision on the `[[egress]]` listener, for the SNI
    /// name in `p`, by the `hosts` entry `rule`.
    pub fn egress_allowed(
        &self,
        p: &PeerLabels,
        conn_id: u64,
        peer_addr: SocketAddr,
        rule: &str,
        detail: String,
    ) {
        if self.inner.off {
            return;
        }
        self.inner.metrics.decision(
            p.direction.as_str(),
            p.listener.clone(),
            p.peer_label.clone(),
            "allow",
            "allowed",
        );
        self.inner.audit.emit(Record {
            direction: Some(p.direction.as_str()),
            listener: Some(p.listener.clone()),
            peer_id: Some(p.peer.to_string()),
            peer_addr: Some(peer_addr),
            decision: Some(AuditDecision::Allow),
            rule: Some(rule.to_owned()),
            reason: Some("allowed".to_owned()),
            policy_version: Some(self.inner.metrics.policy_version()),
            conn_id: Some(conn_id),
            detail: Some(detail),
            ..Record::new(AuditEvent::Authz)
        });
    }

    pub fn handshake_ok(&self, p: &PeerLabels, started: Instant) {
        if self.inner.off {
            return;
        }
        self.inner.metrics.handshake(
            p.direction.as_str(),
            p.listener.clone(),
            p.peer_label.clone(),
            "ok",
            started.elapsed().as_secs_f64(),
        );
    }

    /// `expected` is the identity an outbound connection was trying to reach; inbound
    /// failures have no proven peer and are labelled `unknown`.
    #[allow(clippy::too_many_arguments)]
    pub fn handshake_failed(
        &self,
        direction: Direction,
        listener: &Arc<str>,
        conn_id: u64,
        peer_addr: SocketAddr,
        failure: HandshakeFailure,
        detail: &str,
        expected: Option<&SpiffeId>,
        started: Instant,
    ) {
        if self.inner.off {
            return;
        }
        let peer_label = match expected {
            Some(id) => self.inner.metrics.peer_label(id.as_str()),
            None => Arc::from(UNKNOWN_PEER),
        };
        self.inner.metrics.handshake(
            direction.as_str(),
            listener.clone(),
            peer_label,
            failure.as_label(),
            started.elapsed().as_secs_f64(),
        );
        tracing::debug!(direction = direction.as_str(), listener = &**listener, conn_id, %peer_addr, result = failure.as_label(), detail, "handshake failed");
        self.inner.audit.emit(Record {
            direction: Some(direction.as_str()),
            listener: Some(listener.clone()),
            peer_id: expected.map(|id| id.as_str().to_owned()),
            peer_addr: Some(peer_addr),
            reason: Some(failure.as_label().to_owned()),
            policy_version: Some(self.inner.metrics.policy_version()),
            conn_id: Some(conn_id),
            detail: Some(detail.to_owned()),
            ..Record::new(AuditEvent::HandshakeFailure)
        });
    }

    pub fn decision(
        &self,
        p: &PeerLabels,
        conn_id: u64,
        peer_addr: SocketAddr,
        decision: &Decision<'_>,
        policy_version: u64,
    ) {
        if self.inner.off {
            return;
        }
        let verdict = decision.as_label();
        let rule = match decision.reason {
            Reason::Matched { rule } => Some(rule.to_owned()),
            _ => None,
        };
        self.inner.metrics.decision(
            p.direction.as_str(),
            p.listener.clone(),
            p.peer_label.clone(),
            verdict,
            decision.reason.as_label(),
        );
        self.edge(p, verdict, decision.reason.as_label(), false, None);
        tracing::debug!(direction = p.direction.as_str(), listener = &*p.listener, conn_id, %peer_addr, peer_id = &*p.peer, decision = verdict, reason = decision.reason.as_label(), policy_version, "authorization decision");
        self.inner.audit.emit(Record {
            direction: Some(p.direction.as_str()),
            listener: Some(p.listener.clone()),
            peer_id: Some(p.peer.to_string()),
            peer_addr: Some(peer_addr),
            decision: Some(if decision.would_deny {
                AuditDecision::WouldDeny
            } else if decision.allowed {
                AuditDecision::Allow
            } else {
                AuditDecision::Deny
            }),
            rule,
            reason: Some(decision.reason.as_label().to_owned()),
            policy_version: Some(policy_version),
            conn_id: Some(conn_id),
            ..Record::new(AuditEvent::Authz)
        });
    }

    /// The connection starts relaying: counts it open until the returned handles drop, and
    /// hands out the byte counters (see [`ConnMeters::meter`]).
    pub fn open(&self, p: &PeerLabels) -> ConnMeters {
        if self.inner.off {
            return ConnMeters::detached();
        }
        self.inner.metrics.open(
            p.direction.as_str(),
            p.listener.clone(),
            p.peer_label.clone(),
        )
    }

    pub fn closed(
        &self,
        p: &PeerLabels,
        conn_id: u64,
        peer_addr: SocketAddr,
        reason: CloseReason,
        rx: u64,
        tx: u64,
    ) {
        if self.inner.off {
            return;
        }
        self.inner
            .metrics
            .closed(p.direction, p.listener.clone(), reason);
        tracing::debug!(
            direction = p.direction.as_str(),
            listener = &*p.listener,
            conn_id,
            reason = reason.as_label(),
            rx,
            tx,
            "connection closed"
        );
        if reason == CloseReason::Revoked {
            self.inner.audit.emit(Record {
                direction: Some(p.direction.as_str()),
                listener: Some(p.listener.clone()),
                peer_id: Some(p.peer.to_string()),
                peer_addr: Some(peer_addr),
                decision: Some(AuditDecision::Deny),
                reason: Some(reason.as_label().to_owned()),
                policy_version: Some(self.inner.metrics.policy_version()),
                conn_id: Some(conn_id),
                ..Record::new(AuditEvent::Revoked)
            });
        }
    }

    /// A connection was refused by `limit`: at accept (`limits.max_connections`,
    /// `limits.max_pending_handshakes`), or once its handshake named a peer that holds its
    /// whole share (`limits.max_connections_per_peer`, with `peer`). Counted as closed with
    /// reason `limit`, and audited as a `refused` record (rate-limited like handshake
    /// failures: a flood makes summaries).
    pub fn refused_at_limit(
        &self,
        direction: Direction,
        listener: &Arc<str>,
        peer_addr: SocketAddr,
        peer: Option<&PeerLabels>,
        limit: &'static str,
    ) {
        if self.inner.off {
            return;
        }
        self.inner
            .metrics
            .closed(direction, listener.clone(), CloseReason::Limit);
        self.inner.audit.emit(Record {
            direction: Some(direction.as_str()),
            listener: Some(listener.clone()),
            peer_addr: Some(peer_addr),
            peer_id: peer.map(|p| p.peer.to_string()),
            decision: Some(AuditDecision::Deny),
            reason: Some(CloseReason::Limit.as_label().to_owned()),
            policy_version: Some(self.inner.metrics.policy_version()),
            detail: Some(format!("{limit} reached")),
            ..Record::new(AuditEvent::Refused)
        });
    }

    /// A new SVID was installed.
    pub fn svid_loaded(&self, source: &str, identity: &Identity) {
        if self.inner.off {
            return;
        }
        let id: Arc<str> = Arc::from(identity.spiffe_id().as_str());
        let expiry = identity
            .not_after()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        {
            let mut current = self.inner.svid_id.lock().unwrap_or_else(|p| p.into_inner());
            self.inner
                .metrics
                .svid_expiry(current.as_ref(), id.clone(), expiry);
            *current = Some(id);
        }
        self.inner.metrics.rotation(RotationOutcome::Loaded);
        let expires = humantime::format_rfc3339_seconds(identity.not_after());
        self.inner.audit.emit(Record {
            peer_id: Some(identity.spiffe_id().as_str().to_owned()),
            decision: Some(AuditDecision::Ok),
            reason: Some(format!("SVID from {source} loaded; expires {expires}")),
            ..Record::new(AuditEvent::Rotation)
        });
    }

    /// The source offered an SVID that failed validation; the previous one stays.
    pub fn svid_rejected(&self, source: &str, reason: &str) {
        if self.inner.off {
            return;
        }
        self.inner.metrics.rotation(RotationOutcome::Rejected);
        self.inner.audit.emit(Record {
            decision: Some(AuditDecision::Rejected),
            reason: Some(format!("SVID from {source} rejected: {reason}")),
            ..Record::new(AuditEvent::Rotation)
        });
    }

    /// A policy was installed (`Shared::apply_policy` calls this for every snapshot it
    /// swaps in): `outcome` says whether it is the policy offered or, replacing one that did
    /// not parse, deny-all.
    pub fn policy_update(
        &self,
        outcome: PolicyOutcome,
        version: u64,
        source: &str,
        revoked: usize,
    ) {
        if self.inner.off {
            return;
        }
        let result = outcome.as_label();
        self.inner.metrics.policy_update(outcome, Some(version));
        tracing::info!(version, source, result, revoked, "policy applied");
        self.inner.audit.emit(Record {
            decision: Some(outcome.decision()),
            reason: Some(format!(
                "policy from {source} applied; {revoked} open connection(s) revoked"
            )),
            policy_version: Some(version),
            ..Record::new(AuditEvent::Policy)
        });
    }

    /// A policy was offered but not put in force (a foreign or damaged cache); the policy in
    /// force stays. Counted as `warden_policy_updates_total{result="rejected"}`.
    pub fn policy_rejected(&self, why: &str) {
        if self.inner.off {
            return;
        }
        self.inner
            .metrics
            .policy_update(PolicyOutcome::Rejected, None);
        self.inner.audit.emit(Record {
            decision: Some(AuditDecision::Rejected),
            reason: Some(why.to_owned()),
            ..Record::new(AuditEvent::Policy)
        });
    }

    /// The enforced policy's version, without counting an update (start-up).
    pub fn set_policy_version(&self, version: u64) {
        if self.inner.off {
            return;
        }
        self.inner.metrics.set_policy_version(version);
    }

    /// `warden_edge_reports_total{result}`: an edge report was sent or dropped.
    pub fn edge_report(&self, result: EdgeReportResult) {
        if self.inner.off {
            return;
        }
        self.inner.metrics.edge_report(result);
    }

    /// `warden_control_plane_connected`: set by the control-plane watch client.
    pub fn control_plane_connected(&self, connected: bool) {
        if self.inner.off {
            return;
        }
        self.inner.metrics.set_control_plane_connected(connected);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed_total(t: &Telemetry) -> bool {
        t.metrics()
            .encode()
            .map(|text| {
                text.lines().any(|l| {
                    l.starts_with("warden_connections_closed_total{") && !l.ends_with(" 0")
                })
            })
            .unwrap_or(false)
    }

    #[test]
    fn only_the_benchmark_baseline_records_nothing() {
        let listener: Arc<str> = Arc::from("http");
        let peer = SpiffeId::parse("spiffe://example.org/a").expect("id");
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let on = Telemetry::new(Metrics::new(8), AuditLog::disabled());
        let labels = on.peer(Direction::Inbound, &listener, &peer);
        on.closed(&labels, 1, addr, CloseReason::Eof, 1, 1);
        assert!(closed_total(&on), "a normal sink must count the close");
        let off = Telemetry::off();
        let labels = off.peer(Direction::Inbound, &listener, &peer);
        off.closed(&labels, 1, addr, CloseReason::Eof, 1, 1);
        assert!(!closed_total(&off), "the off baseline counted something");
        // The default sink (what a sidecar gets unless a benchmark asks) is on.
        let default = Telemetry::default();
        let labels = default.peer(Direction::Inbound, &listener, &peer);
        default.closed(&labels, 1, addr, CloseReason::Eof, 1, 1);
        assert!(closed_total(&default));
    }
}
