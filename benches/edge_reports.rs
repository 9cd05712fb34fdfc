//! What edge reporting (issue #16) costs.
//!
//! 1. **Data plane**: two `warden sidecar` processes under a `warden control-plane` process,
//!    client -> outbound sidecar -> mTLS -> inbound sidecar (an `http` listener, so every
//!    request is a decision and an edge count) -> HTTP app. The same run alternates
//!    reporting on (`report_interval = "1s"`, ten times the default rate) and off
//!    (`edge_reports = false`), several rounds; the figure is the two sidecars' CPU time
//!    (utime + stime from /proc) per request, and per new connection (each a decision on both
//!    sides), medians over rounds. Target: on <= off + 2 %.
//! 2. **Control plane**: 1,000 sidecars' watch streams (1,000 distinct workload SVIDs, each
//!    its own mTLS connection from this process) send a report of 20 edges every interval;
//!    the control-plane process's CPU and resident memory, before and while they report.
//!
//! Run: `cargo bench --bench edge_reports` (about 4 minutes; `-- --quick` prints a short run
//! and writes nothing). Writes the *Edge reports* section of BENCHMARKS.md.

#[path = "../tests/common/pki.rs"]
#[allow(dead_code)]
mod pki;
#[path = "mesh/section.rs"]
mod section;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use warden_identity::{IdentityStore, SpiffeId};
use warden_proto::control::v1 as pb;
use warden_proto::control::v1::policy_service_client::PolicyServiceClient;

const TD: &str = "example.org";

fn id(path: &str) -> String {
    format!("spiffe://{TD}{path}")
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// utime + stime of the process, in seconds.
    fn cpu(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.0.id())).unwrap_or_default();
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // utime and stime are fields 14 and 15 of stat: 11 and 12 after the state field.
        (ticks(11) + ticks(12)) / clock_ticks()
    }

    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

fn clock_ticks() -> f64 {
    // USER_HZ is 100 on every Linux this runs on; getconf confirms it when present.
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn warden(args: &[&str], log: &Path) -> Proc {
    let log = std::fs::File::create(log).expect("log");
    Proc(
        Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn warden"),
    )
}

struct ControlPlane {
    proc: Proc,
    url: String,
    admin: PathBuf,
}

fn control_plane(ca: &pki::Ca, dir: &Path, extra: &str) -> ControlPlane {
    let ident = dir.join("cp-identity");
    std::fs::create_dir_all(&ident).expect("mkdir");
    ca.write_files(&ca.svid(&id("/warden/control-plane")), &ident);
    let admin = dir.join("admin");
    std::fs::create_dir_all(&admin).expect("mkdir");
    ca.write_files(&ca.svid(&id("/warden/admin")), &admin);
    let addr = free_port();
    let config = format!(
        "trust_domain = \"{TD}\"\nlisten = \"{addr}\"\ndata_dir = \"{}\"\nadmins = [\"{}\"]\n[identity]\nsource = \"files\"\ncert = \"{i}/tls.crt\"\nkey = \"{i}/tls.key\"\nbundle = \"{i}/ca.crt\"\n[ca]\nenabled = false\n[admin]\nenabled = false\n[limits]\nmax_connections_per_peer = 4096\nmax_streams_per_peer = 4096\n{extra}",
        dir.join("cp-data").display(),
        id("/warden/admin"),
        i = ident.display(),
    );
    std::fs::write(dir.join("cp.toml"), config).expect("config");
    let proc = warden(
        &[
            "control-plane",
            "--config",
            dir.join("cp.toml").to_str().expect("utf-8"),
        ],
        &dir.join("cp.log"),
    );
    ControlPlane {
        proc,
        url: format!("https://{addr}"),
        admin,
    }
}

fn identity_from(dir: &Path) -> Arc<IdentityStore> {
    let files = warden_identity::FilesSource::new(
        dir.join("tls.crt"),
        dir.join("tls.key"),
        dir.join("ca.crt"),
    );
    let store = IdentityStore::new();
    store.set(Arc::new(files.load().expect("identity files")));
    store
}

async fn client(
    url: &str,
    identity: &Arc<IdentityStore>,
) -> PolicyServiceClient<tonic::transport::Channel> {
    let cp_id = SpiffeId::parse(&id("/warden/control-plane")).expect("id");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match warden_sidecar::control::client::connect(
            url,
            identity,
            &cp_id,
            Duration::from_secs(5),
        )
        .await
        {
            Ok(channel) => return PolicyServiceClient::new(channel),
            Err(e) => {
                assert!(Instant::now() < deadline, "control plane unreachable: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A keep-alive HTTP/1.1 app: `200 ok` to every request.
async fn http_app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut have = 0;
                loop {
                    let Ok(n) = s.read(&mut buf[have..]).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    have += n;
                    while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.copy_within(end + 4..have, 0);
                        have -= end + 4;
                        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Sends one GET and reads the response (headers, then content-length bytes).
async fn exchange(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    if s.write_all(b"GET /api/x HTTP/1.1\r\nhost: app\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return head.starts_with("http/1.1 200");
            }
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn requests(addr: SocketAddr, secs: f64) -> u64 {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let _ = s.set_nodelay(true);
            let mut buf = Vec::new();
            while Instant::now() < end {
                assert!(exchange(&mut s, &mut buf).await, "request failed");
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.expect("load task");
    }
    done.load(Ordering::Relaxed)
}

async fn connections(addr: SocketAddr, secs: f64) -> u64 {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut buf = Vec::new();
            while Instant::now() < end {
                let mut s = TcpStream::connect(addr).await.expect("connect");
                if exchange(&mut s, &mut buf).await {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("conn task");
    }
    done.load(Ordering::Relaxed)
}

struct Hop {
    a: Proc,
    b: Proc,
    out: SocketAddr,
}

async fn hop(ca: &pki::Ca, dir: &Path, url: &str, app: SocketAddr, reporting: bool) -> Hop {
    let report = if reporting {
        "report_interval = \"1s\"\n"
    } else {
        "edge_reports = false\n"
    };
    let files = |name: &str, who: &str| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        ca.write_files(&ca.svid(&id(who)), &d);
        format!(
            "[identity]\nsource = \"files\"\ncert = \"{d}/tls.crt\"\nkey = \"{d}/tls.key\"\nbundle = \"{d}/ca.crt\"\n",
            d = d.display()
        )
    };
    let b_port = free_port();
    let b_conf = format!(
        "trust_domain = \"{TD}\"\n{}[policy]\ncontrol_plane = \"{url}\"\n{report}[admin]\nlisten = \"127.0.0.1:0\"\n[[inbound]]\nname = \"http\"\nlisten = \"{b_port}\"\nforward = \"{app}\"\nprotocol = \"http\"\n",
        files("b", "/server")
    );
    let out = free_port();
    let a_conf = format!(
        "trust_domain = \"{TD}\"\n{}[policy]\ncontrol_plane = \"{url}\"\n{report}[admin]\nlisten = \"127.0.0.1:0\"\n[[outbound]]\nname = \"svc\"\nlisten = \"{out}\"\nconnect = \"{b_port}\"\nserver_id = \"{}\"\n",
        files("a", "/client"),
        id("/server")
    );
    std::fs::write(dir.join("a.toml"), a_conf).expect("write");
    std::fs::write(dir.join("b.toml"), b_conf).expect("write");
    let b = warden(
        &[
            "sidecar",
            "--config",
            dir.join("b.toml").to_str().expect("utf-8"),
        ],
        &dir.join("b.log"),
    );
    let a = warden(
        &[
            "sidecar",
            "--config",
            dir.join("a.toml").to_str().expect("utf-8"),
        ],
        &dir.join("a.log"),
    );
    // Ready when a request goes through (both have their policy from the control plane).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = Vec::new();
    loop {
        if let Ok(mut s) = TcpStream::connect(out).await
            && exchange(&mut s, &mut buf).await
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hop never served a request; see {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Hop { a, b, out }
}

#[derive(Clone, Copy)]
struct Cost {
    us_per_request: f64,
    us_per_connection: f64,
    rps: f64,
}

async fn data_plane_round(
    ca: &pki::Ca,
    url: &str,
    app: SocketAddr,
    reporting: bool,
    secs: f64,
) -> Cost {
    let dir = tempfile::tempdir().expect("tmp");
    let h = hop(ca, dir.path(), url, app, reporting).await;
    let cpu = |h: &Hop| h.a.cpu() + h.b.cpu();
    let before = cpu(&h);
    let n = requests(h.out, secs).await;
    let mid = cpu(&h);
    let c = connections(h.out, secs).await;
    let after = cpu(&h);
    Cost {
        us_per_request: (mid - before) * 1e6 / n.max(1) as f64,
        us_per_connection: (after - mid) * 1e6 / c.max(1) as f64,
        rps: n as f64 / secs,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One fake sidecar: a watch stream that sends `edges` edges every `every`.
async fn fake_sidecar(
    url: String,
    identity: Arc<IdentityStore>,
    peers: Arc<Vec<String>>,
    index: usize,
    every: Option<Duration>,
    opened: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
) {
    let mut api = client(&url, &identity).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let _ = tx
        .send(pb::WatchRequest {
            msg: Some(pb::watch_request::Msg::Hello(pb::Hello {
                sidecar_version: "bench".into(),
            })),
        })
        .await;
    let Ok(resp) = api
        .watch_policy(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    else {
        return;
    };
    let mut stream = resp.into_inner();
    tokio::spawn(async move { while let Ok(Some(_)) = stream.message().await {} });
    opened.fetch_add(1, Ordering::Relaxed);
    let Some(every) = every else {
        // Watch only: hold the stream open, send nothing.
        std::future::pending::<()>().await;
        return;
    };
    // Spread the reports over the interval, as real sidecars started at different times.
    tokio::time::sleep(every.mul_f64((index % 100) as f64 / 100.0)).await;
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let edges = (0..20)
            .map(|k| pb::Edge {
                direction: if k % 2 == 0 { "inbound" } else { "outbound" }.into(),
                listener: "http".into(),
                peer_id: peers[(index + k * 37) % peers.len()].clone(),
                decision: if k % 7 == 0 { "deny" } else { "allow" }.into(),
                reason: if k % 7 == 0 { "no_match" } else { "allowed" }.into(),
                http: false,
                route: None,
                count: 10 + k as u64,
            })
            .collect();
        let report = pb::WatchRequest {
            msg: Some(pb::watch_request::Msg::EdgeReport(pb::EdgeReport {
                edges,
                interval_ms: every.as_millis() as u64,
                folded: 0,
            })),
        };
        if tx.send(report).await.is_err() {
            return;
        }
        sent.fetch_add(1, Ordering::Relaxed);
    }
}

struct CpCost {
    sidecars: usize,
    every: Option<Duration>,
    cpu_percent: f64,
    rss_idle_mib: f64,
    rss_mib: f64,
    reports_s: f64,
}

async fn control_plane_cost(
    ca: &pki::Ca,
    sidecars: usize,
    every: Option<Duration>,
    secs: f64,
) -> CpCost {
    let dir = tempfile::tempdir().expect("tmp");
    let cp = control_plane(ca, dir.path(), "[edges]\nmin_report_interval = \"500ms\"\n");
    let admin = identity_from(&cp.admin);
    let _ = client(&cp.url, &admin).await;
    let rss_idle = cp.proc.rss_kib();
    let ids: Vec<String> = (0..sidecars)
        .map(|i| id(&format!("/ns/bench/sa/w{i}")))
        .collect();
    let peers = Arc::new(ids.clone());
    let sent = Arc::new(AtomicU64::new(0));
    let opened = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, w) in ids.iter().enumerate() {
        let store = IdentityStore::new();
        store.set(ca.identity(w, &[]));
        tasks.push(tokio::spawn(fake_sidecar(
            cp.url.clone(),
            store,
            peers.clone(),
            i,
            every,
            opened.clone(),
            sent.clone(),
        )));
    }
    // Let every watch open and a first round of reports arrive before measuring.
    let warm = Instant::now() + Duration::from_secs(120);
    while opened.load(Ordering::Relaxed) < sidecars as u64 {
        assert!(Instant::now() < warm, "the watches did not all open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(every) = every {
        while sent.load(Ordering::Relaxed) < sidecars as u64 {
            assert!(Instant::now() < warm, "not every sidecar reported");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(every).await;
    }
    let (c0, s0, t0) = (cp.proc.cpu(), sent.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let (c1, s1, dt) = (
        cp.proc.cpu(),
        sent.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64(),
    );
    let rss = cp.proc.rss_kib();
    for t in tasks {
        t.abort();
    }
    CpCost {
        sidecars,
        every,
        cpu_percent: (c1 - c0) / dt * 100.0,
        rss_idle_mib: rss_idle as f64 / 1024.0,
        rss_mib: rss as f64 / 1024.0,
        reports_s: (s1 - s0) as f64 / dt,
    }
}

/// ns per counted decision through `Telemetry::decision` (metrics, audit disabled), with
/// edge counting on or off: the difference is what counting an edge costs one decision,
/// without the noise of a whole request.
fn decision_ns(edges: bool, n: u32) -> f64 {
    use warden_policy::{Decision, Direction, Reason};
    let telemetry = warden_sidecar::Telemetry::new(
        warden_sidecar::metrics::Metrics::new(1024),
        warden_sidecar::audit::AuditLog::disabled(),
    );
    if edges {
        telemetry.report_edges(Arc::new(warden_sidecar::edges::Edges::new(256)));
    }
    let listener: Arc<str> = Arc::from("http");
    let peers: Vec<_> = (0..16)
        .map(|i| {
            telemetry.peer(
                Direction::Inbound,
                &listener,
                &SpiffeId::parse(&id(&format!("/p{i}"))).expect("id"),
            )
        })
        .collect();
    let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let decision = Decision {
        allowed: true,
        would_deny: false,
        reason: Reason::Matched {
            rule: "spiffe://example.org/p",
        },
    };
    let start = Instant::now();
    for i in 0..n {
        telemetry.decision(&peers[(i % 16) as usize], u64::from(i), addr, &decision, 1);
    }
    start.elapsed().as_nanos() as f64 / f64::from(n)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 200_000 } else { 2_000_000 };
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        with.push(decision_ns(true, n));
        without.push(decision_ns(false, n));
    }
    let (with, without) = (median(with), median(without));
    let micro = format!(
        "Counting one edge, in isolation: `Telemetry::decision` (metrics on, audit log disabled) takes {with:.0} ns with edge counting and {without:.0} ns without, \
         medians of 5 runs of {n} decisions on one thread: {:.0} ns per decision, against the CPU per request measured above.",
        with - without
    );
    eprintln!("{micro}");
    let (rounds, secs, cp_secs) = if quick { (1, 2.0, 5.0) } else { (5, 5.0, 30.0) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let ca = pki::Ca::new(TD);
        let dir = tempfile::tempdir().expect("tmp");
        let cp = control_plane(&ca, dir.path(), "");
        let mut admin = client(&cp.url, &identity_from(&cp.admin)).await;
        let mut server = pb::WorkloadPolicy { spiffe_id: id("/server"), ..Default::default() };
        server.inbound.insert("http".into(), pb::PatternList { patterns: vec![id("/client")] });
        let mut client_policy = pb::WorkloadPolicy { spiffe_id: id("/client"), ..Default::default() };
        client_policy.outbound.insert("svc".into(), pb::PatternList { patterns: vec![id("/server")] });
        for p in [server, client_policy] {
            admin
                .put_policy(pb::PutPolicyRequest { policy: Some(p), expected_version: None })
                .await
                .expect("put policy");
        }
        let app = http_app().await;
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let order = if round % 2 == 0 { [true, false] } else { [false, true] };
            for reporting in order {
                let c = data_plane_round(&ca, &cp.url, app, reporting, secs).await;
                eprintln!(
                    "round {} reporting {:>3}: {:.0} req/s, {:.1} µs CPU/request, {:.1} µs CPU/connection",
                    round + 1,
                    if reporting { "on" } else { "off" },
                    c.rps,
                    c.us_per_request,
                    c.us_per_connection
                );
                if reporting { on.push(c) } else { off.push(c) }
            }
        }
        drop(cp);
        let pick = |v: &[Cost], f: fn(&Cost) -> f64| median(v.iter().map(f).collect());
        let mut table = String::from(
            "| figure (both sidecars' CPU) | reporting on | off | overhead | target |\n| --- | ---: | ---: | ---: | --- |\n",
        );
        type Row = (&'static str, fn(&Cost) -> f64);
        let rows: [Row; 2] = [
            ("CPU per HTTP request (µs), 16 keep-alive connections", |c| c.us_per_request),
            ("CPU per new mTLS connection with one request (µs), 8 clients", |c| c.us_per_connection),
        ];
        for (name, f) in rows {
            let (a, b) = (pick(&on, f), pick(&off, f));
            let overhead = a / b - 1.0;
            let met = if overhead <= 0.02 { "met (<= 2 %)" } else { "missed (> 2 %)" };
            table.push_str(&format!("| {name} | {a:.1} | {b:.1} | {:+.1} % | {met} |\n", overhead * 100.0));
        }
        table.push_str(&format!(
            "| requests/s (for scale) | {:.0} | {:.0} | | |\n",
            pick(&on, |c| c.rps),
            pick(&off, |c| c.rps)
        ));
        let range = |v: &[Cost]| {
            let xs: Vec<f64> = v.iter().map(|c| c.us_per_request).collect();
            let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = xs.iter().copied().fold(0.0, f64::max);
            format!("{lo:.1} to {hi:.1}")
        };
        table.push_str(&format!(
            "\nPer round, CPU per request ranged {} µs with reporting on and {} µs off: the spread between rounds of the same mode is the noise floor of this machine.\n",
            range(&on),
            range(&off)
        ));
        println!("{table}");

        let mut cp_table = String::from(
            "| sidecars | report every | reports/s received | control-plane CPU | RSS before the watches | RSS with them (and their reports) |\n| ---: | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for every in [
            None,
            Some(Duration::from_secs(10)),
            Some(Duration::from_secs(1)),
        ] {
            let c = control_plane_cost(&ca, 1000, every, cp_secs).await;
            eprintln!(
                "{} sidecars, reports every {:?}: {:.0} reports/s, CPU {:.1} %, RSS {:.1} -> {:.1} MiB",
                c.sidecars, c.every, c.reports_s, c.cpu_percent, c.rss_idle_mib, c.rss_mib
            );
            cp_table.push_str(&format!(
                "| {} | {} | {:.0} | {:.1} % of one core | {:.1} MiB | {:.1} MiB |\n",
                c.sidecars,
                c.every
                    .map_or_else(|| "never (watches only)".to_owned(), |e| format!("{} s", e.as_secs())),
                c.reports_s,
                c.cpu_percent,
                c.rss_idle_mib,
                c.rss_mib
            ));
        }
        println!("{cp_table}");
        if !quick {
            let body = format!(
                "### Edge reports (issue #16)\n\n\
                 **Data plane.** `warden sidecar` processes (release build) under a `warden control-plane` process, \
                 client -> outbound sidecar -> mTLS -> inbound sidecar with an `http` listener (one decision, one edge count per request) -> HTTP app; \
                 {rounds} rounds of {secs:.0} s per figure, reporting on (`report_interval = \"1s\"`, ten times the default) and off (`edge_reports = false`) alternating \
                 in the same run; CPU = both sidecar processes' utime + stime (/proc), medians. 2 cores, load generator and app in the benchmark process.\n\n{table}\n{micro}\n\n\
                 **Control plane.** One `warden control-plane` process (embedded store); 1,000 watch streams from the benchmark process, one mTLS connection and one \
                 workload SVID each, each sending a report of 20 edges (peers among the 1,000) every interval; CPU over {cp_secs:.0} s after every stream has reported once.\n\n{cp_table}"
            );
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
            match section::write_section(&path, "edge-reports", &body) {
                Ok(()) => eprintln!("wrote BENCHMARKS.md"),
                Err(e) => eprintln!("cannot write BENCHMARKS.md: {e}"),
            }
        }
    });
}
