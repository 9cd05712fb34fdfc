//! Why a token was refused. The messages never contain the token, and attacker-chosen
//! strings in them (an `alg` or `kid` value) are cut short and made printable.

use thiserror::Error;

/// A refused token. [`JwtError::as_label`] is the metric `reason` label.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JwtError {
    /// Not three base64url parts of JSON objects, or a claim of the wrong type.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// Longer than the validator's `max_token_bytes`; refused before any decoding.
    #[error("the token is longer than {limit} bytes")]
    TooLarge { limit: usize },
    /// `alg` is `none`, HMAC, unknown, not on the allowlist, or not the key's algorithm.
    #[error("algorithm refused: {0}")]
    BadAlgorithm(String),
    /// A header parameter Warden does not understand is marked critical (`crit`).
    #[error("unsupported critical header parameter(s): {0}")]
    UnsupportedCritical(String),
    /// No key of the set has the token's `kid` (or the token has none and the set holds
    /// more than one key).
    #[error("no key with this kid")]
    UnknownKid,
    /// The key set is empty (not loaded yet, or the source has never answered).
    #[error("no keys are loaded for this issuer")]
    NoKeys,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    /// `nbf` (or `iat`) is later than now plus the leeway.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// The token has no `exp`; every token must expire.
    #[error("the token has no expiry (exp)")]
    NoExpiry,
    #[error("the issuer (iss) is not the configured one")]
    WrongIssuer,
    #[error("no audience (aud) of the token is accepted here")]
    WrongAudience,
    /// The token has no `aud` at all: refused, never taken as "for everyone".
    #[error("the token has no audience (aud)")]
    NoAudience,
    /// JWT-SVID: `sub` is missing or not a workload SPIFFE ID in its normal form.
    #[error("the subject is not a SPIFFE ID: {0}")]
    BadSubject(String),
    /// JWT-SVID: no JWT bundle for the trust domain of `sub`.
    #[error("no JWT bundle for trust domain {0}")]
    UnknownTrustDomain(String),
    /// The sidecar has no `[[jwt]]` issuer of that name.
    #[error("no JWT issuer named {0:?} is configured")]
    UnknownIssuer(String),
}

impl JwtError {
    /// The metric `reason` label; a fixed, small set.
    pub fn as_label(&self) -> &'static str {
        match self {
            JwtError::Malformed(_) => "malformed",
            JwtError::TooLarge { .. } => "too_large",
            JwtError::BadAlgorithm(_) => "bad_algorithm",
            JwtError::UnsupportedCritical(_) => "unsupported_crit",
            JwtError::UnknownKid => "unknown_kid",
            JwtError::NoKeys => "no_keys",
            JwtError::BadSignature => "bad_signature",
            JwtError::Expired => "expired",
            JwtError::NotYetValid => "not_yet_valid",
            JwtError::NoExpiry => "no_expiry",
            JwtError::WrongIssuer => "wrong_issuer",
            JwtError::WrongAudience => "wrong_audience",
            JwtError::NoAudience => "no_audience",
            JwtError::BadSubject(_) => "bad_subject",
            JwtError::UnknownTrustDomain(_) => "unknown_trust_domain",
            JwtError::UnknownIssuer(_) => "unknown_issuer",
        }
    }
}
