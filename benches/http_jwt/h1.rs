//! The HTTP/1.1 side of the benchmark: the app (keep-alive, echoes a request's body), a
//! small client on raw sockets (plain TCP or mTLS with rustls) that pipelines requests and
//! parses responses itself, and the fixed-rate open-loop latency run with
//! coordinated-omission correction (as `benches/mesh/load.rs` does for raw bytes).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Request body and response body size.
pub const BODY: usize = 1024;

/// The upstream app: HTTP/1.1 with keep-alive (hyper), on its own thread and runtime so
/// the client's work does not delay its answers. Answers every request 200 with the
/// request's body; counts the requests it saw (refused ones must never arrive) and the
/// connections it accepted (a proxy that keeps its app connections opens none while
/// measuring).
pub struct App {
    pub addr: SocketAddr,
    pub served: Arc<AtomicU64>,
    pub accepted: Arc<AtomicU64>,
}

impl App {
    pub fn start() -> Self {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the app");
        std_listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = std_listener.local_addr().expect("app address");
        let served = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = served.clone();
        let accepts = accepted.clone();
        std::thread::Builder::new()
            .name("app".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("app runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("app listener");
                    loop {
                        let Ok((tcp, _)) = listener.accept().await else {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            continue;
                        };
                        accepts.fetch_add(1, Ordering::Relaxed);
                        let _ = tcp.set_nodelay(true);
                        let counter = counter.clone();
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |req| {
                                let counter = counter.clone();
                                async move { echo(req, &counter).await }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(tcp), service)
                                .await;
                        });
                    }
                });
            })
            .expect("spawn the app thread");
        Self {
            addr,
            served,
            accepted,
        }
    }

    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

async fn echo(
    req: Request<Incoming>,
    served: &AtomicU64,
) -> Result<Response<Full<Bytes>>, Infallible> {
    served.fetch_add(1, Ordering::SeqCst);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Ok(Response::new(Full::new(body)))
}

/// A request as bytes: `POST path` with a `BODY`-byte body and, if given, a bearer token.
pub fn post(path: &str, token: Option<&str>) -> Vec<u8> {
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: app.bench\r\nContent-Type: application/octet-stream\r\nContent-Length: {BODY}\r\n"
    );
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend((0..BODY).map(|i| b'a' + (i % 26) as u8));
    bytes
}

/// The body every request of [`post`] carries (what the echo must return).
pub fn body() -> Vec<u8> {
    (0..BODY).map(|i| b'a' + (i % 26) as u8).collect()
}

pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Where the client connects, and how: plain TCP, or mTLS with the client's SVID.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

pub async fn connect(t: &Target) -> Result<Box<dyn Stream>, String> {
    let tcp = TcpStream::connect(t.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", t.addr))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    match &t.tls {
        None => Ok(Box::new(tcp)),
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from("server.bench").expect("name");
            let tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("mTLS handshake with {}: {e}", t.addr))?;
            Ok(Box::new(tls))
        }
    }
}

/// One parsed response.
#[derive(Debug)]
pub struct Parsed {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Parses pipelined HTTP/1.1 responses out of a byte stream: `Content-Length` or chunked
/// bodies (1xx/204/304 have none). Enough for the app, Warden and Envoy.
#[derive(Default)]
pub struct Parser {
    buf: Vec<u8>,
}

impl Parser {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete response, removed from the buffer.
    pub fn next(&mut self) -> Result<Option<Parsed>, String> {
        let Some(head_end) = find(&self.buf, b"\r\n\r\n") else {
            if self.buf.len() > 64 * 1024 {
                return Err("a response head over 64 KiB".into());
            }
            return Ok(None);
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .map_err(|_| "a response head that is not UTF-8".to_string())?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("not a status line: {status_line:?}"))?;
        let mut length = None;
        let mut chunked = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| format!("bad content-length {value:?}"))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                && value.to_ascii_lowercase().contains("chunked")
            {
                chunked = true;
            }
        }
        let start = head_end + 4;
        let (body, end) = if chunked {
            match dechunk(&self.buf[start..])? {
                Some((body, used)) => (body, start + used),
                None => return Ok(None),
            }
        } else if let Some(n) = length {
            if self.buf.len() < start + n {
                return Ok(None);
            }
            (self.buf[start..start + n].to_vec(), start + n)
        } else if (100..200).contains(&status) || status == 204 || status == 304 {
            (Vec::new(), start)
        } else {
            return Err(format!(
                "status {status} without Content-Length or chunked body"
            ));
        };
        self.buf.drain(..end);
        Ok(Some(Parsed { status, body }))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A complete chunked body at the start of `data`: the body and the bytes it took.
fn dechunk(data: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(eol) = find(&data[at..], b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&data[at..at + eol]).map_err(|e| e.to_string())?;
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {line:?}"))?;
        at += eol + 2;
        if size == 0 {
            // Trailers (none expected), then the empty line.
            let Some(end) = find(&data[at..], b"\r\n") else {
                return Ok(None);
            };
            if end != 0 {
                let Some(end) = find(&data[at..], b"\r\n\r\n") else {
                    return Ok(None);
                };
                return Ok(Some((body, at + end + 4)));
            }
            return Ok(Some((body, at + 2)));
        }
        if data.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&data[at..at + size]);
        at += size + 2;
    }
}

/// Sends `request` on `s` and reads one response.
pub async fn exchange(s: &mut Box<dyn Stream>, request: &[u8]) -> Result<Parsed, String> {
    s.write_all(request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    s.flush().await.map_err(|e| format!("flush: {e}"))?;
    let mut parser = Parser::default();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if let Some(r) = parser.next()? {
            return Ok(r);
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .map_err(|_| "no response within 10 s".to_string())?
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed before a response".into());
        }
        parser.push(&buf[..n]);
    }
}

pub fn histogram() -> Histogram<u64> {
    // Nanoseconds, 1 µs .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid histogram bounds")
}

pub struct LatencyRun {
    pub hist: Histogram<u64>,
    pub sent: u64,
    pub received: u64,
    /// Responses whose status was not 200 (the token is the finance one: none expected).
    pub not_ok: u64,
    pub achieved_rps: f64,
}

/// Open-loop latency at `rate` requests/s over `conns` keep-alive connections, for
/// `warmup + duration`; only requests scheduled after the warm-up are recorded.
///
/// Each request has a scheduled send time (`start + k / rate`) and its latency is taken
/// from that time to the end of its response, so a stall is charged to every request
/// queued behind it (coordinated-omission correction). A plain thread sleeps until each
/// scheduled time (the runtime's timer has millisecond resolution) and hands the request
/// to its connection's writer task; requests are pipelined (a late response never delays
/// the next send) and responses come back in order, so the k-th response of a connection
/// belongs to its k-th request.
pub async fn latency(
    target: &Target,
    request: Arc<Vec<u8>>,
    rate: u32,
    conns: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<LatencyRun, String> {
    let start_at = Arc::new(std::sync::OnceLock::<Instant>::new());
    let mut queues = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let mut s = connect(target).await?;
        // One request first: the connection (and the proxy's to the app) is up.
        let first = exchange(&mut s, &request).await?;
        if first.status != 200 {
            return Err(format!("the first request was answered {}", first.status));
        }
        let (mut r, mut w) = tokio::io::split(s);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        queues.push(tx);
        let (sched_tx, sched_rx) = std::sync::mpsc::channel::<Instant>();
        let sent = Arc::new(AtomicU64::new(0));
        let writer_done = Arc::new(AtomicBool::new(false));
        let (sent_w, done_w, req) = (sent.clone(), writer_done.clone(), request.clone());
        tasks.spawn(async move {
            let mut batch = Vec::with_capacity(req.len() * 4);
            let mut failed = None;
            while let Some(at) = rx.recv().await {
                batch.clear();
                let mut n = 0;
                let mut next = Some(at);
                while let Some(at) = next {
                    // Queue the schedule first: the response cannot overtake it.
                    let _ = sched_tx.send(at);
                    batch.extend_from_slice(&req);
                    n += 1;
                    next = rx.try_recv().ok();
                }
                let wrote = async {
                    w.write_all(&batch).await?;
                    w.flush().await
                };
                if let Err(e) = wrote.await {
                    failed = Some(format!("send failed: {e}"));
                    break;
                }
                sent_w.fetch_add(n, Ordering::Release);
            }
            done_w.store(true, Ordering::Release);
            Side::Writer(failed)
        });
        let start_at = start_at.clone();
        tasks.spawn(async move {
            let mut hist = histogram();
            let mut parser = Parser::default();
            let (mut received, mut not_ok) = (0u64, 0u64);
            let mut buf = vec![0u8; 64 * 1024];
            let mut give_up: Option<Instant> = None;
            let mut failed = None;
            loop {
                match tokio::time::timeout(Duration::from_millis(20), r.read(&mut buf)).await {
                    Ok(Ok(0)) => {
                        failed = Some("the proxy closed the connection".to_string());
                        break;
                    }
                    Ok(Err(e)) => {
                        failed = Some(format!("read: {e}"));
                        break;
                    }
                    Ok(Ok(n)) => {
                        let now = Instant::now();
                        parser.push(&buf[..n]);
                        loop {
                            match parser.next() {
                                Ok(Some(resp)) => {
                                    received += 1;
                                    if resp.status != 200 {
                                        not_ok += 1;
                                    }
                                    let Ok(scheduled) = sched_rx.try_recv() else {
                                        break;
                                    };
                                    let from = start_at.get().map(|s| *s + warmup);
                                    if from.is_some_and(|from| scheduled >= from) {
                                        let ns = now.saturating_duration_since(scheduled);
                                        hist.saturating_record(ns.as_nanos() as u64);
                                    }
                                }
                                Ok(None) => break,
                                Err(e) => {
                                    failed = Some(e);
                                    break;
                                }
                            }
                        }
                        if failed.is_some() {
                            break;
                        }
                    }
                    Err(_) => {}
                }
                if writer_done.load(Ordering::Acquire) {
                    if received >= sent.load(Ordering::Acquire) {
                        break;
                    }
                    let deadline = *give_up.get_or_insert(Instant::now() + Duration::from_secs(5));
                    if Instant::now() > deadline {
                        break;
                    }
                }
            }
            Side::Reader {
                hist,
                received,
                not_ok,
                failed,
            }
        });
    }
    let sender = {
        let start_at = start_at.clone();
        std::thread::Builder::new()
            .name("sender".into())
            .spawn(move || {
                let interval = 1e9 / f64::from(rate);
                let total = warmup + duration;
                let start = Instant::now() + Duration::from_millis(10);
                let _ = start_at.set(start);
                let mut k: u64 = 0;
                loop {
                    let at = start + Duration::from_nanos((k as f64 * interval) as u64);
                    if at >= start + total {
                        break;
                    }
                    let now = Instant::now();
                    if at > now {
                        std::thread::sleep(at - now);
                    }
                    if queues[(k as usize) % queues.len()].send(at).is_err() {
                        break;
                    }
                    k += 1;
                }
                // Dropping the queues ends the writers.
                (k, start.elapsed())
            })
            .map_err(|e| e.to_string())?
    };
    let mut run = LatencyRun {
        hist: histogram(),
        sent: 0,
        received: 0,
        not_ok: 0,
        achieved_rps: 0.0,
    };
    let mut errors = Vec::new();
    while let Some(side) = tasks.join_next().await {
        match side.map_err(|e| e.to_string())? {
            Side::Writer(failed) => errors.extend(failed),
            Side::Reader {
                hist,
                received,
                not_ok,
                failed,
            } => {
                run.hist.add(hist).map_err(|e| e.to_string())?;
                run.received += received;
                run.not_ok += not_ok;
                errors.extend(failed);
            }
        }
    }
    let (sent, elapsed) = sender.join().map_err(|_| "sender panicked".to_string())?;
    run.sent = sent;
    run.achieved_rps = sent as f64 / elapsed.as_secs_f64();
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    Ok(run)
}

enum Side {
    Writer(Option<String>),
    Reader {
        hist: Histogram<u64>,
        received: u64,
        not_ok: u64,
        failed: Option<String>,
    },
}
