//! Sidecars getting their SVIDs from the built-in CA's Workload API: rotation under continuous
//! load without a single failed request, and an API outage (keep the SVID until it expires,
//! then fail closed, then recover when the API returns).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use common::workload_api::{TestCa, client_config, endpoint, presented_leaf, registration, serve};
use common::{EchoApp, id, inbound_config, outbound_config, plain_exchange, tls_exchange};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warden_identity::{SpiffeId, WorkloadApiSource};
use warden_sidecar::Sidecar;

const TTL: Duration = Duration::from_secs(4);
const SERVER: &str = "/ns/rag/sa/vectordb";
const CLIENT: &str = "/ns/rag/sa/retriever";

fn source(socket: &std::path::Path) -> Box<WorkloadApiSource> {
    Box::new(WorkloadApiSource {
        endpoint: Some(endpoint(socket)),
        spiffe_id: None,
    })
}

fn spiffe_id(path: &str) -> SpiffeId {
    SpiffeId::parse(&id(path)).expect("id")
}

fn generation(sidecar: &Sidecar) -> u64 {
    *sidecar.identity().subscribe().borrow()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_drops_nothing_and_new_handshakes_present_the_new_svid() {
    let t = TestCa::new();
    let (server_sock, client_sock) = (t.socket("vectordb"), t.socket("retriever"));
    let _api = serve(
        &t.ca,
        vec![
            registration(&server_sock, SERVER, None),
            registration(&client_sock, CLIENT, None),
        ],
        TTL,
    )
    .await;
    let app = EchoApp::start().await;
    let server = common::sidecar_with_source(
        &inbound_config(app.addr, &[id(CLIENT)]),
        source(&server_sock),
    )
    .await;
    let inbound = server.inbound_addr("http").expect("inbound");
    let client =
        common::sidecar_with_source(&outbound_config(inbound, &id(SERVER)), source(&client_sock))
            .await;
    assert_eq!(
        client.identity().load().expect("id").spiffe_id(),
        &spiffe_id(CLIENT)
    );
    let outbound = client.outbound_addr("svc").expect("outbound");

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut load = tokio::task::JoinSet::new();
    // Short connections: a new handshake through both sidecars every time.
    for worker in 0..3 {
        let (stop, ok) = (stop.clone(), ok.clone());
        load.spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let msg = format!("worker {worker} request {n}");
                let answer = plain_exchange(outbound, msg.as_bytes()).await;
                assert_eq!(
                    answer.as_deref().map_err(|e| e.to_string()),
                    Ok(msg.as_bytes()),
                    "request {n} of worker {worker} failed"
                );
                ok.fetch_add(1, Ordering::SeqCst);
                n += 1;
            }
        });
    }
    // Long-lived connections: opened before any rotation, used throughout.
    for worker in 0..2 {
        let (stop, ok) = (stop.clone(), ok.clone());
        let mut conn = TcpStream::connect(outbound).await.expect("connect");
        load.spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let msg = format!("long-lived {worker} message {n:08}");
                conn.write_all(msg.as_bytes()).await.expect("write");
                let mut back = vec![0u8; msg.len()];
                tokio::time::timeout(Duration::from_secs(20), conn.read_exact(&mut back))
                    .await
                    .expect("answer in time")
                    .expect("read");
                assert_eq!(back, msg.as_bytes(), "long-lived {worker} message {n}");
                ok.fetch_add(1, Ordering::SeqCst);
                n += 1;
            }
        });
    }

    // While the load runs: every new handshake presents the SVID the store holds right then.
    let probe = client_config(&t.svid(CLIENT));
    let mut presented = Vec::new();
    let start = (generation(&server), generation(&client));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while generation(&server) < start.0 + 3 || generation(&client) < start.1 + 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "three rotations did not happen (server {} -> {}, client {} -> {})",
            start.0,
            generation(&server),
            start.1,
            generation(&client)
        );
        let before = generation(&server);
        let expected = server.identity().load().expect("identity").leaf().cloned();
        let leaf = presented_leaf(inbound, probe.clone())
            .await
            .expect("handshake");
        if generation(&server) == before {
            assert_eq!(
                Some(&leaf),
                expected.as_ref(),
                "stale certificate presented"
            );
            if !presented.contains(&leaf) {
                presented.push(leaf);
            }
        }
        assert!(!load.is_empty());
        // Paces the probe; the loop's exit condition is the rotation count, not time.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    while let Some(done) = load.join_next().await {
        done.expect("no request failed");
    }
    assert!(ok.load(Ordering::SeqCst) > 0);
    assert!(
        presented.len() >= 3,
        "handshakes presented {} distinct SVIDs",
        presented.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_outage_keeps_the_svid_until_expiry_then_fails_closed_and_recovers() {
    let t = TestCa::new();
    let sock = t.socket("vectordb");
    let regs = || vec![registration(&sock, SERVER, None)];
    let api = serve(&t.ca, regs(), TTL).await;
    let app = EchoApp::start().await;
    let server =
        common::sidecar_with_source(&inbound_config(app.addr, &[id(CLIENT)]), source(&sock)).await;
    let inbound = server.inbound_addr("http").expect("inbound");
    let peer = client_config(&t.svid(CLIENT));
    assert_eq!(
        tls_exchange(inbound, peer.clone(), b"before")
            .await
            .as_deref(),
        Ok(&b"before"[..])
    );

    api.shutdown().await;
    let held = server.identity().load().expect("identity");
    let held_generation = generation(&server);
    common::wait_until(
        "the SVID expires with the API down",
        Duration::from_secs(30),
        || !server.is_ready(),
    )
    .await;
    // Kept until expiry, not dropped when the API went away, and not replaced.
    let now = SystemTime::now();
    let last = server.identity().load().expect("still held");
    assert!(last.not_after() <= now, "not-ready only once expired");
    assert_eq!(generation(&server), held_generation);
    assert_eq!(last.leaf(), held.leaf());
    // Fail closed: a valid peer cannot get through with our SVID expired.
    assert!(
        tls_exchange(inbound, peer.clone(), b"during")
            .await
            .is_err()
    );
    assert_eq!(
        app.accepts(),
        1,
        "nothing reached the app during the outage"
    );

    // The API comes back on the same socket: the sidecar picks it up by itself.
    let _api = serve(&t.ca, regs(), TTL).await;
    common::wait_until("the sidecar recovers", Duration::from_secs(60), || {
        server.is_ready()
    })
    .await;
    assert_eq!(
        tls_exchange(inbound, peer, b"after").await.as_deref(),
        Ok(&b"after"[..])
    );
}
