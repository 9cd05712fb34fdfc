//! JWT validation for Warden: end-user tokens of configured identity providers and SPIFFE
//! JWT-SVIDs, checked against JSON Web Key Sets (RFC 7515, 7517, 7518, 7519, 8037, 8725).
//! It owns the JWKS parser ([`Jwks`], [`JwtBundles`]), the per-issuer [`Validator`] with its
//! algorithm allowlist, the typed [`Claims`] a policy matches on, and ES256 minting
//! ([`mint`]) for the built-in CA's JWT-SVIDs and for tests.
//!
//! It is pure: no I/O, no clock (the caller passes `now`), no async, no logging. It must
//! never accept `none` or an HMAC algorithm (there is no variant for them), never accept a
//! token without `aud` or `exp`, never pick a key a token did not name (except the only key
//! of a one-key set), and never put a token or key material in an error message.
#![forbid(unsafe_code)]

mod alg;
mod claims;
mod encoding;
mod error;
mod jwks;
pub mod mint;
mod validator;

pub use alg::{Algorithm, AlgorithmError};
pub use claims::Claims;
pub use error::JwtError;
pub use jwks::{Jwks, JwksError, JwtBundles, MAX_JWKS_BYTES, MAX_KEYS};
pub use validator::{Issuer, Validator, ValidatorConfig};

#[cfg(test)]
mod tests;
