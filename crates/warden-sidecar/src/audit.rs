//! The audit log: one JSON line per authorization decision, handshake failure, revocation,
//! SVID rotation and policy change, written to stderr or to `[audit] path`.
//!
//! Why a writer thread behind a bounded queue: a connection task only ever does a
//! non-blocking `try_send`, so a slow disk or a stalled stderr pipe can never hold up the
//! data plane. When the queue is full the record is counted as dropped, and the count is
//! reported in the next summary record.
//!
//! Why summaries: a flood of refused peers (a scanner, a misconfigured fleet) must not turn
//! into unbounded log volume. Per interval, at most `burst` deny/handshake-failure records
//! are written in full; the rest are counted per (event, peer, reason) and written as one
//! `audit_summary` record at the end of the interval. Allows, rotations and policy changes
//! are never summarized.
//!
//! It must never block a connection task, never grow without bound, and never write key
//! material (records only carry IDs, addresses and reasons).

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum AuditError {
    #[error("audit.path: cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the audit writer thread: {0}")]
    Thread(std::io::Error),
}

/// What an audit record is about (its `event` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditEvent {
    /// An authorization decision on a connection.
    Authz,
    /// A decision on one HTTP request of an http listener.
    Http,
    /// A TLS handshake that failed (with its reason).
    HandshakeFailure,
    /// A connection refused at a limit.
    Refused,
    /// An open connection closed because the policy no longer allows it.
    Revoked,
    /// An SVID loaded or rejected.
    Rotation,
    /// A policy put in force, or refused (a foreign cache).
    Policy,
    /// What the flood limit counted instead of writing.
    AuditSummary,
}

/// The `decision` field: a verdict on a connection, or how an update ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditDecision {
    Allow,
    Deny,
    /// Allowed because the policy is in audit mode; enforced, it would be a deny.
    WouldDeny,
    /// An update (SVID, policy) put in force.
    Ok,
    /// An update refused; what was in force stays.
    Rejected,
    /// A policy that did not parse, replaced by deny-all.
    Invalid,
}

/// One audit record. Fields that do not apply to an event are written as `null`, so every
/// line has the same shape.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// RFC 3339, filled in when the record is made (not when it is written).
    pub time: String,
    pub event: AuditEvent,
    pub direction: Option<&'static str>,
    #[serde(serialize_with = "arc_str")]
    pub listener: Option<Arc<str>>,
    pub peer_id: Option<String>,
    pub peer_addr: Option<SocketAddr>,
    /// `allow`/`deny`/`would_deny` for decisions; `ok`/`rejected`/`invalid` for rotations and policy
    /// changes.
    pub decision: Option<AuditDecision>,
    /// The rule that allowed the peer.
    pub rule: Option<String>,
    /// Why: a decision reason label, a handshake failure label, a close reason, or text.
    pub reason: Option<String>,
    pub policy_version: Option<u64>,
    pub conn_id: Option<u64>,
    /// Free text for people (a TLS error message); never used as a summary key.
    pub detail: Option<String>,
    /// HTTP requests: the method, the normalized path (at most 256 bytes, no query), and
    /// the end user's `sub` when a token was validated.
    pub method: Option<String>,
    pub path: Option<String>,
    pub user: Option<String>,
}

impl Record {
    pub fn new(event: AuditEvent) -> Self {
        Self {
            time: now_rfc3339(),
            event,
            direction: None,
            listener: None,
            peer_id: None,
            peer_addr: None,
            decision: None,
            rule: None,
            reason: None,
            policy_version: None,
            conn_id: None,
            detail: None,
            method: None,
            path: None,
            user: None,
        }
    }

    /// Records of an attacker's making, which the rate limit may summarize.
    fn suppressible(&self) -> bool {
        match self.event {
            AuditEvent::HandshakeFailure | AuditEvent::Refused => true,
            AuditEvent::Authz | AuditEvent::Http => matches!(
                self.decision,
                Some(AuditDecision::Deny | AuditDecision::WouldDeny)
            ),
            _ => false,
        }
    }
}

/// `Arc<str>` without serde's `rc` feature: listener names are shared, not copied, per record.
fn arc_str<S: serde::Serializer>(v: &Option<Arc<str>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_some(&**v),
        None => s.serialize_none(),
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Tuning of the writer; the defaults suit a sidecar.
#[derive(Debug, Clone, Copy)]
pub struct AuditLimits {
    /// Records that may wait for the writer; beyond that they are dropped and counted.
    pub queue: usize,
    /// Full deny/handshake-failure records per interval before summarizing.
    pub burst: u32,
    pub interval: Duration,
    /// Distinct (event, peer, reason) keys one summary tracks; the rest go under `other`.
    pub summary_keys: usize,
}

impl Default for AuditLimits {
    fn default() -> Self {
        Self {
            queue: 4096,
            burst: 100,
            interval: Duration::from_secs(1),
            summary_keys: 256,
        }
    }
}

/// The producer side, cheap to clone; a disabled log discards everything.
#[derive(Debug, Clone, Default)]
pub struct AuditLog {
    tx: Option<SyncSender<Record>>,
    dropped: Arc<AtomicU64>,
}

impl AuditLog {
    /// A log that writes nothing (tests, or telemetry without a sink).
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Opens `path` for appending (created with mode 0640) or uses stderr, and starts the
    /// writer thread. 0640 rather than 0600: records hold no secrets, and a log shipper
    /// commonly reads them through a shared group; other users still cannot.
    pub fn open(path: Option<&Path>, limits: AuditLimits) -> Result<Self, AuditError> {
        let sink: Box<dyn Write + Send> = match path {
            None => Box::new(std::io::stderr()),
            Some(path) => {
                use std::os::unix::fs::OpenOptionsExt;
                let file = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o640)
                    .open(path)
                    .map_err(|source| AuditError::Open {
                        path: path.to_owned(),
                        source,
                    })?;
                Box::new(file)
            }
        };
        Ok(Self::start(sink, limits)?.0)
    }

    /// Starts a writer thread on `sink`. The thread ends (after a last summary) once every
    /// clone of the returned log is dropped; join the handle to wait for that.
    pub fn start(
        sink: Box<dyn Write + Send>,
        limits: AuditLimits,
    ) -> Result<(Self, std::thread::JoinHandle<()>), AuditError> {
        let (tx, rx) = sync_channel(limits.queue.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            out: std::io::BufWriter::new(sink),
            limits,
            dropped: dropped.clone(),
            window_start: Instant::now(),
            written_in_window: 0,
            suppressed: 0,
            counts: HashMap::new(),
        };
        let handle = std::thread::Builder::new()
            .name("warden-audit".into())
            .spawn(move || writer.run(rx))
            .map_err(AuditError::Thread)?;
        Ok((
            Self {
                tx: Some(tx),
                dropped,
            },
            handle,
        ))
    }

    /// Queues a record without ever blocking; a full queue counts a drop.
    pub fn emit(&self, record: Record) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            // The writer died (a panic while writing): nothing more can be logged.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.tx.is_some()
    }
}

#[derive(Debug, Serialize)]
struct SummaryCount {
    event: AuditEvent,
    peer_id: String,
    reason: String,
    count: u64,
}

#[derive(Debug, Serialize)]
struct Summary<'a> {
    time: String,
    event: AuditEvent,
    interval_secs: f64,
    /// Records counted here instead of written in full (rate limit).
    suppressed: u64,
    /// Records lost because the queue was full.
    dropped: u64,
    note: &'a str,
    counts: Vec<SummaryCount>,
}

struct Writer {
    out: std::io::BufWriter<Box<dyn Write + Send>>,
    limits: AuditLimits,
    dropped: Arc<AtomicU64>,
    window_start: Instant,
    written_in_window: u32,
    suppressed: u64,
    counts: HashMap<(AuditEvent, String, String), u64>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Record>) {
        const BATCH_DELAY: Duration = Duration::from_millis(20);
        loop {
            let wait = self
                .limits
                .interval
                .saturating_sub(self.window_start.elapsed());
            match rx.recv_timeout(wait) {
                Ok(record) => {
                    self.roll_if_due();
                    self.handle(record);
                    // Drain what is already queued, then flush once: one syscall per batch.
                    while let Ok(record) = rx.try_recv() {
                        self.roll_if_due();
                        self.handle(record);
                    }
                    let _ = self.out.flush();
                    // Let the next records pile up: under load this thread then wakes a few
                    // dozen times a second for a batch each, instead of once per record (a
                    // context switch per connection was a tenth of the sidecar's CPU).
                    std::thread::sleep(BATCH_DELAY);
                }
                Err(RecvTimeoutError::Timeout) => self.roll_if_due(),
                Err(RecvTimeoutError::Disconnected) => {
                    self.summarize();
                    let _ = self.out.flush();
                    return;
                }
            }
        }
    }

    fn roll_if_due(&mut self) {
        if self.window_start.elapsed() >= self.limits.interval {
            self.summarize();
            let _ = self.out.flush();
            self.window_start = Instant::now();
            self.written_in_window = 0;
        }
    }

    fn handle(&mut self, record: Record) {
        if record.suppressible() {
            if self.written_in_window >= self.limits.burst {
                self.suppressed += 1;
                let mut key = (
                    record.event,
                    record.peer_id.unwrap_or_default(),
                    record.reason.unwrap_or_default(),
                );
                if !self.counts.contains_key(&key) && self.counts.len() >= self.limits.summary_keys
                {
                    key = (record.event, "other".to_owned(), "other".to_owned());
                }
                *self.counts.entry(key).or_insert(0) += 1;
                return;
            }
            self.written_in_window += 1;
        }
        self.write_line(&record);
    }

    fn write_line<T: Serialize>(&mut self, value: &T) {
        // A failed write (disk full, closed stderr) loses this record but must not stop the
        // thread: the next one may succeed.
        if serde_json::to_writer(&mut self.out, value).is_ok() {
            let _ = self.out.write_all(b"\n");
        }
    }

    fn summarize(&mut self) {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if self.suppressed == 0 && dropped == 0 {
            return;
        }
        let mut counts: Vec<SummaryCount> = self
            .counts
            .drain()
            .map(|((event, peer_id, reason), count)| SummaryCount {
                event,
                peer_id,
                reason,
                count,
            })
            .collect();
        counts.sort_by_key(|c| std::cmp::Reverse(c.count));
        let summary = Summary {
            time: now_rfc3339(),
            event: AuditEvent::AuditSummary,
            interval_secs: self.window_start.elapsed().as_secs_f64(),
            suppressed: self.suppressed,
            dropped,
            note: "audit rate limit reached: suppressed records are counted per peer and reason; dropped records did not fit the queue",
            counts,
        };
        self.write_line(&summary);
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A sink the test can read after the writer thread ends.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::ErrorKind::Other)?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn deny(peer: &str) -> Record {
        Record {
            direction: Some("inbound"),
            listener: Some(Arc::from("http")),
            peer_id: Some(peer.to_owned()),
            decision: Some(AuditDecision::Deny),
            reason: Some("no_match".to_owned()),
            conn_id: Some(1),
            ..Record::new(AuditEvent::Authz)
        }
    }

    #[test]
    fn a_flood_of_100000_denials_is_bounded_and_summarized() {
        let sink = Shared::default();
        let (log, handle) =
            AuditLog::start(Box::new(sink.clone()), AuditLimits::default()).expect("start");
        for i in 0..100_000u32 {
            log.emit(deny(&format!("spiffe://example.org/attacker/{}", i % 7)));
        }
        drop(log);
        handle.join().expect("writer thread");
        let bytes = sink.0.lock().expect("sink").clone();
        let text = String::from_utf8(bytes).expect("utf-8");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line is JSON"))
            .collect();
        let full = lines.iter().filter(|v| v["event"] == "authz").count() as u64;
        let summaries: Vec<_> = lines
            .iter()
            .filter(|v| v["event"] == "audit_summary")
            .collect();
        assert!(!summaries.is_empty(), "no summary record");
        // Bounded: the burst per interval plus a few summaries, whatever the flood size.
        assert!(lines.len() < 1000, "{} lines for a flood", lines.len());
        let suppressed: u64 = summaries
            .iter()
            .filter_map(|s| s["suppressed"].as_u64())
            .sum();
        let dropped: u64 = summaries.iter().filter_map(|s| s["dropped"].as_u64()).sum();
        let counted: u64 = summaries
            .iter()
            .flat_map(|s| s["counts"].as_array().cloned().unwrap_or_default())
            .filter_map(|c| c["count"].as_u64())
            .sum();
        assert_eq!(
            counted, suppressed,
            "per-peer counts add up to the suppressed total"
        );
        assert_eq!(
            full + suppressed + dropped,
            100_000,
            "every denial is accounted for"
        );
    }

    #[test]
    fn allows_are_never_summarized() {
        let sink = Shared::default();
        let limits = AuditLimits {
            burst: 1,
            ..AuditLimits::default()
        };
        let (log, handle) = AuditLog::start(Box::new(sink.clone()), limits).expect("start");
        for _ in 0..50 {
            let mut r = deny("spiffe://example.org/a");
            r.decision = Some(AuditDecision::Allow);
            log.emit(r);
        }
        drop(log);
        handle.join().expect("writer thread");
        let text = String::from_utf8(sink.0.lock().expect("sink").clone()).expect("utf-8");
        assert_eq!(text.lines().count(), 50);
    }
}
