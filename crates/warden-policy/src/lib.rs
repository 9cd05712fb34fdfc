//! Warden's allowlist: the policy model, peer patterns, the policy file format, and the
//! compiled snapshot whose [`PolicySnapshot::decide`] answers "may this peer use this
//! listener?" with the rule or the reason.
//!
//! This crate owns *whether an already-validated identity is allowed*, and the policy's
//! forms: the file (`file`), the wire message of the control plane (`wire`), the model. It
//! never validates certificates (that is `warden-identity`), and it is pure: no I/O, no
//! async, no clock.
//!
//! It must never allow on error or absence. No policy, an unknown listener, an empty
//! allowlist, a pattern or file that does not parse: each of these is a deny (or a
//! rejected input that leaves the previous, equally default-deny, state in place). The only
//! way to an `allowed: true` decision is a rule that matches the peer. An empty list never
//! widens access, and the pattern language has no form that matches "anything".
#![forbid(unsafe_code)]

pub mod file;
pub mod model;
pub mod pattern;
pub mod route;
pub mod snapshot;
pub mod suggest;
pub mod wire;

pub use file::{Format, PolicyFileError, parse_policy_file, parse_policy_file_as, to_toml};
pub use model::{
    Direction, ListenerName, ListenerNameError, MAX_LISTENER_NAME_LEN, Mode, ModelError, PartError,
    RawListeners, WorkloadPolicy, validate_listener_name, validate_parts,
};
pub use pattern::{Pattern, PatternError};
pub use route::{
    PathError, RawRoute, RequestDecision, RequestReason, Route, UserCheck, UserRequirement,
    normalize_path,
};
pub use snapshot::{Decision, PolicySnapshot, PolicySource, Reason};
pub use warden_identity::{SpiffeId, SpiffeIdError, WorkloadId, WorkloadIdError};
