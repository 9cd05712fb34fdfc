//! A certificate may sign another only if it is a CA whose keyUsage has keyCertSign
//! (RFC 5280 6.1.4 (k) and (n), X509-SVID 4.3). rustls-webpki leaves keyUsage on issuers to
//! the caller, so Warden checks it on every path that validates an SVID. The attack: an
//! intermediate with cA=true but keyUsage digitalSignature only, itself issued by the trust
//! domain's root, mints an SVID for any ID. It is refused here:
//! - by X509-SVID validation, directly and through the remembered-chain cache;
//! - as the workload's own SVID: from a Workload API agent (over a real socket) that serves
//!   one, nothing is installed;
//! - inbound, over a real socket: no byte reaches the app, `issuer_cannot_sign` counted and
//!   audited;
//! - outbound: an impostor upstream presenting the expected ID through such an intermediate
//!   gets no byte of the app's;
//! - at the control plane's API: an "admin" minted that way writes nothing; the refusal is
//!   logged and counted as `issuer_cannot_sign`.

mod common;
#[path = "support/harden.rs"]
mod harden;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::control::*;
use common::pki::{Ca, Svid};
use common::*;
use harden::*;
use rcgen::KeyUsagePurpose;
use rustls::pki_types::UnixTime;
use tokio::io::AsyncReadExt;
use warden_identity::source::{SourceEvent, SvidSource};
use warden_identity::svid::{SignerDefect, SvidError, Usage, validate};
use warden_identity::{HandshakeFailure, Identity, WorkloadApiSource};
use warden_proto::control::v1 as pb;
use warden_proto::control::v1::policy_service_client::PolicyServiceClient;
use warden_proto::workload::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use warden_proto::workload::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svid, X509svidRequest,
    X509svidResponse,
};

/// The body of `GET path` on an HTTP listener (the control plane's admin listener).
async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::time::timeout(DEADLINE, tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut raw))
        .await
        .expect("answer in time")
        .expect("read");
    String::from_utf8_lossy(&raw).into_owned()
}

/// The intermediate of the attack: a CA that may only sign data, not certificates.
fn signing_only(ca: &Ca) -> Ca {
    ca.intermediate("signing-only", vec![KeyUsagePurpose::DigitalSignature])
}

fn check(bundle: &Ca, svid: &Svid, usage: Usage) -> Result<String, SvidError> {
    validate(
        &svid.chain[0],
        &svid.chain[1..],
        &Ca::bundles(&[bundle]),
        UnixTime::now(),
        usage,
    )
    .map(|id| id.to_string())
}

fn cannot_sign(e: &SvidError, want: SignerDefect) -> bool {
    matches!(e, SvidError::IssuerCannotSign { defect, .. } if *defect == want)
}

#[test]
fn every_certificate_that_signs_must_be_allowed_to_sign_certificates() {
    let root = Ca::new(TD);
    let good = id("/ns/rag/sa/retriever");

    // A proper intermediate, and one below another: valid.
    let proper = root.intermediate(
        "proper",
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
    );
    assert_eq!(
        check(&root, &proper.svid(&good), Usage::Client).expect("proper"),
        good
    );
    let deeper = proper.intermediate("deeper", vec![KeyUsagePurpose::KeyCertSign]);
    assert_eq!(
        check(&root, &deeper.svid(&good), Usage::Server).expect("deeper"),
        good
    );

    // keyUsage without keyCertSign, for both usages.
    for usage in [Usage::Client, Usage::Server] {
        let err = check(&root, &signing_only(&root).svid(&good), usage).expect_err("no certSign");
        assert!(cannot_sign(&err, SignerDefect::NoKeyCertSign), "{err:?}");
        assert_eq!(err.failure(), HandshakeFailure::IssuerCannotSign);
        assert!(err.to_string().contains("keyCertSign"), "{err}");
    }
    // No keyUsage at all on an intermediate (X509-SVID requires keyCertSign).
    let no_ku = root.intermediate("no-key-usage", vec![]);
    let err = check(&root, &no_ku.svid(&good), Usage::Client).expect_err("no keyUsage");
    assert!(cannot_sign(&err, SignerDefect::NoKeyUsage), "{err:?}");
    // A good intermediate under a bad one: the bad one is still in the path.
    let under_bad = signing_only(&root).intermediate("under", vec![KeyUsagePurpose::KeyCertSign]);
    let err = check(&root, &under_bad.svid(&good), Usage::Client).expect_err("bad above");
    assert!(cannot_sign(&err, SignerDefect::NoKeyCertSign), "{err:?}");

    // The trust anchor: without keyCertSign it signs nothing; without keyUsage at all it is
    // accepted (RFC 5280 puts an anchor's extensions outside path validation).
    let weak_root = Ca::root_with_key_usage(TD, vec![KeyUsagePurpose::DigitalSignature]);
    let err = check(&weak_root, &weak_root.svid(&good), Usage::Client).expect_err("anchor");
    assert!(cannot_sign(&err, SignerDefect::NoKeyCertSign), "{err:?}");
    let bare_root = Ca::root_with_key_usage(TD, vec![]);
    assert_eq!(
        check(&bare_root, &bare_root.svid(&good), Usage::Client).expect("bare anchor"),
        good
    );
}

#[test]
fn the_remembered_chain_cache_never_holds_a_chain_through_a_non_signing_issuer() {
    let root = Ca::new(TD);
    let me = root.identity(&id("/vectordb"), &[]);
    let bad = signing_only(&root).svid(&id("/app"));
    for _ in 0..2 {
        let err = me
            .validate_peer(
                &bad.chain[0],
                &bad.chain[1..],
                UnixTime::now(),
                Usage::Client,
            )
            .expect_err("refused every time");
        assert!(cannot_sign(&err, SignerDefect::NoKeyCertSign), "{err:?}");
    }
    assert_eq!(me.validated_chains(), 0);
    assert_eq!(me.validated_chain_hits(), 0);
}

/// A Workload API that hands out `svid` (with `root` as the bundle) to every caller, as a
/// compromised or misconfigured agent would: no check of its own on what it serves.
struct FakeAgent {
    response: X509svidResponse,
}

type SvidStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<X509svidResponse, tonic::Status>> + Send>,
>;
type BundleStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<X509BundlesResponse, tonic::Status>> + Send>,
>;
type JwtBundleStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<JwtBundlesResponse, tonic::Status>> + Send>,
>;

#[tonic::async_trait]
impl SpiffeWorkloadApi for FakeAgent {
    type FetchX509SVIDStream = SvidStream;
    type FetchX509BundlesStream = BundleStream;
    type FetchJWTBundlesStream = JwtBundleStream;

    async fn fetch_x509svid(
        &self,
        _: tonic::Request<X509svidRequest>,
    ) -> Result<tonic::Response<SvidStream>, tonic::Status> {
        // One answer, then the stream stays open as an agent's does.
        let first = tokio_stream::once(Ok(self.response.clone()));
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::StreamExt::chain(first, tokio_stream::pending()),
        )))
    }

    async fn fetch_x509_bundles(
        &self,
        _: tonic::Request<X509BundlesRequest>,
    ) -> Result<tonic::Response<BundleStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }

    async fn fetch_jwtsvid(
        &self,
        _: tonic::Request<JwtsvidRequest>,
    ) -> Result<tonic::Response<JwtsvidResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }

    async fn fetch_jwt_bundles(
        &self,
        _: tonic::Request<JwtBundlesRequest>,
    ) -> Result<tonic::Response<JwtBundleStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }

    async fn validate_jwtsvid(
        &self,
        _: tonic::Request<ValidateJwtsvidRequest>,
    ) -> Result<tonic::Response<ValidateJwtsvidResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }
}

/// Serves `svid` on a fresh Unix socket; returns its `unix://` endpoint.
async fn fake_agent(dir: &std::path::Path, root: &Ca, svid: &Svid, path: &str) -> String {
    let socket = dir.join("agent.sock");
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind agent socket");
    let response = X509svidResponse {
        svids: vec![X509svid {
            spiffe_id: id(path),
            x509_svid: svid.chain.iter().flat_map(|c| c.to_vec()).collect(),
            x509_svid_key: svid.key.secret_pkcs8_der().to_vec(),
            bundle: root.cert.to_vec(),
            hint: String::new(),
        }],
        ..Default::default()
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SpiffeWorkloadApiServer::new(FakeAgent { response }))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    format!("unix://{}", socket.display())
}

/// The first thing a Workload API source reports about what the agent served.
async fn first_event(endpoint: String) -> SourceEvent {
    let source = Box::new(WorkloadApiSource {
        endpoint: Some(endpoint),
        spiffe_id: None,
    });
    let mut handle = source.start();
    tokio::time::timeout(DEADLINE, handle.events.recv())
        .await
        .expect("the source reports within the deadline")
        .expect("the source is running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_own_svid_issued_through_a_non_signing_intermediate_is_not_installed() {
    let root = Ca::new(TD);
    let path = "/ns/rag/sa/vectordb";
    // The same agent serving a good SVID: it is installed (the harness works).
    let dir = tempfile::tempdir().expect("tmp");
    let good = fake_agent(dir.path(), &root, &root.svid(&id(path)), path).await;
    assert!(
        matches!(first_event(good).await, SourceEvent::Updated(ref i) if i.spiffe_id().to_string() == id(path)),
        "a good SVID from the agent was not installed"
    );
    // One minted through a CA without keyCertSign: rejected, saying why, never installed.
    let dir = tempfile::tempdir().expect("tmp");
    let forged = signing_only(&root).svid(&id(path));
    let bad = fake_agent(dir.path(), &root, &forged, path).await;
    // Two layers refuse it: the `spiffe` client parses the chain and drops an update whose
    // signing certificate lacks keyCertSign (no initial sync), and Warden's own check runs
    // on whatever that client passes on (`Identity::from_der`, below).
    match first_event(bad).await {
        SourceEvent::Rejected { reason } => {
            assert!(
                reason.contains("keyCertSign"),
                "rejected without why: {reason}"
            )
        }
        SourceEvent::Unavailable { reason } => assert!(
            reason.contains("initial synchronization"),
            "not the refused sync: {reason}"
        ),
        SourceEvent::Updated(_) => panic!("own SVID through a non-signing CA was installed"),
    }
    // Warden's own check, as the Workload API and files sources build an identity.
    let err = Identity::from_der(
        forged.chain.clone(),
        forged.key_der(),
        Ca::bundles(&[&root]),
    )
    .expect_err("own SVID through a non-signing CA accepted");
    assert!(err.to_string().contains("keyCertSign"), "{err}");
}

#[tokio::test]
async fn inbound_refuses_a_client_svid_minted_by_a_non_signing_intermediate() {
    let t = Target::start("").await;
    let forged = signing_only(&t.ca).svid(&good_id());
    let cfg = raw_client_config(Some((&forged.chain, forged.key_der())), TLS13);
    let res = tls_exchange(t.addr, cfg, b"exfiltrate").await;
    assert!(res.is_err(), "forged client was served: {res:?}");
    assert_eq!(t.wait_handshakes("issuer_cannot_sign", 1).await, 1);
    let r = t.assert_failure_audited("issuer_cannot_sign").await;
    assert!(
        r["detail"]
            .as_str()
            .is_some_and(|d| d.contains("keyCertSign")),
        "audit detail does not say why: {r}"
    );
    assert_eq!(t.app.accepts(), 0, "a byte reached the app");
    t.assert_good_client_served().await;
    assert_eq!(t.app.accepts(), 1);
}

/// A TLS server presenting `svid` (any chain, unchecked) that counts the application bytes
/// it receives.
async fn impostor(svid: &Svid) -> (SocketAddr, Arc<AtomicUsize>) {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(TLS13)
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(svid.chain.clone(), svid.key_der())
    .expect("server cert");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let received = Arc::new(AtomicUsize::new(0));
    let count = received.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    count.fetch_add(n, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, received)
}

#[tokio::test]
async fn outbound_sends_nothing_to_an_upstream_whose_svid_a_non_signing_intermediate_minted() {
    let ca = Ca::new(TD);
    let llm = id("/ns/rag/sa/llm");
    let (upstream, received) = impostor(&signing_only(&ca).svid(&llm)).await;
    let dir = tempfile::tempdir().expect("tmp");
    let audit = dir.path().join("audit.jsonl");
    let config = format!(
        "{}\n[audit]\npath = \"{}\"\n",
        outbound_config(upstream, &llm),
        audit.display()
    );
    let a = sidecar(&config, ca.identity(&id("/ns/rag/sa/retriever"), &[])).await;
    let res = plain_exchange(a.outbound_addr("svc").expect("a"), b"prompt with secrets").await;
    assert!(
        matches!(&res, Ok(v) if v.is_empty()) || res.is_err(),
        "got an answer from the impostor: {res:?}"
    );
    let want = [("direction", "outbound"), ("result", "issuer_cannot_sign")];
    wait_metric(&a, "warden_tls_handshakes_total", &want, 1).await;
    wait_until("outbound failure audited with why", DEADLINE, || {
        audit_records(&audit).iter().any(|r| {
            r["event"] == "handshake_failure"
                && r["direction"] == "outbound"
                && r["reason"] == "issuer_cannot_sign"
                && r["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("keyCertSign"))
        })
    })
    .await;
    assert_eq!(
        received.load(Ordering::SeqCst),
        0,
        "the app's bytes reached the impostor"
    );
}

/// A policy API client presenting `svid` as is (no local validation of its own chain, as
/// an attacker's client would not do any), trusting any server. It dials once: tonic's
/// channel reconnects after the server drops the connection, and a second handshake would
/// make the count of refused handshakes depend on timing.
async fn forged_client(
    addr: SocketAddr,
    svid: &Svid,
) -> Option<PolicyServiceClient<tonic::transport::Channel>> {
    let mut config = (*raw_client_config(Some((&svid.chain, svid.key_der())), TLS13)).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5));
    let dialled = Arc::new(AtomicBool::new(false));
    let service = tower::service_fn(move |_uri| {
        let connector = connector.clone();
        let first = !dialled.swap(true, Ordering::SeqCst);
        async move {
            if !first {
                return Err(std::io::Error::other("the forged client dials only once"));
            }
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let name = rustls::pki_types::ServerName::try_from("cp.invalid").expect("name");
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    endpoint
        .connect_with_connector(service)
        .await
        .ok()
        .map(PolicyServiceClient::new)
}

#[tokio::test]
async fn the_control_plane_refuses_an_admin_id_minted_by_a_non_signing_intermediate() {
    let ca = Ca::new(TD);
    let cp = CpProcess::start(&ca);
    let mut admin = cp.admin().await;
    let forged = signing_only(&ca).svid(&id(ADMIN_PATH));
    let policy = inbound_policy("/vectordb", &["/attacker"]);
    let written = match forged_client(cp.addr, &forged).await {
        None => false,
        Some(mut client) => client
            .put_policy(pb::PutPolicyRequest {
                policy: Some(policy),
                ..Default::default()
            })
            .await
            .is_ok(),
    };
    assert!(!written, "a forged admin wrote a policy");
    let listed = admin
        .list_policies(pb::ListPoliciesRequest::default())
        .await
        .expect("real admin lists");
    assert!(
        listed.into_inner().policies.is_empty(),
        "something was written"
    );
    wait_until(
        "the refused handshake is audited with why",
        DEADLINE,
        || {
            cp.log().lines().any(|l| {
                l.contains("api_handshake")
                    && l.contains("issuer_cannot_sign")
                    && l.contains("keyCertSign")
            })
        },
    )
    .await;
    // And counted under its own reason on the control plane's metrics.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let metrics = http_get(cp.admin_addr, "/metrics").await;
        if metrics.contains(
            "warden_control_api_handshake_failures_total{result=\"issuer_cannot_sign\"} 1",
        ) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the refused handshake is not counted: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The real admin still writes.
    put(&mut admin, inbound_policy("/vectordb", &["/app"]), None)
        .await
        .expect("real admin writes");
}
