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

mod common;
#[path = "support/h2raw.rs"]
mod h2raw;
#[path = "support/harden.rs"]
mod harden;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::control::*;
use common::pki::Ca;
use common::workload_api::{endpoint, my_uid, with_header};
use common::*;
use h2raw::*;
use harden::{SidecarProcess, TLS13, audit_records, metric};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::Code;
use tonic::transport::Channel;
use warden_proto::control::v1 as pb;
use warden_proto::control::v1::policy_service_client::PolicyServiceClient;
use warden_proto::workload::X509svidRequest;
use warden_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

const ANSWER: Duration = Duration::from_secs(5);
const PUSH: Duration = Duration::from_secs(2);
const DEADLINE: Duration = Duration::from_secs(30);
/// What an attack may add to the control plane's resident memory.
const MEMORY_BOUND_KIB: u64 = 64 * 1024;
/// What an attack may add to the control plane's log (info level, as in production).
const LOG_BOUND: u64 = 256 * 1024;
/// What one peer holding its share may add to a sidecar's resident memory and log.
const SIDECAR_MEMORY_BOUND_KIB: u64 = 16 * 1024;
const SIDECAR_LOG_BOUND: u64 = 64 * 1024;
/// The honest traffic's pace while an attack runs: one round of checks, then the next
/// after this much (a pace, not a wait for anything).
const PACE: Duration = Duration::from_millis(200);

const WATCH: &str = "/warden.control.v1.PolicyService/WatchPolicy";
const PUT: &str = "/warden.control.v1.PolicyService/PutPolicy";
const GET: &str = "/warden.control.v1.PolicyService/GetPolicy";
const FETCH_X509: &str = "/SpiffeWorkloadAPI/FetchX509SVID";
const ATTACKER: &str = "/ns/rag/sa/compromised";
/// The workload the control plane's Workload API socket serves (the honest caller).
const HONEST_WORKLOAD: &str = "/ns/rag/sa/retriever";
/// WatchPolicy's message limit (`policy_service::method_limits`).
const WATCH_LIMIT: usize = 256 * 1024;

/// `fut`, or a panic naming `what` if it takes longer than `limit`: no await in this file
/// can hang a run.
async fn within<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {limit:?}"))
}

/// Polls `check` until it returns `Ok`, or panics with its last error after `limit`.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let last = match tokio::time::timeout_at(deadline, check()).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(_) => "no answer".to_owned(),
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?} ({last})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The honest traffic: an admin, a watching sidecar, a Workload API caller, and (for the
/// sidecar case) a peer of the attacked sidecar. Cloned into the task that checks them
/// while an attack runs.
#[derive(Clone)]
struct Checks {
    admin: PolicyServiceClient<Channel>,
    honest: Arc<warden_sidecar::Sidecar>,
    socket: PathBuf,
    round: Arc<AtomicU64>,
    /// A sidecar's inbound listener and a peer it allows that holds no connection.
    peer_of: Option<(SocketAddr, Arc<rustls::ClientConfig>)>,
}

impl Checks {
    /// One round of every check, each within its deadline.
    async fn round(&mut self) -> Result<(), String> {
        let n = self.round.fetch_add(1, Ordering::Relaxed);
        let peer = format!("/app-{n}");
        let put = tokio::time::timeout(
            ANSWER,
            put(&mut self.admin, inbound_policy("/vectordb", &[&peer]), None),
        )
        .await
        .map_err(|_| "the admin's put did not answer within 5 s".to_owned())?
        .map_err(|e| format!("the admin's put failed: {e}"))?;
        let got = tokio::time::timeout(
            ANSWER,
            self.admin.get_policy(pb::GetPolicyRequest {
                spiffe_id: id("/vectordb"),
            }),
        )
        .await
        .map_err(|_| "the admin's get did not answer within 5 s".to_owned())?
        .map_err(|e| format!("the admin's get failed: {e}"))?;
        let version = got.into_inner().policy.map(|p| p.version);
        if version != Some(put) {
            return Err(format!("the admin put version {put} and got {version:?}"));
        }
        let deadline = tokio::time::Instant::now() + PUSH;
        while self.honest.policy().version() < put {
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "version {put} did not reach the honest sidecar within 2 s"
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let svid = tokio::time::timeout(ANSWER, fetch_svid(&self.socket))
            .await
            .map_err(|_| "the honest Workload API caller got no SVID within 5 s".to_owned())??;
        if svid != id(HONEST_WORKLOAD) {
            return Err(format!("the Workload API issued {svid}"));
        }
        if let Some((addr, config)) = &self.peer_of {
            let echoed = tokio::time::timeout(ANSWER, tls_exchange(*addr, config.clone(), b"hi"))
                .await
                .map_err(|_| "the other peer was not served within 5 s".to_owned())?;
            if echoed.as_deref() != Ok(b"hi") {
                return Err(format!("the other peer was not served: {echoed:?}"));
            }
        }
        Ok(())
    }
}

/// The first X.509 SVID a fresh Workload API client gets on `socket`.
async fn fetch_svid(socket: &Path) -> Result<String, String> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint(socket))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("Workload API connect: {e}"))?;
    let mut client = SpiffeWorkloadApiClient::new(channel);
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .map_err(|e| format!("FetchX509SVID: {e}"))?
        .into_inner();
    let first = stream
        .message()
        .await
        .map_err(|e| format!("FetchX509SVID stream: {e}"))?
        .ok_or("FetchX509SVID ended without an SVID")?;
    first
        .svids
        .first()
        .map(|s| s.spiffe_id.clone())
        .ok_or_else(|| "FetchX509SVID sent no SVID".to_owned())
}

/// A control-plane process serving a Workload API socket, its admin, and an honest
/// sidecar (vectordb) watching its policy.
struct Mesh {
    ca: Ca,
    cp: CpProcess,
    checks: Checks,
    socket: PathBuf,
    ids: tempfile::TempDir,
    rss_before: u64,
    log_before: u64,
    _app: EchoApp,
    _cache: tempfile::TempDir,
    _sockets: tempfile::TempDir,
}

impl Mesh {
    async fn start(limits: &str) -> Self {
        let ca = Ca::new(TD);
        let sockets = tempfile::tempdir().expect("tmp");
        let socket = sockets.path().join("workload.sock");
        let extra = format!(
            "{limits}\n[[workload_api]]\nsocket = \"{}\"\nspiffe_id = \"{}\"\nuid = {}\n",
            socket.display(),
            id(HONEST_WORKLOAD),
            my_uid()
        );
        let cp = CpProcess::start_with_ca(&ca, &extra, "info");
        let app = within("the echo app", ANSWER, EchoApp::start()).await;
        let cache = tempfile::tempdir().expect("tmp");
        let honest = within(
            "the honest sidecar starts",
            DEADLINE,
            sidecar(
                &watched_inbound_config(app.addr, &cp.url(), &cache.path().join("policy.json")),
                ca.identity(&id("/vectordb"), &[]),
            ),
        )
        .await;
        // Connected last, so that its first put comes well within even a short idle_timeout.
        let admin = within("the admin connects", DEADLINE, cp.admin()).await;
        let mut mesh = Self {
            checks: Checks {
                admin,
                honest: Arc::new(honest),
                socket: socket.clone(),
                round: Arc::new(AtomicU64::new(0)),
                peer_of: None,
            },
            rss_before: 0,
            log_before: 0,
            ca,
            cp,
            socket,
            ids: tempfile::tempdir().expect("tmp"),
            _app: app,
            _cache: cache,
            _sockets: sockets,
        };
        mesh.assert_serving("before the attack").await;
        mesh.rss_before = mesh.cp.rss_kib();
        mesh.log_before = mesh.log_len();
        mesh
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(self.cp.dir.path().join("cp.log")).map_or(0, |m| m.len())
    }

    /// One round of the checks, now.
    async fn assert_serving(&self, when: &str) {
        let mut checks = self.checks.clone();
        if let Err(e) = within(when, 4 * DEADLINE, checks.round()).await {
            panic!("{when}: {e}");
        }
    }

    /// Runs `attack` while another task runs the checks in a loop (at least one round
    /// starts while the attack is under way); every failure is reported at the end.
    async fn under_attack<T>(&self, attack: &str, fut: impl Future<Output = T>) -> T {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let mut checks = self.checks.clone();
        let task = tokio::spawn(async move {
            let mut pace = tokio::time::interval(PACE);
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut rounds = 0u32;
            let mut failures = Vec::new();
            loop {
                pace.tick().await;
                if let Err(e) = checks.round().await {
                    failures.push(e);
                }
                rounds += 1;
                if flag.load(Ordering::Acquire) {
                    return (rounds, failures);
                }
            }
        });
        let out = within(attack, 4 * DEADLINE, fut).await;
        stop.store(true, Ordering::Release);
        let (rounds, failures) = within("the checks during the attack", DEADLINE, task)
            .await
            .expect("checks task");
        eprintln!("{attack}: {rounds} rounds of checks during the attack");
        assert!(
            failures.is_empty(),
            "during {attack}: {}",
            failures.join("; ")
        );
        out
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
        assert!(rss > 0, "{attack}: the control plane is not running");
        assert!(
            rss.saturating_sub(self.rss_before) < MEMORY_BOUND_KIB,
            "{attack}: RSS grew from {} to {rss} KiB",
            self.rss_before
        );
        assert!(
            log.saturating_sub(self.log_before) < LOG_BOUND,
            "{attack}: the log grew by {} bytes",
            log.saturating_sub(self.log_before)
        );
    }

    /// `warden policy status` is true: the honest sidecar is listed once, acknowledging
    /// the version in force, and no watch of the attacker is (they have all ended).
    async fn assert_status_true(&self, when: &str) {
        let mut admin = self.checks.admin.clone();
        eventually(&format!("{when}: status is true"), ANSWER, || {
            let mut admin = admin.clone();
            async move {
                let current = admin
                    .get_policy(pb::GetPolicyRequest {
                        spiffe_id: id("/vectordb"),
                    })
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner()
                    .policy
                    .map_or(0, |p| p.version);
                let status = admin
                    .status(pb::StatusRequest {})
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner();
                let rows: Vec<_> = status
                    .sidecars
                    .iter()
                    .map(|s| (s.spiffe_id.clone(), s.sent_version, s.applied_version))
                    .collect();
                if rows == [(id("/vectordb"), current, current)] {
                    Ok(())
                } else {
                    Err(format!("version {current}; status lists {rows:?}"))
                }
            }
        })
        .await;
        // The admin's channel stays usable.
        within("status", ANSWER, admin.status(pb::StatusRequest {}))
            .await
            .expect("status");
    }

    /// A raw HTTP/2 connection to the policy API with a valid, non-admin SVID, the server's
    /// settings read.
    async fn attacker(&self) -> RawH2<TlsStream<TcpStream>> {
        h2_as(&self.ca, self.cp.addr, ATTACKER).await
    }

    /// A tonic client of the policy API with a valid, non-admin SVID.
    async fn attacker_client(&self) -> PolicyServiceClient<Channel> {
        let dir = identity_dir(&self.ca, self.ids.path(), ATTACKER);
        within(
            "the attacker connects",
            DEADLINE,
            self.cp.client_with(&dir, DEADLINE),
        )
        .await
    }

    /// A raw HTTP/2 connection to the control plane's Workload API socket.
    async fn workload_api_h2(&self) -> RawH2<tokio::net::UnixStream> {
        let socket = within(
            "Workload API connect",
            ANSWER,
            tokio::net::UnixStream::connect(&self.socket),
        )
        .await
        .expect("connect");
        let mut h2 = within("preface", ANSWER, RawH2::start(socket))
            .await
            .expect("preface");
        assert!(within("settings", ANSWER, h2.settle(ANSWER)).await);
        h2
    }
}

/// A raw HTTP/2 connection to `addr` as `path`, the server's settings read.
async fn h2_as(ca: &Ca, addr: SocketAddr, path: &str) -> RawH2<TlsStream<TcpStream>> {
    let svid = ca.svid(&id(path));
    let mut config = (*raw_client_config(Some((&svid.chain, svid.key_der())), TLS13)).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tls = within("connect and handshake", ANSWER, async {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("cp.invalid").expect("name");
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("a caller with a valid SVID completes the handshake")
    })
    .await;
    let mut h2 = within("preface", ANSWER, RawH2::start(tls))
        .await
        .expect("preface");
    assert!(
        within("settings", ANSWER, h2.settle(ANSWER)).await,
        "no SETTINGS from the server"
    );
    h2
}

/// A gRPC message: the 5-byte prefix, then `msg`.
fn framed(msg: &[u8]) -> Vec<u8> {
    let mut out = message_prefix(msg.len() as u32);
    out.extend_from_slice(msg);
    out
}

fn hello(version: String) -> pb::WatchRequest {
    pb::WatchRequest {
        msg: Some(pb::watch_request::Msg::Hello(pb::Hello {
            sidecar_version: version,
        })),
    }
}

/// A WatchRequest carrying `Ack { applied_version }` padded to about `size` bytes with an
/// unknown field (number 15), which any protobuf decoder skips: a well-formed ack, only
/// larger than any sidecar sends.
fn padded_ack(applied_version: u64, size: usize) -> Vec<u8> {
    use prost::encoding::{WireType, encode_key, encode_varint};
    let mut ack = pb::Ack { applied_version }.encode_to_vec();
    let pad = size.saturating_sub(ack.len() + 16);
    encode_key(15, WireType::LengthDelimited, &mut ack);
    encode_varint(pad as u64, &mut ack);
    ack.resize(ack.len() + pad, 0x55);
    let mut request = Vec::new();
    encode_key(2, WireType::LengthDelimited, &mut request);
    encode_varint(ack.len() as u64, &mut request);
    request.extend(ack);
    let decoded = pb::WatchRequest::decode(&request[..]).expect("a valid WatchRequest");
    assert_eq!(
        decoded.msg,
        Some(pb::watch_request::Msg::Ack(pb::Ack { applied_version }))
    );
    request
}

/// Opens watch stream `stream` on `h2` with a hello and reads until its first snapshot.
async fn open_raw_watch<S>(h2: &mut RawH2<S>, stream: u32) -> Sent
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let block = grpc_request(WATCH, field(0, ":authority", b"localhost"), &[]);
    let mut out = frame(HEADERS, END_HEADERS, stream, &block);
    out.extend(frame(
        DATA,
        0,
        stream,
        &framed(&hello("1.0".into()).encode_to_vec()),
    ));
    within("send", ANSWER, h2.send(&out)).await.expect("send");
    let mut sent = Sent::default();
    assert!(
        h2.read_into(&mut sent, ANSWER, |s| s.data.contains(&stream)
            || s.ended.contains(&stream))
            .await,
        "no snapshot on watch {stream}"
    );
    assert!(
        sent.data.contains(&stream),
        "watch {stream} ended: {sent:?}"
    );
    sent
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

/// Log text without the ANSI colours the formatter adds.
fn plain(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The number after `key=` in a log line.
fn log_field(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

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
            let mut out = Vec::new();
            for &stream in &streams {
                out.extend(frame(HEADERS, END_HEADERS, stream, &block));
            }
            within("send", ANSWER, h2.send(&out)).await.expect("send");
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
            let mut out = Vec::new();
            for &stream in &streams {
                out.extend(frame(HEADERS, END_HEADERS, stream, &block));
            }
            within("send", ANSWER, h2.send(&out)).await.expect("send");
            let mut sent = Sent::default();
            assert!(
                h2.read_into(&mut sent, DEADLINE, |s| streams
                    .iter()
                    .all(|id| s.data.contains(id)))
                    .await,
                "every watch is served: {sent:?}"
            );
            let open_rss = mesh.cp.rss_kib();
            let bodies: Vec<(u32, &[u8])> = streams.iter().map(|&s| (s, &body[..])).collect();
            let mut sent = h2.send_bodies(&bodies, false, DEADLINE, |_| true).await;
            assert!(
                h2.ping(&mut sent, ANSWER).await,
                "the server read every frame"
            );
            // The server has every message; its calls end those over the share as they
            // read them.
            let over = streams.len() - SHARE / WATCH_LIMIT;
            h2.read_into(&mut sent, ANSWER, |s| {
                streams.iter().filter(|id| s.ended.contains(id)).count() >= over
            })
            .await;
            (open_rss, sent)
        })
        .await;
    let ended: Vec<_> = streams
        .iter()
        .filter(|id| sent.ended.contains(id))
        .collect();
    let exhausted = ended
        .iter()
        .filter(|id| sent.status.get(id).map(String::as_str) == Some("8"))
        .count();
    let held = streams.len() - ended.len();
    let rss = mesh.cp.rss_kib();
    let watches = open_rss.saturating_sub(mesh.rss_before);
    let grown = rss.saturating_sub(mesh.rss_before);
    eprintln!(
        "partial messages: {WATCHES} watches cost +{watches} KiB ({} KiB each); {held} partial messages of {} KiB held, {exhausted} watches ended RESOURCE_EXHAUSTED; RSS +{grown} KiB in all",
        watches / u64::from(WATCHES),
        WATCH_LIMIT / 1024
    );
    assert_eq!(held, SHARE / WATCH_LIMIT, "{sent:?}");
    assert_eq!(exhausted, ended.len(), "{sent:?}");
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
            let mut out = Vec::new();
            for &stream in &streams {
                out.extend(frame(HEADERS, END_HEADERS, stream, &block));
            }
            within("send", ANSWER, h2.send(&out)).await.expect("send");
            let bodies: Vec<(u32, &[u8])> = streams.iter().map(|&s| (s, &body[..])).collect();
            let mut sent = h2.send_bodies(&bodies, false, DEADLINE, |_| true).await;
            assert!(
                h2.ping(&mut sent, ANSWER).await,
                "the server read every frame"
            );
            let over = streams.len() - SHARE / LIMIT;
            h2.read_into(&mut sent, ANSWER, |s| {
                streams.iter().filter(|id| s.ended.contains(id)).count() >= over
            })
            .await;
            sent
        })
        .await;
    let ended: Vec<_> = streams
        .iter()
        .filter(|id| sent.ended.contains(id))
        .collect();
    let exhausted = ended
        .iter()
        .filter(|id| sent.status.get(id).map(String::as_str) == Some("8"))
        .count();
    let held = streams.len() - ended.len();
    let grown = mesh.cp.rss_kib().saturating_sub(mesh.rss_before);
    eprintln!(
        "Workload API partial messages: {held} of {CALLS} held, {exhausted} calls ended RESOURCE_EXHAUSTED; RSS +{grown} KiB"
    );
    assert_eq!(held, SHARE / LIMIT, "{sent:?}");
    assert_eq!(exhausted, ended.len(), "{sent:?}");
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
        let mut out = Vec::new();
        for &stream in &streams {
            out.extend(frame(HEADERS, END_HEADERS, stream, &block));
        }
        within("send", ANSWER, h2.send(&out)).await.expect("send");
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

/// A raw connection that sends one request and reads its grpc-status, whatever carries it.
trait Exchange {
    fn status_of(
        &mut self,
        out: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Option<String>> + Send + '_>>;
}

impl<S> Exchange for RawH2<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    fn status_of(
        &mut self,
        out: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Option<String>> + Send + '_>> {
        Box::pin(async move {
            within("send", ANSWER, self.send(&out)).await.expect("send");
            let mut sent = Sent::default();
            self.read_into(&mut sent, ANSWER, |s| s.status.contains_key(&1))
                .await;
            sent.status.get(&1).cloned()
        })
    }
}

// ---------------------------------------------------------------------------------------
// A sidecar's per-peer share.

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `GET path` on an HTTP/1.1 listener: the body.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    within("HTTP GET", ANSWER, async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        let text = String::from_utf8_lossy(&out).into_owned();
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default()
    })
    .await
}

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
