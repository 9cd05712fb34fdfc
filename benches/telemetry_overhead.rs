//! What metrics and the audit log cost end to end: the same two-sidecar hop (client ->
//! outbound sidecar -> mTLS -> inbound sidecar -> echo app), in one process, with telemetry
//! on (metrics + audit log to /dev/null, as in production minus the disk) and off
//! (`Telemetry::off()`, which records nothing). Modes alternate, several rounds; each figure
//! is the median over rounds, and the overhead is on/off - 1.
//!
//! Run: `cargo bench --bench telemetry_overhead` (about 1 minute; `-- --quick` for a smoke
//! run). Writes the *Telemetry overhead* section of BENCHMARKS.md (not with --quick).

#[path = "../tests/common/pki.rs"]
#[allow(dead_code)]
mod pki;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use warden_identity::StaticSource;
use warden_sidecar::audit::{AuditLimits, AuditLog};
use warden_sidecar::metrics::Metrics;
use warden_sidecar::{Sidecar, SidecarConfig, Telemetry};

const TD: &str = "example.org";
const MSG: usize = 1024;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    On,
    Off,
}

impl Mode {
    fn telemetry(self) -> Telemetry {
        match self {
            Mode::On => Telemetry::new(
                Metrics::new(1024),
                AuditLog::open(Some(Path::new("/dev/null")), AuditLimits::default())
                    .expect("audit to /dev/null"),
            ),
            Mode::Off => Telemetry::off(),
        }
    }
}

#[derive(Default, Clone, Copy)]
struct Figures {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    bulk_mib_s: f64,
    conns_s: f64,
}

async fn echo_app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

fn config(text: String) -> SidecarConfig {
    SidecarConfig::from_toml("bench.toml", &text).expect("bench config")
}

async fn hop(ca: &pki::Ca, app: SocketAddr, mode: Mode) -> (Sidecar, Sidecar) {
    let client = format!("spiffe://{TD}/client");
    let server = format!("spiffe://{TD}/server");
    let common = "[identity]\nsource = \"files\"\ncert = \"x\"\nkey = \"x\"\nbundle = \"x\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[limits]\nmax_connections = 100000\nmax_connections_per_peer = 100000\nmax_pending_handshakes = 100000\n";
    let b_cfg = config(format!(
        "trust_domain = \"{TD}\"\n{common}[[inbound]]\nname = \"http\"\nlisten = \"127.0.0.1:0\"\nforward = \"{app}\"\nallow = [\"{client}\"]\n"
    ));
    let b = Sidecar::start_with_telemetry(
        &b_cfg,
        Box::new(StaticSource(ca.identity(&server, &[]))),
        mode.telemetry(),
    )
    .await
    .expect("start inbound sidecar");
    let b_addr = b.inbound_addr("http").expect("inbound addr");
    let a_cfg = config(format!(
        "trust_domain = \"{TD}\"\n{common}[[outbound]]\nname = \"svc\"\nlisten = \"127.0.0.1:0\"\nconnect = \"{b_addr}\"\nserver_id = \"{server}\"\n"
    ));
    let a = Sidecar::start_with_telemetry(
        &a_cfg,
        Box::new(StaticSource(ca.identity(&client, &[]))),
        mode.telemetry(),
    )
    .await
    .expect("start outbound sidecar");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(a.is_ready() && b.is_ready()) {
        assert!(Instant::now() < deadline, "sidecars not ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (a, b)
}

/// 16 connections, each a closed loop of 1 KiB request / 1 KiB response.
async fn latency(addr: SocketAddr, secs: f64) -> (f64, f64, f64) {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let _ = s.set_nodelay(true);
            let req = vec![7u8; MSG];
            let mut resp = vec![0u8; MSG];
            let mut lat = Vec::new();
            while Instant::now() < end {
                let t = Instant::now();
                s.write_all(&req).await.expect("write");
                s.read_exact(&mut resp).await.expect("read");
                lat.push(t.elapsed().as_nanos() as u64);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("latency task"));
    }
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)] as f64 / 1000.0;
    (all.len() as f64 / secs, pct(0.50), pct(0.99))
}

/// One stream: write 64 KiB chunks and read the echo back, count what returns.
async fn bulk(addr: SocketAddr, secs: f64) -> f64 {
    let s = TcpStream::connect(addr).await.expect("connect");
    let (mut r, mut w) = s.into_split();
    let got = Arc::new(AtomicU64::new(0));
    let g = got.clone();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 {
                break;
            }
            g.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
    let chunk = vec![1u8; 64 * 1024];
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        w.write_all(&chunk).await.expect("write");
    }
    let bytes = got.load(Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    drop(w);
    reader.abort();
    bytes as f64 / elapsed / (1024.0 * 1024.0)
}

/// 8 clients: connect, one 1 KiB exchange, close; every one a full mTLS handshake.
async fn new_connections(addr: SocketAddr, secs: f64) -> f64 {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let req = vec![3u8; MSG];
            let mut resp = vec![0u8; MSG];
            while Instant::now() < end {
                let mut s = TcpStream::connect(addr).await.expect("connect");
                s.write_all(&req).await.expect("write");
                if s.read_exact(&mut resp).await.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("conn task");
    }
    done.load(Ordering::Relaxed) as f64 / secs
}

async fn measure(ca: &pki::Ca, app: SocketAddr, mode: Mode, secs: f64) -> Figures {
    let (a, b) = hop(ca, app, mode).await;
    let out = a.outbound_addr("svc").expect("outbound addr");
    let (rps, p50_us, p99_us) = latency(out, secs).await;
    let bulk_mib_s = bulk(out, secs).await;
    let conns_s = new_connections(out, secs).await;
    a.shutdown(Duration::from_millis(200)).await;
    b.shutdown(Duration::from_millis(200)).await;
    Figures {
        rps,
        p50_us,
        p99_us,
        bulk_mib_s,
        conns_s,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, secs) = if quick { (1, 1.0) } else { (5, 3.0) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let ca = pki::Ca::new(TD);
        let app = echo_app().await;
        let mut on = Vec::new();
        let mut off = Vec::new();
        for round in 0..rounds {
            // Alternate which mode goes first, so drift in the machine's load hits both.
            let order = if round % 2 == 0 { [Mode::On, Mode::Off] } else { [Mode::Off, Mode::On] };
            for mode in order {
                let f = measure(&ca, app, mode, secs).await;
                eprintln!(
                    "round {} {:>3}: {:.0} req/s p50 {:.0} µs p99 {:.0} µs, bulk {:.0} MiB/s, {:.0} conns/s",
                    round + 1,
                    if mode == Mode::On { "on" } else { "off" },
                    f.rps,
                    f.p50_us,
                    f.p99_us,
                    f.bulk_mib_s,
                    f.conns_s
                );
                if mode == Mode::On { on.push(f) } else { off.push(f) }
            }
        }
        let pick = |v: &[Figures], f: fn(&Figures) -> f64| median(v.iter().map(f).collect());
        type Row = (&'static str, fn(&Figures) -> f64, bool);
        let rows: [Row; 5] = [
            ("requests/s, 16 connections, 1 KiB closed loop", |f| f.rps, true),
            ("latency p50 (µs)", |f| f.p50_us, false),
            ("latency p99 (µs)", |f| f.p99_us, false),
            ("bulk, 1 stream echoed (MiB/s)", |f| f.bulk_mib_s, true),
            ("new mTLS connections/s (1 request each)", |f| f.conns_s, true),
        ];
        let mut table = String::from("| figure | telemetry on | off | overhead |\n| --- | ---: | ---: | ---: |\n");
        for (name, f, higher_is_better) in rows {
            let (a, b) = (pick(&on, f), pick(&off, f));
            // Overhead: how much worse "on" is than "off" (positive = costs something).
            let overhead = if higher_is_better { b / a - 1.0 } else { a / b - 1.0 };
            table.push_str(&format!("| {name} | {a:.0} | {b:.0} | {:+.1} % |\n", overhead * 100.0));
        }
        println!("{table}");
        if !quick {
            let section = format!(
                "<!-- BEGIN telemetry (generated by `cargo bench --bench telemetry_overhead`; edits are overwritten) -->\n\
                 ### Telemetry overhead (metrics + audit on vs off)\n\n\
                 One process, two in-process sidecars on 127.0.0.1, {rounds} rounds of {secs:.0} s per figure, modes alternating; medians. \
                 \"on\" = metrics + audit log (to /dev/null); \"off\" = `Telemetry::off()` (records nothing; benchmarks only). \
                 Negative overhead = within noise.\n\n{table}\n<!-- END telemetry -->"
            );
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let new = match (text.find("<!-- BEGIN telemetry"), text.find("<!-- END telemetry -->")) {
                (Some(a), Some(b)) => format!("{}{section}{}", &text[..a], &text[b + "<!-- END telemetry -->".len()..]),
                _ => format!("{text}\n{section}\n"),
            };
            match std::fs::write(&path, new) {
                Ok(()) => eprintln!("wrote BENCHMARKS.md"),
                Err(e) => eprintln!("cannot write BENCHMARKS.md: {e}"),
            }
        }
    });
}
