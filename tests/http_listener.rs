//! HTTP listeners end to end, over real sockets: an in-process sidecar with an inbound
//! `protocol = "http"` listener in front of a real HTTP app, clients speaking HTTP/1.1 and
//! HTTP/2 over mTLS with SVIDs from the test CA, end-user tokens minted here and validated
//! against a JWKS file. The finance/marketing rule, every token refusal with its reason,
//! path tricks, XFCC, streaming, live policy pushes on keep-alive connections, and bad
//! input.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Map, Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, mpsc};

use common::pki::Ca;
use common::{TD, id, injected_identity, wait_until};
use warden_jwt::mint::Es256Signer;
use warden_policy::{PolicySnapshot, PolicySource};

const ISSUER: &str = "https://idp.example.com";
const AUDIENCE: &str = "rag-retriever";
const DEADLINE: Duration = Duration::from_secs(20);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the app saw of each request.
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<Value>>,
    count: AtomicUsize,
}

/// The app: HTTP/1.1 and h2c on 127.0.0.1. `/stream` answers two chunks, the second only
/// once the test says the first arrived (so streaming is proven without timing). Every
/// other path echoes what it saw as JSON.
struct App {
    addr: SocketAddr,
    seen: Arc<Seen>,
    release: mpsc::Sender<()>,
}

impl App {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Seen::default());
        let (release, rx) = mpsc::channel::<()>(4);
        let rx = Arc::new(Mutex::new(rx));
        let s = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (s, rx) = (s.clone(), rx.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (s, rx) = (s.clone(), rx.clone());
                        async move { Ok::<_, std::convert::Infallible>(app(req, s, rx).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            seen,
            release,
        }
    }

    fn count(&self) -> usize {
        self.seen.count.load(Ordering::SeqCst)
    }

    async fn last(&self) -> Value {
        self.seen
            .requests
            .lock()
            .await
            .last()
            .cloned()
            .unwrap_or(Value::Null)
    }
}

type AppBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

async fn app(
    req: Request<Incoming>,
    seen: Arc<Seen>,
    release: Arc<Mutex<mpsc::Receiver<()>>>,
) -> Response<AppBody> {
    seen.count.fetch_add(1, Ordering::SeqCst);
    let xfcc: Vec<String> = req
        .headers()
        .get_all("x-forwarded-client-cert")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    let record = json!({
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or(""),
        "xfcc": xfcc,
        "version": format!("{:?}", req.version()),
    });
    seen.requests.lock().await.push(record.clone());
    if req.uri().path() == "/stream/" || req.uri().path() == "/stream" {
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(2);
        tokio::spawn(async move {
            let _ = tx
                .send(Ok(Frame::data(Bytes::from_static(b"token-1 "))))
                .await;
            // The second chunk waits until the client has the first.
            let _ = release.lock().await.recv().await;
            let _ = tx
                .send(Ok(Frame::data(Bytes::from_static(b"token-2"))))
                .await;
        });
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        return Response::new(BodyExt::boxed(body));
    }
    Response::new(Full::new(Bytes::from(record.to_string())).boxed())
}

/// The identity provider: an ES256 key whose JWKS is in a file the sidecar reads.
struct Idp {
    signer: Es256Signer,
}

impl Idp {
    fn new() -> Self {
        let der = Es256Signer::generate_pkcs8().expect("key");
        Self {
            signer: Es256Signer::from_pkcs8(&der).expect("signer"),
        }
    }

    fn claims(&self, sub: &str, groups: &[&str]) -> Map<String, Value> {
        let Value::Object(map) = json!({
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": sub,
            "groups": groups,
            "iat": now(),
            "exp": now() + 600,
        }) else {
            unreachable!("a JSON object literal")
        };
        map
    }

    fn token(&self, claims: &Map<String, Value>) -> String {
        self.signer.sign(claims).expect("sign")
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A sidecar with an http listener `docs` (allowing the app workload) in front of `app`,
/// its JWKS file in `dir`, the finance/marketing routes in force.
struct Stack {
    ca: Ca,
    idp: Idp,
    app: App,
    sidecar: warden_sidecar::Sidecar,
    addr: SocketAddr,
    audit: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

const ROUTES: &str = r#"
[[workload]]
spiffe_id = "spiffe://example.org/ns/rag/sa/retriever"
inbound.docs = ["spiffe://example.org/ns/rag/sa/app"]

[[workload.route]]
listener = "docs"
path_prefix = "/docs/finance/"
methods = ["GET"]
peers = ["spiffe://example.org/ns/rag/sa/app"]
users = { jwt = "corp-idp", claims = { groups = ["finance"] } }

[[workload.route]]
listener = "docs"
path_prefix = "/docs/marketing/"
users = { jwt = "corp-idp", claims = { groups = ["marketing", "finance"] } }

[[workload.route]]
listener = "docs"
path_prefix = "/stream/"
"#;

impl Stack {
    async fn start() -> Self {
        Self::start_with("", "").await
    }

    /// `listener` is appended to the http listener's table, `extra` to the config.
    async fn start_with(listener: &str, extra: &str) -> Self {
        let ca = Ca::new(TD);
        let idp = Idp::new();
        let app = App::start().await;
        let dir = tempfile::tempdir().expect("tmp");
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, idp.signer.jwks().to_string()).expect("jwks");
        let audit = dir.path().join("audit.jsonl");
        let toml = format!(
            r#"
{identity}
[[inbound]]
name = "docs"
listen = "127.0.0.1:0"
forward = "{app}"
protocol = "http"
forward_client_cert = "sanitize_set"
allow = ["{peer}"]
{listener}
[[jwt]]
name = "corp-idp"
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
jwks_file = "{jwks}"
[audit]
path = "{audit}"
{extra}
"#,
            identity = injected_identity(),
            app = app.addr,
            peer = id("/ns/rag/sa/app"),
            jwks = jwks.display(),
            audit = audit.display(),
        );
        let sidecar = common::sidecar(&toml, ca.identity(&id("/ns/rag/sa/retriever"), &[])).await;
        let addr = sidecar.inbound_addr("docs").expect("docs listener");
        let stack = Self {
            ca,
            idp,
            app,
            sidecar,
            addr,
            audit,
            _dir: dir,
        };
        stack.put(ROUTES);
        stack
    }

    fn put(&self, policy: &str) {
        let policy = warden_policy::parse_policy_file(policy)
            .expect("policy")
            .remove(0);
        let version = self.sidecar.policy().version() + 1;
        let mut policy = policy;
        policy.version = version;
        self.sidecar.apply_policy(PolicySnapshot::compile(
            Some(&policy),
            PolicySource::ControlPlane,
        ));
    }

    fn metric(&self, want: &[(&str, &str)]) -> u64 {
        let text = self.sidecar.telemetry().metrics().encode().expect("encode");
        text.lines()
            .filter(|l| l.starts_with("warden_http_requests_total{"))
            .filter(|l| {
                want.iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    async fn wait_audit(&self, pred: impl Fn(&Value) -> bool) -> Value {
        let mut found = None;
        wait_until("an audit record", DEADLINE, || {
            found = std::fs::read_to_string(&self.audit)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|r| pred(r));
            found.is_some()
        })
        .await;
        found.expect("found")
    }

    /// A client connection as the calling workload, speaking `alpn` (`h2` or `http/1.1`).
    async fn client(&self, alpn: &[u8]) -> Client {
        let svid = self.ca.svid(&id("/ns/rag/sa/app"));
        let mut config = (*common::raw_client_config(
            Some((&svid.chain, svid.key_der())),
            &[&rustls::version::TLS13],
        ))
        .clone();
        config.alpn_protocols = vec![alpn.to_vec()];
        let tcp = TcpStream::connect(self.addr).await.expect("connect");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(
                rustls::pki_types::ServerName::try_from("retriever").expect("name"),
                tcp,
            )
            .await
            .expect("mTLS handshake");
        let io = TokioIo::new(tls);
        if alpn == b"h2" {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("h2 handshake");
            tokio::spawn(conn);
            Client::H2(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("http1 handshake");
            tokio::spawn(conn);
            Client::H1(sender)
        }
    }
}

enum Client {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Client {
    async fn send(&mut self, req: Request<Full<Bytes>>) -> Response<Incoming> {
        match self {
            Client::H1(s) => {
                s.ready().await.expect("ready");
                s.send_request(req).await.expect("response")
            }
            Client::H2(s) => {
                s.ready().await.expect("ready");
                s.send_request(req).await.expect("response")
            }
        }
    }

    /// GET `path` with `token` (and extra headers): the status, the head and the body.
    async fn get(
        &mut self,
        path: &str,
        token: Option<&str>,
        extra: &[(&str, &str)],
    ) -> (StatusCode, Response<()>, Bytes) {
        let mut req = match self {
            Client::H1(_) => Request::get(path).header("host", "retriever"),
            Client::H2(_) => Request::get(format!("https://retriever{path}")),
        };
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let resp = self
            .send(req.body(Full::new(Bytes::new())).expect("request"))
            .await;
        let status = resp.status();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        (status, Response::from_parts(parts, ()), bytes)
    }
}

/// The finance/marketing rule, for both HTTP versions: finance reads finance documents,
/// marketing is refused (403), no token is 401 with a Bearer challenge; the app learns
/// the calling workload by XFCC, never a client's forged one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finance_reads_finance_documents_and_marketing_may_not() {
    let stack = Stack::start().await;
    let finance = stack.idp.token(&stack.idp.claims("alice", &["finance"]));
    let marketing = stack.idp.token(&stack.idp.claims("bob", &["marketing"]));
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let mut c = stack.client(alpn).await;
        let before = stack.app.count();
        let (status, _, body) = c
            .get(
                "/docs/finance/q3.pdf",
                Some(&finance),
                &[(
                    "x-forwarded-client-cert",
                    "By=spiffe://evil;URI=spiffe://example.org/ns/rag/sa/admin",
                )],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{alpn:?}: {body:?}");
        let seen = stack.app.last().await;
        assert_eq!(seen["path"], "/docs/finance/q3.pdf");
        assert_eq!(
            seen["xfcc"],
            json!([format!(
                "By={};URI={}",
                id("/ns/rag/sa/retriever"),
                id("/ns/rag/sa/app")
            )]),
            "the app sees the real peer, never the client's header"
        );
        let (status, _, _) = c.get("/docs/finance/q3.pdf", Some(&marketing), &[]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{alpn:?}");
        let (status, resp, _) = c.get("/docs/finance/q3.pdf", None, &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{alpn:?}");
        assert!(
            resp.headers()["www-authenticate"]
                .to_str()
                .is_ok_and(|v| v.starts_with("Bearer")),
        );
        // Marketing documents: both groups.
        let (status, _, _) = c.get("/docs/marketing/plan", Some(&marketing), &[]).await;
        assert_eq!(status, StatusCode::OK, "{alpn:?}");
        assert_eq!(
            stack.app.count(),
            before + 2,
            "refused requests reached the app"
        );
    }
    assert_eq!(
        stack.metric(&[("decision", "deny"), ("reason", "claims_mismatch")]),
        2
    );
    assert_eq!(
        stack.metric(&[("decision", "deny"), ("reason", "missing_token")]),
        2
    );
    let record = stack
        .wait_audit(|r| r["event"] == "http" && r["reason"] == "claims_mismatch")
        .await;
    assert_eq!(record["user"], "bob");
    assert_eq!(record["method"], "GET");
    assert_eq!(record["path"], "/docs/finance/q3.pdf");
    assert_eq!(record["peer_id"], id("/ns/rag/sa/app"));
    let allowed = stack
        .wait_audit(|r| r["event"] == "http" && r["decision"] == "allow")
        .await;
    assert_eq!(allowed["user"], "alice");
}

/// Every bad token is a 401 with its reason in the metric and the audit record; nothing
/// reaches the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_their_reason() {
    let stack = Stack::start().await;
    let idp = &stack.idp;
    let good = idp.claims("alice", &["finance"]);
    let with = |edit: &dyn Fn(&mut Map<String, Value>)| {
        let mut c = good.clone();
        edit(&mut c);
        idp.token(&c)
    };
    let other = Idp::new();
    let header = |alg: &str| b64(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
    let payload = b64(Value::Object(good.clone()).to_string().as_bytes());
    let genuine = idp.token(&good);
    let mut parts = genuine.split('.');
    let (h, _, s) = (
        parts.next().unwrap_or_default(),
        parts.next(),
        parts.next().unwrap_or_default(),
    );
    let mut tampered_claims = good.clone();
    tampered_claims.insert("groups".into(), json!(["finance", "admin"]));
    let tampered = format!(
        "{h}.{}.{s}",
        b64(Value::Object(tampered_claims).to_string().as_bytes())
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            with(&|c| {
                c.insert("exp".into(), json!(now() - 3600));
            }),
            "expired",
        ),
        (
            "not yet valid",
            with(&|c| {
                c.insert("nbf".into(), json!(now() + 3600));
            }),
            "not_yet_valid",
        ),
        (
            "wrong issuer",
            with(&|c| {
                c.insert("iss".into(), json!("https://evil.example"));
            }),
            "wrong_issuer",
        ),
        (
            "wrong audience",
            with(&|c| {
                c.insert("aud".into(), json!("other"));
            }),
            "wrong_audience",
        ),
        (
            "no audience",
            with(&|c| {
                c.remove("aud");
            }),
            "no_audience",
        ),
        (
            "alg none",
            format!("{}.{payload}.", header("none")),
            "bad_algorithm",
        ),
        (
            "HS256",
            format!(
                "{}.{payload}.{}",
                header("HS256"),
                b64(b"mac-with-the-public-key")
            ),
            "bad_algorithm",
        ),
        ("unknown kid", other.token(&good), "unknown_kid"),
        ("tampered", tampered, "bad_signature"),
    ];
    let mut c = stack.client(b"http/1.1").await;
    let before = stack.app.count();
    for (what, token, reason) in &cases {
        let before = stack.metric(&[("decision", "deny"), ("reason", reason)]);
        let (status, _, _) = c.get("/docs/finance/q3.pdf", Some(token), &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(
            stack.metric(&[("decision", "deny"), ("reason", reason)]),
            before + 1,
            "{what}: one deny with reason {reason}"
        );
    }
    assert_eq!(stack.app.count(), before, "a bad token reached the app");
    stack
        .wait_audit(|r| r["event"] == "http" && r["reason"] == "bad_signature")
        .await;
    // The next good request on the same connection is served.
    let (status, _, _) = c.get("/docs/finance/q3.pdf", Some(&genuine), &[]).await;
    assert_eq!(status, StatusCode::OK);
}

/// Paths are normalized before matching: tricks reach the right rule or a 400, never the
/// wrong rule; the app receives the normalized path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_never_reach_the_wrong_rule() {
    let stack = Stack::start().await;
    let finance = stack.idp.token(&stack.idp.claims("alice", &["finance"]));
    let marketing = stack.idp.token(&stack.idp.claims("bob", &["marketing"]));
    let mut c = stack.client(b"http/1.1").await;
    // marketing climbing into finance: the finance rule decides, and refuses.
    let (status, _, _) = c
        .get("/docs/marketing/../finance/q3.pdf", Some(&marketing), &[])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = c
        .get("/docs//marketing/./../finance/q3", Some(&marketing), &[])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // An encoded letter is the letter: finance may, and the app sees the plain path.
    let (status, _, _) = c.get("/docs/%66inance/q3.pdf", Some(&finance), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stack.app.last().await["path"], "/docs/finance/q3.pdf");
    let (status, _, _) = c.get("/docs/%66inance/q3.pdf", Some(&marketing), &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let before = stack.app.count();
    for trick in [
        "/docs/marketing%2F..%2Ffinance/q3",
        "/docs/marketing/%2e%2e/finance/q3",
        "/docs/marketing%5C..%5Cfinance/q3",
        "/docs/../../etc/passwd",
    ] {
        let (status, _, _) = c.get(trick, Some(&marketing), &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{trick}");
    }
    assert_eq!(stack.app.count(), before);
    assert_eq!(stack.metric(&[("reason", "bad_path")]), 4);
}

/// A policy push changes the decision of the next request on an open keep-alive
/// connection; streaming responses are relayed as the app produces them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_apply_to_the_next_request_and_responses_stream() {
    let stack = Stack::start().await;
    let marketing = stack.idp.token(&stack.idp.claims("bob", &["marketing"]));
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let mut c = stack.client(alpn).await;
        let mut req = Request::get(match c {
            Client::H1(_) => "/stream/".to_owned(),
            Client::H2(_) => "https://retriever/stream/".to_owned(),
        });
        if let Client::H1(_) = c {
            req = req.header("host", "retriever");
        }
        let resp = c
            .send(req.body(Full::new(Bytes::new())).expect("req"))
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        let first = tokio::time::timeout(DEADLINE, body.frame())
            .await
            .expect("the first chunk arrives while the app still holds the second")
            .expect("frame")
            .expect("frame ok");
        assert_eq!(
            first.into_data().expect("data"),
            Bytes::from_static(b"token-1 ")
        );
        stack.app.release.send(()).await.expect("release");
        let rest = body.collect().await.expect("rest").to_bytes();
        assert_eq!(rest, Bytes::from_static(b"token-2"));
    }
    let mut c = stack.client(b"http/1.1").await;
    let (status, _, _) = c.get("/docs/marketing/plan", Some(&marketing), &[]).await;
    assert_eq!(status, StatusCode::OK);
    // Marketing loses access: the same connection's next request is refused.
    stack.put(&ROUTES.replace("[\"marketing\", \"finance\"]", "[\"finance\"]"));
    let (status, _, _) = c.get("/docs/marketing/plan", Some(&marketing), &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A route on a listener that is not http is a policy error: deny everything.
    stack.put(&ROUTES.replace(
        "listener = \"docs\"\npath_prefix = \"/stream/\"",
        "listener = \"raw\"\npath_prefix = \"/stream/\"",
    ));
    assert!(
        !stack.sidecar.policy().has_policy(),
        "an unenforceable route was accepted"
    );
}

/// Malformed requests, oversized headers, a 1 MiB token: clear refusals, and the next
/// good request is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_the_next_request_served() {
    let stack = Stack::start().await;
    let finance = stack.idp.token(&stack.idp.claims("alice", &["finance"]));
    let huge = "a".repeat(1024 * 1024);
    let mut c = stack.client(b"http/1.1").await;
    let req = Request::get("/docs/finance/x")
        .header("host", "retriever")
        .header("authorization", format!("Bearer {huge}"))
        .body(Full::new(Bytes::new()))
        .expect("req");
    let status = match &mut c {
        Client::H1(s) => match s.send_request(req).await {
            Ok(r) => Some(r.status()),
            Err(_) => None,
        },
        Client::H2(_) => unreachable!("http/1.1"),
    };
    assert!(
        matches!(
            status,
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE) | None
        ),
        "{status:?}"
    );
    // A fresh connection is served as if nothing happened.
    let mut c = stack.client(b"http/1.1").await;
    let (status, _, _) = c.get("/docs/finance/x", Some(&finance), &[]).await;
    assert_eq!(status, StatusCode::OK);
    // Garbage instead of a request line.
    let svid = stack.ca.svid(&id("/ns/rag/sa/app"));
    let got = common::tls_exchange(
        stack.addr,
        common::raw_client_config(
            Some((&svid.chain, svid.key_der())),
            &[&rustls::version::TLS13],
        ),
        b"\x00\x01NOT HTTP\r\n\r\n",
    )
    .await
    .unwrap_or_default();
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    let mut c = stack.client(b"h2").await;
    let (status, _, _) = c.get("/docs/finance/x", Some(&finance), &[]).await;
    assert_eq!(status, StatusCode::OK);
}

/// `app_protocol = "h2c"`: the app is spoken to in HTTP/2 without TLS, whatever the client
/// spoke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_is_spoken_to_in_h2c_when_configured() {
    let stack = Stack::start_with("app_protocol = \"h2c\"", "").await;
    let finance = stack.idp.token(&stack.idp.claims("alice", &["finance"]));
    let mut c = stack.client(b"http/1.1").await;
    for _ in 0..3 {
        let (status, _, _) = c.get("/docs/finance/q3.pdf", Some(&finance), &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(stack.app.last().await["version"], "HTTP/2.0");
    }
}

/// Slowloris on headers: a client that never finishes its request head is closed after
/// `limits.handshake_timeout`, and others are served meanwhile and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_that_never_ends_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stack = Stack::start_with("", "[limits]\nhandshake_timeout = \"1s\"").await;
    let finance = stack.idp.token(&stack.idp.claims("alice", &["finance"]));
    let svid = stack.ca.svid(&id("/ns/rag/sa/app"));
    let config = common::raw_client_config(
        Some((&svid.chain, svid.key_der())),
        &[&rustls::version::TLS13],
    );
    let tcp = TcpStream::connect(stack.addr).await.expect("connect");
    let mut slow = tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls::pki_types::ServerName::try_from("retriever").expect("name"),
            tcp,
        )
        .await
        .expect("mTLS handshake");
    slow.write_all(b"GET /docs/finance/q3.pdf HTTP/1.1\r\nhost: retriever\r\nx-slow: ")
        .await
        .expect("partial head");
    // Meanwhile another client is served.
    let mut c = stack.client(b"http/1.1").await;
    let (status, _, _) = c.get("/docs/finance/q3.pdf", Some(&finance), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the slow client was never closed");
    let text = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    // A new connection is served afterwards (an idle keep-alive connection is closed after
    // the same timeout, so `c` may be gone by now).
    let mut c = stack.client(b"http/1.1").await;
    let (status, _, _) = c.get("/docs/finance/q3.pdf", Some(&finance), &[]).await;
    assert_eq!(status, StatusCode::OK);
}
