//! `warden policy suggest`: a policy file of what the sidecars observed, for review.
//!
//! Every connection edge that was allowed, or would have been denied in audit mode, becomes
//! an exact rule of the reporting workload's listener (inbound: the caller on the inbound
//! listener; outbound: the server on the outbound listener). Denied edges are left out, so
//! putting the suggestion changes no decision of the observed traffic: what passed still
//! passes, what was denied still is. Requests of HTTP listeners are decided by routes,
//! which name path prefixes the edge counts do not carry: a workload's current routes are
//! kept as they are, and HTTP requests its routes would deny are listed as comments. The
//! mode is `enforce`: the suggestion is what audit mode was for.

use std::collections::{BTreeMap, BTreeSet};

use warden_identity::WorkloadId;
use warden_proto::control::v1 as pb;

use crate::{ListenerName, Pattern, WorkloadPolicy};

/// The suggested policies (one per reporting workload, sorted) and what the reviewer
/// should know about what was left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Suggestion {
    pub policies: Vec<WorkloadPolicy>,
    pub notes: Vec<String>,
}

impl Suggestion {
    /// The policy file: notes as comments, then the workloads.
    pub fn to_toml(&self) -> String {
        let mut out = String::from(
            "# Suggested by `warden policy suggest` from the edges the sidecars reported.\n\
             # Review it, then: warden policy put -f <this file>\n",
        );
        for note in &self.notes {
            out.push_str("# ");
            out.push_str(&note.replace('\n', " "));
            out.push('\n');
        }
        if self.policies.is_empty() {
            out.push_str("workload = []\n");
        } else {
            out.push('\n');
            out.push_str(&crate::to_toml(&self.policies));
        }
        out
    }
}

#[derive(Default)]
struct Draft {
    inbound: BTreeMap<String, BTreeSet<String>>,
    outbound: BTreeMap<String, BTreeSet<String>>,
}

/// Builds the suggestion from the observed edges; `current` supplies the routes kept.
pub fn suggest(edges: &[pb::ObservedEdge], current: &[WorkloadPolicy]) -> Suggestion {
    let mut drafts: BTreeMap<String, Draft> = BTreeMap::new();
    let mut notes = Vec::new();
    let mut denied = 0u64;
    let mut other = 0u64;
    let mut http_would_deny: BTreeMap<(String, String), u64> = BTreeMap::new();
    for e in edges {
        let passed = e.allowed + e.would_deny;
        if WorkloadId::parse(&e.workload).is_err() || ListenerName::parse(&e.listener).is_err() {
            continue;
        }
        if e.http {
            if e.would_deny > 0 {
                *http_would_deny
                    .entry((e.workload.clone(), e.listener.clone()))
                    .or_insert(0) += e.would_deny;
            }
            continue;
        }
        if passed == 0 {
            denied += e.denied;
            continue;
        }
        if e.peer_id == "other" || WorkloadId::parse(&e.peer_id).is_err() {
            other += passed;
            continue;
        }
        let draft = drafts.entry(e.workload.clone()).or_default();
        let side = match e.direction.as_str() {
            "inbound" => &mut draft.inbound,
            "outbound" => &mut draft.outbound,
            _ => continue,
        };
        side.entry(e.listener.clone())
            .or_default()
            .insert(e.peer_id.clone());
        denied += e.denied;
    }
    if denied > 0 {
        notes.push(format!(
            "{denied} denied connection(s) were observed and are not allowed here."
        ));
    }
    if other > 0 {
        notes.push(format!(
            "{other} connection(s) from peers counted as \"other\" (past a report cap) cannot be listed; check the sidecars' audit logs."
        ));
    }
    for ((workload, listener), n) in &http_would_deny {
        notes.push(format!(
            "{workload}: {n} HTTP request(s) on {listener} would be denied by its routes; routes are kept as they are, review them."
        ));
    }
    let mut policies = Vec::with_capacity(drafts.len());
    for (workload, draft) in drafts {
        let Ok(id) = WorkloadId::parse(&workload) else {
            continue;
        };
        let mut policy = WorkloadPolicy::new(id.into_spiffe_id());
        for (side, map) in [
            (&mut policy.inbound, draft.inbound),
            (&mut policy.outbound, draft.outbound),
        ] {
            for (listener, peers) in map {
                let patterns: Vec<Pattern> = peers
                    .iter()
                    .filter_map(|p| Pattern::parse(p).ok())
                    .collect();
                side.insert(listener, patterns);
            }
        }
        if let Some(now) = current.iter().find(|p| p.spiffe_id == policy.spiffe_id) {
            policy.routes = now.routes.clone();
        }
        policies.push(policy);
    }
    Suggestion { policies, notes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Direction, Mode, PolicySnapshot, PolicySource, SpiffeId};

    fn edge(
        workload: &str,
        direction: &str,
        listener: &str,
        peer: &str,
        a: u64,
        w: u64,
        d: u64,
    ) -> pb::ObservedEdge {
        pb::ObservedEdge {
            workload: format!("spiffe://example.org/{workload}"),
            direction: direction.into(),
            listener: listener.into(),
            peer_id: if peer == "other" {
                peer.into()
            } else {
                format!("spiffe://example.org/{peer}")
            },
            allowed: a,
            would_deny: w,
            denied: d,
            ..Default::default()
        }
    }

    #[test]
    fn observed_edges_become_exact_rules_and_denied_ones_do_not() {
        let edges = vec![
            edge("retriever", "inbound", "http", "app", 3, 0, 0),
            edge("retriever", "inbound", "http", "intruder", 0, 0, 5),
            edge("retriever", "outbound", "vectordb", "vectordb", 0, 4, 0),
            edge("vectordb", "inbound", "http", "retriever", 0, 4, 0),
            edge("vectordb", "inbound", "http", "other", 0, 9, 0),
        ];
        let s = suggest(&edges, &[]);
        let text = s.to_toml();
        let parsed = crate::parse_policy_file(&text).expect("the suggestion parses");
        assert_eq!(parsed, s.policies, "round trip:\n{text}");
        assert_eq!(parsed.len(), 2);
        let retriever = &parsed[0];
        assert_eq!(retriever.mode, Mode::Enforce);
        assert_eq!(
            retriever.inbound["http"]
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>(),
            vec!["spiffe://example.org/app"]
        );
        assert_eq!(
            retriever.outbound["vectordb"][0].as_str(),
            "spiffe://example.org/vectordb"
        );
        assert!(text.contains("5 denied connection(s)"), "{text}");
        assert!(text.contains("\"other\""), "{text}");

        // Putting it changes no decision of the observed traffic.
        let id = |p: &str| SpiffeId::parse(&format!("spiffe://example.org/{p}")).expect("id");
        let snap = PolicySnapshot::compile(Some(retriever), PolicySource::ControlPlane);
        assert!(snap.decide(Direction::Inbound, "http", &id("app")).allowed);
        assert!(
            !snap
                .decide(Direction::Inbound, "http", &id("intruder"))
                .allowed
        );
        assert!(
            snap.decide(Direction::Outbound, "vectordb", &id("vectordb"))
                .allowed
        );
    }

    #[test]
    fn routes_are_kept_and_an_empty_suggestion_is_a_valid_file() {
        let current = crate::parse_policy_file(
            "[[workload]]\nspiffe_id = \"spiffe://example.org/retriever\"\ninbound.http = []\n[[workload.route]]\nlistener = \"http\"\npath_prefix = \"/docs/\"\n",
        )
        .expect("policy");
        let mut http = edge("retriever", "inbound", "http", "app", 0, 2, 0);
        http.http = true;
        let s = suggest(
            &[edge("retriever", "inbound", "http", "app", 1, 0, 0), http],
            &current,
        );
        assert_eq!(s.policies[0].routes, current[0].routes);
        assert!(
            s.to_toml()
                .contains("2 HTTP request(s) on http would be denied")
        );
        let empty = suggest(&[], &[]);
        assert_eq!(
            crate::parse_policy_file(&empty.to_toml()).expect("valid"),
            vec![]
        );
    }
}
