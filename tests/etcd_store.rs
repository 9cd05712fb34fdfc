//! `EtcdStore` against a REAL etcd (one member of Debian's `/usr/bin/etcd` on 127.0.0.1, client
//! TLS): the same contract as the embedded store's unit tests (versions are store revisions,
//! compare-and-set, history kept, failed writes change nothing), workloads whose IDs are
//! prefixes of each other kept apart, quarantines kept and released with their history, and
//! the change feed replaying policy and quarantine changes from a past revision in order.
//!
//! Without etcd each test skips with a printed reason, unless `WARDEN_REQUIRE_ETCD=1`.

#[path = "support/etcd.rs"]
mod etcd;

use warden_control::store::{Action, Change, EtcdStore, PolicyStore, StoreError};
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
        match feed.recv().await.expect("open").expect("change") {
            Change::Policy {
                revision,
                workload,
                policy,
            } => seen.push((revision, workload.to_string(), policy.is_some())),
            other => panic!("not a policy change: {other:?}"),
        }
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
        change,
        Change::Policy {
            revision: b2.version,
            workload: id("/w/x"),
            policy: Some(b2.clone()),
        }
    );

    // Quarantine: durable, versioned, in its own history, on the feed among the writes.
    let q1 = store
        .set_quarantine(&id("/w/x"), false, admin.as_str(), "probing", 20)
        .await
        .expect("quarantine");
    assert!(q1 > b2.version);
    assert_eq!(
        feed.recv().await.expect("open").expect("change"),
        Change::Quarantine { revision: q1 }
    );
    let again = store
        .set_quarantine(&id("/w/x"), false, admin.as_str(), "again", 21)
        .await
        .expect("already");
    assert_eq!(again, q1, "quarantining twice changes nothing");
    let err = store
        .set_quarantine(&id("/w"), true, admin.as_str(), "", 22)
        .await
        .expect_err("not in quarantine");
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    // An identity whose ID extends /w/x is a different identity.
    assert!(
        store
            .set_quarantine(&id("/w/x/y"), true, admin.as_str(), "", 22)
            .await
            .is_err()
    );
    let (list, last) = store.quarantined().await.expect("list");
    assert_eq!(last, q1);
    assert_eq!(
        list.iter()
            .map(|q| (
                q.spiffe_id.clone(),
                q.version,
                q.by.clone(),
                q.reason.clone()
            ))
            .collect::<Vec<_>>(),
        vec![(
            id("/w/x").to_string(),
            q1,
            admin.to_string(),
            "probing".to_owned()
        )]
    );
    let released = store
        .set_quarantine(&id("/w/x"), true, admin.as_str(), "false alarm", 23)
        .await
        .expect("release");
    assert!(released > q1);
    assert_eq!(
        feed.recv().await.expect("open").expect("change"),
        Change::Quarantine { revision: released }
    );
    assert_eq!(
        store.quarantined().await.expect("list"),
        (Vec::new(), released)
    );
    let events = store
        .quarantine_history(&id("/w/x"))
        .await
        .expect("history");
    assert_eq!(
        events
            .iter()
            .map(|e| (e.version, e.released, e.reason.as_str(), e.at_unix_ms))
            .collect::<Vec<_>>(),
        vec![
            (q1, false, "probing", 20),
            (released, true, "false alarm", 23)
        ]
    );
    // A feed asked from before the quarantine replays it in order.
    let mut replay = store.changes(b2.version).await.expect("feed");
    let mut kinds = Vec::new();
    for _ in 0..2 {
        kinds.push(replay.recv().await.expect("open").expect("change"));
    }
    assert_eq!(
        kinds,
        vec![
            Change::Quarantine { revision: q1 },
            Change::Quarantine { revision: released }
        ]
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
