//! What the control plane learns from the sidecars' edge reports: the aggregated edges
//! (`edges`), for `warden policy suggest` and the graph, and the anomaly rules run on them
//! (`anomaly`), whose findings are counted (`warden_anomalies_total`), audited (event
//! `anomaly`), listed (`warden policy anomalies`) and, with `response = "quarantine"`,
//! turned into quarantine orders.
//!
//! Everything here is bounded and in memory; a report is untrusted input from an
//! authenticated workload, attributed to the workload of its certificate.

pub mod anomaly;
pub mod edges;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;
use warden_identity::SpiffeId;
use warden_proto::control::v1 as pb;

use self::anomaly::{Anomaly, AnomalyConfig, Detector, Kind, Response};
use self::edges::EdgeGraph;
use crate::audit::AuditEvent;
use crate::quarantine::Order;

/// `[edges]` of the control-plane config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgesConfig {
    /// Distinct edges kept over all workloads; past it, peers count as `other`.
    pub max_edges: usize,
    /// A watch's reports closer together than this are dropped.
    pub min_report_interval: Duration,
}

impl Default for EdgesConfig {
    fn default() -> Self {
        Self {
            max_edges: 50_000,
            min_report_interval: Duration::from_secs(1),
        }
    }
}

/// Distinct `(workload, peer_id)` label pairs of `warden_anomalies_total`; past it, `other`.
pub const ANOMALY_LABEL_LIMIT: usize = 1024;

/// Counters of report handling, for the admin listener's metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReportCounts {
    pub accepted: u64,
    /// Closer to the previous report of the same watch than `min_report_interval`.
    pub too_frequent: u64,
    pub invalid_edges: u64,
    pub dropped_edges: u64,
}

/// `warden_anomalies_total` label values.
pub type AnomalyLabels = (&'static str, Arc<str>, Arc<str>);

#[derive(Debug)]
struct State {
    graph: EdgeGraph,
    counts: ReportCounts,
    detector: Detector,
    /// The latest anomalies, oldest first (`max_kept`).
    recent: VecDeque<Anomaly>,
    totals: HashMap<AnomalyLabels, u64>,
}

/// The control plane's view of the mesh. Shared by the policy API (which feeds it and
/// answers `Observed` and `Anomalies`), the rules' ticker and the admin listener.
#[derive(Debug)]
pub struct Insight {
    config: EdgesConfig,
    window: Duration,
    state: Mutex<State>,
    orders: OnceLock<mpsc::Sender<Order>>,
}

impl Insight {
    /// `protected`: identities the rules never quarantine (the admins).
    pub fn new(
        config: EdgesConfig,
        anomaly: AnomalyConfig,
        protected: HashSet<String>,
        now_ms: u64,
    ) -> Self {
        Self {
            config,
            window: anomaly.window,
            state: Mutex::new(State {
                graph: EdgeGraph::new(config.max_edges, now_ms),
                counts: ReportCounts::default(),
                detector: Detector::new(anomaly, protected, now_ms),
                recent: VecDeque::new(),
                totals: HashMap::new(),
            }),
            orders: OnceLock::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Each critical section is one ingest, one tick or one read; a panic inside leaves
        // at worst a partly counted report, which is acceptable for counts.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where quarantine orders go (set once, by the server).
    pub fn set_responder(&self, orders: mpsc::Sender<Order>) {
        let _ = self.orders.set(orders);
    }

    pub fn min_report_interval(&self) -> Duration {
        self.config.min_report_interval
    }

    /// How often [`Insight::tick`] should run: a few times per window.
    pub fn tick_interval(&self) -> Duration {
        (self.window / 4).clamp(Duration::from_millis(5), Duration::from_secs(1))
    }

    /// A report arrived too soon after the previous one of the same watch.
    pub fn refuse_report(&self) {
        self.lock().counts.too_frequent += 1;
    }

    /// Adds a report of `workload`'s sidecar.
    pub fn ingest(&self, workload: &Arc<str>, report: &pb::EdgeReport, now_ms: u64) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let (observations, ingested) = state.graph.ingest(workload, report, now_ms);
        for obs in &observations {
            state.detector.observe(workload, obs, now_ms);
        }
        state.counts.accepted += 1;
        state.counts.invalid_edges += ingested.invalid as u64;
        state.counts.dropped_edges += ingested.dropped as u64;
    }

    /// Closes the windows that have ended and acts on what the rules found: counted,
    /// audited, kept for listing, and quarantine ordered when that is the response.
    pub fn tick(&self, now_ms: u64) -> Vec<Anomaly> {
        let found = {
            let mut guard = self.lock();
            let state = &mut *guard;
            let found = state.detector.tick(now_ms);
            let max_kept = state.detector.config().max_kept;
            for a in &found {
                let distinct = state.totals.len();
                let mut key: AnomalyLabels = (a.kind.as_str(), a.workload.clone(), a.peer.clone());
                if !state.totals.contains_key(&key) && distinct >= ANOMALY_LABEL_LIMIT {
                    key = (a.kind.as_str(), Arc::from("other"), Arc::from("other"));
                }
                *state.totals.entry(key).or_insert(0) += 1;
                state.recent.push_back(a.clone());
                while state.recent.len() > max_kept {
                    state.recent.pop_front();
                }
            }
            found
        };
        for a in &found {
            tracing::warn!(target: "warden::audit", event = AuditEvent::Anomaly.as_str(), kind = a.kind.as_str(), workload = %a.workload, peer_id = %a.peer, response = a.response.as_str(), detail = %a.detail, "anomaly");
            if a.response == Response::Quarantine
                && let (Some(orders), Ok(id)) = (self.orders.get(), SpiffeId::parse(&a.workload))
            {
                let order = Order {
                    spiffe_id: id,
                    reason: format!("{}: {}", a.kind.as_str(), a.detail),
                };
                if orders.try_send(order).is_err() {
                    tracing::error!(workload = %a.workload, "anomaly response: the quarantine queue is full; not quarantined");
                }
            }
        }
        found
    }

    /// The `Observed` answer: edges reported by `workload` (all if empty) seen at or after
    /// `since_ms`.
    pub fn observed(&self, workload: &str, since_ms: u64, now_ms: u64) -> pb::ObservedResponse {
        let state = self.lock();
        let filter = (!workload.is_empty()).then_some(workload);
        pb::ObservedResponse {
            edges: state
                .graph
                .observed(filter, since_ms)
                .into_iter()
                .map(|(k, s)| edges::to_proto(k, s))
                .collect(),
            dropped: state.graph.dropped(),
            observing_ms: now_ms.saturating_sub(state.graph.started_ms()),
        }
    }

    /// The anomalies kept, at or after `since_ms`, oldest first.
    pub fn anomalies(&self, since_ms: u64) -> Vec<pb::Anomaly> {
        self.lock()
            .recent
            .iter()
            .filter(|a| a.at_ms >= since_ms)
            .map(|a| pb::Anomaly {
                kind: a.kind.as_str().to_owned(),
                workload: a.workload.to_string(),
                peer_id: a.peer.to_string(),
                detail: a.detail.clone(),
                at_unix_ms: a.at_ms,
                response: a.response.as_str().to_owned(),
            })
            .collect()
    }

    /// `warden_anomalies_total` by label values.
    pub fn anomaly_totals(&self) -> Vec<(AnomalyLabels, u64)> {
        let mut list: Vec<_> = self
            .lock()
            .totals
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        list.sort();
        list
    }

    pub fn report_counts(&self) -> ReportCounts {
        self.lock().counts
    }

    /// Distinct edges kept.
    pub fn edge_count(&self) -> usize {
        self.lock().graph.len()
    }

    /// Every edge kept, for the graph.
    pub fn edges(&self) -> Vec<pb::ObservedEdge> {
        self.observed("", 0, 0).edges
    }

    /// Whether anything kind `kind` was found for `workload` (tests, the graph).
    pub fn flagged(&self, workload: &str) -> Vec<Kind> {
        self.lock()
            .recent
            .iter()
            .filter(|a| &*a.workload == workload)
            .map(|a| a.kind)
            .collect()
    }
}

/// Runs the rules a few times per window until the control plane stops.
pub async fn tick_loop(insight: Arc<Insight>) {
    let mut every = tokio::time::interval(insight.tick_interval());
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        insight.tick(crate::policy_service::now_ms());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(direction: &str, peer: &str, decision: &str, count: u64) -> pb::EdgeReport {
        pb::EdgeReport {
            edges: vec![pb::Edge {
                direction: direction.into(),
                listener: "http".into(),
                peer_id: peer.into(),
                decision: decision.into(),
                reason: "no_match".into(),
                http: false,
                route: None,
                count,
            }],
            interval_ms: 100,
            folded: 0,
        }
    }

    #[test]
    fn reports_feed_the_rules_and_findings_are_kept_counted_and_ordered() {
        let anomaly = AnomalyConfig {
            response: Response::Quarantine,
            learning: Duration::from_millis(500),
            window: Duration::from_millis(100),
            baseline_windows: 3,
            ..AnomalyConfig::default()
        };
        let insight = Insight::new(EdgesConfig::default(), anomaly, HashSet::new(), 0);
        let (tx, mut rx) = mpsc::channel(4);
        insight.set_responder(tx);
        let v: Arc<str> = Arc::from("spiffe://example.org/vectordb");
        let r: Arc<str> = Arc::from("spiffe://example.org/rogue");
        let mut found = Vec::new();
        for step in 0..20u64 {
            let now = step * 50;
            insight.ingest(
                &v,
                &report("inbound", "spiffe://example.org/retriever", "allow", 2),
                now,
            );
            found.extend(insight.tick(now));
        }
        assert!(found.is_empty(), "{found:#?}");
        insight.ingest(
            &r,
            &report("outbound", "spiffe://example.org/vectordb", "allow", 1),
            1010,
        );
        found.extend(insight.tick(1200));
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].kind, Kind::NewEdge);
        let order = rx.try_recv().expect("a quarantine order");
        assert_eq!(order.spiffe_id.as_str(), "spiffe://example.org/rogue");
        assert_eq!(insight.anomalies(0).len(), 1);
        assert_eq!(insight.anomaly_totals().len(), 1);
    }
}
