//! What the control plane learns from the sidecars' edge reports: the aggregated edges
//! (`edges`), for `warden policy suggest` and the graph.
//!
//! Everything here is bounded and in memory; a report is untrusted input from an
//! authenticated workload, attributed to the workload of its certificate.

pub mod anomaly;
pub mod edges;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use warden_proto::control::v1 as pb;

use self::edges::EdgeGraph;

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

/// Counters of report handling, for the admin listener's metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReportCounts {
    pub accepted: u64,
    /// Closer to the previous report of the same watch than `min_report_interval`.
    pub too_frequent: u64,
    pub invalid_edges: u64,
    pub dropped_edges: u64,
}

#[derive(Debug)]
struct State {
    graph: EdgeGraph,
    counts: ReportCounts,
}

/// The control plane's view of the mesh. Shared by the policy API (which feeds it and
/// answers `Observed`) and the admin listener.
#[derive(Debug)]
pub struct Insight {
    config: EdgesConfig,
    state: Mutex<State>,
}

impl Insight {
    pub fn new(config: EdgesConfig, now_ms: u64) -> Self {
        Self {
            config,
            state: Mutex::new(State {
                graph: EdgeGraph::new(config.max_edges, now_ms),
                counts: ReportCounts::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Each critical section is one ingest or one read; a panic inside leaves at worst
        // a partly counted report, which is acceptable for counts.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn min_report_interval(&self) -> Duration {
        self.config.min_report_interval
    }

    /// A report arrived too soon after the previous one of the same watch.
    pub fn refuse_report(&self) {
        self.lock().counts.too_frequent += 1;
    }

    /// Adds a report of `workload`'s sidecar.
    pub fn ingest(&self, workload: &Arc<str>, report: &pb::EdgeReport, now_ms: u64) {
        let mut state = self.lock();
        let (_observations, ingested) = state.graph.ingest(workload, report, now_ms);
        state.counts.accepted += 1;
        state.counts.invalid_edges += ingested.invalid as u64;
        state.counts.dropped_edges += ingested.dropped as u64;
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

    pub fn report_counts(&self) -> ReportCounts {
        self.lock().counts
    }

    /// Distinct edges kept.
    pub fn edge_count(&self) -> usize {
        self.lock().graph.len()
    }

    /// When aggregation started.
    pub fn started_ms(&self) -> u64 {
        self.lock().graph.started_ms()
    }
}
