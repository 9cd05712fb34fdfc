//! The built-in CA's SPIFFE Workload API, spoken to by the `spiffe` crate (a real client, picky
//! about responses) and by the generated tonic client for the calls a well-behaved client never
//! makes (no security header, wrong uid) and for the JWT-SVID calls.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::workload_api::{
    TestCa, endpoint, my_uid, raw_client, registration, serve, with_header,
};
use common::{TD, id};
use rustls::pki_types::{CertificateDer, UnixTime};
use tonic::Code;
use warden_identity::svid::{self, Usage};
use warden_identity::{Bundle, BundleSet, Identity, TrustDomain};
use warden_proto::workload::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, X509BundlesRequest, X509svidRequest,
    X509svidResponse,
};

const HOUR: Duration = Duration::from_secs(3600);

fn der_chain(svid: &spiffe::X509Svid) -> Vec<CertificateDer<'static>> {
    svid.cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect()
}

fn bundle_set_of(bundles: &spiffe::X509BundleSet) -> BundleSet {
    BundleSet::new(bundles.iter().map(|(td, b)| {
        let td = TrustDomain::new(td.as_str()).expect("td");
        let certs = b
            .authorities()
            .iter()
            .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
            .collect();
        let bundle = Bundle::new(&td, certs).expect("bundle");
        (td, bundle)
    }))
}

/// Splits concatenated DER certificates (each a SEQUENCE with a long-form length).
fn split_der(mut der: &[u8]) -> Vec<CertificateDer<'static>> {
    let mut out = Vec::new();
    while der.len() >= 2 {
        let (len, header) = match der[1] {
            n if n < 0x80 => (usize::from(n), 2),
            n => {
                let k = usize::from(n & 0x7f);
                let len = der[2..2 + k]
                    .iter()
                    .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
                (len, 2 + k)
            }
        };
        out.push(CertificateDer::from(der[..header + len].to_vec()));
        der = &der[header + len..];
    }
    out
}

/// Checks one X509SVIDResponse is the complete state for `path` and returns its leaf.
fn check_full_state(msg: &X509svidResponse, ca: &TestCa, path: &str) -> CertificateDer<'static> {
    assert_eq!(msg.svids.len(), 1, "one registration, one SVID");
    let s = &msg.svids[0];
    assert_eq!(s.spiffe_id, id(path));
    assert_eq!(split_der(&s.bundle), vec![ca.ca.certificate().clone()]);
    let chain = split_der(&s.x509_svid);
    let td = TrustDomain::new(TD).expect("td");
    let bundles = BundleSet::new([(
        td.clone(),
        Bundle::new(&td, split_der(&s.bundle)).expect("b"),
    )]);
    // Identity::from_der validates the SVID and checks the key belongs to it.
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(s.x509_svid_key.clone().into());
    let identity = Identity::from_der(chain.clone(), key, bundles).expect("usable SVID");
    assert_eq!(identity.spiffe_id().as_str(), id(path));
    chain[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spiffe_crate_client_gets_a_valid_svid_and_bundle() {
    let t = TestCa::new();
    let sock = t.socket("retriever");
    let api = serve(
        &t.ca,
        vec![registration(&sock, "/ns/rag/sa/retriever", None)],
        HOUR,
    )
    .await;

    let client = spiffe::WorkloadApiClient::connect_to(endpoint(&sock))
        .await
        .expect("client");
    let svid = client.fetch_x509_svid().await.expect("SVID");
    assert_eq!(svid.spiffe_id().to_string(), id("/ns/rag/sa/retriever"));
    let bundles = client.fetch_x509_bundles().await.expect("bundles");
    let ours = bundles
        .get(&spiffe::TrustDomain::new(TD).expect("td"))
        .expect("bundle of our trust domain");
    assert_eq!(
        ours.authorities()[0].as_bytes(),
        t.ca.certificate().as_ref()
    );
    let chain = der_chain(&svid);
    let got = svid::validate(
        &chain[0],
        &chain[1..],
        &bundle_set_of(&bundles),
        UnixTime::now(),
        Usage::Client,
    )
    .expect("SVID validates with warden-identity");
    assert_eq!(got.as_str(), id("/ns/rag/sa/retriever"));

    // X509Source: the streaming client the sidecar uses, with its own readiness checks.
    let source = spiffe::X509Source::builder()
        .endpoint(endpoint(&sock))
        .initial_sync_timeout(Duration::from_secs(10))
        .build()
        .await
        .expect("X509Source syncs");
    assert_eq!(
        source.svid().expect("svid").spiffe_id().to_string(),
        id("/ns/rag/sa/retriever")
    );
    // The supervisor task starts right after the initial sync.
    common::wait_until("X509Source healthy", Duration::from_secs(10), || {
        source.is_healthy()
    })
    .await;
    source.shutdown().await;
    api.shutdown().await;
    assert!(!sock.exists(), "socket removed on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_the_security_header_are_invalid_argument() {
    let t = TestCa::new();
    let sock = t.socket("w");
    let _api = serve(&t.ca, vec![registration(&sock, "/w", None)], HOUR).await;
    let mut client = raw_client(&sock).await;
    let status = client
        .fetch_x509svid(X509svidRequest {})
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = client
        .fetch_x509_bundles(X509BundlesRequest {})
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = client
        .fetch_jwtsvid(JwtsvidRequest::default())
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // The same call with the header is answered.
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect("stream")
        .into_inner();
    let first = stream.message().await.expect("message").expect("first");
    check_full_state(&first, &t, "/w");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_are_selected_by_uid_and_others_get_permission_denied() {
    let t = TestCa::new();
    let me = my_uid();
    let stranger = me.wrapping_add(1);
    let theirs = t.socket("theirs");
    let mine = t.socket("mine");
    let mixed = t.socket("mixed");
    let _api = serve(
        &t.ca,
        vec![
            registration(&theirs, "/theirs", Some(stranger)),
            registration(&mine, "/mine", Some(me)),
            registration(&mixed, "/not-for-me", Some(stranger)),
            registration(&mixed, "/shared", None),
        ],
        HOUR,
    )
    .await;

    let mut client = raw_client(&theirs).await;
    let status = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect_err("not ours");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = client
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await
        .expect_err("not ours");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    let mut client = raw_client(&mine).await;
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect("our uid")
        .into_inner();
    check_full_state(
        &stream.message().await.expect("msg").expect("first"),
        &t,
        "/mine",
    );

    let mut client = raw_client(&mixed).await;
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect("the uid-less registration")
        .into_inner();
    check_full_state(
        &stream.message().await.expect("msg").expect("first"),
        &t,
        "/shared",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_svids_are_signed_for_the_callers_identities_and_validate() {
    let t = TestCa::new();
    let sock = t.socket("w");
    let stranger = my_uid().wrapping_add(1);
    let _api = serve(
        &t.ca,
        vec![
            registration(&sock, "/w", None),
            registration(&sock, "/not-mine", Some(stranger)),
            registration(&sock, "/second", None),
        ],
        HOUR,
    )
    .await;
    let mut client = raw_client(&sock).await;
    let fetch = |audience: &[&str], spiffe_id: &str| {
        with_header(JwtsvidRequest {
            audience: audience.iter().map(|a| a.to_string()).collect(),
            spiffe_id: spiffe_id.into(),
        })
    };
    let status = client
        .fetch_jwtsvid(fetch(&[], ""))
        .await
        .expect_err("no audience");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = client
        .fetch_jwtsvid(fetch(&["rag"], &id("/not-mine")))
        .await
        .expect_err("another uid's identity");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // Without a spiffe_id: one per identity the caller may have, the default first.
    let all = client
        .fetch_jwtsvid(fetch(&["rag"], ""))
        .await
        .expect("JWT-SVIDs")
        .into_inner();
    let ids: Vec<&str> = all.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(ids, [id("/w"), id("/second")]);
    let second = client
        .fetch_jwtsvid(fetch(&["rag", "audit"], &id("/second")))
        .await
        .expect("named identity")
        .into_inner();
    assert_eq!(second.svids.len(), 1);

    // The trust domain's JWT bundle verifies them, by the rules a sidecar uses.
    let mut bundles = client
        .fetch_jwt_bundles(with_header(JwtBundlesRequest {}))
        .await
        .expect("stream")
        .into_inner();
    let first = bundles.message().await.expect("message").expect("first");
    let td = TrustDomain::new(TD).expect("td");
    assert_eq!(first.bundles.keys().collect::<Vec<_>>(), [&td.id_string()]);
    let keys = warden_jwt::Jwks::from_spiffe_bundle(&first.bundles[&td.id_string()]).expect("JWKS");
    let mut set = warden_jwt::JwtBundles::new();
    set.insert(td, keys);
    let validator =
        warden_jwt::Validator::new(warden_jwt::ValidatorConfig::jwt_svid(vec!["audit".into()]));
    let claims = validator
        .validate_jwt_svid(&second.svids[0].svid, &set, std::time::SystemTime::now())
        .expect("valid JWT-SVID");
    assert_eq!(claims.sub.as_deref(), Some(id("/second").as_str()));
    assert_eq!(claims.aud, ["rag", "audit"]);
    assert!(claims.exp > claims.get("iat").and_then(|v| v.as_u64()).expect("iat"));

    // ValidateJWTSVID says the same.
    let token = all.svids[0].svid.clone();
    let ok = client
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "rag".into(),
            svid: token.clone(),
        }))
        .await
        .expect("valid")
        .into_inner();
    assert_eq!(ok.spiffe_id, id("/w"));
    let claims = ok.claims.expect("claims");
    assert!(claims.fields.contains_key("aud") && claims.fields.contains_key("exp"));
    for (audience, svid, what) in [
        ("other", token.as_str(), "wrong audience"),
        ("rag", "not.a.token", "garbage"),
        ("rag", "", "empty"),
        ("", token.as_str(), "no audience"),
    ] {
        let status = client
            .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
                audience: audience.into(),
                svid: svid.into(),
            }))
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    }
    let mut tampered = token.clone();
    tampered.insert(token.len() / 2, 'A');
    let status = client
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "rag".into(),
            svid: tampered,
        }))
        .await
        .expect_err("tampered");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_push_fresh_svids_and_bundle_changes_as_full_state() {
    let t = TestCa::new();
    let sock = t.socket("w");
    let _api = serve(
        &t.ca,
        vec![registration(&sock, "/w", None)],
        Duration::from_secs(4),
    )
    .await;
    let mut client = raw_client(&sock).await;
    let mut svids = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect("stream")
        .into_inner();
    let mut bundles = client
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await
        .expect("stream")
        .into_inner();
    let next = |what: &'static str| {
        move |r: Result<Result<Option<X509svidResponse>, tonic::Status>, _>| {
            r.unwrap_or_else(|_| panic!("{what}: nothing within the deadline"))
                .expect("stream ok")
                .expect("stream open")
        }
    };
    let deadline = Duration::from_secs(20);
    let first = next("first")(tokio::time::timeout(deadline, svids.message()).await);
    let leaf1 = check_full_state(&first, &t, "/w");
    assert!(first.federated_bundles.is_empty());
    let second = next("rotation")(tokio::time::timeout(deadline, svids.message()).await);
    let leaf2 = check_full_state(&second, &t, "/w");
    assert_ne!(leaf1, leaf2, "a fresh SVID, not a repeat");

    let b1 = tokio::time::timeout(deadline, bundles.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("first bundles");
    let own_key = format!("spiffe://{TD}");
    assert_eq!(b1.bundles.len(), 1);
    assert_eq!(
        split_der(&b1.bundles[&own_key]),
        vec![t.ca.certificate().clone()]
    );

    // Federate a partner domain: both streams push it without being re-opened.
    let partner = TestCa::new_in_domain("partner.org");
    let mut fed = BTreeMap::new();
    fed.insert(
        TrustDomain::new("partner.org").expect("td"),
        partner.bundle(),
    );
    t.ca.set_federated_bundles(fed).expect("federate");
    let b2 = tokio::time::timeout(deadline, bundles.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("second bundles");
    assert_eq!(b2.bundles.len(), 2);
    assert_eq!(
        split_der(&b2.bundles["spiffe://partner.org"]),
        partner.bundle()
    );
    loop {
        let msg = next("federated")(tokio::time::timeout(deadline, svids.message()).await);
        check_full_state(&msg, &t, "/w");
        if let Some(b) = msg.federated_bundles.get("spiffe://partner.org") {
            assert_eq!(split_der(b), partner.bundle());
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_survives_restarts_and_keeps_its_key_private() {
    let t = TestCa::new();
    let sock = t.socket("w");
    let api = serve(&t.ca, vec![registration(&sock, "/w", None)], HOUR).await;
    let client = spiffe::WorkloadApiClient::connect_to(endpoint(&sock))
        .await
        .expect("client");
    let before = client.fetch_x509_svid().await.expect("SVID");
    drop(client);
    api.shutdown().await;
    let root_before = t.ca.certificate().clone();

    // A restarted control plane: the CA is loaded from data_dir, the socket bound again.
    let ca = TestCa::load(t.dir.path());
    assert_eq!(ca.certificate(), &root_before, "same root after restart");
    let _api = serve(&ca, vec![registration(&sock, "/w", None)], HOUR).await;
    let client = spiffe::WorkloadApiClient::connect_to(endpoint(&sock))
        .await
        .expect("client");
    let bundles = client.fetch_x509_bundles().await.expect("bundles");
    let chain = der_chain(&before);
    svid::validate(
        &chain[0],
        &chain[1..],
        &bundle_set_of(&bundles),
        UnixTime::now(),
        Usage::Server,
    )
    .expect("an SVID issued before the restart still validates");
    let mode = |p: &str| {
        std::fs::metadata(t.data_dir().join(p))
            .expect("stat")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("ca/ca.key"), 0o600);
    assert_eq!(mode("ca"), 0o700);
}
