//! The control plane with real `warden control-plane` processes: live enforcement and
//! revocation, durability under kill -9, last-known-good cache, API authorization,
//! compare-and-set, and fan-out to many watchers.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::control::*;
use common::pki::Ca;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;
use warden_proto::control::v1 as pb;
use warden_proto::control::v1::policy_service_client::PolicyServiceClient;

/// The contract: a change is enforced within 1 s of the write being acknowledged.
const PROPAGATION: Duration = Duration::from_secs(1);

struct Mesh {
    ca: Ca,
    cp: CpProcess,
    app: EchoApp,
    b: warden_sidecar::Sidecar,
    cache_dir: tempfile::TempDir,
}

/// vectordb (sidecar b, watching the control plane) behind which sits an echo app.
async fn mesh() -> Mesh {
    let ca = Ca::new(TD);
    let cp = CpProcess::start(&ca);
    let _ = cp.admin().await; // wait until it serves
    let app = EchoApp::start().await;
    let cache_dir = tempfile::tempdir().expect("tmp");
    let b = sidecar(
        &watched_inbound_config(app.addr, &cp.url(), &cache_dir.path().join("policy.json")),
        ca.identity(&id("/vectordb"), &[]),
    )
    .await;
    Mesh {
        ca,
        cp,
        app,
        b,
        cache_dir,
    }
}

async fn client_to(m: &Mesh, from: &str) -> warden_sidecar::Sidecar {
    sidecar(
        &outbound_config(m.b.inbound_addr("http").expect("b"), &id("/vectordb")),
        m.ca.identity(&id(from), &[]),
    )
    .await
}

async fn wait_version(s: &warden_sidecar::Sidecar, version: u64, within: Duration) {
    wait_until(
        &format!("sidecar applies policy version {version}"),
        within,
        || s.policy().version() >= version,
    )
    .await;
}

#[tokio::test]
async fn a_put_is_enforced_within_a_second_and_revocation_closes_only_revoked_connections() {
    let m = mesh().await;
    let retriever = client_to(&m, "/retriever").await;
    let app_client = client_to(&m, "/app").await;
    // Default deny before any policy: the watch delivers "no policy".
    let denied = plain_exchange(retriever.outbound_addr("svc").expect("a"), b"x").await;
    assert!(
        !matches!(&denied, Ok(v) if !v.is_empty()),
        "allowed without policy"
    );

    let mut admin = m.cp.admin().await;
    let v1 = put(
        &mut admin,
        inbound_policy("/vectordb", &["/retriever", "/app"]),
        None,
    )
    .await
    .expect("put");
    wait_version(&m.b, v1, PROPAGATION).await;

    // Two long-lived connections, one from each peer.
    let mut r = TcpStream::connect(retriever.outbound_addr("svc").expect("a"))
        .await
        .expect("connect");
    let mut a = TcpStream::connect(app_client.outbound_addr("svc").expect("a"))
        .await
        .expect("connect");
    for s in [&mut r, &mut a] {
        s.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.expect("echo");
    }
    assert_eq!(m.b.connections().len(), 2);

    // Remove /app: its connection must be cut within 1 s; retriever's stays up.
    let v2 = put(
        &mut admin,
        inbound_policy("/vectordb", &["/retriever"]),
        Some(v1),
    )
    .await
    .expect("put");
    let acked = tokio::time::Instant::now();
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout_at(acked + PROPAGATION, a.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "revoked connection still open: {closed:?}"
    );
    wait_version(&m.b, v2, PROPAGATION).await;
    r.write_all(b"still").await.expect("write");
    let mut buf = [0u8; 5];
    r.read_exact(&mut buf)
        .await
        .expect("allowed connection survives");
    assert_eq!(&buf, b"still");
    let conns = m.b.connections();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].peer.as_str(), id("/retriever"));
    // New connections from the revoked peer are refused too.
    let res = plain_exchange(app_client.outbound_addr("svc").expect("a"), b"x").await;
    assert!(
        !matches!(&res, Ok(v) if !v.is_empty()),
        "revoked peer reconnected"
    );
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9_at_random_points() {
    let ca = Ca::new(TD);
    let mut cp = CpProcess::start(&ca);
    let mut acked: Vec<(String, u64)> = Vec::new();
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for round in 0..6 {
        let mut admin = cp.admin().await;
        let stop = Arc::new(AtomicUsize::new(0));
        // Writes stream in while the process is killed at a pseudo-random point.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let kill_after = Duration::from_millis(20 + seed % 200);
        let writer = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut ok = Vec::new();
                let mut i = 0;
                while stop.load(Ordering::SeqCst) == 0 {
                    let w = format!("/ns/r{round}/w{i}");
                    match put(&mut admin, inbound_policy(&w, &["/a"]), None).await {
                        Ok(v) => ok.push((id(&w), v)),
                        Err(_) => break,
                    }
                    i += 1;
                }
                ok
            })
        };
        tokio::time::sleep(kill_after).await; // a kill point, not a synchronization
        cp.kill9();
        stop.store(1, Ordering::SeqCst);
        acked.extend(writer.await.expect("writer"));
        cp.spawn();
    }
    assert!(
        acked.len() >= 6,
        "too few writes were acknowledged to prove anything: {}",
        acked.len()
    );
    let mut admin = cp.admin().await;
    for (workload, version) in &acked {
        let got = admin
            .get_policy(pb::GetPolicyRequest {
                spiffe_id: workload.clone(),
            })
            .await
            .unwrap_or_else(|s| panic!("acknowledged write of {workload} v{version} lost: {s}"));
        assert_eq!(got.into_inner().policy.map(|p| p.version), Some(*version));
        let history = admin
            .history(pb::HistoryRequest {
                spiffe_id: workload.clone(),
            })
            .await
            .expect("history")
            .into_inner();
        assert!(
            history
                .entries
                .iter()
                .any(|e| e.version == *version && e.admin == id(ADMIN_PATH))
        );
    }
}

#[tokio::test]
async fn a_restarted_sidecar_enforces_its_cache_while_the_control_plane_is_down_and_resyncs() {
    let mut m = mesh().await;
    let mut admin = m.cp.admin().await;
    let v1 = put(
        &mut admin,
        inbound_policy("/vectordb", &["/retriever"]),
        None,
    )
    .await
    .expect("put");
    wait_version(&m.b, v1, PROPAGATION).await;
    let cache = m.cache_dir.path().join("policy.json");
    wait_until("cache written", Duration::from_secs(5), || {
        std::fs::read_to_string(&cache).is_ok_and(|c| c.contains("retriever"))
    })
    .await;

    m.cp.kill9();
    drop(m.b);
    // Restart vectordb's sidecar with the control plane down.
    let b = sidecar(
        &watched_inbound_config(m.app.addr, &m.cp.url(), &cache),
        m.ca.identity(&id("/vectordb"), &[]),
    )
    .await;
    assert_eq!(b.policy().version(), v1);
    let b_addr = b.inbound_addr("http").expect("b");
    let retriever = sidecar(
        &outbound_config(b_addr, &id("/vectordb")),
        m.ca.identity(&id("/retriever"), &[]),
    )
    .await;
    let intruder = sidecar(
        &outbound_config(b_addr, &id("/vectordb")),
        m.ca.identity(&id("/app"), &[]),
    )
    .await;
    assert_eq!(
        plain_exchange(retriever.outbound_addr("svc").expect("r"), b"in")
            .await
            .expect("allowed"),
        b"in"
    );
    let res = plain_exchange(intruder.outbound_addr("svc").expect("i"), b"no").await;
    assert!(
        !matches!(&res, Ok(v) if !v.is_empty()),
        "cached policy let an intruder in"
    );

    // The control plane returns with a newer policy (written while the sidecar was cut off
    // from it would be impossible; write it now): the sidecar re-syncs.
    m.cp.spawn();
    let mut admin = m.cp.admin().await;
    let v2 = put(
        &mut admin,
        inbound_policy("/vectordb", &["/retriever", "/app"]),
        Some(v1),
    )
    .await
    .expect("put");
    wait_version(&b, v2, Duration::from_secs(15)).await;
    assert_eq!(
        plain_exchange(intruder.outbound_addr("svc").expect("i"), b"ok")
            .await
            .expect("now allowed"),
        b"ok"
    );
}

#[tokio::test]
async fn the_api_authorizes_by_certificate_identity() {
    let ca = Ca::new(TD);
    let cp = CpProcess::start(&ca);
    let mut admin = cp.admin().await;
    put(&mut admin, inbound_policy("/b", &["/a"]), None)
        .await
        .expect("admin writes");
    let ids = tempfile::tempdir().expect("tmp");

    // A workload (sidecar A) is not an admin: it cannot write, nor read B's policy.
    let mut a = cp
        .client_with(
            &identity_dir(&ca, ids.path(), "/a"),
            Duration::from_secs(10),
        )
        .await;
    let err = put(&mut a, inbound_policy("/a", &["/evil"]), None)
        .await
        .expect_err("non-admin write");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = a
        .get_policy(pb::GetPolicyRequest {
            spiffe_id: id("/b"),
        })
        .await
        .expect_err("read other's policy");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = a
        .list_policies(pb::ListPoliciesRequest {})
        .await
        .expect_err("list");
    assert_eq!(err.code(), Code::PermissionDenied);

    // B may watch only its own policy: what A's watch returns is A's (absent) policy, never B's.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    drop(tx);
    let mut stream = a
        .watch_policy(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("watch")
        .into_inner();
    let first = stream.message().await.expect("snapshot").expect("some");
    assert!(!first.present, "A was sent a policy: {first:?}");
    let mut b = cp
        .client_with(
            &identity_dir(&ca, ids.path(), "/b"),
            Duration::from_secs(10),
        )
        .await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut stream = b
        .watch_policy(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("watch")
        .into_inner();
    let snap = stream.message().await.expect("snapshot").expect("some");
    assert_eq!(snap.policy.map(|p| p.spiffe_id), Some(id("/b")));
    drop(tx);

    // A client whose SVID the control plane does not trust cannot complete the handshake.
    let stranger = Ca::new(TD);
    let dir = identity_dir(&stranger, ids.path(), "/warden/admin-impostor");
    // Trust our CA for the server side so only the client side is at fault.
    std::fs::write(
        dir.join("ca.crt"),
        common::pki::pem_encode("CERTIFICATE", &stranger.cert),
    )
    .expect("w");
    let store = identity_from_dir(&dir);
    let cp_id = warden_identity::SpiffeId::parse(&id(CP_PATH)).expect("id");
    let attempt =
        warden_sidecar::control::client::connect(&cp.url(), &store, &cp_id, Duration::from_secs(3))
            .await;
    if let Ok(channel) = attempt {
        let res = PolicyServiceClient::new(channel)
            .list_policies(pb::ListPoliciesRequest {})
            .await;
        assert!(res.is_err(), "untrusted client was served");
    }
}

#[tokio::test]
async fn compare_and_set_lets_exactly_one_of_two_concurrent_writers_win() {
    let ca = Ca::new(TD);
    let cp = CpProcess::start(&ca);
    let mut admin = cp.admin().await;
    let v = put(&mut admin, inbound_policy("/w", &["/a"]), None)
        .await
        .expect("put");
    for round in 0..10 {
        let (mut x, mut y) = (admin.clone(), admin.clone());
        let current = admin
            .get_policy(pb::GetPolicyRequest {
                spiffe_id: id("/w"),
            })
            .await
            .expect("get")
            .into_inner()
            .policy
            .map(|p| p.version)
            .unwrap_or(v);
        let (rx, ry) = tokio::join!(
            put(&mut x, inbound_policy("/w", &["/x"]), Some(current)),
            put(&mut y, inbound_policy("/w", &["/y"]), Some(current))
        );
        let wins = [&rx, &ry].iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {rx:?} {ry:?}");
        let loser = if rx.is_err() { rx } else { ry };
        assert_eq!(loser.expect_err("loser").code(), Code::FailedPrecondition);
    }
}

#[tokio::test]
async fn a_thousand_watchers_all_receive_a_change() {
    let ca = Ca::new(TD);
    let cp = CpProcess::start(&ca);
    let mut admin = cp.admin().await;
    let ids = tempfile::tempdir().expect("tmp");
    // 1,000 replicas of one workload, over 10 connections (HTTP/2 streams multiplex).
    let dir = identity_dir(&ca, ids.path(), "/ns/rag/sa/retriever");
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(cp.client_with(&dir, Duration::from_secs(10)).await);
    }
    // Each watcher records the highest present version it has seen.
    let seen: Arc<Vec<std::sync::atomic::AtomicU64>> =
        Arc::new((0..1000).map(|_| Default::default()).collect());
    let mut tasks = Vec::new();
    let mut senders = Vec::new();
    for i in 0..1000 {
        let mut c = clients[i % 10].clone();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        senders.push(tx);
        let mut stream = c
            .watch_policy(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("watch")
            .into_inner();
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(snap)) = stream.message().await {
                if snap.present {
                    seen[i].fetch_max(snap.version, Ordering::SeqCst);
                }
            }
        }));
    }
    let v = put(
        &mut admin,
        inbound_policy("/ns/rag/sa/retriever", &["/app"]),
        None,
    )
    .await
    .expect("put");
    let s2 = seen.clone();
    wait_until(
        "all 1,000 watchers hold the new version",
        Duration::from_secs(20),
        move || s2.iter().all(|x| x.load(Ordering::SeqCst) >= v),
    )
    .await;
    let status = admin
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.sidecars.len(), 1000);
    drop(senders);
    for t in tasks {
        t.abort();
    }
}

#[tokio::test]
async fn generic_grpc_tools_work_health_and_reflection() {
    let ca = Ca::new(TD);
    let cp = CpProcess::start(&ca);
    let _ = cp.admin().await;
    let store = identity_from_dir(&cp.admin_dir());
    let cp_id = warden_identity::SpiffeId::parse(&id(CP_PATH)).expect("id");
    let channel =
        warden_sidecar::control::client::connect(&cp.url(), &store, &cp_id, Duration::from_secs(5))
            .await
            .expect("connect");

    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "warden.control.v1.PolicyService".into(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(status.status, ServingStatus::Serving as i32);

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection")
        .into_inner();
    let reply = responses.message().await.expect("reply").expect("some");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply: {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.iter().any(|n| n == "warden.control.v1.PolicyService"),
        "{names:?}"
    );
}
