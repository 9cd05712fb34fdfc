//! A real etcd cluster for tests: N members of Debian's `/usr/bin/etcd` on 127.0.0.1, ports
//! picked by the OS, client TLS with certificates made by rcgen at test time (server
//! certificates for 127.0.0.1, a client certificate for Warden, client certificates
//! required). Members can be killed and restarted on the same data.
//!
//! Without an `etcd` binary a test skips with a printed reason, unless
//! `WARDEN_REQUIRE_ETCD=1` (set by `.ci/run`): then the skip is a failure.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Where Debian's `etcd-server` puts it, or `etcd` on PATH.
pub fn etcd_binary() -> Option<PathBuf> {
    let debian = PathBuf::from("/usr/bin/etcd");
    if debian.is_file() {
        return Some(debian);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("etcd"))
            .find(|p| p.is_file())
    })
}

/// `true` when etcd is here; otherwise prints why `test` is skipped, or panics under
/// `WARDEN_REQUIRE_ETCD=1`.
pub fn available_or_skip(test: &str) -> bool {
    if etcd_binary().is_some() {
        return true;
    }
    let why = "no etcd binary (install Debian's etcd-server: apt-get install etcd-server)";
    if std::env::var("WARDEN_REQUIRE_ETCD").is_ok_and(|v| v == "1") {
        panic!("{test} cannot run, and WARDEN_REQUIRE_ETCD=1: {why}");
    }
    eprintln!("skipping {test}: {why}");
    false
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A CA and what it signed, as PEM files in a directory.
pub struct EtcdPki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl EtcdPki {
    pub fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("mkdir");
        let ca_key = KeyPair::generate().expect("key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "test etcd CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA");
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let leaf = |name: &str, eku: Vec<ExtendedKeyUsagePurpose>| {
            let key = KeyPair::generate().expect("key");
            let mut p = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
            p.subject_alt_names
                .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
            p.distinguished_name.push(DnType::CommonName, name);
            p.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            p.extended_key_usages = eku;
            let cert = p.signed_by(&key, &issuer).expect("sign");
            (cert.pem(), key.serialize_pem())
        };
        let both = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let (server_cert, server_key) = leaf("etcd", both);
        let (client_cert, client_key) = leaf("warden", vec![ExtendedKeyUsagePurpose::ClientAuth]);
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write PEM");
            path
        };
        Self {
            ca: write("ca.crt", &ca_cert.pem()),
            server_cert: write("server.crt", &server_cert),
            server_key: write("server.key", &server_key),
            client_cert: write("client.crt", &client_cert),
            client_key: write("client.key", &client_key),
        }
    }
}

pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running cluster. Dropping it kills every member.
pub struct EtcdCluster {
    pub dir: tempfile::TempDir,
    pub pki: EtcdPki,
    pub members: Vec<Member>,
    initial_cluster: String,
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster has a leader and answers writes.
    pub async fn start(n: usize) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let pki = EtcdPki::new(&dir.path().join("pki"));
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                data: dir.path().join(format!("m{i}.etcd")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            dir,
            pki,
            members,
            initial_cluster,
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_writable(Duration::from_secs(30)).await;
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let binary = etcd_binary().expect("etcd binary");
        let m = &self.members[i];
        let client = format!("https://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("log");
        let child = Command::new(binary)
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "warden-test"])
            .arg("--cert-file")
            .arg(&self.pki.server_cert)
            .arg("--key-file")
            .arg(&self.pki.server_key)
            .arg("--trusted-ca-file")
            .arg(&self.pki.ca)
            .arg("--client-cert-auth")
            // etcd's defaults (100 ms, 1 s): shorter ones start needless elections when the
            // machine is busy, and a stopped leader is replaced within a few seconds anyway.
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .env_remove("ETCD_UNSUPPORTED_ARCH")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.members[i].child = Some(child);
    }

    /// `kill -9` of member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data (it rejoins the cluster).
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("https://127.0.0.1:{}", self.members[i].client_port)
    }

    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.members[i].log).unwrap_or_default()
    }

    /// The control plane's `[store]` table for this cluster.
    pub fn store_toml(&self, prefix: &str) -> String {
        let endpoints = self
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "[store]\nbackend = \"etcd\"\nendpoints = [{endpoints}]\nprefix = \"{prefix}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            self.pki.ca.display(),
            self.pki.client_cert.display(),
            self.pki.client_key.display()
        )
    }

    /// The store config Warden parses from [`Self::store_toml`].
    pub fn etcd_config(&self, prefix: &str) -> warden_control::config::EtcdConfig {
        warden_control::config::EtcdConfig {
            endpoints: self.endpoints(),
            prefix: prefix.to_owned(),
            ca: self.pki.ca.clone(),
            client: Some((self.pki.client_cert.clone(), self.pki.client_key.clone())),
        }
    }

    /// Waits until a transaction commits through the cluster (a leader and a quorum).
    pub async fn wait_writable(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        let config = self.etcd_config("/warden-test-probe");
        loop {
            let attempt = async {
                let store = warden_control::store::EtcdStore::connect(&config).await?;
                store
                    .load_or_create_ca("probe.test", || {
                        Ok::<_, std::convert::Infallible>(("-".to_owned(), "-".to_owned().into()))
                    })
                    .await
                    .map(|_| ())
            };
            match attempt.await {
                Ok(()) => return,
                Err(e) => {
                    if tokio::time::Instant::now() > deadline {
                        panic!(
                            "etcd cluster not writable within {within:?}: {e}\nmember logs:\n{}",
                            (0..self.members.len())
                                .map(|i| self.log(i))
                                .collect::<Vec<_>>()
                                .join("\n---\n")
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
