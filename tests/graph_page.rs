//! The control plane's admin listener against a running mesh: `/metrics`, `/healthz`,
//! `/readyz`, `/graph.json`, and the `/graph` page in a real headless Chromium (Debian's
//! `chromium`): it renders the mesh's nodes and edges, coloured by decision, with the
//! anomaly and the quarantine marked, and no console error.
//!
//! Without Chromium the page test is skipped with a printed reason, unless
//! `WARDEN_REQUIRE_BROWSER=1` (CI), where a missing browser fails it. With
//! `WARDEN_UPDATE_SCREENSHOT=1` the screenshot it takes replaces `docs/graph.png`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::control::*;
use common::pki::Ca;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warden_proto::control::v1 as pb;

const RULES: &str = r#"
[edges]
min_report_interval = "10ms"
[anomaly]
learning = "1h"
window = "100ms"
baseline_windows = 2
deny_burst = 3
"#;

/// One HTTP/1.1 GET: (status, head, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.expect("admin connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

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

fn browser() -> Option<PathBuf> {
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
    })
}

/// Headless Chromium with no network beyond 127.0.0.1 and nothing running in the
/// background; `extra` says what to produce (the DOM, a screenshot).
async fn chromium(binary: &Path, profile: &Path, url: &str, extra: &[String]) -> (String, String) {
    let mut cmd = tokio::process::Command::new(binary);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--proxy-server=127.0.0.1:9",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .arg(url)
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("chromium finished in time")
        .expect("chromium runs");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_admin_listener_serves_metrics_health_and_a_graph_a_real_browser_renders() {
    let ca = Ca::new(TD);
    let cp = CpProcess::start_with(&ca, RULES, "warn");
    let mut admin = cp.admin().await;
    let url = cp.url();
    let admin_http = cp.admin_addr;
    // app -> retriever (retriever in audit mode with no rules: would_deny),
    // retriever -> vectordb (allowed), intruder -> vectordb (denied, then quarantined).
    let mut retriever_policy = pb::WorkloadPolicy {
        spiffe_id: id("/retriever"),
        mode: "audit".into(),
        ..Default::default()
    };
    retriever_policy.outbound.insert(
        "vectordb".into(),
        pb::PatternList {
            patterns: vec![id("/vectordb")],
        },
    );
    put(&mut admin, retriever_policy, None).await.expect("put");
    let mut app_policy = pb::WorkloadPolicy {
        spiffe_id: id("/app"),
        ..Default::default()
    };
    app_policy.outbound.insert(
        "retriever".into(),
        pb::PatternList {
            patterns: vec![id("/retriever")],
        },
    );
    put(&mut admin, app_policy, None).await.expect("put");
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
    let (a_out, r_out, i_out) = (
        app.outbound_addr("retriever").expect("a"),
        retriever.outbound_addr("vectordb").expect("r"),
        intruder.outbound_addr("svc").expect("i"),
    );

    // Traffic until the graph has the allowed and would-deny edges.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let decision = |graph: &serde_json::Value, from: &str, to: &str| {
        graph["edges"]
            .as_array()
            .and_then(|l| {
                l.iter()
                    .find(|e| e["from"] == id(from).as_str() && e["to"] == id(to).as_str())
            })
            .and_then(|e| e["decision"].as_str().map(str::to_owned))
    };
    let graph_json = || async {
        let (status, _, body) = get(admin_http, "/graph.json").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).expect("graph.json")
    };
    loop {
        assert!(call(a_out).await, "app -> retriever");
        assert!(call(r_out).await, "retriever -> vectordb");
        let graph = graph_json().await;
        if decision(&graph, "/app", "/retriever").as_deref() == Some("would_deny")
            && decision(&graph, "/retriever", "/vectordb").is_some()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the graph never showed the mesh: {graph:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Then a sudden burst of denied calls from an identity never denied before.
    for _ in 0..10 {
        assert!(!call(i_out).await, "the intruder got in");
    }
    let graph = loop {
        let graph = graph_json().await;
        let burst = graph["anomalies"].as_array().is_some_and(|l| {
            l.iter()
                .any(|a| a["kind"] == "deny_burst" && a["workload"] == id("/intruder").as_str())
        });
        if burst && decision(&graph, "/intruder", "/vectordb").as_deref() == Some("deny") {
            break graph;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no deny burst in the graph: {graph:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        graph["nodes"].as_array().map(Vec::len),
        Some(4),
        "{graph:#}"
    );

    // An admin quarantines the intruder: the graph marks it.
    admin
        .quarantine(pb::QuarantineRequest {
            spiffe_id: id("/intruder"),
            reason: "probing vectordb".into(),
        })
        .await
        .expect("quarantine");

    let (status, head, metrics) = get(admin_http, "/metrics").await;
    assert_eq!(status, 200);
    assert!(head.contains("application/openmetrics-text"), "{head}");
    for want in [
        "warden_control_api_calls_total{method=\"PutPolicy\",result=\"admitted\"} 3".to_owned(),
        "warden_control_policy_writes_total{action=\"put\",result=\"ok\"} 3".to_owned(),
        "warden_control_policy_writes_total{action=\"quarantine\",result=\"ok\"} 1".to_owned(),
        "warden_control_watchers 3".to_owned(),
        format!(
            "warden_anomalies_total{{kind=\"deny_burst\",workload=\"{}\",peer_id=\"*\"}}",
            id("/intruder")
        ),
        "warden_control_edge_reports_total{result=\"accepted\"}".to_owned(),
    ] {
        assert!(metrics.contains(&want), "{want}\n{metrics}");
    }
    assert_eq!(get(admin_http, "/healthz").await.0, 200);
    assert_eq!(get(admin_http, "/readyz").await.0, 200);
    assert_eq!(get(admin_http, "/nope").await.0, 404);
    let (status, head, html) = get(admin_http, "/graph").await;
    assert_eq!(status, 200);
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    assert!(html.contains(&id("/intruder")), "the page embeds its data");

    let Some(binary) = browser() else {
        let why = "chromium not found on PATH (Debian: apt-get install chromium)";
        assert!(
            std::env::var_os("WARDEN_REQUIRE_BROWSER").is_none(),
            "WARDEN_REQUIRE_BROWSER is set: {why}"
        );
        eprintln!("SKIPPED the browser part of the /graph test: {why}");
        return;
    };
    let profile = tempfile::tempdir().expect("tmp");
    let page = format!("http://{admin_http}/graph");
    let (dom, log) = chromium(&binary, profile.path(), &page, &["--dump-dom".to_owned()]).await;
    assert!(
        dom.contains("data-errors=\"0\""),
        "page errors:\n{dom}\n{log}"
    );
    assert!(!log.contains("Uncaught"), "console error:\n{log}");
    assert!(dom.contains("data-nodes=\"4\""), "{dom}");
    for node in ["/app", "/retriever", "/vectordb"] {
        assert!(
            dom.contains(&format!("class=\"node\" data-id=\"{}\"", id(node))),
            "node {node} not drawn:\n{dom}"
        );
    }
    assert!(
        dom.contains(&format!(
            "class=\"node quarantined anomalous\" data-id=\"{}\"",
            id("/intruder")
        )),
        "the quarantined, anomalous intruder is not marked:\n{dom}"
    );
    for (from, to, decision) in [
        ("/app", "/retriever", "would_deny"),
        ("/intruder", "/vectordb", "deny"),
    ] {
        let want = format!(
            "data-from=\"{}\" data-to=\"{}\" data-decision=\"{decision}\"",
            id(from),
            id(to)
        );
        assert!(dom.contains(&want), "edge {want} not drawn:\n{dom}");
    }
    assert!(
        dom.contains(&format!(
            "data-from=\"{}\" data-to=\"{}\"",
            id("/retriever"),
            id("/vectordb")
        )),
        "{dom}"
    );
    assert!(dom.contains("class=\"edge deny anomalous\""), "{dom}");
    assert!(
        dom.contains("probing vectordb"),
        "quarantine reason not listed:\n{dom}"
    );

    // A screenshot for the docs.
    let shot = profile.path().join("graph.png");
    let profile2 = tempfile::tempdir().expect("tmp");
    let (_, log) = chromium(
        &binary,
        profile2.path(),
        &page,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1200,800".to_owned(),
            "--hide-scrollbars".to_owned(),
        ],
    )
    .await;
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot ({e}):\n{log}"));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    if std::env::var_os("WARDEN_UPDATE_SCREENSHOT").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/graph.png");
        std::fs::write(&docs, &png).expect("write docs/graph.png");
    }
}
