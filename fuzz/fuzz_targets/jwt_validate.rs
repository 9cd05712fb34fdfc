//! JWT validation (`warden_jwt::Validator`) on arbitrary tokens, against a fixed key set made
//! once per process (an ES256 key). Inputs either are a raw token, or mutate a valid token
//! minted with that key (so the fuzzer reaches the signature and claim checks), or are a
//! JWKS document / SPIFFE JWT bundle.
//!
//! Never panics; never accepts a token that differs from the one the key signed.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use warden_identity::TrustDomain;
use warden_jwt::mint::Es256Signer;
use warden_jwt::{Jwks, JwtBundles, Validator, ValidatorConfig};

const NOW: u64 = 1_700_000_000;

struct Fixture {
    keys: Jwks,
    bundles: JwtBundles,
    validator: Validator,
    svid_validator: Validator,
    token: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let der = Es256Signer::generate_pkcs8().expect("key");
        let signer = Es256Signer::from_pkcs8(&der).expect("signer");
        let jwks = signer.jwks().to_string();
        let claims = json!({
            "iss": "https://idp.example.com",
            "sub": "spiffe://example.org/ns/rag/sa/app",
            "aud": ["rag-retriever"],
            "exp": NOW + 600,
            "nbf": NOW - 10,
            "groups": ["finance"],
        });
        let token = signer
            .sign(claims.as_object().expect("object"))
            .expect("sign");
        let mut bundles = JwtBundles::new();
        bundles.insert(
            TrustDomain::new("example.org").expect("td"),
            Jwks::from_spiffe_bundle(jwks.as_bytes()).expect("bundle"),
        );
        let f = Fixture {
            keys: Jwks::from_json(jwks.as_bytes()).expect("JWKS"),
            bundles,
            validator: Validator::new(ValidatorConfig::new(
                "https://idp.example.com",
                vec!["rag-retriever".into()],
            )),
            svid_validator: Validator::new(ValidatorConfig::jwt_svid(vec![
                "rag-retriever".into(),
            ])),
            token: token.into_bytes(),
        };
        // The unmutated token must validate both ways, or the fuzzer explores nothing useful.
        let t = std::str::from_utf8(&f.token).expect("ascii");
        f.validator.validate(t, &f.keys, now()).expect("fixture token is valid");
        f.svid_validator
            .validate_jwt_svid(t, &f.bundles, now())
            .expect("fixture token is a valid JWT-SVID");
        f
    })
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok(token) = std::str::from_utf8(rest) {
                let _ = f.validator.validate(token, &f.keys, now());
                let _ = f.svid_validator.validate_jwt_svid(token, &f.bundles, now());
            }
        }
        1 => {
            // (offset high, offset low, xor) triples over the valid token.
            let mut token = f.token.clone();
            for t in rest.chunks_exact(3) {
                let at = usize::from(u16::from_be_bytes([t[0], t[1]])) % token.len();
                token[at] ^= t[2];
            }
            let changed = token != f.token;
            let Ok(token) = std::str::from_utf8(&token) else {
                return;
            };
            let user = f.validator.validate(token, &f.keys, now());
            let svid = f.svid_validator.validate_jwt_svid(token, &f.bundles, now());
            if changed {
                assert!(user.is_err(), "a modified token validated");
                assert!(svid.is_err(), "a modified JWT-SVID validated");
            }
        }
        _ => {
            let _ = Jwks::from_json(rest);
            let _ = Jwks::from_spiffe_bundle(rest);
        }
    }
});
