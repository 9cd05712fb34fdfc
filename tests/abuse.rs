//! Abuse by a valid workload. Zero trust assumes any workload may be compromised: it then
//! holds a valid, non-admin SVID and passes mTLS to the control plane, and any local process
//! can reach a Workload API socket. Each attack runs against a real `warden control-plane`
//! process (or the Workload API server) over real sockets; during and after it:
//! - an admin's put and get answer within 5 s,
//! - the put reaches an honest, watching sidecar within 2 s,
//! - an honest Workload API caller gets its SVID within 5 s,
//! - the control plane's memory stays bounded, and its log grows by a bounded amount.
//!
//! Figures (printed by each test) are in RELIABILITY.md, "Abuse by a valid workload".

mod common;
#[path = "support/h2raw.rs"]
mod h2raw;
#[path = "support/harden.rs"]
mod harden;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::control::*;
use common::pki::Ca;
use common::workload_api::{TestCa, my_uid, raw_client, registration, serve, with_header};
use common::*;
use h2raw::*;
use harden::{TLS13, audit_records, wait_metric};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::Code;
use warden_proto::control::v1 as pb;
use warden_proto::control::v1::policy_service_client::PolicyServiceClient;
use warden_proto::workload::X509svidRequest;

const ANSWER: Duration = Duration::from_secs(5);
const PUSH: Duration = Duration::from_secs(2);
const DEADLINE: Duration = Duration::from_secs(30);
/// What an attack may add to the control plane's resident memory.
const MEMORY_BOUND_KIB: u64 = 64 * 1024;
/// What an attack may add to the control plane's log (info level).
const LOG_BOUND: u64 = 256 * 1024;

const WATCH: &str = "/warden.control.v1.PolicyService/WatchPolicy";
const PUT: &str = "/warden.control.v1.PolicyService/PutPolicy";
const ATTACKER: &str = "/ns/rag/sa/compromised";

/// A control plane, its admin, and an honest sidecar (vectordb) watching its policy.
struct Mesh {
    ca: Ca,
    cp: CpProcess,
    admin: PolicyServiceClient<tonic::transport::Channel>,
    honest: warden_sidecar::Sidecar,
    ids: tempfile::TempDir,
    round: u64,
    rss_before: u64,
    log_before: u64,
    _app: EchoApp,
    _cache: tempfile::TempDir,
}

impl Mesh {
    async fn start(limits: &str) -> Self {
        let ca = Ca::new(TD);
        let cp = CpProcess::start_with(&ca, limits, "info");
        let app = EchoApp::start().await;
        let cache = tempfile::tempdir().expect("tmp");
        let honest = sidecar(
            &watched_inbound_config(app.addr, &cp.url(), &cache.path().join("policy.json")),
            ca.identity(&id("/vectordb"), &[]),
        )
        .await;
        // Connected last, so that its first put comes well within even a short idle_timeout.
        let admin = cp.admin().await;
        let mut mesh = Self {
            rss_before: 0,
            log_before: 0,
            ca,
            cp,
            admin,
            honest,
            ids: tempfile::tempdir().expect("tmp"),
            round: 0,
            _app: app,
            _cache: cache,
        };
        mesh.assert_serving("before the attack").await;
        mesh.rss_before = mesh.cp.rss_kib();
        mesh.log_before = mesh.log_len();
        mesh
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(self.cp.dir.path().join("cp.log")).map_or(0, |m| m.len())
    }

    /// An admin's put and get answer within 5 s, and the put reaches the honest sidecar
    /// within 2 s.
    async fn assert_serving(&mut self, when: &str) {
        self.round += 1;
        let peer = format!("/app-{}", self.round);
        let put = tokio::time::timeout(
            ANSWER,
            put(&mut self.admin, inbound_policy("/vectordb", &[&peer]), None),
        )
        .await
        .unwrap_or_else(|_| panic!("{when}: the admin's put did not answer within 5 s"))
        .unwrap_or_else(|e| panic!("{when}: the admin's put failed: {e}"));
        let got = tokio::time::timeout(
            ANSWER,
            self.admin.get_policy(pb::GetPolicyRequest {
                spiffe_id: id("/vectordb"),
            }),
        )
        .await
        .unwrap_or_else(|_| panic!("{when}: the admin's get did not answer within 5 s"))
        .unwrap_or_else(|e| panic!("{when}: the admin's get failed: {e}"));
        assert_eq!(
            got.into_inner().policy.map(|p| p.version),
            Some(put),
            "{when}"
        );
        let honest = &self.honest;
        wait_until(
            &format!("{when}: the put reaches the honest sidecar within 2 s"),
            PUSH,
            || honest.policy().version() >= put,
        )
        .await;
    }

    /// Memory and log growth since the start, checked against the bounds and printed.
    fn assert_bounded(&self, attack: &str) {
        let rss = self.cp.rss_kib();
        let log = self.log_len();
        eprintln!(
            "{attack}: control-plane RSS {} -> {} KiB (+{} KiB); log +{} bytes",
            self.rss_before,
            rss,
            rss.saturating_sub(self.rss_before),
            log.saturating_sub(self.log_before)
        );
        assert!(
            rss.saturating_sub(self.rss_before) < MEMORY_BOUND_KIB,
            "{attack}: RSS grew from {} to {rss} KiB",
            self.rss_before
        );
        assert!(
            log.saturating_sub(self.log_before) < LOG_BOUND,
            "{attack}: the log grew by {} bytes",
            log - self.log_before
        );
    }

    /// A raw HTTP/2 connection to the policy API with a valid, non-admin SVID.
    async fn attacker(&self) -> RawH2<TlsStream<TcpStream>> {
        attacker_h2(&self.ca, self.cp.addr).await
    }

    /// A tonic client of the policy API with a valid, non-admin SVID.
    async fn attacker_client(&self, path: &str) -> PolicyServiceClient<tonic::transport::Channel> {
        let dir = identity_dir(&self.ca, self.ids.path(), path);
        self.cp.client_with(&dir, DEADLINE).await
    }
}

async fn attacker_h2(ca: &Ca, addr: SocketAddr) -> RawH2<TlsStream<TcpStream>> {
    let svid = ca.svid(&id(ATTACKER));
    let mut config = (*raw_client_config(Some((&svid.chain, svid.key_der())), TLS13)).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("cp.invalid").expect("name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("an attacker with a valid SVID completes the handshake");
    RawH2::start(tls).await.expect("preface")
}

/// `count` streams, each HEADERS with `content-length: 0` and then one DATA byte: the
/// server must reset each stream itself ("MadeYouReset"). Returns the resets seen and the
/// error code of the GOAWAY that ended the connection, if one did.
async fn provoke_resets<S>(
    h2: &mut RawH2<S>,
    path: &str,
    extra: &[(&str, &[u8])],
    count: u32,
) -> (u32, Option<u32>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut fields = vec![("content-length", &b"0"[..])];
    fields.extend_from_slice(extra);
    let block = grpc_request(path, field(0, ":authority", b"localhost"), &fields);
    let mut sent = 0;
    'send: for batch in 0..count.div_ceil(100) {
        let mut out = Vec::new();
        for i in batch * 100..((batch + 1) * 100).min(count) {
            let stream = 1 + 2 * i;
            out.extend(frame(HEADERS, END_HEADERS, stream, &block));
            out.extend(frame(DATA, END_STREAM, stream, &[0]));
        }
        // A server that has sent GOAWAY and closed makes the writes fail: stop there.
        match tokio::time::timeout(ANSWER, h2.send(&out)).await {
            Ok(Ok(())) => sent += 100,
            _ => break 'send,
        }
    }
    let mut resets = 0;
    let mut goaway = None;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, h2.next()).await {
            Ok(Some(f)) if f.kind == RST_STREAM => resets += 1,
            Ok(Some(f)) if f.kind == GOAWAY && f.payload.len() >= 8 => {
                goaway = Some(u32::from_be_bytes([
                    f.payload[4],
                    f.payload[5],
                    f.payload[6],
                    f.payload[7],
                ]));
                break;
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    eprintln!("provoked resets: {sent} streams sent, {resets} RST_STREAM read, GOAWAY {goaway:?}");
    (resets, goaway)
}

/// HTTP/2 ENHANCE_YOUR_CALM: h2's answer to too many streams it had to reset itself.
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// The connection was ended with ENHANCE_YOUR_CALM after about h2's 1,024 local resets.
fn assert_cut_off(resets: u32, goaway: Option<u32>) {
    assert_eq!(
        goaway,
        Some(ENHANCE_YOUR_CALM),
        "the connection was not ended for its {resets}+ provoked resets"
    );
    assert!(
        resets <= 1100,
        "{resets} streams reset before the connection was ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_resets_provoked_by_a_client_end_its_connection() {
    let mut mesh = Mesh::start("").await;
    let mut h2 = mesh.attacker().await;
    let (resets, goaway) = provoke_resets(&mut h2, WATCH, &[], 5000).await;
    assert_cut_off(resets, goaway);
    mesh.assert_serving("after the reset flood").await;
    mesh.assert_bounded("provoked resets");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_resets_provoked_on_the_workload_api_end_the_connection() {
    let t = TestCa::new();
    let sock = t.socket("attacked");
    let _api = serve(
        &t.ca,
        vec![registration(&sock, "/ns/rag/sa/retriever", Some(my_uid()))],
        Duration::from_secs(3600),
    )
    .await;
    let socket = tokio::net::UnixStream::connect(&sock)
        .await
        .expect("connect");
    let mut h2 = RawH2::start(socket).await.expect("preface");
    let (resets, goaway) = provoke_resets(
        &mut h2,
        "/SpiffeWorkloadAPI/FetchX509SVID",
        &[("workload.spiffe.io", b"true")],
        5000,
    )
    .await;
    assert_cut_off(resets, goaway);
    // An honest caller gets its SVID within 5 s.
    let mut honest = raw_client(&sock).await;
    let mut stream = tokio::time::timeout(
        ANSWER,
        honest.fetch_x509svid(with_header(X509svidRequest {})),
    )
    .await
    .expect("answer within 5 s")
    .expect("call")
    .into_inner();
    let first = tokio::time::timeout(ANSWER, stream.message())
        .await
        .expect("SVID within 5 s")
        .expect("stream")
        .expect("message");
    assert_eq!(first.svids[0].spiffe_id, id("/ns/rag/sa/retriever"));
}

/// 96 PutPolicy calls from a non-admin, each announcing a message one byte short of 4 MiB:
/// refused (PERMISSION_DENIED) from the method and the caller alone, before any of the
/// body is read or buffered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_writes_are_refused_before_their_bodies_are_buffered() {
    let mut mesh = Mesh::start("").await;
    let mut h2 = mesh.attacker().await;
    let block = grpc_request(PUT, field(0, ":authority", b"localhost"), &[]);
    let mut out = Vec::new();
    let mut body = message_prefix(4 * 1024 * 1024 - 1);
    body.extend(std::iter::repeat_n(0x55, 512));
    for i in 0..96u32 {
        let stream = 1 + 2 * i;
        out.extend(frame(HEADERS, END_HEADERS, stream, &block));
        out.extend(frame(DATA, 0, stream, &body));
    }
    h2.send(&out).await.expect("send");
    let mut denied = std::collections::HashSet::new();
    let all = h2
        .read_until(DEADLINE, |h2, f| {
            if f.kind == HEADERS {
                let fields = h2.decode(&f);
                if header(&fields, "grpc-status") == Some("7") {
                    denied.insert(f.stream);
                }
            }
            denied.len() == 96
        })
        .await;
    assert!(all, "{} of 96 writes refused", denied.len());
    mesh.assert_serving("after 96 unauthorized 4 MiB writes")
        .await;
    mesh.assert_bounded("unauthorized large writes");
    let listed = mesh
        .admin
        .list_policies(pb::ListPoliciesRequest {})
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
}

fn hello(version: String) -> pb::WatchRequest {
    pb::WatchRequest {
        msg: Some(pb::watch_request::Msg::Hello(pb::Hello {
            sidecar_version: version,
        })),
    }
}

/// 64 watches each opening with a 4 MiB hello end with RESOURCE_EXHAUSTED; a hello under the
/// limit is kept at 64 bytes; `warden policy status` answers and stays small.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_hellos_end_their_watch_and_status_stays_small() {
    let mut mesh = Mesh::start("").await;
    let attacker = mesh.attacker_client(ATTACKER).await;
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
    while let Some(code) = calls.join_next().await {
        assert_eq!(code.expect("task"), Code::ResourceExhausted);
    }
    // A hello just under the message limit is accepted, and kept short.
    let mut client = attacker.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(hello("y".repeat(7000))).await.expect("send");
    let mut watch = client
        .watch_policy(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("watch")
        .into_inner();
    watch.message().await.expect("snapshot");
    let mut admin = mesh.admin.clone();
    let mut kept = None;
    let deadline = tokio::time::Instant::now() + ANSWER;
    while kept.is_none() && tokio::time::Instant::now() < deadline {
        let status = tokio::time::timeout(ANSWER, admin.status(pb::StatusRequest {}))
            .await
            .expect("status answers within 5 s")
            .expect("status")
            .into_inner();
        kept = status
            .sidecars
            .iter()
            .find(|s| s.spiffe_id == id(ATTACKER) && !s.sidecar_version.is_empty())
            .map(|s| s.sidecar_version.len());
    }
    assert_eq!(
        kept,
        Some(64),
        "sidecar_version is bounded before it is kept"
    );
    drop(tx);
    mesh.assert_serving("after 64 oversized hellos").await;
    mesh.assert_bounded("oversized hellos");
}

/// An oversized message on an open watch ends it with RESOURCE_EXHAUSTED, and the session
/// leaves `warden policy status` with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_on_an_open_watch_ends_it_with_a_status() {
    let mut mesh = Mesh::start("").await;
    let mut attacker = mesh.attacker_client(ATTACKER).await;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tx.send(hello("1.0".into())).await.expect("send");
    let mut watch = attacker
        .watch_policy(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("watch")
        .into_inner();
    watch.message().await.expect("first snapshot");
    let listed =
        |status: &pb::StatusResponse| status.sidecars.iter().any(|s| s.spiffe_id == id(ATTACKER));
    let mut admin = mesh.admin.clone();
    let status = admin.status(pb::StatusRequest {}).await.expect("status");
    assert!(listed(status.get_ref()), "the open watch is listed");

    tx.send(hello("z".repeat(1024 * 1024))).await.expect("send");
    let ended = tokio::time::timeout(ANSWER, async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                other => break other,
            }
        }
    })
    .await
    .expect("the watch ends within 5 s");
    assert_eq!(
        ended.expect_err("ended with a status").code(),
        Code::ResourceExhausted
    );
    let deadline = tokio::time::Instant::now() + ANSWER;
    loop {
        let status = admin.status(pb::StatusRequest {}).await.expect("status");
        if !listed(status.get_ref()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ended watch is still listed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    mesh.assert_serving("after an oversized message").await;
    mesh.assert_bounded("oversized message on a watch");
}

/// A connection that carries no call is closed after `limits.idle_timeout`, on the policy
/// API and on the Workload API; a watching sidecar's connection is never idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_watching_ones_kept() {
    let mut mesh = Mesh::start("[limits]\nidle_timeout = \"1s\"\n").await;
    let mut idle = mesh.attacker().await;
    let closed = idle.read_until(DEADLINE, |_, f| f.kind == GOAWAY).await;
    assert!(
        closed || idle.next().await.is_none(),
        "an idle policy API connection was never closed"
    );
    // The honest sidecar's watch outlived several idle periods: a put still reaches it.
    // The admin's own connection sat idle too and may have been closed (an admin command
    // opens a connection per run), so the check connects afresh.
    mesh.admin = mesh.cp.admin().await;
    mesh.assert_serving("after the idle connection was closed")
        .await;

    let t = TestCa::new();
    let sock = t.socket("idle");
    let _api = common::workload_api::serve_with_idle_timeout(
        &t.ca,
        vec![registration(&sock, "/ns/rag/sa/retriever", Some(my_uid()))],
        Duration::from_secs(3600),
        Duration::from_secs(1),
    )
    .await;
    let mut silent = tokio::net::UnixStream::connect(&sock)
        .await
        .expect("connect");
    let mut sink = Vec::new();
    tokio::time::timeout(DEADLINE, silent.read_to_end(&mut sink))
        .await
        .expect("a silent Workload API caller is closed")
        .expect("read");
    let _ = silent.shutdown().await;
}

/// One caller SPIFFE ID may hold `max_connections_per_peer` connections and
/// `max_streams_per_peer` calls; another ID is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_caller_caps_on_connections_and_streams() {
    let mut mesh =
        Mesh::start("[limits]\nmax_connections_per_peer = 3\nmax_streams_per_peer = 4\n").await;
    // Streams: four watches on one connection, the fifth refused.
    let attacker = mesh.attacker_client(ATTACKER).await;
    let mut watches = Vec::new();
    for _ in 0..4 {
        let mut c = attacker.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut stream = c
            .watch_policy(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("watch within the share")
            .into_inner();
        stream.message().await.expect("snapshot");
        watches.push((tx, stream));
    }
    let mut c = attacker.clone();
    let (_tx, rx) = tokio::sync::mpsc::channel::<pb::WatchRequest>(1);
    let refused = match c
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
    };
    assert_eq!(refused, Code::ResourceExhausted);
    // Connections: two more (three with the first), the fourth refused.
    let dir = identity_dir(&mesh.ca, mesh.ids.path(), ATTACKER);
    let _second = mesh.cp.client_with(&dir, DEADLINE).await;
    let _third = mesh.cp.client_with(&dir, DEADLINE).await;
    let store = identity_from_dir(&dir);
    let cp_id = warden_identity::SpiffeId::parse(&id(CP_PATH)).expect("id");
    let fourth =
        warden_sidecar::control::client::connect(&mesh.cp.url(), &store, &cp_id, ANSWER).await;
    let served = match fourth {
        Err(_) => false,
        Ok(channel) => PolicyServiceClient::new(channel)
            .get_policy(pb::GetPolicyRequest {
                spiffe_id: id(ATTACKER),
            })
            .await
            .is_ok(),
    };
    assert!(!served, "a fourth connection of one caller was served");
    // Everyone else is unaffected.
    mesh.assert_serving("with one caller at its caps").await;
    mesh.assert_bounded("per-caller caps");
    drop(watches);
}

/// One allowed peer may hold `limits.max_connections_per_peer` inbound connections of a
/// sidecar; over it, its connections are refused (counted as `limit`, audited with its
/// ID), while another peer is still served.
#[tokio::test]
async fn one_peer_cannot_hold_every_connection_slot_of_a_sidecar() {
    let ca = Ca::new(TD);
    let app = EchoApp::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let audit = dir.path().join("audit.jsonl");
    let toml = format!(
        "{}\n[limits]\nmax_connections = 8\nmax_connections_per_peer = 2\nworkers = 1\n[audit]\npath = \"{}\"\n",
        inbound_config(app.addr, &[id("/greedy"), id("/other")]),
        audit.display()
    );
    let s = sidecar(&toml, ca.identity(&id("/vectordb"), &[])).await;
    let addr = s.inbound_addr("http").expect("inbound");
    let greedy = ca.svid(&id("/greedy"));
    let config = raw_client_config(Some((&greedy.chain, greedy.key_der())), TLS13);
    let mut held = Vec::new();
    for i in 0..2 {
        held.push(
            open_echo(addr, config.clone(), i)
                .await
                .expect("within the share"),
        );
    }
    let third = tls_exchange(addr, config.clone(), b"third").await;
    assert!(third.is_err(), "a third connection of one peer was served");
    let want = [("listener", "http"), ("reason", "limit")];
    wait_metric(&s, "warden_connections_closed_total", &want, 1).await;
    let greedy_id = id("/greedy");
    wait_until("the refusal is audited with the peer", DEADLINE, || {
        audit_records(&audit).iter().any(|r| {
            r["event"] == "refused"
                && r["peer_id"] == greedy_id.as_str()
                && r["detail"] == "limits.max_connections_per_peer reached"
        })
    })
    .await;
    // Another peer is served, and so is the greedy one once it lets a connection go.
    let other = ca.svid(&id("/other"));
    let other_config = raw_client_config(Some((&other.chain, other.key_der())), TLS13);
    assert_eq!(
        tls_exchange(addr, other_config, b"other")
            .await
            .expect("other peer served"),
        b"other"
    );
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if tls_exchange(addr, config.clone(), b"again")
            .await
            .as_deref()
            == Ok(b"again")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An mTLS connection through which one byte has been echoed, held open.
async fn open_echo(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    i: u8,
) -> Result<TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("peer.invalid").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(&[i]).await.map_err(|e| e.to_string())?;
    let mut b = [0u8];
    tokio::time::timeout(ANSWER, tls.read_exact(&mut b))
        .await
        .map_err(|_| "no echo".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(tls)
}
