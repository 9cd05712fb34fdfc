//! What traffic capture costs: the same hop between two pods, through the same two
//! `warden sidecar` processes, reached three ways in one run:
//!
//! - direct: client in pod A -> app in pod B (a port both pods' rules skip);
//! - explicit: client -> A's explicit outbound listener on 127.0.0.1 -> mTLS -> B's
//!   explicit inbound listener (a skipped port) -> app on 127.0.0.1;
//! - captured: the client dials B's app port; A's rules redirect it to A's capture
//!   listener, which originates mTLS to that original destination; B's rules redirect it
//!   to B's capture listener, which picks the `[[inbound]]` by port -> app on 127.0.0.1.
//!
//! Pods are network namespaces on a veth bridge (198.18.0.0/24), programmed by a real
//! `warden init`; the sidecars run as the proxy uid. Measures latency at a fixed rate
//! (open loop, corrected for coordinated omission), CPU per request of both sidecars, and
//! new connections per second; modes are interleaved within each round and figures are
//! medians over rounds. Needs root, iproute2 and iptables (else it says why and exits).
//!
//! `cargo bench --bench capture` (writes the "capture" section of BENCHMARKS.md),
//! `-- --quick` (short, prints only), `--rounds N`, `--no-write`.

#[path = "mesh/load.rs"]
#[allow(dead_code)]
mod load;
#[path = "../tests/support/netns.rs"]
mod netns;
#[path = "../tests/common/pki.rs"]
#[allow(dead_code)]
mod pki;
#[path = "../tests/support/pods.rs"]
mod pods;
#[path = "mesh/section.rs"]
mod section;
#[path = "mesh/sys.rs"]
#[allow(dead_code)]
mod sys;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use pods::{Pod, TD};

const RATE: u32 = 1000;
const CONNS: usize = 16;
/// Concurrent clients of the new-connections run.
const CONNECTORS: usize = 4;
const EXPLICIT_INBOUND: u16 = 8443;
const DIRECT_PORT: u16 = 9090;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Direct,
    Explicit,
    Captured,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Direct, Mode::Explicit, Mode::Captured];

    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Explicit => "explicit",
            Mode::Captured => "captured",
        }
    }
}

/// One mode's figures of one round.
#[derive(Default, Clone)]
struct Figures {
    p50_us: f64,
    p99_us: f64,
    cpu_us_per_req: f64,
    conns_per_sec: f64,
    conn_p50_us: f64,
    conn_p99_us: f64,
}

struct Options {
    rounds: usize,
    warmup: Duration,
    duration: Duration,
    write: bool,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let rounds = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(if quick { 1 } else { 5 });
    Options {
        rounds,
        warmup: Duration::from_secs(if quick { 1 } else { 2 }),
        duration: Duration::from_secs(if quick { 2 } else { 8 }),
        write: !quick && !args.iter().any(|a| a == "--no-write"),
    }
}

fn main() {
    if let Some(reason) = netns::unavailable() {
        eprintln!("capture benchmark skipped: {reason}");
        return;
    }
    let opts = options();
    let ca = pki::Ca::new(TD);
    let id = |path: &str| format!("spiffe://{TD}{path}");
    let mut lan = netns::Lan::new();
    let mut a = Pod::new(&mut lan, "a", 1);
    let mut b = Pod::new(&mut lan, "b", 2);
    for (pod, skip) in [
        (&a, vec!["--skip-outbound-ports", "9090"]),
        (&b, vec!["--skip-inbound-ports", "8443,9090"]),
    ] {
        let out = pod.init(&skip);
        assert!(
            out.status.success(),
            "warden init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The apps live in B (their threads inherit the namespace of the thread that starts
    // them), bound to 0.0.0.0 as most servers are.
    b.ns.enter(|| {
        load::App::start_at(&format!("0.0.0.0:{}", pods::APP_PORT));
        load::App::start_at(&format!("0.0.0.0:{DIRECT_PORT}"));
    });
    let b_app = SocketAddr::from((b.addr, pods::APP_PORT));
    b.start_sidecar(
        |dir| ca.write_files(&ca.svid(&id("/ns/rag/sa/vectordb")), dir),
        &format!(
            r#"
[capture]
inbound = "0.0.0.0:15006"
outbound = "127.0.0.1:15001"
[[inbound]]
name = "http"
port = {port}
allow = ["{app}"]
[[inbound]]
name = "explicit"
listen = "0.0.0.0:{EXPLICIT_INBOUND}"
forward = "127.0.0.1:{port}"
allow = ["{app}"]
"#,
            port = pods::APP_PORT,
            app = id("/ns/rag/sa/app"),
        ),
    );
    a.start_sidecar(
        |dir| ca.write_files(&ca.svid(&id("/ns/rag/sa/app")), dir),
        &format!(
            r#"
[capture]
outbound = "127.0.0.1:15001"
[[outbound]]
name = "vectordb"
destinations = ["{b_app}"]
server_id = "{server}"
[[outbound]]
name = "explicit"
listen = "127.0.0.1:7001"
connect = "{b}:{EXPLICIT_INBOUND}"
server_id = "{server}"
"#,
            b = b.addr,
            server = id("/ns/rag/sa/vectordb"),
        ),
    );
    let pids: Vec<u32> = [&a, &b]
        .iter()
        .filter_map(|p| p.sidecar.as_ref().map(|c| c.id()))
        .collect();
    let entry = |mode| match mode {
        Mode::Direct => SocketAddr::from((b.addr, DIRECT_PORT)),
        Mode::Explicit => "127.0.0.1:7001".parse().expect("addr"),
        Mode::Captured => b_app,
    };
    // The client: a runtime whose threads live in A.
    let rounds: Vec<Vec<(Mode, Figures)>> = a.ns.enter(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            for mode in Mode::ALL {
                load::wait_ready(entry(mode), Duration::from_secs(20))
                    .await
                    .unwrap_or_else(|e| panic!("{} never served: {e}", mode.name()));
            }
            let ticks = sys::clock_ticks();
            let mut rounds = Vec::new();
            for round in 0..opts.rounds {
                let mut figures = Vec::new();
                // Rotate the order so no mode always runs first (or last) in a round.
                for k in 0..Mode::ALL.len() {
                    let mode = Mode::ALL[(round + k) % Mode::ALL.len()];
                    figures.push((mode, measure(entry(mode), &pids, ticks, &opts).await));
                }
                eprintln!("round {} of {} done", round + 1, opts.rounds);
                rounds.push(figures);
            }
            rounds
        })
    });
    let text = report(&rounds, &opts);
    println!("{text}");
    if opts.write {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
        match section::write_section(&path, "capture", &text) {
            Ok(()) => eprintln!("wrote the capture section of {}", path.display()),
            Err(e) => eprintln!("cannot write {}: {e}", path.display()),
        }
    }
}

async fn measure(entry: SocketAddr, pids: &[u32], ticks: f64, opts: &Options) -> Figures {
    let cpu_before = sys::cpu_seconds(pids, ticks);
    let run = load::latency(entry, RATE, CONNS, opts.warmup, opts.duration)
        .await
        .unwrap_or_else(|e| panic!("latency run to {entry}: {e}"));
    let cpu = sys::cpu_seconds(pids, ticks) - cpu_before;
    let conns = load::new_connections(entry, CONNECTORS, opts.duration)
        .await
        .unwrap_or_else(|e| panic!("connection run to {entry}: {e}"));
    let us = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
    Figures {
        p50_us: us(&run.hist, 0.5),
        p99_us: us(&run.hist, 0.99),
        cpu_us_per_req: cpu * 1e6 / run.sent.max(1) as f64,
        conns_per_sec: conns.per_sec,
        conn_p50_us: us(&conns.hist, 0.5),
        conn_p99_us: us(&conns.hist, 0.99),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn report(rounds: &[Vec<(Mode, Figures)>], opts: &Options) -> String {
    let med = |mode: Mode, f: fn(&Figures) -> f64| {
        median(
            rounds
                .iter()
                .flat_map(|r| r.iter().filter(|(m, _)| *m == mode).map(|(_, x)| f(x)))
                .collect(),
        )
    };
    let mut w = String::new();
    let _ = writeln!(
        w,
        "Captured vs explicit mode, one run: {} round(s), modes interleaved; each round {} s at \
         {RATE} requests/s over {CONNS} connections (1 KiB echo), then {} s of new connections \
         ({CONNECTORS} clients). Medians over rounds. Machine: {}, {} cores, load {}.\n",
        rounds.len(),
        opts.duration.as_secs(),
        opts.duration.as_secs(),
        sys::cpu_model(),
        sys::nproc(),
        sys::loadavg(),
    );
    let _ = writeln!(
        w,
        "| mode | p50 µs | p99 µs | sidecar CPU µs/request | new conn/s | conn p50 µs | conn p99 µs |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|");
    for mode in Mode::ALL {
        let _ = writeln!(
            w,
            "| {} | {:.0} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} |",
            mode.name(),
            med(mode, |f| f.p50_us),
            med(mode, |f| f.p99_us),
            med(mode, |f| f.cpu_us_per_req),
            med(mode, |f| f.conns_per_sec),
            med(mode, |f| f.conn_p50_us),
            med(mode, |f| f.conn_p99_us),
        );
    }
    let added = |mode, f: fn(&Figures) -> f64| med(mode, f) - med(Mode::Direct, f);
    let ratio = |f: fn(&Figures) -> f64| added(Mode::Captured, f) / added(Mode::Explicit, f);
    let _ = writeln!(
        w,
        "\nCost of capture (captured / explicit; the target is within 10 %, i.e. <= 1.10):\n"
    );
    let _ = writeln!(w, "| figure | explicit | captured | ratio |");
    let _ = writeln!(w, "|---|---:|---:|---:|");
    type Row = (&'static str, fn(&Figures) -> f64, bool);
    let rows: [Row; 5] = [
        ("added p50 (µs above direct)", |f| f.p50_us, true),
        ("added p99 (µs above direct)", |f| f.p99_us, true),
        ("sidecar CPU per request (µs)", |f| f.cpu_us_per_req, false),
        ("added new-connection p50 (µs)", |f| f.conn_p50_us, true),
        ("new connections per second", |f| f.conns_per_sec, false),
    ];
    for (name, f, above_direct) in rows {
        let (e, c, r) = if above_direct {
            (added(Mode::Explicit, f), added(Mode::Captured, f), ratio(f))
        } else {
            let (e, c) = (med(Mode::Explicit, f), med(Mode::Captured, f));
            (e, c, c / e)
        };
        let _ = writeln!(w, "| {name} | {e:.1} | {c:.1} | {r:.2} x |");
    }
    let _ = writeln!(w, "\n<details><summary>Per round</summary>\n");
    let _ = writeln!(
        w,
        "| round | mode | p50 µs | p99 µs | CPU µs/req | conn/s |"
    );
    let _ = writeln!(w, "|---:|---|---:|---:|---:|---:|");
    for (i, round) in rounds.iter().enumerate() {
        for (mode, f) in round {
            let _ = writeln!(
                w,
                "| {} | {} | {:.0} | {:.0} | {:.1} | {:.0} |",
                i + 1,
                mode.name(),
                f.p50_us,
                f.p99_us,
                f.cpu_us_per_req,
                f.conns_per_sec
            );
        }
    }
    let _ = writeln!(w, "\n</details>");
    w
}
