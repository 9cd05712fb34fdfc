//! Abuse by a valid workload. Zero trust assumes any workload may be compromised: it then
//! holds a valid, non-admin SVID and passes mTLS to the control plane, and any local process
//! can reach a Workload API socket. Each attack runs against a real `warden control-plane`
//! process that also serves a Workload API socket (and, for the per-peer share, a real
//! `warden sidecar` process), over real sockets. While the attack runs, in a loop, and
//! once after it:
//! - an admin's put and get each answer within 5 s,
//! - the put reaches an honest, watching sidecar within 2 s,
//! - an honest Workload API caller gets its X.509 SVID within 5 s;
//!
//! and after it the control plane's resident memory has grown by less than
//! [`MEMORY_BOUND_KIB`] and its log by less than [`LOG_BOUND`].
//!
//! Figures (printed by each test) are in RELIABILITY.md, "Abuse by a valid workload".

#[path = "support/abuse_mesh.rs"]
mod abuse_mesh;
mod common;
#[path = "support/h2raw.rs"]
mod h2raw;
#[path = "support/harden.rs"]
mod harden;

use std::time::Duration;

use abuse_mesh::*;
use common::control::*;
use common::*;
use h2raw::*;
use harden::{SidecarProcess, TLS13, audit_records, metric};
use prost::Message;
use tokio::io::AsyncReadExt;
use tonic::Code;
use warden_proto::control::v1 as pb;
use warden_proto::control::v1::policy_service_client::PolicyServiceClient;

// ---------------------------------------------------------------------------------------
// 1. Client-provoked server resets.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_resets_provoked_by_a_client_end_its_connection() {
    let mesh = Mesh::start("").await;
    let mut h2 = mesh.attacker().await;
    let (resets, goaway) = mesh
        .under_attack(
            "a reset flood on the policy API",
            provoke_resets(&mut h2, WATCH, &[], 5000),
        )
        .await;
    assert_cut_off(resets, goaway);
    mesh.assert_serving("after the reset flood").await;
    mesh.assert_bounded("provoked resets, policy API");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_resets_provoked_on_the_workload_api_end_the_connection() {
    let mesh = Mesh::start("").await;
    let mut h2 = mesh.workload_api_h2().await;
    let (resets, goaway) = mesh
        .under_attack(
            "a reset flood on the Workload API",
            provoke_resets(
                &mut h2,
                FETCH_X509,
                &[("workload.spiffe.io", b"true")],
                5000,
            ),
        )
        .await;
    assert_cut_off(resets, goaway);
    mesh.assert_serving("after the reset flood on the Workload API")
        .await;
    mesh.assert_bounded("provoked resets, Workload API");
}

// ---------------------------------------------------------------------------------------
// 2. Bodies buffered before authorization.

/// 96 PutPolicy calls from a non-admin, each sending a message one byte short of 4 MiB as
/// fast as the server's flow control lets it: refused (PERMISSION_DENIED) from the method
/// and the caller alone, before the bodies are read, so the control plane takes only what
/// its flow-control windows let through. The refusals are logged 20 a second, and the log
/// accounts for every one of them, the rest in a summary line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_writes_are_refused_before_their_bodies_are_buffered() {
    let mesh = Mesh::start("").await;
    let mut h2 = mesh.attacker().await;
    let block = grpc_request(PUT, field(0, ":authority", b"localhost"), &[]);
    let len = 4 * 1024 * 1024 - 1;
    let mut body = message_prefix(len as u32);
    body.resize(5 + len, 0x55);
    let streams: Vec<u32> = (0..96u32).map(|i| 1 + 2 * i).collect();
    let sent = mesh
        .under_attack("96 unauthorized 4 MiB writes", async {
            open_calls(&mut h2, &block, &streams).await;
            let bodies: Vec<(u32, &[u8])> = streams.iter().map(|&s| (s, &body[..])).collect();
            h2.send_bodies(&bodies, true, DEADLINE, |s| {
                streams.iter().all(|id| s.status.contains_key(id))
            })
            .await
        })
        .await;
    let denied = streams
        .iter()
        .filter(|id| sent.status.get(id).map(String::as_str) == Some("7"))
        .count();
    let bytes: usize = sent.bytes.values().sum();
    eprintln!(
        "unauthorized writes: {denied} of 96 refused; {bytes} body bytes taken by the server of {} offered",
        96 * body.len()
    );
    assert_eq!(denied, 96, "{:?}", sent.status);
    mesh.assert_serving("after 96 unauthorized 4 MiB writes")
        .await;
    let mut admin = mesh.checks.admin.clone();
    let listed = within(
        "list",
        ANSWER,
        admin.list_policies(pb::ListPoliciesRequest {}),
    )
    .await
    .expect("list")
    .into_inner();
    assert!(
        listed
            .policies
            .iter()
            .all(|p| p.spiffe_id == id("/vectordb")),
        "the attacker wrote something"
    );
    // Every refusal is in the log: written, or counted in `suppressed` by a later line or
    // by the summary written when its one-second window closed.
    let accounted = || {
        let log = plain(&mesh.cp.log());
        let refusals = log
            .lines()
            .filter(|l| l.contains("call refused: not an admin") && l.contains("PutPolicy"));
        let written = refusals.clone().count() as u64;
        let carried: u64 = refusals.filter_map(|l| log_field(l, "suppressed")).sum();
        let summaries: Vec<u64> = log
            .lines()
            .filter(|l| l.contains("event=\"log_summary\"") && l.contains("kind=\"api\""))
            .filter_map(|l| log_field(l, "suppressed"))
            .collect();
        (written, carried, summaries)
    };
    eventually("every refusal is accounted for in the log", ANSWER, || {
        let (written, carried, summaries) = accounted();
        let total = written + carried + summaries.iter().sum::<u64>();
        std::future::ready(if total == 96 {
            Ok(())
        } else {
            Err(format!(
                "{written} lines, {carried} carried, summaries {summaries:?}"
            ))
        })
    })
    .await;
    let (written, carried, summaries) = accounted();
    eprintln!(
        "refusal log: {written} lines written, {carried} counted by later lines, summaries {summaries:?}"
    );
    assert!(
        !summaries.is_empty(),
        "a flood of refusals that stopped has no summary line"
    );
    mesh.assert_bounded("unauthorized large writes");
}

// ---------------------------------------------------------------------------------------
// 3. A huge hello.

/// 64 watches each opening with a 4 MiB hello end with RESOURCE_EXHAUSTED; a hello under the
/// limit is kept at 64 bytes; `warden policy status` answers and stays small.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_hellos_end_their_watch_and_status_stays_small() {
    let mesh = Mesh::start("").await;
    let attacker = mesh.attacker_client().await;
    let codes = mesh
        .under_attack("64 watches opening with a 4 MiB hello", async {
            let mut calls = tokio::task::JoinSet::new();
            for _ in 0..64 {
                let mut client = attacker.clone();
                calls.spawn(async move {
                    let request = tokio_stream::iter(vec![hello("x".repeat(4 * 1024 * 1024 - 64))]);
                    match client.watch_policy(request).await {
                        Err(status) => status.code(),
                        Ok(response) => {
                            let mut stream = response.into_inner();
                            loop {
                                match stream.message().await {
                                    Ok(Some(_)) => continue,
                                    Ok(None) => break Code::Ok,
                                    Err(status) => break status.code(),
                                }
                            }
                        }
                    }
                });
            }
            let mut codes = Vec::new();
            while let Some(code) = within("the watches end", DEADLINE, calls.join_next()).await {
                codes.push(code.expect("task"));
            }
            codes
        })
        .await;
    assert_eq!(codes, vec![Code::ResourceExhausted; 64]);
    // A hello just under the message limit is accepted, and kept short.
    let mut client = attacker.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    within("send", ANSWER, tx.send(hello("y".repeat(7000))))
        .await
        .expect("send");
    let mut watch = within(
        "watch",
        ANSWER,
        client.watch_policy(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .expect("watch")
    .into_inner();
    within("snapshot", ANSWER, watch.message())
        .await
        .expect("snapshot");
    let admin = mesh.checks.admin.clone();
    eventually("the hello is kept, bounded", ANSWER, || {
        let mut admin = admin.clone();
        async move {
            let status = admin
                .status(pb::StatusRequest {})
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            let kept = status
                .sidecars
                .iter()
                .find(|s| s.spiffe_id == id(ATTACKER) && !s.sidecar_version.is_empty())
                .map(|s| s.sidecar_version.len());
            if kept == Some(64) {
                Ok(())
            } else {
                Err(format!("kept {kept:?}"))
            }
        }
    })
    .await;
    drop(tx);
    drop(watch);
    mesh.assert_serving("after 64 oversized hellos").await;
    mesh.assert_status_true("after 64 oversized hellos").await;
    mesh.assert_bounded("oversized hellos");
}

// ---------------------------------------------------------------------------------------
// 4. An oversized or malformed message on an open watch.

/// An ack padded over WatchPolicy's limit on an open watch ends it with RESOURCE_EXHAUSTED
/// (one padded under the limit is taken), and the session leaves `warden policy status`
/// with it: the table stays true.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_ack_on_an_open_watch_ends_it_with_a_status() {
    let mesh = Mesh::start("").await;
    let mut h2 = mesh.attacker().await;
    let admin = mesh.checks.admin.clone();
    let attacker_row = move || {
        let mut admin = admin.clone();
        async move {
            let status = admin
                .status(pb::StatusRequest {})
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            Ok::<_, String>(
                status
                    .sidecars
                    .into_iter()
                    .find(|s| s.spiffe_id == id(ATTACKER)),
            )
        }
    };
    // The attacker's workload has a policy, so the version its watch is sent is not 0.
    let mut admin = mesh.checks.admin.clone();
    let version = within(
        "put",
        ANSWER,
        put(&mut admin, inbound_policy(ATTACKER, &["/x"]), None),
    )
    .await
    .expect("put");
    let sent = mesh
        .under_attack("an oversized ack on an open watch", async {
            open_raw_watch(&mut h2, 1).await;
            let sent_version = within("the watch is listed", ANSWER, async {
                loop {
                    if let Ok(Some(row)) = attacker_row().await {
                        break row.sent_version;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
            assert!(sent_version >= version, "{sent_version} < {version}");
            // An ack of the version sent, padded to 128 KiB: under the limit, taken.
            let ack = framed(&padded_ack(sent_version, 128 * 1024));
            let taken = h2
                .send_bodies(&[(1, &ack[..])], false, ANSWER, |_| true)
                .await;
            assert!(!taken.ended.contains(&1), "{taken:?}");
            eventually("the padded ack is applied", ANSWER, || {
                let row = attacker_row();
                async move {
                    match row.await? {
                        Some(r) if r.applied_version == sent_version => Ok(()),
                        other => Err(format!("{other:?}")),
                    }
                }
            })
            .await;
            // The same ack padded over the limit ends the watch.
            let ack = framed(&padded_ack(sent_version, WATCH_LIMIT + 64 * 1024));
            h2.send_bodies(&[(1, &ack[..])], false, DEADLINE, |s| s.ended.contains(&1))
                .await
        })
        .await;
    assert_eq!(
        sent.status.get(&1).map(String::as_str),
        Some("8"),
        "the watch ends with RESOURCE_EXHAUSTED: {sent:?}"
    );
    mesh.assert_serving("after an oversized ack").await;
    mesh.assert_status_true("after an oversized ack").await;
    mesh.assert_bounded("oversized ack on a watch");
}

/// A watch message that is not protobuf, and one flagged compressed with no
/// `grpc-encoding`, each end their watch with INVALID_ARGUMENT (the caller's fault, not
/// the server's); the status table stays true.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_watch_messages_end_the_watch_with_invalid_argument() {
    let mesh = Mesh::start("").await;
    let mut h2 = mesh.attacker().await;
    let sent = mesh
        .under_attack("malformed watch messages", async {
            open_raw_watch(&mut h2, 1).await;
            open_raw_watch(&mut h2, 3).await;
            // Field 2 (ack), length 5, but one byte follows: not a WatchRequest.
            let garbage = framed(&[0x12, 0x05, 0x08]);
            // The compressed flag, and no grpc-encoding was agreed.
            let mut compressed = framed(&hello("1.0".into()).encode_to_vec());
            compressed[0] = 1;
            let mut out = frame(DATA, 0, 1, &garbage);
            out.extend(frame(DATA, 0, 3, &compressed));
            within("send", ANSWER, h2.send(&out)).await.expect("send");
            let mut sent = Sent::default();
            assert!(
                h2.read_into(&mut sent, DEADLINE, |s| s.ended.contains(&1)
                    && s.ended.contains(&3))
                    .await,
                "{sent:?}"
            );
            sent
        })
        .await;
    assert_eq!(
        sent.status.get(&1).map(String::as_str),
        Some("3"),
        "{sent:?}"
    );
    assert_eq!(
        sent.status.get(&3).map(String::as_str),
        Some("3"),
        "{sent:?}"
    );
    mesh.assert_serving("after malformed watch messages").await;
    mesh.assert_status_true("after malformed watch messages")
        .await;
    mesh.assert_bounded("malformed watch messages");
}

/// An ack of a version the watch was never sent ends it with OUT_OF_RANGE: `status` never
/// shows a version as applied that no sidecar has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_of_a_version_never_sent_ends_the_watch_with_out_of_range() {
    let mesh = Mesh::start("").await;
    let mut attacker = mesh.attacker_client().await;
    // The attacker's workload has a policy, so the version its watch is sent is not 0.
    let mut admin = mesh.checks.admin.clone();
    let version = within(
        "put",
        ANSWER,
        put(&mut admin, inbound_policy(ATTACKER, &["/x"]), None),
    )
    .await
    .expect("put");
    let code = mesh
        .under_attack("an ack of a version never sent", async {
            let (tx, rx) = tokio::sync::mpsc::channel(2);
            tx.send(hello("1.0".into())).await.expect("send");
            let mut watch = within(
                "watch",
                ANSWER,
                attacker.watch_policy(tokio_stream::wrappers::ReceiverStream::new(rx)),
            )
            .await
            .expect("watch")
            .into_inner();
            let snapshot = within("snapshot", ANSWER, watch.message())
                .await
                .expect("snapshot")
                .expect("a snapshot");
            assert!(snapshot.version >= version);
            let ack = |applied_version| pb::WatchRequest {
                msg: Some(pb::watch_request::Msg::Ack(pb::Ack { applied_version })),
            };
            // The version sent is acknowledged and shown.
            tx.send(ack(snapshot.version)).await.expect("send");
            let admin = mesh.checks.admin.clone();
            eventually("the ack is shown", ANSWER, || {
                let mut admin = admin.clone();
                async move {
                    let status = admin
                        .status(pb::StatusRequest {})
                        .await
                        .map_err(|e| e.to_string())?
                        .into_inner();
                    let row = status.sidecars.iter().find(|s| s.spiffe_id == id(ATTACKER));
                    match row {
                        Some(r)
                            if r.sent_version == snapshot.version
                                && r.applied_version == snapshot.version =>
                        {
                            Ok(())
                        }
                        other => Err(format!("{other:?}")),
                    }
                }
            })
            .await;
            tx.send(ack(snapshot.version + 1000)).await.expect("send");
            within("the watch ends", ANSWER, async {
                loop {
                    match watch.message().await {
                        Ok(Some(_)) => continue,
                        Ok(None) => break Code::Ok,
                        Err(status) => break status.code(),
                    }
                }
            })
            .await
        })
        .await;
    assert_eq!(code, Code::OutOfRange);
    mesh.assert_serving("after an ack out of range").await;
    mesh.assert_status_true("after an ack out of range").await;
    mesh.assert_bounded("ack out of range");
}

/// Partial WatchPolicy messages on 128 watches (one connection's worth), each announced at
/// the method's limit (256 KiB) and sent one byte short, so the server would hold it
/// unfinished: with `max_message_bytes_per_peer` at 8 MiB, 32 are held and the other 96
/// watches end with RESOURCE_EXHAUSTED; the control plane's memory grows by the share and
/// the watches' bookkeeping, and the share is given back when the calls end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_messages_on_many_watches_are_held_to_the_callers_share() {
    const WATCHES: u32 = 128;
    const SHARE: usize = 8 * 1024 * 1024;
    let mesh = Mesh::start(&format!("[limits]\nmax_message_bytes_per_peer = {SHARE}\n")).await;
    let mut h2 = mesh.attacker().await;
    let mut body = message_prefix(WATCH_LIMIT as u32);
    body.resize(5 + WATCH_LIMIT - 1, 0x0a);
    let streams: Vec<u32> = (0..WATCHES).map(|i| 1 + 2 * i).collect();
    let (open_rss, sent) = mesh
        .under_attack("partial messages on 128 watches", async {
            let block = grpc_request(WATCH, field(0, ":authority", b"localhost"), &[]);
            open_calls(&mut h2, &block, &streams).await;
            let mut sent = Sent::default();
            assert!(
                h2.read_into(&mut sent, DEADLINE, |s| streams
                    .iter()
                    .all(|id| s.data.contains(id)))
                    .await,
                "every watch is served: {sent:?}"
            );
            let open_rss = mesh.cp.rss_kib();
            let sent = send_partial_messages(&mut h2, &streams, &body, SHARE / WATCH_LIMIT).await;
            (open_rss, sent)
        })
        .await;
    let (held, ended, exhausted) = held_and_exhausted(&streams, &sent);
    let rss = mesh.cp.rss_kib();
    let watches = open_rss.saturating_sub(mesh.rss_before);
    let grown = rss.saturating_sub(mesh.rss_before);
    eprintln!(
        "partial messages: {WATCHES} watches cost +{watches} KiB ({} KiB each); {held} partial messages of {} KiB held, {exhausted} watches ended RESOURCE_EXHAUSTED; RSS +{grown} KiB in all",
        watches / u64::from(WATCHES),
        WATCH_LIMIT / 1024
    );
    assert_eq!(held, SHARE / WATCH_LIMIT, "{sent:?}");
    assert_eq!(exhausted, ended, "{sent:?}");
    // The share and 64 KiB of bookkeeping per watch.
    assert!(
        grown < (SHARE as u64 + u64::from(WATCHES) * 64 * 1024) / 1024,
        "RSS grew by {grown} KiB"
    );
    mesh.assert_serving("with the caller's share of partial messages held")
        .await;
    mesh.assert_bounded("partial messages on 128 watches");
    // The share is given back when the calls end: a new watch of the same caller may send
    // a message as large as the method allows.
    drop(h2);
    mesh.assert_status_true("after the partial watches closed")
        .await;
    // (The old calls' request sides end a moment after their connection: a watch that
    // comes first is refused, and the next one tried.)
    let mut h2 = mesh.attacker().await;
    let report = framed(&padded_ack(0, WATCH_LIMIT - 64));
    let deadline = tokio::time::Instant::now() + ANSWER;
    for stream in (1..).step_by(2) {
        open_raw_watch(&mut h2, stream).await;
        let mut taken = h2
            .send_bodies(&[(stream, &report[..])], false, ANSWER, |_| true)
            .await;
        assert!(h2.ping(&mut taken, ANSWER).await);
        if !taken.ended.contains(&stream) {
            break;
        }
        assert_eq!(taken.status.get(&stream).map(String::as_str), Some("8"));
        assert!(
            tokio::time::Instant::now() < deadline,
            "the share was not given back: {taken:?}"
        );
    }
}

/// The same on the Workload API, where a caller is a local process known by its uid: 128
/// FetchX509SVID calls on one connection, each announcing a 64 KiB request and sending one
/// byte less. The caller's share (`max_message_bytes_per_peer`, here 4 MiB: 64 such
/// messages) is held; the other calls end RESOURCE_EXHAUSTED, and honest callers (other
/// uids, or this one within its share) are served during and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_messages_on_the_workload_api_are_held_to_the_callers_share() {
    const CALLS: u32 = 128;
    const SHARE: usize = 4 * 1024 * 1024;
    const LIMIT: usize = 64 * 1024;
    let mesh = Mesh::start(&format!("[limits]\nmax_message_bytes_per_peer = {SHARE}\n")).await;
    let mut h2 = mesh.workload_api_h2().await;
    let mut body = message_prefix(LIMIT as u32);
    body.resize(5 + LIMIT - 1, 0x0a);
    let streams: Vec<u32> = (0..CALLS).map(|i| 1 + 2 * i).collect();
    let sent = mesh
        .under_attack("partial messages on 128 Workload API calls", async {
            let block = grpc_request(
                FETCH_X509,
                field(0, ":authority", b"localhost"),
                &[("workload.spiffe.io", b"true")],
            );
            open_calls(&mut h2, &block, &streams).await;
            send_partial_messages(&mut h2, &streams, &body, SHARE / LIMIT).await
        })
        .await;
    let (held, ended, exhausted) = held_and_exhausted(&streams, &sent);
    let grown = mesh.cp.rss_kib().saturating_sub(mesh.rss_before);
    eprintln!(
        "Workload API partial messages: {held} of {CALLS} held, {exhausted} calls ended RESOURCE_EXHAUSTED; RSS +{grown} KiB"
    );
    assert_eq!(held, SHARE / LIMIT, "{sent:?}");
    assert_eq!(exhausted, ended, "{sent:?}");
    assert!(
        grown < (SHARE as u64 + u64::from(CALLS) * 64 * 1024) / 1024,
        "RSS grew by {grown} KiB"
    );
    mesh.assert_serving("with a local caller's share of partial messages held")
        .await;
    mesh.assert_bounded("partial messages on 128 Workload API calls");
}

// ---------------------------------------------------------------------------------------
// Idle connections, per-caller caps, HTTP/2 limits.

/// A connection that carries no call is closed after `limits.idle_timeout`, on the policy
/// API and on the Workload API; a watching sidecar's connection is never idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_watching_ones_kept() {
    let mut mesh = Mesh::start("[limits]\nidle_timeout = \"1s\"\n").await;
    let mut idle = mesh.attacker().await;
    let mut silent = within(
        "connect",
        ANSWER,
        tokio::net::UnixStream::connect(&mesh.socket),
    )
    .await
    .expect("connect");
    mesh.under_attack("idle connections", async {
        let closed = idle.read_until(DEADLINE, |_, f| f.kind == GOAWAY).await;
        assert!(
            closed || within("close", ANSWER, idle.next()).await.is_none(),
            "an idle policy API connection was never closed"
        );
        let mut sink = Vec::new();
        within(
            "a silent Workload API caller is closed",
            DEADLINE,
            silent.read_to_end(&mut sink),
        )
        .await
        .expect("read");
    })
    .await;
    // The honest sidecar's watch outlived several idle periods: a put still reaches it.
    // The admin's own connection may have sat idle after the checks and been closed (an
    // admin command opens a connection per run), so the checks connect afresh.
    mesh.checks.admin = within("the admin connects", DEADLINE, mesh.cp.admin()).await;
    mesh.assert_serving("after the idle connections were closed")
        .await;
    mesh.assert_bounded("idle connections");
}

/// One caller SPIFFE ID may hold `max_connections_per_peer` connections and
/// `max_streams_per_peer` calls; another ID is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_caller_caps_on_connections_and_streams() {
    let mesh =
        Mesh::start("[limits]\nmax_connections_per_peer = 3\nmax_streams_per_peer = 4\n").await;
    let attacker = mesh.attacker_client().await;
    let dir = identity_dir(&mesh.ca, mesh.ids.path(), ATTACKER);
    let held = mesh
        .under_attack("one caller at its caps", async {
            // Streams: four watches on one connection, the fifth refused.
            let mut watches = Vec::new();
            for _ in 0..4 {
                let mut c = attacker.clone();
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                let mut stream = within(
                    "watch",
                    ANSWER,
                    c.watch_policy(tokio_stream::wrappers::ReceiverStream::new(rx)),
                )
                .await
                .expect("watch within the share")
                .into_inner();
                within("snapshot", ANSWER, stream.message())
                    .await
                    .expect("snapshot");
                watches.push((tx, stream));
            }
            let mut c = attacker.clone();
            let (_tx, rx) = tokio::sync::mpsc::channel::<pb::WatchRequest>(1);
            let refused = within("the fifth watch", ANSWER, async {
                match c
                    .watch_policy(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                {
                    Err(status) => status.code(),
                    Ok(r) => r
                        .into_inner()
                        .message()
                        .await
                        .map(|_| Code::Ok)
                        .unwrap_or_else(|s| s.code()),
                }
            })
            .await;
            assert_eq!(refused, Code::ResourceExhausted);
            // Connections: two more (three with the first), the fourth refused.
            let second = within("second", DEADLINE, mesh.cp.client_with(&dir, DEADLINE)).await;
            let third = within("third", DEADLINE, mesh.cp.client_with(&dir, DEADLINE)).await;
            let store = identity_from_dir(&dir);
            let cp_id = warden_identity::SpiffeId::parse(&id(CP_PATH)).expect("id");
            let served = within("the fourth connection", DEADLINE, async {
                let fourth = warden_sidecar::control::client::connect(
                    &mesh.cp.url(),
                    &store,
                    &cp_id,
                    ANSWER,
                )
                .await;
                match fourth {
                    Err(_) => false,
                    Ok(channel) => PolicyServiceClient::new(channel)
                        .get_policy(pb::GetPolicyRequest {
                            spiffe_id: id(ATTACKER),
                        })
                        .await
                        .is_ok(),
                }
            })
            .await;
            assert!(!served, "a fourth connection of one caller was served");
            (watches, second, third)
        })
        .await;
    // Everyone else is still served while the caller holds its caps.
    mesh.assert_serving("with one caller at its caps").await;
    mesh.assert_bounded("per-caller caps");
    drop(held);
}

/// The HTTP/2 and message limits of both gRPC servers, each over real sockets: a 129th
/// concurrent stream on a connection is refused (REFUSED_STREAM); a header list over
/// 16 KiB is refused (one of 8 KiB is not); an admin's PutPolicy over 4 MiB, a GetPolicy
/// over 8 KiB and a Workload API request over 64 KiB end with RESOURCE_EXHAUSTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_and_message_limits_hold_on_both_grpc_servers() {
    let mesh = Mesh::start("").await;
    let authority = || field(0, ":authority", b"localhost");
    mesh.under_attack("requests at and over every limit", async {
        // 130 watches on one connection: 128 are served, two refused.
        let mut h2 = mesh.attacker().await;
        let block = grpc_request(WATCH, authority(), &[]);
        let streams: Vec<u32> = (0..130u32).map(|i| 1 + 2 * i).collect();
        open_calls(&mut h2, &block, &streams).await;
        let mut sent = Sent::default();
        let answered = h2
            .read_into(&mut sent, DEADLINE, |s| {
                streams
                    .iter()
                    .all(|id| s.http_status.contains_key(id) || s.reset.contains_key(id))
            })
            .await;
        assert!(answered, "{sent:?}");
        let refused: Vec<_> = sent
            .reset
            .iter()
            .filter(|(_, code)| **code == REFUSED_STREAM)
            .map(|(id, _)| *id)
            .collect();
        let served = sent
            .http_status
            .values()
            .filter(|s| s.as_str() == "200")
            .count();
        eprintln!(
            "130 streams on one connection: {served} served, {} refused",
            refused.len()
        );
        assert_eq!((served, refused.len()), (128, 2), "{sent:?}");
        drop(h2);

        // A header list over 16 KiB (HEADERS + CONTINUATION) is refused; 8 KiB is not.
        let mut h2 = mesh.attacker().await;
        for (stream, size, refused) in [(1u32, 8 * 1024, false), (3, 17 * 1024, true)] {
            let pad = vec![b'p'; size];
            let block = grpc_request(GET, authority(), &[("x-pad", &pad[..])]);
            let (first, rest) = block.split_at(block.len().min(16 * 1024));
            let mut out = if rest.is_empty() {
                frame(HEADERS, END_HEADERS, stream, first)
            } else {
                let mut out = frame(HEADERS, 0, stream, first);
                out.extend(frame(CONTINUATION, END_HEADERS, stream, rest));
                out
            };
            let request = pb::GetPolicyRequest {
                spiffe_id: id(ATTACKER),
            };
            out.extend(frame(
                DATA,
                END_STREAM,
                stream,
                &framed(&request.encode_to_vec()),
            ));
            within("send", ANSWER, h2.send(&out)).await.expect("send");
            let mut sent = Sent::default();
            assert!(
                h2.read_into(&mut sent, ANSWER, |s| s.ended.contains(&stream))
                    .await,
                "{sent:?}"
            );
            let status = sent.http_status.get(&stream).map(String::as_str);
            eprintln!(
                "a header list of {size} bytes: :status {status:?}, reset {:?}",
                sent.reset.get(&stream)
            );
            if refused {
                assert!(
                    status == Some("431") || sent.reset.contains_key(&stream),
                    "a {size}-byte header list was served: {sent:?}"
                );
                assert_ne!(status, Some("200"));
            } else {
                assert_eq!(status, Some("200"), "{sent:?}");
            }
        }
        drop(h2);

        // Messages one byte over their method's limit; the prefix alone decides.
        let over = |limit: usize| {
            let mut body = message_prefix(limit as u32 + 1);
            body.resize(5 + 1024, 0);
            body
        };
        let mut admin = h2_as(&mesh.ca, mesh.cp.addr, ADMIN_PATH).await;
        let mut attacker = mesh.attacker().await;
        let mut local = mesh.workload_api_h2().await;
        let cases: [(&str, &mut dyn Exchange, &str, usize); 3] = [
            ("PutPolicy as an admin", &mut admin, PUT, 4 * 1024 * 1024),
            ("GetPolicy", &mut attacker, GET, 8 * 1024),
            ("FetchX509SVID", &mut local, FETCH_X509, 64 * 1024),
        ];
        for (what, h2, path, limit) in cases {
            let block = grpc_request(path, authority(), &[("workload.spiffe.io", b"true")]);
            let mut out = frame(HEADERS, END_HEADERS, 1, &block);
            out.extend(frame(DATA, 0, 1, &over(limit)));
            let status = h2.status_of(out).await;
            eprintln!(
                "{what}: a message of {} bytes: grpc-status {status:?}",
                limit + 1
            );
            assert_eq!(status.as_deref(), Some("8"), "{what}");
        }
    })
    .await;
    mesh.assert_serving("after requests over every limit").await;
    mesh.assert_bounded("HTTP/2 and message limits");
}

// ---------------------------------------------------------------------------------------
// A sidecar's per-peer share.
/// One allowed peer may hold `limits.max_connections_per_peer` inbound connections of a
/// sidecar process; it tries to hold every slot (`max_connections`), and over its share its
/// connections are refused (counted as `limit`, audited with its ID) while another peer is
/// served, during and after; the sidecar's memory and log stay bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_cannot_hold_every_connection_slot_of_a_sidecar() {
    let mut mesh = Mesh::start("").await;
    let app = within("the echo app", ANSWER, EchoApp::start()).await;
    let victim = SidecarProcess::start_allowing(
        &mesh.ca,
        app.addr,
        &[id("/greedy"), id("/other")],
        "[limits]\nmax_connections = 8\nmax_connections_per_peer = 2\nworkers = 1\n",
        None,
        &[],
    );
    let other = mesh.ca.svid(&id("/other"));
    within("the sidecar serves", DEADLINE, victim.wait_served(&other)).await;
    // Its log: stderr and the audit file.
    let log_len = || {
        ["sidecar.log", "audit.jsonl"]
            .iter()
            .map(|f| std::fs::metadata(victim.dir.path().join(f)).map_or(0, |m| m.len()))
            .sum::<u64>()
    };
    let (rss_before, log_before) = (rss_kib(victim.pid()), log_len());
    let other_config = raw_client_config(Some((&other.chain, other.key_der())), TLS13);
    mesh.checks.peer_of = Some((victim.addr, other_config));
    let greedy = mesh.ca.svid(&id("/greedy"));
    let config = raw_client_config(Some((&greedy.chain, greedy.key_der())), TLS13);
    let mut held = mesh
        .under_attack("one peer trying to hold every slot of a sidecar", async {
            let mut held = Vec::new();
            let mut refused = 0;
            for i in 0..8u8 {
                match within(
                    "a greedy connection",
                    DEADLINE,
                    open_echo(victim.addr, config.clone(), i),
                )
                .await
                {
                    Ok(tls) => held.push(tls),
                    Err(_) => refused += 1,
                }
            }
            eprintln!(
                "greedy peer: {} connections held, {refused} refused",
                held.len()
            );
            assert_eq!(held.len(), 2, "the greedy peer holds exactly its share");
            eventually("the refusals are counted", DEADLINE, || {
                let admin = victim.admin;
                async move {
                    let text = http_get(admin, "/metrics").await;
                    let n = metric(
                        &text,
                        "warden_connections_closed_total",
                        &[("listener", "http"), ("reason", "limit")],
                    );
                    if n == refused {
                        Ok(())
                    } else {
                        Err(format!("{n} counted of {refused}"))
                    }
                }
            })
            .await;
            held
        })
        .await;
    let greedy_id = id("/greedy");
    let audit = victim.dir.path().join("audit.jsonl");
    eventually("each refusal is audited with the peer", DEADLINE, || {
        let audited = audit_records(&audit)
            .iter()
            .filter(|r| {
                r["event"] == "refused"
                    && r["peer_id"] == greedy_id.as_str()
                    && r["detail"] == "limits.max_connections_per_peer reached"
            })
            .count();
        std::future::ready(if audited == 6 {
            Ok(())
        } else {
            Err(format!("{audited} audited"))
        })
    })
    .await;
    // The greedy peer is served again once it lets a connection go.
    drop(held.pop());
    let addr = victim.addr;
    eventually("the slot comes back", DEADLINE, || {
        let config = config.clone();
        async move {
            match tls_exchange(addr, config, b"again").await {
                Ok(v) if v == b"again" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    mesh.assert_serving("after one peer held its share").await;
    mesh.assert_bounded("one peer holding a sidecar's slots (control plane)");
    let (rss, log) = (rss_kib(victim.pid()), log_len());
    eprintln!(
        "one peer holding its share: sidecar RSS {rss_before} -> {rss} KiB (+{} KiB); log +{} bytes",
        rss.saturating_sub(rss_before),
        log.saturating_sub(log_before)
    );
    assert!(rss > 0, "the sidecar is not running");
    assert!(
        rss.saturating_sub(rss_before) < SIDECAR_MEMORY_BOUND_KIB,
        "the sidecar's RSS grew from {rss_before} to {rss} KiB"
    );
    assert!(
        log.saturating_sub(log_before) < SIDECAR_LOG_BOUND,
        "the sidecar's log and audit grew by {} bytes",
        log.saturating_sub(log_before)
    );
    drop(held);
}
