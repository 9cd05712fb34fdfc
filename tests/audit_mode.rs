//! Audit mode (`mode = "audit"`) over real sockets and a real control plane: what the rules
//! would deny reaches the app and is counted and audited as `would_deny`; TLS never relaxes;
//! flipping the policy to `enforce` revokes the connection like any policy change.

mod common;

use std::path::Path;
use std::time::Duration;

use common::control::*;
use common::pki::Ca;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The contract: a change is enforced within 1 s of the write being acknowledged.
const PROPAGATION: Duration = Duration::from_secs(1);

fn watched_with_audit(forward: std::net::SocketAddr, url: &str, dir: &Path) -> String {
    format!(
        "{}\n[audit]\npath = \"{}\"\n",
        watched_inbound_config(forward, url, &dir.join("policy.json")),
        dir.join("audit.jsonl").display()
    )
}

fn audit_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn metric(sidecar: &warden_sidecar::Sidecar, series: &str) -> Option<u64> {
    let text = sidecar.telemetry().metrics().encode().ok()?;
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn policy(mode: &str) -> warden_proto::control::v1::WorkloadPolicy {
    let mut p = inbound_policy("/vectordb", &["/retriever"]);
    p.mode = mode.into();
    p
}

async fn echo(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.expect("write");
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .expect("echo");
    buf
}

#[tokio::test]
async fn a_would_deny_connection_reaches_the_app_is_counted_and_audited_and_enforce_revokes_it() {
    let ca = Ca::new(TD);
    let cp = CpProcess::start(&ca);
    let mut admin = cp.admin().await;
    let app = EchoApp::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let b = sidecar(
        &watched_with_audit(app.addr, &cp.url(), dir.path()),
        ca.identity(&id("/vectordb"), &[]),
    )
    .await;
    let v1 = put(&mut admin, policy("audit"), None).await.expect("put");
    wait_until("audit policy applied", PROPAGATION, || {
        b.policy().version() >= v1
    })
    .await;
    assert_eq!(b.policy().mode(), warden_policy::Mode::Audit);

    let b_addr = b.inbound_addr("http").expect("b");
    let stranger = sidecar(
        &outbound_config(b_addr, &id("/vectordb")),
        ca.identity(&id("/app"), &[]),
    )
    .await;
    let friend = sidecar(
        &outbound_config(b_addr, &id("/vectordb")),
        ca.identity(&id("/retriever"), &[]),
    )
    .await;

    // Not on the allowlist, yet through to the app: audit mode.
    let mut would = TcpStream::connect(stranger.outbound_addr("svc").expect("a"))
        .await
        .expect("connect");
    assert_eq!(echo(&mut would, b"audit me").await, b"audit me");
    let mut allowed = TcpStream::connect(friend.outbound_addr("svc").expect("a"))
        .await
        .expect("connect");
    assert_eq!(echo(&mut allowed, b"hello").await, b"hello");
    assert_eq!(app.accepts(), 2);

    // Counted as would_deny with the reason the deny would have had.
    let series = format!(
        "warden_authz_decisions_total{{direction=\"inbound\",listener=\"http\",peer_id=\"{}\",decision=\"would_deny\",reason=\"no_match\"}}",
        id("/app")
    );
    assert_eq!(metric(&b, &series), Some(1), "{series}");
    let allow = format!(
        "warden_authz_decisions_total{{direction=\"inbound\",listener=\"http\",peer_id=\"{}\",decision=\"allow\",reason=\"allowed\"}}",
        id("/retriever")
    );
    assert_eq!(metric(&b, &allow), Some(1), "{allow}");
    // Audited the same way.
    wait_until("would_deny audit record", Duration::from_secs(5), || {
        audit_lines(dir.path()).iter().any(|r| {
            r["event"] == "authz"
                && r["decision"] == "would_deny"
                && r["reason"] == "no_match"
                && r["peer_id"] == id("/app").as_str()
        })
    })
    .await;

    // TLS never relaxes: a peer without a valid SVID (another CA) is still refused at the
    // handshake, audit mode or not.
    let rogue_ca = Ca::new(TD);
    let rogue = rogue_ca.svid(&id("/app"));
    let config = raw_client_config(
        Some((&rogue.chain, rogue.key_der())),
        &[&rustls::version::TLS13],
    );
    let refused = tls_exchange(b_addr, config, b"x").await;
    assert!(
        refused.is_err(),
        "an untrusted peer got through in audit mode: {refused:?}"
    );
    assert_eq!(app.accepts(), 2, "the untrusted peer reached the app");

    // Flip to enforce: the would-deny connection is revoked within the propagation bound,
    // the allowed one stays.
    let v2 = put(&mut admin, policy("enforce"), None).await.expect("put");
    assert!(v2 > v1);
    let mut buf = [0u8; 1];
    let ended = tokio::time::timeout(PROPAGATION, would.read(&mut buf)).await;
    assert!(
        matches!(ended, Ok(Ok(0)) | Ok(Err(_))),
        "the would-deny connection was not closed within {PROPAGATION:?} of the write: {ended:?}"
    );
    assert_eq!(b.policy().mode(), warden_policy::Mode::Enforce);
    assert_eq!(echo(&mut allowed, b"still here").await, b"still here");
    wait_until("revoked audit record", Duration::from_secs(5), || {
        audit_lines(dir.path())
            .iter()
            .any(|r| r["event"] == "revoked" && r["peer_id"] == id("/app").as_str())
    })
    .await;
    // And now it is denied outright.
    let denied = plain_exchange(stranger.outbound_addr("svc").expect("a"), b"x").await;
    assert!(
        !matches!(&denied, Ok(v) if !v.is_empty()),
        "enforce let the stranger in: {denied:?}"
    );
    let deny = format!(
        "warden_authz_decisions_total{{direction=\"inbound\",listener=\"http\",peer_id=\"{}\",decision=\"deny\",reason=\"no_match\"}}",
        id("/app")
    );
    assert_eq!(metric(&b, &deny), Some(1), "{deny}");
}
