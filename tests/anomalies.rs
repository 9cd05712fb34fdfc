//! Anomalies and quarantine over real sockets, real sidecars and a real control plane with
//! its rules compressed by configuration (100 ms windows): steady traffic raises nothing; a
//! new edge after the learning window is flagged and its caller quarantined (its own sidecar
//! reported the call); a deny burst reported by one workload only is an alert, not a
//! quarantine. Quarantine is refused at every sidecar and by the identity's own sidecar,
//! revokes open connections within 1 s of an admin's quarantine, is lifted by release, is
//! in the history with who did it, and survives a control-plane restart.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::control::*;
use common::pki::Ca;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warden_proto::control::v1 as pb;

/// The contract: a change is enforced within 1 s of the write being acknowledged.
const PROPAGATION: Duration = Duration::from_secs(1);
const LEARNING: Duration = Duration::from_millis(1500);

const RULES: &str = r#"
[edges]
min_report_interval = "10ms"
[anomaly]
response = "quarantine"
learning = "1500ms"
window = "100ms"
baseline_windows = 3
deny_burst = 5
"#;

async fn call(via: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(via).await else {
        return false;
    };
    if s.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf)).await,
        Ok(Ok(_))
    ) && &buf == b"ping"
}

async fn open(via: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(via).await.expect("connect");
    s.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .expect("in time")
        .expect("echo");
    s
}

/// Whether `s` is closed by the other side within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1];
    matches!(
        tokio::time::timeout(within, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// A TLS client presenting `who`'s own SVID directly to an inbound listener: what the
/// listener decides about that identity, without its own sidecar in the way.
async fn direct(ca: &Ca, who: &str, to: SocketAddr) -> bool {
    let svid = ca.svid(&id(who));
    let config = raw_client_config(
        Some((&svid.chain, svid.key_der())),
        &[&rustls::version::TLS13],
    );
    tls_exchange(to, config, b"ping").await.is_ok()
}

fn outbound(workload: &str, listener: &str, server: &str) -> pb::WorkloadPolicy {
    let mut p = pb::WorkloadPolicy {
        spiffe_id: id(workload),
        ..Default::default()
    };
    p.outbound.insert(
        listener.into(),
        pb::PatternList {
            patterns: vec![id(server)],
        },
    );
    p
}

async fn anomalies(
    api: &mut warden_proto::control::v1::policy_service_client::PolicyServiceClient<
        tonic::transport::Channel,
    >,
) -> pb::AnomaliesResponse {
    api.anomalies(pb::AnomaliesRequest::default())
        .await
        .map(|r| r.into_inner())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_new_edge_quarantines_its_caller_everywhere_until_released_and_a_lone_deny_burst_only_alerts()
 {
    let ca = Ca::new(TD);
    let started = Instant::now();
    let mut cp = CpProcess::start_with(&ca, RULES, "info");
    let mut admin = cp.admin().await;
    let url = cp.url();
    put(
        &mut admin,
        inbound_policy("/vectordb", &["/retriever", "/rogue"]),
        None,
    )
    .await
    .expect("put");
    put(&mut admin, inbound_policy("/llm", &["/rogue"]), None)
        .await
        .expect("put");
    put(
        &mut admin,
        outbound("/retriever", "vectordb", "/vectordb"),
        None,
    )
    .await
    .expect("put");
    put(
        &mut admin,
        outbound("/rogue", "vectordb", "/vectordb"),
        None,
    )
    .await
    .expect("put");
    let (v_app, l_app) = (EchoApp::start().await, EchoApp::start().await);
    let vectordb = sidecar(
        &reporting_config(&url, Some(v_app.addr), &[]),
        ca.identity(&id("/vectordb"), &[]),
    )
    .await;
    let llm = sidecar(
        &reporting_config(&url, Some(l_app.addr), &[]),
        ca.identity(&id("/llm"), &[]),
    )
    .await;
    let v_addr = vectordb.inbound_addr("http").expect("v");
    let l_addr = llm.inbound_addr("http").expect("l");
    let retriever = sidecar(
        &reporting_config(&url, None, &[("vectordb", v_addr, "/vectordb")]),
        ca.identity(&id("/retriever"), &[]),
    )
    .await;
    let rogue = sidecar(
        &reporting_config(&url, None, &[("vectordb", v_addr, "/vectordb")]),
        ca.identity(&id("/rogue"), &[]),
    )
    .await;
    // An intruder without a control plane, denied by vectordb.
    let intruder = sidecar(
        &outbound_config(v_addr, &id("/vectordb")),
        ca.identity(&id("/intruder"), &[]),
    )
    .await;
    for s in [&vectordb, &llm, &retriever, &rogue] {
        wait_until("policy applied", Duration::from_secs(10), || {
            s.policy().has_policy()
        })
        .await;
    }
    let steady = retriever.outbound_addr("vectordb").expect("r");
    let rogue_out = rogue.outbound_addr("vectordb").expect("g");
    let intruding = intruder.outbound_addr("svc").expect("i");

    // Steady traffic through the learning window and well after it: no anomaly.
    let quiet_until = LEARNING + Duration::from_millis(1500);
    while started.elapsed() < quiet_until {
        assert!(call(steady).await, "steady traffic refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = anomalies(&mut admin).await;
    assert!(
        before.anomalies.is_empty(),
        "false alarm on steady traffic: {:#?}",
        before.anomalies
    );

    // A deny burst reported by vectordb alone: an alert, never a quarantine.
    for _ in 0..40 {
        assert!(!call(intruding).await, "the intruder got in");
    }
    // The rogue's first call after learning, reported by its own sidecar: new_edge, and a
    // quarantine that revokes the connection it holds open, in both its own sidecar and
    // vectordb's.
    let mut held = open(rogue_out).await;
    assert!(
        closed_within(&mut held, Duration::from_secs(15)).await,
        "the rogue's connection survived its quarantine; log:\n{}",
        cp.log()
    );
    let found = anomalies(&mut admin).await;
    let kinds: Vec<(&str, &str, &str)> = found
        .anomalies
        .iter()
        .map(|a| (a.kind.as_str(), a.workload.as_str(), a.response.as_str()))
        .collect();
    let rogue_id = id("/rogue");
    let intruder_id = id("/intruder");
    assert!(
        kinds.contains(&("new_edge", rogue_id.as_str(), "quarantine")),
        "{kinds:?}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let burst = loop {
        let found = anomalies(&mut admin).await;
        if let Some(a) = found
            .anomalies
            .iter()
            .find(|a| a.kind == "deny_burst" && a.workload == intruder_id)
        {
            break a.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no deny_burst: {:#?}",
            found.anomalies
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(burst.response, "alert");
    assert!(
        burst.detail.contains("one other workload"),
        "{}",
        burst.detail
    );
    assert!(
        !found
            .anomalies
            .iter()
            .any(|a| a.workload == id("/retriever")),
        "steady traffic flagged: {:#?}",
        found.anomalies
    );
    assert_eq!(found.quarantined.len(), 1, "{:#?}", found.quarantined);
    assert_eq!(found.quarantined[0].spiffe_id, rogue_id);
    assert!(found.quarantined[0].by.contains("anomaly response"));

    // Refused everywhere: its own sidecar refuses its outbound, every sidecar its inbound.
    for s in [&rogue, &vectordb, &llm] {
        wait_until("quarantine in force", Duration::from_secs(5), || {
            s.policy().quarantined() == vec![rogue_id.as_str()]
        })
        .await;
    }
    assert!(!call(rogue_out).await, "its own sidecar let it out");
    assert!(!direct(&ca, "/rogue", l_addr).await, "llm let it in");
    assert!(!direct(&ca, "/rogue", v_addr).await, "vectordb let it in");
    assert!(call(steady).await, "the quarantine hit an innocent edge");
    let metrics = llm.telemetry().metrics().encode().expect("metrics");
    assert!(
        metrics.contains(&format!(
            "peer_id=\"{rogue_id}\",decision=\"deny\",reason=\"quarantined\""
        )),
        "{metrics}"
    );

    // `warden policy anomalies` lists both, and the quarantine.
    let admin_dir = cp.admin_dir();
    let dir = admin_dir.to_str().expect("utf-8");
    let cli = |args: &[&str]| {
        let mut all = vec![
            "policy",
            "--control-plane",
            url.as_str(),
            "--identity-dir",
            dir,
        ];
        all.extend_from_slice(args);
        all.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        warden(&refs).await
    };
    let (ok, out, err) = run(cli(&["anomalies"])).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("new_edge") && out.contains("deny_burst"),
        "{out}"
    );
    assert!(out.contains("1 identit(ies) in quarantine"), "{out}");

    // Release: the rogue is served again.
    let (ok, out, err) = run(cli(&["release", &rogue_id])).await;
    assert!(ok, "release failed: {err}");
    assert!(out.contains("released at version"), "{out}");
    for s in [&rogue, &vectordb] {
        wait_until("release in force", PROPAGATION, || {
            s.policy().quarantined().is_empty()
        })
        .await;
    }
    assert!(
        call(rogue_out).await,
        "the release did not restore the rogue"
    );

    // An admin's quarantine revokes open connections within 1 s of its acknowledgement.
    let mut held = open(rogue_out).await;
    let (ok, _, err) = run(cli(&["quarantine", &rogue_id, "--reason", "investigating"])).await;
    assert!(ok, "quarantine failed: {err}");
    assert!(
        closed_within(&mut held, PROPAGATION).await,
        "not revoked within {PROPAGATION:?} of the admin's quarantine"
    );

    // Both responses are in the history, with who and why.
    let (ok, out, err) = run(cli(&["history", &rogue_id])).await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("quarantine") || l.contains("release"))
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].contains("anomaly response") && lines[0].contains("new_edge"),
        "{out}"
    );
    assert!(
        lines[1].contains("release") && lines[1].contains(&id(ADMIN_PATH)),
        "{out}"
    );
    assert!(
        lines[2].contains("investigating") && lines[2].contains(&id(ADMIN_PATH)),
        "{out}"
    );

    // The quarantine survives a control-plane restart: a sidecar that starts afresh (no
    // cache) learns it from the restarted control plane.
    cp.kill9();
    cp.spawn();
    let mut admin = cp.admin().await;
    let after = anomalies(&mut admin).await;
    assert_eq!(
        after
            .quarantined
            .iter()
            .map(|q| q.spiffe_id.as_str())
            .collect::<Vec<_>>(),
        vec![rogue_id.as_str()]
    );
    let fresh = sidecar(
        &reporting_config(&cp.url(), Some(l_app.addr), &[]),
        ca.identity(&id("/llm"), &[]),
    )
    .await;
    wait_until(
        "quarantine in the fresh sidecar",
        Duration::from_secs(10),
        || fresh.policy().quarantined() == vec![rogue_id.as_str()],
    )
    .await;
    assert!(
        !direct(&ca, "/rogue", fresh.inbound_addr("http").expect("f")).await,
        "a restart lifted the quarantine"
    );
}
