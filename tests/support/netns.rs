//! Network namespaces for capture tests: a pod is a namespace with its own iptables, and
//! pods meet on a bridge in a "lan" namespace. Addresses come from 198.18.0.0/15 (RFC 2544
//! benchmarking), which is never routed outside this machine.
//!
//! Needs root, `ip` (iproute2) and `iptables`. Without them a test skips with a printed
//! reason, unless `WARDEN_REQUIRE_NETNS=1` (set by `.ci/run`): then the skip is a failure,
//! so CI can never pass by skipping.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Why these tests cannot run here, if they cannot (checked once per test process).
pub fn unavailable() -> Option<String> {
    static CHECKED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    CHECKED.get_or_init(check).clone()
}

fn check() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        });
    if uid.as_deref() != Some("0") {
        return Some("not running as root (network namespaces and iptables need it)".into());
    }
    for tool in ["ip", "iptables", "setpriv"] {
        if !on_path(tool) {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    let probe = format!("wd-probe-{}", std::process::id());
    let made = Command::new("ip").args(["netns", "add", &probe]).output();
    let _ = Command::new("ip").args(["netns", "del", &probe]).output();
    match made {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "`ip netns add` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("`ip netns add` failed: {e}")),
    }
}

pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join(tool).is_file())
            || ["/usr/sbin", "/sbin"]
                .iter()
                .any(|d| Path::new(d).join(tool).is_file())
    })
}

/// Returns true when the test may go on; otherwise prints why it skips (or panics when
/// `WARDEN_REQUIRE_NETNS=1`).
pub fn available_or_skip(test: &str) -> bool {
    let Some(reason) = unavailable() else {
        return true;
    };
    if std::env::var("WARDEN_REQUIRE_NETNS").as_deref() == Ok("1") {
        panic!("{test}: WARDEN_REQUIRE_NETNS=1 but network namespaces are unavailable: {reason}");
    }
    eprintln!("skipping {test}: {reason}");
    false
}

/// A network namespace of its own, deleted (with everything in it) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A new namespace with loopback up. `tag` only makes the name readable.
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "wd-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> ARGS`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> Output {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command run inside the namespace (`ip netns exec`), as root.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// A command run inside the namespace as `uid` (and gid), with no supplementary groups
    /// and no capabilities.
    pub fn command_as(&self, uid: u32, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = self.command("setpriv");
        c.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .arg("--")
            .arg(program);
        c
    }

    /// Runs `program ARGS` inside the namespace as root; returns its output, whatever its
    /// exit status.
    pub fn output(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program} in {}: {e}", self.name))
    }

    /// The namespace's nat table as `iptables-save` prints it, without comments and
    /// counters (so two dumps compare equal when the rules are the same).
    pub fn nat_rules(&self, save: &str) -> String {
        let out = self.output(save, &["-t", "nat"]);
        assert!(
            out.status.success(),
            "{save} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| match l.find(" [") {
                // ":CHAIN POLICY [packets:bytes]" -> ":CHAIN POLICY"
                Some(i) if l.starts_with(':') => &l[..i],
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it creates (std
    /// sockets, or tokio ones made from them) live in the namespace for their whole life,
    /// wherever they are used afterwards.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path)
                    .unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
                setns(&file);
                f()
            })
            .join()
            .expect("the thread in the namespace panicked")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
    }
}

/// Moves the calling thread into the network namespace open as `file`.
fn setns(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: setns(2) on a file descriptor we own, with a constant flag; it changes only
    // the calling thread's network namespace, which is all that thread is for.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns failed: {}", std::io::Error::last_os_error());
}

/// A LAN: a bridge in a namespace of its own, to which pods are attached by veth pairs.
/// Every address is in 198.18.0.0/24.
pub struct Lan {
    hub: Netns,
    ports: usize,
}

impl Lan {
    pub fn new() -> Self {
        let hub = Netns::new("lan");
        hub.ip(&["link", "add", "br0", "type", "bridge"]);
        hub.ip(&["link", "set", "br0", "up"]);
        Self { hub, ports: 0 }
    }

    /// A new pod namespace on this LAN, with `eth0` at 198.18.0.`host`/24 and at
    /// [`Lan::ipv6`]`(host)`/64.
    pub fn pod(&mut self, tag: &str, host: u8) -> (Netns, Ipv4Addr) {
        let ns = Netns::new(tag);
        self.ports += 1;
        let port = format!("p{}", self.ports);
        // Both ends are created from inside the hub namespace, so no interface name is ever
        // taken in the namespace the tests run in.
        self.hub.ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        self.hub.ip(&["link", "set", &port, "master", "br0"]);
        self.hub.ip(&["link", "set", &port, "up"]);
        let addr = Ipv4Addr::new(198, 18, 0, host);
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        // nodad: usable at once, without duplicate address detection's wait.
        let v6 = format!("{}/64", Self::ipv6(host));
        ns.ip(&["-6", "addr", "add", &v6, "dev", "eth0", "nodad"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        (ns, addr)
    }

    /// A pod's IPv6 address: 2001:2::`host`, from the IPv6 benchmarking range (RFC 5180),
    /// never routed outside.
    pub fn ipv6(host: u8) -> std::net::Ipv6Addr {
        std::net::Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, u16::from(host))
    }
}

/// Runs a command that must succeed.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
