//! Peer-auth observability end to end: counters scraped over HTTP equal what a scripted mix
//! of connections did, handshake failures land under their reason, the audit log has one
//! complete record per decision, `/readyz` follows the SVID, the admin server survives
//! garbage, and `warden top --once` shows two sidecars' peers with the right counts.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::pki::{Ca, LeafSpec};
use common::*;
use rcgen::KeyUsagePurpose;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warden_identity::FilesSource;
use warden_sidecar::{Sidecar, SidecarConfig};

const DEADLINE: Duration = Duration::from_secs(20);

/// A minimal HTTP/1.0 GET: (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect admin");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("admin answers")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("http response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, body.to_owned())
}

/// Sum of the samples of `name` whose labels include all of `want`.
fn value(text: &str, name: &str, want: &[(&str, &str)]) -> u64 {
    let mut total = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, v)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, labels) = series.split_once('{').unwrap_or((series, "}"));
        if n != name {
            continue;
        }
        let labels: BTreeMap<&str, &str> = labels
            .trim_end_matches('}')
            .split("\",")
            .filter_map(|kv| kv.split_once("=\""))
            .map(|(k, v)| (k, v.trim_end_matches('"')))
            .collect();
        if want.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            total += v.parse::<f64>().unwrap_or(0.0);
        }
    }
    total as u64
}

/// Scrapes until `done` holds for the metrics text, then returns that text.
async fn scrape_until(addr: SocketAddr, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (status, text) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        if done(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn audit_records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn with_audit(toml: String, path: &Path) -> String {
    format!("{toml}\n[audit]\npath = \"{}\"\n", path.display())
}

const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

fn tls13() -> &'static [&'static rustls::SupportedProtocolVersion] {
    TLS13
}

/// n allowed, m denied, k untrusted connections: the counters are exactly n, m and k, the
/// bytes are exact, and the audit log has one complete record per decision and failure.
#[tokio::test]
async fn scripted_mix_is_counted_exactly_and_audited() {
    let (n, m, k) = (3u64, 2u64, 4u64);
    let ca = Ca::new(TD);
    let app = EchoApp::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let audit = dir.path().join("audit.log");
    let good = id("/ns/rag/sa/retriever");
    let bad = id("/ns/rag/sa/intruder");
    let b = sidecar(
        &with_audit(
            inbound_config(app.addr, std::slice::from_ref(&good)),
            &audit,
        ),
        ca.identity(&id("/ns/rag/sa/vectordb"), &[]),
    )
    .await;
    let addr = b.inbound_addr("http").expect("inbound");
    let good_svid = ca.svid(&good);
    let bad_svid = ca.svid(&bad);
    let untrusted = Ca::new(TD).svid(&good);
    for _ in 0..n {
        let cfg = raw_client_config(Some((&good_svid.chain, good_svid.key_der())), tls13());
        assert_eq!(
            tls_exchange(addr, cfg, b"hello").await.expect("allowed"),
            b"hello"
        );
    }
    for _ in 0..m {
        let cfg = raw_client_config(Some((&bad_svid.chain, bad_svid.key_der())), tls13());
        assert!(tls_exchange(addr, cfg, b"hello").await.is_err());
    }
    for _ in 0..k {
        let cfg = raw_client_config(Some((&untrusted.chain, untrusted.key_der())), tls13());
        assert!(tls_exchange(addr, cfg, b"hello").await.is_err());
    }

    let admin = b.admin_addr();
    let inbound = [("direction", "inbound"), ("listener", "http")];
    let text = scrape_until(admin, "all connections counted and closed", |t| {
        value(t, "warden_authz_decisions_total", &inbound) >= n + m
            && value(t, "warden_tls_handshakes_total", &[("result", "untrusted")]) >= k
            && value(t, "warden_connections_closed_total", &inbound) >= n
    })
    .await;
    let allow = [
        ("direction", "inbound"),
        ("listener", "http"),
        ("peer_id", good.as_str()),
        ("decision", "allow"),
        ("reason", "allowed"),
    ];
    let deny = [
        ("direction", "inbound"),
        ("listener", "http"),
        ("peer_id", bad.as_str()),
        ("decision", "deny"),
        ("reason", "no_match"),
    ];
    assert_eq!(value(&text, "warden_authz_decisions_total", &allow), n);
    assert_eq!(value(&text, "warden_authz_decisions_total", &deny), m);
    assert_eq!(
        value(&text, "warden_authz_decisions_total", &inbound),
        n + m
    );
    let untrusted_labels = [
        ("direction", "inbound"),
        ("listener", "http"),
        ("peer_id", "unknown"),
        ("result", "untrusted"),
    ];
    assert_eq!(
        value(&text, "warden_tls_handshakes_total", &untrusted_labels),
        k
    );
    assert_eq!(
        value(&text, "warden_tls_handshakes_total", &[("result", "ok")]),
        n + m
    );
    assert_eq!(
        value(
            &text,
            "warden_tls_handshake_duration_seconds_count",
            &[("direction", "inbound")]
        ),
        n + m + k
    );
    let bytes = |flow| {
        value(
            &text,
            "warden_connection_bytes_total",
            &[("peer_id", good.as_str()), ("flow", flow)],
        )
    };
    assert_eq!(bytes("rx"), 5 * n, "plaintext bytes received from the peer");
    assert_eq!(bytes("tx"), 5 * n, "plaintext bytes echoed to the peer");
    assert_eq!(value(&text, "warden_connections_closed_total", &inbound), n);
    assert_eq!(value(&text, "warden_connections_open", &inbound), 0);
    assert!(text.contains("warden_build_info{version=\""), "{text}");
    assert!(text.contains("warden_identity_svid_expiry_timestamp_seconds{spiffe_id=\"spiffe://example.org/ns/rag/sa/vectordb\"}"));
    assert_eq!(
        value(
            &text,
            "warden_identity_rotations_total",
            &[("result", "ok")]
        ),
        1
    );

    // Audit: one record per decision and per failed handshake, every field present.
    let mut records = Vec::new();
    wait_until("audit records written", DEADLINE, || {
        records = audit_records(&audit);
        let count = |e: &str| records.iter().filter(|r| r["event"] == e).count() as u64;
        count("authz") >= n + m && count("handshake_failure") >= k
    })
    .await;
    let authz: Vec<_> = records.iter().filter(|r| r["event"] == "authz").collect();
    assert_eq!(authz.len() as u64, n + m);
    for r in &authz {
        for field in [
            "time",
            "event",
            "direction",
            "listener",
            "peer_id",
            "peer_addr",
            "decision",
            "reason",
            "policy_version",
            "conn_id",
        ] {
            assert!(!r[field].is_null(), "audit record lacks {field}: {r}");
        }
        assert!(humantime::parse_rfc3339(r["time"].as_str().expect("time")).is_ok());
        if r["decision"] == "allow" {
            assert_eq!(r["peer_id"], good.as_str());
            assert_eq!(r["rule"], good.as_str());
        } else {
            assert_eq!(r["peer_id"], bad.as_str());
            assert_eq!(r["reason"], "no_match");
        }
    }
    let failures: Vec<_> = records
        .iter()
        .filter(|r| r["event"] == "handshake_failure")
        .collect();
    assert_eq!(failures.len() as u64, k);
    assert!(
        failures
            .iter()
            .all(|r| r["reason"] == "untrusted" && !r["peer_addr"].is_null())
    );
    assert!(records.iter().any(|r| r["event"] == "rotation"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&audit)
            .expect("audit file")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            mode & 0o040,
            "audit file is not world-readable: {mode:o}"
        );
    }
}

/// Each way a client can fail the handshake (the cases of tests/mtls_hop.rs) is counted
/// under its own `result` label.
#[tokio::test]
async fn each_handshake_failure_lands_under_its_reason() {
    let ca = Ca::new(TD);
    let app = EchoApp::start().await;
    let good_id = id("/ns/rag/sa/retriever");
    let b = sidecar(
        &inbound_config(app.addr, std::slice::from_ref(&good_id)),
        ca.identity(&id("/b"), &[]),
    )
    .await;
    let addr = b.inbound_addr("http").expect("inbound");
    let try_svid = |svid: common::pki::Svid| async move {
        let cfg = raw_client_config(Some((&svid.chain, svid.key_der())), tls13());
        assert!(tls_exchange(addr, cfg, b"x").await.is_err());
    };
    try_svid(Ca::new(TD).svid(&good_id)).await;
    try_svid(ca.issue(&LeafSpec {
        expired: true,
        ..LeafSpec::id(&good_id)
    }))
    .await;
    try_svid(ca.issue(&LeafSpec {
        uris: vec![],
        ..LeafSpec::id(&good_id)
    }))
    .await;
    try_svid(ca.issue(&LeafSpec {
        key_usage: vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
        ],
        ..LeafSpec::id(&good_id)
    }))
    .await;
    assert!(
        tls_exchange(addr, raw_client_config(None, tls13()), b"x")
            .await
            .is_err()
    );
    let good = ca.svid(&good_id);
    let tls12 = raw_client_config(
        Some((&good.chain, good.key_der())),
        &[&rustls::version::TLS12],
    );
    assert!(tls_exchange(addr, tls12, b"x").await.is_err());
    let mut plain = TcpStream::connect(addr).await.expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut sink)).await;

    let expected = [
        ("untrusted", 1),
        ("expired", 1),
        ("bad_svid", 2),
        ("no_client_cert", 1),
        ("protocol", 2),
    ];
    let text = scrape_until(b.admin_addr(), "7 handshake failures", |t| {
        value(t, "warden_tls_handshakes_total", &[("peer_id", "unknown")]) >= 7
    })
    .await;
    for (result, count) in expected {
        assert_eq!(
            value(&text, "warden_tls_handshakes_total", &[("result", result)]),
            count,
            "result={result}\n{text}"
        );
    }
    assert_eq!(app.accepts(), 0);
}

/// Over real sockets: with `[metrics] peer_id_limit = 2`, four distinct allowed peers make
/// two named series and one `other` series, and nothing is lost from the totals.
#[tokio::test]
async fn peer_id_cap_holds_over_real_connections() {
    let ca = Ca::new(TD);
    let app = EchoApp::start().await;
    let toml = format!(
        "{}\n[metrics]\npeer_id_limit = 2\n",
        inbound_config(app.addr, &[format!("spiffe://{TD}/p/*")])
    );
    let b = sidecar(&toml, ca.identity(&id("/b"), &[])).await;
    let addr = b.inbound_addr("http").expect("inbound");
    for i in 0..4 {
        let svid = ca.svid(&id(&format!("/p/{i}")));
        let cfg = raw_client_config(Some((&svid.chain, svid.key_der())), tls13());
        assert_eq!(
            tls_exchange(addr, cfg, b"hi").await.expect("allowed"),
            b"hi"
        );
    }
    let text = scrape_until(b.admin_addr(), "4 decisions", |t| {
        value(t, "warden_authz_decisions_total", &[]) >= 4
    })
    .await;
    let peers: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("warden_authz_decisions_total{"))
        .filter_map(|l| l.split("peer_id=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(peers.len(), 3, "{peers:?}");
    assert!(peers.contains("other"));
    assert_eq!(
        value(
            &text,
            "warden_authz_decisions_total",
            &[("peer_id", "other")]
        ),
        2
    );
    assert_eq!(value(&text, "warden_authz_decisions_total", &[]), 4);
}

/// `/readyz` is 503 with a reason until an SVID arrives, 200 while it is valid, and 503
/// again once it expires; the debug views describe identity, policy and connections.
#[tokio::test]
async fn readyz_follows_the_svid_and_debug_views_answer() {
    let ca = Ca::new(TD);
    let dir = tempfile::tempdir().expect("tmp");
    let (cert, key, bundle) = (
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
        dir.path().join("ca.crt"),
    );
    let app = EchoApp::start().await;
    let mut config =
        SidecarConfig::from_toml("t.toml", &inbound_config(app.addr, &[id("/a")])).expect("config");
    config.admin_listen = "127.0.0.1:0".parse().expect("addr");
    let source = FilesSource::new(cert, key, bundle);
    let b = Sidecar::start(&config, Box::new(source))
        .await
        .expect("start");
    let admin = b.admin_addr();
    assert!(admin.ip().is_loopback());

    let (status, body) = get(admin, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["ready"], false);
    assert!(
        v["reason"].as_str().expect("reason").contains("no SVID"),
        "{v}"
    );
    assert_eq!(get(admin, "/healthz").await.0, 200);

    // An SVID that lives only a few seconds.
    let svid = ca.issue(&LeafSpec {
        lifetime: time::Duration::seconds(4),
        ..LeafSpec::id(&id("/b"))
    });
    ca.write_files(&svid, dir.path());
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut saw_ready = false;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        let (status, body) = get(admin, "/readyz").await;
        if status == 200 {
            saw_ready = true;
            let (_, ident) = get(admin, "/debug/identity").await;
            let ident: serde_json::Value = serde_json::from_str(&ident).expect("json");
            assert_eq!(ident["spiffe_id"], id("/b"));
            assert_eq!(ident["trust_domains"], serde_json::json!([TD]));
            assert!(ident.get("key").is_none());
        } else if saw_ready {
            last = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_ready, "never became ready");
    let v: serde_json::Value = serde_json::from_str(&last).expect("json after expiry");
    assert_eq!(v["ready"], false);
    assert!(
        v["reason"].as_str().expect("reason").contains("expired"),
        "{v}"
    );

    let (status, policy) = get(admin, "/debug/policy").await;
    assert_eq!(status, 200);
    let policy: serde_json::Value = serde_json::from_str(&policy).expect("json");
    assert_eq!(policy["source"], "static");
    assert_eq!(policy["inbound"]["http"], serde_json::json!([id("/a")]));
    let (status, conns) = get(admin, "/debug/connections").await;
    assert_eq!(status, 200);
    let conns: serde_json::Value = serde_json::from_str(&conns).expect("json");
    assert_eq!(conns["count"], 0);
}

/// The admin server answers garbage with an error or a close and keeps serving.
#[tokio::test]
async fn admin_server_survives_garbage_and_serves_json_connections() {
    let ca = Ca::new(TD);
    let app = EchoApp::start().await;
    let b = sidecar(
        &inbound_config(app.addr, &[id("/a")]),
        ca.identity(&id("/b"), &[]),
    )
    .await;
    let admin = b.admin_addr();
    for junk in [
        &b"\x16\x03\x01\x00\xff garbage"[..],
        b"GET /metrics HTTP/9.9\r\n\r\n",
        b"POST /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
        &[0u8; 70_000][..],
    ] {
        let mut s = TcpStream::connect(admin).await.expect("connect");
        let _ = s.write_all(junk).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        assert!(!out.starts_with(b"HTTP/1.1 200"), "junk got a 200");
    }
    assert_eq!(get(admin, "/nope").await.0, 404);

    // A live connection is listed with its peer, listener, age and bytes.
    let svid = ca.svid(&id("/a"));
    let tcp = TcpStream::connect(b.inbound_addr("http").expect("inbound"))
        .await
        .expect("tcp");
    let connector = tokio_rustls::TlsConnector::from(raw_client_config(
        Some((&svid.chain, svid.key_der())),
        tls13(),
    ));
    let name = rustls::pki_types::ServerName::try_from("x").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("handshake");
    tls.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await.expect("echo");
    let (_, body) = get(admin, "/debug/connections").await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["count"], 1, "{v}");
    let c = &v["connections"][0];
    assert_eq!(c["peer_id"], id("/a"));
    assert_eq!(c["listener"], "http");
    assert_eq!(c["direction"], "inbound");
    assert_eq!(c["rx_bytes"], 4);
    assert!(c["age_secs"].is_number());
    // Live bytes are in the metrics before the connection closes.
    let text = scrape_until(admin, "live bytes", |t| {
        value(t, "warden_connection_bytes_total", &[("flow", "rx")]) == 4
    })
    .await;
    assert_eq!(
        value(&text, "warden_connections_open", &[("listener", "http")]),
        1
    );
}

/// `warden top --once` against two sidecars prints both sidecars' peers with their counts.
#[tokio::test]
async fn warden_top_once_shows_both_sidecars_peers() {
    let ca = Ca::new(TD);
    let app = EchoApp::start().await;
    let (p1, p2) = (id("/ns/a/sa/one"), id("/ns/a/sa/two"));
    let s1 = sidecar(
        &inbound_config(app.addr, std::slice::from_ref(&p1)),
        ca.identity(&id("/s1"), &[]),
    )
    .await;
    let s2 = sidecar(
        &inbound_config(app.addr, std::slice::from_ref(&p2)),
        ca.identity(&id("/s2"), &[]),
    )
    .await;
    let connect = |addr: SocketAddr, who: &str| {
        let svid = ca.svid(who);
        async move {
            let cfg = raw_client_config(Some((&svid.chain, svid.key_der())), tls13());
            tls_exchange(addr, cfg, b"abc").await
        }
    };
    let a1 = s1.inbound_addr("http").expect("s1");
    let a2 = s2.inbound_addr("http").expect("s2");
    for _ in 0..2 {
        connect(a1, &p1).await.expect("p1 allowed on s1");
    }
    assert!(connect(a1, &p2).await.is_err(), "p2 denied on s1");
    for _ in 0..3 {
        connect(a2, &p2).await.expect("p2 allowed on s2");
    }
    scrape_until(s1.admin_addr(), "s1 counted", |t| {
        value(t, "warden_authz_decisions_total", &[]) == 3
    })
    .await;
    scrape_until(s2.admin_addr(), "s2 counted", |t| {
        value(t, "warden_authz_decisions_total", &[]) == 3
    })
    .await;

    let args = [
        "top".to_owned(),
        "--once".to_owned(),
        "--admin".to_owned(),
        format!("http://{}", s1.admin_addr()),
        "--admin".to_owned(),
        format!("http://{}", s2.admin_addr()),
    ];
    // Blocking wait on a helper thread, so the sidecars in this runtime keep serving.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(&args)
            .output()
    })
    .await
    .expect("join")
    .expect("run warden top");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // SIDECAR DIR LISTENER PEER ALLOWED DENIED WOULD_DENY HS_FAIL RX TX OPEN
    let row = |sidecar: SocketAddr, peer: &str| -> Vec<String> {
        stdout
            .lines()
            .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .find(|c| c.len() == 11 && c[0] == sidecar.to_string() && c[3] == peer)
            .unwrap_or_else(|| panic!("no row for {peer} on {sidecar}:\n{stdout}"))
    };
    let r = row(s1.admin_addr(), &p1);
    assert_eq!(
        (r[1].as_str(), r[2].as_str(), r[4].as_str(), r[5].as_str()),
        ("inbound", "http", "2", "0")
    );
    assert_eq!((r[8].as_str(), r[9].as_str()), ("6B", "6B"));
    let r = row(s1.admin_addr(), &p2);
    assert_eq!((r[4].as_str(), r[5].as_str()), ("0", "1"));
    let r = row(s2.admin_addr(), &p2);
    assert_eq!(
        (r[4].as_str(), r[5].as_str(), r[6].as_str(), r[10].as_str()),
        ("3", "0", "0", "0")
    );
}

/// A connection refused by `limits.max_connections` is counted as closed with reason `limit`.
#[tokio::test]
async fn connections_over_the_limit_are_counted_as_limit() {
    let ca = Ca::new(TD);
    let app = EchoApp::start().await;
    let toml = format!(
        // One worker, so connections are accepted in the order they arrive.
        "{}\n[limits]\nmax_connections = 1\nworkers = 1\n",
        inbound_config(app.addr, &[id("/a")])
    );
    let b = sidecar(&toml, ca.identity(&id("/b"), &[])).await;
    let addr = b.inbound_addr("http").expect("inbound");
    // Hold the only permit with a connection that has not finished its handshake; the
    // accept loop takes connections in order, so the second one is the one refused.
    let _holder = TcpStream::connect(addr).await.expect("first");
    let mut second = TcpStream::connect(addr).await.expect("second");
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), second.read(&mut buf))
        .await
        .expect("refused connection is closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let text = scrape_until(b.admin_addr(), "a refusal counted as limit", |t| {
        value(t, "warden_connections_closed_total", &[("reason", "limit")]) >= 1
    })
    .await;
    let limit = [
        ("direction", "inbound"),
        ("listener", "http"),
        ("reason", "limit"),
    ];
    assert_eq!(value(&text, "warden_connections_closed_total", &limit), 1);
    assert_eq!(app.accepts(), 0);
}
