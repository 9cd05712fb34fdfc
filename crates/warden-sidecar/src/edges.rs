//! Edge counts for the control plane: how many decisions of each kind (direction,
//! listener, peer, decision, reason; for HTTP requests also the route) this sidecar made
//! since its last report. The control plane learns the mesh from them (`warden policy
//! suggest`, anomaly rules, the graph).
//!
//! Bounded everywhere, because peers choose their identities: at most `max_edges` distinct
//! edges are kept between two reports; a decision on a new edge past that is counted under
//! the peer `other` (like the metrics' `peer_id` cap), and a report is cut to
//! [`MAX_REPORT_BYTES`] the same way. Recording is one short lock and a hash lookup per
//! decision (never per byte) and never waits on the network: a report that cannot be handed
//! to the watch stream at once is dropped (`control/report.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use prost::Message;
use warden_proto::control::v1 as pb;

use crate::metrics::OTHER_PEER;

/// The largest report the sidecar sends (the control plane refuses larger watch messages).
pub const MAX_REPORT_BYTES: usize = 192 * 1024;

/// One edge as counted: everything but the count.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct EdgeKey {
    pub direction: &'static str,
    pub listener: Arc<str>,
    /// The peer's full SPIFFE ID, or `other`.
    pub peer: Arc<str>,
    pub decision: &'static str,
    pub reason: &'static str,
    pub http: bool,
    pub route: Option<u32>,
}

#[derive(Debug)]
struct Counts {
    map: HashMap<EdgeKey, u64>,
    /// Decisions counted under `other` since the last report.
    folded: u64,
    since: Instant,
}

/// The edge counts between two reports.
#[derive(Debug)]
pub struct Edges {
    max_edges: usize,
    counts: Mutex<Counts>,
    other: Arc<str>,
}

impl Edges {
    pub fn new(max_edges: usize) -> Self {
        Self {
            max_edges,
            counts: Mutex::new(Counts {
                map: HashMap::new(),
                folded: 0,
                since: Instant::now(),
            }),
            other: Arc::from(OTHER_PEER),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        // Each critical section is one map operation or a swap: nothing is half done on a
        // panic, so a poisoned lock is still consistent.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one decision.
    pub(crate) fn record(&self, mut key: EdgeKey) {
        let mut counts = self.lock();
        if let Some(n) = counts.map.get_mut(&key) {
            *n += 1;
            return;
        }
        if counts.map.len() >= self.max_edges {
            // Past the cap the peer is `other` and the route dropped, so at most a handful
            // of keys per listener and decision are added beyond it.
            key.peer = self.other.clone();
            key.route = None;
            counts.folded += 1;
        }
        *counts.map.entry(key).or_insert(0) += 1;
    }

    /// Distinct edges counted since the last report.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes what was counted since the last call as a report (at most
    /// [`MAX_REPORT_BYTES`] encoded, the rest under `other`), and starts counting afresh.
    /// `None` when nothing was counted.
    pub fn take_report(&self) -> Option<pb::EdgeReport> {
        let (map, mut folded, since) = {
            let mut counts = self.lock();
            let now = Instant::now();
            let since = std::mem::replace(&mut counts.since, now);
            let folded = std::mem::take(&mut counts.folded);
            (std::mem::take(&mut counts.map), folded, since)
        };
        if map.is_empty() {
            return None;
        }
        let mut entries: Vec<(EdgeKey, u64)> = map.into_iter().collect();
        // Most frequent first, so a cut keeps what matters most.
        entries.sort_by_key(|e| std::cmp::Reverse(e.1));
        let mut report = pb::EdgeReport {
            edges: Vec::with_capacity(entries.len()),
            interval_ms: since.elapsed().as_millis() as u64,
            folded: 0,
        };
        let mut size = 0usize;
        let mut others: HashMap<EdgeKey, u64> = HashMap::new();
        for (key, count) in entries {
            let edge = to_edge(&key, count);
            let len = edge.encoded_len() + 4;
            if size + len > MAX_REPORT_BYTES - 4096 {
                folded += count;
                let other = EdgeKey {
                    peer: self.other.clone(),
                    route: None,
                    ..key
                };
                *others.entry(other).or_insert(0) += count;
                continue;
            }
            size += len;
            report.edges.push(edge);
        }
        // The `other` edges of a cut report are few (one per listener, direction,
        // decision and reason) and small; merge them into any `other` already there.
        for (key, count) in others {
            match report.edges.iter_mut().find(|e| {
                e.peer_id == OTHER_PEER
                    && e.direction == key.direction
                    && e.listener == *key.listener
                    && e.decision == key.decision
                    && e.reason == key.reason
                    && e.http == key.http
                    && e.route.is_none()
            }) {
                Some(e) => e.count += count,
                None => report.edges.push(to_edge(&key, count)),
            }
        }
        report.folded = folded;
        Some(report)
    }
}

fn to_edge(key: &EdgeKey, count: u64) -> pb::Edge {
    pb::Edge {
        direction: key.direction.to_owned(),
        listener: key.listener.to_string(),
        peer_id: key.peer.to_string(),
        decision: key.decision.to_owned(),
        reason: key.reason.to_owned(),
        http: key.http,
        route: key.route,
        count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(peer: &str, decision: &'static str) -> EdgeKey {
        EdgeKey {
            direction: "inbound",
            listener: Arc::from("http"),
            peer: Arc::from(peer),
            decision,
            reason: if decision == "allow" {
                "allowed"
            } else {
                "no_match"
            },
            http: false,
            route: None,
        }
    }

    #[test]
    fn counts_per_edge_and_starts_afresh_after_a_report() {
        let edges = Edges::new(16);
        for _ in 0..3 {
            edges.record(key("spiffe://example.org/a", "allow"));
        }
        edges.record(key("spiffe://example.org/b", "would_deny"));
        let report = edges.take_report().expect("report");
        assert_eq!(report.edges.len(), 2);
        assert_eq!(report.edges[0].peer_id, "spiffe://example.org/a");
        assert_eq!(report.edges[0].count, 3);
        assert_eq!(report.edges[1].decision, "would_deny");
        assert_eq!(report.folded, 0);
        assert!(edges.take_report().is_none(), "counted twice");
    }

    /// 10,000 distinct peers: the counts stay at the cap plus `other`, and every decision
    /// is still counted.
    #[test]
    fn ten_thousand_distinct_peers_stay_within_the_cap() {
        let edges = Edges::new(256);
        for i in 0..10_000 {
            edges.record(key(&format!("spiffe://example.org/peer/{i}"), "deny"));
        }
        assert_eq!(edges.len(), 257, "the cap plus one `other` edge");
        let report = edges.take_report().expect("report");
        assert_eq!(report.edges.len(), 257);
        assert_eq!(report.folded, 10_000 - 256);
        let total: u64 = report.edges.iter().map(|e| e.count).sum();
        assert_eq!(total, 10_000);
        let other = report
            .edges
            .iter()
            .find(|e| e.peer_id == "other")
            .expect("other");
        assert_eq!(other.count, 10_000 - 256);
        assert!(report.encoded_len() <= MAX_REPORT_BYTES);
    }

    #[test]
    fn a_report_is_cut_to_its_byte_budget() {
        let edges = Edges::new(100_000);
        let long = "x".repeat(1500);
        for i in 0..400 {
            edges.record(key(&format!("spiffe://example.org/{long}/{i}"), "deny"));
        }
        let report = edges.take_report().expect("report");
        assert!(
            report.encoded_len() <= MAX_REPORT_BYTES,
            "{}",
            report.encoded_len()
        );
        let total: u64 = report.edges.iter().map(|e| e.count).sum();
        assert_eq!(total, 400, "a cut loses no count");
        assert!(report.folded > 0);
    }
}
