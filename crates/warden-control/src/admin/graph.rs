//! `/graph.json` and `/graph`: the mesh as the sidecars reported it. Nodes are workloads,
//! an edge is caller -> callee with the decisions counted on it (both ends report the same
//! connections, so each decision count is the larger of the two ends' counts), anomalies
//! and quarantines marked.
//!
//! The page is one self-contained HTML document (inline script and style, SVG, no external
//! asset), so it works offline and under a strict Content-Security-Policy. It renders at
//! once from the JSON embedded in it, then refreshes from `/graph.json` every two seconds.
//! It builds its DOM with `textContent` and attributes only, never HTML from data.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use warden_policy::Direction;

use crate::insight::Insight;
use crate::insight::edges::OTHER;
use crate::quarantine::Quarantines;

const PAGE: &str = include_str!("graph.html");
/// Where the page's initial data goes.
const DATA_MARK: &str = "/*GRAPH_JSON*/null";

#[derive(Debug, Serialize)]
pub struct Graph {
    pub generated_at_unix_ms: u64,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    pub anomalies: Vec<Anomaly>,
    pub quarantined: Vec<Quarantine>,
}

#[derive(Debug, Serialize)]
pub struct Node {
    pub id: String,
    pub quarantined: bool,
    /// Kinds of anomalies about this identity.
    pub anomalies: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub allowed: u64,
    pub would_deny: u64,
    pub denied: u64,
    /// The most severe decision seen: `deny`, then `would_deny`, then `allow`.
    pub decision: &'static str,
    pub anomalies: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Anomaly {
    pub kind: String,
    pub workload: String,
    pub peer_id: String,
    pub response: String,
    pub detail: String,
    pub at_unix_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct Quarantine {
    pub spiffe_id: String,
    pub by: String,
    pub reason: String,
    pub at_unix_ms: u64,
}

#[derive(Default)]
struct Sides {
    inbound: (u64, u64, u64),
    outbound: (u64, u64, u64),
}

/// What the graph shows now.
pub async fn snapshot(insight: &Insight, quarantines: &Quarantines) -> Graph {
    let quarantined = match quarantines.list().await {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(error = %e, "graph: cannot read the quarantine list");
            Vec::new()
        }
    };
    let anomalies = insight.anomalies(0);
    let mut pairs: BTreeMap<(String, String), Sides> = BTreeMap::new();
    for e in insight.edges() {
        if e.http {
            continue;
        }
        let (from, to, inbound) = if e.direction == Direction::Inbound.as_str() {
            (e.peer_id.clone(), e.workload.clone(), true)
        } else {
            (e.workload.clone(), e.peer_id.clone(), false)
        };
        let sides = pairs.entry((from, to)).or_default();
        let side = if inbound {
            &mut sides.inbound
        } else {
            &mut sides.outbound
        };
        side.0 += e.allowed;
        side.1 += e.would_deny;
        side.2 += e.denied;
    }
    let mut nodes: BTreeSet<String> = BTreeSet::new();
    let mut edges = Vec::with_capacity(pairs.len());
    for ((from, to), s) in pairs {
        let allowed = s.inbound.0.max(s.outbound.0);
        let would_deny = s.inbound.1.max(s.outbound.1);
        let denied = s.inbound.2.max(s.outbound.2);
        let decision = if denied > 0 {
            "deny"
        } else if would_deny > 0 {
            "would_deny"
        } else {
            "allow"
        };
        let marks = anomalies
            .iter()
            .filter(|a| a.workload == from && (a.peer_id == to || a.peer_id == "*"))
            .map(|a| a.kind.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        nodes.insert(from.clone());
        nodes.insert(to.clone());
        edges.push(Edge {
            from,
            to,
            allowed,
            would_deny,
            denied,
            decision,
            anomalies: marks,
        });
    }
    for q in &quarantined {
        nodes.insert(q.spiffe_id.clone());
    }
    for a in &anomalies {
        nodes.insert(a.workload.clone());
    }
    let nodes = nodes
        .into_iter()
        .map(|id| Node {
            quarantined: quarantined.iter().any(|q| q.spiffe_id == id),
            anomalies: anomalies
                .iter()
                .filter(|a| a.workload == id)
                .map(|a| a.kind.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            id,
        })
        .collect();
    Graph {
        generated_at_unix_ms: crate::policy_service::now_ms(),
        nodes,
        edges,
        anomalies: anomalies
            .into_iter()
            .rev()
            .take(50)
            .map(|a| Anomaly {
                kind: a.kind,
                workload: a.workload,
                peer_id: a.peer_id,
                response: a.response,
                detail: a.detail,
                at_unix_ms: a.at_unix_ms,
            })
            .collect(),
        quarantined: quarantined
            .into_iter()
            .map(|q| Quarantine {
                spiffe_id: q.spiffe_id,
                by: q.by,
                reason: q.reason,
                at_unix_ms: q.at_unix_ms,
            })
            .collect(),
    }
}

/// The page with `graph` embedded as its initial data. `<`, `>` and `&` are escaped in the
/// JSON so no value can end the script element it sits in.
pub fn page(graph: &Graph) -> String {
    let json = serde_json::to_string(graph)
        .unwrap_or_else(|_| "null".into())
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026");
    PAGE.replacen(DATA_MARK, &json, 1)
}

/// `other` is a node like any other on the page; kept public for tests that look for it.
pub const OTHER_NODE: &str = OTHER;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_embeds_its_data_safely_and_loads_nothing_from_elsewhere() {
        let graph = Graph {
            generated_at_unix_ms: 1,
            nodes: vec![Node {
                id: "</script><script>alert(1)</script>".into(),
                quarantined: false,
                anomalies: vec![],
            }],
            edges: vec![],
            anomalies: vec![],
            quarantined: vec![],
        };
        let html = page(&graph);
        assert!(
            !html.contains("</script><script>alert(1)"),
            "data ended the script"
        );
        assert!(html.contains("\\u003c/script\\u003e"));
        assert!(!html.contains(DATA_MARK));
        for external in [
            "src=\"http",
            "href=\"http",
            "@import",
            "url(http",
            "<link rel=\"stylesheet",
        ] {
            assert!(!html.contains(external), "external asset: {external}");
        }
        assert!(
            !html.contains("innerHTML"),
            "the page must not build HTML from data"
        );
    }
}
