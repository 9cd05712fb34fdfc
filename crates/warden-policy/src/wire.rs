//! Conversions between the wire form of a policy (`warden.control.v1.WorkloadPolicy`) and the
//! model ([`WorkloadPolicy`]). Wire input is untrusted: every ID, pattern and
//! listener name is validated, and an error names the field.

use std::collections::{BTreeMap, HashMap};

use crate::model::{PartError, RawListeners, validate_parts};
use crate::{Pattern, WorkloadPolicy};
use thiserror::Error;
use warden_identity::{SpiffeId, WorkloadId, WorkloadIdError};
use warden_proto::control::v1 as pb;

#[derive(Debug, Error)]
pub enum ConvertError {
    #[error("spiffe_id {value:?}: {reason}")]
    SpiffeId { value: String, reason: String },
    /// A listener name, pattern or route failed the validation every front-end shares;
    /// `path` is the wire field (`inbound.http[0]`, `routes[1].peers`).
    #[error("{path}: {}", .error.detail())]
    Part { path: String, error: PartError },
    #[error("mode {0:?}: expected \"enforce\" or \"audit\"")]
    Mode(String),
}

fn raw_route(r: &pb::Route) -> crate::RawRoute {
    crate::RawRoute {
        listener: r.listener.clone(),
        path_prefix: r.path_prefix.clone(),
        methods: r.methods.clone(),
        peers: r.peers.clone(),
        users: r.users.as_ref().map(|u| crate::UserRequirement {
            jwt: u.jwt.clone(),
            claims: u
                .claims
                .iter()
                .map(|(k, v)| (k.clone(), v.values.clone()))
                .collect(),
        }),
    }
}

fn route_to_proto(r: &crate::Route) -> pb::Route {
    pb::Route {
        listener: r.listener.clone(),
        path_prefix: r.path_prefix.clone(),
        methods: r.methods.clone(),
        peers: r.peers.iter().map(|p| p.as_str().to_owned()).collect(),
        users: r.users.as_ref().map(|u| pb::UserRequirement {
            jwt: u.jwt.clone(),
            claims: u
                .claims
                .iter()
                .map(|(k, v)| (k.clone(), pb::StringList { values: v.clone() }))
                .collect(),
        }),
    }
}

pub fn to_proto(p: &WorkloadPolicy) -> pb::WorkloadPolicy {
    let map = |m: &BTreeMap<String, Vec<Pattern>>| -> HashMap<String, pb::PatternList> {
        m.iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    pb::PatternList {
                        patterns: v.iter().map(|p| p.as_str().to_owned()).collect(),
                    },
                )
            })
            .collect()
    };
    pb::WorkloadPolicy {
        spiffe_id: p.spiffe_id.to_string(),
        inbound: map(&p.inbound),
        outbound: map(&p.outbound),
        routes: p.routes.iter().map(route_to_proto).collect(),
        // Enforce is written as the empty default, so that older readers see what they know.
        mode: if p.mode.is_enforce() {
            String::new()
        } else {
            p.mode.as_str().to_owned()
        },
        version: p.version,
        updated_by: p.updated_by.clone().unwrap_or_default(),
        updated_at_unix_ms: p.updated_at_unix_ms.unwrap_or(0),
    }
}

pub fn workload_id(value: &str) -> Result<SpiffeId, ConvertError> {
    WorkloadId::parse(value)
        .map(WorkloadId::into_spiffe_id)
        .map_err(|e| ConvertError::SpiffeId {
            value: value.to_owned(),
            reason: e.to_string(),
        })
}

/// A wire listener map, sorted by name so that of several bad listeners the same one is
/// always reported.
fn listeners(map: &HashMap<String, pb::PatternList>) -> RawListeners<'_> {
    let mut raw: RawListeners<'_> = map
        .iter()
        .map(|(name, list)| {
            (
                name.as_str(),
                list.patterns.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    raw.sort_by_key(|(name, _)| *name);
    raw
}

pub fn from_proto(p: &pb::WorkloadPolicy) -> Result<WorkloadPolicy, ConvertError> {
    // The same validation as a policy file and the store; only the error's form is ours.
    let routes: Vec<crate::RawRoute> = p.routes.iter().map(raw_route).collect();
    let mut policy = validate_parts(
        &p.spiffe_id,
        listeners(&p.inbound),
        listeners(&p.outbound),
        &routes,
    )
    .map_err(|error| match error {
        PartError::SpiffeId { value, reason } => ConvertError::SpiffeId {
            value,
            reason: reason.to_string(),
        },
        PartError::NotWorkload { value } => ConvertError::SpiffeId {
            reason: WorkloadIdError::NoPath(value.clone()).to_string(),
            value,
        },
        error => ConvertError::Part {
            path: error.field_path("", "routes"),
            error,
        },
    })?;
    policy.mode = match p.mode.as_str() {
        "" => crate::Mode::Enforce,
        text => crate::Mode::parse(text).ok_or_else(|| ConvertError::Mode(text.to_owned()))?,
    };
    policy.version = p.version;
    policy.updated_by = (!p.updated_by.is_empty()).then(|| p.updated_by.clone());
    policy.updated_at_unix_ms = (p.updated_at_unix_ms != 0).then_some(p.updated_at_unix_ms);
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_bad_patterns_by_field() {
        let text = r#"
[[workload]]
spiffe_id = "spiffe://example.org/ns/rag/sa/vectordb"
inbound.http = ["spiffe://example.org/ns/rag/sa/retriever", "spiffe://example.org/ns/*/sa/x"]
outbound.llm = ["spiffe://example.org/ns/rag/**"]
"#;
        let model = crate::parse_policy_file(text).expect("file").remove(0);
        let back = from_proto(&to_proto(&model)).expect("round trip");
        assert_eq!(back, model);

        let mut wire = to_proto(&model);
        wire.inbound.insert(
            "http".into(),
            pb::PatternList {
                patterns: vec!["spiffe://example.org/a*".into()],
            },
        );
        let err = from_proto(&wire).expect_err("bad pattern");
        assert!(err.to_string().starts_with("inbound.http[0]: "), "{err}");
        // The same key path as a policy file's, below the wire's root; a name that is not
        // bare is quoted.
        wire.inbound.clear();
        wire.outbound
            .insert("bad name".into(), pb::PatternList::default());
        let err = from_proto(&wire)
            .expect_err("bad listener name")
            .to_string();
        assert!(
            err.starts_with("outbound.\"bad name\": listener name contains ' '"),
            "{err}"
        );
        wire.outbound.remove("bad name");
        wire.mode = "audit".into();
        wire.inbound.clear();
        assert_eq!(from_proto(&wire).expect("audit").mode, crate::Mode::Audit);
        let mut audited = model.clone();
        audited.mode = crate::Mode::Audit;
        assert_eq!(from_proto(&to_proto(&audited)).expect("rt"), audited);
        wire.mode = "permissive".into();
        assert!(matches!(from_proto(&wire), Err(ConvertError::Mode(m)) if m == "permissive"));
        wire.mode = String::new();
        wire.spiffe_id = "spiffe://example.org".into();
        assert!(matches!(
            from_proto(&wire),
            Err(ConvertError::SpiffeId { .. })
        ));
    }
}
