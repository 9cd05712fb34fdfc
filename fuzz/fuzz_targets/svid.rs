//! X509-SVID validation (`svid::validate`, `svid::spiffe_id_of`) on arbitrary DER, against a
//! fixed trust bundle made once per process. Inputs either are raw DER, or mutate a valid
//! SVID issued by that bundle's CA (so the fuzzer reaches the deep checks: SAN, key usage,
//! path validation), or append arbitrary "intermediates" to the valid leaf.
//!
//! Never panics; never accepts a certificate the CA did not sign as issued.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, UnixTime};
use warden_identity::svid::{self, Usage};
use warden_identity::{Bundle, BundleSet, TrustDomain};

struct Fixture {
    bundles: BundleSet,
    leaf: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        ca.subject_alt_names = vec![SanType::URI(
            "spiffe://example.org".try_into().expect("uri"),
        )];
        let ca_cert = ca.self_signed(&ca_key).expect("self-sign");
        let leaf_key = KeyPair::generate().expect("leaf key");
        let mut leaf = CertificateParams::new(Vec::<String>::new()).expect("params");
        leaf.subject_alt_names = vec![SanType::URI(
            "spiffe://example.org/ns/rag/sa/retriever".try_into().expect("uri"),
        )];
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let issuer = Issuer::from_params(&ca, &ca_key);
        let leaf = leaf.signed_by(&leaf_key, &issuer).expect("sign");
        let td = TrustDomain::new("example.org").expect("td");
        let bundle = Bundle::new(&td, vec![ca_cert.der().clone()]).expect("bundle");
        let f = Fixture {
            bundles: BundleSet::new([(td, bundle)]),
            leaf: leaf.der().to_vec(),
        };
        // The unmutated leaf must validate, or the fuzzer explores nothing useful.
        svid::validate(
            &CertificateDer::from(f.leaf.clone()),
            &[],
            &f.bundles,
            UnixTime::now(),
            Usage::Client,
        )
        .expect("fixture leaf is a valid SVID");
        f
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let now = UnixTime::now();
    match mode % 3 {
        0 => {
            let der = CertificateDer::from(rest);
            let _ = svid::spiffe_id_of(&der);
            let _ = svid::validate(&der, &[], &f.bundles, now, Usage::Client);
            let _ = svid::validate(&der, &[], &f.bundles, now, Usage::Server);
        }
        1 => {
            // (offset high, offset low, xor) triples over the valid leaf.
            let mut leaf = f.leaf.clone();
            for t in rest.chunks_exact(3) {
                let at = usize::from(u16::from_be_bytes([t[0], t[1]])) % leaf.len();
                leaf[at] ^= t[2];
            }
            let changed = leaf != f.leaf;
            let der = CertificateDer::from(leaf);
            let _ = svid::spiffe_id_of(&der);
            let res = svid::validate(&der, &[], &f.bundles, now, Usage::Client);
            // Any change to the signed bytes or the signature must be refused... except a
            // change inside the signature's encoding that still verifies, which ECDSA's
            // DER form makes impossible for a flipped bit; so: changed => refused.
            if changed {
                assert!(res.is_err(), "a modified certificate validated");
            }
        }
        _ => {
            let leaf = CertificateDer::from(f.leaf.clone());
            let intermediates: Vec<CertificateDer<'_>> = rest
                .split(|b| *b == 0xff)
                .take(8)
                .map(CertificateDer::from)
                .collect();
            let _ = svid::validate(&leaf, &intermediates, &f.bundles, now, Usage::Client);
        }
    }
});
