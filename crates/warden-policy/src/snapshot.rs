//! A compiled, immutable view of the sidecar's own policy, and the decision function
//! evaluated on every handshake and on every re-check of a live connection.
//!
//! Lookups are built so that `decide` allocates nothing and its cost does not grow with
//! the number of rules:
//! - exact IDs live in a hash set keyed by the full normalized ID string, so the common
//!   case is one hash and one string compare;
//! - wildcard patterns live in a segment trie per trust domain. A linear scan would cost
//!   O(patterns) per decision, and large fleets write many `ns/<team>/**` style rules. The
//!   trie costs O(path segments) instead: the peer's trust domain selects one trie (rules
//!   for other trust domains are never looked at), then each segment follows at most a
//!   literal child and a `*` child. Every trie node sits at one fixed depth and is reached
//!   by one route, so even the backtracking walk visits each node at most once: no input
//!   can make it exponential.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use warden_identity::SpiffeId;

use crate::model::{Direction, Mode, WorkloadPolicy};
use crate::pattern::{Kind, Pattern, Segment};

/// Where the snapshot's policy came from; reported on `/debug/policy` and in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicySource {
    /// Nothing loaded (startup, or no policy configured anywhere): everything denied.
    None,
    /// The `allow` lists of the sidecar config.
    Static,
    /// Pushed by the control plane.
    ControlPlane,
    /// The last-known-good cache, used while the control plane is unreachable.
    Cache,
}

impl PolicySource {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicySource::None => "none",
            PolicySource::Static => "static",
            PolicySource::ControlPlane => "control_plane",
            PolicySource::Cache => "cache",
        }
    }
}

impl fmt::Display for PolicySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one authorization check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'a> {
    /// Whether the connection may proceed.
    pub allowed: bool,
    /// Allowed only because the policy is in audit mode: the rules deny it, for `reason`.
    pub would_deny: bool,
    pub reason: Reason<'a>,
}

impl Decision<'_> {
    /// The `decision` metric label: `allow`, `deny`, or `would_deny` (audit mode).
    pub fn as_label(&self) -> &'static str {
        if self.would_deny {
            "would_deny"
        } else if self.allowed {
            "allow"
        } else {
            "deny"
        }
    }
}

/// Why a decision came out the way it did. Only `Matched` ever allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason<'a> {
    /// The canonical text of the rule that admitted the peer.
    Matched { rule: &'a str },
    /// No policy is loaded for this workload.
    NoPolicy,
    /// The policy does not mention this listener.
    UnknownListener,
    /// The listener's allowlist is empty.
    EmptyAllowlist,
    /// The listener has rules, but none matches the peer.
    NoMatch,
    /// The peer (inbound), or this workload itself (outbound), is in quarantine.
    Quarantined,
}

impl Reason<'_> {
    /// The `reason` metric label.
    pub fn as_label(&self) -> &'static str {
        match self {
            Reason::Matched { .. } => "allowed",
            Reason::NoPolicy => "no_policy",
            Reason::UnknownListener => "unknown_listener",
            Reason::EmptyAllowlist => "empty_allowlist",
            Reason::NoMatch => "no_match",
            Reason::Quarantined => "quarantined",
        }
    }
}

impl fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Matched { rule } => write!(f, "matched rule {rule}"),
            Reason::NoPolicy => f.write_str("no policy is loaded"),
            Reason::UnknownListener => f.write_str("the policy has no rules for this listener"),
            Reason::EmptyAllowlist => f.write_str("the listener's allowlist is empty"),
            Reason::NoMatch => f.write_str("no rule matches the peer"),
            Reason::Quarantined => f.write_str("the identity is in quarantine"),
        }
    }
}

#[derive(Default)]
struct TrieNode {
    literal: HashMap<Box<str>, TrieNode>,
    any: Option<Box<TrieNode>>,
    /// A pattern that ends exactly here.
    end: Option<Box<str>>,
    /// A pattern that ends here with `/**` (needs at least one more segment).
    tail: Option<Box<str>>,
}

impl TrieNode {
    fn insert(&mut self, segments: &[Segment], tail: bool, text: &str) {
        let mut node = self;
        for seg in segments {
            node = match seg {
                Segment::Literal(l) => node.literal.entry(l.clone()).or_default(),
                Segment::Any => node.any.get_or_insert_with(Box::default),
            };
        }
        let slot = if tail { &mut node.tail } else { &mut node.end };
        // Two patterns reaching the same slot have the same canonical text, so keeping the
        // first loses nothing.
        if slot.is_none() {
            *slot = Some(text.into());
        }
    }

    /// `rest` is the unconsumed part of a path: empty, or `/seg[/seg...]`. Literal
    /// children are tried before `*`, and both before `/**`, so the most specific matching
    /// rule is reported.
    fn find(&self, rest: &str) -> Option<&str> {
        if rest.is_empty() {
            return self.end.as_deref();
        }
        // A path that does not start with '/' cannot come from a valid SpiffeId; fail closed.
        let after = rest.strip_prefix('/')?;
        let (seg, next) = after.find('/').map_or((after, ""), |i| after.split_at(i));
        if let Some(found) = self.literal.get(seg).and_then(|child| child.find(next)) {
            return Some(found);
        }
        if let Some(found) = self.any.as_ref().and_then(|child| child.find(next)) {
            return Some(found);
        }
        self.tail.as_deref()
    }
}

/// The compiled allowlist of one listener.
#[derive(Default)]
struct RuleSet {
    exact: HashSet<Box<str>>,
    wildcards: HashMap<Box<str>, TrieNode>,
    is_empty: bool,
}

impl RuleSet {
    fn compile(patterns: &[Pattern]) -> RuleSet {
        let mut set = RuleSet {
            is_empty: patterns.is_empty(),
            ..RuleSet::default()
        };
        for pattern in patterns {
            match pattern.kind() {
                Kind::Exact => {
                    set.exact.insert(pattern.as_str().into());
                }
                Kind::Wildcard(w) => set
                    .wildcards
                    .entry(w.trust_domain.clone())
                    .or_default()
                    .insert(&w.segments, w.tail, pattern.as_str()),
            }
        }
        set
    }

    fn find(&self, peer: &SpiffeId) -> Option<&str> {
        // Exact first: when both an exact rule and a wildcard admit a peer, the exact rule
        // is the one an operator wants to see in the audit log.
        if let Some(rule) = self.exact.get(peer.as_str()) {
            return Some(rule);
        }
        self.wildcards
            .get(peer.trust_domain_name())
            .and_then(|trie| trie.find(peer.path()))
    }
}

#[derive(Default)]
struct DirectionRules {
    /// As written, for display.
    listed: BTreeMap<String, Vec<Pattern>>,
    compiled: HashMap<Box<str>, RuleSet>,
}

impl DirectionRules {
    fn compile(listed: BTreeMap<String, Vec<Pattern>>) -> Self {
        let compiled = listed
            .iter()
            .map(|(name, patterns)| (name.as_str().into(), RuleSet::compile(patterns)))
            .collect();
        DirectionRules { listed, compiled }
    }
}

/// Per listener, the issuers its routes name, sorted, each once.
fn issuers_by_listener(routes: &[crate::Route]) -> HashMap<String, std::sync::Arc<[String]>> {
    let mut by: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for route in routes {
        if let Some(users) = &route.users {
            by.entry(route.listener.as_str())
                .or_default()
                .push(users.jwt.clone());
        }
    }
    by.into_iter()
        .map(|(listener, mut names)| {
            names.sort();
            names.dedup();
            (listener.to_owned(), std::sync::Arc::from(names))
        })
        .collect()
}

/// An immutable, compiled policy for the sidecar's own workload. Cheap to share behind an
/// `Arc`; a policy change builds a new snapshot rather than mutating this one.
pub struct PolicySnapshot {
    has_policy: bool,
    source: PolicySource,
    version: u64,
    workload: Option<SpiffeId>,
    updated_by: Option<String>,
    updated_at_unix_ms: Option<u64>,
    inbound: DirectionRules,
    outbound: DirectionRules,
    /// L7 rules, in policy order.
    routes: Vec<crate::Route>,
    /// Per listener, the `[[jwt]]` issuers its routes name (sorted, once each): what a
    /// request's token is checked against before the decision.
    route_issuers: HashMap<String, std::sync::Arc<[String]>>,
    mode: Mode,
    /// SPIFFE IDs in quarantine (pushed by the control plane): refused inbound.
    quarantine: HashSet<Box<str>>,
    /// This workload is itself in quarantine: every outbound call is refused.
    self_quarantined: bool,
}

impl PolicySnapshot {
    /// No policy at all: every decision is a deny with reason `NoPolicy`. This is the
    /// state before the first policy arrives.
    pub fn deny_all() -> Self {
        PolicySnapshot {
            has_policy: false,
            source: PolicySource::None,
            version: 0,
            workload: None,
            updated_by: None,
            updated_at_unix_ms: None,
            inbound: DirectionRules::default(),
            outbound: DirectionRules::default(),
            routes: Vec::new(),
            route_issuers: HashMap::new(),
            mode: Mode::Enforce,
            quarantine: HashSet::new(),
            self_quarantined: false,
        }
    }

    /// Compiles the workload's policy; `None` (the control plane has no policy for it)
    /// denies everything, like [`deny_all`](Self::deny_all), but records `source`.
    pub fn compile(policy: Option<&WorkloadPolicy>, source: PolicySource) -> Self {
        let Some(policy) = policy else {
            return PolicySnapshot {
                source,
                ..PolicySnapshot::deny_all()
            };
        };
        PolicySnapshot {
            has_policy: true,
            source,
            version: policy.version,
            workload: Some(policy.spiffe_id.clone()),
            updated_by: policy.updated_by.clone(),
            updated_at_unix_ms: policy.updated_at_unix_ms,
            inbound: DirectionRules::compile(policy.inbound.clone()),
            outbound: DirectionRules::compile(policy.outbound.clone()),
            routes: policy.routes.clone(),
            route_issuers: issuers_by_listener(&policy.routes),
            mode: policy.mode,
            quarantine: HashSet::new(),
            self_quarantined: false,
        }
    }

    /// The rules of a sidecar's config file (source `Static`, version 0): the inbound
    /// listeners' allowlists and, without a control plane, each outbound listener's
    /// `server_id`. A listener missing here denies.
    pub fn from_static(
        inbound: BTreeMap<String, Vec<Pattern>>,
        outbound: BTreeMap<String, Vec<Pattern>>,
    ) -> Self {
        PolicySnapshot {
            has_policy: true,
            source: PolicySource::Static,
            inbound: DirectionRules::compile(inbound),
            outbound: DirectionRules::compile(outbound),
            ..PolicySnapshot::deny_all()
        }
    }

    /// The same snapshot stamped with another version; used for "no policy" snapshots,
    /// which carry the store revision of the deletion that produced them.
    pub fn with_version(mut self, version: u64) -> Self {
        self.version = version;
        self
    }

    /// The same snapshot with the control plane's quarantine list: those IDs are refused
    /// on every inbound listener and, when this workload is one of them, every outbound
    /// call is refused. Neither is relaxed by audit mode.
    pub fn with_quarantine<'a>(mut self, ids: impl IntoIterator<Item = &'a str>) -> Self {
        self.quarantine = ids.into_iter().map(Box::from).collect();
        self.self_quarantined = self
            .workload
            .as_ref()
            .is_some_and(|w| self.quarantine.contains(w.as_str()));
        self
    }

    /// Decides whether `peer` may use `listener` in `direction`. Denies unless a rule of
    /// that listener matches (in audit mode: allows, marked `would_deny`), and always when
    /// quarantine applies; allocates nothing.
    pub fn decide(&self, direction: Direction, listener: &str, peer: &SpiffeId) -> Decision<'_> {
        if self.is_quarantined(direction, peer) {
            return Decision {
                allowed: false,
                would_deny: false,
                reason: Reason::Quarantined,
            };
        }
        let decision = self.decide_rules(direction, listener, peer);
        if !decision.allowed && self.mode == Mode::Audit && self.has_policy {
            return Decision {
                allowed: true,
                would_deny: true,
                reason: decision.reason,
            };
        }
        decision
    }

    fn is_quarantined(&self, direction: Direction, peer: &SpiffeId) -> bool {
        match direction {
            Direction::Inbound => {
                !self.quarantine.is_empty() && self.quarantine.contains(peer.as_str())
            }
            Direction::Outbound => self.self_quarantined,
        }
    }

    /// The rules alone, as enforce mode applies them.
    fn decide_rules(&self, direction: Direction, listener: &str, peer: &SpiffeId) -> Decision<'_> {
        let deny = |reason| Decision {
            allowed: false,
            would_deny: false,
            reason,
        };
        if !self.has_policy {
            return deny(Reason::NoPolicy);
        }
        let Some(rules) = self.direction(direction).compiled.get(listener) else {
            return deny(Reason::UnknownListener);
        };
        if rules.is_empty {
            return deny(Reason::EmptyAllowlist);
        }
        match rules.find(peer) {
            Some(rule) => Decision {
                allowed: true,
                would_deny: false,
                reason: Reason::Matched { rule },
            },
            None => deny(Reason::NoMatch),
        }
    }

    /// Decides one HTTP request on inbound `listener` (whose connection `decide` already
    /// allowed): first matching route wins; no route matching denies, once the listener
    /// has routes. `path` must be normalized ([`crate::normalize_path`]). Without a policy,
    /// denies.
    pub fn decide_request(
        &self,
        listener: &str,
        peer: &SpiffeId,
        method: &str,
        path: &str,
        users: &mut dyn FnMut(&crate::UserRequirement) -> crate::UserCheck,
    ) -> crate::RequestDecision {
        if !self.has_policy || self.is_quarantined(Direction::Inbound, peer) {
            return crate::RequestDecision {
                allowed: false,
                would_deny: false,
                route: None,
                reason: if self.has_policy {
                    crate::RequestReason::Quarantined
                } else {
                    crate::RequestReason::NoMatch
                },
            };
        }
        let routes = self
            .routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.listener == listener);
        let mut decision = crate::route::decide_request(routes, peer, method, path, users);
        if !decision.allowed && self.mode == Mode::Audit {
            decision.allowed = true;
            decision.would_deny = true;
        }
        decision
    }

    /// `enforce` or `audit`.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The quarantined SPIFFE IDs in force, sorted (for `/debug/policy`).
    pub fn quarantined(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.quarantine.iter().map(|id| &**id).collect();
        ids.sort_unstable();
        ids
    }

    /// The L7 rules, in policy order.
    /// The `[[jwt]]` issuers the routes of `listener` name, sorted, each once (empty: the
    /// listener's routes ask for no end user).
    pub fn route_issuers(&self, listener: &str) -> std::sync::Arc<[String]> {
        self.route_issuers
            .get(listener)
            .cloned()
            .unwrap_or_else(|| std::sync::Arc::from(Vec::new()))
    }

    pub fn routes(&self) -> &[crate::Route] {
        &self.routes
    }

    fn direction(&self, direction: Direction) -> &DirectionRules {
        match direction {
            Direction::Inbound => &self.inbound,
            Direction::Outbound => &self.outbound,
        }
    }

    /// The rules of one direction as written (listener -> patterns), for `/debug/policy`.
    pub fn rules(&self, direction: Direction) -> &BTreeMap<String, Vec<Pattern>> {
        &self.direction(direction).listed
    }

    /// False only for a snapshot that denies everything for lack of a policy.
    pub fn has_policy(&self) -> bool {
        self.has_policy
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn source(&self) -> PolicySource {
        self.source
    }

    /// The workload the policy was written for (`None` for static and empty snapshots).
    pub fn workload(&self) -> Option<&SpiffeId> {
        self.workload.as_ref()
    }

    pub fn updated_by(&self) -> Option<&str> {
        self.updated_by.as_deref()
    }

    pub fn updated_at_unix_ms(&self) -> Option<u64> {
        self.updated_at_unix_ms
    }
}

impl Default for PolicySnapshot {
    fn default() -> Self {
        PolicySnapshot::deny_all()
    }
}

/// A summary only: a snapshot can hold many thousands of rules.
impl fmt::Debug for PolicySnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = |d: &DirectionRules| d.listed.values().map(Vec::len).sum::<usize>();
        f.debug_struct("PolicySnapshot")
            .field("has_policy", &self.has_policy)
            .field("source", &self.source)
            .field("version", &self.version)
            .field("workload", &self.workload)
            .field("mode", &self.mode)
            .field("quarantined", &self.quarantine.len())
            .field("inbound_listeners", &self.inbound.listed.len())
            .field("inbound_rules", &count(&self.inbound))
            .field("outbound_listeners", &self.outbound.listed.len())
            .field("outbound_rules", &count(&self.outbound))
            .finish()
    }
}

#[cfg(test)]
#[path = "snapshot_tests.rs"]
mod tests;
