//! The policy of one workload: who may call it on each inbound listener and whom it may
//! call through each outbound listener.
//!
//! `WorkloadPolicy` (de)serializes as JSON in the shape of a policy-file `[[workload]]`
//! entry plus the control plane's metadata; the sidecar's last-known-good cache and the
//! control plane's store both use it. Deserializing validates everything (IDs, patterns,
//! listener names, unknown fields), because a cache or a message that is only half
//! understood must be rejected, never half applied.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize, Serializer};
use warden_identity::{SpiffeId, SpiffeIdError, WorkloadId, WorkloadIdError};

use crate::pattern::Pattern;
use crate::route::{RawRoute, Route, validate_route};

/// Which side of the sidecar a decision is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// A peer calling this workload.
    Inbound,
    /// This workload calling an upstream.
    Outbound,
}

impl Direction {
    /// The metric label / config key: `inbound` or `outbound`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a workload's policy is applied. `Audit` lets through what the rules would deny
/// (counted and audited as `would_deny`, with the reason the deny would have had), so a
/// policy can be tried on live traffic before it is enforced. Only policy decisions relax:
/// handshakes, SVID validation and quarantine never do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deny what the rules do not allow (the default).
    #[default]
    Enforce,
    /// Allow, but count and audit as `would_deny`, what the rules do not allow.
    Audit,
}

impl Mode {
    /// The policy file / wire value: `enforce` or `audit`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }

    /// Reads a policy file / wire value (`enforce` or `audit`, exactly).
    pub fn parse(text: &str) -> Option<Mode> {
        match text {
            "enforce" => Some(Mode::Enforce),
            "audit" => Some(Mode::Audit),
            _ => None,
        }
    }

    pub fn is_enforce(&self) -> bool {
        *self == Mode::Enforce
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Longest listener name. Names end up in metric labels and log lines, so they are kept
/// short and free of characters that need quoting anywhere.
pub const MAX_LISTENER_NAME_LEN: usize = 64;

/// Why a listener name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenerNameError {
    #[error("listener name is empty")]
    Empty,
    #[error("listener name is {0} bytes long, but at most 64 are allowed")]
    TooLong(usize),
    #[error("listener name contains {0:?}, but only A-Z, a-z, 0-9, '_' and '-' are allowed")]
    BadChar(char),
}

/// A listener name that passed [`validate_listener_name`]: what every front-end (sidecar
/// config, policy file, wire, store, cache) checks a name with.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerName(Box<str>);

impl ListenerName {
    pub fn parse(name: &str) -> Result<Self, ListenerNameError> {
        validate_listener_name(name)?;
        Ok(ListenerName(name.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ListenerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a listener name against `[A-Za-z0-9_-]{1,64}`.
pub fn validate_listener_name(name: &str) -> Result<(), ListenerNameError> {
    if name.is_empty() {
        return Err(ListenerNameError::Empty);
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(ListenerNameError::BadChar(c));
    }
    if name.len() > MAX_LISTENER_NAME_LEN {
        return Err(ListenerNameError::TooLong(name.len()));
    }
    Ok(())
}

/// What was wrong with one part of a policy, and where (structured, so that each
/// front-end can write the location its own way: a file's key path, a wire field). Its own
/// wording is the one the JSON model (store, cache) reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartError {
    #[error("spiffe_id {value:?}: {reason}")]
    SpiffeId {
        value: String,
        reason: SpiffeIdError,
    },
    #[error("spiffe_id {value:?} names a trust domain, not a workload (a path is required)")]
    NotWorkload { value: String },
    #[error("{direction}.{name:?}: {reason}")]
    ListenerName {
        direction: Direction,
        name: String,
        reason: ListenerNameError,
    },
    #[error("{direction}.{name:?}[{index}] {value:?}: {reason}")]
    Pattern {
        direction: Direction,
        name: String,
        index: usize,
        value: String,
        reason: crate::pattern::PatternError,
    },
    #[error("route[{index}].{field}: {reason}")]
    Route {
        index: usize,
        field: String,
        reason: String,
    },
}

impl PartError {
    /// The field the error is about, as a key path below `base` (a file's `workload[0]`,
    /// the wire's empty root): `spiffe_id`, `inbound.<name>`, `inbound.<name>[i]`,
    /// `<routes>[i].<field>`, where `routes` is the front-end's name of the route list.
    /// A key that is not bare is quoted (see [`join_key`]).
    pub fn field_path(&self, base: &str, routes: &str) -> String {
        let listener =
            |direction: Direction, name: &str| join_key(&join_key(base, direction.as_str()), name);
        match self {
            PartError::SpiffeId { .. } | PartError::NotWorkload { .. } => {
                join_key(base, "spiffe_id")
            }
            PartError::ListenerName {
                direction, name, ..
            } => listener(*direction, name),
            PartError::Pattern {
                direction,
                name,
                index,
                ..
            } => format!("{}[{index}]", listener(*direction, name)),
            PartError::Route { index, field, .. } => {
                format!("{}[{index}].{field}", join_key(base, routes))
            }
        }
    }

    /// What is wrong, without where: the text after `<field path>: ` in a front-end's
    /// message.
    pub fn detail(&self) -> String {
        match self {
            PartError::SpiffeId { value, reason } => format!("{value:?}: {reason}"),
            PartError::NotWorkload { value } => {
                format!("{value:?} names a trust domain, not a workload (a path is required)")
            }
            PartError::ListenerName { reason, .. } => reason.to_string(),
            PartError::Pattern { value, reason, .. } => format!("{value:?}: {reason}"),
            PartError::Route { reason, .. } => reason.clone(),
        }
    }
}

/// One step of a key path: `path.key`, or `path."key"` where the key is not bare
/// (A-Z, a-z, 0-9, `_`, `-`); the key alone under an empty path.
pub fn join_key(path: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (path.is_empty(), bare) {
        (true, true) => key.to_owned(),
        (true, false) => format!("{key:?}"),
        (false, true) => format!("{path}.{key}"),
        (false, false) => format!("{path}.{key:?}"),
    }
}

/// Why a serialized `WorkloadPolicy` (store, cache) was rejected: the parts' validation is
/// the same as every other front-end's.
pub type ModelError = PartError;

/// The listeners of one direction as they arrived: name -> pattern texts.
pub type RawListeners<'a> = Vec<(&'a str, Vec<&'a str>)>;

/// The one validation of a workload policy, whatever it arrived in (a policy file, the
/// control plane's wire message, the store, the sidecar's cache): the ID must name a
/// workload, every listener name must be a [`ListenerName`], every pattern must parse, and
/// every route must be valid ([`validate_route`]). Parts are checked in order (ID,
/// inbound, outbound, routes), so the first error is reported.
pub fn validate_parts(
    spiffe_id: &str,
    inbound: RawListeners<'_>,
    outbound: RawListeners<'_>,
    routes: &[RawRoute],
) -> Result<WorkloadPolicy, PartError> {
    let id = WorkloadId::parse(spiffe_id).map_err(|e| match e {
        WorkloadIdError::Invalid(reason) => PartError::SpiffeId {
            value: spiffe_id.to_owned(),
            reason,
        },
        WorkloadIdError::NoPath(_) => PartError::NotWorkload {
            value: spiffe_id.to_owned(),
        },
    })?;
    let mut policy = WorkloadPolicy::new(id.into_spiffe_id());
    for (direction, raw) in [
        (Direction::Inbound, inbound),
        (Direction::Outbound, outbound),
    ] {
        for (name, texts) in raw {
            ListenerName::parse(name).map_err(|reason| PartError::ListenerName {
                direction,
                name: name.to_owned(),
                reason,
            })?;
            let patterns = texts
                .iter()
                .enumerate()
                .map(|(index, text)| {
                    Pattern::parse(text).map_err(|reason| PartError::Pattern {
                        direction,
                        name: name.to_owned(),
                        index,
                        value: (*text).to_owned(),
                        reason,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let map = match direction {
                Direction::Inbound => &mut policy.inbound,
                Direction::Outbound => &mut policy.outbound,
            };
            map.insert(name.to_owned(), patterns);
        }
    }
    for (index, raw) in routes.iter().enumerate() {
        let route = validate_route(raw).map_err(|(field, reason)| PartError::Route {
            index,
            field,
            reason,
        })?;
        policy.routes.push(route);
    }
    Ok(policy)
}

/// The allowlist of one workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawWorkloadPolicy")]
pub struct WorkloadPolicy {
    #[serde(serialize_with = "serialize_id")]
    pub spiffe_id: SpiffeId,
    /// Listener name -> peers allowed to call this workload on it.
    pub inbound: BTreeMap<String, Vec<Pattern>>,
    /// Listener name -> servers this workload may reach through it.
    pub outbound: BTreeMap<String, Vec<Pattern>>,
    /// L7 rules of this workload's HTTP listeners, in order (first match wins).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// `enforce` (default) or `audit`: see [`Mode`].
    #[serde(default, skip_serializing_if = "Mode::is_enforce")]
    pub mode: Mode,
    /// Assigned by the control plane, monotonic; 0 for a policy not (yet) stored there.
    pub version: u64,
    /// The admin SPIFFE ID that wrote this version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at_unix_ms: Option<u64>,
}

fn serialize_id<S: Serializer>(id: &SpiffeId, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(id.as_str())
}

/// The wire shape, deserialized first so that validation happens in one place
/// (`TryFrom`) whatever format the bytes came in.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkloadPolicy {
    spiffe_id: String,
    #[serde(default)]
    inbound: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    outbound: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    version: u64,
    #[serde(default)]
    updated_by: Option<String>,
    #[serde(default)]
    updated_at_unix_ms: Option<u64>,
}

fn listeners(map: &BTreeMap<String, Vec<String>>) -> RawListeners<'_> {
    map.iter()
        .map(|(name, list)| (name.as_str(), list.iter().map(String::as_str).collect()))
        .collect()
}

impl TryFrom<RawWorkloadPolicy> for WorkloadPolicy {
    type Error = ModelError;

    fn try_from(raw: RawWorkloadPolicy) -> Result<Self, Self::Error> {
        let mut policy = validate_parts(
            &raw.spiffe_id,
            listeners(&raw.inbound),
            listeners(&raw.outbound),
            &raw.routes,
        )?;
        policy.mode = raw.mode;
        policy.version = raw.version;
        policy.updated_by = raw.updated_by;
        policy.updated_at_unix_ms = raw.updated_at_unix_ms;
        Ok(policy)
    }
}

impl WorkloadPolicy {
    /// A policy with no listeners: everything denied, but "known" to the control plane.
    pub fn new(spiffe_id: SpiffeId) -> Self {
        WorkloadPolicy {
            spiffe_id,
            inbound: BTreeMap::new(),
            outbound: BTreeMap::new(),
            routes: Vec::new(),
            mode: Mode::Enforce,
            version: 0,
            updated_by: None,
            updated_at_unix_ms: None,
        }
    }

    /// The listener map of one direction.
    pub fn rules(&self, direction: Direction) -> &BTreeMap<String, Vec<Pattern>> {
        match direction {
            Direction::Inbound => &self.inbound,
            Direction::Outbound => &self.outbound,
        }
    }

    /// This policy as a policy-file `[[workload]]` entry, with the control plane's
    /// metadata as comments, so the output of `policy get` can be edited and put back.
    pub fn to_toml(&self) -> String {
        crate::file::to_toml(std::slice::from_ref(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> WorkloadPolicy {
        let mut p = WorkloadPolicy::new(
            SpiffeId::parse("spiffe://example.org/ns/rag/sa/vectordb").expect("valid"),
        );
        p.inbound.insert(
            "http".into(),
            vec![
                Pattern::parse("spiffe://example.org/ns/rag/sa/retriever").expect("valid"),
                Pattern::parse("spiffe://example.org/ns/ops/**").expect("valid"),
            ],
        );
        p.outbound.insert("llm".into(), vec![]);
        p.version = 7;
        p.updated_by = Some("spiffe://example.org/warden/admin".into());
        p.updated_at_unix_ms = Some(1_700_000_000_000);
        p
    }

    #[test]
    fn direction_labels() {
        assert_eq!(Direction::Inbound.as_str(), "inbound");
        assert_eq!(Direction::Outbound.as_str(), "outbound");
        assert_eq!(Direction::Outbound.to_string(), "outbound");
    }

    #[test]
    fn listener_names() {
        for ok in ["http", "a", "LLM_2-b", &"x".repeat(64)] {
            assert_eq!(validate_listener_name(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_listener_name(""), Err(ListenerNameError::Empty));
        assert_eq!(
            validate_listener_name(&"x".repeat(65)),
            Err(ListenerNameError::TooLong(65))
        );
        assert_eq!(
            validate_listener_name("a.b"),
            Err(ListenerNameError::BadChar('.'))
        );
        assert_eq!(
            validate_listener_name("a b"),
            Err(ListenerNameError::BadChar(' '))
        );
        assert_eq!(
            validate_listener_name("é"),
            Err(ListenerNameError::BadChar('é'))
        );
    }

    #[test]
    fn json_round_trip() {
        let p = sample();
        let json = serde_json::to_string(&p).expect("serialize");
        assert_eq!(
            json,
            r#"{"spiffe_id":"spiffe://example.org/ns/rag/sa/vectordb","inbound":{"http":["spiffe://example.org/ns/rag/sa/retriever","spiffe://example.org/ns/ops/**"]},"outbound":{"llm":[]},"version":7,"updated_by":"spiffe://example.org/warden/admin","updated_at_unix_ms":1700000000000}"#
        );
        let back: WorkloadPolicy = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, p);
    }

    #[test]
    fn audit_mode_round_trips_and_enforce_is_the_default() {
        let mut p = sample();
        p.mode = Mode::Audit;
        let json = serde_json::to_string(&p).expect("serialize");
        assert!(json.contains(r#""mode":"audit""#), "{json}");
        let back: WorkloadPolicy = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, p);
        let err = serde_json::from_str::<WorkloadPolicy>(
            r#"{"spiffe_id":"spiffe://example.org/a","mode":"dry-run"}"#,
        )
        .expect_err("unknown mode");
        assert!(err.to_string().contains("unknown variant"), "{err}");
        assert_eq!(Mode::parse("audit"), Some(Mode::Audit));
        assert_eq!(Mode::parse("Audit"), None);
    }

    #[test]
    fn json_defaults_match_the_file_shape() {
        let p: WorkloadPolicy =
            serde_json::from_str(r#"{"spiffe_id":"spiffe://example.org/a"}"#).expect("valid");
        assert_eq!(
            p,
            WorkloadPolicy::new(SpiffeId::parse("spiffe://example.org/a").expect("valid"))
        );
        let json = serde_json::to_string(&p).expect("serialize");
        assert_eq!(
            json,
            r#"{"spiffe_id":"spiffe://example.org/a","inbound":{},"outbound":{},"version":0}"#
        );
    }

    #[test]
    fn json_rejects_what_the_file_rejects() {
        let cases = [
            (
                r#"{"spiffe_id":"spiffe://example.org/a","inbund":{}}"#,
                "unknown field `inbund`",
            ),
            (
                r#"{"spiffe_id":"spiffe://example.org"}"#,
                "names a trust domain, not a workload",
            ),
            (
                r#"{"spiffe_id":"spiffe://ex ample.org/a"}"#,
                "trust domain contains ' '",
            ),
            (
                r#"{"spiffe_id":"spiffe://example.org/a","inbound":{"a.b":[]}}"#,
                "inbound.\"a.b\": listener name contains '.'",
            ),
            (
                r#"{"spiffe_id":"spiffe://example.org/a","outbound":{"x":["spiffe://x/a*b"]}}"#,
                "'*' must be a whole path segment",
            ),
        ];
        for (json, want) in cases {
            let err = serde_json::from_str::<WorkloadPolicy>(json).expect_err(json);
            assert!(err.to_string().contains(want), "{json}: {err}");
        }
    }
}
