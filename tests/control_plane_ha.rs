//! Several `warden control-plane` processes on one REAL etcd cluster (3 members of Debian's
//! `/usr/bin/etcd` on 127.0.0.1, client TLS with certificates made at test time): writes on
//! one replica are read and enforced through another; compare-and-set across replicas has
//! one winner; kill -9 of a replica loses no acknowledged write and its sidecars move on
//! without going back a version; losing one etcd member changes nothing, losing two stops
//! writes with a clear error while sidecars keep their policy, and everything resumes; an
//! unreachable or mistrusted etcd is a clear start-up error; the built-in CA root is created
//! once and shared; a quarantine made through one replica is enforced through another,
//! listed by a replica that starts later and released through it, with one history.
//!
//! Without etcd each test skips with a printed reason, unless `WARDEN_REQUIRE_ETCD=1`
//! (set by `.ci/run`) makes that a failure.

mod common;
#[path = "support/etcd.rs"]
mod etcd;
#[path = "support/ha.rs"]
mod ha;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::control::*;
use common::pki::Ca;
use common::*;
use etcd::EtcdCluster;
use ha::*;
use tonic::Code;
use warden_proto::control::v1 as pb;

#[tokio::test]
async fn a_put_on_one_replica_is_read_and_enforced_through_another() {
    if !etcd::available_or_skip("a_put_on_one_replica_is_read_and_enforced_through_another") {
        return;
    }
    let cluster = EtcdCluster::start(3).await;
    let ca = Ca::new(TD);
    let r1 = replica(&ca, &cluster, "/warden");
    let r2 = replica(&ca, &cluster, "/warden");
    let mut a1 = r1.admin().await;
    let mut a2 = r2.admin().await;

    let hop = Hop::watching(&ca, &r2).await;
    let (b, client) = (&hop.b, &hop.client);
    assert!(!allowed(client).await, "allowed before any policy");

    let v1 = put(
        &mut a1,
        inbound_policy("/vectordb", &["/retriever"]),
        Some(0),
    )
    .await
    .expect("put on replica 1");
    assert_eq!(
        get_version(&mut a2, "/vectordb").await,
        Some(v1),
        "read on replica 2"
    );
    assert_eq!(history_versions(&mut a2, "/vectordb").await, vec![v1]);
    wait_until("the sidecar watching replica 2 applies v1", WITHIN, || {
        b.policy().version() == v1
    })
    .await;
    wait_allowed(client, "the put made on replica 1 is enforced").await;

    // And back: a revocation written on replica 2, watched through replica 2, read on 1.
    let v2 = put(&mut a2, inbound_policy("/vectordb", &["/app"]), Some(v1))
        .await
        .expect("put on replica 2");
    assert!(v2 > v1);
    wait_until("the sidecar applies v2", WITHIN, || {
        b.policy().version() == v2
    })
    .await;
    assert!(!allowed(client).await, "revoked peer still allowed");
    assert_eq!(get_version(&mut a1, "/vectordb").await, Some(v2));
    assert_eq!(history_versions(&mut a1, "/vectordb").await, vec![v1, v2]);
}

#[tokio::test]
async fn a_quarantine_made_through_one_replica_is_enforced_through_another_and_kept_in_etcd() {
    if !etcd::available_or_skip(
        "a_quarantine_made_through_one_replica_is_enforced_through_another_and_kept_in_etcd",
    ) {
        return;
    }
    let cluster = EtcdCluster::start(3).await;
    let ca = Ca::new(TD);
    let r1 = replica(&ca, &cluster, "/warden");
    let r2 = replica(&ca, &cluster, "/warden");
    let mut a1 = r1.admin().await;
    let mut a2 = r2.admin().await;

    let hop = Hop::watching(&ca, &r2).await;
    let (b, client) = (&hop.b, &hop.client);
    let v1 = put(
        &mut a1,
        inbound_policy("/vectordb", &["/retriever"]),
        Some(0),
    )
    .await
    .expect("put");
    wait_allowed(client, "the retriever is allowed before the quarantine").await;

    // Quarantined through replica 1; the sidecar watches replica 2.
    let q = a1
        .quarantine(pb::QuarantineRequest {
            spiffe_id: id("/retriever"),
            reason: "investigating".into(),
        })
        .await
        .expect("quarantine on replica 1")
        .into_inner()
        .version;
    assert!(q > v1);
    wait_until(
        "the sidecar watching replica 2 takes the quarantine",
        WITHIN,
        || b.policy().version() >= q,
    )
    .await;
    assert!(
        !allowed(client).await,
        "a quarantined peer is still served through replica 2's sidecar"
    );
    assert_eq!(
        history_actions(&mut a2, "/retriever").await,
        vec![("quarantine".to_owned(), q)],
        "replica 2 shows the quarantine made on replica 1"
    );

    // A replica that starts later finds it in the store, and releases it for everyone.
    let r3 = replica(&ca, &cluster, "/warden");
    let mut a3 = r3.admin().await;
    let listed = a3
        .anomalies(pb::AnomaliesRequest { since_ms: 0 })
        .await
        .expect("anomalies")
        .into_inner()
        .quarantined;
    assert_eq!(
        listed
            .iter()
            .map(|q| (q.spiffe_id.clone(), q.reason.clone(), q.version))
            .collect::<Vec<_>>(),
        vec![(id("/retriever"), "investigating".to_owned(), q)]
    );
    let released = a3
        .release(pb::ReleaseRequest {
            spiffe_id: id("/retriever"),
            reason: "false alarm".into(),
        })
        .await
        .expect("release on replica 3")
        .into_inner()
        .version;
    assert!(released > q);
    wait_allowed(
        client,
        "the release made on replica 3 is enforced through replica 2",
    )
    .await;
    assert_eq!(
        history_actions(&mut a1, "/retriever").await,
        vec![
            ("quarantine".to_owned(), q),
            ("release".to_owned(), released)
        ],
        "one history in every replica"
    );
    // Releasing again: nothing to release, on any replica.
    let err = a2
        .release(pb::ReleaseRequest {
            spiffe_id: id("/retriever"),
            reason: String::new(),
        })
        .await
        .expect_err("not in quarantine");
    assert_eq!(err.code(), Code::NotFound, "{err}");
}

#[tokio::test]
async fn compare_and_set_from_two_replicas_has_exactly_one_winner() {
    if !etcd::available_or_skip("compare_and_set_from_two_replicas_has_exactly_one_winner") {
        return;
    }
    let cluster = EtcdCluster::start(3).await;
    let ca = Ca::new(TD);
    let r1 = replica(&ca, &cluster, "/warden");
    let r2 = replica(&ca, &cluster, "/warden");
    let mut a1 = r1.admin().await;
    let mut a2 = r2.admin().await;
    let mut current = 0;
    let mut winners = Vec::new();
    for round in 0..20 {
        let (x, y) = tokio::join!(
            put(&mut a1, inbound_policy("/w", &["/from-1"]), Some(current)),
            put(&mut a2, inbound_policy("/w", &["/from-2"]), Some(current)),
        );
        let winner = match (&x, &y) {
            (Ok(v), Err(s)) | (Err(s), Ok(v)) => {
                assert_eq!(s.code(), Code::FailedPrecondition, "round {round}: {s}");
                *v
            }
            _ => panic!("round {round}: expected exactly one winner, got {x:?} and {y:?}"),
        };
        assert!(winner > current);
        winners.push(winner);
        current = winner;
    }
    // One history, in both replicas: exactly the winners.
    assert_eq!(history_versions(&mut a1, "/w").await, winners);
    assert_eq!(history_versions(&mut a2, "/w").await, winners);
}

#[tokio::test]
async fn kill_9_of_a_replica_loses_no_acknowledged_write_and_its_sidecars_move_on() {
    if !etcd::available_or_skip(
        "kill_9_of_a_replica_loses_no_acknowledged_write_and_its_sidecars_move_on",
    ) {
        return;
    }
    let cluster = EtcdCluster::start(3).await;
    let ca = Ca::new(TD);
    let mut replicas: Vec<CpProcess> = (0..3).map(|_| replica(&ca, &cluster, "/warden")).collect();
    let urls: Vec<String> = replicas.iter().map(CpProcess::url).collect();
    let mut admins = Vec::new();
    for r in &replicas {
        admins.push(r.admin().await);
    }
    let app = EchoApp::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let b = sidecar(
        &watched_config(app.addr, &urls, dir.path()),
        ca.identity(&id("/vectordb"), &[]),
    )
    .await;
    // Which replica does the sidecar watch? That is the one to kill.
    let mut victim = None;
    let deadline = tokio::time::Instant::now() + WITHIN;
    while victim.is_none() {
        for (i, a) in admins.iter_mut().enumerate() {
            let status = a
                .status(pb::StatusRequest {})
                .await
                .expect("status")
                .into_inner();
            if status
                .sidecars
                .iter()
                .any(|s| s.spiffe_id == id("/vectordb"))
            {
                victim = Some(i);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sidecar watches no replica"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let victim = victim.expect("found");

    // A stream of writes over all three replicas in turn, each acknowledged one recorded.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let writer = {
        let (stop, acked) = (stop.clone(), acked.clone());
        let mut admins = admins;
        tokio::spawn(async move {
            let mut n = 0usize;
            let mut failed = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let a = &mut admins[n % 3];
                let policy = inbound_policy("/vectordb", &[&format!("/peer{n}")]);
                match put(a, policy, None).await {
                    Ok(v) => acked.lock().expect("lock").push(v),
                    Err(_) => failed += 1,
                }
                n += 1;
            }
            failed
        })
    };
    let count = || acked.lock().expect("lock").len();
    wait_until("20 writes acknowledged", WITHIN, || count() >= 20).await;
    replicas[victim].kill9();
    let after_kill = count();
    wait_until(
        "40 more writes acknowledged after the kill",
        Duration::from_secs(30),
        || count() >= after_kill + 40,
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let failed = writer.await.expect("writer");
    let acked = acked.lock().expect("lock").clone();
    let last = *acked.iter().max().expect("writes");

    let survivor = (victim + 1) % 3;
    let mut admin = replicas[survivor].admin().await;
    let history = history_versions(&mut admin, "/vectordb").await;
    for v in &acked {
        assert!(history.contains(v), "acknowledged write v{v} lost");
    }
    assert_eq!(get_version(&mut admin, "/vectordb").await, Some(last));
    wait_until("the sidecar reaches the last write", WITHIN, || {
        b.policy().version() == last
    })
    .await;
    // It moved to a replica that is alive, and never went back a version.
    let status = admin
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    let other = 3 - victim - survivor;
    let mut other_admin = replicas[other].admin().await;
    let other_status = other_admin
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert!(
        status
            .sidecars
            .iter()
            .chain(&other_status.sidecars)
            .any(|s| s.spiffe_id == id("/vectordb")),
        "the sidecar watches no surviving replica"
    );
    wait_until(
        "the sidecar's audit log records the last version",
        WITHIN,
        || applied_versions(dir.path()).last() == Some(&last),
    )
    .await;
    let applied = applied_versions(dir.path());
    assert!(
        applied.windows(2).all(|w| w[0] < w[1]),
        "versions applied out of order or twice: {applied:?}"
    );
    for v in applied.iter().filter(|v| **v > history[0]) {
        assert!(history.contains(v), "applied v{v}, which was never written");
    }
    eprintln!(
        "{} writes acknowledged ({} failed: the ones sent to the killed replica), sidecar applied {} versions",
        acked.len(),
        failed,
        applied.len()
    );
}

#[tokio::test]
async fn losing_etcd_members_one_changes_nothing_two_stop_writes_and_all_resumes() {
    if !etcd::available_or_skip(
        "losing_etcd_members_one_changes_nothing_two_stop_writes_and_all_resumes",
    ) {
        return;
    }
    let mut cluster = EtcdCluster::start(3).await;
    let ca = Ca::new(TD);
    let r1 = replica(&ca, &cluster, "/warden");
    let r2 = replica(&ca, &cluster, "/warden");
    let mut a1 = r1.admin().await;
    let hop = Hop::watching(&ca, &r2).await;
    let (b, client) = (&hop.b, &hop.client);
    let v1 = put(&mut a1, inbound_policy("/vectordb", &["/app"]), None)
        .await
        .expect("put");
    wait_until("v1 applied", WITHIN, || b.policy().version() == v1).await;

    // One member down: writes and pushes go on.
    cluster.kill(0);
    let v2 = put(
        &mut a1,
        inbound_policy("/vectordb", &["/retriever"]),
        Some(v1),
    )
    .await
    .expect("a write with one etcd member down");
    wait_until("v2 pushed with one member down", WITHIN, || {
        b.policy().version() == v2
    })
    .await;
    wait_allowed(client, "v2 enforced").await;

    // Two down: no quorum. Writes fail, naming the store; the sidecar keeps v2.
    cluster.kill(1);
    let err = put(&mut a1, inbound_policy("/vectordb", &["/nobody"]), Some(v2))
        .await
        .expect_err("a write without quorum");
    // UNAVAILABLE: refused before any member took it. DEADLINE_EXCEEDED: a member took it
    // but could not commit it, and it may commit once the quorum is back (the error says so).
    assert!(
        matches!(err.code(), Code::Unavailable | Code::DeadlineExceeded),
        "{err:?}"
    );
    if err.code() == Code::DeadlineExceeded {
        assert!(err.message().contains("may still be applied"), "{err:?}");
    }
    assert!(
        err.message()
            .contains("policy store etcd (https://127.0.0.1:"),
        "the error does not name the store: {}",
        err.message()
    );
    eprintln!("write without quorum: {}", err.message());
    assert_eq!(b.policy().version(), v2);
    assert!(
        allowed(client).await,
        "the last policy is no longer enforced"
    );

    // Both back: writes succeed again and reach the sidecar through replica 2.
    cluster.restart(0);
    cluster.restart(1);
    cluster.wait_writable(Duration::from_secs(30)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let v3 = loop {
        // The write that was not confirmed may have been applied since: read first.
        let Some(current) = get_version(&mut a1, "/vectordb").await else {
            assert!(
                tokio::time::Instant::now() < deadline,
                "reads did not resume"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        assert!(
            current == v2 || matches!(err.code(), Code::DeadlineExceeded),
            "a refused write was applied"
        );
        match put(
            &mut a1,
            inbound_policy("/vectordb", &["/app"]),
            Some(current),
        )
        .await
        {
            Ok(v) => break v,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "writes did not resume: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_until(
        "v3 pushed after the restart",
        Duration::from_secs(30),
        || b.policy().version() == v3,
    )
    .await;
    assert!(!allowed(client).await, "v3 not enforced");
}

#[tokio::test]
async fn an_unreachable_or_mistrusted_etcd_is_a_clear_start_up_error() {
    if !etcd::available_or_skip("an_unreachable_or_mistrusted_etcd_is_a_clear_start_up_error") {
        return;
    }
    let cluster = EtcdCluster::start(1).await;
    let ca = Ca::new(TD);
    let good = cluster.store_toml("/warden");

    // Nothing listens there.
    let nobody = format!("https://127.0.0.1:{}", free_port().port());
    let err = start_up_failure(&ca, &good.replace(&cluster.endpoint(0), &nobody)).await;
    eprintln!("nothing listening: {err}");
    assert!(
        err.contains(&format!("policy store etcd ({nobody})")) && err.contains("refused"),
        "{err}"
    );

    // etcd's certificate is not signed by the CA we were told to trust.
    let other = etcd::EtcdPki::new(&cluster.dir.path().join("other-pki"));
    let wrong_ca = good.replace(
        &cluster.pki.ca.display().to_string(),
        &other.ca.display().to_string(),
    );
    let err = start_up_failure(&ca, &wrong_ca).await;
    eprintln!("wrong CA: {err}");
    assert!(
        err.contains(&format!("policy store etcd ({})", cluster.endpoint(0)))
            && err.contains("certificate"),
        "{err}"
    );

    // Our client certificate is not one etcd accepts.
    let wrong_client = good
        .replace(
            &cluster.pki.client_cert.display().to_string(),
            &other.client_cert.display().to_string(),
        )
        .replace(
            &cluster.pki.client_key.display().to_string(),
            &other.client_key.display().to_string(),
        );
    let err = start_up_failure(&ca, &wrong_client).await;
    assert!(
        err.contains(&format!("policy store etcd ({})", cluster.endpoint(0)))
            && err.contains("client certificate"),
        "{err}"
    );
    eprintln!("wrong client certificate: {err}");
}

#[tokio::test]
async fn the_built_in_ca_root_is_created_once_and_the_admin_credential_works_everywhere() {
    if !etcd::available_or_skip(
        "the_built_in_ca_root_is_created_once_and_the_admin_credential_works_everywhere",
    ) {
        return;
    }
    let cluster = EtcdCluster::start(3).await;
    // Three replicas starting at once race to create the root.
    let replicas: Vec<CaReplica> = (0..3).map(|_| CaReplica::start(&cluster)).collect();
    let deadline = tokio::time::Instant::now() + WITHIN;
    // Each file is renamed into place; tls.crt is written last.
    let written = |r: &CaReplica| {
        ["ca.crt", "tls.key", "tls.crt"]
            .iter()
            .all(|f| r.admin_dir().join(f).exists())
    };
    while !replicas.iter().all(written) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "admin credentials not written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let roots: Vec<String> = replicas
        .iter()
        .map(|r| std::fs::read_to_string(r.admin_dir().join("ca.crt")).expect("ca.crt"))
        .collect();
    assert!(
        roots.iter().all(|r| *r == roots[0]),
        "more than one CA root"
    );
    // Replica 0's admin credential is accepted by every replica, and a write through one is
    // read through another.
    let cred = replicas[0].admin_dir();
    let mut first = replicas[0].client(&cred).await;
    let v = put(&mut first, inbound_policy("/w", &["/a"]), None)
        .await
        .expect("put");
    for r in &replicas[1..] {
        let mut api = r.client(&cred).await;
        assert_eq!(get_version(&mut api, "/w").await, Some(v));
    }
    let created = replicas
        .iter()
        .filter(|r| {
            strip_ansi(&std::fs::read_to_string(r.dir.path().join("cp.log")).unwrap_or_default())
                .contains("created=true")
        })
        .count();
    assert_eq!(created, 1, "the root was created by {created} replicas");
}
