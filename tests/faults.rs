//! Faults the sidecar must survive without widening access or losing accepted work:
//! no control plane and no cache at start, the control plane killed mid-stream and
//! restarted, the local app down, and SIGTERM with open connections (a real process).
//! The Workload API outage is covered by
//! `tests/workload_api_sidecar.rs::api_outage_keeps_the_svid_until_expiry_then_fails_closed_and_recovers`.

mod common;
#[path = "support/harden.rs"]
mod harden;

use std::time::Duration;

use common::control::*;
use common::pki::Ca;
use common::*;
use harden::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn gauge(s: &warden_sidecar::Sidecar, name: &str) -> u64 {
    metric(
        &s.telemetry().metrics().encode().expect("encode"),
        name,
        &[],
    )
}

/// Exchanges `msg` over a raw mTLS client presenting an SVID for `path`.
async fn call(
    ca: &Ca,
    addr: std::net::SocketAddr,
    path: &str,
    msg: &[u8],
) -> Result<Vec<u8>, String> {
    let svid = ca.svid(&id(path));
    tls_exchange(
        addr,
        raw_client_config(Some((&svid.chain, svid.key_der())), TLS13),
        msg,
    )
    .await
}

/// Control plane configured but unreachable, no cache file: the static allowlist is
/// enforced (and without one, everything is denied); the sidecar never waits for the
/// control plane to serve, and never allows more than the static list.
#[tokio::test]
async fn no_control_plane_and_no_cache_enforces_the_static_allowlist_or_denies() {
    let ca = Ca::new(TD);
    let app = EchoApp::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let nowhere = format!("https://{}", free_port());
    let cache = dir.path().join("missing/policy.json");
    let with_allow = format!(
        "{}\nallow = [\"{}\"]\n",
        watched_inbound_config(app.addr, &nowhere, &cache),
        id("/retriever")
    );
    let s = sidecar(&with_allow, ca.identity(&id("/vectordb"), &[])).await;
    let addr = s.inbound_addr("http").expect("inbound");
    assert_eq!(
        call(&ca, addr, "/retriever", b"hi")
            .await
            .expect("static allow"),
        b"hi"
    );
    assert!(
        call(&ca, addr, "/app", b"no").await.is_err(),
        "an unlisted peer got in"
    );
    assert_eq!(gauge(&s, "warden_control_plane_connected"), 0);
    assert_eq!(app.accepts(), 1);

    let app2 = EchoApp::start().await;
    let s = sidecar(
        &watched_inbound_config(app2.addr, &nowhere, &cache),
        ca.identity(&id("/vectordb"), &[]),
    )
    .await;
    let addr = s.inbound_addr("http").expect("inbound");
    assert!(call(&ca, addr, "/retriever", b"no").await.is_err());
    assert_eq!(app2.accepts(), 0, "no allowlist, no policy: deny");
    assert!(
        !std::fs::exists(&cache).unwrap_or(true),
        "no cache invented"
    );
}

/// The control plane dies (kill -9) under a watching sidecar and comes back: the sidecar
/// keeps enforcing the last policy throughout, `warden_control_plane_connected` goes
/// 1 -> 0 -> 1, and a change made after the restart is enforced.
#[tokio::test]
async fn control_plane_killed_mid_stream_keeps_enforcing_and_reconnects() {
    let ca = Ca::new(TD);
    let mut cp = CpProcess::start(&ca);
    let mut admin = cp.admin().await;
    let app = EchoApp::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let s = sidecar(
        &watched_inbound_config(app.addr, &cp.url(), &dir.path().join("policy.json")),
        ca.identity(&id("/vectordb"), &[]),
    )
    .await;
    let addr = s.inbound_addr("http").expect("inbound");
    let v1 = put(
        &mut admin,
        inbound_policy("/vectordb", &["/retriever"]),
        None,
    )
    .await
    .expect("put");
    wait_until("policy v1 applied and stream up", DEADLINE, || {
        s.policy().version() >= v1 && gauge(&s, "warden_control_plane_connected") == 1
    })
    .await;
    // A connection open across the outage must survive it.
    let svid = ca.svid(&id("/retriever"));
    let cfg = raw_client_config(Some((&svid.chain, svid.key_der())), TLS13);
    let mut open = tokio_rustls::TlsConnector::from(cfg)
        .connect(
            rustls::pki_types::ServerName::try_from("x").expect("name"),
            TcpStream::connect(addr).await.expect("connect"),
        )
        .await
        .expect("handshake");
    let echo = async |s: &mut tokio_rustls::client::TlsStream<TcpStream>, m: &[u8]| {
        s.write_all(m).await.expect("write");
        let mut b = vec![0u8; m.len()];
        s.read_exact(&mut b).await.expect("read");
        assert_eq!(b, m);
    };
    echo(&mut open, b"before").await;

    cp.kill9();
    wait_until("connected gauge drops to 0", DEADLINE, || {
        gauge(&s, "warden_control_plane_connected") == 0
    })
    .await;
    echo(&mut open, b"during").await;
    assert_eq!(
        call(&ca, addr, "/retriever", b"ok").await.expect("allowed"),
        b"ok"
    );
    assert!(
        call(&ca, addr, "/app", b"no").await.is_err(),
        "outage widened access"
    );
    assert_eq!(s.policy().version(), v1);

    cp.spawn();
    let mut admin = cp.admin().await;
    // The backoff is capped at 10 s (with jitter); allow for two rounds.
    wait_until("connected gauge back to 1", Duration::from_secs(30), || {
        gauge(&s, "warden_control_plane_connected") == 1
    })
    .await;
    let v2 = put(
        &mut admin,
        inbound_policy("/vectordb", &["/retriever", "/app"]),
        Some(v1),
    )
    .await
    .expect("put after restart");
    wait_until("policy v2 applied", DEADLINE, || s.policy().version() >= v2).await;
    assert_eq!(
        call(&ca, addr, "/app", b"in").await.expect("now allowed"),
        b"in"
    );
    echo(&mut open, b"after").await;
}

/// The local app is down: an allowed peer's connection is closed (it never hangs), and
/// `warden_connections_closed_total{reason="error"}` says why; when the app returns the
/// next call is served.
#[tokio::test]
async fn upstream_app_down_closes_the_connection_with_reason_error() {
    let forward = free_port(); // nothing listens here
    let ca = Ca::new(TD);
    let dir = tempfile::tempdir().expect("tmp");
    let toml = format!(
        "{}\n[audit]\npath = \"{}\"\n",
        inbound_config(forward, &[good_id()]),
        dir.path().join("audit.jsonl").display()
    );
    let s = sidecar(&toml, ca.identity(&id("/vectordb"), &[])).await;
    let addr = s.inbound_addr("http").expect("inbound");
    let good = ca.svid(&good_id());
    let res = tls_exchange(
        addr,
        raw_client_config(Some((&good.chain, good.key_der())), TLS13),
        b"x",
    )
    .await;
    assert!(res.is_err(), "got an answer from a dead app: {res:?}");
    let want = [
        ("direction", "inbound"),
        ("listener", "http"),
        ("reason", "error"),
    ];
    wait_metric(&s, "warden_connections_closed_total", &want, 1).await;
    // The peer was authorized (audited) before the app was tried. The audit writer is
    // asynchronous, so wait for the record rather than read the file once.
    let audit_path = dir.path().join("audit.jsonl");
    wait_until("the allow decision is audited", DEADLINE, || {
        audit_records(&audit_path)
            .iter()
            .any(|r| r["event"] == "authz" && r["decision"] == "allow")
    })
    .await;
    // The app comes back on the same address: served again.
    let listener = tokio::net::TcpListener::bind(forward)
        .await
        .expect("rebind app port");
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = c.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let cfg = raw_client_config(Some((&good.chain, good.key_der())), TLS13);
    assert_eq!(
        tls_exchange(addr, cfg, b"back").await.expect("served"),
        b"back"
    );
}

/// SIGTERM to a real `warden sidecar --drain 3s`: the listener closes (new connections are
/// refused), an open connection keeps working during the grace period, is then closed, and
/// the process exits 0.
#[tokio::test]
async fn sigterm_stops_accepting_drains_open_connections_then_exits_zero() {
    let ca = Ca::new(TD);
    let app = EchoApp::start().await;
    let mut p = SidecarProcess::start(&ca, app.addr, "", None, &["--drain", "3s"]);
    let good = ca.svid(&good_id());
    p.wait_served(&good).await;
    let cfg = raw_client_config(Some((&good.chain, good.key_der())), TLS13);
    let mut open = tokio_rustls::TlsConnector::from(cfg)
        .connect(
            rustls::pki_types::ServerName::try_from("x").expect("name"),
            TcpStream::connect(p.addr).await.expect("connect"),
        )
        .await
        .expect("handshake");
    open.write_all(b"one").await.expect("write");
    let mut b = [0u8; 3];
    open.read_exact(&mut b).await.expect("read");

    p.sigterm();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while TcpStream::connect(p.addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listener still accepting after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Refused by the kernel now: nothing listens.
    let refused = TcpStream::connect(p.addr)
        .await
        .expect_err("new connection refused");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    // The open connection still works during the grace period.
    open.write_all(b"two").await.expect("write while draining");
    open.read_exact(&mut b).await.expect("read while draining");
    assert_eq!(&b, b"two");
    assert!(p.exited().is_none(), "exited before the grace period ended");
    // After the grace period it is closed, and the process exits 0.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(DEADLINE, open.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "connection not closed after the grace period");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = p.exited() {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "process did not exit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}; log:\n{}", p.log());
    assert!(p.log().contains("shutting down"), "{}", p.log());
}

/// A policy cache path reused by another workload (a copied volume, a shared hostPath): the
/// cache was written for vectordb, and llm's sidecar starts on it with the control plane
/// down. llm must not enforce vectordb's allowlist: nothing from the cache is enforced,
/// the refusal is counted (`warden_policy_updates_total{result="rejected"}`) and audited with
/// the reason, and vectordb itself, restarted on the same file, still uses it.
#[tokio::test]
async fn a_cache_written_for_another_workload_is_ignored_at_start_up_and_the_own_cache_is_used() {
    let ca = Ca::new(TD);
    let mut cp = CpProcess::start(&ca);
    let mut admin = cp.admin().await;
    let app = EchoApp::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let cache = dir.path().join("policy.json");
    let vectordb = sidecar(
        &watched_inbound_config(app.addr, &cp.url(), &cache),
        ca.identity(&id("/vectordb"), &[]),
    )
    .await;
    let v1 = put(&mut admin, inbound_policy("/vectordb", &["/app"]), None)
        .await
        .expect("put");
    wait_until("vectordb's policy applied", DEADLINE, || {
        vectordb.policy().version() >= v1
    })
    .await;
    wait_until("cache written", DEADLINE, || {
        std::fs::read_to_string(&cache).is_ok_and(|c| c.contains("vectordb"))
    })
    .await;
    cp.kill9();
    drop(vectordb);

    // llm starts on vectordb's cache, with the control plane away.
    let audit = dir.path().join("audit.jsonl");
    let llm_config = format!(
        "{}\n[audit]\npath = \"{}\"\n",
        watched_inbound_config(app.addr, &cp.url(), &cache),
        audit.display()
    );
    let llm = sidecar(&llm_config, ca.identity(&id("/llm"), &[])).await;
    assert_ne!(
        llm.policy().source(),
        warden_policy::PolicySource::Cache,
        "a foreign cache is in force"
    );
    let addr = llm.inbound_addr("http").expect("inbound");
    assert!(
        call(&ca, addr, "/app", b"no").await.is_err(),
        "vectordb's allowlist was enforced at llm"
    );
    assert_eq!(app.accepts(), 0);
    let rejected = metric(
        &llm.telemetry().metrics().encode().expect("encode"),
        "warden_policy_updates_total",
        &[("result", "rejected")],
    );
    assert_eq!(rejected, 1);
    let vectordb_id = id("/vectordb");
    wait_until(
        "the ignored cache is audited with its reason",
        DEADLINE,
        || {
            audit_records(&audit).iter().any(|r| {
                r["event"] == "policy"
                    && r["decision"] == "rejected"
                    && r["reason"]
                        .as_str()
                        .is_some_and(|why| why.contains(&vectordb_id) && why.contains("/llm"))
            })
        },
    )
    .await;
    drop(llm);

    // vectordb restarted on its own cache still enforces it.
    let vectordb = sidecar(
        &watched_inbound_config(app.addr, &cp.url(), &cache),
        ca.identity(&id("/vectordb"), &[]),
    )
    .await;
    assert_eq!(
        vectordb.policy().source(),
        warden_policy::PolicySource::Cache
    );
    assert_eq!(vectordb.policy().version(), v1);
    let addr = vectordb.inbound_addr("http").expect("inbound");
    assert_eq!(
        call(&ca, addr, "/app", b"own").await.expect("own cache"),
        b"own"
    );
}
