//! `warden inject --serve`, the mutating admission webhook, as a real process over real TLS
//! with certificates made here: the JSON Patch it answers, applied to the pod of the review
//! (by an applier written here, independently of Warden's diff), gives exactly the pod the
//! CLI makes; malformed requests get error answers and the next good review is served; a
//! new serving certificate in --tls-dir is picked up without a restart.

mod k8s_typed;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const IMAGE: &str = "ghcr.io/warden-mesh/warden:test";
const FLAGS: [&str; 4] = [
    "--trust-domain",
    "example.org",
    "--control-plane",
    "https://warden-control.warden-system.svc.cluster.local:7443",
];

fn golden(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/inject")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A CA and a serving certificate for localhost/127.0.0.1 it signed.
struct ServingCert {
    ca: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

fn serving_cert() -> ServingCert {
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .signed_by(&key, &Issuer::from_params(&ca_params, &ca_key))
        .expect("leaf");
    ServingCert {
        ca: ca.der().clone(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// Writes tls.key then tls.crt, each by rename, as a Secret update would change them.
fn install(dir: &Path, cert: &ServingCert) {
    for (name, text) in [("tls.key", &cert.key_pem), ("tls.crt", &cert.cert_pem)] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, dir.join(name)).expect("rename");
    }
}

/// The webhook process; killed on drop. Its stderr is kept for failure messages.
struct Webhook {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Webhook {
    fn start(cert: &ServingCert) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_owned();
        install(&dir, cert);
        let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["inject", "--serve", "--listen", "127.0.0.1:0", "--tls-dir"])
            .arg(&dir)
            .args(["--image", IMAGE])
            .args(FLAGS)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("warden starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let pipe = child.stderr.take().expect("stderr is piped");
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.trim().to_owned());
                }
                let mut log = log.lock().expect("lock");
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr.parse().expect("a socket address"),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "no \"listening on\" line; stderr:\n{}",
                    stderr.lock().expect("lock")
                );
            }
        };
        Self {
            child,
            addr,
            stderr,
            dir,
            _tmp: tmp,
        }
    }

    fn still_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client_config(ca: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("root");
    Arc::new(
        rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// One HTTPS request over a fresh connection: (status, body). `Err` when the connection
/// or the handshake fails.
async fn request(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(u16, String), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    // An oversized body may be refused before it is all sent: keep reading the answer.
    let _ = tls.write_all(body).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), tls.read_to_end(&mut out)).await;
    if !matches!(read, Ok(Ok(_))) && out.is_empty() {
        return Err(format!("no answer: {read:?}"));
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not HTTP: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

async fn post(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    body: &[u8],
) -> Result<(u16, String), String> {
    request(addr, config.clone(), "POST", "/inject", body).await
}

fn review(uid: &str, operation: &str, object: Value) -> Vec<u8> {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "rag",
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "dryRun": false,
        }
    })
    .to_string()
    .into_bytes()
}

/// RFC 6902 add/remove/replace (the operations a diff needs), on RFC 6901 pointers.
fn apply_patch(doc: &mut Value, patch: &Value) -> Result<(), String> {
    for op in patch.as_array().ok_or("a patch is an array")? {
        let kind = op["op"].as_str().ok_or("op")?;
        let pointer = op["path"].as_str().ok_or("path")?;
        if !pointer.starts_with('/') {
            return Err(format!("bad pointer {pointer:?}"));
        }
        let tokens: Vec<String> = pointer[1..]
            .split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect();
        let (last, parents) = tokens.split_last().ok_or("root")?;
        let mut target = &mut *doc;
        for t in parents {
            target = match target {
                Value::Object(m) => m.get_mut(t).ok_or(format!("no {t} in {pointer}"))?,
                Value::Array(a) => {
                    let i: usize = t.parse().map_err(|_| format!("index {t}"))?;
                    a.get_mut(i).ok_or(format!("no index {i} in {pointer}"))?
                }
                _ => return Err(format!("{pointer}: a scalar has no children")),
            };
        }
        let value = || {
            op.get("value")
                .cloned()
                .ok_or(format!("{kind} {pointer}: no value"))
        };
        match target {
            Value::Object(m) => match kind {
                "add" => {
                    m.insert(last.clone(), value()?);
                }
                "replace" if m.contains_key(last) => {
                    m.insert(last.clone(), value()?);
                }
                "remove" if m.contains_key(last) => {
                    m.remove(last);
                }
                _ => return Err(format!("{kind} {pointer}: not applicable")),
            },
            Value::Array(a) => {
                let i = if last == "-" {
                    a.len()
                } else {
                    last.parse().map_err(|_| format!("index {last}"))?
                };
                match kind {
                    "add" if i <= a.len() => a.insert(i, value()?),
                    "replace" if i < a.len() => a[i] = value()?,
                    "remove" if i < a.len() => {
                        a.remove(i);
                    }
                    _ => return Err(format!("{kind} {pointer}: index out of range")),
                }
            }
            _ => return Err(format!("{pointer}: a scalar has no children")),
        }
    }
    Ok(())
}

/// What the CLI makes of a one-document manifest, as JSON.
fn cli(yaml: &str) -> Value {
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["inject", "-f", "-", "--image", IMAGE])
        .args(FLAGS)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("warden starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("writes");
    let out = child.wait_with_output().expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = k8s_typed::documents(&String::from_utf8_lossy(&out.stdout)).expect("yaml");
    serde_json::to_value(&docs[0]).expect("json")
}

fn to_json(yaml: &str) -> Value {
    let docs = k8s_typed::documents(yaml).expect("yaml");
    serde_json::to_value(&docs[0]).expect("json")
}

/// The pod a Deployment's ReplicaSet would create from its template: generateName, no name.
fn pod_of_template(deployment_yaml: &str) -> String {
    let doc = &k8s_typed::documents(deployment_yaml).expect("yaml")[0];
    let mut template = doc["spec"]["template"]
        .as_mapping()
        .expect("template")
        .clone();
    if let Some(serde_yaml_ng::Value::Mapping(meta)) = template.get_mut("metadata") {
        meta.insert("generateName".into(), "retriever-7d9f8c-".into());
    }
    let mut pod = serde_yaml_ng::Mapping::new();
    pod.insert("apiVersion".into(), "v1".into());
    pod.insert("kind".into(), "Pod".into());
    pod.extend(template);
    serde_yaml_ng::to_string(&pod).expect("yaml")
}

async fn admit(hook: &Webhook, config: &Arc<rustls::ClientConfig>, body: Vec<u8>) -> Value {
    let (status, text) = request(hook.addr, config.clone(), "POST", "/inject", &body)
        .await
        .unwrap_or_else(|e| panic!("{e}; webhook log:\n{}", hook.log()));
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).expect("a JSON AdmissionReview")
}

#[tokio::test]
async fn the_webhooks_patch_gives_the_pod_the_cli_gives() {
    let cert = serving_cert();
    let hook = Webhook::start(&cert);
    let config = client_config(&cert.ca);
    let deployment_pod = pod_of_template(&golden("deployment.in.yaml"));
    let cases = [
        ("probes", golden("probes.in.yaml")),
        ("pod with its own ConfigMap", golden("pod.in.yaml")),
        ("pod of a Deployment", deployment_pod),
        ("pod already injected by the CLI", {
            let injected = cli(&golden("probes.in.yaml"));
            serde_yaml_ng::to_string(&injected).expect("yaml")
        }),
    ];
    for (i, (what, yaml)) in cases.iter().enumerate() {
        let pod = to_json(yaml);
        let expected = cli(yaml);
        let uid = format!("uid-{i}");
        let answer = admit(&hook, &config, review(&uid, "CREATE", pod.clone())).await;
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1", "{what}");
        assert_eq!(answer["kind"], "AdmissionReview", "{what}");
        let response = &answer["response"];
        assert_eq!(response["uid"], uid.as_str(), "{what}");
        assert_eq!(response["allowed"], true, "{what}: {response}");
        let mut patched = pod.clone();
        if pod == expected {
            assert!(
                response.get("patch").is_none(),
                "{what}: no change, no patch"
            );
        } else {
            assert_eq!(response["patchType"], "JSONPatch", "{what}");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(response["patch"].as_str().expect("patch"))
                .expect("base64");
            let patch: Value = serde_json::from_slice(&bytes).expect("JSON patch");
            apply_patch(&mut patched, &patch).unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        assert_eq!(patched, expected, "{what}: webhook and CLI differ");
        // What the API server would store is a valid Pod.
        let yaml: serde_yaml_ng::Value = serde_json::from_value(patched).expect("yaml value");
        k8s_typed::check_object(&yaml).unwrap_or_else(|e| panic!("{what}: {e:#}"));
    }
    // The probes pod has an HTTPS and a gRPC probe of captured ports: said in warnings.
    let answer = admit(
        &hook,
        &config,
        review("w", "CREATE", to_json(&golden("probes.in.yaml"))),
    )
    .await;
    let warnings = answer["response"]["warnings"].to_string();
    assert!(warnings.contains("HTTPS"), "{warnings}");
    assert!(warnings.contains("gRPC"), "{warnings}");
}

#[tokio::test]
async fn malformed_requests_get_errors_and_the_next_review_is_served() {
    let cert = serving_cert();
    let mut hook = Webhook::start(&cert);
    let config = client_config(&cert.ca);
    let good = review("good", "CREATE", to_json(&golden("pod.in.yaml")));
    let addr = hook.addr;

    let oversized = {
        let mut pod = to_json(&golden("pod.in.yaml"));
        pod["metadata"]["annotations"]["padding"] = Value::from("x".repeat(1024 * 1024));
        review("big", "CREATE", pod)
    };
    let bad_bodies: Vec<(&str, Vec<u8>, u16)> = vec![
        ("not JSON", b"{\"apiVersion\": ".to_vec(), 400),
        ("empty", Vec::new(), 400),
        ("a JSON array", b"[1, 2]".to_vec(), 400),
        (
            "v1beta1",
            serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "x"}})).expect("json"),
            400,
        ),
        (
            "another kind",
            serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "Pod"})).expect("json"),
            400,
        ),
        (
            "no request",
            serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"})).expect("json"),
            400,
        ),
        (
            "no uid",
            serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"operation": "CREATE"}})).expect("json"),
            400,
        ),
        ("over 1 MiB", oversized, 413),
    ];
    for (what, body, code) in bad_bodies {
        let (status, text) = post(addr, &config, &body)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(status, code, "{what}: {text}");
        let error: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}: {text}"));
        assert!(error["error"].is_string(), "{what}: {text}");
        assert_eq!(
            post(addr, &config, &good).await.map(|(s, _)| s),
            Ok(200),
            "{what}: then a good review"
        );
    }

    // Reviews with a uid are answered as reviews: refused pods with the reason, other
    // operations unchanged.
    let answer = admit(&hook, &config, review("no-object", "CREATE", Value::Null)).await;
    assert_eq!(answer["response"]["uid"], "no-object");
    assert_eq!(answer["response"]["allowed"], false);
    let no_containers =
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "x-"}, "spec": {}});
    let answer = admit(&hook, &config, review("refused", "CREATE", no_containers)).await;
    assert_eq!(answer["response"]["allowed"], false);
    let message = answer["response"]["status"]["message"]
        .as_str()
        .unwrap_or("");
    assert!(message.contains("has no containers"), "{message}");
    let answer = admit(
        &hook,
        &config,
        review("upd", "UPDATE", to_json(&golden("pod.in.yaml"))),
    )
    .await;
    assert_eq!(answer["response"], json!({"uid": "upd", "allowed": true}));

    // Wrong method and path; a body that never finishes; bytes that are not TLS; TLS 1.2.
    let get = request(hook.addr, config.clone(), "GET", "/inject", b"").await;
    assert_eq!(get.map(|(s, _)| s), Ok(405));
    let other = request(hook.addr, config.clone(), "POST", "/mutate", b"{}").await;
    assert_eq!(other.map(|(s, _)| s), Ok(404));
    let healthz = request(hook.addr, config.clone(), "GET", "/healthz", b"").await;
    assert_eq!(healthz.map(|(s, _)| s), Ok(200));
    {
        let tcp = TcpStream::connect(hook.addr).await.expect("connect");
        let mut tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("handshake");
        tls.write_all(b"POST /inject HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{\"api")
            .await
            .expect("write");
        // Closed half-way through the body.
    }
    {
        let mut tcp = TcpStream::connect(hook.addr).await.expect("connect");
        tcp.write_all(b"POST /inject HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "plaintext is closed");
        assert!(!String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"));
    }
    let tls12 = {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.ca.clone()).expect("root");
        Arc::new(
            rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    };
    assert!(
        request(hook.addr, tls12, "POST", "/inject", &good)
            .await
            .is_err(),
        "TLS 1.2 is refused"
    );

    assert_eq!(
        post(addr, &config, &good).await.map(|(s, _)| s),
        Ok(200),
        "still serving"
    );
    assert!(
        hook.still_running(),
        "the webhook exited; log:\n{}",
        hook.log()
    );
}

#[tokio::test]
async fn a_new_serving_certificate_is_used_without_a_restart() {
    let first = serving_cert();
    let mut hook = Webhook::start(&first);
    let second = serving_cert();
    let good = review("r", "CREATE", to_json(&golden("pod.in.yaml")));
    let new_client = client_config(&second.ca);
    assert!(
        request(hook.addr, new_client.clone(), "POST", "/inject", &good)
            .await
            .is_err(),
        "the second CA is not trusted by the first certificate"
    );
    install(&hook.dir, &second);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((200, _)) = request(hook.addr, new_client.clone(), "POST", "/inject", &good).await
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was not picked up; log:\n{}",
            hook.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(hook.still_running());
}
