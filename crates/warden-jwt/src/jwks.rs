//! JSON Web Key Sets (RFC 7517) of public signing keys, parsed once into keys ready to
//! verify with.
//!
//! Which keys are used, and why:
//!
//! - Key types: `RSA` (`n`, `e`; 2048 to 8192 bits), `EC` (`crv` P-256, P-384 or P-521 with
//!   `x`, `y`), `OKP` (`crv` Ed25519 with `x`). Anything else (`oct` symmetric keys, X25519,
//!   Ed448, unknown types) is **skipped**, not an error: identity providers publish keys of
//!   several kinds, and one Warden cannot use must not take the others down with it. The
//!   same holds for a key of a supported type that is malformed, states an algorithm Warden
//!   never accepts, is meant for encryption (`use` other than `sig`; for SPIFFE bundles
//!   `jwt-svid`), lacks `verify` in its `key_ops`, or carries private members (`d`, `p`, ...).
//!   Every skipped key is listed in [`Jwks::skipped`] with the reason, so the operator
//!   sees it in the reload log.
//! - A set where **no** key is usable is an error ([`JwksError::NoUsableKeys`]): loading it
//!   would silently turn every token into a refusal. (A SPIFFE bundle whose `keys` array is
//!   empty is the exception: that trust domain simply has no JWT authority.)
//! - `kid` values are expected to be unique. When one appears twice, the first usable key
//!   with it wins and the later ones are skipped.
//! - A key's `alg`, when stated, is the only algorithm it verifies; without one, an RSA key
//!   verifies RS* and PS*, and an EC or OKP key the one algorithm of its curve.

use std::collections::HashMap;
use std::fmt;

use aws_lc_rs::signature::{self, ParsedPublicKey, RsaPublicKeyComponents};
use serde_json::{Map, Value};
use thiserror::Error;
use warden_identity::TrustDomain;

use crate::alg::{Algorithm, KeyFamily, printable};
use crate::encoding::{b64_decode, json_object};

/// The largest JWKS document read (real ones are a few KiB).
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// The most keys one set may hold.
pub const MAX_KEYS: usize = 256;

/// Why a key set was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JwksError {
    #[error("the document is {0} bytes; at most {MAX_JWKS_BYTES} are read")]
    TooLarge(usize),
    #[error("not a JWKS document: {0}")]
    Malformed(String),
    #[error("{0} keys; at most {MAX_KEYS} are accepted")]
    TooManyKeys(usize),
    #[error("no usable key in the set ({})", if .0.is_empty() { "it is empty".to_owned() } else { .0.join("; ") })]
    NoUsableKeys(Vec<String>),
}

/// Which `use` values a set accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// An identity provider's JWKS: `use` absent or `sig`.
    Sig,
    /// A SPIFFE trust domain's JWT bundle: `use` absent, `sig` or `jwt-svid`; `kid` required.
    JwtSvid,
}

/// One usable public key.
#[derive(Clone)]
pub(crate) struct Jwk {
    pub(crate) kid: Option<String>,
    family: KeyFamily,
    /// Every algorithm this key verifies, each with the key parsed for it.
    verifiers: Vec<(Algorithm, ParsedPublicKey)>,
}

impl Jwk {
    /// The key parsed for `alg`, or `None` when this key may not verify `alg` (another key
    /// type, or the JWK states another algorithm).
    pub(crate) fn verifier(&self, alg: Algorithm) -> Option<&ParsedPublicKey> {
        self.verifiers
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, k)| k)
    }
}

/// A set of usable public keys.
#[derive(Clone, Default)]
pub struct Jwks {
    keys: Vec<Jwk>,
    skipped: Vec<String>,
}

impl fmt::Debug for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|k| format!("{:?}:{:?}", k.kid.as_deref().unwrap_or("-"), k.family))
            .collect();
        f.debug_struct("Jwks")
            .field("keys", &keys)
            .field("skipped", &self.skipped.len())
            .finish()
    }
}

impl Jwks {
    /// A set with no keys: every token is refused with [`crate::JwtError::NoKeys`].
    pub fn empty() -> Self {
        Self::default()
    }

    /// Parses an identity provider's JWKS (`{"keys": [...]}`).
    pub fn from_json(bytes: &[u8]) -> Result<Self, JwksError> {
        let set = Self::parse(bytes, Purpose::Sig)?;
        if set.keys.is_empty() {
            return Err(JwksError::NoUsableKeys(set.skipped));
        }
        Ok(set)
    }

    /// Parses one trust domain's JWT bundle as the Workload API sends it: a JWKS whose keys
    /// carry `kid` and may say `"use": "jwt-svid"`. An empty `keys` array is an empty set.
    pub fn from_spiffe_bundle(bytes: &[u8]) -> Result<Self, JwksError> {
        let set = Self::parse(bytes, Purpose::JwtSvid)?;
        if set.keys.is_empty() && !set.skipped.is_empty() {
            return Err(JwksError::NoUsableKeys(set.skipped));
        }
        Ok(set)
    }

    fn parse(bytes: &[u8], purpose: Purpose) -> Result<Self, JwksError> {
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge(bytes.len()));
        }
        let doc = json_object(bytes).map_err(JwksError::Malformed)?;
        let Some(Value::Array(entries)) = doc.get("keys") else {
            return Err(JwksError::Malformed(
                "no \"keys\" array at the top level".into(),
            ));
        };
        if entries.len() > MAX_KEYS {
            return Err(JwksError::TooManyKeys(entries.len()));
        }
        let mut set = Jwks::default();
        for (i, entry) in entries.iter().enumerate() {
            let name = match entry.get("kid").and_then(Value::as_str) {
                Some(kid) => format!("key {i} (kid {:?})", printable(kid)),
                None => format!("key {i}"),
            };
            match parse_key(entry, purpose) {
                Ok(key) if key.kid.is_some() && set.keys.iter().any(|k| k.kid == key.kid) => {
                    set.skipped
                        .push(format!("{name}: the kid is used by an earlier key"));
                }
                Ok(key) => set.keys.push(key),
                Err(why) => set.skipped.push(format!("{name}: {why}")),
            }
        }
        Ok(set)
    }

    /// How many keys are usable.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The `kid` of each usable key, in document order (`None` for a key without one).
    pub fn kids(&self) -> impl Iterator<Item = Option<&str>> {
        self.keys.iter().map(|k| k.kid.as_deref())
    }

    /// The keys that were skipped, each with the reason (no key material in them).
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// The key a token names. A token without `kid` may use the set's only key; with
    /// several keys it names none of them (guessing would make every key a candidate).
    pub(crate) fn find(&self, kid: Option<&str>) -> Option<&Jwk> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
    }
}

/// The JWT bundles of several trust domains (own and federated), as the Workload API's
/// `FetchJWTBundles` delivers them. A JWT-SVID is checked against the bundle of its own
/// subject's trust domain, never another's.
#[derive(Debug, Clone, Default)]
pub struct JwtBundles {
    by_domain: HashMap<TrustDomain, Jwks>,
}

impl JwtBundles {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, trust_domain: TrustDomain, keys: Jwks) {
        self.by_domain.insert(trust_domain, keys);
    }

    pub fn get(&self, trust_domain: &str) -> Option<&Jwks> {
        self.by_domain.get(trust_domain)
    }

    pub fn remove(&mut self, trust_domain: &str) -> Option<Jwks> {
        self.by_domain.remove(trust_domain)
    }

    pub fn trust_domains(&self) -> impl Iterator<Item = &TrustDomain> {
        self.by_domain.keys()
    }

    pub fn len(&self) -> usize {
        self.by_domain.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }
}

/// Members that only a private key has (RFC 7518 section 6.3.2, 6.2.2, RFC 8037).
const PRIVATE_MEMBERS: [&str; 6] = ["d", "p", "q", "dp", "dq", "qi"];

fn parse_key(entry: &Value, purpose: Purpose) -> Result<Jwk, String> {
    let Value::Object(jwk) = entry else {
        return Err("not a JSON object".into());
    };
    let kid = match jwk.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err("\"kid\" is not a string".into()),
    };
    if purpose == Purpose::JwtSvid && kid.is_none() {
        return Err("no \"kid\" (a JWT bundle key must have one)".into());
    }
    match jwk.get("use") {
        None => {}
        Some(Value::String(u)) if u == "sig" => {}
        Some(Value::String(u)) if u == "jwt-svid" && purpose == Purpose::JwtSvid => {}
        Some(Value::String(u)) => {
            return Err(format!(
                "\"use\" is {:?}, not a signature key",
                printable(u)
            ));
        }
        Some(_) => return Err("\"use\" is not a string".into()),
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|o| o.as_str() == Some("verify")));
        if !verifies {
            return Err("\"key_ops\" does not include \"verify\"".into());
        }
    }
    if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
        return Err("holds private key material; publish public keys only".into());
    }
    let alg = match jwk.get("alg") {
        None => None,
        Some(Value::String(name)) => Some(Algorithm::parse(name).map_err(|e| e.to_string())?),
        Some(_) => return Err("\"alg\" is not a string".into()),
    };
    let kty = match jwk.get("kty") {
        Some(Value::String(kty)) => kty.as_str(),
        Some(_) => return Err("\"kty\" is not a string".into()),
        None => return Err("no \"kty\"".into()),
    };
    let (family, verifiers) = match kty {
        "RSA" => (KeyFamily::Rsa, rsa(jwk, alg)?),
        "EC" => ec(jwk, alg)?,
        "OKP" => (KeyFamily::Ed25519, okp(jwk, alg)?),
        "oct" => return Err("a symmetric (oct) key is never used".into()),
        other => return Err(format!("key type {:?} is not supported", printable(other))),
    };
    Ok(Jwk {
        kid,
        family,
        verifiers,
    })
}

fn member(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    match jwk.get(name) {
        Some(Value::String(text)) => {
            b64_decode(text).ok_or_else(|| format!("\"{name}\" is not base64url"))
        }
        Some(_) => Err(format!("\"{name}\" is not a string")),
        None => Err(format!("no \"{name}\"")),
    }
}

fn rsa(
    jwk: &Map<String, Value>,
    alg: Option<Algorithm>,
) -> Result<Vec<(Algorithm, ParsedPublicKey)>, String> {
    let n = member(jwk, "n")?;
    let e = member(jwk, "e")?;
    // RFC 7518 forbids leading zero octets, but some libraries emit one; the value is the same.
    let strip = |b: &[u8]| -> Vec<u8> { b.iter().copied().skip_while(|x| *x == 0).collect() };
    let (n, e) = (strip(&n), strip(&e));
    let bits = n
        .first()
        .map_or(0, |first| n.len() * 8 - first.leading_zeros() as usize);
    if !(2048..=8192).contains(&bits) {
        return Err(format!("RSA key of {bits} bits; 2048 to 8192 are accepted"));
    }
    let algs: Vec<Algorithm> = match alg {
        Some(a) if a.family() == KeyFamily::Rsa => vec![a],
        Some(a) => return Err(format!("\"alg\" {a} does not fit an RSA key")),
        None => Algorithm::ALL
            .iter()
            .copied()
            .filter(|a| a.family() == KeyFamily::Rsa)
            .collect(),
    };
    let components = RsaPublicKeyComponents { n: &n, e: &e };
    algs.into_iter()
        .map(|a| {
            let params = a
                .rsa_parameters()
                .ok_or_else(|| format!("{a} is not an RSA algorithm"))?;
            components
                .to_parsed_public_key(params)
                .map(|k| (a, k))
                .map_err(|_| "not a valid RSA public key".to_owned())
        })
        .collect()
}

type Parsed = (KeyFamily, Vec<(Algorithm, ParsedPublicKey)>);

fn ec(jwk: &Map<String, Value>, alg: Option<Algorithm>) -> Result<Parsed, String> {
    let (family, curve_alg, size, verify): (
        _,
        _,
        _,
        &'static signature::EcdsaVerificationAlgorithm,
    ) = match jwk.get("crv").and_then(Value::as_str) {
        Some("P-256") => (
            KeyFamily::P256,
            Algorithm::Es256,
            32,
            &signature::ECDSA_P256_SHA256_FIXED,
        ),
        Some("P-384") => (
            KeyFamily::P384,
            Algorithm::Es384,
            48,
            &signature::ECDSA_P384_SHA384_FIXED,
        ),
        Some("P-521") => (
            KeyFamily::P521,
            Algorithm::Es512,
            66,
            &signature::ECDSA_P521_SHA512_FIXED,
        ),
        Some(other) => return Err(format!("curve {:?} is not supported", printable(other))),
        None => return Err("no \"crv\"".into()),
    };
    if let Some(a) = alg
        && a != curve_alg
    {
        return Err(format!("\"alg\" {a} does not fit a {curve_alg} key"));
    }
    let x = member(jwk, "x")?;
    let y = member(jwk, "y")?;
    if x.len() != size || y.len() != size {
        return Err(format!("\"x\" and \"y\" must be {size} bytes each"));
    }
    let mut point = Vec::with_capacity(1 + 2 * size);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    let key =
        ParsedPublicKey::new(verify, &point).map_err(|_| "not a point on the curve".to_owned())?;
    Ok((family, vec![(curve_alg, key)]))
}

fn okp(
    jwk: &Map<String, Value>,
    alg: Option<Algorithm>,
) -> Result<Vec<(Algorithm, ParsedPublicKey)>, String> {
    match jwk.get("crv").and_then(Value::as_str) {
        Some("Ed25519") => {}
        Some(other) => return Err(format!("curve {:?} is not supported", printable(other))),
        None => return Err("no \"crv\"".into()),
    }
    if let Some(a) = alg
        && a != Algorithm::EdDsa
    {
        return Err(format!("\"alg\" {a} does not fit an Ed25519 key"));
    }
    let x = member(jwk, "x")?;
    if x.len() != signature::ED25519_PUBLIC_KEY_LEN {
        return Err("\"x\" must be 32 bytes".into());
    }
    let key = ParsedPublicKey::new(&signature::ED25519, &x)
        .map_err(|_| "not a valid Ed25519 public key".to_owned())?;
    Ok(vec![(Algorithm::EdDsa, key)])
}
