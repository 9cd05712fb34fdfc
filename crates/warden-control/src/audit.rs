//! The control plane's audit and metric vocabulary as enums: the `event` and `decision`
//! fields of its audit records (tracing target `warden::audit`) and the label values of its
//! policy-write, gate and SVID counters ([`crate::metrics`]). A call site names a variant;
//! `as_str` gives the text, which is a contract (docs/metrics.md) and never changes with a
//! rename in the code.

/// The `event` field of a control-plane audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditEvent {
    /// A policy API call refused at the gate.
    Api,
    /// A TLS handshake on the policy API failed or timed out, or gave no SPIFFE ID.
    ApiHandshake,
    /// A policy API connection refused over the caller's share.
    ApiConnection,
    /// A policy put or delete committed.
    PolicyWrite,
    /// A sidecar opened its policy watch.
    Watch,
    /// The control plane's own SVID was loaded.
    Rotation,
    /// The built-in CA renewed an SVID served on a Workload API socket.
    SvidIssued,
    /// The built-in CA issued a JWT-SVID (debug level).
    JwtSvidIssued,
    /// A Workload API caller matched no registration.
    WorkloadApiDenied,
    /// An anomaly rule fired.
    Anomaly,
    /// An identity was put in quarantine.
    Quarantine,
    /// A quarantine was lifted.
    Release,
    /// Lines of a rate-bounded event were suppressed in a window that has closed.
    LogSummary,
}

impl AuditEvent {
    pub const ALL: [AuditEvent; 13] = [
        AuditEvent::Api,
        AuditEvent::ApiHandshake,
        AuditEvent::ApiConnection,
        AuditEvent::PolicyWrite,
        AuditEvent::Watch,
        AuditEvent::Rotation,
        AuditEvent::SvidIssued,
        AuditEvent::JwtSvidIssued,
        AuditEvent::WorkloadApiDenied,
        AuditEvent::Anomaly,
        AuditEvent::Quarantine,
        AuditEvent::Release,
        AuditEvent::LogSummary,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            AuditEvent::Api => "api",
            AuditEvent::ApiHandshake => "api_handshake",
            AuditEvent::ApiConnection => "api_connection",
            AuditEvent::PolicyWrite => "policy_write",
            AuditEvent::Watch => "watch",
            AuditEvent::Rotation => "rotation",
            AuditEvent::SvidIssued => "svid_issued",
            AuditEvent::JwtSvidIssued => "jwt_svid_issued",
            AuditEvent::WorkloadApiDenied => "workload_api_denied",
            AuditEvent::Anomaly => "anomaly",
            AuditEvent::Quarantine => "quarantine",
            AuditEvent::Release => "release",
            AuditEvent::LogSummary => "log_summary",
        }
    }

    /// `quarantine`, or `release` when the change lifts one.
    pub const fn quarantine(release: bool) -> Self {
        if release {
            AuditEvent::Release
        } else {
            AuditEvent::Quarantine
        }
    }
}

/// The `decision` field of a control-plane audit record that refuses something (the
/// control plane audits refusals only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Deny,
}

impl Decision {
    pub const fn as_str(self) -> &'static str {
        match self {
            Decision::Deny => "deny",
        }
    }
}

/// A write to the store: the `action` of a `policy_write` audit record, of a History entry,
/// and of `warden_control_policy_writes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteAction {
    Put,
    Delete,
    Quarantine,
    Release,
}

impl WriteAction {
    pub const fn as_str(self) -> &'static str {
        match self {
            WriteAction::Put => "put",
            WriteAction::Delete => "delete",
            WriteAction::Quarantine => "quarantine",
            WriteAction::Release => "release",
        }
    }

    /// `quarantine`, or `release` when the change lifts one.
    pub const fn quarantine(release: bool) -> Self {
        if release {
            WriteAction::Release
        } else {
            WriteAction::Quarantine
        }
    }
}

/// How a store write ended: the `result` of `warden_control_policy_writes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteResult {
    Ok,
    Error,
}

impl WriteResult {
    pub const fn as_str(self) -> &'static str {
        match self {
            WriteResult::Ok => "ok",
            WriteResult::Error => "error",
        }
    }
}

/// What the policy API's gate did with a call: the `result` of
/// `warden_control_api_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateResult {
    Admitted,
    Refused,
}

impl GateResult {
    pub const fn as_str(self) -> &'static str {
        match self {
            GateResult::Admitted => "admitted",
            GateResult::Refused => "refused",
        }
    }
}

/// What the built-in CA issued: the `kind` of `warden_control_svids_issued_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvidKind {
    X509,
    Jwt,
}

impl SvidKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            SvidKind::X509 => "x509",
            SvidKind::Jwt => "jwt",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS_DOC: &str = include_str!("../../../docs/metrics.md");

    /// The rows of docs/metrics.md's control-plane audit table are exactly the events the
    /// code writes at `info` or above (`jwt_svid_issued` is a debug record).
    #[test]
    fn documented_events_are_the_enum() {
        let section = METRICS_DOC
            .split("## Control-plane audit log")
            .nth(1)
            .expect("section")
            .split("\n## ")
            .next()
            .expect("section body");
        let mut documented: Vec<&str> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .filter(|e| *e != "event")
            .collect();
        documented.sort_unstable();
        let mut ours: Vec<&str> = AuditEvent::ALL
            .iter()
            .filter(|e| **e != AuditEvent::JwtSvidIssued)
            .map(|e| e.as_str())
            .collect();
        ours.sort_unstable();
        assert_eq!(documented, ours);
    }

    /// Every label value is in its metric's row of docs/metrics.md.
    #[test]
    fn labels_are_the_documented_ones() {
        let row = |metric: &str| {
            METRICS_DOC
                .lines()
                .find(|l| l.starts_with(&format!("| `{metric}`")))
                .unwrap_or_else(|| panic!("{metric} documented"))
        };
        let writes = row("warden_control_policy_writes_total");
        for label in [
            WriteAction::Put,
            WriteAction::Delete,
            WriteAction::quarantine(false),
            WriteAction::quarantine(true),
        ]
        .map(WriteAction::as_str)
        .into_iter()
        .chain([WriteResult::Ok, WriteResult::Error].map(WriteResult::as_str))
        {
            assert!(writes.contains(&format!("`{label}`")), "{label}");
        }
        let calls = row("warden_control_api_calls_total");
        for label in [GateResult::Admitted, GateResult::Refused].map(GateResult::as_str) {
            assert!(calls.contains(&format!("`{label}`")), "{label}");
        }
        let svids = row("warden_control_svids_issued_total");
        for label in [SvidKind::X509, SvidKind::Jwt].map(SvidKind::as_str) {
            assert!(svids.contains(&format!("`{label}`")), "{label}");
        }
        assert_eq!(AuditEvent::quarantine(true), AuditEvent::Release);
        assert_eq!(Decision::Deny.as_str(), "deny");
    }
}
