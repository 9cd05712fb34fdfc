//! Conversions between the wire form of a policy (`warden.control.v1.WorkloadPolicy`) and the
//! model ([`WorkloadPolicy`]). Wire input is untrusted: every ID, pattern and
//! listener name is validated, and an error names the field.

use std::collections::{BTreeMap, HashMap};

use crate::{Direction, Pattern, WorkloadPolicy, validate_listener_name};
use thiserror::Error;
use warden_identity::{SpiffeId, WorkloadId};
use warden_proto::control::v1 as pb;

#[derive(Debug, Error)]
pub enum ConvertError {
    #[error("spiffe_id {value:?}: {reason}")]
    SpiffeId { value: String, reason: String },
    #[error("{direction}.{listener}: invalid listener name: {reason}")]
    Listener {
        direction: &'static str,
        listener: String,
        reason: String,
    },
    #[error("{direction}.{listener}[{index}] {value:?}: {reason}")]
    Pattern {
        direction: &'static str,
        listener: String,
        index: usize,
        value: String,
        reason: String,
    },
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

pub fn from_proto(p: &pb::WorkloadPolicy) -> Result<WorkloadPolicy, ConvertError> {
    let mut policy = WorkloadPolicy::new(workload_id(&p.spiffe_id)?);
    for (direction, wire, model) in [
        (Direction::Inbound, &p.inbound, &mut policy.inbound),
        (Direction::Outbound, &p.outbound, &mut policy.outbound),
    ] {
        for (listener, list) in wire {
            validate_listener_name(listener).map_err(|e| ConvertError::Listener {
                direction: direction.as_str(),
                listener: listener.clone(),
                reason: e.to_string(),
            })?;
            let patterns = list
                .patterns
                .iter()
                .enumerate()
                .map(|(index, value)| {
                    Pattern::parse(value).map_err(|e| ConvertError::Pattern {
                        direction: direction.as_str(),
                        listener: listener.clone(),
                        index,
                        value: value.clone(),
                        reason: e.to_string(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            model.insert(listener.clone(), patterns);
        }
    }
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
        assert!(err.to_string().starts_with("inbound.http[0]"), "{err}");
        wire.spiffe_id = "spiffe://example.org".into();
        assert!(matches!(
            from_proto(&wire),
            Err(ConvertError::SpiffeId { .. })
        ));
    }
}
