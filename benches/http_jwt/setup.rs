//! What the benchmark runs: the identities (one CA: the client's, the server's, the control
//! plane's and its admin's SVIDs), the identity provider (an ES256 key, its JWKS file and
//! the tokens), the control plane that holds the route, and the four proxies with their
//! configs. Every process is a [`Proc`] of the mesh harness: killed when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use warden_jwt::mint::Es256Signer;

use crate::pki;
use crate::topo::{self, Proc, Topology, free_port, ident};

pub const TD: &str = "example.org";
pub const CLIENT_ID: &str = "spiffe://example.org/ns/rag/sa/app";
pub const SERVER_ID: &str = "spiffe://example.org/ns/rag/sa/retriever";
const CP_ID: &str = "spiffe://example.org/warden/control-plane";
const ADMIN_ID: &str = "spiffe://example.org/warden/admin";
pub const ISSUER: &str = "https://idp.example.com";
pub const AUDIENCE: &str = "rag-retriever";
/// The `[[jwt]]` issuer's name in Warden, the provider's name in Envoy.
const PROVIDER: &str = "corp-idp";
/// The rule: POST under this prefix, by the client workload, for users in group finance.
pub const PREFIX: &str = "/docs/finance/";
pub const PATH: &str = "/docs/finance/q3-report";
/// Envoy's key exchange group, as in the mesh harness (Warden negotiates X25519).
const KX_GROUP: &str = "X25519";

/// The SVID files under `dir/{client,server,cp,admin}/` and the client's TLS config.
pub struct Pki {
    pub client_tls: Arc<rustls::ClientConfig>,
}

pub fn write_identities(dir: &Path) -> Pki {
    let ca = pki::Ca::new(TD);
    let mut client = None;
    for (who, id) in [
        ("client", CLIENT_ID),
        ("server", SERVER_ID),
        ("cp", CP_ID),
        ("admin", ADMIN_ID),
    ] {
        let d = dir.join(who);
        std::fs::create_dir_all(&d).expect("create the identity directory");
        let mut spec = pki::LeafSpec::id(id);
        spec.lifetime = time::Duration::hours(6);
        let svid = ca.issue(&spec);
        ca.write_files(&svid, &d);
        if who == "client" {
            client = Some(svid);
        }
    }
    let svid = client.expect("the client's SVID");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3")
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyServer))
    .with_client_auth_cert(svid.chain.clone(), svid.key_der())
    .expect("client certificate");
    let mut config = config;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Pki {
        client_tls: Arc::new(config),
    }
}

/// The load generator does not check who answers (only the proxies' checks of the client
/// are measured, and the handshake happens before measuring).
#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The identity provider: an ES256 key whose JWKS both proxies read from one file.
pub struct Idp {
    pub jwks: PathBuf,
    /// `groups: ["finance"]`: allowed.
    pub finance: String,
    /// `groups: ["marketing"]`: a valid token the rule refuses (403).
    pub marketing: String,
    /// The finance claims signed by a key not in the JWKS (401).
    pub forged: String,
}

impl Idp {
    pub fn new(dir: &Path) -> Self {
        let signer = || {
            let der = Es256Signer::generate_pkcs8().expect("ES256 key");
            Es256Signer::from_pkcs8(&der).expect("ES256 signer")
        };
        let (key, other) = (signer(), signer());
        let jwks = dir.join("jwks.json");
        std::fs::write(&jwks, key.jwks().to_string()).expect("write the JWKS");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = |sub: &str, group: &str| -> Map<String, Value> {
            let Value::Object(map) = json!({
                "iss": ISSUER,
                "aud": AUDIENCE,
                "sub": sub,
                "groups": [group],
                "iat": now,
                // Valid for the whole run.
                "exp": now + 6 * 3600,
            }) else {
                unreachable!("an object literal")
            };
            map
        };
        Self {
            jwks,
            finance: key.sign(&claims("alice", "finance")).expect("sign"),
            marketing: key.sign(&claims("bob", "marketing")).expect("sign"),
            forged: other.sign(&claims("mallory", "finance")).expect("sign"),
        }
    }
}

fn spawn(bin: &Path, args: &[&str], name: &str, dir: &Path) -> Result<Proc, String> {
    let mut cmd = Command::new(bin);
    cmd.args(args).env("RUST_LOG", "warn");
    Proc::spawn(name, cmd, dir.join(format!("{name}.log")))
}

/// A `warden control-plane` process holding the server workload's policy: the route is
/// put through `warden policy put`, as an operator would.
pub struct ControlPlane {
    pub url: String,
    pub proc: Proc,
}

pub fn start_control_plane(bin: &Path, dir: &Path) -> Result<ControlPlane, String> {
    let addr = free_port();
    let config = format!(
        r#"trust_domain = "{TD}"
listen = "{addr}"
data_dir = "{data}"
admins = ["{ADMIN_ID}"]
[identity]
source = "files"
cert = "{cert}"
key = "{key}"
bundle = "{ca}"
[ca]
enabled = false
"#,
        data = dir.join("cp-data").display(),
        cert = ident(dir, "cp", "tls.crt"),
        key = ident(dir, "cp", "tls.key"),
        ca = ident(dir, "cp", "ca.crt"),
    );
    let cfg = dir.join("control-plane.toml");
    std::fs::write(&cfg, config).map_err(|e| e.to_string())?;
    let mut proc = spawn(
        bin,
        &["control-plane", "--config", &cfg.display().to_string()],
        "control-plane",
        dir,
    )?;
    let url = format!("https://{addr}");
    let policy = format!(
        r#"[[workload]]
spiffe_id = "{SERVER_ID}"
inbound.docs = ["{CLIENT_ID}"]

[[workload.route]]
listener = "docs"
path_prefix = "{PREFIX}"
methods = ["POST"]
peers = ["{CLIENT_ID}"]
users = {{ jwt = "{PROVIDER}", claims = {{ groups = ["finance"] }} }}
"#
    );
    let file = dir.join("policy.toml");
    std::fs::write(&file, policy).map_err(|e| e.to_string())?;
    // Until the control plane listens, the put fails: retry it (bounded).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new(bin)
            .args(["policy", "--control-plane", &url, "--identity-dir"])
            .arg(dir.join("admin"))
            .args(["put", "-f"])
            .arg(&file)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            break;
        }
        if let Some(why) = proc.exited() {
            return Err(why);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "warden policy put failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(ControlPlane { url, proc })
}

fn sidecar_common(dir: &Path) -> String {
    format!(
        r#"trust_domain = "{TD}"
[identity]
source = "files"
cert = "{cert}"
key = "{key}"
bundle = "{ca}"
[audit]
path = "/dev/null"
[limits]
# One data-plane worker per core, like Envoy's --concurrency in this harness.
workers = 0
"#,
        cert = ident(dir, "server", "tls.crt"),
        key = ident(dir, "server", "tls.key"),
        ca = ident(dir, "server", "ca.crt"),
    )
}

/// `warden sidecar` with an inbound `protocol = "http"` listener and the `[[jwt]]` issuer;
/// the listener's allowlist and its route come from the control plane only (no static
/// `allow`: nothing is served until the control plane's policy is in force). Returns the
/// topology and the admin address.
pub fn start_warden_http(
    bin: &Path,
    dir: &Path,
    app: SocketAddr,
    cp: &ControlPlane,
    jwks: &Path,
) -> Result<(Topology, SocketAddr), String> {
    let (listen, admin) = (free_port(), free_port());
    let config = format!(
        r#"{common}[admin]
listen = "{admin}"
[policy]
control_plane = "{cp}"
[[inbound]]
name = "docs"
listen = "{listen}"
forward = "{app}"
protocol = "http"
forward_client_cert = "sanitize_set"
[[jwt]]
name = "{PROVIDER}"
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
jwks_file = "{jwks}"
"#,
        common = sidecar_common(dir),
        cp = cp.url,
        jwks = jwks.display(),
    );
    let cfg = dir.join("warden-http.toml");
    std::fs::write(&cfg, config).map_err(|e| e.to_string())?;
    let proc = spawn(
        bin,
        &["sidecar", "--config", &cfg.display().to_string()],
        "warden-http",
        dir,
    )?;
    Ok((
        Topology {
            entry: listen,
            procs: vec![proc],
        },
        admin,
    ))
}

/// `warden sidecar` with a plain inbound tcp listener and a static allow of the client:
/// mTLS and the L4 check, no HTTP, no token.
pub fn start_warden_tcp(bin: &Path, dir: &Path, app: SocketAddr) -> Result<Topology, String> {
    let (listen, admin) = (free_port(), free_port());
    let config = format!(
        r#"{common}[admin]
listen = "{admin}"
[[inbound]]
name = "raw"
listen = "{listen}"
forward = "{app}"
allow = ["{CLIENT_ID}"]
"#,
        common = sidecar_common(dir),
    );
    let cfg = dir.join("warden-tcp.toml");
    std::fs::write(&cfg, config).map_err(|e| e.to_string())?;
    let proc = spawn(
        bin,
        &["sidecar", "--config", &cfg.display().to_string()],
        "warden-tcp",
        dir,
    )?;
    Ok(Topology {
        entry: listen,
        procs: vec![proc],
    })
}

/// Waits until the sidecar's `/debug/policy` says the control plane's policy is in force.
pub fn wait_policy(admin: SocketAddr, t: &mut Topology, within: Duration) -> Result<(), String> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + within;
    let mut last = String::new();
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(1))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"GET /debug/policy HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })();
        if let Ok(text) = attempt {
            let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            if let Ok(v) = serde_json::from_str::<Value>(body) {
                if v["source"] == "control_plane" && v["has_policy"] == true {
                    return Ok(());
                }
                last = body.to_owned();
            }
        }
        t.check_alive()?;
        if Instant::now() > deadline {
            return Err(format!(
                "the control plane's policy is not in force; /debug/policy: {last}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn envoy_downstream_tls(dir: &Path, alpn: bool) -> String {
    format!(
        r#"transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          disable_stateless_session_resumption: true
          disable_stateful_session_resumption: true
          common_tls_context:
            {params}
            {certs}
            validation_context:
              trusted_ca: {{filename: "{ca}"}}{alpn}"#,
        params = topo::envoy_tls_params(KX_GROUP),
        certs = topo::envoy_certs(dir, "server"),
        ca = ident(dir, "server", "ca.crt"),
        alpn = if alpn {
            "\n            alpn_protocols: [\"h2\", \"http/1.1\"]"
        } else {
            ""
        },
    )
}

fn start_envoy(
    bin: &Path,
    dir: &Path,
    name: &str,
    yaml: String,
    concurrency: usize,
) -> Result<Proc, String> {
    let cfg = dir.join(format!("{name}.yaml"));
    std::fs::write(&cfg, yaml).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin);
    cmd.arg("-c")
        .arg(&cfg)
        .args(["--concurrency", &concurrency.to_string()])
        .args(["--disable-hot-restart", "-l", "error"]);
    Proc::spawn(name, cmd, dir.join(format!("{name}.log")))
}

/// Envoy with the same rule: a TLS listener requiring a client certificate from the same
/// CA, `jwt_authn` (local JWKS from the same file, same issuer and audience, the token
/// from `Authorization: Bearer`, its payload in dynamic metadata) and `rbac` (POST under
/// the prefix, principal = the client's SPIFFE ID and `groups` holding `finance`), then
/// the router to the app over HTTP/1.1.
///
/// Made to do the same work as Warden, no more: no request IDs (`generate_request_id:
/// false`), the token forwarded to the app as Warden does (`forward: true`), XFCC
/// sanitize-and-set with the peer's URI as Warden's `sanitize_set`, paths normalized and
/// slashes merged, encoded slashes refused; stats `reject_all`, no access log.
pub fn start_envoy_http(
    bin: &Path,
    dir: &Path,
    app: SocketAddr,
    jwks: &Path,
    concurrency: usize,
) -> Result<Topology, String> {
    let listen = free_port();
    let yaml = format!(
        r#"stats_config: {{stats_matcher: {{reject_all: true}}}}
static_resources:
  listeners:
  - name: docs
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - {tls}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: docs
          codec_type: AUTO
          generate_request_id: false
          normalize_path: true
          merge_slashes: true
          path_with_escaped_slashes_action: REJECT_REQUEST
          forward_client_cert_details: SANITIZE_SET
          set_current_client_cert_details: {{uri: true}}
          route_config:
            name: docs
            virtual_hosts:
            - name: app
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: app}}
          http_filters:
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                {PROVIDER}:
                  issuer: "{ISSUER}"
                  audiences: ["{AUDIENCE}"]
                  local_jwks: {{filename: "{jwks}"}}
                  from_headers: [{{name: Authorization, value_prefix: "Bearer "}}]
                  forward: true
                  payload_in_metadata: jwt_payload
              rules:
              - match: {{prefix: "{PREFIX}"}}
                requires: {{provider_name: {PROVIDER}}}
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  finance:
                    permissions:
                    - and_rules:
                        rules:
                        - url_path: {{path: {{prefix: "{PREFIX}"}}}}
                        - header: {{name: ":method", string_match: {{exact: POST}}}}
                    principals:
                    - and_ids:
                        ids:
                        - authenticated: {{principal_name: {{exact: "{CLIENT_ID}"}}}}
                        - metadata:
                            filter: envoy.filters.http.jwt_authn
                            path: [{{key: jwt_payload}}, {{key: groups}}]
                            value: {{list_match: {{one_of: {{string_match: {{exact: finance}}}}}}}}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
{cluster}
"#,
        port = listen.port(),
        tls = envoy_downstream_tls(dir, true),
        jwks = jwks.display(),
        cluster = topo::envoy_cluster("app", app, ""),
    );
    let proc = start_envoy(bin, dir, "envoy-http", yaml, concurrency)?;
    Ok(Topology {
        entry: listen,
        procs: vec![proc],
    })
}

/// Envoy as a plain mTLS terminator: the same TLS listener, the network `rbac` filter on
/// the client's SPIFFE ID, `tcp_proxy` to the app (the mesh harness's server-side Envoy).
pub fn start_envoy_tcp(
    bin: &Path,
    dir: &Path,
    app: SocketAddr,
    concurrency: usize,
) -> Result<Topology, String> {
    let listen = free_port();
    let yaml = format!(
        r#"stats_config: {{stats_matcher: {{reject_all: true}}}}
static_resources:
  listeners:
  - name: raw
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - {tls}
      filters:
      - name: envoy.filters.network.rbac
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          stat_prefix: rbac
          rules:
            action: ALLOW
            policies:
              client:
                permissions: [{{any: true}}]
                principals: [{{authenticated: {{principal_name: {{exact: "{CLIENT_ID}"}}}}}}]
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: raw
          cluster: app
  clusters:
{cluster}
"#,
        port = listen.port(),
        tls = envoy_downstream_tls(dir, false),
        cluster = topo::envoy_cluster("app", app, ""),
    );
    let proc = start_envoy(bin, dir, "envoy-tcp", yaml, concurrency)?;
    Ok(Topology {
        entry: listen,
        procs: vec![proc],
    })
}
