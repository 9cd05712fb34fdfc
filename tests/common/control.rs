//! A real `warden control-plane` process for tests, with identities from the test PKI
//! (files), plus a policy API client for the test itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Channel;
use warden_identity::{IdentityStore, SpiffeId};
use warden_proto::control::v1 as pb;
use warden_proto::control::v1::policy_service_client::PolicyServiceClient;

use super::pki::Ca;
use super::{TD, id, injected_identity};

pub const CP_PATH: &str = "/warden/control-plane";
pub const ADMIN_PATH: &str = "/warden/admin";

/// A control-plane process that can be killed and restarted on the same port and data.
pub struct CpProcess {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    /// The HTTP admin listener (`/metrics`, `/graph`, ...).
    pub admin_addr: SocketAddr,
    child: Option<Child>,
    /// `RUST_LOG` of the process.
    log_level: &'static str,
}

/// Whether process `pid` has a socket listening on 127.0.0.1:`port` (from `/proc`).
fn listens(pid: u32, port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let want = format!("0100007F:{port:04X}");
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // local_address, st (0A: LISTEN), inode
            (f.len() > 9 && f[1] == want && f[3] == "0A").then(|| format!("socket:[{}]", f[9]))
        })
        .collect();
    if inodes.is_empty() {
        return false;
    }
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .any(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
}

/// A port the OS just handed out; the control plane binds it right after.
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

impl CpProcess {
    pub fn start(ca: &Ca) -> Self {
        Self::start_with(ca, "", "warn")
    }

    /// [`CpProcess::start`] with `extra` appended to the config (e.g. a `[limits]` table)
    /// and logging at `log_level` (`info` logs what a production control plane does).
    pub fn start_with(ca: &Ca, extra: &str, log_level: &'static str) -> Self {
        Self::launch(ca, extra, log_level, false)
    }

    /// [`CpProcess::start_with`] with the built-in CA on, so `extra` may register
    /// `[[workload_api]]` sockets the process serves (its own serving SVID still comes
    /// from the test PKI's files).
    pub fn start_with_ca(ca: &Ca, extra: &str, log_level: &'static str) -> Self {
        Self::launch(ca, extra, log_level, true)
    }

    fn launch(ca: &Ca, extra: &str, log_level: &'static str, builtin_ca: bool) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let ident = dir.path().join("identity");
        std::fs::create_dir_all(&ident).expect("mkdir");
        ca.write_files(&ca.svid(&id(CP_PATH)), &ident);
        let admin = dir.path().join("admin-cred");
        std::fs::create_dir_all(&admin).expect("mkdir");
        ca.write_files(&ca.svid(&id(ADMIN_PATH)), &admin);
        let mut cp = Self {
            dir,
            addr: free_port(),
            admin_addr: free_port(),
            child: None,
            log_level,
        };
        // `free_port` releases the port before the process binds it, and another test may
        // take it in between (a listener, or an outgoing connection's source port): then
        // the process exits with "address in use", and it is started again on new ports.
        for _ in 0..5 {
            cp.write_config(extra, builtin_ca);
            cp.spawn();
            if !cp.lost_its_ports() {
                break;
            }
            cp.addr = free_port();
            cp.admin_addr = free_port();
        }
        cp
    }

    /// Waits until the process listens on both ports (at most 10 s: a store it waits for
    /// may take longer, and the test's own waits cover that); whether it exited because
    /// one of them was taken. Looks at the process's sockets instead of connecting, so
    /// the control plane sees no probe connection.
    fn lost_its_ports(&mut self) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            let exited = self
                .child
                .as_mut()
                .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited {
                let lost = self.log().contains("in use");
                if lost {
                    self.child = None;
                    let _ = std::fs::remove_file(self.dir.path().join("cp.log"));
                }
                return lost;
            }
            if let Some(pid) = self.pid()
                && listens(pid, self.addr.port())
                && listens(pid, self.admin_addr.port())
            {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn write_config(&self, extra: &str, builtin_ca: bool) {
        let (addr, admin_addr) = (self.addr, self.admin_addr);
        let ident = self.dir.path().join("identity");
        let config = format!(
            r#"
trust_domain = "{TD}"
listen = "{addr}"
data_dir = "{data}"
admins = ["{admin_id}"]
[identity]
source = "files"
cert = "{ident}/tls.crt"
key = "{ident}/tls.key"
bundle = "{ident}/ca.crt"
[ca]
enabled = {builtin_ca}
[admin]
listen = "{admin_addr}"
{extra}
"#,
            data = self.dir.path().join("data").display(),
            admin_id = id(ADMIN_PATH),
            ident = ident.display(),
        );
        std::fs::write(self.dir.path().join("cp.toml"), config).expect("config");
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn admin_dir(&self) -> PathBuf {
        self.dir.path().join("admin-cred")
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("cp.log"))
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["control-plane", "--config"])
            .arg(self.dir.path().join("cp.toml"))
            .env("RUST_LOG", self.log_level)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn control plane");
        self.child = Some(child);
    }

    /// `kill -9`: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Resident memory of the process, in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        let status = self
            .pid()
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cp.log")).unwrap_or_default()
    }

    /// A policy API client authenticated with the SVID in `dir` (tls.crt/tls.key/ca.crt),
    /// retrying until the control plane answers or `within` passes.
    pub async fn client_with(&self, dir: &Path, within: Duration) -> PolicyServiceClient<Channel> {
        let store = identity_from_dir(dir);
        let cp_id = SpiffeId::parse(&id(CP_PATH)).expect("id");
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let attempt = warden_sidecar::control::client::connect(
                &self.url(),
                &store,
                &cp_id,
                Duration::from_secs(2),
            )
            .await;
            if let Ok(channel) = attempt {
                return PolicyServiceClient::new(channel);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "control plane not reachable; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn admin(&self) -> PolicyServiceClient<Channel> {
        self.client_with(&self.admin_dir(), Duration::from_secs(15))
            .await
    }
}

impl Drop for CpProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn identity_from_dir(dir: &Path) -> Arc<IdentityStore> {
    let files = warden_identity::FilesSource::new(
        dir.join("tls.crt"),
        dir.join("tls.key"),
        dir.join("ca.crt"),
    );
    let store = IdentityStore::new();
    store.set(Arc::new(files.load().expect("identity files")));
    store
}

/// Writes an SVID for `path` into a fresh directory and returns it.
pub fn identity_dir(ca: &Ca, parent: &Path, path: &str) -> PathBuf {
    let dir = parent.join(path.trim_start_matches('/').replace('/', "_"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    ca.write_files(&ca.svid(&id(path)), &dir);
    dir
}

/// The policy of `workload`: inbound `http` from `peers`.
pub fn inbound_policy(workload: &str, peers: &[&str]) -> pb::WorkloadPolicy {
    let mut p = pb::WorkloadPolicy {
        spiffe_id: id(workload),
        ..Default::default()
    };
    p.inbound.insert(
        "http".into(),
        pb::PatternList {
            patterns: peers.iter().map(|x| id(x)).collect(),
        },
    );
    p
}

pub async fn put(
    api: &mut PolicyServiceClient<Channel>,
    policy: pb::WorkloadPolicy,
    expected: Option<u64>,
) -> Result<u64, tonic::Status> {
    let resp = api
        .put_policy(pb::PutPolicyRequest {
            policy: Some(policy),
            expected_version: expected,
        })
        .await?;
    Ok(resp.into_inner().policy.map(|p| p.version).unwrap_or(0))
}

/// Sidecar config with one inbound listener `http`, watching the control plane at `url`.
pub fn watched_inbound_config(forward: SocketAddr, url: &str, cache: &Path) -> String {
    format!(
        r#"
{identity}
[policy]
control_plane = "{url}"
cache = "{cache}"
[[inbound]]
name = "http"
listen = "127.0.0.1:0"
forward = "{forward}"
"#,
        identity = injected_identity(),
        cache = cache.display()
    )
}

/// A sidecar under the control plane at `url`, reporting edges every 100 ms: an inbound
/// listener `http` to `inbound` (if any) and the given outbound listeners
/// `(name, connect, server path)`.
pub fn reporting_config(
    url: &str,
    inbound: Option<SocketAddr>,
    outbound: &[(&str, SocketAddr, &str)],
) -> String {
    let mut text = format!(
        "trust_domain = \"{TD}\"\n[identity]\nsource = \"files\"\ncert = \"unused\"\nkey = \"unused\"\nbundle = \"unused\"\n[policy]\ncontrol_plane = \"{url}\"\nreport_interval = \"100ms\"\n"
    );
    if let Some(forward) = inbound {
        text.push_str(&format!(
            "[[inbound]]\nname = \"http\"\nlisten = \"127.0.0.1:0\"\nforward = \"{forward}\"\n"
        ));
    }
    for (name, connect, server) in outbound {
        text.push_str(&format!(
            "[[outbound]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\nconnect = \"{connect}\"\nserver_id = \"{}\"\n",
            id(server)
        ));
    }
    text
}

/// `warden ARGS...` as a child process: (success, stdout, stderr).
pub async fn warden(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(args)
        .output()
        .await
        .expect("run warden");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
