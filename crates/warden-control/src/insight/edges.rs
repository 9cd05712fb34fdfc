//! The mesh as the sidecars report it: edges per reporting workload, with their counts by
//! decision and when they were first and last seen.
//!
//! Kept in memory only, bounded by `[edges] max_edges`: a report changes counts every few
//! seconds for every sidecar, and writing that to the policy store would turn the store's
//! history and change feed (which every replica follows) into a metrics pipeline. A
//! restart therefore starts learning afresh, which the anomaly rules' learning window
//! accounts for. Reports are untrusted input: each edge is validated, an invalid one is
//! skipped and counted, and the reporting workload is the caller's certificate identity,
//! never a field of the report.

use std::collections::HashMap;
use std::sync::Arc;

use warden_identity::WorkloadId;
use warden_policy::{Direction, ListenerName};
use warden_proto::control::v1 as pb;

/// The peer under which edges past a cap are counted (as the sidecars and metrics do).
pub const OTHER: &str = "other";

/// A decision as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    Allow,
    Deny,
    WouldDeny,
}

impl Verdict {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "allow" => Some(Verdict::Allow),
            "deny" => Some(Verdict::Deny),
            "would_deny" => Some(Verdict::WouldDeny),
            _ => None,
        }
    }
}

/// One edge, as aggregated: reported by `workload`'s sidecars.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EdgeKey {
    pub workload: Arc<str>,
    pub direction: Direction,
    pub listener: Box<str>,
    /// A workload SPIFFE ID, or [`OTHER`].
    pub peer: Box<str>,
    pub http: bool,
    pub route: Option<u32>,
}

impl EdgeKey {
    /// Who called whom: inbound, the peer called the workload; outbound, the reverse.
    pub fn caller_callee(&self) -> (&str, &str) {
        match self.direction {
            Direction::Inbound => (&self.peer, &self.workload),
            Direction::Outbound => (&self.workload, &self.peer),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EdgeStats {
    pub allowed: u64,
    pub denied: u64,
    pub would_deny: u64,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
}

/// One validated edge of a report, handed to the anomaly rules.
#[derive(Debug, Clone)]
pub struct Observation {
    pub key: EdgeKey,
    pub verdict: Verdict,
    pub count: u64,
}

/// What one report did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Ingested {
    pub edges: usize,
    pub invalid: usize,
    pub dropped: usize,
}

/// Every edge reported since the control plane started, within `max_edges`.
#[derive(Debug)]
pub struct EdgeGraph {
    map: HashMap<EdgeKey, EdgeStats>,
    max_edges: usize,
    /// Decisions not kept because even the `other` edge would have exceeded the bound.
    dropped: u64,
    started_ms: u64,
}

/// A reason label as the sidecars write them: short, lower case, `_`.
fn valid_reason(reason: &str) -> bool {
    !reason.is_empty()
        && reason.len() <= 64
        && reason
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn validate(edge: &pb::Edge) -> Option<(Direction, Verdict)> {
    let direction = match edge.direction.as_str() {
        "inbound" => Direction::Inbound,
        "outbound" => Direction::Outbound,
        _ => return None,
    };
    let verdict = Verdict::parse(&edge.decision)?;
    ListenerName::parse(&edge.listener).ok()?;
    if edge.peer_id != OTHER && WorkloadId::parse(&edge.peer_id).is_err() {
        return None;
    }
    if !valid_reason(&edge.reason) || edge.count == 0 || edge.route.is_some_and(|r| r > 65_535) {
        return None;
    }
    Some((direction, verdict))
}

impl EdgeGraph {
    pub fn new(max_edges: usize, now_ms: u64) -> Self {
        Self {
            map: HashMap::new(),
            max_edges,
            dropped: 0,
            started_ms: now_ms,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// Adds one report of `workload`'s sidecar; returns the edges kept, for the anomaly
    /// rules, and what happened to the rest.
    pub fn ingest(
        &mut self,
        workload: &Arc<str>,
        report: &pb::EdgeReport,
        now_ms: u64,
    ) -> (Vec<Observation>, Ingested) {
        let mut out = Vec::with_capacity(report.edges.len());
        let mut stats = Ingested::default();
        for edge in &report.edges {
            let Some((direction, verdict)) = validate(edge) else {
                stats.invalid += 1;
                continue;
            };
            let mut key = EdgeKey {
                workload: workload.clone(),
                direction,
                listener: edge.listener.as_str().into(),
                peer: edge.peer_id.as_str().into(),
                http: edge.http,
                route: edge.route,
            };
            if !self.map.contains_key(&key) && self.map.len() >= self.max_edges {
                // Past the bound, as in the sidecars: the peer becomes `other`, with a
                // little slack for those, then nothing more is kept.
                key.peer = OTHER.into();
                key.route = None;
                if !self.map.contains_key(&key)
                    && self.map.len() >= self.max_edges + self.max_edges / 8
                {
                    self.dropped = self.dropped.saturating_add(edge.count);
                    stats.dropped += 1;
                    continue;
                }
            }
            let entry = self.map.entry(key.clone()).or_insert(EdgeStats {
                first_seen_ms: now_ms,
                ..EdgeStats::default()
            });
            let counter = match verdict {
                Verdict::Allow => &mut entry.allowed,
                Verdict::Deny => &mut entry.denied,
                Verdict::WouldDeny => &mut entry.would_deny,
            };
            *counter = counter.saturating_add(edge.count);
            entry.last_seen_ms = now_ms;
            stats.edges += 1;
            out.push(Observation {
                key,
                verdict,
                count: edge.count,
            });
        }
        (out, stats)
    }

    /// The edges reported by `workload`'s sidecars (all when `None`) and seen at or after
    /// `since_ms`, sorted.
    pub fn observed(&self, workload: Option<&str>, since_ms: u64) -> Vec<(&EdgeKey, &EdgeStats)> {
        let mut list: Vec<_> = self
            .map
            .iter()
            .filter(|(k, s)| {
                workload.is_none_or(|w| &*k.workload == w) && s.last_seen_ms >= since_ms
            })
            .collect();
        list.sort_by(|a, b| a.0.cmp(b.0));
        list
    }
}

/// The wire form of one aggregated edge.
pub fn to_proto(key: &EdgeKey, stats: &EdgeStats) -> pb::ObservedEdge {
    pb::ObservedEdge {
        workload: key.workload.to_string(),
        direction: key.direction.as_str().to_owned(),
        listener: key.listener.to_string(),
        peer_id: key.peer.to_string(),
        http: key.http,
        route: key.route,
        allowed: stats.allowed,
        denied: stats.denied,
        would_deny: stats.would_deny,
        first_seen_unix_ms: stats.first_seen_ms,
        last_seen_unix_ms: stats.last_seen_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn edge(direction: &str, peer: &str, decision: &str, count: u64) -> pb::Edge {
        pb::Edge {
            direction: direction.into(),
            listener: "http".into(),
            peer_id: peer.into(),
            decision: decision.into(),
            reason: if decision == "allow" {
                "allowed".into()
            } else {
                "no_match".into()
            },
            http: false,
            route: None,
            count,
        }
    }

    fn report(edges: Vec<pb::Edge>) -> pb::EdgeReport {
        pb::EdgeReport {
            edges,
            interval_ms: 1000,
            folded: 0,
        }
    }

    #[test]
    fn aggregates_by_edge_and_keeps_first_and_last_seen() {
        let mut g = EdgeGraph::new(100, 0);
        let w: Arc<str> = Arc::from("spiffe://example.org/vectordb");
        let a = "spiffe://example.org/retriever";
        g.ingest(&w, &report(vec![edge("inbound", a, "allow", 3)]), 10);
        let (obs, stats) = g.ingest(
            &w,
            &report(vec![
                edge("inbound", a, "allow", 2),
                edge("inbound", a, "would_deny", 1),
            ]),
            20,
        );
        assert_eq!(stats.edges, 2);
        assert_eq!(obs[0].key.caller_callee(), (a, &*w));
        let list = g.observed(None, 0);
        assert_eq!(list.len(), 1);
        let s = list[0].1;
        assert_eq!((s.allowed, s.would_deny, s.denied), (5, 1, 0));
        assert_eq!((s.first_seen_ms, s.last_seen_ms), (10, 20));
        assert!(g.observed(None, 21).is_empty());
        assert_eq!(g.observed(Some("spiffe://example.org/x"), 0).len(), 0);
    }

    #[test]
    fn invalid_edges_are_skipped_and_counted() {
        let mut g = EdgeGraph::new(100, 0);
        let w: Arc<str> = Arc::from("spiffe://example.org/w");
        let mut bad_listener = edge("inbound", "spiffe://example.org/a", "allow", 1);
        bad_listener.listener = "a b".into();
        let mut bad_reason = edge("inbound", "spiffe://example.org/a", "deny", 1);
        bad_reason.reason = "<script>".into();
        let (_, stats) = g.ingest(
            &w,
            &report(vec![
                edge("sideways", "spiffe://example.org/a", "allow", 1),
                edge("inbound", "spiffe://example.org", "allow", 1),
                edge("inbound", "spiffe://example.org/a", "maybe", 1),
                edge("inbound", "spiffe://example.org/a", "allow", 0),
                bad_listener,
                bad_reason,
                edge("inbound", OTHER, "deny", 4),
            ]),
            1,
        );
        assert_eq!((stats.invalid, stats.edges), (6, 1));
    }

    /// 10,000 distinct peers from one sidecar: the graph stays within its bound.
    #[test]
    fn distinct_peers_beyond_the_bound_fold_into_other() {
        let mut g = EdgeGraph::new(64, 0);
        let w: Arc<str> = Arc::from("spiffe://example.org/w");
        for chunk in 0..100 {
            let edges = (0..100)
                .map(|i| {
                    edge(
                        "inbound",
                        &format!("spiffe://example.org/p/{chunk}/{i}"),
                        "deny",
                        1,
                    )
                })
                .collect();
            g.ingest(&w, &report(edges), chunk);
        }
        assert!(g.len() <= 64 + 8, "{}", g.len());
        let other = g
            .observed(None, 0)
            .into_iter()
            .find(|(k, _)| &*k.peer == OTHER)
            .map(|(_, s)| s.denied);
        assert_eq!(other, Some(10_000 - 64));
    }
}
