//! Workload identity for Warden: SPIFFE IDs, X509-SVID validation, trust bundles per trust
//! domain, the rustls verifiers, certificate resolver and TLS configurations built on them,
//! the sources SVIDs come from (Workload API, files, static), and per-peer shares of
//! whatever peers hold (counted by SPIFFE ID).
//!
//! This crate decides whether a certificate *is* a valid SVID and whose it is. It never
//! decides whether that identity is *allowed* (that is `warden-policy`), and it never logs or
//! prints private key material: key bytes are zeroized and `Identity`'s `Debug` omits them.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod identity;
pub mod peer_share;
pub mod resolver;
pub mod source;
pub mod spiffe_id;
pub mod svid;
pub mod tls;
mod validated;
pub mod verifier;
pub mod workload_id;

pub use bundle::{Bundle, BundleError, BundleSet};
pub use identity::{Identity, IdentityError, IdentityStore};
pub use peer_share::{PeerCounts, PeerSlot};
pub use resolver::SvidResolver;
pub use source::{
    FilesSource, IdentityConfig, SourceEvent, SourceHandle, StaticSource, SvidSource,
    WorkloadApiSource, source_for,
};
pub use spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};
pub use svid::{SvidError, Usage};
pub use verifier::{HandshakeFailure, SvidClientVerifier, SvidServerVerifier, provider};
pub use workload_id::{WorkloadId, WorkloadIdError};
