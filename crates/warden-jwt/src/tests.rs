//! Every refusal of issue #15 on tokens minted here with real keys (RSA 2048, P-256,
//! Ed25519), plus the JWKS rules and JWT-SVIDs.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    self, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair,
};
use serde_json::{Value, json};
use warden_identity::TrustDomain;

use crate::encoding::b64_encode;
use crate::mint::Es256Signer;
use crate::*;

const ISS: &str = "https://idp.example.com";
const AUD: &str = "rag-retriever";
const NOW: u64 = 1_700_000_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

struct TestKeys {
    rsa: RsaKeyPair,
    /// RFC 8017 RSAPublicKey DER: the bytes an attacker would use as an HMAC secret.
    rsa_public_der: Vec<u8>,
    rsa_n: Vec<u8>,
    rsa_e: Vec<u8>,
    ec: EcdsaKeyPair,
    ed: Ed25519KeyPair,
}

/// Reads one DER TLV: (tag, content, rest).
fn der(b: &[u8]) -> (u8, &[u8], &[u8]) {
    let (tag, first) = (b[0], b[1]);
    let (len, start) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        let len = b[2..2 + n]
            .iter()
            .fold(0usize, |acc, x| acc << 8 | usize::from(*x));
        (len, 2 + n)
    };
    (tag, &b[start..start + len], &b[start + len..])
}

fn keys() -> &'static TestKeys {
    static KEYS: OnceLock<TestKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let rsa = RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA key");
        let rsa_public_der = rsa.public_key().as_ref().to_vec();
        let (_, seq, _) = der(&rsa_public_der);
        let (_, n, rest) = der(seq);
        let (_, e, _) = der(rest);
        TestKeys {
            rsa_n: n.to_vec(),
            rsa_e: e.to_vec(),
            rsa,
            rsa_public_der,
            ec: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("EC key"),
            ed: Ed25519KeyPair::generate().expect("Ed25519 key"),
        }
    })
}

fn rsa_jwk(kid: &str, alg: Option<&str>) -> Value {
    let k = keys();
    // A leading zero octet on n, as some libraries write it: accepted, same value.
    let mut n = vec![0];
    n.extend_from_slice(&k.rsa_n);
    let mut jwk = json!({"kty": "RSA", "kid": kid, "use": "sig", "n": b64_encode(&n), "e": b64_encode(&k.rsa_e)});
    if let Some(alg) = alg {
        jwk["alg"] = json!(alg);
    }
    jwk
}

fn ec_jwk(kid: &str) -> Value {
    let p = keys().ec.public_key().as_ref();
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64_encode(&p[1..33]), "y": b64_encode(&p[33..])})
}

fn ed_jwk(kid: &str) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64_encode(keys().ed.public_key().as_ref())})
}

fn jwks(keys: Vec<Value>) -> Jwks {
    Jwks::from_json(json!({ "keys": keys }).to_string().as_bytes()).expect("JWKS")
}

fn all_keys() -> Jwks {
    jwks(vec![rsa_jwk("rsa-1", None), ec_jwk("ec-1"), ed_jwk("ed-1")])
}

fn claims() -> Value {
    json!({
        "iss": ISS,
        "sub": "alice",
        "aud": AUD,
        "exp": NOW + 600,
        "iat": NOW,
        "groups": ["finance"],
    })
}

/// A compact JWS over exactly these header and claims, signed by `sign`.
fn raw(header: &Value, claims: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let input = format!(
        "{}.{}",
        b64_encode(header.to_string().as_bytes()),
        b64_encode(claims.to_string().as_bytes())
    );
    let sig = sign(input.as_bytes());
    format!("{input}.{}", b64_encode(&sig))
}

/// Signs with the real key of `alg`.
fn sign(alg: &str, msg: &[u8]) -> Vec<u8> {
    let k = keys();
    let rng = SystemRandom::new();
    let rsa = |enc: &'static dyn signature::RsaEncoding| {
        let mut sig = vec![0; k.rsa.public_modulus_len()];
        k.rsa.sign(enc, &rng, msg, &mut sig).expect("RSA sign");
        sig
    };
    match alg {
        "RS256" => rsa(&signature::RSA_PKCS1_SHA256),
        "RS512" => rsa(&signature::RSA_PKCS1_SHA512),
        "PS256" => rsa(&signature::RSA_PSS_SHA256),
        "ES256" => k.ec.sign(&rng, msg).expect("EC sign").as_ref().to_vec(),
        "EdDSA" => k.ed.sign(msg).as_ref().to_vec(),
        other => panic!("no test key for {other}"),
    }
}

fn token(alg: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = json!({"alg": alg, "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    raw(&header, claims, |m| sign(alg, m))
}

fn kid_of(alg: &str) -> &'static str {
    match alg {
        "ES256" => "ec-1",
        "EdDSA" => "ed-1",
        _ => "rsa-1",
    }
}

fn validator() -> Validator {
    Validator::new(ValidatorConfig::new(ISS, vec![AUD.into(), "other".into()]))
}

fn check(token: &str) -> Result<Claims, JwtError> {
    validator().validate(token, &all_keys(), now())
}

fn with(changes: Value) -> Value {
    let mut c = claims();
    for (k, v) in changes.as_object().expect("object") {
        if v.is_null() {
            c.as_object_mut().expect("object").remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

#[test]
fn tokens_of_every_key_type_validate_and_carry_their_claims() {
    for alg in ["RS256", "RS512", "PS256", "ES256", "EdDSA"] {
        let claims = check(&token(alg, Some(kid_of(alg)), &claims())).expect(alg);
        assert_eq!(claims.iss, ISS);
        assert_eq!(claims.sub.as_deref(), Some("alice"));
        assert_eq!(claims.aud, [AUD]);
        assert_eq!(claims.exp, NOW + 600);
        assert!(claims.has_any("groups", &["finance".into()]));
        assert_eq!(claims.get("iat"), Some(&json!(NOW)));
    }
}

#[test]
fn expiry_and_start_are_checked_with_the_leeway() {
    let t = |c| check(&token("ES256", Some("ec-1"), &with(c)));
    assert_eq!(t(json!({"exp": NOW - 31})), Err(JwtError::Expired));
    assert!(
        t(json!({"exp": NOW - 29})).is_ok(),
        "within the 30 s leeway"
    );
    assert_eq!(t(json!({"exp": null})), Err(JwtError::NoExpiry));
    assert_eq!(t(json!({"nbf": NOW + 31})), Err(JwtError::NotYetValid));
    assert!(t(json!({"nbf": NOW + 29})).is_ok());
    assert_eq!(t(json!({"iat": NOW + 3600})), Err(JwtError::NotYetValid));
    assert_eq!(
        t(json!({"exp": "soon"})).map_err(|e| e.as_label()),
        Err("malformed")
    );
    let mut strict = ValidatorConfig::new(ISS, vec![AUD.into()]);
    strict.leeway = Duration::ZERO;
    let strict = Validator::new(strict);
    let at_exp = token("ES256", Some("ec-1"), &with(json!({"exp": NOW})));
    assert_eq!(
        strict.validate(&at_exp, &all_keys(), now()),
        Err(JwtError::Expired)
    );
}

#[test]
fn issuer_and_audience_must_match_and_aud_is_required() {
    let t = |c| check(&token("RS256", Some("rsa-1"), &with(c)));
    assert_eq!(
        t(json!({"iss": "https://evil.example.com"})),
        Err(JwtError::WrongIssuer)
    );
    assert_eq!(
        t(json!({"iss": "https://idp.example.com/"})),
        Err(JwtError::WrongIssuer)
    );
    assert_eq!(t(json!({"iss": null})), Err(JwtError::WrongIssuer));
    assert_eq!(
        t(json!({"aud": "someone-else"})),
        Err(JwtError::WrongAudience)
    );
    assert_eq!(t(json!({"aud": null})), Err(JwtError::NoAudience));
    assert_eq!(t(json!({"aud": []})), Err(JwtError::NoAudience));
    assert!(
        t(json!({"aud": ["x", "other"]})).is_ok(),
        "one audience in common"
    );
    assert_eq!(
        t(json!({"aud": ["x", 1]})).map_err(|e| e.as_label()),
        Err("malformed")
    );
}

#[test]
fn none_and_hmac_are_refused_as_bad_algorithms_whatever_the_key() {
    let k = keys();
    let ec_point = k.ec.public_key().as_ref().to_vec();
    let rsa_pem = format!(
        "-----BEGIN RSA PUBLIC KEY-----\n{}\n-----END RSA PUBLIC KEY-----\n",
        b64_encode(&k.rsa_public_der)
    );
    let hs = |secret: &[u8], kid: &str| {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        raw(&json!({"alg": "HS256", "kid": kid}), &claims(), |m| {
            hmac::sign(&key, m).as_ref().to_vec()
        })
    };
    for (what, t) in [
        (
            "HS256 keyed with the RSA public key (DER)",
            hs(&k.rsa_public_der, "rsa-1"),
        ),
        (
            "HS256 keyed with the RSA public key (PEM)",
            hs(rsa_pem.as_bytes(), "rsa-1"),
        ),
        ("HS256 keyed with the EC public key", hs(&ec_point, "ec-1")),
        (
            "alg none",
            raw(&json!({"alg": "none"}), &claims(), |_| Vec::new()),
        ),
        (
            "alg None",
            raw(&json!({"alg": "None", "kid": "rsa-1"}), &claims(), |_| {
                Vec::new()
            }),
        ),
        (
            "no alg",
            raw(&json!({"kid": "rsa-1"}), &claims(), |m| sign("RS256", m)),
        ),
        (
            "alg number",
            raw(&json!({"alg": 256}), &claims(), |m| sign("RS256", m)),
        ),
    ] {
        let got = check(&t);
        assert!(
            matches!(got, Err(JwtError::BadAlgorithm(_))),
            "{what}: {got:?}"
        );
    }
}

#[test]
fn the_algorithm_must_be_allowed_and_fit_the_key() {
    let only_es256 = Validator::new(ValidatorConfig {
        algorithms: vec![Algorithm::Es256],
        ..ValidatorConfig::new(ISS, vec![AUD.into()])
    });
    let rs = token("RS256", Some("rsa-1"), &claims());
    assert!(matches!(
        only_es256.validate(&rs, &all_keys(), now()),
        Err(JwtError::BadAlgorithm(_))
    ));
    // An RSA signature presented under the EC key's kid, and the reverse.
    let bad = |t: String| matches!(check(&t), Err(JwtError::BadAlgorithm(_)));
    assert!(bad(token("RS256", Some("ec-1"), &claims())));
    assert!(bad(token("ES256", Some("rsa-1"), &claims())));
    assert!(bad(raw(
        &json!({"alg": "ES384", "kid": "ec-1"}),
        &claims(),
        |m| sign("ES256", m)
    )));
    // A JWK that states RS256 verifies nothing else, though PS256 fits an RSA key.
    let pinned = jwks(vec![rsa_jwk("rsa-1", Some("RS256"))]);
    let ps = token("PS256", Some("rsa-1"), &claims());
    assert!(matches!(
        validator().validate(&ps, &pinned, now()),
        Err(JwtError::BadAlgorithm(_))
    ));
    assert!(validator().validate(&ps, &all_keys(), now()).is_ok());
}

#[test]
fn keys_are_chosen_by_kid() {
    assert_eq!(
        check(&token("RS256", Some("rsa-2"), &claims())),
        Err(JwtError::UnknownKid)
    );
    // Without a kid: refused when the set has several keys, the key when it has one.
    assert_eq!(
        check(&token("RS256", None, &claims())),
        Err(JwtError::UnknownKid)
    );
    let one = jwks(vec![rsa_jwk("rsa-1", None)]);
    assert!(
        validator()
            .validate(&token("RS256", None, &claims()), &one, now())
            .is_ok()
    );
    let empty = Jwks::empty();
    assert_eq!(
        validator().validate(&token("RS256", Some("rsa-1"), &claims()), &empty, now()),
        Err(JwtError::NoKeys)
    );
    let t = raw(&json!({"alg": "RS256", "kid": 7}), &claims(), |m| {
        sign("RS256", m)
    });
    assert!(matches!(check(&t), Err(JwtError::Malformed(_))));
}

#[test]
fn a_changed_byte_anywhere_is_refused() {
    let good = token("ES256", Some("ec-1"), &claims());
    let (signed, sig) = good.rsplit_once('.').expect("3 parts");
    let (header, _) = signed.split_once('.').expect("3 parts");
    // A payload of the attacker's choosing under the original signature.
    let forged = format!(
        "{header}.{}.{sig}",
        b64_encode(
            with(json!({"groups": ["finance", "admin"]}))
                .to_string()
                .as_bytes()
        )
    );
    assert_eq!(check(&forged), Err(JwtError::BadSignature));
    // Every single-character change.
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for i in 0..good.len() {
        let c = good.as_bytes()[i] as char;
        if c == '.' {
            continue;
        }
        let other = alphabet.chars().find(|x| *x != c).expect("another char");
        let mut t = good.clone();
        t.replace_range(i..=i, &other.to_string());
        assert!(check(&t).is_err(), "position {i} changed and still valid");
    }
    // A valid signature by a key other than the one the kid names.
    let other = Es256Signer::from_pkcs8(&Es256Signer::generate_pkcs8().expect("key")).expect("key");
    let t = other
        .sign_with_header(
            &json!({"alg": "ES256", "kid": "ec-1"}),
            claims().as_object().expect("obj"),
        )
        .expect("sign");
    assert_eq!(check(&t), Err(JwtError::BadSignature));
}

#[test]
fn oversized_and_malformed_tokens_are_refused_before_any_crypto() {
    let huge = "a".repeat(1024 * 1024);
    assert_eq!(check(&huge), Err(JwtError::TooLarge { limit: 8192 }));
    let huge_token = format!("{huge}.{huge}.{huge}");
    assert_eq!(check(&huge_token), Err(JwtError::TooLarge { limit: 8192 }));
    let good = token("ES256", Some("ec-1"), &claims());
    let parts: Vec<&str> = good.split('.').collect();
    let malformed = |t: &str| matches!(check(t), Err(JwtError::Malformed(_)));
    assert!(malformed(""));
    assert!(malformed(&format!("{}.{}", parts[0], parts[1])));
    assert!(malformed(&format!("{good}.x.y")), "JWE-like, 5 parts");
    assert!(
        malformed(&format!("{}=.{}.{}", parts[0], parts[1], parts[2])),
        "padding"
    );
    assert!(
        malformed(&format!("{}.{}.+{}", parts[0], parts[1], &parts[2][1..])),
        "+ is not base64url"
    );
    assert!(
        malformed(&format!("{} .{}.{}", parts[0], parts[1], parts[2])),
        "whitespace"
    );
    assert!(malformed(&format!(
        "{}.{}.{}=",
        parts[0], parts[1], parts[2]
    )));
    let arr = |v: &Value| b64_encode(v.to_string().as_bytes());
    assert!(malformed(&format!(
        "{}.{}.{}",
        arr(&json!(["alg", "ES256"])),
        parts[1],
        parts[2]
    )));
    assert!(malformed(&format!(
        "{}.{}.{}",
        parts[0],
        arr(&json!([claims()])),
        parts[2]
    )));
    let dup_header = b64_encode(br#"{"alg":"ES256","kid":"ec-1","kid":"rsa-1"}"#);
    assert!(malformed(&format!(
        "{dup_header}.{}.{}",
        parts[1], parts[2]
    )));
    let not_json = b64_encode(b"not json");
    assert!(malformed(&format!("{}.{not_json}.{}", parts[0], parts[2])));
}

#[test]
fn critical_header_parameters_are_refused() {
    let t = raw(
        &json!({"alg": "ES256", "kid": "ec-1", "crit": ["exp"], "exp": 1}),
        &claims(),
        |m| sign("ES256", m),
    );
    assert_eq!(check(&t), Err(JwtError::UnsupportedCritical("exp".into())));
    let t = raw(
        &json!({"alg": "ES256", "kid": "ec-1", "crit": "b64"}),
        &claims(),
        |m| sign("ES256", m),
    );
    assert!(matches!(check(&t), Err(JwtError::UnsupportedCritical(_))));
}

#[test]
fn unusable_keys_are_skipped_and_a_set_without_usable_keys_refused() {
    let k = keys();
    let set = Jwks::from_json(
        json!({"keys": [
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": b64_encode(&k.rsa_n), "e": b64_encode(&k.rsa_e)},
            {"kty": "EC", "kid": "p256k", "crv": "secp256k1", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "small", "n": b64_encode(&[0xff; 128]), "e": "AQAB"},
            {"kty": "RSA", "kid": "priv", "n": b64_encode(&k.rsa_n), "e": b64_encode(&k.rsa_e), "d": "AQAB"},
            {"kty": "RSA", "kid": "hs", "alg": "HS256", "n": b64_encode(&k.rsa_n), "e": b64_encode(&k.rsa_e)},
            {"kty": "EC", "kid": "off-curve", "crv": "P-256", "x": b64_encode(&[1; 32]), "y": b64_encode(&[2; 32])},
            {"kty": "OKP", "kid": "x25519", "crv": "X25519", "x": b64_encode(&[1; 32])},
            {"kty": "EC", "kid": "wrong-alg", "crv": "P-256", "alg": "ES384", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "ops", "key_ops": ["encrypt"], "n": b64_encode(&k.rsa_n), "e": b64_encode(&k.rsa_e)},
            "not an object",
            ec_jwk("ec-1"),
            ed_jwk("ec-1"),
        ]})
        .to_string()
        .as_bytes(),
    )
    .expect("one usable key");
    assert_eq!(set.kids().collect::<Vec<_>>(), [Some("ec-1")]);
    assert_eq!(set.skipped().len(), 12, "{:#?}", set.skipped());
    let reasons = set.skipped().join("\n");
    for expect in [
        "symmetric",
        "\"enc\"",
        "secp256k1",
        "1024 bits",
        "private",
        "never accepted",
        "not a point",
        "X25519",
        "does not fit",
        "key_ops",
        "not a JSON object",
        "used by an earlier key",
    ] {
        assert!(
            reasons.contains(expect),
            "{expect} missing from:\n{reasons}"
        );
    }
    assert!(matches!(
        Jwks::from_json(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#),
        Err(JwksError::NoUsableKeys(_))
    ));
    assert!(matches!(
        Jwks::from_json(br#"{"keys":[]}"#),
        Err(JwksError::NoUsableKeys(_))
    ));
    for bad in [&b"[]"[..], b"{}", br#"{"keys":{}}"#, b"nonsense"] {
        assert!(matches!(Jwks::from_json(bad), Err(JwksError::Malformed(_))));
    }
    let many = json!({"keys": vec![ec_jwk("x"); MAX_KEYS + 1]}).to_string();
    assert_eq!(
        Jwks::from_json(many.as_bytes()).map(|_| ()),
        Err(JwksError::TooManyKeys(MAX_KEYS + 1))
    );
    let big = vec![b' '; MAX_JWKS_BYTES + 1];
    assert!(matches!(Jwks::from_json(&big), Err(JwksError::TooLarge(_))));
}

fn svid_claims(sub: &str) -> Value {
    with(json!({"iss": null, "sub": sub}))
}

fn bundles() -> JwtBundles {
    let mut b = JwtBundles::new();
    let mut jwk = ec_jwk("ec-1");
    jwk["use"] = json!("jwt-svid");
    let set =
        Jwks::from_spiffe_bundle(json!({"keys": [jwk]}).to_string().as_bytes()).expect("bundle");
    b.insert(TrustDomain::new("example.org").expect("td"), set);
    b.insert(
        TrustDomain::new("empty.org").expect("td"),
        Jwks::from_spiffe_bundle(br#"{"keys":[]}"#).expect("empty bundle"),
    );
    b
}

#[test]
fn jwt_svids_use_the_bundle_of_their_subjects_trust_domain() {
    let v = Validator::new(ValidatorConfig::jwt_svid(vec![AUD.into()]));
    let b = bundles();
    let t = |sub: &str| token("ES256", Some("ec-1"), &svid_claims(sub));
    let ok = v
        .validate_jwt_svid(&t("spiffe://example.org/ns/rag/sa/app"), &b, now())
        .expect("valid");
    assert_eq!(
        ok.sub.as_deref(),
        Some("spiffe://example.org/ns/rag/sa/app")
    );
    assert_eq!(ok.iss, "", "no iss needed");
    let err = |tok: String| {
        v.validate_jwt_svid(&tok, &b, now())
            .map_err(|e| e.as_label())
    };
    assert_eq!(
        err(t("spiffe://partner.org/ns/a")),
        Err("unknown_trust_domain")
    );
    assert_eq!(err(t("spiffe://empty.org/ns/a")), Err("no_keys"));
    for bad in [
        "alice",
        "spiffe://example.org",
        "spiffe://EXAMPLE.org/ns/a",
        "spiffe://example.org/a/../b",
    ] {
        assert_eq!(err(t(bad)), Err("bad_subject"), "{bad}");
    }
    assert_eq!(
        err(token("ES256", Some("ec-1"), &with(json!({"iss": null})))),
        Err("bad_subject")
    );
    let typ = raw(
        &json!({"alg": "ES256", "kid": "ec-1", "typ": "at+jwt"}),
        &svid_claims("spiffe://example.org/a"),
        |m| sign("ES256", m),
    );
    assert_eq!(err(typ), Err("malformed"));
    // EdDSA is not a JWT-SVID algorithm.
    let ed = token(
        "EdDSA",
        Some("ed-1"),
        &svid_claims("spiffe://example.org/a"),
    );
    assert_eq!(err(ed), Err("bad_algorithm"));
    // An end-user token set refuses a SPIFFE bundle key's "use".
    let mut jwk = ec_jwk("ec-1");
    jwk["use"] = json!("jwt-svid");
    assert!(Jwks::from_json(json!({"keys": [jwk]}).to_string().as_bytes()).is_err());
}

#[test]
fn minted_tokens_validate_and_the_kid_is_the_key_thumbprint() {
    let der = Es256Signer::generate_pkcs8().expect("key");
    let signer = Es256Signer::from_pkcs8(&der).expect("signer");
    assert_eq!(
        Es256Signer::from_pkcs8(&der).expect("again").kid(),
        signer.kid(),
        "stable kid"
    );
    let other =
        Es256Signer::from_pkcs8(&Es256Signer::generate_pkcs8().expect("key")).expect("signer");
    assert_ne!(other.kid(), signer.kid());
    assert_eq!(signer.kid().len(), 43, "base64url of SHA-256");
    let set = Jwks::from_json(signer.jwks().to_string().as_bytes()).expect("JWKS");
    let t = signer
        .sign(claims().as_object().expect("object"))
        .expect("sign");
    assert!(validator().validate(&t, &set, now()).is_ok());
    assert!(!format!("{signer:?}").contains(&signer.public_jwk()["x"].to_string()));
    assert_eq!(
        Es256Signer::from_pkcs8(b"junk").map(|_| ()),
        Err(mint::MintError::BadKey)
    );
}

#[test]
fn labels_are_distinct() {
    let all = [
        JwtError::Malformed(String::new()),
        JwtError::TooLarge { limit: 1 },
        JwtError::BadAlgorithm(String::new()),
        JwtError::UnsupportedCritical(String::new()),
        JwtError::UnknownKid,
        JwtError::NoKeys,
        JwtError::BadSignature,
        JwtError::Expired,
        JwtError::NotYetValid,
        JwtError::NoExpiry,
        JwtError::WrongIssuer,
        JwtError::WrongAudience,
        JwtError::NoAudience,
        JwtError::BadSubject(String::new()),
        JwtError::UnknownTrustDomain(String::new()),
        JwtError::UnknownIssuer(String::new()),
    ];
    let mut labels: Vec<&str> = all.iter().map(JwtError::as_label).collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), all.len());
}
