//! X509-SVID validation gives the precise reason for each kind of bad certificate, and the
//! reason maps to the metric label operators will see.

mod common;

use common::pki::{Ca, LeafSpec};
use common::{TD, id};
use rcgen::{ExtendedKeyUsagePurpose, KeyUsagePurpose};
use rustls::pki_types::UnixTime;
use warden_identity::svid::{SvidError, Usage, validate};

fn check(ca_bundle: &[&Ca], svid: &common::pki::Svid, usage: Usage) -> Result<String, SvidError> {
    validate(
        &svid.chain[0],
        &svid.chain[1..],
        &Ca::bundles(ca_bundle),
        UnixTime::now(),
        usage,
    )
    .map(|id| id.to_string())
}

#[test]
fn a_valid_svid_yields_its_spiffe_id_for_both_usages() {
    let ca = Ca::new(TD);
    let svid = ca.svid(&id("/ns/rag/sa/llm"));
    assert_eq!(
        check(&[&ca], &svid, Usage::Client).expect("valid"),
        id("/ns/rag/sa/llm")
    );
    assert_eq!(
        check(&[&ca], &svid, Usage::Server).expect("valid"),
        id("/ns/rag/sa/llm")
    );
}

#[test]
fn each_defect_is_reported_with_its_own_reason_and_label() {
    let ca = Ca::new(TD);
    let good = id("/ns/rag/sa/retriever");
    let other = Ca::new(TD);
    let evil = Ca::new("evil.example");
    type Case = (
        &'static str,
        common::pki::Svid,
        fn(&SvidError) -> bool,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "untrusted CA",
            other.svid(&good),
            |e| matches!(e, SvidError::Untrusted { .. }),
            "untrusted",
        ),
        (
            "unknown trust domain",
            evil.svid("spiffe://evil.example/x"),
            |e| matches!(e, SvidError::UnknownTrustDomain(_)),
            "untrusted",
        ),
        (
            "expired",
            ca.issue(&LeafSpec {
                expired: true,
                ..LeafSpec::id(&good)
            }),
            |e| matches!(e, SvidError::Expired),
            "expired",
        ),
        (
            "CA as leaf",
            ca.issue(&LeafSpec {
                is_ca: true,
                key_usage: vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::DigitalSignature,
                ],
                ..LeafSpec::id(&good)
            }),
            |e| matches!(e, SvidError::LeafIsCa),
            "bad_svid",
        ),
        (
            "two URI SANs",
            ca.issue(&LeafSpec {
                uris: vec![good.clone(), id("/x")],
                ..LeafSpec::id(&good)
            }),
            |e| matches!(e, SvidError::MultipleUriSans(2)),
            "bad_svid",
        ),
        (
            "no URI SAN",
            ca.issue(&LeafSpec {
                uris: vec![],
                ..LeafSpec::id(&good)
            }),
            |e| matches!(e, SvidError::NoUriSan),
            "bad_svid",
        ),
        (
            "trust-domain ID as leaf",
            ca.issue(&LeafSpec::id(&format!("spiffe://{TD}"))),
            |e| matches!(e, SvidError::NotAWorkloadId(_)),
            "bad_svid",
        ),
        (
            "forbidden characters in the ID",
            ca.issue(&LeafSpec::id(&format!("spiffe://{TD}/ns/a b"))),
            |e| matches!(e, SvidError::InvalidSpiffeId { .. }),
            "bad_svid",
        ),
        (
            "no key usage",
            ca.issue(&LeafSpec {
                key_usage: vec![],
                ..LeafSpec::id(&good)
            }),
            |e| matches!(e, SvidError::NoKeyUsage),
            "bad_svid",
        ),
        (
            "no digitalSignature",
            ca.issue(&LeafSpec {
                key_usage: vec![KeyUsagePurpose::KeyEncipherment],
                ..LeafSpec::id(&good)
            }),
            |e| matches!(e, SvidError::NoDigitalSignature),
            "bad_svid",
        ),
        (
            "cRLSign on a leaf",
            ca.issue(&LeafSpec {
                key_usage: vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign],
                ..LeafSpec::id(&good)
            }),
            |e| matches!(e, SvidError::LeafCanSign),
            "bad_svid",
        ),
        (
            "EKU without clientAuth",
            ca.issue(&LeafSpec {
                eku: vec![ExtendedKeyUsagePurpose::ServerAuth],
                ..LeafSpec::id(&good)
            }),
            |e| matches!(e, SvidError::ExtendedKeyUsage),
            "bad_svid",
        ),
    ];
    for (what, svid, expected, label) in cases {
        let err = check(&[&ca, &evil_bundle_less()], &svid, Usage::Client).expect_err(what);
        assert!(expected(&err), "{what}: unexpected reason {err:?}");
        assert_eq!(err.failure().as_label(), label, "{what}");
    }
}

/// A CA whose trust domain differs from every leaf above, so "unknown trust domain" stays
/// unknown even though the bundle set is not empty.
fn evil_bundle_less() -> Ca {
    Ca::new("unrelated.example")
}

#[test]
fn a_leaf_is_checked_only_against_its_own_trust_domains_bundle() {
    // A leaf claiming trust domain A, signed by B's CA, with both bundles loaded: rejected,
    // because B's CA may not vouch for A's identities.
    let a = Ca::new("a.example");
    let b = Ca::new("b.example");
    let forged = b.svid("spiffe://a.example/ns/x");
    let err = check(&[&a, &b], &forged, Usage::Client).expect_err("cross-domain forgery");
    assert!(matches!(err, SvidError::Untrusted { .. }), "{err:?}");
    // Several trust domains are supported: each validates against its own bundle.
    assert!(check(&[&a, &b], &a.svid("spiffe://a.example/x"), Usage::Client).is_ok());
    assert!(check(&[&a, &b], &b.svid("spiffe://b.example/y"), Usage::Client).is_ok());
}

/// `Identity::validate_peer` remembers chains that passed, so a returning peer skips the
/// chain signature check. What must hold on every handshake still does: the time, the exact
/// bytes of the chain, and the bundles of the identity in force.
#[test]
fn a_remembered_chain_is_still_checked_for_time_bytes_and_current_bundles() {
    use std::time::Duration as StdDuration;
    let ca = Ca::new(TD);
    let ours = ca.identity(&id("/ns/rag/sa/vectordb"), &[]);
    let spec = LeafSpec::id(&id("/ns/rag/sa/retriever"));
    let peer = ca.issue(&spec);
    let now = UnixTime::now();
    let as_client = |identity: &warden_identity::Identity, at: UnixTime| {
        identity.validate_peer(&peer.chain[0], &peer.chain[1..], at, Usage::Client)
    };

    assert_eq!(
        as_client(&ours, now).expect("valid").to_string(),
        id("/ns/rag/sa/retriever")
    );
    assert_eq!(ours.validated_chains(), 1, "a valid chain is remembered");
    assert_eq!(ours.validated_chain_hits(), 0);
    assert!(as_client(&ours, now).is_ok());
    assert_eq!(
        ours.validated_chain_hits(),
        1,
        "the second check is answered from memory"
    );

    // Time: past the leaf's notAfter (1 h) the remembered chain no longer counts.
    let later = UnixTime::since_unix_epoch(StdDuration::from_secs(now.as_secs() + 2 * 3600));
    assert_eq!(as_client(&ours, later), Err(SvidError::Expired));
    assert!(
        as_client(&ours, now).is_ok(),
        "still fine at the present time"
    );
    // Before the leaf's notBefore, likewise.
    let earlier = UnixTime::since_unix_epoch(StdDuration::from_secs(now.as_secs() - 2 * 86_400));
    assert_eq!(as_client(&ours, earlier), Err(SvidError::NotYetValid));

    // The same leaf with other intermediates is another chain: checked in full. A peer that
    // keeps changing them (junk is ignored by path building) only replaces its own entry.
    let hits = ours.validated_chain_hits();
    for _ in 0..5 {
        let junk = Ca::new(TD).cert.clone();
        let with_junk = ours.validate_peer(&peer.chain[0], &[junk], now, Usage::Client);
        assert!(with_junk.is_ok(), "{with_junk:?}");
    }
    assert_eq!(
        ours.validated_chain_hits(),
        hits,
        "other intermediates never hit"
    );
    assert_eq!(ours.validated_chains(), 1, "one entry per leaf");

    // Bytes: the same SPIFFE ID from a CA outside the bundle is refused, whatever is
    // remembered for the genuine chain.
    let rogue = Ca::new(TD).issue(&spec);
    let forged = ours.validate_peer(&rogue.chain[0], &rogue.chain[1..], now, Usage::Client);
    assert!(
        matches!(forged, Err(SvidError::Untrusted { .. })),
        "forged chain: {forged:?}"
    );

    // Bundles: once the identity in force trusts another CA only (a bundle update), the
    // chain remembered under the old bundles is refused.
    let new_ca = Ca::new(TD);
    let rotated = new_ca.identity(&id("/ns/rag/sa/vectordb"), &[]);
    let after_rotation = as_client(&rotated, now);
    assert!(
        matches!(after_rotation, Err(SvidError::Untrusted { .. })),
        "chain of a CA no longer trusted: {after_rotation:?}"
    );
    assert_eq!(
        rotated.validated_chains(),
        0,
        "failures are never remembered"
    );
}
