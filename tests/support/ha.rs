//! The pieces of `tests/control_plane_ha.rs`: replicas on a test etcd cluster, the watched
//! hop whose sidecar enforces what they push, reads of versions and history through the
//! API, and replicas with the built-in CA.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tonic::transport::Channel;
use warden_proto::control::v1 as pb;
use warden_proto::control::v1::policy_service_client::PolicyServiceClient;

use crate::common::control::*;
use crate::common::pki::Ca;
use crate::common::*;
use crate::etcd::EtcdCluster;

/// Deadlines for conditions (the 1 s propagation figure is measured in
/// `benches/control_propagation.rs`, not asserted here).
pub const WITHIN: Duration = Duration::from_secs(10);

/// A replica (`warden control-plane`, identity from the test PKI) on `cluster`.
pub fn replica(ca: &Ca, cluster: &EtcdCluster, prefix: &str) -> CpProcess {
    CpProcess::start_with(ca, &cluster.store_toml(prefix), "info")
}

/// A sidecar for /vectordb: inbound `http` to `forward`, watching the replicas at `urls`,
/// auditing to `audit`.
pub fn watched_config(forward: std::net::SocketAddr, urls: &[String], dir: &Path) -> String {
    let list = urls
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
{identity}
[policy]
control_plane = [{list}]
cache = "{cache}"
[audit]
path = "{audit}"
[[inbound]]
name = "http"
listen = "127.0.0.1:0"
forward = "{forward}"
"#,
        identity = injected_identity(),
        cache = dir.join("policy.json").display(),
        audit = dir.join("audit.jsonl").display(),
    )
}

/// The policy versions the sidecar applied, in order, from its audit log.
pub fn applied_versions(dir: &Path) -> Vec<u64> {
    std::fs::read_to_string(dir.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "policy")
        .filter_map(|v| v["policy_version"].as_u64())
        .collect()
}

pub async fn get_version(api: &mut PolicyServiceClient<Channel>, workload: &str) -> Option<u64> {
    api.get_policy(pb::GetPolicyRequest {
        spiffe_id: id(workload),
    })
    .await
    .ok()
    .and_then(|r| r.into_inner().policy.map(|p| p.version))
}

pub async fn history_versions(api: &mut PolicyServiceClient<Channel>, workload: &str) -> Vec<u64> {
    api.history(pb::HistoryRequest {
        spiffe_id: id(workload),
    })
    .await
    .expect("history")
    .into_inner()
    .entries
    .iter()
    .map(|e| e.version)
    .collect()
}

/// Whether `client` (an outbound sidecar to vectordb) gets an echo through.
pub async fn allowed(client: &warden_sidecar::Sidecar) -> bool {
    let out = plain_exchange(client.outbound_addr("svc").expect("svc"), b"ping").await;
    matches!(out, Ok(v) if v == b"ping")
}

pub async fn wait_allowed(client: &warden_sidecar::Sidecar, what: &str) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !allowed(client).await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The hop of these tests: /retriever (a static outbound sidecar, `client`) calls /vectordb,
/// whose sidecar `b` watches its policy on one replica and forwards to an echo app.
pub struct Hop {
    pub b: warden_sidecar::Sidecar,
    pub client: warden_sidecar::Sidecar,
    pub _app: EchoApp,
    pub _dir: tempfile::TempDir,
}

impl Hop {
    pub async fn watching(ca: &Ca, replica: &CpProcess) -> Self {
        let app = EchoApp::start().await;
        let dir = tempfile::tempdir().expect("tmp");
        let b = sidecar(
            &watched_config(app.addr, &[replica.url()], dir.path()),
            ca.identity(&id("/vectordb"), &[]),
        )
        .await;
        let client = sidecar(
            &outbound_config(b.inbound_addr("http").expect("b"), &id("/vectordb")),
            ca.identity(&id("/retriever"), &[]),
        )
        .await;
        Self {
            b,
            client,
            _app: app,
            _dir: dir,
        }
    }
}

/// The actions and versions of `workload`'s history (policy writes, quarantines, releases).
pub async fn history_actions(
    api: &mut PolicyServiceClient<Channel>,
    workload: &str,
) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = api
        .history(pb::HistoryRequest {
            spiffe_id: id(workload),
        })
        .await
        .expect("history")
        .into_inner()
        .entries
        .into_iter()
        .map(|e| (e.action, e.version))
        .collect();
    out.sort_by_key(|(_, v)| *v);
    out
}

/// Runs `warden control-plane` with the `[store]` table `store` and returns its stderr once
/// it has exited (it must, by itself) with a failure.
pub async fn start_up_failure(ca: &Ca, store: &str) -> String {
    let dir = tempfile::tempdir().expect("tmp");
    let ident = dir.path().join("identity");
    std::fs::create_dir_all(&ident).expect("mkdir");
    ca.write_files(&ca.svid(&id(CP_PATH)), &ident);
    let config = format!(
        "trust_domain = \"{TD}\"\nlisten = \"{}\"\ndata_dir = \"{}\"\nadmins = [\"{}\"]\n[identity]\nsource = \"files\"\ncert = \"{i}/tls.crt\"\nkey = \"{i}/tls.key\"\nbundle = \"{i}/ca.crt\"\n[ca]\nenabled = false\n{store}",
        free_port(),
        dir.path().join("data").display(),
        id(ADMIN_PATH),
        i = ident.display(),
    );
    let path = dir.path().join("cp.toml");
    std::fs::write(&path, config).expect("write");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["control-plane", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the control plane neither started nor exited")
        .expect("output");
    assert!(!out.status.success(), "started without its store");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A replica with the built-in CA (its own SVID and the admin credential from the CA that
/// lives in etcd).
pub struct CaReplica {
    pub dir: tempfile::TempDir,
    pub addr: std::net::SocketAddr,
    pub child: std::process::Child,
}

impl CaReplica {
    pub fn start(cluster: &EtcdCluster) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let addr = free_port();
        let config = format!(
            "trust_domain = \"{TD}\"\nlisten = \"{addr}\"\ndata_dir = \"{}\"\nadmins = [\"{}\"]\n{}",
            dir.path().join("data").display(),
            id(ADMIN_PATH),
            cluster.store_toml("/warden-ca"),
        );
        std::fs::write(dir.path().join("cp.toml"), config).expect("config");
        let log = std::fs::File::create(dir.path().join("cp.log")).expect("log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["control-plane", "--config"])
            .arg(dir.path().join("cp.toml"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn");
        Self { dir, addr, child }
    }

    pub fn admin_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data/admin")
    }

    /// A client with `cred` (a directory with tls.crt/tls.key/ca.crt), once it answers.
    pub async fn client(&self, cred: &Path) -> PolicyServiceClient<Channel> {
        let store = identity_from_dir(cred);
        let cp_id = warden_identity::SpiffeId::parse(&id(CP_PATH)).expect("id");
        let deadline = tokio::time::Instant::now() + WITHIN;
        loop {
            let url = format!("https://{}", self.addr);
            if let Ok(ch) = warden_sidecar::control::client::connect(
                &url,
                &store,
                &cp_id,
                Duration::from_secs(2),
            )
            .await
            {
                let mut api = PolicyServiceClient::new(ch);
                if api.list_policies(pb::ListPoliciesRequest {}).await.is_ok() {
                    return api;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "replica not answering; log:\n{}",
                std::fs::read_to_string(self.dir.path().join("cp.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for CaReplica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The log without its colour codes.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
