//! Token validation for one issuer. The order of the checks is part of the contract:
//!
//! 1. size (`max_token_bytes`), before any decoding, so a 1 MiB token costs one comparison;
//! 2. shape: three base64url parts (a JWE's five are refused), header a JSON object;
//! 3. `alg`: on the allowlist, which can never hold `none` or HMAC; then `crit` refused;
//! 4. payload a JSON object, registered claims of the right types, signature base64url;
//! 5. the key: by `kid` (for a JWT-SVID, in the bundle of the subject's trust domain), and it
//!    must be a key of `alg`'s type whose JWK, if it names an algorithm, names this one;
//! 6. the signature;
//! 7. the claims: `iss` (or, for a JWT-SVID, `sub` a SPIFFE ID), `aud` required and
//!    matched, `exp` required, `nbf` and `iat` when present, each with the leeway.
//!
//! The signature is checked before the claims, so a forged token is reported as
//! `bad_signature` whatever it claims, and the reason for a refusal of a genuine token
//! (expired, wrong audience) is one its issuer really wrote.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use warden_identity::SpiffeId;

use crate::JwtError;
use crate::alg::{Algorithm, printable};
use crate::claims::{Claims, Registered};
use crate::encoding::{b64_decode, json_object};
use crate::jwks::{Jwks, JwtBundles};

/// Whose tokens a validator accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Issuer {
    /// End-user tokens: `iss` must be exactly this string.
    Exact(String),
    /// JWT-SVIDs (SPIFFE JWT-SVID standard): no fixed `iss`; `sub` must be a workload SPIFFE
    /// ID, and its trust domain picks the key set.
    JwtSvid,
}

/// What one issuer's tokens must satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatorConfig {
    pub issuer: Issuer,
    /// The audiences accepted here; a token must name at least one. An empty list accepts
    /// no token.
    pub audiences: Vec<String>,
    /// The algorithms accepted. It cannot hold `none` or HMAC: [`Algorithm`] has no such
    /// variant.
    pub algorithms: Vec<Algorithm>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// Longer tokens are refused before they are decoded.
    pub max_token_bytes: usize,
}

impl ValidatorConfig {
    pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
    pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;

    /// End-user tokens of `issuer` for `audiences`, with the defaults: [`Algorithm::DEFAULT`],
    /// 30 s leeway, 8 KiB.
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>) -> Self {
        Self {
            issuer: Issuer::Exact(issuer.into()),
            audiences,
            algorithms: Algorithm::DEFAULT.to_vec(),
            leeway: Self::DEFAULT_LEEWAY,
            max_token_bytes: Self::DEFAULT_MAX_TOKEN_BYTES,
        }
    }

    /// JWT-SVIDs for `audiences`, with [`Algorithm::JWT_SVID`] and the same defaults.
    pub fn jwt_svid(audiences: Vec<String>) -> Self {
        Self {
            issuer: Issuer::JwtSvid,
            audiences,
            algorithms: Algorithm::JWT_SVID.to_vec(),
            leeway: Self::DEFAULT_LEEWAY,
            max_token_bytes: Self::DEFAULT_MAX_TOKEN_BYTES,
        }
    }
}

/// Validates tokens against one [`ValidatorConfig`]. Cheap to share; holds no keys (they
/// are passed per call, so key rotation never rebuilds a validator).
#[derive(Debug, Clone)]
pub struct Validator {
    cfg: ValidatorConfig,
}

/// Where the key comes from.
enum Keys<'a> {
    Set(&'a Jwks),
    Bundles(&'a JwtBundles),
}

impl Validator {
    pub fn new(cfg: ValidatorConfig) -> Self {
        Self { cfg }
    }

    pub fn config(&self) -> &ValidatorConfig {
        &self.cfg
    }

    /// Validates `token` with a key of `keys`, at `now`.
    pub fn validate(&self, token: &str, keys: &Jwks, now: SystemTime) -> Result<Claims, JwtError> {
        self.check(token, Keys::Set(keys), now)
    }

    /// Validates a JWT-SVID with the key of its own trust domain's bundle in `bundles`.
    /// The subject is read before the signature is checked (to pick the bundle), and is
    /// trusted only once it has been.
    pub fn validate_jwt_svid(
        &self,
        token: &str,
        bundles: &JwtBundles,
        now: SystemTime,
    ) -> Result<Claims, JwtError> {
        self.check(token, Keys::Bundles(bundles), now)
    }

    fn check(&self, token: &str, keys: Keys<'_>, now: SystemTime) -> Result<Claims, JwtError> {
        let cfg = &self.cfg;
        if token.len() > cfg.max_token_bytes {
            return Err(JwtError::TooLarge {
                limit: cfg.max_token_bytes,
            });
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            let n = token.split('.').count();
            return Err(JwtError::Malformed(if n == 5 {
                "5 parts: an encrypted token (JWE) is not accepted".into()
            } else {
                format!("{n} part(s); a signed JWT has 3")
            }));
        };
        let header = b64_decode(h)
            .ok_or_else(|| JwtError::Malformed("the header is not base64url".into()))?;
        let header =
            json_object(&header).map_err(|e| JwtError::Malformed(format!("header: {e}")))?;
        let alg = match header.get("alg") {
            Some(Value::String(name)) => {
                Algorithm::parse(name).map_err(|e| JwtError::BadAlgorithm(e.to_string()))?
            }
            Some(_) => return Err(JwtError::BadAlgorithm("alg is not a string".into())),
            None => return Err(JwtError::BadAlgorithm("no alg".into())),
        };
        if !cfg.algorithms.contains(&alg) {
            return Err(JwtError::BadAlgorithm(format!(
                "{alg} is not on this issuer's list"
            )));
        }
        // Warden implements no extension, so every critical parameter is one it does not
        // understand (RFC 7515 section 4.1.11: the token must then be refused).
        if let Some(crit) = header.get("crit") {
            let names: Vec<String> = match crit {
                Value::Array(items) => items
                    .iter()
                    .take(4)
                    .map(|v| printable(v.as_str().unwrap_or("?")))
                    .collect(),
                _ => vec!["(not a list)".into()],
            };
            return Err(JwtError::UnsupportedCritical(names.join(", ")));
        }
        if cfg.issuer == Issuer::JwtSvid {
            // JWT-SVID standard: `typ`, when set, is `JWT` or `JOSE`.
            match header.get("typ") {
                None => {}
                Some(Value::String(t)) if t == "JWT" || t == "JOSE" => {}
                Some(_) => {
                    return Err(JwtError::Malformed(
                        "typ of a JWT-SVID must be JWT or JOSE".into(),
                    ));
                }
            }
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(JwtError::Malformed("kid is not a string".into())),
        };
        let payload = b64_decode(p)
            .ok_or_else(|| JwtError::Malformed("the payload is not base64url".into()))?;
        let all =
            json_object(&payload).map_err(|e| JwtError::Malformed(format!("payload: {e}")))?;
        let signature = b64_decode(s)
            .ok_or_else(|| JwtError::Malformed("the signature is not base64url".into()))?;
        let reg = Registered::parse(&all)?;

        let set = match keys {
            Keys::Set(set) => set,
            Keys::Bundles(bundles) => {
                let id = spiffe_subject(reg.sub.as_deref())?;
                bundles
                    .get(id.trust_domain_name())
                    .ok_or_else(|| JwtError::UnknownTrustDomain(id.trust_domain_name().into()))?
            }
        };
        if set.is_empty() {
            return Err(JwtError::NoKeys);
        }
        let key = set.find(kid).ok_or(JwtError::UnknownKid)?;
        let verifier = key.verifier(alg).ok_or_else(|| {
            JwtError::BadAlgorithm(format!(
                "{alg} is not an algorithm of the key this kid names"
            ))
        })?;
        // The signing input is the first two parts exactly as received.
        let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
        verifier
            .verify_sig(signed, &signature)
            .map_err(|_| JwtError::BadSignature)?;

        match &cfg.issuer {
            Issuer::Exact(iss) => {
                if reg.iss.as_deref() != Some(iss.as_str()) {
                    return Err(JwtError::WrongIssuer);
                }
            }
            Issuer::JwtSvid => {
                spiffe_subject(reg.sub.as_deref())?;
            }
        }
        let aud = reg.aud.ok_or(JwtError::NoAudience)?;
        if !aud.iter().any(|a| cfg.audiences.contains(a)) {
            return Err(JwtError::WrongAudience);
        }
        let exp = reg.exp.ok_or(JwtError::NoExpiry)?;
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let leeway = cfg.leeway.as_secs();
        // RFC 7519 4.1.4: valid only *before* exp.
        if now >= exp.saturating_add(leeway) {
            return Err(JwtError::Expired);
        }
        let latest_start = now.saturating_add(leeway);
        if reg.nbf.is_some_and(|nbf| nbf > latest_start)
            || reg.iat.is_some_and(|iat| iat > latest_start)
        {
            return Err(JwtError::NotYetValid);
        }
        Ok(Claims {
            sub: reg.sub,
            iss: reg.iss.unwrap_or_default(),
            aud,
            exp,
            all,
        })
    }
}

/// The subject of a JWT-SVID: a workload SPIFFE ID, written in its normal form (so the
/// `sub` string a policy sees is the ID Warden checked).
fn spiffe_subject(sub: Option<&str>) -> Result<SpiffeId, JwtError> {
    let sub = sub.ok_or_else(|| JwtError::BadSubject("no sub".into()))?;
    let id = SpiffeId::parse(sub).map_err(|e| JwtError::BadSubject(e.to_string()))?;
    if !id.is_workload() {
        return Err(JwtError::BadSubject(
            "a trust domain ID, not a workload's".into(),
        ));
    }
    if id.as_str() != sub {
        return Err(JwtError::BadSubject(
            "not in normal form (lowercase scheme and trust domain)".into(),
        ));
    }
    Ok(id)
}
