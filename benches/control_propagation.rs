//! Control-plane propagation: the time from an acknowledged `PutPolicy` until all 1,000
//! watchers of that workload (1,000 `WatchPolicy` streams over 10 mTLS channels, as 1,000
//! replicas would hold them) have received the new version. Goal: p99 under 1 s.
//!
//! Two stores in the same run: the embedded one (one in-process control plane, redb in a
//! temp dir) and etcd (a real 3-member cluster of `/usr/bin/etcd` on 127.0.0.1 with client
//! TLS, three in-process control-plane replicas; the watchers spread over the three, every
//! put made on the first, so two thirds of the watchers learn of it through etcd's watch).
//! Also the write throughput of each: concurrent writers, spread over the replicas.
//! 127.0.0.1 only. `cargo bench --bench control_propagation` (30 puts, writes its section
//! of BENCHMARKS.md) or `-- --quick` (10 puts, prints only). Without etcd the etcd rows
//! say so.

#[path = "../tests/support/etcd.rs"]
mod etcd;
#[path = "../tests/common/pki.rs"]
#[allow(dead_code)]
mod pki;
#[path = "mesh/section.rs"]
mod section;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use warden_control::config::ControlPlaneConfig;
use warden_control::server::ControlPlane;
use warden_identity::{IdentityStore, SpiffeId, StaticSource};
use warden_proto::control::v1 as pb;
use warden_proto::control::v1::policy_service_client::PolicyServiceClient;

const TD: &str = "example.org";
const CP_ID: &str = "spiffe://example.org/warden/control-plane";
const ADMIN_ID: &str = "spiffe://example.org/warden/admin";
const WORKLOAD_ID: &str = "spiffe://example.org/ns/rag/sa/retriever";
const WATCHERS: usize = 1_000;
const CHANNELS: usize = 10;
/// Writers in the throughput run, each with its own channel, spread over the replicas.
const WRITERS: usize = 12;
/// Puts in the throughput run.
const THROUGHPUT_PUTS: usize = 1_200;

fn store(ca: &pki::Ca, id: &str) -> Arc<IdentityStore> {
    let s = IdentityStore::new();
    s.set(ca.identity(id, &[]));
    s
}

async fn channel(
    url: &str,
    identity: &Arc<IdentityStore>,
) -> PolicyServiceClient<tonic::transport::Channel> {
    let cp_id = SpiffeId::parse(CP_ID).expect("valid ID");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match warden_sidecar::control::client::connect(
            url,
            identity,
            &cp_id,
            Duration::from_secs(2),
        )
        .await
        {
            Ok(c) => return PolicyServiceClient::new(c),
            Err(e) if Instant::now() > deadline => panic!("control plane unreachable: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

fn policy(n: usize) -> pb::WorkloadPolicy {
    let mut p = pb::WorkloadPolicy {
        spiffe_id: WORKLOAD_ID.into(),
        ..Default::default()
    };
    p.inbound.insert(
        "http".into(),
        pb::PatternList {
            patterns: vec![format!("spiffe://{TD}/ns/rag/sa/app{n}")],
        },
    );
    p
}

/// One store's figures.
struct Figures {
    from_ack: Histogram<u64>,
    from_send: Histogram<u64>,
    setup: Duration,
    writes_per_s: f64,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let puts = if quick { 10 } else { 30 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (embedded, etcd) = rt.block_on(async {
        let embedded = run_embedded(puts).await;
        let etcd = if etcd::etcd_binary().is_some() {
            Some(run_etcd(puts).await)
        } else {
            None
        };
        (embedded, etcd)
    });
    let q = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1_000.0;
    let row = |name: &str, f: &Figures| {
        format!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.0} |\n",
            q(&f.from_ack, 0.5),
            q(&f.from_ack, 0.99),
            f.from_ack.max() as f64 / 1_000.0,
            q(&f.from_send, 0.5),
            q(&f.from_send, 0.99),
            if q(&f.from_ack, 0.99) < 1_000.0 {
                "met"
            } else {
                "**missed**"
            },
            f.writes_per_s,
        )
    };
    let mut text = format!(
        "### Control-plane propagation{}\n\n{WATCHERS} watchers of one workload over {CHANNELS} channels, {puts} puts; {} cores, everything in one process on 127.0.0.1 (watchers, admin, control planes). Embedded: one control plane, redb store on {}. etcd: a 3-member cluster of etcd {} (client TLS, fsync on) and 3 control-plane replicas, the watchers spread over them, every put made on the first. Watchers connected and confirmed (first put) in {:.1} s (embedded){}. Writes: {THROUGHPUT_PUTS} puts by {WRITERS} concurrent writers (spread over the replicas), each put a different workload.\n\n| store | p50 from ack (ms) | p99 from ack (ms) | max from ack (ms) | p50 from send (ms) | p99 from send (ms) | goal p99 < 1000 ms | writes/s |\n| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |\n",
        if quick { " (quick)" } else { "" },
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        std::env::temp_dir().display(),
        etcd_version(),
        embedded.setup.as_secs_f64(),
        etcd.as_ref()
            .map(|f| format!(" and {:.1} s (etcd)", f.setup.as_secs_f64()))
            .unwrap_or_default(),
    );
    text.push_str(&row("embedded (1 control plane)", &embedded));
    match &etcd {
        Some(f) => text.push_str(&row("etcd (3 replicas, 3 members)", f)),
        None => text.push_str(
            "| etcd | not run: no etcd binary (apt-get install etcd-server) | | | | | | |\n",
        ),
    }
    println!("{text}");
    if !quick {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
        match section::write_section(&path, "control", &text) {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(e) => eprintln!("cannot write {}: {e}", path.display()),
        }
    }
}

fn etcd_version() -> String {
    etcd::etcd_binary()
        .and_then(|b| std::process::Command::new(b).arg("--version").output().ok())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim_start_matches("etcd Version: ").to_owned())
        })
        .unwrap_or_else(|| "(none)".into())
}

fn config(ca_dir: &std::path::Path, extra: &str) -> ControlPlaneConfig {
    let toml = format!(
        "trust_domain = \"{TD}\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nadmins = [\"{ADMIN_ID}\"]\n[ca]\nenabled = false\n{extra}",
        ca_dir.display()
    );
    ControlPlaneConfig::from_toml("bench.toml", &toml).expect("valid config")
}

async fn run_embedded(puts: usize) -> Figures {
    let ca = pki::Ca::new(TD);
    let data = tempfile::tempdir().expect("temporary data_dir");
    let cp = ControlPlane::start_with_source(
        &config(&data.path().join("cp"), ""),
        Box::new(StaticSource(ca.identity(CP_ID, &[]))),
    )
    .await
    .expect("control plane starts");
    let url = format!("https://{}", cp.addr());
    let figures = measure(&ca, std::slice::from_ref(&url), puts).await;
    drop(cp);
    figures
}

async fn run_etcd(puts: usize) -> Figures {
    let cluster = etcd::EtcdCluster::start(3).await;
    let ca = pki::Ca::new(TD);
    let mut replicas = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..3 {
        let data = tempfile::tempdir().expect("temporary data_dir");
        let cp = ControlPlane::start_with_source(
            &config(
                &data.path().join("cp"),
                &cluster.store_toml("/warden-bench"),
            ),
            Box::new(StaticSource(ca.identity(CP_ID, &[]))),
        )
        .await
        .expect("control plane replica starts");
        replicas.push(cp);
        dirs.push(data);
    }
    let urls: Vec<String> = replicas
        .iter()
        .map(|cp| format!("https://{}", cp.addr()))
        .collect();
    let figures = measure(&ca, &urls, puts).await;
    drop(replicas);
    drop(cluster);
    figures
}

/// Propagation to watchers spread over `urls` (puts on the first), then write throughput
/// with writers spread over them.
async fn measure(ca: &pki::Ca, urls: &[String], puts: usize) -> Figures {
    let (from_ack, from_send, setup) = propagation(ca, urls, puts).await;
    let writes_per_s = throughput(ca, urls).await;
    Figures {
        from_ack,
        from_send,
        setup,
        writes_per_s,
    }
}

async fn throughput(ca: &pki::Ca, urls: &[String]) -> f64 {
    let admin = store(ca, ADMIN_ID);
    let mut writers = Vec::new();
    for i in 0..WRITERS {
        writers.push(channel(&urls[i % urls.len()], &admin).await);
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (w, mut api) in writers.into_iter().enumerate() {
        tasks.spawn(async move {
            for n in (w..THROUGHPUT_PUTS).step_by(WRITERS) {
                let mut p = policy(n);
                p.spiffe_id = format!("spiffe://{TD}/ns/bench/sa/w{n}");
                api.put_policy(pb::PutPolicyRequest {
                    policy: Some(p),
                    expected_version: None,
                })
                .await
                .expect("put_policy");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("writer");
    }
    THROUGHPUT_PUTS as f64 / started.elapsed().as_secs_f64()
}

/// Histograms in microseconds: from the put's acknowledgement and from sending it.
async fn propagation(
    ca: &pki::Ca,
    urls: &[String],
    puts: usize,
) -> (Histogram<u64>, Histogram<u64>, Duration) {
    let mut admin = channel(&urls[0], &store(ca, ADMIN_ID)).await;

    let setup = Instant::now();
    let workload = store(ca, WORKLOAD_ID);
    let mut clients = Vec::new();
    for i in 0..CHANNELS {
        clients.push(channel(&urls[i % urls.len()], &workload).await);
    }
    // Every watcher reports (version, arrival) for each present snapshot it receives.
    let (arrivals, mut arrived) = mpsc::unbounded_channel::<(u64, Instant)>();
    let mut keep = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..WATCHERS {
        let mut c = clients[i % CHANNELS].clone();
        let (tx, rx) = mpsc::channel(1);
        keep.push(tx);
        let mut stream = c
            .watch_policy(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("watch_policy")
            .into_inner();
        let arrivals = arrivals.clone();
        tasks.spawn(async move {
            while let Ok(Some(snap)) = stream.message().await {
                if snap.present && arrivals.send((snap.version, Instant::now())).is_err() {
                    return;
                }
            }
        });
    }
    // The first put doubles as the check that every watcher is subscribed.
    let mut from_ack = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut from_send = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut warmed = false;
    let mut setup_time = Duration::ZERO;
    let mut n = 0;
    while n < puts {
        let sent = Instant::now();
        let resp = admin
            .put_policy(pb::PutPolicyRequest {
                policy: Some(policy(n)),
                expected_version: None,
            })
            .await
            .expect("put_policy");
        let acked = Instant::now();
        let version = resp
            .into_inner()
            .policy
            .map(|p| p.version)
            .expect("the put returns the stored policy");
        let mut got = 0;
        let mut last = acked;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while got < WATCHERS {
            match tokio::time::timeout_at(deadline, arrived.recv()).await {
                Ok(Some((v, at))) if v == version => {
                    got += 1;
                    last = last.max(at);
                }
                Ok(Some(_)) => {}
                _ => panic!("only {got} of {WATCHERS} watchers saw version {version} within 30 s"),
            }
        }
        if warmed {
            from_ack.saturating_record(last.saturating_duration_since(acked).as_micros() as u64);
            from_send.saturating_record(last.saturating_duration_since(sent).as_micros() as u64);
            n += 1;
        } else {
            warmed = true;
            setup_time = setup.elapsed();
        }
    }
    drop(keep);
    tasks.abort_all();
    (from_ack, from_send, setup_time)
}
