//! Control-plane propagation: the time from an acknowledged `PutPolicy` until all 1,000
//! watchers of that workload (1,000 `WatchPolicy` streams over 10 mTLS channels, as 1,000
//! replicas would hold them) have received the new version. Goal: p99 under 1 s.
//!
//! In-process control plane (`ControlPlane::start_with_source`, redb store in a temp dir),
//! 127.0.0.1 only. `cargo bench --bench control_propagation` (30 puts, writes its section
//! of BENCHMARKS.md) or `-- --quick` (10 puts, prints only).

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

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let puts = if quick { 10 } else { 30 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (from_ack, from_send, setup) = rt.block_on(run(puts));
    let q = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1_000.0;
    let text = format!(
        "### Control-plane propagation{}\n\n{WATCHERS} watchers of one workload over {CHANNELS} channels, {puts} puts, in-process control plane (redb store on {}), {} cores; watchers connected and confirmed (first put) in {:.1} s.\n\n| time until all {WATCHERS} watchers hold the new version | p50 (ms) | p99 (ms) | max (ms) | goal |\n| --- | ---: | ---: | ---: | --- |\n| from the put's acknowledgement | {:.1} | {:.1} | {:.1} | p99 < 1000 ms: {} |\n| from sending the put | {:.1} | {:.1} | {:.1} | |\n",
        if quick { " (quick)" } else { "" },
        std::env::temp_dir().display(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        setup.as_secs_f64(),
        q(&from_ack, 0.5),
        q(&from_ack, 0.99),
        from_ack.max() as f64 / 1_000.0,
        if q(&from_ack, 0.99) < 1_000.0 {
            "met"
        } else {
            "**missed**"
        },
        q(&from_send, 0.5),
        q(&from_send, 0.99),
        from_send.max() as f64 / 1_000.0,
    );
    println!("{text}");
    if !quick {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
        match section::write_section(&path, "control", &text) {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(e) => eprintln!("cannot write {}: {e}", path.display()),
        }
    }
}

/// Histograms in microseconds: from the put's acknowledgement and from sending it.
async fn run(puts: usize) -> (Histogram<u64>, Histogram<u64>, Duration) {
    let ca = pki::Ca::new(TD);
    let data = tempfile::tempdir().expect("temporary data_dir");
    let toml = format!(
        "trust_domain = \"{TD}\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nadmins = [\"{ADMIN_ID}\"]\n[ca]\nenabled = false\n",
        data.path().join("cp").display()
    );
    let config = ControlPlaneConfig::from_toml("bench.toml", &toml).expect("valid config");
    let cp =
        ControlPlane::start_with_source(&config, Box::new(StaticSource(ca.identity(CP_ID, &[]))))
            .await
            .expect("control plane starts");
    let url = format!("https://{}", cp.addr());
    let mut admin = channel(&url, &store(&ca, ADMIN_ID)).await;

    let setup = Instant::now();
    let workload = store(&ca, WORKLOAD_ID);
    let mut clients = Vec::new();
    for _ in 0..CHANNELS {
        clients.push(channel(&url, &workload).await);
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
    drop(cp);
    (from_ack, from_send, setup_time)
}
