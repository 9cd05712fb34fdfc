//! The `[[jwt]]` key sources behind the sidecar's `Jwt` registry, in process (the HTTP
//! listener's own tests cover the same end to end):
//!
//! - a `jwks_file` rotation: a token with a new `kid` validates once the file changes, with
//!   no restart; a bad new file keeps the last good keys; a bad file at start is an error;
//! - a `jwks_url` on a tiny HTTPS server with a test CA: an unknown `kid` causes one
//!   refetch (not one per token); a server that fails (500, garbage, gone) leaves the last
//!   good keys in force; TLS 1.2-only servers are reached too;
//! - `spiffe = true`: JWT-SVIDs minted by the built-in CA's Workload API validate with the
//!   JWT bundles from the same API's `FetchJWTBundles` stream;
//! - every load is counted in `warden_jwks_reloads_total{issuer,result}`.
//!
//! Nothing here waits for a fixed time: each step awaits the registry's reload status or
//! the test server's request count.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use warden_identity::IdentityConfig;
use warden_jwt::mint::Es256Signer;
use warden_jwt::{JwtError, ValidatorConfig};
use warden_sidecar::Telemetry;
use warden_sidecar::config::{JwksSource, JwtConfig};
use warden_sidecar::jwks::{JwksStartError, Jwt, ReloadStatus};

const ISS: &str = "https://idp.example.com";
const AUD: &str = "rag-retriever";
const WAIT: Duration = Duration::from_secs(20);

fn signer() -> Es256Signer {
    Es256Signer::from_pkcs8(&Es256Signer::generate_pkcs8().expect("key")).expect("signer")
}

fn jwks(signers: &[&Es256Signer]) -> String {
    json!({"keys": signers.iter().map(|s| s.public_jwk()).collect::<Vec<Value>>()}).to_string()
}

fn token(signer: &Es256Signer) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims =
        json!({"iss": ISS, "aud": AUD, "sub": "alice", "exp": now + 600, "groups": ["finance"]});
    signer
        .sign(claims.as_object().expect("object"))
        .expect("sign")
}

fn identity() -> IdentityConfig {
    IdentityConfig::Files {
        cert: "unused".into(),
        key: "unused".into(),
        bundle: "unused".into(),
    }
}

fn issuer(keys: JwksSource) -> JwtConfig {
    JwtConfig {
        name: "corp-idp".into(),
        validator: ValidatorConfig::new(ISS, vec![AUD.into()]),
        keys,
    }
}

/// Replaces `path` the way Kubernetes updates a mounted file: a new file renamed over it.
fn replace(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

async fn wait_status(
    rx: &mut watch::Receiver<ReloadStatus>,
    what: &str,
    done: impl FnMut(&ReloadStatus) -> bool,
) -> ReloadStatus {
    let waited = tokio::time::timeout(WAIT, rx.wait_for(done))
        .await
        .map(|r| r.map(|status| status.clone()));
    match waited {
        Ok(status) => status.expect("registry alive"),
        Err(_) => panic!("timed out waiting for {what}: {:?}", *rx.borrow()),
    }
}

fn reloads_metric(telemetry: &Telemetry, result: &str) -> u64 {
    reloads_metric_of(telemetry, "corp-idp", result)
}

fn reloads_metric_of(telemetry: &Telemetry, issuer: &str, result: &str) -> u64 {
    let text = telemetry.metrics().encode().expect("metrics");
    let prefix = format!("warden_jwks_reloads_total{{issuer=\"{issuer}\",result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().expect("count"))
}

#[tokio::test]
async fn a_jwks_file_rotation_is_picked_up_without_restart_and_a_bad_file_keeps_the_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("corp-idp-jwks.json");
    let (old, new) = (signer(), signer());
    replace(&path, &jwks(&[&old]));
    let telemetry = Telemetry::default();
    let jwt = Jwt::start(
        &[issuer(JwksSource::File(path.clone()))],
        &identity(),
        &telemetry,
    )
    .await
    .expect("start");
    let mut status = jwt.reloads("corp-idp").expect("issuer");
    assert_eq!(status.borrow_and_update().ok, 1, "loaded at start");
    let claims = jwt.validate("corp-idp", &token(&old)).expect("old key");
    assert!(claims.has_any("groups", &["finance".into()]));
    assert_eq!(
        jwt.validate("corp-idp", &token(&new)),
        Err(JwtError::UnknownKid)
    );
    assert_eq!(
        jwt.validate("other", &token(&old))
            .map_err(|e| e.as_label()),
        Err("unknown_issuer")
    );

    // The identity provider publishes its next key beside the current one.
    replace(&path, &jwks(&[&old, &new]));
    wait_status(&mut status, "the new file", |s| s.ok >= 2).await;
    jwt.validate("corp-idp", &token(&new))
        .expect("new key, no restart");
    jwt.validate("corp-idp", &token(&old))
        .expect("old key still there");

    // A half-written or broken file is refused; the keys in force stay.
    replace(&path, "{\"keys\": [");
    let s = wait_status(&mut status, "the broken file", |s| s.failed >= 1).await;
    assert!(
        s.last_error.as_deref().unwrap_or("").contains("not a JWKS"),
        "{s:?}"
    );
    jwt.validate("corp-idp", &token(&new))
        .expect("last good keys kept");
    replace(&path, r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#);
    wait_status(&mut status, "a set of only unusable keys", |s| {
        s.failed >= 2
    })
    .await;
    jwt.validate("corp-idp", &token(&old))
        .expect("last good keys kept");

    // The rotation completes: the old key is withdrawn.
    replace(&path, &jwks(&[&new]));
    wait_status(&mut status, "the last file", |s| s.ok >= 3).await;
    assert_eq!(
        jwt.validate("corp-idp", &token(&old)),
        Err(JwtError::UnknownKid)
    );
    jwt.validate("corp-idp", &token(&new)).expect("new key");
    assert_eq!(jwt.kids("corp-idp"), [new.kid()]);

    assert_eq!(reloads_metric(&telemetry, "ok"), 3);
    assert_eq!(reloads_metric(&telemetry, "invalid"), 2);
}

#[tokio::test]
async fn a_bad_jwks_file_at_start_is_a_start_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.json");
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "[]").expect("write");
    let hmac_only = dir.path().join("hmac.json");
    std::fs::write(&hmac_only, r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).expect("write");
    for path in [missing, broken, hmac_only] {
        let e = Jwt::start(
            &[issuer(JwksSource::File(path.clone()))],
            &identity(),
            &Telemetry::default(),
        )
        .await
        .expect_err("bad file");
        assert!(matches!(e, JwksStartError::File { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains(&path.display().to_string()) && text.contains("corp-idp"),
            "{text}"
        );
    }
}

// ---- a tiny HTTPS JWKS server ---------------------------------------------------------

/// What the server answers.
#[derive(Clone)]
enum Answer {
    Jwks(String),
    Status(u16),
    Garbage,
}

struct JwksServer {
    port: u16,
    ca_file: PathBuf,
    answer: Arc<Mutex<Answer>>,
    requests: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl JwksServer {
    /// Serves `answer` on 127.0.0.1 as `localhost`, with a certificate from a fresh test
    /// CA (written to `ca_file`). `tls12_only`: the server speaks TLS 1.2 and nothing newer.
    async fn start(answer: Answer, tls12_only: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = KeyPair::generate().expect("key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).expect("CA");
        let key = KeyPair::generate().expect("key");
        let leaf = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        let cert = leaf
            .signed_by(&key, &Issuer::from_params(&ca, &ca_key))
            .expect("server cert");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).expect("write CA");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13]
        };
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("server config");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let answer = Arc::new(Mutex::new(answer));
        let (count, requests) = watch::channel(0usize);
        let served = answer.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                count.send_modify(|n| *n += 1);
                let answer = served.lock().expect("lock").clone();
                let (status, body) = match answer {
                    Answer::Jwks(body) => ("200 OK".to_owned(), body),
                    Answer::Status(code) => (format!("{code} Oops"), "{}".to_owned()),
                    Answer::Garbage => ("200 OK".to_owned(), "<html>not json</html>".to_owned()),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        });
        Self {
            port,
            ca_file,
            answer,
            requests,
            task,
            _dir: dir,
        }
    }

    fn set(&self, answer: Answer) {
        *self.answer.lock().expect("lock") = answer;
    }

    fn source(&self, refresh: Duration) -> JwksSource {
        JwksSource::Url {
            url: format!("https://localhost:{}/.well-known/jwks.json", self.port),
            ca: self.ca_file.clone(),
            refresh,
        }
    }

    fn requests(&self) -> usize {
        *self.requests.borrow()
    }
}

#[tokio::test]
async fn an_unknown_kid_refetches_the_jwks_url_once_not_once_per_token() {
    let (a, b, stranger) = (signer(), signer(), signer());
    let server = JwksServer::start(Answer::Jwks(jwks(&[&a])), false).await;
    let telemetry = Telemetry::default();
    // The periodic refresh is far away: every fetch after the first is a refetch.
    let jwt = Jwt::start(
        &[issuer(server.source(Duration::from_secs(3600)))],
        &identity(),
        &telemetry,
    )
    .await
    .expect("start");
    let mut status = jwt.reloads("corp-idp").expect("issuer");
    wait_status(&mut status, "the first fetch", |s| s.ok >= 1).await;
    assert_eq!(server.requests(), 1);
    jwt.validate("corp-idp", &token(&a)).expect("key a");

    // The identity provider rotates to b; the first token signed by b waits for one refetch.
    server.set(Answer::Jwks(jwks(&[&a, &b])));
    jwt.validate_fresh("corp-idp", &token(&b))
        .await
        .expect("b after one refetch");
    assert_eq!(server.requests(), 2);
    assert_eq!(status.borrow().ok, 2);

    // Tokens naming a kid nobody published: refused, and within 30 s of the last refetch
    // none of them causes another (validate_fresh does not wait either).
    for _ in 0..20 {
        assert_eq!(
            jwt.validate("corp-idp", &token(&stranger)),
            Err(JwtError::UnknownKid)
        );
    }
    assert_eq!(
        jwt.validate_fresh("corp-idp", &token(&stranger)).await,
        Err(JwtError::UnknownKid)
    );
    assert_eq!(
        server.requests(),
        2,
        "rate-limited: no fetch per unknown kid"
    );
    jwt.validate("corp-idp", &token(&a)).expect("a still valid");
    assert_eq!(reloads_metric(&telemetry, "ok"), 2);
    server.task.abort();
}

#[tokio::test]
async fn a_jwks_url_that_fails_keeps_the_last_good_keys() {
    let a = signer();
    // TLS 1.2 only: the JWKS client accepts 1.2 for identity providers without 1.3.
    let server = JwksServer::start(Answer::Jwks(jwks(&[&a])), true).await;
    let telemetry = Telemetry::default();
    let jwt = Jwt::start(
        &[issuer(server.source(Duration::from_secs(1)))],
        &identity(),
        &telemetry,
    )
    .await
    .expect("start");
    let mut status = jwt.reloads("corp-idp").expect("issuer");
    wait_status(&mut status, "the first fetch", |s| s.ok >= 1).await;
    jwt.validate("corp-idp", &token(&a)).expect("key a");

    server.set(Answer::Status(500));
    let s = wait_status(&mut status, "a failed fetch", |s| s.failed >= 1).await;
    assert!(
        s.last_error.as_deref().unwrap_or("").contains("500"),
        "{s:?}"
    );
    jwt.validate("corp-idp", &token(&a))
        .expect("kept after HTTP 500");

    server.set(Answer::Garbage);
    let s = wait_status(&mut status, "an invalid answer", |s| s.failed >= 2).await;
    assert!(
        s.last_error.as_deref().unwrap_or("").contains("not a JWKS"),
        "{s:?}"
    );
    jwt.validate("corp-idp", &token(&a))
        .expect("kept after garbage");

    let JwksServer { task, .. } = server;
    task.abort();
    let _ = task.await;
    wait_status(&mut status, "the server gone", |s| s.failed >= 3).await;
    jwt.validate("corp-idp", &token(&a))
        .expect("kept while unreachable");
    assert!(reloads_metric(&telemetry, "invalid") >= 1);
    assert!(reloads_metric(&telemetry, "unavailable") >= 2);
}

#[tokio::test]
async fn a_jwks_url_with_an_untrusted_certificate_loads_nothing() {
    let a = signer();
    let server = JwksServer::start(Answer::Jwks(jwks(&[&a])), false).await;
    let other = JwksServer::start(Answer::Jwks(jwks(&[&a])), false).await;
    // Trust another CA than the one that signed the server's certificate.
    let source = JwksSource::Url {
        url: format!("https://localhost:{}/keys", server.port),
        ca: other.ca_file.clone(),
        refresh: Duration::from_secs(3600),
    };
    let jwt = Jwt::start(&[issuer(source)], &identity(), &Telemetry::default())
        .await
        .expect("start");
    let mut status = jwt.reloads("corp-idp").expect("issuer");
    let s = wait_status(&mut status, "the failed fetch", |s| s.failed >= 1).await;
    assert!(
        s.last_error.as_deref().unwrap_or("").contains("TLS"),
        "{s:?}"
    );
    assert_eq!(jwt.validate("corp-idp", &token(&a)), Err(JwtError::NoKeys));
    let bad_ca = JwksSource::Url {
        url: "https://localhost:1/keys".into(),
        ca: PathBuf::from("/nonexistent/ca.pem"),
        refresh: Duration::from_secs(3600),
    };
    let e = Jwt::start(&[issuer(bad_ca)], &identity(), &Telemetry::default())
        .await
        .expect_err("unreadable CA");
    assert!(matches!(e, JwksStartError::Ca { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_svids_of_the_built_in_ca_validate_with_spiffe_keys() {
    use common::workload_api::{TestCa, endpoint, raw_client, registration, serve, with_header};
    use warden_proto::workload::JwtsvidRequest;

    let t = TestCa::new();
    let sock = t.socket("app");
    let _api = serve(
        &t.ca,
        vec![registration(&sock, "/ns/rag/sa/app", None)],
        Duration::from_secs(3600),
    )
    .await;
    let config = JwtConfig {
        name: "mesh".into(),
        validator: ValidatorConfig::jwt_svid(vec![
            "spiffe://example.org/ns/rag/sa/retriever".into(),
        ]),
        keys: JwksSource::Spiffe,
    };
    let identity = IdentityConfig::WorkloadApi {
        endpoint: Some(endpoint(&sock)),
        spiffe_id: None,
    };
    let telemetry = Telemetry::default();
    let jwt = Jwt::start(&[config], &identity, &telemetry)
        .await
        .expect("start");
    let mut status = jwt.reloads("mesh").expect("issuer");
    wait_status(&mut status, "the JWT bundles", |s| s.ok >= 1).await;
    assert_eq!(jwt.kids("mesh").len(), 1, "{:?}", jwt.kids("mesh"));

    // The calling workload asks its Workload API for a JWT-SVID for the retriever.
    let mut client = raw_client(&sock).await;
    let fetch = |audience: &str| {
        with_header(JwtsvidRequest {
            audience: vec![audience.to_owned()],
            spiffe_id: String::new(),
        })
    };
    let svid = client
        .fetch_jwtsvid(fetch("spiffe://example.org/ns/rag/sa/retriever"))
        .await
        .expect("JWT-SVID")
        .into_inner()
        .svids
        .remove(0);
    let claims = jwt.validate("mesh", &svid.svid).expect("valid JWT-SVID");
    assert_eq!(
        claims.sub.as_deref(),
        Some("spiffe://example.org/ns/rag/sa/app")
    );
    assert!(claims.iss.is_empty(), "JWT-SVIDs carry no fixed issuer");

    // One for someone else is refused here.
    let other = client
        .fetch_jwtsvid(fetch("spiffe://example.org/ns/rag/sa/other"))
        .await
        .expect("JWT-SVID")
        .into_inner()
        .svids
        .remove(0);
    assert_eq!(
        jwt.validate("mesh", &other.svid),
        Err(JwtError::WrongAudience)
    );

    // A JWT-SVID signed by another trust domain's CA has no bundle here.
    let foreign = TestCa::new_in_domain("partner.org");
    let foreign_sock = foreign.socket("x");
    let _foreign_api = serve(
        &foreign.ca,
        vec![warden_control::WorkloadRegistration {
            socket: foreign_sock.clone(),
            spiffe_id: warden_identity::SpiffeId::parse("spiffe://partner.org/ns/x").expect("id"),
            uid: None,
        }],
        Duration::from_secs(3600),
    )
    .await;
    let mut foreign_client = raw_client(&foreign_sock).await;
    let foreign_svid = foreign_client
        .fetch_jwtsvid(fetch("spiffe://example.org/ns/rag/sa/retriever"))
        .await
        .expect("JWT-SVID")
        .into_inner()
        .svids
        .remove(0);
    assert_eq!(
        jwt.validate("mesh", &foreign_svid.svid)
            .map_err(|e| e.as_label()),
        Err("unknown_trust_domain")
    );
    assert_eq!(reloads_metric_of(&telemetry, "mesh", "ok"), 1);
}
