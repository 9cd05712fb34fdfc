//! The traffic side of the mesh harness: the upstream app (echo or sink), and the clients
//! that measure latency at a fixed rate, bulk throughput, new connections per second and
//! idle connections. All on 127.0.0.1; the app and the client run in this process.

use std::io::{ErrorKind, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Request and response size of the latency and connection benchmarks.
pub const MSG: usize = 1024;
/// First byte of a connection that only uploads (bulk throughput); anything else is echoed.
const SINK: u8 = b'S';
/// First byte of a full-duplex connection: echoed, and the app checks the pattern that
/// follows (see [`Pattern`]) before echoing it.
const DUPLEX: u8 = b'D';

/// The byte stream of a full-duplex connection after its first byte: 64-bit words, word `i`
/// is `i * K` (little endian), so a lost, repeated or reordered byte shows at once. Checked
/// word by word, which keeps the check far cheaper than the copy it verifies.
#[derive(Default)]
pub struct Pattern {
    offset: u64,
    pub bad: bool,
}

const K: u64 = 0x9e37_79b9_7f4a_7c15;

impl Pattern {
    fn byte(o: u64) -> u8 {
        (o / 8).wrapping_mul(K).to_le_bytes()[(o % 8) as usize]
    }

    /// Fills `buf` with the next bytes of the stream (the offset stays word-aligned as long
    /// as every buffer's length is a multiple of 8).
    pub fn fill(&mut self, buf: &mut [u8]) {
        debug_assert!(self.offset.is_multiple_of(8) && buf.len().is_multiple_of(8));
        let first = self.offset / 8;
        for (i, w) in buf.chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&(first + i as u64).wrapping_mul(K).to_le_bytes());
        }
        self.offset += buf.len() as u64;
    }

    /// Checks that `data` is the next part of the stream.
    pub fn check(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.offset.is_multiple_of(8) {
            self.bad |= data[0] != Self::byte(self.offset);
            self.offset += 1;
            data = &data[1..];
        }
        let words = data.chunks_exact(8);
        let tail = words.remainder();
        let first = self.offset / 8;
        let mut bad = false;
        for (i, w) in words.enumerate() {
            let got = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            bad |= got != (first + i as u64).wrapping_mul(K);
        }
        self.bad |= bad;
        self.offset += (data.len() - tail.len()) as u64;
        for &b in tail {
            self.bad |= b != Self::byte(self.offset);
            self.offset += 1;
        }
    }
}

/// The upstream app, on its own thread and runtime so that the client's work does not
/// delay its answers: echoes every connection, except that a connection whose first byte is
/// `S` is drained and only counted (bulk upload).
pub struct App {
    pub addr: SocketAddr,
    /// Bytes received by sink connections so far.
    pub sunk: Arc<AtomicU64>,
    /// Full-duplex connections whose bytes differed from the pattern when they reached the app.
    pub corrupt: Arc<AtomicU64>,
}

impl App {
    pub fn start() -> Self {
        Self::start_at("127.0.0.1:0")
    }

    /// The app on `bind` (the capture benchmark binds 0.0.0.0 inside a pod's namespace).
    pub fn start_at(bind: &str) -> Self {
        let std_listener = std::net::TcpListener::bind(bind)
            .unwrap_or_else(|e| panic!("bind the app on {bind}: {e}"));
        std_listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = std_listener.local_addr().expect("app address");
        let sunk = Arc::new(AtomicU64::new(0));
        let counter = sunk.clone();
        let corrupt = Arc::new(AtomicU64::new(0));
        let corrupt_count = corrupt.clone();
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
                        match listener.accept().await {
                            Ok((s, _)) => {
                                tokio::spawn(serve_app(s, counter.clone(), corrupt_count.clone()));
                            }
                            // Out of descriptors, most likely: the client sees the failure.
                            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                        }
                    }
                });
            })
            .expect("spawn the app thread");
        Self {
            addr,
            sunk,
            corrupt,
        }
    }
}

/// Holds no buffer while idle: 10,000 idle connections must not cost the app 10,000
/// buffers (the app's memory is not measured, but it shares the machine).
async fn serve_app(s: TcpStream, sunk: Arc<AtomicU64>, corrupt: Arc<AtomicU64>) {
    let _ = s.set_nodelay(true);
    let mut s = s;
    let mut sink = None;
    // Full duplex: the pattern after the first byte, checked before it is echoed.
    let mut duplex: Option<Pattern> = None;
    loop {
        if s.readable().await.is_err() {
            return;
        }
        let mut buf = vec![0u8; 64 * 1024];
        let n = match s.try_read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            Err(_) => return,
        };
        let first = sink.is_none();
        let is_sink = *sink.get_or_insert(buf[0] == SINK);
        if is_sink {
            sunk.fetch_add(n as u64, Ordering::Relaxed);
            continue;
        }
        if first && buf[0] == DUPLEX {
            duplex = Some(Pattern::default());
        }
        if let Some(p) = duplex.as_mut() {
            let was_bad = p.bad;
            p.check(&buf[usize::from(first)..n]);
            if p.bad && !was_bad {
                corrupt.fetch_add(1, Ordering::Relaxed);
            }
        }
        if s.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// One request/response on a fresh connection.
pub async fn one_request(entry: SocketAddr) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(entry).await?;
    s.set_nodelay(true)?;
    let req = [b'x'; MSG];
    s.write_all(&req).await?;
    let mut resp = [0u8; MSG];
    s.read_exact(&mut resp).await?;
    Ok(s)
}

/// Retries one request until it succeeds (the proxies are up and have their SVIDs).
pub async fn wait_ready(entry: SocketAddr, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        let attempt = tokio::time::timeout(Duration::from_secs(2), one_request(entry)).await;
        match attempt {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) if Instant::now() > deadline => return Err(e.to_string()),
            Err(_) if Instant::now() > deadline => return Err("timed out".into()),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
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
    pub achieved_rps: f64,
}

/// Open-loop latency at `rate` requests/s over `conns` persistent connections, for
/// `warmup + duration`; only requests scheduled after the warm-up are recorded.
///
/// Coordinated omission: each request has a scheduled send time (`start + k / rate`) and its
/// latency is measured from that time, not from when it was actually written. A stalled
/// proxy therefore shows up as the queueing delay every request behind it would have seen.
/// Requests are pipelined on each connection (a late response never delays the next send);
/// the sender is a plain thread sleeping until each scheduled time (nanosleep, ~50 µs of
/// timer slack) instead of the runtime's millisecond timer.
pub async fn latency(
    entry: SocketAddr,
    rate: u32,
    conns: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<LatencyRun, String> {
    let mut writers = Vec::new();
    let mut readers = tokio::task::JoinSet::new();
    let mut queues = Vec::new();
    let start_at = Arc::new(std::sync::OnceLock::<Instant>::new());
    let done = Arc::new(AtomicBool::new(false));
    let sent_per_conn: Arc<Vec<AtomicU64>> = Arc::new((0..conns).map(|_| 0.into()).collect());
    for i in 0..conns {
        let s = one_request(entry)
            .await
            .map_err(|e| format!("connect: {e}"))?
            .into_std()
            .map_err(|e| e.to_string())?;
        // The clone shares the (non-blocking) file description; the sender retries on
        // WouldBlock, which only happens when the proxy stops reading.
        let writer = s.try_clone().map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::channel::<Instant>();
        writers.push(writer);
        queues.push(tx);
        let mut reader = TcpStream::from_std(s).map_err(|e| e.to_string())?;
        let done = done.clone();
        let sent = sent_per_conn.clone();
        let start_at = start_at.clone();
        readers.spawn(async move {
            let mut hist = histogram();
            let mut received = 0u64;
            let mut buf = vec![0u8; 64 * 1024];
            let mut pending = 0usize;
            let mut give_up: Option<Instant> = None;
            loop {
                let read =
                    tokio::time::timeout(Duration::from_millis(20), reader.read(&mut buf)).await;
                match read {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => {
                        pending += n;
                        let now = Instant::now();
                        while pending >= MSG {
                            pending -= MSG;
                            received += 1;
                            let Ok(scheduled) = rx.try_recv() else { break };
                            let recorded_from = start_at.get().map(|s| *s + warmup);
                            if recorded_from.is_some_and(|from| scheduled >= from) {
                                let ns = now.saturating_duration_since(scheduled).as_nanos();
                                hist.saturating_record(ns as u64);
                            }
                        }
                    }
                    Err(_) => {}
                }
                if done.load(Ordering::Acquire) {
                    if received >= sent[i].load(Ordering::Acquire) {
                        break;
                    }
                    let deadline = *give_up.get_or_insert(Instant::now() + Duration::from_secs(5));
                    if Instant::now() > deadline {
                        break;
                    }
                }
            }
            (hist, received)
        });
    }
    let sender = {
        let done = done.clone();
        let sent = sent_per_conn.clone();
        let start_at = start_at.clone();
        std::thread::Builder::new()
            .name("sender".into())
            .spawn(move || {
                let req = [b'x'; MSG];
                let interval = 1e9 / f64::from(rate);
                let total = warmup + duration;
                let start = Instant::now() + Duration::from_millis(10);
                let _ = start_at.set(start);
                let mut k: u64 = 0;
                let mut failed = None;
                loop {
                    let at = start + Duration::from_nanos((k as f64 * interval) as u64);
                    if at >= start + total {
                        break;
                    }
                    let now = Instant::now();
                    if at > now {
                        std::thread::sleep(at - now);
                    }
                    let c = (k as usize) % writers.len();
                    // Queue the schedule first: the response cannot overtake it.
                    let _ = queues[c].send(at);
                    if let Err(e) = write_all_retry(&mut writers[c], &req) {
                        failed = Some(e.to_string());
                        break;
                    }
                    sent[c].fetch_add(1, Ordering::Release);
                    k += 1;
                }
                done.store(true, Ordering::Release);
                (k, start.elapsed(), failed)
            })
            .map_err(|e| e.to_string())?
    };
    let mut hist = histogram();
    let mut received = 0;
    while let Some(res) = readers.join_next().await {
        let (h, r) = res.map_err(|e| e.to_string())?;
        hist.add(h).map_err(|e| e.to_string())?;
        received += r;
    }
    let (sent, elapsed, failed) = sender.join().map_err(|_| "sender panicked".to_string())?;
    if let Some(e) = failed {
        return Err(format!("send failed: {e}"));
    }
    Ok(LatencyRun {
        hist,
        sent,
        received,
        achieved_rps: sent as f64 / elapsed.as_secs_f64(),
    })
}

fn write_all_retry(w: &mut std::net::TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        match w.write(data) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_micros(20))
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Uploads on `streams` connections and returns bytes/s as counted by the app, measured
/// over `duration` after `warmup`.
pub async fn bulk(
    entry: SocketAddr,
    app: &App,
    streams: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<f64, String> {
    let mut tasks = tokio::task::JoinSet::new();
    let stop = Arc::new(AtomicBool::new(false));
    for _ in 0..streams {
        let mut s = TcpStream::connect(entry)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = s.set_nodelay(true);
        let stop = stop.clone();
        tasks.spawn(async move {
            let mut chunk = vec![0xa5u8; 64 * 1024];
            chunk[0] = SINK;
            if s.write_all(&chunk).await.is_err() {
                return;
            }
            chunk[0] = 0;
            while !stop.load(Ordering::Relaxed) {
                if s.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
    }
    tokio::time::sleep(warmup).await;
    let (b0, t0) = (app.sunk.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(duration).await;
    let (b1, t1) = (app.sunk.load(Ordering::Relaxed), Instant::now());
    stop.store(true, Ordering::Relaxed);
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    if b1 == b0 {
        return Err("no bytes reached the app".into());
    }
    Ok((b1 - b0) as f64 / (t1 - t0).as_secs_f64())
}

/// Full duplex on `streams` connections: each client writes the pattern (64 KiB writes)
/// while it reads the echo back at the same time, so both directions of every hop carry a
/// stream at once. The app checks the bytes it receives, the client the bytes it gets back.
/// Returns bytes/s received back by the clients (each direction carries that rate), measured
/// over `duration` after `warmup`.
pub async fn duplex(
    entry: SocketAddr,
    app: &App,
    streams: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<f64, String> {
    let mut tasks = tokio::task::JoinSet::new();
    let stop = Arc::new(AtomicBool::new(false));
    let echoed = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let corrupt_before = app.corrupt.load(Ordering::Relaxed);
    for _ in 0..streams {
        let s = TcpStream::connect(entry)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = s.set_nodelay(true);
        let (mut r, mut w) = s.into_split();
        let stop = stop.clone();
        tasks.spawn(async move {
            if w.write_all(&[DUPLEX]).await.is_err() {
                return;
            }
            let mut out = Pattern::default();
            let mut chunk = vec![0u8; 64 * 1024];
            while !stop.load(Ordering::Relaxed) {
                out.fill(&mut chunk);
                if w.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
        let (echoed, bad) = (echoed.clone(), bad.clone());
        tasks.spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut back = Pattern::default();
            let mut first = true;
            loop {
                let n = match r.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let skip = usize::from(first);
                if first && buf[0] != DUPLEX {
                    back.bad = true;
                }
                first = false;
                back.check(&buf[skip..n]);
                if back.bad {
                    bad.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                echoed.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
    }
    tokio::time::sleep(warmup).await;
    let (b0, t0) = (echoed.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(duration).await;
    let (b1, t1) = (echoed.load(Ordering::Relaxed), Instant::now());
    stop.store(true, Ordering::Relaxed);
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let corrupt = app.corrupt.load(Ordering::Relaxed) - corrupt_before;
    let bad = bad.load(Ordering::Relaxed);
    if corrupt > 0 || bad > 0 {
        return Err(format!(
            "bytes differ: {corrupt} connection(s) at the app, {bad} back at the client"
        ));
    }
    if b1 == b0 {
        return Err("nothing came back".into());
    }
    Ok((b1 - b0) as f64 / (t1 - t0).as_secs_f64())
}

pub struct ConnRun {
    pub per_sec: f64,
    pub ok: u64,
    pub failed: u64,
    pub hist: Histogram<u64>,
}

/// New connections per second, closed loop with `concurrency` clients: each connects,
/// sends one 1 KiB request, reads the response and closes.
pub async fn new_connections(
    entry: SocketAddr,
    concurrency: usize,
    duration: Duration,
) -> Result<ConnRun, String> {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (ok, failed) = (ok.clone(), failed.clone());
        tasks.spawn(async move {
            let mut hist = histogram();
            while Instant::now() < end {
                let t = Instant::now();
                match tokio::time::timeout(Duration::from_secs(5), one_request(entry)).await {
                    Ok(Ok(s)) => {
                        hist.saturating_record(t.elapsed().as_nanos() as u64);
                        ok.fetch_add(1, Ordering::Relaxed);
                        drop(s);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            hist
        });
    }
    let mut hist = histogram();
    while let Some(h) = tasks.join_next().await {
        hist.add(h.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    Ok(ConnRun {
        per_sec: ok as f64 / elapsed,
        ok,
        failed: failed.load(Ordering::Relaxed),
        hist,
    })
}

/// Opens `count` connections through `entry`, each carrying one request/response, and
/// keeps them open (returned) so the caller can measure the proxies' memory.
pub async fn idle_connections(
    entry: SocketAddr,
    count: usize,
    concurrency: usize,
) -> Result<Vec<TcpStream>, String> {
    let mut open = Vec::with_capacity(count);
    let mut tasks = tokio::task::JoinSet::new();
    let mut started = 0;
    let mut errors = 0;
    while open.len() < count {
        while started < count && tasks.len() < concurrency {
            tasks.spawn(tokio::time::timeout(
                Duration::from_secs(10),
                one_request(entry),
            ));
            started += 1;
        }
        match tasks.join_next().await {
            Some(Ok(Ok(Ok(s)))) => open.push(s),
            Some(_) => {
                errors += 1;
                if errors > count / 100 + 10 {
                    return Err(format!(
                        "{errors} connections failed after {} were opened",
                        open.len()
                    ));
                }
                started -= 1;
            }
            None => break,
        }
    }
    Ok(open)
}

/// Checks that every idle connection still answers (none was dropped by a limit).
pub async fn still_open(conns: &mut [TcpStream]) -> usize {
    let mut alive = 0;
    for s in conns.iter_mut() {
        let req = [b'y'; 16];
        let mut resp = [0u8; 16];
        let ok = tokio::time::timeout(Duration::from_secs(2), async {
            s.write_all(&req).await?;
            s.read_exact(&mut resp).await
        })
        .await;
        if matches!(ok, Ok(Ok(_))) {
            alive += 1;
        }
    }
    alive
}
