//! What the harness reads from the machine: /proc for memory and CPU of the proxies, the
//! CPU model, tool versions, and the crypto ceilings from `openssl speed`.

use std::process::Command;

/// VmRSS of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field(&text, "VmRSS:").map(|kb| kb * 1024)
}

pub fn threads(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field(&text, "Threads:")
}

fn status_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// utime + stime of `pids`, in seconds.
/// CPU time of a set of processes, split as the kernel accounts it (sampled at each clock
/// tick, so only windows of a second or more are meaningful).
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    /// In user space: for a proxy, TLS records, its event loop and its own code.
    pub user: f64,
    /// In the kernel on the processes' behalf: syscalls, TCP, and the loopback receive path
    /// that runs in the sender's context.
    pub kernel: f64,
}

impl Cpu {
    pub fn total(self) -> f64 {
        self.user + self.kernel
    }

    pub fn since(self, earlier: Cpu) -> Cpu {
        Cpu {
            user: self.user - earlier.user,
            kernel: self.kernel - earlier.kernel,
        }
    }
}

/// CPU seconds used so far by `pids`, user and kernel together.
#[allow(
    dead_code,
    reason = "for the benches that share this file (capture, http_jwt); mesh uses the split"
)]
pub fn cpu_seconds(pids: &[u32], ticks_per_sec: f64) -> f64 {
    cpu_split(pids, ticks_per_sec).total()
}

/// CPU seconds used so far by `pids`, split into user and kernel (from `/proc/PID/stat`).
pub fn cpu_split(pids: &[u32], ticks_per_sec: f64) -> Cpu {
    pids.iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the command name (which may contain spaces) start at "state".
            let rest = &stat[stat.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some(Cpu {
                user: utime / ticks_per_sec,
                kernel: stime / ticks_per_sec,
            })
        })
        .fold(Cpu::default(), |a, b| Cpu {
            user: a.user + b.user,
            kernel: a.kernel + b.kernel,
        })
}

pub fn clock_ticks() -> f64 {
    command_line("getconf", &["CLK_TCK"])
        .and_then(|s| s.parse().ok())
        .unwrap_or(100.0)
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

pub fn nproc() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// First line of a command's stdout (or stderr), trimmed.
pub fn command_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
}

/// Raises RLIMIT_NOFILE of this process (inherited by the proxies) with util-linux
/// `prlimit`, which keeps the harness free of unsafe `setrlimit` calls. Returns the soft
/// limit in force afterwards.
pub fn raise_nofile(want: u64) -> u64 {
    let pid = std::process::id().to_string();
    let arg = format!("--nofile={want}:{want}");
    let _ = Command::new("prlimit").args(["--pid", &pid, &arg]).output();
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(1024)
}

/// Single-core crypto ceilings measured by `openssl speed` on this machine.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ceilings {
    /// AES-128-GCM on 16 KiB buffers, bytes/s, one core.
    pub aes_gcm: f64,
    /// ECDSA P-256 signatures/s and verifications/s, one core.
    pub ecdsa_sign: f64,
    pub ecdsa_verify: f64,
}

impl Ceilings {
    /// Full mTLS handshakes per second the machine's cores could sign and verify, if they
    /// did nothing else: each handshake costs 2 signatures (both CertificateVerify) and 4
    /// verifications (each side checks the peer's leaf against the CA and the peer's
    /// CertificateVerify). Key exchange and everything else is left out, so this is an
    /// upper bound.
    pub fn handshakes_per_sec(&self, cores: usize) -> f64 {
        if self.ecdsa_sign == 0.0 || self.ecdsa_verify == 0.0 {
            return 0.0;
        }
        cores as f64 / (2.0 / self.ecdsa_sign + 4.0 / self.ecdsa_verify)
    }
}

pub fn openssl_ceilings(seconds: u32) -> Ceilings {
    let secs = seconds.to_string();
    let mut c = Ceilings::default();
    let aes = Command::new("openssl")
        .args(["speed", "-mr", "-seconds", &secs, "-bytes", "16384"])
        .args(["-evp", "aes-128-gcm"])
        .output();
    if let Ok(out) = aes {
        // "+F:<n>:AES-128-GCM:<bytes per second>"
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(rest) = line.strip_prefix("+F:")
                && let Some(v) = rest.rsplit(':').next().and_then(|v| v.parse().ok())
            {
                c.aes_gcm = v;
            }
        }
    }
    let ecdsa = Command::new("openssl")
        .args(["speed", "-mr", "-seconds", &secs, "ecdsap256"])
        .output();
    if let Ok(out) = ecdsa {
        // "+F4:<n>:256:<sign/s>:<verify/s>"
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(rest) = line.strip_prefix("+F4:") {
                let f: Vec<&str> = rest.split(':').collect();
                if f.len() >= 4 {
                    c.ecdsa_sign = f[2].parse().unwrap_or(0.0);
                    c.ecdsa_verify = f[3].parse().unwrap_or(0.0);
                }
            }
        }
    }
    c
}
