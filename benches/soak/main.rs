//! Load and soak harness for two real `warden sidecar` processes (client side A with an
//! outbound listener, server side B with an inbound listener) in front of an echo app:
//!
//!   app --plain--> A (outbound) == mTLS ==> B (inbound) --plain--> echo
//!
//! `soak`: a steady open-loop rate of requests (each a new connection: handshake, 1 KiB
//! echoed, close) for a duration, sampling the sidecars' RSS; fails if any request fails or
//! RSS grows more than 10 % between the end of warm-up and the end of the run.
//! `load`: holds N connections open through both sidecars at once, checks every one still
//! echoes while all are open, then closes them.
//!
//! It measures; it asserts only what RELIABILITY.md reports (no failed request, bounded RSS).
//! Run it through `benches/soak/run.sh`, which raises `ulimit -n` (10,000 connections need
//! ~20,000 descriptors in this process and in each sidecar).

#[path = "../../tests/common/pki.rs"]
#[allow(dead_code)]
mod pki;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TD: &str = "example.org";
const CLIENT_ID: &str = "spiffe://example.org/soak/client";
const SERVER_ID: &str = "spiffe://example.org/soak/server";

struct Args {
    mode: String,
    duration: Duration,
    rate: u64,
    connections: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        mode: "soak".into(),
        duration: Duration::from_secs(120),
        rate: 100,
        connections: 10_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "soak" | "load" => a.mode = arg.clone(),
            "--duration" => {
                a.duration = humantime::parse_duration(&val()?).map_err(|e| e.to_string())?
            }
            "--rate" => a.rate = val()?.parse().map_err(|e| format!("--rate: {e}"))?,
            "--connections" => {
                a.connections = val()?.parse().map_err(|e| format!("--connections: {e}"))?
            }
            // `cargo bench` passes --bench; ignore it and anything else libtest-ish.
            _ => {}
        }
    }
    Ok(a)
}

/// A child process, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn nofile_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn spawn_sidecar(dir: &Path, name: &str, body: &str) -> Proc {
    let ident = dir.join(name);
    let config = format!(
        "trust_domain = \"{TD}\"\n[identity]\nsource = \"files\"\ncert = \"{i}/tls.crt\"\nkey = \"{i}/tls.key\"\nbundle = \"{i}/ca.crt\"\n[admin]\nlisten = \"{admin}\"\n[audit]\npath = \"{dir}/{name}-audit.jsonl\"\n[limits]\nmax_connections = 30000\nmax_connections_per_peer = 30000\nmax_pending_handshakes = 4096\n{body}",
        i = ident.display(),
        admin = free_port(),
        dir = dir.display(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).expect("write config");
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log");
    // Each sidecar holds two descriptors per connection: raise its limit like a pod spec would.
    let child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 65536 2>/dev/null; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_warden"))
        .args(["sidecar", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn warden");
    Proc(child)
}

async fn echo_app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            match l.accept().await {
                Ok((mut s, _)) => {
                    tokio::spawn(async move {
                        let (mut r, mut w) = s.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    });
    addr
}

async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    s.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).await?;
    if back != msg {
        return Err(std::io::Error::other("echo differs"));
    }
    Ok(())
}

async fn request(entry: SocketAddr, msg: &[u8]) -> std::io::Result<()> {
    let mut s = TcpStream::connect(entry).await?;
    tokio::time::timeout(Duration::from_secs(10), round_trip(&mut s, msg))
        .await
        .map_err(|_| std::io::Error::other("timed out"))??;
    Ok(())
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let dir = tempfile::tempdir().expect("tmp");
    let ca = pki::Ca::new(TD);
    for (name, id) in [("client", CLIENT_ID), ("server", SERVER_ID)] {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        let mut spec = pki::LeafSpec::id(id);
        spec.lifetime = time::Duration::hours(6);
        ca.write_files(&ca.issue(&spec), &d);
    }
    let app = echo_app().await;
    let b_addr = free_port();
    let a_addr = free_port();
    let b = spawn_sidecar(
        dir.path(),
        "server",
        &format!(
            "[[inbound]]\nname = \"http\"\nlisten = \"{b_addr}\"\nforward = \"{app}\"\nallow = [\"{CLIENT_ID}\"]\n"
        ),
    );
    let a = spawn_sidecar(
        dir.path(),
        "client",
        &format!(
            "[[outbound]]\nname = \"svc\"\nlisten = \"{a_addr}\"\nconnect = \"{b_addr}\"\nserver_id = \"{SERVER_ID}\"\n"
        ),
    );
    let pids = [a.0.id(), b.0.id()];
    // Ready when one request makes it through both sidecars.
    let ready = Instant::now();
    while request(a_addr, b"ready").await.is_err() {
        if ready.elapsed() > Duration::from_secs(30) {
            eprintln!("error: the sidecars never served a request");
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ok = match args.mode.as_str() {
        "load" => load(a_addr, args.connections, pids).await,
        _ => soak(a_addr, args.duration, args.rate, pids).await,
    };
    drop((a, b));
    std::process::exit(if ok { 0 } else { 1 });
}

async fn soak(entry: SocketAddr, duration: Duration, rate: u64, pids: [u32; 2]) -> bool {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let msg: Arc<[u8]> = (0..1024u32).map(|i| i as u8).collect();
    let start = Instant::now();
    let warmup = (duration / 5).min(Duration::from_secs(60));
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut samples: Vec<(f64, [u64; 2])> = Vec::new();
    let mut next_sample = start;
    let mut tasks = tokio::task::JoinSet::new();
    while start.elapsed() < duration {
        tick.tick().await;
        let (okc, failedc, msgc) = (ok.clone(), failed.clone(), msg.clone());
        tasks.spawn(async move {
            match request(entry, &msgc).await {
                Ok(()) => okc.fetch_add(1, Ordering::Relaxed),
                Err(_) => failedc.fetch_add(1, Ordering::Relaxed),
            };
        });
        while tasks.try_join_next().is_some() {}
        if Instant::now() >= next_sample {
            let rss = [rss_kib(pids[0]), rss_kib(pids[1])];
            let t = start.elapsed().as_secs_f64();
            println!(
                "t={t:6.1}s  requests ok={} failed={}  RSS client={} KiB server={} KiB",
                ok.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed),
                rss[0],
                rss[1]
            );
            samples.push((t, rss));
            next_sample += Duration::from_secs(10);
        }
    }
    while tasks.join_next().await.is_some() {}
    let end = [rss_kib(pids[0]), rss_kib(pids[1])];
    let base = samples
        .iter()
        .find(|(t, _)| *t >= warmup.as_secs_f64())
        .map(|(_, r)| *r)
        .unwrap_or(end);
    let peak = samples
        .iter()
        .fold(end, |p, (_, r)| [p[0].max(r[0]), p[1].max(r[1])]);
    let growth = |i: usize| 100.0 * (end[i] as f64 - base[i] as f64) / base[i].max(1) as f64;
    let (okn, failn) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "soak: {:.0}s at {rate}/s: {okn} ok, {failn} failed; RSS after {:.0}s warm-up -> end: \
         client {} -> {} KiB ({:+.1} %, peak {}), server {} -> {} KiB ({:+.1} %, peak {})",
        start.elapsed().as_secs_f64(),
        warmup.as_secs_f64(),
        base[0],
        end[0],
        growth(0),
        peak[0],
        base[1],
        end[1],
        growth(1),
        peak[1]
    );
    let pass = failn == 0 && growth(0) <= 10.0 && growth(1) <= 10.0;
    println!("soak: {}", if pass { "PASS" } else { "FAIL" });
    pass
}

async fn load(entry: SocketAddr, n: usize, pids: [u32; 2]) -> bool {
    let limit = nofile_limit();
    if limit < (2 * n as u64 + 60) {
        eprintln!(
            "error: RLIMIT_NOFILE is {limit}; {n} connections need ~{} here (run benches/soak/run.sh)",
            2 * n + 60
        );
        return false;
    }
    let start = Instant::now();
    // Open with bounded concurrency so handshakes are not refused by max_pending_handshakes
    // (that is the limit working, not what this measures).
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        opening.spawn(async move {
            let _permit = permit;
            let mut s = TcpStream::connect(entry).await?;
            tokio::time::timeout(
                Duration::from_secs(30),
                round_trip(&mut s, format!("open {i}").as_bytes()),
            )
            .await
            .map_err(|_| std::io::Error::other("timed out"))??;
            Ok::<_, std::io::Error>(s)
        });
    }
    let mut held = Vec::with_capacity(n);
    let mut failed = 0usize;
    while let Some(r) = opening.join_next().await {
        match r {
            Ok(Ok(s)) => held.push(s),
            _ => failed += 1,
        }
    }
    let opened_in = start.elapsed();
    let rss = [rss_kib(pids[0]), rss_kib(pids[1])];
    // Every connection is still alive with all the others open.
    let mut second = 0usize;
    let mut checks = tokio::task::JoinSet::new();
    for (i, mut s) in held.into_iter().enumerate() {
        checks.spawn(async move {
            let r = tokio::time::timeout(
                Duration::from_secs(60),
                round_trip(&mut s, format!("again {i}").as_bytes()),
            )
            .await;
            (matches!(r, Ok(Ok(()))), s)
        });
    }
    let mut held = Vec::with_capacity(n);
    while let Some(r) = checks.join_next().await {
        if let Ok((ok, s)) = r {
            if ok {
                second += 1;
            }
            held.push(s);
        }
    }
    println!(
        "load: {} of {n} connections open at once through both sidecars ({failed} failed to \
         open, {:.1}s to open); {second} echoed again while all were open; RSS with all open: \
         client {} KiB, server {} KiB",
        held.len(),
        opened_in.as_secs_f64(),
        rss[0],
        rss[1]
    );
    drop(held);
    let pass = failed == 0 && second == n;
    println!("load: {}", if pass { "PASS" } else { "FAIL" });
    pass
}
