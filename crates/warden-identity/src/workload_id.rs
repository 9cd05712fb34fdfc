//! A SPIFFE ID that names a workload (it has a path): what every policy, registration,
//! allowlist entry and SVID leaf is about. Every front-end (config files, policy files, the
//! control plane's wire messages, the store, the cache, certificates) checks "an ID with a
//! path" through [`WorkloadId::parse`] or [`WorkloadId::new`], so the rule and its wording
//! live here once.

use std::fmt;
use std::ops::Deref;

use crate::spiffe_id::{SpiffeId, SpiffeIdError};

/// A validated workload SPIFFE ID.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadId(SpiffeId);

/// Why text or an ID is not a workload ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadIdError {
    #[error(transparent)]
    Invalid(#[from] SpiffeIdError),
    #[error("{0} names a trust domain, not a workload: a workload SPIFFE ID needs a path")]
    NoPath(String),
}

impl WorkloadId {
    pub fn parse(text: &str) -> Result<Self, WorkloadIdError> {
        Self::new(SpiffeId::parse(text)?)
    }

    pub fn new(id: SpiffeId) -> Result<Self, WorkloadIdError> {
        if id.is_workload() {
            Ok(WorkloadId(id))
        } else {
            Err(WorkloadIdError::NoPath(id.to_string()))
        }
    }

    pub fn as_spiffe_id(&self) -> &SpiffeId {
        &self.0
    }

    pub fn into_spiffe_id(self) -> SpiffeId {
        self.0
    }
}

impl Deref for WorkloadId {
    type Target = SpiffeId;

    fn deref(&self) -> &SpiffeId {
        &self.0
    }
}

impl From<WorkloadId> for SpiffeId {
    fn from(id: WorkloadId) -> SpiffeId {
        id.0
    }
}

impl fmt::Display for WorkloadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for WorkloadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workload_id_has_a_path() {
        let id = WorkloadId::parse("spiffe://example.org/ns/a").expect("workload");
        assert_eq!(id.as_str(), "spiffe://example.org/ns/a");
        assert_eq!(id.trust_domain_name(), "example.org");
        assert!(matches!(
            WorkloadId::parse("spiffe://example.org"),
            Err(WorkloadIdError::NoPath(_))
        ));
        assert!(matches!(
            WorkloadId::parse("https://example.org/a"),
            Err(WorkloadIdError::Invalid(_))
        ));
    }
}
