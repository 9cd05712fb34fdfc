//! `EtcdStore` against a REAL etcd (one member of Debian's `/usr/bin/etcd` on 127.0.0.1, client
//! TLS): the same contract as the embedded store's unit tests (versions are store revisions,
//! compare-and-set, history kept, failed writes change nothing), workloads whose IDs are
//! prefixes of each other kept apart, and the change feed replaying from a past revision in
//! order.
//!
//! Without etcd each test skips with a printed reason, unless `WARDEN_REQUIRE_ETCD=1`.

#[path = "support/etcd.rs"]
mod etcd;

use warden_control::store::{Action, EtcdStore, PolicyStore, StoreError};
use warden_identity::SpiffeId;
use warden_policy::WorkloadPolicy;

fn id(p: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://example.org{p}")).expect("id")
}

fn policy(p: &str, peer: &str) -> WorkloadPolicy {
    let mut w = WorkloadPolicy::new(id(p));
    w.inbound.insert(
        "http".into(),
        vec![
            warden_policy::Pattern::parse(&format!("spiffe://example.org{peer}")).expect("pattern"),
        ],
    );
    w
}

#[tokio::test]
async fn the_etcd_store_keeps_the_store_contract() {
    if !etcd::available_or_skip("the_etcd_store_keeps_the_store_contract") {
        return;
    }
    let cluster = etcd::EtcdCluster::start(1).await;
    let store = EtcdStore::connect(&cluster.etcd_config("/contract"))
        .await
        .expect("connect");
    let admin = id("/admin");
    let start = store.revision().await.expect("revision");

    let a1 = store
        .put(policy("/w", "/a"), Some(0), &admin, 10)
        .await
        .expect("create");
    assert!(a1.version > start);
    assert_eq!(a1.updated_by.as_deref(), Some("spiffe://example.org/admin"));
    assert_eq!(a1.updated_at_unix_ms, Some(10));
    // A workload whose ID extends /w: its own history, its own CAS.
    let b1 = store
        .put(policy("/w/x", "/a"), None, &admin, 11)
        .await
        .expect("put");
    assert!(b1.version > a1.version);
    let err = store
        .put(policy("/w", "/b"), Some(0), &admin, 12)
        .await
        .expect_err("exists already");
    assert!(
        matches!(err, StoreError::VersionConflict { expected: 0, actual } if actual == a1.version),
        "{err}"
    );
    let a2 = store
        .put(policy("/w", "/b"), Some(a1.version), &admin, 13)
        .await
        .expect("cas put");
    assert!(a2.version > b1.version);
    let (got, at) = store.get_at(&id("/w")).await.expect("get_at");
    assert_eq!(got.as_ref().map(|p| p.version), Some(a2.version));
    assert!(at >= a2.version);
    assert_eq!(got, Some(a2.clone()));

    let err = store
        .delete(&id("/w"), Some(a1.version), &admin, 14)
        .await
        .expect_err("stale delete");
    assert!(matches!(err, StoreError::VersionConflict { .. }), "{err}");
    let err = store
        .delete(&id("/nope"), None, &admin, 15)
        .await
        .expect_err("missing");
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    let del = store
        .delete(&id("/w"), Some(a2.version), &admin, 16)
        .await
        .expect("delete");
    assert!(del > a2.version);
    assert!(store.get(&id("/w")).await.expect("get").is_none());

    let history = store.history(&id("/w")).await.expect("history");
    assert_eq!(
        history
            .iter()
            .map(|e| (e.version, e.action, e.at_unix_ms))
            .collect::<Vec<_>>(),
        vec![
            (a1.version, Action::Put, 10),
            (a2.version, Action::Put, 13),
            (del, Action::Delete, 16)
        ],
        "failed writes must leave no history"
    );
    assert_eq!(
        history[1].policy.as_ref().map(|p| p.version),
        Some(a2.version)
    );
    assert_eq!(store.history(&id("/w/x")).await.expect("h").len(), 1);
    let list = store.list().await.expect("list");
    assert_eq!(
        list.iter()
            .map(|p| p.spiffe_id.to_string())
            .collect::<Vec<_>>(),
        vec![id("/w/x").to_string()]
    );

    // The feed from before the first write replays every write, in order.
    let mut feed = store.changes(start).await.expect("feed");
    let mut seen = Vec::new();
    for _ in 0..4 {
        let change = feed.recv().await.expect("open").expect("change");
        seen.push((
            change.revision,
            change.workload.to_string(),
            change.policy.is_some(),
        ));
    }
    assert_eq!(
        seen,
        vec![
            (a1.version, id("/w").to_string(), true),
            (b1.version, id("/w/x").to_string(), true),
            (a2.version, id("/w").to_string(), true),
            (del, id("/w").to_string(), false),
        ]
    );
    // And then follows live writes.
    let b2 = store
        .put(policy("/w/x", "/c"), None, &admin, 17)
        .await
        .expect("put");
    let change = feed.recv().await.expect("open").expect("change");
    assert_eq!(
        (change.revision, change.policy.map(|p| p.version)),
        (b2.version, Some(b2.version))
    );
}

#[tokio::test]
async fn many_workloads_are_listed_across_pages() {
    if !etcd::available_or_skip("many_workloads_are_listed_across_pages") {
        return;
    }
    let cluster = etcd::EtcdCluster::start(1).await;
    let store = EtcdStore::connect(&cluster.etcd_config("/pages"))
        .await
        .expect("connect");
    let admin = id("/admin");
    // More than one page (256) of workloads.
    for n in 0..300 {
        store
            .put(policy(&format!("/w{n:03}"), "/a"), None, &admin, n)
            .await
            .expect("put");
    }
    let list = store.list().await.expect("list");
    assert_eq!(list.len(), 300);
    let mut ids: Vec<String> = list.iter().map(|p| p.spiffe_id.to_string()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 300, "a workload listed twice");
}
