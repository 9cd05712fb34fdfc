//! Helpers for the hardening tests (tests/hostile_input.rs, tests/resource_limits.rs,
//! tests/faults.rs): a sidecar under attack with its audit log in a temp dir, metric and
//! audit readers, a "good client" probe, and a rustls client that presents any bytes as its
//! certificate chain (so an attacker's malformed or oversized chain reaches the listener
//! exactly as crafted: rustls' own client-side checks are bypassed on purpose).
//!
//! Included with `#[path = "support/harden.rs"] mod harden;` next to `mod common;`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::common::pki::{Ca, Svid};
use crate::common::{EchoApp, TD, id, inbound_config, raw_client_config, sidecar, tls_exchange};

pub const DEADLINE: Duration = Duration::from_secs(20);
pub const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The SPIFFE ID the target allows.
pub fn good_id() -> String {
    id("/ns/rag/sa/retriever")
}

/// An in-process sidecar with one inbound listener `http` in front of an echo app, its audit
/// log in a temp dir, allowing [`good_id`].
pub struct Target {
    pub ca: Ca,
    pub app: EchoApp,
    pub sidecar: warden_sidecar::Sidecar,
    pub addr: SocketAddr,
    pub audit: PathBuf,
    pub good: Svid,
    _dir: tempfile::TempDir,
}

impl Target {
    /// `limits` is the body of a `[limits]` table (e.g. `handshake_timeout = "1s"`).
    pub async fn start(limits: &str) -> Self {
        let ca = Ca::new(TD);
        let app = EchoApp::start().await;
        let dir = tempfile::tempdir().expect("tmp");
        let audit = dir.path().join("audit.jsonl");
        let toml = format!(
            "{}\n[audit]\npath = \"{}\"\n[limits]\n{limits}\n",
            inbound_config(app.addr, &[good_id()]),
            audit.display()
        );
        let sidecar = sidecar(&toml, ca.identity(&id("/ns/rag/sa/vectordb"), &[])).await;
        let addr = sidecar.inbound_addr("http").expect("inbound");
        let good = ca.svid(&good_id());
        Self {
            ca,
            app,
            sidecar,
            addr,
            audit,
            good,
            _dir: dir,
        }
    }

    pub fn metrics(&self) -> String {
        self.sidecar
            .telemetry()
            .metrics()
            .encode()
            .expect("encode metrics")
    }

    /// Waits until `warden_tls_handshakes_total{result}` reaches `n` and returns it.
    pub async fn wait_handshakes(&self, result: &str, n: u64) -> u64 {
        let want = [
            ("direction", "inbound"),
            ("listener", "http"),
            ("result", result),
        ];
        let mut last = 0;
        crate::common::wait_until(
            &format!("{n} handshake(s) with result={result}"),
            DEADLINE,
            || {
                last = metric(&self.metrics(), "warden_tls_handshakes_total", &want);
                last >= n
            },
        )
        .await;
        last
    }

    /// Waits for an audit record matching `pred` and returns it.
    pub async fn wait_audit(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut found = None;
        crate::common::wait_until(what, DEADLINE, || {
            found = audit_records(&self.audit).into_iter().find(|r| pred(r));
            found.is_some()
        })
        .await;
        found.expect("found")
    }

    /// A valid, allowed client is served end to end (bytes echoed by the app).
    pub async fn assert_good_client_served(&self) {
        let cfg = raw_client_config(Some((&self.good.chain, self.good.key_der())), TLS13);
        let got = tls_exchange(self.addr, cfg, b"still serving")
            .await
            .expect("good client served");
        assert_eq!(got, b"still serving");
    }

    /// The audit record of the one handshake failure with `reason`, checked for shape.
    pub async fn assert_failure_audited(&self, reason: &str) -> serde_json::Value {
        let r = self
            .wait_audit(&format!("handshake_failure audit record {reason}"), |r| {
                r["event"] == "handshake_failure" && r["reason"] == reason
            })
            .await;
        assert_eq!(r["direction"], "inbound");
        assert_eq!(r["listener"], "http");
        assert!(
            r["peer_addr"]
                .as_str()
                .is_some_and(|a| a.starts_with("127.0.0.1:"))
        );
        r
    }
}

/// Sum of the samples of `name` whose labels include all of `want` (OpenMetrics text).
pub fn metric(text: &str, name: &str, want: &[(&str, &str)]) -> u64 {
    let mut total = 0u64;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, v)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, labels) = series.split_once('{').unwrap_or((series, "}"));
        if n != name {
            continue;
        }
        let labels: BTreeMap<&str, &str> = labels
            .trim_end_matches('}')
            .split("\",")
            .filter_map(|kv| kv.split_once("=\""))
            .map(|(k, v)| (k, v.trim_end_matches('"')))
            .collect();
        if want.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            total += v.parse::<f64>().unwrap_or(0.0) as u64;
        }
    }
    total
}

pub fn audit_records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits until the sidecar's `name{want…}` metric reads exactly `n`.
pub async fn wait_metric(
    sidecar: &warden_sidecar::Sidecar,
    name: &str,
    want: &[(&str, &str)],
    n: u64,
) {
    crate::common::wait_until(&format!("{name} {want:?} = {n}"), DEADLINE, || {
        metric(
            &sidecar.telemetry().metrics().encode().expect("encode"),
            name,
            want,
        ) == n
    })
    .await;
}

/// Reads until the server closes the connection (EOF or reset); panics if it stays open.
pub async fn assert_closed_by_server(s: &mut TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => panic!("the server kept the connection open"),
            Ok(Ok(0)) | Ok(Err(_)) => return,
            // A TLS alert may come first; keep reading until the close.
            Ok(Ok(_)) => {}
        }
    }
}

/// A rustls client that presents `chain` (any bytes) with `key`, skipping rustls' own
/// consistency checks between the two: an attacker does not run them either.
pub fn crafted_client_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Arc<rustls::ClientConfig> {
    let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).expect("signing key");
    let certified = Arc::new(rustls::sign::CertifiedKey::new(chain, signer));
    let base = raw_client_config(None, TLS13);
    let mut cfg = (*base).clone();
    cfg.client_auth_cert_resolver = Arc::new(Fixed(certified));
    Arc::new(cfg)
}

#[derive(Debug)]
struct Fixed(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for Fixed {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// The bytes a real TLS 1.3 client sends first (its ClientHello records).
pub fn client_hello() -> Vec<u8> {
    let cfg = raw_client_config(None, TLS13);
    let name = rustls::pki_types::ServerName::try_from("peer.invalid").expect("name");
    let mut conn = rustls::ClientConnection::new(cfg, name).expect("client");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write to a Vec");
    }
    out
}

/// Deterministic pseudo-random bytes (xorshift): reproducible hostile input.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A real `warden sidecar` process with a files identity from the test PKI, one inbound
/// listener `http` (allowing [`good_id`]) on a port picked beforehand, and its log in a
/// temp dir. Killed (SIGKILL) on drop if still running.
pub struct SidecarProcess {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The metrics-only listener (`[admin] metrics_listen`), as a pod exposes it.
    pub metrics: SocketAddr,
    child: Option<std::process::Child>,
}

impl SidecarProcess {
    /// `extra` is appended to the config (e.g. a `[limits]` table); `nofile` runs the
    /// process under `ulimit -n`; `args` go after `--config FILE`.
    pub fn start(
        ca: &Ca,
        forward: SocketAddr,
        extra: &str,
        nofile: Option<u32>,
        args: &[&str],
    ) -> Self {
        Self::start_allowing(ca, forward, &[good_id()], extra, nofile, args)
    }

    /// [`SidecarProcess::start`] with its inbound listener allowing `allow`.
    pub fn start_allowing(
        ca: &Ca,
        forward: SocketAddr,
        allow: &[String],
        extra: &str,
        nofile: Option<u32>,
        args: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let ident = dir.path().join("identity");
        std::fs::create_dir_all(&ident).expect("mkdir");
        ca.write_files(&ca.svid(&id("/ns/rag/sa/vectordb")), &ident);
        let addr = crate::common::control::free_port();
        let admin = crate::common::control::free_port();
        let metrics = crate::common::control::free_port();
        let config = format!(
            r#"
trust_domain = "{TD}"
[identity]
source = "files"
cert = "{ident}/tls.crt"
key = "{ident}/tls.key"
bundle = "{ident}/ca.crt"
[[inbound]]
name = "http"
listen = "{addr}"
forward = "{forward}"
allow = [{allow}]
[admin]
listen = "{admin}"
metrics_listen = "{metrics}"
[audit]
path = "{audit}"
{extra}
"#,
            ident = ident.display(),
            allow = allow
                .iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            audit = dir.path().join("audit.jsonl").display(),
        );
        let config_path = dir.path().join("sidecar.toml");
        std::fs::write(&config_path, config).expect("config");
        let log = std::fs::File::create(dir.path().join("sidecar.log")).expect("log");
        let bin = env!("CARGO_BIN_EXE_warden");
        let mut cmd = match nofile {
            // `ulimit` is a shell builtin; `exec` keeps the warden process's PID the child's.
            Some(n) => {
                let mut c = std::process::Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(bin);
                c
            }
            None => std::process::Command::new(bin),
        };
        cmd.arg("sidecar")
            .arg("--config")
            .arg(&config_path)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log);
        let child = cmd.spawn().expect("spawn warden sidecar");
        Self {
            dir,
            addr,
            admin,
            metrics,
            child: Some(child),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The process's stderr, without the ANSI colours the log formatter adds.
    pub fn log(&self) -> String {
        let raw = std::fs::read_to_string(self.dir.path().join("sidecar.log")).unwrap_or_default();
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // CSI sequence: ESC [ ... final byte in @..~
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) && c != '[' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    pub fn audit(&self) -> Vec<serde_json::Value> {
        audit_records(&self.dir.path().join("audit.jsonl"))
    }

    /// `None` while running; the exit status once it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends SIGTERM with the `kill` command (no libc dependency needed).
    pub fn sigterm(&self) {
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits until a good client (presenting `svid`) is served, retrying until the deadline.
    pub async fn wait_served(&self, svid: &Svid) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let cfg = raw_client_config(Some((&svid.chain, svid.key_der())), TLS13);
            match tls_exchange(self.addr, cfg, b"ping").await {
                Ok(v) if v == b"ping" => return,
                other => assert!(
                    tokio::time::Instant::now() < deadline,
                    "sidecar never served a good client ({other:?}); log:\n{}",
                    self.log()
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
