//! Workload identity for Warden: SPIFFE IDs, X509-SVID validation, trust bundles per trust
//! domain, the rustls verifiers and certificate resolver built on them, and the sources SVIDs
//! come from (Workload API, files, static).
//!
//! This crate decides whether a certificate *is* a valid SVID and whose it is. It never
//! decides whether that identity is *allowed* (that is `warden-policy`), and it never logs or
//! prints private key material: key bytes are zeroized and `Identity`'s `Debug` omits them.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod identity;
pub mod resolver;
pub mod source;
pub mod spiffe_id;
pub mod svid;
mod validated;
pub mod verifier;

pub use bundle::{Bundle, BundleError, BundleSet};
pub use identity::{Identity, IdentityError, IdentityStore};
pub use resolver::SvidResolver;
pub use source::{
    FilesSource, SourceEvent, SourceHandle, StaticSource, SvidSource, WorkloadApiSource,
};
pub use spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};
pub use svid::{SvidError, Usage};
pub use verifier::{HandshakeFailure, SvidClientVerifier, SvidServerVerifier, provider};
