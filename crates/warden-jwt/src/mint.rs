//! Minting ES256 tokens: what the control plane's built-in CA needs for JWT-SVIDs, and what
//! tests use to make real tokens. Only ES256 (P-256, the CA's own curve); validation accepts
//! more.
//!
//! The key's `kid` is its RFC 7638 thumbprint, so the same key always has the same `kid`
//! and a new key a new one, with nothing to store beside the key.

use std::fmt;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Map, Value, json};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::encoding::b64_encode;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MintError {
    #[error("not an unencrypted PKCS#8 ECDSA P-256 private key")]
    BadKey,
    #[error("the signing library failed")]
    Crypto,
}

/// An ES256 signing key. `Debug` shows only the `kid`.
pub struct Es256Signer {
    key: EcdsaKeyPair,
    kid: String,
    x: String,
    y: String,
}

impl fmt::Debug for Es256Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Es256Signer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Es256Signer {
    /// A new P-256 private key as PKCS#8 DER (wiped from memory on drop).
    pub fn generate_pkcs8() -> Result<Zeroizing<Vec<u8>>, MintError> {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| MintError::Crypto)?;
        Ok(Zeroizing::new(doc.as_ref().to_vec()))
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<Self, MintError> {
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|_| MintError::BadKey)?;
        // Uncompressed point: 0x04 || x (32 bytes) || y (32 bytes).
        let point = key.public_key().as_ref();
        if point.len() != 65 || point[0] != 0x04 {
            return Err(MintError::BadKey);
        }
        let x = b64_encode(&point[1..33]);
        let y = b64_encode(&point[33..]);
        // RFC 7638: SHA-256 over the required members in lexicographic order, no spaces.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
        let kid = b64_encode(digest.as_ref());
        Ok(Self { key, kid, x, y })
    }

    /// The key's id (its RFC 7638 thumbprint).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK, ready for a JWKS `keys` array.
    pub fn public_jwk(&self) -> Value {
        json!({
            "kty": "EC",
            "crv": "P-256",
            "x": self.x,
            "y": self.y,
            "kid": self.kid,
            "alg": "ES256",
            "use": "sig",
        })
    }

    /// A JWKS document holding this key only.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.public_jwk()] })
    }

    /// Signs `claims` as a compact JWS with header `{"alg":"ES256","kid":...,"typ":"JWT"}`.
    pub fn sign(&self, claims: &Map<String, Value>) -> Result<String, MintError> {
        let header = json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"});
        self.sign_with_header(&header, claims)
    }

    /// Signs with a caller-made header (tests use it to write odd headers; the signature
    /// is still ES256, whatever the header says).
    pub fn sign_with_header(
        &self,
        header: &Value,
        claims: &Map<String, Value>,
    ) -> Result<String, MintError> {
        let header = serde_json::to_vec(header).map_err(|_| MintError::Crypto)?;
        let payload = serde_json::to_vec(claims).map_err(|_| MintError::Crypto)?;
        let mut token = b64_encode(&header);
        token.push('.');
        token.push_str(&b64_encode(&payload));
        let sig = self
            .key
            .sign(&SystemRandom::new(), token.as_bytes())
            .map_err(|_| MintError::Crypto)?;
        token.push('.');
        token.push_str(&b64_encode(sig.as_ref()));
        Ok(token)
    }
}
