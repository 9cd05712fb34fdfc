//! JWS signature algorithms (RFC 7518 section 3, RFC 8037 for EdDSA): only asymmetric ones.
//!
//! `none` and the HMAC family (`HS256`, `HS384`, `HS512`) have no variant here at all, so no
//! configuration, key or token can select them. That closes the classic confusion attack: a
//! token "signed" with HMAC using the bytes of a *public* key (which anyone can fetch) as the
//! secret is refused as a bad algorithm before any key is looked at.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::signature::{self, RsaParameters};
use thiserror::Error;

/// An asymmetric JWS algorithm Warden can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    Rs384,
    Rs512,
    /// RSASSA-PSS with SHA-256 and MGF1 with SHA-256.
    Ps256,
    Ps384,
    Ps512,
    /// ECDSA P-256 with SHA-256 (signature as the fixed-width `r || s`).
    Es256,
    /// ECDSA P-384 with SHA-384.
    Es384,
    /// ECDSA P-521 with SHA-512.
    Es512,
    /// Ed25519 (RFC 8037; `Ed448` is not supported).
    EdDsa,
}

/// The kind of key an algorithm needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyFamily {
    Rsa,
    P256,
    P384,
    P521,
    Ed25519,
}

/// Why an algorithm name is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AlgorithmError {
    #[error(
        "{0:?} is never accepted: `none` is unsigned, and HMAC (HS*) would take a public key as its secret"
    )]
    NeverAccepted(String),
    #[error(
        "{0:?} is not a supported algorithm (RS256/384/512, PS256/384/512, ES256/384/512, EdDSA)"
    )]
    Unknown(String),
}

impl Algorithm {
    /// Every supported algorithm.
    pub const ALL: &'static [Algorithm] = &[
        Algorithm::Rs256,
        Algorithm::Rs384,
        Algorithm::Rs512,
        Algorithm::Ps256,
        Algorithm::Ps384,
        Algorithm::Ps512,
        Algorithm::Es256,
        Algorithm::Es384,
        Algorithm::Es512,
        Algorithm::EdDsa,
    ];

    /// The allowlist of an end-user issuer unless configured otherwise: what identity
    /// providers use (ES512 is left out: P-521 is rare and easy to add when needed).
    pub const DEFAULT: &'static [Algorithm] = &[
        Algorithm::Rs256,
        Algorithm::Rs384,
        Algorithm::Rs512,
        Algorithm::Ps256,
        Algorithm::Ps384,
        Algorithm::Ps512,
        Algorithm::Es256,
        Algorithm::Es384,
        Algorithm::EdDsa,
    ];

    /// The allowlist for JWT-SVIDs: exactly the algorithms the JWT-SVID standard lists
    /// (RS*, ES256/384/512, PS*; no EdDSA).
    pub const JWT_SVID: &'static [Algorithm] = &[
        Algorithm::Rs256,
        Algorithm::Rs384,
        Algorithm::Rs512,
        Algorithm::Ps256,
        Algorithm::Ps384,
        Algorithm::Ps512,
        Algorithm::Es256,
        Algorithm::Es384,
        Algorithm::Es512,
    ];

    /// The JOSE name, e.g. `RS256`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Rs256 => "RS256",
            Algorithm::Rs384 => "RS384",
            Algorithm::Rs512 => "RS512",
            Algorithm::Ps256 => "PS256",
            Algorithm::Ps384 => "PS384",
            Algorithm::Ps512 => "PS512",
            Algorithm::Es256 => "ES256",
            Algorithm::Es384 => "ES384",
            Algorithm::Es512 => "ES512",
            Algorithm::EdDsa => "EdDSA",
        }
    }

    /// Parses a JOSE name, case-sensitively (RFC 7515: `alg` values are case-sensitive).
    pub fn parse(name: &str) -> Result<Self, AlgorithmError> {
        if let Some(alg) = Self::ALL.iter().find(|a| a.name() == name) {
            return Ok(*alg);
        }
        if is_never_accepted(name) {
            return Err(AlgorithmError::NeverAccepted(printable(name)));
        }
        Err(AlgorithmError::Unknown(printable(name)))
    }

    pub(crate) fn family(self) -> KeyFamily {
        match self {
            Algorithm::Rs256
            | Algorithm::Rs384
            | Algorithm::Rs512
            | Algorithm::Ps256
            | Algorithm::Ps384
            | Algorithm::Ps512 => KeyFamily::Rsa,
            Algorithm::Es256 => KeyFamily::P256,
            Algorithm::Es384 => KeyFamily::P384,
            Algorithm::Es512 => KeyFamily::P521,
            Algorithm::EdDsa => KeyFamily::Ed25519,
        }
    }

    /// RSA parameters, with 2048 bits as the smallest modulus accepted.
    pub(crate) fn rsa_parameters(self) -> Option<&'static RsaParameters> {
        Some(match self {
            Algorithm::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Algorithm::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Algorithm::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Algorithm::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
            Algorithm::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
            Algorithm::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
            _ => return None,
        })
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = AlgorithmError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// `none` in any case, and every HMAC name (`HS256`, `hs512`, ...).
fn is_never_accepted(name: &str) -> bool {
    name.eq_ignore_ascii_case("none") || name.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("HS"))
}

/// A short, printable copy of an attacker-chosen string, safe for an error message or log.
pub(crate) fn printable(s: &str) -> String {
    const MAX: usize = 24;
    let mut out: String = s
        .chars()
        .take(MAX)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    if s.chars().count() > MAX {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_none_or_hmac_never_parse() {
        for alg in Algorithm::ALL {
            assert_eq!(Algorithm::parse(alg.name()), Ok(*alg));
        }
        for never in ["none", "None", "NONE", "HS256", "HS384", "HS512", "hs256"] {
            assert!(
                matches!(
                    Algorithm::parse(never),
                    Err(AlgorithmError::NeverAccepted(_))
                ),
                "{never}"
            );
        }
        for unknown in ["rs256", "ES256K", "Ed25519", "", "RSA-OAEP"] {
            assert!(
                matches!(Algorithm::parse(unknown), Err(AlgorithmError::Unknown(_))),
                "{unknown}"
            );
        }
        assert!(!Algorithm::DEFAULT.contains(&Algorithm::Es512));
        assert!(!Algorithm::JWT_SVID.contains(&Algorithm::EdDsa));
    }

    #[test]
    fn printable_cuts_and_masks() {
        assert_eq!(printable("RS256"), "RS256");
        assert_eq!(printable("a\u{0}b\nc"), "a?b?c");
        let long = "x".repeat(1000);
        assert_eq!(printable(&long).len(), 27);
    }
}
