//! The control plane's counters, served as OpenMetrics text on the admin listener's
//! `/metrics` (`admin.rs`). Per process: several control planes in one process (tests,
//! benchmarks) share them.
//!
//! Label values come from fixed lists (method names, actions, results) or, for anomalies,
//! from the insight's capped label set, so no caller can grow the number of series.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard};

use crate::audit::{GateResult, SvidKind, WriteAction, WriteResult};

use warden_identity::HandshakeFailure;

/// The policy API's methods, as `method` label values; anything else is `other`.
const API_METHODS: &[&str] = &[
    "PutPolicy",
    "GetPolicy",
    "ListPolicies",
    "DeletePolicy",
    "History",
    "Status",
    "WatchPolicy",
    "Observed",
    "Anomalies",
    "Quarantine",
    "Release",
];

type Labels2 = (&'static str, &'static str);

#[derive(Default)]
pub struct ControlMetrics {
    api_calls: Mutex<BTreeMap<Labels2, u64>>,
    policy_writes: Mutex<BTreeMap<Labels2, u64>>,
    svids_issued: Mutex<BTreeMap<&'static str, u64>>,
    workload_api_calls: Mutex<BTreeMap<&'static str, u64>>,
    workload_api_refusals: Mutex<BTreeMap<&'static str, u64>>,
    api_handshake_failures: Mutex<BTreeMap<&'static str, u64>>,
    watchers: AtomicI64,
}

/// The process's counters.
pub static METRICS: LazyLock<ControlMetrics> = LazyLock::new(ControlMetrics::default);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // One increment per critical section: nothing is half done on a panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The label value of a gRPC path of the policy API.
fn api_method(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or(path);
    API_METHODS
        .iter()
        .find(|m| **m == name)
        .copied()
        .unwrap_or("other")
}

impl ControlMetrics {
    /// A policy API call got past the gate (`admitted`) or was refused there (`refused`).
    pub fn api_call(&self, path: &str, result: GateResult) {
        *lock(&self.api_calls)
            .entry((api_method(path), result.as_str()))
            .or_insert(0) += 1;
    }

    /// A policy or quarantine write and how it ended.
    pub fn policy_write(&self, action: WriteAction, result: WriteResult) {
        *lock(&self.policy_writes)
            .entry((action.as_str(), result.as_str()))
            .or_insert(0) += 1;
    }

    /// The built-in CA issued an SVID.
    pub fn svid_issued(&self, kind: SvidKind) {
        *lock(&self.svids_issued).entry(kind.as_str()).or_insert(0) += 1;
    }

    /// A Workload API call (its gRPC method name).
    pub fn workload_api_call(&self, method: &'static str) {
        *lock(&self.workload_api_calls).entry(method).or_insert(0) += 1;
    }

    /// A Workload API connection or call refused over its caller uid's share (`limit`).
    pub fn workload_api_refused(&self, limit: &'static str) {
        *lock(&self.workload_api_refusals).entry(limit).or_insert(0) += 1;
    }

    /// A policy API connection refused at its mTLS handshake, by the same `result` labels
    /// as the sidecar's `warden_tls_handshakes_total`.
    pub fn api_handshake_failed(&self, failure: HandshakeFailure) {
        *lock(&self.api_handshake_failures)
            .entry(failure.as_label())
            .or_insert(0) += 1;
    }

    pub fn watcher_opened(&self) {
        self.watchers.fetch_add(1, Ordering::Relaxed);
    }

    pub fn watcher_closed(&self) {
        self.watchers.fetch_sub(1, Ordering::Relaxed);
    }

    /// The counters above plus what the caller adds (`extra`: the insight's series), as
    /// OpenMetrics text.
    pub fn encode(&self, insight: &crate::insight::Insight) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str| {
            let _ = writeln!(out, "# TYPE {name} counter\n# HELP {name} {help}");
        };
        counter(
            &mut out,
            "warden_control_api_calls",
            "Policy API calls by method, admitted or refused before their body was read",
        );
        for ((method, result), n) in lock(&self.api_calls).iter() {
            let _ = writeln!(
                out,
                "warden_control_api_calls_total{{method=\"{method}\",result=\"{result}\"}} {n}"
            );
        }
        counter(
            &mut out,
            "warden_control_policy_writes",
            "Policy and quarantine writes by action and result",
        );
        for ((action, result), n) in lock(&self.policy_writes).iter() {
            let _ = writeln!(
                out,
                "warden_control_policy_writes_total{{action=\"{action}\",result=\"{result}\"}} {n}"
            );
        }
        counter(
            &mut out,
            "warden_control_svids_issued",
            "SVIDs issued by the built-in CA (x509, jwt)",
        );
        for (kind, n) in lock(&self.svids_issued).iter() {
            let _ = writeln!(
                out,
                "warden_control_svids_issued_total{{kind=\"{kind}\"}} {n}"
            );
        }
        counter(
            &mut out,
            "warden_control_workload_api_calls",
            "Workload API calls by method",
        );
        for (method, n) in lock(&self.workload_api_calls).iter() {
            let _ = writeln!(
                out,
                "warden_control_workload_api_calls_total{{method=\"{method}\"}} {n}"
            );
        }
        counter(
            &mut out,
            "warden_control_workload_api_refusals",
            "Workload API connections and calls refused over their caller uid's share, by limit",
        );
        {
            let refusals = lock(&self.workload_api_refusals);
            // Both limits, at 0 until one is reached.
            for limit in [
                "limits.max_connections_per_peer",
                "limits.max_streams_per_peer",
            ] {
                let n = refusals.get(limit).copied().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "warden_control_workload_api_refusals_total{{limit=\"{limit}\"}} {n}"
                );
            }
        }
        counter(
            &mut out,
            "warden_control_api_handshake_failures",
            "Policy API connections refused at the mTLS handshake, by reason",
        );
        {
            let failures = lock(&self.api_handshake_failures);
            // Every reason, at 0 until it happens: a dashboard sees the series from the start.
            for failure in HandshakeFailure::ALL {
                let result = failure.as_label();
                let n = failures.get(result).copied().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "warden_control_api_handshake_failures_total{{result=\"{result}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# TYPE warden_control_watchers gauge\n# HELP warden_control_watchers Sidecars watching their policy on this replica\nwarden_control_watchers {}",
            self.watchers.load(Ordering::Relaxed).max(0)
        );
        let reports = insight.report_counts();
        counter(
            &mut out,
            "warden_control_edge_reports",
            "Edge reports by result (accepted, too_frequent: dropped, closer than min_report_interval)",
        );
        let _ = writeln!(
            out,
            "warden_control_edge_reports_total{{result=\"accepted\"}} {}\nwarden_control_edge_reports_total{{result=\"too_frequent\"}} {}",
            reports.accepted, reports.too_frequent
        );
        counter(
            &mut out,
            "warden_control_report_edges_skipped",
            "Reported edges not kept (invalid, or past [edges] max_edges)",
        );
        let _ = writeln!(
            out,
            "warden_control_report_edges_skipped_total{{reason=\"invalid\"}} {}\nwarden_control_report_edges_skipped_total{{reason=\"max_edges\"}} {}",
            reports.invalid_edges, reports.dropped_edges
        );
        let _ = writeln!(
            out,
            "# TYPE warden_control_edges gauge\n# HELP warden_control_edges Distinct edges kept in memory\nwarden_control_edges {}",
            insight.edge_count()
        );
        counter(
            &mut out,
            "warden_anomalies",
            "Anomalies found by kind, the identity it is about and its peer (capped; other past the cap)",
        );
        for ((kind, workload, peer), n) in insight.anomaly_totals() {
            let _ = writeln!(
                out,
                "warden_anomalies_total{{kind=\"{kind}\",workload=\"{}\",peer_id=\"{}\"}} {n}",
                escape(&workload),
                escape(&peer)
            );
        }
        let _ = writeln!(
            out,
            "# TYPE warden_control_build info\n# HELP warden_control_build Build information\nwarden_control_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        out.push_str("# EOF\n");
        out
    }
}

/// A label value as OpenMetrics writes it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_come_from_a_fixed_list() {
        assert_eq!(
            api_method("/warden.control.v1.PolicyService/PutPolicy"),
            "PutPolicy"
        );
        assert_eq!(
            api_method("/warden.control.v1.PolicyService/Bogus"),
            "other"
        );
        assert_eq!(api_method("/x/../y"), "other");
    }

    #[test]
    fn encodes_openmetrics() {
        let m = ControlMetrics::default();
        m.api_call(
            "/warden.control.v1.PolicyService/Status",
            GateResult::Refused,
        );
        m.policy_write(WriteAction::Put, WriteResult::Ok);
        m.svid_issued(SvidKind::X509);
        m.workload_api_call("FetchX509SVID");
        m.watcher_opened();
        let insight = crate::insight::Insight::new(
            Default::default(),
            Default::default(),
            Default::default(),
            0,
        );
        let text = m.encode(&insight);
        for want in [
            "warden_control_api_calls_total{method=\"Status\",result=\"refused\"} 1",
            "warden_control_policy_writes_total{action=\"put\",result=\"ok\"} 1",
            "warden_control_svids_issued_total{kind=\"x509\"} 1",
            "warden_control_workload_api_calls_total{method=\"FetchX509SVID\"} 1",
            "warden_control_watchers 1",
            "# TYPE warden_anomalies counter",
        ] {
            assert!(text.contains(want), "{want}\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
