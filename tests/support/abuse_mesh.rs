//! The harness of `tests/abuse.rs`: a real `warden control-plane` process serving a
//! Workload API socket, with an honest sidecar watching its policy (`Mesh`); the checks an
//! attack must not break, run during it and after (`Checks`, `Mesh::under_attack`,
//! `assert_serving`, `assert_bounded`); and the raw HTTP/2 pieces the attacks are made of.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::transport::Channel;
use warden_proto::control::v1 as pb;
use warden_proto::control::v1::policy_service_client::PolicyServiceClient;
use warden_proto::workload::X509svidRequest;
use warden_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

use crate::common::control::*;
use crate::common::pki::Ca;
use crate::common::workload_api::{endpoint, my_uid, with_header};
use crate::common::*;
use crate::h2raw::*;
use crate::harden::TLS13;

pub const ANSWER: Duration = Duration::from_secs(5);
pub const PUSH: Duration = Duration::from_secs(2);
pub const DEADLINE: Duration = Duration::from_secs(30);
/// What an attack may add to the control plane's resident memory.
pub const MEMORY_BOUND_KIB: u64 = 64 * 1024;
/// What an attack may add to the control plane's log (info level, as in production).
pub const LOG_BOUND: u64 = 256 * 1024;
/// What one peer holding its share may add to a sidecar's resident memory and log.
pub const SIDECAR_MEMORY_BOUND_KIB: u64 = 16 * 1024;
pub const SIDECAR_LOG_BOUND: u64 = 64 * 1024;
/// The honest traffic's pace while an attack runs: one round of checks, then the next
/// after this much (a pace, not a wait for anything).
pub const PACE: Duration = Duration::from_millis(200);

pub const WATCH: &str = "/warden.control.v1.PolicyService/WatchPolicy";
pub const PUT: &str = "/warden.control.v1.PolicyService/PutPolicy";
pub const GET: &str = "/warden.control.v1.PolicyService/GetPolicy";
pub const FETCH_X509: &str = "/SpiffeWorkloadAPI/FetchX509SVID";
pub const ATTACKER: &str = "/ns/rag/sa/compromised";
/// The workload the control plane's Workload API socket serves (the honest caller).
pub const HONEST_WORKLOAD: &str = "/ns/rag/sa/retriever";
/// WatchPolicy's message limit (`policy_service::method_limits`).
pub const WATCH_LIMIT: usize = 256 * 1024;

/// `fut`, or a panic naming `what` if it takes longer than `limit`: no await in this file
/// can hang a run.
pub async fn within<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {limit:?}"))
}

/// Polls `check` until it returns `Ok`, or panics with its last error after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
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
pub struct Checks {
    pub admin: PolicyServiceClient<Channel>,
    pub honest: Arc<warden_sidecar::Sidecar>,
    pub socket: PathBuf,
    pub round: Arc<AtomicU64>,
    /// A sidecar's inbound listener and a peer it allows that holds no connection.
    pub peer_of: Option<(SocketAddr, Arc<rustls::ClientConfig>)>,
}

impl Checks {
    /// One round of every check, each within its deadline.
    pub async fn round(&mut self) -> Result<(), String> {
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
pub async fn fetch_svid(socket: &Path) -> Result<String, String> {
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
pub struct Mesh {
    pub ca: Ca,
    pub cp: CpProcess,
    pub checks: Checks,
    pub socket: PathBuf,
    pub ids: tempfile::TempDir,
    pub rss_before: u64,
    pub log_before: u64,
    pub _app: EchoApp,
    pub _cache: tempfile::TempDir,
    pub _sockets: tempfile::TempDir,
}

impl Mesh {
    pub async fn start(limits: &str) -> Self {
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

    pub fn log_len(&self) -> u64 {
        std::fs::metadata(self.cp.dir.path().join("cp.log")).map_or(0, |m| m.len())
    }

    /// One round of the checks, now.
    pub async fn assert_serving(&self, when: &str) {
        let mut checks = self.checks.clone();
        if let Err(e) = within(when, 4 * DEADLINE, checks.round()).await {
            panic!("{when}: {e}");
        }
    }

    /// Runs `attack` while another task runs the checks in a loop (at least one round
    /// starts while the attack is under way); every failure is reported at the end.
    pub async fn under_attack<T>(&self, attack: &str, fut: impl Future<Output = T>) -> T {
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
    pub fn assert_bounded(&self, attack: &str) {
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
    pub async fn assert_status_true(&self, when: &str) {
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
    pub async fn attacker(&self) -> RawH2<TlsStream<TcpStream>> {
        h2_as(&self.ca, self.cp.addr, ATTACKER).await
    }

    /// A tonic client of the policy API with a valid, non-admin SVID.
    pub async fn attacker_client(&self) -> PolicyServiceClient<Channel> {
        let dir = identity_dir(&self.ca, self.ids.path(), ATTACKER);
        within(
            "the attacker connects",
            DEADLINE,
            self.cp.client_with(&dir, DEADLINE),
        )
        .await
    }

    /// A raw HTTP/2 connection to the control plane's Workload API socket.
    pub async fn workload_api_h2(&self) -> RawH2<tokio::net::UnixStream> {
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
pub async fn h2_as(ca: &Ca, addr: SocketAddr, path: &str) -> RawH2<TlsStream<TcpStream>> {
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
pub fn framed(msg: &[u8]) -> Vec<u8> {
    let mut out = message_prefix(msg.len() as u32);
    out.extend_from_slice(msg);
    out
}

pub fn hello(version: String) -> pb::WatchRequest {
    pb::WatchRequest {
        msg: Some(pb::watch_request::Msg::Hello(pb::Hello {
            sidecar_version: version,
        })),
    }
}

/// A WatchRequest carrying `Ack { applied_version }` padded to about `size` bytes with an
/// unknown field (number 15), which any protobuf decoder skips: a well-formed ack, only
/// larger than any sidecar sends.
pub fn padded_ack(applied_version: u64, size: usize) -> Vec<u8> {
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
pub async fn open_raw_watch<S>(h2: &mut RawH2<S>, stream: u32) -> Sent
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
pub async fn provoke_resets<S>(
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
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// The connection was ended with ENHANCE_YOUR_CALM after about h2's 1,024 local resets.
pub fn assert_cut_off(resets: u32, goaway: Option<u32>) {
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
pub fn plain(raw: &str) -> String {
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
pub fn log_field(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Opens one call of `block` on each of `streams` (their HEADERS only).
pub async fn open_calls<S>(h2: &mut RawH2<S>, block: &[u8], streams: &[u32])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut out = Vec::new();
    for &stream in streams {
        out.extend(frame(HEADERS, END_HEADERS, stream, block));
    }
    within("send", ANSWER, h2.send(&out)).await.expect("send");
}

/// Sends `body` (a message one byte short of what its prefix announces) on every stream, as
/// flow control allows, and reads until the server has read every frame and ended the calls
/// it does not hold: all but the `held` a caller's share allows.
pub async fn send_partial_messages<S>(
    h2: &mut RawH2<S>,
    streams: &[u32],
    body: &[u8],
    held: usize,
) -> Sent
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let bodies: Vec<(u32, &[u8])> = streams.iter().map(|&s| (s, body)).collect();
    let mut sent = h2.send_bodies(&bodies, false, DEADLINE, |_| true).await;
    assert!(
        h2.ping(&mut sent, ANSWER).await,
        "the server read every frame"
    );
    // The server has every message; its calls end those over the share as they read them.
    let over = streams.len() - held;
    h2.read_into(&mut sent, ANSWER, |s| {
        streams.iter().filter(|id| s.ended.contains(id)).count() >= over
    })
    .await;
    sent
}

/// Of `streams`: how many the server still holds, and how many it ended, and of those how
/// many with RESOURCE_EXHAUSTED.
pub fn held_and_exhausted(streams: &[u32], sent: &Sent) -> (usize, usize, usize) {
    let ended: Vec<_> = streams
        .iter()
        .filter(|id| sent.ended.contains(id))
        .collect();
    let exhausted = ended
        .iter()
        .filter(|id| sent.status.get(id).map(String::as_str) == Some("8"))
        .count();
    (streams.len() - ended.len(), ended.len(), exhausted)
}

/// A raw connection that sends one request and reads its grpc-status, whatever carries it.
pub trait Exchange {
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

pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `GET path` on an HTTP/1.1 listener: the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
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

/// An mTLS connection through which one byte has been echoed, held open.
pub async fn open_echo(
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
