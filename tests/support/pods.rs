//! Pods for capture tests and benchmarks: a network namespace on a [`Lan`], programmed by a
//! real `warden init`, served by a real `warden sidecar` running as the proxy uid, and
//! apps, clients and probes that open their sockets inside it (as root, so not the proxy
//! uid: their connections are captured like any unmodified app's).
//!
//! Included next to `support/netns.rs` (`mod netns;`).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::netns::{Lan, Netns};

pub const TD: &str = "example.org";
pub const PROXY_UID: u32 = 1337;
pub const DEADLINE: Duration = Duration::from_secs(20);
pub const APP_PORT: u16 = 8080;
pub const ADMIN: &str = "127.0.0.1:15000";

pub fn warden() -> &'static str {
    env!("CARGO_BIN_EXE_warden")
}

/// Polls `cond` until it holds; panics with `what` (and `context()`) at the deadline.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool, context: impl Fn() -> String) {
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
pub struct Pod {
    pub sidecar: Option<Child>,
    pub dir: tempfile::TempDir,
    pub addr: Ipv4Addr,
    pub addr6: std::net::Ipv6Addr,
    pub ns: Netns,
}

impl Pod {
    pub fn new(lan: &mut Lan, tag: &str, host: u8) -> Self {
        let (ns, addr) = lan.pod(tag, host);
        let dir = tempfile::tempdir().expect("tmp");
        Self {
            sidecar: None,
            dir,
            addr,
            addr6: Lan::ipv6(host),
            ns,
        }
    }

    /// `warden init` in this pod, as an init container runs it.
    pub fn init(&self, extra: &[&str]) -> std::process::Output {
        self.ns
            .command(warden())
            .args(["init", "--proxy-uid", &PROXY_UID.to_string()])
            .args(extra)
            .output()
            .expect("run warden init")
    }

    /// Starts `warden sidecar` as the proxy uid with `listeners` (TOML) and the identity
    /// files (`tls.crt`, `tls.key`, `ca.crt`) that `write_identity` puts in the directory
    /// it is given; returns once `/readyz` answers 200.
    pub fn start_sidecar(&mut self, write_identity: impl FnOnce(&Path), listeners: &str) {
        let dir = self.dir.path();
        write_identity(dir);
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sidecar.log")).unwrap_or_default()
    }

    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// GET on the sidecar's admin API, from inside the pod (it listens on loopback).
    pub fn admin_get(&self, path: &str) -> Option<String> {
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

    pub fn metric(&self, name: &str, want: &[(&str, &str)]) -> u64 {
        let text = self.admin_get("/metrics").unwrap_or_default();
        metric(&text, name, want)
    }

    /// Waits until `name{want}` reaches at least `n`.
    pub fn wait_metric(&self, name: &str, want: &[(&str, &str)], n: u64) {
        wait_for(
            &format!("{name} {want:?} >= {n}"),
            || self.metric(name, want) >= n,
            || self.admin_get("/metrics").unwrap_or_default(),
        );
    }

    /// Waits for an audit record that satisfies `pred`, and returns it.
    pub fn wait_audit(
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
    pub fn connect(&self, to: SocketAddr) -> std::io::Result<TcpStream> {
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
pub fn metric(text: &str, name: &str, want: &[(&str, &str)]) -> u64 {
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
pub struct App {
    accepts: Arc<AtomicUsize>,
}

impl App {
    pub fn start(pod: &Pod, port: u16) -> Self {
        Self::start_on(pod, &format!("0.0.0.0:{port}"))
    }

    /// The app bound to `addr` (`[::]:8080` takes both families).
    pub fn start_on(pod: &Pod, addr: &str) -> Self {
        let listener = pod.ns.enter(|| TcpListener::bind(addr).expect("bind app"));
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

    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}

/// Sends `msg` and reads until EOF: what came back, or the error.
pub fn exchange(mut s: TcpStream, msg: &[u8]) -> Result<Vec<u8>, std::io::Error> {
    s.write_all(msg)?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got)?;
    Ok(got)
}

/// Reads until the other side closes; true when nothing but EOF or a reset came back
/// (`what` may have been sent but no answer to it).
pub fn closed_without_answer(mut s: TcpStream, what: &[u8]) -> bool {
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
