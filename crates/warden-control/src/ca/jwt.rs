//! The built-in CA's JWT authority: one ES256 key per trust domain in `data_dir/jwt/jwt.key`
//! (directory 0700, key 0600, PKCS#8 PEM), which signs JWT-SVIDs for the Workload API and
//! whose public key is the trust domain's JWT bundle. Its `kid` is the key's RFC 7638
//! thumbprint, so it needs nothing stored beside the key.
//!
//! Like the root, the key is created once (written to a temporary file and linked into
//! place, so two processes starting together end up with the same key) and a damaged key is
//! a start-up error, never a reason to mint a new one: JWT-SVIDs issued before a restart
//! must still validate. Rotating it is out of scope, as for the root.
//!
//! It must never sign a JWT-SVID for an ID outside its trust domain, without an audience,
//! or without an expiry, and never log the key or a token.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::KeyPair;
use serde_json::{Map, Value, json};
use thiserror::Error;
use warden_identity::{SpiffeId, TrustDomain};
use warden_jwt::mint::Es256Signer;
use warden_jwt::{Claims, Jwks, JwtBundles, JwtError, Validator, ValidatorConfig};
use zeroize::Zeroizing;

use super::files::{sync_dir, write_temp};

/// Subdirectory of `data_dir` holding `jwt.key`.
pub const JWT_DIR: &str = "jwt";

#[derive(Debug, Error)]
pub enum JwtKeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: the JWT signing key is unusable ({reason}); restore it from a backup, or move \
         it aside to create a new one (JWT-SVIDs signed with the old key then stop validating)"
    )]
    Damaged { path: PathBuf, reason: String },
    #[error(
        "{id} is not a workload ID of trust domain {trust_domain}; no JWT-SVID is signed for it"
    )]
    ForeignId { id: String, trust_domain: String },
    #[error("a JWT-SVID needs at least one audience")]
    NoAudience,
    #[error("a JWT-SVID lifetime must be at least one second")]
    TtlTooShort,
    #[error("could not create or use the JWT signing key: {0}")]
    Sign(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> JwtKeyError + '_ {
    move |source| JwtKeyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The JWT signing key of one trust domain. `Debug` shows the `kid` only.
pub struct JwtAuthority {
    trust_domain: TrustDomain,
    signer: Es256Signer,
    /// The trust domain's JWT bundle (JWKS), as `FetchJWTBundles` serves it.
    bundle_json: Vec<u8>,
    /// The same bundle, parsed, for `ValidateJWTSVID`.
    bundles: JwtBundles,
}

impl std::fmt::Debug for JwtAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("kid", &self.signer.kid())
            .finish_non_exhaustive()
    }
}

/// A minted JWT-SVID.
pub struct JwtSvid {
    pub spiffe_id: SpiffeId,
    pub token: String,
    pub expires: SystemTime,
}

impl std::fmt::Debug for JwtSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl JwtAuthority {
    /// Loads `data_dir/jwt/jwt.key`, creating it on first start.
    pub fn load_or_create(
        data_dir: &Path,
        trust_domain: &TrustDomain,
    ) -> Result<Self, JwtKeyError> {
        let dir = data_dir.join(JWT_DIR);
        let path = dir.join("jwt.key");
        if !path.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io_err(&dir))?;
            create_key(&path)?;
        }
        let pem = Zeroizing::new(std::fs::read_to_string(&path).map_err(io_err(&path))?);
        if let Ok(meta) = std::fs::metadata(&path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %path.display(), "JWT signing key is readable by other users; it should be 0600");
        }
        let corrupt = |reason: String| JwtKeyError::Damaged {
            path: path.clone(),
            reason,
        };
        let key =
            KeyPair::from_pem(&pem).map_err(|e| corrupt(format!("not a PEM private key: {e}")))?;
        let der = Zeroizing::new(key.serialize_der());
        let signer = Es256Signer::from_pkcs8(&der)
            .map_err(|e| corrupt(format!("not an ES256 (P-256) key: {e}")))?;
        let authority = Self::new(trust_domain, signer)?;
        tracing::info!(trust_domain = %trust_domain, kid = authority.kid(), path = %path.display(), "JWT signing key loaded");
        Ok(authority)
    }

    fn new(trust_domain: &TrustDomain, signer: Es256Signer) -> Result<Self, JwtKeyError> {
        let mut jwk = signer.public_jwk();
        // The SPIFFE bundle format marks JWT authorities with this `use`.
        jwk["use"] = json!("jwt-svid");
        let bundle_json = json!({ "keys": [jwk] }).to_string().into_bytes();
        let keys = Jwks::from_spiffe_bundle(&bundle_json)
            .map_err(|e| JwtKeyError::Sign(format!("own JWT bundle: {e}")))?;
        let mut bundles = JwtBundles::new();
        bundles.insert(trust_domain.clone(), keys);
        Ok(Self {
            trust_domain: trust_domain.clone(),
            signer,
            bundle_json,
            bundles,
        })
    }

    pub fn kid(&self) -> &str {
        self.signer.kid()
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The trust domain's JWT bundle: a JWKS holding the public key.
    pub fn bundle_json(&self) -> &[u8] {
        &self.bundle_json
    }

    /// Signs a JWT-SVID for `id`: `sub` the ID, `aud` the audiences (at least one), `exp`
    /// `ttl` from now, `iat` now. No `iss`: a JWT-SVID has none fixed.
    pub fn mint(
        &self,
        id: &SpiffeId,
        audience: &[String],
        ttl: Duration,
    ) -> Result<JwtSvid, JwtKeyError> {
        crate::metrics::METRICS.svid_issued(crate::audit::SvidKind::Jwt);
        if id.trust_domain_name() != self.trust_domain.as_str() || !id.is_workload() {
            return Err(JwtKeyError::ForeignId {
                id: id.to_string(),
                trust_domain: self.trust_domain.to_string(),
            });
        }
        if audience.is_empty() {
            return Err(JwtKeyError::NoAudience);
        }
        if ttl < Duration::from_secs(1) {
            return Err(JwtKeyError::TtlTooShort);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let exp = now + ttl.as_secs();
        let mut claims = Map::new();
        claims.insert("sub".into(), json!(id.as_str()));
        claims.insert(
            "aud".into(),
            Value::Array(audience.iter().map(|a| json!(a)).collect()),
        );
        claims.insert("exp".into(), json!(exp));
        claims.insert("iat".into(), json!(now));
        let token = self
            .signer
            .sign(&claims)
            .map_err(|e| JwtKeyError::Sign(e.to_string()))?;
        Ok(JwtSvid {
            spiffe_id: id.clone(),
            token,
            expires: UNIX_EPOCH + Duration::from_secs(exp),
        })
    }

    /// Validates a JWT-SVID of this trust domain for `audience` (the Workload API's
    /// `ValidateJWTSVID`), by the same rules as a sidecar's `spiffe = true` issuer.
    pub fn validate(
        &self,
        token: &str,
        audience: &str,
        now: SystemTime,
    ) -> Result<Claims, JwtError> {
        Validator::new(ValidatorConfig::jwt_svid(vec![audience.to_owned()])).validate_jwt_svid(
            token,
            &self.bundles,
            now,
        )
    }
}

/// Writes a new key to `path` unless one appeared meanwhile: a complete temporary file
/// (0600, synced) is hard-linked into place, which fails if another process got there first;
/// then theirs is used.
fn create_key(path: &Path) -> Result<(), JwtKeyError> {
    let key = KeyPair::generate().map_err(|e| JwtKeyError::Sign(e.to_string()))?;
    let pem = Zeroizing::new(key.serialize_pem());
    let tmp = write_temp(path, pem.as_bytes()).map_err(|(at, e)| io_err(&at)(e))?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                sync_dir(dir);
            }
            tracing::info!(path = %path.display(), "JWT signing key created");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{id, mode, td};
    use super::*;

    #[test]
    fn the_key_is_created_once_private_and_kept_across_restarts() {
        let dir = tempfile::tempdir().expect("tmp");
        let first = JwtAuthority::load_or_create(dir.path(), &td()).expect("create");
        let key = dir.path().join("jwt/jwt.key");
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&dir.path().join("jwt")), 0o700);
        let svid = first
            .mint(&id("/ns/a"), &["x".into()], Duration::from_secs(60))
            .expect("mint");
        let again = JwtAuthority::load_or_create(dir.path(), &td()).expect("reload");
        assert_eq!(again.kid(), first.kid());
        let claims = again
            .validate(&svid.token, "x", SystemTime::now())
            .expect("a JWT-SVID from before the restart validates");
        assert_eq!(claims.sub.as_deref(), Some("spiffe://example.org/ns/a"));
        assert!(!format!("{first:?}{svid:?}").contains(&svid.token));
    }

    #[test]
    fn a_damaged_key_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().expect("tmp");
        JwtAuthority::load_or_create(dir.path(), &td()).expect("create");
        let key = dir.path().join("jwt/jwt.key");
        std::fs::write(&key, "garbage").expect("write");
        let e = JwtAuthority::load_or_create(dir.path(), &td()).expect_err("damaged");
        assert!(matches!(e, JwtKeyError::Damaged { .. }), "{e}");
        assert_eq!(std::fs::read_to_string(&key).expect("read"), "garbage");
    }

    #[test]
    fn minting_follows_the_jwt_svid_rules() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = JwtAuthority::load_or_create(dir.path(), &td()).expect("create");
        let ttl = Duration::from_secs(300);
        let other = SpiffeId::parse("spiffe://other.org/a").expect("id");
        assert!(matches!(
            ca.mint(&other, &["x".into()], ttl),
            Err(JwtKeyError::ForeignId { .. })
        ));
        let root = SpiffeId::parse("spiffe://example.org").expect("id");
        assert!(matches!(
            ca.mint(&root, &["x".into()], ttl),
            Err(JwtKeyError::ForeignId { .. })
        ));
        assert!(matches!(
            ca.mint(&id("/a"), &[], ttl),
            Err(JwtKeyError::NoAudience)
        ));
        let svid = ca
            .mint(&id("/a"), &["x".into(), "y".into()], ttl)
            .expect("mint");
        let now = SystemTime::now();
        assert!(svid.expires > now && svid.expires <= now + ttl);
        assert!(ca.validate(&svid.token, "y", now).is_ok());
        assert_eq!(
            ca.validate(&svid.token, "z", now),
            Err(JwtError::WrongAudience)
        );
        assert_eq!(
            ca.validate(&svid.token, "x", now + ttl + Duration::from_secs(60)),
            Err(JwtError::Expired)
        );
        let bundle = Jwks::from_spiffe_bundle(ca.bundle_json()).expect("bundle");
        assert_eq!(bundle.kids().collect::<Vec<_>>(), [Some(ca.kid())]);
    }
}
