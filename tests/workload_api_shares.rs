//! The Workload API's shares per caller uid: one local process cannot hold more than
//! `limits.max_connections_per_peer` connections, `limits.max_streams_per_peer` calls in
//! flight or `limits.max_message_bytes_per_peer` of partial messages on a Workload API
//! socket of the control plane; another uid, or the same uid on
//! another pod's socket, is still served while it holds them all, and what it gives back is
//! served again. Attacks go over real Unix sockets to a `warden control-plane` process.

// The shared support of the abuse tests; this file uses part of it.
#[allow(dead_code)]
#[path = "support/abuse_mesh.rs"]
mod abuse_mesh;
mod common;
#[path = "support/h2raw.rs"]
mod h2raw;
#[path = "support/harden.rs"]
mod harden;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use abuse_mesh::*;
use common::workload_api::{endpoint, my_uid, with_header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tonic::Code;
use warden_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use warden_proto::workload::{JwtsvidRequest, X509svidRequest};

/// A uid no registration names and no test runs as.
const OTHER_UID: u32 = 65534;

fn refusals(metrics: &str, limit: &str) -> u64 {
    let series = format!("warden_control_workload_api_refusals_total{{limit=\"{limit}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Whether the server serves `conn`: it answers the HTTP/2 preface with its SETTINGS frame.
/// A connection refused at accept is closed instead (EOF or reset). The connection is handed
/// back, still open, when served.
async fn served(mut conn: UnixStream) -> Option<UnixStream> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
    const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
    if conn.write_all(PREFACE).await.is_err() || conn.write_all(&SETTINGS).await.is_err() {
        return None;
    }
    let mut head = [0u8; 9];
    let read = within(
        "the Workload API serves or closes a connection",
        ANSWER,
        conn.read_exact(&mut head),
    )
    .await;
    (read.is_ok() && head[3] == 4).then_some(conn)
}

/// `n` connections of this process's uid, each served; an error if any is not.
async fn hold(socket: &Path, n: usize) -> Result<Vec<UnixStream>, String> {
    let mut held = Vec::new();
    for i in 0..n {
        let conn = UnixStream::connect(socket)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        held.push(
            served(conn)
                .await
                .ok_or_else(|| format!("connection {} of {n} was not served", i + 1))?,
        );
    }
    Ok(held)
}

/// A connection to `socket` whose kernel-vouched uid is `uid` (root only). A thread changes
/// its own credentials with the raw syscall (libc's wrapper would change every thread's),
/// connects, and ends; the socket keeps the uid it connected with.
fn connect_as(uid: u32, socket: &Path) -> std::io::Result<UnixStream> {
    let socket = socket.to_owned();
    let std_conn = std::thread::spawn(move || {
        // SAFETY: setresuid on the calling thread only; the thread ends right after.
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        std::os::unix::net::UnixStream::connect(&socket)
    })
    .join()
    .expect("connecting thread")?;
    std_conn.set_nonblocking(true)?;
    UnixStream::from_std(std_conn)
}

/// A Mesh whose control plane serves a second Workload API socket, as another pod's would
/// be, with `limit` (one `[limits]` line) applied; the second socket's path and its directory.
async fn mesh_with_second_socket(limit: &str) -> (Mesh, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tmp");
    let elsewhere = dir.path().join("elsewhere.sock");
    let mesh = Mesh::start(&format!(
        "[limits]\n{limit}\n\n[[workload_api]]\nsocket = \"{}\"\nspiffe_id = \"{}\"\n",
        elsewhere.display(),
        common::id("/ns/rag/sa/elsewhere")
    ))
    .await;
    (mesh, elsewhere, dir)
}

#[tokio::test]
async fn a_uid_holds_at_most_its_share_of_connections_on_a_socket_and_others_are_still_served() {
    const SHARE: usize = 8;
    let (mesh, elsewhere, _dir) =
        mesh_with_second_socket(&format!("max_connections_per_peer = {SHARE}")).await;
    // The whole share, once the Mesh's own checks have given their connections back.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut answered = loop {
        match hold(&mesh.socket, SHARE).await {
            Ok(held) => break held,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the uid never held its whole share: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // One over the share is closed at accept, refused, audited and counted.
    let over = UnixStream::connect(&mesh.socket).await.expect("connect");
    assert!(
        served(over).await.is_none(),
        "a connection over the uid's share was served"
    );
    let caller = format!("uid {}", my_uid());
    eventually("the refusal is audited", DEADLINE, || {
        let log = mesh.cp.log();
        let audited = log.lines().any(|l| {
            l.contains("api_connection")
                && l.contains("limits.max_connections_per_peer")
                && l.contains(&caller)
        });
        async move { audited.then_some(()).ok_or_else(|| "not yet".to_owned()) }
    })
    .await;
    let metrics = http_get(mesh.cp.admin_addr, "/metrics").await;
    assert!(
        refusals(&metrics, "limits.max_connections_per_peer") >= 1,
        "the refusal is not counted: {metrics}"
    );
    // The same uid on another socket (another pod's) has a share of its own there.
    let conn = UnixStream::connect(&elsewhere).await.expect("connect");
    assert!(
        served(conn).await.is_some(),
        "the uid was refused on another socket while it held its share on the first"
    );
    // Another uid has a share of its own.
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        let dir = mesh.socket.parent().expect("socket dir");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let other = connect_as(OTHER_UID, &mesh.socket).expect("connect as another uid");
        assert!(
            served(other).await.is_some(),
            "another uid was refused while uid {} held its share",
            my_uid()
        );
    } else {
        // `.ci/run` runs as root for the namespace tests and says so with this variable.
        assert!(
            std::env::var("WARDEN_REQUIRE_NETNS").as_deref() != Ok("1"),
            "WARDEN_REQUIRE_NETNS=1 but not root: cannot connect as uid {OTHER_UID}"
        );
        println!("skipping the other-uid half: connecting as uid {OTHER_UID} needs root");
    }
    // What is given back is served again: an SVID for the uid once one connection closes.
    drop(answered.pop());
    eventually("the uid is served again", DEADLINE, || {
        let socket = mesh.socket.clone();
        async move { fetch_svid(&socket).await.map(|_| ()) }
    })
    .await;
}

#[tokio::test]
async fn a_uid_holds_at_most_its_share_of_calls_in_flight_on_a_socket() {
    const SHARE: usize = 4;
    let mesh = Mesh::start(&format!("[limits]\nmax_streams_per_peer = {SHARE}\n")).await;
    let channel = tonic::transport::Endpoint::from_shared(endpoint(&mesh.socket))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = SpiffeWorkloadApiClient::new(channel);
    // SHARE open FetchX509SVID streams, each with its first SVID in hand.
    let mut open = Vec::new();
    let mut refused_early = 0;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while open.len() < SHARE {
        match client.fetch_x509svid(with_header(X509svidRequest {})).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                let first = within("the first SVID", ANSWER, stream.message()).await;
                assert!(
                    matches!(&first, Ok(Some(m)) if !m.svids.is_empty()),
                    "no SVID on an admitted stream: {first:?}"
                );
                open.push(stream);
            }
            // The Mesh's own check may not have given its slot back yet.
            Err(status) if status.code() == Code::ResourceExhausted => {
                refused_early += 1;
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the share never became free"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("FetchX509SVID: {status}"),
        }
    }
    let before = refusals(
        &http_get(mesh.cp.admin_addr, "/metrics").await,
        "limits.max_streams_per_peer",
    );
    // One more call is refused before it is served, audited and counted.
    let over = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect_err("a call over the uid's share was served");
    assert_eq!(over.code(), Code::ResourceExhausted, "{over}");
    let metrics = http_get(mesh.cp.admin_addr, "/metrics").await;
    assert_eq!(
        refusals(&metrics, "limits.max_streams_per_peer"),
        before + 1,
        "the refused call is not counted once: {metrics}"
    );
    eventually("the refused call is audited", DEADLINE, || {
        let audited = mesh
            .cp
            .log()
            .lines()
            .any(|l| l.contains("limits.max_streams_per_peer") && l.contains("FetchX509SVID"));
        async move { audited.then_some(()).ok_or_else(|| "not yet".to_owned()) }
    })
    .await;
    // The open streams were not disturbed, and a closed one frees its slot.
    drop(open.pop());
    eventually("a call is admitted once a stream closes", DEADLINE, || {
        let mut client = client.clone();
        async move {
            client
                .fetch_x509svid(with_header(X509svidRequest {}))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
    println!("calls refused while the Mesh's own check gave its slot back: {refused_early}");
}

/// A uid that holds its whole share of partial request messages on one socket still has
/// its share on another: the FetchJWTSVID request it sends there (a few bytes, which the
/// first socket would refuse) is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uids_share_of_partial_messages_on_one_socket_leaves_its_share_on_another() {
    const SHARE: usize = 4 * 1024 * 1024;
    const LIMIT: usize = 64 * 1024;
    const CALLS: u32 = 72;
    let (mesh, elsewhere, _dir) =
        mesh_with_second_socket(&format!("max_message_bytes_per_peer = {SHARE}")).await;
    // The whole share on the first socket: 64 calls each holding a 64 KiB message but one
    // byte; the calls past it end RESOURCE_EXHAUSTED.
    let mut h2 = mesh.workload_api_h2().await;
    let mut body = h2raw::message_prefix(LIMIT as u32);
    body.resize(5 + LIMIT - 1, 0x0a);
    let streams: Vec<u32> = (0..CALLS).map(|i| 1 + 2 * i).collect();
    let block = h2raw::grpc_request(
        FETCH_X509,
        h2raw::field(0, ":authority", b"localhost"),
        &[("workload.spiffe.io", b"true")],
    );
    open_calls(&mut h2, &block, &streams).await;
    let sent = send_partial_messages(&mut h2, &streams, &body, SHARE / LIMIT).await;
    let (held, ended, exhausted) = held_and_exhausted(&streams, &sent);
    assert_eq!(held, SHARE / LIMIT, "{sent:?}");
    assert_eq!(exhausted, ended, "{sent:?}");
    // A request of a few bytes on the other socket, while the first is held.
    let fetch = |socket: std::path::PathBuf| async move {
        let channel = tonic::transport::Endpoint::from_shared(endpoint(&socket))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        SpiffeWorkloadApiClient::new(channel)
            .fetch_jwtsvid(with_header(JwtsvidRequest {
                audience: vec!["spiffe://example.org/ns/rag/sa/retriever".to_owned()],
                spiffe_id: String::new(),
            }))
            .await
    };
    let there = within("FetchJWTSVID on the other socket", ANSWER, fetch(elsewhere)).await;
    assert!(
        there.is_ok_and(|r| !r.into_inner().svids.is_empty()),
        "the uid's full share on one socket refused its request on another"
    );
    // The first socket's share is still held: the same request there is refused.
    let here = within(
        "FetchJWTSVID on the held socket",
        ANSWER,
        fetch(mesh.socket.clone()),
    )
    .await;
    assert_eq!(
        here.map(|_| ()).map_err(|s| s.code()),
        Err(Code::ResourceExhausted),
        "a request over the held share was served"
    );
    drop(h2);
}
