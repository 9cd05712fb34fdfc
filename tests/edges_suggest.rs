//! Edge reports and `warden policy suggest` over real sockets, real sidecars and a real
//! control plane: a demo-like mesh in audit mode is learned, the suggested policy equals
//! the observed edges, round-trips through the policy file parser, and putting it changes no
//! decision of the observed traffic. A control plane that is away costs the data plane
//! nothing: reports are dropped, traffic flows.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::control::*;
use common::pki::Ca;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warden_proto::control::v1 as pb;

/// Whether one connection through `via` is served (echoed) or refused.
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

fn audit(workload: &str) -> pb::WorkloadPolicy {
    pb::WorkloadPolicy {
        spiffe_id: id(workload),
        mode: "audit".into(),
        ..Default::default()
    }
}

/// workload -> "direction.listener" -> peers, from a policy file.
type Rules = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn rules(policies: &[warden_policy::WorkloadPolicy]) -> Rules {
    policies
        .iter()
        .map(|p| {
            let mut m = BTreeMap::new();
            for (dir, side) in [("inbound", &p.inbound), ("outbound", &p.outbound)] {
                for (listener, pats) in side {
                    m.insert(
                        format!("{dir}.{listener}"),
                        pats.iter().map(|x| x.as_str().to_owned()).collect(),
                    );
                }
            }
            (p.spiffe_id.to_string(), m)
        })
        .collect()
}

fn expected() -> Rules {
    let mut r = Rules::new();
    let mut add = |w: &str, key: &str, peer: &str| {
        r.entry(id(w))
            .or_default()
            .insert(key.to_owned(), vec![id(peer)]);
    };
    add("/app", "outbound.retriever", "/retriever");
    add("/retriever", "inbound.http", "/app");
    add("/retriever", "outbound.vectordb", "/vectordb");
    add("/vectordb", "inbound.http", "/retriever");
    r
}

async fn observed(
    api: &mut warden_proto::control::v1::policy_service_client::PolicyServiceClient<
        tonic::transport::Channel,
    >,
) -> Vec<pb::ObservedEdge> {
    api.observed(pb::ObservedRequest::default())
        .await
        .map(|r| r.into_inner().edges)
        .unwrap_or_default()
}

fn count(
    edges: &[pb::ObservedEdge],
    workload: &str,
    direction: &str,
    peer: &str,
) -> (u64, u64, u64) {
    edges
        .iter()
        .filter(|e| {
            e.workload == id(workload)
                && e.direction == direction
                && e.peer_id == id(peer)
                && !e.http
        })
        .fold((0, 0, 0), |(a, w, d), e| {
            (a + e.allowed, w + e.would_deny, d + e.denied)
        })
}

#[tokio::test]
async fn the_suggested_policy_equals_the_observed_edges_and_changes_no_decision() {
    let ca = Ca::new(TD);
    let cp = CpProcess::start_with(&ca, "[edges]\nmin_report_interval = \"10ms\"\n", "warn");
    let mut admin = cp.admin().await;
    let url = cp.url();
    // app -> retriever -> vectordb, app and retriever in audit mode with no rules at all,
    // vectordb enforcing; an intruder (no control plane) calls vectordb and is denied.
    for p in [audit("/app"), audit("/retriever")] {
        put(&mut admin, p, None).await.expect("put");
    }
    put(
        &mut admin,
        inbound_policy("/vectordb", &["/retriever"]),
        None,
    )
    .await
    .expect("put");
    let (r_app, v_app) = (EchoApp::start().await, EchoApp::start().await);
    let vectordb = sidecar(
        &reporting_config(&url, Some(v_app.addr), &[]),
        ca.identity(&id("/vectordb"), &[]),
    )
    .await;
    let v_addr = vectordb.inbound_addr("http").expect("v");
    let retriever = sidecar(
        &reporting_config(&url, Some(r_app.addr), &[("vectordb", v_addr, "/vectordb")]),
        ca.identity(&id("/retriever"), &[]),
    )
    .await;
    let r_addr = retriever.inbound_addr("http").expect("r");
    let app = sidecar(
        &reporting_config(&url, None, &[("retriever", r_addr, "/retriever")]),
        ca.identity(&id("/app"), &[]),
    )
    .await;
    let intruder = sidecar(
        &outbound_config(v_addr, &id("/vectordb")),
        ca.identity(&id("/intruder"), &[]),
    )
    .await;
    for s in [&app, &retriever, &vectordb] {
        wait_until("policy applied", Duration::from_secs(10), || {
            s.policy().has_policy()
        })
        .await;
    }

    let to_retriever = app.outbound_addr("retriever").expect("a");
    let to_vectordb = retriever.outbound_addr("vectordb").expect("r");
    let intruding = intruder.outbound_addr("svc").expect("i");
    for _ in 0..3 {
        assert!(
            call(to_retriever).await,
            "audit mode let app -> retriever through"
        );
    }
    for _ in 0..2 {
        assert!(call(to_vectordb).await);
        assert!(!call(intruding).await, "the intruder got in");
    }

    // The control plane aggregates what every sidecar reported.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let edges = observed(&mut admin).await;
        let want = [
            (count(&edges, "/app", "outbound", "/retriever"), (0, 3, 0)),
            (count(&edges, "/retriever", "inbound", "/app"), (0, 3, 0)),
            (
                count(&edges, "/retriever", "outbound", "/vectordb"),
                (0, 2, 0),
            ),
            (
                count(&edges, "/vectordb", "inbound", "/retriever"),
                (2, 0, 0),
            ),
            (
                count(&edges, "/vectordb", "inbound", "/intruder"),
                (0, 0, 2),
            ),
        ];
        if want.iter().all(|(got, want)| got == want) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "edges not reported: {want:?}\n{edges:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let admin_dir = cp.admin_dir();
    let base = [
        "policy",
        "--control-plane",
        &url,
        "--identity-dir",
        admin_dir.to_str().expect("utf-8"),
    ];
    let run = |extra: &'static [&'static str]| {
        let mut args: Vec<&str> = base.to_vec();
        args.extend_from_slice(extra);
        async move { warden(&args).await }
    };
    let (ok, text, err) = run(&["suggest", "--since", "1h"]).await;
    assert!(ok, "suggest failed: {err}");
    let suggested =
        warden_policy::parse_policy_file(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(rules(&suggested), expected(), "{text}");
    assert!(text.contains("2 denied connection(s)"), "{text}");
    // It round-trips: the parsed file written back parses to the same policies.
    assert_eq!(
        warden_policy::parse_policy_file(&warden_policy::to_toml(&suggested)).expect("rt"),
        suggested
    );
    let (ok, one, err) = run(&["suggest", "--workload", "spiffe://example.org/vectordb"]).await;
    assert!(ok, "{err}");
    let one = warden_policy::parse_policy_file(&one).expect("parses");
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].spiffe_id.as_str(), id("/vectordb"));

    // Put it: every observed decision stays what it was.
    let file = cp.dir.path().join("suggested.toml");
    std::fs::write(&file, &text).expect("write");
    let (ok, out, err) = run_put(&base, &file).await;
    assert!(ok, "put failed: {err}\n{out}");
    for s in [&app, &retriever, &vectordb] {
        wait_until("suggested policy applied", Duration::from_secs(10), || {
            s.policy().mode() == warden_policy::Mode::Enforce && s.policy().version() > 3
        })
        .await;
    }
    assert!(call(to_retriever).await, "app -> retriever changed");
    assert!(call(to_vectordb).await, "retriever -> vectordb changed");
    assert!(!call(intruding).await, "the intruder changed");
    // Now allowed by rules, not let through by audit mode.
    let text = retriever.telemetry().metrics().encode().expect("metrics");
    let allow = format!(
        "warden_authz_decisions_total{{direction=\"inbound\",listener=\"http\",peer_id=\"{}\",decision=\"allow\",reason=\"allowed\"}} 1",
        id("/app")
    );
    assert!(text.contains(&allow), "{allow}\n{text}");
}

async fn run_put(base: &[&str], file: &Path) -> (bool, String, String) {
    let mut args: Vec<&str> = base.to_vec();
    let path = file.to_str().expect("utf-8");
    args.extend_from_slice(&["put", "-f", path]);
    warden(&args).await
}

/// The control plane goes away: the sidecar keeps serving from its policy, and its reports
/// are dropped (counted), never queued.
#[tokio::test]
async fn reports_are_dropped_while_the_control_plane_is_away_and_traffic_flows() {
    let ca = Ca::new(TD);
    let mut cp = CpProcess::start(&ca);
    let mut admin = cp.admin().await;
    put(
        &mut admin,
        inbound_policy("/vectordb", &["/retriever"]),
        None,
    )
    .await
    .expect("put");
    let app = EchoApp::start().await;
    let b = sidecar(
        &reporting_config(&cp.url(), Some(app.addr), &[]),
        ca.identity(&id("/vectordb"), &[]),
    )
    .await;
    wait_until("policy applied", Duration::from_secs(10), || {
        b.policy().has_policy()
    })
    .await;
    let a = sidecar(
        &outbound_config(b.inbound_addr("http").expect("b"), &id("/vectordb")),
        ca.identity(&id("/retriever"), &[]),
    )
    .await;
    let via = a.outbound_addr("svc").expect("a");
    cp.kill9();
    let dropped = |s: &warden_sidecar::Sidecar| {
        s.telemetry()
            .metrics()
            .encode()
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("warden_edge_reports_total{result=\"dropped\"}"))
                    .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    for _ in 0..20 {
        assert!(
            call(via).await,
            "traffic stopped with the control plane away"
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while dropped(&b) < 2 {
        assert!(
            call(via).await,
            "traffic stopped with the control plane away"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "no report was dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
