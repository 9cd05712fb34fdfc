//! Traffic capture end to end: pods are network namespaces on a bridged LAN (198.18.0.0/24),
//! each programmed by a real `warden init` and served by a real `warden sidecar` running as
//! the proxy uid. The apps, attackers and clients are sockets this test opens inside the
//! namespaces, as root: not the proxy uid, so their connections are captured like any
//! unmodified app's.
//!
//! Needs root, iproute2 and iptables; skips with a printed reason elsewhere, and fails
//! instead of skipping under `WARDEN_REQUIRE_NETNS=1` (`.ci/run`).

mod common;
#[path = "support/netns.rs"]
mod netns;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::pki::Ca;
use common::{TD, id};
use netns::{Lan, Netns};

const PROXY_UID: u32 = 1337;
const DEADLINE: Duration = Duration::from_secs(20);
const APP_PORT: u16 = 8080;
const ADMIN: &str = "127.0.0.1:15000";

fn warden() -> &'static str {
    env!("CARGO_BIN_EXE_warden")
}

/// Polls `cond` until it holds; panics with `what` (and `context()`) at the deadline.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool, context: impl Fn() -> String) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for: {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One pod: its namespace, its address on the LAN, and (once started) its sidecar.
struct Pod {
    sidecar: Option<Child>,
    dir: tempfile::TempDir,
    addr: Ipv4Addr,
    ns: Netns,
}

impl Pod {
    fn new(lan: &mut Lan, tag: &str, host: u8) -> Self {
        let (ns, addr) = lan.pod(tag, host);
        let dir = tempfile::tempdir().expect("tmp");
        Self {
            sidecar: None,
            dir,
            addr,
            ns,
        }
    }

    /// `warden init` in this pod, as an init container runs it.
    fn init(&self, extra: &[&str]) -> std::process::Output {
        self.ns
            .command(warden())
            .args(["init", "--proxy-uid", &PROXY_UID.to_string()])
            .args(extra)
            .output()
            .expect("run warden init")
    }

    /// Starts `warden sidecar` as the proxy uid with `listeners` (TOML) and an SVID for
    /// `spiffe_id`; returns once `/readyz` answers 200.
    fn start_sidecar(&mut self, ca: &Ca, spiffe_id: &str, listeners: &str) {
        let dir = self.dir.path();
        ca.write_files(&ca.svid(spiffe_id), dir);
        let config = format!(
            r#"trust_domain = "{TD}"
[identity]
source = "files"
cert = "{d}/tls.crt"
key = "{d}/tls.key"
bundle = "{d}/ca.crt"
[admin]
listen = "{ADMIN}"
[audit]
path = "{d}/audit.jsonl"
{listeners}
"#,
            d = dir.display()
        );
        std::fs::write(dir.join("sidecar.toml"), config).expect("config");
        // The proxy uid must read its identity and write its audit log.
        chown_tree(dir, PROXY_UID);
        let log = std::fs::File::create(dir.join("sidecar.log")).expect("log");
        let child = self
            .ns
            .command_as(PROXY_UID, warden())
            .arg("sidecar")
            .arg("--config")
            .arg(dir.join("sidecar.toml"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn warden sidecar");
        self.sidecar = Some(child);
        wait_for(
            "the sidecar is ready",
            || {
                self.admin_get("/readyz")
                    .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
            },
            || self.log(),
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sidecar.log")).unwrap_or_default()
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// GET on the sidecar's admin API, from inside the pod (it listens on loopback).
    fn admin_get(&self, path: &str) -> Option<String> {
        self.ns.enter(|| {
            let mut s = TcpStream::connect(ADMIN).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            Some(out)
        })
    }

    fn metric(&self, name: &str, want: &[(&str, &str)]) -> u64 {
        let text = self.admin_get("/metrics").unwrap_or_default();
        metric(&text, name, want)
    }

    /// Waits until `name{want}` reaches at least `n`.
    fn wait_metric(&self, name: &str, want: &[(&str, &str)], n: u64) {
        wait_for(
            &format!("{name} {want:?} >= {n}"),
            || self.metric(name, want) >= n,
            || self.admin_get("/metrics").unwrap_or_default(),
        );
    }

    /// Waits for an audit record that satisfies `pred`, and returns it.
    fn wait_audit(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut found = None;
        wait_for(
            what,
            || {
                found = self.audit().into_iter().find(|r| pred(r));
                found.is_some()
            },
            || format!("{:#?}", self.audit()),
        );
        found.expect("found")
    }

    /// A TCP connection from this pod, opened as root (an app, not the proxy).
    fn connect(&self, to: SocketAddr) -> std::io::Result<TcpStream> {
        self.ns.enter(|| {
            let s = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
            s.set_read_timeout(Some(DEADLINE))?;
            Ok(s)
        })
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Some(mut c) = self.sidecar.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn chown_tree(dir: &Path, uid: u32) {
    std::os::unix::fs::chown(dir, Some(uid), Some(uid)).expect("chown");
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        std::os::unix::fs::chown(&path, Some(uid), Some(uid)).expect("chown");
    }
}

/// Sums the samples of `name` whose labels include `want`.
fn metric(text: &str, name: &str, want: &[(&str, &str)]) -> u64 {
    let mut total = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, v)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, labels) = series.split_once('{').unwrap_or((series, "}"));
        if n != name {
            continue;
        }
        let ok = want
            .iter()
            .all(|(k, v)| labels.contains(&format!("{k}=\"{v}\"")));
        if ok {
            total += v.parse::<f64>().unwrap_or(0.0) as u64;
        }
    }
    total
}

/// An app in a pod: listens on `0.0.0.0:port` (as most servers do), echoes, counts accepts.
struct App {
    accepts: Arc<AtomicUsize>,
}

impl App {
    fn start(pod: &Pod, port: u16) -> Self {
        let listener = pod
            .ns
            .enter(|| TcpListener::bind(("0.0.0.0", port)).expect("bind app"));
        let accepts = Arc::new(AtomicUsize::new(0));
        let count = accepts.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { return };
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Self { accepts }
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}

/// Sends `msg` and reads until EOF: what came back, or the error.
fn exchange(mut s: TcpStream, msg: &[u8]) -> Result<Vec<u8>, std::io::Error> {
    s.write_all(msg)?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got)?;
    Ok(got)
}

/// Reads until the other side closes; true when nothing but EOF or a reset came back
/// (`what` may have been sent but no answer to it).
fn closed_without_answer(mut s: TcpStream, what: &[u8]) -> bool {
    let _ = s.write_all(what);
    let mut buf = [0u8; 1024];
    let mut answer = Vec::new();
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return answer.is_empty() || answer.first() == Some(&21),
            // A TLS alert (content type 21) may precede the close.
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
}

fn tls_client(ca_cert: &[u8], svid: Option<&common::pki::Svid>) -> Arc<rustls::ClientConfig> {
    match svid {
        Some(svid) => common::raw_client_config(
            Some((&svid.chain, svid.key_der())),
            &[&rustls::version::TLS13],
        ),
        None => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(rustls::pki_types::CertificateDer::from(ca_cert.to_vec()))
                .expect("root");
            Arc::new(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::aws_lc_rs::default_provider(),
                ))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("tls13")
                .with_root_certificates(roots)
                .with_no_client_auth(),
            )
        }
    }
}

/// A TLS exchange over `tcp`: the bytes echoed back, or the error.
fn tls_exchange(
    tcp: TcpStream,
    config: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
    msg: &[u8],
) -> Result<Vec<u8>, String> {
    let conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(msg).map_err(|e| e.to_string())?;
    let mut got = vec![0u8; msg.len()];
    tls.read_exact(&mut got).map_err(|e| e.to_string())?;
    Ok(got)
}

const B_LISTENERS: &str = r#"
[capture]
inbound = "0.0.0.0:15006"
outbound = "127.0.0.1:15001"
[[inbound]]
name = "http"
port = 8080
allow = ["spiffe://example.org/ns/rag/sa/app"]
"#;

/// A plaintext attacker never reaches an app bound to 0.0.0.0, a valid SVID that the policy
/// does not allow is refused, and an unmodified client in another pod is meshed through
/// both sidecars, by name and by address.
#[test]
fn captured_pods_mesh_unmodified_apps_and_refuse_everything_else() {
    if !netns::available_or_skip("captured_pods_mesh_unmodified_apps_and_refuse_everything_else") {
        return;
    }
    let ca = Ca::new(TD);
    let mut lan = Lan::new();
    let mut a = Pod::new(&mut lan, "a", 1);
    let mut b = Pod::new(&mut lan, "b", 2);
    let x = Pod::new(&mut lan, "x", 3);
    let app_b = App::start(&b, APP_PORT);
    let b_app = SocketAddr::from((b.addr, APP_PORT));

    for pod in [&a, &b] {
        let out = pod.init(&[]);
        assert!(
            out.status.success(),
            "warden init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    b.start_sidecar(&ca, &id("/ns/rag/sa/vectordb"), B_LISTENERS);
    // A reaches B by a name its resolver knows (a pod's /etc/hosts, as `ip netns exec`
    // mounts it) and, through an explicit listener, by address.
    std::fs::create_dir_all(format!("/etc/netns/{}", a.ns.name)).expect("mkdir");
    std::fs::write(
        format!("/etc/netns/{}/hosts", a.ns.name),
        format!("127.0.0.1 localhost\n{} vectordb.rag.test\n", b.addr),
    )
    .expect("hosts");
    a.start_sidecar(
        &ca,
        &id("/ns/rag/sa/app"),
        &format!(
            r#"
[capture]
inbound = "0.0.0.0:15006"
outbound = "127.0.0.1:15001"
[[outbound]]
name = "vectordb"
destinations = ["vectordb.rag.test:{APP_PORT}"]
server_id = "spiffe://example.org/ns/rag/sa/vectordb"
[[outbound]]
name = "explicit"
listen = "127.0.0.1:7001"
connect = "{b_app}"
server_id = "spiffe://example.org/ns/rag/sa/vectordb"
"#
        ),
    );

    // 1. Plaintext from another pod to the app's own port: captured, and the TLS
    //    handshake it cannot make ends it. The app never sees it.
    let plain = x
        .connect(b_app)
        .expect("the TCP connect itself is accepted (by the sidecar)");
    assert!(
        closed_without_answer(plain, b"GET /docs/finance HTTP/1.1\r\nHost: b\r\n\r\n"),
        "a plaintext attacker got an answer"
    );
    b.wait_metric(
        "warden_tls_handshakes_total",
        &[
            ("direction", "inbound"),
            ("listener", "http"),
            ("result", "protocol"),
        ],
        1,
    );
    assert_eq!(app_b.accepts(), 0, "plaintext reached the app");

    // 2. mTLS with a valid SVID the policy does not allow: refused, app untouched.
    let intruder = ca.svid(&id("/ns/rag/sa/intruder"));
    let tcp = x.connect(b_app).expect("connect");
    let got = tls_exchange(
        tcp,
        tls_client(&[], Some(&intruder)),
        rustls::pki_types::ServerName::try_from("vectordb").expect("name"),
        b"ping",
    );
    assert!(got.is_err(), "an unallowed SVID was served: {got:?}");
    b.wait_metric(
        "warden_authz_decisions_total",
        &[
            ("direction", "inbound"),
            ("listener", "http"),
            ("peer_id", &id("/ns/rag/sa/intruder")),
            ("decision", "deny"),
        ],
        1,
    );
    assert_eq!(app_b.accepts(), 0, "an unallowed peer reached the app");

    // 3. An unmodified client in A dials B's app port in plaintext: A's sidecar captures
    //    it and originates mTLS (as the proxy uid, so it is not captured again), B's
    //    sidecar terminates it, the app answers.
    let tcp = a.connect(b_app).expect("connect");
    assert_eq!(
        exchange(tcp, b"hello through capture").expect("meshed exchange"),
        b"hello through capture"
    );
    assert_eq!(app_b.accepts(), 1);
    a.wait_metric(
        "warden_authz_decisions_total",
        &[
            ("direction", "outbound"),
            ("listener", "vectordb"),
            ("peer_id", &id("/ns/rag/sa/vectordb")),
            ("decision", "allow"),
        ],
        1,
    );
    b.wait_metric(
        "warden_authz_decisions_total",
        &[
            ("direction", "inbound"),
            ("listener", "http"),
            ("peer_id", &id("/ns/rag/sa/app")),
            ("decision", "allow"),
        ],
        1,
    );
    a.wait_audit("A's audit names B's identity", |r| {
        r["event"] == "authz"
            && r["decision"] == "allow"
            && r["listener"] == "vectordb"
            && r["peer_id"] == id("/ns/rag/sa/vectordb")
    });
    let seen = b.wait_audit("B's audit names A's identity", |r| {
        r["event"] == "authz" && r["decision"] == "allow" && r["peer_id"] == id("/ns/rag/sa/app")
    });
    // B saw the hop come from A's own address: A's sidecar dialled B directly, and its
    // connection was not captured by A (no loop).
    let from = seen["peer_addr"].as_str().unwrap_or_default().to_owned();
    assert!(
        from.starts_with(&format!("{}:", a.addr)),
        "B saw the hop from {from}"
    );
    assert_eq!(
        a.metric(
            "warden_authz_decisions_total",
            &[("reason", "capture_loop")]
        ),
        0
    );

    // 4. The explicit listener keeps working beside capture.
    let tcp = a
        .connect("127.0.0.1:7001".parse().expect("addr"))
        .expect("connect explicit");
    assert_eq!(
        exchange(tcp, b"explicit").expect("explicit exchange"),
        b"explicit"
    );
    assert_eq!(app_b.accepts(), 2);

    // 5. A destination nothing claims: refused, unknown_destination, audited.
    let stray = SocketAddr::from((x.addr, 9999));
    let tcp = a.connect(stray).expect("captured connect is accepted");
    assert!(closed_without_answer(tcp, b"hello?"));
    a.wait_metric(
        "warden_authz_decisions_total",
        &[
            ("direction", "outbound"),
            ("decision", "deny"),
            ("reason", "unknown_destination"),
        ],
        1,
    );
    let record = a.wait_audit("unknown_destination is audited", |r| {
        r["reason"] == "unknown_destination"
    });
    assert!(
        record["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&stray.to_string())),
        "{record}"
    );
}

/// `[[egress]]`: TLS whose SNI is listed passes through untouched to a server outside the
/// mesh; another SNI, no SNI, or plaintext are refused as `egress_denied`.
#[test]
fn egress_passes_listed_sni_only() {
    if !netns::available_or_skip("egress_passes_listed_sni_only") {
        return;
    }
    let ca = Ca::new(TD);
    let mut lan = Lan::new();
    let mut a = Pod::new(&mut lan, "a", 1);
    let e = Pod::new(&mut lan, "llm", 4);
    // The external API: a TLS server with a certificate for api.llm.example.
    let key = rcgen::generate_simple_self_signed(vec!["api.llm.example".to_owned()]).expect("cert");
    let cert_der = key.cert.der().to_vec();
    let server_config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_no_client_auth()
        .with_single_cert(
            vec![key.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into()),
        )
        .expect("server config"),
    );
    let listener =
        e.ns.enter(|| TcpListener::bind("0.0.0.0:443").expect("bind 443"));
    let tls_accepts = Arc::new(AtomicUsize::new(0));
    let count = tls_accepts.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(tcp) = stream else { return };
            count.fetch_add(1, Ordering::SeqCst);
            let config = server_config.clone();
            std::thread::spawn(move || {
                let Ok(conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut buf = [0u8; 1024];
                while let Ok(n) = tls.read(&mut buf) {
                    if n == 0 || tls.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let out = a.init(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    a.start_sidecar(
        &ca,
        &id("/ns/rag/sa/app"),
        r#"
[capture]
outbound = "127.0.0.1:15001"
[[outbound]]
name = "unused"
destinations = ["198.18.0.200:8080"]
server_id = "spiffe://example.org/ns/rag/sa/other"
[[egress]]
name = "llm-api"
hosts = ["api.llm.example"]
ports = [443]
"#,
    );
    let api = SocketAddr::from((e.addr, 443));
    let client = tls_client(&cert_der, None);
    let name = |n: &str| rustls::pki_types::ServerName::try_from(n.to_owned()).expect("name");

    // Listed: the app's own TLS session reaches the server, end to end.
    let tcp = a.connect(api).expect("connect");
    assert_eq!(
        tls_exchange(tcp, client.clone(), name("api.llm.example"), b"prompt").expect("egress"),
        b"prompt"
    );
    assert_eq!(tls_accepts.load(Ordering::SeqCst), 1);
    a.wait_metric(
        "warden_authz_decisions_total",
        &[
            ("listener", "llm-api"),
            ("peer_id", "api.llm.example"),
            ("decision", "allow"),
        ],
        1,
    );

    // Another SNI, and no SNI at all (an IP address as the server name): refused before
    // any byte leaves the pod.
    let tcp = a.connect(api).expect("connect");
    let other = tls_exchange(tcp, client.clone(), name("exfil.example"), b"secrets");
    assert!(other.is_err(), "{other:?}");
    let tcp = a.connect(api).expect("connect");
    let bare = tls_exchange(
        tcp,
        client.clone(),
        rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::from(e.addr).into()),
        b"secrets",
    );
    assert!(bare.is_err(), "{bare:?}");
    // Plaintext to the egress port.
    let tcp = a.connect(api).expect("connect");
    assert!(closed_without_answer(tcp, b"GET / HTTP/1.1\r\n\r\n"));
    a.wait_metric(
        "warden_authz_decisions_total",
        &[
            ("direction", "outbound"),
            ("decision", "deny"),
            ("reason", "egress_denied"),
        ],
        3,
    );
    assert_eq!(
        tls_accepts.load(Ordering::SeqCst),
        1,
        "a refused egress connection reached the server"
    );
    a.wait_audit("the refused SNI is audited", |r| {
        r["reason"] == "egress_denied"
            && r["detail"]
                .as_str()
                .is_some_and(|d| d.contains("exfil.example"))
    });
}

/// Captured inbound to a port that no `[[inbound]]` claims is refused as `no_listener`.
#[test]
fn captured_inbound_to_an_unclaimed_port_is_refused() {
    if !netns::available_or_skip("captured_inbound_to_an_unclaimed_port_is_refused") {
        return;
    }
    let ca = Ca::new(TD);
    let mut lan = Lan::new();
    let mut b = Pod::new(&mut lan, "b", 2);
    let x = Pod::new(&mut lan, "x", 3);
    let other_app = App::start(&b, 9000);
    let out = b.init(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    b.start_sidecar(&ca, &id("/ns/rag/sa/vectordb"), B_LISTENERS);
    let tcp = x
        .connect(SocketAddr::from((b.addr, 9000)))
        .expect("captured connect is accepted");
    assert!(closed_without_answer(tcp, b"hello"));
    b.wait_metric(
        "warden_authz_decisions_total",
        &[
            ("direction", "inbound"),
            ("listener", "capture"),
            ("decision", "deny"),
            ("reason", "no_listener"),
        ],
        1,
    );
    assert_eq!(other_app.accepts(), 0, "an unclaimed port reached its app");
    b.wait_audit("no_listener is audited", |r| r["reason"] == "no_listener");
}
